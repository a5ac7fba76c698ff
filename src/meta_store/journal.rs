//! The plain MetaStore's map, kept either in memory only or backed by a
//! write-ahead journal of accepted updates (`--data-dir`).
//!
//! Only updates the version rule accepts are journaled, each as one
//! [`Wal`] record holding the `FileMetaData` in its protobuf encoding.
//! Replaying the journal through the same [`FileMap::apply`] rebuilds the
//! map; an update that does not apply on replay means the journal is not
//! what this server wrote, and the open fails rather than serve a wrong map.
//!
//! **Group commit.** One writer thread owns the journal. `UpdateFile` calls
//! queue their update and wait; the writer takes every update waiting,
//! decides each under the version rule in arrival order (each seeing the
//! ones accepted before it in the batch, see [`Pending`]), appends the
//! accepted ones and fsyncs once for all of them, then applies them to the
//! map readers see and answers every caller with its own result. So an
//! update is durable before it is visible or acknowledged, and N concurrent
//! updates cost one fsync, not N. If the append or fsync fails, no update
//! of the batch is applied, every caller in it gets the error, and the
//! journal refuses further writes ([`StorageError::Poisoned`]).
//!
//! Readers only take the map's lock long enough to get its shared encoding
//! ([`FileMap::encoded`]), never across a write or an fsync.
//!
//! **Compaction (SPEC §9.2).** Every `snapshot_updates` accepted updates
//! the writer replaces the journal, atomically ([`Wal::replace`]: temporary
//! file, fsync, rename, directory fsync), by one whose first record is the
//! whole map; later updates follow it. A crash leaves the old journal or
//! the new one, each replaying to the same map, so the journal follows the
//! map's size rather than its history. The map record is a
//! [`JournalSnapshot`], whose only field has a tag no `FileMetaData` uses,
//! so journals written before compaction existed replay as they did.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::thread::JoinHandle;

use prost::Message;
use tokio::sync::oneshot;

use super::{FileMap, Pending, REJECTED_VERSION};
use crate::grpc::{self, TooLarge};
use crate::proto::{FileInfoMap, FileMetaData};
use crate::storage::{StorageError, Wal, create_dir_durable};

/// The journal's file name inside the MetaStore's directory.
pub const JOURNAL_FILE: &str = "updates.wal";

/// The record that opens a compacted journal: the map as of then.
#[derive(Clone, PartialEq, prost::Message)]
struct JournalSnapshot {
    #[prost(message, optional, tag = "100")]
    map: Option<FileInfoMap>,
}

/// Why an update was not stored.
#[derive(Debug, Clone, thiserror::Error)]
pub enum UpdateError {
    /// The version rule accepts it, but the map would then be too large for
    /// a `GetFileInfoMap` reply.
    #[error(transparent)]
    TooLarge(#[from] TooLarge),
    /// The journal could not be written: the update (and every other one of
    /// its batch) is not stored.
    #[error("{0}")]
    Storage(Arc<StorageError>),
    /// The journal's writer thread is gone (the server is shutting down).
    #[error("the MetaStore journal writer has stopped")]
    WriterGone,
}

/// A [`FileMap`] plus, when on disk, the writer of the journal that makes
/// it durable; see the module documentation.
#[derive(Debug)]
pub struct JournaledMap {
    map: Arc<Mutex<FileMap>>,
    writer: Option<Writer>,
    /// How many times the journal was fsynced since open.
    syncs: Arc<AtomicU64>,
}

/// The journal's writer thread and the queue feeding it.
#[derive(Debug)]
struct Writer {
    /// `None` only while dropping, which ends the thread.
    queue: Option<mpsc::Sender<Job>>,
    thread: Option<JoinHandle<()>>,
}

/// One `UpdateFile` waiting for the writer.
#[derive(Debug)]
struct Job {
    meta: FileMetaData,
    reply: oneshot::Sender<Result<i32, UpdateError>>,
}

impl JournaledMap {
    /// A map that lives as long as the process, as in the original.
    pub fn in_memory() -> Self {
        Self {
            map: Arc::default(),
            writer: None,
            syncs: Arc::default(),
        }
    }

    /// Opens (creating if needed) the journal in `dir`, replays it and
    /// starts its writer thread, which compacts the journal every
    /// `snapshot_updates` accepted updates (0: never). An update cut off by
    /// a crash mid-write was never acknowledged and is dropped; damage
    /// before the end of the journal is an error.
    pub fn open(dir: &Path, snapshot_updates: usize) -> Result<Self, StorageError> {
        create_dir_durable(dir)?;
        let path = dir.join(JOURNAL_FILE);
        let mut map = FileMap::default();
        let mut updates = 0;
        let wal = Wal::open(&path, |offset, payload| {
            let corrupt = |reason: String| StorageError::Corrupt {
                path: path.clone(),
                offset,
                reason,
            };
            let snapshot = JournalSnapshot::decode(payload)
                .map_err(|e| corrupt(format!("undecodable record: {e}")))?;
            if let Some(whole) = snapshot.map {
                if offset != 0 {
                    return Err(corrupt("a map record after the first".into()));
                }
                map = FileMap::from_encoded(&whole.encode_to_vec())
                    .map_err(|e| corrupt(format!("undecodable map: {e}")))?;
                return Ok(());
            }
            updates += 1;
            let meta = FileMetaData::decode(payload)
                .map_err(|e| corrupt(format!("undecodable update: {e}")))?;
            let (name, version) = (meta.filename.clone(), meta.version);
            if map.apply(meta) == REJECTED_VERSION {
                return Err(corrupt(format!(
                    "update of {name:?} to version {version} does not follow the version before it"
                )));
            }
            Ok(())
        })?;
        tracing::info!(path = %path.display(), files = map.len(), updates, "loaded MetaStore journal");
        let map = Arc::new(Mutex::new(map));
        let syncs = Arc::new(AtomicU64::new(0));
        let (queue, jobs) = mpsc::channel();
        let mut journal = Journal {
            wal,
            updates,
            snapshot_updates,
            broken: None,
        };
        let thread = {
            let (map, syncs) = (Arc::clone(&map), Arc::clone(&syncs));
            std::thread::Builder::new()
                .name("meta-journal".into())
                .spawn(move || write_batches(&jobs, &map, &mut journal, &syncs))
                .map_err(StorageError::io("start the writer thread of", &path))?
        };
        Ok(Self {
            map,
            writer: Some(Writer {
                queue: Some(queue),
                thread: Some(thread),
            }),
            syncs,
        })
    }

    /// Applies `meta` under the version rule. An accepted update is durable
    /// before this returns its new version and before any read sees it; a
    /// rejected one returns [`REJECTED_VERSION`] and writes nothing. On
    /// error the map is unchanged.
    pub async fn update(&self, meta: FileMetaData) -> Result<i32, UpdateError> {
        let Some(queue) = self.writer.as_ref().and_then(|w| w.queue.as_ref()) else {
            // In memory there is nothing to wait for: decide and apply at once.
            let mut map = lock(&self.map);
            let accepted = decide(&mut Pending::new(&map), &meta)?;
            return Ok(if accepted {
                map.apply(meta)
            } else {
                REJECTED_VERSION
            });
        };
        let (reply, answer) = oneshot::channel();
        queue
            .send(Job { meta, reply })
            .map_err(|_| UpdateError::WriterGone)?;
        answer.await.unwrap_or(Err(UpdateError::WriterGone))
    }

    /// Runs `read` on the current map, under its lock: keep it short (e.g.
    /// [`FileMap::encoded`]).
    pub fn read<R>(&self, read: impl FnOnce(&FileMap) -> R) -> R {
        read(&lock(&self.map))
    }

    /// How many times the journal was fsynced since it was opened: fewer
    /// than the updates stored when they arrived together.
    pub fn syncs(&self) -> u64 {
        self.syncs.load(Ordering::Relaxed)
    }
}

impl Drop for Writer {
    /// Closes the queue and waits for the writer to finish what it took, so
    /// that the journal is closed when the map is gone.
    fn drop(&mut self) {
        drop(self.queue.take());
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            tracing::error!("the MetaStore journal writer panicked");
        }
    }
}

fn lock(map: &Mutex<FileMap>) -> std::sync::MutexGuard<'_, FileMap> {
    // The map changes only by `FileMap::apply`, which leaves it consistent
    // at every step, so a poisoned lock still guards a usable map.
    crate::locks::lock(map)
}

/// The version rule and the size limit for `meta`, after everything in
/// `pending`: whether to store it; if so it joins `pending`.
fn decide(pending: &mut Pending<'_>, meta: &FileMetaData) -> Result<bool, TooLarge> {
    if !pending.accepts(meta) {
        return Ok(false);
    }
    grpc::fits(
        "GetFileInfoMap's reply",
        pending.len_after(meta),
        grpc::MAX_MESSAGE_BYTES,
    )?;
    pending.add(meta);
    Ok(true)
}

/// The journal as its writer thread owns it.
struct Journal {
    wal: Wal,
    /// Updates it holds after its map record.
    updates: usize,
    /// Compact once it holds this many (0: never).
    snapshot_updates: usize,
    /// Why a compaction failed: what is on disk is then unknown, so every
    /// later write is refused, as after a failed append.
    broken: Option<Arc<StorageError>>,
}

impl Journal {
    /// Replaces the journal by one holding `map` alone when enough updates
    /// accumulated since the last time.
    fn compact_if_due(&mut self, map: &Mutex<FileMap>) {
        if self.snapshot_updates == 0 || self.updates < self.snapshot_updates {
            return;
        }
        let encoded = lock(map).encoded();
        // The map record is the map's encoding inside field 100.
        let mut record = Vec::with_capacity(encoded.len() + 8);
        prost::encoding::encode_key(100, prost::encoding::WireType::LengthDelimited, &mut record);
        prost::encoding::encode_varint(encoded.len() as u64, &mut record);
        record.extend_from_slice(&encoded);
        match Wal::replace(self.wal.path(), &[&record]) {
            Ok(wal) => {
                tracing::debug!(
                    updates = self.updates,
                    bytes = record.len(),
                    "compacted the MetaStore journal"
                );
                self.wal = wal;
                self.updates = 0;
            }
            Err(error) => {
                tracing::error!(%error, "MetaStore journal compaction failed");
                self.broken = Some(Arc::new(error));
            }
        }
    }
}

/// The writer thread: one batch per turn, of every job waiting, until the
/// queue closes.
fn write_batches(
    jobs: &mpsc::Receiver<Job>,
    map: &Mutex<FileMap>,
    journal: &mut Journal,
    syncs: &AtomicU64,
) {
    while let Ok(first) = jobs.recv() {
        let mut batch = vec![first];
        batch.extend(jobs.try_iter());
        commit(batch, map, journal, syncs);
        // After the batch's callers are answered: the rewrite delays none.
        journal.compact_if_due(map);
    }
}

/// Decides, writes, fsyncs once, applies and answers one batch.
fn commit(batch: Vec<Job>, map: &Mutex<FileMap>, journal: &mut Journal, syncs: &AtomicU64) {
    if let Some(error) = &journal.broken {
        for job in batch {
            let _ = job.reply.send(Err(UpdateError::Storage(Arc::clone(error))));
        }
        return;
    }
    let wal = &mut journal.wal;
    // Only this thread changes the map, so it is the same when applied to.
    let decisions: Vec<Result<bool, TooLarge>> = {
        let map = lock(map);
        let mut pending = Pending::new(&map);
        batch
            .iter()
            .map(|job| decide(&mut pending, &job.meta))
            .collect()
    };
    let accepted = decisions.iter().filter(|d| matches!(d, Ok(true))).count();
    if accepted > 0 {
        let written = batch
            .iter()
            .zip(&decisions)
            .filter(|(_, d)| matches!(d, Ok(true)))
            .try_for_each(|(job, _)| wal.append(&job.meta.encode_to_vec()))
            .and_then(|()| wal.sync());
        if let Err(error) = written {
            tracing::error!(%error, updates = batch.len(), "MetaStore journal write failed");
            // Decisions after an update that is now not stored may be wrong,
            // so no caller of the batch gets one.
            let error = UpdateError::Storage(Arc::new(error));
            for job in batch {
                let _ = job.reply.send(Err(error.clone()));
            }
            return;
        }
        syncs.fetch_add(1, Ordering::Relaxed);
        journal.updates += accepted;
    }
    tracing::debug!(updates = batch.len(), accepted, "MetaStore journal batch");
    let answers: Vec<_> = {
        let mut map = lock(map);
        batch
            .into_iter()
            .zip(decisions)
            .map(|(job, decision)| {
                let answer = match decision {
                    Ok(true) => Ok(map.apply(job.meta)),
                    Ok(false) => Ok(REJECTED_VERSION),
                    Err(too_large) => Err(UpdateError::TooLarge(too_large)),
                };
                (job.reply, answer)
            })
            .collect()
    };
    for (reply, answer) in answers {
        // The caller may have given up (deadline); nothing to do then.
        let _ = reply.send(answer);
    }
}

#[cfg(test)]
mod tests {
    use futures::FutureExt;

    use super::*;

    fn meta(name: &str, version: i32, hashes: &[&str]) -> FileMetaData {
        FileMetaData {
            filename: name.into(),
            version,
            block_hash_list: hashes.iter().map(|h| h.to_string()).collect(),
        }
    }

    /// The bytes the journal's records take (its file is allocated ahead).
    fn journal_len(dir: &Path) -> u64 {
        Wal::records_end(&dir.join(JOURNAL_FILE)).unwrap()
    }

    fn snapshot(store: &JournaledMap) -> FileMap {
        store.read(FileMap::clone)
    }

    #[tokio::test]
    async fn accepted_updates_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let store = JournaledMap::open(dir.path(), 0).unwrap();
        assert_eq!(store.update(meta("a", 1, &["h1"])).await.unwrap(), 1);
        assert_eq!(store.update(meta("b", 1, &[])).await.unwrap(), 1);
        assert_eq!(store.update(meta("a", 2, &["0"])).await.unwrap(), 2);
        let expected = snapshot(&store);
        drop(store);
        let store = JournaledMap::open(dir.path(), 0).unwrap();
        assert_eq!(snapshot(&store), expected);
        assert_eq!(
            store.read(|m| m.get("a").cloned()),
            Some(meta("a", 2, &["0"]))
        );
    }

    #[tokio::test]
    async fn rejected_updates_write_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = JournaledMap::open(dir.path(), 0).unwrap();
        store.update(meta("a", 1, &["h1"])).await.unwrap();
        let len = journal_len(dir.path());
        assert_eq!(
            store.update(meta("a", 1, &["h2"])).await.unwrap(),
            REJECTED_VERSION
        );
        assert_eq!(
            store.update(meta("new", 2, &[])).await.unwrap(),
            REJECTED_VERSION
        );
        assert_eq!(journal_len(dir.path()), len);
        assert_eq!(store.syncs(), 1);
    }

    #[tokio::test]
    async fn an_update_cut_mid_write_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let store = JournaledMap::open(dir.path(), 0).unwrap();
        store.update(meta("a", 1, &["h1"])).await.unwrap();
        let before = snapshot(&store);
        store.update(meta("b", 1, &["h2"])).await.unwrap();
        drop(store);
        let path = dir.path().join(JOURNAL_FILE);
        let records = journal_len(dir.path()) as usize;
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..records - 2]).unwrap();
        let store = JournaledMap::open(dir.path(), 0).unwrap();
        assert_eq!(snapshot(&store), before);
        assert_eq!(store.update(meta("b", 1, &["h3"])).await.unwrap(), 1);
    }

    #[test]
    fn a_journal_that_breaks_the_version_rule_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut wal = Wal::open(&dir.path().join(JOURNAL_FILE), |_, _| Ok(())).unwrap();
        wal.append(&meta("a", 2, &[]).encode_to_vec()).unwrap();
        wal.sync().unwrap();
        let err = JournaledMap::open(dir.path(), 0).unwrap_err();
        assert!(err.to_string().contains("version 2"), "{err}");
    }

    #[tokio::test]
    async fn in_memory_map_applies_the_rule() {
        let store = JournaledMap::in_memory();
        assert_eq!(store.update(meta("a", 1, &[])).await.unwrap(), 1);
        assert_eq!(
            store.update(meta("a", 1, &[])).await.unwrap(),
            REJECTED_VERSION
        );
        assert_eq!(store.read(FileMap::len), 1);
        assert_eq!(store.syncs(), 0);
    }

    /// Queues every update while the writer cannot get at the map, so they
    /// are sure to arrive together; returns each caller's answer.
    async fn concurrently(store: &JournaledMap, updates: Vec<FileMetaData>) -> Vec<i32> {
        let mut calls: Vec<_> = updates
            .into_iter()
            .map(|m| store.update(m).boxed())
            .collect();
        {
            let _held = lock(&store.map);
            for call in &mut calls {
                // The first poll queues the update; the answer needs the map.
                assert!(call.now_or_never().is_none());
            }
        }
        futures::future::join_all(calls)
            .await
            .into_iter()
            .map(Result::unwrap)
            .collect()
    }

    #[tokio::test]
    async fn concurrent_updates_share_fsyncs_and_each_gets_its_own_answer() {
        let dir = tempfile::tempdir().unwrap();
        let store = JournaledMap::open(dir.path(), 0).unwrap();
        let n = 64;
        let mut updates: Vec<_> = (0..n).map(|i| meta(&format!("f{i}"), 1, &[])).collect();
        // In one batch, in order: accepted, a duplicate rejected, the next
        // version accepted because the first is.
        updates.extend([meta("f0", 1, &["x"]), meta("f0", 2, &["y"])]);
        let answers = concurrently(&store, updates).await;
        let mut expected = vec![1; n];
        expected.extend([REJECTED_VERSION, 2]);
        assert_eq!(answers, expected);
        // The writer may have taken the first update alone before the rest
        // arrived: at most two batches.
        assert!(
            store.syncs() <= 2,
            "{} fsyncs for {n} updates",
            store.syncs()
        );
        let expected = snapshot(&store);
        assert_eq!(expected.get("f0"), Some(&meta("f0", 2, &["y"])));
        drop(store);
        assert_eq!(
            snapshot(&JournaledMap::open(dir.path(), 0).unwrap()),
            expected
        );
    }

    #[tokio::test]
    async fn a_read_after_an_acknowledged_update_sees_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = JournaledMap::open(dir.path(), 0).unwrap();
        let before = store.read(FileMap::encoded);
        store.update(meta("a", 1, &["h"])).await.unwrap();
        let after = crate::proto::FileInfoMap::decode(store.read(FileMap::encoded)).unwrap();
        assert_eq!(after.file_info_map.get("a"), Some(&meta("a", 1, &["h"])));
        assert!(before.is_empty());
    }

    /// How many records the journal in `dir` holds.
    fn records(dir: &Path) -> usize {
        let mut n = 0;
        Wal::read(&dir.join(JOURNAL_FILE), |_, _| {
            n += 1;
            Ok(())
        })
        .unwrap();
        n
    }

    #[tokio::test]
    async fn the_journal_is_rewritten_as_the_map_every_n_updates() {
        let dir = tempfile::tempdir().unwrap();
        let store = JournaledMap::open(dir.path(), 5).unwrap();
        for version in 1..=5 {
            store.update(meta("a", version, &["h"])).await.unwrap();
        }
        // Closing waits for the writer, which rewrites after a batch.
        drop(store);
        assert_eq!(records(dir.path()), 1, "the map alone");
        let compacted = journal_len(dir.path());
        let store = JournaledMap::open(dir.path(), 5).unwrap();
        for version in 6..=8 {
            store.update(meta("a", version, &["h"])).await.unwrap();
        }
        drop(store);
        assert_eq!(records(dir.path()), 4, "the map, then three updates");
        let store = JournaledMap::open(dir.path(), 5).unwrap();
        for version in 9..=100 {
            store.update(meta("a", version, &["h"])).await.unwrap();
        }
        let expected = snapshot(&store);
        drop(store);
        assert!(records(dir.path()) <= 5);
        assert!(journal_len(dir.path()) < 6 * compacted);
        let store = JournaledMap::open(dir.path(), 5).unwrap();
        assert_eq!(snapshot(&store), expected);
        // The version rule goes on from the map record.
        assert_eq!(
            store.update(meta("a", 100, &["x"])).await.unwrap(),
            REJECTED_VERSION
        );
        assert_eq!(store.update(meta("a", 101, &["x"])).await.unwrap(), 101);
    }

    #[tokio::test]
    async fn a_compaction_cut_by_a_crash_leaves_the_old_journal() {
        let dir = tempfile::tempdir().unwrap();
        let store = JournaledMap::open(dir.path(), 0).unwrap();
        store.update(meta("a", 1, &["h"])).await.unwrap();
        store.update(meta("b", 1, &["h"])).await.unwrap();
        let expected = snapshot(&store);
        drop(store);
        // A half-written replacement beside the journal, never renamed.
        let tmp = dir.path().join(format!("{JOURNAL_FILE}.tmp"));
        std::fs::write(&tmp, [7u8; 5]).unwrap();
        let store = JournaledMap::open(dir.path(), 2).unwrap();
        assert_eq!(snapshot(&store), expected);
        store.update(meta("c", 1, &["h"])).await.unwrap();
        let expected = snapshot(&store);
        drop(store);
        assert!(!tmp.exists(), "the next rewrite replaced the leftover");
        assert_eq!(
            snapshot(&JournaledMap::open(dir.path(), 2).unwrap()),
            expected
        );
    }

    #[test]
    fn a_map_record_anywhere_but_first_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut wal = Wal::open(&dir.path().join(JOURNAL_FILE), |_, _| Ok(())).unwrap();
        let record = JournalSnapshot {
            map: Some(FileInfoMap::default()),
        };
        wal.append(&meta("a", 1, &[]).encode_to_vec()).unwrap();
        wal.append(&record.encode_to_vec()).unwrap();
        wal.sync().unwrap();
        let err = JournaledMap::open(dir.path(), 0).unwrap_err();
        assert!(err.to_string().contains("after the first"), "{err}");
    }
}
