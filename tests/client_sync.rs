//! `surfstore-client` end to end (SPEC §8): two base directories, A and B,
//! syncing through real servers; in-process fake servers show what real ones
//! cannot (a corrupt BlockStore, a Raft cluster with a leader to find).

// Test code: a failed unwrap is a failed test, with its location.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashMap;
use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use common::{
    Server, bin, counts, index_text, lacks_batched_calls, pseudo_random, run, runtime, serve,
    start_server, sync, sync_ok, synced_files, tree, write,
};
use surfstore::block_store::{BlockStoreService, MemoryBlocks};
use surfstore::hash::hash_block;
use surfstore::meta_store::FileMap;
use surfstore::proto::block_store_client::BlockStoreClient;
use surfstore::proto::meta_store_client::MetaStoreClient;
use surfstore::proto::{
    AppendEntryInput, AppendEntryOutput, Block, BlockHash, BlockHashes, BlockStoreAddr, Blocks,
    CrashedState, FileInfoMap, FileMetaData, InstallSnapshotInput, InstallSnapshotOutput,
    RaftInternalState, RequestVoteInput, RequestVoteOutput, Success, Version, block_store_server,
    raft_surfstore_server,
};
use tonic::{Request, Response, Status};

/// A MetaStore and its BlockStore, killed on drop.
struct Deployment {
    meta: String,
    block: String,
    _servers: Vec<Server>,
}

/// `surfstore-server -s both`.
fn both() -> Deployment {
    let server = start_server("both", &[]);
    Deployment {
        meta: server.addr.clone(),
        block: server.addr.clone(),
        _servers: vec![server],
    }
}

/// `surfstore-server -s block` and `surfstore-server -s meta BLOCK_ADDR`.
fn split() -> Deployment {
    let block = start_server("block", &[]);
    let meta = start_server("meta", &[&block.addr]);
    Deployment {
        meta: meta.addr.clone(),
        block: block.addr.clone(),
        _servers: vec![block, meta],
    }
}

fn remote_map(addr: &str) -> HashMap<String, FileMetaData> {
    runtime().block_on(async {
        let mut client = MetaStoreClient::connect(format!("http://{addr}"))
            .await
            .unwrap();
        client
            .get_file_info_map(())
            .await
            .unwrap()
            .into_inner()
            .file_info_map
    })
}

fn update_file(addr: &str, name: &str, version: i32, hashes: Vec<String>) -> i32 {
    runtime().block_on(async {
        let mut client = MetaStoreClient::connect(format!("http://{addr}"))
            .await
            .unwrap();
        let meta = FileMetaData {
            filename: name.into(),
            version,
            block_hash_list: hashes,
        };
        client.update_file(meta).await.unwrap().into_inner().version
    })
}

fn put_block(addr: &str, data: &[u8]) {
    runtime().block_on(async {
        let mut client = BlockStoreClient::connect(format!("http://{addr}"))
            .await
            .unwrap();
        let block = Block {
            block_data: Bytes::copy_from_slice(data),
            block_size: data.len() as i32,
        };
        assert!(client.put_block(block).await.unwrap().into_inner().flag);
    });
}

fn create_modify_delete(deployment: &Deployment) {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (a, b, addr) = (a.path(), b.path(), deployment.meta.as_str());
    write(a, "a.txt", "hello");
    write(a, "b.txt", "bye");

    assert_eq!(counts(&sync_ok(a, addr, 1024)), [2, 0, 0, 0]);
    assert_eq!(counts(&sync_ok(b, addr, 1024)), [0, 2, 0, 0]);
    assert_eq!(tree(b), tree(a));

    write(a, "a.txt", "hello again");
    assert_eq!(counts(&sync_ok(a, addr, 1024)), [1, 0, 0, 0]);
    assert_eq!(counts(&sync_ok(b, addr, 1024)), [0, 1, 0, 0]);
    assert_eq!(fs::read(b.join("a.txt")).unwrap(), b"hello again");
    assert_eq!(remote_map(addr)["a.txt"].version, 2);

    fs::remove_file(a.join("b.txt")).unwrap();
    assert_eq!(counts(&sync_ok(a, addr, 1024)), [0, 0, 1, 0]);
    let tombstone = &remote_map(addr)["b.txt"];
    assert_eq!(
        (tombstone.version, tombstone.block_hash_list.as_slice()),
        (2, &["0".to_string()][..])
    );
    assert_eq!(counts(&sync_ok(b, addr, 1024)), [0, 0, 1, 0]);
    assert!(!b.join("b.txt").exists());
    assert!(index_text(b).contains("b.txt,2,0 \n"), "{}", index_text(b));

    write(b, "b.txt", "back again");
    assert_eq!(counts(&sync_ok(b, addr, 1024)), [1, 0, 0, 0]);
    assert_eq!(remote_map(addr)["b.txt"].version, 3);
    assert_eq!(counts(&sync_ok(a, addr, 1024)), [0, 1, 0, 0]);
    assert_eq!(tree(a), tree(b));
}

#[test]
fn create_modify_delete_through_one_server() {
    create_modify_delete(&both());
}

#[test]
fn create_modify_delete_through_split_servers() {
    create_modify_delete(&split());
}

#[test]
fn on_conflict_the_server_wins() {
    let d = both();
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (a, b, addr) = (a.path(), b.path(), d.meta.as_str());
    write(a, "f", "base");
    write(a, "g", "base");
    sync_ok(a, addr, 1024);
    sync_ok(b, addr, 1024);

    write(a, "f", "from A");
    write(b, "f", "from B, longer so the blocks differ");
    fs::remove_file(a.join("g")).unwrap();
    write(b, "g", "edited in B");
    assert_eq!(counts(&sync_ok(a, addr, 1024)), [1, 0, 1, 0]);
    // B loses both: its edit of f is overwritten, its edit of g deleted.
    assert_eq!(counts(&sync_ok(b, addr, 1024)), [0, 1, 1, 2]);
    assert_eq!(fs::read(b.join("f")).unwrap(), b"from A");
    assert!(!b.join("g").exists());
    let map = remote_map(addr);
    assert_eq!((map["f"].version, map["g"].version), (2, 2));
    assert_eq!(counts(&sync_ok(b, addr, 1024)), [0, 0, 0, 0]);
    assert_eq!(tree(a), tree(b));
}

#[test]
fn empty_files_have_no_blocks() {
    let d = split();
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (a, b, addr) = (a.path(), b.path(), d.meta.as_str());
    write(a, "empty", "");
    sync_ok(a, addr, 4096);
    let meta = &remote_map(addr)["empty"];
    assert_eq!((meta.version, meta.block_hash_list.len()), (1, 0));
    assert_eq!(index_text(a), "empty,1,\n");

    sync_ok(b, addr, 4096);
    assert_eq!(fs::read(b.join("empty")).unwrap(), b"");

    write(a, "empty", "now with content");
    sync_ok(a, addr, 4096);
    sync_ok(b, addr, 4096);
    assert_eq!(fs::read(b.join("empty")).unwrap(), b"now with content");

    write(b, "empty", "");
    sync_ok(b, addr, 4096);
    sync_ok(a, addr, 4096);
    assert_eq!(fs::read(a.join("empty")).unwrap(), b"");
    assert_eq!(remote_map(addr)["empty"].version, 3);
}

#[test]
fn files_of_many_blocks_at_1024_and_4096() {
    for block_size in [1024, 4096] {
        let d = both();
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let (a, b, addr) = (a.path(), b.path(), d.meta.as_str());
        let big = pseudo_random(300_017, block_size as u64);
        write(a, "big.bin", &big);
        write(a, "repeats.bin", vec![7u8; block_size * 5 + 3]);
        write(a, "exact.bin", pseudo_random(block_size * 3, 99));
        sync_ok(a, addr, block_size);

        let map = remote_map(addr);
        let expected: Vec<String> = big.chunks(block_size).map(hash_block).collect();
        assert_eq!(
            map["big.bin"].block_hash_list, expected,
            "block size {block_size}"
        );
        assert_eq!(map["repeats.bin"].block_hash_list.len(), 6);
        assert_eq!(map["exact.bin"].block_hash_list.len(), 3);

        sync_ok(b, addr, block_size);
        assert_eq!(tree(b), tree(a), "block size {block_size}");

        let mut changed = big.clone();
        changed[150_000] ^= 0xff;
        write(a, "big.bin", &changed);
        assert_eq!(counts(&sync_ok(a, addr, block_size)), [1, 0, 0, 0]);
        assert_eq!(counts(&sync_ok(b, addr, block_size)), [0, 1, 0, 0]);
        assert_eq!(fs::read(b.join("big.bin")).unwrap(), changed);
    }
}

#[test]
fn nested_directories_sync_and_emptied_ones_disappear() {
    let d = both();
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (a, b, addr) = (a.path(), b.path(), d.meta.as_str());
    write(a, "top", "t");
    write(a, "a/b/c.txt", "c");
    write(a, "a/d.txt", "d");
    write(a, "x/y/z/deep.bin", pseudo_random(5000, 3));
    assert_eq!(counts(&sync_ok(a, addr, 1024)), [4, 0, 0, 0]);
    let mut names: Vec<String> = remote_map(addr).into_keys().collect();
    names.sort();
    assert_eq!(names, ["a/b/c.txt", "a/d.txt", "top", "x/y/z/deep.bin"]);

    sync_ok(b, addr, 1024);
    assert_eq!(tree(b), tree(a));

    fs::remove_file(a.join("a/b/c.txt")).unwrap();
    fs::remove_dir_all(a.join("x")).unwrap();
    assert_eq!(counts(&sync_ok(a, addr, 1024)), [0, 0, 2, 0]);
    assert_eq!(counts(&sync_ok(b, addr, 1024)), [0, 0, 2, 0]);
    assert!(!b.join("a/b").exists());
    assert!(!b.join("x").exists());
    assert!(b.join("a/d.txt").is_file());
    assert_eq!(tree(b), tree(a));
}

#[test]
fn unusual_names_round_trip() {
    let d = both();
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (a, b, addr) = (a.path(), b.path(), d.meta.as_str());
    let names = [
        "with space.txt",
        "com,ma.txt",
        "per%cent.txt",
        "new\nline",
        "ünïcödé 日本語.txt",
        "dir with space/in,side%.txt",
    ];
    for (i, name) in names.iter().enumerate() {
        write(a, name, format!("file {i}"));
    }
    sync_ok(a, addr, 1024);
    let map = remote_map(addr);
    for name in names {
        assert!(map.contains_key(name), "{name:?} not on the server");
    }
    let index = index_text(a);
    for encoded in [
        "com%2Cma.txt,1,",
        "per%25cent.txt,1,",
        "new%0Aline,1,",
        "with space.txt,1,",
        "dir with space/in%2Cside%25.txt,1,",
    ] {
        assert!(index.contains(encoded), "{encoded:?} not in {index:?}");
    }
    sync_ok(b, addr, 1024);
    assert_eq!(tree(b), tree(a));
    assert_eq!(index_text(b), index);
}

#[test]
fn a_second_sync_sends_nothing() {
    let d = split();
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (a, b, addr) = (a.path(), b.path(), d.meta.as_str());
    write(a, "one", "1");
    write(a, "d/two", pseudo_random(10_000, 2));
    write(a, "gone", "x");
    sync_ok(a, addr, 1024);
    fs::remove_file(a.join("gone")).unwrap();
    sync_ok(a, addr, 1024);
    sync_ok(b, addr, 1024);

    let before = remote_map(addr);
    let index_before = index_text(a);
    assert_eq!(counts(&sync_ok(a, addr, 1024)), [0, 0, 0, 0]);
    assert_eq!(counts(&sync_ok(b, addr, 1024)), [0, 0, 0, 0]);
    assert_eq!(remote_map(addr), before);
    assert_eq!(index_text(a), index_before);
}

#[test]
fn an_identical_file_is_not_rewritten() {
    let d = both();
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (a, b, addr) = (a.path(), b.path(), d.meta.as_str());
    write(a, "same", "identical content");
    sync_ok(a, addr, 1024);

    write(b, "same", "identical content");
    let old = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000_000);
    fs::File::options()
        .write(true)
        .open(b.join("same"))
        .unwrap()
        .set_modified(old)
        .unwrap();
    assert_eq!(counts(&sync_ok(b, addr, 1024)), [0, 0, 0, 0]);
    assert_eq!(
        fs::metadata(b.join("same")).unwrap().modified().unwrap(),
        old
    );
    assert!(index_text(b).starts_with("same,1,"), "{}", index_text(b));
}

#[test]
fn remote_names_escaping_the_base_directory_are_refused() {
    let d = both();
    let parent = tempfile::tempdir().unwrap();
    let b = parent.path().join("b");
    fs::create_dir(&b).unwrap();
    put_block(&d.block, b"payload");
    let hashes = vec![hash_block(b"payload")];
    for name in [
        "../escape",
        "/abs",
        "a/../../up",
        "index.txt",
        ".index.txt.cache",
        "ok.txt",
    ] {
        assert_eq!(update_file(&d.meta, name, 1, hashes.clone()), 1, "{name}");
    }

    let out = sync(&b, &d.meta, 1024);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("refusing"), "{stderr}");
    assert_eq!(fs::read(b.join("ok.txt")).unwrap(), b"payload");
    assert!(!parent.path().join("escape").exists());
    assert!(!parent.path().join("up").exists());
    assert!(!Path::new("/abs").exists());
    assert!(!b.join(".index.txt.cache").exists());
    assert!(
        index_text(&b).starts_with("ok.txt,1,"),
        "{}",
        index_text(&b)
    );
    assert_eq!(index_text(&b).lines().count(), 1);
}

/// A BlockStore that answers every GetBlock with the wrong bytes.
struct CorruptBlocks;

#[tonic::async_trait]
impl block_store_server::BlockStore for CorruptBlocks {
    crate::lacks_gc_calls!();
    async fn get_block(&self, _: Request<BlockHash>) -> Result<Response<Block>, Status> {
        Ok(Response::new(Block {
            block_data: Bytes::from_static(b"evil"),
            block_size: 4,
        }))
    }
    async fn put_block(&self, _: Request<Block>) -> Result<Response<Success>, Status> {
        Ok(Response::new(Success { flag: true }))
    }
    async fn has_blocks(&self, r: Request<BlockHashes>) -> Result<Response<BlockHashes>, Status> {
        Ok(Response::new(r.into_inner()))
    }
    async fn put_blocks(&self, _: Request<Blocks>) -> Result<Response<Success>, Status> {
        lacks_batched_calls()
    }
    async fn get_blocks(&self, _: Request<BlockHashes>) -> Result<Response<Blocks>, Status> {
        lacks_batched_calls()
    }
}

#[test]
fn corrupt_blocks_are_rejected_and_the_file_left_untouched() {
    let rt = runtime();
    let fake = serve(
        &rt,
        tonic::transport::Server::builder()
            .add_service(block_store_server::BlockStoreServer::new(CorruptBlocks)),
    );
    let meta = start_server("meta", &[&fake]);
    assert_eq!(
        update_file(&meta.addr, "f", 1, vec![hash_block(b"good")]),
        1
    );

    let b = tempfile::tempdir().unwrap();
    write(b.path(), "f", "local copy");
    let out = sync(b.path(), &meta.addr, 1024);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("corrupt"), "{stderr}");
    assert_eq!(fs::read(b.path().join("f")).unwrap(), b"local copy");
    assert_eq!(tree(b.path()).len(), 1, "a temporary file was left behind");
    assert!(!index_text(b.path()).contains("f,1,"));
}

/// The project's own BlockStore, counting the calls of each method; with
/// `batched` off it answers the batched calls UNIMPLEMENTED, as the
/// original does.
#[derive(Clone)]
struct CountingBlocks {
    inner: Arc<BlockStoreService>,
    batched: bool,
    calls: Arc<Mutex<HashMap<&'static str, usize>>>,
}

impl CountingBlocks {
    fn new(batched: bool) -> Self {
        Self {
            inner: Arc::new(BlockStoreService::new(Arc::new(MemoryBlocks::default()))),
            batched,
            calls: Arc::default(),
        }
    }

    fn count(&self, method: &'static str) {
        *self.calls.lock().unwrap().entry(method).or_default() += 1;
    }

    fn calls(&self, method: &str) -> usize {
        self.calls.lock().unwrap().get(method).copied().unwrap_or(0)
    }

    fn batched(&self) -> Result<(), Status> {
        if self.batched {
            Ok(())
        } else {
            lacks_batched_calls()
        }
    }
}

#[tonic::async_trait]
impl block_store_server::BlockStore for CountingBlocks {
    crate::lacks_gc_calls!();
    async fn get_block(&self, r: Request<BlockHash>) -> Result<Response<Block>, Status> {
        self.count("GetBlock");
        self.inner.get_block(r).await
    }
    async fn put_block(&self, r: Request<Block>) -> Result<Response<Success>, Status> {
        self.count("PutBlock");
        self.inner.put_block(r).await
    }
    async fn has_blocks(&self, r: Request<BlockHashes>) -> Result<Response<BlockHashes>, Status> {
        self.count("HasBlocks");
        self.inner.has_blocks(r).await
    }
    async fn put_blocks(&self, r: Request<Blocks>) -> Result<Response<Success>, Status> {
        self.count("PutBlocks");
        self.batched()?;
        self.inner.put_blocks(r).await
    }
    async fn get_blocks(&self, r: Request<BlockHashes>) -> Result<Response<Blocks>, Status> {
        self.count("GetBlocks");
        self.batched()?;
        self.inner.get_blocks(r).await
    }
}

/// Syncs 1000 distinct 4 KiB blocks (in one large file and a few small
/// ones) up from one directory and down into another through `blocks`.
fn round_trip_small_blocks(blocks: &CountingBlocks) {
    let rt = runtime();
    let block_addr = serve(
        &rt,
        tonic::transport::Server::builder()
            .add_service(block_store_server::BlockStoreServer::new(blocks.clone())),
    );
    let meta = start_server("meta", &[&block_addr]);
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let big: Vec<u8> = (0..997 * 4096u32)
        .map(|i| (i / 4096 + i % 251) as u8)
        .collect();
    fs::write(a.path().join("big.bin"), &big).unwrap();
    for i in 0..3 {
        write(
            a.path(),
            &format!("small{i}.txt"),
            format!("small file {i}"),
        );
    }
    sync_ok(a.path(), &meta.addr, 4096);
    sync_ok(b.path(), &meta.addr, 4096);
    assert_eq!(synced_files(a.path()), synced_files(b.path()));
}

#[test]
fn small_blocks_move_many_to_a_call() {
    let blocks = CountingBlocks::new(true);
    round_trip_small_blocks(&blocks);
    // 997 blocks in calls of 256, plus one call per small file.
    assert_eq!(blocks.calls("PutBlocks"), 4);
    assert_eq!(blocks.calls("GetBlocks"), 4);
    assert_eq!(blocks.calls("PutBlock"), 3);
    assert_eq!(blocks.calls("GetBlock"), 3);
}

#[test]
fn a_block_store_without_batched_calls_gets_one_block_per_call() {
    let blocks = CountingBlocks::new(false);
    round_trip_small_blocks(&blocks);
    // Each side learns from its first answers (batches already asked
    // concurrently also get one) and moves every block on its own.
    assert!((1..=4).contains(&blocks.calls("PutBlocks")));
    assert!((1..=4).contains(&blocks.calls("GetBlocks")));
    assert_eq!(blocks.calls("PutBlock"), 1000);
    assert_eq!(blocks.calls("GetBlock"), 1000);
}

/// How a fake Raft server behaves.
#[derive(Clone)]
enum Role {
    Leader,
    /// Not the leader; the hint names the leader's address.
    Follower(Option<String>),
    Crashed,
    /// A leader without a majority: every call blocks.
    Stuck,
}

/// A RaftSurfstore server that plays `role`, serving the MetaStore calls
/// from a shared map when it leads. Counts the calls it gets.
struct FakeRaft {
    role: Role,
    map: Arc<Mutex<FileMap>>,
    block_addr: String,
    calls: Arc<AtomicUsize>,
}

impl FakeRaft {
    async fn gate(&self) -> Result<(), Status> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        match &self.role {
            Role::Leader => Ok(()),
            Role::Follower(hint) => Err(Status::failed_precondition(match hint {
                Some(addr) => format!("Server is not the leader; leader: {addr}"),
                None => "Server is not the leader".to_string(),
            })),
            Role::Crashed => Err(Status::unavailable("Server is crashed.")),
            Role::Stuck => std::future::pending().await,
        }
    }
}

#[tonic::async_trait]
impl raft_surfstore_server::RaftSurfstore for FakeRaft {
    async fn get_file_info_map(&self, _: Request<()>) -> Result<Response<FileInfoMap>, Status> {
        self.gate().await?;
        Ok(Response::new(self.map.lock().unwrap().to_proto()))
    }
    async fn update_file(&self, r: Request<FileMetaData>) -> Result<Response<Version>, Status> {
        self.gate().await?;
        let version = self.map.lock().unwrap().apply(r.into_inner());
        Ok(Response::new(Version { version }))
    }
    async fn get_block_store_addr(
        &self,
        _: Request<()>,
    ) -> Result<Response<BlockStoreAddr>, Status> {
        self.gate().await?;
        Ok(Response::new(BlockStoreAddr {
            addr: self.block_addr.clone(),
        }))
    }
    async fn append_entries(
        &self,
        _: Request<AppendEntryInput>,
    ) -> Result<Response<AppendEntryOutput>, Status> {
        Err(Status::unimplemented("fake"))
    }
    async fn set_leader(&self, _: Request<()>) -> Result<Response<Success>, Status> {
        Err(Status::unimplemented("fake"))
    }
    async fn send_heartbeat(&self, _: Request<()>) -> Result<Response<Success>, Status> {
        Err(Status::unimplemented("fake"))
    }
    async fn get_internal_state(
        &self,
        _: Request<()>,
    ) -> Result<Response<RaftInternalState>, Status> {
        Err(Status::unimplemented("fake"))
    }
    async fn is_crashed(&self, _: Request<()>) -> Result<Response<CrashedState>, Status> {
        Err(Status::unimplemented("fake"))
    }
    async fn restore(&self, _: Request<()>) -> Result<Response<Success>, Status> {
        Err(Status::unimplemented("fake"))
    }
    async fn crash(&self, _: Request<()>) -> Result<Response<Success>, Status> {
        Err(Status::unimplemented("fake"))
    }
    async fn install_snapshot(
        &self,
        _: Request<InstallSnapshotInput>,
    ) -> Result<Response<InstallSnapshotOutput>, Status> {
        Err(Status::unimplemented("fake"))
    }
    async fn request_vote(
        &self,
        _: Request<RequestVoteInput>,
    ) -> Result<Response<RequestVoteOutput>, Status> {
        Err(Status::unimplemented("fake"))
    }
    async fn pre_vote(
        &self,
        _: Request<RequestVoteInput>,
    ) -> Result<Response<RequestVoteOutput>, Status> {
        Err(Status::unimplemented("fake"))
    }
}

/// Starts one fake Raft server per role on `rt`, sharing one map; returns
/// their addresses, their call counters and the map.
fn fake_cluster(
    rt: &tokio::runtime::Runtime,
    roles: &[Role],
    block_addr: &str,
) -> (Vec<String>, Vec<Arc<AtomicUsize>>, Arc<Mutex<FileMap>>) {
    let map = Arc::new(Mutex::new(FileMap::default()));
    let mut addrs = Vec::new();
    let mut calls = Vec::new();
    for role in roles {
        let counter = Arc::new(AtomicUsize::new(0));
        let fake = FakeRaft {
            role: role.clone(),
            map: Arc::clone(&map),
            block_addr: block_addr.to_string(),
            calls: Arc::clone(&counter),
        };
        addrs.push(serve(
            rt,
            tonic::transport::Server::builder()
                .add_service(raft_surfstore_server::RaftSurfstoreServer::new(fake)),
        ));
        calls.push(counter);
    }
    (addrs, calls, map)
}

fn write_config(dir: &Path, meta_addrs: &[String]) -> String {
    let path = dir.join("cluster.json");
    let json = serde_json::json!({ "MetaStoreAddrs": meta_addrs, "BlockStoreAddrs": [] });
    fs::write(&path, json.to_string()).unwrap();
    path.to_str().unwrap().to_string()
}

fn sync_cluster(config: &str, dir: &Path, block_size: usize) -> std::process::Output {
    run(
        &bin("surfstore-client"),
        &["-f", config, dir.to_str().unwrap(), &block_size.to_string()],
    )
}

#[test]
fn finds_the_leader_of_a_cluster_by_following_hints() {
    let rt = runtime();
    let blocks = start_server("block", &[]);
    // The leader is started last so the follower's hint can name it.
    let (leader, _, map) = fake_cluster(&rt, &[Role::Leader], &blocks.addr);
    let (others, calls, _) = fake_cluster(
        &rt,
        &[Role::Follower(Some(leader[0].clone())), Role::Crashed],
        &blocks.addr,
    );
    let configs = tempfile::tempdir().unwrap();
    let config = write_config(
        configs.path(),
        &[others[0].clone(), others[1].clone(), leader[0].clone()],
    );

    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    write(a.path(), "f.txt", "through the leader");
    write(a.path(), "d/g.bin", pseudo_random(3000, 5));
    let out = sync_cluster(&config, a.path(), 1024);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(map.lock().unwrap().len(), 2);
    assert_eq!(
        calls[1].load(Ordering::SeqCst),
        0,
        "the hint was not followed"
    );

    let out = sync_cluster(&config, b.path(), 1024);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(tree(b.path()), tree(a.path()));
}

#[test]
fn searches_past_crashed_servers_without_hints() {
    let rt = runtime();
    let blocks = start_server("block", &[]);
    let (addrs, _, map) = fake_cluster(
        &rt,
        &[Role::Crashed, Role::Follower(None), Role::Leader],
        &blocks.addr,
    );
    let configs = tempfile::tempdir().unwrap();
    let config = write_config(configs.path(), &addrs);
    let a = tempfile::tempdir().unwrap();
    write(a.path(), "f", "x");
    let out = sync_cluster(&config, a.path(), 1024);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(map.lock().unwrap().get("f").map(|m| m.version), Some(1));
}

#[test]
fn no_leader_with_a_quorum_fails_in_seconds_and_changes_nothing() {
    let rt = runtime();
    let blocks = start_server("block", &[]);
    let (addrs, _, _) = fake_cluster(
        &rt,
        &[Role::Crashed, Role::Follower(None), Role::Stuck],
        &blocks.addr,
    );
    let configs = tempfile::tempdir().unwrap();
    let config = write_config(configs.path(), &addrs);
    let a = tempfile::tempdir().unwrap();
    write(a.path(), "f", "local");
    write(
        a.path(),
        "index.txt",
        format!("gone,1,{} \n", hash_block(b"old")),
    );
    let before = fs::read(a.path().join("index.txt")).unwrap();

    let started = Instant::now();
    let out = sync_cluster(&config, a.path(), 1024);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        started.elapsed() < Duration::from_secs(25),
        "took {:?}",
        started.elapsed()
    );
    assert!(stderr.contains("no leader with a quorum"), "{stderr}");
    assert_eq!(fs::read(a.path().join("index.txt")).unwrap(), before);
    assert_eq!(fs::read(a.path().join("f")).unwrap(), b"local");
    assert_eq!(fs::read_dir(a.path()).unwrap().count(), 2);
}

#[test]
fn a_config_naming_a_plain_server_falls_back_to_the_metastore_service() {
    let d = both();
    let configs = tempfile::tempdir().unwrap();
    let config = write_config(configs.path(), std::slice::from_ref(&d.meta));
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    write(a.path(), "f", "plain");
    let out = sync_cluster(&config, a.path(), 1024);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(remote_map(&d.meta)["f"].version, 1);
    sync_ok(b.path(), &d.meta, 1024);
    assert_eq!(tree(b.path()), tree(a.path()));
}

/// The conflict copies below `dir` as (name without its stamp, contents).
fn conflict_copies(dir: &Path) -> Vec<(String, Vec<u8>)> {
    tree(dir)
        .into_iter()
        .filter_map(|(name, data)| {
            let (original, stamp) = name.split_once(".conflict-")?;
            // YYYYMMDD-HHMMSS
            assert_eq!(stamp.len(), 15, "{name}");
            assert!(
                stamp.chars().enumerate().all(|(i, c)| if i == 8 {
                    c == '-'
                } else {
                    c.is_ascii_digit()
                }),
                "{name}"
            );
            Some((original.to_string(), data))
        })
        .collect()
}

#[test]
fn keep_conflicts_saves_the_losing_local_version_which_syncs_next_run() {
    let d = both();
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (a, b, addr) = (a.path(), b.path(), d.meta.as_str());
    write(a, "f.txt", "base");
    write(a, "d/g.txt", "base");
    write(a, "untouched", "same everywhere");
    sync_ok(a, addr, 1024);
    sync_ok(b, addr, 1024);

    write(a, "f.txt", "from A");
    fs::remove_file(a.join("d/g.txt")).unwrap();
    sync_ok(a, addr, 1024);
    write(b, "f.txt", "from B, which loses");
    write(b, "d/g.txt", "B's edit of a file A deleted");

    let out = common::sync_with(b, addr, 1024, &["--keep-conflicts"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let s = common::summary(&String::from_utf8_lossy(&out.stdout));
    assert_eq!((s.downloaded, s.deleted, s.conflicts, s.kept), (1, 1, 2, 2));
    // The server won, and B's versions are kept beside the files.
    assert_eq!(fs::read(b.join("f.txt")).unwrap(), b"from A");
    assert!(!b.join("d/g.txt").exists());
    assert_eq!(
        conflict_copies(b),
        [
            (
                "d/g.txt".to_string(),
                b"B's edit of a file A deleted".to_vec()
            ),
            ("f.txt".to_string(), b"from B, which loses".to_vec()),
        ]
    );

    // The copies are ordinary files: the next run uploads them, and A gets
    // them.
    assert_eq!(counts(&sync_ok(b, addr, 1024)), [2, 0, 0, 0]);
    assert_eq!(counts(&sync_ok(a, addr, 1024)), [0, 2, 0, 0]);
    assert_eq!(tree(a), tree(b));
    assert_eq!(conflict_copies(a).len(), 2);

    // Without a conflict, the flag changes nothing.
    let out = common::sync_with(b, addr, 1024, &["--keep-conflicts"]);
    assert_eq!(counts(&String::from_utf8_lossy(&out.stdout)), [0, 0, 0, 0]);
}

#[test]
fn files_move_between_folders_of_a_deep_tree() {
    let d = both();
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (a, b, addr) = (a.path(), b.path(), d.meta.as_str());
    let payload = pseudo_random(10_000, 7);
    write(a, "l1/l2/l3/l4/deep.bin", &payload);
    write(a, "l1/l2/sibling.txt", "s");
    write(a, "other/x.txt", "x");
    sync_ok(a, addr, 1024);
    sync_ok(b, addr, 1024);
    assert_eq!(tree(b), tree(a));

    // Move the deep file to another folder and delete a whole folder.
    fs::create_dir_all(a.join("moved/here")).unwrap();
    fs::rename(
        a.join("l1/l2/l3/l4/deep.bin"),
        a.join("moved/here/deep.bin"),
    )
    .unwrap();
    fs::remove_dir_all(a.join("other")).unwrap();
    assert_eq!(counts(&sync_ok(a, addr, 1024)), [1, 0, 2, 0]);
    let s = common::summary(&sync_ok(a, addr, 1024));
    assert_eq!((s.uploaded, s.sent.as_str()), (0, "0 B"));

    let s = common::summary(&sync_ok(b, addr, 1024));
    assert_eq!((s.downloaded, s.deleted), (1, 2));
    assert_eq!(tree(b), tree(a));
    // Emptied folders are gone, the one still holding a file stays.
    assert!(!b.join("l1/l2/l3").exists());
    assert!(!b.join("other").exists());
    assert!(b.join("l1/l2/sibling.txt").is_file());
    assert_eq!(fs::read(b.join("moved/here/deep.bin")).unwrap(), payload);
}

#[cfg(unix)]
#[test]
fn symlinks_are_skipped_with_a_warning_and_never_followed() {
    let d = both();
    let outside = tempfile::tempdir().unwrap();
    write(outside.path(), "secret", "do not sync");
    let a = tempfile::tempdir().unwrap();
    write(a.path(), "real.txt", "r");
    std::os::unix::fs::symlink(outside.path(), a.path().join("dirlink")).unwrap();
    std::os::unix::fs::symlink(outside.path().join("secret"), a.path().join("filelink")).unwrap();
    let out = sync(a.path(), &d.meta, 1024);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(stderr.matches("skipping symlink").count(), 2, "{stderr}");
    let mut names: Vec<String> = remote_map(&d.meta).into_keys().collect();
    names.sort();
    assert_eq!(names, ["real.txt"]);
    assert_eq!(
        fs::read(outside.path().join("secret")).unwrap(),
        b"do not sync"
    );
}

/// `surfstore-client -d --hash-cache ADDR DIR 1024`, asserted to succeed:
/// its summary line and its debug log (without colours).
fn sync_hash_cached(dir: &Path, addr: &str) -> (String, String) {
    let out = Command::new(bin("surfstore-client"))
        .env("NO_COLOR", "1")
        .args(["-d", "--hash-cache", addr, dir.to_str().unwrap(), "1024"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{log}");
    (String::from_utf8_lossy(&out.stdout).into_owned(), log)
}

/// Moves the recorded start of the scan that wrote the hash cache in `dir`
/// a minute later: as if that run had come after the files settled, so its
/// entries are trusted without the test waiting out the racy margin.
fn settle_hash_cache(dir: &Path) {
    let path = dir.join(".index.txt.cache");
    let text = fs::read_to_string(&path).unwrap();
    let (header, files) = text.split_once('\n').unwrap();
    let mut header: serde_json::Value = serde_json::from_str(header).unwrap();
    let secs = &mut header["scanned"]["secs_since_epoch"];
    *secs = (secs.as_u64().unwrap() + 60).into();
    fs::write(&path, format!("{header}\n{files}")).unwrap();
}

#[test]
fn the_hash_cache_spares_unchanged_files_syncs_edits_and_never_syncs_itself() {
    let d = both();
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (a, b, addr) = (a.path(), b.path(), d.meta.as_str());
    write(a, "keep", pseudo_random(5000, 7));
    write(a, "d/edit", "first version");
    let (out, log) = sync_hash_cached(a, addr);
    assert_eq!(counts(&out), [2, 0, 0, 0]);
    assert!(log.contains("scanning cached=0 hashing=2"), "{log}");
    assert!(a.join(".index.txt.cache").is_file());

    // A same-size edit right after the run that cached the file.
    write(a, "d/edit", "other version");
    assert_eq!(counts(&sync_hash_cached(a, addr).0), [1, 0, 0, 0]);

    settle_hash_cache(a);
    let (out, log) = sync_hash_cached(a, addr);
    assert_eq!(counts(&out), [0, 0, 0, 0]);
    assert!(log.contains("scanning cached=2 hashing=0"), "{log}");

    // A same-size edit with a modification time of its own.
    settle_hash_cache(a);
    write(a, "d/edit", "third version");
    let old = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000_000);
    fs::File::options()
        .write(true)
        .open(a.join("d/edit"))
        .unwrap()
        .set_modified(old)
        .unwrap();
    let (out, log) = sync_hash_cached(a, addr);
    assert_eq!(counts(&out), [1, 0, 0, 0]);
    assert!(log.contains("scanning cached=1 hashing=1"), "{log}");
    assert_eq!(remote_map(addr)["d/edit"].version, 3);

    // Without the flag the cache is neither used nor rewritten.
    let cache = fs::read(a.join(".index.txt.cache")).unwrap();
    assert_eq!(counts(&sync_ok(a, addr, 1024)), [0, 0, 0, 0]);
    assert_eq!(fs::read(a.join(".index.txt.cache")).unwrap(), cache);

    assert_eq!(counts(&sync_ok(b, addr, 1024)), [0, 2, 0, 0]);
    assert_eq!(fs::read(b.join("d/edit")).unwrap(), b"third version");
    assert_eq!(fs::read(b.join("keep")).unwrap(), pseudo_random(5000, 7));
    assert!(!b.join(".index.txt.cache").exists());
    assert!(!remote_map(addr).contains_key(".index.txt.cache"));
    assert!(!index_text(a).contains(".index.txt.cache"));
}
