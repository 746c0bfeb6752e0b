//! The election conformance suite against `memory://`: clients share one named table.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail by panicking

use std::sync::Arc;
use std::time::Duration;

use fencelock::election::Election;
use fencelock_testkit::conformance::election::{self as suite, ElectionConfig, ElectionFactory, ElectionFixture};
use std::future::Future;
use std::pin::Pin;

fn config() -> ElectionConfig {
    ElectionConfig {
        short_ttl: Duration::from_millis(200),
        slack: Duration::from_millis(500),
        ..ElectionConfig::default()
    }
}

/// Every client comes through the facade, on one named table.
async fn client() -> Arc<dyn Election> {
    fencelock::connect_election("memory://election-suite")
        .await
        .expect("connect_election memory://")
}

/// The "server": the named table.
struct Seats;

impl ElectionFactory for Seats {
    fn election(&self) -> Pin<Box<dyn Future<Output = Arc<dyn Election>> + Send + '_>> {
        Box::pin(client())
    }
}

impl ElectionFixture for Seats {
    fn remove_leader<'a>(&'a self, name: &'a str) -> Pin<Box<dyn Future<Output = ()> + Send + 'a>> {
        Box::pin(async move {
            fencelock::election::memory::MemoryElection::named("election-suite").remove_leader(name);
        })
    }
}

macro_rules! election_tests {
    ($($name:ident),* $(,)?) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            suite::$name(&Seats, &config()).await;
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
    bad_election_input_is_rejected,
);

/// Every backend has an election now: a scheme whose backend is not compiled in names
/// its feature, and an unknown scheme or a URL without one is a clear configuration error.
#[tokio::test]
async fn connect_election_refuses_unknown_and_disabled_backends() {
    #[cfg(not(feature = "etcd"))]
    match fencelock::connect_election("etcd://127.0.0.1:1").await {
        Err(fencelock::LockError::FeatureDisabled { feature, .. }) => assert_eq!(feature, "etcd"),
        other => panic!("etcd without its feature: {other:?}"),
    }
    for url in ["nosuch://x", "no-scheme"] {
        match fencelock::connect_election(url).await {
            Err(fencelock::LockError::InvalidConfig { .. }) => {}
            other => panic!("{url}: {other:?}"),
        }
    }
}
