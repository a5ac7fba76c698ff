//! [`LeanChannel`]: the commit points' gRPC channel, ours and etcd's alike.
//!
//! A tonic `Channel` sends a unary call as two writes: the request's
//! HEADERS frame, then (from a task hyper spawns to stream the body, once
//! HTTP/2 has given the new stream capacity) its DATA frame. On loopback
//! that is two packets for the server to take in per call, and on a
//! 2-core machine the clients' CPU is taken from the servers they measure:
//! tonic's clients spent about 24 µs a call. This channel hands the whole
//! message to the HTTP/2 connection with the headers, so both frames leave
//! in one write, and skips the channel's buffer task. The server sees the
//! same HTTP/2 and gRPC either way.

use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use futures::future::BoxFuture;
use http_body::{Body, Frame};
use http_body_util::BodyExt;

use crate::BenchResult;

/// A plaintext HTTP/2 connection to one server, for tonic's generated
/// clients. Clones share the connection.
#[derive(Clone)]
pub struct LeanChannel {
    send: h2::client::SendRequest<Bytes>,
    authority: http::uri::Authority,
}

impl LeanChannel {
    /// Connects to `addr` (`host:port`); the connection's task runs on the
    /// current runtime until the last clone is dropped.
    pub async fn connect(addr: &str) -> BenchResult<Self> {
        let tcp = tokio::net::TcpStream::connect(addr).await?;
        tcp.set_nodelay(true)?;
        let (send, connection) = h2::client::handshake(tcp).await?;
        tokio::spawn(async move {
            // A connection that fails fails its calls; they say why.
            let _ = connection.await;
        });
        Ok(Self {
            send,
            authority: addr.parse()?,
        })
    }
}

/// `clients` workers, number `task` made by `make` from a connection of
/// its own to `addr` and `task`.
pub async fn each_connected<W>(
    addr: &str,
    clients: usize,
    make: impl Fn(LeanChannel, usize) -> W,
) -> BenchResult<Vec<W>> {
    let mut workers = Vec::with_capacity(clients);
    for task in 0..clients {
        workers.push(make(LeanChannel::connect(addr).await?, task));
    }
    Ok(workers)
}

/// A reply's body: the server's DATA frames, then its trailers.
pub struct Reply {
    stream: h2::RecvStream,
    data_done: bool,
}

impl Body for Reply {
    type Data = Bytes;
    type Error = h2::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, h2::Error>>> {
        if !self.data_done {
            match ready!(self.stream.poll_data(cx)) {
                Some(Ok(data)) => {
                    // Read, so the server may send as much again.
                    self.stream.flow_control().release_capacity(data.len())?;
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Some(Err(error)) => return Poll::Ready(Some(Err(error))),
                None => self.data_done = true,
            }
        }
        Poll::Ready(
            ready!(self.stream.poll_trailers(cx))
                .transpose()
                .map(|t| t.map(Frame::trailers)),
        )
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl tower::Service<http::Request<tonic::body::Body>> for LeanChannel {
    type Response = http::Response<Reply>;
    type Error = BoxError;
    type Future = BoxFuture<'static, Result<Self::Response, BoxError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.send.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
        // The handle polled ready opens the stream; this one stays for the
        // next call.
        let fresh = self.send.clone();
        let mut send = std::mem::replace(&mut self.send, fresh);
        let authority = self.authority.clone();
        Box::pin(async move {
            let (mut parts, body) = request.into_parts();
            // A unary call's body is one message, encoded as soon as asked.
            let message = body.collect().await?.to_bytes();
            let mut uri = http::uri::Parts::from(parts.uri);
            uri.scheme = Some(http::uri::Scheme::HTTP);
            uri.authority = Some(authority);
            parts.uri = http::Uri::from_parts(uri)?;
            let (reply, mut stream) =
                send.send_request(http::Request::from_parts(parts, ()), false)?;
            stream.send_data(message, true)?;
            let reply = reply.await?;
            Ok(reply.map(|stream| Reply {
                stream,
                data_done: false,
            }))
        })
    }
}
