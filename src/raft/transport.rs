//! How a node reaches its peers: [`GrpcTransport`] in the server, anything
//! else (an in-process cluster, a transport that holds or drops requests)
//! in tests, so the node can be tested without processes or ports.

use std::time::Duration;

use futures::future::BoxFuture;

use super::ServerId;
use crate::grpc;
use crate::proto::raft_surfstore_client::RaftSurfstoreClient;
use crate::proto::{AppendEntryInput, AppendEntryOutput};
use crate::security::ClientSecurity;

/// Delivers AppendEntries to peers.
pub trait Transport: Send + Sync + 'static {
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

impl Transport for GrpcTransport {
    fn append_entries(
        &self,
        peer: ServerId,
        request: AppendEntryInput,
        timeout: Duration,
    ) -> BoxFuture<'static, Result<AppendEntryOutput, tonic::Status>> {
        let client = self.clients.get(peer).cloned().flatten();
        Box::pin(async move {
            let mut client =
                client.ok_or_else(|| tonic::Status::invalid_argument(format!("no peer {peer}")))?;
            let mut request = tonic::Request::new(request);
            request.set_timeout(timeout);
            client
                .append_entries(request)
                .await
                .map(tonic::Response::into_inner)
        })
    }
}
