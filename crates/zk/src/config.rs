//! `zk://` URLs and the backend's options.

use std::time::Duration;

use fencelock_core::backend_url::BackendUrl;
use fencelock_core::options::duration_text::parse_duration;
use fencelock_core::options::url_query;
use fencelock_core::{LockError, Result};

use crate::layout::ZkLayout;

/// The options of the ZooKeeper backend.
///
/// `zk://HOST:PORT[,HOST:PORT...][/CHROOT][?session_timeout=10s&timeout=2s&connect_timeout=1s&layout=fencelock]`
///
/// | part | default | meaning |
/// |---|---|---|
/// | `/CHROOT` | `/fencelock` | every lock lives under it: `CHROOT/KEYNODE/lock-GRANT-lock-SEQUENCE` in the default layout, `CHROOT/KEY/…` (the key a path, as given) in the `curator` and `kazoo` layouts; a bare `/` is the root, for those two layouts only |
/// | `session_timeout` | `10s` | the session's timeout: plays the TTL's role — how long after this process dies or is cut off its locks are freed: at least the server's `minSessionTimeout` (2 ticks by default), or connecting fails with [`LockError::InvalidConfig`] naming it; above `maxSessionTimeout` (20 ticks) the server lowers it; a lease is valid for at most ¾ of the timeout the server granted, less the client's largest gap between sends (⅝ of `connect_timeout`, or ¼ of the session timeout when `connect_timeout` is over 3/5 of it) (a proof of the session through the leader keeps its nodes that long: docs/backends/zookeeper.md) |
/// | `timeout` | `2s` | the longest wait for one request |
/// | `connect_timeout` | `1s` | the longest wait for a connection to one server |
/// | `layout` | `fencelock` | the node names: `fencelock`, `curator` (Curator's `InterProcessMutex`), `kazoo` (kazoo's `Lock`) — see [`ZkLayout`] and `docs/interop-zookeeper.md` |
#[derive(Debug, Clone)]
pub struct ZkConfig {
    /// `HOST:PORT` of every server.
    pub servers: Vec<String>,
    /// The chroot.
    pub chroot: String,
    /// Session timeout.
    pub session_timeout: Duration,
    /// Request timeout.
    pub timeout: Duration,
    /// Connect timeout.
    pub connect_timeout: Duration,
    /// Node names and lock path (issue 17): fencelock's own, or a peer library's.
    pub layout: ZkLayout,
    /// How long the look-ups of a create whose answer was lost go on before the attempt
    /// that sent it is told the outcome is unknown (default 60 s; at most 20 look-ups).
    /// Not a URL option: tests shorten it to make an outage outlast it quickly.
    #[doc(hidden)]
    pub follow_up_budget: Duration,
    pub(crate) display: String,
}

impl ZkConfig {
    /// Parses a `zk://` URL and checks it as [`ZkConfig::validate`] does.
    ///
    /// # Errors
    /// [`LockError::InvalidConfig`] naming the URL and what is wrong with it: another
    /// scheme, a server without a port, a bad chroot (a bare `/` outside the `curator` and
    /// `kazoo` layouts), an unknown option or layout, a duration that does not parse or is
    /// outside 1 ms..10 min.
    pub fn from_url(url: &str) -> Result<Self> {
        let u = BackendUrl::parse(url)?;
        let bad = |why: String| u.invalid(why);
        u.expect_scheme(&["zk"], "ZooKeeper")?;
        u.expect_no_userinfo("ZooKeeper authentication is not supported")?;
        let chroot = match u.path() {
            "" => "/fencelock".to_owned(),
            _ => {
                let c = u.path_decoded("chroot")?;
                format!("/{}", c.strip_prefix('/').unwrap_or(&c).trim_end_matches('/'))
            }
        };
        if chroot.contains("//") {
            return Err(bad(format!("bad chroot `{chroot}`")));
        }
        // HOST:PORT as the client's connect string takes it; a missing port is named by
        // `validate`.
        let servers = u.hosts().iter().map(|h| h.to_string()).collect();
        let mut cfg = ZkConfig {
            servers,
            chroot,
            session_timeout: Duration::from_secs(10),
            timeout: Duration::from_secs(2),
            connect_timeout: Duration::from_secs(1),
            layout: ZkLayout::Fencelock,
            follow_up_budget: Duration::from_secs(60),
            display: u.redacted(),
        };
        for pair in u.query() {
            let (k, v) = (pair.key.as_str(), pair.value.as_str());
            if k == "layout" {
                cfg.layout = v.parse().map_err(|e: LockError| bad(reason(e)))?;
                continue;
            }
            let d = parse_duration(v).map_err(|e| bad(format!("{k}: {e}")));
            match k {
                "session_timeout" => cfg.session_timeout = d?,
                "timeout" => cfg.timeout = d?,
                "connect_timeout" => cfg.connect_timeout = d?,
                _ => {
                    return Err(bad(format!(
                        "unknown option `{k}` (zk takes session_timeout, timeout, connect_timeout, layout)"
                    )))
                }
            }
        }
        if cfg.chroot == "/" {
            if !cfg.layout.takes_paths() {
                return Err(bad(
                    "a bare `/` (the root) is a chroot only for layout=curator or layout=kazoo, whose keys are paths; fencelock's own layout needs a chroot such as /fencelock".into(),
                ));
            }
            cfg.chroot = String::new();
        }
        cfg.validate().map_err(|e| bad(reason(e)))?;
        Ok(cfg)
    }

    /// Checks the options, whether they came from a URL or were set in code: at least one
    /// `HOST:PORT` server, a chroot that is empty (for the chroot's own creation) or an
    /// absolute path without empty segments, and every duration between 1 ms and 10 min
    /// (so no deadline arithmetic can overflow).
    ///
    /// # Errors
    /// [`LockError::InvalidConfig`] naming the first option out of range.
    pub fn validate(&self) -> Result<()> {
        if self.servers.is_empty() {
            return Err(LockError::invalid_config("no ZooKeeper server given"));
        }
        for h in &self.servers {
            let ok = h
                .rsplit_once(':')
                .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
            if !ok {
                return Err(LockError::invalid_config(format!(
                    "bad server `{h}`: write HOST:PORT, e.g. 127.0.0.1:2181"
                )));
            }
        }
        let c = &self.chroot;
        if !c.is_empty() && (c == "/" || !c.starts_with('/') || c.ends_with('/') || c.contains("//")) {
            return Err(LockError::invalid_config(format!("bad chroot `{c}`")));
        }
        if c.split('/').any(|s| s == "." || s == "..") {
            return Err(LockError::invalid_config(format!(
                "bad chroot `{c}`: ZooKeeper paths have no `.` or `..` segments"
            )));
        }
        if let Some(refused) = c.chars().find(|&ch| crate::names::refused_by_zookeeper(ch)) {
            // Keys are escaped around these (names.rs); a chroot is the operator's path
            // and is taken as written, so it is refused here, not by the server later.
            return Err(LockError::invalid_config(format!(
                "bad chroot `{}`: a character ZooKeeper refuses in a path (U+{:04X})",
                c.escape_debug(),
                u32::from(refused)
            )));
        }
        if c == "/zookeeper" || c.starts_with("/zookeeper/") {
            return Err(LockError::invalid_config(format!(
                "bad chroot `{c}`: /zookeeper is ZooKeeper's own reserved subtree"
            )));
        }
        url_query::check_timeouts(&[
            ("session_timeout", self.session_timeout),
            ("timeout", self.timeout),
            ("connect_timeout", self.connect_timeout),
        ])
        .map_err(LockError::invalid_config)
    }

    /// The longest a connect may take: a connect timeout per server, one more, and a
    /// request timeout.
    pub(crate) fn connect_limit(&self) -> Duration {
        let tries = u32::try_from(self.servers.len()).unwrap_or(u32::MAX).saturating_add(1);
        self.connect_timeout.saturating_mul(tries).saturating_add(self.timeout)
    }

    /// The connect string: `H:P,H:P/CHROOT`.
    pub(crate) fn connect_string(&self) -> String {
        format!("{}{}", self.servers.join(","), self.chroot)
    }
}

/// What an `InvalidConfig` says, without its "invalid configuration" prefix, for a message
/// that names the URL around it; any other error as it reads.
fn reason(e: LockError) -> String {
    match e {
        LockError::InvalidConfig { message, .. } => message,
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_servers_chroot_and_options() {
        let c = ZkConfig::from_url("zk://127.0.0.1:1,127.0.0.1:2/app/locks?session_timeout=500ms").unwrap();
        assert_eq!(c.servers.len(), 2);
        assert_eq!(c.chroot, "/app/locks");
        assert_eq!(c.session_timeout, Duration::from_millis(500));
        assert_eq!(c.connect_string(), "127.0.0.1:1,127.0.0.1:2/app/locks");
        assert_eq!(ZkConfig::from_url("zk://h:1").unwrap().chroot, "/fencelock");
        let c = ZkConfig::from_url("zk://[::1]:2181,h:2/a%40b").unwrap();
        assert_eq!(c.servers, ["[::1]:2181", "h:2"]);
        assert_eq!(c.chroot, "/a@b");
    }

    #[test]
    fn layouts_and_the_root_chroot() {
        assert_eq!(ZkConfig::from_url("zk://h:1").unwrap().layout, ZkLayout::Fencelock);
        let c = ZkConfig::from_url("zk://h:1/?layout=curator").unwrap();
        assert_eq!((c.layout, c.chroot.as_str()), (ZkLayout::Curator, ""));
        assert_eq!(c.connect_string(), "h:1");
        let k = ZkConfig::from_url("zk://h:1/apps?layout=kazoo").unwrap();
        assert_eq!((k.layout, k.chroot.as_str()), (ZkLayout::Kazoo, "/apps"));
    }

    #[test]
    fn rejects_bad_urls_clearly() {
        for (url, says) in [
            ("zk://", "no ZooKeeper server"),
            ("zk://h:x", "invalid port number"),
            ("zk://u:pw@h:1", "authentication is not supported"),
            ("zk://h", "bad server"),
            ("zk://h:1?ttl=1s", "unknown option"),
            ("zk://h:1//x", "chroot"),
            ("zk://h:1/a/b/../c", "no `.` or `..` segments"),
            ("zk://h:1/a/./c", "no `.` or `..` segments"),
            ("zk://h:1/zookeeper", "reserved"),
            // Characters the server refuses in a path (before: exit 70 from the server's
            // "bad arguments" when the chroot was made).
            ("zk://h:1/a%00b", "a character ZooKeeper refuses in a path (U+0000)"),
            (
                "zk://h:1/%F0%9F%98%80",
                "a character ZooKeeper refuses in a path (U+1F600)",
            ),
            ("zk://h:1/x%7F", "a character ZooKeeper refuses in a path (U+007F)"),
            ("zk://h:1?timeout=1ns", "timeout must be between 1ms and 10m, got 1ns"),
            ("zk://h:1?layout=Curator", "unknown layout"),
            ("zk://h:1/", "layout=curator or layout=kazoo"),
            ("zk://h:1/?layout=fencelock", "a bare `/`"),
        ] {
            let e = ZkConfig::from_url(url).unwrap_err().to_string();
            assert!(e.contains(says), "{url}: {e}");
            // Said once: a check's own error is not wrapped in another.
            assert_eq!(e.matches("invalid configuration").count(), 1, "{url}: {e}");
        }
    }

    #[test]
    fn configs_changed_in_code_are_checked_like_urls() {
        let good = ZkConfig::from_url("zk://h:1").unwrap();
        for (change, says) in [
            (
                &(|c: &mut ZkConfig| c.timeout = Duration::MAX) as &dyn Fn(&mut ZkConfig),
                "timeout",
            ),
            (
                &|c: &mut ZkConfig| c.session_timeout = Duration::ZERO,
                "session_timeout",
            ),
            (
                &|c: &mut ZkConfig| c.connect_timeout = Duration::from_secs(u64::MAX),
                "connect_timeout",
            ),
            (&|c: &mut ZkConfig| c.servers.clear(), "no ZooKeeper server"),
            (&|c: &mut ZkConfig| c.servers = vec!["nohost".into()], "bad server"),
            (&|c: &mut ZkConfig| c.chroot = "rel".into(), "chroot"),
        ] {
            let mut c = good.clone();
            change(&mut c);
            let e = c.validate().unwrap_err();
            assert!(matches!(e, LockError::InvalidConfig { .. }), "{e}");
            assert!(e.to_string().contains(says), "{e}");
        }
        assert!(ZkConfig::from_url("zk://h:1?timeout=100000000000s").is_err());
        assert_eq!(good.connect_limit(), Duration::from_secs(4));
    }
}
