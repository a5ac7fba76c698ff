//! The tonic `BlockStore` service over a [`BlockBackend`].

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::{BlockBackend, BlockStoreError};
use crate::grpc::MAX_BLOCK_BYTES;
use crate::hash::{hash_block, is_valid_hash};
use crate::proto::{Block, BlockHash, BlockHashes, Success, block_store_server};

/// Blocks at least this large are hashed on the blocking pool so a large
/// PutBlock does not stall the async workers.
const HASH_OFFLOAD_BYTES: usize = 256 << 10;

/// Serves `GetBlock`, `PutBlock` and `HasBlocks` from a backend.
pub struct BlockStoreService {
    backend: Arc<dyn BlockBackend>,
}

impl BlockStoreService {
    /// A service storing its blocks in `backend`.
    pub fn new(backend: Arc<dyn BlockBackend>) -> Self {
        Self { backend }
    }

    /// The tonic server for this service, with the project's message limits.
    pub fn into_server(self) -> block_store_server::BlockStoreServer<Self> {
        block_store_server::BlockStoreServer::new(self)
            .max_decoding_message_size(crate::grpc::MAX_MESSAGE_BYTES)
            .max_encoding_message_size(crate::grpc::MAX_MESSAGE_BYTES)
    }

    /// Runs a backend call on the blocking pool: disk backends do real I/O.
    async fn backend<T: Send + 'static>(
        &self,
        op: impl FnOnce(&dyn BlockBackend) -> Result<T, BlockStoreError> + Send + 'static,
    ) -> Result<T, Status> {
        let backend = Arc::clone(&self.backend);
        tokio::task::spawn_blocking(move || op(backend.as_ref()))
            .await
            .map_err(|e| Status::internal(format!("block store task failed: {e}")))?
            .map_err(|e| Status::internal(e.to_string()))
    }
}

fn check_hash(hash: &str) -> Result<(), Status> {
    if is_valid_hash(hash) {
        Ok(())
    } else {
        Err(Status::invalid_argument(format!(
            "invalid block hash {:?}: expected 64 lowercase hex characters",
            truncate(hash)
        )))
    }
}

/// Keeps error messages short when a client sends a huge bogus hash.
fn truncate(s: &str) -> &str {
    match s.char_indices().nth(80) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

#[tonic::async_trait]
impl block_store_server::BlockStore for BlockStoreService {
    async fn get_block(&self, request: Request<BlockHash>) -> Result<Response<Block>, Status> {
        let hash = request.into_inner().hash;
        check_hash(&hash)?;
        let key = hash.clone();
        match self.backend(move |b| b.get(&key)).await? {
            Some(data) => Ok(Response::new(Block {
                block_size: i32::try_from(data.len()).map_err(|_| {
                    Status::internal(format!("stored block {hash} is too large to send"))
                })?,
                block_data: data,
            })),
            None => Err(Status::not_found(format!("block {hash} not found"))),
        }
    }

    async fn put_block(&self, request: Request<Block>) -> Result<Response<Success>, Status> {
        let block = request.into_inner();
        let len = block.block_data.len();
        if len > MAX_BLOCK_BYTES {
            return Err(Status::invalid_argument(format!(
                "block of {len} bytes exceeds the limit of {MAX_BLOCK_BYTES} bytes"
            )));
        }
        if usize::try_from(block.block_size) != Ok(len) {
            return Err(Status::invalid_argument(format!(
                "blockSize {} disagrees with the {len} bytes of blockData",
                block.block_size
            )));
        }
        let data = block.block_data;
        let hash = if len >= HASH_OFFLOAD_BYTES {
            let data = data.clone();
            tokio::task::spawn_blocking(move || hash_block(&data))
                .await
                .map_err(|e| Status::internal(format!("hashing task failed: {e}")))?
        } else {
            hash_block(&data)
        };
        tracing::debug!(%hash, len, "PutBlock");
        self.backend(move |b| b.put(&hash, data)).await?;
        Ok(Response::new(Success { flag: true }))
    }

    async fn has_blocks(
        &self,
        request: Request<BlockHashes>,
    ) -> Result<Response<BlockHashes>, Status> {
        let hashes = request.into_inner().hashes;
        for hash in &hashes {
            check_hash(hash)?;
        }
        let present = self
            .backend(move |b| {
                let mut present = Vec::new();
                for hash in hashes {
                    if b.has(&hash)? {
                        present.push(hash);
                    }
                }
                Ok(present)
            })
            .await?;
        Ok(Response::new(BlockHashes { hashes: present }))
    }
}
