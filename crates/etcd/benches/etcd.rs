//! The etcd backend's costs on a real single-member etcd on loopback:
//! `cargo bench -p fencelock-etcd --bench etcd`.
//!
//! * the raw minimum with the client crate: a put with a lease, then a delete;
//! * uncontended acquire + release (one transaction each);
//! * 8 clients contending for one key: hand-off latency, throughput, fairness.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use etcd_client::PutOptions;
use fencelock_core::{DistributedLock, LockOptions};
use fencelock_etcd::EtcdLock;
use fencelock_testkit::etcd_server::EtcdCluster;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn us(d: Duration) -> String {
    format!("{:.0} µs", d.as_secs_f64() * 1e6)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let cluster = EtcdCluster::single();
    let url = cluster.url("");
    let endpoints: Vec<String> = cluster.endpoints().iter().map(|e| format!("http://{e}")).collect();
    let mut raw = etcd_client::Client::connect(endpoints, None).await.unwrap();
    let lease = raw.lease_grant(60, None).await.unwrap().id();
    const N: usize = 1500;
    let mut raw_cycle = Vec::with_capacity(N);
    for i in 0..N + 100 {
        let t = Instant::now();
        raw.put("raw/k", "", Some(PutOptions::new().with_lease(lease)))
            .await
            .unwrap();
        raw.delete("raw/k", None).await.unwrap();
        if i >= 100 {
            raw_cycle.push(t.elapsed());
        }
    }
    raw_cycle.sort();

    let locks = EtcdLock::connect(&url).await.unwrap();
    let opts = LockOptions::new()
        .with_ttl(Duration::from_secs(10))
        .with_wait(Duration::from_secs(30));
    for _ in 0..100 {
        locks.acquire("warm", &opts).await.unwrap().release().await.unwrap();
    }
    let mut cycle = Vec::with_capacity(N);
    let start = Instant::now();
    for _ in 0..N {
        let t = Instant::now();
        locks.acquire("solo", &opts).await.unwrap().release().await.unwrap();
        cycle.push(t.elapsed());
    }
    let rate = N as f64 / start.elapsed().as_secs_f64();
    cycle.sort();

    const CLIENTS: usize = 8;
    const GRANTS: usize = 800;
    let released_at: Arc<Mutex<Option<Instant>>> = Arc::default();
    let handoffs: Arc<Mutex<Vec<Duration>>> = Arc::default();
    let remaining = Arc::new(std::sync::atomic::AtomicUsize::new(GRANTS));
    let mut tasks = Vec::new();
    let start = Instant::now();
    for _ in 0..CLIENTS {
        let client = EtcdLock::connect(&url).await.unwrap();
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
                    return mine;
                }
            }
        }));
    }
    let mut per_client = Vec::new();
    for t in tasks {
        per_client.push(t.await.unwrap() as f64);
    }
    let grants: f64 = per_client.iter().sum();
    let rate_contended = grants / start.elapsed().as_secs_f64();
    let jain = grants * grants / (per_client.len() as f64 * per_client.iter().map(|x| x * x).sum::<f64>());
    let mut h = handoffs.lock().unwrap().clone();
    h.sort();

    println!("### etcd (single member), loopback\n");
    println!("| measure | p50 | p99 | note |");
    println!("|---|---|---|---|");
    println!(
        "| raw minimum: put with lease + delete (client crate) | {} | {} | yardstick: two requests |",
        us(percentile(&raw_cycle, 0.5)),
        us(percentile(&raw_cycle, 0.99))
    );
    println!(
        "| uncontended acquire + release | {} | {} | {:.2}× the raw minimum; {rate:.0} cycles/s |",
        us(percentile(&cycle, 0.5)),
        us(percentile(&cycle, 0.99)),
        percentile(&cycle, 0.5).as_secs_f64() / percentile(&raw_cycle, 0.5).as_secs_f64()
    );
    println!(
        "| hand-off, {CLIENTS} clients on one key | {} | {} | release → next holder; {rate_contended:.0} grants/s |",
        us(percentile(&h, 0.5)),
        us(percentile(&h, 0.99))
    );
    println!("\nFairness over {CLIENTS} clients: grants per client {per_client:?}, Jain's index {jain:.3}.");
}
