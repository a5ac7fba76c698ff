//! `surfstore-server --data-dir` from the outside (SPEC §7): what it
//! acknowledged survives SIGKILL, and damaged files are caught.

// Test code: a failed unwrap is a failed test, with its location.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Server, bin, cut_wal_records, run, start_server, within};
use surfstore::grpc::{MAX_MESSAGE_BYTES, channel};
use surfstore::hash::{hash_block, tombstone};
use surfstore::meta_store::JOURNAL_FILE;
use surfstore::proto::block_store_client::BlockStoreClient;
use surfstore::proto::meta_store_client::MetaStoreClient;
use surfstore::proto::{Block, BlockHash, BlockHashes, FileInfoMap, FileMetaData};
use surfstore::storage::Wal;
use tonic::transport::Channel;

struct Clients {
    blocks: BlockStoreClient<Channel>,
    meta: MetaStoreClient<Channel>,
}

fn connect(server: &Server) -> Clients {
    let ch = channel(&server.addr).unwrap();
    Clients {
        blocks: BlockStoreClient::new(ch.clone()).max_decoding_message_size(MAX_MESSAGE_BYTES),
        meta: MetaStoreClient::new(ch).max_decoding_message_size(MAX_MESSAGE_BYTES),
    }
}

fn start_durable(dir: &Path) -> Server {
    start_server("both", &["--data-dir", dir.to_str().unwrap()])
}

fn meta(name: &str, version: i32, hashes: Vec<String>) -> FileMetaData {
    FileMetaData {
        filename: name.into(),
        version,
        block_hash_list: hashes,
    }
}

/// Deterministic, distinct block contents.
fn block_data(i: usize, len: usize) -> Vec<u8> {
    (0..len).map(|j| (i * 31 + j * 7 + j / 251) as u8).collect()
}

impl Clients {
    async fn put(&mut self, data: &[u8]) -> String {
        let reply = self
            .blocks
            .put_block(Block {
                block_data: data.to_vec().into(),
                block_size: data.len() as i32,
            })
            .await
            .unwrap();
        assert!(reply.into_inner().flag);
        hash_block(data)
    }

    async fn get(&mut self, hash: &str) -> Result<Vec<u8>, tonic::Status> {
        let block = self
            .blocks
            .get_block(BlockHash { hash: hash.into() })
            .await?
            .into_inner();
        Ok(block.block_data.to_vec())
    }

    async fn has(&mut self, hashes: &[String]) -> Vec<String> {
        self.blocks
            .has_blocks(BlockHashes {
                hashes: hashes.to_vec(),
            })
            .await
            .unwrap()
            .into_inner()
            .hashes
    }

    async fn update(&mut self, m: FileMetaData) -> i32 {
        self.meta.update_file(m).await.unwrap().into_inner().version
    }

    async fn map(&mut self) -> FileInfoMap {
        self.meta.get_file_info_map(()).await.unwrap().into_inner()
    }
}

fn block_path(dir: &Path, hash: &str) -> PathBuf {
    dir.join("blocks").join(&hash[..2]).join(hash)
}

#[tokio::test]
async fn acknowledged_blocks_and_updates_survive_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = start_durable(dir.path());
    let mut c = connect(&server);

    let sizes = [0, 1, 4096, 4096, 100_000, 1 << 20];
    let mut blocks = Vec::new();
    for (i, &len) in sizes.iter().enumerate() {
        let data = block_data(i, len);
        blocks.push((c.put(&data).await, data));
    }
    let hashes: Vec<String> = blocks.iter().map(|(h, _)| h.clone()).collect();
    assert_eq!(c.update(meta("a.txt", 1, hashes[..2].to_vec())).await, 1);
    assert_eq!(c.update(meta("a.txt", 2, hashes[2..4].to_vec())).await, 2);
    assert_eq!(c.update(meta("b.bin", 1, hashes[4..].to_vec())).await, 1);
    assert_eq!(c.update(meta("empty", 1, vec![])).await, 1);
    assert_eq!(c.update(meta("gone", 1, hashes[..1].to_vec())).await, 1);
    assert_eq!(c.update(meta("gone", 2, tombstone())).await, 2);
    assert_eq!(c.update(meta("a.txt", 2, vec![])).await, -1);
    let before = c.map().await;
    assert_eq!(before.file_info_map.len(), 4);

    server.proc.kill();
    let server = start_durable(dir.path());
    let mut c = connect(&server);

    for (hash, data) in &blocks {
        assert_eq!(&c.get(hash).await.unwrap(), data, "block {hash}");
    }
    assert_eq!(c.has(&hashes).await, hashes);
    assert_eq!(c.map().await, before);
    let addr = c.meta.get_block_store_addr(()).await.unwrap().into_inner();
    assert_eq!(addr.addr, format!("localhost:{}", server.port));
    // The version rule continues from the recovered map.
    assert_eq!(c.update(meta("a.txt", 2, vec![])).await, -1);
    assert_eq!(c.update(meta("a.txt", 3, vec![])).await, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_acknowledged_is_lost_when_killed_under_load() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = start_durable(dir.path());
    let c = connect(&server);

    let acked_version = Arc::new(AtomicI32::new(0));
    let mut meta_client = c.meta.clone();
    let acked = Arc::clone(&acked_version);
    let updates = tokio::spawn(async move {
        for version in 1.. {
            match meta_client.update_file(meta("f", version, vec![])).await {
                Ok(reply) => assert_eq!(reply.into_inner().version, version),
                Err(_) => break,
            }
            acked.store(version, Ordering::SeqCst);
        }
    });
    let acked_blocks = Arc::new(Mutex::new(Vec::new()));
    let mut block_client = c.blocks.clone();
    let acked = Arc::clone(&acked_blocks);
    let puts = tokio::spawn(async move {
        for i in 0.. {
            let data = block_data(i, 4096 + i % 100);
            let block = Block {
                block_size: data.len() as i32,
                block_data: data.clone().into(),
            };
            if block_client.put_block(block).await.is_err() {
                break;
            }
            acked.lock().unwrap().push(data);
        }
    });

    let deadline = Instant::now() + Duration::from_secs(20);
    while acked_version.load(Ordering::SeqCst) < 30 || acked_blocks.lock().unwrap().len() < 30 {
        assert!(Instant::now() < deadline, "the server made no progress");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    server.proc.kill();
    // Both loops end at their first failed call; bounded, so that a call
    // that never fails cannot hang the suite.
    within("the update loop after the kill", updates)
        .await
        .unwrap();
    within("the PutBlock loop after the kill", puts)
        .await
        .unwrap();

    let server = start_durable(dir.path());
    let mut c = connect(&server);
    let acked = acked_version.load(Ordering::SeqCst);
    let stored = c.map().await.file_info_map["f"].version;
    // The update in flight at the kill may or may not have been stored.
    assert!(
        stored == acked || stored == acked + 1,
        "acked {acked}, stored {stored}"
    );
    let blocks = acked_blocks.lock().unwrap().clone();
    for data in &blocks {
        assert_eq!(&c.get(&hash_block(data)).await.unwrap(), data);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_acknowledged_updates_survive_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = start_durable(dir.path());
    let c = connect(&server);

    // Many callers at once, so the journal commits them in shared batches;
    // each records the last version the server acknowledged for its file.
    let callers = 32;
    let acked: Arc<Vec<AtomicI32>> = Arc::new((0..callers).map(|_| AtomicI32::new(0)).collect());
    let tasks: Vec<_> = (0..callers)
        .map(|i| {
            let mut client = c.meta.clone();
            let acked = Arc::clone(&acked);
            tokio::spawn(async move {
                for version in 1.. {
                    let update = meta(&format!("f{i}"), version, vec![hash_block(b"x")]);
                    match client.update_file(update).await {
                        Ok(reply) => assert_eq!(reply.into_inner().version, version),
                        Err(_) => break,
                    }
                    acked[i].store(version, Ordering::SeqCst);
                }
            })
        })
        .collect();

    let deadline = Instant::now() + Duration::from_secs(20);
    while acked.iter().map(|a| a.load(Ordering::SeqCst)).sum::<i32>() < 20 * callers as i32 {
        assert!(Instant::now() < deadline, "the server made no progress");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    server.proc.kill();
    for task in tasks {
        task.await.unwrap();
    }

    let server = start_durable(dir.path());
    let mut c = connect(&server);
    let map = c.map().await.file_info_map;
    for (i, acked) in acked.iter().enumerate() {
        let acked = acked.load(Ordering::SeqCst);
        let stored = map.get(&format!("f{i}")).map_or(0, |m| m.version);
        // Each caller had at most one update in flight at the kill.
        assert!(
            stored == acked || stored == acked + 1,
            "f{i}: acked {acked}, stored {stored}"
        );
    }
}

#[tokio::test]
async fn a_corrupt_block_file_is_not_served() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_durable(dir.path());
    let mut c = connect(&server);
    let good = c.put(&block_data(1, 4096)).await;
    let data = block_data(2, 4096);
    let bad = c.put(&data).await;

    let path = block_path(dir.path(), &bad);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[100] ^= 0xff;
    std::fs::write(&path, &bytes).unwrap();

    let err = c.get(&bad).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound, "{err:?}");
    assert_eq!(
        c.has(&[good.clone(), bad.clone()]).await,
        vec![good.clone()]
    );
    assert_eq!(c.get(&good).await.unwrap(), block_data(1, 4096));
    // Uploading it again repairs it.
    c.put(&data).await;
    assert_eq!(c.get(&bad).await.unwrap(), data);
}

#[tokio::test]
async fn a_journal_cut_mid_record_loads_without_that_record() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = start_durable(dir.path());
    let mut c = connect(&server);
    assert_eq!(c.update(meta("kept", 1, vec![])).await, 1);
    let kept = c.map().await;
    assert_eq!(c.update(meta("torn", 1, tombstone())).await, 1);
    server.proc.kill();

    let journal = dir.path().join("meta").join(JOURNAL_FILE);
    cut_wal_records(&journal, 3);

    let server = start_durable(dir.path());
    let mut c = connect(&server);
    assert_eq!(c.map().await, kept);
    assert_eq!(c.update(meta("torn", 1, vec![])).await, 1);
}

#[test]
fn an_unusable_data_dir_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("not-a-dir");
    std::fs::write(&file, b"").unwrap();
    for service in ["both", "block", "meta"] {
        let out = run(
            &bin("surfstore-server"),
            &[
                "-s",
                service,
                "-p",
                "0",
                "-l",
                "--data-dir",
                file.to_str().unwrap(),
                "localhost:1",
            ],
        );
        assert_eq!(out.status.code(), Some(1), "{service}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("not-a-dir"), "{service}: {stderr}");
    }
    let out = run(&bin("surfstore-server"), &["-s", "both", "--data-dir"]);
    assert_eq!(out.status.code(), Some(64));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_journal_compacting_every_three_updates_loses_nothing_acknowledged_when_killed() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().to_str().unwrap();
    let args = ["--data-dir", data_dir, "--snapshot-entries", "3"];
    let mut acked = 0;
    // Each round kills the server wherever its writer is: appending,
    // syncing, or rewriting the journal.
    for round in 0..4 {
        let mut server = start_server("both", &args);
        let mut c = connect(&server);
        let version = c
            .map()
            .await
            .file_info_map
            .get("f")
            .map_or(0, |m| m.version);
        assert!(
            version >= acked,
            "round {round}: acknowledged {acked}, found {version}"
        );
        acked = version;
        let mut meta_client = c.meta.clone();
        let counter = Arc::new(AtomicI32::new(acked));
        let updates = tokio::spawn({
            let counter = Arc::clone(&counter);
            async move {
                for version in acked + 1.. {
                    let hashes = vec![hash_block(&version.to_le_bytes())];
                    match meta_client.update_file(meta("f", version, hashes)).await {
                        Ok(reply) => assert_eq!(reply.into_inner().version, version),
                        Err(_) => break,
                    }
                    counter.store(version, Ordering::SeqCst);
                }
            }
        });
        let deadline = Instant::now() + Duration::from_secs(20);
        while counter.load(Ordering::SeqCst) < acked + 20 + round {
            assert!(Instant::now() < deadline, "the server made no progress");
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        server.proc.kill();
        within("the update loop to end", updates).await.unwrap();
        acked = counter.load(Ordering::SeqCst);
    }
    let server = start_server("both", &args);
    let version = connect(&server).map().await.file_info_map["f"].version;
    assert!(version >= acked);
    let journal = dir.path().join("meta").join(JOURNAL_FILE);
    assert!(
        Wal::records_end(&journal).unwrap() < 2000,
        "the journal follows the map, not the {version} updates"
    );
}
