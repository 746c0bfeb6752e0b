//! The raw minimum of a lease lock with fencing tokens on PostgreSQL, as SQL issued by
//! hand: one upsert that takes a free or expired row and bumps the key's counter only when
//! it took it, then a delete guarded by the holder's id (2 round trips, like fencelock's
//! acquire + release), in a schema of its own. What the bench's raw subject
//! (`crates/bench/src/pg.rs`) and the backend's perf test (`crates/postgres/tests/perf.rs`)
//! measure fencelock against.
//!
//! Parameters: [`ACQUIRE`] takes `$1` key, `$2` holder id, `$3` TTL in milliseconds
//! (`bigint`) and answers one row whose `token` is NULL when the key is held; [`RELEASE`]
//! takes `$1` key and `$2` holder id.

/// Creates the schema and tables (idempotent).
pub const SCHEMA: &str = "CREATE SCHEMA IF NOT EXISTS fencelock_raw;
CREATE TABLE IF NOT EXISTS fencelock_raw.locks (key text PRIMARY KEY, holder text NOT NULL, expires_at timestamptz NOT NULL);
CREATE TABLE IF NOT EXISTS fencelock_raw.tokens (key text PRIMARY KEY, token bigint NOT NULL);";

/// Takes the key if free or expired; the new token, or NULL.
pub const ACQUIRE: &str = "WITH taken AS (
    INSERT INTO fencelock_raw.locks AS l (key, holder, expires_at)
    VALUES ($1, $2, statement_timestamp() + $3::bigint * interval '1 millisecond')
    ON CONFLICT (key) DO UPDATE SET holder = excluded.holder, expires_at = excluded.expires_at
        WHERE l.expires_at <= statement_timestamp()
    RETURNING l.key
), bumped AS (
    INSERT INTO fencelock_raw.tokens AS t (key, token) SELECT key, 1 FROM taken
    ON CONFLICT (key) DO UPDATE SET token = t.token + 1
    RETURNING t.token
)
SELECT token FROM bumped";

/// Deletes the key's row if this holder still has it.
pub const RELEASE: &str = "DELETE FROM fencelock_raw.locks WHERE key = $1 AND holder = $2";
