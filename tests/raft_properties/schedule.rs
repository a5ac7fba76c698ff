//! Seeded random schedules over a [`Cluster`]: `SetLeader` on any server,
//! crashes, restores and restarts, proposals, heartbeats, and a network that
//! drops, duplicates and reorders messages. Everything derives from one
//! seed, so a failing seed replays exactly.

use surfstore::proto::{AppendEntryInput, AppendEntryOutput, FileMetaData};
use surfstore::raft::{Outgoing, ReplicationStatus, SentAppend, ServerId, Term};

use super::cluster::Cluster;

/// Messages in flight beyond which the oldest are lost, so that duplicates
/// cannot grow the network without bound.
const MAX_IN_FLIGHT: usize = 48;

/// Names proposals pick from: few, so the version rule both accepts and
/// rejects.
const FILES: usize = 3;

/// SplitMix64: a tiny, good-enough PRNG with a 64-bit state.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator for `seed`.
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n > 0`).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    /// True with probability `percent`/100.
    pub fn chance(&mut self, percent: u64) -> bool {
        self.next_u64() % 100 < percent
    }

    /// A uniformly chosen element of `items`, if any.
    pub fn pick<T: Copy>(&mut self, items: &[T]) -> Option<T> {
        (!items.is_empty()).then(|| items[self.below(items.len())])
    }
}

/// One message on the simulated network.
#[derive(Debug, Clone)]
enum Message {
    Request {
        from: ServerId,
        to: ServerId,
        req: AppendEntryInput,
        sent: SentAppend,
    },
    Response {
        leader: ServerId,
        peer: ServerId,
        sent: SentAppend,
        resp: AppendEntryOutput,
    },
}

/// One step of a schedule, kept for the failure report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    SetLeader(ServerId),
    Crash(ServerId),
    Restore(ServerId),
    Restart(ServerId),
    Propose(ServerId),
    Broadcast(ServerId),
    Round(ServerId),
    Deliver {
        request: bool,
        from: ServerId,
        to: ServerId,
    },
    Drop,
    Idle,
}

/// A random schedule in progress.
pub struct Schedule {
    pub cluster: Cluster,
    rng: Rng,
    network: Vec<Message>,
    proposals: usize,
    pub events: Vec<Event>,
}

impl Schedule {
    /// A fresh `size`-server cluster driven by `seed`.
    pub fn new(size: usize, seed: u64) -> Self {
        Self {
            cluster: Cluster::new(size),
            rng: Rng::new(seed),
            network: Vec::new(),
            proposals: 0,
            events: Vec::new(),
        }
    }

    /// A unique proposal (its block list names it) for a random file.
    pub fn next_meta(&mut self) -> FileMetaData {
        self.proposals += 1;
        FileMetaData {
            filename: format!("f{}", self.rng.below(FILES)),
            version: i32::try_from(self.rng.below(3) + 1).unwrap_or(1),
            block_hash_list: vec![format!("p{}", self.proposals)],
        }
    }

    fn live(&self) -> Vec<ServerId> {
        (0..self.cluster.size())
            .filter(|&i| !self.cluster.servers[i].crashed)
            .collect()
    }

    fn live_leaders(&self) -> Vec<ServerId> {
        self.live()
            .into_iter()
            .filter(|&i| self.cluster.core(i).is_leader())
            .collect()
    }

    /// Runs one random step and records it.
    pub fn step(&mut self) {
        let event = match self.rng.below(100) {
            0..5 => self.random_set_leader(),
            5..9 => self.random_crash(),
            9..15 => self.random_restore(),
            15..16 => self.random_restart(),
            16..31 => self.random_propose(),
            31..46 => self.random_broadcast(),
            46..51 => self.random_round(),
            _ => self.random_delivery(),
        };
        // Keep the schedule busy: an impossible action delivers instead.
        let event = match event {
            Event::Idle => self.random_delivery(),
            event => event,
        };
        self.events.push(event);
    }

    /// Half the time, a server one term behind the newest leader: its
    /// SetLeader makes a second leader of that term, the case the vote rule
    /// is for.
    fn random_set_leader(&mut self) -> Event {
        let live = self.live();
        let newest = (0..self.cluster.size())
            .filter(|&i| self.cluster.core(i).is_leader())
            .map(|i| self.cluster.core(i).term())
            .max();
        let rivals: Vec<ServerId> = live
            .iter()
            .copied()
            .filter(|&i| Some(self.cluster.core(i).term() + 1) == newest)
            .collect();
        let candidates = if !rivals.is_empty() && self.rng.chance(50) {
            rivals
        } else {
            live
        };
        match self.rng.pick(&candidates) {
            Some(id) => {
                self.cluster.set_leader(id);
                Event::SetLeader(id)
            }
            None => Event::Idle,
        }
    }

    fn random_crash(&mut self) -> Event {
        let live = self.live();
        match self.rng.pick(&live) {
            Some(id) => {
                self.cluster.crash(id);
                Event::Crash(id)
            }
            None => Event::Idle,
        }
    }

    fn random_restore(&mut self) -> Event {
        let crashed: Vec<ServerId> = (0..self.cluster.size())
            .filter(|&i| self.cluster.servers[i].crashed)
            .collect();
        match self.rng.pick(&crashed) {
            Some(id) => {
                self.cluster.restore(id);
                Event::Restore(id)
            }
            None => Event::Idle,
        }
    }

    fn random_restart(&mut self) -> Event {
        let id = self.rng.below(self.cluster.size());
        self.cluster.restart(id);
        Event::Restart(id)
    }

    fn random_propose(&mut self) -> Event {
        let leaders = self.live_leaders();
        match self.rng.pick(&leaders) {
            Some(id) => {
                let meta = self.next_meta();
                assert!(
                    self.cluster.propose(id, meta).is_ok(),
                    "a live leader proposes"
                );
                Event::Propose(id)
            }
            None => Event::Idle,
        }
    }

    /// Requests from a leader to all peers, onto the network.
    fn random_broadcast(&mut self) -> Event {
        let leaders = self.live_leaders();
        let Some(from) = self.rng.pick(&leaders) else {
            return Event::Idle;
        };
        let max = self.rng.below(4);
        for to in 0..self.cluster.size() {
            if let Some(Outgoing { request, sent }) = self.cluster.sync_request(from, to, max) {
                self.send(Message::Request {
                    from,
                    to,
                    req: request,
                    sent,
                });
            }
        }
        Event::Broadcast(from)
    }

    /// A synchronous SendHeartbeat round, bypassing the network.
    fn random_round(&mut self) -> Event {
        let leaders = self.live_leaders();
        match self.rng.pick(&leaders) {
            Some(id) => {
                self.cluster.heartbeat(id);
                Event::Round(id)
            }
            None => Event::Idle,
        }
    }

    /// Delivers, duplicates or drops a random in-flight message. A reply
    /// saying "send more" makes the leader send again, as the node's repair
    /// loop does.
    fn random_delivery(&mut self) -> Event {
        if self.network.is_empty() {
            return Event::Idle;
        }
        let at = self.rng.below(self.network.len());
        if self.rng.chance(10) {
            self.network.swap_remove(at);
            return Event::Drop;
        }
        let message = if self.rng.chance(10) {
            self.network[at].clone()
        } else {
            self.network.swap_remove(at)
        };
        match message {
            Message::Request {
                from,
                to,
                req,
                sent,
            } => {
                if let Some(resp) = self.cluster.deliver_request(to, &req) {
                    let (leader, peer) = (from, to);
                    self.send(Message::Response {
                        leader,
                        peer,
                        sent,
                        resp,
                    });
                }
                Event::Deliver {
                    request: true,
                    from,
                    to,
                }
            }
            Message::Response {
                leader,
                peer,
                sent,
                resp,
            } => {
                let status = self.cluster.deliver_response(leader, peer, &sent, &resp);
                if status == Some(ReplicationStatus::SendMore) {
                    let max = self.rng.below(4) + 1;
                    if let Some(Outgoing { request, sent }) =
                        self.cluster.sync_request(leader, peer, max)
                    {
                        self.send(Message::Request {
                            from: leader,
                            to: peer,
                            req: request,
                            sent,
                        });
                    }
                }
                Event::Deliver {
                    request: false,
                    from: peer,
                    to: leader,
                }
            }
        }
    }

    fn send(&mut self, message: Message) {
        if self.network.len() >= MAX_IN_FLIGHT {
            self.network.remove(0);
        }
        self.network.push(message);
    }

    /// Liveness: with every server up, a quiet network and a leader whose
    /// log is the most up-to-date, a few rounds confirm it, commit every
    /// entry (a fresh proposal of its term included) and make all logs,
    /// commit indices and maps equal.
    pub fn check_liveness(&mut self) -> Result<(), String> {
        self.network.clear();
        let size = self.cluster.size();
        for id in 0..size {
            self.cluster.restore(id);
        }
        let best = (0..size)
            .max_by_key(|&i| {
                let log = &self.cluster.servers[i].disk.log;
                (log.last().map_or(-1, |e| e.term), log.len())
            })
            .unwrap_or(0);
        let top_term: Term = (0..size)
            .map(|i| self.cluster.core(i).term())
            .max()
            .unwrap_or(0);
        while self.cluster.core(best).term() <= top_term || !self.cluster.core(best).is_leader() {
            self.cluster.set_leader(best);
        }
        let meta = self.next_meta();
        self.cluster
            .propose(best, meta)
            .map_err(|e| e.to_string())?;
        for _ in 0..3 {
            self.cluster.heartbeat(best);
        }
        self.cluster.check()?;
        let leader = self.cluster.core(best);
        if !leader.is_confirmed_leader() {
            return Err(format!("liveness: leader {best} is not confirmed"));
        }
        let last = leader.log().len() as i64 - 1;
        if leader.commit_index() != last {
            return Err(format!(
                "liveness: leader {best} committed {} of {last}",
                leader.commit_index()
            ));
        }
        for id in 0..size {
            let server = &self.cluster.servers[id];
            if server.core.log() != leader.log() || server.core.commit_index() != last {
                return Err(format!(
                    "liveness: server {id} (commit {}) differs from leader {best}:\n{:?}\n{:?}",
                    server.core.commit_index(),
                    server.core.log(),
                    leader.log()
                ));
            }
            if server.map != self.cluster.servers[best].map {
                return Err(format!(
                    "liveness: server {id}'s map differs from the leader's"
                ));
            }
        }
        Ok(())
    }
}
