//! Redlock on 5 real redis-servers beside the single-server backend, in the same run:
//! `cargo bench -p fencelock-redlock --bench redlock`.
//!
//! The claim under test: acquire + release on 5 nodes costs about one parallel round trip
//! each way — within 1.3× of one node.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::time::{Duration, Instant};

use fencelock_testkit::bench::{bench_options, cycles, handoff, percentile, us};
use fencelock_testkit::redis_server::{redlock_url, start_many};

/// The raw minimum for N nodes: `SET NX PX` to every node at once, then `DEL` to every
/// node at once, with the client crate directly (no scripts, no tokens, no lease).
async fn raw_fan_out(ports: &[u16], n: usize) -> Vec<Duration> {
    let mut conns = Vec::new();
    for p in ports {
        let client = redis::Client::open(format!("redis://127.0.0.1:{p}")).unwrap();
        conns.push(client.get_multiplexed_async_connection().await.unwrap());
    }
    let mut out = Vec::with_capacity(n);
    for i in 0..n + 200 {
        let t = Instant::now();
        let sets = conns.iter().map(|c| {
            let mut c = c.clone();
            async move {
                let _: Option<String> = redis::cmd("SET")
                    .arg("raw")
                    .arg("v")
                    .arg("NX")
                    .arg("PX")
                    .arg(10_000)
                    .query_async(&mut c)
                    .await
                    .unwrap();
            }
        });
        join_all(sets.collect()).await;
        let dels = conns.iter().map(|c| {
            let mut c = c.clone();
            async move {
                let _: i64 = redis::cmd("DEL").arg("raw").query_async(&mut c).await.unwrap();
            }
        });
        join_all(dels.collect()).await;
        if i >= 200 {
            out.push(t.elapsed());
        }
    }
    out.sort();
    out
}

async fn join_all<F: std::future::Future<Output = ()>>(futs: Vec<F>) {
    let mut futs: Vec<_> = futs.into_iter().map(|f| Some(Box::pin(f))).collect();
    std::future::poll_fn(|cx| {
        let mut open = false;
        for f in futs.iter_mut() {
            if let Some(g) = f {
                if g.as_mut().poll(cx).is_ready() {
                    *f = None;
                } else {
                    open = true;
                }
            }
        }
        if open {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let servers = start_many(5);
    let single_url = format!("redis://127.0.0.1:{}", servers[0].port());
    let redlock = redlock_url(&servers, "per_node_timeout=50ms");
    let single = fencelock::connect(&single_url).await.unwrap();
    let five = fencelock::connect(&redlock).await.unwrap();
    const N: usize = 3000;
    let opts = bench_options();
    // Interleave the two so that machine noise hits both alike.
    let mut s_all = Vec::new();
    let mut r_all = Vec::new();
    for _ in 0..3 {
        s_all.extend(cycles(&*single, "solo-1", &opts, N / 3).await);
        r_all.extend(cycles(&*five, "solo-5", &opts, N / 3).await);
    }
    s_all.sort();
    r_all.sort();
    let (s50, r50) = (percentile(&s_all, 0.5), percentile(&r_all, 0.5));
    let ports: Vec<u16> = servers.iter().map(|s| s.port()).collect();
    let raw1 = raw_fan_out(&ports[..1], N).await;
    let raw5 = raw_fan_out(&ports, N).await;
    let connect = |url: String| {
        move || {
            let url = url.clone();
            async move { fencelock::connect(&url).await.unwrap() }
        }
    };
    let hs = handoff(connect(single_url.clone()), &opts, 8, 1000).await;
    let hr = handoff(connect(redlock.clone()), &opts, 8, 1000).await;
    let (rate_s, rate_r) = (hs.grants_per_sec, hr.grants_per_sec);
    let (hs, hr) = (hs.latencies, hr.latencies);
    println!("### Redlock (5 nodes) beside one Redis, same run, loopback\n");
    println!("| measure | one Redis p50 / p99 | Redlock, 5 nodes p50 / p99 | ratio (p50) |");
    println!("|---|---|---|---|");
    println!(
        "| uncontended acquire + release | {} / {} | {} / {} | {:.2}× |",
        us(s50),
        us(percentile(&s_all, 0.99)),
        us(r50),
        us(percentile(&r_all, 0.99)),
        r50.as_secs_f64() / s50.as_secs_f64()
    );
    println!(
        "| raw minimum: SET NX PX then DEL, fanned out | {} / {} | {} / {} | {:.2}× |",
        us(percentile(&raw1, 0.5)),
        us(percentile(&raw1, 0.99)),
        us(percentile(&raw5, 0.5)),
        us(percentile(&raw5, 0.99)),
        percentile(&raw5, 0.5).as_secs_f64() / percentile(&raw1, 0.5).as_secs_f64()
    );
    println!(
        "| ours ÷ raw minimum | {:.2}× | {:.2}× | |",
        s50.as_secs_f64() / percentile(&raw1, 0.5).as_secs_f64(),
        r50.as_secs_f64() / percentile(&raw5, 0.5).as_secs_f64()
    );
    println!(
        "| hand-off, 8 clients on one key | {} / {} ({rate_s:.0} grants/s) | {} / {} ({rate_r:.0} grants/s) | {:.2}× |",
        us(percentile(&hs, 0.5)),
        us(percentile(&hs, 0.99)),
        us(percentile(&hr, 0.5)),
        us(percentile(&hr, 0.99)),
        percentile(&hr, 0.5).as_secs_f64() / percentile(&hs, 0.5).as_secs_f64()
    );
}
