//! A URL whose endpoints are members of two different etcd clusters: refused at connect
//! when both answer; when one was down at connect, no grant ever comes from it.
//!
//! Two clusters that each hold their own copy of a lock would each grant it — mutual
//! exclusion and token order are gone as requests alternate between them.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail by panicking

use std::future::Future;

use fencelock_core::{DistributedLock, Lease, LockError, LockOptions};
use fencelock_etcd::EtcdLock;
use fencelock_testkit::etcd_server::EtcdCluster;
use fencelock_testkit::keys::unique_key;

/// Two independent single-member clusters, `a` and `b`, and what `connect` makes of the
/// URL `etcd://{a's member},{b's member}{query}` while `b` is down — so the connect cannot
/// check it — returned with `b` restarted: a client whose requests are balanced onto a
/// member of another cluster than the one its connect met.
async fn through_mixed_url<T, F, Fut>(query: &str, connect: F) -> (EtcdCluster, EtcdCluster, T)
where
    F: FnOnce(String) -> Fut,
    Fut: Future<Output = T>,
{
    let (a, mut b) = (EtcdCluster::single(), EtcdCluster::single());
    let (ea, eb) = (a.endpoints()[0].clone(), b.endpoints()[0].clone());
    b.kill(0);
    let connected = connect(format!("etcd://{ea},{eb}{query}")).await;
    b.restart(0);
    (a, b, connected)
}

/// `key` acquired through a mixed URL ([`through_mixed_url`]), tried up to 40 times: a
/// try answered by the other cluster must say so (`InvalidConfig`). `who` names the lock
/// in a failure.
async fn granted_through_mixed(lock: &EtcdLock, key: &str, opts: &LockOptions, who: &str) -> Lease {
    let mut tries = 0;
    loop {
        tries += 1;
        match lock.try_acquire(key, opts).await {
            Ok(Some(g)) => return g,
            Ok(None) => panic!("{who}: {key} is nobody else's"),
            Err(e) if tries < 40 => assert!(matches!(e, LockError::InvalidConfig { .. }), "{e}"),
            Err(e) => panic!("{who}: not granted in 40 tries: {e}"),
        }
    }
}

/// Releases `g`, held through a mixed URL: its delete may be balanced onto the other
/// cluster, and is then refused (`InvalidConfig`); the key expires with its lease.
async fn release_or_refused(g: Lease) {
    if let Err(e) = g.release().await {
        assert!(matches!(e, LockError::InvalidConfig { .. }), "{e}");
    }
}

/// (a) Two independent single-member clusters in one URL: `InvalidConfig` naming both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoints_of_two_clusters_are_refused_at_connect() {
    let (a, b) = (EtcdCluster::single(), EtcdCluster::single());
    let (ea, eb) = (a.endpoints()[0].clone(), b.endpoints()[0].clone());
    let url = format!("etcd://{ea},{eb}");
    let e = EtcdLock::connect(&url)
        .await
        .expect_err("a URL naming two clusters must be refused");
    assert!(matches!(e, LockError::InvalidConfig { .. }), "{e}");
    let text = e.to_string();
    assert!(text.contains(&ea) && text.contains(&eb), "names both endpoints: {text}");
    assert!(text.contains("different clusters"), "{text}");
    // One cluster's members in one URL still connect.
    EtcdLock::connect(&a.url("")).await.unwrap();
}

/// (b) The second endpoint is down at connect, so it cannot be checked then; started
/// afterwards (a cluster of its own), whatever answers from it is refused: while the lock
/// is held on the first cluster, no acquire through the mixed URL is ever granted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_of_another_cluster_met_later_never_grants() {
    let (a, _b, mixed) = through_mixed_url(
        "?timeout=2s",
        |url| async move { EtcdLock::connect(&url).await.unwrap() },
    )
    .await;
    let holder = EtcdLock::connect(&a.url("")).await.unwrap();
    let key = unique_key("mixed");
    let held = holder.acquire(&key, &LockOptions::new()).await.unwrap();
    let (mut refused, mut contended, mut other) = (0, 0, 0);
    for i in 0..40 {
        match mixed.try_acquire(&key, &LockOptions::new()).await {
            Ok(Some(g)) => panic!(
                "try {i}: granted token {} beside the holder's {} (another cluster answered)",
                g.token(),
                held.token()
            ),
            Err(LockError::InvalidConfig { message, .. }) => {
                assert!(message.contains("different cluster"), "{message}");
                refused += 1;
            }
            Ok(None) => contended += 1,
            Err(e) => {
                eprintln!("try {i}: {e}");
                other += 1;
            }
        }
    }
    eprintln!("refused {refused}, contended {contended}, other errors {other}");
    assert!(
        refused > 0,
        "no request reached the other cluster in 40 tries; the test proved nothing"
    );
    held.release().await.unwrap();
}

/// (c) An *error* answer carries no header, so a queue put that reaches the other cluster
/// and is refused there ("lease not found": our leases exist only in the first cluster)
/// cannot be told by its header. It must still say what happened — a member of another
/// cluster answered — not that our session lease "was gone" (which also ended a healthy
/// session). Both the session lease (auto-renewed) and a lock's own lease (auto_renew off).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusal_from_another_cluster_says_so() {
    let (a, _b, mixed) = through_mixed_url(
        "?timeout=2s",
        |url| async move { EtcdLock::connect(&url).await.unwrap() },
    )
    .await;
    let holder = EtcdLock::connect(&a.url("")).await.unwrap();
    let key = unique_key("mixed-refusal");
    let held = holder.acquire(&key, &LockOptions::new()).await.unwrap();
    for opts in [LockOptions::new(), LockOptions::new().with_auto_renew(false)] {
        let (mut other_cluster, mut refusals_read, mut contended) = (0, 0, 0);
        for i in 0..40 {
            match mixed.try_acquire(&key, &opts).await {
                Ok(Some(g)) => panic!(
                    "try {i}: granted token {} beside the holder's {}",
                    g.token(),
                    held.token()
                ),
                Ok(None) => contended += 1,
                Err(e) => {
                    let text = fencelock_core::error::one_line(&e);
                    assert!(
                        !text.contains("was gone"),
                        "try {i} (auto_renew {}): {text}",
                        opts.auto_renew()
                    );
                    assert!(matches!(e, LockError::InvalidConfig { .. }), "try {i}: {text}");
                    assert!(text.contains("different clusters"), "try {i}: {text}");
                    other_cluster += 1;
                    // The refusal read back: alive here, or that read answered from elsewhere.
                    refusals_read +=
                        usize::from(text.contains("lease not found") || text.contains("a request was refused for"));
                }
            }
        }
        eprintln!(
            "auto_renew {}: another cluster named {other_cluster} times ({refusals_read} of them a refusal read back), contended {contended}",
            opts.auto_renew()
        );
        assert!(
            refusals_read > 0,
            "no queue put refused by the other cluster was read back in 40 tries; the test proved nothing"
        );
    }
    held.release().await.unwrap();
}

/// (d) An endpoint that speaks another protocol beside a real member: refused at connect
/// (`InvalidConfig`, the CLI's exit 78) naming it, as a member of another cluster is —
/// not kept as a member that fails every request balanced onto it. An endpoint merely
/// down beside a member still connects (it may be a member restarting).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_speaking_another_protocol_beside_a_member_is_refused() {
    let a = EtcdCluster::single();
    let ea = a.endpoints()[0].clone();
    for (what, port) in [
        ("an HTTP/1 server", fencelock_testkit::ports::http_port()),
        (
            "a server greeting first (MySQL)",
            fencelock_testkit::ports::mysql_port(),
        ),
    ] {
        let other = format!("127.0.0.1:{port}");
        let e = EtcdLock::connect(&format!("etcd://{ea},{other}"))
            .await
            .expect_err(what);
        let text = fencelock_core::error::one_line(&e);
        assert!(matches!(e, LockError::InvalidConfig { .. }), "{what}: {text}");
        assert!(
            text.contains(&other) && text.contains("does not speak etcd's gRPC"),
            "{what}: {text}"
        );
    }
    let closed = fencelock_testkit::ports::closed_port(); // stays closed while held
    let down = format!("127.0.0.1:{}", closed.port());
    EtcdLock::connect(&format!("etcd://{ea},{down}"))
        .await
        .expect("a member beside an endpoint that is down connects");
}

/// (e) The keep-alive stream's opener reads its first reply inside the client library,
/// header unseen; one that reaches the other cluster is answered "lease not found" there.
/// It must not end a session whose lease lives in the cluster the connect met (every lock
/// on it would be told it was lost): six instances each hold a lock through the mixed URL
/// for two and a half session TTLs, and none is lost. (Each opens its stream once, at either
/// endpoint: that none reaches the other cluster has odds of 1 in 64.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keep_alive_opened_at_another_cluster_keeps_the_session() {
    let (_a, _b, mixed) = through_mixed_url("?timeout=2s&session_ttl=2s", |url| async move {
        let mut mixed = Vec::new();
        for _ in 0..6 {
            mixed.push(EtcdLock::connect(&url).await.unwrap());
        }
        mixed
    })
    .await;
    let mut held = Vec::new();
    for (n, lock) in mixed.iter().enumerate() {
        let key = unique_key("mixed-keepalive");
        held.push(granted_through_mixed(lock, &key, &LockOptions::new(), &format!("instance {n}")).await);
    }
    let mut losses = tokio::task::JoinSet::new();
    for (i, g) in held.iter().enumerate() {
        let lost = g.lost();
        losses.spawn(async move { (i, lost.await) });
    }
    if let Ok(Some(Ok((i, reason)))) = tokio::time::timeout(std::time::Duration::from_secs(5), losses.join_next()).await
    {
        panic!("lock {i} lost while its session lease lives in the cluster the connect met: {reason}");
    }
    for g in held {
        release_or_refused(g).await;
    }
}

/// (f) A lock on a lease of its own (auto_renew off) is extended by one keep-alive whose
/// first reply the client library reads: one that reaches the other cluster ("lease not
/// found" there) must not tell the lock it was lost while its lease lives in the cluster
/// the connect met. Of 30 extends through the mixed URL, each succeeds or says another
/// cluster answered; the lock is never lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_extend_answered_by_another_cluster_does_not_lose_the_lock() {
    let (_a, _b, mixed) = through_mixed_url(
        "?timeout=2s",
        |url| async move { EtcdLock::connect(&url).await.unwrap() },
    )
    .await;
    let key = unique_key("mixed-extend");
    let opts = LockOptions::new()
        .with_auto_renew(false)
        .with_ttl(std::time::Duration::from_secs(30));
    let g = granted_through_mixed(&mixed, &key, &opts, "the lock").await;
    let (mut extended, mut other_cluster) = (0, 0);
    for i in 0..30 {
        match g.extend(std::time::Duration::from_secs(30)).await {
            Ok(()) => extended += 1,
            Err(LockError::InvalidConfig { message, .. }) => {
                assert!(message.contains("different clusters"), "{message}");
                other_cluster += 1;
            }
            Err(e) => panic!("extend {i}: {e}"),
        }
    }
    eprintln!("extended {extended}, another cluster named {other_cluster}");
    assert!(extended > 0 && other_cluster > 0, "both endpoints must have answered");
    release_or_refused(g).await;
}

/// (h) A revoke balanced onto the other cluster is refused there "lease not found" (our
/// leases live only in the cluster the connect met): it must not count as done. Twelve
/// instances each hold a lock through the mixed URL and are closed, which revokes the
/// session lease in one request: a close that reports success has revoked it, so the lock
/// is free at once in the cluster the connect met; a close that could not says another
/// cluster answered. (That no revoke reaches the other cluster has odds of 1 in 4096.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoke_refused_by_another_cluster_is_not_taken_as_done() {
    let (a, _b, mixed) = through_mixed_url("?timeout=2s", |url| async move {
        let mut mixed = Vec::new();
        for _ in 0..12 {
            mixed.push(EtcdLock::connect(&url).await.unwrap());
        }
        mixed
    })
    .await;
    let checker = EtcdLock::connect(&a.url("")).await.unwrap();
    let (mut closed, mut refused) = (0, 0);
    for (n, lock) in mixed.iter().enumerate() {
        let key = unique_key("mixed-revoke");
        let _held = granted_through_mixed(lock, &key, &LockOptions::new(), &format!("instance {n}")).await;
        match lock.close().await {
            Ok(()) => {
                closed += 1;
                let free = checker.try_acquire(&key, &LockOptions::new()).await.unwrap();
                let free = free.unwrap_or_else(|| {
                    panic!("instance {n}: closed, yet its lock on {key} is still held in the cluster its connect met")
                });
                free.release().await.unwrap();
            }
            Err(e) => {
                let text = fencelock_core::error::one_line(&e);
                assert!(text.contains("different clusters"), "instance {n}: {text}");
                refused += 1;
            }
        }
    }
    eprintln!("closed {closed}, refused {refused}");
    assert!(
        refused > 0,
        "no revoke reached the other cluster in 12 closes; the test proved nothing"
    );
}

/// (g) An election observer reads the candidates (an answer with a header, checked) and
/// then follows a watch from that read's revision — a watch stream of its own, whose
/// answers must be checked one by one as the waits' shared stream's are. Here the other
/// cluster has a candidate of the same election and a longer history, ours none: a watch
/// opened there from our revision replays that candidate, and an observer through the
/// mixed URL would report a leader our cluster does not have.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_election_observer_never_reports_another_clusters_leader() {
    use fencelock_core::election::Election;
    use fencelock_etcd::EtcdElection;
    let (_a, b, mixed) = through_mixed_url("?timeout=2s", |url| async move {
        EtcdElection::connect(&url).await.unwrap()
    })
    .await;
    let eb = b.endpoints()[0].clone();
    let name = unique_key("mixed-elect");
    // The other cluster: a history longer than ours, then a leader of its own.
    let mut raw = etcd_client::Client::connect([format!("http://{eb}")], None)
        .await
        .unwrap();
    for i in 0..50 {
        raw.put(format!("/filler/{i}"), "x", None).await.unwrap();
    }
    let theirs = EtcdElection::connect(&b.url("")).await.unwrap();
    let _their_leader = theirs
        .campaign(&name, b"other-cluster", &LockOptions::new())
        .await
        .unwrap();
    let (mut observers, mut refused) = (Vec::new(), 0);
    for _ in 0..40 {
        match mixed.observe(&name).await {
            Ok(o) => observers.push(o),
            Err(LockError::InvalidConfig { .. }) => refused += 1,
            Err(e) => panic!("observe: {e}"),
        }
        if observers.len() == 8 {
            break;
        }
    }
    assert_eq!(observers.len(), 8, "{refused} observes refused");
    let mut reports = 0;
    for (i, o) in observers.iter_mut().enumerate() {
        // Every change each reports, until half a second passes without one.
        for _ in 0..20 {
            let Ok(change) = tokio::time::timeout(std::time::Duration::from_millis(500), o.changed()).await else {
                break;
            };
            reports += 1;
            if let Some(Some(leader)) = change {
                panic!(
                    "observer {i} reported a leader our cluster does not have: {:?}",
                    String::from_utf8_lossy(&leader.value)
                );
            }
        }
    }
    assert!(
        reports >= 8,
        "each observer reports the state at subscription: {reports}"
    );
}
