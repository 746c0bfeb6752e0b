//! Issue 17: `layout=bare` shares a lock with node-redlock (and redsync, which names keys
//! the same way), tested against the real node-redlock 4.2.0 (npm, installed by the test
//! into the target dir) on one Redis: the peer holds and fencelock waits, fencelock holds
//! and the peer waits, and a mixed stress of two peer loops and two fencelock loops on one
//! shared log — no overlap, fencelock's tokens strictly increasing. Both sides' values are
//! plain strings compared before delete, so each side's release works against the other.
//!
//! Run: `cargo test -p fencelock-redis --test interop_node -- --nocapture` (prints the
//! hand-off latencies that docs/interop.md quotes).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail by panicking

use std::sync::Arc;
use std::time::Duration;

use fencelock_core::{DistributedLock, LockOptions};
use fencelock_redis::RedisLock;
use fencelock_testkit::interop::{
    fencelock_holds_node_redlock_waits, node_redlock, node_redlock_holds_fencelock_waits, node_redlock_mixed_stress,
    NodePeer,
};
use fencelock_testkit::keys::unique_key;
use fencelock_testkit::redis_server::RedisServer;

fn peer(server: &RedisServer) -> NodePeer {
    NodePeer {
        modules: node_redlock(env!("CARGO_TARGET_TMPDIR")),
        script: concat!(env!("CARGO_MANIFEST_DIR"), "/tests/peers/redlock-peer.js").into(),
        ports: vec![server.port()],
    }
}

async fn connect(server: &RedisServer) -> Arc<dyn DistributedLock> {
    Arc::new(
        RedisLock::connect(&format!("{}?layout=bare", server.url()))
            .await
            .unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_redlock_holds_and_fencelock_waits() {
    let server = RedisServer::start();
    let peer = peer(&server);
    let key = unique_key("nodelock");
    let latency = node_redlock_holds_fencelock_waits(connect(&server).await, &peer, &key).await;
    println!("redis hand-off node-redlock -> fencelock (poll 500ms): {latency:?}");
    assert!(latency < Duration::from_millis(600), "bounded by the poll: {latency:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fencelock_holds_and_node_redlock_waits() {
    let server = RedisServer::start();
    let peer = peer(&server);
    let key = unique_key("nodelock");
    let locks = connect(&server).await;
    // Our value is a plain string under the peer's own key name.
    let lease = locks.acquire(&key, &LockOptions::new()).await.unwrap();
    let stored = server.command(&format!("GET {key}"));
    assert!(stored.contains(lease.grant().as_str()), "GET {key}: {stored:?}");
    lease.release().await.unwrap();
    let latency = fencelock_holds_node_redlock_waits(locks, &peer, &key).await;
    println!("redis hand-off fencelock -> node-redlock (its retry 20ms): {latency:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mixed_stress_node_redlock_and_fencelock_never_overlap() {
    const ROUNDS: usize = 15;
    let server = RedisServer::start();
    let peer = peer(&server);
    let key = unique_key("nodelock");
    let started = tokio::time::Instant::now();
    let check = node_redlock_mixed_stress(|| connect(&server), &peer, &key, ROUNDS).await;
    println!("redis mixed stress: {:?} in {:?}", check.entries, started.elapsed());
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
