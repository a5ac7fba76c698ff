//! Starting the real binaries for a measurement: servers on free loopback
//! ports, ready when they answer, killed when their handle drops; and timed
//! runs of `surfstore-client`.
//!
//! Each server's stdout and stderr go to a log file in the work directory,
//! so a failed start can be diagnosed without the bench's output filling up.

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use surfstore::proto::meta_store_client::MetaStoreClient;
use surfstore::proto::raft_surfstore_client::RaftSurfstoreClient;
use surfstore::security::ClientSecurity;

use crate::{BenchResult, cpu};

/// How long a server may take to start answering.
pub const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// How often readiness is polled.
pub const POLL: Duration = Duration::from_millis(20);

/// How many times a start is retried on fresh ports when a port was taken
/// between choosing it and the server binding it.
pub const START_ATTEMPTS: usize = 5;

/// The release binary `name`, built by cargo alongside this bench.
pub fn bin(name: &str) -> PathBuf {
    let path = match name {
        "surfstore-server" => env!("CARGO_BIN_EXE_surfstore-server"),
        "surfstore-raft-server" => env!("CARGO_BIN_EXE_surfstore-raft-server"),
        "surfstore-ctl" => env!("CARGO_BIN_EXE_surfstore-ctl"),
        _ => env!("CARGO_BIN_EXE_surfstore-client"),
    };
    PathBuf::from(path)
}

/// `n` distinct loopback ports free right now.
pub fn free_ports(n: usize) -> BenchResult<Vec<u16>> {
    let listeners = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0"))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("find a free port: {e}"))?;
    Ok(listeners
        .iter()
        .filter_map(|l| l.local_addr().ok().map(|a| a.port()))
        .collect())
}

/// The first of `n` consecutive loopback ports that are free right now
/// (SeaweedFS takes its eight in a row).
pub fn consecutive_free_ports(n: u16) -> BenchResult<u16> {
    for _ in 0..100 {
        let base = free_ports(1)?[0];
        let Some(last) = base.checked_add(n - 1) else {
            continue;
        };
        if (base..=last).all(|port| TcpListener::bind(("127.0.0.1", port)).is_ok()) {
            return Ok(base);
        }
    }
    Err(format!("no {n} free loopback ports in a row").into())
}

/// A running server process, killed and reaped on drop.
pub struct Proc {
    child: Child,
    name: String,
}

impl Proc {
    /// Starts `program args`, with `env` added to its environment and its
    /// output appended to `log`.
    pub fn spawn(
        program: &Path,
        args: &[String],
        env: &[(&str, &str)],
        log: &Path,
    ) -> BenchResult<Proc> {
        // Appending keeps what a restarted server logged before its restart.
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .map_err(|e| format!("{}: {e}", log.display()))?;
        let err = out.try_clone()?;
        let child = Command::new(program)
            .args(args)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(|e| format!("start {}: {e}", program.display()))?;
        Ok(Proc {
            child,
            name: format!("{} {}", program.display(), args.join(" ")),
        })
    }

    /// Its process id, for CPU accounting.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether it has stopped (a server that could not bind its port).
    pub fn has_exited(&mut self) -> bool {
        !matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        // The process may already be gone; either way it is reaped.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls until `addr` accepts connections (true) or `proc` exits (false).
pub fn wait_listening(proc: &mut Proc, addr: &str) -> BenchResult<bool> {
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        if TcpStream::connect(addr).is_ok() {
            return Ok(true);
        }
        if proc.has_exited() {
            return Ok(false);
        }
        if Instant::now() > deadline {
            return Err(format!("{} never listened on {addr}", proc.name).into());
        }
        std::thread::sleep(POLL);
    }
}

/// A `surfstore-server` on a free loopback port.
pub struct Server {
    /// `127.0.0.1:<port>`.
    pub addr: String,
    proc: Proc,
}

impl Server {
    /// Its process id, for CPU accounting.
    pub fn pid(&self) -> u32 {
        self.proc.pid()
    }
}

/// Starts `surfstore-server -s <service> -p <port> -l` plus
/// `--data-dir <dir>` when given and `extra`, logging to `logs/<label>.log`.
pub fn start_server(
    work: &Path,
    label: &str,
    service: &str,
    data_dir: Option<&Path>,
    extra: &[&str],
) -> BenchResult<Server> {
    let mut args = extra.to_vec();
    let dir;
    if let Some(data_dir) = data_dir {
        dir = path_arg(data_dir)?;
        args.extend(["--data-dir", dir.as_str()]);
    }
    start_server_with_env(work, label, service, &args, &[])
}

/// Starts `surfstore-server -s <service> -p <port> -l [args...]` with `env`
/// added to its environment, logging to `logs/<label>.log`.
pub fn start_server_with_env(
    work: &Path,
    label: &str,
    service: &str,
    extra: &[&str],
    env: &[(&str, &str)],
) -> BenchResult<Server> {
    let log = log_path(work, label)?;
    for _ in 0..START_ATTEMPTS {
        let port = free_ports(1)?[0];
        let mut args: Vec<String> = ["-s", service, "-p", &port.to_string(), "-l"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        args.extend(extra.iter().map(|s| s.to_string()));
        let mut proc = Proc::spawn(&bin("surfstore-server"), &args, env, &log)?;
        let addr = format!("127.0.0.1:{port}");
        if wait_listening(&mut proc, &addr)? {
            return Ok(Server { addr, proc });
        }
    }
    Err(format!(
        "could not start surfstore-server -s {service}; see {}",
        log.display()
    )
    .into())
}

/// A Raft cluster whose server 0 is the leader, with the config file that
/// `surfstore-client -f` reads.
pub struct Cluster {
    /// `MetaStoreAddrs`, server 0 leading.
    pub addrs: Vec<String>,
    /// The cluster's config file.
    pub config: PathBuf,
    procs: Vec<Proc>,
}

impl Cluster {
    /// Its servers' process ids, for CPU accounting.
    pub fn pids(&self) -> Vec<u32> {
        self.procs.iter().map(Proc::pid).collect()
    }
}

/// Starts `n` `surfstore-raft-server`s announcing `block_addr`, each with
/// `data_root/<id>` as its `--data-dir` when given, makes server 0 leader
/// and waits until it can commit (a read round reaches a majority).
pub async fn start_cluster(
    work: &Path,
    label: &str,
    n: usize,
    block_addr: &str,
    data_root: Option<&Path>,
) -> BenchResult<Cluster> {
    let plain = ClientSecurity::default();
    start_cluster_with(work, label, n, block_addr, data_root, &[], &plain).await
}

/// Like [`start_cluster`], every server also given `extra` (e.g. TLS and
/// token flags), and server 0 made leader through a channel secured as
/// `security` says.
pub async fn start_cluster_with(
    work: &Path,
    label: &str,
    n: usize,
    block_addr: &str,
    data_root: Option<&Path>,
    extra: &[String],
    security: &ClientSecurity,
) -> BenchResult<Cluster> {
    for attempt in 0..START_ATTEMPTS {
        let addrs: Vec<String> = free_ports(n)?
            .into_iter()
            .map(|port| format!("127.0.0.1:{port}"))
            .collect();
        let config = work.join(format!("{label}-config-{attempt}.json"));
        let json = serde_json::json!({"MetaStoreAddrs": addrs, "BlockStoreAddrs": [block_addr]});
        std::fs::write(&config, json.to_string())
            .map_err(|e| format!("{}: {e}", config.display()))?;
        let mut procs = (0..n)
            .map(|id| spawn_raft_server(work, label, &config, id, data_root, extra))
            .collect::<BenchResult<Vec<_>>>()?;
        let mut all_up = true;
        for (proc, addr) in procs.iter_mut().zip(&addrs) {
            all_up &= wait_listening(proc, addr)?;
        }
        if all_up && lead(&addrs[0], security).await? {
            return Ok(Cluster {
                addrs,
                config,
                procs,
            });
        }
    }
    Err(format!("could not start a {n}-server Raft cluster ({label})").into())
}

/// Starts `surfstore-raft-server -f config -i id`, with `data_root/<id>`
/// as its `--data-dir` when given and `extra` after, logging to
/// `logs/<label>-<id>.log`.
pub fn spawn_raft_server(
    work: &Path,
    label: &str,
    config: &Path,
    id: usize,
    data_root: Option<&Path>,
    extra: &[String],
) -> BenchResult<Proc> {
    let mut args = vec![
        "-f".to_string(),
        path_arg(config)?,
        "-i".to_string(),
        id.to_string(),
    ];
    if let Some(root) = data_root {
        args.extend([
            "--data-dir".to_string(),
            path_arg(&root.join(id.to_string()))?,
        ]);
    }
    args.extend_from_slice(extra);
    let log = log_path(work, &format!("{label}-{id}"))?;
    Proc::spawn(&bin("surfstore-raft-server"), &args, &[], &log)
}

/// Makes `addr` the leader and waits until it answers a confirmed read.
/// False if it never did (its port was taken by another process).
async fn lead(addr: &str, security: &ClientSecurity) -> BenchResult<bool> {
    let channel = surfstore::grpc::secure_channel(addr, security)?;
    let mut raft = RaftSurfstoreClient::new(channel.clone());
    let mut meta = MetaStoreClient::new(channel);
    let deadline = Instant::now() + READY_TIMEOUT;
    while Instant::now() < deadline {
        let ready = match raft.set_leader(()).await {
            Ok(_) => tokio::time::timeout(READY_TIMEOUT, meta.get_file_info_map(()))
                .await
                .is_ok_and(|r| r.is_ok()),
            Err(_) => false,
        };
        if ready {
            return Ok(true);
        }
        tokio::time::sleep(POLL).await;
    }
    Ok(false)
}

/// One finished `surfstore-client` run.
pub struct ClientRun {
    /// Wall time of the process.
    pub elapsed: Duration,
    /// The CPU seconds it used.
    pub cpu_secs: f64,
    /// Its stdout, trimmed.
    pub stdout: String,
}

/// Runs `surfstore-client args` to completion. A failed sync fails the
/// bench: a speed measured on a broken run means nothing.
pub fn run_client(work: &Path, args: &[String]) -> BenchResult<ClientRun> {
    let cpu_before = cpu::finished_children_secs();
    let started = Instant::now();
    let output = Command::new(bin("surfstore-client"))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("run surfstore-client: {e}"))?;
    let elapsed = started.elapsed();
    if !output.status.success() {
        // A token is passed in a file, never on the command line, so the
        // arguments are safe to print.
        let log = log_path(work, "client-failure")?;
        std::fs::write(&log, &output.stderr).map_err(|e| format!("{}: {e}", log.display()))?;
        return Err(format!(
            "surfstore-client {} failed ({}): {}",
            args.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        )
        .into());
    }
    Ok(ClientRun {
        elapsed,
        cpu_secs: cpu::finished_children_secs() - cpu_before,
        stdout: String::from_utf8_lossy(&output.stdout).trim().to_string(),
    })
}

/// `work/logs/<label>.log`, creating the directory.
pub fn log_path(work: &Path, label: &str) -> BenchResult<PathBuf> {
    let dir = work.join("logs");
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    Ok(dir.join(format!("{label}.log")))
}

/// A path as a command-line argument; the bench's own paths are UTF-8.
pub fn path_arg(path: &Path) -> BenchResult<String> {
    path.to_str()
        .map(str::to_string)
        .ok_or_else(|| format!("path {} is not UTF-8", path.display()).into())
}
