//! The pure Raft state machine of SPEC §5: calls and messages in, messages
//! and effects out. No I/O, clock, randomness or async: a driver feeds it
//! `SetLeader`, proposals, AppendEntries requests and replies, sends the
//! requests it builds, persists and applies what [`RaftCore::take_ready`]
//! hands out, and so the same code runs in the server and in deterministic
//! simulations.
//!
//! # Leadership without elections
//!
//! `SetLeader` makes any server leader of a new term, so two servers can lead
//! one term and a stale server can lead at all. Raft's vote rule, carried on
//! AppendEntries (`leaderId`, `lastLogIndex`, `lastLogTerm`), keeps that
//! safe:
//!
//! * A follower follows, per term, the first leader it hears from whose log
//!   is at least as up-to-date as its own (it records it as `voted_for`),
//!   refuses every other leader of that term without touching its log, and
//!   names the leader it follows in every reply (`leaderId`).
//! * A leader is *confirmed* once a majority, itself included, follows it.
//!   Until then it sends no entry of its own term, so nothing it proposes can
//!   spread or commit; if a majority refuses it, another leader of its term
//!   wins it over, or it steps down for any other reason, it drops those
//!   never-sent entries and releases its own vote. A confirmed leader steps
//!   down only for a higher term, as in Raft.
//!
//! Requests without `leaderId` (the original Go leader, hand-written tests)
//! get the original semantics: no vote is checked or recorded.
//!
//! # Elections (opt-in, SPEC §9.1)
//!
//! With [`RaftCore::enable_elections`], time enters as ticks
//! ([`RaftCore::tick`]) and leaders are elected as in the Raft paper §5.2:
//!
//! * A follower that hears from no leader for its randomized timeout (in
//!   `[N, 2N)` ticks) first asks a **PreVote** for the next term, changing
//!   nothing; only if a majority would grant it does it raise its term, vote
//!   for itself and ask for votes. A server cut off from the majority so
//!   never raises a term the others would have to adopt.
//! * A voter grants one vote per term, to a candidate whose log is at least
//!   as up-to-date as its own, and none at all while it heard from a live
//!   leader within N ticks (**check-quorum**'s lease), unless the candidate
//!   campaigns because `SetLeader` told it to.
//! * The winner leads confirmed at once (a majority voted for it) and
//!   appends a no-op entry of its term ([`Entry::noop`]), whose commit
//!   tells it everything committed before it; reads wait for it.
//! * A leader that heard from no majority within N ticks steps down
//!   (check-quorum), so a leader cut off from the rest stops serving.
//! * Every leader is elected, so a term has at most one: a follower follows
//!   any leader of its term, whoever it voted for.
//!
//! `SetLeader` makes the server campaign at once, skipping the PreVote.
//!
//! # Pipelined replication
//!
//! On a link with latency, one AppendEntries in flight per peer caps
//! replication at one batch per round trip. So, as in etcd's raft, each
//! peer is in one of two modes:
//!
//! * **Probe** (after `SetLeader`, a mismatch, a refusal or a failed call):
//!   one request at a time from `nextIndex`, which is only a guess; a
//!   mismatch backs it off, and a success showing the peer holds everything
//!   before `nextIndex` switches to Replicate.
//! * **Replicate**: the peer's log is known to match up to `matchIndex`, so
//!   up to [`super::MAX_INFLIGHT`] requests go out ahead of the replies, each
//!   starting right after the last one sent (`nextIndex` moves on send). A
//!   success frees every request it covers; a mismatch or failure of any of
//!   them means entries may be missing in the middle: back to Probe, the
//!   window discarded.
//!
//! Every (re)entry into a mode starts a new epoch of that peer, and each
//! request remembers its epoch: a mismatch, refusal or failure counts only
//! for the current epoch, so late replies of a discarded window cannot move
//! `nextIndex` again. Successes count whatever their epoch: in a term a peer
//! follows only this leader, whose entries never conflict, so what it once
//! matched stays matched. Empty requests (heartbeats, a new commit index)
//! start at the peer's confirmed point, `matchIndex` while replicating,
//! where they cannot mismatch; sent at the optimistic `nextIndex - 1` they
//! could overtake the window's entries and make the peer look behind.
//!
//! The driver asks for requests with
//! [`RaftCore::next_append`] until it says `None`, keeps the [`SentAppend`]
//! of each, and hands it back with the reply
//! ([`RaftCore::handle_append_response`]) or the failure
//! ([`RaftCore::report_unreachable`]). Heartbeats, `SendHeartbeat`'s repair
//! and read confirmation use [`RaftCore::sync_request`], which the window
//! never holds back.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::election::{Campaign, Election, ElectionConfig, VoteAsk, VoteRequest};
use super::log::{RaftLog, Rejection};
use super::progress::{Slice, Standing, Tracker};
use super::request::{Sender, SnapshotRequest};
use super::{AppendRequest, Entry, HardState, LogIndex, MAX_TERM, ServerId, Snapshot, Term};
use crate::proto::{
    AppendEntryInput, AppendEntryOutput, FileMetaData, RequestVoteInput, RequestVoteOutput,
    UpdateOperation,
};

/// The most bytes of entries one AppendEntries carries by default. Far below
/// the gRPC message limit: a request is sent, decoded and persisted as one
/// piece, and up to [`super::MAX_INFLIGHT`] of them are in flight per peer.
pub const MAX_BATCH_BYTES: usize = 16 << 20;

/// A call that only the leader can serve reached another server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("Server is not the leader")]
pub struct NotLeader {
    /// The leader this server follows in its term, if it knows one.
    pub leader_hint: Option<ServerId>,
}

/// `SetLeader` on a server whose term is already [`MAX_TERM`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("term {term} is the highest a server may reach; SetLeader cannot start a newer one")]
pub struct TermExhausted {
    /// The server's term.
    pub term: Term,
}

/// What the leader should do after a reply was fed back with
/// [`RaftCore::handle_append_response`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplicationStatus {
    /// The peer holds everything the leader may send it now: the whole log
    /// once confirmed, the entries of earlier terms before that. A peer that
    /// matched before a later reply confirmed the leader still lacks the
    /// leader's own proposals, and one that matched before a later reply
    /// advanced the commit index does not know it yet:
    /// [`RaftCore::peer_is_behind`] tells.
    Matched,
    /// Send to this peer again now: `nextIndex` backed off, or there is more
    /// to send (or in flight already: [`RaftCore::next_append`] knows).
    SendMore,
    /// The peer follows another leader, or none because this leader's log is
    /// behind its own (a denial that did not yet make a majority). Its
    /// outstanding requests are void; ask it again later, not at once.
    Denied,
    /// This server is not (or no longer) the leader.
    NotLeader,
    /// The reply carries nothing to act on: it is stale (another term, an
    /// older probe or window).
    Ignored,
}

/// What the leader keeps of an AppendEntries it built to interpret the
/// reply: a few numbers rather than the request and its entries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SentAppend {
    term: Term,
    slice: Slice,
    leader_commit: LogIndex,
    /// The peer's epoch when it was built.
    epoch: u64,
}

/// An AppendEntries to send, and what to keep of it for the reply.
#[derive(Debug, Clone, PartialEq)]
pub struct Outgoing {
    /// The request for the peer.
    pub request: AppendEntryInput,
    /// Hand this back with the reply ([`RaftCore::handle_append_response`])
    /// or the failure ([`RaftCore::report_unreachable`]).
    pub sent: SentAppend,
}

/// A snapshot to send a peer whose log lacks entries the leader no longer
/// holds, and what to keep of it for the reply.
#[derive(Debug, Clone, PartialEq)]
pub struct OutgoingSnapshot {
    /// The leader's term.
    pub term: Term,
    /// The leader's id, as AppendEntries carries it.
    pub leader_id: i64,
    /// `(lastLogTerm, lastLogIndex)` for the vote rule, as AppendEntries
    /// carries it.
    pub last_log: (Term, LogIndex),
    /// The snapshot to stream.
    pub snapshot: Arc<Snapshot>,
    /// Hand this back with the reply to the last chunk (or to a refused
    /// one) with [`RaftCore::handle_append_response`], or the failure with
    /// [`RaftCore::report_unreachable`]: a success shows the peer holds the
    /// log up to the snapshot's last index.
    pub sent: SentAppend,
}

/// A snapshot to make durable: after it, the durable log is `log` and the
/// hard state `hard`, whatever the log held before.
#[derive(Debug, Clone, PartialEq)]
pub struct SnapshotWrite {
    /// The snapshot.
    pub snapshot: Arc<Snapshot>,
    /// The durable entries after it.
    pub log: Vec<Entry>,
    /// Term, vote and commit index.
    pub hard: HardState,
    /// The snapshot came from a leader: the applied map must become the
    /// snapshot's before the `committed` entries of this Ready are applied.
    /// False for this server's own compaction, which the map already is.
    pub restore_map: bool,
}

/// Everything the core decided since the previous [`RaftCore::take_ready`],
/// pushed out so that a driver only carries it out (the shape of etcd's
/// `Ready`). Persist the log change and the hard state (fsyncing when
/// [`Ready::must_sync`]) before sending any reply built since; then apply
/// `committed`, answer `abandoned`, and wake the peers when
/// [`Ready::wake_peers`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Ready {
    /// The term, vote or commit index changed: the new values to persist.
    pub hard_state: Option<HardState>,
    /// The durable log must become its first `log_changed_from` entries
    /// followed by [`Ready::entries`], and nothing after them. `None`: the
    /// durable log is current. Never past the end of what earlier Readies
    /// made durable.
    pub log_changed_from: Option<LogIndex>,
    /// The entries to write at `log_changed_from`. This can end before
    /// [`RaftCore::log`] does: proposals of a leader that is not confirmed
    /// yet are only persisted once it is, so a restart never revives entries
    /// that no other server could have seen.
    pub entries: Vec<Entry>,
    /// Whether this Ready must be fsynced before anything depending on it
    /// leaves the server: the log, term or vote changed. False when only the
    /// commit index moved: a commit index lost in a crash is learnt again
    /// from the leader, and Raft keeps it volatile anyway.
    pub must_sync: bool,
    /// The term or vote changed: nothing built since, not even a leader's
    /// requests, may leave before this Ready is durable, or a restart could
    /// forget a vote that a request already used. Otherwise a leader may
    /// send its requests while it writes (Raft thesis §10.2.1).
    pub new_term_or_vote: bool,
    /// Newly committed entries with their indices, in log order, each handed
    /// out exactly once: apply them in this order. One whose index and term
    /// are those [`RaftCore::propose`] gave a proposal is that proposal.
    pub committed: Vec<(LogIndex, Entry)>,
    /// A snapshot to persist after the log change above (fsynced whatever
    /// `must_sync` says); it replaces the durable log before it. It carries
    /// the hard state: `hard_state` is `None` then.
    pub snapshot: Option<SnapshotWrite>,
    /// Index and term of this server's proposals that will not be answered
    /// by `committed`: their term ended (`SetLeader`, a newer term) or this
    /// server stepped down before they committed.
    pub abandoned: Vec<(LogIndex, Term)>,
    /// This server leads and has something new for its peers: entries they
    /// may now be sent (a proposal, or a confirmation releasing held-back
    /// ones), a higher commit index to tell them, or a new term to probe.
    pub wake_peers: bool,
    /// Vote requests to send once this Ready is durable (election mode).
    pub votes: Vec<VoteRequest>,
}

/// One server's Raft state: term, vote, log, commit, and (as leader) what it
/// knows of its peers. See the module docs for the leadership rules.
#[derive(Debug, Clone)]
pub struct RaftCore {
    id: ServerId,
    cluster_size: usize,
    term: Term,
    voted_for: Option<ServerId>,
    log: RaftLog,
    leader: Option<Tracker>,
    /// The hard state as last handed out by `take_ready`.
    reported: HardState,
    /// The term led and how much of the log was sendable as of the last
    /// `take_ready`; `None` when not leading then.
    reported_sendable: Option<(Term, usize)>,
    /// This server's proposals not yet committed or abandoned: index and
    /// term.
    proposals: BTreeMap<LogIndex, Term>,
    /// Proposals abandoned since the last `take_ready`.
    abandoned: Vec<(LogIndex, Term)>,
    /// Requests a Replicate window holds per peer (1 to
    /// [`super::MAX_INFLIGHT`]).
    pipeline_depth: usize,
    /// The most bytes of entries one request carries, if it has more than
    /// one.
    max_batch_bytes: usize,
    /// The snapshot covering the log before [`RaftCore::first_index`].
    snapshot: Option<Arc<Snapshot>>,
    /// Whether `snapshot` is not handed out for persisting yet, and whether
    /// it came from a leader (the applied map must become it).
    snapshot_pending: Option<bool>,
    /// The election clock and campaign; `None` without elections.
    election: Option<Election>,
    /// Vote requests built since the last `take_ready`.
    votes: Vec<VoteRequest>,
}

/// Who an AppendEntries request says sent it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Claim {
    /// No `leaderId`: original semantics, no vote involved.
    Anonymous,
    /// A valid peer id, and the `(lastLogTerm, lastLogIndex)` of its log.
    Leader(ServerId, (Term, LogIndex)),
    /// Out of range or this server's own id: never followed.
    Invalid,
}

impl RaftCore {
    /// A fresh server: term 0, follower, empty log, commit index -1.
    /// `id` is the server's index in the cluster config of `cluster_size`.
    pub fn new(id: ServerId, cluster_size: usize) -> Self {
        Self::restore(id, cluster_size, HardState::default(), Vec::new())
    }

    /// A server rebuilt from durable state, as a follower. Nothing counts as
    /// applied: the first [`RaftCore::take_ready`] hands out the committed
    /// prefix for replay.
    pub fn restore(id: ServerId, cluster_size: usize, hard: HardState, log: Vec<Entry>) -> Self {
        Self::restore_with_snapshot(id, cluster_size, hard, None, log)
    }

    /// [`RaftCore::restore`] from a snapshot and the log after it: the
    /// snapshot counts as applied (the driver loads its map), the committed
    /// entries after it are replayed.
    pub fn restore_with_snapshot(
        id: ServerId,
        cluster_size: usize,
        hard: HardState,
        snapshot: Option<Arc<Snapshot>>,
        log: Vec<Entry>,
    ) -> Self {
        let (first, snapshot_term) = snapshot
            .as_ref()
            .map_or((0, -1), |s| (index_after(s.last_index), s.last_term));
        Self {
            id,
            cluster_size,
            term: hard.term,
            voted_for: hard.voted_for,
            log: RaftLog::restore(first, snapshot_term, log, hard.commit),
            snapshot,
            snapshot_pending: None,
            leader: None,
            reported: hard,
            reported_sendable: None,
            proposals: BTreeMap::new(),
            abandoned: Vec::new(),
            pipeline_depth: super::MAX_INFLIGHT,
            max_batch_bytes: MAX_BATCH_BYTES,
            election: None,
            votes: Vec::new(),
        }
    }

    /// Turns on elections (see the module docs), timed by `config`; a
    /// server without them only leads when `SetLeader` says so.
    pub fn enable_elections(&mut self, config: ElectionConfig) {
        self.election = Some(Election::new(config));
    }

    /// Whether elections are on.
    pub fn elections(&self) -> bool {
        self.election.is_some()
    }

    /// How many AppendEntries a leader keeps in flight to a peer it
    /// replicates to, clamped to 1..=[`super::MAX_INFLIGHT`] (the default).
    /// One is plain stop-and-wait with every pending entry in each request.
    pub fn set_pipeline_depth(&mut self, depth: usize) {
        self.pipeline_depth = depth.clamp(1, super::MAX_INFLIGHT);
    }

    /// The most bytes of entries one AppendEntries carries (default
    /// [`MAX_BATCH_BYTES`]); a single larger entry still goes, alone.
    pub fn set_max_batch_bytes(&mut self, bytes: usize) {
        self.max_batch_bytes = bytes;
    }

    /// The encoded bytes of the whole log, as `GetInternalState` sends it.
    pub fn log_bytes(&self) -> usize {
        self.log.bytes()
    }

    /// The encoded bytes of the entries not yet handed out for applying by
    /// [`RaftCore::take_ready`].
    pub fn unapplied_bytes(&self) -> usize {
        self.log.unapplied_bytes()
    }

    /// Index of the last log entry (-1 when the log is empty).
    pub fn last_index(&self) -> LogIndex {
        self.log.last_index()
    }

    /// This server's index in the cluster config.
    pub fn id(&self) -> ServerId {
        self.id
    }

    /// The current term.
    pub fn term(&self) -> Term {
        self.term
    }

    /// Whether this server is leader of its term (confirmed or not).
    pub fn is_leader(&self) -> bool {
        self.leader.is_some()
    }

    /// Whether this server leads its term and a majority follows it.
    pub fn is_confirmed_leader(&self) -> bool {
        self.leader.as_ref().is_some_and(Tracker::is_confirmed)
    }

    /// The leader of the current term as far as this server knows: itself
    /// when leading, else the leader it follows (with elections, only one
    /// it heard from within an election timeout).
    pub fn leader_hint(&self) -> Option<ServerId> {
        if self.is_leader() {
            return Some(self.id);
        }
        // With elections, a leader not heard from for a timeout may be dead
        // or cut off: naming it would send clients to wait on it.
        if self.election.as_ref().is_some_and(|e| !e.in_lease()) {
            return None;
        }
        self.known_leader().filter(|&l| l != self.id)
    }

    /// The leader of the current term as replies name it: with elections
    /// the one this server heard from (or itself); without, the one it
    /// voted for.
    fn known_leader(&self) -> Option<ServerId> {
        match &self.election {
            Some(election) => election.leader,
            None => self.voted_for,
        }
    }

    /// The log after the snapshot, including proposals of an unconfirmed
    /// leader; its first entry has index [`RaftCore::first_index`].
    pub fn log(&self) -> &[Entry] {
        self.log.entries()
    }

    /// The index of the first entry of [`RaftCore::log`]: 0 when nothing
    /// was compacted, the snapshot's last index + 1 otherwise.
    pub fn first_index(&self) -> LogIndex {
        self.log.first_index()
    }

    /// The snapshot the log starts after, if any.
    pub fn snapshot(&self) -> Option<&Arc<Snapshot>> {
        self.snapshot.as_ref()
    }

    /// How many applied entries the log holds after the snapshot: what a
    /// compaction now would drop.
    pub fn applied_after_snapshot(&self) -> usize {
        usize::try_from(self.log.applied() + 1 - self.log.first_index()).unwrap_or(0)
    }

    /// Takes `data`, the applied map as of every entry handed out so far by
    /// [`RaftCore::take_ready`], as the snapshot of the log up to there,
    /// and drops those entries; the next Ready persists it. Does nothing
    /// when no entry was applied since the last snapshot.
    pub fn compact(&mut self, data: bytes::Bytes) {
        if self.snapshot_pending == Some(true) {
            // A leader's snapshot waits to become the driver's map: the map
            // `data` was taken from is not the applied state yet.
            return;
        }
        let last = self.log.applied();
        let Some(term) = self.log.term_at(last) else {
            return;
        };
        if last < self.log.first_index() {
            return;
        }
        self.log.compact(last);
        self.snapshot = Some(Arc::new(Snapshot {
            last_index: last,
            last_term: term,
            data,
        }));
        self.snapshot_pending = Some(self.snapshot_pending.unwrap_or(false));
    }

    /// The highest committed index (-1 before anything commits).
    pub fn commit_index(&self) -> LogIndex {
        self.log.committed()
    }

    /// Term, vote and commit index as they are now.
    pub fn hard_state(&self) -> HardState {
        HardState {
            term: self.term,
            voted_for: self.voted_for,
            commit: self.log.committed(),
        }
    }

    /// `SetLeader`: a new term (+1) led by this server, which votes for
    /// itself; `nextIndex` = log length and `matchIndex` = -1 for every peer.
    /// No entry is appended. A single-server cluster is confirmed at once.
    /// At [`MAX_TERM`] nothing changes and the call is refused: leading the
    /// same term again would let two servers lead it. With elections it
    /// campaigns at once instead, leading only if a majority votes for it.
    pub fn set_leader(&mut self) -> Result<(), TermExhausted> {
        if self.election.is_some() {
            return self.campaign(true);
        }
        let term = self.next_term()?;
        self.become_follower();
        // Entries of the ended term commit, if ever, only with a later
        // entry of the new one: their callers cannot be told a version.
        self.abandon_proposals();
        self.term = term;
        self.voted_for = Some(self.id);
        let next = self.log.last_index() + 1;
        self.leader = Some(Tracker::new(self.id, self.cluster_size, next));
        Ok(())
    }

    /// The term after this one, unless this one is [`MAX_TERM`].
    fn next_term(&self) -> Result<Term, TermExhausted> {
        self.term
            .checked_add(1)
            .filter(|&t| t <= MAX_TERM)
            .ok_or(TermExhausted { term: self.term })
    }

    /// One tick of the election clock (nothing without elections): a
    /// follower or candidate whose randomized timeout ran out starts a
    /// PreVote; a leader checks every N ticks that a majority answered it
    /// since the last check, and steps down if not.
    pub fn tick(&mut self) {
        let leading = self.is_leader();
        let size = self.cluster_size;
        let Some(election) = self.election.as_mut() else {
            return;
        };
        election.elapsed = election.elapsed.saturating_add(1);
        if leading {
            if election.elapsed < election.ticks {
                return;
            }
            election.elapsed = 0;
            let heard = std::mem::take(&mut election.active).len() + 1;
            if !super::quorum::is_majority(heard, size) {
                self.step_down_for_quorum();
            }
        } else if election.timed_out() {
            self.pre_vote();
        }
    }

    /// Check-quorum: a leader that heard from no majority for an election
    /// timeout stops leading (its term stays) and forgets the lease.
    fn step_down_for_quorum(&mut self) {
        self.become_follower();
        if let Some(election) = self.election.as_mut() {
            election.leader = None;
            election.reset_timer();
        }
    }

    /// Asks every peer whether it would vote for this server in the next
    /// term, changing no term; a majority of grants starts the campaign.
    fn pre_vote(&mut self) {
        if self.next_term().is_err() {
            return;
        }
        if let Some(election) = self.election.as_mut() {
            election.leader = None;
            election.reset_timer();
            election.campaign = Some(Campaign {
                pre_vote: true,
                granted: [self.id].into(),
            });
        }
        if super::quorum::is_majority(1, self.cluster_size) {
            let _ = self.campaign(false);
            return;
        }
        self.ask_votes(self.term + 1, true, false);
    }

    /// Becomes a candidate of the next term, votes for itself and asks every
    /// peer for its vote (`force`: even one that hears from a live leader).
    fn campaign(&mut self, force: bool) -> Result<(), TermExhausted> {
        let term = self.next_term()?;
        self.adopt_term(term);
        self.voted_for = Some(self.id);
        if let Some(election) = self.election.as_mut() {
            election.campaign = Some(Campaign {
                pre_vote: false,
                granted: [self.id].into(),
            });
        }
        if super::quorum::is_majority(1, self.cluster_size) {
            self.win_election();
            return Ok(());
        }
        self.ask_votes(term, false, force);
        Ok(())
    }

    /// Queues a vote request of `term` for every peer.
    fn ask_votes(&mut self, term: Term, pre_vote: bool, force: bool) {
        let (last_log_term, last_log_index) = self.log.last_id_within(self.log.end());
        for to in (0..self.cluster_size).filter(|&p| p != self.id) {
            self.votes.push(VoteRequest {
                to,
                pre_vote,
                request: RequestVoteInput {
                    term,
                    candidate_id: wire_id(self.id),
                    last_log_index,
                    last_log_term,
                    force,
                },
            });
        }
    }

    /// A vote request (RequestVote or PreVote, validated at the edge);
    /// returns the reply. A granted vote is part of the next Ready, which
    /// must be durable before the reply leaves. Without elections every
    /// request is refused.
    pub fn handle_vote_request(&mut self, ask: VoteAsk) -> RequestVoteOutput {
        let refuse = |core: &Self| core.vote_reply(false, core.term);
        let Some(election) = self.election.as_ref() else {
            return refuse(self);
        };
        if ask.candidate >= self.cluster_size || ask.candidate == self.id || ask.term < self.term {
            return refuse(self);
        }
        let leased = !ask.force && (self.is_leader() || election.in_lease());
        if ask.term > self.term && leased {
            return refuse(self);
        }
        let up_to_date = ask.last_log >= self.log.last_id_within(self.log.end());
        let free = |core: &Self| {
            core.voted_for.is_none_or(|v| v == ask.candidate)
                && core.election.as_ref().is_some_and(|e| e.leader.is_none())
        };
        if ask.pre_vote {
            let granted = up_to_date && (ask.term > self.term || free(self));
            return self.vote_reply(granted, if granted { ask.term } else { self.term });
        }
        if ask.term > self.term {
            self.adopt_term(ask.term);
        }
        if !(up_to_date && free(self)) {
            return refuse(self);
        }
        self.voted_for = Some(ask.candidate);
        if let Some(election) = self.election.as_mut() {
            election.reset_timer();
        }
        self.vote_reply(true, self.term)
    }

    /// Feeds back `from`'s reply to a vote request this server sent: a
    /// majority of PreVotes starts the campaign, a majority of votes wins
    /// it; a higher term ends it.
    pub fn handle_vote_response(
        &mut self,
        from: ServerId,
        pre_vote: bool,
        resp: &RequestVoteOutput,
    ) {
        if !(0..=MAX_TERM).contains(&resp.term) || from >= self.cluster_size {
            return;
        }
        // A granted PreVote carries the term asked about, not the voter's.
        if resp.term > self.term && !(pre_vote && resp.vote_granted) {
            self.adopt_term(resp.term);
            return;
        }
        let asked = if pre_vote { self.term + 1 } else { self.term };
        let size = self.cluster_size;
        let Some(campaign) = self.election.as_mut().and_then(|e| e.campaign.as_mut()) else {
            return;
        };
        if campaign.pre_vote != pre_vote || resp.term != asked || !resp.vote_granted {
            return;
        }
        campaign.granted.insert(from);
        if !super::quorum::is_majority(campaign.granted.len(), size) {
            return;
        }
        if pre_vote {
            let _ = self.campaign(false);
        } else {
            self.win_election();
        }
    }

    /// Leads the current term, confirmed by the votes of the campaign, and
    /// appends the term's no-op entry.
    fn win_election(&mut self) {
        let Some(election) = self.election.as_mut() else {
            return;
        };
        let voters = election
            .campaign
            .take()
            .map(|c| c.granted)
            .unwrap_or_default();
        election.leader = Some(self.id);
        election.elapsed = 0;
        election.active.clear();
        let mut tracker = Tracker::new(self.id, self.cluster_size, self.log.last_index() + 1);
        for voter in voters {
            tracker.record_stance(voter, true);
        }
        self.leader = Some(tracker);
        self.log.append(Entry::noop(self.term));
        self.maybe_commit();
    }

    /// Whether this server is a candidate of its term still waiting for
    /// votes: not yet won, lost to a newer term, or timed out.
    pub fn campaigning(&self) -> bool {
        self.election
            .as_ref()
            .and_then(|e| e.campaign.as_ref())
            .is_some_and(|c| !c.pre_vote)
    }

    /// Whether this server leads and has committed an entry of its own term
    /// (with elections, its no-op): only then is its commit index known to
    /// cover everything committed before its term, so a read may be served
    /// at it once a majority confirms the leadership (ReadIndex).
    pub fn committed_in_term(&self) -> bool {
        self.is_leader() && self.log.term_at(self.log.committed()) == Some(self.term)
    }

    fn vote_reply(&self, granted: bool, term: Term) -> RequestVoteOutput {
        RequestVoteOutput {
            term,
            vote_granted: granted,
            server_id: wire_id(self.id),
        }
    }

    /// Appends `Entry{term, meta}` to the leader's log and returns its
    /// index; it commits once replicated (at once in a single-server
    /// cluster) and comes out of [`RaftCore::take_ready`] for applying.
    pub fn propose(&mut self, meta: FileMetaData) -> Result<LogIndex, NotLeader> {
        if !self.is_leader() {
            return Err(NotLeader {
                leader_hint: self.leader_hint(),
            });
        }
        let index = self.log.append(Entry {
            term: self.term,
            meta,
        });
        self.proposals.insert(index, self.term);
        self.maybe_commit();
        Ok(index)
    }

    /// The next AppendEntries for `peer` under the window rule, recorded as
    /// sent: in Probe one request at a time from `nextIndex`; in Replicate up
    /// to the pipeline depth ([`RaftCore::set_pipeline_depth`]) of unanswered
    /// requests of at most `max_entries` entries each, within the batch
    /// budget ([`RaftCore::set_max_batch_bytes`]) unless one entry alone
    /// exceeds it, every one starting
    /// after the last one sent; with none unanswered, an empty request at
    /// the peer's `matchIndex` when it has not been told a commit index it
    /// could apply. Never an entry of the current term before
    /// the leader is confirmed. `None` when there is nothing to send now (the
    /// window is full, or all is sent), when this server is not the leader,
    /// or when `peer` is itself or unknown. Call it until `None` after every
    /// proposal, reply and failure.
    pub fn next_append(&mut self, peer: ServerId, max_entries: usize) -> Option<Outgoing> {
        if self.peer_needs_snapshot(peer) {
            return None;
        }
        let last = last_of(self.unsent_start());
        let commit = self.log.committed();
        let depth = self.pipeline_depth;
        let (log, bytes) = (&self.log, self.max_batch_bytes);
        let progress = self.leader.as_mut()?.get_mut(peer)?;
        let fitting = |prev| log.fitting(index_after(prev), max_entries, bytes);
        let slice = progress.next_send(last, fitting, commit, depth)?;
        let epoch = progress.epoch();
        Some(self.outgoing(slice, epoch))
    }

    /// An AppendEntries for `peer` outside the window, recorded nowhere, so
    /// it can always be sent: up to `max_entries` entries (and the batch
    /// budget, as [`RaftCore::next_append`]) from the peer's
    /// confirmed point (`matchIndex` while replicating, where it cannot
    /// mismatch; the probe position `nextIndex - 1` while probing). For
    /// heartbeats (`max_entries` 0), `SendHeartbeat`'s repair and read
    /// confirmation. `None` when this server is not the leader or `peer` is
    /// itself or unknown.
    pub fn sync_request(&self, peer: ServerId, max_entries: usize) -> Option<Outgoing> {
        if self.peer_needs_snapshot(peer) {
            return None;
        }
        let progress = self.leader.as_ref()?.get(peer)?;
        let fitting = |prev| {
            self.log
                .fitting(index_after(prev), max_entries, self.max_batch_bytes)
        };
        let slice = progress.sync_send(last_of(self.unsent_start()), fitting);
        Some(self.outgoing(slice, progress.epoch()))
    }

    /// Whether this server leads and `peer` needs entries the log no longer
    /// holds: then [`RaftCore::next_append`] and [`RaftCore::sync_request`]
    /// build nothing for it, and [`RaftCore::snapshot_for`] the snapshot.
    pub fn peer_needs_snapshot(&self, peer: ServerId) -> bool {
        self.leader
            .as_ref()
            .and_then(|t| t.get(peer))
            .is_some_and(|p| p.next < self.log.first_index())
    }

    /// The snapshot for `peer`, when it needs one
    /// ([`RaftCore::peer_needs_snapshot`]). Recorded nowhere, like
    /// [`RaftCore::sync_request`]: the reply to its last chunk counts as a
    /// reply to an empty AppendEntries ending at the snapshot's last index.
    pub fn snapshot_for(&self, peer: ServerId) -> Option<OutgoingSnapshot> {
        if !self.peer_needs_snapshot(peer) {
            return None;
        }
        let snapshot = self.snapshot.clone()?;
        let epoch = self.leader.as_ref()?.get(peer)?.epoch();
        let last = snapshot.last_index;
        let (last_log_term, last_log_index) = self.advertised_log();
        Some(OutgoingSnapshot {
            term: self.term,
            leader_id: wire_id(self.id),
            last_log: (last_log_term, last_log_index),
            sent: SentAppend {
                term: self.term,
                slice: Slice {
                    prev: last,
                    count: 0,
                },
                leader_commit: last,
                epoch,
            },
            snapshot,
        })
    }

    /// Builds the request carrying `slice`, stamped with `epoch`. A slice
    /// starting inside the snapshot (an empty request at a `matchIndex`
    /// compacted since) starts at the snapshot's end instead, where the
    /// leader still knows the term.
    fn outgoing(&self, slice: Slice, epoch: u64) -> Outgoing {
        let slice = Slice {
            prev: slice.prev.max(self.log.first_index() - 1),
            ..slice
        };
        let from = index_after(slice.prev);
        let entries: Vec<UpdateOperation> = self
            .log
            .slice(from, self.log.end(), slice.count)
            .iter()
            .cloned()
            .map(UpdateOperation::from)
            .collect();
        // What a success will be taken to prove: exactly what is sent.
        let slice = Slice {
            count: entries.len(),
            ..slice
        };
        let (last_log_term, last_log_index) = self.advertised_log();
        let leader_commit = self.log.committed();
        Outgoing {
            request: AppendEntryInput {
                term: self.term,
                prev_log_index: slice.prev,
                prev_log_term: self.log.term_at(slice.prev).unwrap_or(-1),
                entries,
                leader_commit,
                leader_id: Some(wire_id(self.id)),
                last_log_index,
                last_log_term,
            },
            sent: SentAppend {
                term: self.term,
                slice,
                leader_commit,
                epoch,
            },
        }
    }

    /// The AppendEntries receiver (SPEC §5, in order, with the vote rule of
    /// the module docs); returns the reply. A crashed server must not call
    /// this. Changes to persist and entries to apply come out of
    /// [`RaftCore::take_ready`], which must be persisted before replying.
    pub fn handle_append_entries(&mut self, req: AppendRequest) -> AppendEntryOutput {
        if !self.admits(req.term, req.sender) {
            return self.reply(false, -1);
        }
        match self.log.accept(req.prev, req.entries, req.leader_commit) {
            Ok(matched) => self.reply(true, matched),
            Err(Rejection::Mismatch { hint }) => self.reply(false, hint),
            Err(Rejection::ConflictsWithCommitted { commit }) => self.reply(false, commit),
        }
    }

    /// An InstallSnapshot chunk: the term and vote rules of
    /// [`RaftCore::handle_append_entries`], then, for the last chunk
    /// (`req.snapshot` set), the snapshot replaces the log it covers unless
    /// this server has committed as far already (see [`RaftLog`]'s
    /// `install`); the next Ready persists it and has the driver load its
    /// map. A success reply after the last chunk says the log is held up to
    /// the snapshot's last index; for earlier chunks, that the sender is
    /// followed.
    pub fn handle_install_snapshot(&mut self, req: SnapshotRequest) -> AppendEntryOutput {
        if !self.admits(req.term, req.sender) {
            return self.reply(false, -1);
        }
        let Some(snapshot) = req.snapshot else {
            return self.reply(true, -1);
        };
        let last = snapshot.last_index;
        if self.log.install(last, snapshot.last_term) {
            self.snapshot = Some(snapshot);
            self.snapshot_pending = Some(true);
        }
        self.reply(true, last)
    }

    /// The receiver's term and vote rules shared by AppendEntries and
    /// InstallSnapshot: whether a request of `term` from `sender` is from
    /// the leader this server follows (adopting a higher term, giving way
    /// as an unconfirmed leader to one it would vote for, voting).
    fn admits(&mut self, term: Term, sender: Option<Sender>) -> bool {
        if term < self.term {
            return false;
        }
        if term > self.term {
            self.adopt_term(term);
        }
        let claim = self.claim(sender);
        if self.is_leader() {
            // Another server leads this term too. Only an unconfirmed leader
            // may give way, and only to one it would vote for.
            let yields =
                !self.is_confirmed_leader() && self.sender_acceptable(claim, self.unsent_start());
            if !yields {
                return false;
            }
            self.become_follower();
        }
        self.follows(claim)
    }

    /// Feeds back `resp`, the reply of `peer` to the request `sent` stands
    /// for. Safe with stale, duplicated and reordered replies: `matchIndex`
    /// never decreases, and only a reply of the peer's current epoch (the
    /// current probe, or a request of the current window) backs `nextIndex`
    /// off or voids the window, never below `matchIndex + 1`. Steps down on a
    /// higher term; records whether the peer follows this leader (confirming
    /// it, or deposing it while unconfirmed); advances the commit index by
    /// the commit rule.
    pub fn handle_append_response(
        &mut self,
        peer: ServerId,
        sent: &SentAppend,
        resp: &AppendEntryOutput,
    ) -> ReplicationStatus {
        if !(0..=MAX_TERM).contains(&resp.term) {
            // No server holds such a term: adopting it would leave this one
            // a term SetLeader cannot raise.
            return ReplicationStatus::Ignored;
        }
        if resp.term > self.term {
            self.adopt_term(resp.term);
            return ReplicationStatus::NotLeader;
        }
        let follows = self.acknowledges_leadership(sent, resp);
        let own_last = self.log.last_index();
        let term = self.term;
        let Some(tracker) = self.leader.as_mut() else {
            return ReplicationStatus::NotLeader;
        };
        if sent.term != term || resp.term != term || tracker.get(peer).is_none() {
            return ReplicationStatus::Ignored;
        }
        if let Some(election) = self.election.as_mut() {
            election.active.insert(peer);
        }
        if tracker.record_stance(peer, follows) == Standing::Rejected {
            self.become_follower();
            return ReplicationStatus::NotLeader;
        }
        let Some(progress) = tracker.get_mut(peer) else {
            return ReplicationStatus::Ignored;
        };
        if !follows {
            return if progress.on_refused(sent.epoch) {
                ReplicationStatus::Denied
            } else {
                ReplicationStatus::Ignored
            };
        }
        if !resp.success {
            return if progress.on_mismatch(sent.epoch, sent.slice.prev, resp.matched_index) {
                ReplicationStatus::SendMore
            } else {
                ReplicationStatus::Ignored
            };
        }
        let matched = sent.slice.end();
        if matched > own_last {
            // Not a request this leader built: its log never shrinks in its term.
            return ReplicationStatus::Ignored;
        }
        let known = sent
            .leader_commit
            .max(resp.commit_index.unwrap_or(-1))
            .min(matched);
        progress.on_success(matched, known);
        let peer_matched = progress.matched;
        self.maybe_commit();
        self.learn_commit(known);
        if peer_matched >= last_of(self.unsent_start()) {
            ReplicationStatus::Matched
        } else {
            ReplicationStatus::SendMore
        }
    }

    /// Whether a synchronous round whose goal is the log up to `goal` (the
    /// last index when the round began) must go on with `peer`: it may lack
    /// entries up to `goal` this leader can send it now, or it has not shown
    /// by a success reply that it knows the commit index up to `goal`.
    /// Entries proposed after the round began are the next round's, so a
    /// round under a steady stream of updates still ends. False when this
    /// server is not leading, or `peer` is itself or unknown.
    pub fn peer_is_behind(&self, peer: ServerId, goal: LogIndex) -> bool {
        let Some(progress) = self.leader.as_ref().and_then(|t| t.get(peer)) else {
            return false;
        };
        progress.matched < last_of(self.unsent_start()).min(goal)
            || progress.learned < self.log.committed().min(goal)
    }

    /// Reports that the request `sent` stands for got no reply from `peer`
    /// (the call failed or timed out): unless that request belongs to an
    /// older epoch, the peer is probed again from `matchIndex + 1`, since
    /// nothing sent after that can be assumed to have arrived.
    pub fn report_unreachable(&mut self, peer: ServerId, sent: &SentAppend) {
        if sent.term != self.term {
            return;
        }
        if let Some(progress) = self.leader.as_mut().and_then(|t| t.get_mut(peer)) {
            progress.on_unreachable(sent.epoch);
        }
    }

    /// Whether `resp` acknowledges this server as leader of the term of
    /// `sent`: the peer replied in that term naming this server as the
    /// leader it follows (whether or not its log matched). A driver
    /// confirming a read counts the peers whose replies to requests built
    /// after the read arrived acknowledge; with the leader itself, a
    /// [`super::quorum::majority`] of them, while still leading that term,
    /// shows no newer leader can have committed anything the read would
    /// miss.
    pub fn acknowledges_leadership(&self, sent: &SentAppend, resp: &AppendEntryOutput) -> bool {
        resp.leader_id == Some(wire_id(self.id)) && resp.term == sent.term
    }

    /// The effects since the last call (see [`Ready`]); the committed
    /// entries it returns count as applied.
    pub fn take_ready(&mut self) -> Ready {
        let hard = self.hard_state();
        let hard_state = (hard != self.reported).then_some(hard);
        let sendable = self
            .leader
            .as_ref()
            .map(|_| (self.term, self.unsent_start()));
        let wake_peers = sendable.is_some()
            && (sendable != self.reported_sendable || hard.commit > self.reported.commit);
        let vote_or_term_changed =
            hard.term != self.reported.term || hard.voted_for != self.reported.voted_for;
        self.reported = hard;
        self.reported_sendable = sendable;
        let (log_changed_from, entries) = match self.log.take_unpersisted(self.unsent_start()) {
            Some((from, entries)) => (Some(from), entries),
            None => (None, Vec::new()),
        };
        let snapshot = self.snapshot_pending.take().and_then(|restore_map| {
            Some(SnapshotWrite {
                snapshot: self.snapshot.clone()?,
                log: self.log.durable_entries().to_vec(),
                hard,
                restore_map,
            })
        });
        // The snapshot's write carries the hard state: a commit index
        // written ahead of it could name entries the old log lacks.
        let hard_state = if snapshot.is_some() { None } else { hard_state };
        let committed = self.log.take_committed();
        let mut abandoned = std::mem::take(&mut self.abandoned);
        // One that committed before it was abandoned, within this Ready,
        // did commit as proposed: `committed` answers it.
        abandoned.retain(|&(index, term)| {
            committed
                .binary_search_by_key(&index, |&(i, _)| i)
                .ok()
                .and_then(|at| committed.get(at))
                .is_none_or(|(_, entry)| entry.term != term)
        });
        for (index, entry) in &committed {
            match self.proposals.remove(index) {
                Some(term) if term != entry.term => abandoned.push((*index, term)),
                _ => {}
            }
        }
        Ready {
            hard_state,
            must_sync: vote_or_term_changed || log_changed_from.is_some() || snapshot.is_some(),
            new_term_or_vote: vote_or_term_changed,
            log_changed_from,
            entries,
            snapshot,
            committed,
            abandoned,
            wake_peers,
            votes: std::mem::take(&mut self.votes),
        }
    }

    /// `(nextIndex, matchIndex)` of `peer`, when this server leads and
    /// `peer` is another server of the cluster.
    pub fn peer_progress(&self, peer: ServerId) -> Option<(LogIndex, LogIndex)> {
        let progress = self.leader.as_ref()?.get(peer)?;
        Some((progress.next, progress.matched))
    }

    /// Where the entries that may not leave this server yet begin: the
    /// current-term proposals of an unconfirmed leader. The log length
    /// otherwise.
    fn unsent_start(&self) -> usize {
        match &self.leader {
            Some(t) if !t.is_confirmed() => self.log.tail_start_of_term(self.term),
            _ => self.log.end(),
        }
    }

    /// The `(lastLogTerm, lastLogIndex)` a leader's requests carry for the
    /// up-to-date check: the log it was made leader with while unconfirmed
    /// (its own unsent proposals prove nothing); once confirmed, its current
    /// term, since a majority already holds it for this term's leader and it
    /// holds every committed entry, so a late follower must not refuse it.
    fn advertised_log(&self) -> (Term, LogIndex) {
        if self.is_confirmed_leader() {
            (self.term, self.log.last_index())
        } else {
            self.log.last_id_within(self.unsent_start())
        }
    }

    /// Steps down to follower. An unconfirmed leader drops its never-sent
    /// proposals and its vote for itself, so it can follow another leader of
    /// the same term.
    fn become_follower(&mut self) {
        let Some(tracker) = self.leader.take() else {
            return;
        };
        // A deposed leader cannot see its proposals through: even those a
        // newer leader commits are answered by that leader's log, not here.
        self.abandon_proposals();
        if !tracker.is_confirmed() {
            self.log.truncate(self.log.tail_start_of_term(self.term));
            self.voted_for = None;
        }
    }

    fn abandon_proposals(&mut self) {
        let proposals = std::mem::take(&mut self.proposals);
        self.abandoned.extend(proposals);
    }

    /// Adopts a higher term seen in a request or reply, as a follower with
    /// no vote yet.
    fn adopt_term(&mut self, term: Term) {
        self.become_follower();
        self.term = term;
        self.voted_for = None;
        if let Some(election) = self.election.as_mut() {
            election.leader = None;
            election.campaign = None;
            election.reset_timer();
        }
    }

    fn claim(&self, sender: Option<Sender>) -> Claim {
        match sender {
            None => Claim::Anonymous,
            Some(sender) if sender.id < self.cluster_size && sender.id != self.id => {
                Claim::Leader(sender.id, sender.last_log)
            }
            Some(_) => Claim::Invalid,
        }
    }

    /// Whether a server that has not voted in this term would follow the
    /// sender, its own log being the first `own_len` entries (Raft §5.4.1:
    /// a later last term wins, then a longer log).
    fn sender_acceptable(&self, claim: Claim, own_len: usize) -> bool {
        match claim {
            Claim::Anonymous => true,
            Claim::Invalid => false,
            Claim::Leader(_, last_log) => last_log >= self.log.last_id_within(own_len),
        }
    }

    /// The follower's vote rule: vote for the sender if no vote was cast in
    /// this term and it is acceptable; follow it only if it has the vote.
    fn follows(&mut self, claim: Claim) -> bool {
        if let Some(election) = self.election.as_mut() {
            // Every leader is elected, so this is the only one of its term.
            let leader = match claim {
                Claim::Invalid => return false,
                Claim::Anonymous => None,
                Claim::Leader(leader, _) => Some(leader),
            };
            election.leader = leader.or(election.leader);
            election.campaign = None;
            election.reset_timer();
            return true;
        }
        match claim {
            Claim::Anonymous => true,
            Claim::Invalid => false,
            Claim::Leader(leader, _) => {
                if self.voted_for.is_none() && self.sender_acceptable(claim, self.log.end()) {
                    self.voted_for = Some(leader);
                }
                self.voted_for == Some(leader)
            }
        }
    }

    /// Takes `known`, the index up to which a peer's success reply showed its
    /// log equal to this leader's and known committed by the peer, as
    /// committed here too, whatever the terms of those entries.
    ///
    /// Why this is safe: a server's commit index only ever covers committed
    /// entries. A follower raises it only to `min(leaderCommit, last entry
    /// the request matched)`, so to entries a leader had committed (an
    /// anonymous sender is trusted as a leader, as in the original), and a
    /// leader only by the commit rule or by this method. Committed entries
    /// are never changed or removed on any server. The reply proves the
    /// peer's log equals this leader's up to the request's last entry (it
    /// matched `prevLogIndex`/`prevLogTerm` and holds the entries sent:
    /// log matching), and this leader's log does not change below that in
    /// its term. So this leader's entries up to `known` are the very entries
    /// the peer knows are committed. Raft's rule against committing entries
    /// of earlier terms by counting replicas (§5.4.2) is not touched:
    /// nothing becomes committed here, the leader learns what already is.
    fn learn_commit(&mut self, known: LogIndex) {
        self.log.commit_to(known);
    }

    /// The commit rule: the highest index a majority holds commits if its
    /// entry is of the current term (earlier ones then commit with it).
    fn maybe_commit(&mut self) {
        let Some(tracker) = &self.leader else {
            return;
        };
        let candidate = tracker.quorum_matched(last_of(self.unsent_start()));
        if candidate > self.log.committed() && self.log.term_at(candidate) == Some(self.term) {
            self.log.commit_to(candidate);
        }
    }

    fn reply(&self, success: bool, matched_index: LogIndex) -> AppendEntryOutput {
        AppendEntryOutput {
            server_id: wire_id(self.id),
            term: self.term,
            success,
            matched_index,
            leader_id: self.known_leader().map(wire_id),
            commit_index: Some(self.log.committed()),
        }
    }
}

/// The position right after `index` (0 for -1 or anything lower).
fn index_after(index: LogIndex) -> usize {
    usize::try_from(index.saturating_add(1)).unwrap_or(0)
}

/// The index of the last of the first `len` entries.
fn last_of(len: usize) -> LogIndex {
    LogIndex::try_from(len).unwrap_or(LogIndex::MAX) - 1
}

/// A server id as the wire carries it.
fn wire_id(id: ServerId) -> i64 {
    i64::try_from(id).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raft::request::SnapshotRequest;

    fn meta(name: &str, version: i32) -> FileMetaData {
        FileMetaData {
            filename: name.into(),
            version,
            block_hash_list: vec![format!("{name}{version}")],
        }
    }

    fn entry(term: Term, name: &str) -> Entry {
        Entry {
            term,
            meta: meta(name, 1),
        }
    }

    /// Hands the core a request as the service does: validated first.
    trait Deliver {
        fn deliver(&mut self, req: &AppendEntryInput) -> AppendEntryOutput;
    }

    impl Deliver for RaftCore {
        fn deliver(&mut self, req: &AppendEntryInput) -> AppendEntryOutput {
            let req = AppendRequest::try_from(req.clone()).expect("a valid request");
            self.handle_append_entries(req)
        }
    }

    fn terms(core: &RaftCore) -> Vec<Term> {
        core.log().iter().map(|e| e.term).collect()
    }

    /// A follower holding `log` in `term`, with nothing committed.
    fn follower(id: ServerId, size: usize, term: Term, log: Vec<Entry>) -> RaftCore {
        let hard = HardState {
            term,
            voted_for: None,
            commit: -1,
        };
        RaftCore::restore(id, size, hard, log)
    }

    /// A request as the original Go leader sends it: no leader id.
    fn anonymous(
        term: Term,
        prev: LogIndex,
        prev_term: Term,
        entries: &[Entry],
        commit: LogIndex,
    ) -> AppendEntryInput {
        AppendEntryInput {
            term,
            prev_log_index: prev,
            prev_log_term: prev_term,
            entries: entries.iter().cloned().map(UpdateOperation::from).collect(),
            leader_commit: commit,
            ..Default::default()
        }
    }

    /// A request from leader `leader` whose log ends at `(last_term, last_index)`.
    fn from_leader(leader: ServerId, term: Term, last: (Term, LogIndex)) -> AppendEntryInput {
        AppendEntryInput {
            term,
            prev_log_index: -1,
            prev_log_term: -1,
            leader_commit: -1,
            leader_id: Some(leader as i64),
            last_log_term: last.0,
            last_log_index: last.1,
            ..Default::default()
        }
    }

    /// One request/reply exchange from `leader` to `peer`, outside the
    /// window (as `SendHeartbeat` repairs).
    fn exchange(leader: &mut RaftCore, peer: &mut RaftCore, max: usize) -> ReplicationStatus {
        let out = leader.sync_request(peer.id(), max).unwrap();
        let resp = peer.deliver(&out.request);
        leader.handle_append_response(peer.id(), &out.sent, &resp)
    }

    /// Exchanges until `peer` matches (or anything else than SendMore).
    fn sync(leader: &mut RaftCore, peer: &mut RaftCore) -> ReplicationStatus {
        loop {
            match exchange(leader, peer, 2) {
                ReplicationStatus::SendMore => continue,
                other => return other,
            }
        }
    }

    #[test]
    fn a_new_server_is_an_empty_term_0_follower() {
        let core = RaftCore::new(1, 3);
        assert_eq!((core.id(), core.term(), core.commit_index()), (1, 0, -1));
        assert!(!core.is_leader() && !core.is_confirmed_leader());
        assert!(core.log().is_empty());
        assert_eq!(core.leader_hint(), None);
        assert_eq!(core.hard_state(), HardState::default());
    }

    #[test]
    fn set_leader_starts_a_term_and_appends_nothing() {
        let mut core = follower(0, 3, 4, vec![entry(1, "a"), entry(2, "b")]);
        core.set_leader().unwrap();
        assert_eq!(core.term(), 5);
        assert!(core.is_leader() && !core.is_confirmed_leader());
        assert_eq!(terms(&core), [1, 2]);
        assert_eq!(core.peer_progress(1), Some((2, -1)));
        assert_eq!(core.peer_progress(2), Some((2, -1)));
        assert_eq!(core.peer_progress(0), None);
        assert_eq!(core.peer_progress(3), None);
        assert_eq!(core.leader_hint(), Some(0));
        let ready = core.take_ready();
        assert_eq!(
            ready.hard_state,
            Some(HardState {
                term: 5,
                voted_for: Some(0),
                commit: -1
            })
        );
        assert_eq!(ready.log_changed_from, None);
        core.set_leader().unwrap();
        assert_eq!(core.term(), 6);
    }

    #[test]
    fn only_the_leader_proposes_or_builds_requests() {
        let mut core = RaftCore::new(0, 3);
        let err = core.propose(meta("a", 1)).unwrap_err();
        assert_eq!(err.leader_hint, None);
        assert_eq!(err.to_string(), "Server is not the leader");
        assert!(core.sync_request(1, 10).is_none());
        assert!(core.next_append(1, 10).is_none());
        core.set_leader().unwrap();
        for peer in [0, 7] {
            assert!(core.sync_request(peer, 10).is_none());
            assert!(core.next_append(peer, 10).is_none());
        }
        assert!(core.sync_request(1, 10).is_some());
        assert!(core.next_append(1, 10).is_some());
    }

    #[test]
    fn receiver_rejects_a_lower_term_with_its_own_term_and_keeps_its_log() {
        let mut core = follower(1, 3, 3, vec![entry(1, "a")]);
        let resp = core.deliver(&anonymous(2, -1, -1, &[entry(2, "x")], 0));
        assert!(!resp.success);
        assert_eq!((resp.term, resp.server_id), (3, 1));
        assert_eq!(terms(&core), [1]);
        assert_eq!(core.commit_index(), -1);
    }

    #[test]
    fn receiver_adopts_a_higher_term_and_a_leader_steps_down() {
        let mut core = RaftCore::new(0, 3);
        core.set_leader().unwrap();
        let resp = core.deliver(&anonymous(7, -1, -1, &[], -1));
        assert!(resp.success);
        assert_eq!(resp.term, 7);
        assert!(!core.is_leader());
        assert_eq!(core.hard_state().voted_for, None);
    }

    #[test]
    fn receiver_checks_the_previous_entry() {
        let mut core = follower(1, 3, 1, vec![entry(1, "a"), entry(1, "b")]);
        // -1 matches whatever prevLogTerm says.
        let resp = core.deliver(&anonymous(1, -1, 9, &[], -1));
        assert!(resp.success);
        assert_eq!(resp.matched_index, -1);
        // Wrong term at prevLogIndex, then no entry at all there.
        let resp = core.deliver(&anonymous(2, 1, 2, &[], -1));
        assert!(!resp.success);
        assert_eq!(resp.matched_index, 0, "hint: try one lower");
        let resp = core.deliver(&anonymous(2, 5, 1, &[], -1));
        assert!(!resp.success);
        assert_eq!(resp.matched_index, 1, "hint: its last index");
        assert_eq!(terms(&core), [1, 1]);
    }

    #[test]
    fn receiver_truncates_only_on_conflict_and_reports_matched_index() {
        let a = entry(1, "a");
        let b = entry(1, "b");
        let c = entry(1, "c");
        let mut core = follower(1, 3, 2, vec![a.clone(), b.clone(), c.clone()]);
        // A duplicate or older request of the same leader removes nothing.
        let resp = core.deliver(&anonymous(2, -1, -1, &[a.clone(), b.clone()], -1));
        assert!(resp.success);
        assert_eq!(resp.matched_index, 1);
        assert_eq!(core.log(), [a.clone(), b.clone(), c.clone()]);
        // A conflict at index 1 deletes 1.. and appends the new entries.
        let x = entry(2, "x");
        let resp = core.deliver(&anonymous(2, 0, 1, std::slice::from_ref(&x), -1));
        assert!(resp.success);
        assert_eq!(resp.matched_index, 1);
        assert_eq!(core.log(), [a, x]);
        let ready = core.take_ready();
        assert_eq!(ready.log_changed_from, Some(1));
        assert_eq!(ready.entries, core.log()[1..]);
    }

    #[test]
    fn receiver_commits_up_to_the_last_new_entry_and_applies_in_order() {
        let mut core = follower(1, 3, 1, vec![]);
        let sent = [entry(1, "a"), entry(1, "b"), entry(1, "c")];
        core.deliver(&anonymous(1, -1, -1, &sent, 1));
        assert_eq!(core.commit_index(), 1);
        let ready = core.take_ready();
        assert_eq!(
            ready.committed,
            vec![(0, sent[0].clone()), (1, sent[1].clone())]
        );
        assert_eq!(ready.hard_state.map(|h| h.commit), Some(1));
        // A heartbeat vouching only for index 0 cannot commit index 2.
        core.deliver(&anonymous(1, 0, 1, &[], 5));
        assert_eq!(core.commit_index(), 1);
        core.deliver(&anonymous(1, 2, 1, &[], 5));
        assert_eq!(core.commit_index(), 2);
        assert_eq!(core.take_ready().committed, vec![(2, sent[2].clone())]);
    }

    #[test]
    fn vote_rule_follows_the_first_up_to_date_leader_of_a_term() {
        let mut core = follower(2, 3, 1, vec![entry(1, "a")]);
        // Leader 0 is behind: refused, no vote, log untouched.
        let resp = core.deliver(&from_leader(0, 2, (-1, -1)));
        assert!(!resp.success);
        assert_eq!((resp.term, resp.leader_id), (2, None));
        assert_eq!(terms(&core), [1]);
        // Leader 1 is as up-to-date: it gets the vote.
        let resp = core.deliver(&from_leader(1, 2, (1, 0)));
        assert!(resp.success);
        assert_eq!(resp.leader_id, Some(1));
        assert_eq!(core.leader_hint(), Some(1));
        // Another leader of term 2, even more up-to-date, is refused with the
        // leader this server follows, and its entries are not taken.
        let mut req = from_leader(0, 2, (2, 5));
        req.entries = vec![entry(2, "x").into()];
        let resp = core.deliver(&req);
        assert!(!resp.success);
        assert_eq!(resp.leader_id, Some(1));
        assert_eq!(terms(&core), [1]);
        // Original semantics without a leader id: no vote check.
        let resp = core.deliver(&anonymous(2, 0, 1, &[], -1));
        assert!(resp.success);
        assert_eq!(resp.leader_id, Some(1));
        // A claim to be this server itself, or no server at all, is refused.
        assert!(!core.deliver(&from_leader(2, 3, (3, 9))).success);
        assert!(!core.deliver(&from_leader(7, 3, (3, 9))).success);
        assert_eq!(core.hard_state().voted_for, None);
        assert!(core.deliver(&from_leader(0, 3, (3, 9))).success);
        assert_eq!(
            core.take_ready().hard_state.and_then(|h| h.voted_for),
            Some(0)
        );
    }

    #[test]
    fn ready_says_when_to_sync_and_when_to_wake_peers() {
        let mut l = RaftCore::new(0, 3);
        let mut f = RaftCore::new(1, 3);
        l.set_leader().unwrap();
        let ready = l.take_ready();
        assert!(ready.must_sync, "a new term and vote");
        assert!(ready.wake_peers, "a new term to probe");
        l.propose(meta("a", 1)).unwrap();
        let ready = l.take_ready();
        assert!(
            !ready.wake_peers,
            "an unconfirmed leader has nothing to send"
        );
        assert!(!ready.must_sync, "nor anything to persist");
        // The confirmation releases the proposal: persist it, send it.
        sync(&mut l, &mut f);
        let ready = l.take_ready();
        assert!(ready.must_sync && ready.wake_peers);
        assert_eq!(ready.committed.len(), 1);
        // The follower learns the commit index alone: no fsync needed.
        f.take_ready();
        exchange(&mut l, &mut f, 0);
        let ready = f.take_ready();
        assert_eq!(ready.hard_state.map(|h| h.commit), Some(0));
        assert!(!ready.must_sync && ready.log_changed_from.is_none());
        assert!(!ready.wake_peers, "a follower wakes nobody");
        assert_eq!(l.take_ready(), Ready::default(), "nothing new");
    }

    #[test]
    fn ready_hands_out_proposals_that_cannot_commit_as_abandoned() {
        let mut l = RaftCore::new(0, 3);
        let mut f = RaftCore::new(1, 3);
        l.set_leader().unwrap();
        sync(&mut l, &mut f);
        let a = l.propose(meta("a", 1)).unwrap();
        let b = l.propose(meta("b", 1)).unwrap();
        // `a` commits; `b` is still pending when a new term starts.
        let out = l.sync_request(1, 1).unwrap();
        let resp = f.deliver(&out.request);
        l.handle_append_response(1, &out.sent, &resp);
        l.set_leader().unwrap();
        let ready = l.take_ready();
        assert_eq!(
            ready.committed.iter().map(|(i, _)| *i).collect::<Vec<_>>(),
            [a]
        );
        assert_eq!(ready.abandoned, [(b, 1)]);
        // A deposed leader abandons what it proposed in its term.
        let c = l.propose(meta("c", 1)).unwrap();
        l.take_ready();
        l.deliver(&from_leader(2, 3, (1, 9)));
        assert_eq!(l.take_ready().abandoned, [(c, 2)]);
        assert_eq!(l.take_ready().abandoned, []);
    }

    #[test]
    fn longer_log_of_the_same_last_term_is_more_up_to_date() {
        let mut core = follower(2, 3, 1, vec![entry(1, "a"), entry(1, "b")]);
        assert!(!core.deliver(&from_leader(0, 2, (1, 0))).success);
        assert!(core.deliver(&from_leader(1, 2, (1, 1))).success);
    }

    #[test]
    fn a_leader_confirms_with_a_majority_and_commits_its_proposals() {
        let mut l = RaftCore::new(0, 3);
        let mut f1 = RaftCore::new(1, 3);
        let mut f2 = RaftCore::new(2, 3);
        l.set_leader().unwrap();
        assert_eq!(l.propose(meta("a", 1)), Ok(0));
        // Unconfirmed: its own-term proposal is not sent, nor persisted.
        let req = l.sync_request(1, 10).unwrap().request;
        assert!(req.entries.is_empty());
        assert_eq!((req.last_log_term, req.last_log_index), (-1, -1));
        let ready = l.take_ready();
        assert_eq!(ready.log_changed_from, None);
        assert!(ready.entries.is_empty());
        // One acknowledgement makes a majority: now it sends and persists it.
        assert_eq!(exchange(&mut l, &mut f1, 10), ReplicationStatus::SendMore);
        assert!(l.is_confirmed_leader());
        let ready = l.take_ready();
        assert_eq!(ready.log_changed_from, Some(0));
        assert_eq!(ready.entries, l.log());
        let req = l.sync_request(2, 10).unwrap().request;
        assert_eq!(req.entries.len(), 1);
        assert_eq!((req.last_log_term, req.last_log_index), (1, 0));
        assert_eq!(exchange(&mut l, &mut f1, 10), ReplicationStatus::Matched);
        assert_eq!(l.commit_index(), 0);
        assert_eq!(l.peer_progress(1), Some((1, 0)));
        assert_eq!(l.take_ready().committed, vec![(0, l.log()[0].clone())]);
        assert_eq!(sync(&mut l, &mut f2), ReplicationStatus::Matched);
        assert_eq!(f2.commit_index(), 0);
        assert_eq!(f2.log(), l.log());
    }

    #[test]
    fn only_current_term_entries_commit_by_counting() {
        // Leader of term 3 holding an uncommitted entry of term 1.
        let mut l = follower(0, 3, 2, vec![entry(1, "old")]);
        let mut f1 = RaftCore::new(1, 3);
        l.set_leader().unwrap();
        assert_eq!(sync(&mut l, &mut f1), ReplicationStatus::Matched);
        assert_eq!(f1.log(), l.log());
        assert_eq!(
            l.commit_index(),
            -1,
            "a majority holds it, but it is of term 1"
        );
        l.propose(meta("new", 1)).unwrap();
        assert_eq!(sync(&mut l, &mut f1), ReplicationStatus::Matched);
        assert_eq!(
            l.commit_index(),
            1,
            "the term-3 entry commits the older one too"
        );
        let applied: Vec<LogIndex> = l.take_ready().committed.iter().map(|(i, _)| *i).collect();
        assert_eq!(applied, [0, 1]);
    }

    #[test]
    fn an_unconfirmed_leader_sends_entries_of_earlier_terms() {
        let mut l = follower(0, 5, 1, vec![entry(1, "old")]);
        let mut f = RaftCore::new(1, 5);
        l.set_leader().unwrap();
        l.propose(meta("mine", 1)).unwrap();
        // Probe at the log length fails, back off, then push only the old entry.
        assert_eq!(exchange(&mut l, &mut f, 10), ReplicationStatus::SendMore);
        let req = l.sync_request(1, 10).unwrap().request;
        assert_eq!(req.entries.len(), 1);
        assert_eq!(req.entries[0].term, 1);
        assert_eq!((req.last_log_term, req.last_log_index), (1, 0));
        assert_eq!(exchange(&mut l, &mut f, 10), ReplicationStatus::Matched);
        assert!(!l.is_confirmed_leader(), "2 of 5 is no majority");
        assert_eq!(terms(&f), [1]);
    }

    #[test]
    fn majority_denial_deposes_an_unconfirmed_leader_and_drops_its_proposals() {
        let mut a = follower(0, 3, 1, vec![entry(1, "x")]);
        let mut b = follower(1, 3, 1, vec![entry(1, "x"), entry(1, "y")]);
        let mut c = follower(2, 3, 1, vec![entry(1, "x"), entry(1, "y")]);
        a.set_leader().unwrap();
        a.propose(meta("lost", 1)).unwrap();
        assert_eq!(exchange(&mut a, &mut b, 10), ReplicationStatus::Denied);
        assert!(a.is_leader());
        assert_eq!(exchange(&mut a, &mut c, 10), ReplicationStatus::NotLeader);
        assert!(!a.is_leader());
        assert_eq!(terms(&a), [1]);
        assert_eq!(
            a.hard_state().voted_for,
            None,
            "free to follow another leader"
        );
        assert_eq!(a.term(), 2);
        // The dropped proposal was never persisted: nothing to write.
        let ready = a.take_ready();
        assert!(ready.entries.is_empty());
        // B now leads term 3 and A follows it.
        b.set_leader().unwrap();
        assert_eq!(sync(&mut b, &mut a), ReplicationStatus::Matched);
        assert!(b.is_confirmed_leader());
        assert_eq!(a.log(), b.log());
    }

    #[test]
    fn higher_term_deposes_an_unconfirmed_leader_but_a_confirmed_one_keeps_its_log() {
        let mut a = RaftCore::new(0, 3);
        a.set_leader().unwrap();
        a.propose(meta("unsent", 1)).unwrap();
        let sent = a.sync_request(1, 10).unwrap().sent;
        let resp = AppendEntryOutput {
            server_id: 1,
            term: 5,
            success: false,
            matched_index: -1,
            leader_id: None,
            commit_index: None,
        };
        assert_eq!(
            a.handle_append_response(1, &sent, &resp),
            ReplicationStatus::NotLeader
        );
        assert!(!a.is_leader());
        assert!(a.log().is_empty());
        assert_eq!(a.term(), 5);

        let mut a = RaftCore::new(0, 3);
        let mut b = RaftCore::new(1, 3);
        a.set_leader().unwrap();
        sync(&mut a, &mut b);
        a.propose(meta("kept", 1)).unwrap();
        assert_eq!(
            a.handle_append_response(1, &sent, &resp),
            ReplicationStatus::NotLeader
        );
        assert_eq!(a.log().len(), 1);
    }

    #[test]
    fn two_leaders_of_one_term_resolve_to_at_most_one() {
        // Both made leader of term 1 at once.
        let mut a = RaftCore::new(0, 3);
        let mut b = RaftCore::new(1, 3);
        let mut c = RaftCore::new(2, 3);
        a.set_leader().unwrap();
        b.set_leader().unwrap();
        b.propose(meta("b's", 1)).unwrap();
        // C follows A; A is confirmed; B is refused by both.
        assert_eq!(exchange(&mut a, &mut c, 10), ReplicationStatus::Matched);
        assert!(a.is_confirmed_leader());
        assert_eq!(exchange(&mut b, &mut c, 10), ReplicationStatus::Denied);
        let Outgoing { request: req, sent } = b.sync_request(0, 10).unwrap();
        let resp = a.deliver(&req);
        assert_eq!(resp.leader_id, Some(0));
        assert!(a.is_leader(), "a confirmed leader never yields in its term");
        assert_eq!(
            b.handle_append_response(0, &sent, &resp),
            ReplicationStatus::NotLeader
        );
        assert!(b.log().is_empty());
        // B released its vote and follows A.
        assert_eq!(sync(&mut a, &mut b), ReplicationStatus::Matched);
        assert_eq!(b.leader_hint(), Some(0));
    }

    #[test]
    fn an_unconfirmed_leader_yields_to_an_up_to_date_leader_of_its_term_only() {
        let mut a = follower(0, 3, 1, vec![entry(1, "x")]);
        let mut b = follower(1, 3, 1, vec![]);
        a.set_leader().unwrap();
        b.set_leader().unwrap();
        b.propose(meta("b's", 1)).unwrap();
        // B's log is behind A's: A refuses it and stays leader.
        let req = b.sync_request(0, 10).unwrap().request;
        let resp = a.deliver(&req);
        assert!(!resp.success);
        assert_eq!(resp.leader_id, Some(0));
        assert!(a.is_leader());
        // A's log is ahead of B's: B gives way, drops its proposal, follows A.
        let Outgoing { request: req, sent } = a.sync_request(1, 10).unwrap();
        let resp = b.deliver(&req);
        assert_eq!(resp.leader_id, Some(0));
        assert!(!b.is_leader());
        assert!(b.log().is_empty());
        assert!(a.acknowledges_leadership(&sent, &resp));
    }

    #[test]
    fn stale_duplicated_and_reordered_replies_change_nothing() {
        let mut l = follower(0, 3, 1, vec![entry(1, "a"), entry(1, "b"), entry(1, "c")]);
        let mut f = RaftCore::new(1, 3);
        l.set_leader().unwrap();
        // Probe at index 2 fails; back off; its duplicate is ignored.
        let probe = l.sync_request(1, 1).unwrap();
        let failed = f.deliver(&probe.request);
        assert_eq!(
            l.handle_append_response(1, &probe.sent, &failed),
            ReplicationStatus::SendMore
        );
        let after_backoff = l.peer_progress(1);
        assert_eq!(
            after_backoff,
            Some((0, -1)),
            "the follower's hint skips ahead"
        );
        assert_eq!(
            l.handle_append_response(1, &probe.sent, &failed),
            ReplicationStatus::Ignored
        );
        assert_eq!(l.peer_progress(1), after_backoff);
        // The reply to an earlier exchange arrives again after a later one.
        let first = l.sync_request(1, 1).unwrap();
        let first_resp = f.deliver(&first.request);
        assert_eq!(
            l.handle_append_response(1, &first.sent, &first_resp),
            ReplicationStatus::SendMore
        );
        let second = l.sync_request(1, 2).unwrap();
        let second_resp = f.deliver(&second.request);
        assert_eq!(
            l.handle_append_response(1, &second.sent, &second_resp),
            ReplicationStatus::Matched
        );
        assert_eq!(
            l.handle_append_response(1, &first.sent, &first_resp),
            ReplicationStatus::Matched
        );
        assert_eq!(
            l.peer_progress(1),
            Some((3, 2)),
            "matchIndex never decreases"
        );
        // A reply from an earlier term of this leader is ignored.
        let old = l.sync_request(1, 0).unwrap();
        let old_resp = f.deliver(&old.request);
        l.set_leader().unwrap();
        assert_eq!(
            l.handle_append_response(1, &old.sent, &old_resp),
            ReplicationStatus::Ignored
        );
        assert_eq!(l.peer_progress(1), Some((3, -1)));
    }

    #[test]
    fn single_server_cluster_commits_at_once() {
        let mut core = RaftCore::new(0, 1);
        core.set_leader().unwrap();
        assert!(core.is_confirmed_leader());
        assert_eq!(core.propose(meta("a", 1)), Ok(0));
        assert_eq!(core.commit_index(), 0);
        let ready = core.take_ready();
        assert_eq!(ready.log_changed_from, Some(0));
        assert_eq!(ready.committed.len(), 1);
        assert_eq!(ready.hard_state.map(|h| h.commit), Some(0));
        assert!(core.sync_request(0, 1).is_none());
        assert!(core.next_append(0, 1).is_none());
    }

    #[test]
    fn restore_replays_the_committed_prefix_and_clamps_a_bad_commit() {
        let log = vec![entry(1, "a"), entry(1, "b")];
        let hard = HardState {
            term: 3,
            voted_for: Some(2),
            commit: 0,
        };
        let mut core = RaftCore::restore(1, 3, hard, log.clone());
        assert_eq!(
            (core.term(), core.leader_hint(), core.commit_index()),
            (3, Some(2), 0)
        );
        let ready = core.take_ready();
        assert_eq!(ready.hard_state, None);
        assert_eq!(ready.committed, vec![(0, log[0].clone())]);

        let hard = HardState { commit: 9, ..hard };
        let mut core = RaftCore::restore(1, 3, hard, log);
        assert_eq!(core.commit_index(), 1);
        assert_eq!(core.take_ready().hard_state.map(|h| h.commit), Some(1));
    }

    #[test]
    fn hostile_values_never_panic() {
        let extremes = [i64::MIN, -2, -1, 0, 1, i64::MAX];
        let senders = [None, Some(0), Some(-1), Some(i64::MAX)];
        let mut follower = follower(1, 3, 1, vec![entry(1, "a")]);
        let mut leader = follower.clone();
        leader.set_leader().unwrap();
        for x in extremes {
            for y in extremes {
                for sender in senders {
                    let req = AppendEntryInput {
                        term: 1,
                        prev_log_index: x,
                        prev_log_term: y,
                        entries: vec![entry(1, "b").into()],
                        leader_commit: y,
                        leader_id: sender,
                        last_log_index: y,
                        last_log_term: x,
                    };
                    if let Ok(req) = AppendRequest::try_from(req) {
                        follower.handle_append_entries(req);
                    }
                    follower.take_ready();
                    let resp = AppendEntryOutput {
                        server_id: x,
                        term: y.clamp(0, 2),
                        success: x > 0,
                        matched_index: y,
                        leader_id: Some(1),
                        commit_index: Some(x),
                    };
                    if let Some(own) = leader.next_append(0, 5) {
                        leader.handle_append_response(0, &own.sent, &resp);
                    }
                    let forged = SentAppend {
                        term: y.clamp(0, 2),
                        slice: Slice {
                            prev: x,
                            count: if y > 0 { usize::MAX } else { 1 },
                        },
                        leader_commit: y,
                        epoch: 0,
                    };
                    leader.handle_append_response(2, &forged, &resp);
                    leader.report_unreachable(2, &forged);
                    leader.take_ready();
                }
            }
        }
        assert!(follower.commit_index() <= follower.log.last_index());
    }

    #[test]
    fn set_leader_at_the_highest_term_is_refused_and_changes_nothing() {
        let mut core = follower(0, 3, MAX_TERM - 1, vec![]);
        core.set_leader().unwrap();
        assert_eq!(core.term(), MAX_TERM);
        let before = core.hard_state();
        assert_eq!(core.set_leader(), Err(TermExhausted { term: MAX_TERM }));
        assert_eq!(core.hard_state(), before);
        assert!(core.is_leader(), "still the one leader of its term");

        let mut other = follower(1, 3, MAX_TERM, vec![]);
        assert!(other.set_leader().is_err());
        assert!(!other.is_leader());
        assert_eq!(other.hard_state().voted_for, None, "no vote for itself");
    }

    #[test]
    fn a_reply_carrying_a_term_no_server_holds_is_ignored() {
        let mut l = RaftCore::new(0, 3);
        l.set_leader().unwrap();
        let sent = l.sync_request(1, 0).unwrap().sent;
        for term in [i64::MAX, -1] {
            let resp = AppendEntryOutput {
                server_id: 1,
                term,
                success: false,
                matched_index: -1,
                leader_id: None,
                commit_index: None,
            };
            assert_eq!(
                l.handle_append_response(1, &sent, &resp),
                ReplicationStatus::Ignored
            );
            assert_eq!((l.is_leader(), l.term()), (true, 1));
        }
    }

    #[test]
    fn acknowledgement_needs_same_term_and_this_leader() {
        let mut l = RaftCore::new(0, 3);
        l.set_leader().unwrap();
        let sent = l.sync_request(1, 0).unwrap().sent;
        let ack = AppendEntryOutput {
            server_id: 1,
            term: 1,
            success: false,
            matched_index: -1,
            leader_id: Some(0),
            commit_index: None,
        };
        assert!(l.acknowledges_leadership(&sent, &ack));
        let other = AppendEntryOutput {
            leader_id: Some(2),
            ..ack
        };
        assert!(!l.acknowledges_leadership(&sent, &other));
        let later = AppendEntryOutput { term: 2, ..ack };
        assert!(!l.acknowledges_leadership(&sent, &later));
        l.set_leader().unwrap();
        assert!(
            !l.acknowledges_leadership(&sent, &AppendEntryOutput { term: 2, ..ack }),
            "a request of an earlier term"
        );
    }

    /// Every request the window lets `leader` send `peer` now.
    fn window(leader: &mut RaftCore, peer: ServerId, max: usize) -> Vec<Outgoing> {
        std::iter::from_fn(|| leader.next_append(peer, max)).collect()
    }

    /// A leader of term 1 confirmed by `f`, which matched its empty log by
    /// the first probe, then `n` proposals of the leader.
    fn confirmed_with_proposals(n: usize) -> (RaftCore, RaftCore) {
        let mut l = RaftCore::new(0, 3);
        let mut f = RaftCore::new(1, 3);
        l.set_leader().unwrap();
        let probe = l.next_append(1, 2).unwrap();
        assert!(l.next_append(1, 2).is_none(), "one probe at a time");
        for i in 0..n {
            l.propose(meta(&format!("p{i}"), 1)).unwrap();
        }
        assert!(
            l.next_append(1, 2).is_none(),
            "an unconfirmed leader sends nothing of its term"
        );
        assert!(l.sync_request(1, 2).unwrap().request.entries.is_empty());
        let resp = f.deliver(&probe.request);
        assert_eq!(
            l.handle_append_response(1, &probe.sent, &resp),
            ReplicationStatus::SendMore
        );
        assert!(l.is_confirmed_leader());
        (l, f)
    }

    /// Sends everything the window allows and feeds each reply back, in
    /// order, until nothing more goes out; then `f` must hold `l`'s log.
    fn drain(l: &mut RaftCore, f: &mut RaftCore) {
        for _ in 0..l.log().len() + 4 {
            let batch = window(l, f.id(), 2);
            if batch.is_empty() {
                break;
            }
            for out in batch {
                let resp = f.deliver(&out.request);
                l.handle_append_response(f.id(), &out.sent, &resp);
            }
        }
        assert_eq!(f.log(), l.log());
        assert_eq!(
            l.peer_progress(f.id()),
            Some((l.last_index() + 1, l.last_index()))
        );
    }

    #[test]
    fn a_replicating_peer_gets_max_inflight_requests_each_after_the_last() {
        let (mut l, mut f) = confirmed_with_proposals(10);
        let sent = window(&mut l, 1, 2);
        let prevs: Vec<LogIndex> = sent.iter().map(|o| o.request.prev_log_index).collect();
        assert_eq!(prevs, [-1, 1, 3, 5]);
        assert_eq!(sent.len(), crate::raft::MAX_INFLIGHT);
        assert!(sent.iter().all(|o| o.request.entries.len() == 2));
        assert_eq!(l.peer_progress(1), Some((8, -1)), "nextIndex moved on send");
        // Replies in order: each frees its slot and lets one more go.
        let resp = f.deliver(&sent[0].request);
        assert_eq!(
            l.handle_append_response(1, &sent[0].sent, &resp),
            ReplicationStatus::SendMore
        );
        assert_eq!(l.commit_index(), 1);
        let more = window(&mut l, 1, 2);
        assert_eq!(more.len(), 1);
        assert_eq!(more[0].request.prev_log_index, 7);
        for out in sent[1..].iter().chain(&more) {
            let resp = f.deliver(&out.request);
            l.handle_append_response(1, &out.sent, &resp);
        }
        assert_eq!(l.commit_index(), 9);
        assert_eq!(f.log(), l.log());
    }

    #[test]
    fn reordered_and_duplicated_window_traffic_converges() {
        let (mut l, mut f) = confirmed_with_proposals(10);
        let sent = window(&mut l, 1, 2);
        // The second request overtakes the first; the first arrives twice.
        let replies: Vec<(usize, AppendEntryOutput)> = [1, 0, 3, 2, 0]
            .into_iter()
            .map(|i| (i, f.deliver(&sent[i].request)))
            .collect();
        // Replies come back in yet another order.
        for &k in &[2, 4, 0, 3, 1] {
            let (i, resp) = &replies[k];
            l.handle_append_response(1, &sent[*i].sent, resp);
            let (next, matched) = l.peer_progress(1).unwrap();
            assert!(next > matched, "nextIndex {next} <= matchIndex {matched}");
        }
        assert_eq!(l.peer_progress(1).map(|p| p.1), Some(1));
        drain(&mut l, &mut f);
    }

    #[test]
    fn a_heartbeat_starts_at_match_index_and_cannot_back_off() {
        let (mut l, mut f) = confirmed_with_proposals(10);
        let sent = window(&mut l, 1, 2);
        let before = l.peer_progress(1);
        // Due while the window is full, and overtaking all of it.
        let beat = l.sync_request(1, 0).unwrap();
        assert_eq!(beat.request.prev_log_index, -1);
        assert!(beat.request.entries.is_empty());
        let resp = f.deliver(&beat.request);
        assert!(resp.success);
        l.handle_append_response(1, &beat.sent, &resp);
        assert_eq!(l.peer_progress(1), before);
        assert!(l.next_append(1, 2).is_none(), "the window is still full");
        for out in &sent {
            let resp = f.deliver(&out.request);
            l.handle_append_response(1, &out.sent, &resp);
        }
        assert_eq!(l.peer_progress(1), Some((8, 7)));
    }

    #[test]
    fn a_failed_call_probes_again_from_match_index() {
        let (mut l, mut f) = confirmed_with_proposals(10);
        let sent = window(&mut l, 1, 2);
        let resp = f.deliver(&sent[0].request);
        l.handle_append_response(1, &sent[0].sent, &resp);
        l.report_unreachable(1, &sent[1].sent);
        assert_eq!(l.peer_progress(1), Some((2, 1)));
        let probe = l.next_append(1, 2).unwrap();
        assert_eq!(probe.request.prev_log_index, 1);
        // The window's other failures are stale now: the probe stays alone.
        l.report_unreachable(1, &sent[2].sent);
        l.report_unreachable(1, &sent[3].sent);
        assert!(l.next_append(1, 2).is_none());
        assert_eq!(l.peer_progress(1), Some((2, 1)));
        // A late success of the old window still counts.
        let resp = f.deliver(&sent[1].request);
        l.handle_append_response(1, &sent[1].sent, &resp);
        assert_eq!(l.peer_progress(1), Some((4, 3)));
        drain(&mut l, &mut f);
        // A report from an earlier term changes nothing.
        l.set_leader().unwrap();
        l.report_unreachable(1, &probe.sent);
        assert_eq!(l.peer_progress(1), Some((10, -1)));
    }

    #[test]
    fn requests_carry_at_most_the_batch_budget_but_always_one_entry() {
        let mut l = RaftCore::new(0, 3);
        let mut f = RaftCore::new(1, 3);
        l.set_leader().unwrap();
        assert_eq!(sync(&mut l, &mut f), ReplicationStatus::Matched);
        assert!(l.is_confirmed_leader());
        for i in 0..10 {
            let mut update = meta(&format!("big{i}"), 1);
            update.block_hash_list = vec!["h".repeat(1000)];
            l.propose(update).unwrap();
        }
        let size = l.log()[0].wire_len();
        assert!(l.log().iter().all(|e| e.wire_len() == size));
        l.set_max_batch_bytes(3 * size + size / 2);
        let sync = l.sync_request(1, 100).unwrap().request;
        assert_eq!(sync.entries.len(), 3);
        let sent = window(&mut l, 1, 100);
        let counts: Vec<usize> = sent.iter().map(|o| o.request.entries.len()).collect();
        assert_eq!(counts, [3, 3, 3, 1]);
        // A budget below one entry still sends one per request.
        l.set_max_batch_bytes(1);
        assert_eq!(l.sync_request(1, 100).unwrap().request.entries.len(), 1);
        // The window is lost; the peer is probed and caught up again.
        l.report_unreachable(1, &sent[0].sent);
        for _ in 0..l.log().len() * 2 + 4 {
            let Some(out) = l.next_append(1, 100) else {
                break;
            };
            assert!(out.request.entries.len() <= 1, "{:?}", out.request);
            let resp = f.deliver(&out.request);
            l.handle_append_response(1, &out.sent, &resp);
        }
        assert_eq!(f.log(), l.log());
    }

    #[test]
    fn a_peer_is_behind_until_a_reply_shows_it_knows_the_commit_index() {
        let mut l = RaftCore::new(0, 3);
        let mut f1 = RaftCore::new(1, 3);
        let mut f2 = RaftCore::new(2, 3);
        l.set_leader().unwrap();
        l.propose(meta("a", 1)).unwrap();
        assert!(
            !l.peer_is_behind(1, LogIndex::MAX) && !l.peer_is_behind(2, LogIndex::MAX),
            "an unconfirmed leader may send them nothing"
        );
        assert!(!l.peer_is_behind(0, LogIndex::MAX) && !l.peer_is_behind(7, LogIndex::MAX));
        let early = l.sync_request(2, 10).unwrap();
        // Server 1's acknowledgement confirms the leader: its proposal is due
        // to both peers now.
        assert_eq!(exchange(&mut l, &mut f1, 10), ReplicationStatus::SendMore);
        assert!(l.peer_is_behind(1, LogIndex::MAX) && l.peer_is_behind(2, LogIndex::MAX));
        // Server 1 matches, and that very reply commits the entry: it holds
        // the log but was told the old commit index.
        assert_eq!(exchange(&mut l, &mut f1, 10), ReplicationStatus::Matched);
        assert_eq!((l.commit_index(), f1.commit_index()), (0, -1));
        assert!(l.peer_is_behind(1, LogIndex::MAX));
        assert_eq!(exchange(&mut l, &mut f1, 10), ReplicationStatus::Matched);
        assert_eq!(f1.commit_index(), 0);
        assert!(!l.peer_is_behind(1, LogIndex::MAX));
        // A request built before the commit leaves server 2 behind too.
        let resp = f2.deliver(&early.request);
        l.handle_append_response(2, &early.sent, &resp);
        assert!(l.peer_is_behind(2, LogIndex::MAX));
        assert_eq!(sync(&mut l, &mut f2), ReplicationStatus::Matched);
        assert!(!l.peer_is_behind(2, LogIndex::MAX));
        assert_eq!(f2.commit_index(), 0);
        assert!(
            !f1.peer_is_behind(0, LogIndex::MAX),
            "a follower has no peers to repair"
        );
        // A proposal made after a round began is not that round's goal.
        l.propose(meta("b", 1)).unwrap();
        assert!(l.peer_is_behind(1, LogIndex::MAX));
        assert!(!l.peer_is_behind(1, 0));
    }

    #[test]
    fn a_new_leader_learns_an_earlier_terms_commit_from_a_follower_that_knows_it() {
        let log = vec![entry(1, "x"), entry(1, "y")];
        let knows_x = HardState {
            term: 1,
            voted_for: None,
            commit: 0,
        };
        let mut f = RaftCore::restore(2, 3, knows_x, log.clone());
        f.take_ready();
        let mut l = follower(1, 3, 1, log.clone());
        l.set_leader().unwrap();
        // The probe at the leader's last entry matches; the reply says the
        // follower knows index 0 is committed.
        let out = l.sync_request(2, 0).unwrap();
        let resp = f.deliver(&out.request);
        assert_eq!((resp.success, resp.commit_index), (true, Some(0)));
        l.handle_append_response(2, &out.sent, &resp);
        assert_eq!(l.commit_index(), 0, "committed, though of term 1");
        assert_eq!(l.take_ready().committed, vec![(0, log[0].clone())]);
        assert_eq!(l.peer_progress(2), Some((2, 1)));
    }

    #[test]
    fn a_commit_learned_from_a_reply_stops_at_what_the_request_matched() {
        let mut l = follower(0, 3, 1, vec![entry(1, "x"), entry(1, "y")]);
        l.set_leader().unwrap();
        // A refused probe teaches nothing, whatever the reply claims.
        let probe = l.sync_request(1, 0).unwrap();
        assert_eq!(probe.request.prev_log_index, 1);
        let refusal = AppendEntryOutput {
            server_id: 1,
            term: 2,
            success: false,
            matched_index: 0,
            leader_id: Some(0),
            commit_index: Some(1),
        };
        l.handle_append_response(1, &probe.sent, &refusal);
        assert_eq!(l.commit_index(), -1);
        // A success proves the logs equal only up to the request's end.
        let probe = l.sync_request(1, 0).unwrap();
        assert_eq!(probe.request.prev_log_index, 0);
        let success = AppendEntryOutput {
            success: true,
            ..refusal
        };
        l.handle_append_response(1, &probe.sent, &success);
        assert_eq!(l.commit_index(), 0);
        // A reply without the field (an older follower) teaches nothing.
        let mut l = follower(0, 3, 1, vec![entry(1, "x")]);
        l.set_leader().unwrap();
        let probe = l.sync_request(1, 0).unwrap();
        let old = AppendEntryOutput {
            commit_index: None,
            ..success
        };
        l.handle_append_response(1, &probe.sent, &old);
        assert_eq!(l.commit_index(), -1);
    }

    #[test]
    fn a_replicating_peer_is_told_a_new_commit_index_at_once() {
        let (mut l, mut f) = confirmed_with_proposals(2);
        let sent = window(&mut l, 1, 2);
        assert_eq!(sent.len(), 1);
        assert_eq!(sent[0].request.leader_commit, -1);
        let resp = f.deliver(&sent[0].request);
        l.handle_append_response(1, &sent[0].sent, &resp);
        assert_eq!((l.commit_index(), f.commit_index()), (1, -1));
        let notice = l.next_append(1, 2).unwrap();
        assert_eq!(notice.request.prev_log_index, 1);
        assert!(notice.request.entries.is_empty());
        assert_eq!(notice.request.leader_commit, 1);
        assert!(l.next_append(1, 2).is_none(), "told once");
        f.deliver(&notice.request);
        assert_eq!(f.commit_index(), 1);
    }

    /// Delivers a whole snapshot as the node's chunks add up to.
    fn install(f: &mut RaftCore, out: &OutgoingSnapshot) -> AppendEntryOutput {
        f.handle_install_snapshot(SnapshotRequest::from(out))
    }

    #[test]
    fn a_peer_behind_the_snapshot_gets_it_then_the_log_after_it() {
        let (mut l, mut f1) = confirmed_with_proposals(6);
        drain(&mut l, &mut f1);
        assert_eq!(l.commit_index(), 5);
        assert_eq!(l.take_ready().committed.len(), 6);
        l.compact(bytes::Bytes::from_static(b"map"));
        assert_eq!((l.first_index(), l.applied_after_snapshot()), (6, 0));
        let ready = l.take_ready();
        let write = ready.snapshot.expect("the snapshot to persist");
        assert!(!write.restore_map && write.log.is_empty());
        assert_eq!(
            (write.snapshot.last_index, write.snapshot.last_term),
            (5, 1)
        );
        assert_eq!(ready.hard_state, None, "the snapshot write carries it");
        assert!(ready.must_sync);
        l.propose(meta("after", 1)).unwrap();
        // Server 2 was never sent anything: it needs what was compacted.
        let mut f2 = RaftCore::new(2, 3);
        assert!(l.peer_needs_snapshot(2));
        assert!(l.next_append(2, 10).is_none() && l.sync_request(2, 10).is_none());
        let out = l.snapshot_for(2).unwrap();
        assert!(l.snapshot_for(1).is_none(), "server 1 holds the log");
        let resp = install(&mut f2, &out);
        assert!(resp.success);
        assert_eq!((resp.matched_index, f2.commit_index()), (5, 5));
        let ready = f2.take_ready();
        let write = ready.snapshot.expect("the follower persists it");
        assert!(write.restore_map && write.log.is_empty());
        assert!(
            ready.committed.is_empty(),
            "the snapshot is applied by loading it"
        );
        assert_eq!(
            l.handle_append_response(2, &out.sent, &resp),
            ReplicationStatus::SendMore
        );
        assert_eq!(l.peer_progress(2), Some((6, 5)));
        drain(&mut l, &mut f2);
        assert_eq!(f2.first_index(), 6);
        assert_eq!(
            f2.take_ready().committed.len(),
            1,
            "only the entry after it"
        );
        // A copy that comes again changes nothing.
        assert!(install(&mut f2, &out).success);
        assert!(f2.take_ready().snapshot.is_none());
    }

    #[test]
    fn a_snapshot_from_a_sender_not_followed_is_refused_untouched() {
        let (mut l, mut f1) = confirmed_with_proposals(2);
        drain(&mut l, &mut f1);
        l.take_ready();
        l.compact(bytes::Bytes::new());
        l.take_ready();
        l.set_leader().unwrap();
        let mut f2 = RaftCore::new(2, 3);
        // f2 follows the newer term's leader; the probe at the snapshot's
        // end backs off into it.
        let probe = l.sync_request(2, 0).unwrap();
        assert_eq!(probe.request.prev_log_index, 1);
        let resp = f2.deliver(&probe.request);
        l.handle_append_response(2, &probe.sent, &resp);
        let out = l.snapshot_for(2).unwrap();
        let mut old = out.clone();
        old.term -= 1;
        let resp = install(&mut f2, &old);
        assert!(!resp.success);
        assert_eq!(resp.term, 2);
        assert_eq!(f2.first_index(), 0);
        assert!(install(&mut f2, &out).success);
        assert_eq!(f2.first_index(), 2);
    }

    #[test]
    fn a_server_restored_from_a_snapshot_replays_only_the_log_after_it() {
        let snapshot = Arc::new(Snapshot {
            last_index: 3,
            last_term: 1,
            data: bytes::Bytes::new(),
        });
        let hard = HardState {
            term: 2,
            voted_for: None,
            commit: 4,
        };
        let log = vec![entry(2, "x"), entry(2, "y")];
        let mut core = RaftCore::restore_with_snapshot(1, 3, hard, Some(snapshot.clone()), log);
        assert_eq!((core.first_index(), core.last_index()), (4, 5));
        assert_eq!(core.snapshot(), Some(&snapshot));
        let ready = core.take_ready();
        assert_eq!(ready.committed, vec![(4, entry(2, "x"))]);
        assert!(ready.snapshot.is_none(), "it is on disk already");
        // An AppendEntries at the snapshot's end matches by its term.
        let resp = core.deliver(&anonymous(2, 3, 1, &[], 5));
        assert!(resp.success);
        assert_eq!(core.commit_index(), 4, "never lowered");
    }

    /// The election rules of the module docs, one test per rule.
    mod elections {
        use super::*;

        /// The election timeout N of these tests, in ticks.
        const N: u32 = 10;

        fn elected(id: ServerId, size: usize, seed: u64) -> RaftCore {
            let mut core = RaftCore::new(id, size);
            core.enable_elections(ElectionConfig { ticks: N, seed });
            core
        }

        /// `elected`, holding `log` in `term`.
        fn elected_with(id: ServerId, size: usize, term: Term, log: Vec<Entry>) -> RaftCore {
            let mut core = follower(id, size, term, log);
            core.enable_elections(ElectionConfig { ticks: N, seed: 1 });
            core
        }

        fn ask(term: Term, candidate: ServerId, last_log: (Term, LogIndex)) -> VoteAsk {
            VoteAsk {
                term,
                candidate,
                last_log,
                force: false,
                pre_vote: false,
            }
        }

        fn pre_ask(term: Term, candidate: ServerId, last_log: (Term, LogIndex)) -> VoteAsk {
            VoteAsk {
                pre_vote: true,
                ..ask(term, candidate, last_log)
            }
        }

        fn granted(term: Term, voter: ServerId) -> RequestVoteOutput {
            RequestVoteOutput {
                term,
                vote_granted: true,
                server_id: voter as i64,
            }
        }

        fn refused(term: Term, voter: ServerId) -> RequestVoteOutput {
            RequestVoteOutput {
                vote_granted: false,
                ..granted(term, voter)
            }
        }

        /// Ticks until the core sends vote requests; how many ticks it took
        /// and the requests.
        fn tick_until_votes(core: &mut RaftCore) -> (u32, Vec<VoteRequest>) {
            for ticks in 1..=4 * N {
                core.tick();
                let votes = core.take_ready().votes;
                if !votes.is_empty() {
                    return (ticks, votes);
                }
            }
            panic!("no vote requests within {} ticks", 4 * N);
        }

        /// Server 0 of a `size`-server cluster, elected leader of term 1 by
        /// the PreVotes and votes of the servers after it.
        fn leader(size: usize) -> RaftCore {
            let mut core = elected(0, size, 5);
            tick_until_votes(&mut core);
            for voter in 1..size {
                core.handle_vote_response(voter, true, &granted(1, voter));
            }
            for voter in 1..size {
                core.handle_vote_response(voter, false, &granted(1, voter));
            }
            assert!(core.is_leader());
            core.take_ready();
            core
        }

        #[test]
        fn a_follower_pre_votes_only_after_its_randomized_timeout() {
            let mut seen = std::collections::BTreeSet::new();
            for seed in 0..50 {
                let mut core = elected(0, 3, seed);
                let (ticks, votes) = tick_until_votes(&mut core);
                assert!((N..2 * N).contains(&ticks), "seed {seed}: {ticks} ticks");
                seen.insert(ticks);
                assert_eq!(core.term(), 0, "a PreVote changes no term");
                assert_eq!(core.hard_state(), HardState::default());
                assert_eq!(votes.iter().map(|v| v.to).collect::<Vec<_>>(), [1, 2]);
                for vote in &votes {
                    assert!(vote.pre_vote && !vote.request.force);
                    assert_eq!(vote.request.term, 1, "asks about the next term");
                    assert_eq!(vote.request.candidate_id, 0);
                }
            }
            assert!(seen.len() > 3, "timeouts are randomized: {seen:?}");
        }

        #[test]
        fn only_a_majority_of_pre_votes_starts_the_campaign() {
            let mut core = elected(0, 5, 3);
            tick_until_votes(&mut core);
            core.handle_vote_response(1, true, &granted(1, 1));
            core.handle_vote_response(1, true, &granted(1, 1));
            core.handle_vote_response(2, true, &refused(0, 2));
            assert_eq!(core.term(), 0, "two of five, one twice, are no majority");
            assert!(core.take_ready().votes.is_empty());
            core.handle_vote_response(3, true, &granted(1, 3));
            assert_eq!(core.term(), 1);
            assert_eq!(core.hard_state().voted_for, Some(0));
            let ready = core.take_ready();
            assert!(ready.must_sync && ready.new_term_or_vote);
            assert_eq!(ready.votes.len(), 4);
            for vote in &ready.votes {
                assert!(!vote.pre_vote && !vote.request.force);
                assert_eq!(vote.request.term, 1);
            }
            assert!(!core.is_leader());
        }

        #[test]
        fn a_pre_vote_is_refused_in_the_lease_and_granted_after_it() {
            let mut f = elected(1, 3, 9);
            assert!(f.deliver(&from_leader(0, 1, (-1, -1))).success);
            f.take_ready();
            for _ in 0..N - 1 {
                let reply = f.handle_vote_request(pre_ask(2, 2, (-1, -1)));
                assert!(!reply.vote_granted);
                assert_eq!(reply.term, 1);
                f.tick();
            }
            let reply = f.handle_vote_request(pre_ask(2, 2, (-1, -1)));
            assert!(!reply.vote_granted, "heard from the leader N-1 ticks ago");
            f.tick();
            let reply = f.handle_vote_request(pre_ask(2, 2, (-1, -1)));
            assert!(reply.vote_granted, "N ticks without the leader");
            assert_eq!(reply.term, 2, "the term asked about");
            assert_eq!(f.hard_state().term, 1, "a PreVote changes nothing");
            assert_eq!(f.take_ready().hard_state, None);
            // The leader itself grants none either.
            let mut l = leader(3);
            assert!(!l.handle_vote_request(pre_ask(2, 1, (1, 0))).vote_granted);
            assert!(!l.handle_vote_request(ask(2, 1, (1, 0))).vote_granted);
            assert!(l.is_leader() && l.term() == 1);
        }

        #[test]
        fn a_vote_is_granted_once_per_term_and_only_to_an_up_to_date_log() {
            let mut f = elected_with(1, 3, 2, vec![entry(1, "a"), entry(2, "b")]);
            assert!(!f.handle_vote_request(ask(3, 0, (1, 5))).vote_granted);
            assert!(!f.handle_vote_request(ask(3, 0, (2, 0))).vote_granted);
            assert_eq!(f.hard_state().voted_for, None, "no vote for a stale log");
            assert!(!f.handle_vote_request(ask(2, 0, (2, 1))).vote_granted);
            let reply = f.handle_vote_request(ask(3, 0, (2, 1)));
            assert!(reply.vote_granted);
            assert_eq!(reply.term, 3);
            assert_eq!(f.hard_state().voted_for, Some(0));
            assert!(
                !f.handle_vote_request(ask(3, 2, (3, 7))).vote_granted,
                "one vote per term"
            );
            assert!(
                f.handle_vote_request(ask(3, 0, (2, 1))).vote_granted,
                "asked again"
            );
            assert!(
                f.handle_vote_request(ask(4, 2, (2, 1))).vote_granted,
                "a new term"
            );
            assert_eq!(f.hard_state().voted_for, Some(2));
            // A PreVote goes by the same log rule.
            assert!(!f.handle_vote_request(pre_ask(5, 0, (2, 0))).vote_granted);
            assert!(f.handle_vote_request(pre_ask(5, 0, (2, 1))).vote_granted);
        }

        #[test]
        fn a_granted_vote_is_durable_in_the_next_ready() {
            let mut f = elected(1, 3, 2);
            f.take_ready();
            assert!(f.handle_vote_request(ask(4, 2, (-1, -1))).vote_granted);
            let ready = f.take_ready();
            let voted = HardState {
                term: 4,
                voted_for: Some(2),
                commit: -1,
            };
            assert_eq!(ready.hard_state, Some(voted));
            assert!(ready.must_sync && ready.new_term_or_vote);
            // A vote in a term adopted earlier is a change of its own.
            let mut g = elected_with(1, 3, 5, vec![entry(5, "a")]);
            g.take_ready();
            assert!(g.handle_vote_request(ask(5, 0, (5, 0))).vote_granted);
            let ready = g.take_ready();
            assert_eq!(ready.hard_state.and_then(|h| h.voted_for), Some(0));
            assert!(ready.must_sync && ready.new_term_or_vote);
            // A refused one writes nothing.
            assert!(!g.handle_vote_request(ask(5, 2, (5, 0))).vote_granted);
            assert_eq!(g.take_ready().hard_state, None);
        }

        #[test]
        fn a_winner_appends_exactly_one_noop_of_its_term_and_is_confirmed() {
            let mut core = elected_with(0, 3, 2, vec![entry(1, "a"), entry(2, "b")]);
            let mut peer = elected_with(1, 3, 2, vec![entry(1, "a"), entry(2, "b")]);
            core.take_ready();
            tick_until_votes(&mut core);
            core.handle_vote_response(1, true, &granted(3, 1));
            assert_eq!(core.term(), 3);
            assert!(!core.is_leader());
            core.take_ready();
            core.handle_vote_response(1, false, &granted(3, 1));
            assert!(core.is_leader() && core.is_confirmed_leader());
            core.handle_vote_response(2, false, &granted(3, 2));
            core.handle_vote_response(1, false, &granted(3, 1));
            assert_eq!(terms(&core), [1, 2, 3], "one no-op, however many votes");
            assert_eq!(core.log()[2], Entry::noop(3));
            let ready = core.take_ready();
            assert_eq!(ready.log_changed_from, Some(2));
            assert_eq!(ready.entries, [Entry::noop(3)]);
            assert!(ready.wake_peers);
            assert!(!core.committed_in_term(), "the no-op is not replicated yet");
            assert_eq!(sync(&mut core, &mut peer), ReplicationStatus::Matched);
            assert_eq!(core.commit_index(), 2);
            assert!(core.committed_in_term());
            assert_eq!(terms(&peer), [1, 2, 3]);
        }

        #[test]
        fn a_leader_that_hears_from_no_majority_for_n_ticks_steps_down() {
            let mut l = leader(3);
            for _ in 0..N - 1 {
                l.tick();
                assert!(l.is_leader());
            }
            l.tick();
            assert!(!l.is_leader(), "check-quorum");
            assert_eq!(l.term(), 1, "it keeps its term");
            assert_eq!(l.leader_hint(), None);
            // A PreVote from a peer is no longer refused for a lease.
            assert!(l.handle_vote_request(pre_ask(2, 1, (1, 0))).vote_granted);
        }

        #[test]
        fn a_leader_that_hears_from_a_majority_stays() {
            let mut l = leader(5);
            let mut peers: Vec<RaftCore> = (1..5).map(|id| elected(id, 5, id as u64)).collect();
            for period in 0..5 {
                // Two of four peers answer: with the leader, a majority.
                for peer in &mut peers[..2] {
                    exchange(&mut l, peer, 0);
                }
                for _ in 0..N {
                    l.tick();
                }
                assert!(l.is_leader(), "period {period}");
            }
            // Only one answers: not a majority of five.
            exchange(&mut l, &mut peers[0], 0);
            for _ in 0..N - 1 {
                l.tick();
            }
            assert!(l.is_leader(), "checked at the end of the period only");
            l.tick();
            assert!(!l.is_leader());
        }

        #[test]
        fn set_leader_campaigns_at_once_with_force() {
            let mut c = elected_with(2, 3, 1, vec![entry(1, "a")]);
            assert!(c.deliver(&from_leader(0, 1, (1, 0))).success);
            c.take_ready();
            c.set_leader().unwrap();
            assert_eq!(c.term(), 2, "no PreVote first");
            assert_eq!(c.hard_state().voted_for, Some(2));
            assert!(!c.is_leader(), "it leads only with the votes");
            let ready = c.take_ready();
            assert!(ready.must_sync && ready.new_term_or_vote);
            assert_eq!(ready.votes.len(), 2);
            let request = &ready.votes[0].request;
            assert!(!ready.votes[0].pre_vote && request.force);
            // A voter in a live leader's lease grants a forced vote ...
            let mut v = elected_with(1, 3, 1, vec![entry(1, "a")]);
            assert!(v.deliver(&from_leader(0, 1, (1, 0))).success);
            let forced = VoteAsk::from_wire(request, false).unwrap();
            assert!(
                !v.clone()
                    .handle_vote_request(ask(2, 2, (1, 0)))
                    .vote_granted
            );
            assert!(v.handle_vote_request(forced).vote_granted);
            c.handle_vote_response(1, false, &granted(2, 1));
            assert!(c.is_leader());
            // ... but not to a stale log.
            let mut w = elected_with(0, 3, 1, vec![entry(1, "a"), entry(1, "b")]);
            assert!(!w.handle_vote_request(forced).vote_granted);
            // A live leader, too, gives way to a forced campaign.
            let mut l = leader(3);
            assert!(
                l.handle_vote_request(VoteAsk {
                    force: true,
                    ..ask(2, 1, (1, 0))
                })
                .vote_granted
            );
            assert!(!l.is_leader());
        }

        #[test]
        fn a_follower_follows_any_leader_of_its_term_whoever_it_voted_for() {
            let mut f = elected(1, 3, 4);
            assert!(f.handle_vote_request(ask(3, 0, (-1, -1))).vote_granted);
            let resp = f.deliver(&from_leader(2, 3, (-1, -1)));
            assert!(resp.success);
            assert_eq!(resp.leader_id, Some(2));
            assert_eq!(f.leader_hint(), Some(2));
            assert_eq!(f.hard_state().voted_for, Some(0), "the vote stays");
            // A candidate of the term gives way to its leader as well.
            let mut c = elected(0, 3, 4);
            c.set_leader().unwrap();
            assert!(c.deliver(&from_leader(2, 1, (-1, -1))).success);
            assert_eq!(c.leader_hint(), Some(2));
            c.handle_vote_response(1, false, &granted(1, 1));
            assert!(!c.is_leader(), "its campaign ended");
        }

        #[test]
        fn a_follower_names_its_leader_only_while_it_hears_from_it() {
            let mut f = elected(1, 3, 4);
            assert!(f.deliver(&from_leader(2, 3, (-1, -1))).success);
            for _ in 0..N {
                assert_eq!(f.leader_hint(), Some(2));
                f.tick();
            }
            assert_eq!(f.leader_hint(), None, "silent for N: maybe dead");
            assert!(f.deliver(&from_leader(2, 3, (-1, -1))).success);
            assert_eq!(f.leader_hint(), Some(2));
        }

        #[test]
        fn a_higher_term_in_a_reply_ends_a_campaign() {
            let mut c = elected(0, 3, 6);
            c.set_leader().unwrap();
            c.handle_vote_response(1, false, &refused(4, 1));
            assert_eq!(c.term(), 4);
            assert_eq!(c.hard_state().voted_for, None);
            c.handle_vote_response(2, false, &granted(1, 2));
            c.handle_vote_response(2, false, &granted(4, 2));
            assert!(!c.is_leader(), "no campaign in term 4");
            // A refused PreVote with a higher term too; a granted one
            // carries the term asked about and changes nothing.
            let mut p = elected(0, 5, 6);
            tick_until_votes(&mut p);
            p.handle_vote_response(1, true, &granted(1, 1));
            assert_eq!(p.term(), 0);
            p.handle_vote_response(2, true, &refused(3, 2));
            assert_eq!(p.term(), 3);
            p.handle_vote_response(3, true, &granted(1, 3));
            p.handle_vote_response(4, true, &granted(1, 4));
            assert_eq!(p.term(), 3, "the PreVote round ended");
            assert!(p.take_ready().votes.is_empty());
        }

        #[test]
        fn without_elections_tick_does_nothing_and_every_vote_is_refused() {
            let mut core = RaftCore::new(0, 3);
            assert!(!core.elections());
            for _ in 0..10 * N {
                core.tick();
            }
            assert_eq!(core.take_ready(), Ready::default());
            for vote in [ask(5, 1, (9, 9)), pre_ask(5, 1, (9, 9))] {
                let reply = core.handle_vote_request(VoteAsk {
                    force: true,
                    ..vote
                });
                assert!(!reply.vote_granted);
                assert_eq!(reply.term, 0);
            }
            assert_eq!(core.hard_state(), HardState::default());
            assert_eq!(core.take_ready(), Ready::default());
        }
    }
}
