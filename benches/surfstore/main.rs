//! `make bench`: how fast SurfStore syncs and commits, measured end to end
//! against the real release binaries on loopback.
//!
//! * B1–B5 ([`sync`]): `surfstore-client` runs uploading, downloading and
//!   resyncing generated directories; the client process is what is timed.
//! * B6 ([`load`]): `UpdateFile` commits per second and their latency from
//!   in-process tonic clients, against a 3-server Raft cluster and a plain
//!   MetaStore, in memory and with `--data-dir`; the same load as `Put`s
//!   on a 3-member etcd cluster when etcd is installed ([`etcd`]); and
//!   `PutBlock`s per second.
//! * B7 ([`sha`]): this machine's single-core SHA-256 rate, the yardstick
//!   every sync figure is divided by.
//! * T1 ([`secure`]): commits and a cold upload with TLS and tokens on,
//!   against plaintext in the same run.
//! * B8 ([`backends`]): a cold upload and download through a BlockStore in
//!   memory, on disk and on S3 (SeaweedFS), side by side.
//! * B9 ([`growth`]): leader memory and disk over many rewrites of the same
//!   files, with and without compaction, and a follower's catch-up by
//!   snapshot, and B10 ([`gc`]): `surfstore-ctl gc` after rewrites
//!   (`SURFSTORE_BENCH_ONLY=growth` runs both alone).
//! * F1 ([`failover`]): with elections on, the time from a leader's death
//!   (SIGKILL, `Crash`, isolation) to the first update a new leader
//!   acknowledges, and availability around it (`SURFSTORE_BENCH_ONLY=failover`).
//!
//! Results go to stdout as markdown and to `target/bench/` as `results.md`,
//! `results.json` and `chart.png` ([`report`]). `SURFSTORE_BENCH_SCALE=quick`
//! shrinks every size and duration so CI can run it in seconds;
//! `SURFSTORE_BENCH_ONLY=sync` (B1–B5 and B8), `=backends` (B8), `=load`
//! (B6), `=commits` (B6's UpdateFile points and etcd's), `=tls` (T1),
//! `=growth` (B9, B10) or `=failover` (F1) runs one part, for measuring one
//! change quickly (B7 always runs). Nothing here asserts a timing: the
//! numbers are reported, the targets compared, and the run fails only if a
//! sync or a call does not do what it should.

mod backends;
mod cpu;
mod data;
mod etcd;
mod failover;
mod gc;
mod growth;
mod lean;
mod load;
// The tests' proxies between Raft servers (F1 isolates leaders with them);
// the tests use the parts the bench does not.
#[allow(dead_code)]
#[path = "../../tests/common/network.rs"]
mod network;
mod procs;
mod report;
mod secure;
mod sha;
mod sync;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

/// Any failure of the bench: it is a program, not a library, so one boxed
/// error type with a readable message is enough.
pub type BenchError = Box<dyn std::error::Error + Send + Sync>;

/// Result of a bench step.
pub type BenchResult<T> = Result<T, BenchError>;

/// How big and how long each measurement is.
#[derive(Debug, Clone)]
pub struct Scale {
    /// `full` or `quick`.
    pub name: &'static str,
    /// B1/B3/B4: bytes of the mixed-size directory synced at 4 MiB blocks.
    pub mixed_bytes: u64,
    /// B2: bytes of the directory synced at 4 KiB blocks.
    pub small_block_bytes: u64,
    /// B5: size of the single large file.
    pub big_file_bytes: u64,
    /// B6: how long each commit-load point runs, over all its rounds.
    pub commit_duration: Duration,
    /// B6: how long each PutBlock point runs at most.
    pub put_duration: Duration,
    /// B6: how many bytes each PutBlock point sends at most (servers keep
    /// blocks in memory, so this bounds their size).
    pub put_max_bytes: u64,
    /// B7: how long each hashing measurement runs.
    pub sha_duration: Duration,
    /// B6 reads: files in the map the readers read.
    pub read_files: usize,
    /// B6 reads: concurrent `GetFileInfoMap` calls, one per reader.
    pub readers: usize,
    /// B8: bytes of the directory synced at 4 MiB blocks per backend.
    pub backend_large_bytes: u64,
    /// B8: bytes of the directory synced at 4 KiB blocks per backend.
    pub backend_small_bytes: u64,
    /// B9: rewrites before measuring.
    pub growth_warm_updates: u64,
    /// B9: rewrites measured.
    pub growth_updates: u64,
    /// B9: `--snapshot-entries` of the compacting run.
    pub snapshot_entries: usize,
    /// B10: size of each synced file.
    pub gc_file_bytes: u64,
    /// F1: leader deaths per election timeout.
    pub failover_rounds: usize,
    /// F1: the election timeouts N measured, ms.
    pub failover_timeouts_ms: &'static [u64],
}

const MIB: u64 = 1 << 20;

impl Scale {
    /// The scale named by `SURFSTORE_BENCH_SCALE` (`full` when unset).
    fn from_env() -> BenchResult<Scale> {
        let name = std::env::var("SURFSTORE_BENCH_SCALE").unwrap_or_else(|_| "full".into());
        match name.as_str() {
            "full" => Ok(Scale {
                name: "full",
                mixed_bytes: 512 * MIB,
                small_block_bytes: 64 * MIB,
                big_file_bytes: 512 * MIB,
                commit_duration: Duration::from_secs(6),
                put_duration: Duration::from_secs(4),
                put_max_bytes: 1024 * MIB,
                sha_duration: Duration::from_secs(2),
                read_files: 20_000,
                readers: 500,
                backend_large_bytes: 256 * MIB,
                backend_small_bytes: 32 * MIB,
                growth_warm_updates: 20_000,
                growth_updates: 200_000,
                snapshot_entries: 10_000,
                gc_file_bytes: 4 * MIB,
                failover_rounds: 60,
                failover_timeouts_ms: &[300, 150],
            }),
            "quick" => Ok(Scale {
                name: "quick",
                mixed_bytes: 16 * MIB,
                small_block_bytes: 4 * MIB,
                big_file_bytes: 16 * MIB,
                commit_duration: Duration::from_millis(400),
                put_duration: Duration::from_millis(300),
                put_max_bytes: 64 * MIB,
                sha_duration: Duration::from_millis(200),
                read_files: 2_000,
                readers: 50,
                backend_large_bytes: 16 * MIB,
                backend_small_bytes: 2 * MIB,
                growth_warm_updates: 2_000,
                growth_updates: 10_000,
                snapshot_entries: 1_000,
                gc_file_bytes: MIB,
                failover_rounds: 6,
                failover_timeouts_ms: &[300],
            }),
            other => Err(
                format!("SURFSTORE_BENCH_SCALE must be `full` or `quick`, not {other:?}").into(),
            ),
        }
    }
}

/// The machine the numbers were taken on.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Machine {
    /// Usable cores.
    pub cores: usize,
    /// `model name` of the first CPU in /proc/cpuinfo.
    pub cpu: String,
    /// /proc/loadavg's three averages when the run started.
    pub load_before: String,
    /// The same when it ended: the machine may be shared.
    pub load_after: String,
    /// Share of the machine's CPU time the hypervisor took away during the
    /// run, in percent: wall times grow with it, CPU times do not.
    pub steal_percent: f64,
}

/// The first three fields of /proc/loadavg, or `?` where there is none.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|rest| rest.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into())
}

/// `target`, where the binaries under test are.
fn target_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("target")
}

/// `target/bench`, next to the binaries under test.
fn out_dir() -> PathBuf {
    target_dir().join("bench")
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("surfstore bench: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> BenchResult<()> {
    let scale = Scale::from_env()?;
    let out = out_dir();
    std::fs::create_dir_all(&out).map_err(|e| format!("create {}: {e}", out.display()))?;
    // Scratch space lives under target/ (a real disk, like a user's files)
    // and goes away at the end of the run, also on failure.
    let work = tempfile::Builder::new()
        .prefix("work-")
        .tempdir_in(&out)
        .map_err(|e| format!("create a work directory in {}: {e}", out.display()))?;
    let mut machine = Machine {
        cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
        cpu: cpu_model(),
        load_before: load_average(),
        load_after: String::new(),
        steal_percent: 0.0,
    };
    let steal = cpu::StealMeter::start();
    eprintln!(
        "surfstore bench ({} scale) on {} cores, {}, load {}",
        scale.name, machine.cores, machine.cpu, machine.load_before
    );

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("start the tokio runtime: {e}"))?;
    let only = std::env::var("SURFSTORE_BENCH_ONLY").unwrap_or_default();
    let (run_sync, run_backends, run_load, run_tls, run_growth, run_failover) = match only.as_str()
    {
        "" => (true, true, true, true, true, true),
        "sync" => (true, true, false, false, false, false),
        "backends" => (false, true, false, false, false, false),
        "load" | "commits" => (false, false, true, false, false, false),
        "tls" => (false, false, false, true, false, false),
        "growth" => (false, false, false, false, true, false),
        "failover" => (false, false, false, false, false, true),
        other => {
            return Err(format!(
                    "SURFSTORE_BENCH_ONLY must be `sync`, `backends`, `load`, `commits`, `tls`, `growth` or `failover`, not {other:?}"
                )
                .into());
        }
    };
    let sha = sha::measure(&scale);
    let sync = if run_sync {
        sync::run_all(&scale, work.path(), &runtime)?
    } else {
        Vec::new()
    };
    let backends = if run_backends {
        backends::run_all(&scale, work.path(), &runtime)?
    } else {
        backends::Backends::default()
    };
    let load = if run_load {
        let commits_only = only == "commits";
        runtime.block_on(load::run_all(&scale, work.path(), commits_only))?
    } else {
        load::Loads::default()
    };
    let tls = if run_tls {
        runtime.block_on(secure::run_all(&scale, work.path()))?
    } else {
        Vec::new()
    };
    let (growth, gc) = if run_growth {
        (
            runtime.block_on(growth::run_all(&scale, work.path()))?,
            Some(gc::run(&scale, work.path())?),
        )
    } else {
        (Vec::new(), None)
    };
    let failover = if run_failover {
        runtime.block_on(failover::run_all(&scale, work.path()))?
    } else {
        Vec::new()
    };
    machine.load_after = load_average();
    machine.steal_percent = steal.percent();

    let results = report::Results {
        scale: scale.name.to_string(),
        machine,
        sha,
        sync,
        backends,
        etcd: report::etcd_side(&load.commits, load.etcd),
        commits: load.commits,
        puts: load.puts,
        reads: load.reads,
        read_files: scale.read_files,
        tls,
        growth,
        gc,
        failover,
    };
    let markdown = report::markdown(&results);
    println!("{markdown}");
    report::write_all(&results, &markdown, &out)?;
    eprintln!(
        "wrote {0}/results.md, {0}/results.json and {0}/chart.png",
        out.display()
    );
    Ok(())
}
