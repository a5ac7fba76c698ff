//! `--watch` (SPEC §9.5): sync once, then again whenever the base directory
//! or the server's map changes, until the caller drops the future (Ctrl-C).
//!
//! Three sources wake the loop, through one channel, and a burst of wake-ups
//! makes one sync:
//!
//! - the file system: `notify`'s events, debounced over [`SETTLE`]; the
//!   client's own files and ignored paths wake nothing. A file changed less
//!   than [`SETTLE`] before a sync is left alone by it (it may still be
//!   being written) and the loop looks again once it may have settled, so
//!   a file is synced once it is stable, not in its halves;
//! - the server's `MapWatch` stream: a version other than the last one seen
//!   (the first one of each stream counts, in case changes were missed while
//!   it was down);
//! - polling the map every `interval`, waking on a difference: all a server
//!   without the stream (UNIMPLEMENTED, e.g. the original's) offers, and
//!   the safety net under a stream from a server that stopped applying
//!   changes without closing it (a crashed or deposed Raft leader).
//!
//! A sync that fails is tried again with backoff; the caller's
//! [`Announcer`] says each failure once, not once per attempt. Dropping the
//! future mid-sync is safe: every change to the base directory is a rename
//! of a finished file and index.txt is replaced whole.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use notify::RecursiveMode;
use notify_debouncer_full::{DebounceEventResult, Debouncer, RecommendedCache, new_debouncer};
use tokio::sync::mpsc;

use super::index::Entry;
use super::names;
use super::report::Report;
use super::rpc::MetaStore;
use super::surfignore::Rules;
use super::sync::{Options, SyncError, sync};
use crate::backoff::Backoff;

/// How long a path must be quiet before its events wake the loop.
pub const SETTLE: Duration = Duration::from_millis(500);

/// The first pause after a failed sync or a lost stream; pauses double up
/// to [`MAX_PAUSE`].
const FIRST_PAUSE: Duration = Duration::from_millis(500);

/// The longest pause between attempts to reach a server that is gone.
const MAX_PAUSE: Duration = Duration::from_secs(30);

/// Why watching could not start.
#[derive(Debug, thiserror::Error)]
#[error("cannot watch {path} for changes: {source}")]
pub struct WatchError {
    /// The base directory.
    pub path: PathBuf,
    /// What the file system watcher said.
    pub source: notify::Error,
}

/// Says each outcome of the watch loop once: a failure repeated attempt
/// after attempt is said the first time, and its end once.
#[derive(Debug, Default)]
pub struct Announcer {
    failing: Option<String>,
}

impl Announcer {
    /// The line to print for the outcome of one sync, if any: a failure
    /// unlike the last, or the first success after failures.
    pub fn outcome(&mut self, outcome: &Result<Report, SyncError>) -> Option<String> {
        match outcome {
            Ok(_) => self.failing.take().map(|_| "in sync again".to_string()),
            Err(error) => {
                let message = format!("{error}; retrying until it works (Ctrl-C to stop)");
                (self.failing.as_ref() != Some(&message)).then(|| {
                    self.failing = Some(message.clone());
                    message
                })
            }
        }
    }
}

/// Why the loop wakes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Wake {
    Local,
    Remote,
    /// A pause ended: after a failure, or for files to settle.
    Timer,
}

/// Syncs `base` now and after every change, forever; `shown` gets every
/// sync's outcome. `options.settle` should be [`SETTLE`]. Returns only if
/// watching cannot start.
pub async fn watch(
    base: &Path,
    options: &Options,
    meta: &MetaStore,
    interval: Duration,
    mut shown: impl FnMut(Result<Report, SyncError>),
) -> Result<(), WatchError> {
    let (wake, mut woken) = mpsc::unbounded_channel();
    let _local = watch_local(base, wake.clone())?;
    let syncing = async {
        let mut backoff = Backoff::new(FIRST_PAUSE, MAX_PAUSE);
        loop {
            let outcome = sync(base, options, meta).await;
            let pause = match &outcome {
                Err(_) => Some(backoff.next_delay()),
                // Files still being written: look again once they may
                // have settled, even if nothing else happens.
                Ok(report) if report.unsettled > 0 => Some(SETTLE),
                Ok(_) => None,
            };
            if outcome.is_ok() {
                backoff.reset();
            }
            shown(outcome);
            let woken_by = match pause {
                Some(pause) => tokio::time::timeout(pause, woken.recv())
                    .await
                    .unwrap_or(Some(Wake::Timer)),
                None => woken.recv().await,
            };
            match woken_by {
                Some(why) => tracing::debug!(?why, "syncing"),
                None => return,
            }
            // Whatever else woke the loop meanwhile is covered by the next
            // sync.
            while woken.try_recv().is_ok() {}
        }
    };
    tokio::select! {
        () = syncing => {},
        () = watch_remote(meta, interval, &wake) => {},
    }
    Ok(())
}

/// Starts the debounced file system watcher on `base`; it wakes the loop
/// until it is dropped.
fn watch_local(
    base: &Path,
    wake: mpsc::UnboundedSender<Wake>,
) -> Result<Debouncer<notify::RecommendedWatcher, RecommendedCache>, WatchError> {
    let error = |source| WatchError {
        path: base.to_path_buf(),
        source,
    };
    // Events name absolute paths; the base's own may differ from `base`.
    let root = std::fs::canonicalize(base).map_err(|e| error(e.into()))?;
    let watched = root.clone();
    let mut debouncer = new_debouncer(SETTLE, None, move |result: DebounceEventResult| {
        match result {
            Ok(events) => {
                let relevant = |path: &PathBuf| wakes_the_loop(&root, path);
                if events.iter().any(|event| event.paths.iter().any(relevant)) {
                    let _ = wake.send(Wake::Local);
                }
            }
            // E.g. inotify's queue overflowed: a sync catches up either way.
            Err(errors) => {
                tracing::debug!(?errors, "file system watcher errors");
                let _ = wake.send(Wake::Local);
            }
        }
    })
    .map_err(error)?;
    debouncer
        .watch(&watched, RecursiveMode::Recursive)
        .map_err(error)?;
    Ok(debouncer)
}

/// Whether a change to `path` below `root` may need a sync: not for the
/// client's own files (index.txt, temporary files, partial downloads, the
/// hash cache), which every sync writes, nor for ignored paths.
fn wakes_the_loop(root: &Path, path: &Path) -> bool {
    let Ok(relative) = path.strip_prefix(root) else {
        return true;
    };
    let Some(name) = relative.to_str() else {
        return true;
    };
    let name = name.replace(std::path::MAIN_SEPARATOR, "/");
    if names::is_reserved(&name) {
        return false;
    }
    // Rules that cannot be read wake the loop, whose sync then says why.
    Rules::load(root).map_or(true, |rules| !rules.is_ignored(&name))
}

/// Wakes the loop on remote changes, never returning: as the `MapWatch`
/// stream announces them, and by polling every `interval` in any case. The
/// poll is what a server without the stream gets, and what catches changes
/// a stream cannot announce: one from a server that stopped applying
/// (crashed, or no longer the leader) but did not close it.
async fn watch_remote(meta: &MetaStore, interval: Duration, wake: &mpsc::UnboundedSender<Wake>) {
    tokio::join!(follow_stream(meta, wake), poll(meta, interval, wake));
}

/// Wakes the loop on each new version the `MapWatch` stream announces,
/// reconnecting (to whichever server answered the client last) when it
/// ends; returns against a server without it.
async fn follow_stream(meta: &MetaStore, wake: &mpsc::UnboundedSender<Wake>) {
    let mut backoff = Backoff::new(FIRST_PAUSE, MAX_PAUSE);
    loop {
        match meta.watch_map().await {
            Ok(mut stream) => {
                backoff.reset();
                let mut last = None;
                while let Ok(Some(seen)) = stream.message().await {
                    if last.replace(seen.version) != Some(seen.version) {
                        let _ = wake.send(Wake::Remote);
                    }
                }
                tracing::debug!("the map watch stream ended; reconnecting");
            }
            Err(status) if status.code() == tonic::Code::Unimplemented => {
                tracing::debug!("the server cannot stream map changes; polling only");
                return;
            }
            Err(status) => tracing::debug!(%status, "cannot watch the map"),
        }
        tokio::time::sleep(backoff.next_delay()).await;
    }
}

/// Wakes the loop whenever the server's map differs from the one seen
/// `interval` before.
async fn poll(meta: &MetaStore, interval: Duration, wake: &mpsc::UnboundedSender<Wake>) {
    let mut last: Option<BTreeMap<String, Entry>> = None;
    loop {
        tokio::time::sleep(interval).await;
        // A server that does not answer is the sync's to report.
        if let Ok(map) = meta.get_file_info_map().await
            && last.as_ref() != Some(&map)
        {
            last = Some(map);
            let _ = wake.send(Wake::Remote);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::index::IndexError;

    fn failure(line: usize) -> Result<Report, SyncError> {
        Err(SyncError::Index(IndexError::Malformed {
            path: "index.txt".into(),
            line,
            reason: "bad".into(),
        }))
    }

    #[test]
    fn a_failure_is_said_once_and_its_end_once() {
        let mut announcer = Announcer::default();
        assert_eq!(announcer.outcome(&Ok(Report::default())), None);
        let first = announcer.outcome(&failure(1)).unwrap();
        assert!(
            first.ends_with("; retrying until it works (Ctrl-C to stop)"),
            "{first}"
        );
        assert_eq!(announcer.outcome(&failure(1)), None);
        assert!(announcer.outcome(&failure(2)).is_some(), "a new failure");
        assert_eq!(
            announcer.outcome(&Ok(Report::default())).as_deref(),
            Some("in sync again")
        );
        assert_eq!(announcer.outcome(&Ok(Report::default())), None);
    }

    #[test]
    fn the_clients_own_files_and_ignored_paths_wake_nothing() {
        let root = tempfile::tempdir().unwrap();
        std::fs::write(root.path().join(".surfignore"), "*.tmp\n").unwrap();
        let wakes = |name: &str| wakes_the_loop(root.path(), &root.path().join(name));
        for name in ["a.txt", "dir/b.txt", "dir", ".surfignore"] {
            assert!(wakes(name), "{name}");
        }
        for name in ["index.txt", "x.tmp", "dir/y.tmp"] {
            assert!(!wakes(name), "{name}");
        }
        assert!(wakes_the_loop(root.path(), Path::new("/elsewhere/file")));
    }
}
