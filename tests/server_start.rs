//! What the servers say when they start: one line on stdout with what they
//! serve, the address they listen on (the real port with `-p 0`), the
//! BlockStore address they announce, and where their data is; `--advertise`
//! and the warning for an announcement only this machine can use.

// Test code: a failed unwrap is a failed test, with its location.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Stdio};

use common::{bin, meta_client, runtime};

/// A server started with piped output; killed on drop.
struct Started {
    child: Child,
    /// Its first line on stdout.
    line: String,
}

impl Started {
    fn new(program: &str, args: &[&str]) -> Self {
        let mut child = common::command(&bin(program))
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.as_mut().unwrap())
            .read_line(&mut line)
            .unwrap();
        Self { child, line }
    }

    /// The real address from the start line's `on ADDR;`.
    fn port(&self) -> u16 {
        let (_, rest) = self.line.split_once(" on ").unwrap();
        let (addr, _) = rest.split_once(';').unwrap();
        addr.rsplit_once(':').unwrap().1.parse().unwrap()
    }

    /// Everything on stderr so far, once the server is stopped, but the
    /// warning every server listening beyond loopback without TLS and
    /// tokens prints (`tests/security.rs` checks that one).
    fn stop(mut self) -> String {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
        let mut stderr = String::new();
        self.child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut stderr)
            .unwrap();
        stderr
            .lines()
            .filter(|line| !line.contains("beyond loopback, without TLS or tokens"))
            .map(|line| format!("{line}\n"))
            .collect()
    }
}

impl Drop for Started {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn announced(port: u16) -> String {
    runtime().block_on(async {
        let mut meta = meta_client(&format!("127.0.0.1:{port}"));
        meta.get_block_store_addr(())
            .await
            .unwrap()
            .into_inner()
            .addr
    })
}

#[test]
fn port_0_prints_the_real_port_and_announces_it() {
    let data = tempfile::tempdir().unwrap();
    let dir = data.path().to_str().unwrap();
    let server = Started::new(
        "surfstore-server",
        &["-s", "both", "-p", "0", "-l", "--data-dir", dir],
    );
    let port = server.port();
    assert_ne!(port, 0);
    assert_eq!(
        server.line.trim_end(),
        format!(
            "surfstore-server: serving MetaStore+BlockStore on 127.0.0.1:{port}; \
             clients are sent to the BlockStore at localhost:{port}; data in {dir}"
        )
    );
    assert_eq!(announced(port), format!("localhost:{port}"));
    assert_eq!(server.stop(), "", "nothing to warn about");
}

#[test]
fn advertise_sets_the_announced_address() {
    let server = Started::new(
        "surfstore-server",
        &["-s", "both", "-p", "0", "--advertise", "files.example:9000"],
    );
    let port = server.port();
    assert_eq!(
        server.line.trim_end(),
        format!(
            "surfstore-server: serving MetaStore+BlockStore on 0.0.0.0:{port}; \
             clients are sent to the BlockStore at files.example:9000; \
             data in memory only (no --data-dir)"
        )
    );
    assert_eq!(announced(port), "files.example:9000");
    assert_eq!(server.stop(), "");
}

#[test]
fn a_wide_listener_announces_a_routable_address_or_warns() {
    let server = Started::new("surfstore-server", &["-s", "both", "-p", "0"]);
    let port = server.port();
    let addr = announced(port);
    assert!(addr.ends_with(&format!(":{port}")), "{addr}");
    let stderr = server.stop();
    if addr.starts_with("localhost:") {
        // A machine without a network: nothing better to announce.
        assert!(
            stderr.contains("which only works on this machine"),
            "{stderr}"
        );
    } else {
        assert_eq!(stderr, "");
    }

    let server = Started::new(
        "surfstore-server",
        &["-s", "both", "-p", "0", "--advertise", "localhost:7"],
    );
    let stderr = server.stop();
    assert!(
        stderr.contains(
            "clients are sent to the BlockStore at localhost:7, which only works on this machine, \
             though the server listens on 0.0.0.0:"
        ),
        "{stderr}"
    );
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        !stderr.contains('\x1b'),
        "colour codes on a pipe: {stderr:?}"
    );
}

#[test]
fn a_raft_server_says_which_one_it_is() {
    let dir = tempfile::tempdir().unwrap();
    let port = common::free_ports(1)[0];
    let config = dir.path().join("config.json");
    std::fs::write(
        &config,
        format!(
            r#"{{"MetaStoreAddrs": ["127.0.0.1:{port}", "127.0.0.1:1"], "BlockStoreAddrs": ["localhost:8081"]}}"#
        ),
    )
    .unwrap();
    let server = Started::new(
        "surfstore-raft-server",
        &["-f", config.to_str().unwrap(), "-i", "0"],
    );
    assert_eq!(
        server.line.trim_end(),
        format!(
            "surfstore-raft-server: serving Raft MetaStore server 0 of 2 on 127.0.0.1:{port}; \
             clients are sent to the BlockStore at localhost:8081; data in memory only (no --data-dir)"
        )
    );
}

#[test]
fn advertise_with_the_wrong_service_is_a_usage_error() {
    for args in [
        &["-s", "meta", "--advertise", "a:1", "b:2"][..],
        &["-s", "block", "--advertise", "a:1"][..],
        &["-s", "both", "--advertise", "a:1", "b:2"][..],
        &["-s", "both", "--advertise", "no-port"][..],
    ] {
        let out = common::run(&bin("surfstore-server"), args);
        assert_eq!(out.status.code(), Some(64), "{args:?}");
    }
}
