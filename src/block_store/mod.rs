//! The BlockStore: content-addressed storage of blocks (SPEC §3).
//!
//! [`BlockStoreService`] is the gRPC face; it validates every request and
//! keeps the bytes in a [`BlockBackend`]. Backends only store and fetch: the
//! service computes hashes and enforces the protocol's rules.

mod disk;
mod memory;
mod service;

pub use disk::DiskBlocks;
pub use memory::MemoryBlocks;
pub use service::BlockStoreService;

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
    fn has(&self, hash: &str) -> Result<bool, BlockStoreError>;
}
