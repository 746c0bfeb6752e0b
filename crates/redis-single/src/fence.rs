//! [`RedisFencedStore`]: fencing for data that lives in Redis itself.

use fencelock_core::fencing::Admission;
use fencelock_core::{Fence, FenceRejection, FencingToken, GrantId, LockError, Result};
use redis::aio::ConnectionManager;

use crate::error::failed;
use crate::scripts::FENCED_WRITE;

/// Stores values in Redis only for the current holder: a write carries the writer's
/// [`Fence`], and one atomic script admits it when its token is higher than the highest
/// seen for that resource, or equal to it from the same grant — the same rule as
/// [`FencingChecker`](fencelock_core::fencing::FencingChecker). A holder that paused past
/// its TTL and wakes up after a newer holder wrote is refused.
///
/// ```no_run
/// # async fn demo() -> fencelock_core::Result<()> {
/// use fencelock_core::{DistributedLock, LockOptions};
/// let locks = fencelock_redis::RedisLock::connect("redis://127.0.0.1:6379").await?;
/// let store = fencelock_redis::RedisFencedStore::new(&locks).await?;
/// let lease = locks.acquire("balance", &LockOptions::new()).await?;
/// store.write("balance", &lease.fence(), b"42").await?; // Err(Fenced) if stale
/// lease.release().await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct RedisFencedStore {
    conn: ConnectionManager,
    prefix: String,
    server: String,
}

impl std::fmt::Debug for RedisFencedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisFencedStore")
            .field("server", &self.server)
            .finish_non_exhaustive()
    }
}

impl RedisFencedStore {
    /// A store on the same server and connection as `lock`, under its key prefix.
    ///
    /// # Cancel safety
    /// Cancel safe: it only connects.
    pub async fn new(lock: &crate::RedisLock) -> Result<Self> {
        Ok(RedisFencedStore {
            conn: lock.connection().await?,
            prefix: lock.config().prefix.clone(),
            server: lock.config().server().to_owned(),
        })
    }

    fn keys(&self, resource: &str) -> (String, String) {
        (
            format!("{}{{{resource}}}:fence", self.prefix),
            format!("{}{{{resource}}}:data", self.prefix),
        )
    }

    async fn run(&self, resource: &str, fence: &Fence, value: Option<&[u8]>) -> Result<Admission> {
        let (fence_key, data_key) = self.keys(resource);
        let mut conn = self.conn.clone();
        let reply: Vec<redis::Value> = FENCED_WRITE
            .call()
            .key(fence_key)
            .key(data_key)
            .arg(fence.token.get().to_string())
            .arg(fence.grant.as_str())
            .arg(value.unwrap_or_default())
            .arg(if value.is_some() { "1" } else { "0" })
            .invoke(&mut conn)
            .await
            .map_err(|e| failed("fenced write script", &self.server, e))?;
        let int = |v: Option<&redis::Value>| -> i64 {
            match v {
                Some(redis::Value::Int(n)) => *n,
                _ => -1,
            }
        };
        let text = |v: Option<&redis::Value>| -> String {
            match v {
                Some(redis::Value::BulkString(b)) => String::from_utf8_lossy(b).into_owned(),
                _ => String::new(),
            }
        };
        match int(reply.first()) {
            1 => Ok(match int(reply.get(1)) {
                0 => Admission::First,
                2 => Admission::SameGrant,
                _ => Admission::Newer,
            }),
            0 => {
                let highest = FencingToken::new(text(reply.get(1)).parse().unwrap_or(u64::MAX));
                let grant = GrantId::from_string(text(reply.get(2)));
                Err(LockError::Fenced(FenceRejection {
                    resource: resource.to_owned(),
                    presented: fence.token,
                    highest,
                    reused: fence.token == highest && fence.grant != grant,
                }))
            }
            _ => Err(LockError::Backend {
                backend: crate::error::BACKEND,
                message: format!("unexpected reply from the fenced write script: {reply:?}"),
                source: None,
                temporary: false,
            }),
        }
    }

    /// Admits `fence` for `resource` (recording it) without storing data.
    ///
    /// # Cancel safety
    /// Dropped in flight, the admission may or may not have been recorded (the script is
    /// atomic: all or nothing); checking again with the same fence is admitted as the same
    /// grant.
    pub async fn check(&self, resource: &str, fence: &Fence) -> Result<Admission> {
        self.run(resource, fence, None).await
    }

    /// Admits `fence` and stores `value` for `resource`, atomically; refused writes change
    /// nothing.
    ///
    /// # Cancel safety
    /// Dropped in flight, the value may or may not have been stored (the script is atomic:
    /// all or nothing); writing again with the same fence is admitted as the same grant.
    pub async fn write(&self, resource: &str, fence: &Fence, value: &[u8]) -> Result<Admission> {
        self.run(resource, fence, Some(value)).await
    }

    /// The value last written for `resource`.
    ///
    /// # Cancel safety
    /// Cancel safe: it only reads.
    pub async fn read(&self, resource: &str) -> Result<Option<Vec<u8>>> {
        let (_, data_key) = self.keys(resource);
        let mut conn = self.conn.clone();
        redis::cmd("GET")
            .arg(data_key)
            .query_async(&mut conn)
            .await
            .map_err(|e| failed("GET", &self.server, e))
    }
}
