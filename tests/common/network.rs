//! A network between Raft servers that tests can partition: every peer link
//! (server `i` calling server `j`) goes through a small TCP proxy on
//! loopback, which forwards, or freezes: connections open across it stay
//! open but carry nothing, and new ones are accepted and then carry nothing,
//! as when a network drops every packet. Healing closes the frozen
//! connections (their keepalives would have given up on them) and forwards
//! new ones again. Cutting one direction (`i` → `j`) leaves the other
//! working: one-way loss.

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// One directed link: the address server `from` dials for server `to`.
pub struct Link {
    /// The proxy's address.
    pub addr: String,
    up: watch::Sender<bool>,
}

impl Link {
    /// A proxy to `target`, forwarding, on a free loopback port; runs on
    /// the current tokio runtime.
    pub async fn to(target: String) -> Link {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a proxy");
        let addr = listener.local_addr().expect("proxy address").to_string();
        let (up, watching) = watch::channel(true);
        tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                tokio::spawn(carry(inbound, target.clone(), watching.clone()));
            }
        });
        Link { addr, up }
    }

    /// Forwards (`true`) or freezes (`false`) the link.
    pub fn set_up(&self, up: bool) {
        self.up.send_replace(up);
    }
}

/// Forwards one connection while the link is up; frozen while it is down;
/// closed when a frozen link heals.
async fn carry(mut inbound: TcpStream, target: String, mut up: watch::Receiver<bool>) {
    if !*up.borrow_and_update() {
        let _ = up.wait_for(|&up| up).await;
        return;
    }
    let Ok(mut outbound) = TcpStream::connect(&target).await else {
        return;
    };
    let frozen = tokio::select! {
        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => false,
        _ = up.wait_for(|&up| !up) => true,
    };
    if frozen {
        let _held = (inbound, outbound);
        let _ = up.wait_for(|&up| up).await;
    }
}

/// The links of an `n`-server cluster: `links[i][j]` is how `i` reaches
/// `j` (`None` for `i == j`).
pub struct Network {
    links: Vec<Vec<Option<Link>>>,
}

impl Network {
    /// Proxies between every ordered pair of `addrs`.
    pub async fn between(addrs: &[String]) -> Network {
        let mut links = Vec::new();
        for i in 0..addrs.len() {
            let mut row = Vec::new();
            for (j, target) in addrs.iter().enumerate() {
                row.push(if i == j {
                    None
                } else {
                    Some(Link::to(target.clone()).await)
                });
            }
            links.push(row);
        }
        Network { links }
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

    /// Every link forwards again.
    pub fn heal(&self) {
        for from in 0..self.links.len() {
            for to in 0..self.links.len() {
                self.set(from, to, true);
            }
        }
    }
}
