//! Hardening K5: resources do not grow with use — threads, open files, server connections
//! and server records come back after try_acquire on a held key, timed-out acquires and
//! dropped clients that had waited.

use std::time::Duration;

use fencelock_core::{DistributedLock, Lease, LockError, LockOptions, Result};
use tokio::time::Instant;

use super::holder::{holder_options, judge_second_grant};
use super::unanswered::settle;
use super::{exclusive_gate, Fixture, SuiteConfig, LONG_TTL};
use crate::keys::unique_key;

/// Operations of each kind (a leak of one thread, file or connection per operation shows
/// as 20 or more).
const N: usize = 20;
/// Growth that does not scale with `N`. Other tests of the process are held at the suite
/// gate, but one may be starting meanwhile: its test thread, its server's pipes, its
/// fixture's operator connection. The library's own threads are named `fencelock-…` and
/// must come back exactly.
const THREADS_ALLOWED: usize = 6;
const FILES_ALLOWED: usize = 6;
const CONNECTIONS_ALLOWED: usize = 2;

/// The names of this process's threads, but tokio's own pools (`tokio-runtime-worker`,
/// `tokio-rt-worker`: every runtime's workers, and idle blocking threads kept ten seconds
/// by design) and the test harness's threads of the suite's other cases (named after
/// them, cut to 15 bytes): another case started while this one counts brings its thread
/// and its runtime's (a full run once failed with 8 such threads). Threads a backend
/// starts itself are named `fencelock-…` and still count.
fn thread_names() -> Vec<String> {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return Vec::new();
    };
    let harness = |name: &str| !name.is_empty() && super::ALL.iter().any(|case| case.starts_with(name));
    tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("comm")).ok())
        .filter(|name| !name.starts_with("tokio-") && !harness(name.trim_end()))
        .collect()
}

/// This process's open sockets and files, leaving out pipes and anonymous inodes (another
/// test's server pipes, another runtime's epoll and eventfd).
fn open_files() -> usize {
    let Ok(fds) = std::fs::read_dir("/proc/self/fd") else {
        return 0;
    };
    fds.flatten()
        .filter_map(|fd| std::fs::read_link(fd.path()).ok())
        .filter(|target| {
            let t = target.to_string_lossy();
            !t.starts_with("pipe:") && !t.starts_with("anon_inode:")
        })
        .count()
}

/// The names in `after` beyond those in `before` (as multisets), for the failure message.
fn new_names(before: &[String], after: &[String]) -> Vec<String> {
    let mut left = before.to_vec();
    after
        .iter()
        .filter(|n| match left.iter().position(|b| b == *n) {
            Some(i) => {
                left.swap_remove(i);
                false
            }
            None => true,
        })
        .cloned()
        .collect()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Count {
    threads: usize,
    ours: usize,
    files: usize,
    connections: Option<usize>,
}

async fn count(f: &dyn Fixture) -> Count {
    let names = thread_names();
    Count {
        threads: names.len(),
        ours: names.iter().filter(|n| n.starts_with("fencelock")).count(),
        files: open_files(),
        connections: f.connections().await,
    }
}

/// `pooled`: connections (and their sockets) the two long-lived clients may add by
/// growing their pools to their bound ([`Fixture::connections_per_client`]) — bounded,
/// where a leak grows with `N`. (Seen once on PostgreSQL: 2 → 5 connections, a client's
/// pool grown from 1 to 4 while a background dequeue overlapped its next statement.)
fn within_allowance(before: Count, now: Count, pooled: usize) -> bool {
    now.threads <= before.threads + THREADS_ALLOWED
        && now.ours <= before.ours
        && now.files <= before.files + FILES_ALLOWED + pooled
        && match (before.connections, now.connections) {
            (Some(b), Some(n)) => n <= b + CONNECTIONS_ALLOWED + pooled,
            // No server to count on (memory, file).
            (None, None) => true,
            // A count the server gave once and not the other time (its probe got no
            // answer): not "within", or the check would pass having compared nothing.
            _ => false,
        }
}

/// `N` try_acquires of a held key, `N` acquires that time out, and `N` clients dropped
/// after waiting: afterwards the process's threads and open files, the server's client
/// connections and the key's server records are back where they were (within a small
/// constant). Runs alone in its test process (it takes the suite gate exclusively), so
/// other tests' threads do not count.
pub async fn resources_do_not_grow(f: &dyn Fixture, cfg: &SuiteConfig) {
    let _gate = exclusive_gate().await;
    let (a, b) = (f.client().await, f.client().await);
    let key = unique_key("resources");
    let long = LockOptions::new().with_ttl(LONG_TTL).with_auto_renew(false);
    let take = holder_options().with_wait(cfg.slack * 2);
    // Warm up both clients (connections, pub/sub, sessions) before counting.
    let mut held = a.acquire(&key, &take).await.expect("acquire");
    let warm = b.try_acquire(&key, &long).await.expect("try_acquire");
    if let Some(granted) = warm {
        held = take_again(&*a, &key, held, granted, Instant::now(), "try_acquire (warm-up)", &take).await;
    }
    let before = count(f).await;
    let names_before = thread_names();
    let short_wait = long.with_wait(Duration::from_millis(20));
    for _ in 0..N {
        let got = b.try_acquire(&key, &long).await.expect("try_acquire on a held key");
        let at = Instant::now();
        if let Some(granted) = got {
            held = take_again(&*a, &key, held, granted, at, "try_acquire on a held key", &take).await;
        }
    }
    for _ in 0..N {
        let got = b.acquire(&key, &short_wait).await;
        let at = Instant::now();
        held = expect_timeout(&*a, &key, held, got, at, &take).await;
    }
    for _ in 0..N {
        let c = f.client().await;
        let got = c.acquire(&key, &short_wait).await;
        let at = Instant::now();
        held = expect_timeout(&*a, &key, held, got, at, &take).await;
        drop(c);
    }
    let pooled = 2 * f.connections_per_client().saturating_sub(1);
    let after = settle(cfg.slack * 3, || count(f), |now| within_allowance(before, now, pooled)).await;
    assert!(
        within_allowance(before, after, pooled),
        "resources grew over {N} try_acquires, {N} timed-out acquires and {N} dropped waiting \
         clients: before {before:?}, after {after:?} (allowed +{THREADS_ALLOWED} threads, none of \
         them `fencelock-…`, +{FILES_ALLOWED} files, +{CONNECTIONS_ALLOWED} connections; +{pooled} more files and connections for the two \
         clients' pools); threads that appeared: {:?}",
        new_names(&names_before, &thread_names())
    );
    // Whether the holder kept the key to the end is not this case's question (a lease lost
    // meanwhile was judged above if anyone got the key); its node must go either way.
    drop(held.release().await);
    let left = settle(cfg.slack * 2, || f.records(&key), |n| n == 0).await;
    assert_eq!(
        left, 0,
        "records of a released key left on the server after {N} waiters gave up"
    );
}

/// A waiter on the held key: it must time out. A grant instead is judged (a violation if
/// the holder was still valid at `at`) and the holder takes the key again.
async fn expect_timeout(
    a: &dyn DistributedLock,
    key: &str,
    held: Lease,
    got: Result<Lease>,
    at: Instant,
    take: &LockOptions,
) -> Lease {
    match got {
        Err(LockError::Timeout { .. }) => held,
        Err(e) => panic!("expected a timeout on a held key, got {e}"),
        Ok(granted) => take_again(a, key, held, granted, at, "acquire on a held key", take).await,
    }
}

/// After a grant of the held key at `at` that was no violation (the holder's validity had
/// ended: [`judge_second_grant`]), gives it back and lets the holder take the key again, so
/// the case goes on with a held key.
async fn take_again(
    a: &dyn DistributedLock,
    key: &str,
    held: Lease,
    granted: Lease,
    at: Instant,
    what: &str,
    take: &LockOptions,
) -> Lease {
    judge_second_grant(&held, &granted, at, what);
    drop(held);
    // Its own validity may have run out on a slow machine; the key is freed either way.
    drop(granted.release().await);
    a.acquire(key, take).await.expect("the holder takes the key again")
}
