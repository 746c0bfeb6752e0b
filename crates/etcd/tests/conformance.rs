//! The conformance suite against real etcd: a single member and a 3-member cluster,
//! started by the test (one per test; etcd starts in well under a second).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail by panicking

use std::sync::Arc;
use std::time::Duration;

use fencelock_core::DistributedLock;
use fencelock_testkit::conformance::SuiteConfig;
use fencelock_testkit::etcd_server::EtcdCluster;

/// etcd leases are whole seconds, at least 1 s with the testkit's 100 ms elections.
fn config() -> SuiteConfig {
    SuiteConfig {
        short_ttl: Duration::from_secs(1),
        ..SuiteConfig::default()
    }
}

async fn factory(members: usize) -> impl fencelock_testkit::conformance::ClientFactory {
    let cluster = Arc::new(EtcdCluster::start(members));
    move || {
        let cluster = Arc::clone(&cluster);
        async move {
            let url = cluster.url("session_ttl=2s");
            Arc::new(fencelock_etcd::EtcdLock::connect(&url).await.expect("connect to etcd"))
                as Arc<dyn DistributedLock>
        }
    }
}

mod single {
    use super::*;
    fencelock_testkit::conformance_suite!(factory(1), config());
}

mod cluster_of_three {
    use super::*;
    fencelock_testkit::conformance_suite!(factory(3), config());
}
