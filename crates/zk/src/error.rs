//! Mapping zookeeper-client errors into `LockError`, in one place: the kind of the client's
//! error decides whether a retry can help (`LockError::is_temporary`), never its message.

use fencelock_core::LockError;

pub(crate) const BACKEND: &str = "zookeeper";

/// What we were doing when the client failed.
#[derive(Debug, thiserror::Error)]
#[error("{doing} on {cluster}")]
pub(crate) struct ZkFailure {
    pub doing: &'static str,
    pub cluster: String,
    #[source]
    pub source: zookeeper_client::Error,
}

/// What a client error means for the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// No answer, or the session cannot serve now: another try (on another connection or
    /// session) can succeed.
    Unreachable,
    /// The server is alive but pushed back (throttled, read-only): temporary.
    Busy,
    /// The credentials or ACLs were refused: a configuration problem.
    Auth,
    /// The request itself is wrong, or the server's state contradicts it: permanent.
    Refused,
}

fn kind(e: &zookeeper_client::Error) -> Kind {
    use zookeeper_client::Error as E;
    match e {
        // `Custom` carries the connection's I/O errors (reset, refused).
        E::ConnectionLoss
        | E::Timeout
        | E::NoHosts
        | E::SessionExpired
        | E::ClientClosed
        | E::SessionMoved
        | E::Custom(_) => Kind::Unreachable,
        E::Throttled | E::NotReadOnly => Kind::Busy,
        E::NoAuth | E::AuthFailed | E::InvalidAcl => Kind::Auth,
        _ => Kind::Refused,
    }
}

/// `true` when the request may or may not have been applied: the connection went away or
/// no answer came in time. Only such outcomes need a follow-up.
pub(crate) fn outcome_unknown(e: &zookeeper_client::Error) -> bool {
    use zookeeper_client::Error as E;
    matches!(e, E::ConnectionLoss | E::Timeout | E::Custom(_))
}

/// `true` when trying the same request again can succeed: no answer, the session cannot
/// serve now, or the server pushed back. `false` when the server refused it for good (an
/// ACL, a bad request, a state that contradicts it).
pub(crate) fn retry_can_help(e: &zookeeper_client::Error) -> bool {
    matches!(kind(e), Kind::Unreachable | Kind::Busy)
}

/// The `LockError` for a client error met while `doing` something on `cluster`.
pub(crate) fn failed(doing: &'static str, cluster: &str, source: zookeeper_client::Error) -> LockError {
    let kind = kind(&source);
    let f = ZkFailure {
        doing,
        cluster: cluster.to_owned(),
        source,
    };
    match kind {
        Kind::Unreachable => LockError::Unavailable {
            message: format!("zookeeper unreachable: {doing} on {cluster}"),
            source: Some(Box::new(f)),
        },
        Kind::Auth => LockError::InvalidConfig {
            message: format!("zookeeper refused the credentials: {doing}"),
            source: Some(Box::new(f)),
        },
        Kind::Busy => LockError::backend_temporary(BACKEND, format!("{doing}: the server pushed back"), f),
        Kind::Refused => LockError::backend(BACKEND, format!("{doing} failed"), f),
    }
}

/// The one server of a URL refused the connection: nothing listens there.
#[derive(Debug, thiserror::Error)]
#[error("{server} refused the connection")]
pub(crate) struct Refused {
    pub server: String,
}

/// `Unavailable` for a refused connection to `server`, the one server of `cluster`.
pub(crate) fn refused(server: &str, cluster: &str) -> LockError {
    LockError::Unavailable {
        message: format!(
            "zookeeper unreachable: {server} refused the connection (is ZooKeeper running there?) for {cluster}"
        ),
        source: Some(Box::new(Refused {
            server: server.to_owned(),
        })),
    }
}

/// `true` for [`refused`]'s error: temporary (the server may be started), but trying again
/// at once would only be refused again, so connecting reports it rather than retrying.
pub(crate) fn is_refused(e: &LockError) -> bool {
    std::error::Error::source(e).is_some_and(|s| s.is::<Refused>())
}

/// A key whose node name ZooKeeper (or its client's identical check) refuses, although
/// the encoding in `names` should make every valid key a valid name: a bad input, never
/// worth retrying.
pub(crate) fn refused_name(key: &str, node: &str, source: zookeeper_client::Error) -> LockError {
    LockError::invalid_input(format!(
        "zookeeper refuses the node name `{node}` made for the key {key:?}: {source}"
    ))
}

/// The source of [`timed_out`]'s error: no answer came within the request timeout.
#[derive(Debug, thiserror::Error)]
#[error("no answer within {0:?}")]
pub(crate) struct NoAnswer(pub std::time::Duration);

pub(crate) fn timed_out(doing: &'static str, cluster: &str, limit: std::time::Duration) -> LockError {
    LockError::Unavailable {
        message: format!("zookeeper unreachable: no answer to {doing} within {limit:?} from {cluster}"),
        source: Some(Box::new(NoAnswer(limit))),
    }
}

/// `true` when `e` says only that an answer did not come — the connection dropped with the
/// request in flight, or the request timed out — and nothing about the session or the
/// nodes: the session may well live on (the client reconnects in it), and with it every
/// node it owns.
pub(crate) fn no_answer(e: &LockError) -> bool {
    std::error::Error::source(e).is_some_and(|s| {
        s.is::<NoAnswer>()
            || s.downcast_ref::<ZkFailure>()
                .is_some_and(|f| outcome_unknown(&f.source))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use zookeeper_client::Error as E;

    #[test]
    fn temporary_per_error_kind() {
        for e in [E::ConnectionLoss, E::SessionMoved, E::Timeout, E::NoHosts, E::Throttled] {
            assert!(failed("x", "c", e.clone()).is_temporary(), "{e:?} should be temporary");
        }
        for e in [
            E::BadArguments(&"bad"),
            E::NoNode,
            E::NoAuth,
            E::NodeExists,
            E::NoChildrenForEphemerals,
            E::QuotaExceeded,
            E::Unimplemented,
            E::MarshallingError,
        ] {
            assert!(!failed("x", "c", e.clone()).is_temporary(), "{e:?} should be permanent");
        }
        assert!(matches!(failed("x", "c", E::NoAuth), LockError::InvalidConfig { .. }));
    }

    #[test]
    fn only_missing_answers_are_no_answer() {
        assert!(no_answer(&failed("x", "c", E::ConnectionLoss)));
        assert!(no_answer(&failed("x", "c", E::Timeout)));
        assert!(no_answer(&timed_out("x", "c", std::time::Duration::from_secs(1))));
        assert!(!no_answer(&failed("x", "c", E::SessionExpired)));
        assert!(!no_answer(&failed("x", "c", E::NoNode)));
        assert!(!no_answer(&LockError::Unavailable {
            message: "our lock node is gone".into(),
            source: None
        }));
    }

    #[test]
    fn only_lost_answers_are_unknown_outcomes() {
        assert!(outcome_unknown(&E::ConnectionLoss));
        assert!(outcome_unknown(&E::Timeout));
        assert!(!outcome_unknown(&E::NodeExists));
        assert!(!outcome_unknown(&E::SessionExpired));
    }
}
