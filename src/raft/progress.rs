//! What a leader knows about each peer in its term: where to resume sending
//! (`next`), how much is known to be replicated (`matched`), whether the
//! peer has accepted it as the term's leader, and which requests it still
//! expects answers to. Replies may arrive stale, duplicated or out of order,
//! so every update here only ever moves forward on evidence that is still
//! current.
//!
//! # Probe and Replicate
//!
//! With one AppendEntries in flight per peer, a link with latency caps
//! replication at one batch per round trip. So, as etcd's raft does, a peer
//! is replicated to in one of two modes:
//!
//! * **Probe**: at most one request outstanding, sent from `next`, which is
//!   only a guess. A mismatch backs `next` off; a success that shows the
//!   peer holds everything before `next` switches to Replicate. A peer is
//!   probed after `SetLeader`, after a mismatch, after a refusal and after a
//!   failed call (`next` = `matched + 1` then).
//! * **Replicate**: the peer's log is known to match up to `matched`, so the
//!   leader sends optimistically: up to [`MAX_INFLIGHT`] requests ahead of
//!   the replies, each starting right after the last one sent (`next` moves
//!   on send). The window holds the last index of each request; a success
//!   frees every request it covers (ends at or before its matched index). A
//!   mismatch or a failure of any request of the window means entries may be
//!   missing in the middle: back to Probe, the window discarded.
//!
//! Each (re)entry into a mode starts a new *epoch*; every request records the
//! epoch it was built in. A mismatch, refusal or failure moves the peer only
//! if it belongs to the current epoch, so a late reply from a discarded
//! window cannot back `next` off or reset the window again. Successes count
//! whatever their epoch: within a term, the peer follows only this leader,
//! whose entries never conflict with each other, so what a peer once matched
//! stays matched.
//!
//! # Empty requests
//!
//! An empty request (a heartbeat, or telling the peer a new commit index)
//! starts at the peer's *confirmed point*: `matched` in Replicate, where it
//! cannot mismatch and, if a mismatch arrived anyway, could not move `next`
//! below `matched + 1`; in Probe, `next - 1`, where it is a probe like any
//! other. An empty request sent at the optimistic `next - 1` instead could
//! overtake the window's entries and make the peer look behind.

use super::{LogIndex, ServerId, quorum};

/// The most requests of a Replicate window outstanding per peer. Four
/// batches per round trip keep a link busy whose latency is a few times the
/// time to send one batch; more would mostly queue behind each other.
pub const MAX_INFLIGHT: usize = 4;

/// A peer's answer to "do you follow me in this term?".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stance {
    /// No reply from this term yet.
    Unknown,
    /// It follows this leader (a vote; it never changes within a term).
    Ack,
    /// It follows someone else, or nobody because this leader's log is
    /// behind its own.
    Deny,
}

/// How the leader sends to one peer (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// One request at a time, from `next`; `outstanding` until it is
    /// answered (or superseded by a new epoch).
    Probe { outstanding: bool },
    /// Up to [`MAX_INFLIGHT`] requests ahead of the replies.
    Replicate(Inflights),
}

/// The requests of a Replicate window that no success has covered yet: the
/// last index each carries, in the order sent (so ascending).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Inflights {
    ends: [LogIndex; MAX_INFLIGHT],
    len: usize,
}

impl Inflights {
    /// How many requests are outstanding.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Whether `depth` requests (at most [`MAX_INFLIGHT`]) are outstanding.
    fn is_full(&self, depth: usize) -> bool {
        self.len >= depth.clamp(1, MAX_INFLIGHT)
    }

    fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn push(&mut self, end: LogIndex) {
        if let Some(slot) = self.ends.get_mut(self.len) {
            *slot = end;
            self.len += 1;
        }
    }

    /// Frees every request ending at or before `matched`: a success there
    /// means the peer holds what they carried.
    fn free_to(&mut self, matched: LogIndex) {
        let covered = self.ends[..self.len]
            .iter()
            .take_while(|&&end| end <= matched)
            .count();
        self.ends.copy_within(covered..self.len, 0);
        self.len -= covered;
    }
}

/// The part of the log a request carries: the `count` entries after `prev`
/// (`prev` is the request's `prevLogIndex`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Slice {
    pub(crate) prev: LogIndex,
    pub(crate) count: usize,
}

impl Slice {
    /// Up to `max` entries after `prev`, none beyond `last`.
    fn after(prev: LogIndex, last: LogIndex, max: usize) -> Self {
        let available = usize::try_from(last.saturating_sub(prev)).unwrap_or(0);
        Self {
            prev,
            count: available.min(max),
        }
    }

    /// The index of the last entry carried (`prev` when empty): what a
    /// success reply reports as matched.
    pub(crate) fn end(&self) -> LogIndex {
        self.prev
            .saturating_add(LogIndex::try_from(self.count).unwrap_or(LogIndex::MAX))
    }
}

/// Replication state of one peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Progress {
    /// Index of the next entry to send: a guess in Probe, the entry after
    /// the last one sent in Replicate. Never below `matched + 1`.
    pub(crate) next: LogIndex,
    /// Highest index known to match the leader's log (-1: none known).
    pub(crate) matched: LogIndex,
    pub(crate) stance: Stance,
    mode: Mode,
    /// Bumped on every (re)entry into a mode; see the module docs.
    epoch: u64,
    /// The highest commit index the peer can apply from what it was sent in
    /// this epoch or is known to have accepted: a request tells a peer at
    /// most `min(leaderCommit, its last entry)`. Below the leader's commit
    /// index, the peer is owed an (empty) request.
    told: LogIndex,
    /// The highest commit index the peer has shown it knows, by a success
    /// reply in this term. Unlike `told` it counts only replies, and a new
    /// epoch keeps it: a follower's commit index never goes back.
    pub(crate) learned: LogIndex,
}

impl Progress {
    /// A peer as `SetLeader` leaves it: probing from `next`, nothing known.
    pub(crate) fn new(next: LogIndex) -> Self {
        Self {
            next,
            matched: -1,
            stance: Stance::Unknown,
            mode: Mode::Probe { outstanding: false },
            epoch: 0,
            told: -1,
            learned: -1,
        }
    }

    /// The current mode.
    #[cfg(test)]
    pub(crate) fn mode(&self) -> Mode {
        self.mode
    }

    /// The current epoch: requests built now carry it.
    pub(crate) fn epoch(&self) -> u64 {
        self.epoch
    }

    /// What to send now under the window rule, recorded as sent; `None`
    /// when the window of `depth` requests is full (or the probe
    /// unanswered) and the peer needs no new commit index. `last` is the
    /// last index the leader may send, `max(prev)` how many entries a
    /// request after `prev` may carry, `commit` the commit index. In
    /// Replicate, with nothing new to send and nothing outstanding, the peer
    /// still gets an empty request at `matched` when it has not been told a
    /// commit index it could apply. While requests are outstanding that
    /// notice waits: the next request sent after their replies carries the
    /// commit index anyway, and an extra call per commit would double the
    /// calls under load.
    pub(crate) fn next_send(
        &mut self,
        last: LogIndex,
        max: impl Fn(LogIndex) -> usize,
        commit: LogIndex,
        depth: usize,
    ) -> Option<Slice> {
        let probe_prev = self.probe_prev(last);
        let probe = Slice::after(probe_prev, last, max(probe_prev));
        let slice = match &mut self.mode {
            Mode::Probe { outstanding: true } => return None,
            Mode::Probe { outstanding } => {
                *outstanding = true;
                probe
            }
            Mode::Replicate(window) => {
                let count = max(self.next - 1);
                if count > 0 && self.next <= last && !window.is_full(depth) {
                    let slice = Slice::after(self.next - 1, last, count);
                    window.push(slice.end());
                    self.next = slice.end() + 1;
                    slice
                } else if window.is_empty() && commit.min(self.matched) > self.told {
                    Slice::after(self.matched, last, 0)
                } else {
                    return None;
                }
            }
        };
        self.told = self.told.max(commit.min(slice.end()));
        Some(slice)
    }

    /// A request outside the window, recorded nothing: up to `max(prev)`
    /// entries from the confirmed point `prev` (see the module docs), for
    /// heartbeats and synchronous rounds, which must be sendable whatever
    /// the window holds.
    pub(crate) fn sync_send(&self, last: LogIndex, max: impl Fn(LogIndex) -> usize) -> Slice {
        let prev = match self.mode {
            Mode::Probe { .. } => self.probe_prev(last),
            Mode::Replicate(_) => self.matched,
        };
        Slice::after(prev, last, max(prev))
    }

    /// Where a probe starts: `next - 1`, but never past what may be sent.
    fn probe_prev(&self, last: LogIndex) -> LogIndex {
        self.next.clamp(0, last.saturating_add(1)) - 1
    }

    /// Records a success reply to a request that carried the log up to
    /// `end`, from a peer that now knows the commit index `known` (what the
    /// request conveyed, or more if its reply says so). Any epoch counts.
    /// In Probe, a success that shows the peer holds everything before
    /// `next` starts replicating from `matched + 1`; in Replicate, it frees
    /// the requests it covers.
    pub(crate) fn on_success(&mut self, end: LogIndex, known: LogIndex) {
        let proves_probe = end >= self.next - 1;
        self.matched = self.matched.max(end);
        self.next = self.next.max(self.matched + 1);
        match &mut self.mode {
            Mode::Probe { .. } if proves_probe => {
                self.enter(self.matched + 1, Mode::Replicate(Inflights::default()));
            }
            Mode::Probe { .. } => {}
            Mode::Replicate(window) => window.free_to(self.matched),
        }
        self.told = self.told.max(known);
        self.learned = self.learned.max(known);
    }

    /// Records a log-mismatch reply to a request of `epoch` whose
    /// `prevLogIndex` was `prev`; `hint` is the follower's guess of where
    /// the logs may match. In Probe only a reply to the current probe
    /// (`prev == next - 1`) counts; in Replicate any request of the window
    /// does: even one at or below `matched` (its entries were refused
    /// because they overtook an earlier request), since its entries are
    /// missing now. Either way `next` backs off to at most `prev`, as far as
    /// the hint, never to or below `matched`, and the peer is probed again.
    /// Returns false for a stale reply.
    pub(crate) fn on_mismatch(&mut self, epoch: u64, prev: LogIndex, hint: LogIndex) -> bool {
        if epoch != self.epoch {
            return false;
        }
        let probing = matches!(self.mode, Mode::Probe { .. });
        if probing && (prev != self.next - 1 || prev <= self.matched) {
            return false;
        }
        let next = prev.min(hint.saturating_add(1)).max(self.matched + 1);
        self.enter(next, Mode::Probe { outstanding: false });
        true
    }

    /// Records that the peer refused to follow this leader in reply to a
    /// request of `epoch`: whatever was outstanding is void, and the peer is
    /// probed again (from `next` in Probe, `matched + 1` in Replicate) when
    /// the driver asks it again. Returns false for a stale reply.
    pub(crate) fn on_refused(&mut self, epoch: u64) -> bool {
        if epoch != self.epoch {
            return false;
        }
        let next = match self.mode {
            Mode::Probe { .. } => self.next,
            Mode::Replicate(_) => self.matched + 1,
        };
        self.enter(next, Mode::Probe { outstanding: false });
        true
    }

    /// Records that a request of `epoch` got no reply (the call failed or
    /// timed out): nothing sent since `matched` can be assumed to have
    /// arrived, so probe again from `matched + 1`. Stale reports are ignored.
    pub(crate) fn on_unreachable(&mut self, epoch: u64) {
        if epoch == self.epoch {
            self.enter(self.matched + 1, Mode::Probe { outstanding: false });
        }
    }

    fn enter(&mut self, next: LogIndex, mode: Mode) {
        self.next = next;
        self.mode = mode;
        self.epoch = self.epoch.wrapping_add(1);
        self.told = -1;
    }
}

/// Outcome of recording a peer's stance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Standing {
    /// A majority (the leader included) follows it.
    Confirmed,
    /// A majority follows someone else, or nobody: it cannot lead this term.
    Rejected,
    /// Not decided yet.
    Pending,
}

/// The leader's view of every peer, indexed by server id (its own slot is
/// kept but never replicated to).
#[derive(Debug, Clone)]
pub(crate) struct Tracker {
    id: ServerId,
    peers: Vec<Progress>,
    /// Cached: whether a majority acknowledged (final once true).
    confirmed: bool,
}

impl Tracker {
    /// SetLeader's reset: `next` = the log length and `matched` = -1 for
    /// every peer; the leader itself is its first vote.
    pub(crate) fn new(id: ServerId, cluster_size: usize, log_len: LogIndex) -> Self {
        let mut peers = vec![Progress::new(log_len); cluster_size.max(id + 1)];
        peers[id].stance = Stance::Ack;
        let mut tracker = Self {
            id,
            peers,
            confirmed: false,
        };
        tracker.confirmed = tracker.standing() == Standing::Confirmed;
        tracker
    }

    /// Whether a majority (the leader included) follows this leader.
    pub(crate) fn is_confirmed(&self) -> bool {
        self.confirmed
    }

    /// The progress of `peer` (`None` for the leader itself or an unknown id).
    pub(crate) fn get(&self, peer: ServerId) -> Option<&Progress> {
        (peer != self.id).then(|| self.peers.get(peer)).flatten()
    }

    /// Mutable progress of `peer` (`None` for the leader itself or an unknown id).
    pub(crate) fn get_mut(&mut self, peer: ServerId) -> Option<&mut Progress> {
        if peer == self.id {
            return None;
        }
        self.peers.get_mut(peer)
    }

    /// Records whether `peer` follows this leader and returns where the
    /// leader now stands. An acknowledgement is final for the term; a
    /// denial may later turn into one (a peer that led the term itself
    /// without confirmation steps down and may then follow).
    pub(crate) fn record_stance(&mut self, peer: ServerId, follows: bool) -> Standing {
        if let Some(progress) = self.get_mut(peer)
            && progress.stance != Stance::Ack
        {
            progress.stance = if follows { Stance::Ack } else { Stance::Deny };
        }
        let standing = self.standing();
        self.confirmed = standing == Standing::Confirmed;
        standing
    }

    /// Where the leader stands given the stances recorded so far.
    fn standing(&self) -> Standing {
        let size = self.peers.len();
        let count = |stance| self.peers.iter().filter(|p| p.stance == stance).count();
        if quorum::is_majority(count(Stance::Ack), size) {
            Standing::Confirmed
        } else if quorum::is_majority(count(Stance::Deny), size) {
            Standing::Rejected
        } else {
            Standing::Pending
        }
    }

    /// The highest index a majority holds, the leader holding `own_last`.
    pub(crate) fn quorum_matched(&self, own_last: LogIndex) -> LogIndex {
        let matched = self
            .peers
            .iter()
            .enumerate()
            .map(|(peer, p)| if peer == self.id { own_last } else { p.matched })
            .collect();
        quorum::quorum_index(matched, self.peers.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The last index the leader may send, in tests that do not care.
    const LAST: LogIndex = 100;

    /// At most `n` entries per request wherever it starts.
    fn upto(n: usize) -> impl Fn(LogIndex) -> usize {
        move |_| n
    }

    fn slice(prev: LogIndex, count: usize) -> Slice {
        Slice { prev, count }
    }

    /// A peer replicating from `matched + 1`, nothing in flight: its probe
    /// at `matched` succeeded.
    fn replicating(matched: LogIndex) -> Progress {
        let mut p = Progress::new(matched + 1);
        let probe = p.next_send(LAST, upto(0), -1, MAX_INFLIGHT).unwrap();
        p.on_success(probe.end(), -1);
        assert_eq!(p.mode(), Mode::Replicate(Inflights::default()));
        p
    }

    fn in_flight(p: &Progress) -> usize {
        match p.mode() {
            Mode::Replicate(window) => window.len(),
            Mode::Probe { outstanding } => usize::from(outstanding),
        }
    }

    fn is_probing(p: &Progress) -> bool {
        matches!(p.mode(), Mode::Probe { .. })
    }

    #[test]
    fn set_leader_starts_probing_one_request_at_a_time() {
        let mut p = Progress::new(5);
        assert!(is_probing(&p));
        assert_eq!(
            p.next_send(LAST, upto(3), -1, MAX_INFLIGHT),
            Some(slice(4, 3))
        );
        assert_eq!(
            p.next_send(LAST, upto(3), -1, MAX_INFLIGHT),
            None,
            "the probe is unanswered"
        );
        assert_eq!(p.next, 5, "a probe does not move next");
        // A success below the probe point proves nothing about it.
        p.on_success(2, -1);
        assert_eq!((p.next, p.matched), (5, 2));
        assert_eq!(p.next_send(LAST, upto(3), -1, MAX_INFLIGHT), None);
        // The probe's own success starts replicating after what it carried.
        p.on_success(7, -1);
        assert_eq!(p.mode(), Mode::Replicate(Inflights::default()));
        assert_eq!((p.next, p.matched), (8, 7));
    }

    #[test]
    fn a_probe_never_sends_past_what_may_be_sent() {
        let mut p = Progress::new(5);
        assert_eq!(
            p.next_send(2, upto(10), -1, MAX_INFLIGHT),
            Some(slice(2, 0))
        );
        assert_eq!(p.sync_send(2, upto(10)), slice(2, 0));
        assert_eq!(Progress::new(0).sync_send(-1, upto(10)), slice(-1, 0));
    }

    #[test]
    fn a_depth_of_one_is_stop_and_wait() {
        let mut p = replicating(-1);
        assert_eq!(p.next_send(LAST, upto(10), -1, 1), Some(slice(-1, 10)));
        assert_eq!(p.next_send(LAST, upto(10), -1, 1), None, "one in flight");
        p.on_success(9, -1);
        assert_eq!(p.next_send(LAST, upto(10), -1, 1), Some(slice(9, 10)));
        assert_eq!(p.next_send(LAST, upto(10), -1, 0), None, "0 counts as 1");
    }

    #[test]
    fn the_window_fills_to_max_inflight_then_stops() {
        let mut p = replicating(-1);
        for k in 0..MAX_INFLIGHT {
            let prev = LogIndex::try_from(k * 10).unwrap() - 1;
            assert_eq!(
                p.next_send(LAST, upto(10), -1, MAX_INFLIGHT),
                Some(slice(prev, 10))
            );
        }
        assert_eq!(in_flight(&p), MAX_INFLIGHT);
        assert_eq!(
            p.next_send(LAST, upto(10), -1, MAX_INFLIGHT),
            None,
            "the window is full"
        );
        assert_eq!((p.next, p.matched), (40, -1), "next moved on send");

        let mut p = replicating(-1);
        assert_eq!(
            p.next_send(14, upto(10), -1, MAX_INFLIGHT),
            Some(slice(-1, 10))
        );
        assert_eq!(
            p.next_send(14, upto(10), -1, MAX_INFLIGHT),
            Some(slice(9, 5))
        );
        assert_eq!(
            p.next_send(14, upto(10), -1, MAX_INFLIGHT),
            None,
            "nothing new to send"
        );
        assert_eq!(in_flight(&p), 2);
    }

    #[test]
    fn a_success_frees_every_request_it_covers() {
        let mut p = replicating(-1);
        while p.next_send(LAST, upto(10), -1, MAX_INFLIGHT).is_some() {}
        p.on_success(19, -1);
        assert_eq!(in_flight(&p), MAX_INFLIGHT - 2);
        assert_eq!((p.next, p.matched), (40, 19));
        assert_eq!(
            p.next_send(LAST, upto(10), -1, MAX_INFLIGHT),
            Some(slice(39, 10))
        );
        assert_eq!(
            p.next_send(LAST, upto(10), -1, MAX_INFLIGHT),
            Some(slice(49, 10))
        );
        assert_eq!(p.next_send(LAST, upto(10), -1, MAX_INFLIGHT), None);
    }

    #[test]
    fn out_of_order_and_duplicated_successes_only_move_forward() {
        let mut p = replicating(-1);
        for _ in 0..3 {
            p.next_send(LAST, upto(10), -1, MAX_INFLIGHT).unwrap();
        }
        let before = p.epoch();
        p.on_success(29, -1);
        assert_eq!((p.next, p.matched, in_flight(&p)), (30, 29, 0));
        p.on_success(9, -1);
        p.on_success(29, -1);
        p.on_success(19, -1);
        assert_eq!((p.next, p.matched, in_flight(&p)), (30, 29, 0));
        assert_eq!(p.epoch(), before, "still the same window");
        assert!(!is_probing(&p));
    }

    #[test]
    fn a_mismatch_in_the_window_probes_again_and_voids_the_rest() {
        let mut p = replicating(-1);
        let epoch = p.epoch();
        for _ in 0..3 {
            p.next_send(LAST, upto(10), -1, MAX_INFLIGHT).unwrap();
        }
        // The second request mismatched: the first never arrived.
        assert!(p.on_mismatch(epoch, 9, 5));
        assert!(is_probing(&p));
        assert_eq!((p.next, p.matched), (6, -1), "as far back as the hint");
        assert_eq!(
            p.next_send(LAST, upto(10), -1, MAX_INFLIGHT),
            Some(slice(5, 10))
        );
        // The third request's mismatch belongs to the discarded window.
        assert!(!p.on_mismatch(epoch, 19, -1));
        assert_eq!(p.next, 6);
        assert_eq!(in_flight(&p), 1, "the probe is still outstanding");
        // A late success of the discarded window still counts.
        p.on_success(29, -1);
        assert!(!is_probing(&p));
        assert_eq!((p.next, p.matched), (30, 29));
    }

    #[test]
    fn a_request_overtaken_by_its_predecessor_is_resent() {
        // The second request reached the peer first and was refused; the
        // first then succeeded. Its entries are missing, though below the
        // new matchIndex the refusal's prevLogIndex is not.
        let mut p = replicating(-1);
        let epoch = p.epoch();
        p.next_send(LAST, upto(10), -1, MAX_INFLIGHT).unwrap();
        p.next_send(LAST, upto(10), -1, MAX_INFLIGHT).unwrap();
        p.on_success(9, -1);
        assert_eq!(in_flight(&p), 1);
        assert!(p.on_mismatch(epoch, 9, 9));
        assert!(is_probing(&p));
        assert_eq!((p.next, p.matched), (10, 9));
        assert_eq!(
            p.next_send(LAST, upto(10), -1, MAX_INFLIGHT),
            Some(slice(9, 10))
        );
    }

    #[test]
    fn a_stale_mismatch_from_an_earlier_window_is_ignored() {
        let mut p = replicating(4);
        let old = p.epoch();
        p.next_send(LAST, upto(10), -1, MAX_INFLIGHT).unwrap();
        p.on_unreachable(old);
        let probe = p.next_send(LAST, upto(10), -1, MAX_INFLIGHT).unwrap();
        p.on_success(probe.end(), -1);
        p.next_send(LAST, upto(10), -1, MAX_INFLIGHT).unwrap();
        let snapshot = p;
        assert!(!p.on_mismatch(old, 14, -1));
        assert!(!p.on_refused(old));
        p.on_unreachable(old);
        assert_eq!(p, snapshot);
    }

    #[test]
    fn probe_backs_off_at_least_one_never_below_matched() {
        let mut p = Progress::new(5);
        assert!(
            p.on_mismatch(p.epoch(), 4, 10),
            "a too-high hint still backs off one"
        );
        assert_eq!(p.next, 4);
        assert!(p.on_mismatch(p.epoch(), 3, 0));
        assert_eq!(p.next, 1);
        assert!(!p.on_mismatch(p.epoch(), 3, 0), "not the current probe");
        assert!(p.on_mismatch(p.epoch(), 0, -7));
        assert_eq!(p.next, 0);
        assert!(
            !p.on_mismatch(p.epoch(), -1, -1),
            "nothing below the start of the log"
        );
        assert_eq!(p.next, 0);

        let mut p = Progress::new(8);
        p.on_success(2, -1);
        assert!(p.on_mismatch(p.epoch(), 7, -1));
        assert_eq!(p.next, 3, "never at or below what is known to match");
        assert!(!p.on_mismatch(p.epoch(), 2, -1));
    }

    #[test]
    fn a_backoff_lets_the_next_probe_go_and_voids_the_old_one() {
        let mut p = Progress::new(5);
        let first = p.epoch();
        p.next_send(LAST, upto(1), -1, MAX_INFLIGHT).unwrap();
        assert!(p.on_mismatch(first, 4, 1));
        assert_eq!(
            p.next_send(LAST, upto(1), -1, MAX_INFLIGHT),
            Some(slice(1, 1))
        );
        assert!(!p.on_mismatch(first, 4, 1), "a duplicate of the old reply");
        assert_eq!(p.next, 2);
    }

    #[test]
    fn unreachable_probes_again_from_matched() {
        let mut p = replicating(-1);
        let epoch = p.epoch();
        while p.next_send(LAST, upto(10), -1, MAX_INFLIGHT).is_some() {}
        p.on_success(9, -1);
        p.on_unreachable(epoch);
        assert!(is_probing(&p));
        assert_eq!((p.next, p.matched, in_flight(&p)), (10, 9, 0));
        assert_eq!(
            p.next_send(LAST, upto(10), -1, MAX_INFLIGHT),
            Some(slice(9, 10))
        );
        // The window's other calls fail too: the new probe stays outstanding.
        p.on_unreachable(epoch);
        assert_eq!(p.next_send(LAST, upto(10), -1, MAX_INFLIGHT), None);
        // The probe's own failure lets another one go.
        p.on_unreachable(p.epoch());
        assert_eq!(
            p.next_send(LAST, upto(10), -1, MAX_INFLIGHT),
            Some(slice(9, 10))
        );
    }

    #[test]
    fn a_refusal_voids_what_is_outstanding() {
        let mut p = Progress::new(5);
        p.next_send(LAST, upto(1), -1, MAX_INFLIGHT).unwrap();
        assert!(p.on_refused(p.epoch()));
        assert_eq!(p.next, 5, "a refusal says nothing about the log");
        assert_eq!(
            p.next_send(LAST, upto(1), -1, MAX_INFLIGHT),
            Some(slice(4, 1))
        );

        let mut p = replicating(3);
        p.next_send(LAST, upto(1), -1, MAX_INFLIGHT).unwrap();
        assert!(p.on_refused(p.epoch()));
        assert!(is_probing(&p));
        assert_eq!(p.next, 4);
    }

    #[test]
    fn a_replicating_peer_is_told_each_new_commit_index_once() {
        let mut p = replicating(9);
        assert_eq!(
            p.next_send(9, upto(10), 5, MAX_INFLIGHT),
            Some(slice(9, 0)),
            "empty, at matched"
        );
        assert_eq!(
            p.next_send(9, upto(10), 5, MAX_INFLIGHT),
            None,
            "told already"
        );
        assert_eq!(p.next_send(9, upto(10), 7, MAX_INFLIGHT), Some(slice(9, 0)));
        // A commit index beyond matched is told only as far as matched.
        let mut p = replicating(3);
        assert_eq!(p.next_send(3, upto(10), 9, MAX_INFLIGHT), Some(slice(3, 0)));
        assert_eq!(p.next_send(3, upto(10), 9, MAX_INFLIGHT), None);
        // Requests of the window tell it too; while any is outstanding the
        // notice waits for the window to drain.
        let mut p = replicating(3);
        for _ in 0..MAX_INFLIGHT {
            p.next_send(LAST, upto(1), 2, MAX_INFLIGHT).unwrap();
        }
        assert_eq!(p.next_send(LAST, upto(1), 2, MAX_INFLIGHT), None);
        assert_eq!(p.next_send(LAST, upto(1), 3, MAX_INFLIGHT), None);
        p.on_success(3 + MAX_INFLIGHT as LogIndex, 2);
        assert_eq!(in_flight(&p), 0);
        assert_eq!(
            p.next_send(3 + MAX_INFLIGHT as LogIndex, upto(1), 3, MAX_INFLIGHT),
            Some(slice(3 + MAX_INFLIGHT as LogIndex, 0))
        );
        // A success shows what the peer can apply, whatever its epoch.
        let mut p = replicating(3);
        p.on_success(3, 3);
        assert_eq!(p.next_send(3, upto(10), 3, MAX_INFLIGHT), None);
    }

    #[test]
    fn what_a_peer_showed_it_knows_is_kept_across_epochs_and_never_drops() {
        let mut p = replicating(3);
        p.on_success(3, 2);
        assert_eq!(p.learned, 2);
        p.on_unreachable(p.epoch());
        assert!(is_probing(&p));
        assert_eq!(p.learned, 2, "a failed call does not make it forget");
        p.on_success(3, 1);
        assert_eq!(p.learned, 2, "a stale reply does not lower it");
    }

    #[test]
    fn sync_requests_start_at_the_confirmed_point_and_record_nothing() {
        let p = Progress::new(5);
        assert_eq!(p.sync_send(LAST, upto(2)), slice(4, 2));
        let mut p = replicating(4);
        while p.next_send(LAST, upto(10), -1, MAX_INFLIGHT).is_some() {}
        let before = p;
        assert_eq!(p.sync_send(LAST, upto(0)), slice(4, 0));
        assert_eq!(p.sync_send(LAST, upto(3)), slice(4, 3));
        assert_eq!(p, before);
    }

    #[test]
    fn stances_decide_confirmation_and_rejection() {
        let mut t = Tracker::new(0, 3, 0);
        assert_eq!(t.record_stance(1, false), Standing::Pending);
        assert_eq!(t.record_stance(2, true), Standing::Confirmed);

        let mut t = Tracker::new(0, 3, 0);
        assert_eq!(t.record_stance(1, false), Standing::Pending);
        assert_eq!(t.record_stance(2, false), Standing::Rejected);
        assert_eq!(t.record_stance(2, true), Standing::Confirmed);
        assert_eq!(
            t.record_stance(2, false),
            Standing::Confirmed,
            "an acknowledgement is final for the term"
        );

        assert!(t.is_confirmed());
        assert!(Tracker::new(0, 1, 0).is_confirmed());
        assert!(!Tracker::new(0, 3, 0).is_confirmed());
        assert_eq!(t.record_stance(0, false), Standing::Confirmed);
    }

    #[test]
    fn quorum_matched_counts_the_leader() {
        let mut t = Tracker::new(1, 3, 4);
        assert_eq!(t.quorum_matched(5), -1);
        t.get_mut(2).unwrap().on_success(3, -1);
        assert_eq!(t.quorum_matched(5), 3);
        assert!(t.get(1).is_none());
        assert!(t.get(3).is_none());
    }
}
