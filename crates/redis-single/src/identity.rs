//! Which server a node's connection reaches now: its `run_id`, as last read, and when to
//! read it again.
//!
//! Redlock ranks a contended key's primary node by the servers' `run_id`s, so every
//! client must come to know each server's current one: clients connected before a
//! restart (a new `run_id`) as well as after it, and a client that could not read it when
//! it connected (a node paused or slow then). A read is one `INFO server`, started in the
//! background: after a request found the connection dropped (a restart drops it), and
//! when the identity is wanted while unknown. Reads that fail back off (1 s, doubling, up
//! to 30 s), so a user refused `INFO` is asked about once every 30 s, not on every call.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// The first pause after a failed read; it doubles with each failure in a row.
const FIRST_PAUSE: Duration = Duration::from_secs(1);
/// The longest pause between reads that keep failing.
const LONGEST_PAUSE: Duration = Duration::from_secs(30);

/// A node's server identity and its reads (see the module's docs).
#[derive(Debug, Default)]
pub(crate) struct Identity {
    current: Mutex<Option<String>>,
    /// A read is under way (one at a time).
    reading: AtomicBool,
    /// Failed reads in a row, and the instant before which no read starts unless forced.
    backoff: Mutex<(u32, Option<Instant>)>,
}

impl Identity {
    /// The `run_id` as last read, if any.
    pub(crate) fn get(&self) -> Option<String> {
        self.current.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Whether an unforced read must wait: the pause after the last failure is not over.
    fn paused(&self) -> bool {
        let backoff = self.backoff.lock().unwrap_or_else(|p| p.into_inner());
        backoff.1.is_some_and(|at| Instant::now() < at)
    }

    /// Whether [`start`](Self::start) would claim a read now (a cheap look, no claim).
    pub(crate) fn may_start(&self, forced: bool) -> bool {
        !self.reading.load(Ordering::Acquire) && (forced || !self.paused())
    }

    /// Claims a read when none is under way and, unless `forced` (the connection
    /// dropped), the pause after the last failure is over. The claim ends with
    /// [`Reading::finish`]; dropped unfinished (a read cut off), it counts as failed.
    pub(crate) fn start(&self, forced: bool) -> Option<Reading<'_>> {
        if !forced && self.paused() {
            return None;
        }
        (!self.reading.swap(true, Ordering::AcqRel)).then(|| Reading {
            identity: self,
            done: false,
        })
    }

    /// Records a read's outcome (a claimed one's, or the connect's own): `Some` replaces
    /// the identity and ends the back-off; `None` keeps the identity as it was and
    /// pauses the next unforced read.
    pub(crate) fn record(&self, read: Option<String>) {
        let mut backoff = self.backoff.lock().unwrap_or_else(|p| p.into_inner());
        match read {
            Some(id) => {
                *self.current.lock().unwrap_or_else(|p| p.into_inner()) = Some(id);
                *backoff = (0, None);
            }
            None => {
                let failures = backoff.0.saturating_add(1);
                let pause = FIRST_PAUSE
                    .saturating_mul(1 << (failures - 1).min(5))
                    .min(LONGEST_PAUSE);
                *backoff = (failures, Some(Instant::now() + pause));
            }
        }
    }
}

/// A claimed read of the identity ([`Identity::start`]).
#[derive(Debug)]
pub(crate) struct Reading<'a> {
    identity: &'a Identity,
    done: bool,
}

impl Reading<'_> {
    /// Records the read's outcome (see [`Identity::record`]) and ends the claim.
    pub(crate) fn finish(self, read: Option<String>) {
        self.identity.record(read);
        self.recorded();
    }

    /// Ends the claim of a read whose outcome was recorded otherwise (a connect records
    /// its own read), so that it counts once.
    pub(crate) fn recorded(mut self) {
        self.done = true;
        self.identity.reading.store(false, Ordering::Release);
    }
}

impl Drop for Reading<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.identity.record(None);
            self.identity.reading.store(false, Ordering::Release);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn failed_reads_back_off_and_a_dropped_connection_forces_one() {
        let id = Identity::default();
        let first = id.start(false).expect("the first read starts");
        assert!(id.start(true).is_none() && !id.may_start(true), "one read at a time");
        first.finish(None);
        assert!(
            !id.may_start(false) && id.start(false).is_none(),
            "paused after a failure"
        );
        assert!(id.may_start(true));
        id.start(true).expect("a dropped connection reads at once").finish(None);
        tokio::time::advance(Duration::from_millis(1500)).await;
        assert!(id.start(false).is_none(), "the second pause is 2 s");
        tokio::time::advance(Duration::from_millis(600)).await;
        id.start(false).expect("after the pause").finish(Some("r1".into()));
        assert_eq!(id.get().as_deref(), Some("r1"));
        let cut = id.start(false).expect("a success ends the back-off");
        drop(cut); // a read cut off counts as failed and ends the claim
        assert_eq!(id.get().as_deref(), Some("r1"), "a failed read keeps the identity");
        assert!(id.start(false).is_none(), "paused after the cut-off read");
        for _ in 0..10 {
            id.start(true).expect("forced").finish(None);
        }
        tokio::time::advance(LONGEST_PAUSE - Duration::from_millis(1)).await;
        assert!(id.start(false).is_none(), "the pause grows to 30 s");
        tokio::time::advance(Duration::from_millis(1)).await;
        assert!(id.start(false).is_some(), "and no further");
    }

    /// A read whose outcome the connect recorded itself (`settle_identity` connecting a
    /// node) counts once: the first pause is 1 s, not the 2 s of two failures.
    #[tokio::test(start_paused = true)]
    async fn a_read_recorded_by_the_connect_counts_once() {
        let id = Identity::default();
        let reading = id.start(false).expect("a read starts");
        id.record(None); // the connect's own INFO failed
        reading.recorded();
        tokio::time::advance(FIRST_PAUSE).await;
        assert!(id.start(false).is_some(), "paused as after two failures");
    }
}
