//! Bad input and key isolation.

use std::time::Duration;

use fencelock_core::options::{MAX_KEY_LEN, MAX_TTL};
use fencelock_core::{LockError, LockOptions};

use tokio::time::Instant;

use super::holder::{holder_options, judge_second_grant};
use super::{ClientFactory, SuiteConfig, LONG_TTL};
use crate::keys::unique_key;

fn assert_invalid<T: std::fmt::Debug>(what: &str, r: Result<T, LockError>) {
    match r {
        Err(LockError::InvalidInput(msg)) => assert!(!msg.is_empty()),
        other => panic!("{what}: expected InvalidInput, got {other:?}"),
    }
}

/// Empty, over-long or control-character keys, zero or absurd TTLs and a zero wait for
/// `acquire` are clear `InvalidInput` errors (never a panic, never a hang).
pub async fn bad_input_is_rejected(f: &dyn ClientFactory, _cfg: &SuiteConfig) {
    let _gate = super::shared_gate().await;
    let a = f.client().await;
    let ok = LockOptions::new().with_ttl(LONG_TTL).with_wait(Duration::from_secs(1));
    let long_key = "k".repeat(MAX_KEY_LEN + 1);
    for key in ["", long_key.as_str(), "line\nbreak", "nul\0"] {
        assert_invalid(&format!("try_acquire({key:?})"), a.try_acquire(key, &ok).await);
        assert_invalid(&format!("acquire({key:?})"), a.acquire(key, &ok).await);
    }
    let key = unique_key("bad-input");
    for ttl in [
        Duration::ZERO,
        MAX_TTL + Duration::from_secs(1),
        Duration::from_secs(u64::MAX / 4),
    ] {
        assert_invalid("ttl", a.try_acquire(&key, &ok.with_ttl(ttl)).await);
        assert_invalid("ttl", a.acquire(&key, &ok.with_ttl(ttl)).await);
    }
    assert_invalid("zero wait", a.acquire(&key, &ok.with_wait(Duration::ZERO)).await);
    // The key stayed free through all of that, and extend checks its TTL too.
    let lease = a
        .try_acquire(&key, &ok)
        .await
        .expect("try_acquire")
        .expect("the key is free");
    assert_invalid("extend(0)", lease.extend(Duration::ZERO).await);
    assert!(lease.is_held());
    lease.release().await.expect("release");
}

/// Holding one key does not block another, and each key counts its own tokens.
pub async fn keys_are_independent(f: &dyn ClientFactory, _cfg: &SuiteConfig) {
    let _gate = super::shared_gate().await;
    let (a, b) = (f.client().await, f.client().await);
    let (k1, k2) = (unique_key("iso-a"), unique_key("iso-b"));
    let opts = LockOptions::new().with_ttl(LONG_TTL).with_auto_renew(false);
    let l1 = a.acquire(&k1, &holder_options()).await.expect("acquire k1");
    let l2 = b
        .try_acquire(&k2, &opts)
        .await
        .expect("try_acquire k2")
        .expect("k2 blocked by k1");
    let again = b.try_acquire(&k1, &opts).await.expect("try_acquire k1");
    if let Some(granted) = again {
        judge_second_grant(&l1, &granted, Instant::now(), "try_acquire of a held key");
        return; // the holder was lost to load: the rest needs it
    }
    l1.release().await.expect("release");
    l2.release().await.expect("release");
}

/// An `extend` the backend refuses outright (not temporary: a TTL below its minimum, say)
/// leaves the lease as it was — held, with the validity it had, the key excluded. Before,
/// the lease lowered its belief to `now + ttl` before sending and kept it after the
/// refusal: refused `extend(50ms)` of a 60 s lease, and the lease was lost 50 ms later.
/// An `extend(50ms)` the backend accepts (or may have applied: a temporary error) is not
/// this case.
pub async fn refused_extend_keeps_the_validity(f: &dyn ClientFactory, cfg: &SuiteConfig) {
    let _gate = super::shared_gate().await;
    let (a, b) = (f.client().await, f.client().await);
    let key = unique_key("refused-extend");
    let opts = LockOptions::new().with_ttl(LONG_TTL).with_auto_renew(false);
    let lease = a
        .try_acquire(&key, &opts)
        .await
        .expect("try_acquire")
        .expect("the key is free");
    // 50 ms: below PostgreSQL's and Redlock's minimums (refused there), and long enough
    // that the lease's timer cannot lapse the belief capped before the send while the
    // refusal's task waits to be scheduled on a loaded machine (1 ms did, once, on
    // PostgreSQL: see the cap in `Lease::extend`).
    match lease.extend(Duration::from_millis(50)).await {
        // The input refused, before anything was sent. (Another error, permanent or not,
        // may come after the request landed on part of the backend: the cap stays then.)
        Err(e @ LockError::InvalidInput(_)) => {
            let left = lease.remaining();
            assert!(
                left + cfg.slack >= LONG_TTL,
                "a refused extend ({e}) lowered the lease's validity to {left:?} of its {LONG_TTL:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
            assert!(lease.is_held(), "the lease was lost after a refused extend ({e})");
            let other = b.try_acquire(&key, &opts).await.expect("try_acquire by another client");
            assert!(
                other.is_none(),
                "another client got the key after a refused extend ({e})"
            );
            lease.release().await.expect("release after a refused extend");
        }
        // Accepted, maybe applied, or lost to its own short TTL: the lease is what the backend
        // made of it.
        _ => drop(lease.release().await),
    }
}
