//! The conformance suite against `file://`: every client is a separate `FileLock` on one
//! temporary directory per test, as separate processes would be. (`file_processes.rs` runs
//! real processes.) The fixture's hooks act on the directory as an operator would.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail by panicking

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use fencelock::file::FileLock;
use fencelock::DistributedLock;
use fencelock_testkit::conformance::{BoxFuture, ClientFactory, Fixture, Proxied, SuiteConfig};

/// One lock directory per test; the "server" is the directory itself.
struct Dir {
    dir: tempfile::TempDir,
}

impl Dir {
    fn path(&self) -> PathBuf {
        self.dir.path().to_owned()
    }
}

impl ClientFactory for Dir {
    fn client(&self) -> BoxFuture<'_, Arc<dyn DistributedLock>> {
        let url = format!("file://{}", self.path().display());
        Box::pin(async move { fencelock::connect(&url).await.expect("connect file://") as Arc<dyn DistributedLock> })
    }
}

impl Fixture for Dir {
    /// What an operator breaking a lock by hand does: `rm DIR/STEM.*.live`, keeping the
    /// state file and its token counter.
    fn remove_grant<'a>(&'a self, key: &'a str) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            let removed = FileLock::open(self.path())
                .expect("open the test directory")
                .remove_grant(key)
                .expect("remove the grant's files");
            assert!(removed > 0, "no grant of {key:?} to remove");
        })
    }

    fn records<'a>(&'a self, key: &'a str) -> BoxFuture<'a, usize> {
        Box::pin(async move {
            FileLock::open(self.path())
                .expect("open the test directory")
                .records(key)
                .expect("count the key's files")
        })
    }

    fn connections(&self) -> BoxFuture<'_, Option<usize>> {
        Box::pin(async { None })
    }

    fn proxied_client(&self, _request_timeout: Duration) -> BoxFuture<'_, Option<Proxied>> {
        Box::pin(async { None }) // no network: no request can go unanswered
    }
}

fencelock_testkit::conformance_suite!(
    async {
        Dir {
            dir: tempfile::tempdir().expect("temp dir"),
        }
    },
    SuiteConfig::default()
);
