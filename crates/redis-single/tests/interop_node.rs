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

use fencelock_core::DistributedLock;
use fencelock_redis::RedisLock;
use fencelock_testkit::interop::{node_redlock, NodeInterop, NodePeer};
use fencelock_testkit::redis_server::RedisServer;

/// One Redis; fencelock in `layout=bare`; the peer on the same server.
fn interop() -> NodeInterop {
    let server = RedisServer::start();
    let url = format!("{}?layout=bare", server.url());
    NodeInterop {
        backend: "redis",
        waits_by: "poll 500ms",
        peer: NodePeer {
            modules: node_redlock(env!("CARGO_TARGET_TMPDIR")),
            script: concat!(env!("CARGO_MANIFEST_DIR"), "/tests/peers/redlock-peer.js").into(),
            ports: vec![server.port()],
        },
        servers: vec![server],
        connect: Box::new(move || {
            let url = url.clone();
            Box::pin(async move { Arc::new(RedisLock::connect(&url).await.unwrap()) as Arc<dyn DistributedLock> })
        }),
    }
}

fencelock_testkit::node_redlock_interop_tests!(interop());
