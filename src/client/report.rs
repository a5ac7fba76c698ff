//! What one run did, and the single summary line the client prints for it:
//!
//! ```text
//! synced in 1.2s: 3 uploaded, 1 downloaded, 0 deleted, 0 conflicts; sent 12.0 MiB, received 4.0 MiB, 17 blocks already on server
//! ```
//!
//! `deleted` counts deletions both ways: local files deleted because the
//! server holds a tombstone, and local deletions sent to the server.
//!
//! The conflict count says where the losing local versions were saved:
//! `2 conflicts (2 saved in FOLDER)` outside the base directory, `2
//! conflicts (2 kept as .conflict- copies)` beside the files with
//! `--keep-conflicts`. Files that could not be synced add `, N failed`
//! after the conflicts.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use super::plan::{Change, Plan};
use super::sync::FileError;

/// How many files a run changed, and how.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    /// Files whose new content was sent to the server.
    pub uploaded: usize,
    /// Files written from the server's copy.
    pub downloaded: usize,
    /// Deletions, either way: local files deleted because the server holds
    /// a tombstone, and local deletions sent to the server.
    pub deleted: usize,
    /// Local changes the server's newer version won over.
    pub conflicts: usize,
}

impl Counts {
    /// Counts one file's change.
    pub fn add(&mut self, change: Change, conflict: bool) {
        match change {
            Change::Upload => self.uploaded += 1,
            Change::Download => self.downloaded += 1,
            Change::DeleteHere | Change::DeleteOnServer => self.deleted += 1,
        }
        self.conflicts += usize::from(conflict);
    }

    /// The changes `plan` would make.
    pub fn of_plan(plan: &Plan) -> Self {
        let mut counts = Self::default();
        for (change, conflict) in plan.actions.values().filter_map(|a| a.change()) {
            counts.add(change, conflict);
        }
        counts
    }

    /// Whether nothing changed.
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

impl fmt::Display for Counts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} uploaded, {} downloaded, {} deleted, {} conflict{}",
            self.uploaded,
            self.downloaded,
            self.deleted,
            self.conflicts,
            if self.conflicts == 1 { "" } else { "s" }
        )
    }
}

/// The last line of `--dry-run`: what a sync would do now.
pub fn dry_run_summary(plan: &Plan) -> String {
    let refused = match plan.refused.len() {
        0 => String::new(),
        n => format!(", {n} refused"),
    };
    format!(
        "dry run, nothing changed; a sync now would give: {}{refused}",
        Counts::of_plan(plan)
    )
}

/// What a run did.
#[derive(Debug, Default)]
pub struct Report {
    /// The files changed.
    pub counts: Counts,
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
    /// Files left alone because they changed too recently (see
    /// [`super::sync::Options::settle`]).
    pub unsettled: usize,
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "synced in {:.1}s: {}",
            self.elapsed.as_secs_f64(),
            self.counts
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
    fn deletions_count_as_deletions_both_ways_and_a_dry_run_says_so() {
        use crate::client::index::Entry;
        use crate::client::plan::Action;
        use crate::hash::tombstone;
        let mut plan = Plan::default();
        let gone = Entry {
            version: 2,
            hashes: tombstone(),
        };
        plan.actions
            .insert("sent".into(), Action::Upload(gone.clone()));
        plan.actions.insert(
            "here".into(),
            Action::Delete {
                remote: gone.clone(),
                conflict: true,
            },
        );
        plan.actions.insert("known".into(), Action::Adopt(gone));
        assert_eq!(
            dry_run_summary(&plan),
            "dry run, nothing changed; a sync now would give: 0 uploaded, 0 downloaded, 2 deleted, 1 conflict"
        );
        assert_eq!(
            plan.lines(),
            [
                "conflict         here: deleted on the server, changed here; the local version is saved",
                "delete on server sent",
            ]
        );
    }

    #[test]
    fn the_summary_is_one_line() {
        let mut report = Report {
            counts: Counts {
                uploaded: 3,
                downloaded: 1,
                ..Counts::default()
            },
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
        report.counts.conflicts = 1;
        let line = report.to_string();
        assert!(line.contains(", 1 conflict; sent"), "{line}");
        report.counts.conflicts = 2;
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
