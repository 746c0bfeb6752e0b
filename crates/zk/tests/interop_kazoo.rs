//! Issue 17: fencelock and kazoo's `Lock` (PyPI, in a virtualenv this test makes; the peer
//! is `tests/peers/kazoo_peer.py`) on the same lock path, against a real ZooKeeper: both
//! directions, a mixed stress (2 kazoo + 2 fencelock loops × 15 rounds on one log: 0
//! overlaps, fencelock tokens strictly increasing), and the default layout beside kazoo
//! (refused with a clear error). A missing python venv/pip fails the test with a hint.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail by panicking

mod peers;

use std::time::Duration;

use fencelock_core::{DistributedLock, LockError, LockOptions};
use fencelock_testkit::keys::unique_key;
use fencelock_testkit::zk_server::ZkEnsemble;
use fencelock_zk::ZkLock;
use peers::scenarios::{await_children, fencelock_holds_peer_waits, mixed_stress, peer_holds_fencelock_waits};
use peers::{Peer, SharedLog};

/// 32 hex + `__lock__` + 10 digits: kazoo's lock node.
fn kazoo_named(n: &str) -> bool {
    let Some((hex, seq)) = n.split_once("__lock__") else {
        return false;
    };
    hex.len() == 32
        && hex.bytes().all(|b| b.is_ascii_hexdigit())
        && seq.len() == 10
        && seq.bytes().all(|b| b.is_ascii_digit())
}

/// With `layout=kazoo` and the key as kazoo's path, each side waits for the other; the node
/// fencelock makes is named as kazoo names its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kazoo_layout_excludes_in_both_directions() {
    let zk = ZkEnsemble::standalone();
    let hosts = zk.endpoints().join(",");
    let key = unique_key("kz");
    let path = format!("/locks/{key}");
    let log = SharedLog::new();
    let fl = ZkLock::connect(&zk.url("/locks", "layout=kazoo")).await.unwrap();
    let mut peer = Peer::kazoo(&hosts, &path, "kazoo-1", &log.path, None);
    let probe = peer_holds_fencelock_waits(&mut peer, &fl, &key, (&hosts, &path), &kazoo_named).await;
    let back = fencelock_holds_peer_waits(&mut peer, &fl, &key, (&hosts, &path)).await;
    eprintln!("hand-off kazoo->fencelock {probe:?}, fencelock->kazoo {back:?}");
    fl.close().await.unwrap();
}

/// 2 kazoo loops + 2 fencelock loops × 15 rounds on one path and one log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kazoo_layout_mixed_stress_has_no_overlap() {
    let zk = ZkEnsemble::standalone();
    let hosts = zk.endpoints().join(",");
    let key = unique_key("kz-stress");
    let path = format!("/locks/{key}");
    let log = SharedLog::new();
    let url = zk.url("/locks", "layout=kazoo");
    let fl = [
        ZkLock::connect(&url).await.unwrap(),
        ZkLock::connect(&url).await.unwrap(),
    ];
    let mut peers = [
        Peer::kazoo(&hosts, &path, "kazoo-1", &log.path, None),
        Peer::kazoo(&hosts, &path, "kazoo-2", &log.path, None),
    ];
    let (median, max) = mixed_stress(&mut peers, &fl, &key, &log, 15, Duration::from_millis(10)).await;
    eprintln!("cross-library hand-off kazoo<->fencelock: median {median:.1} ms, max {max:.1} ms");
    for l in fl {
        l.close().await.unwrap();
    }
}

/// fencelock's DEFAULT layout on kazoo's path: kazoo does not see `lock-GRANT-lock-SEQ`
/// (unless given `extra_lock_patterns=["-lock-"]`), so fencelock refuses to queue beside
/// kazoo's nodes (`InvalidConfig` naming `layout=kazoo`) instead of waiting or entering;
/// a kazoo told the pattern waits for fencelock. A plain kazoo that arrives while fencelock
/// holds is NOT kept out — the documented reason to use `layout=kazoo`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_layout_refuses_kazoo_and_a_told_kazoo_waits() {
    let zk = ZkEnsemble::standalone();
    let hosts = zk.endpoints().join(",");
    let key = unique_key("kz-default");
    let path = format!("/fencelock/{}", fencelock_zk::key_node(&key));
    let log = SharedLog::new();
    let fl = ZkLock::connect(&zk.url("/fencelock", "")).await.unwrap();
    let mut plain = Peer::kazoo(&hosts, &path, "kazoo-plain", &log.path, None);

    // kazoo holds: fencelock refuses, with the layout to use, and leaves no node behind.
    assert_eq!(
        tokio::task::block_in_place(|| plain.ask("acquire 10000", Duration::from_secs(20))),
        "acquired"
    );
    for e in [
        fl.try_acquire(&key, &LockOptions::new()).await.unwrap_err(),
        fl.acquire(&key, &LockOptions::new().with_wait(Duration::from_secs(5)))
            .await
            .unwrap_err(),
    ] {
        assert!(matches!(e, LockError::InvalidConfig { .. }), "{e}");
        assert!(e.to_string().contains("layout=kazoo"), "{e}");
        // The path kazoo must be given: the server's, chroot included.
        assert!(e.to_string().contains(&format!("{path} holds")), "{e}");
    }
    await_children(&hosts, &path, 1).await;
    assert_eq!(
        tokio::task::block_in_place(|| plain.ask("release", Duration::from_secs(10))),
        "released"
    );

    // fencelock holds: a kazoo given `-lock-` waits; a plain kazoo does not see fencelock.
    let mut told = Peer::kazoo(&hosts, &path, "kazoo-told", &log.path, Some("-lock-"));
    let lease = fl
        .acquire(&key, &LockOptions::new().with_wait(Duration::from_secs(5)))
        .await
        .unwrap();
    assert_eq!(
        tokio::task::block_in_place(|| told.ask("acquire 500", Duration::from_secs(20))),
        "timeout"
    );
    assert_eq!(
        tokio::task::block_in_place(|| plain.ask("acquire 500", Duration::from_secs(20))),
        "acquired",
        "a plain kazoo now waits for fencelock's default nodes: update docs/interop-zookeeper.md"
    );
    assert_eq!(
        tokio::task::block_in_place(|| plain.ask("release", Duration::from_secs(10))),
        "released"
    );
    lease.release().await.unwrap();
    fl.close().await.unwrap();
}
