//! Mapping the redis crate's errors into `LockError`, in one place. What kind of failure
//! it is comes from the client crate's [`redis::ErrorKind`] and the server's error code,
//! never from the message text (only [`no_permission`] and [`script_refusal`] read it, for
//! refusals wrapped in another error).

use fencelock_core::LockError;
use redis::{ErrorKind, ServerErrorKind};

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

/// The source of the [`LockError::InvalidConfig`] a connection's rights check gives
/// (`acl.rs`): the server's ACL refuses the user commands fencelock needs — one server's
/// setting, where a refused login is the URL's. Redlock tells them apart at connect
/// ([`is_rights_refusal`]): a minority of nodes refusing rights is outvoted, as on every
/// later round.
#[derive(Debug, thiserror::Error)]
// Worded as the message says it, so that `one_line` does not repeat it.
#[error("is refused what fencelock needs: {commands}")]
pub(crate) struct RightsRefused {
    pub commands: String,
}

/// Whether `e` is a server's refusal of the user's rights (its ACL), from the check a
/// connection makes before its first use — not a refused login or a bad URL.
pub fn is_rights_refusal(e: &LockError) -> bool {
    match e {
        LockError::InvalidConfig { source: Some(s), .. } => s.is::<RightsRefused>(),
        _ => false,
    }
}

/// What kind of failure a client error is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Class {
    /// Credentials or settings refused: the same call fails again.
    Config,
    /// No answer, or the connection failed: the server may be back soon.
    Unreachable,
    /// The server answered with an error that passes: loading its data set after a restart
    /// (`LOADING`), a failover under way (`MASTERDOWN`, `READONLY`, `TRYAGAIN`,
    /// `CLUSTERDOWN`, `MOVED`/`ASK`), a script running long (`BUSY`), out of memory
    /// under `noeviction` until keys expire (`OOM`), writes refused since the last
    /// snapshot failed (`MISCONF`, `stop-writes-on-bgsave-error`: a full or failing disk;
    /// writes come back by themselves at the next snapshot that succeeds, so a lease
    /// keeps retrying its renewals within its validity rather than ending at once).
    Temporary,
    /// An error the same request meets again: a key of the wrong type (`WRONGTYPE`), a
    /// script's own error (not a refusal of a command it called: see [`script_refusal`])
    /// or a script missing after the client already re-sent it (`NOSCRIPT`:
    /// `scripts::Call::invoke` sends the whole script once on its own), a transaction
    /// aborted without a refusal inside (`EXECABORT` alone), a reply of an unexpected type,
    /// a refused command (`ERR`).
    Permanent,
}

/// Whether the server refused `e` for the user's rights (`NOPERM`): by its kind, or — for a
/// refusal the redis crate wraps in another error (an `EXECABORT`, the `SELECT` it sends
/// while connecting) — by the server's words in the message, the one place this module
/// reads them. Not used by [`classify`].
pub(crate) fn no_permission(e: &redis::RedisError) -> bool {
    if e.kind() == ErrorKind::Server(ServerErrorKind::NoPerm) {
        return true;
    }
    let text = fencelock_core::error::one_line(e);
    text.contains("NOPERM") || text.contains("no permissions")
}

/// The server's refusal of the first command queued in a transaction, for an aborted
/// one (`EXECABORT`: the redis crate reports it with the refusals inside); `None` for
/// every other error.
fn queued_refusal(e: &redis::RedisError) -> Option<redis::RedisError> {
    if e.kind() != ErrorKind::Server(ServerErrorKind::ExecAbort) {
        return None;
    }
    let refusals = e.clone().into_server_errors()?;
    let (_, first) = refusals.first()?;
    // A bare `EXECABORT` (no refusal inside) stays one.
    (first.kind() != Some(ServerErrorKind::ExecAbort)).then(|| redis::RedisError::from(first.clone()))
}

/// The server's refusal of a command a script called, for a script error as Redis before
/// 7.0 words it: `ERR Error running script (call to f_SHA): @user_script:N: @user_script:
/// N: -READONLY You can't write against a read only replica.` — the refusal, its code
/// included, after the place it was raised (6.2's `scripting.c`: `luaPushError` puts the
/// place before the refusal, `evalGenericCommand` wraps the rest in its `ERR`). Redis 7.0
/// and later answer with the refusal's own code (`-READONLY … script: SHA, on
/// @user_script:N.`), which needs no unwrapping. `None` for every other error, a script's
/// own (a Lua runtime error, a refusal without a code) included. Reads the message text
/// only here, where the server gives the code nowhere else.
fn script_refusal(e: &redis::RedisError) -> Option<redis::RedisError> {
    if e.kind() != ErrorKind::Server(ServerErrorKind::ResponseError) {
        return None;
    }
    let detail = e.detail()?.strip_prefix("Error running script ")?;
    let (_, inner) = detail.split_once(": -")?;
    let code = inner.split(' ').next()?;
    if code.is_empty() || !code.bytes().all(|b| b.is_ascii_uppercase()) {
        return None;
    }
    match redis::parse_redis_value(format!("-{inner}\r\n").as_bytes()) {
        Ok(redis::Value::ServerError(refusal)) => Some(refusal.into()),
        _ => None,
    }
}

/// Classifies one client error by its kind and its server error code; an aborted
/// transaction (`EXECABORT`) by the server's refusal of its first queued command (`LOADING`,
/// `READONLY`, `OOM`, … are temporary there too, `NOPERM` a configuration error); a
/// script's error on Redis before 7.0 by the refusal of the command it called, wrapped in
/// it ([`script_refusal`]).
pub(crate) fn classify(e: &redis::RedisError) -> Class {
    match queued_refusal(e).or_else(|| script_refusal(e)) {
        Some(inner) => classify_one(&inner),
        None => classify_one(e),
    }
}

fn classify_one(e: &redis::RedisError) -> Class {
    match e.kind() {
        ErrorKind::AuthenticationFailed | ErrorKind::InvalidClientConfig => return Class::Config,
        ErrorKind::Server(ServerErrorKind::NoPerm) => return Class::Config,
        _ => {}
    }
    if matches!(e.code(), Some("NOAUTH" | "WRONGPASS")) {
        return Class::Config;
    }
    if e.is_io_error() || e.is_connection_refusal() || e.is_timeout() || e.is_connection_dropped() {
        return Class::Unreachable;
    }
    match e.kind() {
        ErrorKind::Io => Class::Unreachable,
        ErrorKind::Server(
            ServerErrorKind::BusyLoading
            | ServerErrorKind::TryAgain
            | ServerErrorKind::ClusterDown
            | ServerErrorKind::MasterDown
            | ServerErrorKind::ReadOnly
            | ServerErrorKind::Moved
            | ServerErrorKind::Ask,
        ) => Class::Temporary,
        ErrorKind::Extension if matches!(e.code(), Some("BUSY" | "OOM" | "MISCONF")) => Class::Temporary,
        _ => Class::Permanent,
    }
}

impl From<RedisFailure> for LockError {
    fn from(f: RedisFailure) -> Self {
        match classify(&f.source) {
            Class::Config => LockError::InvalidConfig {
                message: format!("redis refused the credentials or settings: {} on {}", f.doing, f.server),
                source: Some(Box::new(f)),
            },
            Class::Unreachable => LockError::Unavailable {
                message: format!("redis unreachable: {} on {}", f.doing, f.server),
                source: Some(Box::new(f)),
            },
            Class::Temporary => {
                let message = format!("{} failed; the server says to try again", f.doing);
                LockError::backend_temporary(BACKEND, message, f)
            }
            Class::Permanent => {
                let message = format!("{} failed", f.doing);
                LockError::backend(BACKEND, message, f)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn kind(k: ErrorKind) -> redis::RedisError {
        redis::RedisError::from((k, "test"))
    }

    fn code(c: &str) -> redis::RedisError {
        redis::make_extension_error(c.to_owned(), Some("test".to_owned()))
    }

    #[test]
    fn each_error_is_classified_by_its_kind_or_code() {
        for k in [
            ServerErrorKind::BusyLoading,
            ServerErrorKind::TryAgain,
            ServerErrorKind::ClusterDown,
            ServerErrorKind::MasterDown,
            ServerErrorKind::ReadOnly,
        ] {
            assert_eq!(classify(&kind(ErrorKind::Server(k))), Class::Temporary, "{k:?}");
        }
        for k in [
            ErrorKind::Server(ServerErrorKind::ResponseError),
            ErrorKind::Server(ServerErrorKind::NoScript),
            ErrorKind::Server(ServerErrorKind::ExecAbort),
            ErrorKind::UnexpectedReturnType,
            ErrorKind::Parse,
        ] {
            assert_eq!(classify(&kind(k)), Class::Permanent, "{k:?}");
        }
        assert_eq!(classify(&kind(ErrorKind::Io)), Class::Unreachable);
        assert_eq!(classify(&kind(ErrorKind::AuthenticationFailed)), Class::Config);
        assert_eq!(classify(&code("NOAUTH")), Class::Config);
        assert_eq!(classify(&code("WRONGPASS")), Class::Config);
        assert_eq!(classify(&code("WRONGTYPE")), Class::Permanent);
        assert_eq!(classify(&code("BUSY")), Class::Temporary);
        assert_eq!(classify(&code("OOM")), Class::Temporary);
        // Writes refused until a later save succeeds (review: a disk full for a while on
        // 2 of 3 Redlock nodes ended every auto-renewed lease at once).
        assert_eq!(classify(&code("MISCONF")), Class::Temporary);
    }

    /// A server error as the redis crate parses it off the wire (`-CODE detail\r\n`).
    fn reply(line: &str) -> redis::RedisError {
        match redis::parse_redis_value(format!("-{line}\r\n").as_bytes()) {
            Ok(redis::Value::ServerError(e)) => e.into(),
            other => panic!("not a server error: {other:?}"),
        }
    }

    /// Redis before 7.0 answers a script whose `redis.call` was refused with the refusal
    /// inside its own `ERR Error running script …` (`scripting.c`, 6.2: `luaPushError`
    /// with the location, raised, then `addReplyErrorFormat`); 7.0 and later answer with
    /// the refusal's own code (`-READONLY … script: …`). Both are classed by the refusal.
    /// Failed before: the wrapped ones were `ERR`, permanent — an extend (a script) on a
    /// primary just demoted, out of memory or unable to save ended the lease at once.
    #[test]
    fn a_refusal_inside_a_script_is_classed_by_its_own_code() {
        let f = "Error running script (call to f_0123456789abcdef0123456789abcdef01234567): @user_script:12: @user_script: 12:";
        for (inner, class) in [
            (
                "READONLY You can't write against a read only replica.",
                Class::Temporary,
            ),
            (
                "OOM command not allowed when used memory > 'maxmemory'.",
                Class::Temporary,
            ),
            (
                "MISCONF Redis is configured to save RDB snapshots, but it is currently not able to persist on disk.",
                Class::Temporary,
            ),
            (
                "WRONGTYPE Operation against a key holding the wrong kind of value",
                Class::Permanent,
            ),
            (
                "NOPERM this user has no permissions to run the 'set' command",
                Class::Config,
            ),
        ] {
            let wrapped = reply(&format!("ERR {f} -{inner}"));
            assert_eq!(wrapped.code(), Some("ERR"), "{wrapped:?}");
            assert_eq!(classify(&wrapped), class, "Redis 6: {inner}");
            // Redis 7: the refusal's code, the script named after it.
            let own = reply(&format!(
                "{inner} script: 0123456789abcdef0123456789abcdef01234567, on @user_script:12."
            ));
            assert_eq!(classify(&own), class, "Redis 7: {inner}");
        }
        // A script's own error (a Lua runtime error, a refusal without a code) stays one.
        for line in [
            "ERR Error running script (call to f_01): @user_script:3: user_script:3: attempt to compare nil with number",
            "ERR Error running script (call to f_01): @user_script:3: @user_script: 3: Unknown Redis command called from Lua script",
            "ERR user_script:3: attempt to compare nil with number script: 01, on @user_script:3.",
            "ERR Error running script (call to f_01): @user_script:3: @user_script: 3: -",
        ] {
            assert_eq!(classify(&reply(line)), Class::Permanent, "{line}");
        }
    }

    #[test]
    fn lock_errors_carry_the_class() {
        let err = |e| failed("acquire", "redis://h:1", e);
        assert!(err(kind(ErrorKind::Server(ServerErrorKind::BusyLoading))).is_temporary());
        assert!(!err(code("WRONGTYPE")).is_temporary());
        assert!(matches!(err(code("NOAUTH")), LockError::InvalidConfig { .. }));
        assert!(matches!(err(kind(ErrorKind::Io)), LockError::Unavailable { .. }));
    }
}
