//! [`PgNode`]: the server as the backend uses it — one connection at a time (made on first
//! use and again after it ended), the statements, the release notifications.
//!
//! One connection carries everything: acquire, extend, release, batched renewals, and the
//! `LISTEN` on the release channel. tokio-postgres pipelines concurrent statements on it,
//! and its notifications arrive on the same socket, so the connection that holds our
//! leases is the one whose death wakes our waiters. It is our own connection, never a
//! pooled one (a transaction-mode pooler would drop the `LISTEN`).

use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

use fencelock_core::batch::spread_error;
use fencelock_core::{GrantId, LockError, Result};
use futures_util::StreamExt;
use tokio_postgres::{AsyncMessage, NoTls};

use crate::config::PgConfig;
use crate::deadlines::Deadlines;
use crate::error::{failed, no_answer};
use crate::renewals::{self, renewals, Pending, Renewal, Renewals};
use crate::session::{Session, Statements};
use crate::sql;
use crate::waiters::Waiters;

/// The longest a background clean-up is retried.
pub(crate) const CLEANUP_LIMIT: Duration = Duration::from_secs(600);

/// Statements (other than renewals) of one instance on its connection at once. The
/// server answers a connection's statements one after another, so a statement sent
/// behind many others waits for all of them: with at most this many in flight, the
/// statement `timeout` — counted from the moment a statement is sent — measures the
/// server, not the length of our own queue. More in flight would not be faster: the
/// server works through them in order anyway, and four cover a loopback or LAN round
/// trip; fewer leave the renewal statements (their own two turns) a larger share.
pub(crate) const IN_FLIGHT: usize = 4;

/// How many statement timeouts a statement may wait for its turn to be sent. Nothing
/// was sent yet, so a wait that runs out fails (`Unavailable`) without cutting the
/// connection. Every statement ahead ends within its own timeout, so only a burst of
/// more than `IN_FLIGHT × QUEUE_TIMEOUTS` concurrent requests on one instance, or a
/// server answering each at the limit, waits this long.
pub(crate) const QUEUE_TIMEOUTS: u32 = 10;

/// What the server answered to an acquire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NodeGrant {
    /// Granted; the key's token counter is now this.
    Granted(u64),
    /// Refused.
    Busy(Busy),
}

/// Why an acquire was refused, by the server's clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Busy {
    /// The holder's remaining milliseconds (`None`: unknown, or no holder).
    pub holder_ms: Option<u64>,
    /// With a ticket: the remaining milliseconds of the oldest older live ticket of the
    /// key (`None`: ours is the oldest, or we have none).
    pub head_ms: Option<u64>,
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
    acquire_queued: String,
    release: String,
    extend: String,
    renew_many: String,
    enqueue: String,
    dequeue: String,
    keep_tickets: String,
    abandon_mark: String,
    abandon_expire: String,
}

pub(crate) struct NodeInner {
    cfg: PgConfig,
    texts: Texts,
    session: std::sync::Mutex<Option<Arc<Session>>>,
    connecting: tokio::sync::Mutex<()>,
    waiters: Waiters,
    renewals: Renewals,
    /// Renewals waiting for a statement, and the turns to send one.
    pending: Pending,
    /// The turns to send any other statement.
    turns: tokio::sync::Semaphore,
    /// The statements' timeouts (see [`Deadlines`]: no runtime timer per statement).
    deadlines: Arc<Deadlines>,
    /// Background clean-ups still running (abandoned grants, left queues, releases).
    cleanups: std::sync::atomic::AtomicUsize,
    cleanups_done: tokio::sync::Notify,
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
            acquire: sql::acquire(&schema, false),
            acquire_queued: sql::acquire(&schema, true),
            release: sql::release(&schema, &cfg.channel()),
            extend: sql::extend(&schema),
            renew_many: sql::renew_many(&schema),
            enqueue: sql::enqueue(&schema),
            dequeue: sql::dequeue(&schema),
            keep_tickets: sql::keep_tickets(&schema),
            abandon_mark: sql::abandon_mark(&schema),
            abandon_expire: sql::abandon_expire(&schema),
        };
        // Every statement is bounded by `timeout` or longer (renewals: `renewals::bound`).
        let deadlines = Deadlines::new(cfg.timeout);
        PgNode {
            inner: Arc::new(NodeInner {
                deadlines,
                cfg,
                texts,
                session: std::sync::Mutex::new(None),
                connecting: tokio::sync::Mutex::new(()),
                waiters: Waiters::default(),
                renewals: renewals(),
                pending: Pending::default(),
                turns: tokio::sync::Semaphore::new(IN_FLIGHT),
                cleanups: std::sync::atomic::AtomicUsize::new(0),
                cleanups_done: tokio::sync::Notify::new(),
            }),
        }
    }

    pub(crate) fn config(&self) -> &PgConfig {
        &self.inner.cfg
    }

    pub(crate) fn server(&self) -> &str {
        self.inner.cfg.server()
    }

    pub(crate) fn waiters(&self) -> &Waiters {
        &self.inner.waiters
    }

    fn cached(&self) -> Option<Arc<Session>> {
        let s = self.inner.session.lock().unwrap_or_else(|p| p.into_inner());
        s.as_ref().filter(|s| s.is_alive()).cloned()
    }

    /// The live session, connecting when there is none (one connect at a time).
    pub(crate) async fn session(&self) -> Result<Arc<Session>> {
        if let Some(s) = self.cached() {
            return Ok(s);
        }
        let _connecting = self.inner.connecting.lock().await;
        if let Some(s) = self.cached() {
            return Ok(s);
        }
        let old = self.inner.session.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(old) = old {
            self.end_session(&old, "the connection was closed");
        }
        let cfg = &self.inner.cfg;
        let bound = cfg.connect_timeout + cfg.timeout * 2;
        let session = match tokio::time::timeout(bound, self.open()).await {
            Ok(r) => r?,
            Err(_) => {
                return Err(LockError::Unavailable {
                    message: format!(
                        "postgres unreachable: no ready connection to {} within {bound:?}",
                        cfg.server()
                    ),
                    source: None,
                })
            }
        };
        *self.inner.session.lock().unwrap_or_else(|p| p.into_inner()) = Some(Arc::clone(&session));
        Ok(session)
    }

    /// Connects, creates the tables if missing, listens on the release channel and
    /// prepares the statements.
    async fn open(&self) -> Result<Arc<Session>> {
        let cfg = &self.inner.cfg;
        let server = cfg.server();
        let (client, mut connection) = cfg
            .pg
            .connect(NoTls)
            .await
            .map_err(|e| failed("connecting", server, e))?;
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
                        why = e.to_string();
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
        let setup = async {
            let doing = |what| move |e| failed(what, server, e);
            // Only when a table is missing: `CREATE SCHEMA IF NOT EXISTS` checks the
            // CREATE privilege before it looks, so a role whose tables were made by a
            // migration could not even run the no-op.
            let present: i64 = client
                .query_one(
                    "SELECT count(*) FROM pg_catalog.pg_tables WHERE schemaname = $1 AND tablename = ANY($2)",
                    &[&cfg.schema, &&sql::TABLES[..]],
                )
                .await
                .map_err(doing("looking for the tables"))?
                .get(0);
            if present < sql::TABLES.len() as i64 {
                client
                    .batch_execute(&self.inner.texts.create)
                    .await
                    .map_err(doing("creating the tables"))?;
            }
            client
                .batch_execute(&format!("LISTEN {}", cfg.channel()))
                .await
                .map_err(doing("LISTEN"))?;
            let t = &self.inner.texts;
            let prepare = |text| client.prepare(text);
            let st = Statements {
                acquire: prepare(&t.acquire).await.map_err(doing("preparing acquire"))?,
                acquire_queued: prepare(&t.acquire_queued).await.map_err(doing("preparing acquire"))?,
                release: prepare(&t.release).await.map_err(doing("preparing release"))?,
                extend: prepare(&t.extend).await.map_err(doing("preparing extend"))?,
                renew_many: prepare(&t.renew_many).await.map_err(doing("preparing renewals"))?,
                enqueue: prepare(&t.enqueue).await.map_err(doing("preparing enqueue"))?,
                dequeue: prepare(&t.dequeue).await.map_err(doing("preparing dequeue"))?,
                keep_tickets: prepare(&t.keep_tickets)
                    .await
                    .map_err(doing("preparing keep_tickets"))?,
                abandon_mark: prepare(&t.abandon_mark).await.map_err(doing("preparing abandon"))?,
                abandon_expire: prepare(&t.abandon_expire).await.map_err(doing("preparing abandon"))?,
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
                let session = Arc::new(Session::new(client, st, pid, abort));
                // The driver holds the session weakly: dropping the node ends it.
                let _ = slot.set(Arc::downgrade(&session));
                Ok(session)
            }
            Err(e) => {
                abort.abort();
                Err(e)
            }
        }
    }

    /// Ends `session`: its leases are reported lost, our waiters retry. Their rows are
    /// left to expire on the server: the server's expiry is never earlier than the end of
    /// the validity each holder was given, so a holder that missed the loss signal (paused,
    /// or not watching `lost()`) is still alone until its validity ends. Releasing the
    /// rows now would hand the key to another client inside that window.
    fn end_session(&self, session: &Session, why: &str) {
        let lost = session.end(why);
        if !lost.is_empty() {
            tracing::warn!(server = %self.server(), %why, leases = lost.len(), "connection ended; its leases are lost");
        }
        self.inner.waiters.wake_all();
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
            Ok(Err(_)) | Err(_) => Err(LockError::Unavailable {
                message: format!(
                    "postgres busy: {doing} waited {limit:?} for its turn behind this client's other statements to {}; nothing was sent",
                    self.server()
                ),
                source: None,
            }),
        }
    }

    /// Runs one statement on the live session, once it has its turn (at most
    /// [`IN_FLIGHT`] at once, waiting at most [`QUEUE_TIMEOUTS`] statement timeouts for
    /// it), bounded by the statement timeout from when it is sent. A statement without an
    /// answer in time cuts the connection (its state is unknown); a closed connection
    /// ends the session.
    async fn call<T, F, Fut>(&self, doing: &'static str, f: F) -> Result<(T, Arc<Session>)>
    where
        F: FnOnce(Arc<Session>) -> Fut,
        Fut: std::future::Future<Output = std::result::Result<T, tokio_postgres::Error>>,
    {
        let timeout = self.inner.cfg.timeout;
        let _turn = self.turn(&self.inner.turns, doing, timeout * QUEUE_TIMEOUTS).await?;
        self.send(doing, timeout, f).await
    }

    /// Sends one statement now (the caller holds its turn) on the live session, bounded
    /// by `timeout`. Without an answer in time the statement fails (`Unavailable`), and
    /// the connection is cut (its leases reported lost) only if it looks dead: see
    /// [`Session::is_dead`].
    async fn send<T, F, Fut>(&self, doing: &'static str, timeout: Duration, f: F) -> Result<(T, Arc<Session>)>
    where
        F: FnOnce(Arc<Session>) -> Fut,
        Fut: std::future::Future<Output = std::result::Result<T, tokio_postgres::Error>>,
    {
        let session = self.session().await?;
        let sent = tokio::time::Instant::now();
        match self.inner.deadlines.within(timeout, f(Arc::clone(&session))).await {
            Some(Ok(v)) => {
                session.answered();
                Ok((v, session))
            }
            Some(Err(e)) => {
                if e.is_closed() || e.code().is_none() {
                    self.end_session(&session, &e.to_string());
                } else {
                    session.answered(); // the server answered with an error
                }
                Err(failed(doing, self.server(), e))
            }
            None => {
                // A late answer is read and dropped by the client; the connection stays
                // in step. It is cut only when it looks dead, not merely slow.
                if session.is_dead(sent, self.inner.cfg.timeout) {
                    self.end_session(&session, &format!("no answer to {doing} within {timeout:?}"));
                }
                Err(no_answer(doing, self.server(), timeout))
            }
        }
    }

    /// One acquire round trip (the prepared acquire statement), and the instant it was
    /// sent (after its wait for a turn), from which the lease's validity counts. Not
    /// retried: when the answer is lost a release of `grant` is sent in the background,
    /// so an unheard grant does not block others for a whole TTL.
    pub(crate) async fn try_grant(
        &self,
        key: &str,
        grant: &GrantId,
        ttl: Duration,
        ticket: Option<i64>,
    ) -> Result<(NodeGrant, Arc<Session>, tokio::time::Instant)> {
        let ttl_ms = ttl.as_millis() as i64;
        let ticket_ms = self.ticket_life().as_millis() as i64;
        let timeout = self.inner.cfg.timeout;
        // No turn, no connection: nothing was sent, nothing to abandon.
        let _turn = self
            .turn(&self.inner.turns, "acquire", timeout * QUEUE_TIMEOUTS)
            .await?;
        // Connect before the clock starts (the statement below finds the session ready).
        self.session().await?;
        // The validity counts from here, not from before the wait for a turn: the server
        // sets the expiry from when it receives the statement, which is later still.
        let sent_at = tokio::time::Instant::now();
        let answer = self
            .send("acquire", timeout, |s| async move {
                match ticket {
                    Some(t) => {
                        s.client
                            .query_one(&s.st.acquire_queued, &[&key, &grant.as_str(), &ttl_ms, &t, &ticket_ms])
                            .await
                    }
                    None => {
                        s.client
                            .query_one(&s.st.acquire, &[&key, &grant.as_str(), &ttl_ms])
                            .await
                    }
                }
            })
            .await;
        match answer {
            Ok((row, s)) => {
                let token: Option<i64> = row.get(0);
                let holder_ms: Option<i64> = row.get(1);
                let outcome = match token {
                    Some(t) => NodeGrant::Granted(u64::try_from(t).unwrap_or(0)),
                    None => {
                        let ms = |v: Option<i64>| v.map(|ms| u64::try_from(ms).unwrap_or(0));
                        NodeGrant::Busy(Busy {
                            holder_ms: ms(holder_ms),
                            head_ms: ms(row.get(2)),
                        })
                    }
                };
                Ok((outcome, s, sent_at))
            }
            Err(e) => {
                if e.is_temporary() {
                    self.release_later(key, grant.as_str());
                }
                Err(e)
            }
        }
    }

    /// Runs a clean-up in the background until it is confirmed: temporary failures
    /// (server unreachable, partition) are retried with backoff (25 ms doubling to
    /// 500 ms) for as long as this backend instance lives, at most [`CLEANUP_LIMIT`].
    /// Nothing when no runtime is running.
    fn cleanup<F, Fut>(&self, what: &'static str, step: F)
    where
        F: Fn(PgNode) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = Result<()>> + Send + 'static,
    {
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        use std::sync::atomic::Ordering;
        self.inner.cleanups.fetch_add(1, Ordering::SeqCst);
        let weak = Arc::downgrade(&self.inner);
        rt.spawn(async move {
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
            if let Some(inner) = weak.upgrade() {
                if inner.cleanups.fetch_sub(1, Ordering::SeqCst) == 1 {
                    inner.cleanups_done.notify_waiters();
                }
            }
        });
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
        self.call("abandon (mark)", |s| async move {
            s.client.execute(&s.st.abandon_mark, &[&grant]).await
        })
        .await?;
        self.call("abandon (expire)", |s| async move {
            s.client.execute(&s.st.abandon_expire, &[&key, &grant]).await
        })
        .await?;
        self.release(key, grant).await.map(|_| ())
    }

    /// Waits (at most `limit`) until every background clean-up has finished.
    pub(crate) async fn cleanups_finished(&self, limit: Duration) -> bool {
        use std::sync::atomic::Ordering;
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let done = self.inner.cleanups_done.notified();
            if self.inner.cleanups.load(Ordering::SeqCst) == 0 {
                return true;
            }
            if tokio::time::timeout_at(deadline, done).await.is_err() {
                return self.inner.cleanups.load(Ordering::SeqCst) == 0;
            }
        }
    }

    /// Ends the current session, if any (its leases are reported lost).
    pub(crate) fn close_session(&self, why: &str) -> Vec<(String, String)> {
        let session = self.inner.session.lock().unwrap_or_else(|p| p.into_inner()).take();
        let lost = session.map(|s| s.end(why)).unwrap_or_default();
        self.inner.waiters.wake_all();
        lost
    }

    /// Deletes our row and notifies the next waiter, if any; `false` if the row was not
    /// ours.
    pub(crate) async fn release(&self, key: &str, grant: &str) -> Result<bool> {
        let (row, _) = self
            .call("release", |s| async move {
                s.client.query_one(&s.st.release, &[&key, &grant]).await
            })
            .await?;
        Ok(row.get::<_, i64>(0) == 1)
    }

    /// Sets a new expiry `ttl` from now if the row still holds `grant` unexpired.
    pub(crate) async fn extend(&self, key: &str, grant: &str, ttl: Duration) -> Result<bool> {
        let ttl_ms = ttl.as_millis() as i64;
        let (n, _) = self
            .call("extend", |s| async move {
                s.client.execute(&s.st.extend, &[&key, &grant, &ttl_ms]).await
            })
            .await?;
        Ok(n == 1)
    }

    /// Like [`extend`](Self::extend), batched with the other background renewals.
    pub(crate) async fn renew(&self, key: &str, grant: &str, ttl: Duration) -> Result<bool> {
        let renewal = Renewal {
            key: key.to_owned(),
            grant: grant.to_owned(),
            ttl_ms: ttl.as_millis() as i64,
        };
        let flush = |inner, batch: Vec<Renewal>| async move { PgNode { inner }.renew_batch(batch).await };
        let wait = self.inner.cfg.renew_window.min(ttl / 10);
        self.inner.renewals.submit(renewal, wait, &self.inner, flush).await
    }

    /// Renews a batch the window made: queues it, then — while any of it is still
    /// queued — takes a turn (at most [`renewals::IN_FLIGHT`] renewal statements at once)
    /// and sends the oldest queued renewals, ours or others', in one statement. Answers
    /// each of ours. Bounded: each turn and each statement by [`renewals::bound`] of our
    /// shortest TTL, and each pass sends at least one queued renewal.
    async fn renew_batch(&self, batch: Vec<Renewal>) -> Vec<Result<bool>> {
        let pending = &self.inner.pending;
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
            let answers = self.renew_statement(&renewals).await;
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
    async fn renew_statement(&self, batch: &[Renewal]) -> Vec<Result<bool>> {
        let keys: Vec<&str> = batch.iter().map(|r| r.key.as_str()).collect();
        let grants: Vec<&str> = batch.iter().map(|r| r.grant.as_str()).collect();
        let ttls: Vec<i64> = batch.iter().map(|r| r.ttl_ms).collect();
        let ttl_ms = ttls.iter().copied().min().unwrap_or(0);
        let bound = renewals::bound_ms(self.inner.cfg.timeout, ttl_ms);
        let (keys, grants, ttls) = (&keys, &grants, &ttls);
        let answer = self
            .send("batched renewal", bound, |s| async move {
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
    pub(crate) fn ticket_life(&self) -> Duration {
        self.inner.cfg.poll * 2 + Duration::from_secs(1)
    }

    /// Takes a ticket in the key's waiter queue.
    pub(crate) async fn enqueue(&self, key: &str) -> Result<i64> {
        let wait_ms = self.ticket_life().as_millis() as i64;
        let (row, _) = self
            .call("joining the waiter queue", |s| async move {
                s.client.query_one(&s.st.enqueue, &[&key, &wait_ms]).await
            })
            .await?;
        Ok(row.get(0))
    }

    /// Registers our waiter `ticket` for its release notification, and starts the
    /// instance's ticket keeper when it is not running: every fallback poll (jittered),
    /// one statement renews all of this instance's tickets for [`ticket_life`]
    /// (Self::ticket_life), so that a waiter behind others need not attempt just to keep
    /// its place. The keeper ends when no ticket is left or the instance is dropped; a
    /// failed renewal is only logged (each waiter's own attempts renew its ticket too).
    pub(crate) fn register_ticket(&self, ticket: i64) -> Arc<tokio::sync::Notify> {
        let (notify, start) = self.inner.waiters.register(ticket);
        if start {
            let Ok(rt) = tokio::runtime::Handle::try_current() else {
                self.inner.waiters.keeper_stopped();
                return notify;
            };
            let weak = Arc::downgrade(&self.inner);
            let poll = self.inner.cfg.poll;
            rt.spawn(async move {
                loop {
                    tokio::time::sleep(fencelock_core::waiting::jitter(poll)).await;
                    let Some(inner) = weak.upgrade() else { return };
                    let Some(tickets) = inner.waiters.to_keep() else { return };
                    let node = PgNode { inner };
                    let life = node.ticket_life().as_millis() as i64;
                    let (tickets, life) = (&tickets, &life);
                    let kept = node
                        .call("keeping waiter tickets", |s| async move {
                            s.client.execute(&s.st.keep_tickets, &[tickets, life]).await
                        })
                        .await;
                    if let Err(e) = kept {
                        tracing::debug!(error = %e, "keeping waiter tickets failed; their own attempts renew them");
                    }
                }
            });
        }
        notify
    }

    /// Leaves the queue in the background, retried until confirmed.
    pub(crate) fn dequeue_later(&self, ticket: i64) {
        self.cleanup("leaving the waiter queue", move |node| async move {
            node.call("leaving the waiter queue", |s| async move {
                s.client.execute(&s.st.dequeue, &[&ticket]).await
            })
            .await
            .map(|_| ())
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;
    use fencelock_testkit::pg_server::PgServer;

    /// The late-delivery hazard, made deterministic: the acquire of a grant whose answer
    /// was lost reaches the server only after the client cleaned up. A plain release run
    /// first leaves that late acquire free to grant for a whole TTL; an abandon refuses it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_acquire_arriving_after_its_abandon_is_refused() {
        let server = PgServer::start();
        let node = PgNode::new(PgConfig::from_url(&server.url()).unwrap());
        let ttl = Duration::from_secs(60);

        let released = GrantId::random();
        assert!(!node.release("k1", released.as_str()).await.unwrap());
        let (late, _, _) = node.try_grant("k1", &released, ttl, None).await.unwrap();
        assert!(
            matches!(late, NodeGrant::Granted(_)),
            "the hazard this guards against: a release before the late acquire does not stop it"
        );

        let abandoned = GrantId::random();
        node.abandon("k2", abandoned.as_str()).await.unwrap();
        let (late, _, _) = node.try_grant("k2", &abandoned, ttl, None).await.unwrap();
        assert!(
            matches!(late, NodeGrant::Busy(_)),
            "an abandoned grant landed late: {late:?}"
        );
        // And the key is free for everyone else: the placeholder is expired and released.
        let (other, _, _) = node.try_grant("k2", &GrantId::random(), ttl, None).await.unwrap();
        assert!(matches!(other, NodeGrant::Granted(_)), "{other:?}");
    }
}
