//! The conformance suite against `file://`: every client is a separate `FileLock` on one
//! temporary directory, as separate processes would be. (`file_processes.rs` runs real
//! processes.)

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail by panicking

use std::sync::Arc;

use fencelock::DistributedLock;
use fencelock_testkit::conformance::SuiteConfig;

fencelock_testkit::conformance_suite!(
    async {
        // Kept for the life of the test process; the OS temp dir is cleaned by the OS.
        let dir = tempfile::tempdir().expect("temp dir").keep();
        let url = format!("file://{}", dir.display());
        move || {
            let url = url.clone();
            async move { fencelock::connect(&url).await.expect("connect file://") as Arc<dyn DistributedLock> }
        }
    },
    SuiteConfig::default()
);
