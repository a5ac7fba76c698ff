//! `surfstore-raft-server --data-dir` from the outside (SPEC §7): a Raft
//! server killed with SIGKILL and started again on the same port and data
//! directory comes back with its term, log and the commit index it knew, and
//! serves the committed map before anyone calls SetLeader.
//!
//! Automatic heartbeats are off ([`MANUAL_HEARTBEATS`]) unless a test says
//! otherwise, so that a server's state changes only when the test acts.

// Test code: a failed unwrap is a failed test, with its location.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::{
    Cluster, MANUAL_HEARTBEATS, cut_wal_records, eventually, file_meta, start_durable_cluster,
};
use surfstore::hash::hash_block;
use surfstore::proto::{AppendEntryInput, FileMetaData, RaftInternalState, UpdateOperation};
use surfstore::raft::storage::LOG_FILE;

/// How long replication with automatic heartbeats may take to show.
const CATCH_UP_WITHIN: Duration = Duration::from_secs(10);

/// The `n` files the update streams write, version 1 each.
fn numbered_files(n: usize) -> Vec<FileMetaData> {
    (0..n)
        .map(|k| {
            let name = format!("file-{k:02}");
            file_meta(&name, 1, &[&hash_block(name.as_bytes())])
        })
        .collect()
}

fn op(term: i64, meta: &FileMetaData) -> UpdateOperation {
    UpdateOperation {
        term,
        file_meta_data: Some(meta.clone()),
    }
}

/// The applied map of a GetInternalState answer.
fn applied(state: &RaftInternalState) -> HashMap<String, FileMetaData> {
    state.meta_map.clone().unwrap_or_default().file_info_map
}

fn as_map(metas: &[FileMetaData]) -> HashMap<String, FileMetaData> {
    metas
        .iter()
        .map(|m| (m.filename.clone(), m.clone()))
        .collect()
}

/// Asserts every server holds `log` and has applied `map`.
async fn assert_everyone_holds(cluster: &Cluster, log: &[UpdateOperation], map: &[FileMetaData]) {
    for i in 0..cluster.addrs.len() {
        let state = cluster.state(i).await;
        assert_eq!(state.log, log, "server {i}: log");
        assert_eq!(applied(&state), as_map(map), "server {i}: metaMap");
    }
}

#[tokio::test]
async fn a_whole_cluster_killed_comes_back_with_its_logs_and_committed_maps() {
    let mut cluster = start_durable_cluster(3, MANUAL_HEARTBEATS).await;
    cluster.set_leader(0).await;
    assert!(cluster.heartbeat(0).await);
    let files = numbered_files(50);
    for meta in &files {
        assert_eq!(cluster.update(0, meta.clone()).await.unwrap(), 1);
    }

    // Crash freezes each server (a crashed server neither sends nor accepts
    // AppendEntries), so the states read now are exactly what is killed.
    for i in [1, 2, 0] {
        cluster.crash(i).await;
    }
    let mut before = Vec::new();
    for i in 0..3 {
        before.push(cluster.state(i).await);
    }
    let log: Vec<UpdateOperation> = files.iter().map(|m| op(1, m)).collect();
    assert_eq!(before[0].log, log);
    assert_eq!(applied(&before[0]), as_map(&files));

    for i in 0..3 {
        cluster.kill(i);
    }
    for i in 0..3 {
        cluster.restart(i).await;
    }

    for (i, was) in before.iter().enumerate() {
        let now = cluster.state(i).await;
        assert!(!now.is_leader, "server {i} leads after a restart");
        assert!(!cluster.is_crashed(i).await, "server {i} restarted crashed");
        assert_eq!(now.term, was.term, "server {i}: term");
        assert_eq!(now.log, was.log, "server {i}: log");
        assert_eq!(applied(&now), applied(was), "server {i}: metaMap");
    }
    // The follower whose acknowledgement committed the last entry got it
    // after the 49th had committed, so it knew that and replays 49 files.
    assert!(
        (1..3).any(|i| applied(&before[i]).len() >= 49),
        "no follower knew the commit index"
    );

    cluster.set_leader(0).await;
    let leader = cluster.state(0).await;
    assert!(leader.is_leader);
    assert_eq!(leader.term, before[0].term + 1);
    assert!(cluster.heartbeat(0).await);
    assert_everyone_holds(&cluster, &log, &files).await;
    // The version rule continues from the replayed map.
    assert_eq!(cluster.update(0, files[0].clone()).await.unwrap(), -1);
}

#[tokio::test]
async fn a_follower_killed_mid_stream_catches_up_after_restart() {
    // Automatic heartbeats (the default period) carry the catch-up.
    let mut cluster = start_durable_cluster(3, &[]).await;
    cluster.set_leader(0).await;
    let files = numbered_files(60);
    let acked = Arc::new(AtomicUsize::new(0));
    let writer = {
        let mut client = cluster.client(0);
        let files = files.clone();
        let acked = Arc::clone(&acked);
        tokio::spawn(async move {
            for meta in files {
                let version = client.update_file(meta).await.unwrap().into_inner().version;
                assert_eq!(version, 1);
                acked.fetch_add(1, Ordering::SeqCst);
            }
        })
    };
    let acked_at_least = |n: usize| {
        let acked = Arc::clone(&acked);
        async move || (acked.load(Ordering::SeqCst) >= n).then_some(())
    };

    eventually("15 updates acked", CATCH_UP_WITHIN, acked_at_least(15)).await;
    cluster.kill(2);
    eventually("35 updates acked", CATCH_UP_WITHIN, acked_at_least(35)).await;
    cluster.restart(2).await;
    tokio::time::timeout(CATCH_UP_WITHIN, writer)
        .await
        .expect("the updates did not finish")
        .unwrap();

    let leader = cluster.state(0).await;
    assert_eq!(leader.log.len(), files.len());
    assert_eq!(applied(&leader), as_map(&files));
    eventually("server 2 catches up", CATCH_UP_WITHIN, async || {
        let state = cluster.state(2).await;
        (state.log == leader.log && applied(&state) == applied(&leader)).then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_log_cut_mid_record_loads_without_that_record() {
    let mut cluster = start_durable_cluster(3, MANUAL_HEARTBEATS).await;
    let kept = file_meta("kept", 1, &[&hash_block(b"kept")]);
    let torn = file_meta("torn", 1, &[&hash_block(b"torn")]);
    // Server 1 is driven directly as a follower of a term-1 leader, so the
    // test knows its records: the last save appends `torn` and commits it.
    let appends = [
        (-1, vec![op(1, &kept)], -1),
        (0, vec![], 0),
        (0, vec![op(1, &torn)], 1),
    ];
    let mut follower = cluster.client(1);
    for (prev_log_index, entries, leader_commit) in appends {
        let reply = follower
            .append_entries(AppendEntryInput {
                term: 1,
                prev_log_index,
                prev_log_term: 1,
                entries,
                leader_commit,
                // Like the original tests: no leader id, original semantics.
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert!(reply.success, "AppendEntries refused: {reply:?}");
    }
    let before = cluster.state(1).await;
    assert_eq!(applied(&before), as_map(&[kept.clone(), torn.clone()]));

    cluster.kill(1);
    let wal = cluster.data_dir(1).join(LOG_FILE);
    cut_wal_records(&wal, 3);
    cluster.restart(1).await;

    // The torn save is gone whole: neither its entry nor its commit.
    let state = cluster.state(1).await;
    assert_eq!(state.term, 1);
    assert_eq!(state.log, [op(1, &kept)]);
    assert_eq!(applied(&state), as_map(std::slice::from_ref(&kept)));

    // And it serves: it leads, replicates what it kept and takes new writes.
    cluster.set_leader(1).await;
    assert_eq!(cluster.state(1).await.term, 2);
    assert!(cluster.heartbeat(1).await);
    assert_eq!(cluster.update(1, torn.clone()).await.unwrap(), 1);
    assert!(cluster.heartbeat(1).await);
    assert_everyone_holds(&cluster, &[op(1, &kept), op(2, &torn)], &[kept, torn]).await;
}

/// Block size of the client test: small, so files span several blocks.
const BLOCK_SIZE: usize = 1024;

/// Files of several shapes: one block, many blocks, a partial last block,
/// repeated blocks, empty, in a subdirectory.
fn write_files(dir: &Path) {
    let pattern = |len: usize, seed: usize| -> Vec<u8> {
        (0..len).map(|i| ((i * 7 + seed) % 251) as u8).collect()
    };
    std::fs::write(dir.join("short.txt"), "hello, durable surfstore\n").unwrap();
    std::fs::write(dir.join("five-blocks.bin"), pattern(5 * BLOCK_SIZE, 1)).unwrap();
    std::fs::write(dir.join("large.bin"), pattern(100_000, 2)).unwrap();
    std::fs::write(dir.join("repeated.bin"), pattern(BLOCK_SIZE, 3).repeat(3)).unwrap();
    std::fs::write(dir.join("empty"), "").unwrap();
    std::fs::create_dir(dir.join("sub")).unwrap();
    std::fs::write(dir.join("sub").join("nested.txt"), pattern(2500, 4)).unwrap();
}

fn assert_synced(cluster: &Cluster, dir: &Path, what: &str) {
    let (out, _) = cluster.sync(dir, BLOCK_SIZE);
    assert!(
        out.status.success(),
        "{what} failed ({:?}): {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn synced_files_survive_killing_every_server() {
    let mut cluster = start_durable_cluster(3, MANUAL_HEARTBEATS).await;
    cluster.set_leader(0).await;
    assert!(cluster.heartbeat(0).await);
    let uploaded = tempfile::tempdir().unwrap();
    write_files(uploaded.path());
    assert_synced(&cluster, uploaded.path(), "upload");

    cluster.kill_block();
    for i in 0..3 {
        cluster.kill(i);
    }
    cluster.restart_block().await;
    for i in 0..3 {
        cluster.restart(i).await;
    }
    cluster.set_leader(0).await;
    assert!(cluster.heartbeat(0).await);

    let downloaded = tempfile::tempdir().unwrap();
    assert_synced(&cluster, downloaded.path(), "download");
    let expected = common::synced_files(uploaded.path());
    assert_eq!(expected.len(), 6);
    assert_eq!(common::synced_files(downloaded.path()), expected);
}

#[tokio::test]
async fn term_survives_a_restart() {
    let mut cluster = start_durable_cluster(3, MANUAL_HEARTBEATS).await;
    cluster.set_leader(0).await;
    assert!(cluster.heartbeat(0).await);
    assert_eq!(cluster.state(1).await.term, 1);

    cluster.kill(1);
    cluster.restart(1).await;
    let state = cluster.state(1).await;
    assert_eq!(state.term, 1);
    assert!(!state.is_leader);

    // Had it forgotten term 1, SetLeader would make it a second leader of
    // term 1; it leads term 2 instead, and the old leader follows it.
    cluster.set_leader(1).await;
    assert_eq!(cluster.state(1).await.term, 2);
    assert!(cluster.heartbeat(1).await);
    let old = cluster.state(0).await;
    assert_eq!((old.term, old.is_leader), (2, false));
}
