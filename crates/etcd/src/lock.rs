//! [`EtcdLock`]: the lock recipe (etcd's concurrency mutex, with fencing tokens).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use async_trait::async_trait;
use etcd_client::{
    Compare, CompareOp, EventType, GetOptions, PutOptions, SortOrder, SortTarget, Txn, TxnOp, TxnOpResponse,
    WatchFilterType, WatchOptions,
};
use fencelock_core::options::validate_key;
use fencelock_core::waiting::{detached, jitter, queue_with};
use fencelock_core::{
    DistributedLock, Exclusion, FencingToken, GrantId, Guarantees, Lease, LeaseOps, LeaseParts, LockError, LockOptions,
    Result, Scope, TokenOrder,
};
use tokio::time::Instant;

use crate::client::Cluster;
use crate::config::EtcdConfig;
use crate::error::BACKEND;
use crate::session::Session;
use crate::slots::{Slot, SlotPool};

/// What the etcd backend promises.
pub const GUARANTEES: Guarantees = Guarantees {
    backend: "etcd",
    exclusion: Exclusion::Strict,
    tokens: TokenOrder::StrictlyMonotonic,
    scope: Scope::Network,
    assumptions: &[
        "the cluster keeps a quorum; grants and deletions are Raft-committed (linearizable)",
        "tokens are the lock key's create revision: strictly increasing across the whole cluster",
        "a holder that pauses past its lease's TTL can still act after another holder got the lock: send the token to the resource",
    ],
};

/// The etcd lock service.
///
/// ```no_run
/// # async fn demo() -> fencelock_core::Result<()> {
/// use fencelock_core::{DistributedLock, LockOptions};
/// let locks = fencelock_etcd::EtcdLock::connect("etcd://127.0.0.1:2379,127.0.0.1:22379/myapp").await?;
/// let lease = locks.acquire("migration", &LockOptions::new()).await?;
/// println!("token (create revision) {}", lease.token());
/// lease.release().await?;
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct EtcdLock {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    cluster: Cluster,
    session: tokio::sync::Mutex<Option<Arc<Session>>>,
    keepalives: Arc<AtomicU64>,
    leases_granted: AtomicU64,
    /// Names this instance's queue keys (`INSTANCE.SLOT`), see [`crate::slots`].
    instance: u64,
    slots: Arc<SlotPool>,
}

/// How a lock's key stays alive.
#[derive(Debug, Clone)]
enum Holding {
    /// On the instance's shared session lease (auto-renewed locks).
    Session(Arc<Session>),
    /// On a lease of its own, with the TTL the lock asked for (locks without auto-renew).
    Own { lease: i64, granted: Duration },
}

impl Holding {
    fn lease(&self) -> i64 {
        match self {
            Holding::Session(s) => s.id,
            Holding::Own { lease, .. } => *lease,
        }
    }
}

/// Our key in the queue. Dropping it (an abandoned or failed acquire) deletes the key in
/// the background — and revokes an own lease — unless it became a lease.
struct Queued {
    inner: Arc<Inner>,
    key: String,
    /// The slot of `key`'s name; freed once the key is known to be gone.
    slot: Option<Slot>,
    dir: String,
    rev: i64,
    holding: Holding,
    sent_at: Instant,
    owner: bool,
    armed: bool,
}

impl Drop for Queued {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let (inner, key, holding, rev, slot) = (
            Arc::clone(&self.inner),
            self.key.clone(),
            self.holding.clone(),
            self.rev,
            self.slot.take(),
        );
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        rt.spawn(async move {
            let c = &inner.cluster;
            let gone = match holding {
                Holding::Own { lease, .. } => c
                    .call("revoking an abandoned lease", |mut cl| async move {
                        cl.lease_revoke(lease).await
                    })
                    .await
                    .is_ok(),
                // Our key at a known revision: a guarded delete, after which the name is free.
                Holding::Session(_) if rev > 0 => delete_key(c, &key, rev).await.is_ok(),
                // The queueing request failed without an answer: it may still land. Delete
                // by name, and keep the slot taken so the name is never reused.
                Holding::Session(_) => {
                    let _ = c
                        .call("deleting an abandoned queue key", |mut cl| {
                            let key = key.clone();
                            async move { cl.delete(key, None).await }
                        })
                        .await;
                    false
                }
            };
            if let (true, Some(slot)) = (gone, slot) {
                slot.free();
            }
        });
    }
}

/// `%` and `/` escaped, so a key never reaches into another key's directory.
fn escape(key: &str) -> String {
    key.replace('%', "%25").replace('/', "%2F")
}

impl EtcdLock {
    /// Connects to the cluster an `etcd://` URL names (see [`EtcdConfig::from_url`]).
    pub async fn connect(url: &str) -> Result<Self> {
        Self::connect_with(EtcdConfig::from_url(url)?).await
    }

    /// Connects with explicit options.
    pub async fn connect_with(cfg: EtcdConfig) -> Result<Self> {
        let cluster = Cluster::connect(cfg).await?;
        Ok(EtcdLock {
            inner: Arc::new(Inner {
                cluster,
                session: tokio::sync::Mutex::new(None),
                keepalives: Arc::default(),
                leases_granted: AtomicU64::new(0),
                instance: rand::random(),
                slots: Arc::default(),
            }),
        })
    }

    /// Keep-alive requests sent for session leases so far (for tests and benchmarks:
    /// the count grows with time, not with the number of held locks).
    pub fn keepalive_requests(&self) -> u64 {
        self.inner.keepalives.load(Ordering::Relaxed)
    }

    /// Leases granted so far (sessions and own leases).
    pub fn leases_granted(&self) -> u64 {
        self.inner.leases_granted.load(Ordering::Relaxed)
    }

    /// The session lease id, if a session is alive (e.g. to revoke it from outside in a
    /// test).
    pub async fn session_lease(&self) -> Option<i64> {
        self.inner
            .session
            .lock()
            .await
            .as_ref()
            .filter(|s| s.is_alive())
            .map(|s| s.id)
    }

    async fn session(&self) -> Result<Arc<Session>> {
        let mut slot = self.inner.session.lock().await;
        if let Some(s) = slot.as_ref().filter(|s| s.is_alive()) {
            return Ok(Arc::clone(s));
        }
        let s = Session::start(
            &self.inner.cluster,
            self.inner.cluster.cfg.session_ttl,
            Arc::clone(&self.inner.keepalives),
        )
        .await?;
        self.inner.leases_granted.fetch_add(1, Ordering::Relaxed);
        *slot = Some(Arc::clone(&s));
        Ok(s)
    }

    async fn holding(&self, opts: &LockOptions) -> Result<Holding> {
        if opts.auto_renew() {
            return Ok(Holding::Session(self.session().await?));
        }
        let c = &self.inner.cluster;
        let secs = opts.ttl().as_secs_f64().ceil().max(1.0) as i64;
        let r = c
            .call(
                "granting a lease",
                |mut cl| async move { cl.lease_grant(secs, None).await },
            )
            .await?;
        self.inner.leases_granted.fetch_add(1, Ordering::Relaxed);
        Ok(Holding::Own {
            lease: r.id(),
            granted: Duration::from_secs(r.ttl().max(1) as u64),
        })
    }

    /// Puts our key with the lease and reads the current owner, in one transaction. Runs
    /// in its own task: if the caller is gone when it completes, the `Queued` is dropped
    /// there, which deletes the key.
    async fn enqueue(&self, key: &str, opts: &LockOptions) -> Result<Queued> {
        let me = self.clone();
        let (key, opts) = (key.to_owned(), *opts);
        detached(BACKEND, async move {
            let holding = me.holding(&opts).await?;
            let dir = format!("{}/{}/", me.inner.cluster.cfg.prefix, escape(&key));
            let slot = me.inner.slots.take(&dir);
            let my_key = format!("{dir}{:016x}.{:08x}", me.inner.instance, slot.n);
            let mut queued = Queued {
                inner: Arc::clone(&me.inner),
                key: my_key.clone(),
                slot: Some(slot),
                dir: dir.clone(),
                rev: 0,
                holding: holding.clone(),
                sent_at: Instant::now(),
                owner: false,
                armed: true,
            };
            let owner_get = GetOptions::new()
                .with_prefix()
                .with_sort(SortTarget::Create, SortOrder::Ascend)
                .with_limit(1);
            let txn = Txn::new()
                .when([Compare::create_revision(my_key.clone(), CompareOp::Equal, 0)])
                .and_then([
                    TxnOp::put(my_key.clone(), "", Some(PutOptions::new().with_lease(holding.lease()))),
                    TxnOp::get(dir.clone(), Some(owner_get.clone())),
                ])
                .or_else([
                    TxnOp::get(my_key.clone(), None),
                    TxnOp::get(dir.clone(), Some(owner_get)),
                ]);
            let c = &me.inner.cluster;
            let resp = c
                .call("queueing for the lock", |mut cl| {
                    let txn = txn.clone();
                    async move { cl.txn(txn).await }
                })
                .await?;
            let mut owner_rev = 0;
            for op in resp.op_responses() {
                match op {
                    TxnOpResponse::Get(g)
                        if g.kvs().first().is_some_and(|kv| kv.key() == my_key.as_bytes()) && !resp.succeeded() =>
                    {
                        queued.rev = g.kvs()[0].create_revision();
                    }
                    TxnOpResponse::Get(g) => owner_rev = g.kvs().first().map_or(0, |kv| kv.create_revision()),
                    _ => {}
                }
            }
            if resp.succeeded() {
                queued.rev = resp.header().map_or(0, |h| h.revision());
            }
            if queued.rev == 0 {
                return Err(LockError::Backend {
                    backend: BACKEND,
                    message: "queue key vanished at once".into(),
                    source: None,
                    temporary: true,
                });
            }
            queued.owner = owner_rev == queued.rev;
            Ok(queued)
        })
        .await
    }

    /// Waits until no key older than ours is left: watches only the key just before ours
    /// (no herd), and re-checks after each deletion. Keeps an own lease alive meanwhile.
    /// Finally re-reads our own key: the lease may have expired while we were queued (the
    /// etcd 3.4.3 Jepsen finding, etcd issue 11456).
    async fn wait_turn(&self, q: &Queued) -> Result<bool> {
        let c = &self.inner.cluster;
        for _ in 0..100_000 {
            let opts = GetOptions::new()
                .with_prefix()
                .with_max_create_revision(q.rev - 1)
                .with_sort(SortTarget::Create, SortOrder::Descend)
                .with_limit(1)
                .with_keys_only();
            let dir = q.dir.clone();
            let resp = c
                .call("looking for the predecessor", |mut cl| {
                    let (dir, opts) = (dir.clone(), opts.clone());
                    async move { cl.get(dir, Some(opts)).await }
                })
                .await?;
            let Some(pred) = resp.kvs().first() else { break };
            let (pred_key, pred_rev) = (pred.key().to_vec(), pred.create_revision());
            let seen = resp.header().map_or(0, |h| h.revision());
            // Watch from now, not from `seen + 1`: a watch that starts in the past is put in
            // etcd's "unsynced" group and caught up only every 100 ms — under contention the
            // revision always moves on, so that was the p99 of every hand-off (85 ms). A
            // deletion between `seen` and the watch's creation is caught by the check below.
            let wopts = WatchOptions::new().with_filters([WatchFilterType::NoPut]);
            let mut stream = c
                .call("watching the predecessor", |mut cl| {
                    let (pred_key, wopts) = (pred_key.clone(), wopts.clone());
                    async move { cl.watch(pred_key, Some(wopts)).await }
                })
                .await?;
            let created = match tokio::time::timeout(c.cfg.timeout, stream.message()).await {
                Ok(Ok(Some(r))) if r.created() => r.header().map_or(i64::MAX, |h| h.revision()),
                _ => continue, // no watch: look again
            };
            if created > seen {
                let still = c
                    .call("checking the predecessor", |mut cl| {
                        let pred_key = pred_key.clone();
                        async move { cl.get(pred_key, Some(GetOptions::new().with_keys_only())).await }
                    })
                    .await?;
                if still.kvs().first().is_none_or(|kv| kv.create_revision() != pred_rev) {
                    continue; // it went before the watch began
                }
            }
            loop {
                let refresh = match &q.holding {
                    Holding::Own { granted, .. } => *granted / 3,
                    Holding::Session(_) => Duration::from_secs(3600),
                };
                match tokio::time::timeout(refresh, stream.message()).await {
                    Ok(Ok(Some(r))) if r.events().iter().any(|e| e.event_type() == EventType::Delete) => break,
                    Ok(Ok(Some(r))) if r.canceled() => break,
                    Ok(Ok(Some(_))) => continue,
                    Ok(Ok(None)) | Ok(Err(_)) => break, // re-check from the top
                    Err(_) => {
                        if let Holding::Own { lease, .. } = &q.holding {
                            if !keep_alive_once(c, *lease).await? {
                                return Ok(false);
                            }
                        }
                    }
                }
            }
        }
        let key = q.key.clone();
        let mine = c
            .call("re-reading our key", |mut cl| {
                let key = key.clone();
                async move { cl.get(key, None).await }
            })
            .await?;
        Ok(mine
            .kvs()
            .first()
            .is_some_and(|kv| kv.create_revision() == q.rev && kv.lease() == q.holding.lease()))
    }

    /// Turns our queue position into a lease.
    fn grant(&self, key: &str, opts: &LockOptions, mut q: Queued) -> Option<Lease> {
        let (sent_at, validity) = match &q.holding {
            Holding::Session(s) => {
                let now = Instant::now();
                (now, s.valid_until()?.saturating_duration_since(now))
            }
            Holding::Own { granted, .. } => (q.sent_at, opts.ttl().min(*granted)),
        };
        q.armed = false;
        let token = FencingToken::new(u64::try_from(q.rev).unwrap_or(0));
        let grant = GrantId::from_string(format!("{:x}@{}", q.holding.lease(), q.rev));
        let ops = Arc::new(EtcdGrant {
            cluster: self.inner.cluster.clone(),
            key: q.key.clone(),
            rev: q.rev,
            holding: std::sync::Mutex::new(q.holding.clone()),
            registration: OnceLock::new(),
            slot: std::sync::Mutex::new(q.slot.take()),
        });
        let lease = Lease::new(LeaseParts {
            key: key.to_owned(),
            token,
            grant,
            sent_at,
            validity,
            options: *opts,
            ops: ops.clone(),
        });
        if let Holding::Session(s) = &q.holding {
            let _ = ops.registration.set(s.register(lease.reporter()));
        }
        tracing::debug!(key, %token, "granted");
        Some(lease)
    }
}

/// One keep-alive of a lease: `true` when it lives (renewed to its granted TTL), `false`
/// when it is gone. Opening the keep-alive stream sends the request and checks the answer.
async fn keep_alive_once(c: &Cluster, lease: i64) -> Result<bool> {
    let opened = c
        .call("keeping a lease alive", |mut cl| async move {
            cl.lease_keep_alive(lease).await.map(|_| ())
        })
        .await;
    match opened {
        Ok(()) => Ok(true),
        Err(e) if crate::error::lease_not_found(&e) => Ok(false),
        Err(e) => Err(e),
    }
}

#[async_trait]
impl DistributedLock for EtcdLock {
    #[tracing::instrument(level = "debug", skip(self, opts), fields(backend = "etcd"))]
    async fn try_acquire(&self, key: &str, opts: &LockOptions) -> Result<Option<Lease>> {
        validate_key(key)?;
        opts.validate_for_try()?;
        let q = self.enqueue(key, opts).await?;
        if !q.owner {
            return Ok(None); // dropping `q` takes our key out of the queue
        }
        self.grant(key, opts, q).map(Lease::into_live).transpose()
    }

    #[tracing::instrument(level = "debug", skip(self, opts), fields(backend = "etcd"))]
    async fn acquire(&self, key: &str, opts: &LockOptions) -> Result<Lease> {
        queue_with(key, opts, || async {
            let q = self.enqueue(key, opts).await?;
            if q.owner || self.wait_turn(&q).await? {
                return Ok(self.grant(key, opts, q));
            }
            Ok(None) // our key vanished while queued: queue again
        })
        .await
    }

    fn guarantees(&self) -> Guarantees {
        GUARANTEES
    }

    fn describe(&self) -> String {
        self.inner.cluster.display().to_owned()
    }
}

/// One grant: our key at its create revision, on the session or its own lease.
struct EtcdGrant {
    cluster: Cluster,
    key: String,
    rev: i64,
    /// An own lease can be swapped for a longer one by `extend`.
    holding: std::sync::Mutex<Holding>,
    registration: OnceLock<u64>,
    /// The slot of `key`'s name; freed once the key is known to be gone.
    slot: std::sync::Mutex<Option<Slot>>,
}

impl EtcdGrant {
    fn holding(&self) -> Holding {
        self.holding.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Our key is known to be gone: its name may be used again.
    fn free_slot(&self) {
        if let Some(slot) = self.slot.lock().unwrap_or_else(|p| p.into_inner()).take() {
            slot.free();
        }
    }

    /// Moves our key onto a new lease of `ttl` (etcd cannot lengthen a lease): grant, then
    /// re-put our key with the new lease only if it is still ours on the old one (the
    /// create revision, and so the token, stays), then revoke the old lease.
    async fn move_to_longer_lease(&self, old: i64, ttl: Duration) -> Result<Option<Duration>> {
        let c = &self.cluster;
        let secs = ttl.as_secs_f64().ceil().max(1.0) as i64;
        let fresh = c
            .call("granting a longer lease", |mut cl| async move {
                cl.lease_grant(secs, None).await
            })
            .await?;
        let txn = Txn::new()
            .when([
                Compare::create_revision(self.key.clone(), CompareOp::Equal, self.rev),
                Compare::lease(self.key.clone(), CompareOp::Equal, old),
            ])
            .and_then([TxnOp::put(
                self.key.clone(),
                "",
                Some(PutOptions::new().with_lease(fresh.id())),
            )]);
        let moved = c
            .call("moving the lock to the longer lease", |mut cl| {
                let txn = txn.clone();
                async move { cl.txn(txn).await }
            })
            .await;
        let revoke = if matches!(moved, Ok(ref r) if r.succeeded()) {
            old
        } else {
            fresh.id()
        };
        let _ = c
            .call("revoking the replaced lease", |mut cl| async move {
                cl.lease_revoke(revoke).await
            })
            .await;
        if !moved?.succeeded() {
            return Ok(None);
        }
        let granted = Duration::from_secs(fresh.ttl().max(1) as u64);
        *self.holding.lock().unwrap_or_else(|p| p.into_inner()) = Holding::Own {
            lease: fresh.id(),
            granted,
        };
        Ok(Some(ttl.min(granted)))
    }
}

#[async_trait]
impl LeaseOps for EtcdGrant {
    async fn extend(&self, ttl: Duration) -> Result<Option<Duration>> {
        match self.holding() {
            // The session's keep-alive stream renews every lock on it: no request per lock.
            Holding::Session(s) => Ok(s.valid_until().map(|t| t.saturating_duration_since(Instant::now()))),
            Holding::Own { lease, granted } if ttl > granted => self.move_to_longer_lease(lease, ttl).await,
            Holding::Own { lease, granted } => {
                // A shorter ttl cannot shorten the lease on the server: the holder believes
                // `ttl` (safe), the key may outlive it by up to `granted`.
                Ok(keep_alive_once(&self.cluster, lease).await?.then_some(ttl.min(granted)))
            }
        }
    }

    async fn release(&self) -> Result<bool> {
        let c = &self.cluster;
        match &self.holding() {
            Holding::Own { lease, .. } => {
                // Revoking the lease deletes our key with it, in one request.
                let lease = *lease;
                let revoked = match c
                    .call("revoking the lock's lease", |mut cl| async move {
                        cl.lease_revoke(lease).await
                    })
                    .await
                {
                    Ok(_) => Ok(true),
                    Err(LockError::Backend { source: Some(s), .. })
                        if s.to_string().contains("not found") || format!("{s:?}").contains("not found") =>
                    {
                        Ok(false)
                    }
                    Err(e) => Err(e),
                };
                if revoked.is_ok() {
                    self.free_slot();
                }
                revoked
            }
            Holding::Session(session) => {
                if let Some(id) = self.registration.get() {
                    session.unregister(*id);
                }
                match delete_key(c, &self.key, self.rev).await {
                    Ok(deleted) => {
                        self.free_slot();
                        Ok(deleted)
                    }
                    Err(e) => {
                        // Not confirmed: keep trying in the background; if it still fails and no
                        // other lock rides on the session, revoke the session lease, which
                        // deletes the key with it.
                        let (c, key, rev, session) = (c.clone(), self.key.clone(), self.rev, Arc::clone(session));
                        let slot = self.slot.lock().unwrap_or_else(|p| p.into_inner()).take();
                        tokio::spawn(async move { retry_delete(c, key, rev, session, slot).await });
                        Err(e)
                    }
                }
            }
        }
    }
}

/// Deletes our lock key if it is still the one created at `rev`; `true` if it was. The
/// compare makes a late repeat harmless: it can never delete a newer key of the same name
/// (names are reused, see [`crate::slots`]).
async fn delete_key(c: &Cluster, key: &str, rev: i64) -> Result<bool> {
    let txn = Txn::new()
        .when([Compare::create_revision(key.to_owned(), CompareOp::Equal, rev)])
        .and_then([TxnOp::delete(key.to_owned(), None)]);
    let r = c
        .call("deleting the lock key", |mut cl| {
            let txn = txn.clone();
            async move { cl.txn(txn).await }
        })
        .await?;
    Ok(r.succeeded())
}

async fn retry_delete(c: Cluster, key: String, rev: i64, session: Arc<Session>, slot: Option<Slot>) {
    let mut pause = Duration::from_millis(50);
    let until = Instant::now() + session.ttl;
    while Instant::now() < until && session.is_alive() {
        tokio::time::sleep(jitter(pause)).await;
        pause = (pause * 2).min(Duration::from_secs(1));
        if delete_key(&c, &key, rev).await.is_ok() {
            if let Some(slot) = slot {
                slot.free();
            }
            return;
        }
    }
    if session.is_alive() && session.lock_count() == 0 {
        let id = session.id;
        let _ = c
            .call("revoking the session lease", |mut cl| async move {
                cl.lease_revoke(id).await
            })
            .await;
        session.stop();
    }
}
