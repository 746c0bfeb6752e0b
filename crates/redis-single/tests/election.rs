//! The election conformance suite against a real redis-server started by the test (one
//! per test), with the operator hook acting on that server directly.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail by panicking

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use fencelock_core::election::Election;
use fencelock_redis::RedisElection;
use fencelock_testkit::conformance::election::{self as suite, ElectionConfig, ElectionFactory, ElectionFixture};
use fencelock_testkit::redis_server::RedisServer;

struct Redis {
    server: Arc<RedisServer>,
}

impl ElectionFactory for Redis {
    fn election(&self) -> Pin<Box<dyn Future<Output = Arc<dyn Election>> + Send + '_>> {
        Box::pin(async move {
            let e = RedisElection::connect(&self.server.url())
                .await
                .expect("connect to redis-server");
            Arc::new(e) as Arc<dyn Election>
        })
    }
}

impl ElectionFixture for Redis {
    fn remove_leader<'a>(&'a self, name: &'a str) -> Pin<Box<dyn Future<Output = ()> + Send + 'a>> {
        Box::pin(async move {
            let key = RedisElection::connect(&self.server.url())
                .await
                .expect("connect")
                .seat_lock_key(name)
                .expect("seat key");
            let server = Arc::clone(&self.server);
            let n = tokio::task::spawn_blocking(move || server.integer(&format!("DEL {key}")))
                .await
                .expect("DEL");
            assert_eq!(n, Some(1), "the operator's DEL found no seat to remove");
        })
    }
}

fn config() -> ElectionConfig {
    ElectionConfig {
        short_ttl: Duration::from_millis(300),
        slack: Duration::from_secs(1),
        ..ElectionConfig::default()
    }
}

macro_rules! election_tests {
    ($($name:ident),* $(,)?) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            let redis = Redis {
                server: Arc::new(tokio::task::spawn_blocking(RedisServer::start).await.expect("start")),
            };
            suite::$name(&redis, &config()).await;
        }
    )*};
}

election_tests!(
    leader_reports_value_and_term,
    at_most_one_leader_and_terms_increase,
    resign_hands_over_promptly,
    dropped_campaign_leaves_nothing_behind,
    proclaim_needs_our_own_grant,
    paused_leader_is_fenced,
    observers_see_changes_in_order,
    observer_started_with_the_first_campaign_sees_it,
    bad_election_input_is_rejected,
);
