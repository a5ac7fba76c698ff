//! Where a server says it is: the one line each server prints at start
//! (what it serves, where it listens, what it announces, where its data
//! is), the BlockStore address `surfstore-server -s both` announces when
//! none is given, and the warning for an announcement only this machine
//! can use.
//!
//! The announced address is what `GetBlockStoreAddr` hands to clients, who
//! may run elsewhere: `localhost` there means their own machine. So a
//! server that listens beyond loopback announces a non-loopback address by
//! default, and warns if told to announce a loopback one.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::path::Path;

/// The line a server prints on stdout once it listens.
pub fn start_line(
    program: &str,
    serves: &str,
    listening: SocketAddr,
    announced: Option<&str>,
    data_dir: Option<&Path>,
) -> String {
    let announced = match announced {
        Some(addr) => format!("; clients are sent to the BlockStore at {addr}"),
        None => String::new(),
    };
    let data = match data_dir {
        Some(dir) => format!("data in {}", dir.display()),
        None => "data in memory only (no --data-dir)".to_string(),
    };
    format!("{program}: serving {serves} on {listening}{announced}; {data}")
}

/// What `-s both` announces for its own BlockStore without `--advertise`:
/// `localhost:PORT` when it listens on loopback only, otherwise this
/// machine's address on its default route (`None` if it has none, e.g. no
/// network).
pub fn default_block_store_addr(listening: SocketAddr) -> Option<String> {
    let port = listening.port();
    if listening.ip().is_loopback() {
        return Some(format!("localhost:{port}"));
    }
    primary_ip().map(|ip| SocketAddr::new(ip, port).to_string())
}

/// This machine's address on its default route: the local end a UDP
/// socket would use to reach a documentation address. Connecting a UDP
/// socket sends nothing.
fn primary_ip() -> Option<IpAddr> {
    let socket = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).ok()?;
    socket.connect((Ipv4Addr::new(192, 0, 2, 1), 9)).ok()?;
    let ip = socket.local_addr().ok()?.ip();
    (!ip.is_loopback() && !ip.is_unspecified()).then_some(ip)
}

/// The warning for a server that listens beyond loopback but announces
/// `announced`, a loopback address: clients on other machines would be
/// sent to themselves.
pub fn loopback_warning(listening: SocketAddr, announced: &str) -> Option<String> {
    (!listening.ip().is_loopback() && is_loopback(announced)).then(|| {
        format!(
            "clients are sent to the BlockStore at {announced}, which only works on this machine, \
             though the server listens on {listening}; give --advertise HOST:PORT (or a \
             BLOCKSTORE_ADDR) that other machines can reach"
        )
    })
}

/// Whether the `host:port` address `addr` names this machine's loopback.
fn is_loopback(addr: &str) -> bool {
    let host = addr.rsplit_once(':').map_or(addr, |(host, _)| host);
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(addr: &str) -> SocketAddr {
        addr.parse().unwrap()
    }

    #[test]
    fn the_start_line_says_what_where_to_whom_and_the_data() {
        assert_eq!(
            start_line(
                "surfstore-server",
                "MetaStore+BlockStore",
                at("0.0.0.0:8080"),
                Some("10.0.0.5:8080"),
                Some(Path::new("/var/lib/surfstore")),
            ),
            "surfstore-server: serving MetaStore+BlockStore on 0.0.0.0:8080; \
             clients are sent to the BlockStore at 10.0.0.5:8080; data in /var/lib/surfstore"
        );
        assert_eq!(
            start_line(
                "surfstore-server",
                "BlockStore",
                at("127.0.0.1:1"),
                None,
                None
            ),
            "surfstore-server: serving BlockStore on 127.0.0.1:1; data in memory only (no --data-dir)"
        );
    }

    #[test]
    fn loopback_listeners_announce_localhost_others_a_routable_address() {
        assert_eq!(
            default_block_store_addr(at("127.0.0.1:4321")).as_deref(),
            Some("localhost:4321")
        );
        if let Some(addr) = default_block_store_addr(at("0.0.0.0:4321")) {
            assert!(addr.ends_with(":4321") && !is_loopback(&addr), "{addr}");
        }
    }

    #[test]
    fn only_a_loopback_announcement_from_a_wider_listener_is_warned_about() {
        for announced in [
            "localhost:1",
            "LOCALHOST:1",
            "127.0.0.1:1",
            "127.1.2.3:1",
            "[::1]:1",
        ] {
            assert!(
                loopback_warning(at("0.0.0.0:1"), announced).is_some(),
                "{announced}"
            );
            assert!(
                loopback_warning(at("127.0.0.1:1"), announced).is_none(),
                "{announced}"
            );
        }
        assert!(loopback_warning(at("0.0.0.0:1"), "files.example:1").is_none());
        assert!(loopback_warning(at("0.0.0.0:1"), "10.0.0.5:1").is_none());
    }
}
