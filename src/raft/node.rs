//! The async driver around [`RaftCore`]: it owns the core behind a mutex, one
//! replication task per peer, the waiters of pending `UpdateFile` calls, the
//! applied [`FileMap`] and the chaos flag.
//!
//! Every decision is the core's. The node only moves bytes: it asks the core
//! what to send, sends it with a deadline, feeds the reply back, persists and
//! applies what [`RaftCore::take_ready`] hands out, and wakes waiters. The
//! mutex is never held across an `.await`.
//!
//! # Pipelining
//!
//! One AppendEntries at a time per peer would cap replication at one batch
//! per round trip. Each peer's replication task instead keeps every request
//! the core's window allows in flight at once (the configured
//! [`NodeConfig::pipeline_depth`], at most [`super::MAX_INFLIGHT`], while the
//! peer replicates; one while it is probed): it asks
//! [`RaftCore::next_append`] for more whenever a proposal, a new commit
//! index or a reply may have opened room, and reports each failed call with
//! [`RaftCore::report_unreachable`], which sends the peer back to probing.
//! Only a [`super::SentAppend`] is kept per call, not the request.
//!
//! A heartbeat goes out on the configured period only when nothing is in
//! flight to the peer: any request in flight already carries the term and
//! commit index, and every call ends, by its reply or its deadline, within
//! seconds.
//! `SendHeartbeat` and read confirmation do not use the window: they send
//! [`RaftCore::sync_request`]s, built when the call runs, so their
//! guarantees (every reachable peer repaired; a read confirmed by
//! acknowledgements of requests built after it arrived) hold whatever the
//! replication tasks have in flight.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use prost::Message;
use tokio::sync::{Notify, oneshot};
use tokio::time::Instant;
use tonic::transport::Channel;

use super::core::{Outgoing, RaftCore, ReplicationStatus, SentAppend, TermExhausted};
use super::limits;
use super::quorum::is_majority;
use super::storage::{RaftStorage, StorageError};
use super::{AppendRequest, Entry, LogIndex, ServerId, Term};
use crate::backoff::Backoff;
use crate::grpc;
use crate::meta_store::FileMap;
use crate::proto::raft_surfstore_client::RaftSurfstoreClient;
use crate::proto::{AppendEntryOutput, FileInfoMap, FileMetaData};

/// The most entries one AppendEntries carries; more are sent in the next.
const MAX_BATCH_ENTRIES: usize = 4096;

/// Deadline of one AppendEntries call to a peer, plus the time its bytes
/// take at [`MIN_PEER_BYTES_PER_SEC`].
const APPEND_TIMEOUT: Duration = Duration::from_secs(2);

/// The slowest link to a peer that a large AppendEntries (a batch, or one
/// entry of up to a whole message) must still cross within its deadline:
/// 8 MiB/s, a 64 Mbit/s link.
const MIN_PEER_BYTES_PER_SEC: u64 = 8 << 20;

/// How soon a peer that failed or lags is tried again at first, and how
/// often a read re-checks for a majority.
const RETRY_INTERVAL: Duration = Duration::from_millis(50);

/// The longest a peer that keeps failing is left alone between attempts:
/// a peer that comes back is caught up within about this long.
const MAX_RETRY_INTERVAL: Duration = Duration::from_secs(1);

/// Why a node refused or abandoned a request; the service maps each to the
/// gRPC status SPEC §3 asks for.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NodeError {
    /// The server is in the simulated crashed state.
    #[error("Server is crashed.")]
    Crashed,
    /// The server is not the leader (anymore); `leader` names the one it
    /// follows, when it knows.
    #[error("Server is not the leader{}", .leader.as_ref().map(|l| format!("; leader: {l}")).unwrap_or_default())]
    NotLeader {
        /// The leader's address, if known.
        leader: Option<String>,
    },
    /// `SetLeader` at the highest term.
    #[error(transparent)]
    TermExhausted(#[from] TermExhausted),
    /// An update refused because a message that must carry it could not.
    #[error("UpdateFile refused: {0}")]
    TooLarge(#[from] grpc::TooLarge),
}

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A peer address cannot be used.
    #[error(transparent)]
    Addr(#[from] grpc::AddrError),
    /// The saved state could not be loaded.
    #[error(transparent)]
    Storage(#[from] StorageError),
}

/// How a node is set up.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// This server's index in `addrs`.
    pub id: ServerId,
    /// Every server's address, this one's included.
    pub addrs: Vec<String>,
    /// The BlockStore address handed to clients.
    pub block_store_addr: String,
    /// Automatic heartbeat period of a leader; `None` turns them off.
    pub heartbeat: Option<Duration>,
    /// AppendEntries a leader keeps in flight per peer (see
    /// [`RaftCore::set_pipeline_depth`]).
    pub pipeline_depth: usize,
}

/// A snapshot for `GetInternalState`.
#[derive(Debug, Clone)]
pub struct InternalState {
    /// Whether this server believes it is the leader.
    pub is_leader: bool,
    /// Its current term.
    pub term: Term,
    /// Its whole log.
    pub log: Vec<Entry>,
    /// Its applied MetaStore map.
    pub map: FileInfoMap,
}

/// One Raft replica of the MetaStore. Cheap to clone; clones share state.
#[derive(Clone)]
pub struct RaftNode {
    shared: Arc<Shared>,
}

struct Shared {
    config: NodeConfig,
    state: Mutex<State>,
    /// Per peer: the client (None for this server) and the wake-up of its
    /// replication task.
    peers: Vec<Option<Peer>>,
}

struct Peer {
    client: RaftSurfstoreClient<Channel>,
    wake: Notify,
}

struct State {
    core: RaftCore,
    crashed: bool,
    map: FileMap,
    storage: Box<dyn RaftStorage>,
    /// Pending `UpdateFile` calls by the index and term of their entry:
    /// where to send the applied version.
    waiters: BTreeMap<(LogIndex, Term), oneshot::Sender<Result<i32, NodeError>>>,
}

impl RaftNode {
    /// Creates the node from what `storage` holds (replaying its committed
    /// prefix into the map) and spawns one replication task per peer on the
    /// current tokio runtime.
    pub fn start(
        config: NodeConfig,
        mut storage: Box<dyn RaftStorage>,
    ) -> Result<Self, StartError> {
        let (hard, log) = storage.load()?;
        let mut peers = Vec::with_capacity(config.addrs.len());
        for (id, addr) in config.addrs.iter().enumerate() {
            peers.push(if id == config.id {
                None
            } else {
                let client = RaftSurfstoreClient::new(grpc::peer_channel(addr)?)
                    .max_decoding_message_size(grpc::MAX_MESSAGE_BYTES)
                    .max_encoding_message_size(grpc::MAX_MESSAGE_BYTES);
                Some(Peer {
                    client,
                    wake: Notify::new(),
                })
            });
        }
        tracing::info!(
            term = hard.term,
            commit = hard.commit,
            entries = log.len(),
            "loaded raft state"
        );
        let mut core = RaftCore::restore(config.id, config.addrs.len(), hard, log);
        core.set_pipeline_depth(config.pipeline_depth);
        let state = State {
            core,
            crashed: false,
            map: FileMap::default(),
            storage,
            waiters: BTreeMap::new(),
        };
        let node = RaftNode {
            shared: Arc::new(Shared {
                config,
                state: Mutex::new(state),
                peers,
            }),
        };
        node.after_core_step(&mut node.state());
        for peer in node.peer_ids() {
            tokio::spawn(node.clone().replicate(peer));
        }
        Ok(node)
    }

    /// The BlockStore address this cluster hands to clients.
    pub fn block_store_addr(&self) -> &str {
        &self.shared.config.block_store_addr
    }

    fn peer_ids(&self) -> impl Iterator<Item = ServerId> + use<> {
        let me = self.shared.config.id;
        (0..self.shared.config.addrs.len()).filter(move |&p| p != me)
    }

    fn state(&self) -> MutexGuard<'_, State> {
        crate::locks::lock(&self.shared.state)
    }

    fn wake_replicators(&self) {
        for peer in self.shared.peers.iter().flatten() {
            peer.wake.notify_one();
        }
    }

    /// The error for a call that needs a live leader, if this server is not one.
    fn check_leader(&self, state: &State) -> Result<(), NodeError> {
        if state.crashed {
            Err(NodeError::Crashed)
        } else if state.core.is_leader() {
            Ok(())
        } else {
            Err(self.not_leader(&state.core))
        }
    }

    fn not_leader(&self, core: &RaftCore) -> NodeError {
        NodeError::NotLeader {
            leader: core
                .leader_hint()
                .and_then(|l| self.shared.config.addrs.get(l).cloned()),
        }
    }

    /// `SetLeader`: becomes leader of a new term (SPEC §5).
    pub fn set_leader(&self) -> Result<(), NodeError> {
        let mut state = self.state();
        if state.crashed {
            return Err(NodeError::Crashed);
        }
        state.core.set_leader()?;
        self.after_core_step(&mut state);
        Ok(())
    }

    /// `UpdateFile` on the leader: appends, waits until the entry is
    /// committed and applied, and returns the version the MetaStore rule
    /// gave it (-1 if rejected). Blocks while no majority is reachable.
    pub async fn update_file(&self, meta: FileMetaData) -> Result<i32, NodeError> {
        let rx = {
            let mut state = self.state();
            self.check_leader(&state)?;
            let term = state.core.term();
            limits::check_proposal(
                state.core.log_bytes(),
                state.core.unapplied_bytes(),
                &state.map,
                term,
                &meta,
                grpc::MAX_MESSAGE_BYTES,
            )?;
            let index = state
                .core
                .propose(meta)
                .map_err(|_| self.not_leader(&state.core))?;
            let (tx, rx) = oneshot::channel();
            state.waiters.insert((index, term), tx);
            self.after_core_step(&mut state);
            rx
        };
        // A dropped sender means the node went away: report it as a crash.
        rx.await.unwrap_or(Err(NodeError::Crashed))
    }

    /// `GetFileInfoMap` on the leader: confirms leadership with a majority
    /// first (blocking while there is none), then answers from applied state.
    pub async fn file_info_map(&self) -> Result<FileInfoMap, NodeError> {
        self.confirm_leadership().await?;
        let state = self.state();
        self.check_leader(&state)?;
        Ok(state.map.to_proto())
    }

    /// `GetBlockStoreAddr` on the leader, confirmed like a read.
    pub async fn confirmed_block_store_addr(&self) -> Result<String, NodeError> {
        self.confirm_leadership().await?;
        Ok(self.shared.config.block_store_addr.clone())
    }

    /// Waits until a majority acknowledges this server as leader of its term.
    async fn confirm_leadership(&self) -> Result<(), NodeError> {
        loop {
            self.check_leader(&self.state())?;
            if self.round(false).await? {
                return Ok(());
            }
            self.check_leader(&self.state())?;
            tokio::time::sleep(RETRY_INTERVAL).await;
        }
    }

    /// `SendHeartbeat`: one synchronous round that repairs every reachable
    /// peer's log and leaves it having applied everything this leader has
    /// committed when the call returns. Returns whether a majority (this
    /// server included) acknowledged; a follower answers `false`.
    pub async fn send_heartbeat(&self) -> Result<bool, NodeError> {
        {
            let state = self.state();
            if state.crashed {
                return Err(NodeError::Crashed);
            }
            if !state.core.is_leader() {
                return Ok(false);
            }
        }
        self.round(true).await
    }

    /// Sends AppendEntries to every peer at once. With `repair`, keeps
    /// sending to a peer until it holds the leader's whole log and knows its
    /// commit index, or fails. Returns whether a majority acknowledged this
    /// server's leadership (false if it stopped leading meanwhile).
    async fn round(&self, repair: bool) -> Result<bool, NodeError> {
        let cluster_size = self.shared.config.addrs.len();
        let mut acks = 1; // this server
        if repair {
            acks += self.repair().await;
        } else {
            // A read needs a majority, not the slowest peer.
            let mut replies: FuturesUnordered<_> = self
                .peer_ids()
                .map(|peer| self.exchange_until_done(peer, false))
                .collect();
            while let Some(acked) = replies.next().await {
                acks += usize::from(acked);
                if is_majority(acks, cluster_size) {
                    break;
                }
            }
        }
        let state = self.state();
        match self.check_leader(&state) {
            Ok(()) => Ok(is_majority(acks, cluster_size)),
            // Deposed during the round (a newer term, or a majority that
            // would not follow it): like any follower, no majority.
            Err(NodeError::NotLeader { .. }) => Ok(false),
            Err(crashed) => Err(crashed),
        }
    }

    /// Repairs every peer at once, then, in further passes, every peer
    /// that acknowledged and did not fail since but is behind again
    /// ([`RaftCore::peer_is_behind`]), until none is. One pass is not
    /// enough: a reply can commit entries, or confirm this leader and so
    /// release its held-back proposals, after other peers (or this one, at
    /// its last exchange) were sent the older commit index or log, and
    /// SendHeartbeat must leave every reachable peer holding and having
    /// applied what the leader has committed when it returns. A further pass
    /// is due only when the commit index or the sendable log moved during
    /// the last one, so the loop ends once proposals pause, as a repair
    /// does. Returns how many peers acknowledged leadership.
    async fn repair(&self) -> usize {
        let mut acknowledged = BTreeSet::new();
        let mut reachable = BTreeSet::new();
        let mut pending: Vec<ServerId> = self.peer_ids().collect();
        while !pending.is_empty() {
            let repairs = pending
                .iter()
                .map(async |&peer| (peer, self.exchange_until_done(peer, true).await));
            for (peer, acked) in futures::future::join_all(repairs).await {
                if acked {
                    acknowledged.insert(peer);
                    reachable.insert(peer);
                } else {
                    reachable.remove(&peer);
                }
            }
            let state = self.state();
            pending = reachable
                .iter()
                .copied()
                .filter(|&peer| state.core.peer_is_behind(peer))
                .collect();
        }
        acknowledged.len()
    }

    /// One peer's part of a round; true if the peer acknowledged leadership.
    /// A repair sends entries until the peer matches; a read only needs the
    /// acknowledgement, so it sends an empty request.
    async fn exchange_until_done(&self, peer: ServerId, repair: bool) -> bool {
        let max_entries = if repair { MAX_BATCH_ENTRIES } else { 0 };
        let mut acked = false;
        loop {
            match self.exchange(peer, max_entries).await {
                Some((ack, ReplicationStatus::SendMore)) if repair => acked |= ack,
                // The peer follows this leader but the reply was stale (the
                // replication task's probe moved nextIndex first): a repair
                // must not stop before the peer holds the log.
                Some((true, ReplicationStatus::Ignored)) if repair => acked = true,
                Some((ack, _)) => return acked | ack,
                None => return acked,
            }
        }
    }

    /// Sends `peer` a request built now, outside the replication window
    /// ([`RaftCore::sync_request`]), and feeds the outcome back. `None` if
    /// nothing was sent or the call failed.
    async fn exchange(
        &self,
        peer: ServerId,
        max_entries: usize,
    ) -> Option<(bool, ReplicationStatus)> {
        let outgoing = {
            let state = self.state();
            if state.crashed {
                return None;
            }
            state.core.sync_request(peer, max_entries)?
        };
        let client = self.shared.peers[peer].as_ref()?.client.clone();
        let (sent, outcome) = call(client, outgoing).await;
        self.feed_back(peer, &sent, outcome)
    }

    /// Feeds the outcome of a call to `peer` back to the core: the reply, or
    /// the failure. A reply that arrives while crashed is not acted on (the
    /// server takes part in nothing) and counts as a failure, so the core
    /// does not wait for it. Returns whether the reply acknowledged this
    /// leader, and the core's verdict; `None` for a failure.
    fn feed_back(
        &self,
        peer: ServerId,
        sent: &SentAppend,
        outcome: Result<AppendEntryOutput, tonic::Status>,
    ) -> Option<(bool, ReplicationStatus)> {
        let mut state = self.state();
        let reply = match outcome {
            Ok(reply) if !state.crashed => reply,
            Ok(_) => {
                state.core.report_unreachable(peer, sent);
                return None;
            }
            Err(status) => {
                tracing::debug!(peer, %status, "AppendEntries failed");
                state.core.report_unreachable(peer, sent);
                return None;
            }
        };
        let acked = state.core.acknowledges_leadership(sent, &reply);
        let status = state.core.handle_append_response(peer, sent, &reply);
        self.after_core_step(&mut state);
        Some((acked, status))
    }

    /// The requests the window lets the replication task send `peer` now.
    fn window_requests(&self, peer: ServerId) -> Vec<Outgoing> {
        let mut state = self.state();
        if state.crashed {
            return Vec::new();
        }
        std::iter::from_fn(|| state.core.next_append(peer, MAX_BATCH_ENTRIES)).collect()
    }

    /// A heartbeat for `peer`, unless crashed or not leading.
    fn heartbeat_request(&self, peer: ServerId) -> Option<Outgoing> {
        let state = self.state();
        if state.crashed {
            return None;
        }
        state.core.sync_request(peer, 0)
    }

    /// The per-peer replication loop. It keeps as many AppendEntries in
    /// flight as the core's window allows, topping it up after every reply
    /// and wake-up (a proposal, a new commit index, a confirmation,
    /// `Restore`); heartbeats on the configured period when nothing is in
    /// flight. After a failed call or a refusal the peer is left alone for a
    /// backoff ([`RETRY_INTERVAL`] doubling up to [`MAX_RETRY_INTERVAL`],
    /// with jitter) whatever wakes the task meanwhile: every proposal and
    /// commit wakes it, and trying a down peer at that rate redialled it
    /// hundreds of times a second. When the backoff ends it tries again if
    /// anything asked it to meanwhile or entries wait for a commit, so a
    /// blocked `UpdateFile` completes by itself once a majority is back.
    async fn replicate(self, peer: ServerId) {
        let Some(link) = self.shared.peers[peer].as_ref() else {
            return;
        };
        let mut ticker = self.shared.config.heartbeat.map(|period| {
            let mut t = tokio::time::interval(period);
            t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            t
        });
        let mut calls = FuturesUnordered::new();
        let mut backoff = Backoff::new(RETRY_INTERVAL, MAX_RETRY_INTERVAL);
        let mut paused = false;
        // After a failure: when the peer may be tried again.
        let mut held_until: Option<Instant> = None;
        // Something asked for a send while the peer was held.
        let mut asked = false;
        let mut beat_due = false;
        loop {
            if !paused {
                for outgoing in self.window_requests(peer) {
                    calls.push(call(link.client.clone(), outgoing));
                }
            }
            if std::mem::take(&mut beat_due)
                && calls.is_empty()
                && let Some(outgoing) = self.heartbeat_request(peer)
            {
                calls.push(call(link.client.clone(), outgoing));
            }
            let tick = async {
                match ticker.as_mut() {
                    Some(t) => {
                        t.tick().await;
                    }
                    None => std::future::pending().await,
                }
            };
            let release = async {
                match held_until {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                Some((sent, outcome)) = calls.next(), if !calls.is_empty() => {
                    match self.feed_back(peer, &sent, outcome) {
                        None | Some((_, ReplicationStatus::Denied)) => {
                            paused = true;
                            // The calls of one window fail together: one step.
                            held_until
                                .get_or_insert_with(|| Instant::now() + backoff.next_delay());
                        }
                        Some((_, ReplicationStatus::Matched | ReplicationStatus::SendMore)) => {
                            paused = false;
                            held_until = None;
                            backoff.reset();
                        }
                        Some((_, ReplicationStatus::Ignored | ReplicationStatus::NotLeader)) => {}
                    }
                }
                () = link.wake.notified() => {
                    if held_until.is_some() {
                        asked = true;
                    } else {
                        paused = false;
                    }
                }
                () = tick => {
                    if held_until.is_some() {
                        asked = true;
                    } else {
                        paused = false;
                        beat_due = true;
                    }
                }
                () = release => {
                    held_until = None;
                    if std::mem::take(&mut asked) || self.awaits_commit() {
                        paused = false;
                    }
                }
            }
        }
    }

    /// Whether this server leads with entries not yet committed: then a
    /// failed peer must be retried, or the pending `UpdateFile` calls would
    /// wait for an explicit heartbeat. Otherwise lagging peers catch up on
    /// the next heartbeat or proposal, as in the original.
    fn awaits_commit(&self) -> bool {
        let state = self.state();
        !state.crashed
            && state.core.is_leader()
            && state.core.commit_index() < state.core.last_index()
    }

    /// `AppendEntries` from a leader, validated at the edge.
    pub fn append_entries(&self, request: AppendRequest) -> Result<AppendEntryOutput, NodeError> {
        let mut state = self.state();
        if state.crashed {
            return Err(NodeError::Crashed);
        }
        let reply = state.core.handle_append_entries(request);
        self.after_core_step(&mut state);
        Ok(reply)
    }

    /// After any core step: carries out the core's [`super::Ready`]:
    /// persists it, wakes the replication tasks if the core has something
    /// new for peers, answers the calls whose proposals were abandoned, and
    /// applies what became committed, answering the calls it completes.
    fn after_core_step(&self, state: &mut State) {
        let ready = state.core.take_ready();
        if let Err(error) = state.storage.save(
            ready.hard_state,
            ready.log_changed_from,
            &ready.entries,
            ready.must_sync,
        ) {
            // Nothing that depends on this step may leave the process:
            // stop here, as etcd does when its WAL fails.
            tracing::error!(%error, "cannot persist raft state; stopping");
            std::process::exit(1);
        }
        if ready.wake_peers {
            self.wake_replicators();
        }
        if !ready.abandoned.is_empty() {
            let error = self.not_leader(&state.core);
            for key in ready.abandoned {
                if let Some(tx) = state.waiters.remove(&key) {
                    // The caller may have given up (deadline); nothing to do then.
                    let _ = tx.send(Err(error.clone()));
                }
            }
        }
        for (index, entry) in ready.committed {
            let key = (index, entry.term);
            let version = state.map.apply(entry.meta);
            if let Some(tx) = state.waiters.remove(&key) {
                let _ = tx.send(Ok(version));
            }
        }
    }

    /// `Crash`: enters the crashed state; pending calls fail.
    pub fn crash(&self) {
        let mut state = self.state();
        state.crashed = true;
        fail_waiters(&mut state, &NodeError::Crashed);
    }

    /// `Restore`: leaves the crashed state.
    pub fn restore(&self) {
        self.state().crashed = false;
        self.wake_replicators();
    }

    /// `IsCrashed`.
    pub fn is_crashed(&self) -> bool {
        self.state().crashed
    }

    /// `GetInternalState`: works whether crashed or not.
    pub fn internal_state(&self) -> InternalState {
        let state = self.state();
        InternalState {
            is_leader: state.core.is_leader(),
            term: state.core.term(),
            log: state.core.log().to_vec(),
            map: state.map.to_proto(),
        }
    }
}

/// Sends one AppendEntries with a deadline. It owns what it needs, so calls
/// to one peer can be in flight together while the node's mutex is free;
/// the request is moved into the call, and only its [`SentAppend`] is kept.
async fn call(
    mut client: RaftSurfstoreClient<Channel>,
    outgoing: Outgoing,
) -> (SentAppend, Result<AppendEntryOutput, tonic::Status>) {
    let Outgoing { request, sent } = outgoing;
    let bytes = u64::try_from(request.encoded_len()).unwrap_or(u64::MAX);
    let mut request = tonic::Request::new(request);
    request.set_timeout(
        APPEND_TIMEOUT + Duration::from_millis(bytes.saturating_mul(1000) / MIN_PEER_BYTES_PER_SEC),
    );
    let outcome = client
        .append_entries(request)
        .await
        .map(tonic::Response::into_inner);
    (sent, outcome)
}

fn fail_waiters(state: &mut State, error: &NodeError) {
    for (_, tx) in std::mem::take(&mut state.waiters) {
        let _ = tx.send(Err(error.clone()));
    }
}
