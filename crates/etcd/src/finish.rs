//! Work that finishes even when its caller gives up, without a task per call.
//!
//! [`fencelock_core::waiting::detached`] spawns a task for every call and awaits it: two
//! task hand-overs (and, on a multi-threaded runtime, usually a wake-up of another worker
//! thread) on every acquire, measured at issue 14 as part of etcd's uncontended overhead.
//! [`finish_on_drop`] polls the work in the caller's own task instead, and only when the
//! caller drops it before it completed does it move the work, as it stands, into a task of
//! its own, which runs it to the end. The work's outcome is then dropped there, exactly as
//! `detached` drops it inside its task — so a queue entry made after the caller is gone is
//! undone by its own `Drop`, as before. That task is one of the instance's [`Cleanups`],
//! so `close()` waits for it: the clean-ups its outcome's drop starts are counted before
//! it ends. Uncounted, a grant of an own lease still in flight when `close()` ended a wait
//! could be revoked only after `close()` had returned (and the process exited): left to
//! its TTL.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use fencelock_core::cleanup::Cleanups;

/// Runs `work` in the caller's task; if the returned future is dropped before `work`
/// completed, `work` is finished in a background task on the current runtime, counted
/// among `cleanups` until it ends (without a runtime, it is dropped: the session or the
/// TTL ends what it made).
pub(crate) fn finish_on_drop<F>(cleanups: &Cleanups, work: F) -> FinishOnDrop<F>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    FinishOnDrop {
        work: Some(Box::pin(work)),
        cleanups: cleanups.clone(),
    }
}

/// See [`finish_on_drop`].
pub(crate) struct FinishOnDrop<F: Future + Send + 'static>
where
    F::Output: Send + 'static,
{
    work: Option<Pin<Box<F>>>,
    cleanups: Cleanups,
}

impl<F> Future for FinishOnDrop<F>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        // Polled again after it completed: nothing left to do, and nothing will wake it.
        // Out of `self` while polled: if the work panics, `Drop` finds nothing to finish
        // (a panicked future must not be polled again in the background).
        let Some(mut work) = self.work.take() else {
            return Poll::Pending;
        };
        match work.as_mut().poll(cx) {
            Poll::Ready(out) => Poll::Ready(out),
            Poll::Pending => {
                self.work = Some(work);
                Poll::Pending
            }
        }
    }
}

impl<F> Drop for FinishOnDrop<F>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    fn drop(&mut self) {
        if let Some(work) = self.work.take() {
            self.cleanups.spawn("finishing an abandoned request", async move {
                drop(work.await);
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::sync::oneshot;

    #[tokio::test]
    async fn completed_work_returns_its_output_in_the_callers_task() {
        assert_eq!(finish_on_drop(&Cleanups::new(), async { 7 }).await, 7);
    }

    #[tokio::test]
    async fn work_dropped_midway_is_finished_in_the_background() {
        let (go, wait) = oneshot::channel::<()>();
        let (finished, done) = oneshot::channel::<()>();
        let cleanups = Cleanups::new();
        let mut work = Box::pin(finish_on_drop(&cleanups, async move {
            let _ = wait.await;
            let _ = finished.send(());
        }));
        // Poll it once, so it is midway (waiting for `go`), then drop it.
        tokio::select! {
            biased;
            _ = &mut work => unreachable!("it waits for `go`"),
            _ = std::future::ready(()) => {}
        }
        drop(work);
        // `close()` waits for it: counted until it ends (uncounted before, so a grant in
        // flight when `close()` ended a wait was given back after `close()` returned).
        assert!(!cleanups.idle(Duration::from_millis(50)).await, "not counted");
        go.send(()).unwrap();
        let outcome = tokio::time::timeout(Duration::from_secs(5), done).await;
        assert!(matches!(outcome, Ok(Ok(()))), "the dropped work did not finish");
        assert!(cleanups.idle(Duration::from_secs(5)).await, "still counted when done");
    }
}
