//! Mapping etcd client errors into `LockError`, in one place.

use std::time::Duration;

use fencelock_core::LockError;

pub(crate) const BACKEND: &str = "etcd";

/// What we were doing when the client failed.
#[derive(Debug, thiserror::Error)]
#[error("{doing} on {cluster}")]
pub(crate) struct EtcdFailure {
    pub doing: &'static str,
    pub cluster: String,
    #[source]
    pub source: etcd_client::Error,
}

pub(crate) fn failed(doing: &'static str, cluster: &str, source: etcd_client::Error) -> LockError {
    let unreachable = match &source {
        etcd_client::Error::TransportError(_) | etcd_client::Error::IoError(_) => true,
        etcd_client::Error::GRpcStatus(s) => {
            matches!(
                s.code() as i32,
                grpc::CANCELLED | grpc::UNKNOWN | grpc::DEADLINE_EXCEEDED | grpc::UNAVAILABLE
            ) || s.message().contains("no leader")
        }
        etcd_client::Error::LeaseKeepAliveError(m) => !m.contains("not found"),
        etcd_client::Error::WatchError(_) => true,
        _ => false,
    };
    let auth = matches!(&source, etcd_client::Error::GRpcStatus(s)
        if matches!(s.code() as i32, grpc::UNAUTHENTICATED | grpc::PERMISSION_DENIED));
    let f = EtcdFailure {
        doing,
        cluster: cluster.to_owned(),
        source,
    };
    if auth {
        LockError::InvalidConfig {
            message: format!("etcd refused the credentials: {doing}"),
            source: Some(Box::new(f)),
        }
    } else if unreachable {
        LockError::Unavailable {
            message: format!("etcd unreachable: {doing} on {cluster}"),
            source: Some(Box::new(f)),
        }
    } else {
        LockError::Backend {
            backend: BACKEND,
            message: format!("{doing} failed"),
            source: Some(Box::new(f)),
            // Decided per error kind in the hardening work (issue 12 K7); today's behaviour kept.
            temporary: true,
        }
    }
}

pub(crate) fn timed_out(doing: &'static str, cluster: &str, limit: Duration) -> LockError {
    LockError::Unavailable {
        message: format!("etcd unreachable: no answer to {doing} within {limit:?} from {cluster} (no quorum?)"),
        source: None,
    }
}

/// gRPC status codes (numbers fixed by the gRPC spec), so that no tonic types are needed.
mod grpc {
    pub(super) const CANCELLED: i32 = 1;
    pub(super) const UNKNOWN: i32 = 2;
    pub(super) const DEADLINE_EXCEEDED: i32 = 4;
    pub(super) const PERMISSION_DENIED: i32 = 7;
    pub(super) const UNAVAILABLE: i32 = 14;
    pub(super) const UNAUTHENTICATED: i32 = 16;
}

/// `true` when etcd says the lease does not exist (expired or revoked).
pub(crate) fn lease_not_found(e: &LockError) -> bool {
    let mut text = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(s) = src {
        text.push_str(&s.to_string());
        src = s.source();
    }
    text.contains("lease not found")
}
