//! What a leader knows about each peer in its term: where to resume sending
//! (`next`), how much is known to be replicated (`matched`), and whether the
//! peer has accepted it as the term's leader. Replies may arrive stale,
//! duplicated or out of order, so every update here only ever moves forward
//! on evidence that is still current.

use super::{LogIndex, ServerId, quorum};

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

/// Replication state of one peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Progress {
    /// Index of the next entry to send.
    pub(crate) next: LogIndex,
    /// Highest index known to match the leader's log (-1: none known).
    pub(crate) matched: LogIndex,
    pub(crate) stance: Stance,
}

impl Progress {
    /// Records a successful reply covering the log up to `matched`. Returns
    /// false when it taught nothing new (a stale or duplicated reply).
    pub(crate) fn on_success(&mut self, matched: LogIndex) -> bool {
        if matched <= self.matched {
            return false;
        }
        self.matched = matched;
        self.next = self.next.max(matched + 1);
        true
    }

    /// Records a log-mismatch reply to a request whose `prevLogIndex` was
    /// `prev_index`. Only a reply to the current probe (`prev_index ==
    /// next - 1`) backs `next` off, by at least one and as far as the
    /// follower's `hint`, but never to or below what is known to match.
    /// Returns false for a stale reply.
    pub(crate) fn on_mismatch(&mut self, prev_index: LogIndex, hint: LogIndex) -> bool {
        if prev_index != self.next - 1 || prev_index <= self.matched {
            return false;
        }
        self.next = prev_index.min(hint.saturating_add(1)).max(self.matched + 1);
        true
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
        let mut peers = vec![
            Progress {
                next: log_len,
                matched: -1,
                stance: Stance::Unknown,
            };
            cluster_size.max(id + 1)
        ];
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

    fn progress(next: LogIndex, matched: LogIndex) -> Progress {
        Progress {
            next,
            matched,
            stance: Stance::Ack,
        }
    }

    #[test]
    fn success_only_moves_forward() {
        let mut p = progress(5, -1);
        assert!(p.on_success(6));
        assert_eq!((p.next, p.matched), (7, 6));
        assert!(!p.on_success(3), "a reordered older reply teaches nothing");
        assert!(!p.on_success(6), "a duplicate teaches nothing");
        assert_eq!((p.next, p.matched), (7, 6));
    }

    #[test]
    fn mismatch_backs_off_at_least_one_never_below_matched() {
        let mut p = progress(5, -1);
        assert!(p.on_mismatch(4, 10), "a too-high hint still backs off one");
        assert_eq!(p.next, 4);
        assert!(p.on_mismatch(3, 0));
        assert_eq!(p.next, 1);
        assert!(!p.on_mismatch(3, 0), "reply to an older probe is stale");
        assert!(p.on_mismatch(0, -7));
        assert_eq!(p.next, 0);
        assert!(!p.on_mismatch(-1, -1), "nothing below the start of the log");
        assert_eq!(p.next, 0);

        let mut p = progress(8, 2);
        assert!(p.on_mismatch(7, -1));
        assert_eq!(p.next, 3, "never at or below what is known to match");
        assert!(!p.on_mismatch(2, -1));
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
        t.get_mut(2).unwrap().on_success(3);
        assert_eq!(t.quorum_matched(5), 3);
        assert!(t.get(1).is_none());
        assert!(t.get(3).is_none());
    }
}
