//! `postgres://` URLs: the standard libpq URL form, read by tokio-postgres, plus the
//! backend's own options, which are taken out of the query before tokio-postgres sees it.

use std::str::FromStr;
use std::time::Duration;

use fencelock_core::backend_url::BackendUrl;
use fencelock_core::options::duration_text::{human, parse_duration};
use fencelock_core::options::url_query;
use fencelock_core::{LockError, Result};

/// The schema the backend's tables live in unless the URL names another.
pub const DEFAULT_SCHEMA: &str = "fencelock";

/// The backend's options, from the URL's query or set in code.
///
/// Everything else in the URL — user, password, host(s), port, database, and libpq
/// parameters such as `sslmode`, `application_name`, `options`, `keepalives` — is the
/// standard libpq URL form, parsed by tokio-postgres.
///
/// | query key | default | meaning |
/// |---|---|---|
/// | `schema` | `fencelock` | the schema of the backend's tables (`locks`, `tokens`, `waiters`, `abandoned`, `fences`); an SQL identifier of lowercase letters, digits and `_`, at most 40 bytes, not a reserved word nor a system schema, created on first use |
/// | `timeout` | `1s` | the longest wait for one statement's answer; a slower statement fails as "unavailable". The connection is cut (its leases reported lost) only when it is dead: nothing answered on it for `timeout` and no lease granted through it still valid — while one is, an answer may still renew it |
/// | `connect_timeout` | `1s` | the longest wait for one TCP connect (a plain number is seconds, as in libpq); a whole connection attempt to one address of a host, with its start-up and set-up, gets at most `connect_timeout` + 2 × `timeout`, then the next address or host is tried (a host name's lookup: at most as long again); a host refusing the authentication ends the connect (`InvalidConfig`), as in libpq |
/// | `poll` | `500ms` | how often (jittered to 50–100 %) an instance renews its waiters' tickets, in one statement; a ticket lives `2 × poll + 1 s` past its last renewal (the dead-waiter bound), and a waiter re-checks at the latest every `4 × poll` (jittered) |
/// | `renew_window` | `50ms` | how long a background renewal may wait to share one statement with others (capped at a tenth of its TTL; `0ms`: only renewals already due share) |
/// | `connections` | `4` | the most connections the instance opens, 1 to 32 (one spare more while every open one is silent: a statement went unanswered past `timeout`; once two answer again, one that holds no lease and does not listen is closed — while each holds a lease, the pool stays one over until one of them ends): made one at a time when every open one is busy (the first statement makes one), so statements of different keys run side by side on the server; a lease stays with the connection that granted it |
/// | `create_tables` | `true` | `false`: a connect that finds the schema's tables missing fails with `InvalidConfig` ("fencelock's tables (…) missing in schema `x`", its source a `NothingCreated` when none of them is there) and creates nothing (read-only uses, migration-managed schemas) |
/// | `handoff` | `false` | `true`: the release of a lease granted after waiting hands the key to the oldest waiter in its own statement, and the waiter is granted by the notification (one round trip less per hand-off on a hot key); off, the release names that waiter, who acquires. Measured in docs/backends/postgres.md: it helps one hot key a little and hurts an instance waiting for many keys at once |
///
/// `sslmode=disable`, `allow` and `prefer` (the libpq default) connect without TLS;
/// `require`, `verify-ca` and `verify-full`, an unknown mode, and libpq's TLS file
/// options (`sslrootcert`, `sslcert`, `sslkey`, …) are refused with
/// [`LockError::InvalidConfig`], because this build has no TLS connector: a lock that
/// asked for TLS never silently runs in plain text.
#[derive(Debug, Clone)]
pub struct PgConfig {
    /// What tokio-postgres connects with.
    pub(crate) pg: tokio_postgres::Config,
    /// The URL without the password, for messages.
    pub(crate) display: String,
    /// The URL as given with its query, without the password: for messages about an
    /// option of the query (`schema=`), which docs/cli.md says quote it so.
    pub(crate) url: String,
    /// The schema of the tables.
    pub schema: String,
    /// Statement timeout.
    pub timeout: Duration,
    /// Connect timeout.
    pub connect_timeout: Duration,
    /// How often the waiters' tickets are renewed; also sets their life (`2 × poll + 1 s`)
    /// and a waiter's longest pause between re-checks (`4 × poll`).
    pub poll: Duration,
    /// How long a background renewal may wait for others to share its statement with.
    pub renew_window: Duration,
    /// The most connections the instance opens ([`MAX_CONNECTIONS`] at most), one spare
    /// more while every open one is silent.
    pub connections: usize,
    /// Whether the release of a lease granted after waiting hands the key to the oldest
    /// waiter in its own statement (`sql::release_handing`); off, the plain release.
    pub handoff: bool,
    /// Whether a connect creates the schema and the tables when they are missing (the
    /// default); `false` (`create_tables=false` in the URL): a connect that finds them
    /// missing fails with [`LockError::InvalidConfig`] (its source a
    /// [`NothingCreated`](fencelock_core::error::NothingCreated), with the server's
    /// guarantees, when none of them is there) and creates nothing — for
    /// read-only uses (`fencelock leader`, `fencelock backends`), where a typo in
    /// `schema=` must not make a stray schema, and for schemas a migration manages.
    pub create_tables: bool,
}

/// The shortest TTL of any lease of this backend: 100 ms — for a lease without
/// auto-renew the minimum, for an auto-renewed one a floor under twice the statement
/// `timeout` ([`PgConfig::min_ttl_for`]). A grant is a committed write that waits for a
/// WAL flush besides its round trip, and one answered after its TTL arrives with no
/// validity left: it is given back, and has spent a token. On the project's shared 2-core
/// machine a grant took up to 23 ms (a flush there takes 3–7 ms, docs/backends/postgres.md
/// "Measured"): `try_acquire` with a 9 ms TTL and no auto-renew answered `Unavailable` (a
/// temporary error, so a caller retries it) and `acquire` with 1 ms spent three tokens
/// before answering `InvalidInput`. 100 ms is the floor the `fencelock` command already
/// sets for the same reason (`MIN_COMMAND_TTL`), and is refused as input before anything
/// is sent.
pub const MIN_UNRENEWED_TTL: Duration = Duration::from_millis(100);

/// The most connections one instance may open (`connections` in the URL): a few cover
/// the server's cores and its group commit; more would only take the server's
/// `max_connections` from other clients.
pub const MAX_CONNECTIONS: usize = 32;

/// The backend's own URL options, for messages.
const OWN_KEYS: &str = "schema, timeout, connect_timeout, poll, renew_window, connections, handoff, create_tables";

/// The libpq options the URL passes on to tokio-postgres (its `Config::from_str` keys,
/// less those read above): any other key is refused as unknown.
const LIBPQ_KEYS: &[&str] = &[
    "user",
    "password",
    "dbname",
    "options",
    "application_name",
    "sslmode",
    "sslnegotiation",
    "host",
    "hostaddr",
    "port",
    "tcp_user_timeout",
    "keepalives",
    "keepalives_idle",
    "keepalives_interval",
    "keepalives_retries",
    "target_session_attrs",
    "channel_binding",
    "load_balance_hosts",
];

/// The connections an instance opens at most unless the URL says otherwise.
pub const DEFAULT_CONNECTIONS: usize = 4;

impl PgConfig {
    /// Parses `postgres://[USER[:PASSWORD]@]HOST[:PORT][/DB][?libpq params&schema=S&timeout=D&connect_timeout=D&poll=D&renew_window=D&connections=N&handoff=BOOL&create_tables=BOOL]`
    /// (or `postgresql://…`).
    ///
    /// # Errors
    ///
    /// [`LockError::InvalidConfig`] for another scheme, a bad option or duration, a schema
    /// that is not a plain identifier, a URL tokio-postgres cannot read, or an `sslmode`
    /// that needs TLS. The message never contains the password.
    pub fn from_url(url: &str) -> Result<Self> {
        // fencelock-core's one URL parser splits, decodes and redacts; tokio-postgres then
        // reads the libpq form itself, from the URL as written minus the backend's options.
        let u = BackendUrl::parse(url)?;
        let display = u.redacted();
        let bad = |why: String| u.invalid(why);
        u.expect_scheme(&["postgres", "postgresql"], "PostgreSQL")?;
        let mut cfg = PgConfig {
            pg: tokio_postgres::Config::new(),
            display: u.redacted_base(),
            url: display.clone(),
            schema: DEFAULT_SCHEMA.into(),
            timeout: Duration::from_secs(1),
            connect_timeout: Duration::from_secs(1),
            poll: Duration::from_millis(500),
            renew_window: Duration::from_millis(50),
            connections: DEFAULT_CONNECTIONS,
            handoff: false,
            create_tables: true,
        };
        let mut passed: Vec<String> = Vec::new();
        for pair in u.query() {
            let (k, v) = (pair.key.as_str(), pair.value.as_str());
            let duration = || parse_duration(v).map_err(|e| bad(format!("{k}: {e}")));
            match k {
                "schema" => cfg.schema = v.to_owned(),
                "timeout" => cfg.timeout = duration()?,
                "connect_timeout" if !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()) => {
                    let secs: u64 = v.parse().map_err(|_| bad(format!("connect_timeout `{v}` too large")))?;
                    cfg.connect_timeout = Duration::from_secs(secs);
                }
                "connect_timeout" => cfg.connect_timeout = duration()?,
                "poll" => cfg.poll = duration()?,
                "renew_window" => cfg.renew_window = duration()?,
                "connections" => {
                    cfg.connections = v.parse().map_err(|_| {
                        bad(format!(
                            "connections: `{v}` is not a whole number of connections (1 to {MAX_CONNECTIONS})"
                        ))
                    })?
                }
                "handoff" => {
                    cfg.handoff = match v {
                        "true" => true,
                        "false" => false,
                        _ => return Err(bad(format!("handoff takes true or false, not `{v}`"))),
                    }
                }
                "create_tables" => {
                    cfg.create_tables = match v {
                        "true" => true,
                        "false" => false,
                        _ => return Err(bad(format!("create_tables takes true or false, not `{v}`"))),
                    }
                }
                // Said once: with a database in the path and `dbname=` in the query,
                // tokio-postgres took the query's while every message showed the path's
                // (a new-user trial locked in one database while told of another).
                "dbname" if !u.path().trim_start_matches('/').is_empty() => {
                    return Err(bad(
                        "the database is given twice, in the path and as dbname=: give it once, in the path".into(),
                    ))
                }
                "user" if u.user().is_some() => {
                    return Err(bad(
                        "the user is given twice, before the @ and as user=: give it once, before the @".into(),
                    ))
                }
                "sslmode" => passed.push(format!("sslmode={}", plain_sslmode(v).map_err(|e| u.invalid(e))?)),
                k if TLS_FILE_KEYS.contains(&k) => return Err(u.invalid(format!("{k}: {NO_TLS}"))),
                // Named here, as etcd and ZooKeeper name theirs: tokio-postgres's own
                // "invalid connection string: unknown option" read as a malformed URL.
                k if !LIBPQ_KEYS.contains(&k) => {
                    return Err(bad(format!(
                        "unknown option `{k}` (PostgreSQL takes {OWN_KEYS}, and passes on libpq's {})",
                        LIBPQ_KEYS.join(", ")
                    )))
                }
                _ => passed.push(pair.raw.clone()),
            }
        }
        cfg.check(&display)?;
        // The credentials go to tokio-postgres decoded, apart from the URL: its own URL
        // parser need not agree with ours on a password holding `@` or `:`.
        let libpq = if passed.is_empty() {
            u.raw_base_without_userinfo()
        } else {
            format!("{}?{}", u.raw_base_without_userinfo(), passed.join("&"))
        };
        let mut pg = tokio_postgres::Config::from_str(&libpq).map_err(|e| LockError::InvalidConfig {
            message: format!(
                "`{display}` is not a PostgreSQL URL tokio-postgres can read (the backend's own options are {OWN_KEYS})"
            ),
            source: Some(Box::new(e)),
        })?;
        if let Some(user) = u.user() {
            pg.user(user);
        }
        if let Some(password) = u.password() {
            pg.password(password);
        }
        if pg.get_hosts().is_empty() {
            return Err(bad("no host: write postgres://USER@HOST:PORT/DB".into()));
        }
        if pg.get_application_name().is_none() {
            pg.application_name("fencelock");
        }
        pg.connect_timeout(cfg.connect_timeout);
        cfg.pg = pg;
        Ok(cfg)
    }

    /// The shortest TTL an auto-renewed lease of this configuration may be asked for (by
    /// an acquire, or an `extend` of such a lease): twice the statement `timeout`, and
    /// never less than [`MIN_UNRENEWED_TTL`]. An auto-renewal is sent a third of the way
    /// into the validity, after waiting at most `renew_window` (capped at a tenth of the
    /// TTL) to share a statement, and may take `timeout` to be answered: it lands before
    /// the lease expires only if `ttl / 3 + ttl / 10 + timeout <= ttl`, i.e. a TTL of at
    /// least 1.77 × `timeout`; twice leaves a margin. Below it a healthy server answering
    /// within `timeout` could still see its leases lost, each renewal landing after the
    /// expiry. A lease without auto-renew has no renewal to fit: see
    /// [`min_ttl_for`](Self::min_ttl_for).
    pub fn min_ttl(&self) -> Duration {
        self.min_ttl_for(true)
    }

    /// The shortest TTL a lease of this configuration may be asked for: with
    /// `auto_renew`, [`min_ttl`](Self::min_ttl); without, [`MIN_UNRENEWED_TTL`] whatever
    /// the `timeout` (an answer later than its TTL hands out no lease: it is counted from
    /// the send). A shorter TTL is refused with [`LockError::InvalidInput`] before any
    /// statement is sent.
    pub fn min_ttl_for(&self, auto_renew: bool) -> Duration {
        if auto_renew {
            (self.timeout * 2).max(MIN_UNRENEWED_TTL)
        } else {
            MIN_UNRENEWED_TTL
        }
    }

    /// Refuses a TTL below [`min_ttl_for`](Self::min_ttl_for) — zero included — with one
    /// message for every case ("ttl X is below the minimum of Y for …"), durations as
    /// humantime writes them, as the core's own TTL errors do. Run before any round trip
    /// (an acquire, an `extend`), and before the core's checks, which know only the
    /// library-wide 1 ms minimum.
    ///
    /// # Errors
    ///
    /// [`LockError::InvalidInput`] naming the TTL, the minimum, why, and the way out.
    pub(crate) fn check_ttl(&self, ttl: Duration, auto_renew: bool) -> Result<()> {
        let minimum = self.min_ttl_for(auto_renew);
        if ttl >= minimum {
            return Ok(());
        }
        let (ttl_text, min_text) = (human(ttl), human(minimum));
        if !auto_renew {
            return Err(LockError::invalid_input(format!(
                "ttl {ttl_text} is below the minimum of {min_text} for a lease without auto-renew on \
                 postgres: a grant is a commit that waits for a WAL flush, and a grant answered after \
                 its TTL arrives with no validity left (given back, its token spent); use a TTL of at \
                 least {min_text}"
            )));
        }
        // A shorter `timeout=` helps only where twice it is what sets the minimum, and a
        // timeout of at least 1 ms (the URL's own bound) can fit.
        let half = ttl / 2;
        let shorter_timeout = if ttl >= MIN_UNRENEWED_TTL && half >= Duration::from_millis(1) {
            format!(
                ", or a shorter `timeout=` in the URL (at most {} for this TTL)",
                human(half)
            )
        } else {
            String::new()
        };
        Err(LockError::invalid_input(format!(
            "ttl {ttl_text} is below the minimum of {min_text} for an auto-renewed lease on postgres: \
             twice the statement timeout ({}, the URL's `timeout=`), since an auto-renewal answered \
             within its timeout could land after the lease expired; use a TTL of at least \
             {min_text}{shorter_timeout}, or turn auto-renew off",
            human(self.timeout)
        )))
    }

    /// The one check of the options, whether they came from a URL or were set in code
    /// ([`PgLock::connect_with`](crate::PgLock::connect_with) runs it too): the schema is
    /// spliced into SQL, so it must be a plain identifier; durations within the bounds
    /// every backend uses (1 ms to 10 min), so no `Instant` arithmetic can overflow;
    /// `connections` from 1 to [`MAX_CONNECTIONS`].
    ///
    /// # Errors
    ///
    /// [`LockError::InvalidConfig`] naming the option.
    pub fn validate(&self) -> Result<()> {
        self.check(&self.display)
    }

    /// [`validate`](Self::validate), naming the configuration as `shown` (from a URL: the
    /// URL as given, password hidden, so the option in question is in sight).
    fn check(&self, shown: &str) -> Result<()> {
        let bad = |why: String| LockError::invalid_config(format!("`{shown}`: {why}"));
        check_identifier(&self.schema).map_err(|why| bad(format!("schema: {why}")))?;
        url_query::check_timeouts(&[
            ("timeout", self.timeout),
            ("connect_timeout", self.connect_timeout),
            ("poll", self.poll),
        ])
        .map_err(bad)?;
        if !(1..=MAX_CONNECTIONS).contains(&self.connections) {
            return Err(bad(format!(
                "connections must be from 1 to {MAX_CONNECTIONS}, got {}",
                self.connections
            )));
        }
        if self.renew_window > Duration::from_secs(10) {
            return Err(bad(format!(
                "renew_window must be at most 10s, got {:?}",
                self.renew_window
            )));
        }
        // The start-up message is NUL-terminated strings: a NUL inside one cannot be sent
        // (the client's "string contains embedded null" read as an unreachable server).
        let pg = &self.pg;
        let texts = [
            ("user", pg.get_user().map(str::to_owned)),
            ("database", pg.get_dbname().map(str::to_owned)),
            ("options", pg.get_options().map(str::to_owned)),
            ("application_name", pg.get_application_name().map(str::to_owned)),
            (
                "password",
                pg.get_password().map(|p| String::from_utf8_lossy(p).into_owned()),
            ),
        ];
        if let Some((what, _)) = texts
            .iter()
            .find(|(_, v)| v.as_deref().is_some_and(|v| v.contains('\0')))
        {
            return Err(bad(format!(
                "the {what} contains a NUL character (%00), which PostgreSQL cannot take"
            )));
        }
        Ok(())
    }

    /// The server, for messages (no password).
    pub fn server(&self) -> &str {
        &self.display
    }

    /// The notification channel of releases: `<schema>_released`.
    pub(crate) fn channel(&self) -> String {
        format!("{}_released", self.schema)
    }
}

/// Why a TLS setting is refused.
const NO_TLS: &str = "this build of fencelock-postgres has no TLS connector: use sslmode=disable (or prefer) on a trusted network or loopback, or a TLS-terminating proxy";

/// libpq's TLS file options: refused, since nothing would read them.
const TLS_FILE_KEYS: [&str; 6] = ["sslcert", "sslkey", "sslrootcert", "sslcrl", "sslpassword", "sslcrldir"];

/// libpq's `sslmode` values, without TLS: `disable` and `allow` (which tries plain text
/// first) connect in plain text, `prefer` (libpq's default) too since there is no TLS to
/// prefer; `require`, `verify-ca` and `verify-full` are refused rather than silently
/// weakened. Returns the mode tokio-postgres is given.
pub(crate) fn plain_sslmode(mode: &str) -> std::result::Result<&'static str, String> {
    match mode {
        "disable" | "allow" => Ok("disable"),
        "prefer" => Ok("prefer"),
        "require" | "verify-ca" | "verify-full" => Err(format!("sslmode={mode} needs TLS, and {NO_TLS}")),
        _ => Err(format!(
            "sslmode `{mode}` is not one of disable, allow, prefer, require, verify-ca, verify-full (libpq's values; this build connects without TLS: disable, allow or prefer)"
        )),
    }
}

/// Checks a schema name: `[a-z_][a-z0-9_]*`, 1 to 40 bytes, so that it needs no quoting
/// and `<schema>_released` stays within PostgreSQL's 63-byte identifiers.
pub(crate) fn check_identifier(name: &str) -> std::result::Result<(), String> {
    let ok_first = name.starts_with(|c: char| c.is_ascii_lowercase() || c == '_');
    let ok_rest = name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if name.is_empty() || name.len() > 40 || !ok_first || !ok_rest {
        return Err(format!(
            "`{name}` is not a plain identifier: use 1 to 40 lowercase letters, digits and `_`, not starting with a digit"
        ));
    }
    if RESERVED.contains(&name) {
        return Err(format!(
            "`{name}` is a reserved word in PostgreSQL's SQL, which cannot name a schema unquoted: choose another name"
        ));
    }
    if name == "information_schema" || name.starts_with("pg_") {
        return Err(format!(
            "`{name}` is a system schema (or reserved for one): choose another name"
        ));
    }
    Ok(())
}

/// The words PostgreSQL reserves (`pg_get_keywords()` with `catcode` `R` or `T`, as of
/// PostgreSQL 15, and `system_user`, reserved from 16 on): a schema of one of these names is a syntax error unquoted, and the
/// backend splices the schema unquoted (a plain identifier is safe to splice; a quoted
/// one would make the documented SQL harder to read for everyone else).
const RESERVED: &[&str] = &[
    "all",
    "analyse",
    "analyze",
    "and",
    "any",
    "array",
    "as",
    "asc",
    "asymmetric",
    "authorization",
    "binary",
    "both",
    "case",
    "cast",
    "check",
    "collate",
    "collation",
    "column",
    "concurrently",
    "constraint",
    "create",
    "cross",
    "current_catalog",
    "current_date",
    "current_role",
    "current_schema",
    "current_time",
    "current_timestamp",
    "current_user",
    "default",
    "deferrable",
    "desc",
    "distinct",
    "do",
    "else",
    "end",
    "except",
    "false",
    "fetch",
    "for",
    "foreign",
    "freeze",
    "from",
    "full",
    "grant",
    "group",
    "having",
    "ilike",
    "in",
    "initially",
    "inner",
    "intersect",
    "into",
    "is",
    "isnull",
    "join",
    "lateral",
    "leading",
    "left",
    "like",
    "limit",
    "localtime",
    "localtimestamp",
    "natural",
    "not",
    "notnull",
    "null",
    "offset",
    "on",
    "only",
    "or",
    "order",
    "outer",
    "overlaps",
    "placing",
    "primary",
    "references",
    "returning",
    "right",
    "select",
    "session_user",
    "similar",
    "some",
    "symmetric",
    "system_user",
    "table",
    "tablesample",
    "then",
    "to",
    "trailing",
    "true",
    "union",
    "unique",
    "user",
    "using",
    "variadic",
    "verbose",
    "when",
    "where",
    "window",
    "with",
];

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_postgres::config::SslMode;

    /// Every TTL below the minimum is one refusal, worded alike and naming the minimum,
    /// durations as humantime writes them (a zero TTL read "ttl 0ns is shorter than twice
    /// the statement timeout (1s…)", in `Debug` form).
    #[test]
    fn ttl_refusals_name_the_minimum_in_one_form() {
        let cfg = PgConfig::from_url("postgres://u@127.0.0.1/db").unwrap();
        let ms = Duration::from_millis;
        assert_eq!(
            (cfg.min_ttl_for(true), cfg.min_ttl_for(false)),
            (ms(2000), MIN_UNRENEWED_TTL)
        );
        for (ttl, renew, says) in [
            (
                Duration::ZERO,
                true,
                "ttl 0s is below the minimum of 2s for an auto-renewed lease",
            ),
            (
                Duration::ZERO,
                false,
                "ttl 0s is below the minimum of 100ms for a lease without auto-renew",
            ),
            (
                ms(1),
                true,
                "ttl 1ms is below the minimum of 2s for an auto-renewed lease",
            ),
            (
                ms(1),
                false,
                "ttl 1ms is below the minimum of 100ms for a lease without auto-renew",
            ),
            (ms(99), false, "ttl 99ms is below the minimum of 100ms"),
            (ms(1999), true, "ttl 1s 999ms is below the minimum of 2s"),
        ] {
            match cfg.check_ttl(ttl, renew) {
                Err(LockError::InvalidInput(message)) => {
                    assert!(message.contains(says), "{says:?} not in: {message}");
                    for debug in ["0ns", "1.999s"] {
                        assert!(!message.contains(debug), "a Debug duration in: {message}");
                    }
                }
                other => panic!("{ttl:?} (auto-renew {renew}): {other:?}"),
            }
        }
        // The shorter `timeout=` is offered only where it can help.
        let advice = |ttl, renew| cfg.check_ttl(ttl, renew).unwrap_err().to_string();
        assert!(advice(ms(100), true).contains("at most 50ms for this TTL"));
        assert!(!advice(ms(1), true).contains("shorter `timeout=`"));
        assert!(cfg.check_ttl(ms(2000), true).is_ok());
        assert!(cfg.check_ttl(ms(100), false).is_ok());
        // A tiny timeout does not take the floor below the unrenewed minimum.
        let quick = PgConfig::from_url("postgres://u@127.0.0.1/db?timeout=1ms").unwrap();
        assert_eq!(quick.min_ttl(), MIN_UNRENEWED_TTL);
    }

    /// The database and the user are given once: in the path and before the `@`, or in
    /// the query — both is refused (a new-user trial: `…/appdb?dbname=pgdb` locked in
    /// `pgdb` while every message named `appdb`).
    #[test]
    fn a_database_or_user_given_twice_is_refused() {
        for (url, says) in [
            ("postgres://u@127.0.0.1/appdb?dbname=pgdb", "database is given twice"),
            ("postgres://u@127.0.0.1/appdb?user=other", "user is given twice"),
        ] {
            let e = PgConfig::from_url(url).unwrap_err();
            assert!(matches!(e, LockError::InvalidConfig { .. }), "{url}: {e}");
            assert!(e.to_string().contains(says), "{url}: {e}");
        }
        let once = PgConfig::from_url("postgres://127.0.0.1?dbname=pgdb&user=u").unwrap();
        assert_eq!(once.pg.get_dbname(), Some("pgdb"));
    }

    #[test]
    fn parses_options_and_hides_passwords() {
        let c = PgConfig::from_url(
            "postgres://app:s3cret@127.0.0.1:5433/db?sslmode=disable&schema=locks_a&timeout=250ms&poll=1s&connect_timeout=3",
        )
        .unwrap();
        assert_eq!(c.server(), "postgres://app:***@127.0.0.1:5433/db");
        assert_eq!(c.schema, "locks_a");
        assert_eq!(c.timeout, Duration::from_millis(250));
        assert_eq!(c.poll, Duration::from_secs(1));
        assert_eq!(c.connect_timeout, Duration::from_secs(3));
        assert_eq!(c.connections, DEFAULT_CONNECTIONS);
        let one = PgConfig::from_url("postgres://u@h/d?connections=1").unwrap();
        assert_eq!(one.connections, 1);
        let most = PgConfig::from_url("postgres://u@h/d?connections=32").unwrap();
        assert_eq!(most.connections, MAX_CONNECTIONS);
        assert!(!c.handoff, "off unless asked for");
        assert!(PgConfig::from_url("postgres://u@h/d?handoff=true").unwrap().handoff);
        assert!(!PgConfig::from_url("postgres://u@h/d?handoff=false").unwrap().handoff);
        assert!(c.create_tables, "tables are created unless told not to");
        let read_only = PgConfig::from_url("postgres://u@h/d?create_tables=false").unwrap();
        assert!(!read_only.create_tables);
        assert!(
            !format!("{:?}", read_only.pg).contains("create_tables"),
            "a backend option reached tokio-postgres"
        );
        assert!(
            !format!("{:?}", most.pg).contains("connections"),
            "taken out before tokio-postgres"
        );
        assert_eq!(c.pg.get_user(), Some("app"));
        assert_eq!(c.pg.get_dbname(), Some("db"));
        assert_eq!(c.pg.get_ports(), [5433]);
        assert_eq!(c.pg.get_ssl_mode(), SslMode::Disable);
        assert_eq!(c.pg.get_application_name(), Some("fencelock"));
        assert_eq!(c.channel(), "locks_a_released");
        let c = PgConfig::from_url("postgres://app:p%40s%2Fs%3F%23@[::1]:5433/db?password=x").unwrap();
        assert_eq!(c.server(), "postgres://app:***@[::1]:5433/db");
        assert!(!format!("{c:?}").contains("p@s"), "{c:?}");
        assert_eq!(c.pg.get_password(), Some(&b"p@s/s?#"[..]));
        let c = PgConfig::from_url("postgres://u:a:b@h1:1,h2:2/db").unwrap();
        assert_eq!(c.pg.get_password(), Some(&b"a:b"[..]));
        assert_eq!(c.pg.get_ports(), [1, 2]);
        assert_eq!(c.server(), "postgres://u:***@h1:1,h2:2/db");
        let c = PgConfig::from_url("postgresql://u@h/d?application_name=mine").unwrap();
        assert_eq!(c.pg.get_application_name(), Some("mine"));
        assert_eq!(c.schema, DEFAULT_SCHEMA);
    }

    #[test]
    fn plain_text_sslmodes_are_accepted() {
        for (mode, want) in [
            ("disable", SslMode::Disable),
            ("allow", SslMode::Disable),
            ("prefer", SslMode::Prefer),
        ] {
            let c = PgConfig::from_url(&format!("postgres://u@h/d?sslmode={mode}")).unwrap();
            assert_eq!(c.pg.get_ssl_mode(), want, "{mode}");
        }
        // libpq's default when the URL says nothing.
        let c = PgConfig::from_url("postgres://u@h/d").unwrap();
        assert_eq!(c.pg.get_ssl_mode(), SslMode::Prefer);
    }

    #[test]
    fn options_set_in_code_are_checked_like_the_url() {
        let good = PgConfig::from_url("postgres://u@127.0.0.1:5432/db").expect("url");
        let mut cfg = good.clone();
        cfg.schema = "x; DROP TABLE locks".into();
        assert!(
            cfg.validate().is_err(),
            "a schema spliced into SQL must be an identifier"
        );
        let mut cfg = good.clone();
        cfg.poll = Duration::MAX;
        assert!(cfg.validate().is_err(), "a huge poll would overflow Instant arithmetic");
        let mut cfg = good.clone();
        cfg.timeout = Duration::ZERO;
        assert!(cfg.validate().is_err());
        for n in [0, MAX_CONNECTIONS + 1, usize::MAX] {
            let mut cfg = good.clone();
            cfg.connections = n;
            let e = cfg.validate().unwrap_err().to_string();
            assert!(e.contains("connections must be from 1 to 32"), "{n}: {e}");
        }
        assert!(good.validate().is_ok());
    }

    #[test]
    fn rejects_bad_urls_clearly() {
        for (url, says) in [
            ("redis://h:1", "postgres://"),
            ("postgres://u:pw/x@h/d", "percent-encode"),
            ("postgres://u:pw@h:x/d", "invalid port number"),
            (
                "postgres://u@h/d?password=pw&nosuch=1",
                "unknown option `nosuch` (PostgreSQL takes schema,",
            ),
            ("postgres://u:pw@h/d?schema=Bad", "schema"),
            ("postgres://u:pw@h/d?schema=a;drop", "schema"),
            ("postgres://u:pw@h/d?schema=1a", "schema"),
            ("postgres://u:pw@h/d?timeout=0s", "between 1ms"),
            ("postgres://u:pw@h/d?poll=x", "poll"),
            ("postgres://u:pw@h/d?sslmode=require", "sslmode=require needs TLS"),
            ("postgres://u:pw@h/d?sslmode=verify-ca", "sslmode=verify-ca needs TLS"),
            (
                "postgres://u:pw@h/d?sslmode=verify-full",
                "sslmode=verify-full needs TLS",
            ),
            ("postgres://u:pw@h/d?sslmode=REQUIRE", "not one of disable, allow"),
            ("postgres://u:pw@h/d?sslmode=", "not one of disable, allow"),
            (
                "postgres://u:pw@h/d?sslmode=disable&sslrootcert=/ca.pem",
                "sslrootcert: this build",
            ),
            (
                "postgres://u:pw@h/d?sslcert=/c.pem&sslkey=/k.pem",
                "sslcert: this build",
            ),
            ("postgres://u:pw@h/d?nosuch=1", "and passes on libpq's user, password"),
            (
                "postgres://u:pw@h/d?renew_window=1m",
                "renew_window must be at most 10s",
            ),
            (
                "postgres://u:pw@h/d?connections=0",
                "connections must be from 1 to 32, got 0",
            ),
            (
                "postgres://u:pw@h/d?connections=33",
                "connections must be from 1 to 32, got 33",
            ),
            (
                "postgres://u:pw@h/d?handoff=yes",
                "handoff takes true or false, not `yes`",
            ),
            (
                "postgres://u:pw@h/d?create_tables=no",
                "create_tables takes true or false, not `no`",
            ),
            // A range error shows the URL with its options, so the one at fault is in sight.
            (
                "postgres://u:pw@h/d?schema=app&poll=0s",
                "`postgres://u:***@h/d?schema=app&poll=0s`: poll must be between",
            ),
            (
                "postgres://u:pw@h/d?connections=",
                "connections: `` is not a whole number",
            ),
            (
                "postgres://u:pw@h/d?connections=-1",
                "connections: `-1` is not a whole number",
            ),
            (
                "postgres://u:pw@h/d?connections=four",
                "connections: `four` is not a whole number",
            ),
            (
                "postgres://u:pw@h/d?connections=99999999999999999999999",
                "is not a whole number",
            ),
            // A URL that does not parse hides only its password: a user without one shows.
            ("postgres://app@h:x/d", "`postgres://app@h:x/d`: bad host `h:x`"),
            ("postgres://u:pw@h:x/d", "`postgres://u:***@h:x/d`: bad host `h:x`"),
        ] {
            let e = PgConfig::from_url(url).unwrap_err().to_string();
            assert!(e.contains(says), "{url}: {e}");
            assert!(!e.contains("pw@"), "password leaked: {e}");
        }
    }
}
