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
    a_foreign_node_holding_the_seat_is_the_leader(&zk).await;
}

/// Another library's lock node on the seat (Curator's `InterProcessMutex` naming, as a
/// `layout=curator` lock of `election.NAME` makes): the lock queues behind it, so `leader`
/// must name it — its term, no value — not the candidate still waiting behind it. Before
/// the fix the seat's reads kept only `lock-…` children and reported the waiting
/// candidate as leader (review: `leader` printed the waiter's term for 4 s).
async fn a_foreign_node_holding_the_seat_is_the_leader(zk: &Zk) {
    use zookeeper_client::{Acls, CreateMode};
    let name = "foreign-seat";
    let dir = ZkElection::seat_node(name).expect("seat node");
    let container = CreateMode::Persistent.with_acls(Acls::anyone_all());
    match zk.admin.create(&dir, b"", &container).await {
        Ok(_) | Err(zookeeper_client::Error::NodeExists) => {}
        Err(e) => panic!("create the seat: {e}"),
    }
    let node = CreateMode::EphemeralSequential.with_acls(Acls::anyone_all());
    let prefix = format!("{dir}/_c_0f7c1a4e-1111-2222-3333-444455556666-lock-");
    let (stat, seq) = zk
        .admin
        .create(&prefix, b"127.0.0.1", &node)
        .await
        .expect("the foreign node");
    let election = zk.election().await;
    let campaign = tokio::spawn({
        let election = Arc::clone(&election);
        async move {
            let opts = fencelock_core::LockOptions::new().with_wait(Duration::from_secs(30));
            election.campaign(name, b"A", &opts).await
        }
    });
    let start = std::time::Instant::now();
    while zk.admin.list_children(&dir).await.expect("list").len() < 2 {
        assert!(start.elapsed() < Duration::from_secs(10), "the candidate never queued");
        tokio::time::sleep(Duration::from_millis(10)).await; // bounded polling of the server
    }
    let leader = election.leader(name).await.expect("leader").expect("a leader");
    assert_eq!(
        (leader.term, leader.value.as_slice()),
        (fencelock_core::FencingToken::new(stat.czxid as u64), &b""[..]),
        "the seat is the foreign node's, not the waiting candidate's"
    );
    zk.admin
        .delete(&format!("{prefix}{seq}"), None)
        .await
        .expect("delete the foreign node");
    let won = campaign
        .await
        .expect("join")
        .expect("elected once the foreign node went");
    assert!(won.term() > leader.term);
    let now = election.leader(name).await.expect("leader").expect("a leader");
    assert_eq!((now.term, now.value.as_slice()), (won.term(), &b"A"[..]));
    won.resign().await.expect("resign");
}
