//! `redis://` URLs and the backend's options.

use std::time::Duration;

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
/// | `connect_timeout` | `1s` | the longest wait for a connection |
/// | `ca_file` | system roots | (`rediss://` only) a PEM file of the CA that signed the server's certificate |
/// | `poll` | `500ms` | the fallback re-check of a waiter, jittered to 50–100 %, in case a release message is lost (never longer than the holder's remaining TTL) |
/// | `layout` | `fencelock` | the key names, [`RedisLayout`]: `bare` (the key as given: node-redlock, redsync), `python-redis-lock` (`lock:KEY`), `pottery` (`redlock:KEY`) to share a lock with those libraries; see `docs/interop.md` |
/// | `renew_window` | `50ms` | how long a background renewal may wait to share one script with others (capped at a tenth of its TTL; `0ms`: only those already queued share); explicit `Lease::extend` never waits |
#[derive(Debug, Clone)]
pub struct RedisConfig {
    /// The URL for the redis client: scheme, credentials, host, port, db.
    pub(crate) client_url: String,
    /// The URL without the password, for messages.
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
}

impl RedisConfig {
    /// Parses `redis://[[USER]:PASSWORD@]HOST:PORT[/DB][?prefix=P&timeout=D&connect_timeout=D&poll=D&renew_window=D&layout=L]`
    /// (or `rediss://` for TLS, with the `tls` feature).
    pub fn from_url(url: &str) -> Result<Self> {
        let bad = |why: String| LockError::invalid_config(format!("`{}`: {why}", redact(url)));
        let (base, query) = url.split_once('?').unwrap_or((url, ""));
        let rest = base
            .strip_prefix("redis://")
            .or_else(|| base.strip_prefix("rediss://"))
            .ok_or_else(|| bad("a Redis URL starts with redis:// or rediss://".into()))?;
        let authority = rest.split('/').next().unwrap_or("");
        let host_port = authority.rsplit_once('@').map_or(authority, |(_, hp)| hp);
        if host_port.is_empty() {
            return Err(bad("no host: write redis://HOST:PORT".into()));
        }
        if host_port.contains(',') {
            return Err(bad("several hosts: use redlock://H1:P1,H2:P2,... for Redlock".into()));
        }
        if let Some((_, port)) = host_port.rsplit_once(':') {
            if !port.is_empty() && port.parse::<u16>().is_err() {
                return Err(bad(format!("bad port `{port}`")));
            }
        }
        if base.starts_with("rediss://") && !cfg!(feature = "tls") {
            return Err(LockError::FeatureDisabled {
                scheme: "rediss".into(),
                feature: "redis-tls",
            });
        }
        let mut cfg = RedisConfig {
            client_url: base.to_owned(),
            display: redact(base),
            prefix: "fencelock:".into(),
            timeout: Duration::from_secs(1),
            connect_timeout: Duration::from_secs(1),
            poll: Duration::from_millis(500),
            ca_file: None,
            renew_window: Duration::from_millis(50),
            layout: RedisLayout::Fencelock,
        };
        for (k, v) in url_query::pairs(query) {
            let duration = || parse_duration(v).map_err(|e| bad(format!("{k}: {e}")));
            match k {
                "prefix" => cfg.prefix = v.to_owned(),
                "timeout" => cfg.timeout = duration()?,
                "connect_timeout" => cfg.connect_timeout = duration()?,
                "poll" => cfg.poll = duration()?,
                "renew_window" => cfg.renew_window = duration()?,
                "layout" => cfg.layout = RedisLayout::parse(v).map_err(bad)?,
                "ca_file" if base.starts_with("rediss://") => cfg.ca_file = Some(v.into()),
                "ca_file" => return Err(bad("ca_file needs rediss:// (TLS)".into())),
                _ => {
                    return Err(bad(format!(
                        "unknown option `{k}` (the redis backend takes prefix, timeout, connect_timeout, poll, renew_window, layout, ca_file)"
                    )))
                }
            }
        }
        cfg.validate()?;
        Ok(cfg)
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
        let bad = |why: String| LockError::invalid_config(format!("`{}`: {why}", self.display));
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

/// The URL with any password replaced by `***`.
pub(crate) fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    match rest[..authority_end].rsplit_once('@') {
        Some((creds, host)) => {
            let user = creds.split_once(':').map_or("", |(u, _)| u);
            format!("{scheme}://{user}:***@{host}{}", &rest[authority_end..])
        }
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_options_and_hides_passwords() {
        let c = RedisConfig::from_url("redis://:s3cret@127.0.0.1:7000/2?prefix=app:&timeout=250ms&poll=1s").unwrap();
        assert_eq!(c.client_url, "redis://:s3cret@127.0.0.1:7000/2");
        assert_eq!(c.server(), "redis://:***@127.0.0.1:7000/2");
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
    fn rejects_bad_urls_clearly() {
        for (url, says) in [
            ("redis://", "no host"),
            ("redis://h:notaport", "bad port"),
            ("redis://h:1,h:2", "redlock://"),
            ("redis://h:1?tiemout=1s", "unknown option `tiemout`"),
            ("redis://h:1?timeout=0s", "between 1ms"),
            ("redis://:pw@h:1?timeout=x", "timeout"),
            ("redis://h:1?renew_window=1m", "renew_window must be at most 10s"),
            ("redis://h:1?layout=redisson", "layout must be"),
            ("redis://h:1?layout=bare&prefix={x}:", "brace"),
        ] {
            let e = RedisConfig::from_url(url).unwrap_err().to_string();
            assert!(e.contains(says), "{url}: {e}");
            assert!(!e.contains("pw@"), "password leaked: {e}");
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
