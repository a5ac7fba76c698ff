//! `surfstore-server`: runs a non-replicated MetaStore, a BlockStore, or both
//! on one port (SPEC §7). With `--data-dir DIR` blocks live in `DIR/blocks`
//! and the MetaStore's journal in `DIR/meta`, and every reply is sent only
//! after what it acknowledges is on disk. With `--s3 s3://BUCKET[/PREFIX]`
//! blocks are objects in an S3-compatible bucket (SPEC §9.4).

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, ValueEnum};
use surfstore::advertise;
use surfstore::block_store::{BlockBackend, DiskBlocks, MemoryBlocks, S3Blocks, S3Location};
use surfstore::cli::{self, Fatal};
use surfstore::config::check_host_port;
use surfstore::grpc;
use surfstore::listener;
use surfstore::meta_store::JournaledMap;
use surfstore::plain_server::{PlainServer, serve};
use surfstore::security::ServerFlags;

/// mimalloc rather than glibc's malloc: a server frees a multi-MiB block
/// buffer per call and glibc hands it back to the kernel each time, so the
/// next call pays page faults to get it again; mimalloc reuses it (server
/// CPU per 4 MiB PutBlock fell by about a third).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Which services the server runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Service {
    /// The MetaStore only; BLOCKSTORE_ADDR names the BlockStore it announces.
    Meta,
    /// The BlockStore only.
    Block,
    /// Both, the MetaStore announcing this server as the BlockStore.
    Both,
}

/// Runs SurfStore's MetaStore and/or BlockStore.
#[derive(Parser, Debug)]
#[command(name = "surfstore-server", version = cli::VERSION, after_help = cli::AFTER_HELP)]
struct Args {
    /// Which services to run.
    #[arg(short = 's', long = "service", value_enum)]
    service: Service,
    /// Port to listen on.
    #[arg(short = 'p', long = "port", default_value_t = 8080)]
    port: u16,
    /// Listen on localhost only.
    #[arg(short = 'l', long = "localhost")]
    localhost_only: bool,
    /// Print debug logs to stderr.
    #[arg(short = 'd', long = "debug")]
    debug: bool,
    /// Keep blocks and the file map in DIR so they survive a restart or a
    /// crash; without it everything lives in memory.
    #[arg(long = "data-dir", value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// With `-s both`: the address (host:port) of this server that the
    /// MetaStore hands to clients as the BlockStore's. Default: localhost
    /// with `-l`, otherwise this machine's address on its default route.
    #[arg(long = "advertise", value_name = "HOST:PORT")]
    advertise: Option<String>,
    /// Keep blocks as objects PREFIX/<hash> in an S3-compatible bucket
    /// (credentials, region, endpoint from the AWS_* variables); the
    /// BlockStore then keeps no state, so several can share the bucket.
    #[arg(
        long = "s3",
        value_name = "s3://BUCKET[/PREFIX]",
        conflicts_with = "data_dir"
    )]
    s3: Option<S3Location>,
    /// Rewrite the MetaStore's journal in --data-dir as the map alone every
    /// N accepted updates, so it follows the map's size (0: never).
    #[arg(long = "snapshot-entries", value_name = "N", default_value_t = 10_000)]
    snapshot_entries: usize,
    /// The BlockStore address (host:port) the MetaStore hands to clients.
    /// Required with `-s meta`; with `-s both` it defaults to this server
    /// (see --advertise).
    #[arg(value_name = "BLOCKSTORE_ADDR")]
    block_store_addr: Option<String>,
    #[command(flatten)]
    security: ServerFlags,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args: Args = cli::parse_args();
    cli::init_logging(args.debug);
    cli::exit_code("surfstore-server", run(args).await)
}

async fn run(args: Args) -> Result<(), Fatal> {
    for (what, addr) in [
        ("BLOCKSTORE_ADDR", &args.block_store_addr),
        ("--advertise", &args.advertise),
    ] {
        if let Some(Err(e)) = addr.as_deref().map(check_host_port) {
            return Err(Fatal::usage(format!("{what} {e}")));
        }
    }
    // What the MetaStore announces; `None` for -s both: this server, once
    // its port is known.
    let announced = match (args.service, args.block_store_addr, &args.advertise) {
        (Service::Meta, None, _) => {
            return Err(Fatal::usage("-s meta needs a BLOCKSTORE_ADDR argument"));
        }
        (Service::Both, Some(_), Some(_)) => {
            return Err(Fatal::usage(
                "give either --advertise or BLOCKSTORE_ADDR, not both",
            ));
        }
        (Service::Meta | Service::Block, _, Some(_)) => {
            return Err(Fatal::usage(
                "--advertise is for -s both; with -s meta give BLOCKSTORE_ADDR",
            ));
        }
        (_, addr, advertise) => addr.or_else(|| advertise.clone()),
    };

    if args
        .data_dir
        .as_ref()
        .is_some_and(|d| d.as_os_str().is_empty())
    {
        return Err(Fatal::usage("--data-dir needs a directory"));
    }
    if args.s3.is_some() && args.service == Service::Meta {
        return Err(Fatal::usage(
            "--s3 holds blocks: it needs -s block or -s both",
        ));
    }
    let data_dir = args.data_dir.as_deref();
    let blocks = matches!(args.service, Service::Block | Service::Both)
        .then(|| block_backend(data_dir, args.s3.as_ref()))
        .transpose()?;
    let meta = matches!(args.service, Service::Meta | Service::Both)
        .then(|| file_map(data_dir, args.snapshot_entries))
        .transpose()?;

    let security = args.security.load().map_err(Fatal::usage)?;
    let listen = grpc::listen_addr(args.port, args.localhost_only);
    let listener = listener::open(listen).await?;
    // The real address (a socket handed over may listen elsewhere than -l
    // says) and port, also with -p 0.
    let listen = listener
        .local_addr()
        .map_err(|e| Fatal::failure(format!("cannot listen on {listen}: {e}")))?;
    if let Some(warning) = security.exposure_warning(listen) {
        tracing::warn!("{warning}");
    }
    let block_store_addr = match announced {
        Some(addr) => addr,
        None if args.service == Service::Both => advertise::default_block_store_addr(listen)
            .unwrap_or_else(|| format!("localhost:{}", listen.port())),
        None => String::new(),
    };
    let (serves, announces) = match args.service {
        Service::Meta => ("MetaStore", Some(block_store_addr.as_str())),
        Service::Block => ("BlockStore", None),
        Service::Both => ("MetaStore+BlockStore", Some(block_store_addr.as_str())),
    };
    // Before the start line: whoever waits for that line sees it.
    if let Some(warning) = announces.and_then(|addr| advertise::loopback_warning(listen, addr)) {
        tracing::warn!("{warning}");
    }
    println!(
        "{}",
        advertise::start_line("surfstore-server", serves, listen, announces, data_dir)
    );
    let server = PlainServer {
        blocks,
        meta,
        block_store_addr,
        security,
    };
    serve(listener, server, cli::shutdown_signal())
        .await
        .map_err(|e| Fatal::failure(format!("server on {listen} failed: {e}")))
}

/// The BlockStore's backend: objects in a bucket, files under
/// `DIR/blocks`, or memory.
fn block_backend(
    data_dir: Option<&Path>,
    s3: Option<&S3Location>,
) -> Result<Arc<dyn BlockBackend>, Fatal> {
    if let Some(location) = s3 {
        let blocks = S3Blocks::from_env(location)
            .map_err(|e| Fatal::failure(format!("cannot use {location}: {e}")))?;
        tracing::info!(%location, "blocks live in the object store");
        return Ok(Arc::new(blocks));
    }
    match data_dir {
        None => Ok(Arc::new(MemoryBlocks::default())),
        Some(dir) => match DiskBlocks::open(&dir.join("blocks")) {
            Ok(blocks) => Ok(Arc::new(blocks)),
            Err(e) => Err(Fatal::data_dir(dir, e)),
        },
    }
}

/// The MetaStore's map: replayed from `DIR/meta` (its journal compacted
/// every `snapshot_entries` updates), or empty in memory.
fn file_map(data_dir: Option<&Path>, snapshot_entries: usize) -> Result<JournaledMap, Fatal> {
    match data_dir {
        None => Ok(JournaledMap::in_memory()),
        Some(dir) => JournaledMap::open(&dir.join("meta"), snapshot_entries)
            .map_err(|e| Fatal::data_dir(dir, e)),
    }
}
