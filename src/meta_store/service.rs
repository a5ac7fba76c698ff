//! The tonic `MetaStore` service: one [`JournaledMap`], no replication.

use std::sync::Arc;

use bytes::Bytes;
use tonic::{Request, Response, Status};

use super::{EncodedMapServer, FileMap, JournaledMap, MapChanges, MapSource, UpdateError};
use crate::grpc;
use crate::proto::{BlockStoreAddr, FileInfoMap, FileMetaData, Version, meta_store_server};

/// Serves `GetFileInfoMap`, `UpdateFile` and `GetBlockStoreAddr`.
#[derive(Clone)]
pub struct MetaStoreService {
    map: Arc<JournaledMap>,
    block_store_addr: String,
    changes: MapChanges,
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
            map: Arc::new(map),
            block_store_addr,
            changes: MapChanges::default(),
        }
    }

    /// Where this service announces each accepted update, for the
    /// `MapWatch` service.
    pub fn changes(&self) -> MapChanges {
        self.changes.clone()
    }

    /// The tonic server for this service, with the project's message limits,
    /// answering `GetFileInfoMap` from the map's shared encoding.
    pub fn into_server(self) -> EncodedMapServer<meta_store_server::MetaStoreServer<Self>, Self> {
        let server = meta_store_server::MetaStoreServer::new(self.clone())
            .max_decoding_message_size(grpc::MAX_MESSAGE_BYTES)
            .max_encoding_message_size(grpc::MAX_MESSAGE_BYTES);
        EncodedMapServer::new(server, self)
    }
}

impl MapSource for MetaStoreService {
    async fn encoded_map(&self) -> Result<Bytes, Status> {
        Ok(self.map.read(FileMap::encoded))
    }
}

#[tonic::async_trait]
impl meta_store_server::MetaStore for MetaStoreService {
    /// Reached only when the service is served without
    /// [`MetaStoreService::into_server`], which answers from the encoding.
    async fn get_file_info_map(
        &self,
        _request: Request<()>,
    ) -> Result<Response<FileInfoMap>, Status> {
        Ok(Response::new(self.map.read(FileMap::to_proto)))
    }

    async fn update_file(
        &self,
        request: Request<FileMetaData>,
    ) -> Result<Response<Version>, Status> {
        let meta = request.into_inner();
        let name = meta.filename.clone();
        let version = self.map.update(meta).await.map_err(|e| match e {
            UpdateError::TooLarge(e) => {
                Status::resource_exhausted(format!("update of {name:?} refused: {e}"))
            }
            e => {
                tracing::error!(file = %name, error = %e, "UpdateFile not stored");
                Status::internal(format!("update of {name:?} could not be stored: {e}"))
            }
        })?;
        tracing::debug!(file = %name, version, "UpdateFile");
        if version != super::REJECTED_VERSION {
            self.changes.bump();
        }
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
