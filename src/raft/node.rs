//! The async driver around [`RaftCore`]: one event loop owns the core, the
//! waiters of pending `UpdateFile` calls, the applied [`FileMap`] and the
//! chaos flag; one replication task per peer moves bytes.
//!
//! Every decision is the core's. Everything that touches the core is a step
//! sent to the loop through a channel (a proposal, an AppendEntries from a
//! leader, a peer's reply or failure, a request to build, a chaos call, a
//! read). Each turn the loop runs every step that is waiting, takes the
//! core's [`super::Ready`] once, and persists it in one write on a blocking
//! thread (group commit: one fsync covers every proposal and request of the
//! turn), never on a tokio worker. Only then does anything the turn decided
//! leave the loop: the steps' answers (an AppendEntries reply, a request to
//! send), the applied versions of committed proposals. One exception, Raft
//! thesis §10.2.1: when the core has something new for peers and the turn
//! keeps term and vote, the loop builds the peers' requests before the write
//! and hands them to the replication tasks, so followers write the new
//! entries while the leader does. The leader's own copy still counts toward
//! a majority only once durable: the replies are steps, and no step runs
//! before the write ends. The loop also answers abandoned proposals.
//!
//! A storage error is a state, not an exit: the node logs it once, answers
//! every call with [`NodeError::Failed`] (`UNAVAILABLE`) from then on, and
//! [`RaftNode::failed`] tells the binary to exit non-zero.
//!
//! `Crash` abandons the node's outstanding AppendEntries: every call built
//! before it is dropped when it comes, so a request cannot reach a peer
//! after the peer was restored. What remains: bytes already on the wire, a
//! request the peer already received, are processed by the peer.
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
//! # Snapshots (SPEC §9.2)
//!
//! With [`NodeConfig::snapshot_entries`] set, the loop hands the core the
//! applied map whenever that many entries were applied since the last
//! snapshot ([`RaftCore::compact`]), at the end of the turn that applied
//! them, once its callers are answered, and persists it at once. A peer that needs entries compacted away gets
//! the snapshot instead ([`RaftCore::snapshot_for`]): its replication task
//! (or a round's exchange) streams it in chunks of [`SNAPSHOT_CHUNK_BYTES`],
//! resuming where the follower says it stopped, and feeds the reply to the
//! last chunk back like an AppendEntries reply; replication then goes on
//! from the snapshot's end. A follower puts the chunks together
//! ([`RaftNode::install_snapshot`]) and hands the whole snapshot to its
//! core, whose Ready then has it persisted and loaded into the map.
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
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use prost::Message;
use tokio::sync::{Notify, mpsc, oneshot, watch};
use tokio::time::Instant;

use super::core::{
    Outgoing, OutgoingSnapshot, RaftCore, Ready, ReplicationStatus, SentAppend, SnapshotWrite,
    TermExhausted,
};
use super::limits;
use super::quorum::is_majority;
use super::storage::{RaftStorage, StorageError};
use super::transport::{GrpcTransport, Transport};
use super::{
    AppendRequest, ElectionConfig, Entry, LogIndex, ServerId, Snapshot, SnapshotChunk,
    SnapshotRequest, Term, VoteAsk, VoteRequest,
};
use crate::backoff::Backoff;
use crate::grpc;
use crate::meta_store::{FileMap, MapChanges};
use crate::proto::{
    AppendEntryOutput, FileInfoMap, FileMetaData, InstallSnapshotInput, InstallSnapshotOutput,
    RequestVoteOutput,
};
use crate::security::ClientSecurity;

/// The most entries one AppendEntries carries; more are sent in the next.
const MAX_BATCH_ENTRIES: usize = 4096;

/// The most snapshot bytes one InstallSnapshot call carries (SPEC §9.2).
pub const SNAPSHOT_CHUNK_BYTES: usize = 4 << 20;

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

/// Ticks per election timeout: the election clock runs at a twentieth of
/// N, so a timer fires at most N/20 late and randomized timeouts fall on
/// twenty steps of `[N, 2N)`.
const ELECTION_TICKS: u32 = 20;

/// How often a read, or a `SetLeader` waiting for its election, looks
/// again whether the leader is ready for it.
const READY_POLL: Duration = Duration::from_millis(2);

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
    /// A snapshot chunk that cannot be part of a snapshot a leader sends.
    #[error("InstallSnapshot refused: {0}")]
    BadSnapshot(String),
    /// The server could not persist its state and serves nothing until it
    /// is restarted.
    #[error("Server cannot persist its state; it must be restarted.")]
    Failed,
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
    /// The saved snapshot does not hold a map.
    #[error("the saved snapshot is not a MetaStore map: {0}")]
    Snapshot(#[from] prost::DecodeError),
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
    /// Snapshot the applied map and drop the log before it every this many
    /// applied entries; 0 never does.
    pub snapshot_entries: usize,
    /// The election timeout N (SPEC §9.1); `None` leaves leadership to
    /// `SetLeader`. Needs a `heartbeat` below it.
    pub election_timeout: Option<Duration>,
}

/// A snapshot for `GetInternalState`.
#[derive(Debug, Clone)]
pub struct InternalState {
    /// Whether this server believes it is the leader.
    pub is_leader: bool,
    /// Its current term.
    pub term: Term,
    /// Its log after the snapshot.
    pub log: Vec<Entry>,
    /// The index of `log[0]` (0 when nothing was compacted).
    pub first_log_index: LogIndex,
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
    /// The event loop's input.
    steps: mpsc::UnboundedSender<Step>,
    /// How requests reach the peers.
    transport: Arc<dyn Transport>,
    /// Per peer: the wake-up of its replication task (None for this
    /// server).
    peers: Vec<Option<Arc<Notify>>>,
    /// How many times this server was crashed: a call built before a crash
    /// is abandoned when it comes.
    crashes: watch::Receiver<u64>,
    /// Whether storage failed.
    failed: watch::Receiver<bool>,
    /// The last applied index, for watching clients.
    changes: MapChanges,
}

/// Something to do with the node's state on the event loop. It returns its
/// answer, which the loop delivers once the turn's Ready is durable.
type Step = Box<dyn FnOnce(&mut State) -> Answer + Send>;

/// Delivers a step's answer to its caller.
type Answer = Box<dyn FnOnce() + Send>;

/// What the event loop owns.
struct State {
    core: RaftCore,
    crashed: bool,
    failed: bool,
    map: FileMap,
    /// Every server's address, to name the leader in errors.
    addrs: Vec<String>,
    /// Pending `UpdateFile` calls by the index and term of their entry:
    /// where to send the applied version.
    waiters: BTreeMap<(LogIndex, Term), oneshot::Sender<Result<i32, NodeError>>>,
    crashes: watch::Sender<u64>,
    failed_signal: watch::Sender<bool>,
    /// Set to the last applied index after each apply.
    changes: MapChanges,
    /// Per peer: where the loop hands the peer's replication task the
    /// requests it built while writing (None for this server).
    outboxes: Vec<Option<mpsc::UnboundedSender<Built>>>,
    /// Per peer: its replication task is backing off after a failed call or
    /// a refusal, so the loop builds nothing for it and only wakes it.
    held: Vec<bool>,
    /// Applied entries after which to compact (0: never).
    snapshot_entries: usize,
    /// The snapshot a leader is streaming to this server, as far as it came.
    incoming: Option<Incoming>,
    /// The map of a leader's snapshot the core took, loaded once it is
    /// durable.
    installed_map: Option<FileMap>,
}

/// A snapshot arriving in chunks: whose, and the bytes so far.
struct Incoming {
    /// The term, sender and `(lastIncludedIndex, lastIncludedTerm)` its
    /// chunks carry.
    key: (Term, ServerId, (LogIndex, Term)),
    data: Vec<u8>,
}

/// Requests built for one peer, and the crash count they were built at.
type Built = (Vec<Outgoing>, u64);

/// Why a Ready could not be persisted.
#[derive(Debug, thiserror::Error)]
enum PersistError {
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("the storage writer thread panicked")]
    Writer,
}

/// The event loop: the state, the storage it persists to, and its input.
struct Driver {
    state: State,
    /// `None` only once a write failed.
    storage: Option<Box<dyn RaftStorage>>,
    steps: mpsc::UnboundedReceiver<Step>,
    /// Each peer's id and the wake-up of its replication task.
    wakes: Vec<(ServerId, Arc<Notify>)>,
    /// The election clock's period, with elections on.
    tick: Option<Duration>,
    /// Where vote replies go: the loop's own input, held weakly so the loop
    /// still ends once every handle of the node is gone.
    own_steps: mpsc::WeakUnboundedSender<Step>,
    /// How vote requests reach the peers.
    transport: Arc<dyn Transport>,
    /// How long a vote request may take: the election timeout.
    vote_timeout: Duration,
    /// Term, leading and campaigning as last logged.
    role: (Term, bool, bool),
}

impl RaftNode {
    /// Creates the node from what `storage` holds (replaying its committed
    /// prefix into the map), reaching its peers over gRPC (as `peers` says), and spawns its
    /// event loop and one replication task per peer on the current tokio
    /// runtime.
    pub fn start(
        config: NodeConfig,
        storage: Box<dyn RaftStorage>,
        peers: &ClientSecurity,
    ) -> Result<Self, StartError> {
        let transport = GrpcTransport::new(&config.addrs, config.id, peers)?;
        Self::start_with(config, storage, Arc::new(transport))
    }

    /// [`RaftNode::start`] with peers reached through `transport`.
    pub fn start_with(
        config: NodeConfig,
        mut storage: Box<dyn RaftStorage>,
        transport: Arc<dyn Transport>,
    ) -> Result<Self, StartError> {
        let (hard, log) = storage.load()?;
        let snapshot = storage.load_snapshot()?;
        let map = match &snapshot {
            Some(snapshot) => FileMap::from_encoded(&snapshot.data)?,
            None => FileMap::default(),
        };
        let peers: Vec<_> = (0..config.addrs.len())
            .map(|id| (id != config.id).then(|| Arc::new(Notify::new())))
            .collect();
        tracing::info!(
            term = hard.term,
            commit = hard.commit,
            entries = log.len(),
            "loaded raft state"
        );
        let mut core =
            RaftCore::restore_with_snapshot(config.id, config.addrs.len(), hard, snapshot, log);
        core.set_pipeline_depth(config.pipeline_depth);
        if config.election_timeout.is_some() {
            core.enable_elections(ElectionConfig {
                ticks: ELECTION_TICKS,
                seed: random_seed(config.id),
            });
        }
        let (steps_tx, steps) = mpsc::unbounded_channel();
        let (crashes, crashes_rx) = watch::channel(0);
        let (failed_signal, failed_rx) = watch::channel(false);
        let changes = MapChanges::default();
        let (outboxes, mut inboxes): (Vec<_>, Vec<_>) = peers
            .iter()
            .map(|wake| match wake {
                Some(_) => {
                    let (tx, rx) = mpsc::unbounded_channel();
                    (Some(tx), Some(rx))
                }
                None => (None, None),
            })
            .unzip();
        let mut state = State {
            core,
            crashed: false,
            failed: false,
            map,
            addrs: config.addrs.clone(),
            waiters: BTreeMap::new(),
            crashes,
            failed_signal,
            changes: changes.clone(),
            outboxes,
            held: vec![false; config.addrs.len()],
            snapshot_entries: config.snapshot_entries,
            incoming: None,
            installed_map: None,
        };
        // What was loaded is durable: this Ready only replays the committed
        // prefix.
        let replay = state.core.take_ready();
        state.carry_out(replay);
        let wakes = peers
            .iter()
            .enumerate()
            .filter_map(|(id, wake)| Some((id, wake.clone()?)))
            .collect();
        tokio::spawn(
            Driver {
                state,
                storage: Some(storage),
                steps,
                wakes,
                tick: config
                    .election_timeout
                    .map(|n| (n / ELECTION_TICKS).max(Duration::from_millis(1))),
                own_steps: steps_tx.downgrade(),
                transport: transport.clone(),
                vote_timeout: config.election_timeout.unwrap_or(APPEND_TIMEOUT),
                role: (hard.term, false, false),
            }
            .run(),
        );
        let node = RaftNode {
            shared: Arc::new(Shared {
                config,
                steps: steps_tx,
                transport,
                peers,
                crashes: crashes_rx,
                failed: failed_rx,
                changes,
            }),
        };
        for peer in node.peer_ids() {
            if let Some(inbox) = inboxes.get_mut(peer).and_then(Option::take) {
                tokio::spawn(node.clone().replicate(peer, inbox));
            }
        }
        Ok(node)
    }

    /// The BlockStore address this cluster hands to clients.
    pub fn block_store_addr(&self) -> &str {
        &self.shared.config.block_store_addr
    }

    /// The map's version (its last applied index), for the `MapWatch`
    /// service.
    pub fn map_changes(&self) -> MapChanges {
        self.shared.changes.clone()
    }

    /// Completes once storage failed: the server then serves nothing, and
    /// its process should exit non-zero.
    pub async fn failed(&self) {
        let mut failed = self.shared.failed.clone();
        // A closed channel means the loop is gone: nothing is served either.
        let _ = failed.wait_for(|&f| f).await;
    }

    fn peer_ids(&self) -> impl Iterator<Item = ServerId> + use<> {
        let me = self.shared.config.id;
        (0..self.shared.config.addrs.len()).filter(move |&p| p != me)
    }

    fn wake_replicators(&self) {
        for wake in self.shared.peers.iter().flatten() {
            wake.notify_one();
        }
    }

    /// Runs `step` on the event loop and returns its answer once the turn
    /// it ran in is durable; [`NodeError::Failed`] once storage failed.
    async fn with<R, F>(&self, step: F) -> Result<R, NodeError>
    where
        R: Send + 'static,
        F: FnOnce(&mut State) -> R + Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        let step: Step = Box::new(move |state: &mut State| -> Answer {
            let result = if state.failed {
                Err(NodeError::Failed)
            } else {
                Ok(step(state))
            };
            Box::new(move || {
                // The caller may have given up (deadline); nothing to do then.
                let _ = tx.send(result);
            })
        });
        self.shared
            .steps
            .send(step)
            .map_err(|_| NodeError::Failed)?;
        // A dropped answer means the turn's write failed.
        rx.await.unwrap_or(Err(NodeError::Failed))
    }

    /// `SetLeader`: becomes leader of a new term (SPEC §5). With elections
    /// it campaigns at once and returns whether it won, once the campaign
    /// ended: won, lost to a newer term, or out of time (SPEC §9.1).
    pub async fn set_leader(&self) -> Result<bool, NodeError> {
        let term = self
            .with(|state| {
                if state.crashed {
                    return Err(NodeError::Crashed);
                }
                state.core.set_leader()?;
                Ok(state.core.term())
            })
            .await??;
        loop {
            let (leading, campaigning, now) = self
                .with(|state| {
                    let core = &state.core;
                    (core.is_leader(), core.campaigning(), core.term())
                })
                .await?;
            if now != term || !campaigning {
                return Ok(leading && now == term);
            }
            tokio::time::sleep(READY_POLL).await;
        }
    }

    /// `UpdateFile` on the leader: appends, waits until the entry is
    /// committed and applied, and returns the version the MetaStore rule
    /// gave it (-1 if rejected). Blocks while no majority is reachable.
    pub async fn update_file(&self, meta: FileMetaData) -> Result<i32, NodeError> {
        let rx = self
            .with(move |state| {
                state.check_leader()?;
                let term = state.core.term();
                limits::check_proposal(
                    state.core.log_bytes(),
                    state.core.unapplied_bytes(),
                    &state.map,
                    term,
                    &meta,
                    grpc::MAX_MESSAGE_BYTES,
                )?;
                let index = state.core.propose(meta).map_err(|_| state.not_leader())?;
                let (tx, rx) = oneshot::channel();
                state.waiters.insert((index, term), tx);
                Ok::<_, NodeError>(rx)
            })
            .await??;
        // A dropped sender means the node went away: report it as a crash.
        rx.await.unwrap_or(Err(NodeError::Crashed))
    }

    /// `GetFileInfoMap` on the leader: confirms leadership with a majority
    /// first (blocking while there is none), then answers from applied state
    /// (its encoded `FileInfoMap`, shared by reads until the next apply).
    pub async fn file_info_map(&self) -> Result<bytes::Bytes, NodeError> {
        self.confirm_leadership().await?;
        self.with(|state| {
            state.check_leader()?;
            Ok(state.map.encoded())
        })
        .await?
    }

    /// `GetBlockStoreAddr` on the leader, confirmed like a read.
    pub async fn confirmed_block_store_addr(&self) -> Result<String, NodeError> {
        self.confirm_leadership().await?;
        Ok(self.shared.config.block_store_addr.clone())
    }

    /// Waits until a majority acknowledges this server as leader of its term
    /// (ReadIndex); with elections, first until the leader committed an
    /// entry of its term, since only then does its commit index cover every
    /// write acknowledged before the read.
    async fn confirm_leadership(&self) -> Result<(), NodeError> {
        loop {
            let ready = self
                .with(|state| {
                    state.check_leader()?;
                    Ok::<_, NodeError>(!state.core.elections() || state.core.committed_in_term())
                })
                .await??;
            if !ready {
                tokio::time::sleep(READY_POLL).await;
                continue;
            }
            if self.round(false).await? {
                return Ok(());
            }
            self.with(|state| state.check_leader()).await??;
            tokio::time::sleep(RETRY_INTERVAL).await;
        }
    }

    /// `SendHeartbeat`: one synchronous round that repairs every reachable
    /// peer's log and leaves it having applied everything this leader has
    /// committed when the call returns. Returns whether a majority (this
    /// server included) acknowledged; a follower answers `false`.
    pub async fn send_heartbeat(&self) -> Result<bool, NodeError> {
        let leading = self
            .with(|state| {
                if state.crashed {
                    Err(NodeError::Crashed)
                } else {
                    Ok(state.core.is_leader())
                }
            })
            .await??;
        if !leading {
            return Ok(false);
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
        self.with(move |state| match state.check_leader() {
            Ok(()) => Ok(is_majority(acks, cluster_size)),
            // Deposed during the round (a newer term, or a majority that
            // would not follow it): like any follower, no majority.
            Err(NodeError::NotLeader { .. }) => Ok(false),
            Err(crashed) => Err(crashed),
        })
        .await?
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
    /// the last one, and only for what the log held when the round began,
    /// so the loop ends even under a steady stream of updates. Returns how
    /// many peers acknowledged leadership.
    async fn repair(&self) -> usize {
        let mut acknowledged = BTreeSet::new();
        let mut reachable = BTreeSet::new();
        let mut pending: Vec<ServerId> = self.peer_ids().collect();
        let goal = self
            .with(|state| state.core.last_index())
            .await
            .unwrap_or(-1);
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
            let candidates = reachable.clone();
            pending = self
                .with(move |state| {
                    candidates
                        .into_iter()
                        .filter(|&peer| state.core.peer_is_behind(peer, goal))
                        .collect()
                })
                .await
                .unwrap_or_default();
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
        let (request, crashes) = self
            .with(move |state| {
                let core = &state.buildable()?.core;
                let request = match core.snapshot_for(peer) {
                    Some(snapshot) => Request::Snapshot(snapshot),
                    None => Request::Append(core.sync_request(peer, max_entries)?),
                };
                Some((request, state.crash_count()))
            })
            .await
            .ok()
            .flatten()?;
        let (sent, outcome) = match request {
            Request::Append(outgoing) => self.call(peer, outgoing, crashes).await,
            Request::Snapshot(snapshot) => self.transfer(peer, snapshot, crashes).await,
        };
        self.feed_back(peer, sent, outcome).await
    }

    /// Streams `outgoing`'s snapshot to `peer` in chunks of at most
    /// [`SNAPSHOT_CHUNK_BYTES`], each from where the follower's last reply
    /// says its copy ends, until it has all of it; abandoned like
    /// [`RaftNode::call`] when this server is crashed. The outcome is the
    /// reply to the last chunk, or to the first that was refused, or the
    /// first failure. A follower that keeps losing what it was sent (it
    /// restarted, or another transfer replaced this one) fails the
    /// transfer once twice the snapshot's chunks went out, so the task
    /// backs off rather than loop.
    async fn transfer(
        &self,
        peer: ServerId,
        outgoing: OutgoingSnapshot,
        crashes: u64,
    ) -> (SentAppend, Result<AppendEntryOutput, tonic::Status>) {
        let OutgoingSnapshot {
            term,
            leader_id,
            last_log,
            snapshot,
            sent,
        } = outgoing;
        let data = &snapshot.data;
        let mut calls_left = 2 * (data.len() / SNAPSHOT_CHUNK_BYTES + 1);
        let mut offset = 0;
        loop {
            let end = data.len().min(offset + SNAPSHOT_CHUNK_BYTES);
            let chunk = InstallSnapshotInput {
                term,
                leader_id,
                last_log_index: last_log.1,
                last_log_term: last_log.0,
                last_included_index: snapshot.last_index,
                last_included_term: snapshot.last_term,
                offset: i64::try_from(offset).unwrap_or(i64::MAX),
                data: data.slice(offset..end),
                done: end == data.len(),
            };
            let timeout = call_timeout(chunk.encoded_len());
            let reply = self.shared.transport.install_snapshot(peer, chunk, timeout);
            let reply = match self.abandon_on_crash(reply, crashes).await {
                Ok(reply) => reply,
                Err(status) => return (sent, Err(status)),
            };
            let result = reply.result.unwrap_or_default();
            let resume = usize::try_from(reply.next_offset)
                .ok()
                .filter(|&at| at <= data.len());
            match resume {
                Some(at) if result.success && result.term == term && at == data.len() => {
                    if end == data.len() {
                        return (sent, Ok(result));
                    }
                    // The follower has all already (a duplicate transfer).
                    offset = at;
                }
                Some(at) if result.success && result.term == term => offset = at,
                _ if !result.success || result.term != term => return (sent, Ok(result)),
                _ => {
                    let status = tonic::Status::internal(format!(
                        "InstallSnapshot reply says the follower holds {} bytes of a snapshot of {}",
                        reply.next_offset,
                        data.len()
                    ));
                    return (sent, Err(status));
                }
            }
            calls_left -= 1;
            if calls_left == 0 {
                let status = tonic::Status::aborted("the follower keeps losing the snapshot");
                return (sent, Err(status));
            }
        }
    }

    /// Feeds the outcome of a call to `peer` back to the core (see
    /// [`State::feed_back`]).
    async fn feed_back(
        &self,
        peer: ServerId,
        sent: SentAppend,
        outcome: Result<AppendEntryOutput, tonic::Status>,
    ) -> Option<(bool, ReplicationStatus)> {
        self.with(move |state| state.feed_back(peer, &sent, outcome))
            .await
            .ok()
            .flatten()
    }

    /// Sends one AppendEntries to `peer` with a deadline, unless this
    /// server is crashed after its `crashes`th crash first, when the call is
    /// abandoned. The call runs as its own task from now on, so it
    /// progresses while the replication task waits for the event loop (a
    /// write under way); the request is moved into it, and only its
    /// [`SentAppend`] is kept.
    fn call(
        &self,
        peer: ServerId,
        outgoing: Outgoing,
        crashes: u64,
    ) -> impl Future<Output = (SentAppend, Result<AppendEntryOutput, tonic::Status>)> + Send + use<>
    {
        let Outgoing { request, sent } = outgoing;
        let timeout = call_timeout(request.encoded_len());
        let reply = self.shared.transport.append_entries(peer, request, timeout);
        let outcome = self.abandon_on_crash(reply, crashes);
        async move { (sent, outcome.await) }
    }

    /// Runs the call `reply` as its own task, so it progresses while its
    /// caller waits for the event loop, and abandons it when this server is
    /// crashed after its `crashes`th crash.
    fn abandon_on_crash<T: Send + 'static>(
        &self,
        reply: futures::future::BoxFuture<'static, Result<T, tonic::Status>>,
        crashes: u64,
    ) -> impl Future<Output = Result<T, tonic::Status>> + Send + use<T> {
        let mut crashed = self.shared.crashes.clone();
        let task = tokio::spawn(async move {
            tokio::select! {
                outcome = reply => outcome,
                // A closed channel means the loop is gone: abandon the call too.
                _ = crashed.wait_for(|&c| c != crashes) => {
                    Err(tonic::Status::cancelled("abandoned: this server was crashed"))
                }
            }
        });
        async move {
            task.await.unwrap_or_else(|error| {
                Err(tonic::Status::internal(format!(
                    "call to a peer failed: {error}"
                )))
            })
        }
    }

    /// The requests the window lets the replication task send `peer` now,
    /// and the crash count they were built at; when none is built and none
    /// is `in_flight`, the snapshot the peer needs, if it needs one (one
    /// step of the loop for both).
    async fn window_requests(
        &self,
        peer: ServerId,
        in_flight: bool,
    ) -> (Built, Option<OutgoingSnapshot>) {
        self.with(move |state| {
            if let Some(held) = state.held.get_mut(peer) {
                *held = false;
            }
            let built = state.build(peer);
            let snapshot = (built.0.is_empty() && !in_flight)
                .then(|| state.buildable()?.core.snapshot_for(peer))
                .flatten();
            (built, snapshot)
        })
        .await
        .unwrap_or_default()
    }

    /// A heartbeat for `peer`, unless crashed or not leading, and the crash
    /// count it was built at.
    async fn heartbeat_request(&self, peer: ServerId) -> Option<(Outgoing, u64)> {
        self.with(move |state| {
            let outgoing = state.buildable()?.core.sync_request(peer, 0)?;
            Some((outgoing, state.crash_count()))
        })
        .await
        .ok()
        .flatten()
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
    /// It ends when storage fails.
    async fn replicate(self, peer: ServerId, mut inbox: mpsc::UnboundedReceiver<Built>) {
        let Some(wake) = self.shared.peers.get(peer).cloned().flatten() else {
            return;
        };
        let mut ticker = self.shared.config.heartbeat.map(|period| {
            let mut t = tokio::time::interval(period);
            t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            t
        });
        let mut calls = FuturesUnordered::new();
        // With elections a peer must hear from its leader within N, so a
        // peer that comes back is tried within a heartbeat.
        let longest = match (
            self.shared.config.election_timeout,
            self.shared.config.heartbeat,
        ) {
            (Some(_), Some(beat)) => beat.min(MAX_RETRY_INTERVAL),
            _ => MAX_RETRY_INTERVAL,
        };
        let mut backoff = Backoff::new(RETRY_INTERVAL.min(longest), longest);
        let mut paused = false;
        // After a failure: when the peer may be tried again.
        let mut held_until: Option<Instant> = None;
        // Something asked for a send while the peer was held.
        let mut asked = false;
        let mut beat_due = false;
        while !*self.shared.failed.borrow() {
            if !paused {
                let ((requests, crashes), snapshot) =
                    self.window_requests(peer, !calls.is_empty()).await;
                for outgoing in requests {
                    calls.push(self.call(peer, outgoing, crashes));
                }
                // Nothing else goes to a peer while it gets the snapshot.
                if let Some(snapshot) = snapshot {
                    let (sent, outcome) = self.transfer(peer, snapshot, crashes).await;
                    let verdict = self.feed_back(peer, sent, outcome).await;
                    settle(verdict, &mut paused, &mut held_until, &mut backoff);
                    continue;
                }
            }
            if std::mem::take(&mut beat_due)
                && calls.is_empty()
                && let Some((outgoing, crashes)) = self.heartbeat_request(peer).await
            {
                calls.push(self.call(peer, outgoing, crashes));
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
                    let verdict = self.feed_back(peer, sent, outcome).await;
                    settle(verdict, &mut paused, &mut held_until, &mut backoff);
                }
                Some((requests, crashes)) = inbox.recv() => {
                    // Recorded as sent in the core's window: sent whatever
                    // the backoff, or the window would wait for them.
                    for outgoing in requests {
                        calls.push(self.call(peer, outgoing, crashes));
                    }
                }
                () = wake.notified() => {
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
                    if std::mem::take(&mut asked) || self.awaits_commit().await {
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
    async fn awaits_commit(&self) -> bool {
        self.with(|state| {
            !state.crashed
                && state.core.is_leader()
                && state.core.commit_index() < state.core.last_index()
        })
        .await
        .unwrap_or(false)
    }

    /// `AppendEntries` from a leader, validated at the edge. The reply
    /// leaves once what it acknowledges is durable.
    pub async fn append_entries(
        &self,
        request: AppendRequest,
    ) -> Result<AppendEntryOutput, NodeError> {
        self.with(move |state| {
            if state.crashed {
                return Err(NodeError::Crashed);
            }
            Ok(state.core.handle_append_entries(request))
        })
        .await?
    }

    /// A RequestVote or PreVote from a candidate, validated at the edge.
    /// The reply leaves once a vote it grants is durable.
    pub async fn request_vote(&self, ask: VoteAsk) -> Result<RequestVoteOutput, NodeError> {
        self.with(move |state| {
            if state.crashed {
                return Err(NodeError::Crashed);
            }
            Ok(state.core.handle_vote_request(ask))
        })
        .await?
    }

    /// One `InstallSnapshot` chunk from a leader, validated at the edge. The
    /// chunks of one snapshot are put together here; the core sees each
    /// sender (term and vote rules) and, with the last chunk, the whole
    /// snapshot. The reply says how many bytes of the snapshot this server
    /// holds, so the leader resumes from there; it leaves once what it
    /// acknowledges is durable.
    pub async fn install_snapshot(
        &self,
        chunk: SnapshotChunk,
    ) -> Result<InstallSnapshotOutput, NodeError> {
        self.with(move |state| {
            if state.crashed {
                return Err(NodeError::Crashed);
            }
            state.install_snapshot(chunk)
        })
        .await?
    }

    /// `Crash`: enters the crashed state; pending calls fail, and the
    /// AppendEntries this server has in flight are abandoned.
    pub async fn crash(&self) -> Result<(), NodeError> {
        self.with(|state| {
            state.crashed = true;
            state.crashes.send_modify(|count| *count += 1);
            state.fail_waiters(&NodeError::Crashed);
        })
        .await
    }

    /// `Restore`: leaves the crashed state.
    pub async fn restore(&self) -> Result<(), NodeError> {
        self.with(|state| state.crashed = false).await?;
        self.wake_replicators();
        Ok(())
    }

    /// `IsCrashed`.
    pub async fn is_crashed(&self) -> Result<bool, NodeError> {
        self.with(|state| state.crashed).await
    }

    /// `GetInternalState`: works whether crashed or not.
    pub async fn internal_state(&self) -> Result<InternalState, NodeError> {
        self.with(|state| InternalState {
            is_leader: state.core.is_leader(),
            term: state.core.term(),
            log: state.core.log().to_vec(),
            first_log_index: state.core.first_index(),
            map: state.map.to_proto(),
        })
        .await
    }
}

impl State {
    fn not_leader(&self) -> NodeError {
        NodeError::NotLeader {
            leader: self
                .core
                .leader_hint()
                .and_then(|l| self.addrs.get(l).cloned()),
        }
    }

    /// The error for a call that needs a live leader, if this server is not one.
    fn check_leader(&self) -> Result<(), NodeError> {
        if self.crashed {
            Err(NodeError::Crashed)
        } else if self.core.is_leader() {
            Ok(())
        } else {
            Err(self.not_leader())
        }
    }

    /// The state, if requests may be built from it: not while crashed.
    fn buildable(&mut self) -> Option<&mut State> {
        (!self.crashed).then_some(self)
    }

    fn crash_count(&self) -> u64 {
        *self.crashes.borrow()
    }

    /// The requests the window lets this server send `peer` now, unless
    /// crashed.
    fn build(&mut self, peer: ServerId) -> Built {
        let count = self.crash_count();
        let Some(state) = self.buildable() else {
            return (Vec::new(), count);
        };
        let core = &mut state.core;
        let requests = std::iter::from_fn(|| core.next_append(peer, MAX_BATCH_ENTRIES));
        (requests.collect(), count)
    }

    /// Feeds the outcome of a call to `peer` back to the core: the reply, or
    /// the failure. A reply that arrives while crashed is not acted on (the
    /// server takes part in nothing) and counts as a failure, so the core
    /// does not wait for it. Returns whether the reply acknowledged this
    /// leader, and the core's verdict; `None` for a failure.
    fn feed_back(
        &mut self,
        peer: ServerId,
        sent: &SentAppend,
        outcome: Result<AppendEntryOutput, tonic::Status>,
    ) -> Option<(bool, ReplicationStatus)> {
        let reply = match outcome {
            Ok(reply) if !self.crashed => reply,
            Ok(_) => {
                self.core.report_unreachable(peer, sent);
                self.hold(peer);
                return None;
            }
            Err(status) => {
                tracing::debug!(peer, %status, "AppendEntries failed");
                self.core.report_unreachable(peer, sent);
                self.hold(peer);
                return None;
            }
        };
        let acked = self.core.acknowledges_leadership(sent, &reply);
        let status = self.core.handle_append_response(peer, sent, &reply);
        if status == ReplicationStatus::Denied {
            self.hold(peer);
        }
        Some((acked, status))
    }

    /// One chunk of a snapshot (see [`RaftNode::install_snapshot`]).
    fn install_snapshot(
        &mut self,
        chunk: SnapshotChunk,
    ) -> Result<InstallSnapshotOutput, NodeError> {
        let admitted = self
            .core
            .handle_install_snapshot(SnapshotRequest::new(&chunk, None));
        if !admitted.success {
            return Ok(snapshot_reply(admitted, 0));
        }
        let key = (chunk.term, chunk.sender.id, chunk.last);
        let incoming = match &mut self.incoming {
            Some(incoming) if incoming.key == key => incoming,
            other => other.insert(Incoming {
                key,
                data: Vec::new(),
            }),
        };
        let held = incoming.data.len() as u64;
        if chunk.offset != held {
            return Ok(snapshot_reply(admitted, held));
        }
        // The map a snapshot holds fits in one GetFileInfoMap reply
        // (proposals that would grow it further are refused).
        if chunk.end() > grpc::MAX_MESSAGE_BYTES as u64 {
            self.incoming = None;
            return Err(NodeError::BadSnapshot(format!(
                "{} bytes is more than a map can take",
                chunk.end()
            )));
        }
        incoming.data.extend_from_slice(&chunk.data);
        let held = incoming.data.len() as u64;
        if !chunk.done {
            return Ok(snapshot_reply(admitted, held));
        }
        let data = bytes::Bytes::from(std::mem::take(&mut incoming.data));
        self.incoming = None;
        let map = FileMap::from_encoded(&data)
            .map_err(|e| NodeError::BadSnapshot(format!("not a MetaStore map: {e}")))?;
        let (last_index, last_term) = chunk.last;
        let snapshot = Arc::new(Snapshot {
            last_index,
            last_term,
            data,
        });
        let reply = self
            .core
            .handle_install_snapshot(SnapshotRequest::new(&chunk, Some(snapshot.clone())));
        if self
            .core
            .snapshot()
            .is_some_and(|s| Arc::ptr_eq(s, &snapshot))
        {
            self.installed_map = Some(map);
        }
        Ok(snapshot_reply(reply, held))
    }

    /// Hands the core the applied map as a snapshot when
    /// [`NodeConfig::snapshot_entries`] entries were applied since the last;
    /// whether it did.
    fn maybe_compact(&mut self) -> bool {
        let due = self.snapshot_entries > 0
            && self.core.applied_after_snapshot() >= self.snapshot_entries;
        if due {
            self.core.compact(self.map.encoded());
        }
        due
    }

    /// Carries out a durable Ready's answers: the calls whose proposals
    /// were abandoned, then the committed entries, applied in order, and the
    /// calls they complete.
    fn carry_out(&mut self, ready: Ready) {
        if ready.snapshot.as_ref().is_some_and(|s| s.restore_map)
            && let Some(map) = self.installed_map.take()
        {
            self.map = map;
        }
        if !ready.abandoned.is_empty() {
            let error = self.not_leader();
            for key in ready.abandoned {
                if let Some(tx) = self.waiters.remove(&key) {
                    // The caller may have given up (deadline); nothing to do then.
                    let _ = tx.send(Err(error.clone()));
                }
            }
        }
        for (index, entry) in ready.committed {
            let key = (index, entry.term);
            let version = self.map.apply(entry.meta);
            self.changes.set(index);
            if let Some(tx) = self.waiters.remove(&key) {
                let _ = tx.send(Ok(version));
            }
        }
    }

    /// Notes that `peer`'s replication task backs off (see
    /// [`RaftNode::replicate`]): it builds again once the backoff ends.
    fn hold(&mut self, peer: ServerId) {
        if let Some(held) = self.held.get_mut(peer) {
            *held = true;
        }
    }

    fn fail_waiters(&mut self, error: &NodeError) {
        for (_, tx) in std::mem::take(&mut self.waiters) {
            let _ = tx.send(Err(error.clone()));
        }
    }
}

impl Driver {
    /// Turns until every handle of the node is gone: each takes every step
    /// waiting, so one write covers them all.
    /// With elections on, a tick of the election clock is a turn of its
    /// own (nothing while crashed: a crashed server takes part in nothing).
    async fn run(mut self) {
        let mut ticker = self.tick.map(|period| {
            let mut t = tokio::time::interval(period);
            t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            t
        });
        loop {
            let tick = async {
                match ticker.as_mut() {
                    Some(t) => {
                        t.tick().await;
                    }
                    None => std::future::pending().await,
                }
            };
            let mut answers = Vec::new();
            tokio::select! {
                step = self.steps.recv() => {
                    let Some(step) = step else { return };
                    answers.push(step(&mut self.state));
                }
                () = tick => {
                    if !self.state.crashed && !self.state.failed {
                        self.state.core.tick();
                    }
                }
            }
            while let Ok(step) = self.steps.try_recv() {
                answers.push(step(&mut self.state));
            }
            self.finish_turn(answers).await;
        }
    }

    /// Logs a change of term or role (leader, candidate), once durable: what
    /// an operator reads to follow elections (`-d`).
    fn log_role(&mut self) {
        let core = &self.state.core;
        let role = (core.term(), core.is_leader(), core.campaigning());
        if role == self.role {
            return;
        }
        self.role = role;
        let (term, leading, campaigning) = role;
        let role = match (leading, campaigning) {
            (true, _) => "leader",
            (false, true) => "candidate",
            (false, false) => "follower",
        };
        tracing::info!(term, role, leader = ?core.leader_hint(), "raft role");
    }

    /// Sends the turn's vote requests, now durable, each reply fed back to
    /// the core as a step of its own.
    fn send_votes(&self, votes: Vec<VoteRequest>) {
        for VoteRequest {
            to,
            pre_vote,
            request,
        } in votes
        {
            let Some(steps) = self.own_steps.upgrade() else {
                return;
            };
            let reply = self
                .transport
                .request_vote(to, request, pre_vote, self.vote_timeout);
            tokio::spawn(async move {
                let reply = match reply.await {
                    Ok(reply) => reply,
                    Err(status) => {
                        tracing::debug!(peer = to, %status, pre_vote, "vote request failed");
                        return;
                    }
                };
                let step: Step = Box::new(move |state: &mut State| -> Answer {
                    if !state.crashed && !state.failed {
                        state.core.handle_vote_response(to, pre_vote, &reply);
                    }
                    Box::new(|| {})
                });
                // A closed loop: the node is gone, nothing to count.
                let _ = steps.send(step);
            });
        }
    }

    /// Persists the turn's Ready, then lets its effects out: wakes the
    /// replication tasks if the core asks, answers proposals, and delivers
    /// the steps' answers. After a failed write nothing of the turn leaves:
    /// the answers are dropped (their callers see [`NodeError::Failed`]).
    async fn finish_turn(&mut self, answers: Vec<Answer>) {
        let mut ready = self.state.core.take_ready();
        // A leader sends its new entries while it writes them (Raft thesis
        // §10.2.1). Its own copy counts toward a majority only once durable,
        // and it does: replies are steps, and no step runs before this write
        // ends. A new term or vote must be durable before any request of it.
        let send_now = ready.wake_peers && !ready.new_term_or_vote;
        if send_now {
            self.send_to_peers();
        }
        if !self.persist_or_fail(&mut ready).await {
            return;
        }
        self.log_role();
        if ready.wake_peers && !send_now {
            for (_, wake) in &self.wakes {
                wake.notify_one();
            }
        }
        self.send_votes(std::mem::take(&mut ready.votes));
        self.state.carry_out(ready);
        for answer in answers {
            answer();
        }
        // Compacting once the turn's callers are answered: the snapshot's
        // write (two fsyncs and renames) delays none of them.
        if self.state.maybe_compact() {
            let mut ready = self.state.core.take_ready();
            if self.persist_or_fail(&mut ready).await {
                self.state.carry_out(ready);
            }
        }
    }

    /// Persists `ready`; after a failed write the node fails (see the
    /// module docs) and false is returned.
    async fn persist_or_fail(&mut self, ready: &mut Ready) -> bool {
        let Err(error) = self.persist(ready).await else {
            return true;
        };
        tracing::error!(%error, "cannot persist raft state; serving nothing until restarted");
        self.state.failed = true;
        self.state.failed_signal.send_replace(true);
        self.state.fail_waiters(&NodeError::Failed);
        false
    }

    /// Builds what each peer's window allows now and hands it to the peer's
    /// replication task; a peer backing off is only woken, its task decides.
    fn send_to_peers(&mut self) {
        for (peer, wake) in &self.wakes {
            if self.state.held.get(*peer).copied().unwrap_or(true) {
                wake.notify_one();
                continue;
            }
            let built = self.state.build(*peer);
            if built.0.is_empty() && self.state.core.peer_needs_snapshot(*peer) {
                // Its task streams the snapshot.
                wake.notify_one();
            }
            if !built.0.is_empty()
                && let Some(Some(outbox)) = self.state.outboxes.get(*peer)
            {
                // A closed outbox: the task ended with a storage failure.
                let _ = outbox.send(built);
            }
        }
    }

    /// Writes what `ready` asks to persist (its entries are moved out) on a
    /// blocking thread when the storage touches a disk.
    async fn persist(&mut self, ready: &mut Ready) -> Result<(), PersistError> {
        if ready.hard_state.is_none()
            && ready.log_changed_from.is_none()
            && ready.snapshot.is_none()
        {
            return Ok(());
        }
        let mut storage = self.storage.take().ok_or(PersistError::Writer)?;
        let (hard, from, sync) = (ready.hard_state, ready.log_changed_from, ready.must_sync);
        let entries = std::mem::take(&mut ready.entries);
        // The map a leader's snapshot holds stays in the state; the write
        // needs only the snapshot's bytes, shared.
        let snapshot = ready.snapshot.as_mut().map(|s| SnapshotWrite {
            log: std::mem::take(&mut s.log),
            ..s.clone()
        });
        // A write that fsyncs nothing (only the commit index moved) lands in
        // the page cache at once: a thread hand-off would cost more than it,
        // on every commit.
        let in_place = !storage.blocks() || (!sync && snapshot.is_none());
        let write = move |storage: &mut Box<dyn RaftStorage>| {
            storage.save(hard, from, &entries, sync)?;
            match &snapshot {
                Some(snapshot) => storage.save_snapshot(snapshot),
                None => Ok(()),
            }
        };
        if in_place {
            let saved = write(&mut storage);
            self.storage = Some(storage);
            return Ok(saved?);
        }
        let (storage, saved) = tokio::task::spawn_blocking(move || {
            let saved = write(&mut storage);
            (storage, saved)
        })
        .await
        .map_err(|_| PersistError::Writer)?;
        self.storage = Some(storage);
        Ok(saved?)
    }
}

/// What a sync exchange sends a peer: entries, or the snapshot instead of
/// entries it no longer has.
enum Request {
    Append(Outgoing),
    Snapshot(OutgoingSnapshot),
}

/// A seed for this server's election timeouts: different per process and
/// per server, so servers started together do not time out together.
fn random_seed(id: ServerId) -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_usize(id);
    hasher.finish()
}

/// The deadline of a call carrying `bytes` to a peer.
fn call_timeout(bytes: usize) -> Duration {
    let bytes = u64::try_from(bytes).unwrap_or(u64::MAX);
    APPEND_TIMEOUT + Duration::from_millis(bytes.saturating_mul(1000) / MIN_PEER_BYTES_PER_SEC)
}

/// The reply to an InstallSnapshot chunk.
fn snapshot_reply(result: AppendEntryOutput, held: u64) -> InstallSnapshotOutput {
    InstallSnapshotOutput {
        result: Some(result),
        next_offset: i64::try_from(held).unwrap_or(i64::MAX),
    }
}

/// What a replication task does after feeding back a call's outcome
/// (`verdict`, see [`State::feed_back`]): after a failure or a refusal it
/// holds the peer for a backoff (the calls of one window fail together: one
/// step); after progress it sends again at once.
fn settle(
    verdict: Option<(bool, ReplicationStatus)>,
    paused: &mut bool,
    held_until: &mut Option<Instant>,
    backoff: &mut Backoff,
) {
    match verdict {
        None | Some((_, ReplicationStatus::Denied)) => {
            *paused = true;
            held_until.get_or_insert_with(|| Instant::now() + backoff.next_delay());
        }
        Some((_, ReplicationStatus::Matched | ReplicationStatus::SendMore)) => {
            *paused = false;
            *held_until = None;
            backoff.reset();
        }
        Some((_, ReplicationStatus::Ignored | ReplicationStatus::NotLeader)) => {}
    }
}

#[cfg(test)]
mod tests;
