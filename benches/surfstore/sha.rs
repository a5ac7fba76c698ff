//! B7: how fast this machine hashes on one core, with the function the
//! client and the BlockStore use ([`surfstore::hash::hash_block`]: SHA-256
//! plus hex), in this process, in this run. Every sync figure is divided by
//! it, so results from different machines (or a busy one) compare.
//!
//! The rate is bytes per second of this thread's CPU time, not of wall
//! time: on a shared VM the hypervisor can take the core away for much of a
//! short measurement, which would make the yardstick itself wrong. The wall
//! rate is kept too, to show how much was taken.

use std::hint::black_box;
use std::time::{Duration, Instant};

use surfstore::hash::hash_block;

use crate::data::Rng;
use crate::{Scale, cpu};

/// Single-core hashing rates, in bytes per CPU second.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ShaRate {
    /// Hashing 4 MiB blocks.
    pub block_4m_bytes_per_sec: f64,
    /// Hashing 4 KiB blocks (per-call overhead shows here).
    pub block_4k_bytes_per_sec: f64,
    /// Hashing 4 MiB blocks, per second of wall time.
    pub block_4m_wall_bytes_per_sec: f64,
}

/// Measures both rates for `scale.sha_duration` each.
pub fn measure(scale: &Scale) -> ShaRate {
    let (block_4m_bytes_per_sec, block_4m_wall_bytes_per_sec) = rate(4 << 20, scale.sha_duration);
    ShaRate {
        block_4m_bytes_per_sec,
        block_4k_bytes_per_sec: rate(4 << 10, scale.sha_duration).0,
        block_4m_wall_bytes_per_sec,
    }
}

/// Bytes per CPU second and per wall second hashing blocks of `block`
/// bytes for about `duration` of CPU time.
fn rate(block: usize, duration: Duration) -> (f64, f64) {
    let mut data = vec![0u8; block];
    Rng::new(7).fill(&mut data);
    // One untimed call so the first timed one does not pay for page faults.
    black_box(hash_block(&data));
    let started = Instant::now();
    let cpu_start = cpu::thread_secs();
    let mut hashed = 0u64;
    loop {
        let cpu = cpu::thread_secs() - cpu_start;
        // /proc counts in 10 ms ticks: a zero reading means no /proc, so
        // fall back to wall time rather than loop forever.
        if cpu >= duration.as_secs_f64() || started.elapsed() > 10 * duration {
            let wall = hashed as f64 / started.elapsed().as_secs_f64();
            let per_cpu = if cpu > 0.0 { hashed as f64 / cpu } else { wall };
            return (per_cpu, wall);
        }
        for _ in 0..16 {
            black_box(hash_block(black_box(&data)));
        }
        hashed += 16 * block as u64;
    }
}
