//! The benchmark's one error type.

/// What went wrong while benchmarking.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BenchError {
    /// A fencelock operation failed.
    #[error("fencelock {doing} failed")]
    Lock {
        /// What was being done.
        doing: &'static str,
        /// The lock error.
        #[source]
        source: fencelock_core::LockError,
    },
    /// A client crate (raw minimum or peer) failed.
    #[error("{who}: {doing} failed: {message}")]
    Client {
        /// Which client: `raw redis`, `rslock`, ….
        who: &'static str,
        /// What was being done.
        doing: &'static str,
        /// The client's own message.
        message: String,
    },
    /// The arguments make no sense.
    #[error("{0}")]
    Usage(String),
    /// Writing the report failed.
    #[error("cannot write {path}")]
    Write {
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

impl BenchError {
    pub(crate) fn lock(doing: &'static str, source: fencelock_core::LockError) -> Self {
        BenchError::Lock { doing, source }
    }

    pub(crate) fn client(who: &'static str, doing: &'static str, e: impl std::fmt::Display) -> Self {
        BenchError::Client {
            who,
            doing,
            message: e.to_string(),
        }
    }
}

/// Results of the benchmark.
pub type Result<T, E = BenchError> = std::result::Result<T, E>;

/// An error and its causes on one line.
pub fn one_line(e: &BenchError) -> String {
    fencelock_core::error::one_line(e)
}
