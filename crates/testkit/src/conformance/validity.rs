//! Hardening K1: a lease is valid when it is handed out — its validity counts from the
//! request that made us the owner, never from the start of a long wait, and a grant with no
//! validity left is given back instead of returned.

use std::time::Duration;

use fencelock_core::LockOptions;

use super::{shared_gate, within, Fixture, SuiteConfig};
use crate::keys::unique_key;
use crate::proxy::Mode;

/// The TTL of the validity cases: at least a second, so the checks below have room on a
/// loaded 2-core machine.
fn ttl(cfg: &SuiteConfig) -> Duration {
    cfg.short_ttl.max(Duration::from_secs(1))
}

/// A waiter that waited longer than both the TTL and the session timeout gets a lease with
/// (nearly) its whole TTL left, that stays held and excludes a third client — with and
/// without auto-renew.
pub async fn long_wait_grants_full_validity(f: &dyn Fixture, cfg: &SuiteConfig) {
    let _gate = shared_gate().await;
    let (a, b, c) = (f.client().await, f.client().await, f.client().await);
    let ttl = ttl(cfg);
    let hold = ttl.max(cfg.session_timeout) + ttl / 2;
    for auto_renew in [true, false] {
        let key = unique_key("long-wait");
        let holder_opts = LockOptions::new().with_ttl(ttl).with_auto_renew(true);
        let held = a.acquire(&key, &holder_opts).await.expect("acquire a free key");
        let waiter = {
            let (b, key) = (b.clone(), key.clone());
            let opts = LockOptions::new()
                .with_ttl(ttl)
                .with_auto_renew(auto_renew)
                .with_wait(hold + cfg.slack * 4);
            tokio::spawn(async move { b.acquire(&key, &opts).await })
        };
        // The fault being modelled: the holder keeps the lock longer than the waiter's TTL
        // and the session timeout.
        tokio::time::sleep(hold).await;
        assert!(
            held.is_held(),
            "the auto-renewed holder lost its lease while waited for"
        );
        held.release().await.expect("release by the holder");
        let lease = within(cfg.slack * 2, "the waiter after a long wait", waiter)
            .await
            .expect("waiter task")
            .expect("the waiter gets the lock after the holder released");
        let left = lease.remaining();
        assert!(
            left >= ttl / 2,
            "after waiting {hold:?} the lease came with {left:?} of its {ttl:?} TTL left \
             (auto_renew={auto_renew}): validity counted from the start of the wait?"
        );
        assert!(lease.is_held(), "a fresh lease is not held (auto_renew={auto_renew})");
        let third = c
            .try_acquire(&key, &LockOptions::new().with_ttl(ttl))
            .await
            .expect("try_acquire by a third client");
        assert!(
            third.is_none(),
            "a third client got the key while the waiter's fresh lease was valid (auto_renew={auto_renew})"
        );
        assert!(lease.is_held(), "the lease was lost right after it was handed out");
        lease.release().await.expect("release by the waiter");
    }
}

/// A grant whose answer comes back after its TTL ran out is never handed out, and is given
/// back so the key is free at once (a network backend with replies delayed past the TTL).
/// Backends without a network have no answer to delay; their check is a unit test of
/// `Lease::into_live` in core.
pub async fn dead_on_arrival_grant_is_not_handed_out(f: &dyn Fixture, cfg: &SuiteConfig) {
    let _gate = shared_gate().await;
    let ttl = ttl(cfg);
    let Some(slow) = f.proxied_client(ttl * 4).await else {
        return;
    };
    let other = f.client().await;
    let key = unique_key("doa");
    let opts = LockOptions::new().with_ttl(ttl).with_auto_renew(false);
    slow.set_to_client(Mode::Delay(ttl + ttl / 4));
    let got = within(
        ttl * 6 + cfg.slack,
        "try_acquire with replies slower than the TTL",
        slow.client.try_acquire(&key, &opts),
    )
    .await;
    if let Ok(Some(lease)) = &got {
        panic!(
            "a grant was handed out with {:?} left of a {ttl:?} TTL after a reply slower than the TTL",
            lease.remaining()
        );
    }
    slow.set(Mode::Pass);
    drop(got);
    let next = within(
        ttl + cfg.slack * 2,
        "another client after the late grant",
        other.acquire(&key, &opts.with_wait(ttl + cfg.slack)),
    )
    .await
    .expect("the key is free once the late grant was given back or ran out");
    next.release().await.expect("release");
}

/// A `try_acquire` whose TTL (1 ms) is shorter than the grant's round trip either is
/// refused up front (`InvalidInput`), or hands out a live lease, or fails with an error
/// that is not temporary — a temporary one invites a retry that meets the same fate every
/// time, each burning a token — and leaves nothing held: another client takes the key
/// right after. (Before: ZooKeeper answered `Unavailable`.)
pub async fn tiny_ttl_try_acquire_is_not_temporary(f: &dyn Fixture, cfg: &SuiteConfig) {
    let _gate = shared_gate().await;
    let (a, b) = (f.client().await, f.client().await);
    let key = unique_key("tiny-ttl");
    let tiny = LockOptions::new()
        .with_ttl(Duration::from_millis(1))
        .with_auto_renew(false);
    for attempt in 0..3 {
        let got = within(cfg.slack * 2, "try_acquire with a 1 ms TTL", a.try_acquire(&key, &tiny)).await;
        match got {
            Ok(Some(lease)) => {
                // In time (an in-process backend): nothing to say about it but that the
                // key is given back.
                let _ = lease.release().await;
            }
            Ok(None) => panic!("try_acquire {attempt} with a 1 ms TTL found a free key taken"),
            Err(e) => assert!(
                !e.is_temporary(),
                "try_acquire {attempt} with a 1 ms TTL failed with a temporary error, which a caller \
                 retries for ever: {e}"
            ),
        }
        let next = within(
            cfg.slack * 2,
            "another client after the 1 ms try",
            b.acquire(
                &key,
                &LockOptions::new()
                    .with_ttl(super::LONG_TTL)
                    .with_auto_renew(false)
                    .with_wait(cfg.slack),
            ),
        )
        .await
        .expect("the key is free right after a try with a 1 ms TTL");
        next.release().await.expect("release");
    }
}
