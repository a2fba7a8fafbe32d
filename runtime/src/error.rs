//! The runtime's one error enum.

use std::path::PathBuf;

/// Everything that can go wrong while planning or running a job.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An OS-level I/O operation on `path` failed.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory the operation touched.
        path: PathBuf,
        /// The underlying OS error.
        #[source]
        source: std::io::Error,
    },
    /// The input is malformed: `path` at byte `offset` is not what the input format expects.
    #[error("{path}: byte {offset}: {message}")]
    BadInput {
        /// The input file.
        path: PathBuf,
        /// Byte offset of the problem inside the file.
        offset: u64,
        /// What was expected.
        message: String,
    },
    /// The user asked for something that cannot be done (bad flag value, output exists, ...).
    #[error("{0}")]
    Usage(String),
    /// A block of intermediate data failed validation (checksum, framing or archive layout).
    #[error("{path}: byte {offset}: corrupt block: {source}")]
    Corrupt {
        /// The run file holding the block.
        path: PathBuf,
        /// Offset of the block's frame inside the file.
        offset: u64,
        /// What the validator found.
        #[source]
        source: quern_shuffle::BlockError,
    },
    /// A task's user code panicked.
    #[error("{task} failed: {message}")]
    TaskPanicked {
        /// Which task (e.g. `map 3`).
        task: String,
        /// The panic payload, when it was a string.
        message: String,
    },
    /// The job's own code failed an attempt (e.g. a child process exited non-zero).
    #[error("{message}")]
    UserCode {
        /// What failed, and why.
        message: String,
    },
    /// A block of a map's output failed validation on the reduce side (the map must be
    /// re-run, or its output fetched again).
    #[error("output of map {map} ({path}, byte {offset}) is corrupt: {source}")]
    BadMapOutput {
        /// The map task whose output is bad.
        map: u32,
        /// Where the bytes came from (a run file, or a fetch).
        path: PathBuf,
        /// Offset of the frame in its segment's file.
        offset: u64,
        /// What the validator found.
        #[source]
        source: quern_shuffle::BlockError,
    },
    /// The job ran and failed (a task kept failing, or the cluster gave up).
    #[error("job failed: {0}")]
    JobFailed(String),
    /// The user interrupted the job (Ctrl-C).
    #[error("interrupted")]
    Interrupted,
    /// The attempt was cancelled by its supervisor.
    #[error("cancelled")]
    Cancelled,
    /// A network or protocol failure between cluster processes.
    #[error("{0}")]
    Net(String),
    /// The client lost its coordinator mid-job (the process died or the network failed);
    /// the coordinator's journal keeps the job.
    #[error("{0}")]
    CoordinatorLost(String),
    /// The io_uring backend could not be started or stopped responding.
    #[error("io_uring: {0}")]
    Uring(String),
    /// A job report, or a histogram inside one, could not be decoded or is malformed.
    #[error("report: {0}")]
    Report(String),
}

impl Error {
    /// Wraps an `std::io::Error` with the path it concerns.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    /// True when the error is the user's (bad input or flags), not the system's: exit code 2.
    pub fn is_user_error(&self) -> bool {
        matches!(self, Error::BadInput { .. } | Error::Usage(_))
            || matches!(self, Error::Io { source, .. }
                if matches!(source.kind(), std::io::ErrorKind::NotFound | std::io::ErrorKind::PermissionDenied))
    }
}

/// Result alias for the runtime.
pub type Result<T, E = Error> = std::result::Result<T, E>;
