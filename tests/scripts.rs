//! The scripts behind `make demo`, `make demo-raft` and `make run-cluster`
//! find the binaries where cargo put them, `CARGO_TARGET_DIR` included;
//! `make demo-secure` runs its secure cluster to the end.

// Test code: a failed unwrap is a failed test, with its location.
#![allow(clippy::unwrap_used)]

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use common::{bin, free_ports, run_ok};

const BINARIES: [&str; 4] = [
    "surfstore-server",
    "surfstore-raft-server",
    "surfstore-client",
    "surfstore-ctl",
];

/// Fills `target/debug` with wrappers that record their name in `calls`
/// and run the real binary, so the test sees which binaries a script ran.
fn wrapped_target_dir(target: &Path, calls: &Path) {
    let debug = target.join("debug");
    std::fs::create_dir_all(&debug).unwrap();
    for name in BINARIES {
        let wrapper = debug.join(name);
        let script = format!(
            "#!/bin/sh\necho {name} >> '{}'\nexec '{}' \"$@\"\n",
            calls.display(),
            bin(name).display()
        );
        std::fs::write(&wrapper, script).unwrap();
        std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
}

#[test]
fn make_demo_runs_the_binaries_of_cargo_target_dir() {
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("elsewhere");
    let calls = dir.path().join("calls");
    wrapped_target_dir(&target, &calls);
    let port = free_ports(1)[0].to_string();
    let stdout = run_ok(
        Command::new("bash")
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/demo.sh"))
            .env("CARGO_TARGET_DIR", &target)
            .env("DEMO_PORT", &port)
            .env_remove("BIN"),
    );
    assert!(stdout.contains("bob has exactly alice's files"), "{stdout}");
    let ran = std::fs::read_to_string(&calls).unwrap_or_default();
    assert!(ran.contains("surfstore-server"), "ran: {ran:?}");
    assert!(ran.contains("surfstore-client"), "ran: {ran:?}");
}

#[test]
fn a_target_dir_without_a_build_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new("bash")
        .arg("-c")
        .arg(". scripts/lib.sh")
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("CARGO_TARGET_DIR", dir.path().join("empty"))
        .env_remove("BIN")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("run cargo build --bins"), "{stderr}");
}

#[test]
fn make_demo_secure_syncs_and_refuses_a_users_crash() {
    // The demo listens on DEMO_PORT and the three ports after it.
    let base = (0..100)
        .map(|_| free_ports(1)[0])
        .find(|&port| {
            (1..4).all(|i| {
                port.checked_add(i)
                    .is_some_and(|p| std::net::TcpListener::bind(("127.0.0.1", p)).is_ok())
            })
        })
        .unwrap();
    let out = Command::new("bash")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/demo-secure.sh"))
        .env("BIN", bin("surfstore-ctl").parent().unwrap())
        .env("DEMO_PORT", base.to_string())
        .env_remove("SURFSTORE_TOKEN")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}{stderr}");
    assert!(stdout.contains("bob has exactly alice's files"), "{stdout}");
    assert!(stderr.contains("permission denied"), "{stderr}");
    assert_eq!(
        stdout.matches("refused, as it should be").count(),
        2,
        "{stdout}"
    );
}
