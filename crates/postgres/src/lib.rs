//! # fencelock-postgres
//!
//! The PostgreSQL backend of fencelock (`postgres://` / `postgresql://`, the standard
//! libpq URL form): a lease table with the expiry on the server's clock, a per-key token
//! counter that is never deleted, and a fence that runs inside the user's own transaction.
//!
//! * **Acquire** is one statement, one round trip: an upsert takes the key's row when it
//!   is free or expired (by `statement_timestamp()`), and only then bumps the key's
//!   counter in the same statement, returning the token — or, when busy, the holder's
//!   remaining TTL by the server's clock.
//! * **Release** and **extend** are one statement each and act only on our grant id;
//!   release also notifies the waiter that queued first for the key (`LISTEN/NOTIFY`), so
//!   a release wakes one waiter, not all of them, and the key goes to waiters in FIFO
//!   order.
//! * **Connections**: an instance opens up to `connections` (default 4; one more while
//!   every open one is silent, a statement unanswered past `timeout`) lazily, sends a
//!   new grant to an idle one, and keeps each lease on the connection that granted it
//!   (extend, renewals, release); one of them `LISTEN`s. Keys are not serialised on one
//!   connection, and concurrent grants share WAL flushes (group commit).
//! * **Auto-renewals** of an instance's leases share one statement per window and
//!   connection.
//! * **Only a grant waits for the disk** (and an extension, a renewal): a release, a
//!   refused acquire and the waiter queue commit without waiting for the WAL flush, so a
//!   hand-off waits for one flush, not two; none of them gives anything out, so a crash
//!   that undoes one costs at most a key held until its expiry (docs/backends/postgres.md).
//! * **Loss**: the leases granted through a connection are reported lost the moment it
//!   ends (server down, backend terminated, a statement unanswered within `timeout`),
//!   long before their TTL runs out on the server.
//! * [`TransactionFence`] records a fence and refuses a stale one atomically with the
//!   user's write, in the user's `tokio_postgres::Transaction`.
//!
//! The tables (`locks`, `tokens`, `waiters`, `fences` in the schema named by the URL's
//! `schema` option, default `fencelock`) are created on first use, idempotently and safely
//! from many clients at once; [`schema_sql`] (and docs/backends/postgres.md) gives the
//! SQL for teams that manage schemas themselves.
//!
//! ## When to choose it
//!
//! When PostgreSQL is already there and the protected data lives in it: the lock is
//! strict on one primary with `fsync` and `synchronous_commit` on (see
//! [`GUARANTEES_DURABLE`]; read at connect time, else [`GUARANTEES`]), and the fence can
//! be checked in the same transaction as the write. A failover to an asynchronously
//! replicated standby can lose the last grants: then exclusion is conditional.
//!
//! TLS: this build has no TLS connector; `sslmode=require`, `verify-ca` and
//! `verify-full` are refused with a clear error, `disable`, `allow` and `prefer` connect
//! in plain text.
//!
//! ```no_run
//! # async fn demo() -> fencelock_core::Result<()> {
//! use fencelock_core::{DistributedLock, LockOptions};
//! let locks = fencelock_postgres::PgLock::connect("postgres://app@127.0.0.1/app?timeout=500ms").await?;
//! let lease = locks.acquire("nightly", &LockOptions::new()).await?;
//! lease.release().await?;
//! # Ok(()) }
//! ```

mod config;
mod deadlines;
mod election;
mod error;
mod fence;
mod grant;
mod hosts;
mod lock;
mod node;
mod pool;
mod renewals;
mod session;
mod sql;
mod task_slot;
mod waiters;

pub use config::{PgConfig, DEFAULT_CONNECTIONS, DEFAULT_SCHEMA, MAX_CONNECTIONS, MIN_UNRENEWED_TTL};
pub use election::{election_schema_sql, PgElection};
pub use fence::TransactionFence;
pub use lock::{PgLock, GUARANTEES, GUARANTEES_DURABLE};
pub use sql::schema_sql;
/// The client crate, re-exported so that callers of [`TransactionFence`] use the same
/// version of `tokio_postgres::Transaction`.
pub use tokio_postgres;

/// The statements of an uncontended cycle exactly as this version sends them, for the
/// measurements that send them by hand on a plain client (`examples/pg_cycle_cost.rs`,
/// `tests/perf.rs`): each kept a copy of the SQL, and one copy fell behind `sql.rs`. Not
/// part of the API: the SQL changes with the backend.
#[doc(hidden)]
pub mod by_hand {
    /// `try_acquire`'s statement for `schema` (`$1` key, `$2` grant id, `$3` TTL in ms).
    pub fn acquire(schema: &str) -> String {
        crate::sql::acquire(schema, crate::sql::AcquireKind::Try)
    }

    /// The plain release's statement for `schema` (`$1` key, `$2` grant id), notifying on
    /// the schema's channel.
    pub fn release(schema: &str) -> String {
        crate::sql::release(schema, &format!("{schema}_released"))
    }
}
