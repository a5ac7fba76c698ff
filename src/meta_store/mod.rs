//! The MetaStore: the map from file name to [`FileMetaData`] and its version
//! rule (SPEC §4).
//!
//! [`FileMap`] is the state machine every MetaStore applies updates to, the
//! plain server and each Raft replica alike; [`JournaledMap`] adds the
//! plain server's optional write-ahead journal (`--data-dir`), and
//! [`MetaStoreService`] is the non-replicated gRPC service around one.
//! [`MapChanges`] tells watching clients when a map changed.
//!
//! Reads share one encoding: [`FileMap::encoded`] builds the
//! `GetFileInfoMap` reply once after a change and hands every reader the
//! same bytes until the next accepted update, and [`EncodedMapServer`]
//! serves those bytes as they are, so a read costs a reference count and a
//! copy into tonic's send buffer instead of a deep copy of the map under
//! the lock plus an encoding per reader.

mod encoded;
mod journal;
mod service;
mod watch;

pub use encoded::{EncodedMapServer, MapSource};
pub use journal::{JOURNAL_FILE, JournaledMap, UpdateError};
pub use service::MetaStoreService;
pub use watch::{MapChanges, MapWatchService};

use std::collections::HashMap;
use std::sync::OnceLock;

use bytes::Bytes;
use prost::Message;

use crate::grpc::field_len;
use crate::proto::{FileInfoMap, FileMetaData};

/// The version `UpdateFile` returns when the version rule rejects an update.
pub const REJECTED_VERSION: i32 = -1;

/// File name → latest metadata, tombstones included.
#[derive(Debug, Clone, Default)]
pub struct FileMap {
    files: HashMap<String, FileMetaData>,
    /// `FileInfoMap` encoded length of `files`, kept up to date on every
    /// change so that a size check never walks the map.
    encoded_len: usize,
    /// `files` as an encoded `FileInfoMap`, built by the first read after a
    /// change and shared by every read until the next one.
    encoded: OnceLock<Bytes>,
}

/// Two maps are equal when they hold the same files, whether or not either
/// has built its encoding yet.
impl PartialEq for FileMap {
    fn eq(&self, other: &Self) -> bool {
        self.files == other.files
    }
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
        self.encoded = OnceLock::new();
        version
    }

    /// The encoded length of the map in a `FileInfoMap` (what
    /// `GetFileInfoMap` replies).
    pub fn encoded_len(&self) -> usize {
        self.encoded_len
    }

    /// [`FileMap::encoded_len`] once `meta` replaces what the map holds for
    /// its file, whether or not the version rule would accept it.
    fn len_after(&self, meta: &FileMetaData) -> usize {
        let old = self.files.get(&meta.filename).map_or(0, map_entry_len);
        self.encoded_len - old + map_entry_len(meta)
    }

    /// Whether [`FileMap::apply`] would accept `meta`, without applying it.
    fn accepts(&self, meta: &FileMetaData) -> bool {
        follows(
            self.files.get(&meta.filename).map_or(0, |m| m.version),
            meta,
        )
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

    /// The map an encoded `FileInfoMap` (what [`FileMap::encoded`] gives)
    /// holds, taken as it is: a snapshot of an applied map.
    pub fn from_encoded(bytes: &[u8]) -> Result<Self, prost::DecodeError> {
        let files = FileInfoMap::decode(bytes)?.file_info_map;
        let encoded_len = files.values().map(map_entry_len).sum();
        Ok(Self {
            files,
            encoded_len,
            encoded: OnceLock::new(),
        })
    }

    /// A copy of the whole map in its wire form.
    pub fn to_proto(&self) -> FileInfoMap {
        FileInfoMap {
            file_info_map: self.files.clone(),
        }
    }

    /// The map as an encoded `FileInfoMap`, byte for byte what encoding
    /// [`FileMap::to_proto`] gives. Built on the first call after a change
    /// (encoding the map in place, without copying it first); later calls
    /// share it until the next accepted update.
    pub fn encoded(&self) -> Bytes {
        self.encoded
            .get_or_init(|| {
                let mut buf = Vec::with_capacity(self.encoded_len);
                // What prost's derive writes for `FileInfoMap`'s field 1.
                prost::encoding::hash_map::encode(
                    prost::encoding::string::encode,
                    prost::encoding::string::encoded_len,
                    prost::encoding::message::encode,
                    prost::encoding::message::encoded_len,
                    1,
                    &self.files,
                    &mut buf,
                );
                Bytes::from(buf)
            })
            .clone()
    }
}

/// The version rule: an update is accepted only as exactly one more than
/// the file's `current` version (0 for an unknown file).
fn follows(current: i32, meta: &FileMetaData) -> bool {
    current.checked_add(1) == Some(meta.version)
}

/// A [`FileMap`] plus accepted updates that are not applied to it yet: the
/// version rule and the size of the map as they will be once those are.
/// Lets a writer decide a batch of updates in order, make the accepted ones
/// durable, and only then apply them where readers see them.
#[derive(Debug)]
pub struct Pending<'a> {
    map: &'a FileMap,
    /// Per file with a pending update: its newest version and the bytes its
    /// entry will take in the encoded map.
    newer: HashMap<String, (i32, usize)>,
    encoded_len: usize,
}

impl<'a> Pending<'a> {
    /// `map` with nothing pending.
    pub fn new(map: &'a FileMap) -> Self {
        Pending {
            map,
            newer: HashMap::new(),
            encoded_len: map.encoded_len,
        }
    }

    /// Whether `meta` follows the newest version, pending or applied.
    fn accepts(&self, meta: &FileMetaData) -> bool {
        let current = match self.newer.get(&meta.filename) {
            Some(&(version, _)) => version,
            None => self.map.get(&meta.filename).map_or(0, |m| m.version),
        };
        follows(current, meta)
    }

    /// The encoded length of the map once everything pending and `meta`
    /// are applied.
    fn len_after(&self, meta: &FileMetaData) -> usize {
        let old = match self.newer.get(&meta.filename) {
            Some(&(_, len)) => len,
            None => self.map.get(&meta.filename).map_or(0, map_entry_len),
        };
        self.encoded_len - old + map_entry_len(meta)
    }

    /// Records `meta`, which [`Pending::accepts`], as pending.
    pub fn add(&mut self, meta: &FileMetaData) {
        self.encoded_len = self.len_after(meta);
        self.newer
            .insert(meta.filename.clone(), (meta.version, map_entry_len(meta)));
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
            assert_eq!(map.encoded(), map.to_proto().encode_to_vec());
            if accepted {
                assert_eq!(projected, exact);
            }
        }
    }

    #[test]
    fn a_read_after_an_update_sees_it_and_reads_between_share_one_encoding() {
        let mut map = FileMap::default();
        map.apply(meta("a", 1));
        let first = map.encoded();
        let again = map.encoded();
        assert_eq!(first.as_ptr(), again.as_ptr(), "one encoding shared");
        let rejected = map.apply(meta("a", 5));
        assert_eq!(rejected, REJECTED_VERSION);
        assert_eq!(map.encoded().as_ptr(), first.as_ptr());
        map.apply(meta("b", 1));
        let after = FileInfoMap::decode(map.encoded()).unwrap();
        assert_eq!(after, map.to_proto());
        assert_eq!(after.file_info_map.len(), 2);
        // The old snapshot is untouched by the update.
        assert_eq!(FileInfoMap::decode(first).unwrap().file_info_map.len(), 1);
    }

    #[test]
    fn pending_updates_apply_the_rule_in_order_before_the_map_sees_them() {
        let mut map = FileMap::default();
        map.apply(meta("a", 1));
        let updates = [meta("a", 2), meta("a", 2), meta("a", 3), meta("b", 1)];
        let mut pending = Pending::new(&map);
        let mut accepted = Vec::new();
        for update in updates {
            if pending.accepts(&update) {
                pending.add(&update);
                accepted.push(update);
            }
        }
        let projected = pending.encoded_len;
        assert_eq!(accepted, vec![meta("a", 2), meta("a", 3), meta("b", 1)]);
        for update in accepted {
            assert_ne!(map.apply(update), REJECTED_VERSION);
        }
        assert_eq!(map.encoded_len(), projected);
    }
}
