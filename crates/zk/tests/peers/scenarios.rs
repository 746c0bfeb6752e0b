//! The interop scenarios, run against any peer (Curator, kazoo): both directions of
//! exclusion and a mixed stress on one shared log. Waits are bounded; the peer's blocking
//! calls run in `block_in_place` so the runtime keeps serving fencelock.

use std::time::Duration;

use fencelock_core::{DistributedLock, LockOptions};
use fencelock_zk::ZkLock;
use tokio::task::block_in_place;
use tokio::time::Instant;

use super::{Peer, SharedLog};

/// Waits (bounded: 20 s, polling every 20 ms) until `path` has `n` children; returns them.
pub async fn await_children(hosts: &str, path: &str, n: usize) -> Vec<String> {
    let client = zookeeper_client::Client::connect(hosts)
        .await
        .expect("plain client connects");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let c = client.list_children(path).await.unwrap_or_default();
        if c.len() == n {
            return c;
        }
        assert!(Instant::now() < deadline, "{path} never had {n} children (has {c:?})");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn opts(wait: Duration) -> LockOptions {
    LockOptions::new().with_ttl(Duration::from_secs(30)).with_wait(wait)
}

/// The peer holds: fencelock's `try_acquire` gets `None`, a short `acquire` times out, a
/// waiting `acquire` is granted once the peer releases. `our_node` checks the name of
/// fencelock's node while it waits behind the peer. Returns the hand-off (peer's release
/// sent → fencelock's grant).
pub async fn peer_holds_fencelock_waits(
    peer: &mut Peer,
    fl: &ZkLock,
    key: &str,
    (hosts, path): (&str, &str),
    our_node: &dyn Fn(&str) -> bool,
) -> Duration {
    assert_eq!(
        block_in_place(|| peer.ask("acquire 10000", Duration::from_secs(20))),
        "acquired"
    );
    assert!(
        fl.try_acquire(key, &LockOptions::new()).await.unwrap().is_none(),
        "fencelock got a lock {} holds",
        peer.name
    );
    let e = fl.acquire(key, &opts(Duration::from_millis(300))).await.unwrap_err();
    assert!(e.is_timeout(), "{e}");
    let waiter = tokio::spawn({
        let (fl, key) = (fl.clone(), key.to_owned());
        async move { fl.acquire(&key, &opts(Duration::from_secs(20))).await }
    });
    let nodes = await_children(hosts, path, 2).await;
    assert!(
        nodes.iter().any(|n| our_node(n)),
        "fencelock's node is not named as expected: {nodes:?}"
    );
    let released_at = Instant::now();
    assert_eq!(
        block_in_place(|| peer.ask("release", Duration::from_secs(10))),
        "released"
    );
    let lease = waiter
        .await
        .unwrap()
        .expect("fencelock is granted after the peer releases");
    let handoff = released_at.elapsed();
    assert!(lease.token().get() > 0);
    lease.release().await.unwrap();
    handoff
}

/// fencelock holds: the peer's short acquire times out; a waiting one is granted once
/// fencelock releases. Returns the hand-off (fencelock's release → the peer's answer).
pub async fn fencelock_holds_peer_waits(
    peer: &mut Peer,
    fl: &ZkLock,
    key: &str,
    (hosts, path): (&str, &str),
) -> Duration {
    let lease = fl.acquire(key, &opts(Duration::from_secs(10))).await.unwrap();
    assert_eq!(
        block_in_place(|| peer.ask("acquire 500", Duration::from_secs(20))),
        "timeout",
        "{} got the lock fencelock holds",
        peer.name
    );
    peer.send("acquire 20000");
    await_children(hosts, path, 2).await;
    let released_at = Instant::now();
    lease.release().await.unwrap();
    assert_eq!(block_in_place(|| peer.next_line(Duration::from_secs(25))), "acquired");
    let handoff = released_at.elapsed();
    assert_eq!(
        block_in_place(|| peer.ask("release", Duration::from_secs(10))),
        "released"
    );
    handoff
}

/// `peers` (already started) and `ours` fencelock loops take the lock `rounds` times each,
/// holding `hold`, logging to `log`. Checks: 0 overlaps, every round logged, fencelock's
/// tokens strictly increasing, and every holder's czxid too (the peers log theirs). Returns the cross-library hand-offs' (median, max) in ms.
pub async fn mixed_stress(
    peers: &mut [Peer],
    fl: &[ZkLock],
    key: &str,
    log: &SharedLog,
    rounds: usize,
    hold: Duration,
) -> (f64, f64) {
    for p in peers.iter_mut() {
        p.send(&format!("loop {rounds} {}", hold.as_millis()));
    }
    let mut loops = Vec::new();
    for (i, l) in fl.iter().enumerate() {
        let (l, key) = (l.clone(), key.to_owned());
        let log_path = log.path.clone();
        loops.push(tokio::spawn(async move {
            let log = super::LogWriter(log_path);
            for _ in 0..rounds {
                let lease = l.acquire(&key, &opts(Duration::from_secs(60))).await.unwrap();
                let name = format!("fencelock-{i}");
                log.append(&name, &format!("enter {}", lease.token().get()));
                tokio::time::sleep(hold).await; // the work done while holding
                log.append(&name, "exit");
                lease.release().await.unwrap();
            }
        }));
    }
    for l in loops {
        l.await.unwrap();
    }
    for p in peers.iter_mut() {
        let name = p.name.clone();
        assert_eq!(
            block_in_place(|| p.next_line(Duration::from_secs(90))),
            "done",
            "{name}"
        );
    }
    let r = log.check();
    assert_eq!(r.overlaps, 0, "two holders at once: {r:?}");
    assert_eq!(r.entries.len(), peers.len() + fl.len(), "{r:?}");
    assert!(r.entries.values().all(|n| *n == rounds), "{r:?}");
    assert_eq!(r.tokens.len(), fl.len() * rounds);
    assert!(
        r.tokens_strictly_increase(),
        "fencelock tokens went back: {:?}",
        r.tokens
    );
    // The peers' own czxids (read by the peer scripts) continue the same order.
    assert_eq!(r.all_tokens.len(), (peers.len() + fl.len()) * rounds);
    assert!(r.all_tokens_strictly_increase(), "czxids went back: {:?}", r.all_tokens);
    r.handoff_ms()
}
