//! The MetaStore: the map from file name to [`FileMetaData`] and its version
//! rule (SPEC §4).
//!
//! [`FileMap`] is the state machine every MetaStore applies updates to, the
//! plain server and each Raft replica alike; [`JournaledMap`] adds the
//! plain server's optional write-ahead journal (`--data-dir`), and
//! [`MetaStoreService`] is the non-replicated gRPC service around one.

mod journal;
mod service;

pub use journal::{JOURNAL_FILE, JournaledMap};
pub use service::MetaStoreService;

use std::collections::HashMap;

use prost::Message;

use crate::grpc::field_len;
use crate::proto::{FileInfoMap, FileMetaData};

/// The version `UpdateFile` returns when the version rule rejects an update.
pub const REJECTED_VERSION: i32 = -1;

/// File name → latest metadata, tombstones included.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FileMap {
    files: HashMap<String, FileMetaData>,
    /// `FileInfoMap` encoded length of `files`, kept up to date on every
    /// change so that a size check never walks the map.
    encoded_len: usize,
}

/// The bytes one file takes in an encoded `FileInfoMap`: a map entry holding
/// its name as the key and its metadata as the value (protobuf leaves out
/// an empty key or a default value).
pub fn map_entry_len(meta: &FileMetaData) -> usize {
    let key = if meta.filename.is_empty() {
        0
    } else {
        field_len(meta.filename.len())
    };
    let value = if *meta == FileMetaData::default() {
        0
    } else {
        field_len(meta.encoded_len())
    };
    field_len(key + value)
}

impl FileMap {
    /// Applies an update under the version rule: accepted only when
    /// `meta.version` is exactly one more than the stored version (0 for an
    /// unknown file). Returns the new version, or [`REJECTED_VERSION`] and
    /// leaves the map unchanged.
    pub fn apply(&mut self, meta: FileMetaData) -> i32 {
        if !self.accepts(&meta) {
            return REJECTED_VERSION;
        }
        let version = meta.version;
        self.encoded_len = self.len_after(&meta);
        self.files.insert(meta.filename.clone(), meta);
        version
    }

    /// The encoded length of the map in a `FileInfoMap` (what
    /// `GetFileInfoMap` replies).
    pub fn encoded_len(&self) -> usize {
        self.encoded_len
    }

    /// [`FileMap::encoded_len`] once `meta` replaces what the map holds for
    /// its file, whether or not the version rule would accept it.
    pub fn len_after(&self, meta: &FileMetaData) -> usize {
        let old = self.files.get(&meta.filename).map_or(0, map_entry_len);
        self.encoded_len - old + map_entry_len(meta)
    }

    /// Whether [`FileMap::apply`] would accept `meta`, without applying it:
    /// lets a caller make an update durable before it becomes visible.
    pub fn accepts(&self, meta: &FileMetaData) -> bool {
        let current = self.files.get(&meta.filename).map_or(0, |m| m.version);
        current.checked_add(1) == Some(meta.version)
    }

    /// The metadata of `name`, if known.
    pub fn get(&self, name: &str) -> Option<&FileMetaData> {
        self.files.get(name)
    }

    /// Number of files, tombstones included.
    pub fn len(&self) -> usize {
        self.files.len()
    }

    /// Whether no file was ever stored.
    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }

    /// A copy of the whole map in its wire form.
    pub fn to_proto(&self) -> FileInfoMap {
        FileInfoMap {
            file_info_map: self.files.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(name: &str, version: i32) -> FileMetaData {
        FileMetaData {
            filename: name.into(),
            version,
            block_hash_list: vec![],
        }
    }

    #[test]
    fn version_rule() {
        let mut map = FileMap::default();
        assert_eq!(map.apply(meta("a", 2)), REJECTED_VERSION);
        assert_eq!(map.apply(meta("a", 0)), REJECTED_VERSION);
        assert_eq!(map.apply(meta("a", 1)), 1);
        assert_eq!(map.apply(meta("a", 1)), REJECTED_VERSION);
        assert_eq!(map.apply(meta("a", 3)), REJECTED_VERSION);
        assert_eq!(map.apply(meta("a", 2)), 2);
        assert_eq!(map.get("a").map(|m| m.version), Some(2));
        assert_eq!(map.apply(meta("b", 1)), 1);
        assert_eq!(map.len(), 2);
    }

    #[test]
    fn rejected_update_changes_nothing() {
        let mut map = FileMap::default();
        map.apply(meta("a", 1));
        let before = map.clone();
        let mut stale = meta("a", 1);
        stale.block_hash_list = vec!["0".into()];
        assert_eq!(map.apply(stale), REJECTED_VERSION);
        assert_eq!(map, before);
    }

    #[test]
    fn version_overflow_is_rejected_not_a_panic() {
        let mut map = FileMap::default();
        map.files.insert("a".into(), meta("a", i32::MAX));
        assert_eq!(map.apply(meta("a", i32::MIN)), REJECTED_VERSION);
    }

    #[test]
    fn encoded_len_follows_every_change_exactly() {
        let mut map = FileMap::default();
        assert_eq!(map.encoded_len(), 0);
        let big = FileMetaData {
            block_hash_list: vec!["h".repeat(200); 3],
            ..meta("a", 2)
        };
        let updates = [
            meta("a", 1),
            meta("b", 1),
            big,
            meta("a", 3),
            meta("", 1),
            FileMetaData::default(),
            meta("a", 9),
            FileMetaData {
                filename: "c".into(),
                version: 1,
                block_hash_list: vec!["0".into()],
            },
        ];
        for update in updates {
            let projected = map.len_after(&update);
            let accepted = map.apply(update) != REJECTED_VERSION;
            let exact = map.to_proto().encoded_len();
            assert_eq!(map.encoded_len(), exact);
            if accepted {
                assert_eq!(projected, exact);
            }
        }
    }
}
