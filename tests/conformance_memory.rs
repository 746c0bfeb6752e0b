//! The conformance suite against `memory://`: clients share one named table per test.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail by panicking

use std::sync::Arc;

use fencelock::DistributedLock;
use fencelock_testkit::conformance::SuiteConfig;
use fencelock_testkit::keys::unique_key;

fencelock_testkit::conformance_suite!(
    async {
        let url = format!("memory://{}", unique_key("suite"));
        move || {
            let url = url.clone();
            async move { fencelock::connect(&url).await.expect("connect memory://") as Arc<dyn DistributedLock> }
        }
    },
    SuiteConfig::default()
);
