//! Test harness shared by the integration tests: starts the real binaries on
//! loopback sockets it binds for them (handed over as systemd does, so no
//! port is ever raced for), waits for readiness by polling, and kills every
//! process it started when the handle drops (also when a test fails).
//!
//! Tests talk to the servers only from the outside, through the generated
//! tonic clients ([`block_client`], [`meta_client`], [`raft_client`]), the
//! way an independent conformance suite would. [`start_cluster`] starts a
//! whole Raft cluster with its config file and BlockStore.

#![allow(dead_code)] // each test binary uses a different part of the harness

pub mod network;
pub mod s3;

use std::collections::{BTreeMap, BTreeSet};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use surfstore::proto::block_store_client::BlockStoreClient;
use surfstore::proto::meta_store_client::MetaStoreClient;
use surfstore::proto::raft_surfstore_client::RaftSurfstoreClient;
use surfstore::proto::{FileMetaData, RaftInternalState};
use tonic::transport::Channel;

/// How long a server may take to start listening.
const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// Path of one of the crate's binaries (cargo builds them before integration
/// tests run, next to the `deps` directory holding the test executable).
pub fn bin(name: &str) -> PathBuf {
    let mut dir = std::env::current_exe().expect("test executable path");
    dir.pop();
    if dir.ends_with("deps") {
        dir.pop();
    }
    dir.join(format!("{name}{}", std::env::consts::EXE_SUFFIX))
}

/// A command for `program` whose conflict copies (`$XDG_STATE_HOME`) go
/// below cargo's scratch directory for tests, never into the real home,
/// and that takes no client settings from the caller's environment.
/// Tests that look at the copies set a directory of their own.
pub fn command(program: &Path) -> Command {
    let mut command = Command::new(program);
    command.env(
        "XDG_STATE_HOME",
        Path::new(env!("CARGO_TARGET_TMPDIR")).join("xdg-state"),
    );
    // The client's settings from the environment would change what the
    // tests' command lines mean.
    for var in [
        "SURFSTORE_ADDR",
        "SURFSTORE_CONFIG",
        "SURFSTORE_BLOCK_SIZE",
        "SURFSTORE_TOKEN",
    ] {
        command.env_remove(var);
    }
    command
}

/// Every port [`free_ports`] and [`consecutive_free_ports`] handed out in
/// this test process.
static HANDED_OUT: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());

/// The first of `n` consecutive loopback ports that are free right now and
/// were not handed out before in this test process, for programs that bind
/// their own ports (SeaweedFS and the S3 demo take theirs in a row). They
/// are taken below the kernel's ephemeral range, so no outgoing connection
/// (SeaweedFS's own, between its parts) can be given one of them meanwhile.
pub fn consecutive_free_ports(n: u16) -> u16 {
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    let (low, high) = (10_000, ephemeral_low.saturating_sub(n));
    assert!(low < high, "no room below the ephemeral port range");
    for _ in 0..1000 {
        let base = fastrand::u16(low..high);
        let mut handed_out = HANDED_OUT.lock().unwrap_or_else(PoisonError::into_inner);
        let free = (base..base + n).all(|port| {
            !handed_out.contains(&port) && TcpListener::bind(("127.0.0.1", port)).is_ok()
        });
        if free {
            handed_out.extend(base..base + n);
            return base;
        }
    }
    panic!("no {n} free loopback ports in a row");
}

/// `n` distinct loopback ports nothing listens on, none handed out before
/// in this test process: addresses for servers that are down. Servers get
/// a socket bound for them instead ([`loopback_listener`]), since a port
/// merely found free can be taken by anyone before a server binds it.
pub fn free_ports(n: usize) -> Vec<u16> {
    let mut handed_out = HANDED_OUT.lock().unwrap_or_else(PoisonError::into_inner);
    // Held until all are chosen, so the kernel offers each port once here.
    let mut probes = Vec::new();
    let mut ports = Vec::with_capacity(n);
    while ports.len() < n {
        let probe = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
        let port = probe.local_addr().expect("local addr").port();
        if handed_out.insert(port) {
            ports.push(port);
        }
        probes.push(probe);
    }
    ports
}

/// A listening socket on a free loopback port, to hand to a server
/// ([`Proc::spawn_on`]).
pub fn loopback_listener() -> TcpListener {
    TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port")
}

/// A listening socket on `port` again (a restarted server's), waiting while
/// another process's connection briefly holds the port.
pub fn listener_on(port: u16) -> TcpListener {
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        match TcpListener::bind(("127.0.0.1", port)) {
            Ok(listener) => return listener,
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
            Err(e) => panic!("cannot bind 127.0.0.1:{port} again: {e}"),
        }
    }
}

/// A command for `program` that hands it `listener` the way systemd's
/// socket activation does: `LISTEN_FDS=1` and the socket at fd 3.
pub fn command_on(listener: TcpListener, program: &Path) -> Command {
    let mut command = command(program);
    command.env("LISTEN_FDS", "1").env_remove("LISTEN_PID");
    hand_over_at_fd_3(&mut command, listener);
    command
}

/// Makes `listener` the child's fd 3, open across `exec`, and closes this
/// process's copy once the child is spawned (the command owns it).
fn hand_over_at_fd_3(command: &mut Command, listener: TcpListener) {
    use std::os::fd::{AsRawFd, OwnedFd};
    use std::os::unix::process::CommandExt;
    let socket = OwnedFd::from(listener);
    let fd = socket.as_raw_fd();
    // SAFETY: dup2 and fcntl are async-signal-safe, as code between fork
    // and exec must be; `socket` stays open until the command is dropped.
    unsafe {
        command.pre_exec(move || {
            let _keep_open = &socket;
            let target = if fd == 3 {
                // dup2 onto itself keeps close-on-exec: clear it instead.
                libc::fcntl(3, libc::F_SETFD, 0)
            } else {
                libc::dup2(fd, 3)
            };
            if target == -1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// A running child process, killed and reaped on drop.
pub struct Proc {
    child: Option<Child>,
    /// What was started, for messages.
    pub name: String,
}

impl Proc {
    /// Starts `program args` with stdout/stderr inherited only when
    /// `SURFSTORE_TEST_LOGS` is set (keeps test output readable).
    pub fn spawn(program: &Path, args: &[&str]) -> Proc {
        Self::start(command(program), program, args)
    }

    /// Starts a server `program args` on `listener`, which it takes over
    /// (socket activation: `LISTEN_FDS=1`, the socket at fd 3; see
    /// `src/listener.rs`). The port was bound before the server existed, so
    /// no other process can take it meanwhile; this process's copy is
    /// closed when `listener` drops, so once the server dies its port
    /// refuses connections again.
    pub fn spawn_on(listener: TcpListener, program: &Path, args: &[&str]) -> Proc {
        Self::start(command_on(listener, program), program, args)
    }

    /// Like [`Proc::spawn`], with `env` added to the environment.
    pub fn spawn_with_env(program: &Path, args: &[&str], env: &[(String, String)]) -> Proc {
        let mut command = command(program);
        command.envs(env.iter().map(|(k, v)| (k, v)));
        Self::start(command, program, args)
    }

    fn start(command: Command, program: &Path, args: &[&str]) -> Proc {
        let verbose = std::env::var_os("SURFSTORE_TEST_LOGS").is_some();
        let stdio = || {
            if verbose {
                Stdio::inherit()
            } else {
                Stdio::null()
            }
        };
        Self::launch(command, program, args, stdio(), stdio())
    }

    /// Starts `program args` with stdout and stderr both appended to the
    /// file `log`, for tests that read what a server printed.
    pub fn spawn_logged(program: &Path, args: &[&str], log: &Path) -> Proc {
        Self::start_logged(command(program), program, args, log)
    }

    /// [`Proc::spawn_logged`] for a server on `listener` (see
    /// [`Proc::spawn_on`]).
    pub fn spawn_logged_on(
        listener: TcpListener,
        program: &Path,
        args: &[&str],
        log: &Path,
    ) -> Proc {
        Self::start_logged(command_on(listener, program), program, args, log)
    }

    fn start_logged(command: Command, program: &Path, args: &[&str], log: &Path) -> Proc {
        let file = || {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(log)
                .unwrap_or_else(|e| panic!("open {}: {e}", log.display()))
        };
        Self::launch(command, program, args, file().into(), file().into())
    }

    fn launch(mut command: Command, program: &Path, args: &[&str], out: Stdio, err: Stdio) -> Proc {
        let child = command
            .args(args)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", program.display()));
        Proc {
            child: Some(child),
            name: format!("{} {}", program.display(), args.join(" ")),
        }
    }

    /// The process id, while it runs.
    pub fn id(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether the process has exited.
    pub fn has_exited(&mut self) -> bool {
        match self.child.as_mut() {
            Some(child) => !matches!(child.try_wait(), Ok(None)),
            None => true,
        }
    }

    /// Sends `signal` (e.g. `libc::SIGSTOP`) to the process, if it runs.
    pub fn signal(&self, signal: i32) {
        if let Some(child) = &self.child {
            let pid = i32::try_from(child.id()).expect("a pid fits an i32");
            // SAFETY: kill(2) on our own child's pid, which is not reaped
            // (and so not reused) while `child` is held.
            unsafe { libc::kill(pid, signal) };
        }
    }

    /// Kills the process with SIGKILL and waits for it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Polls until a gRPC server answers on `addr`, or the process exits
/// (returns false) or the timeout passes (panics).
pub fn wait_listening(proc: &mut Proc, addr: &str) -> bool {
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        if speaks_http2(addr) {
            return true;
        }
        if proc.has_exited() {
            return false;
        }
        assert!(
            Instant::now() < deadline,
            "{} never listened on {addr}",
            proc.name
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A `surfstore-server` on a free port.
pub struct Server {
    /// `127.0.0.1:<port>`.
    pub addr: String,
    /// The port it listens on.
    pub port: u16,
    /// The process.
    pub proc: Proc,
}

/// Whether a server on `addr` answers the HTTP/2 connection preface with
/// its SETTINGS. Connecting is not enough: a socket handed to a server
/// before it started accepts connections into its backlog at once.
fn speaks_http2(addr: &str) -> bool {
    use std::io::{Read, Write};
    const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    // An empty SETTINGS frame: length 0, type 4, no flags, stream 0.
    const SETTINGS: [u8; 9] = [0, 0, 0, 4, 0, 0, 0, 0, 0];
    let Ok(mut stream) = TcpStream::connect(addr) else {
        return false;
    };
    if is_self_connected(&stream) {
        return false;
    }
    let mut first = [0u8; 1];
    stream
        .set_read_timeout(Some(Duration::from_millis(200)))
        .is_ok()
        && stream.write_all(PREFACE).is_ok()
        && stream.write_all(&SETTINGS).is_ok()
        && matches!(stream.read(&mut first), Ok(1))
}

/// Whether `stream` is connected to itself: connecting to a loopback port
/// nobody listens on yet succeeds when the kernel happens to pick that same
/// port as the local end (TCP simultaneous open), which would pass for a
/// server being ready.
fn is_self_connected(stream: &TcpStream) -> bool {
    matches!((stream.local_addr(), stream.peer_addr()), (Ok(local), Ok(peer)) if local == peer)
}

/// Starts `surfstore-server -s <service> -p <free port> -l [extra...]` on a
/// socket bound for it, and polls until it serves.
pub fn start_server(service: &str, extra: &[&str]) -> Server {
    start_server_with_env(service, extra, &[])
}

/// Like [`start_server`], with `env` added to the server's environment.
pub fn start_server_with_env(service: &str, extra: &[&str], env: &[(String, String)]) -> Server {
    start_server_on_with_env(loopback_listener(), service, extra, env)
}

/// Starts `surfstore-server -s <service> -p <port> -l [extra...]` on
/// `listener` (of that port), and polls until it serves; panics if it
/// exits first.
pub fn start_server_on(listener: TcpListener, service: &str, extra: &[&str]) -> Server {
    start_server_on_with_env(listener, service, extra, &[])
}

/// Like [`start_server_on`], with `env` added to the server's environment.
pub fn start_server_on_with_env(
    listener: TcpListener,
    service: &str,
    extra: &[&str],
    env: &[(String, String)],
) -> Server {
    let port = listener.local_addr().expect("listener address").port();
    let port_arg = port.to_string();
    let mut args = vec!["-s", service, "-p", &port_arg, "-l"];
    args.extend_from_slice(extra);
    let program = bin("surfstore-server");
    let mut command = command_on(listener, &program);
    command.envs(env.iter().map(|(k, v)| (k, v)));
    let mut proc = Proc::start(command, &program, &args);
    let addr = format!("127.0.0.1:{port}");
    assert!(wait_listening(&mut proc, &addr), "{} exited", proc.name);
    Server { addr, port, proc }
}

/// Runs `command` (a script, such as a demo) to completion, asserts it
/// succeeded (showing all it printed if not) and returns its stdout.
pub fn run_ok(command: &mut Command) -> String {
    let out = command
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("run {command:?}: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{command:?} failed ({:?}): {stdout}{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// Runs a binary to completion and returns its output (status, stdout, stderr).
pub fn run(program: &Path, args: &[&str]) -> Output {
    command(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("run {}: {e}", program.display()))
}

/// Runs a binary like [`run`], but kills it if it has not finished within
/// `limit`. Returns its output and how long it ran; a killed run has no exit
/// code. Output goes through files so a chatty child never blocks on a full
/// pipe while the harness waits.
pub fn run_with_timeout(program: &Path, args: &[&str], limit: Duration) -> (Output, Duration) {
    let dir = tempfile::tempdir().expect("tempdir for output");
    let out_path = dir.path().join("stdout");
    let err_path = dir.path().join("stderr");
    let started = Instant::now();
    let mut child = command(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out_path).expect("stdout file"))
        .stderr(std::fs::File::create(&err_path).expect("stderr file"))
        .spawn()
        .unwrap_or_else(|e| panic!("run {}: {e}", program.display()));
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for child") {
            break status;
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            break child.wait().expect("reap killed child");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let elapsed = started.elapsed();
    let output = Output {
        status,
        stdout: std::fs::read(&out_path).expect("read stdout"),
        stderr: std::fs::read(&err_path).expect("read stderr"),
    };
    (output, elapsed)
}

/// A lazily connecting channel to `addr`; must be called inside a tokio
/// runtime.
fn connect(addr: &str) -> Channel {
    surfstore::grpc::channel(addr).expect("valid address")
}

/// A BlockStore client to `addr` with no message-size limits of its own, so
/// the server's limits are the ones under test.
pub fn block_client(addr: &str) -> BlockStoreClient<Channel> {
    BlockStoreClient::new(connect(addr))
        .max_decoding_message_size(usize::MAX)
        .max_encoding_message_size(usize::MAX)
}

/// A MetaStore client to `addr` with no message-size limits of its own.
pub fn meta_client(addr: &str) -> MetaStoreClient<Channel> {
    MetaStoreClient::new(connect(addr))
        .max_decoding_message_size(usize::MAX)
        .max_encoding_message_size(usize::MAX)
}

/// A RaftSurfstore client to `addr` with no message-size limits of its own.
pub fn raft_client(addr: &str) -> RaftSurfstoreClient<Channel> {
    RaftSurfstoreClient::new(connect(addr))
        .max_decoding_message_size(usize::MAX)
        .max_encoding_message_size(usize::MAX)
}

/// `FileMetaData{filename, version, blockHashList}`.
pub fn file_meta(name: &str, version: i32, hashes: &[&str]) -> FileMetaData {
    FileMetaData {
        filename: name.to_string(),
        version,
        block_hash_list: hashes.iter().map(|h| h.to_string()).collect(),
    }
}

/// Metadata of about `bytes` bytes: `name` at `version` with 16 KiB
/// "hashes" (the MetaStore stores names and hash lists as given), so large
/// messages cost few allocations.
pub fn large_meta(name: &str, version: i32, bytes: usize) -> FileMetaData {
    const HASH_BYTES: usize = 16 << 10;
    FileMetaData {
        filename: name.to_string(),
        version,
        block_hash_list: (0..bytes.div_ceil(HASH_BYTES))
            .map(|i| format!("{i:0HASH_BYTES$}"))
            .collect(),
    }
}

/// Sends [`LARGE_UPDATE_BYTES`] updates with `update(n)` for n = 0, 1, ...
/// (each must return the version it was sent with) until one is refused or
/// they add up to well past one message; returns how many were accepted
/// and the refusal.
pub async fn update_until_refused<F, Fut>(mut update: F) -> (usize, Option<tonic::Status>)
where
    F: FnMut(usize) -> Fut,
    Fut: std::future::Future<Output = Result<(), tonic::Status>>,
{
    let mut accepted = 0;
    while accepted * LARGE_UPDATE_BYTES < surfstore::grpc::MAX_MESSAGE_BYTES + (16 << 20) {
        match update(accepted).await {
            Ok(()) => accepted += 1,
            Err(status) => return (accepted, Some(status)),
        }
    }
    (accepted, None)
}

/// The size of each update [`update_until_refused`] sends.
pub const LARGE_UPDATE_BYTES: usize = 4 << 20;

/// Asserts that the updates [`update_until_refused`] sent were refused at
/// the reply limit: not well before it, and with RESOURCE_EXHAUSTED naming
/// it.
pub fn assert_refused_at_reply_limit(accepted: usize, refused: Option<tonic::Status>) {
    assert!(
        accepted * LARGE_UPDATE_BYTES > surfstore::grpc::MAX_MESSAGE_BYTES - (16 << 20),
        "refused too early: {accepted}"
    );
    assert_status::<()>(
        Err(refused.expect("no update was refused")),
        tonic::Code::ResourceExhausted,
        "132 MiB",
        "an update past the reply limit",
    );
}

/// Extra `surfstore-raft-server` arguments that turn automatic heartbeats
/// off, so only explicit `SendHeartbeat` calls replicate (the reference
/// scenarios' semantics).
pub const MANUAL_HEARTBEATS: &[&str] = &["--heartbeat-ms", "0"];

/// Extra `surfstore-raft-server` arguments that turn elections on (SPEC
/// §9.1) with the election timeout N of the tests in election mode: 300 ms.
/// Heartbeats then go every 60 ms, so a follower campaigns only after
/// missing five in a row; a loaded 2-core CI machine running a test
/// binary's clusters side by side stalls a process for tens of
/// milliseconds, not hundreds. A failover still takes well under a second.
pub const ELECTIONS: &[&str] = &["--election-timeout-ms", "300"];

/// The election timeout N that [`ELECTIONS`] sets.
pub fn election_timeout() -> Duration {
    Duration::from_millis(ELECTIONS[1].parse().expect("a number of milliseconds"))
}

/// How long a test waits for an election it expects.
pub const ELECTION_LIMIT: Duration = Duration::from_secs(20);

/// Runs `surfstore-ctl args` (for at most a minute); returns its exit code,
/// stdout and stderr.
pub fn ctl(args: &[&str]) -> (Option<i32>, String, String) {
    let (out, _) = run_with_timeout(&bin("surfstore-ctl"), args, Duration::from_secs(60));
    (
        out.status.code(),
        String::from_utf8(out.stdout).expect("surfstore-ctl writes UTF-8"),
        String::from_utf8(out.stderr).expect("surfstore-ctl writes UTF-8"),
    )
}

/// Deadline of one chaos-API or heartbeat call made by the harness. A
/// heartbeat may wait for a crashed or unreachable peer to time out.
pub const RPC_DEADLINE: Duration = Duration::from_secs(10);

/// A running Raft cluster: one BlockStore (`surfstore-server -s block`) and
/// `n` `surfstore-raft-server`s configured by a JSON file in a temporary
/// directory. Every process is killed when the cluster drops.
pub struct Cluster {
    /// `MetaStoreAddrs`: server `i` listens on `addrs[i]` (`127.0.0.1:<port>`).
    pub addrs: Vec<String>,
    /// The config file clients use (every server's real address).
    pub config: PathBuf,
    /// The config each server was started with: `config`, or one naming
    /// its peers by the proxies of a [`network::Network`].
    server_configs: Vec<PathBuf>,
    /// The BlockStore every server announces (`BlockStoreAddrs[0]`).
    pub block: Server,
    /// One connected client per server, in config order.
    pub clients: Vec<RaftSurfstoreClient<Channel>>,
    /// What every server was started with after `-f CONFIG -i ID`, so that a
    /// restart starts it the same way.
    extra: Vec<String>,
    /// Server `i`'s `--data-dir`; empty when the cluster keeps no state.
    data_dirs: Vec<PathBuf>,
    procs: Vec<Proc>,
    // Declared after the processes: removed once they are gone.
    _dir: tempfile::TempDir,
    /// The BlockStore's `--data-dir`, when it has one.
    block_dir: Option<tempfile::TempDir>,
}

/// Starts a cluster of `n` Raft servers, each with `extra` appended to
/// `surfstore-raft-server -f CONFIG -i ID`. Polls until every server answers
/// `IsCrashed`; if one exits first (its port was taken meanwhile) the whole
/// cluster is started again on fresh ports. Must be called inside a tokio
/// runtime (the clients' channels live on it).
pub async fn start_cluster(n: usize, extra: &[&str]) -> Cluster {
    launch_cluster(n, extra, false).await
}

/// Like [`start_cluster`], but every process keeps its state in a
/// `--data-dir` of its own (the BlockStore too), so that a server killed
/// with [`Cluster::kill`] comes back with it from [`Cluster::restart`].
pub async fn start_durable_cluster(n: usize, extra: &[&str]) -> Cluster {
    launch_cluster(n, extra, true).await
}

/// Like [`start_durable_cluster`], but every server reaches its peers
/// through the returned [`network::Network`], which can partition them.
pub async fn start_partitionable_cluster(n: usize, extra: &[&str]) -> (Cluster, network::Network) {
    let listeners: Vec<TcpListener> = (0..n).map(|_| loopback_listener()).collect();
    let addrs: Vec<String> = listeners
        .iter()
        .map(|l| l.local_addr().expect("listener address").to_string())
        .collect();
    let network = network::Network::between(&addrs)
        .await
        .expect("start the proxies");
    let views = (0..n).map(|i| network.seen_from(i, &addrs[i])).collect();
    let cluster = launch_cluster_on(listeners, views, extra, true).await;
    (cluster, network)
}

async fn launch_cluster(n: usize, extra: &[&str], durable: bool) -> Cluster {
    let listeners: Vec<TcpListener> = (0..n).map(|_| loopback_listener()).collect();
    let addrs: Vec<String> = listeners
        .iter()
        .map(|l| l.local_addr().expect("listener address").to_string())
        .collect();
    launch_cluster_on(listeners, vec![addrs; n], extra, durable).await
}

/// Starts server `i` on `listeners[i]` with a config listing `views[i]`
/// (how it reaches each server; its own entry is its real address).
async fn launch_cluster_on(
    listeners: Vec<TcpListener>,
    views: Vec<Vec<String>>,
    extra: &[&str],
    durable: bool,
) -> Cluster {
    let n = listeners.len();
    let block_dir = durable.then(|| tempfile::tempdir().expect("tempdir for the BlockStore"));
    let block = start_server("block", &block_args(block_dir.as_ref()));
    let extra: Vec<String> = extra.iter().map(|a| a.to_string()).collect();
    let dir = tempfile::tempdir().expect("tempdir for the cluster");
    let addrs: Vec<String> = listeners
        .iter()
        .map(|l| l.local_addr().expect("listener address").to_string())
        .collect();
    let write_config = |name: String, addrs: &[String]| {
        let path = dir.path().join(name);
        let json = serde_json::json!({
            "MetaStoreAddrs": addrs,
            "BlockStoreAddrs": [block.addr],
        });
        std::fs::write(&path, json.to_string()).expect("write cluster config");
        path
    };
    let config = write_config("config.json".into(), &addrs);
    let server_configs: Vec<PathBuf> = views
        .iter()
        .enumerate()
        .map(|(i, view)| {
            if *view == addrs {
                config.clone()
            } else {
                write_config(format!("config-{i}.json"), view)
            }
        })
        .collect();
    let data_dirs: Vec<PathBuf> = if durable {
        (0..n)
            .map(|id| dir.path().join(format!("raft-{id}")))
            .collect()
    } else {
        Vec::new()
    };
    let mut procs: Vec<Proc> = listeners
        .into_iter()
        .enumerate()
        .map(|(id, listener)| {
            spawn_raft_server(listener, &server_configs[id], id, data_dirs.get(id), &extra)
        })
        .collect();
    let clients: Vec<_> = addrs.iter().map(|a| raft_client(a)).collect();
    assert!(
        all_ready(&mut procs, &clients).await,
        "a server of the {n}-server cluster exited while starting"
    );
    Cluster {
        addrs,
        config,
        server_configs,
        block,
        clients,
        extra,
        data_dirs,
        procs,
        _dir: dir,
        block_dir,
    }
}

/// `surfstore-server -s block` arguments beyond the port: a data directory
/// when there is one.
fn block_args(data_dir: Option<&tempfile::TempDir>) -> Vec<&str> {
    match data_dir {
        Some(dir) => vec!["--data-dir", utf8(dir.path())],
        None => Vec::new(),
    }
}

/// `surfstore-raft-server -f CONFIG -i ID [--data-dir DIR] extra...` on
/// `listener` (bound to the config's address of server `ID`).
pub fn spawn_raft_server(
    listener: TcpListener,
    config: &Path,
    id: usize,
    data_dir: Option<&PathBuf>,
    extra: &[String],
) -> Proc {
    let id = id.to_string();
    let mut args = vec!["-f", utf8(config), "-i", &id];
    if let Some(dir) = data_dir {
        args.extend(["--data-dir", utf8(dir)]);
    }
    args.extend(extra.iter().map(String::as_str));
    Proc::spawn_on(listener, &bin("surfstore-raft-server"), &args)
}

/// A temporary path as a command-line argument.
fn utf8(path: &Path) -> &str {
    path.to_str().expect("test directories have UTF-8 paths")
}

/// Whether every server answers a RaftSurfstore call (not merely some
/// process on its port) while its process is still alive.
pub async fn all_ready(procs: &mut [Proc], clients: &[RaftSurfstoreClient<Channel>]) -> bool {
    let deadline = Instant::now() + READY_TIMEOUT;
    for (proc, client) in procs.iter_mut().zip(clients) {
        loop {
            if proc.has_exited() {
                return false;
            }
            let mut client = client.clone();
            let answer =
                tokio::time::timeout(Duration::from_millis(500), client.is_crashed(())).await;
            if matches!(answer, Ok(Ok(_))) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{} never answered IsCrashed",
                proc.name
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    // A server whose port another process held answers nothing itself but
    // exits; check once more now that all have been polled.
    !procs.iter_mut().any(Proc::has_exited)
}

/// Awaits `call` with [`RPC_DEADLINE`], panicking with `what` on timeout.
pub async fn within<T>(what: &str, call: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(RPC_DEADLINE, call)
        .await
        .unwrap_or_else(|_| panic!("{what} did not return within {RPC_DEADLINE:?}"))
}

impl Cluster {
    /// A clone of server `i`'s client (clones share one connection).
    pub fn client(&self, i: usize) -> RaftSurfstoreClient<Channel> {
        self.clients[i].clone()
    }

    /// Server `i`'s `--data-dir` (a cluster from [`start_durable_cluster`]).
    pub fn data_dir(&self, i: usize) -> &Path {
        self.data_dirs
            .get(i)
            .unwrap_or_else(|| panic!("server {i} has no data directory"))
    }

    /// Freezes server `i` (SIGSTOP): its sockets stay open, it answers
    /// nothing, as a server stalled by a long pause.
    pub fn pause(&self, i: usize) {
        self.procs[i].signal(libc::SIGSTOP);
    }

    /// Lets server `i` run again after [`Cluster::pause`] (SIGCONT).
    pub fn resume(&self, i: usize) {
        self.procs[i].signal(libc::SIGCONT);
    }

    /// Kills server `i` with SIGKILL and waits until it is gone.
    pub fn kill(&mut self, i: usize) {
        self.procs[i].kill();
    }

    /// Starts server `i` again, with the same arguments, port and data
    /// directory, and polls until it answers `IsCrashed`.
    pub async fn restart(&mut self, i: usize) {
        let port: u16 = self.addrs[i]
            .rsplit_once(':')
            .and_then(|(_, port)| port.parse().ok())
            .expect("cluster addresses are 127.0.0.1:PORT");
        let mut proc = spawn_raft_server(
            listener_on(port),
            &self.server_configs[i],
            i,
            self.data_dirs.get(i),
            &self.extra,
        );
        let ready = all_ready(
            std::slice::from_mut(&mut proc),
            std::slice::from_ref(&self.clients[i]),
        )
        .await;
        self.procs[i] = proc;
        assert!(ready, "server {i} did not start again on {}", self.addrs[i]);
    }

    /// Kills the BlockStore with SIGKILL and waits until it is gone.
    pub fn kill_block(&mut self) {
        self.block.proc.kill();
    }

    /// Starts the BlockStore again on the same port and data directory and
    /// polls until it serves.
    pub async fn restart_block(&mut self) {
        let args = block_args(self.block_dir.as_ref());
        self.block = start_server_on(listener_on(self.block.port), "block", &args);
    }

    /// Runs `surfstore-client -f CONFIG dir block_size` to completion (at
    /// most a minute); returns its output and how long it ran.
    pub fn sync(&self, dir: &Path, block_size: usize) -> (Output, Duration) {
        let block_size = block_size.to_string();
        let args = ["-f", utf8(&self.config), utf8(dir), &block_size];
        run_with_timeout(&bin("surfstore-client"), &args, Duration::from_secs(60))
    }

    /// `SetLeader` on server `i`; panics on error.
    pub async fn set_leader(&self, i: usize) {
        let ok = within("SetLeader", self.client(i).set_leader(()))
            .await
            .unwrap_or_else(|e| panic!("SetLeader on {i}: {e}"));
        assert!(ok.into_inner().flag, "SetLeader on {i} returned false");
    }

    /// `SendHeartbeat` on server `i`; returns its flag, panics on error.
    pub async fn heartbeat(&self, i: usize) -> bool {
        within("SendHeartbeat", self.client(i).send_heartbeat(()))
            .await
            .unwrap_or_else(|e| panic!("SendHeartbeat on {i}: {e}"))
            .into_inner()
            .flag
    }

    /// `Crash` on server `i`; panics on error.
    pub async fn crash(&self, i: usize) {
        within("Crash", self.client(i).crash(()))
            .await
            .unwrap_or_else(|e| panic!("Crash on {i}: {e}"));
    }

    /// `Restore` on server `i`; panics on error.
    pub async fn restore(&self, i: usize) {
        within("Restore", self.client(i).restore(()))
            .await
            .unwrap_or_else(|e| panic!("Restore on {i}: {e}"));
    }

    /// `IsCrashed` on server `i`; panics on error.
    pub async fn is_crashed(&self, i: usize) -> bool {
        within("IsCrashed", self.client(i).is_crashed(()))
            .await
            .unwrap_or_else(|e| panic!("IsCrashed on {i}: {e}"))
            .into_inner()
            .is_crashed
    }

    /// `GetInternalState` of server `i`; panics on error.
    pub async fn state(&self, i: usize) -> RaftInternalState {
        within("GetInternalState", self.client(i).get_internal_state(()))
            .await
            .unwrap_or_else(|e| panic!("GetInternalState on {i}: {e}"))
            .into_inner()
    }

    /// The leader some server other than `not` claims to be and confirms
    /// with a read (a majority acknowledges it, its no-op committed), with
    /// its term, once the cluster elected one (within [`ELECTION_LIMIT`]).
    pub async fn elected(&self, not: Option<usize>) -> (usize, i64) {
        eventually("a leader is elected", ELECTION_LIMIT, async || {
            for i in (0..self.clients.len()).filter(|&i| Some(i) != not) {
                let Ok(state) = self.client(i).get_internal_state(()).await else {
                    continue;
                };
                let state = state.into_inner();
                if !state.is_leader {
                    continue;
                }
                let read =
                    tokio::time::timeout(election_timeout(), self.client(i).get_file_info_map(()))
                        .await;
                if matches!(read, Ok(Ok(_))) {
                    return Some((i, state.term));
                }
            }
            None
        })
        .await
    }

    /// `UpdateFile` on server `i` (must not block longer than
    /// [`RPC_DEADLINE`]); returns the version or the error status.
    pub async fn update(&self, i: usize, meta: FileMetaData) -> Result<i32, tonic::Status> {
        within("UpdateFile", self.client(i).update_file(meta))
            .await
            .map(|v| v.into_inner().version)
    }
}

/// Polls `probe` every 20 ms until it yields a value, for at most `limit`;
/// panics naming `what` if it never does.
pub async fn eventually<T>(
    what: &str,
    limit: Duration,
    mut probe: impl AsyncFnMut() -> Option<T>,
) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        assert!(Instant::now() < deadline, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Runs `surfstore-client META_ADDR DIR BLOCKSIZE` once, to completion.
pub fn sync(dir: &Path, addr: &str, block_size: usize) -> Output {
    sync_with(dir, addr, block_size, &[])
}

/// Like [`sync`], but asserts the run succeeded and returns its stdout.
pub fn sync_ok(dir: &Path, addr: &str, block_size: usize) -> String {
    let out = sync(dir, addr, block_size);
    assert!(
        out.status.success(),
        "sync of {} failed ({:?}): {}",
        dir.display(),
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Asserts `result` is an error with `code` whose message contains `needle`
/// (SPEC §3 fixes some messages exactly and asks the rest to say what is
/// wrong).
pub fn assert_status<T: std::fmt::Debug>(
    result: Result<T, tonic::Status>,
    code: tonic::Code,
    needle: &str,
    what: &str,
) {
    let status = result.expect_err(what);
    assert_eq!(status.code(), code, "{what}: {status:?}");
    assert!(
        status.message().contains(needle),
        "{what}: {:?} does not contain {needle:?}",
        status.message()
    );
}

/// Every regular file below `dir` (index.txt included), by path relative to
/// `dir`, with its bytes: to show a directory did not change at all.
pub fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<PathBuf, Vec<u8>>) {
        for entry in std::fs::read_dir(dir).expect("read a synced directory") {
            let path = entry.expect("directory entry").path();
            if path.is_dir() {
                walk(root, &path, out);
            } else {
                let rel = path.strip_prefix(root).expect("below root").to_path_buf();
                out.insert(rel, std::fs::read(&path).expect("read a synced file"));
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

/// Every regular file below `dir` but `index.txt`, with its bytes: what a
/// sync must reproduce byte for byte.
pub fn synced_files(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut files = snapshot(dir);
    files.remove(Path::new("index.txt"));
    files
}

/// The summary line of one `surfstore-client` run, taken apart.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Summary {
    /// Files uploaded.
    pub uploaded: usize,
    /// Files downloaded.
    pub downloaded: usize,
    /// Local files deleted.
    pub deleted: usize,
    /// Conflicts the server won.
    pub conflicts: usize,
    /// Conflict copies saved (outside BASEDIR, or beside the files with
    /// `--keep-conflicts`).
    pub kept: usize,
    /// Files not synced.
    pub failed: usize,
    /// Bytes sent, as printed (`12.0 MiB`).
    pub sent: String,
    /// Bytes received, as printed.
    pub received: String,
    /// Blocks the BlockStore already had.
    pub on_server: usize,
}

/// Parses the one summary line in `stdout` (`synced in 1.2s: 3 uploaded,
/// 1 downloaded, 0 deleted, 0 conflicts; sent 12.0 MiB, received 4.0 MiB,
/// 17 blocks already on server`); panics if there is none or it is
/// malformed.
pub fn summary(stdout: &str) -> Summary {
    let lines: Vec<&str> = stdout
        .lines()
        .filter(|l| l.starts_with("synced in "))
        .collect();
    let [line] = lines.as_slice() else {
        panic!("expected one summary line in {stdout:?}");
    };
    let (_, rest) = line.split_once("s: ").expect("`synced in <secs>s: `");
    let (files, bytes) = rest.split_once("; ").expect("`; ` before the byte counts");
    let mut out = Summary::default();
    for part in files.split(", ") {
        let (n, what) = part.split_once(' ').expect("`<n> <what>`");
        let n: usize = n.parse().unwrap_or_else(|_| panic!("{part:?} in {line:?}"));
        match what {
            "uploaded" => out.uploaded = n,
            "downloaded" => out.downloaded = n,
            "deleted" => out.deleted = n,
            "failed" => out.failed = n,
            "conflicts" | "conflict" => out.conflicts = n,
            kept if kept.starts_with("conflict") && kept.contains(" (") => {
                out.conflicts = n;
                out.kept = kept[kept.find(" (").unwrap_or(0) + 2..]
                    .split(' ')
                    .next()
                    .and_then(|k| k.parse().ok())
                    .unwrap_or_else(|| panic!("{part:?} in {line:?}"));
            }
            _ => panic!("unexpected {part:?} in {line:?}"),
        }
    }
    let parts: Vec<&str> = bytes.split(", ").collect();
    let [sent, received, on_server] = parts.as_slice() else {
        panic!("expected sent, received, blocks in {line:?}");
    };
    out.sent = sent.strip_prefix("sent ").expect("sent").to_string();
    out.received = received
        .strip_prefix("received ")
        .expect("received")
        .to_string();
    out.on_server = on_server
        .strip_suffix(" blocks already on server")
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{on_server:?} in {line:?}"));
    out
}

/// The file counts of the summary in `stdout`: [uploaded, downloaded,
/// deleted, conflicts].
pub fn counts(stdout: &str) -> [usize; 4] {
    let s = summary(stdout);
    [s.uploaded, s.downloaded, s.deleted, s.conflicts]
}

/// Every file below `dir` but index.txt: name with `/` separators → bytes.
pub fn tree(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    synced_files(dir)
        .into_iter()
        .map(|(path, bytes)| (utf8(&path).to_string(), bytes))
        .collect()
}

/// Zeroes the last `bytes` bytes of the records of the write-ahead log at
/// `path`: the file an append whose end never reached the disk leaves (it
/// keeps its length, allocated ahead).
pub fn cut_wal_records(path: &Path, bytes: u64) {
    use std::io::{Seek, SeekFrom, Write};
    let end = surfstore::storage::Wal::records_end(path).unwrap();
    assert!(end > bytes, "{} is too short to cut", path.display());
    let mut file = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    file.seek(SeekFrom::Start(end - bytes)).unwrap();
    file.write_all(&vec![0; bytes as usize]).unwrap();
}

/// Deterministic bytes that do not repeat block-wise.
pub fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Writes `data` to `dir/name`, creating the directories on the way.
pub fn write(dir: &Path, name: &str, data: impl AsRef<[u8]>) {
    let path = dir.join(name);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, data).unwrap();
}

/// The text of `dir/index.txt`.
pub fn index_text(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("index.txt")).unwrap()
}

/// A two-thread tokio runtime for in-test servers and clients.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// What a BlockStore without the batched calls (the original's) answers
/// `PutBlocks` and `GetBlocks`: in-test BlockStores return this to make the
/// client move one block per call.
pub fn lacks_batched_calls<T>() -> Result<T, tonic::Status> {
    Err(tonic::Status::unimplemented(
        "like the original: one block per call",
    ))
}

/// The gc calls (`ListBlocks`, `DeleteBlocks`) of an in-test BlockStore,
/// which the client never makes: UNIMPLEMENTED. Expands inside an
/// `impl block_store_server::BlockStore` (with the signatures
/// `#[tonic::async_trait]` gives the trait).
#[macro_export]
macro_rules! lacks_gc_calls {
    () => {
        $crate::lacks_gc_calls!(list_blocks, ListBlocksInput, StoredBlocks);
        $crate::lacks_gc_calls!(delete_blocks, DeleteBlocksInput, DeletedBlocks);
    };
    ($method:ident, $input:ident, $output:ident) => {
        fn $method<'life0, 'async_trait>(
            &'life0 self,
            _: tonic::Request<surfstore::proto::$input>,
        ) -> std::pin::Pin<
            Box<
                dyn std::future::Future<
                        Output = Result<tonic::Response<surfstore::proto::$output>, tonic::Status>,
                    > + Send
                    + 'async_trait,
            >,
        >
        where
            'life0: 'async_trait,
            Self: 'async_trait,
        {
            Box::pin(async {
                Err(tonic::Status::unimplemented(
                    "an in-test BlockStore has no gc",
                ))
            })
        }
    };
}

/// Serves `router` on a free loopback port inside `rt`; returns the address.
pub fn serve(rt: &tokio::runtime::Runtime, router: tonic::transport::server::Router) -> String {
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    rt.spawn(router.serve_with_incoming(surfstore::grpc::incoming(listener)));
    addr
}

/// Runs `surfstore-client [extra...] META_ADDR DIR BLOCKSIZE` once.
pub fn sync_with(dir: &Path, addr: &str, block_size: usize, extra: &[&str]) -> Output {
    let dir = dir.to_str().expect("test directories have UTF-8 paths");
    let block_size = block_size.to_string();
    let mut args = extra.to_vec();
    args.extend([addr, dir, block_size.as_str()]);
    run(&bin("surfstore-client"), &args)
}
