//! `surfstore-ctl`: the operator's tool for a Raft cluster (SPEC §7).
//!
//! `set-leader`, `heartbeat`, `crash` and `restore` call the RaftSurfstore
//! RPC of that name on one server and print one line; `status` asks every
//! server of a config for its state, concurrently, and prints a table.
//! `gc` deletes from each BlockStore of a config the blocks no current file
//! version lists and that are older than a grace period (see
//! [`surfstore::gc`]), and prints what it freed.
//! Every call has a deadline, so a dead server costs seconds, not a hang.
//! `gen-certs` and `add-token` prepare a secure cluster (SPEC §9.3): they
//! write files and call no server.
//!
//! Exit codes: 0 when the server answered (a leader's heartbeat that no
//! majority acknowledged included: the line says so), 1 when the call
//! failed, a follower was asked for a heartbeat or no server answered
//! `status`, 64 on bad arguments or an unusable config.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use surfstore::cli::{self, Fatal};
use surfstore::client::rpc::MetaStore;
use surfstore::config::{ClusterConfig, check_host_port};
use surfstore::grpc::{self, AuthChannel};
use surfstore::proto::raft_surfstore_client::RaftSurfstoreClient;
use surfstore::security::tls::{self, explain};
use surfstore::security::tokens::{self, Role};
use surfstore::security::{ClientFlags, ClientSecurity};

/// Deadline of `set-leader`, `crash`, `restore` and of each `status` query.
const CALL_DEADLINE: Duration = Duration::from_secs(3);

/// Deadline of `heartbeat`: the leader may itself wait for crashed or
/// unreachable peers to time out before it answers.
const HEARTBEAT_DEADLINE: Duration = Duration::from_secs(10);

/// Operates a SurfStore Raft cluster.
#[derive(Parser, Debug)]
#[command(name = "surfstore-ctl", version = cli::VERSION, after_help = cli::AFTER_HELP)]
struct Args {
    /// Print debug logs to stderr.
    #[arg(short = 'd', long = "debug", global = true)]
    debug: bool,
    #[command(flatten)]
    security: ClientFlags,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    #[command(flatten)]
    Cluster(ClusterCommand),
    /// Write a development CA and a certificate for HOSTS, signed by it,
    /// to DIR: ca.pem, ca.key, server.pem, server.key.
    GenCerts {
        /// The directory to write to (created if missing).
        dir: PathBuf,
        /// The names and IP addresses the certificate is for, comma-separated.
        #[arg(long = "hosts", value_delimiter = ',', required = true)]
        hosts: Vec<String>,
    },
    /// Append a fresh token for ROLE (user, peer or admin) named NAME to
    /// the token file FILE (created readable by its owner only), and print
    /// the token once, alone on the last line.
    AddToken {
        /// user, peer or admin.
        role: Role,
        /// Who holds it (shown in debug logs, never the token).
        name: String,
        /// The token file a server reads with --auth-tokens.
        file: PathBuf,
    },
}

/// The commands that call servers.
#[derive(Subcommand, Debug)]
enum ClusterCommand {
    /// Make the server at ADDR the leader (its term goes up by one); with
    /// elections, have it campaign at once and say whether it won.
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
    check_host_port(addr).map(|()| addr.to_string())
}

#[tokio::main]
async fn main() -> ExitCode {
    let args: Args = cli::parse_args();
    cli::init_logging(args.debug);
    cli::exit_code("surfstore-ctl", run(args.command, &args.security).await)
}

async fn run(command: Command, flags: &ClientFlags) -> Result<(), Fatal> {
    let line = match command {
        Command::GenCerts { dir, hosts } => {
            tls::generate(&dir, &hosts).map_err(Fatal::failure)?;
            format!(
                "wrote {} in {} for {}",
                tls::GENERATED.join(", "),
                dir.display(),
                hosts.join(", ")
            )
        }
        Command::AddToken { role, name, file } => {
            let token = tokens::fresh_token()
                .map_err(|e| Fatal::failure(format!("cannot draw a random token: {e}")))?;
            tokens::append_token(&file, role, &name, &token).map_err(Fatal::failure)?;
            format!(
                "added {role} token {name:?} to {} (shown once, keep it secret):\n{token}",
                file.display()
            )
        }
        Command::Cluster(command) => {
            call_servers(command, &flags.load().map_err(Fatal::usage)?).await?
        }
    };
    println!("{}", line.trim_end());
    Ok(())
}

/// Runs a command that calls servers and returns the line it prints.
async fn call_servers(command: ClusterCommand, security: &ClientSecurity) -> Result<String, Fatal> {
    Ok(match command {
        ClusterCommand::SetLeader { addr } => {
            let ok = call(
                &addr,
                security,
                "SetLeader",
                CALL_DEADLINE,
                |mut c, r| async move { c.set_leader(r).await },
            )
            .await?;
            if ok.flag {
                format!("{addr}: leader set")
            } else {
                // Only a server electing leaders answers false: it
                // campaigned and lost.
                return Err(Fatal::failure(format!(
                    "{addr}: SetLeader refused: its campaign did not win a majority of votes \
                     (its log is behind theirs, or it cannot reach them)"
                )));
            }
        }
        ClusterCommand::Heartbeat { addr } => {
            let ok = call(
                &addr,
                security,
                "SendHeartbeat",
                HEARTBEAT_DEADLINE,
                |mut c, r| async move { c.send_heartbeat(r).await },
            )
            .await?;
            if ok.flag {
                format!("{addr}: heartbeat: majority acknowledged")
            } else {
                // A follower answers false too: say which it was.
                let state = query(&addr, security).await?;
                if !state.leader || state.crashed {
                    return Err(Fatal::failure(not_the_leader(&addr, security).await));
                }
                format!("{addr}: heartbeat: no majority")
            }
        }
        ClusterCommand::Crash { addr } => {
            call(
                &addr,
                security,
                "Crash",
                CALL_DEADLINE,
                |mut c, r| async move { c.crash(r).await },
            )
            .await?;
            format!("{addr}: crashed")
        }
        ClusterCommand::Restore { addr } => {
            call(
                &addr,
                security,
                "Restore",
                CALL_DEADLINE,
                |mut c, r| async move { c.restore(r).await },
            )
            .await?;
            format!("{addr}: restored")
        }
        ClusterCommand::Status { config: path } => {
            let config = ClusterConfig::load(&path).map_err(Fatal::usage)?;
            status_table(&path, &config.meta_addrs, security).await?
        }
        ClusterCommand::Gc { config, older_than } => {
            let config = ClusterConfig::load(&config).map_err(Fatal::usage)?;
            gc(&config, older_than, security).await?
        }
    })
}

/// Why `addr` refused a heartbeat as a follower: `ADDR: not the leader;
/// leader is L` when it knows one (from its not-leader answer), else how
/// to name one.
async fn not_the_leader(addr: &str, security: &ClientSecurity) -> String {
    let answer = call(
        addr,
        security,
        "GetFileInfoMap",
        CALL_DEADLINE,
        |mut c, r| async move { c.get_file_info_map(r).await },
    )
    .await;
    let leader = answer.err().and_then(|fatal| {
        let (_, after) = fatal.message.split_once("leader: ")?;
        let leader: String = after.chars().take_while(|c| !c.is_whitespace()).collect();
        check_host_port(&leader).is_ok().then_some(leader)
    });
    match leader {
        Some(leader) => format!("{addr}: not the leader; leader is {leader}"),
        None => format!(
            "{addr}: not the leader, and it knows no leader; name one: surfstore-ctl set-leader ADDR"
        ),
    }
}

/// Calls `rpc` (an RPC taking `Empty`) on the server at `addr` with
/// `deadline`; any failure becomes
/// one line naming the server, the RPC and the reason.
/// Collects every BlockStore of `config`; one line each.
async fn gc(
    config: &ClusterConfig,
    older_than: Duration,
    security: &ClientSecurity,
) -> Result<String, Fatal> {
    if config.block_addrs.is_empty() {
        return Err(Fatal::usage("the config lists no BlockStoreAddrs"));
    }
    let meta = MetaStore::cluster(config, security).map_err(Fatal::usage)?;
    let mut lines = String::new();
    for addr in &config.block_addrs {
        let report = surfstore::gc::collect(&meta, addr, older_than, security)
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

async fn call<T, F, Fut>(
    addr: &str,
    security: &ClientSecurity,
    rpc: &str,
    deadline: Duration,
    f: F,
) -> Result<T, Fatal>
where
    F: FnOnce(RaftSurfstoreClient<AuthChannel>, tonic::Request<()>) -> Fut,
    Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
{
    let channel = grpc::secure_channel(addr, security).map_err(Fatal::usage)?;
    // The server learns the deadline too (grpc-timeout) and can give up in
    // time; the local timer also bounds connecting.
    let mut request = tonic::Request::new(());
    request.set_timeout(deadline);
    match tokio::time::timeout(deadline, f(RaftSurfstoreClient::new(channel), request)).await {
        Ok(Ok(response)) => Ok(response.into_inner()),
        Ok(Err(status)) if status.code() == tonic::Code::Unimplemented => {
            Err(Fatal::failure(format!(
                "{addr} is not a Raft server (it has no {rpc}); surfstore-ctl operates surfstore-raft-server"
            )))
        }
        Ok(Err(status)) if is_refused(&status) => Err(Fatal::failure(format!(
            "{addr}: {rpc} failed: connection refused; is surfstore-raft-server running on {addr}?"
        ))),
        Ok(Err(status)) => Err(Fatal::failure(format!(
            "{addr}: {rpc} failed: {}",
            describe(&status)
        ))),
        Err(_) => Err(Fatal::failure(format!(
            "{addr}: {rpc} failed: no answer within {deadline:?}"
        ))),
    }
}

/// Whether nothing listens where `status` tried to connect.
fn is_refused(status: &tonic::Status) -> bool {
    let mut source = std::error::Error::source(status);
    while let Some(cause) = source {
        if cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|e| e.kind() == std::io::ErrorKind::ConnectionRefused)
        {
            return true;
        }
        source = cause.source();
    }
    false
}

/// A status in one line: what to do about it when it is a certificate or
/// token problem, otherwise its code, its message, and for transport
/// failures the underlying cause (e.g. "Connection refused").
fn describe(status: &tonic::Status) -> String {
    if let Some(explained) = explain(status) {
        return explained;
    }
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
async fn query(addr: &str, security: &ClientSecurity) -> Result<ServerState, Fatal> {
    let crashed = call(
        addr,
        security,
        "IsCrashed",
        CALL_DEADLINE,
        |mut c, r| async move { c.is_crashed(r).await },
    );
    let state = call(
        addr,
        security,
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
/// a table; when none answers, there is no table, only one line saying so.
/// A leader that is crashed, or whose term is behind another server's,
/// leads nothing any more: its LEADER cell says `stale`.
async fn status_table(
    config: &std::path::Path,
    addrs: &[String],
    security: &ClientSecurity,
) -> Result<String, Fatal> {
    let states = futures::future::join_all(addrs.iter().map(|addr| query(addr, security))).await;
    if let [Err(first), ..] = states.as_slice()
        && states.iter().all(Result::is_err)
    {
        return Err(Fatal::failure(format!(
            "none of the {} servers of {} answered; is surfstore-raft-server running? (first: {})",
            addrs.len(),
            config.display(),
            first.message
        )));
    }
    let newest_term = states
        .iter()
        .filter_map(|s| s.as_ref().ok().map(|s| s.term))
        .max()
        .unwrap_or(0);
    let header = ["ID", "ADDRESS", "STATE", "LEADER", "TERM", "LOG", "FILES"].map(String::from);
    let mut rows = vec![header.to_vec()];
    for (id, (addr, state)) in addrs.iter().zip(states).enumerate() {
        let mut row = vec![id.to_string(), addr.clone()];
        match state {
            Ok(s) => row.extend([
                if s.crashed { "crashed" } else { "up" }.to_string(),
                match s.leader {
                    true if s.crashed || s.term < newest_term => "stale",
                    true => "yes",
                    false => "no",
                }
                .to_string(),
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
    Ok(render(&rows))
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
