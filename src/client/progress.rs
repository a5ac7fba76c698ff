//! Progress bars for a run: one for hashing the base directory, one for
//! moving blocks. Drawn on stderr only when a person is watching (see
//! [`Progress::on_terminal`]); otherwise every bar is hidden and updating it
//! costs next to nothing, so the sync code updates them unconditionally.
//!
//! Log lines (warnings) must not tear a bar apart: [`Progress::log_writer`]
//! is the writer `tracing` should print through, which lifts the bars out of
//! the way for each line.

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressState, ProgressStyle};
use std::io::{self, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// How long a bar runs before it shows an ETA: before that, too little has
/// moved to tell a rate.
const ETA_AFTER: Duration = Duration::from_secs(1);

/// How often the bars redraw at most (indicatif's default is 20 Hz).
const REFRESH_HZ: u8 = 10;

/// The bars of one run, shown or hidden together.
#[derive(Clone)]
pub struct Progress {
    multi: MultiProgress,
    hashing: ProgressBar,
    transfer: ProgressBar,
    /// Files to change this run, and how many are done.
    files: Arc<(AtomicUsize, AtomicUsize)>,
}

impl Progress {
    /// Bars that are never drawn.
    pub fn hidden() -> Self {
        Self::new(ProgressDrawTarget::hidden())
    }

    /// Bars drawn on stderr. indicatif itself hides them when stderr is not
    /// a terminal, so output piped into a file or another program never
    /// holds bar fragments.
    pub fn on_terminal() -> Self {
        Self::new(ProgressDrawTarget::stderr_with_hz(REFRESH_HZ))
    }

    fn new(target: ProgressDrawTarget) -> Self {
        let multi = MultiProgress::with_draw_target(target);
        let hashing = multi.add(bar("hashing"));
        // Not in `multi` yet: it appears once hashing is done.
        let transfer = bar("transfer");
        Self {
            multi,
            hashing,
            transfer,
            files: Arc::default(),
        }
    }

    /// Sets the transfer's total, the bytes planned to move, and how many
    /// files it changes, before anything moves.
    pub fn start_transfer(&self, bytes: u64, files: usize) {
        self.transfer.set_length(bytes);
        self.files.0.store(files, Ordering::Relaxed);
        self.files.1.store(0, Ordering::Relaxed);
    }

    /// Shows `name` as the file being synced, with the file count.
    pub fn file_started(&self, name: &str) {
        let (total, done) = (&self.files.0, &self.files.1);
        self.transfer.set_message(file_message(
            done.load(Ordering::Relaxed),
            total.load(Ordering::Relaxed),
            name,
        ));
    }

    /// Counts one more file done.
    pub fn file_done(&self) {
        self.files.1.fetch_add(1, Ordering::Relaxed);
    }

    /// Bytes of the base directory hashed so far, out of the bytes found.
    pub fn hashing(&self) -> &ProgressBar {
        &self.hashing
    }

    /// Bytes sent and received so far, out of the bytes planned to move.
    pub fn transfer(&self) -> &ProgressBar {
        &self.transfer
    }

    /// Clears the hashing bar and shows the transfer bar (if the bars are
    /// drawn at all).
    pub fn hashing_done(&self) {
        self.hashing.finish_and_clear();
        self.multi.add(self.transfer.clone());
    }

    /// Clears every bar so the summary line stands alone.
    pub fn finish(&self) {
        self.hashing.finish_and_clear();
        self.transfer.finish_and_clear();
    }

    /// Prints `line` on stdout, lifting the bars out of the way.
    pub fn println(&self, line: &str) {
        self.multi.suspend(|| println!("{line}"));
    }

    /// A `tracing` writer for stderr that hides the bars while a line is
    /// printed.
    pub fn log_writer(&self) -> LogWriter {
        LogWriter {
            multi: self.multi.clone(),
        }
    }
}

/// How a bar looks: what it counts, bytes, rate, ETA, and the file count
/// and current file.
const TEMPLATE: &str = "{prefix:>9} [{bar:30}] {binary_bytes}/{binary_total_bytes} {binary_bytes_per_sec} eta {average_eta} {wide_msg}";

/// The bar's message: the file count and the file being synced.
fn file_message(done: usize, total: usize, name: &str) -> String {
    format!("{}/{total} files, {name}", (done + 1).min(total))
}

/// Time left at the average rate since the start, which, unlike
/// indicatif's estimate, holds from the first second; `-` before
/// [`ETA_AFTER`] or before anything moved.
fn eta(position: u64, length: u64, elapsed: Duration) -> String {
    if elapsed < ETA_AFTER || position == 0 {
        return "-".to_string();
    }
    let left = length.saturating_sub(position) as f64 / position as f64 * elapsed.as_secs_f64();
    let left = left.round() as u64;
    match left {
        0..60 => format!("{left}s"),
        60..3600 => format!("{}m{:02}s", left / 60, left % 60),
        _ => format!("{}h{:02}m", left / 3600, left / 60 % 60),
    }
}

fn bar(what: &'static str) -> ProgressBar {
    // The template is a constant; if indicatif ever rejected it, a bar
    // without a template is still a working bar.
    let style = ProgressStyle::with_template(TEMPLATE)
        .map(|s| {
            s.progress_chars("=> ").with_key(
                "average_eta",
                |state: &ProgressState, w: &mut dyn std::fmt::Write| {
                    let length = state.len().unwrap_or(0);
                    let _ = w.write_str(&eta(state.pos(), length, state.elapsed()));
                },
            )
        })
        .unwrap_or_else(|_| ProgressStyle::default_bar());
    ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::hidden())
        .with_style(style)
        .with_prefix(what)
}

/// Writes to stderr around the progress bars; see [`Progress::log_writer`].
#[derive(Clone)]
pub struct LogWriter {
    multi: MultiProgress,
}

impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.multi.suspend(|| io::stderr().write_all(buf))?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        io::stderr().flush()
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogWriter {
    type Writer = LogWriter;

    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_eta_waits_a_second_then_follows_the_average_rate() {
        let second = Duration::from_secs(1);
        assert_eq!(eta(0, 100, second * 5), "-");
        assert_eq!(eta(50, 100, second / 2), "-");
        assert_eq!(eta(50, 100, second), "1s");
        assert_eq!(eta(10, 100, second * 10), "1m30s");
        assert_eq!(eta(1, 10_000, second), "2h46m");
        assert_eq!(eta(100, 100, second * 3), "0s");
    }

    #[test]
    fn the_template_is_valid() {
        assert!(ProgressStyle::with_template(TEMPLATE).is_ok());
    }

    #[test]
    fn the_message_counts_files_from_one() {
        assert_eq!(file_message(0, 3, "a.txt"), "1/3 files, a.txt");
        assert_eq!(file_message(2, 3, "c.txt"), "3/3 files, c.txt");
        assert_eq!(file_message(3, 3, "late"), "3/3 files, late");
    }
}
