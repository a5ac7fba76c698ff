//! The client's view of the servers: one [`MetaStore`] handle that hides
//! whether it talks to a plain MetaStore or finds the leader of a Raft
//! cluster, and a [`BlockStore`] handle.
//!
//! Each server gets one gRPC channel for the whole run (clones share its
//! connection). Every call has a deadline, so a dead or blocked server costs
//! seconds, not forever. Against a cluster, a call tries the remembered
//! leader first and moves on when a server is not the leader (following the
//! `leader: host:port` hint when one is given), crashed or unreachable,
//! until a leader answers or the search deadline passes.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt, stream};
use tonic::transport::Channel;
use tonic::{Code, Status};

use super::index::Entry;
use crate::config::{ClusterConfig, is_host_port};
use crate::grpc::{self, AddrError, MAX_MESSAGE_BYTES};
use crate::proto::block_store_client::BlockStoreClient;
use crate::proto::meta_store_client::MetaStoreClient;
use crate::proto::raft_surfstore_client::RaftSurfstoreClient;
use crate::proto::{Block, BlockHash, BlockHashes, Blocks, FileMetaData};

/// Deadline of one MetaStore call.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// How long one MetaStore call may spend looking for a leader in a cluster.
pub const LEADER_SEARCH_TIMEOUT: Duration = Duration::from_secs(12);

/// Deadline of one BlockStore call (blocks can be large).
pub const BLOCK_CALL_TIMEOUT: Duration = Duration::from_secs(60);

/// Pause between two rounds over every server of a cluster.
const RETRY_PAUSE: Duration = Duration::from_millis(250);

/// What a non-leader's error message contains (SPEC §3).
const NOT_LEADER: &str = "Server is not the leader";

/// What a crashed server's error message contains (SPEC §3).
const CRASHED: &str = "Server is crashed.";

/// Why a call to the servers failed.
#[derive(Debug, thiserror::Error)]
pub enum RpcError {
    /// No server of the cluster answered as the leader in time.
    #[error(
        "no leader with a quorum answered within {}s (tried {servers}); last error: {last}",
        waited.as_secs()
    )]
    NoLeader {
        /// The servers tried, comma-separated.
        servers: String,
        /// How long the search lasted.
        waited: Duration,
        /// The last failure seen.
        last: String,
    },
    /// The server could not be reached or did not answer in time.
    #[error("cannot reach the {service} at {addr}: {reason}")]
    Unreachable {
        /// `MetaStore` or `BlockStore`.
        service: &'static str,
        /// The server.
        addr: String,
        /// What went wrong.
        reason: String,
    },
    /// The server answered with an error.
    #[error("{method} on {addr} failed: {reason}")]
    Failed {
        /// The server.
        addr: String,
        /// The RPC.
        method: &'static str,
        /// The server's error.
        reason: String,
    },
    /// A server address is not usable.
    #[error(transparent)]
    Addr(#[from] AddrError),
}

impl RpcError {
    /// Whether the servers are out of reach, so every further call would
    /// fail the same way.
    pub fn is_unreachable(&self) -> bool {
        matches!(self, Self::NoLeader { .. } | Self::Unreachable { .. })
    }
}

/// Which gRPC service a server offers the MetaStore calls under.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Api {
    /// `surfstore.MetaStore` (plain server).
    Plain,
    /// `surfstore.RaftSurfstore` (replicated server).
    Raft,
}

impl Api {
    fn other(self) -> Self {
        match self {
            Self::Plain => Self::Raft,
            Self::Raft => Self::Plain,
        }
    }
}

#[derive(Clone)]
struct Server {
    addr: String,
    channel: Channel,
    api: Api,
}

struct Servers {
    list: Vec<Server>,
    /// Index in `list` of the server that answered last.
    leader: usize,
}

/// The MetaStore calls the client makes, against one server or a cluster.
pub struct MetaStore {
    servers: Mutex<Servers>,
    /// Whether to keep searching (a cluster) or give up after trying every
    /// known server once (a single server).
    cluster: bool,
}

/// How a failed call reads.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    /// Not the leader, maybe with the leader's address.
    NotLeader(Option<String>),
    /// Crashed, unreachable or too slow: try another server.
    Down,
    /// The server does not offer the service tried.
    Unimplemented,
    /// A real answer that retrying elsewhere will not change.
    Failed,
}

fn classify(status: &Status) -> Verdict {
    let message = status.message();
    if let Some((_, after)) = message.split_once(NOT_LEADER) {
        return Verdict::NotLeader(leader_hint(after));
    }
    if message.contains(CRASHED) {
        return Verdict::Down;
    }
    match status.code() {
        Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled | Code::Unknown => {
            Verdict::Down
        }
        Code::Unimplemented => Verdict::Unimplemented,
        _ => Verdict::Failed,
    }
}

/// The `host:port` after `leader: ` in a not-leader message, if any.
fn leader_hint(text: &str) -> Option<String> {
    let (_, rest) = text.split_once("leader: ")?;
    let addr: String = rest
        .chars()
        .take_while(|c| !c.is_whitespace() && !matches!(c, ')' | ']' | ',' | ';' | '"' | '\''))
        .collect();
    is_host_port(&addr).then_some(addr)
}

/// A status in one line: its message and, for transport errors, the root
/// cause (tonic repeats the layers in between).
fn describe(status: &Status) -> String {
    let message = if status.message().is_empty() {
        format!("{:?}", status.code())
    } else {
        status.message().to_string()
    };
    let mut root = None;
    let mut source = std::error::Error::source(status);
    while let Some(cause) = source {
        root = Some(cause.to_string());
        source = cause.source();
    }
    match root {
        Some(root) if !root.contains(&message) => format!("{message}: {root}"),
        Some(root) => root,
        None => message,
    }
}

fn meta_client(channel: Channel) -> MetaStoreClient<Channel> {
    MetaStoreClient::new(channel)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES)
}

fn raft_client(channel: Channel) -> RaftSurfstoreClient<Channel> {
    RaftSurfstoreClient::new(channel)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES)
}

impl MetaStore {
    /// The MetaStore at `addr` (a plain server; a Raft server is recognised
    /// and followed to its leader).
    pub fn single(addr: &str) -> Result<Self, RpcError> {
        Self::new(&[addr.to_string()], Api::Plain, false)
    }

    /// The Raft cluster of `config`, whose leader each call finds. A server
    /// that turns out to be a plain MetaStore is used as one.
    pub fn cluster(config: &ClusterConfig) -> Result<Self, RpcError> {
        Self::new(&config.meta_addrs, Api::Raft, true)
    }

    fn new(addrs: &[String], api: Api, cluster: bool) -> Result<Self, RpcError> {
        let list = addrs
            .iter()
            .map(|addr| {
                Ok(Server {
                    addr: addr.clone(),
                    channel: grpc::channel(addr)?,
                    api,
                })
            })
            .collect::<Result<Vec<_>, AddrError>>()?;
        Ok(Self {
            servers: Mutex::new(Servers { list, leader: 0 }),
            cluster,
        })
    }

    /// Every file the server knows, tombstones included.
    pub async fn get_file_info_map(&self) -> Result<BTreeMap<String, Entry>, RpcError> {
        let map = self
            .call("GetFileInfoMap", |api, channel| async move {
                let reply = match api {
                    Api::Plain => meta_client(channel).get_file_info_map(()).await,
                    Api::Raft => raft_client(channel).get_file_info_map(()).await,
                };
                reply.map(|r| r.into_inner().file_info_map)
            })
            .await?;
        Ok(map
            .into_iter()
            .map(|(name, meta)| (name, meta.into()))
            .collect())
    }

    /// Proposes `entry` as the new state of `name`; returns the version the
    /// server stored, or [`crate::meta_store::REJECTED_VERSION`].
    pub async fn update_file(&self, name: &str, entry: &Entry) -> Result<i32, RpcError> {
        let meta: FileMetaData = entry.to_meta(name);
        self.call("UpdateFile", |api, channel| {
            let meta = meta.clone();
            async move {
                let reply = match api {
                    Api::Plain => meta_client(channel).update_file(meta).await,
                    Api::Raft => raft_client(channel).update_file(meta).await,
                };
                reply.map(|r| r.into_inner().version)
            }
        })
        .await
    }

    /// The address of the BlockStore the servers use.
    pub async fn get_block_store_addr(&self) -> Result<String, RpcError> {
        self.call("GetBlockStoreAddr", |api, channel| async move {
            let reply = match api {
                Api::Plain => meta_client(channel).get_block_store_addr(()).await,
                Api::Raft => raft_client(channel).get_block_store_addr(()).await,
            };
            reply.map(|r| r.into_inner().addr)
        })
        .await
    }

    fn lock(&self) -> MutexGuard<'_, Servers> {
        crate::locks::lock(&self.servers)
    }

    /// Runs `op` against the leader, searching for it as the module docs say.
    async fn call<T, F, Fut>(&self, method: &'static str, op: F) -> Result<T, RpcError>
    where
        F: Fn(Api, Channel) -> Fut,
        Fut: Future<Output = Result<T, Status>>,
    {
        let started = Instant::now();
        let deadline = started + LEADER_SEARCH_TIMEOUT;
        let mut at = self.lock().leader;
        let mut tried_in_round = 0;
        let mut switched_api = Vec::new();
        loop {
            let server = self.lock().list[at].clone();
            let remaining = deadline.saturating_duration_since(Instant::now());
            let status = match tokio::time::timeout(
                remaining.min(CALL_TIMEOUT),
                op(server.api, server.channel),
            )
            .await
            {
                Ok(Ok(reply)) => {
                    self.lock().leader = at;
                    return Ok(reply);
                }
                Ok(Err(status)) => status,
                Err(_) => Status::deadline_exceeded(format!(
                    "no answer within {:.1}s",
                    remaining.min(CALL_TIMEOUT).as_secs_f64()
                )),
            };
            let reason = describe(&status);
            tracing::debug!(addr = %server.addr, method, %reason, "call failed");
            let next = match classify(&status) {
                Verdict::Unimplemented if !switched_api.contains(&at) => {
                    switched_api.push(at);
                    self.lock().list[at].api = server.api.other();
                    continue;
                }
                Verdict::Unimplemented | Verdict::Failed => {
                    return Err(RpcError::Failed {
                        addr: server.addr,
                        method,
                        reason,
                    });
                }
                Verdict::NotLeader(Some(hint)) => self.position(&hint).filter(|&i| i != at),
                Verdict::NotLeader(None) | Verdict::Down => None,
            };
            tried_in_round += 1;
            // A hint may have added a server: the list only grows.
            let known = self.lock().list.len();
            at = next.unwrap_or((at + 1) % known);
            if Instant::now() >= deadline || (tried_in_round >= known && !self.cluster) {
                return Err(self.give_up(server.addr, reason, started.elapsed()));
            }
            if tried_in_round >= known {
                tried_in_round = 0;
                let remaining = deadline.saturating_duration_since(Instant::now());
                tokio::time::sleep(RETRY_PAUSE.min(remaining)).await;
            }
        }
    }

    /// The index of the server at `addr`, added (with its own channel) if a
    /// hint named one not known yet.
    fn position(&self, addr: &str) -> Option<usize> {
        let mut servers = self.lock();
        if let Some(i) = servers.list.iter().position(|s| s.addr == addr) {
            return Some(i);
        }
        let channel = grpc::channel(addr).ok()?;
        servers.list.push(Server {
            addr: addr.to_string(),
            channel,
            api: Api::Raft,
        });
        Some(servers.list.len() - 1)
    }

    fn give_up(&self, addr: String, reason: String, waited: Duration) -> RpcError {
        if !self.cluster {
            return RpcError::Unreachable {
                service: "MetaStore",
                addr,
                reason,
            };
        }
        let servers = self.lock();
        let tried: Vec<&str> = servers.list.iter().map(|s| s.addr.as_str()).collect();
        RpcError::NoLeader {
            servers: tried.join(", "),
            waited,
            last: format!("{addr}: {reason}"),
        }
    }
}

/// How many blocks the fallback for a server without the batched calls
/// (the original's) moves at once, one call each.
const UNBATCHED_CALLS_IN_FLIGHT: usize = 8;

/// The BlockStore calls the client makes, over one channel.
///
/// Many blocks go in one `PutBlocks` or `GetBlocks` call. A BlockStore that
/// lacks those (the original's) answers UNIMPLEMENTED once, and from then
/// on the same blocks move one `PutBlock` or `GetBlock` call each.
#[derive(Clone)]
pub struct BlockStore {
    addr: String,
    client: BlockStoreClient<Channel>,
    batched: Arc<AtomicBool>,
}

impl BlockStore {
    /// A handle on the BlockStore at `addr` (connects on first use).
    pub fn connect(addr: &str) -> Result<Self, RpcError> {
        let client = BlockStoreClient::new(grpc::channel(addr)?)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES);
        Ok(Self {
            addr: addr.to_string(),
            client,
            batched: Arc::new(AtomicBool::new(true)),
        })
    }

    /// The block named `hash`.
    pub async fn get_block(&self, hash: &str) -> Result<Bytes, RpcError> {
        let request = BlockHash {
            hash: hash.to_string(),
        };
        let block = self
            .call("GetBlock", self.client.clone().get_block(request))
            .await?;
        Ok(block.block_data)
    }

    /// The blocks named `hashes`, in that order. The caller checks that
    /// each is what its name says.
    pub async fn get_blocks(&self, hashes: &[String]) -> Result<Vec<Bytes>, RpcError> {
        let mut blocks = Vec::with_capacity(hashes.len());
        while blocks.len() < hashes.len() && self.is_batched(hashes.len() - blocks.len()) {
            let request = BlockHashes {
                hashes: hashes[blocks.len()..].to_vec(),
            };
            let mut client = self.client.clone();
            let reply = client.get_blocks(request);
            let Some(reply) = self.batched_call("GetBlocks", reply).await? else {
                break;
            };
            if reply.blocks.is_empty() {
                return Err(self.failed("GetBlocks", "the BlockStore answered no block"));
            }
            blocks.extend(reply.blocks.into_iter().map(|b| b.block_data));
        }
        blocks.truncate(hashes.len());
        let rest = stream::iter(&hashes[blocks.len()..])
            .map(|hash| self.get_block(hash))
            .buffered(UNBATCHED_CALLS_IN_FLIGHT)
            .try_collect::<Vec<_>>()
            .await?;
        blocks.extend(rest);
        Ok(blocks)
    }

    /// Stores `data` as a block.
    pub async fn put_block(&self, data: Bytes) -> Result<(), RpcError> {
        let request = self.to_block("PutBlock", data)?;
        let reply = self
            .call("PutBlock", self.client.clone().put_block(request))
            .await?;
        self.stored("PutBlock", reply.flag)
    }

    /// Stores every one of `blocks`.
    pub async fn put_blocks(&self, blocks: Vec<Bytes>) -> Result<(), RpcError> {
        if self.is_batched(blocks.len()) {
            let request = Blocks {
                blocks: blocks
                    .iter()
                    .map(|data| self.to_block("PutBlocks", data.clone()))
                    .collect::<Result<_, _>>()?,
            };
            let mut client = self.client.clone();
            let reply = client.put_blocks(request);
            if let Some(reply) = self.batched_call("PutBlocks", reply).await? {
                return self.stored("PutBlocks", reply.flag);
            }
        }
        stream::iter(blocks)
            .map(|data| self.put_block(data))
            .buffer_unordered(UNBATCHED_CALLS_IN_FLIGHT)
            .try_collect()
            .await
    }

    /// Whether `count` blocks should go in one batched call: more than one,
    /// and the server has not said it lacks the batched calls.
    fn is_batched(&self, count: usize) -> bool {
        count > 1 && self.batched.load(Ordering::Relaxed)
    }

    /// Makes a batched call; `None` if the server lacks it, which is
    /// remembered so later blocks go one call each right away.
    async fn batched_call<T>(
        &self,
        method: &'static str,
        call: impl Future<Output = Result<tonic::Response<T>, Status>>,
    ) -> Result<Option<T>, RpcError> {
        match self.raw_call(call).await {
            Ok(reply) => Ok(Some(reply)),
            Err(status) if status.code() == Code::Unimplemented => {
                tracing::debug!(addr = %self.addr, "the BlockStore lacks {method}; moving blocks one call each");
                self.batched.store(false, Ordering::Relaxed);
                Ok(None)
            }
            Err(status) => Err(self.error(method, &status)),
        }
    }

    fn to_block(&self, method: &'static str, data: Bytes) -> Result<Block, RpcError> {
        let block_size =
            i32::try_from(data.len()).map_err(|_| self.failed(method, "block too large"))?;
        Ok(Block {
            block_data: data,
            block_size,
        })
    }

    fn stored(&self, method: &'static str, flag: bool) -> Result<(), RpcError> {
        if flag {
            Ok(())
        } else {
            Err(self.failed(method, "the BlockStore refused the block"))
        }
    }

    /// Which of `hashes` the BlockStore holds.
    pub async fn has_blocks(&self, hashes: Vec<String>) -> Result<Vec<String>, RpcError> {
        let reply = self
            .call(
                "HasBlocks",
                self.client.clone().has_blocks(BlockHashes { hashes }),
            )
            .await?;
        Ok(reply.hashes)
    }

    fn failed(&self, method: &'static str, reason: &str) -> RpcError {
        RpcError::Failed {
            addr: self.addr.clone(),
            method,
            reason: reason.to_string(),
        }
    }

    async fn call<T>(
        &self,
        method: &'static str,
        call: impl Future<Output = Result<tonic::Response<T>, Status>>,
    ) -> Result<T, RpcError> {
        self.raw_call(call)
            .await
            .map_err(|status| self.error(method, &status))
    }

    /// Makes a call within [`BLOCK_CALL_TIMEOUT`].
    async fn raw_call<T>(
        &self,
        call: impl Future<Output = Result<tonic::Response<T>, Status>>,
    ) -> Result<T, Status> {
        match tokio::time::timeout(BLOCK_CALL_TIMEOUT, call).await {
            Ok(reply) => reply.map(tonic::Response::into_inner),
            Err(_) => Err(Status::deadline_exceeded(format!(
                "no answer within {}s",
                BLOCK_CALL_TIMEOUT.as_secs()
            ))),
        }
    }

    /// The error a failed call of `method` reports.
    fn error(&self, method: &'static str, status: &Status) -> RpcError {
        let reason = describe(status);
        match classify(status) {
            Verdict::Down => RpcError::Unreachable {
                service: "BlockStore",
                addr: self.addr.clone(),
                reason,
            },
            _ => self.failed(method, &reason),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_leader_hints() {
        for (message, hint) in [
            ("Server is not the leader", None),
            (
                "Server is not the leader; leader: 127.0.0.1:9008",
                Some("127.0.0.1:9008"),
            ),
            (
                "Server is not the leader (leader: localhost:1)",
                Some("localhost:1"),
            ),
            ("Server is not the leader, leader: nonsense", None),
        ] {
            assert_eq!(
                classify(&Status::failed_precondition(message)),
                Verdict::NotLeader(hint.map(String::from)),
                "{message}"
            );
        }
    }

    #[test]
    fn classifies_failures() {
        assert_eq!(
            classify(&Status::unavailable("Server is crashed.")),
            Verdict::Down
        );
        assert_eq!(
            classify(&Status::unavailable("tcp connect error")),
            Verdict::Down
        );
        assert_eq!(classify(&Status::deadline_exceeded("slow")), Verdict::Down);
        assert_eq!(classify(&Status::unimplemented("")), Verdict::Unimplemented);
        assert_eq!(classify(&Status::invalid_argument("bad")), Verdict::Failed);
        assert_eq!(classify(&Status::not_found("no block")), Verdict::Failed);
    }
}
