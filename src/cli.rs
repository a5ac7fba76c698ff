//! What the binaries share: argument parsing with the project's exit codes,
//! logging setup, and reporting a fatal error in one line.

use std::fmt::Display;
use std::process::ExitCode;

/// Exit code for bad command-line arguments or configuration (EX_USAGE).
pub const EXIT_USAGE: u8 = 64;

/// Exit code for any other failure.
pub const EXIT_FAILURE: u8 = 1;

/// What `--version` prints after the program's name: the version and the
/// git commit it was built from (`unknown` when built outside git).
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("SURFSTORE_GIT_COMMIT"),
    ")"
);

/// What the servers' and the tool's `--help` ends with.
pub const AFTER_HELP: &str = "\
Exit codes: 0 success; 1 a failure (e.g. a call that failed, a port in use); \
64 bad arguments or config.

Logs: warnings and errors on stderr; -d for debug logs; RUST_LOG (e.g. \
RUST_LOG=surfstore=debug) overrides both. NO_COLOR turns colours off.";

/// Parses the command line into `T`. On bad arguments prints clap's usage
/// message and exits with [`EXIT_USAGE`]; `--help` and `--version` exit 0.
pub fn parse_args<T: clap::Parser>() -> T {
    match T::try_parse() {
        Ok(args) => args,
        Err(err) => {
            let code = if err.use_stderr() {
                i32::from(EXIT_USAGE)
            } else {
                0
            };
            // Printing can only fail if stderr is gone; the exit code still tells.
            let _ = err.print();
            std::process::exit(code);
        }
    }
}

/// Sends `tracing` output to stderr: debug level with `-d`, otherwise only
/// warnings and errors. `RUST_LOG` overrides both.
pub fn init_logging(debug: bool) {
    init_logging_to(debug, std::io::stderr);
}

/// Like [`init_logging`], but writes through `writer` (e.g. one that keeps
/// log lines from tearing progress bars on stderr).
pub fn init_logging_to<W>(debug: bool, writer: W)
where
    W: for<'a> tracing_subscriber::fmt::MakeWriter<'a> + Send + Sync + 'static,
{
    let default = if debug {
        "debug,h2=info,hyper=info,tower=info"
    } else {
        "warn"
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let ansi = use_colour(
        std::io::IsTerminal::is_terminal(&std::io::stderr()),
        std::env::var_os("NO_COLOR"),
    );
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(writer)
        .init();
}

/// Whether log lines get colour codes: only on a terminal (a log file or a
/// test reading stderr gets the plain line), and not when `NO_COLOR` is
/// set to anything but the empty string (no-color.org).
fn use_colour(terminal: bool, no_color: Option<std::ffi::OsString>) -> bool {
    terminal && no_color.is_none_or(|value| value.is_empty())
}

/// A fatal error of a binary: what to print and which code to exit with.
#[derive(Debug)]
pub struct Fatal {
    /// The process exit code.
    pub code: u8,
    /// One line for the user.
    pub message: String,
}

impl Fatal {
    /// A usage/configuration error (exit 64).
    pub fn usage(message: impl Display) -> Self {
        Self {
            code: EXIT_USAGE,
            message: message.to_string(),
        }
    }

    /// A `--data-dir` that cannot be opened or loaded (exit 1).
    pub fn data_dir(dir: &std::path::Path, error: impl Display) -> Self {
        Self::failure(format!(
            "cannot use data directory {}: {error}",
            dir.display()
        ))
    }

    /// Any other failure (exit 1).
    pub fn failure(message: impl Display) -> Self {
        Self {
            code: EXIT_FAILURE,
            message: message.to_string(),
        }
    }
}

/// A socket that cannot be bound is a failure (exit 1); a socket handed
/// over that does not fit (`LISTEN_FDS`) is a configuration error (exit 64).
impl From<crate::listener::ListenError> for Fatal {
    fn from(error: crate::listener::ListenError) -> Self {
        match error {
            crate::listener::ListenError::Bind { .. } => Self::failure(error),
            _ => Self::usage(error),
        }
    }
}

/// Turns a binary's result into its exit code, printing a fatal error as
/// `<program>: <message>` on stderr.
pub fn exit_code(program: &str, result: Result<(), Fatal>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(fatal) => {
            eprintln!("{program}: {}", fatal.message);
            ExitCode::from(fatal.code)
        }
    }
}

/// Resolves when the process receives Ctrl-C or SIGTERM, for graceful shutdown.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colour_only_on_a_terminal_without_no_color() {
        assert!(use_colour(true, None));
        assert!(use_colour(true, Some("".into())));
        assert!(!use_colour(true, Some("1".into())));
        assert!(!use_colour(false, None));
    }
}
