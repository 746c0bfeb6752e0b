//! The SQL of the backend, with the schema spliced in (a validated plain identifier).
//!
//! Every statement that decides something is one statement, run in its own implicit
//! transaction (only a grant, an extension and a renewal wait for the WAL flush at commit:
//! see [`LAZY_COMMIT`]), and reads the server's clock once: `statement_timestamp()`, the instant
//! the server received the statement. Using that one reading both to judge expiry and to
//! set it keeps a statement consistent with itself; it is never later than the moment the
//! statement acts, so an expiry check can only find a lease still valid a little longer
//! (never free too early), and a new expiry starts after the client sent the request, so
//! the server keeps a grant at least as long as the client believes in it.

/// Commits the statement's transaction without waiting for its WAL flush (for that
/// transaction only; `set_config(…, true)` is transaction-local). Used by the statements
/// that grant nothing — a release, a refused acquire, joining or leaving the waiter
/// queue — so that only a grant (and an extension, a renewal) waits for the disk:
///
/// * a **release** lost in a crash leaves the key held by a grant nobody uses until its
///   expiry on the server: no second holder, no token reused. The grant that follows a
///   release commits durably, and the WAL is flushed in order, so once that grant is on
///   disk the release before it is too;
/// * a **refused acquire** changed only a row lock and its waiter ticket's expiry;
/// * a **ticket** taken, or removed, lost in a crash costs at most the FIFO order of the
///   waiters, whose connections the crash ended anyway (a ticket never taken is never
///   handed a grant). A renewal of a ticket is another matter: a release copies the
///   ticket's expiry into the grant it hands on, and the waiter counts that grant's
///   validity from the renewal it knows of. So the keeper's renewals ([`keep_tickets`])
///   commit durably, and a waiter does not count a look's lazy renewal (see
///   `PgLock::handed`); a lost lazy renewal then costs nothing.
///
/// The release's `NOTIFY` is sent at commit, so the next waiter is woken without waiting
/// for the release's flush: the hand-off has one flush on its path (the grant's) instead
/// of two, and the waiters' own bookkeeping no longer queues its flushes before it.
pub(crate) const LAZY_COMMIT: &str = "set_config('synchronous_commit', 'off', true)";

/// Run first on every connection, in the round trip of its set-up checks: pins what the
/// statements assume of a session, whatever the database's or the role's defaults
/// (`ALTER DATABASE … SET`, `ALTER ROLE … SET`, the server's configuration).
///
/// * **`READ COMMITTED`.** The statements are written for it: an upsert or a hand-off
///   that waited for a row lock acts on the row's latest version. Under a default of
///   `REPEATABLE READ` or `SERIALIZABLE` the contended ones failed with 40001 (could not
///   serialize access): a handing release failed and the key stayed held until its TTL,
///   a waiter lost its hand-off and its place, a look failed during renewals
///   (`tests/faults.rs`, `hand_offs_work_under_a_serializable_default_isolation`).
///   Set for the session, so no statement pays a round trip for it.
/// * **No server-side timeouts**: `statement_timeout`, `lock_timeout`,
///   `idle_session_timeout` (PostgreSQL 14 and later) and `transaction_timeout` (17 and
///   later) are set to 0 for the session. Every statement of ours is bounded by the
///   client's own `timeout` (URL option), which knows what a failure means; the server's
///   would decide for us: an `idle_session_timeout` shorter than the pause between two
///   renewals ended the pooled connections (a `FATAL` error) and every lease on them; a
///   tiny `statement_timeout` cancelled every statement (a new-user trial with
///   `statement_timeout=1` got "unavailable", exit 69, for what is a setting); a small
///   `lock_timeout` failed the contended statements, which wait for a row lock by design;
///   a `transaction_timeout` also ends the session. The settings are read from
///   `pg_settings`, so a server that lacks one (older than the version that added it,
///   where naming it would be an error) is fine. `statement_timeout` goes first, in the
///   same simple-Query message as the rest (one round trip): since PostgreSQL 13 the
///   timeout applies to each statement of such a message separately, so only that first
///   `SET` runs under a role's tiny default, and the statements after it under none.
///   (Before 13 it applied to the whole message: a default below the milliseconds the
///   message takes could still cancel it, which then fails the connect, saying so.)
///
/// Left alone on purpose: `default_transaction_read_only`. A role or database an admin
/// made read-only is a decision we must not override; its first write fails (25006, a
/// configuration error that says so) rather than being let through.
pub(crate) const SESSION_SETUP: &str = "SET statement_timeout TO 0;
SET default_transaction_isolation TO 'read committed';
SELECT set_config(name, '0', false) FROM pg_catalog.pg_settings
 WHERE name IN ('lock_timeout', 'idle_session_timeout', 'transaction_timeout')";

/// `name` as an SQL identifier, double-quoted (an inner `"` doubled): for the SQL the
/// messages advise running, so that it reads back whatever the name is (capitals,
/// spaces, quotes).
pub(crate) fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Guards the schema creation across concurrent first users: `CREATE … IF NOT EXISTS`
/// alone can fail with a unique violation when two sessions create the same table at
/// once, so the DDL runs in one transaction holding this advisory lock.
pub(crate) const DDL_LOCK: i64 = 0x6665_6e63_656c_6b00; // "fencelk\0"

/// The tables [`create`] makes.
pub(crate) const TABLES: [&str; 5] = ["locks", "tokens", "waiters", "abandoned", "fences"];

/// The columns the statements use, per table, with their types as `format_type` names
/// them: what a table of one of our names must have to be taken for ours (see
/// [`check_tables`]). Other columns are left alone.
pub(crate) const COLUMNS: [(&str, &[(&str, &str)]); 5] = [
    (
        "locks",
        &[
            ("key", "text"),
            ("grant_id", "text"),
            ("expires_at", "timestamp with time zone"),
        ],
    ),
    ("tokens", &[("key", "text"), ("token", "bigint")]),
    (
        "waiters",
        &[
            ("ticket", "bigint"),
            ("key", "text"),
            ("expires_at", "timestamp with time zone"),
            ("grant_id", "text"),
        ],
    ),
    ("abandoned", &[("grant_id", "text"), ("at", "timestamp with time zone")]),
    (
        "fences",
        &[("resource", "text"), ("token", "bigint"), ("grant_id", "text")],
    ),
];

/// Columns added to a table after it was first released: a table of ours that lacks one
/// is brought up to date by [`create`] (`ADD COLUMN IF NOT EXISTS`) rather than refused.
pub(crate) const ADDED: [(&str, &str); 1] = [("waiters", "grant_id")];

/// Per table: the one column that must be unique alone (the statements' `ON CONFLICT`
/// target, or the queue's order), and whether it must have a default (the queue's
/// `bigserial` ticket).
pub(crate) const KEYS: [(&str, &str, bool); 5] = [
    ("locks", "key", false),
    ("tokens", "key", false),
    ("waiters", "ticket", true),
    ("abandoned", "grant_id", false),
    ("fences", "resource", false),
];

/// The relations named `$2` (a `text[]`) in schema `$1`, one row per column: `(table,
/// relkind, column, type, NOT NULL, has a default, unique alone, relpersistence)`. One
/// round trip tells which tables exist and whether the statements can use them.
pub(crate) const COLUMNS_FOUND: &str = "SELECT c.relname::text, c.relkind::text, a.attname::text,
       format_type(a.atttypid, a.atttypmod), a.attnotnull, a.atthasdef,
       EXISTS (SELECT 1 FROM pg_catalog.pg_index i
               WHERE i.indrelid = c.oid AND i.indisunique AND i.indnatts = 1
                 AND i.indkey[0] = a.attnum AND i.indpred IS NULL AND i.indexprs IS NULL),
       c.relpersistence::text
FROM pg_catalog.pg_attribute a
JOIN pg_catalog.pg_class c ON c.oid = a.attrelid
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = $1 AND c.relname = ANY($2) AND a.attnum > 0 AND NOT a.attisdropped";

/// What the connected role may do with the relations named `$2` (a `text[]`) in schema
/// `$1`, one row per table found: `(table, the table privileges it lacks of SELECT,
/// INSERT, UPDATE and DELETE (a `text[]`, empty when it has them all), USAGE on the
/// schema, the sequence it owns (the `waiters` ticket's) or NULL, USAGE or UPDATE on that
/// sequence (either lets `nextval` run; `has_sequence_privilege` with a list answers "any
/// of"), current_user)`. `pg_depend` is searched by its index (`refclassid`, `refobjid`):
/// this runs on every new connection. By OID, not by name: a name lookup in a schema
/// without `USAGE` fails before it can say so. See [`missing_grants`].
pub(crate) const PRIVILEGES_FOUND: &str = "SELECT c.relname::text,
       ARRAY(SELECT p FROM unnest(ARRAY['SELECT', 'INSERT', 'UPDATE', 'DELETE']) AS p
             WHERE NOT has_table_privilege(c.oid, p)),
       has_schema_privilege(n.oid, 'USAGE'),
       seq.relname::text, coalesce(has_sequence_privilege(seq.oid, 'USAGE, UPDATE'), true),
       current_user::text
FROM pg_catalog.pg_class c
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
LEFT JOIN LATERAL (
    SELECT s.oid, s.relname FROM pg_catalog.pg_depend d
    JOIN pg_catalog.pg_class s ON s.oid = d.objid AND s.relkind = 'S'
    WHERE d.refclassid = 'pg_catalog.pg_class'::regclass AND d.refobjid = c.oid
      AND d.classid = 'pg_catalog.pg_class'::regclass AND d.deptype IN ('a', 'i')
    LIMIT 1
) seq ON true
WHERE n.nspname = $1 AND c.relname = ANY($2) AND c.relkind IN ('r', 'p')";

/// The table privileges the lock's statements need on each of its tables.
pub(crate) const LOCK_PRIVILEGES: &[&str] = &["SELECT", "INSERT", "UPDATE", "DELETE"];

/// The table privileges [`fence`] needs on `fences`: it reads, inserts and updates the
/// resource's row (`INSERT … ON CONFLICT DO UPDATE`), and never deletes.
pub(crate) const FENCE_PRIVILEGES: &[&str] = &["SELECT", "INSERT", "UPDATE"];

/// The `GRANT` statements the connected role lacks for fencelock's tables in `schema`
/// (rows of [`PRIVILEGES_FOUND`]) to run statements that need the table privileges
/// `needed` ([`LOCK_PRIVILEGES`], [`FENCE_PRIVILEGES`]): empty when it has them all. A
/// table short of any of them gets one `GRANT` of all of `needed`. A missing grant shows
/// up late otherwise — without `USAGE` on the ticket sequence an uncontended lock works
/// and the first waiter that must queue fails (new-user trial); without `INSERT` on
/// `fences` the first fence check fails inside the user's transaction, aborting it.
pub(crate) fn missing_grants(schema: &str, rows: &[tokio_postgres::Row], needed: &[&str]) -> Vec<String> {
    let mut role = String::from("CURRENT_USER");
    let (mut schema_ok, mut tables, mut sequences) = (true, Vec::new(), Vec::new());
    for r in rows {
        let (Ok(table), Ok(lacked), Ok(usage), Ok(seq), Ok(seq_ok), Ok(user)) = (
            r.try_get::<_, String>(0),
            r.try_get::<_, Vec<String>>(1),
            r.try_get::<_, bool>(2),
            r.try_get::<_, Option<String>>(3),
            r.try_get::<_, bool>(4),
            r.try_get::<_, String>(5),
        ) else {
            continue;
        };
        role = user;
        schema_ok &= usage;
        if lacked.iter().any(|p| needed.contains(&p.as_str())) {
            tables.push(format!("{schema}.{table}"));
        }
        if let (Some(seq), false) = (seq, seq_ok) {
            sequences.push(format!("{schema}.{seq}"));
        }
    }
    // A role name is spliced as given by the server; quoted so any name reads back.
    let role = quote_ident(&role);
    let mut grants = Vec::new();
    if !schema_ok {
        grants.push(format!("GRANT USAGE ON SCHEMA {schema} TO {role};"));
    }
    if !tables.is_empty() {
        grants.push(format!(
            "GRANT {} ON {} TO {role};",
            needed.join(", "),
            tables.join(", ")
        ));
    }
    for seq in sequences {
        grants.push(format!("GRANT USAGE ON SEQUENCE {seq} TO {role};"));
    }
    grants
}

/// One row of [`COLUMNS_FOUND`].
#[derive(Debug, Clone)]
struct Found {
    pub table: String,
    pub kind: String,
    pub column: String,
    pub ty: String,
    pub not_null: bool,
    pub has_default: bool,
    pub unique: bool,
    /// `pg_class.relpersistence`: `p` permanent, `u` unlogged, `t` temporary.
    pub persistence: String,
}

impl Found {
    /// Decodes a row of [`COLUMNS_FOUND`]; `None` if it does not decode.
    fn from_row(r: &tokio_postgres::Row) -> Option<Self> {
        Some(Found {
            table: r.try_get(0).ok()?,
            kind: r.try_get(1).ok()?,
            column: r.try_get(2).ok()?,
            ty: r.try_get(3).ok()?,
            not_null: r.try_get(4).ok()?,
            has_default: r.try_get(5).ok()?,
            unique: r.try_get(6).ok()?,
            persistence: r.try_get(7).ok()?,
        })
    }
}

/// Compares the relations in `rows` ([`COLUMNS_FOUND`]) of `tables` in `schema` with what
/// the statements need: a table (not a view), [`COLUMNS`] with their types, [`KEYS`]'
/// column unique alone (and defaulted where it must be), and no other column that an
/// insert of ours would leave NULL (NOT NULL without a default). Returns the tables that
/// are missing (to be created), or why one that exists is not usable — another
/// application's table of that name, a hand-made layout. `way_out` ends the message.
///
/// A table of ours that is `UNLOGGED` is refused too, with the `ALTER TABLE … SET LOGGED`
/// that mends it: PostgreSQL empties an unlogged table in crash recovery and does not
/// replicate it, so after a crash or a failover the counters start again at 1 (tokens
/// repeat), held locks vanish while a paused holder still believes in its lease (a second
/// holder), and an empty `fences` table admits a stale write.
pub(crate) fn check_tables(
    schema: &str,
    tables: &[&'static str],
    rows: &[tokio_postgres::Row],
    way_out: &str,
) -> std::result::Result<Vec<&'static str>, String> {
    let found: Vec<Found> = rows.iter().filter_map(Found::from_row).collect();
    let mut missing = Vec::new();
    let mut unlogged = Vec::new();
    for &table in tables {
        let Some((_, columns)) = COLUMNS.iter().find(|(t, _)| *t == table) else {
            continue;
        };
        let mine: Vec<&Found> = found.iter().filter(|f| f.table == table).collect();
        let Some(first) = mine.first() else {
            missing.push(table);
            continue;
        };
        let problem = table_problem(table, &first.kind, columns, &mine);
        if let Some(problem) = problem {
            return Err(format!(
                "table `{schema}.{table}` is not fencelock's: {problem}; {way_out}"
            ));
        }
        let outdated = ADDED
            .iter()
            .any(|(t, column)| *t == table && !mine.iter().any(|f| f.column == *column));
        if outdated {
            missing.push(table); // `create` adds the column
        }
        if first.persistence == "u" {
            unlogged.push(set_logged(schema, table));
        }
    }
    if !unlogged.is_empty() {
        return Err(unlogged_refusal(&unlogged));
    }
    Ok(missing)
}

/// The statement that makes `schema.table` logged, both names quoted.
pub(crate) fn set_logged(schema: &str, table: &str) -> String {
    format!("ALTER TABLE {}.{} SET LOGGED;", quote_ident(schema), quote_ident(table))
}

/// Why UNLOGGED tables are refused, and the statements (`set_logged`) that mend them.
pub(crate) fn unlogged_refusal(statements: &[String]) -> String {
    format!(
        "fencelock's tables must not be UNLOGGED: PostgreSQL empties an unlogged table in crash \
         recovery and does not replicate it (tokens would start again at 1, held locks, leaders and \
         fences would vanish); run as the tables' owner: {}",
        statements.join(" ")
    )
}

/// The columns of [`ADDED`] that the found tables of ours (`rows`, [`COLUMNS_FOUND`])
/// lack, as the `ALTER TABLE` statements that add them: what a role that may not alter
/// the tables must ask their owner to run.
pub(crate) fn missing_added_columns(schema: &str, rows: &[tokio_postgres::Row]) -> Vec<String> {
    let found: Vec<Found> = rows.iter().filter_map(Found::from_row).collect();
    ADDED
        .iter()
        .filter(|(table, column)| {
            found.iter().any(|f| f.table == *table) && !found.iter().any(|f| f.table == *table && f.column == *column)
        })
        .map(|(table, column)| {
            let ty = COLUMNS
                .iter()
                .find(|(t, _)| t == table)
                .and_then(|(_, cols)| cols.iter().find(|(c, _)| c == column))
                .map_or("text", |(_, ty)| ty);
            format!("ALTER TABLE {schema}.{table} ADD COLUMN IF NOT EXISTS {column} {ty};")
        })
        .collect()
}

/// What makes one found relation unusable, if anything (see [`check_tables`]).
fn table_problem(table: &str, kind: &str, columns: &[(&str, &str)], mine: &[&Found]) -> Option<String> {
    if kind != "r" && kind != "p" {
        let what = match kind {
            "v" => "a view",
            "m" => "a materialized view",
            "f" => "a foreign table",
            _ => "not an ordinary table",
        };
        return Some(format!("it is {what}, not a table"));
    }
    for (column, wanted) in columns.iter() {
        match mine.iter().find(|f| f.column == *column) {
            None if ADDED.contains(&(table, *column)) => {}
            None => return Some(format!("column `{column}` ({wanted}) is missing")),
            Some(f) if f.ty != *wanted => {
                return Some(format!("column `{column}` is {}, fencelock needs {wanted}", f.ty))
            }
            Some(_) => {}
        }
    }
    if let Some((_, key, defaulted)) = KEYS.iter().find(|(t, _, _)| *t == table) {
        let f = mine.iter().find(|f| f.column == *key)?;
        if !f.unique {
            return Some(format!(
                "column `{key}` is not unique alone (fencelock makes it the primary key)"
            ));
        }
        if *defaulted && !f.has_default {
            return Some(format!(
                "column `{key}` has no default (fencelock makes it a bigserial)"
            ));
        }
    }
    let ours = |c: &str| columns.iter().any(|(name, _)| *name == c);
    if let Some(f) = mine.iter().find(|f| !ours(&f.column) && f.not_null && !f.has_default) {
        return Some(format!(
            "column `{}` is NOT NULL without a default, and fencelock's inserts do not set it",
            f.column
        ));
    }
    None
}

/// The SQL that creates the backend's tables in `schema`, for teams that manage schemas
/// themselves (a migration tool, a DBA): exactly what a client runs on connecting when a
/// table is missing. Idempotent (`IF NOT EXISTS`) and safe to run from many sessions at
/// once (one transaction under a transaction-scoped advisory lock). The role the
/// clients then use needs `USAGE` on the schema, `SELECT, INSERT, UPDATE, DELETE` on the
/// tables and `USAGE` on the `waiters` sequence; no `CREATE`.
///
/// ```
/// let sql = fencelock_postgres::schema_sql("fencelock").unwrap();
/// assert!(sql.contains("CREATE TABLE IF NOT EXISTS fencelock.tokens"));
/// assert!(fencelock_postgres::schema_sql("Robert'); DROP TABLE x;--").is_err());
/// ```
///
/// # Errors
///
/// [`LockError::InvalidConfig`](fencelock_core::LockError::InvalidConfig) when `schema`
/// is not a plain identifier (1 to 40 lowercase letters, digits and `_`).
pub fn schema_sql(schema: &str) -> fencelock_core::Result<String> {
    crate::config::check_identifier(schema)
        .map_err(|why| fencelock_core::LockError::invalid_config(format!("schema: {why}")))?;
    Ok(create(schema))
}

/// The tables, created idempotently in one transaction (one round trip, simple protocol).
pub(crate) fn create(schema: &str) -> String {
    format!(
        "BEGIN;
SELECT pg_advisory_xact_lock({DDL_LOCK});
CREATE SCHEMA IF NOT EXISTS {schema};
CREATE TABLE IF NOT EXISTS {schema}.locks (
    key text PRIMARY KEY,
    grant_id text NOT NULL,
    expires_at timestamptz NOT NULL
);
CREATE TABLE IF NOT EXISTS {schema}.tokens (
    key text PRIMARY KEY,
    token bigint NOT NULL
);
CREATE TABLE IF NOT EXISTS {schema}.waiters (
    ticket bigserial PRIMARY KEY,
    key text NOT NULL,
    expires_at timestamptz NOT NULL,
    grant_id text
);
ALTER TABLE {schema}.waiters ADD COLUMN IF NOT EXISTS grant_id text;
CREATE INDEX IF NOT EXISTS waiters_by_key ON {schema}.waiters (key, ticket);
CREATE TABLE IF NOT EXISTS {schema}.abandoned (
    grant_id text PRIMARY KEY,
    at timestamptz NOT NULL
);
CREATE TABLE IF NOT EXISTS {schema}.fences (
    resource text PRIMARY KEY,
    token bigint NOT NULL,
    grant_id text NOT NULL
);
COMMIT;"
    )
}

/// Which acquire statement: the three share their grant path and differ in what they do
/// with the waiter queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AcquireKind {
    /// `try_acquire`: refused, it leaves the queue alone (the uncontended path).
    Try,
    /// A wait's first attempt: refused, it takes a ticket in the key's queue in the same
    /// statement, carrying the grant id a release hands the key to (see [`release_handing`]) —
    /// unless the grant id was abandoned (the attempt arrived late, after its client gave
    /// up: nobody would ever renew or remove that ticket). `$4`: how long the ticket
    /// lives (ms).
    Queue,
    /// A queued wait's look again: `$4` our ticket, `$5` how long it lives from now when
    /// we are refused (ms). Also finds the key already handed to our grant id by a
    /// release whose notification we did not see. Our ticket is the row with that number
    /// **and** our grant id (`$2`): a number can be issued twice — the ticket's insert and
    /// the sequence's advance commit lazily, and a server crash can forget both — and a
    /// look must never renew, remove or take for its own another wait's ticket.
    Ticket,
}

/// Acquire: `$1` key, `$2` grant id, `$3` TTL in ms, and per [`AcquireKind`] `$4`, `$5`.
/// A grant id the client has abandoned (see [`abandon_mark`]) is never granted, and a
/// free key goes to the oldest live ticket first: a client without a ticket, or with a
/// younger one, is refused while an older ticket of the key lives (FIFO; a ticket lives
/// as long as its waiter's instance keeps it alive, see [`keep_tickets`]).
/// Takes the row when it is free or expired (the upsert's `WHERE` is evaluated on the
/// latest row version, under its row lock), bumps the key's counter only when it took it,
/// and drops our waiter ticket only then. Returns, in this order:
///
/// 0. the token (NULL when not granted);
/// 1. when refused, the holder's remaining ms by the server's clock (NULL when unknown);
/// 2. with [`AcquireKind::Ticket`], when refused, the remaining ms of the oldest older
///    live ticket of the key (NULL: ours is the oldest);
/// 3. when refused: our ticket, alive and renewed to `$4`/`$5` ms from this statement's
///    start — the new one ([`AcquireKind::Queue`]), or ours when it still existed
///    ([`AcquireKind::Ticket`]; NULL: it is gone, handed the key or removed);
/// 4. with [`AcquireKind::Ticket`]: when a release already handed the key to our grant
///    id, the remaining ms of that grant by the server's clock, rounded down (the token
///    in column 0);
/// 5. the lazy commit's `set_config` (ignored).
pub(crate) fn acquire(schema: &str, kind: AcquireKind) -> String {
    // The holder's remaining TTL is computed only when refused: measured in a server-side
    // loop (3,000 acquire + release cycles), computing it on every grant cost about 50 µs
    // a cycle, a sixth of the whole cycle.
    //
    // `try_acquire` leaves the waiter queue alone: no DELETE/UPDATE nodes to set up (the
    // bench did not show the saving above its noise; see docs/backends/postgres.md,
    // "Measured"). The queue's data-modifying CTEs are gated on `taken` (a one-time
    // filter), so a granted wait does not scan the queue.
    let refused = "tk.token IS NULL";
    let (older, queue_ctes, head_ms, ticket, handed_ms, handed_join) = match kind {
        AcquireKind::Try => (
            "",
            String::new(),
            "NULL::bigint".to_owned(),
            "NULL::bigint",
            "NULL::bigint",
            String::new(),
        ),
        AcquireKind::Queue => (
            "",
            format!(
                ", swept AS (
    DELETE FROM {schema}.waiters
    WHERE key = $1::text AND expires_at < statement_timestamp() - interval '1 minute'
      AND NOT EXISTS (SELECT 1 FROM taken)
), queued AS (
    INSERT INTO {schema}.waiters (key, grant_id, expires_at)
    SELECT $1::text, $2::text, statement_timestamp() + $4::bigint * interval '1 millisecond'
    WHERE NOT EXISTS (SELECT 1 FROM taken)
      AND NOT EXISTS (SELECT 1 FROM {schema}.abandoned a WHERE a.grant_id = $2::text)
    RETURNING ticket
)"
            ),
            "NULL::bigint".to_owned(),
            "(SELECT ticket FROM queued)",
            "NULL::bigint",
            String::new(),
        ),
        AcquireKind::Ticket => (
            "AND w.ticket < $4::bigint",
            format!(
                ", dequeued AS (
    DELETE FROM {schema}.waiters
    WHERE ticket = $4::bigint AND grant_id = $2::text AND EXISTS (SELECT 1 FROM taken)
), kept AS (
    UPDATE {schema}.waiters
    SET expires_at = greatest(expires_at, statement_timestamp() + $5::bigint * interval '1 millisecond')
    WHERE ticket = $4::bigint AND grant_id = $2::text AND NOT EXISTS (SELECT 1 FROM taken)
    RETURNING ticket
)"
            ),
            // Also answers how long the oldest older live ticket of the key lives on: until
            // then a waiter behind it cannot be granted, and when a waiter dies that is
            // when the next one must look again.
            format!(
                "CASE WHEN {refused} AND h.token IS NULL THEN
           (SELECT ceil(extract(epoch FROM w.expires_at - statement_timestamp()) * 1000)::bigint
              FROM {schema}.waiters w
             WHERE w.key = $1::text AND w.ticket < $4::bigint AND w.expires_at > statement_timestamp()
             ORDER BY w.ticket LIMIT 1)
       END"
            ),
            "(SELECT ticket FROM kept)",
            "h.ms",
            // A release hands the key to our grant id (see `release`): normally we learn it
            // from its notification; this finds it when that was missed. Its remaining ms
            // are rounded down (the waiter counts them from its send instant: rounded up,
            // it believed in the grant up to a millisecond past the server's end).
            format!(
                "
LEFT JOIN LATERAL (
    SELECT t.token, floor(extract(epoch FROM l.expires_at - statement_timestamp()) * 1000)::bigint AS ms
      FROM {schema}.locks l JOIN {schema}.tokens t ON t.key = l.key
     WHERE l.key = $1::text AND l.grant_id = $2::text AND l.expires_at > statement_timestamp()
) h ON {refused}"
            ),
        ),
    };
    let (token, not_handed) = if kind == AcquireKind::Ticket {
        ("COALESCE(tk.token, h.token)", " AND h.token IS NULL")
    } else {
        ("tk.token", "")
    };
    format!(
        "WITH taken AS (
    INSERT INTO {schema}.locks AS l (key, grant_id, expires_at)
    SELECT $1::text, $2::text, statement_timestamp() + $3::bigint * interval '1 millisecond'
    WHERE NOT EXISTS (SELECT 1 FROM {schema}.abandoned a WHERE a.grant_id = $2::text)
      AND NOT EXISTS (
        SELECT 1 FROM {schema}.waiters w
        WHERE w.key = $1::text AND w.expires_at > statement_timestamp() {older})
    ON CONFLICT (key) DO UPDATE SET grant_id = excluded.grant_id, expires_at = excluded.expires_at
        WHERE l.expires_at <= statement_timestamp() AND l.grant_id <> excluded.grant_id
    RETURNING l.key
), bumped AS (
    INSERT INTO {schema}.tokens AS t (key, token) SELECT key, 1 FROM taken
    ON CONFLICT (key) DO UPDATE SET token = t.token + 1
    RETURNING t.token
){queue_ctes}
SELECT {token} AS token,
       CASE WHEN {refused}{not_handed} THEN
           (SELECT ceil(extract(epoch FROM hl.expires_at - statement_timestamp()) * 1000)::bigint
              FROM {schema}.locks hl WHERE hl.key = $1::text)
       END AS holder_ms,
       {head_ms} AS head_ms,
       {ticket} AS ticket,
       {handed_ms} AS handed_ms,
       CASE WHEN {refused} THEN {LAZY_COMMIT} END AS lazy
FROM (SELECT (SELECT token FROM bumped) AS token) tk{handed_join}"
    )
}

/// The plain release: `$1` key, `$2` grant id. Deletes our row only, and then — only
/// when someone waits — notifies the release channel naming the oldest live waiter ticket
/// of the key: `TICKET:KEY` (that waiter looks again with an acquire). Returns how many
/// rows were deleted (1 when ours was) and how many notifications were sent. Commits
/// lazily (see [`LAZY_COMMIT`]).
///
/// Used for a lease granted at once, without waiting: most such keys have no waiter, and
/// this statement costs the server about 45 µs less than [`release_handing`] (measured
/// with pgbench, prepared, one client: 57 against 102–107 µs; the hand-off's data-modifying
/// steps are set up on every execution, waiters or not). A lease granted after waiting —
/// a contended key — is released by [`release_handing`].
///
/// Without waiters there is no `NOTIFY`: it would serialise the commit on the server's
/// notification queue and wake every listener for nothing. A waiter that has not taken
/// its ticket yet re-checks right after taking it, so it misses nothing.
pub(crate) fn release(schema: &str, channel: &str) -> String {
    notifying_next(
        schema,
        channel,
        &format!("DELETE FROM {schema}.locks WHERE key = $1::text AND grant_id = $2::text RETURNING key"),
    )
}

/// The release a leave of the waiter queue sends (see `PgNode::leave_later`): as
/// [`release`], but only a **live** row of ours — a key handed to the leaving wait's
/// grant id — is deleted. An expired row with that grant id is the placeholder an
/// abandon of the same grant left so that a late acquire of it finds its own grant id
/// and is refused (see [`abandon_release`]); deleting it reopened that window. Never the
/// handing release either: with no waiter to hand to, it deletes the row.
pub(crate) fn leave_release(schema: &str, channel: &str) -> String {
    notifying_next(
        schema,
        channel,
        &format!(
            "DELETE FROM {schema}.locks
    WHERE key = $1::text AND grant_id = $2::text AND expires_at > statement_timestamp() RETURNING key"
        ),
    )
}

/// `ours` (a statement answering the key when it acted on our row of it — a delete, or
/// a read), then — only when it did and someone waits — the notification naming the
/// oldest live waiter ticket of the key, `TICKET:KEY`. Answers `released` (how many rows
/// `ours` answered), `notified`, and the lazy commit's `set_config` (a release, a leave
/// and an abandon's last step grant nothing).
fn notifying_next(schema: &str, channel: &str, ours: &str) -> String {
    format!(
        "WITH gone AS (
    {ours}
), next AS (
    SELECT min(ticket) AS ticket FROM {schema}.waiters
    WHERE key = $1::text AND expires_at > statement_timestamp()
), notified AS (
    SELECT pg_notify('{channel}', next.ticket::text || ':' || gone.key) FROM gone, next
    WHERE next.ticket IS NOT NULL
)
SELECT (SELECT count(*) FROM gone) AS released, (SELECT count(*) FROM notified) AS notified,
       {LAZY_COMMIT} AS lazy"
    )
}

/// The handing release: `$1` key, `$2` grant id. Acts only when the key's row is ours
/// (expired or not), and then **hands the key to the oldest live waiter ticket** of the
/// key in the same statement — the row gets that ticket's grant id, the counter is bumped for it,
/// the ticket is removed — and notifies the release channel with `TICKET/TOKEN/GRANT:KEY`,
/// so the waiter is granted by the notification alone, without a statement of its own on
/// the hand-off's path. The grant id is what makes the notification the waiter's: it
/// takes the hand-off only when the ticket, the grant id and the key are its own (see
/// `waiters::Waiters::dispatch`; a ticket number alone is guessable, and can be issued
/// twice after a crash). The payload stays far below `NOTIFY`'s 8,000 bytes: two
/// numbers, a grant id (32 characters; a foreign one longer than 64 bytes is not handed
/// the key) and a key of at most 256 bytes. With no live ticket it deletes the row (no `NOTIFY`: it would
/// serialise the commit on the server's notification queue and wake every listener for
/// nothing). A head ticket that cannot be handed the key — taken by a client that put
/// no grant id in it, or whose grant id was abandoned — gets the row deleted and a
/// `TICKET:KEY` notification: that waiter looks again with an acquire.
///
/// The handed grant expires with the ticket it came from: the ticket's `expires_at`,
/// which its waiter keeps alive (see [`keep_tickets`]) and knows a lower bound of on its
/// own clock (the send instant of its last renewal found alive, plus the renewal's life).
/// That bound counts only a durable renewal ([`keep_tickets`]) or the ticket's creation,
/// never a look's lazy one: a crash can lose that, and the ticket on disk — the handed
/// grant's expiry — then ends earlier than the waiter believes.
/// A waiter that died while queued therefore holds the key no longer than its ticket
/// would have blocked the queue; a live one lengthens it to its TTL by its first renewal.
///
/// Returns how many rows were released or handed on (1 when ours was) and how many
/// notifications were sent. Commits lazily unless it handed the key on (a grant: see
/// [`LAZY_COMMIT`]).
///
/// A waiter that is refused and takes its ticket while this statement runs can be
/// missed by it (its snapshot is older); that waiter's re-check right after taking its
/// ticket sees the row deleted and takes the key.
pub(crate) fn release_handing(schema: &str, channel: &str) -> String {
    // Lock order: `mine` locks the key's row before `head` locks the ticket, as every
    // statement that locks rows of both does (an acquire locks the row by its upsert, then
    // its ticket). Locking the ticket first deadlocked with a waiter's look again holding
    // the row (`tests/waiting.rs`, a_handing_release_and_a_look_again_do_not_deadlock):
    // PostgreSQL broke it after `deadlock_timeout` (1 s) by aborting one of them.
    format!(
        "WITH mine AS (
    SELECT key FROM {schema}.locks WHERE key = $1::text AND grant_id = $2::text FOR UPDATE
), head AS (
    SELECT w.ticket, w.grant_id, w.expires_at FROM {schema}.waiters w
    WHERE w.key = $1::text AND w.expires_at > statement_timestamp() AND EXISTS (SELECT 1 FROM mine)
    ORDER BY w.ticket LIMIT 1
    FOR UPDATE OF w
), heir AS (
    SELECT h.ticket, h.grant_id, h.expires_at FROM head h
    WHERE h.grant_id IS NOT NULL AND octet_length(h.grant_id) <= 64
      AND NOT EXISTS (SELECT 1 FROM {schema}.abandoned a WHERE a.grant_id = h.grant_id)
), handed AS (
    UPDATE {schema}.locks l SET grant_id = heir.grant_id, expires_at = heir.expires_at
    FROM heir WHERE l.key = $1::text AND l.grant_id = $2::text
    RETURNING heir.ticket, heir.grant_id
), bumped AS (
    INSERT INTO {schema}.tokens AS t (key, token) SELECT $1::text, 1 FROM handed
    ON CONFLICT (key) DO UPDATE SET token = t.token + 1
    RETURNING t.token
), dequeued AS (
    DELETE FROM {schema}.waiters w USING handed h WHERE w.ticket = h.ticket
), gone AS (
    DELETE FROM {schema}.locks
    WHERE key = $1::text AND grant_id = $2::text AND NOT EXISTS (SELECT 1 FROM handed)
    RETURNING key
), notified AS (
    SELECT pg_notify('{channel}', h.ticket::text || '/' || b.token::text || '/' || h.grant_id || ':' || $1::text)
      FROM handed h, bumped b
    UNION ALL
    SELECT pg_notify('{channel}', h.ticket::text || ':' || $1::text)
      FROM head h WHERE EXISTS (SELECT 1 FROM gone)
)
SELECT (SELECT count(*) FROM handed) + (SELECT count(*) FROM gone) AS released,
       (SELECT count(*) FROM notified) AS notified,
       CASE WHEN NOT EXISTS (SELECT 1 FROM handed) THEN {LAZY_COMMIT} END AS lazy"
    )
}
/// Extend: `$1` key, `$2` grant id, `$3` TTL in ms. Only our row, only while unexpired.
pub(crate) fn extend(schema: &str) -> String {
    format!(
        "UPDATE {schema}.locks SET expires_at = statement_timestamp() + $3::bigint * interval '1 millisecond'
WHERE key = $1 AND grant_id = $2 AND expires_at > statement_timestamp()"
    )
}

/// Batched renewal: `$1` keys, `$2` grant ids, `$3` TTLs in ms (arrays of one length).
/// Returns the grant ids it renewed.
///
/// A renewal never shortens a grant (`greatest`): it waits in the batcher (up to
/// `renew_window`, a tenth of its TTL at most) after the lease recorded its request
/// instant. An extend to a minute asked during that wait used to go out at once, and the
/// renewal landing after it set `now + TTL`, ending the key on the server some 58 s before
/// its holder stopped believing in it; another client was granted it (conformance
/// `renewal_never_undoes_a_later_extend`). The core `Lease` now sends one request of a
/// lease at a time — an explicit [`extend`] waits for the renewal in flight, then goes out
/// at once, not held for a window — so a lease's own renewal no longer lands after its
/// extend; `greatest` stays for a renewal the lease gave up on with an error, which may
/// still land later. Keeping the later of the two ends is safe: the lease never believes
/// more than the request it asked last, and a user's shorter extend (`now + ttl`, sent
/// after the renewal in flight was answered) shortens the grant and the holder's belief
/// alike.
///
/// The expiry is compared with `(SELECT statement_timestamp())` — the same instant, but
/// one the planner cannot read while planning. `expires_at` only moves forward, so a TTL
/// after each `ANALYZE` its statistics lie wholly in the past; a custom plan (planned
/// with the parameters' values: a prepared statement's first five executions, and later
/// ones whenever its generic plan does not look cheaper than the custom plans so far —
/// renewals planned while the table was small make them look cheap —, and every one
/// under `plan_cache_mode = force_custom_plan`) that reads the statement's time then expects
/// `expires_at > now` to keep one row, and scans the whole table in a nested loop against
/// the batch: 10,000 rows × 500 leases, 1.6 s of CPU for one statement (2.5 s with the
/// bench's four connections on 2 cores — the connection was cut for it). With the
/// instant hidden the planner assumes a third of the rows, and joins by hash or by the key's
/// index: milliseconds (`tests/scale.rs`
/// `renewals_stay_cheap_when_the_statistics_say_every_lease_expired`).
pub(crate) fn renew_many(schema: &str) -> String {
    format!(
        "UPDATE {schema}.locks l
SET expires_at = greatest(l.expires_at, statement_timestamp() + b.ttl_ms * interval '1 millisecond')
FROM unnest($1::text[], $2::text[], $3::bigint[]) AS b(key, grant_id, ttl_ms)
WHERE l.key = b.key AND l.grant_id = b.grant_id AND l.expires_at > (SELECT statement_timestamp())
RETURNING l.grant_id"
    )
}

/// Keeps the tickets of one client instance alive: `$1` tickets, `$2` the grant ids they
/// carry (a `text[]` of the same length), `$3` how long they live from now (ms). One
/// statement per fallback poll for all waiters of the instance, so a waiter behind others
/// need not attempt just to keep its place. A ticket is matched by its number and grant id
/// alike: a number issued twice (see [`AcquireKind::Ticket`]) is another wait's, maybe
/// another instance's, and is not ours to keep alive. Returns the tickets it found and
/// their grant ids (a `bigint[]` and a `text[]`, in the same order): each now lives at
/// least `$3` ms past the statement's send instant, the bound a waiter handed the key
/// counts its validity from (see [`release_handing`]).
///
/// A ticket's expiry never moves back (`greatest`), here nor in [`acquire`]'s renewal:
/// a statement that waited for a row lock sets the expiry from its own start, which can
/// be earlier than that of a renewal sent after it and committed first, and the waiter
/// keeps the newest send instant as its bound; a shorter write would end a grant handed
/// to the ticket before the waiter stops believing in it.
///
/// Commits **durably** (one WAL flush per keeper pass, for all the instance's tickets):
/// the waiter counts a handed grant's validity from this renewal, and a release copies the
/// ticket's expiry on disk into the grant it hands on. Committed lazily, a crash that lost
/// the renewal left the handed grant ending before the waiter stopped believing in it
/// (`tests/waiting.rs`, `a_handed_grant_is_not_believed_valid_past_a_lost_lazy_ticket_renewal`).
pub(crate) fn keep_tickets(schema: &str) -> String {
    format!(
        "WITH kept AS (
    UPDATE {schema}.waiters w
    SET expires_at = greatest(w.expires_at, statement_timestamp() + $3::bigint * interval '1 millisecond')
    FROM unnest($1::bigint[], $2::text[]) AS b(ticket, grant_id)
    WHERE w.ticket = b.ticket AND w.grant_id = b.grant_id
    RETURNING w.ticket, w.grant_id
)
SELECT COALESCE(k.tickets, '{{}}') AS kept, COALESCE(k.grants, '{{}}') AS grants
FROM (SELECT array_agg(ticket) AS tickets, array_agg(grant_id) AS grants FROM kept) k"
    )
}

/// Leaves the queue: `$1` ticket, `$2` the grant id it carries (a number issued twice is
/// another wait's: see [`AcquireKind::Ticket`]). When ours was the key's oldest live
/// ticket and the key has no live holder, also notifies the next live ticket of the key,
/// `TICKET:KEY`, as the plain release does: a plain release names the head ticket, and a
/// head waiter whose wait ended just then (timed out, cancelled) leaves without acting on
/// it — the next waiter, never named, waited with the key free until the departed
/// ticket's known expiry (up to `2 × poll + 1 s`) or its `4 × poll` net. No `NOTIFY` when
/// nothing waits behind us, an older ticket lives (the release named that one), or the
/// key is held (its release names the next). Returns how many notifications were sent.
/// Commits lazily (see [`LAZY_COMMIT`]).
///
/// A release and a leave that run at the same instant, each before the other commits,
/// can still both miss the next waiter (neither sees the other's change); that waiter
/// then looks again at the old bound.
pub(crate) fn dequeue(schema: &str, channel: &str) -> String {
    format!(
        "WITH gone AS (
    DELETE FROM {schema}.waiters WHERE ticket = $1 AND grant_id = $2 RETURNING key, ticket
), next AS (
    SELECT g.key,
           (SELECT min(w.ticket) FROM {schema}.waiters w
             WHERE w.key = g.key AND w.ticket > g.ticket AND w.expires_at > statement_timestamp()) AS ticket
      FROM gone g
     WHERE NOT EXISTS (
             SELECT 1 FROM {schema}.waiters o
              WHERE o.key = g.key AND o.ticket < g.ticket AND o.expires_at > statement_timestamp())
       AND NOT EXISTS (
             SELECT 1 FROM {schema}.locks l WHERE l.key = g.key AND l.expires_at > statement_timestamp())
), notified AS (
    SELECT pg_notify('{channel}', n.ticket::text || ':' || n.key) FROM next n WHERE n.ticket IS NOT NULL
)
SELECT (SELECT count(*) FROM notified) AS notified, {LAZY_COMMIT} AS lazy"
    )
}

/// The fence check inside the user's transaction: `$1` resource, `$2` token, `$3` grant
/// id. Records the fence when it is higher than the resource's, or equal from the same
/// grant, and refuses it otherwise — atomically, holding the fence row's lock until the
/// user's transaction ends, so a concurrent writer of the same resource waits and then
/// sees this fence. Returns whether it was admitted and the fence it replaced.
pub(crate) fn fence(schema: &str) -> String {
    format!(
        "WITH prior AS (
    SELECT token, grant_id FROM {schema}.fences WHERE resource = $1
), admitted AS (
    INSERT INTO {schema}.fences AS f (resource, token, grant_id) VALUES ($1, $2, $3)
    ON CONFLICT (resource) DO UPDATE SET token = excluded.token, grant_id = excluded.grant_id
        WHERE f.token < excluded.token OR (f.token = excluded.token AND f.grant_id = excluded.grant_id)
    RETURNING f.token
)
SELECT (SELECT count(*) FROM admitted) AS admitted,
       (SELECT token FROM prior) AS prior_token,
       (SELECT grant_id FROM prior) AS prior_grant"
    )
}

/// The fence recorded for `$1` resource.
pub(crate) fn fence_current(schema: &str) -> String {
    format!("SELECT token, grant_id FROM {schema}.fences WHERE resource = $1")
}

/// The fence table alone, for the user's database when it is not the lock database.
pub(crate) fn create_fences(schema: &str) -> String {
    format!(
        "BEGIN;
SELECT pg_advisory_xact_lock({DDL_LOCK});
CREATE SCHEMA IF NOT EXISTS {schema};
CREATE TABLE IF NOT EXISTS {schema}.fences (
    resource text PRIMARY KEY,
    token bigint NOT NULL,
    grant_id text NOT NULL
);
COMMIT;"
    )
}

/// Abandoning a grant whose outcome is unknown (its answer was lost, its caller dropped
/// the acquire): three statements, run in order, each after the previous committed, so
/// that the acquire — which may still reach the server later, e.g. held by a partition —
/// can never leave a grant behind:
///
/// 1. record the grant id as abandoned: every acquire whose snapshot is taken after this
///    commits refuses that grant id;
/// 2. expire the key's row if it is ours, or put an expired placeholder with our grant id
///    in its place when the row is missing or expired: this upsert waits for an acquire
///    of the key still in flight and then sees its row, and an acquire that reaches the
///    key after it finds our own grant id there and refuses (`grant_id <> excluded…`);
///    and remove the key's waiter tickets that carry our grant id (see [`abandon_expire`]);
/// 3. notify the key's next waiter, leaving our expired row or placeholder in place (see
///    [`abandon_release`]).
///
/// Step 1 also sweeps abandoned ids older than the longest TTL (a day), and the expired
/// rows of those ids that step 3 left: no acquire sent that long ago can still arrive and
/// matter.
pub(crate) fn abandon_mark(schema: &str) -> String {
    format!(
        "WITH swept AS (
    DELETE FROM {schema}.abandoned WHERE at < statement_timestamp() - interval '1 day 1 minute'
    RETURNING grant_id
), placeholders AS (
    DELETE FROM {schema}.locks l USING swept s
    WHERE l.grant_id = s.grant_id AND l.expires_at <= statement_timestamp()
)
INSERT INTO {schema}.abandoned (grant_id, at) VALUES ($1, statement_timestamp())
ON CONFLICT (grant_id) DO NOTHING"
    )
}

/// Step 3 of abandoning: `$1` key, `$2` grant id. When the key's row is ours (expired by
/// step 2, or our placeholder), notifies the release channel naming the oldest live waiter
/// ticket of the key, `TICKET:KEY` (that waiter looks again with an acquire and takes the
/// expired row) — and leaves the row in place. Returns, as [`release`], 1 when the row was
/// ours and how many notifications were sent. Commits lazily (see [`LAZY_COMMIT`]).
///
/// Deleting the row, as a release does, let a late acquire of the grant id through: one
/// whose snapshot predates step 1 (it does not see the id abandoned), sent on another
/// connection and held on the server by an insert of the key in progress, reaches the
/// placeholder while this step's delete holds it, and once the delete commits it tries
/// its insert again and finds no row — granted to a grant id nobody holds, the key
/// blocked for a TTL (`node.rs` test
/// `an_acquire_held_up_across_its_abandon_is_not_left_granted`: 1 round in 5 to 15). The
/// expired row is free for every other acquire (`expires_at <= now`) and refuses ours
/// (`grant_id <> excluded.grant_id`); it is taken by the key's next acquire, or swept
/// with its abandoned id by a later abandon once a day old ([`abandon_mark`]). The key is not handed to the
/// waiter (as [`release_handing`] would): a hand-off rewrites the row, and a missing heir
/// would have it deleted; the waiter's own acquire takes it.
pub(crate) fn abandon_release(schema: &str, channel: &str) -> String {
    notifying_next(
        schema,
        channel,
        &format!("SELECT key FROM {schema}.locks WHERE key = $1::text AND grant_id = $2::text"),
    )
}

/// Step 2 of abandoning: `$1` key, `$2` grant id. Also removes the key's waiter tickets
/// that carry the grant id: a wait's first attempt takes its ticket in the acquire
/// statement, so an attempt whose answer was lost (or whose future was dropped) left a
/// ticket its client never learnt; alive, it headed the queue for its whole life, and a
/// release skipped it (its grant id abandoned) without handing the key to the waiter
/// behind. The abandon sent right behind the attempt on its connection (`abandon_now`)
/// runs after it, so this sees its ticket.
pub(crate) fn abandon_expire(schema: &str) -> String {
    format!(
        "WITH left_queue AS (
    DELETE FROM {schema}.waiters WHERE key = $1 AND grant_id = $2
)
INSERT INTO {schema}.locks AS l (key, grant_id, expires_at) VALUES ($1, $2, 'epoch')
ON CONFLICT (key) DO UPDATE SET grant_id = excluded.grant_id, expires_at = excluded.expires_at
    WHERE l.grant_id = excluded.grant_id OR l.expires_at <= statement_timestamp()"
    )
}
