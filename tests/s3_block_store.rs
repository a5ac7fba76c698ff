//! The BlockStore on S3-compatible object storage (SPEC §9.4), end to end:
//! real `surfstore-server --s3` and `surfstore-client` processes against a
//! real SeaweedFS the tests start (see `common::s3`), plus the command-line
//! rules and an unreachable store, which need no store at all.

// Test code: a failed unwrap is a failed test, with its location.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Child, Output, Stdio};
use std::time::{Duration, Instant};

use common::s3::{BUCKET, SeaweedFs};
use common::{
    Server, bin, block_client, command, index_text, meta_client, pseudo_random, run, run_ok,
    start_server_with_env, sync_ok, sync_with, synced_files, write,
};
use surfstore::hash::{hash_block, is_valid_hash};
use surfstore::proto::{Block, BlockHash, BlockHashes};

/// How long a client may take to give up on a store that died under it.
const GIVE_UP_TIMEOUT: Duration = Duration::from_secs(120);

/// `surfstore-server -s <service> --s3 s3://BUCKET/<prefix> [extra...]`
/// pointed at `s3`.
fn s3_server(s3: &SeaweedFs, service: &str, prefix: &str, extra: &[&str]) -> Server {
    let url = format!("s3://{BUCKET}/{prefix}");
    let mut args = vec!["--s3", url.as_str()];
    args.extend_from_slice(extra);
    start_server_with_env(service, &args, &s3.env())
}

/// The distinct block hashes `dir/index.txt` lists.
fn indexed_hashes(dir: &Path) -> BTreeSet<String> {
    index_text(dir)
        .lines()
        .filter_map(|line| line.splitn(3, ',').nth(2))
        .flat_map(|hashes| hashes.split_whitespace().map(String::from))
        .filter(|hash| is_valid_hash(hash))
        .collect()
}

/// Files of several shapes: empty, one short block, many blocks with
/// repeats, and a last block shorter than the others.
fn sample_files(dir: &Path, big: usize) {
    write(dir, "empty.txt", b"");
    write(dir, "hello.txt", b"hello through S3\n");
    write(dir, "photos/big.bin", pseudo_random(big, 7));
    let block = pseudo_random(4096, 9);
    write(dir, "repeats.bin", block.repeat(5));
}

#[test]
fn sync_round_trips_through_s3_at_4_kib_and_4_mib_blocks() {
    let Some(s3) = SeaweedFs::start() else { return };
    for (block_size, prefix) in [(4096, "small-blocks"), (4 << 20, "large-blocks")] {
        let server = s3_server(&s3, "both", prefix, &[]);
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        sample_files(a.path(), 9 * (1 << 20) + 123);

        sync_ok(a.path(), &server.addr, block_size);
        sync_ok(b.path(), &server.addr, block_size);
        assert_eq!(
            synced_files(b.path()),
            synced_files(a.path()),
            "at {block_size}-byte blocks"
        );

        // Every block is one object PREFIX/<hash>, and nothing else is there.
        let expected: Vec<String> = indexed_hashes(a.path())
            .into_iter()
            .map(|hash| format!("{prefix}/{hash}"))
            .collect();
        assert_eq!(s3.keys(prefix), expected, "at {block_size}-byte blocks");
    }
}

#[test]
fn two_block_stores_on_one_bucket_serve_the_same_blocks() {
    let Some(s3) = SeaweedFs::start() else { return };
    let mut first = s3_server(&s3, "block", "shared", &[]);
    let second = s3_server(&s3, "block", "shared", &[]);
    let meta_dir = tempfile::tempdir().unwrap();
    let meta_dir_arg = meta_dir.path().to_str().unwrap();
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    sample_files(a.path(), 3 * (1 << 20));

    // Upload through the first BlockStore...
    let mut meta = start_server_with_env(
        "meta",
        &["--data-dir", meta_dir_arg, first.addr.as_str()],
        &[],
    );
    sync_ok(a.path(), &meta.addr, 4096);
    meta.proc.kill();
    first.proc.kill();

    // ...and download through the second, the first gone.
    let meta = start_server_with_env(
        "meta",
        &["--data-dir", meta_dir_arg, second.addr.as_str()],
        &[],
    );
    sync_ok(b.path(), &meta.addr, 4096);
    assert_eq!(synced_files(b.path()), synced_files(a.path()));

    let hashes: Vec<String> = indexed_hashes(a.path()).into_iter().collect();
    let present = s3.block_on(async {
        block_client(&second.addr)
            .has_blocks(BlockHashes {
                hashes: hashes.clone(),
            })
            .await
            .unwrap()
            .into_inner()
            .hashes
    });
    assert_eq!(present, hashes);
}

/// A `surfstore-client` running in the background, killed if the test
/// fails before it ends.
struct Background(Option<Child>);

impl Background {
    /// Starts `surfstore-client --retry-for 1 META_ADDR DIR BLOCKSIZE`: it
    /// gives up soon after its servers fail.
    fn sync(dir: &Path, addr: &str, block_size: usize) -> Background {
        let child = command(&bin("surfstore-client"))
            .args(["--retry-for", "1", addr, dir.to_str().unwrap()])
            .arg(block_size.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        Background(Some(child))
    }

    fn is_running(&mut self) -> bool {
        self.0
            .as_mut()
            .is_some_and(|child| child.try_wait().unwrap().is_none())
    }

    /// Waits (polling) for the client to end, and returns what it printed.
    fn finish(mut self) -> Output {
        let deadline = Instant::now() + GIVE_UP_TIMEOUT;
        while self.is_running() {
            assert!(
                Instant::now() < deadline,
                "client still running after {GIVE_UP_TIMEOUT:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        self.0.take().unwrap().wait_with_output().unwrap()
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Polls until `ready` holds while `client` still runs, then kills `s3`:
/// the store dies in the middle of the client's sync.
fn kill_store_when(
    s3: &mut SeaweedFs,
    client: &mut Background,
    ready: impl Fn(&SeaweedFs) -> bool,
) {
    let deadline = Instant::now() + GIVE_UP_TIMEOUT;
    while !ready(s3) {
        assert!(
            client.is_running(),
            "the sync ended before the test could kill the store"
        );
        assert!(Instant::now() < deadline, "the sync never got under way");
        std::thread::sleep(Duration::from_millis(10));
    }
    s3.kill();
}

/// Asserts a sync failed with one clear message saying the store is
/// unavailable.
fn assert_failed_cleanly(out: &Output, what: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{what} succeeded: {stderr}");
    assert!(
        stderr.contains("object store") && stderr.contains(BUCKET),
        "{what}: the error does not name the store: {stderr}"
    );
}

#[test]
fn a_store_killed_mid_sync_fails_the_sync_cleanly_and_the_rerun_completes() {
    let Some(mut s3) = SeaweedFs::start() else {
        return;
    };
    let prefix = "killed";
    let server = s3_server(&s3, "both", prefix, &[]);
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let big = pseudo_random(16 << 20, 11);
    write(a.path(), "big.bin", &big);

    // Upload: killed once the first blocks are in the bucket.
    let mut upload = Background::sync(a.path(), &server.addr, 4096);
    kill_store_when(&mut s3, &mut upload, |s3| !s3.keys(prefix).is_empty());
    assert_failed_cleanly(&upload.finish(), "the upload");
    assert_eq!(std::fs::read(a.path().join("big.bin")).unwrap(), big);
    let remote = s3.block_on(async {
        meta_client(&server.addr)
            .get_file_info_map(())
            .await
            .unwrap()
            .into_inner()
    });
    assert!(remote.file_info_map.is_empty(), "{remote:?}");

    s3.restart();
    sync_ok(a.path(), &server.addr, 4096);

    // Download: killed once the first blocks are written to the partial file.
    let mut download = Background::sync(b.path(), &server.addr, 4096);
    let partial_has_data = |_: &SeaweedFs| {
        std::fs::read_dir(b.path()).unwrap().any(|entry| {
            let entry = entry.unwrap();
            entry
                .file_name()
                .to_string_lossy()
                .starts_with(".surfstore-partial-")
                && entry.metadata().is_ok_and(|m| m.len() > 0)
        })
    };
    kill_store_when(&mut s3, &mut download, partial_has_data);
    assert_failed_cleanly(&download.finish(), "the download");
    assert!(
        !b.path().join("big.bin").exists(),
        "a half-downloaded file is in place"
    );
    assert!(
        !b.path().join("index.txt").exists() || !index_text(b.path()).contains("big.bin"),
        "index.txt lists a file that was not downloaded"
    );

    s3.restart();
    sync_ok(b.path(), &server.addr, 4096);
    assert_eq!(std::fs::read(b.path().join("big.bin")).unwrap(), big);
}

#[test]
fn a_corrupted_object_is_never_served_and_can_be_uploaded_again() {
    let Some(s3) = SeaweedFs::start() else { return };
    let prefix = "corrupted";
    let server = s3_server(&s3, "both", prefix, &[]);
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (one, two) = (b"the first block".to_vec(), b"the second block".to_vec());
    write(a.path(), "one.txt", &one);
    write(a.path(), "two.txt", &two);
    sync_ok(a.path(), &server.addr, 4096);
    let (hash_one, hash_two) = (hash_block(&one), hash_block(&two));
    s3.overwrite(&format!("{prefix}/{hash_one}"), b"tampered one");
    s3.overwrite(&format!("{prefix}/{hash_two}"), b"tampered two");

    // GetBlock answers NOT_FOUND and HasBlocks stops listing the block...
    let mut blocks = s3.block_on(async { block_client(&server.addr) });
    let status = s3
        .block_on(blocks.get_block(BlockHash {
            hash: hash_one.clone(),
        }))
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::NotFound, "{status:?}");
    let listed = s3
        .block_on(blocks.has_blocks(BlockHashes {
            hashes: vec![hash_one.clone()],
        }))
        .unwrap()
        .into_inner();
    assert!(listed.hashes.is_empty(), "{listed:?}");
    let kept = s3.keys(&format!("{prefix}/corrupt"));
    assert_eq!(kept, vec![format!("{prefix}/corrupt/{hash_one}")]);

    // ...a client downloading through GetBlocks never gets the bad bytes...
    let out = sync_with(b.path(), &server.addr, 4096, &["--retry-for", "1"]);
    assert!(!out.status.success());
    for name in ["one.txt", "two.txt"] {
        let got = std::fs::read(b.path().join(name)).ok();
        assert!(
            got.is_none() || got.as_deref() == std::fs::read(a.path().join(name)).ok().as_deref(),
            "{name} was served corrupt"
        );
    }
    assert!(!b.path().join("two.txt").exists());

    // ...and the block, uploaded again, is served again.
    let block = Block {
        block_size: one.len() as i32,
        block_data: one.clone().into(),
    };
    assert!(
        s3.block_on(blocks.put_block(block))
            .unwrap()
            .into_inner()
            .flag
    );
    let got = s3
        .block_on(blocks.get_block(BlockHash { hash: hash_one }))
        .unwrap()
        .into_inner();
    assert_eq!(got.block_data, one);
}

#[test]
fn an_unreachable_store_is_unavailable_naming_the_store() {
    let port = common::free_ports(1)[0];
    let env: Vec<(String, String)> = [
        ("AWS_ACCESS_KEY_ID", "key"),
        ("AWS_SECRET_ACCESS_KEY", "secret"),
        ("AWS_REGION", "us-east-1"),
        ("AWS_ENDPOINT_URL", &format!("http://127.0.0.1:{port}")),
        ("AWS_ALLOW_HTTP", "true"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let server = start_server_with_env("block", &["--s3", "s3://nowhere/blocks"], &env);
    let runtime = common::runtime();
    let status = runtime
        .block_on(async {
            block_client(&server.addr)
                .has_blocks(BlockHashes {
                    hashes: vec![hash_block(b"x")],
                })
                .await
        })
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    assert!(
        status.message().contains("s3://nowhere/blocks"),
        "{status:?}"
    );
}

#[test]
fn s3_with_a_data_dir_a_meta_store_or_a_bad_url_is_a_usage_error() {
    let server = bin("surfstore-server");
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path().to_str().unwrap();
    for args in [
        &["-s", "block", "--s3", "s3://b/p", "--data-dir", dir][..],
        &["-s", "both", "--s3", "s3://b", "--data-dir", dir],
        &["-s", "meta", "--s3", "s3://b", "localhost:1"],
        &["-s", "block", "--s3", "http://b/p"],
        &["-s", "block", "--s3", "s3:///p"],
    ] {
        let out = run(&server, args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{args:?}: {stderr}");
        assert!(
            stderr.contains("--s3") || stderr.contains("s3://"),
            "{args:?}: {stderr}"
        );
    }
}

#[test]
fn make_demo_s3_syncs_through_the_bucket_and_lists_its_objects() {
    let Some(weed) = common::s3::weed() else {
        return;
    };
    let stdout = run_ok(
        std::process::Command::new("bash")
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/demo-s3.sh"))
            .env("SURFSTORE_WEED", weed)
            .env("BIN", bin("surfstore-server").parent().unwrap())
            .env("DEMO_PORT", common::consecutive_free_ports(10).to_string()),
    );
    assert!(stdout.contains("bob has exactly alice's files"), "{stdout}");
    let objects = stdout
        .lines()
        .filter(|line| line.strip_prefix("blocks/").is_some_and(is_valid_hash))
        .count();
    // 50000 random bytes in 4 KiB blocks, and one short file.
    assert_eq!(objects, 13 + 1, "{stdout}");
}
