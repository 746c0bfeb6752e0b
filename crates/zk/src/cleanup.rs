//! Background clean-ups owned by a session: deleting nodes whose release or abandonment
//! was not confirmed (a "guaranteed delete"), and following up creates whose answer
//! was lost. Each is bounded in attempts and time, and stops when the session ends (its end
//! deletes every ephemeral node it owns). They are counted among the session's
//! [`Cleanups`](fencelock_core::cleanup::Cleanups) from the moment each is decided, with
//! the background releases of its dropped leases; [`DistributedLock::close`] waits for
//! them.
//!
//! [`DistributedLock::close`]: fencelock_core::DistributedLock::close

use std::sync::Arc;
use std::time::Duration;

use crate::session::Session;

/// The most delete attempts one clean-up makes; with the backoff below this spans well
/// over any session timeout ZooKeeper allows, after which the session's end does the work.
const MAX_DELETES: u32 = 1000;
/// Backoff between delete attempts: from the first pause, doubling up to the last.
const FIRST_PAUSE: Duration = Duration::from_millis(20);
const MAX_PAUSE: Duration = Duration::from_secs(1);

/// Deletes `path` in the background, retrying until ZooKeeper confirms (deleted, or already
/// gone) or the session ends — a "guaranteed delete". Each attempt waits at most
/// `timeout`.
pub(crate) fn delete(session: &Arc<Session>, timeout: Duration, path: String) {
    let s = Arc::clone(session);
    // Without a runtime (a drop during shutdown) nothing runs: the session's end deletes it.
    session.cleanups.spawn("deleting a lock node", async move {
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
