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
//!
//! In election mode ([`Schedule::with_elections`]) time passes too: ticks
//! of one server or of all, leaders heartbeat every [`HEARTBEAT_TICKS`] of
//! their ticks, vote requests and replies travel the same lossy network
//! (a winner fills its windows at once, as the node wakes its replication
//! tasks), and links fail: partitions into two sides, one-way and two-way
//! cuts of single links, and heals. A message on a cut link is lost when
//! it would be delivered.

use surfstore::proto::{
    AppendEntryInput, AppendEntryOutput, FileMetaData, RequestVoteInput, RequestVoteOutput,
};
use surfstore::raft::{
    MAX_INFLIGHT, Outgoing, OutgoingSnapshot, ReplicationStatus, SentAppend, ServerId, Term,
    VoteRequest,
};

use super::cluster::{Cluster, ELECTION_TICKS};

/// Messages in flight beyond which the oldest are lost, so that duplicates
/// cannot grow the network without bound.
const MAX_IN_FLIGHT: usize = 64;

/// Steps the liveness check may deliver messages for before giving up.
const LIVENESS_DELIVERIES: usize = 20_000;

/// Names proposals pick from: few, so the version rule both accepts and
/// rejects.
const FILES: usize = 3;

/// A leader's ticks between heartbeats: the node heartbeats every
/// `--heartbeat-ms`, by default N/5, and ticks every N/10.
const HEARTBEAT_TICKS: u32 = 2;

/// Ticks a healed, fully connected cluster gets to elect a leader in the
/// liveness check: ten election timeouts of the longest kind (2N). A server
/// that heard from a leader refuses PreVotes for up to N ticks and the
/// first timeout falls within 2N; with everything delivered within the
/// tick, an attempt fails only when two servers time out on the same tick,
/// a stale server times out first, or a server of a higher term deposes the
/// winner, and each failure costs at most another 2N. Measured over 200,000
/// schedules per cluster size (3 and 5): median 8 ticks, 1 in 10,000 above
/// 35, the slowest 42; a fifth of the bound.
pub const LIVENESS_TICKS: u32 = 20 * ELECTION_TICKS;

/// SplitMix64: a tiny, good-enough PRNG with a 64-bit state.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator for `seed`.
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
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
    Vote {
        from: ServerId,
        to: ServerId,
        pre_vote: bool,
        req: RequestVoteInput,
    },
    VoteReply {
        candidate: ServerId,
        voter: ServerId,
        pre_vote: bool,
        resp: RequestVoteOutput,
    },
}

impl Message {
    /// For replication traffic: the leader that sent the request this
    /// message belongs to, the peer, and what the leader keeps of it. A
    /// vote's failure tells the core nothing.
    fn call(&self) -> Option<(ServerId, ServerId, SentAppend)> {
        match self {
            Message::Request { from, to, sent, .. } => Some((*from, *to, *sent)),
            Message::Response {
                leader, peer, sent, ..
            } => Some((*leader, *peer, *sent)),
            Message::Snapshot { from, to, out } => Some((*from, *to, out.sent)),
            Message::Vote { .. } | Message::VoteReply { .. } => None,
        }
    }

    /// The link it travels: sender and receiver.
    fn route(&self) -> (ServerId, ServerId) {
        match self {
            Message::Request { from, to, .. }
            | Message::Snapshot { from, to, .. }
            | Message::Vote { from, to, .. } => (*from, *to),
            Message::Response { leader, peer, .. } => (*peer, *leader),
            Message::VoteReply {
                candidate, voter, ..
            } => (*voter, *candidate),
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
    Vote {
        request: bool,
        from: ServerId,
        to: ServerId,
    },
    Tick(ServerId),
    TickAll,
    /// The servers of the mask's bits lose every link to the others.
    Partition(u32),
    Cut {
        from: ServerId,
        to: ServerId,
        both: bool,
    },
    Heal,
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
    /// Election mode: ticks, votes and link failures are part of it.
    elections: bool,
    /// `links[from][to]`: messages from `from` reach `to`.
    links: Vec<Vec<bool>>,
    /// Per server: its ticks as leader since its last heartbeat.
    beats: Vec<u32>,
    /// Lost calls whose leader was not told yet: a node hears of every
    /// failed call once its deadline passes.
    unreported: Vec<(ServerId, ServerId, SentAppend)>,
}

impl Schedule {
    /// A fresh `size`-server cluster driven by `seed`, leaders made by
    /// `SetLeader` only.
    pub fn new(size: usize, seed: u64) -> Self {
        let cluster = Cluster::with_compaction(size, Self::snapshot_entries(seed), seed);
        Self::over(cluster, seed, false)
    }

    /// A fresh `size`-server cluster driven by `seed`, with elections.
    pub fn with_elections(size: usize, seed: u64) -> Self {
        let cluster = Cluster::with_elections(size, Self::snapshot_entries(seed), seed);
        Self::over(cluster, seed, true)
    }

    /// Four seeds in five compact, every 2 to 5 applied entries.
    fn snapshot_entries(seed: u64) -> usize {
        [0, 2, 3, 4, 5][(seed % 5) as usize]
    }

    fn over(cluster: Cluster, seed: u64, elections: bool) -> Self {
        let size = cluster.size();
        Self {
            cluster,
            rng: Rng::new(seed),
            network: Vec::new(),
            proposals: 0,
            events: Vec::new(),
            elections,
            links: vec![vec![true; size]; size],
            beats: vec![0; size],
            unreported: Vec::new(),
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
        let event = if self.elections {
            self.random_election_event()
        } else {
            self.random_event()
        };
        // Keep the schedule busy: an impossible action delivers instead.
        let event = match event {
            Event::Idle => self.random_delivery(),
            event => event,
        };
        self.send_votes();
        self.events.push(event);
        match event {
            Event::Round(leader) => self.cluster.check_round(leader),
            _ => Ok(()),
        }
    }

    /// A step of the SetLeader mode.
    fn random_event(&mut self) -> Event {
        match self.rng.below(100) {
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
        }
    }

    /// A step of the election mode: no synchronous rounds (they bypass the
    /// links), time and link failures instead.
    fn random_election_event(&mut self) -> Event {
        match self.rng.below(100) {
            0..2 => self.random_set_leader(),
            2..4 => self.random_crash(),
            4..9 => self.random_restore(),
            9..10 => self.random_restart(),
            10..18 => self.random_propose(),
            18..22 => self.random_broadcast(),
            22..23 => self.random_heartbeat(),
            23..25 => self.random_timeout(),
            25..26 => self.random_partition(),
            26..27 => self.random_cut(),
            27..29 => {
                self.heal();
                Event::Heal
            }
            29..41 => {
                self.tick_all();
                Event::TickAll
            }
            41..45 => {
                let id = self.rng.below(self.cluster.size());
                self.tick(id);
                Event::Tick(id)
            }
            _ => self.random_delivery(),
        }
    }

    /// One tick of every server; leaders heartbeat when due.
    pub fn tick_all(&mut self) {
        for id in 0..self.cluster.size() {
            self.tick(id);
        }
        self.send_votes();
    }

    /// One tick of `id`; as leader it heartbeats every
    /// [`HEARTBEAT_TICKS`] of its ticks.
    fn tick(&mut self, id: ServerId) {
        self.cluster.tick(id);
        if self.cluster.servers[id].crashed || !self.cluster.core(id).is_leader() {
            self.beats[id] = 0;
            return;
        }
        self.beats[id] += 1;
        if self.beats[id] >= HEARTBEAT_TICKS {
            self.beats[id] = 0;
            self.heartbeat(id);
        }
    }

    /// Puts the vote requests of durable Readies on the network.
    fn send_votes(&mut self) {
        for (from, vote) in self.cluster.take_votes() {
            let VoteRequest {
                to,
                pre_vote,
                request,
            } = vote;
            self.send(Message::Vote {
                from,
                to,
                pre_vote,
                req: request,
            });
        }
    }

    /// Cuts every link between a random side of the cluster and the rest.
    fn random_partition(&mut self) -> Event {
        let size = self.cluster.size();
        let mask = 1 + self.rng.below((1 << size) - 2) as u32;
        let side = |id: ServerId| mask & (1 << id) != 0;
        for from in 0..size {
            for to in 0..size {
                if side(from) != side(to) {
                    self.links[from][to] = false;
                }
            }
        }
        Event::Partition(mask)
    }

    /// Cuts one link, one way or both.
    fn random_cut(&mut self) -> Event {
        let size = self.cluster.size();
        let from = self.rng.below(size);
        let to = (from + 1 + self.rng.below(size - 1)) % size;
        let both = self.rng.chance(50);
        self.cut(from, to, both);
        Event::Cut { from, to, both }
    }

    /// Messages from `from` no longer reach `to` (nor back, with `both`).
    pub fn cut(&mut self, from: ServerId, to: ServerId, both: bool) {
        self.links[from][to] = false;
        if both {
            self.links[to][from] = false;
        }
    }

    /// Cuts `id` off from every other server, both ways.
    pub fn isolate(&mut self, id: ServerId) {
        for other in (0..self.cluster.size()).filter(|&o| o != id) {
            self.cut(id, other, true);
        }
    }

    /// Every link works again.
    pub fn heal(&mut self) {
        for row in &mut self.links {
            row.fill(true);
        }
    }

    /// The live leader of the highest term any server holds, if there is
    /// one: the leader every server follows once it hears from it.
    pub fn leader(&self) -> Option<ServerId> {
        let size = self.cluster.size();
        let top = (0..size).map(|i| self.cluster.core(i).term()).max()?;
        (0..size).find(|&i| {
            let core = self.cluster.core(i);
            !self.cluster.servers[i].crashed && core.is_leader() && core.term() == top
        })
    }

    /// Ticks every server and delivers everything in flight after each
    /// tick, until there is a [`Schedule::leader`]: that leader, unless
    /// `max_ticks` pass first.
    pub fn tick_until_leader(&mut self, max_ticks: u32) -> Result<ServerId, String> {
        for ticks in 0..=max_ticks {
            if ticks > 0 {
                self.tick_all();
            }
            self.deliver_all()?;
            if let Some(leader) = self.leader() {
                return Ok(leader);
            }
        }
        Err(format!("no leader within {max_ticks} ticks"))
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
        self.replicate(from, max);
        Event::Broadcast(from)
    }

    /// `leader` fills every peer's window with requests of at most `max`
    /// entries, as its woken replication tasks do.
    pub fn replicate(&mut self, leader: ServerId, max: usize) {
        for to in 0..self.cluster.size() {
            self.fill_window(leader, to, max);
        }
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

    /// Heartbeats from a random leader.
    fn random_heartbeat(&mut self) -> Event {
        let leaders = self.live_leaders();
        let Some(from) = self.rng.pick(&leaders) else {
            return Event::Idle;
        };
        self.heartbeat(from);
        Event::Heartbeat(from)
    }

    /// Heartbeats from `from` to all peers, outside the windows.
    fn heartbeat(&mut self, from: ServerId) {
        for to in 0..self.cluster.size() {
            if let Some(outgoing) = self.cluster.sync_request(from, to, 0) {
                self.send_request(from, to, outgoing);
            }
        }
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
        let Some((leader, peer, sent)) = self.network[at].call() else {
            // A vote call that times out is simply lost.
            self.network.swap_remove(at);
            return Event::Drop;
        };
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

    /// Delivers `message`, unless its link is cut; replies make the leader
    /// top up its windows with requests of at most `max` entries, and so
    /// does winning an election.
    fn deliver(&mut self, message: Message, max: usize) -> Event {
        let (sender, receiver) = message.route();
        if !self.links[sender][receiver] {
            self.forget(message);
            return Event::Drop;
        }
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
                    self.replicate(leader, max);
                }
                Event::Deliver {
                    request: false,
                    from: peer,
                    to: leader,
                }
            }
            Message::Vote {
                from,
                to,
                pre_vote,
                req,
            } => {
                if let Some(resp) = self.cluster.deliver_vote(to, &req, pre_vote) {
                    self.send(Message::VoteReply {
                        candidate: from,
                        voter: to,
                        pre_vote,
                        resp,
                    });
                }
                Event::Vote {
                    request: true,
                    from,
                    to,
                }
            }
            Message::VoteReply {
                candidate,
                voter,
                pre_vote,
                resp,
            } => {
                let was_leader = self.cluster.core(candidate).is_leader();
                self.cluster
                    .deliver_vote_reply(candidate, voter, pre_vote, &resp);
                if !was_leader && self.cluster.core(candidate).is_leader() {
                    self.replicate(candidate, max);
                }
                Event::Vote {
                    request: false,
                    from: voter,
                    to: candidate,
                }
            }
        }
    }

    /// Loses the message at `at` (see [`Schedule::forget`]).
    fn lose(&mut self, at: usize) {
        let message = self.network.swap_remove(at);
        self.forget(message);
    }

    /// A lost message: half the time its caller's deadline passes and the
    /// leader hears the call failed at once, else only later.
    fn forget(&mut self, message: Message) {
        let Some(call) = message.call() else {
            return;
        };
        if self.rng.chance(50) {
            let (leader, peer, sent) = call;
            self.cluster.report_unreachable(leader, peer, &sent);
        } else {
            self.unreported.push(call);
        }
    }

    /// Every call times out: the messages in flight are lost and every
    /// leader hears its calls failed, those lost earlier too.
    fn time_out_all(&mut self) {
        let in_flight = std::mem::take(&mut self.network);
        let calls = in_flight.iter().filter_map(Message::call);
        let lost = std::mem::take(&mut self.unreported);
        for (leader, peer, sent) in calls.chain(lost) {
            self.cluster.report_unreachable(leader, peer, &sent);
        }
    }

    /// Delivers until nothing is in flight (new messages included), in
    /// random order, duplicating some but losing none beyond cut links,
    /// checking the invariants after every delivery.
    pub fn deliver_all(&mut self) -> Result<(), String> {
        self.send_votes();
        let mut deliveries = 0;
        while !self.network.is_empty() {
            deliveries += 1;
            if deliveries > LIVENESS_DELIVERIES {
                return Err(format!(
                    "{} messages still in flight after {LIVENESS_DELIVERIES} deliveries",
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
            self.send_votes();
            self.cluster.check()?;
        }
        Ok(())
    }

    fn send(&mut self, message: Message) {
        if self.network.len() >= MAX_IN_FLIGHT {
            self.lose(0);
        }
        self.network.push(message);
    }

    /// Liveness: with every server up, a network that loses nothing (but
    /// still reorders and duplicates) and a leader whose log is the most
    /// up-to-date (made by SetLeader, or in election mode elected within
    /// [`LIVENESS_TICKS`] of healing every link), the windows alone
    /// confirm it, commit every entry (a fresh proposal of its term
    /// included) and make all logs, commit indices and maps equal; a
    /// SendHeartbeat round then changes nothing and reports a majority.
    pub fn check_liveness(&mut self) -> Result<(), String> {
        self.cluster.stop_cutting_writes();
        let size = self.cluster.size();
        for id in 0..size {
            self.cluster.restore(id);
        }
        let best = if self.elections {
            self.heal();
            self.time_out_all();
            self.tick_until_leader(LIVENESS_TICKS)
                .map_err(|e| format!("liveness: after the heal, {e}"))?
        } else {
            self.network.clear();
            self.set_most_up_to_date_leader()
        };
        let meta = self.next_meta();
        self.cluster
            .propose(best, meta)
            .map_err(|e| e.to_string())?;
        for to in 0..size {
            let max = self.rng.below(4) + 1;
            self.fill_window(best, to, max);
        }
        self.deliver_all().map_err(|e| format!("liveness: {e}"))?;
        self.check_converged(best)?;
        if !self.cluster.heartbeat(best) {
            return Err(format!("liveness: leader {best}'s round found no majority"));
        }
        self.cluster.check_round(best)?;
        self.check_converged(best)
    }

    /// SetLeader on the server with the most up-to-date durable log until
    /// it leads a term above every other's; that server.
    fn set_most_up_to_date_leader(&mut self) -> ServerId {
        let size = self.cluster.size();
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
        best
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
