//! F1: how long a durable 3-server cluster with elections
//! (`--election-timeout-ms N`) goes without a leader when its leader dies.
//! One client keeps updating a file, finding the leader itself (once its
//! leader fails, it asks every server at once, each call limited to N); round after round the
//! server that acknowledged its last update is taken down, by SIGKILL, the
//! chaos `Crash`, or isolation (every peer link of the cluster runs through
//! the tests' TCP proxy, [`crate::network`]), in turn. Measured per round:
//!
//! * failover: from the fault to the first update acknowledged by another
//!   server (SPEC §9.1's promise: within 3 N);
//! * downtime: the longest gap between two acknowledged updates around the
//!   fault (from [`BEFORE`] before it to [`AFTER`] after it);
//! * availability: the share of [`SLOT`]s of that window in which some
//!   update was acknowledged.
//!
//! Once a new leader serves, the victim is restarted, restored or
//! reconnected, and the next round starts when the cluster serves again.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use surfstore::proto::FileMetaData;
use surfstore::proto::raft_surfstore_client::RaftSurfstoreClient;
use tonic::transport::Channel;

use crate::load::percentile_ms;
use crate::network::Network;
use crate::procs::{self, Proc};
use crate::{BenchResult, Scale};

/// The window a round's downtime and availability are measured over
/// starts this long before the fault...
const BEFORE: Duration = Duration::from_millis(500);

/// ...and ends this long after it.
const AFTER: Duration = Duration::from_secs(2);

/// Availability counts the slots of this length with an acknowledged
/// update.
const SLOT: Duration = Duration::from_millis(50);

/// A round whose new leader has not served by then counts as failed.
const FAILOVER_LIMIT: Duration = Duration::from_secs(30);

/// How long the cluster may take to serve again between rounds.
const SETTLE_LIMIT: Duration = Duration::from_secs(60);

/// How a leader is taken down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    Kill,
    Crash,
    Isolate,
}

impl Fault {
    const ALL: [Fault; 3] = [Fault::Kill, Fault::Crash, Fault::Isolate];

    fn name(self) -> &'static str {
        match self {
            Fault::Kill => "SIGKILL",
            Fault::Crash => "Crash",
            Fault::Isolate => "isolation",
        }
    }
}

/// F1's figures for one election timeout and one kind of fault (or all).
#[derive(Debug, Clone, serde::Serialize)]
pub struct FailoverRow {
    /// The election timeout N, ms.
    pub election_timeout_ms: u64,
    /// `SIGKILL`, `Crash`, `isolation`, or `all`.
    pub fault: String,
    /// Rounds of this kind.
    pub rounds: usize,
    /// Rounds in which no other server served within [`FAILOVER_LIMIT`].
    pub failed: usize,
    /// Failover time, median over the rounds that did fail over, ms.
    pub median_ms: f64,
    /// Failover time, 99th percentile, ms.
    pub p99_ms: f64,
    /// The longest failover, ms.
    pub max_ms: f64,
    /// The longest gap between acknowledged updates around the fault,
    /// median over the rounds, ms.
    pub downtime_median_ms: f64,
    /// The share of 50 ms slots around the fault with an acknowledged
    /// update, mean over the rounds.
    pub availability: f64,
}

impl FailoverRow {
    /// The 99th percentile failover over N.
    pub fn p99_in_timeouts(&self) -> f64 {
        self.p99_ms / self.election_timeout_ms as f64
    }
}

/// What one round measured.
struct Round {
    fault: Fault,
    failover: Option<Duration>,
    downtime: Duration,
    availability: f64,
}

/// F1 for every election timeout of the scale.
pub async fn run_all(scale: &Scale, work: &Path) -> BenchResult<Vec<FailoverRow>> {
    let mut rows = Vec::new();
    for &n_ms in scale.failover_timeouts_ms {
        eprintln!(
            "F1: failover, --election-timeout-ms {n_ms}, {} leader deaths",
            scale.failover_rounds
        );
        let rounds = run(work, n_ms, scale.failover_rounds).await?;
        rows.extend(summarize(n_ms, &rounds));
    }
    Ok(rows)
}

/// A row per kind of fault and one for all of them.
fn summarize(n_ms: u64, rounds: &[Round]) -> Vec<FailoverRow> {
    let row = |fault: &str, rounds: Vec<&Round>| {
        let mut failovers: Vec<Duration> = rounds.iter().filter_map(|r| r.failover).collect();
        failovers.sort_unstable();
        let mut downtimes: Vec<Duration> = rounds.iter().map(|r| r.downtime).collect();
        downtimes.sort_unstable();
        FailoverRow {
            election_timeout_ms: n_ms,
            fault: fault.to_string(),
            rounds: rounds.len(),
            failed: rounds.len() - failovers.len(),
            median_ms: percentile_ms(&failovers, 0.5),
            p99_ms: percentile_ms(&failovers, 0.99),
            max_ms: percentile_ms(&failovers, 1.0),
            downtime_median_ms: percentile_ms(&downtimes, 0.5),
            availability: rounds.iter().map(|r| r.availability).sum::<f64>()
                / rounds.len().max(1) as f64,
        }
    };
    let mut rows: Vec<FailoverRow> = Fault::ALL
        .iter()
        .map(|&kind| {
            row(
                kind.name(),
                rounds.iter().filter(|r| r.fault == kind).collect(),
            )
        })
        .collect();
    rows.push(row("all", rounds.iter().collect()));
    rows
}

/// Updates acknowledged so far: when (since the start) and by which server.
type Acks = Arc<Mutex<Vec<(Duration, usize)>>>;

/// `rounds` leader deaths on a fresh cluster with election timeout `n_ms`.
async fn run(work: &Path, n_ms: u64, rounds: usize) -> BenchResult<Vec<Round>> {
    let n = Duration::from_millis(n_ms);
    let mut cluster = Elected::start(work, &format!("f1-failover-{n_ms}"), n_ms).await?;
    let started = Instant::now();
    let acks: Acks = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let writer = tokio::spawn(write(
        cluster.clients.clone(),
        n,
        started,
        Arc::clone(&acks),
        Arc::clone(&stop),
    ));
    let mut measured = Vec::with_capacity(rounds);
    let result = async {
        for round in 0..rounds {
            let fault = Fault::ALL[round % Fault::ALL.len()];
            measured.push(cluster.round(fault, started, &acks).await?);
        }
        BenchResult::Ok(())
    }
    .await;
    stop.store(true, Ordering::Relaxed);
    writer.await?;
    result?;
    Ok(measured)
}

/// The last acknowledged update, if any.
fn last_ack(acks: &Acks) -> Option<(Duration, usize)> {
    acks.lock()
        .unwrap_or_else(PoisonError::into_inner)
        .last()
        .copied()
}

/// The client: updates one file, one version after the other, on the
/// server that acknowledged the last one; once that fails (an error, or no
/// answer within `n`), it asks every server at once, each again and again,
/// until one acknowledges. So what is measured is when the cluster serves
/// again, not how long a client sat on a server that can no longer commit
/// (a cut-off leader holds a call until it steps down). Sending the same
/// version everywhere is safe: the version rule applies it once.
async fn write(
    servers: Vec<RaftSurfstoreClient<Channel>>,
    n: Duration,
    started: Instant,
    acks: Acks,
    stop: Arc<AtomicBool>,
) {
    let mut leader = Some(0);
    let mut version = 0;
    while !stop.load(Ordering::Relaxed) {
        let meta = FileMetaData {
            filename: "failover".into(),
            version: version + 1,
            block_hash_list: vec![format!("{}", version + 1)],
        };
        leader = match leader {
            Some(server) => update(&servers[server], &meta, n).await.then_some(server),
            None => tokio::select! {
                server = any_server(&servers, &meta, n) => Some(server),
                () = wait_for(&stop) => None,
            },
        };
        if let Some(server) = leader {
            // -1 counts too: the same version, sent before without an
            // answer, was applied; either way this server serves.
            version += 1;
            acks.lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push((started.elapsed(), server));
        }
    }
}

/// Whether `server` acknowledged `meta` within `n`.
async fn update(server: &RaftSurfstoreClient<Channel>, meta: &FileMetaData, n: Duration) -> bool {
    let mut server = server.clone();
    matches!(
        tokio::time::timeout(n, server.update_file(meta.clone())).await,
        Ok(Ok(_))
    )
}

/// Sends `meta` to every server, each again after a failure, until one
/// acknowledges it; returns which.
async fn any_server(
    servers: &[RaftSurfstoreClient<Channel>],
    meta: &FileMetaData,
    n: Duration,
) -> usize {
    let tries = servers.iter().enumerate().map(|(i, server)| {
        Box::pin(async move {
            while !update(server, meta, n).await {
                // Nobody leads yet (an election): do not spin.
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            i
        })
    });
    futures::future::select_all(tries).await.0
}

/// Completes once `stop` is set.
async fn wait_for(stop: &AtomicBool) {
    while !stop.load(Ordering::Relaxed) {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A durable 3-server cluster with elections on, its peer links through
/// proxies.
struct Elected {
    work: PathBuf,
    label: String,
    configs: Vec<PathBuf>,
    addrs: Vec<String>,
    extra: Vec<String>,
    data_root: PathBuf,
    procs: Vec<Option<Proc>>,
    network: Network,
    clients: Vec<RaftSurfstoreClient<Channel>>,
}

impl Elected {
    async fn start(work: &Path, label: &str, n_ms: u64) -> BenchResult<Elected> {
        let addrs: Vec<String> = procs::free_ports(3)?
            .into_iter()
            .map(|port| format!("127.0.0.1:{port}"))
            .collect();
        let network = Network::between(&addrs).await?;
        let configs = (0..addrs.len())
            .map(|i| {
                let config = work.join(format!("{label}-config-{i}.json"));
                let json = serde_json::json!({
                    "MetaStoreAddrs": network.seen_from(i, &addrs[i]),
                    "BlockStoreAddrs": ["127.0.0.1:1"],
                });
                std::fs::write(&config, json.to_string())
                    .map_err(|e| format!("{}: {e}", config.display()))?;
                Ok(config)
            })
            .collect::<BenchResult<Vec<_>>>()?;
        let clients = addrs
            .iter()
            .map(|addr| Ok(RaftSurfstoreClient::new(surfstore::grpc::channel(addr)?)))
            .collect::<BenchResult<Vec<_>>>()?;
        let mut cluster = Elected {
            work: work.to_path_buf(),
            label: label.to_string(),
            configs,
            addrs,
            extra: vec!["--election-timeout-ms".into(), n_ms.to_string()],
            data_root: work.join(label),
            procs: Vec::new(),
            network,
            clients,
        };
        for i in 0..cluster.addrs.len() {
            let proc = cluster.spawn(i)?;
            cluster.procs.push(Some(proc));
        }
        Ok(cluster)
    }

    /// Starts server `i` on its data directory and waits until it listens.
    fn spawn(&self, i: usize) -> BenchResult<Proc> {
        let data_root = Some(self.data_root.as_path());
        for _ in 0..procs::START_ATTEMPTS {
            let mut proc = procs::spawn_raft_server(
                &self.work,
                &self.label,
                &self.configs[i],
                i,
                data_root,
                &self.extra,
            )?;
            // A restarted server's port may still be held for a moment.
            if procs::wait_listening(&mut proc, &self.addrs[i])? {
                return Ok(proc);
            }
        }
        Err(format!("{}: server {i} did not start", self.label).into())
    }

    /// One leader death: waits until the cluster serves, takes down the
    /// server that acknowledged last, waits for another to acknowledge,
    /// brings the victim back and measures the window around the fault.
    async fn round(&mut self, fault: Fault, started: Instant, acks: &Acks) -> BenchResult<Round> {
        let victim = self.serving(started, acks).await?;
        let fault_at = started.elapsed();
        match fault {
            Fault::Kill => self.procs[victim] = None,
            Fault::Crash => {
                self.clients[victim].crash(()).await?;
            }
            Fault::Isolate => self.network.isolate(victim),
        }
        let mut failover = None;
        while failover.is_none() && started.elapsed() < fault_at + FAILOVER_LIMIT {
            failover = acks
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .iter()
                .rev()
                .take_while(|&&(at, _)| at > fault_at)
                .filter(|&&(_, server)| server != victim)
                .map(|&(at, _)| at - fault_at)
                .min();
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        match fault {
            Fault::Kill => self.procs[victim] = Some(self.spawn(victim)?),
            Fault::Crash => {
                self.clients[victim].restore(()).await?;
            }
            Fault::Isolate => self.network.heal(),
        }
        let window_end = fault_at + AFTER;
        if let Some(rest) = window_end.checked_sub(started.elapsed()) {
            tokio::time::sleep(rest).await;
        }
        let (downtime, availability) = around(acks, fault_at.saturating_sub(BEFORE), window_end);
        Ok(Round {
            fault,
            failover,
            downtime,
            availability,
        })
    }

    /// Waits until an update was acknowledged just now; returns the server
    /// that acknowledged it.
    async fn serving(&self, started: Instant, acks: &Acks) -> BenchResult<usize> {
        let deadline = Instant::now() + SETTLE_LIMIT;
        while Instant::now() < deadline {
            if let Some((at, server)) = last_ack(acks)
                && started.elapsed().saturating_sub(at) < SLOT
            {
                return Ok(server);
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        Err(format!(
            "{}: no update acknowledged for {SETTLE_LIMIT:?}",
            self.label
        )
        .into())
    }
}

/// The longest gap between acknowledged updates in `[from, to)` (counting
/// its ends as acknowledgements) and the share of its slots with one.
fn around(acks: &Acks, from: Duration, to: Duration) -> (Duration, f64) {
    let acks = acks.lock().unwrap_or_else(PoisonError::into_inner);
    let times: Vec<Duration> = acks
        .iter()
        .map(|&(at, _)| at)
        .filter(|&at| at >= from && at < to)
        .collect();
    let mut edges = vec![from];
    edges.extend(&times);
    edges.push(to);
    let downtime = edges
        .windows(2)
        .map(|pair| pair[1] - pair[0])
        .max()
        .unwrap_or_default();
    let slots = ((to - from).as_micros() / SLOT.as_micros()).max(1);
    let served: std::collections::BTreeSet<u128> = times
        .iter()
        .map(|&at| (at - from).as_micros() / SLOT.as_micros())
        .collect();
    (downtime, served.len() as f64 / slots as f64)
}
