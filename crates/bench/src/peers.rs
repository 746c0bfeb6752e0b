//! Peer libraries on the same servers, through the same [`Subject`] trait:
//!
//! * `rslock` — the incumbent Rust Redlock (also used with one server): `SET NX PX` to
//!   every node, retried after a random delay of up to 200 ms while busy; best-effort
//!   unlock; no fencing token, no auto-renewal.
//! * `distributed-lock` (its Redis backend, `distributed-lock-redis`) — the nearest
//!   multi-backend Rust library, for the backends it supports here (Redis, one server or
//!   RedLock over several): no fencing token; its handles renew in the background. Its
//!   acquire makes one attempt and answers `Timeout` when the key is busy (0.2.0 has no
//!   wait loop), so under contention the bench retries after a pause of 1–10 ms, as a
//!   caller of it must. Its `min_validity` is set to 90 % of the TTL, as its default
//!   (27 s of 30 s) is.
//!
//! Each is used as its documentation shows, with the same 10 s TTL as everything else.

use distributed_lock_core::{DistributedLock as _, LockHandle as _, LockProvider as _};
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;

use crate::error::{BenchError, Result};
use crate::subject::{Held, Subject, TTL};

/// `rslock::LockManager` over one or several nodes.
pub struct Rslock {
    manager: rslock::LockManager,
}

impl Rslock {
    /// A manager over the node URLs (`redis://…`); it connects on first use.
    pub fn new(nodes: &[String]) -> Self {
        Rslock {
            manager: rslock::LockManager::new(nodes.to_vec()),
        }
    }
}

impl Subject for Rslock {
    fn acquire<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Held>> {
        Box::pin(async move {
            let lock = self
                .manager
                .acquire_no_guard(key.as_bytes(), TTL)
                .await
                .map_err(|e| BenchError::client("rslock", "acquire", e))?;
            let manager = self.manager.clone();
            let release: Held = Box::pin(async move {
                manager.unlock(&lock).await;
                Ok(())
            });
            Ok(release)
        })
    }
}

/// `distributed_lock_redis::RedisLockProvider` over one or several nodes.
pub struct DistributedLockRedis {
    provider: distributed_lock_redis::RedisLockProvider,
}

impl DistributedLockRedis {
    /// Connects to the node URLs (`redis://…`).
    pub async fn connect(nodes: &[String]) -> Result<Self> {
        let provider = distributed_lock_redis::RedisLockProvider::builder()
            .urls(nodes)
            .expiry(TTL)
            .min_validity(TTL * 9 / 10)
            .extension_cadence(TTL / 3)
            .build()
            .await
            .map_err(|e| BenchError::client("distributed-lock", "connecting", e))?;
        Ok(DistributedLockRedis { provider })
    }
}

impl Subject for DistributedLockRedis {
    fn acquire<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Held>> {
        Box::pin(async move {
            let lock = self.provider.create_lock(key);
            let deadline = Instant::now() + Duration::from_secs(30);
            let handle = loop {
                // `None`: no cancel timer task per attempt; the attempt itself is bounded
                // by the library (TTL − min_validity).
                match lock.acquire(None).await {
                    Ok(h) => break h,
                    Err(distributed_lock_core::LockError::Timeout(_)) if Instant::now() < deadline => {
                        tokio::time::sleep(pause()).await;
                    }
                    Err(e) => return Err(BenchError::client("distributed-lock", "acquire", e)),
                }
            };
            let release: Held = Box::pin(async move {
                handle
                    .release()
                    .await
                    .map_err(|e| BenchError::client("distributed-lock", "release", e))
            });
            Ok(release)
        })
    }
}

/// 1–10 ms, varying from call to call (the sub-microsecond part of the clock).
fn pause() -> Duration {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    Duration::from_micros(1000 + u64::from(nanos / 1000 % 9000))
}
