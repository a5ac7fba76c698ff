//! Seeded random schedules over a [`Cluster`]: `SetLeader` on any server,
//! crashes, restores and restarts, proposals, heartbeats, and a network that
//! drops, duplicates and reorders messages. Leaders replicate as the node
//! does: they keep every request their window allows in flight per peer,
//! top the windows up after every reply, send heartbeats and synchronous
//! rounds outside the windows, and hear of failed calls (a dropped message
//! or a crashed receiver, like a call that times out; sometimes a call
//! "times out" whose reply still arrives later). Four seeds in five compact
//! every 2 to 5 applied entries, so leaders send snapshots (whole, as one
//! message that can be lost, duplicated or reordered like the others) and
//! crashes cut snapshot writes. Everything derives from one seed, so a
//! failing seed replays exactly.

use surfstore::proto::{AppendEntryInput, AppendEntryOutput, FileMetaData};
use surfstore::raft::{
    MAX_INFLIGHT, Outgoing, OutgoingSnapshot, ReplicationStatus, SentAppend, ServerId, Term,
};

use super::cluster::Cluster;

/// Messages in flight beyond which the oldest are lost, so that duplicates
/// cannot grow the network without bound.
const MAX_IN_FLIGHT: usize = 64;

/// Steps the liveness check may deliver messages for before giving up.
const LIVENESS_DELIVERIES: usize = 20_000;

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
    Snapshot {
        from: ServerId,
        to: ServerId,
        out: Box<OutgoingSnapshot>,
    },
}

impl Message {
    /// The leader that sent the request this message belongs to, the peer,
    /// and what the leader keeps of it.
    fn call(&self) -> (ServerId, ServerId, SentAppend) {
        match self {
            Message::Request { from, to, sent, .. } => (*from, *to, *sent),
            Message::Response {
                leader, peer, sent, ..
            } => (*leader, *peer, *sent),
            Message::Snapshot { from, to, out } => (*from, *to, out.sent),
        }
    }
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
    Heartbeat(ServerId),
    Round(ServerId),
    Timeout {
        leader: ServerId,
        peer: ServerId,
        lost: bool,
    },
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
        let snapshot_entries = [0, 2, 3, 4, 5][(seed % 5) as usize];
        Self {
            cluster: Cluster::with_compaction(size, snapshot_entries, seed),
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

    /// Runs one random step and records it; after a SendHeartbeat round,
    /// checks what the round promises.
    pub fn step(&mut self) -> Result<(), String> {
        let event = match self.rng.below(100) {
            0..5 => self.random_set_leader(),
            5..9 => self.random_crash(),
            9..15 => self.random_restore(),
            15..16 => self.random_restart(),
            16..31 => self.random_propose(),
            31..41 => self.random_broadcast(),
            41..44 => self.random_heartbeat(),
            44..48 => self.random_round(),
            48..52 => self.random_timeout(),
            _ => self.random_delivery(),
        };
        // Keep the schedule busy: an impossible action delivers instead.
        let event = match event {
            Event::Idle => self.random_delivery(),
            event => event,
        };
        self.events.push(event);
        match event {
            Event::Round(leader) => self.cluster.check_round(leader),
            _ => Ok(()),
        }
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

    /// A leader fills every peer's window, as its replication tasks do when
    /// woken; `max` entries per request (0 at times: empty probes).
    fn random_broadcast(&mut self) -> Event {
        let leaders = self.live_leaders();
        let Some(from) = self.rng.pick(&leaders) else {
            return Event::Idle;
        };
        let max = self.rng.below(4);
        for to in 0..self.cluster.size() {
            self.fill_window(from, to, max);
        }
        Event::Broadcast(from)
    }

    /// Sends `leader`'s window requests to `peer` until the core says none;
    /// then the snapshot, if the peer needs one and none is on its way.
    fn fill_window(&mut self, leader: ServerId, peer: ServerId, max: usize) {
        // A window holds MAX_INFLIGHT requests, plus one commit notice.
        for _ in 0..=MAX_INFLIGHT + 1 {
            let Some(outgoing) = self.cluster.next_append(leader, peer, max) else {
                let on_its_way = self.network.iter().any(|m| {
                    matches!(m, Message::Snapshot { from, to, .. } if (*from, *to) == (leader, peer))
                });
                if !on_its_way && let Some(out) = self.cluster.snapshot_for(leader, peer) {
                    self.send(Message::Snapshot {
                        from: leader,
                        to: peer,
                        out: Box::new(out),
                    });
                }
                return;
            };
            self.send_request(leader, peer, outgoing);
        }
        panic!("leader {leader} sent {peer} more than its window allows");
    }

    /// Heartbeats from a leader to all peers, outside the windows.
    fn random_heartbeat(&mut self) -> Event {
        let leaders = self.live_leaders();
        let Some(from) = self.rng.pick(&leaders) else {
            return Event::Idle;
        };
        for to in 0..self.cluster.size() {
            if let Some(outgoing) = self.cluster.sync_request(from, to, 0) {
                self.send_request(from, to, outgoing);
            }
        }
        Event::Heartbeat(from)
    }

    fn send_request(&mut self, from: ServerId, to: ServerId, outgoing: Outgoing) {
        let Outgoing { request, sent } = outgoing;
        self.send(Message::Request {
            from,
            to,
            req: request,
            sent,
        });
    }

    /// A call's deadline passes: the leader hears it failed. Half the time
    /// the message is lost too; otherwise its reply may still arrive late.
    fn random_timeout(&mut self) -> Event {
        if self.network.is_empty() {
            return Event::Idle;
        }
        let at = self.rng.below(self.network.len());
        let (leader, peer, sent) = self.network[at].call();
        let lost = self.rng.chance(50);
        if lost {
            self.network.swap_remove(at);
        }
        self.cluster.report_unreachable(leader, peer, &sent);
        Event::Timeout { leader, peer, lost }
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
    /// makes the leader top up its windows, as the node's replication tasks
    /// do after every reply and wake-up.
    fn random_delivery(&mut self) -> Event {
        if self.network.is_empty() {
            return Event::Idle;
        }
        let at = self.rng.below(self.network.len());
        if self.rng.chance(10) {
            self.lose(at);
            return Event::Drop;
        }
        let message = if self.rng.chance(10) {
            self.network[at].clone()
        } else {
            self.network.swap_remove(at)
        };
        let max = self.rng.below(4) + 1;
        self.deliver(message, max)
    }

    /// Delivers `message`; replies make the leader top up its windows with
    /// requests of at most `max` entries.
    fn deliver(&mut self, message: Message, max: usize) -> Event {
        match message {
            Message::Request {
                from,
                to,
                req,
                sent,
            } => {
                match self.cluster.deliver_request(to, &req) {
                    Some(resp) => self.send(Message::Response {
                        leader: from,
                        peer: to,
                        sent,
                        resp,
                    }),
                    // The caller's call fails at once.
                    None => self.cluster.report_unreachable(from, to, &sent),
                }
                Event::Deliver {
                    request: true,
                    from,
                    to,
                }
            }
            Message::Snapshot { from, to, out } => {
                match self.cluster.deliver_snapshot(to, &out) {
                    Some(resp) => self.send(Message::Response {
                        leader: from,
                        peer: to,
                        sent: out.sent,
                        resp,
                    }),
                    None => self.cluster.report_unreachable(from, to, &out.sent),
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
                // A refusing peer is asked again only later (the node pauses).
                if status.is_some_and(|s| s != ReplicationStatus::Denied) {
                    for to in 0..self.cluster.size() {
                        self.fill_window(leader, to, max);
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

    /// Loses the message at `at`; half the time its caller's deadline
    /// passes and the leader hears the call failed.
    fn lose(&mut self, at: usize) {
        let message = self.network.swap_remove(at);
        if self.rng.chance(50) {
            let (leader, peer, sent) = message.call();
            self.cluster.report_unreachable(leader, peer, &sent);
        }
    }

    fn send(&mut self, message: Message) {
        if self.network.len() >= MAX_IN_FLIGHT {
            self.lose(0);
        }
        self.network.push(message);
    }

    /// Liveness: with every server up, a network that loses nothing (but
    /// still reorders and duplicates) and a leader whose log is the most
    /// up-to-date, the windows alone confirm it, commit every entry (a fresh
    /// proposal of its term included) and make all logs, commit indices and
    /// maps equal; a SendHeartbeat round then changes nothing and reports a
    /// majority.
    pub fn check_liveness(&mut self) -> Result<(), String> {
        self.network.clear();
        self.cluster.stop_cutting_writes();
        let size = self.cluster.size();
        for id in 0..size {
            self.cluster.restore(id);
        }
        let best = (0..size)
            .max_by_key(|&i| self.cluster.servers[i].disk.last_id())
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
        for to in 0..size {
            let max = self.rng.below(4) + 1;
            self.fill_window(best, to, max);
        }
        let mut deliveries = 0;
        while !self.network.is_empty() {
            deliveries += 1;
            if deliveries > LIVENESS_DELIVERIES {
                return Err(format!(
                    "liveness: {} messages still in flight after {LIVENESS_DELIVERIES} deliveries",
                    self.network.len()
                ));
            }
            let at = self.rng.below(self.network.len());
            let message = if self.rng.chance(5) {
                self.network[at].clone()
            } else {
                self.network.swap_remove(at)
            };
            let max = self.rng.below(4) + 1;
            self.deliver(message, max);
            self.cluster.check()?;
        }
        self.check_converged(best)?;
        if !self.cluster.heartbeat(best) {
            return Err(format!("liveness: leader {best}'s round found no majority"));
        }
        self.cluster.check_round(best)?;
        self.check_converged(best)
    }

    /// Every server holds `best`'s log, committed in full, and the same map;
    /// `best` is a confirmed leader.
    fn check_converged(&mut self, best: ServerId) -> Result<(), String> {
        let size = self.cluster.size();
        self.cluster.check()?;
        let leader = self.cluster.core(best);
        if !leader.is_confirmed_leader() {
            return Err(format!("liveness: leader {best} is not confirmed"));
        }
        let last = leader.last_index();
        if leader.commit_index() != last {
            return Err(format!(
                "liveness: leader {best} committed {} of {last}",
                leader.commit_index()
            ));
        }
        let leader_ids = &self.cluster.servers[best].disk.ids;
        for id in 0..size {
            let server = &self.cluster.servers[id];
            if server.disk.ids != *leader_ids || server.core.commit_index() != last {
                return Err(format!(
                    "liveness: server {id} (commit {}) differs from leader {best}:\n{:?}\n{:?}",
                    server.core.commit_index(),
                    server.disk.ids,
                    leader_ids
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
