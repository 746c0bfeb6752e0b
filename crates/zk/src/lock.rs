//! [`ZkLock`]: the Curator-style lock recipe, with zxid fencing tokens.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use async_trait::async_trait;
use fencelock_core::batch::spread_error;
use fencelock_core::options::validate_key;
use fencelock_core::waiting::{detached, queue_with};
use fencelock_core::{
    DistributedLock, Exclusion, FencingToken, GrantId, Guarantees, Lease, LeaseOps, LeaseParts, LockError, LockOptions,
    Result, Scope, TokenOrder,
};
use tokio::time::Instant;
use zookeeper_client::{Acls, CreateMode, EventType, MultiReadResult};

use crate::config::ZkConfig;
use crate::error::{failed, timed_out, BACKEND};
use crate::session::{Session, RENEW_WINDOW};

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
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct ZkLock {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    cfg: ZkConfig,
    session: tokio::sync::Mutex<Option<Arc<Session>>>,
    wakeups: AtomicU64,
}

/// `%` and `/` escaped: a key is one path segment.
fn escape(key: &str) -> String {
    key.replace('%', "%25").replace('/', "%2F")
}

/// The sequence number ZooKeeper appended to a child's name.
fn sequence(name: &str) -> Option<i64> {
    name.rsplit('-').next()?.parse().ok()
}

/// Our node in the queue. Dropping it (an abandoned or failed acquire) deletes it in the
/// background unless it became a lease.
struct Queued {
    session: Arc<Session>,
    cfg: ZkConfig,
    dir: String,
    name: String,
    czxid: i64,
    sent_at: Instant,
    armed: bool,
}

impl Queued {
    fn path(&self) -> String {
        format!("{}/{}", self.dir, self.name)
    }
}

impl Drop for Queued {
    fn drop(&mut self) {
        if self.armed {
            guaranteed_delete(Arc::clone(&self.session), self.cfg.clone(), self.path());
        }
    }
}

/// Deletes `path` in the background, retrying until ZooKeeper confirms (deleted, or already
/// gone) or the session ends — Curator's "guaranteed delete". Bounded: the session expires
/// at the latest a session timeout after the server last heard from us.
fn guaranteed_delete(session: Arc<Session>, cfg: ZkConfig, path: String) {
    let Ok(rt) = tokio::runtime::Handle::try_current() else {
        return;
    };
    rt.spawn(async move {
        let mut pause = Duration::from_millis(20);
        for _ in 0..1000 {
            if !session.is_usable() {
                return; // the session's end deletes the ephemeral node
            }
            match tokio::time::timeout(cfg.timeout, session.client.delete(&path, None)).await {
                Ok(Ok(())) | Ok(Err(zookeeper_client::Error::NoNode)) => return,
                _ => {
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(1));
                }
            }
        }
    });
}

impl ZkLock {
    /// Connects to the ensemble a `zk://` URL names (see [`ZkConfig::from_url`]).
    pub async fn connect(url: &str) -> Result<Self> {
        Self::connect_with(ZkConfig::from_url(url)?).await
    }

    /// Connects with explicit options. Creates the chroot if it is missing. A server that
    /// is down or between leaders is retried (the client tries the other servers) while
    /// the connect and request timeouts last.
    pub async fn connect_with(cfg: ZkConfig) -> Result<Self> {
        let deadline = Instant::now() + cfg.connect_timeout * (cfg.servers.len() as u32 + 1) + cfg.timeout;
        let lock = ZkLock {
            inner: Arc::new(Inner {
                cfg,
                session: tokio::sync::Mutex::new(None),
                wakeups: AtomicU64::new(0),
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
                Err(e) if e.is_temporary() && Instant::now() + pause < deadline => {
                    tracing::debug!(error = %e, "connect failed; trying again");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_millis(500));
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// How many times a waiter was woken by its predecessor's watch (for tests: each
    /// release should wake exactly one waiter).
    pub fn watch_wakeups(&self) -> u64 {
        self.inner.wakeups.load(Ordering::Relaxed)
    }

    /// The current session id, if connected (for tests).
    pub async fn session_id(&self) -> Option<i64> {
        self.inner
            .session
            .lock()
            .await
            .as_ref()
            .filter(|s| s.is_usable())
            .map(|s| s.client.session_id().0)
    }

    async fn session(&self) -> Result<Arc<Session>> {
        let mut slot = self.inner.session.lock().await;
        if let Some(s) = slot.as_ref().filter(|s| s.is_usable()) {
            return Ok(Arc::clone(s));
        }
        let s = Session::connect(&self.inner.cfg).await?;
        *slot = Some(Arc::clone(&s));
        Ok(s)
    }

    async fn call<T>(
        &self,
        doing: &'static str,
        fut: impl std::future::Future<Output = std::result::Result<T, zookeeper_client::Error>>,
    ) -> Result<T> {
        match tokio::time::timeout(self.inner.cfg.timeout, fut).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(failed(doing, &self.inner.cfg.display, e)),
            Err(_) => Err(timed_out(doing, &self.inner.cfg.display, self.inner.cfg.timeout)),
        }
    }

    /// Creates our ephemeral sequential node under the key's container, with the grant id
    /// in its name (Curator's protected mode): if the create's answer is lost, the node is
    /// found again by that id. Runs in its own task, so a caller that gives up leaves no
    /// node behind (the `Queued` is dropped there, which deletes it).
    async fn enqueue(&self, key: &str) -> Result<Queued> {
        let me = self.clone();
        let key = key.to_owned();
        detached(BACKEND, async move {
            let session = me.session().await?;
            let dir = format!("/{}", escape(&key));
            let grant = GrantId::random();
            let prefix = format!("{dir}/lock-{grant}-");
            let sent_at = Instant::now();
            let node = CreateMode::EphemeralSequential.with_acls(Acls::anyone_all());
            let mut created = me
                .call("creating the lock node", session.client.create(&prefix, b"", &node))
                .await;
            if matches!(&created, Err(LockError::Backend { .. })) {
                // Most likely the container is missing (new key, or deleted when empty).
                let dir_opts = CreateMode::Container.with_acls(Acls::anyone_all());
                match session.client.create(&dir, b"", &dir_opts).await {
                    Ok(_) | Err(zookeeper_client::Error::NodeExists) => {}
                    Err(e) => return Err(failed("creating the lock's container", &me.inner.cfg.display, e)),
                }
                created = me
                    .call("creating the lock node", session.client.create(&prefix, b"", &node))
                    .await;
            }
            let (name, czxid) = match created {
                Ok((stat, seq)) => (format!("lock-{grant}-{seq}"), stat.czxid),
                Err(LockError::Unavailable { .. }) if session.is_usable() => {
                    // The answer was lost: the node may exist. Find it by our grant id.
                    let children = me.call("listing the queue", session.client.list_children(&dir)).await?;
                    let Some(name) = children.into_iter().find(|c| c.contains(grant.as_str())) else {
                        return Err(LockError::Unavailable {
                            message: "the lock node's creation was not confirmed".into(),
                            source: None,
                        });
                    };
                    let stat = me
                        .call("reading our node", session.client.check_stat(&format!("{dir}/{name}")))
                        .await?;
                    let Some(stat) = stat else {
                        return Err(LockError::Unavailable {
                            message: "the lock node vanished".into(),
                            source: None,
                        });
                    };
                    (name, stat.czxid)
                }
                Err(e) => return Err(e),
            };
            Ok(Queued {
                session,
                cfg: me.inner.cfg.clone(),
                dir,
                name,
                czxid,
                sent_at,
                armed: true,
            })
        })
        .await
    }

    /// Lists the queue: `Ok(None)` when we are first, `Ok(Some(predecessor))` otherwise,
    /// `Err` when our node is gone (the session expired).
    async fn position(&self, q: &Queued) -> Result<Option<String>> {
        let mut children = self
            .call("listing the queue", q.session.client.list_children(&q.dir))
            .await?;
        children.retain(|c| sequence(c).is_some());
        children.sort_by_key(|c| sequence(c).unwrap_or(i64::MAX));
        let Some(at) = children.iter().position(|c| *c == q.name) else {
            return Err(LockError::Unavailable {
                message: "our lock node is gone (session expired?)".into(),
                source: None,
            });
        };
        Ok((at > 0).then(|| children[at - 1].clone()))
    }

    /// Waits until we are first: watches only our predecessor (no herd).
    async fn wait_turn(&self, q: &Queued) -> Result<()> {
        for _ in 0..100_000 {
            let Some(pred) = self.position(q).await? else {
                return Ok(());
            };
            let path = format!("{}/{pred}", q.dir);
            let (stat, watcher) = self
                .call("watching the predecessor", q.session.client.check_and_watch_stat(&path))
                .await?;
            if stat.is_none() {
                continue; // gone between the listing and the watch: look again
            }
            let event = watcher.changed().await;
            self.inner.wakeups.fetch_add(1, Ordering::Relaxed);
            if event.event_type == EventType::Session && !q.session.is_usable() {
                return Err(LockError::Unavailable {
                    message: "the zookeeper session ended while waiting".into(),
                    source: None,
                });
            }
        }
        Err(LockError::Unavailable {
            message: "the queue did not settle".into(),
            source: None,
        })
    }

    fn grant(&self, key: &str, opts: &LockOptions, mut q: Queued) -> Lease {
        q.armed = false;
        let validity = opts.ttl().min(q.session.timeout());
        let token = FencingToken::new(u64::try_from(q.czxid).unwrap_or(0));
        let grant = GrantId::from_string(format!("{:x}:{}", q.session.client.session_id().0, q.path()));
        let ops = Arc::new(ZkGrant {
            session: Arc::clone(&q.session),
            cfg: q.cfg.clone(),
            path: q.path(),
            czxid: q.czxid,
            registration: OnceLock::new(),
        });
        let lease = Lease::new(LeaseParts {
            key: key.to_owned(),
            token,
            grant,
            sent_at: q.sent_at,
            validity,
            options: *opts,
            ops: ops.clone(),
        });
        let _ = ops.registration.set(q.session.locks.register(lease.reporter()));
        tracing::debug!(key, %token, "granted");
        lease
    }
}

/// Creates the chroot (persistent) with a client that is not chrooted.
async fn ensure_chroot(cfg: &ZkConfig) -> Result<()> {
    let plain = ZkConfig {
        chroot: String::new(),
        ..cfg.clone()
    };
    let session = Session::connect(&plain).await?;
    let opts = CreateMode::Persistent.with_acls(Acls::anyone_all());
    match tokio::time::timeout(cfg.timeout, session.client.mkdir(&cfg.chroot, &opts)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(failed("creating the chroot", &cfg.display, e)),
        Err(_) => Err(timed_out("creating the chroot", &cfg.display, cfg.timeout)),
    }
}

#[async_trait]
impl DistributedLock for ZkLock {
    #[tracing::instrument(level = "debug", skip(self, opts), fields(backend = "zookeeper"))]
    async fn try_acquire(&self, key: &str, opts: &LockOptions) -> Result<Option<Lease>> {
        validate_key(key)?;
        opts.validate_for_try()?;
        let q = self.enqueue(key).await?;
        match self.position(&q).await? {
            None => Ok(Some(self.grant(key, opts, q).into_live()?)),
            Some(_) => Ok(None), // dropping `q` deletes our node
        }
    }

    #[tracing::instrument(level = "debug", skip(self, opts), fields(backend = "zookeeper"))]
    async fn acquire(&self, key: &str, opts: &LockOptions) -> Result<Lease> {
        queue_with(key, opts, || async {
            let q = self.enqueue(key).await?;
            self.wait_turn(&q).await?;
            Ok(Some(self.grant(key, opts, q)))
        })
        .await
    }

    fn guarantees(&self) -> Guarantees {
        GUARANTEES
    }

    fn describe(&self) -> String {
        self.inner.cfg.display.clone()
    }
}

/// Reads every node of a renewal batch in one multi-read: each answers whether the node is
/// still there with its creation zxid.
async fn check_nodes(session: &Session, cfg: &ZkConfig, batch: &[(String, i64)]) -> Vec<Result<bool>> {
    let mut reader = session.client.new_multi_reader();
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
    cfg: ZkConfig,
    path: String,
    czxid: i64,
    registration: OnceLock<u64>,
}

#[async_trait]
impl LeaseOps for ZkGrant {
    /// ZooKeeper has no per-node TTL: the node lives as long as the session, which the
    /// client keeps alive. Extending checks that our node still exists: the answer proves
    /// the server heard from the session at the send instant, so the session (and the node)
    /// lives at least a session timeout from then.
    async fn extend(&self, ttl: Duration) -> Result<Option<Duration>> {
        if !self.session.is_usable() {
            return Ok(None);
        }
        match tokio::time::timeout(self.cfg.timeout, self.session.client.check_stat(&self.path)).await {
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
        let (cfg, wait) = (self.cfg.clone(), RENEW_WINDOW.min(ttl / 10));
        let flush = move |session: Arc<Session>, batch: Vec<(String, i64)>| {
            let cfg = cfg.clone();
            async move { check_nodes(&session, &cfg, &batch).await }
        };
        let held = self
            .session
            .renewals
            .submit((self.path.clone(), self.czxid), wait, &self.session, flush)
            .await?;
        Ok(held.then(|| ttl.min(self.session.timeout())))
    }

    async fn release(&self) -> Result<bool> {
        if let Some(id) = self.registration.get() {
            self.session.locks.unregister(*id);
        }
        if !self.session.is_usable() {
            return Ok(false);
        }
        match tokio::time::timeout(self.cfg.timeout, self.session.client.delete(&self.path, None)).await {
            Ok(Ok(())) => Ok(true),
            Ok(Err(zookeeper_client::Error::NoNode)) => Ok(false),
            other => {
                // Not confirmed: keep deleting in the background until it is, or the
                // session ends (which deletes the node).
                guaranteed_delete(Arc::clone(&self.session), self.cfg.clone(), self.path.clone());
                Err(match other {
                    Ok(Err(e)) => failed("deleting our lock node", &self.cfg.display, e),
                    _ => timed_out("deleting our lock node", &self.cfg.display, self.cfg.timeout),
                })
            }
        }
    }
}
