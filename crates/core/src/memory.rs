//! The in-memory backend (`memory://[NAME]`): the reference implementation of the contract.
//!
//! Locks live in a table inside this process. Instances made with the same name (or from
//! the same URL) share one table, like clients of one server; [`MemoryLock::new`] makes a
//! private one. Choose it for tests, for tasks of one process, and as the executable
//! specification the other backends are checked against.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::cleanup::{CleanupGuard, Cleanups};
use crate::closing::CloseGate;
use crate::error::Result;
use crate::guarantees::{Exclusion, Guarantees, Scope, TokenOrder};
use crate::lease::{Lease, LeaseOps, LeaseParts};
use crate::lock::DistributedLock;
use crate::options::{validate_key, LockOptions};
use crate::token::{FencingToken, GrantId};
use crate::waiting::{acquire_with, Attempt};

/// What the memory backend promises.
pub const GUARANTEES: Guarantees = Guarantees {
    backend: "memory",
    exclusion: Exclusion::Strict,
    tokens: TokenOrder::StrictlyMonotonic,
    scope: Scope::Process,
    assumptions: &["all clients live in this process; tokens restart when the process does"],
};

#[derive(Debug)]
struct Holder {
    grant: GrantId,
    expires: Instant,
}

#[derive(Debug, Default)]
struct KeyState {
    /// The last token handed out. Kept after release so tokens keep growing; costs about a
    /// hundred bytes per distinct key for the life of the table.
    last_token: u64,
    holder: Option<Holder>,
    released: Arc<Notify>,
}

impl KeyState {
    fn live_holder(&self, now: Instant) -> Option<&Holder> {
        self.holder.as_ref().filter(|h| h.expires > now)
    }
}

/// A table of per-key states: what one in-process "server" holds, shared by its clients
/// (the lock's keys here, the election's seats in [`crate::election::memory`]).
#[derive(Debug)]
pub(crate) struct Table<S> {
    keys: Mutex<HashMap<String, S>>,
}

impl<S> Default for Table<S> {
    fn default() -> Self {
        Table { keys: Mutex::default() }
    }
}

impl<S> Table<S> {
    pub(crate) fn lock(&self) -> MutexGuard<'_, HashMap<String, S>> {
        match self.keys.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        }
    }
}

/// The process-wide tables of one kind, by name: each is created on first use and kept
/// for the life of the process, so its tokens keep growing.
pub(crate) struct NamedTables<S>(OnceLock<Mutex<HashMap<String, Arc<Table<S>>>>>);

impl<S> NamedTables<S> {
    pub(crate) const fn new() -> Self {
        NamedTables(OnceLock::new())
    }

    /// The table called `name`.
    pub(crate) fn get(&self, name: &str) -> Arc<Table<S>> {
        let tables = self.0.get_or_init(Mutex::default);
        let mut tables = match tables.lock() {
            Ok(t) => t,
            Err(poisoned) => poisoned.into_inner(),
        };
        Arc::clone(tables.entry(name.to_owned()).or_default())
    }
}

/// The NAME of a `memory://[NAME]` URL.
///
/// # Errors
/// [`LockError::InvalidConfig`](crate::LockError::InvalidConfig) for another URL.
pub(crate) fn url_name(url: &str) -> Result<&str> {
    // The scheme in any case (RFC 3986: schemes are case-insensitive), as every backend;
    // the name after it keeps its case.
    const SCHEME: &str = "memory://";
    let name = url
        .get(..SCHEME.len())
        .filter(|scheme| scheme.eq_ignore_ascii_case(SCHEME))
        .and_then(|_| url.get(SCHEME.len()..))
        .ok_or_else(|| crate::LockError::invalid_config(format!("`{url}` is not a memory:// URL")))?;
    if name.contains(['/', '?', '#']) {
        return Err(crate::LockError::invalid_config(format!(
            "`{url}`: a memory URL is memory://NAME with a plain name (no '/', '?' or '#')"
        )));
    }
    Ok(name)
}

/// The in-memory lock service.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> fencelock::Result<()> {
/// use fencelock::{memory::MemoryLock, DistributedLock, LockOptions};
/// let a = MemoryLock::named("shared");
/// let b = MemoryLock::named("shared");
/// let lease = a.acquire("k", &LockOptions::new()).await?;
/// assert!(b.try_acquire("k", &LockOptions::new()).await?.is_none());
/// lease.release().await?;
/// assert!(b.try_acquire("k", &LockOptions::new()).await?.is_some());
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct MemoryLock {
    name: String,
    table: Arc<Table<KeyState>>,
    /// Shut by [`close`](DistributedLock::close); shared by clones.
    gate: Arc<CloseGate>,
    /// Background releases of this instance's dropped leases, which `close` waits for.
    cleanups: Cleanups,
}

impl Default for MemoryLock {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryLock {
    /// A lock service with its own private table.
    pub fn new() -> Self {
        MemoryLock {
            name: String::new(),
            table: Arc::default(),
            gate: Arc::default(),
            cleanups: Cleanups::new(),
        }
    }

    /// A lock service on the process-wide table called `name` (created on first use and
    /// kept for the life of the process, so its tokens keep growing). `memory://NAME` gives
    /// the same table; `memory://` is the table named `""`.
    pub fn named(name: &str) -> Self {
        static TABLES: NamedTables<KeyState> = NamedTables::new();
        MemoryLock {
            name: name.to_owned(),
            table: TABLES.get(name),
            gate: Arc::default(),
            cleanups: Cleanups::new(),
        }
    }

    /// Builds from `memory://[NAME]`.
    pub fn from_url(url: &str) -> Result<Self> {
        Ok(Self::named(url_name(url)?))
    }

    /// Removes the current grant of `key`, as an operator deleting a lock by hand would; the
    /// token counter stays. Returns whether there was a live grant. Its holder learns of it
    /// at its next extend or renewal (`LeaseLost`); waiters are woken.
    pub fn remove_grant(&self, key: &str) -> bool {
        let mut keys = self.table.lock();
        let Some(state) = keys.get_mut(key) else {
            return false;
        };
        let live = state.live_holder(Instant::now()).is_some();
        state.holder = None;
        state.released.notify_waiters();
        live
    }

    /// How many holders and waiters of `key` the table knows now: `1` while someone holds
    /// it, plus one per `acquire` waiting for it (what a server-side count of grants and
    /// queue entries shows for the other backends); `0` when nobody holds or waits for it.
    pub fn records(&self, key: &str) -> usize {
        let keys = self.table.lock();
        keys.get(key).map_or(0, |s| {
            let held = usize::from(s.live_holder(Instant::now()).is_some());
            // Every waiting acquire keeps a clone of the key's `released` signal.
            held + Arc::strong_count(&s.released) - 1
        })
    }

    /// One attempt: grant now, or say who to wait for. Never awaits, so it is cancel safe.
    fn attempt(&self, key: &str, opts: &LockOptions) -> Attempt {
        let sent_at = Instant::now();
        let mut keys = self.table.lock();
        let state = keys.entry(key.to_owned()).or_default();
        if let Some(h) = state.live_holder(sent_at) {
            let mut wake = Box::pin(Arc::clone(&state.released).notified_owned());
            wake.as_mut().enable();
            return Attempt::Busy {
                wake: Some(wake),
                retry_at: Some(h.expires),
            };
        }
        state.last_token += 1;
        let grant = GrantId::random();
        state.holder = Some(Holder {
            grant: grant.clone(),
            expires: sent_at + opts.ttl(),
        });
        let token = FencingToken::new(state.last_token);
        drop(keys);
        tracing::debug!(key, %token, "granted");
        let ops = Arc::new(MemoryGrant {
            table: Arc::clone(&self.table),
            key: key.to_owned(),
            grant: grant.clone(),
            cleanups: self.cleanups.clone(),
        });
        Attempt::Acquired(Lease::new(LeaseParts {
            key: key.to_owned(),
            token,
            grant,
            sent_at,
            validity: opts.ttl(),
            options: *opts,
            ops,
        }))
    }
}

#[async_trait]
impl DistributedLock for MemoryLock {
    #[tracing::instrument(level = "debug", skip(self, opts), fields(backend = "memory"))]
    async fn try_acquire(&self, key: &str, opts: &LockOptions) -> Result<Option<Lease>> {
        self.gate.check()?;
        validate_key(key)?;
        opts.validate_for_try()?;
        match self.attempt(key, opts) {
            Attempt::Acquired(lease) => Ok(Some(lease.into_live_for_try()?)),
            Attempt::Busy { .. } => Ok(None),
        }
    }

    #[tracing::instrument(level = "debug", skip(self, opts), fields(backend = "memory"))]
    async fn acquire(&self, key: &str, opts: &LockOptions) -> Result<Lease> {
        let wait = acquire_with(key, opts, || std::future::ready(Ok(self.attempt(key, opts))));
        self.gate.pass(wait).await
    }

    fn guarantees(&self) -> Guarantees {
        GUARANTEES
    }

    fn describe(&self) -> String {
        format!("memory://{}", self.name)
    }

    /// Shuts this instance (and its clones): waiting acquires end with
    /// [`LockError::Closed`](crate::LockError::Closed), later calls fail with it; then
    /// waits (at most 1 s) for the background releases of its dropped leases, which take
    /// the table's mutex once each. The table and the leases still held from it stay as
    /// they are: other instances on the same table go on.
    ///
    /// # Errors
    /// [`LockError::Unavailable`](crate::LockError::Unavailable) when background releases
    /// were still running after 1 s (a runtime too busy to run them).
    ///
    /// # Cancel safety
    /// Cancel safe: the gate is shut before the first await; the rest only waits.
    async fn close(&self) -> Result<()> {
        close_in_process(&self.gate, &self.cleanups, || {
            format!("memory://{}: background releases", self.name)
        })
        .await
    }
}

/// The `close()` of an in-process service (the memory lock, the memory election): shuts
/// `gate`, then waits for `cleanups`, each at most [`CLOSE_WAIT`]; `Unavailable` naming
/// `what` ("… background releases") when some still ran then.
pub(crate) async fn close_in_process(
    gate: &CloseGate,
    cleanups: &crate::cleanup::Cleanups,
    what: impl FnOnce() -> String,
) -> Result<()> {
    let _closing = gate.close(CLOSE_WAIT).await;
    if cleanups.idle(CLOSE_WAIT).await {
        return Ok(());
    }
    Err(crate::error::LockError::Unavailable {
        message: format!("{} still running after {CLOSE_WAIT:?}", what()),
        source: None,
    })
}

/// How long [`MemoryLock::close`] (and `MemoryElection`'s) waits for the calls it ended
/// (they end at once), and then for background releases.
pub(crate) const CLOSE_WAIT: Duration = Duration::from_secs(1);

/// One grant in the table.
struct MemoryGrant {
    table: Arc<Table<KeyState>>,
    key: String,
    grant: GrantId,
    /// The granting instance's clean-ups.
    cleanups: Cleanups,
}

#[async_trait]
impl LeaseOps for MemoryGrant {
    async fn extend(&self, ttl: Duration) -> Result<Option<Duration>> {
        let now = Instant::now();
        let mut keys = self.table.lock();
        let Some(state) = keys.get_mut(&self.key) else {
            return Ok(None);
        };
        match state.holder.as_mut() {
            Some(h) if h.grant == self.grant && h.expires > now => {
                h.expires = now + ttl;
                Ok(Some(ttl))
            }
            _ => Ok(None),
        }
    }

    async fn release(&self) -> Result<bool> {
        let mut keys = self.table.lock();
        let Some(state) = keys.get_mut(&self.key) else {
            return Ok(false);
        };
        let ours = state.holder.as_ref().is_some_and(|h| h.grant == self.grant);
        if ours {
            let live = state.holder.as_ref().is_some_and(|h| h.expires > Instant::now());
            state.holder = None;
            state.released.notify_waiters();
            return Ok(live);
        }
        Ok(false)
    }

    fn cleanup(&self) -> Option<CleanupGuard> {
        Some(self.cleanups.start())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Schemes are read in any case (RFC 3986), as for every other backend.
    #[tokio::test]
    async fn the_scheme_is_case_insensitive() {
        for url in ["MEMORY://", "Memory://x", "memory://x", "mEmOrY://case-test"] {
            assert!(MemoryLock::from_url(url).is_ok(), "{url} was refused");
        }
        let (upper, lower) = (
            MemoryLock::from_url("MEMORY://case-shared").unwrap(),
            MemoryLock::from_url("memory://case-shared").unwrap(),
        );
        let lease = upper.acquire("k", &LockOptions::new()).await.unwrap();
        assert!(
            lower.try_acquire("k", &LockOptions::new()).await.unwrap().is_none(),
            "MEMORY://NAME and memory://NAME are not the same table"
        );
        lease.release().await.unwrap();
        // The name keeps its case: it is not part of the scheme.
        assert_eq!(url_name("MEMORY://Name").unwrap(), "Name");
        for bad in ["memory:/x", "memor://x", "file:///x", "memory://a/b", ""] {
            assert!(url_name(bad).is_err(), "{bad} was accepted");
        }
    }
}
