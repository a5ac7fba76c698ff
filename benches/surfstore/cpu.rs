//! CPU time, read from /proc, next to every wall-clock figure.
//!
//! The bench machine is a VM shared with other work: when the host is busy
//! its cores are taken away for a while ("steal"), and wall times grow
//! without our code doing anything more. CPU seconds per process do not
//! count stolen time, so they say what the code costs even on a noisy
//! machine; the steal share says how much to trust the wall times.
//!
//! On a system without /proc (not Linux) every reading is zero.

use std::fs;

/// Clock ticks per second of /proc's CPU counters (`USER_HZ`, 100 on every
/// mainstream Linux; reading `sysconf` would need a libc binding for one
/// constant).
const TICKS_PER_SEC: f64 = 100.0;

/// The numeric fields of /proc/<pid>/stat after the command name, which
/// may itself contain spaces; index 0 is field 3 (`state`) of proc(5).
fn stat_fields(pid: &str) -> Vec<u64> {
    let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return Vec::new();
    };
    let Some((_, rest)) = stat.rsplit_once(')') else {
        return Vec::new();
    };
    rest.split_whitespace()
        .map(|f| f.parse().unwrap_or(0))
        .collect()
}

/// proc(5) field number `n` (1-based) out of [`stat_fields`].
fn field(fields: &[u64], n: usize) -> u64 {
    fields.get(n - 3).copied().unwrap_or(0)
}

/// User plus system seconds process `pid` has run so far.
pub fn process_secs(pid: u32) -> f64 {
    let f = stat_fields(&pid.to_string());
    (field(&f, 14) + field(&f, 15)) as f64 / TICKS_PER_SEC
}

/// User plus system seconds the calling thread has run so far.
pub fn thread_secs() -> f64 {
    let f = stat_fields("thread-self");
    (field(&f, 14) + field(&f, 15)) as f64 / TICKS_PER_SEC
}

/// User plus system seconds of this process's children that have exited
/// and been waited for (the client runs).
pub fn finished_children_secs() -> f64 {
    let f = stat_fields("self");
    (field(&f, 16) + field(&f, 17)) as f64 / TICKS_PER_SEC
}

/// The CPU seconds of a set of processes, to be read again later.
#[derive(Debug, Clone)]
pub struct Meter {
    pids: Vec<u32>,
    start: f64,
}

impl Meter {
    /// Starts counting the CPU time of `pids` from now.
    pub fn start(pids: Vec<u32>) -> Meter {
        let start = pids.iter().map(|&p| process_secs(p)).sum();
        Meter { pids, start }
    }

    /// CPU seconds the processes used since [`Meter::start`].
    pub fn elapsed(&self) -> f64 {
        self.pids.iter().map(|&p| process_secs(p)).sum::<f64>() - self.start
    }
}

/// The machine-wide counters of /proc/stat's `cpu` line: (steal, total).
fn machine_ticks() -> (u64, u64) {
    let Ok(stat) = fs::read_to_string("/proc/stat") else {
        return (0, 0);
    };
    let Some(line) = stat.lines().find(|l| l.starts_with("cpu ")) else {
        return (0, 0);
    };
    let ticks: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|f| f.parse().unwrap_or(0))
        .collect();
    // user nice system idle iowait irq softirq steal guest guest_nice;
    // guest time is already counted in user.
    let total = ticks.iter().take(8).sum();
    (ticks.get(7).copied().unwrap_or(0), total)
}

/// How much of the machine's CPU time the hypervisor took away.
#[derive(Debug, Clone, Copy)]
pub struct StealMeter {
    start: (u64, u64),
}

impl StealMeter {
    /// Starts counting from now.
    pub fn start() -> StealMeter {
        StealMeter {
            start: machine_ticks(),
        }
    }

    /// The percentage of CPU time stolen since [`StealMeter::start`].
    pub fn percent(&self) -> f64 {
        let (steal, total) = machine_ticks();
        let total = total.saturating_sub(self.start.1);
        if total == 0 {
            return 0.0;
        }
        100.0 * steal.saturating_sub(self.start.0) as f64 / total as f64
    }
}
