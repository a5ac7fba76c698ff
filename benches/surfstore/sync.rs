//! B1–B5: what a user of `surfstore-client` waits for. Each figure is the
//! wall time of one client process, from start to exit, syncing through a
//! 3-server Raft cluster (found with `-f CONFIG`) and a BlockStore.
//!
//! B4c is B4 with `--hash-cache`, after an untimed run that wrote the
//! cache: what a resync costs when no file needs reading.
//!
//! B5 counts the blocks the client sends. The client prints no block counts,
//! so that run's BlockStore is the project's own [`BlockStoreService`]
//! served in this process over a backend that counts `PutBlock`s; its
//! MetaStore is the real `surfstore-server -s meta`.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use surfstore::block_store::{BlockBackend, BlockStoreError, BlockStoreService, MemoryBlocks};
use surfstore::client::cache::RACY_MARGIN;
use tokio::runtime::Runtime;

use crate::data::{self, Generated, Rng};
use crate::procs::{self, ClientRun, Cluster, Server, path_arg, run_client};
use crate::{BenchResult, Scale, cpu};

/// The block size of B1, B3–B5.
pub const LARGE_BLOCK: u64 = 4 << 20;

/// The block size of B2.
pub const SMALL_BLOCK: u64 = 4 << 10;

/// How many bytes B5 changes.
const CHANGE_BYTES: usize = 4 << 10;

/// One timed client run.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SyncRow {
    /// `B1`, `B2`, ...
    pub id: String,
    /// What the run did.
    pub what: String,
    /// Bytes of data the run covered (synced, or scanned for a resync).
    pub bytes: u64,
    /// Files in the directory.
    pub files: usize,
    /// The client's BLOCKSIZE.
    pub block_size: u64,
    /// Blocks the data makes at that size.
    pub blocks: u64,
    /// Wall time of the client process.
    pub secs: f64,
    /// CPU seconds the client process used.
    pub client_cpu_secs: f64,
    /// CPU seconds every server used meanwhile.
    pub server_cpu_secs: f64,
    /// Share of the machine's CPU time stolen meanwhile, in percent.
    pub steal_percent: f64,
    /// PutBlocks the BlockStore received during the run (B5 only).
    pub blocks_sent: Option<u64>,
    /// Bytes those PutBlocks carried (B5 only).
    pub bytes_sent: Option<u64>,
    /// The client's summary line.
    pub client_said: String,
}

impl SyncRow {
    /// Megabytes (10^6) of data per second of wall time.
    pub fn mb_per_sec(&self) -> f64 {
        self.bytes as f64 / 1e6 / self.secs
    }

    /// Blocks of data per second of wall time.
    pub fn blocks_per_sec(&self) -> f64 {
        self.blocks as f64 / self.secs
    }
}

/// Runs B1–B5 at `scale` in `work`.
pub fn run_all(scale: &Scale, work: &Path, runtime: &Runtime) -> BenchResult<Vec<SyncRow>> {
    let mut rows = Vec::new();
    let cases = [
        ("B1", "4m", scale.mixed_bytes, LARGE_BLOCK, 1),
        ("B2", "4k", scale.small_block_bytes, SMALL_BLOCK, 2),
    ];
    for (id, label, total, block_size, seed) in cases {
        eprintln!("{id}: upload, download and resync at {block_size}-byte blocks");
        rows.extend(directory_round_trip(
            work, runtime, label, id, total, block_size, seed,
        )?);
    }
    eprintln!("B5: one {CHANGE_BYTES}-byte change in a large file");
    rows.extend(one_change(scale, work, runtime)?);
    Ok(rows)
}

/// A BlockStore and a Raft cluster of 3 using it, fresh for one data set.
fn servers(work: &Path, runtime: &Runtime, label: &str) -> BenchResult<(Server, Cluster)> {
    let block = procs::start_server(work, &format!("{label}-block"), "block", None, &[])?;
    let cluster = runtime.block_on(procs::start_cluster(
        work,
        &format!("{label}-raft"),
        3,
        &block.addr,
        None,
    ))?;
    Ok((block, cluster))
}

/// The cold upload (B1/B2), cold download (B3) and no-op resync (B4, and
/// B4c with the hash cache) of one generated directory.
fn directory_round_trip(
    work: &Path,
    runtime: &Runtime,
    label: &str,
    upload_id: &str,
    total: u64,
    block_size: u64,
    seed: u64,
) -> BenchResult<Vec<SyncRow>> {
    let (block, cluster) = servers(work, runtime, label)?;
    let config = path_arg(&cluster.config)?;
    let source = work.join(format!("{label}-source"));
    let copy = work.join(format!("{label}-download"));
    for dir in [&source, &copy] {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    let generated = data::mixed_dir(&source, total, seed)?;
    let written = Instant::now();
    let mut server_pids = cluster.pids();
    server_pids.push(block.pid());
    let sync = |id: &str, what: String, dir: &Path, flags: &[&str]| -> BenchResult<SyncRow> {
        let mut args: Vec<String> = flags.iter().map(|flag| flag.to_string()).collect();
        args.extend([
            "-f".to_string(),
            config.clone(),
            path_arg(dir)?,
            block_size.to_string(),
        ]);
        let servers = cpu::Meter::start(server_pids.clone());
        let steal = cpu::StealMeter::start();
        let run = run_client(work, &args)?;
        let mut row = row_for(id, what, &generated, block_size, &run, servers.elapsed());
        row.steal_percent = steal.percent();
        Ok(row)
    };
    let size = human_bytes(generated.bytes());
    let upload = sync(upload_id, format!("cold upload, {size}"), &source, &[])?;
    let download = sync("B3", format!("cold download, {size}"), &copy, &[])?;
    data::check_same(&source, &copy)?;
    let resync = sync("B4", format!("no-op resync, {size}"), &source, &[])?;
    // The cache trusts only files that had settled before the run writing
    // it began; at quick scale the runs so far may take less than that.
    let settled = RACY_MARGIN + Duration::from_millis(100);
    std::thread::sleep(settled.saturating_sub(written.elapsed()));
    let cached = "--hash-cache";
    // Untimed: writes the cache the timed run reads.
    sync("B4c", String::new(), &source, &[cached])?;
    let what = format!("no-op resync with {cached}, {size}");
    let cached_resync = sync("B4c", what, &source, &[cached])?;
    Ok(vec![upload, download, resync, cached_resync])
}

fn row_for(
    id: &str,
    what: String,
    generated: &Generated,
    block_size: u64,
    run: &ClientRun,
    server_cpu_secs: f64,
) -> SyncRow {
    SyncRow {
        id: id.to_string(),
        what,
        bytes: generated.bytes(),
        files: generated.sizes.len(),
        block_size,
        blocks: generated.blocks(block_size),
        secs: run.elapsed.as_secs_f64(),
        client_cpu_secs: run.cpu_secs,
        server_cpu_secs,
        steal_percent: 0.0,
        blocks_sent: None,
        bytes_sent: None,
        client_said: run.stdout.clone(),
    }
}

/// B5: uploads one large file, changes 4 KiB in the middle of one block and
/// syncs again, counting what reached the BlockStore.
fn one_change(scale: &Scale, work: &Path, runtime: &Runtime) -> BenchResult<Vec<SyncRow>> {
    let counting = Arc::new(CountingBlocks::default());
    let block_store = runtime.block_on(serve_blocks(Arc::clone(&counting)))?;
    let meta = procs::start_server(work, "b5-meta", "meta", None, &[&block_store.addr])?;
    let dir = work.join("b5-source");
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let file = dir.join("large.bin");
    data::random_file(&file, scale.big_file_bytes, &mut Rng::new(5))?;
    let generated = Generated {
        sizes: vec![scale.big_file_bytes],
    };
    let args = [meta.addr.clone(), path_arg(&dir)?, LARGE_BLOCK.to_string()];
    let size = human_bytes(scale.big_file_bytes);

    // The BlockStore is this process: count its CPU with the MetaStore's.
    let server_pids = vec![meta.pid(), std::process::id()];
    let sync = |id: &str, what: String| -> BenchResult<SyncRow> {
        let before = counting.snapshot();
        let servers = cpu::Meter::start(server_pids.clone());
        let steal = cpu::StealMeter::start();
        let run = run_client(work, &args)?;
        let mut row = row_for(id, what, &generated, LARGE_BLOCK, &run, servers.elapsed());
        row.steal_percent = steal.percent();
        (row.blocks_sent, row.bytes_sent) = counting.since(before);
        Ok(row)
    };
    let upload = sync("B5a", format!("cold upload, one {size} file"))?;
    // Inside the middle block, away from its edges: exactly one block changes.
    let middle = scale.big_file_bytes / LARGE_BLOCK / 2;
    data::overwrite(&file, middle * LARGE_BLOCK + 12_345, CHANGE_BYTES, 6)?;
    let change = sync(
        "B5",
        format!("resync after a 4 KiB change in one {size} file"),
    )?;
    Ok(vec![upload, change])
}

/// A block backend in memory that counts what is put into it.
#[derive(Debug, Default)]
struct CountingBlocks {
    inner: MemoryBlocks,
    puts: AtomicU64,
    bytes: AtomicU64,
}

impl CountingBlocks {
    fn snapshot(&self) -> (u64, u64) {
        (
            self.puts.load(Ordering::SeqCst),
            self.bytes.load(Ordering::SeqCst),
        )
    }

    /// PutBlocks and bytes received since `before`.
    fn since(&self, before: (u64, u64)) -> (Option<u64>, Option<u64>) {
        let now = self.snapshot();
        (Some(now.0 - before.0), Some(now.1 - before.1))
    }
}

impl BlockBackend for CountingBlocks {
    fn get(&self, hash: &str) -> Result<Option<Bytes>, BlockStoreError> {
        self.inner.get(hash)
    }

    fn put(&self, hash: &str, data: Bytes) -> Result<(), BlockStoreError> {
        self.puts.fetch_add(1, Ordering::SeqCst);
        self.bytes.fetch_add(data.len() as u64, Ordering::SeqCst);
        self.inner.put(hash, data)
    }

    fn has(&self, hash: &str) -> Result<bool, BlockStoreError> {
        self.inner.has(hash)
    }
}

/// A BlockStore served by this process; stops when dropped.
struct LocalBlockStore {
    addr: String,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for LocalBlockStore {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Serves `backend` as a BlockStore on a free loopback port.
async fn serve_blocks(backend: Arc<CountingBlocks>) -> BenchResult<LocalBlockStore> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?.to_string();
    let service = BlockStoreService::new(backend).into_server();
    let task = tokio::spawn(async move {
        let served = surfstore::grpc::server()
            .add_service(service)
            .serve_with_incoming(surfstore::grpc::incoming(listener))
            .await;
        if let Err(error) = served {
            eprintln!("the bench's BlockStore stopped: {error}");
        }
    });
    Ok(LocalBlockStore { addr, task })
}

/// `512 MiB`, `4 KiB`: sizes as the table shows them.
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [(u64, &str); 3] = [(1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")];
    for (unit, name) in UNITS {
        if bytes >= unit && bytes.is_multiple_of(unit) {
            return format!("{} {name}", bytes / unit);
        }
    }
    format!("{bytes} B")
}
