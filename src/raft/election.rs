//! The election clock and campaign of the opt-in election mode (SPEC §9.1):
//! what the core keeps to elect leaders by itself, with pre-vote and
//! check-quorum (Raft thesis §9.6).
//!
//! Time enters as ticks, as in etcd's raft: the driver calls
//! [`super::RaftCore::tick`] at a fixed period, and a timeout is a number of
//! ticks. The randomized timeout comes from a generator seeded by the
//! driver, so a simulation that fixes the seed replays every election.
//! The rules themselves (who campaigns, who grants a vote, when a leader
//! steps down) live in the core, which owns the term and the vote; this
//! module holds their state.

use std::collections::BTreeSet;

use super::{LogIndex, ServerId, Term};
use crate::proto::RequestVoteInput;

/// How elections are timed: a base timeout in ticks, randomized per timer
/// reset in `[ticks, 2 * ticks)`, and the seed of that randomness.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ElectionConfig {
    /// The election timeout N in ticks (at least 1).
    pub ticks: u32,
    /// Seeds the randomized timeouts.
    pub seed: u64,
}

/// A vote request for the driver to send, built by the core.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VoteRequest {
    /// The peer to ask.
    pub to: ServerId,
    /// A PreVote (nobody's term changes) rather than a RequestVote.
    pub pre_vote: bool,
    /// The request.
    pub request: RequestVoteInput,
}

/// A validated vote request as the core takes it: the wire's
/// `RequestVoteInput`, checked at the service edge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VoteAsk {
    /// The term the candidate campaigns for (or asks about, for a PreVote).
    pub term: Term,
    /// The candidate's id.
    pub candidate: ServerId,
    /// `(lastLogTerm, lastLogIndex)` of the candidate's log.
    pub last_log: (Term, LogIndex),
    /// The candidate campaigns because SetLeader told it to: a live leader
    /// does not stop its voters.
    pub force: bool,
    /// A PreVote rather than a RequestVote.
    pub pre_vote: bool,
}

/// A campaign under way: which round, and who granted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Campaign {
    /// Asking PreVotes for the next term rather than votes in this one.
    pub(crate) pre_vote: bool,
    /// The servers that granted, this one included.
    pub(crate) granted: BTreeSet<ServerId>,
}

/// The election state of one server.
#[derive(Debug, Clone)]
pub(crate) struct Election {
    /// The base timeout N in ticks.
    pub(crate) ticks: u32,
    /// Ticks since the timer was last reset.
    pub(crate) elapsed: u32,
    /// When a follower or candidate campaigns: randomized in `[N, 2N)`.
    timeout: u32,
    /// The state of the timeout generator (splitmix64).
    rng: u64,
    /// The leader of the current term as far as this server knows (itself
    /// when leading).
    pub(crate) leader: Option<ServerId>,
    /// A campaign this server runs.
    pub(crate) campaign: Option<Campaign>,
    /// As leader: the peers that answered in this term since the last
    /// quorum check.
    pub(crate) active: BTreeSet<ServerId>,
}

impl Election {
    /// A follower's election state with a fresh randomized timeout.
    pub(crate) fn new(config: ElectionConfig) -> Self {
        let mut election = Self {
            ticks: config.ticks.max(1),
            elapsed: 0,
            timeout: 0,
            rng: config.seed,
            leader: None,
            campaign: None,
            active: BTreeSet::new(),
        };
        election.reset_timer();
        election
    }

    /// Starts the timer again with a new randomized timeout.
    pub(crate) fn reset_timer(&mut self) {
        self.elapsed = 0;
        let spread = u64::from(self.ticks);
        let extra = u32::try_from(self.next_random() % spread).unwrap_or(0);
        self.timeout = self.ticks + extra;
    }

    /// Whether a follower's or candidate's timer ran out.
    pub(crate) fn timed_out(&self) -> bool {
        self.elapsed >= self.timeout
    }

    /// Whether this server heard from a live leader within the base timeout
    /// (check-quorum's lease): it then grants no vote for a newer term, so
    /// a server that lost touch cannot depose a leader the rest follows.
    pub(crate) fn in_lease(&self) -> bool {
        self.leader.is_some() && self.elapsed < self.ticks
    }

    /// splitmix64: small, fast and good enough to spread timeouts.
    fn next_random(&mut self) -> u64 {
        self.rng = self.rng.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeouts_are_randomized_within_one_to_two_base_timeouts() {
        let mut election = Election::new(ElectionConfig { ticks: 10, seed: 7 });
        let mut seen = BTreeSet::new();
        for _ in 0..1000 {
            election.reset_timer();
            assert!((10..20).contains(&election.timeout), "{}", election.timeout);
            seen.insert(election.timeout);
        }
        assert_eq!(seen.len(), 10, "every value of the range comes up");
    }

    #[test]
    fn the_same_seed_gives_the_same_timeouts() {
        let timeouts = |seed| {
            let mut election = Election::new(ElectionConfig { ticks: 10, seed });
            (0..20)
                .map(|_| {
                    election.reset_timer();
                    election.timeout
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(timeouts(3), timeouts(3));
        assert_ne!(timeouts(3), timeouts(4));
    }

    #[test]
    fn the_lease_lasts_one_base_timeout_after_hearing_from_a_leader() {
        let mut election = Election::new(ElectionConfig { ticks: 3, seed: 1 });
        assert!(!election.in_lease(), "no leader known");
        election.leader = Some(2);
        for _ in 0..3 {
            assert!(election.in_lease());
            election.elapsed += 1;
        }
        assert!(!election.in_lease());
    }
}
