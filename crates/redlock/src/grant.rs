//! [`RedlockGrant`]: one Redlock grant — extend needs a quorum again; release goes to every
//! node and, where a node did not confirm in time, goes on in the background until that
//! node answers or its copy of the grant has expired.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use fencelock_core::cleanup::CleanupGuard;
use fencelock_core::{LeaseOps, Result};
use tokio::time::Instant;

use crate::error::lacking_quorum;
use crate::lock::{check_ttl, Inner};
use crate::quorum::{fan_out, fan_out_counting, Bound};

/// The most rounds a background release sends to the nodes that have not answered yet.
const RELEASE_ROUNDS: u32 = 50;
/// The longest pause between two rounds of a background release.
const RELEASE_PAUSE_MAX: Duration = Duration::from_secs(1);

/// One Redlock grant: extend needs a quorum again; release goes to every node.
pub(crate) struct RedlockGrant {
    pub(crate) inner: Arc<Inner>,
    pub(crate) key: String,
    pub(crate) grant: String,
    pub(crate) token: u64,
    /// The key's primary node (index) when the grant was made: its release hands the lock
    /// off there. Kept rather than computed at release, so a `run_id` read while the lease
    /// is held (see `wait::primary`) does not make the release skip the queue its waiters
    /// joined; in normal operation both are the same node. When they differ the release
    /// hands off on both: a waiter of this instance that queued on the old one moves to the
    /// new one at its next turn (`wait.rs`).
    pub(crate) primary: usize,
    /// Per node: its counter may be below `token` (it did not grant, or granted with a
    /// lower count), so release raises it. Nodes that granted with `token` itself already
    /// count from there and get the plain compare-and-delete — in the fault-free steady
    /// state that is every node, and the release costs what a bare Redlock's does.
    pub(crate) lagging: Vec<bool>,
    /// Per node: the server's `run_id` when this grant was made there, read before the
    /// request that made it ([`RedisNode::run_id_for_grant`]) — the round's, the waiter's
    /// turn's, a re-ask's, a heal's (which replaces it): a repeated release that finds the
    /// grant gone on a node compares the node's `run_id` now with it, to tell "released by
    /// the first try" from "forgotten by a restart". `None`: unknown.
    pub(crate) under: Mutex<Vec<Option<String>>>,
    /// The TTL (ms) last set on the nodes: a node's copy of the grant is gone at most this
    /// long after now, which bounds a background release.
    pub(crate) ttl_ms: AtomicU64,
    /// When the copies a quorum confirmed end at the earliest, as this client counts: the
    /// start of the round (or of the latest-started extend a quorum confirmed) plus its
    /// TTL — with that start, so a confirmed extend that started earlier does not win. A
    /// heal (`heal.rs`) sets the grant on a node until then, no longer. Not the longest
    /// TTL ever set: an extend to a shorter TTL ends the copies sooner (review: a heal
    /// after it kept the first TTL, 30 s against the quorum's 2 s).
    pub(crate) copies_until: Mutex<(Instant, Instant)>,
    /// Set when the release starts (asked for, or the lease dropped or run out): a heal
    /// sends nothing more, and one that landed anyway is released again on its node.
    pub(crate) released: AtomicBool,
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
        // Whatever the answers, some node may now hold the grant for `ttl`.
        self.ttl_ms.fetch_max(ttl.as_millis() as u64, Ordering::Relaxed);
        let bound = Bound::quorum(cfg.per_node_timeout + wait, cfg.quorum());
        // Only a `true` counts towards the quorum the late wait is for: a node whose copy
        // is gone answers `false` at once, and must not cut off a slow node's yes.
        let answers = fan_out_counting(
            &self.inner.nodes,
            bound,
            |extended: &bool| *extended,
            move |_, n| {
                let (k, g) = (k.clone(), g.clone());
                async move {
                    if batched {
                        n.renew(&k, &g, ttl).await
                    } else {
                        n.extend(&k, &g, ttl).await
                    }
                }
            },
        )
        .await;
        let extended = answers.iter().filter(|a| matches!(a, Ok(true))).count();
        let answered = answers.iter().filter(|a| a.is_ok()).count();
        let drift = cfg.drift(ttl);
        if extended >= cfg.quorum() && start.elapsed() + drift < ttl {
            let mut copies = self.copies_until.lock().unwrap_or_else(|p| p.into_inner());
            if start >= copies.0 {
                *copies = (start, start + ttl);
            }
            return Ok(Some(ttl - drift));
        }
        if answered < cfg.quorum() {
            // Refusals that rule out a quorum (a permission, a key of the wrong type) as
            // the acquire tells them: not temporary, so auto-renew does not retry them
            // until the validity runs out.
            // The wait it made: the late bound (a quorum had not answered).
            return Err(lacking_quorum("extend", &answers, cfg.quorum(), bound.late));
        }
        Ok(None)
    }

    /// What this grant's copy on a node healed now should live for: until
    /// [`copies_until`](Self::copies_until), so it ends no later than the copies the
    /// quorum confirmed (zero once those have ended).
    pub(crate) fn copies_left(&self) -> Duration {
        let (_, until) = *self.copies_until.lock().unwrap_or_else(|p| p.into_inner());
        // Never longer than the restart delay (every TTL set is checked against it; this
        // keeps a heal within it whatever set `copies_until`).
        self.inner
            .cfg
            .within_restart_delay(until.saturating_duration_since(Instant::now()))
    }

    pub(crate) fn release_plan(&self) -> ReleasePlan {
        ReleasePlan {
            inner: Arc::clone(&self.inner),
            key: self.key.clone(),
            grant: self.grant.clone(),
            primary: self.primary,
            raise_to: Some((self.token, self.lagging.clone())),
            under: self.under.lock().unwrap_or_else(|p| p.into_inner()).clone(),
        }
    }
}

#[async_trait]
impl LeaseOps for RedlockGrant {
    /// An explicit extend. A `ttl` the acquire would refuse is refused with
    /// [`LockError::InvalidInput`](fencelock_core::LockError::InvalidInput) before
    /// anything is sent (the lease keeps its TTL): longer than a non-zero `restart_delay`
    /// (copies that outlive the delay let a node restarted empty vote again while they are
    /// held), or at or below 2 × `per_node_timeout` + drift (no answer could leave any
    /// validity: the lease would be reported lost).
    async fn extend(&self, ttl: Duration) -> Result<Option<Duration>> {
        check_ttl(&self.inner.cfg, ttl)?;
        self.extend_on_quorum(ttl, false).await
    }

    /// An auto-renewal: sets at most `restart_delay` (when non-zero), whatever TTL the
    /// lease renews with — a second line behind the extend's refusal (the lease keeps its
    /// TTL when an extend is refused); the validity it answers is counted from that.
    async fn renew(&self, ttl: Duration) -> Result<Option<Duration>> {
        let ttl = self.inner.cfg.within_restart_delay(ttl);
        self.extend_on_quorum(ttl, true).await
    }

    /// Sends the release to every node at once, each bounded by the per-node timeout.
    /// `Ok(false)` (the lease was lost) when more than N − quorum nodes answered that the
    /// grant was not theirs: fewer than a quorum can still have held it. An error, not
    /// temporary, when fewer than a quorum answered and the others' refusals rule out a
    /// quorum ([`crate::quorum::refused`]: `InvalidConfig` for a refused permission, a
    /// permanent `Backend` error for a key of the wrong type or a script error), as the
    /// acquire tells them: the grant may stay there until its TTL. Otherwise `Ok(true)`
    /// — the lease's own validity says whether it was held to the end — and nodes that did
    /// not answer in time get the release again **in the background**, logged as a warning,
    /// until each answers or the grant's TTL has passed (their copy has expired by then),
    /// at most [`RELEASE_ROUNDS`] rounds. An unconfirmed release is therefore not an error:
    /// under load a slow quorum used to turn a release into `Unavailable` although it was
    /// still going on.
    async fn release(&self) -> Result<bool> {
        // Before any node is asked: a heal that reads it later sends nothing, and one
        // whose request was already out sees it when the answer comes and releases that
        // node again (`heal.rs`).
        self.released.store(true, Ordering::SeqCst);
        let plan = self.release_plan();
        let n = self.inner.nodes.len();
        let quorum = self.inner.cfg.quorum();
        let everyone: Vec<usize> = (0..n).collect();
        let answers = plan.send(&everyone, true).await;
        let refused = answers.iter().filter(|(_, a)| matches!(a, Ok(false))).count();
        let silent: Vec<usize> = answers.iter().filter(|(_, a)| a.is_err()).map(|(i, _)| *i).collect();
        if !silent.is_empty() {
            let until = Instant::now() + Duration::from_millis(self.ttl_ms.load(Ordering::Relaxed));
            // Not a "no quorum": a quorum may well have confirmed; name only the silent.
            let why: Vec<&str> = answers
                .iter()
                .filter_map(|(_, a)| a.as_ref().err().map(String::as_str))
                .collect();
            tracing::warn!(
                key = %self.key,
                token = self.token,
                "release not confirmed in time by {} of {n} node(s) ({}); sending it again in the background until they answer, the TTL has passed or the instance is closed (then those copies end with their TTL)",
                silent.len(),
                why.join("; ")
            );
            plan.finish_later(silent, until);
        }
        if refused > n - quorum {
            return Ok(false);
        }
        // Fewer than a quorum answered, and the others refused for good (a permission, a
        // key of the wrong type, as the acquire tells them): the grant may stay on a
        // quorum until its TTL, and sending again does not change that — an error the
        // holder must hear, not temporary. Silence alone is not one (see above).
        let answered = answers.iter().filter(|(_, a)| a.is_ok()).count();
        if answered < quorum {
            let answers: Vec<_> = answers.into_iter().map(|(_, a)| a).collect();
            if let Some(refused) = crate::quorum::refused("release", &answers, quorum) {
                return Err(refused);
            }
        }
        Ok(true)
    }

    /// Counted on the instance from the drop on, before any node has seen the release.
    fn cleanup(&self) -> Option<CleanupGuard> {
        Some(self.inner.cleanups.start())
    }
}

/// A release of one grant on a set of nodes: compare-and-delete, raising lagging counters
/// when the grant's token is known.
pub(crate) struct ReleasePlan {
    pub(crate) inner: Arc<Inner>,
    pub(crate) key: String,
    pub(crate) grant: String,
    /// The key's primary node (index) as the grant's round saw it: where the release looks
    /// at the queue and hands the lock off (`wait::primary`) — and on the primary as ranked
    /// at the release, when that differs (a waiter that moved there, `wait.rs`).
    pub(crate) primary: usize,
    /// The token and, per node, whether its counter must be raised to it.
    pub(crate) raise_to: Option<(u64, Vec<bool>)>,
    /// Per node: the server's `run_id` when the grant was made there (see
    /// [`RedlockGrant::under`]); empty (every node unknown) for the undo of a round, whose
    /// answer only says whether to send it again.
    pub(crate) under: Vec<Option<String>>,
}

impl ReleasePlan {
    /// One release request to each node of `which` at once; the answers, by node index.
    /// `judge`: the answers decide whether the lease was held, so a quorum's are awaited
    /// (late ones too, [`Bound::quorum`]); otherwise each node gets `per_node_timeout`,
    /// and the silent ones get the release again in the background.
    pub(crate) async fn send(&self, which: &[usize], judge: bool) -> Vec<(usize, crate::quorum::Answer<bool>)> {
        let nodes: Vec<_> = which.iter().map(|&i| self.inner.nodes[i].clone()).collect();
        let per_node = self.inner.cfg.per_node_timeout;
        let primary = self.primary;
        // The key's primary as this instance ranks it now: a waiter whose ranking moved
        // since the grant (a node's `run_id` read since, `wait.rs`) left the queue on
        // `primary` and queues there, so the release hands off on both when they differ.
        let ranked_now = crate::wait::primary(&self.key, &self.inner.nodes);
        let quorum = self.inner.cfg.quorum().min(nodes.len());
        let bound = if judge {
            Bound::quorum(per_node, quorum)
        } else {
            Bound::strict(per_node)
        };
        let answers = fan_out(&nodes, bound, |j, node| {
            let (k, g) = (self.key.clone(), self.grant.clone());
            let raise = self
                .raise_to
                .as_ref()
                .and_then(|(token, lagging)| lagging.get(which[j]).copied().unwrap_or(true).then_some(*token));
            let queued_here = which[j] == primary || which[j] == ranked_now;
            let under = self.under.get(which[j]).cloned().flatten();
            async move {
                let under = under.as_deref();
                match (queued_here, raise) {
                    (true, Some(token)) => node.release_raising(&k, &g, token, under).await,
                    (true, None) => node.release(&k, &g, under).await,
                    // Nobody queues for the key on this node: no queue to hand off.
                    (false, raise) => node.release_unqueued(&k, &g, raise, under).await,
                }
            }
        })
        .await;
        which.iter().copied().zip(answers).collect()
    }

    /// [`everywhere`](Self::everywhere) in a task of its own, counted among the instance's
    /// clean-ups from this call on (so a `close()` right after waits for it). For a round
    /// dropped before its outcome was handled. Nothing without a runtime: each node's copy
    /// of the grant ends with its TTL.
    pub(crate) fn everywhere_later(self, until: Instant) {
        let cleanups = self.inner.cleanups.clone();
        cleanups.spawn("releasing a dropped round everywhere", self.everywhere(until));
    }

    /// Sends the release to every node, then keeps sending it in the background to the
    /// nodes that did not answer, until `until` (see [`finish_later`](Self::finish_later)).
    pub(crate) async fn everywhere(self, until: Instant) {
        let everyone: Vec<usize> = (0..self.inner.nodes.len()).collect();
        self.on(&everyone, until).await;
    }

    /// [`everywhere`](Self::everywhere) for the nodes of `which` only.
    pub(crate) async fn on(self, which: &[usize], until: Instant) {
        let silent: Vec<usize> = self
            .send(which, false)
            .await
            .into_iter()
            .filter(|(_, a)| a.is_err())
            .map(|(i, _)| i)
            .collect();
        if !silent.is_empty() {
            tracing::debug!(key = %self.key, silent = silent.len(), "release unanswered; going on in the background");
            self.finish_later(silent, until);
        }
    }

    /// In a background task: sends the release again to the nodes of `pending` that have
    /// not answered, pausing twice the per-node timeout, doubling up to 1 s, between rounds, until every one
    /// answered, `until` passed, or [`RELEASE_ROUNDS`] rounds were sent. Holds the instance
    /// only weakly between rounds: a dropped instance ends it. Nothing without a runtime.
    pub(crate) fn finish_later(self, mut pending: Vec<usize>, until: Instant) {
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        // Doubling pauses (issue 14): under overload every round of re-sends added to it.
        let mut pause = self.inner.cfg.per_node_timeout * 2;
        let ReleasePlan {
            inner,
            key,
            grant,
            primary,
            raise_to,
            under,
        } = self;
        let weak = Arc::downgrade(&inner);
        // Counted on the nodes while it runs, so `close` waits for it.
        let cleanups: Vec<_> = pending.iter().map(|&i| inner.nodes[i].cleanup()).collect();
        drop(inner);
        rt.spawn(async move {
            let _cleanups = cleanups;
            for _ in 0..RELEASE_ROUNDS {
                if pending.is_empty() || Instant::now() >= until {
                    return;
                }
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(RELEASE_PAUSE_MAX.max(pause));
                let Some(inner) = weak.upgrade() else { return };
                // The last round may have met NOSCRIPT unheard (a node that lost its
                // scripts while answers are lost): the repeat sends each script as `EVAL`
                // with its source, one command that runs answered or not. Until 8 Dec
                // 2026 a `SCRIPT LOAD` of all ten scripts went with each repeat: up to
                // 4.6 commands per grant under load (issue 14).
                let plan = ReleasePlan {
                    inner,
                    key: key.clone(),
                    grant: grant.clone(),
                    primary,
                    raise_to: raise_to.clone(),
                    under: under.clone(),
                };
                let answers = fencelock_redis::with_source(plan.send(&pending, false)).await;
                pending = answers
                    .into_iter()
                    .filter(|(_, a)| a.is_err())
                    .map(|(i, _)| i)
                    .collect();
            }
            if !pending.is_empty() {
                tracing::warn!(%key, nodes = pending.len(), "release still unconfirmed after {RELEASE_ROUNDS} rounds; the grant expires there by its TTL");
            }
        });
    }
}
