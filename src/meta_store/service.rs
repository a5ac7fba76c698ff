//! The tonic `MetaStore` service: one in-memory [`FileMap`], no replication.

use std::sync::Mutex;

use tonic::{Request, Response, Status};

use super::FileMap;
use crate::proto::{BlockStoreAddr, FileInfoMap, FileMetaData, Version, meta_store_server};

/// Serves `GetFileInfoMap`, `UpdateFile` and `GetBlockStoreAddr`.
pub struct MetaStoreService {
    map: Mutex<FileMap>,
    block_store_addr: String,
}

impl MetaStoreService {
    /// A service with an empty map that points clients at `block_store_addr`.
    pub fn new(block_store_addr: String) -> Self {
        Self {
            map: Mutex::new(FileMap::default()),
            block_store_addr,
        }
    }

    /// The tonic server for this service, with the project's message limits.
    pub fn into_server(self) -> meta_store_server::MetaStoreServer<Self> {
        meta_store_server::MetaStoreServer::new(self)
            .max_decoding_message_size(crate::grpc::MAX_MESSAGE_BYTES)
            .max_encoding_message_size(crate::grpc::MAX_MESSAGE_BYTES)
    }

    fn map(&self) -> std::sync::MutexGuard<'_, FileMap> {
        // FileMap::apply never leaves the map half-updated, so a poisoned
        // lock still guards a consistent map.
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[tonic::async_trait]
impl meta_store_server::MetaStore for MetaStoreService {
    async fn get_file_info_map(
        &self,
        _request: Request<()>,
    ) -> Result<Response<FileInfoMap>, Status> {
        Ok(Response::new(self.map().to_proto()))
    }

    async fn update_file(
        &self,
        request: Request<FileMetaData>,
    ) -> Result<Response<Version>, Status> {
        let meta = request.into_inner();
        let name = meta.filename.clone();
        let version = self.map().apply(meta);
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
