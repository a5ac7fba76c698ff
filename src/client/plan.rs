//! The sync decision, pure: from the local scan, `index.txt` and the remote
//! map, what to do with each file (SPEC §8 steps 3–4). Nothing here touches
//! the disk or the network, so every case is tested directly.
//!
//! Per name, with *local* the file on disk now (or nothing), *index* what the
//! last sync recorded and *remote* the server's entry:
//!
//! 1. remote holds exactly what is on disk (same hashes, or a tombstone and
//!    no file): nothing moves; the index adopts the remote entry;
//! 2. remote differs from the index (newer, unknown to the index, or another
//!    history): the server wins — download it, or delete the local file for
//!    a tombstone. A local change lost this way is a *conflict*;
//! 3. remote equals the index, so only the local side changed: upload the
//!    file (or a tombstone for a deletion) as remote version + 1;
//! 4. remote has no such file: upload what is on disk as version 1; with
//!    nothing on disk either, drop the name from the index.
//!
//! Names the server holds but that cannot be synced safely are refused;
//! names the scan skipped (symlinks, special files) and names the
//! `.surfignore` rules ignore are left alone: this is the one place those
//! rules apply to what is synced.

use std::collections::{BTreeMap, BTreeSet};

use super::index::{Entry, Index};
use super::names::{self, NameError};
use super::scan::Scan;
use super::surfignore::Rules;
use crate::hash::tombstone;

/// What to do with one file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Send the local state to the server: `entry.hashes` are the file's
    /// blocks (or a tombstone), `entry.version` the version to propose.
    Upload(Entry),
    /// Write the remote file into place.
    Download {
        /// The remote entry (not a tombstone).
        remote: Entry,
        /// Whether a local change is overwritten.
        conflict: bool,
    },
    /// Delete the local file: the remote entry is a tombstone.
    Delete {
        /// The remote tombstone.
        remote: Entry,
        /// Whether a local change is lost.
        conflict: bool,
    },
    /// The disk already matches the remote entry: only record it.
    Adopt(Entry),
    /// The file exists nowhere: drop it from the index.
    Forget,
}

/// What an action changes, as a person reads it (`--dry-run`, `-v`, the
/// summary's counts).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// The local file's content goes to the server.
    Upload,
    /// The server's content is written here.
    Download,
    /// The local file is deleted: the server holds a tombstone.
    DeleteHere,
    /// A local deletion goes to the server (as a tombstone).
    DeleteOnServer,
}

impl Change {
    /// The verb `--dry-run` prints before the file name.
    pub fn verb(self) -> &'static str {
        match self {
            Self::Upload => "upload",
            Self::Download => "download",
            Self::DeleteHere => "delete here",
            Self::DeleteOnServer => "delete on server",
        }
    }

    /// The participle `-v` prints before the file name once it is done.
    pub fn done(self) -> &'static str {
        match self {
            Self::Upload => "uploaded",
            Self::Download => "downloaded",
            Self::DeleteHere => "deleted here",
            Self::DeleteOnServer => "deleted on server",
        }
    }

    /// What an upload of `entry` does: a tombstone deletes.
    pub fn of_upload(entry: &Entry) -> Self {
        if entry.is_tombstone() {
            Self::DeleteOnServer
        } else {
            Self::Upload
        }
    }
}

impl Action {
    /// What carrying out the action changes and whether a local change
    /// loses to the server; `None` when only the index changes.
    pub fn change(&self) -> Option<(Change, bool)> {
        match self {
            Self::Upload(entry) => Some((Change::of_upload(entry), false)),
            Self::Download { conflict, .. } => Some((Change::Download, *conflict)),
            Self::Delete { conflict, .. } => Some((Change::DeleteHere, *conflict)),
            Self::Adopt(_) | Self::Forget => None,
        }
    }
}

/// The actions of one sync, by file name.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Plan {
    /// What to do, per file; files not listed need nothing.
    pub actions: BTreeMap<String, Action>,
    /// Remote names that cannot be synced safely, and why.
    pub refused: BTreeMap<String, NameError>,
}

impl Plan {
    /// The plan as `--dry-run` prints it: one line per file that would
    /// change (`upload  NAME`, `conflict  NAME: ...`), then the names
    /// refused; files whose only change is in index.txt are left out.
    pub fn lines(&self) -> Vec<String> {
        let changes = self.actions.iter().filter_map(|(name, action)| {
            let (change, conflict) = action.change()?;
            Some(match (change, conflict) {
                (change, false) => format!("{:<17}{name}", change.verb()),
                (Change::DeleteHere, true) => format!(
                    "{:<17}{name}: deleted on the server, changed here; the local version is saved"
                , "conflict"),
                (_, true) => format!(
                    "{:<17}{name}: changed on both sides; the server's version wins, the local one is saved",
                    "conflict"
                ),
            })
        });
        let refused = self
            .refused
            .iter()
            .map(|(name, error)| format!("{:<17}{name:?}: {error}", "refuse"));
        changes.chain(refused).collect()
    }
}

/// Decides what to do with every file known locally, in the index or
/// remotely, but those `ignored` (whose index entries stay as they are).
pub fn plan(scan: &Scan, index: &Index, remote: &BTreeMap<String, Entry>, ignored: &Rules) -> Plan {
    let mut plan = Plan::default();
    let names: BTreeSet<&String> = scan
        .files
        .keys()
        .chain(index.keys())
        .chain(remote.keys())
        .collect();
    for name in names {
        if scan.skipped.contains(name) {
            continue;
        }
        if let Err(e) = names::check(name) {
            plan.refused.insert(name.clone(), e);
            continue;
        }
        if ignored.is_ignored(name) {
            continue;
        }
        let local = scan.files.get(name).map(Vec::as_slice);
        if let Some(action) = decide(local, index.get(name), remote.get(name)) {
            plan.actions.insert(name.clone(), action);
        }
    }
    plan
}

/// A sign that index.txt was written with another block size: a file the
/// index lists in several blocks that now hashes to a different first
/// block and another block count, while no multi-block file still has its
/// first block. An unchanged file hashed with another block size looks
/// exactly so; an edited file alone cannot, unless it is the only one with
/// several blocks. Returns that file's name, its recorded block count and
/// its count now.
pub fn block_size_changed(scan: &Scan, index: &Index) -> Option<(String, usize, usize)> {
    let mut changed = None;
    for (name, entry) in index {
        let Some(now) = scan.files.get(name) else {
            continue;
        };
        if entry.is_tombstone() || entry.hashes.len() < 2 || now.len() < 2 {
            continue;
        }
        if now[0] == entry.hashes[0] {
            return None;
        }
        if now.len() != entry.hashes.len() && changed.is_none() {
            changed = Some((name.clone(), entry.hashes.len(), now.len()));
        }
    }
    changed
}

/// The decision for one file (see the module docs); `None` when nothing is
/// to be done.
pub fn decide(
    local: Option<&[String]>,
    index: Option<&Entry>,
    remote: Option<&Entry>,
) -> Option<Action> {
    match remote {
        Some(remote) if Some(remote) != index || matches_disk(local, remote) => {
            take_remote(local, index, remote)
        }
        Some(remote) => Some(Action::Upload(Entry {
            version: remote.version.saturating_add(1),
            hashes: local.map_or_else(tombstone, <[String]>::to_vec),
        })),
        None => match local {
            Some(hashes) => Some(Action::Upload(Entry {
                version: 1,
                hashes: hashes.to_vec(),
            })),
            None => index.map(|_| Action::Forget),
        },
    }
}

/// How to make the local side hold `remote` (the server wins): also what a
/// rejected upload turns into once the winning remote entry is known.
pub fn take_remote(
    local: Option<&[String]>,
    index: Option<&Entry>,
    remote: &Entry,
) -> Option<Action> {
    if matches_disk(local, remote) {
        return (Some(remote) != index).then(|| Action::Adopt(remote.clone()));
    }
    let conflict = changed_since(local, index);
    let remote = remote.clone();
    Some(if remote.is_tombstone() {
        Action::Delete { remote, conflict }
    } else {
        Action::Download { remote, conflict }
    })
}

/// Whether the disk holds what `entry` describes.
fn matches_disk(local: Option<&[String]>, entry: &Entry) -> bool {
    match local {
        Some(hashes) => !entry.is_tombstone() && hashes == entry.hashes.as_slice(),
        None => entry.is_tombstone(),
    }
}

/// Whether the file changed locally since the index was written.
fn changed_since(local: Option<&[String]>, index: Option<&Entry>) -> bool {
    match index {
        Some(entry) => !matches_disk(local, entry),
        None => local.is_some(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hash::hash_block;

    fn h(content: &str) -> Vec<String> {
        vec![hash_block(content.as_bytes())]
    }

    fn e(version: i32, hashes: Vec<String>) -> Entry {
        Entry { version, hashes }
    }

    fn dl(version: i32, hashes: Vec<String>, conflict: bool) -> Option<Action> {
        Some(Action::Download {
            remote: e(version, hashes),
            conflict,
        })
    }

    fn del(version: i32, conflict: bool) -> Option<Action> {
        Some(Action::Delete {
            remote: e(version, tombstone()),
            conflict,
        })
    }

    fn up(version: i32, hashes: Vec<String>) -> Option<Action> {
        Some(Action::Upload(e(version, hashes)))
    }

    fn adopt(version: i32, hashes: Vec<String>) -> Option<Action> {
        Some(Action::Adopt(e(version, hashes)))
    }

    /// What a case is called, local state, index entry, remote entry, and
    /// the expected decision.
    type Case<'a> = (
        &'a str,
        Option<&'a [String]>,
        Option<Entry>,
        Option<Entry>,
        Option<Action>,
    );

    /// The whole decision table: local state × index × remote.
    #[test]
    fn decision_table() {
        let (a, b, c) = (h("a"), h("b"), h("c"));
        let empty: Vec<String> = vec![];
        let t = tombstone();
        let la = Some(a.as_slice());
        let lb = Some(b.as_slice());
        let lempty = Some(empty.as_slice());
        let none: Option<&[String]> = None;
        #[rustfmt::skip]
        let cases: Vec<Case> = vec![
            // Nothing remote.
            ("new local file",                 la,    None,             None,             up(1, a.clone())),
            ("new empty file",                 lempty, None,            None,             up(1, vec![])),
            ("server forgot an unchanged file", la,   Some(e(3, a.clone())), None,        up(1, a.clone())),
            ("server forgot, local modified",  lb,    Some(e(3, a.clone())), None,        up(1, b.clone())),
            ("deleted, server never had it",   none,  Some(e(3, a.clone())), None,        Some(Action::Forget)),
            ("tombstone the server forgot",    none,  Some(e(3, t.clone())), None,        Some(Action::Forget)),
            // Remote equals the index: only local changes matter.
            ("unchanged everywhere",           la,    Some(e(2, a.clone())), Some(e(2, a.clone())), None),
            ("deleted everywhere",             none,  Some(e(2, t.clone())), Some(e(2, t.clone())), None),
            ("local modification",             lb,    Some(e(2, a.clone())), Some(e(2, a.clone())), up(3, b.clone())),
            ("local file emptied",             lempty, Some(e(2, a.clone())), Some(e(2, a.clone())), up(3, vec![])),
            ("local deletion",                 none,  Some(e(2, a.clone())), Some(e(2, a.clone())), up(3, t.clone())),
            ("recreated after deletion",       lb,    Some(e(2, t.clone())), Some(e(2, t.clone())), up(3, b.clone())),
            // Remote newer than the index.
            ("remote modification",            la,    Some(e(2, a.clone())), Some(e(3, b.clone())), dl(3, b.clone(), false)),
            ("remote deletion",                la,    Some(e(2, a.clone())), Some(e(3, t.clone())), del(3, false)),
            ("remote recreation",              none,  Some(e(2, t.clone())), Some(e(3, b.clone())), dl(3, b.clone(), false)),
            ("both modified: server wins",     lb,    Some(e(2, a.clone())), Some(e(3, c.clone())), dl(3, c.clone(), true)),
            ("local delete, remote modify",    none,  Some(e(2, a.clone())), Some(e(3, c.clone())), dl(3, c.clone(), true)),
            ("local modify, remote delete",    lb,    Some(e(2, a.clone())), Some(e(3, t.clone())), del(3, true)),
            ("deleted on both sides",          none,  Some(e(2, a.clone())), Some(e(3, t.clone())), adopt(3, t.clone())),
            ("same change on both sides",      lb,    Some(e(2, a.clone())), Some(e(3, b.clone())), adopt(3, b.clone())),
            ("recreated on both, differently", lb,    Some(e(2, t.clone())), Some(e(3, c.clone())), dl(3, c.clone(), true)),
            // Remote unknown to the index.
            ("remote new file",                none,  None,             Some(e(1, a.clone())), dl(1, a.clone(), false)),
            ("remote new empty file",          none,  None,             Some(e(1, vec![])), dl(1, vec![], false)),
            ("remote tombstone, nothing here", none,  None,             Some(e(4, t.clone())), adopt(4, t.clone())),
            ("identical file already here",    la,    None,             Some(e(2, a.clone())), adopt(2, a.clone())),
            ("different file here: server wins", lb,  None,             Some(e(2, a.clone())), dl(2, a.clone(), true)),
            ("remote tombstone, file here",    lb,    None,             Some(e(2, t.clone())), del(2, true)),
            // Remote older than the index or another history (server reset).
            ("remote older, disk matches it",  la,    Some(e(5, b.clone())), Some(e(1, a.clone())), adopt(1, a.clone())),
            ("remote older, index matches disk", lb,  Some(e(5, b.clone())), Some(e(1, a.clone())), dl(1, a.clone(), false)),
            ("same version, other content",    la,    Some(e(2, a.clone())), Some(e(2, c.clone())), dl(2, c.clone(), false)),
            ("index stale, disk matches remote", la,  Some(e(2, b.clone())), Some(e(2, a.clone())), adopt(2, a.clone())),
        ];
        for (what, local, index, remote, expected) in cases {
            assert_eq!(
                decide(local, index.as_ref(), remote.as_ref()),
                expected,
                "{what}"
            );
        }
    }

    #[test]
    fn version_overflow_does_not_panic() {
        let a = h("a");
        let entry = e(i32::MAX, a.clone());
        let b = h("b");
        assert_eq!(
            decide(Some(&b), Some(&entry), Some(&entry)),
            up(i32::MAX, b.clone())
        );
    }

    #[test]
    fn rejected_upload_takes_the_winner() {
        let (a, b, c) = (h("a"), h("b"), h("c"));
        let index = e(2, a.clone());
        assert_eq!(
            take_remote(Some(&b), Some(&index), &e(3, c.clone())),
            dl(3, c, true)
        );
        assert_eq!(
            take_remote(Some(&b), Some(&index), &e(3, tombstone())),
            del(3, true)
        );
        // Our own upload won after all (e.g. retried after a timeout).
        assert_eq!(
            take_remote(Some(&b), Some(&index), &e(3, b.clone())),
            adopt(3, b)
        );
    }

    #[test]
    fn another_block_size_is_told_from_edits() {
        let blocks =
            |s: &str| -> Vec<String> { s.chars().map(|c| hash_block(&[c as u8])).collect() };
        let scan = |files: &[(&str, &str)]| Scan {
            files: files
                .iter()
                .map(|(n, b)| (n.to_string(), blocks(b)))
                .collect(),
            ..Scan::default()
        };
        let index = Index::from([
            ("big".to_string(), e(1, blocks("abcd"))),
            ("other".to_string(), e(1, blocks("wxyz"))),
            ("small".to_string(), e(1, blocks("s"))),
        ]);
        // Hashed in blocks twice as large: every first block differs.
        assert_eq!(
            block_size_changed(
                &scan(&[("big", "AB"), ("other", "WX"), ("small", "S")]),
                &index
            ),
            Some(("big".to_string(), 4, 2))
        );
        // One file edited: the other still has its first block.
        assert_eq!(
            block_size_changed(
                &scan(&[("big", "AB"), ("other", "wxyz"), ("small", "s")]),
                &index
            ),
            None
        );
        // Edited at the start but the same block count: an edit.
        assert_eq!(block_size_changed(&scan(&[("big", "Abcd")]), &index), None);
        // Nothing with several blocks on both sides: no evidence.
        assert_eq!(block_size_changed(&scan(&[("small", "S")]), &index), None);
    }

    #[test]
    fn ignored_names_are_neither_uploaded_deleted_on_the_server_nor_downloaded() {
        let (a, b) = (h("a"), h("b"));
        let scan = Scan {
            files: BTreeMap::from([
                ("new.tmp".to_string(), a.clone()),
                ("kept.txt".to_string(), a.clone()),
                (".surfignore".to_string(), b.clone()),
            ]),
            ..Scan::default()
        };
        // build/old.o was synced before the rule and is deleted here now.
        let index = Index::from([("build/old.o".to_string(), e(1, a.clone()))]);
        let remote = BTreeMap::from([
            ("build/old.o".to_string(), e(1, a.clone())),
            ("remote.tmp".to_string(), e(1, b.clone())),
        ]);
        let rules = Rules::parse("*.tmp\nbuild/\n", std::path::Path::new(".surfignore")).unwrap();
        let plan = plan(&scan, &index, &remote, &rules);
        assert_eq!(
            plan.actions,
            BTreeMap::from([
                ("kept.txt".to_string(), Action::Upload(e(1, a.clone()))),
                (".surfignore".to_string(), Action::Upload(e(1, b.clone()))),
            ])
        );
    }

    #[test]
    fn plan_covers_every_name_refuses_unsafe_ones_and_skips_symlinks() {
        let (a, b) = (h("a"), h("b"));
        let scan = Scan {
            files: BTreeMap::from([
                ("local-new".to_string(), a.clone()),
                ("same".to_string(), a.clone()),
            ]),
            skipped: BTreeSet::from(["link".to_string()]),
            ..Scan::default()
        };
        let index = Index::from([
            ("same".to_string(), e(1, a.clone())),
            ("gone".to_string(), e(1, a.clone())),
        ]);
        let remote = BTreeMap::from([
            ("same".to_string(), e(1, a.clone())),
            ("gone".to_string(), e(1, a.clone())),
            ("remote-new".to_string(), e(1, b.clone())),
            ("link".to_string(), e(1, b.clone())),
            ("../escape".to_string(), e(1, b.clone())),
            ("/abs".to_string(), e(1, b.clone())),
            ("index.txt".to_string(), e(1, b.clone())),
        ]);
        let plan = plan(&scan, &index, &remote, &Rules::default());
        assert_eq!(
            plan.actions,
            BTreeMap::from([
                ("local-new".to_string(), Action::Upload(e(1, a.clone()))),
                ("gone".to_string(), Action::Upload(e(2, tombstone()))),
                (
                    "remote-new".to_string(),
                    Action::Download {
                        remote: e(1, b.clone()),
                        conflict: false
                    }
                ),
            ])
        );
        assert_eq!(
            plan.refused,
            BTreeMap::from([
                ("../escape".to_string(), NameError::ParentSegment),
                ("/abs".to_string(), NameError::Absolute),
                ("index.txt".to_string(), NameError::Reserved),
            ])
        );
    }
}
