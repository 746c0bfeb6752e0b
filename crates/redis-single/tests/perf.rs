//! Where an uncontended acquire + release goes on one real redis-server, split four ways
//! (as `crates/postgres/tests/perf.rs` splits PostgreSQL's):
//!
//! * raw — the bench's raw minimum: `SET key id NX PX ttl`, then a compare-and-delete
//!   script (`crates/bench/src/raw.rs`); no token;
//! * raw + token — the same, with the token counted as fencelock counts it: `MULTI`,
//!   `SET … NX PX`, `INCR counter`, `EXEC` (why a transaction: `RedisNode::try_grant`);
//!   what a fencing token costs by itself;
//! * node — fencelock's own commands through its node layer (`RedisNode::try_grant`,
//!   `RedisNode::release`: the release script, which also hands the lock to a queued
//!   waiter);
//! * ours — `RedisLock::acquire` + `Lease::release`: the rest is the lease (renewal
//!   schedule, loss signal, metrics, cancel guards).
//!
//! Run it in release mode for numbers (`cargo test --release -p fencelock-redis --test
//! perf -- --ignored --nocapture`); it prints the median acquire and release of each.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail by panicking

use std::time::{Duration, Instant};

use fencelock_core::{DistributedLock, GrantId, LockOptions};
use fencelock_redis::RedisLock;
use fencelock_testkit::redis_server::RedisServer;
use redis::aio::MultiplexedConnection;

const TTL: Duration = Duration::from_secs(10);

const COMPARE_AND_DELETE: &str =
    "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0";

/// The raw minimum, with or without the token's transaction.
async fn raw_cycle(c: &mut MultiplexedConnection, release: &redis::Script, token: bool, n: u64) -> [Duration; 2] {
    let id = format!("{n:032x}");
    let ttl_ms = TTL.as_millis() as u64;
    let t = Instant::now();
    if token {
        let (set, _token): (Option<String>, u64) = redis::pipe()
            .atomic()
            .cmd("SET")
            .arg("raw-t")
            .arg(&id)
            .arg("NX")
            .arg("PX")
            .arg(ttl_ms)
            .cmd("INCR")
            .arg("raw-t:token")
            .query_async(c)
            .await
            .unwrap();
        assert!(set.is_some(), "busy");
    } else {
        let set: Option<String> = redis::cmd("SET")
            .arg("raw")
            .arg(&id)
            .arg("NX")
            .arg("PX")
            .arg(ttl_ms)
            .query_async(c)
            .await
            .unwrap();
        assert!(set.is_some(), "busy");
    }
    let acquired = t.elapsed();
    let t = Instant::now();
    let deleted: i64 = release
        .key(if token { "raw-t" } else { "raw" })
        .arg(&id)
        .invoke_async(c)
        .await
        .unwrap();
    assert_eq!(deleted, 1);
    [acquired, t.elapsed()]
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement, not a check: run with --release -- --ignored --nocapture"]
async fn uncontended_cycles_split_between_commands_and_client() {
    let server = RedisServer::start();
    let locks = RedisLock::connect(&server.url()).await.unwrap();
    let node = locks.node().clone();
    let client = redis::Client::open(server.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let release = redis::Script::new(COMPARE_AND_DELETE);
    let opts = LockOptions::new().with_ttl(TTL).with_wait(Duration::from_secs(30));
    let (rounds, per_round) = (30, 100);
    // [subject][acquire, release]
    let mut samples: [[Vec<Duration>; 2]; 4] = Default::default();
    let mut n = 0u64;
    for round in 0..=rounds {
        for (i, s) in samples.iter_mut().enumerate() {
            for _ in 0..per_round {
                n += 1;
                let [a, r] = match i {
                    0 => raw_cycle(&mut conn, &release, false, n).await,
                    1 => raw_cycle(&mut conn, &release, true, n).await,
                    2 => {
                        let grant = GrantId::random();
                        let t = Instant::now();
                        node.try_grant("node", &grant, TTL, Duration::ZERO).await.unwrap();
                        let a = t.elapsed();
                        let t = Instant::now();
                        assert!(node.release("node", grant.as_str()).await.unwrap());
                        [a, t.elapsed()]
                    }
                    _ => {
                        let t = Instant::now();
                        let lease = locks.acquire("ours", &opts).await.unwrap();
                        let a = t.elapsed();
                        let t = Instant::now();
                        lease.release().await.unwrap();
                        [a, t.elapsed()]
                    }
                };
                if round > 0 {
                    // round 0 warms up
                    s[0].push(a);
                    s[1].push(r);
                }
            }
        }
    }
    let names = ["raw", "raw + token", "node", "ours"];
    let medians: Vec<(Duration, Duration)> = samples.into_iter().map(|[a, r]| (median(a), median(r))).collect();
    let raw_cycle = medians[0].0 + medians[0].1;
    for (name, (a, r)) in names.iter().zip(&medians) {
        eprintln!(
            "{name:>12}: acquire {a:>10.1?}, release {r:>10.1?}, cycle {:>10.1?} ({:.2}x raw), median of {}",
            *a + *r,
            (*a + *r).as_secs_f64() / raw_cycle.as_secs_f64(),
            rounds * per_round
        );
    }
    locks.close().await.unwrap();
}
