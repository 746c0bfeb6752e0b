//! One timer per tokio runtime that wakes each lease when its renewal is due or its
//! validity runs out.
//!
//! Why not a task per lease: spawning one at every grant and aborting it at every release
//! costs two cross-thread wake-ups per lock cycle — about 7 % of an uncontended Redis
//! acquire + release on loopback (`fencelock bench`, 2-core machine) — for a task that,
//! for most leases (held for less than a third of their TTL), never does anything. Here a
//! grant inserts one entry into a map and a release removes it; the timer task is woken
//! only when an entry is due earlier than the instant it already sleeps until, so a steady
//! stream of short-held leases wakes it about once per renewal period, not once per lease.
//!
//! The timer runs on tokio's clock (so tests on a paused clock drive it), in the runtime
//! that made the lease: runtimes are told apart by [`tokio::runtime::Handle::id`], and a
//! timer whose runtime has shut down is replaced (an id can be reused after that).

use std::collections::{BTreeMap, HashMap};
use std::hash::{BuildHasherDefault, Hasher};
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use tokio::runtime::{Handle, Id};
use tokio::sync::Notify;
use tokio::time::Instant;

/// Something a [`Timer`] wakes when its instant comes: it does its work (quickly: it runs
/// on the timer task; anything slow is spawned) and schedules itself again if it needs to.
/// A panic in [`due`](Due::due) is caught and logged (ERROR) by the timer task, which goes
/// on; the entry is not scheduled again unless it did so before panicking.
pub(super) trait Due: Send + Sync + 'static {
    /// The instant came.
    fn due(self: Arc<Self>);
}

/// A handle on the timer of one runtime.
#[derive(Clone)]
pub(super) struct Timer {
    state: Arc<State>,
}

struct State {
    entries: Mutex<Entries>,
    /// Wakes the timer task when an entry is due before the instant it sleeps until.
    wake: Notify,
    /// Cleared when the timer task is dropped (its runtime shut down).
    alive: AtomicBool,
}

#[derive(Default)]
struct Entries {
    /// What is due when, keyed by (instant, entry id) so that equal instants coexist.
    by_time: BTreeMap<(Instant, u64), Weak<dyn Due>>,
    /// The one instant each entry is scheduled at (an entry has at most one).
    by_entry: HashMap<u64, Instant, BuildHasherDefault<EntryHasher>>,
    /// When the timer task wakes next (`None`: not before it is notified).
    armed_for: Option<Instant>,
}

/// Hashes an entry id — a number this module hands out in sequence, never an outsider's
/// input — by one multiplication instead of SipHash: a grant and its release each hash
/// one id, and SipHash was about 600 instructions of an uncontended Redis cycle
/// (callgrind).
#[derive(Default)]
struct EntryHasher(u64);

impl Hasher for EntryHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }

    fn write_u64(&mut self, id: u64) {
        // Fibonacci hashing: spreads sequential ids over the high bits hashbrown reads.
        self.0 = (self.0 ^ id).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

/// Sources of entry ids, process-wide.
static NEXT_ENTRY: AtomicU64 = AtomicU64::new(1);

/// The timers of the runtimes seen so far (a few at most; dead ones are dropped on lookup).
static TIMERS: Mutex<Vec<(Id, Weak<State>)>> = Mutex::new(Vec::new());

thread_local! {
    /// The last timer this thread used, so a lookup is one comparison in the usual case.
    static CACHED: std::cell::RefCell<Option<(Id, Timer)>> = const { std::cell::RefCell::new(None) };
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Timer {
    /// The timer of the runtime this is called in, started on first use; `None` outside a
    /// tokio runtime.
    #[cfg(test)]
    pub(super) fn current() -> Option<Timer> {
        Handle::try_current().ok().map(|h| Timer::of(&h))
    }

    /// The timer of the runtime `handle` belongs to, started on first use.
    pub(super) fn of(handle: &Handle) -> Timer {
        let id = handle.id();
        let cached = CACHED.with(|c| {
            c.borrow()
                .as_ref()
                .filter(|(cid, t)| *cid == id && t.state.alive.load(Ordering::Acquire))
                .map(|(_, t)| t.clone())
        });
        if let Some(t) = cached {
            return t;
        }
        let timer = {
            let mut timers = lock(&TIMERS);
            timers.retain(|(_, w)| w.upgrade().is_some_and(|s| s.alive.load(Ordering::Acquire)));
            match timers.iter().find(|(rid, _)| *rid == id).and_then(|(_, w)| w.upgrade()) {
                Some(state) => Timer { state },
                None => {
                    let state = Arc::new(State {
                        entries: Mutex::default(),
                        wake: Notify::new(),
                        alive: AtomicBool::new(true),
                    });
                    let alive = AliveWhileRunning(Arc::clone(&state));
                    handle.spawn(run(Arc::clone(&state), alive));
                    timers.push((id, Arc::downgrade(&state)));
                    Timer { state }
                }
            }
        };
        CACHED.with(|c| *c.borrow_mut() = Some((id, timer.clone())));
        timer
    }

    /// A fresh entry id (an entry is one lease).
    pub(super) fn entry() -> u64 {
        NEXT_ENTRY.fetch_add(1, Ordering::Relaxed)
    }

    /// Wakes `what` at `at`, replacing the instant `entry` was scheduled at before.
    pub(super) fn schedule(&self, entry: u64, at: Instant, what: Weak<dyn Due>) {
        let mut e = lock(&self.state.entries);
        if let Some(old) = e.by_entry.remove(&entry) {
            e.by_time.remove(&(old, entry));
        }
        self.insert(e, entry, at, what);
    }

    /// [`schedule`](Self::schedule), unless `entry` is scheduled already — checked and
    /// done under one lock, so an instant the entry's owner sets meanwhile (from another
    /// thread) is never replaced.
    fn schedule_unless_scheduled(&self, entry: u64, at: Instant, what: Weak<dyn Due>) {
        let e = lock(&self.state.entries);
        if !e.by_entry.contains_key(&entry) {
            self.insert(e, entry, at, what);
        }
    }

    /// Schedules `entry` (not scheduled now) at `at` under the held lock, and wakes the
    /// timer task if that is sooner than it sleeps until.
    fn insert(&self, mut e: MutexGuard<'_, Entries>, entry: u64, at: Instant, what: Weak<dyn Due>) {
        e.by_entry.insert(entry, at);
        e.by_time.insert((at, entry), what);
        if e.armed_for.is_none_or(|armed| at < armed) {
            e.armed_for = Some(at);
            drop(e);
            self.state.wake.notify_one();
        }
    }

    /// Forgets `entry` (nothing happens if it was not scheduled).
    pub(super) fn cancel(&self, entry: u64) {
        let mut e = lock(&self.state.entries);
        if let Some(old) = e.by_entry.remove(&entry) {
            e.by_time.remove(&(old, entry));
        }
    }

    /// How many entries are scheduled (for tests).
    #[cfg(test)]
    pub(super) fn scheduled(&self) -> usize {
        lock(&self.state.entries).by_entry.len()
    }
}

/// Clears `alive` when the timer task is dropped, i.e. when its runtime shuts down.
struct AliveWhileRunning(Arc<State>);

impl Drop for AliveWhileRunning {
    fn drop(&mut self) {
        self.0.alive.store(false, Ordering::Release);
    }
}

/// How soon an entry whose wake-up panicked is woken again (unless it scheduled itself).
/// A wake-up that panics each time is retried at this pace for as long as its lease
/// lives, and logged each time: loud, bounded by the lease's life.
const PANICKED_RETRY: Duration = Duration::from_millis(100);

/// The timer task: wakes what is due, then sleeps until the next entry or a notification.
/// It lives as long as its runtime (asleep when nothing is scheduled).
async fn run(state: Arc<State>, _alive: AliveWhileRunning) {
    loop {
        let now = Instant::now();
        let (due, next) = {
            let mut e = lock(&state.entries);
            let mut due = Vec::new();
            while let Some(entry) = e.by_time.first_entry() {
                let (at, id) = *entry.key();
                if at > now {
                    break;
                }
                due.push((id, entry.remove()));
                e.by_entry.remove(&id);
            }
            let next = e.by_time.keys().next().map(|(at, _)| *at);
            e.armed_for = next;
            (due, next)
        };
        for (id, weak) in due {
            if let Some(what) = weak.upgrade() {
                // A panic here (a metrics recorder, a tracing layer, a backend's `cleanup`)
                // must not end this task: every lease of the runtime holds this timer and
                // would go on scheduling into a dead one, never woken again. The entry
                // that panicked is woken again after `PANICKED_RETRY` unless it scheduled
                // itself before panicking: otherwise that lease was neither renewed nor
                // marked lost at its expiry (review of the lease machinery, finding 6).
                if let Err(panic) = std::panic::catch_unwind(AssertUnwindSafe(|| what.due())) {
                    tracing::error!(
                        panic = crate::panic::text(&*panic).unwrap_or("(not text)"),
                        "a lease's timer wake-up panicked; the lease timer goes on and wakes that lease again"
                    );
                    let timer = Timer {
                        state: Arc::clone(&state),
                    };
                    timer.schedule_unless_scheduled(id, Instant::now() + PANICKED_RETRY, weak);
                }
            }
        }
        match next {
            Some(at) => {
                tokio::select! {
                    _ = state.wake.notified() => {}
                    _ = tokio::time::sleep_until(at) => {}
                }
            }
            None => state.wake.notified().await,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use std::sync::atomic::AtomicUsize;
    use std::time::Duration;

    use super::*;

    struct Counter(AtomicUsize);

    impl Due for Counter {
        fn due(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn counter() -> Arc<Counter> {
        Arc::new(Counter(AtomicUsize::new(0)))
    }

    fn weak(c: &Arc<Counter>) -> Weak<dyn Due> {
        let c: Arc<dyn Due> = Arc::clone(c) as Arc<dyn Due>;
        Arc::downgrade(&c)
    }

    #[tokio::test(start_paused = true)]
    async fn an_entry_fires_once_at_its_instant_and_a_rescheduled_one_at_the_new_instant() {
        let timer = Timer::current().expect("in a runtime");
        let (a, b) = (counter(), counter());
        let (ea, eb) = (Timer::entry(), Timer::entry());
        let start = Instant::now();
        timer.schedule(ea, start + Duration::from_secs(2), weak(&a));
        timer.schedule(eb, start + Duration::from_secs(5), weak(&b));
        // Moved earlier: the sleeping timer must be woken for it.
        timer.schedule(eb, start + Duration::from_secs(1), weak(&b));
        tokio::time::sleep_until(start + Duration::from_millis(1500)).await;
        assert_eq!((a.0.load(Ordering::SeqCst), b.0.load(Ordering::SeqCst)), (0, 1));
        tokio::time::sleep_until(start + Duration::from_secs(10)).await;
        assert_eq!(
            (a.0.load(Ordering::SeqCst), b.0.load(Ordering::SeqCst)),
            (1, 1),
            "an entry fired twice, or its old instant stayed scheduled"
        );
        assert_eq!(timer.scheduled(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_cancelled_entry_never_fires() {
        let timer = Timer::current().expect("in a runtime");
        let a = counter();
        let e = Timer::entry();
        timer.schedule(e, Instant::now() + Duration::from_secs(1), weak(&a));
        timer.cancel(e);
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert_eq!(a.0.load(Ordering::SeqCst), 0);
        assert_eq!(timer.scheduled(), 0);
    }

    /// Review of the lease machinery (F4): a `Due` that panicked (a lease's metrics
    /// recorder, a tracing layer, a backend's `cleanup`) ended the timer task, and every
    /// lease already holding this timer went on scheduling into it: nothing was woken
    /// again — the entry due with it, nor any later one. Failed before: neither fired.
    #[tokio::test(start_paused = true)]
    async fn a_due_that_panics_does_not_stop_the_timer() {
        struct PanicsOnce(AtomicBool, AtomicUsize);
        impl Due for PanicsOnce {
            fn due(self: Arc<Self>) {
                self.1.fetch_add(1, Ordering::SeqCst);
                if self.0.swap(false, Ordering::SeqCst) {
                    panic!("a Due panicked");
                }
            }
        }
        let timer = Timer::current().expect("in a runtime");
        let panicking = Arc::new(PanicsOnce(AtomicBool::new(true), AtomicUsize::new(0)));
        let panics: Arc<dyn Due> = Arc::clone(&panicking) as Arc<dyn Due>;
        let (same, later) = (counter(), counter());
        let start = Instant::now();
        // Entry ids order equal instants: the panicking one first.
        timer.schedule(Timer::entry(), start + Duration::from_secs(1), Arc::downgrade(&panics));
        timer.schedule(Timer::entry(), start + Duration::from_secs(1), weak(&same));
        timer.schedule(Timer::entry(), start + Duration::from_secs(2), weak(&later));
        tokio::time::sleep_until(start + Duration::from_secs(3)).await;
        assert_eq!(
            (same.0.load(Ordering::SeqCst), later.0.load(Ordering::SeqCst)),
            (1, 1),
            "entries due with or after the panicking one never fired"
        );
        assert!(timer.state.alive.load(Ordering::Acquire), "the timer task ended");
        // And the entry that panicked is woken again (review, finding 6: it was not, and
        // its lease was neither renewed nor marked lost at its expiry).
        assert_eq!(
            panicking.1.load(Ordering::SeqCst),
            2,
            "the entry whose wake-up panicked was not woken again"
        );
    }

    /// The retry of a wake-up that panicked never replaces an instant the entry's owner
    /// set meanwhile (a review: the check and the schedule were two steps, and a renewal
    /// finishing on another thread between them had its instant pushed back).
    #[tokio::test(start_paused = true)]
    async fn the_retry_after_a_panic_keeps_an_instant_set_meanwhile() {
        let timer = Timer::current().expect("in a runtime");
        let a = counter();
        let e = Timer::entry();
        let soon = Instant::now() + Duration::from_millis(10);
        timer.schedule(e, soon, weak(&a));
        timer.schedule_unless_scheduled(e, Instant::now() + PANICKED_RETRY, weak(&a));
        assert_eq!(lock(&timer.state.entries).by_entry.get(&e), Some(&soon));
        timer.cancel(e);
        timer.schedule_unless_scheduled(e, soon, weak(&a));
        assert_eq!(
            lock(&timer.state.entries).by_entry.get(&e),
            Some(&soon),
            "not scheduled"
        );
    }

    #[test]
    fn each_runtime_gets_a_timer_of_its_own_and_a_dead_one_is_replaced() {
        let rt = || {
            tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .build()
                .expect("runtime")
        };
        let (one, two) = (rt(), rt());
        let t1 = one.block_on(async { Timer::current().expect("timer") });
        let t2 = two.block_on(async { Timer::current().expect("timer") });
        assert!(!Arc::ptr_eq(&t1.state, &t2.state), "two runtimes shared a timer");
        let again = one.block_on(async { Timer::current().expect("timer") });
        assert!(Arc::ptr_eq(&t1.state, &again.state), "one runtime got two timers");
        drop(one);
        assert!(
            !t1.state.alive.load(Ordering::Acquire),
            "a shut-down runtime's timer still counts as alive"
        );
        let three = rt();
        let t3 = three.block_on(async { Timer::current().expect("timer") });
        assert!(!Arc::ptr_eq(&t1.state, &t3.state), "a dead timer was handed out");
        // And it works.
        let a = counter();
        three.block_on(async {
            t3.schedule(Timer::entry(), Instant::now(), weak(&a));
            tokio::time::sleep(Duration::from_millis(10)).await;
        });
        assert_eq!(a.0.load(Ordering::SeqCst), 1);
    }
}
