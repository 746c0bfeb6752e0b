//! Leader election on PostgreSQL ([`PgElection`]).
//!
//! The seat of election `NAME` is the lock on key `election.NAME` (its row in `locks`, the
//! term its token from `tokens`), and the leader's value lives in a table `leaders` (key,
//! grant id, term, value) beside it. A proclaim writes that row in one statement only if
//! the `locks` row holds our grant id and has not expired on the server's clock, with the
//! `locks` row locked `FOR SHARE` so a new grant cannot commit in between — the grant is
//! compared, never merely "a row exists". `leader` reads both tables in one statement.
//! The campaign, `leader` and the rest are the shared seat glue of
//! `fencelock_core::election::seat`.
//!
//! Observers are pushed by `LISTEN/NOTIFY` on a channel per election,
//! `fencelock_e_<md5 of SCHEMA.election.NAME>`: the proclaim statement notifies it (a
//! campaign's first value and every proclaim), and so do triggers on the deletion of a
//! seat's `locks` row (resign, a dropped leadership) and on its change of grant id (a
//! release that handed the seat to a queued candidate, which deletes nothing, or a grant
//! over an expired row); they fire for `election.*` keys only, so other locks pay nothing. Each observer listens on a connection of its
//! own and re-reads on each notification; an expiry, which deletes nothing, is seen by a
//! re-read at the holder's `expires_at` (the server's clock).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use fencelock_core::election::seat::{SeatBackend, SeatRead, SeatState, SeatWatch};
use fencelock_core::election::{ElectionCapabilities, LeaderInfo, LeaderRead, Observation, ProclaimOps};
use fencelock_core::{DistributedLock, FencingToken, Lease, Result};
use futures_util::StreamExt;
use tokio::sync::Notify;
use tokio_postgres::{AsyncMessage, NoTls};

use crate::error::{failed, no_answer};
use crate::hosts::{self, HostFailure};
use crate::sql;
use crate::PgLock;

/// The SQL expression of a seat's notification channel, for the seat key `key` (an SQL
/// expression) in `schema`.
fn channel_of(schema: &str, key: &str) -> String {
    format!("'fencelock_e_' || md5('{schema}.' || {key})")
}

/// The SQL that creates what elections need beside the lock's tables in `schema` (see
/// [`schema_sql`](crate::schema_sql), run first): the `leaders` table, the function that
/// notifies a seat's observers and the two triggers on `locks` that call it — exactly
/// what [`PgElection::connect`] runs when one of them is missing. Idempotent, and safe to
/// run from many sessions at once (one transaction under the tables' advisory lock).
/// The role that then runs elections needs `SELECT, INSERT, UPDATE, DELETE` on
/// `leaders` besides what the lock needs; no `CREATE`, and it need not own the function.
///
/// The triggers fire on every deletion and grant-id change of a `locks` row, but call
/// the function for `election.*` keys only: other locks pay the trigger's `WHEN` test.
///
/// ```
/// let sql = fencelock_postgres::election_schema_sql("fencelock").unwrap();
/// assert!(sql.contains("CREATE TABLE IF NOT EXISTS fencelock.leaders"));
/// assert!(fencelock_postgres::election_schema_sql("no such").is_err());
/// ```
///
/// # Errors
///
/// [`LockError::InvalidConfig`](fencelock_core::LockError::InvalidConfig) when `schema`
/// is not a plain identifier (1 to 40 lowercase letters, digits and `_`).
pub fn election_schema_sql(schema: &str) -> Result<String> {
    crate::config::check_identifier(schema)
        .map_err(|why| fencelock_core::LockError::invalid_config(format!("schema: {why}")))?;
    Ok(election_ddl(schema))
}

/// The election objects' DDL (see [`election_schema_sql`]); `schema` is checked.
///
/// Serialised by the backend's DDL advisory lock, like its own tables: concurrent
/// `CREATE TABLE IF NOT EXISTS` can otherwise fail on the type catalogue's unique index.
fn election_ddl(schema: &str) -> String {
    format!(
        "BEGIN;
SELECT pg_advisory_xact_lock({lock_id});
CREATE TABLE IF NOT EXISTS {schema}.leaders (key text PRIMARY KEY, grant_id text NOT NULL, term bigint NOT NULL, value bytea NOT NULL);
CREATE OR REPLACE FUNCTION {schema}.election_released() RETURNS trigger LANGUAGE plpgsql AS $f${body}$f$;
DO $d$ BEGIN
  IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_trigger
                 WHERE tgname = 'election_released' AND tgrelid = '{schema}.locks'::regclass) THEN
    CREATE TRIGGER election_released AFTER DELETE ON {schema}.locks
    FOR EACH ROW WHEN (OLD.key LIKE 'election.%') EXECUTE FUNCTION {schema}.election_released();
  END IF;
  IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_trigger
                 WHERE tgname = 'election_handed' AND tgrelid = '{schema}.locks'::regclass) THEN
    CREATE TRIGGER election_handed AFTER UPDATE OF grant_id ON {schema}.locks
    FOR EACH ROW WHEN (OLD.key LIKE 'election.%' AND OLD.grant_id IS DISTINCT FROM NEW.grant_id)
    EXECUTE FUNCTION {schema}.election_released();
  END IF;
END $d$;
COMMIT;",
        lock_id = crate::sql::DDL_LOCK,
        body = function_body(schema),
    )
}

/// The body of `election_released()` in `schema` (its `prosrc`): compared with the
/// server's at connect, so that a body changed by a later version is replaced.
fn function_body(schema: &str) -> String {
    format!(
        "
BEGIN
  PERFORM pg_notify({channel}, 'r');
  RETURN NULL;
END ",
        channel = channel_of(schema, "OLD.key"),
    )
}

/// The election on one PostgreSQL server.
#[derive(Debug, Clone)]
pub struct PgElection {
    lock: PgLock,
}

impl PgElection {
    /// Connects as [`PgLock::connect`] and creates the `leaders` table, the function and
    /// the triggers that announce a seat's release when one of them is missing (one
    /// statement looks for them; see [`election_schema_sql`] for teams that create them
    /// ahead) — unless the URL says `create_tables=false`: then a missing one is refused.
    ///
    /// # Errors
    /// As [`PgLock::connect`]; [`InvalidConfig`](fencelock_core::LockError::InvalidConfig)
    /// naming what is missing when the role may not create it, or with
    /// `create_tables=false`, and for an `UNLOGGED` `leaders` table (naming the `ALTER
    /// TABLE … SET LOGGED` to run); a backend error when the objects cannot be created
    /// otherwise.
    ///
    /// # Cancel safety
    /// Cancel safe: a dropped connect leaves at most a connection that closes itself.
    pub async fn connect(url: &str) -> Result<Self> {
        let lock = PgLock::connect(url).await?;
        let schema = lock.config().schema.clone();
        let me = PgElection { lock };
        let found = "SELECT to_regclass($1) IS NOT NULL,
       (SELECT p.prosrc FROM pg_catalog.pg_proc p WHERE p.oid = to_regprocedure($2)),
       (SELECT count(*) FROM pg_catalog.pg_trigger t WHERE t.tgrelid = to_regclass($3)
          AND t.tgname IN ('election_released', 'election_handed'))::int,
       (SELECT c.relpersistence::text FROM pg_catalog.pg_class c WHERE c.oid = to_regclass($1))";
        let names = [
            format!("{schema}.leaders"),
            format!("{schema}.election_released()"),
            format!("{schema}.locks"),
        ];
        let (leaders, body, triggers, persistence): (bool, Option<String>, i32, Option<String>) = me
            .run("looking for the election's table and triggers", |c| async move {
                let [a, b, t] = &names;
                let row = c.client.query_one(found, &[a, b, t]).await?;
                Ok((row.try_get(0)?, row.try_get(1)?, row.try_get(2)?, row.try_get(3)?))
            })
            .await?;
        // Refused as the lock's tables are (`sql::check_tables`): an unlogged `leaders` is
        // emptied by crash recovery and not replicated, so a failover would lose who leads.
        if persistence.as_deref() == Some("u") {
            return Err(fencelock_core::LockError::invalid_config(crate::sql::unlogged_refusal(
                &[crate::sql::set_logged(&schema, "leaders")],
            )));
        }
        // Created only when missing: `CREATE … IF NOT EXISTS` and `CREATE OR REPLACE
        // FUNCTION` need `CREATE` on the schema (and ownership of the function) even when
        // nothing is to be made, which a least-privilege role lacks. A function whose
        // body is not this version's counts as missing, so a changed body reaches
        // existing installations (replaced by a role that may, else reported).
        let function = body.is_some_and(|b| b == function_body(&schema));
        if leaders && function && triggers == 2 {
            return Ok(me);
        }
        let missing: Vec<&str> = [
            (!leaders, "the table `leaders`"),
            (!function, "the function `election_released()` (of this version)"),
            (triggers < 2, "the triggers on `locks`"),
        ]
        .into_iter()
        .filter_map(|(gone, what)| gone.then_some(what))
        .collect();
        if !me.lock.config().create_tables && !leaders {
            // No `leaders` table: no election was ever held in this schema (the table is
            // made by the first one). Said as [`NothingCreated`] so that a reader may answer
            // "no leader", as etcd and ZooKeeper do for an election never held.
            let nothing = fencelock_core::error::NothingCreated {
                schema: schema.clone(),
                missing: format!("fencelock's election objects ({})", missing.join(", ")),
                server: me.lock.config().server().to_owned(),
                guarantees: fencelock_core::DistributedLock::guarantees(&me.lock),
            };
            return Err(crate::error::nothing_created(
                &me.lock.config().url,
                nothing,
                ", or start an election there first",
            ));
        }
        if !me.lock.config().create_tables {
            return Err(fencelock_core::LockError::invalid_config(format!(
                "fencelock's election objects ({}) are missing in schema `{schema}`, and this connection \
                 does not create them (`create_tables=false`): check the `schema=` option, or start an \
                 election there first",
                missing.join(", ")
            )));
        }
        let ddl = election_ddl(&schema);
        let made = me
            .run("creating the leaders table", |c| async move {
                c.client.batch_execute(&ddl).await.map(|()| 0u64)
            })
            .await;
        match made {
            Err(fencelock_core::LockError::InvalidConfig { source, .. }) => {
                Err(fencelock_core::LockError::InvalidConfig {
                    message: format!(
                        "elections need {} in schema `{schema}`, and this role may not create them: have the schema's owner run `election_schema_sql` (docs/backends/postgres.md, \"Elections, for teams that manage schemas themselves\")",
                        missing.join(", ")
                    ),
                    source,
                })
            }
            Err(e) => Err(e),
            Ok(_) => Ok(me),
        }
    }

    /// Runs one statement on the lock's connection, bounded by the statement timeout.
    async fn run<T, F, Fut>(&self, doing: &'static str, f: F) -> Result<T>
    where
        F: FnOnce(Arc<crate::session::Session>) -> Fut,
        Fut: std::future::Future<Output = std::result::Result<T, tokio_postgres::Error>>,
    {
        let node = self.lock.node();
        let session = node.session().await?;
        let limit = node.config().timeout;
        match tokio::time::timeout(limit, f(session)).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(failed(doing, node.server(), e)),
            Err(_) => Err(no_answer(doing, node.server(), limit)),
        }
    }

    /// The notification channel of `seat`, as the server names it.
    async fn channel(&self, seat: &str) -> Result<String> {
        let sql = format!("SELECT {}", channel_of(&self.lock.config().schema, "$1::text"));
        self.run("naming the election's channel", |s| {
            let seat = seat.to_owned();
            async move { s.client.query_one(&sql, &[&seat]).await.map(|r| r.get(0)) }
        })
        .await
    }

    /// Opens a connection of its own that listens on `channel`; each notification (and
    /// the connection's end) wakes `wake`.
    ///
    /// The URL's hosts are tried one at a time, as the lock's own connections are
    /// ([`hosts::connect_each`]): each host's whole attempt — connect, start-up and the
    /// `LISTEN` — may take at most the connect timeout plus one statement timeout, then
    /// the next host is tried (a host that accepts and never answers is given up).
    ///
    /// # Errors
    ///
    /// `InvalidConfig` when the server reached refuses the `LISTEN` for good (a
    /// standby), or every host refused the start-up; else `Unavailable` naming each host.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: an attempt dropped midway aborts its connection's driver.
    async fn listen(&self, channel: &str, wake: &Arc<Notify>) -> Result<Listener> {
        let cfg = self.lock.config();
        let server = self.lock.node().server().to_owned();
        let bound = cfg.connect_timeout + cfg.timeout;
        // The session setup every connection of the backend runs, in the same round trip:
        // without it a role's `idle_session_timeout` ended this idle connection over and
        // over (the observer reconnected in a loop) and a tiny `statement_timeout` could
        // cancel the LISTEN (review).
        let listen = format!("{}; LISTEN {channel}", sql::SESSION_SETUP);
        let listen = &listen;
        hosts::connect_each(
            &cfg.pg,
            &server,
            "connecting to listen",
            bound,
            self.lock.node().last_good_host(),
            |pg, server| async move {
                let (client, mut connection) = pg
                    .connect(NoTls)
                    .await
                    .map_err(|e| hosts::connect_failed("connecting to listen", &server, e))?;
                let (notify, ended) = (Arc::clone(wake), Arc::new(std::sync::atomic::AtomicBool::new(false)));
                let ended_flag = Arc::clone(&ended);
                let driver = tokio::spawn(async move {
                    let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
                    while let Some(message) = messages.next().await {
                        match message {
                            Ok(AsyncMessage::Notification(_)) => notify.notify_one(),
                            Ok(_) => {}
                            Err(_) => break,
                        }
                    }
                    ended_flag.store(true, std::sync::atomic::Ordering::SeqCst);
                    notify.notify_one();
                });
                // Dropped (an attempt given up, or failed) it aborts the driver.
                let listener = Listener {
                    client,
                    ended,
                    driver: driver.abort_handle(),
                };
                match listener.client.batch_execute(listen).await {
                    Ok(()) => Ok(listener),
                    Err(e) => Err(HostFailure::after_start_up(failed("LISTEN", &server, e))),
                }
            },
        )
        .await
    }
}

#[async_trait]
impl SeatBackend for PgElection {
    fn seat_lock(&self) -> &dyn DistributedLock {
        &self.lock
    }

    fn election_capabilities(&self) -> ElectionCapabilities {
        ElectionCapabilities {
            backend: "postgres",
            terms: self.lock.guarantees().tokens,
            leader: LeaderRead::Exact,
            observe: Observation::Native,
            dead_leader_blocks: "its TTL (expiry on the server's clock)",
        }
    }

    async fn seat_grant(&self, _name: &str, seat: &str, lease: &Lease) -> Result<Arc<dyn ProclaimOps>> {
        Ok(Arc::new(PgSeat {
            election: self.clone(),
            seat: seat.to_owned(),
            grant: lease.grant().to_string(),
            term: i64::try_from(lease.token().get()).unwrap_or(i64::MAX),
        }))
    }

    async fn read_seat(&self, _name: &str, seat: &str) -> Result<SeatRead> {
        let schema = &self.lock.config().schema;
        let sql = format!(
            "SELECT r.grant_id IS NOT DISTINCT FROM l.grant_id, COALESCE(t.token, 0), r.value,
                    ceil(extract(epoch FROM l.expires_at - clock_timestamp()) * 1000)::bigint
             FROM {schema}.locks l
             LEFT JOIN {schema}.leaders r ON r.key = l.key
             LEFT JOIN {schema}.tokens t ON t.key = l.key
             WHERE l.key = $1 AND l.expires_at > clock_timestamp()"
        );
        let rows = self
            .run("reading the election's leader", |s| {
                let seat = seat.to_owned();
                async move { s.client.query(&sql, &[&seat]).await }
            })
            .await?;
        let Some(row) = rows.first() else {
            return Ok(SeatRead::new(SeatState::Empty));
        };
        let term = FencingToken::new(u64::try_from(row.get::<_, i64>(1)).unwrap_or(0));
        let state = if row.get::<_, bool>(0) {
            SeatState::Leader(LeaderInfo {
                value: row.get::<_, Option<Vec<u8>>>(2).unwrap_or_default(),
                term,
            })
        } else {
            SeatState::Unwritten(term)
        };
        Ok(SeatRead {
            state,
            expires_in: u64::try_from(row.get::<_, i64>(3)).ok().map(Duration::from_millis),
        })
    }

    async fn seat_watch(&self, _name: &str, seat: &str) -> Result<Box<dyn SeatWatch>> {
        let channel = self.channel(seat).await?;
        let wake = Arc::new(Notify::new());
        let listener = self.listen(&channel, &wake).await?;
        Ok(Box::new(PgWatch {
            election: self.clone(),
            seat: seat.to_owned(),
            channel,
            wake,
            listener,
        }))
    }
}

/// One leader's grant of a PostgreSQL seat.
struct PgSeat {
    election: PgElection,
    seat: String,
    grant: String,
    term: i64,
}

#[async_trait]
impl ProclaimOps for PgSeat {
    async fn proclaim(&self, value: &[u8]) -> Result<bool> {
        let schema = &self.election.lock.config().schema;
        let sql = format!(
            "WITH seat AS (
                SELECT key FROM {schema}.locks
                WHERE key = $1 AND grant_id = $2 AND expires_at > clock_timestamp()
                FOR SHARE
             ), written AS (
                INSERT INTO {schema}.leaders (key, grant_id, term, value)
                SELECT key, $2, $3, $4 FROM seat
                ON CONFLICT (key) DO UPDATE
                SET grant_id = EXCLUDED.grant_id, term = EXCLUDED.term, value = EXCLUDED.value
                RETURNING key
             )
             SELECT count(pg_notify({channel}, 'p')) FROM written",
            channel = channel_of(schema, "written.key"),
        );
        let (seat, grant, term, value) = (self.seat.clone(), self.grant.clone(), self.term, value.to_vec());
        let written: i64 = self
            .election
            .run("proclaiming the election's value", |s| async move {
                s.client
                    .query_one(&sql, &[&seat, &grant, &term, &value])
                    .await
                    .map(|r| r.get(0))
            })
            .await?;
        Ok(written == 1)
    }
}

/// An observer's own connection, listening on a seat's channel.
struct Listener {
    client: tokio_postgres::Client,
    ended: Arc<std::sync::atomic::AtomicBool>,
    driver: tokio::task::AbortHandle,
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

/// An observer's `LISTEN` on a seat's channel. A notification is a stored permit of
/// `wake`, so one that comes while the observer reads is not lost, and many are one.
struct PgWatch {
    election: PgElection,
    seat: String,
    channel: String,
    wake: Arc<Notify>,
    listener: Listener,
}

#[async_trait]
impl SeatWatch for PgWatch {
    async fn arm_and_read(&mut self) -> Result<SeatRead> {
        if self.listener.ended.load(std::sync::atomic::Ordering::SeqCst) || self.listener.client.is_closed() {
            self.listener = self.election.listen(&self.channel, &self.wake).await?;
        }
        self.election.read_seat("", &self.seat).await
    }

    async fn changed(&mut self) {
        self.wake.notified().await;
    }
}
