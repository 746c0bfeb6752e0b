//! The raw minimum of a lease lock with fencing tokens on PostgreSQL, as SQL issued by
//! hand: what the bench's raw subject (`crates/bench/src/pg.rs`) and the backend's perf
//! test (`crates/postgres/tests/perf.rs`) measure fencelock against, like for like —
//! the same work, the same round trips and the same durability per statement as
//! fencelock's uncontended acquire + release, and nothing else:
//!
//! * [`ACQUIRE`], 1 round trip, **waits for the WAL flush** at commit: one upsert takes the
//!   key's row when it is missing or expired and, in the same statement, bumps the key's
//!   counter only when it took it, returning the token. One statement is the fewest: the
//!   take and the bump must commit together (a grant without its bump, or a bump without
//!   its grant, repeats or skips tokens), and the upsert judges expiry on the newest row
//!   version under its row lock, so two clients can never both take the key. The commit
//!   must be durable: a grant or bump lost in a crash would let the key be granted again
//!   with a token already handed out.
//! * [`RELEASE`], 1 round trip, **does not wait for the WAL flush**: a delete guarded by
//!   the holder's id (a plain delete by key, repeated or late, could remove the next
//!   holder's row), whose transaction sets `synchronous_commit = off` for itself
//!   (`set_config(…, true)`, in the same statement: no extra round trip). A release lost
//!   in a crash leaves the key held until its expiry on the server — no second holder, no
//!   token reused — so waiting for the disk buys nothing; fencelock's release commits the
//!   same way (see `crates/postgres/src/sql.rs`, `LAZY_COMMIT`).
//!
//! Without fencelock's waiter queue (FIFO), abandoned-grant check, release notification,
//! loss signal and renewals: those are what the comparison prices.
//!
//! Parameters: [`ACQUIRE`] takes `$1` key, `$2` holder id, `$3` TTL in milliseconds
//! (`bigint`) and answers one row whose `token` is NULL when the key is held; [`RELEASE`]
//! takes `$1` key and `$2` holder id and answers one row.

/// Creates the schema and tables (idempotent).
pub const SCHEMA: &str = "CREATE SCHEMA IF NOT EXISTS fencelock_raw;
CREATE TABLE IF NOT EXISTS fencelock_raw.locks (key text PRIMARY KEY, holder text NOT NULL, expires_at timestamptz NOT NULL);
CREATE TABLE IF NOT EXISTS fencelock_raw.tokens (key text PRIMARY KEY, token bigint NOT NULL);";

/// Takes the key if free or expired; the new token, or NULL. Commits durably.
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

/// Deletes the key's row if this holder still has it, committing without waiting for the
/// WAL flush.
pub const RELEASE: &str = "WITH gone AS (
    DELETE FROM fencelock_raw.locks WHERE key = $1 AND holder = $2
)
SELECT set_config('synchronous_commit', 'off', true)";
