//! Issue 14: what a hand-off costs the server. A waiter is already queued and watches its
//! predecessor, so from the holder's release to the waiter's grant the server should see
//! the holder's delete and one confirming read — not a look-up of the predecessor and
//! then a re-read of our own key.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail by panicking

use std::io::{Read, Write};
use std::time::Duration;

use fencelock_core::{DistributedLock, LockOptions};
use fencelock_etcd::EtcdLock;
use fencelock_testkit::etcd_server::EtcdCluster;
use fencelock_testkit::keys::unique_key;
use tokio::time::Instant;

/// etcd's gauge of watchers on member 0 (`etcd_debugging_mvcc_watcher_total`). Read with a
/// bare HTTP/1.0 GET: the testkit's reader of `/metrics` only sums gRPC counters.
fn watchers(cluster: &EtcdCluster) -> u64 {
    let port = cluster.client_ports()[0];
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        .unwrap();
    let mut body = String::new();
    s.read_to_string(&mut body).unwrap();
    body.lines()
        .find_map(|l| l.strip_prefix("etcd_debugging_mvcc_watcher_total "))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map_or(0, |v| v as u64)
}

fn calls(cluster: &EtcdCluster, method: &str) -> u64 {
    cluster.grpc_calls(0, method).expect("the member answers /metrics")
}

/// From the holder's release to the waiter's grant: two transactions (the holder's
/// guarded delete, the waiter's one queue read that also checks its own key) and no other
/// read. Before issue 14 the waiter sent two reads in a row (the predecessor look-up,
/// then the re-read of its key): Txn 1, Range 2.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hand_off_costs_the_delete_and_one_read() {
    let cluster = EtcdCluster::single();
    // A long session TTL: the session's periodic key check (a Range) stays out of the way.
    let url = cluster.url("session_ttl=60s");
    let (a, b) = (
        EtcdLock::connect(&url).await.unwrap(),
        EtcdLock::connect(&url).await.unwrap(),
    );
    let key = unique_key("handoff");
    let opts = LockOptions::new()
        .with_ttl(Duration::from_secs(10))
        .with_wait(Duration::from_secs(20));
    let held = a.acquire(&key, &opts).await.unwrap();
    let base_watchers = watchers(&cluster);
    let waiter = tokio::spawn({
        let (b, key) = (b.clone(), key.clone());
        async move { b.acquire(&key, &opts).await }
    });
    // The waiter is settled once its watch on the predecessor exists (bounded polling).
    let deadline = Instant::now() + Duration::from_secs(10);
    while watchers(&cluster) <= base_watchers {
        assert!(Instant::now() < deadline, "the waiter never watched its predecessor");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (txn0, range0) = (calls(&cluster, "Txn"), calls(&cluster, "Range"));
    held.release().await.unwrap();
    let lease = tokio::time::timeout(Duration::from_secs(10), waiter)
        .await
        .expect("the waiter is served")
        .unwrap()
        .unwrap();
    let (txn, range) = (calls(&cluster, "Txn") - txn0, calls(&cluster, "Range") - range0);
    assert_eq!(
        (txn, range),
        (2, 0),
        "Txn and Range calls from the release to the grant"
    );
    lease.release().await.unwrap();
    a.close().await.unwrap();
    b.close().await.unwrap();
}
