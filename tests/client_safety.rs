//! `surfstore-client` keeps the user's data and its own promises when
//! things go wrong around it: folders deleted or renamed elsewhere
//! (deletions that race to remove the same emptied folders).

mod common;

use std::fs;

use common::{Server, counts, start_server, sync, sync_ok, tree, write};

/// `surfstore-server -s both`, killed on drop.
fn server() -> Server {
    start_server("both", &[])
}

/// A folder tree in which many deletions empty the same folders at once:
/// `gone/x/y.txt` and `gone/z.txt` of the issue, and siblings and nested
/// folders enough that the client's concurrent deletions meet in them.
fn deep_tree(dir: &std::path::Path, top: &str) {
    write(dir, &format!("{top}/x/y.txt"), "y");
    write(dir, &format!("{top}/z.txt"), "z");
    for i in 0..24 {
        write(dir, &format!("{top}/s{i}.txt"), format!("sibling {i}"));
        write(dir, &format!("{top}/n{i}/a/b.txt"), format!("nested {i}"));
        write(dir, &format!("{top}/n{i}/c.txt"), format!("beside {i}"));
    }
}

#[test]
fn deleting_or_renaming_a_folder_with_subfolders_syncs_to_the_other_client() {
    let server = server();
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (a, b, addr) = (a.path(), b.path(), server.addr.as_str());
    deep_tree(a, "gone");
    deep_tree(a, "old");
    write(a, "keep.txt", "stays");
    sync_ok(a, addr, 1024);
    sync_ok(b, addr, 1024);
    assert_eq!(tree(b), tree(a));

    fs::remove_dir_all(a.join("gone")).unwrap();
    fs::rename(a.join("old"), a.join("new")).unwrap();
    sync_ok(a, addr, 1024);
    let index_before = fs::read(b.join("index.txt")).unwrap();
    let out = sync(b, addr, 1024);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert_ne!(fs::read(b.join("index.txt")).unwrap(), index_before);
    assert_eq!(tree(b), tree(a));
    assert!(!b.join("gone").exists());
    assert!(!b.join("old").exists());
    assert_eq!(counts(&sync_ok(b, addr, 1024)), [0, 0, 0, 0]);
}
