//! Serving `GetFileInfoMap` from bytes encoded once ([`FileMap::encoded`])
//! instead of a `FileInfoMap` built and encoded for every reader.
//!
//! tonic's generated servers encode a reply from its message type, so
//! [`EncodedMapServer`] sits in front of one (the `MetaStore` or the
//! `RaftSurfstore` server) and answers that one path itself, through
//! tonic's own unary handling with a codec whose encoder writes the shared
//! bytes as they are. The reply on the wire is identical: the bytes are
//! what prost writes for the message, in the same gRPC framing, under the
//! same message limits. Every other call goes to the generated server.
//! Compression is not offered (none of our servers enables it).
//!
//! [`FileMap::encoded`]: super::FileMap::encoded

use std::convert::Infallible;
use std::future::Future;
use std::task::{Context, Poll};

use bytes::{BufMut, Bytes};
use tonic::body::Body;
use tonic::codec::{BufferSettings, Codec, EncodeBuf, Encoder};
use tonic::server::{Grpc, NamedService, UnaryService};
use tonic::{Request, Response, Status};
use tonic_prost::ProstCodec;

use crate::grpc::MAX_MESSAGE_BYTES;

/// The method every SurfStore service that reads the map names it by.
const METHOD: &str = "/GetFileInfoMap";

/// Where an [`EncodedMapServer`] gets the map to answer with.
pub trait MapSource: Clone + Send + Sync + 'static {
    /// The current map as an encoded `FileInfoMap`, or why this server
    /// cannot answer (e.g. it is not the leader).
    fn encoded_map(&self) -> impl Future<Output = Result<Bytes, Status>> + Send;
}

/// A generated tonic server `inner` whose `GetFileInfoMap` is answered
/// from `source`'s shared encoding; see the module documentation.
#[derive(Clone)]
pub struct EncodedMapServer<S, M> {
    inner: S,
    source: M,
}

impl<S, M> EncodedMapServer<S, M> {
    /// Answers `GetFileInfoMap` of `inner`'s service from `source`.
    pub fn new(inner: S, source: M) -> Self {
        Self { inner, source }
    }
}

impl<S: NamedService, M> NamedService for EncodedMapServer<S, M> {
    const NAME: &'static str = S::NAME;
}

impl<S, M, B> tower::Service<http::Request<B>> for EncodedMapServer<S, M>
where
    S: tower::Service<http::Request<B>, Response = http::Response<Body>, Error = Infallible>
        + NamedService,
    S::Future: Send + 'static,
    M: MapSource,
    B: tonic::codegen::Body + Send + 'static,
    B::Error: Into<tonic::codegen::StdError> + Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = futures::future::BoxFuture<'static, Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let path = request.uri().path();
        let is_map_read =
            path.strip_prefix('/').and_then(|p| p.strip_prefix(S::NAME)) == Some(METHOD);
        if !is_map_read {
            return Box::pin(self.inner.call(request));
        }
        let method = ReadMap(self.source.clone());
        Box::pin(async move {
            let mut grpc = Grpc::new(EncodedCodec)
                .apply_max_message_size_config(Some(MAX_MESSAGE_BYTES), Some(MAX_MESSAGE_BYTES));
            Ok(grpc.unary(method, request).await)
        })
    }
}

/// The unary handler: the request is `Empty`, the reply the shared bytes.
struct ReadMap<M>(M);

impl<M: MapSource> UnaryService<()> for ReadMap<M> {
    type Response = Bytes;
    type Future = futures::future::BoxFuture<'static, Result<Response<Bytes>, Status>>;

    fn call(&mut self, _request: Request<()>) -> Self::Future {
        let source = self.0.clone();
        Box::pin(async move { source.encoded_map().await.map(Response::new) })
    }
}

/// Decodes the `Empty` request as prost does; encodes a reply that is
/// already encoded by copying it.
struct EncodedCodec;

impl Codec for EncodedCodec {
    type Encode = Bytes;
    type Decode = ();
    type Encoder = CopyEncoder;
    type Decoder = <ProstCodec<(), ()> as Codec>::Decoder;

    fn encoder(&mut self) -> CopyEncoder {
        CopyEncoder
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProstCodec::<(), ()>::raw_decoder(BufferSettings::default())
    }
}

/// Writes bytes that are already a protobuf message into tonic's buffer.
struct CopyEncoder;

impl Encoder for CopyEncoder {
    type Item = Bytes;
    type Error = Status;

    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        // One allocation of the final size, not a doubling series of
        // reallocations (each a copy, and fresh pages to fault in).
        dst.reserve(item.len());
        dst.put_slice(&item);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use prost::Message;

    use super::*;
    use crate::proto::meta_store_client::MetaStoreClient;
    use crate::proto::meta_store_server::{MetaStore, MetaStoreServer};
    use crate::proto::{BlockStoreAddr, FileInfoMap, FileMetaData, Version};

    /// A MetaStore whose own `GetFileInfoMap` fails, so a map in a reply
    /// can only have come from the [`MapSource`].
    #[derive(Clone)]
    struct Fixed(Bytes);

    impl MapSource for Fixed {
        async fn encoded_map(&self) -> Result<Bytes, Status> {
            Ok(self.0.clone())
        }
    }

    #[tonic::async_trait]
    impl MetaStore for Fixed {
        async fn get_file_info_map(&self, _: Request<()>) -> Result<Response<FileInfoMap>, Status> {
            Err(Status::internal("the generated path was taken"))
        }

        async fn update_file(&self, _: Request<FileMetaData>) -> Result<Response<Version>, Status> {
            Err(Status::unimplemented("not here"))
        }

        async fn get_block_store_addr(
            &self,
            _: Request<()>,
        ) -> Result<Response<BlockStoreAddr>, Status> {
            Ok(Response::new(BlockStoreAddr { addr: "b:1".into() }))
        }
    }

    #[tokio::test]
    async fn get_file_info_map_is_answered_with_the_shared_bytes_and_the_rest_passes_through() {
        let mut map = FileInfoMap::default();
        for i in 0..50 {
            let name = format!("f{i}");
            let meta = FileMetaData {
                filename: name.clone(),
                version: i,
                block_hash_list: vec!["0".into()],
            };
            map.file_info_map.insert(name, meta);
        }
        let fixed = Fixed(Bytes::from(map.encode_to_vec()));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = crate::grpc::server()
            .add_service(EncodedMapServer::new(
                MetaStoreServer::new(fixed.clone()),
                fixed,
            ))
            .serve_with_incoming(crate::grpc::incoming(listener));
        let server = tokio::spawn(server);
        let mut client = MetaStoreClient::new(crate::grpc::channel(&addr.to_string()).unwrap());
        assert_eq!(
            client.get_file_info_map(()).await.unwrap().into_inner(),
            map
        );
        let addr = client.get_block_store_addr(()).await.unwrap().into_inner();
        assert_eq!(addr.addr, "b:1");
        server.abort();
    }
}
