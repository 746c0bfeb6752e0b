//! Issue 14: what a hand-off costs the server. Waiters watch the three nodes before their
//! own; from each release to the next grant the server receives the holder's delete and
//! nothing else: the watch push is the hand-off.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail by panicking

use std::time::Duration;

use fencelock_core::{DistributedLock, LockOptions};
use fencelock_testkit::until::{served, until};
use fencelock_testkit::zk_server::ZkEnsemble;
use fencelock_zk::ZkLock;

/// From each release to the next waiter's grant the server receives two packets: the
/// holder's delete and the new holder's claim of its node — and, off the hand-off's path,
/// one read by the waiter behind, whose watched node changed. Two hand-offs in a row: the
/// second waiter knew both nodes before its own and watched them. Failed before issue
/// 14's change: 4 packets (each waiter listed the queue after the push).
///
/// The claim (`grant::settle`): both waiters' nodes name their waiting markers, and the
/// test server's 1 s waiting session bounds such a grant to at most 500 ms after its last
/// proof (¾ of 1 s less its client's 250 ms send gap: `waiting::proof_lasts`) — under half
/// of the 10 s TTL's validity, so each grant is claimed before it is returned and valid
/// for the main session's 10 s instead of 167–500 ms. Per session: the first holder 1 (its
/// delete), the first waiter 2 (its claim, its delete), the second 2 (its read of the
/// first waiter's claimed node, its claim): 5 (2 before the claim at the turn, whose
/// grants were handed out with the marker's ≤ 750 ms, a bound the leader could outlast).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hand_off_costs_the_delete_and_the_claim() {
    const EXPECTED: u64 = 5;
    let ensemble = ZkEnsemble::standalone();
    // Long timeouts keep the three sessions' pings out of the way: the client pings a
    // connection idle for 3/8 of its connect timeout (with 1 s, every 375 ms).
    let url = ensemble.url("/handoff", "session_timeout=30s&connect_timeout=5s");
    let opts = LockOptions::new()
        .with_ttl(Duration::from_secs(10))
        .with_wait(Duration::from_secs(20));
    // Time-driven packets may fall into the window on a loaded machine (a ping of a main
    // session; until the keeper's proofs left the marker as it is, each one also fired
    // the second waiter's watch on it, which it set again: CI failed on it). They only
    // ever add packets, so the hand-off's own cost is the fewest over a few rounds (≤ 3).
    let mut fewest = u64::MAX;
    for round in 0..3 {
        // Three new instances each round: a watch left from an earlier round (the second
        // waiter's on the first one's marker, kept until it fires) would keep the count
        // of watches below from growing, and the wait for it would never end.
        let (a, b, c) = (
            ZkLock::connect(&url).await.unwrap(),
            ZkLock::connect(&url).await.unwrap(),
            ZkLock::connect(&url).await.unwrap(),
        );
        // Counted per session (`cons`): the waiters' waiting sessions ping every 150 ms
        // and prove every 333 ms on their own schedule; counted with them (`mntr`'s
        // total), the figure was one off now and then ("left: 1", "left: 3").
        let ids = [
            a.session_id().await.unwrap(),
            b.session_id().await.unwrap(),
            c.session_id().await.unwrap(),
        ];
        let sent = || -> u64 { ids.iter().map(|id| ensemble.packets_of(0, &format!("0x{id:x}"))).sum() };
        let key = format!("k{round}");
        let held = a.acquire(&key, &opts).await.unwrap();
        let base_watches = ensemble.watch_count(0).expect("the server answers wchs");
        let first = tokio::spawn({
            let (b, key) = (b.clone(), key.clone());
            async move { b.acquire(&key, &opts).await }
        });
        until_watches(&ensemble, base_watches + 2).await; // b watches its own node and a's
        let second = tokio::spawn({
            let (c, key) = (c.clone(), key.clone());
            async move { c.acquire(&key, &opts).await }
        });
        // c watches its own, b's and a's nodes, and b's marker.
        until_watches(&ensemble, base_watches + 6).await;
        let before = sent();
        let released = tokio::time::Instant::now();
        held.release().await.unwrap();
        let lease = served("the first waiter is served", Duration::from_secs(10), first).await;
        let first_hand_off = released.elapsed();
        let first_left = lease.remaining();
        assert!(
            first_left > Duration::from_secs(5),
            "the first waiter's grant came with {first_left:?} of its 10 s TTL"
        );
        let released = tokio::time::Instant::now();
        lease.release().await.unwrap();
        let lease = served("the second waiter is served", Duration::from_secs(10), second).await;
        let packets = sent() - before;
        println!(
            "round {round}: {packets} packets; hand-offs {first_hand_off:?} and {:?}; validity left at the grants {first_left:?} and {:?}",
            released.elapsed(),
            lease.remaining()
        );
        assert!(
            lease.remaining() > Duration::from_secs(5),
            "the second waiter's grant came with {:?} of its 10 s TTL",
            lease.remaining()
        );
        lease.release().await.unwrap();
        for locks in [a, b, c] {
            locks.close().await.unwrap();
        }
        fewest = fewest.min(packets);
        if fewest == EXPECTED {
            break;
        }
    }
    assert_eq!(
        fewest, EXPECTED,
        "packets over two hand-offs (two releases, two claims, the second waiter's read of \
         the first one's claimed node), fewest of 3 rounds"
    );
}

/// Waits (bounded polling of `wchs`) until the server counts `n` watched paths.
async fn until_watches(ensemble: &ZkEnsemble, n: usize) {
    until(
        "the waiters never watched the nodes before theirs",
        Duration::from_secs(10),
        || ensemble.watch_count(0).expect("wchs") >= n,
    )
    .await;
}

/// Each waiter watches the waiting marker of the nearest node before its own that names
/// one, not the markers of all three nodes it tracks: a marker further ahead is watched
/// by the waiter right behind its node, which removes that node when it goes. Three
/// waiters behind a holder (whose node names none): the first watches no marker, the
/// second and the third one each — two `exists` less per contended grant than one per
/// node named.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_waiter_watches_one_waiting_marker() {
    let ensemble = ZkEnsemble::standalone();
    let url = ensemble.url("/markers", "session_timeout=30s");
    let opts = LockOptions::new()
        .with_ttl(Duration::from_secs(10))
        .with_wait(Duration::from_secs(20));
    let holder = ZkLock::connect(&url).await.unwrap();
    let held = holder.acquire("k", &opts).await.unwrap();
    let mut waiters = Vec::new();
    let mut queued = Vec::new();
    // One at a time, each settled (its own node, the nodes before it, and the marker it
    // watches) before the next queues, so each reads the node before it already named.
    for (i, nodes) in [2usize, 3, 4].into_iter().enumerate() {
        let locks = ZkLock::connect(&url).await.unwrap();
        let id = format!("0x{:x}", locks.session_id().await.unwrap());
        queued.push(tokio::spawn({
            let locks = locks.clone();
            async move { locks.acquire("k", &opts).await }
        }));
        let markers = i.min(1);
        // `until` takes its message before it looks: the label says what was wanted.
        let what = format!("waiter {i} watched its {nodes} nodes and {markers} marker(s) (session {id})");
        until(&what, Duration::from_secs(10), || {
            let watched = session_watches(&ensemble, &id);
            let on_markers = watched.iter().filter(|p| p.contains("/%waiting/")).count();
            watched.len() - on_markers >= nodes && on_markers >= markers
        })
        .await;
        waiters.push((id, locks));
    }
    let on_markers: Vec<usize> = waiters
        .iter()
        .map(|(id, _)| {
            session_watches(&ensemble, id)
                .iter()
                .filter(|p| p.contains("/%waiting/"))
                .count()
        })
        .collect();
    assert_eq!(on_markers, [0, 1, 1], "markers watched by each of the three waiters");
    held.release().await.unwrap();
    for q in queued {
        let lease = served("each waiter is served", Duration::from_secs(10), q).await;
        lease.release().await.unwrap();
    }
}

/// The paths the session `id` (as `wchc` prints it) watches.
fn session_watches(ensemble: &ZkEnsemble, id: &str) -> Vec<String> {
    ensemble
        .watches_by_session(0)
        .expect("the server answers wchc")
        .into_iter()
        .find(|(s, _)| s == id)
        .map(|(_, paths)| paths)
        .unwrap_or_default()
}

/// A waiter four places back re-lists the queue when the node three ahead of it goes (two
/// hand-offs before its turn): that listing only shows which nodes are left to watch, and
/// its grant counts from an earlier proof through the leader (or lists behind a `sync` at
/// its turn when that proof is old), so it goes without a `sync`: one packet, the listing.
/// Failed before the change: 2 packets (the `sync` and the listing).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listing_off_the_grant_s_path_goes_without_a_sync() {
    let ensemble = ZkEnsemble::standalone();
    // Long timeouts keep pings and the waiters' periodic checks (every fifth of the 60 s
    // validity) out of the count.
    let url = ensemble.url("/relist", "session_timeout=120s&connect_timeout=20s");
    // Not auto-renewed: no waiting marker, whose keeper's writes fire the waiters' marker
    // watches (each then watched again: a packet more, at its own pace).
    let opts = LockOptions::new()
        .with_ttl(Duration::from_secs(60))
        .with_wait(Duration::from_secs(20))
        .with_auto_renew(false);
    let holder = ZkLock::connect(&url).await.unwrap();
    let held = holder.acquire("k", &opts).await.unwrap();
    // Queued one at a time, each settled before the next: its own node and the (up to
    // three) nodes before it.
    let mut queued = Vec::new();
    let mut last = None;
    for nodes in [2usize, 3, 4, 4] {
        let locks = ZkLock::connect(&url).await.unwrap();
        let id = format!("0x{:x}", locks.session_id().await.unwrap());
        queued.push(tokio::spawn({
            let locks = locks.clone();
            async move { locks.acquire("k", &opts).await }
        }));
        let what = format!("the waiter watched its {nodes} nodes (session {id})");
        until(&what, Duration::from_secs(10), || {
            session_watches(&ensemble, &id).len() >= nodes
        })
        .await;
        last = Some(id);
    }
    let last = last.unwrap();
    let sent = || ensemble.packets_of(0, &last);
    let before = sent();
    held.release().await.unwrap();
    let mut queued = queued.into_iter();
    for _ in 0..3 {
        let lease = served("each waiter is served", Duration::from_secs(10), queued.next().unwrap()).await;
        lease.release().await.unwrap();
    }
    let lease = served(
        "the last waiter is served",
        Duration::from_secs(10),
        queued.next().unwrap(),
    )
    .await;
    let packets = sent() - before;
    assert_eq!(
        packets, 1,
        "packets of the last waiter from the holder's release to its grant"
    );
    lease.release().await.unwrap();
}

/// A waiter behind another instance's node that names a waiting marker watches that
/// marker only for its removal: the marker's keeper proves its session every third of the
/// waiting timeout (333 ms on the test server) without touching the marker, so the watch
/// never fires and the waiter sends nothing while it waits. Failed before the change: 3
/// packets over three proofs (each proof rewrote the marker, which fired the watch, which
/// the waiter set again) — a request per waiter per proof, growing with the waiters.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiter_sends_nothing_while_the_marker_before_it_is_proved() {
    let ensemble = ZkEnsemble::standalone();
    // Long timeouts keep pings (3/8 of the connect timeout) and the waiters' periodic
    // checks (every fifth of the validity) out of the window of about one second.
    let url = ensemble.url("/proofs", "session_timeout=120s&connect_timeout=20s");
    let opts = LockOptions::new()
        .with_ttl(Duration::from_secs(60))
        .with_wait(Duration::from_secs(30));
    let holder = ZkLock::connect(&url).await.unwrap();
    let held = holder.acquire("k", &opts).await.unwrap();
    let (first, behind) = (
        ZkLock::connect(&url).await.unwrap(),
        ZkLock::connect(&url).await.unwrap(),
    );
    let first_wait = tokio::spawn({
        let first = first.clone();
        async move { first.acquire("k", &opts).await }
    });
    let first_id = format!("0x{:x}", first.session_id().await.unwrap());
    until(
        "the first waiter watched the holder's node",
        Duration::from_secs(10),
        || !session_watches(&ensemble, &first_id).is_empty(),
    )
    .await;
    let behind_id = format!("0x{:x}", behind.session_id().await.unwrap());
    let behind_wait = tokio::spawn({
        let behind = behind.clone();
        async move { behind.acquire("k", &opts).await }
    });
    until(
        "the waiter behind watched the first waiter's marker",
        Duration::from_secs(10),
        || {
            session_watches(&ensemble, &behind_id)
                .iter()
                .any(|p| p.contains("/%waiting/"))
        },
    )
    .await;
    // The marker `/proofs/%waiting/m-SESSION` names its keeper's session.
    let marker = session_watches(&ensemble, &behind_id)
        .into_iter()
        .find(|p| p.contains("/%waiting/"))
        .unwrap();
    let keeper = format!("0x{}", marker.rsplit("/m-").next().unwrap());
    let answered = || ensemble.last_answered_of(0, &keeper);
    let sent = || ensemble.packets_of(0, &behind_id);
    let (before, proofs) = (sent(), answered());
    until("three proofs of the marker answered", Duration::from_secs(10), || {
        answered() >= proofs + 3
    })
    .await;
    assert_eq!(
        sent() - before,
        0,
        "packets of the waiter behind while the marker before it was proved three times"
    );
    held.release().await.unwrap();
    let lease = served("the first waiter is served", Duration::from_secs(10), first_wait).await;
    lease.release().await.unwrap();
    let lease = served("the waiter behind is served", Duration::from_secs(10), behind_wait).await;
    lease.release().await.unwrap();
}
