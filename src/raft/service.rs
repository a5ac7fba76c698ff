//! The tonic face of a [`RaftNode`]: the `RaftSurfstore` service of SPEC §5,
//! and the plain `MetaStore` service on the same node so clients written for
//! a single MetaStore can talk to a Raft server too.

use std::future::Future;

use bytes::Bytes;
use prost::Message;
use tonic::{Request, Response, Status};

use super::node::{NodeConfig, NodeError, RaftNode, StartError};
use super::storage::RaftStorage;
use super::{AppendRequest, SnapshotChunk, VoteAsk};
use crate::grpc::MAX_MESSAGE_BYTES;
use crate::meta_store::{EncodedMapServer, MapSource};
use crate::proto::{
    AppendEntryInput, AppendEntryOutput, BlockStoreAddr, CrashedState, FileInfoMap, FileMetaData,
    InstallSnapshotInput, InstallSnapshotOutput, RaftInternalState, RequestVoteInput,
    RequestVoteOutput, Success, Version, meta_store_server, raft_surfstore_server,
};
use crate::security::{ClientSecurity, ServerSecurity};

/// Serves one node over gRPC.
#[derive(Clone)]
pub struct RaftService {
    node: RaftNode,
}

impl RaftService {
    /// A service answering for `node`.
    pub fn new(node: RaftNode) -> Self {
        Self { node }
    }

    /// The `RaftSurfstore` tonic server, with the project's message limits,
    /// answering `GetFileInfoMap` from the map's shared encoding.
    pub fn raft_server(
        &self,
    ) -> EncodedMapServer<raft_surfstore_server::RaftSurfstoreServer<Self>, Self> {
        let server = raft_surfstore_server::RaftSurfstoreServer::new(self.clone())
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES);
        EncodedMapServer::new(server, self.clone())
    }

    /// The `MetaStore` tonic server over the same node, likewise.
    pub fn meta_server(&self) -> EncodedMapServer<meta_store_server::MetaStoreServer<Self>, Self> {
        let server = meta_store_server::MetaStoreServer::new(self.clone())
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES);
        EncodedMapServer::new(server, self.clone())
    }

    /// Reached only when served without [`RaftService::raft_server`] or
    /// [`RaftService::meta_server`], which send the encoding as it is.
    async fn file_info_map(&self) -> Result<Response<FileInfoMap>, Status> {
        let encoded = self.node.file_info_map().await?;
        FileInfoMap::decode(encoded)
            .map(Response::new)
            .map_err(|e| Status::internal(format!("cannot decode the map: {e}")))
    }

    async fn update_file(&self, meta: FileMetaData) -> Result<Response<Version>, Status> {
        let version = self.node.update_file(meta).await?;
        Ok(Response::new(Version { version }))
    }

    async fn block_store_addr(&self) -> Result<Response<BlockStoreAddr>, Status> {
        let addr = self.node.confirmed_block_store_addr().await?;
        Ok(Response::new(BlockStoreAddr { addr }))
    }
}

impl MapSource for RaftService {
    async fn encoded_map(&self) -> Result<Bytes, Status> {
        Ok(self.node.file_info_map().await?)
    }
}

/// Why a Raft server stopped serving.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The node could not start.
    #[error(transparent)]
    Start(#[from] StartError),
    /// The gRPC server failed.
    #[error("gRPC server failed: {0}")]
    Transport(#[from] tonic::transport::Error),
    /// The node could not persist its state and stopped serving.
    #[error("cannot persist raft state; stopping")]
    Storage,
}

/// A Raft server's security: what it enforces on its callers, and how it
/// calls its peers.
#[derive(Debug, Clone, Default)]
pub struct Security {
    /// TLS and tokens for its own listener.
    pub server: ServerSecurity,
    /// TLS and the peer token for its calls to the others.
    pub peers: ClientSecurity,
}

/// Runs one Raft server on `listener` until `shutdown` completes (then
/// `Ok`) or its storage fails: starts the node from `storage`, and serves
/// `RaftSurfstore`, `MetaStore` and `MapWatch` over it. The binary only parses its
/// arguments; a test can hand over a listener it bound itself.
pub async fn serve(
    listener: tokio::net::TcpListener,
    config: NodeConfig,
    storage: Box<dyn RaftStorage>,
    security: Security,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServeError> {
    let node = RaftNode::start(config, storage, &security.peers)?;
    let service = RaftService::new(node.clone());
    let serve = crate::grpc::secure_server(&security.server)
        .add_service(service.raft_server())
        .add_service(service.meta_server())
        .add_service(node.map_changes().into_server())
        .serve_with_incoming_shutdown(
            crate::grpc::secure_incoming(listener, &security.server),
            shutdown,
        );
    tokio::select! {
        served = serve => Ok(served?),
        () = node.failed() => Err(ServeError::Storage),
    }
}

impl From<NodeError> for Status {
    fn from(error: NodeError) -> Self {
        match error {
            NodeError::Crashed | NodeError::Failed => Status::unavailable(error.to_string()),
            NodeError::NotLeader { .. } | NodeError::TermExhausted(_) => {
                Status::failed_precondition(error.to_string())
            }
            NodeError::TooLarge(_) => Status::resource_exhausted(error.to_string()),
            NodeError::BadSnapshot(_) => Status::invalid_argument(error.to_string()),
        }
    }
}

fn success(flag: bool) -> Response<Success> {
    Response::new(Success { flag })
}

#[tonic::async_trait]
impl raft_surfstore_server::RaftSurfstore for RaftService {
    async fn append_entries(
        &self,
        request: Request<AppendEntryInput>,
    ) -> Result<Response<AppendEntryOutput>, Status> {
        // Checked here, once, so the core never sees a value no leader sends.
        let request = AppendRequest::try_from(request.into_inner())
            .map_err(|e| Status::invalid_argument(format!("AppendEntries refused: {e}")))?;
        Ok(Response::new(self.node.append_entries(request).await?))
    }

    async fn install_snapshot(
        &self,
        request: Request<InstallSnapshotInput>,
    ) -> Result<Response<InstallSnapshotOutput>, Status> {
        let chunk = SnapshotChunk::try_from(request.into_inner())
            .map_err(|e| Status::invalid_argument(format!("InstallSnapshot refused: {e}")))?;
        Ok(Response::new(self.node.install_snapshot(chunk).await?))
    }

    async fn request_vote(
        &self,
        request: Request<RequestVoteInput>,
    ) -> Result<Response<RequestVoteOutput>, Status> {
        let ask = VoteAsk::from_wire(request.get_ref(), false)
            .map_err(|e| Status::invalid_argument(format!("RequestVote refused: {e}")))?;
        Ok(Response::new(self.node.request_vote(ask).await?))
    }

    async fn pre_vote(
        &self,
        request: Request<RequestVoteInput>,
    ) -> Result<Response<RequestVoteOutput>, Status> {
        let ask = VoteAsk::from_wire(request.get_ref(), true)
            .map_err(|e| Status::invalid_argument(format!("PreVote refused: {e}")))?;
        Ok(Response::new(self.node.request_vote(ask).await?))
    }

    async fn set_leader(&self, _request: Request<()>) -> Result<Response<Success>, Status> {
        Ok(success(self.node.set_leader().await?))
    }

    async fn send_heartbeat(&self, _request: Request<()>) -> Result<Response<Success>, Status> {
        Ok(success(self.node.send_heartbeat().await?))
    }

    async fn get_file_info_map(
        &self,
        _request: Request<()>,
    ) -> Result<Response<FileInfoMap>, Status> {
        self.file_info_map().await
    }

    async fn update_file(
        &self,
        request: Request<FileMetaData>,
    ) -> Result<Response<Version>, Status> {
        self.update_file(request.into_inner()).await
    }

    async fn get_block_store_addr(
        &self,
        _request: Request<()>,
    ) -> Result<Response<BlockStoreAddr>, Status> {
        self.block_store_addr().await
    }

    async fn get_internal_state(
        &self,
        _request: Request<()>,
    ) -> Result<Response<RaftInternalState>, Status> {
        let state = self.node.internal_state().await?;
        Ok(Response::new(RaftInternalState {
            is_leader: state.is_leader,
            term: state.term,
            log: state.log.into_iter().map(Into::into).collect(),
            meta_map: Some(state.map),
            first_log_index: state.first_log_index,
        }))
    }

    async fn is_crashed(&self, _request: Request<()>) -> Result<Response<CrashedState>, Status> {
        Ok(Response::new(CrashedState {
            is_crashed: self.node.is_crashed().await?,
        }))
    }

    async fn restore(&self, _request: Request<()>) -> Result<Response<Success>, Status> {
        self.node.restore().await?;
        Ok(success(true))
    }

    async fn crash(&self, _request: Request<()>) -> Result<Response<Success>, Status> {
        self.node.crash().await?;
        Ok(success(true))
    }
}

#[tonic::async_trait]
impl meta_store_server::MetaStore for RaftService {
    async fn get_file_info_map(
        &self,
        _request: Request<()>,
    ) -> Result<Response<FileInfoMap>, Status> {
        self.file_info_map().await
    }

    async fn update_file(
        &self,
        request: Request<FileMetaData>,
    ) -> Result<Response<Version>, Status> {
        self.update_file(request.into_inner()).await
    }

    async fn get_block_store_addr(
        &self,
        _request: Request<()>,
    ) -> Result<Response<BlockStoreAddr>, Status> {
        self.block_store_addr().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::raft_surfstore_client::RaftSurfstoreClient;
    use crate::raft::storage::testing::FailingStorage;

    #[tokio::test]
    async fn serve_on_a_handed_listener_stops_with_an_error_when_storage_fails() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let config = NodeConfig {
            id: 0,
            addrs: vec![addr.clone()],
            block_store_addr: "blocks".into(),
            heartbeat: None,
            pipeline_depth: 1,
            snapshot_entries: 0,
            election_timeout: None,
        };
        let server = tokio::spawn(serve(
            listener,
            config,
            Box::new(FailingStorage),
            Security::default(),
            std::future::pending(),
        ));
        let mut client = RaftSurfstoreClient::connect(format!("http://{addr}"))
            .await
            .unwrap();
        let status = client.set_leader(()).await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::Unavailable, "{status}");
        assert!(matches!(server.await.unwrap(), Err(ServeError::Storage)));
    }
}
