//! One sync run (SPEC §8): list the base directory (refusing a block size
//! that would give a file too many blocks before any work), hash it while
//! fetching the remote map, [`plan`] what to do, carry it out with bounded
//! concurrency, and write `index.txt` with the versions now held.
//!
//! Nothing local changes before the remote map is in hand, so a run that
//! cannot reach the servers leaves the base directory and its index as they
//! were. A file that fails (a corrupt block, something in the way on disk, a
//! local edit during the run) keeps its old index entry and is retried next
//! run; the other files still sync. If the servers become unreachable
//! midway, the run stops, records what it finished and reports the error.
//! A run killed at any point leaves every file old or new (each is replaced
//! by a rename) and the index of the previous run, which the next run
//! reconciles: a file already holding the server's version is only
//! recorded.
//!
//! Memory stays bounded whatever the file sizes: at most
//! [`FILE_CONCURRENCY`] files move at once, and all of them together hold
//! at most [`blocks_in_flight`] blocks (read but not yet sent, or fetched but
//! not yet written).

use std::collections::hash_map::Entry as Slot;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt, stream};
use tokio::sync::{OnceCell, Semaphore, SemaphorePermit};
use tokio::task::{JoinError, spawn_blocking};

use super::buffers::BlockBuffers;
use super::cache::HashCache;
use super::conflict::{self, Copies};
use super::disk::{self, DiskError};
use super::index::{self, Entry, Index, IndexError};
use super::names::{self, NameError};
use super::plan::{self, Action, Change};
use super::progress::Progress;
use super::report::Report;
use super::rpc::{BlockStore, MetaStore, RpcError};
use super::scan::{self, Scan, ScanError, Stamp, TooManyBlocks};
use super::surfignore::{Rules, RulesError};
use crate::hash::{hash_block, is_valid_hash};
use crate::meta_store::REJECTED_VERSION;

/// How many files are uploaded or downloaded at once.
pub const FILE_CONCURRENCY: usize = 4;

/// Bytes of block data all transfers together may hold at once. An
/// upload's block is held twice while its call is encoded (its reused read
/// buffer and gRPC's message), so peak memory is about twice this; 32 MiB
/// was no faster.
pub const BLOCK_BUDGET_BYTES: usize = 16 << 20;

/// About how many bytes of blocks one BlockStore call carries: smaller
/// blocks travel many to a call, because a call costs more CPU than a few
/// KiB of data; blocks this large or larger travel one to a call.
pub const CALL_BYTES: usize = 1 << 20;

/// The most BlockStore calls one file's transfer keeps in flight: enough
/// to hide the latency of one call behind the others.
pub const MAX_CALLS_IN_FLIGHT: usize = 8;

/// How many hashes one `HasBlocks` call asks about.
const HAS_BLOCKS_BATCH: usize = 4096;

/// How many blocks of `block_size` bytes may be held in memory at once:
/// [`BLOCK_BUDGET_BYTES`] worth, at least one (8 at 4 MiB).
pub fn blocks_in_flight(block_size: usize) -> usize {
    (BLOCK_BUDGET_BYTES / block_size.max(1)).max(1)
}

/// How many blocks of `block_size` bytes one BlockStore call carries
/// (see [`CALL_BYTES`]; 256 at 4 KiB, 1 at 1 MiB and more).
pub fn blocks_per_call(block_size: usize) -> usize {
    (CALL_BYTES / block_size.max(1)).max(1)
}

/// How many calls of [`blocks_per_call`] blocks one transfer keeps in
/// flight: as many as the budget holds, at most [`MAX_CALLS_IN_FLIGHT`].
fn calls_in_flight(block_size: usize) -> usize {
    (blocks_in_flight(block_size) / blocks_per_call(block_size)).clamp(1, MAX_CALLS_IN_FLIGHT)
}

/// How a run behaves.
pub struct Options {
    /// BLOCKSIZE: files are hashed and uploaded in blocks of this many bytes.
    pub block_size: usize,
    /// Where a local change the server wins over is saved (see
    /// [`super::conflict`]).
    pub conflicts: Copies,
    /// Keep a hash cache beside index.txt (see [`super::cache`]) so files
    /// unchanged since the last run are not read again. When off, the
    /// cache file is neither read nor written.
    pub hash_cache: bool,
    /// Where hashing and transfers report progress.
    pub progress: Progress,
    /// Print one line per file changed (`-v`), as it is done.
    pub verbose: bool,
    /// Sync even if index.txt seems written with another block size
    /// (`--rehash`): every file then uploads again, hashed anew.
    pub rehash: bool,
    /// Leave alone the files changed less than this long ago (`--watch`:
    /// they may still be being written); `None` syncs every file.
    pub settle: Option<Duration>,
}

/// Why a run failed as a whole.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    /// `index.txt` could not be read or written.
    #[error(transparent)]
    Index(#[from] IndexError),
    /// The base directory could not be scanned.
    #[error(transparent)]
    Scan(#[from] ScanError),
    /// BLOCKSIZE would give a file too many blocks; nothing was done.
    #[error(transparent)]
    BlockSize(#[from] TooManyBlocks),
    /// index.txt seems written with another block size; nothing was done.
    #[error(
        "index.txt was written with another block size than {block_size} ({file:?} was \
         {recorded} blocks, is {now} now): this sync would upload every file again and may \
         report false conflicts; give the block size of the last sync, or pass --rehash to \
         hash and upload everything with {block_size}"
    )]
    OtherBlockSize {
        /// BLOCKSIZE of this run.
        block_size: usize,
        /// A file that shows it.
        file: String,
        /// Its block count in index.txt.
        recorded: usize,
        /// Its block count now.
        now: usize,
    },
    /// `.surfignore` cannot be used.
    #[error(transparent)]
    Ignore(#[from] RulesError),
    /// The servers could not be reached.
    #[error(transparent)]
    Rpc(#[from] RpcError),
    /// A finished change could not be made durable.
    #[error(transparent)]
    Disk(#[from] DiskError),
    /// A background task died.
    #[error("background task failed: {0}")]
    Task(#[from] JoinError),
}

/// Why one file could not be synced.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    /// A server call failed.
    #[error(transparent)]
    Rpc(#[from] RpcError),
    /// The base directory could not be changed.
    #[error(transparent)]
    Disk(#[from] DiskError),
    /// A block of the local file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The local file changed since it was hashed: it is neither uploaded
    /// with stale hashes nor overwritten.
    #[error("the file changed while it was being synced; it will sync next time")]
    Changed,
    /// The BlockStore returned bytes that do not hash to the requested name.
    #[error(
        "block {expected} from the BlockStore is corrupt (its SHA-256 is {actual}); file left untouched"
    )]
    CorruptBlock {
        /// The hash asked for.
        expected: String,
        /// The hash of what came back.
        actual: String,
    },
    /// The remote entry lists something that is not a block hash.
    #[error("the server's entry lists {0:?}, which is not a block hash")]
    BadHash(String),
    /// The server's version would replace or delete a local change, and
    /// the environment names no place to save the local version.
    #[error(
        "the server's version wins over a local change, and there is nowhere to save the local version \
         (neither XDG_STATE_HOME nor HOME is set; set one, or use --keep-conflicts); the file is left as it is"
    )]
    NowhereToSaveConflict,
    /// The server rejected an upload but then had no entry for the file.
    #[error("the server rejected version {0} but holds no version of the file")]
    Vanished(i32),
    /// The server holds a name that cannot be synced safely.
    #[error("refusing the server's file name: {0}")]
    Refused(NameError),
    /// A background task died.
    #[error("background task failed: {0}")]
    Task(#[from] JoinError),
}

/// The line `-v` prints for a file once its change is done.
fn file_line(name: &str, change: Change, conflict: bool) -> String {
    let conflict = if conflict {
        " (conflict: the server's version won)"
    } else {
        ""
    };
    format!("{:<18}{name}{conflict}", change.done())
}

/// The outcome of one action.
struct Done {
    /// The file's new index entry, or `None` to drop it.
    entry: Option<Entry>,
    /// What changed; `None` when only the index changes.
    effect: Option<Change>,
    conflict: bool,
    /// The conflict copy saved of the losing local file.
    copy: Option<PathBuf>,
    /// A directory whose entries changed and must be synced to disk before
    /// the index records the change; after a deletion, one that may now be
    /// empty and is pruned once every action is done.
    dir: Option<PathBuf>,
}

impl Done {
    fn recorded(entry: Option<Entry>) -> Self {
        Self::new(entry, None)
    }

    fn new(entry: Option<Entry>, effect: Option<Change>) -> Self {
        Self {
            entry,
            effect,
            conflict: false,
            copy: None,
            dir: None,
        }
    }
}

/// What a run decided, before it changed anything.
struct Prepared {
    /// Files left alone because they changed too recently.
    unsettled: usize,
    index: Index,
    scan: Scan,
    plan: plan::Plan,
    /// When the scan started (see [`HashCache::from_scan`]).
    scan_started: SystemTime,
}

/// The first half of a run, which changes nothing: reads index.txt, lists
/// and hashes the base directory while fetching the remote map, and plans.
async fn prepare(base: &Path, options: &Options, meta: &MetaStore) -> Result<Prepared, SyncError> {
    let index = index::load(base)?;
    let (scan_base, block_size) = (base.to_path_buf(), options.block_size);
    let (progress, use_cache) = (options.progress.clone(), options.hash_cache);
    // Before any stamp is taken: the cache trusts only files that had
    // settled by then.
    let scan_started = SystemTime::now();
    // Sizes only, so a block size too small is refused before any work.
    let ignored = Rules::load(base)?;
    let mut listing = spawn_blocking({
        let base = scan_base.clone();
        move || scan::list(&base)
    })
    .await??;
    listing.drop_ignored(&ignored);
    let unsettled = options.settle.map_or(0, |settle| {
        listing.hold_back_unsettled(scan_started, settle)
    });
    listing.check_block_size(block_size)?;
    let scanning = async {
        let scanned = spawn_blocking(move || {
            let cache = use_cache.then(|| HashCache::load(&scan_base, block_size));
            listing.hash(block_size, cache.as_ref(), &progress)
        })
        .await??;
        Ok::<_, SyncError>(scanned)
    };
    let fetching = async { Ok::<_, SyncError>(meta.get_file_info_map().await?) };
    let (scan, remote) = tokio::try_join!(scanning, fetching)?;
    options.progress.hashing_done();
    if !options.rehash
        && let Some((file, recorded, now)) = plan::block_size_changed(&scan, &index)
    {
        return Err(SyncError::OtherBlockSize {
            block_size,
            file,
            recorded,
            now,
        });
    }
    let plan = plan::plan(&scan, &index, &remote, &ignored);
    tracing::debug!(
        actions = plan.actions.len(),
        refused = plan.refused.len(),
        "planned"
    );
    Ok(Prepared {
        unsettled,
        index,
        scan,
        plan,
        scan_started,
    })
}

/// What a sync of `base` would do now (`--dry-run`): nothing on disk or on
/// the servers changes, not even index.txt or the hash cache.
pub async fn dry_run(
    base: &Path,
    options: &Options,
    meta: &MetaStore,
) -> Result<plan::Plan, SyncError> {
    Ok(prepare(base, options, meta).await?.plan)
}

/// Syncs the base directory `base` with the servers behind `meta`.
pub async fn sync(base: &Path, options: &Options, meta: &MetaStore) -> Result<Report, SyncError> {
    let started = Instant::now();
    let conflict_root = conflict_root(base, &options.conflicts)?;
    let block_size = options.block_size;
    let Prepared {
        unsettled,
        index,
        scan,
        plan,
        scan_started,
    } = prepare(base, options, meta).await?;
    // Folders of deleted files and of leftovers, which may now be empty.
    let mut emptied = BTreeSet::new();
    let resumable: BTreeSet<PathBuf> = plan
        .actions
        .iter()
        .filter_map(|(name, action)| match action {
            Action::Download { remote, .. } => {
                Some(names::partial_path(base, name, &remote.hashes))
            }
            _ => None,
        })
        .collect();
    // A partial download of a version no longer wanted is of no use.
    let leftovers = scan
        .stale_temp_files
        .iter()
        .chain(scan.partial_downloads.difference(&resumable));
    for path in leftovers {
        disk::remove_stale_temp_file(path);
        emptied.extend(path.parent().map(Path::to_path_buf));
    }
    // Known before anything moves, so the ETA holds from the start: each
    // download's blocks and each upload's whole file.
    options.progress.start_transfer(
        plan.actions
            .iter()
            .map(|(name, action)| match action {
                Action::Download { remote, .. } => remote.hashes.len() as u64 * block_size as u64,
                Action::Upload(entry) if !entry.is_tombstone() => {
                    scan.stamps.get(name).map_or(0, Stamp::size)
                }
                _ => 0,
            })
            .sum(),
        plan.actions
            .values()
            .filter(|a| a.change().is_some())
            .count(),
    );

    let run = Run {
        base,
        options,
        meta,
        scan: &scan,
        index: &index,
        blocks: OnceCell::new(),
        budget: Semaphore::new(blocks_in_flight(block_size)),
        buffers: BlockBuffers::new(block_size, blocks_in_flight(block_size)),
        bytes_sent: AtomicU64::new(0),
        bytes_received: AtomicU64::new(0),
        blocks_on_server: AtomicU64::new(0),
        now: SystemTime::now(),
        conflict_root: conflict_root.clone(),
    };
    let mut report = Report {
        unsettled,
        conflict_folder: match options.conflicts {
            Copies::Beside => None,
            Copies::Outside(_) => conflict_root,
        },
        ..Report::default()
    };
    // Reported once, with the other failures, by whoever shows the report.
    for (name, error) in plan.refused {
        report.failures.push((name, FileError::Refused(error)));
    }
    let mut new_index = index.clone();
    let mut dirs = BTreeSet::new();
    let mut unreachable = None;
    let mut results = stream::iter(plan.actions)
        .map(|(name, action)| {
            let run = &run;
            async move {
                let changes = action.change().is_some();
                if changes {
                    run.options.progress.file_started(&name);
                }
                let result = run.execute(&name, action).await;
                if changes {
                    run.options.progress.file_done();
                }
                (name, result)
            }
        })
        .buffer_unordered(FILE_CONCURRENCY);
    while let Some((name, result)) = results.next().await {
        match result {
            Ok(done) => {
                tracing::debug!(file = ?name, effect = ?done.effect, conflict = done.conflict, "synced");
                if let Some(change) = done.effect {
                    report.counts.add(change, done.conflict);
                    if options.verbose {
                        options
                            .progress
                            .println(&file_line(&name, change, done.conflict));
                    }
                }
                match done.effect {
                    Some(Change::DeleteHere) => emptied.extend(done.dir),
                    _ => dirs.extend(done.dir),
                }
                report.conflict_copies.extend(done.copy);
                match done.entry {
                    Some(entry) => new_index.insert(name, entry),
                    None => new_index.remove(&name),
                };
            }
            Err(FileError::Rpc(error)) if error.is_unreachable() => {
                unreachable = Some(error);
                break;
            }
            Err(error) => {
                tracing::debug!(file = ?name, %error, "not synced");
                report.failures.push((name, error));
            }
        }
    }
    // Cancel what is still in flight (its temporary files go away). A file
    // renamed into place in the meantime is unrecorded but harmless: next
    // run its content matches the server and is adopted.
    drop(results);
    dirs.extend(disk::prune_emptied_dirs(base, &emptied));
    for dir in &dirs {
        disk::sync_dir(dir)?;
    }
    index::save(base, &new_index)?;
    if options.hash_cache {
        let cache = HashCache::from_scan(&scan, block_size, scan_started, &new_index);
        if let Err(error) = cache.save(base) {
            tracing::warn!(%error, "the next run hashes every file");
        }
    }
    if let Some(error) = unreachable {
        return Err(error.into());
    }
    report.bytes_sent = run.bytes_sent.into_inner();
    report.bytes_received = run.bytes_received.into_inner();
    report.blocks_on_server = run.blocks_on_server.into_inner();
    report.elapsed = started.elapsed();
    Ok(report)
}

/// The folder below which `copies` puts the conflict copies of `base`'s
/// files, by their relative names.
fn conflict_root(base: &Path, copies: &Copies) -> Result<Option<PathBuf>, DiskError> {
    Ok(match copies {
        Copies::Beside => Some(base.to_path_buf()),
        Copies::Outside(None) => None,
        Copies::Outside(Some(conflicts)) => {
            let base = std::fs::canonicalize(base).map_err(|source| DiskError::Io {
                path: base.to_path_buf(),
                source,
            })?;
            Some(conflict::folder_for_base(conflicts, &base))
        }
    })
}

/// What every action of one run shares.
struct Run<'a> {
    base: &'a Path,
    options: &'a Options,
    meta: &'a MetaStore,
    scan: &'a Scan,
    index: &'a Index,
    /// Asked for on first need: a run that moves no block never asks.
    blocks: OnceCell<BlockStore>,
    /// One permit per block held in memory, shared by every transfer.
    budget: Semaphore,
    /// The upload's read buffers, reused from call to call.
    buffers: BlockBuffers,
    bytes_sent: AtomicU64,
    bytes_received: AtomicU64,
    blocks_on_server: AtomicU64,
    /// When the run started: the stamp of its conflict copies.
    now: SystemTime,
    /// The folder that conflict copies go below, by their relative names;
    /// `None` when there is none.
    conflict_root: Option<PathBuf>,
}

impl Run<'_> {
    async fn execute(&self, name: &str, action: Action) -> Result<Done, FileError> {
        match action {
            Action::Upload(entry) => self.upload(name, entry).await,
            Action::Download { remote, conflict } => self.download(name, remote, conflict).await,
            Action::Delete { remote, conflict } => self.delete(name, remote, conflict).await,
            Action::Adopt(remote) => Ok(Done::recorded(Some(remote))),
            Action::Forget => Ok(Done::recorded(None)),
        }
    }

    async fn blocks(&self) -> Result<&BlockStore, RpcError> {
        self.blocks
            .get_or_try_init(|| async {
                let addr = self.meta.get_block_store_addr().await?;
                BlockStore::connect(
                    &addr,
                    self.options.block_size,
                    self.meta.patience(),
                    self.meta.security(),
                )
            })
            .await
    }

    /// Waits until `blocks` more blocks may be held in memory. Permits
    /// are granted in the order asked (tokio's semaphore is fair), which
    /// keeps an ordered download from waiting on itself.
    async fn reserve_blocks(&self, blocks: usize) -> SemaphorePermit<'_> {
        // A call carries at most blocks_per_call blocks, never more than
        // the budget holds, so this never waits forever.
        let wanted = u32::try_from(blocks).unwrap_or(u32::MAX);
        self.budget
            .acquire_many(wanted)
            .await
            .expect("the block budget is never closed")
    }

    /// Sends the blocks the BlockStore lacks, then proposes the new entry.
    /// When the server has moved on (`-1`), takes the server's version.
    async fn upload(&self, name: &str, entry: Entry) -> Result<Done, FileError> {
        if !entry.is_tombstone() && !entry.hashes.is_empty() {
            self.upload_blocks(name, &entry.hashes).await?;
        }
        let version = self.meta.update_file(name, &entry).await?;
        if version != REJECTED_VERSION {
            let change = Change::of_upload(&entry);
            let entry = Entry {
                version,
                hashes: entry.hashes,
            };
            return Ok(Done::new(Some(entry), Some(change)));
        }
        tracing::debug!(file = ?name, version = entry.version, "upload rejected; taking the server's version");
        let remote = self.meta.get_file_info_map().await?.remove(name);
        let remote = remote.ok_or(FileError::Vanished(entry.version))?;
        let local = self.scan.files.get(name).map(Vec::as_slice);
        match plan::take_remote(local, self.index.get(name), &remote) {
            // take_remote never plans an upload, so this recursion ends here.
            Some(action) => Box::pin(self.execute(name, action)).await,
            None => Ok(Done::recorded(Some(remote))),
        }
    }

    /// Puts the blocks of `name` the BlockStore does not have, reading each
    /// from disk only when it is sent.
    ///
    /// The blocks are not hashed again: they are read through one handle
    /// whose stamp matched the scan's when it was opened, and the file's
    /// stamp must still match once every block is sent. A file written in
    /// between fails with [`FileError::Changed`] before its entry is
    /// proposed, so no entry names hashes its uploaded blocks disagree with.
    async fn upload_blocks(&self, name: &str, hashes: &[String]) -> Result<(), FileError> {
        let blocks = self.blocks().await?;
        let mut seen = HashSet::new();
        let unique: Vec<(usize, &String)> = hashes
            .iter()
            .enumerate()
            .filter(|(_, h)| seen.insert(*h))
            .collect();
        let mut missing = Vec::new();
        for batch in unique.chunks(HAS_BLOCKS_BATCH) {
            let asked = batch.iter().map(|(_, h)| h.to_string()).collect();
            let present: HashSet<String> = blocks.has_blocks(asked).await?.into_iter().collect();
            missing.extend(batch.iter().filter(|(_, h)| !present.contains(*h)));
        }
        let on_server = unique.len() - missing.len();
        self.blocks_on_server
            .fetch_add(on_server as u64, Ordering::Relaxed);
        tracing::debug!(file = ?name, blocks = hashes.len(), missing = missing.len(), "uploading");
        let len = self.scan.stamps.get(name).map_or(0, Stamp::size);
        let block_size = self.options.block_size as u64;
        let to_send: u64 = missing
            .iter()
            .map(|(i, _)| block_size.min(len.saturating_sub(*i as u64 * block_size)))
            .sum();
        // The whole file was counted in the total; what the BlockStore
        // already has is done at once.
        self.options
            .progress
            .transfer()
            .inc(len.saturating_sub(to_send));
        if missing.is_empty() {
            return Ok(());
        }
        let path = names::to_path(self.base, name);
        let scanned = self.scan.stamps.get(name).copied();
        let opened = path.clone();
        let file = spawn_blocking(move || {
            let file = File::open(&opened).map_err(|source| FileError::Read {
                path: opened.clone(),
                source,
            })?;
            let now = Stamp::of_open(&file).map_err(|source| FileError::Read {
                path: opened,
                source,
            })?;
            if Some(now) == scanned {
                Ok(Arc::new(file))
            } else {
                Err(FileError::Changed)
            }
        })
        .await??;
        let positions: Vec<usize> = missing.iter().map(|(position, _)| *position).collect();
        stream::iter(positions.chunks(blocks_per_call(self.options.block_size)))
            .map(|batch| self.put_blocks(blocks, &file, &path, batch))
            .buffer_unordered(calls_in_flight(self.options.block_size))
            .try_collect::<()>()
            .await?;
        spawn_blocking(move || unchanged(&path, scanned)).await?
    }

    /// Reads the blocks at `positions` of the open `file` (at `path`) and
    /// puts them in one call.
    async fn put_blocks(
        &self,
        blocks: &BlockStore,
        file: &Arc<File>,
        path: &Path,
        positions: &[usize],
    ) -> Result<(), FileError> {
        let _held = self.reserve_blocks(positions.len()).await;
        let block_size = self.options.block_size;
        let buffers: Vec<Vec<u8>> = positions.iter().map(|_| self.buffers.take()).collect();
        let (file, owned) = (Arc::clone(file), positions.to_vec());
        let data = spawn_blocking(move || {
            owned
                .into_iter()
                .zip(buffers)
                .map(|(position, mut buf)| {
                    scan::read_block_at_into(&file, position, block_size, &mut buf)?;
                    Ok(Bytes::from(buf))
                })
                .collect::<std::io::Result<Vec<_>>>()
        })
        .await?
        .map_err(|source| FileError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let len = data.iter().map(|block| block.len() as u64).sum();
        // The call drops its references once sent; these make the buffers
        // reusable afterwards.
        blocks.put_blocks(data.clone()).await?;
        self.buffers.give_back(data);
        self.bytes_sent.fetch_add(len, Ordering::Relaxed);
        self.options.progress.transfer().inc(len);
        Ok(())
    }

    /// Writes the remote file into its partial download (see
    /// [`names::partial_path`]) block by block, then puts it in place (see
    /// [`Self::replace`]). Each block comes from the cheapest place that has
    /// it (see [`sources`]); every fetched or locally read block is checked
    /// against its hash. A partial download an interrupted run left behind
    /// is resumed (see [`resume`]). The partial download stays when the
    /// run is interrupted (the servers out of reach, or the run cancelled),
    /// for the next run; any other failure removes it.
    async fn download(&self, name: &str, remote: Entry, conflict: bool) -> Result<Done, FileError> {
        if let Some(bad) = remote.hashes.iter().find(|h| !is_valid_hash(h)) {
            return Err(FileError::BadHash(bad.clone()));
        }
        let partial = names::partial_path(self.base, name, &remote.hashes);
        let result = self.download_into(name, remote, conflict, &partial).await;
        match &result {
            // The run stops here (see `sync`); the next one resumes.
            Err(FileError::Rpc(error)) if error.is_unreachable() => {}
            Err(_) => disk::remove_stale_temp_file(&partial),
            Ok(_) => {}
        }
        result
    }

    /// [`Self::download`] through the partial download at `partial`.
    async fn download_into(
        &self,
        name: &str,
        remote: Entry,
        conflict: bool,
        partial: &Path,
    ) -> Result<Done, FileError> {
        let (base, owned_name) = (self.base.to_path_buf(), name.to_string());
        let (partial, block_size) = (partial.to_path_buf(), self.options.block_size);
        let (target, mut out, kept, remote, partial) = spawn_blocking(move || {
            let target = disk::prepare_file(&base, &owned_name)?;
            let mut out = disk::open_partial(&partial, &target)?;
            let kept =
                resume(&mut out, &remote.hashes, block_size).map_err(|source| DiskError::Io {
                    path: partial.clone(),
                    source,
                })?;
            Ok::<_, DiskError>((target, out, kept, remote, partial))
        })
        .await??;
        let io_error = |source| DiskError::Io {
            path: partial.clone(),
            source,
        };
        // Offset and length of each block written so far.
        let mut written: Vec<(u64, usize)> = Vec::with_capacity(remote.hashes.len());
        written.extend((0..kept).map(|i| (i as u64 * block_size as u64, block_size)));
        let mut offset = kept as u64 * block_size as u64;
        if kept > 0 {
            tracing::debug!(file = ?name, blocks = kept, "resuming a partial download");
            self.options.progress.transfer().inc(offset);
        }
        if kept < remote.hashes.len() {
            let local = self.scan.files.get(name).map(Vec::as_slice);
            let sources = sources(&remote.hashes, local);
            let steps = steps(&sources[kept..], kept, blocks_per_call(block_size));
            let blocks = self.blocks().await?;
            let (target, hashes) = (&target, &remote.hashes);
            // Permits are taken step by step in block order, so the blocks
            // the file waits for next always hold some.
            let arriving = stream::iter(steps)
                .then(|step| async move { (self.reserve_blocks(step.len()).await, step) })
                .map(|(held, step)| async move {
                    let data = self.gather(blocks, target, hashes, step).await?;
                    Ok::<_, FileError>((held, data))
                })
                .buffered(calls_in_flight(block_size));
            let mut arriving = std::pin::pin!(arriving);
            while let Some(next) = arriving.next().await {
                let (held, data) = next?;
                // Earlier blocks are written by now: steps arrive in order.
                let data: Vec<_> = data
                    .into_iter()
                    .map(|block| block.map_err(|j| written[j]))
                    .collect();
                let (file, lens) = spawn_blocking(move || {
                    let mut lens = Vec::with_capacity(data.len());
                    for block in data {
                        let copied = block.is_err();
                        let block = match block {
                            Ok(block) => block,
                            Err((at, len)) => Bytes::from(read_at(&out, at, len)?),
                        };
                        out.write_all(&block)?;
                        lens.push((block.len(), copied));
                    }
                    Ok::<_, std::io::Error>((out, lens))
                })
                .await?
                .map_err(io_error)?;
                out = file;
                for (len, copied) in lens {
                    if copied {
                        self.options.progress.transfer().inc(len as u64);
                    }
                    written.push((offset, len));
                    offset += len as u64;
                }
                drop(held);
            }
        }
        let mut done = Done::new(Some(remote), Some(Change::Download));
        done.conflict = conflict;
        self.replace(name, done, move |_| {
            let dir = target.parent().map(Path::to_path_buf);
            disk::commit_partial(&out, &partial, &target).map(|()| dir)
        })
        .await
    }

    /// Block `position` of the local file at `path` if it still hashes to
    /// `hash`; `None` if it does not (the file changed), so the caller
    /// fetches it instead.
    async fn read_local(
        &self,
        path: &Path,
        position: usize,
        hash: &str,
    ) -> Result<Option<Bytes>, FileError> {
        let (path, hash) = (path.to_path_buf(), hash.to_string());
        let block_size = self.options.block_size;
        let data = spawn_blocking(move || {
            let file = File::open(&path).ok()?;
            let data = scan::read_block_at(&file, position, block_size).ok()?;
            (hash_block(&data) == hash).then(|| Bytes::from(data))
        })
        .await?;
        if let Some(data) = &data {
            self.options.progress.transfer().inc(data.len() as u64);
        }
        Ok(data)
    }

    async fn delete(&self, name: &str, remote: Entry, conflict: bool) -> Result<Done, FileError> {
        let mut done = Done::new(Some(remote), Some(Change::DeleteHere));
        done.conflict = conflict;
        let owned_name = name.to_string();
        self.replace(name, done, move |base| disk::remove_file(base, &owned_name))
            .await
    }

    /// Makes the change `apply` to the local file `name` (a rename into
    /// place or a deletion, returning the directory whose entries changed),
    /// but only if the file is still what the scan
    /// saw: a local edit made during the run is never overwritten, and is
    /// synced next run. A local change that loses a conflict is first saved
    /// as a conflict copy, durably, with a warning.
    async fn replace(
        &self,
        name: &str,
        mut done: Done,
        apply: impl FnOnce(&Path) -> Result<Option<PathBuf>, DiskError> + Send + 'static,
    ) -> Result<Done, FileError> {
        let base = self.base.to_path_buf();
        let owned_name = name.to_string();
        let scanned = self.scan.stamps.get(name).copied();
        let keep = done.conflict && scanned.is_some();
        let (now, root) = (self.now, self.conflict_root.clone());
        let (copy, dir) = spawn_blocking(move || {
            let path = names::to_path(&base, &owned_name);
            unchanged(&path, scanned)?;
            let copy = if keep {
                let root = root.ok_or(FileError::NowhereToSaveConflict)?;
                let copy = disk::keep_conflict_copy(&path, &root, &owned_name, now)?;
                tracing::warn!(
                    "{owned_name:?} changed here and on the server; the server's version wins, \
                     and the local version is saved as {}",
                    copy.display()
                );
                Some(copy)
            } else {
                None
            };
            let dir = apply(&base)?;
            Ok::<_, FileError>((copy, dir))
        })
        .await??;
        done.copy = copy;
        done.dir = dir;
        Ok(done)
    }

    /// The blocks of one download step: each block's bytes, or the index
    /// of the earlier block of the same file it repeats.
    async fn gather(
        &self,
        blocks: &BlockStore,
        target: &Path,
        hashes: &[String],
        step: Step,
    ) -> Result<Vec<Result<Bytes, usize>>, FileError> {
        match step {
            Step::Earlier(j) => Ok(vec![Err(j)]),
            Step::Local { block, position } => {
                let hash = &hashes[block];
                let data = match self.read_local(target, position, hash).await? {
                    Some(data) => data,
                    None => self
                        .fetch_blocks(blocks, std::slice::from_ref(hash))
                        .await?
                        .remove(0),
                };
                Ok(vec![Ok(data)])
            }
            Step::Fetch(range) => {
                let fetched = self.fetch_blocks(blocks, &hashes[range]).await?;
                Ok(fetched.into_iter().map(Ok).collect())
            }
        }
    }

    /// Fetches the blocks named `hashes` and checks that each is what its
    /// name says.
    async fn fetch_blocks(
        &self,
        blocks: &BlockStore,
        hashes: &[String],
    ) -> Result<Vec<Bytes>, FileError> {
        let data = blocks.get_blocks(hashes).await?;
        let len: u64 = data.iter().map(|block| block.len() as u64).sum();
        self.bytes_received.fetch_add(len, Ordering::Relaxed);
        let transfer = self.options.progress.transfer();
        transfer.inc(len);
        // The bar assumed blocks of our own size; the uploader's may differ.
        let planned = (self.options.block_size * hashes.len()) as u64;
        if len < planned {
            transfer.dec_length(planned - len);
        } else {
            transfer.inc_length(len - planned);
        }
        let (checked, expected) = (data.clone(), hashes.to_vec());
        spawn_blocking(move || {
            for (block, hash) in checked.iter().zip(expected) {
                let actual = hash_block(block);
                if actual != hash {
                    return Err(FileError::CorruptBlock {
                        expected: hash,
                        actual,
                    });
                }
            }
            Ok(())
        })
        .await??;
        Ok(data)
    }
}

/// Succeeds if the file at `path` is still what the scan saw (`scanned`,
/// `None` for no file); blocks.
fn unchanged(path: &Path, scanned: Option<Stamp>) -> Result<(), FileError> {
    let current = Stamp::read(path).map_err(|source| FileError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    if current == scanned {
        Ok(())
    } else {
        Err(FileError::Changed)
    }
}

/// Where the bytes of one block of a download come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    /// The BlockStore.
    Fetch,
    /// This block of the local file being replaced has the same hash.
    Local(usize),
    /// This earlier block of the same download has the same hash.
    Earlier(usize),
}

/// Where each block of a download comes from: a block seen earlier in the
/// same file is copied from what was already written (sparse files, disk
/// images), a block the local file already holds is read from it (a file
/// changed in a few places), anything else is fetched.
fn sources(remote: &[String], local: Option<&[String]>) -> Vec<Source> {
    let mut local_at: HashMap<&str, usize> = HashMap::new();
    for (position, hash) in local.unwrap_or_default().iter().enumerate() {
        local_at.entry(hash).or_insert(position);
    }
    let mut first_at: HashMap<&str, usize> = HashMap::new();
    remote
        .iter()
        .enumerate()
        .map(|(i, hash)| match first_at.entry(hash) {
            Slot::Occupied(first) => Source::Earlier(*first.get()),
            Slot::Vacant(slot) => {
                slot.insert(i);
                local_at
                    .get(hash.as_str())
                    .map_or(Source::Fetch, |&p| Source::Local(p))
            }
        })
        .collect()
}

/// One unit of a download's work, covering one or more consecutive blocks.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Step {
    /// These blocks, fetched in one call.
    Fetch(std::ops::Range<usize>),
    /// Block `block` read from `position` of the local file.
    Local { block: usize, position: usize },
    /// A copy of earlier block `j` of the same download.
    Earlier(usize),
}

impl Step {
    /// How many blocks the step covers.
    fn len(&self) -> usize {
        match self {
            Step::Fetch(range) => range.len(),
            Step::Local { .. } | Step::Earlier(_) => 1,
        }
    }
}

/// Groups the [`sources`] of a download's blocks from `first` on into
/// steps, in block order: runs of consecutive fetched blocks go in calls of
/// at most `per_call` blocks.
fn steps(sources: &[Source], first: usize, per_call: usize) -> Vec<Step> {
    let mut steps = Vec::new();
    for (block, source) in (first..).zip(sources) {
        match (*source, steps.last_mut()) {
            (Source::Fetch, Some(Step::Fetch(range))) if range.len() < per_call => {
                range.end = block + 1;
            }
            (Source::Fetch, _) => steps.push(Step::Fetch(block..block + 1)),
            (Source::Local(position), _) => steps.push(Step::Local { block, position }),
            (Source::Earlier(j), _) => steps.push(Step::Earlier(j)),
        }
    }
    steps
}

/// Keeps what an interrupted run already wrote to the partial download
/// `file` of the blocks `hashes`: its leading blocks of `block_size` bytes
/// that hash as listed (a download writes blocks in order, so an
/// interruption leaves whole blocks, perhaps followed by a torn one). Cuts
/// the file after them and leaves it positioned there, for the rest.
/// Returns how many blocks were kept. A file uploaded in blocks of another
/// size keeps none, and is downloaded whole.
fn resume(file: &mut File, hashes: &[String], block_size: usize) -> std::io::Result<usize> {
    let len = file.metadata()?.len();
    let (mut kept, mut kept_len) = (0, 0);
    let mut buf = Vec::new();
    while kept < hashes.len() && kept_len < len {
        scan::read_block_at_into(file, kept, block_size, &mut buf)?;
        // Only the last block of a file may be short.
        let whole = buf.len() == block_size || kept + 1 == hashes.len();
        if !whole || hash_block(&buf) != hashes[kept] {
            break;
        }
        kept += 1;
        kept_len += buf.len() as u64;
    }
    file.set_len(kept_len)?;
    file.seek(SeekFrom::Start(kept_len))?;
    Ok(kept)
}

/// Reads `len` bytes at `offset` of `file`.
fn read_at(file: &File, offset: u64, len: usize) -> std::io::Result<Vec<u8>> {
    let mut reader = file;
    reader.seek(SeekFrom::Start(offset))?;
    let mut buf = vec![0; len];
    reader.read_exact(&mut buf)?;
    // Writing goes on at the end.
    reader.seek(SeekFrom::End(0))?;
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeated_and_local_blocks_are_not_fetched() {
        let h = |s: &str| hash_block(s.as_bytes());
        let (a, b, c, z) = (h("a"), h("b"), h("c"), h("zero"));
        let remote = vec![
            z.clone(),
            a.clone(),
            z.clone(),
            b.clone(),
            z.clone(),
            c.clone(),
            a.clone(),
        ];
        let local = vec![c.clone(), b.clone(), b.clone()];
        assert_eq!(
            sources(&remote, Some(&local)),
            [
                Source::Fetch,
                Source::Fetch,
                Source::Earlier(0),
                Source::Local(1),
                Source::Earlier(0),
                Source::Local(0),
                Source::Earlier(1),
            ]
        );
        assert_eq!(sources(std::slice::from_ref(&a), None), [Source::Fetch]);
    }

    #[test]
    fn a_file_written_since_its_stamp_is_changed() {
        let base = tempfile::tempdir().unwrap();
        let path = base.path().join("f");
        std::fs::write(&path, b"scanned").unwrap();
        let scanned = Stamp::read(&path).unwrap();
        unchanged(&path, scanned).unwrap();
        std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap()
            .write_all(b" and edited")
            .unwrap();
        assert!(matches!(unchanged(&path, scanned), Err(FileError::Changed)));
        std::fs::remove_file(&path).unwrap();
        assert!(matches!(unchanged(&path, scanned), Err(FileError::Changed)));
        unchanged(&path, None).unwrap();
    }

    /// A partial download holding `data`, checked against the blocks of
    /// `file` at block size 4: how many blocks are kept, and what the
    /// partial download holds afterwards.
    fn resumed(data: &[u8], file: &[u8]) -> (usize, Vec<u8>) {
        let hashes: Vec<String> = file.chunks(4).map(hash_block).collect();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("partial");
        std::fs::write(&path, data).unwrap();
        let mut partial = disk::open_partial(&path, &dir.path().join("target")).unwrap();
        let kept = resume(&mut partial, &hashes, 4).unwrap();
        // Writing goes on where the kept blocks end.
        partial.write_all(b"|").unwrap();
        let mut after = std::fs::read(&path).unwrap();
        assert_eq!(after.pop(), Some(b'|'));
        (kept, after)
    }

    #[test]
    fn a_resumed_download_keeps_only_its_verified_leading_blocks() {
        let file = b"abcdefghij";
        // Nothing yet, two whole blocks, a torn third.
        assert_eq!(resumed(b"", file), (0, b"".to_vec()));
        assert_eq!(resumed(b"abcdefgh", file), (2, b"abcdefgh".to_vec()));
        assert_eq!(resumed(b"abcdefghi", file), (2, b"abcdefgh".to_vec()));
        // Complete, short last block included; junk after it makes the
        // last block not match.
        assert_eq!(resumed(b"abcdefghij", file), (3, file.to_vec()));
        assert_eq!(resumed(b"abcdefghijXY", file), (2, b"abcdefgh".to_vec()));
        // A block that does not match ends what is kept, even if later
        // ones would.
        assert_eq!(resumed(b"abcdXXghij", file), (1, b"abcd".to_vec()));
        assert_eq!(resumed(b"Xbcdefghij", file), (0, b"".to_vec()));
        // A short block is only whole at the end of the file.
        assert_eq!(resumed(b"ab", b"ab"), (1, b"ab".to_vec()));
        assert_eq!(resumed(b"ab", b"abcd"), (0, b"".to_vec()));
        // Nothing to download, nothing kept.
        assert_eq!(resumed(b"stale", b""), (0, b"".to_vec()));
    }

    #[test]
    fn the_budget_is_16_mib_of_blocks_in_calls_of_about_1_mib() {
        assert_eq!(blocks_in_flight(4 << 20), 4);
        assert_eq!(blocks_in_flight(4 << 10), 4096);
        assert_eq!(blocks_in_flight(128 << 20), 1);
        assert_eq!(blocks_in_flight(0), BLOCK_BUDGET_BYTES);
        assert_eq!(blocks_per_call(4 << 10), 256);
        assert_eq!(blocks_per_call(4 << 20), 1);
        assert_eq!(blocks_per_call(3 << 20), 1);
        assert_eq!(calls_in_flight(4 << 20), 4);
        assert_eq!(calls_in_flight(4 << 10), MAX_CALLS_IN_FLIGHT);
        assert_eq!(calls_in_flight(8 << 20), 2);
        assert_eq!(calls_in_flight(128 << 20), 1);
    }

    #[test]
    fn consecutive_fetches_share_calls_and_the_rest_keep_their_place() {
        use Source::{Earlier, Fetch, Local};
        let sources = [
            Fetch,
            Fetch,
            Fetch,
            Local(7),
            Fetch,
            Earlier(0),
            Fetch,
            Fetch,
        ];
        assert_eq!(
            steps(&sources, 0, 2),
            [
                Step::Fetch(0..2),
                Step::Fetch(2..3),
                Step::Local {
                    block: 3,
                    position: 7
                },
                Step::Fetch(4..5),
                Step::Earlier(0),
                Step::Fetch(6..8),
            ]
        );
        let lens: usize = steps(&sources, 0, 2).iter().map(Step::len).sum();
        assert_eq!(lens, sources.len());
        assert_eq!(steps(&[], 0, 4), []);
        // The blocks of a resumed download keep their numbers.
        assert_eq!(
            steps(&sources[5..], 5, 2),
            [Step::Earlier(0), Step::Fetch(6..8)]
        );
    }
}
