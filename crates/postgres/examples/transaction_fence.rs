//! The fenced write of docs/backends/postgres.md, "The fence inside your transaction", as
//! a program: a holder of the lock `accounts/7` takes 10 from account 7, and the fence
//! refuses the write inside the same transaction when the holder's lease is stale.
//!
//! `cargo run -p fencelock-postgres --example transaction_fence [-- postgres://USER@HOST/DB]`
//! (without a URL it starts a server of its own on a free loopback port, as the tests do).
//!
//! The function `pay` is the docs' block, line for line: `tests/fence.rs`
//! (`the_docs_fence_blocks_are_the_example_and_the_statements`) compares them, and
//! `cargo test` builds this example, so the block compiles.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use fencelock_core::{DistributedLock, LockOptions};
use fencelock_postgres::tokio_postgres::NoTls;
use fencelock_postgres::PgLock;

// docs:begin
use fencelock_core::Lease; // `fencelock::Lease` through the facade crate
use fencelock_postgres::{tokio_postgres::Client, TransactionFence};

/// Takes 10 from account 7, fenced by the lease of the lock `accounts/7`.
async fn pay(client: &mut Client, lease: &Lease) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let fence = TransactionFence::new("fencelock")?; // <schema>.fences
    fence.create_table(client).await?; // once; idempotent
    let tx = client.transaction().await?;
    fence.admit(&tx, "accounts/7", &lease.fence()).await?; // Err(LockError::Fenced) if stale: tx rolls back on drop
    tx.execute("UPDATE accounts SET balance = balance - 10 WHERE id = 7", &[])
        .await?;
    tx.commit().await?; // the fence and the write commit together
    Ok(())
}
// docs:end

#[tokio::main]
async fn main() {
    let own_server;
    let url = match std::env::args().nth(1) {
        Some(url) => url,
        None => {
            own_server = fencelock_testkit::pg_server::PgServer::start();
            own_server.url()
        }
    };
    let (mut client, connection) = fencelock_postgres::tokio_postgres::connect(&url, NoTls)
        .await
        .expect("connect");
    tokio::spawn(connection);
    client
        .batch_execute(
            "CREATE TABLE IF NOT EXISTS accounts (id int PRIMARY KEY, balance int NOT NULL);
             INSERT INTO accounts VALUES (7, 100) ON CONFLICT (id) DO NOTHING;",
        )
        .await
        .expect("the accounts table");
    let locks = PgLock::connect(&url).await.expect("the lock");
    let lease = locks.acquire("accounts/7", &LockOptions::new()).await.expect("acquire");
    pay(&mut client, &lease).await.expect("the fenced write");
    let token = lease.token();
    lease.release().await.expect("release");
    let balance: i32 = client
        .query_one("SELECT balance FROM accounts WHERE id = 7", &[])
        .await
        .expect("read back")
        .get(0);
    println!("account 7: balance {balance}, written with token {token}");
}
