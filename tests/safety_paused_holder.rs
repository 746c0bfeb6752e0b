//! Safety scenario "holder paused past its TTL, then writes", on every backend, on real
//! servers: with a fenced resource the stale write is refused; without, it lands and an
//! update is lost. No backend may let validity windows overlap here.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail by panicking

use std::sync::Arc;
use std::time::Duration;

use fencelock::DistributedLock;
use fencelock_testkit::conformance::ClientFactory;
use fencelock_testkit::lab::paused_holder;

fn factory(url: String) -> impl ClientFactory {
    move || {
        let url = url.clone();
        async move { fencelock::connect(&url).await.expect("connect") as Arc<dyn DistributedLock> }
    }
}

async fn check(name: &str, f: &dyn ClientFactory, ttl: Duration) {
    let fenced = paused_holder(f, ttl, true).await;
    let r = &fenced.report;
    assert!(
        r.overlaps.is_empty(),
        "{name}: validity windows overlapped: {r:?}\n{}",
        fenced.timeline.join("\n")
    );
    assert_eq!(
        r.stale_writes_accepted, 0,
        "{name}: the fenced resource accepted a stale write: {r:?}"
    );
    assert_eq!(
        r.writes_refused, 1,
        "{name}: the paused holder's write was not refused: {r:?}"
    );
    assert!(
        r.belief_overlaps >= 1,
        "{name}: the scenario did not make the holder act late: {r:?}"
    );

    let unfenced = paused_holder(f, ttl, false).await;
    let r = &unfenced.report;
    assert!(r.overlaps.is_empty(), "{name}: {r:?}");
    assert_eq!(
        r.stale_writes_accepted, 1,
        "{name}: without fencing the stale write should land: {r:?}"
    );
    assert_eq!(
        r.lost_updates, 1,
        "{name}: without fencing an update should be lost: {r:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory() {
    check(
        "memory",
        &factory(format!("memory://{}", fencelock_testkit::keys::unique_key("lab"))),
        Duration::from_millis(300),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file() {
    let dir = tempfile::tempdir().unwrap();
    check(
        "file",
        &factory(format!("file://{}", dir.path().display())),
        Duration::from_millis(300),
    )
    .await;
}

#[cfg(feature = "redis")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis() {
    let server = fencelock_testkit::redis_server::RedisServer::start();
    check("redis", &factory(server.url()), Duration::from_millis(300)).await;
}

#[cfg(feature = "redlock")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redlock() {
    let servers = fencelock_testkit::redis_server::start_many(5);
    check(
        "redlock",
        &factory(fencelock_testkit::redis_server::redlock_url(
            &servers,
            "per_node_timeout=50ms",
        )),
        Duration::from_millis(300),
    )
    .await;
}

#[cfg(feature = "etcd")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd() {
    let cluster = fencelock_testkit::etcd_server::EtcdCluster::start(3);
    check("etcd", &factory(cluster.url("")), Duration::from_secs(1)).await;
}

#[cfg(feature = "zookeeper")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zookeeper() {
    let ensemble = fencelock_testkit::zk_server::ZkEnsemble::start(3);
    check(
        "zookeeper",
        &factory(ensemble.url("/lab", "")),
        Duration::from_millis(300),
    )
    .await;
}
