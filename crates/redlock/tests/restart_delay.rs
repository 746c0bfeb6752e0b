//! The `restart_delay` option's checks: what it needs of the Redis user (`INFO`), the TTLs
//! it covers, and its range — each refused at once with an error that names the cause.
//!
//! `opts` and `client` are the minimum of `tests/faults.rs`'s helpers of the same names
//! (there is no shared `tests/common` module; the servers come from fencelock-testkit).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail by panicking

use std::time::Duration;

use fencelock_core::{DistributedLock, LockError, LockOptions};
use fencelock_redlock::{RedlockConfig, RedlockLock};
use fencelock_testkit::redis_server::{redlock_url, start_many, RedisServer};

fn opts(ttl: Duration) -> LockOptions {
    LockOptions::new()
        .with_ttl(ttl)
        .with_wait(Duration::from_secs(2))
        .with_auto_renew(false)
}

async fn connect(servers: &[RedisServer], extra: &str) -> fencelock_core::Result<RedlockLock> {
    RedlockLock::connect(&redlock_url(servers, &format!("per_node_timeout=100ms{extra}"))).await
}

/// Waits out the nodes' first `delay` (fresh nodes sit it out, up to about 2 s more than
/// set) with one grant of the key `warm`, released; their boot markers are written then.
async fn past_the_delay(lock: &RedlockLock, delay: Duration) {
    lock.acquire("warm", &opts(delay).with_wait(Duration::from_secs(15)))
        .await
        .unwrap()
        .release()
        .await
        .unwrap();
}

/// Waits (bounded) until every node grants, not only a quorum: a node started after the
/// others may still be inside its delay when a quorum first grants, and a test that
/// restarts two nodes then counted three restarting (CI on a loaded machine: "3 of 5 nodes
/// are inside their restart delay", expected 2).
async fn every_node_past_the_delay(lock: &RedlockLock, servers: &[RedisServer], delay: Duration) {
    let deadline = std::time::Instant::now() + delay + Duration::from_secs(15);
    loop {
        let lease = lock
            .acquire("warm", &opts(delay).with_wait(Duration::from_secs(15)))
            .await
            .unwrap();
        let everywhere = servers
            .iter()
            .all(|s| s.command("EXISTS fencelock:{warm}:lock").starts_with(":1"));
        lease.release().await.unwrap();
        if everywhere {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "a node stayed inside its restart delay"
        );
        // The next try, not a synchronisation: the nodes' uptime is what is waited for.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn refuse_info(server: &RedisServer) {
    assert!(server.command("ACL SETUSER default -info").starts_with("+OK"));
}

/// All nodes answer a user refused `INFO`: with a `restart_delay` that is the
/// configuration's fault, said at connect (before: connect passed, and every acquire
/// failed with "backend unavailable: no quorum for acquire: 0 of 3 nodes answered").
/// Without a `restart_delay` nothing reads `INFO` in a script, and connect passes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn info_refused_with_restart_delay_is_a_configuration_error_at_connect() {
    let servers = start_many(3);
    servers.iter().for_each(refuse_info);
    let err = connect(&servers, "&restart_delay=100ms")
        .await
        .expect_err("connected although no node may read its uptime");
    assert!(matches!(err, LockError::InvalidConfig { .. }), "{err:?}");
    let text = err.to_string();
    assert!(
        text.contains("INFO") && text.contains("restart_delay") && text.contains("+info"),
        "{text}"
    );
    assert!(!text.contains("no quorum"), "{text}");
    connect(&servers, "")
        .await
        .expect("INFO is not needed without restart_delay");
}

/// One node of five refused `INFO`: it never votes. Like any node whose rights are
/// refused it is outvoted at connect, as on every later round (a warning names it):
/// before, connect failed, and one misconfigured node stopped every new client while
/// those connected earlier kept working. It never grants; a quorum of the others does.
/// With fewer than a quorum left, connect refuses (the test above).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_node_refusing_info_is_outvoted_at_connect() {
    let servers = start_many(5);
    refuse_info(&servers[2]);
    let locks = connect(&servers, "&restart_delay=1s")
        .await
        .expect("four of five nodes may read their uptime: a quorum");
    let delay = Duration::from_secs(1);
    past_the_delay(&locks, delay).await;
    let lease = locks
        .acquire("k", &opts(delay).with_wait(Duration::from_secs(15)))
        .await
        .expect("granted by a quorum of the others");
    assert_eq!(
        servers[2].integer("EXISTS fencelock:{k}:lock"),
        Some(0),
        "the node that may not read its uptime granted"
    );
    lease.release().await.unwrap();
}

/// `INFO` taken away after connect: the acquire script's refusal is classified as refused
/// configuration too (exit 78 in the CLI), not as nodes that did not answer, and no node
/// grants.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn info_refused_after_connect_fails_the_acquire_as_configuration() {
    let servers = start_many(3);
    // The scripts read INFO once the boot marker (set by the first grant) is past the
    // delay: the acquire is refused "busy" for 300 ms, then asks.
    let lock = connect(&servers, "&restart_delay=300ms").await.unwrap();
    servers.iter().for_each(refuse_info);
    let err = lock
        .acquire("k", &opts(Duration::from_millis(300)))
        .await
        .expect_err("granted by nodes that could not check their restart delay");
    assert!(matches!(err, LockError::InvalidConfig { .. }), "{err:?}");
    let text = err.to_string();
    assert!(text.contains("+info") && text.contains("3 of 3 nodes"), "{text}");
    assert!(!text.contains("no quorum"), "{text}");
    for s in &servers {
        assert!(
            s.command("EXISTS fencelock:{k}:lock").contains('0'),
            "granted on {}",
            s.port()
        );
    }
}

/// redlock.md: `restart_delay` must be at least the longest TTL. A longer TTL is refused
/// naming both (before: granted, and the trial saw two holders after a restart).
#[tokio::test]
async fn ttl_longer_than_restart_delay_is_refused() {
    let lock = RedlockLock::with_config(
        RedlockConfig::from_url("redlock://127.0.0.1:1,127.0.0.1:2,127.0.0.1:3?restart_delay=5s").unwrap(),
    )
    .unwrap();
    let long = opts(Duration::from_secs(30));
    for err in [
        lock.try_acquire("k", &long)
            .await
            .expect_err("try_acquire accepted ttl 30s"),
        lock.acquire("k", &long).await.expect_err("acquire accepted ttl 30s"),
    ] {
        assert!(matches!(err, LockError::InvalidInput(_)), "{err:?}");
        let text = err.to_string();
        assert!(
            text.contains("30s") && text.contains("5s") && text.contains("restart_delay"),
            "{text}"
        );
    }
}

/// Below 1 ms the scripts' whole milliseconds would turn the delay off unsaid; refused
/// as `per_node_timeout=500us` is (before: accepted).
#[test]
fn restart_delay_below_a_millisecond_is_refused() {
    for d in ["1ns", "500us", "999us"] {
        let url = format!("redlock://h:1,h:2,h:3?restart_delay={d}");
        let err = RedlockConfig::from_url(&url).expect_err(&url);
        assert!(matches!(err, LockError::InvalidConfig { .. }), "{err:?}");
        assert!(err.to_string().contains("restart_delay must be between 1ms"), "{err}");
    }
    for d in ["0s", "1ms", "24h"] {
        RedlockConfig::from_url(&format!("redlock://h:1,h:2,h:3?restart_delay={d}")).unwrap();
    }
    assert!(RedlockConfig::from_url("redlock://h:1?restart_delay=25h").is_err());
}

/// Servers past their restart delay (an acquire waited for it), then `restart` of them
/// restarted, and a client connected after that: the nodes restarted are inside their
/// delay for at least `delay` from the instant returned.
async fn restart_some(
    servers: &mut [RedisServer],
    restart: &[usize],
    delay: Duration,
) -> (RedlockLock, tokio::time::Instant) {
    let extra = format!("&restart_delay={}ms", delay.as_millis());
    let warm = connect(servers, &extra).await.unwrap();
    every_node_past_the_delay(&warm, servers, delay).await;
    warm.close().await.unwrap();
    for &i in restart {
        servers[i].restart();
    }
    let restarted = tokio::time::Instant::now();
    // Connected after the restarts: its first round meets no dropped connection.
    (connect(servers, &extra).await.unwrap(), restarted)
}

/// The refusal of a key because of restart delays: `Unavailable` (a temporary lack of
/// voters, as a node that does not answer), naming `restarting` of `n` nodes inside their
/// delay and `held` of `n` holding another grant, never "held by someone else" alone.
fn assert_restart_refusal(err: &LockError, restarting: usize, held: usize, n: usize) {
    let LockError::Unavailable { message, .. } = err else {
        panic!("expected Unavailable naming the restart delay, got {err:?}");
    };
    assert!(
        message.contains(&format!("{restarting} of {n} nodes are inside their restart delay"))
            && message.contains("vote again in"),
        "{message}"
    );
    if held == 0 {
        assert!(message.contains("no node holds it"), "{message}");
    } else {
        assert!(
            message.contains(&format!("{held} of {n} hold another grant")),
            "{message}"
        );
    }
    assert!(err.is_temporary(), "{err:?}");
}

/// 2 of 3 nodes restarted less than `restart_delay` ago: the key is free (nobody holds
/// it anywhere), but no quorum can grant it until they vote again. `try_acquire` and an
/// `acquire` whose wait ends inside the delay say that, not "held" — before, `try_acquire`
/// answered `Ok(None)` and `acquire` timed out, which the CLI prints as "lock `k` is held
/// by someone else" (exit 75): an operator went looking for a holder that did not exist.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_free_key_refused_inside_the_restart_delay_names_the_delay_not_a_holder() {
    let delay = Duration::from_secs(4);
    let mut servers = start_many(3);
    let (lock, restarted) = restart_some(&mut servers, &[0, 1], delay).await;
    let ttl = Duration::from_secs(2);
    let err = match lock.try_acquire("k", &opts(ttl)).await {
        Err(e) => e,
        Ok(None) => panic!("try_acquire answered Ok(None) (held by someone else) for a key nobody holds"),
        Ok(Some(l)) => panic!("granted inside the restart delay (token {})", l.token()),
    };
    assert_restart_refusal(&err, 2, 0, 3);
    // A wait that ends inside the delay keeps asking until it ends, and says the same.
    let wait = Duration::from_secs(1);
    let start = tokio::time::Instant::now();
    let err = lock
        .acquire("k", &opts(ttl).with_wait(wait))
        .await
        .expect_err("granted inside the restart delay");
    assert!(
        start.elapsed() >= wait - Duration::from_millis(300),
        "gave up after {:?} of a {wait:?} wait",
        start.elapsed()
    );
    assert!(!err.is_timeout(), "a timeout reads as a held key: {err}");
    assert_restart_refusal(&err, 2, 0, 3);
    assert!(
        restarted.elapsed() < delay,
        "the test ran past the delay: proves nothing"
    );
    for s in &servers {
        assert!(
            s.command("EXISTS fencelock:{k}:lock").contains('0'),
            "held on {}",
            s.port()
        );
    }
}

/// Mixed: of 5 nodes, 2 restarted inside the delay and 1 holding another grant (a copy left
/// by some other client): the other 2 granted, and the restarting ones could have made
/// the quorum — the refusal names both counts. With 3 holding another grant the key is
/// held whatever the restarting nodes would say: `Ok(None)`, as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusal_by_restarting_and_holding_nodes_names_both() {
    let delay = Duration::from_secs(4);
    let mut servers = start_many(5);
    let (lock, restarted) = restart_some(&mut servers, &[0, 1], delay).await;
    let ttl = Duration::from_secs(2);
    let hold = |s: &RedisServer| {
        let said = s.command("SET fencelock:{k}:lock someone-else PX 10000");
        assert!(said.starts_with("+OK"), "{said}");
    };
    hold(&servers[2]);
    let err = lock
        .try_acquire("k", &opts(ttl))
        .await
        .expect_err("granted, or Ok(None) (held), with the quorum refused by restarting nodes");
    assert_restart_refusal(&err, 2, 1, 5);
    hold(&servers[3]);
    hold(&servers[4]);
    assert!(
        lock.try_acquire("k", &opts(ttl)).await.unwrap().is_none(),
        "3 of 5 hold another grant: held, whatever the restarting nodes say"
    );
    assert!(
        restarted.elapsed() < delay,
        "the test ran past the delay: proves nothing"
    );
}

/// The key's `PTTL` (ms) on `server`.
fn pttl(server: &RedisServer, key: &str) -> i64 {
    let said = server.command(&format!("PTTL {key}"));
    let first = said.lines().next().unwrap_or_default();
    first
        .trim_start_matches(':')
        .parse()
        .unwrap_or_else(|_| panic!("PTTL said {said:?}"))
}

/// The delayed-restart rule covers extends too (review at 8d6d4ef: only acquire checked
/// the TTL; `lease.extend(30s)` set 30 s copies on the nodes, which auto-renew then kept,
/// so a node restarted empty voted again after the delay while they lived — two holders).
/// The extend is refused before anything is sent, and the lease stays held, renewing
/// copies no longer than the delay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extend_longer_than_restart_delay_is_refused_and_the_lease_keeps_renewing() {
    let delay = Duration::from_secs(2);
    let servers = start_many(3);
    let lock = connect(&servers, &format!("&restart_delay={}ms", delay.as_millis()))
        .await
        .unwrap();
    // Fresh nodes sit out the delay first (up to about 2 s more than set).
    let lease = lock
        .acquire(
            "k",
            &opts(delay).with_auto_renew(true).with_wait(Duration::from_secs(15)),
        )
        .await
        .unwrap();
    let err = lease
        .extend(Duration::from_secs(30))
        .await
        .expect_err("extend to 30s accepted with restart_delay 2s");
    assert!(matches!(err, LockError::InvalidInput(_)), "{err:?}");
    let text = err.to_string();
    assert!(text.contains("30s") && text.contains("restart_delay 2s"), "{text}");
    // No copy longer than the delay; a node that was still sitting out its delay when the
    // quorum granted holds none (-2: no key), at most n - quorum of them.
    let mut copies = 0;
    for s in &servers {
        let ms = pttl(s, "fencelock:{k}:lock");
        assert!(ms == -2 || (1..=2000).contains(&ms), "PTTL {ms} ms on {}", s.port());
        copies += usize::from(ms > 0);
    }
    assert!(copies >= 2, "copies on {copies} of 3 nodes: below a quorum");
    // Held past its first TTL: auto-renew goes on, with copies no longer than the delay.
    let first = lease.valid_until();
    fencelock_testkit::until::until("renewed past the first TTL", Duration::from_secs(10), || {
        lease.valid_until() > first + delay
    })
    .await;
    assert!(lease.is_held(), "{:?}", lease.status());
    for s in &servers {
        let ms = pttl(s, "fencelock:{k}:lock");
        assert!((1..=2000).contains(&ms), "PTTL {ms} ms on {} after renewals", s.port());
    }
    lease.release().await.unwrap();
    lock.close().await.unwrap();
}

/// An `extend` to a TTL that leaves no validity (at or below 2 × `per_node_timeout` +
/// drift, which the acquire refuses) is refused as bad input before anything is sent,
/// and the lease stays held. Before, it was sent and answered `Ok(())`: the holder's
/// lease then rested on a 150 ms TTL that Redlock's own rule says leaves no validity.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extend_to_a_ttl_that_leaves_no_validity_is_refused() {
    let servers = start_many(3);
    let lock = connect(&servers, "").await.unwrap();
    let lease = lock.acquire("k", &opts(Duration::from_secs(5))).await.unwrap();
    let err = lease
        .extend(Duration::from_millis(150))
        .await
        .expect_err("an extend to 150ms with per_node_timeout 100ms");
    assert!(matches!(err, LockError::InvalidInput(_)), "{err:?}");
    assert!(err.to_string().contains("leaves no validity"), "{err}");
    assert!(lease.is_held(), "{:?}", lease.status());
    lease.release().await.unwrap();
    lock.close().await.unwrap();
}

/// A boot marker in the future (the server clock stepped back after it was written, or
/// a marker copied from another server) is treated as a missing one: the node votes
/// again after the delay, not after the step plus the delay (review at 8d6d4ef: refused
/// for about an hour).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_boot_marker_in_the_future_costs_one_delay_not_the_step() {
    let delay = Duration::from_secs(2);
    let servers = start_many(3);
    let lock = connect(&servers, &format!("&restart_delay={}ms", delay.as_millis()))
        .await
        .unwrap();
    // Past the delay once (the markers written), then every marker an hour ahead.
    past_the_delay(&lock, delay).await;
    for s in &servers {
        let time = s.command("TIME");
        let secs: i64 = time.lines().nth(2).unwrap().trim().parse().unwrap();
        let said = s.command(&format!("SET fencelock:boot {}", secs * 1000 + 3_600_000));
        assert!(said.starts_with("+OK"), "{said}");
    }
    let start = tokio::time::Instant::now();
    let mut granted = None;
    fencelock_testkit::until::until_async(
        "granted within about the delay",
        delay + Duration::from_secs(4),
        async || {
            match lock.try_acquire("k", &opts(delay)).await {
                Ok(Some(l)) => granted = Some(l),
                Ok(None) => panic!("held by someone else: nobody holds it"),
                Err(e) => {
                    assert!(matches!(e, LockError::Unavailable { .. }), "{e:?}");
                    let waited = start.elapsed();
                    assert!(
                        waited < delay + Duration::from_secs(3),
                        "still refused after {waited:?}: {e}"
                    );
                }
            }
            granted.is_some()
        },
    )
    .await;
    let lease = granted.unwrap();
    assert!(
        start.elapsed() < delay + Duration::from_secs(3),
        "{:?}",
        start.elapsed()
    );
    lease.release().await.unwrap();
    lock.close().await.unwrap();
}
