//! [`RedlockLock`]: the algorithm.

use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use fencelock_core::cleanup::Cleanups;
use fencelock_core::closing::CloseGate;
use fencelock_core::options::duration_text::human;
use fencelock_core::options::validate_key;
use fencelock_core::waiting::{acquire_checked, CancelGuard, LastCheck};
use fencelock_core::{
    DistributedLock, Exclusion, FencingToken, GrantId, Guarantees, Lease, LeaseParts, LockError, LockOptions, Result,
    Scope, TokenOrder,
};
use fencelock_redis::{NodeGrant, RedisNode};
use tokio::time::Instant;

use crate::admission::Admission;
use crate::config::RedlockConfig;
use crate::error::{lacking_quorum, no_quorum, Refusal};
use crate::grant::{RedlockGrant, ReleasePlan};
use crate::quorum::{fan_out, fan_out_counting, late, Answer, Bound};
use crate::wait::Contention;

/// What Redlock promises.
pub const GUARANTEES: Guarantees = Guarantees {
    backend: "redlock",
    exclusion: Exclusion::Conditional,
    tokens: TokenOrder::BestEffort,
    scope: Scope::Network,
    assumptions: &[
        "exclusive while a majority of nodes keep their data: a node restarted without fsync-always persistence (empty, or from a snapshot or log older than its last grants) must stay out for the longest TTL, or it can help grant a held lock again; restart_delay keeps every restarted server process out that long (its uptime, read by the grant scripts), and a node whose data was flushed while it ran (FLUSHALL, FLUSHDB) out as long from then (its boot marker is gone)",
        "exclusive while clocks run at nearly the same rate and do not jump: every node expires keys by its wall clock; the validity subtracts drift_factor × TTL + 2 ms",
        "exclusive only for holders that finish within their validity: a process pause or network delay after the check is not covered (use the token)",
        "tokens are the highest of the quorum's per-node counters: they can repeat or go back after a node restart without persistence, or when the quorum's nodes missed earlier increments",
        "nodes are independent masters, not replicas of each other",
        "nodes never evict a held lock's key: run them with maxmemory-policy noeviction (any other policy may evict it under memory pressure and let a second holder in)",
    ],
};

/// Redlock over N independent Redis servers.
///
/// ```no_run
/// # async fn demo() -> fencelock_core::Result<()> {
/// use fencelock_core::{DistributedLock, LockOptions};
/// let locks = fencelock_redlock::RedlockLock::connect(
///     "redlock://10.0.0.1:6379,10.0.0.2:6379,10.0.0.3:6379,10.0.0.4:6379,10.0.0.5:6379",
/// ).await?;
/// let lease = locks.acquire("job", &LockOptions::new()).await?;
/// lease.release().await?;
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct RedlockLock {
    pub(crate) inner: Arc<Inner>,
}

#[derive(Debug)]
pub(crate) struct Inner {
    pub(crate) nodes: Vec<RedisNode>,
    pub(crate) cfg: RedlockConfig,
    /// Keys this instance recently found busy.
    pub(crate) busy: Contention,
    /// Rounds in flight (see `admission.rs`: issue 14).
    pub(crate) admission: Admission,
    /// Shut by [`close`](DistributedLock::close).
    pub(crate) gate: CloseGate,
    /// Background releases on every node — of dropped leases, of rounds cut off — counted
    /// from the moment each is decided, before any node has seen it (the nodes count
    /// their own requests only once sent): [`close`](DistributedLock::close) waits for
    /// them before it closes the nodes.
    pub(crate) cleanups: Cleanups,
}

pub(crate) enum Round {
    Granted(Lease),
    /// Not granted, and why: retry no later than its [`Refusal::shortest`] (the shortest
    /// holder TTL seen, or a node's restart delay left).
    Busy(Refusal),
}

/// redlock.md: `restart_delay` must cover the longest TTL a grant's copies are set
/// for — by the acquire, an extend or a heal — or a node restarted empty votes again
/// while a lock it forgot is still held elsewhere (two holders). Set (non-zero), it says
/// the nodes may lose data on restart, so a longer TTL is the caller's mistake, not a
/// choice: refused with [`LockError::InvalidInput`]. (0 means every node runs
/// fsync-always.)
/// A TTL a grant can be asked for, by an acquire or an extend: above 2 ×
/// `per_node_timeout` + drift (below it no answer could leave any validity) and within
/// [`check_restart_delay`].
pub(crate) fn check_ttl(cfg: &RedlockConfig, ttl: Duration) -> Result<()> {
    let floor = cfg.per_node_timeout * 2 + cfg.drift(ttl);
    if ttl <= floor {
        return Err(LockError::invalid_input(format!(
            "ttl {} leaves no validity: Redlock needs a TTL well above 2 × per_node_timeout ({}) + drift",
            human(ttl),
            human(cfg.per_node_timeout)
        )));
    }
    check_restart_delay(cfg, ttl)
}

fn check_restart_delay(cfg: &RedlockConfig, ttl: Duration) -> Result<()> {
    if !cfg.restart_delay.is_zero() && ttl > cfg.restart_delay {
        return Err(LockError::invalid_input(format!(
            "ttl {} is longer than restart_delay {}: a node restarted without its data \
             would vote again while a lock it forgot is still held; use a ttl of at most \
             restart_delay (auto-renew holds longer) or raise restart_delay (docs/backends/redlock.md)",
            human(ttl),
            human(cfg.restart_delay)
        )));
    }
    Ok(())
}

impl RedlockLock {
    /// Builds from a `redlock://` URL and connects to every node at once, each bounded as
    /// its own connection is (twice the connect timeout and twice the response timeout,
    /// about 1.1 s with the default `per_node_timeout`): it checks that the nodes that
    /// answer take the URL's login and are distinct servers, and that at least a quorum
    /// answered. A minority of nodes that do not answer is not waited for: they are
    /// connected again on first use, so a minority of dead nodes never stops the lock from
    /// working.
    ///
    /// # Errors
    /// [`LockError::InvalidConfig`] for a bad URL; when a node refuses the login (a
    /// password the URL does not give, or a wrong one); when nodes whose user lacks rights
    /// fencelock needs (their ACL: `NOPERM`) leave fewer than a quorum — a minority of
    /// them is outvoted, with a warning, as on every later round; and when two nodes answered with
    /// the same `run_id`, one server listed under two spellings (`127.0.0.1:6379` and
    /// `localhost:6379`), whose votes would count twice. Those are the URL's fault, not a
    /// failed node for the quorum to outvote.
    ///
    /// [`LockError::Unavailable`] when fewer than a quorum (N/2 + 1) of the nodes could be
    /// connected within the bound, naming how many answered and why each other one did
    /// not: no acquire could succeed until more of them come back, and a caller such as
    /// `fencelock run` should say so at once rather than wait (as `redis://` does when
    /// its one server is down). A [`with_config`](Self::with_config) instance connects
    /// lazily and checks none of this.
    ///
    /// # Cancel safety
    /// Cancel safe: the check only reads, and a dropped connect leaves nothing behind.
    pub async fn connect(url: &str) -> Result<Self> {
        let locks = Self::with_config(RedlockConfig::from_url(url)?)?;
        locks.check_nodes().await?;
        Ok(locks)
    }

    /// Connect's checks (see [`connect`](Self::connect)), on every node at once.
    async fn check_nodes(&self) -> Result<()> {
        let (nodes, cfg) = (&self.inner.nodes, &self.inner.cfg);
        let mut checks = tokio::task::JoinSet::new();
        for (i, node) in nodes.iter().enumerate() {
            let node = node.clone();
            checks.spawn(async move { (i, reach(&node).await) });
        }
        let mut reached: Vec<Answer<Option<String>>> = nodes
            .iter()
            .map(|n| Err(format!("{}: its check ended without an answer", n.server())))
            .collect();
        while let Some(checked) = checks.join_next().await {
            // A refused login ends connect (the other checks are aborted with the set): the
            // URL gives one login for every node. A node whose ACL refuses the user rights
            // is one server's setting (an ACL change rolled out node by node): a failed
            // node, as every later round counts it (`quorum::refused`). A check that
            // panicked leaves its node silent.
            match checked {
                Ok((i, Ok(answer))) => reached[i] = answer,
                Ok((i, Err(refused))) if fencelock_redis::is_rights_refusal(&refused) => {
                    reached[i] = Err(crate::quorum::node_failure(nodes[i].server(), &refused));
                }
                Ok((_, Err(refused))) => return Err(refused),
                Err(_) => {}
            }
        }
        // One server under two spellings (a name and its address): its votes would count
        // twice. Checked before the quorum: it is the URL's fault whatever else answered.
        let mut seen: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
        for (i, answer) in reached.iter().enumerate() {
            let Ok(Some(run_id)) = answer else { continue };
            if let Some(first) = seen.insert(run_id.as_str(), i) {
                return Err(LockError::invalid_config(format!(
                    "`{}`: {} and {} are the same Redis server (same run_id): list each server once; Redlock needs independent nodes",
                    cfg.display,
                    nodes[first].server(),
                    nodes[i].server()
                )));
            }
        }
        let unread: Vec<&str> = (reached.iter().zip(nodes))
            .filter(|(a, _)| matches!(a, Ok(None)))
            .map(|(_, n)| n.server())
            .collect();
        if !unread.is_empty() {
            tracing::warn!(
                nodes = %unread.join(", "),
                "cannot check that the nodes are distinct servers: their run_id was not read (`INFO server` refused, or not answered in time: a slow or paused server); one server listed twice would count twice, and until it is read (asked again in the background) contended keys queue on a node ranked by its address, so clients that spell it otherwise may lose hand-offs (if INFO is refused: grant +info)"
            );
        }
        let answered = reached.iter().filter(|a| a.is_ok()).count();
        if answered < cfg.quorum() {
            if let Some(refused) = crate::quorum::refused("connect", &reached, cfg.quorum()) {
                return Err(refused);
            }
            let bound = nodes.first().map_or(Duration::ZERO, connect_bound);
            return Err(no_quorum("connect", &reached, cfg.quorum(), bound));
        }
        crate::quorum::warn_refused_config(&reached);
        Ok(())
    }

    /// Builds from explicit options, checked as a URL's are ([`RedlockConfig::validate`]).
    ///
    /// # Errors
    /// [`LockError::InvalidConfig`] for options the check refuses.
    pub fn with_config(cfg: RedlockConfig) -> Result<Self> {
        cfg.validate()?;
        // A node's reply may come late and still count (`quorum.rs`): the client's own
        // reply timeout must not cut it off first.
        let late = late(cfg.per_node_timeout);
        let nodes = cfg
            .nodes
            .iter()
            .cloned()
            .map(|mut n| {
                n.timeout = n.timeout.max(late);
                // The grant scripts read `INFO server` then: the connect's ACL check asks.
                n.set_scripts_read_info(!cfg.restart_delay.is_zero());
                RedisNode::lazy(n)
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(RedlockLock {
            inner: Arc::new(Inner {
                nodes,
                cfg,
                busy: Contention::default(),
                admission: Admission::default(),
                gate: CloseGate::new(),
                cleanups: Cleanups::new(),
            }),
        })
    }

    /// The nodes, in the URL's order: each one's [`RedisNode::server`] and
    /// [`RedisNode::identity`] (the `run_id` a contended key's primary is ranked by).
    pub fn nodes(&self) -> &[RedisNode] {
        &self.inner.nodes
    }

    /// The node a contended `key` queues on (its primary), as this client ranks the
    /// nodes now: an index into [`nodes`](Self::nodes). Clients that know every server's
    /// `run_id` agree on it whatever their URLs' spelling or order (see
    /// docs/backends/redlock.md); a node whose `run_id` this client does not know is
    /// ranked by its address.
    pub fn primary_index(&self, key: &str) -> usize {
        crate::wait::primary(key, &self.inner.nodes)
    }

    /// The options in use.
    pub fn config(&self) -> &RedlockConfig {
        &self.inner.cfg
    }

    /// One round of the algorithm; the caller holds a place in flight (`admission.rs`).
    /// Cancel safe without a task of its own (a spawn and a
    /// hop between threads per acquire, measurable on a loaded machine): a guard armed
    /// before the first request releases the grant on every node in the background when
    /// the caller drops the round before its outcome is handled.
    ///
    /// (A contended key does not come here: its acquire queues on the key's primary node,
    /// see `wait.rs`, and asks the other nodes once the primary granted.)
    pub(crate) async fn round(&self, key: &str, opts: &LockOptions) -> Result<Round> {
        let inner = &self.inner;
        let cfg = &inner.cfg;
        let (ttl, per_node) = (opts.ttl(), cfg.per_node_timeout);
        let grant = GrantId::random();
        // The undo of a round dropped in flight ranks the primary when it runs (not on
        // the uncontended path).
        let undo = {
            let (inner, key, grant) = (Arc::clone(inner), key.to_owned(), grant.to_string());
            CancelGuard::new(move || {
                let primary = crate::wait::primary(&key, &inner.nodes);
                let plan = ReleasePlan {
                    inner,
                    key,
                    grant,
                    primary,
                    raise_to: None,
                    under: Vec::new(),
                };
                plan.everywhere_later(Instant::now() + ttl)
            })
        };
        // Read before the requests: each grant keeps the run_id its node had then.
        let under: Vec<Option<String>> = inner.nodes.iter().map(RedisNode::run_id_for_grant).collect();
        let start = Instant::now();
        let bound = Bound::quorum(per_node, cfg.quorum());
        let answers = grant_on(
            &inner.nodes,
            bound,
            Counting::Grants,
            key,
            &grant,
            ttl,
            cfg.restart_delay,
        )
        .await;
        // Computed once for the lease (or the failed round's undo), after the round: the
        // nodes it connected (a lazy instance's first round, a node back from an outage)
        // have their `run_id` now, and waiters that queue from now on rank by it — ranked
        // before, a lease kept the primary by address and its release skipped their queue.
        let primary = crate::wait::primary(key, &inner.nodes);
        let round = self.conclude(key, opts, grant, primary, &answers, under, start).await;
        undo.disarm();
        round
    }

    /// The end of a round whose votes are `answers` (by node), asked from `start`: a lease
    /// for `grant` when a quorum granted it with validity left; otherwise the grant is
    /// undone on every node (in the background for silent ones, bounded by the TTL) and
    /// the round is busy — or `Unavailable` when fewer than a quorum answered. `primary`:
    /// the key's primary node as the round saw it, where the grant's release hands off;
    /// `under`: per node, its `run_id` read before the request that made its vote
    /// (`RedlockGrant::under`).
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn conclude(
        &self,
        key: &str,
        opts: &LockOptions,
        grant: GrantId,
        primary: usize,
        answers: &[Answer<NodeGrant>],
        under: Vec<Option<String>>,
        start: Instant,
    ) -> Result<Round> {
        let inner = &self.inner;
        let cfg = &inner.cfg;
        let (ttl, quorum, per_node) = (opts.ttl(), cfg.quorum(), cfg.per_node_timeout);
        let elapsed = start.elapsed();
        let drift = cfg.drift(ttl);
        let tokens: Vec<u64> = answers
            .iter()
            .filter_map(|a| match a {
                Ok(NodeGrant::Granted(t)) => Some(*t),
                _ => None,
            })
            .collect();
        if tokens.len() >= quorum && elapsed + drift < ttl {
            let token = FencingToken::new(tokens.iter().copied().max().unwrap_or(0));
            tracing::debug!(%key, %token, granted = tokens.len(), ?elapsed, "granted by a quorum");
            let lagging = answers
                .iter()
                .map(|a| !matches!(a, Ok(NodeGrant::Granted(t)) if *t == token.get()))
                .collect();
            let ops = Arc::new(RedlockGrant {
                inner: Arc::clone(inner),
                key: key.to_owned(),
                grant: grant.to_string(),
                token: token.get(),
                primary,
                lagging,
                under: std::sync::Mutex::new(under),
                ttl_ms: AtomicU64::new(ttl.as_millis() as u64),
                copies_until: std::sync::Mutex::new((start, start + ttl)),
                released: AtomicBool::new(false),
            });
            // Nodes that answered "held by another grant" (usually the previous holder's,
            // whose release had not reached them yet): the grant takes them too once the
            // key is free there (`heal.rs`), rather than living on the quorum alone. So
            // do nodes inside their restart delay, once past it (the heal's script checks
            // the delay as the acquire's does).
            let refused = answers
                .iter()
                .enumerate()
                .filter_map(|(i, a)| match a {
                    Ok(NodeGrant::Busy(ms)) => Some((i, *ms)),
                    Ok(NodeGrant::Restarting(ms)) => Some((i, Some(*ms))),
                    _ => None,
                })
                .collect();
            crate::heal::start(&ops, refused);
            let lease = Lease::new(LeaseParts {
                key: key.to_owned(),
                token,
                grant,
                sent_at: start,
                validity: ttl - drift,
                options: *opts,
                ops,
            });
            return Ok(Round::Granted(lease));
        }
        // Failed: undo on every node, including those that did not answer.
        // Bounded by the TTL: a node that stays silent has let the grant expire by then.
        ReleasePlan {
            inner: Arc::clone(inner),
            key: key.to_owned(),
            grant: grant.to_string(),
            primary,
            raise_to: None,
            under: Vec::new(),
        }
        .everywhere(Instant::now() + ttl)
        .await;
        let answered = answers.iter().filter(|a| a.is_ok()).count();
        if answered < quorum {
            // Nodes that refused the settings (the user's rights: `INFO` for the restart
            // delay) answered: the URL's fault, not a lost quorum. Nodes that answered
            // with an error the same request meets again (a key of the wrong type), too
            // many for the rest to make a quorum: not silence. Otherwise "no quorum":
            // the round waited for late answers while fewer than a quorum had come.
            return Err(lacking_quorum("acquire", answers, quorum, late(per_node)));
        }
        crate::quorum::warn_refused_config(answers);
        if tokens.len() >= quorum {
            tracing::debug!(%key, ?elapsed, "a quorum granted, but too late: no validity left");
        }
        Ok(Round::Busy(Refusal::of(answers, quorum)))
    }
}

impl RedlockLock {
    /// The key fits the nodes' layout (they share one, from the URL).
    fn check_key(&self, key: &str) -> Result<()> {
        self.inner.nodes.iter().try_for_each(|n| n.check_key(key))
    }
}

#[async_trait]
impl DistributedLock for RedlockLock {
    #[tracing::instrument(level = "debug", skip(self, opts), fields(backend = "redlock"))]
    async fn try_acquire(&self, key: &str, opts: &LockOptions) -> Result<Option<Lease>> {
        self.inner
            .gate
            .pass(async {
                validate_key(key)?;
                self.check_key(key)?;
                opts.validate_for_try()?;
                check_ttl(&self.inner.cfg, opts.ttl())?;
                let _permit = self.inner.admission.round().await;
                match self.round(key, opts).await? {
                    Round::Granted(lease) => Ok(Some(lease.into_live_for_try()?)),
                    // Refused by nodes inside their restart delay, which could have made
                    // the quorum: not "held" (`Refusal::restart_error` says why).
                    Round::Busy(refusal) => match refusal.restart_error(key, self.inner.cfg.restart_delay) {
                        Some(e) => Err(e),
                        None => Ok(None),
                    },
                }
            })
            .await
    }

    #[tracing::instrument(level = "debug", skip(self, opts), fields(backend = "redlock"))]
    async fn acquire(&self, key: &str, opts: &LockOptions) -> Result<Lease> {
        self.inner
            .gate
            .pass(async {
                validate_key(key)?;
                self.check_key(key)?;
                opts.validate_for_wait()?;
                check_ttl(&self.inner.cfg, opts.ttl())?;
                let queued = tokio::sync::Mutex::new(crate::wait::WaitState::default());
                // A queued waiter sends nothing between re-checks: the last check tells
                // hung nodes (Unavailable) from a held key (Timeout). One attempt with a
                // silent primary (`wait.rs`): the subscription's check and the turn, then
                // a plain round and its undo — per_node + late + late + per_node at most.
                let per_node = self.inner.cfg.per_node_timeout;
                let late = crate::quorum::late(per_node);
                let check = LastCheck::for_request_timeout((per_node + late) * 2);
                match acquire_checked(key, opts, check, || self.attempt(key, opts, &queued)).await {
                    // The wait ran out: refused to the end by nodes inside their restart
                    // delay (its last round said so, and they are inside it still) is not
                    // a held key — said as `try_acquire` says it.
                    Err(e) if e.is_timeout() => {
                        let restarting = (queued.lock().await.refusal.latest.as_ref())
                            .filter(|r| r.still_restarting())
                            .and_then(|r| r.restart_error(key, self.inner.cfg.restart_delay));
                        Err(restarting.unwrap_or(e))
                    }
                    done => done,
                }
            })
            .await
    }

    fn guarantees(&self) -> Guarantees {
        let layout = self
            .inner
            .cfg
            .nodes
            .first()
            .map_or(fencelock_redis::RedisLayout::Fencelock, |n| n.layout);
        layout.guarantees(GUARANTEES)
    }

    fn describe(&self) -> String {
        self.inner.cfg.display.clone()
    }

    /// Shuts this instance and its clones: waiting acquires end with
    /// [`LockError::Closed`] (their queue entries and any round that raced the close are
    /// given back in the background, as for a cancelled acquire), later calls fail with
    /// it. Then waits, bounded, for the releases it started in the background — of leases
    /// dropped unreleased (a lease dropped just before `close()` is released when it
    /// returns), of cancelled or closed rounds — and closes every node at once
    /// ([`RedisNode::close`]): each waits, bounded, for the releases still under way on it
    /// — failed rounds, releases nodes did not confirm in time — then closes its pub/sub
    /// connection.
    ///
    /// # Errors
    /// `Unavailable` naming the nodes whose releases were still running at the bound, when
    /// fewer than a quorum closed cleanly. Releases left on a minority (a node that is
    /// down) are logged and go on until their TTL: a quorum without them decides every
    /// grant, as it did while the client ran — and a CLI `run` whose wait ran out must not
    /// read a dead minority as "the backend stopped answering" (helper-74's review).
    ///
    /// # Cancel safety
    /// Cancel safe: the gate is shut before the first await; dropped later, the releases
    /// go on in the background.
    async fn close(&self) -> Result<()> {
        let cfg = &self.inner.cfg;
        // One bound for each step (the steps run one after the other): a release to every
        // node waits at most a late quorum's bound (`quorum::late`), a node's own close
        // at most 3 × per_node_timeout (at least 1 s); the bound only guards a hang.
        let bound = cfg.per_node_timeout * 4 + Duration::from_secs(1);
        // The calls end as soon as their tasks run.
        let _closing = self.inner.gate.close(bound).await;
        if !self.inner.cleanups.idle(bound).await {
            tracing::warn!(
                ?bound,
                "close: background releases still running at the bound; closing the nodes"
            );
        }
        let answers = fan_out(&self.inner.nodes, Bound::strict(bound), |_, n| async move {
            n.close().await
        })
        .await;
        let failed: Vec<&str> = answers
            .iter()
            .filter_map(|a| a.as_ref().err())
            .map(String::as_str)
            .collect();
        if failed.is_empty() {
            return Ok(());
        }
        let closed = answers.len() - failed.len();
        if closed >= cfg.quorum() {
            tracing::info!(
                closed,
                left = %failed.join("; "),
                "close: releases left on a minority of nodes go on until their TTL"
            );
            return Ok(());
        }
        Err(LockError::Unavailable {
            message: format!(
                "redlock: closing left background releases running on {} of {} nodes (a quorum is {}): {}",
                failed.len(),
                answers.len(),
                cfg.quorum(),
                failed.join("; ")
            ),
            source: None,
        })
    }
}

/// How long connect waits for one node's connection: as long as the node bounds its own
/// connection (its connect attempts, then its first requests), so a node that answers
/// within its timeouts is never cut off.
fn connect_bound(node: &RedisNode) -> Duration {
    let cfg = node.config();
    cfg.connect_timeout * 2 + cfg.timeout * 2
}

/// Connects `node` for connect's checks: `Ok(Ok(run_id))` when it answered (its `run_id`,
/// `None` if it could not be read), `Ok(Err(why))` when it could not be connected within
/// [`connect_bound`], and `Err` for a refused login or another refused setting (the URL's
/// fault: `InvalidConfig`).
async fn reach(node: &RedisNode) -> Result<Answer<Option<String>>> {
    let bound = connect_bound(node);
    match tokio::time::timeout(bound, node.connection()).await {
        Ok(Ok(_)) => {}
        Ok(Err(e @ LockError::InvalidConfig { .. })) => return Err(e),
        Ok(Err(e)) => return Ok(Err(crate::quorum::node_failure(node.server(), &e))),
        Err(_) => return Ok(Err(format!("{}: no connection within {bound:?}", node.server()))),
    }
    // Bounded by itself; on the connection just made (a server that needs a password the
    // URL does not give accepts the connection and refuses the first command).
    node.check_login().await?;
    Ok(Ok(node.run_id().filter(|id| !id.is_empty())))
}

/// Which answers of a [`grant_on`] round count towards its bound's quorum (the late wait,
/// `quorum.rs`).
#[derive(Debug, Clone, Copy)]
pub(crate) enum Counting {
    /// Only [`NodeGrant::Granted`]: a node busy at once must not cut off a slow node's
    /// grant (a plain round: `try_acquire`, a first attempt, a fallback re-check).
    Grants,
    /// Any answer: a queue turn's rounds of the secondaries (its first ask and its
    /// re-asks of the busy ones). Their "busy" is usually the
    /// previous holder's release on its way, asked again at once (`ask_refusals_again`),
    /// and the turn must end within the claim window (250 ms, shorter than the late
    /// bound): waiting the late bound for a silent node beside a busy one let the
    /// reservation lapse and the next waiter in first
    /// (`a_re_ask_answered_as_late_as_the_first_ask_still_counts`).
    Answers,
}

/// Asks `nodes` at once to grant `grant` of `key`, within `bound`, its quorum counting
/// the answers `counting` says.
pub(crate) async fn grant_on(
    nodes: &[RedisNode],
    bound: Bound,
    counting: Counting,
    key: &str,
    grant: &GrantId,
    ttl: Duration,
    restart_delay: Duration,
) -> Vec<Answer<NodeGrant>> {
    let yes = |a: &NodeGrant| match counting {
        Counting::Grants => matches!(a, NodeGrant::Granted(_)),
        Counting::Answers => true,
    };
    fan_out_counting(nodes, bound, yes, |_, n| async move {
        n.try_grant(key, grant, ttl, restart_delay).await
    })
    .await
}
