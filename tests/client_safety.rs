//! `surfstore-client` keeps the user's data and its own promises when
//! things go wrong around it: folders deleted or renamed elsewhere
//! (deletions that race to remove the same emptied folders), and local
//! edits that lose a conflict to the server (saved outside the base
//! directory, with a warning).

// Test code: a failed unwrap is a failed test, with its location.
#![allow(clippy::unwrap_used)]

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::sync::{Arc, Mutex};

use common::{Server, bin, counts, runtime, serve, start_server, sync, sync_ok, tree, write};
use surfstore::meta_store::FileMap;
use surfstore::proto::{BlockStoreAddr, FileInfoMap, FileMetaData, Version, meta_store_server};
use tonic::{Request, Response, Status};

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

/// Runs `surfstore-client [extra...] ADDR DIR 1024` with `XDG_STATE_HOME`
/// set to `state`.
fn sync_saving_in(dir: &Path, addr: &str, state: &Path, extra: &[&str]) -> Output {
    common::command(&bin("surfstore-client"))
        .env("XDG_STATE_HOME", state)
        .args(extra)
        .args([addr, dir.to_str().unwrap(), "1024"])
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

/// Every conflict copy below `state`, as (path relative to the conflicts
/// folder of base directory `base`, contents). Asserts that all copies are
/// in that one folder.
fn saved_copies(state: &Path, base: &Path) -> Vec<(String, Vec<u8>)> {
    let conflicts = state.join("surfstore/conflicts");
    if !conflicts.exists() {
        return Vec::new();
    }
    let folders: Vec<PathBuf> = fs::read_dir(&conflicts)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    let [folder] = folders.as_slice() else {
        panic!("expected one folder per base directory, got {folders:?}");
    };
    let base_name = base.canonicalize().unwrap();
    let base_name = base_name.file_name().unwrap().to_str().unwrap();
    let folder_name = folder.file_name().unwrap().to_str().unwrap();
    assert!(
        folder_name.starts_with(&format!("{base_name}-")),
        "{folder_name} is not named for {base_name}"
    );
    tree(folder)
        .into_iter()
        .map(|(name, data)| {
            let (original, stamp) = name.split_once(".conflict-").expect("a conflict copy");
            // YYYYMMDD-HHMMSS, then -N for a later copy within the second.
            let (date, rest) = stamp.split_at(15);
            assert_eq!(date.as_bytes()[8], b'-', "{name}");
            assert!(
                date.replace('-', "").bytes().all(|c| c.is_ascii_digit()),
                "{name}"
            );
            assert!(
                rest.is_empty() || rest[1..].parse::<u32>().is_ok(),
                "{name}"
            );
            (original.to_string(), data)
        })
        .collect()
}

/// Asserts the run succeeded and warned, on stderr, about `name` and the
/// path of its copy (which must exist).
fn assert_warned_about(out: &Output, name: &str) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{stderr}");
    let line = stderr
        .lines()
        .find(|line| line.contains(&format!("{name:?}")))
        .unwrap_or_else(|| panic!("no warning names {name}: {stderr}"));
    assert!(line.contains("WARN"), "{line}");
    let (_, copy) = line.split_once("saved as ").expect("the copy's path");
    assert!(Path::new(copy).is_file(), "{line}");
    copy.to_string()
}

#[test]
fn a_losing_edit_is_saved_outside_the_base_directory_with_a_warning_even_when_quiet() {
    let server = server();
    let state = tempfile::tempdir().unwrap();
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (a, b, addr, state) = (a.path(), b.path(), server.addr.as_str(), state.path());
    write(a, "notes.txt", "shared line\n");
    write(a, "d/e/report.txt", "shared report\n");
    sync_ok(a, addr, 1024);
    sync_ok(b, addr, 1024);

    write(a, "notes.txt", "shared line\nAlice's line\n");
    fs::remove_file(a.join("d/e/report.txt")).unwrap();
    sync_ok(a, addr, 1024);
    write(b, "notes.txt", "shared line\nBob's line\n");
    write(
        b,
        "d/e/report.txt",
        "Bob's edit of a report Alice deleted\n",
    );

    let out = sync_saving_in(b, addr, state, &["-q"]);
    assert!(out.stdout.is_empty(), "-q prints no summary");
    let notes = assert_warned_about(&out, "notes.txt");
    let report = assert_warned_about(&out, "d/e/report.txt");
    assert!(notes.starts_with(state.to_str().unwrap()), "{notes}");
    assert!(report.starts_with(state.to_str().unwrap()), "{report}");
    // The server won, Bob's versions are saved outside, and B's listing is
    // exactly A's.
    assert_eq!(
        fs::read(b.join("notes.txt")).unwrap(),
        b"shared line\nAlice's line\n"
    );
    assert!(!b.join("d").exists());
    assert_eq!(tree(b), tree(a));
    assert_eq!(
        saved_copies(state, b),
        [
            (
                "d/e/report.txt".to_string(),
                b"Bob's edit of a report Alice deleted\n".to_vec()
            ),
            (
                "notes.txt".to_string(),
                b"shared line\nBob's line\n".to_vec()
            ),
        ]
    );
    assert_eq!(counts(&sync_ok(b, addr, 1024)), [0, 0, 0, 0]);

    // The summary says where the copies went.
    write(a, "notes.txt", "Alice again\n");
    sync_ok(a, addr, 1024);
    write(b, "notes.txt", "Bob again\n");
    let out = sync_saving_in(b, addr, state, &[]);
    assert_warned_about(&out, "notes.txt");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("1 conflict (1 saved in "), "{stdout}");
    assert_eq!(saved_copies(state, b).len(), 3);

    // --keep-conflicts keeps the copy beside the file instead.
    write(a, "notes.txt", "Alice once more\n");
    sync_ok(a, addr, 1024);
    write(b, "notes.txt", "Bob once more\n");
    let out = sync_saving_in(b, addr, state, &["--keep-conflicts"]);
    let beside = assert_warned_about(&out, "notes.txt");
    assert!(beside.starts_with(b.to_str().unwrap()), "{beside}");
    assert_eq!(fs::read(beside).unwrap(), b"Bob once more\n");
    assert_eq!(saved_copies(state, b).len(), 3);
}

#[test]
fn conflict_folders_of_two_base_directories_never_mix() {
    let server = server();
    let state = tempfile::tempdir().unwrap();
    let parents = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    // Two base directories with the same name.
    let bases: Vec<PathBuf> = parents.iter().map(|p| p.path().join("same")).collect();
    let a = tempfile::tempdir().unwrap();
    let (a, addr, state) = (a.path(), server.addr.as_str(), state.path());
    write(a, "f", "base");
    sync_ok(a, addr, 1024);
    for base in &bases {
        fs::create_dir(base).unwrap();
        sync_ok(base, addr, 1024);
    }
    write(a, "f", "A wins");
    sync_ok(a, addr, 1024);
    for (i, base) in bases.iter().enumerate() {
        write(base, "f", format!("loser {i}"));
        assert_warned_about(&sync_saving_in(base, addr, state, &[]), "f");
    }
    let folders = fs::read_dir(state.join("surfstore/conflicts"))
        .unwrap()
        .count();
    assert_eq!(folders, 2);
}

#[test]
fn without_a_place_to_save_the_losing_edit_the_file_is_left_alone() {
    let server = server();
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (a, b, addr) = (a.path(), b.path(), server.addr.as_str());
    write(a, "f", "base");
    sync_ok(a, addr, 1024);
    sync_ok(b, addr, 1024);
    write(a, "f", "A wins");
    sync_ok(a, addr, 1024);
    write(b, "f", "B's edit");

    let out = common::command(&bin("surfstore-client"))
        .env_remove("XDG_STATE_HOME")
        .env_remove("HOME")
        .args([addr, b.to_str().unwrap(), "1024"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("nowhere to save"), "{stderr}");
    assert_eq!(fs::read(b.join("f")).unwrap(), b"B's edit");
}

/// A MetaStore whose next `GetFileInfoMap` answers with an old map once,
/// as if another client's update had landed just after the map was read.
#[derive(Clone, Default)]
struct LaggingMeta {
    map: Arc<Mutex<FileMap>>,
    stale_once: Arc<Mutex<Option<FileInfoMap>>>,
    block_addr: String,
}

#[tonic::async_trait]
impl meta_store_server::MetaStore for LaggingMeta {
    async fn get_file_info_map(&self, _: Request<()>) -> Result<Response<FileInfoMap>, Status> {
        let stale = self.stale_once.lock().unwrap().take();
        Ok(Response::new(
            stale.unwrap_or_else(|| self.map.lock().unwrap().to_proto()),
        ))
    }
    async fn update_file(&self, r: Request<FileMetaData>) -> Result<Response<Version>, Status> {
        let version = self.map.lock().unwrap().apply(r.into_inner());
        Ok(Response::new(Version { version }))
    }
    async fn get_block_store_addr(
        &self,
        _: Request<()>,
    ) -> Result<Response<BlockStoreAddr>, Status> {
        Ok(Response::new(BlockStoreAddr {
            addr: self.block_addr.clone(),
        }))
    }
}

#[test]
fn an_upload_the_server_rejects_saves_the_losing_edit() {
    let blocks = start_server("block", &[]);
    let rt = runtime();
    let meta = LaggingMeta {
        block_addr: blocks.addr.clone(),
        ..LaggingMeta::default()
    };
    let addr = serve(
        &rt,
        tonic::transport::Server::builder()
            .add_service(meta_store_server::MetaStoreServer::new(meta.clone())),
    );
    let state = tempfile::tempdir().unwrap();
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (a, b, addr, state) = (a.path(), b.path(), addr.as_str(), state.path());
    write(a, "notes.txt", "v1");
    sync_ok(a, addr, 1024);
    sync_ok(b, addr, 1024);
    let before = meta.map.lock().unwrap().to_proto();
    write(a, "notes.txt", "Alice's v2");
    sync_ok(a, addr, 1024);

    // B sees version 1, uploads its edit as version 2, is refused (-1),
    // and takes Alice's version.
    *meta.stale_once.lock().unwrap() = Some(before);
    write(b, "notes.txt", "Bob's v2");
    let out = sync_saving_in(b, addr, state, &["-q"]);
    assert_warned_about(&out, "notes.txt");
    assert!(meta.stale_once.lock().unwrap().is_none());
    assert_eq!(fs::read(b.join("notes.txt")).unwrap(), b"Alice's v2");
    assert_eq!(tree(b), tree(a));
    assert_eq!(
        saved_copies(state, b),
        [("notes.txt".to_string(), b"Bob's v2".to_vec())]
    );
}
