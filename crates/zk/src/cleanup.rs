//! Background clean-ups owned by a session: deleting nodes whose release or abandonment
//! was not confirmed (a "guaranteed delete"), and following up creates whose answer
//! was lost. Each is bounded in attempts and time, and stops when the session ends (its end
//! deletes every ephemeral node it owns); one that gives up ends the session itself. They
//! are counted among the session's [`Cleanups`](fencelock_core::cleanup::Cleanups) from the moment each is decided, with
//! the background releases of its dropped leases; [`DistributedLock::close`] waits for
//! them.
//!
//! [`DistributedLock::close`]: fencelock_core::DistributedLock::close

use std::sync::Arc;
use std::time::Duration;

use crate::error::retry_can_help;
use crate::session::Session;

/// The most delete attempts one clean-up makes; with the backoff below this spans well
/// over any session timeout ZooKeeper allows (about 17 minutes).
const MAX_DELETES: u32 = 1000;
/// Backoff between delete attempts: from the first pause, doubling up to the last.
const FIRST_PAUSE: Duration = Duration::from_millis(20);
const MAX_PAUSE: Duration = Duration::from_secs(1);

/// Deletes `path` in the background, retrying until ZooKeeper confirms (deleted, or already
/// gone) or the session ends — a "guaranteed delete". Each attempt waits at most
/// `timeout`.
///
/// When the server refuses the delete for good (`NoAuth`: the node's parent lost its
/// DELETE permission to a peer's or an operator's ACL; any error a retry cannot cure), or
/// after [`MAX_DELETES`] attempts, the session is ended — the last resort, as for a lost
/// create (`queue.rs`, `follow_up_late`): its end deletes the node, whatever the ACLs;
/// every lease of the instance in it is told lost first, and its next call opens a new
/// session. Left in the live session, the node would block the key until the process
/// ends (review).
pub(crate) fn delete(session: &Arc<Session>, timeout: Duration, path: String) {
    delete_within(session, timeout, path, MAX_DELETES);
}

/// [`delete`] with at most `attempts` attempts (tests shorten it).
pub(crate) fn delete_within(session: &Arc<Session>, timeout: Duration, path: String, attempts: u32) {
    let s = Arc::clone(session);
    // Without a runtime (a drop during shutdown) nothing runs: the session's end deletes it.
    session.cleanups.spawn("deleting a lock node", async move {
        let mut pause = FIRST_PAUSE;
        let mut refused = None;
        for attempt in 1..=attempts {
            let Ok(client) = s.client() else { return };
            if !s.is_usable() {
                return; // the session's end deletes the ephemeral node
            }
            match tokio::time::timeout(timeout, client.delete(&path, None)).await {
                Ok(Ok(())) | Ok(Err(zookeeper_client::Error::NoNode)) => return,
                Ok(Err(e)) if !retry_can_help(&e) => {
                    refused = Some(e);
                    break;
                }
                Ok(Err(e)) => tracing::debug!(%path, error = %e, "deleting a lock node failed; trying again"),
                Err(_) => tracing::debug!(%path, "deleting a lock node got no answer; trying again"),
            }
            if attempt < attempts {
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(MAX_PAUSE);
            }
        }
        if !s.is_usable() {
            return;
        }
        match refused {
            Some(e) => tracing::warn!(
                %path,
                error = %e,
                "the server refused to delete a lock node; ending the session, which deletes it"
            ),
            None => tracing::warn!(
                %path,
                "a lock node could not be deleted in {attempts} tries; ending the session, which deletes it"
            ),
        }
        s.close(
            "the session was ended to delete a lock node its delete could not",
            timeout,
        )
        .await;
    });
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail by panicking

    use fencelock_core::{DistributedLock, LockOptions};
    use fencelock_testkit::zk_server::ZkEnsemble;

    use super::*;

    /// A guaranteed delete that gets no answer for all its attempts (the server paused)
    /// ends the session, whose end deletes the node, and tells the session's leases lost
    /// first. Before: it returned with the session live (after about 17 minutes of tries).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_delete_that_never_lands_ends_the_session() {
        let zk = ZkEnsemble::standalone();
        let url = format!("zk://127.0.0.1:{}?session_timeout=10s", zk.port(0));
        let lock = crate::ZkLock::connect(&url).await.unwrap();
        let opts = LockOptions::new()
            .with_ttl(Duration::from_secs(60))
            .with_auto_renew(false);
        let lease = lock.acquire("k", &opts).await.unwrap();
        let session = lock.session().await.unwrap();
        zk.pause(0);
        let attempt = Duration::from_millis(100);
        delete_within(&session, attempt, "/fencelock/never-answered".into(), 3);
        // 3 attempts, 2 pauses (20 + 40 ms), the close's wait: about 0.5 s.
        let done = session.cleanups.idle(Duration::from_secs(3)).await;
        zk.resume(0);
        assert!(done, "the delete's attempts were not bounded");
        assert!(
            !session.is_usable(),
            "node left in a live session after the guaranteed delete gave up"
        );
        assert!(
            !lease.is_held(),
            "a lease of the ended session read {:?}",
            lease.status()
        );
    }
}
