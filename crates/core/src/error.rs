//! The one error type of fencelock: [`LockError`].

use std::time::Duration;

use crate::token::FencingToken;

/// A boxed error from a client library or the operating system, kept as the source of a
/// [`LockError`].
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Shorthand for `Result<T, LockError>`.
pub type Result<T, E = LockError> = std::result::Result<T, E>;

/// Why a lease stopped being ours.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum LostReason {
    /// The lease's validity ran out before it was renewed.
    Expired,
    /// The backend no longer holds our grant (it expired there, or another grant replaced it).
    NotHeld,
    /// Renewal failed: retried until the validity ran out (the last failure is given), or
    /// refused with an error a retry would meet again (a permission taken away), which
    /// ends the lease at once. The text says which.
    RenewalFailed(String),
    /// The backend reported the loss itself (a revoked etcd lease, an expired ZooKeeper session).
    Backend(String),
}

impl std::fmt::Display for LostReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LostReason::Expired => f.write_str("its validity ran out before it was renewed"),
            LostReason::NotHeld => f.write_str("the backend no longer holds this grant"),
            LostReason::RenewalFailed(why) => write!(f, "renewal failed: {why}"),
            LostReason::Backend(why) => write!(f, "the backend reported the loss: {why}"),
        }
    }
}

/// A write refused by a fencing check (see [`crate::fencing`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FenceRejection {
    /// The protected resource.
    pub resource: String,
    /// The token the writer presented.
    pub presented: FencingToken,
    /// The highest token the resource had already accepted.
    pub highest: FencingToken,
    /// `true` when the presented token equals the highest but came from another grant
    /// (token reuse, e.g. after a Redis failover), `false` when it is lower (stale).
    pub reused: bool,
}

impl std::fmt::Display for FenceRejection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.reused {
            write!(
                f,
                "resource `{}` refused token {}: the same token was already used by another grant",
                self.resource, self.presented
            )
        } else {
            write!(
                f,
                "resource `{}` refused stale token {}: it has already accepted token {}",
                self.resource, self.presented, self.highest
            )
        }
    }
}

/// Everything that can go wrong with a lock.
///
/// Not getting a lock from [`try_acquire`](crate::DistributedLock::try_acquire) is not an
/// error (it returns `Ok(None)`); waiting too long in
/// [`acquire`](crate::DistributedLock::acquire) is [`LockError::Timeout`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LockError {
    /// A bad key, TTL, wait bound or other argument. Retrying will not help.
    #[error("invalid input: {0}")]
    InvalidInput(String),

    /// A malformed URL or configuration. Retrying will not help.
    #[error("invalid configuration: {message}")]
    InvalidConfig {
        /// What is wrong and, where possible, how to fix it.
        message: String,
        /// The parser's own error, when there is one.
        #[source]
        source: Option<BoxError>,
    },

    /// The URL names a backend whose Cargo feature is not enabled in this build.
    #[error("backend `{scheme}://` is not compiled into this build: enable the Cargo feature `{feature}` of the `fencelock` crate")]
    FeatureDisabled {
        /// The URL scheme that was asked for.
        scheme: String,
        /// The Cargo feature that brings it in.
        feature: &'static str,
    },

    /// `acquire` waited for its whole bound without getting the lock.
    #[error("timed out after {waited:?} waiting for lock `{key}`")]
    Timeout {
        /// The key that was asked for.
        key: String,
        /// How long we waited.
        waited: Duration,
    },

    /// The backend could not be reached, or too few of its nodes answered.
    #[error("backend unavailable: {message}")]
    Unavailable {
        /// What was tried and what answered, e.g. "no quorum: 2 of 5 nodes answered within 20ms (need 3)".
        message: String,
        /// The client library's error, when there is one.
        #[source]
        source: Option<BoxError>,
    },

    /// The lease is no longer ours: it must not be used to act on the protected resource.
    #[error("lease on `{key}` (token {token}) is lost: {reason}")]
    LeaseLost {
        /// The lease's key.
        key: String,
        /// The lease's token.
        token: FencingToken,
        /// Why it was lost.
        reason: LostReason,
    },

    /// A backend does not promise what the caller required (see [`crate::Requirement`]).
    #[error("backend `{backend}` does not meet the requirement: {message}")]
    GuaranteeNotMet {
        /// The backend's name.
        backend: &'static str,
        /// What is missing.
        message: String,
    },

    /// A fencing check refused a write.
    #[error("fenced: {0}")]
    Fenced(FenceRejection),

    /// The client was closed ([`DistributedLock::close`](crate::DistributedLock::close)):
    /// a call waiting through it when it was closed ended with this, and every later call
    /// fails with it at once. Retrying on the same client cannot help; make a new one.
    #[error("the lock client was closed: it takes no more calls")]
    Closed,

    /// Any other failure of the backend, with its source.
    ///
    /// Whether a retry may help is decided per error by the backend that raises it
    /// (`temporary`), from the client crate's error kind — a refused script, a wrong type, a
    /// corrupt state file are permanent; a server that is loading its data set is not.
    #[error("{backend} backend: {message}")]
    Backend {
        /// The backend's name.
        backend: &'static str,
        /// What failed.
        message: String,
        /// The underlying error.
        #[source]
        source: Option<BoxError>,
        /// `true` when the same call may succeed later.
        temporary: bool,
    },
}

/// An error and its sources on one line (`outer: cause: root`), a source left out when the
/// text before already says it, newlines folded.
pub fn one_line(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let s_text = s.to_string();
        if !text.contains(&s_text) {
            text.push_str(": ");
            text.push_str(&s_text);
        }
        source = s.source();
    }
    text.replace('\n', " ")
}

/// The source of a [`LockError::InvalidConfig`] from a connect told to create nothing
/// (PostgreSQL's `create_tables=false`) that found the backend's objects missing where it
/// looked: nothing was ever held there. A reader may answer "nothing held" from it (as
/// `fencelock leader` says "no leader", as etcd and ZooKeeper do for an election never
/// held) while still naming what is missing, so that a mistyped schema stays visible.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{missing} missing in schema `{schema}`")]
pub struct NothingCreated {
    /// Where the objects were looked for (a PostgreSQL schema).
    pub schema: String,
    /// What is missing, for messages (e.g. "fencelock's tables (locks, …)").
    pub missing: String,
    /// The server, for messages (no password).
    pub server: String,
    /// The server's guarantees, read from its settings (they need no table).
    pub guarantees: crate::guarantees::Guarantees,
}

impl LockError {
    /// The [`NothingCreated`] this error carries, if it is one (see there).
    pub fn nothing_created(&self) -> Option<&NothingCreated> {
        match self {
            LockError::InvalidConfig { source: Some(s), .. } => s.downcast_ref::<NothingCreated>(),
            _ => None,
        }
    }

    /// The error on one line as [`one_line`] gives it, without the words its kind's
    /// `Display` puts first ("backend unavailable: ", "invalid configuration: ", "NAME
    /// backend: "): what to put in the message of another error of the same kind that
    /// wraps this one, so that the kind is said once.
    pub fn detail(&self) -> String {
        let text = one_line(self);
        let prefix = match self {
            LockError::Unavailable { .. } => "backend unavailable: ".to_owned(),
            LockError::InvalidConfig { .. } => "invalid configuration: ".to_owned(),
            LockError::Backend { backend, .. } => format!("{backend} backend: "),
            _ => return text,
        };
        text.strip_prefix(&prefix).map_or_else(|| text.clone(), str::to_owned)
    }

    /// Builds an [`LockError::InvalidInput`].
    pub fn invalid_input(message: impl Into<String>) -> Self {
        LockError::InvalidInput(message.into())
    }

    /// Builds an [`LockError::InvalidConfig`] without a source.
    pub fn invalid_config(message: impl Into<String>) -> Self {
        LockError::InvalidConfig {
            message: message.into(),
            source: None,
        }
    }

    /// Builds an [`LockError::Unavailable`] with a source.
    pub fn unavailable(message: impl Into<String>, source: impl Into<BoxError>) -> Self {
        LockError::Unavailable {
            message: message.into(),
            source: Some(source.into()),
        }
    }

    /// Builds a permanent [`LockError::Backend`] with a source: retrying will not help (a
    /// corrupt state file, a refused script, a value of the wrong type).
    pub fn backend(backend: &'static str, message: impl Into<String>, source: impl Into<BoxError>) -> Self {
        LockError::Backend {
            backend,
            message: message.into(),
            source: Some(source.into()),
            temporary: false,
        }
    }

    /// Builds a temporary [`LockError::Backend`] with a source: the same call may succeed
    /// later (the server is loading its data, a leader election is under way).
    pub fn backend_temporary(backend: &'static str, message: impl Into<String>, source: impl Into<BoxError>) -> Self {
        LockError::Backend {
            backend,
            message: message.into(),
            source: Some(source.into()),
            temporary: true,
        }
    }

    /// `true` when the same call may succeed later (timeouts, unavailable backends, backend
    /// failures the backend marked temporary); `false` for bad input, bad configuration,
    /// lost leases, refusals, a closed client and permanent backend failures. A retry loop must never retry
    /// an error for which this is `false`.
    pub fn is_temporary(&self) -> bool {
        match self {
            LockError::Timeout { .. } | LockError::Unavailable { .. } => true,
            LockError::Backend { temporary, .. } => *temporary,
            _ => false,
        }
    }

    /// `true` for [`LockError::LeaseLost`].
    pub fn is_lease_lost(&self) -> bool {
        matches!(self, LockError::LeaseLost { .. })
    }

    /// `true` for [`LockError::Closed`].
    pub fn is_closed(&self) -> bool {
        matches!(self, LockError::Closed)
    }

    /// `true` for [`LockError::Timeout`].
    pub fn is_timeout(&self) -> bool {
        matches!(self, LockError::Timeout { .. })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_say_what_to_do() {
        let e = LockError::FeatureDisabled {
            scheme: "redis".into(),
            feature: "redis",
        };
        assert!(e.to_string().contains("enable the Cargo feature `redis`"));
        assert!(!e.is_temporary());
        let e = LockError::Timeout {
            key: "k".into(),
            waited: Duration::from_millis(5),
        };
        assert!(e.is_temporary() && e.is_timeout());
    }

    #[test]
    fn a_closed_client_is_not_temporary() {
        let e = LockError::Closed;
        assert!(!e.is_temporary(), "retrying on a closed client cannot help");
        assert!(e.is_closed() && !e.is_timeout());
        assert!(e.to_string().contains("closed"), "{e}");
    }

    #[test]
    fn sources_are_chained() {
        let io = std::io::Error::other("disk on fire");
        let e = LockError::backend("file", "cannot write state", io);
        let source = std::error::Error::source(&e).map(|s| s.to_string());
        assert_eq!(source.as_deref(), Some("disk on fire"));
    }

    #[test]
    fn backend_errors_are_temporary_only_when_marked() {
        let corrupt = LockError::backend("file", "state file is not JSON", std::io::Error::other("x"));
        assert!(!corrupt.is_temporary(), "a corrupt state file must not be retried");
        let loading = LockError::backend_temporary("redis", "server is loading", std::io::Error::other("x"));
        assert!(loading.is_temporary());
    }
}
