//! Batched auto-renewals: the background renewals of every lease on one node share one
//! [`EXTEND_MANY`](crate::scripts) script per window (with `fencelock_core::batch`), so
//! holding 10,000 locks costs a few requests per renewal period instead of 10,000.
//!
//! A renewal waits at most `renew_window`, capped at a tenth of its TTL so that a short
//! lease is not delayed by much of its own validity. The lease counts the renewed validity
//! from the moment it asked, before the wait, so waiting only ever shortens what the holder
//! believes, never lengthens it. Explicit `Lease::extend` calls do not come here.

use fencelock_core::batch::Batcher;

/// The most grants one script renews: keeps each script's time on the server (one
/// `GET` + `PEXPIRE` per grant, about a microsecond each) well under a millisecond.
pub(crate) const MAX_BATCH: usize = 500;

/// One renewal in a batch.
pub(crate) struct Renewal {
    /// The full Redis key of the lock.
    pub lock_key: String,
    pub grant: String,
    pub ttl_ms: u64,
}

/// A node's batcher of renewals; each answer says whether the key still held the grant.
pub(crate) type Renewals = Batcher<Renewal, bool>;

pub(crate) fn renewals() -> Renewals {
    Batcher::new(MAX_BATCH)
}
