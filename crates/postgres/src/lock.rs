//! [`PgLock`]: the backend.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use fencelock_core::closing::CloseGate;
use fencelock_core::options::validate_key;
use fencelock_core::waiting::{acquire_with, jitter, Attempt, CancelGuard};
use fencelock_core::{
    DistributedLock, Exclusion, FencingToken, GrantId, Guarantees, Lease, LeaseParts, LockError, LockOptions, Result,
    Scope, TokenOrder,
};
use tokio::time::Instant;

use crate::config::PgConfig;
use crate::grant::PgGrant;
use crate::node::{Busy, NodeGrant, PgNode, Settings};
use crate::waiters::Ticket;

/// What the backend promises on one primary that flushes every commit to disk before
/// acknowledging it (`fsync = on`, `synchronous_commit` not `off`, read at connect time).
pub const GUARANTEES_DURABLE: Guarantees = Guarantees {
    backend: "postgres",
    exclusion: Exclusion::Strict,
    tokens: TokenOrder::StrictlyMonotonic,
    scope: Scope::Network,
    assumptions: &[
        "one primary: a failover to an asynchronously replicated standby can lose the last grants and counter bumps, so exclusion and token order become conditional on the replication being synchronous",
        "fsync and synchronous_commit were on when the client connected; turning them off later breaks token order after a crash",
        "lease expiry runs on the server's clock (statement_timestamp()): a jump of that clock can end a lease early",
    ],
};

/// What the backend promises when the server may lose acknowledged commits in a crash
/// (`fsync = off` or `synchronous_commit = off`): a crash can forget a grant and the
/// counter bumps, so the lock can be granted twice and tokens repeated.
pub const GUARANTEES: Guarantees = Guarantees {
    backend: "postgres",
    exclusion: Exclusion::Conditional,
    tokens: TokenOrder::BestEffort,
    scope: Scope::Network,
    assumptions: &[
        "exclusive only while the server does not crash: fsync or synchronous_commit is off, so a crash can lose acknowledged grants",
        "tokens increase only while the counter's last commits survive; a crash can repeat tokens",
        "lease expiry runs on the server's clock (statement_timestamp()): a jump of that clock can end a lease early",
    ],
};

/// The guarantees that `settings` allow.
pub(crate) fn guarantees_for(settings: &Settings) -> Guarantees {
    let durable = settings.fsync == "on" && settings.synchronous_commit != "off";
    if durable {
        GUARANTEES_DURABLE
    } else {
        GUARANTEES
    }
}

enum Outcome {
    Granted(Lease),
    /// Refused (held, or an older waiter's turn).
    Busy(Busy),
}

/// The PostgreSQL lock service.
///
/// ```no_run
/// # async fn demo() -> fencelock_core::Result<()> {
/// use fencelock_core::{DistributedLock, LockOptions};
/// let locks = fencelock_postgres::PgLock::connect("postgres://app@127.0.0.1/app").await?;
/// let lease = locks.acquire("report", &LockOptions::new()).await?;
/// println!("token {}", lease.token());
/// lease.release().await?;
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct PgLock {
    node: PgNode,
    guarantees: Guarantees,
    /// Shut by [`close`](DistributedLock::close); shared by clones.
    gate: Arc<CloseGate>,
}

impl PgLock {
    /// Connects to the server a `postgres://` URL names (see [`PgConfig::from_url`]),
    /// creates the tables if they are missing, and reads `fsync` and
    /// `synchronous_commit` to choose the [`Guarantees`].
    ///
    /// # Errors
    ///
    /// [`LockError::InvalidConfig`] for a bad URL, refused credentials, a missing
    /// database, no privilege to create the tables, or a standby (read-only) server;
    /// [`LockError::Unavailable`] when no host of the URL gives a ready connection: each
    /// host is tried in turn, for at most `connect_timeout` + 2 × `timeout` (TCP connect,
    /// start-up and set-up together), and the error names each host and why it failed.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: a dropped connect leaves at most a connection that closes itself.
    pub async fn connect(url: &str) -> Result<Self> {
        Self::connect_with(PgConfig::from_url(url)?).await
    }

    /// Connects with explicit options (see [`connect`](Self::connect)).
    ///
    /// # Errors
    ///
    /// As [`connect`](Self::connect).
    ///
    /// # Cancel safety
    ///
    /// Cancel safe, as [`connect`](Self::connect).
    pub async fn connect_with(cfg: PgConfig) -> Result<Self> {
        cfg.validate()?;
        let node = PgNode::new(cfg);
        let settings = node.settings().await?;
        if settings.in_recovery {
            return Err(LockError::invalid_config(format!(
                "{} is a standby in recovery (read-only): connect to the primary",
                node.server()
            )));
        }
        let guarantees = guarantees_for(&settings);
        Ok(PgLock {
            node,
            guarantees,
            gate: Arc::default(),
        })
    }

    /// The server this instance talks to (for the election, which shares its connection).
    pub(crate) fn node(&self) -> &PgNode {
        &self.node
    }

    /// The options in use.
    pub fn config(&self) -> &PgConfig {
        self.node.config()
    }

    /// The server process id of the connection that listens for this instance's release
    /// notifications, or of the least busy one when none listens yet (connecting if
    /// needed): for operators, and for `pg_terminate_backend` in fault tests. The leases
    /// are spread over up to `connections` connections: see
    /// [`lease_backend_pid`](Self::lease_backend_pid) and
    /// [`backend_pids`](Self::backend_pids).
    ///
    /// # Errors
    ///
    /// [`LockError::Unavailable`] when no connection can be made.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe.
    pub async fn backend_pid(&self) -> Result<i32> {
        if let Some(listener) = self.node.listener() {
            return Ok(listener.backend_pid);
        }
        Ok(self.node.session().await?.backend_pid)
    }

    /// The server process ids of this instance's open connections (none before the first
    /// statement; at most `connections`).
    pub fn backend_pids(&self) -> Vec<i32> {
        self.node.sessions().iter().map(|s| s.backend_pid).collect()
    }

    /// The server process id of the connection that granted `lease` — the one whose end
    /// (say by `pg_terminate_backend`) reports it lost — while the lease is held through
    /// a live connection of this instance; `None` otherwise.
    pub fn lease_backend_pid(&self, lease: &Lease) -> Option<i32> {
        self.node.holder_of(lease.grant().as_str()).map(|s| s.backend_pid)
    }

    /// One acquire round trip. Cancel safe without a task of its own: a guard armed
    /// before the statement is sent releases the grant in the background when the caller
    /// drops this future before the outcome is handled.
    async fn grant(&self, key: &str, opts: &LockOptions, ticket: Option<i64>) -> Result<Outcome> {
        let node = &self.node;
        let grant = GrantId::random();
        let undo = {
            let grant = grant.to_string();
            CancelGuard::new(move || node.release_later(key, &grant))
        };
        let (token, session, sent_at) = match node.try_grant(key, &grant, opts.ttl(), ticket).await {
            Ok((NodeGrant::Granted(token), session, sent_at)) => (FencingToken::new(token), session, sent_at),
            Ok((NodeGrant::Busy(ms), _, _)) => {
                undo.disarm(); // refused: granted nowhere
                return Ok(Outcome::Busy(ms));
            }
            Err(e) => {
                undo.disarm(); // try_grant already releases an unheard grant
                return Err(e);
            }
        };
        tracing::debug!(%key, %token, "granted");
        let ops = Arc::new(PgGrant {
            node: node.clone(),
            session: Arc::downgrade(&session),
            key: key.to_owned(),
            grant: grant.to_string(),
            tracked: Mutex::new(None),
        });
        let lease = Lease::new(LeaseParts {
            key: key.to_owned(),
            token,
            grant: grant.clone(),
            sent_at,
            validity: opts.ttl(),
            options: *opts,
            ops: Arc::clone(&ops) as Arc<dyn fencelock_core::LeaseOps>,
        });
        // From here the lease's drop releases the grant.
        undo.disarm();
        if let Some(id) = session.track(lease.reporter(), key, grant.as_str(), opts.ttl()) {
            *ops.tracked.lock().unwrap_or_else(|p| p.into_inner()) = Some((Arc::downgrade(&session), id));
        }
        Ok(Outcome::Granted(lease))
    }

    /// One attempt of `acquire`. The first busy answer takes a ticket in the key's waiter
    /// queue and re-checks at once; later ones wait for a release naming our ticket or
    /// for the next moment a look can change anything (see [`retry_in`]), whichever
    /// comes first.
    async fn attempt(
        &self,
        key: &str,
        opts: &LockOptions,
        queue: &tokio::sync::Mutex<Option<Ticket>>,
    ) -> Result<Attempt> {
        let mut queue = queue.lock().await;
        let wake = queue.as_ref().map(Ticket::notified);
        let ticket = queue.as_ref().map(|t| t.ticket);
        match self.grant(key, opts, ticket).await? {
            Outcome::Granted(lease) => {
                if let Some(mut t) = queue.take() {
                    t.consumed = true; // the acquire statement removed the row
                }
                Ok(Attempt::Acquired(lease))
            }
            Outcome::Busy(_) if queue.is_none() => {
                let ticket = self.node.enqueue(key).await?;
                *queue = Some(Ticket::new(self.node.clone(), ticket));
                Ok(Attempt::Busy {
                    wake: None,
                    retry_at: Some(Instant::now()),
                })
            }
            Outcome::Busy(busy) => Ok(Attempt::Busy {
                wake,
                retry_at: Some(Instant::now() + retry_in(busy, self.node.config().poll)),
            }),
        }
    }
}

#[async_trait]
impl DistributedLock for PgLock {
    /// Takes the key if it is free or its holder's lease expired on the server: one
    /// statement, one round trip.
    ///
    /// # Errors
    ///
    /// [`LockError::InvalidInput`] for a bad key or TTL; [`LockError::Unavailable`] when
    /// the server does not answer within `timeout`; [`LockError::Backend`] for other
    /// server errors; [`LockError::Closed`] once `close()` was called.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: a grant that lands after the future was dropped is released in the
    /// background.
    #[tracing::instrument(level = "debug", skip(self, opts), fields(backend = "postgres"))]
    async fn try_acquire(&self, key: &str, opts: &LockOptions) -> Result<Option<Lease>> {
        self.gate
            .pass(async {
                validate_key(key)?;
                opts.validate_for_try()?;
                match self.grant(key, opts, None).await? {
                    Outcome::Granted(lease) => Ok(Some(lease.into_live()?)),
                    Outcome::Busy(_) => Ok(None),
                }
            })
            .await
    }

    /// Takes the key, waiting up to `opts.wait()`: woken by the release notification
    /// that names our waiter ticket, or looking again when the ticket ahead of ours or
    /// the holder's lease expires (at the latest every `4 × poll`).
    ///
    /// # Errors
    ///
    /// [`LockError::Timeout`] after the wait; [`LockError::Unavailable`] when the server
    /// stayed unreachable until then; [`LockError::Closed`] when `close()` was called
    /// before or during the wait; as [`try_acquire`](Self::try_acquire) otherwise.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: nothing stays held, and our waiter ticket is removed in the
    /// background.
    #[tracing::instrument(level = "debug", skip(self, opts), fields(backend = "postgres"))]
    async fn acquire(&self, key: &str, opts: &LockOptions) -> Result<Lease> {
        let queue = tokio::sync::Mutex::new(None);
        let wait = acquire_with(key, opts, || self.attempt(key, opts, &queue));
        self.gate.pass(wait).await
    }

    fn guarantees(&self) -> Guarantees {
        self.guarantees.clone()
    }

    fn describe(&self) -> String {
        self.node.server().to_owned()
    }

    /// Shuts this instance and its clones — waiting acquires end with
    /// [`LockError::Closed`] (their tickets and any grant that raced the close are given
    /// back in the background, as for a cancelled acquire), later calls fail with it —
    /// then finishes the background clean-ups (abandoned grants, left queues, releases of
    /// dropped leases — each counted from the moment it was decided, so a lease or an
    /// acquire dropped just before `close()` is given back before it returns), releases
    /// the leases still held through this instance (they are reported lost), and closes
    /// the connections.
    ///
    /// # Errors
    ///
    /// [`LockError::Unavailable`] when the clean-ups or releases did not finish within
    /// four statement timeouts; what is left then ends with its TTL.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: the clean-ups go on in the background.
    async fn close(&self) -> Result<()> {
        let limit = self.node.config().timeout * 4;
        let _closing = self.gate.close(limit).await;
        let cleaned = self.node.cleanups_finished(limit).await;
        let held = self.node.close_session("the client closed it");
        let releases = async {
            for (key, grant) in &held {
                let _ = self.node.release(None, key, grant).await;
            }
        };
        let released = tokio::time::timeout(limit, releases).await.is_ok();
        self.node.close_session("the client closed it");
        if cleaned && released {
            Ok(())
        } else {
            Err(LockError::Unavailable {
                message: format!(
                    "postgres clean-ups did not finish within {limit:?} on {}; their TTLs will end what is left",
                    self.node.server()
                ),
                source: None,
            })
        }
    }
}

/// When a queued waiter that was refused looks again, unless a release names its ticket
/// first:
///
/// * behind an older live ticket: when that ticket expires — the one moment the queue
///   can move without a release naming us (its waiter died; a live one's ticket is kept
///   alive by its instance, see [`PgNode::register_ticket`]);
/// * first in the queue: at the holder's expiry (a holder that dies sends no
///   notification), so a lost notification costs at most that;
/// * and never later than 4 × `poll` (jittered 50–100 %): the safety net for a wake-up
///   missed in a way the above does not foresee.
///
/// Waiters used to look again every `poll` (jittered) whatever their place: with 3,000
/// waiters (the bench's 1,000 keys × 4 clients) that was 8,000 refused statements a
/// second, which starved the hand-offs.
pub(crate) fn retry_in(busy: Busy, poll: Duration) -> Duration {
    let net = jitter(poll * 4);
    let next = match (busy.head_ms, busy.holder_ms) {
        (Some(head), _) => Duration::from_millis(head),
        (None, Some(holder)) => Duration::from_millis(holder),
        (None, None) => net,
    };
    next.min(net)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_waiter_looks_again_when_the_queue_or_the_holder_can_have_moved() {
        let poll = Duration::from_millis(500);
        let at = |head_ms, holder_ms| retry_in(Busy { holder_ms, head_ms }, poll);
        assert_eq!(
            at(Some(300), Some(9_000)),
            Duration::from_millis(300),
            "behind a ticket"
        );
        assert_eq!(
            at(None, Some(700)),
            Duration::from_millis(700),
            "first: the holder's expiry"
        );
        for later in [at(None, Some(60_000)), at(Some(60_000), None), at(None, None)] {
            assert!(later >= poll * 2 && later <= poll * 4, "{later:?}");
        }
    }

    #[test]
    fn durable_only_with_fsync_and_synchronous_commit() {
        let s = |fsync: &str, sc: &str| Settings {
            fsync: fsync.into(),
            synchronous_commit: sc.into(),
            in_recovery: false,
        };
        assert_eq!(guarantees_for(&s("on", "on")), GUARANTEES_DURABLE);
        assert_eq!(guarantees_for(&s("on", "remote_apply")), GUARANTEES_DURABLE);
        assert_eq!(guarantees_for(&s("on", "off")), GUARANTEES);
        assert_eq!(guarantees_for(&s("off", "on")), GUARANTEES);
    }
}
