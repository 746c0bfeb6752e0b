//! Measures what one uncontended acquire + release costs, ours against the raw minimum
//! (the bench's `RawEtcd`: a create-if-absent Txn on a pre-granted lease, a guarded delete
//! Txn): server-side requests per cycle (every metric of etcd's `/metrics` that moved,
//! divided by the cycles), client CPU per cycle (this process's threads' run time, from
//! `/proc/self/task/*/schedstat`), and the latency medians in interleaved rounds.
//!
//! `cargo run --release -p fencelock-etcd --example etcd_cycle_cost -- [CYCLES]` (starts its
//! own etcd on free loopback ports, stops it at the end).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use etcd_client::{Compare, CompareOp, PutOptions, Txn, TxnOp};
use fencelock_core::{DistributedLock, LockOptions};
use fencelock_testkit::cycle_cost::{cpu_ns, p50_us, print_cpu, Readings};
use fencelock_testkit::etcd_server::{metrics, EtcdCluster};

struct Raw {
    kv: etcd_client::KvClient,
    lease: i64,
    /// The acquire Txn fencelock sent before issue 14 (the owner read beside the put,
    /// the else branch), instead of the put alone.
    same: bool,
}

impl Raw {
    async fn cycle(&mut self, key: &str, t0: Instant) -> Duration {
        use etcd_client::{GetOptions, SortOrder, SortTarget};
        let dir = format!("{}/", key.rsplit_once('/').unwrap().0);
        let owner = GetOptions::new()
            .with_prefix()
            .with_sort(SortTarget::Create, SortOrder::Ascend)
            .with_limit(1);
        let txn = Txn::new().when([Compare::create_revision(key, CompareOp::Equal, 0)]);
        let txn = if self.same {
            txn.and_then([
                TxnOp::put(key, "", Some(PutOptions::new().with_lease(self.lease))),
                TxnOp::get(dir.clone(), Some(owner.clone())),
            ])
            .or_else([TxnOp::get(key, None), TxnOp::get(dir, Some(owner))])
        } else {
            txn.and_then([TxnOp::put(key, "", Some(PutOptions::new().with_lease(self.lease)))])
        };
        let r = self.kv.txn(txn).await.unwrap();
        assert!(r.succeeded());
        let acq = t0.elapsed();
        let rev = r.header().unwrap().revision();
        let guarded = Txn::new()
            .when([Compare::create_revision(key, CompareOp::Equal, rev)])
            .and_then([TxnOp::delete(key, None)]);
        self.kv.txn(guarded).await.unwrap();
        acq
    }
}

#[tokio::main(worker_threads = 2)]
async fn main() {
    let n: usize = std::env::args().nth(1).map_or(1000, |a| a.parse().unwrap());
    let etcd = EtcdCluster::single();
    let port = etcd.client_ports()[0];
    let ours = fencelock_etcd::EtcdLock::connect(&etcd.url("")).await.unwrap();
    let opts = LockOptions::new()
        .with_ttl(Duration::from_secs(10))
        .with_wait(Duration::from_secs(30));
    let mut client = etcd_client::Client::connect(etcd.endpoints(), None).await.unwrap();
    let lease = client.lease_grant(900, None).await.unwrap().id();
    let mut raw = Raw {
        kv: client.kv_client(),
        lease,
        same: false,
    };
    let mut same = Raw {
        kv: client.kv_client(),
        lease,
        same: true,
    };
    let same_key = "fencelock/k-same/0123456789abcdef.00000000";
    // The raw minimum with a key as long as ours.
    let long_key = "fencelock/k-long/0123456789abcdef.00000000";
    for _ in 0..100 {
        ours.acquire("k-ours", &opts).await.unwrap().release().await.unwrap();
        raw.cycle("raw/k", Instant::now()).await;
        same.cycle(same_key, Instant::now()).await;
    }
    if std::env::var_os("ONLY_OURS").is_some() {
        let t = Instant::now();
        for _ in 0..n {
            ours.acquire("k-ours", &opts).await.unwrap().release().await.unwrap();
        }
        println!("ours only: {:?} per cycle", t.elapsed() / n as u32);
        return;
    }
    if std::env::var_os("ONLY_RAW").is_some() {
        let t = Instant::now();
        for _ in 0..n {
            raw.cycle("raw/k", Instant::now()).await;
        }
        println!("raw only: {:?} per cycle", t.elapsed() / n as u32);
        return;
    }
    // Server-side and client CPU, one subject at a time.
    let (m0, c0) = (metrics(port), cpu_ns());
    for _ in 0..n {
        ours.acquire("k-ours", &opts).await.unwrap().release().await.unwrap();
    }
    let (m1, c1) = (metrics(port), cpu_ns());
    for _ in 0..n {
        raw.cycle("raw/k", Instant::now()).await;
    }
    let (m2, c2) = (metrics(port), cpu_ns());
    print_cpu(c0, c1, c2, n);
    let readings = Readings {
        before: m0,
        between: m1,
        after: m2,
        cycles: n,
    };
    readings.print("metric (per cycle)", |k| {
        [
            "grpc_server_msg_received_total",
            "grpc_server_handled_total",
            "fsync_duration_seconds_count",
            "backend_commit_duration_seconds_count",
            "proposals_committed",
            "mvcc_put_total",
            "mvcc_delete_total",
            "mvcc_range_total",
            "mvcc_txn_total",
            "network_client_grpc_received_bytes",
            "network_client_grpc_sent_bytes",
        ]
        .iter()
        .any(|m| k.contains(m))
    });
    // Latency, one cycle of each subject in turn, the order rotated every cycle (the
    // first of a turn was seen to pay up to 100 µs more on a busy machine).
    let mut v: [Vec<Duration>; 8] = Default::default();
    for i in 0..n {
        for j in 0..4 {
            let t = Instant::now();
            match (i + j) % 4 {
                0 => {
                    let l = ours.acquire("k-ours", &opts).await.unwrap();
                    v[0].push(t.elapsed());
                    l.release().await.unwrap();
                    v[1].push(t.elapsed());
                }
                1 => {
                    v[2].push(raw.cycle("raw/k", t).await);
                    v[3].push(t.elapsed());
                }
                2 => {
                    v[4].push(same.cycle(same_key, t).await);
                    v[5].push(t.elapsed());
                }
                _ => {
                    v[6].push(raw.cycle(long_key, t).await);
                    v[7].push(t.elapsed());
                }
            }
        }
    }
    let m: Vec<f64> = v.iter_mut().map(|x| p50_us(x)).collect();
    println!(
        "p50 µs (acquire/cycle): ours {:.0}/{:.0}  raw {:.0}/{:.0}  raw with the old acquire Txn (put + owner read) {:.0}/{:.0}  raw with our key's length {:.0}/{:.0}  => ours/raw cycle {:.3}x acquire {:.3}x",
        m[0], m[1], m[2], m[3], m[4], m[5], m[6], m[7], m[1] / m[3], m[0] / m[2]
    );
    ours.close().await.unwrap();
}
