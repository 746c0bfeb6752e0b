//! [`RedisLock`]: the backend.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use fencelock_core::closing::CloseGate;
use fencelock_core::options::validate_key;
use fencelock_core::waiting::{acquire_checked, jitter, Attempt, CancelGuard, LastCheck};
use fencelock_core::{
    DistributedLock, Exclusion, FencingToken, GrantId, Guarantees, Lease, LeaseParts, LockOptions, Result, Scope,
    TokenOrder,
};
use redis::aio::ConnectionManager;
use tokio::time::Instant;
use tracing::Instrument;

use crate::config::RedisConfig;
use crate::contention::Contention;
use crate::grant::RedisGrant;
use crate::handoff::{validity, Handed, QueuedAt};
use crate::node::{NodeGrant, NodeSubscription, RedisNode, Turn, HANDOFF_CLAIM};

/// What the backend promises when the server keeps its token counters: it fsyncs every
/// write (`appendonly yes`, `appendfsync always`), so a counter survives a crash or restart,
/// and its `maxmemory-policy` is `noeviction` or `volatile-*`, so a counter (a key without
/// a TTL) is never evicted under memory pressure — both read with `CONFIG GET` at connect.
pub const GUARANTEES_DURABLE: Guarantees = Guarantees {
    backend: "redis",
    exclusion: Exclusion::Conditional,
    tokens: TokenOrder::StrictlyMonotonic,
    scope: Scope::Network,
    assumptions: &[
        "exclusive only while the one server stays up and keeps its data; a failover to an asynchronously replicated replica can grant the lock twice and reuse tokens",
        "tokens strictly increase because the server fsyncs every write (appendonly yes, appendfsync always) and never evicts the token counter, a key without a TTL (maxmemory-policy noeviction or volatile-*), both seen at connect time; changing either later breaks this",
        "nobody deletes a token counter: an operator's FLUSHALL or FLUSHDB, or a DEL of PREFIX{KEY}:token, restarts that key's tokens at 1",
        "a volatile-* policy may still evict a held lock's key (it has a TTL) under memory pressure and grant the lock twice; only noeviction never does",
        "lock expiry runs on the server's wall clock: a clock jump there can end a lease early, and a lease's validity is the full TTL from the request's send instant on the client's clock, with no allowance for the server's clock running faster (rate drift): a server clock faster by a fraction f expires the key f × TTL before the holder's validity ends",
    ],
};

/// What the backend promises when the server was not seen keeping its token counters: it
/// does not fsync every write, or it may evict keys without a TTL (`allkeys-*`), or its
/// settings could not be read (`CONFIG` renamed or refused) — a restart or memory pressure
/// can then reset the counter, and tokens start again from 1.
pub const GUARANTEES: Guarantees = Guarantees {
    backend: "redis",
    exclusion: Exclusion::Conditional,
    tokens: TokenOrder::BestEffort,
    scope: Scope::Network,
    assumptions: &[
        "exclusive only while the one server stays up and keeps its data; a restart without persistence or a failover to an asynchronously replicated replica can grant the lock twice",
        "tokens increase only while the token counter survives: the server was not seen both fsyncing every write (appendonly yes + appendfsync always) and sparing keys without a TTL from eviction (maxmemory-policy noeviction or volatile-*), or CONFIG GET was refused so neither could be checked; a restart or memory pressure can reset them",
        "an eviction policy other than noeviction may evict a held lock's key under memory pressure and grant the lock twice",
        "lock expiry runs on the server's wall clock: a clock jump there can end a lease early, and a lease's validity is the full TTL from the request's send instant on the client's clock, with no allowance for the server's clock running faster (rate drift): a server clock faster by a fraction f expires the key f × TTL before the holder's validity ends",
    ],
};

enum Outcome {
    Granted(Lease),
    /// Held by someone else.
    Busy,
}

/// The single-instance Redis lock service.
///
/// ```no_run
/// # async fn demo() -> fencelock_core::Result<()> {
/// use fencelock_core::{DistributedLock, LockOptions};
/// let locks = fencelock_redis::RedisLock::connect("redis://127.0.0.1:6379").await?;
/// let lease = locks.acquire("report", &LockOptions::new()).await?;
/// println!("token {}", lease.token());
/// lease.release().await?;
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct RedisLock {
    node: RedisNode,
    guarantees: Guarantees,
    /// Keys this instance recently found busy (shared by its clones).
    contention: Arc<Contention>,
    /// Shut by [`close`](DistributedLock::close); shared by clones.
    gate: Arc<CloseGate>,
}

impl RedisLock {
    /// Connects to the server a `redis://` URL names (see [`RedisConfig::from_url`]).
    ///
    /// # Cancel safety
    /// Dropping it leaves nothing behind: a connection being made is closed with the
    /// future.
    pub async fn connect(url: &str) -> Result<Self> {
        Self::connect_with(RedisConfig::from_url(url)?).await
    }

    /// Connects with explicit options, checked as a URL's are ([`RedisConfig::validate`]),
    /// and reads the server's persistence and eviction settings to choose between
    /// [`GUARANTEES_DURABLE`] and [`GUARANTEES`].
    ///
    /// # Errors
    /// [`LockError::InvalidConfig`](fencelock_core::LockError::InvalidConfig) for bad
    /// options or refused credentials; `Unavailable` when the server cannot be reached
    /// within the connect timeout.
    ///
    /// # Cancel safety
    /// Dropping it leaves nothing behind: a connection being made is closed with the
    /// future.
    pub async fn connect_with(cfg: RedisConfig) -> Result<Self> {
        let node = RedisNode::connect(cfg).await?;
        let guarantees = match node.keeps_token_counters().await? {
            Ok(settings) if settings.strict_tokens() => GUARANTEES_DURABLE,
            Ok(settings) => {
                tracing::info!(
                    server = node.server(),
                    fsync_always = settings.fsync_always,
                    eviction_policy = %settings.eviction_policy,
                    "tokens are best effort: the token counter can be lost in a crash or evicted"
                );
                GUARANTEES
            }
            Err(why) => {
                tracing::warn!(server = node.server(), "{why}; assuming best-effort tokens");
                GUARANTEES
            }
        };
        let guarantees = node.config().layout.guarantees(guarantees);
        Ok(RedisLock {
            node,
            guarantees,
            contention: Arc::default(),
            gate: Arc::default(),
        })
    }

    /// The connection, e.g. for a [`RedisFencedStore`](crate::RedisFencedStore) on the
    /// same server.
    ///
    /// # Cancel safety
    /// Cancel safe: dropped while connecting, nothing is kept and the next call connects
    /// again.
    pub async fn connection(&self) -> Result<ConnectionManager> {
        self.node.connection().await
    }

    /// The options in use.
    pub fn config(&self) -> &RedisConfig {
        self.node.config()
    }

    /// The server as a [`RedisNode`].
    pub fn node(&self) -> &RedisNode {
        &self.node
    }

    /// One acquire round trip. Cancel safe without a task of its own (a spawn and a hop
    /// between worker threads per acquire: up to 50 µs on a loaded machine, `fencelock
    /// bench`): a guard armed before the request releases the grant in the background when
    /// the caller drops this future before the outcome is handled.
    async fn grant(&self, key: &str, opts: &LockOptions) -> Result<Outcome> {
        let node = &self.node;
        let grant = GrantId::random();
        let undo = {
            // The id shared (a reference count), not its text copied: this guard is
            // disarmed on every path but a dropped future.
            let grant = grant.clone();
            let ttl = opts.ttl();
            CancelGuard::new(move || node.release_later(key, grant.as_str(), ttl))
        };
        let under = node.run_id_for_grant();
        let sent_at = Instant::now();
        let answer = node.try_grant(key, &grant, opts.ttl(), Duration::ZERO).await;
        let token = match answer {
            Ok(NodeGrant::Granted(token)) => FencingToken::new(token),
            // `Restarting` needs a restart delay, which a single server never sends.
            Ok(NodeGrant::Busy(_) | NodeGrant::Restarting(_)) => {
                undo.disarm(); // refused: granted nowhere
                return Ok(Outcome::Busy);
            }
            Err(e) => {
                undo.disarm(); // try_grant already releases an unheard grant
                return Err(e);
            }
        };
        tracing::debug!(%key, %token, "granted");
        let lease = self.lease(key, grant, under, token, sent_at, opts.ttl(), opts);
        // From here the lease's drop releases the grant.
        undo.disarm();
        Ok(Outcome::Granted(lease))
    }

    /// A lease for a grant this instance holds on the server since `sent_at`, valid for
    /// `validity` from then; `under`: the server's `run_id` when it was made.
    #[allow(clippy::too_many_arguments)]
    fn lease(
        &self,
        key: &str,
        grant: GrantId,
        under: Option<String>,
        token: FencingToken,
        sent_at: Instant,
        validity: Duration,
        opts: &LockOptions,
    ) -> Lease {
        let ops = Arc::new(RedisGrant {
            node: self.node.clone(),
            key: key.to_owned(),
            grant: grant.clone(),
            under,
        });
        Lease::new(LeaseParts {
            key: key.to_owned(),
            token,
            grant,
            sent_at,
            validity,
            options: *opts,
            ops,
        })
    }

    /// One attempt of `acquire`. The first is the uncontended path (one transaction) —
    /// unless this instance found the key busy within the last second: then it queues at
    /// once (a turn grants a free key too, and the transaction would cost five server
    /// commands to learn "busy" again). Queued, the acquire is a waiter registered on this
    /// instance's channel, taking its turns ([`RedisNode::wait_turn_direct`]) — at once,
    /// then at the fallback poll for lost messages (or the holder's expiry). A release
    /// grants the lock to it directly and pushes the token (`g GRANT TOKEN NOW_MS`): the
    /// attempt woken by that push returns the lease without a request, its validity
    /// counted from the last turn ([`crate::handoff`]); when none would be left, the turn
    /// it takes instead claims the lock. A bare `g` (a reservation: an entry of an earlier
    /// version) is claimed by a turn; after an `n` the turn waits for the reservation of
    /// the waiter ahead to lapse.
    async fn attempt(
        &self,
        key: &str,
        opts: &LockOptions,
        state: &tokio::sync::Mutex<Option<Queued>>,
    ) -> Result<Attempt> {
        let mut state = state.lock().await;
        if state.as_ref().is_some_and(|q| q.done) {
            // This wait's grant was handed out and came back with no validity left (the
            // waiting loop gave it back: its release hands the lock on). Its entry is gone
            // and its grant id spent: wait again as a new waiter.
            *state = None;
        }
        let first_turn = state.is_none();
        let q = match &mut *state {
            Some(q) => q,
            slot @ None => {
                if !self.contention.recently_busy(key) {
                    match self.grant(key, opts).await? {
                        Outcome::Granted(lease) => return Ok(Attempt::Acquired(lease)),
                        Outcome::Busy => self.contention.found_busy(key),
                    }
                }
                // Registered before the first turn queues us: no hand-off message is missed.
                let grant = GrantId::random();
                let sub = self.node.wait_as(grant.as_str()).await?;
                slot.insert(Queued {
                    node: self.node.clone(),
                    key: key.to_owned(),
                    leave_for: opts.ttl().max(opts.wait()),
                    sub,
                    grant,
                    entry: String::new(),
                    queued_at: None,
                    queued_under: None,
                    done: false,
                })
            }
        };
        q.sub.ensure().await?;
        // Registered before the messages are read: one arriving in between still wakes us.
        let wake = q.sub.notified();
        let (turn, next) = q.sub.take_messages();
        if let Some(handed) = q.sub.take_handed() {
            if let Some(lease) = self.handed_lease(q, handed, opts) {
                q.done = true;
                return Ok(Attempt::Acquired(lease));
            }
            // No validity left (a very long wait, a paused waiter): the turn below claims
            // the lock, which holds our grant, with a validity of its own.
            tracing::debug!(%key, grant = %q.grant, "handed the lock with no validity left; claiming it");
        }
        if next && !turn && !first_turn {
            // The waiter ahead has the reservation: its claim or its lapse comes first.
            return Ok(Attempt::Busy {
                wake: Some(wake),
                retry_at: Some(Instant::now() + HANDOFF_CLAIM + NEXT_MARGIN),
            });
        }
        let under = self.node.run_id_for_grant();
        let sent_at = Instant::now();
        let span = tracing::debug_span!("turn", %key, grant = %q.grant, handed = turn);
        let answer = match self
            .node
            .wait_turn_direct(key, q.grant.as_str(), opts.ttl(), &q.entry, opts.wait())
            .instrument(span)
            .await
        {
            Ok(answer) => answer,
            Err(e) => {
                // The turn's outcome is unknown: it may have queued us under an entry we
                // never heard of (or granted us the lock). Give up this wait's place now —
                // the give-up finds our entries by grant id and frees a lock that holds
                // our grant — and, if the wait goes on, queue again under a new grant id:
                // another turn under this one would queue a second entry beside the
                // unknown one, and the one left over would later be granted the lock for
                // its whole TTL with nobody to use it.
                *state = None;
                return Err(e);
            }
        };
        match answer {
            Turn::Granted(token) => {
                q.done = true;
                let token = FencingToken::new(token);
                tracing::debug!(%key, %token, "granted from the queue");
                Ok(Attempt::Acquired(self.lease(
                    key,
                    q.grant.clone(),
                    under,
                    token,
                    sent_at,
                    opts.ttl(),
                    opts,
                )))
            }
            Turn::Queued { pttl, entry, server_ms } => {
                self.contention.found_busy(key);
                q.entry = entry;
                q.queued_at = server_ms.map(|server_ms| QueuedAt { sent_at, server_ms });
                q.queued_under = under;
                // A peer library's release sends no message: with a peer layout the poll
                // is the hand-off path, so it is not stretched (still bounded by the PTTL).
                let cfg = self.node.config();
                let factor = if cfg.layout.is_peer() { 1 } else { QUEUED_POLL_FACTOR };
                let fallback = jitter(cfg.poll * factor);
                let until_expiry = pttl.map_or(fallback, |ms| Duration::from_millis(ms + 1));
                Ok(Attempt::Busy {
                    wake: Some(wake),
                    retry_at: Some(Instant::now() + fallback.min(until_expiry)),
                })
            }
        }
    }

    /// The lease of a grant a release handed to this waiter directly, valid from its last
    /// turn that was answered "queued" (see [`crate::handoff`]); `None` when no validity
    /// is left, or no turn of this wait was answered yet — then a turn claims the lock.
    fn handed_lease(&self, q: &Queued, handed: Handed, opts: &LockOptions) -> Option<Lease> {
        let (start, valid_for) = validity(q.queued_at?, handed, opts.ttl(), Instant::now())?;
        let token = FencingToken::new(handed.token);
        let key = q.key.as_str();
        tracing::debug!(%key, %token, grant = %q.grant, "granted by the release's hand-off");
        // The hand-off ran after the last turn answered "queued": the run_id read before
        // that turn is the grant's, or older (see `RedisNode::run_id_for_grant`).
        Some(self.lease(
            key,
            q.grant.clone(),
            q.queued_under.clone(),
            token,
            start,
            valid_for,
            opts,
        ))
    }
}

/// How much later than the configured `poll` a queued waiter re-checks without a message:
/// hand-offs are addressed to it, so the poll only covers a lost message (a lost direct
/// `g` leaves the lock granted to that waiter until this re-check claims it — or its TTL
/// ends — while a dropped pub/sub connection wakes every waiter of the instance at once;
/// a lost reservation `g` costs the others one claim window).
const QUEUED_POLL_FACTOR: u32 = 8;

/// Slack after a reservation's claim window before the next waiter takes over.
const NEXT_MARGIN: Duration = Duration::from_millis(5);

/// One `acquire` queued on the server; dropped before it was granted (timed out,
/// cancelled, failed), it leaves the queue in the background.
pub(crate) struct Queued {
    node: RedisNode,
    key: String,
    /// How long a give-up sends its `LEAVE`: the longer of the TTL (a lock granted to
    /// this wait lasts that long) and the wait (its entry lapses that long after a turn).
    leave_for: Duration,
    sub: NodeSubscription,
    grant: GrantId,
    entry: String,
    /// The last turn answered "queued": a direct hand-off's validity counts from it.
    queued_at: Option<QueuedAt>,
    /// The server's `run_id` read before that turn: a direct hand-off's grant keeps it.
    queued_under: Option<String>,
    done: bool,
}

impl Drop for Queued {
    fn drop(&mut self) {
        if !self.done {
            self.node
                .leave_later(&self.key, self.grant.as_str(), &self.entry, self.leave_for);
        }
    }
}

#[async_trait]
impl DistributedLock for RedisLock {
    #[tracing::instrument(level = "debug", skip(self, opts), fields(backend = "redis"))]
    async fn try_acquire(&self, key: &str, opts: &LockOptions) -> Result<Option<Lease>> {
        self.gate
            .pass(async {
                validate_key(key)?;
                self.node.check_key(key)?;
                opts.validate_for_try()?;
                match self.grant(key, opts).await? {
                    Outcome::Granted(lease) => Ok(Some(lease.into_live_for_try()?)),
                    Outcome::Busy => Ok(None),
                }
            })
            .await
    }

    #[tracing::instrument(level = "debug", skip(self, opts), fields(backend = "redis"))]
    async fn acquire(&self, key: &str, opts: &LockOptions) -> Result<Lease> {
        self.gate
            .pass(async {
                self.node.check_key(key)?;
                let queued = tokio::sync::Mutex::new(None);
                // A queued waiter sends nothing between re-checks seconds apart: the last
                // check tells a hung server (Unavailable) from a held key (Timeout).
                let check = LastCheck::for_request_timeout(self.node.config().timeout);
                acquire_checked(key, opts, check, || self.attempt(key, opts, &queued)).await
            })
            .await
    }

    fn guarantees(&self) -> Guarantees {
        self.guarantees.clone()
    }

    /// The server, and the layout when it is a peer's: which layout was used is the first
    /// question when two libraries share a lock.
    fn describe(&self) -> String {
        match self.node.config().layout {
            crate::layout::RedisLayout::Fencelock => self.node.server().to_owned(),
            peer => format!("{}?layout={}", self.node.server(), peer.name()),
        }
    }

    /// Shuts this instance and its clones: waiting acquires end with
    /// [`LockError::Closed`](fencelock_core::LockError::Closed) (their queue entries and
    /// any grant that raced the close are given back in the background, as for a cancelled
    /// acquire), later calls fail with it. Then waits (at most twice the reply timeout plus
    /// the connect timeout, at least 1 s) for the releases still under way in the
    /// background — of dropped leases (counted from the drop: a lease dropped just before
    /// `close()` is released before it returns), of grants whose answer was lost or whose
    /// acquire was cancelled or closed — and closes the pub/sub connection. Leases still
    /// held stay held on the server until released or expired (Redis has no session to
    /// end).
    /// `Unavailable` when releases were still running at the bound.
    async fn close(&self) -> Result<()> {
        let _closing = self.gate.close(self.node.config().timeout).await;
        self.node.close().await
    }
}
