//! Errors.
//!
//! Rules (following rustic_core's two tiers):
//! - Internal helpers return `io::Result` or a small local error; the public
//!   functions of this crate return [`Error`], which always says what was
//!   being done, to which path, and whether trying again could help.
//! - Per-entry failures during a tree operation are not `Error`s: they are
//!   recorded in the run's summary ([`crate::EntryIssue`]) and the run goes on.
//!   `Error` is for "this run could not proceed".
use std::io;
use std::path::{Path, PathBuf};

/// What broadly went wrong; the CLI maps this to messages and exit codes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorKind {
    /// A path the user named does not exist.
    NotFound,
    /// The OS refused access.
    PermissionDenied,
    /// The request itself is inconsistent (for example DST inside SRC).
    InvalidInput,
    /// Any other I/O failure.
    Io,
    /// Stored data failed a check: bad magic, wrong hash, truncation.
    Corrupt,
    /// Another process holds a lock that conflicts with this operation.
    Locked,
    /// The other end of a transfer failed: it could not be reached or
    /// started, spoke another protocol version, broke the protocol, or
    /// reported a fatal error.
    Remote,
}

/// The engine's public error: a kind, the path involved and the cause.
#[derive(Debug, thiserror::Error)]
// The cause is part of the message (as ripgrep does), not a separate
// `source()`, so that printing the chain does not repeat it.
#[error("{}: {op}: {cause}", path.display())]
pub struct Error {
    kind: ErrorKind,
    op: &'static str,
    path: PathBuf,
    cause: io::Error,
}

impl Error {
    pub(crate) fn io(op: &'static str, path: impl AsRef<Path>, source: io::Error) -> Error {
        let kind = match source.kind() {
            io::ErrorKind::NotFound => ErrorKind::NotFound,
            io::ErrorKind::PermissionDenied => ErrorKind::PermissionDenied,
            io::ErrorKind::InvalidInput => ErrorKind::InvalidInput,
            io::ErrorKind::InvalidData | io::ErrorKind::UnexpectedEof => ErrorKind::Corrupt,
            _ => ErrorKind::Io,
        };
        Error {
            kind,
            op,
            path: path.as_ref().to_path_buf(),
            cause: source,
        }
    }

    pub(crate) fn corrupt(
        op: &'static str,
        path: impl AsRef<Path>,
        e: haul_formats::FormatError,
    ) -> Error {
        Error {
            kind: ErrorKind::Corrupt,
            op,
            path: path.as_ref().to_path_buf(),
            cause: io::Error::new(io::ErrorKind::InvalidData, e.to_string()),
        }
    }

    pub(crate) fn locked(path: impl AsRef<Path>, msg: impl Into<String>) -> Error {
        Error {
            kind: ErrorKind::Locked,
            op: "locking repository",
            path: path.as_ref().to_path_buf(),
            cause: io::Error::new(io::ErrorKind::WouldBlock, msg.into()),
        }
    }

    pub(crate) fn invalid(path: impl AsRef<Path>, msg: impl Into<String>) -> Error {
        Error {
            kind: ErrorKind::InvalidInput,
            op: "invalid request",
            path: path.as_ref().to_path_buf(),
            cause: io::Error::new(io::ErrorKind::InvalidInput, msg.into()),
        }
    }

    /// A failure of the session with `peer` (`host:path`, or `stdin` for
    /// the serving side).
    pub(crate) fn remote(
        op: &'static str,
        peer: impl AsRef<Path>,
        msg: impl Into<String>,
    ) -> Error {
        Error {
            kind: ErrorKind::Remote,
            op,
            path: peer.as_ref().to_path_buf(),
            cause: io::Error::other(msg.into()),
        }
    }

    /// The kind of failure.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The path the failure concerns.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether the same call could succeed if simply tried again
    /// (interrupted or timed-out I/O, a busy resource).
    pub fn is_retryable(&self) -> bool {
        matches!(
            self.cause.kind(),
            io::ErrorKind::Interrupted | io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock
        ) || self.cause.raw_os_error() == Some(libc::EBUSY)
    }
}

/// A failed step on one entry: which operation, and the OS error.
#[derive(Debug)]
pub(crate) struct StepError {
    pub op: &'static str,
    pub err: io::Error,
}

impl std::fmt::Display for StepError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.op, self.err)
    }
}

impl From<io::Error> for StepError {
    /// The one bare `io::Error` a step meets is a failed directory read.
    fn from(err: io::Error) -> StepError {
        StepError {
            op: "read directory",
            err,
        }
    }
}

/// Attaches the operation name to an `io::Result`.
pub(crate) trait Step<T> {
    fn step(self, op: &'static str) -> Result<T, StepError>;
}

impl<T> Step<T> for io::Result<T> {
    fn step(self, op: &'static str) -> Result<T, StepError> {
        self.map_err(|err| StepError { op, err })
    }
}
