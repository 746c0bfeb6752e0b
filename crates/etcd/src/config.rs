//! `etcd://` URLs and the backend's options.

use std::time::Duration;

use fencelock_core::backend_url::BackendUrl;
use fencelock_core::options::duration_text::{human, parse_duration};
use fencelock_core::options::url_query;
use fencelock_core::{LockError, Result};

/// The options of the etcd backend, from the URL or set in code.
///
/// `etcd://HOST:PORT[,HOST:PORT...][/PREFIX][?session_ttl=10s&timeout=2s&connect_timeout=1s&user=U&password=P&layout=fencelock]`
///
/// | part | default | meaning |
/// |---|---|---|
/// | `/PREFIX` | `/fencelock` (`layout=go`: none) | where the lock keys live: `PREFIX/KEY/INSTANCE.SLOT` (`layout=go`: `[PREFIX/]KEY/LEASE`) |
/// | `layout` | `fencelock` | the names of the queue keys, see [`EtcdLayout`]: `go` takes part in the queue of Go's `concurrency.Mutex` (and `etcdctl lock KEY`) |
/// | `session_ttl` | `10s` | TTL of the session lease shared by every auto-renewed lock of this instance: how long after this process dies or is cut off its locks are freed. Also the validity of every auto-renewed lock, and a third of it is how soon a lock key deleted on the server is noticed. Whole seconds, at least etcd's minimum lease TTL (1.5 × election timeout, rounded up: 1 s with 100 ms elections, 2 s with etcd's defaults; below it the first acquire gets `InvalidConfig` naming the minimum, as etcd would raise it silently), at most 1 day |
/// | `timeout` | `2s` | the longest wait for one request (a cluster without quorum answers nothing); 1 ms ..= 10 min |
/// | `connect_timeout` | `1s` | the longest wait for a connection; connecting also reads once to prove a leader answers, so it takes at most this + `timeout`; 1 ms ..= 10 min |
/// | `user`, `password` | none | etcd authentication |
///
/// Options set in code are checked by [`validate`](Self::validate) when connecting, as a
/// URL's are when parsed.
#[derive(Clone)]
pub struct EtcdConfig {
    /// `HOST:PORT` of every member to use.
    pub endpoints: Vec<String>,
    /// Key prefix, without a trailing slash.
    pub prefix: String,
    /// Session lease TTL.
    pub session_ttl: Duration,
    /// Request timeout.
    pub timeout: Duration,
    /// Connect timeout.
    pub connect_timeout: Duration,
    /// Credentials.
    pub user: Option<(String, String)>,
    /// How lock keys are named (fencelock's own, or Go's `concurrency.Mutex`).
    pub layout: EtcdLayout,
    pub(crate) display: String,
}

/// How the queue keys of a lock are named on the server. Both layouts queue the same way
/// (the key with the lowest create revision under the lock's directory holds the lock;
/// a waiter watches the key just before its own), so the layout only decides the names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EtcdLayout {
    /// `PREFIX/ESCAPED_KEY/INSTANCE.SLOT`: `/` and `%` in the key are escaped, so keys never
    /// nest, and one instance may queue several times for one key.
    #[default]
    Fencelock,
    /// Go's `concurrency.Mutex` (what `etcdctl lock KEY` uses): the directory is the key
    /// exactly as given plus `/` (`mylock` → `mylock/`, no leading slash unless the key
    /// has one), under `PREFIX/` only when the URL names a prefix; each contender's key is
    /// `DIR/<lease id in lowercase hex>` on that lease. Nothing is escaped, so as in Go a
    /// lock named `a` also sees the contenders of `a/b` (its directory is a prefix of
    /// theirs): name locks so that none is a prefix of another's directory. Source: etcd's
    /// `client/v3/concurrency/mutex.go`, checked against `etcdctl lock` 3.4.
    Go,
}

impl EtcdLayout {
    /// Reads `fencelock` or `go`.
    fn parse(v: &str) -> std::result::Result<Self, String> {
        match v {
            "fencelock" => Ok(EtcdLayout::Fencelock),
            "go" => Ok(EtcdLayout::Go),
            _ => Err(format!("layout must be `fencelock` or `go`, got `{v}`")),
        }
    }
}

impl std::fmt::Debug for EtcdConfig {
    /// Every option but the password, which shows as `***`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdConfig")
            .field("endpoints", &self.endpoints)
            .field("prefix", &self.prefix)
            .field("session_ttl", &self.session_ttl)
            .field("timeout", &self.timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("user", &self.user.as_ref().map(|(u, _)| (u, "***")))
            .field("layout", &self.layout)
            .finish_non_exhaustive()
    }
}

impl EtcdConfig {
    /// Parses an `etcd://` URL with fencelock-core's one URL parser
    /// ([`fencelock_core::backend_url`]): hosts `HOST:PORT` (IPv6 in brackets,
    /// `[::1]:2379`), the prefix percent-decoded, the credentials either before the hosts
    /// (`etcd://USER:PASSWORD@HOST:PORT`, percent-decoded) or as `user=` and `password=`
    /// options.
    ///
    /// # Errors
    /// [`LockError::InvalidConfig`] naming the URL (password hidden) and what is wrong.
    pub fn from_url(url: &str) -> Result<Self> {
        let u = BackendUrl::parse(url)?;
        let shown = u.redacted();
        let bad = |why: String| u.invalid(why);
        u.expect_scheme(&["etcd"], "etcd")?;
        // The path as given, without its outer slashes; None when the URL has no path.
        let path = match u.path() {
            "" => None,
            _ => {
                let p = u.path_decoded("key prefix")?;
                Some(p.strip_prefix('/').unwrap_or(&p).trim_end_matches('/').to_owned())
            }
        };
        let mut endpoints = Vec::new();
        for h in u.hosts() {
            let endpoint = h
                .address_with_port()
                .ok_or_else(|| bad(format!("endpoint `{h}` needs HOST:PORT, e.g. 127.0.0.1:2379")))?;
            endpoints.push(endpoint);
        }
        if endpoints.is_empty() {
            return Err(bad("no endpoints: give at least one HOST:PORT".into()));
        }
        let mut cfg = EtcdConfig {
            endpoints,
            prefix: String::new(),
            session_ttl: Duration::from_secs(10),
            timeout: Duration::from_secs(2),
            connect_timeout: Duration::from_secs(1),
            user: None,
            layout: EtcdLayout::Fencelock,
            display: shown.clone(),
        };
        let (mut user, mut password) = (u.user().map(str::to_owned), u.password().map(str::to_owned));
        let in_authority = user.is_some() || password.is_some();
        for pair in u.query() {
            let (k, v) = (pair.key.as_str(), pair.value.as_str());
            if in_authority && (k == "user" || k == "password") {
                return Err(bad(format!("`{k}` given twice: before the host and as an option")));
            }
            let duration = || parse_duration(v).map_err(|e| bad(format!("{k}: {e}")));
            match k {
                "session_ttl" => cfg.session_ttl = duration()?,
                "timeout" => cfg.timeout = duration()?,
                "connect_timeout" => cfg.connect_timeout = duration()?,
                "user" => user = Some(v.to_owned()),
                "password" => password = Some(v.to_owned()),
                "layout" => cfg.layout = EtcdLayout::parse(v).map_err(bad)?,
                _ => {
                    return Err(bad(format!(
                    "unknown option `{k}` (etcd takes session_ttl, timeout, connect_timeout, user, password, layout)"
                )))
                }
            }
        }
        // The Go layout has no prefix unless the URL names one (`etcd://h:p` and
        // `etcd://h:p/` both reach Go's default `NAME/`); fencelock's own needs one.
        cfg.prefix = match (path.as_deref(), cfg.layout) {
            (Some("") | None, EtcdLayout::Go) => String::new(),
            (None, EtcdLayout::Fencelock) => "/fencelock".to_owned(),
            (Some(p), _) => format!("/{p}"),
        };
        if cfg.layout == EtcdLayout::Fencelock && (cfg.prefix == "/" || cfg.prefix.contains("//")) {
            return Err(bad(bad_prefix(&cfg.prefix)));
        }
        cfg.user = match (user, password) {
            (Some(u), Some(p)) => Some((u, p)),
            (None, None) => None,
            _ => return Err(bad("user and password go together".into())),
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks the options, whether they came from a URL or were set in code: the one
    /// validation path that [`from_url`](Self::from_url) and
    /// [`EtcdLock::connect_with`](crate::EtcdLock::connect_with) share, so that no value
    /// can reach a timer or an `Instant` sum that would overflow.
    ///
    /// # Errors
    /// [`LockError::InvalidConfig`] naming the option: no endpoints or one that is not
    /// `HOST:PORT`; a prefix that is `/`, does not start with `/`, ends with `/` or holds
    /// `//`, or is empty in the fencelock layout (the Go layout allows none); `session_ttl` not whole seconds between 1 s and 1 day (etcd's own
    /// maximum is far longer, but a session that outlives its process by a day is a
    /// mistake); `timeout` or `connect_timeout` outside 1 ms ..= 10 min; an empty user.
    pub fn validate(&self) -> Result<()> {
        let shown = if self.display.is_empty() {
            self.endpoints.join(",")
        } else {
            self.display.clone()
        };
        let bad = |why: String| Err(LockError::invalid_config(format!("`{shown}`: {why}")));
        if self.endpoints.is_empty() {
            return bad("no endpoints: give at least one HOST:PORT".into());
        }
        for h in &self.endpoints {
            match h.rsplit_once(':') {
                Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => {}
                _ => return bad(format!("bad endpoint `{h}`: write HOST:PORT, e.g. 127.0.0.1:2379")),
            }
        }
        let p = &self.prefix;
        let no_prefix = p.is_empty() && self.layout == EtcdLayout::Go;
        if !no_prefix && (!p.starts_with('/') || p == "/" || p.ends_with('/') || p.contains("//")) {
            return bad(bad_prefix(p));
        }
        if self.session_ttl < Duration::from_secs(1)
            || self.session_ttl > MAX_SESSION_TTL
            || self.session_ttl.subsec_nanos() != 0
        {
            return bad(format!(
                "session_ttl must be whole seconds, at least 1s and at most 1 day; got {}",
                human(self.session_ttl)
            ));
        }
        if let Err(why) =
            url_query::check_timeouts(&[("timeout", self.timeout), ("connect_timeout", self.connect_timeout)])
        {
            return bad(why);
        }
        if self.user.as_ref().is_some_and(|(u, _)| u.is_empty()) {
            return bad("the user name is empty".into());
        }
        Ok(())
    }
}

/// The longest session TTL accepted.
const MAX_SESSION_TTL: Duration = Duration::from_secs(24 * 3600);

impl EtcdConfig {
    /// The directory that holds `key`'s lock and queue keys: `PREFIX/ESCAPED_KEY/`, with
    /// `%` and `/` percent-escaped so that the escape is injective (no two keys share a
    /// directory) and no key reaches into another key's directory (a prefix read of one
    /// directory never sees another's keys, because every directory ends with the `/`
    /// that no escaped key contains). For operators: `etcdctl get --prefix DIR`.
    ///
    /// In the Go layout: `KEY/` exactly as given (`PREFIX/KEY/` with a prefix), as Go's
    /// `concurrency.NewMutex(session, KEY)` names it.
    pub fn lock_dir(&self, key: &str) -> String {
        match (self.layout, self.prefix.is_empty()) {
            (EtcdLayout::Fencelock, _) => format!("{}/{}/", self.prefix, escape(key)),
            (EtcdLayout::Go, true) => format!("{key}/"),
            (EtcdLayout::Go, false) => format!("{}/{key}/", self.prefix),
        }
    }

    /// The name of one queue entry in `dir`: `INSTANCE.SLOT` (hex), or in the Go layout
    /// the id of the lease it rides on in lowercase hex, as Go writes it (`%x`).
    pub(crate) fn queue_key(&self, dir: &str, instance: u64, slot: u32, lease: i64) -> String {
        match self.layout {
            EtcdLayout::Fencelock => format!("{dir}{instance:016x}.{slot:08x}"),
            EtcdLayout::Go => format!("{dir}{lease:x}"),
        }
    }

    /// Whether a queue entry must ride on a lease of its own even when auto-renewed: in the
    /// Go layout a key's name is its lease, so only the first entry (slot 0) of this
    /// instance in a directory may use the shared session lease; others get their own.
    pub(crate) fn needs_own_lease(&self, slot: u32) -> bool {
        self.layout == EtcdLayout::Go && slot > 0
    }
}

/// `%` first, then `/`: the output has no `/`, and decoding is unambiguous.
fn escape(key: &str) -> String {
    key.replace('%', "%25").replace('/', "%2F")
}

/// The message for a key prefix that is not `/NAME[/NAME...]`: what a valid one looks
/// like, since the URL's path is the prefix (`etcd://h:p/` asks for `/`).
fn bad_prefix(p: &str) -> String {
    format!(
        "bad key prefix `{p}`: the URL's path is the key prefix; write /NAME[/NAME...] (e.g. `etcd://HOST:PORT/app/locks`; a URL's trailing slash is dropped, a configured `prefix` must have none), with no empty NAME (`//`), or leave the path out for the default `/fencelock`"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_endpoints_prefix_and_options() {
        let c = EtcdConfig::from_url("etcd://127.0.0.1:1,127.0.0.1:2/app/locks?session_ttl=5s&user=u&password=secret")
            .unwrap();
        assert_eq!(c.endpoints, vec!["127.0.0.1:1", "127.0.0.1:2"]);
        assert_eq!(c.prefix, "/app/locks");
        assert_eq!(c.session_ttl, Duration::from_secs(5));
        assert_eq!(c.user, Some(("u".into(), "secret".into())));
        assert!(!c.display.contains("secret"));
        assert!(!format!("{c:?}").contains("secret"));
        let c = EtcdConfig::from_url("etcd://u:p%40ss%2Fw@[::1]:2379/a%40b").unwrap();
        assert_eq!(c.endpoints, vec!["[::1]:2379"]);
        assert_eq!(c.user, Some(("u".into(), "p@ss/w".into())));
        assert_eq!(c.prefix, "/a@b");
        assert_eq!(c.display, "etcd://u:***@[::1]:2379/a%40b");
        let c = EtcdConfig::from_url("etcd://h:1?user=u&password=a%26b%3Dc").unwrap();
        assert_eq!(c.user, Some(("u".into(), "a&b=c".into())));
        assert_eq!(c.display, "etcd://h:1?user=u&password=***");
        assert_eq!(EtcdConfig::from_url("etcd://h:1").unwrap().prefix, "/fencelock");
    }

    #[test]
    fn rejects_bad_urls_clearly() {
        for (url, says) in [
            ("etcd://", "HOST:PORT"),
            ("etcd://h", "HOST:PORT"),
            ("etcd://h:x", "invalid port number"),
            ("etcd://u:pw@h:1?password=pw", "given twice"),
            ("etcd://h:1?user=u&password=pw&bad=1", "unknown option `bad`"),
            ("etcd://h:1//x", "bad key prefix"),
            // Say what a valid prefix looks like (a new-user trial got only "bad key prefix `/`").
            ("etcd://h:1/", "write /NAME"),
            ("etcd://h:1//app", "write /NAME"),
            ("etcd://h:1/", "`/fencelock`"),
            ("etcd://h:1?session_ttl=500ms", "whole seconds"),
            // In the form the URL takes (a new-user trial got "got 0ns").
            ("etcd://h:1?session_ttl=0s", "got 0s"),
            ("etcd://h:1?session_ttl=500ms", "got 500ms"),
            ("etcd://h:1?user=u", "together"),
            ("etcd://h:1?ttl=1s", "unknown option"),
            ("etcd://h:1?session_ttl=100000h", "at most 1 day"),
            ("etcd://h:1?timeout=100000h", "timeout"),
        ] {
            let e = EtcdConfig::from_url(url).unwrap_err().to_string();
            assert!(e.contains(says), "{url}: {e}");
            assert!(!e.contains("pw"), "password leaked: {e}");
        }
    }

    #[test]
    fn configs_set_in_code_get_the_same_checks() {
        let good = EtcdConfig::from_url("etcd://h:1").unwrap();
        for (what, cfg, says) in [
            (
                "huge session",
                EtcdConfig {
                    session_ttl: Duration::MAX,
                    ..good.clone()
                },
                "session_ttl",
            ),
            (
                "fractional session",
                EtcdConfig {
                    session_ttl: Duration::from_millis(1500),
                    ..good.clone()
                },
                "session_ttl",
            ),
            (
                "huge timeout",
                EtcdConfig {
                    timeout: Duration::MAX,
                    ..good.clone()
                },
                "timeout",
            ),
            (
                "zero connect",
                EtcdConfig {
                    connect_timeout: Duration::ZERO,
                    ..good.clone()
                },
                "connect_timeout",
            ),
            (
                "no endpoints",
                EtcdConfig {
                    endpoints: vec![],
                    ..good.clone()
                },
                "no endpoints",
            ),
            (
                "bad endpoint",
                EtcdConfig {
                    endpoints: vec!["h".into()],
                    ..good.clone()
                },
                "HOST:PORT",
            ),
            (
                "bad prefix",
                EtcdConfig {
                    prefix: "x".into(),
                    ..good.clone()
                },
                "prefix",
            ),
            (
                "slash prefix",
                EtcdConfig {
                    prefix: "/a/".into(),
                    ..good.clone()
                },
                "prefix",
            ),
        ] {
            let e = cfg.validate().expect_err(what);
            assert!(matches!(e, LockError::InvalidConfig { .. }), "{what}: {e}");
            assert!(e.to_string().contains(says), "{what}: {e}");
        }
        good.validate().unwrap();
    }

    #[test]
    fn go_layout_reaches_go_names_exactly() {
        for url in ["etcd://h:1?layout=go", "etcd://h:1/?layout=go"] {
            let c = EtcdConfig::from_url(url).unwrap();
            assert_eq!(c.layout, EtcdLayout::Go);
            assert_eq!(c.lock_dir("mylock"), "mylock/", "{url}");
            assert_eq!(c.lock_dir("/abs/lock"), "/abs/lock/", "{url}");
            assert_eq!(c.lock_dir("a/b%c"), "a/b%c/", "{url}: nothing escaped");
        }
        let c = EtcdConfig::from_url("etcd://h:1/app?layout=go").unwrap();
        assert_eq!(c.lock_dir("mylock"), "/app/mylock/");
        assert_eq!(
            c.queue_key("mylock/", 7, 0, 0x694d_8a1b_22c0_5f04),
            "mylock/694d8a1b22c05f04"
        );
        assert_eq!(c.queue_key("d/", 7, 0, 0x1f), "d/1f", "Go's %x: no padding");
        assert!(!c.needs_own_lease(0) && c.needs_own_lease(1));
        let d = EtcdConfig::from_url("etcd://h:1?layout=fencelock").unwrap();
        assert_eq!(d.prefix, "/fencelock");
        assert_eq!(d.queue_key("d/", 0xab, 2, 5), "d/00000000000000ab.00000002");
        assert!(!d.needs_own_lease(5));
        for (url, says) in [("etcd://h:1/", "prefix"), ("etcd://h:1?layout=java", "layout must be")] {
            let e = EtcdConfig::from_url(url).unwrap_err().to_string();
            assert!(e.contains(says), "{url}: {e}");
        }
        let code = EtcdConfig {
            prefix: String::new(),
            ..EtcdConfig::from_url("etcd://h:1").unwrap()
        };
        assert!(code.validate().is_err(), "an empty prefix needs the Go layout");
        assert!(EtcdConfig {
            layout: EtcdLayout::Go,
            ..code
        }
        .validate()
        .is_ok());
    }

    #[test]
    fn lock_dirs_are_distinct_and_never_nest() {
        let cfg = EtcdConfig::from_url("etcd://h:1/app").unwrap();
        let keys = [
            "a", "a/b", "a%2Fb", "a%2fb", "%", "%25", "/", "//", "a/", "/a", ".", "..",
        ];
        let dirs: Vec<String> = keys.iter().map(|k| cfg.lock_dir(k)).collect();
        for (i, d) in dirs.iter().enumerate() {
            let inner = &d["/app/".len()..d.len() - 1];
            assert!(!inner.contains('/'), "{:?} escaped to {d}", keys[i]);
            for (j, e) in dirs.iter().enumerate() {
                assert!(
                    i == j || !e.starts_with(d.as_str()),
                    "{:?} and {:?} collide: {d} {e}",
                    keys[i],
                    keys[j]
                );
            }
        }
    }
}
