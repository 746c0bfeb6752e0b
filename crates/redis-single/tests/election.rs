//! The election conformance suite against a real redis-server started by the test (one
//! per test), with the operator hook acting on that server directly.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail by panicking

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use fencelock_core::election::Election;
use fencelock_redis::RedisElection;
use fencelock_testkit::conformance::election::{ElectionConfig, ElectionFactory, ElectionFixture};
use fencelock_testkit::redis_server::RedisServer;

struct Redis {
    server: Arc<RedisServer>,
}

impl ElectionFactory for Redis {
    fn election(&self) -> Pin<Box<dyn Future<Output = Arc<dyn Election>> + Send + '_>> {
        Box::pin(async move {
            let e = RedisElection::connect(&self.server.url())
                .await
                .expect("connect to redis-server");
            Arc::new(e) as Arc<dyn Election>
        })
    }
}

impl ElectionFixture for Redis {
    fn remove_leader<'a>(&'a self, name: &'a str) -> Pin<Box<dyn Future<Output = ()> + Send + 'a>> {
        Box::pin(async move {
            let key = RedisElection::connect(&self.server.url())
                .await
                .expect("connect")
                .seat_lock_key(name)
                .expect("seat key");
            let server = Arc::clone(&self.server);
            let n = tokio::task::spawn_blocking(move || server.integer(&format!("DEL {key}")))
                .await
                .expect("DEL");
            assert_eq!(n, Some(1), "the operator's DEL found no seat to remove");
        })
    }
}

fn config() -> ElectionConfig {
    ElectionConfig {
        short_ttl: Duration::from_millis(300),
        slack: Duration::from_secs(1),
        ..ElectionConfig::default()
    }
}

/// A fixture on a fresh redis-server (started off the runtime's threads).
async fn redis() -> Redis {
    Redis {
        server: Arc::new(tokio::task::spawn_blocking(RedisServer::start).await.expect("start")),
    }
}

fencelock_testkit::election_suite!(redis(), config());
