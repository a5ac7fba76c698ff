//! B6: server throughput under concurrent clients, from tonic's generated
//! clients in this process, each on its own connection (as separate users
//! would be); the commit points' connections are
//! [`LeanChannel`](lean::LeanChannel)s.
//!
//! * Commits: every client updates its own file in a loop (`UpdateFile` with
//!   the next version) for a fixed time, against a 3-server Raft cluster's
//!   leader and against a plain `surfstore-server -s meta`, in memory and
//!   with `--data-dir`.
//!   The same load is put on a 3-member etcd cluster when etcd is
//!   installed ([`etcd`]). At each client count every one of these systems
//!   is started first, then they take turns in [`COMMIT_ROUNDS`] rounds
//!   ([`commit_points`]), so the ratios compare like with like on a
//!   machine whose speed drifts.
//! * PutBlock: every client puts distinct random blocks of one size into a
//!   `surfstore-server -s block`, in memory and with `--data-dir`.
//! * GetFileInfoMap: a map of many files is filled in, then many readers
//!   each read it once, all at the same time, from a plain MetaStore and
//!   from a 3-server Raft cluster's leader.
//!
//! Each client count gets fresh servers, so no point pays for an earlier
//! one's data.
//! The clients share the machine with the servers: on a small machine this
//! process's own gRPC work is part of what is measured. The commit points'
//! clients, ours and etcd's, run on one thread of their own
//! ([`drive_on_own_thread`]) over [`LeanChannel`](lean::LeanChannel)s,
//! which spends the least of it.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use prost::Message;
use surfstore::grpc::MAX_MESSAGE_BYTES;
use surfstore::hash::hash_block;
use surfstore::proto::block_store_client::BlockStoreClient;
use surfstore::proto::meta_store_client::MetaStoreClient;
use surfstore::proto::{Block, BlockHashes, FileMetaData};
use surfstore::security::ClientSecurity;
use tokio::sync::Barrier;
use tonic::transport::Channel;

use crate::data::Rng;
use crate::lean;
use crate::{BenchResult, Scale, cpu};
use crate::{etcd, procs};

/// Concurrent clients of the commit points.
pub const COMMIT_CLIENTS: [usize; 3] = [1, 16, 64];

/// Concurrent clients of the PutBlock points: one, and the client's own
/// per-file block concurrency.
pub const PUT_CLIENTS: [usize; 2] = [1, 8];

/// Block sizes of the PutBlock points.
pub const PUT_SIZES: [u64; 2] = [4 << 10, 4 << 20];

/// The BlockStore address the MetaStores announce; nobody asks for it here.
const UNUSED_BLOCK_ADDR: &str = "127.0.0.1:1";

/// Readers of a GetFileInfoMap point that share one connection.
const READERS_PER_CONNECTION: usize = 10;

/// A client that fails this many calls stops: the server is broken and the
/// point will say so in its error count.
const MAX_ERRORS_PER_CLIENT: u64 = 10;

/// One measured point.
#[derive(Debug, Clone, serde::Serialize)]
pub struct LoadRow {
    /// `raft-3`, `meta`, `etcd-3` or `block`.
    pub store: String,
    /// Whether the servers ran with `--data-dir`.
    pub durable: bool,
    /// Concurrent clients.
    pub clients: usize,
    /// Block size of a PutBlock point.
    pub block_size: Option<u64>,
    /// Calls that succeeded.
    pub ops: u64,
    /// Wall time of the point.
    pub secs: f64,
    /// Median latency of a successful call.
    pub p50_ms: f64,
    /// 99th-percentile latency of a successful call.
    pub p99_ms: f64,
    /// Calls that failed or were rejected.
    pub errors: u64,
    /// CPU seconds all servers used during the point.
    pub server_cpu_secs: f64,
    /// CPU seconds this process (the clients) used during the point.
    pub client_cpu_secs: f64,
    /// Share of the machine's CPU time stolen during the point, in percent.
    pub steal_percent: f64,
}

impl LoadRow {
    /// Successful calls per second.
    pub fn ops_per_sec(&self) -> f64 {
        self.ops as f64 / self.secs
    }

    /// Server CPU microseconds per successful call.
    pub fn server_cpu_us_per_op(&self) -> f64 {
        self.server_cpu_secs * 1e6 / self.ops as f64
    }

    /// Client CPU microseconds per successful call.
    pub fn client_cpu_us_per_op(&self) -> f64 {
        self.client_cpu_secs * 1e6 / self.ops as f64
    }
}

/// Every B6 point (none when B6 is not run).
#[derive(Default)]
pub struct Loads {
    /// UpdateFile points.
    pub commits: Vec<LoadRow>,
    /// PutBlock points.
    pub puts: Vec<LoadRow>,
    /// GetFileInfoMap points.
    pub reads: Vec<LoadRow>,
    /// The etcd the `etcd-3` commit points ran on, or why there are none.
    pub etcd: String,
}

/// Runs every B6 point at `scale`, with server data under `work`; only the
/// UpdateFile points (ours and etcd's) when `commits_only`.
pub async fn run_all(scale: &Scale, work: &Path, commits_only: bool) -> BenchResult<Loads> {
    let etcd_binary = etcd::find();
    let mut etcd = etcd::NOT_INSTALLED.to_string();
    if etcd_binary.is_none() {
        eprintln!("B6: {}", etcd::NOT_INSTALLED);
    }
    let mut commits = Vec::new();
    for clients in COMMIT_CLIENTS {
        let (points, version) = commit_points(scale, work, clients, etcd_binary.as_deref()).await?;
        commits.extend(points);
        if let (Some(binary), Some(version)) = (&etcd_binary, version) {
            etcd = format!(
                "etcd {version} ({}), {} members, default settings (fsync on)",
                binary.display(),
                etcd::MEMBERS
            );
        }
    }
    // The report's order: in memory then durable, each store by client count.
    commits.sort_by_key(|row| {
        let store = ["raft-3", "meta", "etcd-3"]
            .iter()
            .position(|s| *s == row.store);
        (row.store == "etcd-3", row.durable, store, row.clients)
    });
    if commits_only {
        return Ok(Loads {
            commits,
            etcd,
            ..Loads::default()
        });
    }
    let mut puts = Vec::new();
    for size in PUT_SIZES {
        for durable in [false, true] {
            let storage = if durable { "disk" } else { "mem" };
            for clients in PUT_CLIENTS {
                eprintln!("B6: PutBlock of {size} bytes ({storage}), {clients} clients");
                let label = format!("b6-block-{size}-{storage}-{clients}");
                let data = durable.then(|| work.join(&label));
                let server = procs::start_server(work, &label, "block", data.as_deref(), &[])?;
                let max_ops = (scale.put_max_bytes / size).max(1);
                let meters = Meters::start(vec![server.pid()]);
                let mut row =
                    put_load(&server.addr, size, clients, scale.put_duration, max_ops).await?;
                meters.finish(&mut row);
                row.durable = durable;
                puts.push(row);
                drop(server);
                if let Some(dir) = data {
                    // Up to put_max_bytes per point: do not let them pile up.
                    std::fs::remove_dir_all(&dir)
                        .map_err(|e| format!("remove {}: {e}", dir.display()))?;
                }
            }
        }
    }
    let reads = read_points(scale, work).await?;
    Ok(Loads {
        commits,
        puts,
        reads,
        etcd,
    })
}

/// The GetFileInfoMap points: for each store, fresh in-memory servers
/// holding `scale.read_files` files, read by `scale.readers` at once.
async fn read_points(scale: &Scale, work: &Path) -> BenchResult<Vec<LoadRow>> {
    let mut reads = Vec::new();
    for store in ["meta", "raft-3"] {
        eprintln!(
            "B6: {} concurrent GetFileInfoMap of {} files on {store}",
            scale.readers, scale.read_files
        );
        let label = format!("b6-read-{store}");
        let (addr, servers) = if store == "meta" {
            let server = procs::start_server(work, &label, "meta", None, &[UNUSED_BLOCK_ADDR])?;
            (server.addr.clone(), Servers::One(server))
        } else {
            let cluster = procs::start_cluster(work, &label, 3, UNUSED_BLOCK_ADDR, None).await?;
            (cluster.addrs[0].clone(), Servers::Cluster(cluster))
        };
        fill_map(&addr, scale.read_files).await?;
        // One decoded read checks the map; the measured ones compare sizes.
        let map = MetaStoreClient::new(surfstore::grpc::channel(&addr)?)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .get_file_info_map(())
            .await?
            .into_inner();
        if map.file_info_map.len() != scale.read_files {
            return Err(format!("{store} holds {} files", map.file_info_map.len()).into());
        }
        let reply_bytes = map.encoded_len();
        // HTTP/2 carries many calls per connection; 500 readers each
        // opening its own connection at once got connection resets here.
        let channels = (0..scale.readers.div_ceil(READERS_PER_CONNECTION))
            .map(|_| surfstore::grpc::channel(&addr))
            .collect::<Result<Vec<_>, _>>()?;
        let readers = (0..scale.readers)
            .map(|i| Reader {
                grpc: tonic::client::Grpc::new(channels[i / READERS_PER_CONNECTION].clone())
                    .max_decoding_message_size(MAX_MESSAGE_BYTES),
                reply_bytes,
            })
            .collect();
        let meters = Meters::start(servers.pids());
        let measured = drive(readers, Duration::from_secs(600), scale.readers as u64).await?;
        let mut row = row(store, scale.readers, None, measured);
        meters.finish(&mut row);
        reads.push(row);
    }
    Ok(reads)
}

/// Stores `files` new files at `addr`, 64 calls at a time.
async fn fill_map(addr: &str, files: usize) -> BenchResult<()> {
    let hash = hash_block(b"surfstore bench");
    let client = MetaStoreClient::new(surfstore::grpc::channel(addr)?);
    let tasks: Vec<_> = (0..64)
        .map(|task| {
            let (mut client, hash) = (client.clone(), hash.clone());
            tokio::spawn(async move {
                for i in (task..files).step_by(64) {
                    let meta = FileMetaData {
                        filename: format!("photos/2024/IMG_{i:06}.jpg"),
                        version: 1,
                        block_hash_list: vec![hash.clone()],
                    };
                    client.update_file(meta).await?;
                }
                Ok::<_, crate::BenchError>(())
            })
        })
        .collect();
    for task in tasks {
        task.await??;
    }
    Ok(())
}

/// A client reading the whole map, undecoded: decoding 20,000 files takes
/// the client tens of milliseconds, which on a shared machine would be
/// most of what the point measures.
struct Reader {
    grpc: tonic::client::Grpc<Channel>,
    /// The size of the map's encoding.
    reply_bytes: usize,
}

impl Worker for Reader {
    async fn warm_up(&mut self) -> BenchResult<()> {
        self.grpc.ready().await?;
        Ok(())
    }

    async fn call(&mut self, _op: u64) -> BenchResult<bool> {
        self.grpc.ready().await?;
        let path = http::uri::PathAndQuery::from_static("/surfstore.MetaStore/GetFileInfoMap");
        let reply = self
            .grpc
            .unary(tonic::Request::new(()), path, RawCodec)
            .await?;
        Ok(reply.into_inner().len() == self.reply_bytes)
    }
}

/// Sends an `Empty` request and keeps the reply's bytes as they came.
struct RawCodec;

impl tonic::codec::Codec for RawCodec {
    type Encode = ();
    type Decode = Bytes;
    type Encoder = <tonic_prost::ProstCodec<(), ()> as tonic::codec::Codec>::Encoder;
    type Decoder = RawDecoder;

    fn encoder(&mut self) -> Self::Encoder {
        tonic_prost::ProstCodec::<(), ()>::raw_encoder(Default::default())
    }

    fn decoder(&mut self) -> RawDecoder {
        RawDecoder
    }
}

/// Takes a reply's bytes without decoding them.
struct RawDecoder;

impl tonic::codec::Decoder for RawDecoder {
    type Item = Bytes;
    type Error = tonic::Status;

    fn decode(
        &mut self,
        src: &mut tonic::codec::DecodeBuf<'_>,
    ) -> Result<Option<Bytes>, tonic::Status> {
        use bytes::Buf;
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}

/// Rounds of each commit point. The systems compared take turns, so a
/// change in the machine's speed during the run (a shared VM's neighbours)
/// falls on all of them instead of on whichever ran at the time.
const COMMIT_ROUNDS: usize = 3;

/// A system under the commit load at one client count: its servers (kept
/// alive until it is measured) and what was measured of it so far.
struct CommitPoint {
    store: &'static str,
    durable: bool,
    addr: String,
    servers: Servers,
    /// Latencies, failed calls and seconds of the rounds so far.
    measured: Measured,
    server_cpu_secs: f64,
    client_cpu_secs: f64,
    /// Each round's stolen share of CPU time (percent) times its seconds,
    /// summed: over the rounds' seconds, the point's share.
    steal_weighted: f64,
}

/// The UpdateFile points at `clients` clients (raft-3 and meta, in memory
/// and with `--data-dir`) and etcd's `Put` point when `etcd_binary` is
/// given, in [`COMMIT_ROUNDS`] rounds of `scale.commit_duration /
/// COMMIT_ROUNDS` each in which every system takes its turn (in reverse
/// order every other round), all servers started before the first round.
/// Returns the rows and the version etcd reported.
async fn commit_points(
    scale: &Scale,
    work: &Path,
    clients: usize,
    etcd_binary: Option<&Path>,
) -> BenchResult<(Vec<LoadRow>, Option<String>)> {
    let mut points = Vec::new();
    let mut data_dirs = Vec::new();
    let mut version = None;
    for durable in [false, true] {
        let storage = if durable { "disk" } else { "mem" };
        for (store, n) in [("raft-3", 3), ("meta", 1)] {
            let label = format!("b6-{store}-{storage}-{clients}");
            let data = durable.then(|| work.join(&label));
            let (addr, servers) = if n == 1 {
                let server = procs::start_server(
                    work,
                    &label,
                    "meta",
                    data.as_deref(),
                    &[UNUSED_BLOCK_ADDR],
                )?;
                (server.addr.clone(), Servers::One(server))
            } else {
                let cluster =
                    procs::start_cluster(work, &label, n, UNUSED_BLOCK_ADDR, data.as_deref())
                        .await?;
                (cluster.addrs[0].clone(), Servers::Cluster(cluster))
            };
            data_dirs.extend(data);
            points.push(CommitPoint::new(store, durable, addr, servers));
        }
    }
    if let Some(binary) = etcd_binary {
        let label = format!("b6-etcd-3-{clients}");
        let data = work.join(&label);
        let cluster = etcd::start_cluster(binary, work, &label, &data).await?;
        version = Some(cluster.version.clone());
        data_dirs.push(data);
        // etcd always fsyncs its WAL.
        points.push(CommitPoint::new(
            "etcd-3",
            true,
            cluster.leader.clone(),
            Servers::Etcd(cluster),
        ));
    }
    let round = scale.commit_duration / COMMIT_ROUNDS as u32;
    for r in 0..COMMIT_ROUNDS {
        let order: Vec<usize> = if r % 2 == 0 {
            (0..points.len()).collect()
        } else {
            (0..points.len()).rev().collect()
        };
        for i in order {
            let point = &mut points[i];
            let storage = if point.durable { "disk" } else { "mem" };
            let is_etcd = matches!(point.servers, Servers::Etcd(_));
            let call = if is_etcd { "Put" } else { "UpdateFile" };
            eprintln!(
                "B6: {call} on {} ({storage}), {clients} clients, round {}/{COMMIT_ROUNDS}",
                point.store,
                r + 1
            );
            let meters = Meters::start(point.servers.pids());
            let measured = if is_etcd {
                etcd::put_calls(&point.addr, clients, round).await?
            } else {
                commit_calls(&point.addr, clients, round, r).await?
            };
            point.add(measured, &meters);
        }
    }
    let rows = points.into_iter().map(|p| p.into_row(clients)).collect();
    for dir in data_dirs {
        // etcd preallocates a 64 MB WAL segment per member, the Raft
        // servers a log each: do not let them pile up.
        std::fs::remove_dir_all(&dir).map_err(|e| format!("remove {}: {e}", dir.display()))?;
    }
    Ok((rows, version))
}

impl CommitPoint {
    fn new(store: &'static str, durable: bool, addr: String, servers: Servers) -> CommitPoint {
        CommitPoint {
            store,
            durable,
            addr,
            servers,
            measured: (Vec::new(), 0, 0.0),
            server_cpu_secs: 0.0,
            client_cpu_secs: 0.0,
            steal_weighted: 0.0,
        }
    }

    /// Adds one round: what [`drive`] measured, and the CPU `meters` saw.
    fn add(&mut self, (latencies, errors, secs): Measured, meters: &Meters) {
        self.measured.0.extend(latencies);
        self.measured.1 += errors;
        self.measured.2 += secs;
        self.server_cpu_secs += meters.servers.elapsed();
        self.client_cpu_secs += meters.clients.elapsed();
        self.steal_weighted += meters.steal.percent() * secs;
    }

    /// The point's row, over all its rounds.
    fn into_row(self, clients: usize) -> LoadRow {
        let (mut latencies, errors, secs) = self.measured;
        latencies.sort_unstable();
        let mut row = row(self.store, clients, None, (latencies, errors, secs));
        row.durable = self.durable;
        row.server_cpu_secs = self.server_cpu_secs;
        row.client_cpu_secs = self.client_cpu_secs;
        row.steal_percent = if secs > 0.0 {
            self.steal_weighted / secs
        } else {
            0.0
        };
        row
    }
}

/// The servers of a commit point, killed when dropped.
enum Servers {
    One(procs::Server),
    Cluster(procs::Cluster),
    Etcd(etcd::EtcdCluster),
}

impl Servers {
    fn pids(&self) -> Vec<u32> {
        match self {
            Servers::One(server) => vec![server.pid()],
            Servers::Cluster(cluster) => cluster.pids(),
            Servers::Etcd(cluster) => cluster.pids(),
        }
    }
}

/// CPU meters of a point: its servers, and this process (the clients).
struct Meters {
    servers: cpu::Meter,
    clients: cpu::Meter,
    steal: cpu::StealMeter,
}

impl Meters {
    fn start(server_pids: Vec<u32>) -> Meters {
        Meters {
            servers: cpu::Meter::start(server_pids),
            clients: cpu::Meter::start(vec![std::process::id()]),
            steal: cpu::StealMeter::start(),
        }
    }

    fn finish(&self, row: &mut LoadRow) {
        row.server_cpu_secs = self.servers.elapsed();
        row.client_cpu_secs = self.clients.elapsed();
        row.steal_percent = self.steal.percent();
    }
}

/// What one client task saw.
#[derive(Default)]
struct ClientStats {
    latencies: Vec<Duration>,
    errors: u64,
}

/// One client of a load point.
pub trait Worker: Send + 'static {
    /// An untimed first call, which opens the connection.
    fn warm_up(&mut self) -> impl Future<Output = BenchResult<()>> + Send;
    /// The measured call, number `op` of the point; false if the server
    /// answered but refused.
    fn call(&mut self, op: u64) -> impl Future<Output = BenchResult<bool>> + Send;
}

/// What [`drive`] measured: the sorted latencies of the successful calls,
/// the number of failed ones, and the seconds the point took.
pub type Measured = (Vec<Duration>, u64, f64);

/// Runs every worker's call in a loop until `duration` has passed or
/// `max_ops` calls were started in all. All start together, after warming
/// up. Returns the sorted latencies of the successful calls, the number of
/// failed ones, and the seconds the point took.
pub async fn drive<W: Worker>(
    workers: Vec<W>,
    duration: Duration,
    max_ops: u64,
) -> BenchResult<Measured> {
    let barrier = Arc::new(Barrier::new(workers.len() + 1));
    let started_ops = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::with_capacity(workers.len());
    for mut worker in workers {
        let (barrier, started_ops) = (Arc::clone(&barrier), Arc::clone(&started_ops));
        tasks.push(tokio::spawn(async move {
            let warmed = worker.warm_up().await;
            barrier.wait().await;
            warmed?;
            let deadline = Instant::now() + duration;
            let mut stats = ClientStats::default();
            while Instant::now() < deadline && stats.errors < MAX_ERRORS_PER_CLIENT {
                let op = started_ops.fetch_add(1, Ordering::Relaxed);
                if op >= max_ops {
                    break;
                }
                let began = Instant::now();
                match worker.call(op).await {
                    Ok(true) => stats.latencies.push(began.elapsed()),
                    Ok(false) | Err(_) => stats.errors += 1,
                }
            }
            Ok::<_, crate::BenchError>(stats)
        }));
    }
    barrier.wait().await;
    let began = Instant::now();
    let mut latencies = Vec::new();
    let mut errors = 0;
    for task in tasks {
        let stats = task.await??;
        latencies.extend(stats.latencies);
        errors += stats.errors;
    }
    let secs = began.elapsed().as_secs_f64();
    latencies.sort_unstable();
    Ok((latencies, errors, secs))
}

/// The latency below which a fraction `q` of `sorted` lies, in ms.
pub fn percentile_ms(sorted: &[Duration], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 * q) as usize).min(sorted.len() - 1);
    sorted[i].as_secs_f64() * 1e3
}

/// A point's row out of what [`drive`] measured; the caller fills in the
/// rest.
pub fn row(
    store: &str,
    clients: usize,
    block_size: Option<u64>,
    (latencies, errors, secs): Measured,
) -> LoadRow {
    LoadRow {
        store: store.to_string(),
        durable: false,
        clients,
        block_size,
        ops: latencies.len() as u64,
        secs,
        p50_ms: percentile_ms(&latencies, 0.50),
        p99_ms: percentile_ms(&latencies, 0.99),
        errors,
        server_cpu_secs: 0.0,
        client_cpu_secs: 0.0,
        steal_percent: 0.0,
    }
}

/// A client updating its own file, one version after the other, through
/// a channel of type `C`.
struct Committer<C> {
    client: MetaStoreClient<C>,
    meta: FileMetaData,
}

impl<C> Committer<C> {
    /// Client number `task` of a point's `round`. Its file is new on the
    /// server in each round (a file's versions go on from the server's,
    /// not from 0).
    fn new(client: MetaStoreClient<C>, round: usize, task: usize) -> Self {
        Committer {
            client,
            meta: FileMetaData {
                filename: format!("bench-file-{round}-{task:03}"),
                version: 0,
                // A realistic entry: one block, named like one.
                block_hash_list: vec![hash_block(b"surfstore bench")],
            },
        }
    }
}

impl<C> Worker for Committer<C>
where
    C: tonic::client::GrpcService<tonic::body::Body, Future: Send> + Send + 'static,
    C::Error: Into<tonic::codegen::StdError>,
    C::ResponseBody: http_body::Body<Data = Bytes> + Send + 'static,
    <C::ResponseBody as http_body::Body>::Error: Into<tonic::codegen::StdError> + Send,
{
    async fn warm_up(&mut self) -> BenchResult<()> {
        self.call(0).await.map(drop)
    }

    async fn call(&mut self, _op: u64) -> BenchResult<bool> {
        self.meta.version += 1;
        let answer = self.client.update_file(self.meta.clone()).await?;
        Ok(answer.into_inner().version == self.meta.version)
    }
}

/// UpdateFile commits per second at `addr` (any MetaStore service),
/// connecting as `security` says, through tonic's channels (T1 compares
/// them with TLS and without), on [`drive_on_own_thread`].
pub async fn commit_load(
    addr: &str,
    security: &ClientSecurity,
    clients: usize,
    duration: Duration,
) -> BenchResult<LoadRow> {
    let (addr, security) = (addr.to_string(), security.clone());
    let make = async move || {
        (0..clients)
            .map(|task| {
                let channel = surfstore::grpc::secure_channel(&addr, &security)?;
                Ok(Committer::new(MetaStoreClient::new(channel), 0, task))
            })
            .collect()
    };
    let measured = drive_on_own_thread(make, duration).await?;
    Ok(row("", clients, None, measured))
}

/// What [`drive`] measures of `clients` [`Committer`]s at `addr` for
/// `duration` in `round`, each on a [`LeanChannel`](lean::LeanChannel) of
/// its own, run on [`drive_on_own_thread`].
async fn commit_calls(
    addr: &str,
    clients: usize,
    duration: Duration,
    round: usize,
) -> BenchResult<Measured> {
    let addr = addr.to_string();
    let make = async move || {
        lean::each_connected(&addr, clients, |channel, task| {
            Committer::new(MetaStoreClient::new(channel), round, task)
        })
        .await
    };
    drive_on_own_thread(make, duration).await
}

/// Makes the clients with `make`, connections included, and [`drive`]s
/// them for `duration`, on a tokio runtime of its own with one thread.
///
/// The commit points run this way, ours and etcd's alike. On a small
/// machine the clients share the cores with the servers they measure; on
/// this bench's multi-threaded runtime every call also paid for wake-ups
/// across its threads (clients' CPU per commit 28-41 µs, against 24-25 µs
/// on one thread), CPU the servers then did not get. The clients are made
/// on the runtime that drives them: their connections' tasks run where
/// they are created.
pub async fn drive_on_own_thread<W, F>(make: F, duration: Duration) -> BenchResult<Measured>
where
    W: Worker,
    F: AsyncFnOnce() -> BenchResult<Vec<W>> + Send + 'static,
{
    tokio::task::spawn_blocking(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("start the clients' runtime: {e}"))?;
        runtime.block_on(async move { drive(make().await?, duration, u64::MAX).await })
    })
    .await?
}

/// A client putting distinct random blocks of one size.
struct Putter {
    client: BlockStoreClient<Channel>,
    data: Vec<u8>,
}

impl Worker for Putter {
    async fn warm_up(&mut self) -> BenchResult<()> {
        self.client
            .has_blocks(BlockHashes { hashes: vec![] })
            .await?;
        Ok(())
    }

    async fn call(&mut self, op: u64) -> BenchResult<bool> {
        // A distinct block every time, so nothing is deduplicated.
        self.data[..8].copy_from_slice(&op.to_le_bytes());
        let block = Block {
            block_size: i32::try_from(self.data.len())?,
            block_data: Bytes::copy_from_slice(&self.data),
        };
        Ok(self.client.put_block(block).await?.into_inner().flag)
    }
}

/// PutBlocks of `size` bytes per second at `addr`, at most `max_ops`.
async fn put_load(
    addr: &str,
    size: u64,
    clients: usize,
    duration: Duration,
    max_ops: u64,
) -> BenchResult<LoadRow> {
    let workers = (0..clients)
        .map(|task| {
            let mut data = vec![0u8; usize::try_from(size)?];
            Rng::new(1000 + task as u64).fill(&mut data);
            let client = BlockStoreClient::new(surfstore::grpc::channel(addr)?)
                .max_encoding_message_size(MAX_MESSAGE_BYTES)
                .max_decoding_message_size(MAX_MESSAGE_BYTES);
            Ok(Putter { client, data })
        })
        .collect::<BenchResult<Vec<_>>>()?;
    let measured = drive(workers, duration, max_ops).await?;
    Ok(row("block", clients, Some(size), measured))
}
