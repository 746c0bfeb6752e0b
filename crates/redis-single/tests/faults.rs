//! Fault tests on real redis-servers: killed, restarted with and without persistence,
//! paused; plus the Redis-side fencing store and the round-trip count.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail by panicking

use std::time::Duration;

use fencelock_core::fencing::Admission;
use fencelock_core::{DistributedLock, LockError, LockOptions, LostReason, TokenOrder};
use fencelock_redis::{RedisFencedStore, RedisLock};
use fencelock_testkit::redis_server::{Persistence, RedisOptions, RedisServer};
use fencelock_testkit::renewals::wait_renewed_twice;
use tokio::time::Instant;

const SLACK: Duration = Duration::from_secs(2);

fn opts(ttl_ms: u64) -> LockOptions {
    LockOptions::new()
        .with_ttl(Duration::from_millis(ttl_ms))
        .with_wait(Duration::from_secs(5))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_server_means_lost_lease_and_unavailable_acquire() {
    let mut server = RedisServer::start();
    let locks = RedisLock::connect(&format!("{}?timeout=300ms&connect_timeout=300ms", server.url()))
        .await
        .unwrap();
    let lease = locks.acquire("k", &opts(1000)).await.unwrap();
    server.kill();
    let killed_at = Instant::now();
    let reason = tokio::time::timeout(Duration::from_millis(1000) + SLACK, lease.lost())
        .await
        .expect("loss reported");
    assert!(matches!(reason, LostReason::RenewalFailed(_)), "{reason:?}");
    // Reported no later than the validity measured from the last renewal's send instant,
    // which is never later than the server's own expiry of the key.
    assert!(Instant::now() <= lease.valid_until() + Duration::from_millis(200));
    assert!(killed_at.elapsed() <= Duration::from_millis(1000) + SLACK);

    let wait = Duration::from_millis(800);
    let start = Instant::now();
    let err = locks
        .acquire("k", &opts(1000).with_wait(wait))
        .await
        .expect_err("acquired from a dead server");
    assert!(matches!(err, LockError::Unavailable { .. }), "{err}");
    assert!(start.elapsed() < wait + SLACK, "took {:?}", start.elapsed());
    let err = locks
        .try_acquire("k", &opts(1000))
        .await
        .expect_err("try_acquire from a dead server");
    assert!(matches!(err, LockError::Unavailable { .. }), "{err}");

    let start = Instant::now();
    let err = RedisLock::connect(&format!("{}?connect_timeout=200ms", server.url()))
        .await
        .expect_err("connected to a dead server");
    assert!(matches!(err, LockError::Unavailable { .. }), "{err}");
    assert!(start.elapsed() < SLACK, "connect took {:?}", start.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_without_persistence_loses_the_lock_and_resets_tokens() {
    let mut server = RedisServer::start();
    let first = RedisLock::connect(&server.url()).await.unwrap();
    assert_eq!(
        first.guarantees().tokens,
        TokenOrder::BestEffort,
        "no persistence must not claim monotonic tokens"
    );
    for _ in 0..3 {
        first
            .acquire("k", &opts(60_000))
            .await
            .unwrap()
            .release()
            .await
            .unwrap();
    }
    let held = first.acquire("k", &opts(60_000).with_auto_renew(false)).await.unwrap();
    assert_eq!(held.token().get(), 4);
    server.restart();
    // The documented hazard: the restarted server forgot the lock and the counter.
    let second = RedisLock::connect(&server.url()).await.unwrap();
    let other = second
        .try_acquire("k", &opts(60_000))
        .await
        .unwrap()
        .expect("the restarted server granted the held key");
    assert!(
        other.token() < held.token(),
        "token {} after {}: the counter was expected to restart",
        other.token(),
        held.token()
    );
    other.release().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_with_aof_always_keeps_the_lock_and_the_tokens() {
    let mut server = RedisServer::start_with(RedisOptions {
        persistence: Some(Persistence::AofAlways),
        ..Default::default()
    });
    let first = RedisLock::connect(&server.url()).await.unwrap();
    assert_eq!(first.guarantees().tokens, TokenOrder::StrictlyMonotonic);
    for _ in 0..3 {
        first
            .acquire("k", &opts(60_000))
            .await
            .unwrap()
            .release()
            .await
            .unwrap();
    }
    let held = first.acquire("k", &opts(60_000).with_auto_renew(false)).await.unwrap();
    let held_token = held.token();
    server.restart(); // SIGKILL, then start again from the AOF
    let second = RedisLock::connect(&server.url()).await.unwrap();
    assert!(
        second.try_acquire("k", &opts(60_000)).await.unwrap().is_none(),
        "the persisted lock was lost"
    );
    held.release()
        .await
        .expect("the first holder releases after the restart (the client reconnects)");
    let next = second
        .try_acquire("k", &opts(60_000))
        .await
        .unwrap()
        .expect("free after release");
    // (A refused attempt also counts, so the next token is above 4, not exactly 5.)
    assert!(
        next.token() > held_token && held_token.get() == 4,
        "token {} after {held_token}: the counter did not survive",
        next.token()
    );
    next.release().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_server_is_unavailable_within_the_reply_timeout() {
    let server = RedisServer::start();
    let locks = RedisLock::connect(&format!("{}?timeout=200ms", server.url()))
        .await
        .unwrap();
    locks
        .acquire("warm", &opts(1000))
        .await
        .unwrap()
        .release()
        .await
        .unwrap();
    server.pause();
    let start = Instant::now();
    let result = locks.try_acquire("k", &opts(1000)).await;
    let took = start.elapsed();
    server.resume();
    assert!(matches!(result, Err(LockError::Unavailable { .. })), "{result:?}");
    assert!(took < Duration::from_millis(200) + SLACK, "took {took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passwords_in_the_url_are_used_and_wrong_ones_are_config_errors() {
    let server = RedisServer::start_with(RedisOptions {
        password: Some("s3cret".into()),
        ..Default::default()
    });
    let locks = RedisLock::connect(&server.url())
        .await
        .expect("connect with the password");
    assert!(!locks.describe().contains("s3cret"), "{}", locks.describe());
    locks.acquire("k", &opts(1000)).await.unwrap().release().await.unwrap();
    let wrong = format!("redis://:nope@127.0.0.1:{}", server.port());
    let err = RedisLock::connect(&wrong).await.expect_err("wrong password accepted");
    assert!(matches!(err, LockError::InvalidConfig { .. }), "{err}");
    assert!(!err.to_string().contains("nope"), "password leaked: {err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fenced_store_refuses_a_paused_holders_late_write() {
    let server = RedisServer::start();
    let locks = RedisLock::connect(&server.url()).await.unwrap();
    let store = RedisFencedStore::new(&locks).await.unwrap();
    let short = opts(300).with_auto_renew(false);
    let stale = locks.acquire("acct", &short).await.unwrap();
    assert_eq!(
        store.write("acct", &stale.fence(), b"from-1").await.unwrap(),
        Admission::First
    );
    assert_eq!(
        store.write("acct", &stale.fence(), b"from-1-again").await.unwrap(),
        Admission::SameGrant
    );
    // The holder "pauses" past its TTL; a new holder takes over and writes.
    tokio::time::timeout(SLACK, stale.lost()).await.expect("expiry");
    let fresh = locks.acquire("acct", &opts(60_000)).await.unwrap();
    assert_eq!(
        store.write("acct", &fresh.fence(), b"from-2").await.unwrap(),
        Admission::Newer
    );
    // The first holder wakes up and writes: refused, and the data is the new holder's.
    match store.write("acct", &stale.fence(), b"stale").await {
        Err(LockError::Fenced(r)) => assert!(!r.reused && r.highest == fresh.token(), "{r}"),
        other => panic!("stale write admitted: {other:?}"),
    }
    // An equal token from another grant (as after a failover) is refused too.
    let forged = fencelock_core::Fence {
        token: fresh.token(),
        grant: fencelock_core::GrantId::random(),
    };
    match store.check("acct", &forged).await {
        Err(LockError::Fenced(r)) => assert!(r.reused, "{r}"),
        other => panic!("reused token admitted: {other:?}"),
    }
    assert_eq!(store.read("acct").await.unwrap().as_deref(), Some(&b"from-2"[..]));
    fresh.release().await.unwrap();
}

/// Client commands the server executed, by name, since the last `CONFIG RESETSTAT`.
async fn command_calls(conn: &mut redis::aio::ConnectionManager) -> Vec<(String, u64)> {
    let info: String = redis::cmd("INFO").arg("commandstats").query_async(conn).await.unwrap();
    info.lines()
        .filter_map(|l| l.strip_prefix("cmdstat_"))
        .filter_map(|l| {
            let (name, rest) = l.split_once(':')?;
            let calls = rest.strip_prefix("calls=")?.split(',').next()?.parse().ok()?;
            Some((name.to_owned(), calls))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uncontended_acquire_and_release_cost_one_round_trip_each() {
    let server = RedisServer::start();
    let locks = RedisLock::connect(&server.url()).await.unwrap();
    let o = opts(10_000).with_auto_renew(false);
    locks.acquire("warm", &o).await.unwrap().release().await.unwrap(); // loads the scripts
    let mut admin = locks.connection().await.unwrap();
    let _: () = redis::cmd("CONFIG")
        .arg("RESETSTAT")
        .query_async(&mut admin)
        .await
        .unwrap();
    const N: u64 = 20;
    for _ in 0..N {
        locks.acquire("k", &o).await.unwrap().release().await.unwrap();
    }
    let calls = command_calls(&mut admin).await;
    let count = |name: &str| calls.iter().find(|(n, _)| n == name).map_or(0, |(_, c)| *c);
    // Acquire: one pipeline of SET NX PX + INCR (no script; PTTL only when busy).
    // Release: one script.
    for name in ["set", "incr", "evalsha"] {
        assert_eq!(count(name), N, "{name}: {calls:?}");
    }
    // Everything else ran inside the release script, or is this test's own INFO.
    let script_inner = ["get", "del", "publish", "info", "config|resetstat"];
    let stray: Vec<_> = calls
        .iter()
        .filter(|(n, _)| {
            !["set", "incr", "pttl", "evalsha"].contains(&n.as_str()) && !script_inner.contains(&n.as_str())
        })
        .collect();
    assert!(
        stray.is_empty(),
        "commands beyond the acquire pipeline and the release script: {stray:?}"
    );
}

/// Background renewals of many held locks share scripts: the server runs far fewer
/// scripts than there are renewals, and every lease stays held.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn background_renewals_of_many_locks_share_one_script_per_window() {
    let server = RedisServer::start();
    let locks = RedisLock::connect(&format!("{}?renew_window=50ms", server.url()))
        .await
        .unwrap();
    const LOCKS: usize = 300;
    let ttl = Duration::from_millis(900); // renewed every ~300 ms
    let mut leases = Vec::new();
    for i in 0..LOCKS {
        leases.push(locks.acquire(&format!("held-{i}"), &opts(900)).await.unwrap());
    }
    let mut admin = locks.connection().await.unwrap();
    let _: () = redis::cmd("CONFIG")
        .arg("RESETSTAT")
        .query_async(&mut admin)
        .await
        .unwrap();
    let t0 = Instant::now();
    wait_renewed_twice(&leases, t0, ttl, Duration::from_secs(10)).await;
    let calls = command_calls(&mut admin).await;
    let count = |name: &str| calls.iter().find(|(n, _)| n == name).map_or(0, |(_, c)| *c);
    let scripts = count("evalsha") + count("eval");
    let renewals = count("pexpire");
    assert!(
        renewals >= 2 * LOCKS as u64,
        "expected ≥ {} renewals on the server: {calls:?}",
        2 * LOCKS
    );
    assert!(
        scripts * 10 < renewals,
        "{scripts} scripts carried {renewals} renewals: not batched ({calls:?})"
    );
    assert!(leases.iter().all(|l| l.is_held()), "a lease was lost while renewing");
    for l in leases {
        l.release().await.unwrap();
    }
}

#[cfg(feature = "tls")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_a_password_and_a_private_ca() {
    let server = RedisServer::start_with(RedisOptions {
        password: Some("s3cret".into()),
        tls: true,
        ..Default::default()
    });
    let url = server.url();
    assert!(url.starts_with("rediss://"), "{url}");
    let locks = RedisLock::connect(&url).await.expect("connect over TLS");
    let lease = locks.acquire("k", &opts(1000)).await.unwrap();
    assert!(locks.try_acquire("k", &opts(1000)).await.unwrap().is_none());
    lease.release().await.unwrap();
    // Without the CA the server's certificate is not trusted: a clear error, no panic.
    let untrusted = url.split_once('?').unwrap().0.to_owned();
    assert!(RedisLock::connect(&untrusted).await.is_err());
    // Plain text to a TLS-only port fails too.
    let plain = format!(
        "redis://:s3cret@127.0.0.1:{}?timeout=300ms&connect_timeout=300ms",
        server.port()
    );
    assert!(RedisLock::connect(&plain).await.is_err());
}
