//! The conformance suite, hardening cases included, against a real PostgreSQL server
//! started by the test (one per test).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail by panicking

use std::sync::Arc;
use std::time::Duration;

use fencelock_core::DistributedLock;
use fencelock_postgres::tokio_postgres::{Client, NoTls};
use fencelock_postgres::PgLock;
use fencelock_testkit::conformance::{BoxFuture, ClientFactory, Fixture, Proxied, SuiteConfig};
use fencelock_testkit::pg_server::PgServer;
use fencelock_testkit::proxy::FaultProxy;
use tokio::sync::OnceCell;

/// One server per test, and an operator's connection to it.
struct Pg {
    server: PgServer,
    admin: OnceCell<Client>,
}

impl Pg {
    /// The operator's connection (made once; not counted in `connections`).
    async fn admin(&self) -> &Client {
        self.admin
            .get_or_init(|| async {
                let (client, connection) = self
                    .server
                    .url()
                    .parse::<fencelock_postgres::tokio_postgres::Config>()
                    .expect("server URL")
                    .application_name("fixture")
                    .connect(NoTls)
                    .await
                    .expect("operator connection");
                tokio::spawn(connection);
                client
            })
            .await
    }
}

impl ClientFactory for Pg {
    fn client(&self) -> BoxFuture<'_, Arc<dyn DistributedLock>> {
        let url = self.server.url();
        Box::pin(async move {
            Arc::new(PgLock::connect(&url).await.expect("connect to postgres")) as Arc<dyn DistributedLock>
        })
    }
}

impl Fixture for Pg {
    fn remove_grant<'a>(&'a self, key: &'a str) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            self.admin()
                .await
                .execute("DELETE FROM fencelock.locks WHERE key = $1", &[&key])
                .await
                .expect("DELETE the grant's row");
        })
    }

    /// The key's row in the lock table and its live waiter tickets (an expired ticket is
    /// ignored by every statement and swept by the next waiter of the key). Not counted:
    /// the expired row an abandon leaves in place (its grant id is in `abandoned`), which
    /// holds nothing, refuses only the abandoned grant's late acquire, and is taken by the
    /// key's next acquire or swept with its abandoned id after a day.
    fn records<'a>(&'a self, key: &'a str) -> BoxFuture<'a, usize> {
        Box::pin(async move {
            let row = self
                .admin()
                .await
                .query_one(
                    "SELECT (SELECT count(*) FROM fencelock.locks l WHERE key = $1
                             AND NOT (l.expires_at <= statement_timestamp()
                                      AND EXISTS (SELECT 1 FROM fencelock.abandoned a WHERE a.grant_id = l.grant_id)))
                          + (SELECT count(*) FROM fencelock.waiters WHERE key = $1 AND expires_at > statement_timestamp())",
                    &[&key],
                )
                .await
                .expect("count the key's rows");
            usize::try_from(row.get::<_, i64>(0)).unwrap()
        })
    }

    fn connections(&self) -> BoxFuture<'_, Option<usize>> {
        Box::pin(async move {
            let row = self
                .admin()
                .await
                .query_one(
                    "SELECT count(*) FROM pg_stat_activity
                     WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()",
                    &[],
                )
                .await
                .expect("count connections");
            Some(usize::try_from(row.get::<_, i64>(0)).unwrap())
        })
    }

    fn connections_per_client(&self) -> usize {
        fencelock_postgres::DEFAULT_CONNECTIONS
    }

    fn proxied_client(&self, request_timeout: Duration) -> BoxFuture<'_, Option<Proxied>> {
        Box::pin(async move {
            let proxy = FaultProxy::start(self.server.port()).await;
            let url = format!(
                "{}&timeout={}ms",
                self.server.url_through(proxy.port()),
                request_timeout.as_millis()
            );
            let client = PgLock::connect(&url).await.expect("connect through the proxy");
            Some(Proxied {
                client: Arc::new(client),
                proxies: vec![proxy],
            })
        })
    }
}

fencelock_testkit::conformance_suite!(
    async {
        let pg = Pg {
            server: PgServer::start(),
            admin: OnceCell::new(),
        };
        // Create the tables before the fixture reads them.
        drop(pg.client().await);
        pg
    },
    // Every grant and renewal waits for a WAL flush, which a loaded CI disk can hold for
    // hundreds of milliseconds: a TTL of seconds (renewed every third) keeps the timing cases
    // about the backend, not the disk. (With 300 ms, auto_renew_keeps_lease and
    // long_wait_grants_full_validity each failed once in a full parallel run under load.)
    // 2 s: an auto-renewed lease's TTL must be at least twice the statement timeout (1 s by
    // default; `PgConfig::min_ttl`).
    SuiteConfig {
        short_ttl: Duration::from_secs(2),
        ..SuiteConfig::default()
    }
);
