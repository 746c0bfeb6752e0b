//! Work that finishes even when its caller gives up, without a task per call.
//!
//! [`fencelock_core::waiting::detached`] spawns a task for every call and awaits it: two
//! task hand-overs (and, on a multi-threaded runtime, usually a wake-up of another worker
//! thread) on every acquire, measured at issue 14 as part of etcd's uncontended overhead.
//! [`finish_on_drop`] polls the work in the caller's own task instead, and only when the
//! caller drops it before it completed does it move the work, as it stands, into a task of
//! its own, which runs it to the end. The work's outcome is then dropped there, exactly as
//! `detached` drops it inside its task — so a queue entry made after the caller is gone is
//! undone by its own `Drop`, as before.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

/// Runs `work` in the caller's task; if the returned future is dropped before `work`
/// completed, `work` is finished in a background task on the current runtime (without a
/// runtime, it is dropped: the session or the TTL ends what it made).
pub(crate) fn finish_on_drop<F>(work: F) -> FinishOnDrop<F>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    FinishOnDrop {
        work: Some(Box::pin(work)),
    }
}

/// See [`finish_on_drop`].
pub(crate) struct FinishOnDrop<F: Future + Send + 'static>
where
    F::Output: Send + 'static,
{
    work: Option<Pin<Box<F>>>,
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
        if let (Some(work), Ok(rt)) = (self.work.take(), tokio::runtime::Handle::try_current()) {
            rt.spawn(async move {
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
        assert_eq!(finish_on_drop(async { 7 }).await, 7);
    }

    #[tokio::test]
    async fn work_dropped_midway_is_finished_in_the_background() {
        let (go, wait) = oneshot::channel::<()>();
        let (finished, done) = oneshot::channel::<()>();
        let mut work = Box::pin(finish_on_drop(async move {
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
        go.send(()).unwrap();
        let outcome = tokio::time::timeout(Duration::from_secs(5), done).await;
        assert!(matches!(outcome, Ok(Ok(()))), "the dropped work did not finish");
    }
}
