//! What `surfstore-client` tells its user: `--dry-run`'s plan, `-v`'s list of
//! files, the summary's counts, and each failed file reported once.

// Test code: a failed unwrap is a failed test, with its location.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;
use std::process::Output;

use common::{file_meta, meta_client, runtime, start_server, sync_ok, sync_with, synced_files};
use surfstore::proto::FileMetaData;

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn remote_map(addr: &str) -> BTreeMap<String, FileMetaData> {
    runtime().block_on(async {
        let map = meta_client(addr).get_file_info_map(()).await.unwrap();
        map.into_inner().file_info_map.into_iter().collect()
    })
}

/// A base directory `a` with every kind of change pending against the
/// server: `a` modified here, `b` deleted here, `c` modified remotely, `d`
/// new here, `e` deleted remotely but changed here (a conflict).
fn every_kind_of_change(addr: &str, a: &Path, b: &Path) {
    for name in ["a", "b", "c", "e"] {
        fs::write(a.join(name), format!("{name} v1")).unwrap();
    }
    sync_ok(a, addr, 4);
    sync_ok(b, addr, 4);
    fs::write(b.join("c"), "c v2 from b").unwrap();
    fs::remove_file(b.join("e")).unwrap();
    sync_ok(b, addr, 4);
    fs::write(a.join("a"), "a v2").unwrap();
    fs::remove_file(a.join("b")).unwrap();
    fs::write(a.join("d"), "d v1").unwrap();
    fs::write(a.join("e"), "e v2 here").unwrap();
}

fn ok(out: Output) -> String {
    assert!(out.status.success(), "{}", text(&out.stderr));
    text(&out.stdout)
}

#[test]
fn dry_run_prints_the_plan_and_changes_nothing_then_verbose_lists_each_file() {
    let server = start_server("both", &[]);
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (a, b) = (a.path(), b.path());
    every_kind_of_change(&server.addr, a, b);
    let files_before = synced_files(a);
    let remote_before = remote_map(&server.addr);

    let plan = ok(sync_with(a, &server.addr, 4, &["--dry-run"]));
    assert_eq!(
        plan.lines().collect::<Vec<_>>(),
        [
            "upload           a",
            "delete on server b",
            "download         c",
            "upload           d",
            "conflict         e: deleted on the server, changed here; the local version is saved",
            "dry run, nothing changed; a sync now would give: \
             2 uploaded, 1 downloaded, 2 deleted, 1 conflict",
        ]
    );
    assert_eq!(synced_files(a), files_before, "dry run changed the files");
    assert_eq!(
        remote_map(&server.addr),
        remote_before,
        "dry run changed the server"
    );

    let out = ok(sync_with(a, &server.addr, 4, &["-v"]));
    let mut lines: Vec<&str> = out.lines().collect();
    let summary = lines.pop().unwrap();
    lines.sort_unstable();
    assert_eq!(
        lines,
        [
            "deleted here      e (conflict: the server's version won)",
            "deleted on server b",
            "downloaded        c",
            "uploaded          a",
            "uploaded          d",
        ]
    );
    assert!(
        summary.contains(": 2 uploaded, 1 downloaded, 2 deleted, 1 conflict (1 saved in "),
        "{summary}"
    );
    // Nothing left to do: the plan is empty.
    let plan = ok(sync_with(a, &server.addr, 4, &["--dry-run"]));
    assert_eq!(
        plan,
        "dry run, nothing changed; a sync now would give: \
         0 uploaded, 0 downloaded, 0 deleted, 0 conflicts\n"
    );
}

#[test]
fn a_file_that_cannot_sync_is_reported_once() {
    let server = start_server("both", &[]);
    runtime().block_on(async {
        let mut meta = meta_client(&server.addr);
        for name in ["../escape", "/abs"] {
            meta.update_file(file_meta(name, 1, &[])).await.unwrap();
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let out = sync_with(dir.path(), &server.addr, 4, &[]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert_eq!(
        stderr.lines().collect::<Vec<_>>(),
        [
            "surfstore-client: \"../escape\" not synced: refusing the server's file name: \
             it has a `..` segment",
            "surfstore-client: \"/abs\" not synced: refusing the server's file name: \
             it is an absolute path (2 files not synced in all)",
        ],
        "{stderr}"
    );
    let summary = text(&out.stdout);
    assert!(summary.contains(", 0 conflicts, 2 failed; "), "{summary}");
}
