//! `surfstore-client` against servers that are slow or fail for a while
//! (SPEC §7): idempotent calls are sent again with backoff and deadlines
//! that fit the work, an `UpdateFile` that may have reached the server is
//! never sent again, and a server that never answers is given up within a
//! bound. The servers run inside the test, wrapping the real MetaStore and
//! BlockStore services with the faults under test.

// Test code: a failed unwrap is a failed test, with its location.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{index_text, runtime, serve, sync_ok, tree, write};
use surfstore::block_store::{BlockStoreService, MemoryBlocks};
use surfstore::client::MetaStore;
use surfstore::client::rpc::Patience;
use surfstore::config::ClusterConfig;
use surfstore::meta_store::MetaStoreService;
use surfstore::proto::{
    Block, BlockHash, BlockHashes, BlockStoreAddr, Blocks, FileInfoMap, FileMetaData, Success,
    Version, block_store_server, meta_store_server,
};
use tonic::{Request, Response, Status};

/// What the flaky servers do to calls before serving them.
#[derive(Clone, Copy, Default)]
struct Faults {
    /// The first this many calls of every method but `UpdateFile` fail
    /// with UNAVAILABLE, as an overloaded server's would.
    fail_first: usize,
    /// Every `GetFileInfoMap` answers only after this long.
    map_delay: Duration,
    /// The first `UpdateFile` is applied, but its caller gets UNAVAILABLE:
    /// a reply lost on the way back.
    lose_first_update_reply: bool,
}

/// How many calls of each method a flaky server received.
#[derive(Default)]
struct Calls {
    map: AtomicUsize,
    update: AtomicUsize,
    addr: AtomicUsize,
    /// BlockStore calls, by method.
    blocks: Mutex<HashMap<&'static str, usize>>,
}

impl Calls {
    /// Counts a BlockStore call of `method`; fails it if it is among the
    /// first `fail_first` of that method.
    fn block(&self, method: &'static str, fail_first: usize) -> Result<(), Status> {
        let mut blocks = self.blocks.lock().unwrap();
        let n = blocks.entry(method).or_default();
        *n += 1;
        if *n <= fail_first {
            Err(Status::unavailable("overloaded; try again later"))
        } else {
            Ok(())
        }
    }
}

/// Counts a call of `counter`; fails it if it is among the first
/// `fail_first`.
fn arrive(counter: &AtomicUsize, fail_first: usize) -> Result<usize, Status> {
    let n = counter.fetch_add(1, Ordering::SeqCst);
    if n < fail_first {
        Err(Status::unavailable("overloaded; try again later"))
    } else {
        Ok(n)
    }
}

/// The real MetaStore with [`Faults`].
struct FlakyMeta {
    inner: MetaStoreService,
    faults: Faults,
    calls: Arc<Calls>,
}

#[tonic::async_trait]
impl meta_store_server::MetaStore for FlakyMeta {
    async fn get_file_info_map(&self, r: Request<()>) -> Result<Response<FileInfoMap>, Status> {
        arrive(&self.calls.map, self.faults.fail_first)?;
        tokio::time::sleep(self.faults.map_delay).await;
        self.inner.get_file_info_map(r).await
    }
    async fn update_file(&self, r: Request<FileMetaData>) -> Result<Response<Version>, Status> {
        let n = arrive(&self.calls.update, 0)?;
        let reply = self.inner.update_file(r).await?;
        if n == 0 && self.faults.lose_first_update_reply {
            return Err(Status::unavailable("connection reset"));
        }
        Ok(reply)
    }
    async fn get_block_store_addr(
        &self,
        r: Request<()>,
    ) -> Result<Response<BlockStoreAddr>, Status> {
        arrive(&self.calls.addr, self.faults.fail_first)?;
        self.inner.get_block_store_addr(r).await
    }
}

/// The real BlockStore whose calls fail like [`Faults::fail_first`] says.
struct FlakyBlocks {
    inner: BlockStoreService,
    faults: Faults,
    calls: Arc<Calls>,
}

#[tonic::async_trait]
impl block_store_server::BlockStore for FlakyBlocks {
    crate::lacks_gc_calls!();
    async fn get_block(&self, r: Request<BlockHash>) -> Result<Response<Block>, Status> {
        self.calls.block("GetBlock", self.faults.fail_first)?;
        self.inner.get_block(r).await
    }
    async fn put_block(&self, r: Request<Block>) -> Result<Response<Success>, Status> {
        self.calls.block("PutBlock", self.faults.fail_first)?;
        self.inner.put_block(r).await
    }
    async fn has_blocks(&self, r: Request<BlockHashes>) -> Result<Response<BlockHashes>, Status> {
        self.calls.block("HasBlocks", self.faults.fail_first)?;
        self.inner.has_blocks(r).await
    }
    async fn put_blocks(&self, r: Request<Blocks>) -> Result<Response<Success>, Status> {
        self.calls.block("PutBlocks", self.faults.fail_first)?;
        self.inner.put_blocks(r).await
    }
    async fn get_blocks(&self, r: Request<BlockHashes>) -> Result<Response<Blocks>, Status> {
        self.calls.block("GetBlocks", self.faults.fail_first)?;
        self.inner.get_blocks(r).await
    }
}

/// A flaky MetaStore and BlockStore served on `rt`.
struct Servers {
    meta_addr: String,
    calls: Arc<Calls>,
}

fn start(rt: &tokio::runtime::Runtime, faults: Faults) -> Servers {
    let calls = Arc::new(Calls::default());
    let blocks = FlakyBlocks {
        inner: BlockStoreService::new(Arc::new(MemoryBlocks::default())),
        faults,
        calls: Arc::clone(&calls),
    };
    let block_addr = serve(
        rt,
        tonic::transport::Server::builder()
            .add_service(block_store_server::BlockStoreServer::new(blocks)),
    );
    let meta = FlakyMeta {
        inner: MetaStoreService::new(block_addr),
        faults,
        calls: Arc::clone(&calls),
    };
    let meta_addr = serve(
        rt,
        tonic::transport::Server::builder()
            .add_service(meta_store_server::MetaStoreServer::new(meta)),
    );
    Servers { meta_addr, calls }
}

/// A cluster config (JSON) naming only `addr`, so the client runs in
/// cluster mode against a single server.
fn config_of(dir: &Path, addr: &str) -> std::path::PathBuf {
    let path = dir.join("cluster.json");
    let json = serde_json::json!({"MetaStoreAddrs": [addr], "BlockStoreAddrs": []});
    std::fs::write(&path, json.to_string()).unwrap();
    path
}

#[test]
fn a_map_slower_than_five_seconds_still_syncs() {
    let rt = runtime();
    let servers = start(
        &rt,
        Faults {
            map_delay: Duration::from_secs(6),
            ..Faults::default()
        },
    );
    let base = tempfile::tempdir().unwrap();
    write(base.path(), "f.txt", "slow but fine");
    let started = Instant::now();
    sync_ok(base.path(), &servers.meta_addr, 1024);
    assert!(started.elapsed() >= Duration::from_secs(6));
    assert!(
        index_text(base.path()).starts_with("f.txt,1,"),
        "{}",
        index_text(base.path())
    );
}

#[test]
fn calls_failing_with_unavailable_are_sent_again() {
    let rt = runtime();
    let servers = start(
        &rt,
        Faults {
            fail_first: 2,
            ..Faults::default()
        },
    );
    let a = tempfile::tempdir().unwrap();
    // Small blocks: several blocks, so HasBlocks and PutBlocks both run.
    write(a.path(), "d/f.bin", common::pseudo_random(10_000, 7));
    write(a.path(), "g.txt", "second file");
    sync_ok(a.path(), &servers.meta_addr, 1024);

    let b = tempfile::tempdir().unwrap();
    sync_ok(b.path(), &servers.meta_addr, 1024);
    assert_eq!(tree(b.path()), tree(a.path()));
    // The first run's two failed calls of each, then one that succeeded in
    // each run.
    assert_eq!(servers.calls.map.load(Ordering::SeqCst), 2 + 2);
    assert_eq!(servers.calls.addr.load(Ordering::SeqCst), 2 + 2);
    // The upload's HasBlocks, PutBlocks (10 blocks) and PutBlock (1), the
    // download's GetBlocks and GetBlock: each failed twice first.
    let blocks = servers.calls.blocks.lock().unwrap();
    for method in [
        "HasBlocks",
        "PutBlocks",
        "PutBlock",
        "GetBlocks",
        "GetBlock",
    ] {
        assert!(blocks.get(method) >= Some(&3), "{method}: {blocks:?}");
    }
}

#[test]
fn an_update_whose_reply_was_lost_is_not_sent_again() {
    let rt = runtime();
    let servers = start(
        &rt,
        Faults {
            lose_first_update_reply: true,
            ..Faults::default()
        },
    );
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("base");
    std::fs::create_dir(&base).unwrap();
    write(&base, "f.txt", "applied, but the client never heard");
    let config = config_of(dir.path(), &servers.meta_addr);
    let args = [
        "-f",
        config.to_str().unwrap(),
        base.to_str().unwrap(),
        "1024",
    ];

    let out = common::run(&common::bin("surfstore-client"), &args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("UpdateFile"), "{stderr}");
    assert!(stderr.contains("next sync"), "{stderr}");
    assert_eq!(servers.calls.update.load(Ordering::SeqCst), 1);
    assert!(!base.join("index.txt").exists() || index_text(&base).is_empty());

    // The next run finds the update applied and only records it.
    let out = common::run(&common::bin("surfstore-client"), &args);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(servers.calls.update.load(Ordering::SeqCst), 1);
    assert!(index_text(&base).starts_with("f.txt,1,"));
    assert_eq!(
        common::counts(&String::from_utf8_lossy(&out.stdout)),
        [0, 0, 0, 0]
    );
}

#[test]
fn a_server_that_never_answers_is_given_up_with_a_clear_message() {
    let rt = runtime();
    let servers = start(
        &rt,
        Faults {
            map_delay: Duration::from_secs(3600),
            ..Faults::default()
        },
    );
    let base = tempfile::tempdir().unwrap();
    write(base.path(), "f.txt", "stays as it is");
    let before = common::snapshot(base.path());
    // A bound of a second: the first attempt still gets its full 10 s.
    let started = Instant::now();
    let out = common::sync_with(base.path(), &servers.meta_addr, 1024, &["--retry-for", "1"]);
    let took = started.elapsed();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(took >= Duration::from_secs(10), "gave up after {took:?}");
    assert!(
        took < Duration::from_secs(20),
        "gave up only after {took:?}"
    );
    assert!(
        stderr.contains("cannot reach the MetaStore")
            && stderr.contains("no answer within 10.0s (gave up after 1 attempt in"),
        "{stderr}"
    );
    assert_eq!(common::snapshot(base.path()), before);
}

/// Short enough for tests: what takes a minute by default takes seconds.
fn short_patience(retry_for: Duration) -> Patience {
    Patience {
        retry_for,
        give_up_after: Duration::from_millis(500),
        meta_deadline: Duration::from_millis(200),
        map_deadline: Duration::from_millis(300),
        block_deadline: Duration::from_millis(300),
        pause: Duration::from_millis(20),
        max_pause: Duration::from_millis(100),
    }
}

#[test]
fn a_server_that_never_answers_is_given_up_within_the_bound() {
    let rt = runtime();
    let servers = start(
        &rt,
        Faults {
            map_delay: Duration::from_secs(3600),
            ..Faults::default()
        },
    );
    let retry_for = Duration::from_secs(2);
    let meta = rt.block_on(async {
        MetaStore::single(&servers.meta_addr, &Default::default())
            .unwrap()
            .with_patience(short_patience(retry_for))
    });
    let started = Instant::now();
    let error = rt.block_on(meta.get_file_info_map()).unwrap_err();
    let took = started.elapsed();
    assert!(took >= retry_for, "gave up after {took:?}");
    assert!(took < retry_for * 3, "gave up only after {took:?}");
    let message = error.to_string();
    assert!(message.contains("cannot reach the MetaStore"), "{message}");
    assert!(message.contains("no answer within"), "{message}");
    assert!(message.contains("gave up after"), "{message}");
    // Deadlines of 0.3, 0.6 and then what is left: at least three tries.
    assert!(servers.calls.map.load(Ordering::SeqCst) >= 3);
}

/// A MetaStore that answers every call with the same error, like a
/// follower or a crashed Raft server.
struct Refusing(Status);

#[tonic::async_trait]
impl meta_store_server::MetaStore for Refusing {
    async fn get_file_info_map(&self, _: Request<()>) -> Result<Response<FileInfoMap>, Status> {
        Err(Status::new(self.0.code(), self.0.message()))
    }
    async fn update_file(&self, _: Request<FileMetaData>) -> Result<Response<Version>, Status> {
        Err(Status::new(self.0.code(), self.0.message()))
    }
    async fn get_block_store_addr(
        &self,
        _: Request<()>,
    ) -> Result<Response<BlockStoreAddr>, Status> {
        Err(Status::new(self.0.code(), self.0.message()))
    }
}

/// Two servers answering `refusal` and, last, the flaky servers' MetaStore.
fn cluster_of(
    rt: &tokio::runtime::Runtime,
    refusal: impl Fn() -> Status,
    leader: &str,
) -> ClusterConfig {
    let mut meta_addrs: Vec<String> = (0..2)
        .map(|_| {
            let server = meta_store_server::MetaStoreServer::new(Refusing(refusal()));
            serve(rt, tonic::transport::Server::builder().add_service(server))
        })
        .collect();
    meta_addrs.push(leader.to_string());
    ClusterConfig {
        meta_addrs,
        block_addrs: Vec::new(),
    }
}

#[test]
fn a_slow_leader_its_followers_name_is_waited_for() {
    let rt = runtime();
    let patience = short_patience(Duration::from_secs(20));
    let servers = start(
        &rt,
        Faults {
            // Beyond two first deadlines: only a grown one is long enough.
            map_delay: patience.map_deadline * 3,
            ..Faults::default()
        },
    );
    let hint = format!("Server is not the leader; leader: {}", servers.meta_addr);
    let config = cluster_of(
        &rt,
        || Status::failed_precondition(&hint),
        &servers.meta_addr,
    );
    let meta = rt.block_on(async {
        MetaStore::cluster(&config, &Default::default())
            .unwrap()
            .with_patience(patience)
    });
    let map = rt.block_on(meta.get_file_info_map()).unwrap();
    assert!(map.is_empty());
    assert!(servers.calls.map.load(Ordering::SeqCst) >= 3);
}

#[test]
fn a_cluster_whose_majority_is_crashed_is_given_up_within_seconds() {
    let rt = runtime();
    let patience = short_patience(Duration::from_secs(30));
    let servers = start(
        &rt,
        Faults {
            // The leader of no quorum waits for one forever.
            map_delay: Duration::from_secs(3600),
            ..Faults::default()
        },
    );
    let config = cluster_of(
        &rt,
        || Status::unavailable("Server is crashed."),
        &servers.meta_addr,
    );
    let meta = rt.block_on(async {
        MetaStore::cluster(&config, &Default::default())
            .unwrap()
            .with_patience(patience)
    });
    let started = Instant::now();
    let error = rt.block_on(meta.get_file_info_map()).unwrap_err();
    let took = started.elapsed();
    assert!(took < patience.retry_for / 3, "gave up only after {took:?}");
    assert!(
        error.to_string().contains("no leader with a quorum"),
        "{error}"
    );
}
