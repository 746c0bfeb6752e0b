//! The conformance suite against a real redis-server started by the test (one per test).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail by panicking

use std::sync::Arc;

use fencelock_core::DistributedLock;
use fencelock_testkit::conformance::SuiteConfig;
use fencelock_testkit::redis_server::RedisServer;

fencelock_testkit::conformance_suite!(
    async {
        let server = Arc::new(RedisServer::start());
        move || {
            let server = Arc::clone(&server);
            async move {
                let lock = fencelock_redis::RedisLock::connect(&server.url())
                    .await
                    .expect("connect to redis-server");
                Arc::new(lock) as Arc<dyn DistributedLock>
            }
        }
    },
    SuiteConfig::default()
);
