//! Hashing the base directory (SPEC §8 step 1).
//!
//! Every regular file below the base directory is read in blocks of
//! BLOCKSIZE bytes (never whole) and named by the SHA-256 of each block.
//! The work is cut into segments of a few blocks so several threads hash at
//! once, across files and within one large file; each thread holds one
//! block-sized buffer. Symlinks and special files are skipped with a warning
//! and never followed; the client's own files (`index.txt`, temporary
//! files, partial downloads) are not synced; temporary files a killed run
//! left behind are listed for removal, and its partial downloads for
//! resuming.
//!
//! With a [`HashCache`] (`--hash-cache`), a file whose stamp the cache
//! trusts is not read at all: its cached hashes are taken as they are.
//!
//! A scan is two steps, so that a run can refuse a block size before any
//! work: [`list`] finds the files and their sizes (no file is read), and
//! [`Listing::hash`] reads them. [`Listing::check_block_size`] in between
//! refuses a block size that would give a file more than
//! [`MAX_BLOCKS_PER_FILE`] blocks (SPEC §8).
//!
//! Each file's [`Stamp`] is taken before hashing and checked after: a file
//! that changed meanwhile is skipped this run rather than synced with hashes
//! of a state that never existed. A scan that cannot read something fails as
//! a whole: a file missing from the scan would look deleted and be deleted
//! everywhere.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{File, Metadata};
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use super::cache::HashCache;
use super::names;
use super::progress::Progress;
use super::surfignore::Rules;
use crate::hash::hash_block;
use crate::locks::lock;

/// At most this many threads hash at once, each with a block-sized buffer.
const MAX_HASH_THREADS: usize = 4;

/// Roughly how many bytes one thread hashes before taking more work: large
/// enough that reads stay sequential, small enough that one big file keeps
/// every thread busy.
const SEGMENT_BYTES: u64 = 64 << 20;

/// The most blocks a file may have (SPEC §8). Every block's hash is held in
/// memory and written to index.txt (65 bytes each), so a file of more
/// blocks would cost the client gigabytes before a byte moved.
pub const MAX_BLOCKS_PER_FILE: u64 = 4_194_304;

/// What the base directory holds now.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Scan {
    /// Synced name → block hashes of every regular file.
    pub files: BTreeMap<String, Vec<String>>,
    /// Synced name → what the file looked like when it was hashed.
    pub stamps: BTreeMap<String, Stamp>,
    /// Names held by something that is not a regular file or directory
    /// (symlinks, sockets, ...), or by a file that changed while it was
    /// hashed. Sync leaves these names alone entirely.
    pub skipped: BTreeSet<String>,
    /// Temporary files an interrupted run left behind.
    pub stale_temp_files: Vec<PathBuf>,
    /// Partial downloads an interrupted run left behind: each is resumed by
    /// the download it belongs to, or removed.
    pub partial_downloads: BTreeSet<PathBuf>,
}

/// What identifies one state of a file cheaply: if any of it differs, the
/// file was written (or replaced) since. Serializable so the
/// [`HashCache`] can keep it between runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stamp {
    len: u64,
    modified: Option<SystemTime>,
    /// Inode and change time (unix): catch a replacement or a write that
    /// restored the old modification time.
    #[cfg(unix)]
    inode: (u64, u64, i64, i64),
}

impl Stamp {
    /// The stamp of a file with metadata `meta`.
    pub fn of(meta: &Metadata) -> Self {
        #[cfg(unix)]
        use std::os::unix::fs::MetadataExt;
        Self {
            len: meta.len(),
            modified: meta.modified().ok(),
            #[cfg(unix)]
            inode: (meta.dev(), meta.ino(), meta.ctime(), meta.ctime_nsec()),
        }
    }

    /// The stamp of the regular file at `path` now; `None` if nothing (or
    /// no regular file) is there.
    pub fn read(path: &Path) -> io::Result<Option<Self>> {
        match std::fs::symlink_metadata(path) {
            Ok(meta) if meta.is_file() => Ok(Some(Self::of(&meta))),
            Ok(_) => Ok(None),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The stamp of the open `file` now.
    pub fn of_open(file: &File) -> io::Result<Self> {
        Ok(Self::of(&file.metadata()?))
    }

    /// The file's size in bytes.
    pub fn size(&self) -> u64 {
        self.len
    }

    /// When the file or its inode last changed: the later of its
    /// modification and (unix) change times. `None` where the platform
    /// gives no such time.
    pub fn last_change(&self) -> Option<SystemTime> {
        #[cfg(unix)]
        {
            let (_, _, secs, nanos) = self.inode;
            let changed = unix_time(secs, nanos)?;
            Some(
                self.modified
                    .map_or(changed, |modified| modified.max(changed)),
            )
        }
        #[cfg(not(unix))]
        self.modified
    }
}

/// The moment `secs` seconds and `nanos` nanoseconds after the Unix epoch
/// (`secs` may be negative, as `stat` reports times before 1970).
#[cfg(unix)]
fn unix_time(secs: i64, nanos: i64) -> Option<SystemTime> {
    use std::time::Duration;
    let whole = Duration::from_secs(secs.unsigned_abs());
    let at = if secs >= 0 {
        SystemTime::UNIX_EPOCH.checked_add(whole)?
    } else {
        SystemTime::UNIX_EPOCH.checked_sub(whole)?
    };
    at.checked_add(Duration::from_nanos(u64::try_from(nanos).ok()?))
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

/// A block size that would give a file more than [`MAX_BLOCKS_PER_FILE`]
/// blocks.
#[derive(Debug, thiserror::Error)]
#[error(
    "BLOCKSIZE {block_size} would cut {} ({len} bytes) into {blocks} blocks, more than the \
     {MAX_BLOCKS_PER_FILE} a file may have; use a block size of at least {smallest}",
    path.display()
)]
pub struct TooManyBlocks {
    /// The largest file.
    pub path: PathBuf,
    /// Its size in bytes.
    pub len: u64,
    /// The block size asked for.
    pub block_size: usize,
    /// How many blocks the file would have.
    pub blocks: u64,
    /// The smallest block size that gives no file too many blocks.
    pub smallest: u64,
}

/// A regular file found below the base directory.
struct Found {
    name: String,
    path: PathBuf,
    stamp: Stamp,
}

/// The regular files below the base directory and their sizes, found by
/// [`list`]; nothing has been read yet.
pub struct Listing {
    /// What the walk skipped and the stale temporary files; the hashes
    /// come in [`Listing::hash`].
    scan: Scan,
    files: Vec<Found>,
}

/// Lists the files below `base` with their stamps, reading none of them.
pub fn list(base: &Path) -> Result<Listing, ScanError> {
    let mut scan = Scan::default();
    let files = walk(base, &mut scan)?;
    Ok(Listing { scan, files })
}

/// Lists and hashes `base` in one go (see [`Listing::hash`]).
#[cfg(test)]
pub fn scan(
    base: &Path,
    block_size: usize,
    cache: Option<&HashCache>,
    progress: &Progress,
) -> Result<Scan, ScanError> {
    list(base)?.hash(block_size, cache, progress)
}

impl Listing {
    /// Leaves alone this run the files changed less than `settle` before
    /// `now`, which may still be being written (`--watch` syncs them once
    /// they are quiet); returns how many.
    pub fn hold_back_unsettled(&mut self, now: SystemTime, settle: std::time::Duration) -> usize {
        let settled = |file: &Found| {
            file.stamp
                .last_change()
                .is_none_or(|changed| now.duration_since(changed).is_ok_and(|age| age >= settle))
        };
        let (keep, held): (Vec<Found>, Vec<Found>) = std::mem::take(&mut self.files)
            .into_iter()
            .partition(settled);
        self.files = keep;
        let count = held.len();
        self.scan
            .skipped
            .extend(held.into_iter().map(|file| file.name));
        count
    }

    /// Leaves out the files `ignored`: the plan leaves their names alone,
    /// so reading them would be wasted.
    pub fn drop_ignored(&mut self, ignored: &Rules) {
        self.files.retain(|file| !ignored.is_ignored(&file.name));
    }

    /// Refuses `block_size` if it would give the largest file more than
    /// [`MAX_BLOCKS_PER_FILE`] blocks, naming that file and the smallest
    /// block size that gives no file too many.
    pub fn check_block_size(&self, block_size: usize) -> Result<(), TooManyBlocks> {
        let Some(largest) = self.files.iter().max_by_key(|file| file.stamp.len) else {
            return Ok(());
        };
        let len = largest.stamp.len;
        let blocks = len.div_ceil(block_size.max(1) as u64);
        if blocks <= MAX_BLOCKS_PER_FILE {
            return Ok(());
        }
        Err(TooManyBlocks {
            path: largest.path.clone(),
            len,
            block_size,
            blocks,
            smallest: len.div_ceil(MAX_BLOCKS_PER_FILE),
        })
    }

    /// Hashes the listed files in blocks of `block_size` bytes, counting
    /// hashed bytes on the progress's hashing bar. A file `cache` trusts
    /// (for this block size) is not read; the bar counts only the bytes
    /// read.
    pub fn hash(
        self,
        block_size: usize,
        cache: Option<&HashCache>,
        progress: &Progress,
    ) -> Result<Scan, ScanError> {
        let Listing {
            mut scan,
            files: found,
        } = self;
        let cache = cache.filter(|cache| cache.block_size() == block_size);
        let mut reused = Vec::new();
        let mut to_hash = Vec::new();
        for file in found {
            match cache.and_then(|cache| cache.hashes(&file.name, &file.stamp)) {
                Some(hashes) => {
                    let hashes = Some(hashes.to_vec());
                    reused.push((file, hashes));
                }
                None => to_hash.push(file),
            }
        }
        progress
            .hashing()
            .set_length(to_hash.iter().map(|f| f.stamp.len).sum());
        tracing::debug!(cached = reused.len(), hashing = to_hash.len(), "scanning");
        let hashes = hash_files(&to_hash, block_size, progress)?;
        // A cached file's stamp is checked again like any other: it may have
        // changed since the walk.
        for (file, hashes) in reused.into_iter().chain(to_hash.into_iter().zip(hashes)) {
            let now = match Stamp::read(&file.path) {
                Ok(now) => now,
                Err(e) => return Err(ScanError::new(&file.path)(e)),
            };
            match hashes {
                Some(hashes) if now == Some(file.stamp) => {
                    scan.stamps.insert(file.name.clone(), file.stamp);
                    scan.files.insert(file.name, hashes);
                }
                _ => {
                    tracing::warn!(path = %file.path.display(), "changed while it was hashed; it will sync next time");
                    scan.skipped.insert(file.name);
                }
            }
        }
        Ok(scan)
    }
}

/// Lists the regular files below `base`; records in `scan` what is skipped
/// and the stale temporary files.
fn walk(base: &Path, scan: &mut Scan) -> Result<Vec<Found>, ScanError> {
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
            } else if kind.is_file() && names::is_partial_download(&file_name) {
                scan.partial_downloads.insert(path);
            } else if kind.is_file() && names::is_temp_file(&file_name) {
                scan.stale_temp_files.push(path);
            } else if names::is_reserved(&name) {
                continue;
            } else if kind.is_file() {
                let meta = std::fs::symlink_metadata(&path).map_err(ScanError::new(&path))?;
                let stamp = Stamp::of(&meta);
                files.push(Found { name, path, stamp });
            } else {
                let what = if kind.is_symlink() {
                    "symlink"
                } else {
                    "special file"
                };
                tracing::warn!(path = %path.display(), "skipping {what}: only regular files sync");
                scan.skipped.insert(name);
            }
        }
    }
    Ok(files)
}

/// A run of consecutive blocks of one file: the unit of hashing work.
struct Segment {
    file: usize,
    first_block: u64,
    blocks: u64,
}

/// Hashes `files` on a bounded number of threads. Per file, in input order:
/// its block hashes, or `None` if it vanished or shrank while hashed.
fn hash_files(
    files: &[Found],
    block_size: usize,
    progress: &Progress,
) -> Result<Vec<Option<Vec<String>>>, ScanError> {
    let segments = segments(files, block_size as u64);
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(MAX_HASH_THREADS)
        .min(segments.len())
        .max(1);
    let next = AtomicUsize::new(0);
    let results: Mutex<Vec<Option<Vec<String>>>> = Mutex::new(vec![None; segments.len()]);
    let first_error: Mutex<Option<ScanError>> = Mutex::new(None);
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| {
                let mut buf = Vec::new();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(segment) = segments.get(i) else {
                        break;
                    };
                    let path = &files[segment.file].path;
                    match hash_segment(path, segment, block_size, &mut buf, progress) {
                        Ok(hashes) => lock(&results)[i] = Some(hashes),
                        // Gone since the walk: the stamp check skips it.
                        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                        Err(e) => {
                            lock(&first_error).get_or_insert(ScanError::new(path)(e));
                            // Claim every remaining segment so all threads stop.
                            next.store(segments.len(), Ordering::Relaxed);
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
    let mut hashes: Vec<Option<Vec<String>>> = vec![Some(Vec::new()); files.len()];
    for (segment, result) in segments.iter().zip(results) {
        let file = &mut hashes[segment.file];
        match (file.as_mut(), result) {
            (Some(all), Some(part)) if part.len() as u64 == segment.blocks => all.extend(part),
            _ => *file = None,
        }
    }
    Ok(hashes)
}

/// Cuts every file into segments of about [`SEGMENT_BYTES`], in file order
/// and block order. An empty file has none.
fn segments(files: &[Found], block_size: u64) -> Vec<Segment> {
    let per_segment = (SEGMENT_BYTES / block_size).max(1);
    let mut segments = Vec::new();
    for (file, found) in files.iter().enumerate() {
        let blocks = found.stamp.len.div_ceil(block_size);
        let mut first_block = 0;
        while first_block < blocks {
            let n = per_segment.min(blocks - first_block);
            segments.push(Segment {
                file,
                first_block,
                blocks: n,
            });
            first_block += n;
        }
    }
    segments
}

/// The hashes of one segment, reading one block at a time into `buf`.
/// Fewer hashes than blocks means the file is shorter than it was.
fn hash_segment(
    path: &Path,
    segment: &Segment,
    block_size: usize,
    buf: &mut Vec<u8>,
    progress: &Progress,
) -> io::Result<Vec<String>> {
    let mut file = File::open(path)?;
    file.seek(SeekFrom::Start(segment.first_block * block_size as u64))?;
    let mut hashes = Vec::new();
    for _ in 0..segment.blocks {
        let block = read_block(&mut file, block_size, buf)?;
        if block.is_empty() {
            break;
        }
        hashes.push(hash_block(block));
        progress.hashing().inc(block.len() as u64);
    }
    Ok(hashes)
}

/// Reads block number `index` of the open `file` with positioned reads, so
/// one handle serves every block of an upload, several at once.
pub fn read_block_at(file: &File, index: usize, block_size: usize) -> io::Result<Vec<u8>> {
    let mut buf = Vec::new();
    read_block_at_into(file, index, block_size, &mut buf)?;
    Ok(buf)
}

/// [`read_block_at`] into `buf`, whose allocation is reused when it holds
/// `block_size` bytes already; `buf` is left holding exactly the block.
pub fn read_block_at_into(
    file: &File,
    index: usize,
    block_size: usize,
    buf: &mut Vec<u8>,
) -> io::Result<()> {
    let offset = (index as u64).saturating_mul(block_size as u64);
    let n = read_block(&mut ReadAt { file, offset }, block_size, buf)?.len();
    buf.truncate(n);
    Ok(())
}

/// A reader over a shared file handle that tracks its own offset rather
/// than the handle's, so readers on other threads do not disturb it.
struct ReadAt<'f> {
    file: &'f File,
    offset: u64,
}

impl Read for ReadAt<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        #[cfg(unix)]
        let n = std::os::unix::fs::FileExt::read_at(self.file, buf, self.offset)?;
        #[cfg(windows)]
        let n = std::os::windows::fs::FileExt::seek_read(self.file, buf, self.offset)?;
        self.offset += n as u64;
        Ok(n)
    }
}

/// Reads the next `block_size` bytes (fewer only at the end of the file)
/// into `buf` and returns them. `buf` is allocated once at its final size
/// rather than grown by doubling, and zeroed by the allocator, so only the
/// bytes actually read take up memory.
fn read_block<'b>(
    reader: &mut impl Read,
    block_size: usize,
    buf: &'b mut Vec<u8>,
) -> io::Result<&'b [u8]> {
    if buf.len() < block_size {
        *buf = vec![0; block_size];
    }
    let mut filled = 0;
    while filled < block_size {
        match reader.read(&mut buf[filled..block_size]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(&buf[..filled])
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    #[test]
    fn files_changed_within_the_settle_time_are_held_back() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("fresh"), "x").unwrap();
        let now = SystemTime::now();
        let mut listing = list(dir.path()).unwrap();
        assert_eq!(
            listing.hold_back_unsettled(now, std::time::Duration::ZERO),
            0
        );
        assert_eq!(
            listing.hold_back_unsettled(now, std::time::Duration::from_secs(3600)),
            1
        );
        let scan = listing.hash(4, None, &Progress::hidden()).unwrap();
        assert!(scan.files.is_empty());
        assert!(scan.skipped.contains("fresh"));
    }

    #[test]
    fn hashes_nested_files_in_blocks() {
        let base = tempfile::tempdir().unwrap();
        fs::create_dir_all(base.path().join("d/e")).unwrap();
        fs::create_dir(base.path().join("emptydir")).unwrap();
        fs::write(base.path().join("top"), b"abcdefghij").unwrap();
        fs::write(base.path().join("d/e/deep"), b"abcd").unwrap();
        fs::write(base.path().join("empty"), b"").unwrap();

        let scan = scan(base.path(), 4, None, &Progress::hidden()).unwrap();
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
    fn a_block_size_giving_a_file_too_many_blocks_is_refused_naming_it() {
        let base = tempfile::tempdir().unwrap();
        fs::create_dir(base.path().join("d")).unwrap();
        fs::write(base.path().join("small"), b"x").unwrap();
        // Sparse: sizes are all the check looks at.
        let len = 2 * MAX_BLOCKS_PER_FILE + 1;
        File::create(base.path().join("d/big"))
            .unwrap()
            .set_len(len)
            .unwrap();
        let listing = list(base.path()).unwrap();

        let refused = listing.check_block_size(2).unwrap_err();
        assert_eq!(refused.path, base.path().join("d/big"));
        assert_eq!(refused.blocks, MAX_BLOCKS_PER_FILE + 1);
        assert_eq!(refused.smallest, 3);
        let message = refused.to_string();
        assert!(message.contains("d/big"), "{message}");
        assert!(message.contains("at least 3"), "{message}");
        listing.check_block_size(3).unwrap();

        // Exactly the limit is allowed.
        File::create(base.path().join("d/big"))
            .unwrap()
            .set_len(MAX_BLOCKS_PER_FILE)
            .unwrap();
        list(base.path()).unwrap().check_block_size(1).unwrap();
    }

    #[test]
    fn skips_the_clients_own_files() {
        let base = tempfile::tempdir().unwrap();
        fs::create_dir(base.path().join("d")).unwrap();
        fs::write(base.path().join("index.txt"), b"").unwrap();
        fs::write(base.path().join(".surfstore-tmp-x"), b"").unwrap();
        fs::write(base.path().join("d/.surfstore-tmp-y"), b"").unwrap();
        fs::write(base.path().join("d/.surfstore-partial-z"), b"").unwrap();
        fs::write(
            base.path().join("d/index.txt"),
            b"nested index is a normal file",
        )
        .unwrap();

        let scan = scan(base.path(), 4096, None, &Progress::hidden()).unwrap();
        assert_eq!(scan.files.keys().collect::<Vec<_>>(), ["d/index.txt"]);
        assert_eq!(scan.stale_temp_files.len(), 2);
        assert_eq!(
            scan.partial_downloads,
            BTreeSet::from([base.path().join("d/.surfstore-partial-z")])
        );
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

        let scan = scan(base.path(), 4096, None, &Progress::hidden()).unwrap();
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
        let scan = scan(base.path(), 16, None, &Progress::hidden()).unwrap();
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
        let file = File::open(&path).unwrap();
        assert_eq!(read_block_at(&file, 0, 4).unwrap(), b"0123");
        assert_eq!(read_block_at(&file, 2, 4).unwrap(), b"89");
        assert_eq!(read_block_at(&file, 3, 4).unwrap(), b"");
        assert_eq!(read_block_at(&file, 1, 4).unwrap(), b"4567");
        assert_eq!(
            Stamp::of_open(&file).unwrap(),
            Stamp::read(&path).unwrap().unwrap()
        );
    }

    /// Scans `base` with `cache`; returns the scan and the bytes it read.
    fn scan_with(base: &Path, block_size: usize, cache: Option<&HashCache>) -> (Scan, u64) {
        let progress = Progress::hidden();
        let scan = scan(base, block_size, cache, &progress).unwrap();
        let read = progress.hashing().position();
        assert_eq!(progress.hashing().length(), Some(read));
        (scan, read)
    }

    #[test]
    fn cached_unchanged_files_are_not_read() {
        let base = tempfile::tempdir().unwrap();
        let path = base.path().join("f");
        fs::write(&path, b"0123456789").unwrap();
        fs::write(base.path().join("g"), b"abc").unwrap();
        let (first, read) = scan_with(base.path(), 4, None);
        assert_eq!(read, 13);
        let cache = HashCache::settled(&first, 4);

        // A new file is hashed; the cached ones are not read at all.
        fs::write(base.path().join("new"), b"xyz").unwrap();
        let (second, read) = scan_with(base.path(), 4, Some(&cache));
        assert_eq!(read, 3);
        assert_eq!(second.files["f"], first.files["f"]);
        assert_eq!(second.files["g"], first.files["g"]);
        assert_eq!(second.files["new"], [hash_block(b"xyz")]);
        assert_eq!(second.stamps["f"], first.stamps["f"]);

        // A cache made at another block size is not used.
        assert_eq!(scan_with(base.path(), 8, Some(&cache)).1, 16);

        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            fs::set_permissions(&path, fs::Permissions::from_mode(0o000)).unwrap();
            // chmod changes the file's ctime, so the cache must know the
            // new stamp (with the old, still right, hashes).
            let mut unreadable = first.clone();
            let stamp = Stamp::read(&path).unwrap().unwrap();
            unreadable.stamps.insert("f".into(), stamp);
            let cache = HashCache::settled(&unreadable, 4);
            // Root reads it anyway; the byte counts are the proof then.
            if File::open(&path).is_err() {
                assert!(scan(base.path(), 4, None, &Progress::hidden()).is_err());
                let (cached, read) = scan_with(base.path(), 4, Some(&cache));
                assert_eq!(cached.files["f"], first.files["f"]);
                assert_eq!(read, 3, "only `new` is read");
            }
        }
    }

    #[test]
    fn a_changed_file_of_the_same_size_is_hashed_again() {
        let base = tempfile::tempdir().unwrap();
        let path = base.path().join("f");
        fs::write(&path, b"0123456789").unwrap();
        let (first, _) = scan_with(base.path(), 4, None);
        let cache = HashCache::settled(&first, 4);

        fs::write(&path, b"abcdefghij").unwrap();
        // A modification time of its own, even if the write landed in the
        // tick of the first one.
        let old = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000_000);
        File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_modified(old)
            .unwrap();
        let (second, read) = scan_with(base.path(), 4, Some(&cache));
        assert_eq!(read, 10);
        let expected: Vec<String> = [&b"abcd"[..], b"efgh", b"ij"]
            .into_iter()
            .map(hash_block)
            .collect();
        assert_eq!(second.files["f"], expected);
        assert_eq!(cache.hashes("f", &second.stamps["f"]), None);
    }

    #[test]
    fn the_hash_cache_itself_is_never_synced() {
        let base = tempfile::tempdir().unwrap();
        fs::write(base.path().join("f"), b"x").unwrap();
        let (scan, _) = scan_with(base.path(), 4, None);
        HashCache::settled(&scan, 4).save(base.path()).unwrap();
        let (rescan, _) = scan_with(base.path(), 4, None);
        assert_eq!(rescan.files.keys().collect::<Vec<_>>(), ["f"]);
        assert!(rescan.stale_temp_files.is_empty());
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
        let result = scan(base.path(), 4096, None, &Progress::hidden());
        fs::set_permissions(&locked, fs::Permissions::from_mode(0o755)).unwrap();
        if !readable_anyway {
            let err = result.unwrap_err().to_string();
            assert!(err.contains("locked"), "{err}");
        }
    }
}
