//! What the election suites of the local backends share: a fixture whose clients all come
//! through the facade from one URL (`memory://NAME` or `file:///DIR`), with the operator's
//! hook, and [`election_suite!`], one test per case of the conformance suite.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use fencelock::election::Election;
use fencelock_testkit::conformance::election::{ElectionFactory, ElectionFixture};

/// The "server": a memory table or a directory, named by its URL.
pub struct Local {
    pub url: String,
}

impl ElectionFactory for Local {
    fn election(&self) -> Pin<Box<dyn Future<Output = Arc<dyn Election>> + Send + '_>> {
        Box::pin(async move {
            fencelock::connect_election(&self.url)
                .await
                .unwrap_or_else(|e| panic!("connect_election {}: {e}", self.url))
        })
    }
}

impl ElectionFixture for Local {
    fn remove_leader<'a>(&'a self, name: &'a str) -> Pin<Box<dyn Future<Output = ()> + Send + 'a>> {
        Box::pin(async move {
            let removed = if self.url.starts_with("memory://") {
                fencelock::election::memory::MemoryElection::from_url(&self.url)
                    .expect("memory election")
                    .remove_leader(name)
            } else {
                fencelock::election::file::FileElection::from_url(&self.url)
                    .expect("file election")
                    .remove_leader(name)
                    .expect("remove the seat")
                    > 0
            };
            assert!(removed, "no seat to remove");
        })
    }
}

/// One `#[tokio::test]` per case of the election conformance suite, each running it on
/// `$fixture` (an expression making a fixture) with `$config`.
macro_rules! election_suite {
    ($fixture:expr, $config:expr) => {
        election_suite!(@cases $fixture, $config;
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
    };
    (@cases $fixture:expr, $config:expr; $($name:ident),* $(,)?) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            fencelock_testkit::conformance::election::$name(&$fixture, &$config).await;
        }
    )*};
}
