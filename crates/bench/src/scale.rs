//! Scale: many locks held at once by one process with auto-renew on — what the renewals
//! cost at the server (its own request counters) and in the client (CPU, memory).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fencelock_core::{Lease, LockOptions};
use serde::Serialize;

use crate::error::{BenchError, Result};
use crate::subject::Ours;
use crate::targets::Target;

/// The TTL of the held locks: renewed every third of it (2 s).
pub const SCALE_TTL: Duration = Duration::from_secs(6);

/// Acquires in flight at once while taking the locks.
const PARALLEL: usize = 64;

/// What holding `locks` locks cost.
#[derive(Debug, Clone, Serialize)]
pub struct ScalePoint {
    /// Locks held.
    pub locks: usize,
    /// Seconds it took to acquire them all (`PARALLEL` at a time).
    pub acquire_secs: f64,
    /// Seconds the locks were held while measuring.
    pub hold_secs: f64,
    /// Renewals the locks need per second: one per lock per third of the TTL.
    pub renewals_needed_per_sec: f64,
    /// Requests the server received per second while the locks were held (by its own
    /// counters; see `Target::request_unit`). `None`: counters not readable.
    pub server_requests_per_sec: Option<f64>,
    /// Client CPU while holding, percent of one core.
    pub client_cpu_percent: f64,
    /// Client resident memory growth from before acquiring to holding, in bytes per lock.
    pub rss_bytes_per_lock: f64,
    /// Every lock was still held at the end.
    pub all_held: bool,
}

/// Holds `locks` locks on `target` for `hold` and measures.
pub async fn measure(target: &Target, locks: usize, hold: Duration) -> Result<ScalePoint> {
    let opts = LockOptions::new()
        .with_ttl(SCALE_TTL)
        .with_wait(Duration::from_secs(30))
        .with_auto_renew(true);
    let ours = Arc::new(Ours::connect_with(&target.url, opts).await?);
    let rss_before = rss_bytes();
    let started = Instant::now();
    let next = Arc::new(AtomicUsize::new(0));
    // A JoinSet: when one acquire fails the row, returning drops it, which aborts the
    // other workers (and drops the leases they hold) before the next row.
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..PARALLEL.min(locks) {
        let (ours, next) = (ours.clone(), next.clone());
        workers.spawn(async move {
            let mut held = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                if i >= locks {
                    return Ok::<Vec<Lease>, BenchError>(held);
                }
                let lease = ours
                    .lock()
                    .acquire(&format!("bench-held-{i}"), &opts)
                    .await
                    .map_err(|e| BenchError::Lock {
                        doing: "acquire (scale)",
                        source: e,
                    })?;
                held.push(lease);
            }
        });
    }
    let mut leases = Vec::with_capacity(locks);
    while let Some(w) = workers.join_next().await {
        leases.extend(w.map_err(|e| BenchError::Usage(format!("an acquiring task panicked: {e}")))??);
    }
    let acquire_secs = started.elapsed().as_secs_f64();
    // Let the renewals of the acquisition burst settle into their period before counting.
    tokio::time::sleep(SCALE_TTL / 3).await;
    let (requests_before, cpu_before, t0) = (target.server_requests().await, cpu_time(), Instant::now());
    tokio::time::sleep(hold).await; // the measured interval itself, not a synchronisation
    let (requests_after, cpu_after, hold_secs) =
        (target.server_requests().await, cpu_time(), t0.elapsed().as_secs_f64());
    let rss_holding = rss_bytes();
    let all_held = leases.iter().all(|l| l.is_held());
    let server_requests_per_sec = match (requests_before, requests_after) {
        (Some(a), Some(b)) => Some(b.saturating_sub(a) as f64 / hold_secs),
        _ => None,
    };
    let cpu = cpu_after.saturating_sub(cpu_before).as_secs_f64();
    let point = ScalePoint {
        locks,
        acquire_secs,
        hold_secs,
        renewals_needed_per_sec: locks as f64 / (SCALE_TTL / 3).as_secs_f64(),
        server_requests_per_sec,
        client_cpu_percent: 100.0 * cpu / hold_secs,
        rss_bytes_per_lock: rss_holding.saturating_sub(rss_before) as f64 / locks as f64,
        all_held,
    };
    // Give everything back, PARALLEL at a time.
    let mut pending = leases.into_iter();
    loop {
        let chunk: Vec<Lease> = pending.by_ref().take(PARALLEL).collect();
        if chunk.is_empty() {
            break;
        }
        let releases = chunk.into_iter().map(|l| l.release());
        for r in futures_util::future::join_all(releases).await {
            r.map_err(|e| BenchError::Lock {
                doing: "release (scale)",
                source: e,
            })?;
        }
    }
    Ok(point)
}

/// This process's CPU time (user + system), from `/proc/self/stat`.
fn cpu_time() -> Duration {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return Duration::ZERO;
    };
    // Fields after the command name (which is in parentheses and may hold spaces).
    let after = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = after.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line: 12 and 13 after the name.
    let ticks: u64 = [11, 12]
        .iter()
        .filter_map(|i| fields.get(*i)?.parse::<u64>().ok())
        .sum();
    let hz = rustix::param::clock_ticks_per_second().max(1);
    Duration::from_secs_f64(ticks as f64 / hz as f64)
}

/// This process's resident memory, from `/proc/self/statm`.
fn rss_bytes() -> u64 {
    let pages = std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .unwrap_or(0);
    pages * rustix::param::page_size() as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_processes_cpu_and_memory() {
        let before = cpu_time();
        let mut x = 0u64;
        let t = Instant::now();
        while t.elapsed() < Duration::from_millis(50) {
            x = x.wrapping_add(std::hint::black_box(1));
        }
        assert!(x > 0);
        assert!(cpu_time() > before, "a busy loop used no CPU time by /proc/self/stat");
        assert!(rss_bytes() > 1 << 20, "resident memory under 1 MiB");
    }
}
