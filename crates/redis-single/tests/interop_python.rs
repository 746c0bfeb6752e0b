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

use fencelock_core::{DistributedLock, LockOptions};
use fencelock_redis::RedisLock;
use fencelock_testkit::interop::{LogCheck, SharedLog};
use fencelock_testkit::keys::unique_key;
use fencelock_testkit::redis_server::RedisServer;
use python::{Lib, PyPeer};
use tokio::time::Instant;

/// Bound on one step of a scenario.
const STEP: Duration = Duration::from_secs(15);

async fn connect(server: &RedisServer, lib: Lib) -> Arc<dyn DistributedLock> {
    Arc::new(
        RedisLock::connect(&format!("{}?layout={}", server.url(), lib.name()))
            .await
            .unwrap(),
    )
}

fn opts() -> LockOptions {
    LockOptions::new()
        .with_ttl(Duration::from_secs(10))
        .with_wait(Duration::from_secs(20))
}

/// The peer holds; fencelock is refused, waits, and is served once the peer releases.
/// Returns the hand-off latency from the peer's release request to fencelock's grant.
async fn peer_holds_fencelock_waits(lib: Lib) -> Duration {
    let server = RedisServer::start();
    let name = unique_key("py");
    let locks = connect(&server, lib).await;
    let mut peer = PyPeer::start(lib, server.port(), &name, "peer").await;
    assert_eq!(peer.ask("acquire 5000", STEP).await, "acquired");
    let stored = server.command(&format!("GET {}", lib.key(&name)));
    assert!(!stored.trim().is_empty(), "the peer's value under {}", lib.key(&name));
    assert!(
        locks.try_acquire(&name, &opts()).await.unwrap().is_none(),
        "fencelock took a lock {} holds",
        lib.name()
    );
    let waiter = tokio::spawn({
        let (locks, name) = (Arc::clone(&locks), name.clone());
        async move { locks.acquire(&name, &opts()).await }
    });
    // Shows absence: the waiter is still waiting a while after it started.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !waiter.is_finished(),
        "fencelock's waiter got a lock {} holds",
        lib.name()
    );
    let released = Instant::now();
    assert_eq!(peer.ask("release", STEP).await, "released");
    let lease = tokio::time::timeout(STEP, waiter)
        .await
        .expect("fencelock is served")
        .unwrap()
        .unwrap();
    let latency = released.elapsed();
    let stored = server.command(&format!("GET {}", lib.key(&name)));
    assert!(
        stored.contains(lease.grant().as_str()),
        "fencelock's value under the peer's key: {stored:?}"
    );
    lease.release().await.unwrap();
    peer.quit().await;
    locks.close().await.unwrap();
    latency
}

/// fencelock holds; the peer (asked to wait 10 s) is kept out, and is served once
/// fencelock releases. Returns the hand-off latency from fencelock's release to the peer's
/// grant.
async fn fencelock_holds_peer_waits(lib: Lib) -> Duration {
    let server = RedisServer::start();
    let name = unique_key("py");
    let locks = connect(&server, lib).await;
    let mut peer = PyPeer::start(lib, server.port(), &name, "peer").await;
    let lease = locks.acquire(&name, &opts()).await.unwrap();
    peer.send("acquire 10000").await;
    assert_eq!(
        peer.line(Duration::from_millis(1500)).await,
        None,
        "{} took a lock fencelock holds",
        lib.name()
    );
    let released = Instant::now();
    lease.release().await.unwrap();
    assert_eq!(peer.line(STEP).await.as_deref(), Some("acquired"));
    let latency = released.elapsed();
    assert_eq!(peer.ask("release", STEP).await, "released");
    peer.quit().await;
    locks.close().await.unwrap();
    latency
}

/// Two peer loops and two fencelock loops (each its own instance), `rounds` each, on one
/// shared log.
async fn mixed_stress(lib: Lib, rounds: usize) -> LogCheck {
    let server = RedisServer::start();
    let name = unique_key("py-stress");
    let path = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("{name}.log"));
    let log = SharedLog::create(&path);
    let mut tasks = Vec::new();
    for who in ["peer-a", "peer-b"] {
        let mut peer = PyPeer::start(lib, server.port(), &name, who).await;
        let cmd = format!("loop {rounds} 20 {}", log.path().display());
        tasks.push(tokio::spawn(async move {
            assert_eq!(peer.ask(&cmd, Duration::from_secs(120)).await, "done");
            peer.quit().await;
        }));
    }
    for who in ["fencelock-a", "fencelock-b"] {
        let (locks, name, log) = (connect(&server, lib).await, name.clone(), log.clone());
        tasks.push(tokio::spawn(async move {
            for _ in 0..rounds {
                let lease = locks.acquire(&name, &opts()).await.unwrap();
                log.enter(who, Some(lease.token().get()));
                tokio::time::sleep(Duration::from_millis(20)).await; // the critical section's work
                log.exit(who);
                lease.release().await.unwrap();
            }
            locks.close().await.unwrap();
        }));
    }
    for t in tasks {
        tokio::time::timeout(Duration::from_secs(180), t)
            .await
            .expect("every loop ends")
            .unwrap();
    }
    let check = log.check();
    let _ = std::fs::remove_file(&path);
    check
}

fn assert_clean(check: &LogCheck, rounds: usize) {
    assert_eq!(
        check.entries,
        ["fencelock-a", "fencelock-b", "peer-a", "peer-b"]
            .map(|w| (w.to_owned(), rounds))
            .to_vec()
    );
    assert_eq!(check.overlaps, 0, "two holders at once");
    assert_eq!(check.tokens.len(), 2 * rounds);
    assert!(
        check.regressions.is_empty(),
        "tokens went back: {:?}",
        check.regressions
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_redis_lock_holds_and_fencelock_waits() {
    let latency = peer_holds_fencelock_waits(Lib::PythonRedisLock).await;
    println!("redis hand-off python-redis-lock -> fencelock (poll 500ms): {latency:?}");
    // The poll (500 ms, jittered 50-100 %) plus the scheduling noise of a shared machine.
    assert!(latency < Duration::from_millis(750), "bounded by the poll: {latency:?}");
}

/// Written before fencelock's release pushed `lock-signal:NAME`: the Python waiter then
/// slept in its `BLPOP` until its 10 s timeout ran out (about 8.5 s after the release).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fencelock_release_wakes_a_python_redis_lock_waiter_at_once() {
    let latency = fencelock_holds_peer_waits(Lib::PythonRedisLock).await;
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
    let check = mixed_stress(Lib::PythonRedisLock, ROUNDS).await;
    println!(
        "python-redis-lock mixed stress: {:?} in {:?}",
        check.entries,
        started.elapsed()
    );
    assert_clean(&check, ROUNDS);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pottery_holds_and_fencelock_waits() {
    let latency = peer_holds_fencelock_waits(Lib::Pottery).await;
    println!("redis hand-off pottery -> fencelock (poll 500ms): {latency:?}");
    // The poll (500 ms, jittered 50-100 %) plus the scheduling noise of a shared machine.
    assert!(latency < Duration::from_millis(750), "bounded by the poll: {latency:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fencelock_holds_and_pottery_waits() {
    let latency = fencelock_holds_peer_waits(Lib::Pottery).await;
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
    let check = mixed_stress(Lib::Pottery, ROUNDS).await;
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
