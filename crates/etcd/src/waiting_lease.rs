//! The waiting lease: a short lease per session that queued keys ride on, so a waiter that
//! dies while queued (SIGKILL, a crash) blocks the others for this lease's TTL, not the
//! session's (issue 14).
//!
//! * **Asked TTL**: [`ASKED`], 1 s. etcd raises a TTL below its minimum (1.5 × its election
//!   timeout, rounded up to whole seconds) without a word: 2 s on a stock server, 1 s with
//!   the tests' 100 ms election timeout. The raised value is accepted: this TTL bounds only
//!   how long a dead waiter blocks the queue, not how long a holder is trusted: a grant is
//!   handed out on the watch push valid no longer than this lease lives, and its first
//!   renewal, a third of the way through that validity, moves its key onto the session
//!   lease (`EtcdGrant::settle` in [`crate::grant`]), after which the session's validity
//!   is the grant's; a holder that releases sooner never moves it.
//!   On a slow link the TTL asked is longer: [`RTT_FACTOR`] × the last round trip seen
//!   (rounded up to whole seconds, at most the session's TTL), because that grant is
//!   valid only until the lease's last confirmed keep-alive + TTL and its move must land
//!   within that; a lease too short for the link as now seen is not handed out again (a
//!   new one is granted). With etcd's minimum alone, every grant after a wait was lost on
//!   a 400 ms round trip against a 1 s minimum (`tests/dead_waiter.rs`,
//!   `a_waiter_on_a_slow_link_keeps_the_lock_it_was_granted`).
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
//! * **Every lease granted is remembered until the server says it is gone**
//!   (`WaitingLeases::granted`): the current one, one *superseded* by a newer grant (too
//!   short for the link as now seen, or too close to its end) — kept alive while the waiters
//!   on it wait, so a key of ours may still ride on it, or a late put land on it — and one
//!   that was granted but never handed out (a slow link's first grant, replaced by a
//!   longer one at once). The session's key check lists each of them, and drops one once
//!   etcd answers that it is gone; `close()` revokes them all (in parallel, each bounded by
//!   the request timeout). Before, only the current one was listed and revoked: a stray put
//!   on a superseded lease stayed as long as its waiters waited, and that lease outlived
//!   `close()` by up to its TTL.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use fencelock_core::cleanup::Cleanups;
use fencelock_core::{LockError, Result};
use tokio::time::Instant;

use crate::client::Cluster;
use crate::error::BACKEND;
use crate::finish::finish_on_drop;
use crate::wait::keep_alive_once;

/// The TTL asked of etcd, whole seconds (it raises it to its minimum), on a fast link.
const ASKED: i64 = 1;

/// The waiting lease must outlive this many round trips to etcd: a grant handed out on
/// the push is valid until the lease's last confirmed keep-alive's send + TTL — with a
/// keep-alive every third of the TTL, answered a round trip later, at least ⅔ TTL − 1
/// round trip ahead at any moment — and its key's move onto the session lease, made by
/// its first renewal a third of the way through that validity, takes one round trip more,
/// which must land (and the renewal be answered) within the two thirds left: TTL ≥ 3.75
/// round trips (3 while the move was sent at the grant); 5 leaves room for a slower write.
/// On a link whose round trip is a good part of etcd's minimum TTL (400 ms against 1 s)
/// every grant after a wait was lost before its move landed; a longer waiting lease there
/// costs a dead waiter a few round trips more, nothing else.
const RTT_FACTOR: u32 = 5;

/// Whole seconds of TTL for a link with round trip `rtt`, at most `max` (the session's: a
/// waiting lease as long as the session lease is no better than the session lease).
fn asked_for(rtt: Duration, max: Duration) -> i64 {
    let need = (rtt * RTT_FACTOR).as_secs_f64().ceil() as i64;
    need.clamp(ASKED, (max.as_secs() as i64).max(ASKED))
}

/// Every waiting lease of a session that may still be alive (see [`WaitingLeases`]).
type Granted = Arc<Mutex<Remembered>>;

#[derive(Debug, Default)]
struct Remembered {
    leases: Vec<Arc<WaitingLease>>,
    /// Set by [`WaitingLeases::end`]: a grant answered later is revoked at once, not
    /// remembered (nothing would revoke it).
    ended: bool,
}

/// The waiting leases of one session: at most one current.
#[derive(Debug)]
pub(crate) struct WaitingLeases {
    current: Mutex<Option<Arc<WaitingLease>>>,
    /// Every lease granted that may still be alive on the server, the current one
    /// included, until a keep-alive, a key check, a put or a revoke finds it gone: what the
    /// key check lists and `end` revokes. Bounded by the grants made while they live (a
    /// grant is made only when no lease with time to spare is kept alive, one at a time).
    granted: Granted,
    /// One grant at a time: waits that start together share it.
    granting: tokio::sync::Mutex<()>,
    /// The last round trip of a grant or keep-alive of a waiting lease, in microseconds
    /// (the largest of the recent ones: it decays by a quarter at each new sample).
    rtt: Arc<AtomicU64>,
    /// The session's TTL: the longest TTL asked.
    max_ttl: Duration,
}

/// Records a round trip into `rtt` (see [`WaitingLeases::rtt`]).
fn record_rtt(rtt: &AtomicU64, sample: Duration) {
    let sample = u64::try_from(sample.as_micros()).unwrap_or(u64::MAX);
    let _ = rtt.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |old| {
        Some(sample.max(old - old / 4))
    });
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
    /// A lease granted with `ttl` by a request sent at `sent`, with `users` uses.
    fn new(id: i64, ttl: Duration, sent: Instant, users: usize) -> Arc<Self> {
        Arc::new(WaitingLease {
            id,
            ttl,
            state: Mutex::new(Usage {
                users,
                idle_since: sent,
                valid_until: sent + ttl,
                ended: false,
            }),
        })
    }

    /// Found gone on the server: never handed out again, and nothing rides on it.
    fn gone(&self) {
        let mut s = self.usage();
        s.ended = true;
        s.valid_until = s.valid_until.min(Instant::now());
    }

    fn usage(&self) -> std::sync::MutexGuard<'_, Usage> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A use of the lease if it is still kept alive, at least a third of its TTL is left,
    /// and its TTL is long enough for the link's round trip `rtt` (see [`RTT_FACTOR`]).
    fn take_use(self: &Arc<Self>, rtt: Duration, max_ttl: Duration) -> Option<WaitUse> {
        let mut s = self.usage();
        if s.ended
            || s.valid_until.saturating_duration_since(Instant::now()) < self.ttl / 3
            || self.ttl < (rtt * RTT_FACTOR).min(max_ttl)
        {
            return None;
        }
        s.users += 1;
        Some(WaitUse {
            lease: Arc::clone(self),
        })
    }
}

impl WaitingLeases {
    pub fn new(max_ttl: Duration) -> Self {
        WaitingLeases {
            current: Mutex::new(None),
            granted: Granted::default(),
            granting: tokio::sync::Mutex::new(()),
            rtt: Arc::new(AtomicU64::new(0)),
            max_ttl,
        }
    }

    fn rtt(&self) -> Duration {
        Duration::from_micros(self.rtt.load(Ordering::Relaxed))
    }

    fn current(&self) -> std::sync::MutexGuard<'_, Option<Arc<WaitingLease>>> {
        self.current.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn granted(&self) -> std::sync::MutexGuard<'_, Remembered> {
        self.granted.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A use of the current waiting lease, if one is kept alive with time to spare; sends
    /// nothing (the enqueue's put names it only when it is there already).
    pub fn try_use(&self) -> Option<WaitUse> {
        let rtt = self.rtt();
        self.current().as_ref().and_then(|l| l.take_use(rtt, self.max_ttl))
    }

    /// Every waiting lease that may still be alive on the server, current or superseded,
    /// kept alive or left to lapse (for the key check: a key of ours, or a late put, may
    /// ride on any of them).
    pub fn maybe_alive(&self) -> Vec<i64> {
        self.granted().leases.iter().map(|l| l.id).collect()
    }

    /// Lease `id` was found gone on the server (a keep-alive, a key check or a put was
    /// answered "not found", or a revoke was confirmed): never handed out again, nothing
    /// rides on it, and it is no longer listed nor revoked.
    pub fn gone(&self, id: i64) {
        self.granted().leases.retain(|l| {
            if l.id == id {
                l.gone();
            }
            l.id != id
        });
    }

    /// A use of the current waiting lease, granting one (one `LeaseGrant`) when there is
    /// none with time to spare.
    ///
    /// # Errors
    /// The grant's ([`Cluster::call`]).
    ///
    /// # Cancel safety
    /// Cancel safe: a grant the caller dropped is finished in the background, counted
    /// among `cleanups` (so `close` waits for it), and its lease remembered like any other
    /// (listed by the key check, revoked by `end`): it carries nothing and lapses after its
    /// TTL. Before, a grant dropped in flight (a wait ended by `close`) left a lease that
    /// outlived `close`.
    pub async fn use_or_grant(&self, cluster: &Cluster, cleanups: &Cleanups) -> Result<WaitUse> {
        if let Some(u) = self.try_use() {
            return Ok(u);
        }
        let _one = self.granting.lock().await;
        if let Some(u) = self.try_use() {
            return Ok(u); // another wait granted one meanwhile
        }
        // Asked long enough for the link as last seen; once more, longer, if this grant's
        // own round trip says the link is slower than that (a slow link's first wait).
        let mut asked = asked_for(self.rtt(), self.max_ttl);
        let mut tries = 0;
        let (sent, lease) = loop {
            tries += 1;
            let sent = Instant::now();
            let lease =
                finish_on_drop(cleanups, grant(cluster.clone(), asked, sent, Arc::clone(&self.granted))).await?;
            record_rtt(&self.rtt, sent.elapsed());
            let need = asked_for(self.rtt(), self.max_ttl);
            if need <= asked || lease.ttl.as_secs() >= need as u64 || tries == 2 {
                break (sent, lease);
            }
            asked = need;
            // The lease just granted carries nothing and lapses; until then it is listed
            // and revoked with the others (never handed out: it is ended already).
            lease.usage().ended = true;
        };
        let ttl = lease.ttl;
        lease.usage().users = 1;
        tokio::spawn(keep_alive(
            Arc::downgrade(&lease),
            cluster.clone(),
            sent,
            Arc::clone(&self.rtt),
        ));
        tracing::debug!(lease = format_args!("{:x}", lease.id), ?ttl, "waiting lease granted");
        let previous = self.current().replace(Arc::clone(&lease));
        if let Some(p) = previous {
            // Superseded: never handed out again, kept alive while its users wait, then
            // left to lapse — listed by the key check and revoked by `end` meanwhile.
            p.usage().ended = true;
            tracing::debug!(lease = format_args!("{:x}", p.id), "waiting lease superseded");
        }
        Ok(WaitUse { lease })
    }

    /// Lease `id` is never handed out again (it may be gone on the server: a put naming it
    /// was refused and it could not be told which lease was gone); it stays kept alive
    /// while its users wait, and listed and revoked as a superseded one.
    pub fn retire(&self, id: i64) {
        if let Some(l) = self.granted().leases.iter().find(|l| l.id == id) {
            l.usage().ended = true;
        }
    }

    /// Stops keeping every waiting lease alive and revokes each one that may still be
    /// alive — current, superseded, or granted and never used — in parallel (with the
    /// session's end): every key still on them goes at once, and a put still in flight
    /// that names one fails afterwards.
    ///
    /// # Errors
    /// The error of a revoke that was not confirmed (the others still ran); that lease then
    /// lapses by its TTL.
    ///
    /// # Cancel safety
    /// Dropping it stops the revokes not yet answered; those leases lapse by their TTL.
    pub async fn end(&self, cluster: &Cluster) -> Result<()> {
        self.current().take();
        let leases = {
            let mut g = self.granted();
            g.ended = true; // a grant still in flight revokes its lease itself
            std::mem::take(&mut g.leases)
        };
        // One request each, each bounded by the request timeout (its repeats included).
        let mut revokes = tokio::task::JoinSet::new();
        for lease in leases {
            lease.usage().ended = true;
            let cluster = cluster.clone();
            revokes.spawn(async move { (lease.id, crate::cleanup::revoke(&cluster, lease.id).await) });
        }
        let mut result = Ok(());
        while let Some(done) = revokes.join_next().await {
            match done {
                Ok((_, Ok(()))) => {}
                Ok((id, Err(e))) => {
                    tracing::warn!(lease = format_args!("{id:x}"), error = %e, "waiting lease not revoked; it lapses by its TTL");
                    result = Err(e);
                }
                Err(e) => tracing::warn!(error = %e, "revoking a waiting lease: the task failed"),
            }
        }
        result
    }
}

/// One `LeaseGrant` of `asked` seconds (sent at `sent`), the lease remembered in `granted`
/// (no user yet) as soon as it is answered — also when the caller dropped it meanwhile
/// ([`finish_on_drop`] runs it to its end). Answered after the session's waiting leases
/// were ended (`close`, or the session replaced), it is revoked at once instead.
///
/// # Errors
/// The grant's ([`Cluster::call`]); a temporary error when the leases were ended.
async fn grant(cluster: Cluster, asked: i64, sent: Instant, granted: Granted) -> Result<Arc<WaitingLease>> {
    let r = cluster
        .call("granting the waiting lease", |mut c| async move {
            c.lease_grant(asked, None).await
        })
        .await?;
    let lease = WaitingLease::new(r.id(), Duration::from_secs(r.ttl().max(1) as u64), sent, 0);
    {
        let mut g = granted.lock().unwrap_or_else(|p| p.into_inner());
        if !g.ended {
            g.leases.push(Arc::clone(&lease));
            return Ok(lease);
        }
    }
    if let Err(e) = crate::cleanup::revoke(&cluster, r.id()).await {
        tracing::debug!(lease = format_args!("{:x}", r.id()), error = %e, "a waiting lease granted after its session ended was not revoked; it lapses by its TTL");
    }
    Err(LockError::backend_temporary(
        BACKEND,
        "the session ended while its waiting lease was granted",
        Ended,
    ))
}

/// The session's waiting leases were ended while one was being granted.
#[derive(Debug, thiserror::Error)]
#[error("the session's waiting leases were ended")]
struct Ended;

/// Keeps `lease` alive every third of its TTL while it has users, and for one TTL after
/// the last left; then lets it lapse. Ends when the lease is gone on the server or no
/// keep-alive was confirmed within its TTL (its keys are then gone or about to be: the
/// waits on it find out at their next read or at their turn's move, and queue again).
async fn keep_alive(lease: Weak<WaitingLease>, cluster: Cluster, granted_at: Instant, rtt: Arc<AtomicU64>) {
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
                record_rtt(&rtt, sent.elapsed());
                l.usage().valid_until = sent + ttl;
                next = sent + interval;
                backoff = Duration::from_millis(10);
            }
            Ok(false) => {
                l.gone(); // the next key check stops listing it
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
