//! A user and password (`etcd://USER:PASSWORD@HOST:PORT`): etcd authenticates once and
//! hands out a token that it forgets later — a simple token after `--auth-token-ttl` idle
//! (300 s by default) or when the member restarts, a JWT at its TTL. The client must
//! authenticate again, not report the credentials refused.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail by panicking

use std::time::Duration;

use fencelock_core::{DistributedLock, LockOptions};
use fencelock_etcd::EtcdLock;
use fencelock_testkit::etcd_server::EtcdCluster;

/// The simple tokens' TTL the server is started with, s.
const TOKEN_TTL: u64 = 2;

/// A member with authentication enabled (user `root`, password `secret`) and simple
/// tokens that expire after [`TOKEN_TTL`] idle.
async fn with_auth() -> (EtcdCluster, String) {
    let ttl = format!("--auth-token-ttl={TOKEN_TTL}");
    let cluster = EtcdCluster::single_with_flags(&[ttl.as_str()]);
    let endpoint = cluster.endpoints()[0].clone();
    let mut admin = etcd_client::Client::connect([format!("http://{endpoint}")], None)
        .await
        .unwrap();
    admin.user_add("root", "secret", None).await.unwrap();
    admin.user_grant_role("root", "root").await.unwrap();
    admin.auth_enable().await.unwrap();
    (cluster, format!("etcd://root:secret@{endpoint}"))
}

/// An instance idle past the token's TTL (a service that takes a lock now and then), then
/// one whose member restarted: each acquire is granted. Before, the expired token's
/// `Unauthenticated` was taken for refused credentials — "invalid configuration", final —
/// and every call failed until the instance was made anew.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_or_forgotten_auth_token_is_renewed() {
    let (mut cluster, url) = with_auth().await;
    let lock = EtcdLock::connect(&url).await.unwrap();
    // The server forgets an idle simple token within its TTL and one tick (1 s) of its
    // sweeper: a wait for a server-side expiry, with a margin; nothing can be asked
    // meanwhile without keeping the token alive.
    tokio::time::sleep(Duration::from_secs(TOKEN_TTL + 3)).await;
    for opts in [LockOptions::new(), LockOptions::new().with_auto_renew(false)] {
        let lease = lock
            .acquire("auth", &opts)
            .await
            .expect("acquire after the token expired");
        lease.release().await.unwrap();
    }
    // A restarted member has forgotten every simple token.
    tokio::task::block_in_place(|| cluster.restart(0));
    let lease = lock
        .acquire("auth", &LockOptions::new().with_auto_renew(false))
        .await
        .expect("acquire after the member restarted");
    lease.release().await.unwrap();
    lock.close().await.unwrap();
}
