//! Batching many small requests into one (for backend authors): background renewals of
//! many leases on one server share a request per window, so holding 10,000 locks costs a
//! few requests per renewal period instead of 10,000.
//!
//! A submitted item joins the open batch and waits at most its own `wait`, or until the
//! batch holds `max_batch` items; then the batch goes out through the backend's flush
//! function while the next one collects. An item whose caller stopped waiting for it
//! meanwhile (dropped its `submit`) is left out of the batch. Used by the Redis backends (one `EXTEND_MANY`
//! script per batch) and ZooKeeper (one multi-read per batch).
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> fencelock_core::Result<()> {
//! use std::sync::Arc;
//! use std::time::Duration;
//! use fencelock_core::batch::Batcher;
//! struct Server { factor: u32 } // stands for the backend's connection
//! let server = Arc::new(Server { factor: 2 });
//! let batcher: Batcher<u32, u32> = Batcher::new(100);
//! let flush = |s: Arc<Server>, items: Vec<u32>| async move { items.into_iter().map(|i| Ok(i * s.factor)).collect() };
//! let (a, b) = tokio::join!(
//!     batcher.submit(1, Duration::from_millis(5), &server, flush),
//!     batcher.submit(2, Duration::from_millis(5), &server, flush),
//! );
//! assert_eq!((a?, b?), (2, 4)); // one flush carried both
//! # Ok(()) }
//! ```

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::error::{LockError, Result};

struct Pending<T, R> {
    item: T,
    due: Instant,
    reply: oneshot::Sender<Result<R>>,
}

/// Collects items into batches and flushes each batch with one call.
pub struct Batcher<T, R> {
    queue: Mutex<Option<mpsc::UnboundedSender<Pending<T, R>>>>,
    max_batch: usize,
}

impl<T, R> std::fmt::Debug for Batcher<T, R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Batcher")
            .field("max_batch", &self.max_batch)
            .finish_non_exhaustive()
    }
}

impl<T: Send + 'static, R: Send + 'static> Batcher<T, R> {
    /// A batcher whose batches hold at most `max_batch` items (at least 1).
    pub fn new(max_batch: usize) -> Self {
        Batcher {
            queue: Mutex::new(None),
            max_batch: max_batch.max(1),
        }
    }

    /// Submits `item`, which may wait up to `wait` for others to share its batch, and
    /// returns its answer. `flush` sends one batch through `owner` (the backend's
    /// connection or session) and answers each item in order. The batching task holds
    /// `owner` weakly, so it never keeps the backend alive; it ends when the batcher is
    /// dropped, and a batch whose owner is gone fails.
    ///
    /// # Errors
    ///
    /// The item's answer from `flush`; [`LockError::Unavailable`] when the batch was
    /// dropped before it was answered (its runtime shut down); `InvalidConfig` when
    /// `owner` was dropped.
    ///
    /// # Cancel safety
    ///
    /// Dropped before its batch goes out, the item is not sent (a renewal its lease gave
    /// up on must not keep the grant alive); dropped later, the batch carries it and the
    /// answer is discarded.
    pub async fn submit<S, F, Fut>(&self, item: T, wait: Duration, owner: &Arc<S>, flush: F) -> Result<R>
    where
        S: Send + Sync + 'static,
        F: Fn(Arc<S>, Vec<T>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Vec<Result<R>>> + Send + 'static,
    {
        let (reply, answer) = oneshot::channel();
        let pending = Pending {
            item,
            due: Instant::now() + wait,
            reply,
        };
        {
            let mut queue = self.queue.lock().unwrap_or_else(|p| p.into_inner());
            let unsent = match queue.as_ref() {
                Some(tx) => tx.send(pending).err().map(|mpsc::error::SendError(p)| p),
                None => Some(pending),
            };
            // No task yet, or it ended with the runtime it ran on: start one.
            if let Some(p) = unsent {
                let (tx, rx) = mpsc::unbounded_channel();
                let owner = Arc::downgrade(owner);
                let send = move |items: Vec<T>| {
                    let n = items.len();
                    let sent = owner.upgrade().map(|o| flush(o, items));
                    async move {
                        match sent {
                            Some(sent) => sent.await,
                            None => spread_error(&LockError::invalid_config("the backend was dropped"), n),
                        }
                    }
                };
                tokio::spawn(batching(rx, self.max_batch, send));
                // The receiver is alive: it was just moved into the task.
                let _ = tx.send(p);
                *queue = Some(tx);
            }
        }
        answer.await.unwrap_or_else(|_| {
            Err(LockError::Unavailable {
                message: "a batched request was dropped before it was answered".into(),
                source: None,
            })
        })
    }
}

/// Collects items into batches and flushes each from its own task, until the batcher is
/// dropped.
async fn batching<T, R, F, Fut>(mut rx: mpsc::UnboundedReceiver<Pending<T, R>>, max_batch: usize, flush: F)
where
    T: Send + 'static,
    R: Send + 'static,
    F: Fn(Vec<T>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Vec<Result<R>>> + Send + 'static,
{
    while let Some(first) = rx.recv().await {
        let mut flush_at = first.due;
        let mut batch = vec![first];
        while batch.len() < max_batch {
            tokio::select! {
                biased;
                next = rx.recv() => match next {
                    Some(p) => {
                        flush_at = flush_at.min(p.due);
                        batch.push(p);
                    }
                    None => break,
                },
                _ = tokio::time::sleep_until(flush_at) => break,
            }
        }
        // An item whose caller stopped waiting is not sent: a renewal its lease gave up
        // on (the validity ran out, the lease was reported lost) would otherwise still
        // reach the server and keep the lost lease's grant alive for up to one more TTL.
        batch.retain(|p| !p.reply.is_closed());
        if batch.is_empty() {
            continue;
        }
        let (items, replies): (Vec<T>, Vec<_>) = batch.into_iter().map(|p| (p.item, p.reply)).unzip();
        let sent = flush(items);
        // Answered from its own task, so the next batch collects meanwhile.
        tokio::spawn(async move {
            let n = replies.len();
            let mut answers = sent.await;
            if answers.len() != n {
                let e = LockError::Backend {
                    backend: "batch",
                    message: format!("a batch of {n} was answered with {} results", answers.len()),
                    source: None,
                    temporary: false,
                };
                answers = spread_error(&e, n);
            }
            for (reply, answer) in replies.into_iter().zip(answers) {
                let _ = reply.send(answer);
            }
        });
    }
}

/// One error for each of `n` items of a batch that failed as a whole: the same variant
/// (`Unavailable`, `Backend` with its backend, `InvalidConfig`; anything else becomes a
/// `Backend` error) and message.
pub fn spread_error<R>(e: &LockError, n: usize) -> Vec<Result<R>> {
    // Without the kind's own words: each item's error is of the same kind and says them.
    let message = e.detail();
    let one = || match e {
        LockError::Unavailable { .. } => LockError::Unavailable {
            message: message.clone(),
            source: None,
        },
        LockError::InvalidConfig { .. } => LockError::invalid_config(message.clone()),
        LockError::Backend { backend, temporary, .. } => LockError::Backend {
            backend,
            message: message.clone(),
            source: None,
            temporary: *temporary,
        },
        _ => LockError::Backend {
            backend: "batch",
            message: message.clone(),
            source: None,
            temporary: e.is_temporary(),
        },
    };
    (0..n).map(|_| Err(one())).collect()
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    use super::*;
    use crate::error::one_line;

    #[tokio::test(start_paused = true)]
    async fn items_within_the_window_share_one_flush_and_a_full_batch_goes_at_once() {
        let batcher: Arc<Batcher<usize, usize>> = Arc::new(Batcher::new(3));
        // The owner counts the flushes.
        let flushes = Arc::new(AtomicUsize::new(0));
        let flush = |flushes: Arc<AtomicUsize>, items: Vec<usize>| {
            flushes.fetch_add(1, Ordering::SeqCst);
            async move { items.into_iter().map(|i| Ok(i + 100)).collect() }
        };
        let mut tasks = Vec::new();
        for i in 0..5 {
            let (b, owner) = (batcher.clone(), flushes.clone());
            tasks.push(tokio::spawn(async move {
                b.submit(i, Duration::from_secs(1), &owner, flush).await
            }));
        }
        for (i, t) in tasks.into_iter().enumerate() {
            assert_eq!(t.await.unwrap().unwrap(), i + 100);
        }
        // 3 (full batch) + 2 (after the window).
        assert_eq!(flushes.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn a_spread_error_keeps_kind_backend_and_message() {
        let temporary = LockError::Unavailable {
            message: "down".into(),
            source: None,
        };
        let spread: Vec<Result<()>> = spread_error(&temporary, 3);
        assert_eq!(spread.len(), 3);
        assert!(spread.iter().all(|r| r
            .as_ref()
            .is_err_and(|e| e.is_temporary() && e.to_string().contains("down"))));
        let backend = LockError::Backend {
            backend: "redis",
            message: "script failed".into(),
            source: None,
            temporary: false,
        };
        let spread: Vec<Result<()>> = spread_error(&backend, 1);
        assert!(matches!(&spread[0], Err(LockError::Backend { backend: "redis", .. })));
    }

    /// Each item's error says its kind once, with the batch error's sources: a new
    /// user's trial read "… failed: backend unavailable: backend unavailable: redis
    /// unreachable: batched renewal script …: timed out" in a lost lease's reason. Failed
    /// before: the kind's words came twice.
    #[test]
    fn a_spread_error_says_its_kind_once() {
        let cases = [
            LockError::Unavailable {
                message: "redis unreachable: renewal".into(),
                source: Some(Box::new(std::io::Error::other("timed out"))),
            },
            LockError::invalid_config("bad option"),
            LockError::Backend {
                backend: "redis",
                message: "script failed".into(),
                source: None,
                temporary: true,
            },
        ];
        for e in &cases {
            let spread: Vec<Result<()>> = spread_error(e, 1);
            let Err(item) = &spread[0] else {
                panic!("an item succeeded")
            };
            assert_eq!(one_line(item), one_line(e), "{e:?}");
        }
    }

    /// An item whose caller stopped waiting before its batch went out — a renewal the
    /// lease gave up on when its validity ran out (the lease is reported lost) — is not
    /// sent: sent, it could keep a lost lease's grant alive on the server for up to one
    /// more TTL, blocking the key for nobody. Failed before: 2 items were flushed.
    #[tokio::test(start_paused = true)]
    async fn an_item_whose_caller_gave_up_is_not_flushed() {
        let batcher: Batcher<u32, u32> = Batcher::new(10);
        // The owner counts the items handed to flush.
        let flushed = Arc::new(AtomicUsize::new(0));
        let flush = |flushed: Arc<AtomicUsize>, items: Vec<u32>| {
            flushed.fetch_add(items.len(), Ordering::SeqCst);
            async move { items.into_iter().map(Ok).collect() }
        };
        let wait = Duration::from_millis(50);
        let gave_up = tokio::time::timeout(Duration::from_millis(10), batcher.submit(1, wait, &flushed, flush)).await;
        assert!(gave_up.is_err(), "answered before its window ended");
        // Joins the same batch; answered, so that batch has gone out.
        assert_eq!(batcher.submit(2, wait, &flushed, flush).await.unwrap(), 2);
        assert_eq!(
            flushed.load(Ordering::SeqCst),
            1,
            "items flushed: the one given up on was sent"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_wrong_count_of_answers_fails_every_item() {
        let batcher: Batcher<u8, u8> = Batcher::new(10);
        let owner = Arc::new(());
        let flush = |_: Arc<()>, _items: Vec<u8>| async move { vec![Ok(1)] };
        let (a, b) = tokio::join!(
            batcher.submit(1, Duration::from_millis(5), &owner, flush),
            batcher.submit(2, Duration::from_millis(5), &owner, flush)
        );
        assert!(a.unwrap_err().to_string().contains("answered with 1 results"));
        assert!(b.is_err());
    }
}
