//! Where an uncontended acquire + release goes, split three ways on one real server:
//!
//! * raw — the minimum statements a lease lock with tokens needs, by hand (the bench's
//!   raw subject, `crates/bench/src/pg.rs`; the SQL is `fencelock_testkit::pg_raw`);
//! * our SQL by hand — the backend's own acquire and release statements, by hand on a
//!   plain tokio-postgres client: ours ÷ raw is what the statements cost the server;
//! * ours — `PgLock::acquire` + `Lease::release`: the rest is the client library.
//!
//! Run it in release mode for numbers (`cargo test --release -p fencelock-postgres --test
//! perf -- --nocapture`); in a debug build it only shows that every path works.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail by panicking

use std::time::{Duration, Instant};

use fencelock_core::{DistributedLock, LockOptions};
use fencelock_postgres::PgLock;
use fencelock_testkit::pg_raw::{ACQUIRE as RAW_ACQUIRE, RELEASE as RAW_RELEASE, SCHEMA as RAW_SCHEMA};
use fencelock_testkit::pg_server::{PgOptions, PgServer};
use tokio_postgres::{Client, NoTls, Statement};

/// The backend's uncontended acquire and its release, as `sql.rs` builds them for the
/// default schema.
const OUR_ACQUIRE: &str = "WITH taken AS (
    INSERT INTO fencelock.locks AS l (key, grant_id, expires_at)
    SELECT $1::text, $2::text, statement_timestamp() + $3::bigint * interval '1 millisecond'
    WHERE NOT EXISTS (SELECT 1 FROM fencelock.abandoned a WHERE a.grant_id = $2::text)
      AND NOT EXISTS (
        SELECT 1 FROM fencelock.waiters w
        WHERE w.key = $1::text AND w.expires_at > statement_timestamp() )
    ON CONFLICT (key) DO UPDATE SET grant_id = excluded.grant_id, expires_at = excluded.expires_at
        WHERE l.expires_at <= statement_timestamp() AND l.grant_id <> excluded.grant_id
    RETURNING l.key
), bumped AS (
    INSERT INTO fencelock.tokens AS t (key, token) SELECT key, 1 FROM taken
    ON CONFLICT (key) DO UPDATE SET token = t.token + 1
    RETURNING t.token
)
SELECT tk.token,
       CASE WHEN tk.token IS NULL THEN
           (SELECT ceil(extract(epoch FROM h.expires_at - statement_timestamp()) * 1000)::bigint
              FROM fencelock.locks h WHERE h.key = $1)
       END AS holder_ms
FROM (SELECT (SELECT token FROM bumped) AS token) tk";

const OUR_RELEASE: &str = "WITH gone AS (
    DELETE FROM fencelock.locks WHERE key = $1 AND grant_id = $2 RETURNING key
), next AS (
    SELECT min(ticket) AS ticket FROM fencelock.waiters
    WHERE key = $1 AND expires_at > statement_timestamp()
), notified AS (
    SELECT pg_notify('fencelock_released', next.ticket::text || ':' || gone.key) FROM gone, next
    WHERE next.ticket IS NOT NULL
)
SELECT (SELECT count(*) FROM gone) AS released, (SELECT count(*) FROM notified) AS notified";

struct ByHand {
    client: Client,
    acquire: Statement,
    release: Statement,
}

impl ByHand {
    async fn connect(url: &str, acquire: &str, release: &str) -> Self {
        let (client, connection) = tokio_postgres::connect(url, NoTls).await.unwrap();
        tokio::spawn(connection);
        client.batch_execute(RAW_SCHEMA).await.unwrap();
        let acquire = client.prepare(acquire).await.unwrap();
        let release = client.prepare(release).await.unwrap();
        ByHand {
            client,
            acquire,
            release,
        }
    }

    async fn cycle(&self, key: &str, n: u64) {
        let id = format!("{:032x}", n);
        let ttl_ms: i64 = 10_000;
        let rows = self.client.query(&self.acquire, &[&key, &id, &ttl_ms]).await.unwrap();
        assert!(
            rows.first().is_some_and(|r| r.get::<_, Option<i64>>(0).is_some()),
            "busy"
        );
        self.client.query(&self.release, &[&key, &id]).await.unwrap();
    }
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// With every commit waiting for the disk, as the bench runs it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement, not a check: run with --ignored --nocapture"]
async fn uncontended_cycles_split_between_statements_and_client() {
    split(PgServer::start(), "commits flushed").await;
}

/// Without waiting for the disk (`synchronous_commit = off`): what is left is CPU and
/// round trips, where the client's and the statements' own costs show.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement, not a check: run with --ignored --nocapture"]
async fn uncontended_cycles_split_without_waiting_for_the_disk() {
    let server = PgServer::start_with(PgOptions {
        fsync: true,
        synchronous_commit: false,
    });
    split(server, "synchronous_commit off").await;
}

async fn split(server: PgServer, what: &str) {
    let locks = PgLock::connect(&server.url()).await.unwrap();
    let raw = ByHand::connect(&server.url(), RAW_ACQUIRE, RAW_RELEASE).await;
    let ours_by_hand = ByHand::connect(&server.url(), OUR_ACQUIRE, OUR_RELEASE).await;
    let opts = LockOptions::new()
        .with_ttl(Duration::from_secs(10))
        .with_wait(Duration::from_secs(30));
    let (rounds, per_round) = (30, 50);
    let mut samples: [Vec<Duration>; 3] = Default::default();
    let mut n = 0u64;
    for round in 0..=rounds {
        for (i, s) in samples.iter_mut().enumerate() {
            for _ in 0..per_round {
                n += 1;
                let t = Instant::now();
                match i {
                    0 => raw.cycle("solo-raw", n).await,
                    1 => ours_by_hand.cycle("solo-sql", n).await,
                    _ => locks.acquire("solo", &opts).await.unwrap().release().await.unwrap(),
                }
                if round > 0 {
                    s.push(t.elapsed()); // round 0 warms up
                }
            }
        }
    }
    let [raw, sql, ours] = samples.map(median);
    let ratio = |d: Duration| d.as_secs_f64() / raw.as_secs_f64();
    eprintln!(
        "{what}: uncontended acquire + release, median of {}: raw {raw:?}; our SQL by hand {sql:?} ({:.2}x); PgLock {ours:?} ({:.2}x)",
        rounds * per_round,
        ratio(sql),
        ratio(ours)
    );
    locks.close().await.unwrap();
}
