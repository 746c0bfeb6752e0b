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

use std::sync::Arc;
use std::time::Instant;

use fencelock_core::DistributedLock;
use fencelock_redis::RedisLock;
use fencelock_testkit::bench::{bench_options, cycles, handoff, percentile, us};
use fencelock_testkit::redis_server::RedisServer;

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
    let url = server.url();
    let locks = RedisLock::connect(&url).await.unwrap();
    let mut conn = locks.connection().await.unwrap();
    let mut rtt = Vec::new();
    for _ in 0..3000 {
        let t = Instant::now();
        let _: String = redis::cmd("PING").query_async(&mut conn).await.unwrap();
        rtt.push(t.elapsed());
    }
    rtt.sort();
    let rtt50 = percentile(&rtt, 0.5);

    const N: usize = 3000;
    let before = evalsha_calls(&mut conn).await;
    let start = Instant::now();
    let opts = bench_options();
    let cycle = cycles(&locks, "solo", &opts, N).await;
    let rate = N as f64 / start.elapsed().as_secs_f64();
    let per_cycle_cmds = (evalsha_calls(&mut conn).await - before) as f64 / (N + 100) as f64;

    const CLIENTS: usize = 8;
    let h = handoff(
        || {
            let url = url.clone();
            async move { Arc::new(RedisLock::connect(&url).await.unwrap()) as Arc<dyn DistributedLock> }
        },
        &opts,
        CLIENTS,
        2000,
    )
    .await;

    println!("### Redis (single server), loopback\n");
    println!("| measure | p50 | p99 | note |");
    println!("|---|---|---|---|");
    println!(
        "| raw round trip (PING) | {} | {} | yardstick |",
        us(rtt50),
        us(percentile(&rtt, 0.99))
    );
    println!(
        "| uncontended acquire + release | {} | {} | {:.2} round trips; {rate:.0} cycles/s; server ran {per_cycle_cmds:.2} client commands per cycle |",
        us(percentile(&cycle, 0.5)),
        us(percentile(&cycle, 0.99)),
        percentile(&cycle, 0.5).as_secs_f64() / rtt50.as_secs_f64(),
    );
    println!(
        "| hand-off, {CLIENTS} clients on one key | {} | {} | release → next holder; {} hand-offs; {:.0} grants/s |",
        us(percentile(&h.latencies, 0.5)),
        us(percentile(&h.latencies, 0.99)),
        h.latencies.len(),
        h.grants_per_sec
    );
    println!(
        "\nFairness over {CLIENTS} clients: grants per client {:?}, Jain's index {:.3} (1 = perfectly even).",
        h.per_client,
        h.jain()
    );
}
