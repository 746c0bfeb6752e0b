//! The election conformance suite against a real PostgreSQL server started by the test:
//! one server runs the whole suite (`run_all_elections`); the suite's unique names keep
//! the behaviours apart. The operator hook deletes the seat's `locks` row through a
//! separate connection.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail by panicking

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use fencelock_core::election::Election;
use fencelock_postgres::tokio_postgres::{Client, NoTls};
use fencelock_postgres::PgElection;
use fencelock_testkit::conformance::election::{run_all_elections, ElectionConfig, ElectionFactory, ElectionFixture};
use fencelock_testkit::pg_server::PgServer;

struct Pg {
    server: PgServer,
    admin: Client,
}

impl ElectionFactory for Pg {
    fn election(&self) -> Pin<Box<dyn Future<Output = Arc<dyn Election>> + Send + '_>> {
        let url = self.server.url();
        Box::pin(
            async move { Arc::new(PgElection::connect(&url).await.expect("connect to postgres")) as Arc<dyn Election> },
        )
    }
}

impl ElectionFixture for Pg {
    fn remove_leader<'a>(&'a self, name: &'a str) -> Pin<Box<dyn Future<Output = ()> + Send + 'a>> {
        Box::pin(async move {
            let n = self
                .admin
                .execute(
                    "DELETE FROM fencelock.locks WHERE key = $1",
                    &[&format!("election.{name}")],
                )
                .await
                .expect("DELETE the seat's row");
            assert_eq!(n, 1, "the operator's DELETE found no seat");
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn election_conformance_on_postgres() {
    let server = tokio::task::spawn_blocking(PgServer::start)
        .await
        .expect("start postgres");
    let url = server.url();
    drop(
        PgElection::connect(&url)
            .await
            .expect("the first client creates the tables"),
    );
    let (admin, connection) = url
        .parse::<fencelock_postgres::tokio_postgres::Config>()
        .expect("server URL")
        .application_name("fixture")
        .connect(NoTls)
        .await
        .expect("operator connection");
    tokio::spawn(connection);
    let pg = Pg { server, admin };
    let cfg = ElectionConfig {
        short_ttl: Duration::from_millis(500),
        slack: Duration::from_secs(2),
        ..ElectionConfig::default()
    };
    run_all_elections(&pg, &cfg).await;
}
