//! [`EtcdLock`]: the lock recipe (etcd's concurrency mutex, with fencing tokens) put
//! together — queueing in [`crate::queue`], waiting in [`crate::wait`], grants in
//! [`crate::grant`], the shared lease in [`crate::session`], follow-ups in
//! [`crate::cleanup`].

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use fencelock_core::cleanup::Cleanups;
use fencelock_core::closing::CloseGate;
use fencelock_core::options::validate_key;
use fencelock_core::waiting::{queue_checked, LastCheck};
use fencelock_core::{
    DistributedLock, Exclusion, FencingToken, GrantId, Guarantees, Lease, LeaseParts, LeaseRegistry, LockError,
    LockOptions, LostReason, Result, Scope, TokenOrder,
};
use tokio::time::Instant;

use crate::cleanup::{revoke, until_confirmed};
use crate::client::Cluster;
use crate::config::EtcdConfig;
use crate::grant::{EtcdGrant, GrantHolding, Moving, OwnLeases};
use crate::queue::{enqueue, Holding, Queued, Then};
use crate::session::Session;
use crate::slots::SlotPool;
use crate::wait::wait_turn;

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
/// locks.close().await?; // ends the session: nothing stays behind for a session TTL
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct EtcdLock {
    pub(crate) inner: Arc<Inner>,
}

/// What every grant and background task of one instance shares.
#[derive(Debug)]
pub(crate) struct Inner {
    pub cluster: Cluster,
    session: tokio::sync::Mutex<Option<Arc<Session>>>,
    keepalives: Arc<AtomicU64>,
    pub leases_granted: AtomicU64,
    /// Names this instance's queue keys (`INSTANCE.SLOT`), see [`crate::slots`].
    pub instance: u64,
    pub slots: Arc<SlotPool>,
    pub cleanups: Cleanups,
    /// Own leases that may still exist (revoked by `close`).
    own_leases: Mutex<HashSet<i64>>,
    /// Live grants on own leases (told they are lost by `close`).
    pub own_grants: LeaseRegistry,
    /// Shut by `close`: no call goes on and no session is started after it.
    pub gate: CloseGate,
}

impl Inner {
    /// The live session, started (one lease grant) if there is none or it was lost — a lost
    /// session is replaced at once, so new locks never wait for an old one's TTL.
    ///
    /// # Errors
    /// [`LockError::Closed`] once `close` began — checked under the session's lock, which
    /// `close` takes after shutting the gate, so no session is started that it would miss
    /// (one nobody ends, whose keep-alive runs for ever); as [`Session::start`] otherwise.
    pub async fn session(&self) -> Result<Arc<Session>> {
        let mut slot = self.session.lock().await;
        self.gate.check()?;
        if let Some(s) = slot.as_ref().filter(|s| s.is_alive()) {
            return Ok(Arc::clone(s));
        }
        if let Some(old) = slot.take() {
            // Lost, or past its validity: its waiting leases may still be alive, kept so
            // by waits of that session (which can no longer be granted on it), and no
            // `close` would revoke them once it is replaced. Ended in the background
            // (counted: `close` waits for it), each revoke bounded by the request timeout.
            let cluster = self.cluster.clone();
            self.cleanups.spawn("ending a replaced session", async move {
                if let Err(e) = old.end_replaced(&cluster).await {
                    tracing::debug!(error = %e, "a replaced session's leases were not all revoked; they lapse by their TTL");
                }
            });
        }
        let s = Session::start(
            &self.cluster,
            self.cluster.cfg.session_ttl,
            Arc::clone(&self.keepalives),
        )
        .await?;
        self.leases_granted.fetch_add(1, Ordering::Relaxed);
        *slot = Some(Arc::clone(&s));
        Ok(s)
    }

    fn own_leases(&self) -> std::sync::MutexGuard<'_, HashSet<i64>> {
        self.own_leases.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// An own lease was granted.
    pub fn remember_own_lease(&self, lease: i64) {
        self.own_leases().insert(lease);
    }

    /// An own lease is known to be gone.
    pub fn forget_own_lease(&self, lease: i64) {
        self.own_leases().remove(&lease);
    }

    /// An own lease is no longer needed: revoked in the background (bounded).
    pub fn retire_own_lease(self: &Arc<Self>, lease: i64) {
        let inner = Arc::clone(self);
        self.cleanups.spawn("revoking a replaced lease", async move {
            let c = inner.cluster.clone();
            if until_confirmed("revoke", || revoke(&c, lease)).await {
                inner.forget_own_lease(lease);
            }
        });
    }
}

impl EtcdLock {
    /// Connects to the cluster an `etcd://` URL names (see [`EtcdConfig::from_url`]).
    ///
    /// # Errors
    /// [`LockError::InvalidConfig`] for a bad URL, refused credentials, the wrong service
    /// on a port, or endpoints that answer as members of different clusters (each
    /// endpoint is asked on a connection of its own; one down then is checked on every
    /// answer later, and an answer from another cluster fails that call with
    /// `InvalidConfig`); [`LockError::Unavailable`] when no leader answers within the
    /// connect and request timeouts.
    ///
    /// # Cancel safety
    /// Cancel safe: nothing is created on the server before it returns.
    pub async fn connect(url: &str) -> Result<Self> {
        Self::connect_with(EtcdConfig::from_url(url)?).await
    }

    /// Connects with explicit options, checked by [`EtcdConfig::validate`] as a URL's are.
    ///
    /// # Errors
    /// As [`connect`](Self::connect).
    ///
    /// # Cancel safety
    /// Cancel safe: nothing is created on the server before it returns.
    pub async fn connect_with(cfg: EtcdConfig) -> Result<Self> {
        cfg.validate()?;
        let cluster = Cluster::connect(cfg).await?;
        Ok(EtcdLock {
            inner: Arc::new(Inner {
                cluster,
                session: tokio::sync::Mutex::new(None),
                keepalives: Arc::default(),
                leases_granted: AtomicU64::new(0),
                instance: rand::random(),
                slots: Arc::default(),
                cleanups: Cleanups::new(),
                own_leases: Mutex::default(),
                own_grants: LeaseRegistry::new(),
                gate: CloseGate::new(),
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
    ///
    /// # Cancel safety
    /// Cancel safe: it only reads local state (it waits for a session being started).
    pub async fn session_lease(&self) -> Option<i64> {
        self.inner
            .session
            .lock()
            .await
            .as_ref()
            .filter(|s| s.is_alive())
            .map(|s| s.id)
    }

    /// Turns our queue position into a lease, valid from `since` for an own lease (the
    /// send instant of the request that confirmed it) or as long as the session lives — no
    /// longer than the waiting lease lives while the key may still ride on it (its move
    /// onto the session lease is left to the grant's first renewal, a third of the way
    /// through that validity: a holder that releases before then, as a contended one does,
    /// never sends it — see [`EtcdGrant::renew`]). `None` when nothing is left of that
    /// validity (the `Queued`, still armed, is then undone).
    pub(crate) fn grant(&self, key: &str, opts: &LockOptions, mut q: Queued, since: Option<Instant>) -> Option<Lease> {
        let on_waiting = q.waiting.is_some();
        let (sent_at, validity, holding) = match &q.holding {
            Holding::Session { session, claim } => {
                // A key that queued on the waiting lease is still on it: the grant is valid
                // no longer than that lease lives (kept alive by the `WaitUse` in `moving`
                // until the key moves), and its first renewal moves the key onto the
                // session lease — no request between the push and the grant, none at all
                // when it is released before that renewal.
                let now = Instant::now();
                let moving = match q.waiting.take() {
                    Some(w) => Moving::OnWaiting(w),
                    None => Moving::OnSession,
                };
                let validity = EtcdGrant::session_validity(session, &moving, now)?;
                (
                    now,
                    validity,
                    GrantHolding::Session {
                        session: Arc::clone(session),
                        claim: *claim,
                        moving: Mutex::new(moving),
                        one_move: tokio::sync::Mutex::new(()),
                    },
                )
            }
            Holding::Own { lease, granted, sent } => (
                since.unwrap_or(*sent),
                opts.ttl().min(*granted),
                GrantHolding::Own(Mutex::new(OwnLeases {
                    current: *lease,
                    granted: *granted,
                    others: Vec::new(),
                })),
            ),
        };
        q.armed = false;
        let token = FencingToken::new(u64::try_from(q.rev).unwrap_or(0));
        let grant = GrantId::from_string(format!("{:x}@{}", q.holding.lease(), q.rev));
        let ops = Arc::new_cyclic(|me| EtcdGrant {
            inner: Arc::clone(&self.inner),
            key: q.key.clone(),
            rev: q.rev,
            holding,
            slot: Mutex::new(q.slot.take()),
            echoes: q.echoes,
            registration: Mutex::new(None),
            extending: tokio::sync::Mutex::new(()),
            me: me.clone(),
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
        match &q.holding {
            Holding::Session { session, claim } => {
                // Not moved here (issue 14): sent at the grant, the move was a third Raft
                // write per grant held past a round trip, racing the release otherwise.
                session.granted(*claim, lease.reporter(), !on_waiting);
            }
            Holding::Own { .. } => {
                let id = self.inner.own_grants.register(lease.reporter());
                *ops.registration.lock().unwrap_or_else(|p| p.into_inner()) = Some(id);
            }
        }
        tracing::debug!(key, %token, "granted");
        Some(lease)
    }
}

#[async_trait]
impl DistributedLock for EtcdLock {
    /// One transaction: our key put alone when the lock's directory is empty (we own the
    /// lock); else, the lock being taken, our key put as a waiter's would be, deleted again
    /// at once in the background, and `Ok(None)` returned.
    ///
    /// # Cancel safety
    /// Cancel safe: a request the caller drops midway is finished in a task of its own; a
    /// grant or queue entry it makes after the caller is gone is undone in the background.
    #[tracing::instrument(level = "debug", skip(self, opts), fields(backend = "etcd"))]
    async fn try_acquire(&self, key: &str, opts: &LockOptions) -> Result<Option<Lease>> {
        self.inner
            .gate
            .pass(async {
                validate_key(key)?;
                opts.validate_for_try()?;
                let q = enqueue(Arc::clone(&self.inner), key, opts, Then::GiveUp).await?;
                if !q.owner {
                    return Ok(None); // dropping `q` takes our key out of the queue
                }
                self.grant(key, opts, q, None).map(Lease::into_live_for_try).transpose()
            })
            .await
    }

    /// Queues (one transaction: our key put, and the keys just before it read), then waits
    /// for the watch pushes saying every key older than ours is gone (see `src/wait.rs`).
    ///
    /// # Cancel safety
    /// Cancel safe: a dropped waiter's queue entry is deleted in the background at once
    /// (an own lease is revoked), so it never blocks the next client; `close()` waits for
    /// those deletions before a process exits.
    #[tracing::instrument(level = "debug", skip(self, opts), fields(backend = "etcd"))]
    async fn acquire(&self, key: &str, opts: &LockOptions) -> Result<Lease> {
        // A waiter in line sends nothing of its own until its turn: the last check, a
        // read beside it, tells a hung cluster (Unavailable) from a held key (Timeout).
        let cluster = &self.inner.cluster;
        let check = LastCheck::for_request_timeout(cluster.request_timeout());
        let wait = queue_checked(
            key,
            opts,
            check,
            || cluster.check(),
            |queued| async move {
                let mut q = enqueue(Arc::clone(&self.inner), key, opts, Then::Wait).await?;
                queued.mark();
                if q.owner {
                    return Ok(self.grant(key, opts, q, None));
                }
                match wait_turn(&self.inner.cluster, &mut q, opts.ttl()).await? {
                    Some(since) => Ok(self.grant(key, opts, q, Some(since))),
                    None => Ok(None), // our key vanished while queued: queue again
                }
            },
        );
        self.inner.gate.pass(wait).await
    }

    fn guarantees(&self) -> Guarantees {
        GUARANTEES
    }

    fn describe(&self) -> String {
        self.inner.cluster.display().to_owned()
    }

    /// Shuts this instance and its clones — waiting acquires end with
    /// [`LockError::Closed`] (their queue keys are deleted as a cancelled acquire's are,
    /// or go with the session), later calls fail with it and start no session — then waits
    /// (up to the request timeout) for background deletions, revocations (a replaced
    /// session's leases among them) and releases of dropped leases (counted from the drop)
    /// to finish,
    /// and revokes the session lease — every key on it goes in that one request, as
    /// etcd's `Session.Close` does — every waiting lease that may still be alive (the
    /// current one, superseded ones, one granted and never used) and every own lease still
    /// known. Every lease held
    /// through this client is told it is lost. Called again, it finds nothing left.
    ///
    /// # Errors
    /// [`LockError::Unavailable`] when a revoke was not confirmed: what it would have
    /// removed ends with the session TTL or the lock's TTL.
    ///
    /// # Cancel safety
    /// Cancel safe: dropping it leaves the background work running; the session may then
    /// stay until its TTL.
    async fn close(&self) -> Result<()> {
        let inner = &self.inner;
        let limit = inner.cluster.cfg.timeout;
        // First: the waits it ends drop their queue entries, whose deletions are then
        // counted among the clean-ups waited for below.
        let _closing = inner.gate.close(limit).await;
        if !inner.cleanups.idle(limit).await {
            tracing::warn!("close: background clean-ups still running after {limit:?}; ending the session anyway");
        }
        let session = inner.session.lock().await.take();
        let mut result = Ok(());
        if let Some(s) = session {
            if let Err(e) = s.end(&inner.cluster).await {
                result = Err(e);
            }
        }
        inner
            .own_grants
            .lost_all(&LostReason::Backend("the client was closed".into()));
        let leases: Vec<i64> = inner.own_leases().drain().collect();
        for lease in leases {
            if let Err(e) = revoke(&inner.cluster, lease).await {
                result = Err(e);
            }
        }
        result.map_err(|e| LockError::Unavailable {
            message: format!("closing the etcd client was not confirmed: {e}"),
            source: Some(Box::new(e)),
        })
    }
}
