//! Taking, waiting for, and giving back a lock.

use std::time::Duration;

use fencelock_core::{LockError, LockOptions};
use tokio::time::Instant;

use super::holder::{holder_options, judge_second_grant};
use super::{within, ClientFactory, SuiteConfig, LONG_TTL};
use crate::keys::unique_key;

fn long() -> LockOptions {
    LockOptions::new().with_ttl(LONG_TTL).with_auto_renew(false)
}

/// How many times a case that needs a held key starts over when its holder's validity
/// ended before the check (no violation, see [`judge_second_grant`]) before it fails.
const HOLDER_ATTEMPTS: usize = 3;

/// `try_acquire` on a held key returns `Ok(None)` at once instead of waiting.
pub async fn try_acquire_never_waits(f: &dyn ClientFactory, cfg: &SuiteConfig) {
    let _gate = super::shared_gate().await;
    let (a, b) = (f.client().await, f.client().await);
    for _ in 0..HOLDER_ATTEMPTS {
        let key = unique_key("try-never-waits");
        let held = a
            .try_acquire(&key, &holder_options())
            .await
            .expect("try_acquire on a free key")
            .expect("free key granted");
        let start = Instant::now();
        let second = within(
            cfg.slack,
            "try_acquire on a held key",
            b.try_acquire(&key, &long().with_wait(LONG_TTL)),
        )
        .await
        .expect("try_acquire on a held key is not an error");
        let at = Instant::now();
        if let Some(granted) = second {
            judge_second_grant(&held, &granted, at, "try_acquire on a held key");
            continue;
        }
        assert!(start.elapsed() < cfg.slack, "try_acquire waited {:?}", start.elapsed());
        if !held.is_held() {
            continue; // lost to load meanwhile (its session or renewals): try again
        }
        held.release().await.expect("release");
        return;
    }
    panic!("the holder's lease ended before the check in all {HOLDER_ATTEMPTS} attempts: the machine is too slow for this backend's session timeout")
}

/// `acquire` gives up with `Timeout` after its wait bound, not before and not much after.
pub async fn acquire_times_out_after_wait(f: &dyn ClientFactory, cfg: &SuiteConfig) {
    let _gate = super::shared_gate().await;
    let (a, b) = (f.client().await, f.client().await);
    for _ in 0..HOLDER_ATTEMPTS {
        let key = unique_key("times-out");
        let held = a.acquire(&key, &holder_options()).await.expect("acquire a free key");
        let wait = Duration::from_millis(300);
        let start = Instant::now();
        let got = within(
            wait + cfg.slack,
            "acquire with a wait bound",
            b.acquire(&key, &long().with_wait(wait)),
        )
        .await;
        let at = Instant::now();
        let err = match got {
            Ok(granted) => {
                judge_second_grant(&held, &granted, at, "acquire on a held key");
                continue;
            }
            Err(e) => e,
        };
        let waited = start.elapsed();
        assert!(
            matches!(err, LockError::Timeout { .. }),
            "expected a timeout, got {err}"
        );
        assert!(
            waited >= wait,
            "gave up after {waited:?}, before the wait bound {wait:?}"
        );
        drop(held.release().await);
        return;
    }
    panic!("the holder's lease ended before the check in all {HOLDER_ATTEMPTS} attempts: the machine is too slow for this backend's session timeout")
}

/// A waiter gets the lock soon after the holder releases it, long before the TTL.
pub async fn acquire_is_woken_by_release(f: &dyn ClientFactory, cfg: &SuiteConfig) {
    let _gate = super::shared_gate().await;
    let (a, b) = (f.client().await, f.client().await);
    let key = unique_key("woken");
    let held = a.acquire(&key, &long()).await.expect("acquire");
    let first = held.token();
    let waiter = {
        let key = key.clone();
        tokio::spawn(async move { b.acquire(&key, &long().with_wait(Duration::from_secs(30))).await })
    };
    let released_at = Instant::now();
    held.release().await.expect("release");
    let next = within(cfg.slack * 2, "the waiter after a release", waiter)
        .await
        .expect("waiter task")
        .expect("waiter acquired");
    assert!(next.token() > first, "token {} after {}", next.token(), first);
    assert!(
        released_at.elapsed() < LONG_TTL / 2,
        "the waiter was freed by expiry, not by the release"
    );
    next.release().await.expect("release");
}

/// Dropping `acquire` futures at arbitrary points (before, during and after the grant)
/// leaves the key free: a fresh client gets it long before any TTL could free it.
pub async fn cancelled_acquire_leaves_nothing_held(f: &dyn ClientFactory, cfg: &SuiteConfig) {
    let _gate = super::shared_gate().await;
    let (a, b, c) = (f.client().await, f.client().await, f.client().await);
    let key = unique_key("cancel");
    // On a free key: cut off after 0, 1, 2, ... ms.
    for i in 0..12u64 {
        let _ = tokio::time::timeout(Duration::from_micros(i * 500), a.acquire(&key, &long())).await;
    }
    // On a held key that is released while the waiters are being cut off.
    let held = b
        .acquire(&key, &long().with_wait(cfg.slack * 4))
        .await
        .expect("acquire after cancelled attempts");
    let waiters: Vec<_> = (0..6u64)
        .map(|i| {
            let a = a.clone();
            let key = key.clone();
            tokio::spawn(async move {
                let _ = tokio::time::timeout(Duration::from_millis(i * 3), a.acquire(&key, &long())).await;
            })
        })
        .collect();
    held.release().await.expect("release");
    for w in waiters {
        within(cfg.slack, "a cancelled waiter", w).await.expect("task");
    }
    let got = within(
        cfg.slack * 3,
        "acquire after cancelled waiters",
        c.acquire(&key, &long().with_wait(cfg.slack * 2)),
    )
    .await
    .expect("the key was left held by a cancelled acquire");
    got.release().await.expect("release");
}

/// Dropping an unreleased lease releases it in the background, without blocking the drop.
pub async fn dropped_lease_is_released(f: &dyn ClientFactory, cfg: &SuiteConfig) {
    let _gate = super::shared_gate().await;
    let (a, b) = (f.client().await, f.client().await);
    let key = unique_key("drop");
    let lease = a.acquire(&key, &long()).await.expect("acquire");
    let start = Instant::now();
    drop(lease);
    assert!(
        start.elapsed() < Duration::from_millis(100),
        "drop blocked for {:?}",
        start.elapsed()
    );
    let next = b
        .acquire(&key, &long().with_wait(cfg.slack * 2))
        .await
        .expect("the dropped lease was not released");
    next.release().await.expect("release");
}

/// `release` returns `Ok` for a lease held to the end, and frees the key at once.
pub async fn release_frees_the_key(f: &dyn ClientFactory, _cfg: &SuiteConfig) {
    let _gate = super::shared_gate().await;
    let (a, b) = (f.client().await, f.client().await);
    let key = unique_key("release");
    let lease = a.acquire(&key, &long()).await.expect("acquire");
    let token = lease.token();
    lease.release().await.expect("releasing a live lease is Ok");
    let next = b
        .try_acquire(&key, &long())
        .await
        .expect("try_acquire")
        .expect("the key was free after release");
    assert!(next.token() > token);
    next.release().await.expect("release");
}
