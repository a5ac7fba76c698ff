//! Nemesis: real 3- and 5-server Raft clusters (`--data-dir` on every server)
//! under faults while clients read-modify-write a few files, with every
//! operation recorded (call, answer or none, times) and the history of each
//! file checked for linearizability ([`linearizability`]).
//!
//! This is the default mode (no elections): an operator task picks the
//! leader with `SetLeader` after every fault, as a person would with
//! `surfstore-ctl set-leader`. Faults, on the leader: SIGKILL and restart,
//! SIGSTOP and SIGCONT (a paused leader), the chaos `Crash`/`Restore`, a
//! partition isolating it, and one-way loss from it to one follower (every
//! peer link runs through a proxy, [`common::network`]).
//!
//! What is checked is what the default mode guarantees: every `UpdateFile`
//! answer (accepted, refused) and the final state agree with one order of
//! the updates, so no acknowledged update is lost and no version is given
//! twice. Reads during the run are not checked: without elections a new
//! leader may serve a read without an entry a majority holds until its own
//! first entry commits (the README's "Known limit of the no-no-op rule").
//! The final read comes after such an entry.
//!
//! `NEMESIS_SECS=<n>` runs longer than the default 12 s (`make nemesis`).

// Test code: a failed unwrap is a failed test, with its location.
#![allow(clippy::unwrap_used)]

mod common;
#[path = "nemesis/linearizability.rs"]
mod linearizability;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::network::Network;
use common::{Cluster, file_meta, start_partitionable_cluster};
use linearizability::{Op, OpKind, check};
use surfstore::proto::FileMetaData;
use surfstore::proto::raft_surfstore_client::RaftSurfstoreClient;
use tonic::transport::Channel;

/// Files the clients contend on.
const FILES: [&str; 3] = ["x", "y", "z"];

/// Concurrent clients.
const CLIENTS: usize = 4;

/// A call without an answer by then counts as unknown.
const CALL_TIMEOUT: Duration = Duration::from_millis(1500);

/// Search steps allowed per file.
const SEARCH_BUDGET: usize = 20_000_000;

/// The history so far, per file, in microseconds since the start.
#[derive(Default)]
struct History {
    ops: BTreeMap<&'static str, Vec<Op>>,
    acknowledged: usize,
    refused: usize,
    unknown: usize,
}

/// What a client knows of who leads: the server it tries first.
struct Client {
    servers: Vec<RaftSurfstoreClient<Channel>>,
    leader: usize,
    rng: fastrand::Rng,
}

impl Client {
    /// The current version of `file` on the leader it finds, or `None`
    /// if no server answered as leader.
    async fn version(&mut self, file: &str) -> Option<i32> {
        for _ in 0..self.servers.len() {
            let mut server = self.servers[self.leader].clone();
            let answer = tokio::time::timeout(CALL_TIMEOUT, server.get_file_info_map(())).await;
            if let Ok(Ok(map)) = answer {
                let map = map.into_inner().file_info_map;
                return Some(map.get(file).map_or(0, |meta| meta.version));
            }
            self.leader = (self.leader + 1) % self.servers.len();
        }
        None
    }
}

/// One client: read a file's version, try to write the next one with a
/// tag of its own, record the write; until `deadline`.
async fn run_client(
    mut client: Client,
    id: usize,
    started: Instant,
    deadline: Instant,
    history: Arc<Mutex<History>>,
) {
    let mut n = 0;
    while Instant::now() < deadline {
        let file = FILES[client.rng.usize(..FILES.len())];
        let Some(current) = client.version(file).await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        n += 1;
        let tag = format!("c{id}-{n}");
        let version = current + 1;
        let mut server = client.servers[client.leader].clone();
        let call = micros(started);
        let answer = tokio::time::timeout(
            CALL_TIMEOUT,
            server.update_file(file_meta(file, version, &[&tag])),
        )
        .await;
        let (ret, accepted) = match answer {
            Ok(Ok(reply)) => {
                let answered = reply.into_inner().version;
                assert!(
                    answered == version || answered == -1,
                    "UpdateFile({file}, {version}) answered {answered}"
                );
                (Some(micros(started)), Some(answered == version))
            }
            // Refused before or after proposing, timed out, connection
            // lost: it may still commit, so its outcome is unknown.
            Ok(Err(_)) | Err(_) => {
                client.leader = (client.leader + 1) % client.servers.len();
                (None, None)
            }
        };
        let mut history = history.lock().unwrap();
        match accepted {
            Some(true) => history.acknowledged += 1,
            Some(false) => history.refused += 1,
            None => history.unknown += 1,
        }
        history.ops.entry(file).or_default().push(Op {
            call,
            ret,
            kind: OpKind::Write {
                version,
                tag,
                accepted,
            },
        });
    }
}

fn micros(started: Instant) -> u64 {
    u64::try_from(started.elapsed().as_micros()).unwrap()
}

/// Makes some server other than `not` (when given) the leader with a
/// majority behind it, as an operator would: tries them in turn from a
/// random one; returns it.
async fn elect(cluster: &Cluster, not: Option<usize>, rng: &mut fastrand::Rng) -> usize {
    let n = cluster.clients.len();
    let deadline = Instant::now() + Duration::from_secs(30);
    let candidates = (rng.usize(..n)..)
        .map(|i| i % n)
        .filter(|&i| Some(i) != not);
    for candidate in candidates {
        let mut server = cluster.client(candidate);
        let set = tokio::time::timeout(CALL_TIMEOUT, server.set_leader(())).await;
        if matches!(set, Ok(Ok(_))) {
            // A read confirms leadership with a majority; a stale server's
            // blocks. (SendHeartbeat would wait for a paused follower's
            // timeout too.)
            let read = tokio::time::timeout(CALL_TIMEOUT, server.get_file_info_map(())).await;
            if matches!(read, Ok(Ok(_))) {
                return candidate;
            }
        }
        assert!(Instant::now() < deadline, "no server could lead for 30 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    unreachable!("the candidates never end")
}

/// The faults, one at a time on the leader, each followed by a new leader
/// (but for one-way loss, which the leader rides out with the other
/// follower).
async fn operate(cluster: &mut Cluster, network: &Network, deadline: Instant, seed: u64) -> usize {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut leader = elect(cluster, None, &mut rng).await;
    let mut faults = 0;
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(rng.u64(200..600))).await;
        let down_for = Duration::from_millis(rng.u64(200..800));
        let victim = leader;
        match rng.u8(..5) {
            3 => {
                network.isolate(victim);
                leader = elect(cluster, Some(victim), &mut rng).await;
                tokio::time::sleep(down_for).await;
                network.heal();
            }
            4 => {
                let follower =
                    (victim + rng.usize(1..cluster.clients.len())) % cluster.clients.len();
                network.set(victim, follower, false);
                tokio::time::sleep(down_for).await;
                network.heal();
            }
            0 => {
                cluster.kill(victim);
                leader = elect(cluster, Some(victim), &mut rng).await;
                tokio::time::sleep(down_for).await;
                cluster.restart(victim).await;
            }
            1 => {
                cluster.pause(victim);
                leader = elect(cluster, Some(victim), &mut rng).await;
                tokio::time::sleep(down_for).await;
                cluster.resume(victim);
            }
            _ => {
                cluster.crash(victim).await;
                leader = elect(cluster, Some(victim), &mut rng).await;
                tokio::time::sleep(down_for).await;
                cluster.restore(victim).await;
            }
        }
        faults += 1;
    }
    faults
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_servers_stay_linearizable_under_kills_pauses_crashes_and_partitions() {
    nemesis(3).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_servers_stay_linearizable_under_kills_pauses_crashes_and_partitions() {
    nemesis(5).await;
}

/// One run on `servers` servers: faults and clients for `NEMESIS_SECS`,
/// then the check.
async fn nemesis(servers: usize) {
    let secs: u64 = std::env::var("NEMESIS_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(12);
    let seed: u64 = std::env::var("NEMESIS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| fastrand::u64(..));
    let (mut cluster, network) = start_partitionable_cluster(servers, &[]).await;
    let started = Instant::now();
    let deadline = started + Duration::from_secs(secs);
    let history = Arc::new(Mutex::new(History::default()));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|id| {
            let client = Client {
                servers: cluster.clients.clone(),
                leader: 0,
                rng: fastrand::Rng::with_seed(seed ^ id as u64),
            };
            tokio::spawn(run_client(
                client,
                id,
                started,
                deadline,
                Arc::clone(&history),
            ))
        })
        .collect();
    let faults = operate(&mut cluster, &network, deadline, seed).await;
    for client in clients {
        client.await.unwrap();
    }

    // A leader whose own entry committed serves every committed update.
    let mut rng = fastrand::Rng::with_seed(seed);
    let leader = elect(&cluster, None, &mut rng).await;
    let mut server = cluster.client(leader);
    let sentinel = FileMetaData {
        filename: "sentinel".into(),
        version: 1,
        block_hash_list: vec!["done".into()],
    };
    assert_eq!(
        server
            .update_file(sentinel)
            .await
            .unwrap()
            .into_inner()
            .version,
        1
    );
    let at = micros(started);
    let map = server
        .get_file_info_map(())
        .await
        .unwrap()
        .into_inner()
        .file_info_map;
    let done = micros(started);

    let mut history = Arc::try_unwrap(history).ok().unwrap().into_inner().unwrap();
    eprintln!(
        "nemesis seed {seed}, {servers} servers: {secs} s, {faults} faults, {} acknowledged, {} refused, {} unknown updates",
        history.acknowledged, history.refused, history.unknown
    );
    assert!(faults >= 3, "only {faults} faults in {secs} s");
    assert!(
        history.acknowledged >= 10,
        "only {} updates acknowledged: the cluster barely served",
        history.acknowledged
    );
    for file in FILES {
        let seen = map
            .get(file)
            .map(|meta| (meta.version, meta.block_hash_list.join(",")));
        let ops = history.ops.entry(file).or_default();
        ops.push(Op {
            call: at,
            ret: Some(done),
            kind: OpKind::Read { seen },
        });
        if let Err(verdict) = check(ops, SEARCH_BUDGET) {
            let saved = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
                .join(format!("nemesis-{seed}-{file}.txt"));
            std::fs::write(&saved, format!("{verdict:#?}")).unwrap();
            let summary = match verdict {
                linearizability::Verdict::Violation { explained, ops } => format!(
                    "not linearizable: at most {explained} of {} operations explained",
                    ops.len()
                ),
                linearizability::Verdict::Undecided(steps) => {
                    format!("undecided after {steps} search steps")
                }
            };
            panic!(
                "file {file}, seed {seed}: {summary}; history in {}",
                saved.display()
            );
        }
    }
}
