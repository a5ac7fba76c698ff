//! The plain MetaStore's map, kept either in memory only or backed by a
//! write-ahead journal of accepted updates (`--data-dir`).
//!
//! Only updates the version rule accepts are journaled, each as one
//! [`Wal`] record holding the `FileMetaData` in its protobuf encoding, and
//! each is fsynced before it becomes visible or is acknowledged. Replaying
//! the journal through the same [`FileMap::apply`] rebuilds the map; an
//! update that does not apply on replay means the journal is not what this
//! server wrote, and the open fails rather than serve a wrong map.

use std::path::Path;

use prost::Message;

use super::{FileMap, REJECTED_VERSION};
use crate::proto::FileMetaData;
use crate::storage::{StorageError, Wal, create_dir_durable};

/// The journal's file name inside the MetaStore's directory.
pub const JOURNAL_FILE: &str = "updates.wal";

/// A [`FileMap`] plus, when on disk, the journal that makes it durable.
#[derive(Debug, Default)]
pub struct JournaledMap {
    map: FileMap,
    journal: Option<Wal>,
}

impl JournaledMap {
    /// A map that lives as long as the process, as in the original.
    pub fn in_memory() -> Self {
        Self::default()
    }

    /// Opens (creating if needed) the journal in `dir` and replays it. An
    /// update cut off by a crash mid-write was never acknowledged and is
    /// dropped; damage before the end of the journal is an error.
    pub fn open(dir: &Path) -> Result<Self, StorageError> {
        create_dir_durable(dir)?;
        let path = dir.join(JOURNAL_FILE);
        let mut map = FileMap::default();
        let journal = Wal::open(&path, |offset, payload| {
            let corrupt = |reason: String| StorageError::Corrupt {
                path: path.clone(),
                offset,
                reason,
            };
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
        tracing::info!(path = %path.display(), files = map.len(), "loaded MetaStore journal");
        Ok(Self {
            map,
            journal: Some(journal),
        })
    }

    /// Applies `meta` under the version rule. An accepted update is durable
    /// before this returns its new version; a rejected one returns
    /// [`REJECTED_VERSION`] and writes nothing. On error the map is
    /// unchanged.
    pub fn update(&mut self, meta: FileMetaData) -> Result<i32, StorageError> {
        if !self.map.accepts(&meta) {
            return Ok(REJECTED_VERSION);
        }
        if let Some(journal) = &mut self.journal {
            journal.append(&meta.encode_to_vec())?;
            journal.sync()?;
        }
        Ok(self.map.apply(meta))
    }

    /// The current map.
    pub fn map(&self) -> &FileMap {
        &self.map
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(name: &str, version: i32, hashes: &[&str]) -> FileMetaData {
        FileMetaData {
            filename: name.into(),
            version,
            block_hash_list: hashes.iter().map(|h| h.to_string()).collect(),
        }
    }

    fn journal_len(dir: &Path) -> u64 {
        std::fs::metadata(dir.join(JOURNAL_FILE)).unwrap().len()
    }

    #[test]
    fn accepted_updates_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = JournaledMap::open(dir.path()).unwrap();
        assert_eq!(store.update(meta("a", 1, &["h1"])).unwrap(), 1);
        assert_eq!(store.update(meta("b", 1, &[])).unwrap(), 1);
        assert_eq!(store.update(meta("a", 2, &["0"])).unwrap(), 2);
        let expected = store.map().clone();
        drop(store);
        let store = JournaledMap::open(dir.path()).unwrap();
        assert_eq!(store.map(), &expected);
        assert_eq!(store.map().get("a"), Some(&meta("a", 2, &["0"])));
    }

    #[test]
    fn rejected_updates_write_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = JournaledMap::open(dir.path()).unwrap();
        store.update(meta("a", 1, &["h1"])).unwrap();
        let len = journal_len(dir.path());
        assert_eq!(
            store.update(meta("a", 1, &["h2"])).unwrap(),
            REJECTED_VERSION
        );
        assert_eq!(store.update(meta("new", 2, &[])).unwrap(), REJECTED_VERSION);
        assert_eq!(journal_len(dir.path()), len);
    }

    #[test]
    fn an_update_cut_mid_write_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = JournaledMap::open(dir.path()).unwrap();
        store.update(meta("a", 1, &["h1"])).unwrap();
        let before = store.map().clone();
        store.update(meta("b", 1, &["h2"])).unwrap();
        drop(store);
        let path = dir.path().join(JOURNAL_FILE);
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() - 2]).unwrap();
        let mut store = JournaledMap::open(dir.path()).unwrap();
        assert_eq!(store.map(), &before);
        assert_eq!(store.update(meta("b", 1, &["h3"])).unwrap(), 1);
    }

    #[test]
    fn a_journal_that_breaks_the_version_rule_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut wal = Wal::open(&dir.path().join(JOURNAL_FILE), |_, _| Ok(())).unwrap();
        wal.append(&meta("a", 2, &[]).encode_to_vec()).unwrap();
        wal.sync().unwrap();
        let err = JournaledMap::open(dir.path()).unwrap_err();
        assert!(err.to_string().contains("version 2"), "{err}");
    }

    #[test]
    fn in_memory_map_applies_the_rule() {
        let mut store = JournaledMap::in_memory();
        assert_eq!(store.update(meta("a", 1, &[])).unwrap(), 1);
        assert_eq!(store.update(meta("a", 1, &[])).unwrap(), REJECTED_VERSION);
        assert_eq!(store.map().len(), 1);
    }
}
