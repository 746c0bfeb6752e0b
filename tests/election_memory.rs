//! The election conformance suite against `memory://`: clients share one named table.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail by panicking

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

fencelock_testkit::election_suite!(async { seats() }, config());

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
