//! `surfstore-ctl` from the outside (SPEC §7): its command line, its error
//! lines, and operating a real cluster.

// Test code: a failed unwrap is a failed test, with its location.
#![allow(clippy::unwrap_used)]

mod common;

use std::net::TcpListener;
use std::time::Duration;

use common::{Cluster, start_server};
use common::{MANUAL_HEARTBEATS, bin, file_meta, free_ports, run_with_timeout, start_cluster};

/// Generous bound on one ctl run: its own deadlines are 3 s (10 s for a
/// heartbeat), so hitting this means the tool hung.
const RUN_LIMIT: Duration = Duration::from_secs(30);

/// Runs `surfstore-ctl args`; returns (exit code, stdout, stderr, seconds).
fn ctl(args: &[&str]) -> (Option<i32>, String, String, f64) {
    let (out, took) = run_with_timeout(&bin("surfstore-ctl"), args, RUN_LIMIT);
    (
        out.status.code(),
        String::from_utf8(out.stdout).expect("utf-8 stdout"),
        String::from_utf8(out.stderr).expect("utf-8 stderr"),
        took.as_secs_f64(),
    )
}

/// Runs `surfstore-ctl args`, asserts success, and returns stdout.
fn ctl_ok(args: &[&str]) -> String {
    let (code, stdout, stderr, _) = ctl(args);
    assert_eq!(code, Some(0), "{args:?}: {stderr}");
    stdout
}

/// A port nothing listens on (refused connections).
fn closed_port() -> u16 {
    free_ports(1)[0]
}

#[test]
fn bad_arguments_exit_64_with_usage() {
    for args in [
        &[][..],
        &["bogus"][..],
        &["set-leader"][..],
        &["set-leader", "not-an-address"][..],
        &["restore", "localhost:99999"][..],
        &["crash", "localhost:1", "localhost:2"][..],
        &["heartbeat", "--nope", "localhost:1"][..],
        &["status"][..],
        &["status", "localhost:1"][..],
    ] {
        let (code, _, stderr, _) = ctl(args);
        assert_eq!(code, Some(64), "{args:?}");
        assert!(!stderr.is_empty(), "{args:?} printed no usage");
    }
}

#[test]
fn status_with_a_bad_config_exits_64_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.json");
    let malformed = dir.path().join("malformed.json");
    std::fs::write(&malformed, "{\"MetaStoreAddrs\": [").unwrap();
    for path in [missing, malformed] {
        let path = path.to_str().unwrap();
        let (code, stdout, stderr, _) = ctl(&["status", "-f", path]);
        assert_eq!(code, Some(64), "{path}");
        assert!(stdout.is_empty(), "{path}: {stdout}");
        assert_eq!(stderr.lines().count(), 1, "{path}: {stderr}");
        assert!(stderr.contains(path), "{stderr}");
    }
}

#[test]
fn a_failing_rpc_exits_non_zero_with_one_line() {
    // Refused connection.
    let dead = format!("127.0.0.1:{}", closed_port());
    // A server without the RaftSurfstore service (UNIMPLEMENTED).
    let plain = start_server("both", &[]);
    for addr in [&dead, &plain.addr] {
        for action in ["set-leader", "heartbeat", "crash", "restore"] {
            let (code, stdout, stderr, took) = ctl(&[action, addr]);
            assert_eq!(code, Some(1), "{action} {addr}: {stderr}");
            assert!(stdout.is_empty(), "{action} {addr}: {stdout}");
            assert_eq!(stderr.lines().count(), 1, "{action} {addr}: {stderr}");
            assert!(stderr.contains(addr.as_str()), "{stderr}");
            assert!(took < 5.0, "{action} {addr} took {took:.1}s");
        }
    }
    let (_, _, stderr, _) = ctl(&["crash", &plain.addr]);
    assert_eq!(
        stderr,
        format!(
            "surfstore-ctl: {} is not a Raft server (it has no Crash); \
             surfstore-ctl operates surfstore-raft-server\n",
            plain.addr
        )
    );
    let (_, _, stderr, _) = ctl(&["set-leader", &dead]);
    assert_eq!(
        stderr,
        format!(
            "surfstore-ctl: {dead}: SetLeader failed: connection refused; \
             is surfstore-raft-server running on {dead}?\n"
        )
    );
}

/// The rows of a `status` table, split on whitespace, header excluded.
fn rows(table: &str) -> Vec<Vec<String>> {
    let mut lines = table.lines();
    let header: Vec<&str> = lines.next().expect("a header").split_whitespace().collect();
    assert_eq!(
        header,
        ["ID", "ADDRESS", "STATE", "LEADER", "TERM", "LOG", "FILES"]
    );
    lines
        .map(|l| l.split_whitespace().map(String::from).collect())
        .collect()
}

#[test]
fn status_shows_unreachable_servers_queried_concurrently() {
    // Two "servers" that accept connections (the kernel's backlog does) but
    // never answer: only the deadline ends those queries. Run one after the
    // other, they would take twice the deadline.
    let silent: Vec<TcpListener> = (0..2)
        .map(|_| TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    let mut addrs: Vec<String> = silent
        .iter()
        .map(|l| l.local_addr().unwrap().to_string())
        .collect();
    addrs.push(format!("127.0.0.1:{}", closed_port()));
    let dir = tempfile::tempdir().unwrap();
    let write_config = |addrs: &[String]| {
        let config = dir.path().join("config.json");
        let json = serde_json::json!({"MetaStoreAddrs": addrs, "BlockStoreAddrs": ["127.0.0.1:1"]});
        std::fs::write(&config, json.to_string()).unwrap();
        config.to_str().unwrap().to_string()
    };

    // None answers: one line, no table, exit 1.
    let config = write_config(&addrs);
    let (code, stdout, stderr, took) = ctl(&["status", "-f", &config]);
    assert_eq!(code, Some(1), "{stderr}");
    assert_eq!(stdout, "");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.starts_with(&format!(
            "surfstore-ctl: none of the 3 servers of {config} answered; \
             is surfstore-raft-server running? (first: {}: ",
            addrs[0]
        )),
        "{stderr}"
    );
    assert!(
        took < 5.5,
        "status took {took:.1}s: servers not queried concurrently"
    );

    // One answers: a table, each unreachable server's reason on stderr.
    let rt = common::runtime();
    let cluster = rt.block_on(start_cluster(1, &[]));
    addrs.insert(0, cluster.addrs[0].clone());
    let config = write_config(&addrs);
    let (code, stdout, stderr, took) = ctl(&["status", "-f", &config]);
    assert_eq!(code, Some(0), "{stderr}");
    let addrs = &addrs[1..];
    assert!(
        took < 5.5,
        "status took {took:.1}s: servers not queried concurrently"
    );
    let rows = rows(&stdout);
    assert_eq!(rows.len(), 4, "{stdout}");
    assert_eq!(rows[0][2], "up", "{stdout}");
    for (id, (row, addr)) in rows[1..].iter().zip(addrs).enumerate() {
        let id = (id + 1).to_string();
        let expected = [id.as_str(), addr, "unreachable", "-", "-", "-", "-"];
        assert_eq!(row, &expected, "{stdout}");
        assert!(
            stderr.contains(addr.as_str()),
            "no reason for {addr}: {stderr}"
        );
    }
}

/// The `status` row of server `i`, as (state, leader, term, log, files).
fn status_row(cluster: &Cluster, i: usize) -> [String; 5] {
    let stdout = ctl_ok(&["status", "-f", cluster.config.to_str().unwrap()]);
    let rows = rows(&stdout);
    assert_eq!(rows.len(), cluster.addrs.len(), "{stdout}");
    let row = &rows[i];
    assert_eq!(row[0], i.to_string());
    assert_eq!(row[1], cluster.addrs[i]);
    [&row[2], &row[3], &row[4], &row[5], &row[6]].map(|s| s.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operates_a_cluster() {
    let cluster = start_cluster(3, MANUAL_HEARTBEATS).await;
    let [a0, a1, a2] = [0, 1, 2].map(|i| cluster.addrs[i].as_str());

    assert_eq!(ctl_ok(&["set-leader", a0]), format!("{a0}: leader set\n"));
    assert_eq!(
        ctl_ok(&["heartbeat", a0]),
        format!("{a0}: heartbeat: majority acknowledged\n")
    );
    // A follower sends no heartbeat: the operator is told who leads.
    let (code, stdout, stderr, _) = ctl(&["heartbeat", a1]);
    assert_eq!(code, Some(1));
    assert_eq!(stdout, "");
    assert_eq!(
        stderr,
        format!("surfstore-ctl: {a1}: not the leader; leader is {a0}\n")
    );
    let state = cluster.state(0).await;
    assert!(state.is_leader);
    assert_eq!(state.term, 1);

    assert_eq!(cluster.update(0, file_meta("f", 1, &[])).await.unwrap(), 1);
    ctl_ok(&["heartbeat", a0]);
    assert_eq!(status_row(&cluster, 0), ["up", "yes", "1", "1", "1"]);
    assert_eq!(status_row(&cluster, 1), ["up", "no", "1", "1", "1"]);

    assert_eq!(ctl_ok(&["crash", a2]), format!("{a2}: crashed\n"));
    assert!(cluster.is_crashed(2).await);
    assert_eq!(status_row(&cluster, 2), ["crashed", "no", "1", "1", "1"]);
    // A crashed server's error reaches the operator.
    let (code, _, stderr, _) = ctl(&["heartbeat", a2]);
    assert_eq!(code, Some(1));
    assert!(stderr.contains("Server is crashed."), "{stderr}");

    // Leader alone: the round is not acknowledged by a majority.
    ctl_ok(&["crash", a1]);
    assert_eq!(
        ctl_ok(&["heartbeat", a0]),
        format!("{a0}: heartbeat: no majority\n")
    );

    // A crashed leader's leadership is stale once another server leads.
    ctl_ok(&["crash", a0]);
    ctl_ok(&["restore", a1]);
    assert_eq!(ctl_ok(&["set-leader", a1]), format!("{a1}: leader set\n"));
    assert_eq!(status_row(&cluster, 0), ["crashed", "stale", "1", "1", "1"]);
    ctl_ok(&["restore", a0]);
    ctl_ok(&["set-leader", a0]);
    ctl_ok(&["heartbeat", a0]);

    assert_eq!(ctl_ok(&["restore", a2]), format!("{a2}: restored\n"));
    assert!(!cluster.is_crashed(2).await);
    assert_eq!(status_row(&cluster, 2), ["up", "no", "1", "1", "1"]);
}
