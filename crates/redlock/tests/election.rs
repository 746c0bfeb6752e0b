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
    // A seat key is refused to plain locks: held as a campaign holds it.
    let lease =
        fencelock_core::election::as_campaign(locks.acquire("election.plain", &fencelock_core::LockOptions::new()))
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

/// A proclaim that a quorum of nodes could not answer within `per_node_timeout` (a slow
/// link, a paused node) has not been refused: every node still holds the grant. It fails
/// with `Unavailable` and the leadership stays valid, as on the other backends ("a backend
/// error when it could not be asked"). Before, the silent nodes counted as "not written":
/// the proclaim failed with `LeaseLost(NotHeld)`, marked the lease lost for good, and
/// `fencelock elect` exited 76 with every node holding its seat (a review).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proclaim_a_quorum_did_not_answer_is_unavailable_and_keeps_the_leadership() {
    use fencelock_core::{LockError, LockOptions};
    use fencelock_testkit::proxy::{FaultProxy, Mode};
    let servers = tokio::task::spawn_blocking(|| start_many(5)).await.expect("start");
    let mut proxies = Vec::new();
    for s in &servers {
        proxies.push(FaultProxy::start(s.port()).await);
    }
    let hosts: Vec<String> = proxies.iter().map(|p| format!("127.0.0.1:{}", p.port())).collect();
    let url = format!("redlock://{}?{QUERY}", hosts.join(","));
    let elections = RedlockElection::connect(&url).await.expect("connect");
    // A TTL long enough that no renewal falls within the test.
    let opts = LockOptions::new().with_ttl(Duration::from_secs(60));
    let leadership = elections.campaign("slow", b"a", &opts).await.expect("campaign");
    for p in &proxies[..3] {
        p.set(Mode::Blackhole);
    }
    let err = leadership
        .proclaim(b"b")
        .await
        .expect_err("a proclaim stood with 3 of 5 nodes silent");
    for p in &proxies[..3] {
        p.set(Mode::Pass);
    }
    assert!(
        matches!(err, LockError::Unavailable { .. }),
        "a proclaim the nodes could not answer: {err:?}"
    );
    let msg = err.to_string();
    assert!(msg.contains("no answer from 3"), "{msg}");
    assert!(
        leadership.is_leader(),
        "the leadership was given up: {:?}",
        leadership.lease()
    );
    leadership
        .proclaim(b"c")
        .await
        .expect("a proclaim once the nodes answer");
    let leader = elections.leader("slow").await.expect("leader").expect("a leader");
    assert_eq!((leader.term, leader.value.as_slice()), (leadership.term(), &b"c"[..]));
    // Refused by a quorum (the seat removed by hand on 3 nodes): not held, for good.
    let del = "DEL fencelock:{election.slow}:lock";
    let servers = Arc::new(servers);
    let s = Arc::clone(&servers);
    tokio::task::spawn_blocking(move || s[..3].iter().for_each(|s| assert_eq!(s.integer(del), Some(1))))
        .await
        .expect("DEL");
    let err = leadership
        .proclaim(b"d")
        .await
        .expect_err("proclaimed without a quorum's seat");
    assert!(
        matches!(
            err,
            LockError::LeaseLost {
                reason: fencelock_core::LostReason::NotHeld,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(!leadership.is_leader());
}
