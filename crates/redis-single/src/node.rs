//! [`RedisNode`]: one Redis server as the lock backends use it — the scripts, the release
//! channel, the connection. The single-server backend uses one; Redlock uses N.

use std::sync::Arc;
use std::time::Duration;

use fencelock_core::batch::spread_error;
use fencelock_core::cleanup::{CleanupGuard, Cleanups};
use fencelock_core::waiting::WakeFuture;
use fencelock_core::{GrantId, LockError, Result};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use crate::config::RedisConfig;
use crate::error::failed;
use crate::handoff::Handed;
use crate::identity::Identity;
use crate::layout::Keys;
use crate::renewals::{renewals, Renewal, Renewals};
use crate::scripts::{
    self, ACQUIRE, EXTEND, EXTEND_MANY, HEAL, LEAVE, RELEASE, RELEASE_RAISING, RELEASE_UNQUEUED, WAIT_TURN,
};
use crate::wait::{Subscription, Waiters};

/// What a node answered to an acquire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeGrant {
    /// Granted; the node's token counter for the key is now this.
    Granted(u64),
    /// Held by another grant for this many more milliseconds (`None`: the key has no TTL).
    Busy(Option<u64>),
    /// Refused because the node is inside its restart delay (Redlock's `restart_delay`)
    /// for this many more milliseconds, whether or not the key is held there: the node
    /// votes for no grant until then. Never answered without a restart delay.
    Restarting(u64),
}

/// How long the lock stays reserved for a queue head that must claim it — Redlock's
/// waiters, whose grant needs a quorum (a `redis://` waiter is granted the lock directly,
/// with its full TTL, by the release: no reservation): the head claims it (to its full
/// TTL) within this, or loses its turn. It is also the most such a waiter that died while
/// queued (cut off, its connections still open) delays the others: the next waiter is told
/// it is next at the hand-off and takes over when the reservation lapses.
pub const HANDOFF_CLAIM: Duration = Duration::from_millis(250);

/// What a waiter's turn ([`RedisNode::wait_turn`]) answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Turn {
    /// Ours, with this token; the lock's TTL counts from the request's send instant.
    Granted(u64),
    /// Queued (entry kept for the next turn); the holder has this many ms left.
    Queued {
        /// The holder's remaining TTL in ms (`None`: no TTL).
        pttl: Option<u64>,
        /// Our entry in the queue, passed back on the next turn.
        entry: String,
        /// The server's time (`TIME`, ms since the Unix epoch) when the turn ran (`None`
        /// when refused inside the restart delay): a direct hand-off's validity is counted
        /// against it (see `handoff.rs`).
        server_ms: Option<u64>,
    },
}

/// One Redis server. Cheap to clone (shared state).
#[derive(Clone)]
pub struct RedisNode {
    inner: Arc<NodeInner>,
}

struct NodeInner {
    client: redis::Client,
    cfg: RedisConfig,
    keys: Keys,
    /// The connection once made (read on every call, so a plain mutex held for a clone).
    conn: std::sync::Mutex<Option<ConnectionManager>>,
    /// Held while connecting, so concurrent first calls make one connection.
    connecting: tokio::sync::Mutex<()>,
    /// The server's `run_id` (`INFO server`) as read when the connection was made, before
    /// any grant of this node: a repeated release of a grant whose own `run_id` is not
    /// known compares the current one with it ([`RedisNode::released`]). `None` when it
    /// could not be read (`INFO` renamed away).
    run_id: std::sync::Mutex<Option<String>>,
    /// The server's `run_id` as last seen: [`RedisNode::identity`].
    identity: Identity,
    waiters: Arc<Waiters>,
    renewals: Renewals,
    /// Background clean-ups under way — releases of dropped leases, of grants whose answer
    /// was lost — counted so that [`RedisNode::close`] can wait for them. The count lives
    /// apart from the node: a clean-up does not keep the node alive.
    cleanups: Cleanups,
}

impl std::fmt::Debug for RedisNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisNode")
            .field("server", &self.inner.cfg.server())
            .finish_non_exhaustive()
    }
}

impl RedisNode {
    /// A node that connects on first use (and again after a failed connect), each attempt
    /// bounded by the connect timeout: a dead node costs at most that per operation.
    ///
    /// # Errors
    /// [`LockError::InvalidConfig`] for options [`RedisConfig::validate`] refuses or a URL
    /// the client cannot use.
    pub fn lazy(cfg: RedisConfig) -> Result<Self> {
        cfg.validate()?;
        let client = open_client(&cfg)?;
        // One channel per instance: every hand-off to one of its waiters comes there.
        let instance = format!("{}i:{}", cfg.prefix, GrantId::random());
        let waiters = Arc::new(Waiters::new(
            client.clone(),
            cfg.server().to_owned(),
            cfg.timeout.max(cfg.connect_timeout),
            instance,
        ));
        let keys = Keys {
            prefix: cfg.prefix.clone(),
            layout: cfg.layout,
        };
        Ok(RedisNode {
            inner: Arc::new(NodeInner {
                client,
                cfg,
                keys,
                conn: std::sync::Mutex::new(None),
                connecting: tokio::sync::Mutex::new(()),
                run_id: std::sync::Mutex::new(None),
                identity: Identity::default(),
                waiters,
                renewals: renewals(),
                cleanups: Cleanups::new(),
            }),
        })
    }

    /// A node connected now: fails with `Unavailable` when the server cannot be reached.
    ///
    /// # Cancel safety
    /// Dropping it leaves nothing behind: a connection being made is closed with the
    /// future.
    pub async fn connect(cfg: RedisConfig) -> Result<Self> {
        let node = Self::lazy(cfg)?;
        node.connection().await?;
        Ok(node)
    }

    /// Checks, once, that the server takes the URL's login: a `PING` on the node's
    /// connection, bounded by the connect and response timeouts. Only a refused login is an
    /// error; a server that cannot be reached now passes (a lazy node is connected again on
    /// first use — Redlock tolerates a minority of silent nodes).
    ///
    /// # Errors
    /// [`LockError::InvalidConfig`] when the server refuses the login (`NOAUTH`: it needs
    /// a password the URL does not give; `WRONGPASS`; or the `AUTH` at connect refused: a
    /// password for a server that has none configured, or a wrong one).
    ///
    /// # Cancel safety
    /// Cancel safe: it only reads.
    pub async fn check_login(&self) -> Result<()> {
        let cfg = &self.inner.cfg;
        let bound = cfg.connect_timeout * 2 + cfg.timeout;
        let ping = async {
            let mut conn = match self.connection().await {
                Ok(c) => c,
                // The login itself refused (AUTH to a server without a password, or a
                // wrong one) or another refused setting: the same error at once, for
                // every node, as `redis://` gives.
                Err(e @ LockError::InvalidConfig { .. }) => return Err(e),
                Err(_) => return Ok(()),
            };
            match redis::cmd("PING").query_async::<String>(&mut conn).await {
                Err(e) if is_refused_login(&e) => Err(self.refused_login(e)),
                _ => Ok(()),
            }
        };
        tokio::time::timeout(bound, ping).await.unwrap_or(Ok(()))
    }

    /// The error for a login the server refused.
    fn refused_login(&self, e: redis::RedisError) -> LockError {
        LockError::InvalidConfig {
            message: format!(
                "redis refused the credentials on {} (no password given for a server that needs one, or a wrong one)",
                self.server()
            ),
            source: Some(Box::new(e)),
        }
    }

    /// The server's `run_id` as read when the connection was made; `None` before a
    /// connection or when `INFO` failed.
    pub fn run_id(&self) -> Option<String> {
        self.inner.run_id.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The `run_id` to keep with a grant whose request is sent after this call — read
    /// before the request, since [`identity`](Self::identity) never runs ahead of the
    /// server, a restart between the read and the grant only makes a later repeated
    /// release say "lost" where it may have been released (the conservative answer).
    /// Pass it to the release of that grant ([`release`](Self::release) and its
    /// siblings), which tells "our first try deleted it" from "a restart forgot it" by
    /// it. For a grant handed to a waiter by a release, read it before the waiter's last
    /// turn that was answered "queued" (the hand-off ran after that turn). `None` while
    /// unknown (never connected, `INFO` refused): the release then compares with the
    /// `run_id` read at connect, which is older still.
    pub fn run_id_for_grant(&self) -> Option<String> {
        self.inner.identity.get()
    }

    /// Which server answers now: its `run_id` as last seen. Read when the connection is
    /// made and again, in the background, after a request found the connection dropped (a
    /// server restart drops it and starts a new `run_id`; the read waits for the
    /// reconnect, at most `timeout`) and when [`want_identity`](Self::want_identity) finds
    /// it unknown; reads that fail back off, 1 s doubling to 30 s (`identity.rs`). `None`
    /// before a connection or while `INFO` fails (a user refused it). Redlock ranks a
    /// key's primary node by it, so that clients connected before and after a restart of
    /// a node, or while it was paused, agree on it. Unlike [`run_id`](Self::run_id), which
    /// keeps the connect-time value to tell a restart apart, this follows the server.
    pub fn identity(&self) -> Option<String> {
        self.inner.identity.get()
    }

    /// Starts a background read of the server's `run_id` when it is unknown (see
    /// [`identity`](Self::identity)); does nothing before the node's first connection
    /// (which reads it), while a read is under way, or during the pause after a failed
    /// one. Never blocks.
    pub fn want_identity(&self) {
        if self.inner.identity.get().is_none() {
            self.read_identity_later(false);
        }
    }

    /// Reads the server's `run_id` now when it is unknown, as
    /// [`want_identity`](Self::want_identity) would in the background (connecting first
    /// if the node never connected); at most `timeout` for the read, plus the connect's
    /// own bound.
    ///
    /// # Cancel safety
    /// Cancel safe: a read cut off counts as a failed one (the next waits its pause).
    pub async fn settle_identity(&self) {
        if self.inner.identity.get().is_some() {
            return;
        }
        let Some(reading) = self.inner.identity.start(false) else {
            return;
        };
        match self.cached() {
            Some(conn) => reading.finish(self.read_identity(&conn).await),
            // Never connected (unreachable until now): a connect reads it and records the
            // outcome itself; a connect that failed had nothing to record.
            None => match self.connection().await {
                Ok(_) => reading.recorded(),
                Err(_) => reading.finish(None),
            },
        }
    }

    /// One bounded read of the `run_id` for [`identity`](Self::identity).
    async fn read_identity(&self, conn: &ConnectionManager) -> Option<String> {
        tokio::time::timeout(self.inner.cfg.timeout, self.read_run_id(conn))
            .await
            .ok()
            .flatten()
    }

    /// Starts a background read of the `run_id` (see [`identity`](Self::identity)) when
    /// one may start; `forced` after a dropped connection.
    fn read_identity_later(&self, forced: bool) {
        if !self.inner.identity.may_start(forced) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let Some(conn) = self.cached() else {
            return; // not connected yet: the connect reads it
        };
        let node = self.clone();
        runtime.spawn(async move {
            if let Some(reading) = node.inner.identity.start(forced) {
                reading.finish(node.read_identity(&conn).await);
            }
        });
    }

    /// Notes a request's failure: after a dropped connection the identity is read again.
    fn note_failure(&self, e: &redis::RedisError) {
        if dropped(e) {
            self.read_identity_later(true);
        }
    }

    /// The options of this node.
    pub fn config(&self) -> &RedisConfig {
        &self.inner.cfg
    }

    /// The server, for messages (no password).
    pub fn server(&self) -> &str {
        self.inner.cfg.server()
    }

    /// Checks that `key` can be laid out in this node's layout (see
    /// [`RedisLayout`](crate::RedisLayout)).
    ///
    /// # Errors
    /// [`LockError::InvalidInput`] for a peer layout's key with a `}` but no hash tag, or whose
    /// Redis key lies in fencelock's own namespace (`PREFIX{…`).
    pub fn check_key(&self, key: &str) -> Result<()> {
        self.inner.keys.check(key)
    }

    /// The connection, connecting if there is none yet.
    ///
    /// # Cancel safety
    /// Cancel safe: dropped while connecting, nothing is cached and the next call connects
    /// again.
    pub async fn connection(&self) -> Result<ConnectionManager> {
        if let Some(c) = self.cached() {
            return Ok(c);
        }
        let _connecting = self.inner.connecting.lock().await;
        if let Some(c) = self.cached() {
            return Ok(c);
        }
        let cfg = &self.inner.cfg;
        let manager_cfg = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(cfg.connect_timeout))
            .set_response_timeout(Some(cfg.timeout))
            .set_number_of_retries(1)
            .set_min_delay(Duration::from_millis(10))
            .set_max_delay(Duration::from_millis(100));
        let bound = cfg.connect_timeout * 2 + cfg.timeout;
        let connecting = ConnectionManager::new_with_config(self.inner.client.clone(), manager_cfg);
        let conn = match tokio::time::timeout(bound, connecting).await {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => return Err(connect_failed(cfg, e)),
            Err(_) => {
                return Err(LockError::Unavailable {
                    message: format!(
                        "redis unreachable: no connection to {} within {bound:?}{}",
                        cfg.server(),
                        tls_hint(cfg)
                    ),
                    source: None,
                })
            }
        };
        // All in flight at once on the one connection: no round trip added.
        let (run_id, (), allowed) = tokio::join!(
            async {
                tokio::time::timeout(cfg.timeout, self.read_run_id(&conn))
                    .await
                    .ok()
                    .flatten()
            },
            Self::send_script_loads(&conn, cfg.timeout),
            crate::acl::check(
                &conn,
                &self.inner.keys.prefix,
                cfg.server(),
                cfg.timeout,
                cfg.scripts_read_info
            )
        );
        // Not read (no answer within `timeout`, `INFO` refused): read again when wanted,
        // after the back-off's first pause.
        self.inner.identity.record(run_id.clone());
        *self.inner.run_id.lock().unwrap_or_else(|p| p.into_inner()) = run_id;
        // Kept even when the user's rights are refused: the refusal is said once, here (a
        // `redis://` connect fails with it); a Redlock node outvoted for it at connect then
        // answers each later command's `NOPERM` in one round trip on this connection —
        // not with a new connection, scripts load and rights check per command (review
        // helper 206) — and works again as soon as the rights are granted.
        *self.inner.conn.lock().unwrap_or_else(|p| p.into_inner()) = Some(conn.clone());
        allowed?;
        Ok(conn)
    }

    /// `SCRIPT LOAD` of every script, in one pipeline, the answer awaited at most
    /// `timeout` and its outcome ignored: a load takes effect on the server even when its
    /// answer is lost, and a call whose script is missing loads it as usual when answers
    /// flow. Sent when the node makes its connection, so that a first call whose answer is
    /// lost still runs — see [`Lua`](crate::scripts::Lua). The connection manager's own
    /// reconnects (after a server restart) do not send it: the follow-ups' repeats send
    /// their scripts with the source ([`with_source`](crate::scripts::with_source)).
    async fn send_script_loads(conn: &ConnectionManager, timeout: Duration) {
        let mut pipe = redis::pipe();
        for lua in scripts::all() {
            pipe.cmd("SCRIPT").arg("LOAD").arg(lua.code()).ignore();
        }
        let mut conn = conn.clone();
        let loaded = pipe.query_async::<()>(&mut conn);
        if let Ok(Err(e)) = tokio::time::timeout(timeout, loaded).await {
            tracing::debug!(error = %e, "scripts not loaded ahead; each loads at its first call");
        }
    }

    fn cached(&self) -> Option<ConnectionManager> {
        self.inner.conn.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn failed(&self, doing: &'static str, e: redis::RedisError) -> LockError {
        self.note_failure(&e);
        failed(doing, self.server(), e)
    }

    /// Runs a script that is safe to run twice (compare-and-act on our grant), trying once
    /// more when the first try found the connection dropped (the first command after a
    /// server restart does): the connection manager reconnects in between.
    async fn invoke_idempotent<T: redis::FromRedisValue>(
        &self,
        doing: &'static str,
        invocation: &scripts::Call<'_>,
    ) -> Result<T> {
        self.invoke_repeatable(doing, invocation).await.map(|(v, _)| v)
    }

    /// [`invoke_idempotent`](Self::invoke_idempotent), also saying whether the script was
    /// sent twice: then the first try may have run on the server unheard, and an answer
    /// that depends on the state it left (a release finding our grant gone) is ambiguous.
    async fn invoke_repeatable<T: redis::FromRedisValue>(
        &self,
        doing: &'static str,
        invocation: &scripts::Call<'_>,
    ) -> Result<(T, bool)> {
        let mut conn = self.connection().await?;
        let first = match invocation.invoke(&mut conn).await {
            Ok(v) => return Ok((v, false)),
            Err(e) if dropped(&e) => {
                self.note_failure(&e);
                e
            }
            Err(e) => return Err(self.failed(doing, e)),
        };
        tracing::debug!(error = %first, "{doing}: connection dropped; trying again");
        // The connection manager reconnects in the background once it has seen the
        // connection fail; a repeat sent before that fails at once ("broken pipe", seen
        // when the reset was noticed only at the reply timeout). So a few repeats, paused
        // 10, 20, 40, 80 ms, within one more `timeout` in all.
        let deadline = tokio::time::Instant::now() + self.inner.cfg.timeout;
        let mut pause = Duration::from_millis(10);
        let mut last = first;
        for _ in 0..4 {
            tokio::time::sleep(pause).await;
            match tokio::time::timeout_at(deadline, invocation.invoke(&mut conn)).await {
                Ok(Ok(v)) => return Ok((v, true)),
                Ok(Err(e)) if dropped(&e) && tokio::time::Instant::now() + pause * 2 < deadline => last = e,
                Ok(Err(e)) => return Err(self.failed(doing, e)),
                Err(_) => break,
            }
            pause *= 2;
        }
        Err(self.failed(doing, last))
    }

    /// The server's `run_id`, new at every start of the server; `None` if `INFO` fails.
    async fn read_run_id(&self, conn: &ConnectionManager) -> Option<String> {
        let info: String = redis::cmd("INFO")
            .arg("server")
            .query_async(&mut conn.clone())
            .await
            .ok()?;
        info.lines()
            .find_map(|l| l.strip_prefix("run_id:"))
            .map(|id| id.trim().to_owned())
    }

    /// A release script's answer (`1`: our grant was deleted), settled when the script had
    /// to be sent twice and the second try found our grant gone: the first try may have
    /// deleted it unheard, or the grant was gone before. The server's `run_id` tells the
    /// case that matters apart — a restart (without persistence it forgets every grant;
    /// also what drops the connection): the same `run_id` as when the grant was made
    /// (`under`, kept with the grant by its holder whichever way it was made — an acquire,
    /// a hand-off, a heal: [`run_id_for_grant`](Self::run_id_for_grant); when `None`, the
    /// one read at connect, before any grant) means no restart, so the first try deleted
    /// our grant (released); another one means a restart, so the grant may have been lost
    /// before (not held, the conservative answer). Compared with a `run_id` read after the
    /// grant was made instead (a node-wide one that a repeated release had recorded), a
    /// grant made before a restart was reported released. Left ambiguous: a grant removed
    /// by an operator's `DEL` or by eviction in the same moment as a repeated release
    /// (then "released").
    ///
    /// # Errors
    /// `Unavailable` (outcome unknown) when the `run_id` cannot be read now, or neither
    /// `under` nor the connect's is known.
    async fn released(&self, answer: (i64, bool), under: Option<&str>) -> Result<bool> {
        match answer {
            (1, _) => return Ok(true),
            (_, false) => return Ok(false),
            (_, true) => {}
        }
        let then = match under {
            Some(id) => Some(id.to_owned()),
            None => self.run_id(),
        };
        let now = match self.connection().await {
            Ok(conn) => tokio::time::timeout(self.inner.cfg.timeout, self.read_run_id(&conn))
                .await
                .ok()
                .flatten(),
            Err(_) => None,
        };
        match (then, now) {
            (Some(then), Some(now)) if then == now => Ok(true),
            (Some(_), Some(now)) => {
                self.inner.identity.record(Some(now));
                Ok(false)
            }
            _ => Err(LockError::Unavailable {
                message: format!(
                    "the release's connection to {} dropped after it was sent and the repeat found the grant gone: \
                     released by the first try, or lost before it (a server restart) — unknown, the server's \
                     run_id could not be read",
                    self.server()
                ),
                source: None,
            }),
        }
    }

    /// One acquire round trip. Without a restart delay: one transaction of plain commands
    /// in one pipeline, `MULTI`, `SET lock grant NX PX ttl`, `INCR counter`, `EXEC` (then,
    /// only when busy, `PTTL lock`) — no script, which costs the server more CPU than the
    /// transaction (measured: 5 nodes on 2 cores, 40 µs a cycle). The transaction makes the
    /// grant and its token one atomic step: no other client's command runs between the
    /// `SET` and the `INCR`, so each grant's token is above every earlier grant's even when
    /// the request reaches the server in pieces and a short TTL ends in between (as two
    /// plain pipelined commands, an `INCR` arriving late could follow a later grant's).
    /// The counter grows on refused attempts too, which only leaves gaps. With a
    /// `restart_delay`, the `ACQUIRE` script, which also checks the delay: a node whose
    /// server process (its uptime) or boot marker is younger than the delay refuses and
    /// answers [`NodeGrant::Restarting`] with the rest of the delay.
    ///
    /// Not retried on a dropped connection (the counter would grow twice, harmless, but a
    /// grant could land unheard); when the answer is lost, a release of `grant` is sent in
    /// the background, so an unheard grant does not block others for a whole TTL.
    ///
    /// # Cancel safety
    /// Not cancel safe on its own: dropped after the request was sent, the grant may land
    /// unheard and hold the key until its TTL. Callers arm a guard before calling it that
    /// sends [`release_later`](Self::release_later) when the future is dropped, as
    /// `RedisLock` and Redlock do. An error answer already triggers that release here.
    pub async fn try_grant(
        &self,
        key: &str,
        grant: &GrantId,
        ttl: Duration,
        restart_delay: Duration,
    ) -> Result<NodeGrant> {
        let mut conn = self.connection().await?;
        let keys = &self.inner.keys;
        let to_u64 = |n: i64| u64::try_from(n).ok();
        let answer: redis::RedisResult<NodeGrant> = if restart_delay.is_zero() {
            // Each command sized up front: grown argument by argument, the two `Cmd`s
            // reallocated their buffers about nine times per acquire (callgrind).
            let (lock, counter) = (keys.lock(key), keys.counter(key));
            // 20: the digits of the TTL in ms, at most.
            let mut set = redis::Cmd::with_capacity(6, 3 + lock.len() + grant.as_str().len() + 2 + 2 + 20);
            set.arg("SET")
                .arg(lock.as_str())
                .arg(grant.as_str())
                .arg("NX")
                .arg("PX")
                .arg(ttl.as_millis() as u64);
            let mut incr = redis::Cmd::with_capacity(2, 4 + counter.len());
            incr.arg("INCR").arg(counter.as_str());
            let piped: redis::RedisResult<(Option<String>, i64)> = redis::Pipeline::with_capacity(2)
                .atomic()
                .add_command(set)
                .add_command(incr)
                .query_async(&mut conn)
                .await;
            match piped {
                Ok((Some(_), token)) => Ok(NodeGrant::Granted(to_u64(token).unwrap_or(0))),
                // Busy: how long the holder has left, asked only now (a waiter sleeps
                // anyway; the uncontended path does not pay for it). No answer: unknown.
                Ok((None, _)) => {
                    let pttl: redis::RedisResult<i64> =
                        redis::cmd("PTTL").arg(keys.lock(key)).query_async(&mut conn).await;
                    Ok(NodeGrant::Busy(pttl.ok().and_then(to_u64)))
                }
                Err(e) => Err(e),
            }
        } else {
            ACQUIRE
                .call()
                .key(keys.lock(key))
                .key(keys.counter(key))
                .key(keys.boot())
                .arg(grant.as_str())
                .arg(ttl.as_millis() as u64)
                .arg(restart_delay.as_millis() as u64)
                .invoke::<(i64, i64)>(&mut conn)
                .await
                .map(|(granted, n)| match granted {
                    1 => NodeGrant::Granted(to_u64(n).unwrap_or(0)),
                    2 => NodeGrant::Restarting(to_u64(n).unwrap_or(0)),
                    _ => NodeGrant::Busy(to_u64(n)),
                })
        };
        answer.map_err(|e| {
            self.release_later(key, grant.as_str(), ttl);
            self.failed("acquire", e)
        })
    }

    /// Redlock's heal (`HEAL` in `src/scripts.rs`): sets `grant`, which a quorum of
    /// other nodes already granted with `token`, on this node for `ttl` when the key is
    /// free here (and the node is past its `restart_delay`, as [`try_grant`](Self::try_grant)
    /// checks it), and raises the key's counter here to at least `token`. Answers
    /// [`NodeGrant::Granted`] with the counter when the node holds `grant` now (also when it
    /// already did), [`NodeGrant::Busy`] with the other holder's PTTL in milliseconds when
    /// not, [`NodeGrant::Restarting`] with the rest of the restart delay when inside it.
    ///
    /// Safe to send twice (a repeat finds the grant already there), so it is repeated once
    /// the connection manager reconnected, as releases are.
    ///
    /// # Errors
    /// The server's or connection's error (the grant may have been set unheard).
    ///
    /// # Cancel safety
    /// Not cancel safe on its own: dropped after it was sent, the grant may land unheard
    /// and stay until `ttl` passes. The caller releases it when it cannot tell (Redlock's
    /// heal releases the node again when the lease was released meanwhile).
    pub async fn heal(
        &self,
        key: &str,
        grant: &str,
        ttl: Duration,
        token: u64,
        restart_delay: Duration,
    ) -> Result<NodeGrant> {
        let keys = &self.inner.keys;
        let mut invocation = HEAL.call();
        invocation
            .key(keys.lock(key))
            .key(keys.counter(key))
            .key(keys.boot())
            .arg(grant)
            .arg(ttl.as_millis().max(1) as u64)
            .arg(restart_delay.as_millis() as u64)
            .arg(token);
        let (held, n): (i64, i64) = self.invoke_idempotent("heal script", &invocation).await?;
        let n = u64::try_from(n).ok();
        Ok(match held {
            1 => NodeGrant::Granted(n.unwrap_or(token)),
            2 => NodeGrant::Restarting(n.unwrap_or(0)),
            _ => NodeGrant::Busy(n),
        })
    }

    /// Sends a release of `grant` in the background (for a grant whose fate is unknown:
    /// its answer was lost, or its caller gave up), and again while no answer comes (after
    /// 20 ms, doubling to at most 1 s), until the server answers or `ttl` has passed (the
    /// grant, if it was made, has expired by then).
    pub fn release_later(&self, key: &str, grant: &str, ttl: Duration) {
        let (k, grant) = (key.to_owned(), grant.to_owned());
        self.follow_up(key, "background release", ttl, move |node| {
            let (k, grant) = (k.clone(), grant.clone());
            // Only that the grant is gone counts here, not whether it was released or lost.
            async move { node.release_script(&k, &grant).await.map(|_| ()) }
        });
    }

    /// Runs `step` in the background until the server answers it, for a follow-up whose
    /// effect must not be left undone (a give-up, the release of an unheard grant): sent
    /// again while no answer comes — after 20 ms, doubling to at most 1 s, then every
    /// 1 s — until `ttl` has passed (the caller's bound: what it would remove has expired
    /// by then; so at most about `ttl` / 1 s + 6 tries). Each repeat sends its scripts as
    /// `EVAL` with their source ([`with_source`](crate::scripts::with_source)): the last
    /// try may have met `NOSCRIPT` unheard, and an `EVAL` runs whether or not its answer
    /// comes back. Holds the node only weakly between tries, so a dropped instance ends it;
    /// counted as a clean-up, so [`close`](Self::close) waits for it. Nothing when no
    /// runtime is running.
    fn follow_up<F, Fut>(&self, key: &str, what: &'static str, ttl: Duration, step: F)
    where
        F: Fn(RedisNode) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = Result<()>> + Send,
    {
        let (node, key) = (Arc::downgrade(&self.inner), key.to_owned());
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let cleanup = self.cleanup();
        rt.spawn(async move {
            let _cleanup = cleanup;
            let until = tokio::time::Instant::now() + ttl;
            let mut pause = Duration::from_millis(20);
            // Bounded by `until` (each try by the reply timeout): at most about
            // `ttl` / 1 s + 6 tries.
            for attempt in 0u64.. {
                let Some(inner) = node.upgrade() else { return };
                let node = RedisNode { inner };
                // A repeat: the last try may have met `NOSCRIPT` unheard.
                let answer = if attempt > 0 {
                    scripts::with_source(step(node.clone())).await
                } else {
                    step(node.clone()).await
                };
                match answer {
                    Ok(()) => return,
                    Err(e) => tracing::debug!(%key, error = %e, "{what} unanswered; trying again"),
                }
                drop(node);
                if tokio::time::Instant::now() + pause >= until {
                    return;
                }
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(1));
            }
        });
    }

    /// Marks a background clean-up of this node as under way until the guard is dropped:
    /// [`close`](Self::close) waits for it. Releases count themselves while they run; a
    /// lease dropped unreleased is counted from the drop (its `LeaseOps::cleanup`), and
    /// Redlock's background releases hold one between their rounds.
    pub fn cleanup(&self) -> CleanupGuard {
        self.inner.cleanups.start()
    }

    /// Ends this node's use before the process exits: waits for the background clean-ups
    /// under way (releases of dropped leases and of unheard grants), at most twice the
    /// reply timeout plus the connect timeout (at least 1 s), then closes the pub/sub
    /// connection.
    ///
    /// # Errors
    /// [`LockError::Unavailable`] when clean-ups were still running at the bound: what
    /// they were removing ends with its TTL.
    ///
    /// # Cancel safety
    /// Cancel safe: dropped, the clean-ups go on in the background.
    pub async fn close(&self) -> Result<()> {
        let cfg = &self.inner.cfg;
        let bound = (cfg.timeout * 2 + cfg.connect_timeout).max(Duration::from_secs(1));
        let idle = self.inner.cleanups.idle(bound).await;
        self.inner.waiters.close().await;
        if idle {
            Ok(())
        } else {
            Err(LockError::Unavailable {
                // Not "releases": a waiter that never held a grant has clean-ups too (its
                // queue entry's removal), and read "their grants end…" as its own.
                message: format!(
                    "redis: background clean-ups on {} (releases, queue entries of ended waits) did not finish within {bound:?}; what is left ends by itself: a lock with its TTL, a queue entry with its wait",
                    self.server()
                ),
                source: None,
            })
        }
    }

    /// Sets a new TTL if the key still holds `grant`; `false` if it does not.
    ///
    /// # Cancel safety
    /// Cancel safe: dropped in flight, the new TTL may or may not be set; the grant stays
    /// ours either way, and the lease's belief never exceeds what was asked (see
    /// `Lease::extend`).
    pub async fn extend(&self, key: &str, grant: &str, ttl: Duration) -> Result<bool> {
        let mut invocation = EXTEND.call();
        invocation
            .key(self.inner.keys.lock(key))
            .arg(grant)
            .arg(ttl.as_millis() as u64);
        let n: i64 = self.invoke_idempotent("extend script", &invocation).await?;
        Ok(n == 1)
    }

    /// Like [`extend`](Self::extend), batched with the other background renewals on this
    /// node: waits up to the `renew_window` (at most a tenth of `ttl`) to share one script.
    ///
    /// # Cancel safety
    /// Cancel safe: dropped, the renewal may still go out with its batch; the grant stays
    /// ours either way.
    pub async fn renew(&self, key: &str, grant: &str, ttl: Duration) -> Result<bool> {
        let renewal = Renewal {
            lock_key: self.inner.keys.lock(key),
            grant: grant.to_owned(),
            ttl_ms: ttl.as_millis() as u64,
        };
        let flush = |inner, batch: Vec<Renewal>| async move { RedisNode { inner }.extend_batch(&batch).await };
        self.inner
            .renewals
            .submit(renewal, self.renew_wait(ttl), &self.inner, flush)
            .await
    }

    /// The longest a [`renew`](Self::renew) of a `ttl` lease waits for its batch.
    pub fn renew_wait(&self, ttl: Duration) -> Duration {
        self.inner.cfg.renew_window.min(ttl / 10)
    }

    /// Sends one batch of renewals as one script; answers each.
    async fn extend_batch(&self, batch: &[Renewal]) -> Vec<Result<bool>> {
        let mut invocation = EXTEND_MANY.call();
        for r in batch {
            invocation.key(r.lock_key.as_str()).arg(&r.grant).arg(r.ttl_ms);
        }
        match self
            .invoke_idempotent::<Vec<i64>>("batched renewal script", &invocation)
            .await
        {
            Ok(ns) => ns.into_iter().map(|n| Ok(n == 1)).collect(),
            Err(e) => spread_error(&e, batch.len()),
        }
    }

    /// Deletes the key if it holds `grant`, and announces it; `false` if it did not hold it.
    /// `under`: the server's `run_id` when the grant was made, as
    /// [`run_id_for_grant`](Self::run_id_for_grant) read it (`None`: unknown), kept with
    /// the grant: a repeat of the script after a dropped connection that finds the grant
    /// gone says released only when the server still has that `run_id` (no restart
    /// forgot the grant meanwhile).
    ///
    /// # Cancel safety
    /// Cancel safe in effect: dropped in flight, the delete may or may not happen; it is
    /// idempotent, and `Lease::release` sends it again from a background task when its own
    /// future is dropped.
    ///
    /// # Errors
    /// The server's or connection's error; `Unavailable` when the connection dropped after
    /// the script was sent, the repeat found our grant gone and whether the server
    /// restarted in between cannot be read (see the "release's answer lost" row of
    /// docs/backends/redis.md). The same for the two other release methods.
    pub async fn release(&self, key: &str, grant: &str, under: Option<&str>) -> Result<bool> {
        let _cleanup = self.cleanup();
        let answer = self.release_script(key, grant).await?;
        self.released(answer, under).await
    }

    /// The `RELEASE` script of [`release`](Self::release), its answer not yet settled (see
    /// [`released`](Self::released)).
    async fn release_script(&self, key: &str, grant: &str) -> Result<(i64, bool)> {
        let keys = &self.inner.keys;
        let mut invocation = RELEASE.call();
        // Not the reservation key the other queue scripts take: only `LEAVE` reads it.
        invocation
            .key(keys.lock(key))
            .key(keys.counter(key))
            .key(keys.queue(key));
        if let Some(signal) = keys.signal(key) {
            invocation.key(signal); // python-redis-lock's waiters BLPOP it (see RELEASE)
        }
        invocation.arg(grant).arg(keys.waiter_channels(key)).arg(claim_ms());
        self.invoke_repeatable("release script", &invocation).await
    }

    /// Like [`release`](Self::release), and raises the key's token counter on this node to
    /// at least `token` (Redlock: see the crate docs of `fencelock-redlock`).
    ///
    /// # Cancel safety
    /// As [`release`](Self::release): idempotent, so a dropped call is simply sent again.
    pub async fn release_raising(&self, key: &str, grant: &str, token: u64, under: Option<&str>) -> Result<bool> {
        let _cleanup = self.cleanup();
        let mut invocation = RELEASE_RAISING.call();
        self.queue_keys(&mut invocation, key);
        invocation
            .arg(grant)
            .arg(self.inner.keys.waiter_channels(key))
            .arg(claim_ms())
            .arg(token);
        let answer = self.invoke_repeatable("release script", &invocation).await?;
        self.released(answer, under).await
    }

    /// Deletes the key if it holds `grant` (raising the token counter to `raise` first, when
    /// given), without looking at a queue: for a node where nobody queues for `key` —
    /// Redlock's nodes other than the key's primary. One server command less than
    /// [`release`](Self::release). `false` if it did not hold it.
    ///
    /// # Cancel safety
    /// As [`release`](Self::release): idempotent, so a dropped call is simply sent again.
    pub async fn release_unqueued(
        &self,
        key: &str,
        grant: &str,
        raise: Option<u64>,
        under: Option<&str>,
    ) -> Result<bool> {
        let _cleanup = self.cleanup();
        let keys = &self.inner.keys;
        let mut invocation = RELEASE_UNQUEUED.call();
        invocation
            .key(keys.lock(key))
            .key(keys.counter(key))
            .arg(grant)
            .arg(raise.map_or_else(String::new, |t| t.to_string()));
        let answer = self.invoke_repeatable("release script", &invocation).await?;
        self.released(answer, under).await
    }

    /// The four keys the queue scripts take: lock, counter, queue, reservation.
    fn queue_keys(&self, invocation: &mut scripts::Call<'_>, key: &str) {
        let keys = &self.inner.keys;
        invocation
            .key(keys.lock(key))
            .key(keys.counter(key))
            .key(keys.queue(key))
            .key(keys.reservation(key));
    }

    /// Registers a waiter for `grant` on this instance's channel (subscribed on the shared
    /// pub/sub connection at the first wait, then kept: no command per wait): a release
    /// that hands the lock to it publishes `g GRANT` there, and one that makes it the next
    /// in line `n GRANT`. Register before the first [`wait_turn`](Self::wait_turn), so no
    /// hand-off message is missed.
    ///
    /// # Errors
    /// `Unavailable` when the pub/sub connection or its `SUBSCRIBE` gets no answer within
    /// the timeout.
    ///
    /// # Cancel safety
    /// Cancel safe: dropped before it returns, the registration is given back.
    pub async fn wait_as(&self, grant: &str) -> Result<NodeSubscription> {
        let sub = self.inner.waiters.wait_as(grant).await?;
        Ok(NodeSubscription { sub })
    }

    /// Subscribes to the key's named channel `name` (`PREFIX{key}:w:NAME`, e.g. an
    /// election seat's `changed`) on this instance's shared pub/sub connection.
    ///
    /// # Cancel safety
    /// Cancel safe: dropped before it returns, its interest in the channel is given back
    /// (and the channel unsubscribed).
    pub async fn subscribe(&self, key: &str, name: &str) -> Result<NodeSubscription> {
        let channel = format!("{}{name}", self.inner.keys.waiter_channels(key));
        let sub = self.inner.waiters.subscribe(&channel).await?;
        Ok(NodeSubscription { sub })
    }

    /// A waiter's turn, one round trip (the `WAIT_TURN` script): claims the lock when a
    /// release reserved it for `grant` (setting its TTL to `ttl` from now), takes it when
    /// it is free and nobody queues, and otherwise queues `grant` at the back of the key's
    /// FIFO queue — or keeps it there: pass the entry of the last answer as `entry`
    /// (`""` the first time). The entry lapses `wait` after it was made. A turn does the
    /// same work whatever the number of waiters. With a `restart_delay` (Redlock), a node
    /// still inside it refuses as [`try_grant`](Self::try_grant) does, queueing nothing.
    /// The entry asks for a reservation and a claim, as a grant that needs a quorum must
    /// (Redlock); a single server's waiter uses [`wait_turn_direct`](Self::wait_turn_direct).
    ///
    /// # Errors
    /// `Unavailable` when the server does not answer in time; `Backend` for a script error.
    ///
    /// # Cancel safety
    /// Not cancel safe on its own: dropped after sending, `grant` may be queued or hold the
    /// lock unheard. Callers send [`leave_later`](Self::leave_later) when they give up.
    pub async fn wait_turn(
        &self,
        key: &str,
        grant: &str,
        ttl: Duration,
        entry: &str,
        wait: Duration,
        restart_delay: Duration,
    ) -> Result<Turn> {
        self.turn(key, grant, ttl, entry, wait, restart_delay, false).await
    }

    /// [`wait_turn`](Self::wait_turn) for a waiter the release grants the lock to directly
    /// (issue 14): its queue entry carries `ttl`, and the release that reaches it sets the
    /// lock to `grant` for `ttl`, counts the token and pushes both with the server's time
    /// (`g GRANT TOKEN NOW_MS`, read with [`NodeSubscription::take_handed`]) — no claim
    /// round trip. A turn still claims a lock that holds `grant` (a push that came too late
    /// to be used, or was lost): `PEXPIRE` to `ttl` from now and a new token. No restart
    /// delay (a single server has none).
    ///
    /// # Errors
    /// As [`wait_turn`](Self::wait_turn).
    ///
    /// # Cancel safety
    /// As [`wait_turn`](Self::wait_turn): callers send [`leave_later`](Self::leave_later)
    /// when they give up, which also frees a lock granted to them directly.
    pub async fn wait_turn_direct(
        &self,
        key: &str,
        grant: &str,
        ttl: Duration,
        entry: &str,
        wait: Duration,
    ) -> Result<Turn> {
        self.turn(key, grant, ttl, entry, wait, Duration::ZERO, true).await
    }

    #[allow(clippy::too_many_arguments)]
    async fn turn(
        &self,
        key: &str,
        grant: &str,
        ttl: Duration,
        entry: &str,
        wait: Duration,
        restart_delay: Duration,
        direct: bool,
    ) -> Result<Turn> {
        let mut invocation = WAIT_TURN.call();
        self.queue_keys(&mut invocation, key);
        invocation.key(self.inner.keys.boot());
        invocation
            .arg(grant)
            .arg(ttl.as_millis() as u64)
            .arg(self.inner.keys.waiter_channels(key))
            .arg(claim_ms())
            .arg(wait.as_millis() as u64)
            .arg(entry)
            .arg(restart_delay.as_millis() as u64)
            .arg(self.inner.waiters.instance())
            .arg(if direct { "1" } else { "" });
        let mut conn = self.connection().await?;
        let (status, n, entry, server_ms): (i64, i64, String, i64) = invocation
            .invoke(&mut conn)
            .await
            .map_err(|e| self.failed("waiter's turn script", e))?;
        Ok(match status {
            1 => Turn::Granted(u64::try_from(n).unwrap_or(0)),
            _ => Turn::Queued {
                pttl: u64::try_from(n).ok(),
                entry,
                server_ms: u64::try_from(server_ms).ok(),
            },
        })
    }

    /// A waiter gives up, in the background (the `LEAVE` script, sent again while no
    /// answer comes): its queue entry goes, and a lock that holds `grant` — granted to it
    /// directly by a release, reserved for it, or claimed by an answer that never came — is
    /// released and handed to the next waiter. Sent until the server answers or `leave_for`
    /// has passed (every 1 s once the pause has grown). Callers pass the longer of the
    /// waiter's TTL and its wait: a lock granted to it lasts the TTL, and its queue entry
    /// lapses at most a wait after its last turn, which came before this give-up, so no try
    /// stops while the entry can still be granted the lock.
    pub fn leave_later(&self, key: &str, grant: &str, entry: &str, leave_for: Duration) {
        let (k, grant, entry) = (key.to_owned(), grant.to_owned(), entry.to_owned());
        self.follow_up(key, "leaving the queue", leave_for, move |node| {
            let (k, grant, entry) = (k.clone(), grant.clone(), entry.clone());
            async move {
                let mut invocation = LEAVE.call();
                node.queue_keys(&mut invocation, &k);
                if let Some(signal) = node.inner.keys.signal(&k) {
                    invocation.key(signal); // python-redis-lock's waiters BLPOP it (see LEAVE)
                }
                invocation
                    .arg(&grant)
                    .arg(node.inner.keys.waiter_channels(&k))
                    .arg(claim_ms())
                    .arg(&entry);
                node.invoke_idempotent::<i64>("leave script", &invocation)
                    .await
                    .map(|_| ())
            }
        });
    }

    /// Whether the server keeps its token counters (keys without a TTL) through a crash
    /// and under memory pressure, from its settings read with `CONFIG GET` in one round
    /// trip: `appendonly yes` with `appendfsync always`, and a `maxmemory-policy` that never
    /// evicts a key without a TTL (`noeviction` or `volatile-*`).
    ///
    /// # Errors
    /// [`LockError::InvalidConfig`] when the server refuses the login (`NOAUTH`: it needs
    /// a password the URL does not give; `WRONGPASS`; or the `AUTH` at connect refused: a
    /// password for a server that has none configured, or a wrong one). `Ok(Err(reason))` when the settings
    /// could not be read otherwise (`CONFIG` renamed or disabled, an ACL refusing it, no
    /// connection): the caller must assume the counters can be lost.
    ///
    /// # Cancel safety
    /// Cancel safe: it only reads settings.
    pub async fn keeps_token_counters(&self) -> Result<std::result::Result<CounterSafety, String>> {
        let mut conn = match self.connection().await {
            Ok(conn) => conn,
            Err(e) => return Ok(Err(e.to_string())),
        };
        let get = |name: &str| redis::cmd("CONFIG").arg("GET").arg(name).to_owned();
        let read: redis::RedisResult<(Vec<String>, Vec<String>, Vec<String>)> = redis::pipe()
            .add_command(get("appendonly"))
            .add_command(get("appendfsync"))
            .add_command(get("maxmemory-policy"))
            .query_async(&mut conn)
            .await;
        let (appendonly, appendfsync, policy) = match read {
            Ok(settings) => settings,
            // Credentials the server refused (or none for a server that needs them) are
            // the URL's fault and every later command meets them again: say so now, as
            // InvalidConfig, rather than carry on into a connection that cannot work (it
            // ended in "unreachable" after the whole wait, and in a panic inside the client).
            Err(e) if is_refused_login(&e) => return Err(self.refused_login(e)),
            Err(e) => {
                return Ok(Err(format!(
                    "CONFIG GET refused on {} ({e}): cannot check persistence and eviction",
                    self.server()
                )))
            }
        };
        let value = |pair: Vec<String>| pair.into_iter().nth(1).unwrap_or_default();
        Ok(Ok(CounterSafety {
            fsync_always: value(appendonly) == "yes" && value(appendfsync) == "always",
            eviction_policy: value(policy),
        }))
    }
}

/// What a server's settings say about its token counters (see
/// [`RedisNode::keeps_token_counters`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CounterSafety {
    /// `appendonly yes` and `appendfsync always`: an acknowledged `INCR` survives a crash.
    pub fsync_always: bool,
    /// `maxmemory-policy` as the server reported it.
    pub eviction_policy: String,
}

impl CounterSafety {
    /// `true` when the policy never evicts a key without a TTL: `noeviction`, or a
    /// `volatile-*` policy (those evict only keys with a TTL; the counter has none).
    pub fn spares_counters(&self) -> bool {
        self.eviction_policy == "noeviction" || self.eviction_policy.starts_with("volatile-")
    }

    /// Both: the counter survives a crash and memory pressure, so tokens strictly increase.
    pub fn strict_tokens(&self) -> bool {
        self.fsync_always && self.spares_counters()
    }
}

fn claim_ms() -> u64 {
    HANDOFF_CLAIM.as_millis() as u64
}

/// A waiter's registration on its instance's channel (or a named channel) on one node.
pub struct NodeSubscription {
    sub: Subscription,
}

impl std::fmt::Debug for NodeSubscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeSubscription").finish_non_exhaustive()
    }
}

impl NodeSubscription {
    /// Resubscribes if the pub/sub connection was replaced since.
    ///
    /// # Cancel safety
    /// Cancel safe: a `SUBSCRIBE` dropped half-way is sent again by the next call.
    pub async fn ensure(&self) -> Result<()> {
        self.sub.ensure().await
    }

    /// Completes on the next message (registered at once), or when the pub/sub
    /// connection drops.
    pub fn notified(&self) -> WakeFuture {
        self.sub.notified()
    }

    /// Whether a hand-off message (`g`: the lock is granted or reserved to us) came since
    /// the last call, and whether a "you are next" message (`n`) did.
    pub fn take_messages(&self) -> (bool, bool) {
        let seen = self.sub.take_seen();
        (seen & crate::wait::TURN != 0, seen & crate::wait::NEXT != 0)
    }

    /// The direct grant a release pushed to us (`g GRANT TOKEN NOW_MS`) since the last
    /// call, if one did: the lock holds our grant with the full TTL from the hand-off.
    pub fn take_handed(&self) -> Option<Handed> {
        self.sub.take_handed()
    }
}

/// A request that failed without a usable answer because of its connection (dropped,
/// reset, an I/O error or timeout): it may have run on the server.
fn dropped(e: &redis::RedisError) -> bool {
    e.is_connection_dropped() || e.is_io_error()
}

/// The client for the URL; for `rediss://`, with ring as the crypto provider (unless the
/// process installed one) and the configured CA.
/// A failed connect as a [`LockError`]: a DB index the server refuses (its `SELECT`
/// answers an error, the only server error a connect meets besides the credentials'
/// own) is a configuration error, not a backend failure; a failure over TLS says what a
/// plaintext server looks like.
fn connect_failed(cfg: &RedisConfig, e: redis::RedisError) -> LockError {
    let refused = matches!(
        e.kind(),
        redis::ErrorKind::Server(redis::ServerErrorKind::ResponseError)
    );
    let no_perm = crate::error::no_permission(&e);
    if cfg.addr.db != 0 && (refused || no_perm) {
        let why = if no_perm {
            "the user may not run SELECT (grant it +select)"
        } else {
            "the server has fewer databases (its `databases` setting, 16 by default, allows 0 to databases - 1)"
        };
        return LockError::InvalidConfig {
            message: format!("{} refused DB index {}: {why}", cfg.server(), cfg.addr.db),
            source: Some(Box::new(e)),
        };
    }
    if matches!(e.kind(), redis::ErrorKind::Parse) {
        // The first answer was not RESP: another server on that port (HTTP, PostgreSQL…).
        return LockError::InvalidConfig {
            message: format!(
                "{} does not answer in the Redis protocol: is the host and port right (another server listens there)?",
                cfg.server()
            ),
            source: Some(Box::new(e)),
        };
    }
    let hint = tls_hint(cfg);
    match failed("connecting", cfg.server(), e) {
        LockError::Unavailable { message, source } if !hint.is_empty() => LockError::Unavailable {
            message: format!("{message}{hint}"),
            source,
        },
        other => other,
    }
}

/// For `rediss://`, what a connect that got no TLS answer most likely means.
fn tls_hint(cfg: &RedisConfig) -> &'static str {
    if cfg.addr.tls {
        "; the server did not answer the TLS handshake: is it plaintext? then use redis://"
    } else {
        ""
    }
}

fn open_client(cfg: &RedisConfig) -> Result<redis::Client> {
    let invalid = |e: redis::RedisError| LockError::InvalidConfig {
        message: format!("`{}` is not a Redis server the client can use", cfg.server()),
        source: Some(Box::new(e)),
    };
    let a = &cfg.addr;
    let addr = if a.tls {
        redis::ConnectionAddr::TcpTls {
            host: a.host.clone(),
            port: a.port,
            insecure: false,
            tls_params: None,
        }
    } else {
        redis::ConnectionAddr::Tcp(a.host.clone(), a.port)
    };
    let mut settings = redis::RedisConnectionInfo::default().set_db(a.db);
    if let Some(user) = &a.user {
        settings = settings.set_username(user);
    }
    if let Some(password) = &a.password {
        settings = settings.set_password(password);
    }
    let info = redis::IntoConnectionInfo::into_connection_info(addr)
        .map_err(invalid)?
        .set_redis_settings(settings);
    #[cfg(feature = "tls")]
    if a.tls {
        // Err means another provider is already installed: use that one.
        let _ = rustls::crypto::ring::default_provider().install_default();
        if let Some(path) = &cfg.ca_file {
            let root_cert = std::fs::read(path).map_err(|e| LockError::InvalidConfig {
                message: format!("cannot read ca_file {}", path.display()),
                source: Some(Box::new(e)),
            })?;
            let certs = redis::TlsCertificates {
                client_tls: None,
                root_cert: Some(root_cert),
            };
            return redis::Client::build_with_tls(info, certs).map_err(invalid);
        }
    }
    redis::Client::open(info).map_err(invalid)
}

/// A login the server refused: no password for a server that needs one (`NOAUTH`), or a
/// wrong one (`WRONGPASS`, or the client's own authentication failure).
fn is_refused_login(e: &redis::RedisError) -> bool {
    if e.kind() == redis::ErrorKind::AuthenticationFailed || matches!(e.code(), Some("NOAUTH" | "WRONGPASS")) {
        return true;
    }
    // In a pipeline the client reports the first command's server error inside another
    // error, where `code()` does not reach; its text still carries the server's code.
    let text = e.to_string();
    text.contains("NOAUTH") || text.contains("WRONGPASS")
}
