//! The Redis backend's costs on a real redis-server on loopback:
//! `cargo bench -p fencelock-redis --bench redis`.
//!
//! * the raw round trip (PING) as the yardstick;
//! * uncontended acquire + release, and how many commands the server executed for it;
//! * 8 clients contending for one key: hand-off latency (release → next holder),
//!   throughput and fairness.
//!
//! Prints a Markdown section for docs/benchmarks.md.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fencelock_core::{DistributedLock, LockOptions};
use fencelock_redis::RedisLock;
use fencelock_testkit::redis_server::RedisServer;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

fn us(d: Duration) -> String {
    format!("{:.0} µs", d.as_secs_f64() * 1e6)
}

async fn evalsha_calls(conn: &mut redis::aio::ConnectionManager) -> u64 {
    let info: String = redis::cmd("INFO").arg("commandstats").query_async(conn).await.unwrap();
    info.lines()
        .find_map(|l| l.strip_prefix("cmdstat_evalsha:calls="))
        .and_then(|r| r.split(',').next()?.parse().ok())
        .unwrap_or(0)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let server = RedisServer::start();
    let opts = LockOptions::new()
        .with_ttl(Duration::from_secs(10))
        .with_wait(Duration::from_secs(30))
        .with_auto_renew(false);

    // The yardstick: one round trip.
    let locks = RedisLock::connect(&server.url()).await.unwrap();
    let mut conn = locks.connection().await.unwrap();
    let mut rtt = Vec::new();
    for _ in 0..3000 {
        let t = Instant::now();
        let _: String = redis::cmd("PING").query_async(&mut conn).await.unwrap();
        rtt.push(t.elapsed());
    }
    rtt.sort();
    let rtt50 = percentile(&rtt, 0.5);

    // Uncontended acquire + release.
    for _ in 0..200 {
        locks.acquire("warm", &opts).await.unwrap().release().await.unwrap();
    }
    let before = evalsha_calls(&mut conn).await;
    const N: usize = 3000;
    let mut cycle = Vec::with_capacity(N);
    let start = Instant::now();
    for _ in 0..N {
        let t = Instant::now();
        locks.acquire("solo", &opts).await.unwrap().release().await.unwrap();
        cycle.push(t.elapsed());
    }
    let solo_elapsed = start.elapsed();
    let per_cycle_cmds = (evalsha_calls(&mut conn).await - before) as f64 / N as f64;
    cycle.sort();

    // 8 clients, one key.
    const CLIENTS: usize = 8;
    const GRANTS: usize = 2000;
    let released_at: Arc<Mutex<Option<Instant>>> = Arc::default();
    let handoffs: Arc<Mutex<Vec<Duration>>> = Arc::default();
    let remaining = Arc::new(std::sync::atomic::AtomicUsize::new(GRANTS));
    let mut tasks = Vec::new();
    let start = Instant::now();
    for _ in 0..CLIENTS {
        let client = RedisLock::connect(&server.url()).await.unwrap();
        let (released_at, handoffs, remaining) = (released_at.clone(), handoffs.clone(), remaining.clone());
        tasks.push(tokio::spawn(async move {
            let mut mine = 0usize;
            loop {
                let lease = client.acquire("contended", &opts).await.unwrap();
                if let Some(t) = released_at.lock().unwrap().take() {
                    handoffs.lock().unwrap().push(t.elapsed());
                }
                let left = remaining.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
                mine += 1;
                *released_at.lock().unwrap() = Some(Instant::now());
                lease.release().await.unwrap();
                if left <= CLIENTS {
                    // Stop with everyone still contending until the very end.
                    return mine;
                }
            }
        }));
    }
    let mut per_client = Vec::new();
    for t in tasks {
        per_client.push(t.await.unwrap() as f64);
    }
    let contended_elapsed = start.elapsed();
    let grants: f64 = per_client.iter().sum();
    let jain = grants * grants / (per_client.len() as f64 * per_client.iter().map(|x| x * x).sum::<f64>());
    let mut h = handoffs.lock().unwrap().clone();
    h.sort();

    println!("### Redis (single server), loopback\n");
    println!("| measure | p50 | p99 | note |");
    println!("|---|---|---|---|");
    println!(
        "| raw round trip (PING) | {} | {} | yardstick |",
        us(rtt50),
        us(percentile(&rtt, 0.99))
    );
    println!(
        "| uncontended acquire + release | {} | {} | {:.2} round trips; {:.0} cycles/s; server ran {per_cycle_cmds:.2} client commands per cycle |",
        us(percentile(&cycle, 0.5)),
        us(percentile(&cycle, 0.99)),
        percentile(&cycle, 0.5).as_secs_f64() / rtt50.as_secs_f64(),
        N as f64 / solo_elapsed.as_secs_f64()
    );
    println!(
        "| hand-off, {CLIENTS} clients on one key | {} | {} | release → next holder; {} hand-offs; {:.0} grants/s |",
        us(percentile(&h, 0.5)),
        us(percentile(&h, 0.99)),
        h.len(),
        grants / contended_elapsed.as_secs_f64()
    );
    println!("\nFairness over {CLIENTS} clients: grants per client {per_client:?}, Jain's index {jain:.3} (1 = perfectly even).");
}
