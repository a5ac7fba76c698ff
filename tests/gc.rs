//! `surfstore-ctl gc` from the outside (SPEC §9.2): against a running
//! server, it frees exactly the blocks of overwritten and deleted files,
//! keeps everything younger than the grace period, and a fresh client then
//! downloads every current file byte for byte.

// Test code: a failed unwrap is a failed test, with its location.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;

use common::{bin, pseudo_random, run, start_cluster, start_server, sync_ok, synced_files, write};
use surfstore::grpc::channel;
use surfstore::proto::ListBlocksInput;
use surfstore::proto::block_store_client::BlockStoreClient;

const BLOCK_SIZE: usize = 4096;

/// `n` blocks of content no other call gives.
fn blocks(n: usize, seed: u64) -> Vec<u8> {
    (0..n as u64)
        // Odd seeds: pseudo_random sets the low bit.
        .flat_map(|i| pseudo_random(BLOCK_SIZE, (seed * 1000 + i) * 2 + 1))
        .collect()
}

/// Runs `surfstore-ctl gc -f CONFIG --older-than AGE`; its stdout.
fn gc(config: &Path, age: &str) -> String {
    let out = run(
        &bin("surfstore-ctl"),
        &["gc", "-f", config.to_str().unwrap(), "--older-than", age],
    );
    assert!(
        out.status.success(),
        "gc failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The blocks the BlockStore at `addr` holds and their total size.
async fn stored(addr: &str) -> (usize, i64) {
    let mut client = BlockStoreClient::new(channel(addr).unwrap());
    let (mut count, mut bytes, mut after) = (0, 0, String::new());
    loop {
        let page = client
            .list_blocks(ListBlocksInput { after })
            .await
            .unwrap()
            .into_inner()
            .blocks;
        let Some(last) = page.last() else {
            return (count, bytes);
        };
        after = last.hash.clone();
        count += page.len();
        bytes += page.iter().map(|b| b.size).sum::<i64>();
    }
}

async fn gc_frees_what_no_current_version_lists(data_dir: Option<&Path>) {
    let dir_arg = data_dir.map(|d| d.to_str().unwrap().to_string());
    let extra: Vec<&str> = match &dir_arg {
        Some(d) => vec!["--data-dir", d],
        None => vec![],
    };
    let server = start_server("both", &extra);
    let config_dir = tempfile::tempdir().unwrap();
    let config = config_dir.path().join("config.json");
    let json = serde_json::json!({
        "MetaStoreAddrs": [server.addr],
        "BlockStoreAddrs": [server.addr],
    });
    std::fs::write(&config, json.to_string()).unwrap();

    let client = tempfile::tempdir().unwrap();
    write(client.path(), "kept.bin", blocks(5, 1));
    write(client.path(), "rewritten.bin", blocks(3, 2));
    write(client.path(), "deleted.bin", blocks(2, 3));
    sync_ok(client.path(), &server.addr, BLOCK_SIZE);
    let (blocks_before, _) = stored(&server.addr).await;
    assert_eq!(blocks_before, 10);
    write(client.path(), "rewritten.bin", blocks(3, 4));
    std::fs::remove_file(client.path().join("deleted.bin")).unwrap();
    sync_ok(client.path(), &server.addr, BLOCK_SIZE);
    assert_eq!(stored(&server.addr).await.0, 13);

    // Within the grace period nothing goes.
    let out = gc(&config, "1h");
    assert!(out.contains("freed 0 blocks, 0 bytes"), "{out}");
    assert!(out.contains("13 younger than 1h"), "{out}");
    // With none, the rewritten file's old blocks and the deleted file's go.
    let out = gc(&config, "0s");
    let freed = 5 * BLOCK_SIZE;
    assert!(
        out.contains(&format!("freed 5 blocks, {freed} bytes")),
        "{out}"
    );
    assert!(out.contains("kept 8 in use"), "{out}");
    assert_eq!(stored(&server.addr).await, (8, 8 * BLOCK_SIZE as i64));

    let fresh = tempfile::tempdir().unwrap();
    sync_ok(fresh.path(), &server.addr, BLOCK_SIZE);
    assert_eq!(synced_files(fresh.path()), synced_files(client.path()));
    assert_eq!(synced_files(fresh.path()).len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gc_frees_what_no_current_version_lists_in_memory() {
    gc_frees_what_no_current_version_lists(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gc_frees_what_no_current_version_lists_on_disk() {
    let dir = tempfile::tempdir().unwrap();
    gc_frees_what_no_current_version_lists(Some(dir.path())).await;
}

#[test]
fn gc_refuses_a_bad_duration_as_a_usage_error() {
    let out = run(
        &bin("surfstore-ctl"),
        &["gc", "-f", "nowhere.json", "--older-than", "soon"],
    );
    assert_eq!(out.status.code(), Some(64));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gc_reads_the_map_from_the_raft_leader() {
    let cluster = start_cluster(3, &[]).await;
    cluster.set_leader(1).await;
    assert!(cluster.heartbeat(1).await);
    let client = tempfile::tempdir().unwrap();
    write(client.path(), "a.bin", blocks(4, 5));
    let synced = |what: &str| {
        let (out, _) = cluster.sync(client.path(), BLOCK_SIZE);
        assert!(
            out.status.success(),
            "{what}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    synced("upload");
    write(client.path(), "a.bin", blocks(4, 6));
    synced("rewrite");
    // Server 0, first in the config, follows: gc finds the leader.
    let out = gc(&cluster.config, "0s");
    let freed = 4 * BLOCK_SIZE;
    assert!(
        out.contains(&format!("freed 4 blocks, {freed} bytes")),
        "{out}"
    );
    assert!(out.contains("kept 4 in use"), "{out}");
    let fresh = tempfile::tempdir().unwrap();
    let (out, _) = cluster.sync(fresh.path(), BLOCK_SIZE);
    assert!(out.status.success());
    assert_eq!(synced_files(fresh.path()), synced_files(client.path()));
}
