//! Hardening K2: a grant removed on the server behind the holder's back is noticed — by
//! renewal within one renewal period, by `extend`, and by `release`.

use std::time::Duration;

use fencelock_core::{LockError, LockOptions};

use super::{shared_gate, within, Fixture, SuiteConfig, LONG_TTL};
use crate::keys::unique_key;

/// An operator deletes the holder's grant and another client takes the key: the holder's
/// auto-renewal reports the loss within one renewal period; without auto-renew, `extend`
/// fails with `LeaseLost`; `release` never says `Ok`; the new holder is untouched.
///
/// One exception, by design and documented per backend: a release whose request had to be
/// sent twice (its first answer lost) and that finds the grant gone cannot tell an
/// operator's delete from its own first try; etcd (lease still alive) and Redis (same
/// `run_id`) then answer released (see `release_whose_answer_is_lost_is_not_reported_lost`).
/// Here every release is sent once.
pub async fn removed_grant_is_noticed(f: &dyn Fixture, cfg: &SuiteConfig) {
    let _gate = shared_gate().await;
    let (a, b) = (f.client().await, f.client().await);
    let ttl = cfg.short_ttl.max(Duration::from_secs(1));

    // With auto-renew: renewal must find the grant gone.
    let key = unique_key("removed-renew");
    let lease = a
        .acquire(&key, &LockOptions::new().with_ttl(ttl).with_auto_renew(true))
        .await
        .expect("acquire");
    f.remove_grant(&key).await;
    let newer = b
        .acquire(&key, &LockOptions::new().with_ttl(LONG_TTL).with_wait(cfg.slack))
        .await
        .expect("another client takes the key once the grant was removed");
    within(
        ttl / 3 + cfg.slack,
        "the holder's loss signal after its grant was removed",
        lease.lost(),
    )
    .await;
    assert!(!lease.is_held(), "is_held() still true after the grant was removed");
    let err = lease.release().await.expect_err("release of a removed grant said Ok");
    assert!(
        err.is_lease_lost(),
        "release of a removed grant: expected LeaseLost, got {err}"
    );
    assert!(
        newer.is_held(),
        "the new holder lost its lease to the old holder's release"
    );
    newer.release().await.expect("the new holder releases");

    // Without auto-renew: extend must find the grant gone.
    let key = unique_key("removed-extend");
    let lease = a
        .acquire(&key, &LockOptions::new().with_ttl(LONG_TTL).with_auto_renew(false))
        .await
        .expect("acquire");
    f.remove_grant(&key).await;
    let newer = b
        .acquire(&key, &LockOptions::new().with_ttl(LONG_TTL).with_wait(cfg.slack))
        .await
        .expect("another client takes the key once the grant was removed");
    let err = within(cfg.slack, "extend of a removed grant", lease.extend(LONG_TTL))
        .await
        .expect_err("extend of a removed grant said Ok");
    assert!(
        matches!(err, LockError::LeaseLost { .. }),
        "extend of a removed grant: expected LeaseLost, got {err}"
    );
    assert!(
        !lease.is_held(),
        "is_held() still true after extend found the grant gone"
    );
    let err = lease.release().await.expect_err("release of a removed grant said Ok");
    assert!(
        err.is_lease_lost(),
        "release of a removed grant: expected LeaseLost, got {err}"
    );
    assert!(
        newer.is_held(),
        "the new holder lost its lease to the old holder's release"
    );
    newer.release().await.expect("the new holder releases");
}
