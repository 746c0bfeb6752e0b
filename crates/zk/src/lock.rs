//! [`ZkLock`]: the backend instance — connecting, the session it owns, and the
//! `DistributedLock` methods, which put the queue (`queue`) and the grant (`grant`)
//! together.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use fencelock_core::closing::CloseGate;
use fencelock_core::options::validate_key;
use fencelock_core::waiting::{queue_checked, LastCheck};
use fencelock_core::{
    DistributedLock, Exclusion, Guarantees, Lease, LockError, LockOptions, Result, Scope, TokenOrder,
};
use tokio::time::Instant;
use zookeeper_client::{Acls, CreateMode};

use crate::config::ZkConfig;
use crate::error::{failed, no_answer, timed_out};
use crate::grant;
use crate::queue::{enqueue, first_position, position, wait_turn, Pending, Queued};
use crate::session::Session;
use crate::waiting::WaitingSlot;

/// What the ZooKeeper backend promises.
pub const GUARANTEES: Guarantees = Guarantees {
    backend: "zookeeper",
    exclusion: Exclusion::Strict,
    tokens: TokenOrder::StrictlyMonotonic,
    scope: Scope::Network,
    assumptions: &[
        "the ensemble keeps a quorum; node creation and deletion are ZAB-committed",
        "tokens are the lock node's creation zxid: strictly increasing across the whole ensemble",
        "the session timeout plays the TTL's role: a holder that pauses past it can still act after another holder got the lock: send the token to the resource",
        "every server of the ensemble has the same tickTime and min/max session timeout, and the session timeout is at least 2 × tickTime: a validity is derived from the timeout negotiated at connect, which zookeeper-client does not re-read after a reconnect (after lowering tickTime or maxSessionTimeout, connect the clients anew)",
    ],
};

/// The ZooKeeper lock service.
///
/// ```no_run
/// # async fn demo() -> fencelock_core::Result<()> {
/// use fencelock_core::{DistributedLock, LockOptions};
/// let locks = fencelock_zk::ZkLock::connect("zk://127.0.0.1:2181,127.0.0.1:2182/myapp").await?;
/// let lease = locks.acquire("rebalance", &LockOptions::new()).await?;
/// println!("token (czxid) {}", lease.token());
/// lease.release().await?;
/// locks.close().await?;
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct ZkLock {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    cfg: Arc<ZkConfig>,
    session: tokio::sync::Mutex<Option<Arc<Session>>>,
    wakeups: AtomicU64,
    /// The waiting session (issue 14), opened while this instance waits.
    waiting: WaitingSlot,
    /// Shut by [`close`](DistributedLock::close): no call goes on, no session is opened.
    gate: CloseGate,
}

impl ZkLock {
    /// Connects to the ensemble a `zk://` URL names (see [`ZkConfig::from_url`]).
    ///
    /// # Errors
    /// As [`ZkLock::connect_with`], and [`LockError::InvalidConfig`] for a bad URL.
    ///
    /// # Cancel safety
    /// Cancel safe: dropping the future drops the half-made session, which closes it.
    pub async fn connect(url: &str) -> Result<Self> {
        Self::connect_with(ZkConfig::from_url(url)?).await
    }

    /// Connects with explicit options (checked as [`ZkConfig::validate`] checks them). Creates
    /// the chroot if it is missing. A server that is down or between leaders is retried
    /// (the client tries the other servers) while the connect and request timeouts last.
    ///
    /// # Errors
    /// [`LockError::InvalidConfig`] for options out of range, refused credentials, or a
    /// `session_timeout` below the server's minimum session timeout (which the server would
    /// raise without a word; the message names the minimum); [`LockError::Unavailable`]
    /// when no server answered in time.
    ///
    /// # Cancel safety
    /// Cancel safe: dropping the future drops the half-made session, which closes it.
    pub async fn connect_with(cfg: ZkConfig) -> Result<Self> {
        cfg.validate()?;
        let deadline = Instant::now() + cfg.connect_limit();
        let lock = ZkLock {
            inner: Arc::new(Inner {
                cfg: Arc::new(cfg),
                session: tokio::sync::Mutex::new(None),
                wakeups: AtomicU64::new(0),
                waiting: WaitingSlot::default(),
                gate: CloseGate::new(),
            }),
        };
        let mut pause = Duration::from_millis(25);
        loop {
            let attempt = async {
                ensure_chroot(&lock.inner.cfg).await?;
                lock.session().await.map(|_| ())
            };
            match attempt.await {
                Ok(()) => return Ok(lock),
                Err(e) if e.is_temporary() && !crate::error::is_refused(&e) && Instant::now() + pause < deadline => {
                    tracing::debug!(error = %e, "connect failed; trying again");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_millis(500));
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// The options in use (for the election).
    pub(crate) fn cfg(&self) -> &ZkConfig {
        &self.inner.cfg
    }

    /// How many times a waiter was woken by its predecessor's watch (for tests: each
    /// release should wake exactly one waiter).
    pub fn watch_wakeups(&self) -> u64 {
        self.inner.wakeups.load(Ordering::Relaxed)
    }

    /// The current session id, if connected (for tests).
    ///
    /// # Cancel safety
    /// Cancel safe: it only reads.
    pub async fn session_id(&self) -> Option<i64> {
        self.inner
            .session
            .lock()
            .await
            .as_ref()
            .filter(|s| s.is_usable())
            .map(|s| s.id())
    }

    /// The live session, opened if there is none or it ended.
    ///
    /// # Errors
    /// [`LockError::Closed`] once `close()` began (checked under the session's lock, which
    /// `close()` takes after shutting the gate: no session is opened that it would miss);
    /// as [`Session::connect`] otherwise.
    pub(crate) async fn session(&self) -> Result<Arc<Session>> {
        let mut slot = self.inner.session.lock().await;
        self.inner.gate.check()?;
        if let Some(s) = slot.as_ref().filter(|s| s.is_usable()) {
            return Ok(Arc::clone(s));
        }
        let s = Session::connect(&self.inner.cfg).await?;
        *slot = Some(Arc::clone(&s));
        Ok(s)
    }
}

/// Creates the chroot (persistent) with a client that is not chrooted; nothing for the root
/// (an empty chroot).
async fn ensure_chroot(cfg: &ZkConfig) -> Result<()> {
    if cfg.chroot.is_empty() {
        return Ok(());
    }
    let plain = ZkConfig {
        chroot: String::new(),
        ..cfg.clone()
    };
    let session = Session::connect(&plain).await?;
    let client = session.client()?;
    let opts = CreateMode::Persistent.with_acls(Acls::anyone_all());
    match tokio::time::timeout(cfg.timeout, client.mkdir(&cfg.chroot, &opts)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(failed("creating the chroot", &cfg.display, e)),
        Err(_) => Err(timed_out("creating the chroot", &cfg.display, cfg.timeout)),
    }
}

#[async_trait]
impl DistributedLock for ZkLock {
    /// Creates our node and lists the queue once (two requests): ours first is a lease,
    /// otherwise `Ok(None)` and the node is deleted in the background.
    ///
    /// # Errors
    /// [`LockError::InvalidInput`] for a bad key or options; [`LockError::Unavailable`]
    /// when a request got no answer within the request timeout (the create is followed up
    /// in the background and its node deleted) or the grant's answer came after its
    /// validity; [`LockError::Closed`] once `close()` was called.
    ///
    /// # Cancel safety
    /// Cancel safe: the create runs in its own task and a node made for a caller that is
    /// gone is deleted in the background.
    #[tracing::instrument(level = "debug", skip(self, opts), fields(backend = "zookeeper"))]
    async fn try_acquire(&self, key: &str, opts: &LockOptions) -> Result<Option<Lease>> {
        self.inner
            .gate
            .pass(async {
                validate_key(key)?;
                opts.validate_for_try()?;
                let session = self.session().await?;
                let dir = self.inner.cfg.layout.dir(key, &self.inner.cfg.chroot);
                let q = enqueue(&session, &self.inner.cfg, key, dir, &Pending::new(), None).await?;
                let pos = first_position(&q).await?;
                match pos.predecessor {
                    None => Ok(Some(grant::lease(key, opts, q, pos.sent_at).into_live_for_try()?)),
                    Some(_) => Ok(None), // dropping `q` deletes our node
                }
            })
            .await
    }

    /// Takes a place in the key's queue and waits for its turn, watching the three nodes
    /// before its own, its own node and at most one waiting marker. A failed attempt is retried while the wait lasts with the same grant
    /// id, waiting for a create that is still unanswered instead of making another node.
    ///
    /// # Errors
    /// [`LockError::Timeout`] when the wait ran out; [`LockError::InvalidInput`] for a bad
    /// key or options; [`LockError::Unavailable`] when the ensemble stayed unreachable
    /// through the wait; [`LockError::Closed`] when `close()` was called before or during
    /// the wait (the node is then dropped as a cancelled wait's is).
    ///
    /// # Cancel safety
    /// Cancel safe: a dropped `acquire` drops its node (deleted in the background) and its
    /// unanswered create (whose node, if it is made, is deleted when the answer comes).
    #[tracing::instrument(level = "debug", skip(self, opts), fields(backend = "zookeeper"))]
    async fn acquire(&self, key: &str, opts: &LockOptions) -> Result<Lease> {
        let pending = Pending::new();
        let pending = &pending;
        // Our node, kept for the next attempt when a wait for our turn got no answer (the
        // connection dropped, a request timed out) while the session lives on: the node
        // lives as long as the session, and so does our place in the queue. Dropped (the
        // node deleted in the background) with the acquire, or when the next attempt runs
        // in another session.
        let kept: std::sync::Mutex<Option<Queued>> = std::sync::Mutex::new(None);
        let kept = &kept;
        // The last check (one request per wait that runs out): an ensemble that lost its
        // quorum, or a session being opened again against it, can keep an attempt from
        // answering or failing until the wait's end — which then read as "held by someone
        // else" (`Timeout`, exit 75) instead of `Unavailable` (69): 1 run in 4 of
        // `two_of_three_down_is_unavailable_within_the_bound` (a 1 s wait).
        let cfg = &self.inner.cfg;
        let probe = || async move {
            let check = async {
                let session = self.session().await?;
                let client = session.client()?;
                client
                    .check_stat("/")
                    .await
                    .map(|_| ())
                    .map_err(|e| failed("the last check of a wait", &cfg.display, e))
            };
            match tokio::time::timeout(cfg.timeout, check).await {
                Ok(checked) => checked,
                Err(_) => Err(timed_out("the last check of a wait", &cfg.display, cfg.timeout)),
            }
        };
        let check = LastCheck::for_request_timeout(cfg.timeout);
        let wait = queue_checked(key, opts, check, probe, |queued| async move {
            let session = self.session().await?;
            let ours = kept
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .take()
                .filter(|q| Arc::ptr_eq(&q.session, &session));
            let (mut q, kept_before) = match ours {
                Some(q) => (q, true),
                None => {
                    // While the instance keeps a waiting session, its nodes of a key whose
                    // last acquire here waited name the marker from their create (no
                    // request more); other creates name nothing, so a grant at once
                    // needs no claim.
                    let dir = cfg.layout.dir(key, &cfg.chroot);
                    let named = match (opts.auto_renew(), &dir) {
                        (true, Ok(dir)) => self.inner.waiting.current(dir, &session).await,
                        _ => None,
                    };
                    (
                        enqueue(&session, &self.inner.cfg, key, dir, pending, named).await?,
                        false,
                    )
                }
            };
            if !kept_before {
                queued.mark();
            }
            let validity = opts.ttl().min(session.proven_for());
            let waited = async {
                if kept_before {
                    // Marked once the server answered again and our node still stands: until
                    // then, a wait that runs out is the last attempt's error (a server gone
                    // for good is `Unavailable`, not a timeout).
                    position(&q).await?;
                    queued.mark();
                }
                // Only auto-renewed locks name a waiting marker: a grant on a named node is
                // valid for the waiting session's timeout until its first renewal claims it.
                let namer = opts.auto_renew().then_some(&self.inner.waiting);
                let confirmed = wait_turn(&mut q, &self.inner.wakeups, validity, namer).await?;
                grant::settle(&mut q, confirmed, validity).await
            };
            match waited.await {
                Ok(confirmed_at) => Ok(Some(grant::lease(key, opts, q, confirmed_at))),
                Err(e) => {
                    if no_answer(&e) && q.session.is_usable() {
                        tracing::debug!(node = %q.name, error = %e, "no answer while waiting for our turn; our node keeps its place");
                        *kept.lock().unwrap_or_else(|p| p.into_inner()) = Some(q);
                    }
                    Err(e)
                }
            }
        });
        self.inner.gate.pass(wait).await
    }

    fn guarantees(&self) -> Guarantees {
        self.inner.cfg.layout.guarantees()
    }

    fn describe(&self) -> String {
        self.inner.cfg.display.clone()
    }

    /// Shuts this instance and its clones — waiting acquires end with
    /// [`LockError::Closed`] (their nodes are deleted as a cancelled acquire's are, or go
    /// with the session), later calls fail with it and open no session — then waits (up
    /// to two request timeouts) for the background deletions, follow-ups and releases of
    /// dropped leases (counted from the drop) to finish,
    /// and closes the session: the server deletes every node it still owns at once, and
    /// every lease of this instance is lost. Called again, it finds nothing left to close.
    ///
    /// # Errors
    /// [`LockError::Unavailable`] when the client did not report the session closed within
    /// the request timeout; the server then ends it after the session timeout.
    ///
    /// # Cancel safety
    /// Cancel safe: dropping it leaves the clean-ups running; the session stays open
    /// until this instance is dropped, or closed by a later call.
    async fn close(&self) -> Result<()> {
        let _closing = self.inner.gate.close(self.inner.cfg.timeout * 2).await;
        let session = self.inner.session.lock().await.take();
        // Every lease is told lost before either session ends: ending the waiting session
        // deletes its marker at once, and another waiter may then remove a node granted to
        // us but not yet claimed and be granted — while our lease still read as held until
        // the main session reported Closed, up to 2 × `timeout` later with clean-ups
        // pending (review). The main session's end loses them all anyway.
        if let Some(session) = &session {
            session
                .locks
                .lost_all(&fencelock_core::LostReason::Backend("the client closed it".into()));
        }
        self.inner.waiting.close().await;
        let Some(session) = session else {
            return Ok(());
        };
        let cfg = &self.inner.cfg;
        if !session.cleanups.idle(cfg.timeout * 2).await {
            tracing::debug!("clean-ups still running at close; the session's end finishes them");
        }
        if session.close("the client closed it", cfg.timeout).await {
            Ok(())
        } else {
            Err(LockError::Unavailable {
                message: format!(
                    "zookeeper did not confirm the session's close within {:?} on {}; it ends after the session timeout",
                    cfg.timeout, cfg.display
                ),
                source: None,
            })
        }
    }
}
