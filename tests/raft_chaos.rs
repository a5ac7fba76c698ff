//! The chaos suite (SPEC §5): Raft clusters of real `surfstore-raft-server`
//! processes, driven and inspected only through the RaftSurfstore gRPC API,
//! one test per scenario.
//!
//! The reference scenarios run with automatic heartbeats off
//! ([`MANUAL_HEARTBEATS`]) so that only explicit `SendHeartbeat` calls
//! replicate, exactly as the original tests assume; a few scenarios run with
//! the default automatic heartbeats. The last tests drive the cluster with
//! the real `surfstore-client`.

// Test code: a failed unwrap is a failed test, with its location.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use common::{
    Cluster, MANUAL_HEARTBEATS, assert_status, eventually, file_meta, snapshot, start_cluster,
    synced_files, within,
};
use surfstore::hash::hash_block;
use surfstore::proto::{AppendEntryInput, AppendEntryOutput, FileMetaData, UpdateOperation};
use tokio::task::JoinHandle;
use tonic::{Code, Status};

/// How long a call must stay blocked to count as blocked.
const BLOCKED_FOR: Duration = Duration::from_millis(500);

/// How long a blocked call may take to finish once it can.
const UNBLOCK_WITHIN: Duration = Duration::from_secs(10);

/// How long automatic heartbeats (100 ms by default) may take to show.
const AUTO_WITHIN: Duration = Duration::from_secs(5);

/// The message SPEC §3 fixes for a crashed server.
const CRASHED: &str = "Server is crashed.";

/// The message SPEC §3 fixes for a non-leader.
const NOT_LEADER: &str = "Server is not the leader";

fn op(term: i64, meta: &FileMetaData) -> UpdateOperation {
    UpdateOperation {
        term,
        file_meta_data: Some(meta.clone()),
    }
}

fn files(metas: &[&FileMetaData]) -> HashMap<String, FileMetaData> {
    metas
        .iter()
        .map(|m| (m.filename.clone(), (*m).clone()))
        .collect()
}

/// Asserts server `i`'s GetInternalState: leadership, term, whole log and
/// applied map.
async fn assert_state(
    cluster: &Cluster,
    i: usize,
    leader: bool,
    term: i64,
    log: &[UpdateOperation],
    map: &[&FileMetaData],
) {
    let state = cluster.state(i).await;
    assert_eq!(state.is_leader, leader, "server {i}: isLeader");
    assert_eq!(state.term, term, "server {i}: term");
    assert_eq!(state.log, log, "server {i}: log");
    let applied = state.meta_map.unwrap_or_default().file_info_map;
    assert_eq!(applied, files(map), "server {i}: metaMap");
}

/// Asserts the state of every server; only `leader` is a leader.
async fn assert_all(
    cluster: &Cluster,
    leader: usize,
    term: i64,
    log: &[UpdateOperation],
    map: &[&FileMetaData],
) {
    for i in 0..cluster.addrs.len() {
        assert_state(cluster, i, i == leader, term, log, map).await;
    }
}

/// Starts `UpdateFile(meta)` on server `i` in the background.
fn spawn_update(
    cluster: &Cluster,
    i: usize,
    meta: &FileMetaData,
) -> JoinHandle<Result<i32, Status>> {
    let mut client = cluster.client(i);
    let meta = meta.clone();
    tokio::spawn(async move {
        client
            .update_file(meta)
            .await
            .map(|v| v.into_inner().version)
    })
}

/// Asserts a background call is still running after [`BLOCKED_FOR`].
async fn assert_blocked<T>(handle: &JoinHandle<T>, what: &str) {
    tokio::time::sleep(BLOCKED_FOR).await;
    assert!(!handle.is_finished(), "{what} returned without a majority");
}

/// Awaits a background call that must now finish.
async fn finished<T>(handle: JoinHandle<T>, what: &str) -> T {
    tokio::time::timeout(UNBLOCK_WITHIN, handle)
        .await
        .unwrap_or_else(|_| panic!("{what} still blocked after {UNBLOCK_WITHIN:?}"))
        .unwrap_or_else(|e| panic!("{what} task failed: {e}"))
}

/// Waits until server `i`'s log has `len` entries.
async fn wait_log_len(cluster: &Cluster, i: usize, len: usize) {
    eventually(
        &format!("server {i} log of {len}"),
        AUTO_WITHIN,
        async || (cluster.state(i).await.log.len() == len).then_some(()),
    )
    .await;
}

/// SetLeader then a heartbeat that a majority acknowledges.
async fn lead(cluster: &Cluster, i: usize) {
    cluster.set_leader(i).await;
    assert!(cluster.heartbeat(i).await, "heartbeat of new leader {i}");
}

#[tokio::test]
async fn terms_after_two_set_leader_calls() {
    let cluster = start_cluster(3, MANUAL_HEARTBEATS).await;
    cluster.set_leader(0).await;
    assert!(cluster.heartbeat(0).await);
    // Followers answer SendHeartbeat with false, not an error.
    assert!(!cluster.heartbeat(1).await);
    assert!(!cluster.heartbeat(2).await);
    assert_all(&cluster, 0, 1, &[], &[]).await;

    cluster.set_leader(1).await;
    assert!(cluster.heartbeat(1).await);
    assert!(!cluster.heartbeat(0).await);
    assert_all(&cluster, 1, 2, &[], &[]).await;
}

#[tokio::test]
async fn followers_get_an_update_after_one_heartbeat() {
    let cluster = start_cluster(3, MANUAL_HEARTBEATS).await;
    lead(&cluster, 0).await;
    let f = file_meta("testFile1", 1, &[&hash_block(b"one")]);
    assert_eq!(cluster.update(0, f.clone()).await.unwrap(), 1);
    assert!(cluster.heartbeat(0).await);
    assert_all(&cluster, 0, 1, &[op(1, &f)], &[&f]).await;
}

/// Every call but the chaos API answers `Server is crashed.` on server `i`.
async fn assert_refuses_everything(cluster: &Cluster, i: usize) {
    let mut c = cluster.client(i);
    let what = |rpc: &str| format!("{rpc} on crashed server {i}");
    assert_status(
        c.update_file(file_meta("x", 1, &[])).await,
        Code::Unavailable,
        CRASHED,
        &what("UpdateFile"),
    );
    assert_status(
        c.get_file_info_map(()).await,
        Code::Unavailable,
        CRASHED,
        &what("GetFileInfoMap"),
    );
    assert_status(
        c.get_block_store_addr(()).await,
        Code::Unavailable,
        CRASHED,
        &what("GetBlockStoreAddr"),
    );
    assert_status(
        c.send_heartbeat(()).await,
        Code::Unavailable,
        CRASHED,
        &what("SendHeartbeat"),
    );
    let append = AppendEntryInput {
        term: 5,
        prev_log_index: -1,
        ..Default::default()
    };
    assert_status(
        c.append_entries(append).await,
        Code::Unavailable,
        CRASHED,
        &what("AppendEntries"),
    );
    assert_status(
        c.set_leader(()).await,
        Code::Unavailable,
        CRASHED,
        &what("SetLeader"),
    );
}

#[tokio::test]
async fn a_crashed_server_returns_the_crashed_error() {
    let cluster = start_cluster(3, MANUAL_HEARTBEATS).await;
    lead(&cluster, 0).await;
    let f = file_meta("f", 1, &[]);
    assert_eq!(cluster.update(0, f.clone()).await.unwrap(), 1);
    assert!(cluster.heartbeat(0).await);

    for i in [1, 0] {
        assert!(!cluster.is_crashed(i).await);
        cluster.crash(i).await;
        assert!(cluster.is_crashed(i).await);
        // Crashing twice is harmless.
        cluster.crash(i).await;
        assert_refuses_everything(&cluster, i).await;
        // The refused calls changed nothing: no new term, no leadership, no
        // entry from the refused AppendEntries or UpdateFile.
        assert_state(&cluster, i, i == 0, 1, &[op(1, &f)], &[&f]).await;
        cluster.restore(i).await;
        assert!(!cluster.is_crashed(i).await);
        assert!(cluster.heartbeat(0).await, "after restoring {i}");
    }
    assert_all(&cluster, 0, 1, &[op(1, &f)], &[&f]).await;
}

/// SetLeader 0, heartbeat, crash 1 and 2, and start `UpdateFile(f)` on 0,
/// which must block: the leader logs it, nobody else does, nothing applies.
async fn block_an_update(cluster: &Cluster, f: &FileMetaData) -> JoinHandle<Result<i32, Status>> {
    lead(cluster, 0).await;
    cluster.crash(1).await;
    cluster.crash(2).await;
    let update = spawn_update(cluster, 0, f);
    wait_log_len(cluster, 0, 1).await;
    assert_blocked(&update, "UpdateFile").await;
    assert_state(cluster, 0, true, 1, &[op(1, f)], &[]).await;
    assert_state(cluster, 1, false, 1, &[], &[]).await;
    assert_state(cluster, 2, false, 1, &[], &[]).await;
    update
}

#[tokio::test]
async fn update_blocks_while_the_majority_is_crashed() {
    let cluster = start_cluster(3, MANUAL_HEARTBEATS).await;
    let f = file_meta("testFile1", 1, &[]);
    let update = block_an_update(&cluster, &f).await;
    // Still blocked a while later, and still not applied.
    assert_blocked(&update, "UpdateFile").await;
    assert_state(&cluster, 0, true, 1, &[op(1, &f)], &[]).await;
}

#[tokio::test]
async fn blocked_update_completes_by_itself_after_restore() {
    // Automatic heartbeats are off: nothing but the blocked call's own
    // retries can complete it.
    let cluster = start_cluster(3, MANUAL_HEARTBEATS).await;
    let f = file_meta("testFile1", 1, &[&hash_block(b"data")]);
    let update = block_an_update(&cluster, &f).await;
    cluster.restore(1).await;
    cluster.restore(2).await;
    assert_eq!(finished(update, "UpdateFile").await.unwrap(), 1);

    // Committed on the leader, held by a majority, logged exactly once.
    assert_state(&cluster, 0, true, 1, &[op(1, &f)], &[&f]).await;
    let mut holders = 1;
    for i in [1, 2] {
        let log = cluster.state(i).await.log;
        assert!(log.is_empty() || log == [op(1, &f)], "server {i}: {log:?}");
        holders += usize::from(!log.is_empty());
    }
    assert!(holders >= 2, "committed on a minority");

    assert!(cluster.heartbeat(0).await);
    assert_all(&cluster, 0, 1, &[op(1, &f)], &[&f]).await;
}

/// `iterations` times on a fresh `size`-server cluster led by server 0, as
/// the original's tests do: an UpdateFile blocked by a crashed majority,
/// the majority restored, one SendHeartbeat, then every follower's state
/// read at once. The round itself commits the entry; every follower must
/// have applied it when the call returns, whether the round or the leader's
/// own retries got there first. The crashed servers are the last ones, so
/// with 5 servers server 1 holds the entry before the round and matches at
/// its first exchange, before the others' replies commit it.
async fn heartbeat_commits_reach_every_follower(size: usize, iterations: u8) {
    let cluster = start_cluster(size, MANUAL_HEARTBEATS).await;
    lead(&cluster, 0).await;
    let crashed = size - size / 2;
    let metas: Vec<FileMetaData> = (0..iterations)
        .map(|i| file_meta(&format!("f{i:02}"), 1, &[&hash_block(&[i])]))
        .collect();
    for (n, f) in metas.iter().enumerate() {
        for i in size - crashed..size {
            cluster.crash(i).await;
        }
        let update = spawn_update(&cluster, 0, f);
        wait_log_len(&cluster, 0, n + 1).await;
        for i in size - crashed..size {
            cluster.restore(i).await;
        }
        assert!(cluster.heartbeat(0).await, "iteration {n}");
        for i in 1..size {
            let state = cluster.state(i).await;
            let applied = state.meta_map.unwrap_or_default().file_info_map;
            assert_eq!(
                (state.log.len(), applied.len()),
                (n + 1, n + 1),
                "iteration {n}: server {i}'s log and applied map"
            );
        }
        assert_eq!(finished(update, "UpdateFile").await.unwrap(), 1);
    }
    let log: Vec<UpdateOperation> = metas.iter().map(|m| op(1, m)).collect();
    assert_all(&cluster, 0, 1, &log, &metas.iter().collect::<Vec<_>>()).await;
}

#[tokio::test]
async fn a_heartbeat_that_commits_leaves_the_commit_applied_on_every_follower() {
    heartbeat_commits_reach_every_follower(3, 60).await;
}

#[tokio::test]
async fn with_5_servers_a_heartbeat_that_commits_reaches_a_follower_that_matched_first() {
    heartbeat_commits_reach_every_follower(5, 50).await;
}

#[tokio::test]
async fn two_updates_in_a_row() {
    let cluster = start_cluster(3, MANUAL_HEARTBEATS).await;
    lead(&cluster, 0).await;
    let v1 = file_meta("testFile1", 1, &[&hash_block(b"v1")]);
    let v2 = file_meta("testFile1", 2, &[&hash_block(b"v2")]);
    assert_eq!(cluster.update(0, v1.clone()).await.unwrap(), 1);
    assert_eq!(cluster.update(0, v2.clone()).await.unwrap(), 2);
    assert!(cluster.heartbeat(0).await);
    assert_all(&cluster, 0, 1, &[op(1, &v1), op(1, &v2)], &[&v2]).await;
}

#[tokio::test]
async fn a_rejected_update_is_logged_and_returns_minus_one() {
    let cluster = start_cluster(3, MANUAL_HEARTBEATS).await;
    lead(&cluster, 0).await;
    let v1 = file_meta("f", 1, &[]);
    let stale = file_meta("f", 1, &["0"]);
    let skip = file_meta("f", 3, &[]);
    assert_eq!(cluster.update(0, v1.clone()).await.unwrap(), 1);
    assert_eq!(cluster.update(0, stale.clone()).await.unwrap(), -1);
    assert_eq!(cluster.update(0, skip.clone()).await.unwrap(), -1);
    assert!(cluster.heartbeat(0).await);
    let log = [op(1, &v1), op(1, &stale), op(1, &skip)];
    assert_all(&cluster, 0, 1, &log, &[&v1]).await;
}

#[tokio::test]
async fn uncommitted_entries_are_overwritten_by_a_newer_leader() {
    let cluster = start_cluster(3, MANUAL_HEARTBEATS).await;
    let old = file_meta("testFile1", 1, &[&hash_block(b"old")]);
    let new = file_meta("testFile1", 1, &[&hash_block(b"new")]);
    let blocked = block_an_update(&cluster, &old).await;

    cluster.crash(0).await;
    assert_status(
        finished(blocked, "UpdateFile on a crashing leader").await,
        Code::Unavailable,
        CRASHED,
        "blocked UpdateFile after its server crashed",
    );
    cluster.restore(1).await;
    cluster.restore(2).await;
    lead(&cluster, 1).await;
    assert_eq!(cluster.update(1, new.clone()).await.unwrap(), 1);
    assert!(cluster.heartbeat(1).await);
    cluster.restore(0).await;
    assert!(cluster.heartbeat(1).await);

    assert_all(&cluster, 1, 2, &[op(2, &new)], &[&new]).await;
}

#[tokio::test]
async fn logs_stay_consistent_across_two_leaders_with_one_server_down_each_time() {
    let cluster = start_cluster(3, MANUAL_HEARTBEATS).await;
    let a = file_meta("a", 1, &[&hash_block(b"a")]);
    let b = file_meta("b", 1, &[&hash_block(b"b")]);

    lead(&cluster, 0).await;
    cluster.crash(2).await;
    assert_eq!(cluster.update(0, a.clone()).await.unwrap(), 1);
    assert!(cluster.heartbeat(0).await);
    cluster.restore(2).await;

    cluster.crash(0).await;
    lead(&cluster, 1).await;
    assert_eq!(cluster.update(1, b.clone()).await.unwrap(), 1);
    cluster.restore(0).await;
    assert!(cluster.heartbeat(1).await);

    assert_all(&cluster, 1, 2, &[op(1, &a), op(2, &b)], &[&a, &b]).await;
}

#[tokio::test]
async fn five_servers_new_leader_pushes_an_old_entry_without_committing_it() {
    let cluster = start_cluster(5, MANUAL_HEARTBEATS).await;
    let f = file_meta("testFile1", 1, &[]);
    lead(&cluster, 0).await;
    for i in [2, 3, 4] {
        cluster.crash(i).await;
    }
    let blocked = spawn_update(&cluster, 0, &f);
    // The live follower gets the entry; two of five is no majority.
    wait_log_len(&cluster, 1, 1).await;
    assert_blocked(&blocked, "UpdateFile with 2 of 5").await;
    cluster.crash(0).await;
    assert!(
        finished(blocked, "UpdateFile on a crashing leader")
            .await
            .is_err()
    );

    for i in [2, 3, 4] {
        cluster.restore(i).await;
    }
    lead(&cluster, 1).await;
    // Everyone reachable holds the term-1 entry, but a term-2 leader may not
    // commit it by counting replicas.
    for i in 1..5 {
        assert_state(&cluster, i, i == 1, 2, &[op(1, &f)], &[]).await;
    }
    cluster.restore(0).await;
    assert!(cluster.heartbeat(1).await);
    assert_all(&cluster, 1, 2, &[op(1, &f)], &[]).await;
}

#[tokio::test]
async fn a_new_leader_reads_an_earlier_terms_commit_that_a_follower_knows() {
    // 5 servers. Server 1 gets x while 2, 3 and 4 are down (no majority);
    // then 1 goes down and 2's acknowledgement commits x (0, 1, 2 hold it).
    // A heartbeat tells 2, not 1. Made leader without any write of its own
    // term, 1 cannot commit x by counting, but its read confirmation (or
    // the probes SetLeader starts) reaches 2, which knows x is committed:
    // the read must include x.
    let cluster = start_cluster(5, MANUAL_HEARTBEATS).await;
    let x = file_meta("x", 1, &[&hash_block(b"x")]);
    lead(&cluster, 0).await;
    for i in [2, 3, 4] {
        cluster.crash(i).await;
    }
    let update = spawn_update(&cluster, 0, &x);
    wait_log_len(&cluster, 1, 1).await;
    cluster.crash(1).await;
    cluster.restore(2).await;
    assert_eq!(finished(update, "UpdateFile").await.unwrap(), 1);
    assert!(!cluster.heartbeat(0).await, "2 of 5 acknowledged");
    assert_state(&cluster, 2, false, 1, &[op(1, &x)], &[&x]).await;

    cluster.crash(0).await;
    cluster.restore(1).await;
    cluster.restore(3).await;
    assert_state(&cluster, 1, false, 1, &[op(1, &x)], &[]).await;
    cluster.set_leader(1).await;
    let map = within("GetFileInfoMap", cluster.client(1).get_file_info_map(()))
        .await
        .expect("GetFileInfoMap on the new leader")
        .into_inner();
    assert_eq!(map.file_info_map, files(&[&x]), "the read missed x");
    assert_state(&cluster, 1, true, 2, &[op(1, &x)], &[&x]).await;
}

#[tokio::test]
async fn non_leaders_refuse_client_calls() {
    let cluster = start_cluster(3, MANUAL_HEARTBEATS).await;
    let f = file_meta("f", 1, &[]);
    // At first nobody leads.
    assert_status(
        cluster.client(0).get_file_info_map(()).await,
        Code::FailedPrecondition,
        NOT_LEADER,
        "GetFileInfoMap before any SetLeader",
    );
    lead(&cluster, 0).await;
    for i in [1, 2] {
        let mut c = cluster.client(i);
        let what = |rpc: &str| format!("{rpc} on follower {i}");
        assert_status(
            c.get_file_info_map(()).await,
            Code::FailedPrecondition,
            NOT_LEADER,
            &what("GetFileInfoMap"),
        );
        assert_status(
            c.update_file(f.clone()).await,
            Code::FailedPrecondition,
            NOT_LEADER,
            &what("UpdateFile"),
        );
        assert_status(
            c.get_block_store_addr(()).await,
            Code::FailedPrecondition,
            NOT_LEADER,
            &what("GetBlockStoreAddr"),
        );
        let beat = c.send_heartbeat(()).await.expect("follower SendHeartbeat");
        assert!(!beat.into_inner().flag, "{}", what("SendHeartbeat"));
    }
    // The refused update went nowhere; the leader serves what it was given.
    assert_all(&cluster, 0, 1, &[], &[]).await;
    let mut leader = cluster.client(0);
    let addr = leader.get_block_store_addr(()).await.unwrap().into_inner();
    assert_eq!(addr.addr, cluster.block.addr);
    let map = leader.get_file_info_map(()).await.unwrap().into_inner();
    assert!(map.file_info_map.is_empty());
}

#[tokio::test]
async fn reads_block_without_a_majority() {
    let cluster = start_cluster(3, MANUAL_HEARTBEATS).await;
    let f = file_meta("f", 1, &[&hash_block(b"f")]);
    lead(&cluster, 0).await;
    assert_eq!(cluster.update(0, f.clone()).await.unwrap(), 1);
    cluster.crash(1).await;
    cluster.crash(2).await;

    let mut c = cluster.client(0);
    let map = tokio::spawn(async move { c.get_file_info_map(()).await });
    let mut c = cluster.client(0);
    let addr = tokio::spawn(async move { c.get_block_store_addr(()).await });
    assert_blocked(&map, "GetFileInfoMap").await;
    assert!(
        !addr.is_finished(),
        "GetBlockStoreAddr returned without a majority"
    );

    cluster.restore(1).await;
    cluster.restore(2).await;
    let map = finished(map, "GetFileInfoMap").await.unwrap().into_inner();
    assert_eq!(map.file_info_map, files(&[&f]));
    let addr = finished(addr, "GetBlockStoreAddr")
        .await
        .unwrap()
        .into_inner();
    assert_eq!(addr.addr, cluster.block.addr);
}

#[tokio::test]
async fn an_old_leader_steps_down_after_a_newer_leaders_heartbeat() {
    let cluster = start_cluster(3, MANUAL_HEARTBEATS).await;
    lead(&cluster, 0).await;
    lead(&cluster, 1).await;
    assert_state(&cluster, 0, false, 2, &[], &[]).await;
    assert!(!cluster.heartbeat(0).await, "old leader still heartbeats");
    assert_status(
        cluster.update(0, file_meta("f", 1, &[])).await,
        Code::FailedPrecondition,
        NOT_LEADER,
        "UpdateFile on the old leader",
    );
    assert_all(&cluster, 1, 2, &[], &[]).await;
}

#[tokio::test]
async fn a_leader_steps_down_when_a_reply_carries_a_higher_term() {
    let cluster = start_cluster(3, MANUAL_HEARTBEATS).await;
    lead(&cluster, 0).await;
    // Server 1 moves to term 2 but tells nobody.
    cluster.set_leader(1).await;
    // Server 0's next round meets term 2 in 1's reply. Whether the round
    // itself reports success or an error is not fixed; what follows is.
    let _ = common::within("SendHeartbeat", cluster.client(0).send_heartbeat(())).await;
    let state = cluster.state(0).await;
    assert!(!state.is_leader, "leader kept leading after seeing term 2");
    assert_eq!(state.term, 2);
}

#[tokio::test]
async fn a_crashed_servers_internal_state_is_still_readable() {
    let cluster = start_cluster(3, MANUAL_HEARTBEATS).await;
    let f = file_meta("f", 1, &[&hash_block(b"f")]);
    lead(&cluster, 0).await;
    assert_eq!(cluster.update(0, f.clone()).await.unwrap(), 1);
    assert!(cluster.heartbeat(0).await);
    cluster.crash(1).await;
    cluster.crash(0).await;
    // Crashing keeps the state, leadership included.
    assert_all(&cluster, 0, 1, &[op(1, &f)], &[&f]).await;
}

#[tokio::test]
async fn set_leader_on_a_stale_server_loses_no_committed_data() {
    // Our documented extension: a server follows, per term, only the first
    // leader whose log is at least as up-to-date as its own, so SetLeader on
    // a server that missed committed entries cannot make the others drop
    // them. A SIGKILL and restart without --data-dir makes server 2 stale;
    // server 0 is crashed meanwhile, so that its retries to the peer that
    // failed cannot repair server 2 behind the test's back.
    let mut cluster = start_cluster(3, MANUAL_HEARTBEATS).await;
    let a = file_meta("a", 1, &[&hash_block(b"a")]);
    let b = file_meta("b", 1, &[&hash_block(b"b")]);
    lead(&cluster, 0).await;
    assert_eq!(cluster.update(0, a.clone()).await.unwrap(), 1);
    cluster.kill(2);
    assert_eq!(cluster.update(0, b.clone()).await.unwrap(), 1);
    assert!(cluster.heartbeat(0).await);
    cluster.crash(0).await;
    cluster.restart(2).await;
    assert_state(&cluster, 2, false, 0, &[], &[]).await;

    // Server 2 claims term 1 too; server 1 already follows server 0 in it,
    // so server 2 finds no majority and stays an unconfirmed leader that
    // nobody follows.
    cluster.set_leader(2).await;
    assert!(
        !cluster.heartbeat(2).await,
        "a majority followed a leader that lacks committed entries"
    );
    assert_state(&cluster, 0, true, 1, &[op(1, &a), op(1, &b)], &[&a, &b]).await;
    assert_state(&cluster, 1, false, 1, &[op(1, &a), op(1, &b)], &[&a, &b]).await;
    assert_state(&cluster, 2, true, 1, &[], &[]).await;

    // A new term from the up-to-date server repairs server 2.
    cluster.restore(0).await;
    lead(&cluster, 0).await;
    assert_all(&cluster, 0, 2, &[op(1, &a), op(1, &b)], &[&a, &b]).await;
}

#[tokio::test]
async fn an_update_held_back_by_an_unconfirmed_leader_completes_once_a_majority_returns() {
    // 5 servers, no automatic heartbeats: server 1 matches everything the
    // unconfirmed leader may send before server 2's return confirms it; the
    // held-back entry must still reach server 1 without anyone's heartbeat.
    let cluster = start_cluster(5, MANUAL_HEARTBEATS).await;
    let f = file_meta("f", 1, &[]);
    for i in [2, 3, 4] {
        cluster.crash(i).await;
    }
    cluster.set_leader(0).await;
    let update = spawn_update(&cluster, 0, &f);
    wait_log_len(&cluster, 0, 1).await;
    assert_blocked(&update, "UpdateFile").await;
    cluster.restore(2).await;
    assert_eq!(finished(update, "UpdateFile").await.unwrap(), 1);
    for i in [0, 1, 2] {
        assert_eq!(cluster.state(i).await.log, [op(1, &f)], "server {i}");
    }
}

#[tokio::test]
async fn set_leader_again_answers_the_calls_of_the_ended_term() {
    for confirmed in [false, true] {
        let cluster = start_cluster(3, MANUAL_HEARTBEATS).await;
        if confirmed {
            lead(&cluster, 0).await;
        } else {
            cluster.set_leader(0).await;
        }
        cluster.crash(1).await;
        cluster.crash(2).await;
        let update = spawn_update(&cluster, 0, &file_meta("f", 1, &[]));
        wait_log_len(&cluster, 0, 1).await;
        cluster.set_leader(0).await;
        let status = finished(update, "UpdateFile of the ended term")
            .await
            .expect_err("an update of an ended term reported success");
        assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    }
}

#[tokio::test]
async fn append_entries_receiver_follows_the_rules() {
    // Raw AppendEntries without leaderId: the original, hand-written tests'
    // semantics (SPEC §5, receiver rules in order).
    let cluster = start_cluster(3, MANUAL_HEARTBEATS).await;
    let mut c = cluster.client(1);
    let [a, b, x] = ["a", "b", "x"].map(|n| file_meta(n, 1, &[]));
    let mut append =
        async |term: i64, prev: i64, prev_term: i64, entries: &[UpdateOperation], commit: i64| {
            c.append_entries(AppendEntryInput {
                term,
                prev_log_index: prev,
                prev_log_term: prev_term,
                entries: entries.to_vec(),
                leader_commit: commit,
                ..Default::default()
            })
            .await
            .expect("AppendEntries")
            .into_inner()
        };
    let reply = |term: i64, success: bool, matched: i64| AppendEntryOutput {
        server_id: 1,
        term,
        success,
        matched_index: matched,
        leader_id: None,
        commit_index: None,
    };
    let check = |got: AppendEntryOutput, want: AppendEntryOutput, what: &str| {
        assert_eq!(
            (got.server_id, got.term, got.success),
            (want.server_id, want.term, want.success),
            "{what}: {got:?}"
        );
        if want.success {
            assert_eq!(
                got.matched_index, want.matched_index,
                "{what}: matchedIndex"
            );
        }
    };

    check(
        append(1, -1, 0, &[op(1, &a)], -1).await,
        reply(1, true, 0),
        "first entry",
    );
    assert_state(&cluster, 1, false, 1, &[op(1, &a)], &[]).await;
    check(
        append(1, 0, 1, &[], 0).await,
        reply(1, true, 0),
        "commit it",
    );
    assert_state(&cluster, 1, false, 1, &[op(1, &a)], &[&a]).await;

    check(
        append(0, -1, 0, &[], -1).await,
        reply(1, false, 0),
        "stale term",
    );
    check(
        append(1, 5, 1, &[op(1, &b)], 0).await,
        reply(1, false, 0),
        "no entry at prev",
    );
    check(
        append(1, 0, 0, &[op(1, &b)], 0).await,
        reply(1, false, 0),
        "prev term differs",
    );
    assert_state(&cluster, 1, false, 1, &[op(1, &a)], &[&a]).await;

    check(
        append(2, 0, 1, &[op(2, &b)], 0).await,
        reply(2, true, 1),
        "newer term appends",
    );
    // A conflicting entry (same index, other term) and what follows go.
    check(
        append(3, 0, 1, &[op(3, &x)], 0).await,
        reply(3, true, 1),
        "conflict",
    );
    assert_state(&cluster, 1, false, 3, &[op(1, &a), op(3, &x)], &[&a]).await;
    // A shorter, matching resend truncates nothing.
    check(
        append(3, -1, 42, &[op(1, &a)], 0).await,
        reply(3, true, 0),
        "matching resend",
    );
    // Commit stops at the last entry this message vouches for.
    check(
        append(3, 0, 1, &[], 5).await,
        reply(3, true, 0),
        "commit beyond vouched",
    );
    assert_state(&cluster, 1, false, 3, &[op(1, &a), op(3, &x)], &[&a]).await;
    check(
        append(3, 1, 3, &[], 1).await,
        reply(3, true, 1),
        "commit the rest",
    );
    assert_state(&cluster, 1, false, 3, &[op(1, &a), op(3, &x)], &[&a, &x]).await;
}

#[tokio::test]
async fn automatic_heartbeats_replicate_and_commit_on_followers() {
    let cluster = start_cluster(3, &[]).await;
    let f = file_meta("f", 1, &[&hash_block(b"f")]);
    cluster.set_leader(0).await;
    assert_eq!(cluster.update(0, f.clone()).await.unwrap(), 1);
    for i in [1, 2] {
        eventually(&format!("server {i} applies f"), AUTO_WITHIN, async || {
            let s = cluster.state(i).await;
            (s.meta_map.unwrap_or_default().file_info_map == files(&[&f])).then_some(())
        })
        .await;
    }
    assert_all(&cluster, 0, 1, &[op(1, &f)], &[&f]).await;
}

#[tokio::test]
async fn automatic_heartbeats_catch_up_a_restored_follower() {
    let cluster = start_cluster(3, &[]).await;
    let a = file_meta("a", 1, &[]);
    let b = file_meta("b", 1, &[]);
    cluster.set_leader(0).await;
    cluster.crash(2).await;
    assert_eq!(cluster.update(0, a.clone()).await.unwrap(), 1);
    assert_eq!(cluster.update(0, b.clone()).await.unwrap(), 1);
    assert!(
        cluster.state(2).await.log.is_empty(),
        "crashed server got entries"
    );
    cluster.restore(2).await;
    eventually("restored follower catches up", AUTO_WITHIN, async || {
        let s = cluster.state(2).await;
        (s.meta_map.unwrap_or_default().file_info_map.len() == 2).then_some(())
    })
    .await;
    assert_all(&cluster, 0, 1, &[op(1, &a), op(1, &b)], &[&a, &b]).await;
}

#[tokio::test]
async fn automatic_heartbeats_make_an_old_leader_step_down() {
    let cluster = start_cluster(3, &[]).await;
    cluster.set_leader(0).await;
    // SetLeader adds one to the server's own term: server 1 must have heard
    // of term 1 first, or both would claim term 1 and the vote decides.
    eventually("server 1 follows term 1", AUTO_WITHIN, async || {
        (cluster.state(1).await.term == 1).then_some(())
    })
    .await;
    cluster.set_leader(1).await;
    eventually("old leader steps down", AUTO_WITHIN, async || {
        let s = cluster.state(0).await;
        (!s.is_leader && s.term == 2).then_some(())
    })
    .await;
    let f = file_meta("f", 1, &[]);
    assert_eq!(cluster.update(1, f.clone()).await.unwrap(), 1);
    eventually("everyone applies f", AUTO_WITHIN, async || {
        for i in 0..3 {
            let s = cluster.state(i).await;
            if s.meta_map.unwrap_or_default().file_info_map != files(&[&f]) {
                return None;
            }
        }
        Some(())
    })
    .await;
    assert_all(&cluster, 1, 2, &[op(2, &f)], &[&f]).await;
}

// ---- with the real client -------------------------------------------------

/// Block size the client tests sync with: small, so files span blocks.
const BLOCK_SIZE: usize = 1024;

/// Runs the client on `dir` through the cluster; returns (success, stderr,
/// how long it took).
fn sync(cluster: &Cluster, dir: &Path) -> (bool, String, Duration) {
    let (out, took) = cluster.sync(dir, BLOCK_SIZE);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    (out.status.success(), stderr, took)
}

/// Writes a few files of different shapes into `dir`.
fn write_files(dir: &Path) {
    let long: Vec<u8> = (0..5000_u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(dir.join("long.bin"), long).unwrap();
    std::fs::write(dir.join("short.txt"), "hello, surfstore\n").unwrap();
    std::fs::write(dir.join("empty"), "").unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_syncs_across_a_leader_failover() {
    let cluster = start_cluster(3, &[]).await;
    lead(&cluster, 0).await;
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    write_files(a.path());
    let (ok, stderr, _) = sync(&cluster, a.path());
    assert!(ok, "first sync: {stderr}");
    // Followers learn the commit before the leader goes away.
    assert!(cluster.heartbeat(0).await);

    cluster.crash(0).await;
    lead(&cluster, 1).await;
    let (ok, stderr, _) = sync(&cluster, b.path());
    assert!(ok, "sync after failover: {stderr}");
    assert_eq!(synced_files(b.path()), synced_files(a.path()));
    let index = std::fs::read_to_string(b.path().join("index.txt")).unwrap();
    for name in ["long.bin", "short.txt", "empty"] {
        assert!(
            index.lines().any(|l| l.starts_with(&format!("{name},1,"))),
            "{name} missing from index.txt: {index}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_fails_fast_without_a_majority_and_recovers() {
    let cluster = start_cluster(3, &[]).await;
    lead(&cluster, 0).await;
    let dir = tempfile::tempdir().unwrap();
    write_files(dir.path());
    let (ok, stderr, _) = sync(&cluster, dir.path());
    assert!(ok, "first sync: {stderr}");

    std::fs::write(
        dir.path().join("new.txt"),
        "written while the cluster is down",
    )
    .unwrap();
    let before = snapshot(dir.path());
    cluster.crash(1).await;
    cluster.crash(2).await;
    let (ok, stderr, took) = sync(&cluster, dir.path());
    assert!(!ok, "sync succeeded without a majority");
    assert!(
        took < Duration::from_secs(20),
        "client took {took:?} to give up"
    );
    assert!(!stderr.trim().is_empty(), "client failed silently");
    assert_eq!(
        snapshot(dir.path()),
        before,
        "failed sync changed the base directory or index.txt"
    );

    cluster.restore(1).await;
    cluster.restore(2).await;
    let (ok, stderr, _) = sync(&cluster, dir.path());
    assert!(ok, "sync after recovery: {stderr}");
    let index = std::fs::read_to_string(dir.path().join("index.txt")).unwrap();
    assert!(
        index.lines().any(|l| l.starts_with("new.txt,1,")),
        "new.txt not synced: {index}"
    );
    let map = cluster
        .client(0)
        .get_file_info_map(())
        .await
        .unwrap()
        .into_inner()
        .file_info_map;
    assert_eq!(map.get("new.txt").map(|m| m.version), Some(1));
}

#[tokio::test]
async fn a_pipelined_leader_replicates_concurrent_updates_through_a_follower_crash() {
    let cluster = start_cluster(3, &["--pipeline-depth", "4"]).await;
    cluster.set_leader(0).await;
    let metas: Vec<FileMetaData> = (0..200)
        .map(|i| file_meta(&format!("f{i:03}"), 1, &[]))
        .collect();
    let (first, second) = metas.split_at(100);
    let updates: Vec<_> = first.iter().map(|m| spawn_update(&cluster, 0, m)).collect();
    cluster.crash(2).await;
    let updates: Vec<_> = updates
        .into_iter()
        .chain(second.iter().map(|m| spawn_update(&cluster, 0, m)))
        .collect();
    cluster.restore(2).await;
    for update in updates {
        assert_eq!(finished(update, "a pipelined update").await.unwrap(), 1);
    }
    for i in [1, 2] {
        eventually(
            &format!("server {i} applies all 200"),
            AUTO_WITHIN,
            async || {
                let s = cluster.state(i).await;
                (s.meta_map.unwrap_or_default().file_info_map.len() == 200).then_some(())
            },
        )
        .await;
    }
    let leader_log = cluster.state(0).await.log;
    assert_eq!(leader_log.len(), 200);
    for i in [1, 2] {
        assert_eq!(cluster.state(i).await.log, leader_log, "server {i}: log");
    }
}

/// A `SendHeartbeat` round delivers the log as it stood when the round
/// began: updates streaming in meanwhile belong to the next round, so the
/// call returns rather than chase them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_heartbeat_returns_under_a_steady_stream_of_updates() {
    let cluster = start_cluster(3, MANUAL_HEARTBEATS).await;
    lead(&cluster, 0).await;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writers: Vec<JoinHandle<i32>> = (0..8)
        .map(|w| {
            let mut client = cluster.client(0);
            let stop = std::sync::Arc::clone(&stop);
            tokio::spawn(async move {
                let mut version = 0;
                while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                    let meta = file_meta(&format!("w{w}"), version + 1, &[]);
                    version = client.update_file(meta).await.unwrap().into_inner().version;
                }
                version
            })
        })
        .collect();
    for _ in 0..20 {
        assert!(cluster.heartbeat(0).await);
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    for writer in writers {
        assert!(finished(writer, "a writer").await > 0);
    }
}
