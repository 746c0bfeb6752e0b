//! Waiting for auto-renewals, for the tests that count what renewals cost at the server.

use std::time::Duration;

use fencelock_core::Lease;
use tokio::time::Instant;

/// Waits (polling every 20 ms, at most `limit`) until every lease was renewed at least
/// twice after `t0`: valid beyond `t0` + 1.6 × `ttl` means its last renewal was sent after
/// `t0` + 0.6 × `ttl`, and renewals come every third of the TTL. Panics at the limit.
pub async fn wait_renewed_twice(leases: &[Lease], t0: Instant, ttl: Duration, limit: Duration) {
    let renewed_twice = |l: &Lease| l.valid_until() > t0 + ttl * 8 / 5;
    while !leases.iter().all(renewed_twice) {
        assert!(t0.elapsed() < limit, "leases were not renewed within {limit:?}");
        tokio::time::sleep(Duration::from_millis(20)).await; // polling a condition, bounded
    }
}
