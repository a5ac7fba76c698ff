//! The pure Raft core (`surfstore::raft::RaftCore`) in whole clusters, with
//! no network and no clock: the reference scenarios of SPEC §5, then seeded
//! random schedules checked for Raft's safety properties after every step,
//! and liveness at the end of each.
//!
//! `RAFT_SEED=<n> cargo test --test raft_properties` replays one seed (the
//! failure message names it); `RAFT_SCHEDULES=<n>` runs more schedules per
//! cluster size than the default.

// Test code: a failed unwrap is a failed test, with its location.
#![allow(clippy::unwrap_used)]

#[path = "raft_properties/cluster.rs"]
mod cluster;
#[path = "raft_properties/schedule.rs"]
mod schedule;

use cluster::Cluster;
use schedule::Schedule;
use surfstore::proto::FileMetaData;
use surfstore::raft::{LogIndex, Outgoing, Term};

/// Default schedules per cluster size, and steps per schedule.
const SCHEDULES: u64 = 1000;
const STEPS: usize = 200;

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

/// Seeds to run: `RAFT_SEED` alone, or the first `RAFT_SCHEDULES`.
fn seeds() -> Vec<u64> {
    let env = |name| {
        std::env::var(name)
            .ok()
            .and_then(|v: String| v.parse::<u64>().ok())
    };
    match env("RAFT_SEED") {
        Some(seed) => vec![seed],
        None => (0..env("RAFT_SCHEDULES").unwrap_or(SCHEDULES)).collect(),
    }
}

fn run_schedules(size: usize, test: &str) {
    for seed in seeds() {
        let mut schedule = Schedule::new(size, seed);
        for step in 0..=STEPS {
            let outcome = if step < STEPS {
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
