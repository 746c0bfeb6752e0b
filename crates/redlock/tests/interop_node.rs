//! Issue 17: Redlock with `layout=bare` over three Redis servers shares a lock with
//! node-redlock 4.2.0 given the same three servers (the real client, npm, installed by the
//! test into the target dir): both directions and a mixed stress of two peer loops and two
//! fencelock loops on one shared log — no overlap, fencelock's tokens strictly increasing.
//! The peer script is the single-Redis tests' (`crates/redis-single/tests/peers/`).
//!
//! Run: `cargo test -p fencelock-redlock --test interop_node -- --nocapture`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail by panicking

use std::sync::Arc;

use fencelock_core::DistributedLock;
use fencelock_redlock::RedlockLock;
use fencelock_testkit::interop::{node_redlock, NodeInterop, NodePeer};
use fencelock_testkit::redis_server::{redlock_url, start_many, RedisServer};

/// Three Redis servers; fencelock's Redlock in `layout=bare`; the peer given the same three.
fn interop() -> NodeInterop {
    let servers = start_many(3);
    let url = redlock_url(&servers, "layout=bare");
    NodeInterop {
        backend: "redlock",
        waits_by: "retry_delay 200ms",
        peer: NodePeer {
            modules: node_redlock(env!("CARGO_TARGET_TMPDIR")),
            script: concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../redis-single/tests/peers/redlock-peer.js"
            )
            .into(),
            ports: servers.iter().map(RedisServer::port).collect(),
        },
        servers,
        connect: Box::new(move || {
            let url = url.clone();
            Box::pin(async move { Arc::new(RedlockLock::connect(&url).await.unwrap()) as Arc<dyn DistributedLock> })
        }),
    }
}

fencelock_testkit::node_redlock_interop_tests!(interop());
