//! Nemesis: real 3- and 5-server Raft clusters (`--data-dir` on every server)
//! under faults while clients read-modify-write a few files, with every
//! operation recorded (call, answer or none, times) and the history of each
//! file checked for linearizability ([`linearizability`]). Each cluster size
//! runs in both modes:
//!
//! * **SetLeader mode** (the default, no elections): an operator task picks
//!   the leader with `SetLeader` after every fault, as a person would with
//!   `surfstore-ctl set-leader`. Faults, on the leader: SIGKILL and restart,
//!   SIGSTOP and SIGCONT (a paused leader), the chaos `Crash`/`Restore`, a
//!   partition isolating it, and one-way loss from it to one follower.
//!   Checked is what this mode guarantees: every `UpdateFile` answer
//!   (accepted, refused) and the final state agree with one order of the
//!   updates, so no acknowledged update is lost and no version is given
//!   twice. Reads during the run are not checked: without elections a new
//!   leader may serve a read without an entry a majority holds until its
//!   own first entry commits ("Known limit of the no-no-op rule" in
//!   docs/architecture.md). The final read comes after such an entry.
//! * **Election mode** (`--election-timeout-ms`, SPEC §9.1): nobody calls
//!   `SetLeader`; the cluster heals itself. Faults hit the current leader
//!   or any server, up to a minority at once: SIGKILL and restart,
//!   SIGSTOP/SIGCONT, `Crash`/`Restore`, isolation, one-way loss in either
//!   direction, and delays on every link of a server. An elected leader's
//!   no-op and ReadIndex make reads linearizable too, so every read the
//!   clients make is in the checked history as well.
//!
//! Every peer link runs through a proxy ([`common::network`]); clients
//! reach the servers directly and find the leader themselves, trying the
//! servers in turn.
//!
//! `NEMESIS_SECS=<n>` runs each longer than the default 12 s (`make
//! nemesis`); `NEMESIS_SEED=<n>` replays a run's choices (faults, victims,
//! files), printed at the end of every run.

// Test code: a failed unwrap is a failed test, with its location.
#![allow(clippy::unwrap_used)]

mod common;
#[path = "nemesis/linearizability.rs"]
mod linearizability;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::network::Network;
use common::{Cluster, ELECTIONS, election_timeout, file_meta, start_partitionable_cluster};
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

/// How leaders are made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// No elections: an operator calls `SetLeader`.
    SetLeader,
    /// `--election-timeout-ms`: the servers elect leaders themselves.
    Elections,
}

/// The history so far, per file, in microseconds since the start.
#[derive(Default)]
struct History {
    ops: BTreeMap<&'static str, Vec<Op>>,
    acknowledged: usize,
    refused: usize,
    unknown: usize,
    /// Reads recorded (each names every file).
    reads: usize,
}

impl History {
    /// Records a read of the whole map, seen between `call` and `ret`, as
    /// one read of each file.
    fn read(&mut self, call: u64, ret: u64, map: &HashMap<String, FileMetaData>) {
        self.reads += 1;
        for file in FILES {
            self.ops.entry(file).or_default().push(Op {
                call,
                ret: Some(ret),
                kind: OpKind::Read {
                    seen: seen(map, file),
                },
            });
        }
    }
}

/// What a map says of `file`: version and tag, `None` when absent.
fn seen(map: &HashMap<String, FileMetaData>, file: &str) -> linearizability::Register {
    map.get(file)
        .map(|meta| (meta.version, meta.block_hash_list.join(",")))
}

/// What a client knows of who leads: the server it tries first.
struct Client {
    servers: Vec<RaftSurfstoreClient<Channel>>,
    leader: usize,
    rng: fastrand::Rng,
    /// Where its reads go when they are checked (election mode).
    history: Option<Arc<Mutex<History>>>,
    started: Instant,
}

impl Client {
    /// The map on the leader it finds (recording the read when reads are
    /// checked), or `None` if no server answered as leader.
    async fn map(&mut self) -> Option<HashMap<String, FileMetaData>> {
        // Now and then it asks a server at random first, as a client with
        // an outdated idea of the leader would: a deposed leader that still
        // thinks it leads must not answer from its stale state.
        if self.rng.u8(..4) == 0 {
            self.leader = self.rng.usize(..self.servers.len());
        }
        for _ in 0..self.servers.len() {
            let mut server = self.servers[self.leader].clone();
            let call = micros(self.started);
            let answer = tokio::time::timeout(CALL_TIMEOUT, server.get_file_info_map(())).await;
            if let Ok(Ok(map)) = answer {
                let map = map.into_inner().file_info_map;
                if let Some(history) = &self.history {
                    let ret = micros(self.started);
                    history.lock().unwrap().read(call, ret, &map);
                }
                return Some(map);
            }
            self.leader = (self.leader + 1) % self.servers.len();
        }
        None
    }
}

/// One client: read the map, try to write the next version of one file
/// with a tag of its own, record the write; until `deadline`. Tells
/// `serving` which server acknowledged its last update.
async fn run_client(
    mut client: Client,
    id: usize,
    deadline: Instant,
    history: Arc<Mutex<History>>,
    serving: Arc<AtomicUsize>,
) {
    let started = client.started;
    let mut n = 0;
    while Instant::now() < deadline {
        let file = FILES[client.rng.usize(..FILES.len())];
        let Some(map) = client.map().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let current = map.get(file).map_or(0, |meta| meta.version);
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
                serving.store(client.leader, Ordering::Relaxed);
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

/// SetLeader mode's faults, one at a time on the leader, each followed by
/// a new leader (but for one-way loss, which the leader rides out with the
/// other follower).
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

/// A fault of election mode, on one server (the victim).
#[derive(Debug, Clone, Copy)]
enum Fault {
    /// SIGKILL, then a restart on its data directory.
    Kill,
    /// SIGSTOP, then SIGCONT.
    Pause,
    /// The chaos `Crash`, then `Restore`.
    Crash,
    /// Every link to and from it cut, then healed.
    Isolate,
    /// What it sends to `peer` lost (`outbound`), or what `peer` sends it.
    OneWay { peer: usize, outbound: bool },
    /// Every link to and from it holding bytes this long.
    Delay(Duration),
}

impl Fault {
    /// A random fault for `victim` of `n` servers.
    fn pick(rng: &mut fastrand::Rng, victim: usize, n: usize) -> Fault {
        let n_ms = u64::try_from(election_timeout().as_millis()).unwrap();
        match rng.u8(..6) {
            0 => Fault::Kill,
            1 => Fault::Pause,
            2 => Fault::Crash,
            3 => Fault::Isolate,
            4 => Fault::OneWay {
                peer: (victim + rng.usize(1..n)) % n,
                outbound: rng.bool(),
            },
            // Up to 2 N each way: calls across take up to 4 N.
            _ => Fault::Delay(Duration::from_millis(rng.u64(10..2 * n_ms))),
        }
    }

    async fn inflict(self, cluster: &mut Cluster, network: &Network, victim: usize) {
        match self {
            Fault::Kill => cluster.kill(victim),
            Fault::Pause => cluster.pause(victim),
            Fault::Crash => cluster.crash(victim).await,
            Fault::Isolate => network.isolate(victim),
            Fault::OneWay { peer, outbound } => {
                let (from, to) = if outbound {
                    (victim, peer)
                } else {
                    (peer, victim)
                };
                network.set(from, to, false);
            }
            Fault::Delay(delay) => network.slow_down(victim, delay),
        }
    }

    /// Ends the fault (network faults end with [`Network::heal`]).
    async fn repair(self, cluster: &mut Cluster, victim: usize) {
        match self {
            Fault::Kill => cluster.restart(victim).await,
            Fault::Pause => cluster.resume(victim),
            Fault::Crash => cluster.restore(victim).await,
            Fault::Isolate | Fault::OneWay { .. } | Fault::Delay(_) => {}
        }
    }
}

/// Election mode's faults: rounds of faults on up to a minority of the
/// servers at once, the first victim the server that last acknowledged an
/// update half of the time (the leader, as far as the clients know), the
/// others at random. Nobody picks a leader: the servers must. Returns how
/// many faults it inflicted.
async fn operate_elections(
    cluster: &mut Cluster,
    network: &Network,
    serving: &AtomicUsize,
    deadline: Instant,
    seed: u64,
) -> usize {
    let mut rng = fastrand::Rng::with_seed(seed);
    let n = cluster.clients.len();
    let mut faults = 0;
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(rng.u64(200..600))).await;
        let first = if rng.bool() {
            serving.load(Ordering::Relaxed)
        } else {
            rng.usize(..n)
        };
        let mut victims = vec![first];
        let count = rng.usize(1..=(n - 1) / 2);
        while victims.len() < count {
            let victim = rng.usize(..n);
            if !victims.contains(&victim) {
                victims.push(victim);
            }
        }
        let hits: Vec<(usize, Fault)> = victims
            .into_iter()
            .map(|victim| (victim, Fault::pick(&mut rng, victim, n)))
            .collect();
        for &(victim, fault) in &hits {
            fault.inflict(cluster, network, victim).await;
        }
        // From shorter than an election timeout to several.
        tokio::time::sleep(Duration::from_millis(rng.u64(200..1500))).await;
        for &(victim, fault) in &hits {
            fault.repair(cluster, victim).await;
        }
        network.heal();
        faults += hits.len();
    }
    faults
}

/// The map as a leader serves it once the faults are over: after a
/// sentinel update that makes the leader's own entry commit in SetLeader
/// mode; from whichever server answers in election mode (a read there
/// waits for the leader's no-op). Returns it with the call and return
/// times of the read.
async fn final_map(
    cluster: &Cluster,
    mode: Mode,
    seed: u64,
    started: Instant,
) -> (HashMap<String, FileMetaData>, u64, u64) {
    let mut server = match mode {
        Mode::SetLeader => {
            let mut rng = fastrand::Rng::with_seed(seed);
            let leader = elect(cluster, None, &mut rng).await;
            let mut server = cluster.client(leader);
            let sentinel = file_meta("sentinel", 1, &["done"]);
            let version = server.update_file(sentinel).await.unwrap().into_inner();
            assert_eq!(version.version, 1);
            server
        }
        Mode::Elections => {
            let mut client = Client {
                servers: cluster.clients.clone(),
                leader: 0,
                rng: fastrand::Rng::with_seed(seed),
                history: None,
                started,
            };
            let deadline = Instant::now() + Duration::from_secs(30);
            while client.map().await.is_none() {
                assert!(
                    Instant::now() < deadline,
                    "no leader for 30 s after the faults"
                );
            }
            cluster.client(client.leader)
        }
    };
    let at = micros(started);
    let map = server.get_file_info_map(()).await.unwrap().into_inner();
    (map.file_info_map, at, micros(started))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_servers_stay_linearizable_under_kills_pauses_crashes_and_partitions() {
    nemesis(3, Mode::SetLeader).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_servers_stay_linearizable_under_kills_pauses_crashes_and_partitions() {
    nemesis(5, Mode::SetLeader).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_servers_elect_leaders_and_stay_linearizable_reads_included() {
    nemesis(3, Mode::Elections).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_servers_elect_leaders_and_stay_linearizable_reads_included() {
    nemesis(5, Mode::Elections).await;
}

/// One run on `servers` servers in `mode`: faults and clients for
/// `NEMESIS_SECS`, then the check.
async fn nemesis(servers: usize, mode: Mode) {
    let secs: u64 = std::env::var("NEMESIS_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(12);
    let seed: u64 = std::env::var("NEMESIS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| fastrand::u64(..));
    let extra = match mode {
        Mode::SetLeader => &[][..],
        Mode::Elections => ELECTIONS,
    };
    let (mut cluster, network) = start_partitionable_cluster(servers, extra).await;
    let started = Instant::now();
    let deadline = started + Duration::from_secs(secs);
    let history = Arc::new(Mutex::new(History::default()));
    let serving = Arc::new(AtomicUsize::new(0));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|id| {
            let client = Client {
                servers: cluster.clients.clone(),
                leader: 0,
                rng: fastrand::Rng::with_seed(seed ^ id as u64),
                history: (mode == Mode::Elections).then(|| Arc::clone(&history)),
                started,
            };
            tokio::spawn(run_client(
                client,
                id,
                deadline,
                Arc::clone(&history),
                Arc::clone(&serving),
            ))
        })
        .collect();
    let faults = match mode {
        Mode::SetLeader => operate(&mut cluster, &network, deadline, seed).await,
        Mode::Elections => {
            operate_elections(&mut cluster, &network, &serving, deadline, seed).await
        }
    };
    for client in clients {
        client.await.unwrap();
    }
    let (map, at, done) = final_map(&cluster, mode, seed, started).await;

    let mut history = Arc::try_unwrap(history).ok().unwrap().into_inner().unwrap();
    history.read(at, done, &map);
    eprintln!(
        "nemesis seed {seed}, {servers} servers, {mode:?} mode: {secs} s, {faults} faults, \
         {} acknowledged, {} refused, {} unknown updates, {} reads checked",
        history.acknowledged, history.refused, history.unknown, history.reads
    );
    assert!(faults >= 3, "only {faults} faults in {secs} s");
    assert!(
        history.acknowledged >= 10,
        "only {} updates acknowledged: the cluster barely served",
        history.acknowledged
    );
    for file in FILES {
        let ops = history.ops.entry(file).or_default();
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
                "file {file}, seed {seed}, {mode:?} mode: {summary}; history in {}",
                saved.display()
            );
        }
    }
}

/// The proxies' delay holds bytes both ways, and healing ends it: an echo
/// across a link delayed by D takes at least 2 D, and little after.
#[tokio::test]
async fn a_delayed_link_holds_bytes_each_way_until_healed() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let echo = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let target = echo.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = echo.accept().await {
            tokio::spawn(async move {
                let (mut read, mut write) = conn.split();
                let _ = tokio::io::copy(&mut read, &mut write).await;
            });
        }
    });
    let link = common::network::Link::to(target).await.unwrap();
    let mut conn = tokio::net::TcpStream::connect(&link.addr).await.unwrap();
    let round_trip = async |conn: &mut tokio::net::TcpStream| {
        let sent = Instant::now();
        conn.write_all(b"ping").await.unwrap();
        let mut buf = [0; 4];
        conn.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"ping");
        sent.elapsed()
    };
    let delay = Duration::from_millis(250);
    link.set_delay(delay);
    let slow = round_trip(&mut conn).await;
    assert!(
        slow >= 2 * delay,
        "an echo across the delayed link took {slow:?}"
    );
    link.set_delay(Duration::ZERO);
    let fast = round_trip(&mut conn).await;
    assert!(fast < delay, "an echo after the delay ended took {fast:?}");
}
