//! Waiting and contention: one `acquire` attempt of [`RedlockLock`] (queued on the key's
//! primary node, woken by the hand-off addressed to it), the primary node a contended key
//! asks first, and the memory of which keys were busy.

use std::time::Duration;

use fencelock_core::waiting::{jitter, Attempt, CancelGuard};
use fencelock_core::{GrantId, LockOptions, Result};
pub(crate) use fencelock_redis::Contention;
use fencelock_redis::{NodeGrant, NodeSubscription, RedisNode, Turn, HANDOFF_CLAIM};
use tokio::time::Instant;

use crate::lock::{grant_on, RedlockLock, Round};
use crate::quorum::{late, Bound};

/// One `acquire` queued on the key's primary node: registered on the instance's channel
/// there, its grant id (the same for every turn until a turn whose grant is undone spends
/// it) and its queue entry. Dropped before it
/// was granted (timed out, cancelled, failed), it leaves the queue in the background.
pub(crate) struct Queued {
    primary: RedisNode,
    key: String,
    ttl: Duration,
    sub: NodeSubscription,
    grant: GrantId,
    entry: String,
    done: bool,
}

impl Drop for Queued {
    fn drop(&mut self) {
        if !self.done {
            self.primary
                .leave_later(&self.key, self.grant.as_str(), &self.entry, self.ttl);
        }
    }
}

/// The waiting state of one `acquire`: `None` until its first busy round.
pub(crate) type Waiting = tokio::sync::Mutex<Option<Queued>>;

/// Slack after a reservation's claim window before the next waiter takes over.
const NEXT_MARGIN: Duration = Duration::from_millis(5);

impl RedlockLock {
    /// One attempt of `acquire`. The first is a plain round of the algorithm; a busy answer
    /// queues this acquire on the key's primary node (the FIFO queue of `fencelock-redis`)
    /// and later attempts are its turns: when a release hands the primary's lock to it
    /// (`g`), it claims it there and asks the other nodes in the same round.
    pub(crate) async fn attempt(&self, key: &str, opts: &LockOptions, waiting: &Waiting) -> Result<Attempt> {
        let mut state = waiting.lock().await;
        if state.as_ref().is_some_and(|q| q.done) {
            // This wait's grant was handed out and came back with no validity left: it is
            // being released in the background under its grant id, so that id is spent
            // (see `spent` below) — wait again as a new waiter.
            *state = None;
        }
        let per_node = self.inner.cfg.per_node_timeout;
        let first_turn = state.is_none();
        // A place in flight before anything is sent (`admission.rs`); a turn that claims
        // a lock handed to us takes one from its own pool, below.
        let mut permit = None;
        let q = match &mut *state {
            Some(q) => q,
            slot @ None => {
                permit = Some(self.inner.admission.round().await);
                let contended = self.inner.busy.recently_busy(key);
                let mut shortest = None;
                if !contended {
                    match self.round(key, opts).await? {
                        Round::Granted(lease) => return Ok(Attempt::Acquired(lease)),
                        Round::Busy(s) => shortest = s,
                    }
                }
                // Found busy (now, or by this instance within the last second): queue on
                // the primary at once — its turn grants a free key too, and asks the other
                // nodes only then — rather than a round whose answer would be "busy".
                self.inner.busy.found_busy(key);
                let primary = self.inner.nodes[primary(key, &self.inner.nodes)].clone();
                let grant = GrantId::random();
                match tokio::time::timeout(per_node, primary.wait_as(grant.as_str())).await {
                    Ok(Ok(sub)) => slot.insert(Queued {
                        primary,
                        key: key.to_owned(),
                        ttl: opts.ttl(),
                        sub,
                        grant,
                        entry: String::new(),
                        done: false,
                    }),
                    // No queue without the primary: a plain round (the other nodes can
                    // still make a quorum), else the algorithm's random delay.
                    _ => {
                        if contended {
                            if let Round::Granted(lease) = self.round(key, opts).await? {
                                return Ok(Attempt::Acquired(lease));
                            }
                        }
                        return Ok(Attempt::Busy {
                            wake: None,
                            retry_at: Some(Instant::now() + self.random_delay(shortest)),
                        });
                    }
                }
            }
        };
        let _ = tokio::time::timeout(per_node, q.sub.ensure()).await;
        // Registered before the messages are read: one arriving in between still wakes us.
        let wake = q.sub.notified();
        let (turn, next) = q.sub.take_messages();
        if next && !turn && !first_turn {
            return Ok(Attempt::Busy {
                wake: Some(wake),
                retry_at: Some(Instant::now() + HANDOFF_CLAIM + NEXT_MARGIN),
            });
        }
        if permit.is_none() {
            permit = Some(if turn {
                self.inner.admission.claim().await
            } else {
                self.inner.admission.round().await
            });
        }
        let _permit = permit;
        let cfg = &self.inner.cfg;
        // Armed before the first request: dropped anywhere in the round, the grant is
        // released on every node in the background (the queue's leave frees the primary
        // too; both are idempotent).
        let undo = {
            let plan = crate::grant::ReleasePlan {
                inner: std::sync::Arc::clone(&self.inner),
                key: key.to_owned(),
                grant: q.grant.to_string(),
                raise_to: None,
            };
            let ttl = opts.ttl();
            CancelGuard::new(move || plan.everywhere_later(Instant::now() + ttl))
        };
        let p = primary(key, &self.inner.nodes);
        let others: Vec<RedisNode> = (self.inner.nodes.iter().enumerate())
            .filter(|(i, _)| *i != p)
            .map(|(_, n)| n.clone())
            .collect();
        // The primary's vote counts with quorum − 1 of the others'; a late answer still
        // counts within the late bound (`quorum.rs`).
        let rest_bound = Bound::quorum(per_node, cfg.quorum().saturating_sub(1));
        let start = Instant::now();
        let asked = tokio::time::timeout(
            late(per_node),
            q.primary.wait_turn(
                key,
                q.grant.as_str(),
                opts.ttl(),
                &q.entry,
                opts.wait(),
                cfg.restart_delay,
            ),
        );
        // Handed the lock (`g`): the previous holder's release, sent to every node at
        // once, has freed the others too — ask them in the same round trip as the claim.
        // Otherwise (queueing, a fallback re-check) only the primary is asked.
        let (first, early) = if turn {
            let rest = grant_on(&others, rest_bound, key, &q.grant, opts.ttl(), cfg.restart_delay);
            let (first, rest) = tokio::join!(asked, rest);
            (first, Some(rest))
        } else {
            (asked.await, None)
        };
        // Set when this turn's grant was (or may have been) made on some node and is being
        // undone: the grant id is then never asked for again (see below).
        let mut spent = false;
        let retry = match first {
            Ok(Ok(Turn::Granted(token))) => {
                // The primary's vote, counted from `start`, with the others'.
                let mut answers = match early {
                    Some(rest) => rest,
                    None => grant_on(&others, rest_bound, key, &q.grant, opts.ttl(), cfg.restart_delay).await,
                };
                answers.insert(p, Ok(NodeGrant::Granted(token)));
                let round = self.conclude(key, opts, q.grant.clone(), &answers, start).await;
                undo.disarm();
                match round {
                    Ok(Round::Granted(lease)) => {
                        q.done = true;
                        return Ok(Attempt::Acquired(lease));
                    }
                    // Undone everywhere (the primary handed the lock on to the next
                    // waiter): queue again at once. No random delay — only this waiter
                    // had the turn, so there is no herd to spread out, and a delay here
                    // was the longest wait of the quick bench (~190 ms).
                    Ok(Round::Busy(_)) => {
                        spent = true;
                        Duration::ZERO
                    }
                    // Fewer than a quorum answered: undone too, and the undo of the silent
                    // nodes goes on in the background — spent like a busy round's id.
                    Err(e) => {
                        *state = None;
                        return Err(e);
                    }
                }
            }
            Ok(Ok(Turn::Queued { pttl, entry, .. })) => {
                q.entry = entry;
                let granted_elsewhere = early
                    .as_ref()
                    .is_some_and(|rest| rest.iter().any(|a| !matches!(a, Ok(NodeGrant::Busy(_)))));
                if granted_elsewhere {
                    drop(undo); // the turn was lost: give back what the others granted
                    spent = true;
                } else {
                    undo.disarm(); // granted nowhere
                }
                // A peer library's release sends no message: with a peer layout the
                // re-check is the hand-off path, so it is not stretched.
                let layout = q.primary.config().layout;
                let factor = if layout.is_peer() { 1 } else { QUEUED_POLL_FACTOR };
                let fallback = jitter(cfg.retry_delay * factor);
                pttl.map_or(fallback, |ms| fallback.min(Duration::from_millis(ms + 1)))
            }
            // The primary is silent or failing: a plain round, so the other nodes can
            // still grant; the waiter leaves the queue and queues afresh next time.
            _ => {
                drop(undo); // the primary's answer is unknown: release our grant everywhere
                *state = None; // spent (see below): leave the queue, queue afresh next turn
                return match self.round(key, opts).await? {
                    Round::Granted(lease) => Ok(Attempt::Acquired(lease)),
                    Round::Busy(shortest) => Ok(Attempt::Busy {
                        wake: Some(wake),
                        retry_at: Some(Instant::now() + self.random_delay(shortest)),
                    }),
                };
            }
        };
        if spent {
            // Issue 14: the undo of a grant goes on in the background (a silent node's
            // release, a lost answer's) for up to a TTL; were the same grant id asked for
            // again, a late undo could delete the *next* turn's grant on a node — a holder
            // losing its lock unheard (seen as releases answering "not held" with many
            // keys). So the waiter leaves the queue under this id (the drop of `Queued`)
            // and queues again at once under a new one: it had lost its place anyway.
            *state = None;
            return Ok(Attempt::Busy {
                wake: None,
                retry_at: Some(Instant::now()),
            });
        }
        Ok(Attempt::Busy {
            wake: Some(wake),
            retry_at: Some(Instant::now() + retry),
        })
    }

    /// The algorithm's random delay, so contenders that split the vote do not collide
    /// again; never longer than the shortest holder TTL seen.
    fn random_delay(&self, shortest: Option<Duration>) -> Duration {
        let retry = self.inner.cfg.retry_delay;
        jitter(shortest.map_or(retry, |s| s.min(retry)).max(Duration::from_millis(1)))
    }
}

/// How much later than `retry_delay` a queued waiter re-checks without a message (the
/// hand-off is addressed to it; the poll only covers a lost message).
const QUEUED_POLL_FACTOR: u32 = 20;

/// The node a contended key queues on (its primary): the node whose address ranks highest
/// for the key (rendezvous hashing: FNV-1a of key and `host:port`), so keys spread over
/// the nodes and every client that names the same addresses picks the same node for a
/// key, in whatever order its URL lists them. Only the primary can hold a queue for the
/// key; releases elsewhere skip the queue ([`RedisNode::release_unqueued`]).
pub(crate) fn primary(key: &str, nodes: &[RedisNode]) -> usize {
    let fnv = |h: u64, bytes: &[u8]| {
        bytes
            .iter()
            .fold(h, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3))
    };
    let of_key = fnv(0xcbf2_9ce4_8422_2325, key.as_bytes());
    (0..nodes.len())
        .max_by_key(|&i| {
            (
                fnv(fnv(of_key, b"\0"), nodes[i].server().as_bytes()),
                std::cmp::Reverse(i),
            )
        })
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use fencelock_redis::RedisConfig;

    fn nodes(ports: &[u16]) -> Vec<RedisNode> {
        ports
            .iter()
            .map(|p| RedisNode::lazy(RedisConfig::from_url(&format!("redis://127.0.0.1:{p}")).unwrap()).unwrap())
            .collect()
    }

    #[test]
    fn the_primary_does_not_depend_on_the_order_of_the_nodes() {
        let a = nodes(&[7001, 7002, 7003, 7004, 7005]);
        let b = nodes(&[7004, 7002, 7005, 7001, 7003]);
        let mut used = std::collections::HashSet::new();
        for i in 0..200 {
            let key = format!("key-{i}");
            let (pa, pb) = (primary(&key, &a), primary(&key, &b));
            assert_eq!(a[pa].server(), b[pb].server(), "{key}");
            used.insert(pa);
        }
        assert_eq!(used.len(), 5, "keys spread over every node");
    }
}
