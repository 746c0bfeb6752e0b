//! Batched auto-renewals: the background renewals of every lease of one backend instance
//! share one `UPDATE … FROM unnest(…)` statement per window (with
//! `fencelock_core::batch`), so holding 10,000 locks costs a few statements per renewal
//! period instead of 10,000.
//!
//! A renewal waits at most `renew_window`, capped at a tenth of its TTL. The lease counts
//! the renewed validity from the moment it asked, before the wait, so waiting only ever
//! shortens what the holder believes. Explicit `Lease::extend` calls do not come here.

use fencelock_core::batch::Batcher;

/// The most grants one statement renews (an index lookup and a row update each).
pub(crate) const MAX_BATCH: usize = 500;

/// One renewal in a batch.
pub(crate) struct Renewal {
    pub key: String,
    pub grant: String,
    pub ttl_ms: i64,
}

/// The batcher; each answer says whether the row still held the grant.
pub(crate) type Renewals = Batcher<Renewal, bool>;

pub(crate) fn renewals() -> Renewals {
    Batcher::new(MAX_BATCH)
}
