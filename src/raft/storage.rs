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
//!   overwritten), so the file is not compacted.

use std::path::Path;

use prost::Message;

use super::{Entry, HardState, LogIndex};
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

/// Hard state and log in one write-ahead log file, `DIR/raft.wal` (see the
/// module documentation for the format).
#[derive(Debug)]
pub struct FileStorage {
    wal: Wal,
    /// How many log entries are stored.
    stored_len: usize,
    /// What was replayed at open, handed out by the first `load`.
    loaded: Option<(HardState, Vec<Entry>)>,
}

impl FileStorage {
    /// Opens (creating if needed) the storage in `dir`, replaying its log.
    /// An interrupted last save is dropped; damage anywhere else is an error.
    pub fn open(dir: &Path) -> Result<FileStorage, StorageError> {
        create_dir_durable(dir)?;
        let path = dir.join(LOG_FILE);
        let mut state = (HardState::default(), Vec::new());
        let wal = Wal::open(&path, |offset, payload| {
            replay(&path, offset, payload, &mut state)
        })?;
        tracing::info!(
            path = %path.display(),
            term = state.0.term,
            commit = state.0.commit,
            entries = state.1.len(),
            "loaded Raft state"
        );
        Ok(FileStorage {
            wal,
            stored_len: state.1.len(),
            loaded: Some(state),
        })
    }
}

impl RaftStorage for FileStorage {
    fn load(&mut self) -> Result<(HardState, Vec<Entry>), StorageError> {
        if let Some(state) = self.loaded.take() {
            return Ok(state);
        }
        let path = self.wal.path().to_path_buf();
        let mut state = (HardState::default(), Vec::new());
        Wal::read(&path, |offset, payload| {
            replay(&path, offset, payload, &mut state)
        })?;
        Ok(state)
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
                    .filter(|&from| from <= self.stored_len)
                    .ok_or_else(|| StorageError::Io {
                        op: "write past the end of the log in",
                        path: self.wal.path().to_path_buf(),
                        source: std::io::Error::new(
                            std::io::ErrorKind::InvalidInput,
                            format!("from {from}, {} entries stored", self.stored_len),
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
        };
        self.wal.append(&record.encode_to_vec())?;
        if must_sync {
            self.wal.sync()?;
        }
        if let Some(from) = log_from {
            self.stored_len = from + entries.len();
        }
        Ok(())
    }
}

/// One save: cut the log to `log_from` entries and append `entries` (when
/// `log_from` is set), then adopt `hard` (when set).
#[derive(Clone, PartialEq, prost::Message)]
struct SaveRecord {
    #[prost(uint64, optional, tag = "1")]
    log_from: Option<u64>,
    #[prost(message, repeated, tag = "2")]
    entries: Vec<UpdateOperation>,
    #[prost(message, optional, tag = "3")]
    hard: Option<HardRecord>,
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

/// Folds one stored record into the replayed state, checking that it fits.
fn replay(
    path: &Path,
    offset: u64,
    payload: &[u8],
    (hard, log): &mut (HardState, Vec<Entry>),
) -> Result<(), StorageError> {
    let corrupt = |reason: String| StorageError::Corrupt {
        path: path.to_path_buf(),
        offset,
        reason,
    };
    let record = SaveRecord::decode(payload)
        .map_err(|e| corrupt(format!("undecodable Raft record: {e}")))?;
    match record.log_from {
        Some(from) => {
            let from = usize::try_from(from)
                .ok()
                .filter(|&from| from <= log.len())
                .ok_or_else(|| {
                    corrupt(format!(
                        "record rewrites the log from index {from} but only {} entries precede it",
                        log.len()
                    ))
                })?;
            log.truncate(from);
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

    fn file_len(dir: &Path) -> u64 {
        std::fs::metadata(dir.join(LOG_FILE)).unwrap().len()
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
            err.to_string().contains("from 3, 2 entries stored"),
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
        let len = file_len(dir.path());
        storage.save(None, None, &[], true).unwrap();
        assert_eq!(file_len(dir.path()), len);
        // Only the commit index moved: a small record, written unsynced.
        storage.save(Some(hard(1, 1)), None, &[], false).unwrap();
        assert!(file_len(dir.path()) - len < 40);
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
        let saved = file_len(dir.path());
        let second = vec![entry(2, "x"), entry(2, "y")];
        storage
            .save(Some(hard(2, 0)), Some(0), &second, true)
            .unwrap();
        let full = std::fs::read(dir.path().join(LOG_FILE)).unwrap();
        for cut in [saved as usize + 3, full.len() - 1] {
            std::fs::write(dir.path().join(LOG_FILE), &full[..cut]).unwrap();
            assert_eq!(
                reopen(dir.path()),
                (hard(1, -1), first.clone()),
                "cut {cut}"
            );
            assert_eq!(file_len(dir.path()), saved);
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
        };
        wal.append(&bad.encode_to_vec()).unwrap();
        wal.sync().unwrap();
        let err = FileStorage::open(dir.path()).unwrap_err();
        assert!(err.to_string().contains("index 3"), "{err}");
    }
}
