//! The election conformance suite against Redlock over five real redis-servers started by
//! the test: one set of servers runs the whole suite (`run_all_elections`). Redlock says
//! `observe` is unavailable and `leader` best effort; the suite checks that observe
//! refuses with `GuaranteeNotMet` instead of feeding changes.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail by panicking

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use fencelock_core::election::Election;
use fencelock_redlock::RedlockElection;
use fencelock_testkit::conformance::election::{run_all_elections, ElectionConfig, ElectionFactory, ElectionFixture};
use fencelock_testkit::redis_server::{redlock_url, start_many, RedisServer};

const QUERY: &str = "per_node_timeout=50ms";

struct Redlock {
    servers: Arc<Vec<RedisServer>>,
}

impl ElectionFactory for Redlock {
    fn election(&self) -> Pin<Box<dyn Future<Output = Arc<dyn Election>> + Send + '_>> {
        Box::pin(async move {
            let url = redlock_url(&self.servers, QUERY);
            Arc::new(RedlockElection::connect(&url).await.expect("redlock")) as Arc<dyn Election>
        })
    }
}

impl ElectionFixture for Redlock {
    fn remove_leader<'a>(&'a self, name: &'a str) -> Pin<Box<dyn Future<Output = ()> + Send + 'a>> {
        let del = format!("DEL fencelock:{{election.{name}}}:lock");
        Box::pin(async move {
            let servers = Arc::clone(&self.servers);
            let removed: i64 =
                tokio::task::spawn_blocking(move || servers.iter().map(|s| s.integer(&del).unwrap_or(0)).sum())
                    .await
                    .expect("DEL on every node");
            assert!(
                removed >= 3,
                "the operator's DEL found the seat on {removed} of 5 nodes"
            );
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn election_conformance_on_redlock() {
    let servers = tokio::task::spawn_blocking(|| start_many(5)).await.expect("start");
    let redlock = Redlock {
        servers: Arc::new(servers),
    };
    let cfg = ElectionConfig {
        short_ttl: Duration::from_millis(500),
        slack: Duration::from_secs(2),
        ..ElectionConfig::default()
    };
    run_all_elections(&redlock, &cfg).await;
    a_plain_lock_on_the_seat_is_a_leader_with_no_value(&redlock).await;
}

/// A plain lock on the seat's key (`election.NAME`), as `fencelock run election.NAME` takes
/// it — and any campaign between its grant and its first proclaim: the seat is held with
/// no record. `leader` must report it (no value; the docs say so), not `Unavailable`
/// because no quorum agreed on a record (a review: `leader` exit 69, and `elect --no-wait`
/// 69 instead of 75).
async fn a_plain_lock_on_the_seat_is_a_leader_with_no_value(redlock: &Redlock) {
    use fencelock_core::DistributedLock;
    let url = redlock_url(&redlock.servers, QUERY);
    let locks = fencelock_redlock::RedlockLock::connect(&url)
        .await
        .expect("redlock lock");
    let lease = locks
        .acquire("election.plain", &fencelock_core::LockOptions::new())
        .await
        .expect("the seat's key as a plain lock");
    let elections = redlock.election().await;
    let leader = elections
        .leader("plain")
        .await
        .expect("leader of a seat held without a record");
    let leader = leader.expect("the seat is held");
    assert!(leader.value.is_empty(), "{leader:?}");
    assert_eq!(leader.term, lease.token(), "the holder's term");
    lease.release().await.expect("release");
    assert_eq!(elections.leader("plain").await.expect("leader"), None);
}
