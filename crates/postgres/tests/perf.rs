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
use fencelock_testkit::pg_raw::{ACQUIRE as RAW_ACQUIRE, RELEASE as RAW_RELEASE};
use fencelock_testkit::pg_server::{PgOptions, PgServer};
use tokio_postgres::NoTls;

#[path = "common/by_hand.rs"]
mod by_hand;
use by_hand::ByHand;

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
    let ours_by_hand = ByHand::connect(
        &server.url(),
        &fencelock_postgres::by_hand::acquire("fencelock"),
        &fencelock_postgres::by_hand::release("fencelock"),
    )
    .await;
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
                    0 => {
                        raw.cycle("solo-raw", n, Instant::now()).await;
                    }
                    1 => {
                        ours_by_hand.cycle("solo-sql", n, Instant::now()).await;
                    }
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

/// One subject's client cost alone, for `perf stat` (which counts this process only, not
/// the server's): `FENCELOCK_PERF_SUBJECT` = `raw`, `sql` (our SQL by hand) or `ours`,
/// `FENCELOCK_PERF_CYCLES` uncontended acquire + release cycles (default 5,000) against
/// the server `FENCELOCK_PERF_PG_URL` names. Prints the wall time per cycle; divide
/// `perf stat`'s task-clock and context switches by the cycles:
/// `FENCELOCK_PERF_PG_URL=postgres://postgres@127.0.0.1:PORT/postgres FENCELOCK_PERF_SUBJECT=ours
/// perf stat -e task-clock,context-switches target/release/deps/perf-HASH --ignored --nocapture
/// client_cost_of_one_subject`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement for perf stat: see the doc comment"]
async fn client_cost_of_one_subject() {
    let url = std::env::var("FENCELOCK_PERF_PG_URL").expect("FENCELOCK_PERF_PG_URL: the server to measure against");
    let subject = std::env::var("FENCELOCK_PERF_SUBJECT").unwrap_or_else(|_| "ours".into());
    let cycles: u64 = std::env::var("FENCELOCK_PERF_CYCLES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(5_000);
    let opts = LockOptions::new()
        .with_ttl(Duration::from_secs(10))
        .with_wait(Duration::from_secs(30));
    let locks = PgLock::connect(&url).await.unwrap();
    let raw = ByHand::connect(&url, RAW_ACQUIRE, RAW_RELEASE).await;
    let sql = ByHand::connect(
        &url,
        &fencelock_postgres::by_hand::acquire("fencelock"),
        &fencelock_postgres::by_hand::release("fencelock"),
    )
    .await;
    let start = Instant::now();
    for n in 0..cycles {
        match subject.as_str() {
            "raw" => {
                raw.cycle("solo-raw", n, Instant::now()).await;
            }
            "sql" => {
                sql.cycle("solo-sql", n, Instant::now()).await;
            }
            "ours" => locks.acquire("solo", &opts).await.unwrap().release().await.unwrap(),
            other => panic!("FENCELOCK_PERF_SUBJECT={other}: raw, sql or ours"),
        }
    }
    eprintln!(
        "{subject}: {cycles} cycles, {:?} per cycle",
        start.elapsed() / u32::try_from(cycles).unwrap()
    );
    locks.close().await.unwrap();
}

/// `clients` instances (each its own connection) take one key in turns, as the bench's
/// contention rows do, until `grants` grants; returns grants/s.
async fn contend(url: &str, clients: usize, grants: usize) -> f64 {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    let opts = LockOptions::new()
        .with_ttl(Duration::from_secs(10))
        .with_wait(Duration::from_secs(30));
    let mut locks = Vec::new();
    for _ in 0..clients {
        locks.push(Arc::new(PgLock::connect(url).await.unwrap()));
    }
    let made = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for lock in &locks {
        let (lock, made) = (Arc::clone(lock), Arc::clone(&made));
        tasks.push(tokio::spawn(async move {
            while made.fetch_add(1, Ordering::SeqCst) < grants {
                lock.acquire("contended", &opts).await.unwrap().release().await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let per_sec = grants as f64 / start.elapsed().as_secs_f64();
    for lock in locks {
        lock.close().await.unwrap();
    }
    per_sec
}

/// Where a contended grant's statements go: N clients on one key, the server's
/// `pg_stat_statements` read before and after (calls per grant, by statement) and its
/// WAL flushes (`pg_stat_wal.wal_sync`, flushed by the server's stats lazily: read after
/// the clients closed). Needs a server with `shared_preload_libraries =
/// pg_stat_statements`, named by `FENCELOCK_PERF_PG_URL` (the testkit's servers do not
/// load it): `FENCELOCK_PERF_PG_URL=postgres://postgres@127.0.0.1:PORT/postgres cargo test
/// --release -p fencelock-postgres --test perf statements_per_grant -- --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement against a server with pg_stat_statements: see the doc comment"]
async fn statements_per_grant_under_contention() {
    let url = std::env::var("FENCELOCK_PERF_PG_URL")
        .expect("FENCELOCK_PERF_PG_URL: a server with shared_preload_libraries = pg_stat_statements");
    let (admin, connection) = tokio_postgres::connect(&url, NoTls).await.unwrap();
    tokio::spawn(connection);
    admin
        .batch_execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        .await
        .unwrap();
    let grants = 1000;
    for clients in [1usize, 8, 64] {
        admin
            .batch_execute("SELECT pg_stat_statements_reset(); SELECT pg_stat_reset_shared('wal')")
            .await
            .unwrap();
        let per_sec = contend(&url, clients, grants).await;
        let rows = admin
            .query(
                "SELECT calls, left(regexp_replace(query, '\\s+', ' ', 'g'), 70) FROM pg_stat_statements
                 WHERE query ILIKE '%fencelock.%' AND query NOT ILIKE '%pg_stat_statements%' ORDER BY calls DESC",
                &[],
            )
            .await
            .unwrap();
        let syncs: i64 = admin
            .query_one("SELECT wal_sync FROM pg_stat_wal", &[])
            .await
            .unwrap()
            .get(0);
        let total: i64 = rows.iter().map(|r| r.get::<_, i64>(0)).sum();
        eprintln!(
            "{clients} clients: {per_sec:.0} grants/s, {:.2} statements per grant, {:.2} WAL flushes per grant (stats may lag)",
            total as f64 / grants as f64,
            syncs as f64 / grants as f64
        );
        for r in rows {
            eprintln!(
                "    {:>6.2} per grant  {}",
                r.get::<_, i64>(0) as f64 / grants as f64,
                r.get::<_, String>(1)
            );
        }
    }
}

/// An uncontended acquire + release is two statements, one round trip each, and nothing
/// else: no `SET`, `BEGIN`/`COMMIT`, `LISTEN`/`UNLISTEN`, `NOTIFY` or prepare per call
/// (counted by `pg_stat_statements`, which also counts utility statements and the
/// prepares' parses do not execute). The raw minimum sends the same two
/// (`fencelock_testkit::pg_raw`); `examples/pg_cycle_cost.rs` measures what each costs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_uncontended_cycle_is_two_statements() {
    let mut server = PgServer::start();
    server.psql("ALTER SYSTEM SET shared_preload_libraries = 'pg_stat_statements'");
    server.restart();
    server.psql("CREATE EXTENSION pg_stat_statements");
    let locks = PgLock::connect(&server.url()).await.unwrap();
    let opts = LockOptions::new()
        .with_ttl(Duration::from_secs(10))
        .with_wait(Duration::from_secs(30));
    // Warm-up: whatever an instance does once (its connection, its `LISTEN`) is not counted.
    locks.acquire("solo", &opts).await.unwrap().release().await.unwrap();
    server.psql("SELECT pg_stat_statements_reset()");
    let cycles = 20;
    for _ in 0..cycles {
        locks.acquire("solo", &opts).await.unwrap().release().await.unwrap();
    }
    let sent = server.psql(
        "SELECT string_agg(calls || ' ' || left(regexp_replace(query, '\\s+', ' ', 'g'), 50), E'\\n' ORDER BY query)
           FROM pg_stat_statements WHERE query NOT LIKE '%pg_stat_statements%'",
    );
    let expected = format!(
        "{cycles} WITH gone AS ( DELETE FROM fencelock.locks WHERE k\n\
         {cycles} WITH taken AS ( INSERT INTO fencelock.locks AS l ("
    );
    assert_eq!(sent, expected, "the statements of {cycles} uncontended cycles");
    locks.close().await.unwrap();
}
