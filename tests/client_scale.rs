//! `surfstore-client` at scale and under interruption: a 1 GiB file in
//! 1 MiB blocks, and runs that die (SIGKILL), are stopped (Ctrl-C) or lose
//! the BlockStore in the middle of a download, after which the next run
//! must finish the job, fetching only what had not arrived.

// Test code: a failed unwrap is a failed test, with its location.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::{HashMap, HashSet};
use std::fs::{self, File};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{
    Proc, bin, counts, index_text, lacks_batched_calls, pseudo_random, runtime, serve,
    start_server, summary, sync_ok, sync_with, tree, write,
};
use surfstore::hash::hash_block;
use surfstore::proto::{Block, BlockHash, BlockHashes, Blocks, Success, block_store_server};
use tonic::{Request, Response, Status};

const MIB: usize = 1 << 20;

/// Whether two files hold the same bytes, compared a few MiB at a time.
fn same_contents(a: &Path, b: &Path) -> bool {
    let (mut a, mut b) = (File::open(a).unwrap(), File::open(b).unwrap());
    if a.metadata().unwrap().len() != b.metadata().unwrap().len() {
        return false;
    }
    let (mut x, mut y) = (vec![0; 8 * MIB], vec![0; 8 * MIB]);
    loop {
        let n = a.read(&mut x).unwrap();
        if n == 0 {
            return true;
        }
        b.read_exact(&mut y[..n]).unwrap();
        if x[..n] != y[..n] {
            return false;
        }
    }
}

/// Writes `data` at `offset` of the file at `path`.
fn write_at(path: &Path, offset: u64, data: &[u8]) {
    let mut file = File::options().write(true).open(path).unwrap();
    file.seek(SeekFrom::Start(offset)).unwrap();
    file.write_all(data).unwrap();
}

#[test]
fn a_1_gib_sparse_file_syncs_in_1_mib_blocks() {
    let server = start_server("both", &[]);
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (a, b, addr) = (a.path(), b.path(), server.addr.as_str());
    let name = "images/vm/disk.img";
    write(a, name, "");
    let image = a.join(name);
    // Mostly holes (zero blocks), with 32 distinct blocks spread over it.
    File::options()
        .write(true)
        .open(&image)
        .unwrap()
        .set_len(1 << 30)
        .unwrap();
    for i in 0..32u64 {
        write_at(&image, i * 32 * MIB as u64, &pseudo_random(MIB, 2 * i + 1));
    }

    let started = Instant::now();
    let up = summary(&sync_ok(a, addr, MIB));
    let upload_time = started.elapsed();
    assert_eq!((up.uploaded, up.on_server), (1, 0), "{up:?}");
    // 32 distinct blocks and one zero block, each sent once.
    assert_eq!(up.sent, "33.0 MiB");
    let index = index_text(a);
    let line = index.lines().find(|l| l.starts_with(name)).unwrap();
    assert_eq!(line.split_whitespace().count(), 1024, "{line}");

    let started = Instant::now();
    let down = summary(&sync_ok(b, addr, MIB));
    let download_time = started.elapsed();
    assert_eq!(down.downloaded, 1, "{down:?}");
    // Repeated zero blocks are copied from what was already written.
    assert_eq!(down.received, "33.0 MiB");
    assert_eq!(index_text(a), index_text(b));

    // One new block in a hole: one block each way.
    write_at(&image, 500 * MIB as u64, &pseudo_random(MIB, 99));
    let up = summary(&sync_ok(a, addr, MIB));
    assert_eq!(
        (up.uploaded, up.sent.as_str(), up.on_server),
        (1, "1.0 MiB", 33)
    );
    let down = summary(&sync_ok(b, addr, MIB));
    assert_eq!((down.downloaded, down.received.as_str()), (1, "1.0 MiB"));
    assert!(same_contents(&image, &b.join(name)));
    assert_eq!(index_text(a), index_text(b));
    eprintln!("1 GiB: upload {upload_time:?}, download {download_time:?}");
}

/// A BlockStore kept in this process that can make chosen blocks hang (a
/// slow server) or fail as if the connection dropped.
#[derive(Clone, Default)]
struct FlakyBlocks {
    blocks: Arc<Mutex<HashMap<String, Bytes>>>,
    /// GetBlock of these waits until they are taken out.
    hang: Arc<Mutex<HashSet<String>>>,
    /// GetBlock of these fails with UNAVAILABLE.
    fail: Arc<Mutex<HashSet<String>>>,
    /// GetBlock calls answered with data.
    served: Arc<AtomicUsize>,
}

#[tonic::async_trait]
impl block_store_server::BlockStore for FlakyBlocks {
    crate::lacks_gc_calls!();
    async fn get_block(&self, r: Request<BlockHash>) -> Result<Response<Block>, Status> {
        let hash = r.into_inner().hash;
        while self.hang.lock().unwrap().contains(&hash) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        if self.fail.lock().unwrap().contains(&hash) {
            return Err(Status::unavailable("connection reset by peer"));
        }
        let data = self.blocks.lock().unwrap().get(&hash).cloned();
        let data = data.ok_or_else(|| Status::not_found("no such block"))?;
        self.served.fetch_add(1, Ordering::SeqCst);
        Ok(Response::new(Block {
            block_size: data.len() as i32,
            block_data: data,
        }))
    }
    async fn put_block(&self, r: Request<Block>) -> Result<Response<Success>, Status> {
        let data = r.into_inner().block_data;
        self.blocks.lock().unwrap().insert(hash_block(&data), data);
        Ok(Response::new(Success { flag: true }))
    }
    async fn has_blocks(&self, r: Request<BlockHashes>) -> Result<Response<BlockHashes>, Status> {
        let blocks = self.blocks.lock().unwrap();
        let hashes = r.into_inner().hashes;
        Ok(Response::new(BlockHashes {
            hashes: hashes
                .into_iter()
                .filter(|h| blocks.contains_key(h))
                .collect(),
        }))
    }
    async fn put_blocks(&self, _: Request<Blocks>) -> Result<Response<Success>, Status> {
        lacks_batched_calls()
    }
    async fn get_blocks(&self, _: Request<BlockHashes>) -> Result<Response<Blocks>, Status> {
        lacks_batched_calls()
    }
}

const BLOCK: usize = 64 * 1024;

/// Two base directories synced through a real MetaStore and a
/// [`FlakyBlocks`]; B holds version 1 of everything, the server version 2
/// of `big/data.bin` (32 blocks) and of a few small files.
struct Interrupted {
    _rt: tokio::runtime::Runtime,
    _meta: common::Server,
    meta: String,
    blocks: FlakyBlocks,
    a: tempfile::TempDir,
    b: tempfile::TempDir,
    big_v1: Vec<u8>,
    big_v2: Vec<u8>,
    /// B's index.txt before the interrupted run.
    index_before: String,
}

fn interrupted_setup() -> Interrupted {
    let rt = runtime();
    let blocks = FlakyBlocks::default();
    let block_addr = serve(
        &rt,
        tonic::transport::Server::builder()
            .add_service(block_store_server::BlockStoreServer::new(blocks.clone())),
    );
    let meta_server = start_server("meta", &[&block_addr]);
    let meta = meta_server.addr.clone();
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let big_v1 = pseudo_random(32 * BLOCK, 1);
    let big_v2 = pseudo_random(32 * BLOCK, 2);
    write(a.path(), "top.txt", "top v1");
    write(a.path(), "docs/a.txt", "a v1");
    write(a.path(), "docs/deep/b.txt", "b v1");
    write(a.path(), "big/data.bin", &big_v1);
    sync_ok(a.path(), &meta, BLOCK);
    assert_eq!(counts(&sync_ok(b.path(), &meta, BLOCK)), [0, 4, 0, 0]);

    write(a.path(), "big/data.bin", &big_v2);
    write(a.path(), "docs/a.txt", "a v2");
    write(a.path(), "new/c.txt", "c v1");
    fs::remove_file(a.path().join("top.txt")).unwrap();
    assert_eq!(counts(&sync_ok(a.path(), &meta, BLOCK)), [3, 0, 1, 0]);
    let index_before = index_text(b.path());
    Interrupted {
        _rt: rt,
        _meta: meta_server,
        meta,
        blocks,
        a,
        b,
        big_v1,
        big_v2,
        index_before,
    }
}

impl Interrupted {
    /// The hashes of version 2 of the big file from block `from` on.
    fn big_v2_blocks_from(&self, from: usize) -> HashSet<String> {
        self.big_v2[from * BLOCK..]
            .chunks(BLOCK)
            .map(hash_block)
            .collect()
    }

    /// Every file of B is either its version 1 or its version 2, and each
    /// is on disk either as B's index records it or as the server now holds
    /// it (which the next run adopts without a transfer).
    fn assert_old_or_new(&self) {
        let b = self.b.path();
        let big = fs::read(b.join("big/data.bin")).unwrap();
        assert!(big == self.big_v1 || big == self.big_v2, "big file is torn");
        let a = fs::read(b.join("docs/a.txt")).unwrap();
        assert!(a == b"a v1" || a == b"a v2", "{a:?}");
        assert_eq!(fs::read(b.join("docs/deep/b.txt")).unwrap(), b"b v1");
        let recorded = parse_index(&index_text(b));
        let latest = parse_index(&index_text(self.a.path()));
        for (name, server) in &latest {
            let data = fs::read(b.join(name)).ok();
            let on_disk = data.map(|d| d.chunks(BLOCK).map(hash_block).collect::<Vec<_>>());
            let in_index = recorded.get(name).cloned().flatten();
            assert!(
                on_disk == in_index || on_disk == *server,
                "{name}: on disk {on_disk:?}, index {in_index:?}, server {server:?}"
            );
        }
    }

    /// Lets every block through and checks that one more run completes
    /// the sync: B ends exactly like A, index included, with no temporary
    /// file left behind.
    fn assert_next_run_completes(&self) {
        self.blocks.hang.lock().unwrap().clear();
        self.blocks.fail.lock().unwrap().clear();
        sync_ok(self.b.path(), &self.meta, BLOCK);
        assert_eq!(tree(self.b.path()), tree(self.a.path()));
        assert_eq!(index_text(self.b.path()), index_text(self.a.path()));
        assert_eq!(counts(&sync_ok(self.b.path(), &self.meta, BLOCK)), [0; 4]);
    }
}

/// index.txt as name → block hashes (`None` for a deleted file).
fn parse_index(text: &str) -> HashMap<String, Option<Vec<String>>> {
    text.lines()
        .map(|line| {
            let mut fields = line.splitn(3, ',');
            let name = fields.next().unwrap().to_string();
            let hashes: Vec<String> = fields
                .nth(1)
                .unwrap()
                .split_whitespace()
                .map(String::from)
                .collect();
            let state = (hashes != ["0"]).then_some(hashes);
            (name, state)
        })
        .collect()
}

/// Names of the client's temporary files and partial downloads below
/// `dir`.
fn temp_files(dir: &Path) -> Vec<String> {
    tree(dir)
        .into_keys()
        .filter(|name| name.contains(".surfstore-tmp-") || name.contains(".surfstore-partial-"))
        .collect()
}

/// Names of the partial downloads below `dir`.
fn partial_downloads(dir: &Path) -> Vec<String> {
    tree(dir)
        .into_keys()
        .filter(|name| name.contains(".surfstore-partial-"))
        .collect()
}

impl Interrupted {
    /// Starts B's client with the big file's blocks from the 5th on held
    /// back, and returns once the small changes are on disk and the big
    /// download is stuck mid-file. `exited` tells whether the client has
    /// ended (it must not have).
    fn stuck_mid_download(&self, exited: impl FnMut() -> bool) {
        self.stuck_at_block(4, exited);
    }

    /// [`Self::stuck_mid_download`] with the big file's blocks from block
    /// `from` on held back.
    fn stuck_at_block(&self, from: usize, mut exited: impl FnMut() -> bool) {
        *self.blocks.hang.lock().unwrap() = self.big_v2_blocks_from(from);
        self.blocks.served.store(0, Ordering::SeqCst);
        let b = self.b.path();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let small_done = fs::read(b.join("docs/a.txt")).unwrap() == b"a v2"
                && b.join("new/c.txt").exists()
                && !b.join("top.txt").exists();
            if small_done
                && self.blocks.served.load(Ordering::SeqCst) >= from
                && !temp_files(&b.join("big")).is_empty()
            {
                return;
            }
            assert!(!exited(), "the client finished on its own");
            assert!(Instant::now() < deadline, "the download never got stuck");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn client_args(&self) -> [String; 3] {
        [
            self.meta.clone(),
            self.b.path().to_str().unwrap().to_string(),
            BLOCK.to_string(),
        ]
    }
}

#[test]
fn a_client_killed_mid_download_leaves_old_or_new_files_and_the_next_run_completes() {
    let setup = interrupted_setup();
    let b = setup.b.path();
    let args = setup.client_args();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut client = Proc::spawn(&bin("surfstore-client"), &args);
    setup.stuck_mid_download(|| client.has_exited());
    client.kill();

    assert_eq!(fs::read(b.join("big/data.bin")).unwrap(), setup.big_v1);
    // The index is written at the end of a run: still the previous one.
    assert_eq!(index_text(b), setup.index_before);
    setup.assert_old_or_new();
    setup.assert_next_run_completes();
}

#[test]
fn a_blockstore_dropping_out_mid_download_stops_the_run_consistently() {
    let setup = interrupted_setup();
    *setup.blocks.fail.lock().unwrap() = setup.big_v2_blocks_from(20);
    // The failures never pass: no need to retry them for the default minute.
    let out = sync_with(setup.b.path(), &setup.meta, BLOCK, &["--retry-for", "1"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("cannot reach the BlockStore"), "{stderr}");
    assert_eq!(
        fs::read(setup.b.path().join("big/data.bin")).unwrap(),
        setup.big_v1
    );
    // What arrived stays, as a partial download the next run resumes.
    assert_eq!(
        temp_files(setup.b.path()),
        partial_downloads(setup.b.path())
    );
    assert!(partial_downloads(setup.b.path()).len() <= 1);
    setup.assert_old_or_new();
    setup.assert_next_run_completes();
}

#[test]
fn a_local_edit_during_a_download_is_never_overwritten() {
    let setup = interrupted_setup();
    let b = setup.b.path();
    let client = Command::new(bin("surfstore-client"))
        .args(setup.client_args())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let client = Arc::new(Mutex::new(client));
    setup.stuck_mid_download(|| {
        let mut client = client.lock().unwrap();
        !matches!(client.try_wait(), Ok(None))
    });
    write(b, "big/data.bin", "edited while the download ran");
    setup.blocks.hang.lock().unwrap().clear();
    let client = Arc::into_inner(client).unwrap().into_inner().unwrap();
    let out = client.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("changed while it was being synced"),
        "{stderr}"
    );
    assert_eq!(
        fs::read(b.join("big/data.bin")).unwrap(),
        b"edited while the download ran"
    );
    assert!(temp_files(b).is_empty());
    // Still recorded as version 1: the edit is a conflict the server wins
    // next run; with --keep-conflicts the edit survives as a copy.
    let out = common::sync_with(b, &setup.meta, BLOCK, &["--keep-conflicts"]);
    let s = summary(&String::from_utf8_lossy(&out.stdout));
    assert_eq!((s.downloaded, s.conflicts, s.kept), (1, 1, 1), "{s:?}");
    assert_eq!(fs::read(b.join("big/data.bin")).unwrap(), setup.big_v2);
    let copies: Vec<Vec<u8>> = tree(b)
        .into_iter()
        .filter(|(name, _)| name.starts_with("big/data.bin.conflict-"))
        .map(|(_, data)| data)
        .collect();
    assert_eq!(copies, [b"edited while the download ran".to_vec()]);
}

/// Waits until the one download in progress below `dir` (a temporary file
/// or partial download) holds at least `len` bytes, and returns its path.
fn download_of_at_least(dir: &Path, len: u64) -> std::path::PathBuf {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let [name] = temp_files(dir).as_slice() {
            let path = dir.join(name);
            if fs::metadata(&path).map_or(0, |m| m.len()) >= len {
                return path;
            }
        }
        assert!(
            Instant::now() < deadline,
            "no download in progress of {len} bytes"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[cfg(unix)]
#[test]
fn ctrl_c_mid_download_and_the_rerun_fetches_only_the_missing_blocks() {
    let setup = interrupted_setup();
    let b = setup.b.path();
    let mut client = common::command(&bin("surfstore-client"))
        .args(setup.client_args())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Blocks 0-15 (the first call's worth) arrive; the rest hang.
    setup.stuck_at_block(16, || !matches!(client.try_wait(), Ok(None)));
    let partial = download_of_at_least(&b.join("big"), 16 * BLOCK as u64);
    let interrupted = Command::new("kill")
        .args(["-INT", &client.id().to_string()])
        .status()
        .unwrap();
    assert!(interrupted.success());
    let deadline = Instant::now() + Duration::from_secs(10);
    while matches!(client.try_wait(), Ok(None)) {
        assert!(Instant::now() < deadline, "Ctrl-C did not stop the client");
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = client.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{stderr}");
    assert_eq!(stderr, "surfstore-client: interrupted; rerun to resume\n");
    assert_eq!(fs::read(b.join("big/data.bin")).unwrap(), setup.big_v1);
    assert_eq!(partial_downloads(b).len(), 1);
    assert_eq!(fs::metadata(&partial).unwrap().len(), 16 * BLOCK as u64);
    setup.assert_old_or_new();

    // The rerun keeps the 16 blocks that arrived and fetches the other 16.
    setup.blocks.hang.lock().unwrap().clear();
    setup.blocks.served.store(0, Ordering::SeqCst);
    let s = summary(&sync_ok(b, &setup.meta, BLOCK));
    assert_eq!(s.downloaded, 1, "{s:?}");
    assert_eq!(setup.blocks.served.load(Ordering::SeqCst), 16);
    assert_eq!(s.received, "1.0 MiB");
    assert_eq!(fs::read(b.join("big/data.bin")).unwrap(), setup.big_v2);
    // Nothing of the partial download is left, nor was it ever uploaded.
    assert_eq!(tree(b), tree(setup.a.path()));
    assert_eq!(index_text(b), index_text(setup.a.path()));
    assert_eq!(counts(&sync_ok(setup.a.path(), &setup.meta, BLOCK)), [0; 4]);
}

#[test]
fn a_partial_download_of_a_version_no_longer_wanted_is_removed() {
    for replaced in [true, false] {
        let setup = interrupted_setup();
        let (a, b) = (setup.a.path(), setup.b.path());
        *setup.blocks.fail.lock().unwrap() = setup.big_v2_blocks_from(20);
        // The failures never pass: no need to retry them for the default minute.
        let out = sync_with(b, &setup.meta, BLOCK, &["--retry-for", "1"]);
        assert_eq!(out.status.code(), Some(1));
        // The first call's worth of blocks (0-15) arrived.
        let partial = download_of_at_least(&b.join("big"), 16 * BLOCK as u64);
        setup.blocks.fail.lock().unwrap().clear();

        // The server moves on: a third version, or a deletion.
        if replaced {
            write(a, "big/data.bin", pseudo_random(32 * BLOCK, 3));
        } else {
            fs::remove_dir_all(a.join("big")).unwrap();
        }
        sync_ok(a, &setup.meta, BLOCK);
        sync_ok(b, &setup.meta, BLOCK);
        assert!(!partial.exists(), "replaced: {replaced}");
        // The folder goes with the file and the partial download.
        assert_eq!(b.join("big").exists(), replaced);
        assert_eq!(tree(b), tree(a), "replaced: {replaced}");
    }
}
