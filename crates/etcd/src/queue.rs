//! Joining a lock's queue: the lease our key rides on, the put of `DIR/INSTANCE.SLOT` and
//! the owner read in one transaction, and what an abandoned queue entry leaves to clean up.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{
    Compare, CompareOp, GetOptions, PutOptions, SortOrder, SortTarget, Txn, TxnOp, TxnOpResponse, TxnResponse,
};
use fencelock_core::{LockError, LockOptions, Result};
use tokio::time::Instant;

use crate::cleanup::{delete_key, delete_name, revoke, until_confirmed};
use crate::client::LeaseRead;
use crate::error::BACKEND;
use crate::finish::finish_on_drop;
use crate::lock::Inner;
use crate::session::Session;
use crate::slots::Slot;
use crate::wait::{older_read, place_read, Place};
use crate::waiting_lease::WaitUse;

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
    /// Set while our key may ride on the session's short waiting lease instead of the
    /// session lease (see [`crate::waiting_lease`]): that lease is kept alive meanwhile.
    pub waiting: Option<WaitUse>,
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
                // Kept alive no longer for us: if the delete below fails, the lease's
                // lapse removes a key left on it.
                self.waiting = None;
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

/// Moves our key (created at `rev`) from lease `from` onto lease `to` if it is still ours
/// and still on `from`: one guarded transaction re-putting it with `ignore_value` (an
/// election candidate's value stays) — its create revision, the fencing token, does not
/// change; watchers of the queue filter puts out. Returns the lease our key rides on
/// afterwards, `None` when our key is gone. Safe to repeat: a repeat after a move that
/// landed finds the key on `to` and only reads.
///
/// # Errors
/// As [`crate::client::Cluster::txn`]: the move may or may not have landed.
pub(crate) async fn move_key(inner: &Inner, key: &str, rev: i64, from: i64, to: i64) -> Result<Option<i64>> {
    let txn = Txn::new()
        .when([
            Compare::create_revision(key.to_owned(), CompareOp::Equal, rev),
            Compare::lease(key.to_owned(), CompareOp::Equal, from),
        ])
        .and_then([TxnOp::put(
            key.to_owned(),
            "",
            Some(PutOptions::new().with_lease(to).with_ignore_value()),
        )])
        .or_else([TxnOp::get(key.to_owned(), Some(GetOptions::new().with_keys_only()))]);
    let r = inner.cluster.txn("moving the queue key to another lease", &txn).await?;
    if r.succeeded() {
        return Ok(Some(to));
    }
    Ok(lease_of_ours(r, rev))
}

/// The lease our key (create revision `rev`) rides on, from the read of it a failed move's
/// transaction made; `None` when it is gone.
fn lease_of_ours(r: TxnResponse, rev: i64) -> Option<i64> {
    r.op_responses().into_iter().find_map(|op| match op {
        TxnOpResponse::Get(g) => g
            .kvs()
            .first()
            .filter(|kv| kv.create_revision() == rev)
            .map(|kv| kv.lease()),
        _ => None,
    })
}

impl Queued {
    /// Whether `lease` is one our key may ride on: its own (the session's or an own
    /// lease), or the waiting lease while we keep it alive.
    pub(crate) fn rides_on(&self, lease: i64) -> bool {
        lease == self.holding.lease() || self.waiting.as_ref().is_some_and(|w| w.id() == lease)
    }

    /// Puts a waiter that queued on the session lease (no waiting lease was kept alive
    /// when it queued: the first waiter after a quiet spell) onto the session's waiting
    /// lease, granting one if needed: a `LeaseGrant` (unless another wait granted one) and
    /// one guarded transaction (which also reads our place, for the wait to start from),
    /// made by the wait before it watches — off the hand-off's path unless our turn comes
    /// within those round trips. `false` when our key is gone (queue again). A waiting
    /// lease that cannot be had leaves the key on the session (a dead waiter then costs
    /// `session_ttl`, as before); a move whose outcome is unknown keeps the waiting lease
    /// alive, and the grant's move settles where the key is.
    ///
    /// # Errors
    /// Never: failures leave the key where it was (`Result` for the wait's `?`).
    ///
    /// # Cancel safety
    /// Cancel safe: the dropped wait drops the `Queued`, which deletes the key by its
    /// create revision; a move that lands after that delete finds nothing to move (its
    /// compare names the create revision), one that lands before it is deleted with it.
    pub(crate) async fn onto_waiting(&mut self) -> Result<bool> {
        let Holding::Session { session, .. } = &self.holding else {
            return Ok(true);
        };
        if self.waiting.is_some() || self.rev == 0 {
            return Ok(true);
        }
        let w = match session
            .waiting
            .use_or_grant(&self.inner.cluster, &self.inner.cleanups)
            .await
        {
            Ok(w) => w,
            Err(e) => {
                tracing::debug!(error = %e, "no waiting lease: the queue key stays on the session");
                return Ok(true);
            }
        };
        // The move and a read of our place, in one transaction: the wait starts from
        // that read, so the move's own write does not cost it a read more.
        let (key, rev) = (self.key.clone(), self.rev);
        let txn = Txn::new()
            .when([
                Compare::create_revision(key.clone(), CompareOp::Equal, rev),
                Compare::lease(key.clone(), CompareOp::Equal, session.id),
            ])
            .and_then([
                TxnOp::put(
                    key.clone(),
                    "",
                    Some(PutOptions::new().with_lease(w.id()).with_ignore_value()),
                ),
                older_read(&self.dir, rev),
            ])
            .or_else([TxnOp::get(key, Some(GetOptions::new().with_keys_only()))]);
        match self
            .inner
            .cluster
            .txn("moving the queue key onto the waiting lease", &txn)
            .await
        {
            Ok(r) if r.succeeded() => {
                let revision = r.header().map_or(0, |h| h.revision());
                self.place = r.op_responses().into_iter().find_map(|op| match op {
                    TxnOpResponse::Get(g) => Some(Place::from_older(&g, revision)),
                    _ => None,
                });
                self.waiting = Some(w);
                Ok(true)
            }
            // The compare failed: our key is gone, or not on the session — on `w` when an
            // earlier try of this move landed (then kept alive for it).
            Ok(r) => {
                let on = lease_of_ours(r, rev);
                if on == Some(w.id()) {
                    self.waiting = Some(w);
                }
                Ok(on.is_some())
            }
            Err(e) if crate::error::lease_gone(&e) => {
                // The waiting lease was gone when the move reached etcd: nothing moved.
                session.waiting.gone(w.id());
                Ok(true)
            }
            Err(e) => {
                tracing::debug!(error = %e, "moving the queue key onto the waiting lease: outcome unknown");
                self.waiting = Some(w);
                Ok(true)
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

/// What a queue put answered "lease not found" (`refused`) by etcd tells: which lease is
/// gone — the session's, or the waiting lease the queue branch named (`waiting`), which
/// etcd's answer does not say — or that none is, and a member of another cluster refused
/// it. An error answer carries no header to check ([`crate::client::Answer`]), so the
/// leases the put named are read (one `LeaseTimeToLive` each, at once, bounded by the
/// request timeout; only after such a refusal): all alive in the cluster the connect met
/// means the refusal came from elsewhere — `InvalidConfig`, the session kept; a read
/// answered from another cluster is that `InvalidConfig` too. A session lease found gone
/// (or not read, without a waiting lease) ends the session at once (its grants are told
/// they are lost, and the next try starts a new session instead of failing until the next
/// keep-alive notices); a waiting lease found gone — or either, when the reads cannot
/// tell — is never handed out again. The error is temporary and names the lease.
async fn refused_lease(inner: &Inner, session: &Session, waiting: Option<&WaitUse>, refused: LockError) -> LockError {
    use LeaseRead::{Alive, Gone, Unknown};
    let cluster = &inner.cluster;
    let (s, w) = (session.id, waiting.map(WaitUse::id));
    let (session_read, waiting_read) = match w {
        None => (cluster.lease_after_refusal(s).await, None),
        Some(w) => {
            let (rs, rw) = tokio::join!(cluster.lease_after_refusal(s), cluster.lease_after_refusal(w));
            (rs, Some(rw))
        }
    };
    let (session_read, waiting_read) = match (session_read, waiting_read.transpose()) {
        (Err(e), _) | (_, Err(e)) => return e,
        (Ok(sr), Ok(wr)) => (sr, wr),
    };
    // The waiting lease's id beside what its read told.
    let waiting_read = w.zip(waiting_read);
    let at = "when the queue put reached etcd";
    let message = match (session_read, waiting_read) {
        (Alive, None) => {
            return cluster.refused_elsewhere("queueing for the lock", &format!("the session lease {s:x}"))
        }
        (Alive, Some((w, Alive))) => {
            return cluster.refused_elsewhere(
                "queueing for the lock",
                &format!("the session lease {s:x} and the waiting lease {w:x}"),
            )
        }
        (Gone, Some((w, Gone))) => {
            format!("the session lease {s:x} and the waiting lease {w:x} were gone (expired or revoked) {at}")
        }
        (Gone, _) => {
            format!("the session lease {s:x} was gone (expired or revoked) {at}; the next try starts a new session")
        }
        (_, Some((w, Gone))) => {
            format!("the waiting lease {w:x} was gone (expired or revoked) {at}; the next try queues without it")
        }
        (_, Some((w, _))) => format!(
            "the session lease {s:x} or the waiting lease {w:x} was gone (expired or revoked) {at}; which one could \
             not be told"
        ),
        (Unknown, None) => format!(
            "the session lease {s:x} was gone (expired or revoked) {at} (not confirmed: reading it failed); the next \
             try starts a new session"
        ),
    };
    // Only the session lease named, and not read: taken as gone, as the refusal says.
    if matches!((session_read, waiting_read), (Gone, _) | (Unknown, None)) {
        session.lease_found_gone(&message);
    }
    match waiting_read {
        Some((w, Gone)) => session.waiting.gone(w),
        Some((w, Unknown)) => session.waiting.retire(w), // alive or not, not handed out again
        Some((_, Alive)) | None => {}
    }
    tracing::debug!(%message, "queue put refused: lease not found");
    LockError::Backend {
        backend: BACKEND,
        message,
        source: Some(Box::new(refused)),
        temporary: true,
    }
}

/// The queueing transaction of one acquire. The directory is empty (a compare over a range
/// with no key compares as one create revision 0): our put alone, and we own the lock — the
/// raw minimum's create-if-absent, no read. Otherwise, in one nested transaction: our put
/// if our key is not there yet (we queue: an older key exists) — with, for a waiter, the
/// read of the keys just before ours —; else our key and the directory's oldest key are
/// read, which only a try after one that went out without an answer (`again`: an echo of
/// it may have landed) needs. A first try sends that branch empty (issue 14: the two
/// reads were a fifth of an uncontended cycle's request bytes); the compare stays, so an
/// echo of it that lands late never puts over our key.
struct QueueTxn<'a> {
    my_key: &'a str,
    dir: &'a str,
    value: &'a [u8],
    /// The lease of the owner's put (the session's, or the lock's own).
    lease: i64,
    /// The lease of the queue branch's put: the waiting lease when one is kept alive.
    queue_lease: i64,
    then: Then,
}

impl QueueTxn<'_> {
    fn build(&self, again: bool) -> Txn {
        let put = |lease: i64| TxnOp::put(self.my_key, self.value, Some(PutOptions::new().with_lease(lease)));
        // Our key is new and an older one exists (the outer compare saw the directory
        // non-empty, in the same transaction): we queue, no owner read needed — but the
        // keys just before ours are read after our put, in the same transaction (it sees
        // its own put), so the wait needs no read of its own.
        let queue = Txn::new()
            .when([Compare::create_revision(self.my_key, CompareOp::Equal, 0)])
            .and_then(match self.then {
                Then::Wait => vec![put(self.queue_lease), place_read(self.dir)],
                Then::GiveUp => vec![put(self.queue_lease)],
            });
        let queue = match again {
            false => queue,
            true => {
                let owner_get = GetOptions::new()
                    .with_prefix()
                    .with_sort(SortTarget::Create, SortOrder::Ascend)
                    .with_limit(1);
                queue.or_else([TxnOp::get(self.my_key, None), TxnOp::get(self.dir, Some(owner_get))])
            }
        };
        Txn::new()
            .when([Compare::create_revision(self.dir, CompareOp::Equal, 0).with_prefix()])
            .and_then([put(self.lease)])
            .or_else([TxnOp::txn(queue)])
    }
}

/// Whether a queueing transaction's answer says our key was there already and read nothing
/// (a first try's shape, [`QueueTxn::build`]).
fn found_unread(resp: &TxnResponse) -> bool {
    // An owner's answer (the usual case) is not looked into: `op_responses` copies.
    !resp.succeeded()
        && resp.op_responses().iter().any(|op| match op {
            TxnOpResponse::Txn(queue) => !queue.succeeded() && queue.op_responses().is_empty(),
            _ => false,
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
            waiting: None,
            armed: true,
        };
        // A waiter's key rides on the session's short waiting lease, when one is kept
        // alive already (nothing is sent to find out): a waiter that dies while queued then
        // blocks the queue for that lease's TTL, not the session's. Only the queue
        // branch's put names it; the owner's put rides on the session (`QueueTxn`).
        let mut waiting = match &holding {
            Holding::Session { session, .. } => session.waiting.try_use(),
            Holding::Own { .. } => None,
        };
        let shape = QueueTxn {
            my_key: &my_key,
            dir: &dir,
            value: &value,
            lease: holding.lease(),
            queue_lease: waiting.as_ref().map_or(holding.lease(), WaitUse::id),
            then,
        };
        let doing = "queueing for the lock";
        let (mut resp, mut echoes) = inner.cluster.txn_built(doing, |again| shape.build(again)).await;
        if resp.as_ref().is_ok_and(found_unread) {
            // Our key was there before the first try (not expected: a name is reused only
            // once its key's deletion was confirmed): sent again with the reads.
            let (again, more) = inner.cluster.txn_built(doing, |_| shape.build(true)).await;
            (resp, echoes) = (again, echoes || more);
        }
        queued.echoes = echoes;
        let resp = match (resp, &holding) {
            // A lease our put named expired or was revoked (a long pause; an operator): the
            // session lease (every put names it but a queue put on the waiting lease) or the
            // waiting lease — etcd's "lease not found" does not say which.
            (Err(e), Holding::Session { session, .. }) if crate::error::lease_gone(&e) => {
                return Err(refused_lease(&inner, session, waiting.as_ref(), e).await);
            }
            // The lock's own lease, granted just before (that answer's header checked): a
            // refusal while it lives came from a member of another cluster.
            (Err(e), Holding::Own { lease, .. }) if crate::error::lease_gone(&e) => {
                let doing = "queueing for the lock";
                let stands = inner
                    .cluster
                    .refusal_stands(*lease, doing, &format!("the lock's own lease {lease:x}"))
                    .await;
                return Err(stands.err().unwrap_or(e));
            }
            (resp, _) => resp?,
        };
        let revision = resp.header().map_or(0, |h| h.revision());
        let mut owner_rev = 0;
        // The lease our key was found on when an earlier try of this request had landed.
        let mut found_on = None;
        if resp.succeeded() {
            (queued.rev, owner_rev) = (revision, revision);
        }
        for op in resp.op_responses() {
            let TxnOpResponse::Txn(queue) = op else { continue };
            let mut reads = queue.op_responses().into_iter().filter_map(|op| match op {
                TxnOpResponse::Get(g) => Some(g),
                _ => None,
            });
            if queue.succeeded() {
                queued.rev = revision;
                queued.waiting = waiting.take(); // our put named it (when there was one)
                if let Some(g) = reads.next() {
                    queued.place = Place::after_our_put(&g, &my_key, revision);
                }
                continue;
            }
            // The else branch reads, in this order, our key and the directory's oldest key
            // — told apart by position, not by name: when an earlier try made us the owner,
            // the oldest key *is* ours (review: taken for the read of our key, it left the
            // owner unknown, and a free lock was answered "taken").
            if let Some(kv) = reads.next().as_ref().and_then(|g| g.kvs().first()) {
                queued.rev = kv.create_revision();
                found_on = Some(kv.lease());
            }
            if let Some(g) = reads.next() {
                owner_rev = g.kvs().first().map_or(0, |kv| kv.create_revision());
            }
        }
        if let (Some(on), Some(w)) = (found_on, waiting.take()) {
            if on == w.id() {
                queued.waiting = Some(w); // an earlier try queued on it
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
        // (An earlier try may have queued us on the waiting lease and the lock be free by
        // now: the grant then moves the key onto the session, as after a wait.)
        queued.owner = owner_rev == queued.rev;
        Ok(queued)
    })
    .await
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail by panicking

    use std::time::Duration;

    use fencelock_core::{DistributedLock, LockOptions};
    use fencelock_testkit::etcd_server::EtcdCluster;

    use crate::hooks::{arm, Fault};
    use crate::EtcdLock;

    /// The queue put's first try landed into an empty directory — we own the lock — and
    /// its answer was lost. The retry finds our key and reads the owner: our key again.
    /// Both reads named our key, and the owner's was taken for the read of our own key:
    /// no owner known, so `try_acquire` answered "taken" on a free lock (and deleted our
    /// key), and `acquire` waited for a turn that was already its own.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_retry_after_the_answer_to_an_owning_put_was_lost_is_granted() {
        let cluster = EtcdCluster::single();
        let lock = EtcdLock::connect(&cluster.url("")).await.unwrap();
        let display = lock.inner.cluster.display().to_owned();
        for opts in [LockOptions::new(), LockOptions::new().with_auto_renew(false)] {
            arm(&display, Fault::LostQueueAnswer);
            let got = lock.try_acquire("lost-answer", &opts).await.unwrap();
            let lease = got.expect("the lock is free and the first try made us its owner: granted");
            lease.release().await.unwrap();
            // And an acquire.
            arm(&display, Fault::LostQueueAnswer);
            let lease = tokio::time::timeout(Duration::from_secs(5), lock.acquire("lost-answer", &opts))
                .await
                .expect("granted at once")
                .unwrap();
            lease.release().await.unwrap();
        }
    }

    /// Our key's name found taken by the first try (not expected: a name is reused only
    /// once its key's deletion was confirmed; here an outside put made it so). The first
    /// try sends no reads — its compare fails and it learns nothing — so the request goes
    /// again with them, and the key is adopted as a retry's would be: ours, and the lock's
    /// owner, its token the key's create revision.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_first_try_that_finds_our_key_asks_again_with_the_reads() {
        let cluster = EtcdCluster::single();
        let lock = EtcdLock::connect(&cluster.url("session_ttl=60s")).await.unwrap();
        let opts = LockOptions::new();
        lock.acquire("warm", &opts).await.unwrap().release().await.unwrap();
        let session = lock.session_lease().await.expect("a session");
        let name = format!("/fencelock/taken/{:016x}.00000000", lock.inner.instance);
        let mut client = etcd_client::Client::connect(cluster.endpoints(), None).await.unwrap();
        for waits in [true, false] {
            let with_session = Some(etcd_client::PutOptions::new().with_lease(session));
            let put = client.put(name.as_str(), "", with_session).await.unwrap();
            let rev = put.header().unwrap().revision();
            let lease = match waits {
                true => lock.acquire("taken", &opts).await.unwrap(),
                false => lock.try_acquire("taken", &opts).await.unwrap().expect("ours"),
            };
            assert_eq!(lease.token().get(), rev as u64, "our key's create revision");
            lease.release().await.unwrap();
        }
        lock.close().await.unwrap();
    }
}
