//! A URL whose endpoints are members of two different etcd clusters: refused at connect
//! when both answer; when one was down at connect, no grant ever comes from it.
//!
//! Two clusters that each hold their own copy of a lock would each grant it — mutual
//! exclusion and token order are gone as requests alternate between them.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail by panicking

use fencelock_core::{DistributedLock, LockError, LockOptions};
use fencelock_etcd::EtcdLock;
use fencelock_testkit::etcd_server::EtcdCluster;
use fencelock_testkit::keys::unique_key;

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
    let (a, mut b) = (EtcdCluster::single(), EtcdCluster::single());
    let (ea, eb) = (a.endpoints()[0].clone(), b.endpoints()[0].clone());
    b.kill(0);
    let mixed = EtcdLock::connect(&format!("etcd://{ea},{eb}?timeout=2s"))
        .await
        .unwrap();
    b.restart(0);
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
    let down = format!("127.0.0.1:{}", fencelock_testkit::ports::free_port());
    EtcdLock::connect(&format!("etcd://{ea},{down}"))
        .await
        .expect("a member beside an endpoint that is down connects");
}
