//! The tonic `MetaStore` service: one [`JournaledMap`], no replication.

use std::sync::{Arc, Mutex, MutexGuard};

use tonic::{Request, Response, Status};

use super::JournaledMap;
use crate::grpc;
use crate::proto::{BlockStoreAddr, FileInfoMap, FileMetaData, Version, meta_store_server};

/// Serves `GetFileInfoMap`, `UpdateFile` and `GetBlockStoreAddr`.
pub struct MetaStoreService {
    map: Arc<Mutex<JournaledMap>>,
    block_store_addr: String,
}

impl MetaStoreService {
    /// A service with an empty in-memory map that points clients at
    /// `block_store_addr`.
    pub fn new(block_store_addr: String) -> Self {
        Self::with_map(block_store_addr, JournaledMap::in_memory())
    }

    /// A service serving `map` (e.g. one opened from `--data-dir`).
    pub fn with_map(block_store_addr: String, map: JournaledMap) -> Self {
        Self {
            map: Arc::new(Mutex::new(map)),
            block_store_addr,
        }
    }

    /// The tonic server for this service, with the project's message limits.
    pub fn into_server(self) -> meta_store_server::MetaStoreServer<Self> {
        meta_store_server::MetaStoreServer::new(self)
            .max_decoding_message_size(grpc::MAX_MESSAGE_BYTES)
            .max_encoding_message_size(grpc::MAX_MESSAGE_BYTES)
    }
}

fn lock(map: &Mutex<JournaledMap>) -> MutexGuard<'_, JournaledMap> {
    // An update changes the map only after its journal write succeeded, in
    // one step, so a poisoned lock still guards a consistent map.
    crate::locks::lock(map)
}

/// Applies `meta` to `map` under the version rule, unless the map would
/// then be too large for a `GetFileInfoMap` reply.
fn store(map: &Mutex<JournaledMap>, meta: FileMetaData) -> Result<i32, Status> {
    let name = meta.filename.clone();
    let mut map = lock(map);
    if map.map().accepts(&meta) {
        let after = map.map().len_after(&meta);
        grpc::fits("GetFileInfoMap's reply", after, grpc::MAX_MESSAGE_BYTES)
            .map_err(|e| Status::resource_exhausted(format!("update of {name:?} refused: {e}")))?;
    }
    map.update(meta).map_err(|e| {
        tracing::error!(file = %name, error = %e, "UpdateFile not stored");
        Status::internal(format!("update of {name:?} could not be stored: {e}"))
    })
}

#[tonic::async_trait]
impl meta_store_server::MetaStore for MetaStoreService {
    async fn get_file_info_map(
        &self,
        _request: Request<()>,
    ) -> Result<Response<FileInfoMap>, Status> {
        Ok(Response::new(lock(&self.map).map().to_proto()))
    }

    async fn update_file(
        &self,
        request: Request<FileMetaData>,
    ) -> Result<Response<Version>, Status> {
        let meta = request.into_inner();
        let name = meta.filename.clone();
        let map = Arc::clone(&self.map);
        // The journal's fsync blocks, so it runs on the blocking pool.
        let version = tokio::task::spawn_blocking(move || store(&map, meta))
            .await
            .map_err(|e| Status::internal(format!("update task failed: {e}")))??;
        tracing::debug!(file = %name, version, "UpdateFile");
        Ok(Response::new(Version { version }))
    }

    async fn get_block_store_addr(
        &self,
        _request: Request<()>,
    ) -> Result<Response<BlockStoreAddr>, Status> {
        Ok(Response::new(BlockStoreAddr {
            addr: self.block_store_addr.clone(),
        }))
    }
}
