//! Where the losing side of a conflict is saved (SPEC §8: a user's edit is
//! never lost silently).
//!
//! When the server wins over a local change, the losing local file is first
//! saved as `NAME.conflict-YYYYMMDD-HHMMSS` (the time of the sync, UTC; a
//! `-1`, `-2`, ... follows for a second conflict of the file within a
//! second), like Syncthing's `sync-conflict` files. By default the copy goes
//! outside the base directory, because the original's test suites compare
//! whole directory listings between clients: under
//! `$XDG_STATE_HOME/surfstore/conflicts/` (`~/.local/state/...` when
//! XDG_STATE_HOME is unset), in one folder per base directory named
//! `BASENAME-HASH` (HASH: the first 16 hex digits of the SHA-256 of the
//! base directory's canonical path), under the file's relative path. With
//! `--keep-conflicts` the copy stays beside the file: an ordinary file that
//! the next run uploads like any new one, so the losing version reaches
//! every client.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::hash::hash_block;

/// Where the losing local versions of a run's conflicts are saved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Copies {
    /// Beside the file in the base directory (`--keep-conflicts`).
    Beside,
    /// In the per-base-directory folder below this one (see the module
    /// docs); `None` when the environment names no such place, and a
    /// conflict then fails its file instead of losing the local version.
    Outside(Option<PathBuf>),
}

/// The conflicts folder the environment names:
/// `$XDG_STATE_HOME/surfstore/conflicts`, or `$HOME/.local/state/...` when
/// XDG_STATE_HOME is unset or not absolute (the XDG spec has relative
/// values ignored); `None` without either.
pub fn state_dir(xdg_state_home: Option<OsString>, home: Option<OsString>) -> Option<PathBuf> {
    let state = xdg_state_home
        .map(PathBuf::from)
        .filter(|dir| dir.is_absolute())
        .or_else(|| {
            home.filter(|home| !home.is_empty())
                .map(|home| Path::new(&home).join(".local/state"))
        })?;
    Some(state.join("surfstore/conflicts"))
}

/// [`state_dir`] of this process's environment.
pub fn state_dir_from_env() -> Option<PathBuf> {
    state_dir(std::env::var_os("XDG_STATE_HOME"), std::env::var_os("HOME"))
}

/// The folder below `conflicts` for the base directory whose canonical path
/// is `base`: its name, for people, and a hash of the whole path, so two
/// base directories of the same name never share a folder.
pub fn folder_for_base(conflicts: &Path, base: &Path) -> PathBuf {
    let hash = hash_block(base.as_os_str().as_encoded_bytes());
    let name = base
        .file_name()
        .map_or_else(|| "root".into(), |name| name.to_string_lossy());
    conflicts.join(format!("{name}-{}", &hash[..16]))
}

/// What separates a file's name from the conflict stamp.
pub const MARKER: &str = ".conflict-";

/// The name of the conflict copy of `name` made at `at`. `attempt` 0 is the
/// plain name; later attempts add `-1`, `-2`, ... for when that name is
/// taken (two conflicts of one file within a second).
pub fn copy_name(name: &str, at: SystemTime, attempt: u32) -> String {
    let stamp = timestamp(at);
    match attempt {
        0 => format!("{name}{MARKER}{stamp}"),
        n => format!("{name}{MARKER}{stamp}-{n}"),
    }
}

/// `YYYYMMDD-HHMMSS` in UTC.
fn timestamp(at: SystemTime) -> String {
    let secs = at
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let (days, rest) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}{month:02}{day:02}-{:02}{:02}{:02}",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    )
}

/// The proleptic Gregorian date of `days` since 1970-01-01 (Howard
/// Hinnant's `civil_from_days`); saves a date-time dependency for one
/// format.
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn stamps_are_utc_calendar_times() {
        assert_eq!(timestamp(at(0)), "19700101-000000");
        // 2026-11-23 21:45:01 UTC.
        assert_eq!(timestamp(at(1_795_470_301)), "20261123-214501");
        // Leap day and the last second of a year.
        assert_eq!(timestamp(at(951_782_400)), "20000229-000000");
        assert_eq!(timestamp(at(1_704_067_199)), "20231231-235959");
    }

    #[test]
    fn the_state_dir_follows_xdg_and_falls_back_to_home() {
        let some = |s: &str| Some(OsString::from(s));
        assert_eq!(
            state_dir(some("/xdg"), some("/home/u")),
            Some(PathBuf::from("/xdg/surfstore/conflicts"))
        );
        for xdg in [None, some("relative/state")] {
            assert_eq!(
                state_dir(xdg, some("/home/u")),
                Some(PathBuf::from("/home/u/.local/state/surfstore/conflicts"))
            );
        }
        assert_eq!(state_dir(None, None), None);
        assert_eq!(state_dir(some(""), some("")), None);
    }

    #[test]
    fn each_base_directory_has_its_own_folder() {
        let conflicts = Path::new("/state/conflicts");
        let a = folder_for_base(conflicts, Path::new("/home/u/notes"));
        let b = folder_for_base(conflicts, Path::new("/mnt/other/notes"));
        assert_ne!(a, b);
        assert_eq!(a.parent(), Some(conflicts));
        let name = a.file_name().unwrap().to_str().unwrap();
        let (base, hash) = name.split_once('-').unwrap();
        assert_eq!((base, hash.len()), ("notes", 16));
        assert_eq!(a, folder_for_base(conflicts, Path::new("/home/u/notes")));
        assert_eq!(
            folder_for_base(conflicts, Path::new("/")).parent(),
            Some(conflicts)
        );
    }

    #[test]
    fn names_keep_the_directory_and_number_retries() {
        let t = at(1_795_470_301);
        assert_eq!(copy_name("a.txt", t, 0), "a.txt.conflict-20261123-214501");
        assert_eq!(
            copy_name("d/e/report", t, 2),
            "d/e/report.conflict-20261123-214501-2"
        );
    }
}
