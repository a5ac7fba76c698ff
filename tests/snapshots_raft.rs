//! Snapshots and compaction from the outside (SPEC §9.2): real
//! `surfstore-raft-server` processes with a tiny `--snapshot-entries`, a
//! follower that missed compacted entries caught up over gRPC by
//! InstallSnapshot, and a server killed at each step of a compaction's write
//! that comes back with everything it had committed.

// Test code: a failed unwrap is a failed test, with its location.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use common::{Cluster, file_meta, start_durable_cluster, start_partitionable_cluster};
use surfstore::hash::hash_block;
use surfstore::proto::{AppendEntryInput, FileMetaData, RaftInternalState, UpdateOperation};
use surfstore::raft::storage::{LOG_FILE, SNAPSHOT_FILE};
use surfstore::storage::Wal;

/// Compaction every five applied entries, heartbeats only when asked.
const ARGS: &[&str] = &["--heartbeat-ms", "0", "--snapshot-entries", "5"];

fn update(name: &str, version: i32) -> FileMetaData {
    let hash = hash_block(format!("{name}/{version}").as_bytes());
    file_meta(name, version, &[&hash])
}

fn applied(state: &RaftInternalState) -> HashMap<String, FileMetaData> {
    state.meta_map.clone().unwrap_or_default().file_info_map
}

/// Where the log after a server's snapshot ends.
fn log_end(state: &RaftInternalState) -> i64 {
    state.first_log_index + state.log.len() as i64
}

/// After a heartbeat round, every server holds the leader's map and its log
/// up to the same end.
async fn assert_converged(cluster: &Cluster, leader: usize) {
    assert!(cluster.heartbeat(leader).await);
    let expected = cluster.state(leader).await;
    for i in 0..cluster.addrs.len() {
        let state = cluster.state(i).await;
        assert_eq!(applied(&state), applied(&expected), "server {i}: map");
        assert_eq!(log_end(&state), log_end(&expected), "server {i}: log end");
    }
}

#[tokio::test]
async fn a_follower_that_missed_compacted_entries_gets_the_snapshot_over_grpc() {
    let mut cluster = start_durable_cluster(3, ARGS).await;
    cluster.set_leader(0).await;
    assert!(cluster.heartbeat(0).await);
    cluster.kill(2);
    for version in 1..=4 {
        for name in ["a", "b", "c", "d", "e", "f"] {
            assert_eq!(
                cluster.update(0, update(name, version)).await.unwrap(),
                version
            );
        }
    }
    let leader = cluster.state(0).await;
    assert_eq!(leader.first_log_index, 20, "24 entries, compacted every 5");
    assert_eq!(leader.log.len(), 4);
    cluster.restart(2).await;
    assert_converged(&cluster, 0).await;
    let follower = cluster.state(2).await;
    assert!(follower.first_log_index >= 20, "caught up by the snapshot");
    // It takes part as before: it restarts from its own snapshot, and a
    // new leader it becomes serves the same map.
    cluster.kill(2);
    cluster.restart(2).await;
    assert_eq!(applied(&cluster.state(2).await), applied(&leader));
    cluster.set_leader(2).await;
    assert_eq!(cluster.update(2, update("a", 5)).await.unwrap(), 5);
    assert_converged(&cluster, 2).await;
}

/// Copies the files of `from` into `to` (made empty first).
fn copy_dir(from: &Path, to: &Path) {
    if to.exists() {
        std::fs::remove_dir_all(to).unwrap();
    }
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
    }
}

/// The first half of the file at `path`, as a write cut by a kill leaves it.
fn half_of(path: &Path) -> Vec<u8> {
    let bytes = std::fs::read(path).unwrap();
    bytes[..bytes.len() / 2].to_vec()
}

/// The bytes the WAL's records in `dir` take (its file is allocated ahead).
fn log_bytes(dir: &Path) -> u64 {
    Wal::records_end(&dir.join(LOG_FILE)).unwrap()
}

/// A temporary file beside `name`, as `Wal::replace` writes it.
fn tmp(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{name}.tmp"))
}

#[tokio::test]
async fn a_server_killed_at_each_step_of_a_compaction_loses_nothing() {
    let (mut cluster, network) = start_partitionable_cluster(3, ARGS).await;
    cluster.set_leader(0).await;
    assert!(cluster.heartbeat(0).await);
    let files: Vec<FileMetaData> = ["a", "b", "c", "d", "e"]
        .iter()
        .map(|n| update(n, 1))
        .collect();
    // Server 1 gets the five entries told that only four committed: no
    // compaction yet. The leader would tell it the fifth's commit at once,
    // so the entries come from the test, as the original's leader sends
    // them (no leaderId), while the leader cannot reach it.
    cluster.crash(1).await;
    for meta in &files {
        assert_eq!(cluster.update(0, meta.clone()).await.unwrap(), 1);
    }
    network.isolate(1);
    cluster.restore(1).await;
    // The leader's log: it compacted it away, having applied all five.
    let term = cluster.state(0).await.term;
    let request = AppendEntryInput {
        term,
        prev_log_index: -1,
        prev_log_term: -1,
        entries: files
            .iter()
            .map(|meta| UpdateOperation {
                term,
                file_meta_data: Some(meta.clone()),
            })
            .collect(),
        leader_commit: 3,
        ..AppendEntryInput::default()
    };
    let reply = cluster.client(1).append_entries(request).await.unwrap();
    assert!(reply.into_inner().success);
    // Its data dir now is the "before" of a compaction.
    let saved = tempfile::tempdir().unwrap();
    let before = saved.path().join("before");
    let after = saved.path().join("after");
    let dir = cluster.data_dir(1).to_path_buf();
    cluster.crash(1).await;
    cluster.kill(1);
    assert!(!dir.join(SNAPSHOT_FILE).exists());
    copy_dir(&dir, &before);
    // Told the commit index, it applies the fifth entry and compacts.
    network.heal();
    cluster.restart(1).await;
    assert!(cluster.heartbeat(0).await);
    let compacted = cluster.state(1).await;
    assert_eq!(compacted.first_log_index, 5);
    assert!(compacted.log.is_empty());
    cluster.crash(1).await;
    cluster.kill(1);
    copy_dir(&dir, &after);
    assert!(log_bytes(&after) < log_bytes(&before), "the WAL was cut");

    // The directory as a kill at each step of the write leaves it.
    type Step = fn(&Path, &Path, &Path);
    let steps: [(&str, Step); 5] = [
        ("writing the snapshot", |dir, before, after| {
            copy_dir(before, dir);
            let half = half_of(&after.join(SNAPSHOT_FILE));
            std::fs::write(tmp(dir, SNAPSHOT_FILE), half).unwrap();
        }),
        ("after renaming the snapshot", |dir, before, after| {
            copy_dir(before, dir);
            std::fs::copy(after.join(SNAPSHOT_FILE), dir.join(SNAPSHOT_FILE)).unwrap();
        }),
        ("writing the new WAL", |dir, before, after| {
            copy_dir(before, dir);
            std::fs::copy(after.join(SNAPSHOT_FILE), dir.join(SNAPSHOT_FILE)).unwrap();
            let half = half_of(&after.join(LOG_FILE));
            std::fs::write(tmp(dir, LOG_FILE), half).unwrap();
        }),
        ("after renaming the new WAL", |dir, _before, after| {
            copy_dir(after, dir);
        }),
        ("before anything", |dir, before, _after| {
            copy_dir(before, dir);
        }),
    ];
    for (step, prepare) in steps {
        prepare(&dir, &before, &after);
        cluster.restart(1).await;
        let state = cluster.state(1).await;
        let held = applied(&state);
        assert!(
            held.len() >= 4
                && files[..held.len()]
                    .iter()
                    .all(|m| held.get(&m.filename) == Some(m)),
            "killed {step}: it lost committed updates: {held:?}"
        );
        assert_eq!(log_end(&state), 5, "killed {step}: log");
        assert_converged(&cluster, 0).await;
        let expected: HashMap<String, FileMetaData> = files
            .iter()
            .map(|m| (m.filename.clone(), m.clone()))
            .collect();
        assert_eq!(applied(&cluster.state(1).await), expected, "killed {step}");
        cluster.crash(1).await;
        cluster.kill(1);
    }
}
