//! Metrics of locks through the [`metrics`] facade: [`Metered`] wraps any
//! [`DistributedLock`] and records what its callers and leases do.
//!
//! Nothing is exported until the application installs a recorder (for example
//! `metrics-exporter-prometheus`, as `fencelock run --metrics-addr` does); without one every
//! call below is a no-op of the facade. `fencelock::connect` wraps every backend it builds.
//!
//! | metric | kind | labels | what |
//! |---|---|---|---|
//! | `fencelock_acquire_duration_seconds` | histogram | backend, outcome | one `try_acquire`: the latency of an attempt (outcome `acquired`, `busy`, `error`, `cancelled`) |
//! | `fencelock_wait_seconds` | histogram | backend, outcome | one `acquire`: from the call to the grant or the give-up (`acquired`, `timeout`, `error`, `cancelled`) |
//! | `fencelock_hold_seconds` | histogram | backend, end | from the grant to the end of the lease (`released`, `lost`) |
//! | `fencelock_grants_total` | counter | backend | grants handed out |
//! | `fencelock_timeouts_total` | counter | backend | `acquire` calls that waited for all of `wait` |
//! | `fencelock_leases_lost_total` | counter | backend, reason | leases lost (`expired`, `not_held`, `renewal_failed`, `backend`) |
//! | `fencelock_renewals_total` | counter | backend | successful background renewals |
//! | `fencelock_renewal_failures_total` | counter | backend | failed background renewal attempts (retried while validity remains) |
//! | `fencelock_errors_total` | counter | backend, op, kind | errors returned by `try_acquire`/`acquire`, by [`LockError`] kind |
//! | `fencelock_leases_held` | gauge | backend | leases live right now in this process |
//!
//! Every metric carries `backend` (the URL scheme, e.g. `redis`). The lock's key is a label
//! only when asked for with [`Metered::with_key_label`]: keys are unbounded in number (one
//! per invoice, per job…) and each value is a new time series in the monitoring system.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use async_trait::async_trait;
use metrics::{counter, gauge, histogram, Gauge, Label, SharedString};

use crate::error::{LockError, LostReason, Result};
use crate::guarantees::Guarantees;
use crate::lease::Lease;
use crate::lock::DistributedLock;
use crate::options::LockOptions;

/// A [`DistributedLock`] that records metrics of `L` (see the module documentation).
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> fencelock::Result<()> {
/// use fencelock::{memory::MemoryLock, metrics::Metered, DistributedLock, LockOptions};
/// let locks = Metered::new(MemoryLock::new(), "memory").with_key_label(true);
/// let lease = locks.acquire("nightly-report", &LockOptions::new()).await?;
/// lease.release().await?;
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct Metered<L> {
    inner: L,
    /// The `backend` label, made once: its value is shared (`Arc<str>`), so a copy per
    /// metric is a reference count, not a string.
    backend: Label,
    key_label: bool,
}

impl<L: DistributedLock> Metered<L> {
    /// Wraps `inner`; `backend` is the value of the `backend` label (the URL scheme).
    pub fn new(inner: L, backend: impl Into<Arc<str>>) -> Self {
        Metered {
            inner,
            backend: Label::new("backend", SharedString::from(backend.into())),
            key_label: false,
        }
    }

    /// Adds the key as a label `key` to every per-lock metric. Off by default: only for a
    /// small, fixed set of keys (see the module documentation on cardinality).
    pub fn with_key_label(mut self, on: bool) -> Self {
        self.key_label = on;
        self
    }

    /// The wrapped lock.
    pub fn inner(&self) -> &L {
        &self.inner
    }

    /// The labels of a call on `key`, with room for one more (the outcome, op or end each
    /// metric adds): a metric's key takes its own `Vec`, so each is made at its size once.
    fn labels(&self, key: &str) -> Vec<Label> {
        let mut labels = Vec::with_capacity(3);
        labels.push(self.backend.clone());
        if self.key_label {
            labels.push(Label::new("key", key.to_owned()));
        }
        labels
    }

    /// Records a grant and attaches the labels to the lease, which counts its renewals and
    /// loss and, when it ends (released or lost), the held gauge and the hold time. No task
    /// follows the lease: that was a spawn and a wake-up per lock cycle.
    fn granted(&self, lease: &Lease, labels: Vec<Label>) {
        counter!("fencelock_grants_total", labels.clone()).increment(1);
        let held = gauge!("fencelock_leases_held", labels.clone());
        if !lease.metrics().attach(labels, held) {
            return;
        }
        // Ended before the labels were attached: the lease could not record it itself.
        let state = lease.watch().borrow().state.clone();
        if !state.is_live() {
            lease
                .metrics()
                .ended(matches!(state, crate::lease::LeaseState::Lost(_)));
        }
    }
}

/// Records the outcome of one call when it ends — or `cancelled` when its future is dropped.
struct Call {
    name: &'static str,
    labels: Vec<Label>,
    start: Instant,
    done: bool,
}

impl Call {
    fn new(name: &'static str, labels: Vec<Label>) -> Self {
        Call {
            name,
            labels,
            start: Instant::now(),
            done: false,
        }
    }

    /// Records the call's outcome; called once (the drop records `cancelled` only when
    /// nothing was recorded), so the labels are taken, not copied.
    fn finish(&mut self, outcome: &'static str) {
        self.done = true;
        let mut labels = std::mem::take(&mut self.labels);
        labels.push(Label::new("outcome", outcome));
        histogram!(self.name, labels).record(self.start.elapsed().as_secs_f64());
    }
}

impl Drop for Call {
    fn drop(&mut self) {
        if !self.done {
            self.finish("cancelled");
        }
    }
}

fn error(labels: &[Label], op: &'static str, e: &LockError) {
    let mut labels = with_room(labels, 2);
    labels.push(Label::new("op", op));
    labels.push(Label::new("kind", error_kind(e)));
    counter!("fencelock_errors_total", labels).increment(1);
}

/// A copy of `labels` with room for `more` (pushed next, without growing the `Vec` again).
fn with_room(labels: &[Label], more: usize) -> Vec<Label> {
    let mut out = Vec::with_capacity(labels.len() + more);
    out.extend_from_slice(labels);
    out
}

/// The `kind` label of an error: its variant, in snake case.
pub fn error_kind(e: &LockError) -> &'static str {
    match e {
        LockError::InvalidInput(_) => "invalid_input",
        LockError::InvalidConfig { .. } => "invalid_config",
        LockError::FeatureDisabled { .. } => "feature_disabled",
        LockError::Timeout { .. } => "timeout",
        LockError::Unavailable { .. } => "unavailable",
        LockError::LeaseLost { .. } => "lease_lost",
        LockError::GuaranteeNotMet { .. } => "guarantee_not_met",
        LockError::Fenced(_) => "fenced",
        LockError::Closed => "closed",
        LockError::Backend { .. } => "backend",
    }
}

/// The `reason` label of a lost lease.
pub fn lost_reason(reason: &LostReason) -> &'static str {
    match reason {
        LostReason::Expired => "expired",
        LostReason::NotHeld => "not_held",
        LostReason::RenewalFailed(_) => "renewal_failed",
        LostReason::Backend(_) => "backend",
    }
}

#[async_trait]
impl<L: DistributedLock> DistributedLock for Metered<L> {
    async fn try_acquire(&self, key: &str, opts: &LockOptions) -> Result<Option<Lease>> {
        let mut call = Call::new("fencelock_acquire_duration_seconds", self.labels(key));
        let result = self.inner.try_acquire(key, opts).await;
        match &result {
            Ok(Some(lease)) => {
                call.finish("acquired");
                self.granted(lease, self.labels(key));
            }
            Ok(None) => call.finish("busy"),
            Err(e) => {
                call.finish("error");
                error(&self.labels(key), "try_acquire", e);
            }
        }
        result
    }

    async fn acquire(&self, key: &str, opts: &LockOptions) -> Result<Lease> {
        let mut call = Call::new("fencelock_wait_seconds", self.labels(key));
        let result = self.inner.acquire(key, opts).await;
        match &result {
            Ok(lease) => {
                call.finish("acquired");
                self.granted(lease, self.labels(key));
            }
            Err(LockError::Timeout { .. }) => {
                call.finish("timeout");
                counter!("fencelock_timeouts_total", self.labels(key)).increment(1);
            }
            Err(e) => {
                call.finish("error");
                error(&self.labels(key), "acquire", e);
            }
        }
        result
    }

    fn guarantees(&self) -> Guarantees {
        self.inner.guarantees()
    }

    fn describe(&self) -> String {
        self.inner.describe()
    }

    async fn close(&self) -> Result<()> {
        self.inner.close().await
    }
}

/// The labels a lease's renewals and loss are counted under; nothing is counted unless the
/// lease came through [`Metered`].
#[derive(Debug, Default)]
pub(crate) struct LeaseMetrics {
    attached: OnceLock<Attached>,
}

#[derive(Debug)]
struct Attached {
    labels: Vec<Label>,
    /// `fencelock_leases_held`, raised at attach and lowered when the lease ends.
    held: Gauge,
    since: Instant,
    /// Set when the end was recorded (once: a loss followed by the release is one end).
    ended: AtomicBool,
}

impl LeaseMetrics {
    /// Starts counting under `labels` and raises `held`; `false` if attached already.
    fn attach(&self, labels: Vec<Label>, held: Gauge) -> bool {
        let attached = self
            .attached
            .set(Attached {
                labels,
                held: held.clone(),
                since: Instant::now(),
                ended: AtomicBool::new(false),
            })
            .is_ok();
        if attached {
            held.increment(1.0);
        }
        attached
    }

    /// The lease ended (`lost`, or released by its holder): lowers the held gauge and
    /// records the hold time, once.
    pub(crate) fn ended(&self, lost: bool) {
        let Some(a) = self.attached.get() else { return };
        if a.ended.swap(true, Ordering::AcqRel) {
            return;
        }
        a.held.decrement(1.0);
        let mut labels = with_room(&a.labels, 1);
        labels.push(Label::new("end", if lost { "lost" } else { "released" }));
        histogram!("fencelock_hold_seconds", labels).record(a.since.elapsed().as_secs_f64());
    }

    /// A background renewal succeeded.
    pub(crate) fn renewed(&self) {
        if let Some(a) = self.attached.get() {
            counter!("fencelock_renewals_total", a.labels.clone()).increment(1);
        }
    }

    /// A background renewal attempt failed.
    pub(crate) fn renewal_failed(&self) {
        if let Some(a) = self.attached.get() {
            counter!("fencelock_renewal_failures_total", a.labels.clone()).increment(1);
        }
    }

    /// The lease was lost (called once, when it moves from live to lost).
    pub(crate) fn lost(&self, reason: &LostReason) {
        if let Some(a) = self.attached.get() {
            let mut labels = with_room(&a.labels, 1);
            labels.push(Label::new("reason", lost_reason(reason)));
            counter!("fencelock_leases_lost_total", labels).increment(1);
        }
        self.ended(true);
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::Mutex;
    use std::time::Duration;

    use metrics::{Counter, Gauge, Histogram, Key, KeyName, Metadata, Recorder, SharedString, Unit};

    use super::*;
    use crate::memory::MemoryLock;

    /// A recorder that keeps every value by `name{label=value,…}`: counters and gauges their
    /// value, histograms their number of observations.
    #[derive(Default)]
    struct Sink {
        values: Arc<Mutex<BTreeMap<String, f64>>>,
    }

    struct Cell {
        name: String,
        values: Arc<Mutex<BTreeMap<String, f64>>>,
    }

    impl Cell {
        fn change(&self, f: impl FnOnce(&mut f64)) {
            let mut values = self.values.lock().unwrap_or_else(|p| p.into_inner());
            f(values.entry(self.name.clone()).or_default());
        }
    }

    impl metrics::CounterFn for Cell {
        fn increment(&self, value: u64) {
            self.change(|v| *v += value as f64);
        }
        fn absolute(&self, value: u64) {
            self.change(|v| *v = value as f64);
        }
    }

    impl metrics::GaugeFn for Cell {
        fn increment(&self, value: f64) {
            self.change(|v| *v += value);
        }
        fn decrement(&self, value: f64) {
            self.change(|v| *v -= value);
        }
        fn set(&self, value: f64) {
            self.change(|v| *v = value);
        }
    }

    impl metrics::HistogramFn for Cell {
        fn record(&self, _: f64) {
            self.change(|v| *v += 1.0);
        }
    }

    impl Sink {
        fn cell(&self, key: &Key) -> Arc<Cell> {
            let mut labels: Vec<String> = key.labels().map(|l| format!("{}={}", l.key(), l.value())).collect();
            labels.sort();
            Arc::new(Cell {
                name: format!("{}{{{}}}", key.name(), labels.join(",")),
                values: Arc::clone(&self.values),
            })
        }

        fn get(&self, name: &str) -> f64 {
            let values = self.values.lock().unwrap_or_else(|p| p.into_inner());
            values
                .get(name)
                .copied()
                .unwrap_or_else(|| panic!("no {name} in {values:?}"))
        }
    }

    impl Recorder for Sink {
        fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
        fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
        fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
        fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
            Counter::from_arc(self.cell(key))
        }
        fn register_gauge(&self, key: &Key, _: &Metadata<'_>) -> Gauge {
            Gauge::from_arc(self.cell(key))
        }
        fn register_histogram(&self, key: &Key, _: &Metadata<'_>) -> Histogram {
            Histogram::from_arc(self.cell(key))
        }
    }

    /// Runs `f` on a current-thread runtime with `sink` as the recorder of this thread (the
    /// lease watchers are spawned on that same thread, so they record into it too).
    fn recorded<F: std::future::Future<Output = ()>>(sink: &Sink, f: impl FnOnce() -> F) {
        // Paused clock: the TTLs and waits below are tens of milliseconds, which a loaded
        // machine overran (the timed acquire found the 30 ms lease already expired).
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()
            .expect("runtime");
        metrics::with_local_recorder(sink, || rt.block_on(f()));
    }

    #[test]
    fn grants_holds_losses_timeouts_and_cancels_are_recorded() {
        let sink = Sink::default();
        recorded(&sink, || async {
            let locks = Metered::new(MemoryLock::new(), "memory");
            let short = LockOptions::new()
                .with_ttl(Duration::from_millis(30))
                .with_wait(Duration::from_millis(20))
                .with_auto_renew(false);
            // Granted, then lost by expiry (no renewal).
            let lease = locks.acquire("k", &short).await.expect("acquire");
            // Busy while held: a try is `busy`, a wait times out.
            assert!(locks.try_acquire("k", &short).await.expect("try").is_none());
            assert!(matches!(
                locks.acquire("k", &short).await,
                Err(LockError::Timeout { .. })
            ));
            let reason = lease.lost().await;
            assert_eq!(reason, LostReason::Expired);
            drop(lease);
            // A second lease, renewed in the background, then released.
            let renewed = LockOptions::new().with_ttl(Duration::from_millis(30));
            let lease = locks.acquire("k2", &renewed).await.expect("acquire");
            let mut status = lease.watch();
            status.borrow_and_update();
            let renewal = tokio::time::timeout(Duration::from_secs(5), status.changed()).await;
            assert!(matches!(renewal, Ok(Ok(()))), "no renewal within 5 s");
            lease.release().await.expect("release");
            // An acquire dropped while it waits.
            let held = locks.acquire("k3", &LockOptions::new()).await.expect("acquire");
            let opts = LockOptions::new();
            let waiting = locks.acquire("k3", &opts);
            assert!(tokio::time::timeout(Duration::from_millis(10), waiting).await.is_err());
            held.release().await.expect("release");
            // Let the lease watchers see the ends.
            for _ in 0..10 {
                tokio::task::yield_now().await;
            }
        });
        assert_eq!(sink.get("fencelock_grants_total{backend=memory}"), 3.0);
        assert_eq!(sink.get("fencelock_leases_held{backend=memory}"), 0.0);
        assert_eq!(
            sink.get("fencelock_leases_lost_total{backend=memory,reason=expired}"),
            1.0
        );
        assert_eq!(sink.get("fencelock_hold_seconds{backend=memory,end=lost}"), 1.0);
        assert_eq!(sink.get("fencelock_hold_seconds{backend=memory,end=released}"), 2.0);
        assert_eq!(sink.get("fencelock_timeouts_total{backend=memory}"), 1.0);
        assert_eq!(
            sink.get("fencelock_acquire_duration_seconds{backend=memory,outcome=busy}"),
            1.0
        );
        assert_eq!(sink.get("fencelock_wait_seconds{backend=memory,outcome=acquired}"), 3.0);
        assert_eq!(sink.get("fencelock_wait_seconds{backend=memory,outcome=timeout}"), 1.0);
        assert_eq!(
            sink.get("fencelock_wait_seconds{backend=memory,outcome=cancelled}"),
            1.0
        );
        assert!(sink.get("fencelock_renewals_total{backend=memory}") >= 1.0);
    }

    #[test]
    fn the_key_is_a_label_only_when_asked_for() {
        let sink = Sink::default();
        recorded(&sink, || async {
            let locks = Metered::new(MemoryLock::new(), "memory").with_key_label(true);
            let lease = locks
                .try_acquire("job-1", &LockOptions::new())
                .await
                .expect("try")
                .expect("free");
            lease.release().await.expect("release");
            let err = locks.try_acquire("", &LockOptions::new()).await.expect_err("empty key");
            assert!(matches!(err, LockError::InvalidInput(_)));
        });
        assert_eq!(sink.get("fencelock_grants_total{backend=memory,key=job-1}"), 1.0);
        assert_eq!(
            sink.get("fencelock_errors_total{backend=memory,key=,kind=invalid_input,op=try_acquire}"),
            1.0
        );
    }
}
