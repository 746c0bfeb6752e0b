//! [`PgLock`]: the backend.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use fencelock_core::closing::CloseGate;
use fencelock_core::options::validate_key;
use fencelock_core::waiting::{acquire_with, jitter, Attempt, CancelGuard};
use fencelock_core::{
    DistributedLock, Exclusion, FencingToken, GrantId, Guarantees, Lease, LeaseParts, LockError, LockOptions,
    LostReason, Result, Scope, TokenOrder,
};
use tokio::time::Instant;

use crate::config::PgConfig;
use crate::grant::PgGrant;
use crate::node::{Busy, NodeGrant, PgNode, Queueing, Settings};
use crate::session::{Claim, Session};
use crate::waiters::{Confirmed, Ticket};

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
        "lease expiry runs on the server's clock (statement_timestamp()), with no allowance for drift: a jump of that clock, a rate faster than real time, or a failover to a standby whose clock is ahead can end a lease before its holder stops believing in it",
        "nobody deletes a token counter: a DELETE or TRUNCATE of the tokens table (or a restore of an older backup) restarts the keys' tokens at 1",
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
        "lease expiry runs on the server's clock (statement_timestamp()), with no allowance for drift: a jump of that clock, a rate faster than real time, or a failover to a standby whose clock is ahead can end a lease before its holder stops believing in it",
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
    /// A release had handed the key to our grant id; the grant lives on the server at
    /// least `ms` past `sent_at` (see [`PgLock::handed`]).
    Handed {
        token: u64,
        session: Claim,
        sent_at: Instant,
        ms: u64,
    },
    /// Refused (held, or an older waiter's turn), by a statement sent at the instant.
    Busy(Busy, Instant),
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
    /// are spread over up to `connections` connections (one more while every one is
    /// silent): see
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
    /// statement; at most `connections`, one more while every one is silent: see
    /// docs/backends/postgres.md, "Connections").
    pub fn backend_pids(&self) -> Vec<i32> {
        self.node.sessions().iter().map(|s| s.backend_pid).collect()
    }

    /// The server process id of the connection that granted `lease` — the one whose end
    /// (say by `pg_terminate_backend`) reports it lost — while the lease is held through
    /// a live connection of this instance; `None` otherwise.
    pub fn lease_backend_pid(&self, lease: &Lease) -> Option<i32> {
        self.node.holder_of(lease.grant().as_str()).map(|s| s.backend_pid)
    }

    /// One acquire round trip with `grant` (a wait keeps one grant id: its ticket carries
    /// it). Cancel safe without a task of its own: a guard armed before the statement is
    /// sent releases the grant in the background when the caller drops this future before
    /// the outcome is handled.
    async fn grant(&self, key: &str, opts: &LockOptions, grant: &GrantId, queueing: Queueing) -> Result<Outcome> {
        let node = &self.node;
        let undo = {
            let grant = grant.to_string();
            CancelGuard::new(move || node.release_later(key, &grant))
        };
        let (token, session, sent_at) = match node.try_grant(key, grant, opts.ttl(), queueing).await {
            Ok((NodeGrant::Granted(token), session, sent_at)) => (FencingToken::new(token), session, sent_at),
            Ok((NodeGrant::Handed { token, ms }, session, sent_at)) => {
                undo.disarm(); // ours since the release that handed it: the ticket's to give back
                return Ok(Outcome::Handed {
                    token,
                    session,
                    sent_at,
                    ms,
                });
            }
            Ok((NodeGrant::Busy(busy), _, sent_at)) => {
                undo.disarm(); // refused: granted nowhere
                return Ok(Outcome::Busy(busy, sent_at));
            }
            Err(e) => {
                undo.disarm(); // try_grant already releases an unheard grant
                return Err(e);
            }
        };
        tracing::debug!(%key, %token, "granted");
        let handing = queueing != Queueing::No && self.node.config().handoff;
        let lease = self.lease(key, opts, grant, token, &session, sent_at, opts.ttl(), handing);
        // From here the lease's drop releases the grant.
        undo.disarm();
        Ok(Outcome::Granted(lease))
    }

    /// The lease of a grant of ours: released through `session` (the connection that
    /// granted it, or took it over), reported lost when that connection ends; `handing`:
    /// its release hands the key to the oldest waiter (see [`PgGrant::handing`]).
    #[allow(clippy::too_many_arguments)]
    fn lease(
        &self,
        key: &str,
        opts: &LockOptions,
        grant: &GrantId,
        token: FencingToken,
        session: &Arc<Session>,
        sent_at: Instant,
        validity: Duration,
        handing: bool,
    ) -> Lease {
        let ops = Arc::new(PgGrant {
            node: self.node.clone(),
            session: Arc::downgrade(session),
            key: key.to_owned(),
            grant: grant.to_string(),
            tracked: Mutex::new(None),
            handing,
            auto_renew: opts.auto_renew(),
        });
        let lease = Lease::new(LeaseParts {
            key: key.to_owned(),
            token,
            grant: grant.clone(),
            sent_at,
            validity,
            options: *opts,
            ops: Arc::clone(&ops) as Arc<dyn fencelock_core::LeaseOps>,
        });
        if let Some(id) = session.track(lease.reporter(), key, grant.as_str()) {
            *ops.tracked.lock().unwrap_or_else(|p| p.into_inner()) = Some((Arc::downgrade(session), id));
        }
        lease
    }

    /// The lease of a grant a release handed to our ticket: the grant lives on the server
    /// until its ticket's end, which we know a lower bound of (`known`: a statement sent
    /// then found the ticket alive and renewed it for `known.life`, and committed durably
    /// — or created the ticket, whose loss leaves no ticket to hand a grant to). Handed out as it is
    /// — valid until that bound, or the TTL from then if shorter — when it auto-renews
    /// and a quarter of the ticket's life is left: its first renewal — due, as every
    /// renewal, a third of the way through that validity — lengthens it to the TTL.
    /// Otherwise (no auto-renew, or the bound is near) it is
    /// first extended to the TTL by one statement. `None` when that found the grant
    /// expired (the waiter was too slow): the wait starts over.
    async fn handed(
        &self,
        key: &str,
        opts: &LockOptions,
        grant: &GrantId,
        token: u64,
        session: Claim,
        known: Confirmed,
    ) -> Result<Option<Lease>> {
        let token = FencingToken::new(token);
        let handoff = self.node.config().handoff; // how this instance releases
        let validity = known.life.min(opts.ttl());
        let floor = self.node.ticket_life() / 4;
        if opts.auto_renew() && known.sent + validity >= Instant::now() + floor {
            tracing::debug!(%key, %token, "handed the key by a release");
            let lease = self.lease(key, opts, grant, token, &session, known.sent, validity, handoff);
            self.extend_in_background(&lease, &session, opts.ttl());
            return Ok(Some(lease));
        }
        let sent_at = Instant::now();
        let weak = Arc::downgrade(&session);
        if !self.node.extend(&weak, key, grant.as_str(), opts.ttl()).await? {
            return Ok(None);
        }
        tracing::debug!(%key, %token, "handed the key by a release, and extended it");
        Ok(Some(self.lease(
            key,
            opts,
            grant,
            token,
            &session,
            sent_at,
            opts.ttl(),
            handoff,
        )))
    }

    /// Extends a grant just handed to us to `ttl` on the server, batched with the
    /// connection's renewals, without waiting and without touching the lease's validity
    /// (which its own first renewal lengthens): the server then keeps the grant the TTL
    /// while the holder believes in it only until the ticket's bound — the safe side. A
    /// release or renewal that a loaded client sends after that bound still finds the
    /// grant (the bench's 1,000 keys × 4 clients row failed 2 of 3 runs: "release failed:
    /// … the backend no longer holds this grant"). A waiter whose process died sends
    /// nothing, so a dead waiter still holds a handed key only for its ticket's life.
    ///
    /// It is also the server's first word on a grant taken from a notification: when it
    /// finds the grant not ours (expired, or the hand-off was to another grant), the lease
    /// is reported lost ([`LostReason::NotHeld`]) at once, rather than at its first
    /// renewal.
    fn extend_in_background(&self, lease: &Lease, session: &Arc<Session>, ttl: Duration) {
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return; // the lease's own renewal does it
        };
        let (node, key, grant, session, reporter) = (
            self.node.clone(),
            lease.key().to_owned(),
            lease.grant().to_string(),
            Arc::downgrade(session),
            lease.reporter(),
        );
        rt.spawn(async move {
            match node.renew(&session, &key, &grant, ttl).await {
                Ok(true) => {}
                Ok(false) => {
                    if reporter.lost(LostReason::NotHeld) {
                        tracing::warn!(%key, "a handed grant is not held on the server: the lease is lost");
                    }
                }
                Err(e) => tracing::debug!(%key, error = %e, "extending a handed grant failed; its renewal will"),
            }
        });
    }

    /// One attempt of `acquire`. The first is `try_acquire`'s statement, which leaves the
    /// queue alone (the uncontended path: the queue's steps cost the server about 40 µs a
    /// statement, measured with pgbench) — unless this instance found the key contended
    /// lately ([`crate::waiters::Contended`]). Refused, the next — at once — is refused again
    /// and takes a ticket in the key's waiter queue in the same statement (or takes the
    /// key freed meanwhile), and the one after re-checks at once; later ones wait for a
    /// release naming our ticket — which normally hands us the key, no statement needed —
    /// or for the next moment a look can change anything (see [`retry_in`]), whichever
    /// comes first. `refused` records that the first was refused.
    async fn attempt(
        &self,
        key: &str,
        opts: &LockOptions,
        queue: &tokio::sync::Mutex<Option<Ticket>>,
        refused: &AtomicBool,
    ) -> Result<Attempt> {
        let mut queue = queue.lock().await;
        let handed = queue.as_ref().and_then(|t| {
            Some((
                t.grant.clone(),
                self.node.waiters().take_handed(t.ticket, t.grant.as_str())?,
            ))
        });
        if let Some((grant, (token, known))) = handed {
            // Until the lease is made, dropping the ticket gives the grant back.
            let session = self.node.live_session().await?;
            return self
                .use_handed(key, opts, &mut queue, &grant, token, session, known)
                .await;
        }
        let wake = queue.as_ref().map(Ticket::notified);
        let (grant, queueing) = match queue.as_ref() {
            Some(t) => (t.grant.clone(), Queueing::With(t.ticket)),
            None if refused.load(Ordering::Relaxed) || self.node.contended().contains(key) => {
                (GrantId::random(), Queueing::Join)
            }
            None => (GrantId::random(), Queueing::No),
        };
        let outcome = match self.grant(key, opts, &grant, queueing).await {
            Ok(outcome) => outcome,
            Err(e) => {
                // The grant id may have been abandoned (an unheard answer): the next
                // attempt starts over with a new one and a new ticket.
                *queue = None;
                return Err(e);
            }
        };
        let life = self.node.ticket_life();
        match outcome {
            Outcome::Granted(lease) => {
                if let Some(mut t) = queue.take() {
                    t.consumed = true; // the acquire statement removed the row
                }
                if queueing == Queueing::Join {
                    self.node.contended().set(key, false); // granted at once: no longer
                }
                Ok(Attempt::Acquired(lease))
            }
            Outcome::Handed {
                token,
                session,
                sent_at,
                ms,
            } => {
                let known = Confirmed {
                    sent: sent_at,
                    life: Duration::from_millis(ms),
                };
                self.use_handed(key, opts, &mut queue, &grant, token, session, known)
                    .await
            }
            Outcome::Busy(busy, sent) => match (queue.as_mut(), busy.ticket) {
                (None, Some(ticket)) => {
                    self.node.contended().set(key, true);
                    let known = Confirmed { sent, life };
                    *queue = Some(Ticket::new(self.node.clone(), ticket, key, grant, known));
                    // Re-checked at once: a release running while we took the ticket may
                    // not have seen it (see `sql::release`).
                    Ok(Attempt::again_now())
                }
                (Some(t), Some(ticket)) => {
                    // The look renewed our ticket, but with a lazy commit (see
                    // `sql::LAZY_COMMIT`) that a crash can lose: not counted as a bound of
                    // the ticket's life. A release copies the ticket's expiry on disk into
                    // the grant it hands us, so a bound from a lost renewal had us believe
                    // in a handed grant after the server's end of it (`tests/waiting.rs`,
                    // `a_handed_grant_is_not_believed_valid_past_a_lost_lazy_ticket_renewal`).
                    // The keeper's renewals commit durably and are the bound
                    // (`PgNode::keep_tickets`); so is the ticket's creation, whose loss
                    // leaves no ticket to hand a grant to.
                    t.vanished = false;
                    debug_assert_eq!(t.ticket, ticket);
                    Ok(Attempt::Busy {
                        wake,
                        retry_at: Some(Instant::now() + retry_in(busy, self.node.config().poll)),
                    })
                }
                (Some(t), None) if !t.vanished => {
                    // Our ticket is gone. Most often a release handed us the key while this
                    // statement ran: it waited for that release's row lock, so it found the
                    // ticket deleted, but its snapshot predates the hand-off. The next look,
                    // at once, sees it (`sql::acquire`'s handed grant).
                    t.vanished = true;
                    Ok(Attempt::again_now())
                }
                (Some(_), None) => {
                    // Gone twice: removed (by hand, or swept after it expired), or handed
                    // the key that then expired. Give back whatever it held; start over.
                    *queue = None;
                    Ok(Attempt::again_now())
                }
                (None, None) if queueing == Queueing::No => {
                    refused.store(true, Ordering::Relaxed);
                    Ok(Attempt::again_now())
                }
                (None, None) => Ok(Attempt::Busy {
                    wake: None,
                    retry_at: Some(Instant::now() + retry_in(busy, self.node.config().poll)),
                }),
            },
        }
    }

    /// Takes a grant handed to our ticket ([`handed`](Self::handed)); the ticket is used
    /// up once the lease is made. When the grant turned out expired, or on an error, the
    /// ticket is dropped — giving back what it may hold — and the wait starts over.
    #[allow(clippy::too_many_arguments)]
    async fn use_handed(
        &self,
        key: &str,
        opts: &LockOptions,
        queue: &mut Option<Ticket>,
        grant: &GrantId,
        token: u64,
        session: Claim,
        known: Confirmed,
    ) -> Result<Attempt> {
        match self.handed(key, opts, grant, token, session, known).await {
            Ok(Some(lease)) => {
                if let Some(mut t) = queue.take() {
                    t.consumed = true; // the release removed the row, the lease holds the grant
                }
                Ok(Attempt::Acquired(lease))
            }
            Ok(None) => {
                *queue = None;
                Ok(Attempt::again_now())
            }
            Err(e) => {
                *queue = None;
                Err(e)
            }
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
    /// [`LockError::InvalidInput`] for a bad key or TTL — checked before anything is sent:
    /// a TTL below [`PgConfig::min_ttl_for`] (twice the statement `timeout` for an
    /// auto-renewed lease, [`MIN_UNRENEWED_TTL`](crate::MIN_UNRENEWED_TTL) without
    /// auto-renew); [`LockError::Unavailable`] when
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
                // The backend's minimum first: it names the real floor (the core's check
                // knows only the library-wide 1 ms, and the TTL's maximum).
                self.node.config().check_ttl(opts.ttl(), opts.auto_renew())?;
                opts.validate_for_try()?;
                match self.grant(key, opts, &GrantId::random(), Queueing::No).await? {
                    Outcome::Granted(lease) => Ok(Some(lease.into_live_for_try()?)),
                    // Handed grants need a ticket, which `try_acquire` never takes.
                    Outcome::Busy(..) | Outcome::Handed { .. } => Ok(None),
                }
            })
            .await
    }

    /// Takes the key, waiting up to `opts.wait()` in the key's FIFO queue: woken by the
    /// holder's release naming our ticket (with `handoff=true` its notification can be
    /// the grant itself), or looking again when the ticket ahead of ours or the holder's
    /// lease expires (at the latest every `4 × poll`). A lease handed over is valid at
    /// first until our ticket's known end (at most `2 × poll + 1 s`), and its first
    /// renewal (a third of the way through that validity) lengthens it to the TTL;
    /// without auto-renew it is extended to the TTL before it is returned.
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
        // The wait's ticket lives inside the future the close gate counts, so the ticket's
        // leave (started as it drops) is counted among the clean-ups before the gate lets
        // a `close()` on to wait for them (review: it was dropped just after).
        let wait = async {
            // In `try_acquire`'s order: the key, the backend's TTL minimum, then the core's
            // checks (`acquire_with` runs those again, cheaply). A zero TTL was refused as
            // "ttl 0ns is shorter than twice the statement timeout" before the key was
            // looked at.
            validate_key(key)?;
            self.node.config().check_ttl(opts.ttl(), opts.auto_renew())?;
            opts.validate_for_wait()?;
            let (queue, refused) = (tokio::sync::Mutex::new(None), AtomicBool::new(false));
            acquire_with(key, opts, || self.attempt(key, opts, &queue, &refused)).await
        };
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
                // Handing the key on only with `handoff`, as every release of ours does.
                let _ = self.node.release(None, key, grant, self.node.config().handoff).await;
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
        let at = |head_ms, holder_ms| {
            retry_in(
                Busy {
                    holder_ms,
                    head_ms,
                    ticket: None,
                },
                poll,
            )
        };
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

    /// A handed grant is made a lease without a statement (the notification is the grant),
    /// and extended to the TTL on the server in the background. When that extend finds the
    /// grant not ours — the hand-off went to another grant (a ticket number issued twice
    /// after a crash), or it expired — the lease must be reported lost at once, not held on
    /// until its first renewal (a third of the way through the ticket's life: 7 s here).
    /// Driven directly with a grant id the server never saw.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_handed_lease_the_server_does_not_hold_is_reported_lost_at_once() {
        let server = fencelock_testkit::pg_server::PgServer::start();
        let locks = PgLock::connect(&format!("{}&poll=10s", server.url())).await.unwrap();
        let opts = LockOptions::new().with_ttl(Duration::from_secs(60));
        let session = locks.node.live_session().await.unwrap();
        let known = Confirmed {
            sent: Instant::now(),
            life: locks.node.ticket_life(),
        };
        let lease = locks
            .handed("k", &opts, &GrantId::random(), 7, session, known)
            .await
            .unwrap()
            .expect("handed out without a statement");
        let lost = tokio::time::timeout(Duration::from_secs(2), lease.lost()).await;
        assert!(
            matches!(lost, Ok(fencelock_core::LostReason::NotHeld)),
            "a handed lease whose grant the server lacks was not reported lost: {lost:?}"
        );
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
