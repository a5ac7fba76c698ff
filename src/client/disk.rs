//! Every change the client makes inside the base directory goes through here,
//! so the safety rules hold in one place:
//!
//! * a file is replaced by writing a temporary file beside it and renaming it
//!   into place, so an interrupted sync never leaves a half-written file;
//! * a path is only reached through real directories: an ancestor that is a
//!   symlink (or a file) is refused, never followed out of the base
//!   directory;
//! * a directory emptied by deletions is removed once the run's deletions
//!   are done, so no two steps race to remove it.

use std::collections::BTreeSet;
use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use tempfile::NamedTempFile;

use super::conflict;
use super::names::{TEMP_PREFIX, to_path};

/// How many numbered conflict-copy names are tried before giving up.
const CONFLICT_NAME_ATTEMPTS: u32 = 100;

/// Why a change to the base directory could not be made.
#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    /// A file-system call failed.
    #[error("{path}: {source}")]
    Io {
        /// The path the call was about.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// Something other than a directory stands where a directory is needed.
    #[error("{path} is not a directory (a file, symlink or special file is in the way)")]
    NotADirectory {
        /// The offending path.
        path: PathBuf,
    },
    /// Something other than a regular file stands where a file is synced.
    #[error("{path} is not a regular file; leaving it alone")]
    NotAFile {
        /// The offending path.
        path: PathBuf,
    },
}

fn io_error(path: &Path) -> impl FnOnce(io::Error) -> DiskError + '_ {
    move |source| DiskError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Makes the directories above `name` exist below `base` and returns the
/// path where the file `name` goes. Refuses when an ancestor or the file
/// itself exists but is not what it should be (a directory, a regular file).
pub fn prepare_file(base: &Path, name: &str) -> Result<PathBuf, DiskError> {
    parent_dir(base, name, true)?;
    let path = to_path(base, name);
    match fs::symlink_metadata(&path) {
        Ok(meta) if !meta.is_file() => Err(DiskError::NotAFile { path }),
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(io_error(&path)(e)),
        _ => Ok(path),
    }
}

/// Walks the directories above `name`, creating missing ones when `create`
/// is set. Returns the parent directory, or `None` when one is missing and
/// `create` is not set.
fn parent_dir(base: &Path, name: &str, create: bool) -> Result<Option<PathBuf>, DiskError> {
    let mut dir = base.to_path_buf();
    let Some((parents, _)) = name.rsplit_once('/') else {
        return Ok(Some(dir));
    };
    for segment in parents.split('/') {
        dir.push(segment);
        let exists = match fs::symlink_metadata(&dir) {
            Ok(meta) => Some(meta.is_dir()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(io_error(&dir)(e)),
        };
        match exists {
            Some(true) => {}
            Some(false) => return Err(DiskError::NotADirectory { path: dir }),
            None if !create => return Ok(None),
            None => match fs::create_dir(&dir) {
                Ok(()) => {}
                // Another download into the same new directory won the race.
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists && is_real_dir(&dir) => {}
                Err(e) => return Err(io_error(&dir)(e)),
            },
        }
    }
    Ok(Some(dir))
}

fn is_real_dir(path: &Path) -> bool {
    fs::symlink_metadata(path).is_ok_and(|m| m.is_dir())
}

/// A new temporary file in the directory of `target`, to be filled and then
/// [`commit`]ted over it. It carries the permissions of the file it will
/// replace, or the usual ones for a new file; it is deleted if dropped.
pub fn temp_beside(target: &Path) -> Result<NamedTempFile, DiskError> {
    let dir = target.parent().unwrap_or(Path::new("."));
    let mut builder = tempfile::Builder::new();
    builder.prefix(TEMP_PREFIX);
    #[cfg(unix)]
    builder.permissions(std::os::unix::fs::PermissionsExt::from_mode(0o666));
    let tmp = builder.tempfile_in(dir).map_err(io_error(dir))?;
    take_permissions(target, tmp.as_file(), tmp.path())?;
    Ok(tmp)
}

/// Gives `file` (at `path`) the permissions of the file at `target`, which
/// it will replace; a new file keeps the usual ones.
fn take_permissions(target: &Path, file: &File, path: &Path) -> Result<(), DiskError> {
    match fs::metadata(target) {
        Ok(existing) => file
            .set_permissions(existing.permissions())
            .map_err(io_error(path)),
        Err(_) => Ok(()),
    }
}

/// Opens the partial download at `path` (see
/// [`super::names::partial_path`]) of the file at `target` for reading and
/// writing, creating it empty if there is none, with the permissions of the
/// file it will replace. What it holds is the caller's to check.
pub fn open_partial(path: &Path, target: &Path) -> Result<File, DiskError> {
    match fs::symlink_metadata(path) {
        Ok(meta) if !meta.is_file() => {
            return Err(DiskError::NotAFile {
                path: path.to_path_buf(),
            });
        }
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(io_error(path)(e)),
        _ => {}
    }
    let file = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(io_error(path))?;
    take_permissions(target, &file, path)?;
    Ok(file)
}

/// Makes the complete download `file` (at `partial`) durable and renames
/// it over `target`. The caller syncs the directory (see [`sync_dir`]).
pub fn commit_partial(file: &File, partial: &Path, target: &Path) -> Result<(), DiskError> {
    file.sync_all().map_err(io_error(partial))?;
    fs::rename(partial, target).map_err(io_error(target))
}

/// Makes the temporary file's contents durable and renames it over `target`.
/// The caller syncs the directory (see [`sync_dir`]) before recording the
/// change anywhere.
pub fn commit(tmp: NamedTempFile, target: &Path) -> Result<(), DiskError> {
    tmp.as_file().sync_all().map_err(io_error(tmp.path()))?;
    tmp.persist(target).map_err(|e| DiskError::Io {
        path: target.to_path_buf(),
        source: e.error,
    })?;
    Ok(())
}

/// Makes renames and deletions inside `dir` durable. A directory that is
/// gone (another deletion emptied and removed it) has nothing left to make
/// durable: its removal is an entry of its parent.
pub fn sync_dir(dir: &Path) -> Result<(), DiskError> {
    #[cfg(unix)]
    match File::open(dir).and_then(|d| d.sync_all()) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(io_error(dir)(e)),
        _ => {}
    }
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}

/// Replaces `path` with `contents` atomically and durably.
pub fn write_atomically(path: &Path, contents: &[u8]) -> Result<(), DiskError> {
    let mut tmp = temp_beside(path)?;
    tmp.write_all(contents).map_err(io_error(tmp.path()))?;
    commit(tmp, path)?;
    sync_dir(path.parent().unwrap_or(Path::new(".")))
}

/// Deletes the file `name` below `base` (nothing to do if it is gone) and
/// returns the directory whose entries changed. Directories this empties
/// stay until [`prune_emptied_dirs`]: removing them here would race with
/// the run's other deletions and downloads in the same folders.
pub fn remove_file(base: &Path, name: &str) -> Result<Option<PathBuf>, DiskError> {
    let Some(dir) = parent_dir(base, name, false)? else {
        return Ok(None);
    };
    let path = to_path(base, name);
    match fs::symlink_metadata(&path) {
        Ok(meta) if meta.is_file() => fs::remove_file(&path).map_err(io_error(&path))?,
        Ok(_) => return Err(DiskError::NotAFile { path }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_error(&path)(e)),
    }
    Ok(Some(dir))
}

/// Removes the directories of `dirs` that are empty, and the directories
/// above them this empties in turn, up to `base` (never `base` itself).
/// Returns the directories whose entries changed, to be [`sync_dir`]ed: for
/// each of `dirs`, the nearest one that still exists. A directory already
/// gone counts as removed.
pub fn prune_emptied_dirs(base: &Path, dirs: &BTreeSet<PathBuf>) -> BTreeSet<PathBuf> {
    let mut changed = BTreeSet::new();
    // Deepest first: a directory sorts after its ancestors.
    for dir in dirs.iter().rev() {
        let mut dir = dir.clone();
        while dir != base && dir.starts_with(base) {
            match fs::remove_dir(&dir) {
                Ok(()) => tracing::debug!(dir = %dir.display(), "removed emptied directory"),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                // Not empty (or not ours to remove): it stays.
                Err(_) => break,
            }
            dir.pop();
        }
        changed.insert(dir);
    }
    changed
}

/// Saves the file at `from`, the local version of `name` that is about to
/// lose a conflict, as its conflict copy below `root` (see [`conflict`]):
/// `root/NAME.conflict-STAMP`, creating the folders on the way. Returns the
/// copy's path. The copy is a hard link where it can be, so it is made at
/// once whatever the size and holds exactly the bytes that lose; elsewhere
/// (another file system) the file is copied (temporary file and rename,
/// like any write). An existing file is never overwritten by a copy. When
/// this returns, the copy's bytes and every directory entry leading to it
/// are on disk, so the file may be replaced or deleted.
pub fn keep_conflict_copy(
    from: &Path,
    root: &Path,
    name: &str,
    at: SystemTime,
) -> Result<PathBuf, DiskError> {
    for attempt in 0..CONFLICT_NAME_ATTEMPTS {
        let copy = to_path(root, &conflict::copy_name(name, at, attempt));
        let dir = copy.parent().unwrap_or(root);
        let grown = create_dirs(dir)?;
        let made = match fs::hard_link(from, &copy) {
            Ok(()) => true,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => false,
            Err(e) => {
                tracing::debug!(path = %from.display(), error = %e, "cannot hard-link; copying");
                copy_file(from, &copy)?
            }
        };
        if made {
            // A hard link shares the file's data, which the user may never
            // have flushed.
            File::open(&copy)
                .and_then(|file| file.sync_all())
                .map_err(io_error(&copy))?;
            for dir in std::iter::once(dir).chain(grown.iter().map(PathBuf::as_path)) {
                sync_dir(dir)?;
            }
            return Ok(copy);
        }
    }
    Err(DiskError::Io {
        path: from.to_path_buf(),
        source: io::Error::new(
            io::ErrorKind::AlreadyExists,
            "every conflict-copy name for this file and second is taken",
        ),
    })
}

/// Creates `dir` and its missing ancestors. Returns the directories that
/// gained an entry: the parent of each directory created.
fn create_dirs(dir: &Path) -> Result<Vec<PathBuf>, DiskError> {
    let mut grown = Vec::new();
    let mut missing = dir;
    while !missing.exists() {
        let Some(parent) = missing.parent() else {
            break;
        };
        grown.push(parent.to_path_buf());
        missing = parent;
    }
    if !grown.is_empty() {
        fs::create_dir_all(dir).map_err(io_error(dir))?;
    }
    Ok(grown)
}

/// Copies `from` to the new file `to`; `false` if `to` already exists.
fn copy_file(from: &Path, to: &Path) -> Result<bool, DiskError> {
    let mut tmp = temp_beside(to)?;
    let mut source = File::open(from).map_err(io_error(from))?;
    io::copy(&mut source, &mut tmp).map_err(io_error(tmp.path()))?;
    tmp.as_file().sync_all().map_err(io_error(tmp.path()))?;
    match tmp.persist_noclobber(to) {
        Ok(_) => Ok(true),
        Err(e) if e.error.kind() == io::ErrorKind::AlreadyExists => Ok(false),
        Err(e) => Err(io_error(to)(e.error)),
    }
}

/// Removes a temporary file or partial download an interrupted run (or a
/// failed download) left behind. Failing to is only worth a warning: the
/// file is never synced either way.
pub fn remove_stale_temp_file(path: &Path) {
    match fs::remove_file(path) {
        Ok(()) => tracing::debug!(path = %path.display(), "removed a stale temporary file"),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "cannot remove a stale temporary file")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prepare_creates_parents_and_refuses_what_is_in_the_way() {
        let base = tempfile::tempdir().unwrap();
        let path = prepare_file(base.path(), "a/b/c.txt").unwrap();
        assert_eq!(path, base.path().join("a/b/c.txt"));
        assert!(base.path().join("a/b").is_dir());

        fs::write(base.path().join("file"), "x").unwrap();
        assert!(matches!(
            prepare_file(base.path(), "file/x"),
            Err(DiskError::NotADirectory { .. })
        ));
        fs::create_dir(base.path().join("dir")).unwrap();
        assert!(matches!(
            prepare_file(base.path(), "dir"),
            Err(DiskError::NotAFile { .. })
        ));
    }

    #[cfg(unix)]
    #[test]
    fn symlinked_directories_are_never_followed() {
        let base = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        fs::write(outside.path().join("victim"), "keep").unwrap();
        std::os::unix::fs::symlink(outside.path(), base.path().join("link")).unwrap();

        assert!(matches!(
            prepare_file(base.path(), "link/new"),
            Err(DiskError::NotADirectory { .. })
        ));
        assert!(matches!(
            remove_file(base.path(), "link/victim"),
            Err(DiskError::NotADirectory { .. })
        ));
        assert_eq!(fs::read(outside.path().join("victim")).unwrap(), b"keep");
        assert!(!outside.path().join("new").exists());
    }

    #[test]
    fn remove_deletes_only_the_file_and_pruning_removes_emptied_directories() {
        let base = tempfile::tempdir().unwrap();
        fs::create_dir_all(base.path().join("a/b/c")).unwrap();
        fs::write(base.path().join("a/keep"), "x").unwrap();
        fs::write(base.path().join("a/b/c/gone"), "x").unwrap();

        let dir = remove_file(base.path(), "a/b/c/gone").unwrap().unwrap();
        assert_eq!(dir, base.path().join("a/b/c"));
        assert!(dir.is_dir());
        let changed = prune_emptied_dirs(base.path(), &BTreeSet::from([dir]));
        assert_eq!(changed, BTreeSet::from([base.path().join("a")]));
        assert!(!base.path().join("a/b").exists());
        assert!(base.path().join("a/keep").exists());

        assert!(remove_file(base.path(), "a/missing").unwrap().is_none());
        assert!(remove_file(base.path(), "nope/missing").unwrap().is_none());

        fs::write(base.path().join("top"), "x").unwrap();
        let dir = remove_file(base.path(), "top").unwrap().unwrap();
        let changed = prune_emptied_dirs(base.path(), &BTreeSet::from([dir]));
        assert_eq!(changed, BTreeSet::from([base.path().to_path_buf()]));
        assert!(base.path().is_dir());
    }

    #[test]
    fn directories_already_gone_are_pruned_and_synced_without_error() {
        let base = tempfile::tempdir().unwrap();
        fs::create_dir_all(base.path().join("gone/x")).unwrap();
        fs::create_dir_all(base.path().join("kept/x")).unwrap();
        fs::write(base.path().join("kept/file"), "x").unwrap();
        let vanished = base.path().join("gone/x");
        let dirs = BTreeSet::from([vanished.clone(), base.path().join("kept/x")]);
        fs::remove_dir_all(base.path().join("gone")).unwrap();

        sync_dir(&vanished).unwrap();
        let changed = prune_emptied_dirs(base.path(), &dirs);
        assert_eq!(
            changed,
            BTreeSet::from([base.path().to_path_buf(), base.path().join("kept")])
        );
        for dir in &changed {
            sync_dir(dir).unwrap();
        }
        assert!(matches!(
            sync_dir(&base.path().join("kept/file/not-a-dir")),
            Err(DiskError::Io { .. })
        ));
    }

    #[test]
    fn atomic_write_replaces_and_leaves_no_temp_files() {
        let base = tempfile::tempdir().unwrap();
        let path = base.path().join("f");
        write_atomically(&path, b"one").unwrap();
        write_atomically(&path, b"two").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"two");
        assert_eq!(fs::read_dir(base.path()).unwrap().count(), 1);
    }

    #[cfg(unix)]
    #[test]
    fn replacing_keeps_permissions() {
        use std::os::unix::fs::PermissionsExt;
        let base = tempfile::tempdir().unwrap();
        let path = base.path().join("script");
        fs::write(&path, "old").unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o751)).unwrap();
        write_atomically(&path, b"new").unwrap();
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o751
        );

        let fresh = base.path().join("fresh");
        write_atomically(&fresh, b"x").unwrap();
        assert_ne!(
            fs::metadata(&fresh).unwrap().permissions().mode() & 0o044,
            0
        );
    }

    #[cfg(unix)]
    #[test]
    fn partial_downloads_are_reopened_as_they_are_and_committed_in_place() {
        use std::os::unix::fs::PermissionsExt;
        let base = tempfile::tempdir().unwrap();
        let (partial, target) = (base.path().join("partial"), base.path().join("f"));
        fs::write(&target, "old").unwrap();
        fs::set_permissions(&target, fs::Permissions::from_mode(0o600)).unwrap();
        open_partial(&partial, &target)
            .unwrap()
            .write_all(b"half")
            .unwrap();
        let mut reopened = open_partial(&partial, &target).unwrap();
        assert_eq!(fs::read(&partial).unwrap(), b"half");
        io::Seek::seek(&mut reopened, io::SeekFrom::End(0)).unwrap();
        reopened.write_all(b" and the rest").unwrap();
        commit_partial(&reopened, &partial, &target).unwrap();
        assert_eq!(fs::read(&target).unwrap(), b"half and the rest");
        assert!(!partial.exists());
        let mode = fs::metadata(&target).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);

        let outside = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(outside.path().join("victim"), &partial).unwrap();
        assert!(matches!(
            open_partial(&partial, &target),
            Err(DiskError::NotAFile { .. })
        ));
        assert!(!outside.path().join("victim").exists());
    }

    #[test]
    fn conflict_copies_keep_the_old_bytes_and_never_overwrite() {
        let base = tempfile::tempdir().unwrap();
        fs::create_dir(base.path().join("d")).unwrap();
        let path = base.path().join("d/f");
        fs::write(&path, "mine").unwrap();
        let at = SystemTime::UNIX_EPOCH;
        let first = keep_conflict_copy(&path, base.path(), "d/f", at).unwrap();
        assert_eq!(first, base.path().join("d/f.conflict-19700101-000000"));
        let second = keep_conflict_copy(&path, base.path(), "d/f", at).unwrap();
        assert_eq!(second, base.path().join("d/f.conflict-19700101-000000-1"));

        write_atomically(&path, b"theirs").unwrap();
        assert_eq!(fs::read(&first).unwrap(), b"mine");
        assert_eq!(fs::read(&second).unwrap(), b"mine");
        assert_eq!(fs::read(&path).unwrap(), b"theirs");
    }

    #[test]
    fn conflict_copies_outside_create_their_folders_and_survive_a_deletion() {
        let base = tempfile::tempdir().unwrap();
        let state = tempfile::tempdir().unwrap();
        let root = state.path().join("surfstore/conflicts/base-0123");
        write_atomically(&base.path().join("f"), b"mine").unwrap();
        fs::create_dir_all(base.path().join("a/b")).unwrap();
        let nested = base.path().join("a/b/g");
        fs::write(&nested, "nested").unwrap();
        let at = SystemTime::UNIX_EPOCH;

        let copy = keep_conflict_copy(&base.path().join("f"), &root, "f", at).unwrap();
        assert_eq!(copy, root.join("f.conflict-19700101-000000"));
        let nested_copy = keep_conflict_copy(&nested, &root, "a/b/g", at).unwrap();
        assert_eq!(nested_copy, root.join("a/b/g.conflict-19700101-000000"));
        remove_file(base.path(), "f").unwrap();
        remove_file(base.path(), "a/b/g").unwrap();
        assert_eq!(fs::read(&copy).unwrap(), b"mine");
        assert_eq!(fs::read(&nested_copy).unwrap(), b"nested");
    }

    #[test]
    fn creating_folders_reports_where_entries_were_added() {
        let top = tempfile::tempdir().unwrap();
        let dir = top.path().join("x/y/z");
        assert_eq!(
            create_dirs(&dir).unwrap(),
            [
                top.path().join("x/y"),
                top.path().join("x"),
                top.path().to_path_buf()
            ]
        );
        assert!(dir.is_dir());
        assert!(create_dirs(&dir).unwrap().is_empty());
    }

    #[test]
    fn copying_does_not_clobber() {
        let base = tempfile::tempdir().unwrap();
        let (from, to) = (base.path().join("from"), base.path().join("to"));
        fs::write(&from, "new").unwrap();
        assert!(copy_file(&from, &to).unwrap());
        assert_eq!(fs::read(&to).unwrap(), b"new");
        fs::write(&from, "newer").unwrap();
        assert!(!copy_file(&from, &to).unwrap());
        assert_eq!(fs::read(&to).unwrap(), b"new");
        assert_eq!(fs::read_dir(base.path()).unwrap().count(), 2);
    }
}
