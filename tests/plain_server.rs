//! `surfstore-server` from the outside: its command line, and BlockStore and
//! MetaStore conformance over the wire (SPEC §2–4), with independent tonic
//! clients.

// Test code: a failed unwrap is a failed test, with its location.
#![allow(clippy::unwrap_used)]

mod common;

use bytes::Bytes;
use common::{
    LARGE_UPDATE_BYTES, Server, assert_refused_at_reply_limit, assert_status, bin, block_client,
    command, command_on, file_meta, free_ports, large_meta, loopback_listener, meta_client,
    raft_client, run, start_server, update_until_refused,
};
use surfstore::hash::hash_block;
use surfstore::proto::block_store_client::BlockStoreClient;
use surfstore::proto::{Block, BlockHash, BlockHashes, Blocks, FileMetaData};
use tonic::Code;
use tonic::transport::Channel;

#[test]
fn bad_arguments_exit_64_with_usage() {
    for args in [
        &[][..],
        &["-s", "nope"][..],
        &["-s", "meta"][..],
        &["-s", "both", "-p", "notaport"][..],
        &["-s", "block", "--bogus"][..],
        &["-s", "both", "not-an-address"][..],
    ] {
        let out = run(&bin("surfstore-server"), args);
        assert_eq!(out.status.code(), Some(64), "{args:?}");
        assert!(!out.stderr.is_empty(), "{args:?} printed no usage");
    }
}

/// A socket handed over by socket activation that does not fit is refused
/// in one line that says why (exit 64), instead of serving where no client
/// looks: one listening on another port than `-p`, or `LISTEN_FDS` with
/// nothing at fd 3.
#[test]
fn a_handed_over_socket_that_does_not_fit_is_refused() {
    let listener = loopback_listener();
    let handed = listener.local_addr().unwrap().port();
    let other = free_ports(1)[0].to_string();
    let server = bin("surfstore-server");
    let args = ["-s", "both", "-p", &other, "-l"];
    let out = command_on(listener, &server).args(args).output().unwrap();
    let message = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{message}");
    assert!(
        message.contains(&format!("listens on port {handed}"))
            && message.contains(&format!("has port {other}")),
        "{message}"
    );
    assert_eq!(message.lines().count(), 1, "{message}");

    let out = command(&server)
        .env("LISTEN_FDS", "1")
        .args(args)
        .output()
        .unwrap();
    let message = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{message}");
    assert!(message.contains("fd 3"), "{message}");
}

fn block(data: impl Into<Bytes>) -> Block {
    let data = data.into();
    Block {
        block_size: i32::try_from(data.len()).unwrap(),
        block_data: data,
    }
}

/// After a bad request the server must still be alive and serving.
async fn assert_still_serves(server: &mut Server, blocks: &mut BlockStoreClient<Channel>) {
    let probe = block(&b"still alive?"[..]);
    let reply = blocks.put_block(probe.clone()).await;
    assert!(
        reply.is_ok_and(|r| r.into_inner().flag),
        "server stopped serving"
    );
    let back = blocks
        .get_block(BlockHash {
            hash: hash_block(&probe.block_data),
        })
        .await
        .expect("GetBlock after a bad request");
    assert_eq!(back.into_inner(), probe);
    assert!(!server.proc.has_exited(), "server process exited");
}

#[tokio::test]
async fn blocks_round_trip() {
    let server = start_server("both", &[]);
    let mut blocks = block_client(&server.addr);
    let stored = [block(&b"hello block"[..]), block(Bytes::new())];
    let absent = hash_block(b"never stored");

    for b in &stored {
        let ok = blocks.put_block(b.clone()).await.unwrap().into_inner();
        assert!(ok.flag);
        // Storing the same block twice is harmless.
        assert!(blocks.put_block(b.clone()).await.unwrap().into_inner().flag);
    }
    for b in &stored {
        let hash = hash_block(&b.block_data);
        let got = blocks.get_block(BlockHash { hash }).await.unwrap();
        assert_eq!(&got.into_inner(), b);
    }

    let mut asked: Vec<String> = stored.iter().map(|b| hash_block(&b.block_data)).collect();
    asked.insert(1, absent.clone());
    let present = blocks
        .has_blocks(BlockHashes {
            hashes: asked.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .hashes;
    let mut expected: Vec<String> = asked.into_iter().filter(|h| *h != absent).collect();
    let mut present_sorted = present;
    present_sorted.sort();
    expected.sort();
    assert_eq!(present_sorted, expected);

    let none = blocks
        .has_blocks(BlockHashes { hashes: vec![] })
        .await
        .unwrap()
        .into_inner();
    assert!(none.hashes.is_empty());
}

#[tokio::test]
async fn get_block_of_unknown_hash_is_not_found() {
    let mut server = start_server("both", &[]);
    let mut blocks = block_client(&server.addr);
    let hash = hash_block(b"unknown");
    let status = blocks
        .get_block(BlockHash { hash })
        .await
        .expect_err("unknown block");
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
    assert_still_serves(&mut server, &mut blocks).await;
}

#[tokio::test]
async fn malformed_hashes_are_invalid_argument() {
    let mut server = start_server("both", &[]);
    let mut blocks = block_client(&server.addr);
    let valid = hash_block(b"x");
    let malformed = [
        ("empty", String::new()),
        ("short", "abc".to_string()),
        ("uppercase", valid.to_uppercase()),
        ("non-hex", format!("{}z", &valid[..63])),
        ("one too long", format!("{valid}0")),
        ("huge", "a".repeat(1 << 20)),
        ("tombstone marker", "0".to_string()),
    ];
    for (what, hash) in malformed {
        assert_status(
            blocks.get_block(BlockHash { hash: hash.clone() }).await,
            Code::InvalidArgument,
            "hash",
            &format!("GetBlock of a {what} hash"),
        );
        assert_still_serves(&mut server, &mut blocks).await;
        assert_status(
            blocks
                .has_blocks(BlockHashes {
                    hashes: vec![valid.clone(), hash],
                })
                .await,
            Code::InvalidArgument,
            "hash",
            &format!("HasBlocks with a {what} hash"),
        );
        assert_still_serves(&mut server, &mut blocks).await;
    }
}

#[tokio::test]
async fn block_size_disagreeing_with_data_is_invalid_argument() {
    let mut server = start_server("both", &[]);
    let mut blocks = block_client(&server.addr);
    let data = Bytes::from_static(b"ten bytes!");
    for size in [11, 9, 0, -1, i32::MAX, i32::MIN] {
        let bad = Block {
            block_data: data.clone(),
            block_size: size,
        };
        assert_status(
            blocks.put_block(bad).await,
            Code::InvalidArgument,
            "blockSize",
            &format!("PutBlock of 10 bytes with blockSize {size}"),
        );
        assert_still_serves(&mut server, &mut blocks).await;
    }
    // Nothing was stored under the data's hash.
    let status = blocks
        .get_block(BlockHash {
            hash: hash_block(&data),
        })
        .await
        .expect_err("a rejected block must not be stored");
    assert_eq!(status.code(), Code::NotFound);
}

#[tokio::test]
async fn batched_blocks_round_trip_in_order() {
    let server = start_server("both", &[]);
    let mut blocks = block_client(&server.addr);
    let stored: Vec<Block> = (0..300u32)
        .map(|i| block(i.to_le_bytes().repeat(i as usize % 7)))
        .collect();
    let reply = blocks
        .put_blocks(Blocks {
            blocks: stored.clone(),
        })
        .await
        .unwrap();
    assert!(reply.into_inner().flag);
    // Reversed, with a repeat: the reply follows the question.
    let mut asked: Vec<Block> = stored.iter().rev().cloned().collect();
    asked.push(stored[5].clone());
    let hashes = asked.iter().map(|b| hash_block(&b.block_data)).collect();
    let got = blocks
        .get_blocks(BlockHashes { hashes })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.blocks, asked);
    // Each one is also there for the original's calls.
    let one = blocks
        .get_block(BlockHash {
            hash: hash_block(&stored[42].block_data),
        })
        .await
        .unwrap();
    assert_eq!(one.into_inner(), stored[42]);
}

#[tokio::test]
async fn a_bad_block_in_a_batch_stores_none_and_unknown_or_bad_hashes_fail() {
    let mut server = start_server("both", &[]);
    let mut blocks = block_client(&server.addr);
    let good = block(&b"good"[..]);
    let mut bad = block(&b"bad"[..]);
    bad.block_size = 99;
    assert_status(
        blocks
            .put_blocks(Blocks {
                blocks: vec![good.clone(), bad],
            })
            .await,
        Code::InvalidArgument,
        "blockSize",
        "PutBlocks with one lying blockSize",
    );
    assert_still_serves(&mut server, &mut blocks).await;
    let hash = hash_block(&good.block_data);
    let status = blocks
        .get_block(BlockHash { hash: hash.clone() })
        .await
        .expect_err("nothing of a refused batch is stored");
    assert_eq!(status.code(), Code::NotFound);

    let probe = hash_block(b"still alive?");
    let unknown = hash_block(b"unknown");
    assert_status(
        blocks
            .get_blocks(BlockHashes {
                hashes: vec![probe.clone(), unknown.clone()],
            })
            .await,
        Code::NotFound,
        &unknown,
        "GetBlocks with an unknown hash",
    );
    assert_status(
        blocks
            .get_blocks(BlockHashes {
                hashes: vec![probe, "../x".to_string()],
            })
            .await,
        Code::InvalidArgument,
        "hash",
        "GetBlocks with a malformed hash",
    );
    assert_still_serves(&mut server, &mut blocks).await;
}

#[tokio::test]
async fn get_blocks_answers_a_prefix_of_at_most_4_mib_but_at_least_one_block() {
    let server = start_server("both", &[]);
    let mut blocks = block_client(&server.addr);
    let small: Vec<Block> = (0..3u8).map(|i| block(vec![i; 1 << 20])).collect();
    let large: Vec<Block> = (3..6u8).map(|i| block(vec![i; 5 << 20])).collect();
    for b in small.iter().chain(&large) {
        assert!(blocks.put_block(b.clone()).await.unwrap().into_inner().flag);
    }
    let mut get = async |asked: &[Block]| {
        let hashes = asked.iter().map(|b| hash_block(&b.block_data)).collect();
        let reply = blocks.get_blocks(BlockHashes { hashes }).await.unwrap();
        reply.into_inner().blocks
    };
    // Three 1 MiB blocks fit in one reply; a 5 MiB block after them does not.
    assert_eq!(get(&small).await, small);
    let mut mixed = small.clone();
    mixed.push(large[0].clone());
    assert_eq!(get(&mixed).await, small);
    // A block larger than the limit still comes, alone.
    assert_eq!(get(&large).await, large[..1]);
    assert_eq!(get(&large[1..]).await, large[1..2]);
}

#[tokio::test]
async fn a_64_mib_block_round_trips() {
    let server = start_server("both", &[]);
    let mut blocks = block_client(&server.addr);
    let mut data = vec![0x5a_u8; 64 << 20];
    // Make the content distinctive at both ends so truncation would show.
    data[0] = 1;
    data[(64 << 20) - 1] = 2;
    let hash = hash_block(&data);
    let big = block(data);
    assert!(
        blocks
            .put_block(big.clone())
            .await
            .unwrap()
            .into_inner()
            .flag
    );
    let back = blocks
        .get_block(BlockHash { hash: hash.clone() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(back.block_size, 64 << 20);
    assert_eq!(hash_block(&back.block_data), hash);
    assert!(back.block_data == big.block_data);
}

#[tokio::test]
async fn an_oversized_message_is_invalid_argument() {
    let mut server = start_server("both", &[]);
    let mut blocks = block_client(&server.addr);
    // Zeroed memory is cheap to allocate; only the encoder touches it.
    let oversized = block(vec![0_u8; surfstore::grpc::MAX_MESSAGE_BYTES + 1]);
    let status = blocks
        .put_block(oversized)
        .await
        .expect_err("an oversized PutBlock");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert_still_serves(&mut server, &mut blocks).await;
}

/// Every file of the server's map, sorted by name.
async fn files(server: &Server) -> Vec<FileMetaData> {
    let map = meta_client(&server.addr)
        .get_file_info_map(())
        .await
        .unwrap()
        .into_inner()
        .file_info_map;
    for (name, meta) in &map {
        assert_eq!(name, &meta.filename, "map key and filename differ");
    }
    let mut files: Vec<FileMetaData> = map.into_values().collect();
    files.sort_by(|a, b| a.filename.cmp(&b.filename));
    files
}

#[tokio::test]
async fn update_file_follows_the_version_rule() {
    let server = start_server("both", &[]);
    let mut meta = meta_client(&server.addr);
    let h1 = hash_block(b"one");
    let h2 = hash_block(b"two");
    assert!(files(&server).await.is_empty());

    let mut update =
        async |m: FileMetaData| meta.update_file(m).await.unwrap().into_inner().version;
    // (update, expected reply)
    let steps = [
        (file_meta("a.txt", 0, &[&h1]), -1),
        (file_meta("a.txt", 2, &[&h1]), -1),
        (file_meta("a.txt", 1, &[&h1]), 1),
        (file_meta("a.txt", 1, &[&h2]), -1),
        (file_meta("a.txt", 3, &[&h2]), -1),
        (file_meta("a.txt", 2, &[&h1, &h2]), 2),
        (file_meta("empty", 1, &[]), 1),
        (file_meta("a.txt", 3, &["0"]), 3),
        (file_meta("a.txt", 3, &[&h1]), -1),
        (file_meta("a.txt", 4, &[&h2]), 4),
        (file_meta("gone", 1, &[&h1]), 1),
        (file_meta("gone", 2, &["0"]), 2),
    ];
    for (m, expected) in steps {
        let what = format!("{m:?}");
        assert_eq!(update(m).await, expected, "{what}");
    }

    // Rejected updates changed nothing; tombstones and empty files are in the map.
    assert_eq!(
        files(&server).await,
        [
            file_meta("a.txt", 4, &[&h2]),
            file_meta("empty", 1, &[]),
            file_meta("gone", 2, &["0"]),
        ]
    );
}

#[tokio::test]
async fn both_announces_its_own_address_as_the_block_store() {
    let server = start_server("both", &[]);
    let addr = meta_client(&server.addr)
        .get_block_store_addr(())
        .await
        .unwrap()
        .into_inner()
        .addr;
    assert_eq!(addr, format!("localhost:{}", server.port));
}

#[tokio::test]
async fn split_servers_each_serve_only_their_service() {
    let block_server = start_server("block", &[]);
    let meta_server = start_server("meta", &[&block_server.addr]);

    let announced = meta_client(&meta_server.addr)
        .get_block_store_addr(())
        .await
        .unwrap()
        .into_inner()
        .addr;
    assert_eq!(announced, block_server.addr);

    // The announced address is a working BlockStore.
    let data = Bytes::from_static(b"split");
    let mut blocks = block_client(&announced);
    assert!(
        blocks
            .put_block(block(data.clone()))
            .await
            .unwrap()
            .into_inner()
            .flag
    );
    let hash = hash_block(&data);
    let present = blocks
        .has_blocks(BlockHashes {
            hashes: vec![hash.clone()],
        })
        .await
        .unwrap()
        .into_inner()
        .hashes;
    assert_eq!(present, std::slice::from_ref(&hash));

    let unimplemented = |result: Result<(), tonic::Status>, what: &str| {
        let status = result.expect_err(what);
        assert_eq!(status.code(), Code::Unimplemented, "{what}: {status:?}");
    };
    let mut on_meta = block_client(&meta_server.addr);
    unimplemented(
        on_meta
            .get_block(BlockHash { hash: hash.clone() })
            .await
            .map(drop),
        "GetBlock on -s meta",
    );
    unimplemented(
        on_meta.put_block(block(data.clone())).await.map(drop),
        "PutBlock on -s meta",
    );
    unimplemented(
        on_meta
            .has_blocks(BlockHashes { hashes: vec![hash] })
            .await
            .map(drop),
        "HasBlocks on -s meta",
    );

    let mut on_block = meta_client(&block_server.addr);
    unimplemented(
        on_block.get_file_info_map(()).await.map(drop),
        "GetFileInfoMap on -s block",
    );
    unimplemented(
        on_block.update_file(file_meta("f", 1, &[])).await.map(drop),
        "UpdateFile on -s block",
    );
    unimplemented(
        on_block.get_block_store_addr(()).await.map(drop),
        "GetBlockStoreAddr on -s block",
    );

    // A plain server is not a Raft server either.
    unimplemented(
        raft_client(&meta_server.addr)
            .get_internal_state(())
            .await
            .map(drop),
        "GetInternalState on -s meta",
    );
}

#[tokio::test]
async fn an_update_that_would_outgrow_get_file_info_map_is_refused() {
    let server = start_server("meta", &["localhost:8081"]);
    let mut meta = meta_client(&server.addr);
    let (accepted, refused) = update_until_refused(|n| {
        let mut meta = meta.clone();
        async move {
            let update = large_meta(&format!("f{n}"), 1, LARGE_UPDATE_BYTES);
            let version = meta.update_file(update).await?.into_inner().version;
            assert_eq!(version, 1);
            Ok(())
        }
    })
    .await;
    // Everything accepted can still be read in one reply.
    let map = meta
        .get_file_info_map(())
        .await
        .expect("GetFileInfoMap after the refusal")
        .into_inner()
        .file_info_map;
    assert_eq!(map.len(), accepted);
    assert_refused_at_reply_limit(accepted, refused);
    // A smaller update that fits is still accepted.
    let small = meta.update_file(file_meta("small", 1, &["h"])).await;
    assert_eq!(small.map(|v| v.into_inner().version).ok(), Some(1));
}

/// Reads share one encoded map: many at once get equal maps, and a read
/// after an acknowledged update sees it, whatever was read before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_reads_get_equal_maps_and_see_every_acknowledged_update() {
    let server = start_server("meta", &["localhost:1"]);
    let mut meta = meta_client(&server.addr);
    let h = hash_block(b"h");
    for i in 0..200 {
        let m = file_meta(&format!("dir/f{i}"), 1, &[&h]);
        assert_eq!(meta.update_file(m).await.unwrap().into_inner().version, 1);
    }
    let expected = meta.get_file_info_map(()).await.unwrap().into_inner();
    assert_eq!(expected.file_info_map.len(), 200);
    let readers: Vec<_> = (0..32)
        .map(|_| {
            let mut client = meta_client(&server.addr);
            tokio::spawn(async move { client.get_file_info_map(()).await.unwrap().into_inner() })
        })
        .collect();
    for reader in readers {
        assert_eq!(reader.await.unwrap(), expected);
    }
    for version in 2..5 {
        let m = file_meta("dir/f7", version, &["0"]);
        assert_eq!(
            meta.update_file(m.clone())
                .await
                .unwrap()
                .into_inner()
                .version,
            version
        );
        let map = meta.get_file_info_map(()).await.unwrap().into_inner();
        assert_eq!(map.file_info_map["dir/f7"], m);
        assert_eq!(map.file_info_map.len(), 200);
    }
}
