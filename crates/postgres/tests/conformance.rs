//! The conformance suite against a real PostgreSQL server started by the test (one per
//! test).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail by panicking

use std::sync::Arc;

use fencelock_core::DistributedLock;
use fencelock_testkit::conformance::SuiteConfig;
use fencelock_testkit::pg_server::PgServer;

fencelock_testkit::conformance_suite!(
    async {
        let server = Arc::new(PgServer::start());
        move || {
            let server = Arc::clone(&server);
            async move {
                let lock = fencelock_postgres::PgLock::connect(&server.url())
                    .await
                    .expect("connect to postgres");
                Arc::new(lock) as Arc<dyn DistributedLock>
            }
        }
    },
    SuiteConfig::default()
);
