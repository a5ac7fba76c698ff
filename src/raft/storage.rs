//! What a Raft server must not forget: its [`HardState`] (term, vote, commit
//! index) and its log, behind the [`RaftStorage`] trait.
//!
//! The node hands [`RaftStorage::save`] what each [`super::Ready`] says to
//! persist before it sends any reply or message that depends on it, and
//! calls [`RaftStorage::load`] once at start. [`MemoryStorage`] keeps nothing (the original, in-memory
//! behaviour); [`FileStorage`] keeps everything in one [`Wal`] under
//! `--data-dir`.
//!
//! # On-disk format and why
//!
//! Every `save` that changes anything appends exactly **one** WAL record
//! holding "cut the log to `k` entries, then append these, then the hard
//! state is this" (each part optional), followed by one fdatasync unless
//! only the commit index moved. Replay folds the records in order. An
//! unsynced record survives a SIGKILL (the page cache holds it), which is
//! what SPEC §7 promises; a power loss may take it, and with it only the
//! commit index, which the leader teaches again.
//!
//! * **Atomic.** A record is all-or-nothing after a crash, so a save that
//!   both drops a conflicting suffix and adopts a new term can never be half
//!   done. Cutting the file physically (ftruncate, then append) could not
//!   promise that: a crash between the two would leave the log cut but the
//!   later hard-state records gone with it, silently reverting the term.
//! * **One fsync per save.** A hard state in its own file, replaced
//!   atomically (write temp, fsync, rename, fsync directory), costs two more
//!   fsyncs whenever it changes, and the commit index changes with nearly
//!   every update. Measured on the development machine (ext4 on a virtio
//!   disk; `cargo test --release --lib raft::storage -- --ignored
//!   --nocapture`): a hard-state save in the log takes 0.08–0.10 ms, an
//!   entry-record append plus an atomic replace of a hard-state file
//!   0.5–0.8 ms, five to nine times the cost on the path every UpdateFile
//!   waits for.
//! * **Cost.** Dropped entries stay in the file as dead bytes. Conflicting
//!   suffixes are rare and small (only uncommitted entries are ever
//!   overwritten); the file shrinks at each snapshot.
//!
//! # Snapshots (SPEC §9.2)
//!
//! A snapshot is kept in `DIR/raft.snapshot` (one checksummed record), and
//! the log before it is dropped from the WAL: [`RaftStorage::save_snapshot`]
//! writes the snapshot to a temporary file, fsyncs it, renames it into
//! place and fsyncs the directory; then it replaces the WAL the same way by
//! one holding a single record, "the log starts after the snapshot, with
//! these entries, and this hard state". A crash between the two leaves the
//! new snapshot with the old WAL, which still holds everything: loading
//! drops the WAL's entries the snapshot covers (all of them when its entry
//! at the snapshot's last index has another term, as installing it did),
//! so every crash point loads a state the server had.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use prost::Message;

use super::{Entry, HardState, LogIndex, Snapshot, SnapshotWrite, Term};
use crate::proto::UpdateOperation;
pub use crate::storage::StorageError;
use crate::storage::{Wal, create_dir_durable};

/// Durable home of a Raft server's hard state and log.
pub trait RaftStorage: Send {
    /// The state saved so far: what a server starts from. Empty storage
    /// yields `HardState::default()` and an empty log.
    fn load(&mut self) -> Result<(HardState, Vec<Entry>), StorageError>;

    /// Writes what a [`super::Ready`] asks for, in one piece: when `from`
    /// is set, the stored log becomes its first `from` entries followed by
    /// `entries`; then the hard state becomes `hard`, when set. With
    /// `must_sync` it is durable before this returns; without, it is written
    /// but may be lost in a crash until a later synced save. `from` is never
    /// past the end of the stored log (the core promises it; a `from` that
    /// is, is refused). A call with nothing to write does no I/O.
    fn save(
        &mut self,
        hard: Option<HardState>,
        from: Option<LogIndex>,
        entries: &[Entry],
        must_sync: bool,
    ) -> Result<(), StorageError>;

    /// The snapshot saved last, if any: the log [`RaftStorage::load`]
    /// returns starts right after it.
    fn load_snapshot(&mut self) -> Result<Option<Arc<Snapshot>>, StorageError> {
        Ok(None)
    }

    /// Makes `write` durable before returning: the snapshot, then the log
    /// after it and the hard state in place of everything stored before.
    /// Storage that keeps nothing ignores it.
    fn save_snapshot(&mut self, _write: &SnapshotWrite) -> Result<(), StorageError> {
        Ok(())
    }

    /// Whether `save` may block on a disk, so the node runs it on a
    /// blocking thread; storage that keeps nothing is called in place,
    /// sparing every step a thread hand-off.
    fn blocks(&self) -> bool {
        true
    }
}

/// Keeps nothing: a server without `--data-dir` starts empty every time.
#[derive(Debug, Default, Clone, Copy)]
pub struct MemoryStorage;

impl RaftStorage for MemoryStorage {
    fn load(&mut self) -> Result<(HardState, Vec<Entry>), StorageError> {
        Ok((HardState::default(), Vec::new()))
    }

    fn save(
        &mut self,
        _hard: Option<HardState>,
        _from: Option<LogIndex>,
        _entries: &[Entry],
        _must_sync: bool,
    ) -> Result<(), StorageError> {
        Ok(())
    }

    fn blocks(&self) -> bool {
        false
    }
}

/// The name of the log file [`FileStorage`] keeps in its directory.
pub const LOG_FILE: &str = "raft.wal";

/// The name of the snapshot file [`FileStorage`] keeps in its directory.
pub const SNAPSHOT_FILE: &str = "raft.snapshot";

/// What a [`FileStorage`] holds: hard state, snapshot, and the log after it.
type Stored = (HardState, Option<Arc<Snapshot>>, Vec<Entry>);

/// Hard state and log in one write-ahead log file, `DIR/raft.wal` (see the
/// module documentation for the format).
#[derive(Debug)]
pub struct FileStorage {
    wal: Wal,
    snapshot_path: PathBuf,
    /// The position of the first stored entry (the snapshot's length).
    stored_start: usize,
    /// The position after the last stored entry.
    stored_end: usize,
    /// What was replayed at open, handed out by the first `load` (and
    /// `load_snapshot`) unless a write came first.
    loaded: Option<(HardState, Vec<Entry>)>,
    loaded_snapshot: Option<Arc<Snapshot>>,
}

impl FileStorage {
    /// Opens (creating if needed) the storage in `dir`, replaying its log.
    /// An interrupted last save is dropped; damage anywhere else is an error.
    pub fn open(dir: &Path) -> Result<FileStorage, StorageError> {
        create_dir_durable(dir)?;
        let path = dir.join(LOG_FILE);
        let snapshot_path = dir.join(SNAPSHOT_FILE);
        let snapshot = read_snapshot(&snapshot_path)?;
        let mut replayed = Replayed::default();
        let wal = Wal::open(&path, |offset, payload| {
            replay(&path, offset, payload, &mut replayed)
        })?;
        let (hard, snapshot, log) = replayed.after(&path, snapshot)?;
        let stored_start = snapshot
            .as_ref()
            .map_or(0, |s| position_after(s.last_index));
        tracing::info!(
            path = %path.display(),
            term = hard.term,
            commit = hard.commit,
            snapshot = snapshot.as_ref().map_or(-1, |s| s.last_index),
            entries = log.len(),
            "loaded Raft state"
        );
        Ok(FileStorage {
            wal,
            snapshot_path,
            stored_start,
            stored_end: stored_start + log.len(),
            loaded: Some((hard, log)),
            loaded_snapshot: snapshot,
        })
    }

    /// Reads what is on disk now.
    fn read(&self) -> Result<Stored, StorageError> {
        let path = self.wal.path().to_path_buf();
        let snapshot = read_snapshot(&self.snapshot_path)?;
        let mut replayed = Replayed::default();
        Wal::read(&path, |offset, payload| {
            replay(&path, offset, payload, &mut replayed)
        })?;
        replayed.after(&path, snapshot)
    }
}

/// The position right after `index`.
fn position_after(index: LogIndex) -> usize {
    usize::try_from(index.saturating_add(1)).unwrap_or(0)
}

/// The snapshot stored at `path`, if there is one.
fn read_snapshot(path: &Path) -> Result<Option<Arc<Snapshot>>, StorageError> {
    if !path.exists() {
        return Ok(None);
    }
    let mut stored = None;
    Wal::read(path, |offset, payload| {
        let record = SnapshotRecord::decode(payload).map_err(|e| StorageError::Corrupt {
            path: path.to_path_buf(),
            offset,
            reason: format!("undecodable snapshot: {e}"),
        })?;
        stored = Some(Arc::new(Snapshot {
            last_index: record.last_index,
            last_term: record.last_term,
            data: record.data,
        }));
        Ok(())
    })?;
    // Only ever renamed into place whole and synced: an empty or torn file
    // is damage, not an interrupted write.
    stored.map(Some).ok_or_else(|| StorageError::Corrupt {
        path: path.to_path_buf(),
        offset: 0,
        reason: "no intact snapshot record".into(),
    })
}

impl RaftStorage for FileStorage {
    fn load(&mut self) -> Result<(HardState, Vec<Entry>), StorageError> {
        if let Some(state) = self.loaded.take() {
            return Ok(state);
        }
        let (hard, _, log) = self.read()?;
        Ok((hard, log))
    }

    fn load_snapshot(&mut self) -> Result<Option<Arc<Snapshot>>, StorageError> {
        if let Some(snapshot) = self.loaded_snapshot.take() {
            return Ok(Some(snapshot));
        }
        Ok(self.read()?.1)
    }

    fn save_snapshot(&mut self, write: &SnapshotWrite) -> Result<(), StorageError> {
        let snapshot = &write.snapshot;
        let record = SnapshotRecord {
            last_index: snapshot.last_index,
            last_term: snapshot.last_term,
            data: snapshot.data.clone(),
        };
        Wal::replace(&self.snapshot_path, &[&record.encode_to_vec()])?;
        let start = position_after(snapshot.last_index);
        let log = SaveRecord {
            log_from: Some(start as u64),
            entries: write
                .log
                .iter()
                .cloned()
                .map(UpdateOperation::from)
                .collect(),
            hard: Some(HardRecord::from(&write.hard)),
            log_start: Some(start as u64),
        };
        self.wal = Wal::replace(self.wal.path(), &[&log.encode_to_vec()])?;
        self.loaded = None;
        self.loaded_snapshot = None;
        self.stored_start = start;
        self.stored_end = start + write.log.len();
        Ok(())
    }

    fn save(
        &mut self,
        hard: Option<HardState>,
        from: Option<LogIndex>,
        entries: &[Entry],
        must_sync: bool,
    ) -> Result<(), StorageError> {
        if hard.is_none() && from.is_none() {
            return Ok(());
        }
        let log_from = from
            .map(|from| {
                usize::try_from(from)
                    .ok()
                    .filter(|&from| (self.stored_start..=self.stored_end).contains(&from))
                    .ok_or_else(|| StorageError::Io {
                        op: "write outside the stored log in",
                        path: self.wal.path().to_path_buf(),
                        source: std::io::Error::new(
                            std::io::ErrorKind::InvalidInput,
                            format!(
                                "from {from}, entries {}..{} stored",
                                self.stored_start, self.stored_end
                            ),
                        ),
                    })
            })
            .transpose()?;
        let record = SaveRecord {
            log_from: log_from.map(|from| from as u64),
            // Entries belong at `from`; without one there is nowhere to put them.
            entries: log_from
                .map(|_| entries.iter().cloned().map(UpdateOperation::from).collect())
                .unwrap_or_default(),
            hard: hard.as_ref().map(HardRecord::from),
            log_start: None,
        };
        self.loaded = None;
        self.loaded_snapshot = None;
        self.wal.append(&record.encode_to_vec())?;
        if must_sync {
            self.wal.sync()?;
        }
        if let Some(from) = log_from {
            self.stored_end = from + entries.len();
        }
        Ok(())
    }
}

/// One save: cut the log to `log_from` entries and append `entries` (when
/// `log_from` is set), then adopt `hard` (when set). The first record of a
/// WAL rewritten at a snapshot also says where its log starts
/// (`log_start`, the snapshot's length); the log before is not stored.
#[derive(Clone, PartialEq, prost::Message)]
struct SaveRecord {
    #[prost(uint64, optional, tag = "1")]
    log_from: Option<u64>,
    #[prost(message, repeated, tag = "2")]
    entries: Vec<UpdateOperation>,
    #[prost(message, optional, tag = "3")]
    hard: Option<HardRecord>,
    #[prost(uint64, optional, tag = "4")]
    log_start: Option<u64>,
}

/// A [`Snapshot`] as stored.
#[derive(Clone, PartialEq, prost::Message)]
struct SnapshotRecord {
    #[prost(int64, tag = "1")]
    last_index: i64,
    #[prost(int64, tag = "2")]
    last_term: i64,
    #[prost(bytes = "bytes", tag = "3")]
    data: bytes::Bytes,
}

/// What replaying a WAL gives: the hard state and the log from position
/// `start`.
#[derive(Debug, Default)]
struct Replayed {
    hard: HardState,
    start: usize,
    log: Vec<Entry>,
}

impl Replayed {
    /// The stored state once `snapshot` (the one on disk) is taken into
    /// account: the log after it, and a commit index at least its last
    /// index. The WAL may predate the snapshot (a crash between writing it
    /// and rewriting the WAL): its entries the snapshot covers are dropped,
    /// and all of them when its entry at the snapshot's last index has
    /// another term (the snapshot came from a leader that overwrote them).
    fn after(self, path: &Path, snapshot: Option<Arc<Snapshot>>) -> Result<Stored, StorageError> {
        let Replayed { hard, start, log } = self;
        let Some(snapshot) = snapshot else {
            if start > 0 {
                return Err(StorageError::Corrupt {
                    path: path.to_path_buf(),
                    offset: 0,
                    reason: format!("the log starts at index {start} but there is no snapshot"),
                });
            }
            return Ok((hard, None, log));
        };
        let end = position_after(snapshot.last_index);
        if start > end {
            return Err(StorageError::Corrupt {
                path: path.to_path_buf(),
                offset: 0,
                reason: format!(
                    "the log starts at index {start}, after the snapshot's end {}",
                    snapshot.last_index
                ),
            });
        }
        let log = log_after_snapshot(start, log, &snapshot);
        Ok((hard_after_snapshot(hard, &snapshot), Some(snapshot), log))
    }
}

/// [`HardState`] as stored.
#[derive(Clone, PartialEq, prost::Message)]
struct HardRecord {
    #[prost(int64, tag = "1")]
    term: i64,
    #[prost(uint64, optional, tag = "2")]
    voted_for: Option<u64>,
    #[prost(int64, tag = "3")]
    commit: i64,
}

impl From<&HardState> for HardRecord {
    fn from(hard: &HardState) -> Self {
        HardRecord {
            term: hard.term,
            voted_for: hard.voted_for.map(|id| id as u64),
            commit: hard.commit,
        }
    }
}

/// What remains of `log`, a log whose first entry is at position `start`
/// (at or before the snapshot's end), once `snapshot` replaces what it
/// covers: the entries after the snapshot's last index when `log` holds that
/// very entry (same term; log matching makes the rest agree), none
/// otherwise (the log was behind it, or a leader overwrote it). The rule a
/// follower's core applies when it installs a snapshot, here for a log
/// written before the snapshot was.
pub fn log_after_snapshot(start: usize, log: Vec<Entry>, snapshot: &Snapshot) -> Vec<Entry> {
    let end = position_after(snapshot.last_index);
    let term_at_end: Option<Term> = match end.checked_sub(start + 1) {
        Some(at) => log.get(at).map(|e| e.term),
        None => Some(snapshot.last_term),
    };
    if term_at_end == Some(snapshot.last_term) {
        log.into_iter().skip(end.saturating_sub(start)).collect()
    } else {
        Vec::new()
    }
}

/// `hard`, a hard state written before `snapshot` was, brought up to it: a
/// commit index covering the snapshot, and a term no lower than its last
/// entry's, with no vote in it when that raises the term. Installing a
/// leader's snapshot adopted that term in the very write a crash cut; a
/// server whose term stayed below an entry it holds would send requests
/// whose lastLogTerm is above their term, which every peer refuses.
pub fn hard_after_snapshot(mut hard: HardState, snapshot: &Snapshot) -> HardState {
    hard.commit = hard.commit.max(snapshot.last_index);
    if hard.term < snapshot.last_term {
        hard.term = snapshot.last_term;
        hard.voted_for = None;
    }
    hard
}

/// Folds one stored record into the replayed state, checking that it fits.
fn replay(
    path: &Path,
    offset: u64,
    payload: &[u8],
    Replayed { hard, start, log }: &mut Replayed,
) -> Result<(), StorageError> {
    let corrupt = |reason: String| StorageError::Corrupt {
        path: path.to_path_buf(),
        offset,
        reason,
    };
    let record = SaveRecord::decode(payload)
        .map_err(|e| corrupt(format!("undecodable Raft record: {e}")))?;
    if let Some(new_start) = record.log_start {
        *start = usize::try_from(new_start)
            .map_err(|_| corrupt(format!("log start {new_start} is not a position")))?;
        log.clear();
    }
    match record.log_from {
        Some(from) => {
            let from = usize::try_from(from)
                .ok()
                .filter(|&from| (*start..=*start + log.len()).contains(&from))
                .ok_or_else(|| {
                    corrupt(format!(
                        "record rewrites the log from index {from} but it holds entries {}..{}",
                        start,
                        *start + log.len()
                    ))
                })?;
            log.truncate(from - *start);
            log.extend(record.entries.into_iter().map(Entry::from));
        }
        None if !record.entries.is_empty() => {
            return Err(corrupt("record has entries but no position".into()));
        }
        None => {}
    }
    if let Some(stored) = record.hard {
        let voted_for = stored
            .voted_for
            .map(usize::try_from)
            .transpose()
            .map_err(|_| corrupt(format!("vote {:?} is not a server id", stored.voted_for)))?;
        *hard = HardState {
            term: stored.term,
            voted_for,
            commit: stored.commit,
        };
    }
    Ok(())
}

/// Storage doubles shared by the node's and the service's tests.
#[cfg(test)]
pub(crate) mod testing {
    use super::*;

    /// The error a double returns for a write it was told to fail.
    pub(crate) fn injected_failure() -> StorageError {
        StorageError::Io {
            op: "write",
            path: "test-disk".into(),
            source: std::io::Error::other("injected failure"),
        }
    }

    /// Storage that starts empty and fails every write.
    pub(crate) struct FailingStorage;

    impl RaftStorage for FailingStorage {
        fn load(&mut self) -> Result<(HardState, Vec<Entry>), StorageError> {
            Ok((HardState::default(), Vec::new()))
        }

        fn save(
            &mut self,
            _hard: Option<HardState>,
            _from: Option<LogIndex>,
            _entries: &[Entry],
            _must_sync: bool,
        ) -> Result<(), StorageError> {
            Err(injected_failure())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::FileMetaData;

    fn entry(term: i64, name: &str) -> Entry {
        Entry {
            term,
            meta: FileMetaData {
                filename: name.into(),
                version: 1,
                block_hash_list: vec![crate::hash::hash_block(name.as_bytes())],
            },
        }
    }

    fn hard(term: i64, commit: i64) -> HardState {
        HardState {
            term,
            voted_for: Some(2),
            commit,
        }
    }

    fn reopen(dir: &Path) -> (HardState, Vec<Entry>) {
        FileStorage::open(dir).unwrap().load().unwrap()
    }

    /// The bytes the log's records take (its file is allocated ahead).
    fn log_bytes(dir: &Path) -> u64 {
        Wal::records_end(&dir.join(LOG_FILE)).unwrap()
    }

    #[test]
    fn empty_storage_loads_the_initial_state() {
        let dir = tempfile::tempdir().unwrap();
        let loaded = reopen(&dir.path().join("raft"));
        assert_eq!(loaded, (HardState::default(), vec![]));
        assert_eq!(MemoryStorage.load().unwrap(), loaded);
        MemoryStorage
            .save(Some(hard(1, 0)), Some(0), &[entry(1, "a")], true)
            .unwrap();
        assert_eq!(MemoryStorage.load().unwrap(), loaded);
    }

    #[test]
    fn round_trip_and_appends_across_reopens() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = vec![entry(1, "a"), entry(1, "b")];
        let mut storage = FileStorage::open(dir.path()).unwrap();
        storage
            .save(Some(hard(1, -1)), Some(0), &log, true)
            .unwrap();
        log.push(entry(1, "c"));
        storage
            .save(Some(hard(1, 1)), Some(2), &log[2..], true)
            .unwrap();
        assert_eq!(reopen(dir.path()), (hard(1, 1), log.clone()));

        let mut storage = FileStorage::open(dir.path()).unwrap();
        assert_eq!(storage.load().unwrap(), (hard(1, 1), log.clone()));
        log.push(entry(2, "d"));
        let no_vote = HardState {
            voted_for: None,
            ..hard(2, 3)
        };
        storage
            .save(Some(no_vote), Some(3), &log[3..], true)
            .unwrap();
        // A second load reads what is on disk now.
        assert_eq!(storage.load().unwrap(), (no_vote, log.clone()));
        assert_eq!(reopen(dir.path()), (no_vote, log));
    }

    #[test]
    fn a_conflicting_suffix_is_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let mut storage = FileStorage::open(dir.path()).unwrap();
        let old: Vec<Entry> = ["a", "b", "c", "d", "e"].map(|n| entry(1, n)).to_vec();
        storage.save(Some(hard(1, 1)), Some(0), &old, true).unwrap();
        let mut new = old[..2].to_vec();
        new.extend([entry(2, "x"), entry(2, "y")]);
        storage
            .save(Some(hard(2, 1)), Some(2), &new[2..], true)
            .unwrap();
        assert_eq!(reopen(dir.path()), (hard(2, 1), new.clone()));

        // Cutting without appending, then appending on top after a reopen.
        let mut storage = FileStorage::open(dir.path()).unwrap();
        storage.save(None, Some(1), &[], true).unwrap();
        assert_eq!(reopen(dir.path()), (hard(2, 1), new[..1].to_vec()));
        let mut storage = FileStorage::open(dir.path()).unwrap();
        let last = [new[0].clone(), entry(3, "z")];
        storage
            .save(Some(hard(3, 1)), Some(1), &last[1..], true)
            .unwrap();
        assert_eq!(reopen(dir.path()), (hard(3, 1), last.to_vec()));
    }

    #[test]
    fn a_save_past_the_stored_log_is_refused_and_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let mut storage = FileStorage::open(dir.path()).unwrap();
        let log = vec![entry(1, "a"), entry(1, "b")];
        storage
            .save(Some(hard(1, -1)), Some(0), &log, true)
            .unwrap();
        let err = storage
            .save(None, Some(3), &[entry(1, "c")], true)
            .unwrap_err();
        assert!(
            err.to_string().contains("from 3, entries 0..2 stored"),
            "{err}"
        );
        assert_eq!(reopen(dir.path()), (hard(1, -1), log));
    }

    #[test]
    fn saving_nothing_new_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let mut storage = FileStorage::open(dir.path()).unwrap();
        let log = vec![entry(1, "a")];
        storage.save(Some(hard(1, 0)), Some(0), &log, true).unwrap();
        let len = log_bytes(dir.path());
        storage.save(None, None, &[], true).unwrap();
        assert_eq!(log_bytes(dir.path()), len);
        // Only the commit index moved: a small record, written unsynced.
        storage.save(Some(hard(1, 1)), None, &[], false).unwrap();
        assert!(log_bytes(dir.path()) - len < 40);
        assert_eq!(reopen(dir.path()), (hard(1, 1), log));
    }

    #[test]
    fn a_save_cut_in_the_middle_is_dropped_whole() {
        let dir = tempfile::tempdir().unwrap();
        let first = vec![entry(1, "a")];
        let mut storage = FileStorage::open(dir.path()).unwrap();
        storage
            .save(Some(hard(1, -1)), Some(0), &first, true)
            .unwrap();
        let saved = log_bytes(dir.path());
        let second = vec![entry(2, "x"), entry(2, "y")];
        storage
            .save(Some(hard(2, 0)), Some(0), &second, true)
            .unwrap();
        let mut full = std::fs::read(dir.path().join(LOG_FILE)).unwrap();
        full.truncate(log_bytes(dir.path()) as usize);
        for cut in [saved as usize + 3, full.len() - 1] {
            std::fs::write(dir.path().join(LOG_FILE), &full[..cut]).unwrap();
            assert_eq!(
                reopen(dir.path()),
                (hard(1, -1), first.clone()),
                "cut {cut}"
            );
            assert_eq!(log_bytes(dir.path()), saved);
        }
    }

    #[test]
    fn a_garbage_tail_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let log = vec![entry(1, "a"), entry(1, "b")];
        FileStorage::open(dir.path())
            .unwrap()
            .save(Some(hard(1, 1)), Some(0), &log, true)
            .unwrap();
        let path = dir.path().join(LOG_FILE);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes.truncate(log_bytes(dir.path()) as usize);
        bytes.extend_from_slice(&[0x17, 0, 0, 0, 0xde, 0xad, 0xbe, 0xef, 1, 2, 3]);
        std::fs::write(&path, bytes).unwrap();
        assert_eq!(reopen(dir.path()), (hard(1, 1), log));
    }

    #[test]
    fn corruption_in_the_middle_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let mut storage = FileStorage::open(dir.path()).unwrap();
        storage
            .save(Some(hard(1, -1)), Some(0), &[entry(1, "a")], true)
            .unwrap();
        storage.save(Some(hard(1, 0)), None, &[], true).unwrap();
        let path = dir.path().join(LOG_FILE);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[12] ^= 0x40;
        std::fs::write(&path, bytes).unwrap();
        let err = FileStorage::open(dir.path()).unwrap_err();
        assert!(
            matches!(&err, StorageError::Corrupt { path: p, offset: 0, .. } if *p == path),
            "{err}"
        );
    }

    #[test]
    fn a_well_framed_record_that_does_not_fit_the_log_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(LOG_FILE);
        let mut wal = Wal::open(&path, |_, _| Ok(())).unwrap();
        let bad = SaveRecord {
            log_from: Some(3),
            entries: vec![entry(1, "a").into()],
            hard: None,
            log_start: None,
        };
        wal.append(&bad.encode_to_vec()).unwrap();
        wal.sync().unwrap();
        let err = FileStorage::open(dir.path()).unwrap_err();
        assert!(err.to_string().contains("index 3"), "{err}");
    }

    fn snapshot_write(
        last_index: i64,
        last_term: i64,
        log: Vec<Entry>,
        hard: HardState,
    ) -> SnapshotWrite {
        SnapshotWrite {
            snapshot: Arc::new(Snapshot {
                last_index,
                last_term,
                data: bytes::Bytes::from(format!("map up to {last_index}")),
            }),
            log,
            hard,
            restore_map: false,
        }
    }

    fn open_all(dir: &Path) -> (HardState, Option<Arc<Snapshot>>, Vec<Entry>) {
        let mut storage = FileStorage::open(dir).unwrap();
        let snapshot = storage.load_snapshot().unwrap();
        let (hard, log) = storage.load().unwrap();
        (hard, snapshot, log)
    }

    #[test]
    fn a_snapshot_replaces_the_log_before_it_and_appends_go_on_after_it() {
        let dir = tempfile::tempdir().unwrap();
        let log: Vec<Entry> = (0..50).map(|i| entry(1, &format!("e{i}"))).collect();
        let mut storage = FileStorage::open(dir.path()).unwrap();
        storage
            .save(Some(hard(1, 47)), Some(0), &log, true)
            .unwrap();
        let before = log_bytes(dir.path());
        let write = snapshot_write(47, 1, log[48..].to_vec(), hard(1, 47));
        storage.save_snapshot(&write).unwrap();
        assert!(log_bytes(dir.path()) < before / 10, "the WAL was cut");
        assert_eq!(
            open_all(dir.path()),
            (
                hard(1, 47),
                Some(write.snapshot.clone()),
                log[48..].to_vec()
            )
        );
        // Saves address absolute indices; none may reach into the snapshot.
        storage
            .save(None, Some(50), &[entry(2, "n")], true)
            .unwrap();
        let err = storage
            .save(None, Some(47), &[entry(2, "x")], true)
            .unwrap_err();
        assert!(err.to_string().contains("entries 48..51 stored"), "{err}");
        let (_, snapshot, after) = open_all(dir.path());
        assert_eq!(snapshot, Some(write.snapshot));
        assert_eq!(after.len(), 3);
        assert_eq!(after[2], entry(2, "n"));
        // A second load reads the same from disk.
        assert_eq!(storage.load_snapshot().unwrap().unwrap().last_index, 47);
        assert_eq!(storage.load().unwrap().1, after);
    }

    #[test]
    fn a_crash_between_the_snapshot_and_the_log_cut_loads_a_state_the_server_had() {
        let log: Vec<Entry> = ["a", "b", "c", "d"].map(|n| entry(1, n)).to_vec();
        // The snapshot file is in place; the WAL is still the old one.
        let crash_after_snapshot = |snapshot_term: i64, last_index: i64| {
            let dir = tempfile::tempdir().unwrap();
            let mut storage = FileStorage::open(dir.path()).unwrap();
            storage.save(Some(hard(1, 1)), Some(0), &log, true).unwrap();
            let write = snapshot_write(last_index, snapshot_term, vec![], hard(1, last_index));
            let record = SnapshotRecord {
                last_index,
                last_term: snapshot_term,
                data: write.snapshot.data.clone(),
            };
            Wal::replace(&dir.path().join(SNAPSHOT_FILE), &[&record.encode_to_vec()]).unwrap();
            open_all(dir.path())
        };
        // Our own compaction: the entries after it stay.
        let (hard_state, snapshot, after) = crash_after_snapshot(1, 1);
        assert_eq!(snapshot.map(|s| s.last_index), Some(1));
        assert_eq!(after, log[2..]);
        assert_eq!(hard_state, hard(1, 1), "term and vote as written");
        // A leader's snapshot whose last entry this log has in another term:
        // the old log is not the leader's and goes.
        let (hard_state, _, after) = crash_after_snapshot(2, 2);
        assert!(after.is_empty());
        assert_eq!(hard_state.commit, 2, "the snapshot is committed");
        // Its term was adopted in the write the crash cut: never below the
        // snapshot's last term (no vote cast in it), or the server's vote
        // requests would carry a lastLogTerm above their term.
        assert_eq!((hard_state.term, hard_state.voted_for), (2, None));
        // One past the end of the old log.
        let (_, _, after) = crash_after_snapshot(3, 9);
        assert!(after.is_empty());
    }

    #[test]
    fn a_damaged_snapshot_or_a_log_starting_without_one_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let mut storage = FileStorage::open(dir.path()).unwrap();
        storage
            .save_snapshot(&snapshot_write(3, 1, vec![entry(1, "e")], hard(1, 3)))
            .unwrap();
        let path = dir.path().join(SNAPSHOT_FILE);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes.truncate(bytes.len() - 1);
        std::fs::write(&path, &bytes).unwrap();
        let err = FileStorage::open(dir.path()).unwrap_err();
        assert!(
            err.to_string().contains("no intact snapshot record"),
            "{err}"
        );
        std::fs::remove_file(&path).unwrap();
        let err = FileStorage::open(dir.path()).unwrap_err();
        assert!(err.to_string().contains("there is no snapshot"), "{err}");
    }

    #[test]
    fn memory_storage_keeps_no_snapshot() {
        let write = snapshot_write(3, 1, vec![], hard(1, 3));
        MemoryStorage.save_snapshot(&write).unwrap();
        assert_eq!(MemoryStorage.load_snapshot().unwrap(), None);
    }
}
