//! Issue 17: Redlock with `layout=bare` over three Redis servers shares a lock with
//! node-redlock 4.2.0 given the same three servers (the real client, npm, installed by the
//! test into the target dir): both directions and a mixed stress of two peer loops and two
//! fencelock loops on one shared log — no overlap, fencelock's tokens strictly increasing.
//! The peer script is the single-Redis tests' (`crates/redis-single/tests/peers/`).
//!
//! Run: `cargo test -p fencelock-redlock --test interop_node -- --nocapture`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail by panicking

use std::sync::Arc;
use std::time::Duration;

use fencelock_core::{DistributedLock, LockOptions};
use fencelock_redlock::RedlockLock;
use fencelock_testkit::interop::{
    fencelock_holds_node_redlock_waits, node_redlock, node_redlock_holds_fencelock_waits, node_redlock_mixed_stress,
    NodePeer,
};
use fencelock_testkit::keys::unique_key;
use fencelock_testkit::redis_server::{redlock_url, start_many, RedisServer};

fn peer(servers: &[RedisServer]) -> NodePeer {
    NodePeer {
        modules: node_redlock(env!("CARGO_TARGET_TMPDIR")),
        script: concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../redis-single/tests/peers/redlock-peer.js"
        )
        .into(),
        ports: servers.iter().map(RedisServer::port).collect(),
    }
}

async fn connect(servers: &[RedisServer]) -> Arc<dyn DistributedLock> {
    Arc::new(
        RedlockLock::connect(&redlock_url(servers, "layout=bare"))
            .await
            .unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_redlock_holds_and_fencelock_waits() {
    let servers = start_many(3);
    let peer = peer(&servers);
    let key = unique_key("nodelock");
    let latency = node_redlock_holds_fencelock_waits(connect(&servers).await, &peer, &key).await;
    println!("redlock hand-off node-redlock -> fencelock (retry_delay 200ms): {latency:?}");
    assert!(
        latency < Duration::from_millis(600),
        "bounded by the retry delay: {latency:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fencelock_holds_and_node_redlock_waits() {
    let servers = start_many(3);
    let peer = peer(&servers);
    let key = unique_key("nodelock");
    let locks = connect(&servers).await;
    let lease = locks.acquire(&key, &LockOptions::new()).await.unwrap();
    for s in &servers {
        let stored = s.command(&format!("GET {key}"));
        assert!(stored.contains(lease.grant().as_str()), "GET {key}: {stored:?}");
    }
    lease.release().await.unwrap();
    let latency = fencelock_holds_node_redlock_waits(locks, &peer, &key).await;
    println!("redlock hand-off fencelock -> node-redlock (its retry 20ms): {latency:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mixed_stress_node_redlock_and_fencelock_never_overlap() {
    const ROUNDS: usize = 15;
    let servers = start_many(3);
    let peer = peer(&servers);
    let key = unique_key("nodelock");
    let started = tokio::time::Instant::now();
    let check = node_redlock_mixed_stress(|| connect(&servers), &peer, &key, ROUNDS).await;
    println!("redlock mixed stress: {:?} in {:?}", check.entries, started.elapsed());
    assert_eq!(
        check.entries,
        ["fencelock-a", "fencelock-b", "node-a", "node-b"]
            .map(|w| (w.to_owned(), ROUNDS))
            .to_vec()
    );
    assert_eq!(check.overlaps, 0, "two holders at once");
    assert_eq!(check.tokens.len(), 2 * ROUNDS);
    assert!(
        check.regressions.is_empty(),
        "tokens went back: {:?}",
        check.regressions
    );
}
