//! What one run did, and the single summary line the client prints for it:
//!
//! ```text
//! synced in 1.2s: 3 uploaded, 1 downloaded, 0 deleted, 0 conflicts; sent 12.0 MiB, received 4.0 MiB, 17 blocks already on server
//! ```
//!
//! The conflict count says where the losing local versions were saved:
//! `2 conflicts (2 saved in FOLDER)` outside the base directory, `2
//! conflicts (2 kept as .conflict- copies)` beside the files with
//! `--keep-conflicts`. Files that could not be synced add `, N failed`
//! after the conflicts.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use super::sync::FileError;

/// What a run did.
#[derive(Debug, Default)]
pub struct Report {
    /// Files whose new content or deletion was sent to the server.
    pub uploaded: usize,
    /// Files written from the server's copy.
    pub downloaded: usize,
    /// Local files deleted because the server holds a tombstone.
    pub deleted: usize,
    /// Local changes the server's newer version won over.
    pub conflicts: usize,
    /// Paths of the conflict copies saved.
    pub conflict_copies: Vec<PathBuf>,
    /// The folder outside the base directory that conflict copies go below;
    /// `None` when they are kept beside the files.
    pub conflict_folder: Option<PathBuf>,
    /// Block bytes sent to the BlockStore.
    pub bytes_sent: u64,
    /// Block bytes received from the BlockStore.
    pub bytes_received: u64,
    /// Blocks not sent because the BlockStore already had them.
    pub blocks_on_server: u64,
    /// How long the run took.
    pub elapsed: Duration,
    /// Files that could not be synced this time, and why.
    pub failures: Vec<(String, FileError)>,
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "synced in {:.1}s: {} uploaded, {} downloaded, {} deleted, {} conflicts",
            self.elapsed.as_secs_f64(),
            self.uploaded,
            self.downloaded,
            self.deleted,
            self.conflicts
        )?;
        let copies = self.conflict_copies.len();
        match &self.conflict_folder {
            _ if copies == 0 => {}
            Some(folder) => write!(f, " ({copies} saved in {})", folder.display())?,
            None => write!(f, " ({copies} kept as .conflict- copies)")?,
        }
        if !self.failures.is_empty() {
            write!(f, ", {} failed", self.failures.len())?;
        }
        write!(
            f,
            "; sent {}, received {}, {} blocks already on server",
            Bytes(self.bytes_sent),
            Bytes(self.bytes_received),
            self.blocks_on_server
        )
    }
}

/// A byte count in binary units with one decimal (`512 B`, `4.0 MiB`).
struct Bytes(u64);

impl fmt::Display for Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const UNITS: [&str; 6] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
        if self.0 < 1024 {
            return write!(f, "{} B", self.0);
        }
        let mut value = self.0 as f64 / 1024.0;
        let mut unit = 0;
        while value >= 1024.0 && unit + 1 < UNITS.len() {
            value /= 1024.0;
            unit += 1;
        }
        write!(f, "{value:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_counts_read_naturally() {
        for (n, text) in [
            (0, "0 B"),
            (1023, "1023 B"),
            (1024, "1.0 KiB"),
            (12 << 20, "12.0 MiB"),
            ((4 << 30) + (512 << 20), "4.5 GiB"),
            (u64::MAX, "16.0 EiB"),
        ] {
            assert_eq!(Bytes(n).to_string(), text);
        }
    }

    #[test]
    fn the_summary_is_one_line() {
        let mut report = Report {
            uploaded: 3,
            downloaded: 1,
            bytes_sent: 12 << 20,
            bytes_received: 4 << 20,
            blocks_on_server: 17,
            elapsed: Duration::from_millis(1234),
            ..Report::default()
        };
        assert_eq!(
            report.to_string(),
            "synced in 1.2s: 3 uploaded, 1 downloaded, 0 deleted, 0 conflicts; \
             sent 12.0 MiB, received 4.0 MiB, 17 blocks already on server"
        );
        report.conflicts = 2;
        report.conflict_copies = vec!["a.conflict-x".into(), "b.conflict-x".into()];
        report.failures.push(("f".into(), FileError::Vanished(3)));
        let line = report.to_string();
        assert!(
            line.contains("2 conflicts (2 kept as .conflict- copies), 1 failed; sent"),
            "{line}"
        );
        assert!(!line.contains('\n'));
        report.conflict_folder = Some("/state/conflicts/base-0123".into());
        let line = report.to_string();
        assert!(
            line.contains("2 conflicts (2 saved in /state/conflicts/base-0123), 1 failed"),
            "{line}"
        );
    }
}
