//! Mapping tokio-postgres errors into `LockError`, in one place.

use fencelock_core::LockError;
use tokio_postgres::error::SqlState;

pub(crate) const BACKEND: &str = "postgres";

/// The backend's own error: what it was doing when the client failed.
#[derive(Debug, thiserror::Error)]
#[error("{doing} on {server}")]
pub(crate) struct PgFailure {
    pub doing: &'static str,
    pub server: String,
    #[source]
    pub source: tokio_postgres::Error,
}

/// SQLSTATE classes that mean "the server cannot serve us now": 08 connection exception,
/// 57 operator intervention (admin shutdown, `pg_terminate_backend`, crash shutdown,
/// cannot connect now), 53 insufficient resources (too many connections).
fn unreachable_state(code: &SqlState) -> bool {
    let c = code.code();
    c.starts_with("08") || c.starts_with("57") || c.starts_with("53")
}

/// SQLSTATE classes that mean "retrying will not help": 28 invalid authorization, 3D
/// invalid catalog name (no such database), 42 syntax error or access rule violation
/// (no privilege to create the tables), 25006 read-only transaction (a standby).
fn config_state(code: &SqlState) -> bool {
    let c = code.code();
    c.starts_with("28") || c.starts_with("3D") || c.starts_with("42") || c == "25006"
}

/// The doing of a connection's start-up ([`failed`] with it is judged as a connect).
pub(crate) const CONNECTING: &str = "connecting";

/// Whether the client could not read the server's answer as PostgreSQL messages at all:
/// a tag no PostgreSQL message has (a MySQL server's greeting, whose first byte, its
/// length, reads as the tag `J`), or a length no message can have. tokio-postgres keeps
/// its error kinds private, so this looks at the structure under it: such an answer is
/// an `io::Error` of kind `InvalidInput` or `InvalidData` made by the message parser
/// (postgres-protocol), with no OS error code — a socket's own failures (reset,
/// refused, timed out) carry one, or another kind. The connect's own such errors (a
/// socket directory too long for `sun_path`; "could not resolve any addresses" cannot
/// come, every attempt is given its address, see `hosts::connect_each`) have the same
/// shape and are told apart by the client's connect kind (see [`start_up_refused`]),
/// which judges only start-up errors.
fn unreadable_answer(e: &tokio_postgres::Error) -> bool {
    use std::error::Error as _;
    e.source()
        .and_then(|s| s.downcast_ref::<std::io::Error>())
        .is_some_and(|io| {
            io.raw_os_error().is_none()
                && matches!(
                    io.kind(),
                    std::io::ErrorKind::InvalidInput | std::io::ErrorKind::InvalidData
                )
        })
}

/// What a failed start-up says about the URL, when it says something (a message that
/// names `f.server` once, for an error whose source is the client's error): the server's
/// refusal of the start-up message (an option, the database, the role: retrying will not
/// help), an answer that is not the PostgreSQL protocol (the wrong port: a server that
/// closes after a few bytes, or greets in a protocol of its own), or an
/// authentication the client cannot do (`channel_binding=require` without TLS).
fn start_up_refused(f: &PgFailure) -> Option<String> {
    let e = &f.source;
    if let Some(db) = e.as_db_error() {
        if !unreachable_state(db.code()) {
            // The server's words as its error says them (`FATAL: …`), so that the error
            // put under this one (see [`start_up_source`]) reads as said already: the
            // message was repeated after the advice (new-user trial: "password
            // authentication failed … : db error: FATAL: password authentication failed …").
            return Some(format!(
                "postgres refused the connection to {}: {} (SQLSTATE {}): check the URL's user, database and options",
                f.server,
                fencelock_core::error::one_line(db),
                db.code().code()
            ));
        }
        return None;
    }
    // The kind, then its cause.
    let text = fencelock_core::error::one_line(e);
    // First: an authentication the client cannot finish can fail with an `InvalidInput`
    // of its own (a SCRAM verification, a nonce), which is not a foreign protocol.
    if text.starts_with("authentication error") {
        return Some(format!("postgres authentication failed on {}: {text}", f.server));
    }
    // tokio-postgres's connect kind (its kinds are private; this is its Display): the
    // address or socket path was refused before any server answered — a socket
    // directory too long for `sun_path` is an `InvalidInput` with no OS code too.
    let before_any_answer = text.starts_with("error connecting to server");
    let unreadable = unreadable_answer(e);
    if before_any_answer && unreadable {
        return Some(format!("cannot connect to {}: {text}: check the URL's host", f.server));
    }
    if (unreadable && !before_any_answer)
        || text.contains("bytes remaining on stream")
        || text.starts_with("unexpected message from server")
        || text.starts_with("error parsing response from server")
    {
        return Some(format!(
            "the server at {} does not answer in the PostgreSQL protocol ({text}): is the host and port right?",
            f.server
        ));
    }
    None
}

/// The error to put under a [`start_up_refused`] message: the client's error, or for a
/// refusal by the server its `DbError` alone — whose text the message quotes, so that an
/// error chain printed on one line (`fencelock_core::error::one_line`) skips it — and
/// nothing when that text spans lines (a `DETAIL`, a `HINT`), which the message quotes
/// on one line: the chain would say it again.
fn start_up_source(e: tokio_postgres::Error) -> Option<fencelock_core::error::BoxError> {
    match e.as_db_error().map(|db| db.to_string().contains('\n')) {
        Some(true) => None,
        Some(false) => e.into_source(),
        None => Some(Box::new(e)),
    }
}

impl From<PgFailure> for LockError {
    fn from(f: PgFailure) -> Self {
        if f.doing == CONNECTING {
            if let Some(message) = start_up_refused(&f) {
                // The message names the server: its source is the client's error, not
                // the failure, whose "connecting on SERVER" would name it again.
                return LockError::InvalidConfig {
                    message,
                    source: start_up_source(f.source),
                };
            }
        }
        let e = &f.source;
        if let Some(code) = e.code() {
            if config_state(code) {
                // A syntax error in our own SQL comes from the one thing a user splices
                // into it, the schema: a word a newer server reserves (the list in
                // config.rs is as of PostgreSQL 15 and 16).
                let check = if *code == SqlState::SYNTAX_ERROR {
                    "check that the `schema` option is not a word this server reserves"
                } else {
                    "check the user, password, database and its privileges"
                };
                return LockError::InvalidConfig {
                    message: format!(
                        "postgres refused: {} on {} (SQLSTATE {}): {check}",
                        f.doing,
                        f.server,
                        code.code()
                    ),
                    source: Some(Box::new(f)),
                };
            }
            if !unreachable_state(code) {
                // 40 transaction rollback (serialization failure, deadlock) and 55 object
                // not in prerequisite state (lock not available) can pass; the rest
                // (constraint, data, internal errors) will not.
                let temporary = code.code().starts_with("40") || code.code().starts_with("55");
                return LockError::Backend {
                    backend: BACKEND,
                    message: format!("{} failed (SQLSTATE {})", f.doing, code.code()),
                    source: Some(Box::new(f)),
                    temporary,
                };
            }
        }
        // No SQLSTATE, but the client found the configuration cannot work (the server asked
        // for a password the URL does not give, an option it cannot use). tokio-postgres
        // exposes its error kind only through the text ("invalid configuration: …"), so
        // the text decides here; retrying will not help.
        if e.to_string().starts_with("invalid configuration") {
            // The password hint only where the client's complaint is about one.
            let hint = if fencelock_core::error::one_line(e).contains("password") {
                " (a server that asks for a password needs USER:PASSWORD@ in the URL)"
            } else {
                ""
            };
            return LockError::InvalidConfig {
                message: format!("postgres cannot use the URL: {} on {}: {e}{hint}", f.doing, f.server),
                source: Some(Box::new(f)),
            };
        }
        // No SQLSTATE: an I/O error, a closed connection, a protocol error — all mean the
        // server could not be talked to.
        LockError::Unavailable {
            message: format!("postgres unreachable: {} on {}", f.doing, f.server),
            source: Some(Box::new(f)),
        }
    }
}

/// A connect told to create nothing (`create_tables=false`) found `nothing` missing: an
/// `InvalidConfig` quoting `url` (with its query: the `schema=` in it is the thing to
/// check), with `advice` after the usual text, and `nothing` as its source so that a
/// reader may answer "nothing held" ([`fencelock_core::error::NothingCreated`]).
pub(crate) fn nothing_created(url: &str, nothing: fencelock_core::error::NothingCreated, advice: &str) -> LockError {
    LockError::InvalidConfig {
        message: format!(
            "{url}: {nothing}, and this connection does not create them (`create_tables=false`): check the `schema=` option{advice}"
        ),
        source: Some(Box::new(nothing)),
    }
}

/// Wraps a client error with what we were doing.
pub(crate) fn failed(doing: &'static str, server: &str, source: tokio_postgres::Error) -> LockError {
    PgFailure {
        doing,
        server: server.to_owned(),
        source,
    }
    .into()
}

/// No answer within the statement timeout.
pub(crate) fn no_answer(doing: &str, server: &str, timeout: std::time::Duration) -> LockError {
    LockError::Unavailable {
        message: format!("postgres unreachable: no answer to {doing} within {timeout:?} from {server}"),
        source: None,
    }
}
