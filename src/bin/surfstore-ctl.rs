//! `surfstore-ctl`: the operator's tool for a Raft cluster (SPEC §7).
//!
//! `set-leader`, `heartbeat`, `crash` and `restore` call the RaftSurfstore
//! RPC of that name on one server and print one line; `status` asks every
//! server of a config for its state, concurrently, and prints a table.
//! `gc` deletes from each BlockStore of a config the blocks no current file
//! version lists and that are older than a grace period (see
//! [`surfstore::gc`]), and prints what it freed.
//! Every call has a deadline, so a dead server costs seconds, not a hang.
//!
//! Exit codes: 0 when the server answered (a heartbeat that no majority
//! acknowledged included: the line says so), 1 when the call failed, 64 on
//! bad arguments or an unusable config.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use surfstore::cli::{self, Fatal};
use surfstore::client::rpc::MetaStore;
use surfstore::config::{ClusterConfig, is_host_port};
use surfstore::grpc;
use surfstore::proto::raft_surfstore_client::RaftSurfstoreClient;
use tonic::transport::Channel;

/// Deadline of `set-leader`, `crash`, `restore` and of each `status` query.
const CALL_DEADLINE: Duration = Duration::from_secs(3);

/// Deadline of `heartbeat`: the leader may itself wait for crashed or
/// unreachable peers to time out before it answers.
const HEARTBEAT_DEADLINE: Duration = Duration::from_secs(10);

/// Operates a SurfStore Raft cluster.
#[derive(Parser, Debug)]
#[command(name = "surfstore-ctl", version)]
struct Args {
    /// Print debug logs to stderr.
    #[arg(short = 'd', long = "debug", global = true)]
    debug: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Make the server at ADDR the leader (its term goes up by one).
    SetLeader {
        /// The server, host:port.
        #[arg(value_parser = host_port)]
        addr: String,
    },
    /// Have the leader at ADDR run one replication round to every peer.
    Heartbeat {
        /// The server, host:port.
        #[arg(value_parser = host_port)]
        addr: String,
    },
    /// Put the server at ADDR in the crashed state.
    Crash {
        /// The server, host:port.
        #[arg(value_parser = host_port)]
        addr: String,
    },
    /// Bring the server at ADDR out of the crashed state.
    Restore {
        /// The server, host:port.
        #[arg(value_parser = host_port)]
        addr: String,
    },
    /// Show every server of the cluster: state, leadership, term, log, files.
    Status {
        /// The cluster config file.
        #[arg(short = 'f', long = "config", value_name = "CONFIG")]
        config: PathBuf,
    },
    /// Delete from the BlockStore the blocks no current file version lists
    /// that were stored (or last asked about) longer ago than --older-than.
    Gc {
        /// The cluster config file (a plain MetaStore: one address).
        #[arg(short = 'f', long = "config", value_name = "CONFIG")]
        config: PathBuf,
        /// The grace period: a block younger than this is kept, since a
        /// client may have uploaded it and not yet called UpdateFile.
        #[arg(long = "older-than", value_name = "DURATION", default_value = "1h",
              value_parser = humantime::parse_duration)]
        older_than: Duration,
    },
}

fn host_port(addr: &str) -> Result<String, String> {
    if is_host_port(addr) {
        Ok(addr.to_string())
    } else {
        Err(format!("{addr:?} is not host:port"))
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let args: Args = cli::parse_args();
    cli::init_logging(args.debug);
    cli::exit_code("surfstore-ctl", run(args.command).await)
}

async fn run(command: Command) -> Result<(), Fatal> {
    let line = match command {
        Command::SetLeader { addr } => {
            let ok = call(&addr, "SetLeader", CALL_DEADLINE, |mut c, r| async move {
                c.set_leader(r).await
            })
            .await?;
            if ok.flag {
                format!("{addr}: leader set")
            } else {
                return Err(Fatal::failure(format!("{addr}: SetLeader refused")));
            }
        }
        Command::Heartbeat { addr } => {
            let ok = call(
                &addr,
                "SendHeartbeat",
                HEARTBEAT_DEADLINE,
                |mut c, r| async move { c.send_heartbeat(r).await },
            )
            .await?;
            // A follower answers false too: the round was not acknowledged.
            let outcome = if ok.flag {
                "majority acknowledged"
            } else {
                "no majority"
            };
            format!("{addr}: heartbeat: {outcome}")
        }
        Command::Crash { addr } => {
            call(&addr, "Crash", CALL_DEADLINE, |mut c, r| async move {
                c.crash(r).await
            })
            .await?;
            format!("{addr}: crashed")
        }
        Command::Restore { addr } => {
            call(&addr, "Restore", CALL_DEADLINE, |mut c, r| async move {
                c.restore(r).await
            })
            .await?;
            format!("{addr}: restored")
        }
        Command::Status { config } => {
            let config = ClusterConfig::load(&config).map_err(Fatal::usage)?;
            status_table(&config.meta_addrs).await
        }
        Command::Gc { config, older_than } => {
            let config = ClusterConfig::load(&config).map_err(Fatal::usage)?;
            gc(&config, older_than).await?
        }
    };
    println!("{}", line.trim_end());
    Ok(())
}

/// Calls `rpc` (an RPC taking `Empty`) on the server at `addr` with
/// `deadline`; any failure becomes
/// one line naming the server, the RPC and the reason.
/// Collects every BlockStore of `config`; one line each.
async fn gc(config: &ClusterConfig, older_than: Duration) -> Result<String, Fatal> {
    if config.block_addrs.is_empty() {
        return Err(Fatal::usage("the config lists no BlockStoreAddrs"));
    }
    let meta = MetaStore::cluster(config).map_err(Fatal::usage)?;
    let mut lines = String::new();
    for addr in &config.block_addrs {
        let report = surfstore::gc::collect(&meta, addr, older_than)
            .await
            .map_err(|e| Fatal::failure(format!("gc of {addr}: {e}")))?;
        let _ = writeln!(
            lines,
            "{addr}: freed {} blocks, {} bytes; kept {} in use and {} younger than {}",
            report.freed_blocks,
            report.freed_bytes,
            report.in_use,
            report.young,
            humantime::format_duration(older_than)
        );
    }
    Ok(lines)
}

async fn call<T, F, Fut>(addr: &str, rpc: &str, deadline: Duration, f: F) -> Result<T, Fatal>
where
    F: FnOnce(RaftSurfstoreClient<Channel>, tonic::Request<()>) -> Fut,
    Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
{
    let channel = grpc::channel(addr).map_err(Fatal::usage)?;
    // The server learns the deadline too (grpc-timeout) and can give up in
    // time; the local timer also bounds connecting.
    let mut request = tonic::Request::new(());
    request.set_timeout(deadline);
    match tokio::time::timeout(deadline, f(RaftSurfstoreClient::new(channel), request)).await {
        Ok(Ok(response)) => Ok(response.into_inner()),
        Ok(Err(status)) => Err(Fatal::failure(format!(
            "{addr}: {rpc} failed: {}",
            describe(&status)
        ))),
        Err(_) => Err(Fatal::failure(format!(
            "{addr}: {rpc} failed: no answer within {deadline:?}"
        ))),
    }
}

/// A status in one line: its code, its message, and for transport failures
/// the underlying cause (e.g. "Connection refused").
fn describe(status: &tonic::Status) -> String {
    let mut text = format!("{:?}: {}", status.code(), status.message());
    let mut source = std::error::Error::source(status);
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            let _ = write!(text, ": {cause_text}");
        }
        source = cause.source();
    }
    text
}

/// What `status` learned about a server that answered.
struct ServerState {
    crashed: bool,
    leader: bool,
    term: i64,
    log_len: usize,
    files: usize,
}

/// Queries one server: IsCrashed and GetInternalState, both answered in the
/// crashed state too. The error says why the server could not be queried.
async fn query(addr: &str) -> Result<ServerState, Fatal> {
    let crashed = call(addr, "IsCrashed", CALL_DEADLINE, |mut c, r| async move {
        c.is_crashed(r).await
    });
    let state = call(
        addr,
        "GetInternalState",
        CALL_DEADLINE,
        |mut c, r| async move { c.get_internal_state(r).await },
    );
    let (crashed, state) = tokio::try_join!(crashed, state)?;
    Ok(ServerState {
        crashed: crashed.is_crashed,
        leader: state.is_leader,
        term: state.term,
        log_len: state.log.len(),
        files: state.meta_map.map_or(0, |m| m.file_info_map.len()),
    })
}

/// Queries every server concurrently and renders one row per server. Why a
/// server is unreachable goes to stderr, one line each, so the table stays
/// a table.
async fn status_table(addrs: &[String]) -> String {
    let states = futures::future::join_all(addrs.iter().map(|addr| query(addr))).await;
    let header = ["ID", "ADDRESS", "STATE", "LEADER", "TERM", "LOG", "FILES"].map(String::from);
    let mut rows = vec![header.to_vec()];
    for (id, (addr, state)) in addrs.iter().zip(states).enumerate() {
        let mut row = vec![id.to_string(), addr.clone()];
        match state {
            Ok(s) => row.extend([
                if s.crashed { "crashed" } else { "up" }.to_string(),
                if s.leader { "yes" } else { "no" }.to_string(),
                s.term.to_string(),
                s.log_len.to_string(),
                s.files.to_string(),
            ]),
            Err(fatal) => {
                eprintln!("surfstore-ctl: {}", fatal.message);
                row.push("unreachable".to_string());
                row.extend(std::iter::repeat_n("-".to_string(), 4));
            }
        }
        rows.push(row);
    }
    render(&rows)
}

/// Left-aligned columns separated by two spaces.
fn render(rows: &[Vec<String>]) -> String {
    let columns = rows.first().map_or(0, Vec::len);
    let widths: Vec<usize> = (0..columns)
        .map(|c| rows.iter().map(|r| r[c].len()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for row in rows {
        let mut line = String::new();
        for (cell, width) in row.iter().zip(&widths) {
            let _ = write!(line, "{cell:<width$}  ");
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}
