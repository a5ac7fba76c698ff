//! Raft at its edges, with real `surfstore-raft-server` processes: forged or
//! corrupt AppendEntries, terms at the top of their range, replies that
//! would outgrow a gRPC message, and peer connections that die or go quiet.

// Test code: a failed unwrap is a failed test, with its location.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::{
    Cluster, LARGE_UPDATE_BYTES, MANUAL_HEARTBEATS, Proc, all_ready, assert_refused_at_reply_limit,
    assert_status, eventually, file_meta, large_meta, loopback_listener, raft_client,
    spawn_raft_server, start_cluster, update_until_refused, within,
};
use surfstore::proto::raft_surfstore_client::RaftSurfstoreClient;
use surfstore::proto::{AppendEntryInput, FileMetaData, UpdateOperation};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tonic::Code;
use tonic::transport::Channel;

fn op(term: i64, meta: &FileMetaData) -> UpdateOperation {
    UpdateOperation {
        term,
        file_meta_data: Some(meta.clone()),
    }
}

/// A cluster whose leader 0 committed `a` in term 1 and told every server.
async fn cluster_with_one_entry() -> (Cluster, FileMetaData) {
    let cluster = start_cluster(3, MANUAL_HEARTBEATS).await;
    cluster.set_leader(0).await;
    assert!(cluster.heartbeat(0).await);
    let a = file_meta("a", 1, &["h"]);
    assert_eq!(cluster.update(0, a.clone()).await.unwrap(), 1);
    assert!(cluster.heartbeat(0).await);
    (cluster, a)
}

#[tokio::test]
async fn forged_append_entries_are_refused_and_change_nothing() {
    let (cluster, a) = cluster_with_one_entry().await;
    let x = file_meta("x", 1, &["forged"]);
    let valid = AppendEntryInput {
        term: 1,
        prev_log_index: 0,
        prev_log_term: 1,
        entries: vec![],
        leader_commit: 0,
        ..Default::default()
    };
    let cases: Vec<(&str, AppendEntryInput)> = vec![
        (
            "term",
            AppendEntryInput {
                term: -1,
                ..valid.clone()
            },
        ),
        (
            "term",
            AppendEntryInput {
                term: i64::MAX,
                ..valid.clone()
            },
        ),
        (
            "prevLogIndex",
            AppendEntryInput {
                prev_log_index: -2,
                ..valid.clone()
            },
        ),
        (
            "prevLogTerm",
            AppendEntryInput {
                prev_log_term: -1,
                ..valid.clone()
            },
        ),
        (
            "prevLogTerm",
            AppendEntryInput {
                term: 2,
                prev_log_term: 7,
                ..valid.clone()
            },
        ),
        (
            "leaderCommit",
            AppendEntryInput {
                leader_commit: -2,
                ..valid.clone()
            },
        ),
        (
            "above the request's term",
            AppendEntryInput {
                term: 5,
                entries: vec![op(6, &x)],
                ..valid.clone()
            },
        ),
        (
            "below",
            AppendEntryInput {
                term: 2,
                entries: vec![op(0, &x)],
                ..valid.clone()
            },
        ),
        (
            "below",
            AppendEntryInput {
                term: 3,
                entries: vec![op(3, &x), op(2, &x)],
                ..valid.clone()
            },
        ),
        (
            "fileMetaData",
            AppendEntryInput {
                term: 2,
                entries: vec![UpdateOperation {
                    term: 2,
                    file_meta_data: None,
                }],
                ..valid.clone()
            },
        ),
        (
            "prevLogIndex",
            AppendEntryInput {
                prev_log_index: i64::MAX,
                entries: vec![op(1, &x)],
                ..valid.clone()
            },
        ),
        (
            "leaderId",
            AppendEntryInput {
                leader_id: Some(-1),
                ..valid.clone()
            },
        ),
        (
            "lastLogIndex",
            AppendEntryInput {
                leader_id: Some(0),
                last_log_index: -2,
                ..valid.clone()
            },
        ),
        (
            "lastLogTerm",
            AppendEntryInput {
                leader_id: Some(0),
                last_log_term: 2,
                ..valid.clone()
            },
        ),
    ];
    let before = cluster.state(1).await;
    assert_eq!(before.log, [op(1, &a)]);
    for (needle, request) in cases {
        let what = format!("{request:?}");
        let reply = cluster.client(1).append_entries(request).await;
        assert_status(reply, Code::InvalidArgument, needle, &what);
        assert_eq!(cluster.state(1).await, before, "changed by {what}");
    }

    // The cluster still works: a new leader, an update, every server has it.
    cluster.set_leader(2).await;
    assert!(cluster.heartbeat(2).await);
    let b = file_meta("b", 1, &["h"]);
    assert_eq!(cluster.update(2, b.clone()).await.unwrap(), 1);
    assert!(cluster.heartbeat(2).await);
    for i in 0..3 {
        let s = cluster.state(i).await;
        assert_eq!((s.is_leader, s.term), (i == 2, 2), "server {i}");
        assert_eq!(s.log, [op(1, &a), op(2, &b)], "server {i}");
        assert_eq!(s.meta_map.unwrap_or_default().file_info_map.len(), 2);
    }
}

/// Asserts that no two servers call themselves leader of the same term.
async fn assert_one_leader_per_term(cluster: &Cluster) {
    let mut leaders = Vec::new();
    for i in 0..cluster.addrs.len() {
        let s = cluster.state(i).await;
        if s.is_leader {
            assert!(
                !leaders.contains(&s.term),
                "two leaders of term {}: {leaders:?} and server {i}",
                s.term
            );
            leaders.push(s.term);
        }
    }
}

#[tokio::test]
async fn no_two_leaders_share_a_term_at_the_top_of_the_range() {
    let cluster = start_cluster(3, MANUAL_HEARTBEATS).await;
    let top = AppendEntryInput {
        term: i64::MAX,
        prev_log_index: -1,
        prev_log_term: -1,
        leader_commit: -1,
        ..Default::default()
    };
    // A term SetLeader could not raise is refused.
    cluster.crash(0).await;
    for i in [1, 2] {
        let reply = cluster.client(i).append_entries(top.clone()).await;
        assert_status(reply, Code::InvalidArgument, "term", "term i64::MAX");
    }
    // Server 1 leads with 2; then server 2 with 0 while 1 is down.
    cluster.set_leader(1).await;
    assert!(cluster.heartbeat(1).await);
    cluster.restore(0).await;
    cluster.crash(1).await;
    cluster.set_leader(2).await;
    assert!(cluster.heartbeat(2).await);
    cluster.restore(1).await;
    assert_one_leader_per_term(&cluster).await;

    // At the highest term a server may take, SetLeader is refused.
    let highest = AppendEntryInput {
        term: i64::MAX - 1,
        ..top
    };
    let reply = cluster.client(0).append_entries(highest).await;
    assert!(reply.is_ok(), "the highest term is still a term: {reply:?}");
    let refused = cluster.client(0).set_leader(()).await;
    assert_status(
        refused,
        Code::FailedPrecondition,
        "highest",
        "SetLeader at the top",
    );
    let s = cluster.state(0).await;
    assert_eq!((s.is_leader, s.term), (false, i64::MAX - 1));
    assert_one_leader_per_term(&cluster).await;
}

/// How long a repair of a backlog of a whole message may take (debug builds).
const CATCH_UP_WITHIN: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_far_behind_with_large_entries_catches_up() {
    let cluster = start_cluster(3, MANUAL_HEARTBEATS).await;
    cluster.set_leader(0).await;
    assert!(cluster.heartbeat(0).await);
    cluster.crash(2).await;
    // 4 MiB updates of one file while server 2 is down, until the leader
    // refuses one or the backlog is well past what one message holds.
    let (accepted, refused) = update_until_refused(|n| {
        let cluster = &cluster;
        async move {
            let version = i32::try_from(n + 1).unwrap();
            let update = large_meta("big", version, LARGE_UPDATE_BYTES);
            assert_eq!(cluster.update(0, update).await?, version);
            Ok(())
        }
    })
    .await;
    cluster.restore(2).await;
    let round = tokio::time::timeout(CATCH_UP_WITHIN, cluster.client(0).send_heartbeat(()))
        .await
        .expect("SendHeartbeat returns")
        .expect("SendHeartbeat");
    assert!(round.into_inner().flag);
    // Every server holds and applied the whole log, and says so in one
    // reply; the follower that was behind first.
    for i in [2, 1, 0] {
        let s = cluster.state(i).await;
        assert_eq!(s.log.len(), accepted, "server {i}'s log");
        let map = s.meta_map.unwrap_or_default().file_info_map;
        assert_eq!(
            map.get("big").map(|m| m.version),
            Some(i32::try_from(accepted).unwrap())
        );
    }
    assert_refused_at_reply_limit(accepted, refused);
    let map = cluster
        .client(0)
        .get_file_info_map(())
        .await
        .expect("GetFileInfoMap");
    assert_eq!(map.into_inner().file_info_map.len(), 1);
}

/// Raft servers started from config files of their own, so that one may
/// reach a peer through an address the peer does not listen on itself.
struct Servers {
    clients: Vec<RaftSurfstoreClient<Channel>>,
    _procs: Vec<Proc>,
    _dir: tempfile::TempDir,
}

/// Writes a config listing `addrs` in `dir` as `name`.
fn config(dir: &Path, name: &str, addrs: &[&str]) -> PathBuf {
    let path = dir.join(name);
    let json = serde_json::json!({
        "MetaStoreAddrs": addrs,
        "BlockStoreAddrs": ["localhost:8081"],
    });
    std::fs::write(&path, json.to_string()).expect("write a config");
    path
}

/// Starts server `id` of each `(listener, config, id)` on its listener,
/// with automatic heartbeats, and waits until all answer.
async fn start_servers(
    dir: tempfile::TempDir,
    servers: Vec<(std::net::TcpListener, &Path, usize)>,
) -> Servers {
    let clients: Vec<_> = servers
        .iter()
        .map(|(listener, _, _)| raft_client(&listener.local_addr().expect("address").to_string()))
        .collect();
    let mut procs: Vec<Proc> = servers
        .into_iter()
        .map(|(listener, config, id)| spawn_raft_server(listener, config, id, None, &[]))
        .collect();
    assert!(all_ready(&mut procs, &clients).await, "a server exited");
    Servers {
        clients,
        _procs: procs,
        _dir: dir,
    }
}

/// A loopback address where a listener accepts connections and closes
/// them at once, as a peer whose port is open but whose server is gone;
/// and how many connections it has taken.
async fn closing_listener() -> (String, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("local addr").to_string();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = Arc::clone(&accepted);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::Relaxed);
            drop(stream);
        }
    });
    (addr, accepted)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_peer_is_redialled_with_backoff() {
    let (dead, accepted) = closing_listener().await;
    let listeners = [loopback_listener(), loopback_listener()];
    let [a0, a1] = [0, 1].map(|i| listeners[i].local_addr().expect("address").to_string());
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = config(dir.path(), "config.json", &[&a0, &a1, &dead]);
    let [l0, l1] = listeners;
    let servers = start_servers(dir, vec![(l0, &cfg, 0), (l1, &cfg, 1)]).await;
    let mut leader = servers.clients[0].clone();
    within("SetLeader", leader.set_leader(()))
        .await
        .expect("SetLeader");
    // Commits keep coming (each one wakes every peer's replication), while
    // the third server stays unreachable.
    let before = accepted.load(Ordering::Relaxed);
    let started = Instant::now();
    let mut commits = 0;
    while started.elapsed() < Duration::from_secs(2) {
        let meta = file_meta(&format!("f{commits}"), 1, &["h"]);
        let version = within("UpdateFile", leader.update_file(meta)).await;
        assert_eq!(version.expect("UpdateFile").into_inner().version, 1);
        commits += 1;
    }
    let dials = accepted.load(Ordering::Relaxed) - before;
    assert!(commits >= 20, "only {commits} commits in 2 s");
    assert!(
        dials < 50,
        "{dials} connections to a dead peer in 2 s ({commits} commits)"
    );
}

/// A TCP proxy to `target`. Sending on the returned channel turns every
/// connection open at that moment half-dead: it stays open but nothing
/// crosses it any more, as when the far end vanished without a word (a
/// firewall dropping its state, a host gone). Later connections work.
async fn proxy(target: String) -> (String, watch::Sender<u64>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("local addr").to_string();
    let (cut, generation) = watch::channel(0_u64);
    tokio::spawn(async move {
        while let Ok((mut inbound, _)) = listener.accept().await {
            let mut cut_later = generation.clone();
            let born = *cut_later.borrow();
            let target = target.clone();
            tokio::spawn(async move {
                let Ok(mut outbound) = TcpStream::connect(&target).await else {
                    return;
                };
                tokio::select! {
                    _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                    () = async { _ = cut_later.wait_for(|&g| g > born).await; } => {
                        // Keep both ends open, and forward nothing.
                        let _held = (inbound, outbound);
                        std::future::pending::<()>().await;
                    }
                }
            });
        }
    });
    (addr, cut)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_half_dead_peer_connection_is_replaced_within_seconds() {
    let [l0, l1, l2] = [(); 3].map(|()| loopback_listener());
    let addrs: Vec<String> = [&l0, &l1, &l2]
        .map(|l| l.local_addr().expect("address").to_string())
        .to_vec();
    let (via_proxy, cut) = proxy(addrs[1].clone()).await;
    let dir = tempfile::tempdir().expect("tempdir");
    // The leader reaches server 1 through the proxy; the rest directly.
    let leader_cfg = config(
        dir.path(),
        "leader.json",
        &[&addrs[0], &via_proxy, &addrs[2]],
    );
    let cfg = config(
        dir.path(),
        "config.json",
        &[&addrs[0], &addrs[1], &addrs[2]],
    );
    let servers = start_servers(
        dir,
        vec![(l0, &leader_cfg, 0), (l1, &cfg, 1), (l2, &cfg, 2)],
    )
    .await;
    let mut leader = servers.clients[0].clone();
    within("SetLeader", leader.set_leader(()))
        .await
        .expect("SetLeader");
    let log_len = async |n: usize| {
        let mut follower = servers.clients[1].clone();
        eventually(
            &format!("server 1 holds {n} entries"),
            Duration::from_secs(10),
            async || {
                let state = follower.get_internal_state(()).await.ok()?.into_inner();
                (state.log.len() == n).then_some(())
            },
        )
        .await;
    };
    let update = async |name: &str| {
        let meta = file_meta(name, 1, &["h"]);
        let version = within("UpdateFile", leader.clone().update_file(meta)).await;
        assert_eq!(version.expect("UpdateFile").into_inner().version, 1);
    };
    update("before").await;
    log_len(1).await;

    // The leader's connection to server 1 goes half-dead; a new one would work.
    cut.send_modify(|g| *g += 1);
    let cut_at = Instant::now();
    update("after").await;
    log_len(2).await;
    let healed = cut_at.elapsed();
    assert!(
        healed < Duration::from_secs(8),
        "server 1 caught up only after {healed:?}"
    );
}

/// The leader's reads share one encoded map (on both of its services):
/// concurrent readers get equal maps, and a read after an acknowledged
/// update sees it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_reads_on_the_leader_get_equal_maps_and_see_updates() {
    let cluster = start_cluster(3, &[]).await;
    cluster.set_leader(0).await;
    let mut leader = raft_client(&cluster.addrs[0]);
    for i in 0..100 {
        let reply = leader
            .update_file(file_meta(&format!("f{i}"), 1, &[]))
            .await;
        assert_eq!(reply.unwrap().into_inner().version, 1);
    }
    let expected = leader.get_file_info_map(()).await.unwrap().into_inner();
    assert_eq!(expected.file_info_map.len(), 100);
    let readers: Vec<_> = (0..16)
        .map(|i| {
            let addr = cluster.addrs[0].clone();
            tokio::spawn(async move {
                if i % 2 == 0 {
                    let mut client = raft_client(&addr);
                    client.get_file_info_map(()).await.unwrap().into_inner()
                } else {
                    let mut client = common::meta_client(&addr);
                    client.get_file_info_map(()).await.unwrap().into_inner()
                }
            })
        })
        .collect();
    for reader in readers {
        assert_eq!(reader.await.unwrap(), expected);
    }
    let update = file_meta("f3", 2, &["0"]);
    let reply = leader.update_file(update.clone()).await.unwrap();
    assert_eq!(reply.into_inner().version, 2);
    let map = leader.get_file_info_map(()).await.unwrap().into_inner();
    assert_eq!(map.file_info_map["f3"], update);
    // A follower still refuses reads.
    let refused = raft_client(&cluster.addrs[1]).get_file_info_map(()).await;
    assert_eq!(refused.unwrap_err().code(), Code::FailedPrecondition);
}
