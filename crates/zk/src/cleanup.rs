//! Background clean-ups owned by a session: deleting nodes whose release or abandonment
//! was not confirmed (a "guaranteed delete"), and following up creates whose answer
//! was lost. Each is bounded in attempts and time, and stops when the session ends (its end
//! deletes every ephemeral node it owns). [`DistributedLock::close`] waits for them.
//!
//! [`DistributedLock::close`]: fencelock_core::DistributedLock::close

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::session::Session;

/// The most delete attempts one clean-up makes; with the backoff below this spans well
/// over any session timeout ZooKeeper allows, after which the session's end does the work.
const MAX_DELETES: u32 = 1000;
/// Backoff between delete attempts: from the first pause, doubling up to the last.
const FIRST_PAUSE: Duration = Duration::from_millis(20);
const MAX_PAUSE: Duration = Duration::from_secs(1);

/// Clean-ups still running, and a signal when none are.
#[derive(Debug, Default)]
pub(crate) struct Cleanups {
    active: AtomicUsize,
    idle: tokio::sync::Notify,
}

/// Counts one clean-up while it lives — also when its task is dropped unpolled (a runtime
/// shutting down), so `close` never waits for work that will not run.
struct Running(Arc<Cleanups>);

impl Running {
    fn start(c: Arc<Cleanups>) -> Self {
        c.active.fetch_add(1, Ordering::AcqRel);
        Running(c)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if self.0.active.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

impl Cleanups {
    /// Waits until no clean-up runs, for at most `limit`; `true` if none runs.
    pub async fn wait_idle(&self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        loop {
            let notified = self.idle.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.active.load(Ordering::Acquire) == 0 {
                return true;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return self.active.load(Ordering::Acquire) == 0;
            }
        }
    }
}

/// Runs `work` in the background as one of `session`'s clean-ups. Without a runtime (a
/// drop during shutdown) nothing runs: the session's end deletes what is left.
pub(crate) fn spawn(session: &Arc<Session>, work: impl Future<Output = ()> + Send + 'static) {
    let Ok(rt) = tokio::runtime::Handle::try_current() else {
        return;
    };
    let running = Running::start(Arc::clone(&session.cleanups));
    rt.spawn(async move {
        let _running = running;
        work.await;
    });
}

/// Deletes `path` in the background, retrying until ZooKeeper confirms (deleted, or already
/// gone) or the session ends — a "guaranteed delete". Each attempt waits at most
/// `timeout`.
pub(crate) fn delete(session: &Arc<Session>, timeout: Duration, path: String) {
    let s = Arc::clone(session);
    spawn(session, async move {
        let mut pause = FIRST_PAUSE;
        for _ in 0..MAX_DELETES {
            let Ok(client) = s.client() else { return };
            if !s.is_usable() {
                return; // the session's end deletes the ephemeral node
            }
            match tokio::time::timeout(timeout, client.delete(&path, None)).await {
                Ok(Ok(())) | Ok(Err(zookeeper_client::Error::NoNode)) => return,
                Ok(Err(e)) => tracing::debug!(%path, error = %e, "deleting a lock node failed; trying again"),
                Err(_) => tracing::debug!(%path, "deleting a lock node got no answer; trying again"),
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(MAX_PAUSE);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn wait_idle_returns_when_the_last_clean_up_ends() {
        let c = Arc::new(Cleanups::default());
        assert!(c.wait_idle(Duration::from_millis(1)).await);
        let running = Running::start(Arc::clone(&c));
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let t = tokio::spawn(async move {
            let _r = running;
            let _ = rx.await;
        });
        assert!(!c.wait_idle(Duration::from_millis(20)).await, "one is still running");
        tx.send(()).unwrap();
        assert!(c.wait_idle(Duration::from_secs(5)).await);
        t.await.unwrap();
    }

    #[test]
    fn a_clean_up_dropped_unpolled_is_not_waited_for() {
        let c = Arc::new(Cleanups::default());
        let running = Running::start(Arc::clone(&c));
        let never_run = async move {
            let _r = running;
        };
        drop(never_run);
        assert_eq!(c.active.load(Ordering::Acquire), 0);
    }
}
