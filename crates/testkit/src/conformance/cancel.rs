//! Hardening K4: every async method is cancel safe — dropped at any point, it leaves the
//! lock neither held by accident nor wrongly believed held.

use std::time::Duration;

use fencelock_core::{DistributedLock, LockOptions};

use super::{shared_gate, within, Fixture, SuiteConfig, LONG_TTL};
use crate::keys::unique_key;

/// Drop points swept per method: from before the first poll to past a round trip.
const DROP_POINTS: u32 = 12;
const STEP: Duration = Duration::from_micros(400);

fn long() -> LockOptions {
    LockOptions::new().with_ttl(LONG_TTL).with_auto_renew(false)
}

/// Asserts that `other` gets `key` well before the 60 s TTL (what was dropped let go of it).
async fn free_soon(other: &dyn DistributedLock, key: &str, cfg: &SuiteConfig, what: &str) {
    let lease = within(
        cfg.slack * 3,
        what,
        other.acquire(key, &long().with_wait(cfg.slack * 2)),
    )
    .await
    .unwrap_or_else(|e| panic!("{what}: the key stayed held: {e}"));
    lease.release().await.expect("release");
}

/// `release`, `extend`, `try_acquire` and a queued `acquire`, each dropped at points swept
/// from before its first poll to past a round trip: a started release completes in the
/// background, a dropped extend leaves a lease that still releases cleanly, a dropped
/// try_acquire or acquire leaves no grant or queue entry behind.
pub async fn cancelled_methods_leave_nothing_held(f: &dyn Fixture, cfg: &SuiteConfig) {
    let _gate = shared_gate().await;
    let (a, b, c) = (f.client().await, f.client().await, f.client().await);
    for i in 0..DROP_POINTS {
        let cut = STEP * i;

        let key = unique_key("cancel-release");
        let lease = a.acquire(&key, &long()).await.expect("acquire");
        let _ = tokio::time::timeout(cut, lease.release()).await;
        free_soon(&*b, &key, cfg, &format!("release dropped after {cut:?}")).await;

        let key = unique_key("cancel-extend");
        let lease = a.acquire(&key, &long()).await.expect("acquire");
        let _ = tokio::time::timeout(cut, lease.extend(LONG_TTL)).await;
        assert!(lease.is_held(), "extend dropped after {cut:?} lost the lease");
        lease
            .release()
            .await
            .unwrap_or_else(|e| panic!("release after an extend dropped after {cut:?}: {e}"));
        free_soon(
            &*b,
            &key,
            cfg,
            &format!("release after an extend dropped after {cut:?}"),
        )
        .await;

        let key = unique_key("cancel-try");
        let _ = tokio::time::timeout(cut, a.try_acquire(&key, &long())).await;
        free_soon(&*b, &key, cfg, &format!("try_acquire dropped after {cut:?}")).await;

        // A queued waiter dropped while the key is held, then the holder releases.
        let key = unique_key("cancel-queued");
        let held = a.acquire(&key, &long()).await.expect("acquire");
        let _ = tokio::time::timeout(cut * 10, b.acquire(&key, &long().with_wait(LONG_TTL))).await;
        held.release().await.expect("release by the holder");
        let next = within(
            cfg.slack,
            "try_acquire after the queued waiter was dropped",
            c.try_acquire(&key, &long()),
        )
        .await
        .expect("try_acquire");
        let next = match next {
            Some(lease) => lease,
            None => {
                // The dropped waiter's clean-up may still be in flight; it must finish soon.
                free_soon(
                    &*c,
                    &key,
                    cfg,
                    &format!("acquire dropped after {:?} while queued", cut * 10),
                )
                .await;
                continue;
            }
        };
        next.release().await.expect("release");
    }
}
