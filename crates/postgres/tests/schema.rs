//! The tables: created on first use, idempotently and safely from many clients at once,
//! or beforehand by the team's own migration with the SQL of docs/backends/postgres.md.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail by panicking

use std::sync::Arc;
use std::time::Duration;

use fencelock_core::{DistributedLock, LockOptions};
use fencelock_postgres::{schema_sql, PgLock};
use fencelock_testkit::pg_server::PgServer;

const CLIENTS: usize = 8;

/// Eight clients connecting at the same instant to a fresh database: every one creates
/// (or finds) the tables without an error, and all can lock at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_clients_connecting_at_once_to_a_fresh_database_all_succeed() {
    let server = PgServer::start();
    for url in [server.url(), format!("{}&schema=team_b", server.url())] {
        let start = Arc::new(tokio::sync::Barrier::new(CLIENTS));
        let clients: Vec<_> = (0..CLIENTS)
            .map(|i| {
                let (url, start) = (url.clone(), start.clone());
                tokio::spawn(async move {
                    start.wait().await;
                    let locks = PgLock::connect(&url).await.map_err(|e| format!("client {i}: {e}"))?;
                    let lease = locks
                        .try_acquire(&format!("k{i}"), &LockOptions::new().with_ttl(Duration::from_secs(30)))
                        .await
                        .map_err(|e| format!("client {i}: {e}"))?
                        .ok_or_else(|| format!("client {i}: its own key was busy"))?;
                    lease.release().await.map_err(|e| format!("client {i}: {e}"))?;
                    locks.close().await.map_err(|e| format!("client {i}: {e}"))
                })
            })
            .collect();
        for c in clients {
            tokio::time::timeout(Duration::from_secs(30), c)
                .await
                .expect("connect within 30 s")
                .unwrap()
                .unwrap();
        }
    }
    for schema in ["fencelock", "team_b"] {
        assert_eq!(
            server.psql(&format!("SELECT count(*) FROM pg_tables WHERE schemaname = '{schema}'")),
            "5",
            "{schema}"
        );
    }
}

/// The SQL block under "The tables, for teams that manage schemas themselves".
fn documented_sql() -> String {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/backends/postgres.md"))
        .expect("docs/backends/postgres.md");
    let section = doc
        .split("## The tables, for teams that manage schemas themselves")
        .nth(1)
        .expect("the section");
    let block = section.split("```sql\n").nth(1).expect("an sql block");
    block.split("```").next().unwrap().to_owned()
}

/// SQL without comments and with single spaces, to compare texts.
fn normalised(sql: &str) -> String {
    sql.lines()
        .map(|l| l.split("--").next().unwrap())
        .collect::<Vec<_>>()
        .join(" ")
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

/// The documented SQL is what the client runs, and tables made with it serve a role that
/// may not create anything; running it again (or twice at once) changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_documented_sql_makes_tables_a_dml_only_role_can_use() {
    let doc = documented_sql();
    assert_eq!(
        normalised(&doc),
        normalised(&schema_sql("fencelock").unwrap()),
        "docs/backends/postgres.md and schema_sql() disagree"
    );
    let server = PgServer::start();
    server.psql(&doc);
    server.psql(&doc); // idempotent
    server.psql(
        "CREATE ROLE app LOGIN;
         REVOKE CREATE ON DATABASE postgres FROM PUBLIC;
         REVOKE CREATE ON SCHEMA public FROM PUBLIC;
         GRANT USAGE ON SCHEMA fencelock TO app;
         GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA fencelock TO app;
         GRANT USAGE ON ALL SEQUENCES IN SCHEMA fencelock TO app;",
    );
    let url = format!("postgres://app@127.0.0.1:{}/postgres?sslmode=disable", server.port());
    let locks = PgLock::connect(&url).await.expect("a DML-only role connects");
    let opts = LockOptions::new().with_ttl(Duration::from_secs(30));
    let lease = locks.acquire("k", &opts).await.unwrap();
    assert_eq!(lease.token().get(), 1);
    lease.release().await.unwrap();
    // A waiter takes a ticket (the sequence) and is handed the key.
    let holder = locks.acquire("k", &opts).await.unwrap();
    let other = PgLock::connect(&url).await.unwrap();
    let waiter = tokio::spawn(async move {
        other
            .acquire("k", &opts.with_wait(Duration::from_secs(10)))
            .await
            .map(|l| l.token())
    });
    holder.release().await.unwrap();
    let token = tokio::time::timeout(Duration::from_secs(10), waiter)
        .await
        .expect("hand-off")
        .unwrap()
        .unwrap();
    assert_eq!(token.get(), 3);
}

#[test]
fn the_sql_refuses_a_schema_that_is_not_a_plain_identifier() {
    for bad in ["", "Fencelock", "a-b", "1a", "x; DROP TABLE t", &"a".repeat(41)] {
        let e = schema_sql(bad).unwrap_err();
        assert!(e.to_string().contains("schema"), "{bad}: {e}");
    }
    assert!(schema_sql("team_b")
        .unwrap()
        .contains("CREATE SCHEMA IF NOT EXISTS team_b;"));
}
