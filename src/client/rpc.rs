//! The client's view of the servers: one [`MetaStore`] handle that hides
//! whether it talks to a plain MetaStore or finds the leader of a Raft
//! cluster, and a [`BlockStore`] handle.
//!
//! Each server gets one gRPC channel for the whole run (clones share its
//! connection). Every attempt of a call has a deadline sized to its work,
//! and a failure that may pass is met by trying again, as [`Patience`]
//! says: a server slowed by load gets the time it needs, a cluster without
//! a quorum is given up within seconds. Against a cluster, a call tries the
//! remembered leader first and moves on when a server is not the leader
//! (following the `leader: host:port` hint when one is given), crashed or
//! unreachable. `UpdateFile` is the one call never sent twice unless the
//! first attempt surely changed nothing (see [`MetaStore::update_file`]).

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt, stream};
use tokio::time::Instant;
use tonic::{Code, Status};

use super::index::Entry;
use crate::config::{ClusterConfig, is_host_port};
use crate::grpc::{self, AddrError, AuthChannel as Channel, MAX_MESSAGE_BYTES};
use crate::proto::block_store_client::BlockStoreClient;
use crate::proto::map_watch_client::MapWatchClient;
use crate::proto::meta_store_client::MetaStoreClient;
use crate::proto::raft_surfstore_client::RaftSurfstoreClient;
use crate::proto::{Block, BlockHash, BlockHashes, Blocks, FileMetaData, MapVersion};
use crate::security::ClientSecurity;
use crate::security::tls::explain;

/// How patient calls are with servers that fail or are slow (SPEC §7).
///
/// A call whose attempt fails in a way that may pass (no answer in time, a
/// broken or refused connection, an UNAVAILABLE answer) is made again
/// after a pause, for up to [`retry_for`](Self::retry_for); an attempt that
/// got no answer in time doubles the next one's deadline. When the answers
/// say no attempt can succeed soon, the call gives up after
/// [`give_up_after`](Self::give_up_after) instead, since an operator has to
/// act first: a majority of the servers crashed or refusing connections,
/// or no server that may lead (each answered that it is crashed or not the
/// leader, or stays silent while others answered and none named it).
///
/// A call's first attempt always runs to its deadline; a later one is cut
/// to what is left of `retry_for`, though never below the first one's
/// deadline, so a call lasts at most `retry_for` plus that deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Patience {
    /// How long a call is tried again while its failures may pass.
    pub retry_for: Duration,
    /// How long a call is tried again once the answers say that it cannot
    /// succeed soon.
    pub give_up_after: Duration,
    /// Deadline of the first attempt of a small MetaStore call.
    pub meta_deadline: Duration,
    /// Deadline of the first attempt of `GetFileInfoMap`: the largest
    /// MetaStore reply, awaited while the client's own hashing competes
    /// for the CPU.
    pub map_deadline: Duration,
    /// Deadline of the first attempt of a BlockStore call, before the time
    /// its bytes take (see [`MIN_BYTES_PER_SEC`]).
    pub block_deadline: Duration,
    /// The first pause between two attempts; it doubles after each, up to
    /// [`max_pause`](Self::max_pause), less a random part so that clients
    /// that failed together do not come back together.
    pub pause: Duration,
    /// The longest pause between two attempts.
    pub max_pause: Duration,
}

impl Default for Patience {
    fn default() -> Self {
        Self {
            retry_for: Duration::from_secs(60),
            give_up_after: Duration::from_secs(3),
            meta_deadline: Duration::from_secs(5),
            map_deadline: Duration::from_secs(10),
            block_deadline: Duration::from_secs(30),
            pause: Duration::from_millis(100),
            max_pause: Duration::from_secs(2),
        }
    }
}

/// The slowest transfer a deadline allows for the bytes a call moves.
pub const MIN_BYTES_PER_SEC: u64 = 1 << 20;

/// `base` plus the time `bytes` take at [`MIN_BYTES_PER_SEC`].
fn sized(base: Duration, bytes: usize) -> Duration {
    base + Duration::from_secs_f64(bytes as f64 / MIN_BYTES_PER_SEC as f64)
}

/// Bytes a list of `count` block hashes takes on the wire, about.
fn hashes_bytes(count: usize) -> usize {
    count * 66
}

/// The attempts of one call: their deadlines, the pauses between them and
/// when to stop (see [`Patience`]).
struct Attempts {
    patience: Patience,
    started: Instant,
    count: u32,
    first_deadline: Duration,
    deadline: Duration,
    pause: Duration,
}

impl Attempts {
    fn new(patience: Patience, deadline: Duration) -> Self {
        Self {
            patience,
            started: Instant::now(),
            count: 0,
            first_deadline: deadline,
            deadline,
            pause: patience.pause,
        }
    }

    /// Awaits one attempt within its deadline (see [`Patience`]); a
    /// timeout doubles the next attempt's.
    async fn run<T>(
        &mut self,
        attempt: impl Future<Output = Result<T, Status>>,
    ) -> Result<T, Status> {
        let left = self
            .patience
            .retry_for
            .saturating_sub(self.started.elapsed());
        let deadline = self.deadline.min(left.max(self.first_deadline));
        self.count += 1;
        match tokio::time::timeout(deadline, attempt).await {
            Ok(result) => result,
            Err(_) => {
                self.deadline = self.deadline.saturating_mul(2);
                Err(Status::deadline_exceeded(format!(
                    "no answer within {:.1}s",
                    deadline.as_secs_f64()
                )))
            }
        }
    }

    /// Whether to make another attempt after a failure, pausing first if
    /// `pause`; `hopeless` if the answers say the call cannot succeed soon.
    async fn again(&mut self, hopeless: bool, pause: bool) -> bool {
        let limit = if hopeless {
            self.patience.give_up_after.min(self.patience.retry_for)
        } else {
            self.patience.retry_for
        };
        let left = limit.saturating_sub(self.started.elapsed());
        if left.is_zero() {
            return false;
        }
        if pause {
            tokio::time::sleep(jittered(self.pause).min(left)).await;
            self.pause = self.pause.saturating_mul(2).min(self.patience.max_pause);
        }
        true
    }

    /// How many attempts took how long, for an error message.
    fn summary(&self) -> String {
        let plural = if self.count == 1 { "" } else { "s" };
        format!(
            "gave up after {} attempt{plural} in {:.1}s",
            self.count,
            self.started.elapsed().as_secs_f64()
        )
    }
}

/// `pause` less a random part of up to half of it.
fn jittered(pause: Duration) -> Duration {
    use std::hash::BuildHasher;
    // RandomState's keys are random per thread and change with each new
    // one, so what it hashes to serves as a random number.
    let random = std::collections::hash_map::RandomState::new().hash_one(0_u8);
    pause.mul_f64(1.0 - random as f64 / u64::MAX as f64 / 2.0)
}

/// What a non-leader's error message contains (SPEC §3).
const NOT_LEADER: &str = "Server is not the leader";

/// What a crashed server's error message contains (SPEC §3).
const CRASHED: &str = "Server is crashed.";

/// Why a call to the servers failed.
#[derive(Debug, thiserror::Error)]
pub enum RpcError {
    /// No server of the cluster answered as the leader in time.
    #[error(
        "no leader with a quorum answered within {}s (tried {servers}); last error: {last}; \
         if no server is the leader yet, name one: surfstore-ctl set-leader ADDR",
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
    /// A call that is never sent twice failed after it may have reached
    /// the server, so whether it took effect is unknown.
    #[error(
        "{method} on {addr} failed after it may have reached the server ({reason}); \
         it is not sent again: the next sync finds out whether it took effect"
    )]
    Unconfirmed {
        /// The server.
        addr: String,
        /// The RPC.
        method: &'static str,
        /// What went wrong.
        reason: String,
    },
    /// A server address is not usable.
    #[error(transparent)]
    Addr(#[from] AddrError),
}

impl RpcError {
    /// Whether the servers are out of reach or failing, so every further
    /// call would likely fail the same way.
    pub fn is_unreachable(&self) -> bool {
        matches!(
            self,
            Self::NoLeader { .. } | Self::Unreachable { .. } | Self::Unconfirmed { .. }
        )
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
    /// Whether the servers are a cluster (`-f CONFIG`) rather than the one
    /// META_ADDR: only what a give-up reports depends on it.
    cluster: bool,
    patience: Patience,
    /// TLS and token, for every server (the BlockStore's too).
    security: ClientSecurity,
}

/// How a failed attempt reads.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    /// Not the leader, maybe with the leader's address.
    NotLeader(Option<String>),
    /// The server answered that it is crashed (SPEC §3).
    Crashed,
    /// Nothing listens at the address: the connection was refused.
    Refused,
    /// No connection was made for another reason (a timeout, an unreachable
    /// host): the request was never sent.
    NotConnected,
    /// No answer in time, a broken connection or an UNAVAILABLE answer:
    /// it may pass, but the request may have been handled.
    Transient,
    /// The server does not offer the service tried.
    Unimplemented,
    /// A real answer that trying again will not change.
    Failed,
}

impl Verdict {
    /// Whether the attempt surely changed nothing on the server, so that
    /// even a call that must not take effect twice may be made again.
    fn changed_nothing(&self) -> bool {
        matches!(
            self,
            Self::NotLeader(_) | Self::Refused | Self::NotConnected | Self::Unimplemented
        )
    }

    /// What the attempt says about the server, or `None` if trying again
    /// is pointless.
    fn seen(&self) -> Option<Seen> {
        match self {
            Self::NotLeader(_) => Some(Seen::NotLeader),
            Self::Crashed | Self::Refused => Some(Seen::Down),
            Self::NotConnected | Self::Transient => Some(Seen::Unsure),
            Self::Unimplemented | Self::Failed => None,
        }
    }
}

/// What the latest attempt on one server says about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Seen {
    /// Crashed or refusing connections: it serves nothing now.
    Down,
    /// Up, but not the leader.
    NotLeader,
    /// Slow or failing in a way that may pass.
    Unsure,
}

/// What the attempts of one call have shown about the servers, which
/// says whether another attempt could succeed soon.
#[derive(Debug, Default)]
struct Evidence {
    /// What the latest attempt on each server (by index) said.
    seen: BTreeMap<usize, Seen>,
    /// The servers a not-leader answer named as the leader.
    named: BTreeSet<usize>,
}

impl Evidence {
    /// Whether no attempt on the `known` servers can succeed soon: a
    /// majority is down, so no leader has a quorum; or no server may lead.
    /// A server may lead unless it answered that it is down or not the
    /// leader; once some server has answered so, one that stays silent
    /// must also have been named as the leader (a server slow under load
    /// is waited for, one that nobody follows is not).
    fn hopeless(&self, known: usize) -> bool {
        let down = self.seen.values().filter(|&&s| s == Seen::Down).count();
        if down * 2 > known {
            return true;
        }
        let answered = self.seen.values().any(|&s| s != Seen::Unsure);
        let may_lead = (0..known).any(|i| match self.seen.get(&i) {
            None => true,
            Some(Seen::Unsure) => !answered || self.named.contains(&i),
            Some(Seen::Down | Seen::NotLeader) => false,
        });
        !may_lead
    }
}

fn classify(status: &Status) -> Verdict {
    let message = status.message();
    if let Some((_, after)) = message.split_once(NOT_LEADER) {
        return Verdict::NotLeader(leader_hint(after));
    }
    if message.contains(CRASHED) {
        return Verdict::Crashed;
    }
    // A certificate or token problem does not pass by itself.
    if explain(status).is_some() {
        return Verdict::Failed;
    }
    match status.code() {
        Code::Unavailable => connect_failure(status).unwrap_or(Verdict::Transient),
        Code::DeadlineExceeded | Code::Cancelled | Code::Unknown => Verdict::Transient,
        Code::Unimplemented => Verdict::Unimplemented,
        _ => Verdict::Failed,
    }
}

/// [`Verdict::Refused`] or [`Verdict::NotConnected`] if `status` comes
/// from failing to connect (tonic wraps that cause in a
/// [`tonic::ConnectError`]).
fn connect_failure(status: &Status) -> Option<Verdict> {
    let mut connecting = false;
    let mut source = std::error::Error::source(status);
    while let Some(cause) = source {
        connecting |= cause.is::<tonic::ConnectError>();
        if connecting
            && cause
                .downcast_ref::<std::io::Error>()
                .is_some_and(|e| e.kind() == std::io::ErrorKind::ConnectionRefused)
        {
            return Some(Verdict::Refused);
        }
        source = cause.source();
    }
    connecting.then_some(Verdict::NotConnected)
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

/// `reason`, with what to check when nothing listens at `addr`.
fn with_hint(reason: String, verdict: &Verdict, addr: &str) -> String {
    if *verdict == Verdict::Refused {
        format!("{reason}; is surfstore-server running on {addr}?")
    } else {
        reason
    }
}

/// A status in one line: what to do about it when it is a certificate or
/// token problem, otherwise its message and, for transport errors, the
/// root cause (tonic repeats the layers in between).
fn describe(status: &Status) -> String {
    if let Some(explained) = explain(status) {
        return explained;
    }
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

/// Whether a call may take effect more than once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Effect {
    /// Making it twice is like making it once (reads).
    Idempotent,
    /// It must not be made again unless the failed attempt surely changed
    /// nothing.
    Once,
}

impl MetaStore {
    /// The MetaStore at `addr` (a plain server; a Raft server is recognised
    /// and followed to its leader).
    pub fn single(addr: &str, security: &ClientSecurity) -> Result<Self, RpcError> {
        Self::new(&[addr.to_string()], Api::Plain, false, security)
    }

    /// The Raft cluster of `config`, whose leader each call finds. A server
    /// that turns out to be a plain MetaStore is used as one.
    pub fn cluster(config: &ClusterConfig, security: &ClientSecurity) -> Result<Self, RpcError> {
        Self::new(&config.meta_addrs, Api::Raft, true, security)
    }

    fn new(
        addrs: &[String],
        api: Api,
        cluster: bool,
        security: &ClientSecurity,
    ) -> Result<Self, RpcError> {
        let list = addrs
            .iter()
            .map(|addr| {
                Ok(Server {
                    addr: addr.clone(),
                    channel: grpc::secure_channel(addr, security)?,
                    api,
                })
            })
            .collect::<Result<Vec<_>, AddrError>>()?;
        Ok(Self {
            servers: Mutex::new(Servers { list, leader: 0 }),
            cluster,
            patience: Patience::default(),
            security: security.clone(),
        })
    }

    /// The same servers, called with `patience` instead of the default.
    pub fn with_patience(mut self, patience: Patience) -> Self {
        self.patience = patience;
        self
    }

    /// How patient calls are (also those to the BlockStore it names).
    pub fn patience(&self) -> Patience {
        self.patience
    }

    /// How it connects (also to the BlockStore it names).
    pub fn security(&self) -> &ClientSecurity {
        &self.security
    }

    /// Every file the server knows, tombstones included.
    pub async fn get_file_info_map(&self) -> Result<BTreeMap<String, Entry>, RpcError> {
        let deadline = self.patience.map_deadline;
        let map = self
            .call(
                "GetFileInfoMap",
                deadline,
                Effect::Idempotent,
                |api, channel| async move {
                    let reply = match api {
                        Api::Plain => meta_client(channel).get_file_info_map(()).await,
                        Api::Raft => raft_client(channel).get_file_info_map(()).await,
                    };
                    reply.map(|r| r.into_inner().file_info_map)
                },
            )
            .await?;
        Ok(map
            .into_iter()
            .map(|(name, meta)| (name, meta.into()))
            .collect())
    }

    /// Proposes `entry` as the new state of `name`; returns the version the
    /// server stored, or [`crate::meta_store::REJECTED_VERSION`].
    ///
    /// Unlike the other calls, an attempt is made again only when the
    /// failed one surely changed nothing: the server said it is not the
    /// leader, or no connection was made. After any other failure (no
    /// answer, a broken connection, a crash) the update may have been
    /// applied, and a second attempt would be refused with `-1`, which the
    /// run would take for someone else's change: the error
    /// ([`RpcError::Unconfirmed`]) says so instead, and the next run, which
    /// compares the server's entry with the local file, settles it.
    pub async fn update_file(&self, name: &str, entry: &Entry) -> Result<i32, RpcError> {
        let meta: FileMetaData = entry.to_meta(name);
        let deadline = sized(
            self.patience.meta_deadline,
            hashes_bytes(entry.hashes.len()),
        );
        self.call("UpdateFile", deadline, Effect::Once, |api, channel| {
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
        let deadline = self.patience.meta_deadline;
        self.call(
            "GetBlockStoreAddr",
            deadline,
            Effect::Idempotent,
            |api, channel| async move {
                let reply = match api {
                    Api::Plain => meta_client(channel).get_block_store_addr(()).await,
                    Api::Raft => raft_client(channel).get_block_store_addr(()).await,
                };
                reply.map(|r| r.into_inner().addr)
            },
        )
        .await
    }

    /// Opens the `MapWatch` stream (SPEC §9.5) on the server that answered
    /// last (a cluster's leader). Tried once: a watcher that loses it
    /// reconnects at its own pace, and a server without it answers
    /// UNIMPLEMENTED.
    pub async fn watch_map(&self) -> Result<tonic::Streaming<MapVersion>, Status> {
        let channel = {
            let servers = self.lock();
            servers.list[servers.leader].channel.clone()
        };
        let reply = MapWatchClient::new(channel).watch_file_info_map(()).await?;
        Ok(reply.into_inner())
    }

    fn lock(&self) -> MutexGuard<'_, Servers> {
        crate::locks::lock(&self.servers)
    }

    /// Runs `op` against the leader, searching for it as the module docs
    /// say; the first attempt has `deadline`.
    async fn call<T, F, Fut>(
        &self,
        method: &'static str,
        deadline: Duration,
        effect: Effect,
        op: F,
    ) -> Result<T, RpcError>
    where
        F: Fn(Api, Channel) -> Fut,
        Fut: Future<Output = Result<T, Status>>,
    {
        let mut attempts = Attempts::new(self.patience, deadline);
        let mut evidence = Evidence::default();
        let mut at = self.lock().leader;
        let mut tried_in_round = 0;
        let mut switched_api = Vec::new();
        loop {
            let server = self.lock().list[at].clone();
            let status = match attempts.run(op(server.api, server.channel)).await {
                Ok(reply) => {
                    self.lock().leader = at;
                    return Ok(reply);
                }
                Err(status) => status,
            };
            let reason = describe(&status);
            tracing::debug!(addr = %server.addr, method, %reason, "call failed");
            let verdict = classify(&status);
            if verdict == Verdict::Unimplemented && !switched_api.contains(&at) {
                switched_api.push(at);
                self.lock().list[at].api = server.api.other();
                continue;
            }
            let Some(now) = verdict.seen() else {
                return Err(RpcError::Failed {
                    addr: server.addr,
                    method,
                    reason,
                });
            };
            if effect == Effect::Once && !verdict.changed_nothing() {
                return Err(RpcError::Unconfirmed {
                    addr: server.addr,
                    method,
                    reason,
                });
            }
            evidence.seen.insert(at, now);
            let next = match verdict {
                Verdict::NotLeader(Some(ref hint)) => self.position(hint).filter(|&i| i != at),
                _ => None,
            };
            evidence.named.extend(next);
            // A hint may have added a server: the list only grows.
            let known = self.lock().list.len();
            at = next.unwrap_or((at + 1) % known);
            tried_in_round += 1;
            let round_over = tried_in_round >= known;
            if round_over {
                tried_in_round = 0;
            }
            if !attempts.again(evidence.hopeless(known), round_over).await {
                let reason = with_hint(reason, &verdict, &server.addr);
                return Err(self.give_up(server.addr, reason, &attempts));
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
        let channel = grpc::secure_channel(addr, &self.security).ok()?;
        servers.list.push(Server {
            addr: addr.to_string(),
            channel,
            api: Api::Raft,
        });
        Some(servers.list.len() - 1)
    }

    fn give_up(&self, addr: String, reason: String, attempts: &Attempts) -> RpcError {
        if !self.cluster {
            return RpcError::Unreachable {
                service: "MetaStore",
                addr,
                reason: format!("{reason} ({})", attempts.summary()),
            };
        }
        let servers = self.lock();
        let tried: Vec<&str> = servers.list.iter().map(|s| s.addr.as_str()).collect();
        RpcError::NoLeader {
            servers: tried.join(", "),
            waited: attempts.started.elapsed(),
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
///
/// Every call is made again after a failure that may pass, as [`Patience`]
/// says: all of them may take effect twice, since a block is named by its
/// content.
#[derive(Clone)]
pub struct BlockStore {
    addr: String,
    client: BlockStoreClient<Channel>,
    batched: Arc<AtomicBool>,
    /// The size of the blocks fetched, as far as the client knows: what
    /// a fetch's deadline allows time for.
    block_size: usize,
    patience: Patience,
}

impl BlockStore {
    /// A handle on the BlockStore at `addr` (connects on first use), for
    /// blocks of about `block_size` bytes.
    pub fn connect(
        addr: &str,
        block_size: usize,
        patience: Patience,
        security: &ClientSecurity,
    ) -> Result<Self, RpcError> {
        let client = BlockStoreClient::new(grpc::secure_channel(addr, security)?)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES);
        Ok(Self {
            addr: addr.to_string(),
            client,
            batched: Arc::new(AtomicBool::new(true)),
            block_size,
            patience,
        })
    }

    /// The block named `hash`.
    pub async fn get_block(&self, hash: &str) -> Result<Bytes, RpcError> {
        let request = BlockHash {
            hash: hash.to_string(),
        };
        let block = self
            .call("GetBlock", self.block_size, |mut client| {
                let request = request.clone();
                async move { client.get_block(request).await }
            })
            .await
            .map_err(|status| self.error("GetBlock", &status))?;
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
            let bytes = request.hashes.len() * self.block_size;
            let reply = self
                .batched_call("GetBlocks", bytes, |mut client| {
                    let request = request.clone();
                    async move { client.get_blocks(request).await }
                })
                .await?;
            let Some(reply) = reply else {
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
            .call("PutBlock", request.block_data.len(), |mut client| {
                let request = request.clone();
                async move { client.put_block(request).await }
            })
            .await
            .map_err(|status| self.error("PutBlock", &status))?;
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
            let bytes = blocks.iter().map(Bytes::len).sum();
            let reply = self
                .batched_call("PutBlocks", bytes, |mut client| {
                    let request = request.clone();
                    async move { client.put_blocks(request).await }
                })
                .await?;
            if let Some(reply) = reply {
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
    async fn batched_call<T, Fut>(
        &self,
        method: &'static str,
        bytes: usize,
        attempt: impl Fn(BlockStoreClient<Channel>) -> Fut,
    ) -> Result<Option<T>, RpcError>
    where
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        match self.call(method, bytes, attempt).await {
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
        let request = BlockHashes { hashes };
        // The reply may list every hash asked about.
        let bytes = 2 * hashes_bytes(request.hashes.len());
        let reply = self
            .call("HasBlocks", bytes, |mut client| {
                let request = request.clone();
                async move { client.has_blocks(request).await }
            })
            .await
            .map_err(|status| self.error("HasBlocks", &status))?;
        Ok(reply.hashes)
    }

    fn failed(&self, method: &'static str, reason: &str) -> RpcError {
        RpcError::Failed {
            addr: self.addr.clone(),
            method,
            reason: reason.to_string(),
        }
    }

    /// Makes `method` through `attempt`, again after each failure that may
    /// pass, as [`Patience`] says; its first attempt has time for `bytes`.
    /// The status of the last failure, which says when the call gave up.
    async fn call<T, Fut>(
        &self,
        method: &'static str,
        bytes: usize,
        attempt: impl Fn(BlockStoreClient<Channel>) -> Fut,
    ) -> Result<T, Status>
    where
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        let deadline = sized(self.patience.block_deadline, bytes);
        let mut attempts = Attempts::new(self.patience, deadline);
        loop {
            let reply = attempts.run(attempt(self.client.clone())).await;
            let status = match reply {
                Ok(reply) => return Ok(reply.into_inner()),
                Err(status) => status,
            };
            tracing::debug!(addr = %self.addr, method, reason = %describe(&status), "call failed");
            let Some(seen) = classify(&status).seen() else {
                return Err(status);
            };
            let evidence = Evidence {
                seen: BTreeMap::from([(0, seen)]),
                named: BTreeSet::new(),
            };
            if !attempts.again(evidence.hopeless(1), true).await {
                let reason = with_hint(describe(&status), &classify(&status), &self.addr);
                let reason = format!("{reason} ({})", attempts.summary());
                return Err(Status::new(status.code(), reason));
            }
        }
    }

    /// The error a failed call of `method` reports.
    fn error(&self, method: &'static str, status: &Status) -> RpcError {
        let reason = describe(status);
        match classify(status).seen() {
            Some(_) => RpcError::Unreachable {
                service: "BlockStore",
                addr: self.addr.clone(),
                reason,
            },
            None => self.failed(method, &reason),
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
            Verdict::Crashed
        );
        assert_eq!(
            classify(&Status::unavailable("overloaded")),
            Verdict::Transient
        );
        assert_eq!(
            classify(&Status::deadline_exceeded("slow")),
            Verdict::Transient
        );
        assert_eq!(classify(&Status::unimplemented("")), Verdict::Unimplemented);
        assert_eq!(classify(&Status::invalid_argument("bad")), Verdict::Failed);
        assert_eq!(classify(&Status::not_found("no block")), Verdict::Failed);
    }

    /// The status tonic makes of a failure to connect because of `error`.
    fn connect_error(error: std::io::Error) -> Status {
        Status::from_error(Box::new(tonic::ConnectError(Box::new(error))))
    }

    #[test]
    fn a_connection_never_made_changed_nothing() {
        use std::io::{Error, ErrorKind};
        let refused = connect_error(Error::from(ErrorKind::ConnectionRefused));
        assert_eq!(refused.code(), Code::Unavailable);
        assert_eq!(classify(&refused), Verdict::Refused);
        let timed_out = connect_error(Error::new(ErrorKind::TimedOut, "connect timeout"));
        assert_eq!(classify(&timed_out), Verdict::NotConnected);
        assert!(classify(&refused).changed_nothing());
        assert!(classify(&timed_out).changed_nothing());
        assert!(Verdict::NotLeader(None).changed_nothing());
        // The request may have arrived.
        for maybe_applied in [Verdict::Transient, Verdict::Crashed] {
            assert!(!maybe_applied.changed_nothing(), "{maybe_applied:?}");
        }
    }

    #[tokio::test]
    async fn a_refused_connection_reads_as_refused() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        drop(listener);
        let mut client =
            meta_client(grpc::secure_channel(&addr, &ClientSecurity::default()).unwrap());
        let status = client.get_block_store_addr(()).await.unwrap_err();
        assert_eq!(classify(&status), Verdict::Refused, "{status:?}");
    }

    #[test]
    fn hopeless_when_a_majority_is_down_or_no_server_may_lead() {
        use Seen::{Down, NotLeader, Unsure};
        for (seen, named, known, expected) in [
            (&[Down][..], &[][..], 1, true),
            (&[Unsure][..], &[][..], 1, false),
            (&[NotLeader][..], &[][..], 1, true),
            // Not all tried yet.
            (&[Down][..], &[][..], 3, false),
            (&[Down, Down][..], &[][..], 3, true),
            (&[Down, Down, Unsure][..], &[2][..], 3, true),
            (&[Down, NotLeader, NotLeader][..], &[0][..], 3, true),
            // Silent and named by a follower: a leader slow under load.
            (&[NotLeader, NotLeader, Unsure][..], &[2][..], 3, false),
            // Silent, and nobody follows it.
            (&[Down, NotLeader, Unsure][..], &[][..], 3, true),
            // Nobody answered at all: it may all pass.
            (&[Unsure, Unsure, Unsure][..], &[][..], 3, false),
            (
                &[Down, Down, Unsure, Unsure, Unsure][..],
                &[2][..],
                5,
                false,
            ),
            (&[Down, Down, Down, Unsure, Unsure][..], &[3][..], 5, true),
        ] {
            let evidence = Evidence {
                seen: seen.iter().copied().enumerate().collect(),
                named: named.iter().copied().collect(),
            };
            assert_eq!(
                evidence.hopeless(known),
                expected,
                "{evidence:?} of {known}"
            );
        }
    }

    /// Makes attempts that never get an answer (or, if `refused`, fail at
    /// once) until `attempts` gives up; the deadline of each attempt.
    async fn until_given_up(attempts: &mut Attempts, refused: bool) -> Vec<Duration> {
        let mut deadlines = Vec::new();
        loop {
            let started = Instant::now();
            let attempt = async {
                if refused {
                    Err(Status::unavailable("refused"))
                } else {
                    std::future::pending::<Result<(), Status>>().await
                }
            };
            attempts.run(attempt).await.unwrap_err();
            deadlines.push(started.elapsed());
            if !attempts.again(refused, true).await {
                return deadlines;
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_server_that_never_answers_gets_doubling_deadlines_within_the_bound() {
        let patience = Patience::default();
        let mut attempts = Attempts::new(patience, patience.map_deadline);
        let deadlines = until_given_up(&mut attempts, false).await;
        assert_eq!(
            deadlines[..2],
            [Duration::from_secs(10), Duration::from_secs(20)]
        );
        assert_eq!(deadlines.len(), 3, "{deadlines:?}");
        // The third gets what is left of the minute, less two pauses.
        assert!(deadlines[2] > Duration::from_secs(29), "{deadlines:?}");
        assert_eq!(attempts.started.elapsed(), patience.retry_for);
    }

    #[tokio::test(start_paused = true)]
    async fn a_first_attempt_runs_to_its_deadline_even_past_the_bound() {
        let patience = Patience::default();
        let long = patience.retry_for * 2;
        let mut attempts = Attempts::new(patience, long);
        assert_eq!(until_given_up(&mut attempts, false).await, [long]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_hopeless_call_gives_up_after_a_few_growing_pauses() {
        let patience = Patience::default();
        let mut attempts = Attempts::new(patience, patience.meta_deadline);
        let tries = until_given_up(&mut attempts, true).await.len();
        assert_eq!(attempts.started.elapsed(), patience.give_up_after);
        // Pauses of 50-100, 100-200, 200-400, 400-800 ms and up to 2 s.
        assert!((5..=8).contains(&tries), "{tries} attempts");
        assert!(
            attempts
                .summary()
                .starts_with(&format!("gave up after {tries} attempts")),
            "{}",
            attempts.summary()
        );
    }

    #[test]
    fn deadlines_allow_for_the_bytes_moved() {
        let base = Duration::from_secs(30);
        assert_eq!(sized(base, 0), base);
        assert_eq!(sized(base, 4 << 20), base + Duration::from_secs(4));
    }
}
