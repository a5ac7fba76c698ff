//! The pure Raft core (`surfstore::raft::RaftCore`) in whole clusters, with
//! no network and no clock: the reference scenarios of SPEC §5, then seeded
//! random schedules checked for Raft's safety properties after every step,
//! and liveness at the end of each.
//!
//! `RAFT_SEED=<n> cargo test --test raft_properties` replays one seed (the
//! failure message names it); `RAFT_SCHEDULES=<n>` runs more schedules per
//! cluster size than the default (both modes below).
//!
//! # Election mode (SPEC §9.1)
//!
//! `random_election_schedules_*` run the same machinery with elections on
//! every core (`enable_elections`, N = [`ELECTION_TICKS`] ticks, each
//! server's seed derived from the schedule's seed, its id and how often it
//! was restarted). Leaders come from the cores' own PreVotes and votes,
//! and from `SetLeader` now and then, which campaigns with force. A
//! schedule's random steps add to those of the SetLeader mode:
//!
//! * ticks of one server or of all; a leader heartbeats
//!   (`sync_request(peer, 0)` to every peer) every second of its ticks, as
//!   the node does with its default heartbeat of N/5;
//! * vote requests and replies on the same network as AppendEntries:
//!   delivered, dropped, duplicated and reordered; they leave a server only
//!   once the Ready that built them is on its simulated disk, and a
//!   candidate that wins fills its peers' windows at once (the no-op goes
//!   out);
//! * link failures in a connectivity matrix: a random side of the cluster
//!   cut off from the rest, single links cut one way or both, and heals; a
//!   message on a cut link is lost when it would be delivered (and the
//!   leader hears of the failed call, at once or at the end);
//! * crashes, restores and restarts from the durable state, as before (a
//!   crashed server neither ticks nor answers votes). Synchronous
//!   `SendHeartbeat` rounds are left out: they would bypass the links.
//!
//! After every step: election safety (at most one server ever leads a
//! term, recorded after every call into a core, across restarts), every
//! log invariant of the SetLeader mode (log matching, leader completeness,
//! state-machine safety, no committed entry lost or applied before a
//! majority holds it), and every leader's first entry of its term is its
//! no-op. At the end, liveness: every link healed and every crashed server
//! restored, the cluster must elect a leader within
//! [`LIVENESS_TICKS`] (20 N) ticks, delivering everything in flight after
//! each tick, and a proposal of that leader must commit everywhere.
//!
//! Deterministic scenarios check the targets of SPEC §9.1 at the level of
//! the core: a server cut off from everyone, or only from the leader,
//! ticks for 20 N without raising any term or unseating the leader, then
//! rejoins as a follower (PreVote and the lease); a leader cut off from the
//! majority steps down within 2 N ticks (check-quorum: N ticks after its
//! last check) while the majority elects another; and a stale server's
//! `SetLeader` never wins, however often it is called.

// Test code: a failed unwrap is a failed test, with its location.
#![allow(clippy::unwrap_used)]

#[path = "raft_properties/cluster.rs"]
mod cluster;
#[path = "raft_properties/schedule.rs"]
mod schedule;

use cluster::{Cluster, ELECTION_TICKS};
use schedule::{LIVENESS_TICKS, Schedule};
use surfstore::proto::FileMetaData;
use surfstore::raft::{LogIndex, Outgoing, ServerId, Term};

/// Default schedules per cluster size, and steps per schedule.
const SCHEDULES: u64 = 1000;
const STEPS: usize = 200;

/// The same in election mode: fewer, longer schedules, since elections
/// need ticks (about one step in four is a tick).
const ELECTION_SCHEDULES: u64 = 2000;
const ELECTION_STEPS: usize = 400;

/// N, the election timeout in ticks.
const N: u32 = ELECTION_TICKS;

/// Enough synchronous rounds for any commit in these small scenarios.
const ROUNDS: usize = 3;

fn meta(name: &str, version: i32) -> FileMetaData {
    FileMetaData {
        filename: name.into(),
        version,
        block_hash_list: vec![format!("{name}-{version}")],
    }
}

fn terms(cluster: &Cluster, id: usize) -> Vec<Term> {
    cluster.core(id).log().iter().map(|e| e.term).collect()
}

fn commits(cluster: &Cluster) -> Vec<LogIndex> {
    (0..cluster.size())
        .map(|i| cluster.core(i).commit_index())
        .collect()
}

fn assert_consistent(cluster: &mut Cluster) {
    if let Err(problem) = cluster.check() {
        panic!("{problem}");
    }
}

#[test]
fn terms_after_two_set_leader_calls() {
    let mut c = Cluster::new(3);
    c.set_leader(0);
    assert!(c.heartbeat(0));
    for id in 0..3 {
        assert_eq!(c.core(id).term(), 1);
        assert_eq!(c.core(id).is_leader(), id == 0);
    }
    c.set_leader(2);
    assert!(c.heartbeat(2));
    for id in 0..3 {
        assert_eq!(c.core(id).term(), 2);
        assert_eq!(c.core(id).is_leader(), id == 2);
    }
    assert_consistent(&mut c);
}

#[test]
fn followers_get_an_update_after_one_heartbeat() {
    let mut c = Cluster::new(3);
    c.set_leader(0);
    c.heartbeat(0);
    assert_eq!(c.update_file(0, meta("a", 1), ROUNDS), Some(1));
    assert!(c.heartbeat(0));
    for id in 0..3 {
        assert_eq!(c.core(id).log(), c.core(0).log());
        assert_eq!(c.servers[id].map.get("a"), Some(&meta("a", 1)));
    }
    assert_eq!(commits(&c), [0, 0, 0]);
    assert_consistent(&mut c);
}

#[test]
fn update_waits_while_a_majority_is_crashed_and_completes_after_restore() {
    let mut c = Cluster::new(3);
    c.set_leader(0);
    c.heartbeat(0);
    c.crash(1);
    c.crash(2);
    assert_eq!(c.update_file(0, meta("a", 1), ROUNDS), None);
    assert_eq!(c.core(0).log().len(), 1);
    assert_eq!(c.core(0).commit_index(), -1);
    assert!(!c.heartbeat(0), "no majority acknowledges");
    c.restore(1);
    c.restore(2);
    assert!(c.heartbeat(0));
    assert_eq!(c.servers[0].results, [1]);
    // The round committed it, and told every follower before returning.
    assert_eq!(commits(&c), [0, 0, 0]);
    assert_consistent(&mut c);
}

#[test]
fn two_updates_in_a_row_and_a_rejected_version() {
    let mut c = Cluster::new(3);
    c.set_leader(0);
    c.heartbeat(0);
    assert_eq!(c.update_file(0, meta("a", 1), ROUNDS), Some(1));
    assert_eq!(c.update_file(0, meta("a", 2), ROUNDS), Some(2));
    let mut stale = meta("a", 2);
    stale.block_hash_list = vec!["other".into()];
    assert_eq!(c.update_file(0, stale, ROUNDS), Some(-1));
    c.heartbeat(0);
    for id in 0..3 {
        assert_eq!(c.servers[id].map.get("a"), Some(&meta("a", 2)));
        assert_eq!(c.servers[id].results, [1, 2, -1]);
    }
    assert_consistent(&mut c);
}

#[test]
fn a_leaders_uncommitted_entries_are_overwritten_by_a_newer_leader() {
    let mut c = Cluster::new(3);
    c.set_leader(0);
    c.heartbeat(0);
    c.crash(1);
    c.crash(2);
    assert_eq!(c.update_file(0, meta("a", 1), ROUNDS), None);
    assert_eq!(c.update_file(0, meta("b", 1), ROUNDS), None);
    c.crash(0);
    c.restore(1);
    c.restore(2);
    c.set_leader(1);
    assert!(c.heartbeat(1));
    assert_eq!(c.update_file(1, meta("c", 1), ROUNDS), Some(1));
    c.restore(0);
    assert!(c.heartbeat(1));
    for id in 0..3 {
        assert_eq!(terms(&c, id), [2], "server {id}");
        assert_eq!(c.core(id).log(), c.core(1).log());
        assert!(c.servers[id].map.get("a").is_none());
        assert_eq!(c.servers[id].map.get("c"), Some(&meta("c", 1)));
        assert!(!c.core(id).is_leader() || id == 1);
    }
    assert_consistent(&mut c);
}

#[test]
fn logs_stay_consistent_across_two_leaders_with_one_server_down_each_time() {
    let mut c = Cluster::new(3);
    c.set_leader(0);
    c.heartbeat(0);
    c.crash(2);
    assert_eq!(c.update_file(0, meta("a", 1), ROUNDS), Some(1));
    c.restore(2);
    c.crash(0);
    c.set_leader(1);
    assert!(c.heartbeat(1));
    assert_eq!(c.update_file(1, meta("a", 2), ROUNDS), Some(2));
    c.restore(0);
    assert!(c.heartbeat(1));
    for id in 0..3 {
        assert_eq!(terms(&c, id), [1, 2], "server {id}");
        assert_eq!(c.servers[id].map.get("a"), Some(&meta("a", 2)));
    }
    assert_eq!(commits(&c), [1, 1, 1]);
    assert_consistent(&mut c);
}

#[test]
fn five_servers_new_leader_pushes_an_old_term_entry_without_committing_it() {
    let mut c = Cluster::new(5);
    c.set_leader(0);
    c.heartbeat(0);
    for id in 2..5 {
        c.crash(id);
    }
    assert_eq!(c.update_file(0, meta("a", 1), ROUNDS), None);
    assert_eq!(terms(&c, 1), [1]);
    c.crash(0);
    for id in 2..5 {
        c.restore(id);
    }
    c.set_leader(1);
    assert!(c.heartbeat(1));
    c.restore(0);
    assert!(c.heartbeat(1));
    for id in 0..5 {
        assert_eq!(terms(&c, id), [1], "server {id}");
        assert!(c.servers[id].map.is_empty());
    }
    assert_eq!(
        commits(&c),
        [-1; 5],
        "a term-1 entry does not commit in term 2"
    );
    // The first entry of term 2 commits both.
    assert_eq!(c.update_file(1, meta("a", 2), ROUNDS), Some(2));
    assert_eq!(c.servers[1].results, [1, 2]);
    assert_consistent(&mut c);
}

#[test]
fn a_new_leader_learns_an_earlier_terms_commit_from_a_follower_that_knows_it() {
    let mut c = Cluster::new(5);
    c.set_leader(0);
    c.heartbeat(0);
    for id in 2..5 {
        c.crash(id);
    }
    // Server 1 gets "a"; then server 2's acknowledgement commits it, and
    // only 2 is told.
    assert_eq!(c.update_file(0, meta("a", 1), ROUNDS), None);
    c.crash(1);
    c.restore(2);
    c.heartbeat(0);
    assert_eq!(commits(&c), [0, -1, 0, -1, -1]);
    c.crash(0);
    c.restore(1);
    c.restore(3);
    c.set_leader(1);
    assert!(c.heartbeat(1));
    assert_eq!(c.core(1).commit_index(), 0, "learned from server 2");
    assert_eq!(c.servers[1].map.get("a"), Some(&meta("a", 1)));
    assert_eq!(commits(&c), [0, 0, 0, 0, -1]);
    assert_consistent(&mut c);
}

#[test]
fn set_leader_on_a_stale_server_cannot_overwrite_committed_entries() {
    let mut c = Cluster::new(3);
    c.set_leader(0);
    c.heartbeat(0);
    c.crash(2);
    assert_eq!(c.update_file(0, meta("a", 1), ROUNDS), Some(1));
    c.heartbeat(0);
    c.restore(2);
    // Server 2 missed the committed entry; made leader, it is refused.
    c.set_leader(2);
    assert!(c.core(2).is_leader());
    assert_eq!(c.update_file(2, meta("b", 1), ROUNDS), None);
    assert!(!c.core(2).is_leader(), "a majority denied it");
    assert!(
        c.core(2).log().is_empty(),
        "its proposal was never sent, and dropped"
    );
    for id in 0..2 {
        assert_eq!(c.servers[id].map.get("a"), Some(&meta("a", 1)));
        assert_eq!(terms(&c, id), [1]);
    }
    assert_consistent(&mut c);
}

#[test]
fn two_set_leader_calls_in_one_term_give_at_most_one_leader() {
    let mut c = Cluster::new(3);
    c.set_leader(0);
    c.set_leader(1);
    assert_eq!((c.core(0).term(), c.core(1).term()), (1, 1));
    assert!(c.heartbeat(0));
    assert!(!c.heartbeat(1));
    assert!(c.core(0).is_confirmed_leader());
    assert!(!c.core(1).is_leader());
    assert_eq!(c.update_file(0, meta("a", 1), ROUNDS), Some(1));
    c.heartbeat(0);
    assert_eq!(commits(&c), [0, 0, 0]);
    assert_consistent(&mut c);
}

#[test]
fn a_second_leader_of_a_term_cannot_strip_a_follower_of_a_committed_entry() {
    let mut c = Cluster::new(3);
    // Server 1 leads term 1 and keeps an entry nobody else got.
    c.set_leader(1);
    c.heartbeat(1);
    c.crash(0);
    c.crash(2);
    assert_eq!(c.update_file(1, meta("x", 1), ROUNDS), None);
    // Server 0 leads term 2 with server 2; "e" commits on 0 and 2, but 2
    // does not know it yet: a round would tell it, so one exchange only.
    c.crash(1);
    c.restore(0);
    c.restore(2);
    c.set_leader(0);
    assert!(c.heartbeat(0));
    c.propose(0, meta("e", 1)).unwrap();
    let Outgoing { request, sent } = c.sync_request(0, 2, 1).unwrap();
    let resp = c.deliver_request(2, &request).unwrap();
    c.deliver_response(0, 2, &sent, &resp);
    assert_eq!(commits(&c), [0, -1, -1]);
    // Server 1 comes back and is made leader of term 2 as well.
    c.restore(1);
    c.set_leader(1);
    assert_eq!(c.core(1).term(), 2);
    assert!(!c.heartbeat(1), "server 2 follows 0 in term 2; 0 leads it");
    assert!(!c.core(1).is_leader());
    assert_eq!(terms(&c, 2), [2], "server 2 kept the committed entry");
    // Even as leader of term 3, server 1 cannot win with server 2's vote.
    c.set_leader(1);
    assert!(!c.heartbeat(1));
    assert_consistent(&mut c);
    assert_eq!(c.servers[0].map.get("e"), Some(&meta("e", 1)));
}

#[test]
fn a_confirmed_leader_brings_in_a_late_follower_with_a_longer_log() {
    let mut c = Cluster::new(3);
    c.set_leader(2);
    c.heartbeat(2);
    assert_eq!(c.update_file(2, meta("a", 1), ROUNDS), Some(1));
    c.heartbeat(2);
    // Server 2 appends one more entry that only it holds.
    c.crash(0);
    c.crash(1);
    assert_eq!(c.update_file(2, meta("a", 2), ROUNDS), None);
    c.crash(2);
    c.restore(0);
    c.restore(1);
    c.set_leader(0);
    assert!(c.heartbeat(0));
    // Server 2's log is longer than the one 0 was made leader with, yet it
    // follows the confirmed leader of term 2 ...
    c.restore(2);
    assert!(c.heartbeat(0));
    assert_eq!(c.core(2).leader_hint(), Some(0));
    assert_eq!(terms(&c, 2), [1, 1], "no conflict yet: nothing truncated");
    // ... and its extra entry gives way to the leader's first of term 2.
    let mut update = meta("a", 2);
    update.block_hash_list = vec!["term-2".into()];
    assert_eq!(c.update_file(0, update.clone(), ROUNDS), Some(2));
    c.heartbeat(0);
    for id in 0..3 {
        assert_eq!(terms(&c, id), [1, 2], "server {id}");
        assert_eq!(c.servers[id].map.get("a"), Some(&update));
    }
    assert_consistent(&mut c);
}

#[test]
fn restart_replays_the_committed_prefix() {
    let mut c = Cluster::new(3);
    c.set_leader(0);
    c.heartbeat(0);
    c.update_file(0, meta("a", 1), ROUNDS);
    c.update_file(0, meta("a", 2), ROUNDS);
    c.heartbeat(0);
    for id in 0..3 {
        c.restart(id);
        assert_eq!(c.servers[id].map.get("a"), Some(&meta("a", 2)));
        assert!(!c.core(id).is_leader());
    }
    assert_consistent(&mut c);
}

/// Seeds to run: `RAFT_SEED` alone, or the first `RAFT_SCHEDULES`
/// (`default` without it).
fn seeds(default: u64) -> Vec<u64> {
    let env = |name| {
        std::env::var(name)
            .ok()
            .and_then(|v: String| v.parse::<u64>().ok())
    };
    match env("RAFT_SEED") {
        Some(seed) => vec![seed],
        None => (0..env("RAFT_SCHEDULES").unwrap_or(default)).collect(),
    }
}

fn run_schedules(size: usize, test: &str) {
    run(size, test, Schedule::new, SCHEDULES, STEPS);
}

fn run_election_schedules(size: usize, test: &str) {
    run(
        size,
        test,
        Schedule::with_elections,
        ELECTION_SCHEDULES,
        ELECTION_STEPS,
    );
}

/// Runs the schedules `start` makes of the seeds (`schedules` by default),
/// `steps` steps each, checking safety after every step and liveness at
/// the end.
fn run(size: usize, test: &str, start: fn(usize, u64) -> Schedule, schedules: u64, steps: usize) {
    for seed in seeds(schedules) {
        let mut schedule = start(size, seed);
        for step in 0..=steps {
            let outcome = if step < steps {
                schedule.step().and_then(|()| schedule.cluster.check())
            } else {
                schedule.check_liveness()
            };
            if let Err(problem) = outcome {
                panic!(
                    "{size} servers, seed {seed}, step {step}: {problem}\n\
                     events: {:?}\n\
                     reproduce: RAFT_SEED={seed} cargo test --test raft_properties {test}",
                    schedule.events
                );
            }
        }
    }
}

#[test]
fn random_schedules_3_servers() {
    run_schedules(3, "random_schedules_3_servers");
}

#[test]
fn random_schedules_5_servers() {
    run_schedules(5, "random_schedules_5_servers");
}

#[test]
fn random_election_schedules_3_servers() {
    run_election_schedules(3, "random_election_schedules_3_servers");
}

#[test]
fn random_election_schedules_5_servers() {
    run_election_schedules(5, "random_election_schedules_5_servers");
}

/// A fresh `size`-server cluster with elections, after its first leader
/// was elected; that leader.
fn elected(size: usize, seed: u64) -> (Schedule, ServerId) {
    let mut s = Schedule::with_elections(size, seed);
    let leader = s.tick_until_leader(LIVENESS_TICKS).unwrap();
    (s, leader)
}

fn all_terms(s: &Schedule) -> Vec<Term> {
    (0..s.cluster.size())
        .map(|i| s.cluster.core(i).term())
        .collect()
}

/// One tick of every server, then everything in flight delivered.
fn tick(s: &mut Schedule) {
    s.tick_all();
    s.deliver_all().unwrap();
}

/// Proposes `meta` on `leader` and replicates it; whether it committed.
fn commit(s: &mut Schedule, leader: ServerId, meta: FileMetaData) -> bool {
    let index = s.cluster.propose(leader, meta).unwrap();
    s.replicate(leader, 4);
    s.deliver_all().unwrap();
    s.cluster.core(leader).commit_index() >= index
}

#[test]
fn a_partitioned_minority_server_never_disrupts_the_leader_and_rejoins() {
    let cases = [(3, 1), (3, 2), (5, 3), (5, 4)];
    for ((size, seed), alone) in cases.into_iter().flat_map(|c| [(c, true), (c, false)]) {
        let (mut s, leader) = elected(size, seed);
        let term = s.cluster.core(leader).term();
        let cut = (leader + 1) % size;
        // Cut off from everyone (PreVotes reach nobody), or only from the
        // leader (PreVotes reach followers, which hear from the leader).
        if alone {
            s.isolate(cut);
        } else {
            s.cut(leader, cut, true);
        }
        for t in 0..20 * N {
            tick(&mut s);
            assert_eq!(all_terms(&s), vec![term; size], "seed {seed}, tick {t}");
            assert_eq!(s.leader(), Some(leader), "seed {seed}, tick {t}");
        }
        assert!(!s.cluster.core(cut).is_leader());
        s.heal();
        for _ in 0..2 {
            tick(&mut s);
        }
        assert_eq!(all_terms(&s), vec![term; size], "seed {seed}");
        assert_eq!(s.leader(), Some(leader));
        assert_eq!(s.cluster.core(cut).leader_hint(), Some(leader));
        assert!(commit(&mut s, leader, meta("a", 1)));
        assert_eq!(
            s.cluster.servers[cut].map.get("a"),
            Some(&meta("a", 1)),
            "seed {seed}: the rejoined server follows"
        );
    }
}

#[test]
fn a_leader_cut_off_from_the_majority_steps_down_within_an_election_timeout() {
    for (size, seed) in [(3, 5), (3, 6), (5, 7), (5, 8)] {
        let (mut s, old) = elected(size, seed);
        let term = s.cluster.core(old).term();
        assert!(commit(&mut s, old, meta("a", 1)));
        // Its last quorum check may have come just before the cut.
        s.isolate(old);
        let mut stepped_down = None;
        let mut successor = None;
        for t in 1..=LIVENESS_TICKS {
            tick(&mut s);
            if stepped_down.is_none() && !s.cluster.core(old).is_leader() {
                stepped_down = Some(t);
            }
            if let Some(new) = s.leader().filter(|&l| l != old) {
                successor = Some(new);
            }
            if stepped_down.is_some() && successor.is_some() {
                break;
            }
        }
        let down = stepped_down.expect("the old leader steps down");
        assert!(
            down <= 2 * N,
            "seed {seed}: stepped down {down} ticks after the cut"
        );
        let new = successor.expect("the majority elects a leader");
        assert!(s.cluster.core(new).term() > term);
        assert_eq!(
            s.cluster.core(old).term(),
            term,
            "seed {seed}: no term raised alone"
        );
        assert_eq!(s.cluster.servers[new].map.get("a"), Some(&meta("a", 1)));
        s.heal();
        for _ in 0..2 {
            tick(&mut s);
        }
        assert_eq!(s.leader(), Some(new));
        assert_eq!(s.cluster.core(old).leader_hint(), Some(new));
    }
}

#[test]
fn a_stale_server_cannot_win_even_with_set_leader() {
    for (size, seed) in [(3, 9), (3, 10), (5, 11), (5, 12)] {
        let (mut s, leader) = elected(size, seed);
        let stale = (leader + 1) % size;
        s.isolate(stale);
        assert!(commit(&mut s, leader, meta("a", 1)));
        s.heal();
        for attempt in 0..5 {
            s.cluster.set_leader(stale);
            s.deliver_all().unwrap();
            assert!(
                !s.cluster.core(stale).is_leader(),
                "seed {seed}, attempt {attempt}"
            );
        }
        let new = s.tick_until_leader(LIVENESS_TICKS).unwrap();
        let top = s.cluster.core(new).term();
        for term in 0..=top {
            assert_ne!(
                s.cluster.leader_of(term),
                Some(stale),
                "seed {seed}, term {term}"
            );
        }
        assert_eq!(s.cluster.servers[new].map.get("a"), Some(&meta("a", 1)));
    }
}
