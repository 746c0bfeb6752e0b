//! A TTL or session timeout shorter than what the ZooKeeper server can keep, on a real
//! server (the testkit's: `tickTime=100`, so its minimum session timeout is 200 ms).
//!
//! The review's finding: `fencelock --backend zk://… run --ttl 100ms` asked for a 100 ms
//! session (the CLI sets `session_timeout` from `--ttl`); the server silently raised it to
//! its 200 ms minimum, so a dead holder's lock stayed for twice the promised time, and the
//! client, living on 2/5 of that session, dropped its connection under load: 2 of 8
//! releases failed, the node held until the session expired, and the CLI exited 0. A
//! session timeout below the server's minimum is now refused at connect, naming the limit.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail by panicking

use std::time::Duration;

use fencelock_core::{DistributedLock, LockError, LockOptions};
use fencelock_testkit::zk_server::ZkEnsemble;
use fencelock_zk::ZkLock;
use tokio::time::Instant;

/// 100 ms asked of a server whose minimum is 200 ms: `InvalidConfig` naming both, no
/// session kept; the minimum itself is accepted and a 100 ms TTL works on it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_timeout_below_the_servers_minimum_is_refused_with_the_limit() {
    let zk = ZkEnsemble::standalone();
    let e = match ZkLock::connect(&zk.url("/short", "session_timeout=100ms")).await {
        Ok(lock) => {
            let lease = lock.try_acquire("k", &LockOptions::new()).await;
            panic!(
                "connected with session_timeout=100ms, below the server's 200ms minimum (2 ticks): \
                 the server raised it silently and a lock was {}",
                if matches!(lease, Ok(Some(_))) {
                    "granted"
                } else {
                    "tried"
                }
            )
        }
        Err(e) => e,
    };
    assert!(matches!(e, LockError::InvalidConfig { .. }), "{e}");
    let text = e.to_string();
    assert!(text.contains("session_timeout 100ms"), "the request not named: {text}");
    assert!(text.contains("minimum of 200ms"), "the limit not named: {text}");
    assert!(!e.is_temporary(), "{e}");
    // The refused session is closed before the error is returned (a process exiting on it
    // leaves no session to expire): only the four-letter command's own connection is open
    // once the server has torn the closed one down, which it counts a moment after it
    // confirmed the session's close (a full run once read 2 at once): polled for at most
    // 500 ms, far less than a session left to its timeout would stay.
    let start = Instant::now();
    let mut alive = zk.alive_connections(0);
    while alive != Some(1) && start.elapsed() < Duration::from_millis(500) {
        tokio::time::sleep(Duration::from_millis(20)).await; // polling the server's count
        alive = zk.alive_connections(0);
    }
    assert_eq!(alive, Some(1), "the refused session's connection is still open");

    // The minimum itself is what the server keeps: accepted, and a TTL below it works.
    let lock = ZkLock::connect(&zk.url("/short", "session_timeout=200ms"))
        .await
        .unwrap();
    let opts = LockOptions::new().with_ttl(Duration::from_millis(100));
    let lease = lock.acquire("k", &opts).await.unwrap();
    assert!(
        lease.remaining() <= Duration::from_millis(100),
        "{:?}",
        lease.remaining()
    );
    lease.release().await.expect("released on a 200ms session");
    lock.close().await.unwrap();
}

/// A waiter whose TTL is shorter than a round trip checks its own node every fifth of its
/// validity while it waits: with a 2 ms TTL that was an `exists` every 400 µs — the server
/// flooded for the whole wait. The check's period has a floor; the wait ends as any wait.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiter_with_a_tiny_ttl_does_not_flood_the_server() {
    let zk = ZkEnsemble::standalone();
    let url = zk.url("/tiny", "");
    let (holder, waiter) = (
        ZkLock::connect(&url).await.unwrap(),
        ZkLock::connect(&url).await.unwrap(),
    );
    let held = holder.acquire("k", &LockOptions::new()).await.unwrap();
    let before = zk.packets_received(0).expect("mntr");
    let start = Instant::now();
    let opts = LockOptions::new()
        .with_ttl(Duration::from_millis(2))
        .with_wait(Duration::from_secs(1));
    let e = waiter.acquire("k", &opts).await.expect_err("the key is held");
    let took = start.elapsed();
    let packets = zk.packets_received(0).expect("mntr") - before;
    assert!(matches!(e, LockError::Timeout { .. }), "{e}");
    assert!(took < Duration::from_secs(3), "the wait took {took:?}");
    // Pings of both clients and one queue's requests: a few dozen a second at most.
    assert!(
        packets < 100,
        "{packets} packets reached the server during a {took:?} wait with a 2ms TTL"
    );
    held.release().await.unwrap();
    holder.close().await.unwrap();
    waiter.close().await.unwrap();
}
