//! The session: one etcd lease per backend instance, kept alive by one keep-alive stream
//! in the background and shared by every auto-renewed lock the instance holds, so renewal
//! cost does not grow with the number of locks.
//!
//! A live lease alone says nothing about the keys on it (an operator may delete them), so
//! after each confirmed keep-alive the session also lists the keys attached to its lease —
//! one `LeaseTimeToLive` request with keys, whatever the number of locks — and compares
//! them with its **claims**: the key of every queue entry and grant of ours on this lease,
//! registered before its put is sent.
//!
//! * A granted claim whose key is missing is lost: its holder is told at once
//!   (`LostReason::NotHeld`), within one keep-alive period of the deletion.
//! * A key on our lease that no claim names is an abandoned one — a queue put that went
//!   unanswered and landed late, a release that was not confirmed — and is deleted, guarded
//!   so that it can only remove a key created before the listing.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use etcd_client::{Compare, CompareOp, LeaseTimeToLiveOptions, Txn, TxnOp};
use fencelock_core::options::duration_text;
use fencelock_core::{LeaseReporter, LockError, LostReason, Result};
use tokio::sync::watch;
use tokio::task::AbortHandle;
use tokio::time::Instant;

use crate::client::Cluster;
use crate::error::{kind, lease_gone, Kind};
use crate::waiting_lease::WaitingLeases;

/// Where the session stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum SessionState {
    /// The lease lives at least until this instant (last confirmed keep-alive's send + TTL).
    Alive(Instant),
    /// The lease expired, was revoked, or could not be kept alive.
    Lost(String),
}

/// A key of ours on the session lease.
#[derive(Debug)]
struct Claim {
    key: String,
    /// Set once the queue entry became a grant: whom to tell if the key disappears, and
    /// since when the key is on the session lease (a listing sent before then may not show
    /// it yet); `None` while it may still ride on the waiting lease (its move is pending).
    granted: Option<(LeaseReporter, Option<Instant>)>,
}

/// One lease and its keep-alive task.
pub(crate) struct Session {
    pub id: i64,
    pub ttl: Duration,
    state: watch::Sender<SessionState>,
    claims: Mutex<HashMap<u64, Claim>>,
    next_claim: AtomicU64,
    keepalives: Arc<AtomicU64>,
    task: Mutex<Option<AbortHandle>>,
    /// The short lease queued keys ride on ([`crate::waiting_lease`]).
    pub waiting: WaitingLeases,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("id", &format_args!("{:x}", self.id))
            .field("state", &*self.state.borrow())
            .finish()
    }
}

impl Session {
    /// Grants a lease of `ttl` and starts keeping it alive.
    ///
    /// # Errors
    /// `InvalidConfig` when etcd granted a longer TTL than asked: it raises a TTL below its
    /// minimum (1.5 × its election timeout, rounded up to whole seconds; 2 s on a stock
    /// server) without a word, and the longer session would keep a dead or cut-off
    /// holder's locks longer than `session_ttl` — for `fencelock run --ttl`, which sets the
    /// session from the TTL, longer than the TTL. The lease granted is revoked. Else as
    /// [`Cluster::call`].
    pub async fn start(cluster: &Cluster, ttl: Duration, keepalives: Arc<AtomicU64>) -> Result<Arc<Session>> {
        let sent = Instant::now();
        let secs = ttl.as_secs().max(1) as i64;
        let granted = cluster
            .call("granting the session lease", |mut c| async move {
                c.lease_grant(secs, None).await
            })
            .await?;
        if granted.ttl() > secs {
            // Best effort: a lease not revoked ends with its TTL, and carries nothing.
            let _ = crate::cleanup::revoke(cluster, granted.id()).await;
            let (asked, minimum) = (
                duration_text::human(Duration::from_secs(secs as u64)),
                duration_text::human(Duration::from_secs(granted.ttl() as u64)),
            );
            return Err(LockError::invalid_config(format!(
                "session_ttl {asked} is below the minimum lease TTL of {minimum} that {} grants (1.5 × its election \
                 timeout, rounded up to whole seconds), and the server would keep a dead holder's locks {minimum}: \
                 set session_ttl to at least {minimum} (`fencelock run --ttl` sets it, rounded up to whole \
                 seconds, when the URL does not)",
                cluster.display()
            )));
        }
        let ttl = Duration::from_secs(granted.ttl().max(1) as u64);
        let (state, _) = watch::channel(SessionState::Alive(sent + ttl));
        let session = Arc::new(Session {
            id: granted.id(),
            ttl,
            state,
            claims: Mutex::default(),
            next_claim: AtomicU64::new(0),
            keepalives,
            task: Mutex::new(None),
            waiting: WaitingLeases::new(ttl),
        });
        let task = tokio::spawn(keep_alive(Arc::downgrade(&session), cluster.clone(), sent));
        *session.task.lock().unwrap_or_else(|p| p.into_inner()) = Some(task.abort_handle());
        tracing::debug!(lease = format_args!("{:x}", session.id), ?ttl, "session started");
        Ok(session)
    }

    /// The lease is valid until this instant, or `None` when lost.
    pub fn valid_until(&self) -> Option<Instant> {
        match &*self.state.borrow() {
            SessionState::Alive(t) if *t > Instant::now() => Some(*t),
            _ => None,
        }
    }

    /// `true` while the lease lives.
    pub fn is_alive(&self) -> bool {
        self.valid_until().is_some()
    }

    fn claims(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Claim>> {
        self.claims.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Claims `key` as ours before its put is sent; returns the claim's id.
    pub fn claim(&self, key: &str) -> u64 {
        let id = self.next_claim.fetch_add(1, Ordering::Relaxed);
        self.claims().insert(
            id,
            Claim {
                key: key.to_owned(),
                granted: None,
            },
        );
        id
    }

    /// The claim became a grant: its holder is told when the session or the key is lost.
    /// `on_session`: the key rides on the session lease already; else it is still on the
    /// waiting lease, and [`on_session`](Self::on_session) says when it moved.
    pub fn granted(&self, id: u64, reporter: LeaseReporter, on_session: bool) {
        if let Some(c) = self.claims().get_mut(&id) {
            c.granted = Some((reporter.clone(), on_session.then(Instant::now)));
        }
        if let SessionState::Lost(why) = &*self.state.borrow() {
            reporter.lost(Self::reason(why));
        }
    }

    /// A granted key's move onto the session lease was confirmed: from now on the key
    /// check expects it there.
    pub fn on_session(&self, id: u64) {
        if let Some(Claim {
            granted: Some((_, since @ None)),
            ..
        }) = self.claims().get_mut(&id)
        {
            *since = Some(Instant::now());
        }
    }

    /// The key is no longer ours to keep (released or abandoned): if it is still on the
    /// lease at the next check, the check deletes it.
    pub fn unclaim(&self, id: u64) {
        self.claims().remove(&id);
    }

    /// etcd answered that the session lease is gone (a put naming it was refused "lease not
    /// found", and a read of it confirmed it when another lease was named too): the
    /// session is lost at once — every lock on it is told, and the next acquire starts a
    /// new session instead of failing until the next keep-alive finds out.
    pub fn lease_found_gone(&self, why: &str) {
        self.lose(why.to_owned());
    }

    fn reason(why: &str) -> LostReason {
        LostReason::Backend(format!("etcd session lease lost: {why}"))
    }

    fn lose(&self, why: String) {
        self.lose_or_end(why, false);
    }

    /// Marks the session lost (`closing`: by our own `end`) and tells every lease on it.
    fn lose_or_end(&self, why: String, closing: bool) {
        let changed = self.state.send_if_modified(|s| {
            if matches!(s, SessionState::Alive(_)) {
                *s = SessionState::Lost(why.clone());
                true
            } else {
                false
            }
        });
        if changed {
            let reporters: Vec<LeaseReporter> = self
                .claims()
                .values()
                .filter_map(|c| c.granted.as_ref().map(|(r, _)| r.clone()))
                .collect();
            // Closing a session that holds nothing is the normal end of a client, not a
            // loss anyone must hear about; every other end of a session is.
            if closing && reporters.is_empty() {
                tracing::debug!(lease = format_args!("{:x}", self.id), %why, "session ended");
            } else {
                tracing::warn!(lease = format_args!("{:x}", self.id), %why, held = reporters.len(), "session lost");
            }
            let reason = Self::reason(&why);
            for r in reporters {
                r.lost(reason.clone());
            }
        }
    }

    /// Stops keeping the lease alive (the lease then expires on the server by its TTL).
    fn stop(&self) {
        if let Some(t) = self.task.lock().unwrap_or_else(|p| p.into_inner()).take() {
            t.abort();
        }
    }

    /// Ends the session as etcd's `Session.Close` does: every lock on it is told it is
    /// lost, the keep-alive stops, and the lease is revoked, which deletes every key on it
    /// in one request — and every waiting lease that may still be alive with it
    /// ([`WaitingLeases::end`]).
    ///
    /// # Errors
    /// The revoke's error when it was not confirmed; the lease then expires by its TTL.
    pub async fn end(&self, cluster: &Cluster) -> Result<()> {
        self.lose_or_end("the client closed its session".into(), true);
        self.stop();
        // Every waiting lease (current, superseded, unused) and the session lease at once.
        let (waiting, session) = tokio::join!(self.waiting.end(cluster), crate::cleanup::revoke(cluster, self.id));
        session.and(waiting)
    }

    /// Ends a session that is being replaced because it was lost or ran past its validity
    /// (as [`end`](Self::end), the locks still on it told their session was lost, not
    /// closed): its waiting leases and its lease are revoked, should they still live.
    ///
    /// # Errors
    /// As [`end`](Self::end).
    pub async fn end_replaced(&self, cluster: &Cluster) -> Result<()> {
        self.lose("no keep-alive confirmed it in time; replaced by a new session".into());
        self.end(cluster).await
    }

    /// Lists the keys on the lease and settles them against the claims (see the module
    /// docs). Returns `false` when the lease is gone.
    async fn check_keys(&self, cluster: &Cluster) -> bool {
        let sent = Instant::now();
        let id = self.id;
        let listed = cluster
            .call("listing the session's keys", |mut c| async move {
                c.lease_time_to_live(id, Some(LeaseTimeToLiveOptions::new().with_keys()))
                    .await
            })
            .await;
        let listed = match listed {
            // TimeToLive answers whole seconds rounded down: 0 is a lease still there with
            // under a second left (a 1 s session reads 0 right after its keep-alive).
            Ok(l) if l.ttl() >= 0 => l,
            Ok(_) => return false, // TTL -1: the lease does not exist
            Err(e) if lease_gone(&e) => return false,
            Err(e) => {
                tracing::warn!(error = %e, "listing the session's keys failed: deleted keys go unnoticed until the next period");
                return true;
            }
        };
        let listed_at = listed.header().map_or(0, |h| h.revision());
        // The waiting leases' keys too — the current one and any superseded or unused one
        // that may still be alive: a queue put on one that landed late is deleted as one on
        // the session is. Granted keys are always on the session once their move is
        // confirmed (before it they are not looked for), so only strays are looked for
        // there. One request per such lease, one after the other, each bounded by the
        // request timeout; a lease etcd reports gone is not listed again.
        let mut waiting = Vec::new();
        for w in self.waiting.maybe_alive() {
            let listed = cluster
                .call("listing the waiting lease's keys", |mut c| async move {
                    c.lease_time_to_live(w, Some(LeaseTimeToLiveOptions::new().with_keys()))
                        .await
                })
                .await;
            match listed {
                Ok(l) if l.ttl() >= 0 => waiting.push((w, l)),
                Ok(_) => self.waiting.gone(w), // TTL -1: gone, its keys with it
                Err(e) if lease_gone(&e) => self.waiting.gone(w),
                Err(e) => {
                    tracing::debug!(lease = format_args!("{w:x}"), error = %e, "listing a waiting lease's keys failed; again next period");
                }
            }
        }
        let on_lease: HashSet<&[u8]> = listed.keys().iter().map(Vec::as_slice).collect();
        let (gone, strays) = {
            let claims = self.claims();
            let gone: Vec<LeaseReporter> = claims
                .values()
                .filter_map(|c| match &c.granted {
                    Some((r, Some(at))) if *at < sent && !on_lease.contains(c.key.as_bytes()) => Some(r.clone()),
                    _ => None,
                })
                .collect();
            let claimed: HashSet<&[u8]> = claims.values().map(|c| c.key.as_bytes()).collect();
            let unclaimed = |lease: i64, at: i64, keys: &[Vec<u8>]| -> Vec<(Vec<u8>, i64, i64)> {
                keys.iter()
                    .filter(|k| !claimed.contains(k.as_slice()))
                    .map(|k| (k.clone(), lease, at))
                    .collect()
            };
            let mut strays = unclaimed(id, listed_at, listed.keys());
            for (w, l) in &waiting {
                strays.extend(unclaimed(*w, l.header().map_or(0, |h| h.revision()), l.keys()));
            }
            (gone, strays)
        };
        for r in gone {
            if r.lost(LostReason::NotHeld) {
                tracing::warn!(
                    lease = format_args!("{:x}", id),
                    "a lock key on the session was deleted on the server"
                );
            }
        }
        for (key, lease, listed_at) in strays {
            // Only a key created before the listing and still on that lease: a claim made
            // after the listing puts a key with a later create revision.
            let txn = Txn::new()
                .when([
                    Compare::create_revision(key.clone(), CompareOp::Less, listed_at + 1),
                    Compare::lease(key.clone(), CompareOp::Equal, lease),
                ])
                .and_then([TxnOp::delete(key.clone(), None)]);
            let deleted = cluster
                .call("deleting an abandoned key of the session", |mut c| {
                    let txn = txn.clone();
                    async move { c.txn(txn).await }
                })
                .await;
            tracing::debug!(key = %String::from_utf8_lossy(&key), ok = deleted.is_ok(), "abandoned key deleted");
        }
        true
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The keep-alive loop: one stream, one request every third of the TTL; a broken stream is
/// reopened (another member may answer) while the lease can still be alive; a reply with
/// TTL 0 (expired or revoked) or no confirmed reply within the TTL loses the session. After
/// each confirmed keep-alive, the keys on the lease are checked.
async fn keep_alive(session: std::sync::Weak<Session>, cluster: Cluster, granted_at: Instant) {
    let Some(s) = session.upgrade() else { return };
    let (id, ttl, counter) = (s.id, s.ttl, Arc::clone(&s.keepalives));
    drop(s);
    let interval = ttl / 3;
    let mut last_ok = granted_at;
    let mut stream = None;
    let mut backoff = Duration::from_millis(10);
    let mut next = last_ok + interval;
    let mut checking = None;
    loop {
        tokio::time::sleep_until(next).await;
        let Some(s) = session.upgrade() else { return };
        let deadline = last_ok + ttl;
        if Instant::now() >= deadline {
            s.lose(format!("no keep-alive confirmed within the {ttl:?} TTL"));
            return;
        }
        let confirmed = if stream.is_none() {
            // Opening the stream sends a keep-alive and waits for its answer: it renews too.
            let sent = Instant::now();
            counter.fetch_add(1, Ordering::Relaxed);
            let opened = cluster
                .call("opening the keep-alive stream", |mut c| async move {
                    c.lease_keep_alive(id).await
                })
                .await;
            match opened {
                Ok(pair) => {
                    stream = Some(pair);
                    Some((sent, ttl))
                }
                // The opener reads its first reply inside the client library, header
                // unseen: "lease not found" may come from a member of another cluster
                // (a URL naming two; client::Answer). A read of the lease (only after
                // such an answer) tells: alive in the cluster the connect met, or that
                // read answered from elsewhere, and the session is kept while its TTL
                // lasts — the next open, after a short pause that does not grow (each
                // open is balanced anew), may reach a member of ours.
                Err(e) if lease_gone(&e) => {
                    let doing = "opening the keep-alive stream";
                    match cluster.refusal_stands(id, doing, "the session lease").await {
                        Ok(()) => {
                            s.lose("the lease expired or was revoked on the server".into());
                            return;
                        }
                        Err(elsewhere) => {
                            tracing::warn!(lease = format_args!("{id:x}"), error = %elsewhere, "keep-alive stream refused \"lease not found\" by a member of another cluster; the session is kept");
                            backoff = Duration::from_millis(25);
                            None
                        }
                    }
                }
                Err(e) => {
                    tracing::debug!(error = %e, "keep-alive stream failed; retrying while the lease may live");
                    None
                }
            }
        } else if let Some((keeper, replies)) = stream.as_mut() {
            let sent = Instant::now();
            counter.fetch_add(1, Ordering::Relaxed);
            let exchange = async {
                // A failed send means the stream is closed: open a new one.
                if keeper.keep_alive().await.is_err() {
                    return Ok(None);
                }
                replies.message().await
            };
            match tokio::time::timeout(deadline.saturating_duration_since(sent), exchange).await {
                // A reply from another cluster renews nothing of ours (client::Answer).
                Ok(Ok(Some(reply))) if cluster.same_cluster("keeping the session alive", &reply).is_err() => {
                    s.lose("a member of another etcd cluster answered the keep-alive: the URL names members of different clusters".into());
                    return;
                }
                Ok(Ok(Some(reply))) if reply.ttl() > 0 => {
                    Some((sent, Duration::from_secs(reply.ttl() as u64).min(ttl)))
                }
                Ok(Ok(Some(_))) => {
                    s.lose("the lease expired or was revoked on the server".into());
                    return;
                }
                Ok(Err(e)) if kind(&e) == Kind::LeaseGone => {
                    s.lose(format!("the lease is gone on the server: {e}"));
                    return;
                }
                Ok(Ok(None)) | Ok(Err(_)) => {
                    stream = None;
                    None
                }
                Err(_) => {
                    s.lose(format!("no keep-alive confirmed within the {ttl:?} TTL"));
                    return;
                }
            }
        } else {
            None
        };
        match confirmed {
            Some((sent, valid)) => {
                last_ok = sent;
                backoff = Duration::from_millis(10);
                // Never revives a session that was ended meanwhile.
                s.state.send_if_modified(|st| match st {
                    SessionState::Alive(_) => {
                        *st = SessionState::Alive(sent + valid);
                        true
                    }
                    SessionState::Lost(_) => false,
                });
                next = sent + interval;
                // The key check runs beside the keep-alives (a slow listing of many keys
                // must not delay the next keep-alive), one at a time.
                if checking
                    .as_ref()
                    .is_none_or(|c: &tokio::task::JoinHandle<()>| c.is_finished())
                {
                    let (s, cluster) = (Arc::clone(&s), cluster.clone());
                    checking = Some(tokio::spawn(async move {
                        if !s.check_keys(&cluster).await {
                            s.lose("the lease expired or was revoked on the server".into());
                        }
                    }));
                }
            }
            None => {
                next = (Instant::now() + backoff).min(deadline);
                backoff = (backoff * 2).min(interval.max(Duration::from_millis(10)));
            }
        }
    }
}
