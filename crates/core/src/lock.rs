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
/// * **`close()` ends the client**: waiting calls end with
///   [`LockError::Closed`](crate::LockError::Closed) and leave nothing behind, later calls
///   fail with it at once (see [`close`](DistributedLock::close)).
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
    /// still owns.
    ///
    /// A clean-up counts from the moment it is decided, not from when its background task
    /// first runs: a [`Lease`] dropped unreleased just before `close()` — or an `acquire`
    /// dropped in flight, whose grant may land on the server — is released (given back)
    /// before `close()` returns, within the same bound, so nothing is left held by
    /// accident. Backends count a dropped lease's release through
    /// [`LeaseOps::cleanup`](crate::LeaseOps::cleanup).
    ///
    /// Once `close()` has been called on a client (any clone of it — they are one client):
    ///
    /// * every `acquire` still waiting through it ends promptly (within the backend's
    ///   request timeout at most) with [`LockError::Closed`](crate::LockError::Closed), and
    ///   leaves nothing held or queued on the server — it is dropped as a cancelled
    ///   `acquire` is, so its queue entry is removed, and a grant that raced the close is
    ///   given back; `close()` waits for those clean-ups with its own;
    /// * every later `try_acquire` or `acquire` on it fails at once with
    ///   [`LockError::Closed`](crate::LockError::Closed), without contacting the server
    ///   (make a new client to go on);
    /// * calling `close()` again is fine: it finds nothing left to end and returns `Ok(())`.
    ///
    /// Leases already granted through the client are not ended by the close itself beyond
    /// what its session's end does: where the backend ends a session (etcd, ZooKeeper) or
    /// releases what the client still holds (PostgreSQL) they are lost (their `lost()`
    /// resolves); elsewhere they stay held until released, dropped or expired. Backends implement the calls' part with
    /// [`CloseGate`](crate::closing::CloseGate). Elections whose `close` is their lock's
    /// (the seat-based ones, etcd's) end their campaigns the same way.
    ///
    /// Call it at the end of a short-lived process (the CLI does, also after SIGINT/SIGTERM
    /// while waiting), so that nothing it took stays behind for a TTL or session timeout.
    /// The default does nothing, and a backend that keeps it must not make calls that
    /// outlive it; every backend here overrides it.
    ///
    /// # Errors
    /// [`LockError::Unavailable`](crate::LockError::Unavailable) when the backend did not
    /// confirm in time; what was left then ends with the session timeout or TTL.
    ///
    /// # Cancel safety
    /// Cancel safe: the client is closed to calls before the first await; dropping the
    /// future leaves the clean-ups running in the background.
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
