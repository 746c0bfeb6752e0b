//! Mapping the redis crate's errors into `LockError`, in one place.

use fencelock_core::LockError;

pub(crate) const BACKEND: &str = "redis";

/// The backend's own error: what it was doing when the client failed.
#[derive(Debug, thiserror::Error)]
#[error("{doing} on {server}")]
pub(crate) struct RedisFailure {
    pub doing: &'static str,
    pub server: String,
    #[source]
    pub source: redis::RedisError,
}

impl From<RedisFailure> for LockError {
    fn from(f: RedisFailure) -> Self {
        let e = &f.source;
        if matches!(
            e.kind(),
            redis::ErrorKind::AuthenticationFailed | redis::ErrorKind::InvalidClientConfig
        ) || e.to_string().contains("NOAUTH")
            || e.to_string().contains("WRONGPASS")
        {
            return LockError::InvalidConfig {
                message: format!("redis refused the credentials or settings: {} on {}", f.doing, f.server),
                source: Some(Box::new(f)),
            };
        }
        let unreachable = e.is_io_error() || e.is_connection_refusal() || e.is_timeout() || e.is_connection_dropped();
        if unreachable {
            LockError::Unavailable {
                message: format!("redis unreachable: {} on {}", f.doing, f.server),
                source: Some(Box::new(f)),
            }
        } else {
            LockError::Backend {
                backend: BACKEND,
                message: format!("{} failed", f.doing),
                source: Some(Box::new(f)),
                // Decided per error kind in the hardening work (issue 12 K7); today's behaviour kept.
                temporary: true,
            }
        }
    }
}

/// Wraps a client error with what we were doing.
pub(crate) fn failed(doing: &'static str, server: &str, source: redis::RedisError) -> LockError {
    RedisFailure {
        doing,
        server: server.to_owned(),
        source,
    }
    .into()
}
