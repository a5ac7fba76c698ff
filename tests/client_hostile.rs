//! `surfstore-client` against a hostile MetaStore and BlockStore served from
//! inside the test: names that try to leave the base directory, entries
//! that are not block hashes, a key that disagrees with its filename, and
//! blocks whose bytes do not match their hash. The client must refuse each
//! with a clear error, write nothing outside the base directory, leave the
//! local files it cannot update untouched, and still sync the rest.

// Test code: a failed unwrap is a failed test, with its location.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashMap;
use std::fs;

use bytes::Bytes;
use common::{index_text, runtime, serve, sync, tree, write};
use surfstore::hash::hash_block;
use surfstore::proto::{
    Block, BlockHash, BlockHashes, BlockStoreAddr, Blocks, FileInfoMap, FileMetaData, Success,
    Version, block_store_server, meta_store_server,
};
use tonic::{Request, Response, Status};

/// A MetaStore that serves a fixed map and accepts nothing.
struct HostileMeta {
    map: HashMap<String, FileMetaData>,
    block_addr: String,
}

#[tonic::async_trait]
impl meta_store_server::MetaStore for HostileMeta {
    async fn get_file_info_map(&self, _: Request<()>) -> Result<Response<FileInfoMap>, Status> {
        Ok(Response::new(FileInfoMap {
            file_info_map: self.map.clone(),
        }))
    }
    async fn update_file(&self, _: Request<FileMetaData>) -> Result<Response<Version>, Status> {
        Ok(Response::new(Version { version: -1 }))
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

/// A BlockStore that answers from a fixed table, whatever the hash asked.
struct HostileBlocks {
    blocks: HashMap<String, Bytes>,
}

#[tonic::async_trait]
impl block_store_server::BlockStore for HostileBlocks {
    crate::lacks_gc_calls!();
    async fn get_block(&self, r: Request<BlockHash>) -> Result<Response<Block>, Status> {
        let data = self.blocks.get(&r.into_inner().hash).cloned();
        let data = data.ok_or_else(|| Status::not_found("no such block"))?;
        Ok(Response::new(Block {
            block_size: data.len() as i32,
            block_data: data,
        }))
    }
    async fn put_block(&self, _: Request<Block>) -> Result<Response<Success>, Status> {
        Ok(Response::new(Success { flag: false }))
    }
    async fn has_blocks(&self, _: Request<BlockHashes>) -> Result<Response<BlockHashes>, Status> {
        Ok(Response::new(BlockHashes { hashes: vec![] }))
    }
    async fn put_blocks(&self, _: Request<Blocks>) -> Result<Response<Success>, Status> {
        Ok(Response::new(Success { flag: false }))
    }
    async fn get_blocks(&self, r: Request<BlockHashes>) -> Result<Response<Blocks>, Status> {
        let mut blocks = Vec::new();
        for hash in r.into_inner().hashes {
            let data = self.blocks.get(&hash).cloned();
            let data = data.ok_or_else(|| Status::not_found("no such block"))?;
            blocks.push(Block {
                block_size: data.len() as i32,
                block_data: data,
            });
        }
        Ok(Response::new(Blocks { blocks }))
    }
}

fn meta(name: &str, version: i32, hashes: &[&str]) -> FileMetaData {
    FileMetaData {
        filename: name.to_string(),
        version,
        block_hash_list: hashes.iter().map(|h| h.to_string()).collect(),
    }
}

#[test]
fn hostile_names_hashes_and_blocks_are_refused_and_the_rest_syncs() {
    let good = hash_block(b"good data");
    let lying = hash_block(b"what the name promises");
    let escaping = [
        "../escape",
        "../../etc/evil",
        "/abs/path",
        "a//b",
        "a/./b",
        "trailing/",
        "nul\0byte",
        "",
        "dir/../../up",
        "..",
        "index.txt",
        "d/.surfstore-tmp-planted",
    ];
    let mut map: HashMap<String, FileMetaData> = escaping
        .iter()
        .map(|name| (name.to_string(), meta(name, 1, &[&good])))
        .collect();
    for (name, entry) in [
        ("ok/fine.txt", meta("ok/fine.txt", 1, &[&good])),
        // The key names the file; a filename field that disagrees is ignored.
        ("mismatch.txt", meta("../mismatch", 1, &[&good])),
        ("corrupt.txt", meta("corrupt.txt", 2, &[&good, &lying])),
        ("notahash.txt", meta("notahash.txt", 1, &["../../x"])),
    ] {
        map.insert(name.to_string(), entry);
    }

    let rt = runtime();
    let blocks = HostileBlocks {
        blocks: HashMap::from([
            (good.clone(), Bytes::from_static(b"good data")),
            (lying.clone(), Bytes::from_static(b"something else")),
        ]),
    };
    let block_addr = serve(
        &rt,
        tonic::transport::Server::builder()
            .add_service(block_store_server::BlockStoreServer::new(blocks)),
    );
    let meta_addr = serve(
        &rt,
        tonic::transport::Server::builder().add_service(meta_store_server::MetaStoreServer::new(
            HostileMeta { map, block_addr },
        )),
    );

    let parent = tempfile::tempdir().unwrap();
    let base = parent.path().join("base");
    fs::create_dir(&base).unwrap();
    write(&base, "corrupt.txt", "my local copy");
    let out = sync(&base, &meta_addr, 1024);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    for needle in [
        "refusing the server's file name",
        "`..` segment",
        "absolute path",
        "empty or `.` segment",
        "NUL",
        "reserved",
        "is corrupt",
        "not a block hash",
        "not synced",
    ] {
        assert!(stderr.contains(needle), "{needle:?} not in {stderr}");
    }

    // Nothing outside the base directory.
    let outside: Vec<_> = fs::read_dir(parent.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(outside, ["base"]);
    // Good files synced; the corrupt one keeps the local copy; no planted
    // or temporary files.
    let expected = [
        ("corrupt.txt", &b"my local copy"[..]),
        ("mismatch.txt", b"good data"),
        ("ok/fine.txt", b"good data"),
    ];
    let got = tree(&base);
    assert_eq!(
        got.iter()
            .map(|(k, v)| (k.as_str(), v.as_slice()))
            .collect::<Vec<_>>(),
        expected
    );
    // The index records exactly what was synced.
    let index = index_text(&base);
    let names: Vec<&str> = index
        .lines()
        .map(|l| l.split(',').next().unwrap())
        .collect();
    assert_eq!(names, ["mismatch.txt", "ok/fine.txt"], "{index}");
}
