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

/// `admit` on a fence table that was never created (neither `create_table` nor a
/// migration) says so and what to do, before the check runs: the transaction stays
/// usable. Failed before: the check ran and failed with SQLSTATE 42P01 (a schema without
/// the table; "postgres refused: fence check … check the user, password, database and
/// its privileges") or 3F000 (no schema: a raw backend error), aborting the transaction.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admit_on_a_missing_fence_table_says_to_create_it() {
    let server = PgServer::start();
    let mut client = app_client(&server).await;
    client.batch_execute("CREATE SCHEMA app").await.unwrap();
    for schema in ["app", "fencelock"] {
        // `app` exists without the table; `fencelock` does not exist at all.
        let f = TransactionFence::new(schema).unwrap();
        let tx = client.transaction().await.unwrap();
        match f.admit(&tx, "accounts/7", &fence(1, "g1")).await {
            Err(LockError::InvalidConfig { message, .. }) => {
                for said in [
                    &format!("the fence table `{schema}.fences` does not exist"),
                    "TransactionFence::create_table",
                    "TransactionFence::table_sql()",
                    "docs/backends/postgres.md",
                ] {
                    assert!(message.contains(said), "{said:?} not in: {message}");
                }
                assert!(!message.contains("password"), "{message}");
            }
            other => panic!("{schema}: admit on a missing fence table: {other:?}"),
        }
        tx.query_one("SELECT 1", &[])
            .await
            .expect("the transaction is still usable: nothing failed on the server");
        tx.rollback().await.unwrap();
        // The missing table is not remembered: once created, the same fence admits.
        f.create_table(&client).await.unwrap();
        let tx = client.transaction().await.unwrap();
        assert_eq!(
            f.admit(&tx, "accounts/7", &fence(1, "g1")).await.unwrap(),
            Admission::First
        );
        tx.commit().await.unwrap();
    }
}

/// A connection of role `role` (no password: the test server trusts loopback).
async fn client_of(server: &PgServer, role: &str) -> Client {
    let url = format!("postgres://{role}@127.0.0.1:{}/postgres?sslmode=disable", server.port());
    let (client, connection) =
        fencelock_postgres::tokio_postgres::connect(&url, fencelock_postgres::tokio_postgres::NoTls)
            .await
            .expect("the role connects");
    tokio::spawn(connection);
    client
}

fn refused_naming(r: Result<impl std::fmt::Debug, LockError>, grant: &str, not: &[&str]) {
    match r {
        Err(LockError::InvalidConfig { message, .. }) => {
            assert!(message.contains(grant), "{grant:?} not in: {message}");
            for n in not {
                assert!(!message.contains(n), "{n:?} in: {message}");
            }
        }
        other => panic!("expected InvalidConfig naming {grant:?}, got {other:?}"),
    }
}

/// The fence table made by a migration, and a role that may read it but not write it:
/// `create_table` — which the docs call once at start — refuses it naming the GRANT to
/// run, and so does the first `admit` of a fence that did not call it, before the check
/// (the transaction stays usable). Failed before: `create_table` returned `Ok(())` (it
/// read pg_catalog, whatever the privileges), and the first `admit` failed inside the
/// user's transaction with SQLSTATE 42501, aborting it. Without `USAGE` on the schema,
/// that grant is named.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_table_refuses_a_fence_table_the_role_cannot_write() {
    let server = PgServer::start();
    let owner = app_client(&server).await;
    TransactionFence::default().create_table(&owner).await.unwrap(); // the migration
    server.psql(
        "CREATE ROLE reader LOGIN;
         REVOKE CREATE ON DATABASE postgres FROM PUBLIC;
         REVOKE CREATE ON SCHEMA public FROM PUBLIC;
         GRANT USAGE ON SCHEMA fencelock TO reader;
         GRANT SELECT ON fencelock.fences TO reader;",
    );
    let mut reader = client_of(&server, "reader").await;
    let write_grant = "GRANT SELECT, INSERT, UPDATE ON fencelock.fences TO \"reader\";";
    refused_naming(
        TransactionFence::default().create_table(&reader).await,
        write_grant,
        &["USAGE", "DELETE"],
    );
    let f = TransactionFence::default();
    let tx = reader.transaction().await.unwrap();
    refused_naming(f.admit(&tx, "accounts/7", &fence(1, "g1")).await, write_grant, &[]);
    tx.query_one("SELECT 1", &[])
        .await
        .expect("the transaction is still usable: the check was not run");
    tx.rollback().await.unwrap();

    // Writes granted, USAGE on the schema taken away: that grant alone is named.
    server.psql(
        "GRANT INSERT, UPDATE ON fencelock.fences TO reader;
         REVOKE USAGE ON SCHEMA fencelock FROM reader;",
    );
    refused_naming(
        TransactionFence::default().create_table(&reader).await,
        "GRANT USAGE ON SCHEMA fencelock TO \"reader\";",
        &["ON fencelock.fences"],
    );

    // Both given: the look passes, and the fence admits (the refusals were not
    // remembered).
    server.psql("GRANT USAGE ON SCHEMA fencelock TO reader;");
    f.create_table(&reader).await.expect("a role that may use the table");
    let tx = reader.transaction().await.unwrap();
    assert_eq!(
        f.admit(&tx, "accounts/7", &fence(1, "g1")).await.unwrap(),
        Admission::First
    );
    tx.commit().await.unwrap();
}

/// A text that PostgreSQL's compression (pglz) cannot shrink: letters and digits from a
/// pseudo-random sequence.
fn incompressible(len: usize) -> String {
    const CHARS: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            CHARS[(x % CHARS.len() as u64) as usize] as char
        })
        .collect()
}

/// A resource the fence table cannot key is refused as input before anything is sent:
/// empty (was admitted and recorded), with a NUL byte (was a raw `Backend` error, SQLSTATE
/// 22021, aborting the transaction), longer than `MAX_RESOURCE_LEN` bytes. The longest
/// accepted one, incompressible, is recorded; and the bound is needed: the check itself
/// fails with SQLSTATE 54000 (index row size exceeds the btree maximum, 2704 bytes) for
/// an incompressible resource of 2,800 bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resources_that_cannot_be_recorded_are_refused_before_the_check() {
    let server = PgServer::start();
    let mut client = app_client(&server).await;
    let f = TransactionFence::default();
    f.create_table(&client).await.unwrap();
    let tx = client.transaction().await.unwrap();
    let over = incompressible(TransactionFence::MAX_RESOURCE_LEN + 1);
    for (resource, said) in [
        ("", "resource is empty"),
        ("accounts\0/7", "NUL byte"),
        (over.as_str(), "resource is 1025 bytes long; the maximum is 1024"),
    ] {
        match f.admit(&tx, resource, &fence(1, "g1")).await {
            Err(LockError::InvalidInput(message)) => assert!(message.contains(said), "{said:?} not in: {message}"),
            other => panic!("resource {:?}: {other:?}", resource.get(..20).unwrap_or(resource)),
        }
    }
    let longest = incompressible(TransactionFence::MAX_RESOURCE_LEN);
    assert_eq!(f.admit(&tx, &longest, &fence(1, "g1")).await.unwrap(), Admission::First);
    tx.commit().await.expect("nothing failed in the transaction");
    let recorded: i64 = client
        .query_one(
            "SELECT count(*) FROM fencelock.fences WHERE resource IN ('', $1)",
            &[&longest],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(recorded, 1, "only the longest resource is recorded");
    // Why there is a bound: past about 2.7 kB the primary key's index refuses the row.
    let tx = client.transaction().await.unwrap();
    let e = tx
        .query(f.sql(), &[&incompressible(2800), &1_i64, &"g1"])
        .await
        .expect_err("an index entry over the btree maximum");
    assert_eq!(e.code().map(|c| c.code()), Some("54000"), "{e}");
}

/// The fence section of docs/backends/postgres.md is what the code is: its Rust block is
/// `examples/transaction_fence.rs`'s `pay` (which `cargo test` compiles), its check SQL
/// is `TransactionFence::sql`, its table SQL is `table_sql`, and a role given exactly its
/// grants — no `CREATE`, no `DELETE` — finds the table made by that SQL usable. Before,
/// the block was a fragment that nothing compiled (no function to return its mixed
/// errors through, `client` and `lease` undeclared, an unused import).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_docs_fence_blocks_are_the_example_and_the_statements() {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/backends/postgres.md"))
        .expect("docs/backends/postgres.md");
    let section = doc
        .split("## The fence inside your transaction")
        .nth(1)
        .and_then(|s| s.split("\n## ").next())
        .expect("the fence section");
    let blocks = |fence: &str| -> Vec<String> {
        section
            .split(fence)
            .skip(1)
            .map(|b| b.split("```").next().unwrap().to_owned())
            .collect()
    };
    let example =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/examples/transaction_fence.rs")).unwrap();
    let region = example
        .split("// docs:begin\n")
        .nth(1)
        .and_then(|s| s.split("// docs:end").next())
        .expect("the example's docs region");
    assert_eq!(
        blocks("```rust\n"),
        [region.to_owned()],
        "the docs' Rust block and the example differ"
    );
    let normalised = |sql: &str| {
        sql.lines()
            .map(|l| l.split("--").next().unwrap())
            .collect::<Vec<_>>()
            .join(" ")
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
            .trim_end_matches(';')
            .to_owned()
    };
    let sql = blocks("```sql\n");
    let f = TransactionFence::default();
    let find = |starting: &str| {
        sql.iter()
            .find(|b| b.starts_with(starting))
            .unwrap_or_else(|| panic!("no sql block starting {starting:?}"))
            .clone()
    };
    assert_eq!(normalised(&find("WITH prior")), normalised(f.sql()), "the check");
    let table = find("BEGIN;");
    assert_eq!(normalised(&table), normalised(&f.table_sql()), "the table");
    let grants = find("GRANT");

    let server = PgServer::start();
    server.psql(&table);
    server.psql(&table); // idempotent
    server.psql(
        "CREATE ROLE app LOGIN;
         REVOKE CREATE ON DATABASE postgres FROM PUBLIC;
         REVOKE CREATE ON SCHEMA public FROM PUBLIC;",
    );
    server.psql(&grants);
    let mut app = client_of(&server, "app").await;
    f.create_table(&app).await.expect("the documented grants are enough");
    let tx = app.transaction().await.unwrap();
    assert_eq!(
        f.admit(&tx, "accounts/7", &fence(2, "g2")).await.unwrap(),
        Admission::First
    );
    tx.commit().await.unwrap();
}
