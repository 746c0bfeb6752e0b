//! `redlock://` URLs and the algorithm's options.

use std::time::Duration;

use fencelock_core::backend_url::BackendUrl;
use fencelock_core::options::duration_text::parse_duration;
use fencelock_core::options::url_query;
use fencelock_core::{LockError, Result};
use fencelock_redis::{RedisConfig, RedisLayout};

/// The options of the Redlock backend, from the URL's query or set in code.
///
/// | query key | default | meaning |
/// |---|---|---|
/// | `per_node_timeout` | `50ms` | the longest wait for one node's answer (and connection) once a quorum has answered; a dead or slow minority costs at most this per operation. While fewer than a quorum have answered, answers still count up to 10 × this (at most 1 s): a busy client reads them late (issue 14). Keep it far below the TTL |
/// | `drift_factor` | `0.01` | clock drift allowance as a fraction of the TTL; validity = TTL − elapsed − (TTL × factor + 2 ms) |
/// | `retry_delay` | `200ms` | the base of the random delay (50–100 %) before retrying after a failed round, also the fallback re-check of a waiter when no release message arrives (never longer than the holder's remaining TTL) |
/// | `restart_delay` | `0s` (off) | the "delayed restart" rule: a node that started empty refuses grants for this long (set it ≥ your longest TTL); see the crate docs |
/// | `prefix` | `fencelock:` | key prefix on every node |
/// | `layout` | `fencelock` | the key names on every node ([`RedisLayout`](fencelock_redis::RedisLayout)): `bare` shares a lock with node-redlock and redsync, `pottery` with pottery's `Redlock`; see `docs/interop.md` |
#[derive(Debug, Clone)]
pub struct RedlockConfig {
    /// One entry per node.
    pub nodes: Vec<RedisConfig>,
    /// Per-node timeout.
    pub per_node_timeout: Duration,
    /// Clock drift factor.
    pub drift_factor: f64,
    /// Base of the random retry delay.
    pub retry_delay: Duration,
    /// Delayed-restart rule (zero: off).
    pub restart_delay: Duration,
    pub(crate) display: String,
}

/// The constant part of the drift allowance, for timer resolution (the Redlock paper's 2 ms).
pub const DRIFT_CONSTANT: Duration = Duration::from_millis(2);

impl RedlockConfig {
    /// Parses `redlock://[[USER]:PASSWORD@]H1[:P1],H2[:P2],...[/DB][?per_node_timeout=D&drift_factor=F&retry_delay=D&restart_delay=D&prefix=P&layout=L]`
    /// with fencelock-core's one URL parser ([`fencelock_core::backend_url`]: credentials
    /// percent-decoded, IPv6 hosts in brackets, a port defaults to 6379). The credentials
    /// and DB apply to every node. Any number of nodes ≥ 1 is accepted; the quorum is N/2 + 1.
    ///
    /// # Errors
    /// [`LockError::InvalidConfig`] naming the URL (password hidden) and what is wrong.
    pub fn from_url(url: &str) -> Result<Self> {
        let u = BackendUrl::parse(url)?;
        u.expect_scheme(&["redlock"], "Redlock")?;
        if u.hosts().is_empty() {
            return Err(u.invalid("an empty node in the list: write redlock://H1:P1,H2:P2,H3:P3"));
        }
        let mut cfg = RedlockConfig {
            nodes: Vec::new(),
            per_node_timeout: Duration::from_millis(50),
            drift_factor: 0.01,
            retry_delay: Duration::from_millis(200),
            restart_delay: Duration::ZERO,
            display: u.redacted(),
        };
        let mut prefix = "fencelock:".to_owned();
        let mut layout = RedisLayout::Fencelock;
        for pair in u.query() {
            let (k, v) = (pair.key.as_str(), pair.value.as_str());
            let duration = || parse_duration(v).map_err(|e| u.invalid(format!("{k}: {e}")));
            match k {
                "per_node_timeout" => cfg.per_node_timeout = duration()?,
                "retry_delay" => cfg.retry_delay = duration()?,
                "restart_delay" => cfg.restart_delay = duration()?,
                "prefix" => prefix = v.to_owned(),
                "layout" => layout = RedisLayout::parse(v).map_err(|e| u.invalid(e))?,
                "drift_factor" => {
                    cfg.drift_factor = v
                        .parse::<f64>()
                        .map_err(|_| u.invalid(format!("drift_factor must be a number in [0, 0.5), got `{v}`")))?
                }
                _ => {
                    return Err(u.invalid(format!(
                        "unknown option `{k}` (redlock takes per_node_timeout, drift_factor, retry_delay, restart_delay, prefix, layout)"
                    )))
                }
            }
        }
        for host in u.hosts() {
            let mut node = RedisConfig::for_host(&u, host, false)?;
            node.timeout = cfg.per_node_timeout;
            node.connect_timeout = cfg.per_node_timeout;
            node.prefix = prefix.clone();
            node.layout = layout;
            cfg.nodes.push(node);
        }
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks the options, whether they came from a URL or were set in code: the one
    /// validation path of [`from_url`](Self::from_url) and
    /// [`RedlockLock::with_config`](crate::RedlockLock::with_config).
    ///
    /// # Errors
    /// [`LockError::InvalidConfig`] when there are no nodes or a node is listed twice (the
    /// same text: one server under two spellings is found by
    /// [`RedlockLock::connect`](crate::RedlockLock::connect), from the servers' `run_id`);
    /// `per_node_timeout` is outside 1 ms ..= 60 s; `retry_delay` is outside 1 ms ..= 10 min;
    /// `restart_delay` is neither 0 (off) nor within 1 ms ..= 1 day; `drift_factor` is not a finite number in [0, 0.5)
    /// (NaN would panic in the drift arithmetic, huge durations would overflow `Instant`);
    /// or a node's own options fail [`RedisConfig::validate`].
    pub fn validate(&self) -> Result<()> {
        let bad = |why: String| LockError::invalid_config(format!("`{}`: {why}", self.display));
        if self.nodes.is_empty() {
            return Err(bad("no nodes: Redlock needs at least one".into()));
        }
        let ms = Duration::from_millis(1);
        url_query::check_range("per_node_timeout", self.per_node_timeout, ms, Duration::from_secs(60)).map_err(bad)?;
        url_query::check_range("retry_delay", self.retry_delay, ms, Duration::from_secs(600)).map_err(bad)?;
        // 0 turns it off; anything else is counted in whole milliseconds by the scripts,
        // so below 1 ms it would turn it off unsaid.
        if !self.restart_delay.is_zero() {
            url_query::check_range("restart_delay", self.restart_delay, ms, Duration::from_secs(86_400))
                .map_err(|e| bad(format!("{e} (or 0s: off)")))?;
        }
        if !(self.drift_factor.is_finite() && (0.0..0.5).contains(&self.drift_factor)) {
            return Err(bad(format!(
                "drift_factor must be a number in [0, 0.5), got {}",
                self.drift_factor
            )));
        }
        let mut seen = std::collections::HashSet::new();
        for n in &self.nodes {
            n.validate().map_err(|e| bad(format!("node {}: {e}", n.server())))?;
            if !seen.insert(n.server().to_owned()) {
                return Err(bad(format!(
                    "node {} is listed twice; Redlock needs independent nodes",
                    n.server()
                )));
            }
        }
        Ok(())
    }

    /// How many nodes must agree: N/2 + 1.
    pub fn quorum(&self) -> usize {
        self.nodes.len() / 2 + 1
    }

    /// The drift allowance for a TTL.
    pub fn drift(&self, ttl: Duration) -> Duration {
        ttl.mul_f64(self.drift_factor) + DRIFT_CONSTANT
    }

    /// `ttl`, but no longer than a non-zero `restart_delay`: the longest a copy may be set
    /// for (a node restarted empty votes again after the delay).
    pub(crate) fn within_restart_delay(&self, ttl: Duration) -> Duration {
        if self.restart_delay.is_zero() {
            ttl
        } else {
            ttl.min(self.restart_delay)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_nodes_options_and_quorum() {
        let c = RedlockConfig::from_url(
            "redlock://:pw@127.0.0.1:1,127.0.0.1:2,127.0.0.1:3,127.0.0.1:4,127.0.0.1:5?per_node_timeout=20ms&restart_delay=30s",
        )
        .unwrap();
        assert_eq!(c.nodes.len(), 5);
        assert_eq!(c.quorum(), 3);
        assert_eq!(c.per_node_timeout, Duration::from_millis(20));
        assert_eq!(c.restart_delay, Duration::from_secs(30));
        assert_eq!(c.nodes[0].timeout, Duration::from_millis(20));
        assert!(!c.display.contains("pw"));
        assert!(c
            .nodes
            .iter()
            .all(|n| n.server().starts_with("redis://:***@127.0.0.1:")));
        assert!(!format!("{c:?}").contains("pw"));
        let c = RedlockConfig::from_url("redlock://:a%40b@[::1]:1,h?prefix=p:").unwrap();
        assert_eq!(c.nodes[0].server(), "redis://:***@[::1]:1");
        assert_eq!(c.nodes[1].server(), "redis://:***@h:6379 (default port)");
        assert_eq!(RedlockConfig::from_url("redlock://h:1").unwrap().quorum(), 1);
        assert_eq!(RedlockConfig::from_url("redlock://h:1,h:2").unwrap().quorum(), 2);
        assert_eq!(
            RedlockConfig::from_url("redlock://h:1,h:2,h:3,h:4").unwrap().quorum(),
            3
        );
    }

    #[test]
    fn rejects_bad_urls_clearly() {
        for (url, says) in [
            ("redlock://", "empty node"),
            ("redlock://h:1,,h:2", "empty host in the list"),
            ("redlock://h:1,h:1", "listed twice"),
            ("redlock://h:x", "invalid port number"),
            ("redlock://h:1/x", "DB index `x` is not a number"),
            ("redlock://:pw/x@h:1", "percent-encode"),
            ("redlock://h:1?drift_factor=2", "drift_factor"),
            ("redlock://h:1?per_node_timeout=0ms", "per_node_timeout"),
            ("redlock://h:1?quorum=1", "unknown option"),
        ] {
            let e = RedlockConfig::from_url(url).unwrap_err().to_string();
            assert!(e.contains(says), "{url}: {e}");
        }
    }

    #[test]
    fn options_set_in_code_are_checked_like_the_url() {
        let ok = RedlockConfig::from_url("redlock://h:1,h:2,h:3").unwrap();
        type Change = fn(&mut RedlockConfig);
        let cases: [(Change, &str); 10] = [
            (|c| c.drift_factor = f64::NAN, "drift_factor"),
            (|c| c.drift_factor = f64::INFINITY, "drift_factor"),
            (|c| c.drift_factor = -0.1, "drift_factor"),
            (|c| c.per_node_timeout = Duration::MAX, "per_node_timeout"),
            (|c| c.per_node_timeout = Duration::ZERO, "per_node_timeout"),
            (|c| c.retry_delay = Duration::MAX, "retry_delay"),
            (|c| c.restart_delay = Duration::MAX, "restart_delay"),
            (|c| c.nodes.clear(), "no nodes"),
            (|c| c.nodes[1] = c.nodes[0].clone(), "listed twice"),
            (|c| c.nodes[0].timeout = Duration::MAX, "timeout"),
        ];
        for (change, says) in cases {
            let mut c = ok.clone();
            change(&mut c);
            let e = c.validate().unwrap_err();
            assert!(matches!(e, LockError::InvalidConfig { .. }), "{e}");
            assert!(e.to_string().contains(says), "{says}: {e}");
            let e = crate::RedlockLock::with_config(c).unwrap_err();
            assert!(matches!(e, LockError::InvalidConfig { .. }), "{e}");
        }
        assert!(ok.validate().is_ok());
    }
}
