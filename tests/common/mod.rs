//! Test harness shared by the integration tests: starts the real binaries on
//! free loopback ports, waits for readiness by polling, and kills every
//! process it started when the handle drops (also when a test fails).

#![allow(dead_code)] // each test binary uses a different part of the harness

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

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

/// `n` distinct free loopback ports. The listeners are held until all are
/// chosen so the ports differ; a server that then fails to bind one (another
/// process took it) makes the caller retry.
pub fn free_ports(n: usize) -> Vec<u16> {
    let listeners: Vec<TcpListener> = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port"))
        .collect();
    listeners
        .iter()
        .map(|l| l.local_addr().expect("local addr").port())
        .collect()
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
        let verbose = std::env::var_os("SURFSTORE_TEST_LOGS").is_some();
        let stdio = || {
            if verbose {
                Stdio::inherit()
            } else {
                Stdio::null()
            }
        };
        let child = Command::new(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(stdio())
            .stderr(stdio())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", program.display()));
        Proc {
            child: Some(child),
            name: format!("{} {}", program.display(), args.join(" ")),
        }
    }

    /// Whether the process has exited.
    pub fn has_exited(&mut self) -> bool {
        match self.child.as_mut() {
            Some(child) => !matches!(child.try_wait(), Ok(None)),
            None => true,
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

/// Polls until something accepts TCP connections on `addr`, or the process
/// exits (returns false) or the timeout passes (panics).
pub fn wait_listening(proc: &mut Proc, addr: &str) -> bool {
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        if TcpStream::connect(addr).is_ok() {
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

/// Starts `surfstore-server -s <service> -p <free port> -l [extra...]`,
/// retrying on another port if the chosen one was taken meanwhile.
pub fn start_server(service: &str, extra: &[&str]) -> Server {
    for _ in 0..5 {
        let port = free_ports(1)[0];
        let port_arg = port.to_string();
        let mut args = vec!["-s", service, "-p", &port_arg, "-l"];
        args.extend_from_slice(extra);
        let mut proc = Proc::spawn(&bin("surfstore-server"), &args);
        let addr = format!("127.0.0.1:{port}");
        if wait_listening(&mut proc, &addr) {
            return Server { addr, port, proc };
        }
    }
    panic!("could not start surfstore-server -s {service}");
}

/// Runs a binary to completion and returns its output (status, stdout, stderr).
pub fn run(program: &Path, args: &[&str]) -> Output {
    Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("run {}: {e}", program.display()))
}

/// Runs `surfstore-client META_ADDR DIR BLOCKSIZE` once, to completion.
pub fn sync(dir: &Path, addr: &str, block_size: usize) -> Output {
    let dir = dir.to_str().expect("test directories have UTF-8 paths");
    run(
        &bin("surfstore-client"),
        &[addr, dir, &block_size.to_string()],
    )
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
