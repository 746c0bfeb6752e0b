//! What the election suites of the local backends share: a fixture whose clients all come
//! through the facade from one URL (`memory://NAME` or `file:///DIR`), with the operator's
//! hook; `fencelock_testkit::election_suite!` makes one test per case of the suite.

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
