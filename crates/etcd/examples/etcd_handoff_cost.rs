//! Where a hand-off's time goes under contention: CLIENTS clients (each its own
//! connection) take turns on one key, each asking again at once after its release, on one
//! etcd member this example starts (free loopback ports; stopped at the end).
//!
//! Prints, per grant, the member's WAL fsyncs and Raft proposals (from `/metrics`; the
//! proposals include each client's session lease grant and revoke, 2 × CLIENTS in all); the
//! holder's release latency and the hand-off (release call → another client's acquire
//! returning), p50/p90/p99; every hand-off over 10 ms; and the uncontended acquire +
//! release p50 measured first, for the ratio. With `watchers` it also samples etcd's
//! gauge of watches parked in its unsynced group (`etcd_debugging_mvcc_slow_watcher_total`)
//! every 10 ms — that polling loads the member, so leave it out when comparing latencies.
//!
//! `cargo run --release -p fencelock-etcd --example etcd_handoff_cost -- [CLIENTS] [GRANTS] [watchers]`
//! (defaults 8 and 500; the data directory is under `TMPDIR`: a disk's fsyncs or, on
//! `/dev/shm`, none).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fencelock_core::{DistributedLock, LockOptions};
use fencelock_etcd::EtcdLock;
use fencelock_testkit::etcd_server::{metrics, EtcdCluster};

/// The `q` quantile of `sorted`, µs; 0 for no samples (one client makes no hand-off).
fn pct(sorted: &[Duration], q: f64) -> u128 {
    if sorted.is_empty() {
        return 0;
    }
    sorted[((sorted.len() - 1) as f64 * q) as usize].as_micros()
}

/// The last release of the key: its call instant, its return instant once known, by whom.
type LastRelease = Mutex<Option<(Instant, Option<Instant>, usize)>>;

/// Per hand-off: the holder's release latency (when it returned before the grant) and the
/// hand-off itself.
type Seen = Mutex<Vec<(Option<Duration>, Duration)>>;

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let clients: usize = args.next().map_or(8, |s| s.parse().expect("CLIENTS is a number"));
    let grants: usize = args.next().map_or(500, |s| s.parse().expect("GRANTS is a number"));
    let sample = args.next().as_deref() == Some("watchers");
    let cluster = EtcdCluster::single();
    let url = cluster.url("");
    let port = cluster.client_ports()[0];
    let opts = LockOptions::new()
        .with_ttl(Duration::from_secs(10))
        .with_wait(Duration::from_secs(20));

    let solo = EtcdLock::connect(&url).await.unwrap();
    let mut cycles = Vec::new();
    for _ in 0..200 {
        let t = Instant::now();
        solo.acquire("solo", &opts).await.unwrap().release().await.unwrap();
        cycles.push(t.elapsed());
    }
    solo.close().await.unwrap();
    cycles.sort();
    let cycle = pct(&cycles, 0.5);

    let stop = Arc::new(AtomicBool::new(false));
    let sampler = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let (mut parked, mut samples) = (0u32, 0u32);
            while sample && !stop.load(Ordering::SeqCst) {
                let v = metrics(port).get("etcd_debugging_mvcc_slow_watcher_total").copied();
                samples += 1;
                parked += u32::from(v.unwrap_or(0.0) > 0.0);
                std::thread::sleep(Duration::from_millis(10));
            }
            (parked, samples)
        })
    };
    let before = metrics(port);
    let last: Arc<LastRelease> = Arc::default();
    let seen: Arc<Seen> = Arc::default();
    let made = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for me in 0..clients {
        let lock = EtcdLock::connect(&url).await.unwrap();
        let (last, seen, made) = (last.clone(), seen.clone(), made.clone());
        tasks.push(tokio::spawn(async move {
            while made.load(Ordering::SeqCst) < grants {
                let lease = lock.acquire("contended", &opts).await.unwrap();
                let now = Instant::now();
                if let Some((t0, t1, by)) = last.lock().unwrap().take() {
                    if by != me {
                        seen.lock().unwrap().push((t1.map(|t1| t1 - t0), now - t0));
                    }
                }
                made.fetch_add(1, Ordering::SeqCst);
                let t0 = Instant::now();
                *last.lock().unwrap() = Some((t0, None, me));
                lease.release().await.unwrap();
                let t1 = Instant::now();
                if let Some(l) = last.lock().unwrap().as_mut().filter(|l| l.0 == t0) {
                    l.1 = Some(t1);
                }
            }
            lock.close().await.unwrap();
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    stop.store(true, Ordering::SeqCst);
    let (parked, samples) = sampler.join().unwrap();
    let after = metrics(port);
    let per_grant = |k: &str| {
        (after.get(k).copied().unwrap_or(0.0) - before.get(k).copied().unwrap_or(0.0))
            / made.load(Ordering::SeqCst) as f64
    };
    let seen = seen.lock().unwrap().clone();
    let mut releases: Vec<Duration> = seen.iter().filter_map(|s| s.0).collect();
    let mut hand_offs: Vec<Duration> = seen.iter().map(|s| s.1).collect();
    releases.sort();
    hand_offs.sort();
    println!("uncontended acquire + release p50 {cycle} µs");
    println!(
        "{clients} clients, {} hand-offs: WAL fsyncs per grant {:.2}, Raft proposals per grant {:.2}",
        hand_offs.len(),
        per_grant("etcd_disk_wal_fsync_duration_seconds_count"),
        per_grant("etcd_server_proposals_committed_total"),
    );
    println!(
        "release (holder's call → its return) p50 {} p90 {} µs; hand-off p50 {} p90 {} p99 {} µs = p50 {:.2}× the cycle",
        pct(&releases, 0.5),
        pct(&releases, 0.9),
        pct(&hand_offs, 0.5),
        pct(&hand_offs, 0.9),
        pct(&hand_offs, 0.99),
        pct(&hand_offs, 0.5) as f64 / cycle.max(1) as f64,
    );
    let slow: Vec<u128> = hand_offs
        .iter()
        .filter(|d| d.as_millis() > 10)
        .map(|d| d.as_millis())
        .collect();
    println!("hand-offs over 10 ms ({}): {slow:?} ms", slow.len());
    if sample {
        println!("samples with a watch parked in etcd's unsynced group: {parked} of {samples}");
    }
}
