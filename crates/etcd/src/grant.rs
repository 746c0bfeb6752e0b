//! [`EtcdGrant`]: one grant — our key at its create revision — and how it is extended,
//! renewed and released ([`LeaseOps`]), including the move of a key onto a longer lease.
//!
//! Every extend confirms that the grant still exists on the server (our key with our
//! create revision): a key deleted behind the holder's back (an operator's
//! `etcdctl del --prefix`) is reported as `Ok(None)` (not held), never renewed blindly.
//! Auto-renewals of session locks send nothing per lock: the session's key check
//! confirms every key on its lease in one request per keep-alive period.

use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use async_trait::async_trait;
use etcd_client::{Compare, CompareOp, GetOptions, PutOptions, Txn, TxnOp};
use fencelock_core::cleanup::CleanupGuard;
use fencelock_core::{LeaseOps, LockError, Result};
use tokio::time::Instant;

use crate::cleanup::{release_key, revoke, until_confirmed};
use crate::lock::Inner;
use crate::queue::move_key;
use crate::session::Session;
use crate::slots::Slot;
use crate::wait::keep_alive_once;
use crate::waiting_lease::WaitUse;

/// How the grant's key stays alive.
pub(crate) enum GrantHolding {
    /// On the session lease, under the session's claim `claim` — or, until its move is
    /// confirmed, still on the session's waiting lease (`moving`).
    Session {
        session: Arc<Session>,
        claim: u64,
        moving: Mutex<Moving>,
        /// One move at a time (a renewal's and an `extend`'s); never held by a release,
        /// which deletes the key wherever it rides without waiting for a move.
        one_move: tokio::sync::Mutex<()>,
    },
    /// On leases of our own: the current one, and others that may carry the key after a
    /// lease move whose outcome was unknown (revoked at release).
    Own(Mutex<OwnLeases>),
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Where a session grant's key rides (see [`crate::waiting_lease`]).
pub(crate) enum Moving {
    /// On the session lease.
    OnSession,
    /// Possibly still on the waiting lease, kept alive by this use until the key is moved
    /// (a move whose answer was lost may have landed: the next try's compare settles it).
    OnWaiting(WaitUse),
    /// Our key is gone (it expired with the waiting lease, or was deleted), or released.
    Gone,
}

pub(crate) struct OwnLeases {
    pub current: i64,
    pub granted: Duration,
    /// Other leases of this grant, with their granted TTLs.
    pub others: Vec<(i64, Duration)>,
}

/// One grant.
pub(crate) struct EtcdGrant {
    pub inner: Arc<Inner>,
    pub key: String,
    pub rev: i64,
    pub holding: GrantHolding,
    /// The slot of `key`'s name; freed once the key is known to be gone for good.
    pub slot: Mutex<Option<Slot>>,
    /// A copy of the queue put may still land (see [`crate::queue::Queued::echoes`]).
    pub echoes: bool,
    /// This grant's id in the instance's registry of own-lease grants (for `close`).
    pub registration: Mutex<Option<u64>>,
    /// Held by the extend of an own-lease grant while it runs.
    pub extending: tokio::sync::Mutex<()>,
    pub me: Weak<EtcdGrant>,
}

impl EtcdGrant {
    fn own(&self) -> Option<std::sync::MutexGuard<'_, OwnLeases>> {
        match &self.holding {
            GrantHolding::Own(m) => Some(m.lock().unwrap_or_else(|p| p.into_inner())),
            GrantHolding::Session { .. } => None,
        }
    }

    /// A session grant's key onto the session lease if it may still ride on the waiting
    /// lease: one guarded transaction ([`move_key`]), at most one at a time — made by the
    /// grant's renewals (the first comes a third of the way through the validity the
    /// waiting lease bounds) and by `extend`, never at the grant. `Ok(true)` when it is on
    /// the session lease, `Ok(false)` when our key is gone (it expired with the waiting
    /// lease, was deleted, or the grant was released) or the session is lost.
    ///
    /// # Errors
    /// The move's, when its outcome is unknown: the key may ride on either lease, and the
    /// waiting lease is still kept alive for it.
    async fn settle(&self) -> Result<bool> {
        let GrantHolding::Session {
            session,
            claim,
            moving,
            one_move,
        } = &self.holding
        else {
            return Ok(true);
        };
        // The usual case first, without the async lock: every renewal of a session lock
        // comes here (10,000 held locks: 10,000 calls per period).
        if matches!(*lock(moving), Moving::OnSession) {
            return Ok(true);
        }
        // One at a time: a renewal and an explicit `extend` may both come here.
        let _one = one_move.lock().await;
        let from = match &*lock(moving) {
            Moving::OnSession => return Ok(true),
            Moving::Gone => return Ok(false),
            Moving::OnWaiting(w) => w.id(),
        };
        let moved = if session.is_alive() {
            move_key(&self.inner, &self.key, self.rev, from, session.id).await
        } else {
            Ok(None)
        };
        let mut m = lock(moving);
        if matches!(*m, Moving::Gone) {
            return Ok(false); // released meanwhile
        }
        match moved {
            Ok(Some(on)) if on == session.id => {
                *m = Moving::OnSession;
                session.on_session(*claim);
                Ok(true)
            }
            Ok(_) => {
                *m = Moving::Gone;
                Ok(false)
            }
            Err(e) if crate::error::lease_gone(&e) => {
                *m = Moving::Gone; // the session lease is gone
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }

    /// How long a session grant stays valid from `now`: the session's validity, and while
    /// its key may still ride on the waiting lease, no longer than that lease lives.
    pub(crate) fn session_validity(session: &Session, moving: &Moving, now: Instant) -> Option<Duration> {
        let until = match moving {
            Moving::OnSession => session.valid_until()?,
            Moving::OnWaiting(w) => session.valid_until()?.min(w.valid_until()),
            Moving::Gone => return None,
        };
        Some(until.saturating_duration_since(now)).filter(|d| !d.is_zero())
    }

    fn take_slot(&self) -> Option<Slot> {
        self.slot.lock().unwrap_or_else(|p| p.into_inner()).take()
    }

    /// Reads our key: `Some(lease it rides on)` when it still exists with our create
    /// revision.
    async fn our_key(&self) -> Result<Option<i64>> {
        let key = self.key.clone();
        let r = self
            .inner
            .cluster
            .call("checking the lock key", |mut cl| {
                let key = key.clone();
                async move { cl.get(key, Some(GetOptions::new().with_keys_only())).await }
            })
            .await?;
        // A lease move held back (test): it lands after this read.
        #[cfg(test)]
        if let Some(txn) = crate::hooks::held(self.inner.cluster.display()) {
            let _ = self.inner.cluster.txn("a held-back lease move", &txn).await;
        }
        Ok(r.kvs()
            .first()
            .filter(|kv| kv.create_revision() == self.rev)
            .map(|kv| kv.lease()))
    }

    /// Sends a lease move's transaction (bounded as [`crate::client::Cluster::call`]).
    async fn send_move(&self, txn: &Txn) -> Result<etcd_client::TxnResponse> {
        let c = &self.inner.cluster;
        let doing = "moving the lock to the longer lease";
        #[cfg(test)]
        for (fault, reads) in [(crate::hooks::Fault::LateMove, 0), (crate::hooks::Fault::LaterMove, 1)] {
            if crate::hooks::fire(c.display(), fault) {
                crate::hooks::hold(c.display(), txn.clone(), reads);
                return Err(crate::error::timed_out(doing, c.display(), c.request_timeout()));
            }
        }
        c.call(doing, |mut cl| {
            let txn = txn.clone();
            async move { cl.txn(txn).await }
        })
        .await
    }

    /// Makes `on`, the lease our key was found on, the current one if it is one of ours
    /// (a lease move whose answer was lost may have landed); its granted TTL, or `None`
    /// when it is not ours (then the key is not ours any more either).
    fn adopt(&self, on: i64) -> Option<Duration> {
        let mut own = self.own()?;
        if on != own.current {
            let i = own.others.iter().position(|(l, _)| *l == on)?;
            let (lease, granted) = own.others.swap_remove(i);
            let old = (own.current, own.granted);
            own.others.push(old);
            own.current = lease;
            own.granted = granted;
        }
        Some(own.granted)
    }

    /// Extends an own-lease grant within its granted TTL: confirms our key, then keeps
    /// alive the lease it actually rides on.
    async fn extend_own(&self, ttl: Duration) -> Result<Option<Duration>> {
        let Some(on) = self.our_key().await? else {
            return Ok(None);
        };
        let Some(granted) = self.adopt(on) else {
            return Ok(None);
        };
        if !keep_alive_once(&self.inner.cluster, on).await? {
            return Ok(None);
        }
        // A lease move whose answer was lost may still land after the read above, onto one
        // of `others`: each is kept alive too, and the validity is the shortest TTL among
        // them, so the key never rides on a lease nobody renews past what we believe (a
        // review: it did, and expired under a holder told it was valid). A lease found
        // gone carries nothing (a put onto a missing lease fails): forgotten.
        let mut validity = ttl.min(granted);
        let others = self.own().map(|o| o.others.clone()).unwrap_or_default();
        for (lease, their) in others {
            if keep_alive_once(&self.inner.cluster, lease).await? {
                validity = validity.min(their);
            } else if let Some(mut own) = self.own() {
                own.others.retain(|(l, _)| *l != lease);
            }
        }
        Ok(Some(validity))
    }

    /// Moves our key onto a new lease of `ttl` (etcd cannot lengthen a lease): grant, then
    /// re-put our key with the new lease only if it is still ours (the create revision,
    /// and so the token, stays), then revoke the old lease. Runs in a task of its own, so
    /// a dropped `extend` cannot stop it halfway. A move whose answer is lost may still
    /// land after any later read: unless a read finds our key already on the new lease
    /// (or gone), both leases are kept — neither is revoked, so the key is never deleted by
    /// mistake — the extend fails (temporary), and the next extend adopts the lease the key
    /// is found on; the release revokes both.
    async fn move_to_longer_lease(self: Arc<Self>, ttl: Duration) -> Result<Option<Duration>> {
        let c = self.inner.cluster.clone();
        let Some(old) = self.our_key().await? else {
            return Ok(None);
        };
        let Some(granted) = self.adopt(old) else {
            return Ok(None);
        };
        if ttl <= granted {
            // An earlier move whose answer was lost had landed: the key rides on a lease
            // long enough already.
            return Ok(keep_alive_once(&c, old).await?.then_some(ttl));
        }
        let secs = ttl.as_secs_f64().ceil().max(1.0) as i64;
        let fresh = c
            .call("granting a longer lease", |mut cl| async move {
                cl.lease_grant(secs, None).await
            })
            .await?;
        let (fresh, fresh_granted) = (fresh.id(), Duration::from_secs(fresh.ttl().max(1) as u64));
        self.inner.remember_own_lease(fresh);
        let txn = Txn::new()
            .when([
                Compare::create_revision(self.key.clone(), CompareOp::Equal, self.rev),
                Compare::lease(self.key.clone(), CompareOp::Equal, old),
            ])
            // The value stays as it is (an election candidate's key carries one).
            .and_then([TxnOp::put(
                self.key.clone(),
                "",
                Some(PutOptions::new().with_lease(fresh).with_ignore_value()),
            )]);
        let moved = self.send_move(&txn).await;
        // Which lease carries our key now (`None`: our key is gone).
        let on = match &moved {
            Ok(r) if r.succeeded() => Some(fresh),
            // The compare failed: our key is gone, or (an operator's put) on another lease.
            Ok(_) => self.our_key().await.ok().flatten(),
            // No answer: the move may still land, after any read we make. A read settles
            // it only when it finds our key on `fresh` (the move landed) or gone (a move
            // cannot bring it back: its compare names our create revision). Our key still
            // on `old` settles nothing — revoking `fresh` then deletes the key if the move
            // lands afterwards, under a holder told only "try again" (review) — nor does a
            // failed read: both leases are kept, neither revoked; the next extend adopts
            // the one the key is found on, the release revokes both.
            Err(_) => match self.our_key().await {
                Ok(on) if on.is_none() || on == Some(fresh) => on,
                _ => {
                    if let Some(mut own) = self.own() {
                        own.others.push((fresh, fresh_granted));
                    }
                    return moved.map(|_| None);
                }
            },
        };
        if on == Some(fresh) {
            if let Some(mut own) = self.own() {
                own.current = fresh;
                own.granted = fresh_granted;
            }
            self.inner.retire_own_lease(old);
            return Ok(Some(ttl.min(fresh_granted)));
        }
        self.inner.retire_own_lease(fresh);
        match (on, moved) {
            // Our key is still there but the move did not happen: say why.
            (Some(_), Err(e)) => Err(e),
            (Some(_), Ok(_)) => Err(LockError::Unavailable {
                message: "moving the lock key to a longer lease did not take; extend again".into(),
                source: None,
            }),
            (None, _) => Ok(None),
        }
    }
}

#[async_trait]
impl LeaseOps for EtcdGrant {
    async fn extend(&self, ttl: Duration) -> Result<Option<Duration>> {
        match &self.holding {
            GrantHolding::Session { session, .. } => {
                if !self.settle().await? {
                    return Ok(None);
                }
                let sent = Instant::now();
                let on = self.our_key().await?;
                let valid = session.valid_until().map(|t| t.saturating_duration_since(sent));
                Ok(valid.filter(|_| on == Some(session.id)))
            }
            GrantHolding::Own(_) => {
                // In a task of its own, so a dropped `extend` cannot stop a lease move
                // halfway; one at a time, so two moves never race over the same key.
                let Some(me) = self.me.upgrade() else { return Ok(None) };
                let task = async move {
                    let _one_at_a_time = me.extending.lock().await;
                    let granted = me.own().map_or(Duration::ZERO, |o| o.granted);
                    if ttl <= granted {
                        // A shorter ttl cannot shorten the lease on the server: the holder
                        // believes `ttl` (safe), the key may outlive it by up to `granted`.
                        me.extend_own(ttl).await
                    } else {
                        Arc::clone(&me).move_to_longer_lease(ttl).await
                    }
                };
                match tokio::spawn(task).await {
                    Ok(r) => r,
                    Err(e) => Err(LockError::backend(crate::error::BACKEND, "the extend task failed", e)),
                }
            }
        }
    }

    /// Session locks: the session's keep-alive stream renews their lease and its key check
    /// confirms their keys, for all of them at once — nothing is sent per lock. A grant
    /// whose key still rides on the waiting lease (granted on the push after a wait) moves
    /// it onto the session lease here, at its first renewal: one transaction, which a
    /// holder that releases sooner never sends (issue 14: sent at the grant, it was a
    /// third Raft write per grant held past a round trip).
    async fn renew(&self, ttl: Duration) -> Result<Option<Duration>> {
        match &self.holding {
            GrantHolding::Session { session, moving, .. } => {
                // Nothing is sent once the key is on the session lease; before, this makes
                // the move (tried again by the next renewal while its outcome is unknown).
                match self.settle().await {
                    Ok(true) => Ok(session
                        .valid_until()
                        .map(|t| t.saturating_duration_since(Instant::now()))),
                    Ok(false) => Ok(None),
                    // Unknown: the key may be on either lease, both still valid for a while.
                    Err(e) => match Self::session_validity(session, &lock(moving), Instant::now()) {
                        Some(d) => Ok(Some(d)),
                        None => Err(e),
                    },
                }
            }
            GrantHolding::Own(_) => self.extend(ttl).await,
        }
    }

    async fn release(&self) -> Result<bool> {
        let c = self.inner.cluster.clone();
        if let Some(id) = self.registration.lock().unwrap_or_else(|p| p.into_inner()).take() {
            self.inner.own_grants.unregister(id);
        }
        match &self.holding {
            GrantHolding::Session {
                session, claim, moving, ..
            } => {
                // Unclaimed only after the delete: while claimed, the session's key check
                // never deletes the key under us (which would turn this release's answer
                // into "not held"); if the delete is not confirmed, the check deletes the
                // now unclaimed key at its next period (or it lapses with the waiting lease,
                // no longer kept alive for it).
                // A move in flight is not waited for: both are guarded by our create
                // revision, so a move landing after the delete finds nothing to move. The
                // waiting lease stays kept alive (this use) until the delete is answered.
                let on = std::mem::replace(&mut *lock(moving), Moving::Gone);
                let lease = match &on {
                    Moving::OnWaiting(w) => w.id(),
                    _ => session.id,
                };
                let deleted = release_key(&c, &self.key, self.rev, lease).await;
                // Already known gone (it lapsed with the waiting lease, or the session's
                // went): not held, whatever the delete says — a repeated delete that
                // finds nothing would read the *session* lease alive and answer "held"
                // (review).
                let deleted = match on {
                    Moving::Gone => deleted.map(|_| false),
                    _ => deleted,
                };
                drop(on);
                session.unclaim(*claim);
                if let (Ok(_), false, Some(slot)) = (&deleted, self.echoes, self.take_slot()) {
                    slot.free();
                }
                deleted
            }
            GrantHolding::Own(_) => {
                // One transaction decides the answer; the leases are revoked afterwards in
                // the background (they carry nothing of ours any more, or — if the delete
                // was not confirmed — revoking them deletes the key).
                let current = self.own().map_or(0, |o| o.current);
                let deleted = release_key(&c, &self.key, self.rev, current).await;
                let leases: Vec<i64> = self
                    .own()
                    .map(|o| {
                        std::iter::once(o.current)
                            .chain(o.others.iter().map(|(l, _)| *l))
                            .collect()
                    })
                    .unwrap_or_default();
                let (inner, slot, confirmed) = (
                    Arc::clone(&self.inner),
                    self.take_slot(),
                    deleted.is_ok() && !self.echoes,
                );
                self.inner
                    .cleanups
                    .spawn("revoking a released lock's leases", async move {
                        let mut all = true;
                        for lease in leases {
                            let c = inner.cluster.clone();
                            if until_confirmed("revoke", || revoke(&c, lease)).await {
                                inner.forget_own_lease(lease);
                            } else {
                                all = false;
                            }
                        }
                        if let (true, Some(slot)) = (all || confirmed, slot) {
                            slot.free();
                        }
                    });
                deleted
            }
        }
    }

    /// Counted on the instance from the drop on: `close` waits for the release before it
    /// ends the session.
    fn cleanup(&self) -> Option<CleanupGuard> {
        Some(self.inner.cleanups.start())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail by panicking

    use std::time::Duration;

    use etcd_client::GetOptions;
    use fencelock_core::{DistributedLock, Lease, LockOptions};
    use fencelock_testkit::etcd_server::EtcdCluster;

    use crate::hooks::{arm, Fault};
    use crate::EtcdLock;

    /// The keys under `key`'s directory and the leases etcd holds, read on `lock`'s own
    /// connection.
    async fn keys_and_leases(lock: &EtcdLock, key: &str) -> (i64, usize) {
        let c = &lock.inner.cluster;
        let mut client = c.client.clone();
        let opts = GetOptions::new().with_prefix().with_count_only();
        let keys = client.get(c.cfg.lock_dir(key), Some(opts)).await.unwrap().count();
        let leases = client.leases().await.unwrap().leases().len();
        (keys, leases)
    }

    /// `key` held on `cluster` with a 5 s own lease, no auto-renew, and `fault` (a lease
    /// move held back) armed for its next extend past that TTL.
    async fn held_with_a_move_held_back(cluster: &EtcdCluster, key: &str, fault: Fault) -> (EtcdLock, Lease) {
        let lock = EtcdLock::connect(&cluster.url("")).await.unwrap();
        let opts = LockOptions::new()
            .with_ttl(Duration::from_secs(5))
            .with_auto_renew(false);
        let lease = lock.acquire(key, &opts).await.unwrap();
        arm(lock.inner.cluster.display(), fault);
        (lock, lease)
    }

    /// A lease move (an `extend` past the granted TTL) whose transaction went unanswered
    /// and landed only after the read that followed it: that read found our key still on
    /// the old lease, and the new lease was revoked — taking our key with it, moved there
    /// by the late transaction, while the holder, told only "try again", still read its
    /// lease as held. Neither lease may be revoked while the move's outcome is unknown;
    /// the release revokes both.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_lease_move_without_an_answer_revokes_neither_lease() {
        let cluster = EtcdCluster::single();
        let key = "late-move";
        let (lock, lease) = held_with_a_move_held_back(&cluster, key, Fault::LateMove).await;
        let extended = lease.extend(Duration::from_secs(10)).await;
        assert!(
            extended.as_ref().is_err_and(|e| e.is_temporary()),
            "the move got no answer: a temporary error, not {extended:?}"
        );
        // Whatever the extend left to do in the background (revokes) is done.
        assert!(lock.inner.cleanups.idle(Duration::from_secs(10)).await);
        assert!(lease.is_held(), "a temporary extend error leaves the lease held");
        let (keys, leases) = keys_and_leases(&lock, key).await;
        assert_eq!(
            keys, 1,
            "the lock key was deleted (the lease the late move put it on was revoked) while the lease reads held"
        );
        assert_eq!(leases, 2, "both leases are kept while the move's outcome is unknown");
        // The next extend finds the key on the longer lease: kept alive, nothing moved.
        lease.extend(Duration::from_secs(10)).await.unwrap();
        assert_eq!(keys_and_leases(&lock, key).await, (1, 2));
        lease.release().await.unwrap();
        assert!(lock.inner.cleanups.idle(Duration::from_secs(10)).await);
        assert_eq!(
            keys_and_leases(&lock, key).await,
            (0, 0),
            "the release revokes both leases"
        );
    }

    /// A lease move that went unanswered and landed only after a *later* extend's read
    /// (a review of the fix above): that extend kept alive the lease it read the key on
    /// and believed its TTL, while the key now rode on the new lease, which nobody
    /// renewed — and which ran out first, deleting the key under a holder told it was
    /// valid. Every lease the key may still move onto is kept alive, and the validity is
    /// the shortest of theirs.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_move_that_lands_after_a_later_read_never_outlives_the_belief() {
        let cluster = EtcdCluster::single();
        let key = "later-move";
        let (lock, lease) = held_with_a_move_held_back(&cluster, key, Fault::LaterMove).await;
        let extended = lease.extend(Duration::from_secs(6)).await;
        assert!(extended.is_err_and(|e| e.is_temporary()));
        // Server time passes (the new 6 s lease's, as the old one's: nothing here renews
        // them), so that the new lease would run out before a fresh 5 s validity.
        tokio::time::sleep(Duration::from_secs(2)).await;
        // Its read comes before the held move lands; it keeps alive the lease it read.
        lease.extend(Duration::from_secs(5)).await.unwrap();
        let believed = lease
            .valid_until()
            .saturating_duration_since(tokio::time::Instant::now());
        let c = &lock.inner.cluster;
        let mut client = c.client.clone();
        let kvs = client
            .get(c.cfg.lock_dir(key), Some(GetOptions::new().with_prefix()))
            .await
            .unwrap();
        let on = kvs.kvs().first().expect("the lock key").lease();
        let left = client.lease_time_to_live(on, None).await.unwrap().ttl();
        assert!(
            believed <= Duration::from_secs(u64::try_from(left).unwrap_or(0) + 1),
            "the holder believes {believed:?} more; the lease its key rides on ends in {left} s"
        );
        lease.release().await.unwrap();
    }
}
