//! [`CloseGate`]: what every backend's `close()` shares — after it, no call goes on and no
//! new one starts.
//!
//! A backend keeps one gate per client (shared by its clones), passes every `try_acquire`
//! and `acquire` through [`CloseGate::pass`], and starts its `close()` with
//! [`CloseGate::close`] ([`CloseGate::shut`], a wait for any other `close()` under way,
//! then [`CloseGate::calls_ended`]), holding the [`Closing`] it returns to its end. A call shut out is dropped where it
//! stands, exactly as a caller dropping it would drop it, so each backend's cancel-safe
//! clean-up (a queue entry deleted, a grant that raced the close released) runs as it does
//! for a cancelled call; waiting for the calls to end first means those clean-ups have
//! started — and are counted by the backend — before `close()` waits for its clean-ups.

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::task::Poll;
use std::time::Duration;

use tokio::sync::Notify;

use crate::error::{LockError, Result};

/// Shuts a client's calls out once its `close()` began. See the [module](self).
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// use std::time::Duration;
/// use fencelock::closing::CloseGate;
/// use fencelock::LockError;
/// let gate = CloseGate::new();
/// assert_eq!(gate.pass(async { Ok(7) }).await.unwrap(), 7);
/// drop(gate.close(Duration::from_secs(1)).await); // held to the end of a backend's close()
/// assert!(gate.calls_ended(Duration::ZERO).await, "no call is inside");
/// assert!(!gate.shut(), "a second finds it closed");
/// assert!(matches!(gate.pass(async { Ok(7) }).await, Err(LockError::Closed)));
/// # }
/// ```
///
/// On every call's path, so kept to atomics while the gate is open (why not a `watch`
/// channel for the count: its two sends per call cost 1.5 µs, measured): a call that
/// completes on its first poll takes no lock at all; one that waits registers once for
/// the shut.
#[derive(Debug)]
pub struct CloseGate {
    closed: AtomicBool,
    /// Wakes every call waiting through the gate when it shuts.
    shut: Notify,
    /// Calls inside the gate now.
    calls: AtomicUsize,
    /// Wakes `calls_ended` when the last call leaves a shut gate.
    emptied: Notify,
    /// Held by a backend's `close()` to its end ([`Closing`]): a second `close()` at the
    /// same time waits for the first, so neither returns before the client is closed.
    closing: tokio::sync::Mutex<()>,
}

impl Default for CloseGate {
    fn default() -> Self {
        Self::new()
    }
}

impl CloseGate {
    /// An open gate.
    pub fn new() -> Self {
        CloseGate {
            closed: AtomicBool::new(false),
            shut: Notify::new(),
            calls: AtomicUsize::new(0),
            emptied: Notify::new(),
            closing: tokio::sync::Mutex::new(()),
        }
    }

    /// `true` once [`shut`](Self::shut) was called.
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }

    /// `Ok(())` while open.
    ///
    /// # Errors
    /// [`LockError::Closed`] once [`shut`](Self::shut) was called.
    pub fn check(&self) -> Result<()> {
        if self.is_closed() {
            return Err(LockError::Closed);
        }
        Ok(())
    }

    /// Closes the gate: every call inside it ends with [`LockError::Closed`] (woken at
    /// once), and every later one fails with it before it starts. Returns `true` the first
    /// time, `false` when it was closed already.
    pub fn shut(&self) -> bool {
        let first = !self.closed.swap(true, Ordering::SeqCst);
        if first {
            self.shut.notify_waiters();
        }
        first
    }

    /// Runs `call` unless the gate is shut, and ends it when the gate shuts meanwhile: the
    /// call's future is then dropped (its own cancel safety gives back whatever it made on
    /// the server) and `Err(LockError::Closed)` returned. When the call completed and the
    /// gate shut in the same instant, the shut wins: a lease the call would have returned
    /// is dropped, which releases it.
    ///
    /// # Errors
    /// [`LockError::Closed`] when the gate was shut before or during the call; else the
    /// call's own outcome.
    ///
    /// # Cancel safety
    /// As cancel safe as `call`: dropping this drops `call`.
    pub async fn pass<T, F>(&self, call: F) -> Result<T>
    where
        F: Future<Output = Result<T>>,
    {
        self.check()?;
        let _inside = Inside::enter(self);
        // Declared after `_inside`, so it is dropped first, also when this future is
        // dropped: by the time the count goes down, the call's clean-up has started.
        let call = call;
        tokio::pin!(call);
        let shut = self.shut.notified();
        tokio::pin!(shut);
        std::future::poll_fn(|cx| {
            if self.is_closed() {
                return Poll::Ready(Err(LockError::Closed));
            }
            if let Poll::Ready(outcome) = call.as_mut().poll(cx) {
                return Poll::Ready(outcome);
            }
            // Waiting: registered for the shut before the flag is read again, so a shut
            // between the two reads still wakes this call.
            shut.as_mut().enable();
            if self.is_closed() || shut.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Err(LockError::Closed));
            }
            Poll::Pending
        })
        .await
    }

    /// What a backend's `close()` does first: [`shut`](Self::shut), then waits for any
    /// other `close()` of the client still running (a second close at the same time
    /// returns only after the first is done, so that neither returns while the session is
    /// still being ended), then [`calls_ended`](Self::calls_ended) — so that the
    /// clean-ups of the calls it ended have started (and are counted by the backend)
    /// before `close()` waits for its clean-ups. Hold the returned [`Closing`] to the end
    /// of `close()`. Called again afterwards, it finds the gate shut and nothing inside.
    ///
    /// # Cancel safety
    /// Cancel safe: the gate is shut before the first await; the rest only waits (a
    /// dropped wait for the other close leaves it running).
    pub async fn close(&self, limit: Duration) -> Closing<'_> {
        self.shut();
        let turn = self.closing.lock().await;
        if !self.calls_ended(limit).await {
            tracing::warn!(?limit, "close: calls through the client still running at the bound");
        }
        Closing(turn)
    }

    /// Waits until no call is inside the gate, for at most `limit`; `true` when none is
    /// left. After [`shut`](Self::shut) the calls inside end at once (their clean-ups
    /// started), so this is short unless a call's drop blocks.
    ///
    /// # Cancel safety
    /// Cancel safe: it only waits.
    pub async fn calls_ended(&self, limit: Duration) -> bool {
        // The last call leaving tells `emptied` once the gate is shut (see `Inside`).
        crate::cleanup::until_zero(&self.calls, &self.emptied, limit).await
    }

    /// Calls inside the gate now.
    #[cfg(test)]
    fn inside(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

/// A backend's `close()` under way: while it is held, another `close()` of the client
/// waits in [`CloseGate::close`].
#[must_use = "hold it to the end of close(): a second close() waits for it"]
#[derive(Debug)]
pub struct Closing<'a>(#[allow(dead_code)] tokio::sync::MutexGuard<'a, ()>);

/// One call counted inside a gate until it is dropped.
struct Inside<'a>(&'a CloseGate);

impl<'a> Inside<'a> {
    fn enter(gate: &'a CloseGate) -> Self {
        gate.calls.fetch_add(1, Ordering::SeqCst);
        Inside(gate)
    }
}

impl Drop for Inside<'_> {
    fn drop(&mut self) {
        // The last call out of a shut gate wakes `calls_ended`; while open, nobody waits.
        if self.0.calls.fetch_sub(1, Ordering::SeqCst) == 1 && self.0.is_closed() {
            self.0.emptied.notify_waiters();
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use std::sync::atomic::AtomicUsize;
    use std::sync::Arc;

    use super::*;

    /// Counts its drops: stands for a call's cancel-safe clean-up.
    struct CleanUp(Arc<AtomicUsize>);

    impl Drop for CleanUp {
        fn drop(&mut self) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_call_waiting_when_the_gate_shuts_ends_closed_and_is_dropped() {
        let gate = Arc::new(CloseGate::new());
        let cleaned = Arc::new(AtomicUsize::new(0));
        let waiting = tokio::spawn({
            let (gate, cleaned) = (Arc::clone(&gate), Arc::clone(&cleaned));
            async move {
                gate.pass(async move {
                    let _clean_up = CleanUp(cleaned);
                    std::future::pending::<Result<()>>().await
                })
                .await
            }
        });
        // Inside the gate: counted.
        while gate.inside() == 0 {
            tokio::task::yield_now().await;
        }
        assert!(!gate.calls_ended(Duration::from_millis(10)).await, "a call is inside");
        assert!(gate.shut());
        let outcome = tokio::time::timeout(Duration::from_secs(1), waiting)
            .await
            .expect("the waiting call ended at once")
            .expect("task");
        assert!(matches!(outcome, Err(LockError::Closed)), "{outcome:?}");
        assert_eq!(cleaned.load(Ordering::SeqCst), 1, "the call was dropped");
        assert!(gate.calls_ended(Duration::ZERO).await);
    }

    #[tokio::test]
    async fn later_calls_fail_at_once_without_starting() {
        let gate = CloseGate::new();
        assert!(gate.check().is_ok());
        assert!(gate.shut());
        assert!(!gate.shut(), "shut twice: the second finds it closed");
        assert!(matches!(gate.check(), Err(LockError::Closed)));
        let started = AtomicUsize::new(0);
        let outcome = gate
            .pass(async {
                started.fetch_add(1, Ordering::SeqCst);
                Ok(())
            })
            .await;
        assert!(matches!(outcome, Err(LockError::Closed)), "{outcome:?}");
        assert_eq!(started.load(Ordering::SeqCst), 0, "the call never started");
    }

    #[tokio::test]
    async fn an_open_gate_passes_the_outcome_through() {
        let gate = CloseGate::new();
        assert_eq!(gate.pass(async { Ok(3) }).await.unwrap(), 3);
        let e = gate
            .pass(async { Err::<(), _>(LockError::invalid_input("bad")) })
            .await
            .unwrap_err();
        assert!(matches!(e, LockError::InvalidInput(_)));
        assert!(gate.calls_ended(Duration::ZERO).await, "nothing left inside");
        assert!(!gate.is_closed());
    }

    #[tokio::test]
    async fn a_dropped_call_leaves_the_gate() {
        let gate = CloseGate::new();
        let call = gate.pass(std::future::pending::<Result<()>>());
        let _ = tokio::time::timeout(Duration::from_millis(5), call).await;
        assert!(gate.calls_ended(Duration::ZERO).await);
    }
}
