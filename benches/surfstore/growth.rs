//! B9: does a durable 3-server cluster's cost follow its state or its
//! history? 64 callers rewrite their own file again and again (the state
//! stays 64 files): after a warm-up, the leader's RSS growth and data dir
//! size over many more rewrites, with compaction (`--snapshot-entries`, the
//! default) and without (0, how the log behaved before snapshots). Halfway
//! through, follower 2 is crashed, so it misses half the rewrites; then it
//! is restored and the time until it holds the leader's log end is
//! measured (by InstallSnapshot when compacting).

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::{Duration, Instant};

use surfstore::hash::hash_block;
use surfstore::proto::FileMetaData;
use surfstore::proto::meta_store_client::MetaStoreClient;
use surfstore::proto::raft_surfstore_client::RaftSurfstoreClient;
use tonic::transport::Channel;

use crate::load::{Worker, drive};
use crate::{BenchResult, Scale, procs};

/// Callers, each rewriting its own file.
const FILES: usize = 64;

/// How long the rewrites may take at most before the bench gives up.
const PHASE_LIMIT: Duration = Duration::from_secs(1800);

/// How long a restored follower may take to catch up before the bench
/// reports it did not.
const CATCH_UP_LIMIT: Duration = Duration::from_secs(120);

/// One B9 run.
#[derive(Debug, Clone, serde::Serialize)]
pub struct GrowthRow {
    /// `--snapshot-entries` (0: never).
    pub snapshot_entries: usize,
    /// Rewrites before the first measurement.
    pub warm_updates: u64,
    /// Rewrites measured.
    pub updates: u64,
    /// Leader RSS after the warm-up, KiB.
    pub rss_before_kib: u64,
    /// Leader RSS at the end, KiB.
    pub rss_after_kib: u64,
    /// The leader's data dir at the end, bytes.
    pub data_dir_bytes: u64,
    /// Rewrites the crashed follower missed.
    pub missed: u64,
    /// Seconds from its Restore until it held the leader's log end; `None`
    /// when its state was too large to read (no compaction) or it did not.
    pub catch_up_secs: Option<f64>,
    /// Rewrites per second over the measured part.
    pub updates_per_sec: f64,
}

impl GrowthRow {
    /// How much the leader's RSS grew over the measured rewrites, MiB.
    pub fn rss_growth_mib(&self) -> f64 {
        (self.rss_after_kib as f64 - self.rss_before_kib as f64) / 1024.0
    }

    /// The leader's data dir at the end, MiB.
    pub fn data_dir_mib(&self) -> f64 {
        self.data_dir_bytes as f64 / (1 << 20) as f64
    }
}

/// A caller rewriting its own file; the version outlives the worker, so a
/// later phase goes on from it.
struct Rewriter {
    client: MetaStoreClient<Channel>,
    meta: FileMetaData,
    version: Arc<AtomicI32>,
}

impl Worker for Rewriter {
    async fn warm_up(&mut self) -> BenchResult<()> {
        Ok(())
    }

    async fn call(&mut self, _op: u64) -> BenchResult<bool> {
        let version = self.version.load(Ordering::Relaxed) + 1;
        self.meta.version = version;
        self.meta.block_hash_list = vec![hash_block(&version.to_le_bytes())];
        let answer = self.client.update_file(self.meta.clone()).await?;
        self.version.store(version, Ordering::Relaxed);
        Ok(answer.into_inner().version == version)
    }
}

/// Both B9 runs: with compaction, then without.
pub async fn run_all(scale: &Scale, work: &Path) -> BenchResult<Vec<GrowthRow>> {
    let mut rows = Vec::new();
    for snapshot_entries in [scale.snapshot_entries, 0] {
        eprintln!("B9: growth, --snapshot-entries {snapshot_entries}");
        rows.push(run(scale, work, snapshot_entries).await?);
    }
    Ok(rows)
}

async fn run(scale: &Scale, work: &Path, snapshot_entries: usize) -> BenchResult<GrowthRow> {
    let label = format!("b8-growth-{snapshot_entries}");
    let data = work.join(&label);
    let entries = snapshot_entries.to_string();
    let cluster = procs::start_cluster_with(
        work,
        &label,
        3,
        "127.0.0.1:1",
        Some(&data),
        &["--snapshot-entries".to_string(), entries.clone()],
        &surfstore::security::ClientSecurity::default(),
    )
    .await?;
    let leader = cluster.addrs[0].clone();
    let versions: Vec<Arc<AtomicI32>> = (0..FILES).map(|_| Arc::default()).collect();
    let rewrite = async |ops: u64| -> BenchResult<f64> {
        let workers = versions
            .iter()
            .enumerate()
            .map(|(i, version)| {
                Ok(Rewriter {
                    client: MetaStoreClient::new(surfstore::grpc::channel(&leader)?),
                    meta: FileMetaData {
                        filename: format!("growth-{i:02}"),
                        ..Default::default()
                    },
                    version: Arc::clone(version),
                })
            })
            .collect::<BenchResult<Vec<_>>>()?;
        let (done, errors, secs) = drive(workers, PHASE_LIMIT, ops).await?;
        if errors > 0 || (done.len() as u64) < ops {
            return Err(
                format!("B9: {errors} rewrites failed, {} of {ops} done", done.len()).into(),
            );
        }
        Ok(secs)
    };
    rewrite(scale.growth_warm_updates).await?;
    let leader_pid = cluster.pids()[0];
    let rss_before_kib = rss_kib(leader_pid)?;
    let half = scale.growth_updates / 2;
    let mut secs = rewrite(half).await?;
    let mut follower = RaftSurfstoreClient::new(surfstore::grpc::channel(&cluster.addrs[2])?);
    follower.crash(()).await?;
    secs += rewrite(scale.growth_updates - half).await?;
    let rss_after_kib = rss_kib(leader_pid)?;
    let data_dir_bytes = dir_bytes(&data.join("0"))?;
    let catch_up_secs = if snapshot_entries > 0 {
        catch_up(&cluster.addrs[0], &mut follower).await?
    } else {
        // Its GetInternalState would carry the whole log, past the
        // message limit: there is nothing to poll it with.
        None
    };
    Ok(GrowthRow {
        snapshot_entries,
        warm_updates: scale.growth_warm_updates,
        updates: scale.growth_updates,
        rss_before_kib,
        rss_after_kib,
        data_dir_bytes,
        missed: scale.growth_updates - half,
        catch_up_secs,
        updates_per_sec: scale.growth_updates as f64 / secs,
    })
}

/// Restores the crashed follower and waits until its log ends where the
/// leader's does; the seconds that took.
async fn catch_up(
    leader: &str,
    follower: &mut RaftSurfstoreClient<Channel>,
) -> BenchResult<Option<f64>> {
    let mut leader = RaftSurfstoreClient::new(surfstore::grpc::channel(leader)?)
        .max_decoding_message_size(surfstore::grpc::MAX_MESSAGE_BYTES);
    let state = leader.get_internal_state(()).await?.into_inner();
    let goal = state.first_log_index + state.log.len() as i64;
    let mut follower = follower
        .clone()
        .max_decoding_message_size(surfstore::grpc::MAX_MESSAGE_BYTES);
    let began = Instant::now();
    follower.restore(()).await?;
    while began.elapsed() < CATCH_UP_LIMIT {
        let state = follower.get_internal_state(()).await?.into_inner();
        if state.first_log_index + state.log.len() as i64 >= goal {
            return Ok(Some(began.elapsed().as_secs_f64()));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok(None)
}

/// The resident set of process `pid`, KiB.
fn rss_kib(pid: u32) -> BenchResult<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .ok_or_else(|| format!("no VmRSS for process {pid}").into())
}

/// The bytes of every file under `dir`.
fn dir_bytes(dir: &Path) -> BenchResult<u64> {
    let mut total = 0;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let meta = entry.metadata()?;
        total += if meta.is_dir() {
            dir_bytes(&entry.path())?
        } else {
            meta.len()
        };
    }
    Ok(total)
}
