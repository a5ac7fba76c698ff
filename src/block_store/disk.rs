//! The on-disk block backend behind `--data-dir`: one file per block, named
//! by its hash.
//!
//! ```text
//! DIR/ab/abcd…(64 hex)   a block, under the first two hex chars of its hash
//! DIR/tmp/               blocks being written; emptied at open
//! DIR/corrupt/           blocks that failed verification, kept for inspection
//! ```
//!
//! A block is written to `tmp/`, fdatasynced, renamed into place and its
//! directory fsynced before `put` returns, so after a crash a block file is
//! either complete or absent. Fanning out by prefix keeps directories small
//! (256 of them, created at open so `put` never has to).
//!
//! **What a `PutBlocks` call pays for durability.** Before the reply every
//! block's bytes and its name must be on disk. The bytes must be durable
//! *before* the name appears: after a power cut a name pointing at data
//! that never reached the disk would be an empty or garbled block that
//! `HasBlocks` (which only checks that the file exists) reports as present,
//! so no client would upload it again. Hence, per call: every new block is
//! written to its temp file and fdatasynced (one per block: the data of
//! different files has no common flush short of syncing the whole file
//! system), then all are renamed into place, then each fan-out directory
//! that received a block is fsynced once, covering all the names in it.
//! Before, each block paid its own directory fsync as well: a call of N
//! blocks now costs N + (distinct directories) fsyncs instead of 2N, and
//! the directory fsyncs after the first find the file system's journal
//! already committed on ext4 and cost little.
//!
//! Every read re-hashes the bytes. A block whose content no longer matches
//! its name (disk damage, tampering) is never served: it is moved to
//! `corrupt/` with a warning and reported as absent, so `GetBlock` answers
//! NOT_FOUND and `HasBlocks` stops listing it, so the next client that has
//! the block uploads it again. `HasBlocks` itself only checks that the file
//! exists (re-hashing every block it is asked about would make each sync
//! read the whole store); `PutBlock` of a block already present verifies the
//! stored copy and replaces it if it rotted.
//!
//! **Age, for gc (SPEC §9.2).** A block's age is its file's modification
//! time: set when it is stored, and set again whenever `has` or `put` names
//! it, so a block a client was just told is there stays young while the
//! client lists it in an update. A read/write lock makes that and
//! [`BlockBackend::delete_older`]'s check-then-remove exclusive.

use std::collections::BTreeSet;
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::RwLock;
use std::time::{Duration, SystemTime};

use bytes::Bytes;

use super::{BlockBackend, BlockStoreError, Freed, StoredBlock};
use crate::hash::{hash_block, is_valid_hash};
use crate::locks::{read, write};
use crate::storage::{StorageError, create_dir_durable, sync_dir};

/// Where blocks are written before being renamed into place.
const TMP_DIR: &str = "tmp";

/// Where blocks that failed verification are moved.
const CORRUPT_DIR: &str = "corrupt";

/// Blocks stored as files under one directory; see the module documentation.
#[derive(Debug)]
pub struct DiskBlocks {
    root: PathBuf,
    /// Held shared by `has` and `put`, exclusively by `delete_older`.
    gc: RwLock<()>,
}

impl DiskBlocks {
    /// Opens the store in `dir`, creating its layout if needed and removing
    /// temporary files left by a crash mid-`put`.
    pub fn open(dir: &Path) -> Result<DiskBlocks, BlockStoreError> {
        create_dir_durable(dir)?;
        let store = DiskBlocks {
            root: dir.to_path_buf(),
            gc: RwLock::new(()),
        };
        let mut created = false;
        let fan_out = (0..=255u8).map(|b| hex::encode([b]));
        for name in fan_out.chain([TMP_DIR.into(), CORRUPT_DIR.into()]) {
            let sub = dir.join(name);
            match fs::create_dir(&sub) {
                Ok(()) => created = true,
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists && sub.is_dir() => {}
                Err(e) => return Err(StorageError::io("create directory", &sub)(e).into()),
            }
        }
        if created {
            sync_dir(dir)?;
        }
        store.remove_leftover_temp_files()?;
        Ok(store)
    }

    fn remove_leftover_temp_files(&self) -> Result<(), StorageError> {
        let tmp = self.root.join(TMP_DIR);
        let mut removed = 0usize;
        for entry in fs::read_dir(&tmp).map_err(StorageError::io("list", &tmp))? {
            let path = entry.map_err(StorageError::io("list", &tmp))?.path();
            fs::remove_file(&path).map_err(StorageError::io("remove", &path))?;
            removed += 1;
        }
        if removed > 0 {
            tracing::info!(removed, dir = %tmp.display(), "removed unfinished block writes");
        }
        Ok(())
    }

    /// The file holding block `hash`. Refuses anything but a well-formed
    /// hash, so no key can name a path outside the store.
    fn path_of(&self, hash: &str) -> Result<PathBuf, BlockStoreError> {
        if !is_valid_hash(hash) {
            return Err(BlockStoreError::Io(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("not a block hash: {hash:?}"),
            )));
        }
        Ok(self.root.join(&hash[..2]).join(hash))
    }

    /// Restarts the age of the stored block at `path` (see the module docs).
    fn touch(path: &Path) -> Result<(), StorageError> {
        fs::File::options()
            .write(true)
            .open(path)
            .and_then(|file| file.set_modified(SystemTime::now()))
            .map_err(StorageError::io("set the modification time of", path))
    }

    /// Moves a block that failed verification out of the way.
    fn quarantine(&self, hash: &str, path: &Path) {
        let target = self.root.join(CORRUPT_DIR).join(hash);
        tracing::warn!(
            path = %path.display(),
            moved_to = %target.display(),
            "block content does not match its hash; not serving it"
        );
        if let Err(e) = fs::rename(path, &target) {
            tracing::warn!(path = %path.display(), error = %e, "could not move corrupt block aside");
        }
    }
}

impl BlockBackend for DiskBlocks {
    fn get(&self, hash: &str) -> Result<Option<Bytes>, BlockStoreError> {
        let path = self.path_of(hash)?;
        let data = match fs::read(&path) {
            Ok(data) => data,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(StorageError::io("read", &path)(e).into()),
        };
        if hash_block(&data) != hash {
            self.quarantine(hash, &path);
            return Ok(None);
        }
        Ok(Some(Bytes::from(data)))
    }

    fn put(&self, hash: &str, data: Bytes) -> Result<(), BlockStoreError> {
        self.put_all(vec![(hash.to_string(), data)])
    }

    fn put_all(&self, blocks: Vec<(String, Bytes)>) -> Result<(), BlockStoreError> {
        let _gc = read(&self.gc);
        let tmp_dir = self.root.join(TMP_DIR);
        let mut written = Vec::with_capacity(blocks.len());
        for (hash, data) in blocks {
            // Skip the write only for a copy that still verifies: a rotted
            // file is quarantined by `get` and replaced by this upload.
            if self.get(&hash)?.is_some() {
                Self::touch(&self.path_of(&hash)?)?;
                continue;
            }
            let path = self.path_of(&hash)?;
            let mut tmp = tempfile::NamedTempFile::new_in(&tmp_dir)
                .map_err(StorageError::io("create a file in", &tmp_dir))?;
            tmp.write_all(&data)
                .and_then(|()| tmp.as_file().sync_data())
                .map_err(StorageError::io("write", tmp.path()))?;
            written.push((tmp, path));
        }
        // Every block's bytes are durable; now their names, one fsync per
        // directory however many blocks it received.
        let mut dirs = BTreeSet::new();
        for (tmp, path) in written {
            tmp.persist(&path)
                .map_err(|e| StorageError::io("rename a block into", &path)(e.error))?;
            dirs.insert(path.parent().unwrap_or(&self.root).to_path_buf());
        }
        for dir in dirs {
            sync_dir(&dir)?;
        }
        Ok(())
    }

    fn has(&self, hash: &str) -> Result<bool, BlockStoreError> {
        let path = self.path_of(hash)?;
        let _gc = read(&self.gc);
        match fs::symlink_metadata(&path) {
            Ok(_) => {
                Self::touch(&path)?;
                Ok(true)
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(StorageError::io("stat", &path)(e).into()),
        }
    }

    fn list(&self, after: &str, limit: usize) -> Result<Vec<StoredBlock>, BlockStoreError> {
        let now = SystemTime::now();
        let first_dir = after.get(..2).unwrap_or("");
        let mut listed = Vec::new();
        for dir in (0..=255u8).map(|b| hex::encode([b])) {
            if dir.as_str() < first_dir || listed.len() >= limit {
                continue;
            }
            let path = self.root.join(&dir);
            let mut names: Vec<String> = fs::read_dir(&path)
                .map_err(StorageError::io("list", &path))?
                .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
                .filter(|name| name.as_str() > after && is_valid_hash(name))
                .collect();
            names.sort_unstable();
            for hash in names.into_iter().take(limit - listed.len()) {
                let file = path.join(&hash);
                let Ok(meta) = fs::metadata(&file) else {
                    // Deleted since the directory was read.
                    continue;
                };
                let modified = meta
                    .modified()
                    .map_err(StorageError::io("read the modification time of", &file))?;
                listed.push(StoredBlock {
                    hash,
                    size: meta.len(),
                    age: now.duration_since(modified).unwrap_or(Duration::ZERO),
                });
            }
        }
        Ok(listed)
    }

    fn delete_older(&self, hashes: &[String], min_age: Duration) -> Result<Freed, BlockStoreError> {
        let _gc = write(&self.gc);
        let now = SystemTime::now();
        let mut freed = Freed::default();
        for hash in hashes {
            let path = self.path_of(hash)?;
            let meta = match fs::metadata(&path) {
                Ok(meta) => meta,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(StorageError::io("stat", &path)(e).into()),
            };
            let modified = meta
                .modified()
                .map_err(StorageError::io("read the modification time of", &path))?;
            if now.duration_since(modified).unwrap_or(Duration::ZERO) < min_age {
                continue;
            }
            fs::remove_file(&path).map_err(StorageError::io("remove", &path))?;
            freed.blocks += 1;
            freed.bytes += meta.len();
        }
        Ok(freed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block(seed: &str) -> (String, Bytes) {
        let data = Bytes::from(seed.repeat(1000));
        (hash_block(&data), data)
    }

    #[test]
    fn put_get_has_and_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let store = DiskBlocks::open(&dir.path().join("blocks")).unwrap();
        let (hash, data) = block("a");
        let (other, _) = block("b");
        assert!(!store.has(&hash).unwrap());
        assert_eq!(store.get(&hash).unwrap(), None);
        store.put(&hash, data.clone()).unwrap();
        store.put(&hash, data.clone()).unwrap();
        assert!(store.has(&hash).unwrap());
        assert!(!store.has(&other).unwrap());
        assert_eq!(store.get(&hash).unwrap(), Some(data.clone()));
        let path = dir.path().join("blocks").join(&hash[..2]).join(&hash);
        assert_eq!(fs::read(path).unwrap(), data);

        let store = DiskBlocks::open(&dir.path().join("blocks")).unwrap();
        assert_eq!(store.get(&hash).unwrap(), Some(data));
        let (empty_hash, empty) = (hash_block(b""), Bytes::new());
        store.put(&empty_hash, empty.clone()).unwrap();
        assert_eq!(store.get(&empty_hash).unwrap(), Some(empty));
    }

    #[test]
    fn a_corrupt_block_is_never_served_and_can_be_uploaded_again() {
        let dir = tempfile::tempdir().unwrap();
        let store = DiskBlocks::open(dir.path()).unwrap();
        let (hash, data) = block("c");
        store.put(&hash, data.clone()).unwrap();
        let path = dir.path().join(&hash[..2]).join(&hash);
        let mut bytes = fs::read(&path).unwrap();
        bytes[17] ^= 0x20;
        fs::write(&path, &bytes).unwrap();

        assert_eq!(store.get(&hash).unwrap(), None);
        assert!(!store.has(&hash).unwrap());
        assert_eq!(
            fs::read(dir.path().join(CORRUPT_DIR).join(&hash)).unwrap(),
            bytes
        );
        store.put(&hash, data.clone()).unwrap();
        assert_eq!(store.get(&hash).unwrap(), Some(data));
    }

    #[test]
    fn putting_a_block_whose_stored_copy_rotted_replaces_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = DiskBlocks::open(dir.path()).unwrap();
        let (hash, data) = block("r");
        store.put(&hash, data.clone()).unwrap();
        let path = dir.path().join(&hash[..2]).join(&hash);
        fs::write(&path, b"rotted").unwrap();

        store.put(&hash, data.clone()).unwrap();
        assert_eq!(fs::read(&path).unwrap(), data);
        assert_eq!(store.get(&hash).unwrap(), Some(data));
    }

    #[test]
    fn leftover_temp_files_are_removed_at_open() {
        let dir = tempfile::tempdir().unwrap();
        DiskBlocks::open(dir.path()).unwrap();
        let leftover = dir.path().join(TMP_DIR).join(".tmpXYZ");
        fs::write(&leftover, b"half a block").unwrap();
        let store = DiskBlocks::open(dir.path()).unwrap();
        assert!(!leftover.exists());
        let (hash, data) = block("d");
        store.put(&hash, data).unwrap();
        assert_eq!(fs::read_dir(dir.path().join(TMP_DIR)).unwrap().count(), 0);
    }

    #[test]
    fn a_batch_stores_every_block_including_repeats_and_known_ones() {
        let dir = tempfile::tempdir().unwrap();
        let store = DiskBlocks::open(dir.path()).unwrap();
        let blocks: Vec<_> = ["e", "f", "g", "e"].iter().map(|s| block(s)).collect();
        store.put(&blocks[1].0, blocks[1].1.clone()).unwrap();
        store.put_all(blocks.clone()).unwrap();
        let store = DiskBlocks::open(dir.path()).unwrap();
        for (hash, data) in blocks {
            assert_eq!(store.get(&hash).unwrap(), Some(data));
        }
        assert_eq!(fs::read_dir(dir.path().join(TMP_DIR)).unwrap().count(), 0);
    }

    #[test]
    fn disk_blocks_keep_the_gc_contract() {
        let dir = tempfile::tempdir().unwrap();
        crate::block_store::memory::tests::gc_contract(&DiskBlocks::open(dir.path()).unwrap());
    }

    #[test]
    fn malformed_keys_are_refused_not_used_as_paths() {
        let dir = tempfile::tempdir().unwrap();
        let store = DiskBlocks::open(dir.path()).unwrap();
        for key in ["", "../etc/passwd", "ab", &"A".repeat(64)] {
            assert!(store.has(key).is_err(), "{key:?}");
            assert!(store.get(key).is_err(), "{key:?}");
            assert!(store.put(key, Bytes::from_static(b"x")).is_err(), "{key:?}");
        }
    }

    #[test]
    fn an_unusable_directory_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("a-file");
        fs::write(&file, b"").unwrap();
        let err = DiskBlocks::open(&file).unwrap_err();
        assert!(err.to_string().contains("a-file"), "{err}");
    }
}
