//! Building a backend from a URL.

use std::sync::Arc;

use fencelock_core::{DistributedLock, LockError, Result};

use crate::schemes::{self, SCHEMES};

/// Builds the backend a URL names.
///
/// | URL | backend |
/// |---|---|
/// | `memory://[NAME]` | in-process table (same NAME, same locks) |
/// | `file:///ABSOLUTE/DIR[?durable=false]` | files and `flock` in DIR, for one host |
/// | `redis://[:PASSWORD@]HOST:PORT[/DB]`, `rediss://…` | one Redis server (feature `redis`) |
/// | `redlock://H1:P1,H2:P2,H3:P3[,…]` | Redlock over independent Redis servers (feature `redlock`) |
/// | `etcd://HOST:PORT[,HOST:PORT…][/PREFIX]` | etcd (feature `etcd`) |
/// | `zk://HOST:PORT[,HOST:PORT…][/CHROOT]` | ZooKeeper (feature `zookeeper`) |
/// | `postgres://[USER[:PASSWORD]@]HOST[:PORT][/DB][?…]`, `postgresql://…` | PostgreSQL (feature `postgres`) |
///
/// A scheme whose feature is off is [`LockError::FeatureDisabled`], naming the feature; a
/// malformed URL is [`LockError::InvalidConfig`], saying what is wrong. The server
/// backends' URLs share one parser, [`fencelock_core::backend_url`]: credentials are
/// percent-decoded (`/`, `?`, `#` in a password written `%2F`, `%3F`, `%23`), IPv6 hosts go
/// in brackets (`redis://[::1]:6379`), and messages show passwords as `***`.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> fencelock::Result<()> {
/// let locks = fencelock::connect("memory://docs").await?;
/// let lease = locks.acquire("k", &fencelock::LockOptions::new()).await?;
/// lease.release().await?;
/// assert!(fencelock::connect("nope://x").await.is_err());
/// # Ok(()) }
/// ```
///
/// The backend comes wrapped in [`Metered`](fencelock_core::metrics::Metered), so it
/// records [metrics](fencelock_core::metrics) once the application installs a recorder,
/// labelled by backend (the scheme) but not by key; [`LockConfig`](crate::LockConfig)'s
/// `metrics_key_label` adds the key.
pub async fn connect(url: &str) -> Result<Arc<dyn DistributedLock>> {
    connect_with(url, false).await
}

/// [`connect`], with the key as a metrics label or not.
pub(crate) async fn connect_with(url: &str, key_label: bool) -> Result<Arc<dyn DistributedLock>> {
    let url = url.trim();
    let (scheme, lock) = connect_backend(url).await?;
    Ok(Arc::new(
        fencelock_core::metrics::Metered::new(lock, scheme).with_key_label(key_label),
    ))
}

async fn connect_backend(url: &str) -> Result<(String, Arc<dyn DistributedLock>)> {
    let shown = fencelock_core::backend_url::redact(url);
    let Some(scheme) = schemes::scheme_of(url) else {
        return Err(LockError::invalid_config(format!(
            "`{shown}` is not a backend URL: expected SCHEME://..., e.g. file:///var/lock/app or redis://127.0.0.1:6379"
        )));
    };
    let Some(entry) = schemes::find(&scheme) else {
        let known: Vec<&str> = SCHEMES.iter().flat_map(|s| s.names.iter().copied()).collect();
        return Err(LockError::invalid_config(format!(
            "unknown backend scheme `{scheme}://` in `{shown}`; known schemes: {}",
            known.join(", ")
        )));
    };
    if !entry.compiled {
        return match entry.feature {
            Some(feature) => Err(LockError::FeatureDisabled { scheme, feature }),
            None => Err(LockError::invalid_config(format!(
                "the `{scheme}://` backend is not available on this platform"
            ))),
        };
    }
    let lock: Arc<dyn DistributedLock> = match scheme.as_str() {
        "memory" => Arc::new(fencelock_core::memory::MemoryLock::from_url(url)?),
        #[cfg(unix)]
        "file" => Arc::new(fencelock_core::file::FileLock::from_url(url)?),
        #[cfg(feature = "redis")]
        "redis" | "rediss" => Arc::new(fencelock_redis::RedisLock::connect(url).await?),
        #[cfg(feature = "redlock")]
        "redlock" => Arc::new(fencelock_redlock::RedlockLock::connect(url).await?),
        #[cfg(feature = "etcd")]
        "etcd" => Arc::new(fencelock_etcd::EtcdLock::connect(url).await?),
        #[cfg(feature = "zookeeper")]
        "zk" => Arc::new(fencelock_zk::ZkLock::connect(url).await?),
        #[cfg(feature = "postgres")]
        "postgres" | "postgresql" => Arc::new(fencelock_postgres::PgLock::connect(url).await?),
        _ => {
            return Err(LockError::invalid_config(format!(
                "the `{scheme}://` backend is listed but not wired in; this is a bug"
            )))
        }
    };
    Ok((scheme, lock))
}
