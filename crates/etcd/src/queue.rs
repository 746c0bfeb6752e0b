//! Joining a lock's queue: the lease our key rides on, the put of `DIR/INSTANCE.SLOT` and
//! the owner read in one transaction, and what an abandoned queue entry leaves to clean up.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{Compare, CompareOp, GetOptions, PutOptions, SortOrder, SortTarget, Txn, TxnOp, TxnOpResponse};
use fencelock_core::{LockError, LockOptions, Result};
use tokio::time::Instant;

use crate::cleanup::{delete_key, delete_name, revoke, until_confirmed};
use crate::error::BACKEND;
use crate::finish::finish_on_drop;
use crate::lock::Inner;
use crate::session::Session;
use crate::slots::Slot;
use crate::wait::{place_read, Place};

/// How a lock's key stays alive.
#[derive(Debug, Clone)]
pub(crate) enum Holding {
    /// On the instance's shared session lease (auto-renewed locks), under a claim.
    Session { session: Arc<Session>, claim: u64 },
    /// On a lease of its own, with the TTL the lock asked for (locks without auto-renew).
    Own {
        lease: i64,
        /// The TTL etcd granted (whole seconds, at least the lock's TTL).
        granted: Duration,
        /// When the grant request was sent: the lease lives at least `granted` from then.
        sent: Instant,
    },
}

impl Holding {
    pub fn lease(&self) -> i64 {
        match self {
            Holding::Session { session, .. } => session.id,
            Holding::Own { lease, .. } => *lease,
        }
    }
}

/// Our key in the queue. Dropping it while armed (an abandoned, cancelled or failed
/// acquire) undoes it in the background: see [`Queued::abandon`].
pub(crate) struct Queued {
    pub inner: Arc<Inner>,
    pub key: String,
    /// The slot of `key`'s name; freed once the key is known to be gone for good.
    pub slot: Option<Slot>,
    pub dir: String,
    /// Our key's create revision (the fencing token); 0 while the put is unconfirmed.
    pub rev: i64,
    pub holding: Holding,
    /// Some try of the put went out without an answer: a copy may still land later, even
    /// after our key was deleted. The name is then never reused.
    pub echoes: bool,
    pub owner: bool,
    /// Our place in the queue as the queueing transaction saw it (the keys just before
    /// ours), so the wait starts without a read of its own; `None` when it was not read
    /// (we own the lock, or an echo of an earlier try was found).
    pub place: Option<Place>,
    pub armed: bool,
}

impl Drop for Queued {
    fn drop(&mut self) {
        if self.armed {
            self.abandon();
        }
    }
}

impl Queued {
    /// Undoes the queue entry in the background, until confirmed (bounded):
    ///
    /// * on an own lease: revoke the lease — it deletes the key if it landed, and a put
    ///   still in flight fails after it ("lease not found"), so the outcome is certain;
    /// * on the session: give up the claim (from now on the session's key check deletes
    ///   the key whenever it sees it) and delete the key at once — guarded by its create
    ///   revision when known, else by its name, which stays reserved.
    fn abandon(&mut self) {
        let (inner, key, rev, slot, echoes) = (
            Arc::clone(&self.inner),
            self.key.clone(),
            self.rev,
            self.slot.take(),
            self.echoes,
        );
        let c = inner.cluster.clone();
        match self.holding.clone() {
            Holding::Own { lease, .. } => {
                let inner2 = Arc::clone(&inner);
                inner
                    .cleanups
                    .spawn("revoking an abandoned queue entry's lease", async move {
                        if until_confirmed("revoke", || revoke(&c, lease)).await {
                            inner2.forget_own_lease(lease);
                            if let Some(slot) = slot {
                                slot.free();
                            }
                        }
                    });
            }
            Holding::Session { session, claim } => {
                session.unclaim(claim);
                inner.cleanups.spawn("deleting an abandoned queue key", async move {
                    if rev > 0 {
                        let gone =
                            until_confirmed("delete", || async { delete_key(&c, &key, rev).await.map(|_| ()) }).await;
                        if let (true, false, Some(slot)) = (gone, echoes, slot) {
                            slot.free();
                        }
                    } else {
                        until_confirmed("delete by name", || delete_name(&c, &key)).await;
                    }
                });
            }
        }
    }
}

/// The lease for a new queue entry: the session's, or a new own lease of the lock's TTL
/// (also for an auto-renewed lock when `own` is set: the Go layout's second entry of one
/// instance in a directory, whose name must differ from the first's).
async fn holding(inner: &Arc<Inner>, opts: &LockOptions, own: bool) -> Result<Holding> {
    if opts.auto_renew() && !own {
        let session = inner.session().await?;
        return Ok(Holding::Session { session, claim: 0 });
    }
    let secs = opts.ttl().as_secs_f64().ceil().max(1.0) as i64;
    let sent = Instant::now();
    let r = inner
        .cluster
        .call(
            "granting a lease",
            |mut cl| async move { cl.lease_grant(secs, None).await },
        )
        .await?;
    inner.leases_granted.fetch_add(1, Ordering::Relaxed);
    inner.remember_own_lease(r.id());
    Ok(Holding::Own {
        lease: r.id(),
        granted: Duration::from_secs(r.ttl().max(1) as u64),
        sent,
    })
}

/// Puts our key with the lease and reads the current owner, in one transaction. Runs to
/// its end even when the caller drops it ([`finish_on_drop`]): if the caller is gone when
/// it completes, the `Queued` is dropped in the background, which undoes the entry.
pub(crate) async fn enqueue(inner: Arc<Inner>, key: &str, opts: &LockOptions, then: Then) -> Result<Queued> {
    enqueue_with_value(inner, key, Vec::new(), opts, then).await
}

/// What the caller does when the lock is taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Then {
    /// Waits its turn: the queueing transaction also reads the keys just before ours.
    Wait,
    /// Gives up at once (`try_acquire`): no read, which on a large directory is a sort of
    /// every key under it, inside the write.
    GiveUp,
}

/// [`enqueue`] with `value` as our key's value (an election candidate's, see
/// [`crate::election`]); lock keys hold an empty value.
pub(crate) async fn enqueue_with_value(
    inner: Arc<Inner>,
    key: &str,
    value: Vec<u8>,
    opts: &LockOptions,
    then: Then,
) -> Result<Queued> {
    let (key, opts) = (key.to_owned(), *opts);
    let cleanups = inner.cleanups.clone();
    finish_on_drop(&cleanups, async move {
        let cfg = &inner.cluster.cfg;
        let dir = cfg.lock_dir(&key);
        let slot = inner.slots.take(&dir);
        let mut holding = match holding(&inner, &opts, cfg.needs_own_lease(slot.n)).await {
            Ok(h) => h,
            Err(e) => {
                slot.free(); // no key was put under it
                return Err(e);
            }
        };
        let my_key = cfg.queue_key(&dir, inner.instance, slot.n, holding.lease());
        if let Holding::Session { session, claim } = &mut holding {
            *claim = session.claim(&my_key);
        }
        let mut queued = Queued {
            inner: Arc::clone(&inner),
            key: my_key.clone(),
            slot: Some(slot),
            dir: dir.clone(),
            rev: 0,
            holding: holding.clone(),
            echoes: false,
            owner: false,
            place: None,
            armed: true,
        };
        // The directory is empty (a compare over a range with no key compares as one
        // create revision 0): our put alone, and we own the lock — the raw minimum's
        // create-if-absent, no read. Otherwise, in one nested transaction: our put if our
        // key is not there yet (we queue: an older key exists); else — an echo of an
        // earlier try landed — our key and the directory's oldest key are read.
        let put = TxnOp::put(
            my_key.clone(),
            value,
            Some(PutOptions::new().with_lease(holding.lease())),
        );
        let owner_get = GetOptions::new()
            .with_prefix()
            .with_sort(SortTarget::Create, SortOrder::Ascend)
            .with_limit(1);
        let queue = Txn::new()
            .when([Compare::create_revision(my_key.clone(), CompareOp::Equal, 0)])
            // Our key is new and an older one exists (the outer compare saw the directory
            // non-empty, in the same transaction): we queue, no owner read needed — but
            // the keys just before ours are read after our put, in the same transaction
            // (it sees its own put), so the wait needs no read of its own.
            .and_then(match then {
                Then::Wait => vec![put.clone(), place_read(&dir)],
                Then::GiveUp => vec![put.clone()],
            })
            .or_else([
                TxnOp::get(my_key.clone(), None),
                TxnOp::get(dir.clone(), Some(owner_get)),
            ]);
        let txn = Txn::new()
            .when([Compare::create_revision(dir.clone(), CompareOp::Equal, 0).with_prefix()])
            .and_then([put])
            .or_else([TxnOp::txn(queue)]);
        let (resp, echoes) = inner.cluster.txn_counting_echoes("queueing for the lock", &txn).await;
        queued.echoes = echoes;
        let resp = resp?;
        let revision = resp.header().map_or(0, |h| h.revision());
        let mut owner_rev = 0;
        if resp.succeeded() {
            (queued.rev, owner_rev) = (revision, revision);
        }
        for op in resp.op_responses() {
            let TxnOpResponse::Txn(queue) = op else { continue };
            if queue.succeeded() {
                queued.rev = revision;
            }
            for op in queue.op_responses() {
                match op {
                    TxnOpResponse::Get(g) if queue.succeeded() => {
                        queued.place = Place::after_our_put(&g, &my_key, revision);
                    }
                    TxnOpResponse::Get(g)
                        if g.kvs().first().is_some_and(|kv| kv.key() == my_key.as_bytes()) && !queue.succeeded() =>
                    {
                        queued.rev = g.kvs()[0].create_revision();
                    }
                    TxnOpResponse::Get(g) => owner_rev = g.kvs().first().map_or(0, |kv| kv.create_revision()),
                    _ => {}
                }
            }
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
