//! TLS for every link (SPEC §9.3): the servers' acceptor (TLS 1.3 only,
//! optionally requiring a client certificate), what clients and Raft peers
//! trust and present, the development certificates of `surfstore-ctl
//! gen-certs`, and a reading of TLS failures a user can act on.

use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::StreamExt;
use futures::stream::BoxStream;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::{self, RootCertStore, ServerConfig};
use tonic::transport::server::{Connected, TcpConnectInfo};
use tonic::transport::{Certificate, ClientTlsConfig, Identity};

/// Why TLS material could not be loaded or made.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM file could not be read or holds nothing usable.
    #[error("{what} {}: {reason}", path.display())]
    File {
        /// What the file should hold, e.g. "certificate".
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// rustls refused the material (e.g. a key that does not match the
    /// certificate).
    #[error("TLS setup failed: {0}")]
    Rustls(#[from] rustls::Error),
    /// The client CA cannot verify certificates.
    #[error("--tls-client-ca: {0}")]
    ClientCa(#[from] rustls::server::VerifierBuilderError),
    /// A certificate could not be generated.
    #[error("cannot generate the certificates: {0}")]
    Generate(#[from] rcgen::Error),
    /// A generated file could not be written.
    #[error("cannot write {}: {source}", path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// What failed.
        source: io::Error,
    },
}

fn unreadable(what: &'static str, path: &Path, reason: impl ToString) -> TlsError {
    TlsError::File {
        what,
        path: path.to_path_buf(),
        reason: reason.to_string(),
    }
}

/// The certificates of a PEM file (at least one).
fn certificates(what: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|iter| iter.collect::<Result<Vec<_>, _>>())
        .map_err(|e| unreadable(what, path, e))?;
    if certs.is_empty() {
        return Err(unreadable(what, path, "holds no PEM certificate"));
    }
    Ok(certs)
}

/// A file's bytes, after checking that they hold what `what` says.
fn pem_bytes(what: &'static str, path: &Path, key: bool) -> Result<Vec<u8>, TlsError> {
    if key {
        PrivateKeyDer::from_pem_file(path).map_err(|e| unreadable(what, path, e))?;
    } else {
        certificates(what, path)?;
    }
    std::fs::read(path).map_err(|e| unreadable(what, path, e))
}

/// How long a client may take over its TLS handshake before the server
/// drops it, so that silent connections cannot pile up.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// A server's TLS: its certificate and key, and the CA client certificates
/// must be signed by under mutual TLS.
#[derive(Clone)]
pub struct ServerTls {
    acceptor: TlsAcceptor,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ServerTls")
    }
}

impl ServerTls {
    /// TLS 1.3 only, HTTP/2 only, with the certificate chain in `cert` and
    /// the key in `key`; with `client_ca`, a client must present a
    /// certificate signed by it.
    pub fn load(cert: &Path, key: &Path, client_ca: Option<&Path>) -> Result<Self, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])?;
        let builder = match client_ca {
            None => builder.with_no_client_auth(),
            Some(path) => {
                let mut roots = RootCertStore::empty();
                roots.add_parsable_certificates(certificates("client CA", path)?);
                let verifier =
                    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                        .build()?;
                builder.with_client_cert_verifier(verifier)
            }
        };
        let chain = certificates("certificate", cert)?;
        let key =
            PrivateKeyDer::from_pem_file(key).map_err(|e| unreadable("private key", key, e))?;
        let mut config = builder.with_single_cert(chain, key)?;
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(Self {
            acceptor: TlsAcceptor::from(Arc::new(config)),
        })
    }
}

/// A connection a server accepted: plain TCP, or TLS over it.
pub enum ServerIo {
    /// Without `--tls-cert`.
    Plain(TcpStream),
    /// With it, once the handshake is done.
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

impl Connected for ServerIo {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> TcpConnectInfo {
        match self {
            ServerIo::Plain(tcp) => tcp.connect_info(),
            ServerIo::Tls(tls) => tls.get_ref().0.connect_info(),
        }
    }
}

impl AsyncRead for ServerIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ServerIo::Plain(tcp) => Pin::new(tcp).poll_read(cx, buf),
            ServerIo::Tls(tls) => Pin::new(tls.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for ServerIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            ServerIo::Plain(tcp) => Pin::new(tcp).poll_write(cx, buf),
            ServerIo::Tls(tls) => Pin::new(tls.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            ServerIo::Plain(tcp) => Pin::new(tcp).poll_write_vectored(cx, bufs),
            ServerIo::Tls(tls) => Pin::new(tls.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            ServerIo::Plain(tcp) => tcp.is_write_vectored(),
            ServerIo::Tls(tls) => tls.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ServerIo::Plain(tcp) => Pin::new(tcp).poll_flush(cx),
            ServerIo::Tls(tls) => Pin::new(tls.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ServerIo::Plain(tcp) => Pin::new(tcp).poll_shutdown(cx),
            ServerIo::Tls(tls) => Pin::new(tls.as_mut()).poll_shutdown(cx),
        }
    }
}

/// The connections a server serves: `plain` as they come, or, with `tls`,
/// each after its handshake. Handshakes run in tasks of their own, so a
/// slow or silent client delays nobody else; one that fails is dropped
/// (and logged at debug level: scanners would fill a log otherwise).
pub fn incoming(
    listener: TcpListener,
    plain: impl FnOnce(TcpListener) -> tonic::transport::server::TcpIncoming,
    tls: Option<ServerTls>,
) -> BoxStream<'static, io::Result<ServerIo>> {
    let Some(ServerTls { acceptor }) = tls else {
        return plain(listener).map(|tcp| tcp.map(ServerIo::Plain)).boxed();
    };
    let (ready, handshaken) = tokio::sync::mpsc::channel(64);
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                () = ready.closed() => return,
            };
            let (tcp, peer) = match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // E.g. out of file descriptors: pause rather than spin.
                    tracing::warn!(%error, "cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            // As for plain connections (see grpc::incoming).
            let _ = tcp.set_nodelay(true);
            let (acceptor, ready) = (acceptor.clone(), ready.clone());
            tokio::spawn(async move {
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(tls)) => {
                        let _ = ready.send(Ok(ServerIo::Tls(Box::new(tls)))).await;
                    }
                    Ok(Err(error)) => tracing::debug!(%peer, %error, "TLS handshake failed"),
                    Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                }
            });
        }
    });
    futures::stream::unfold(handshaken, |mut rx| async move {
        rx.recv().await.map(|io| (io, rx))
    })
    .boxed()
}

/// What a client (or a Raft server calling its peers) trusts and presents:
/// the CA of `--ca` on top of the system's roots and Mozilla's, and with
/// `identity` (a certificate file and its key) a client certificate for
/// mutual TLS.
pub fn client_tls(
    ca: Option<&Path>,
    identity: Option<(&Path, &Path)>,
) -> Result<ClientTlsConfig, TlsError> {
    let mut config = ClientTlsConfig::new().with_webpki_roots();
    if system_has_roots() {
        config = config.with_native_roots();
    }
    if let Some(ca) = ca {
        config = config.ca_certificate(Certificate::from_pem(pem_bytes("CA", ca, false)?));
    }
    if let Some((cert, key)) = identity {
        config = config.identity(Identity::from_pem(
            pem_bytes("certificate", cert, false)?,
            pem_bytes("private key", key, true)?,
        ));
    }
    Ok(config)
}

/// Whether the system's trust store holds any certificate, read once per
/// process: tonic fails to build a client asked for system roots when
/// there are none (a container without ca-certificates).
fn system_has_roots() -> bool {
    static HAS_ROOTS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *HAS_ROOTS.get_or_init(|| !rustls_native_certs::load_native_certs().certs.is_empty())
}

/// The files `gen-certs` writes in its directory.
pub const GENERATED: [&str; 4] = ["ca.pem", "ca.key", "server.pem", "server.key"];

/// Writes a development CA and one certificate for `hosts` (names or IP
/// addresses), signed by it, to `dir`: `ca.pem`, `ca.key`, `server.pem`,
/// `server.key`. The certificate serves as a server's and, for mutual TLS
/// between Raft peers, as a client's. Keys are written readable by their
/// owner only.
pub fn generate(dir: &Path, hosts: &[String]) -> Result<(), TlsError> {
    use rcgen::{
        BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose,
        IsCa, KeyPair, KeyUsagePurpose,
    };
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "SurfStore development CA");
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_key = KeyPair::generate()?;
    let ca_key_pem = ca_key.serialize_pem();
    let ca = CertifiedIssuer::self_signed(ca, ca_key)?;

    let mut server = CertificateParams::new(hosts.to_vec())?;
    if let Some(first) = hosts.first() {
        server
            .distinguished_name
            .push(DnType::CommonName, first.as_str());
    }
    server.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    server.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let server_key = KeyPair::generate()?;
    let server_cert = server.signed_by(&server_key, &ca)?;

    std::fs::create_dir_all(dir).map_err(|source| TlsError::Write {
        path: dir.to_path_buf(),
        source,
    })?;
    let [ca_pem, ca_key_file, server_pem, server_key_file] = GENERATED;
    write(&dir.join(ca_pem), &ca.pem(), false)?;
    write(&dir.join(ca_key_file), &ca_key_pem, true)?;
    write(&dir.join(server_pem), &server_cert.pem(), false)?;
    write(
        &dir.join(server_key_file),
        &server_key.serialize_pem(),
        true,
    )
}

fn write(path: &Path, text: &str, secret: bool) -> Result<(), TlsError> {
    use std::io::Write as _;
    let mut options = std::fs::OpenOptions::new();
    options.create(true).write(true).truncate(true);
    #[cfg(unix)]
    if secret {
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    }
    #[cfg(not(unix))]
    let _ = secret;
    options
        .open(path)
        .and_then(|mut file| file.write_all(text.as_bytes()))
        .map_err(|source| TlsError::Write {
            path: path.to_path_buf(),
            source,
        })
}

/// What a failed call says about TLS or tokens, in words a user can act
/// on, when that is why it failed: an untrusted server certificate, a
/// plaintext client at a TLS port or the reverse, a missing or unknown
/// token, a role without the right. `None` for any other failure. (A
/// server refusing a client certificate is not among them: under TLS 1.3
/// its alert comes after the handshake, and tonic reports the call only
/// as a closed connection.)
pub fn explain(status: &tonic::Status) -> Option<String> {
    match status.code() {
        tonic::Code::Unauthenticated => {
            return Some(format!(
                "the server refused the token ({}); pass a valid one with --token-file \
                 or {}",
                status.message(),
                super::tokens::TOKEN_ENV
            ));
        }
        tonic::Code::PermissionDenied => {
            return Some(format!("permission denied: {}", status.message()));
        }
        _ => {}
    }
    let mut source = std::error::Error::source(status);
    let mut text = String::new();
    while let Some(cause) = source {
        if let Some(tls) = rustls_error(cause) {
            return Some(explain_rustls(tls));
        }
        text.push_str(&cause.to_string());
        text.push('\n');
        source = cause.source();
    }
    // A plaintext client reads a TLS server's alert as a malformed HTTP/2
    // frame, or sees the connection closed before any HTTP/2 settings.
    let plaintext_at_tls = [
        "frame with invalid size",
        "invalid HTTP/2 preface",
        "FRAME_SIZE_ERROR",
    ];
    plaintext_at_tls.iter().any(|s| text.contains(s)).then(|| {
        "the server answered with something other than plaintext HTTP/2: it likely \
             speaks TLS; pass --ca FILE with the CA that signed its certificate"
            .to_string()
    })
}

/// The rustls error `cause` is or wraps (tokio-rustls hands them over
/// inside an `io::Error`, whose `source` skips them).
fn rustls_error<'a>(cause: &'a (dyn std::error::Error + 'static)) -> Option<&'a rustls::Error> {
    cause.downcast_ref::<rustls::Error>().or_else(|| {
        cause
            .downcast_ref::<io::Error>()
            .and_then(|io| io.get_ref())
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    })
}

fn explain_rustls(error: &rustls::Error) -> String {
    use rustls::{CertificateError, Error};
    match error {
        Error::InvalidCertificate(CertificateError::NotValidForName)
        | Error::InvalidCertificate(CertificateError::NotValidForNameContext { .. }) => format!(
            "the server's certificate does not name the host dialled ({error}): \
             use an address its certificate lists"
        ),
        Error::InvalidCertificate(_) => format!(
            "the server's certificate is not trusted ({error}): pass --ca FILE with the \
             CA that signed it"
        ),
        Error::InvalidMessage(_) | Error::InappropriateMessage { .. } => format!(
            "the server did not answer in TLS ({error}): it likely is a plaintext port; \
             drop --ca"
        ),
        _ => format!("TLS failed: {error}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_certificates_load_as_server_and_client_material() {
        let dir = tempfile::tempdir().unwrap();
        generate(dir.path(), &["localhost".into(), "127.0.0.1".into()]).unwrap();
        let path = |name: &str| dir.path().join(name);
        ServerTls::load(
            &path("server.pem"),
            &path("server.key"),
            Some(&path("ca.pem")),
        )
        .unwrap();
        client_tls(
            Some(&path("ca.pem")),
            Some((&path("server.pem"), &path("server.key"))),
        )
        .unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(path("ca.key"))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o077, 0, "keys are private");
        }
    }

    /// A client offering only `version`, trusting the CA in `dir`.
    fn connector(
        dir: &Path,
        version: &'static rustls::SupportedProtocolVersion,
    ) -> tokio_rustls::TlsConnector {
        let mut roots = RootCertStore::empty();
        roots.add_parsable_certificates(certificates("CA", &dir.join("ca.pem")).unwrap());
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[version])
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        tokio_rustls::TlsConnector::from(Arc::new(config))
    }

    #[tokio::test]
    async fn servers_speak_tls_1_3_only() {
        let dir = tempfile::tempdir().unwrap();
        generate(dir.path(), &["localhost".into()]).unwrap();
        let tls = ServerTls::load(
            &dir.path().join("server.pem"),
            &dir.path().join("server.key"),
            None,
        )
        .unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut accepted = incoming(listener, crate::grpc::incoming, Some(tls));
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let old = TcpStream::connect(addr).await.unwrap();
        let refused = connector(dir.path(), &rustls::version::TLS12)
            .connect(name.clone(), old)
            .await;
        assert!(refused.is_err(), "a TLS 1.2 client got in");
        let new = TcpStream::connect(addr).await.unwrap();
        let client = connector(dir.path(), &rustls::version::TLS13)
            .connect(name, new)
            .await
            .unwrap();
        assert_eq!(
            client.get_ref().1.protocol_version(),
            Some(rustls::ProtocolVersion::TLSv1_3)
        );
        let served = accepted.next().await.unwrap().unwrap();
        assert!(
            matches!(served, ServerIo::Tls(_)),
            "only the TLS 1.3 client is served"
        );
    }

    #[test]
    fn unusable_files_say_which_and_why() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "").unwrap();
        let error = ServerTls::load(&empty, &empty, None).unwrap_err();
        assert!(error.to_string().contains("certificate"), "{error}");
        assert!(error.to_string().contains("empty.pem"), "{error}");
        let missing = dir.path().join("missing.pem");
        let error = client_tls(Some(&missing), None).unwrap_err();
        assert!(error.to_string().contains("missing.pem"), "{error}");
    }
}
