//! Capped exponential backoff with jitter: how long to leave a server that
//! failed alone before trying it again.
//!
//! Retrying a server that is down at the rate work arrives (a Raft leader
//! wakes its replication tasks on every proposal and commit) redials it
//! hundreds of times a second; waiting a fixed short time still hammers it
//! for as long as it is down. Doubling the wait up to a cap bounds that to
//! about one attempt per cap, and the jitter keeps servers that failed
//! together from being retried in lockstep.

use std::time::Duration;

/// Delays that double after every failure, from `base` up to `cap`, each
/// drawn at random from the upper half of its step.
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
    failures: u32,
}

impl Backoff {
    /// Starts at `base` and never waits longer than `cap`.
    pub fn new(base: Duration, cap: Duration) -> Self {
        Self {
            base,
            cap,
            failures: 0,
        }
    }

    /// The wait after one more failure: `base * 2^(failures before)`,
    /// capped, then a random point between half of that and all of it.
    pub fn next_delay(&mut self) -> Duration {
        let step = self
            .base
            .saturating_mul(1_u32 << self.failures.min(20))
            .min(self.cap);
        self.failures = self.failures.saturating_add(1);
        let half = step / 2;
        half + half.mul_f64(fastrand::f64())
    }

    /// After a success: the next failure waits `base` again.
    pub fn reset(&mut self) {
        self.failures = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn delays_double_up_to_the_cap_within_their_jitter() {
        let mut backoff = Backoff::new(50 * MS, 1000 * MS);
        for step in [50, 100, 200, 400, 800, 1000, 1000, 1000] {
            let delay = backoff.next_delay();
            assert!(
                delay >= step * MS / 2 && delay <= step * MS,
                "{delay:?} for a step of {step} ms"
            );
        }
        for _ in 0..100 {
            assert!(backoff.next_delay() <= 1000 * MS);
        }
        backoff.reset();
        assert!(backoff.next_delay() <= 50 * MS);
    }

    #[test]
    fn jitter_spreads_the_delays() {
        let mut delays: Vec<Duration> = (0..20)
            .map(|_| Backoff::new(1000 * MS, 1000 * MS).next_delay())
            .collect();
        delays.dedup();
        assert!(delays.len() > 1, "twenty equal delays: {delays:?}");
    }
}
