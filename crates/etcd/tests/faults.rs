//! etcd fault tests on a real 3-member cluster: the leader killed while a lock is held and
//! others wait, 2 of 3 members down, a session lease revoked from outside; plus the
//! keep-alive cost of 1,000 held locks and the round trips of one lock.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail by panicking

use std::sync::Arc;
use std::time::Duration;

use fencelock_core::{DistributedLock, LostReason};
use fencelock_etcd::EtcdLock;
use fencelock_testkit::etcd_server::EtcdCluster;
use fencelock_testkit::faults::{self, held};
use fencelock_testkit::overlap::OverlapDetector;
use tokio::time::Instant;

const SLACK: Duration = Duration::from_secs(3);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_leader_keeps_the_lock_and_waiters_proceed() {
    let mut cluster = EtcdCluster::start(3);
    let url = cluster.url("session_ttl=2s&timeout=1s");
    let holder = EtcdLock::connect(&url).await.unwrap();
    let lease = holder.acquire("k", &held()).await.unwrap();
    let detector = Arc::new(OverlapDetector::new());
    let _first_inside = detector.enter(lease.token());
    let connect = |url: String| async move { EtcdLock::connect(&url).await.unwrap() };
    let waiters = faults::spawn_waiters(2, "k", &url, connect, &detector);
    let leader = cluster.wait_for_leader(Duration::from_secs(10));
    cluster.kill(leader);
    let new_leader = cluster.wait_for_leader(Duration::from_secs(10));
    assert_ne!(new_leader, leader);
    // Hold across more than a whole session TTL after the failover: the keep-alive must
    // have moved to a live member.
    tokio::select! {
        reason = lease.lost() => panic!("the lock was lost in the leader change: {reason}"),
        _ = tokio::time::sleep(Duration::from_secs(3)) => {}
    }
    assert!(lease.is_held());
    drop(_first_inside);
    lease.release().await.expect("release after the failover");
    faults::assert_waiters_took_turns(waiters, &detector, 3).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_of_three_down_is_unavailable_within_the_bound() {
    let mut cluster = EtcdCluster::start(3);
    let locks = EtcdLock::connect(&cluster.url("timeout=500ms")).await.unwrap();
    locks.acquire("warm", &held()).await.unwrap().release().await.unwrap();
    cluster.kill(0);
    cluster.kill(1);
    let within = Duration::from_millis(500) * 2 + SLACK;
    faults::assert_try_acquire_unavailable(&locks, "k", &held(), Some(within)).await;
    let wait = Duration::from_secs(1);
    faults::assert_acquire_gives_up(&locks, "k", &held(), wait, SLACK).await;
    let start = Instant::now();
    assert!(EtcdLock::connect(&cluster.url("timeout=500ms")).await.is_err());
    assert!(start.elapsed() < SLACK, "connect took {:?}", start.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_revoked_from_outside_is_reported_lost() {
    let cluster = EtcdCluster::start(3);
    let url = cluster.url("session_ttl=3s");
    let holder = EtcdLock::connect(&url).await.unwrap();
    let lease = holder.acquire("k", &held()).await.unwrap();
    let id = holder.session_lease().await.expect("a live session");
    let endpoints: Vec<String> = cluster.endpoints().iter().map(|e| format!("http://{e}")).collect();
    let mut admin = etcd_client::Client::connect(endpoints, None).await.unwrap();
    let revoked_at = Instant::now();
    admin.lease_revoke(id).await.unwrap();
    let reason = tokio::time::timeout(Duration::from_secs(3) + SLACK, lease.lost())
        .await
        .expect("the holder was told");
    assert!(matches!(reason, LostReason::Backend(_)), "{reason:?}");
    assert!(
        revoked_at.elapsed() <= Duration::from_secs(1) + SLACK,
        "told after {:?}",
        revoked_at.elapsed()
    );
    let other = EtcdLock::connect(&url).await.unwrap();
    let next = other
        .try_acquire("k", &held())
        .await
        .unwrap()
        .expect("the revoked lock is free");
    assert!(next.token() > lease.token());
    next.release().await.unwrap();
    // A new lock on the first instance gets a new session.
    holder
        .acquire("k2", &held())
        .await
        .expect("a fresh session")
        .release()
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_locks_share_one_keep_alive_stream() {
    let cluster = EtcdCluster::single();
    let locks = EtcdLock::connect(&cluster.url("session_ttl=3s")).await.unwrap();
    let mut leases = Vec::new();
    for i in 0..1000 {
        leases.push(locks.acquire(&format!("many-{i}"), &held()).await.unwrap());
    }
    assert_eq!(locks.leases_granted(), 1, "one session lease for every lock");
    let before = locks.keepalive_requests();
    let grants_before = cluster.grpc_calls(0, "LeaseGrant").unwrap();
    let txns_before = cluster.grpc_calls(0, "Txn").unwrap();
    let checks_before = cluster.grpc_calls(0, "LeaseTimeToLive").unwrap();
    let period = Duration::from_secs(4);
    tokio::time::sleep(period).await; // the time under test: renewals happen meanwhile
    let keepalives = locks.keepalive_requests() - before;
    // One every third of the 3 s TTL: about 4 in 4 s, not 1000 × 4.
    assert!(
        (2..=8).contains(&keepalives),
        "{keepalives} keep-alive requests for 1000 locks in {period:?}"
    );
    assert_eq!(cluster.grpc_calls(0, "LeaseGrant").unwrap(), grants_before);
    assert_eq!(
        cluster.grpc_calls(0, "Txn").unwrap(),
        txns_before,
        "renewal must not touch the lock keys"
    );
    // The key check (are our keys still there?) is one listing per keep-alive, not per lock.
    let checks = cluster.grpc_calls(0, "LeaseTimeToLive").unwrap() - checks_before;
    assert!(
        (2..=8).contains(&checks),
        "{checks} key checks for 1000 locks in {period:?}"
    );
    assert!(leases.iter().all(|l| l.is_held()));
    for l in leases {
        l.release().await.unwrap();
    }
}

/// Every key under a lock's queue directory (`/KEY/`), read directly.
async fn queue_keys(raw: &mut etcd_client::Client, dir: &str) -> Vec<String> {
    let all = etcd_client::GetOptions::new().with_all_keys().with_keys_only();
    let r = raw.get("", Some(all)).await.unwrap();
    r.kvs()
        .iter()
        .map(|kv| String::from_utf8_lossy(kv.key()).into_owned())
        .filter(|k| k.contains(dir))
        .collect()
}

/// A lock taken again and again reuses its queue key's name instead of leaving a trail of
/// deleted keys (which etcd's owner range read walks until the next compaction).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_acquires_reuse_the_queue_key_name() {
    let cluster = EtcdCluster::single();
    let locks = EtcdLock::connect(&cluster.url("")).await.unwrap();
    let mut raw = etcd_client::Client::connect(cluster.endpoints(), None).await.unwrap();
    let mut names = std::collections::BTreeSet::new();
    for _ in 0..20 {
        let lease = locks.acquire("k", &held()).await.unwrap();
        let queue = queue_keys(&mut raw, "/k/").await;
        assert_eq!(queue.len(), 1, "{queue:?}");
        names.extend(queue);
        lease.release().await.unwrap();
    }
    assert_eq!(names.len(), 1, "one name for 20 sequential grants: {names:?}");
    // Two at once from one instance: two names (the second queues behind the first).
    let first = locks.acquire("k", &held()).await.unwrap();
    let second = tokio::spawn({
        let locks = locks.clone();
        async move { locks.acquire("k", &held()).await.unwrap() }
    });
    tokio::time::timeout(std::time::Duration::from_secs(10), async {
        loop {
            if queue_keys(&mut raw, "/k/").await.len() == 2 {
                return;
            }
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("the second acquire queued");
    let first_token = first.token();
    first.release().await.unwrap();
    let second = second.await.unwrap();
    assert!(second.token() > first_token);
    second.release().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_uncontended_lock_costs_two_requests() {
    let cluster = EtcdCluster::single();
    let locks = EtcdLock::connect(&cluster.url("")).await.unwrap();
    locks.acquire("warm", &held()).await.unwrap().release().await.unwrap(); // starts the session
    let calls = |m: &str| cluster.grpc_calls(0, m).unwrap();
    let (txn, delete, range, grant, revoke) = (
        calls("Txn"),
        calls("DeleteRange"),
        calls("Range"),
        calls("LeaseGrant"),
        calls("LeaseRevoke"),
    );
    const N: u64 = 20;
    for _ in 0..N {
        locks.acquire("k", &held()).await.unwrap().release().await.unwrap();
    }
    // One transaction to acquire (put if the lock's directory is empty), one to release
    // (delete guarded by our key's create revision).
    assert_eq!(calls("Txn") - txn, 2 * N, "two transactions per lock");
    assert_eq!(calls("DeleteRange") - delete, 0);
    assert_eq!(calls("Range") - range, 0);
    assert_eq!(calls("LeaseGrant") - grant, 0);
    assert_eq!(calls("LeaseRevoke") - revoke, 0);
}

/// etcd's count of key-range reads (`etcd_mvcc_range_total`), which also counts the range
/// each transaction compare reads.
fn mvcc_ranges(cluster: &EtcdCluster) -> u64 {
    let body = fencelock_testkit::process::http(cluster.client_ports()[0], "GET", "/metrics", "").unwrap();
    body.lines()
        .find_map(|l| l.strip_prefix("etcd_mvcc_range_total ")?.trim().parse::<f64>().ok())
        .unwrap() as u64
}

/// Issue 14: the uncontended acquire's transaction is the raw minimum's create-if-absent
/// (one compare, "the lock's directory is empty", and the put), with no owner read beside
/// it; the release's is the guarded delete (one compare). Two reads at the server per lock,
/// as the raw minimum's two compares.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_uncontended_lock_reads_no_more_than_the_raw_minimum() {
    let cluster = EtcdCluster::single();
    let locks = EtcdLock::connect(&cluster.url("")).await.unwrap();
    locks.acquire("warm", &held()).await.unwrap().release().await.unwrap(); // starts the session
    const N: u64 = 20;
    let before = mvcc_ranges(&cluster);
    for _ in 0..N {
        locks.acquire("k", &held()).await.unwrap().release().await.unwrap();
    }
    assert_eq!(
        mvcc_ranges(&cluster) - before,
        2 * N,
        "one compare per transaction, no owner read"
    );
    locks.close().await.unwrap();
}

/// The URL names a port where an HTTP/1 server answers (the wrong service): a configuration
/// error naming the cause, at once — not `Unavailable` after the connect's bound with the
/// HTTP/2 client's dump ("h2 protocol error … GoAway(FRAME_SIZE_ERROR)", exit 69), as a
/// review found. Redis and PostgreSQL already say so (exit 78, docs/cli.md).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_port_answering_another_protocol_is_a_configuration_error() {
    let port = fencelock_testkit::ports::http_port();
    let start = Instant::now();
    let e = EtcdLock::connect(&format!("etcd://127.0.0.1:{port}"))
        .await
        .unwrap_err();
    let text = fencelock_core::error::one_line(&e);
    assert!(matches!(e, fencelock_core::LockError::InvalidConfig { .. }), "{text}");
    assert!(text.contains("does not speak etcd's gRPC"), "{text}");
    // Not followed by the connect's own failure, which says the opposite ("unavailable").
    assert!(!text.contains("unavailable") && !text.contains("unreachable"), "{text}");
    assert!(start.elapsed() < Duration::from_secs(5), "took {:?}", start.elapsed());
}

/// Nothing listens on the port: one readable line — the URL and the causes' own texts
/// ("Connection refused"), not tonic's Debug dump ("source: tonic::transport::Error(
/// Transport, ConnectError(… Os { code: 111, … }))"), as a new-user trial saw.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_connection_is_one_readable_line() {
    let closed = fencelock_testkit::ports::closed_port(); // refuses while held
    let port = closed.port();
    let e = EtcdLock::connect(&format!("etcd://127.0.0.1:{port}?connect_timeout=2s"))
        .await
        .unwrap_err();
    let text = fencelock_core::error::one_line(&e);
    assert!(e.is_temporary(), "{text}");
    assert!(
        text.contains(&format!("127.0.0.1:{port}")),
        "names the endpoint: {text}"
    );
    assert!(text.to_lowercase().contains("connection refused"), "{text}");
    for dump in ["tonic::", "Os {", "ConnectError(", "code: '", "kind:"] {
        assert!(!text.contains(dump), "no Debug dump ({dump}): {text}");
    }
}

// The CLI's `--wait` running out while the server was down exited 75, "held by someone
// else", where a script retries on 69. A queued waiter's stream breaks, and every read
// after it fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiter_whose_server_dies_is_told_unavailable_not_timed_out() {
    let mut cluster = EtcdCluster::start(1);
    let url = cluster.url("timeout=500ms");
    let holder = EtcdLock::connect(&url).await.unwrap();
    let waiter = EtcdLock::connect(&url).await.unwrap();
    let wait = Duration::from_secs(4);
    faults::assert_outage_while_waiting_is_unavailable(&holder, &waiter, || cluster.kill(0), wait, SLACK).await;
}

// The server stops answering without closing its connections (hung, SIGSTOPped) while a
// waiter is queued: its wait must end `Unavailable`, not `Timeout` ("held by someone
// else", CLI exit 75). Default options.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiter_whose_server_hangs_is_told_unavailable_not_timed_out() {
    let cluster = EtcdCluster::start(1);
    let url = cluster.url("");
    let holder = EtcdLock::connect(&url).await.unwrap();
    let waiter = EtcdLock::connect(&url).await.unwrap();
    let wait = Duration::from_secs(4);
    faults::assert_outage_while_waiting_is_unavailable(&holder, &waiter, || cluster.pause(0), wait, SLACK).await;
    cluster.resume(0);
}
