//! A cluster of pure Raft cores wired together in memory, with the checks
//! the safety properties are made of. It plays the driver's part: after
//! every call into a core it "persists" the Ready to a simulated disk at
//! once (as the node must before replying) and applies committed entries to
//! a `FileMap`; and it records what the whole cluster has ever shown
//! (confirmed leaders, committed entries) so that [`Cluster::check`] can
//! compare every server against history after each step.
//!
//! With compaction on ([`Cluster::with_compaction`]), a server snapshots its
//! map every N applied entries as the node does, leaders send snapshots to
//! peers that need compacted entries, and some snapshot writes are cut by a
//! crash, before the snapshot is durable or between it and the log's cut
//! (the restart then loads what the storage would). Logs after a snapshot
//! hold only the entries after it; `Disk::ids` still names every index, the
//! snapshot's from history, so the checks compare absolute indices.
//!
//! With elections on ([`Cluster::with_elections`]), every core (and every
//! core a restart rebuilds) runs the election clock with a seed derived from
//! the cluster's, the server's id and its incarnation; the vote requests a
//! Ready carries wait in an outbox until the Ready is on the disk, as the
//! node sends them only once durable. Every leader of every term is
//! recorded at every call, so two leaders of one term are caught even when
//! one of them steps down within the same step, and a leader's first entry
//! of its term must be its no-op ([`Entry::noop`]), which the history
//! counts as a proposal of that leader.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use surfstore::meta_store::FileMap;
use surfstore::proto::{
    AppendEntryInput, AppendEntryOutput, FileMetaData, RequestVoteInput, RequestVoteOutput,
};
use surfstore::raft::quorum::is_majority;
use surfstore::raft::storage::{hard_after_snapshot, log_after_snapshot};
use surfstore::raft::{
    AppendRequest, ElectionConfig, Entry, HardState, LogIndex, NotLeader, Outgoing,
    OutgoingSnapshot, RaftCore, Ready, ReplicationStatus, SentAppend, ServerId, Snapshot,
    SnapshotRequest, SnapshotWrite, Term, VoteAsk, VoteRequest,
};

use super::schedule::Rng;

/// The result recorded for an index a server took from a snapshot: it
/// applied nothing there itself.
const FROM_SNAPSHOT: i32 = i32::MIN;

/// Entries per request in synchronous rounds: small, so repairs take
/// several exchanges.
const ROUND_BATCH: usize = 3;

/// Passes a synchronous round takes at most; the node's round has no such
/// limit and goes on while a peer that acknowledged is behind. Nothing is
/// proposed during a simulated round, so three are enough when no call
/// fails: the first repairs (and may confirm the leader and commit), the
/// second sends the proposals a confirmation released (and may commit), the
/// third tells the last commit index; a fourth finds nobody behind. But a
/// peer whose process dies mid-repair (a crash cut its snapshot write) is
/// tried again in the next pass, as the node does, and each death can cost
/// a pass the others then need: RAFT_SEED=40932 random_schedules_5_servers
/// needed a fifth. [`Cluster::check_round`] catches a round that stopped
/// early.
const ROUND_PASSES: usize = 32;

/// The election timeout N of simulated servers, in ticks: what the node
/// uses (a tick is a tenth of `--election-timeout-ms`).
pub const ELECTION_TICKS: u32 = 10;

/// What survives a restart of one server.
#[derive(Debug, Clone, Default)]
pub struct Disk {
    /// The hard state as last written. A write a Ready did not ask to sync
    /// survives a process kill (the page cache keeps it), which is what a
    /// restart here models.
    pub hard: HardState,
    /// The entries after the snapshot.
    pub log: Vec<Entry>,
    /// The position of `log[0]`.
    pub first: usize,
    pub snapshot: Option<Arc<Snapshot>>,
    /// Proposal number of every index up to the log's end, those the
    /// snapshot covers included (see [`History::proposals`]).
    pub ids: Vec<usize>,
}

impl Disk {
    /// `(term, index)` of the last entry, the snapshot's when the log after
    /// it is empty: Raft's up-to-date key.
    pub fn last_id(&self) -> (Term, LogIndex) {
        let index = LogIndex::try_from(self.first + self.log.len()).unwrap_or(0) - 1;
        let term = match (self.log.last(), &self.snapshot) {
            (Some(entry), _) => entry.term,
            (None, Some(snapshot)) => snapshot.last_term,
            (None, None) => -1,
        };
        (term, index)
    }
}

/// One simulated server: its core, chaos state, durable state and
/// applied state machine.
#[derive(Debug, Clone)]
pub struct Server {
    pub core: RaftCore,
    pub crashed: bool,
    pub disk: Disk,
    pub map: FileMap,
    /// Result of applying each committed index (`UpdateFile`'s answer).
    pub results: Vec<i32>,
    /// Proposal number of each applied entry.
    applied: Vec<usize>,
    /// A call into the core since the last check: it must be checked again.
    touched: bool,
    /// Entries applied since the last snapshot after which to compact (0:
    /// never).
    snapshot_entries: usize,
    /// Durable entries below this were already checked for their origin.
    origin_checked: usize,
    /// This server's proposals (index, term) that no Ready answered yet,
    /// as a committed entry or as abandoned.
    unanswered: HashSet<(LogIndex, Term)>,
}

impl Server {
    fn new(id: ServerId, size: usize, snapshot_entries: usize) -> Self {
        Self {
            core: RaftCore::new(id, size),
            crashed: false,
            snapshot_entries,
            disk: Disk::default(),
            map: FileMap::default(),
            results: Vec::new(),
            applied: Vec::new(),
            touched: false,
            origin_checked: 0,
            unanswered: HashSet::new(),
        }
    }
}

/// Everything the cluster has ever shown.
#[derive(Debug, Default)]
struct History {
    /// Every proposal: its term and the server that made it.
    proposals: Vec<(Entry, ServerId)>,
    /// Proposal number by entry key.
    by_key: HashMap<String, usize>,
    /// The leader confirmed in each term.
    confirmed: HashMap<Term, ServerId>,
    /// The only server whose proposals of a term appear in shared logs.
    term_owner: HashMap<Term, ServerId>,
    /// Proposal number of every index any server has seen committed.
    committed: Vec<usize>,
    /// The term in which each of them was committed: that of the first
    /// server to apply it, which is the leader that committed it.
    commit_terms: Vec<Term>,
    /// `maps[i]`: the state after applying `committed[..=i]`.
    maps: Vec<FileMap>,
    /// Length of `committed` at the last check.
    checked_len: usize,
    /// A snapshot that is not the replay of the history it covers.
    bad_snapshot: Option<String>,
    /// Every server that ever led each term, confirmed or not, seen after
    /// every call into a core (election safety).
    leaders: HashMap<Term, ServerId>,
    /// A second leader of a term.
    two_leaders: Option<String>,
    /// The first index some server applied first while fewer than a
    /// majority of durable logs held its entry: committed without being
    /// replicated, whichever way the server came to count it committed.
    unreplicated: Option<String>,
}

/// Identifies an entry by content; proposals in random schedules are unique.
fn key(entry: &Entry) -> String {
    let m = &entry.meta;
    format!(
        "{}/{}/{}/{}",
        entry.term,
        m.filename,
        m.version,
        m.block_hash_list.join(" ")
    )
}

/// `Err` with a formatted message unless `cond` holds.
macro_rules! ensure {
    ($cond:expr, $($msg:tt)+) => {
        if !$cond {
            return Err(format!($($msg)+));
        }
    };
}

/// A cluster of `RaftCore`s with simulated disks and state machines.
#[derive(Debug)]
pub struct Cluster {
    pub servers: Vec<Server>,
    history: History,
    /// Decides which snapshot writes a crash cuts, and where.
    crashes: Rng,
    /// Whether crashes cut snapshot writes at all.
    cut_writes: bool,
    /// Per server: a crash cut one of its writes since the last round
    /// began (its process died, so the round could not repair it).
    died: Vec<bool>,
    /// With elections: the seed the servers' election seeds derive from.
    election_seed: Option<u64>,
    /// Per server: how many times it was started, so a restarted server
    /// draws new timeouts.
    incarnations: Vec<u64>,
    /// Vote requests of durable Readies, with their sender, not yet sent.
    outbox: Vec<(ServerId, VoteRequest)>,
}

/// Where a crash cuts a snapshot write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cut {
    /// Before the snapshot file is renamed into place: the write is lost.
    BeforeSnapshot,
    /// After the snapshot is durable, before the log is rewritten.
    BeforeLogCut,
}

impl Cluster {
    /// `size` fresh servers.
    pub fn new(size: usize) -> Self {
        Self::with_compaction(size, 0, 0)
    }

    /// `size` fresh servers that snapshot every `snapshot_entries` applied
    /// entries (0: never); `seed` picks which snapshot writes crash.
    pub fn with_compaction(size: usize, snapshot_entries: usize, seed: u64) -> Self {
        Self {
            servers: (0..size)
                .map(|id| Server::new(id, size, snapshot_entries))
                .collect(),
            history: History::default(),
            crashes: Rng::new(seed ^ 0x5eed),
            cut_writes: true,
            died: vec![false; size],
            election_seed: None,
            incarnations: vec![0; size],
            outbox: Vec::new(),
        }
    }

    /// [`Cluster::with_compaction`] with elections on every server, their
    /// randomized timeouts derived from `seed`.
    pub fn with_elections(size: usize, snapshot_entries: usize, seed: u64) -> Self {
        let mut cluster = Self::with_compaction(size, snapshot_entries, seed);
        cluster.election_seed = Some(seed);
        for id in 0..size {
            cluster.enable_elections(id);
        }
        cluster
    }

    /// Turns on `id`'s election clock, seeded by the cluster's seed, its id
    /// and its incarnation.
    fn enable_elections(&mut self, id: ServerId) {
        let Some(seed) = self.election_seed else {
            return;
        };
        let mut rng = Rng::new(seed ^ ((id as u64) << 48) ^ (self.incarnations[id] << 32));
        self.servers[id].core.enable_elections(ElectionConfig {
            ticks: ELECTION_TICKS,
            seed: rng.next_u64(),
        });
    }

    /// The server that led `term`, if any ever did.
    pub fn leader_of(&self, term: Term) -> Option<ServerId> {
        self.history.leaders.get(&term).copied()
    }

    /// One tick of `id`'s election clock, unless it is crashed (the node
    /// does not tick a crashed server).
    pub fn tick(&mut self, id: ServerId) {
        if !self.servers[id].crashed {
            self.servers[id].core.tick();
            self.settle(id);
        }
    }

    /// The vote requests of durable Readies since the last call, with
    /// their senders.
    pub fn take_votes(&mut self) -> Vec<(ServerId, VoteRequest)> {
        std::mem::take(&mut self.outbox)
    }

    /// Delivers a vote request to `to`; its reply, once a vote it grants is
    /// durable, unless `to` is crashed.
    pub fn deliver_vote(
        &mut self,
        to: ServerId,
        req: &RequestVoteInput,
        pre_vote: bool,
    ) -> Option<RequestVoteOutput> {
        // The service's validation: every request a core builds passes it.
        let ask = VoteAsk::from_wire(req, pre_vote).expect("a core built an invalid vote request");
        let resp = self.answer(to, |core| core.handle_vote_request(ask))?;
        let durable = self.servers[to].disk.hard;
        assert!(
            pre_vote
                || !resp.vote_granted
                || (durable.term, durable.voted_for) == (resp.term, Some(ask.candidate)),
            "server {to}: granted {ask:?} before the vote was durable: {durable:?}"
        );
        Some(resp)
    }

    /// What `to`'s core answers a request with `handle`, once the Ready
    /// is durable; `None` when `to` is crashed, or crashes persisting it.
    fn answer<R>(&mut self, to: ServerId, handle: impl FnOnce(&mut RaftCore) -> R) -> Option<R> {
        if self.servers[to].crashed {
            return None;
        }
        let resp = handle(&mut self.servers[to].core);
        self.settle(to).then_some(resp)
    }

    /// Delivers `voter`'s reply to `candidate`, which ignores it while
    /// crashed, as the node does.
    pub fn deliver_vote_reply(
        &mut self,
        candidate: ServerId,
        voter: ServerId,
        pre_vote: bool,
        resp: &RequestVoteOutput,
    ) {
        if !self.servers[candidate].crashed {
            self.servers[candidate]
                .core
                .handle_vote_response(voter, pre_vote, resp);
            self.settle(candidate);
        }
    }

    /// No crash cuts a snapshot write from now on.
    pub fn stop_cutting_writes(&mut self) {
        self.cut_writes = false;
    }

    /// Number of servers.
    pub fn size(&self) -> usize {
        self.servers.len()
    }

    /// Server `id`'s core.
    pub fn core(&self, id: ServerId) -> &RaftCore {
        &self.servers[id].core
    }

    /// `SetLeader` on `id` (the service refuses it while crashed).
    pub fn set_leader(&mut self, id: ServerId) {
        if !self.servers[id].crashed {
            self.servers[id]
                .core
                .set_leader()
                .expect("terms stay far below MAX_TERM");
            self.settle(id);
        }
    }

    /// Chaos `Crash`: the server keeps its state but takes part in nothing.
    pub fn crash(&mut self, id: ServerId) {
        self.servers[id].crashed = true;
    }

    /// Chaos `Restore`.
    pub fn restore(&mut self, id: ServerId) {
        self.servers[id].crashed = false;
    }

    /// A process restart: everything not on disk is lost, its callers with
    /// it, and the core is rebuilt from the disk and replays its committed
    /// prefix.
    pub fn restart(&mut self, id: ServerId) {
        let size = self.size();
        let server = &mut self.servers[id];
        server.unanswered.clear();
        let disk = &server.disk;
        server.core = RaftCore::restore_with_snapshot(
            id,
            size,
            disk.hard,
            disk.snapshot.clone(),
            disk.log.clone(),
        );
        let covered = disk.first;
        server.map = match &disk.snapshot {
            Some(snapshot) => FileMap::from_encoded(&snapshot.data).expect("a snapshot map"),
            None => FileMap::default(),
        };
        server.results = vec![FROM_SNAPSHOT; covered];
        server.applied = disk.ids[..covered].to_vec();
        self.incarnations[id] += 1;
        self.enable_elections(id);
        self.settle(id);
    }

    /// The snapshot `leader` would send `peer` now, if it can send and the
    /// peer needs one.
    pub fn snapshot_for(&self, leader: ServerId, peer: ServerId) -> Option<OutgoingSnapshot> {
        let server = &self.servers[leader];
        (!server.crashed)
            .then(|| server.core.snapshot_for(peer))
            .flatten()
    }

    /// Delivers a whole snapshot to `to` (the node's chunks put together);
    /// its reply, unless `to` is crashed (or crashes persisting it).
    pub fn deliver_snapshot(
        &mut self,
        to: ServerId,
        out: &OutgoingSnapshot,
    ) -> Option<AppendEntryOutput> {
        self.answer(to, |core| {
            core.handle_install_snapshot(SnapshotRequest::from(out))
        })
    }

    /// `UpdateFile`'s first half on `id`: the proposal (the caller then
    /// replicates and waits for the commit). Records who proposed what.
    pub fn propose(&mut self, id: ServerId, meta: FileMetaData) -> Result<LogIndex, NotLeader> {
        if self.servers[id].crashed {
            return Err(NotLeader { leader_hint: None });
        }
        let core = &mut self.servers[id].core;
        let term = core.term();
        let index = core.propose(meta.clone())?;
        let entry = Entry { term, meta };
        let number = self.history.proposals.len();
        let fresh = self.history.by_key.insert(key(&entry), number).is_none();
        assert!(fresh, "proposals must be distinguishable: {entry:?} again");
        self.history.proposals.push((entry, id));
        self.servers[id].unanswered.insert((index, term));
        self.settle(id);
        Ok(index)
    }

    /// The next request the window lets `leader` send `peer`, recorded as
    /// sent, if it can send.
    pub fn next_append(
        &mut self,
        leader: ServerId,
        peer: ServerId,
        max: usize,
    ) -> Option<Outgoing> {
        let server = &mut self.servers[leader];
        (!server.crashed)
            .then(|| server.core.next_append(peer, max))
            .flatten()
    }

    /// A request outside the window (heartbeats, synchronous rounds), if
    /// `leader` can send.
    pub fn sync_request(&self, leader: ServerId, peer: ServerId, max: usize) -> Option<Outgoing> {
        let server = &self.servers[leader];
        (!server.crashed)
            .then(|| server.core.sync_request(peer, max))
            .flatten()
    }

    /// The driver's report that the call `sent` stands for failed. The node
    /// reports it even while crashed (a reply it may not act on counts as a
    /// failure), so the simulation does too.
    pub fn report_unreachable(&mut self, leader: ServerId, peer: ServerId, sent: &SentAppend) {
        self.servers[leader].core.report_unreachable(peer, sent);
        self.settle(leader);
    }

    /// Delivers a request to `to`; its reply, unless `to` is crashed.
    pub fn deliver_request(
        &mut self,
        to: ServerId,
        req: &AppendEntryInput,
    ) -> Option<AppendEntryOutput> {
        // The service's validation: every request a core builds passes it.
        let req = AppendRequest::try_from(req.clone()).expect("a core built an invalid request");
        self.answer(to, |core| core.handle_append_entries(req))
    }

    /// Delivers `peer`'s reply to `leader`; a crashed leader does not act
    /// on it and, as the node does, counts it as a failed call.
    pub fn deliver_response(
        &mut self,
        leader: ServerId,
        peer: ServerId,
        sent: &SentAppend,
        resp: &AppendEntryOutput,
    ) -> Option<ReplicationStatus> {
        if self.servers[leader].crashed {
            self.report_unreachable(leader, peer, sent);
            return None;
        }
        let status = self.servers[leader]
            .core
            .handle_append_response(peer, sent, resp);
        self.settle(leader);
        Some(status)
    }

    /// One synchronous `SendHeartbeat` round from `leader`, as the node runs
    /// it: every live peer is repaired until it matches (or the leader is
    /// deposed), with requests outside the window, in passes until no peer
    /// that acknowledged and did not fail since is behind
    /// ([`RaftCore::peer_is_behind`]). Returns the `flag`: a majority, the
    /// leader included, acknowledged it.
    pub fn heartbeat(&mut self, leader: ServerId) -> bool {
        let mut acknowledged = vec![false; self.size()];
        acknowledged[leader] = true;
        let mut reachable = vec![false; self.size()];
        let mut pending: Vec<ServerId> = (0..self.size()).filter(|&p| p != leader).collect();
        let goal = self.servers[leader].core.last_index();
        self.died.fill(false);
        for _ in 0..ROUND_PASSES {
            if pending.is_empty() {
                break;
            }
            for peer in pending {
                let acked = self.repair(leader, peer);
                acknowledged[peer] |= acked;
                reachable[peer] = acked;
            }
            let core = &self.servers[leader].core;
            pending = (0..self.size())
                .filter(|&peer| reachable[peer] && core.peer_is_behind(peer, goal))
                .collect();
        }
        let acks = acknowledged.iter().filter(|&&a| a).count();
        self.servers[leader].core.is_leader() && is_majority(acks, self.size())
    }

    /// One peer's part of a round pass: exchanges until the peer matches or
    /// fails. Whether it acknowledged `leader`.
    fn repair(&mut self, leader: ServerId, peer: ServerId) -> bool {
        let mut acked = false;
        // Each exchange moves nextIndex or matchIndex; this bounds a correct
        // repair with room to spare.
        let last = self.servers[leader].core.last_index();
        let bound = usize::try_from(last).unwrap_or(0) + 6;
        for _ in 0..bound {
            let delivered = if let Some(out) = self.snapshot_for(leader, peer) {
                Some((out.sent, self.deliver_snapshot(peer, &out)))
            } else {
                self.sync_request(leader, peer, ROUND_BATCH)
                    .map(|Outgoing { request, sent }| (sent, self.deliver_request(peer, &request)))
            };
            let Some((sent, reply)) = delivered else {
                break;
            };
            let Some(resp) = reply else {
                self.report_unreachable(leader, peer, &sent);
                break;
            };
            acked |= self.servers[leader]
                .core
                .acknowledges_leadership(&sent, &resp);
            if self.deliver_response(leader, peer, &sent, &resp)
                != Some(ReplicationStatus::SendMore)
            {
                break;
            }
        }
        acked
    }

    /// What SendHeartbeat promises once a round of `leader` returns: every
    /// live server (whose process did not die during the round) that follows it in its term holds everything the leader
    /// may send (its whole log once confirmed) and has committed, and so
    /// applied, everything the leader has committed.
    pub fn check_round(&self, leader: ServerId) -> Result<(), String> {
        let core = &self.servers[leader].core;
        if self.servers[leader].crashed || !core.is_leader() {
            return Ok(());
        }
        // The leader's durable log is what it may send: everything once
        // confirmed, all but its own proposals before.
        let sendable = &self.servers[leader].disk.ids;
        for (id, server) in self.servers.iter().enumerate() {
            let follows =
                server.core.term() == core.term() && server.core.leader_hint() == Some(leader);
            if id == leader || server.crashed || self.died[id] || !follows {
                continue;
            }

            ensure!(
                server.disk.ids.starts_with(sendable),
                "after leader {leader}'s round, server {id} lacks its log: {:?}, leader {:?}",
                server.disk.ids,
                sendable
            );
            ensure!(
                server.core.commit_index() >= core.commit_index(),
                "after leader {leader}'s round, server {id} committed {} of the leader's {}",
                server.core.commit_index(),
                core.commit_index()
            );
        }
        Ok(())
    }

    /// `UpdateFile` as the leader serves it when everyone answers: propose,
    /// then heartbeat rounds until committed. The applied result, or `None`
    /// when it did not commit within `rounds` rounds.
    pub fn update_file(
        &mut self,
        leader: ServerId,
        meta: FileMetaData,
        rounds: usize,
    ) -> Option<i32> {
        let index = self.propose(leader, meta).ok()?;
        for _ in 0..rounds {
            if let Some(&result) = self.servers[leader]
                .results
                .get(usize::try_from(index).ok()?)
            {
                return Some(result);
            }
            self.heartbeat(leader);
        }
        self.servers[leader]
            .results
            .get(usize::try_from(index).ok()?)
            .copied()
    }

    /// Takes server `id`'s Ready: writes it to the disk and applies the
    /// committed entries, recording them in history; then compacts when
    /// due, as the node does. False when a crash cut a snapshot write: the
    /// server restarted, and nothing the call decided may leave it.
    fn settle(&mut self, id: ServerId) -> bool {
        let ready = self.servers[id].core.take_ready();
        let Ready {
            hard_state,
            log_changed_from,
            entries,
            must_sync,
            new_term_or_vote,
            snapshot,
            committed,
            abandoned,
            wake_peers: _,
            votes,
        } = ready;
        assert!(
            self.election_seed.is_some() || votes.is_empty(),
            "server {id}: no elections, no votes"
        );
        self.record_leader(id);
        let server = &mut self.servers[id];
        let written_hard = hard_state.or(snapshot.as_ref().map(|s| s.hard));
        assert_eq!(
            new_term_or_vote,
            written_hard
                .is_some_and(|h| h.term != server.disk.hard.term
                    || h.voted_for != server.disk.hard.voted_for),
            "server {id}: new_term_or_vote must say whether term or vote changed"
        );
        if !must_sync {
            assert!(
                log_changed_from.is_none()
                    && hard_state.is_none_or(|h| h.term == server.disk.hard.term
                        && h.voted_for == server.disk.hard.voted_for),
                "server {id}: a Ready that changes more than the commit index must sync"
            );
        }
        for proposal in abandoned {
            assert!(
                server.unanswered.remove(&proposal),
                "server {id}: abandoned {proposal:?}, not an unanswered proposal"
            );
        }
        server.touched = true;
        let term = server.core.term();
        if let Some(from) = log_changed_from {
            let from = usize::try_from(from).expect("log_changed_from >= 0");
            let disk = &server.disk;
            assert!(
                (disk.first..=disk.first + disk.log.len()).contains(&from),
                "server {id}: write outside the durable log"
            );
            server.disk.log.truncate(from - server.disk.first);
            server.disk.ids.truncate(from);
            for entry in entries {
                let number = self.history.by_key.get(&key(&entry)).copied();
                server.disk.ids.push(number.unwrap_or(usize::MAX));
                server.disk.log.push(entry);
            }
            server.origin_checked = server.origin_checked.min(from);
        } else {
            assert!(
                entries.is_empty(),
                "server {id}: entries without a position"
            );
        }
        if let Some(hard) = hard_state {
            server.disk.hard = hard;
        }
        if let Some(write) = snapshot {
            assert!(must_sync, "server {id}: a snapshot must be synced");
            let cut = (self.cut_writes && self.crashes.chance(10)).then(|| {
                if self.crashes.chance(50) {
                    Cut::BeforeSnapshot
                } else {
                    Cut::BeforeLogCut
                }
            });
            self.write_snapshot(id, write, cut);
            if cut.is_some() {
                self.died[id] = true;
                self.restart(id);
                return false;
            }
        }
        let durable = self.servers[id].disk.hard;
        for vote in &votes {
            // A RequestVote leaves with its candidate's own vote on disk; a
            // PreVote asks about the term after the durable one.
            let campaign = (durable.term, durable.voted_for) == (vote.request.term, Some(id));
            let probe = vote.pre_vote && vote.request.term == durable.term + 1;
            assert!(
                campaign || probe,
                "server {id}: {vote:?} leaves before its term and vote are durable: {durable:?}"
            );
        }
        self.outbox.extend(votes.into_iter().map(|vote| (id, vote)));
        let server = &mut self.servers[id];
        let history_len = self.history.committed.len();
        for (index, entry) in committed {
            let at = usize::try_from(index).expect("committed index >= 0");
            assert_eq!(
                at,
                server.results.len(),
                "server {id}: applied out of order"
            );
            server.unanswered.remove(&(index, entry.term));
            let number = self.history.by_key.get(&key(&entry)).copied();
            server.applied.push(number.unwrap_or(usize::MAX));
            server.results.push(server.map.apply(entry.meta.clone()));
            let history = &mut self.history;
            if at == history.committed.len() {
                let mut map = history.maps.last().cloned().unwrap_or_default();
                map.apply(entry.meta);
                history.committed.push(number.unwrap_or(usize::MAX));
                history.commit_terms.push(term);
                history.maps.push(map);
            }
        }
        for at in history_len..self.history.committed.len() {
            let number = self.history.committed[at];
            let holders = self
                .servers
                .iter()
                .filter(|s| s.disk.ids.get(at) == Some(&number))
                .count();
            if !is_majority(holders, self.size()) && self.history.unreplicated.is_none() {
                self.history.unreplicated = Some(format!(
                    "server {id} applied index {at} first, held by {holders} durable logs"
                ));
            }
        }
        let server = &mut self.servers[id];
        let due = server.snapshot_entries;
        if due > 0 && server.core.applied_after_snapshot() >= due {
            server.core.compact(server.map.encoded());
            return self.settle(id);
        }
        true
    }

    /// With elections, where every leader is elected: records `id` as the
    /// leader of its term if it leads, noting a second leader of a term,
    /// and registers the no-op its term begins with as its proposal, so the
    /// history knows the entry. (Without, two leaders of a term are allowed
    /// as long as one at most is confirmed: see [`Cluster::check`].)
    fn record_leader(&mut self, id: ServerId) {
        let core = &self.servers[id].core;
        if !core.is_leader() || !core.elections() {
            return;
        }
        let term = core.term();
        let first = *self.history.leaders.entry(term).or_insert(id);
        if first != id && self.history.two_leaders.is_none() {
            self.history.two_leaders =
                Some(format!("two leaders of term {term}: {first} and {id}"));
        }
        let noop = Entry::noop(term);
        if !self.history.by_key.contains_key(&key(&noop)) {
            let number = self.history.proposals.len();
            self.history.by_key.insert(key(&noop), number);
            self.history.proposals.push((noop, id));
        }
    }

    /// Persists a Ready's snapshot on `id`'s disk, unless `cut` says where
    /// a crash stopped it, and loads the map of a leader's snapshot.
    fn write_snapshot(&mut self, id: ServerId, write: SnapshotWrite, cut: Option<Cut>) {
        let SnapshotWrite {
            snapshot,
            log,
            hard,
            restore_map,
        } = write;
        let covered = usize::try_from(snapshot.last_index + 1).expect("a snapshot index");
        let replay = self.history.maps.get(covered - 1);
        if replay.is_none_or(|m| FileMap::from_encoded(&snapshot.data).ok().as_ref() != Some(m))
            && self.history.bad_snapshot.is_none()
        {
            self.history.bad_snapshot = Some(format!(
                "server {id}: snapshot up to {} is not the replay of the history",
                snapshot.last_index
            ));
            return;
        }
        let history = &self.history;
        let server = &mut self.servers[id];
        let disk = &mut server.disk;
        match cut {
            Some(Cut::BeforeSnapshot) => {}
            Some(Cut::BeforeLogCut) => {
                // What the storage loads: the new snapshot, the old log's
                // entries after it, the old hard state brought up to it.
                let old = std::mem::take(&mut disk.log);
                disk.log = log_after_snapshot(disk.first, old, &snapshot);
                let mut ids = history.committed[..covered].to_vec();
                if !disk.log.is_empty() {
                    ids.extend_from_slice(&disk.ids[covered..covered + disk.log.len()]);
                }
                disk.ids = ids;
                disk.first = covered;
                disk.hard = hard_after_snapshot(disk.hard, &snapshot);
                disk.snapshot = Some(snapshot);
            }
            None => {
                disk.ids = history.committed[..covered].to_vec();
                disk.ids.extend(
                    log.iter()
                        .map(|e| history.by_key.get(&key(e)).copied().unwrap_or(usize::MAX)),
                );
                disk.log = log;
                disk.first = covered;
                disk.hard = hard;
                if restore_map {
                    server.map = FileMap::from_encoded(&snapshot.data).expect("a snapshot map");
                    server.results.resize(covered, FROM_SNAPSHOT);
                    server.applied = history.committed[..covered].to_vec();
                }
                server.disk.snapshot = Some(snapshot);
                server.origin_checked = server.origin_checked.min(covered);
            }
        }
    }

    /// Checks every safety invariant against the current state and history.
    /// A server nobody called since the last check is skipped: its state is
    /// unchanged and the history it was compared with only ever grows
    /// (except for leader completeness, rechecked whenever history grows).
    pub fn check(&mut self) -> Result<(), String> {
        if let Some(problem) = self.history.unreplicated.take() {
            return Err(problem);
        }
        if let Some(problem) = self.history.bad_snapshot.take() {
            return Err(problem);
        }
        if let Some(problem) = self.history.two_leaders.take() {
            return Err(problem);
        }
        let grown = std::mem::replace(&mut self.history.checked_len, self.history.committed.len())
            != self.history.committed.len();
        for id in 0..self.size() {
            if grown || self.servers[id].touched {
                self.check_leadership(id)?;
            }
        }
        for id in 0..self.size() {
            if std::mem::take(&mut self.servers[id].touched) {
                self.check_shared_log(id)?;
                self.check_committed(id)?;
                self.check_proposals(id)?;
            }
        }
        Ok(())
    }

    /// At most one confirmed leader per term, and it holds every entry
    /// committed in an earlier term (leader completeness); an elected one's
    /// first entry of its term is its no-op.
    fn check_leadership(&mut self, id: ServerId) -> Result<(), String> {
        let core = &self.servers[id].core;
        if !core.is_confirmed_leader() {
            return Ok(());
        }
        if core.elections() {
            let proposals = &self.history.proposals;
            let first = self.servers[id]
                .disk
                .ids
                .iter()
                .filter_map(|&number| proposals.get(number))
                .find(|(entry, _)| entry.term == core.term());
            ensure!(
                first.is_some_and(|(entry, _)| *entry == Entry::noop(core.term())),
                "leader {id}'s first entry of term {} is {first:?}, not its no-op",
                core.term()
            );
        }
        let owner = *self.history.confirmed.entry(core.term()).or_insert(id);
        ensure!(
            owner == id,
            "two confirmed leaders in term {}: {owner} and {id}",
            core.term()
        );
        let ids = &self.servers[id].disk.ids;
        let earlier = self
            .history
            .commit_terms
            .partition_point(|&t| t < core.term());
        let committed = &self.history.committed[..earlier];
        ensure!(
            ids.len() >= committed.len() && ids[..committed.len()] == committed[..],
            "leader {id} of term {} lacks committed entries: log {ids:?}, committed {committed:?}",
            core.term()
        );
        Ok(())
    }

    /// The durable log is the core's log minus an unconfirmed leader's
    /// proposals; each entry is an unaltered proposal; a term's entries come
    /// from one server; and log matching holds against every other server.
    fn check_shared_log(&mut self, id: ServerId) -> Result<(), String> {
        let server = &self.servers[id];
        let core = &server.core;
        let shared = if core.is_leader() && !core.is_confirmed_leader() {
            let own = core
                .log()
                .iter()
                .rev()
                .take_while(|e| e.term == core.term())
                .count();
            &core.log()[..core.log().len() - own]
        } else {
            core.log()
        };
        ensure!(
            server.disk.log == shared
                && LogIndex::try_from(server.disk.first).ok() == Some(core.first_index()),
            "server {id}: durable log {:?} from {} differs from the core's {:?} from {}",
            server.disk.log,
            server.disk.first,
            core.log(),
            core.first_index()
        );
        for (at, &number) in server
            .disk
            .ids
            .iter()
            .enumerate()
            .skip(server.origin_checked)
        {
            ensure!(
                number != usize::MAX,
                "server {id}: entry {at} was never proposed"
            );
            let term = self.history.proposals[number].0.term;
            let creator = self.history.proposals[number].1;
            let owner = *self.history.term_owner.entry(term).or_insert(creator);
            ensure!(
                owner == creator,
                "entries of term {term} from two servers: {owner} and {creator} (server {id}, index {at})"
            );
        }
        let term_of = |number: usize| self.history.proposals.get(number).map(|p| p.0.term);
        for other in (0..self.size()).filter(|&o| o != id) {
            log_matching(
                id,
                &self.servers[id].disk,
                other,
                &self.servers[other].disk,
                term_of,
            )?;
        }
        self.servers[id].origin_checked = self.servers[id].disk.ids.len();
        Ok(())
    }

    /// Every proposal is answered by a Ready: one still unanswered belongs
    /// to a server leading the term it was made in, whose log holds it.
    fn check_proposals(&self, id: ServerId) -> Result<(), String> {
        let server = &self.servers[id];
        let core = &server.core;
        for &(index, term) in &server.unanswered {
            let held = usize::try_from(index - core.first_index())
                .ok()
                .and_then(|at| core.log().get(at))
                .is_some_and(|e| e.term == term);
            ensure!(
                core.is_leader() && core.term() == term && held,
                "server {id}: proposal {index} of term {term} unanswered, but the server \
                 leads: {}, term {}, holds it: {held}",
                core.is_leader(),
                core.term()
            );
        }
        Ok(())
    }

    /// Everything applied is exactly the committed history, the log agrees
    /// with it up to the commit index, and the map is its replay.
    fn check_committed(&self, id: ServerId) -> Result<(), String> {
        let server = &self.servers[id];
        let commit = server.core.commit_index();
        let applied = server.results.len();
        ensure!(
            LogIndex::try_from(applied).ok() == Some(commit + 1),
            "server {id}: applied {applied} entries, commit index {commit}"
        );
        ensure!(
            server.disk.hard.commit == commit,
            "server {id}: durable commit {} != {commit}",
            server.disk.hard.commit
        );
        let history = &self.history.committed;
        ensure!(
            server.applied[..] == history[..applied],
            "server {id}: applied {:?}, but history committed {history:?}",
            server.applied
        );
        ensure!(
            server.disk.ids.len() >= applied && server.disk.ids[..applied] == history[..applied],
            "server {id}: committed prefix {:?} differs from history {:?}",
            &server.disk.ids[..applied.min(server.disk.ids.len())],
            history
        );
        let expected = applied.checked_sub(1).map(|last| &self.history.maps[last]);
        ensure!(
            expected.map_or(server.map.is_empty(), |m| *m == server.map),
            "server {id}: applied map {:?} is not the replay {expected:?}",
            server.map
        );
        Ok(())
    }
}

/// Log matching between two durable logs: where they hold entries of the
/// same term at an index, they are identical up to and including it.
/// Terms are those of the proposals the ids name (`term_of`), so indices
/// a snapshot covers count too.
fn log_matching(
    a: ServerId,
    da: &Disk,
    b: ServerId,
    db: &Disk,
    term_of: impl Fn(usize) -> Option<Term>,
) -> Result<(), String> {
    let common = da.ids.len().min(db.ids.len());
    let Some(diverge) = (0..common).find(|&i| da.ids[i] != db.ids[i]) else {
        return Ok(());
    };
    let violation = (diverge..common)
        .find(|&i| term_of(da.ids[i]).is_some() && term_of(da.ids[i]) == term_of(db.ids[i]));
    ensure!(
        violation.is_none(),
        "log matching: servers {a} and {b} differ at {diverge} but share term at {violation:?}:\n{:?}\n{:?}",
        da.ids,
        db.ids
    );
    Ok(())
}
