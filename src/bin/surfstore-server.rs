//! `surfstore-server`: runs a non-replicated MetaStore, a BlockStore, or both
//! on one port (SPEC §7). With `--data-dir DIR` blocks live in `DIR/blocks`
//! and the MetaStore's journal in `DIR/meta`, and every reply is sent only
//! after what it acknowledges is on disk.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, ValueEnum};
use surfstore::block_store::{BlockBackend, DiskBlocks, MemoryBlocks};
use surfstore::cli::{self, Fatal};
use surfstore::config::is_host_port;
use surfstore::grpc;
use surfstore::meta_store::JournaledMap;
use surfstore::plain_server::{PlainServer, serve};

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
#[command(name = "surfstore-server", version)]
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
    /// Rewrite the MetaStore's journal in --data-dir as the map alone every
    /// N accepted updates, so it follows the map's size (0: never).
    #[arg(long = "snapshot-entries", value_name = "N", default_value_t = 10_000)]
    snapshot_entries: usize,
    /// The BlockStore address (host:port) the MetaStore hands to clients.
    /// Required with `-s meta`; with `-s both` it defaults to this server.
    #[arg(value_name = "BLOCKSTORE_ADDR")]
    block_store_addr: Option<String>,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args: Args = cli::parse_args();
    cli::init_logging(args.debug);
    cli::exit_code("surfstore-server", run(args).await)
}

async fn run(args: Args) -> Result<(), Fatal> {
    let block_store_addr = match (args.service, args.block_store_addr) {
        (_, Some(addr)) if !is_host_port(&addr) => {
            return Err(Fatal::usage(format!(
                "BLOCKSTORE_ADDR {addr:?} is not host:port"
            )));
        }
        (Service::Meta, None) => {
            return Err(Fatal::usage("-s meta needs a BLOCKSTORE_ADDR argument"));
        }
        (Service::Both, None) => format!("localhost:{}", args.port),
        (_, addr) => addr.unwrap_or_default(),
    };

    if args
        .data_dir
        .as_ref()
        .is_some_and(|d| d.as_os_str().is_empty())
    {
        return Err(Fatal::usage("--data-dir needs a directory"));
    }
    let data_dir = args.data_dir.as_deref();
    let blocks = matches!(args.service, Service::Block | Service::Both)
        .then(|| block_backend(data_dir))
        .transpose()?;
    let meta = matches!(args.service, Service::Meta | Service::Both)
        .then(|| file_map(data_dir, args.snapshot_entries))
        .transpose()?;

    let listen = grpc::listen_addr(args.port, args.localhost_only);
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| Fatal::failure(format!("cannot listen on {listen}: {e}")))?;

    tracing::info!(%listen, service = ?args.service, %block_store_addr, "serving");
    let server = PlainServer {
        blocks,
        meta,
        block_store_addr,
    };
    serve(listener, server, cli::shutdown_signal())
        .await
        .map_err(|e| Fatal::failure(format!("server on {listen} failed: {e}")))
}

/// The BlockStore's backend: files under `DIR/blocks`, or memory.
fn block_backend(data_dir: Option<&Path>) -> Result<Arc<dyn BlockBackend>, Fatal> {
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
