//! Contention: several clients, each its own connection, taking turns on one key — or on
//! each of many keys at once (the shape of a real service: a few processes, each waiting
//! on many keys through one connection).

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;

use futures_util::future::BoxFuture;

use crate::error::{BenchError, Result};
use crate::stats::{jain, micros, Latency};
use crate::subject::Subject;

/// How much longer than the run's time limit one acquire may wait before its client
/// gives up (and the run records why).
const GRACE: Duration = Duration::from_secs(5);

/// What a contention run measured.
#[derive(Debug, Clone, Serialize)]
pub struct Contention {
    /// Keys contended at once (1: the one-key runs).
    pub keys: usize,
    /// Clients contending for each key (each its own connection, shared by its keys).
    pub clients: usize,
    /// Grants made.
    pub grants: usize,
    /// Release → another client's acquire returning (a client that takes the lock again
    /// right after its own release is not a hand-off; Jain's index shows that instead).
    pub hand_off: Latency,
    /// Grants per second over the run.
    pub grants_per_sec: f64,
    /// Grants each client got (with many keys: each client on each key, key-major).
    pub per_client: Vec<usize>,
    /// Server commands per grant over the run, by the servers' own counters (see
    /// `Target::server_commands`); `None` when they cannot be read.
    pub commands_per_grant: Option<f64>,
    /// Jain's index over `per_client` (1 = even).
    pub jain: f64,
    /// The longest any one acquire waited, in milliseconds.
    pub max_wait_ms: f64,
    /// Clients that gave up: their acquire failed, or waited past the run's limit plus
    /// a grace period.
    pub gave_up: usize,
    /// Why the first of them gave up.
    pub gave_up_because: Option<String>,
}

/// When a key's lock was last released, and by which client.
type LastRelease = Mutex<Option<(Instant, usize)>>;

/// Reads a server's command counter (`None`: unreadable).
pub type Counter<'a> = &'a (dyn Fn() -> BoxFuture<'a, Option<u64>> + Sync);

/// `clients` clients (each made by `connect`) take each of `keys` keys in turns until
/// `grants` grants were made or `limit` passed; `counter` is read before and after, for the
/// server commands per grant. A client whose acquire fails or waits past `limit` + 5 s gives
/// up on that key; the others go on, and the result counts it.
pub async fn measure<F, Fut>(
    connect: F,
    keys: usize,
    clients: usize,
    grants: usize,
    limit: Duration,
    counter: Counter<'_>,
) -> Result<Contention>
where
    F: Fn() -> Fut,
    Fut: Future<Output = Result<Box<dyn Subject>>>,
{
    // Per key: when the lock was last released, and by which client.
    let released_at: Arc<Vec<LastRelease>> = Arc::new((0..keys).map(|_| Mutex::new(None)).collect());
    let hand_offs: Arc<Mutex<Vec<Duration>>> = Arc::default();
    let max_wait: Arc<Mutex<Duration>> = Arc::default();
    let gave_up: Arc<Mutex<Vec<String>>> = Arc::default();
    let made = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut subjects = Vec::with_capacity(clients);
    for _ in 0..clients {
        subjects.push(Arc::<dyn Subject>::from(connect().await?));
    }
    let commands_before = counter().await;
    let start = Instant::now();
    // A JoinSet: when one client fails the row, returning drops it, which aborts the
    // others, so none keeps contending beside the next row.
    let mut tasks = tokio::task::JoinSet::new();
    for k in 0..keys {
        let key = if keys == 1 {
            "bench-contended".to_owned()
        } else {
            format!("bench-contended-{k}")
        };
        for (me, subject) in subjects.iter().enumerate() {
            let (subject, key) = (subject.clone(), key.clone());
            let (released_at, hand_offs, max_wait) = (released_at.clone(), hand_offs.clone(), max_wait.clone());
            let (made, stop, gave_up) = (made.clone(), stop.clone(), gave_up.clone());
            tasks.spawn(async move {
                let mut mine = 0usize;
                while !stop.load(Ordering::SeqCst) {
                    let asked = Instant::now();
                    let bound = limit + GRACE;
                    let held = match tokio::time::timeout(bound, subject.acquire(&key)).await {
                        Ok(Ok(held)) => held,
                        Ok(Err(e)) => {
                            lock(&gave_up).push(crate::error::one_line(&e));
                            break;
                        }
                        Err(_) => {
                            lock(&gave_up).push(format!("an acquire waited over {bound:?}"));
                            break;
                        }
                    };
                    let waited = asked.elapsed();
                    if let Some((t, by)) = lock(&released_at[k]).take() {
                        if by != me {
                            lock(&hand_offs).push(t.elapsed());
                        }
                    }
                    {
                        let mut m = lock(&max_wait);
                        *m = (*m).max(waited);
                    }
                    mine += 1;
                    if made.fetch_add(1, Ordering::SeqCst) + 1 >= grants || start.elapsed() >= limit {
                        stop.store(true, Ordering::SeqCst);
                    }
                    *lock(&released_at[k]) = Some((Instant::now(), me));
                    held.await?;
                }
                Ok::<usize, BenchError>(mine)
            });
        }
    }
    let mut per_client = Vec::with_capacity(tasks.len());
    while let Some(t) = tasks.join_next().await {
        per_client.push(t.map_err(|e| BenchError::Usage(format!("a contending client panicked: {e}")))??);
    }
    let elapsed = start.elapsed();
    let commands_after = counter().await;
    let total: usize = per_client.iter().sum();
    let shares: Vec<f64> = per_client.iter().map(|g| *g as f64).collect();
    let hand_off = Latency::of(std::mem::take(&mut *lock(&hand_offs)));
    let max_wait_ms = micros(*lock(&max_wait)) / 1000.0;
    let gave_up = std::mem::take(&mut *lock(&gave_up));
    let commands_per_grant = match (commands_before, commands_after) {
        (Some(a), Some(b)) if total > 0 => Some(b.saturating_sub(a) as f64 / total as f64),
        _ => None,
    };
    Ok(Contention {
        keys,
        clients,
        grants: total,
        hand_off,
        grants_per_sec: total as f64 / elapsed.as_secs_f64(),
        jain: jain(&shares),
        per_client,
        commands_per_grant,
        max_wait_ms,
        gave_up: gave_up.len(),
        gave_up_because: gave_up.into_iter().next(),
    })
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
