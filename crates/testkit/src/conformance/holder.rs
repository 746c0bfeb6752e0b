//! The holder of a key in the cases that check others are kept out, and the judgement of a
//! grant that came while it was meant to hold the key.
//!
//! A lease is the key's only while its validity lasts. A grant to someone else after that
//! breaks nothing: a lease whose validity ran out is given back (so ZooKeeper, whose node
//! would otherwise live as long as the session, honours the TTL; its validity is at most the
//! session timeout, whatever the TTL), and a holder starved past its session timeout or its
//! renewals' deadline on a loaded machine has lost the key for real. A grant while the
//! holder's validity had not ended — two valid leases of one key at one instant — breaks
//! mutual exclusion, and fails the test.

use fencelock_core::{Lease, LockOptions};
use tokio::time::Instant;

use super::LONG_TTL;

/// The holder's options: the long TTL, renewed in the background, so that its validity
/// (capped by some backends at their session timeout) covers the whole case and the check
/// below stays strict throughout, not only for the first validity.
pub(crate) fn holder_options() -> LockOptions {
    LockOptions::new().with_ttl(LONG_TTL).with_auto_renew(true)
}

/// Judges `granted`, a lease of `held`'s key handed out at `granted_at` (read at once when
/// the grant came back) while the case meant `held` to keep the key.
///
/// Panics (a mutual-exclusion violation) if `held`'s validity had not ended by
/// `granted_at`: whatever the grant's own send instant, both leases were valid then.
/// Returns when `held`'s validity had ended: the key was free, the grant is right, and the
/// case has lost its holder (it takes the key again or tries again). The holder's
/// `valid_until` is read after `granted_at`, so a renewal that succeeded meanwhile (the
/// backend vouching for the old holder while the new one holds) counts as a violation too.
pub(crate) fn judge_second_grant(held: &Lease, granted: &Lease, granted_at: Instant, what: &str) {
    let holder = held.status();
    if holder.valid_until > granted_at {
        panic!(
            "{what}: a held key was granted while its holder's lease was still valid for {:?} \
             (mutual exclusion broken): holder {held:?}, granted {granted:?}",
            holder.valid_until - granted_at
        );
    }
    eprintln!(
        "{what}: the key was granted {:?} after its holder's validity ended ({:?}, token {}): \
         not a violation",
        granted_at - holder.valid_until,
        holder.state,
        held.token()
    );
}
