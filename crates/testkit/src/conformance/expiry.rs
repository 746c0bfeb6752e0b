//! Validity, expiry, extension, renewal and loss.

use std::time::Duration;

use fencelock_core::{LeaseState, LockError, LockOptions, LostReason};
use tokio::time::Instant;

use super::holder::judge_second_grant;
use super::{within, ClientFactory, SuiteConfig, LONG_TTL};
use crate::keys::unique_key;

fn short(cfg: &SuiteConfig) -> LockOptions {
    LockOptions::new()
        .with_ttl(cfg.short_ttl)
        .with_auto_renew(false)
        .with_wait(LONG_TTL)
}

/// After our TTL ran out and someone else acquired, our `release` fails with `LeaseLost`
/// and leaves their lock alone.
pub async fn release_after_expiry_spares_new_holder(f: &dyn ClientFactory, cfg: &SuiteConfig) {
    let _gate = super::shared_gate().await;
    let (a, b, c) = (f.client().await, f.client().await, f.client().await);
    let key = unique_key("release-expired");
    let stale = a.acquire(&key, &short(cfg)).await.expect("acquire");
    within(cfg.short_ttl + cfg.slack, "expiry of a short lease", stale.lost()).await;
    let fresh = within(
        cfg.short_ttl * 2 + cfg.slack * 2,
        "acquire after expiry",
        b.acquire(&key, &short(cfg).with_ttl(LONG_TTL)),
    )
    .await
    .expect("acquire after the first lease expired");
    assert!(fresh.token() > stale.token());
    let err = stale
        .release()
        .await
        .expect_err("releasing an expired lease reported success");
    assert!(err.is_lease_lost(), "expected LeaseLost, got {err}");
    assert!(
        c.try_acquire(&key, &short(cfg)).await.expect("try_acquire").is_none(),
        "the stale release freed the new holder's lock"
    );
    assert!(fresh.is_held());
    fresh.release().await.expect("the new holder's release");
}

/// After our TTL ran out and someone else acquired, our `extend` fails with `LeaseLost` and
/// does not touch their lock.
pub async fn extend_after_expiry_fails(f: &dyn ClientFactory, cfg: &SuiteConfig) {
    let _gate = super::shared_gate().await;
    let (a, b, c) = (f.client().await, f.client().await, f.client().await);
    let key = unique_key("extend-expired");
    let stale = a.acquire(&key, &short(cfg)).await.expect("acquire");
    within(cfg.short_ttl + cfg.slack, "expiry of a short lease", stale.lost()).await;
    let fresh = b
        .acquire(&key, &short(cfg).with_ttl(LONG_TTL))
        .await
        .expect("acquire after expiry");
    let err = stale
        .extend(LONG_TTL)
        .await
        .expect_err("extending an expired lease succeeded");
    assert!(err.is_lease_lost(), "expected LeaseLost, got {err}");
    assert!(c.try_acquire(&key, &short(cfg)).await.expect("try_acquire").is_none());
    fresh.release().await.expect("release");
}

/// `extend` moves the validity forward; the lease outlives its first TTL.
pub async fn extend_prolongs_lease(f: &dyn ClientFactory, cfg: &SuiteConfig) {
    let _gate = super::shared_gate().await;
    let (a, b) = (f.client().await, f.client().await);
    let key = unique_key("extend");
    let lease = a.acquire(&key, &short(cfg)).await.expect("acquire");
    let first_end = lease.valid_until();
    lease.extend(LONG_TTL).await.expect("extend a live lease");
    assert!(
        lease.valid_until() > first_end + cfg.short_ttl,
        "extend did not move the validity"
    );
    // Let the first TTL pass: this is the time under test, not a synchronisation.
    tokio::time::sleep_until(first_end + cfg.short_ttl / 2).await;
    assert!(lease.is_held(), "the lease ended at its first TTL despite extend");
    assert!(
        b.try_acquire(&key, &short(cfg)).await.expect("try_acquire").is_none(),
        "the backend let the extended lease expire"
    );
    lease.release().await.expect("release after extend");
}

/// With auto-renew, a lease outlives several TTLs while its holder lives.
pub async fn auto_renew_keeps_lease(f: &dyn ClientFactory, cfg: &SuiteConfig) {
    let _gate = super::shared_gate().await;
    let (a, b) = (f.client().await, f.client().await);
    let key = unique_key("auto-renew");
    let lease = a
        .acquire(&key, &short(cfg).with_auto_renew(true))
        .await
        .expect("acquire");
    let start = Instant::now();
    tokio::select! {
        reason = lease.lost() => panic!("auto-renewed lease lost: {reason}"),
        _ = tokio::time::sleep(cfg.short_ttl * 4) => {}
    }
    assert!(
        lease.is_held(),
        "auto-renewed lease not held after {:?}",
        start.elapsed()
    );
    let other = b.try_acquire(&key, &short(cfg)).await.expect("try_acquire");
    let at = Instant::now();
    if let Some(granted) = other {
        // A violation if the lease was still valid; otherwise a renewal missed its
        // deadline after the check above (a too short `short_ttl` for this machine).
        judge_second_grant(&lease, &granted, at, "try_acquire of an auto-renewed key");
        panic!(
            "the auto-renewed lease lapsed after {:?}: its renewals missed their deadline",
            start.elapsed()
        );
    }
    lease.release().await.expect("release of an auto-renewed lease");
}

/// A lease that is not renewed is reported lost (through `lost()`, `watch()` and
/// `is_held()`) when its validity runs out.
pub async fn loss_is_observable(f: &dyn ClientFactory, cfg: &SuiteConfig) {
    let _gate = super::shared_gate().await;
    let a = f.client().await;
    let key = unique_key("loss");
    let lease = a.acquire(&key, &short(cfg)).await.expect("acquire");
    let mut watch = lease.watch();
    assert!(lease.is_held());
    let reason = within(cfg.short_ttl + cfg.slack, "lost() of an expiring lease", lease.lost()).await;
    assert_eq!(reason, LostReason::Expired);
    assert!(
        Instant::now() >= lease.valid_until(),
        "reported lost before its validity ended"
    );
    within(
        cfg.slack,
        "the watch to show the loss",
        watch.wait_for(|s| matches!(s.state, LeaseState::Lost(_))),
    )
    .await
    .expect("watch closed");
    assert!(!lease.is_held());
    let err = lease
        .release()
        .await
        .expect_err("release of an expired lease reported success");
    assert!(matches!(err, LockError::LeaseLost { .. }), "{err}");
}

/// Validity is counted from the moment the request was sent: it ends no later than the TTL
/// after the call began plus the call's own duration, and never past reply + TTL. (A
/// backend that counted from the reply would overshoot `before + TTL` by the round trip;
/// network backends check that through a delaying proxy in their own fault tests.)
pub async fn validity_counts_from_send(f: &dyn ClientFactory, cfg: &SuiteConfig) {
    let _gate = super::shared_gate().await;
    let a = f.client().await;
    let key = unique_key("validity");
    let ttl = Duration::from_secs(10);
    for _ in 0..5 {
        let before = Instant::now();
        let lease = a.acquire(&key, &short(cfg).with_ttl(ttl)).await.expect("acquire");
        let after = Instant::now();
        let end = lease.valid_until();
        assert!(
            end <= after + ttl,
            "validity ends {:?} past reply + TTL",
            end - (after + ttl)
        );
        assert!(end > before, "validity already over at grant");
        lease.release().await.expect("release");
    }
}

/// A background renewal asked before an explicit `extend` but sent after it must not
/// shorten what the extend set. The lease believes the request asked last (the extend), so
/// the backend must keep the key at least that long; a backend that batches renewals holds
/// each one back for a short window (at most a tenth of its TTL) before sending it, and a
/// renewal that then set its TTL unconditionally ended the key at `renewal + TTL` while the
/// holder believed in it for the extend's minute: another client was granted the key while
/// the first lease was valid.
///
/// The extend is called just after the first renewal is asked (a third of the way through
/// the validity, counted from no earlier than the acquire's call) and well inside the
/// window; the key is tried past the end such a late renewal would have set.
pub async fn renewal_never_undoes_a_later_extend(f: &dyn ClientFactory, cfg: &SuiteConfig) {
    let _gate = super::shared_gate().await;
    let (a, b) = (f.client().await, f.client().await);
    let key = unique_key("renew-then-extend");
    let ttl = cfg.short_ttl;
    let called = Instant::now();
    let lease = a
        .acquire(&key, &short(cfg).with_auto_renew(true))
        .await
        .expect("acquire");
    // Due at `sent + (valid_until - sent) / 3`, and `sent` is not before `called`.
    let renewal_asked = called + lease.valid_until().saturating_duration_since(called) / 3;
    // Waiting for that instant is the scenario under test, not a synchronisation.
    tokio::time::sleep_until(renewal_asked + ttl / 40).await;
    lease.extend(LONG_TTL).await.expect("extend a live lease");
    // A renewal held back a tenth of the TTL, then sent, would end the key `ttl` later.
    tokio::time::sleep_until(renewal_asked + ttl / 10 + ttl + ttl / 10).await;
    assert!(lease.is_held(), "the extended lease is not held: {:?}", lease.status());
    let other = b.try_acquire(&key, &short(cfg)).await.expect("try_acquire");
    let at = Instant::now();
    if let Some(granted) = other {
        judge_second_grant(&lease, &granted, at, "try_acquire after a renewal and a later extend");
        panic!("the extended lease lapsed: its holder's validity ended early");
    }
    lease.release().await.expect("release after extend");
}
