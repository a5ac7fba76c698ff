//! The BlockStore: content-addressed storage of blocks (SPEC §3).
//!
//! [`BlockStoreService`] is the gRPC face; it validates every request and
//! keeps the bytes in a [`BlockBackend`]. Backends only store and fetch: the
//! service computes hashes and enforces the protocol's rules.

mod disk;
mod memory;
mod s3;
mod service;

pub use disk::DiskBlocks;
pub use memory::MemoryBlocks;
pub use s3::{S3Blocks, S3Location, S3LocationError};
pub use service::BlockStoreService;

use std::time::Duration;

use bytes::Bytes;

/// Why a backend could not store or fetch a block.
#[derive(Debug, thiserror::Error)]
pub enum BlockStoreError {
    /// The storage medium failed.
    #[error("block storage I/O error: {0}")]
    Io(#[from] std::io::Error),
    /// A file or directory of an on-disk store could not be used.
    #[error(transparent)]
    Storage(#[from] crate::storage::StorageError),
    /// An object store (`--s3`) refused or could not be reached, after the
    /// store client's own retries.
    #[error("object store {store}: cannot {op} {key}: {source}")]
    ObjectStore {
        /// The store, as `s3://BUCKET/PREFIX`.
        store: String,
        /// What was being done (`get`, `put`, `check`, ...).
        op: &'static str,
        /// The object's key below the store's prefix.
        key: String,
        /// What the store client reported (boxed: it is large, and every
        /// block call's result carries this error type).
        source: Box<object_store::Error>,
    },
    /// The backend cannot do this (e.g. list its blocks for gc).
    #[error("this BlockStore backend cannot {0}")]
    Unsupported(&'static str),
}

/// A stored block as garbage collection sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredBlock {
    /// Its hash.
    pub hash: String,
    /// Its size in bytes.
    pub size: u64,
    /// How long ago it was stored, or last named by `has` or `put`.
    pub age: Duration,
}

/// What a deletion freed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Freed {
    /// Blocks removed.
    pub blocks: u64,
    /// Their bytes.
    pub bytes: u64,
}

/// How much one `GetBlocks` reply may carry.
#[derive(Debug, Clone, Copy)]
pub struct ReplyLimit {
    /// Bytes of block data; the first block is taken whatever its size.
    pub bytes: usize,
    /// Blocks.
    pub count: usize,
}

impl ReplyLimit {
    /// Whether a reply holding `count` blocks of `bytes` bytes in all can
    /// take one more of `len` bytes.
    pub fn fits(&self, count: usize, bytes: usize, len: usize) -> bool {
        count == 0 || (count < self.count && bytes + len <= self.bytes)
    }
}

/// What [`BlockBackend::get_many`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum Fetched {
    /// The first blocks asked for, in order, as many as the limit allows.
    Blocks(Vec<(String, Bytes)>),
    /// A block that is not stored, met before the reply was full.
    Missing(String),
}

/// Where a BlockStore keeps its blocks. Keys are valid block hashes (the
/// service checks them); a backend never sees a malformed one.
pub trait BlockBackend: Send + Sync + 'static {
    /// The block named `hash`, if stored.
    fn get(&self, hash: &str) -> Result<Option<Bytes>, BlockStoreError>;
    /// Stores `data` under `hash` (its SHA-256); storing twice is harmless.
    fn put(&self, hash: &str, data: Bytes) -> Result<(), BlockStoreError>;
    /// Stores every `(hash, data)` of one `PutBlocks` call, all durable (for
    /// a backend that persists) when this returns. One by one unless the
    /// backend can share the cost of durability across them.
    fn put_all(&self, blocks: Vec<(String, Bytes)>) -> Result<(), BlockStoreError> {
        blocks
            .into_iter()
            .try_for_each(|(hash, data)| self.put(&hash, data))
    }
    /// Whether the block named `hash` is stored.
    ///
    /// `has` and `put` make a stored block young again (its age restarts):
    /// a client that was told a block is there may list it in an update
    /// soon, so [`BlockBackend::delete_older`] must leave it alone for a
    /// grace period. Each must be atomic with respect to `delete_older`.
    fn has(&self, hash: &str) -> Result<bool, BlockStoreError>;
    /// Those of `hashes` that are stored, in the order asked. One by one
    /// unless the backend gains by asking about several at once.
    fn has_many(&self, hashes: Vec<String>) -> Result<Vec<String>, BlockStoreError> {
        let mut present = Vec::new();
        for hash in hashes {
            if self.has(&hash)? {
                present.push(hash);
            }
        }
        Ok(present)
    }
    /// The blocks named by `hashes`, in order, until `limit` is reached or a
    /// block is missing. One by one unless the backend gains by fetching
    /// several at once.
    fn get_many(&self, hashes: Vec<String>, limit: ReplyLimit) -> Result<Fetched, BlockStoreError> {
        let (mut found, mut bytes) = (Vec::new(), 0);
        for hash in hashes {
            let Some(data) = self.get(&hash)? else {
                return Ok(Fetched::Missing(hash));
            };
            if !limit.fits(found.len(), bytes, data.len()) {
                break;
            }
            bytes += data.len();
            found.push((hash, data));
        }
        Ok(Fetched::Blocks(found))
    }

    /// Up to `limit` stored blocks whose hash sorts after `after`, in hash
    /// order.
    fn list(&self, _after: &str, _limit: usize) -> Result<Vec<StoredBlock>, BlockStoreError> {
        Err(BlockStoreError::Unsupported("list its blocks"))
    }

    /// Removes each of `hashes` that is stored and at least `min_age` old
    /// when it is looked at (checked and removed atomically with respect to
    /// `has` and `put`).
    fn delete_older(
        &self,
        _hashes: &[String],
        _min_age: Duration,
    ) -> Result<Freed, BlockStoreError> {
        Err(BlockStoreError::Unsupported("delete blocks"))
    }
}
