//! The optional hash cache (`--hash-cache`): each file's [`Stamp`] and block
//! hashes as of the last run, so a resync does not read files that have not
//! changed.
//!
//! It lives in `BASEDIR/.index.txt.cache` and is never required for
//! correctness: a missing, unreadable, corrupt or foreign cache (another
//! format version, another block size) is ignored and every file hashed as
//! without it, so deleting the file is always safe. It is opt-in because
//! SPEC §8 has every run hash every file.
//!
//! The format is JSON lines: a header `{"format", "block_size", "scanned"}`,
//! then one `{"name", "stamp", "hashes"}` per file. It is replaced
//! atomically like `index.txt`, through the client's temporary files.
//!
//! **Racy files** (git's term). A cached entry is trusted only if the file
//! last changed (modification and change time both) at least
//! [`RACY_MARGIN`] before the scan that hashed it began. File timestamps are
//! coarse: a kernel clock tick, and a second or two on some file systems. A
//! write that lands after the file was hashed but within the same tick as
//! its previous change, and keeps its size, leaves the stamp exactly as
//! cached; the cache would hand out hashes of content that is gone and the
//! edit would never sync. A file that last changed well before the scan
//! began cannot change again without its timestamps moving past that
//! moment. The moment recorded is when the scan began, not when the cache
//! was written: a run may spend minutes uploading in between, and a file
//! stamped at the start of that could be rewritten within its tick.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use super::disk::{self, DiskError};
use super::index::Index;
use super::names::HASH_CACHE_FILE;
use super::scan::{Scan, Stamp};
use crate::hash::is_valid_hash;

/// The format this client writes and reads; a cache of any other is
/// ignored.
const FORMAT_VERSION: u32 = 1;

/// How long before the scan a file must have last changed for its entry to
/// be trusted: more than the coarsest file-system timestamp (2 s on FAT)
/// and the lag of the kernel's coarse clock behind the system time.
pub const RACY_MARGIN: Duration = Duration::from_secs(2);

/// Synced name → the stamp and hashes of the file when it was hashed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HashCache {
    block_size: usize,
    /// When the scan that produced the entries began.
    scanned: SystemTime,
    files: BTreeMap<String, Cached>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Cached {
    stamp: Stamp,
    hashes: Vec<String>,
}

/// The first line of the file.
#[derive(Serialize, Deserialize)]
struct Header {
    format: u32,
    block_size: usize,
    scanned: SystemTime,
}

/// Just the format version, read before the rest of the header so a cache
/// of another version is reported as such.
#[derive(Deserialize)]
struct Format {
    format: u32,
}

/// Every further line: one file.
#[derive(Serialize, Deserialize)]
struct FileLine<'a> {
    name: Cow<'a, str>,
    stamp: Stamp,
    hashes: Cow<'a, [String]>,
}

/// Why a new cache could not be written.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    /// The header could not be encoded.
    #[error("cannot encode the hash cache: {0}")]
    Encode(#[from] serde_json::Error),
    /// The file could not be replaced.
    #[error("cannot write the hash cache: {0}")]
    Write(#[from] DiskError),
}

/// Why an existing cache is not used (only ever logged).
#[derive(Debug, thiserror::Error)]
enum Unusable {
    #[error("there is none yet")]
    Missing,
    #[error("cannot read it: {0}")]
    Read(io::Error),
    #[error("line {line}: {reason}")]
    Malformed { line: usize, reason: String },
    #[error("it has format version {0}; this client reads {FORMAT_VERSION}")]
    Format(u32),
    #[error("it was made with blocks of {0} bytes, not {1}")]
    BlockSize(usize, usize),
}

/// Path of the hash cache of `base`.
pub fn path(base: &Path) -> PathBuf {
    base.join(HASH_CACHE_FILE)
}

impl HashCache {
    /// A cache with no entries, for blocks of `block_size` bytes.
    pub fn empty(block_size: usize) -> Self {
        Self {
            block_size,
            scanned: SystemTime::UNIX_EPOCH,
            files: BTreeMap::new(),
        }
    }

    /// The cache of `base` for blocks of `block_size` bytes, or an empty one
    /// if there is no usable cache (logged at debug level).
    pub fn load(base: &Path, block_size: usize) -> Self {
        let path = path(base);
        match read(&path, block_size) {
            Ok(cache) => {
                tracing::debug!(files = cache.files.len(), "using the hash cache");
                cache
            }
            Err(why) => {
                tracing::debug!(path = %path.display(), %why, "not using the hash cache; hashing every file");
                Self::empty(block_size)
            }
        }
    }

    /// The cache of what `scan`, begun at `scanned` with blocks of
    /// `block_size` bytes, saw: only the files `synced` (the index written
    /// after the run) records with the scanned hashes. Other files were
    /// replaced or deleted by the run, or failed to sync; they are hashed
    /// again next time.
    pub fn from_scan(scan: &Scan, block_size: usize, scanned: SystemTime, synced: &Index) -> Self {
        let files = scan
            .files
            .iter()
            .filter(|(name, hashes)| synced.get(*name).is_some_and(|e| &e.hashes == *hashes))
            .filter_map(|(name, hashes)| {
                let stamp = *scan.stamps.get(name)?;
                let hashes = hashes.clone();
                Some((name.clone(), Cached { stamp, hashes }))
            })
            .collect();
        Self {
            block_size,
            scanned,
            files,
        }
    }

    /// The block size the hashes were computed at.
    pub fn block_size(&self) -> usize {
        self.block_size
    }

    /// The cached hashes of `name` if the file is unchanged: its current
    /// `stamp` equals the cached one and is not racy (see the module
    /// comment).
    pub fn hashes(&self, name: &str, stamp: &Stamp) -> Option<&[String]> {
        let cached = self.files.get(name)?;
        let settled = stamp
            .last_change()
            .and_then(|changed| changed.checked_add(RACY_MARGIN))
            .is_some_and(|settled| settled < self.scanned);
        (cached.stamp == *stamp && settled).then_some(cached.hashes.as_slice())
    }

    /// Replaces the cache of `base` with this one, atomically.
    pub fn save(&self, base: &Path) -> Result<(), CacheError> {
        let header = Header {
            format: FORMAT_VERSION,
            block_size: self.block_size,
            scanned: self.scanned,
        };
        let mut text = serde_json::to_string(&header)?;
        text.push('\n');
        for (name, cached) in &self.files {
            let line = FileLine {
                name: Cow::Borrowed(name),
                stamp: cached.stamp,
                hashes: Cow::Borrowed(&cached.hashes),
            };
            // Only a time before 1970 fails to encode; that file is hashed
            // every run.
            match serde_json::to_string(&line) {
                Ok(line) => {
                    text.push_str(&line);
                    text.push('\n');
                }
                Err(error) => tracing::debug!(file = ?name, %error, "not caching"),
            }
        }
        disk::write_atomically(&path(base), text.as_bytes())?;
        Ok(())
    }
}

/// Reads the cache at `path`, refusing anything but a well-formed cache of
/// this format for `block_size`.
fn read(path: &Path, block_size: usize) -> Result<HashCache, Unusable> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(Unusable::Missing),
        Err(e) => return Err(Unusable::Read(e)),
    };
    let malformed = |line: usize| {
        move |reason: serde_json::Error| Unusable::Malformed {
            line,
            reason: reason.to_string(),
        }
    };
    let mut lines = text.lines();
    let first = lines.next().unwrap_or_default();
    let format: Format = serde_json::from_str(first).map_err(malformed(1))?;
    if format.format != FORMAT_VERSION {
        return Err(Unusable::Format(format.format));
    }
    let header: Header = serde_json::from_str(first).map_err(malformed(1))?;
    if header.block_size != block_size {
        return Err(Unusable::BlockSize(header.block_size, block_size));
    }
    let mut cache = HashCache {
        block_size,
        scanned: header.scanned,
        files: BTreeMap::new(),
    };
    for (i, line) in lines.enumerate() {
        let line_no = i + 2;
        let file: FileLine = serde_json::from_str(line).map_err(malformed(line_no))?;
        let blocks = file.stamp.size().div_ceil(block_size as u64);
        let consistent = file.hashes.len() as u64 == blocks
            && file.hashes.iter().all(|hash| is_valid_hash(hash));
        if !consistent {
            return Err(Unusable::Malformed {
                line: line_no,
                reason: "the hashes do not fit the file's size".into(),
            });
        }
        let cached = Cached {
            stamp: file.stamp,
            hashes: file.hashes.into_owned(),
        };
        cache.files.insert(file.name.into_owned(), cached);
    }
    Ok(cache)
}

/// For tests: the index of a run that synced every file as `scan` saw it.
#[cfg(test)]
pub(crate) fn index_of(scan: &Scan) -> Index {
    scan.files
        .iter()
        .map(|(name, hashes)| {
            let hashes = hashes.clone();
            (name.clone(), super::index::Entry { version: 1, hashes })
        })
        .collect()
}

/// For tests: a minute from now, when files a test just wrote are long
/// settled (not racy).
#[cfg(test)]
pub(crate) fn later() -> SystemTime {
    SystemTime::now() + Duration::from_secs(60)
}

#[cfg(test)]
impl HashCache {
    /// For tests: the cache a run that scanned `scan` and then synced every
    /// file would leave, as if that scan had begun [`later`].
    pub(crate) fn settled(scan: &Scan, block_size: usize) -> Self {
        Self::from_scan(scan, block_size, later(), &index_of(scan))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::progress::Progress;
    use crate::client::scan;
    use std::fs;

    const BLOCK: usize = 4;

    /// A base directory with a few files, its scan and an index that
    /// records every file as scanned.
    fn synced_dir() -> (tempfile::TempDir, Scan, Index) {
        let base = tempfile::tempdir().unwrap();
        fs::create_dir(base.path().join("d")).unwrap();
        fs::write(base.path().join("a"), b"0123456789").unwrap();
        fs::write(base.path().join("d/b"), b"xy").unwrap();
        fs::write(base.path().join("empty"), b"").unwrap();
        let scan = scan::scan(base.path(), BLOCK, None, &Progress::hidden()).unwrap();
        let index = index_of(&scan);
        (base, scan, index)
    }

    #[test]
    fn round_trips_through_the_base_directory() {
        let (base, scan, index) = synced_dir();
        let cache = HashCache::from_scan(&scan, BLOCK, later(), &index);
        assert_eq!(cache.files.len(), 3);
        cache.save(base.path()).unwrap();
        assert_eq!(HashCache::load(base.path(), BLOCK), cache);
        let text = fs::read_to_string(path(base.path())).unwrap();
        assert!(text.starts_with(r#"{"format":1,"block_size":4,"#), "{text}");
        assert_eq!(text.lines().count(), 4);
        // Only the cache itself: its temporary file was renamed into place.
        let names: Vec<_> = fs::read_dir(base.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 4, "{names:?}");
    }

    #[test]
    fn missing_unreadable_and_corrupt_caches_are_ignored() {
        let (base, scan, index) = synced_dir();
        assert!(matches!(
            read(&path(base.path()), BLOCK),
            Err(Unusable::Missing)
        ));
        assert_eq!(HashCache::load(base.path(), BLOCK), HashCache::empty(BLOCK));

        HashCache::from_scan(&scan, BLOCK, later(), &index)
            .save(base.path())
            .unwrap();
        let good = fs::read_to_string(path(base.path())).unwrap();
        let hash_a = &scan.files["a"][0];
        let corruptions = [
            "not json at all\n".to_string(),
            String::new(),
            good[..good.len() - 5].to_string(),
            good.replace(hash_a, "0"),
            good.replace(hash_a, &"z".repeat(64)),
            good.replacen(&format!(r#""{hash_a}","#), "", 1),
            "\u{fffd}".repeat(3),
        ];
        for text in corruptions {
            fs::write(path(base.path()), &text).unwrap();
            assert!(
                matches!(
                    read(&path(base.path()), BLOCK),
                    Err(Unusable::Malformed { .. })
                ),
                "{text:?}"
            );
            assert_eq!(
                HashCache::load(base.path(), BLOCK),
                HashCache::empty(BLOCK),
                "{text:?}"
            );
        }
        fs::write(path(base.path()), [0xff, 0xfe, b'\n']).unwrap();
        assert!(matches!(
            read(&path(base.path()), BLOCK),
            Err(Unusable::Read(_))
        ));

        let other_version = good.replacen(r#"{"format":1,"#, r#"{"format":99,"#, 1);
        fs::write(path(base.path()), other_version).unwrap();
        assert!(matches!(
            read(&path(base.path()), BLOCK),
            Err(Unusable::Format(99))
        ));
        assert_eq!(HashCache::load(base.path(), BLOCK), HashCache::empty(BLOCK));
    }

    #[test]
    fn a_cache_of_another_block_size_is_ignored() {
        let (base, scan, index) = synced_dir();
        HashCache::from_scan(&scan, BLOCK, later(), &index)
            .save(base.path())
            .unwrap();
        assert!(matches!(
            read(&path(base.path()), 8),
            Err(Unusable::BlockSize(BLOCK, 8))
        ));
        assert_eq!(HashCache::load(base.path(), 8), HashCache::empty(8));
    }

    #[test]
    fn racy_entries_are_not_trusted() {
        let (base, scan, index) = synced_dir();
        let stamp = Stamp::read(&base.path().join("a")).unwrap().unwrap();

        // Scanned right after the file was written: within the margin.
        let racy = HashCache::from_scan(&scan, BLOCK, SystemTime::now(), &index);
        assert_eq!(racy.hashes("a", &stamp), None);

        let settled = HashCache::from_scan(&scan, BLOCK, later(), &index);
        assert_eq!(settled.hashes("a", &stamp), Some(&scan.files["a"][..]));
        let other = Stamp::read(&base.path().join("d/b")).unwrap().unwrap();
        assert_eq!(settled.hashes("a", &other), None);
        assert_eq!(settled.hashes("unknown", &stamp), None);

        // A file whose timestamps lie in the future is racy too.
        let file = fs::File::options()
            .write(true)
            .open(base.path().join("d/b"))
            .unwrap();
        file.set_modified(later() + Duration::from_secs(60))
            .unwrap();
        let future = Stamp::of_open(&file).unwrap();
        let mut scan = scan;
        scan.stamps.insert("d/b".into(), future);
        let cache = HashCache::from_scan(&scan, BLOCK, later(), &index);
        assert_eq!(cache.hashes("d/b", &future), None);
    }

    #[test]
    fn only_files_the_index_records_as_scanned_are_kept() {
        let (_base, scan, mut index) = synced_dir();
        index.get_mut("a").unwrap().hashes = vec!["0".into()];
        index.remove("empty");
        let cache = HashCache::from_scan(&scan, BLOCK, later(), &index);
        assert_eq!(cache.files.keys().collect::<Vec<_>>(), ["d/b"]);
    }
}
