//! The data the sync benchmarks move: directories of random files of mixed
//! sizes, one large file, and the checks that a download reproduced them.
//!
//! Contents come from a seeded generator, so every run syncs the same bytes,
//! and are random, so no two blocks are equal and every block must move.

use std::fs::{self, File, OpenOptions};
use std::io::{BufWriter, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use crate::BenchResult;

/// Smallest file of a mixed directory.
const MIN_FILE: u64 = 1 << 10;

/// A mixed directory's largest file is its total size over this.
const MAX_FILE_FRACTION: u64 = 8;

/// Files go into this many subdirectories (and the top level), so nested
/// names are part of the workload.
const SUBDIRS: usize = 3;

/// SplitMix64: fast, seedable, and good enough to make incompressible,
/// distinct blocks.
pub struct Rng(u64);

impl Rng {
    /// A generator whose output depends only on `seed`.
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Fills `buf` with random bytes.
    pub fn fill(&mut self, buf: &mut [u8]) {
        let mut chunks = buf.chunks_exact_mut(8);
        for chunk in &mut chunks {
            chunk.copy_from_slice(&self.next_u64().to_le_bytes());
        }
        let rest = chunks.into_remainder();
        let last = self.next_u64().to_le_bytes();
        rest.copy_from_slice(&last[..rest.len()]);
    }

    /// A size between `lo` and `hi`, uniform in its logarithm: many small
    /// files and a few large ones, like a real folder.
    fn log_uniform(&mut self, lo: u64, hi: u64) -> u64 {
        let unit = (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
        let (lo_f, hi_f) = ((lo as f64).ln(), (hi as f64).ln());
        ((lo_f + unit * (hi_f - lo_f)).exp() as u64).clamp(lo, hi)
    }
}

/// What was generated.
#[derive(Debug, Clone, Default)]
pub struct Generated {
    /// The size of each file.
    pub sizes: Vec<u64>,
}

impl Generated {
    /// Their total size.
    pub fn bytes(&self) -> u64 {
        self.sizes.iter().sum()
    }

    /// How many blocks of `block_size` bytes the files make (an empty file
    /// has none, a last partial block counts as one).
    pub fn blocks(&self, block_size: u64) -> u64 {
        self.sizes.iter().map(|s| s.div_ceil(block_size)).sum()
    }
}

/// Writes random files totalling exactly `total` bytes into `dir`, their
/// sizes log-uniform between 1 KiB and `total / 8`.
pub fn mixed_dir(dir: &Path, total: u64, seed: u64) -> BenchResult<Generated> {
    let mut rng = Rng::new(seed);
    let max = (total / MAX_FILE_FRACTION).max(MIN_FILE);
    let mut generated = Generated::default();
    let mut written = 0;
    while written < total {
        let files = generated.sizes.len();
        let size = rng.log_uniform(MIN_FILE, max).min(total - written);
        let sub = files % (SUBDIRS + 1);
        let parent = if sub == 0 {
            dir.to_path_buf()
        } else {
            dir.join(format!("dir{sub}"))
        };
        fs::create_dir_all(&parent).map_err(|e| format!("{}: {e}", parent.display()))?;
        random_file(&parent.join(format!("file{files:04}.bin")), size, &mut rng)?;
        written += size;
        generated.sizes.push(size);
    }
    Ok(generated)
}

/// Writes `size` random bytes to `path`.
pub fn random_file(path: &Path, size: u64, rng: &mut Rng) -> BenchResult<()> {
    let err = |e: std::io::Error| format!("write {}: {e}", path.display());
    let mut out = BufWriter::new(File::create(path).map_err(err)?);
    let mut buf = vec![0u8; 1 << 20];
    let mut left = size;
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        rng.fill(&mut buf[..n]);
        out.write_all(&buf[..n]).map_err(err)?;
        left -= n as u64;
    }
    out.flush().map_err(err)?;
    Ok(())
}

/// Overwrites `len` bytes at `offset` of the file at `path` with new random
/// bytes, leaving its size unchanged.
pub fn overwrite(path: &Path, offset: u64, len: usize, seed: u64) -> BenchResult<()> {
    let err = |e: std::io::Error| format!("modify {}: {e}", path.display());
    let mut file = OpenOptions::new().write(true).open(path).map_err(err)?;
    let mut buf = vec![0u8; len];
    Rng::new(seed).fill(&mut buf);
    file.seek(SeekFrom::Start(offset)).map_err(err)?;
    file.write_all(&buf).map_err(err)?;
    file.sync_all().map_err(err)?;
    Ok(())
}

/// Every regular file below `dir` but the client's `index.txt`, by its path
/// relative to `dir`, sorted.
fn files_below(dir: &Path) -> BenchResult<Vec<PathBuf>> {
    let mut found = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(current) = pending.pop() {
        for entry in fs::read_dir(&current).map_err(|e| format!("{}: {e}", current.display()))? {
            let path = entry?.path();
            if path.is_dir() {
                pending.push(path);
            } else if path != dir.join("index.txt") {
                found.push(path.strip_prefix(dir)?.to_path_buf());
            }
        }
    }
    found.sort();
    Ok(found)
}

/// Fails unless `copy` holds exactly the files of `original`, byte for byte.
pub fn check_same(original: &Path, copy: &Path) -> BenchResult<()> {
    let (a, b) = (files_below(original)?, files_below(copy)?);
    if a != b {
        return Err(format!(
            "{} has {} files but {} has {}: the download is incomplete",
            original.display(),
            a.len(),
            copy.display(),
            b.len()
        )
        .into());
    }
    for name in &a {
        let read = |p: PathBuf| fs::read(&p).map_err(|e| format!("{}: {e}", p.display()));
        if read(original.join(name))? != read(copy.join(name))? {
            return Err(format!("{} differs after the download", name.display()).into());
        }
    }
    Ok(())
}
