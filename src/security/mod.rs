//! Security (SPEC §9.3), all opt-in: TLS on every link ([`tls`]), bearer
//! tokens with roles ([`tokens`]) checked by one tower layer in front of
//! every service ([`auth`]). This module holds what the binaries parse from
//! their command lines and hand to [`crate::grpc`]: a server's
//! [`ServerSecurity`], a caller's [`ClientSecurity`].
//!
//! Trust model: a server trusts nobody without a token it knows (when
//! `--auth-tokens` is given); a user token reaches files and blocks, a peer
//! token replication, an admin token everything, the chaos API included.
//! A client trusts a server whose certificate chains to `--ca` (or to a
//! public root) and names the host it dialled.

pub mod auth;
pub mod tls;
pub mod tokens;

use std::net::SocketAddr;
use std::path::PathBuf;

use tonic::transport::ClientTlsConfig;

use self::tls::{ServerTls, TlsError};
use self::tokens::{Bearer, TokenError, TokenTable};

/// Why security flags could not be put to use.
#[derive(Debug, thiserror::Error)]
pub enum SecurityError {
    /// Certificates or keys.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// Token files or tokens.
    #[error(transparent)]
    Token(#[from] TokenError),
}

/// The security flags every server takes.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct ServerFlags {
    /// Speak TLS 1.3 only, with this PEM certificate (chain).
    #[arg(long = "tls-cert", value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The PEM private key of --tls-cert.
    #[arg(long = "tls-key", value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Mutual TLS: require a client certificate signed by this PEM CA.
    #[arg(long = "tls-client-ca", value_name = "FILE", requires = "tls_cert")]
    pub tls_client_ca: Option<PathBuf>,
    /// Require a bearer token from this file of `ROLE NAME SHA256HEX`
    /// lines on every call (see `surfstore-ctl add-token`).
    #[arg(long = "auth-tokens", value_name = "FILE")]
    pub auth_tokens: Option<PathBuf>,
}

/// What a Raft server uses to call its peers, besides its certificate.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct PeerFlags {
    /// Trust peers whose certificates this PEM CA signed (default: the
    /// --tls-client-ca file), on top of the system's and Mozilla's roots.
    #[arg(long = "ca", value_name = "FILE", requires = "tls_cert")]
    pub ca: Option<PathBuf>,
    /// Send the token in this file (its first line) on every call to a peer.
    #[arg(long = "peer-token-file", value_name = "FILE")]
    pub peer_token_file: Option<PathBuf>,
}

/// The security flags of the client and surfstore-ctl.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct ClientFlags {
    /// Speak TLS, trusting servers whose certificates this PEM CA signed
    /// (on top of the system's and Mozilla's roots).
    #[arg(long = "ca", value_name = "FILE", global = true)]
    pub ca: Option<PathBuf>,
    /// Send the token in this file (its first line); without it, the token
    /// in SURFSTORE_TOKEN, if set.
    #[arg(long = "token-file", value_name = "FILE", global = true)]
    pub token_file: Option<PathBuf>,
    /// For servers that require mutual TLS: present this PEM certificate.
    #[arg(long = "tls-cert", value_name = "FILE", global = true,
          requires_all = ["ca", "tls_key"])]
    pub tls_cert: Option<PathBuf>,
    /// The PEM private key of --tls-cert.
    #[arg(
        long = "tls-key",
        value_name = "FILE",
        global = true,
        requires = "tls_cert"
    )]
    pub tls_key: Option<PathBuf>,
}

/// What a server enforces.
#[derive(Debug, Clone, Default)]
pub struct ServerSecurity {
    /// TLS, when `--tls-cert` is given.
    pub tls: Option<ServerTls>,
    /// The tokens it accepts, when `--auth-tokens` is given.
    pub tokens: Option<TokenTable>,
}

impl ServerFlags {
    /// Loads the certificates and token file the flags name.
    pub fn load(&self) -> Result<ServerSecurity, SecurityError> {
        let tls = match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => {
                Some(ServerTls::load(cert, key, self.tls_client_ca.as_deref())?)
            }
            _ => None,
        };
        let tokens = self
            .auth_tokens
            .as_deref()
            .map(TokenTable::load)
            .transpose()?;
        Ok(ServerSecurity { tls, tokens })
    }

    /// How a Raft server with these flags calls its peers: presenting its
    /// own certificate and trusting `peers.ca` (or the client CA), with
    /// the token of `--peer-token-file`.
    pub fn peer_security(&self, peers: &PeerFlags) -> Result<ClientSecurity, SecurityError> {
        let tls = match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => Some(tls::client_tls(
                peers.ca.as_deref().or(self.tls_client_ca.as_deref()),
                Some((cert.as_path(), key.as_path())),
            )?),
            _ => None,
        };
        let bearer = peers
            .peer_token_file
            .as_deref()
            .map(Bearer::from_file)
            .transpose()?;
        Ok(ClientSecurity { tls, bearer })
    }
}

impl ServerSecurity {
    /// The one warning line of SPEC §9.3, for a server about to listen on
    /// `listen` beyond loopback without both TLS and tokens.
    pub fn exposure_warning(&self, listen: SocketAddr) -> Option<String> {
        let missing = match (self.tls.is_some(), self.tokens.is_some()) {
            _ if listen.ip().is_loopback() => return None,
            (true, true) => return None,
            (false, false) => "without TLS or tokens",
            (false, true) => "without TLS (--tls-cert)",
            (true, false) => "without tokens (--auth-tokens)",
        };
        Some(format!(
            "listening on {listen}, beyond loopback, {missing}: anyone who can reach \
             the port can read and change every file"
        ))
    }
}

/// How a client, surfstore-ctl or a Raft server (towards its peers)
/// connects: TLS or not, and the token it sends.
#[derive(Debug, Clone, Default)]
pub struct ClientSecurity {
    /// TLS settings; `None` for plaintext.
    pub tls: Option<ClientTlsConfig>,
    /// The token sent on every call.
    pub bearer: Option<Bearer>,
}

impl ClientFlags {
    /// Loads the CA, client certificate and token the flags (or
    /// `SURFSTORE_TOKEN`) name.
    pub fn load(&self) -> Result<ClientSecurity, SecurityError> {
        let identity = self.tls_cert.as_deref().zip(self.tls_key.as_deref());
        let tls = self
            .ca
            .as_deref()
            .map(|ca| tls::client_tls(Some(ca), identity))
            .transpose()?;
        let bearer = Bearer::from_file_or_env(self.token_file.as_deref())?;
        Ok(ClientSecurity { tls, bearer })
    }
}

/// Adds the caller's token to every request of a channel.
#[derive(Debug, Clone, Default)]
pub struct Credentials(Option<Bearer>);

impl Credentials {
    /// Sends `bearer`, or nothing.
    pub fn new(bearer: Option<Bearer>) -> Self {
        Self(bearer)
    }
}

impl tonic::service::Interceptor for Credentials {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(bearer) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", bearer.header().clone());
        }
        Ok(request)
    }
}
