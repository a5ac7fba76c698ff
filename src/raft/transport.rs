//! How a node reaches its peers: [`GrpcTransport`] in the server, anything
//! else (an in-process cluster, a transport that holds or drops requests)
//! in tests, so the node can be tested without processes or ports.

use std::time::Duration;

use futures::future::BoxFuture;

use super::ServerId;
use crate::grpc;
use crate::proto::raft_surfstore_client::RaftSurfstoreClient;
use crate::proto::{
    AppendEntryInput, AppendEntryOutput, InstallSnapshotInput, InstallSnapshotOutput,
    RequestVoteInput, RequestVoteOutput,
};
use crate::security::ClientSecurity;

/// Delivers AppendEntries, InstallSnapshot and vote requests to peers.
pub trait Transport: Send + Sync + 'static {
    /// Sends a RequestVote (a PreVote with `pre_vote`) to `peer` and returns
    /// its reply, like [`Transport::append_entries`].
    fn request_vote(
        &self,
        peer: ServerId,
        request: RequestVoteInput,
        pre_vote: bool,
        timeout: Duration,
    ) -> BoxFuture<'static, Result<RequestVoteOutput, tonic::Status>>;

    /// Sends one snapshot chunk to `peer` and returns its reply, like
    /// [`Transport::append_entries`].
    fn install_snapshot(
        &self,
        peer: ServerId,
        request: InstallSnapshotInput,
        timeout: Duration,
    ) -> BoxFuture<'static, Result<InstallSnapshotOutput, tonic::Status>>;

    /// Sends `request` to `peer` and returns its reply, or why there is
    /// none; gives up after `timeout`. Dropping the future abandons the
    /// call.
    fn append_entries(
        &self,
        peer: ServerId,
        request: AppendEntryInput,
        timeout: Duration,
    ) -> BoxFuture<'static, Result<AppendEntryOutput, tonic::Status>>;
}

/// One lazily connected gRPC channel per peer.
#[derive(Debug, Clone)]
pub struct GrpcTransport {
    /// By server id; `None` for the server itself.
    clients: Vec<Option<RaftSurfstoreClient<grpc::AuthChannel>>>,
}

impl GrpcTransport {
    /// Channels to every server in `addrs` but `me`, secured as `security`
    /// says.
    pub fn new(
        addrs: &[String],
        me: ServerId,
        security: &ClientSecurity,
    ) -> Result<Self, grpc::AddrError> {
        let clients = addrs
            .iter()
            .enumerate()
            .map(|(id, addr)| {
                (id != me)
                    .then(|| {
                        Ok::<_, grpc::AddrError>(
                            RaftSurfstoreClient::new(grpc::peer_channel(addr, security)?)
                                .max_decoding_message_size(grpc::MAX_MESSAGE_BYTES)
                                .max_encoding_message_size(grpc::MAX_MESSAGE_BYTES),
                        )
                    })
                    .transpose()
            })
            .collect::<Result<_, _>>()?;
        Ok(Self { clients })
    }
}

impl GrpcTransport {
    /// The client for `peer`, or why there is none.
    fn client(
        &self,
        peer: ServerId,
    ) -> Result<RaftSurfstoreClient<crate::grpc::AuthChannel>, tonic::Status> {
        self.clients
            .get(peer)
            .cloned()
            .flatten()
            .ok_or_else(|| tonic::Status::invalid_argument(format!("no peer {peer}")))
    }
}

impl Transport for GrpcTransport {
    fn request_vote(
        &self,
        peer: ServerId,
        request: RequestVoteInput,
        pre_vote: bool,
        timeout: Duration,
    ) -> BoxFuture<'static, Result<RequestVoteOutput, tonic::Status>> {
        let client = self.client(peer);
        Box::pin(async move {
            let mut request = tonic::Request::new(request);
            request.set_timeout(timeout);
            let mut client = client?;
            let reply = if pre_vote {
                client.pre_vote(request).await
            } else {
                client.request_vote(request).await
            };
            reply.map(tonic::Response::into_inner)
        })
    }

    fn install_snapshot(
        &self,
        peer: ServerId,
        request: InstallSnapshotInput,
        timeout: Duration,
    ) -> BoxFuture<'static, Result<InstallSnapshotOutput, tonic::Status>> {
        let client = self.client(peer);
        Box::pin(async move {
            let mut request = tonic::Request::new(request);
            request.set_timeout(timeout);
            client?
                .install_snapshot(request)
                .await
                .map(tonic::Response::into_inner)
        })
    }

    fn append_entries(
        &self,
        peer: ServerId,
        request: AppendEntryInput,
        timeout: Duration,
    ) -> BoxFuture<'static, Result<AppendEntryOutput, tonic::Status>> {
        let client = self.client(peer);
        Box::pin(async move {
            let mut request = tonic::Request::new(request);
            request.set_timeout(timeout);
            client?
                .append_entries(request)
                .await
                .map(tonic::Response::into_inner)
        })
    }
}
