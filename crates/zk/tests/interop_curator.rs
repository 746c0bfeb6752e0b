//! Issue 17: fencelock and Curator's `InterProcessMutex` (Debian's `libcurator-recipes-java`,
//! the peer in `tests/peers/CuratorPeer.java` compiled with `javac` here) on the same lock
//! path, against a real ZooKeeper: both directions, a mixed stress (2 Curator + 2 fencelock
//! loops × 15 rounds on one log: 0 overlaps, fencelock tokens strictly increasing), and the
//! default layout beside Curator. Missing java/javac/jars fail the test with an install hint.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail by panicking

mod peers;

use std::time::Duration;

use fencelock_core::{DistributedLock, LockError, LockOptions};
use fencelock_testkit::keys::unique_key;
use fencelock_testkit::zk_server::ZkEnsemble;
use fencelock_zk::ZkLock;
use peers::scenarios::{fencelock_holds_peer_waits, mixed_stress, peer_holds_fencelock_waits};
use peers::{Peer, SharedLog};

/// `_c_` + a UUID + `-lock-` + 10 digits: Curator's protected lock node.
fn curator_named(n: &str) -> bool {
    let Some(rest) = n.strip_prefix("_c_") else {
        return false;
    };
    let Some((uuid, seq)) = rest.split_once("-lock-") else {
        return false;
    };
    uuid.len() == 36
        && uuid.split('-').map(str::len).eq([8, 4, 4, 4, 12])
        && seq.len() == 10
        && seq.bytes().all(|b| b.is_ascii_digit())
}

/// With `layout=curator` and the key as Curator's path, each side waits for the other; the
/// node fencelock makes is named as Curator names its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curator_layout_excludes_in_both_directions() {
    let zk = ZkEnsemble::standalone();
    let hosts = zk.endpoints().join(",");
    let key = format!("locks/{}", unique_key("cur"));
    let path = format!("/{key}");
    let log = SharedLog::new();
    let fl = ZkLock::connect(&zk.url("/", "layout=curator")).await.unwrap();
    // The key is the path as given: one that is not a relative znode path is refused.
    for bad in ["/locks/m", "locks//m", "locks/../m"] {
        let e = fl.try_acquire(bad, &LockOptions::new()).await.unwrap_err();
        assert!(matches!(e, LockError::InvalidInput { .. }), "{bad}: {e}");
    }
    let mut peer = Peer::curator(&hosts, &path, "curator-1", &log.path);
    // Curator's own nodes are what fencelock's must look like.
    let probe = peer_holds_fencelock_waits(&mut peer, &fl, &key, (&hosts, &path), &|n| curator_named(n)).await;
    let back = fencelock_holds_peer_waits(&mut peer, &fl, &key, (&hosts, &path)).await;
    eprintln!("hand-off curator->fencelock {probe:?}, fencelock->curator {back:?}");
    fl.close().await.unwrap();
}

/// 2 Curator loops + 2 fencelock loops × 15 rounds on one path and one log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curator_layout_mixed_stress_has_no_overlap() {
    let zk = ZkEnsemble::standalone();
    let hosts = zk.endpoints().join(",");
    let key = format!("locks/{}", unique_key("cur-stress"));
    let log = SharedLog::new();
    let url = zk.url("/", "layout=curator");
    let fl = [
        ZkLock::connect(&url).await.unwrap(),
        ZkLock::connect(&url).await.unwrap(),
    ];
    let mut peers = [
        Peer::curator(&hosts, &format!("/{key}"), "curator-1", &log.path),
        Peer::curator(&hosts, &format!("/{key}"), "curator-2", &log.path),
    ];
    let (median, max) = mixed_stress(&mut peers, &fl, &key, &log, 15, Duration::from_millis(10)).await;
    eprintln!("cross-library hand-off curator<->fencelock: median {median:.1} ms, max {max:.1} ms");
    for l in fl {
        l.close().await.unwrap();
    }
}

/// fencelock's DEFAULT layout on Curator's path (`zk://…/fencelock`, key `K` is
/// `/fencelock/K`): Curator orders fencelock's `lock-GRANT-lock-SEQ` by the text after its
/// last `lock-`, fencelock orders Curator's node by its sequence — they exclude each other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_layout_excludes_curator() {
    let zk = ZkEnsemble::standalone();
    let hosts = zk.endpoints().join(",");
    let key = unique_key("cur-default");
    let path = format!("/fencelock/{}", fencelock_zk::key_node(&key));
    let log = SharedLog::new();
    let url = zk.url("/fencelock", "");
    let fl = ZkLock::connect(&url).await.unwrap();
    let mut peer = Peer::curator(&hosts, &path, "curator-1", &log.path);
    peer_holds_fencelock_waits(&mut peer, &fl, &key, (&hosts, &path), &|n| {
        n.starts_with("lock-") && n.contains("-lock-")
    })
    .await;
    fencelock_holds_peer_waits(&mut peer, &fl, &key, (&hosts, &path)).await;
    let fl2 = ZkLock::connect(&url).await.unwrap();
    let (median, max) = mixed_stress(
        std::slice::from_mut(&mut peer),
        &[fl.clone(), fl2.clone()],
        &key,
        &log,
        10,
        Duration::from_millis(10),
    )
    .await;
    eprintln!("default layout beside curator: hand-off median {median:.1} ms, max {max:.1} ms");
    fl.close().await.unwrap();
    fl2.close().await.unwrap();
}
