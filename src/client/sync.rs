//! One sync run (SPEC §8): scan the base directory while fetching the remote
//! map, [`plan`](super::plan) what to do, carry it out with bounded
//! concurrency, and write `index.txt` with the versions now held.
//!
//! Nothing local changes before the remote map is in hand, so a run that
//! cannot reach the servers leaves the base directory and its index as they
//! were. A file that fails (a corrupt block, something in the way on disk)
//! keeps its old index entry and is retried next run; the other files still
//! sync. If the servers become unreachable midway, the run stops, records
//! what it finished and reports the error.
//!
//! Memory stays bounded: at most [`FILE_CONCURRENCY`] files move at once, each
//! with at most [`BLOCK_CONCURRENCY`] blocks in flight.

use std::collections::{BTreeSet, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt, stream};
use tokio::io::AsyncWriteExt;
use tokio::sync::OnceCell;
use tokio::task::{JoinError, spawn_blocking};

use super::disk::{self, DiskError};
use super::index::{self, Entry, Index, IndexError};
use super::names::{self, NameError};
use super::plan::{self, Action};
use super::rpc::{BlockStore, MetaStore, RpcError};
use super::scan::{self, Scan, ScanError};
use crate::hash::{hash_block, is_valid_hash};
use crate::meta_store::REJECTED_VERSION;

/// How many files are uploaded or downloaded at once.
pub const FILE_CONCURRENCY: usize = 4;

/// How many blocks of one file are in flight at once.
pub const BLOCK_CONCURRENCY: usize = 8;

/// How many hashes one `HasBlocks` call asks about.
const HAS_BLOCKS_BATCH: usize = 4096;

/// What a run did.
#[derive(Debug, Default)]
pub struct Report {
    /// Files whose new content or deletion was sent to the server.
    pub uploaded: usize,
    /// Files written from the server's copy.
    pub downloaded: usize,
    /// Local files deleted because the server holds a tombstone.
    pub deleted: usize,
    /// Local changes overwritten because the server had a newer version.
    pub conflicts: usize,
    /// Files that could not be synced this time.
    pub failures: Vec<(String, FileError)>,
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "synced: {} uploaded, {} downloaded, {} deleted, {} conflicts",
            self.uploaded, self.downloaded, self.deleted, self.conflicts
        )?;
        if !self.failures.is_empty() {
            write!(f, ", {} failed", self.failures.len())?;
        }
        Ok(())
    }
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
    /// The file changed between hashing and uploading.
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

/// What carrying out one action did to the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Effect {
    Uploaded,
    Downloaded,
    Deleted,
    /// Only the index changes.
    Recorded,
}

/// The outcome of one action.
struct Done {
    /// The file's new index entry, or `None` to drop it.
    entry: Option<Entry>,
    effect: Effect,
    conflict: bool,
    /// A directory whose entries changed and must be synced to disk before
    /// the index records the change.
    dir: Option<PathBuf>,
}

impl Done {
    fn recorded(entry: Option<Entry>) -> Self {
        Self {
            entry,
            effect: Effect::Recorded,
            conflict: false,
            dir: None,
        }
    }
}

/// Syncs the base directory `base` with the servers behind `meta`, hashing
/// files in blocks of `block_size` bytes.
pub async fn sync(base: &Path, block_size: usize, meta: &MetaStore) -> Result<Report, SyncError> {
    let index = index::load(base)?;
    let scan_base = base.to_path_buf();
    let scanning = async {
        Ok::<_, SyncError>(spawn_blocking(move || scan::scan(&scan_base, block_size)).await??)
    };
    let fetching = async { Ok::<_, SyncError>(meta.get_file_info_map().await?) };
    let (scan, remote) = tokio::try_join!(scanning, fetching)?;
    let plan = plan::plan(&scan, &index, &remote);
    tracing::debug!(
        actions = plan.actions.len(),
        refused = plan.refused.len(),
        "planned"
    );

    let run = Run {
        base,
        block_size,
        meta,
        scan: &scan,
        index: &index,
        blocks: OnceCell::new(),
    };
    let mut report = Report::default();
    for (name, error) in plan.refused {
        tracing::warn!(file = ?name, %error, "refusing the server's file name");
        report.failures.push((name, FileError::Refused(error)));
    }
    let mut new_index = index.clone();
    let mut dirs = BTreeSet::new();
    let mut unreachable = None;
    let mut results = stream::iter(plan.actions)
        .map(|(name, action)| {
            let run = &run;
            async move {
                let result = run.execute(&name, action).await;
                (name, result)
            }
        })
        .buffer_unordered(FILE_CONCURRENCY);
    while let Some((name, result)) = results.next().await {
        match result {
            Ok(done) => {
                match done.effect {
                    Effect::Uploaded => report.uploaded += 1,
                    Effect::Downloaded => report.downloaded += 1,
                    Effect::Deleted => report.deleted += 1,
                    Effect::Recorded => {}
                }
                report.conflicts += usize::from(done.conflict);
                tracing::debug!(file = ?name, effect = ?done.effect, conflict = done.conflict, "synced");
                dirs.extend(done.dir);
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
                tracing::warn!(file = ?name, %error, "not synced");
                report.failures.push((name, error));
            }
        }
    }
    // Cancel what is still in flight (its temporary files go away). A file
    // renamed into place in the meantime is unrecorded but harmless: next
    // run its content matches the server and is adopted.
    drop(results);
    for dir in &dirs {
        disk::sync_dir(dir)?;
    }
    index::save(base, &new_index)?;
    match unreachable {
        Some(error) => Err(error.into()),
        None => Ok(report),
    }
}

/// What every action of one run shares.
struct Run<'a> {
    base: &'a Path,
    block_size: usize,
    meta: &'a MetaStore,
    scan: &'a Scan,
    index: &'a Index,
    /// Asked for on first need: a run that moves no block never asks.
    blocks: OnceCell<BlockStore>,
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
                BlockStore::connect(&self.meta.get_block_store_addr().await?)
            })
            .await
    }

    /// Sends the blocks the BlockStore lacks, then proposes the new entry.
    /// When the server has moved on (`-1`), takes the server's version.
    async fn upload(&self, name: &str, entry: Entry) -> Result<Done, FileError> {
        if !entry.is_tombstone() && !entry.hashes.is_empty() {
            self.upload_blocks(name, &entry.hashes).await?;
        }
        let version = self.meta.update_file(name, &entry).await?;
        if version != REJECTED_VERSION {
            return Ok(Done {
                entry: Some(Entry {
                    version,
                    hashes: entry.hashes,
                }),
                effect: Effect::Uploaded,
                conflict: false,
                dir: None,
            });
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
        tracing::debug!(file = ?name, blocks = hashes.len(), missing = missing.len(), "uploading");
        let path = names::to_path(self.base, name);
        stream::iter(missing)
            .map(|(position, hash)| self.put_block(blocks, &path, position, hash))
            .buffer_unordered(BLOCK_CONCURRENCY)
            .try_collect()
            .await
    }

    async fn put_block(
        &self,
        blocks: &BlockStore,
        path: &Path,
        position: usize,
        hash: &str,
    ) -> Result<(), FileError> {
        let block_size = self.block_size;
        let owned_path = path.to_path_buf();
        let (data, actual) = spawn_blocking(move || {
            let data = scan::read_block_at(&owned_path, position, block_size)?;
            let actual = hash_block(&data);
            Ok::<_, std::io::Error>((data, actual))
        })
        .await?
        .map_err(|source| FileError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        if actual != hash {
            return Err(FileError::Changed);
        }
        blocks.put_block(Bytes::from(data)).await?;
        Ok(())
    }

    /// Writes the remote file into a temporary file block by block, checking
    /// each block's hash, then renames it into place.
    async fn download(&self, name: &str, remote: Entry, conflict: bool) -> Result<Done, FileError> {
        if let Some(bad) = remote.hashes.iter().find(|h| !is_valid_hash(h)) {
            return Err(FileError::BadHash(bad.clone()));
        }
        let (base, owned_name) = (self.base.to_path_buf(), name.to_string());
        let (target, tmp) = spawn_blocking(move || {
            let target = disk::prepare_file(&base, &owned_name)?;
            let tmp = disk::temp_beside(&target)?;
            Ok::<_, DiskError>((target, tmp))
        })
        .await??;
        let tmp_path = tmp.path().to_path_buf();
        let write_error = |source| DiskError::Io {
            path: tmp_path.clone(),
            source,
        };
        if !remote.hashes.is_empty() {
            let blocks = self.blocks().await?;
            let handle = tmp.as_file().try_clone().map_err(write_error)?;
            let mut out = tokio::fs::File::from_std(handle);
            let mut fetched = stream::iter(&remote.hashes)
                .map(|hash| fetch_block(blocks, hash))
                .buffered(BLOCK_CONCURRENCY);
            while let Some(data) = fetched.next().await {
                out.write_all(&data?).await.map_err(write_error)?;
            }
            out.flush().await.map_err(write_error)?;
        }
        let dir = target.parent().map(Path::to_path_buf);
        spawn_blocking(move || disk::commit(tmp, &target)).await??;
        Ok(Done {
            entry: Some(remote),
            effect: Effect::Downloaded,
            conflict,
            dir,
        })
    }

    async fn delete(&self, name: &str, remote: Entry, conflict: bool) -> Result<Done, FileError> {
        let (base, owned_name) = (self.base.to_path_buf(), name.to_string());
        let dir = spawn_blocking(move || disk::remove_file(&base, &owned_name)).await??;
        Ok(Done {
            entry: Some(remote),
            effect: Effect::Deleted,
            conflict,
            dir,
        })
    }
}

/// Fetches one block and checks that it is what its name says.
async fn fetch_block(blocks: &BlockStore, hash: &str) -> Result<Bytes, FileError> {
    let data = blocks.get_block(hash).await?;
    let checked = data.clone();
    let actual = spawn_blocking(move || hash_block(&checked)).await?;
    if actual == hash {
        Ok(data)
    } else {
        Err(FileError::CorruptBlock {
            expected: hash.to_string(),
            actual,
        })
    }
}
