//! Helpers shared by the PostgreSQL integration tests.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail by panicking
#![allow(dead_code)] // each test file uses some of them

use std::time::Duration;

use fencelock_core::{DistributedLock, Lease, LockOptions};
use fencelock_postgres::PgLock;
use fencelock_testkit::pg_server::PgServer;
use fencelock_testkit::until::until_eq;

/// Counts, from now on, the statements that write `fencelock.locks` (every acquire is
/// one; the server's own count, with a statement-level trigger and a sequence): read it
/// with [`acquires`].
pub fn count_acquires(server: &PgServer) {
    server.psql(
        "CREATE SEQUENCE public.acquires;
         CREATE FUNCTION public.count_acquire() RETURNS trigger LANGUAGE plpgsql AS
           $$ BEGIN PERFORM nextval('public.acquires'); RETURN NULL; END $$;
         CREATE TRIGGER count_acquire AFTER INSERT ON fencelock.locks
           FOR EACH STATEMENT EXECUTE FUNCTION public.count_acquire();",
    );
}

/// The acquire statements counted since [`count_acquires`].
pub fn acquires(server: &PgServer) -> i64 {
    server
        .psql("SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM public.acquires")
        .parse()
        .unwrap()
}

/// A lease of `key` (default schema) granted after waiting behind another client, and its
/// client: with `handoff=true` in `url`, a lease granted after waiting releases by handing
/// the key to the oldest waiter in the same statement, while one granted at once releases
/// with the plain statement, which wakes that waiter to acquire (see `sql::release`).
pub async fn held_after_waiting(server: &PgServer, url: &str, key: &str, opts: &LockOptions) -> (PgLock, Lease) {
    let first = PgLock::connect(url).await.unwrap();
    let at_once = first.acquire(key, opts).await.unwrap();
    let client = PgLock::connect(url).await.unwrap();
    let (k, o) = (key.to_owned(), opts.with_wait(Duration::from_secs(10)));
    let waiting = tokio::spawn(async move {
        let lease = client.acquire(&k, &o).await.unwrap();
        (client, lease)
    });
    queued(server, key, 1, Duration::from_secs(10)).await; // the second client
    at_once.release().await.unwrap();
    first.close().await.unwrap();
    tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .expect("the waiting client was not granted")
        .unwrap()
}

/// Waits, at most `limit`, until key `key` (default schema) has `n` waiter tickets on the
/// server.
pub async fn queued(server: &PgServer, key: &str, n: usize, limit: Duration) {
    let sql = format!("SELECT count(*) FROM fencelock.waiters WHERE key = '{key}'");
    until_eq(&format!("waiter tickets of {key}"), limit, n.to_string(), || {
        server.psql(&sql)
    })
    .await;
}

/// A plain connection of the test's own to `server` (no fencelock), and its driver task
/// (abort it, or let the test's runtime end it).
pub async fn plain_client(
    server: &PgServer,
) -> (fencelock_postgres::tokio_postgres::Client, tokio::task::JoinHandle<()>) {
    let (client, connection) = server
        .url()
        .parse::<fencelock_postgres::tokio_postgres::Config>()
        .unwrap()
        .connect(fencelock_postgres::tokio_postgres::NoTls)
        .await
        .unwrap();
    let driver = tokio::spawn(async move {
        let _ = connection.await;
    });
    (client, driver)
}

/// An operator's connection holding `rows` (a `SELECT … FOR UPDATE`) in an open
/// transaction: statements that need those rows wait until [`Operator::commit`]. Makes a
/// race deterministic: the statements queue behind the operator in the order they come.
pub struct Operator {
    client: fencelock_postgres::tokio_postgres::Client,
    driver: tokio::task::JoinHandle<()>,
}

impl Operator {
    pub async fn holding(server: &PgServer, rows: &str) -> Operator {
        let (client, driver) = plain_client(server).await;
        client.batch_execute(&format!("BEGIN; {rows}")).await.unwrap();
        Operator { client, driver }
    }

    /// Commits, letting the statements that waited go on. The connection stays open
    /// for reads ([`client`](Self::client)) until the operator is dropped.
    pub async fn commit(&self) {
        self.client.batch_execute("COMMIT").await.unwrap();
    }

    /// The operator's connection.
    pub fn client(&self) -> &fencelock_postgres::tokio_postgres::Client {
        &self.client
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

/// Makes role `app`, which may read and write fencelock's tables (default schema) and
/// use its sequence but create nothing anywhere — a role of a migration-managed schema —
/// and returns the URL that connects as it.
pub fn dml_only_role(server: &PgServer) -> String {
    server.psql(
        "CREATE ROLE app LOGIN;
         REVOKE CREATE ON DATABASE postgres FROM PUBLIC;
         REVOKE CREATE ON SCHEMA public FROM PUBLIC;
         GRANT USAGE ON SCHEMA fencelock TO app;
         GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA fencelock TO app;
         GRANT USAGE ON ALL SEQUENCES IN SCHEMA fencelock TO app;",
    );
    format!("postgres://app@127.0.0.1:{}/postgres?sslmode=disable", server.port())
}

/// The application's own connection to its database (the connection's task spawned).
pub async fn app_client(server: &PgServer) -> fencelock_postgres::tokio_postgres::Client {
    let (client, connection) =
        fencelock_postgres::tokio_postgres::connect(&server.url(), fencelock_postgres::tokio_postgres::NoTls)
            .await
            .expect("application connection");
    tokio::spawn(connection);
    client
}
