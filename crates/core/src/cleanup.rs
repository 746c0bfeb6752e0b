//! [`Cleanups`]: the background clean-ups of one client — releases of dropped leases,
//! follow-ups of requests whose answer was lost, abandoned queue entries — counted from
//! the moment each is decided, so that its `close()` can wait for them (bounded).
//!
//! A clean-up is counted by [`Cleanups::start`], called synchronously where the clean-up
//! is decided (in a `Drop`, before its task is spawned), and stops counting when the
//! [`CleanupGuard`] it returns is dropped — moved into the task, at the task's end, or
//! with the task when it is dropped unpolled (a runtime shutting down), so `close()`
//! never waits for work that will not run. Counted only once its task first ran, a
//! clean-up would be missed by a `close()` called right after the drop, which would
//! return with the lock still held to its TTL (the file backend did, one time in five).
//!
//! [`LeaseOps::cleanup`](crate::LeaseOps::cleanup) is how a [`Lease`](crate::Lease)
//! dropped unreleased counts its background release among its backend's clean-ups.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! use std::time::Duration;
//! use fencelock::cleanup::Cleanups;
//! let cleanups = Cleanups::new();
//! let counted = cleanups.start(); // where the clean-up is decided, before its task runs
//! assert!(!cleanups.idle(Duration::from_millis(1)).await);
//! tokio::spawn(async move {
//!     let _counted = counted; // … the clean-up's work …
//! });
//! assert!(cleanups.idle(Duration::from_secs(5)).await);
//! # }
//! ```

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;

/// The background clean-ups of one client still under way. Cheap to clone: clones share
/// one count. The count lives apart from the client: a clean-up does not keep it alive.
///
/// On the path of every release (a backend counts its releases here), so kept to an
/// atomic and a `Notify` that is told only when the count drops to zero: a `watch`
/// channel, as some backends used before, locks its notifiers on every send, waited on
/// or not — 4 % of a Redis release's client-side instructions (callgrind, `fencelock
/// bench`'s uncontended cycle).
#[derive(Clone, Default)]
pub struct Cleanups(Arc<Count>);

#[derive(Default)]
struct Count {
    running: AtomicUsize,
    /// Told when `running` drops to 0.
    none_left: Notify,
}

impl std::fmt::Debug for Cleanups {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cleanups").field("running", &self.running()).finish()
    }
}

impl Cleanups {
    /// No clean-up under way.
    pub fn new() -> Self {
        Self::default()
    }

    /// Counts one clean-up from now until the returned guard is dropped. Call it where the
    /// clean-up is decided, before its task is spawned, and move the guard into the task.
    pub fn start(&self) -> CleanupGuard {
        self.0.running.fetch_add(1, Ordering::AcqRel);
        CleanupGuard(Arc::clone(&self.0))
    }

    /// Runs `work` in a task of its own on the current tokio runtime, counted from this
    /// call until it ends (or its task is dropped unpolled). Without a runtime (a drop
    /// outside tokio) nothing can run it: logs `what` and returns `false` — the TTL or the
    /// session ends what it would have removed.
    pub fn spawn(&self, what: &'static str, work: impl Future<Output = ()> + Send + 'static) -> bool {
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            tracing::warn!(what, "no tokio runtime: left to the TTL or the session to end");
            return false;
        };
        let counted = self.start();
        rt.spawn(async move {
            let _counted = counted;
            work.await;
        });
        true
    }

    /// How many clean-ups are under way now.
    pub fn running(&self) -> usize {
        self.0.running.load(Ordering::Acquire)
    }

    /// Waits until no clean-up is under way, for at most `bound`; `true` when none is
    /// left, `false` when some still ran at the bound. Clean-ups started while it waits
    /// are waited for too, until the count first reaches zero.
    ///
    /// # Cancel safety
    /// Cancel safe: it only waits.
    pub async fn idle(&self, bound: Duration) -> bool {
        until_zero(&self.0.running, &self.0.none_left, bound).await
    }
}

/// Waits until `count` is 0, for at most `bound`; `true` when it is. `zero` must be told
/// (`notify_waiters`) whenever `count` drops to 0 while it may be waited on. Shared by
/// [`Cleanups::idle`] and the close gate's wait for the calls inside it.
///
/// # Cancel safety
/// Cancel safe: it only waits.
pub(crate) async fn until_zero(count: &AtomicUsize, zero: &Notify, bound: Duration) -> bool {
    let none_left = async {
        // Bounded by the timeout below; each turn is one wake-up by a count at zero.
        loop {
            // Registered before the count is read: a drop to 0 in between still wakes it.
            let told = zero.notified();
            tokio::pin!(told);
            told.as_mut().enable();
            if count.load(Ordering::SeqCst) == 0 {
                return;
            }
            told.await;
        }
    };
    tokio::time::timeout(bound, none_left).await.is_ok()
}

/// One clean-up counted by [`Cleanups::start`]; dropping it ends the count.
#[must_use = "the clean-up is counted only while the guard lives: move it into the clean-up's task"]
pub struct CleanupGuard(Arc<Count>);

impl Drop for CleanupGuard {
    fn drop(&mut self) {
        if self.0.running.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.none_left.notify_waiters();
        }
    }
}

impl std::fmt::Debug for CleanupGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CleanupGuard").finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;

    #[tokio::test]
    async fn idle_waits_for_every_clean_up_and_no_longer() {
        let cleanups = Cleanups::default();
        assert!(cleanups.idle(Duration::from_millis(1)).await, "none running");
        let (a, b) = (cleanups.start(), cleanups.start());
        assert_eq!(cleanups.running(), 2);
        assert!(!cleanups.idle(Duration::from_millis(20)).await, "two running");
        drop(a);
        assert!(!cleanups.idle(Duration::from_millis(20)).await, "one still running");
        let waiting = tokio::spawn({
            let cleanups = cleanups.clone();
            async move { cleanups.idle(Duration::from_secs(10)).await }
        });
        tokio::task::yield_now().await;
        drop(b);
        assert!(waiting.await.unwrap(), "woken by the last one ending");
        assert!(cleanups.idle(Duration::from_millis(1)).await);
    }

    /// The last clean-up ends on another thread just as `idle` starts: a wake-up lost in
    /// between shows as `false` at the bound. Checked against the lost-wake-up order (the
    /// count read before the notification is registered): it failed within 1–2 s, i.e.
    /// well inside these 8,000 rounds (about 4 s).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn idle_sees_a_last_clean_up_that_ends_as_it_starts() {
        use std::sync::atomic::AtomicBool;
        for round in 0..8_000u32 {
            let cleanups = Cleanups::default();
            let guard = cleanups.start();
            let (ready, go) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicBool::new(false)));
            let dropper = std::thread::spawn({
                let (ready, go) = (Arc::clone(&ready), Arc::clone(&go));
                move || {
                    ready.store(true, Ordering::Release);
                    while !go.load(Ordering::Acquire) {
                        std::hint::spin_loop();
                    }
                    // A varying head start for `idle`, so every interleaving comes up.
                    for _ in 0..round % 3_000 {
                        std::hint::spin_loop();
                    }
                    drop(guard);
                }
            });
            // Both sides spinning when `go` flips: the thread's start-up is not in the race.
            while !ready.load(Ordering::Acquire) {
                std::hint::spin_loop();
            }
            go.store(true, Ordering::Release);
            assert!(cleanups.idle(Duration::from_millis(300)).await, "round {round}");
            dropper.join().unwrap();
        }
    }

    /// A spawned clean-up counts from the call, before its task first runs, and until its
    /// work ended.
    #[tokio::test(flavor = "current_thread")]
    async fn a_spawned_clean_up_counts_before_its_task_runs() {
        let cleanups = Cleanups::new();
        let (go, wait) = tokio::sync::oneshot::channel::<()>();
        assert!(cleanups.spawn("test", async move {
            let _ = wait.await;
        }));
        // The current-thread runtime has not run the task yet.
        assert_eq!(cleanups.running(), 1, "not counted before its task ran");
        assert!(!cleanups.idle(Duration::from_millis(20)).await, "waiting for `go`");
        go.send(()).unwrap();
        assert!(cleanups.idle(Duration::from_secs(5)).await, "still counted when done");
    }

    /// A clean-up whose task is dropped unpolled (a runtime shutting down) stops counting:
    /// `close` never waits for work that will not run.
    #[test]
    fn a_clean_up_dropped_unpolled_is_not_waited_for() {
        let cleanups = Cleanups::new();
        let counted = cleanups.start();
        let never_run = async move {
            let _counted = counted;
        };
        drop(never_run);
        assert_eq!(cleanups.running(), 0);
    }

    #[test]
    fn spawn_without_a_runtime_runs_nothing_and_counts_nothing() {
        let cleanups = Cleanups::new();
        assert!(!cleanups.spawn("test", async {}));
        assert_eq!(cleanups.running(), 0);
    }
}
