//! PostgreSQL in the bench: the raw minimum issued with tokio-postgres, and the
//! `distributed-lock` crate's PostgreSQL backend as the peer.
//!
//! * Raw minimum ([`RawPg`]): the statements a correct lease lock with fencing tokens needs,
//!   prepared once and issued by hand, in a schema of its own (the SQL and why it is the
//!   minimum: `fencelock_testkit::pg_raw`). Like for like with fencelock's uncontended
//!   acquire + release: 2 round trips, and the same durability per statement — the
//!   acquire (one upsert that takes a free or expired row and bumps the key's counter only
//!   when it took it) waits for the WAL flush, the release (a delete guarded by the
//!   holder's id) commits without waiting for it, as fencelock's does. Without fencelock's
//!   waiter queue, abandoned-grant check, release notification, loss signal and renewals.
//! * `distributed-lock-postgres` 0.2: session advisory locks through an sqlx pool; its
//!   acquire waits on the server (`lock_timeout`) and answers no token.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use distributed_lock_core::{DistributedLock as _, LockHandle as _, LockProvider as _};
use futures_util::future::BoxFuture;
use tokio_postgres::{Client, NoTls, Statement};

use crate::error::{BenchError, Result};
use crate::subject::{Held, Subject, TTL};

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

use fencelock_testkit::pg_raw::{ACQUIRE as RAW_ACQUIRE, RELEASE as RAW_RELEASE, SCHEMA as RAW_SCHEMA};

/// The raw minimum on one connection: `pg_raw::ACQUIRE` (durable commit), then
/// `pg_raw::RELEASE` (lazy commit), one round trip each.
pub struct RawPg {
    client: std::sync::Arc<Client>,
    acquire: Statement,
    release: Statement,
}

fn client_error(doing: &'static str) -> impl Fn(tokio_postgres::Error) -> BenchError {
    move |e| BenchError::client("raw postgres", doing, e)
}

impl RawPg {
    /// Connects to `url` (`postgres://…`), creates its tables and prepares its statements.
    pub async fn connect(url: &str) -> Result<Self> {
        let (client, connection) = tokio_postgres::connect(url, NoTls)
            .await
            .map_err(client_error("connecting"))?;
        tokio::spawn(connection);
        client
            .batch_execute(RAW_SCHEMA)
            .await
            .map_err(client_error("creating tables"))?;
        let acquire = client.prepare(RAW_ACQUIRE).await.map_err(client_error("prepare"))?;
        let release = client.prepare(RAW_RELEASE).await.map_err(client_error("prepare"))?;
        Ok(RawPg {
            client: std::sync::Arc::new(client),
            acquire,
            release,
        })
    }
}

impl Subject for RawPg {
    fn acquire<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Held>> {
        Box::pin(async move {
            let id = format!("{}-{}", std::process::id(), NEXT_ID.fetch_add(1, Ordering::Relaxed));
            let ttl_ms = TTL.as_millis() as i64;
            let rows = self
                .client
                .query(&self.acquire, &[&key, &id, &ttl_ms])
                .await
                .map_err(client_error("acquire"))?;
            if rows.is_empty() {
                return Err(BenchError::client("raw postgres", "acquire", "the key was busy"));
            }
            let (client, release, key) = (self.client.clone(), self.release.clone(), key.to_owned());
            let held: Held = Box::pin(async move {
                client
                    .execute(&release, &[&key, &id])
                    .await
                    .map_err(client_error("release"))
                    .map(|_| ())
            });
            Ok(held)
        })
    }
}

/// `distributed_lock_postgres::PostgresLockProvider` on its own pool.
pub struct DistributedLockPostgres {
    provider: distributed_lock_postgres::PostgresLockProvider,
}

impl DistributedLockPostgres {
    /// Connects to `url` (`postgres://…`).
    pub async fn connect(url: &str) -> Result<Self> {
        let provider = distributed_lock_postgres::PostgresLockProvider::builder()
            .connection_string(url)
            .build()
            .await
            .map_err(|e| BenchError::client("distributed-lock", "connecting", e))?;
        Ok(DistributedLockPostgres { provider })
    }
}

impl Subject for DistributedLockPostgres {
    fn acquire<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Held>> {
        Box::pin(async move {
            let lock = self.provider.create_lock(key);
            // Waits on the server (advisory lock under `lock_timeout`), up to the 30 s every
            // subject gets.
            let handle = lock
                .acquire(Some(Duration::from_secs(30)))
                .await
                .map_err(|e| BenchError::client("distributed-lock", "acquire", e))?;
            let release: Held = Box::pin(async move {
                handle
                    .release()
                    .await
                    .map_err(|e| BenchError::client("distributed-lock", "release", e))
            });
            Ok(release)
        })
    }
}
