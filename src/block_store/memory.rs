//! The in-memory block backend: blocks live as long as the process.

use std::collections::HashMap;
use std::sync::RwLock;

use crate::locks::{read, write};

use bytes::Bytes;

use super::{BlockBackend, BlockStoreError};

/// Blocks kept in a hash map; what the original implementation does.
#[derive(Debug, Default)]
pub struct MemoryBlocks {
    blocks: RwLock<HashMap<String, Bytes>>,
}

impl BlockBackend for MemoryBlocks {
    fn get(&self, hash: &str) -> Result<Option<Bytes>, BlockStoreError> {
        Ok(read(&self.blocks).get(hash).cloned())
    }

    fn put(&self, hash: &str, data: Bytes) -> Result<(), BlockStoreError> {
        write(&self.blocks).entry(hash.to_string()).or_insert(data);
        Ok(())
    }

    fn has(&self, hash: &str) -> Result<bool, BlockStoreError> {
        Ok(read(&self.blocks).contains_key(hash))
    }
}
