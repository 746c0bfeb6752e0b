//! Issue 14: a waiter that dies while queued (SIGKILL) must delay the live waiters behind it
//! by the short waiting lease's TTL, not by the session TTL; and a waiter's key, queued on
//! that short lease, must end on the session lease once it holds the lock.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail by panicking

use std::time::Duration;

use fencelock_core::DistributedLock;
use fencelock_etcd::EtcdLock;
use fencelock_testkit::etcd_server::EtcdCluster;
use fencelock_testkit::faults::held;
use fencelock_testkit::proxy::{FaultProxy, Mode};
use tokio::time::Instant;

/// Long on purpose: the dead waiter must not cost this.
const SESSION_TTL: Duration = Duration::from_secs(8);

/// The tests' members run with a 100 ms election timeout: etcd's minimum lease TTL, and so
/// the waiting lease's, is 1 s.
const WAITING_TTL: Duration = Duration::from_secs(1);

/// The keys under `dir`, oldest first, with the lease each rides on.
async fn queue(raw: &mut etcd_client::Client, dir: &str) -> Vec<(String, i64)> {
    let opts = etcd_client::GetOptions::new()
        .with_prefix()
        .with_sort(etcd_client::SortTarget::Create, etcd_client::SortOrder::Ascend);
    let r = raw.get(dir, Some(opts)).await.unwrap();
    r.kvs()
        .iter()
        .map(|kv| (String::from_utf8_lossy(kv.key()).into_owned(), kv.lease()))
        .collect()
}

/// Polls until the directory holds `n` keys (bounded).
async fn until_queued(raw: &mut etcd_client::Client, dir: &str, n: usize) -> Vec<(String, i64)> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let q = queue(raw, dir).await;
        if q.len() >= n {
            return q;
        }
        assert!(Instant::now() < deadline, "only {} keys queued: {q:?}", q.len());
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// A client connected through a proxy of its own, so that it can die as a SIGKILLed
/// process does: its connections reset (the server sees them close, nothing it still
/// sends gets through), its acquire aborted, its client dropped without `close()`.
async fn proxied(cluster: &EtcdCluster, query: &str) -> (FaultProxy, EtcdLock) {
    let proxy = FaultProxy::start(cluster.client_ports()[0]).await;
    let url = format!("etcd://127.0.0.1:{}?{query}", proxy.port());
    (proxy, EtcdLock::connect(&url).await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_waiter_delays_the_next_by_the_waiting_ttl_not_the_session_ttl() {
    let cluster = EtcdCluster::single();
    let query = format!("session_ttl={}s", SESSION_TTL.as_secs());
    let url = cluster.url(&query);
    let mut raw = etcd_client::Client::connect(cluster.endpoints(), None).await.unwrap();
    let dir = "/fencelock/k/";
    let holder = EtcdLock::connect(&url).await.unwrap();
    let (victim_proxy, victim) = proxied(&cluster, &query).await;
    // Connection and session up, as any client that ran before (the bench's victim too).
    victim.acquire("warm", &held()).await.unwrap().release().await.unwrap();
    let live = EtcdLock::connect(&url).await.unwrap();

    let lease = holder.acquire("k", &held()).await.unwrap();
    let victim_wait = tokio::spawn({
        let victim = victim.clone();
        async move { victim.acquire("k", &held()).await.map(drop) }
    });
    let queued = until_queued(&mut raw, dir, 2).await;
    let victim_key = queued[1].0.clone();
    let live_wait = tokio::spawn(async move {
        let l = live.acquire("k", &held()).await.unwrap();
        (Instant::now(), l, live)
    });
    until_queued(&mut raw, dir, 3).await;
    // Both waits in place, as a queued client is when the bench kills it: the victim
    // watches the holder's key and its own, the live waiter the two before it and its own.
    until_watchers(&cluster, 5).await;
    let on = queue(&mut raw, dir).await;
    let victim_session = victim.session_lease().await.unwrap();
    eprintln!("victim key {victim_key}, queue {on:?}, victim session {victim_session:x}");

    // The victim dies.
    victim_proxy.set(Mode::Reset);
    victim_wait.abort();
    let _ = victim_wait.await;
    drop(victim);

    let token = lease.token();
    let released = Instant::now();
    lease.release().await.unwrap();
    let (granted_at, next, _live) = tokio::time::timeout(SESSION_TTL * 2, live_wait)
        .await
        .expect("the live waiter was granted within two session TTLs")
        .unwrap();
    let delay = granted_at.saturating_duration_since(released);
    eprintln!("release → live waiter's grant: {delay:?}");
    assert!(next.token() > token);
    assert!(
        delay <= WAITING_TTL + Duration::from_secs(1),
        "the dead waiter delayed the live one by {delay:?} (session TTL {SESSION_TTL:?}, waiting TTL {WAITING_TTL:?})"
    );
    next.release().await.unwrap();
    drop(victim_proxy);
}

/// A waiter queues on the short waiting lease; once it holds the lock its key is on the
/// session lease, so holding longer than the waiting lease lives loses nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_granted_waiters_key_rides_on_the_session_past_the_waiting_ttl() {
    let cluster = EtcdCluster::single();
    let url = cluster.url("session_ttl=6s");
    let mut raw = etcd_client::Client::connect(cluster.endpoints(), None).await.unwrap();
    let dir = "/fencelock/k/";
    let holder = EtcdLock::connect(&url).await.unwrap();
    let waiter = EtcdLock::connect(&url).await.unwrap();
    let lease = holder.acquire("k", &held()).await.unwrap();
    let wait = tokio::spawn({
        let waiter = waiter.clone();
        async move { waiter.acquire("k", &held()).await.unwrap() }
    });
    until_queued(&mut raw, dir, 2).await;
    let session = waiter.session_lease().await.unwrap();
    // While queued, its key moves off the session lease onto the short waiting lease.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let q = queue(&mut raw, dir).await;
        if q[1].1 != session {
            break;
        }
        assert!(Instant::now() < deadline, "the queued key stayed on the session: {q:?}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    lease.release().await.unwrap();
    let mine = tokio::time::timeout(Duration::from_secs(5), wait)
        .await
        .unwrap()
        .unwrap();
    // Granted on the push, while its key may still be on the waiting lease: valid no
    // longer than that lease (never more than the server keeps the key).
    assert!(mine.remaining() <= WAITING_TTL, "{:?}", mine.remaining());
    // Its key moves onto the session lease at its first renewal, a third of the way
    // through that validity.
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let q = queue(&mut raw, dir).await;
        assert_eq!(q.len(), 1, "{q:?}");
        if q[0].1 == session {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the holder's key stayed off the session lease: {q:?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Past the waiting lease's TTL and its linger: it lapsed, the lock did not.
    tokio::select! {
        reason = mine.lost() => panic!("lost: {reason}"),
        _ = tokio::time::sleep(WAITING_TTL * 4) => {}
    }
    assert!(mine.is_held());
    assert!(mine.remaining() > Duration::from_secs(3), "{:?}", mine.remaining());
    let q = queue(&mut raw, dir).await;
    assert_eq!(q.len(), 1, "{q:?}");
    assert_eq!(q[0].1, session);
    mine.extend(Duration::from_secs(30)).await.unwrap();
    mine.release().await.unwrap();
    assert!(queue(&mut raw, dir).await.is_empty());
}

/// etcd's gauge of watchers on member 0.
fn watchers(cluster: &EtcdCluster) -> u64 {
    fencelock_testkit::etcd_server::metrics(cluster.client_ports()[0])
        .get("etcd_debugging_mvcc_watcher_total")
        .map_or(0, |v| *v as u64)
}

async fn until_watchers(cluster: &EtcdCluster, n: u64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while watchers(cluster) < n {
        assert!(Instant::now() < deadline, "{} watchers, not {n}", watchers(cluster));
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A waiter granted on the push whose requests stop reaching the server right then (a
/// pause or a one-way partition between its turn and its key's move onto the session):
/// its key expires with the waiting lease and the next waiter gets the lock — but only
/// after the first one's validity ran out, which was bounded by the waiting lease. Never
/// two holders at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiter_cut_off_between_its_turn_and_the_move_never_overlaps_the_next() {
    let cluster = EtcdCluster::single();
    let query = format!("session_ttl={}s&timeout=500ms", SESSION_TTL.as_secs());
    let url = cluster.url(&query);
    let holder = EtcdLock::connect(&url).await.unwrap();
    let (proxy, first) = proxied(&cluster, &query).await;
    let next = EtcdLock::connect(&url).await.unwrap();
    let lease = holder.acquire("k", &held()).await.unwrap();
    let base = watchers(&cluster);
    let first_wait = tokio::spawn({
        let first = first.clone();
        async move { first.acquire("k", &held()).await }
    });
    until_watchers(&cluster, base + 1).await;
    let next_wait = tokio::spawn({
        let next = next.clone();
        async move {
            let l = next.acquire("k", &held()).await.unwrap();
            (Instant::now(), l)
        }
    });
    until_watchers(&cluster, base + 3).await;
    // The first waiter still hears the server (its watch push comes), but nothing it sends
    // gets through: not its move, not its waiting lease's keep-alives.
    proxy.set_to_server(Mode::Blackhole);
    let token = lease.token();
    lease.release().await.unwrap();
    let (next_at, next_lease) = tokio::time::timeout(SESSION_TTL, next_wait)
        .await
        .expect("the next waiter got the lock within the session TTL")
        .unwrap();
    assert!(next_lease.token() > token);
    match tokio::time::timeout(Duration::from_millis(100), first_wait).await {
        Ok(Ok(Ok(first_lease))) => {
            assert!(
                first_lease.valid_until() <= next_at,
                "the cut-off waiter believed it held the lock until {:?} after the next one got it",
                first_lease.valid_until().saturating_duration_since(next_at)
            );
            assert!(first_lease.token() < next_lease.token());
            assert!(!first_lease.is_held());
        }
        // It hears the push and needs no request to be granted: were it not granted, the
        // test would check nothing (it passed so before this line, whatever the validity).
        other => panic!("the cut-off waiter was not granted: {other:?}"),
    }
    next_lease.release().await.unwrap();
    proxy.set_to_server(Mode::Pass);
}

/// Many waiters on the waiting lease at once, holding for a moment (some longer than the
/// move takes, some releasing before it lands): never two inside, tokens strictly
/// increasing in grant order, and the directory empty at the end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn contention_on_the_waiting_lease_keeps_exclusion_and_token_order() {
    use std::sync::Arc;
    let cluster = EtcdCluster::single();
    let url = cluster.url("session_ttl=8s");
    let mut raw = etcd_client::Client::connect(cluster.endpoints(), None).await.unwrap();
    let detector = Arc::new(fencelock_testkit::overlap::OverlapDetector::new());
    let mut tasks = Vec::new();
    for me in 0..6u64 {
        let (url, detector) = (url.clone(), Arc::clone(&detector));
        tasks.push(tokio::spawn(async move {
            let locks = EtcdLock::connect(&url).await.unwrap();
            for round in 0..15u64 {
                let lease = locks.acquire("k", &held()).await.unwrap();
                {
                    let _inside = detector.enter(lease.token());
                    assert!(lease.is_held());
                    tokio::time::sleep(Duration::from_millis((me * 7 + round * 3) % 12)).await;
                    assert!(lease.is_held());
                }
                lease.release().await.unwrap();
            }
            locks.close().await.unwrap();
        }));
    }
    for t in tasks {
        tokio::time::timeout(Duration::from_secs(60), t).await.unwrap().unwrap();
    }
    assert_eq!(detector.overlaps(), 0, "two holders at once");
    assert!(
        detector.token_regressions().is_empty(),
        "{:?}",
        detector.token_regressions()
    );
    assert_eq!(detector.entries().len(), 90);
    assert!(queue(&mut raw, "/fencelock/k/").await.is_empty());
}

/// Polls (bounded) until `ok` holds for the directory's keys.
async fn until_dir(raw: &mut etcd_client::Client, dir: &str, what: &str, ok: impl Fn(&[(String, i64)]) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let q = queue(raw, dir).await;
        if ok(&q) {
            return;
        }
        assert!(Instant::now() < deadline, "{what}: {q:?}");
        tokio::time::sleep(Duration::from_millis(5)).await; // polling a condition, bounded
    }
}

/// A waiter whose link to etcd is slow (200 ms each way: a 400 ms round trip, a client in
/// another region) but steady. Before the waiting lease its grant was valid for the
/// session's validity (8 s here) and held as long as it liked. Now the grant is valid no
/// longer than the waiting lease (1 s here, 2 s on a stock etcd) from its last confirmed
/// keep-alive, sent a round trip or more ago, and its first renewal waits for the move,
/// another round trip: the lock must still not be lost while the link stays up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiter_on_a_slow_link_keeps_the_lock_it_was_granted() {
    let cluster = EtcdCluster::single();
    let query = "session_ttl=8s&timeout=3s";
    let url = cluster.url(query);
    let mut raw = etcd_client::Client::connect(cluster.endpoints(), None).await.unwrap();
    let dir = "/fencelock/k/";
    let holder = EtcdLock::connect(&url).await.unwrap();
    let proxy = FaultProxy::start(cluster.client_ports()[0]).await;
    let waiter = EtcdLock::connect(&format!("etcd://127.0.0.1:{}?{query}", proxy.port()))
        .await
        .unwrap();
    waiter.acquire("warm", &held()).await.unwrap().release().await.unwrap();
    let session = waiter.session_lease().await.unwrap();
    proxy.set(Mode::Delay(Duration::from_millis(200)));

    let mut lost = 0;
    for round in 0..5 {
        let lease = holder.acquire("k", &held()).await.unwrap();
        let wait = tokio::spawn({
            let waiter = waiter.clone();
            async move { waiter.acquire("k", &held()).await }
        });
        // Queued, and on the waiting lease (not the session's).
        until_dir(
            &mut raw,
            dir,
            "the waiter's key never moved onto the waiting lease",
            |q| q.len() == 2 && q[1].1 != session,
        )
        .await;
        lease.release().await.unwrap();
        let mine = tokio::time::timeout(Duration::from_secs(20), wait)
            .await
            .expect("the waiter was served")
            .unwrap()
            .unwrap();
        let at_grant = mine.remaining();
        let granted = Instant::now();
        tokio::select! {
            reason = mine.lost() => {
                let q = queue(&mut raw, dir).await;
                eprintln!(
                    "round {round}: the slow waiter's grant (valid for {at_grant:?} at the grant) was lost after {:?}: {reason}; on the server: {q:?} (session {session:x})",
                    granted.elapsed()
                );
                lost += 1;
            }
            _ = tokio::time::sleep(Duration::from_secs(3)) => {}
        }
        let _ = mine.release().await;
        until_dir(&mut raw, dir, "the directory did not empty", <[_]>::is_empty).await;
    }
    assert_eq!(lost, 0, "grants lost on a steady 400 ms round trip (session TTL 8 s)");
    proxy.set(Mode::Pass);
    waiter.close().await.unwrap();
    holder.close().await.unwrap();
}

/// A new user's trial: a waiter whose queue key an operator deleted (`etcdctl del`) while
/// it waited was still granted on the push of its predecessor's delete — a grant on the
/// push reads nothing — at the same moment as the waiter behind it, which rightly got the
/// lock: both commands ran at once (3 of 18 runs), until the first one's key move found
/// its key gone. The wait must notice its own key go, and queue again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiter_whose_key_was_deleted_by_hand_is_not_granted_beside_the_next() {
    let cluster = EtcdCluster::single();
    let url = cluster.url("session_ttl=30s");
    let mut raw = etcd_client::Client::connect(cluster.endpoints(), None).await.unwrap();
    let dir = "/fencelock/k/";
    let holder = EtcdLock::connect(&url).await.unwrap();
    let (first, next) = (
        EtcdLock::connect(&url).await.unwrap(),
        EtcdLock::connect(&url).await.unwrap(),
    );
    let lease = holder.acquire("k", &held()).await.unwrap();
    let mut first_wait = tokio::spawn({
        let first = first.clone();
        async move { first.acquire("k", &held()).await }
    });
    let first_key = until_queued(&mut raw, dir, 2).await[1].0.clone();
    let next_wait = tokio::spawn({
        let next = next.clone();
        async move { next.acquire("k", &held()).await }
    });
    until_queued(&mut raw, dir, 3).await;
    // Both waits watch the keys before theirs (one and two of them) and their own. The
    // steady state, every watch synced (etcd's slow-watcher gauge at 0): a delete that
    // lands while a wait's own watch is still unsynced (up to 100 ms after it was set up)
    // can be pushed after its predecessor's, and that wait is then caught by its key's
    // move instead (etcd.md).
    until_watchers(&cluster, 5).await;
    let slow = || {
        fencelock_testkit::etcd_server::metrics(cluster.client_ports()[0])
            .get("etcd_debugging_mvcc_slow_watcher_total")
            .map_or(0.0, |v| *v)
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while slow() > 0.0 {
        assert!(Instant::now() < deadline, "watchers still unsynced");
        tokio::time::sleep(Duration::from_millis(10)).await; // polling a condition, bounded
    }
    raw.delete(first_key.as_str(), None).await.unwrap();
    lease.release().await.unwrap();
    let granted = tokio::time::timeout(Duration::from_secs(10), next_wait)
        .await
        .expect("the next waiter was granted")
        .unwrap()
        .unwrap();
    // A wrongly granted first waiter returns within a round trip of the same push: 500 ms
    // is a bounded window to see it in, not a synchronisation.
    let beside = tokio::time::timeout(Duration::from_millis(500), &mut first_wait).await;
    assert!(
        beside.is_err(),
        "the waiter whose key was deleted was granted beside the next holder: {:?}",
        beside.map(|r| r.map(|l| l.map(|l| l.token())))
    );
    let token = granted.token();
    granted.release().await.unwrap();
    let later = tokio::time::timeout(Duration::from_secs(10), first_wait)
        .await
        .expect("the first waiter queued again and got the lock after the next one")
        .unwrap()
        .unwrap();
    assert!(later.token() > token);
    later.release().await.unwrap();
}

/// A client (through a proxy, `session_ttl=8s`) whose waiting lease was **superseded**
/// while a key of its still rides on it: a waiter on `s1` queues on the waiting lease
/// `old`; the link then slows (150 ms each way) so that `old`'s 1 s TTL is too short for
/// it, and a waiter on a further lock gets a new, longer waiting lease `new` — `old` is
/// kept alive for `s1`'s waiter. Each lock is held by a key the test puts without a lease,
/// so the client waits until it closes. The link is fast again on return.
struct Superseded {
    proxy: FaultProxy,
    client: EtcdLock,
    waits: Vec<tokio::task::JoinHandle<fencelock_core::Result<fencelock_core::Lease>>>,
    session: i64,
    old: i64,
    new: i64,
}

/// A client with a session (30 s TTL: a revoke from outside is not noticed by a keep-alive,
/// every 10 s, before the test's next step) and one waiter on `s1` riding its waiting
/// lease: what the lease-naming and `close()` tests start from.
struct Queued {
    cluster: EtcdCluster,
    raw: etcd_client::Client,
    client: EtcdLock,
    session: i64,
    waits: Vec<tokio::task::JoinHandle<fencelock_core::Result<fencelock_core::Lease>>>,
    waiting: i64,
}

async fn one_waiter_riding_its_waiting_lease() -> Queued {
    let cluster = EtcdCluster::single();
    let url = cluster.url("session_ttl=30s");
    let mut raw = etcd_client::Client::connect(cluster.endpoints(), None).await.unwrap();
    let client = EtcdLock::connect(&url).await.unwrap();
    client.acquire("warm", &held()).await.unwrap().release().await.unwrap();
    let session = client.session_lease().await.unwrap();
    let mut waits = Vec::new();
    let waiting = wait_behind_the_test(&mut raw, &client, session, "s1", &mut waits).await;
    Queued {
        cluster,
        raw,
        client,
        session,
        waits,
        waiting,
    }
}

/// One waiter of `client` on lock `name`, behind a key of the test's; returns the lease its
/// queue key rides on once it left the session lease.
async fn wait_behind_the_test(
    raw: &mut etcd_client::Client,
    client: &EtcdLock,
    session: i64,
    name: &str,
    waits: &mut Vec<tokio::task::JoinHandle<fencelock_core::Result<fencelock_core::Lease>>>,
) -> i64 {
    let dir = format!("/fencelock/{name}/");
    raw.put(format!("{dir}holder"), "", None).await.unwrap();
    waits.push(tokio::spawn({
        let (client, name) = (client.clone(), name.to_owned());
        async move { client.acquire(&name, &held()).await }
    }));
    let what = format!("{name}: the waiter's key never moved onto a waiting lease");
    until_dir(raw, &dir, &what, |q| q.len() == 2 && q[1].1 != session).await;
    queue(raw, &dir).await[1].1
}

async fn superseded(cluster: &EtcdCluster, raw: &mut etcd_client::Client) -> Superseded {
    let (proxy, client) = proxied(cluster, "session_ttl=8s&timeout=3s").await;
    client.acquire("warm", &held()).await.unwrap().release().await.unwrap();
    let session = client.session_lease().await.unwrap();
    let mut waits = Vec::new();
    let old = wait_behind_the_test(raw, &client, session, "s1", &mut waits).await;
    proxy.set(Mode::Delay(Duration::from_millis(150)));
    // The new waiting lease comes once a keep-alive of `old` measured the slow link; until
    // then a waiter still queues on `old`. Bounded: a keep-alive goes every 333 ms.
    for n in 2..=12 {
        let on = wait_behind_the_test(raw, &client, session, &format!("s{n}"), &mut waits).await;
        if on != old {
            proxy.set(Mode::Pass);
            return Superseded {
                proxy,
                client,
                waits,
                session,
                old,
                new: on,
            };
        }
    }
    panic!("the waiting lease {old:x} was never replaced on a 300 ms round trip");
}

/// The keys under `/fencelock/` that ride on a lease (the test's own holders ride on none).
async fn keys_on_leases(raw: &mut etcd_client::Client) -> Vec<(String, i64)> {
    let mut q = queue(raw, "/fencelock/").await;
    q.retain(|(_, lease)| *lease != 0);
    q
}

/// `close()` must leave nothing of the client on the server: no lease it granted (the
/// session lease, the current waiting lease, one superseded while a key still rode on it)
/// and no key it put — also one put on the superseded lease that landed late (a queue put
/// whose answer was lost, put here by the test under that lease).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_revokes_every_lease_of_the_client_a_superseded_waiting_lease_too() {
    let cluster = EtcdCluster::single();
    let mut raw = etcd_client::Client::connect(cluster.endpoints(), None).await.unwrap();
    let s = superseded(&cluster, &mut raw).await;
    let late = etcd_client::PutOptions::new().with_lease(s.old);
    raw.put("/fencelock/s1/late", "", Some(late)).await.unwrap();

    tokio::time::timeout(Duration::from_secs(10), s.client.close())
        .await
        .expect("close is bounded")
        .expect("close");
    let alive: Vec<String> = raw
        .leases()
        .await
        .unwrap()
        .leases()
        .iter()
        .map(|l| format!("{:x}", l.id()))
        .collect();
    let left = keys_on_leases(&mut raw).await;
    assert!(
        alive.is_empty() && left.is_empty(),
        "after close(), leases still alive: {alive:?}, keys left: {left:?} (session {:x}, superseded waiting lease {:x}, current one {:x})",
        s.session,
        s.old,
        s.new
    );
    for w in s.waits {
        let ended = tokio::time::timeout(Duration::from_secs(5), w)
            .await
            .expect("the wait ended")
            .unwrap();
        assert!(matches!(ended, Err(fencelock_core::LockError::Closed)), "{ended:?}");
    }
    drop(s.proxy);
}

/// The session's key check deletes a key nobody of ours claims on every lease a key of ours
/// may ride on — also on a waiting lease that was superseded but is still kept alive for
/// the waiters on it (before, it listed only the current one, and a stray there stayed as
/// long as those waiters waited).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_key_check_deletes_a_stray_key_on_a_superseded_waiting_lease() {
    let cluster = EtcdCluster::single();
    let mut raw = etcd_client::Client::connect(cluster.endpoints(), None).await.unwrap();
    let s = superseded(&cluster, &mut raw).await;
    let late = etcd_client::PutOptions::new().with_lease(s.old);
    raw.put("/fencelock/s1/late", "", Some(late)).await.unwrap();
    // A key check every third of the 8 s session TTL: two periods and a margin.
    until_dir(
        &mut raw,
        "/fencelock/s1/",
        &format!(
            "the stray key on the superseded waiting lease {:x} stayed (current one {:x})",
            s.old, s.new
        ),
        |q| !q.iter().any(|(k, _)| k.ends_with("/late")),
    )
    .await;
    // Deleted by the check, not by a lapse of the lease: the waiter's key is still on it.
    let q = queue(&mut raw, "/fencelock/s1/").await;
    assert_eq!(q.len(), 2, "{q:?}");
    assert_eq!(q[1].1, s.old, "the waiter's key left the superseded lease: {q:?}");
    s.client.close().await.unwrap();
}

/// A queue put refused "lease not found" because the **session** lease is gone (revoked
/// from outside) while a waiting lease is kept alive: the error names the session lease,
/// not the waiting lease (which lives on), and the next try starts a new session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queue_put_refused_for_the_session_lease_names_the_session_lease() {
    let Queued {
        cluster: _cluster,
        mut raw,
        client,
        session,
        waits: _waits,
        waiting,
    } = one_waiter_riding_its_waiting_lease().await;

    raw.lease_revoke(session).await.unwrap();
    let refused = client.try_acquire("free", &held()).await;
    let e = refused.expect_err("a put on a revoked session lease");
    let text = e.to_string();
    assert!(
        text.contains(&format!("session lease {session:x} was gone")) && !text.contains("waiting lease"),
        "the error blames the wrong lease (session {session:x} revoked, waiting lease {waiting:x} alive): {text}"
    );
    assert!(e.is_temporary(), "{e:?}");
    let alive = raw.lease_time_to_live(waiting, None).await.unwrap().ttl();
    assert!(alive >= 0, "the waiting lease {waiting:x} is gone");
    let again = client.try_acquire("free", &held()).await.expect("a new session");
    assert!(again.is_some(), "the free lock was not granted");
    assert_ne!(client.session_lease().await, Some(session));
    drop(again);
    client.close().await.unwrap();
}

/// The other side: a queue put refused because the **waiting** lease is gone (revoked from
/// outside while it lingers after its last waiter left) names the waiting lease, and the
/// session lives on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queue_put_refused_for_the_waiting_lease_names_the_waiting_lease() {
    let Queued {
        cluster: _cluster,
        mut raw,
        client,
        session,
        mut waits,
        waiting,
    } = one_waiter_riding_its_waiting_lease().await;
    // The waiter gives up; its waiting lease lingers (kept alive, still handed out) a TTL.
    waits.pop().unwrap().abort();
    until_dir(&mut raw, "/fencelock/s1/", "the given-up waiter's key stayed", |q| {
        q.len() == 1
    })
    .await;

    raw.lease_revoke(waiting).await.unwrap();
    let refused = client.try_acquire("s1", &held()).await;
    let e = refused.expect_err("a queue put on a revoked waiting lease");
    let text = e.to_string();
    assert!(
        text.contains(&format!("waiting lease {waiting:x} was gone")) && !text.contains("session lease"),
        "the error blames the wrong lease (waiting lease {waiting:x} revoked, session {session:x} alive): {text}"
    );
    assert!(e.is_temporary(), "{e:?}");
    assert_eq!(client.session_lease().await, Some(session), "the session was given up");
    let again = client.try_acquire("s1", &held()).await.expect("queued on the session");
    assert!(again.is_none(), "a held lock was granted");
    client.close().await.unwrap();
}

/// A session lost (its lease revoked from outside) and replaced by a new one while a waiter
/// of the old one still rides on the old session's waiting lease: `close()` — which ends
/// the current session — must leave no lease of the client alive, the old session's
/// waiting lease included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_leaves_no_waiting_lease_of_a_session_that_was_replaced() {
    let Queued {
        cluster: _cluster,
        mut raw,
        client,
        session,
        waits: _waits,
        waiting,
    } = one_waiter_riding_its_waiting_lease().await;

    raw.lease_revoke(session).await.unwrap();
    // The next acquire finds the session lease gone and starts a new session.
    let free = client.acquire("free", &held()).await.unwrap();
    let new_session = client.session_lease().await.unwrap();
    assert_ne!(new_session, session);
    free.release().await.unwrap();

    tokio::time::timeout(Duration::from_secs(10), client.close())
        .await
        .expect("close is bounded")
        .expect("close");
    let alive: Vec<String> = raw
        .leases()
        .await
        .unwrap()
        .leases()
        .iter()
        .map(|l| format!("{:x}", l.id()))
        .collect();
    let left = keys_on_leases(&mut raw).await;
    assert!(
        alive.is_empty() && left.is_empty(),
        "after close(), leases still alive: {alive:?}, keys left: {left:?} (old session {session:x}, its waiting lease {waiting:x}, new session {new_session:x})"
    );
}
