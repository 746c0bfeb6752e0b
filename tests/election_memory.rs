//! The election conformance suite against `memory://`: clients share one named table.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail by panicking

#[macro_use]
mod election_support;

use std::time::Duration;

use election_support::Local;
use fencelock_testkit::conformance::election::ElectionConfig;

fn config() -> ElectionConfig {
    ElectionConfig {
        short_ttl: Duration::from_millis(200),
        slack: Duration::from_millis(500),
        ..ElectionConfig::default()
    }
}

/// Every client comes through the facade, on one named table.
fn seats() -> Local {
    Local {
        url: "memory://election-suite".into(),
    }
}

election_suite!(seats(), config());

/// A backend without an election (etcd, for now) fails at connect time with a clear
/// error, never a silently weaker election.
#[tokio::test]
async fn connect_election_refuses_backends_without_an_election() {
    for url in ["etcd://127.0.0.1:1"] {
        match fencelock::connect_election(url).await {
            Err(fencelock::LockError::InvalidConfig { message, .. }) => {
                assert!(message.contains("not implemented"), "{url}: {message}");
            }
            other => panic!("{url}: {other:?}"),
        }
    }
    match fencelock::connect_election("no-scheme").await {
        Err(fencelock::LockError::InvalidConfig { .. }) => {}
        other => panic!("a URL without a scheme: {other:?}"),
    }
}
