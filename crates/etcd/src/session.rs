//! The session: one etcd lease per backend instance, kept alive by one keep-alive stream
//! in the background and shared by every auto-renewed lock the instance holds, so renewal
//! cost does not grow with the number of locks.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fencelock_core::{LeaseRegistry, LeaseReporter, LostReason, Result};
use tokio::sync::watch;
use tokio::task::AbortHandle;
use tokio::time::Instant;

use crate::client::Cluster;

/// Where the session stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum SessionState {
    /// The lease lives at least until this instant (last confirmed keep-alive's send + TTL).
    Alive(Instant),
    /// The lease expired, was revoked, or could not be kept alive.
    Lost(String),
}

/// One lease and its keep-alive task.
pub(crate) struct Session {
    pub id: i64,
    pub ttl: Duration,
    state: watch::Sender<SessionState>,
    locks: LeaseRegistry,
    keepalives: Arc<AtomicU64>,
    task: Mutex<Option<AbortHandle>>,
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
    pub async fn start(cluster: &Cluster, ttl: Duration, keepalives: Arc<AtomicU64>) -> Result<Arc<Session>> {
        let sent = Instant::now();
        let secs = ttl.as_secs().max(1) as i64;
        let granted = cluster
            .call("granting the session lease", |mut c| async move {
                c.lease_grant(secs, None).await
            })
            .await?;
        let ttl = Duration::from_secs(granted.ttl().max(1) as u64);
        let (state, _) = watch::channel(SessionState::Alive(sent + ttl));
        let session = Arc::new(Session {
            id: granted.id(),
            ttl,
            state,
            locks: LeaseRegistry::new(),
            keepalives,
            task: Mutex::new(None),
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

    /// Registers a lock's reporter, to be told when the session is lost. Returns its id.
    pub fn register(&self, reporter: LeaseReporter) -> u64 {
        let id = self.locks.register(reporter);
        if let SessionState::Lost(why) = &*self.state.borrow() {
            self.locks.lost_all(&Self::reason(why));
        }
        id
    }

    /// Forgets a lock (released).
    pub fn unregister(&self, id: u64) {
        self.locks.unregister(id);
    }

    /// How many locks ride on this session.
    pub fn lock_count(&self) -> usize {
        self.locks.len()
    }

    fn reason(why: &str) -> LostReason {
        LostReason::Backend(format!("etcd session lease lost: {why}"))
    }

    fn lose(&self, why: String) {
        let changed = self.state.send_if_modified(|s| {
            if matches!(s, SessionState::Alive(_)) {
                *s = SessionState::Lost(why.clone());
                true
            } else {
                false
            }
        });
        if changed {
            tracing::warn!(lease = format_args!("{:x}", self.id), %why, "session lost");
            self.locks.lost_all(&Self::reason(&why));
        }
    }

    /// Stops keeping the lease alive (the lease then expires on the server by its TTL).
    pub fn stop(&self) {
        if let Some(t) = self.task.lock().unwrap_or_else(|p| p.into_inner()).take() {
            t.abort();
        }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The keep-alive loop: one stream, one request every third of the TTL; a broken stream is
/// reopened (another member may answer) while the lease can still be alive; a reply with
/// TTL 0 (expired or revoked) or no confirmed reply within the TTL loses the session.
async fn keep_alive(session: std::sync::Weak<Session>, cluster: Cluster, granted_at: Instant) {
    let Some(s) = session.upgrade() else { return };
    let (id, ttl, counter) = (s.id, s.ttl, Arc::clone(&s.keepalives));
    drop(s);
    let interval = ttl / 3;
    let mut last_ok = granted_at;
    let mut stream = None;
    let mut backoff = Duration::from_millis(10);
    let mut next = last_ok + interval;
    loop {
        tokio::time::sleep_until(next).await;
        let Some(s) = session.upgrade() else { return };
        let deadline = last_ok + ttl;
        if Instant::now() >= deadline {
            s.lose(format!("no keep-alive confirmed within the {ttl:?} TTL"));
            return;
        }
        if stream.is_none() {
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
                    last_ok = sent;
                    backoff = Duration::from_millis(10);
                    s.state.send_replace(SessionState::Alive(sent + ttl));
                    next = sent + interval;
                }
                Err(e) if crate::error::lease_not_found(&e) => {
                    s.lose("the lease expired or was revoked on the server".into());
                    return;
                }
                Err(e) => {
                    tracing::debug!(error = %e, "keep-alive stream failed; retrying while the lease may live");
                    next = (Instant::now() + backoff).min(deadline);
                    backoff = (backoff * 2).min(interval.max(Duration::from_millis(10)));
                }
            }
            continue;
        }
        let Some((keeper, replies)) = stream.as_mut() else {
            continue;
        };
        let sent = Instant::now();
        counter.fetch_add(1, Ordering::Relaxed);
        let exchange = async {
            keeper.keep_alive().await?;
            replies.message().await
        };
        match tokio::time::timeout(deadline.saturating_duration_since(sent), exchange).await {
            Ok(Ok(Some(reply))) if reply.ttl() > 0 => {
                last_ok = sent;
                backoff = Duration::from_millis(10);
                let valid = sent + Duration::from_secs(reply.ttl() as u64).min(ttl);
                s.state.send_replace(SessionState::Alive(valid));
                next = sent + interval;
            }
            Ok(Ok(Some(_))) => {
                s.lose("the lease expired or was revoked on the server".into());
                return;
            }
            Ok(Err(e)) if e.to_string().contains("not found") => {
                s.lose(format!("the lease is gone on the server: {e}"));
                return;
            }
            Ok(Err(etcd_client::Error::LeaseKeepAliveError(m))) if m.contains("not found") => {
                s.lose("the lease expired or was revoked on the server".into());
                return;
            }
            Ok(Ok(None)) | Ok(Err(_)) => {
                stream = None;
                next = (Instant::now() + backoff).min(deadline);
                backoff = (backoff * 2).min(interval.max(Duration::from_millis(10)));
            }
            Err(_) => {
                s.lose(format!("no keep-alive confirmed within the {ttl:?} TTL"));
                return;
            }
        }
    }
}
