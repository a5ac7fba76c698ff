//! B7: how fast this machine hashes on one core, with the function the
//! client and the BlockStore use ([`surfstore::hash::hash_block`]: SHA-256
//! plus hex), in this process, in this run. Every sync figure is divided by
//! it, so results from different machines (or a busy one) compare.

use std::hint::black_box;
use std::time::{Duration, Instant};

use surfstore::hash::hash_block;

use crate::Scale;
use crate::data::Rng;

/// Single-core hashing rates, in bytes per second.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ShaRate {
    /// Hashing 4 MiB blocks.
    pub block_4m_bytes_per_sec: f64,
    /// Hashing 4 KiB blocks (per-call overhead shows here).
    pub block_4k_bytes_per_sec: f64,
}

/// Measures both rates for `scale.sha_duration` each.
pub fn measure(scale: &Scale) -> ShaRate {
    ShaRate {
        block_4m_bytes_per_sec: rate(4 << 20, scale.sha_duration),
        block_4k_bytes_per_sec: rate(4 << 10, scale.sha_duration),
    }
}

/// Bytes per second hashing blocks of `block` bytes for about `duration`.
fn rate(block: usize, duration: Duration) -> f64 {
    let mut data = vec![0u8; block];
    Rng::new(7).fill(&mut data);
    // One untimed call so the first timed one does not pay for page faults.
    black_box(hash_block(&data));
    let started = Instant::now();
    let mut hashed = 0u64;
    while started.elapsed() < duration {
        for _ in 0..16 {
            black_box(hash_block(black_box(&data)));
        }
        hashed += 16 * block as u64;
    }
    hashed as f64 / started.elapsed().as_secs_f64()
}
