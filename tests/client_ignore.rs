//! `.surfignore` from the outside (SPEC §9.5): ignored paths are neither
//! uploaded, nor deleted on the server, nor downloaded, and the rules file
//! itself syncs.

// Test code: a failed unwrap is a failed test, with its location.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::fs;

use common::{meta_client, runtime, start_server, sync_ok, sync_with, tree, write};

/// The server's live (not deleted) file names.
fn live_names(addr: &str) -> Vec<String> {
    runtime().block_on(async {
        let map = meta_client(addr).get_file_info_map(()).await.unwrap();
        let map: BTreeMap<_, _> = map.into_inner().file_info_map.into_iter().collect();
        map.into_iter()
            .filter(|(_, meta)| meta.block_hash_list != ["0"])
            .map(|(name, _)| name)
            .collect()
    })
}

const RULES: &str = "# scratch files\n*.tmp\nbuild/\n";

#[test]
fn ignored_paths_are_neither_uploaded_deleted_remotely_nor_downloaded() {
    let server = start_server("both", &[]);
    let addr = server.addr.as_str();
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let (a, b, plain) = (dirs[0].path(), dirs[1].path(), dirs[2].path());

    // A client without rules puts what the others will ignore.
    write(plain, "shared.tmp", "from the plain client");
    write(plain, "build/out.o", "object");
    sync_ok(plain, addr, 64);

    write(a, ".surfignore", RULES);
    write(a, "notes.txt", "notes");
    write(a, "local.tmp", "scratch");
    write(a, "build/local.o", "scratch");
    write(a, "src/build/deep.o", "scratch");
    sync_ok(a, addr, 64);
    assert_eq!(
        live_names(addr),
        [".surfignore", "build/out.o", "notes.txt", "shared.tmp"],
        "only .surfignore and notes.txt come from a"
    );
    assert!(
        !a.join("shared.tmp").exists() && !a.join("build/out.o").exists(),
        "ignored files were downloaded"
    );

    // B gets the rules with its first sync, and applies them from the next.
    sync_ok(b, addr, 64);
    assert_eq!(fs::read_to_string(b.join(".surfignore")).unwrap(), RULES);
    write(plain, "shared.tmp", "changed by the plain client");
    sync_ok(plain, addr, 64);
    sync_ok(b, addr, 64);
    assert_eq!(
        fs::read_to_string(b.join("shared.tmp")).unwrap(),
        "from the plain client",
        "a remote change to an ignored file was downloaded"
    );

    // Deleting an ignored file locally does not delete it on the server,
    // even one synced before the rule.
    fs::remove_file(b.join("shared.tmp")).unwrap();
    fs::remove_dir_all(b.join("build")).unwrap();
    sync_ok(b, addr, 64);
    assert!(live_names(addr).contains(&"shared.tmp".to_string()));
    assert!(live_names(addr).contains(&"build/out.o".to_string()));

    // The plain client still sees everything; a's ignored files stayed home.
    sync_ok(plain, addr, 64);
    let plain_tree = tree(plain);
    assert!(plain_tree.contains_key("notes.txt") && plain_tree.contains_key(".surfignore"));
    assert!(!plain_tree.contains_key("local.tmp") && !plain_tree.contains_key("build/local.o"));
}

#[test]
fn a_bad_rule_fails_the_run_before_anything_changes() {
    let server = start_server("both", &[]);
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), ".surfignore", "*.tmp\n{unclosed\n");
    write(dir.path(), "a.txt", "a");
    let out = sync_with(dir.path(), &server.addr, 64, &[]);
    assert_eq!(out.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let expected = format!(
        "surfstore-client: {}/.surfignore line 2: ",
        dir.path().display()
    );
    assert!(stderr.starts_with(&expected), "{stderr}");
    assert!(
        stderr.trim_end().ends_with("; fix or remove that rule"),
        "{stderr}"
    );
    assert!(live_names(&server.addr).is_empty());
    assert!(!dir.path().join("index.txt").exists());
}
