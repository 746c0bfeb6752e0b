//! Batched auto-renewals: the background renewals of every lease on one node share one
//! [`EXTEND_MANY`](crate::scripts) script per window, so holding 10,000 locks costs a few
//! requests per renewal period instead of 10,000.
//!
//! A renewal joins the open batch and waits at most `renew_window` (capped at a tenth of
//! its TTL, so a short lease is not delayed by much of its own validity) or until the batch
//! holds [`MAX_BATCH`] grants; then the batch goes out as one script while the next one
//! collects. The lease counts the renewed validity from the moment it asked, before the
//! wait, so waiting only ever shortens what the holder believes, never lengthens it.
//! Explicit `Lease::extend` calls do not come here: they go out at once.

use std::sync::{Mutex, Weak};
use std::time::Duration;

use fencelock_core::{LockError, Result};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::node::{NodeInner, RedisNode};

/// The most grants one script renews: keeps each script's time on the server (one
/// `GET` + `PEXPIRE` per grant, about a microsecond each) well under a millisecond.
pub(crate) const MAX_BATCH: usize = 500;

/// One renewal waiting for its batch.
pub(crate) struct Renewal {
    /// The full Redis key of the lock.
    pub lock_key: String,
    pub grant: String,
    pub ttl_ms: u64,
    /// When the batch holding it must go out at the latest.
    pub due: Instant,
    pub reply: oneshot::Sender<Result<bool>>,
}

/// The queue into the node's batching task, started on the first renewal.
#[derive(Default)]
pub(crate) struct Renewals {
    queue: Mutex<Option<mpsc::UnboundedSender<Renewal>>>,
}

impl Renewals {
    /// Queues a renewal of `grant` on `lock_key` and waits for its batch's answer: `true`
    /// when extended, `false` when the key no longer holds the grant.
    pub(crate) async fn renew(
        &self,
        node: &RedisNode,
        window: Duration,
        lock_key: String,
        grant: &str,
        ttl: Duration,
    ) -> Result<bool> {
        let (reply, answer) = oneshot::channel();
        let mut renewal = Renewal {
            lock_key,
            grant: grant.to_owned(),
            ttl_ms: ttl.as_millis() as u64,
            due: Instant::now() + window.min(ttl / 10),
            reply,
        };
        {
            let mut queue = self.queue.lock().unwrap_or_else(|p| p.into_inner());
            let sent = match queue.as_ref() {
                Some(tx) => match tx.send(renewal) {
                    Ok(()) => None,
                    // The task ended with the runtime it ran on: start another below.
                    Err(mpsc::error::SendError(r)) => Some(r),
                },
                None => Some(renewal),
            };
            if let Some(r) = sent {
                renewal = r;
                let (tx, rx) = mpsc::unbounded_channel();
                tokio::spawn(batching(node.downgrade(), rx));
                // The receiver is alive: it was just made and moved into the task.
                let _ = tx.send(renewal);
                *queue = Some(tx);
            }
        }
        answer.await.map_err(|_| LockError::Unavailable {
            message: format!("redis renewal on {} was dropped before it was sent", node.server()),
            source: None,
        })?
    }
}

/// Collects renewals into batches and sends each as one script, until the node is gone.
async fn batching(node: Weak<NodeInner>, mut rx: mpsc::UnboundedReceiver<Renewal>) {
    while let Some(first) = rx.recv().await {
        let mut flush_at = first.due;
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            tokio::select! {
                biased;
                next = rx.recv() => match next {
                    Some(r) => {
                        flush_at = flush_at.min(r.due);
                        batch.push(r);
                    }
                    None => break,
                },
                _ = tokio::time::sleep_until(flush_at) => break,
            }
        }
        let Some(node) = RedisNode::upgrade(&node) else { return };
        // Sent from its own task, so the next batch collects meanwhile.
        tokio::spawn(async move { node.extend_batch(batch).await });
    }
}
