//! The election conformance suite against `file://`: clients share one directory, made
//! once for this test binary and removed when it exits.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail by panicking

use std::sync::Arc;
use std::time::Duration;

use fencelock::election::Election;
use fencelock_testkit::conformance::election::{self as suite, ElectionConfig, ElectionFactory, ElectionFixture};
use std::future::Future;
use std::pin::Pin;

fn config() -> ElectionConfig {
    ElectionConfig {
        short_ttl: Duration::from_millis(300),
        slack: Duration::from_secs(1),
        ..ElectionConfig::default()
    }
}

/// Every client comes through the facade, on one directory.
fn url() -> String {
    static DIR: std::sync::OnceLock<tempfile::TempDir> = std::sync::OnceLock::new();
    let dir = DIR.get_or_init(|| tempfile::tempdir().expect("temp dir"));
    format!("file://{}", dir.path().display())
}

async fn client() -> Arc<dyn Election> {
    let url = url();
    fencelock::connect_election(&url)
        .await
        .expect("connect_election file://")
}

/// The "server": the directory.
struct Seats;

impl ElectionFactory for Seats {
    fn election(&self) -> Pin<Box<dyn Future<Output = Arc<dyn Election>> + Send + '_>> {
        Box::pin(client())
    }
}

impl ElectionFixture for Seats {
    fn remove_leader<'a>(&'a self, name: &'a str) -> Pin<Box<dyn Future<Output = ()> + Send + 'a>> {
        Box::pin(async move {
            let seats = fencelock::election::file::FileElection::from_url(&url()).expect("file election");
            assert!(
                seats.remove_leader(name).expect("remove the seat") > 0,
                "no seat to remove"
            );
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
