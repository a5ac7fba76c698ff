//! Progress bars for a run: one for hashing the base directory, one for
//! moving blocks. Drawn on stderr only when a person is watching (see
//! [`Progress::on_terminal`]); otherwise every bar is hidden and updating it
//! costs next to nothing, so the sync code updates them unconditionally.
//!
//! Log lines (warnings) must not tear a bar apart: [`Progress::log_writer`]
//! is the writer `tracing` should print through, which lifts the bars out of
//! the way for each line.

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::{self, Write};

/// How often the bars redraw at most (indicatif's default is 20 Hz).
const REFRESH_HZ: u8 = 10;

/// The bars of one run, shown or hidden together.
#[derive(Clone)]
pub struct Progress {
    multi: MultiProgress,
    hashing: ProgressBar,
    transfer: ProgressBar,
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
        }
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

fn bar(what: &'static str) -> ProgressBar {
    // The template is a constant; if indicatif ever rejected it, a bar
    // without a template is still a working bar.
    let style = ProgressStyle::with_template(
        "{prefix:>9} [{bar:30}] {binary_bytes}/{binary_total_bytes} {binary_bytes_per_sec} eta {eta}",
    )
    .map(|s| s.progress_chars("=> "))
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
