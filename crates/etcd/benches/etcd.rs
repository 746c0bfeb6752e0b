//! The etcd backend's costs on a real single-member etcd on loopback:
//! `cargo bench -p fencelock-etcd --bench etcd`.
//!
//! * the raw minimum with the client crate: a put with a lease, then a delete;
//! * uncontended acquire + release (one transaction each);
//! * 8 clients contending for one key: hand-off latency, throughput, fairness.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::sync::Arc;
use std::time::Instant;

use etcd_client::PutOptions;
use fencelock_core::DistributedLock;
use fencelock_etcd::EtcdLock;
use fencelock_testkit::bench::{bench_options, cycles, handoff, percentile, us};
use fencelock_testkit::etcd_server::EtcdCluster;

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

    // Auto-renew on (the default): the locks ride on the session lease.
    let locks = EtcdLock::connect(&url).await.unwrap();
    let start = Instant::now();
    let opts = bench_options().with_auto_renew(true);
    let cycle = cycles(&locks, "solo", &opts, N).await;
    let rate = N as f64 / start.elapsed().as_secs_f64();

    const CLIENTS: usize = 8;
    let h = handoff(
        || {
            let url = url.clone();
            async move { Arc::new(EtcdLock::connect(&url).await.unwrap()) as Arc<dyn DistributedLock> }
        },
        &opts,
        CLIENTS,
        800,
    )
    .await;

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
        "| hand-off, {CLIENTS} clients on one key | {} | {} | release → next holder; {:.0} grants/s |",
        us(percentile(&h.latencies, 0.5)),
        us(percentile(&h.latencies, 0.99)),
        h.grants_per_sec
    );
    println!(
        "\nFairness over {CLIENTS} clients: grants per client {:?}, Jain's index {:.3}.",
        h.per_client,
        h.jain()
    );
}
