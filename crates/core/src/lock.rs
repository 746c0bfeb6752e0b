//! The [`DistributedLock`] trait: the contract every backend fulfils.

use std::sync::Arc;

use async_trait::async_trait;

use crate::error::Result;
use crate::guarantees::Guarantees;
use crate::lease::Lease;
use crate::options::LockOptions;

/// A lock service: hands out [`Lease`]s on keys, each with a fencing token.
///
/// The trait is object safe; configuration-driven code holds an
/// `Arc<dyn DistributedLock>` and does not know which backend it talks to.
///
/// # What every implementation guarantees
///
/// These hold for every backend and are checked by the conformance suite in
/// `fencelock-testkit`:
///
/// * **`try_acquire` never waits** for the lock: it returns `Ok(None)` at once when the key
///   is held (it may still take a round trip to the backend).
/// * **`acquire` waits at most `opts.wait()`**, woken by the backend when the key is freed
///   (not by fixed-interval polling), and then fails with
///   [`LockError::Timeout`](crate::LockError::Timeout) — or, when its last attempt failed
///   (a waiter whose server died), with that attempt's error
///   ([`LockError::Unavailable`](crate::LockError::Unavailable)), so that "held by someone
///   else" and "the backend went away" stay apart. A wait cut off before any answer came
///   (shorter than the backend's round trip) is a timeout.
/// * **Cancel safety**: dropping an `acquire` or `try_acquire` future at any point leaves
///   nothing held (a grant that raced with the drop is released in the background).
/// * **Tokens grow**: every grant of a key carries a token greater than every earlier grant
///   of that key the backend knows of ([`Guarantees::tokens`] says how strong "knows of" is).
/// * **Own grant only**: [`Lease::release`] and [`Lease::extend`] act only on our grant;
///   after our TTL ran out and someone else acquired, release leaves their lock alone and
///   extend fails with [`LockError::LeaseLost`](crate::LockError::LeaseLost).
/// * **Validity from the send instant**, measured on the monotonic clock.
/// * **Bad input is an error**, never a panic: an empty or over-long key
///   ([`MAX_KEY_LEN`](crate::options::MAX_KEY_LEN)), a TTL outside
///   [`MIN_TTL`](crate::options::MIN_TTL)..=[`MAX_TTL`](crate::options::MAX_TTL), a zero
///   wait for `acquire`.
///
/// Conveniences (running a closure under a lock) live in [`LockExt`](crate::LockExt), so an
/// implementation writes only these methods.
#[async_trait]
pub trait DistributedLock: Send + Sync + std::fmt::Debug {
    /// Takes the lock on `key` if it is free now; `Ok(None)` if someone holds it.
    async fn try_acquire(&self, key: &str, opts: &LockOptions) -> Result<Option<Lease>>;

    /// Takes the lock on `key`, waiting up to `opts.wait()` for it to be freed.
    async fn acquire(&self, key: &str, opts: &LockOptions) -> Result<Lease>;

    /// What this backend promises.
    fn guarantees(&self) -> Guarantees;

    /// A description of this backend for logs and messages (a URL without credentials).
    fn describe(&self) -> String;

    /// Ends this client cleanly before the process exits: finishes (bounded by the
    /// backend's request timeout) the clean-ups it runs in the background — releases of
    /// dropped leases, deletions of queue entries whose outcome was unknown — and ends its
    /// session where it has one (etcd revokes its lease, as etcd's `Session.Close` does;
    /// ZooKeeper closes its session), which removes every grant and queue entry the session
    /// still owns. Leases still held through this client are lost afterwards (their
    /// `lost()` resolves).
    ///
    /// Call it at the end of a short-lived process (the CLI does, also after SIGINT/SIGTERM
    /// while waiting), so that nothing it took stays behind for a TTL or session timeout.
    /// The default does nothing: backends whose grants all go through TTL-bounded requests
    /// already confirmed or cleaned up (memory, file) have nothing to end.
    ///
    /// # Errors
    /// [`LockError::Unavailable`](crate::LockError::Unavailable) when the backend did not
    /// confirm in time; what was left then ends with the session timeout or TTL.
    ///
    /// # Cancel safety
    /// Cancel safe: dropping the future leaves the clean-ups running in the background.
    async fn close(&self) -> Result<()> {
        Ok(())
    }
}

#[async_trait]
impl<T: DistributedLock + ?Sized> DistributedLock for Arc<T> {
    async fn try_acquire(&self, key: &str, opts: &LockOptions) -> Result<Option<Lease>> {
        (**self).try_acquire(key, opts).await
    }

    async fn acquire(&self, key: &str, opts: &LockOptions) -> Result<Lease> {
        (**self).acquire(key, opts).await
    }

    fn guarantees(&self) -> Guarantees {
        (**self).guarantees()
    }

    fn describe(&self) -> String {
        (**self).describe()
    }

    async fn close(&self) -> Result<()> {
        (**self).close().await
    }
}

#[async_trait]
impl<T: DistributedLock + ?Sized> DistributedLock for Box<T> {
    async fn try_acquire(&self, key: &str, opts: &LockOptions) -> Result<Option<Lease>> {
        (**self).try_acquire(key, opts).await
    }

    async fn acquire(&self, key: &str, opts: &LockOptions) -> Result<Lease> {
        (**self).acquire(key, opts).await
    }

    fn guarantees(&self) -> Guarantees {
        (**self).guarantees()
    }

    fn describe(&self) -> String {
        (**self).describe()
    }

    async fn close(&self) -> Result<()> {
        (**self).close().await
    }
}
