//! gRPC plumbing shared by every server and client: message-size limits, how
//! channels are opened, and how a server is started.

use std::net::SocketAddr;
use std::time::Duration;

use futures::stream::BoxStream;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};

use crate::security::auth::AuthLayer;
use crate::security::tls::ServerIo;
use crate::security::{ClientSecurity, Credentials, ServerSecurity};

/// The largest block a BlockStore accepts (SPEC asks for at least 64 MiB).
pub const MAX_BLOCK_BYTES: usize = 128 << 20;

/// The largest gRPC message either side encodes or decodes: a maximal block
/// plus room for framing, or a large FileInfoMap.
pub const MAX_MESSAGE_BYTES: usize = MAX_BLOCK_BYTES + (4 << 20);

/// The bytes a length-delimited protobuf field (a string, or a message as
/// one element of a repeated or map field) of `body` bytes takes with its
/// key; every such field of ours has a number below 16, so a one-byte key.
pub fn field_len(body: usize) -> usize {
    1 + prost::length_delimiter_len(body) + body
}

/// A change refused because a reply that must hold it would outgrow one
/// message: once in, nobody could ever read that reply again.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{what} would be {bytes} bytes, over the {} MiB ({limit}-byte) gRPC message limit",
    limit >> 20
)]
pub struct TooLarge {
    /// What would not fit, e.g. "GetFileInfoMap's reply".
    pub what: &'static str,
    /// How large it would be.
    pub bytes: usize,
    /// The limit, [`MAX_MESSAGE_BYTES`] outside tests.
    pub limit: usize,
}

/// Checks that `what`, at `bytes` bytes, fits within `limit`.
pub fn fits(what: &'static str, bytes: usize, limit: usize) -> Result<(), TooLarge> {
    if bytes <= limit {
        Ok(())
    } else {
        Err(TooLarge { what, bytes, limit })
    }
}

/// The largest HTTP/2 DATA frame either side accepts. The protocol's
/// default of 16 KiB cuts a 4 MiB block into 256 frames, each handled and
/// copied on its own; 1 MiB frames cost the server about a fifth less CPU
/// per block.
pub const MAX_FRAME_BYTES: u32 = 1 << 20;

/// How many bytes one call may send before the receiver acknowledges them
/// (HTTP/2 stream window): two 4 MiB blocks, so a block never waits for a
/// window update halfway.
pub const STREAM_WINDOW_BYTES: u32 = 8 << 20;

/// The same for all calls of one connection together: the client keeps
/// several blocks in flight on one connection, and hyper's server default
/// (1 MiB) would make them take turns.
pub const CONNECTION_WINDOW_BYTES: u32 = 32 << 20;

/// How long a client waits for a TCP connection to a server.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// Why a channel could not be opened.
#[derive(Debug, thiserror::Error)]
#[error("cannot use server address {addr:?}: {source}")]
pub struct AddrError {
    addr: String,
    source: tonic::transport::Error,
}

/// Opens a lazily-connecting plaintext channel to `addr` (`host:port`),
/// sending no token. The channel is meant to be created once per server
/// and cloned for every call: clones share one HTTP/2 connection.
pub fn channel(addr: &str) -> Result<Channel, AddrError> {
    Ok(with_client_keepalive(endpoint(addr, None)?))
}

/// A channel that carries the caller's token on every call.
pub type AuthChannel = InterceptedService<Channel, Credentials>;

/// Like [`channel`], with `security`'s TLS (then the address is dialled as
/// `https://host:port`) and token.
pub fn secure_channel(addr: &str, security: &ClientSecurity) -> Result<AuthChannel, AddrError> {
    let channel = with_client_keepalive(endpoint(addr, security.tls.as_ref())?);
    Ok(authenticated(channel, security))
}

/// Like [`secure_channel`], for a Raft server's channel to a peer. Without
/// the keepalive, a connection whose far end vanished without closing it (a
/// firewall that dropped its state, a host gone) looks open while every
/// call on it times out, until TCP gives up; a ping unanswered within
/// [`PEER_KEEPALIVE_TIMEOUT`] closes it, and the next call dials afresh.
/// Only for servers of ours: gRPC servers in Go refuse pings this frequent
/// by default.
pub fn peer_channel(addr: &str, security: &ClientSecurity) -> Result<AuthChannel, AddrError> {
    let channel = endpoint(addr, security.tls.as_ref())?
        .http2_keep_alive_interval(PEER_KEEPALIVE_INTERVAL)
        .keep_alive_timeout(PEER_KEEPALIVE_TIMEOUT)
        .keep_alive_while_idle(true)
        .connect_lazy();
    Ok(authenticated(channel, security))
}

fn with_client_keepalive(endpoint: Endpoint) -> Channel {
    endpoint
        .http2_keep_alive_interval(Duration::from_secs(20))
        .keep_alive_while_idle(true)
        .connect_lazy()
}

fn authenticated(channel: Channel, security: &ClientSecurity) -> AuthChannel {
    InterceptedService::new(channel, Credentials::new(security.bearer.clone()))
}

/// How often a Raft server pings each peer connection.
pub const PEER_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(1);

/// How long a ping to a peer may go unanswered before its connection is
/// dropped.
pub const PEER_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(2);

/// The settings every channel shares; with `tls`, the address is dialled
/// over TLS.
fn endpoint(addr: &str, tls: Option<&ClientTlsConfig>) -> Result<Endpoint, AddrError> {
    let error = |source| AddrError {
        addr: addr.to_string(),
        source,
    };
    let scheme = if tls.is_some() { "https" } else { "http" };
    let mut endpoint = Endpoint::from_shared(format!("{scheme}://{addr}")).map_err(error)?;
    if let Some(tls) = tls {
        endpoint = endpoint.tls_config(tls.clone()).map_err(error)?;
    }
    Ok(endpoint
        .connect_timeout(CONNECT_TIMEOUT)
        .tcp_nodelay(true)
        .max_frame_size(MAX_FRAME_BYTES)
        .initial_stream_window_size(STREAM_WINDOW_BYTES)
        .initial_connection_window_size(CONNECTION_WINDOW_BYTES))
}

type HttpResponse = http::Response<tonic::body::Body>;

/// The server builder [`server`] returns, ready for `add_service`.
pub type ServerBuilder = tonic::transport::server::Server<
    tower::layer::util::Stack<
        AuthLayer,
        tower::layer::util::Stack<
            tower::util::MapResponseLayer<fn(HttpResponse) -> HttpResponse>,
            tower::layer::util::Identity,
        >,
    >,
>;

/// A tonic server builder with the project's settings, checking no token.
pub fn server() -> ServerBuilder {
    secure_server(&ServerSecurity::default())
}

/// A tonic server builder with the project's settings. Requests that exceed
/// [`MAX_MESSAGE_BYTES`] are answered with INVALID_ARGUMENT (tonic's own code
/// for that is OUT_OF_RANGE; SPEC §3 asks for INVALID_ARGUMENT). With
/// `security`'s tokens, every call passes [`AuthLayer`] first; serve it on
/// [`secure_incoming`] for its TLS.
pub fn secure_server(security: &ServerSecurity) -> ServerBuilder {
    tonic::transport::Server::builder()
        .max_frame_size(MAX_FRAME_BYTES)
        .initial_stream_window_size(STREAM_WINDOW_BYTES)
        .initial_connection_window_size(CONNECTION_WINDOW_BYTES)
        .layer(tower::util::MapResponseLayer::new(
            oversized_is_invalid_argument as fn(_) -> _,
        ))
        .layer(AuthLayer::new(security.tokens.clone()))
}

fn oversized_is_invalid_argument(mut response: HttpResponse) -> HttpResponse {
    let out_of_range = http::HeaderValue::from(tonic::Code::OutOfRange as i32);
    if response.headers().get("grpc-status") == Some(&out_of_range) {
        response.headers_mut().insert(
            "grpc-status",
            http::HeaderValue::from(tonic::Code::InvalidArgument as i32),
        );
    }
    response
}

/// The connections a server accepts on `listener`, with Nagle's algorithm
/// off. Tonic applies its own `tcp_nodelay` only to listeners it binds
/// itself; without this, a small frame written while another is unacked
/// waits for the peer's delayed ACK: 40 ms stalls per call.
pub fn incoming(listener: tokio::net::TcpListener) -> tonic::transport::server::TcpIncoming {
    tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true))
}

/// The connections a server with `security` serves on `listener`: as
/// [`incoming`] does, or over TLS.
pub fn secure_incoming(
    listener: tokio::net::TcpListener,
    security: &ServerSecurity,
) -> BoxStream<'static, std::io::Result<ServerIo>> {
    crate::security::tls::incoming(listener, incoming, security.tls.clone())
}

/// Resolves a listen address: `-l` binds loopback only, otherwise every
/// interface.
pub fn listen_addr(port: u16, localhost_only: bool) -> SocketAddr {
    let ip = if localhost_only {
        std::net::Ipv4Addr::LOCALHOST
    } else {
        std::net::Ipv4Addr::UNSPECIFIED
    };
    SocketAddr::from((ip, port))
}

/// Resolves `host:port` (e.g. `localhost:9007` from a config) to the first
/// socket address it names.
pub async fn resolve(addr: &str) -> std::io::Result<SocketAddr> {
    tokio::net::lookup_host(addr).await?.next().ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!("{addr} resolves to no address"),
        )
    })
}
