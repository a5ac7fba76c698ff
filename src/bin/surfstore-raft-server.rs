//! `surfstore-raft-server`: one replica of the Raft-replicated MetaStore
//! (SPEC §5, §7), listening on `MetaStoreAddrs[ID]` of the config.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use surfstore::advertise;
use surfstore::cli::{self, Fatal};
use surfstore::config::{ClusterConfig, is_host_port};
use surfstore::grpc;
use surfstore::listener;
use surfstore::raft::MAX_INFLIGHT;
use surfstore::raft::node::{NodeConfig, StartError};
use surfstore::raft::service::{self, Security, ServeError};
use surfstore::raft::storage::{FileStorage, MemoryStorage, RaftStorage};
use surfstore::security::{PeerFlags, ServerFlags};

/// Runs one server of a Raft-replicated SurfStore MetaStore.
#[derive(Parser, Debug)]
#[command(name = "surfstore-raft-server", version = cli::VERSION, after_help = cli::AFTER_HELP)]
struct Args {
    /// Cluster config (JSON or the older text format).
    #[arg(short = 'f', long = "config")]
    config: PathBuf,
    /// This server's index in the config's MetaStoreAddrs.
    #[arg(short = 'i', long = "id")]
    id: usize,
    /// BlockStore address handed to clients (default: the first of the config's BlockStoreAddrs).
    #[arg(short = 'b', long = "blockstore")]
    block_store_addr: Option<String>,
    /// Print debug logs to stderr.
    #[arg(short = 'd', long = "debug")]
    debug: bool,
    /// Keep term, vote and log in DIR so a killed server restarts with
    /// everything it acknowledged (default: in memory only).
    #[arg(long = "data-dir", value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// A leader heartbeats on its own every this many milliseconds (0: never;
    /// explicit SendHeartbeat calls still work). Default 100, and with
    /// elections a fifth of the election timeout when that is less.
    #[arg(long = "heartbeat-ms", value_name = "MS")]
    heartbeat_ms: Option<u64>,
    /// Elect leaders automatically (SPEC §9.1): a follower that hears from
    /// no leader for a random time in [N, 2N) milliseconds campaigns, with
    /// pre-vote and check-quorum. N is at least 50; 0 or absent: no
    /// elections, SetLeader alone makes leaders.
    #[arg(long = "election-timeout-ms", value_name = "N")]
    election_timeout_ms: Option<u64>,
    /// AppendEntries a leader keeps in flight to each follower (1 to 4).
    /// One (the default) sends every pending entry in each request and
    /// waits for the reply, the cheapest on a LAN; more keeps a link with
    /// latency busy, at some CPU cost.
    #[arg(long = "pipeline-depth", default_value_t = 1,
          value_parser = clap::value_parser!(u64).range(1..=MAX_INFLIGHT as u64))]
    pipeline_depth: u64,
    /// Snapshot the applied map and drop the log before it every N applied
    /// entries, in memory and in --data-dir (0: never).
    #[arg(long = "snapshot-entries", value_name = "N", default_value_t = 10_000)]
    snapshot_entries: usize,
    /// Threads that serve calls, replicate and run the node's event loop
    /// (fsyncs and snapshot writes run on threads of their own). One
    /// spares the hand-offs between threads that every commit otherwise
    /// pays: the node's loop is one task whatever the count.
    #[arg(long = "threads", value_name = "N", default_value_t = 1,
          value_parser = clap::value_parser!(u16).range(1..))]
    threads: u16,
    #[command(flatten)]
    security: ServerFlags,
    #[command(flatten)]
    peers: PeerFlags,
}

fn main() -> ExitCode {
    let args: Args = cli::parse_args();
    cli::init_logging(args.debug);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(usize::from(args.threads))
        .enable_all()
        .build()
        .map_err(|e| Fatal::failure(format!("cannot start the runtime: {e}")));
    let result = runtime.and_then(|runtime| runtime.block_on(run(args)));
    cli::exit_code("surfstore-raft-server", result)
}

async fn run(args: Args) -> Result<(), Fatal> {
    let config = ClusterConfig::load(&args.config).map_err(Fatal::usage)?;
    let Some(listen) = config.meta_addrs.get(args.id).cloned() else {
        return Err(Fatal::usage(format!(
            "-i {} is out of range: {} lists {} servers",
            args.id,
            args.config.display(),
            config.meta_addrs.len()
        )));
    };
    let block_store_addr = match args
        .block_store_addr
        .or_else(|| config.block_addrs.first().cloned())
    {
        Some(addr) if is_host_port(&addr) => addr,
        Some(addr) => {
            return Err(Fatal::usage(format!(
                "BlockStore address {addr:?} is not host:port"
            )));
        }
        None => {
            return Err(Fatal::usage(format!(
                "{} lists no BlockStoreAddrs; pass -b BLOCKSTORE_ADDR",
                args.config.display()
            )));
        }
    };

    let security = Security {
        server: args.security.load().map_err(Fatal::usage)?,
        peers: args
            .security
            .peer_security(&args.peers)
            .map_err(Fatal::usage)?,
    };
    let socket = grpc::resolve(&listen)
        .await
        .map_err(|e| Fatal::failure(format!("cannot resolve {listen}: {e}")))?;
    let listener = listener::open(socket).await?;
    // Where it really listens: a socket handed over may be bound elsewhere.
    let bound = listener
        .local_addr()
        .map_err(|e| Fatal::failure(format!("cannot listen on {listen}: {e}")))?;
    if let Some(warning) = security.server.exposure_warning(bound) {
        tracing::warn!("{warning}");
    }

    let storage: Box<dyn RaftStorage> = match &args.data_dir {
        Some(dir) => Box::new(FileStorage::open(dir).map_err(|e| Fatal::data_dir(dir, e))?),
        None => Box::new(MemoryStorage),
    };
    let (heartbeat, election_timeout) = timing(args.heartbeat_ms, args.election_timeout_ms)?;
    let config = NodeConfig {
        id: args.id,
        addrs: config.meta_addrs,
        block_store_addr,
        heartbeat,
        pipeline_depth: usize::try_from(args.pipeline_depth).unwrap_or(1),
        snapshot_entries: args.snapshot_entries,
        election_timeout,
    };
    let mut serves = format!(
        "Raft MetaStore server {} of {}",
        args.id,
        config.addrs.len()
    );
    if let Some(n) = election_timeout {
        serves.push_str(&format!(", electing leaders after {} ms", n.as_millis()));
    }
    // Before the start line: whoever waits for that line sees it.
    if let Some(warning) = advertise::loopback_warning(bound, &config.block_store_addr) {
        tracing::warn!("{warning}");
    }
    println!(
        "{}",
        advertise::start_line(
            "surfstore-raft-server",
            &serves,
            bound,
            Some(&config.block_store_addr),
            args.data_dir.as_deref(),
        )
    );
    service::serve(listener, config, storage, security, cli::shutdown_signal())
        .await
        .map_err(|e| match e {
            ServeError::Start(StartError::Addr(e)) => Fatal::usage(e),
            ServeError::Start(StartError::Storage(e)) => Fatal::failure(e),
            ServeError::Start(e @ StartError::Snapshot(_)) => Fatal::failure(e),
            ServeError::Transport(e) => Fatal::failure(format!("server on {listen} failed: {e}")),
            ServeError::Storage => Fatal::failure(e),
        })
}

/// The shortest election timeout: below it, scheduling hiccups of a loaded
/// machine would look like a dead leader.
const MIN_ELECTION_TIMEOUT_MS: u64 = 50;

/// The heartbeat period and election timeout the flags ask for, checked
/// against each other (SPEC §9.1: heartbeats below N, N at least 50).
fn timing(
    heartbeat_ms: Option<u64>,
    election_timeout_ms: Option<u64>,
) -> Result<(Option<Duration>, Option<Duration>), Fatal> {
    let election = election_timeout_ms.filter(|&n| n > 0);
    let heartbeat = match (heartbeat_ms, election) {
        (Some(beat), _) => beat,
        (None, Some(n)) => (n / 5).min(100),
        (None, None) => 100,
    };
    let Some(n) = election else {
        return Ok((
            (heartbeat > 0).then(|| Duration::from_millis(heartbeat)),
            None,
        ));
    };
    if n < MIN_ELECTION_TIMEOUT_MS {
        return Err(Fatal::usage(format!(
            "--election-timeout-ms {n} is too short: at least {MIN_ELECTION_TIMEOUT_MS}"
        )));
    }
    if heartbeat == 0 || heartbeat >= n {
        return Err(Fatal::usage(format!(
            "--heartbeat-ms {heartbeat} must be above 0 and below --election-timeout-ms {n}: \
             followers that miss heartbeats for N elect a new leader"
        )));
    }
    Ok((
        Some(Duration::from_millis(heartbeat)),
        Some(Duration::from_millis(n)),
    ))
}
