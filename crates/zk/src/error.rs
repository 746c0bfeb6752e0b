//! Mapping zookeeper-client errors into `LockError`, in one place.

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

pub(crate) fn failed(doing: &'static str, cluster: &str, source: zookeeper_client::Error) -> LockError {
    use zookeeper_client::Error as E;
    let kind = match &source {
        // `Custom` carries the connection's I/O errors (reset, refused).
        E::ConnectionLoss
        | E::Timeout
        | E::NoHosts
        | E::SessionExpired
        | E::ClientClosed
        | E::SessionMoved
        | E::Custom(_) => "unreachable",
        E::NoAuth | E::AuthFailed => "auth",
        _ => "other",
    };
    let f = ZkFailure {
        doing,
        cluster: cluster.to_owned(),
        source,
    };
    match kind {
        "unreachable" => LockError::Unavailable {
            message: format!("zookeeper unreachable: {doing} on {cluster}"),
            source: Some(Box::new(f)),
        },
        "auth" => LockError::InvalidConfig {
            message: format!("zookeeper refused the credentials: {doing}"),
            source: Some(Box::new(f)),
        },
        _ => LockError::Backend {
            backend: BACKEND,
            message: format!("{doing} failed"),
            source: Some(Box::new(f)),
            // Decided per error kind in the hardening work (issue 12 K7); today's behaviour kept.
            temporary: true,
        },
    }
}

pub(crate) fn timed_out(doing: &'static str, cluster: &str, limit: std::time::Duration) -> LockError {
    LockError::Unavailable {
        message: format!("zookeeper unreachable: no answer to {doing} within {limit:?} from {cluster}"),
        source: None,
    }
}
