//! `surfstore-client`: syncs a base directory with SurfStore once (SPEC §7–8).
//!
//! `surfstore-client [-d] [-q] [--keep-conflicts] [--hash-cache]
//! [--retry-for SECONDS] [--ca FILE] [--token-file FILE] [-f CONFIG] [META_ADDR] BASEDIR BLOCKSIZE`: the
//! MetaStore is META_ADDR, or with `-f` the Raft cluster of CONFIG, whose
//! leader the client finds itself.
//!
//! On a terminal, progress bars for hashing and transfers are drawn on
//! stderr; at the end one summary line goes to stdout (also when output is
//! not a terminal, then without bars). `-q` prints neither: only warnings
//! and errors remain, on stderr. Ctrl-C (or SIGTERM) stops a run with
//! `interrupted; rerun to resume` (exit 130): the next run resumes the
//! downloads in progress.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use surfstore::cli::{self, Fatal};
use surfstore::client::conflict::{self, Copies};
use surfstore::client::rpc::Patience;
use surfstore::client::watch::{self, Announcer};
use surfstore::client::{self, MetaStore, Options, Progress, SyncError};
use surfstore::config::{ClusterConfig, check_host_port};
use surfstore::grpc::MAX_BLOCK_BYTES;
use surfstore::security::ClientFlags;

/// Syncs BASEDIR with a SurfStore MetaStore and BlockStore.
#[derive(Parser, Debug)]
#[command(
    name = "surfstore-client",
    version = cli::VERSION,
    override_usage = "surfstore-client [OPTIONS] META_ADDR BASEDIR BLOCKSIZE\n       \
                      surfstore-client [OPTIONS] -f CONFIG BASEDIR BLOCKSIZE",
    after_help = CLIENT_AFTER_HELP
)]
struct Args {
    /// Print debug logs to stderr (and no progress bars).
    #[arg(short = 'd', long = "debug")]
    debug: bool,
    /// Print no progress bars and no summary; warnings and errors still go
    /// to stderr.
    #[arg(short = 'q', long = "quiet")]
    quiet: bool,
    /// Sync although index.txt seems written with another BLOCKSIZE: every
    /// file is hashed and uploaded again with this one. Without it such a
    /// run is refused (exit 64), since it would re-upload everything and
    /// may report false conflicts.
    #[arg(long = "rehash")]
    rehash: bool,
    /// Create BASEDIR (and its parents) if it does not exist.
    #[arg(long = "create")]
    create: bool,
    /// Print one line per file changed (uploaded, downloaded, deleted
    /// here or on the server), as it is done.
    #[arg(short = 'v', long = "verbose")]
    verbose: bool,
    /// Print what a sync would do now (upload, download, delete or
    /// conflict, per file) and change nothing: not the files, not the
    /// server, not index.txt.
    #[arg(long = "dry-run", conflicts_with = "watch")]
    dry_run: bool,
    /// Sync, then keep syncing until Ctrl-C: local changes within about a
    /// second, remote ones as the server announces them (or every
    /// --interval seconds from a server that cannot announce them).
    #[arg(long = "watch")]
    watch: bool,
    /// With --watch: how often to ask a server that cannot announce its
    /// changes (the original's) whether anything changed.
    #[arg(long = "interval", value_name = "SECONDS", default_value_t = 2.0, requires = "watch",
          value_parser = positive_seconds)]
    interval: f64,
    /// When the server's version wins over a local change, keep the local
    /// file beside it as NAME.conflict-YYYYMMDD-HHMMSS (UTC), where it
    /// syncs on the next run, instead of saving it under
    /// $XDG_STATE_HOME/surfstore/conflicts (~/.local/state/...).
    #[arg(long = "keep-conflicts")]
    keep_conflicts: bool,
    /// Keep BASEDIR/.index.txt.cache, each file's size, times and block
    /// hashes as of the last run, so a resync does not re-read files that
    /// have not changed since (files changed within 2 s before a run are
    /// read again next time). The file never syncs; deleting it is always
    /// safe, the next run just hashes every file.
    #[arg(long = "hash-cache")]
    hash_cache: bool,
    /// How many seconds a call to a slow or failing server is tried again
    /// before the run gives up (default 60; 0 gives up at the first
    /// failure).
    #[arg(long = "retry-for", value_name = "SECONDS")]
    retry_for: Option<u64>,
    /// Cluster config (JSON or the older text format): sync through the
    /// leader of its Raft servers instead of META_ADDR.
    #[arg(
        short = 'f',
        long = "config",
        value_name = "CONFIG",
        env = "SURFSTORE_CONFIG"
    )]
    config: Option<PathBuf>,
    #[command(flatten)]
    security: ClientFlags,
    /// The MetaStore, when META_ADDR is not given (nor -f).
    #[arg(long = "addr", value_name = "META_ADDR", env = "SURFSTORE_ADDR")]
    addr: Option<String>,
    /// The block size, when BLOCKSIZE is not given.
    #[arg(
        long = "block-size",
        value_name = "BLOCKSIZE",
        env = "SURFSTORE_BLOCK_SIZE"
    )]
    block_size: Option<String>,
    /// META_ADDR: the MetaStore, host:port (omitted with -f, --addr or
    /// SURFSTORE_ADDR). BASEDIR: the directory to sync. BLOCKSIZE: the
    /// block size in bytes (omitted with --block-size or
    /// SURFSTORE_BLOCK_SIZE).
    #[arg(value_names = ["META_ADDR", "BASEDIR", "BLOCKSIZE"], num_args = 1..=3, required = true)]
    positional: Vec<String>,
}

/// What `--help` adds after the options.
const CLIENT_AFTER_HELP: &str = "\
Exit codes: 0 in sync (also after --watch ends with Ctrl-C); 1 a failure (a \
server out of reach, a file not synced); 64 bad arguments, config or \
.surfignore, or a block size to refuse; 130 interrupted (rerun to resume).

Logs: warnings and errors on stderr; -d for debug logs; RUST_LOG (e.g. \
RUST_LOG=surfstore=debug) overrides both. NO_COLOR turns colours off.";

/// Bounds the client's memory under glibc without paying a page fault per
/// 4 KiB of block data. Blocks are allocated and freed by the hundred. Left
/// alone, glibc raises its mmap threshold after the first large free and
/// every thread's arena keeps what it freed: ~125 MiB peak for a 4 GiB
/// upload at 4 MiB blocks. Pinned at glibc's default of 128 KiB, every
/// block buffer was a fresh mapping that faulted in page by page (peak 35
/// MiB, but ~0.2 s more CPU per 512 MiB). In between: buffers up to 8 MiB
/// come from at most two arenas, each giving back whatever it has free
/// beyond 16 MiB (peak ~52 MiB for the same upload).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn keep_large_allocations_returnable() {
    const MMAP_THRESHOLD: libc::c_int = 8 << 20;
    const TRIM_THRESHOLD: libc::c_int = 16 << 20;
    const ARENAS: libc::c_int = 2;
    // SAFETY: mallopt only tunes the allocator, and runs before any other
    // thread exists. On failure (0) glibc keeps its defaults, which work.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
        libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD);
        libc::mallopt(libc::M_ARENA_MAX, ARENAS);
    }
}

/// Other allocators return large blocks to the system by themselves.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn keep_large_allocations_returnable() {}

/// Where the MetaStore is.
enum Source {
    Addr(String),
    Cluster(ClusterConfig),
}

/// Exit code of a run stopped by Ctrl-C or SIGTERM (128 + SIGINT).
const EXIT_INTERRUPTED: u8 = 130;

/// How long an interrupted run's leftover blocking work (hashing, writing
/// a block) may delay the exit; it is safe to abandon, since every change
/// to the base directory is a rename of a finished file.
const ABANDON_AFTER: Duration = Duration::from_millis(200);

fn main() -> ExitCode {
    // Before the runtime starts its threads.
    keep_large_allocations_returnable();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            let fatal = Fatal::failure(format!("cannot start the async runtime: {e}"));
            return cli::exit_code("surfstore-client", Err(fatal));
        }
    };
    let code = runtime.block_on(client_main());
    runtime.shutdown_timeout(ABANDON_AFTER);
    code
}

async fn client_main() -> ExitCode {
    let args: Args = cli::parse_args();
    // Bars would only flicker between debug lines, or between the syncs of
    // --watch.
    let progress = if args.quiet || args.debug || args.watch {
        Progress::hidden()
    } else {
        Progress::on_terminal()
    };
    cli::init_logging_to(args.debug, progress.log_writer());
    cli::exit_code("surfstore-client", run(args, progress).await)
}

async fn run(args: Args, progress: Progress) -> Result<(), Fatal> {
    let (quiet, keep_conflicts, hash_cache) = (args.quiet, args.keep_conflicts, args.hash_cache);
    let (verbose, dry_run, rehash) = (args.verbose, args.dry_run, args.rehash);
    let watching = args.watch.then(|| Duration::from_secs_f64(args.interval));
    let mut patience = Patience::default();
    if let Some(seconds) = args.retry_for {
        patience.retry_for = Duration::from_secs(seconds);
    }
    let security = args.security.load().map_err(Fatal::usage)?;
    let (source, base, block_size) = check_args(args)?;
    let meta = match &source {
        Source::Addr(addr) => MetaStore::single(addr, &security),
        Source::Cluster(config) => MetaStore::cluster(config, &security),
    }
    .map_err(Fatal::usage)?
    .with_patience(patience);
    let conflicts = if keep_conflicts {
        Copies::Beside
    } else {
        Copies::Outside(conflict::state_dir_from_env())
    };
    let options = Options {
        block_size,
        conflicts,
        hash_cache,
        progress,
        verbose,
        rehash,
        settle: watching.map(|_| watch::SETTLE),
    };
    if dry_run {
        return print_plan(&base, &options, &meta).await;
    }
    if let Some(interval) = watching {
        return keep_in_sync(&base, &options, &meta, interval, quiet).await;
    }
    // On Ctrl-C the run is dropped where it stands: files are either old or
    // new, and downloads in progress stay as partial downloads that the
    // next run resumes.
    let result = tokio::select! {
        result = client::sync(&base, &options, &meta) => Some(result),
        () = cli::shutdown_signal() => None,
    };
    options.progress.finish();
    let Some(result) = result else {
        return Err(Fatal {
            code: EXIT_INTERRUPTED,
            message: "interrupted; rerun to resume".to_string(),
        });
    };
    let report = result.map_err(sync_error)?;
    if !quiet {
        println!("{report}");
    }
    failures(&report)
}

/// Reports each file that could not be synced once: the last as the fatal
/// error, the others on a line each before it.
fn failures(report: &client::Report) -> Result<(), Fatal> {
    let Some(((last, error), others)) = report.failures.split_last() else {
        return Ok(());
    };
    for (name, error) in others {
        eprintln!("surfstore-client: {name:?} not synced: {error}");
    }
    let and_more = match others.len() {
        0 => String::new(),
        n => format!(" ({} files not synced in all)", n + 1),
    };
    Err(Fatal::failure(format!(
        "{last:?} not synced: {error}{and_more}"
    )))
}

/// `--dry-run`: prints the plan, one line per file, and its counts.
async fn print_plan(
    base: &std::path::Path,
    options: &Options,
    meta: &MetaStore,
) -> Result<(), Fatal> {
    let result = tokio::select! {
        result = client::dry_run(base, options, meta) => Some(result),
        () = cli::shutdown_signal() => None,
    };
    options.progress.finish();
    let plan = result
        .ok_or_else(|| Fatal {
            code: EXIT_INTERRUPTED,
            message: "interrupted; nothing was changed".to_string(),
        })?
        .map_err(sync_error)?;
    for line in plan.lines() {
        println!("{line}");
    }
    println!("{}", client::report::dry_run_summary(&plan));
    Ok(())
}

/// `--watch`: syncs until Ctrl-C or SIGTERM, which end it with exit 0.
/// Each sync that changed something prints its summary line; a failure is
/// said once, however often it repeats, and so is its end.
async fn keep_in_sync(
    base: &std::path::Path,
    options: &Options,
    meta: &MetaStore,
    interval: Duration,
    quiet: bool,
) -> Result<(), Fatal> {
    let mut announcer = Announcer::default();
    let mut failed_before = Vec::new();
    let shown = |outcome: Result<client::Report, SyncError>| {
        if let Some(line) = announcer.outcome(&outcome) {
            eprintln!("surfstore-client: {line}");
        }
        let Ok(report) = outcome else { return };
        // A file that cannot sync fails again on every sync: say it while
        // the failures change.
        let failed: Vec<String> = report
            .failures
            .iter()
            .map(|(name, error)| format!("{name:?} not synced: {error}"))
            .collect();
        if failed != failed_before {
            for line in &failed {
                eprintln!("surfstore-client: {line}");
            }
        }
        if !quiet && (!report.counts.is_empty() || failed != failed_before) {
            println!("{report}");
        }
        failed_before = failed;
    };
    tokio::select! {
        watched = watch::watch(base, options, meta, interval, shown) => {
            watched.map_err(Fatal::failure)
        }
        () = cli::shutdown_signal() => Ok(()),
    }
}

/// `--interval`: a positive number of seconds.
fn positive_seconds(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(seconds) if seconds > 0.0 && seconds.is_finite() && seconds < 1e9 => Ok(seconds),
        _ => Err(format!("{text:?} is not a positive number of seconds")),
    }
}

/// How a failed run is reported.
fn sync_error(error: SyncError) -> Fatal {
    match error {
        // Like a bad BLOCKSIZE argument: nothing was done.
        SyncError::BlockSize(error) => Fatal::usage(error),
        error @ SyncError::OtherBlockSize { .. } => Fatal::usage(error),
        // A bad config file, like a bad -f CONFIG.
        SyncError::Ignore(error) => Fatal::usage(error),
        error => Fatal::failure(error),
    }
}

/// What is missing when the arguments do not name a MetaStore, a base
/// directory and a block size.
const USAGE: &str = "expected META_ADDR BASEDIR BLOCKSIZE (or -f CONFIG BASEDIR BLOCKSIZE; \
                     META_ADDR and BLOCKSIZE may also come from SURFSTORE_ADDR and \
                     SURFSTORE_BLOCK_SIZE)";

/// Validates the command line: the usage errors of SPEC §7 (exit 64).
///
/// The positional arguments are `[META_ADDR] BASEDIR [BLOCKSIZE]`: META_ADDR
/// may be left out when -f or --addr (or their variables) say where the
/// MetaStore is, BLOCKSIZE when --block-size does. Two arguments are
/// BASEDIR BLOCKSIZE when the MetaStore is known, else META_ADDR BASEDIR.
fn check_args(args: Args) -> Result<(Source, PathBuf, usize), Fatal> {
    let create = args.create;
    let known_source = args.config.is_some() || args.addr.is_some();
    let (addr, base, block_size) = match args.positional.as_slice() {
        [addr, base, block_size] => (Some(addr.clone()), base, Some(block_size.clone())),
        [base, block_size] if known_source => (None, base, Some(block_size.clone())),
        [addr, base] => (Some(addr.clone()), base, None),
        [base] => (None, base, None),
        _ => return Err(Fatal::usage(USAGE)),
    };
    let source = match (args.config, addr.or(args.addr)) {
        (Some(path), None) => Source::Cluster(ClusterConfig::load(&path).map_err(Fatal::usage)?),
        (None, Some(addr)) => {
            check_host_port(&addr).map_err(|e| Fatal::usage(format!("META_ADDR {e}")))?;
            Source::Addr(addr)
        }
        (Some(_), Some(_)) => {
            return Err(Fatal::usage(
                "with -f CONFIG (or SURFSTORE_CONFIG) give no META_ADDR",
            ));
        }
        (None, None) => return Err(Fatal::usage(USAGE)),
    };
    let Some(block_size) = block_size.or(args.block_size) else {
        return Err(Fatal::usage(USAGE));
    };
    let block_size = match block_size.parse::<usize>() {
        Ok(n) if (1..=MAX_BLOCK_BYTES).contains(&n) => n,
        _ => {
            return Err(Fatal::usage(format!(
                "BLOCKSIZE must be a whole number of bytes from 1 to {MAX_BLOCK_BYTES}, got {block_size:?}"
            )));
        }
    };
    let base = PathBuf::from(base);
    match std::fs::metadata(&base) {
        Ok(meta) if meta.is_dir() => Ok((source, base, block_size)),
        Ok(_) => Err(Fatal::usage(format!(
            "base directory {} is not a directory",
            base.display()
        ))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && create => {
            std::fs::create_dir_all(&base).map_err(|e| {
                Fatal::failure(format!(
                    "cannot create base directory {}: {e}",
                    base.display()
                ))
            })?;
            Ok((source, base, block_size))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(Fatal::usage(format!(
            "base directory {} does not exist; create it, or pass --create",
            base.display()
        ))),
        Err(e) => Err(Fatal::usage(format!(
            "base directory {}: {e}",
            base.display()
        ))),
    }
}
