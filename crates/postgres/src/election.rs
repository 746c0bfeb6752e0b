//! Leader election on PostgreSQL ([`PgElection`]).
//!
//! The seat of election `NAME` is the lock on key `election.NAME` (its row in `locks`, the
//! term its token from `tokens`), and the leader's value lives in a table `leaders` (key,
//! grant id, term, value) beside it. A proclaim writes that row in one statement only if
//! the `locks` row holds our grant id and has not expired on the server's clock, with the
//! `locks` row locked `FOR SHARE` so a new grant cannot commit in between — the grant is
//! compared, never merely "a row exists". `leader` reads both tables in one statement.
//! Observers poll (see [`POLL_INTERVAL`]); LISTEN/NOTIFY is not used yet and
//! [`ElectionCapabilities::observe`] says so.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use fencelock_core::election::{
    polled, validate_value, Election, ElectionCapabilities, LeaderInfo, LeaderRead, Leadership, Observation, Observer,
    ProclaimOps,
};
use fencelock_core::options::validate_key;
use fencelock_core::{DistributedLock, FencingToken, LockError, LockOptions, LostReason, Result};

use crate::error::{failed, no_answer};
use crate::PgLock;

/// How often a PostgreSQL observer reads the seat.
pub const POLL_INTERVAL: Duration = Duration::from_millis(50);

/// How long `leader` waits for a just-elected leader to write its value before reporting
/// its term with an empty value.
pub const RECORD_WAIT: Duration = Duration::from_millis(200);

/// The election on one PostgreSQL server.
#[derive(Debug, Clone)]
pub struct PgElection {
    lock: PgLock,
}

fn seat_key(name: &str) -> Result<String> {
    validate_key(name)?;
    let seat = format!("election.{name}");
    validate_key(&seat)?;
    Ok(seat)
}

impl PgElection {
    /// Connects as [`PgLock::connect`] and creates the `leaders` table if it is missing.
    ///
    /// # Errors
    /// As [`PgLock::connect`]; a backend error when the table cannot be created.
    ///
    /// # Cancel safety
    /// Cancel safe: a dropped connect leaves at most a connection that closes itself.
    pub async fn connect(url: &str) -> Result<Self> {
        let lock = PgLock::connect(url).await?;
        let schema = lock.config().schema.clone();
        // Serialised by the backend's DDL advisory lock, like its own tables: concurrent
        // CREATE TABLE IF NOT EXISTS can otherwise fail on the type catalogue's unique index.
        let ddl = format!(
            "BEGIN;
SELECT pg_advisory_xact_lock({lock_id});
CREATE TABLE IF NOT EXISTS {schema}.leaders (key text PRIMARY KEY, grant_id text NOT NULL, term bigint NOT NULL, value bytea NOT NULL);
COMMIT;",
            lock_id = crate::sql::DDL_LOCK
        );
        let me = PgElection { lock };
        me.run("creating the leaders table", |c| {
            let ddl = ddl.clone();
            async move { c.client.batch_execute(&ddl).await.map(|()| 0u64) }
        })
        .await?;
        Ok(me)
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

    async fn read_leader(&self, seat: &str) -> Result<Option<LeaderInfo>> {
        let schema = &self.lock.config().schema;
        let sql = format!(
            "SELECT r.grant_id IS NOT DISTINCT FROM l.grant_id, COALESCE(t.token, 0), r.value
             FROM {schema}.locks l
             LEFT JOIN {schema}.leaders r ON r.key = l.key
             LEFT JOIN {schema}.tokens t ON t.key = l.key
             WHERE l.key = $1 AND l.expires_at > clock_timestamp()"
        );
        let deadline = tokio::time::Instant::now() + RECORD_WAIT;
        // Bounded by RECORD_WAIT / 5 ms turns.
        loop {
            let rows = self
                .run("reading the election's leader", |s| {
                    let (sql, seat) = (sql.clone(), seat.to_owned());
                    async move { s.client.query(&sql, &[&seat]).await }
                })
                .await?;
            let Some(row) = rows.first() else { return Ok(None) };
            let ours: bool = row.get(0);
            let term = FencingToken::new(u64::try_from(row.get::<_, i64>(1)).unwrap_or(0));
            if ours {
                return Ok(Some(LeaderInfo {
                    value: row.get::<_, Option<Vec<u8>>>(2).unwrap_or_default(),
                    term,
                }));
            }
            if tokio::time::Instant::now() >= deadline {
                return Ok(Some(LeaderInfo {
                    value: Vec::new(),
                    term,
                }));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

#[async_trait]
impl Election for PgElection {
    #[tracing::instrument(level = "debug", skip(self, value, opts), fields(backend = "postgres"))]
    async fn campaign(&self, name: &str, value: &[u8], opts: &LockOptions) -> Result<Leadership> {
        validate_value(value)?;
        let seat = seat_key(name)?;
        let lease = self.lock.acquire(&seat, opts).await?;
        let ops = Arc::new(PgSeat {
            election: self.clone(),
            seat: seat.clone(),
            grant: lease.grant().to_string(),
            term: i64::try_from(lease.token().get()).unwrap_or(i64::MAX),
        });
        // Dropped here, the lease is released in the background: no seat is left.
        if !ops.proclaim(value).await? {
            return Err(LockError::LeaseLost {
                key: seat,
                token: lease.token(),
                reason: LostReason::NotHeld,
            });
        }
        tracing::debug!(name, term = %lease.token(), "elected");
        Ok(Leadership::new(name, lease, ops))
    }

    async fn leader(&self, name: &str) -> Result<Option<LeaderInfo>> {
        self.read_leader(&seat_key(name)?).await
    }

    async fn observe(&self, name: &str) -> Result<Observer> {
        let seat = seat_key(name)?;
        let me = self.clone();
        Ok(polled(POLL_INTERVAL, move || {
            let (me, seat) = (me.clone(), seat.clone());
            async move { me.read_leader(&seat).await }
        }))
    }

    fn capabilities(&self) -> ElectionCapabilities {
        ElectionCapabilities {
            backend: "postgres",
            terms: self.lock.guarantees().tokens,
            leader: LeaderRead::Exact,
            observe: Observation::Polled {
                interval_ms: POLL_INTERVAL.as_millis() as u64,
            },
            dead_leader_blocks: "its TTL (expiry on the server's clock)",
        }
    }

    fn describe(&self) -> String {
        self.lock.describe()
    }

    async fn close(&self) -> Result<()> {
        self.lock.close().await
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
             )
             INSERT INTO {schema}.leaders (key, grant_id, term, value)
             SELECT key, $2, $3, $4 FROM seat
             ON CONFLICT (key) DO UPDATE
             SET grant_id = EXCLUDED.grant_id, term = EXCLUDED.term, value = EXCLUDED.value"
        );
        let (seat, grant, term, value) = (self.seat.clone(), self.grant.clone(), self.term, value.to_vec());
        let written = self
            .election
            .run("proclaiming the election's value", |s| async move {
                s.client.execute(&sql, &[&seat, &grant, &term, &value]).await
            })
            .await?;
        Ok(written == 1)
    }
}
