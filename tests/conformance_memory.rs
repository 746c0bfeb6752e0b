//! The conformance suite against `memory://`: clients share one named table per test.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail by panicking

use std::sync::Arc;
use std::time::Duration;

use fencelock::memory::MemoryLock;
use fencelock::DistributedLock;
use fencelock_testkit::conformance::{BoxFuture, ClientFactory, Fixture, Proxied, SuiteConfig};
use fencelock_testkit::keys::unique_key;

/// One named table per test; the "server" is the table itself.
struct Memory {
    name: String,
}

impl ClientFactory for Memory {
    fn client(&self) -> BoxFuture<'_, Arc<dyn DistributedLock>> {
        let url = format!("memory://{}", self.name);
        Box::pin(async move { fencelock::connect(&url).await.expect("connect memory://") as Arc<dyn DistributedLock> })
    }
}

impl Fixture for Memory {
    fn remove_grant<'a>(&'a self, key: &'a str) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            MemoryLock::named(&self.name).remove_grant(key);
        })
    }

    fn records<'a>(&'a self, key: &'a str) -> BoxFuture<'a, usize> {
        Box::pin(async move { MemoryLock::named(&self.name).records(key) })
    }

    fn connections(&self) -> BoxFuture<'_, Option<usize>> {
        Box::pin(async { None })
    }

    fn proxied_client(&self, _request_timeout: Duration) -> BoxFuture<'_, Option<Proxied>> {
        Box::pin(async { None })
    }
}

fencelock_testkit::conformance_suite!(
    async {
        Memory {
            name: unique_key("suite"),
        }
    },
    SuiteConfig::default()
);
