//! Measurements shared by the benchmarks: percentiles, uncontended cycles, and hand-off
//! under contention with fairness.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fencelock_core::{DistributedLock, LockOptions};

/// The `p` quantile (0.0–1.0) of sorted samples.
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// Microseconds, for tables: `"123 µs"`.
pub fn us(d: Duration) -> String {
    format!("{:.0} µs", d.as_secs_f64() * 1e6)
}

/// Options for benchmark locks: 10 s TTL, 30 s wait, no auto-renew (etcd and ZooKeeper
/// benchmarks turn auto-renew on: their locks then ride on the shared session).
pub fn bench_options() -> LockOptions {
    LockOptions::new()
        .with_ttl(Duration::from_secs(10))
        .with_wait(Duration::from_secs(30))
        .with_auto_renew(false)
}

/// `n` uncontended acquire + release cycles on `key` (after 100 on a warm-up key), sorted.
pub async fn cycles(lock: &dyn DistributedLock, key: &str, opts: &LockOptions, n: usize) -> Vec<Duration> {
    for _ in 0..100 {
        lock.acquire("warm-up", opts)
            .await
            .expect("acquire")
            .release()
            .await
            .expect("release");
    }
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        lock.acquire(key, opts)
            .await
            .expect("acquire")
            .release()
            .await
            .expect("release");
        out.push(t.elapsed());
    }
    out.sort();
    out
}

/// Hand-off under contention.
#[derive(Debug, Clone)]
pub struct Handoff {
    /// Release → next holder, sorted.
    pub latencies: Vec<Duration>,
    /// Grants per second over the run.
    pub grants_per_sec: f64,
    /// Grants each client got.
    pub per_client: Vec<f64>,
}

impl Handoff {
    /// Jain's fairness index over clients (1 = perfectly even).
    pub fn jain(&self) -> f64 {
        let sum: f64 = self.per_client.iter().sum();
        let squares: f64 = self.per_client.iter().map(|x| x * x).sum();
        sum * sum / (self.per_client.len() as f64 * squares)
    }
}

/// `clients` independent clients (each from `connect`) contend for one key until `grants`
/// grants were made; measures the time from a release call to the next holder's acquire
/// returning.
pub async fn handoff<F, Fut>(connect: F, opts: &LockOptions, clients: usize, grants: usize) -> Handoff
where
    F: Fn() -> Fut,
    Fut: Future<Output = Arc<dyn DistributedLock>>,
{
    let opts = *opts;
    let released_at: Arc<Mutex<Option<Instant>>> = Arc::default();
    let latencies: Arc<Mutex<Vec<Duration>>> = Arc::default();
    let remaining = Arc::new(AtomicUsize::new(grants));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let lock = connect().await;
        let (released_at, latencies, remaining) = (released_at.clone(), latencies.clone(), remaining.clone());
        tasks.push(tokio::spawn(async move {
            let mut mine = 0usize;
            loop {
                let lease = lock
                    .acquire("contended", &opts)
                    .await
                    .expect("acquire under contention");
                if let Some(t) = released_at.lock().unwrap_or_else(|p| p.into_inner()).take() {
                    latencies.lock().unwrap_or_else(|p| p.into_inner()).push(t.elapsed());
                }
                let left = remaining.fetch_sub(1, Ordering::SeqCst);
                mine += 1;
                *released_at.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
                lease.release().await.expect("release under contention");
                if left <= clients {
                    // Stop near the end, so everyone contends until then.
                    return mine;
                }
            }
        }));
    }
    let mut per_client = Vec::new();
    for t in tasks {
        per_client.push(t.await.expect("contending task") as f64);
    }
    let total: f64 = per_client.iter().sum();
    let mut latencies = latencies.lock().unwrap_or_else(|p| p.into_inner()).clone();
    latencies.sort();
    Handoff {
        latencies,
        grants_per_sec: total / start.elapsed().as_secs_f64(),
        per_client,
    }
}
