//! The conformance suite against Redlock over 5 real redis-servers started by the test.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail by panicking

use std::sync::Arc;

use fencelock_core::DistributedLock;
use fencelock_testkit::conformance::SuiteConfig;
use fencelock_testkit::redis_server::{redlock_url, start_many};

fencelock_testkit::conformance_suite!(
    async {
        let servers = Arc::new(start_many(5));
        move || {
            let servers = Arc::clone(&servers);
            async move {
                let url = redlock_url(&servers, "per_node_timeout=50ms");
                Arc::new(fencelock_redlock::RedlockLock::connect(&url).await.expect("redlock"))
                    as Arc<dyn DistributedLock>
            }
        }
    },
    SuiteConfig::default()
);
