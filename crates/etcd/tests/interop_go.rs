//! Issue 17: fencelock's `layout=go` shares a lock with Go's `concurrency.Mutex`, tested
//! against the real `etcdctl lock` (Debian's etcd-client): the Go side holds and fencelock
//! waits, fencelock holds and the Go side waits, and a mixed stress of two `etcdctl lock`
//! loops and two fencelock loops on one shared log — no overlap, and every token (fencelock's
//! grant, the Go side's key create revision) strictly increasing.
//!
//! Run: `cargo test -p fencelock-etcd --test interop_go -- --nocapture` (prints the
//! hand-off latencies that docs/interop.md quotes).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail by panicking

use std::process::Stdio;
use std::time::Duration;

use fencelock_core::{DistributedLock, LockOptions};
use fencelock_etcd::EtcdLock;
use fencelock_testkit::etcd_server::EtcdCluster;
use fencelock_testkit::interop::SharedLog;
use fencelock_testkit::keys::unique_key;
use tokio::io::{BufReader, Lines};
use tokio::process::{Child, ChildStdout};
use tokio::time::{timeout, Instant};

mod go_peer;
use go_peer::{client, etcdctl, etcdctl_lines, interrupt, queue, until_queued, STEP};

/// `etcdctl lock NAME`: prints its key once it holds the lock, holds until SIGINT.
fn go_holder(ep: &str, name: &str) -> (Child, Lines<BufReader<ChildStdout>>) {
    etcdctl_lines(ep, &["lock", name])
}

fn opts() -> LockOptions {
    LockOptions::new()
        .with_ttl(Duration::from_secs(10))
        .with_wait(Duration::from_secs(20))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn go_holds_and_fencelock_waits_its_turn() {
    let cluster = EtcdCluster::single();
    let ep = cluster.endpoints()[0].clone();
    // `etcd://h:p/` reaches Go's default directory `NAME/` (no leading slash).
    let locks = EtcdLock::connect(&format!("etcd://{ep}/?layout=go")).await.unwrap();
    let name = unique_key("golock");
    let dir = format!("{name}/");
    let mut c = client(&cluster).await;

    let (peer, mut out) = go_holder(&ep, &name);
    let go_key = timeout(STEP, out.next_line())
        .await
        .expect("etcdctl takes the free lock")
        .unwrap()
        .unwrap();
    assert!(go_key.starts_with(&dir), "Go's key {go_key} is in {dir}");
    let go_rev = queue(&mut c, &dir).await[0].1;

    assert!(
        locks.try_acquire(&name, &opts()).await.unwrap().is_none(),
        "Go holds it"
    );
    // The refused try's key goes in the background; until it is gone its name (our
    // session lease) stays taken, and a new entry would ride on a lease of its own.
    until_queued(&mut c, &dir, 1).await;
    let waiter = tokio::spawn({
        let (locks, name) = (locks.clone(), name.clone());
        async move { locks.acquire(&name, &opts()).await }
    });
    let q = until_queued(&mut c, &dir, 2).await;
    // Go's convention: a key is named by its lease, in hex. (Which lease: the session's,
    // or one of its own when the refused try's name was not yet known to be free — a race
    // the client resolves either way.) A session entry rides on the session's short
    // waiting lease while it waits, still named after the session: Go's mutex only ever
    // reads its own key by name, and orders the others by create revision.
    let ours = c.get(q[1].0.as_str(), None).await.unwrap();
    let lease = ours.kvs()[0].lease();
    let session = locks.session_lease().await.expect("a live session");
    assert!(
        q[1].0 == format!("{dir}{lease:x}") || q[1].0 == format!("{dir}{session:x}"),
        "our key {} is DIR/<lease hex>, as Go names its own (on lease {lease:x}, session {session:x})",
        q[1].0
    );
    assert!(!waiter.is_finished(), "fencelock waits behind Go");

    let released = Instant::now();
    interrupt(peer).await;
    let held = timeout(STEP, waiter)
        .await
        .expect("fencelock is served")
        .unwrap()
        .unwrap();
    let latency = released.elapsed();
    println!("etcd hand-off Go -> fencelock: {latency:?} (from SIGINT to etcdctl)");
    assert!(
        held.token().get() > go_rev as u64,
        "token above the Go key's create revision"
    );
    assert_eq!(held.token().get(), q[1].1 as u64, "token = our key's create revision");
    held.release().await.unwrap();
    locks.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fencelock_holds_and_go_waits_its_turn() {
    let cluster = EtcdCluster::single();
    let ep = cluster.endpoints()[0].clone();
    let locks = EtcdLock::connect(&format!("etcd://{ep}?layout=go")).await.unwrap();
    let name = unique_key("golock");
    let dir = format!("{name}/");
    let mut c = client(&cluster).await;

    let held = locks.acquire(&name, &opts()).await.unwrap();
    let (peer, mut out) = go_holder(&ep, &name);
    let q = until_queued(&mut c, &dir, 2).await;
    assert_eq!(q[0].1 as u64, held.token().get(), "ours is first");
    // Go's key is queued behind ours: it must not say it holds the lock.
    assert!(
        timeout(Duration::from_millis(300), out.next_line()).await.is_err(),
        "etcdctl took a lock fencelock holds"
    );

    let released = Instant::now();
    held.release().await.unwrap();
    let go_key = timeout(STEP, out.next_line())
        .await
        .expect("etcdctl is served")
        .unwrap()
        .unwrap();
    let latency = released.elapsed();
    println!("etcd hand-off fencelock -> Go: {latency:?} (from release to etcdctl's output)");
    assert_eq!(go_key, q[1].0);
    interrupt(peer).await;
    locks.close().await.unwrap();
}

/// Two `etcdctl lock` loops and two fencelock loops, 15 rounds each, on one log. The Go
/// side reads its key's create revision (`etcdctl get $ETCD_LOCK_KEY`) as its token — not
/// `ETCD_LOCK_REV`, which is the response header's revision and can go backwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mixed_stress_go_and_fencelock_never_overlap() {
    const ROUNDS: usize = 15;
    let cluster = EtcdCluster::single();
    let ep = cluster.endpoints()[0].clone();
    let name = unique_key("golock");
    let dir = tempfile::tempdir().unwrap();
    let log = SharedLog::create(&dir.path().join("log"));
    let started = Instant::now();

    let mut tasks = Vec::new();
    for who in ["go-a", "go-b"] {
        let (ep, name, path) = (ep.clone(), name.clone(), log.path().to_owned());
        tasks.push(tokio::spawn(async move {
            let script = format!(
                "r=$(etcdctl --endpoints={ep} get \"$ETCD_LOCK_KEY\" -w fields | sed -n 's/^\"CreateRevision\" : //p'); \
                 echo \"enter {who} $r\" >> {log}; sleep 0.02; echo \"exit {who}\" >> {log}",
                log = path.display()
            );
            for _ in 0..ROUNDS {
                let run = etcdctl(&ep)
                    .args(["lock", &name, "--", "sh", "-c", &script])
                    .stdout(Stdio::null())
                    .status();
                let status = timeout(Duration::from_secs(30), run).await.expect("a round ends").unwrap();
                assert!(status.success(), "{who}: etcdctl lock: {status}");
            }
        }));
    }
    for who in ["fencelock-a", "fencelock-b"] {
        let (ep, name, log) = (ep.clone(), name.clone(), log.clone());
        tasks.push(tokio::spawn(async move {
            let locks = EtcdLock::connect(&format!("etcd://{ep}?layout=go")).await.unwrap();
            for _ in 0..ROUNDS {
                let held = locks.acquire(&name, &opts()).await.unwrap();
                log.enter(who, Some(held.token().get()));
                tokio::time::sleep(Duration::from_millis(20)).await; // the critical section's work
                log.exit(who);
                held.release().await.unwrap();
            }
            locks.close().await.unwrap();
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let check = log.check();
    println!(
        "etcd mixed stress: {} entries in {:?}, {} overlaps",
        check.tokens.len(),
        started.elapsed(),
        check.overlaps
    );
    assert_eq!(
        check.entries,
        ["fencelock-a", "fencelock-b", "go-a", "go-b"]
            .map(|w| (w.to_owned(), ROUNDS))
            .to_vec()
    );
    assert_eq!(check.overlaps, 0, "two holders at once");
    assert_eq!(check.tokens.len(), 4 * ROUNDS, "every entry has a token");
    assert!(
        check.regressions.is_empty(),
        "tokens went back: {:?}",
        check.regressions
    );
}
