//! Issue 14: what a hand-off costs the server. The waiter watches its predecessor; when
//! that was the first node, its deletion makes the waiter first, so from the holder's
//! release to the waiter's grant the server receives only the holder's delete.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail by panicking

use std::time::Duration;

use fencelock_core::{DistributedLock, LockOptions};
use fencelock_testkit::zk_server::ZkEnsemble;
use fencelock_zk::ZkLock;
use tokio::time::Instant;

/// From the holder's release to the waiter's grant the server receives one packet, the
/// holder's delete. Before issue 14 the waiter listed the queue again after the watch
/// fired: two packets.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hand_off_from_the_first_node_costs_only_the_delete() {
    let ensemble = ZkEnsemble::standalone();
    // A long session timeout: the clients' pings (every third of it) stay out of the way.
    let url = ensemble.url("/handoff", "session_timeout=30s");
    let (a, b) = (
        ZkLock::connect(&url).await.unwrap(),
        ZkLock::connect(&url).await.unwrap(),
    );
    let opts = LockOptions::new()
        .with_ttl(Duration::from_secs(10))
        .with_wait(Duration::from_secs(20));
    let held = a.acquire("k", &opts).await.unwrap();
    let base_watches = ensemble.watch_count(0).expect("the server answers wchs");
    let waiter = tokio::spawn({
        let b = b.clone();
        async move { b.acquire("k", &opts).await }
    });
    // The waiter is settled once its watch on the predecessor exists (bounded polling).
    let deadline = Instant::now() + Duration::from_secs(10);
    while ensemble.watch_count(0).expect("wchs") <= base_watches {
        assert!(Instant::now() < deadline, "the waiter never watched its predecessor");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // `mntr` counts itself as a received packet: measure what one reading adds.
    let idle = ensemble.packets_received(0).expect("the server answers mntr");
    let before = ensemble.packets_received(0).expect("the server answers mntr");
    let reading = before - idle;
    held.release().await.unwrap();
    let lease = tokio::time::timeout(Duration::from_secs(10), waiter)
        .await
        .expect("the waiter is served")
        .unwrap()
        .unwrap();
    let packets = ensemble.packets_received(0).expect("mntr") - before - reading;
    assert_eq!(packets, 1, "packets from the release to the grant");
    lease.release().await.unwrap();
}
