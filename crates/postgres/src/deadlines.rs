//! [`Deadlines`]: the statement timeouts of one client instance, kept by one timer task
//! instead of a runtime timer per statement.
//!
//! A `tokio::time::timeout` per statement inserts a timer into the runtime's timer wheel
//! and removes it again; when its deadline is earlier than the one the driver sleeps
//! towards, the insert also wakes the thread parked on the driver (an `eventfd` write and
//! a context switch). An uncontended acquire + release sent two such timers, each the
//! earliest: measured with `strace -f -c` over 2,000 cycles, 3 of the cycle's 14 futex
//! calls and 0.6 of its 3.7 `eventfd` writes were theirs (`tests/perf.rs`,
//! `client_cost_of_one_subject`).
//!
//! Here a statement registers its deadline in a map (no timer, no wake-up) and races its
//! answer against a one-shot signal. One task sleeps until the earliest registered
//! deadline, and never longer than `period` past its last wake-up; every deadline is at
//! least `period` after its registration, so it is never earlier than the task's next
//! wake-up, and registering never needs to wake the task. The task fires each deadline
//! on time (to the timer's millisecond), and ends when it finds nothing registered, or
//! when the instance is dropped; the next registration starts it again.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::task_slot::{self, TaskSlot};

/// The registered deadlines, and whether the task that fires them runs.
#[derive(Default)]
struct State {
    next_id: u64,
    due: BTreeMap<(Instant, u64), oneshot::Sender<()>>,
    firing: TaskSlot,
}

/// Deadlines of at least `period`, fired by one task.
pub(crate) struct Deadlines {
    period: Duration,
    state: Mutex<State>,
}

/// Removes its deadline when the statement ended first (or its caller dropped it).
struct Registered<'a> {
    deadlines: &'a Deadlines,
    key: (Instant, u64),
}

impl Drop for Registered<'_> {
    fn drop(&mut self) {
        self.deadlines.state().due.remove(&self.key);
    }
}

impl Deadlines {
    /// Deadlines fired by a task that sleeps at most `period` at a time: the shortest
    /// bound [`within`](Self::within) takes without a timer of its own.
    pub(crate) fn new(period: Duration) -> Arc<Self> {
        Arc::new(Deadlines {
            period,
            state: Mutex::default(),
        })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs `fut` for at most `bound` from now: `None` when the bound ran out first (then
    /// `fut` is dropped). A bound shorter than the period, or no runtime to run the
    /// firing task on, falls back to a runtime timer of its own.
    ///
    /// Cancel safe: dropping the returned future drops `fut` and removes its deadline.
    pub(crate) async fn within<F: Future>(self: &Arc<Self>, bound: Duration, fut: F) -> Option<F::Output> {
        let Some((signal, registered)) = self.register(bound) else {
            return tokio::time::timeout(bound, fut).await.ok();
        };
        let _registered = registered;
        tokio::select! {
            biased;
            out = fut => Some(out),
            _ = signal => None,
        }
    }

    /// Registers a deadline `bound` from now; `None` when it needs a timer of its own.
    fn register(self: &Arc<Self>, bound: Duration) -> Option<(oneshot::Receiver<()>, Registered<'_>)> {
        if bound < self.period {
            return None;
        }
        let runtime = tokio::runtime::Handle::try_current().ok()?;
        let (fire, signal) = oneshot::channel();
        let (key, task) = {
            let mut state = self.state();
            let key = (Instant::now() + bound, state.next_id);
            state.next_id += 1;
            state.due.insert(key, fire);
            (key, state.firing.start())
        };
        if let Some(task) = task {
            let slot = task_slot::ends_with_its_task(self, task, |d: &Deadlines, task| d.state().firing.end(task));
            runtime.spawn(fire_due(Arc::downgrade(self), task, slot));
        }
        Some((signal, Registered { deadlines: self, key }))
    }

    /// Fires every deadline due by `now`; answers when to look next, or `None` (firing
    /// task `task` stops) when nothing is registered.
    fn fire(&self, now: Instant, task: u64) -> Option<Instant> {
        let mut state = self.state();
        while let Some(entry) = state.due.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let _ = entry.remove().send(());
        }
        match state.due.first_key_value() {
            Some(((at, _), _)) => Some((*at).min(now + self.period)),
            None => {
                state.firing.end(task);
                None
            }
        }
    }
}

/// The firing task: sleeps until the next deadline (at most a period), fires what is
/// due. Bounded: it ends when nothing is registered or the deadlines are dropped. Its
/// slot is freed however it ends — also when its runtime is dropped while it sleeps
/// ([`TaskSlot`]): the next registration then starts a task on the runtime it runs on.
async fn fire_due(deadlines: Weak<Deadlines>, task: u64, _slot: impl Send) {
    let mut next = match deadlines.upgrade() {
        Some(d) => Instant::now() + d.period,
        None => return,
    };
    loop {
        tokio::time::sleep_until(next).await;
        let Some(d) = deadlines.upgrade() else { return };
        match d.fire(Instant::now(), task) {
            Some(at) => next = at,
            None => return,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_deadline_fires_on_time_and_an_answer_first_wins() {
        let d = Deadlines::new(Duration::from_secs(1));
        let start = Instant::now();
        let never = d
            .within(Duration::from_millis(2_500), std::future::pending::<()>())
            .await;
        assert_eq!(never, None);
        assert_eq!(
            start.elapsed(),
            Duration::from_millis(2_500),
            "fired exactly at its deadline"
        );

        let quick = d.within(Duration::from_secs(1), async { 7 }).await;
        assert_eq!(quick, Some(7));
        assert!(
            d.state().due.is_empty(),
            "an answered statement leaves no deadline behind"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn deadlines_registered_later_and_earlier_each_fire_at_their_own_time() {
        let d = Deadlines::new(Duration::from_secs(1));
        let start = Instant::now();
        let long = d.within(Duration::from_secs(5), std::future::pending::<()>());
        let short = async {
            tokio::time::sleep(Duration::from_millis(300)).await;
            let r = d.within(Duration::from_secs(1), std::future::pending::<()>()).await;
            (r, start.elapsed())
        };
        let (long, (short, short_at)) = tokio::join!(async { (long.await, start.elapsed()) }, short);
        assert_eq!((short, short_at), (None, Duration::from_millis(1_300)));
        assert_eq!(long, (None, Duration::from_secs(5)));
        // Nothing is left: the task stopped; a new deadline starts it again.
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert!(!d.state().firing.is_taken());
        let again = Instant::now();
        assert_eq!(
            d.within(Duration::from_secs(1), std::future::pending::<()>()).await,
            None
        );
        assert_eq!(again.elapsed(), Duration::from_secs(1));
    }

    #[tokio::test(start_paused = true)]
    async fn a_bound_under_the_period_uses_a_timer_of_its_own() {
        let d = Deadlines::new(Duration::from_secs(1));
        let start = Instant::now();
        assert_eq!(
            d.within(Duration::from_millis(10), std::future::pending::<()>()).await,
            None
        );
        assert_eq!(start.elapsed(), Duration::from_millis(10));
    }

    #[tokio::test(start_paused = true)]
    async fn a_dropped_statement_removes_its_deadline() {
        let d = Deadlines::new(Duration::from_secs(1));
        let cut = tokio::time::timeout(
            Duration::from_millis(5),
            d.within(Duration::from_secs(1), std::future::pending::<()>()),
        )
        .await;
        assert!(cut.is_err());
        assert!(d.state().due.is_empty());
    }

    /// Review (L1): the firing task ran on a runtime that was dropped while it slept (a
    /// synchronous wrapper making a runtime per call): the instance took it for running,
    /// and no deadline on a later runtime ever fired — a statement without an answer hung.
    #[test]
    fn deadlines_fire_after_the_runtime_of_the_firing_task_was_dropped() {
        let d = Deadlines::new(Duration::from_millis(50));
        let runtime = || {
            tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .build()
                .unwrap()
        };
        let first = runtime();
        let answered = first.block_on(d.within(Duration::from_secs(1), async { 1 }));
        assert_eq!(answered, Some(1));
        drop(first); // its firing task, asleep, is dropped with it
        let outcome = runtime().block_on(async {
            let start = Instant::now();
            let bounded = tokio::time::timeout(
                Duration::from_secs(5),
                d.within(Duration::from_millis(200), std::future::pending::<()>()),
            )
            .await;
            (bounded, start.elapsed())
        });
        assert_eq!(
            outcome.0,
            Ok(None),
            "the deadline did not fire within 5 s: {:?}",
            outcome.1
        );
    }
}
