//! Issue 17: `layout=python-redis-lock` and `layout=pottery` share a lock with those Python
//! libraries, tested against the real clients (PyPI, pinned, in a virtualenv the test makes
//! under the target dir: `peers/python.rs`, `peers/py_lock_peer.py`) on a real redis-server
//! the test starts: the peer holds and fencelock waits (and is served once the peer
//! releases), fencelock holds and the peer waits (and is served once fencelock releases),
//! and a mixed stress of two peer loops and two fencelock loops × 15 rounds on one shared
//! log — no overlap, fencelock's tokens strictly increasing across the mixed holders.
//!
//! python-redis-lock's waiters block in `BLPOP lock-signal:NAME` for up to their whole
//! timeout; its releases push that list. fencelock's release in that layout pushes it too,
//! so a Python waiter is woken at once, not at the end of its `BLPOP`
//! (`fencelock_release_wakes_a_python_redis_lock_waiter_at_once`).
//!
//! Run: `cargo test -p fencelock-redis --test interop_python -- --nocapture` (prints the
//! hand-off latencies docs/interop.md quotes). A machine without python3-venv or PyPI
//! access FAILS with the install hint.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail by panicking

#[path = "peers/python.rs"]
mod python;

use std::sync::Arc;
use std::time::Duration;

use fencelock_core::DistributedLock;
use fencelock_redis::RedisLock;
use fencelock_testkit::redis_server::RedisServer;
use python::{assert_clean, fencelock_holds_peer_waits, mixed_stress, peer_holds_fencelock_waits, Lib};
use tokio::time::Instant;

/// A connect function for the scenarios: a fresh instance on `server` in `lib`'s layout.
fn connect(
    server: &RedisServer,
    lib: Lib,
) -> impl Fn() -> std::pin::Pin<Box<dyn std::future::Future<Output = Arc<dyn DistributedLock>> + Send>> {
    let url = format!("{}?layout={}", server.url(), lib.name());
    move || {
        let url = url.clone();
        Box::pin(async move { Arc::new(RedisLock::connect(&url).await.unwrap()) as Arc<dyn DistributedLock> })
    }
}

/// Runs `scenario` on a fresh server.
macro_rules! on_one_server {
    ($scenario:ident, $lib:expr $(, $arg:expr)*) => {{
        let server = RedisServer::start();
        let servers = [server];
        let connect = connect(&servers[0], $lib);
        $scenario($lib, &servers, connect $(, $arg)*).await
    }};
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_redis_lock_holds_and_fencelock_waits() {
    let latency = on_one_server!(peer_holds_fencelock_waits, Lib::PythonRedisLock);
    println!("redis hand-off python-redis-lock -> fencelock (poll 500ms): {latency:?}");
    // The poll (500 ms, jittered 50-100 %) plus the scheduling noise of a shared machine.
    assert!(latency < Duration::from_millis(750), "bounded by the poll: {latency:?}");
}

/// Written before fencelock's release pushed `lock-signal:NAME`: the Python waiter then
/// slept in its `BLPOP` until its 10 s timeout ran out (about 8.5 s after the release).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fencelock_release_wakes_a_python_redis_lock_waiter_at_once() {
    let latency = on_one_server!(fencelock_holds_peer_waits, Lib::PythonRedisLock);
    println!("redis hand-off fencelock -> python-redis-lock (its BLPOP on lock-signal): {latency:?}");
    assert!(
        latency < Duration::from_secs(1),
        "woken by the signal list: {latency:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mixed_stress_python_redis_lock_and_fencelock_never_overlap() {
    const ROUNDS: usize = 15;
    let started = Instant::now();
    let check = on_one_server!(mixed_stress, Lib::PythonRedisLock, ROUNDS);
    println!(
        "python-redis-lock mixed stress: {:?} in {:?}",
        check.entries,
        started.elapsed()
    );
    assert_clean(&check, ROUNDS);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pottery_holds_and_fencelock_waits() {
    let latency = on_one_server!(peer_holds_fencelock_waits, Lib::Pottery);
    println!("redis hand-off pottery -> fencelock (poll 500ms): {latency:?}");
    // The poll (500 ms, jittered 50-100 %) plus the scheduling noise of a shared machine.
    assert!(latency < Duration::from_millis(750), "bounded by the poll: {latency:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fencelock_holds_and_pottery_waits() {
    let latency = on_one_server!(fencelock_holds_peer_waits, Lib::Pottery);
    println!("redis hand-off fencelock -> pottery (its retry 0-200ms): {latency:?}");
    assert!(
        latency < Duration::from_secs(1),
        "bounded by pottery's retry: {latency:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mixed_stress_pottery_and_fencelock_never_overlap() {
    const ROUNDS: usize = 15;
    let started = Instant::now();
    let check = on_one_server!(mixed_stress, Lib::Pottery, ROUNDS);
    println!("pottery mixed stress: {:?} in {:?}", check.entries, started.elapsed());
    assert_clean(&check, ROUNDS);
}

/// Issue 17: the election's seat keeps its record, counter and change channel under
/// fencelock's own names, which a peer layout's lock key (`lock:election.NAME`, …) does not
/// match, and no peer library has an election recipe on these keys: an election in a peer
/// layout is refused at connect as a configuration error (CLI exit 78) saying what to do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn elections_refuse_peer_layouts() {
    let server = RedisServer::start();
    for layout in ["bare", "python-redis-lock", "pottery"] {
        let e = fencelock_redis::RedisElection::connect(&format!("{}?layout={layout}", server.url()))
            .await
            .err()
            .unwrap_or_else(|| panic!("layout={layout}: an election was made"));
        assert!(matches!(e, fencelock_core::LockError::InvalidConfig { .. }), "{e}");
        assert!(e.to_string().contains(&format!("layout={layout}")), "{e}");
        assert!(e.to_string().contains("default layout"), "{e}");
    }
    fencelock_redis::RedisElection::connect(&server.url()).await.unwrap();
}

/// Messages name the layout in use (a newcomer's "held by someone else (on
/// redis://127.0.0.1:36379)" hid that the lock was python-redis-lock's key).
#[tokio::test]
async fn describe_names_a_peer_layout() {
    let server = RedisServer::start();
    for layout in ["bare", "python-redis-lock", "pottery"] {
        let locks = RedisLock::connect(&format!("{}?layout={layout}", server.url()))
            .await
            .unwrap();
        assert!(
            locks.describe().ends_with(&format!("?layout={layout}")),
            "{}",
            locks.describe()
        );
    }
    let plain = RedisLock::connect(&server.url()).await.unwrap();
    assert!(!plain.describe().contains("layout"), "{}", plain.describe());
}
