//! Building an election from a URL: [`connect_election`].

use std::sync::Arc;

use fencelock_core::election::Election;
use fencelock_core::{LockError, Result};

use crate::schemes;

/// Builds the leader election of the backend a URL names (the same URLs as
/// [`connect`](crate::connect)). A separate entry point rather than a method on the lock
/// handle, so that `Arc<dyn DistributedLock>` stays as it is and a backend without an
/// election yet fails here, at configuration time, with a clear error.
///
/// | URL | election |
/// |---|---|
/// | `memory://[NAME]` | in-process seats (same NAME, same elections) |
/// | `file:///ABSOLUTE/DIR` | seats beside the file locks of DIR, for one host |
/// | `redis://…`, `rediss://…` | seats beside the locks of one Redis server (feature `redis`) |
/// | `redlock://…` | best effort: `leader` by quorum agreement, no `observe` (feature `redlock`) |
/// | `etcd://…` | a key per candidate holding its value, lowest create revision leads, observe by watch (feature `etcd`) |
/// | `zk://…` | ephemeral sequential nodes with data, lowest leads (feature `zookeeper`) |
/// | `postgres://…` | the lock row as the seat, a `leaders` row beside it (feature `postgres`) |
/// | a backend whose feature is off | [`LockError::FeatureDisabled`] naming the feature |
/// | others | [`LockError::InvalidConfig`] |
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> fencelock::Result<()> {
/// use fencelock::LockOptions;
/// let elections = fencelock::connect_election("memory://docs").await?;
/// let leadership = elections.campaign("scheduler", b"10.0.0.7:8080", &LockOptions::new()).await?;
/// println!("leading with term {}", leadership.term()); // send it with every write
/// leadership.resign().await?;
/// # Ok(()) }
/// ```
///
/// # Errors
/// [`LockError::InvalidConfig`] for a malformed URL or an unknown scheme;
/// [`LockError::FeatureDisabled`] for a backend not compiled in; the backend's connect
/// errors.
///
/// # Cancel safety
/// Cancel safe: nothing is left behind.
pub async fn connect_election(url: &str) -> Result<Arc<dyn Election>> {
    let url = url.trim();
    match schemes::scheme_of(url).as_deref() {
        Some("memory") => Ok(Arc::new(fencelock_core::election::memory::MemoryElection::from_url(
            url,
        )?)),
        #[cfg(unix)]
        Some("file") => Ok(Arc::new(fencelock_core::election::file::FileElection::from_url(url)?)),
        #[cfg(feature = "redis")]
        Some("redis" | "rediss") => Ok(Arc::new(fencelock_redis::RedisElection::connect(url).await?)),
        #[cfg(feature = "etcd")]
        Some("etcd") => Ok(Arc::new(fencelock_etcd::EtcdElection::connect(url).await?)),
        #[cfg(feature = "zookeeper")]
        Some("zk") => Ok(Arc::new(fencelock_zk::ZkElection::connect(url).await?)),
        #[cfg(feature = "postgres")]
        Some("postgres" | "postgresql") => Ok(Arc::new(fencelock_postgres::PgElection::connect(url).await?)),
        #[cfg(feature = "redlock")]
        Some("redlock") => Ok(Arc::new(fencelock_redlock::RedlockElection::connect(url).await?)),
        Some(scheme) => match schemes::find(scheme) {
            Some(entry) if !entry.compiled => match entry.feature {
                Some(feature) => Err(LockError::FeatureDisabled {
                    scheme: scheme.to_owned(),
                    feature,
                }),
                None => Err(LockError::invalid_config(format!(
                    "the `{scheme}://` backend is not available on this platform"
                ))),
            },
            _ => Err(LockError::invalid_config(format!(
                "no leader election for `{scheme}://` (elections: file://, redis://, redlock://, etcd://, zk://, postgres://, and memory:// within one process)"
            ))),
        },
        None => Err(LockError::invalid_config(format!(
            "`{}` is not a backend URL: expected SCHEME://..., e.g. memory://",
            fencelock_core::backend_url::redact(url)
        ))),
    }
}

// docs/election.md's example compiles as a doctest.
#[doc = include_str!("../docs/election.md")]
#[cfg(doctest)]
pub struct ElectionDoctests;
