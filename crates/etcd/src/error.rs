//! Mapping etcd client errors into `LockError`, in one place, decided per error from the
//! client's error kind and the gRPC status code — never from message text.
//!
//! etcd's server errors are gRPC statuses with fixed codes (etcd's `api/v3rpc/rpctypes`):
//! "no leader", "leader changed" and "request timed out" are `Unavailable`; "lease not
//! found" is `NotFound`; "too many operations in txn" and "request too large" are
//! `InvalidArgument`; "lease TTL too large" is `OutOfRange`; an invalid or expired auth
//! token is `Unauthenticated` — temporary: etcd forgets tokens (a simple token after
//! `--auth-token-ttl` idle, or when the member restarts; a JWT at its TTL), the client
//! authenticates again and repeats the request (`with_auto_token_refresh`), and one still
//! refused is worth a later try — and a missing permission `PermissionDenied`, a
//! configuration error. Authentication itself answers otherwise, so the connect step reads its codes apart
//! ([`failed_connecting`], [`failed_first_read`]): a user or password sent to a server with
//! authentication disabled is `FailedPrecondition` ("authentication is not enabled"), a
//! wrong user or password `InvalidArgument` ("authentication failed"), and a request
//! without a user to a server with authentication on `InvalidArgument` ("user name is
//! empty"). A status that carries a local cause (tonic sets
//! one when the connection failed, was reset or timed out on our side) never came from a
//! server: the request may not have arrived, so it is temporary whatever its code.

use std::time::Duration;

use fencelock_core::LockError;

pub(crate) const BACKEND: &str = "etcd";

/// What we were doing when the client failed, and why: its `Display` is "DOING on
/// CLUSTER: CAUSES" ([`causes`]), its `source` the first of those causes (the client
/// error itself has no `source`, and its `Display` of a gRPC status dumps the status's
/// local cause with `{:?}`: tonic's types, `Os { code: 111, … }`).
#[derive(Debug)]
pub(crate) struct EtcdFailure {
    pub doing: &'static str,
    pub cluster: String,
    pub source: etcd_client::Error,
}

impl std::fmt::Display for EtcdFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} on {}: {}", self.doing, self.cluster, causes(&self.source))
    }
}

impl std::error::Error for EtcdFailure {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        first_cause(&self.source)
    }
}

/// The error a client error wraps, when it has one worth chaining (one whose `Display`
/// is text for people).
fn first_cause(e: &etcd_client::Error) -> Option<&(dyn std::error::Error + 'static)> {
    use etcd_client::Error as E;
    match e {
        E::GRpcStatus(s) => std::error::Error::source(s),
        E::TransportError(t) => Some(t),
        E::IoError(io) => Some(io),
        _ => None,
    }
}

/// A client error as people read it: the `Display` texts of its causes joined by ": "
/// (each said once), e.g. "transport error: tcp connect error: Connection refused (os
/// error 111)"; a status the server sent as its message and code.
pub(crate) fn causes(e: &etcd_client::Error) -> String {
    use etcd_client::Error as E;
    match (e, first_cause(e)) {
        (_, Some(c)) => fencelock_core::error::one_line(c),
        (E::GRpcStatus(s), None) if s.message().is_empty() => format!("gRPC status {:?}", s.code()),
        (E::GRpcStatus(s), None) => format!("{} (gRPC status {:?})", s.message(), s.code()),
        (other, None) => other.to_string(),
    }
}

/// How a client error is to be treated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// No answer from a server (transport, I/O, a local cause) or a server that cannot
    /// serve now (no leader, timeout, overload): the same request may succeed later.
    Unreachable,
    /// The server refused a request for a missing permission: a configuration error.
    Auth,
    /// The server refused our auth token (expired, or forgotten by a restarted member)
    /// even after the client authenticated again: temporary. Refused credentials fail the
    /// authentication itself, at connect ([`failed_connecting`]) or when the client
    /// authenticates again (`InvalidArgument`: [`Kind::Permanent`]).
    TokenRefused,
    /// The lease does not exist (expired or revoked): final for that lease.
    LeaseGone,
    /// A stream (watch) broke: open it again.
    StreamBroke,
    /// The server answered that the request itself is wrong: retrying cannot help.
    Permanent,
}

/// Classifies one client error.
pub(crate) fn kind(e: &etcd_client::Error) -> Kind {
    use etcd_client::Error as E;
    match e {
        E::TransportError(_) | E::IoError(_) => Kind::Unreachable,
        E::GRpcStatus(s) if std::error::Error::source(s).is_some() => Kind::Unreachable,
        E::GRpcStatus(s) => match s.code() as i32 {
            grpc::CANCELLED
            | grpc::UNKNOWN
            | grpc::DEADLINE_EXCEEDED
            | grpc::RESOURCE_EXHAUSTED
            | grpc::ABORTED
            | grpc::UNAVAILABLE => Kind::Unreachable,
            grpc::UNAUTHENTICATED => Kind::TokenRefused,
            grpc::PERMISSION_DENIED => Kind::Auth,
            grpc::NOT_FOUND => Kind::LeaseGone,
            _ => Kind::Permanent,
        },
        // The client's keep-alive opener returns this kind only when the first answer has
        // TTL 0 (its channel send cannot fail: the receiver was made a line before).
        E::LeaseKeepAliveError(_) => Kind::LeaseGone,
        E::WatchError(_) => Kind::StreamBroke,
        _ => Kind::Permanent,
    }
}

pub(crate) fn failed(doing: &'static str, cluster: &str, source: etcd_client::Error) -> LockError {
    let k = kind(&source);
    let f = EtcdFailure {
        doing,
        cluster: cluster.to_owned(),
        source,
    };
    match k {
        Kind::Auth => LockError::InvalidConfig {
            message: format!("etcd refused the credentials: {doing}"),
            source: Some(Box::new(f)),
        },
        Kind::TokenRefused => LockError::backend_temporary(
            BACKEND,
            format!("{doing}: etcd refused the auth token, also after authenticating again"),
            f,
        ),
        // The failure's text in the message (the kind's own words first), so that a
        // chain printed on one line says each cause once.
        Kind::Unreachable => LockError::Unavailable {
            message: format!("etcd unreachable: {f}"),
            source: Some(Box::new(f)),
        },
        Kind::StreamBroke => LockError::backend_temporary(BACKEND, format!("{doing} failed"), f),
        Kind::LeaseGone | Kind::Permanent => LockError::backend(BACKEND, format!("{doing} failed"), f),
    }
}

/// The gRPC code of an answer the server gave (not one with a local cause).
fn server_code(e: &etcd_client::Error) -> Option<i32> {
    match e {
        etcd_client::Error::GRpcStatus(s) if std::error::Error::source(s).is_none() => Some(s.code() as i32),
        _ => None,
    }
}

/// Maps an error of connecting. With a user and password the client authenticates while
/// it connects (etcd's `Authenticate` call), and the server's answer to that call names a
/// configuration error: `FailedPrecondition` is "authentication is not enabled" (the only
/// precondition `Authenticate` checks), `InvalidArgument` is "authentication failed,
/// invalid user ID or password". Both are [`LockError::InvalidConfig`]; anything else
/// maps as [`failed`] does.
pub(crate) fn failed_connecting(cluster: &str, with_user: bool, source: etcd_client::Error) -> LockError {
    let message = match server_code(&source) {
        Some(grpc::FAILED_PRECONDITION) if with_user => format!(
            "etcd at {cluster} has authentication disabled, so it takes no user or password: remove them from the URL (or enable authentication on the server: `etcdctl auth enable`)"
        ),
        Some(grpc::INVALID_ARGUMENT) if with_user => {
            format!("etcd refused the user or password (authentication failed) at {cluster}")
        }
        _ => return failed("connecting", cluster, source),
    };
    LockError::InvalidConfig {
        message,
        source: Some(Box::new(EtcdFailure {
            doing: "authenticating",
            cluster: cluster.to_owned(),
            source,
        })),
    }
}

/// Maps an error of the first read after connecting (which proves a leader answers).
/// Without a user, `InvalidArgument` to that plain read is etcd's "user name is empty":
/// the server has authentication on, a [`LockError::InvalidConfig`]. With a user,
/// `Unauthenticated` to it refuses the token etcd has just issued, authenticated again
/// once: the members do not accept each other's tokens (a configuration error, as any
/// refusal while connecting; later, a refused token is temporary: [`Kind::TokenRefused`]).
/// Any other error is returned as it is.
pub(crate) fn failed_first_read(e: LockError, cluster: &str, with_user: bool) -> LockError {
    let code = failure_in(&e).and_then(|f| server_code(&f.source));
    if with_user && code == Some(grpc::UNAUTHENTICATED) {
        return LockError::InvalidConfig {
            message: format!("etcd at {cluster} refused the auth token it issued to the user"),
            source: Some(Box::new(e)),
        };
    }
    if with_user || code != Some(grpc::INVALID_ARGUMENT) {
        return e;
    }
    LockError::InvalidConfig {
        message: format!(
            "etcd at {cluster} requires a user and password (authentication is enabled): add USER:PASSWORD@ before the host"
        ),
        source: Some(Box::new(e)),
    }
}

/// The [`EtcdFailure`] in `e`'s source chain, if any.
fn failure_in(e: &LockError) -> Option<&EtcdFailure> {
    let mut src = std::error::Error::source(e);
    while let Some(s) = src {
        if let Some(f) = s.downcast_ref::<EtcdFailure>() {
            return Some(f);
        }
        src = s.source();
    }
    None
}

pub(crate) fn timed_out(doing: &'static str, cluster: &str, limit: Duration) -> LockError {
    LockError::Unavailable {
        message: format!("etcd unreachable: no answer to {doing} within {limit:?} from {cluster} (a slow or cut network, or a cluster without a quorum)"),
        source: None,
    }
}

/// gRPC status codes (numbers fixed by the gRPC spec), so that no tonic types are needed.
mod grpc {
    pub(super) const CANCELLED: i32 = 1;
    pub(super) const UNKNOWN: i32 = 2;
    pub(super) const INVALID_ARGUMENT: i32 = 3;
    pub(super) const DEADLINE_EXCEEDED: i32 = 4;
    pub(super) const NOT_FOUND: i32 = 5;
    pub(super) const PERMISSION_DENIED: i32 = 7;
    pub(super) const RESOURCE_EXHAUSTED: i32 = 8;
    pub(super) const FAILED_PRECONDITION: i32 = 9;
    pub(super) const ABORTED: i32 = 10;
    pub(super) const UNAVAILABLE: i32 = 14;
    pub(super) const UNAUTHENTICATED: i32 = 16;
}

/// `true` when the error says the lease does not exist (expired or revoked): the gRPC
/// `NotFound` code etcd gives "lease not found", found through the error's source chain.
pub(crate) fn lease_gone(e: &LockError) -> bool {
    failure_in(e).is_some_and(|f| kind(&f.source) == Kind::LeaseGone)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(code: tonic::Code) -> etcd_client::Error {
        etcd_client::Error::GRpcStatus(tonic::Status::new(code, "from the server"))
    }

    #[test]
    fn server_codes_decide_temporary_or_not() {
        for code in [
            tonic::Code::Unavailable,
            tonic::Code::DeadlineExceeded,
            tonic::Code::Cancelled,
            tonic::Code::Unknown,
        ] {
            let e = failed("doing", "c", status(code));
            assert!(e.is_temporary(), "{code:?}: {e}");
        }
        for code in [
            tonic::Code::InvalidArgument,
            tonic::Code::FailedPrecondition,
            tonic::Code::OutOfRange,
            tonic::Code::NotFound,
            tonic::Code::Internal,
        ] {
            let e = failed("doing", "c", status(code));
            assert!(!e.is_temporary(), "{code:?}: {e}");
        }
        // An expired or forgotten token, after connect: temporary.
        let e = failed("doing", "c", status(tonic::Code::Unauthenticated));
        assert!(e.is_temporary(), "{e}");
        let e = failed("doing", "c", status(tonic::Code::PermissionDenied));
        assert!(matches!(e, LockError::InvalidConfig { .. }), "{e}");
    }

    #[test]
    fn a_local_cause_is_temporary_whatever_the_code() {
        let io = std::io::Error::new(std::io::ErrorKind::BrokenPipe, "pipe");
        let s = tonic::Status::from_error(Box::new(io));
        let e = failed("doing", "c", etcd_client::Error::GRpcStatus(s));
        assert!(e.is_temporary(), "{e}");
    }

    #[test]
    fn authentication_answers_at_connect_are_configuration_errors() {
        let code = |c| status(c);
        for c in [tonic::Code::FailedPrecondition, tonic::Code::InvalidArgument] {
            let e = failed_connecting("etcd://h:1", true, code(c));
            assert!(matches!(e, LockError::InvalidConfig { .. }), "{c:?}: {e}");
            // Without credentials the client sent no Authenticate: the usual mapping.
            let e = failed_connecting("etcd://h:1", false, code(c));
            assert!(!matches!(e, LockError::InvalidConfig { .. }), "{c:?}: {e}");
        }
        assert!(
            failed_connecting("etcd://h:1", true, code(tonic::Code::FailedPrecondition))
                .to_string()
                .contains("authentication disabled")
        );
        assert!(failed_connecting("etcd://h:1", true, code(tonic::Code::Unavailable)).is_temporary());
        let read = failed("checking the cluster", "c", code(tonic::Code::InvalidArgument));
        let e = failed_first_read(read, "etcd://h:1", false);
        assert!(e.to_string().contains("requires a user"), "{e}");
        let read = failed("checking the cluster", "c", code(tonic::Code::Unavailable));
        assert!(failed_first_read(read, "etcd://h:1", false).is_temporary());
        // A token refused at once, while connecting: a configuration error.
        let read = failed("checking the cluster", "c", code(tonic::Code::Unauthenticated));
        let e = failed_first_read(read, "etcd://h:1", true);
        assert!(matches!(e, LockError::InvalidConfig { .. }), "{e}");
    }

    #[test]
    fn messages_say_the_causes_texts_not_debug_dumps() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "connection refused");
        let s = tonic::Status::from_error(Box::new(io));
        let e = failed("connecting", "etcd://127.0.0.1:1", etcd_client::Error::GRpcStatus(s));
        let text = fencelock_core::error::one_line(&e);
        assert_eq!(
            text,
            "backend unavailable: etcd unreachable: connecting on etcd://127.0.0.1:1: connection refused"
        );
        let e = failed("reading", "c", status(tonic::Code::Unavailable));
        let text = fencelock_core::error::one_line(&e);
        assert!(!text.contains("code: '"), "{text}");
        assert!(text.contains("from the server"), "{text}");
    }

    #[test]
    fn lease_not_found_is_recognised_by_code_not_text() {
        let gone = failed("revoking", "c", status(tonic::Code::NotFound));
        assert!(lease_gone(&gone));
        let other = failed(
            "revoking",
            "c",
            etcd_client::Error::GRpcStatus(tonic::Status::invalid_argument("lease not found")),
        );
        assert!(!lease_gone(&other), "the message text must not decide");
        let opener = failed(
            "keeping alive",
            "c",
            etcd_client::Error::LeaseKeepAliveError("x".into()),
        );
        assert!(lease_gone(&opener));
    }
}
