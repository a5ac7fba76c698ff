//! The tonic `BlockStore` service over a [`BlockBackend`].

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use tonic::{Request, Response, Status};

use super::{BlockBackend, BlockStoreError, Fetched, ReplyLimit};
use crate::grpc::MAX_BLOCK_BYTES;
use crate::hash::{hash_block, is_valid_hash};
use crate::proto::{
    Block, BlockHash, BlockHashes, Blocks, DeleteBlocksInput, DeletedBlocks, ListBlocksInput,
    StoredBlock, StoredBlocks, Success, block_store_server,
};

/// What one `GetBlocks` reply carries at most.
///
/// It stops adding blocks before it would carry more than 4 MiB of them.
/// Its first block is always added, and may be as large as
/// [`MAX_BLOCK_BYTES`]: either way the reply fits in
/// [`crate::grpc::MAX_MESSAGE_BYTES`]. Small, because a client asks for
/// blocks by count: one downloading at 4 KiB blocks a file uploaded at
/// 4 MiB must not get 256 of them, 1 GiB, in one reply. At most 65536
/// blocks, so that the framing of tiny blocks cannot outgrow the message
/// limit either.
const GET_BLOCKS_REPLY: ReplyLimit = ReplyLimit {
    bytes: 4 << 20,
    count: 1 << 16,
};

/// The most blocks one `ListBlocks` reply lists: about 1 MiB of hashes.
const LIST_BLOCKS_PAGE: usize = 10_000;

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
            .map_err(to_status)
    }
}

/// A backend failure as the client sees it: an object store that cannot be
/// reached or refuses is UNAVAILABLE (the client may retry; nothing wrong
/// was answered), anything else INTERNAL.
fn to_status(error: BlockStoreError) -> Status {
    match error {
        BlockStoreError::Unsupported(_) => Status::unimplemented(error.to_string()),
        BlockStoreError::ObjectStore { .. } => {
            tracing::warn!(%error, "object store unavailable");
            Status::unavailable(error.to_string())
        }
        _ => Status::internal(error.to_string()),
    }
}

/// A wire count as one, saturating (no store holds 2^63 bytes).
fn wire(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
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

/// Checks what a client sent as a block: the size limit and the `blockSize`
/// it claims.
fn check_block(block: &Block) -> Result<(), Status> {
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
    Ok(())
}

/// A stored block as the wire carries it.
fn to_block(hash: &str, data: Bytes) -> Result<Block, Status> {
    let block_size = i32::try_from(data.len())
        .map_err(|_| Status::internal(format!("stored block {hash} is too large to send")))?;
    Ok(Block {
        block_data: data,
        block_size,
    })
}

fn not_found(hash: &str) -> Status {
    Status::not_found(format!("block {hash} not found"))
}

impl BlockStoreService {
    /// Checks every block, then hashes and stores them all on the blocking
    /// pool (hashing a large block would stall an async worker): one bad
    /// block stores none.
    async fn put_all(&self, blocks: Vec<Block>) -> Result<Response<Success>, Status> {
        for block in &blocks {
            check_block(block)?;
        }
        self.backend(move |backend| {
            let named = blocks
                .into_iter()
                .map(|block| {
                    let hash = hash_block(&block.block_data);
                    tracing::debug!(%hash, len = block.block_data.len(), "PutBlock");
                    (hash, block.block_data)
                })
                .collect();
            backend.put_all(named)
        })
        .await?;
        Ok(Response::new(Success { flag: true }))
    }
}

#[tonic::async_trait]
impl block_store_server::BlockStore for BlockStoreService {
    async fn get_block(&self, request: Request<BlockHash>) -> Result<Response<Block>, Status> {
        let hash = request.into_inner().hash;
        check_hash(&hash)?;
        let key = hash.clone();
        match self.backend(move |b| b.get(&key)).await? {
            Some(data) => Ok(Response::new(to_block(&hash, data)?)),
            None => Err(not_found(&hash)),
        }
    }

    async fn put_block(&self, request: Request<Block>) -> Result<Response<Success>, Status> {
        self.put_all(vec![request.into_inner()]).await
    }

    async fn put_blocks(&self, request: Request<Blocks>) -> Result<Response<Success>, Status> {
        self.put_all(request.into_inner().blocks).await
    }

    async fn get_blocks(&self, request: Request<BlockHashes>) -> Result<Response<Blocks>, Status> {
        let hashes = request.into_inner().hashes;
        for hash in &hashes {
            check_hash(hash)?;
        }
        let found = match self
            .backend(move |backend| backend.get_many(hashes, GET_BLOCKS_REPLY))
            .await?
        {
            Fetched::Blocks(found) => found,
            Fetched::Missing(hash) => return Err(not_found(&hash)),
        };
        let blocks = found
            .into_iter()
            .map(|(hash, data)| to_block(&hash, data))
            .collect::<Result<_, _>>()?;
        Ok(Response::new(Blocks { blocks }))
    }

    async fn list_blocks(
        &self,
        request: Request<ListBlocksInput>,
    ) -> Result<Response<StoredBlocks>, Status> {
        let after = request.into_inner().after;
        let listed = self
            .backend(move |b| b.list(&after, LIST_BLOCKS_PAGE))
            .await?;
        let blocks = listed
            .into_iter()
            .map(|block| StoredBlock {
                hash: block.hash,
                size: wire(block.size),
                age_millis: i64::try_from(block.age.as_millis()).unwrap_or(i64::MAX),
            })
            .collect();
        Ok(Response::new(StoredBlocks { blocks }))
    }

    async fn delete_blocks(
        &self,
        request: Request<DeleteBlocksInput>,
    ) -> Result<Response<DeletedBlocks>, Status> {
        let DeleteBlocksInput {
            hashes,
            min_age_millis,
        } = request.into_inner();
        for hash in &hashes {
            check_hash(hash)?;
        }
        let min_age = u64::try_from(min_age_millis)
            .map(Duration::from_millis)
            .map_err(|_| {
                Status::invalid_argument(format!("minAgeMillis {min_age_millis} is negative"))
            })?;
        let freed = self
            .backend(move |b| b.delete_older(&hashes, min_age))
            .await?;
        tracing::info!(blocks = freed.blocks, bytes = freed.bytes, "DeleteBlocks");
        Ok(Response::new(DeletedBlocks {
            blocks: wire(freed.blocks),
            bytes: wire(freed.bytes),
        }))
    }

    async fn has_blocks(
        &self,
        request: Request<BlockHashes>,
    ) -> Result<Response<BlockHashes>, Status> {
        let hashes = request.into_inner().hashes;
        for hash in &hashes {
            check_hash(hash)?;
        }
        let present = self.backend(move |b| b.has_many(hashes)).await?;
        Ok(Response::new(BlockHashes { hashes: present }))
    }
}
