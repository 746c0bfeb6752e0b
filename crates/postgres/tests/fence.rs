//! The fence inside the user's transaction, on a real server: the rule, the example of a
//! fenced `UPDATE` of a business table, and a paused holder's stale write refused while
//! the new holder's write commits.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail by panicking

use std::time::Duration;

use fencelock_core::fencing::Admission;
use fencelock_core::{DistributedLock, Fence, FencingToken, GrantId, LockError, LockOptions};
use fencelock_postgres::tokio_postgres::Client;
use fencelock_postgres::{PgLock, TransactionFence};
use fencelock_testkit::pg_server::PgServer;

mod common;
use common::app_client;

const SLACK: Duration = Duration::from_secs(2);

async fn accounts(client: &Client) {
    client
        .batch_execute(
            "CREATE TABLE accounts (id int PRIMARY KEY, balance int NOT NULL, last_writer text);
             INSERT INTO accounts VALUES (7, 100, NULL);",
        )
        .await
        .unwrap();
}

fn fence(token: u64, grant: &str) -> Fence {
    Fence {
        token: FencingToken::new(token),
        grant: GrantId::from_string(grant),
    }
}

/// One fenced write: admit, `UPDATE`, commit. The refusal rolls the transaction back.
async fn fenced_update(
    client: &mut Client,
    f: &TransactionFence,
    fence: &Fence,
    delta: i32,
    who: &str,
) -> Result<Admission, LockError> {
    let tx = client.transaction().await.unwrap();
    let admission = f.admit(&tx, "accounts/7", fence).await?;
    tx.execute(
        "UPDATE accounts SET balance = balance + $1, last_writer = $2 WHERE id = 7",
        &[&delta, &who],
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();
    Ok(admission)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rule_is_the_fencing_checkers() {
    let server = PgServer::start();
    let mut client = app_client(&server).await;
    accounts(&client).await;
    let f = TransactionFence::default();
    f.create_table(&client).await.unwrap();
    f.create_table(&client).await.expect("idempotent");
    assert_eq!(
        fenced_update(&mut client, &f, &fence(5, "a"), 1, "a").await.unwrap(),
        Admission::First
    );
    assert_eq!(
        fenced_update(&mut client, &f, &fence(5, "a"), 1, "a").await.unwrap(),
        Admission::SameGrant
    );
    assert_eq!(
        fenced_update(&mut client, &f, &fence(6, "b"), 1, "b").await.unwrap(),
        Admission::Newer
    );
    match fenced_update(&mut client, &f, &fence(5, "a"), 1000, "a").await {
        Err(LockError::Fenced(r)) => {
            assert!(!r.reused);
            assert_eq!((r.presented.get(), r.highest.get()), (5, 6));
        }
        other => panic!("a lower token was not refused: {other:?}"),
    }
    match fenced_update(&mut client, &f, &fence(6, "c"), 1000, "c").await {
        Err(LockError::Fenced(r)) => assert!(r.reused, "an equal token from another grant: {r}"),
        other => panic!("a reused token was not refused: {other:?}"),
    }
    let row = client
        .query_one("SELECT balance, last_writer FROM accounts WHERE id = 7", &[])
        .await
        .unwrap();
    assert_eq!(
        (row.get::<_, i32>(0), row.get::<_, String>(1)),
        (103, "b".to_owned()),
        "a refused write landed"
    );
    assert!(TransactionFence::new("Bad-Name").is_err());
    assert!(f.sql().contains("ON CONFLICT"));
}

/// The example: a holder fences its `UPDATE` of a business table with its lease.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn example_a_fenced_update_of_a_business_table() {
    let server = PgServer::start();
    let locks = PgLock::connect(&server.url()).await.unwrap();
    let mut client = app_client(&server).await;
    accounts(&client).await;
    let f = TransactionFence::default(); // the lock backend already made fencelock.fences
    let lease = locks.acquire("accounts/7", &LockOptions::new()).await.unwrap();
    let tx = client.transaction().await.unwrap();
    f.admit(&tx, "accounts/7", &lease.fence())
        .await
        .expect("the holder's fence");
    tx.execute("UPDATE accounts SET balance = balance - 10 WHERE id = 7", &[])
        .await
        .unwrap();
    tx.commit().await.unwrap();
    lease.release().await.unwrap();
    let balance: i32 = client
        .query_one("SELECT balance FROM accounts WHERE id = 7", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(balance, 90);
}

/// Kleppmann's scenario on one business table: the holder pauses past its TTL, a new
/// holder takes the lock and writes; the old holder wakes and writes with its stale
/// fence — refused inside its transaction, which rolls back; the new holder's write stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_holders_stale_write_is_refused_while_the_new_holders_commits() {
    let server = PgServer::start();
    let a = PgLock::connect(&server.url()).await.unwrap();
    let b = PgLock::connect(&server.url()).await.unwrap();
    let (mut a_db, mut b_db) = (app_client(&server).await, app_client(&server).await);
    let observer = app_client(&server).await;
    accounts(&a_db).await;
    let f = TransactionFence::default();
    let short = LockOptions::new()
        .with_ttl(Duration::from_millis(400))
        .with_auto_renew(false);
    let stale = a.acquire("accounts/7", &short).await.unwrap();
    assert_eq!(
        fenced_update(&mut a_db, &f, &stale.fence(), -10, "a").await.unwrap(),
        Admission::First
    );
    // The holder "pauses" (no renewal) past its TTL; the new holder takes over.
    tokio::time::timeout(SLACK, stale.lost()).await.expect("expiry");
    let fresh = b
        .acquire("accounts/7", &LockOptions::new().with_wait(SLACK))
        .await
        .unwrap();
    assert!(fresh.token() > stale.token());
    // The new holder's transaction is open (fence admitted, row updated) when the old
    // holder wakes: the old holder's check waits on the fence row, then is refused.
    let tx = b_db.transaction().await.unwrap();
    assert_eq!(
        f.admit(&tx, "accounts/7", &fresh.fence()).await.unwrap(),
        Admission::Newer
    );
    tx.execute(
        "UPDATE accounts SET balance = balance + 50, last_writer = 'b' WHERE id = 7",
        &[],
    )
    .await
    .unwrap();
    let old = tokio::spawn(async move {
        let fence = stale.fence();
        let r = fenced_update(&mut a_db, &TransactionFence::default(), &fence, -1000, "a").await;
        (r, a_db)
    });
    // Bounded polling of a condition: the stale writer's check is blocked on the fence
    // row's lock, held by the new holder's open transaction.
    let deadline = tokio::time::Instant::now() + SLACK;
    while observer
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'",
            &[],
        )
        .await
        .unwrap()
        .get::<_, i64>(0)
        == 0
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the stale writer never waited on the fence row"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tx.commit().await.unwrap();
    let (refused, a_db) = tokio::time::timeout(SLACK, old).await.expect("stale writer").unwrap();
    match refused {
        Err(LockError::Fenced(r)) => {
            assert_eq!(r.highest, fresh.token(), "{r}");
            assert_eq!(r.presented.get() + 1, fresh.token().get());
        }
        other => panic!("the paused holder's stale write was not refused: {other:?}"),
    }
    let row = a_db
        .query_one("SELECT balance, last_writer FROM accounts WHERE id = 7", &[])
        .await
        .unwrap();
    assert_eq!(
        (row.get::<_, i32>(0), row.get::<_, String>(1)),
        (140, "b".to_owned()),
        "the stale write landed or the new holder's write was lost"
    );
    fresh.release().await.unwrap();
}

/// The least-privilege set-up of the docs: the fence table made by a migration (here the
/// owner's `create_table`), the service's role with DML only and no CREATE anywhere. Its
/// own `create_table` — "once, idempotent", as the docs' example calls it at start — finds
/// the table there and uses it. Failed before the change: `CREATE SCHEMA IF NOT EXISTS`
/// checks the CREATE privilege before it looks, so the role got InvalidConfig
/// ("permission denied for database postgres") for a table it could use.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_role_without_create_uses_a_fence_table_made_by_a_migration() {
    let server = PgServer::start();
    let owner = app_client(&server).await;
    let f = TransactionFence::default();
    f.create_table(&owner).await.unwrap();
    let url = common::dml_only_role(&server);
    let (mut app, connection) =
        fencelock_postgres::tokio_postgres::connect(&url, fencelock_postgres::tokio_postgres::NoTls)
            .await
            .expect("the DML-only role connects");
    tokio::spawn(connection);
    let f = TransactionFence::default();
    f.create_table(&app)
        .await
        .expect("create_table on a table the role can use");
    let tx = app.transaction().await.unwrap();
    let admission = f.admit(&tx, "accounts/7", &fence(3, "g3")).await.unwrap();
    tx.commit().await.unwrap();
    assert_eq!(admission, Admission::First);
}
