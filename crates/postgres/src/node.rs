//! [`PgNode`]: the server as the backend uses it — a few connections ([`Pool`], made on
//! first use and again after they ended), the statements, the release notifications.
//!
//! A new grant (and every statement not tied to a lease: the waiter queue, clean-ups)
//! goes to the least busy connection; a lease's extend, renewals and release go through
//! the connection that granted it. One of the connections also `LISTEN`s on the release
//! channel. tokio-postgres pipelines concurrent statements on each. They are our own
//! connections, never a pooler's (a transaction-mode pooler would drop the `LISTEN`, and
//! a lease is tied to the connection that granted it).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock, Weak};

use std::time::Duration;
use tokio::sync::OwnedSemaphorePermit;

use fencelock_core::batch::spread_error;
use fencelock_core::cleanup::{CleanupGuard, Cleanups};
use fencelock_core::{GrantId, LockError, Result};
use futures_util::StreamExt;
use tokio_postgres::{AsyncMessage, NoTls};

use crate::config::PgConfig;
use crate::deadlines::Deadlines;
use crate::error::{failed, no_answer};
use crate::hosts::{self, HostFailure};
use crate::pool::{least_busy, Pool};
use crate::renewals::{self, renewals, Renewal, Renewals};
use crate::session::{Claim, Session, Statements};
use crate::sql;
use crate::waiters::{Confirmed, Contended, Waiters};

/// The longest a background clean-up is retried.
pub(crate) const CLEANUP_LIMIT: Duration = Duration::from_secs(600);

/// Statements (other than renewals) on one connection at once. The server answers a
/// connection's statements one after another, so a statement sent behind many others
/// waits for all of them: with at most this many in flight, the statement `timeout` —
/// counted from the moment a statement is sent — measures the server, not the length of
/// our own queue. More in flight would not be faster: the server works through them in
/// order anyway, and four cover a loopback or LAN round trip; fewer leave the renewal
/// statements (their own two turns) a larger share.
pub(crate) const IN_FLIGHT: usize = 4;

/// How many statement timeouts a statement may wait for its turn to be sent. Nothing
/// was sent yet, so a wait that runs out fails (`Unavailable`) without cutting the
/// connection. Every statement ahead ends within its own timeout, so only a burst of
/// more than `IN_FLIGHT × connections × QUEUE_TIMEOUTS` concurrent requests on one
/// instance, or a server answering each at the limit, waits this long.
pub(crate) const QUEUE_TIMEOUTS: u32 = 10;

/// The most rounds [`PgNode::pick`] goes through (each ends with a turn, a connect, or a
/// wait for a turn that is bounded by the caller's limit), besides one per connection
/// added while it waits: a round only repeats when a connection ended under it.
const PICK_ROUNDS: usize = 8;

/// What the server answered to an acquire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NodeGrant {
    /// Granted; the key's token counter is now this.
    Granted(u64),
    /// A release had already handed the key to our grant id (its notification was not
    /// seen): the token, and how long the grant lives on the server from the statement's
    /// start (which is after its send instant).
    Handed { token: u64, ms: u64 },
    /// Refused.
    Busy(Busy),
}

/// What an acquire does with the waiter queue (see [`sql::AcquireKind`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Queueing {
    /// Nothing (`try_acquire`).
    No,
    /// Take a ticket when refused (a wait's first attempt).
    Join,
    /// Look again with our ticket.
    With(i64),
}

/// Why an acquire was refused, by the server's clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Busy {
    /// The holder's remaining milliseconds (`None`: unknown, or no holder).
    pub holder_ms: Option<u64>,
    /// With a ticket: the remaining milliseconds of the oldest older live ticket of the
    /// key (`None`: ours is the oldest, or we have none).
    pub head_ms: Option<u64>,
    /// Our ticket, alive and renewed by this statement: the new one ([`Queueing::Join`])
    /// or ours ([`Queueing::With`]); `None` when there is none (a ticket of ours is gone).
    pub ticket: Option<i64>,
}

/// The server settings that decide the guarantees, read at connect time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Settings {
    pub fsync: String,
    pub synchronous_commit: String,
    pub in_recovery: bool,
}

struct Texts {
    create: String,
    acquire: String,
    acquire_queue: String,
    acquire_queued: String,
    release: String,
    release_handing: String,
    leave_release: String,
    extend: String,
    renew_many: String,
    dequeue: String,
    keep_tickets: String,
    abandon_mark: String,
    abandon_expire: String,
    abandon_release: String,
}

pub(crate) struct NodeInner {
    cfg: PgConfig,
    texts: Texts,
    /// The connections.
    pool: Pool,
    waiters: Waiters,
    /// Keys found contended lately ([`Contended`]).
    contended: Contended,
    renewals: Renewals,
    /// The statements' timeouts (see [`Deadlines`]: no runtime timer per statement).
    deadlines: Arc<Deadlines>,
    /// Background clean-ups still running (abandoned grants, left queues, releases of
    /// dropped leases), each counted from the moment it is decided.
    cleanups: Cleanups,
    /// The URL's host that the last connection reached: the next one starts there.
    last_good: hosts::LastGood,
}

/// A pool flag claimed by [`PgNode::single_flight`]: cleared when this is dropped.
struct InFlight {
    inner: Arc<NodeInner>,
    flag: fn(&Pool) -> &AtomicBool,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        (self.flag)(&self.inner.pool).store(false, Ordering::SeqCst);
    }
}

/// The server. Cheap to clone (shared state).
#[derive(Clone)]
pub(crate) struct PgNode {
    inner: Arc<NodeInner>,
}

impl std::fmt::Debug for PgNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgNode")
            .field("server", &self.inner.cfg.server())
            .finish_non_exhaustive()
    }
}

impl PgNode {
    pub(crate) fn new(cfg: PgConfig) -> Self {
        let schema = cfg.schema.clone();
        let texts = Texts {
            create: sql::create(&schema),
            acquire: sql::acquire(&schema, sql::AcquireKind::Try),
            acquire_queue: sql::acquire(&schema, sql::AcquireKind::Queue),
            acquire_queued: sql::acquire(&schema, sql::AcquireKind::Ticket),
            release: sql::release(&schema, &cfg.channel()),
            release_handing: sql::release_handing(&schema, &cfg.channel()),
            leave_release: sql::leave_release(&schema, &cfg.channel()),
            extend: sql::extend(&schema),
            renew_many: sql::renew_many(&schema),
            dequeue: sql::dequeue(&schema, &cfg.channel()),
            keep_tickets: sql::keep_tickets(&schema),
            abandon_mark: sql::abandon_mark(&schema),
            abandon_expire: sql::abandon_expire(&schema),
            abandon_release: sql::abandon_release(&schema, &cfg.channel()),
        };
        // Every statement is bounded by `timeout` or longer (renewals: `renewals::bound`).
        let deadlines = Deadlines::new(cfg.timeout);
        PgNode {
            inner: Arc::new(NodeInner {
                deadlines,
                pool: Pool::new(cfg.connections),
                cfg,
                texts,
                waiters: Waiters::default(),
                contended: Contended::default(),
                renewals: renewals(),
                cleanups: Cleanups::new(),
                last_good: hosts::LastGood::default(),
            }),
        }
    }

    pub(crate) fn config(&self) -> &PgConfig {
        &self.inner.cfg
    }

    /// The URL's host that this instance's last connection reached (see
    /// [`hosts::LastGood`]); an election's `LISTEN` connection shares it.
    pub(crate) fn last_good_host(&self) -> &hosts::LastGood {
        &self.inner.last_good
    }

    pub(crate) fn server(&self) -> &str {
        self.inner.cfg.server()
    }

    /// The keys found contended lately (see [`Contended`]).
    pub(crate) fn contended(&self) -> &Contended {
        &self.inner.contended
    }

    pub(crate) fn waiters(&self) -> &Waiters {
        &self.inner.waiters
    }

    /// A live connection for statements that take no turn (the election's) and for
    /// operators (`backend_pid`): the least busy, connecting when there is none.
    pub(crate) async fn session(&self) -> Result<Arc<Session>> {
        let (session, _turn) = self.pick("connecting", self.inner.cfg.timeout * QUEUE_TIMEOUTS).await?;
        Ok(session)
    }

    /// A live connection to carry a lease a release handed us: the least busy, without
    /// waiting for a turn or a connect as [`session`](Self::session) may; connecting only
    /// when none is live. (Not the listening one, though it just delivered the hand-off:
    /// with 1,000 keys waited for on one instance, every handed lease's renewals and
    /// release then queued on that one connection, and the bench's many-keys row fell
    /// from 2,893 to 1,415 grants/s, Jain's index from 0.98 to 0.90.)
    ///
    /// Claimed ([`Session::claim`]) until the lease is tracked, so it is not given back as
    /// surplus meanwhile; one closed between the choice and the claim is passed over.
    pub(crate) async fn live_session(&self) -> Result<Claim> {
        // Each round ends with a claim on a live connection unless one was closed or
        // ended under it: at most one per connection (the pool's bound, plus the spare).
        for _ in 0..=crate::config::MAX_CONNECTIONS + 1 {
            let session = match self.inner.pool.least_loaded() {
                Some(s) => s,
                None => self.session().await?,
            };
            let claim = session.claim();
            if claim.is_alive() {
                return Ok(claim);
            }
        }
        Err(ended("taking over a handed lease", self.server()))
    }

    /// The live connections (for operators and tests).
    pub(crate) fn sessions(&self) -> Vec<Arc<Session>> {
        self.inner.pool.live()
    }

    /// The live connection that granted `grant`, while the lease is held.
    pub(crate) fn holder_of(&self, grant: &str) -> Option<Arc<Session>> {
        self.inner.pool.holder_of(grant)
    }

    /// The live connection that listens for release notifications, if any.
    pub(crate) fn listener(&self) -> Option<Arc<Session>> {
        self.inner.pool.listener()
    }

    /// Opens one more connection and adds it to the pool. The caller holds `connecting`.
    ///
    /// The URL's hosts are tried one at a time ([`hosts::connect_each`]); each attempt —
    /// TCP connect, start-up, `target_session_attrs` check and our set-up statements
    /// ([`open`](Self::open)) — may take at most the connect timeout plus two statement
    /// timeouts, then the next host is tried: a host that accepts and never answers is
    /// given up, not waited on.
    ///
    /// # Errors
    ///
    /// As [`hosts::connect_each`]: `InvalidConfig` when the server reached says the
    /// configuration is wrong (a standby, tables not ours, no privilege) or every host
    /// refused it; else `Unavailable` naming each host and why.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: an attempt dropped midway ends its connection (see `open`).
    async fn connect(&self) -> Result<Arc<Session>> {
        let cfg = &self.inner.cfg;
        let bound = cfg.connect_timeout + cfg.timeout * 2;
        let last_good = &self.inner.last_good;
        let session = hosts::connect_each(
            &cfg.pg,
            cfg.server(),
            "connecting",
            bound,
            last_good,
            |pg, server| async move { self.open(&pg, &server).await },
        )
        .await?;
        self.inner.pool.add(Arc::clone(&session));
        Ok(session)
    }

    /// A connection for a statement not tied to a lease, and a turn on it: an idle one;
    /// else a new one when the pool may grow (below its bound, or one over it while every
    /// connection is silent, see [`Pool::may_grow`]; this statement waits for the connect; one
    /// connect at a time, others meanwhile use the connections there are); else the
    /// least busy with a free turn; else the first turn freed on any of them, waiting at
    /// most `limit` (then `Unavailable`: nothing was sent). See [`Pool`] for why.
    pub(crate) async fn pick(&self, doing: &str, limit: Duration) -> Result<(Arc<Session>, OwnedSemaphorePermit)> {
        self.pick_from(doing, limit, true).await
    }

    /// [`pick`](Self::pick); with `reconnect` false, never connects when no connection is
    /// open or `close()` ended them ([`Pool::is_closed`]), and ends a connection it made
    /// if `close()` came during the connect (`Unavailable` instead): for the instance's
    /// own background work, which must not open connections again after `close()`. With
    /// `reconnect` true (a statement of the caller's) the instance is open again.
    async fn pick_from(
        &self,
        doing: &str,
        limit: Duration,
        reconnect: bool,
    ) -> Result<(Arc<Session>, OwnedSemaphorePermit)> {
        let pool = &self.inner.pool;
        let deadline = tokio::time::Instant::now() + limit;
        let busy = || no_turn(doing, limit, self.server());
        let closed = || LockError::Unavailable {
            message: format!("{doing} not sent to {}: the instance was closed", self.server()),
            source: None,
        };
        if reconnect {
            if pool.is_closed() {
                pool.reopen(); // a store on every statement only after a `close()`
            }
        } else if pool.is_closed() {
            return Err(closed());
        }
        if let Some(backend_pid) = pool.give_back_surplus() {
            tracing::debug!(server = %self.server(), backend_pid, "a connection over the pool's bound, made while every one was silent, closed");
        }
        // A connection added while we wait makes one more round (at most the pool's size).
        for _ in 0..PICK_ROUNDS + crate::config::MAX_CONNECTIONS {
            let live = pool.live();
            if let Some(turn) = idle_turn(&live) {
                return Ok(turn);
            }
            if live.is_empty() && !reconnect {
                return Err(LockError::Unavailable {
                    message: format!("{doing} not sent to {}: no connection is open", self.server()),
                    source: None,
                });
            }
            if pool.may_grow(&live) {
                let connecting = if live.is_empty() {
                    match tokio::time::timeout_at(deadline, pool.connecting.lock()).await {
                        Ok(guard) => Some(guard),
                        Err(_) => {
                            return Err(LockError::Unavailable {
                                message: format!(
                                    "postgres unreachable: {doing} waited {limit:?} for a connection to {} while other statements tried to connect; nothing was sent",
                                    self.server()
                                ),
                                source: None,
                            })
                        }
                    }
                } else {
                    pool.connecting.try_lock().ok()
                };
                if let Some(_connecting) = connecting {
                    // Another task may have connected while we waited for the lock.
                    let live = pool.live();
                    if let Some(turn) = idle_turn(&live) {
                        return Ok(turn);
                    }
                    if pool.may_grow(&live) {
                        match self.connect().await {
                            // `close()` came while this background connect was under way
                            // (it may take the connect timeout plus two statement
                            // timeouts): `close()` ended the connections it found, not
                            // this one, which would otherwise listen on until the
                            // instance is dropped.
                            Ok(session) if !reconnect && pool.is_closed() => {
                                session.end("the client closed it");
                                pool.live(); // drops it from the pool
                                return Err(closed());
                            }
                            Ok(session) => {
                                if let Ok(turn) = Arc::clone(&session.turns).try_acquire_owned() {
                                    return Ok((session, turn));
                                }
                            }
                            Err(e) if live.is_empty() => return Err(e),
                            Err(e) => {
                                pool.grow_failed();
                                tracing::debug!(error = %e, connections = live.len(), "no further connection; using the ones there are");
                            }
                        }
                    }
                }
            }
            // Armed before the connections are listed, so none added after is missed.
            let grown = pool.grown.notified();
            tokio::pin!(grown);
            grown.as_mut().enable();
            // A silent connection only when no other is open: a statement waits for a
            // turn on one that answers rather than go where the last one got no answer.
            let live = crate::pool::answering(pool.live());
            if let Some((session, _)) = least_busy(&live) {
                if let Ok(turn) = Arc::clone(&session.turns).try_acquire_owned() {
                    return Ok((Arc::clone(session), turn));
                }
            }
            if live.is_empty() {
                continue; // every connection ended meanwhile: connect again
            }
            // Every turn taken: the first one freed, on any connection — or a connection
            // added meanwhile (its free turns would otherwise go to statements that
            // arrive later than us: at start-up, while the pool grows, a client that got
            // its key early took it again and again ahead of the backlog).
            let waits = live.iter().map(|s| Box::pin(Arc::clone(&s.turns).acquire_owned()));
            let first = tokio::time::timeout_at(deadline, futures_util::future::select_all(waits));
            tokio::select! {
                freed = first => match freed {
                    Ok((Ok(turn), i, _)) if live[i].is_alive() => return Ok((Arc::clone(&live[i]), turn)),
                    // A closed semaphore (never closed) or an ended connection: look again.
                    Ok(_) => {}
                    Err(_) => return Err(busy()),
                },
                () = &mut grown => {}
            }
        }
        Err(busy())
    }

    /// Makes `session` the instance's listener when no live connection listens, or when
    /// the one that does is silent ([`Session::is_silent`]) and `session` is not: one
    /// `LISTEN` (the caller holds a turn on `session`), bounded by the statement timeout,
    /// one at a time. Called before every statement not tied to a lease, so a waiter's
    /// next attempt after its listener ended is sent only once another one listens.
    ///
    /// A silent listener is kept for its leases, but its server backend is stuck in a
    /// statement and holds every notification until that statement ends — and loses them
    /// if the connection is then cut as dead — so our waiters would sleep through
    /// releases until their fallback re-check (up to `4 × poll`). Once another connection
    /// listens in its place, every waiter is woken to look once (a release may have been
    /// notified while only the silent one listened); the silent one stops listening when
    /// it answers again ([`unlisten_replaced`](Self::unlisten_replaced)).
    async fn ensure_listener(&self, session: &Arc<Session>) -> Result<()> {
        let pool = &self.inner.pool;
        // `None`: a listener that answers, or none better than the silent one.
        let wanted = || match pool.listener() {
            None => Some(false),
            Some(l) if l.is_silent() && !session.is_silent() && !Arc::ptr_eq(&l, session) => Some(true),
            Some(_) => None,
        };
        if wanted().is_none() {
            return Ok(());
        }
        // Not bounded here: whoever holds `listening` holds its turn already and sends one
        // statement bounded by the timeout (never a wait for a turn under the lock: see
        // `unlisten_replaced`), so this waits for those statements at most.
        let _one = pool.listening.lock().await;
        let Some(replacing) = wanted() else {
            return Ok(());
        };
        let listen = format!("LISTEN {}", self.inner.cfg.channel());
        let listen = &listen;
        self.send_on(session, "LISTEN", self.inner.cfg.timeout, |s| async move {
            s.client.batch_execute(listen).await
        })
        .await?;
        if session.is_alive() {
            pool.set_listener(session);
            if replacing {
                tracing::debug!(server = %self.server(), backend_pid = session.backend_pid, "the listening connection is silent: this one listens too");
                self.inner.waiters.wake_all();
            }
        }
        Ok(())
    }

    /// The listener fell silent (a statement on it went unanswered past the timeout) but
    /// is kept for its leases: makes another connection listen now, in the background,
    /// rather than at the next statement — a waiter already asleep sends none before its
    /// fallback re-check. One attempt, bounded by a turn's wait and the `LISTEN`'s
    /// timeout; only while some waiter of ours waits and the instance has a connection
    /// open (it never reconnects an instance whose connections `close()` ended; it may
    /// still add a spare to one that has some, [`Pool::may_grow`]); the next statement
    /// not tied to a lease tries again ([`ensure_listener`](Self::ensure_listener)).
    fn listen_elsewhere_later(&self) {
        if self.inner.waiters.is_empty() {
            return;
        }
        let Some((rt, flight)) = self.single_flight(|pool| &pool.relistening) else {
            return;
        };
        let node = self.clone();
        rt.spawn(async move {
            let _flight = flight;
            let limit = node.inner.cfg.timeout * QUEUE_TIMEOUTS;
            let listened = match node.pick_from("LISTEN", limit, false).await {
                Ok((session, _turn)) => node.ensure_listener(&session).await,
                Err(e) => Err(e),
            };
            if let Err(e) = listened {
                tracing::debug!(error = %e, "no other connection could listen; the next statement tries again");
            }
        });
    }

    /// `session`, a listener replaced while it was silent (see
    /// [`ensure_listener`](Self::ensure_listener)), answered again: it stops listening, in the background
    /// (one `UNLISTEN`, on a turn of its own waited for at most the statement timeout
    /// before `listening` is taken, and bounded by the statement timeout), so each
    /// release is not delivered to us twice for the rest of its life and the server
    /// signals one backend less per `NOTIFY`. Until then a release may wake a waiter
    /// twice: the second wake-up finds the ticket gone (the wait ended) or costs one
    /// look more — harmless. Sent only while `session` is not the listener again.
    fn unlisten_replaced(&self, session: &Arc<Session>) {
        let Some((rt, flight)) = self.single_flight(|pool| &pool.unlistening) else {
            return; // the next answer on it tries again
        };
        let (node, session) = (self.clone(), Arc::clone(session));
        rt.spawn(async move {
            let _flight = flight;
            let pool = &node.inner.pool;
            let timeout = node.inner.cfg.timeout;
            // The turn on `session` first, then `listening` — never the lock while waiting
            // for a turn. Statements take their turn before `ensure_listener` waits for the
            // lock; holding the lock while waiting for a turn here, with every turn on
            // `session` held by statements waiting for the lock (four acquires sent there
            // while a new listener was wanted), stalled every statement of the instance
            // until this wait ran out (10 × timeout) and failed those four. Now whoever
            // holds the lock already holds its turn and only sends one statement, bounded
            // by the timeout: no wait for the lock is longer than those statements.
            match node.turn(&session.turns, "UNLISTEN", timeout).await {
                Ok(_turn) => {
                    let _one = pool.listening.lock().await;
                    if session.is_listening() && !pool.is_listener(&session) && session.is_alive() {
                        let unlisten = format!("UNLISTEN {}", node.inner.cfg.channel());
                        let unlisten = &unlisten;
                        let sent = node
                            .send_on(&session, "UNLISTEN", timeout, |s| async move {
                                s.client.batch_execute(unlisten).await
                            })
                            .await;
                        match sent {
                            Ok(_) => session.set_unlistened(),
                            Err(e) => tracing::debug!(error = %e, "UNLISTEN on a replaced listener failed; it listens on"),
                        }
                    }
                }
                Err(e) => tracing::debug!(error = %e, "no turn for UNLISTEN on a replaced listener; the next answer on it tries again"),
            }
        });
    }

    /// Claims `flag` (one of the pool's) for one background task of its kind, and the
    /// runtime to spawn it on: `None` when a task of that kind runs already or there is
    /// no runtime (then the flag is left as it was found, clear). The flag stays set
    /// until the returned guard is dropped — at the task's end, and also when the task
    /// panics or is dropped unrun, which before left it set for the instance's life (no
    /// such task of that kind ever again).
    fn single_flight(&self, flag: fn(&Pool) -> &AtomicBool) -> Option<(tokio::runtime::Handle, InFlight)> {
        if flag(&self.inner.pool).swap(true, Ordering::SeqCst) {
            return None;
        }
        let claimed = InFlight {
            inner: Arc::clone(&self.inner),
            flag,
        };
        let rt = tokio::runtime::Handle::try_current().ok()?; // `claimed` dropped: clear again
        Some((rt, claimed))
    }

    /// Connects to the one host of `pg` (`server` names it in messages), creates the
    /// tables if missing, and prepares the statements. Unbounded itself: the caller
    /// ([`connect`](Self::connect)) bounds the whole attempt.
    ///
    /// # Errors
    ///
    /// [`HostFailure::Final`] with `InvalidConfig` when the server was reached and
    /// says the configuration is wrong (a standby, tables not ours, no privilege to
    /// create them); [`HostFailure::Next`] for everything else (the next host may work).
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: dropped midway, the connection's driver task is aborted (the
    /// connection closed), so a silent host given up keeps nothing open.
    async fn open(&self, pg: &tokio_postgres::Config, server: &str) -> std::result::Result<Arc<Session>, HostFailure> {
        let cfg = &self.inner.cfg;
        let (client, mut connection) = pg
            .connect(NoTls)
            .await
            .map_err(|e| hosts::connect_failed(crate::error::CONNECTING, server, e))?;
        let slot: Arc<OnceLock<Weak<Session>>> = Arc::default();
        let (node, session_slot) = (Arc::downgrade(&self.inner), Arc::clone(&slot));
        let driver = tokio::spawn(async move {
            let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
            let mut why = "the server closed it".to_owned();
            while let Some(message) = messages.next().await {
                match message {
                    Ok(AsyncMessage::Notification(n)) => {
                        if let Some(inner) = node.upgrade() {
                            inner.waiters.dispatch(n.payload());
                        }
                    }
                    Ok(_) => {}
                    Err(e) => {
                        why = fencelock_core::error::one_line(&e);
                        break;
                    }
                }
            }
            let (Some(inner), Some(session)) = (node.upgrade(), session_slot.get().and_then(Weak::upgrade)) else {
                return;
            };
            PgNode { inner }.end_session(&session, &why);
        });
        let abort = driver.abort_handle();
        // Aborts the driver (closing the connection) unless the set-up succeeds: also
        // when this future is dropped midway, as a host found silent is given up.
        let mut unfinished = AbortOnDrop(Some(abort.clone()));
        let setup = async {
            let doing = |what| move |e| failed(what, server, e);
            // Created only when a table is missing: `CREATE SCHEMA IF NOT EXISTS` checks
            // the CREATE privilege before it looks, so a role whose tables were made by a
            // migration could not even run the no-op. A table of our name that is not
            // ours is refused before anything is created or granted.
            // All in flight at once: one round trip. The session's settings go first
            // (see `sql::SESSION_SETUP`): every statement after them relies on them.
            let tables = &sql::TABLES[..];
            let params: [&(dyn tokio_postgres::types::ToSql + Sync); 2] = [&cfg.schema, &tables];
            let (pinned, recovery, found, granted) = tokio::join!(
                client.batch_execute(sql::SESSION_SETUP),
                client.query_one("SELECT pg_is_in_recovery()", &[]),
                client.query(sql::COLUMNS_FOUND, &params),
                client.query(sql::PRIVILEGES_FOUND, &params)
            );
            // A standby refuses every write (and `LISTEN`): say what it is, first.
            if recovery
                .map_err(doing("reading pg_is_in_recovery()"))?
                .try_get::<_, bool>(0)
                .unwrap_or(false)
            {
                return Err(LockError::invalid_config(format!(
                    "{server} is a standby in recovery (read-only): connect to the primary \
                     (with several hosts in the URL, add target_session_attrs=read-write)"
                )));
            }
            pinned.map_err(doing("pinning the session's settings"))?;
            let found = found.map_err(doing("looking for the tables"))?;
            let way_out = "give fencelock a schema of its own (`schema=` in the URL; the SQL of its tables: \
                           docs/backends/postgres.md, \"The tables\")";
            let missing = sql::check_tables(&cfg.schema, &sql::TABLES, &found, way_out)
                .map_err(|why| LockError::invalid_config(format!("{server}: {why}")))?;
            if !missing.is_empty() {
                // A table of an earlier layout lacks a column this version added: say so,
                // and what to run, when the role may not add it (a migration-managed
                // schema); "creating the tables" alone sent people to check their password.
                let added = sql::missing_added_columns(&cfg.schema, &found);
                if !cfg.create_tables && added.is_empty() && missing.len() == sql::TABLES.len() {
                    // Told to create nothing (`create_tables=false`; a read-only command),
                    // and none of the tables is there: nothing was ever held in this
                    // schema. Said as such ([`NothingCreated`], with the server's
                    // guarantees, which come from its settings, not from tables), so that a
                    // reader may answer "nothing held" and still name what is missing. The
                    // URL is quoted with its query: the `schema=` in it is the thing to check.
                    let settings = client
                        .query_one(
                            "SELECT current_setting('fsync'), current_setting('synchronous_commit')",
                            &[],
                        )
                        .await
                        .map_err(doing("reading fsync and synchronous_commit"))?;
                    let guarantees = crate::lock::guarantees_for(&Settings {
                        fsync: settings.try_get(0).map_err(doing("reading fsync"))?,
                        synchronous_commit: settings.try_get(1).map_err(doing("reading synchronous_commit"))?,
                        // A standby was refused before the tables were looked at.
                        in_recovery: false,
                    });
                    let nothing = fencelock_core::error::NothingCreated {
                        schema: cfg.schema.clone(),
                        missing: format!("fencelock's tables ({})", missing.join(", ")),
                        server: server.to_owned(),
                        guarantees,
                    };
                    return Err(crate::error::nothing_created(&cfg.url, nothing, ""));
                }
                if !cfg.create_tables {
                    // A read-only use (`create_tables=false`): a typo in `schema=` must
                    // not leave a stray schema behind and read as "nothing held".
                    return Err(LockError::invalid_config(if added.is_empty() {
                        format!(
                            "{}: some of fencelock's tables are missing in schema `{}` ({}), and this connection \
                             does not create them (`create_tables=false`): check the `schema=` option",
                            cfg.url,
                            cfg.schema,
                            missing.join(", ")
                        )
                    } else {
                        format!(
                            "{server}: fencelock's tables in schema `{}` are of an earlier layout, and this \
                             connection does not change them (`create_tables=false`); run as the tables' owner: {}",
                            cfg.schema,
                            added.join(" ")
                        )
                    }));
                }
                client.batch_execute(&self.inner.texts.create).await.map_err(|e| {
                    if added.is_empty() && e.code() == Some(&tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE) {
                        return LockError::invalid_config(format!(
                            "{server}: fencelock's tables ({}) are missing in schema `{}` and this role may not \
                             create them ({}): have the schema's owner run the SQL of docs/backends/postgres.md, \
                             \"The tables, for teams that manage schemas themselves\" (fencelock_postgres::schema_sql), \
                             and grant this role what that section lists",
                            missing.join(", "),
                            cfg.schema,
                            fencelock_core::error::one_line(&e)
                        ));
                    }
                    if added.is_empty() || e.code().is_none() {
                        return failed("creating the tables", server, e);
                    }
                    LockError::invalid_config(format!(
                        "{server}: fencelock's tables are of an earlier layout and this role could not bring \
                         them up to date ({}); run as the tables' owner: {}",
                        fencelock_core::error::one_line(&e),
                        added.join(" ")
                    ))
                })?;
            } else {
                // The tables are there: the role must be able to use all of them now, not
                // fail at the first contended acquire (the ticket sequence) or statement.
                let grants = sql::missing_grants(
                    &cfg.schema,
                    &granted.map_err(doing("reading the role's privileges"))?,
                    sql::LOCK_PRIVILEGES,
                );
                if !grants.is_empty() {
                    return Err(LockError::invalid_config(format!(
                        "{server}: this role lacks privileges on fencelock's tables in schema `{}`; run as their owner: {}",
                        cfg.schema,
                        grants.join(" ")
                    )));
                }
            }
            let t = &self.inner.texts;
            let prepare = |text| client.prepare(text);
            let st = Statements {
                acquire: prepare(&t.acquire).await.map_err(doing("preparing acquire"))?,
                acquire_queue: prepare(&t.acquire_queue).await.map_err(doing("preparing acquire"))?,
                acquire_queued: prepare(&t.acquire_queued).await.map_err(doing("preparing acquire"))?,
                release: prepare(&t.release).await.map_err(doing("preparing release"))?,
                release_handing: prepare(&t.release_handing).await.map_err(doing("preparing release"))?,
                leave_release: prepare(&t.leave_release).await.map_err(doing("preparing release"))?,
                extend: prepare(&t.extend).await.map_err(doing("preparing extend"))?,
                renew_many: prepare(&t.renew_many).await.map_err(doing("preparing renewals"))?,
                dequeue: prepare(&t.dequeue).await.map_err(doing("preparing dequeue"))?,
                keep_tickets: prepare(&t.keep_tickets)
                    .await
                    .map_err(doing("preparing keep_tickets"))?,
                abandon_mark: prepare(&t.abandon_mark).await.map_err(doing("preparing abandon"))?,
                abandon_expire: prepare(&t.abandon_expire).await.map_err(doing("preparing abandon"))?,
                abandon_release: prepare(&t.abandon_release).await.map_err(doing("preparing abandon"))?,
            };
            let pid: i32 = client
                .query_one("SELECT pg_backend_pid()", &[])
                .await
                .map_err(doing("reading the backend pid"))?
                .get(0);
            Ok::<_, LockError>((st, pid))
        };
        match setup.await {
            Ok((st, pid)) => {
                unfinished.0 = None;
                let session = Arc::new(Session::new(client, st, pid, abort));
                // The driver holds the session weakly: dropping the node ends it.
                let _ = slot.set(Arc::downgrade(&session));
                Ok(session)
            }
            Err(e) => Err(HostFailure::after_start_up(e)),
        }
    }

    /// Ends `session`: its leases are reported lost, our waiters retry. Their rows are
    /// left to expire on the server: the server's expiry is never earlier than the end of
    /// the validity each holder was given, so a holder that missed the loss signal (paused,
    /// or not watching `lost()`) is still alone until its validity ends. Releasing the
    /// rows now would hand the key to another client inside that window.
    ///
    /// When it was the connection that listened, every waiter of the instance is woken
    /// (a release notification may have been missed), and its next attempt makes another
    /// connection listen first ([`ensure_listener`](Self::ensure_listener)).
    fn end_session(&self, session: &Session, why: &str) {
        let lost = session.end(why);
        if !lost.is_empty() {
            // Info: each lease says its own loss (a WARN, with this reason); at warn level
            // this line was a second one for one loss (new-user trial).
            tracing::info!(server = %self.server(), backend_pid = session.backend_pid, %why, leases = lost.len(), "connection ended; its leases are lost");
        }
        if session.is_listening() {
            self.inner.waiters.wake_all();
        }
    }

    /// Waits, at most `limit`, for a turn in `turns` to send a statement. Nothing is
    /// sent yet: a wait that runs out is `Unavailable` and leaves the connection alone.
    async fn turn<'a>(
        &self,
        turns: &'a tokio::sync::Semaphore,
        doing: &str,
        limit: Duration,
    ) -> Result<tokio::sync::SemaphorePermit<'a>> {
        // A free turn needs no timer (the common, uncontended case).
        if let Ok(permit) = turns.try_acquire() {
            return Ok(permit);
        }
        match tokio::time::timeout(limit, turns.acquire()).await {
            Ok(Ok(permit)) => Ok(permit),
            // The semaphores are never closed; a closed one is as good as no turn.
            Ok(Err(_)) | Err(_) => Err(no_turn(doing, limit, self.server())),
        }
    }

    /// Runs one statement not tied to a lease on the connection [`pick`](Self::pick)
    /// chooses, once it has its turn (at most [`IN_FLIGHT`] at once per connection,
    /// waiting at most [`QUEUE_TIMEOUTS`] statement timeouts for it), bounded by the
    /// statement timeout from when it is sent. See [`send_on`](Self::send_on) for what
    /// an unanswered statement does to the connection.
    async fn call<T, F, Fut>(&self, doing: &'static str, f: F) -> Result<(T, Arc<Session>)>
    where
        F: FnOnce(Arc<Session>) -> Fut,
        Fut: std::future::Future<Output = std::result::Result<T, tokio_postgres::Error>>,
    {
        let timeout = self.inner.cfg.timeout;
        let (session, _turn) = self.pick(doing, timeout * QUEUE_TIMEOUTS).await?;
        self.ensure_listener(&session).await?;
        self.send_on(&session, doing, timeout, f).await
    }

    /// Runs one statement of a lease on `session`, the connection that granted it, once
    /// it has its turn there (as [`call`](Self::call)). A connection that ended is
    /// `Unavailable` (nothing was sent; the lease was reported lost when it ended).
    async fn call_on<T, F, Fut>(&self, session: &Arc<Session>, doing: &'static str, f: F) -> Result<T>
    where
        F: FnOnce(Arc<Session>) -> Fut,
        Fut: std::future::Future<Output = std::result::Result<T, tokio_postgres::Error>>,
    {
        let timeout = self.inner.cfg.timeout;
        let _turn = self.turn(&session.turns, doing, timeout * QUEUE_TIMEOUTS).await?;
        if !session.is_alive() {
            return Err(ended(doing, self.server()));
        }
        self.send_on(session, doing, timeout, f).await.map(|(v, _)| v)
    }

    /// Sends one statement now on `session` (the caller holds its turn), bounded by
    /// `timeout`. Without an answer in time the statement fails (`Unavailable`), and the
    /// connection is cut (its leases reported lost) only if it is dead — silent, and no
    /// lease on it still valid: see [`Session::is_dead`]; until then new statements go to
    /// other connections when they can. A closed connection ends the session.
    async fn send_on<T, F, Fut>(
        &self,
        session: &Arc<Session>,
        doing: &'static str,
        timeout: Duration,
        f: F,
    ) -> Result<(T, Arc<Session>)>
    where
        F: FnOnce(Arc<Session>) -> Fut,
        Fut: std::future::Future<Output = std::result::Result<T, tokio_postgres::Error>>,
    {
        let session = Arc::clone(session);
        let sent = tokio::time::Instant::now();
        match self.inner.deadlines.within(timeout, f(Arc::clone(&session))).await {
            Some(Ok(v)) => {
                session.answered();
                if session.is_listening() && !self.inner.pool.is_listener(&session) {
                    self.unlisten_replaced(&session);
                }
                Ok((v, session))
            }
            Some(Err(e)) => {
                if e.is_closed() || e.code().is_none() {
                    self.end_session(&session, &fencelock_core::error::one_line(&e));
                } else {
                    session.answered(); // the server answered with an error
                }
                Err(failed(doing, self.server(), e))
            }
            None => {
                // A late answer is read and dropped by the client; the connection stays
                // in step. It is cut only when it is dead, not merely slow: silent, with
                // no lease on it that an answer could still renew.
                if session.is_dead(sent, self.inner.cfg.timeout) {
                    self.end_session(&session, &format!("no answer to {doing} within {timeout:?}"));
                } else if self.inner.pool.is_listener(&session) {
                    self.listen_elsewhere_later();
                }
                Err(no_answer(doing, self.server(), timeout))
            }
        }
    }

    /// One acquire round trip (the prepared acquire statement `queueing` picks), and the
    /// instant it was sent (after its wait for a turn), from which the lease's validity —
    /// and a ticket's known life — counts. Not retried: when the answer is lost a release
    /// of `grant` is sent in the background, so an unheard grant does not block others for
    /// a whole TTL.
    pub(crate) async fn try_grant(
        &self,
        key: &str,
        grant: &GrantId,
        ttl: Duration,
        queueing: Queueing,
    ) -> Result<(NodeGrant, Claim, tokio::time::Instant)> {
        let ttl_ms = ttl.as_millis() as i64;
        let ticket_ms = self.ticket_life().as_millis() as i64;
        let timeout = self.inner.cfg.timeout;
        // No turn, no connection, no listener: nothing was sent, nothing to abandon. The
        // connection (a new one, when every one is busy) is ready before the clock starts.
        let (session, _turn) = self.pick("acquire", timeout * QUEUE_TIMEOUTS).await?;
        self.ensure_listener(&session).await?;
        // The validity counts from here, not from before the wait for a turn: the server
        // sets the expiry from when it receives the statement, which is later still.
        let sent_at = tokio::time::Instant::now();
        // Should the answer not come — or this future be dropped before it came — the
        // abandon is written on this connection, even after it was cut as dead.
        let mut unheard = UnheardAcquire {
            node: self,
            hold: Some(session.hold_driver()),
            key,
            grant: grant.as_str(),
        };
        let answer = self
            .send_on(&session, "acquire", timeout, |s| async move {
                let grant = grant.as_str();
                match queueing {
                    Queueing::With(t) => {
                        s.client
                            .query_one(&s.st.acquire_queued, &[&key, &grant, &ttl_ms, &t, &ticket_ms])
                            .await
                    }
                    Queueing::Join => {
                        s.client
                            .query_one(&s.st.acquire_queue, &[&key, &grant, &ttl_ms, &ticket_ms])
                            .await
                    }
                    Queueing::No => s.client.query_one(&s.st.acquire, &[&key, &grant, &ttl_ms]).await,
                }
            })
            .await;
        // Checked at connect (`sql::check_tables`); a table altered since then could still
        // answer other types: an error and the grant given back, never a panic.
        let answer = answer.and_then(|(row, s)| {
            decode_acquire(&row).map(|d| (d, s)).map_err(|e| {
                self.release_later(key, grant.as_str()); // it may have been granted
                LockError::Backend {
                    backend: crate::error::BACKEND,
                    message: format!(
                        "the acquire's answer from {} does not decode: were fencelock's tables altered?",
                        self.server()
                    ),
                    source: Some(Box::new(e)),
                    temporary: false,
                }
            })
        });
        match answer {
            Ok(((token, holder_ms, head_ms, ticket, handed_ms), s)) => {
                unheard.hold = None; // answered: nothing to abandon here
                let n = |v: i64| u64::try_from(v).unwrap_or(0);
                let outcome = match (token.map(n), handed_ms.map(n)) {
                    (Some(token), Some(ms)) => NodeGrant::Handed { token, ms },
                    (Some(token), None) => NodeGrant::Granted(token),
                    (None, _) => NodeGrant::Busy(Busy {
                        holder_ms: holder_ms.map(n),
                        head_ms: head_ms.map(n),
                        ticket,
                    }),
                };
                // Claimed while our turn is held: no surplus give-back can close it before
                // the lease is tracked (see `Session::claim`).
                Ok((outcome, s.claim(), sent_at))
            }
            Err(e) => {
                if e.is_temporary() {
                    // `unheard` sends the abandon on this connection as it drops.
                    self.release_later(key, grant.as_str());
                } else {
                    unheard.hold = None;
                }
                Err(e)
            }
        }
    }

    /// Runs a clean-up in the background until it is confirmed: temporary failures
    /// (server unreachable, partition) are retried with backoff (25 ms doubling to
    /// 500 ms) for as long as this backend instance lives, at most [`CLEANUP_LIMIT`].
    /// Counted from this call until it ends. Nothing when no runtime is running.
    fn cleanup<F, Fut>(&self, what: &'static str, step: F)
    where
        F: Fn(PgNode) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = Result<()>> + Send + 'static,
    {
        let weak = Arc::downgrade(&self.inner);
        self.inner.cleanups.spawn(what, async move {
            let deadline = tokio::time::Instant::now() + CLEANUP_LIMIT;
            let mut pause = Duration::from_millis(25);
            loop {
                let Some(inner) = weak.upgrade() else { return };
                let result = step(PgNode { inner }).await;
                match result {
                    Ok(()) => break,
                    Err(e) if e.is_temporary() && tokio::time::Instant::now() + pause < deadline => {
                        tracing::debug!(error = %e, ?pause, "{what}: retrying");
                        tokio::time::sleep(pause).await;
                        pause = (pause * 2).min(Duration::from_millis(500));
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "{what} failed; the TTL will end what it left");
                        break;
                    }
                }
            }
        });
    }

    /// Counts one background clean-up from now until the guard is dropped: the release of
    /// a lease dropped unreleased (see `LeaseOps::cleanup`), which [`PgLock`]'s `close`
    /// then waits for before it ends the connections.
    ///
    /// [`PgLock`]: crate::PgLock
    pub(crate) fn count_cleanup(&self) -> CleanupGuard {
        self.inner.cleanups.start()
    }

    /// Abandons `grant` in the background (a grant whose fate is unknown: its answer was
    /// lost, or its caller gave up): see [`sql::abandon_mark`] for why three statements,
    /// in order, leave nothing behind even when the acquire reaches the server later.
    pub(crate) fn release_later(&self, key: &str, grant: &str) {
        let (key, grant) = (key.to_owned(), grant.to_owned());
        self.cleanup("abandoning an unconfirmed grant", move |node| {
            let (key, grant) = (key.clone(), grant.clone());
            async move { node.abandon(&key, &grant).await }
        });
    }

    async fn abandon(&self, key: &str, grant: &str) -> Result<()> {
        self.call("abandon", |s| async move { abandon_on(&s, key, grant).await })
            .await
            .map(|_| ())
    }

    /// Sends the abandon of `grant` on `session` now, right behind the acquire whose
    /// answer did not come on that connection, and lets it run in the background: it
    /// lands even when answers are lost and the connection is about to be cut as dead
    /// (then no new connection can be made until the link heals, and a later abandon
    /// could not go out). The background clean-up ([`release_later`](Self::release_later))
    /// still confirms it when the acquire's answer was lost; when its future was dropped
    /// mid-flight, this is the only abandon. Counted among the clean-ups from this call —
    /// made as the acquire is dropped — until it was answered or its bound (two statement
    /// timeouts) passed, so a `close()` right after the drop waits for it before it ends
    /// the connections. (Uncounted, such an abandon went out after `close()` returned, or
    /// never, and the grant held its key for its whole TTL.)
    fn abandon_now(&self, hold: crate::session::DriverHold, key: &str, grant: &str) {
        let (key, grant) = (key.to_owned(), grant.to_owned());
        let bound = self.inner.cfg.timeout * 2;
        // Counted in flight on its connection, as a leave is (see `leave_later`).
        let counted = hold.session().unturned();
        self.inner.cleanups.spawn("abandoning an unheard grant", async move {
            let _ = tokio::time::timeout(bound, abandon_on(hold.session(), &key, &grant)).await;
            drop(counted);
            drop(hold); // the driver of a session cut meanwhile stops now
        });
    }

    /// Waits (at most `limit`) until every background clean-up has finished.
    pub(crate) async fn cleanups_finished(&self, limit: Duration) -> bool {
        self.inner.cleanups.idle(limit).await
    }

    /// Ends every connection (their leases are reported lost) and wakes every waiter.
    pub(crate) fn close_session(&self, why: &str) -> Vec<(String, String)> {
        let lost = self.inner.pool.take_all().iter().flat_map(|s| s.end(why)).collect();
        self.inner.waiters.wake_all();
        lost
    }

    /// Releases our row — handing the key to the oldest waiter when `handing`
    /// ([`sql::release_handing`]), else deleting it and naming that waiter
    /// ([`sql::release`], cheaper for a key nobody waits for) —; `false` if the row was
    /// not ours. Through `session` (the connection that granted it) while it lives and
    /// answers, else through any: a release only ever acts on our own grant, whichever
    /// connection carries it.
    pub(crate) async fn release(
        &self,
        session: Option<&Arc<Session>>,
        key: &str,
        grant: &str,
        handing: bool,
    ) -> Result<bool> {
        let statement =
            |s: Arc<Session>| async move { s.client.query_one(s.st.release(handing), &[&key, &grant]).await };
        // Not through a silent connection (a statement on it went unanswered past the
        // timeout): the release would queue behind the stall, fail after the timeout, and
        // leave the key held until the stall cleared or the row expired.
        let row = match session.filter(|s| s.is_alive() && !s.is_silent()) {
            Some(s) => self.call_on(s, "release", statement).await?,
            None => self.call("release", statement).await?.0,
        };
        Ok(row.get::<_, i64>(0) == 1)
    }

    /// Sets a new expiry `ttl` from now if the row still holds `grant` unexpired, through
    /// `session`, the connection that granted it; `false` (not held) once that
    /// connection ended — the lease was reported lost then, and another connection must
    /// not bring it back.
    pub(crate) async fn extend(&self, session: &Weak<Session>, key: &str, grant: &str, ttl: Duration) -> Result<bool> {
        let Some(session) = session.upgrade().filter(|s| s.is_alive()) else {
            return Ok(false);
        };
        let ttl_ms = ttl.as_millis() as i64;
        let n = self
            .call_on(&session, "extend", |s| async move {
                s.client.execute(&s.st.extend, &[&key, &grant, &ttl_ms]).await
            })
            .await?;
        Ok(n == 1)
    }

    /// Like [`extend`](Self::extend), batched with the other background renewals of the
    /// same connection.
    ///
    /// Cancel safe: dropped before the renewal is sent (the lease gave up on it, its
    /// validity run out), the renewal is not sent, also when its batch already left the
    /// window and waits for a turn on the connection ([`renewals::Pending::take`]).
    pub(crate) async fn renew(&self, session: &Weak<Session>, key: &str, grant: &str, ttl: Duration) -> Result<bool> {
        let waiting = Arc::new(());
        let renewal = Renewal {
            session: session.clone(),
            key: key.to_owned(),
            grant: grant.to_owned(),
            ttl_ms: ttl.as_millis() as i64,
            waiting: Arc::downgrade(&waiting),
        };
        let flush = |inner, batch: Vec<Renewal>| async move { PgNode { inner }.renew_batch(batch).await };
        let wait = self.inner.cfg.renew_window.min(ttl / 10);
        let answer = self.inner.renewals.submit(renewal, wait, &self.inner, flush).await;
        drop(waiting); // held until answered: see `Renewal::waiting`
        answer
    }

    /// Renews a batch the window made: splits it by connection (a lease is renewed
    /// through the connection that granted it), renews each part on its connection at
    /// the same time ([`renew_on`](Self::renew_on)), and answers each renewal in order.
    /// A lease whose connection ended is answered "not held": it was reported lost then.
    async fn renew_batch(&self, batch: Vec<Renewal>) -> Vec<Result<bool>> {
        let mut answers: Vec<Option<Result<bool>>> = Vec::with_capacity(batch.len());
        let mut parts: Vec<(Arc<Session>, Vec<usize>, Vec<Renewal>)> = Vec::new();
        for (i, renewal) in batch.into_iter().enumerate() {
            answers.push(None);
            let Some(session) = renewal.session.upgrade().filter(|s| s.is_alive()) else {
                answers[i] = Some(Ok(false));
                continue;
            };
            match parts.iter_mut().find(|(s, _, _)| Arc::ptr_eq(s, &session)) {
                Some((_, at, part)) => {
                    at.push(i);
                    part.push(renewal);
                }
                None => parts.push((session, vec![i], vec![renewal])),
            }
        }
        let (at, sent): (Vec<Vec<usize>>, Vec<_>) = parts
            .into_iter()
            .map(|(session, at, part)| (at, async move { self.renew_on(&session, part).await }))
            .unzip();
        for (at, part) in at.into_iter().zip(futures_util::future::join_all(sent).await) {
            for (i, answer) in at.into_iter().zip(part) {
                answers[i] = Some(answer);
            }
        }
        answers
            .into_iter()
            .map(|a| {
                a.unwrap_or_else(|| {
                    Err(LockError::Unavailable {
                        message: "a batched renewal was left unanswered".into(),
                        source: None,
                    })
                })
            })
            .collect()
    }

    /// Renews one connection's part of a batch: queues it there, then — while any of it
    /// is still queued — takes a turn (at most [`renewals::IN_FLIGHT`] renewal statements
    /// at once on the connection) and sends the oldest queued renewals, ours or others',
    /// in one statement. Answers each of ours. Bounded: each turn and each statement by
    /// [`renewals::bound`] of our shortest TTL, and each pass sends at least one queued
    /// renewal.
    async fn renew_on(&self, session: &Arc<Session>, batch: Vec<Renewal>) -> Vec<Result<bool>> {
        let pending = &session.renewals;
        let ttl_ms = batch.iter().map(|r| r.ttl_ms).min().unwrap_or(0);
        let bound = renewals::bound_ms(self.inner.cfg.timeout, ttl_ms);
        let ticket = pending.push(batch);
        while !pending.gone(&ticket) {
            let turn = match self.turn(pending.turns(), "batched renewal", bound).await {
                Ok(turn) => turn,
                Err(e) => {
                    pending.withdraw(&ticket, &e);
                    break;
                }
            };
            let items = pending.take();
            if items.is_empty() {
                break;
            }
            let (renewals, replies): (Vec<Renewal>, Vec<_>) = items.into_iter().map(|q| (q.renewal, q.reply)).unzip();
            let answers = self.renew_statement(session, &renewals).await;
            drop(turn);
            for (reply, answer) in replies.into_iter().zip(answers) {
                let _ = reply.send(answer);
            }
        }
        let mut answers = Vec::with_capacity(ticket.answers.len());
        for answer in ticket.answers {
            // Every reply is sent by the pass that took it, which is bounded; a dropped
            // one (its runtime shut down) is an unknown outcome.
            answers.push(answer.await.unwrap_or_else(|_| {
                Err(LockError::Unavailable {
                    message: "a batched renewal was dropped before it was answered".into(),
                    source: None,
                })
            }));
        }
        answers
    }

    /// One statement renews `batch` (the caller holds a renewal turn), bounded by
    /// [`renewals::bound`] of its shortest TTL; answers each.
    async fn renew_statement(&self, session: &Arc<Session>, batch: &[Renewal]) -> Vec<Result<bool>> {
        let keys: Vec<&str> = batch.iter().map(|r| r.key.as_str()).collect();
        let grants: Vec<&str> = batch.iter().map(|r| r.grant.as_str()).collect();
        let ttls: Vec<i64> = batch.iter().map(|r| r.ttl_ms).collect();
        let ttl_ms = ttls.iter().copied().min().unwrap_or(0);
        let bound = renewals::bound_ms(self.inner.cfg.timeout, ttl_ms);
        let (keys, grants, ttls) = (&keys, &grants, &ttls);
        let answer = self
            .send_on(session, "batched renewal", bound, |s| async move {
                s.client.query(&s.st.renew_many, &[keys, grants, ttls]).await
            })
            .await;
        match answer {
            Ok((rows, _)) => {
                let renewed: std::collections::HashSet<String> = rows.iter().map(|r| r.get::<_, String>(0)).collect();
                batch.iter().map(|r| Ok(renewed.contains(&r.grant))).collect()
            }
            Err(e) => spread_error(&e, batch.len()),
        }
    }

    /// How long a waiter's ticket lives past its last renewal: its instance renews it at
    /// least every `poll` (see [`register_ticket`](Self::register_ticket)), so twice that
    /// plus a second of slack for a slow statement. A waiter whose process died blocks
    /// the queue that long.
    ///
    /// In whole milliseconds, as the statements set it: the waiter counts a handed grant
    /// valid for this long from a renewal's send instant, so it must not exceed what the
    /// server was sent (a `poll` with a part of a millisecond made it, by up to 1 ms).
    pub(crate) fn ticket_life(&self) -> Duration {
        let life = self.inner.cfg.poll * 2 + Duration::from_secs(1);
        Duration::from_millis(u64::try_from(life.as_millis()).unwrap_or(u64::MAX))
    }

    /// Registers our waiter `ticket` for its release notification, and starts the
    /// instance's ticket keeper when it is not running: every fallback poll (jittered),
    /// one statement renews all of this instance's tickets for
    /// [`ticket_life`](Self::ticket_life), so that a waiter behind others need not attempt just to keep
    /// its place. The keeper ends when no ticket is left or the instance is dropped; a
    /// failed renewal is only logged (each waiter's own attempts renew its ticket too).
    pub(crate) fn register_ticket(
        &self,
        ticket: i64,
        key: &str,
        grant: &str,
        confirmed: Confirmed,
    ) -> Arc<tokio::sync::Notify> {
        let (notify, keeper) = self.inner.waiters.register(ticket, key, grant, confirmed);
        if let Some(task) = keeper {
            let Ok(rt) = tokio::runtime::Handle::try_current() else {
                self.inner.waiters.keeper_ended(task);
                return notify;
            };
            // Frees the keeper's slot however the task ends (see `TaskSlot`).
            let slot = crate::task_slot::ends_with_its_task(&self.inner, task, |inner: &NodeInner, task| {
                inner.waiters.keeper_ended(task)
            });
            let weak = Arc::downgrade(&self.inner);
            let poll = self.inner.cfg.poll;
            rt.spawn(async move {
                let _slot = slot;
                loop {
                    tokio::time::sleep(fencelock_core::waiting::jitter(poll)).await;
                    let Some(inner) = weak.upgrade() else { return };
                    let Some(tickets) = inner.waiters.to_keep(task) else {
                        return;
                    };
                    let node = PgNode { inner };
                    if let Err(e) = node.keep_tickets(tickets).await {
                        tracing::debug!(error = %e, "keeping waiter tickets failed; their own attempts renew them");
                    }
                }
            });
        }
        notify
    }

    /// Renews `tickets` — each matched by its number and the grant id it carries, so that
    /// a number issued twice is never renewed for the wrong wait — for
    /// [`ticket_life`](Self::ticket_life), on the live connection
    /// with the fewest statements in flight, **without taking a turn** there (as a
    /// lease's renewals have turns of their own): behind a backlog of this instance's
    /// statements — 1,000 keys' waiters on 4 connections — a wait for a turn outlasted
    /// the tickets, and a lapsed ticket loses its waiter's place to a client that just
    /// released and asks again. On the connection, at most [`IN_FLIGHT`] statements and
    /// the renewals in flight are ahead of it; it counts as one more in flight there while
    /// it runs. No live connection: nothing is sent (the
    /// waiters' own attempts connect again, and renew their own tickets).
    async fn keep_tickets(&self, tickets: Vec<(i64, String)>) -> Result<()> {
        let Some(session) = self.inner.pool.least_loaded() else {
            return Ok(());
        };
        let life = self.ticket_life();
        let life_ms = life.as_millis() as i64;
        let (tickets, grants): (Vec<i64>, Vec<String>) = tickets.into_iter().unzip();
        let (tickets, grants, life_ms) = (&tickets, &grants, &life_ms);
        let timeout = self.inner.cfg.timeout;
        // Counted as in flight there, so that a new grant is not sent behind it as if the
        // connection were idle.
        let _counted = session.unturned();
        let sent = tokio::time::Instant::now();
        let row = self
            .send_on(&session, "keeping waiter tickets", timeout, |s| async move {
                s.client
                    .query_one(&s.st.keep_tickets, &[tickets, grants, life_ms])
                    .await
            })
            .await?;
        let kept: Vec<i64> = row.0.try_get(0).unwrap_or_default();
        let kept_grants: Vec<String> = row.0.try_get(1).unwrap_or_default();
        for (ticket, grant) in kept.into_iter().zip(&kept_grants) {
            self.inner.waiters.confirm(ticket, grant, Confirmed { sent, life });
        }
        Ok(())
    }

    /// A wait ended without using its ticket: leaves the queue, then releases a grant a
    /// release handed to the ticket's grant id meanwhile — two statements, in this order
    /// ([`leave_on`]). The order leaves nothing behind: a hand-off that took the ticket
    /// before the dequeue committed is seen by the release that follows (its own
    /// snapshot), and none can take it after.
    ///
    /// Sent at once on a live connection, held open until answered (as an abandon is,
    /// see [`abandon_now`](Self::abandon_now)): a client dropped right after its acquire
    /// timed out still leaves the queue, instead of leaving a ticket that the next release
    /// hands the key to, blocking the key for the ticket's life. When that fails (no
    /// live connection, no answer), retried in the background until confirmed.
    /// Counted among the clean-ups from this call.
    pub(crate) fn leave_later(&self, ticket: i64, key: &str, grant: &str) {
        // Counted in the connection's statements in flight from this decision until the
        // answer (or the bound): sent without a turn, an uncounted leave left its
        // connection looking idle while it waited on the server, and the next grant was
        // sent behind it (and every leave of a burst went to one connection).
        let hold = self.inner.pool.least_loaded().map(|s| (s.unturned(), s.hold_driver()));
        let (key, grant) = (key.to_owned(), grant.to_owned());
        let bound = self.inner.cfg.timeout * 2;
        let weak = Arc::downgrade(&self.inner);
        self.inner.cleanups.spawn("leaving the waiter queue", async move {
            if let Some((counted, hold)) = hold {
                let left = tokio::time::timeout(bound, leave_on(hold.session(), ticket, &key, &grant)).await;
                drop(counted);
                drop(hold); // the driver of a session cut meanwhile stops now
                if matches!(left, Ok(Ok(_))) {
                    return;
                }
            }
            let Some(inner) = weak.upgrade() else { return };
            PgNode { inner }.cleanup("leaving the waiter queue", move |node| {
                let (key, grant) = (key.clone(), grant.clone());
                async move {
                    node.call("leaving the waiter queue", |s| async move {
                        leave_on(&s, ticket, &key, &grant).await
                    })
                    .await
                    .map(|_| ())
                }
            });
        });
    }

    /// `fsync`, `synchronous_commit` and whether the server is a standby.
    pub(crate) async fn settings(&self) -> Result<Settings> {
        let (row, _) = self
            .call("reading fsync and synchronous_commit", |s| async move {
                s.client
                    .query_one(
                        "SELECT current_setting('fsync'), current_setting('synchronous_commit'), pg_is_in_recovery()",
                        &[],
                    )
                    .await
            })
            .await?;
        Ok(Settings {
            fsync: row.get(0),
            synchronous_commit: row.get(1),
            in_recovery: row.get(2),
        })
    }
}

/// Aborts a connection's driver task when dropped, unless disarmed (`.0 = None`).
struct AbortOnDrop(Option<tokio::task::AbortHandle>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        if let Some(driver) = self.0.take() {
            driver.abort();
        }
    }
}

/// A turn on an idle connection of `live` (nothing in flight), if there is one.
fn idle_turn(live: &[Arc<Session>]) -> Option<(Arc<Session>, OwnedSemaphorePermit)> {
    match least_busy(live) {
        Some((session, true)) => Arc::clone(&session.turns)
            .try_acquire_owned()
            .ok()
            .map(|turn| (Arc::clone(session), turn)),
        _ => None,
    }
}

/// A statement that waited `limit` for its turn: nothing was sent.
fn no_turn(doing: &str, limit: Duration, server: &str) -> LockError {
    LockError::Unavailable {
        message: format!(
            "postgres busy: {doing} waited {limit:?} for its turn behind this client's other statements to {server}; nothing was sent"
        ),
        source: None,
    }
}

/// A lease's statement whose connection ended before it was sent.
fn ended(doing: &str, server: &str) -> LockError {
    LockError::Unavailable {
        message: format!(
            "{doing} not sent to {server}: the connection that granted the lease ended (the lease was reported lost)"
        ),
        source: None,
    }
}

/// The acquire statement's answer (see [`sql::acquire`]): token, holder's remaining ms,
/// head ticket's remaining ms, our live ticket, our handed grant's remaining ms (each
/// NULL when it does not apply).
type AcquireRow = (Option<i64>, Option<i64>, Option<i64>, Option<i64>, Option<i64>);

fn decode_acquire(row: &tokio_postgres::Row) -> std::result::Result<AcquireRow, tokio_postgres::Error> {
    Ok((
        row.try_get(0)?,
        row.try_get(1)?,
        row.try_get(2)?,
        row.try_get(3)?,
        row.try_get(4)?,
    ))
}

/// An acquire sent on a connection whose answer has not been heard: dropped while armed
/// (its answer lost, or the acquire's future dropped mid-flight), it sends the abandon on
/// that connection at once ([`PgNode::abandon_now`]).
struct UnheardAcquire<'a> {
    node: &'a PgNode,
    hold: Option<crate::session::DriverHold>,
    key: &'a str,
    grant: &'a str,
}

impl Drop for UnheardAcquire<'_> {
    fn drop(&mut self) {
        if let Some(hold) = self.hold.take() {
            self.node.abandon_now(hold, self.key, self.grant);
        }
    }
}

/// The three statements of abandoning `grant` of `key` (see `sql::abandon_mark`), sent
/// together on one connection: the server runs them in order, each in its own
/// transaction committed before the next begins, so they keep the order the abandon
/// needs without waiting for each answer — they all run even when no answer comes back
/// (a link cut one way). Resolves with the last step's row once all three answered. The
/// last step only notifies the key's next waiter and leaves the expired row in place
/// (see `sql::abandon_release`), whatever the instance's `handoff`.
async fn abandon_on(
    s: &Session,
    key: &str,
    grant: &str,
) -> std::result::Result<tokio_postgres::Row, tokio_postgres::Error> {
    // `join!` polls them in this order, and a first poll sends: the order on the wire.
    let (by_grant, by_key): (
        [&(dyn tokio_postgres::types::ToSql + Sync); 1],
        [&(dyn tokio_postgres::types::ToSql + Sync); 2],
    ) = ([&grant], [&key, &grant]);
    let (mark, expire, release) = tokio::join!(
        s.client.execute(&s.st.abandon_mark, &by_grant),
        s.client.execute(&s.st.abandon_expire, &by_key),
        s.client.query_one(&s.st.abandon_release, &by_key),
    );
    mark?;
    expire?;
    release
}

/// The two statements of leaving the queue (see [`PgNode::leave_later`]), sent together
/// on one connection: the server runs them in order, each committed before the next.
async fn leave_on(
    s: &Session,
    ticket: i64,
    key: &str,
    grant: &str,
) -> std::result::Result<tokio_postgres::Row, tokio_postgres::Error> {
    // `join!` polls them in this order, and a first poll sends: the order on the wire.
    let (by_ticket, by_key): (
        [&(dyn tokio_postgres::types::ToSql + Sync); 2],
        [&(dyn tokio_postgres::types::ToSql + Sync); 2],
    ) = ([&ticket, &grant], [&key, &grant]);
    let (dequeued, released) = tokio::join!(
        s.client.execute(&s.st.dequeue, &by_ticket),
        s.client.query_one(&s.st.leave_release, &by_key),
    );
    dequeued?;
    released
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;
    use fencelock_testkit::pg_server::PgServer;

    /// Grants `key` to `grant` with `ttl` (the key must be free); the connection it went
    /// through.
    async fn hold(node: &PgNode, key: &str, grant: &GrantId, ttl: Duration) -> Arc<Session> {
        let (held, session, _) = node.try_grant(key, grant, ttl, Queueing::No).await.unwrap();
        assert!(matches!(held, NodeGrant::Granted(_)), "{held:?}");
        Arc::clone(&session)
    }

    /// Queues a new grant id behind the holder of `key`: its ticket.
    async fn queue(node: &PgNode, key: &str, ttl: Duration) -> i64 {
        queue_as(node, key, &GrantId::random(), ttl).await
    }

    /// Queues `grant` behind the holder of `key`: its ticket.
    async fn queue_as(node: &PgNode, key: &str, grant: &GrantId, ttl: Duration) -> i64 {
        let (queued, _, _) = node.try_grant(key, grant, ttl, Queueing::Join).await.unwrap();
        let NodeGrant::Busy(Busy {
            ticket: Some(ticket), ..
        }) = queued
        else {
            panic!("not queued: {queued:?}");
        };
        ticket
    }

    /// A connection of the test's own to the node's server, to watch or change its rows;
    /// abort the handle when done.
    async fn watcher(node: &PgNode) -> (tokio_postgres::Client, tokio::task::JoinHandle<()>) {
        let (client, connection) = node.inner.cfg.pg.connect(tokio_postgres::NoTls).await.unwrap();
        let driver = tokio::spawn(async move {
            let _ = connection.await;
        });
        (client, driver)
    }

    /// The late-delivery hazard, made deterministic: the acquire of a grant whose answer
    /// was lost reaches the server only after the client cleaned up. A plain release run
    /// first leaves that late acquire free to grant for a whole TTL; an abandon refuses it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_acquire_arriving_after_its_abandon_is_refused() {
        let server = PgServer::start();
        let node = PgNode::new(PgConfig::from_url(&server.url()).unwrap());
        let ttl = Duration::from_secs(60);

        let released = GrantId::random();
        assert!(!node.release(None, "k1", released.as_str(), false).await.unwrap());
        let (late, _, _) = node.try_grant("k1", &released, ttl, Queueing::No).await.unwrap();
        assert!(
            matches!(late, NodeGrant::Granted(_)),
            "the hazard this guards against: a release before the late acquire does not stop it"
        );

        let abandoned = GrantId::random();
        node.abandon("k2", abandoned.as_str()).await.unwrap();
        let (late, _, _) = node.try_grant("k2", &abandoned, ttl, Queueing::No).await.unwrap();
        assert!(
            matches!(late, NodeGrant::Busy(_)),
            "an abandoned grant landed late: {late:?}"
        );
        // And the key is free for everyone else: the placeholder left in place is expired.
        let (other, _, _) = node
            .try_grant("k2", &GrantId::random(), ttl, Queueing::No)
            .await
            .unwrap();
        assert!(matches!(other, NodeGrant::Granted(_)), "{other:?}");
    }

    /// A wait's first attempt that reaches the server after its grant id was abandoned (held
    /// by a partition while the client gave up) is refused, and takes no ticket either: a
    /// ticket its client never learnt heads the key's queue for its whole life, and the
    /// abandon that could remove it already ran.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_first_attempt_arriving_after_its_abandon_takes_no_ticket() {
        let server = PgServer::start();
        let node = PgNode::new(PgConfig::from_url(&server.url()).unwrap());
        let ttl = Duration::from_secs(60);
        hold(&node, "k", &GrantId::random(), ttl).await;
        let abandoned = GrantId::random();
        node.abandon("k", abandoned.as_str()).await.unwrap();
        let (late, _, _) = node.try_grant("k", &abandoned, ttl, Queueing::Join).await.unwrap();
        assert!(matches!(late, NodeGrant::Busy(_)), "{late:?}");
        let tickets = server.psql(&format!(
            "SELECT count(*) FROM fencelock.waiters WHERE grant_id = '{}'",
            abandoned.as_str()
        ));
        assert_eq!(
            tickets, "0",
            "the late first attempt of an abandoned grant took a ticket: {late:?}"
        );
    }

    /// Review of the abandon fix: the expired placeholder an abandon leaves (so that a
    /// late acquire of the abandoned grant finds its own grant id and is refused) was
    /// deleted again by the leave of that grant's wait — whose release deleted our rows
    /// expired or not — reopening the window the placeholder closes.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_leave_keeps_the_placeholder_of_an_abandoned_grant() {
        let server = PgServer::start();
        let node = PgNode::new(PgConfig::from_url(&server.url()).unwrap());
        let grant = GrantId::random();
        node.abandon("k", grant.as_str()).await.unwrap();
        let placeholder = format!(
            "SELECT count(*) FROM {}.locks WHERE key = 'k' AND grant_id = '{}'",
            node.inner.cfg.schema,
            grant.as_str()
        );
        assert_eq!(server.psql(&placeholder), "1", "the abandon leaves its placeholder");
        node.leave_later(i64::MAX, "k", grant.as_str());
        assert!(
            node.cleanups_finished(Duration::from_secs(10)).await,
            "the leave finished"
        );
        assert_eq!(
            server.psql(&placeholder),
            "1",
            "the leave deleted the abandoned grant's placeholder"
        );
    }

    /// An acquire sent before its abandon began (its snapshot older than the abandon's
    /// mark, so it does not see its grant id abandoned), on another connection, and held on
    /// the server by an insert of the key in progress (here an operator's, rolled back once
    /// the abandon waits behind it too), is never left granted. The abandon's placeholder
    /// refuses it — but the abandon's last step deleted the placeholder, and an acquire
    /// that reached the row while that delete was in progress tried its insert again and
    /// took the key: granted to a grant id nobody holds, the key blocked for a TTL.
    /// Which of the two goes first after the rollback is the scheduler's choice: 50 rounds
    /// (before the fix, one of rounds 4 to 15 failed in each of five runs).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_acquire_held_up_across_its_abandon_is_not_left_granted() {
        let server = PgServer::start();
        // A timeout the rounds' waits fit in: the late acquire must still be in flight.
        let node = PgNode::new(PgConfig::from_url(&format!("{}&timeout=10s", server.url())).unwrap());
        node.settings().await.unwrap(); // connects, and creates the tables
        let ttl = Duration::from_secs(60);
        let schema = node.inner.cfg.schema.clone();
        let waiting = |n: usize| {
            let server = &server;
            let sql = "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'";
            fencelock_testkit::until::until_eq(
                "statements waiting for the operator's insert",
                Duration::from_secs(10),
                n.to_string(),
                move || server.psql(sql),
            )
        };
        for round in 0..50 {
            let key = format!("k{round}");
            let (operator, driver) = watcher(&node).await;
            operator
                .batch_execute(&format!(
                    "BEGIN; INSERT INTO {schema}.locks VALUES ('{key}', 'operator', clock_timestamp() + interval '1 hour')"
                ))
                .await
                .unwrap();
            let grant = GrantId::random();
            let late = tokio::spawn({
                let (node, key, grant) = (node.clone(), key.clone(), grant.clone());
                async move { node.try_grant(&key, &grant, ttl, Queueing::No).await.map(|(g, _, _)| g) }
            });
            waiting(1).await;
            let abandon = tokio::spawn({
                let (node, key, grant) = (node.clone(), key.clone(), grant.to_string());
                async move { node.abandon(&key, &grant).await }
            });
            waiting(2).await; // the late acquire and the abandon's step 2
            operator.batch_execute("ROLLBACK").await.unwrap();
            let late = tokio::time::timeout(Duration::from_secs(10), late)
                .await
                .unwrap()
                .unwrap();
            tokio::time::timeout(Duration::from_secs(10), abandon)
                .await
                .unwrap()
                .unwrap()
                .unwrap();
            let live = server.psql(&format!(
                "SELECT count(*) FROM {schema}.locks WHERE grant_id = '{}' AND expires_at > now()",
                grant.as_str()
            ));
            assert_eq!(
                live, "0",
                "round {round}: the abandoned grant holds the key (the late acquire answered {late:?})"
            );
            driver.abort();
        }
    }

    /// An acquire dropped before its answer was heard sends its abandon from a task of its
    /// own; that abandon is counted among the clean-ups at the drop, before its task first
    /// ran, so a `close()` right after waits for it before it ends the connections. (Counted
    /// nowhere before: `close` could end the connections and return first, and the grant
    /// held its key for a whole TTL.) On a current-thread runtime, so the task cannot have
    /// run before the count is read.
    #[tokio::test(flavor = "current_thread")]
    async fn an_abandon_is_counted_from_the_drop_of_its_acquire() {
        let server = PgServer::start();
        let node = PgNode::new(PgConfig::from_url(&server.url()).unwrap());
        let ttl = Duration::from_secs(60);
        let grant = GrantId::random();
        let session = hold(&node, "k", &grant, ttl).await;
        // The acquire's guard dropped while armed, as when its future is dropped in flight.
        drop(UnheardAcquire {
            node: &node,
            hold: Some(session.hold_driver()),
            key: "k",
            grant: grant.as_str(),
        });
        assert_eq!(
            node.inner.cleanups.running(),
            1,
            "the abandon was not counted at the drop"
        );
        assert!(
            node.cleanups_finished(Duration::from_secs(10)).await,
            "the abandon never ended"
        );
        let (other, _, _) = node
            .try_grant("k", &GrantId::random(), ttl, Queueing::No)
            .await
            .unwrap();
        assert!(
            matches!(other, NodeGrant::Granted(_)),
            "the abandon had not freed the key when it stopped counting: {other:?}"
        );
    }

    /// A look again that finds the key already handed to its grant id is told how long the
    /// grant lives on the server, and the waiter counts that from the look's send instant:
    /// it must be rounded down. Rounded up, the waiter believed in the grant up to a
    /// millisecond after the server's end, whenever the rounding outgrew the time between
    /// the send and the server's start of the statement. Checked against the server's
    /// remaining time read just before the look is sent (a reading that precedes the send,
    /// so the send instant plus the answer must not exceed it), 20 times: rounded up, a
    /// loopback round trip is shorter than the rounding most times.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_handed_grant_found_by_a_look_is_not_counted_past_its_end() {
        let server = PgServer::start();
        let node = PgNode::new(PgConfig::from_url(&server.url()).unwrap());
        let ttl = Duration::from_secs(60);
        let grant = GrantId::random();
        hold(&node, "k", &grant, ttl).await;
        let (client, driver) = watcher(&node).await;
        let schema = &node.inner.cfg.schema;
        for _ in 0..20 {
            // An end with a part of a millisecond, as a ticket's end has.
            client
                .execute(
                    &format!(
                        "UPDATE {schema}.locks SET expires_at = clock_timestamp() + interval '30 s' \
                         + random() * interval '1 ms' WHERE key = 'k'"
                    ),
                    &[],
                )
                .await
                .unwrap();
            let row = client
                .query_one(
                    &format!(
                        "SELECT extract(epoch FROM expires_at - clock_timestamp())::float8 * 1000 \
                         FROM {schema}.locks WHERE key = 'k'"
                    ),
                    &[],
                )
                .await
                .unwrap();
            let before_the_send: f64 = row.get(0);
            let (found, _, _) = node.try_grant("k", &grant, ttl, Queueing::With(0)).await.unwrap();
            let NodeGrant::Handed { ms, .. } = found else {
                panic!("the look did not find the grant handed to it: {found:?}");
            };
            assert!(
                ms as f64 <= before_the_send,
                "the look was told the grant lives {ms} ms from its send; the server's end was \
                 {before_the_send:.3} ms away before the look was sent"
            );
        }
        driver.abort();
    }

    /// The life a renewal gives a ticket on the server is the life its waiter counts from the
    /// renewal's send instant (a handed grant is valid that long): with a `poll` that has
    /// a part of a millisecond, the statement was sent the life in whole milliseconds
    /// while the waiter counted the exact one, past the server's end. Checked against a
    /// reading of the server's clock made before the renewal was sent, 20 times.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_kept_ticket_is_not_counted_past_its_end_on_the_server() {
        let server = PgServer::start();
        let url = format!("{}&poll=100ms%20900us", server.url());
        let node = PgNode::new(PgConfig::from_url(&url).unwrap());
        let ttl = Duration::from_secs(60);
        hold(&node, "k", &GrantId::random(), ttl).await;
        let grant = GrantId::random();
        let ticket = queue_as(&node, "k", &grant, ttl).await;
        let (client, driver) = watcher(&node).await;
        let schema = &node.inner.cfg.schema;
        let life = node.ticket_life().as_secs_f64() * 1000.0;
        for _ in 0..20 {
            let before_the_send: f64 = client
                .query_one("SELECT extract(epoch FROM clock_timestamp())::float8 * 1000", &[])
                .await
                .unwrap()
                .get(0);
            node.keep_tickets(vec![(ticket, grant.to_string())]).await.unwrap();
            let end: f64 = client
                .query_one(
                    &format!(
                        "SELECT extract(epoch FROM expires_at)::float8 * 1000 FROM {schema}.waiters WHERE ticket = $1"
                    ),
                    &[&ticket],
                )
                .await
                .unwrap()
                .get(0);
            assert!(
                end - before_the_send >= life,
                "the waiter counts its ticket alive {life:.3} ms from the renewal's send; the \
                 server ends it {:.3} ms after a reading made before that send",
                end - before_the_send
            );
        }
        driver.abort();
    }

    /// A ticket number can be issued twice (its lazily committed insert, and the sequence's
    /// advance, lost in a server crash): the ticket row with that number may belong to
    /// another wait, of another instance. A look again names its ticket and its grant id,
    /// and must neither renew nor remove a ticket carrying another grant id — nor take it
    /// for its own. (It matched the number alone: it kept the other wait's ticket alive,
    /// and a granted look deleted it.)
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_look_again_leaves_a_ticket_of_another_grant_alone() {
        let server = PgServer::start();
        let node = PgNode::new(PgConfig::from_url(&server.url()).unwrap());
        let ttl = Duration::from_secs(60);
        let holder = GrantId::random();
        hold(&node, "k", &holder, ttl).await;
        let ticket = queue(&node, "k", ttl).await;
        let (client, driver) = watcher(&node).await;
        let schema = &node.inner.cfg.schema;
        let expiry = format!("SELECT expires_at::text FROM {schema}.waiters WHERE ticket = $1");
        let set_short = format!("UPDATE {schema}.waiters SET expires_at = now() + interval '5 s' WHERE ticket = $1");
        let read = |row: tokio_postgres::Row| row.get::<_, String>(0);
        client.execute(&set_short, &[&ticket]).await.unwrap();
        let before = read(client.query_one(&expiry, &[&ticket]).await.unwrap());

        let other = GrantId::random();
        let (look, _, _) = node.try_grant("k", &other, ttl, Queueing::With(ticket)).await.unwrap();
        assert!(
            matches!(look, NodeGrant::Busy(Busy { ticket: None, .. })),
            "a look again with another grant id took ticket {ticket} for its own: {look:?}"
        );
        let after = read(client.query_one(&expiry, &[&ticket]).await.unwrap());
        assert_eq!(after, before, "a look again with another grant id renewed the ticket");

        // Nor does the keeper, given the number with another grant id.
        node.keep_tickets(vec![(ticket, other.to_string())]).await.unwrap();
        let after = read(client.query_one(&expiry, &[&ticket]).await.unwrap());
        assert_eq!(after, before, "the keeper renewed a ticket of another grant id");

        // Nor does a look that is granted remove it.
        node.release(None, "k", holder.as_str(), false).await.unwrap();
        client
            .execute(
                &format!("UPDATE {schema}.waiters SET expires_at = 'epoch' WHERE ticket = $1"),
                &[&ticket],
            )
            .await
            .unwrap();
        let (look, _, _) = node.try_grant("k", &other, ttl, Queueing::With(ticket)).await.unwrap();
        assert!(matches!(look, NodeGrant::Granted(_)), "{look:?}");
        let left = client
            .query_one(
                &format!("SELECT count(*) FROM {schema}.waiters WHERE ticket = $1"),
                &[&ticket],
            )
            .await
            .unwrap()
            .get::<_, i64>(0);
        assert_eq!(left, 1, "a granted look with another grant id removed the ticket");

        driver.abort();
    }

    /// A head waiter whose wait ends just as the plain release names it (`handoff=false`,
    /// the default) leaves the queue without acting on the wake-up: the waiter behind it,
    /// never named, used to wait with the key free until the departed ticket's known
    /// expiry (here 61 s: `poll=30s`) or its four-poll net. Leaving now wakes the next
    /// live ticket when the key is free. The departed waiter is a ticket of this node's
    /// own, left through the leave path; the next one a `PgLock` waiter.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_head_waiter_leaving_after_the_release_named_it_wakes_the_next() {
        let server = PgServer::start();
        let url = format!("{}&poll=30s", server.url());
        let node = PgNode::new(PgConfig::from_url(&url).unwrap());
        let ttl = Duration::from_secs(60);
        let holder = GrantId::random();
        hold(&node, "k", &holder, ttl).await;
        let departing = GrantId::random();
        let first = queue_as(&node, "k", &departing, ttl).await;
        // Counts the acquire statements from here (a statement trigger on `locks`): the
        // next waiter's third — its re-check right after taking its ticket — must be
        // refused behind the head ticket before the release, as a waiter behind another is.
        server.psql(
            "CREATE SEQUENCE public.acquires;
             CREATE FUNCTION public.count_acquire() RETURNS trigger LANGUAGE plpgsql AS
               $$ BEGIN PERFORM nextval('public.acquires'); RETURN NULL; END $$;
             CREATE TRIGGER count_acquire AFTER INSERT ON fencelock.locks
               FOR EACH STATEMENT EXECUTE FUNCTION public.count_acquire();",
        );
        let next = crate::PgLock::connect(&url).await.unwrap();
        let waiting = tokio::spawn(async move {
            let opts = fencelock_core::LockOptions::new()
                .with_ttl(ttl)
                .with_wait(Duration::from_secs(20));
            fencelock_core::DistributedLock::acquire(&next, "k", &opts)
                .await
                .map(|_| ())
        });
        let acquires = "SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM public.acquires";
        fencelock_testkit::until::until("the next waiter's re-check", Duration::from_secs(10), || {
            server.psql(acquires).parse::<i64>().unwrap() >= 3
        })
        .await;
        // The plain release names the head ticket; its wait ends then, and it leaves.
        assert!(node.release(None, "k", holder.as_str(), false).await.unwrap());
        let left = tokio::time::Instant::now();
        node.leave_later(first, "k", departing.as_str());
        let bound = Duration::from_secs(5);
        let got = tokio::time::timeout(bound, waiting).await;
        eprintln!(
            "the next waiter was granted {:?} after the head waiter's leave",
            left.elapsed()
        );
        assert!(
            matches!(got, Ok(Ok(Ok(())))),
            "the next waiter was not granted within {bound:?} of the head waiter's leave, with \
             the key free: {got:?}"
        );
    }

    /// Review (L4): a leave (and an abandon) is sent without a turn on the least loaded
    /// connection, and was not counted there: a connection whose leave waited on the
    /// server looked idle, and the next grant was sent behind it — "no answer to acquire"
    /// while another connection stood idle. Here the leave waits for an operator's row
    /// lock on its ticket.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_grant_is_not_sent_behind_a_leave_that_waits_on_the_server() {
        let server = PgServer::start();
        let url = format!("{}&connections=2&timeout=1s", server.url());
        let node = PgNode::new(PgConfig::from_url(&url).unwrap());
        let ttl = Duration::from_secs(60);
        hold(&node, "k", &GrantId::random(), ttl).await;
        let leaving = GrantId::random();
        let ticket = queue_as(&node, "k", &leaving, ttl).await;
        // A second connection, made while the first is busy (every turn taken).
        let first = node.inner.pool.live();
        assert_eq!(first.len(), 1);
        let all_turns = Arc::clone(&first[0].turns)
            .acquire_many_owned(IN_FLIGHT as u32)
            .await
            .unwrap();
        hold(&node, "other", &GrantId::random(), ttl).await;
        drop(all_turns);
        assert_eq!(node.inner.pool.live().len(), 2);

        let (mut operator, driver) = watcher(&node).await;
        let tx = operator.transaction().await.unwrap();
        tx.execute(
            &format!(
                "SELECT 1 FROM {}.waiters WHERE ticket = $1 FOR UPDATE",
                node.inner.cfg.schema
            ),
            &[&ticket],
        )
        .await
        .unwrap();
        node.leave_later(ticket, "k", leaving.as_str());
        fencelock_testkit::until::until(
            "the leave waits for the operator's row lock",
            Duration::from_secs(5),
            || server.psql("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'") == "1",
        )
        .await;
        let granted = node
            .try_grant("free", &GrantId::random(), ttl, Queueing::No)
            .await
            .map(|(grant, _, _)| grant);
        assert!(
            matches!(granted, Ok(NodeGrant::Granted(_))),
            "a grant with an idle connection beside the waiting leave: {granted:?}"
        );
        tx.rollback().await.unwrap();
        driver.abort();
    }

    /// A waiter's ticket is kept alive while every turn of the instance is taken: the
    /// keeper does not queue behind the instance's own statements. (With 1,000 keys per
    /// instance it did — a wait for a turn of over `ticket_life` — so tickets lapsed, a
    /// client that released took its key again at once, and the bench's many-keys
    /// fairness fell to Jain 0.12–0.17.)
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_ticket_is_kept_while_every_turn_is_taken() {
        let server = PgServer::start();
        let url = format!("{}&connections=1&poll=100ms", server.url());
        let node = PgNode::new(PgConfig::from_url(&url).unwrap());
        let ttl = Duration::from_secs(60);
        hold(&node, "k", &GrantId::random(), ttl).await;
        let sent = tokio::time::Instant::now();
        let grant = GrantId::random();
        let ticket = queue_as(&node, "k", &grant, ttl).await;
        let life = node.ticket_life();
        let _notify = node.register_ticket(ticket, "k", grant.as_str(), Confirmed { sent, life });

        // Every turn of the one connection taken, as by a backlog of statements.
        let live = node.inner.pool.live();
        assert_eq!(live.len(), 1);
        let _all_turns = Arc::clone(&live[0].turns)
            .acquire_many_owned(IN_FLIGHT as u32)
            .await
            .unwrap();

        // Watched from a connection of our own, for three ticket lives.
        let (client, driver) = watcher(&node).await;
        let query = format!(
            "SELECT expires_at > clock_timestamp(), extract(epoch FROM expires_at)::float8 FROM {}.waiters WHERE ticket = $1",
            node.inner.cfg.schema
        );
        let started = tokio::time::Instant::now();
        let mut first_expiry = None;
        let mut renewed = false;
        while started.elapsed() < life * 3 {
            let row = client.query_one(&query, &[&ticket]).await.unwrap();
            let (live, expiry): (bool, f64) = (row.get(0), row.get(1));
            assert!(
                live,
                "the ticket lapsed {:?} after every turn was taken (life {life:?})",
                started.elapsed()
            );
            let first = *first_expiry.get_or_insert(expiry);
            renewed |= expiry > first;
            tokio::time::sleep(Duration::from_millis(50)).await; // the watch's sampling interval
        }
        assert!(renewed, "the keeper never renewed the ticket");
        driver.abort();
    }

    /// Review (L1): the ticket keeper ran on a runtime that was dropped while it slept
    /// (a synchronous wrapper making a runtime per call): the instance took it for
    /// running and never started another, so no ticket of a later wait was kept.
    #[test]
    fn tickets_are_kept_after_the_runtime_of_the_keeper_was_dropped() {
        let server = PgServer::start();
        let url = format!("{}&poll=100ms", server.url());
        let node = PgNode::new(PgConfig::from_url(&url).unwrap());
        let first = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        first.block_on(async {
            let _notify = node.register_ticket(
                -1,
                "k",
                "a grant id",
                Confirmed {
                    sent: tokio::time::Instant::now(),
                    life: node.ticket_life(),
                },
            );
        });
        drop(first); // the keeper it started, asleep, is dropped with it

        let second = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        second.block_on(async {
            let ttl = Duration::from_secs(60);
            hold(&node, "k", &GrantId::random(), ttl).await;
            let sent = tokio::time::Instant::now();
            let grant = GrantId::random();
            let ticket = queue_as(&node, "k", &grant, ttl).await;
            let _notify = node.register_ticket(
                ticket,
                "k",
                grant.as_str(),
                Confirmed {
                    sent,
                    life: node.ticket_life(),
                },
            );
            let (client, driver) = watcher(&node).await;
            let query = format!(
                "SELECT expires_at FROM {}.waiters WHERE ticket = $1",
                node.inner.cfg.schema
            );
            let expiry = |row: tokio_postgres::Row| row.get::<_, std::time::SystemTime>(0);
            let first = expiry(client.query_one(&query, &[&ticket]).await.unwrap());
            // The keeper renews every poll (100 ms, jittered); a lapse of the ticket's
            // whole life (1.2 s) without one is the failure.
            fencelock_testkit::until::until_async(
                "a keeper renewed the ticket within its life",
                node.ticket_life(),
                async || expiry(client.query_one(&query, &[&ticket]).await.unwrap()) > first,
            )
            .await;
            driver.abort();
        });
    }
}
