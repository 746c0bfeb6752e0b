//! Measures what one uncontended acquire + release costs, ours against the raw minimum
//! (the bench's `RawPg`: `fencelock_testkit::pg_raw`'s upsert-with-counter, then its
//! guarded delete), on a server of its own with `pg_stat_statements`:
//!
//! * statements per cycle, and per statement its calls and mean planning and execution
//!   time (`pg_stat_statements`, which times neither the executor's set-up nor the
//!   commit) — every statement a cycle sends, so a round trip of ours the raw minimum
//!   does not have shows as a row of its own;
//! * the server's CPU per cycle: the run time of the backend serving the subject
//!   (`/proc/PID/schedstat`: parse, plan, executor set-up, execution, commit, the
//!   protocol), and of the whole server (WAL writer and the rest too);
//! * this process's CPU per cycle (`/proc/self/task/*/schedstat`);
//! * latency medians, one cycle of each subject in turn with the order rotated: ours
//!   (`PgLock` + `Lease::release`), ours without auto-renewal, the raw minimum, and our own
//!   SQL by hand on a plain client (ours ÷ that is the client library's share; that ÷ raw
//!   is the statements').
//!
//! `cargo run --release -p fencelock-postgres --example pg_cycle_cost -- [CYCLES]
//! [sync|nosync]` (starts its own server on a free loopback port, stops it at the end;
//! `nosync`: `synchronous_commit = off`, so the WAL flush, which the raw minimum pays too,
//! leaves the comparison). Diagnosis only: the figures that count are `fencelock bench`'s.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use fencelock_core::{DistributedLock, LockOptions};
use fencelock_postgres::tokio_postgres::{Client, NoTls};
use fencelock_postgres::PgLock;
use fencelock_testkit::cycle_cost::{cpu_ns, p50_us, print_cpu, Readings};
use fencelock_testkit::pg_raw::{ACQUIRE as RAW_ACQUIRE, RELEASE as RAW_RELEASE};
use fencelock_testkit::pg_server::{PgOptions, PgServer};
use fencelock_testkit::process::children_of;

#[path = "../tests/common/by_hand.rs"]
mod by_hand;
use by_hand::ByHand;

/// Run time so far of process `pid`, ns (`/proc/PID/schedstat`); 0 when it is gone.
fn run_ns(pid: i32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/schedstat"))
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// `pg_stat_statements` per statement (`calls.`, `plan_us.`, `exec_us.` + the first 60
/// characters of its text on one line), the CPU µs of the backends `pids` (`cpu_us.backend`)
/// and of the whole server (`cpu_us.server`), and the server's commits.
async fn server(admin: &Client, postmaster: i32, pids: &[i32]) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    let rows = admin
        .query(
            "SELECT regexp_replace(left(query, 200), '\\s+', ' ', 'g'), calls::float8,
                    total_plan_time * 1000, total_exec_time * 1000
               FROM pg_stat_statements WHERE query NOT LIKE '%pg_stat%'",
            &[],
        )
        .await
        .unwrap();
    for r in rows {
        let q: String = r.get(0);
        let q: String = q.chars().take(80).collect();
        out.insert(format!("calls     {q}"), r.get::<_, f64>(1));
        out.insert(format!("plan_us   {q}"), r.get::<_, f64>(2));
        out.insert(format!("exec_us   {q}"), r.get::<_, f64>(3));
    }
    let backends: u64 = pids.iter().map(|&p| run_ns(p)).sum();
    let all: u64 = children_of(postmaster).into_iter().map(run_ns).sum::<u64>() + run_ns(postmaster);
    out.insert("cpu_us.backend".into(), backends as f64 / 1e3);
    out.insert("cpu_us.server".into(), all as f64 / 1e3);
    let commits: i64 = admin
        .query_one(
            "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    out.insert("xact_commit (flushed lazily)".into(), commits as f64);
    out
}

#[tokio::main(worker_threads = 2)]
async fn main() {
    let n: usize = std::env::args().nth(1).map_or(2000, |a| a.parse().unwrap());
    let sync = std::env::args().nth(2).is_none_or(|a| a != "nosync");
    let mut pg = PgServer::start_with(PgOptions {
        fsync: true,
        synchronous_commit: sync,
    });
    pg.psql("ALTER SYSTEM SET shared_preload_libraries = 'pg_stat_statements'");
    pg.restart();
    pg.psql("CREATE EXTENSION pg_stat_statements");
    pg.psql("ALTER SYSTEM SET pg_stat_statements.track_planning = on");
    pg.psql("SELECT pg_reload_conf()");
    let postmaster = pg.pid().unwrap() as i32;
    let url = pg.url();
    if std::env::var_os("FENCELOCK_PG_VARIANTS").is_some() {
        let ours = PgLock::connect(&url).await.unwrap(); // creates the tables
        ours.close().await.unwrap();
        if let Ok(sql) = std::env::var("FENCELOCK_PG_BEFORE") {
            pg.psql(&sql);
        }
        variants(&url, n).await;
        return;
    }
    let (admin, connection) = fencelock_postgres::tokio_postgres::connect(&url, NoTls).await.unwrap();
    tokio::spawn(connection);

    let ours = PgLock::connect(&url).await.unwrap();
    let opts = LockOptions::new()
        .with_ttl(Duration::from_secs(10))
        .with_wait(Duration::from_secs(30));
    let unrenewed = opts.with_auto_renew(false);
    let raw = ByHand::connect(&url, RAW_ACQUIRE, RAW_RELEASE).await;
    let sql = ByHand::connect(
        &url,
        &fencelock_postgres::by_hand::acquire("fencelock"),
        &fencelock_postgres::by_hand::release("fencelock"),
    )
    .await;
    let mut c = 0u64;
    for _ in 0..100 {
        ours.acquire("k-ours", &opts).await.unwrap().release().await.unwrap();
        c += 1;
        raw.cycle("k-raw", c, Instant::now()).await;
        sql.cycle("k-sql", c, Instant::now()).await;
    }
    let our_pids = ours.backend_pids();
    println!("our connections: {}", our_pids.len());

    // Server work and client CPU, one subject at a time: ours, the raw minimum, our SQL.
    admin.execute("SELECT pg_stat_statements_reset()", &[]).await.unwrap();
    let (m0, c0) = (server(&admin, postmaster, &our_pids).await, cpu_ns());
    for _ in 0..n {
        ours.acquire("k-ours", &opts).await.unwrap().release().await.unwrap();
    }
    let (m1, c1) = (server(&admin, postmaster, &[raw.pid]).await, cpu_ns());
    let m1_ours = server(&admin, postmaster, &our_pids).await;
    for _ in 0..n {
        c += 1;
        raw.cycle("k-raw", c, Instant::now()).await;
    }
    let (m2, c2) = (server(&admin, postmaster, &[raw.pid]).await, cpu_ns());
    let m2_sql = server(&admin, postmaster, &[sql.pid]).await;
    for _ in 0..n {
        c += 1;
        sql.cycle("k-sql", c, Instant::now()).await;
    }
    let (m3, c3) = (server(&admin, postmaster, &[sql.pid]).await, cpu_ns());
    print_cpu(c0, c1, c2, n);
    println!(
        "client CPU per cycle: our SQL by hand {} µs",
        c3.saturating_sub(c2) / n as u64 / 1000
    );
    // The backend's CPU: each subject's own backends, read before and after its run.
    let per = |a: &BTreeMap<String, f64>, b: &BTreeMap<String, f64>, k: &str| (b[k] - a[k]) / n as f64;
    println!(
        "server backend CPU per cycle: ours {:.1} µs, raw {:.1} µs, our SQL by hand {:.1} µs",
        per(&m0, &m1_ours, "cpu_us.backend"),
        per(&m1, &m2, "cpu_us.backend"),
        per(&m2_sql, &m3, "cpu_us.backend"),
    );
    println!(
        "whole server CPU per cycle: ours {:.1} µs, raw {:.1} µs, our SQL by hand {:.1} µs",
        per(&m0, &m1, "cpu_us.server"),
        per(&m1, &m2, "cpu_us.server"),
        per(&m2_sql, &m3, "cpu_us.server"),
    );
    // Statements only the raw minimum sent (reset before ours ran) count 0 for ours.
    let mut m1 = m1;
    for k in m2.keys() {
        m1.entry(k.clone()).or_insert(0.0);
    }
    Readings {
        before: m0,
        between: m1,
        after: m2,
        cycles: n,
    }
    .print("server, per cycle (pg_stat_statements: calls, µs)", |k| {
        !k.starts_with("cpu_us")
    });

    // Latency, one cycle of each subject in turn, the order rotated every cycle.
    let mut v: [Vec<Duration>; 8] = Default::default();
    for i in 0..n {
        for j in 0..4 {
            let t = Instant::now();
            c += 1;
            match (i + j) % 4 {
                k @ (0 | 1) => {
                    let o = if k == 0 { &opts } else { &unrenewed };
                    let s = 2 * k;
                    let l = ours.acquire("k-ours", o).await.unwrap();
                    v[s].push(t.elapsed());
                    l.release().await.unwrap();
                    v[s + 1].push(t.elapsed());
                }
                2 => {
                    v[4].push(raw.cycle("k-raw", c, t).await);
                    v[5].push(t.elapsed());
                }
                _ => {
                    v[6].push(sql.cycle("k-sql", c, t).await);
                    v[7].push(t.elapsed());
                }
            }
        }
    }
    let m: Vec<f64> = v.iter_mut().map(|x| p50_us(x)).collect();
    println!(
        "p50 µs (acquire/cycle): ours {:.0}/{:.0}  ours without auto-renew {:.0}/{:.0}  raw {:.0}/{:.0}  our SQL by hand {:.0}/{:.0}  => ours/raw cycle {:.3}x, our SQL/raw {:.3}x, ours/our SQL {:.3}x",
        m[0],
        m[1],
        m[2],
        m[3],
        m[4],
        m[5],
        m[6],
        m[7],
        m[1] / m[5],
        m[7] / m[5],
        m[1] / m[7]
    );
    ours.close().await.unwrap();
}

/// Acquire statements on fencelock's tables, for [`variants`]: the raw minimum's.
const MIN_ACQUIRE: &str = "WITH taken AS (
    INSERT INTO fencelock.locks AS l (key, grant_id, expires_at)
    VALUES ($1::text, $2::text, statement_timestamp() + $3::bigint * interval '1 millisecond')
    ON CONFLICT (key) DO UPDATE SET grant_id = excluded.grant_id, expires_at = excluded.expires_at
        WHERE l.expires_at <= statement_timestamp()
    RETURNING l.key
), bumped AS (
    INSERT INTO fencelock.tokens AS t (key, token) SELECT key, 1 FROM taken
    ON CONFLICT (key) DO UPDATE SET token = t.token + 1
    RETURNING t.token
)
SELECT token FROM bumped";

/// The raw minimum's release on fencelock's tables.
const MIN_RELEASE: &str = "WITH gone AS (
    DELETE FROM fencelock.locks WHERE key = $1::text AND grant_id = $2::text
)
SELECT set_config('synchronous_commit', 'off', true)";

/// Statement variants by hand, each on its own connection, interleaved in rounds: the
/// server backend's CPU and the latency per cycle. `FENCELOCK_PG_VARIANTS=1`.
async fn variants(url: &str, n: usize) {
    let (our_acquire, our_release) = (
        fencelock_postgres::by_hand::acquire("fencelock"),
        fencelock_postgres::by_hand::release("fencelock"),
    );
    let no_abandoned = our_acquire.replace(
        "WHERE NOT EXISTS (SELECT 1 FROM fencelock.abandoned a WHERE a.grant_id = $2::text)
      AND NOT EXISTS (",
        "WHERE NOT EXISTS (",
    );
    let no_waiters = our_acquire.replace(
        "
      AND NOT EXISTS (
        SELECT 1 FROM fencelock.waiters w
        WHERE w.key = $1::text AND w.expires_at > statement_timestamp() )",
        "",
    );
    assert_ne!(no_abandoned, our_acquire);
    assert_ne!(no_waiters, our_acquire);
    let extra: Vec<(String, String, String)> = std::env::var("FENCELOCK_PG_EXTRA")
        .ok()
        .and_then(|f| std::fs::read_to_string(f).ok())
        .map(|t| {
            t.split("\n====\n")
                .filter_map(|v| {
                    let mut parts = v.split("\n----\n");
                    Some((
                        parts.next()?.trim().to_owned(),
                        parts.next()?.to_owned(),
                        parts.next()?.to_owned(),
                    ))
                })
                .collect()
        })
        .unwrap_or_default();
    let mut subjects: Vec<(String, String, String)> = vec![
        ("raw".into(), RAW_ACQUIRE.into(), RAW_RELEASE.into()),
        ("ours".into(), our_acquire.clone(), our_release.clone()),
        ("min on our tables".into(), MIN_ACQUIRE.into(), MIN_RELEASE.into()),
        (
            "our acquire, min release".into(),
            our_acquire.clone(),
            MIN_RELEASE.into(),
        ),
        (
            "min acquire, our release".into(),
            MIN_ACQUIRE.into(),
            our_release.clone(),
        ),
        (
            "acquire without abandoned probe, min release".into(),
            no_abandoned,
            MIN_RELEASE.into(),
        ),
        (
            "acquire without waiters probe, min release".into(),
            no_waiters,
            MIN_RELEASE.into(),
        ),
    ];
    subjects.extend(extra);
    let mut hands = Vec::new();
    for (_, a, r) in &subjects {
        hands.push(ByHand::connect(url, a, r).await);
    }
    let rounds = 10;
    let per = n / rounds;
    let mut cpu = vec![0u64; subjects.len()];
    let mut lat: Vec<Vec<Duration>> = vec![Vec::new(); subjects.len()];
    let mut c = 1_000_000u64;
    for round in 0..=rounds {
        for (i, h) in hands.iter().enumerate() {
            let key = format!("v{i}");
            let before = run_ns(h.pid);
            for _ in 0..per {
                c += 1;
                let t = Instant::now();
                h.cycle(&key, c, t).await;
                if round > 0 {
                    lat[i].push(t.elapsed());
                }
            }
            if round > 0 {
                cpu[i] += run_ns(h.pid) - before;
            }
        }
    }
    let base = cpu[0] as f64;
    for (i, (name, _, _)) in subjects.iter().enumerate() {
        println!(
            "{name:<55} backend CPU {:>6.1} µs/cycle ({:.2}x raw), p50 {:>6.0} µs",
            cpu[i] as f64 / (per * rounds) as f64 / 1e3,
            cpu[i] as f64 / base,
            p50_us(&mut lat[i])
        );
    }
}
