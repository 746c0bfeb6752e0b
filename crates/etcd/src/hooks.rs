//! Faults for this crate's unit tests, compiled only with `cfg(test)`: each is armed for
//! one cluster (its URL as displayed, unique to each test's server on its free ports), so
//! tests running side by side in one process never meet each other's.
//!
//! They make an outcome deterministic that a real network makes only sometimes: an answer
//! lost after its request landed, a request that lands after a later read.

use std::sync::Mutex;

use etcd_client::Txn;

/// A fault to inject.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fault {
    /// The next lease move of an own-lease grant gets no answer: its transaction is held
    /// back and reaches etcd right after the next read of the grant's key is answered (a
    /// write that lands after a read sent later).
    LateMove,
    /// As [`LateMove`](Self::LateMove), but the transaction reaches etcd right after the
    /// *second* read of the key: after a later extend's read, not the move's own.
    LaterMove,
    /// The first try of the next queueing transaction lands, and its answer is lost: the
    /// request is tried again.
    LostQueueAnswer,
    /// Every read of an election's candidates fails, for as long as it is armed.
    FailingCandidatesRead,
    /// Every election watch breaks right after etcd answers its creation, for as long as
    /// it is armed (a proxy's idle timeout, a member restart — on a quiet election).
    BreakingWatches,
}

static ARMED: Mutex<Vec<(String, Fault)>> = Mutex::new(Vec::new());
/// Held-back transactions, each with the reads still to pass before it lands.
static HELD: Mutex<Vec<(String, Txn, u32)>> = Mutex::new(Vec::new());

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Arms `fault` for the cluster `display` names.
pub(crate) fn arm(display: &str, fault: Fault) {
    lock(&ARMED).push((display.to_owned(), fault));
}

/// Disarms every `fault` armed for `display`.
pub(crate) fn disarm(display: &str, fault: Fault) {
    lock(&ARMED).retain(|(d, f)| !(d == display && *f == fault));
}

/// `true` when `fault` is armed for `display`; it stays armed.
pub(crate) fn armed(display: &str, fault: Fault) -> bool {
    lock(&ARMED).iter().any(|(d, f)| d == display && *f == fault)
}

/// `true` when `fault` was armed for `display`, which fires it: disarmed from now on.
pub(crate) fn fire(display: &str, fault: Fault) -> bool {
    let mut armed = lock(&ARMED);
    match armed.iter().position(|(d, f)| d == display && *f == fault) {
        Some(i) => {
            armed.swap_remove(i);
            true
        }
        None => false,
    }
}

/// Holds `txn` back ([`Fault::LateMove`], [`Fault::LaterMove`]) until [`held`] takes it,
/// after `reads` reads that pass it by.
pub(crate) fn hold(display: &str, txn: Txn, reads: u32) {
    lock(&HELD).push((display.to_owned(), txn, reads));
}

/// The transaction held back for `display` that lands after this read, if any.
pub(crate) fn held(display: &str) -> Option<Txn> {
    let mut held = lock(&HELD);
    let i = held.iter().position(|(d, _, _)| d == display)?;
    if held[i].2 > 0 {
        held[i].2 -= 1;
        return None;
    }
    Some(held.swap_remove(i).1)
}

/// How often each armed fault struck, per cluster (for the faults that stay armed).
static STRUCK: Mutex<Vec<(String, Fault, u32)>> = Mutex::new(Vec::new());

/// Counts one strike of `fault` for `display`.
pub(crate) fn strike(display: &str, fault: Fault) {
    let mut struck = lock(&STRUCK);
    match struck.iter_mut().find(|(d, f, _)| d == display && *f == fault) {
        Some((_, _, n)) => *n += 1,
        None => struck.push((display.to_owned(), fault, 1)),
    }
}

/// How often `fault` struck for `display`.
pub(crate) fn struck(display: &str, fault: Fault) -> u32 {
    lock(&STRUCK)
        .iter()
        .find(|(d, f, _)| d == display && *f == fault)
        .map_or(0, |(_, _, n)| *n)
}
