//! What a synced file name may be, and where it lives under the base
//! directory.
//!
//! On the wire a name is a path relative to the base directory with `/`
//! separators (`notes.txt`, `photos/2024/a.jpg`). Names come from other
//! clients, so every remote name is checked here before it can touch the
//! disk: a name must never reach outside the base directory, and must never
//! clash with the files the client keeps there for itself.

use std::path::{Path, PathBuf};

use crate::hash::hash_block;

/// The client's record of the last sync, at the top of the base directory.
pub const INDEX_FILE: &str = "index.txt";

/// The optional hash cache beside the index (see [`super::cache`]). Reserved
/// whether or not `--hash-cache` is on, so a cache an earlier run left is
/// never uploaded and no server can overwrite it.
pub const HASH_CACHE_FILE: &str = ".index.txt.cache";

/// Prefix of the temporary files the client writes before renaming them into
/// place; such files are never synced.
pub const TEMP_PREFIX: &str = ".surfstore-tmp-";

/// Prefix of a download in progress, kept when a run is interrupted so the
/// next run resumes it (see [`partial_path`]); never synced either.
pub const PARTIAL_PREFIX: &str = ".surfstore-partial-";

/// Why a name cannot be synced.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// The name is the empty string.
    #[error("the name is empty")]
    Empty,
    /// The name starts with `/`.
    #[error("it is an absolute path")]
    Absolute,
    /// A segment is `..`.
    #[error("it has a `..` segment")]
    ParentSegment,
    /// A segment is empty or `.` (`a//b`, `a/./b`, `a/`).
    #[error("it has an empty or `.` segment")]
    EmptySegment,
    /// The name contains a NUL character, which no file name can hold.
    #[error("it contains a NUL character")]
    Nul,
    /// A character that separates paths on this platform (Windows only).
    #[error("it contains a character that separates paths on this platform")]
    PlatformSeparator,
    /// `index.txt` or the hash cache at the top, or one of the client's
    /// temporary files.
    #[error("the name is reserved for the client's own files")]
    Reserved,
}

/// Checks that `name` is a relative path that stays inside the base
/// directory and is not one of the client's own files.
pub fn check(name: &str) -> Result<(), NameError> {
    if name.is_empty() {
        return Err(NameError::Empty);
    }
    if name.starts_with('/') {
        return Err(NameError::Absolute);
    }
    if name.contains('\0') {
        return Err(NameError::Nul);
    }
    if cfg!(windows) && name.contains(['\\', ':']) {
        return Err(NameError::PlatformSeparator);
    }
    for segment in name.split('/') {
        match segment {
            ".." => return Err(NameError::ParentSegment),
            "" | "." => return Err(NameError::EmptySegment),
            _ => {}
        }
    }
    if is_reserved(name) {
        return Err(NameError::Reserved);
    }
    Ok(())
}

/// Whether `name` is one of the client's own files: the top-level index or
/// hash cache, or a temporary file at any depth.
pub fn is_reserved(name: &str) -> bool {
    let last = name.rsplit('/').next().unwrap_or(name);
    name == INDEX_FILE || name == HASH_CACHE_FILE || is_temp_file(last)
}

/// Whether the single path segment `file_name` is one of the client's
/// temporary files or partial downloads.
pub fn is_temp_file(file_name: &str) -> bool {
    file_name.starts_with(TEMP_PREFIX) || is_partial_download(file_name)
}

/// Whether the single path segment `file_name` is a partial download.
pub fn is_partial_download(file_name: &str) -> bool {
    file_name.starts_with(PARTIAL_PREFIX)
}

/// Where the download of `hashes` into the file `name` below `base` is
/// written until it is complete: beside the file, under a name fixed by the
/// file's name and its block list, so an interrupted run's partial download
/// is found again by the next run that downloads the same version, and a
/// partial download of any other version is recognised as stale.
pub fn partial_path(base: &Path, name: &str, hashes: &[String]) -> PathBuf {
    let mut key = String::with_capacity(name.len() + 1 + hashes.len() * 65);
    key.push_str(name);
    for hash in hashes {
        key.push('\n');
        key.push_str(hash);
    }
    let digest = hash_block(key.as_bytes());
    to_path(base, name).with_file_name(format!("{PARTIAL_PREFIX}{}", &digest[..32]))
}

/// The path of `name` below `base`. Only meaningful for a name [`check`]
/// accepted.
pub fn to_path(base: &Path, name: &str) -> PathBuf {
    let mut path = base.to_path_buf();
    path.extend(name.split('/'));
    path
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_plain_nested_and_unusual_names() {
        for name in [
            "a",
            "a.txt",
            "dir/sub/file",
            "with space, comma % and\nnewline",
            "données/日本語.txt",
            "back\\slash",
            "...",
            "..a",
            "a..",
            "sub/index.txt",
            "sub/.index.txt.cache",
            "index.txt.cache",
            ".hidden",
        ] {
            assert_eq!(check(name), Ok(()), "{name:?}");
        }
    }

    #[test]
    fn refuses_names_that_escape_or_clash() {
        for (name, err) in [
            ("", NameError::Empty),
            ("/etc/passwd", NameError::Absolute),
            ("..", NameError::ParentSegment),
            ("../x", NameError::ParentSegment),
            ("a/../../x", NameError::ParentSegment),
            ("a/..", NameError::ParentSegment),
            ("a//b", NameError::EmptySegment),
            ("a/", NameError::EmptySegment),
            ("./a", NameError::EmptySegment),
            ("a/./b", NameError::EmptySegment),
            ("a\0b", NameError::Nul),
            ("index.txt", NameError::Reserved),
            (".index.txt.cache", NameError::Reserved),
            (".surfstore-tmp-abc", NameError::Reserved),
            ("d/.surfstore-tmp-abc", NameError::Reserved),
            (".surfstore-partial-abc", NameError::Reserved),
            ("d/e/.surfstore-partial-abc", NameError::Reserved),
        ] {
            assert_eq!(check(name), Err(err), "{name:?}");
        }
    }

    #[test]
    fn a_partial_download_is_named_for_its_file_and_version() {
        let base = Path::new("/base");
        let (v1, v2) = (vec![hash_block(b"1")], vec![hash_block(b"2")]);
        let partial = partial_path(base, "d/f", &v1);
        assert_eq!(partial.parent(), Some(Path::new("/base/d")));
        let file_name = partial.file_name().unwrap().to_str().unwrap();
        assert!(is_partial_download(file_name) && is_temp_file(file_name));
        assert_eq!(partial, partial_path(base, "d/f", &v1));
        assert_ne!(partial, partial_path(base, "d/f", &v2));
        // Two files of one folder with the same contents never share one.
        assert_ne!(partial, partial_path(base, "d/g", &v1));
        assert_ne!(
            partial_path(base, "d/f", &[]),
            partial_path(base, "d/g", &[])
        );
    }

    #[test]
    fn paths_use_platform_separators() {
        let base = Path::new("/base");
        assert_eq!(to_path(base, "a"), Path::new("/base/a"));
        assert_eq!(to_path(base, "d/e/f"), Path::new("/base/d/e/f"));
    }
}
