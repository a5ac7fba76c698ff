//! `surfstore-server`: runs a non-replicated MetaStore, a BlockStore, or both
//! on one port (SPEC §7).

use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, ValueEnum};
use surfstore::block_store::{BlockStoreService, MemoryBlocks};
use surfstore::cli::{self, Fatal};
use surfstore::config::is_host_port;
use surfstore::grpc;
use surfstore::meta_store::MetaStoreService;

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

    let listen = grpc::listen_addr(args.port, args.localhost_only);
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| Fatal::failure(format!("cannot listen on {listen}: {e}")))?;

    let mut router = grpc::server().add_optional_service(
        matches!(args.service, Service::Block | Service::Both)
            .then(|| BlockStoreService::new(Arc::new(MemoryBlocks::default())).into_server()),
    );
    router = router.add_optional_service(
        matches!(args.service, Service::Meta | Service::Both)
            .then(|| MetaStoreService::new(block_store_addr.clone()).into_server()),
    );
    tracing::info!(%listen, service = ?args.service, %block_store_addr, "serving");
    router
        .serve_with_incoming_shutdown(
            tokio_stream::wrappers::TcpListenerStream::new(listener),
            cli::shutdown_signal(),
        )
        .await
        .map_err(|e| Fatal::failure(format!("server on {listen} failed: {e}")))
}
