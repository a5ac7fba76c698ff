//! `surfstore-client --watch` from the outside (SPEC §9.5): changes flow
//! both ways within seconds, through the `MapWatch` stream or by polling a
//! server without it; Ctrl-C exits 0 with index.txt consistent; a server
//! that goes away is reported once, and its return once.

// Test code: a failed unwrap is a failed test, with its location.
#![allow(clippy::unwrap_used)]
#![cfg(unix)]

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{bin, listener_on, runtime, start_server, start_server_on, sync_with, write};
use surfstore::block_store::{BlockStoreService, MemoryBlocks};
use surfstore::meta_store::MetaStoreService;

/// How long a change may take to reach the other side.
const PROPAGATION: Duration = Duration::from_secs(15);

/// A `surfstore-client --watch` in the background, its output in files;
/// killed on drop.
struct Watcher {
    child: Option<Child>,
    logs: tempfile::TempDir,
}

impl Watcher {
    /// `surfstore-client --watch [extra...] ADDR DIR 64`.
    fn start(dir: &Path, addr: &str, extra: &[&str]) -> Self {
        let mut args = extra.to_vec();
        args.push(addr);
        Self::start_with(&args, dir)
    }

    /// `surfstore-client --watch [args...] DIR 64`.
    fn start_with(args: &[&str], dir: &Path) -> Self {
        let logs = tempfile::tempdir().unwrap();
        let mut args = [&["--watch"], args].concat();
        args.extend([dir.to_str().unwrap(), "64"]);
        let child = common::command(&bin("surfstore-client"))
            .args(&args)
            .stdin(Stdio::null())
            .stdout(fs::File::create(logs.path().join("stdout")).unwrap())
            .stderr(fs::File::create(logs.path().join("stderr")).unwrap())
            .spawn()
            .unwrap();
        Self {
            child: Some(child),
            logs,
        }
    }

    fn stderr(&self) -> String {
        fs::read_to_string(self.logs.path().join("stderr")).unwrap()
    }

    fn stdout(&self) -> String {
        fs::read_to_string(self.logs.path().join("stdout")).unwrap()
    }

    /// Sends SIGINT (Ctrl-C) and waits for the exit.
    fn interrupt(&mut self) -> ExitStatus {
        let mut child = self.child.take().unwrap();
        let sent = Command::new("kill")
            .args(["-INT", &child.id().to_string()])
            .status()
            .unwrap();
        assert!(sent.success());
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("Ctrl-C did not stop the watcher");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Polls until `check` holds, for at most [`PROPAGATION`].
fn until(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + PROPAGATION;
    while !check() {
        assert!(
            Instant::now() < deadline,
            "{what}: not within {PROPAGATION:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The synced files of `dir` as a watcher may be changing it: what
/// vanishes while it is read is left out, and so are the client's own
/// files (index.txt, temporary files).
fn files(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    fn walk(dir: &Path, prefix: &str, out: &mut BTreeMap<String, Vec<u8>>) {
        let Ok(entries) = fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().into_string().unwrap();
            let path = entry.path();
            if path.is_dir() {
                walk(&path, &format!("{prefix}{name}/"), out);
            } else if name != "index.txt"
                && !name.starts_with(".surfstore-")
                && let Ok(bytes) = fs::read(&path)
            {
                out.insert(format!("{prefix}{name}"), bytes);
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, "", &mut out);
    out
}

/// Polls until `a` and `b` hold the same files, `expected` among them.
fn until_same(a: &Path, b: &Path, expected: &[(&str, Option<&str>)]) {
    until(&format!("{expected:?} on both sides"), || {
        let (fa, fb) = (files(a), files(b));
        fa == fb
            && expected.iter().all(|(name, content)| {
                fa.get(*name).map(Vec::as_slice) == content.map(str::as_bytes)
            })
    });
}

/// What a one-shot dry run of `dir` says there is to do: nothing, when the
/// watcher left index.txt consistent with the files and the server.
fn nothing_left_to_do(dir: &Path, addr: &str) {
    let out = sync_with(dir, addr, 64, &["--dry-run"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "dry run, nothing changed; a sync now would give: \
         0 uploaded, 0 downloaded, 0 deleted, 0 conflicts\n"
    );
}

fn dir() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    (dir, path)
}

#[test]
fn changes_flow_both_ways_and_ctrl_c_exits_0_with_a_consistent_index() {
    let server = start_server("both", &[]);
    let addr = server.addr.as_str();
    let ((_a, a), (_b, b)) = (dir(), dir());
    write(&a, "first.txt", "there before");
    // Polling an hour apart: remote changes can only come by the stream.
    let mut watch_a = Watcher::start(&a, addr, &["--interval", "3600"]);
    let mut watch_b = Watcher::start(&b, addr, &["--interval", "3600"]);
    until_same(&a, &b, &[("first.txt", Some("there before"))]);

    write(&a, "new.txt", "created on a");
    until_same(&a, &b, &[("new.txt", Some("created on a"))]);
    write(&b, "new.txt", "modified on b");
    until_same(&a, &b, &[("new.txt", Some("modified on b"))]);
    fs::remove_file(a.join("new.txt")).unwrap();
    until_same(&a, &b, &[("new.txt", None)]);

    write(&b, "x/before.txt", "renamed on b");
    until_same(&a, &b, &[("x/before.txt", Some("renamed on b"))]);
    fs::rename(b.join("x/before.txt"), b.join("x/after.txt")).unwrap();
    until_same(
        &a,
        &b,
        &[
            ("x/before.txt", None),
            ("x/after.txt", Some("renamed on b")),
        ],
    );

    write(&a, "folder/one.txt", "1");
    write(&a, "folder/sub/two.txt", "2");
    until_same(
        &a,
        &b,
        &[
            ("folder/one.txt", Some("1")),
            ("folder/sub/two.txt", Some("2")),
        ],
    );
    fs::remove_dir_all(a.join("folder")).unwrap();
    until_same(
        &a,
        &b,
        &[("folder/one.txt", None), ("folder/sub/two.txt", None)],
    );
    until("the emptied folder pruned on b", || {
        !b.join("folder").exists()
    });

    for watcher in [&mut watch_a, &mut watch_b] {
        let status = watcher.interrupt();
        assert_eq!(status.code(), Some(0), "{}", watcher.stderr());
        // Only the scan's note on a file deleted while it was read (the
        // folder delete) may show: the next sync, moments later, settles it.
        let stderr = watcher.stderr();
        assert!(
            stderr
                .lines()
                .all(|l| l.contains("changed while it was hashed; it will sync next time")),
            "{stderr}"
        );
        assert!(
            watcher
                .stdout()
                .lines()
                .all(|l| l.starts_with("synced in "))
        );
    }
    nothing_left_to_do(&a, addr);
    nothing_left_to_do(&b, addr);
}

#[test]
fn two_folders_stay_in_sync_through_a_raft_cluster_across_a_failover() {
    let rt = runtime();
    let cluster = rt.block_on(async {
        let cluster = common::start_cluster(3, &["--heartbeat-ms", "50"]).await;
        cluster.set_leader(0).await;
        cluster
    });
    let config = cluster.config.to_str().unwrap();
    let ((_a, a), (_b, b)) = (dir(), dir());
    let _watch_a = Watcher::start_with(&["-f", config], &a);
    let _watch_b = Watcher::start_with(&["-f", config], &b);
    write(&a, "through-raft.txt", "v1");
    until_same(&a, &b, &[("through-raft.txt", Some("v1"))]);
    rt.block_on(async {
        cluster.crash(0).await;
        cluster.set_leader(1).await;
    });
    write(&b, "through-raft.txt", "v2 after the failover");
    until_same(
        &a,
        &b,
        &[("through-raft.txt", Some("v2 after the failover"))],
    );
}

#[test]
fn a_file_still_being_written_is_synced_once_it_is_stable() {
    use std::io::Write;
    let server = start_server("both", &[]);
    let ((_a, a), (_b, b)) = (dir(), dir());
    let _watch_a = Watcher::start(&a, &server.addr, &[]);
    let _watch_b = Watcher::start(&b, &server.addr, &[]);
    // Written in pieces 100 ms apart, well within the watcher's settle
    // time, for 1.5 s: no sync in between may take a piece of it.
    let pieces: Vec<String> = (0..15).map(|i| format!("piece {i:02}\n")).collect();
    let whole = pieces.concat();
    let mut file = fs::File::create(a.join("growing.log")).unwrap();
    let seen_on_b = || fs::read_to_string(b.join("growing.log")).ok();
    for piece in &pieces {
        file.write_all(piece.as_bytes()).unwrap();
        file.flush().unwrap();
        std::thread::sleep(Duration::from_millis(100));
        if let Some(partial) = seen_on_b() {
            panic!("b got a file still being written: {partial:?}");
        }
    }
    drop(file);
    until("the whole file on b", || {
        seen_on_b().as_deref() == Some(whole.as_str())
    });
}

#[test]
fn a_server_without_the_map_stream_is_polled() {
    let rt = runtime();
    // A MetaStore and BlockStore without MapWatch, like the original's.
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let served = listener.local_addr().unwrap().to_string();
    let blocks = BlockStoreService::new(Arc::new(MemoryBlocks::default())).into_server();
    let meta = MetaStoreService::new(served.clone()).into_server();
    let router = tonic::transport::Server::builder()
        .add_service(blocks)
        .add_service(meta);
    rt.spawn(router.serve_with_incoming(surfstore::grpc::incoming(listener)));
    let ((_a, a), (_b, b)) = (dir(), dir());
    let _watch_b = Watcher::start(&b, &served, &["--interval", "0.3"]);
    write(&a, "remote.txt", "from a one-shot client");
    let out = sync_with(&a, &served, 64, &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    until_same(&a, &b, &[("remote.txt", Some("from a one-shot client"))]);
}

#[test]
fn a_server_that_goes_away_is_reported_once_and_its_return_once() {
    let mut server = start_server("both", &[]);
    let (addr, port) = (server.addr.clone(), server.port);
    let ((_a, a), (_b, b)) = (dir(), dir());
    let watcher = Watcher::start(&a, &addr, &["--retry-for", "0"]);
    write(&a, "before.txt", "synced");
    until("the first file uploaded", || {
        sync_with(&b, &addr, 64, &[]).status.success() && b.join("before.txt").exists()
    });

    server.proc.kill();
    write(&a, "during.txt", "waits for the server");
    until("the failure reported", || {
        watcher.stderr().contains("retrying")
    });
    // Several more attempts fail meanwhile (the backoff starts at 0.5 s).
    std::thread::sleep(Duration::from_secs(3));
    let stderr = watcher.stderr();
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.starts_with("surfstore-client: ")
            && stderr.contains(&addr)
            && stderr
                .trim_end()
                .ends_with("; retrying until it works (Ctrl-C to stop)"),
        "{stderr}"
    );

    let _back = start_server_on(listener_on(port), "both", &[]);
    until("the return reported", || {
        watcher.stderr().contains("in sync again")
    });
    until("the file held back synced", || {
        sync_with(&b, &addr, 64, &[]).status.success() && b.join("during.txt").exists()
    });
    assert_eq!(watcher.stderr().lines().count(), 2, "{}", watcher.stderr());
}
