//! [`RedlockLock`]: the algorithm.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use fencelock_core::options::validate_key;
use fencelock_core::waiting::{acquire_with, jitter, Attempt, CancelGuard, WakeFuture};
use fencelock_core::{
    DistributedLock, Exclusion, FencingToken, GrantId, Guarantees, Lease, LeaseOps, LeaseParts, LockError, LockOptions,
    Result, Scope, TokenOrder,
};
use fencelock_redis::{NodeGrant, NodeSubscription, RedisNode};
use tokio::time::Instant;

use crate::config::RedlockConfig;
use crate::quorum::{fan_out, no_quorum, Answer};

/// What Redlock promises.
pub const GUARANTEES: Guarantees = Guarantees {
    backend: "redlock",
    exclusion: Exclusion::Conditional,
    tokens: TokenOrder::BestEffort,
    scope: Scope::Network,
    assumptions: &[
        "exclusive while a majority of nodes keep their data: a node restarted empty (no fsync-always persistence) must stay out for the longest TTL (restart_delay), or it can help grant a held lock again",
        "exclusive while clocks run at nearly the same rate and do not jump: every node expires keys by its wall clock; the validity subtracts drift_factor × TTL + 2 ms",
        "exclusive only for holders that finish within their validity: a process pause or network delay after the check is not covered (use the token)",
        "tokens are the highest of the quorum's per-node counters: they can repeat or go back after a node restart without persistence, or when the quorum's nodes missed earlier increments",
        "nodes are independent masters, not replicas of each other",
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
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    nodes: Vec<RedisNode>,
    cfg: RedlockConfig,
    /// Keys this instance recently found busy, and when: their next acquires ask the
    /// primary first from the start (see [`RedlockLock::round`]).
    busy: std::sync::Mutex<HashMap<String, Instant>>,
}

/// How long a key counts as contended after it was last found busy.
const CONTENDED_FOR: Duration = Duration::from_secs(1);
/// The most keys remembered as contended (older ones are forgotten first).
const CONTENDED_KEYS: usize = 1024;

impl Inner {
    fn recently_busy(&self, key: &str) -> bool {
        let busy = self.busy.lock().unwrap_or_else(|p| p.into_inner());
        busy.get(key).is_some_and(|t| t.elapsed() < CONTENDED_FOR)
    }

    fn found_busy(&self, key: &str) {
        let mut busy = self.busy.lock().unwrap_or_else(|p| p.into_inner());
        if busy.len() >= CONTENDED_KEYS {
            busy.retain(|_, t| t.elapsed() < CONTENDED_FOR);
            if busy.len() >= CONTENDED_KEYS {
                busy.clear();
            }
        }
        busy.insert(key.to_owned(), Instant::now());
    }
}

enum Round {
    Granted(Lease),
    /// Not granted; retry no later than this (the shortest holder TTL seen, or a node's
    /// restart delay).
    Busy(Option<Duration>),
}

impl RedlockLock {
    /// Builds from a `redlock://` URL. Connects to no node yet: each node is connected on
    /// first use, so a minority of dead nodes never stops the lock from working.
    pub async fn connect(url: &str) -> Result<Self> {
        Self::with_config(RedlockConfig::from_url(url)?)
    }

    /// Builds from explicit options.
    pub fn with_config(cfg: RedlockConfig) -> Result<Self> {
        let nodes = cfg
            .nodes
            .iter()
            .cloned()
            .map(RedisNode::lazy)
            .collect::<Result<Vec<_>>>()?;
        Ok(RedlockLock {
            inner: Arc::new(Inner {
                nodes,
                cfg,
                busy: std::sync::Mutex::new(HashMap::new()),
            }),
        })
    }

    /// The options in use.
    pub fn config(&self) -> &RedlockConfig {
        &self.inner.cfg
    }

    fn check_ttl(&self, opts: &LockOptions) -> Result<()> {
        let cfg = &self.inner.cfg;
        let floor = cfg.per_node_timeout * 2 + cfg.drift(opts.ttl());
        if opts.ttl() <= floor {
            return Err(LockError::invalid_input(format!(
                "ttl {:?} leaves no validity: Redlock needs a TTL well above 2 × per_node_timeout ({:?}) + drift",
                opts.ttl(),
                cfg.per_node_timeout
            )));
        }
        Ok(())
    }

    /// One round of the algorithm. Cancel safe without a task of its own (a spawn and a
    /// hop between threads per acquire, measurable on a loaded machine): a guard armed
    /// before the first request releases the grant on every node in the background when
    /// the caller drops the round before its outcome is handled.
    ///
    /// `contended` (this acquire, or another of this instance within the last second, found
    /// the key busy): ask the key's primary node first and
    /// the others only once it said yes. Waiters woken together by a release otherwise all
    /// race to every node, split the votes, undo, and wait out the random delay — with 64
    /// waiters that was 40 grants/s and waits of 11 s (`fencelock bench`). With the primary
    /// first exactly one of them wins that node and the rest learn "busy" in one round trip,
    /// touching nothing. The quorum rule is unchanged (the primary is one of the votes, the
    /// validity counts from the first request); a silent primary falls back to asking all.
    async fn round(&self, key: &str, opts: &LockOptions, contended: bool) -> Result<Round> {
        let inner = &self.inner;
        let cfg = &inner.cfg;
        let (ttl, quorum, per_node) = (opts.ttl(), cfg.quorum(), cfg.per_node_timeout);
        let grant = GrantId::random();
        let undo = {
            let (inner, k, g) = (Arc::clone(inner), key.to_owned(), grant.to_string());
            CancelGuard::new(move || {
                if let Ok(rt) = tokio::runtime::Handle::try_current() {
                    rt.spawn(release_everywhere(inner, k, g));
                }
            })
        };
        let start = Instant::now();
        let ask = async |nodes: &[RedisNode]| grant_on(nodes, per_node, key, &grant, ttl, cfg.restart_delay).await;
        let answers = if contended && inner.nodes.len() > 1 {
            let p = primary(key, inner.nodes.len());
            let mut first = ask(std::slice::from_ref(&inner.nodes[p])).await;
            match first.pop() {
                Some(Ok(NodeGrant::Busy(pttl))) => {
                    undo.disarm(); // refused by the primary: granted nowhere
                    return Ok(Round::Busy(pttl.map(Duration::from_millis)));
                }
                Some(Ok(NodeGrant::Granted(t))) => {
                    let others: Vec<RedisNode> = (inner.nodes.iter().enumerate())
                        .filter(|(i, _)| *i != p)
                        .map(|(_, n)| n.clone())
                        .collect();
                    let mut rest = ask(&others).await;
                    rest.insert(p, Ok(NodeGrant::Granted(t)));
                    rest
                }
                _ => ask(&inner.nodes).await,
            }
        } else {
            ask(&inner.nodes).await
        };
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
                lagging,
            });
            let lease = Lease::new(LeaseParts {
                key: key.to_owned(),
                token,
                grant,
                sent_at: start,
                validity: ttl - drift,
                options: *opts,
                ops,
            });
            // From here the lease's drop releases the grant.
            undo.disarm();
            return Ok(Round::Granted(lease));
        }
        // Failed: undo on every node, including those that did not answer.
        release_everywhere(Arc::clone(inner), key.to_owned(), grant.to_string()).await;
        undo.disarm();
        let answered = answers.iter().filter(|a| a.is_ok()).count();
        if answered < quorum {
            return Err(no_quorum("acquire", &answers, quorum, per_node));
        }
        if tokens.len() >= quorum {
            tracing::debug!(%key, ?elapsed, "a quorum granted, but too late: no validity left");
        }
        let shortest = answers
            .iter()
            .filter_map(|a| match a {
                Ok(NodeGrant::Busy(Some(ms))) => Some(Duration::from_millis(*ms)),
                _ => None,
            })
            .min();
        Ok(Round::Busy(shortest))
    }

    async fn attempt(
        &self,
        key: &str,
        opts: &LockOptions,
        subs: &tokio::sync::Mutex<Option<Vec<Option<NodeSubscription>>>>,
    ) -> Result<Attempt> {
        let mut subs = subs.lock().await;
        // Waiting on the primary's release channel alone: every release is published on
        // each node, and five wake-ups per waiter per release were most of the cost of a
        // 64-waiter herd. Any node's channel when the primary's could not be subscribed.
        let wake = match subs.as_ref() {
            Some(list) => {
                let p = primary(key, self.inner.nodes.len());
                let chosen: Vec<&NodeSubscription> = match list.get(p) {
                    Some(Some(s)) => vec![s],
                    _ => list.iter().flatten().collect(),
                };
                for s in &chosen {
                    let _ = s.ensure().await;
                }
                Some(any_of(chosen.into_iter().map(NodeSubscription::notified).collect()))
            }
            None => None,
        };
        let contended = subs.is_some() || self.inner.recently_busy(key);
        match self.round(key, opts, contended).await? {
            Round::Granted(lease) => Ok(Attempt::Acquired(lease)),
            Round::Busy(_) if subs.is_none() => {
                self.inner.found_busy(key);
                // Subscribe on every node that answers (a release is published on each).
                let per_node = self.inner.cfg.per_node_timeout;
                let k = key.to_owned();
                let answers = fan_out(&self.inner.nodes, per_node, move |_, n| {
                    let k = k.clone();
                    async move { n.subscribe(&k).await }
                })
                .await;
                *subs = Some(answers.into_iter().map(|a| a.ok()).collect());
                Ok(Attempt::Busy {
                    wake: None,
                    retry_at: Some(Instant::now()),
                })
            }
            Round::Busy(shortest) => {
                self.inner.found_busy(key);
                // The algorithm's random delay, so contenders that split the vote do not
                // collide again; never longer than the shortest holder TTL seen. Release
                // messages (`wake`) usually end the wait first.
                let retry = self.inner.cfg.retry_delay;
                let delay = jitter(shortest.map_or(retry, |s| s.min(retry)).max(Duration::from_millis(1)));
                Ok(Attempt::Busy {
                    wake,
                    retry_at: Some(Instant::now() + delay),
                })
            }
        }
    }
}

/// The node a contended key asks first: FNV-1a of the key, so keys spread over the nodes.
fn primary(key: &str, nodes: usize) -> usize {
    let hash = key.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    (hash % nodes.max(1) as u64) as usize
}

/// Completes when any of the futures does.
fn any_of(mut futs: Vec<WakeFuture>) -> WakeFuture {
    Box::pin(std::future::poll_fn(move |cx| {
        if futs.is_empty() {
            return std::task::Poll::Pending;
        }
        for f in futs.iter_mut() {
            if f.as_mut().poll(cx).is_ready() {
                return std::task::Poll::Ready(());
            }
        }
        std::task::Poll::Pending
    }))
}

#[async_trait]
impl DistributedLock for RedlockLock {
    #[tracing::instrument(level = "debug", skip(self, opts), fields(backend = "redlock"))]
    async fn try_acquire(&self, key: &str, opts: &LockOptions) -> Result<Option<Lease>> {
        validate_key(key)?;
        opts.validate_for_try()?;
        self.check_ttl(opts)?;
        match self.round(key, opts, false).await? {
            Round::Granted(lease) => Ok(Some(lease.into_live()?)),
            Round::Busy(_) => Ok(None),
        }
    }

    #[tracing::instrument(level = "debug", skip(self, opts), fields(backend = "redlock"))]
    async fn acquire(&self, key: &str, opts: &LockOptions) -> Result<Lease> {
        validate_key(key)?;
        opts.validate_for_wait()?;
        self.check_ttl(opts)?;
        let subs = tokio::sync::Mutex::new(None);
        acquire_with(key, opts, || self.attempt(key, opts, &subs)).await
    }

    fn guarantees(&self) -> Guarantees {
        GUARANTEES
    }

    fn describe(&self) -> String {
        self.inner.cfg.display.clone()
    }
}

/// Asks `nodes` at once to grant `grant` of `key`, each bounded by `per_node`.
async fn grant_on(
    nodes: &[RedisNode],
    per_node: Duration,
    key: &str,
    grant: &GrantId,
    ttl: Duration,
    restart_delay: Duration,
) -> Vec<Answer<NodeGrant>> {
    fan_out(nodes, per_node, |_, n| async move {
        n.try_grant(key, grant, ttl, restart_delay).await
    })
    .await
}

/// Releases `grant` of `key` on every node (compare-and-delete: a node that never granted
/// it is untouched), each bounded by the per-node timeout.
async fn release_everywhere(inner: Arc<Inner>, key: String, grant: String) {
    fan_out(&inner.nodes, inner.cfg.per_node_timeout, move |_, n| {
        let (k, g) = (key.clone(), grant.clone());
        async move { n.release(&k, &g).await }
    })
    .await;
}

/// One Redlock grant: extend needs a quorum again; release goes to every node.
struct RedlockGrant {
    inner: Arc<Inner>,
    key: String,
    grant: String,
    token: u64,
    /// Per node: its counter may be below `token` (it did not grant, or granted with a
    /// lower count), so release raises it. Nodes that granted with `token` itself already
    /// count from there and get the plain compare-and-delete — in the fault-free steady
    /// state that is every node, and the release costs what a bare Redlock's does.
    lagging: Vec<bool>,
}

impl RedlockGrant {
    /// Extends on every node at once; a quorum must answer yes within the validity.
    /// `batched`: each node's part joins that node's batch of background renewals, and
    /// the per-node timeout grows by the batch window.
    async fn extend_on_quorum(&self, ttl: Duration, batched: bool) -> Result<Option<Duration>> {
        let cfg = &self.inner.cfg;
        let start = Instant::now();
        let (k, g) = (self.key.clone(), self.grant.clone());
        let wait = if batched {
            self.inner
                .nodes
                .iter()
                .map(|n| n.renew_wait(ttl))
                .max()
                .unwrap_or_default()
        } else {
            Duration::ZERO
        };
        let answers = fan_out(&self.inner.nodes, cfg.per_node_timeout + wait, move |_, n| {
            let (k, g) = (k.clone(), g.clone());
            async move {
                if batched {
                    n.renew(&k, &g, ttl).await
                } else {
                    n.extend(&k, &g, ttl).await
                }
            }
        })
        .await;
        let extended = answers.iter().filter(|a| matches!(a, Ok(true))).count();
        let answered = answers.iter().filter(|a| a.is_ok()).count();
        let drift = cfg.drift(ttl);
        if extended >= cfg.quorum() && start.elapsed() + drift < ttl {
            return Ok(Some(ttl - drift));
        }
        if answered < cfg.quorum() {
            return Err(no_quorum("extend", &answers, cfg.quorum(), cfg.per_node_timeout + wait));
        }
        Ok(None)
    }
}

#[async_trait]
impl LeaseOps for RedlockGrant {
    async fn extend(&self, ttl: Duration) -> Result<Option<Duration>> {
        self.extend_on_quorum(ttl, false).await
    }

    async fn renew(&self, ttl: Duration) -> Result<Option<Duration>> {
        self.extend_on_quorum(ttl, true).await
    }

    async fn release(&self) -> Result<bool> {
        let cfg = &self.inner.cfg;
        let (k, g, token) = (self.key.clone(), self.grant.clone(), self.token);
        let lagging = self.lagging.clone();
        let answers = fan_out(&self.inner.nodes, cfg.per_node_timeout, move |i, n| {
            let (k, g) = (k.clone(), g.clone());
            let raise = lagging.get(i).copied().unwrap_or(true);
            async move {
                if raise {
                    n.release_raising(&k, &g, token).await
                } else {
                    n.release(&k, &g).await
                }
            }
        })
        .await;
        let released = answers.iter().filter(|a| matches!(a, Ok(true))).count();
        let answered = answers.iter().filter(|a| a.is_ok()).count();
        if answered < cfg.quorum() {
            return Err(no_quorum("release", &answers, cfg.quorum(), cfg.per_node_timeout));
        }
        Ok(released >= cfg.quorum())
    }
}
