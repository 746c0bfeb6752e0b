//! A granted lock: the lease made from our first-in-queue node, and its operations —
//! extend and renewal check that the node still exists (a deleted node is a lost lease),
//! release deletes it.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use async_trait::async_trait;
use fencelock_core::batch::spread_error;
use fencelock_core::cleanup::CleanupGuard;
use fencelock_core::{FencingToken, GrantId, Lease, LeaseOps, LeaseParts, LockOptions, Result};
use tokio::time::Instant;
use zookeeper_client::MultiReadResult;

use crate::cleanup;
use crate::config::ZkConfig;
use crate::error::{failed, outcome_unknown, timed_out};
use crate::queue::{Naming, Queued};
use crate::session::{after_sync, Session, RENEW_WINDOW};

/// Makes the lease of `q`, which a listing sent at `confirmed_at` found first in its queue.
///
/// The validity is `min(ttl, Session::proven_for)` (¾ of the session timeout less the
/// client's largest gap between sends) from `confirmed_at`: the lock is ours from then at
/// the latest, and the listing went after a `sync` (or our create), whose answer proves
/// the leader had not ended our session when it took it — not by a check of the leader's
/// (a follower answers a sync the leader forwarded back whatever the leader found), but by
/// order: a `closeSession` committed before the sync is applied first by our server, which
/// closes our connection, so the answer never comes
/// ([`crate::session::proven_for_after_gaps`]; a follower's answer alone proves nothing),
/// so the node lives at least that long from that instant. Counting from the create
/// instead would spend the validity on the wait.
///
/// A node that still names the instance's waiting marker (`waiting.rs`) may be removed by a
/// waiter behind it once that marker is gone, until it is *claimed*: so the lease is valid
/// no longer than the marker is sure to live (the waiting session's last proof + three
/// quarters of its timeout less its client's largest send gap: `WaitingUse::valid_until`),
/// unless [`settle`] claimed it at the turn; its first renewal (or `extend`) claims it — a rewrite of its data guarded
/// by the version at which it named the marker, the same version a removal is guarded by:
/// one of the two lands, never both. Once claimed the lease is valid as any other.
pub(crate) fn lease(key: &str, opts: &LockOptions, mut q: Queued, confirmed_at: Instant) -> Lease {
    q.disarm();
    let naming = q.naming.get_mut().unwrap_or_else(|p| p.into_inner()).take();
    let mut validity = opts.ttl().min(q.session.proven_for());
    if let Some(n) = &naming {
        validity = validity.min(n.used.valid_until().saturating_duration_since(confirmed_at));
    }
    let token = FencingToken::new(u64::try_from(q.czxid).unwrap_or(0));
    let grant = GrantId::from_string(format!("{:x}:{}", q.session.id(), q.path()));
    let ops = Arc::new(ZkGrant {
        session: Arc::clone(&q.session),
        cfg: Arc::clone(&q.cfg),
        path: q.path(),
        czxid: q.czxid,
        claim: std::sync::Mutex::new(naming.map(|n| (n.version, n))),
        registration: OnceLock::new(),
        _own_watch: std::sync::Mutex::new(q.own_watch.get_mut().unwrap_or_else(|p| p.into_inner()).take()),
    });
    let lease = Lease::new(LeaseParts {
        key: key.to_owned(),
        token,
        grant,
        sent_at: confirmed_at,
        validity,
        options: *opts,
        ops: ops.clone(),
    });
    // With the session's state now: a disconnect handled before the registration leaves
    // the lease `Suspended`, not `Held`.
    let _ = ops.registration.set(q.session.register(lease.reporter()));
    tracing::debug!(key, %token, "granted");
    lease
}

/// Reads every node of a renewal batch in one multi-read, sent behind one `sync` (one
/// extra request per batch, not per lock): each answers whether the node is still there
/// with its creation zxid, and the sync's answer that the leader held our session after
/// the renewal's send instant (a follower cut off from the leader answers reads from its
/// stale copy for `syncLimit` ticks while the leader expires the session).
async fn check_nodes(session: &Session, cfg: &ZkConfig, batch: &[(String, i64)]) -> Vec<Result<bool>> {
    let client = match session.client() {
        Ok(c) => c,
        Err(e) => return spread_error(&e, batch.len()),
    };
    let mut reader = client.new_multi_reader();
    for (path, _) in batch {
        if let Err(e) = reader.add_get_data(path) {
            return spread_error(&failed("checking our lock nodes", &cfg.display, e), batch.len());
        }
    }
    match tokio::time::timeout(cfg.timeout, after_sync(&client, |_| reader.commit())).await {
        Ok(Ok(results)) => results
            .into_iter()
            .zip(batch)
            .map(|(r, (_, czxid))| match r {
                MultiReadResult::Data { stat, .. } => Ok(stat.czxid == *czxid),
                MultiReadResult::Error {
                    err: zookeeper_client::Error::NoNode,
                } => Ok(false),
                MultiReadResult::Error { err } => Err(failed("checking our lock node", &cfg.display, err)),
                // A get-data answered with something else: not a node we can vouch for.
                _ => Ok(false),
            })
            .collect(),
        Ok(Err(e)) => spread_error(&failed("checking our lock nodes", &cfg.display, e), batch.len()),
        Err(_) => spread_error(
            &timed_out("checking our lock nodes", &cfg.display, cfg.timeout),
            batch.len(),
        ),
    }
}

impl ZkGrant {
    /// Claims our node if it is not claimed yet (`None` when it is): the answer of the
    /// claim is the renewal's.
    async fn claim_now(&self, ttl: Duration) -> Option<Result<Option<Duration>>> {
        let version = self
            .claim
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map(|(v, _)| *v)?;
        Some(
            match claim(&self.session, &self.cfg, &self.path, self.czxid, version).await {
                Ok(true) => {
                    drop(self.claim.lock().unwrap_or_else(|p| p.into_inner()).take());
                    // A write: answered by the leader, a proof as a sync's.
                    Ok(Some(ttl.min(self.session.proven_for())))
                }
                Ok(false) => Ok(None),
                Err(e) => Err(e),
            },
        )
    }
}

/// Claims a node of ours that names a waiting marker: rewrites its data (empty, as a node
/// that never waited) if it is still at `version`. `Ok(false)`: the node is gone — removed
/// by a waiter behind it after the marker went, or with our session.
pub(crate) async fn claim(session: &Session, cfg: &ZkConfig, path: &str, czxid: i64, version: i32) -> Result<bool> {
    let client = session.client()?;
    match tokio::time::timeout(cfg.timeout, client.set_data(path, b"", Some(version))).await {
        Ok(Ok(stat)) => Ok(stat.czxid == czxid),
        Ok(Err(zookeeper_client::Error::NoNode)) => Ok(false),
        // Written since: by an earlier claim whose answer was lost, or a proclaimed
        // election value — ours either way if it names no marker any more.
        Ok(Err(zookeeper_client::Error::BadVersion)) => {
            match tokio::time::timeout(cfg.timeout, client.get_data(path)).await {
                Ok(Ok((data, stat))) => Ok(stat.czxid == czxid && !data.starts_with(crate::waiting::PREFIX)),
                Ok(Err(zookeeper_client::Error::NoNode)) => Ok(false),
                Ok(Err(e)) => Err(failed("claiming our lock node", &cfg.display, e)),
                Err(_) => Err(timed_out("claiming our lock node", &cfg.display, cfg.timeout)),
            }
        }
        Ok(Err(e)) => Err(failed("claiming our lock node", &cfg.display, e)),
        Err(_) => Err(timed_out("claiming our lock node", &cfg.display, cfg.timeout)),
    }
}

/// At our turn, on a node naming a waiting marker: when what is left of the marker's bound
/// ([`WaitingUse::valid_until`](crate::waiting::WaitingUse::valid_until)) is under half of
/// `warranted` — the validity the lease gets once claimed, `min(ttl, Session::proven_for)` —
/// the node is claimed before it is granted, and the grant counts from the claim's send
/// instant (its validity is then the main session's); otherwise nothing is sent and the
/// grant is bounded by the marker (its first renewal claims). `Err` when the node is gone
/// (the attempt queues again).
///
/// Why half: the lease is handed out with at least half of what its TTL warrants — the
/// floor the conformance suite holds every backend to after a long wait
/// (`long_wait_grants_full_validity`) — and the claim, made by the first renewal a third
/// of the way through, then has at least a third of the warranted validity to be
/// answered in, as any renewal of a lease of half that TTL would. Below it the lease would
/// come with a sliver of its TTL (the marker's bound is at most ¾ of the waiting timeout
/// less its client's send gap: 500 ms on a server with `tickTime` 100 ms, 2.375 s on a
/// stock one, less the proof's age, up to a third of the waiting timeout), and a claim
/// that met a busy server for longer than that sliver would lose a lease a claim at the
/// turn keeps. The price is one write on the hand-off's path (and a read by the waiter
/// that watches our node, whose data changed): TTLs above twice the marker's bound claim
/// at every contended grant, shorter ones only when the proof is old. A bound that ran
/// out (the marker may be gone, our node removed) is always under half: the claim then
/// lands, or finds the node gone.
pub(crate) async fn settle(q: &mut Queued, confirmed_at: Instant, warranted: Duration) -> Result<Instant> {
    let slot = q.naming.get_mut().unwrap_or_else(|p| p.into_inner());
    let Some(naming) = slot.as_ref() else {
        return Ok(confirmed_at);
    };
    if naming.used.valid_until().saturating_duration_since(Instant::now()) >= warranted / 2 {
        return Ok(confirmed_at);
    }
    let version = naming.version;
    let sent = Instant::now();
    if claim(&q.session, &q.cfg, &q.path(), q.czxid, version).await? {
        drop(q.naming.get_mut().unwrap_or_else(|p| p.into_inner()).take());
        Ok(sent.max(confirmed_at))
    } else {
        Err(fencelock_core::LockError::Unavailable {
            message: "our lock node was removed while we waited (our waiting session had ended)".into(),
            source: None,
        })
    }
}

/// One grant: our node, in our session.
struct ZkGrant {
    session: Arc<Session>,
    cfg: Arc<ZkConfig>,
    path: String,
    czxid: i64,
    /// Not claimed yet: the version our data named the waiting marker at (and the use that
    /// keeps the waiting session open until the claim).
    claim: std::sync::Mutex<Option<(i32, Naming)>>,
    registration: OnceLock<u64>,
    /// The waiter's watch on our node, kept until the release's delete fires it: dropped
    /// unfired, the client would send a request to remove it.
    _own_watch: std::sync::Mutex<Option<crate::queue::OwnWatch>>,
}

#[async_trait]
impl LeaseOps for ZkGrant {
    /// ZooKeeper has no per-node TTL: the node lives as long as the session, which the
    /// client keeps alive. Extending sends a `sync` and checks behind it that our node
    /// still exists (same czxid: not a namesake made later), two requests in one round
    /// trip: the sync's answer proves the leader had not ended the session when it took the
    /// sync, after the send instant (by order: see [`lease`]), so the session (and the
    /// node) lives at least [`Session::proven_for`] from then
    /// ([`crate::session::proven_for_after_gaps`]; a follower's answer alone proves
    /// nothing). A node deleted behind our back (an operator, a session ended) is
    /// `Ok(None)`: the lease is lost.
    async fn extend(&self, ttl: Duration) -> Result<Option<Duration>> {
        let Ok(client) = self.session.client() else {
            return Ok(None);
        };
        if !self.session.is_usable() {
            return Ok(None);
        }
        if let Some(claimed) = self.claim_now(ttl).await {
            return claimed;
        }
        let checked = after_sync(&client, |c| c.check_stat(&self.path));
        match tokio::time::timeout(self.cfg.timeout, checked).await {
            Ok(Ok(Some(stat))) if stat.czxid == self.czxid => Ok(Some(ttl.min(self.session.proven_for()))),
            Ok(Ok(_)) => Ok(None),
            Ok(Err(e)) => Err(failed("checking our lock node", &self.cfg.display, e)),
            Err(_) => Err(timed_out("checking our lock node", &self.cfg.display, self.cfg.timeout)),
        }
    }

    /// Background renewals check the node like `extend`, batched: the nodes of every lock
    /// in the session that renews within a window are read in one multi-read request,
    /// behind one `sync`.
    async fn renew(&self, ttl: Duration) -> Result<Option<Duration>> {
        if !self.session.is_usable() {
            return Ok(None);
        }
        if let Some(claimed) = self.claim_now(ttl).await {
            return claimed;
        }
        let (cfg, wait) = (Arc::clone(&self.cfg), RENEW_WINDOW.min(ttl / 10));
        let flush = move |session: Arc<Session>, batch: Vec<(String, i64)>| {
            let cfg = Arc::clone(&cfg);
            async move { check_nodes(&session, &cfg, &batch).await }
        };
        let held = self
            .session
            .renewals
            .submit((self.path.clone(), self.czxid), wait, &self.session, flush)
            .await?;
        Ok(held.then(|| ttl.min(self.session.proven_for())))
    }

    /// Deletes our node (its name holds our grant id and sequence number, so a later
    /// holder's node is never touched), within one request timeout.
    ///
    /// A session that ended (expired while this process was stopped or cut off, or closed)
    /// takes the node with it: `Ok(false)`, not held — also when the deletion learns it
    /// only from its own failure (the connection dropped under it and the client then
    /// found the session expired; a new-user trial read "zookeeper unreachable" there,
    /// with the server up). "Ended" is the client's verdict: when it gives up reconnecting
    /// (7/5 of the session timeout without an answer) the server may keep the session, and
    /// the node, up to one more session timeout (ZooKeeper expires on tick boundaries, and
    /// a new leader grants every session a full timeout) — the key stays blocked, never
    /// handed out twice. A session that lives on after such a drop gets the deletion
    /// once more. Not confirmed in time: the error, and the deletion goes on in the
    /// background until confirmed or the session ends ([`cleanup::delete`], which ends the
    /// session itself when the server refuses the deletion for good).
    async fn release(&self) -> Result<bool> {
        if let Some(id) = self.registration.get() {
            self.session.locks.unregister(*id);
        }
        let Ok(client) = self.session.client() else {
            return Ok(false);
        };
        if !self.session.is_usable() {
            return Ok(false);
        }
        let deadline = Instant::now() + self.cfg.timeout;
        let mut outcome = tokio::time::timeout_at(deadline, client.delete(&self.path, None)).await;
        if matches!(&outcome, Ok(Err(e)) if outcome_unknown(e)) {
            // The connection dropped with the deletion in flight: the client connects
            // again and learns whether the session lives.
            match self.session.until_settled(deadline).await {
                Some(true) => {
                    outcome = match tokio::time::timeout_at(deadline, client.delete(&self.path, None)).await {
                        // Gone now, the session alive: our first deletion landed, or
                        // someone else removed the node — which the protocol allows only
                        // to a waiter behind a node still unclaimed, once its waiting
                        // marker is gone: past this lease's validity (`lease`), so the
                        // lock was never held beside us either way. Nothing on the server
                        // says who deleted a node: an operator's deletion in that window
                        // (out of the protocol) is reported released, not lost.
                        Ok(Err(zookeeper_client::Error::NoNode)) => Ok(Ok(())),
                        again => again,
                    }
                }
                Some(false) => return Ok(false),
                None => {}
            }
        }
        match outcome {
            Ok(Ok(())) => Ok(true),
            Ok(Err(zookeeper_client::Error::NoNode)) => Ok(false),
            // An expiry the deletion met is seen here too: the client records the
            // session's end before it fails the requests.
            _ if !self.session.is_usable() => Ok(false),
            other => {
                cleanup::delete(&self.session, self.cfg.timeout, self.path.clone());
                Err(match other {
                    Ok(Err(e)) => failed("deleting our lock node", &self.cfg.display, e),
                    _ => timed_out("deleting our lock node", &self.cfg.display, self.cfg.timeout),
                })
            }
        }
    }
    /// Counted on the session from the drop on: `close` waits for the release before it
    /// closes the session.
    fn cleanup(&self) -> Option<CleanupGuard> {
        Some(self.session.cleanups.start())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail by panicking

    use std::time::Duration;

    use fencelock_core::{LeaseState, LockOptions};
    use fencelock_testkit::proxy::{FaultProxy, Mode};
    use fencelock_testkit::until::until;
    use fencelock_testkit::zk_server::ZkEnsemble;

    use super::*;
    use crate::queue::{enqueue, Pending};

    /// A lease made after the session monitor handled a disconnect reads `Suspended`, as
    /// every lease of a disconnected session does (a review: it was registered `Held`, and
    /// the monitor, which had told the registered leases already, never told it). Made
    /// deterministic by a first lease, registered before the disconnect: once it reads
    /// `Suspended`, the monitor has handled the disconnect.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_lease_made_while_disconnected_reads_suspended() {
        let zk = ZkEnsemble::standalone();
        drop(crate::ZkLock::connect(&zk.url("/grant-test", "")).await.unwrap()); // the chroot
        let proxy = FaultProxy::start(zk.port(0)).await;
        let url = format!(
            "zk://127.0.0.1:{}/grant-test?session_timeout=10s&timeout=1s",
            proxy.port()
        );
        let cfg = Arc::new(ZkConfig::from_url(&url).unwrap());
        let session = Session::connect(&cfg).await.unwrap();
        let opts = LockOptions::new()
            .with_ttl(Duration::from_secs(60))
            .with_auto_renew(false);
        let queued = |key: &'static str| {
            let (session, cfg) = (Arc::clone(&session), Arc::clone(&cfg));
            async move {
                let dir = cfg.layout.dir(key, &cfg.chroot);
                enqueue(&session, &cfg, key, dir, &Pending::new(), None).await.unwrap()
            }
        };
        let (probe, late) = (queued("probe").await, queued("late").await);
        let probe = lease("probe", &opts, probe, Instant::now());
        assert_eq!(probe.status().state, LeaseState::Held);

        proxy.set(Mode::Reset); // and refuses new connections: the client stays disconnected
        until(
            "the monitor suspended the lease registered before",
            Duration::from_secs(10),
            || probe.status().state == LeaseState::Suspended,
        )
        .await;
        assert!(!session.is_connected());
        let late = lease("late", &opts, late, Instant::now());
        assert_eq!(
            late.status().state,
            LeaseState::Suspended,
            "a lease made while the session is disconnected"
        );
    }
}
