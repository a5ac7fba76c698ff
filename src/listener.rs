//! Where a server's listening socket comes from: bound by the server, or
//! handed over by whoever started it, with systemd's socket-activation
//! protocol (`LISTEN_FDS=1`, the socket at file descriptor 3, and
//! `LISTEN_PID`, when set, naming this process).
//!
//! A socket bound before the server starts cannot be lost to another
//! program between choosing a port and binding it, and a client that
//! connects before the server is up waits in the socket's backlog instead
//! of being refused. systemd units (`ListenStream=`) and the test harness
//! (`tests/common`) both start servers this way; without `LISTEN_FDS` the
//! server binds its address itself, as it always did.

use std::net::SocketAddr;
use std::os::fd::{BorrowedFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};

/// The descriptor the socket-activation protocol hands over first.
const FIRST_HANDED_FD: i32 = 3;

/// Why no listener could be had.
#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    /// Binding the address failed (in use, not ours, ...).
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// What the OS said.
        source: std::io::Error,
    },
    /// `LISTEN_FDS` is set but does not hand over exactly one socket.
    #[error("LISTEN_FDS={0:?}: expected 1 (one listening socket at fd 3)")]
    Count(String),
    /// The descriptor handed over is not a listening TCP socket.
    #[error("the socket handed over at fd 3 (LISTEN_FDS) is not a listening TCP socket: {0}")]
    NotListening(String),
    /// The socket handed over listens on another port than the one this
    /// server announces, so clients and peers would miss it.
    #[error(
        "the socket handed over at fd 3 (LISTEN_FDS) listens on port {handed}, but this server's address has port {expected}"
    )]
    WrongPort {
        /// The port of the socket handed over.
        handed: u16,
        /// The port of the address the server was told to use.
        expected: u16,
    },
}

/// The listener to serve on: the socket handed over through `LISTEN_FDS`
/// (which must listen on `addr`'s port, unless that is 0), else a fresh one
/// bound to `addr`. Must be called within a tokio runtime.
pub async fn open(addr: SocketAddr) -> Result<tokio::net::TcpListener, ListenError> {
    match take_handed_over()? {
        Some(listener) => {
            let handed = listener
                .local_addr()
                .map_err(|e| ListenError::NotListening(e.to_string()))?
                .port();
            if addr.port() != 0 && handed != addr.port() {
                return Err(ListenError::WrongPort {
                    handed,
                    expected: addr.port(),
                });
            }
            tokio::net::TcpListener::from_std(listener)
                .map_err(|e| ListenError::NotListening(e.to_string()))
        }
        None => tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| ListenError::Bind { addr, source }),
    }
}

/// The socket the starting process handed over, taken at most once per
/// process; `None` when none was (no `LISTEN_FDS`, or a `LISTEN_PID` that
/// names another process: the variables were meant for a parent).
fn take_handed_over() -> Result<Option<std::net::TcpListener>, ListenError> {
    static TAKEN: AtomicBool = AtomicBool::new(false);
    let Some(count) = std::env::var_os("LISTEN_FDS") else {
        return Ok(None);
    };
    if std::env::var("LISTEN_PID").is_ok_and(|pid| pid != std::process::id().to_string()) {
        return Ok(None);
    }
    if count != "1" {
        return Err(ListenError::Count(count.to_string_lossy().into_owned()));
    }
    // Owning fd 3 twice would close it twice.
    if TAKEN.swap(true, Ordering::SeqCst) {
        return Ok(None);
    }
    // Checked before owning it: with LISTEN_FDS set by mistake, fd 3 may be
    // one this process opened itself (the runtime's), never to be closed here.
    let link = std::fs::read_link(format!("/proc/self/fd/{FIRST_HANDED_FD}"))
        .map_err(|e| ListenError::NotListening(format!("fd 3: {e}")))?;
    if !link.to_string_lossy().starts_with("socket:") {
        return Err(ListenError::NotListening(format!(
            "fd 3 is {}",
            link.display()
        )));
    }
    // SAFETY: fd 3 is open (/proc shows it) for as long as this borrow: it
    // is only closed below, by its owner.
    let borrowed = unsafe { BorrowedFd::borrow_raw(FIRST_HANDED_FD) };
    let checked = socket2::SockRef::from(&borrowed);
    let listening = checked
        .is_listener()
        .map_err(|e| ListenError::NotListening(e.to_string()))?;
    if !listening || checked.r#type().ok() != Some(socket2::Type::STREAM) {
        return Err(ListenError::NotListening(
            "fd 3 is a socket, but not one listening for TCP".into(),
        ));
    }
    // SAFETY: fd 3 is a listening TCP socket that LISTEN_FDS hands to this
    // process to own (nothing here opened one before this call); TAKEN
    // makes this its only owner.
    let socket = socket2::Socket::from(unsafe { OwnedFd::from_raw_fd(FIRST_HANDED_FD) });
    // Tokio needs it non-blocking; no child of this server should inherit it.
    socket
        .set_nonblocking(true)
        .and_then(|()| socket.set_cloexec(true))
        .map_err(|e| ListenError::NotListening(e.to_string()))?;
    Ok(Some(socket.into()))
}
