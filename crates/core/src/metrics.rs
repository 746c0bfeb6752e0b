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

use std::sync::{Arc, OnceLock};
use std::time::Instant;

use async_trait::async_trait;
use metrics::{counter, gauge, histogram, Label};

use crate::error::{LockError, LostReason, Result};
use crate::guarantees::Guarantees;
use crate::lease::{Lease, LeaseState};
use crate::lock::DistributedLock;
use crate::options::LockOptions;

/// A [`DistributedLock`] that records metrics of `L` (see the module documentation).
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> fencelock_core::Result<()> {
/// use fencelock_core::{memory::MemoryLock, metrics::Metered, DistributedLock, LockOptions};
/// let locks = Metered::new(MemoryLock::new(), "memory").with_key_label(true);
/// let lease = locks.acquire("nightly-report", &LockOptions::new()).await?;
/// lease.release().await?;
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct Metered<L> {
    inner: L,
    backend: Arc<str>,
    key_label: bool,
}

impl<L: DistributedLock> Metered<L> {
    /// Wraps `inner`; `backend` is the value of the `backend` label (the URL scheme).
    pub fn new(inner: L, backend: impl Into<Arc<str>>) -> Self {
        Metered {
            inner,
            backend: backend.into(),
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

    fn labels(&self, key: &str) -> Vec<Label> {
        let mut labels = vec![Label::new("backend", self.backend.to_string())];
        if self.key_label {
            labels.push(Label::new("key", key.to_owned()));
        }
        labels
    }

    /// Records a grant and follows the lease to its end in a background task.
    fn granted(&self, lease: &Lease, labels: &[Label]) {
        counter!("fencelock_grants_total", labels.to_vec()).increment(1);
        let _ = lease.metrics().labels.set(labels.to_vec());
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let held = gauge!("fencelock_leases_held", labels.to_vec());
        held.increment(1.0);
        let labels = labels.to_vec();
        let mut status = lease.watch();
        let since = Instant::now();
        rt.spawn(async move {
            let end = loop {
                let state = status.borrow_and_update().state.clone();
                if !state.is_live() {
                    break state;
                }
                if status.changed().await.is_err() {
                    break LeaseState::Released;
                }
            };
            held.decrement(1.0);
            let mut with = labels.clone();
            match &end {
                LeaseState::Lost(reason) => {
                    with.push(Label::new("end", "lost"));
                    let mut lost = labels;
                    lost.push(Label::new("reason", lost_reason(reason)));
                    counter!("fencelock_leases_lost_total", lost).increment(1);
                }
                _ => with.push(Label::new("end", "released")),
            }
            histogram!("fencelock_hold_seconds", with).record(since.elapsed().as_secs_f64());
        });
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

    fn finish(&mut self, outcome: &'static str) {
        self.done = true;
        let mut labels = self.labels.clone();
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
    let mut labels = labels.to_vec();
    labels.push(Label::new("op", op));
    labels.push(Label::new("kind", error_kind(e)));
    counter!("fencelock_errors_total", labels).increment(1);
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
        let labels = self.labels(key);
        let mut call = Call::new("fencelock_acquire_duration_seconds", labels.clone());
        let result = self.inner.try_acquire(key, opts).await;
        match &result {
            Ok(Some(lease)) => {
                call.finish("acquired");
                self.granted(lease, &labels);
            }
            Ok(None) => call.finish("busy"),
            Err(e) => {
                call.finish("error");
                error(&labels, "try_acquire", e);
            }
        }
        result
    }

    async fn acquire(&self, key: &str, opts: &LockOptions) -> Result<Lease> {
        let labels = self.labels(key);
        let mut call = Call::new("fencelock_wait_seconds", labels.clone());
        let result = self.inner.acquire(key, opts).await;
        match &result {
            Ok(lease) => {
                call.finish("acquired");
                self.granted(lease, &labels);
            }
            Err(LockError::Timeout { .. }) => {
                call.finish("timeout");
                counter!("fencelock_timeouts_total", labels).increment(1);
            }
            Err(e) => {
                call.finish("error");
                error(&labels, "acquire", e);
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

/// The labels a lease's renewals are counted under; empty (nothing counted) unless the lease
/// came through [`Metered`].
#[derive(Debug, Default)]
pub(crate) struct LeaseMetrics {
    labels: OnceLock<Vec<Label>>,
}

impl LeaseMetrics {
    /// A background renewal succeeded.
    pub(crate) fn renewed(&self) {
        if let Some(labels) = self.labels.get() {
            counter!("fencelock_renewals_total", labels.clone()).increment(1);
        }
    }

    /// A background renewal attempt failed.
    pub(crate) fn renewal_failed(&self) {
        if let Some(labels) = self.labels.get() {
            counter!("fencelock_renewal_failures_total", labels.clone()).increment(1);
        }
    }
}
