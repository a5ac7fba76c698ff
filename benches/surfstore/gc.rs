//! B10: `surfstore-ctl gc` on a server whose files were partly rewritten:
//! how many of the bytes the overwritten files' blocks held it frees, and
//! whether a fresh client then downloads every current file byte for byte.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

use crate::data::{Rng, check_same, random_file};
use crate::procs::{self, bin, path_arg, run_client};
use crate::{BenchResult, Scale};

/// Files synced, and how many of them are then rewritten.
const FILES: u64 = 16;
const REWRITTEN: u64 = 8;

/// Block size of the syncs: every block of the random files is distinct.
const BLOCK_SIZE: u64 = 64 << 10;

/// The B10 row.
#[derive(Debug, Clone, serde::Serialize)]
pub struct GcRow {
    /// Bytes the rewritten files' old blocks held.
    pub garbage_bytes: u64,
    /// Bytes gc said it freed.
    pub freed_bytes: u64,
    /// Seconds the gc run took.
    pub secs: f64,
    /// A fresh client's download matched every current file.
    pub download_identical: bool,
}

/// Syncs `FILES` files of `scale.gc_file_bytes` to an in-memory server,
/// rewrites `REWRITTEN` of them, syncs again, runs gc with no grace period
/// and downloads everything into a fresh directory.
pub fn run(scale: &Scale, work: &Path) -> BenchResult<GcRow> {
    eprintln!("B10: gc after rewriting {REWRITTEN} of {FILES} files");
    let server = procs::start_server(work, "b9-gc", "both", None, &[])?;
    let config = work.join("b9-gc-config.json");
    let json = serde_json::json!({
        "MetaStoreAddrs": [server.addr],
        "BlockStoreAddrs": [server.addr],
    });
    std::fs::write(&config, json.to_string()).map_err(|e| format!("{}: {e}", config.display()))?;
    let dir = work.join("b9-gc-files");
    std::fs::create_dir_all(&dir)?;
    let mut rng = Rng::new(9);
    for i in 0..FILES {
        random_file(&dir.join(format!("f{i:02}")), scale.gc_file_bytes, &mut rng)?;
    }
    let sync = |dir: &Path| -> BenchResult<()> {
        let args = [server.addr.clone(), path_arg(dir)?, BLOCK_SIZE.to_string()];
        run_client(work, &args).map(drop)
    };
    sync(&dir)?;
    for i in 0..REWRITTEN {
        random_file(&dir.join(format!("f{i:02}")), scale.gc_file_bytes, &mut rng)?;
    }
    sync(&dir)?;
    let began = Instant::now();
    let output = Command::new(bin("surfstore-ctl"))
        .args(["gc", "-f", &path_arg(&config)?, "--older-than", "0s"])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("run surfstore-ctl gc: {e}"))?;
    let secs = began.elapsed().as_secs_f64();
    let stdout = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        return Err(format!(
            "surfstore-ctl gc failed: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        )
        .into());
    }
    let freed_bytes =
        freed(&stdout).ok_or_else(|| format!("gc printed no freed bytes: {stdout}"))?;
    let fresh = work.join("b9-gc-fresh");
    std::fs::create_dir_all(&fresh)?;
    sync(&fresh)?;
    Ok(GcRow {
        garbage_bytes: REWRITTEN * scale.gc_file_bytes,
        freed_bytes,
        secs,
        download_identical: check_same(&dir, &fresh).is_ok(),
    })
}

/// The bytes of gc's "freed N blocks, B bytes".
fn freed(stdout: &str) -> Option<u64> {
    let after = stdout.split("blocks, ").nth(1)?;
    after.split(' ').next()?.parse().ok()
}
