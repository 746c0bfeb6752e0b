//! Admission: how many rounds of the algorithm one instance has in flight at once.
//!
//! A node's answer counts only when it comes within `per_node_timeout` of the request,
//! and the clock starts when the request is issued — also when it then waits behind the
//! instance's other requests on the one connection to that node. Issue 14: an instance
//! with many keys contended at once (the bench's 1,000 keys × 4 clients) sent hundreds of
//! rounds at once; every node answered every one, but later than 50 ms, so each round
//! counted "0 of 5 nodes answered", was undone on every node (five more requests) and
//! retried — congestion collapse: the servers did the work, the answers were thrown away,
//! and not one acquire succeeded in 20 s.
//!
//! Here a round first waits for a permit, **before** it sends anything and before its
//! clock (and the grant's validity) starts, so what a node's answer is timed against is
//! the node's own latency again. Two pools, so that a waiter claiming a lock a release
//! reserved for it (it must within the claim window, [`fencelock_redis::HANDOFF_CLAIM`])
//! never queues behind first rounds and queue turns. Releases are not gated: they never
//! wait for anything, and each one ends a grant.
//!
//! This changes no safety condition of Redlock: a round still needs a quorum within its
//! validity, counted from when it was sent.

use tokio::sync::{Semaphore, SemaphorePermit};

/// Rounds (first attempts, `try_acquire`, queue turns) one instance runs at once.
pub(crate) const ROUNDS_IN_FLIGHT: usize = 16;
/// Claims of a handed-off lock one instance runs at once, apart from the rounds.
pub(crate) const CLAIMS_IN_FLIGHT: usize = 16;

/// The two pools of one instance (shared by its clones).
#[derive(Debug)]
pub(crate) struct Admission {
    rounds: Semaphore,
    claims: Semaphore,
}

impl Default for Admission {
    fn default() -> Self {
        Admission {
            rounds: Semaphore::new(ROUNDS_IN_FLIGHT),
            claims: Semaphore::new(CLAIMS_IN_FLIGHT),
        }
    }
}

/// A place in flight; dropping it gives it back.
pub(crate) type Permit<'a> = Option<SemaphorePermit<'a>>;

impl Admission {
    /// Waits for a place for a round (FIFO). Cancel safe: dropped while waiting, nothing
    /// was taken.
    pub(crate) async fn round(&self) -> Permit<'_> {
        // The semaphores are never closed; if one were, the round goes ahead ungated.
        self.rounds.acquire().await.ok()
    }

    /// Waits for a place for a claim of a lock reserved for us (FIFO). Cancel safe.
    pub(crate) async fn claim(&self) -> Permit<'_> {
        self.claims.acquire().await.ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn claims_do_not_wait_behind_rounds() {
        let a = Admission::default();
        let mut held = Vec::new();
        for _ in 0..ROUNDS_IN_FLIGHT {
            held.push(a.round().await);
        }
        assert!(a.rounds.try_acquire().is_err(), "every round place taken");
        let claim = tokio::time::timeout(std::time::Duration::from_secs(1), a.claim()).await;
        assert!(matches!(claim, Ok(Some(_))), "a claim still goes ahead");
        drop(held);
        assert_eq!(a.rounds.available_permits(), ROUNDS_IN_FLIGHT);
    }
}
