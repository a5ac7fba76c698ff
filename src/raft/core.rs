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

use super::log::{RaftLog, Rejection};
use super::progress::{Standing, Tracker};
use super::{Entry, HardState, LogIndex, ServerId, Term};
use crate::proto::{AppendEntryInput, AppendEntryOutput, FileMetaData, UpdateOperation};

/// A call that only the leader can serve reached another server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("Server is not the leader")]
pub struct NotLeader {
    /// The leader this server follows in its term, if it knows one.
    pub leader_hint: Option<ServerId>,
}

/// What the leader should do after a reply was fed back with
/// [`RaftCore::handle_append_response`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplicationStatus {
    /// The peer holds everything the leader may send it now: the whole log
    /// once confirmed, the entries of earlier terms before that. A peer that
    /// matched before a later reply confirmed the leader still lacks the
    /// leader's own proposals: [`RaftCore::peer_progress`] shows which peers
    /// are behind [`RaftCore::log`].
    Matched,
    /// Send to this peer again now: `nextIndex` backed off, or there is more
    /// to send.
    SendMore,
    /// This server is not (or no longer) the leader.
    NotLeader,
    /// The reply carries nothing to act on: it is stale (another term, an
    /// older probe), or the peer follows another leader (a denial that did
    /// not yet make a majority).
    Ignored,
}

/// The effects of everything since the previous [`RaftCore::take_ready`].
/// Persist the log change, then the hard state, before sending any reply or
/// request built since; then apply `committed`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Ready {
    /// The term, vote or commit index changed: the new values to persist.
    pub hard_state: Option<HardState>,
    /// The durable log must become its first `log_changed_from` entries
    /// followed by [`Ready::entries`], and nothing after them. `None`: the
    /// durable log is current.
    pub log_changed_from: Option<LogIndex>,
    /// The entries to write at `log_changed_from`. This can end before
    /// [`RaftCore::log`] does: proposals of a leader that is not confirmed
    /// yet are only persisted once it is, so a restart never revives entries
    /// that no other server could have seen.
    pub entries: Vec<Entry>,
    /// Newly committed entries with their indices, in log order, each handed
    /// out exactly once: apply them in this order.
    pub committed: Vec<(LogIndex, Entry)>,
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
}

/// Who an AppendEntries request says sent it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Claim {
    /// No `leaderId`: original semantics, no vote involved.
    Anonymous,
    /// A valid peer id.
    Leader(ServerId),
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
        Self {
            id,
            cluster_size,
            term: hard.term,
            voted_for: hard.voted_for,
            log: RaftLog::restore(log, hard.commit),
            leader: None,
            reported: hard,
        }
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
    /// when leading, else the leader it follows.
    pub fn leader_hint(&self) -> Option<ServerId> {
        if self.is_leader() {
            return Some(self.id);
        }
        self.voted_for.filter(|&v| v != self.id)
    }

    /// The whole log, including proposals of an unconfirmed leader.
    pub fn log(&self) -> &[Entry] {
        self.log.entries()
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
    pub fn set_leader(&mut self) {
        self.become_follower();
        self.term = self.term.saturating_add(1);
        self.voted_for = Some(self.id);
        let next = self.log.last_index() + 1;
        self.leader = Some(Tracker::new(self.id, self.cluster_size, next));
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
        self.maybe_commit();
        Ok(index)
    }

    /// The AppendEntries to send `peer` now: from its `nextIndex`, at most
    /// `max_entries` entries (0 for a pure heartbeat), never an entry of the
    /// current term before the leader is confirmed. `None` when this server
    /// is not the leader or `peer` is itself or unknown.
    pub fn append_request(&self, peer: ServerId, max_entries: usize) -> Option<AppendEntryInput> {
        let progress = self.leader.as_ref()?.get(peer)?;
        let sendable = self.unsent_start();
        let next = progress.next.clamp(0, last_of(sendable) + 1);
        let prev_log_index = next - 1;
        let entries = self
            .log
            .slice(usize::try_from(next).unwrap_or(0), sendable, max_entries)
            .iter()
            .cloned()
            .map(UpdateOperation::from)
            .collect();
        let (last_log_term, last_log_index) = self.advertised_log();
        Some(AppendEntryInput {
            term: self.term,
            prev_log_index,
            prev_log_term: self.log.term_at(prev_log_index).unwrap_or(-1),
            entries,
            leader_commit: self.log.committed(),
            leader_id: Some(wire_id(self.id)),
            last_log_index,
            last_log_term,
        })
    }

    /// The AppendEntries receiver (SPEC §5, in order, with the vote rule of
    /// the module docs); returns the reply. A crashed server must not call
    /// this. Changes to persist and entries to apply come out of
    /// [`RaftCore::take_ready`], which must be persisted before replying.
    pub fn handle_append_entries(&mut self, req: &AppendEntryInput) -> AppendEntryOutput {
        if req.term < self.term {
            return self.reply(false, -1);
        }
        if req.term > self.term {
            self.adopt_term(req.term);
        }
        let claim = self.claim(req);
        if self.is_leader() {
            // Another server leads this term too. Only an unconfirmed leader
            // may give way, and only to one it would vote for.
            let yields = !self.is_confirmed_leader()
                && self.sender_acceptable(claim, req, self.unsent_start());
            if !yields {
                return self.reply(false, -1);
            }
            self.become_follower();
        }
        if !self.follows(claim, req) {
            return self.reply(false, -1);
        }
        let entries = req.entries.iter().cloned().map(Entry::from).collect();
        match self.log.accept(
            req.prev_log_index,
            req.prev_log_term,
            entries,
            req.leader_commit,
        ) {
            Ok(matched) => self.reply(true, matched),
            Err(Rejection::Mismatch { hint }) => self.reply(false, hint),
            Err(Rejection::ConflictsWithCommitted { commit }) => self.reply(false, commit),
        }
    }

    /// Feeds back `resp`, the reply of `peer` to `req` (built by
    /// [`RaftCore::append_request`]). Safe with stale, duplicated and
    /// reordered replies: `matchIndex` never decreases and only a reply to
    /// the current probe backs `nextIndex` off. Steps down on a higher term;
    /// records whether the peer follows this leader (confirming it, or
    /// deposing it while unconfirmed); advances the commit index by the
    /// commit rule.
    pub fn handle_append_response(
        &mut self,
        peer: ServerId,
        req: &AppendEntryInput,
        resp: &AppendEntryOutput,
    ) -> ReplicationStatus {
        if resp.term > self.term {
            self.adopt_term(resp.term);
            return ReplicationStatus::NotLeader;
        }
        let follows = self.acknowledges_leadership(req, resp);
        let own_last = self.log.last_index();
        let term = self.term;
        let Some(tracker) = self.leader.as_mut() else {
            return ReplicationStatus::NotLeader;
        };
        if req.term != term || resp.term != term || tracker.get(peer).is_none() {
            return ReplicationStatus::Ignored;
        }
        if tracker.record_stance(peer, follows) == Standing::Rejected {
            self.become_follower();
            return ReplicationStatus::NotLeader;
        }
        let Some(progress) = tracker.get_mut(peer) else {
            return ReplicationStatus::Ignored;
        };
        if !follows {
            return ReplicationStatus::Ignored;
        }
        if !resp.success {
            return if progress.on_mismatch(req.prev_log_index, resp.matched_index) {
                ReplicationStatus::SendMore
            } else {
                ReplicationStatus::Ignored
            };
        }
        let matched = req
            .prev_log_index
            .saturating_add(LogIndex::try_from(req.entries.len()).unwrap_or(LogIndex::MAX));
        if matched > own_last {
            // Not a request this leader built: its log never shrinks in its term.
            return ReplicationStatus::Ignored;
        }
        progress.on_success(matched);
        let peer_matched = progress.matched;
        self.maybe_commit();
        if peer_matched >= last_of(self.unsent_start()) {
            ReplicationStatus::Matched
        } else {
            ReplicationStatus::SendMore
        }
    }

    /// Whether `resp` acknowledges this server as leader of the term of
    /// `req`: the peer replied in that term naming this server as the leader
    /// it follows (whether or not its log matched). A driver confirming a
    /// read counts the peers whose replies to requests built after the read
    /// arrived acknowledge; with the leader itself, a
    /// [`super::quorum::majority`] of them, while still leading `req.term`,
    /// shows no newer leader can have committed anything the read would miss.
    pub fn acknowledges_leadership(
        &self,
        req: &AppendEntryInput,
        resp: &AppendEntryOutput,
    ) -> bool {
        let me = Some(wire_id(self.id));
        req.leader_id == me && resp.leader_id == me && resp.term == req.term
    }

    /// The effects since the last call (see [`Ready`]); the committed
    /// entries it returns count as applied.
    pub fn take_ready(&mut self) -> Ready {
        let hard = self.hard_state();
        let hard_state = (hard != self.reported).then_some(hard);
        self.reported = hard;
        let (log_changed_from, entries) = match self.log.take_unpersisted(self.unsent_start()) {
            Some((from, entries)) => (Some(from), entries),
            None => (None, Vec::new()),
        };
        Ready {
            hard_state,
            log_changed_from,
            entries,
            committed: self.log.take_committed(),
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
            _ => self.log.len(),
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
        if !tracker.is_confirmed() {
            self.log.truncate(self.log.tail_start_of_term(self.term));
            self.voted_for = None;
        }
    }

    /// Adopts a higher term seen in a request or reply, as a follower with
    /// no vote yet.
    fn adopt_term(&mut self, term: Term) {
        self.become_follower();
        self.term = term;
        self.voted_for = None;
    }

    fn claim(&self, req: &AppendEntryInput) -> Claim {
        match req.leader_id {
            None => Claim::Anonymous,
            Some(id) => match usize::try_from(id) {
                Ok(id) if id < self.cluster_size && id != self.id => Claim::Leader(id),
                _ => Claim::Invalid,
            },
        }
    }

    /// Whether a server that has not voted in this term would follow the
    /// sender, its own log being the first `own_len` entries (Raft §5.4.1:
    /// a later last term wins, then a longer log).
    fn sender_acceptable(&self, claim: Claim, req: &AppendEntryInput, own_len: usize) -> bool {
        match claim {
            Claim::Anonymous => true,
            Claim::Invalid => false,
            Claim::Leader(_) => {
                (req.last_log_term, req.last_log_index) >= self.log.last_id_within(own_len)
            }
        }
    }

    /// The follower's vote rule: vote for the sender if no vote was cast in
    /// this term and it is acceptable; follow it only if it has the vote.
    fn follows(&mut self, claim: Claim, req: &AppendEntryInput) -> bool {
        match claim {
            Claim::Anonymous => true,
            Claim::Invalid => false,
            Claim::Leader(leader) => {
                if self.voted_for.is_none() && self.sender_acceptable(claim, req, self.log.len()) {
                    self.voted_for = Some(leader);
                }
                self.voted_for == Some(leader)
            }
        }
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
            leader_id: self.voted_for.map(wire_id),
        }
    }
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

    /// One request/reply exchange from `leader` to `peer`.
    fn exchange(leader: &mut RaftCore, peer: &mut RaftCore, max: usize) -> ReplicationStatus {
        let req = leader.append_request(peer.id(), max).unwrap();
        let resp = peer.handle_append_entries(&req);
        leader.handle_append_response(peer.id(), &req, &resp)
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
        core.set_leader();
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
        core.set_leader();
        assert_eq!(core.term(), 6);
    }

    #[test]
    fn only_the_leader_proposes_or_builds_requests() {
        let mut core = RaftCore::new(0, 3);
        let err = core.propose(meta("a", 1)).unwrap_err();
        assert_eq!(err.leader_hint, None);
        assert_eq!(err.to_string(), "Server is not the leader");
        assert!(core.append_request(1, 10).is_none());
        core.set_leader();
        assert!(core.append_request(0, 10).is_none());
        assert!(core.append_request(7, 10).is_none());
        assert!(core.append_request(1, 10).is_some());
    }

    #[test]
    fn receiver_rejects_a_lower_term_with_its_own_term_and_keeps_its_log() {
        let mut core = follower(1, 3, 3, vec![entry(1, "a")]);
        let resp = core.handle_append_entries(&anonymous(2, -1, -1, &[entry(2, "x")], 0));
        assert!(!resp.success);
        assert_eq!((resp.term, resp.server_id), (3, 1));
        assert_eq!(terms(&core), [1]);
        assert_eq!(core.commit_index(), -1);
    }

    #[test]
    fn receiver_adopts_a_higher_term_and_a_leader_steps_down() {
        let mut core = RaftCore::new(0, 3);
        core.set_leader();
        let resp = core.handle_append_entries(&anonymous(7, -1, -1, &[], -1));
        assert!(resp.success);
        assert_eq!(resp.term, 7);
        assert!(!core.is_leader());
        assert_eq!(core.hard_state().voted_for, None);
    }

    #[test]
    fn receiver_checks_the_previous_entry() {
        let mut core = follower(1, 3, 1, vec![entry(1, "a"), entry(1, "b")]);
        // -1 matches whatever prevLogTerm says.
        let resp = core.handle_append_entries(&anonymous(1, -1, 9, &[], -1));
        assert!(resp.success);
        assert_eq!(resp.matched_index, -1);
        // Wrong term at prevLogIndex, then no entry at all there.
        let resp = core.handle_append_entries(&anonymous(1, 1, 2, &[], -1));
        assert!(!resp.success);
        assert_eq!(resp.matched_index, 0, "hint: try one lower");
        let resp = core.handle_append_entries(&anonymous(1, 5, 1, &[], -1));
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
        let resp = core.handle_append_entries(&anonymous(2, -1, -1, &[a.clone(), b.clone()], -1));
        assert!(resp.success);
        assert_eq!(resp.matched_index, 1);
        assert_eq!(core.log(), [a.clone(), b.clone(), c.clone()]);
        // A conflict at index 1 deletes 1.. and appends the new entries.
        let x = entry(2, "x");
        let resp = core.handle_append_entries(&anonymous(2, 0, 1, std::slice::from_ref(&x), -1));
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
        core.handle_append_entries(&anonymous(1, -1, -1, &sent, 1));
        assert_eq!(core.commit_index(), 1);
        let ready = core.take_ready();
        assert_eq!(
            ready.committed,
            vec![(0, sent[0].clone()), (1, sent[1].clone())]
        );
        assert_eq!(ready.hard_state.map(|h| h.commit), Some(1));
        // A heartbeat vouching only for index 0 cannot commit index 2.
        core.handle_append_entries(&anonymous(1, 0, 1, &[], 5));
        assert_eq!(core.commit_index(), 1);
        core.handle_append_entries(&anonymous(1, 2, 1, &[], 5));
        assert_eq!(core.commit_index(), 2);
        assert_eq!(core.take_ready().committed, vec![(2, sent[2].clone())]);
    }

    #[test]
    fn vote_rule_follows_the_first_up_to_date_leader_of_a_term() {
        let mut core = follower(2, 3, 1, vec![entry(1, "a")]);
        // Leader 0 is behind: refused, no vote, log untouched.
        let resp = core.handle_append_entries(&from_leader(0, 2, (-1, -1)));
        assert!(!resp.success);
        assert_eq!((resp.term, resp.leader_id), (2, None));
        assert_eq!(terms(&core), [1]);
        // Leader 1 is as up-to-date: it gets the vote.
        let resp = core.handle_append_entries(&from_leader(1, 2, (1, 0)));
        assert!(resp.success);
        assert_eq!(resp.leader_id, Some(1));
        assert_eq!(core.leader_hint(), Some(1));
        // Another leader of term 2, even more up-to-date, is refused with the
        // leader this server follows, and its entries are not taken.
        let mut req = from_leader(0, 2, (2, 5));
        req.entries = vec![entry(2, "x").into()];
        let resp = core.handle_append_entries(&req);
        assert!(!resp.success);
        assert_eq!(resp.leader_id, Some(1));
        assert_eq!(terms(&core), [1]);
        // Original semantics without a leader id: no vote check.
        let resp = core.handle_append_entries(&anonymous(2, 0, 1, &[], -1));
        assert!(resp.success);
        assert_eq!(resp.leader_id, Some(1));
        // A claim to be this server itself, or no server at all, is refused.
        assert!(
            !core
                .handle_append_entries(&from_leader(2, 3, (9, 9)))
                .success
        );
        assert!(
            !core
                .handle_append_entries(&from_leader(7, 3, (9, 9)))
                .success
        );
        assert_eq!(core.hard_state().voted_for, None);
        assert!(
            core.handle_append_entries(&from_leader(0, 3, (9, 9)))
                .success
        );
        assert_eq!(
            core.take_ready().hard_state.and_then(|h| h.voted_for),
            Some(0)
        );
    }

    #[test]
    fn longer_log_of_the_same_last_term_is_more_up_to_date() {
        let mut core = follower(2, 3, 1, vec![entry(1, "a"), entry(1, "b")]);
        assert!(
            !core
                .handle_append_entries(&from_leader(0, 2, (1, 0)))
                .success
        );
        assert!(
            core.handle_append_entries(&from_leader(1, 2, (1, 1)))
                .success
        );
    }

    #[test]
    fn a_leader_confirms_with_a_majority_and_commits_its_proposals() {
        let mut l = RaftCore::new(0, 3);
        let mut f1 = RaftCore::new(1, 3);
        let mut f2 = RaftCore::new(2, 3);
        l.set_leader();
        assert_eq!(l.propose(meta("a", 1)), Ok(0));
        // Unconfirmed: its own-term proposal is not sent, nor persisted.
        let req = l.append_request(1, 10).unwrap();
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
        let req = l.append_request(2, 10).unwrap();
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
        l.set_leader();
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
        l.set_leader();
        l.propose(meta("mine", 1)).unwrap();
        // Probe at the log length fails, back off, then push only the old entry.
        assert_eq!(exchange(&mut l, &mut f, 10), ReplicationStatus::SendMore);
        let req = l.append_request(1, 10).unwrap();
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
        a.set_leader();
        a.propose(meta("lost", 1)).unwrap();
        assert_eq!(exchange(&mut a, &mut b, 10), ReplicationStatus::Ignored);
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
        b.set_leader();
        assert_eq!(sync(&mut b, &mut a), ReplicationStatus::Matched);
        assert!(b.is_confirmed_leader());
        assert_eq!(a.log(), b.log());
    }

    #[test]
    fn higher_term_deposes_an_unconfirmed_leader_but_a_confirmed_one_keeps_its_log() {
        let mut a = RaftCore::new(0, 3);
        a.set_leader();
        a.propose(meta("unsent", 1)).unwrap();
        let req = a.append_request(1, 10).unwrap();
        let resp = AppendEntryOutput {
            server_id: 1,
            term: 5,
            success: false,
            matched_index: -1,
            leader_id: None,
        };
        assert_eq!(
            a.handle_append_response(1, &req, &resp),
            ReplicationStatus::NotLeader
        );
        assert!(!a.is_leader());
        assert!(a.log().is_empty());
        assert_eq!(a.term(), 5);

        let mut a = RaftCore::new(0, 3);
        let mut b = RaftCore::new(1, 3);
        a.set_leader();
        sync(&mut a, &mut b);
        a.propose(meta("kept", 1)).unwrap();
        assert_eq!(
            a.handle_append_response(1, &req, &resp),
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
        a.set_leader();
        b.set_leader();
        b.propose(meta("b's", 1)).unwrap();
        // C follows A; A is confirmed; B is refused by both.
        assert_eq!(exchange(&mut a, &mut c, 10), ReplicationStatus::Matched);
        assert!(a.is_confirmed_leader());
        assert_eq!(exchange(&mut b, &mut c, 10), ReplicationStatus::Ignored);
        let req = b.append_request(0, 10).unwrap();
        let resp = a.handle_append_entries(&req);
        assert_eq!(resp.leader_id, Some(0));
        assert!(a.is_leader(), "a confirmed leader never yields in its term");
        assert_eq!(
            b.handle_append_response(0, &req, &resp),
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
        a.set_leader();
        b.set_leader();
        b.propose(meta("b's", 1)).unwrap();
        // B's log is behind A's: A refuses it and stays leader.
        let req = b.append_request(0, 10).unwrap();
        let resp = a.handle_append_entries(&req);
        assert!(!resp.success);
        assert_eq!(resp.leader_id, Some(0));
        assert!(a.is_leader());
        // A's log is ahead of B's: B gives way, drops its proposal, follows A.
        let req = a.append_request(1, 10).unwrap();
        let resp = b.handle_append_entries(&req);
        assert_eq!(resp.leader_id, Some(0));
        assert!(!b.is_leader());
        assert!(b.log().is_empty());
        assert!(a.acknowledges_leadership(&req, &resp));
    }

    #[test]
    fn stale_duplicated_and_reordered_replies_change_nothing() {
        let mut l = follower(0, 3, 1, vec![entry(1, "a"), entry(1, "b"), entry(1, "c")]);
        let mut f = RaftCore::new(1, 3);
        l.set_leader();
        // Probe at index 2 fails; back off; its duplicate is ignored.
        let probe = l.append_request(1, 1).unwrap();
        let failed = f.handle_append_entries(&probe);
        assert_eq!(
            l.handle_append_response(1, &probe, &failed),
            ReplicationStatus::SendMore
        );
        let after_backoff = l.peer_progress(1);
        assert_eq!(
            after_backoff,
            Some((0, -1)),
            "the follower's hint skips ahead"
        );
        assert_eq!(
            l.handle_append_response(1, &probe, &failed),
            ReplicationStatus::Ignored
        );
        assert_eq!(l.peer_progress(1), after_backoff);
        // Two requests in flight; the later reply arrives first.
        let first = l.append_request(1, 1).unwrap();
        let first_resp = f.handle_append_entries(&first);
        assert_eq!(
            l.handle_append_response(1, &first, &first_resp),
            ReplicationStatus::SendMore
        );
        let second = l.append_request(1, 2).unwrap();
        let second_resp = f.handle_append_entries(&second);
        assert_eq!(
            l.handle_append_response(1, &second, &second_resp),
            ReplicationStatus::Matched
        );
        assert_eq!(
            l.handle_append_response(1, &first, &first_resp),
            ReplicationStatus::Matched
        );
        assert_eq!(
            l.peer_progress(1),
            Some((3, 2)),
            "matchIndex never decreases"
        );
        // A reply from an earlier term of this leader is ignored.
        let old = l.append_request(1, 0).unwrap();
        let old_resp = f.handle_append_entries(&old);
        l.set_leader();
        assert_eq!(
            l.handle_append_response(1, &old, &old_resp),
            ReplicationStatus::Ignored
        );
        assert_eq!(l.peer_progress(1), Some((3, -1)));
    }

    #[test]
    fn single_server_cluster_commits_at_once() {
        let mut core = RaftCore::new(0, 1);
        core.set_leader();
        assert!(core.is_confirmed_leader());
        assert_eq!(core.propose(meta("a", 1)), Ok(0));
        assert_eq!(core.commit_index(), 0);
        let ready = core.take_ready();
        assert_eq!(ready.log_changed_from, Some(0));
        assert_eq!(ready.committed.len(), 1);
        assert_eq!(ready.hard_state.map(|h| h.commit), Some(0));
        assert!(core.append_request(0, 1).is_none());
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
        leader.set_leader();
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
                    follower.handle_append_entries(&req);
                    follower.take_ready();
                    let resp = AppendEntryOutput {
                        server_id: x,
                        term: y.clamp(0, 2),
                        success: x > 0,
                        matched_index: y,
                        leader_id: Some(1),
                    };
                    if let Some(own) = leader.append_request(0, 5) {
                        leader.handle_append_response(0, &own, &resp);
                    }
                    leader.handle_append_response(2, &req, &resp);
                    leader.take_ready();
                }
            }
        }
        assert!(follower.commit_index() <= follower.log.last_index());
    }

    #[test]
    fn acknowledgement_needs_same_term_and_this_leader() {
        let mut l = RaftCore::new(0, 3);
        l.set_leader();
        let req = l.append_request(1, 0).unwrap();
        let ack = AppendEntryOutput {
            server_id: 1,
            term: 1,
            success: false,
            matched_index: -1,
            leader_id: Some(0),
        };
        assert!(l.acknowledges_leadership(&req, &ack));
        let other = AppendEntryOutput {
            leader_id: Some(2),
            ..ack
        };
        assert!(!l.acknowledges_leadership(&req, &other));
        let later = AppendEntryOutput { term: 2, ..ack };
        assert!(!l.acknowledges_leadership(&req, &later));
        assert!(!l.acknowledges_leadership(&anonymous(1, -1, -1, &[], -1), &ack));
    }
}
