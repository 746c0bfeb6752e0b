//! One instance, several connections: a statement stuck on one connection (a row lock
//! held by someone else's transaction) does not hold up a grant of another key, and many
//! keys at once are worked on by more than one server backend.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail by panicking

use std::time::Duration;

use fencelock_core::{DistributedLock, LockOptions};
use fencelock_postgres::tokio_postgres::NoTls;
use fencelock_postgres::PgLock;
use fencelock_testkit::pg_server::PgServer;
use tokio::time::Instant;

/// The most any step here may take before the test counts it as stuck (a failure bound,
/// not a measurement: every step that passes takes milliseconds).
const STUCK: Duration = Duration::from_secs(10);

fn opts() -> LockOptions {
    LockOptions::new()
        .with_ttl(Duration::from_secs(60))
        .with_auto_renew(false)
}

/// Waits (bounded) until `n` backends named `app` wait for a lock on the server.
async fn blocked(server: &PgServer, app: &str, n: usize) {
    let deadline = Instant::now() + STUCK;
    let sql =
        format!("SELECT count(*) FROM pg_stat_activity WHERE application_name = '{app}' AND wait_event_type = 'Lock'");
    while server.psql(&sql) != n.to_string() {
        assert!(
            Instant::now() < deadline,
            "the acquire of `a` never blocked on the server"
        );
        tokio::time::sleep(Duration::from_millis(10)).await; // polling a condition, bounded
    }
}

/// The server backends whose client named itself `app`.
fn backends(server: &PgServer, app: &str) -> usize {
    server
        .psql(&format!(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = '{app}'"
        ))
        .parse()
        .unwrap()
}

/// An operator's transaction inserts key `a`'s row and keeps it uncommitted: the acquire
/// of `a` (an upsert of that row) then waits on the server for that transaction. A grant
/// of key `b` through the same instance must not wait behind it. With one connection per
/// instance it did: the server runs one connection's statements one after another, so `b`
/// was answered only after `a`'s blocker ended. (The statement timeout is set far above
/// [`STUCK`] so that neither statement is cut by it.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grant_is_not_held_up_behind_a_statement_blocked_on_another_key() {
    let server = PgServer::start();
    let app = "pgpool_blocked";
    let lock = PgLock::connect(&format!("{}&application_name={app}&timeout=60s", server.url()))
        .await
        .unwrap();
    let (mut operator, connection) = server
        .url()
        .parse::<fencelock_postgres::tokio_postgres::Config>()
        .unwrap()
        .application_name("operator")
        .connect(NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    let blocker = operator.transaction().await.unwrap();
    blocker
        .execute(
            "INSERT INTO fencelock.locks (key, grant_id, expires_at) VALUES ('a', 'operator', now() - interval '1 hour')",
            &[],
        )
        .await
        .unwrap();

    let a = {
        let lock = lock.clone();
        tokio::spawn(async move { lock.try_acquire("a", &opts()).await })
    };
    blocked(&server, app, 1).await;

    let b = tokio::time::timeout(STUCK, lock.try_acquire("b", &opts()))
        .await
        .expect("the grant of `b` waited behind the statement blocked on `a`")
        .unwrap()
        .expect("`b` is free");
    assert!(
        !a.is_finished(),
        "the order this test needs: `a` is still blocked when `b` is granted"
    );
    blocker.rollback().await.unwrap();
    let a = tokio::time::timeout(STUCK, a)
        .await
        .expect("`a` is answered once its blocker ended")
        .unwrap()
        .unwrap()
        .expect("`a` is free once the operator's row is gone");
    a.release().await.unwrap();
    b.release().await.unwrap();
    lock.close().await.unwrap();
}

/// 200 keys acquired at once through one instance are worked on by more than one server
/// backend (and by no more than the instance's connections, 4 by default).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_keys_at_once_use_more_than_one_backend() {
    let server = PgServer::start();
    let app = "pgpool_many";
    let lock = PgLock::connect(&format!("{}&application_name={app}", server.url()))
        .await
        .unwrap();
    let leases = futures_util::future::join_all((0..200).map(|i| {
        let lock = lock.clone();
        async move { lock.acquire(&format!("k{i}"), &opts()).await.unwrap() }
    }))
    .await;
    let n = backends(&server, app);
    assert!(
        (2..=4).contains(&n),
        "{n} server backends did the work of 200 keys at once (want 2 to 4)"
    );
    for lease in leases {
        lease.release().await.unwrap();
    }
    lock.close().await.unwrap();
}
