//! `redis://` URLs and the backend's options.

use std::time::Duration;

use fencelock_core::backend_url::{BackendUrl, HostPort};
use fencelock_core::options::duration_text::parse_duration;
use fencelock_core::options::url_query;
use fencelock_core::{LockError, Result};

use crate::layout::RedisLayout;

/// The backend's options, from the URL's query or set in code.
///
/// | query key | default | meaning |
/// |---|---|---|
/// | `prefix` | `fencelock:` | prefix of every Redis key and channel the backend uses |
/// | `timeout` | `1s` | the longest wait for one reply; a slower server is "unavailable" |
/// | `connect_timeout` | `1s` | the longest wait for one connection attempt; a connect makes two, then waits `timeout` for the first reply: at most 2 × this + `timeout` in all (3 s by default) |
/// | `ca_file` | system roots | (`rediss://` only) a PEM file of the CA that signed the server's certificate |
/// | `poll` | `500ms` | the fallback re-check of a waiter, jittered to 50–100 %, in case a release message is lost (never longer than the holder's remaining TTL) |
/// | `layout` | `fencelock` | the key names, [`RedisLayout`]: `bare` (the key as given: node-redlock, redsync), `python-redis-lock` (`lock:KEY`), `pottery` (`redlock:KEY`) to share a lock with those libraries; see `docs/interop.md` |
/// | `renew_window` | `50ms` | how long a background renewal may wait to share one script with others (capped at a tenth of its TTL; `0ms`: only those already queued share); explicit `Lease::extend` never waits |
#[derive(Debug, Clone)]
pub struct RedisConfig {
    /// Where and how to connect: host, port, TLS, DB, credentials (decoded).
    pub(crate) addr: NodeAddr,
    /// The server without the password, for messages: `redis://[USER:***@]HOST:PORT[/DB]`,
    /// followed by ` (default port)` when the URL gave none.
    pub(crate) display: String,
    /// Key prefix.
    pub prefix: String,
    /// Reply timeout.
    pub timeout: Duration,
    /// Connect timeout.
    pub connect_timeout: Duration,
    /// Fallback poll interval for waiters.
    pub poll: Duration,
    /// For `rediss://`: the CA certificate (PEM) to trust instead of the system's roots.
    pub ca_file: Option<std::path::PathBuf>,
    /// How long a background renewal may wait for others to share its script with.
    pub renew_window: Duration,
    /// The key names: fencelock's own, or a peer library's (see [`RedisLayout`]).
    pub layout: RedisLayout,
    /// Whether the grant scripts read `INFO server` (Redlock's `restart_delay` > 0): the
    /// connect's ACL check then asks about `INFO` too. Set by
    /// [`set_scripts_read_info`](Self::set_scripts_read_info).
    pub(crate) scripts_read_info: bool,
}

/// Redis's own port, used when the URL gives none (and named in messages then).
pub const DEFAULT_PORT: u16 = 6379;

/// Where one Redis server is and how to log in; `Debug` hides the password.
#[derive(Clone)]
pub(crate) struct NodeAddr {
    pub(crate) host: String,
    pub(crate) port: u16,
    pub(crate) tls: bool,
    pub(crate) db: i64,
    pub(crate) user: Option<String>,
    pub(crate) password: Option<String>,
}

impl std::fmt::Debug for NodeAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeAddr")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("tls", &self.tls)
            .field("db", &self.db)
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "***"))
            .finish()
    }
}

impl RedisConfig {
    /// Parses `redis://[[USER]:PASSWORD@]HOST[:PORT][/DB][?prefix=P&timeout=D&connect_timeout=D&poll=D&renew_window=D&layout=L]`
    /// (or `rediss://` for TLS, with the `tls` feature) with fencelock-core's one URL
    /// parser ([`fencelock_core::backend_url`]): USER and PASSWORD are percent-decoded
    /// (`/`, `?`, `#` in a password must be written `%2F`, `%3F`, `%23`), an IPv6 host is
    /// written in brackets (`[::1]:6379`), PORT defaults to 6379 (messages then say
    /// "(default port)"), DB is a number (default 0).
    ///
    /// # Errors
    /// [`LockError::InvalidConfig`] naming the URL (password hidden) and what is wrong:
    /// another scheme, no host or several, a bad port, a DB that is not a number, an
    /// unknown option, a bad duration. [`LockError::FeatureDisabled`] for `rediss://`
    /// without the `tls` feature.
    pub fn from_url(url: &str) -> Result<Self> {
        let u = BackendUrl::parse(url)?;
        u.expect_scheme(&["redis", "rediss"], "Redis")?;
        let host = match u.hosts() {
            [] => return Err(u.invalid("no host: write redis://HOST:PORT")),
            [h] => h,
            _ => return Err(u.invalid("several hosts: use redlock://H1:P1,H2:P2,... for Redlock")),
        };
        let tls = u.scheme() == "rediss";
        let mut cfg = Self::for_host(&u, host, tls)?;
        for pair in u.query() {
            let (k, v) = (pair.key.as_str(), pair.value.as_str());
            let duration = || parse_duration(v).map_err(|e| u.invalid(format!("{k}: {e}")));
            match k {
                "prefix" => cfg.prefix = v.to_owned(),
                "timeout" => cfg.timeout = duration()?,
                "connect_timeout" => cfg.connect_timeout = duration()?,
                "poll" => cfg.poll = duration()?,
                "renew_window" => cfg.renew_window = duration()?,
                "layout" => cfg.layout = RedisLayout::parse(v).map_err(|e| u.invalid(e))?,
                "ca_file" if tls => cfg.ca_file = Some(v.into()),
                "ca_file" => return Err(u.invalid("ca_file needs rediss:// (TLS)")),
                _ => {
                    return Err(u.invalid(format!(
                        "unknown option `{k}` (the redis backend takes prefix, timeout, connect_timeout, poll, renew_window, layout, ca_file)"
                    )))
                }
            }
        }
        cfg.validate_as(&u.redacted())?;
        Ok(cfg)
    }

    /// The options of one server of a parsed URL, at their defaults: the URL's credentials
    /// and DB (its path), `host`, TLS or not. Redlock builds each node with it.
    ///
    /// # Errors
    /// [`LockError::InvalidConfig`] when the path is not a DB number;
    /// [`LockError::FeatureDisabled`] for TLS without the `tls` feature.
    pub fn for_host(url: &BackendUrl, host: &HostPort, tls: bool) -> Result<Self> {
        if tls && !cfg!(feature = "tls") {
            return Err(LockError::FeatureDisabled {
                scheme: "rediss".into(),
                feature: "redis-tls",
            });
        }
        let db = parse_db(url.path()).map_err(|why| url.invalid(why))?;
        let scheme = if tls { "rediss" } else { "redis" };
        let mut display = format!("{scheme}://{}{}", url.redacted_userinfo(), host.address(DEFAULT_PORT));
        if db != 0 {
            display.push_str(&format!("/{db}"));
        }
        if host.port.is_none() {
            display.push_str(" (default port)");
        }
        Ok(RedisConfig {
            addr: NodeAddr {
                host: host.host.clone(),
                port: host.port.unwrap_or(DEFAULT_PORT),
                tls,
                db,
                user: url.user().map(str::to_owned),
                password: url.password().map(str::to_owned),
            },
            display,
            prefix: "fencelock:".into(),
            timeout: Duration::from_secs(1),
            connect_timeout: Duration::from_secs(1),
            poll: Duration::from_millis(500),
            ca_file: None,
            renew_window: Duration::from_millis(50),
            layout: RedisLayout::Fencelock,
            scripts_read_info: false,
        })
    }

    /// Says that the grant scripts will read the server's uptime (`INFO server`), as
    /// Redlock's with a `restart_delay` do: the connection's ACL check then refuses a user
    /// without `INFO` with [`LockError::InvalidConfig`], at connect, rather than every
    /// grant failing on that node later.
    pub fn set_scripts_read_info(&mut self, yes: bool) {
        self.scripts_read_info = yes;
    }

    /// Checks the options, whether they came from a URL or were set in code: the one
    /// validation path both [`from_url`](Self::from_url) and
    /// [`RedisLock::connect_with`](crate::RedisLock::connect_with) (and every
    /// [`RedisNode`](crate::RedisNode)) go through.
    ///
    /// # Errors
    /// [`LockError::InvalidConfig`] when `timeout`, `connect_timeout` or `poll` is outside
    /// 1 ms ..= 10 min, or `renew_window` is above 10 s (durations that large would
    /// overflow the clock arithmetic of a wait or a renewal), or a peer `layout` has a
    /// `prefix` with `{` or `}` (it would move fencelock's keys out of the lock key's hash
    /// slot).
    pub fn validate(&self) -> Result<()> {
        self.validate_as(&self.display)
    }

    /// [`validate`](Self::validate), its messages naming `shown` (a URL's messages quote
    /// it whole, with its query).
    fn validate_as(&self, shown: &str) -> Result<()> {
        let bad = |why: String| LockError::invalid_config(format!("`{shown}`: {why}"));
        url_query::check_timeouts(&[
            ("timeout", self.timeout),
            ("connect_timeout", self.connect_timeout),
            ("poll", self.poll),
        ])
        .map_err(bad)?;
        if self.layout.is_peer() && self.prefix.contains(['{', '}']) {
            return Err(bad(format!(
                "prefix `{}` has a brace: with a peer layout, fencelock's keys take the lock key's hash tag, which a brace in the prefix would replace",
                self.prefix
            )));
        }
        if self.renew_window > Duration::from_secs(10) {
            return Err(bad(format!(
                "renew_window must be at most 10s, got {:?}",
                self.renew_window
            )));
        }
        Ok(())
    }

    /// The server, for messages (no password).
    pub fn server(&self) -> &str {
        &self.display
    }
}

/// The DB index of a path: `""` or `/` is 0, `/N` is N (a number the server's
/// `databases` setting bounds, 16 by default: a higher one is refused on connecting).
fn parse_db(path: &str) -> std::result::Result<i64, String> {
    let db = path.strip_prefix('/').unwrap_or(path);
    if db.is_empty() {
        return Ok(0);
    }
    match db.parse::<u32>() {
        Ok(n) => Ok(i64::from(n)),
        Err(_) => Err(format!(
            "the DB index `{db}` is not a number: the URL's path is the DB index, `/N` after the host(s), N from 0 to the server's `databases` - 1 (15 by default)"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_options_and_hides_passwords() {
        let c = RedisConfig::from_url("redis://:s3cret@127.0.0.1:7000/2?prefix=app:&timeout=250ms&poll=1s").unwrap();
        assert_eq!((c.addr.host.as_str(), c.addr.port, c.addr.db), ("127.0.0.1", 7000, 2));
        assert_eq!(c.addr.password.as_deref(), Some("s3cret"));
        assert_eq!(c.server(), "redis://:***@127.0.0.1:7000/2");
        assert!(!format!("{c:?}").contains("s3cret"), "{c:?}");
        assert_eq!(c.prefix, "app:");
        assert_eq!(c.timeout, Duration::from_millis(250));
        assert_eq!(c.poll, Duration::from_secs(1));
        assert_eq!(c.renew_window, Duration::from_millis(50));
        let c = RedisConfig::from_url("redis://h:1?renew_window=0ms").unwrap();
        assert_eq!(c.renew_window, Duration::ZERO);
        assert_eq!(c.layout, RedisLayout::Fencelock);
        let c = RedisConfig::from_url("redis://h:1?layout=python-redis-lock").unwrap();
        assert_eq!(c.layout, RedisLayout::PythonRedisLock);
    }

    #[test]
    fn passwords_with_url_characters_are_decoded_and_never_shown() {
        for (url, user, password) in [
            ("redis://:p@ss@h:1", None, "p@ss"),
            ("redis://app:a:b@h:1", Some("app"), "a:b"),
            ("redis://:a%2Fb%3Fc%23d@h:1/3", None, "a/b?c#d"),
            ("redis://us%40er:%40%2F%3F%23%3A@[::1]:1", Some("us@er"), "@/?#:"),
        ] {
            let c = RedisConfig::from_url(url).unwrap();
            assert_eq!(c.addr.user.as_deref(), user, "{url}");
            assert_eq!(c.addr.password.as_deref(), Some(password), "{url}");
            for shown in [c.server().to_owned(), format!("{c:?}")] {
                assert!(shown.contains(":***@"), "{url}: {shown}");
                assert!(
                    !shown.contains(password) && !shown.contains("%2F"),
                    "{url} leaks: {shown}"
                );
            }
        }
    }

    #[test]
    fn ipv6_default_port_and_db() {
        let c = RedisConfig::from_url("redis://[::1]:7000/5").unwrap();
        assert_eq!((c.addr.host.as_str(), c.addr.port, c.addr.db), ("::1", 7000, 5));
        assert_eq!(c.server(), "redis://[::1]:7000/5");
        let c = RedisConfig::from_url("redis://127.0.0.1").unwrap();
        assert_eq!(c.addr.port, 6379);
        assert_eq!(c.server(), "redis://127.0.0.1:6379 (default port)");
        assert_eq!(RedisConfig::from_url("redis://h:1/").unwrap().addr.db, 0);
    }

    #[test]
    fn rejects_bad_urls_clearly() {
        for (url, says) in [
            ("redis://", "no host"),
            ("redis://h:notaport", "bad host `h:notaport`: invalid port number"),
            ("redis://h:1,h:2", "redlock://"),
            ("redis://h:1?tiemout=1s", "unknown option `tiemout`"),
            ("redis://h:1?timeout=0s", "between 1ms"),
            ("redis://:pw@h:1?timeout=x", "timeout"),
            ("redis://h:1?renew_window=1m", "renew_window must be at most 10s"),
            ("redis://h:1?layout=redisson", "layout must be"),
            ("redis://h:1?layout=bare&prefix={x}:", "brace"),
            ("redis://h:1/x", "the DB index `x` is not a number"),
            ("redis://h:1/-1", "the DB index `-1` is not a number"),
            ("redis://:pw/x@h:1", "percent-encode"),
            ("redis://:pw#x@h:1", "%23"),
            ("redis://[::1:1", "bad host"),
            ("http://h:1", "a Redis URL starts with redis:// or rediss://"),
        ] {
            let e = RedisConfig::from_url(url).unwrap_err();
            assert!(matches!(e, LockError::InvalidConfig { .. }), "{url}: {e}");
            let e = e.to_string();
            assert!(e.contains(says), "{url}: {e}");
            assert!(!e.contains("pw"), "password leaked: {e}");
        }
    }

    #[test]
    fn options_set_in_code_are_checked_like_the_url() {
        let ok = RedisConfig::from_url("redis://h:1").unwrap();
        for (change, says) in [
            (
                (|c: &mut RedisConfig| c.timeout = Duration::MAX) as fn(&mut RedisConfig),
                "timeout",
            ),
            (|c| c.timeout = Duration::ZERO, "timeout"),
            (|c| c.connect_timeout = Duration::from_secs(u64::MAX), "connect_timeout"),
            (|c| c.poll = Duration::MAX, "poll"),
            (|c| c.renew_window = Duration::MAX, "renew_window"),
        ] {
            let mut c = ok.clone();
            change(&mut c);
            let e = c.validate().unwrap_err();
            assert!(matches!(e, LockError::InvalidConfig { .. }), "{e}");
            assert!(e.to_string().contains(says), "{e}");
        }
        assert!(ok.validate().is_ok());
    }
}
