//! Names of conflict copies (`--keep-conflicts`).
//!
//! When the server wins over a local change, the losing local file can be
//! kept beside the file as `NAME.conflict-YYYYMMDD-HHMMSS` (the time of the
//! sync, UTC), like Syncthing's `sync-conflict` files. A conflict copy is an
//! ordinary file: the next run uploads it like any new file, so the losing
//! version reaches every client and nothing is lost anywhere.

use std::time::{SystemTime, UNIX_EPOCH};

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
    fn names_keep_the_directory_and_number_retries() {
        let t = at(1_795_470_301);
        assert_eq!(copy_name("a.txt", t, 0), "a.txt.conflict-20261123-214501");
        assert_eq!(
            copy_name("d/e/report", t, 2),
            "d/e/report.conflict-20261123-214501-2"
        );
    }
}
