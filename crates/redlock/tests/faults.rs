//! Redlock's failure modes on 5 real redis-servers: minority and majority down, a paused
//! node, and a node restarted empty while a lock is held (with and without the
//! delayed-restart rule).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail by panicking

use std::sync::Arc;
use std::time::Duration;

use fencelock_core::fencing::FencingChecker;
use fencelock_core::{DistributedLock, LockError, LockOptions};
use fencelock_redlock::RedlockLock;
use fencelock_testkit::conformance::{mutual_exclusion_under_contention, SuiteConfig};
use fencelock_testkit::faults;
use fencelock_testkit::redis_server::{redlock_url, start_many, RedisServer};
use tokio::time::Instant;

const SLACK: Duration = Duration::from_secs(2);
const PER_NODE: Duration = Duration::from_millis(100);

fn opts(ttl: Duration) -> LockOptions {
    LockOptions::new()
        .with_ttl(ttl)
        .with_wait(Duration::from_secs(5))
        .with_auto_renew(false)
}

async fn client(servers: &[RedisServer], extra: &str) -> RedlockLock {
    let q = format!("per_node_timeout={}ms{extra}", PER_NODE.as_millis());
    RedlockLock::connect(&redlock_url(servers, &q)).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_of_five_down_still_grants_exclusively() {
    let mut servers = start_many(5);
    servers[0].kill();
    servers[3].kill();
    let servers = Arc::new(servers);
    let factory = {
        let servers = Arc::clone(&servers);
        move || {
            let servers = Arc::clone(&servers);
            async move { Arc::new(client(&servers, "").await) as Arc<dyn DistributedLock> }
        }
    };
    mutual_exclusion_under_contention(
        &factory,
        &SuiteConfig {
            rounds: 3,
            ..SuiteConfig::default()
        },
    )
    .await;
    let a = client(&servers, "").await;
    let lease = a.acquire("k", &opts(Duration::from_secs(10))).await.unwrap();
    assert!(client(&servers, "")
        .await
        .try_acquire("k", &opts(Duration::from_secs(10)))
        .await
        .unwrap()
        .is_none());
    lease.release().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_of_five_down_is_no_quorum_within_the_bound() {
    let mut servers = start_many(5);
    // Connected while all 5 answer (a connect that reaches fewer than a quorum fails: see
    // `connect_needs_a_quorum_of_nodes_that_answer`), then 3 die under the instance.
    let locks = client(&servers, "").await;
    for i in [0, 2, 4] {
        servers[i].kill();
    }
    let start = Instant::now();
    let err = locks
        .try_acquire("k", &opts(Duration::from_secs(10)))
        .await
        .expect_err("granted without a quorum");
    assert!(
        start.elapsed() < PER_NODE * 3 + SLACK,
        "try_acquire took {:?}",
        start.elapsed()
    );
    match &err {
        LockError::Unavailable { message, .. } => {
            assert!(
                message.contains("no quorum") && message.contains("2 of 5") && message.contains("need 3"),
                "{message}"
            )
        }
        other => panic!("expected no quorum, got {other}"),
    }
    let wait = Duration::from_millis(800);
    faults::assert_acquire_gives_up(&locks, "k", &opts(Duration::from_secs(10)), wait, SLACK).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_node_costs_about_the_per_node_timeout() {
    let servers = start_many(5);
    let locks = client(&servers, "").await;
    let o = opts(Duration::from_secs(10));
    locks.acquire("warm", &o).await.unwrap().release().await.unwrap(); // connect to every node
    servers[2].pause();
    let start = Instant::now();
    let lease = locks.try_acquire("k", &o).await.unwrap().expect("4 of 5 nodes are up");
    let took = start.elapsed();
    assert!(
        took >= PER_NODE / 2,
        "did not wait for the paused node at all ({took:?})"
    );
    assert!(
        took < PER_NODE + Duration::from_millis(500),
        "a paused node cost {took:?}, more than the per-node timeout"
    );
    // The validity is counted from the start of the round, minus drift: not the full TTL.
    assert!(lease.valid_until() <= start + Duration::from_secs(10));
    lease.release().await.unwrap();
    servers[2].resume();
}

/// Makes a holder on a bare quorum {0, 1, 2} (nodes 3 and 4 down), with counters at 4, then
/// restarts node 0 empty and brings 3 and 4 back empty: the three empty nodes are a quorum
/// that knows nothing of the held lock. With `snapshot`, every node `SAVE`s after the
/// warm-up (boot marker set, no lock held), so the restarted nodes come back from that
/// older snapshot instead of empty — as an RDB or `appendfsync everysec` node does.
async fn hold_on_a_bare_quorum_then_restart(
    servers: &mut [RedisServer],
    extra: &str,
    snapshot: bool,
    ttl: Duration,
) -> (fencelock_core::Lease, RedlockLock) {
    let warm = client(servers, extra).await;
    for _ in 0..3 {
        // Fresh nodes sit out a restart delay first (up to about 2 s more than set).
        warm.acquire("k", &opts(ttl).with_wait(Duration::from_secs(15)))
            .await
            .unwrap()
            .release()
            .await
            .unwrap();
    }
    if snapshot {
        for s in servers.iter() {
            assert!(s.command("SAVE").starts_with("+OK"), "SAVE on {}", s.port());
        }
    }
    servers[3].kill();
    servers[4].kill();
    let holder = client(servers, extra).await;
    let lease = holder.acquire("k", &opts(ttl)).await.unwrap();
    // At least 4: with a restart delay, rounds that failed while nodes left their delay at
    // slightly different moments still incremented some counters (best-effort tokens).
    assert!(lease.token().get() >= 4, "{}", lease.token());
    servers[0].restart();
    servers[3].restart();
    servers[4].restart();
    (lease, holder)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_restarted_empty_lets_a_second_holder_in_without_delayed_restart() {
    let mut servers = start_many(5);
    let (held, _holder) = hold_on_a_bare_quorum_then_restart(&mut servers, "", false, Duration::from_secs(30)).await;
    let intruder = client(&servers, "").await;
    let second = intruder
        .try_acquire("k", &opts(Duration::from_secs(30)))
        .await
        .unwrap()
        .expect("the documented hazard: nodes 0, 3, 4 (empty) form a quorum");
    assert!(held.is_held() && second.is_held(), "two holders at once");
    // And the best-effort token went back: the resource's check is what catches it.
    assert!(
        second.token() < held.token(),
        "{} then {}",
        held.token(),
        second.token()
    );
    let resource = FencingChecker::new();
    resource.check("r", &held.fence()).unwrap();
    assert!(matches!(
        resource.check("r", &second.fence()),
        Err(LockError::Fenced(_))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delayed_restart_keeps_the_second_holder_out() {
    delayed_restart_case(false).await;
}

/// The delay is tied to the server process, not to its data: nodes that come back from an
/// older snapshot (one taken after the boot marker was set, before the lock was granted)
/// have the marker but not the lock, and must still sit out their delay. (Before, the
/// marker's age let them vote at once, and the intruder was granted beside the holder.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delayed_restart_holds_for_a_node_restarted_from_an_older_snapshot() {
    delayed_restart_case(true).await;
}

/// A lock held on a bare quorum whose nodes then restart (`snapshot`: from an older
/// snapshot that has the boot marker but not the lock) with a 4 s restart delay and leases
/// as long as it (a TTL may not exceed restart_delay, and the holder's lease must outlast
/// the three restarts): no second holder is granted inside the delay, the first one's
/// release reports the lease lost, and the key is granted again once the delay has passed.
async fn delayed_restart_case(snapshot: bool) {
    let delay = Duration::from_secs(4);
    let extra = format!("&restart_delay={}ms", delay.as_millis());
    let mut servers = start_many(5);
    let (held, _holder) = hold_on_a_bare_quorum_then_restart(&mut servers, &extra, snapshot, delay).await;
    let restarted_at = Instant::now();
    if snapshot {
        // The snapshot was loaded: the restarted node has the marker but not the held lock.
        let boot = servers[0].command("EXISTS fencelock:boot");
        assert!(boot.starts_with(":1"), "no boot marker after the restart: {boot}");
    }
    let intruder = client(&servers, &extra).await;
    // Refused, and said why: the 3 restarted nodes could have made the quorum, so the
    // refusal is the restart delay's (`Unavailable`), not a held key's `Ok(None)` — the
    // 2 nodes that hold the lock are no quorum on their own (`tests/restart_delay.rs`).
    match intruder.try_acquire("k", &opts(delay)).await {
        Ok(Some(second)) => panic!(
            "a node restarted{} granted inside its restart delay: two holders ({} and {})",
            if snapshot { " from an older snapshot" } else { "" },
            held.token(),
            second.token()
        ),
        Err(LockError::Unavailable { message, .. }) => assert!(
            message.contains("3 of 5 nodes are inside their restart delay")
                && message.contains("2 of 5 hold another grant"),
            "{message}"
        ),
        other => panic!("expected the restart delay's refusal, got {other:?}"),
    }
    assert!(held.is_held());
    // The cost: once the holder is gone, the key is still unavailable until the restarted
    // nodes' delay has passed (nodes 1 and 2 alone are no quorum).
    // Its release finds the grant on only 2 nodes (node 0 forgot it): no longer a quorum,
    // so it is reported lost, honestly.
    let err = held.release().await.expect_err("released as if held by a quorum");
    assert!(err.is_lease_lost(), "{err}");
    let next = intruder
        .acquire("k", &opts(delay).with_wait(Duration::from_secs(15)))
        .await
        .expect("granted after the delay");
    assert!(
        restarted_at.elapsed() >= delay - Duration::from_millis(300),
        "granted after only {:?}",
        restarted_at.elapsed()
    );
    next.release().await.unwrap();
}

/// Calls of `name` the server has run since it started (`INFO commandstats`).
fn calls(server: &RedisServer, name: &str) -> u64 {
    server
        .command("INFO commandstats")
        .lines()
        .find_map(|l| l.strip_prefix(&format!("cmdstat_{name}:calls=")))
        .and_then(|rest| rest.split(',').next()?.parse().ok())
        .unwrap_or(0)
}

/// Contending waiters queue on the key's primary node and are handed the lock one at a
/// time, so they do not split the vote: every node other than the primary sees about one
/// acquire per grant (plus each waiter's first, unqueued round), not one per waiter per
/// release. (Before the queue, the primary also stood out with one busy attempt per
/// waiter per release; with it, no node does.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn contending_waiters_do_not_split_votes() {
    let servers = start_many(5);
    const CLIENTS: usize = 12;
    const GRANTS_EACH: usize = 10;
    let mut tasks = Vec::new();
    for _ in 0..CLIENTS {
        let locks = client(&servers, "").await;
        tasks.push(tokio::spawn(async move {
            for _ in 0..GRANTS_EACH {
                let o = opts(Duration::from_secs(10)).with_wait(Duration::from_secs(60));
                let lease = locks.acquire("hot", &o).await.unwrap();
                tokio::task::yield_now().await;
                lease.release().await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let grants = (CLIENTS * GRANTS_EACH) as u64;
    // Every acquire attempt reaching a node runs one `INCR`: in its pipeline, or in the
    // queue's hand-off on the primary. A node other than the primary sees a waiter's
    // attempt only when the primary handed the lock to it, or in its first round.
    let per_node: Vec<u64> = servers.iter().map(|s| calls(s, "incr")).collect();
    let p = (0..servers.len()).max_by_key(|&i| per_node[i]).unwrap();
    for (i, incrs) in per_node.iter().enumerate() {
        if i == p {
            continue;
        }
        assert!(
            *incrs <= grants * 2 + CLIENTS as u64,
            "a node saw {incrs} acquires for {grants} grants: votes were split (per node {per_node:?})"
        );
    }
}

/// K8: a release that a majority of nodes cannot confirm in time (their links reset under
/// it) is not a failed release: it returns `Ok` at once — the lease's validity says it was
/// held to the end — and goes on in the background, so once the links heal the grant is
/// gone from every node long before its 60 s TTL. Failed before the fix: release returned
/// `Unavailable: no quorum for release: 2 of 5 nodes answered` and the three nodes kept
/// the grant until it expired.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unconfirmed_release_goes_on_in_the_background() {
    use fencelock_testkit::proxy::{FaultProxy, Mode};
    let servers = start_many(5);
    let mut proxies = Vec::new();
    for s in &servers {
        proxies.push(FaultProxy::start(s.port()).await);
    }
    let hosts: Vec<String> = proxies.iter().map(|p| format!("127.0.0.1:{}", p.port())).collect();
    let url = format!(
        "redlock://{}?per_node_timeout={}ms",
        hosts.join(","),
        PER_NODE.as_millis()
    );
    let locks = RedlockLock::connect(&url).await.unwrap();
    let lease = locks.acquire("k", &opts(Duration::from_secs(60))).await.unwrap();
    for p in &proxies[..3] {
        p.set(Mode::Reset);
    }
    let start = Instant::now();
    lease
        .release()
        .await
        .expect("a release that could not be confirmed in time looked like a failed release");
    assert!(
        start.elapsed() < PER_NODE * 3 + SLACK,
        "release took {:?}",
        start.elapsed()
    );
    for p in &proxies[..3] {
        p.set(Mode::Pass);
    }
    let held = || {
        servers
            .iter()
            .map(|s| s.integer("EXISTS fencelock:{k}:lock").unwrap_or(1))
            .sum::<i64>()
    };
    // close() waits for the background release to finish (bounded).
    locks.close().await.expect("close after the links healed");
    assert_eq!(
        held(),
        0,
        "the grant stayed on nodes the release did not reach at first"
    );
}

/// The key's primary node (where its waiters queue) dies while a waiter is queued there,
/// and later acquires of the same instance still remember the key as contended: both fall
/// back to plain rounds on the four live nodes and get the lock soon after its release.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_primary_does_not_strand_contended_acquires() {
    let mut servers = start_many(5);
    let a = client(&servers, "").await;
    let b = client(&servers, "").await;
    let o = opts(Duration::from_secs(10));
    let lease = a.acquire("k", &o).await.unwrap();
    let waiting = {
        let (b, o) = (b.clone(), o);
        tokio::spawn(async move { b.acquire("k", &o).await })
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    let primary = loop {
        let queued = (0..servers.len()).find(|&i| servers[i].integer("LLEN fencelock:{k}:queue").unwrap_or(0) > 0);
        if let Some(i) = queued {
            break i;
        }
        assert!(Instant::now() < deadline, "the waiter never queued");
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    servers[primary].kill();
    let released = Instant::now();
    lease.release().await.unwrap();
    let got = tokio::time::timeout(Duration::from_secs(8), waiting)
        .await
        .expect("the queued waiter got the lock")
        .unwrap()
        .unwrap();
    assert!(
        released.elapsed() < SLACK + Duration::from_secs(1),
        "{:?}",
        released.elapsed()
    );
    got.release().await.unwrap();

    // Again, with the key remembered as busy by b from the start.
    let lease = a.acquire("k", &o).await.unwrap();
    let waiting = {
        let (b, o) = (b.clone(), o);
        tokio::spawn(async move { b.acquire("k", &o).await })
    };
    tokio::time::sleep(Duration::from_millis(200)).await; // the holder's work
    let released = Instant::now();
    lease.release().await.unwrap();
    let got = tokio::time::timeout(Duration::from_secs(8), waiting)
        .await
        .expect("the waiter got the lock")
        .unwrap()
        .unwrap();
    assert!(
        released.elapsed() < SLACK + Duration::from_secs(1),
        "{:?}",
        released.elapsed()
    );
    got.release().await.unwrap();
}

/// A node that refuses the URL's login (it needs a password the URL does not give) is the
/// URL's fault, not a failed node to outvote: connect says so (InvalidConfig) instead of
/// carrying on (a newcomer saw a grant on the other nodes, a panic inside the redis client
/// and "no answer" warnings for that node). A node that does not answer stays lazy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_refusing_the_login_is_a_configuration_error_at_connect() {
    use fencelock_testkit::redis_server::RedisOptions;
    let mut servers = start_many(2);
    servers.push(RedisServer::start_with(RedisOptions {
        password: Some("s3cret".into()),
        ..RedisOptions::default()
    }));
    let url = redlock_url(&servers, "");
    match RedlockLock::connect(&url).await {
        Err(LockError::InvalidConfig { message, .. }) => {
            assert!(message.contains("refused the credentials"), "{message}");
            assert!(
                message.contains(&servers[2].port().to_string()),
                "names the node: {message}"
            );
        }
        Err(other) => panic!("expected InvalidConfig, got {other}"),
        Ok(_) => panic!("connected to a node that refuses the login"),
    }
    // One node down (nothing listening) is no configuration error: Redlock tolerates it.
    let closed = fencelock_testkit::ports::closed_port(); // nothing listens while held
    let free = closed.port();
    let lazy = format!(
        "redlock://127.0.0.1:{},127.0.0.1:{},127.0.0.1:{free}",
        servers[0].port(),
        servers[1].port()
    );
    let locks = RedlockLock::connect(&lazy).await.expect("a silent node is tolerated");
    let lease = locks
        .acquire("k", &opts(Duration::from_secs(5)))
        .await
        .expect("quorum of 2 of 3");
    lease.release().await.unwrap();
}

/// A node whose user lacks a right fencelock needs (`NOPERM`: an ACL change rolled out to
/// one node) is a failed node at connect as it is on every later round: connect succeeds
/// while the others make a quorum, and refuses (`InvalidConfig`, naming the nodes) only
/// when the refusals leave fewer than a quorum. Found by a new-user trial: one such node
/// of five made every `connect` — every new `fencelock run` — fail with exit 78, while
/// clients connected before kept working.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_refusing_rights_at_connect_is_outvoted_like_later() {
    let servers = start_many(3);
    user_u_everywhere(&servers);
    let url = format!(
        "redlock://u:pw@127.0.0.1:{},127.0.0.1:{},127.0.0.1:{}",
        servers[0].port(),
        servers[1].port(),
        servers[2].port()
    );
    refuse_scripts(&servers[0]);
    let locks = RedlockLock::connect(&url)
        .await
        .expect("two of three nodes grant: one node's missing rights are outvoted");
    let o = opts(Duration::from_secs(5));
    locks
        .acquire("k", &o)
        .await
        .expect("quorum of 2 of 3")
        .release()
        .await
        .unwrap();
    // The outvoted node keeps its connection: each later round meets its NOPERM in one
    // round trip, not with a new connection, scripts load and rights check per round
    // (review helper 206: the connection was never kept).
    let connections = |s: &RedisServer| -> i64 {
        s.command("INFO stats")
            .lines()
            .find_map(|l| l.strip_prefix("total_connections_received:")?.trim().parse().ok())
            .unwrap()
    };
    let before = connections(&servers[0]);
    for _ in 0..20 {
        locks
            .acquire("k", &o)
            .await
            .expect("quorum of 2 of 3")
            .release()
            .await
            .unwrap();
    }
    let made = connections(&servers[0]) - before;
    assert!(made <= 3, "{made} connections to the outvoted node over 20 rounds");

    refuse_scripts(&servers[1]);
    match RedlockLock::connect(&url).await {
        Err(LockError::InvalidConfig { message, .. }) => {
            assert!(message.contains("2 of 3 nodes refused the settings"), "{message}");
            for s in &servers[..2] {
                assert!(message.contains(&s.port().to_string()), "names the node: {message}");
            }
        }
        Err(other) => panic!("expected InvalidConfig, got {other}"),
        Ok(_) => panic!("connected with two of three nodes refusing the scripts"),
    }
}

/// An extend that misses the quorum says how long it waited: the late bound (10 ×
/// `per_node_timeout`), which it did wait — not `per_node_timeout`, which a new-user trial
/// read in the message beside "no answer within 500ms" for each silent node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_extend_without_a_quorum_names_the_wait_it_made() {
    use fencelock_testkit::proxy::{FaultProxy, Mode};
    let servers = start_many(3);
    let mut proxies = Vec::new();
    for s in &servers[1..] {
        proxies.push(FaultProxy::start(s.port()).await);
    }
    let url = format!(
        "redlock://127.0.0.1:{},127.0.0.1:{},127.0.0.1:{}?per_node_timeout=50ms",
        servers[0].port(),
        proxies[0].port(),
        proxies[1].port()
    );
    let locks = RedlockLock::connect(&url).await.unwrap();
    let lease = locks.acquire("e", &opts(Duration::from_secs(10))).await.unwrap();
    for p in &proxies {
        p.set(Mode::Blackhole);
    }
    match lease.extend(Duration::from_secs(10)).await {
        Err(LockError::Unavailable { message, .. }) => {
            assert!(message.contains("1 of 3 nodes answered"), "{message}");
            assert!(message.contains("waiting at most 500ms"), "{message}");
        }
        other => panic!("expected no quorum, got {other:?}"),
    }
}

/// A queued waiter's turn that misses the quorum (three nodes silent) is undone on every
/// node in the background, for as long as a TTL, under that turn's grant id. A later turn
/// must not be granted under the same id: when the silent nodes answer again, the late
/// undo would delete that later grant on them, and a second client could then take the
/// key from a quorum while the waiter holds it (found by a review: two holders for about
/// 1.5 s, with every node alive and keeping its data).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_turn_that_missed_the_quorum_is_never_undone_over_a_later_grant() {
    let servers = start_many(5);
    let (holder, waiter, other) = (
        client(&servers, "").await,
        client(&servers, "").await,
        client(&servers, "").await,
    );
    let o = opts(Duration::from_secs(10)).with_wait(Duration::from_secs(20));
    let held = holder.acquire("st", &o).await.unwrap();
    let before: Vec<i64> = servers.iter().map(|s| s.integer("DBSIZE").unwrap()).collect();
    let queued = {
        let (waiter, o) = (waiter.clone(), o);
        tokio::spawn(async move { waiter.acquire("st", &o).await })
    };
    // The waiter queues on the key's primary node: the one node with one more key.
    let start = Instant::now();
    let primary = loop {
        let grown: Vec<usize> = (0..servers.len())
            .filter(|&i| servers[i].integer("DBSIZE").unwrap() > before[i])
            .collect();
        if let [p] = grown[..] {
            break p;
        }
        assert!(start.elapsed() < SLACK * 5, "the waiter never queued: {grown:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let silent: Vec<usize> = (0..servers.len()).filter(|&i| i != primary).take(3).collect();
    for &i in &silent {
        servers[i].pause();
    }
    // The release hands the primary's lock to the waiter, whose turn then misses the
    // quorum (only the primary and one other node answer) at least once: a turn gives up
    // on silent nodes after 1 s (`late(per_node_timeout)`), and they stay silent for 3.
    held.release().await.unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    for &i in &silent {
        servers[i].resume();
    }
    let lease = tokio::time::timeout(Duration::from_secs(15), queued)
        .await
        .expect("the waiter's acquire ended")
        .unwrap()
        .expect("the waiter was granted once the nodes answered");
    // Every undo of the missed turns is sent again within 1 s of the last (the background
    // release's longest pause), until answered: within 3 s they have all landed.
    let watch = Instant::now();
    while watch.elapsed() < Duration::from_secs(3) {
        if let Some(second) = other.try_acquire("st", &o).await.unwrap() {
            panic!(
                "a second holder (token {}) while the waiter holds token {}",
                second.token(),
                lease.token()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    lease.release().await.expect("the waiter held its lease to the end");
}

/// A `redlock://` URL over `ports` on 127.0.0.1, in that order.
fn url_of(ports: &[u16]) -> String {
    let hosts: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
    format!(
        "redlock://{}?per_node_timeout={}ms",
        hosts.join(","),
        PER_NODE.as_millis()
    )
}

/// With fewer than a quorum of nodes reachable, `connect` fails at once with `Unavailable`
/// naming how many answered and each silent node, as `redis://` does with its one server:
/// `fencelock run` then exits 69 at once instead of after its whole `--wait`, and
/// `fencelock backends` does not claim it read the servers. A minority of dead nodes is
/// still fine. Before the fix: connect succeeded with 3 of 5 nodes unreachable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_needs_a_quorum_of_nodes_that_answer() {
    let servers = start_many(3);
    let live: Vec<u16> = servers.iter().map(RedisServer::port).collect();
    // Nothing listens there while held (closed, and no server beside can take them).
    let closed: Vec<_> = (0..3).map(|_| fencelock_testkit::ports::closed_port()).collect();
    let dead: Vec<u16> = closed.iter().map(|c| c.port()).collect();

    // 3 of 5 unreachable: no quorum (3) can ever answer.
    let url = url_of(&[dead[0], live[0], dead[1], live[1], dead[2]]);
    let start = Instant::now();
    let outcome = RedlockLock::connect(&url).await;
    let took = start.elapsed();
    match outcome {
        Err(LockError::Unavailable { message, .. }) => {
            assert!(
                message.contains("2 of 5") && message.contains("quorum") && message.contains("need 3"),
                "{message}"
            );
            for p in &dead {
                assert!(message.contains(&format!(":{p}")), "names silent node {p}: {message}");
            }
        }
        Err(other) => panic!("expected Unavailable, got {other}"),
        Ok(_) => panic!("connected with 3 of 5 nodes unreachable"),
    }
    assert!(took < SLACK * 2, "connect took {took:?}");

    // 2 of 5 unreachable: a quorum answers, and the lock works.
    let url = url_of(&[dead[0], live[0], live[1], dead[1], live[2]]);
    let locks = RedlockLock::connect(&url)
        .await
        .expect("a minority of unreachable nodes is tolerated");
    let lease = locks
        .acquire("k", &opts(Duration::from_secs(10)))
        .await
        .expect("a quorum of 3 of 5");
    lease.release().await.unwrap();
}

/// One server listed twice under two spellings (`127.0.0.1:P` and `localhost:P`) passes the
/// URL's textual "listed twice" check, but its two votes are one server's: Redlock's
/// quorum then counts one server twice (and, with 3 nodes, a waiter queued on it saw the
/// key "held by someone else" with nobody holding it). The nodes' `run_id`s tell: connect
/// refuses it as a configuration error naming both spellings. Before the fix: connect
/// succeeded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_server_under_two_spellings_is_a_configuration_error() {
    let servers = start_many(2);
    let (p, q) = (servers[0].port(), servers[1].port());
    let url = format!("redlock://127.0.0.1:{p},localhost:{p},127.0.0.1:{q}");
    match RedlockLock::connect(&url).await {
        Err(LockError::InvalidConfig { message, .. }) => {
            assert!(
                message.contains(&format!(
                    "127.0.0.1:{p} and redis://localhost:{p} are the same Redis server (same run_id)"
                )) && message.contains("list each server once"),
                "{message}"
            );
        }
        Err(other) => panic!("expected InvalidConfig, got {other}"),
        Ok(_) => panic!("connected with one server listed twice"),
    }
    // Each server once under any spelling is fine.
    let url = format!("redlock://localhost:{p},127.0.0.1:{q}");
    let locks = RedlockLock::connect(&url).await.expect("two distinct servers");
    let lease = locks.acquire("k", &opts(Duration::from_secs(10))).await.unwrap();
    lease.release().await.unwrap();
}

// The CLI's `--wait` running out while the servers were down exited 75, "held by someone
// else", where a script retries on 69. A queued waiter learns of the outage at its next
// re-check (no release message comes): `retry_delay=50ms` makes that 0.5-1 s, well inside
// the wait, so the last word is the failed re-check. Every node dies: while the queue's
// primary node still answers, its "queued" is the truth — the holder's lease stays valid
// to its TTL — and the wait times out (docs/backends/redlock.md).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiter_whose_nodes_die_is_told_unavailable_not_timed_out() {
    let mut servers = start_many(5);
    let holder = client(&servers, "").await;
    let waiter = client(&servers, "&retry_delay=50ms").await;
    let kill = || servers.iter_mut().for_each(RedisServer::kill);
    let wait = Duration::from_secs(3);
    faults::assert_outage_while_waiting_is_unavailable(&holder, &waiter, kill, wait, SLACK).await;
}

// Every node stops answering without closing its connections (hung, SIGSTOPped) while a
// waiter is queued: see the Redis backend's test of the same name. Failed before: the wait
// timed out. The last check starts 2.75 s before the deadline here (one attempt with a
// silent primary: two waits of this file's 100 ms `per_node_timeout` and two of 10 × it),
// so the wait is long enough for the outage (at a third of it) to come before it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiter_whose_nodes_hang_is_told_unavailable_not_timed_out() {
    let servers = start_many(5);
    let holder = client(&servers, "").await;
    let waiter = client(&servers, "").await;
    let pause = || servers.iter().for_each(RedisServer::pause);
    let wait = Duration::from_secs(6);
    faults::assert_outage_while_waiting_is_unavailable(&holder, &waiter, pause, wait, SLACK).await;
    servers.iter().for_each(RedisServer::resume);
}

/// Nodes that all answer with an error the same request meets again (here `WRONGTYPE`: the
/// token key holds a hash on every node) answered: the acquire fails at once with a
/// permanent error saying what they answered. Failed before: a node's error counted as
/// silence, so the round was "0 of 3 nodes answered" (`Unavailable`, temporary) and the
/// acquire retried for its whole wait.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permanent_errors_on_a_quorum_fail_the_acquire_at_once() {
    let servers = start_many(3);
    for s in &servers {
        assert_eq!(s.integer("HSET fencelock:{k}:token a b"), Some(1));
    }
    let locks = client(&servers, "").await;
    let start = Instant::now();
    let err = tokio::time::timeout(
        Duration::from_secs(5) + SLACK,
        locks.acquire("k", &opts(Duration::from_secs(10))),
    )
    .await
    .expect("the acquire outlived its wait")
    .expect_err("granted on broken counters");
    let elapsed = start.elapsed();
    assert!(!err.is_temporary(), "{err}");
    assert!(
        elapsed < Duration::from_secs(1),
        "a permanent error was retried for {elapsed:?}: {err}"
    );
    let text = fencelock_core::error::one_line(&err);
    assert!(text.contains("3 of 3") && text.contains("WRONGTYPE"), "{text}");
}

/// Connects user `u` (every command, on fencelock's keys and channels; made here on
/// every server) to `servers`.
async fn as_user_u(servers: &[RedisServer]) -> RedlockLock {
    for s in servers {
        let made = s.command("ACL SETUSER u on >pw ~fencelock:* &fencelock:* +@all");
        assert!(made.ends_with("+OK\r\n"), "ACL SETUSER: {made:?}");
    }
    let ports: Vec<String> = servers.iter().map(|s| format!("127.0.0.1:{}", s.port())).collect();
    let url = format!(
        "redlock://u:pw@{}?per_node_timeout={}ms",
        ports.join(","),
        PER_NODE.as_millis()
    );
    RedlockLock::connect(&url).await.unwrap()
}

/// Takes the scripts away from user `u` on `server`: every extend and release there is
/// refused `NOPERM` from now on.
/// User `u` (password `pw`) with every right on fencelock's keys and channels, on each
/// server: the tests then take rights away from it node by node.
fn user_u_everywhere(servers: &[RedisServer]) {
    for s in servers {
        let made = s.command("ACL SETUSER u on >pw ~fencelock:* &fencelock:* +@all");
        assert!(made.ends_with("+OK\r\n"), "ACL SETUSER: {made:?}");
    }
}

/// A client of the three `servers` (`userinfo`: `""` or `USER:PASSWORD@`) with the third
/// behind a fault proxy, `per_node_timeout` 50 ms; every node connected and its scripts
/// loaded (one grant of `warm`, released) before the test's faults.
async fn third_behind_a_proxy(
    servers: &[RedisServer],
    userinfo: &str,
) -> (fencelock_testkit::proxy::FaultProxy, RedlockLock) {
    let slow = fencelock_testkit::proxy::FaultProxy::start(servers[2].port()).await;
    let url = format!(
        "redlock://{userinfo}127.0.0.1:{},127.0.0.1:{},127.0.0.1:{}?per_node_timeout=50ms",
        servers[0].port(),
        servers[1].port(),
        slow.port()
    );
    let locks = RedlockLock::connect(&url).await.unwrap();
    let o = opts(Duration::from_secs(10));
    locks.acquire("warm", &o).await.unwrap().release().await.unwrap();
    (slow, locks)
}

fn refuse_scripts(server: &RedisServer) {
    let made = server.command("ACL SETUSER u -evalsha -eval -evalsha_ro -eval_ro");
    assert!(made.ends_with("+OK\r\n"), "ACL SETUSER: {made:?}");
}

/// An extend refused on 2 of 3 nodes with an error the same request meets again (here
/// `NOPERM`: the user lost the right to run scripts) cannot reach a quorum however often
/// it is sent: it fails at once, not temporary, saying what the nodes answered — as the
/// acquire does (`permanent_errors_on_a_quorum_fail_the_acquire_at_once`). Failed before:
/// the refusals counted as silence, "no quorum for extend" (`Unavailable`, temporary),
/// which auto-renew retried until the lease's validity ran out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_extend_refused_for_good_on_a_quorum_fails_at_once_and_not_temporary() {
    let servers = start_many(3);
    let locks = as_user_u(&servers).await;
    let lease = locks.acquire("k", &opts(Duration::from_secs(10))).await.unwrap();
    servers[..2].iter().for_each(refuse_scripts);
    let start = Instant::now();
    let err = lease
        .extend(Duration::from_secs(10))
        .await
        .expect_err("extended without a quorum");
    assert!(!err.is_temporary(), "{err}");
    assert!(start.elapsed() < Duration::from_secs(1), "{:?}: {err}", start.elapsed());
    let text = fencelock_core::error::one_line(&err);
    assert!(text.contains("2 of 3"), "{text}");
    // A key of the wrong type where the grant was, on 2 of 3 nodes: the same, as a
    // permanent backend error.
    let locks = client(&servers, "").await;
    let lease = locks.acquire("w", &opts(Duration::from_secs(10))).await.unwrap();
    for s in &servers[..2] {
        assert_eq!(s.integer("DEL fencelock:{w}:lock"), Some(1));
        assert_eq!(s.integer("HSET fencelock:{w}:lock a b"), Some(1));
    }
    let err = lease
        .extend(Duration::from_secs(10))
        .await
        .expect_err("extended without a quorum");
    assert!(!err.is_temporary() && matches!(err, LockError::Backend { .. }), "{err}");
    let text = fencelock_core::error::one_line(&err);
    assert!(text.contains("2 of 3") && text.contains("WRONGTYPE"), "{text}");
}

/// A release refused on 2 of 3 nodes with `NOPERM` left the grant on a quorum (held until
/// its TTL: nobody else can lock the key) — an error the holder must hear, not temporary.
/// Failed before: the refusals counted as silence, "sent again in the background", and
/// the release answered `Ok(())`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_refused_for_good_on_a_quorum_is_a_permanent_error() {
    let servers = start_many(3);
    let locks = as_user_u(&servers).await;
    let lease = locks.acquire("k", &opts(Duration::from_secs(10))).await.unwrap();
    servers[..2].iter().for_each(refuse_scripts);
    let err = lease.release().await.expect_err("released on one node of three");
    assert!(!err.is_temporary(), "{err}");
    let text = fencelock_core::error::one_line(&err);
    assert!(text.contains("2 of 3"), "{text}");
    // The grant is still held where it was refused.
    assert_eq!(servers[0].integer("EXISTS fencelock:{k}:lock"), Some(1));
}

/// Review: a node that fails at once (here `NOPERM`: the user lost the scripts and `SET`
/// on node 0)
/// must not cut off the late wait for a slow but live node whose vote the quorum needs
/// (node 2, its answers 120 ms late behind a proxy; `per_node_timeout` 50 ms, the late
/// bound 500 ms). Failed before: the refusal counted as an answer, so at 50 ms "2 of 3
/// answered" ended the wait, node 2 was "no answer within 50ms", and the round had one
/// vote of the two it needed — `Unavailable` (no quorum), the same at every retry; an
/// auto-renewed lease's extend failed the same way until its validity ran out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusing_node_does_not_cut_the_late_wait_for_the_quorum() {
    use fencelock_testkit::proxy::Mode;
    let servers = start_many(3);
    user_u_everywhere(&servers);
    let (slow, locks) = third_behind_a_proxy(&servers, "u:pw@").await;
    let o = opts(Duration::from_secs(10));
    let delay = Duration::from_millis(120);
    let faults = || {
        // The scripts (extend, release) and the acquire's plain `SET`/`INCR`.
        refuse_scripts(&servers[0]);
        let made = servers[0].command("ACL SETUSER u -set -incr");
        assert!(made.ends_with("+OK\r\n"), "ACL SETUSER: {made:?}");
        slow.set_to_client(Mode::Delay(delay));
    };
    let heal = || {
        let made = servers[0].command("ACL SETUSER u +@all");
        assert!(made.ends_with("+OK\r\n"), "ACL SETUSER: {made:?}");
        slow.set_to_client(Mode::Pass);
    };

    faults();
    let lease = locks
        .try_acquire("k", &o)
        .await
        .expect("the slow node's vote was cut off by the refusing node's error")
        .expect("nodes 1 and 2 are free and grant");
    heal();
    lease.release().await.unwrap();

    // An extend meets the same: acquired with every node well, then node 0 refuses and
    // node 2 answers late.
    let lease = locks.acquire("e", &o).await.unwrap();
    faults();
    lease
        .extend(Duration::from_secs(10))
        .await
        .expect("the slow node's extend was cut off by the refusing node's error");
    heal();
    lease.release().await.unwrap();
    locks.close().await.unwrap();
}

/// Review: the late wait is decided on the votes the caller counts, not on answers. A
/// node answering "no" at once (node 0: its copy of an extended lease is gone, or the key
/// is held there by another grant for an acquire) beside one saying "yes" at once (node 1)
/// must not cut off the slow node 2 (answers 120 ms late behind a proxy;
/// `per_node_timeout` 50 ms, late bound 500 ms) whose "yes" makes the quorum. Failed
/// before: at 50 ms "2 of 3 answered" ended the wait, node 2 was "no answer within 50ms",
/// and the round had one yes of the two it needed — the extend reported `LeaseLost`, the
/// acquire was busy, though waiting for node 2 would have succeeded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fast_no_does_not_cut_the_late_wait_for_a_yes_the_quorum_needs() {
    use fencelock_testkit::proxy::Mode;
    let servers = start_many(3);
    let (slow, locks) = third_behind_a_proxy(&servers, "").await;
    let o = opts(Duration::from_secs(10));
    let delay = Duration::from_millis(120);

    // An extend: node 0's copy gone (its extend answers 0), node 2 late.
    let lease = locks.acquire("e", &o).await.unwrap();
    let gone = servers[0].command("DEL fencelock:{e}:lock");
    assert!(gone.starts_with(":1"), "DEL: {gone:?}");
    slow.set_to_client(Mode::Delay(delay));
    let extended = lease.extend(Duration::from_secs(10)).await;
    slow.set_to_client(Mode::Pass);
    extended.expect("node 0's fast no cut off node 2's late yes");
    lease.release().await.unwrap();

    // An acquire: node 0 held by another grant (busy at once), node 2 free but late.
    let held = servers[0].command("SET fencelock:{k}:lock someone-else PX 10000");
    assert!(held.starts_with("+OK"), "SET: {held:?}");
    slow.set_to_client(Mode::Delay(delay));
    let got = locks.try_acquire("k", &o).await;
    slow.set_to_client(Mode::Pass);
    let lease = got
        .expect("nodes 1 and 2 answer")
        .expect("node 0's fast busy cut off node 2's late grant");
    lease.release().await.unwrap();
    locks.close().await.unwrap();
}

/// Two of three nodes refusing writes since their last snapshot failed (`MISCONF`: a disk
/// full for a while) refuse an extend for now, not for good: the error is temporary, so
/// auto-renew retries it within the validity, and once the snapshots succeed the extend
/// goes through. Failed before (review): `MISCONF` was a permanent error, and a quorum of
/// permanent errors ends the extend for good (`quorum::refused`) — an auto-renewed lease
/// ended at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_extend_refused_by_nodes_that_cannot_save_is_temporary() {
    use fencelock_testkit::redis_server::RedisOptions;
    let servers: Vec<RedisServer> = (0..3)
        .map(|_| {
            RedisServer::start_with(RedisOptions {
                settings: vec![("enable-protected-configs".to_owned(), "yes".to_owned())],
                ..Default::default()
            })
        })
        .collect();
    let locks = client(&servers, "").await;
    let lease = locks.acquire("k", &opts(Duration::from_secs(10))).await.unwrap();
    servers[..2].iter().for_each(RedisServer::fail_snapshots);
    let err = lease
        .extend(Duration::from_secs(10))
        .await
        .expect_err("extended on one node of three");
    assert!(err.is_temporary(), "{err}");
    let text = fencelock_core::error::one_line(&err);
    assert!(text.contains("MISCONF"), "{text}");
    servers[..2].iter().for_each(RedisServer::snapshots_succeed);
    lease
        .extend(Duration::from_secs(10))
        .await
        .expect("extend once the snapshots succeed");
    lease.release().await.unwrap();
}
