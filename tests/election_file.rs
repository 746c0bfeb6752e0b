//! The election conformance suite against `file://`: clients share one directory, made
//! once for this test binary and removed when it exits.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail by panicking

mod election_support;

use std::time::Duration;

use election_support::Local;
use fencelock_testkit::conformance::election::ElectionConfig;

fn config() -> ElectionConfig {
    ElectionConfig {
        short_ttl: Duration::from_millis(300),
        slack: Duration::from_secs(1),
        ..ElectionConfig::default()
    }
}

/// Every client comes through the facade, on one directory.
fn seats() -> Local {
    static DIR: std::sync::OnceLock<tempfile::TempDir> = std::sync::OnceLock::new();
    let dir = DIR.get_or_init(|| tempfile::tempdir().expect("temp dir"));
    Local {
        url: format!("file://{}", dir.path().display()),
    }
}

fencelock_testkit::election_suite!(async { seats() }, config());
