//! A network between Raft servers that tests (and the bench's failover
//! rounds, which include this file) can partition and slow down: every peer
//! link (server `i` calling server `j`) goes through a small TCP proxy on
//! loopback, which forwards, or freezes: connections open across it stay
//! open but carry nothing, and new ones are accepted and then carry
//! nothing, as when a network drops every packet. Healing closes the frozen
//! connections (their keepalives would have given up on them) and forwards
//! new ones again. Cutting one direction (`i` → `j`) leaves the other
//! working: one-way loss. A delay holds every byte for that long before
//! passing it on, both ways of the link's connections, as a slow network
//! does (a call across it waits twice the delay).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

/// One directed link: the address server `from` dials for server `to`.
pub struct Link {
    /// The proxy's address.
    pub addr: String,
    up: watch::Sender<bool>,
    /// Milliseconds each byte is held.
    delay_ms: Arc<AtomicU64>,
}

impl Link {
    /// A proxy to `target`, forwarding, on a free loopback port; runs on
    /// the current tokio runtime.
    pub async fn to(target: String) -> std::io::Result<Link> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?.to_string();
        let (up, watching) = watch::channel(true);
        let delay_ms = Arc::new(AtomicU64::new(0));
        let delay = Arc::clone(&delay_ms);
        tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                tokio::spawn(carry(
                    inbound,
                    target.clone(),
                    watching.clone(),
                    Arc::clone(&delay),
                ));
            }
        });
        Ok(Link { addr, up, delay_ms })
    }

    /// Forwards (`true`) or freezes (`false`) the link.
    pub fn set_up(&self, up: bool) {
        self.up.send_replace(up);
    }

    /// Holds every byte sent from now on for `delay` (zero: none).
    pub fn set_delay(&self, delay: Duration) {
        let ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
        self.delay_ms.store(ms, Ordering::Relaxed);
    }
}

/// Forwards one connection while the link is up; frozen while it is down;
/// closed when a frozen link heals.
async fn carry(
    mut inbound: TcpStream,
    target: String,
    mut up: watch::Receiver<bool>,
    delay_ms: Arc<AtomicU64>,
) {
    if !*up.borrow_and_update() {
        let _ = up.wait_for(|&up| up).await;
        return;
    }
    let Ok(mut outbound) = TcpStream::connect(&target).await else {
        return;
    };
    // As the servers' own sockets: without it a small write waits for the
    // ACK of the previous one, which the peer delays by up to 40 ms.
    let _ = inbound.set_nodelay(true);
    let _ = outbound.set_nodelay(true);
    let frozen = {
        let (in_read, in_write) = inbound.split();
        let (out_read, out_write) = outbound.split();
        tokio::select! {
            () = async {
                tokio::join!(
                    pass_on(in_read, out_write, &delay_ms),
                    pass_on(out_read, in_write, &delay_ms),
                );
            } => false,
            _ = up.wait_for(|&up| !up) => true,
        }
    };
    if frozen {
        let _held = (inbound, outbound);
        let _ = up.wait_for(|&up| up).await;
    }
}

/// Copies `from` to `to` until either ends, each chunk written once it has
/// been held for the link's delay at the time it was read (so bytes keep
/// their order and a delay change applies to what is read after it).
async fn pass_on(
    mut from: impl AsyncRead + Unpin,
    mut to: impl AsyncWrite + Unpin,
    delay_ms: &AtomicU64,
) {
    let (held, mut due) = mpsc::unbounded_channel::<(Instant, Vec<u8>)>();
    let read = async move {
        let mut buf = vec![0; 64 << 10];
        while let Ok(n @ 1..) = from.read(&mut buf).await {
            let when = Instant::now() + Duration::from_millis(delay_ms.load(Ordering::Relaxed));
            if held.send((when, buf[..n].to_vec())).is_err() {
                return;
            }
        }
    };
    let write = async move {
        while let Some((when, bytes)) = due.recv().await {
            // A timer rounds up to its next millisecond tick: an undelayed
            // link must not wait for one.
            if when > Instant::now() {
                tokio::time::sleep_until(when).await;
            }
            if to.write_all(&bytes).await.is_err() {
                return;
            }
        }
        let _ = to.shutdown().await;
    };
    tokio::join!(read, write);
}

/// The links of an `n`-server cluster: `links[i][j]` is how `i` reaches
/// `j` (`None` for `i == j`).
pub struct Network {
    links: Vec<Vec<Option<Link>>>,
}

impl Network {
    /// Proxies between every ordered pair of `addrs`.
    pub async fn between(addrs: &[String]) -> std::io::Result<Network> {
        let mut links = Vec::new();
        for i in 0..addrs.len() {
            let mut row = Vec::new();
            for (j, target) in addrs.iter().enumerate() {
                row.push(if i == j {
                    None
                } else {
                    Some(Link::to(target.clone()).await?)
                });
            }
            links.push(row);
        }
        Ok(Network { links })
    }

    /// The addresses server `i` dials: the proxies, and its own address.
    pub fn seen_from(&self, i: usize, own: &str) -> Vec<String> {
        self.links[i]
            .iter()
            .map(|link| link.as_ref().map_or(own.to_string(), |l| l.addr.clone()))
            .collect()
    }

    /// Freezes or forwards `from` → `to`.
    pub fn set(&self, from: usize, to: usize, up: bool) {
        if let Some(link) = &self.links[from][to] {
            link.set_up(up);
        }
    }

    /// Cuts every link to and from `i`.
    pub fn isolate(&self, i: usize) {
        for j in 0..self.links.len() {
            self.set(i, j, false);
            self.set(j, i, false);
        }
    }

    /// Holds the bytes of every link to and from `i` for `delay`.
    pub fn slow_down(&self, i: usize, delay: Duration) {
        for j in 0..self.links.len() {
            for (from, to) in [(i, j), (j, i)] {
                if let Some(link) = &self.links[from][to] {
                    link.set_delay(delay);
                }
            }
        }
    }

    /// Every link forwards again, without delay.
    pub fn heal(&self) {
        for row in &self.links {
            for link in row.iter().flatten() {
                link.set_up(true);
                link.set_delay(Duration::ZERO);
            }
        }
    }
}
