//! Measures what one uncontended acquire + release costs, ours against the raw minimum
//! (the bench's `RawZk`: create an ephemeral sequential node, list the children, delete):
//! server-side work per cycle (every `mntr` counter that moved, divided by the cycles),
//! client CPU per cycle (this process's threads' run time, from
//! `/proc/self/task/*/schedstat`), and the latency medians, one cycle of each in turn.
//!
//! `cargo run --release -p fencelock-zk --example zk_cycle_cost -- [CYCLES]` (starts its own
//! ZooKeeper on free loopback ports, stops it at the end).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use fencelock_core::{DistributedLock, LockOptions};
use fencelock_testkit::cycle_cost::{cpu_ns, p50_us, print_cpu, Readings};
use fencelock_testkit::process::tcp_exchange_to_eof;
use fencelock_testkit::zk_server::ZkEnsemble;
use zookeeper_client::{Acls, CreateMode};

fn mntr(port: u16) -> BTreeMap<String, f64> {
    let reply = tcp_exchange_to_eof(port, b"mntr").expect("mntr");
    String::from_utf8_lossy(&reply)
        .lines()
        .filter_map(|l| {
            let (k, v) = l.split_once('\t')?;
            Some((k.to_owned(), v.trim().parse().ok()?))
        })
        .collect()
}

async fn raw_cycle(client: &zookeeper_client::Client, t0: Instant) -> Duration {
    let opts = CreateMode::EphemeralSequential.with_acls(Acls::anyone_all());
    let (_, seq) = client.create("/raw/k/lock-", b"", &opts).await.unwrap();
    let ours = format!("lock-{seq}");
    let (children, _) = client.get_children("/raw/k").await.unwrap();
    assert!(children.iter().min().is_some_and(|c| *c == ours));
    let acq = t0.elapsed();
    client.delete(&format!("/raw/k/{ours}"), None).await.unwrap();
    acq
}

#[tokio::main(worker_threads = 2)]
async fn main() {
    let n: usize = std::env::args().nth(1).map_or(1000, |a| a.parse().unwrap());
    let zk = ZkEnsemble::standalone();
    let port = zk.port(0);
    let ours = fencelock_zk::ZkLock::connect(&zk.url("", "")).await.unwrap();
    let opts = LockOptions::new()
        .with_ttl(Duration::from_secs(10))
        .with_wait(Duration::from_secs(30));
    let raw = zookeeper_client::Client::connect(&zk.endpoints()[0]).await.unwrap();
    raw.mkdir("/raw/k", &CreateMode::Persistent.with_acls(Acls::anyone_all()))
        .await
        .unwrap();
    for _ in 0..100 {
        ours.acquire("k-ours", &opts).await.unwrap().release().await.unwrap();
        raw_cycle(&raw, Instant::now()).await;
    }
    let (m0, c0) = (mntr(port), cpu_ns());
    for _ in 0..n {
        ours.acquire("k-ours", &opts).await.unwrap().release().await.unwrap();
    }
    let (m1, c1) = (mntr(port), cpu_ns());
    for _ in 0..n {
        raw_cycle(&raw, Instant::now()).await;
    }
    let (m2, c2) = (mntr(port), cpu_ns());
    print_cpu(c0, c1, c2, n);
    let readings = Readings {
        before: m0,
        between: m1,
        after: m2,
        cycles: n,
    };
    readings.print("mntr counter (per cycle)", |k| {
        k.ends_with("_count") || k.contains("packets") || k.contains("bytes") || k.contains("fsync")
    });
    let mut v: [Vec<Duration>; 4] = Default::default();
    for i in 0..n {
        for j in 0..2 {
            let t = Instant::now();
            if (i + j) % 2 == 0 {
                let l = ours.acquire("k-ours", &opts).await.unwrap();
                v[0].push(t.elapsed());
                l.release().await.unwrap();
                v[1].push(t.elapsed());
            } else {
                v[2].push(raw_cycle(&raw, t).await);
                v[3].push(t.elapsed());
            }
        }
    }
    let m: Vec<f64> = v.iter_mut().map(|x| p50_us(x)).collect();
    println!(
        "p50 µs (acquire/cycle): ours {:.0}/{:.0}  raw {:.0}/{:.0}  => ours/raw cycle {:.3}x acquire {:.3}x",
        m[0],
        m[1],
        m[2],
        m[3],
        m[1] / m[3],
        m[0] / m[2]
    );
    ours.close().await.unwrap();
}
