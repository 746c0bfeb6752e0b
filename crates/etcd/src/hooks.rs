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
    /// The first try of the next queueing transaction lands, and its answer is lost: the
    /// request is tried again.
    LostQueueAnswer,
    /// Every read of an election's candidates fails, for as long as it is armed.
    FailingCandidatesRead,
}

static ARMED: Mutex<Vec<(String, Fault)>> = Mutex::new(Vec::new());
static HELD: Mutex<Vec<(String, Txn)>> = Mutex::new(Vec::new());

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

/// Holds `txn` back ([`Fault::LateMove`]) until [`held`] takes it.
pub(crate) fn hold(display: &str, txn: Txn) {
    lock(&HELD).push((display.to_owned(), txn));
}

/// The transaction held back for `display`, if any.
pub(crate) fn held(display: &str) -> Option<Txn> {
    let mut held = lock(&HELD);
    let i = held.iter().position(|(d, _)| d == display)?;
    Some(held.swap_remove(i).1)
}
