//! [`LockExt`]: conveniences over any [`DistributedLock`], written once.

use std::future::Future;

use async_trait::async_trait;

use crate::error::{LockError, Result};
use crate::lock::DistributedLock;
use crate::options::LockOptions;

/// Conveniences for every [`DistributedLock`] (blanket implementation).
#[async_trait]
pub trait LockExt: DistributedLock {
    /// Acquires `key`, runs `work` with the lease, and releases it.
    ///
    /// `work` is stopped (its future dropped) if the lease is lost while it runs, and the
    /// result is then [`LockError::LeaseLost`]. A release that finds the lease lost also
    /// yields that error, so `Ok` means the work ran under the lock from start to end.
    ///
    /// # Cancel safety
    /// Cancel safe: the lock is never left held. Dropped while it acquires, the acquire's
    /// own cancel safety applies (nothing is held; a grant that raced with the drop is
    /// given back in the background). Dropped while `work` runs or while the release is in
    /// flight, `work`'s future is dropped with it, and so is the lease, which is released
    /// in the background (counted among the client's clean-ups, which
    /// [`close`](crate::DistributedLock::close) waits for).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> fencelock::Result<()> {
    /// use fencelock::{memory::MemoryLock, LockExt, LockOptions};
    /// let locks = MemoryLock::new();
    /// let token = locks.with_lock("job", &LockOptions::new(), |lease| async move { lease.token() }).await?;
    /// assert!(token.get() >= 1);
    /// # Ok(()) }
    /// ```
    async fn with_lock<F, Fut, T>(&self, key: &str, opts: &LockOptions, work: F) -> Result<T>
    where
        F: FnOnce(LeaseRef) -> Fut + Send,
        Fut: Future<Output = T> + Send,
        T: Send,
    {
        let lease = self.acquire(key, opts).await?;
        let view = LeaseRef {
            token: lease.token(),
            fence: lease.fence(),
        };
        let lost = lease.lost();
        let outcome = tokio::select! {
            value = work(view) => Ok(value),
            reason = lost => Err(LockError::LeaseLost { key: key.to_owned(), token: lease.token(), reason }),
        };
        let released = lease.release().await;
        let value = outcome?;
        released.map(|()| value)
    }
}

impl<T: DistributedLock + ?Sized> LockExt for T {}

/// What [`LockExt::with_lock`] hands to the work: the token and fence of the lease.
#[derive(Debug, Clone)]
pub struct LeaseRef {
    token: crate::FencingToken,
    fence: crate::Fence,
}

impl LeaseRef {
    /// The fencing token.
    pub fn token(&self) -> crate::FencingToken {
        self.token
    }

    /// Token and grant id, for the protected resource.
    pub fn fence(&self) -> &crate::Fence {
        &self.fence
    }
}
