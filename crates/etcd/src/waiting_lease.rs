//! The waiting lease: a short lease per session that queued keys ride on, so a waiter that
//! dies while queued (SIGKILL, a crash) blocks the others for this lease's TTL, not the
//! session's (issue 14).
//!
//! * **Asked TTL**: [`ASKED`], 1 s. etcd raises a TTL below its minimum (1.5 × its election
//!   timeout, rounded up to whole seconds) without a word: 2 s on a stock server, 1 s with
//!   the tests' 100 ms election timeout. The raised value is accepted: this TTL bounds only
//!   how long a dead waiter blocks the queue, not how long a holder is trusted: a grant is
//!   handed out on the watch push valid no longer than this lease lives, and its key moves
//!   onto the session lease in the background (`EtcdGrant::settle` in [`crate::grant`]),
//!   after which the session's validity is the grant's.
//! * **Kept alive only while used**: every third of its TTL while a queued key of ours, or
//!   a grant's key not moved yet, may ride on it (a [`WaitUse`] each), and for one more
//!   TTL after the last one left (the linger: a client that asks again soon after its
//!   grant reuses it instead of granting a new one); then its keep-alives stop and it
//!   lapses on the server — no revoke, nothing sent.
//!   An instance that only holds locks sends nothing for it.
//! * **Never handed to a new key when it may not outlive the put**: only while at least a
//!   third of its TTL is left since its last confirmed keep-alive (keep-alives keep two
//!   thirds or more left; a third is still hundreds of milliseconds for one put). A put
//!   that finds it gone anyway (a long pause, a revoke from outside) fails as a temporary
//!   error and the lease is not handed out again: the next try queues on the session.
//! * **Not on the session's keep-alive stream**: etcd-client's keeper is bound to one lease
//!   id, and the waiting lease lives only while some wait does, so a loop of its own (one
//!   keep-alive request each third of the TTL) is simpler and costs a held-only instance
//!   nothing. The session's key check lists this lease's keys too while it lives, so a
//!   queue put that landed late on it is deleted as one on the session would be.

use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use fencelock_core::Result;
use tokio::time::Instant;

use crate::client::Cluster;
use crate::wait::keep_alive_once;

/// The TTL asked of etcd, whole seconds (it raises it to its minimum).
const ASKED: i64 = 1;

/// The waiting leases of one session: at most one current.
#[derive(Debug)]
pub(crate) struct WaitingLeases {
    current: Mutex<Option<Arc<WaitingLease>>>,
    /// One grant at a time: waits that start together share it.
    granting: tokio::sync::Mutex<()>,
}

/// One waiting lease.
#[derive(Debug)]
pub(crate) struct WaitingLease {
    pub id: i64,
    /// The TTL etcd granted.
    pub ttl: Duration,
    state: Mutex<Usage>,
}

#[derive(Debug)]
struct Usage {
    /// Queue keys, and grants' keys not yet moved onto the session, that may ride on it.
    users: usize,
    /// When the last user left.
    idle_since: Instant,
    /// The lease lives at least until then (last confirmed keep-alive's send + TTL).
    valid_until: Instant,
    /// No longer kept alive (lapsed, lost or revoked): never handed out again.
    ended: bool,
}

/// A queue key of ours may ride on the lease: it is kept alive while this lives.
#[derive(Debug)]
pub(crate) struct WaitUse {
    lease: Arc<WaitingLease>,
}

impl WaitUse {
    pub fn id(&self) -> i64 {
        self.lease.id
    }

    /// The lease lives at least until then (its last confirmed keep-alive's send + TTL).
    pub fn valid_until(&self) -> Instant {
        self.lease.usage().valid_until
    }
}

impl Drop for WaitUse {
    fn drop(&mut self) {
        let mut s = self.lease.usage();
        s.users = s.users.saturating_sub(1);
        if s.users == 0 {
            s.idle_since = Instant::now();
        }
    }
}

impl WaitingLease {
    fn usage(&self) -> std::sync::MutexGuard<'_, Usage> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A use of the lease if it is still kept alive and at least a third of its TTL is left.
    fn take_use(self: &Arc<Self>) -> Option<WaitUse> {
        let mut s = self.usage();
        if s.ended || s.valid_until.saturating_duration_since(Instant::now()) < self.ttl / 3 {
            return None;
        }
        s.users += 1;
        Some(WaitUse {
            lease: Arc::clone(self),
        })
    }
}

impl WaitingLeases {
    pub fn new() -> Self {
        WaitingLeases {
            current: Mutex::new(None),
            granting: tokio::sync::Mutex::new(()),
        }
    }

    fn current(&self) -> std::sync::MutexGuard<'_, Option<Arc<WaitingLease>>> {
        self.current.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A use of the current waiting lease, if one is kept alive with time to spare; sends
    /// nothing (the enqueue's put names it only when it is there already).
    pub fn try_use(&self) -> Option<WaitUse> {
        self.current().as_ref().and_then(WaitingLease::take_use)
    }

    /// The id of the current waiting lease while it is kept alive (for the key check).
    pub fn live_id(&self) -> Option<i64> {
        self.current().as_ref().filter(|l| !l.usage().ended).map(|l| l.id)
    }

    /// A use of the current waiting lease, granting one (one `LeaseGrant`) when there is
    /// none with time to spare.
    ///
    /// # Errors
    /// The grant's ([`Cluster::call`]).
    ///
    /// # Cancel safety
    /// Cancel safe: a grant whose answer the caller dropped carries nothing and lapses
    /// after its TTL.
    pub async fn use_or_grant(&self, cluster: &Cluster) -> Result<WaitUse> {
        if let Some(u) = self.try_use() {
            return Ok(u);
        }
        let _one = self.granting.lock().await;
        if let Some(u) = self.try_use() {
            return Ok(u); // another wait granted one meanwhile
        }
        let sent = Instant::now();
        let granted = cluster
            .call("granting the waiting lease", |mut c| async move {
                c.lease_grant(ASKED, None).await
            })
            .await?;
        let ttl = Duration::from_secs(granted.ttl().max(1) as u64);
        let lease = Arc::new(WaitingLease {
            id: granted.id(),
            ttl,
            state: Mutex::new(Usage {
                users: 1,
                idle_since: sent,
                valid_until: sent + ttl,
                ended: false,
            }),
        });
        tokio::spawn(keep_alive(Arc::downgrade(&lease), cluster.clone(), sent));
        tracing::debug!(lease = format_args!("{:x}", lease.id), ?ttl, "waiting lease granted");
        let previous = self.current().replace(Arc::clone(&lease));
        if let Some(p) = previous {
            p.usage().ended = true; // superseded: lapses once its users are gone
        }
        Ok(WaitUse { lease })
    }

    /// Lease `id` was found gone on the server: never handed out again.
    pub fn lapsed(&self, id: i64) {
        if let Some(l) = self.current().as_ref().filter(|l| l.id == id) {
            let mut s = l.usage();
            s.ended = true;
            s.valid_until = s.valid_until.min(Instant::now()); // gone: nothing rides on it
        }
    }

    /// Stops keeping the current lease alive and revokes it (with the session's end):
    /// every key still on it goes at once.
    ///
    /// # Errors
    /// The revoke's error; the lease then lapses by its TTL.
    pub async fn end(&self, cluster: &Cluster) -> Result<()> {
        let Some(lease) = self.current().take() else {
            return Ok(());
        };
        lease.usage().ended = true;
        crate::cleanup::revoke(cluster, lease.id).await
    }
}

/// Keeps `lease` alive every third of its TTL while it has users, and for one TTL after
/// the last left; then lets it lapse. Ends when the lease is gone on the server or no
/// keep-alive was confirmed within its TTL (its keys are then gone or about to be: the
/// waits on it find out at their next read or at their turn's move, and queue again).
async fn keep_alive(lease: Weak<WaitingLease>, cluster: Cluster, granted_at: Instant) {
    let Some(l) = lease.upgrade() else { return };
    let (id, ttl) = (l.id, l.ttl);
    drop(l);
    let (interval, linger) = (ttl / 3, ttl);
    let mut next = granted_at + interval;
    let mut backoff = Duration::from_millis(10);
    loop {
        tokio::time::sleep_until(next).await;
        let Some(l) = lease.upgrade() else { return };
        let now = Instant::now();
        {
            let mut s = l.usage();
            let idle = s.users == 0 && now >= s.idle_since + linger;
            if s.ended && s.users == 0 || idle || now >= s.valid_until {
                s.ended = true;
                tracing::debug!(lease = format_args!("{:x}", id), "waiting lease left to lapse");
                return;
            }
        }
        let sent = Instant::now();
        match keep_alive_once(&cluster, id).await {
            Ok(true) => {
                l.usage().valid_until = sent + ttl;
                next = sent + interval;
                backoff = Duration::from_millis(10);
            }
            Ok(false) => {
                let mut s = l.usage();
                s.ended = true;
                s.valid_until = s.valid_until.min(Instant::now()); // gone: nothing rides on it
                tracing::debug!(lease = format_args!("{:x}", id), "waiting lease gone on the server");
                return;
            }
            Err(e) => {
                tracing::debug!(error = %e, "waiting lease keep-alive failed; retrying while it may live");
                let until = l.usage().valid_until;
                next = (Instant::now() + backoff).min(until);
                backoff = (backoff * 2).min(interval.max(Duration::from_millis(10)));
            }
        }
    }
}
