//! Hardening K3: a request whose outcome is unknown (held by the network past its timeout,
//! delivered after the link heals) is followed up until its effect is gone — nothing stays
//! behind for as long as the client lives.

use std::time::Duration;

use fencelock_core::{LockError, LockOptions};

use super::{shared_gate, within, Fixture, SuiteConfig, LONG_TTL};
use crate::keys::unique_key;
use crate::proxy::Mode;

/// The request timeout of the proxied client.
const REQUEST_TIMEOUT: Duration = Duration::from_millis(500);

/// An acquire (and a try_acquire) whose request the network holds past the client's
/// timeout, then delivers: the call fails, and the grant or queue entry it made on the
/// server is removed in the background while the client lives on — another client gets
/// the key well before the 60 s TTL, and no record of it is left.
pub async fn unanswered_request_leaves_nothing_behind(f: &dyn Fixture, cfg: &SuiteConfig) {
    let _gate = shared_gate().await;
    let Some(cut) = f.proxied_client(REQUEST_TIMEOUT).await else {
        return; // no network: no request can go unanswered
    };
    let other = f.client().await;
    let opts = LockOptions::new().with_ttl(LONG_TTL).with_auto_renew(false);
    for waiting in [false, true] {
        let key = unique_key(if waiting {
            "unanswered-acquire"
        } else {
            "unanswered-try"
        });
        // Use the key once first: servers that keep per-key structure (ZooKeeper's parent
        // node) would otherwise refuse the late request for a missing parent and hide the
        // fault.
        other
            .acquire(&key, &opts)
            .await
            .expect("acquire before the fault")
            .release()
            .await
            .expect("release before the fault");
        cut.set_to_server(Mode::Blackhole);
        let call = async {
            if waiting {
                cut.client
                    .acquire(&key, &opts.with_wait(REQUEST_TIMEOUT * 2))
                    .await
                    .map(Some)
            } else {
                cut.client.try_acquire(&key, &opts).await
            }
        };
        let got = within(REQUEST_TIMEOUT * 8 + cfg.slack, "a call whose request is held", call).await;
        assert!(
            !matches!(got, Ok(Some(_))),
            "a call whose request never reached the server returned a lease (waiting={waiting})"
        );
        drop(got);
        // The link heals: the held request reaches the server now.
        cut.set(Mode::Pass);
        let next = within(
            cfg.slack * 4,
            "another client after the held request was delivered",
            other.acquire(&key, &opts.with_wait(cfg.slack * 3)),
        )
        .await
        .unwrap_or_else(|e| {
            panic!("the key stayed blocked after an unanswered request was delivered late (waiting={waiting}): {e}")
        });
        next.release().await.expect("release");
        let left = settle(cfg.slack * 2, || f.records(&key), |n| n == 0).await;
        assert_eq!(left, 0, "records of the key left on the server (waiting={waiting})");
    }
    drop(cut);
}

/// A release whose answer is lost after the server carried it out — the answer is held
/// by the network, then delivered late (`Pass`), or the connection is cut under it
/// (`Reset`) — is never reported as a lost lease: the lease was ours until the release.
/// A client may repeat the request (on another member, or on a new connection); a repeat
/// that finds our grant already gone must not be read as "taken from us". With the answer
/// delivered the release is `Ok`; with the connection cut it is `Ok` or an error saying the
/// outcome is unknown — never `LeaseLost`. Either way the key is free at once.
///
/// Found as a false "lost" from `fencelock run` on a loaded three-member etcd cluster: a
/// guarded delete outlasted its share of the request timeout, was sent again to another
/// member, and the repeat's failed compare was reported as the lease lost.
pub async fn release_whose_answer_is_lost_is_not_reported_lost(f: &dyn Fixture, cfg: &SuiteConfig) {
    let _gate = shared_gate().await;
    // Long enough that the wait for the server below never outlasts a single try.
    let Some(cut) = f.proxied_client(REQUEST_TIMEOUT * 4).await else {
        return; // no network: no answer can be lost
    };
    let other = f.client().await;
    // Both kinds of lease: etcd's auto-renewed locks ride on the session lease, the others
    // on a lease of their own (`fencelock run` renews, so it takes the first path).
    for (heal, renew) in [(Mode::Pass, false), (Mode::Reset, false), (Mode::Reset, true)] {
        let opts = LockOptions::new().with_ttl(LONG_TTL).with_auto_renew(renew);
        let key = unique_key("release-answer-lost");
        // One whole cycle first, so that what a client loads once (Redis scripts: a first
        // `EVALSHA` is answered "no script" and needs that answer) is loaded.
        within(cfg.slack, "a cycle before the fault", async {
            let warm = cut.client.acquire(&key, &opts).await.expect("acquire before the fault");
            warm.release().await.expect("release before the fault");
        })
        .await;
        let lease = within(cfg.slack, "acquire before the fault", cut.client.acquire(&key, &opts))
            .await
            .expect("acquire before the fault");
        cut.set_to_client(Mode::Blackhole);
        let release = tokio::spawn(lease.release());
        // The server carries the release out; its answer stays in the network.
        let left = settle(cfg.slack * 2, || f.records(&key), |n| n == 0).await;
        assert_eq!(left, 0, "the release never reached the server ({heal:?})");
        cut.set(heal);
        cut.set(Mode::Pass);
        let released = within(
            REQUEST_TIMEOUT * 16 + cfg.slack,
            "the release whose answer was lost",
            release,
        )
        .await
        .expect("release task");
        match (&released, heal) {
            (Ok(()), _) => {}
            (Err(LockError::LeaseLost { reason, .. }), _) => panic!(
                "a release the server carried out was reported as a lost lease ({reason}) after its answer was lost ({heal:?})"
            ),
            (Err(e), Mode::Pass) => panic!("a release whose answer was delivered late failed: {e}"),
            (Err(_), _) => {} // the connection was cut: an unknown outcome may be an error
        }
        let next = within(
            cfg.slack,
            "another client after the release",
            other.try_acquire(&key, &opts),
        )
        .await
        .expect("try_acquire after the release");
        assert!(next.is_some(), "the key is still held after its release ({heal:?})");
        if let Some(next) = next {
            next.release().await.expect("release");
        }
    }
    drop(cut);
}

/// A queued waiter whose answers stop arriving (its requests still reach the server) while
/// the holder releases: the server may hand the key to it — a direct hand-off, a waiter
/// node or ticket that is now first — without the waiter ever hearing. When its wait ends
/// it gives up, and whatever it was given is given back **while the link is still cut**:
/// another client gets the key within the slack — or, where a client that heard nothing
/// had stopped sending (ZooKeeper's disconnected session), within two session timeouts —
/// long before the 60 s TTL; once the link heals, no record of the waiter is left. The
/// cut-off client stays alive throughout, so nothing here is freed by a closed connection.
///
/// Each backend's give-up must therefore go out without needing an answer: Redis and
/// Redlock send their follow-ups on the open connection (with the scripts loaded ahead:
/// `a_give_up_sent_unheard_runs_on_a_server_that_lost_its_scripts`); PostgreSQL sends an
/// unheard acquire's abandon right behind it on its connection, before that connection is
/// cut as dead (`an_acquire_landing_unheard_is_given_back_while_the_answers_stay_lost`).
/// For a while this case healed the link before the other client asked, because
/// PostgreSQL's abandon waited for each statement's answer and kept the key about 1 run
/// in 10.
///
/// Found on Redis: a waiter cut off while its queueing turn was unanswered left its entry
/// behind, and the release's direct hand-off granted the key to it for a whole TTL.
pub async fn queued_waiter_cut_off_gives_back_what_it_was_given(f: &dyn Fixture, cfg: &SuiteConfig) {
    let _gate = shared_gate().await;
    let Some(cut) = f.proxied_client(REQUEST_TIMEOUT).await else {
        return; // no network: no answer can be lost
    };
    let other = f.client().await;
    let opts = LockOptions::new().with_ttl(LONG_TTL).with_auto_renew(false);
    let key = unique_key("cut-off-waiter");
    within(cfg.slack, "a cycle before the fault", async {
        let warm = cut.client.acquire(&key, &opts).await.expect("acquire before the fault");
        warm.release().await.expect("release before the fault");
    })
    .await;
    let holder = within(cfg.slack, "the holder's acquire", other.acquire(&key, &opts))
        .await
        .expect("the holder's acquire");
    let held = f.records(&key).await;
    let wait = REQUEST_TIMEOUT * 6;
    let waiter = tokio::spawn({
        let (client, key) = (std::sync::Arc::clone(&cut.client), key.clone());
        async move { client.acquire(&key, &opts.with_wait(wait)).await.map(|l| l.token()) }
    });
    // Queued: the server keeps a record of the waiter beside the holder's.
    let queued = settle(cfg.slack * 2, || f.records(&key), |n| n > held).await;
    assert!(
        queued > held,
        "the waiter never queued ({held} records held, {queued} now)"
    );
    cut.set_to_client(Mode::Blackhole);
    within(cfg.slack, "the holder's release", holder.release())
        .await
        .expect("the holder's release");
    let outcome = within(wait + REQUEST_TIMEOUT * 8 + cfg.slack, "the cut-off waiter", waiter)
        .await
        .expect("waiter task");
    assert!(
        outcome.is_err(),
        "a waiter that heard nothing from the server returned a lease: {outcome:?}"
    );
    let bound = cfg.slack * 3 + cfg.session_timeout * 2;
    let next = within(
        bound + cfg.slack,
        "another client after the cut-off waiter gave up",
        other.acquire(&key, &opts.with_wait(bound)),
    )
    .await
    .unwrap_or_else(|e| panic!("the key stayed with a waiter that had given up: {e}"));
    cut.set(Mode::Pass);
    next.release().await.expect("release");
    let left = settle(cfg.slack * 2, || f.records(&key), |n| n == 0).await;
    assert_eq!(
        left, 0,
        "records of the key left on the server after the waiter gave up"
    );
    drop(cut);
}

/// Re-reads `read` until `done` holds or `limit` passes (a bounded wait for a background
/// clean-up); returns the last value read.
pub(crate) async fn settle<T, F, Fut>(limit: Duration, mut read: F, done: impl Fn(T) -> bool) -> T
where
    T: Copy,
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = T>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let v = read().await;
        if done(v) || tokio::time::Instant::now() >= deadline {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
