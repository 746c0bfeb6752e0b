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

/// Where the docs show the fence table's SQL and grants.
const DOCS: &str = "docs/backends/postgres.md, \"The fence inside your transaction\"";

/// The connection an error names.
const USER_DB: &str = "the user's database";
const USER_TX: &str = "the user's transaction";

/// What a look at the fence table found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Table {
    /// There, fencelock's, logged, and the role may use it.
    Usable,
    /// Not there.
    Missing,
}

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
    /// The longest `resource` [`admit`](Self::admit) takes, in bytes of UTF-8: 1024.
    ///
    /// `resource` is the `fences` table's primary key, and a btree index entry must fit
    /// in a third of a page: on the usual 8 kB pages PostgreSQL refuses an entry over
    /// 2704 bytes (SQLSTATE 54000, "index row size … exceeds btree version 4 maximum
    /// 2704"), which a text of about 2.7 kB that does not compress reaches — inside the
    /// user's transaction, aborting it. 1024 stays under that with room to spare (also on
    /// a server built with 4 kB pages, whose bound is about 1.3 kB, and in a database
    /// encoding that takes more bytes for a character than UTF-8), and is four times a
    /// lock key's longest ([`MAX_KEY_LEN`](fencelock_core::options::MAX_KEY_LEN)): a
    /// resource is usually named like the key whose tokens fence it.
    pub const MAX_RESOURCE_LEN: usize = 1024;

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

    /// The SQL [`create_table`](Self::create_table) runs when the table is missing — the
    /// schema and the `fences` table, idempotent, in one transaction under the tables'
    /// advisory lock — for a migration tool or the schema's owner. The role that then
    /// admits needs `USAGE` on the schema and `SELECT, INSERT, UPDATE` on the table; no
    /// `CREATE`.
    ///
    /// ```
    /// let fence = fencelock_postgres::TransactionFence::new("app").unwrap();
    /// assert!(fence.table_sql().contains("CREATE TABLE IF NOT EXISTS app.fences"));
    /// ```
    pub fn table_sql(&self) -> String {
        sql::create_fences(&self.schema)
    }

    /// Creates the schema and the fence table if missing: idempotent and safe to run
    /// from many clients at once (the DDL runs under a transaction-scoped advisory lock).
    /// A table already there is only looked at (one round trip), so a role without CREATE
    /// may call it on a table made by a migration ([`table_sql`](Self::table_sql)) —
    /// provided it may use that table: the look also reads the role's privileges, and a
    /// missing grant is an error here rather than at the first [`admit`](Self::admit),
    /// inside a transaction it would abort.
    ///
    /// # Errors
    ///
    /// [`LockError::InvalidConfig`] when the table is missing and the role may not
    /// create it (naming [`table_sql`](Self::table_sql) and the grants to give); when the
    /// table found is not fencelock's or is `UNLOGGED` (naming the `ALTER TABLE … SET
    /// LOGGED` to run); when the role lacks `USAGE` on the schema or `SELECT`, `INSERT`
    /// or `UPDATE` on the table (naming the `GRANT` to run as its owner);
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
        if self.look(client, USER_DB).await? == Table::Usable {
            return Ok(());
        }
        client.batch_execute(&self.table_sql()).await.map_err(|e| {
            if e.code() == Some(&tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE) {
                return LockError::InvalidConfig {
                    message: format!(
                        "the fence table `{}.fences` is missing and this role may not create it ({}): have \
                         the schema's owner run `TransactionFence::table_sql()` ({DOCS}) and grant this role \
                         USAGE on the schema and {} on the table",
                        self.schema,
                        fencelock_core::error::one_line(&e),
                        sql::FENCE_PRIVILEGES.join(", ")
                    ),
                    source: Some(Box::new(e)),
                };
            }
            failed("creating the fence table", USER_DB, e)
        })?;
        // `IF NOT EXISTS` keeps a table of that name that is not ours: refuse it here, not
        // at the first write.
        match self.look(client, USER_DB).await? {
            Table::Usable => Ok(()),
            Table::Missing => Err(self.missing()),
        }
    }

    /// Looks at the fence table — its columns (`sql::COLUMNS_FOUND`) and the role's
    /// privileges on it (`sql::PRIVILEGES_FOUND`), both in one round trip — and judges
    /// it: [`Table::Missing`], [`Table::Usable`] (remembered, so that later admissions
    /// skip the look), or an error saying why it cannot be used. `on` names the
    /// connection in an error ([`USER_DB`], [`USER_TX`]).
    async fn look(&self, client: &impl GenericClient, on: &str) -> Result<Table> {
        let tables: &[&str] = &["fences"];
        let params: [&(dyn tokio_postgres::types::ToSql + Sync); 2] = [&self.schema, &tables];
        let (found, granted) = tokio::join!(
            client.query(sql::COLUMNS_FOUND, &params),
            client.query(sql::PRIVILEGES_FOUND, &params)
        );
        let found = found.map_err(|e| failed("looking at the fence table", on, e))?;
        let missing =
            sql::check_tables(&self.schema, &["fences"], &found, WAY_OUT).map_err(LockError::invalid_config)?;
        if !missing.is_empty() {
            return Ok(Table::Missing);
        }
        let granted = granted.map_err(|e| failed("reading the role's privileges on the fence table", on, e))?;
        let grants = sql::missing_grants(&self.schema, &granted, sql::FENCE_PRIVILEGES);
        if !grants.is_empty() {
            return Err(LockError::invalid_config(format!(
                "this role may not use the fence table `{}.fences`; run as its owner: {}",
                self.schema,
                grants.join(" ")
            )));
        }
        self.checked.store(true, Ordering::Relaxed);
        Ok(Table::Usable)
    }

    /// The error for a fence table that is not there.
    fn missing(&self) -> LockError {
        LockError::invalid_config(format!(
            "the fence table `{}.fences` does not exist: call `TransactionFence::create_table` once (idempotent), \
             or have the schema's owner run `TransactionFence::table_sql()` ({DOCS})",
            self.schema
        ))
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
    /// usable, nothing was written by the check); [`LockError::InvalidInput`], before
    /// anything is sent, for an empty `resource`, one with a NUL byte (PostgreSQL's
    /// `text` cannot hold it), one longer than
    /// [`MAX_RESOURCE_LEN`](Self::MAX_RESOURCE_LEN) bytes, or a token above `i64::MAX`;
    /// [`LockError::InvalidConfig`] when the `fences` table does not exist (call
    /// [`create_table`](Self::create_table)), is not fencelock's, is `UNLOGGED`, or the
    /// role lacks `USAGE` on its schema or `SELECT`, `INSERT` or `UPDATE` on it — looked
    /// at on the first call of this fence and its clones, unless
    /// [`create_table`](Self::create_table) did, and said before the check runs, so the
    /// transaction stays usable; [`LockError::Unavailable`] / [`LockError::Backend`] when the
    /// statement fails (the transaction is then aborted by the server).
    ///
    /// # Cancel safety
    ///
    /// Not cancel safe in the sense that the transaction's state is unknown after a drop
    /// mid-statement: drop the transaction too (it rolls back).
    pub async fn admit(&self, tx: &Transaction<'_>, resource: &str, fence: &Fence) -> Result<Admission> {
        check_resource(resource)?;
        let token = i64::try_from(fence.token.get())
            .map_err(|_| LockError::invalid_input(format!("token {} does not fit a bigint", fence.token)))?;
        if !self.checked.load(Ordering::Relaxed) {
            // A table made by the team's migration (`create_table` never called) is looked
            // at once, before its first use: one more round trip per `TransactionFence`.
            // A missing table or grant is said here, before the check could fail and abort
            // the user's transaction (it failed with 42P01 or 42501, read as "check the
            // user, password, database and its privileges").
            if self.look(tx, USER_TX).await? == Table::Missing {
                return Err(self.missing());
            }
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
            .map_err(|e| failed("fence check", USER_TX, e))?;
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
            .map_err(|e| failed("reading the refusing fence", USER_TX, e))?;
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

/// Refuses a `resource` [`TransactionFence::admit`] cannot record, before any round
/// trip: empty (a name for nothing, likely a bug upstream), with a NUL byte (PostgreSQL's
/// `text` cannot hold one: the check failed with SQLSTATE 22021, a raw backend error in
/// an aborted transaction), or longer than [`TransactionFence::MAX_RESOURCE_LEN`] bytes.
fn check_resource(resource: &str) -> Result<()> {
    if resource.is_empty() {
        return Err(LockError::invalid_input(
            "resource is empty: name the data the fence guards (such as `accounts/7`)",
        ));
    }
    if resource.contains('\0') {
        return Err(LockError::invalid_input(
            "resource contains a NUL byte, which PostgreSQL text cannot hold",
        ));
    }
    if resource.len() > TransactionFence::MAX_RESOURCE_LEN {
        return Err(LockError::invalid_input(format!(
            "resource is {} bytes long; the maximum is {} (it is the fence table's primary key, and an \
             index entry must fit in a third of a page)",
            resource.len(),
            TransactionFence::MAX_RESOURCE_LEN
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resources_that_cannot_be_recorded_are_refused_as_input() {
        let refused = |r: &str, said: &str| match check_resource(r) {
            Err(LockError::InvalidInput(message)) => assert!(message.contains(said), "{said:?} not in {message}"),
            other => panic!("{r:?}: {other:?}"),
        };
        refused("", "resource is empty");
        refused("accounts/\u{0}7", "NUL byte");
        refused(
            &"r".repeat(TransactionFence::MAX_RESOURCE_LEN + 1),
            "1025 bytes long; the maximum is 1024",
        );
        // Bytes, not characters: 342 three-byte characters are 1026 bytes.
        refused(&"€".repeat(342), "1026 bytes");
        assert!(check_resource(&"r".repeat(TransactionFence::MAX_RESOURCE_LEN)).is_ok());
        assert!(check_resource("accounts/7").is_ok());
        // Other control characters are PostgreSQL text like any other: taken.
        assert!(check_resource("line\nbreak").is_ok());
    }
}
