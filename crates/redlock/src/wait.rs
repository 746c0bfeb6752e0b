//! Waiting and contention: one `acquire` attempt of [`RedlockLock`] (subscribe to the
//! key's release channels, then wait for a message or the algorithm's random delay), the
//! primary node a contended key asks first, and the memory of which keys were busy.

use std::collections::HashMap;
use std::time::Duration;

use fencelock_core::waiting::{jitter, Attempt, WakeFuture};
use fencelock_core::{LockOptions, Result};
use fencelock_redis::NodeSubscription;
use tokio::time::Instant;

use crate::lock::{RedlockLock, Round};
use crate::quorum::fan_out;

/// How long a key counts as contended after it was last found busy.
const CONTENDED_FOR: Duration = Duration::from_secs(1);
/// The most keys remembered as contended (older ones are forgotten first).
const CONTENDED_KEYS: usize = 1024;

/// Keys this instance recently found busy, and when: their next acquires ask the primary
/// first from the start (see `RedlockLock::round`).
#[derive(Debug, Default)]
pub(crate) struct Contention {
    busy: std::sync::Mutex<HashMap<String, Instant>>,
}

impl Contention {
    pub(crate) fn recently_busy(&self, key: &str) -> bool {
        let busy = self.busy.lock().unwrap_or_else(|p| p.into_inner());
        busy.get(key).is_some_and(|t| t.elapsed() < CONTENDED_FOR)
    }

    pub(crate) fn found_busy(&self, key: &str) {
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

/// The subscriptions of one `acquire` (one per node; `None` where subscribing failed),
/// made on its first busy answer.
pub(crate) type Subscriptions = tokio::sync::Mutex<Option<Vec<Option<NodeSubscription>>>>;

impl RedlockLock {
    pub(crate) async fn attempt(&self, key: &str, opts: &LockOptions, subs: &Subscriptions) -> Result<Attempt> {
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
        let contended = subs.is_some() || self.inner.busy.recently_busy(key);
        match self.round(key, opts, contended).await? {
            Round::Granted(lease) => Ok(Attempt::Acquired(lease)),
            Round::Busy(_) if subs.is_none() => {
                self.inner.busy.found_busy(key);
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
                self.inner.busy.found_busy(key);
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
pub(crate) fn primary(key: &str, nodes: usize) -> usize {
    let hash = key.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    (hash % nodes.max(1) as u64) as usize
}

/// Completes when any of the futures does.
pub(crate) fn any_of(mut futs: Vec<WakeFuture>) -> WakeFuture {
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
