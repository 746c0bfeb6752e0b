//! Issue 17, Redlock: pottery's `Redlock` over three masters and fencelock's Redlock with
//! `layout=pottery` over the same three real redis-servers (the peer: PyPI, pinned, in a
//! virtualenv the test makes; shared with `fencelock-redis`'s `interop_python`, whose
//! `tests/peers/python.rs` this file includes): the peer holds and fencelock waits,
//! fencelock holds and the peer waits, and 2 + 2 loops × 15 rounds on one log with no
//! overlap and fencelock's tokens strictly increasing. python-redis-lock is not a Redlock
//! client and is tested on one Redis only. An election in a peer layout is refused.
//!
//! Run: `cargo test -p fencelock-redlock --test interop_python -- --nocapture`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail by panicking

#[path = "../../redis-single/tests/peers/python.rs"]
mod python;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use fencelock_core::{DistributedLock, LockError};
use fencelock_redlock::{RedlockElection, RedlockLock};
use fencelock_testkit::redis_server::{redlock_url, start_many, RedisServer};
use python::{assert_clean, fencelock_holds_peer_waits, mixed_stress, peer_holds_fencelock_waits, Lib};
use tokio::time::Instant;

type Connect = Box<dyn Fn() -> Pin<Box<dyn Future<Output = Arc<dyn DistributedLock>> + Send>>>;

/// A fresh fencelock Redlock instance over `servers` in pottery's layout, per call.
fn connect(servers: &[RedisServer]) -> Connect {
    let url = redlock_url(servers, "layout=pottery");
    Box::new(move || {
        let url = url.clone();
        Box::pin(async move { Arc::new(RedlockLock::connect(&url).await.unwrap()) as Arc<dyn DistributedLock> })
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pottery_holds_and_fencelock_redlock_waits() {
    let servers = start_many(3);
    let latency = peer_holds_fencelock_waits(Lib::Pottery, &servers, connect(&servers)).await;
    println!("redlock hand-off pottery -> fencelock (retry_delay 200ms): {latency:?}");
    // retry_delay (200 ms, jittered) plus a quorum round and the shared machine's noise.
    assert!(
        latency < Duration::from_millis(750),
        "bounded by retry_delay: {latency:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fencelock_redlock_holds_and_pottery_waits() {
    let servers = start_many(3);
    let latency = fencelock_holds_peer_waits(Lib::Pottery, &servers, connect(&servers)).await;
    println!("redlock hand-off fencelock -> pottery (its retry 0-200ms): {latency:?}");
    assert!(
        latency < Duration::from_secs(1),
        "bounded by pottery's retry: {latency:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mixed_stress_pottery_and_fencelock_redlock_never_overlap() {
    const ROUNDS: usize = 15;
    let servers = start_many(3);
    let started = Instant::now();
    let check = mixed_stress(Lib::Pottery, &servers, connect(&servers), ROUNDS).await;
    println!(
        "redlock pottery mixed stress: {:?} in {:?}",
        check.entries,
        started.elapsed()
    );
    assert_clean(&check, ROUNDS);
}

/// The seat keys of an election keep fencelock's own names, which a peer layout's lock key
/// does not match, and no peer library elects on them: refused at connect.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn elections_refuse_peer_layouts() {
    let servers = start_many(3);
    for layout in ["bare", "python-redis-lock", "pottery"] {
        let e = RedlockElection::connect(&redlock_url(&servers, &format!("layout={layout}")))
            .await
            .err()
            .unwrap_or_else(|| panic!("layout={layout}: an election was made"));
        assert!(matches!(e, LockError::InvalidConfig { .. }), "{e}");
        assert!(e.to_string().contains(&format!("layout={layout}")), "{e}");
    }
    RedlockElection::connect(&redlock_url(&servers, "")).await.unwrap();
}
