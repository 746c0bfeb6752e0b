//! The election conformance suite against a real ZooKeeper server started by the test. A
//! JVM takes a while to start, so one test runs the whole suite (`run_all_elections`) on
//! one server; the suite's unique names keep the behaviours apart. The operator hook
//! deletes the leader's node through a separate zookeeper-client connection.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail by panicking

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use fencelock_core::election::Election;
use fencelock_testkit::conformance::election::{run_all_elections, ElectionConfig, ElectionFactory, ElectionFixture};
use fencelock_testkit::zk_server::ZkEnsemble;
use fencelock_zk::ZkElection;

const CHROOT: &str = "/election";

struct Zk {
    _ensemble: ZkEnsemble,
    url: String,
    admin: zookeeper_client::Client,
}

impl ElectionFactory for Zk {
    fn election(&self) -> Pin<Box<dyn Future<Output = Arc<dyn Election>> + Send + '_>> {
        Box::pin(async move {
            Arc::new(ZkElection::connect(&self.url).await.expect("connect to ZooKeeper")) as Arc<dyn Election>
        })
    }
}

impl ElectionFixture for Zk {
    fn remove_leader<'a>(&'a self, name: &'a str) -> Pin<Box<dyn Future<Output = ()> + Send + 'a>> {
        Box::pin(async move {
            let dir = ZkElection::seat_node(name).expect("seat node");
            self.admin.sync(&dir).await.expect("sync");
            let mut children = self.admin.list_children(&dir).await.expect("list the seat");
            children.sort_by_key(|c| c.rsplit('-').next().and_then(|s| s.parse::<i64>().ok()));
            let lowest = children.first().expect("a leader's node");
            self.admin
                .delete(&format!("{dir}/{lowest}"), None)
                .await
                .expect("delete the leader's node");
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn election_conformance_on_zookeeper() {
    let ensemble = tokio::task::spawn_blocking(|| ZkEnsemble::start(1))
        .await
        .expect("start ZooKeeper");
    let url = ensemble.url(CHROOT, "session_timeout=2s");
    drop(
        ZkElection::connect(&url)
            .await
            .expect("the first client creates the chroot"),
    );
    let admin = zookeeper_client::Client::connector()
        .with_session_timeout(Duration::from_secs(10))
        .connect(&format!("{}{CHROOT}", ensemble.endpoints().join(",")))
        .await
        .expect("the operator's connection");
    let zk = Zk {
        _ensemble: ensemble,
        url,
        admin,
    };
    let cfg = ElectionConfig {
        short_ttl: Duration::from_millis(500),
        slack: Duration::from_secs(2),
        changes: 1000,
        ..ElectionConfig::default()
    };
    run_all_elections(&zk, &cfg).await;
}
