//! A cluster restored from a snapshot without `etcdutl snapshot restore --bump-revision`
//! keeps its cluster id (the same `--initial-cluster` and `--initial-cluster-token`), and
//! its revisions — the tokens — go back to the snapshot's.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail by panicking

use fencelock_core::{DistributedLock, LockError, LockOptions};
use fencelock_etcd::EtcdLock;
use fencelock_testkit::etcd_server::EtcdCluster;

/// An instance connected across such a restore has seen the higher revisions: it refuses
/// the restored cluster's answers instead of granting a token below one it granted before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_connected_across_a_restore_that_set_the_revisions_back_refuses() {
    let mut cluster = EtcdCluster::single();
    let lock = EtcdLock::connect(&cluster.url("")).await.unwrap();
    let opts = LockOptions::new().with_auto_renew(false);
    lock.acquire("restored", &opts).await.unwrap().release().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let snapshot = dir.path().join("snapshot.db");
    tokio::task::block_in_place(|| cluster.snapshot(0, &snapshot));
    let mut last = None;
    for _ in 0..5 {
        let lease = lock.acquire("restored", &opts).await.unwrap();
        last = Some(lease.token());
        lease.release().await.unwrap();
    }
    tokio::task::block_in_place(|| cluster.restore(&snapshot));
    match lock.acquire("restored", &opts).await {
        Err(LockError::InvalidConfig { message, .. }) => {
            assert!(message.contains("history went back"), "{message}");
        }
        Ok(lease) => panic!(
            "granted token {} after the restore, below {:?} granted before it",
            lease.token(),
            last
        ),
        Err(e) => panic!("not the restore's refusal: {e}"),
    }
}
