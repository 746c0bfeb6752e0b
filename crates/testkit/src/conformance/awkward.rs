//! Hardening K6: every key that `validate_key` accepts works on every backend — the
//! backend encodes what its server cannot hold — and distinct keys stay distinct.

use fencelock_core::{LockError, LockOptions};
use tokio::time::Instant;

use super::holder::{holder_options, judge_second_grant};
use super::{shared_gate, within, Fixture, SuiteConfig, LONG_TTL};
use crate::keys::awkward_keys;

/// Every key of [`awkward_keys`] is granted at once to one client (so no two collide
/// after encoding), refused to another while held, and released cleanly; no key is an
/// error.
pub async fn awkward_keys_work(f: &dyn Fixture, cfg: &SuiteConfig) {
    let _gate = shared_gate().await;
    let (a, b) = (f.client().await, f.client().await);
    let opts = LockOptions::new().with_ttl(LONG_TTL).with_auto_renew(false);
    // The holder renews: a lease without renewal may be valid for only a session timeout.
    let hold = holder_options();
    let mut held = Vec::new();
    for key in awkward_keys() {
        let lease = within(cfg.slack, "try_acquire of an awkward key", a.try_acquire(&key, &hold))
            .await
            .unwrap_or_else(|e| panic!("key {key:?} was refused: {e}"))
            .unwrap_or_else(|| panic!("key {key:?} was busy: it collides with another key after encoding"));
        held.push((key, lease));
    }
    for (key, lease) in &held {
        let other = b
            .try_acquire(key, &opts)
            .await
            .unwrap_or_else(|e| panic!("key {key:?} on a second client: {e}"));
        let at = Instant::now();
        if let Some(granted) = other {
            // Only a violation if the holder was still valid; a holder lost to load is not
            // the encoding's fault (a collision is caught by the grants above).
            judge_second_grant(lease, &granted, at, &format!("key {key:?} on a second client"));
        }
    }
    for (key, lease) in held {
        match lease.release().await {
            // Lost to load (its renewals or session) before the release: judged above if
            // anyone got the key meanwhile.
            Ok(()) | Err(LockError::LeaseLost { .. }) => {}
            Err(e) => panic!("release of key {key:?}: {e}"),
        }
    }
}
