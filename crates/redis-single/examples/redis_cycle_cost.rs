//! Measures what one uncontended acquire + release costs, ours against the raw minimum
//! (the bench's `RawRedis`: `SET NX PX`, then a compare-and-delete script): server work per
//! cycle (`INFO commandstats` calls and µs per command, `INFO cpu`), client CPU per cycle
//! (this process's threads' run time, from `/proc/self/task/*/schedstat`), and the latency
//! medians, one cycle of each subject in turn with the order rotated. Also measured: ours
//! without auto-renewal, the raw minimum with our acquire's commands (a `MULTI`/`SET NX
//! PX`/`INCR`/`EXEC` pipeline), which tell client-side bookkeeping from server commands,
//! and our commands through the node layer alone (`RedisNode::try_grant` + `release`, no
//! lease), which tells the node's client work from the lease's. And two more: ours through
//! `Metered`, the metrics wrapper `fencelock::connect` puts around every backend (what the
//! bench and users call; no recorder installed, as in the bench), and the raw minimum
//! with our acquire as one script (`SET NX PX`, then `INCR` when granted) instead of the
//! transaction, to weigh the one against the other.
//!
//! `cargo run --release -p fencelock-redis --example redis_cycle_cost -- [CYCLES]` (starts
//! its own redis-server on a free loopback port, stops it at the end).
//!
//! `… -- profile SUBJECT CYCLES [URL]` runs only 100 warm-up cycles and then `CYCLES`
//! cycles of one subject (`ours`, `metered`, `node` or `raw`), against the server at `URL`
//! when given (so that `perf stat`/`perf record` of this process count the client alone:
//! run it with `CYCLES` 0 and N and take the difference per cycle), else its own.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use fencelock_core::{DistributedLock, LockOptions};
use fencelock_testkit::cycle_cost::{cpu_ns, p50_us, print_cpu, Readings, REDIS_COMPARE_AND_DELETE};
use fencelock_testkit::redis_server::RedisServer;
use redis::aio::MultiplexedConnection;

/// Calls and µs per command (`calls.NAME`, `usec.NAME`), and the server's CPU seconds.
/// One acquire + release of `key` through `lock`, unwrapped (ours, or ours through
/// `Metered`: the warm-up and the sequential CPU readings).
async fn cycle(lock: &dyn DistributedLock, key: &str, opts: &LockOptions) {
    lock.acquire(key, opts).await.unwrap().release().await.unwrap();
}

fn server(redis: &RedisServer) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for l in redis.command("INFO commandstats").lines() {
        let Some((name, rest)) = l.strip_prefix("cmdstat_").and_then(|l| l.split_once(':')) else {
            continue;
        };
        for field in rest.split(',') {
            if let Some((k, v)) = field.split_once('=') {
                if k == "calls" || k == "usec" {
                    out.insert(format!("{k}.{name}"), v.parse().unwrap_or(0.0));
                }
            }
        }
    }
    for l in redis.command("INFO cpu").lines() {
        if let Some((k, v)) = l.trim().split_once(':') {
            if k == "used_cpu_sys" || k == "used_cpu_user" {
                // µs, so that the per-cycle figure reads as µs.
                out.insert(format!("cpu_us.{k}"), v.parse::<f64>().unwrap_or(0.0) * 1e6);
            }
        }
    }
    out
}

/// How the raw minimum acquires.
enum Acquire {
    /// `SET NX PX`: the raw minimum.
    Set,
    /// Our commands: `MULTI`, `SET NX PX`, `INCR`, `EXEC` in one pipeline.
    Transaction,
    /// One script: `SET NX PX`, then `INCR` when granted.
    Script(redis::Script),
}

/// The one-script acquire of [`Acquire::Script`]: `{1, token}` when granted, `{0}` when not.
const SCRIPT_ACQUIRE: &str = "if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then \
     return {1, redis.call('INCR', KEYS[2])} end return {0}";

struct Raw {
    conn: MultiplexedConnection,
    cad: redis::Script,
    acquire: Acquire,
}

impl Raw {
    async fn cycle(&mut self, key: &str, t0: Instant) -> Duration {
        let mut set = redis::cmd("SET");
        set.arg(key).arg("me").arg("NX").arg("PX").arg(10_000);
        let granted = match &self.acquire {
            Acquire::Transaction => {
                let (ok, _token): (Option<String>, i64) = redis::pipe()
                    .atomic()
                    .add_command(set)
                    .cmd("INCR")
                    .arg(format!("{key}:token"))
                    .query_async(&mut self.conn)
                    .await
                    .unwrap();
                ok.is_some()
            }
            Acquire::Script(script) => {
                let answer: Vec<i64> = script
                    .key(key)
                    .key(format!("{key}:token"))
                    .arg("me")
                    .arg(10_000)
                    .invoke_async(&mut self.conn)
                    .await
                    .unwrap();
                answer.first() == Some(&1)
            }
            Acquire::Set => {
                let ok: Option<String> = set.query_async(&mut self.conn).await.unwrap();
                ok.is_some()
            }
        };
        assert!(granted, "{key} was busy");
        let acq = t0.elapsed();
        let _: i64 = self.cad.key(key).arg("me").invoke_async(&mut self.conn).await.unwrap();
        acq
    }
}

/// The `profile` mode (see the module docs): `SUBJECT CYCLES [URL]`.
async fn profile(mut args: impl Iterator<Item = String>) {
    let subject = args.next().expect("profile SUBJECT CYCLES [URL]");
    let n: usize = args.next().map_or(2000, |a| a.parse().unwrap());
    let given = args.next();
    let own = given.is_none().then(RedisServer::start);
    let url = given.unwrap_or_else(|| own.as_ref().map(RedisServer::url).unwrap());
    let ours = fencelock_redis::RedisLock::connect(&url).await.unwrap();
    let metered = fencelock_core::metrics::Metered::new(ours.clone(), "redis");
    let opts = LockOptions::new()
        .with_ttl(Duration::from_secs(10))
        .with_wait(Duration::from_secs(30));
    let node = ours.node().clone();
    let conn = redis::Client::open(url.as_str())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let mut raw = Raw {
        conn,
        cad: redis::Script::new(REDIS_COMPARE_AND_DELETE),
        acquire: Acquire::Set,
    };
    for i in 0..100 + n {
        match subject.as_str() {
            "ours" => cycle(&ours, "p-ours", &opts).await,
            "metered" => cycle(&metered, "p-metered", &opts).await,
            "node" => {
                let grant = fencelock_core::GrantId::random();
                let under = node.run_id_for_grant();
                node.try_grant("p-node", &grant, opts.ttl(), Duration::ZERO)
                    .await
                    .unwrap();
                assert!(node.release("p-node", grant.as_str(), under.as_deref()).await.unwrap());
            }
            "raw" => {
                raw.cycle("p-raw", Instant::now()).await;
            }
            other => panic!("unknown subject {other}"),
        }
        if i == 99 {
            eprintln!("warmed up");
        }
    }
}

#[tokio::main(worker_threads = 2)]
async fn main() {
    if std::env::args().nth(1).as_deref() == Some("profile") {
        return profile(std::env::args().skip(2)).await;
    }
    let n: usize = std::env::args().nth(1).map_or(2000, |a| a.parse().unwrap());
    let redis = RedisServer::start();
    let ours = fencelock_redis::RedisLock::connect(&redis.url()).await.unwrap();
    let opts = LockOptions::new()
        .with_ttl(Duration::from_secs(10))
        .with_wait(Duration::from_secs(30));
    let unrenewed = opts.with_auto_renew(false);
    // The same lock (its connections shared) through the wrapper `fencelock::connect` adds.
    let metered = fencelock_core::metrics::Metered::new(ours.clone(), "redis");
    let node = ours.node().clone();
    let client = redis::Client::open(redis.url()).unwrap();
    let conn = client.get_multiplexed_async_connection().await.unwrap();
    let cad = redis::Script::new(REDIS_COMPARE_AND_DELETE);
    let mut raw = Raw {
        conn: conn.clone(),
        cad: cad.clone(),
        acquire: Acquire::Set,
    };
    let mut tokened = Raw {
        conn: conn.clone(),
        cad: cad.clone(),
        acquire: Acquire::Transaction,
    };
    let mut scripted = Raw {
        conn,
        cad,
        acquire: Acquire::Script(redis::Script::new(SCRIPT_ACQUIRE)),
    };
    for _ in 0..100 {
        cycle(&ours, "k-ours", &opts).await;
        cycle(&metered, "k-metered", &opts).await;
        raw.cycle("raw-k", Instant::now()).await;
        tokened.cycle("raw-t", Instant::now()).await;
        scripted.cycle("raw-s", Instant::now()).await;
    }
    // Server work and client CPU, one subject at a time.
    let (m0, c0) = (server(&redis), cpu_ns());
    for _ in 0..n {
        cycle(&ours, "k-ours", &opts).await;
    }
    let (m1, c1) = (server(&redis), cpu_ns());
    for _ in 0..n {
        raw.cycle("raw-k", Instant::now()).await;
    }
    let (m2, c2) = (server(&redis), cpu_ns());
    print_cpu(c0, c1, c2, n);
    Readings {
        before: m0,
        between: m1,
        after: m2,
        cycles: n,
    }
    .print("server, per cycle (calls, µs)", |k| !k.ends_with(".info"));
    // Client CPU of the metrics wrapper: ours, then ours through `Metered`.
    let c0 = cpu_ns();
    for _ in 0..n {
        cycle(&ours, "k-ours", &opts).await;
    }
    let c1 = cpu_ns();
    for _ in 0..n {
        cycle(&metered, "k-metered", &opts).await;
    }
    let c2 = cpu_ns();
    println!(
        "client CPU per cycle: ours {} ns, ours through Metered {} ns",
        c1.saturating_sub(c0) / n as u64,
        c2.saturating_sub(c1) / n as u64
    );
    // Latency, one cycle of each subject in turn, the order rotated every cycle.
    const SUBJECTS: usize = 7;
    let mut v: [Vec<Duration>; 2 * SUBJECTS] = Default::default();
    for i in 0..n {
        for j in 0..SUBJECTS {
            let t = Instant::now();
            let k = (i + j) % SUBJECTS;
            match k {
                0 | 1 => {
                    let o = if k == 0 { &opts } else { &unrenewed };
                    let s = 2 * k;
                    let l = ours.acquire("k-ours", o).await.unwrap();
                    v[s].push(t.elapsed());
                    l.release().await.unwrap();
                    v[s + 1].push(t.elapsed());
                }
                2 => {
                    v[4].push(raw.cycle("raw-k", t).await);
                    v[5].push(t.elapsed());
                }
                3 => {
                    v[6].push(tokened.cycle("raw-t", t).await);
                    v[7].push(t.elapsed());
                }
                5 => {
                    let l = metered.acquire("k-metered", &opts).await.unwrap();
                    v[10].push(t.elapsed());
                    l.release().await.unwrap();
                    v[11].push(t.elapsed());
                }
                6 => {
                    v[12].push(scripted.cycle("raw-s", t).await);
                    v[13].push(t.elapsed());
                }
                _ => {
                    let grant = fencelock_core::GrantId::random();
                    let under = node.run_id_for_grant();
                    node.try_grant("k-node", &grant, opts.ttl(), Duration::ZERO)
                        .await
                        .unwrap();
                    v[8].push(t.elapsed());
                    assert!(node.release("k-node", grant.as_str(), under.as_deref()).await.unwrap());
                    v[9].push(t.elapsed());
                }
            }
        }
    }
    let m: Vec<f64> = v.iter_mut().map(|x| p50_us(x)).collect();
    println!(
        "p50 µs (acquire/cycle): ours {:.0}/{:.0}  ours without auto-renew {:.0}/{:.0}  raw {:.0}/{:.0}  raw with our acquire's commands {:.0}/{:.0}  our commands through RedisNode {:.0}/{:.0}  ours through Metered {:.0}/{:.0}  raw with a one-script acquire {:.0}/{:.0}",
        m[0], m[1], m[2], m[3], m[4], m[5], m[6], m[7], m[8], m[9], m[10], m[11], m[12], m[13]
    );
    println!(
        "=> ours/raw cycle {:.3}x acquire {:.3}x; through Metered/raw cycle {:.3}x acquire {:.3}x; one-script/transaction acquire {:.3}x cycle {:.3}x",
        m[1] / m[5],
        m[0] / m[4],
        m[11] / m[5],
        m[10] / m[4],
        m[12] / m[6],
        m[13] / m[7]
    );
    contended(&redis, 8, n as u64).await;
    contended(&redis, 64, n as u64).await;
}

/// `clients` instances (each its own connections) taking turns on one key until `grants`
/// grants: server work and client CPU per grant, and grants/s.
async fn contended(redis: &RedisServer, clients: usize, grants: u64) {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;
    let opts = LockOptions::new()
        .with_ttl(Duration::from_secs(10))
        .with_wait(Duration::from_secs(60));
    let mut locks = Vec::new();
    for _ in 0..clients {
        locks.push(fencelock_redis::RedisLock::connect(&redis.url()).await.unwrap());
    }
    let done = Arc::new(AtomicU64::new(0));
    let (m0, c0, t0) = (server(redis), cpu_ns(), Instant::now());
    let tasks: Vec<_> = locks
        .into_iter()
        .map(|l| {
            let done = Arc::clone(&done);
            tokio::spawn(async move {
                // Each acquire's wait; the first is apart (it opens the pub/sub connection).
                let mut waits = Vec::new();
                while done.load(Ordering::SeqCst) < grants {
                    let asked = Instant::now();
                    let lease = l.acquire("k-hot", &opts).await.unwrap();
                    waits.push(asked.elapsed());
                    done.fetch_add(1, Ordering::SeqCst);
                    lease.release().await.unwrap();
                }
                waits
            })
        })
        .collect();
    let (mut firsts, mut rest) = (Vec::new(), Vec::new());
    for t in tasks {
        let waits = t.await.unwrap();
        firsts.extend(waits.first().copied());
        rest.extend(waits.into_iter().skip(1));
    }
    let longest = |v: &[Duration]| v.iter().max().copied().unwrap_or_default();
    println!(
        "waits: longest first acquire {:?}, longest later acquire {:?}, median later acquire {:.0} µs",
        longest(&firsts),
        longest(&rest),
        p50_us(&mut rest)
    );
    let (took, c1, m1) = (t0.elapsed(), cpu_ns(), server(redis));
    let granted = done.load(Ordering::SeqCst);
    println!(
        "\n{clients} clients on one key: {granted} grants in {took:?} = {:.0}/s; client CPU per grant {} µs",
        granted as f64 / took.as_secs_f64(),
        c1.saturating_sub(c0) / granted / 1000
    );
    Readings {
        before: m0,
        between: m1.clone(),
        after: m1,
        cycles: granted as usize,
    }
    .print("server, per grant (calls, µs)", |k| !k.ends_with(".info"));
}
