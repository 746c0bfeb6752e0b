//! Contention on one key over five nodes: the server work per hand-off (summed over the
//! nodes) does not grow with the number of waiters (no herd, no split votes).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail by panicking

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use fencelock_core::{DistributedLock, LockOptions};
use fencelock_redlock::RedlockLock;
use fencelock_testkit::redis_server::{redlock_url, start_many, RedisServer};

fn opts() -> LockOptions {
    LockOptions::new()
        .with_ttl(Duration::from_secs(10))
        .with_wait(Duration::from_secs(60))
}

fn commands(servers: &[RedisServer]) -> u64 {
    servers.iter().map(RedisServer::client_commands).sum()
}

/// Server commands (all nodes) per grant while `waiters` clients (one instance each) take
/// `grants` turns on one key, each holding it for 1 ms.
async fn commands_per_grant(servers: &[RedisServer], waiters: usize, grants: u64) -> f64 {
    let url = redlock_url(servers, "");
    let clients: Vec<_> = (0..waiters).map(|_| RedlockLock::connect(&url)).collect();
    let mut ready = Vec::new();
    for c in clients {
        ready.push(c.await.unwrap());
    }
    // Connect every node before counting (nodes connect on first use).
    for c in &ready {
        c.try_acquire("warm", &opts().with_wait(Duration::ZERO))
            .await
            .unwrap()
            .unwrap()
            .release()
            .await
            .unwrap();
    }
    let done = Arc::new(AtomicU64::new(0));
    let before = commands(servers);
    let mut tasks = Vec::new();
    for locks in ready {
        let done = Arc::clone(&done);
        tasks.push(tokio::spawn(async move {
            while done.load(Ordering::SeqCst) < grants {
                let lease = locks.acquire("herd", &opts()).await.unwrap();
                done.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(1)).await; // the holder's work
                lease.release().await.unwrap();
            }
            locks.close().await.unwrap();
        }));
    }
    for t in tasks {
        tokio::time::timeout(Duration::from_secs(180), t)
            .await
            .unwrap()
            .unwrap();
    }
    let used = commands(servers) - before;
    let mut by_name = std::collections::BTreeMap::new();
    for s in servers {
        for (name, n) in s.commandstats() {
            *by_name.entry(name).or_insert(0u64) += n;
        }
    }
    eprintln!("{waiters} waiters, cumulative: {by_name:?}");
    used as f64 / done.load(Ordering::SeqCst) as f64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_per_hand_off_do_not_grow_with_waiters() {
    let servers = start_many(5);
    let few = commands_per_grant(&servers, 4, 200).await;
    let many = commands_per_grant(&servers, 32, 200).await;
    eprintln!("server commands per grant (5 nodes): 4 waiters {few:.2}, 32 waiters {many:.2}");
    assert!(
        many <= few * 1.3 + 2.0,
        "commands per hand-off grow with waiters: 4 → {few:.2}, 32 → {many:.2}"
    );
}
