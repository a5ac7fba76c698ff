//! What a run reports: the markdown table (stdout and `results.md`), the raw
//! numbers (`results.json`) and a chart (`chart.png`), all under
//! `target/bench/`. The targets the team works towards are compared here,
//! as facts in the table; nothing fails on a number.

use std::fmt::Write as _;
use std::path::Path;

use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use crate::backends::{BackendRow, Backends};
use crate::failover::FailoverRow;
use crate::gc::GcRow;
use crate::growth::GrowthRow;
use crate::load::{COMMIT_CLIENTS, LoadRow};
use crate::secure::TlsRow;
use crate::sha::ShaRate;
use crate::sync::{LARGE_BLOCK, SMALL_BLOCK, SyncRow, human_bytes};
use crate::{BenchResult, Machine};

/// Everything one run measured.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Results {
    /// `full` or `quick`.
    pub scale: String,
    /// Where it ran.
    pub machine: Machine,
    /// B7.
    pub sha: ShaRate,
    /// B1–B5.
    pub sync: Vec<SyncRow>,
    /// B8.
    pub backends: Backends,
    /// B6 UpdateFile points.
    pub commits: Vec<LoadRow>,
    /// B6 PutBlock points.
    pub puts: Vec<LoadRow>,
    /// B6 GetFileInfoMap points: concurrent readers of one map.
    pub reads: Vec<LoadRow>,
    /// Files in the map of the read points.
    pub read_files: usize,
    /// B6 beside etcd.
    pub etcd: EtcdSide,
    /// T1: TLS and tokens against plaintext.
    pub tls: Vec<TlsRow>,
    /// B9, with compaction first.
    pub growth: Vec<GrowthRow>,
    /// B10.
    pub gc: Option<GcRow>,
    /// F1: per election timeout, a row per kind of fault and one for all.
    pub failover: Vec<FailoverRow>,
}

/// etcd's figures beside ours.
#[derive(Debug, Clone, serde::Serialize)]
pub struct EtcdSide {
    /// Which etcd ran the `etcd-3` points, or why none did.
    pub status: String,
    /// One per commit client count.
    pub rows: Vec<EtcdVsOurs>,
}

/// At one client count: etcd's committed Puts per second beside the 3-server
/// Raft cluster's UpdateFile commits per second (latencies are in the
/// `commits` rows), and ours over etcd's.
#[derive(Debug, Clone, serde::Serialize)]
pub struct EtcdVsOurs {
    /// Concurrent clients.
    pub clients: usize,
    /// `etcd-3` Puts per second; null when etcd did not run.
    pub etcd_per_sec: Option<f64>,
    /// `raft-3` with `--data-dir`, commits per second.
    pub ours_disk_per_sec: Option<f64>,
    /// `raft-3` in memory, commits per second.
    pub ours_mem_per_sec: Option<f64>,
    /// `ours_disk_per_sec / etcd_per_sec`: above 1, ours commits more.
    pub ours_disk_vs_etcd: Option<f64>,
    /// `ours_mem_per_sec / etcd_per_sec`.
    pub ours_mem_vs_etcd: Option<f64>,
}

/// Compares the `etcd-3` rows of `commits` with the `raft-3` ones; `status`
/// says which etcd ran (or [`crate::etcd::NOT_INSTALLED`]).
pub fn etcd_side(commits: &[LoadRow], status: String) -> EtcdSide {
    let rate = |store: &str, durable: bool, clients: usize| {
        commits
            .iter()
            .find(|r| r.store == store && r.durable == durable && r.clients == clients)
            .map(LoadRow::ops_per_sec)
    };
    let rows = COMMIT_CLIENTS
        .iter()
        .map(|&clients| {
            let etcd = rate("etcd-3", true, clients);
            let disk = rate("raft-3", true, clients);
            let mem = rate("raft-3", false, clients);
            let vs = |ours: Option<f64>| Some(ours? / etcd?);
            EtcdVsOurs {
                clients,
                etcd_per_sec: etcd,
                ours_disk_per_sec: disk,
                ours_mem_per_sec: mem,
                ours_disk_vs_etcd: vs(disk),
                ours_mem_vs_etcd: vs(mem),
            }
        })
        .filter(|row| row.ours_disk_per_sec.is_some() || row.etcd_per_sec.is_some())
        .collect();
    EtcdSide { status, rows }
}

impl Results {
    fn sha_mb_per_sec(&self) -> f64 {
        self.sha.block_4m_bytes_per_sec / 1e6
    }

    fn sync_row(&self, id: &str, block_size: u64) -> Option<&SyncRow> {
        self.sync
            .iter()
            .find(|r| r.id == id && r.block_size == block_size)
    }

    fn commit_row(&self, store: &str, durable: bool, clients: usize) -> Option<&LoadRow> {
        self.commits
            .iter()
            .find(|r| r.store == store && r.durable == durable && r.clients == clients)
    }
}

fn storage(durable: bool) -> &'static str {
    if durable { "disk" } else { "mem" }
}

/// The whole report as markdown. `write!` into a `String` cannot fail, so
/// its results are ignored throughout.
pub fn markdown(r: &Results) -> String {
    let mut s = String::new();
    let m = &r.machine;
    let _ = writeln!(s, "# SurfStore bench ({} scale)\n", r.scale);
    let _ = writeln!(
        s,
        "Machine: {} cores, {}; load average {} at start, {} at end; {:.0}% of the \
         machine's CPU time stolen by the hypervisor during the run (wall times grow \
         with it, CPU times do not). Release build, loopback; `mem` = in memory, \
         `disk` = `--data-dir`. MB = 10^6 bytes.\n",
        m.cores, m.cpu, m.load_before, m.load_after, m.steal_percent
    );
    sha_table(&mut s, r);
    sync_table(&mut s, r);
    backend_table(&mut s, r);
    commit_table(&mut s, r);
    etcd_table(&mut s, r);
    put_table(&mut s, r);
    read_table(&mut s, r);
    tls_table(&mut s, r);
    growth_table(&mut s, r);
    failover_table(&mut s, r);
    target_table(&mut s, r);
    s
}

fn sha_table(s: &mut String, r: &Results) {
    let _ = writeln!(
        s,
        "## B7: SHA-256 on one core (`hash_block`, in process, per CPU second)\n"
    );
    let _ = writeln!(s, "| block | MB/s |\n|---|---:|");
    let _ = writeln!(s, "| 4 MiB | {:.0} |", r.sha.block_4m_bytes_per_sec / 1e6);
    let _ = writeln!(s, "| 4 KiB | {:.0} |", r.sha.block_4k_bytes_per_sec / 1e6);
    let _ = writeln!(
        s,
        "\n(4 MiB per wall second while it ran: {:.0} MB/s.)\n",
        r.sha.block_4m_wall_bytes_per_sec / 1e6
    );
}

fn sync_table(s: &mut String, r: &Results) {
    let _ = writeln!(
        s,
        "## B1–B5: one `surfstore-client` run (wall time), 3-server Raft cluster\n"
    );
    let _ = writeln!(
        s,
        "| id | run | block | files | blocks | time (s) | MB/s | blocks/s | ÷ SHA-256 1 core | client CPU (s) | servers' CPU (s) | steal % | blocks sent | client said |"
    );
    let _ = writeln!(
        s,
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"
    );
    for row in &r.sync {
        let sent = match (row.blocks_sent, row.bytes_sent) {
            (Some(blocks), Some(bytes)) => format!("{blocks} ({})", human_bytes(bytes)),
            _ => "–".into(),
        };
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {:.2} | {:.0} | {:.0} | {:.2} | {:.2} | {:.2} | {:.0} | {} | {} |",
            row.id,
            row.what,
            human_bytes(row.block_size),
            row.files,
            row.blocks,
            row.secs,
            row.mb_per_sec(),
            row.blocks_per_sec(),
            row.mb_per_sec() / r.sha_mb_per_sec(),
            row.client_cpu_secs,
            row.server_cpu_secs,
            row.steal_percent,
            sent,
            row.client_said
        );
    }
    let _ = writeln!(
        s,
        "\nMB/s and blocks/s are over all the data the run covered (for a resync, \
         the data it checked; B4c reads none of it). ÷ SHA-256: that rate over B7's \
         4 MiB rate; 1.0 means as fast as hashing the data once on one core.\n"
    );
}

/// B8's row for `backend` at `block_size`, if it ran.
fn backend_row<'a>(r: &'a Results, backend: &str, block_size: u64) -> Option<&'a BackendRow> {
    r.backends
        .rows
        .iter()
        .find(|row| row.backend == backend && row.block_size == block_size)
}

/// `row`'s upload and download rates over the `disk` row's of its block size.
fn vs_disk(r: &Results, row: &BackendRow) -> Option<(f64, f64)> {
    backend_row(r, "disk", row.block_size).map(|disk| {
        (
            row.upload_mb_per_sec() / disk.upload_mb_per_sec(),
            row.download_mb_per_sec() / disk.download_mb_per_sec(),
        )
    })
}

fn backend_table(s: &mut String, r: &Results) {
    if r.backends.rows.is_empty() {
        return;
    }
    let _ = writeln!(
        s,
        "## B8: BlockStore backends, one `surfstore-client` run each (wall time), plain MetaStore\n"
    );
    let _ = writeln!(
        s,
        "| backend | block | data | cold upload MB/s | cold download MB/s | upload ÷ disk | download ÷ disk |"
    );
    let _ = writeln!(s, "|---|---|---:|---:|---:|---:|---:|");
    for row in &r.backends.rows {
        let (up, down) = vs_disk(r, row).map_or(("–".into(), "–".into()), |(up, down)| {
            (format!("{up:.2}"), format!("{down:.2}"))
        });
        let _ = writeln!(
            s,
            "| {} | {} | {} | {:.0} | {:.0} | {up} | {down} |",
            row.backend,
            human_bytes(row.block_size),
            human_bytes(row.bytes),
            row.upload_mb_per_sec(),
            row.download_mb_per_sec(),
        );
    }
    let _ = writeln!(
        s,
        "\n`mem` = in memory, `disk` = `--data-dir`, `s3` = `--s3` on {}; `s3 alone` = \
         the same bytes put and got straight from the bench, 32 requests in flight, no \
         SurfStore in the way: the most the `s3` row could reach here.\n",
        r.backends.s3_status
    );
}

fn commit_table(s: &mut String, r: &Results) {
    let _ = writeln!(
        s,
        "## B6: UpdateFile commits (in-process tonic clients, one connection each)\n"
    );
    let _ = writeln!(
        s,
        "| store | storage | clients | commits/s | p50 (ms) | p99 (ms) | errors | servers' CPU µs/commit | clients' CPU µs/commit | steal % |"
    );
    let _ = writeln!(s, "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    for row in &r.commits {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {:.0} | {:.2} | {:.2} | {} | {:.0} | {:.0} | {:.0} |",
            row.store,
            storage(row.durable),
            row.clients,
            row.ops_per_sec(),
            row.p50_ms,
            row.p99_ms,
            row.errors,
            row.server_cpu_us_per_op(),
            row.client_cpu_us_per_op(),
            row.steal_percent
        );
    }
    if r.commits.iter().any(|row| row.store == "etcd-3") {
        let _ = writeln!(
            s,
            "\n`etcd-3`: etcd's `Put` on a 3-member etcd cluster under the same load \
             (next table)."
        );
    }
    let _ = writeln!(s);
}

/// `1,234 (0.52 / 1.8)`: a commit point's rate and p50 / p99 latency.
fn rate_and_latency(row: Option<&LoadRow>) -> String {
    row.map_or("–".into(), |c| {
        format!("{:.0} ({:.2} / {:.2})", c.ops_per_sec(), c.p50_ms, c.p99_ms)
    })
}

fn etcd_table(s: &mut String, r: &Results) {
    if r.commits.is_empty() {
        return;
    }
    let _ = writeln!(
        s,
        "## B6 beside etcd: `Put` on a 3-member etcd cluster, `UpdateFile` on raft-3\n"
    );
    let _ = writeln!(
        s,
        "{}. The load of the UpdateFile points: each client, on its own connection, \
         writes its own key in a loop to the leader; all clients run on one thread \
         of the bench process and send each call in one write, for both systems. \
         ÷ etcd: our commits/s over etcd's; above 1, ours commits more.\n",
        r.etcd.status
    );
    let _ = writeln!(
        s,
        "| clients | etcd-3 Put/s (p50 / p99 ms) | raft-3 disk commits/s (p50 / p99 ms) | ours disk ÷ etcd | raft-3 mem commits/s (p50 / p99 ms) | ours mem ÷ etcd |"
    );
    let _ = writeln!(s, "|---:|---:|---:|---:|---:|---:|");
    let ratio = |v: Option<f64>| v.map_or("–".into(), |v| format!("{v:.2}"));
    for row in &r.etcd.rows {
        let etcd = match r.commit_row("etcd-3", true, row.clients) {
            Some(c) => rate_and_latency(Some(c)),
            None => r.etcd.status.clone(),
        };
        let _ = writeln!(
            s,
            "| {} | {etcd} | {} | {} | {} | {} |",
            row.clients,
            rate_and_latency(r.commit_row("raft-3", true, row.clients)),
            ratio(row.ours_disk_vs_etcd),
            rate_and_latency(r.commit_row("raft-3", false, row.clients)),
            ratio(row.ours_mem_vs_etcd)
        );
    }
    let _ = writeln!(s);
}

fn put_table(s: &mut String, r: &Results) {
    let _ = writeln!(s, "## B6: PutBlock of distinct blocks\n");
    let _ = writeln!(
        s,
        "| block | storage | clients | puts/s | MB/s | p50 (ms) | p99 (ms) | errors | server CPU µs/put | clients' CPU µs/put | steal % |"
    );
    let _ = writeln!(s, "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for row in &r.puts {
        let size = row.block_size.unwrap_or_default();
        let _ = writeln!(
            s,
            "| {} | {} | {} | {:.0} | {:.1} | {:.2} | {:.2} | {} | {:.0} | {:.0} | {:.0} |",
            human_bytes(size),
            storage(row.durable),
            row.clients,
            row.ops_per_sec(),
            row.ops_per_sec() * size as f64 / 1e6,
            row.p50_ms,
            row.p99_ms,
            row.errors,
            row.server_cpu_us_per_op(),
            row.client_cpu_us_per_op(),
            row.steal_percent
        );
    }
    let _ = writeln!(
        s,
        "\nCPU columns: /proc user+system time of the processes over the point, \
         divided by the successful calls; the clients are this bench process \
         (tonic, plus copying each block before a put).\n"
    );
}

fn read_table(s: &mut String, r: &Results) {
    let _ = writeln!(
        s,
        "## B6: concurrent GetFileInfoMap of a {}-file map\n",
        r.read_files
    );
    let _ = writeln!(
        s,
        "| store | readers | p50 (ms) | p99 (ms) | all read in (s) | errors | server CPU µs/read | clients' CPU µs/read | steal % |"
    );
    let _ = writeln!(s, "|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    for row in &r.reads {
        let _ = writeln!(
            s,
            "| {} | {} | {:.1} | {:.1} | {:.2} | {} | {:.0} | {:.0} | {:.0} |",
            row.store,
            row.clients,
            row.p50_ms,
            row.p99_ms,
            row.secs,
            row.errors,
            row.server_cpu_us_per_op(),
            row.client_cpu_us_per_op(),
            row.steal_percent
        );
    }
    let _ = writeln!(
        s,
        "\nEvery reader sends one GetFileInfoMap, all at once, ten readers to a \
         connection, to servers in memory; the clients check each reply's size \
         but do not decode it (decoding costs the client more than serving \
         costs the server).\n"
    );
}

fn tls_table(s: &mut String, r: &Results) {
    if r.tls.is_empty() {
        return;
    }
    let _ = writeln!(
        s,
        "## T1: TLS 1.3 (mutual between Raft servers) and a token on every call, \
         against plaintext (best of 3 runs each, taking turns)\n"
    );
    let _ = writeln!(
        s,
        "| measurement | plaintext | TLS + tokens | cost |\n|---|---|---|---|"
    );
    for row in &r.tls {
        let _ = writeln!(
            s,
            "| {} | {:.1} {unit} | {:.1} {unit} | {:.1}% |",
            row.what,
            row.plain,
            row.secure,
            row.cost_percent(),
            unit = row.unit
        );
    }
    let _ = writeln!(s);
}

/// One line of the targets table.
struct Target {
    name: &'static str,
    goal: String,
    now: String,
    met: Option<bool>,
}

fn targets(r: &Results) -> Vec<Target> {
    let sha = r.sha_mb_per_sec();
    let mut out = Vec::new();
    let b1 = r.sync_row("B1", LARGE_BLOCK);
    out.push(Target {
        name: "B1 cold upload, 4 MiB blocks",
        goal: format!("≥ ½ SHA-256 1 core = {:.0} MB/s", sha / 2.0),
        now: b1.map_or("–".into(), |b| format!("{:.0} MB/s", b.mb_per_sec())),
        met: b1.map(|b| b.mb_per_sec() >= sha / 2.0),
    });
    let b2 = r.sync_row("B2", SMALL_BLOCK);
    out.push(Target {
        name: "B2 cold upload, 4 KiB blocks",
        goal: "≥ 100 MB/s".into(),
        now: b2.map_or("–".into(), |b| format!("{:.1} MB/s", b.mb_per_sec())),
        met: b2.map(|b| b.mb_per_sec() >= 100.0),
    });
    // A resync against the time hashing its data once on one core takes.
    let vs_hashing = |row: Option<&SyncRow>| {
        row.map_or("–".into(), |b| {
            format!(
                "{:.2} s vs {:.2} s to hash",
                b.secs,
                b.bytes as f64 / 1e6 / sha
            )
        })
    };
    let b4 = r.sync_row("B4", LARGE_BLOCK);
    out.push(Target {
        name: "B4 no-op resync, 4 MiB blocks",
        goal: "no slower than hashing the data once".into(),
        now: vs_hashing(b4),
        met: b4.map(|b| b.mb_per_sec() >= sha),
    });
    let b4c = r.sync_row("B4c", LARGE_BLOCK);
    out.push(Target {
        name: "B4c no-op resync with --hash-cache, 4 MiB blocks",
        goal: "near zero: under ¼ of hashing the data once".into(),
        now: vs_hashing(b4c),
        met: b4c.map(|b| b.mb_per_sec() >= 4.0 * sha),
    });
    let b5 = r.sync_row("B5", LARGE_BLOCK);
    out.push(Target {
        name: "B5 4 KiB change in a large file",
        goal: "exactly 1 block sent".into(),
        now: b5
            .and_then(|b| b.blocks_sent)
            .map_or("–".into(), |n| format!("{n} sent")),
        met: b5.and_then(|b| b.blocks_sent).map(|n| n == 1),
    });
    let s3 = backend_row(r, "s3", LARGE_BLOCK).and_then(|row| vs_disk(r, row));
    out.push(Target {
        name: "B8 S3 backend, 4 MiB blocks, cold upload and download",
        goal: "≥ ½ the disk backend's rate".into(),
        now: s3.map_or("–".into(), |(up, down)| {
            format!("upload {up:.2}×, download {down:.2}× disk")
        }),
        met: s3.map(|(up, down)| up >= 0.5 && down >= 0.5),
    });
    let busy = COMMIT_CLIENTS[COMMIT_CLIENTS.len() - 1];
    let raft_busy = r.commit_row("raft-3", false, busy);
    out.push(Target {
        name: "B6 Raft commits, 64 clients, mem",
        goal: "≥ 20,000 /s".into(),
        now: raft_busy.map_or("–".into(), |c| format!("{:.0} /s", c.ops_per_sec())),
        met: raft_busy.map(|c| c.ops_per_sec() >= 20_000.0),
    });
    let raft_one = r.commit_row("raft-3", false, 1);
    out.push(Target {
        name: "B6 Raft commit p50, 1 client, mem",
        goal: "< 1 ms".into(),
        now: raft_one.map_or("–".into(), |c| format!("{:.2} ms", c.p50_ms)),
        met: raft_one.map(|c| c.p50_ms < 1.0),
    });
    for row in &r.tls {
        out.push(Target {
            name: "T1 cost of TLS + tokens",
            goal: format!("< 15% ({})", row.unit),
            now: format!("{:.1}%", row.cost_percent()),
            met: Some(row.cost_percent() < 15.0),
        });
    }
    let compacting = r.growth.iter().find(|g| g.snapshot_entries > 0);
    out.push(Target {
        name: "B9 leader RSS growth over the rewrites",
        goal: "< 16 MiB".into(),
        now: compacting.map_or("–".into(), |g| format!("{:.1} MiB", g.rss_growth_mib())),
        met: compacting.map(|g| g.rss_growth_mib() < 16.0),
    });
    out.push(Target {
        name: "B9 leader data dir after the rewrites",
        goal: "< 8 MiB".into(),
        now: compacting.map_or("–".into(), |g| format!("{:.1} MiB", g.data_dir_mib())),
        met: compacting.map(|g| g.data_dir_mib() < 8.0),
    });
    let catch_up = compacting.and_then(|g| g.catch_up_secs);
    out.push(Target {
        name: "B9 follower catch-up by snapshot",
        goal: "< 5 s".into(),
        now: catch_up.map_or("–".into(), |secs| format!("{secs:.2} s")),
        met: compacting.map(|_| catch_up.is_some_and(|secs| secs < 5.0)),
    });
    for f in r.failover.iter().filter(|f| f.fault == "all") {
        out.push(Target {
            name: "F1 failover after a leader's death, p99",
            goal: format!("≤ 3 N = {} ms, none failed", 3 * f.election_timeout_ms),
            now: format!(
                "{:.0} ms (median {:.0} ms) over {} deaths, {} failed",
                f.p99_ms, f.median_ms, f.rounds, f.failed
            ),
            met: Some(f.failed == 0 && f.p99_in_timeouts() <= 3.0),
        });
    }
    out.push(Target {
        name: "B10 gc after rewrites, then a fresh download",
        goal: "frees all the old blocks' bytes; download identical".into(),
        now: r.gc.as_ref().map_or("–".into(), |g| {
            format!(
                "{:.1} of {:.1} MB freed in {:.2} s; download {}",
                g.freed_bytes as f64 / 1e6,
                g.garbage_bytes as f64 / 1e6,
                g.secs,
                if g.download_identical {
                    "identical"
                } else {
                    "DIFFERS"
                }
            )
        }),
        met: r
            .gc
            .as_ref()
            .map(|g| g.freed_bytes == g.garbage_bytes && g.download_identical),
    });
    out
}

fn growth_table(s: &mut String, r: &Results) {
    if r.growth.is_empty() {
        return;
    }
    let _ = writeln!(
        s,
        "## B9: 64 files rewritten again and again, durable 3-server cluster
"
    );
    let _ = writeln!(
        s,
        "| --snapshot-entries | warm-up | rewrites | leader RSS growth | leader data dir | rewrites/s | follower missed | caught up in |\n|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    for g in &r.growth {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {:.1} MiB | {:.1} MiB | {:.0} | {} | {} |",
            g.snapshot_entries,
            g.warm_updates,
            g.updates,
            g.rss_growth_mib(),
            g.data_dir_mib(),
            g.updates_per_sec,
            g.missed,
            g.catch_up_secs
                .map_or("–".into(), |secs| format!("{secs:.2} s")),
        );
    }
    let _ = writeln!(
        s,
        "\n(0 = no compaction, the log as it was before snapshots; its follower's state is too large to poll, so its catch-up is not timed.)\n"
    );
}

fn failover_table(s: &mut String, r: &Results) {
    if r.failover.is_empty() {
        return;
    }
    let _ = writeln!(
        s,
        "## F1: failover with elections, durable 3-server cluster, one client updating\n"
    );
    let _ = writeln!(
        s,
        "| N (ms) | fault | rounds | no failover | median (ms) | p99 (ms) | max (ms) | p99 ÷ N | downtime median (ms) | availability |\n|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    for f in &r.failover {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {:.0} | {:.0} | {:.0} | {:.2} | {:.0} | {:.1}% |",
            f.election_timeout_ms,
            f.fault,
            f.rounds,
            f.failed,
            f.median_ms,
            f.p99_ms,
            f.max_ms,
            f.p99_in_timeouts(),
            f.downtime_median_ms,
            f.availability * 100.0
        );
    }
    let _ = writeln!(
        s,
        "\nFailover: from the fault to the first update another server acknowledged. \
         Downtime: the longest gap between acknowledged updates from 0.5 s before the \
         fault to 2 s after it; availability: the share of its 50 ms slots with an \
         acknowledged update (the victim comes back within the window).\n"
    );
}

fn target_table(s: &mut String, r: &Results) {
    let _ = writeln!(s, "## Targets\n");
    let _ = writeln!(s, "| target | goal | now | met |\n|---|---|---|---|");
    for t in targets(r) {
        let met = match t.met {
            Some(true) => "yes",
            Some(false) => "**no**",
            None => "–",
        };
        let _ = writeln!(s, "| {} | {} | {} | {met} |", t.name, t.goal, t.now);
    }
}

/// Writes `results.md`, `results.json` and `chart.png` into `out`.
pub fn write_all(r: &Results, markdown: &str, out: &Path) -> BenchResult<()> {
    let write = |name: &str, bytes: &[u8]| {
        let path = out.join(name);
        std::fs::write(&path, bytes).map_err(|e| format!("write {}: {e}", path.display()))
    };
    write("results.md", markdown.as_bytes())?;
    write("results.json", serde_json::to_string_pretty(r)?.as_bytes())?;
    chart(r, &out.join("chart.png"))
}

/// The font every label is drawn with: embedded, so nothing depends on the
/// fonts a machine has installed.
const FONT: &str = "sans-serif";

const SERIES_COLORS: [RGBColor; 5] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
];

/// Four bar charts, two by two: sync MB/s against the SHA-256 rate,
/// commits per second by client count (etcd's too), PutBlock MB/s, and our
/// commits per second over etcd's.
fn chart(r: &Results, path: &Path) -> BenchResult<()> {
    plotters::style::register_font(FONT, FontStyle::Normal, dejavu::sans::regular())
        .map_err(|_| "the embedded DejaVu Sans font is unusable")?;
    let root = BitMapBackend::new(path, (1800, 1300)).into_drawing_area();
    root.fill(&WHITE)?;
    let title = format!(
        "SurfStore bench ({}) — {} cores, {}, load {} → {}, {:.0}% CPU stolen",
        r.scale,
        r.machine.cores,
        r.machine.cpu,
        r.machine.load_before,
        r.machine.load_after,
        r.machine.steal_percent
    );
    let root = root.titled(&title, (FONT, 22))?;
    let panels = root.split_evenly((2, 2));

    let sha = r.sha_mb_per_sec();
    // B4c reads no file data: its MB/s would dwarf every other bar (the
    // table has it).
    let sync_bars: Vec<Bar> = r
        .sync
        .iter()
        .filter(|row| row.id != "B4c")
        .map(|row| Bar {
            label: format!("{} {}", row.id, human_bytes(row.block_size)),
            value: row.mb_per_sec(),
            series: usize::from(row.block_size == SMALL_BLOCK),
        })
        .collect();
    bar_panel(
        &panels[0],
        "Sync: MB/s per client run (line: SHA-256 1 core)",
        &sync_bars,
        &["4 MiB blocks", "4 KiB blocks"],
        Some(sha),
        false,
    )?;

    let configs = [
        ("raft-3", false),
        ("raft-3", true),
        ("meta", false),
        ("meta", true),
        ("etcd-3", true),
    ];
    let commit_bars: Vec<Bar> = COMMIT_CLIENTS
        .iter()
        .flat_map(|&clients| {
            configs
                .iter()
                .enumerate()
                .filter_map(move |(series, &(store, durable))| {
                    r.commit_row(store, durable, clients).map(|c| Bar {
                        label: format!("{clients} clients"),
                        value: c.ops_per_sec(),
                        series,
                    })
                })
        })
        .collect();
    let mut commit_legend = vec!["raft-3 mem", "raft-3 disk", "meta mem", "meta disk"];
    if commit_bars.iter().any(|b| b.series == 4) {
        commit_legend.push("etcd-3 Put (fsync)");
    }
    bar_panel(
        &panels[1],
        "UpdateFile commits/s (log scale)",
        &commit_bars,
        &commit_legend,
        None,
        true,
    )?;

    let put_bars: Vec<Bar> = r
        .puts
        .iter()
        .map(|p| {
            let size = p.block_size.unwrap_or_default();
            Bar {
                label: format!("{} ×{}", human_bytes(size), p.clients),
                value: p.ops_per_sec() * size as f64 / 1e6,
                series: usize::from(p.durable),
            }
        })
        .collect();
    bar_panel(
        &panels[2],
        "PutBlock MB/s (block × clients)",
        &put_bars,
        &["mem", "disk"],
        None,
        false,
    )?;

    // Coloured as the raft-3 series of the commits panel.
    let ratio_bars: Vec<Bar> = r
        .etcd
        .rows
        .iter()
        .flat_map(|row| {
            [row.ours_mem_vs_etcd, row.ours_disk_vs_etcd]
                .into_iter()
                .enumerate()
                .filter_map(move |(series, ratio)| {
                    ratio.map(|value| Bar {
                        label: format!("{} clients", row.clients),
                        value,
                        series,
                    })
                })
        })
        .collect();
    let (ratio_caption, ratio_legend) = if ratio_bars.is_empty() {
        (format!("raft-3 ÷ etcd-3: {}", r.etcd.status), Vec::new())
    } else {
        (
            "raft-3 commits/s ÷ etcd-3 Put/s (line: as fast)".to_string(),
            vec!["raft-3 mem ÷ etcd", "raft-3 disk ÷ etcd"],
        )
    };
    bar_panel(
        &panels[3],
        &ratio_caption,
        &ratio_bars,
        &ratio_legend,
        Some(1.0),
        false,
    )?;
    root.present()?;
    Ok(())
}

/// One bar: its axis label, height and colour (index into the legend).
struct Bar {
    label: String,
    value: f64,
    series: usize,
}

/// Draws `bars` left to right; consecutive bars with the same label form a
/// group under one label. `reference` draws a horizontal line at that value.
fn bar_panel(
    area: &DrawingArea<BitMapBackend<'_>, Shift>,
    caption: &str,
    bars: &[Bar],
    legend: &[&str],
    reference: Option<f64>,
    log: bool,
) -> BenchResult<()> {
    // Slots along x: one per bar, plus an empty one between groups.
    let mut slots: Vec<(Option<&Bar>, String)> = Vec::new();
    let mut groups: Vec<(usize, usize, &str)> = Vec::new();
    for bar in bars {
        match groups.last_mut() {
            Some((_, end, label)) if *label == bar.label => *end = slots.len() + 1,
            _ => {
                if !slots.is_empty() {
                    slots.push((None, String::new()));
                }
                groups.push((slots.len(), slots.len() + 1, &bar.label));
            }
        }
        slots.push((Some(bar), String::new()));
    }
    for (start, end, label) in &groups {
        slots[(start + end - 1) / 2].1 = (*label).to_string();
    }
    let top = bars
        .iter()
        .map(|b| b.value)
        .chain(reference)
        .fold(1.0, f64::max)
        * if log { 8.0 } else { 1.15 };
    let n = i32::try_from(slots.len().max(1))?;
    let mut builder = ChartBuilder::on(area);
    builder
        .caption(caption, (FONT, 18))
        .margin(12)
        .x_label_area_size(70)
        .y_label_area_size(70);
    let label_of = |v: &SegmentValue<i32>| match v {
        SegmentValue::CenterOf(i) => usize::try_from(*i)
            .ok()
            .and_then(|i| slots.get(i))
            .map_or(String::new(), |(_, l)| l.clone()),
        _ => String::new(),
    };
    let style = |series: usize| SERIES_COLORS[series % SERIES_COLORS.len()].filled();
    let rect = |i: usize, lo: f64, hi: f64, series: usize| {
        let i = i as i32;
        let mut r = Rectangle::new(
            [
                (SegmentValue::Exact(i), lo),
                (SegmentValue::Exact(i + 1), hi),
            ],
            style(series),
        );
        r.set_margin(0, 0, 2, 2);
        r
    };
    let x = (0..n).into_segmented();
    macro_rules! draw {
        ($chart:expr, $floor:expr) => {{
            let mut chart = $chart;
            chart
                .configure_mesh()
                .disable_x_mesh()
                .x_labels(slots.len())
                .x_label_formatter(&label_of)
                .x_label_style((FONT, 13))
                .y_label_style((FONT, 13))
                .draw()?;
            for (series, name) in legend.iter().enumerate() {
                chart
                    .draw_series(std::iter::empty::<Rectangle<(SegmentValue<i32>, f64)>>())?
                    .label(*name)
                    .legend(move |(x, y)| {
                        Rectangle::new([(x, y - 5), (x + 10, y + 5)], style(series))
                    });
            }
            chart.draw_series(slots.iter().enumerate().filter_map(|(i, (bar, _))| {
                bar.map(|b| rect(i, $floor, b.value.max($floor), b.series))
            }))?;
            chart.draw_series(slots.iter().enumerate().filter_map(|(i, (bar, _))| {
                bar.map(|b| {
                    Text::new(
                        short_number(b.value),
                        (SegmentValue::CenterOf(i as i32), b.value.max($floor)),
                        TextStyle::from((FONT, 12).into_font())
                            .pos(Pos::new(HPos::Center, VPos::Bottom)),
                    )
                })
            }))?;
            if let Some(line) = reference {
                chart.draw_series(std::iter::once(PathElement::new(
                    vec![
                        (SegmentValue::Exact(0), line),
                        (SegmentValue::Exact(n), line),
                    ],
                    BLACK.stroke_width(2),
                )))?;
            }
            chart
                .configure_series_labels()
                .position(SeriesLabelPosition::UpperRight)
                .label_font((FONT, 14))
                .background_style(WHITE.mix(0.8))
                .border_style(BLACK)
                .draw()?;
        }};
    }
    if log {
        draw!(builder.build_cartesian_2d(x, (1.0..top).log_scale())?, 1.0)
    } else {
        draw!(builder.build_cartesian_2d(x, 0.0..top)?, 0.0)
    }
    Ok(())
}

/// `12.3k`, `456`, `7.8`, `0.06`: a bar's value in a few characters.
fn short_number(v: f64) -> String {
    if v >= 10_000.0 {
        format!("{:.1}k", v / 1000.0)
    } else if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 1.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}
