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
use crate::error::{failed, timed_out};
use crate::queue::Queued;
use crate::session::{Session, RENEW_WINDOW};

/// Makes the lease of `q`, which a listing sent at `confirmed_at` found first in its queue.
///
/// The validity is `min(ttl, session timeout)` from `confirmed_at`: the lock is ours from
/// then at the latest, and the answer proves the server heard our session then, so the
/// node lives at least a session timeout from that instant. Counting from the create
/// instead would spend the validity on the wait.
pub(crate) fn lease(key: &str, opts: &LockOptions, mut q: Queued, confirmed_at: Instant) -> Lease {
    q.disarm();
    let validity = opts.ttl().min(q.session.timeout());
    let token = FencingToken::new(u64::try_from(q.czxid).unwrap_or(0));
    let grant = GrantId::from_string(format!("{:x}:{}", q.session.id(), q.path()));
    let ops = Arc::new(ZkGrant {
        session: Arc::clone(&q.session),
        cfg: Arc::clone(&q.cfg),
        path: q.path(),
        czxid: q.czxid,
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
    let _ = ops.registration.set(q.session.locks.register(lease.reporter()));
    tracing::debug!(key, %token, "granted");
    lease
}

/// Reads every node of a renewal batch in one multi-read: each answers whether the node is
/// still there with its creation zxid.
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
    match tokio::time::timeout(cfg.timeout, reader.commit()).await {
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

/// One grant: our node, in our session.
struct ZkGrant {
    session: Arc<Session>,
    cfg: Arc<ZkConfig>,
    path: String,
    czxid: i64,
    registration: OnceLock<u64>,
    /// The waiter's watch on our node, kept until the release's delete fires it: dropped
    /// unfired, the client would send a request to remove it.
    _own_watch: std::sync::Mutex<Option<crate::queue::OwnWatch>>,
}

#[async_trait]
impl LeaseOps for ZkGrant {
    /// ZooKeeper has no per-node TTL: the node lives as long as the session, which the
    /// client keeps alive. Extending checks that our node still exists (same czxid: not a
    /// namesake made later): the answer proves the server heard from the session at the
    /// send instant, so the session (and the node) lives at least a session timeout from
    /// then. A node deleted behind our back (an operator, a session ended) is `Ok(None)`:
    /// the lease is lost.
    async fn extend(&self, ttl: Duration) -> Result<Option<Duration>> {
        let Ok(client) = self.session.client() else {
            return Ok(None);
        };
        if !self.session.is_usable() {
            return Ok(None);
        }
        match tokio::time::timeout(self.cfg.timeout, client.check_stat(&self.path)).await {
            Ok(Ok(Some(stat))) if stat.czxid == self.czxid => Ok(Some(ttl.min(self.session.timeout()))),
            Ok(Ok(_)) => Ok(None),
            Ok(Err(e)) => Err(failed("checking our lock node", &self.cfg.display, e)),
            Err(_) => Err(timed_out("checking our lock node", &self.cfg.display, self.cfg.timeout)),
        }
    }

    /// Background renewals check the node like `extend`, batched: the nodes of every lock
    /// in the session that renews within a window are read in one multi-read request.
    async fn renew(&self, ttl: Duration) -> Result<Option<Duration>> {
        if !self.session.is_usable() {
            return Ok(None);
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
        Ok(held.then(|| ttl.min(self.session.timeout())))
    }

    /// Deletes our node (its name holds our grant id and sequence number, so a later
    /// holder's node is never touched). Not confirmed in time: the deletion goes on in the background until confirmed or
    /// the session ends.
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
        match tokio::time::timeout(self.cfg.timeout, client.delete(&self.path, None)).await {
            Ok(Ok(())) => Ok(true),
            Ok(Err(zookeeper_client::Error::NoNode)) => Ok(false),
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
