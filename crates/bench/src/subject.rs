//! What is measured: anything that can take a named lock and give it back — our backends,
//! the raw minimum issued with the client crate, and the peer crates — behind one trait.

use std::sync::Arc;
use std::time::Duration;

use fencelock_core::{DistributedLock, LockOptions};
use futures_util::future::BoxFuture;

use crate::error::{BenchError, Result};

/// A held lock: awaiting it releases.
pub type Held = BoxFuture<'static, Result<()>>;

/// A lock implementation under measurement.
pub trait Subject: Send + Sync {
    /// Takes `key`, waiting for it when it is held (raw minimums, which cannot wait, fail).
    fn acquire<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Held>>;
}

/// The TTL every measured lock gets (ours, the raw minimums and the peers alike).
pub const TTL: Duration = Duration::from_secs(10);

/// The options our backends are measured with: their defaults (auto-renew on), a 10 s TTL
/// and a 30 s wait.
pub fn our_options() -> LockOptions {
    LockOptions::new().with_ttl(TTL).with_wait(Duration::from_secs(30))
}

/// One of our backends, through the `DistributedLock` trait as users call it.
pub struct Ours {
    lock: Arc<dyn DistributedLock>,
    opts: LockOptions,
}

impl Ours {
    /// Connects to `url` with [`fencelock::connect`].
    pub async fn connect(url: &str) -> Result<Self> {
        Self::connect_with(url, our_options()).await
    }

    /// Connects to `url`, locking with `opts`.
    pub async fn connect_with(url: &str, opts: LockOptions) -> Result<Self> {
        let lock = fencelock::connect(url)
            .await
            .map_err(|e| BenchError::lock("connect", e))?;
        Ok(Ours { lock, opts })
    }

    /// The lock service.
    pub fn lock(&self) -> &Arc<dyn DistributedLock> {
        &self.lock
    }
}

impl Subject for Ours {
    fn acquire<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Held>> {
        Box::pin(async move {
            let lease = self
                .lock
                .acquire(key, &self.opts)
                .await
                .map_err(|e| BenchError::lock("acquire", e))?;
            let release: Held =
                Box::pin(async move { lease.release().await.map_err(|e| BenchError::lock("release", e)) });
            Ok(release)
        })
    }
}
