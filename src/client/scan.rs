//! Hashing the base directory (SPEC §8 step 1).
//!
//! Every regular file below the base directory is read in blocks of
//! BLOCKSIZE bytes (never whole) and named by the SHA-256 of each block.
//! Files are hashed on a few threads at once. Symlinks and special files are
//! skipped with a warning and never followed; the client's own files
//! (`index.txt`, temporary files) are skipped silently.
//!
//! A scan that cannot read something fails as a whole: a file missing from
//! the scan would look deleted and be deleted everywhere.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::names;
use crate::hash::hash_block;

/// At most this many files are hashed at once, each with a block-sized
/// buffer.
const MAX_HASH_THREADS: usize = 4;

/// What is in the base directory now.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Scan {
    /// Synced name → block hashes of every regular file.
    pub files: BTreeMap<String, Vec<String>>,
    /// Names held by something that is not a regular file or directory
    /// (symlinks, sockets, ...). Sync leaves these names alone entirely.
    pub skipped: BTreeSet<String>,
}

/// Why the base directory could not be scanned.
#[derive(Debug, thiserror::Error)]
#[error("cannot read {path}: {source}")]
pub struct ScanError {
    path: PathBuf,
    source: io::Error,
}

impl ScanError {
    fn new(path: &Path) -> impl FnOnce(io::Error) -> Self + '_ {
        move |source| Self {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// Scans `base`, hashing files in blocks of `block_size` bytes.
pub fn scan(base: &Path, block_size: usize) -> Result<Scan, ScanError> {
    let mut scan = Scan::default();
    let found = walk(base, &mut scan.skipped)?;
    let hashes = hash_files(&found, block_size)?;
    scan.files = found
        .into_iter()
        .map(|(name, _)| name)
        .zip(hashes)
        .collect();
    Ok(scan)
}

/// Lists the regular files below `base` as (synced name, path).
fn walk(base: &Path, skipped: &mut BTreeSet<String>) -> Result<Vec<(String, PathBuf)>, ScanError> {
    let mut files = Vec::new();
    let mut dirs = vec![(base.to_path_buf(), String::new())];
    while let Some((dir, prefix)) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).map_err(ScanError::new(&dir))? {
            let entry = entry.map_err(ScanError::new(&dir))?;
            let path = entry.path();
            let Ok(file_name) = entry.file_name().into_string() else {
                tracing::warn!(path = %path.display(), "skipping a name that is not UTF-8");
                continue;
            };
            let name = format!("{prefix}{file_name}");
            let kind = entry.file_type().map_err(ScanError::new(&path))?;
            if kind.is_dir() {
                dirs.push((path, format!("{name}/")));
            } else if names::is_reserved(&name) {
                continue;
            } else if kind.is_file() {
                files.push((name, path));
            } else {
                let what = if kind.is_symlink() {
                    "symlink"
                } else {
                    "special file"
                };
                tracing::warn!(path = %path.display(), "skipping {what}: only regular files sync");
                skipped.insert(name);
            }
        }
    }
    Ok(files)
}

/// Hashes `files` on a bounded number of threads; results in input order.
fn hash_files(
    files: &[(String, PathBuf)],
    block_size: usize,
) -> Result<Vec<Vec<String>>, ScanError> {
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(MAX_HASH_THREADS)
        .min(files.len())
        .max(1);
    let next = AtomicUsize::new(0);
    let results: Mutex<Vec<Option<Vec<String>>>> = Mutex::new(vec![None; files.len()]);
    let first_error: Mutex<Option<ScanError>> = Mutex::new(None);
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| {
                let mut buf = Vec::new();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some((_, path)) = files.get(i) else { break };
                    match hash_file(path, block_size, &mut buf) {
                        Ok(hashes) => lock(&results)[i] = Some(hashes),
                        Err(e) => {
                            lock(&first_error).get_or_insert(ScanError::new(path)(e));
                            // Claim every remaining file so all threads stop.
                            next.store(files.len(), Ordering::Relaxed);
                        }
                    }
                }
            });
        }
    });
    if let Some(err) = lock(&first_error).take() {
        return Err(err);
    }
    let results = results.into_inner().unwrap_or_else(|e| e.into_inner());
    Ok(results.into_iter().map(Option::unwrap_or_default).collect())
}

/// Locks a mutex whose data stays consistent even if a holder panicked (each
/// write is a single assignment).
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// The block hashes of the file at `path`, reading one block at a time into
/// `buf`. An empty file has no blocks.
pub fn hash_file(path: &Path, block_size: usize, buf: &mut Vec<u8>) -> io::Result<Vec<String>> {
    let mut file = File::open(path)?;
    let mut hashes = Vec::new();
    while read_block(&mut file, block_size, buf)? > 0 {
        hashes.push(hash_block(buf));
    }
    Ok(hashes)
}

/// Reads block number `index` of the file at `path`.
pub fn read_block_at(path: &Path, index: usize, block_size: usize) -> io::Result<Vec<u8>> {
    let mut file = File::open(path)?;
    let offset = (index as u64).saturating_mul(block_size as u64);
    file.seek(SeekFrom::Start(offset))?;
    let mut buf = Vec::new();
    read_block(&mut file, block_size, &mut buf)?;
    Ok(buf)
}

/// Fills `buf` with the next `block_size` bytes (fewer only at the end of the
/// file) and returns how many were read.
fn read_block(reader: &mut impl Read, block_size: usize, buf: &mut Vec<u8>) -> io::Result<usize> {
    buf.clear();
    reader.take(block_size as u64).read_to_end(buf)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    #[test]
    fn hashes_nested_files_in_blocks() {
        let base = tempfile::tempdir().unwrap();
        fs::create_dir_all(base.path().join("d/e")).unwrap();
        fs::create_dir(base.path().join("emptydir")).unwrap();
        fs::write(base.path().join("top"), b"abcdefghij").unwrap();
        fs::write(base.path().join("d/e/deep"), b"abcd").unwrap();
        fs::write(base.path().join("empty"), b"").unwrap();

        let scan = scan(base.path(), 4).unwrap();
        let expected = BTreeMap::from([
            (
                "top".to_string(),
                vec![hash_block(b"abcd"), hash_block(b"efgh"), hash_block(b"ij")],
            ),
            ("d/e/deep".to_string(), vec![hash_block(b"abcd")]),
            ("empty".to_string(), vec![]),
        ]);
        assert_eq!(scan.files, expected);
        assert!(scan.skipped.is_empty());
    }

    #[test]
    fn skips_the_clients_own_files() {
        let base = tempfile::tempdir().unwrap();
        fs::create_dir(base.path().join("d")).unwrap();
        fs::write(base.path().join("index.txt"), b"").unwrap();
        fs::write(base.path().join(".surfstore-tmp-x"), b"").unwrap();
        fs::write(base.path().join("d/.surfstore-tmp-y"), b"").unwrap();
        fs::write(
            base.path().join("d/index.txt"),
            b"nested index is a normal file",
        )
        .unwrap();

        let scan = scan(base.path(), 4096).unwrap();
        assert_eq!(scan.files.keys().collect::<Vec<_>>(), ["d/index.txt"]);
    }

    #[cfg(unix)]
    #[test]
    fn symlinks_are_skipped_not_followed() {
        let base = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        fs::write(outside.path().join("secret"), b"s").unwrap();
        std::os::unix::fs::symlink(outside.path(), base.path().join("dirlink")).unwrap();
        std::os::unix::fs::symlink(outside.path().join("secret"), base.path().join("filelink"))
            .unwrap();
        fs::write(base.path().join("real"), b"r").unwrap();

        let scan = scan(base.path(), 4096).unwrap();
        assert_eq!(scan.files.keys().collect::<Vec<_>>(), ["real"]);
        assert_eq!(
            scan.skipped.iter().collect::<Vec<_>>(),
            ["dirlink", "filelink"]
        );
    }

    #[test]
    fn many_files_hash_in_parallel_in_order() {
        let base = tempfile::tempdir().unwrap();
        for i in 0..50 {
            fs::write(base.path().join(format!("f{i:02}")), vec![i as u8; i * 7]).unwrap();
        }
        let scan = scan(base.path(), 16).unwrap();
        assert_eq!(scan.files.len(), 50);
        for i in 0..50 {
            let data = vec![i as u8; i * 7];
            let expected: Vec<String> = data.chunks(16).map(hash_block).collect();
            assert_eq!(scan.files[&format!("f{i:02}")], expected, "f{i:02}");
        }
    }

    #[test]
    fn reads_single_blocks_back() {
        let base = tempfile::tempdir().unwrap();
        let path = base.path().join("f");
        fs::write(&path, b"0123456789").unwrap();
        assert_eq!(read_block_at(&path, 0, 4).unwrap(), b"0123");
        assert_eq!(read_block_at(&path, 2, 4).unwrap(), b"89");
        assert_eq!(read_block_at(&path, 3, 4).unwrap(), b"");
    }

    #[cfg(unix)]
    #[test]
    fn unreadable_directories_fail_the_scan() {
        use std::os::unix::fs::PermissionsExt;
        let base = tempfile::tempdir().unwrap();
        let locked = base.path().join("locked");
        fs::create_dir(&locked).unwrap();
        fs::set_permissions(&locked, fs::Permissions::from_mode(0o000)).unwrap();
        let readable_anyway = fs::read_dir(&locked).is_ok(); // running as root
        let result = scan(base.path(), 4096);
        fs::set_permissions(&locked, fs::Permissions::from_mode(0o755)).unwrap();
        if !readable_anyway {
            let err = result.unwrap_err().to_string();
            assert!(err.contains("locked"), "{err}");
        }
    }
}
