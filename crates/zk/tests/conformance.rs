//! The conformance suite against real ZooKeeper: a standalone server and a 3-server
//! ensemble. A JVM takes a while to start, so each runs the whole suite (`run_all`) on one
//! server or ensemble; the suite's unique keys keep the behaviours apart.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail by panicking

use std::sync::Arc;

use fencelock_core::DistributedLock;
use fencelock_testkit::conformance::{run_all, SuiteConfig};
use fencelock_testkit::zk_server::ZkEnsemble;

async fn suite(servers: usize) {
    let ensemble = Arc::new(ZkEnsemble::start(servers));
    let url = ensemble.url("/conformance", "session_timeout=2s");
    let factory = move || {
        let url = url.clone();
        async move {
            Arc::new(fencelock_zk::ZkLock::connect(&url).await.expect("connect to ZooKeeper"))
                as Arc<dyn DistributedLock>
        }
    };
    run_all(&factory, &SuiteConfig::default()).await;
    drop(ensemble);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_on_a_standalone_server() {
    suite(1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_on_a_three_server_ensemble() {
    suite(3).await;
}
