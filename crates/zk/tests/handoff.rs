//! Issue 14: what a hand-off costs the server. The waiter watches its predecessor; from
//! the holder's release to the waiter's grant the server receives the holder's delete and
//! the waiter's one listing of the queue. (Skipping that listing when the predecessor was
//! the first node was tried and reverted: it granted a held key once in the three-server
//! conformance run, cause not found in time — see the issue-14 report.)

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail by panicking

use std::time::Duration;

use fencelock_core::{DistributedLock, LockOptions};
use fencelock_testkit::zk_server::ZkEnsemble;
use fencelock_zk::ZkLock;
use tokio::time::Instant;

/// From the holder's release to the waiter's grant the server receives two packets: the
/// holder's delete and the waiter's listing (nothing per other waiter, no retry).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hand_off_costs_the_delete_and_one_listing() {
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
    assert_eq!(packets, 2, "packets from the release to the grant");
    lease.release().await.unwrap();
}
