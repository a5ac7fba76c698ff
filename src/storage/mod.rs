//! Durable storage primitives shared by every server that runs with
//! `--data-dir` (SPEC §7): the write-ahead log both the plain MetaStore and
//! the Raft log are built on, its typed errors, and the fsync helpers that
//! make a new file or directory entry survive a crash.
//!
//! The rule everything here follows: nothing is reported as stored until the
//! bytes *and* the directory entry naming them have been flushed to disk.

pub mod wal;

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

pub use wal::Wal;

/// Why durable state could not be read or written. Every variant names the
/// file involved so an operator knows where to look.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// A system call on `path` failed.
    #[error("cannot {op} {}: {source}", path.display())]
    Io {
        /// What was being done ("open", "fsync", ...).
        op: &'static str,
        /// The file or directory it was done to.
        path: PathBuf,
        /// The operating system's error.
        source: io::Error,
    },
    /// A record before the end of a file failed its checksum or could not be
    /// decoded. Unlike a torn last record this cannot come from an
    /// interrupted append, so it is reported, never silently dropped.
    #[error("{}: corrupt record at byte offset {offset}: {reason}", path.display())]
    Corrupt {
        /// The damaged file.
        path: PathBuf,
        /// Where the bad record starts.
        offset: u64,
        /// What is wrong with it.
        reason: String,
    },
    /// A record too large for the 32-bit length field of the framing.
    #[error("{}: record of {len} bytes exceeds the limit of {} bytes", path.display(), wal::MAX_RECORD_BYTES)]
    TooLarge {
        /// The log it was meant for.
        path: PathBuf,
        /// Its size.
        len: usize,
    },
    /// An earlier write or fsync on `path` failed, so what is on disk is no
    /// longer known; further writes are refused until a restart replays it.
    #[error("{}: an earlier write failed; refusing further writes until restart", path.display())]
    Poisoned {
        /// The log that failed.
        path: PathBuf,
    },
}

impl StorageError {
    /// An [`StorageError::Io`] for `op` on `path`; meant for `map_err`.
    pub fn io(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> StorageError {
        let path = path.to_path_buf();
        move |source| StorageError::Io { op, path, source }
    }
}

/// Flushes a directory so that entries created in, renamed into or removed
/// from it survive a crash (fsync of a file does not cover its name).
pub fn sync_dir(dir: &Path) -> Result<(), StorageError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(StorageError::io("fsync directory", dir))
}

/// The directory holding `path` (`.` for a bare file name), whose entry must
/// be fsynced to make a create or rename durable.
pub(crate) fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// Creates `dir` and any missing parents, making each new directory entry
/// durable before returning.
pub fn create_dir_durable(dir: &Path) -> Result<(), StorageError> {
    if dir.is_dir() {
        return Ok(());
    }
    let parent = parent_dir(dir);
    create_dir_durable(parent)?;
    match std::fs::create_dir(dir) {
        Ok(()) => sync_dir(parent),
        // Another thread or process created it meanwhile: fine if it is a directory.
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists && dir.is_dir() => Ok(()),
        Err(e) => Err(StorageError::io("create directory", dir)(e)),
    }
}
