//! URL schemes: which backend each names, which Cargo feature brings it, and its URL form.
//!
//! One table, so `connect`, `fencelock backends` and the docs agree.

/// A backend as named in URLs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Scheme {
    /// The URL scheme(s), e.g. `["redis", "rediss"]`.
    pub names: &'static [&'static str],
    /// The Cargo feature of `fencelock` that compiles it in (`None`: always there).
    pub feature: Option<&'static str>,
    /// Whether it is compiled into this build.
    pub compiled: bool,
    /// The URL form.
    pub form: &'static str,
    /// One line on when to choose it.
    pub summary: &'static str,
}

/// Every scheme fencelock knows, compiled in or not.
pub const SCHEMES: &[Scheme] = &[
    Scheme {
        names: &["memory"],
        feature: None,
        compiled: true,
        form: "memory://[NAME]",
        summary: "in-process table; tests and tasks of one process",
    },
    Scheme {
        names: &["file"],
        feature: None,
        compiled: cfg!(unix),
        form: "file:///ABSOLUTE/DIR[?durable=false]",
        summary: "processes of one host, no server; the CLI's default",
    },
    Scheme {
        names: &["redis", "rediss"],
        feature: Some("redis"),
        compiled: cfg!(feature = "redis"),
        form: "redis://[[USER]:PASSWORD@]HOST[:PORT][/DB] (port 6379 if left out; rediss:// for TLS, with the Cargo feature `redis-tls`)",
        summary: "one Redis server; fast, exclusive while that server lives and keeps its data",
    },
    Scheme {
        names: &["redlock"],
        feature: Some("redlock"),
        compiled: cfg!(feature = "redlock"),
        form: "redlock://[[USER]:PASSWORD@]H1:P1,H2:P2,H3:P3[,...][/DB]",
        summary: "Redlock quorum over independent Redis servers; best-effort tokens",
    },
    Scheme {
        names: &["etcd"],
        feature: Some("etcd"),
        compiled: cfg!(feature = "etcd"),
        form: "etcd://HOST:PORT[,HOST:PORT...][/PREFIX]",
        summary: "etcd (Raft); strict exclusion, revision tokens",
    },
    Scheme {
        names: &["zk"],
        feature: Some("zookeeper"),
        compiled: cfg!(feature = "zookeeper"),
        form: "zk://HOST:PORT[,HOST:PORT...][/CHROOT]",
        summary: "ZooKeeper (ZAB); strict exclusion, zxid tokens",
    },
    Scheme {
        names: &["postgres", "postgresql"],
        feature: Some("postgres"),
        compiled: cfg!(feature = "postgres"),
        form:
            "postgres://[USER[:PASSWORD]@]HOST[:PORT][/DB][?sslmode=disable&schema=S&connections=N&handoff=BOOL] (or postgresql://)",
        summary: "PostgreSQL lease table; strict on one durable primary, fence inside your transaction",
    },
];

/// The scheme part of `url` (before `://`), lowercased, or `None` if there is none.
pub(crate) fn scheme_of(url: &str) -> Option<String> {
    let (scheme, _) = url.split_once("://")?;
    let valid = !scheme.is_empty()
        && scheme.starts_with(|c: char| c.is_ascii_alphabetic())
        && scheme
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
    valid.then(|| scheme.to_ascii_lowercase())
}

/// What the backend of `scheme` promises, when it is compiled into this build.
pub fn guarantees(scheme: &str) -> Option<fencelock_core::Guarantees> {
    match scheme {
        "memory" => Some(fencelock_core::memory::GUARANTEES),
        #[cfg(unix)]
        "file" => Some(fencelock_core::file::GUARANTEES),
        // Without a server at hand, the weaker promise; a connected backend knows better.
        #[cfg(feature = "redis")]
        "redis" | "rediss" => Some(fencelock_redis::GUARANTEES),
        #[cfg(feature = "redlock")]
        "redlock" => Some(fencelock_redlock::GUARANTEES),
        #[cfg(feature = "etcd")]
        "etcd" => Some(fencelock_etcd::GUARANTEES),
        #[cfg(feature = "zookeeper")]
        "zk" => Some(fencelock_zk::GUARANTEES),
        #[cfg(feature = "postgres")]
        "postgres" | "postgresql" => Some(fencelock_postgres::GUARANTEES),
        _ => None,
    }
}

/// The guarantees of `scheme`'s backend in each case its server's settings decide, each
/// with the condition that selects it (empty when there is one case), strongest first. This
/// is what `fencelock backends` lists without a server at hand; a connected backend's
/// [`guarantees`](fencelock_core::DistributedLock::guarantees) is the one case that holds.
pub fn guarantees_by_condition(scheme: &str) -> Vec<(&'static str, fencelock_core::Guarantees)> {
    match scheme {
        #[cfg(feature = "redis")]
        "redis" | "rediss" => vec![
            (
                "when the server fsyncs every write (appendonly yes, appendfsync always) and never evicts keys without a TTL (maxmemory-policy noeviction or volatile-*), as read with CONFIG GET at connect",
                fencelock_redis::GUARANTEES_DURABLE,
            ),
            (
                "otherwise, or when CONFIG GET is refused",
                fencelock_redis::GUARANTEES,
            ),
        ],
        #[cfg(feature = "postgres")]
        "postgres" | "postgresql" => vec![
            (
                "when fsync and synchronous_commit are on (PostgreSQL's defaults), as read at connect",
                fencelock_postgres::GUARANTEES_DURABLE,
            ),
            ("when fsync or synchronous_commit is off", fencelock_postgres::GUARANTEES),
        ],
        _ => guarantees(scheme).map(|g| ("", g)).into_iter().collect(),
    }
}

/// The entry for a scheme name.
pub fn find(scheme: &str) -> Option<&'static Scheme> {
    SCHEMES.iter().find(|s| s.names.contains(&scheme))
}
