//! [`TransactionFence`]: the fencing check inside the user's own transaction.
//!
//! The Kleppmann fix for a paused lock holder is that the *resource* refuses a stale
//! token. When the resource is a PostgreSQL database, the check can run in the same
//! transaction as the write it guards: record the fence for the resource and refuse a
//! stale one in one statement, then write; a refusal leaves the transaction to be rolled
//! back, and an admission commits together with the write. The fence row stays locked
//! until the transaction ends, so two writers of one resource are serialised by it: a
//! stale writer that checks while the newer holder's transaction is open waits for it,
//! then sees the newer fence and is refused.
//!
//! The rule is [`FencingChecker`](fencelock_core::fencing::FencingChecker)'s: a token
//! higher than the highest recorded is admitted (a new holder); the highest again from
//! the same grant is admitted (the holder writing again); a lower token, or the highest
//! from another grant (a reused token), is refused.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use fencelock_core::fencing::Admission;
use fencelock_core::{Fence, FenceRejection, FencingToken, GrantId, LockError, Result};
use tokio_postgres::types::Type;
use tokio_postgres::{GenericClient, Transaction};

use crate::config::{check_identifier, DEFAULT_SCHEMA};
use crate::error::failed;
use crate::sql;

/// How to get out of a clash with a `fences` table that is not ours.
const WAY_OUT: &str = "give the fences a schema of their own (`TransactionFence::new(schema)`; the SQL of the table: docs/backends/postgres.md)";

/// Checks and records fences in a `fences` table of the user's database, inside the
/// user's transaction.
///
/// ```no_run
/// # async fn demo(client: &mut tokio_postgres::Client, lease: &fencelock_core::Lease) -> fencelock_core::Result<()> {
/// use fencelock_postgres::TransactionFence;
/// let fence = TransactionFence::new("fencelock")?;
/// fence.create_table(client).await?; // once; idempotent
/// let tx = client.transaction().await.map_err(|e| fencelock_core::LockError::backend("postgres", "begin", e))?;
/// fence.admit(&tx, "accounts/7", &lease.fence()).await?; // Err(Fenced) if stale: tx rolls back on drop
/// tx.execute("UPDATE accounts SET balance = balance - 10 WHERE id = 7", &[])
///     .await
///     .map_err(|e| fencelock_core::LockError::backend("postgres", "update", e))?;
/// tx.commit().await.map_err(|e| fencelock_core::LockError::backend("postgres", "commit", e))?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct TransactionFence {
    schema: String,
    check: String,
    current: String,
    /// Whether the table was found usable (ours, logged) — by `create_table` or by the
    /// first `admit` — so that later admissions skip the look (shared by clones).
    checked: Arc<AtomicBool>,
}

impl Default for TransactionFence {
    /// The fence table of the default schema, `fencelock.fences`.
    fn default() -> Self {
        TransactionFence {
            schema: DEFAULT_SCHEMA.to_owned(),
            check: sql::fence(DEFAULT_SCHEMA),
            current: sql::fence_current(DEFAULT_SCHEMA),
            checked: Arc::default(),
        }
    }
}

impl TransactionFence {
    /// The fence table `<schema>.fences` (the same schema as the lock backend's `schema`
    /// option when the locks and the data share a database).
    ///
    /// # Errors
    ///
    /// [`LockError::InvalidConfig`] when `schema` is not a plain identifier (lowercase
    /// letters, digits and `_`, 1 to 40 bytes).
    pub fn new(schema: &str) -> Result<Self> {
        check_identifier(schema).map_err(|why| LockError::invalid_config(format!("schema: {why}")))?;
        Ok(TransactionFence {
            schema: schema.to_owned(),
            check: sql::fence(schema),
            current: sql::fence_current(schema),
            checked: Arc::default(),
        })
    }

    /// The statement [`admit`](Self::admit) runs (`$1` resource, `$2` token as bigint,
    /// `$3` grant id), for services that run it themselves.
    pub fn sql(&self) -> &str {
        &self.check
    }

    /// Creates the schema and the fence table if missing: idempotent and safe to run
    /// from many clients at once (the DDL runs under a transaction-scoped advisory lock).
    /// A table already there is only looked at (one query), so a role without CREATE
    /// may call it on a table made by a migration.
    ///
    /// # Errors
    ///
    /// [`LockError::InvalidConfig`] when the table is missing and the role may not
    /// create it, or when the
    /// table found is not fencelock's or is `UNLOGGED` (naming the `ALTER TABLE … SET
    /// LOGGED` to run);
    /// [`LockError::Unavailable`] when the server is unreachable.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: the DDL transaction commits whole or not at all.
    pub async fn create_table(&self, client: &tokio_postgres::Client) -> Result<()> {
        // Looked at first, the DDL sent only when the table is missing: `CREATE SCHEMA IF
        // NOT EXISTS` checks the CREATE privilege before it looks, so a role of a
        // migration-managed schema (DML only, as the docs' least-privilege SQL grants)
        // was refused for a table it could use. The lock tables are made the same way.
        if self.judge(&self.found(client, "the user's database").await?)? {
            return Ok(());
        }
        client
            .batch_execute(&sql::create_fences(&self.schema))
            .await
            .map_err(|e| failed("creating the fence table", "the user's database", e))?;
        // `IF NOT EXISTS` keeps a table of that name that is not ours: refuse it here, not
        // at the first write.
        self.judge(&self.found(client, "the user's database").await?).map(drop)
    }

    /// The fence table's columns as found (rows of `sql::COLUMNS_FOUND`).
    /// `on` names the connection in an error: "the user's database" or "the user's
    /// transaction".
    async fn found(&self, client: &impl GenericClient, on: &str) -> Result<Vec<tokio_postgres::Row>> {
        client
            .query(sql::COLUMNS_FOUND, &[&self.schema, &&["fences"][..]])
            .await
            .map_err(|e| failed("looking at the fence table", on, e))
    }

    /// Whether the found `fences` table (rows of `sql::COLUMNS_FOUND`) can be used: ours
    /// and logged (an `UNLOGGED` one is emptied by crash recovery, and an empty fence
    /// table admits a stale write). `Ok(true)` when it is there and can (remembered),
    /// `Ok(false)` when it is missing.
    fn judge(&self, found: &[tokio_postgres::Row]) -> Result<bool> {
        let missing =
            sql::check_tables(&self.schema, &["fences"], found, WAY_OUT).map_err(LockError::invalid_config)?;
        if missing.is_empty() {
            self.checked.store(true, Ordering::Relaxed);
        }
        Ok(missing.is_empty())
    }

    /// The error for an answer of the fence statements that does not decode: the table
    /// is not the one [`create_table`](Self::create_table) makes.
    fn not_ours(&self, e: tokio_postgres::Error) -> LockError {
        LockError::InvalidConfig {
            message: format!(
                "table `{}.fences` is not fencelock's: its answer does not decode; {WAY_OUT}",
                self.schema
            ),
            source: Some(Box::new(e)),
        }
    }

    /// Admits `fence` for `resource` inside `tx` — one statement, one round trip — or
    /// refuses it with [`LockError::Fenced`] (a second statement then reads the fence
    /// that refused it, for the error). The [`Admission`] kind is read from the
    /// statement's snapshot: with concurrent writers of one resource it may say `Newer`
    /// where the fence had just been recorded by the same grant; the admission itself is
    /// decided on the latest row. An admitted fence is recorded when the
    /// transaction commits, together with the user's writes; after a refusal the
    /// transaction must not commit the write (drop it to roll back).
    ///
    /// Under `REPEATABLE READ` or `SERIALIZABLE`, a fence recorded by a concurrent
    /// transaction after this one's snapshot makes the statement fail with a
    /// serialization error (returned as [`LockError::Backend`]): retry the transaction.
    ///
    /// # Errors
    ///
    /// [`LockError::Fenced`] for a stale or reused token (the transaction is still
    /// usable, nothing was written by the check); [`LockError::InvalidInput`] for a token
    /// above `i64::MAX`; [`LockError::InvalidConfig`] when the `fences` table is not
    /// fencelock's or is `UNLOGGED` (looked at on the first call of this fence and its
    /// clones, unless [`create_table`](Self::create_table) did); [`LockError::Unavailable`] / [`LockError::Backend`] when the
    /// statement fails (the transaction is then aborted by the server).
    ///
    /// # Cancel safety
    ///
    /// Not cancel safe in the sense that the transaction's state is unknown after a drop
    /// mid-statement: drop the transaction too (it rolls back).
    pub async fn admit(&self, tx: &Transaction<'_>, resource: &str, fence: &Fence) -> Result<Admission> {
        let token = i64::try_from(fence.token.get())
            .map_err(|_| LockError::invalid_input(format!("token {} does not fit a bigint", fence.token)))?;
        if !self.checked.load(Ordering::Relaxed) {
            // A table made by the team's migration (`create_table` never called) is looked
            // at once, before its first use: one more round trip per `TransactionFence`.
            self.judge(&self.found(tx, "the user's transaction").await?)?;
        }
        let rows = tx
            .query_typed(
                &self.check,
                &[
                    (&resource, Type::TEXT),
                    (&token, Type::INT8),
                    (&fence.grant.as_str(), Type::TEXT),
                ],
            )
            .await
            .map_err(|e| failed("fence check", "the user's transaction", e))?;
        let row = rows.first().ok_or_else(|| LockError::Backend {
            backend: crate::error::BACKEND,
            message: "the fence check returned no row".into(),
            source: None,
            temporary: false,
        })?;
        let admitted: i64 = row.try_get(0).map_err(|e| self.not_ours(e))?;
        let prior_token: Option<i64> = row.try_get(1).map_err(|e| self.not_ours(e))?;
        let prior_grant: Option<String> = row.try_get(2).map_err(|e| self.not_ours(e))?;
        if admitted == 1 {
            return Ok(match (prior_token, prior_grant) {
                (None, _) => Admission::First,
                (Some(t), Some(g)) if t == token && g == fence.grant.as_str() => Admission::SameGrant,
                _ => Admission::Newer,
            });
        }
        // Refused. The check's snapshot predates a fence committed while it waited for the
        // row (READ COMMITTED): read the fence that refused us with a fresh snapshot (a
        // second round trip, on refusals only).
        let latest = tx
            .query_typed(&self.current, &[(&resource, Type::TEXT)])
            .await
            .map_err(|e| failed("reading the refusing fence", "the user's transaction", e))?;
        let (highest, grant) = match latest.first() {
            Some(r) => (
                r.try_get::<_, i64>(0).map_err(|e| self.not_ours(e))?,
                r.try_get::<_, String>(1).map_err(|e| self.not_ours(e))?,
            ),
            None => (prior_token.unwrap_or(i64::MAX), prior_grant.unwrap_or_default()),
        };
        let highest = FencingToken::new(u64::try_from(highest).unwrap_or(0));
        let grant = GrantId::from_string(grant);
        Err(LockError::Fenced(FenceRejection {
            resource: resource.to_owned(),
            presented: fence.token,
            highest,
            reused: fence.token == highest && fence.grant != grant,
        }))
    }
}
