//! Garbage collection of blocks (`surfstore-ctl gc`, SPEC §9.2): deletes
//! from a BlockStore the blocks that no current file version lists and that
//! are older than a grace period.
//!
//! # Why a block a current version lists is never deleted
//!
//! One pass: (1) list the BlockStore's blocks with their ages and keep
//! those at least the grace period old; (2) then read the file map from the
//! MetaStore (the leader, for a cluster) and drop every block a current,
//! non-tombstone version lists; (3) ask the BlockStore to delete the rest,
//! each only if it is *still* that old when the BlockStore gets to it
//! (checked and removed under the lock `HasBlocks` and `PutBlock` take).
//!
//! A block's age restarts whenever `PutBlock`/`PutBlocks` stores or
//! re-stores it and whenever `HasBlocks` reports it present. A client lists
//! a block in `UpdateFile` only after one of these told it the block is
//! there. Take a version that lists block B and becomes current after step
//! (2) read the map, so that B may be among the blocks to delete. The
//! client made B young at some time t before its `UpdateFile`:
//!
//! * t before step (1): B was younger than the grace period at step (1),
//!   so it was never a candidate, unless more than the grace period passed
//!   between the client's `HasBlocks`/`PutBlocks` and its `UpdateFile`;
//!   the grace period (default one hour) must exceed the longest sync.
//! * t after step (1): if t is before the deletion reaches B, B is young
//!   again and step (3) keeps it; if the deletion came first, `HasBlocks`
//!   answered that B is missing (or `PutBlocks` stored it anew), and the
//!   client uploaded it before its `UpdateFile`.
//!
//! A version that was current at step (2) protects its blocks directly. So
//! the only blocks deleted are ones no current version lists, and ones a
//! client kept more than the grace period between upload and update.

use std::collections::HashSet;
use std::time::Duration;

use crate::client::rpc::{MetaStore, RpcError};
use crate::grpc::{self, AddrError, MAX_MESSAGE_BYTES};
use crate::hash::is_tombstone;
use crate::proto::block_store_client::BlockStoreClient;
use crate::proto::{DeleteBlocksInput, ListBlocksInput};
use crate::security::ClientSecurity;

/// Hashes per `DeleteBlocks` call: well under the message limit.
const DELETE_BATCH: usize = 10_000;

/// Deadline of each BlockStore call.
const CALL_DEADLINE: Duration = Duration::from_secs(60);

/// Why a collection stopped.
#[derive(Debug, thiserror::Error)]
pub enum GcError {
    /// The MetaStore's map could not be read.
    #[error(transparent)]
    Meta(#[from] RpcError),
    /// A BlockStore address cannot be used.
    #[error(transparent)]
    Addr(#[from] AddrError),
    /// A BlockStore call failed.
    #[error("{method} on the BlockStore at {addr} failed: {}", .status.message())]
    Block {
        /// The BlockStore.
        addr: String,
        /// The RPC.
        method: &'static str,
        /// Its error.
        status: tonic::Status,
    },
}

/// What one collection did on one BlockStore.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GcReport {
    /// Blocks stored when it began.
    pub stored: u64,
    /// Blocks younger than the grace period, kept whatever lists them.
    pub young: u64,
    /// Blocks a current version lists.
    pub in_use: u64,
    /// Blocks deleted.
    pub freed_blocks: u64,
    /// Their bytes.
    pub freed_bytes: u64,
}

/// One collection on the BlockStore at `block_addr`, against the map
/// `meta` serves, keeping every block younger than `grace` (see the
/// module docs).
pub async fn collect(
    meta: &MetaStore,
    block_addr: &str,
    grace: Duration,
    security: &ClientSecurity,
) -> Result<GcReport, GcError> {
    let mut blocks = BlockStoreClient::new(grpc::secure_channel(block_addr, security)?)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    let failed = |method| {
        move |status| GcError::Block {
            addr: block_addr.to_string(),
            method,
            status,
        }
    };
    let mut report = GcReport::default();
    let mut candidates = Vec::new();
    let mut after = String::new();
    loop {
        let mut request = tonic::Request::new(ListBlocksInput { after });
        request.set_timeout(CALL_DEADLINE);
        let page = blocks
            .list_blocks(request)
            .await
            .map_err(failed("ListBlocks"))?
            .into_inner()
            .blocks;
        let Some(last) = page.last() else {
            break;
        };
        after = last.hash.clone();
        report.stored += page.len() as u64;
        for block in page {
            if u128::try_from(block.age_millis).unwrap_or(0) >= grace.as_millis() {
                candidates.push(block.hash);
            } else {
                report.young += 1;
            }
        }
    }
    // Read after listing: see the module docs.
    let listed: HashSet<String> = meta
        .get_file_info_map()
        .await?
        .into_values()
        .filter(|entry| !is_tombstone(&entry.hashes))
        .flat_map(|entry| entry.hashes)
        .collect();
    let before = candidates.len();
    candidates.retain(|hash| !listed.contains(hash));
    report.in_use = (before - candidates.len()) as u64;
    let min_age_millis = i64::try_from(grace.as_millis()).unwrap_or(i64::MAX);
    for batch in candidates.chunks(DELETE_BATCH) {
        let mut request = tonic::Request::new(DeleteBlocksInput {
            hashes: batch.to_vec(),
            min_age_millis,
        });
        request.set_timeout(CALL_DEADLINE);
        let freed = blocks
            .delete_blocks(request)
            .await
            .map_err(failed("DeleteBlocks"))?
            .into_inner();
        report.freed_blocks += u64::try_from(freed.blocks).unwrap_or(0);
        report.freed_bytes += u64::try_from(freed.bytes).unwrap_or(0);
    }
    Ok(report)
}
