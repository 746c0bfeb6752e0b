//! One instance, several connections: a statement stuck on one connection (a row lock
//! held by someone else's transaction) does not hold up a grant of another key, and many
//! keys at once are worked on by more than one server backend.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail by panicking

use std::time::Duration;

use fencelock_core::{DistributedLock, Lease, LockOptions};
use fencelock_postgres::tokio_postgres::NoTls;
use fencelock_postgres::PgLock;
use fencelock_testkit::pg_server::PgServer;
use fencelock_testkit::until::{self, until, until_eq};
use tokio::time::Instant;

mod common;
use common::queued;

/// The most any step here may take before the test counts it as stuck (a failure bound,
/// not a measurement: every step that passes takes milliseconds).
const STUCK: Duration = Duration::from_secs(10);

fn opts() -> LockOptions {
    LockOptions::new()
        .with_ttl(Duration::from_secs(60))
        .with_auto_renew(false)
}

/// Waits (bounded) until `n` backends named `app` wait for a lock on the server.
async fn blocked(server: &PgServer, app: &str, n: usize) {
    let sql =
        format!("SELECT count(*) FROM pg_stat_activity WHERE application_name = '{app}' AND wait_event_type = 'Lock'");
    until_eq("backends blocked on a lock on the server", STUCK, n.to_string(), || {
        server.psql(&sql)
    })
    .await;
}

/// An instance whose connections name themselves `app`, with the URL options `extra`
/// (`&`-prefixed, or empty).
async fn connect_as(server: &PgServer, app: &str, extra: &str) -> PgLock {
    PgLock::connect(&format!("{}&application_name={app}{extra}", server.url()))
        .await
        .unwrap()
}

/// 200 keys acquired at once through `lock`.
async fn acquire_200_at_once(lock: &PgLock) -> Vec<Lease> {
    futures_util::future::join_all((0..200).map(|i| {
        let lock = lock.clone();
        async move { lock.acquire(&format!("k{i}"), &opts()).await.unwrap() }
    }))
    .await
}

/// Releases `leases`, then closes `lock`.
async fn release_all_and_close(lock: &PgLock, leases: Vec<Lease>) {
    for lease in leases {
        lease.release().await.unwrap();
    }
    lock.close().await.unwrap();
}

/// An operator's transaction inserts key `a`'s row and keeps it uncommitted: the acquire
/// of `a` (an upsert of that row) then waits on the server for that transaction. A grant
/// of key `b` through the same instance must not wait behind it. With one connection per
/// instance it did: the server runs one connection's statements one after another, so `b`
/// was answered only after `a`'s blocker ended. (The statement timeout is set far above
/// [`STUCK`] so that neither statement is cut by it.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grant_is_not_held_up_behind_a_statement_blocked_on_another_key() {
    let server = PgServer::start();
    let app = "pgpool_blocked";
    let lock = connect_as(&server, app, "&timeout=60s").await;
    let (mut operator, connection) = server
        .url()
        .parse::<fencelock_postgres::tokio_postgres::Config>()
        .unwrap()
        .application_name("operator")
        .connect(NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    let blocker = operator.transaction().await.unwrap();
    blocker
        .execute(
            "INSERT INTO fencelock.locks (key, grant_id, expires_at) VALUES ('a', 'operator', now() - interval '1 hour')",
            &[],
        )
        .await
        .unwrap();

    let a = {
        let lock = lock.clone();
        tokio::spawn(async move { lock.try_acquire("a", &opts()).await })
    };
    blocked(&server, app, 1).await;

    let b = tokio::time::timeout(STUCK, lock.try_acquire("b", &opts()))
        .await
        .expect("the grant of `b` waited behind the statement blocked on `a`")
        .unwrap()
        .expect("`b` is free");
    assert!(
        !a.is_finished(),
        "the order this test needs: `a` is still blocked when `b` is granted"
    );
    blocker.rollback().await.unwrap();
    let a = tokio::time::timeout(STUCK, a)
        .await
        .expect("`a` is answered once its blocker ended")
        .unwrap()
        .unwrap()
        .expect("`a` is free once the operator's row is gone");
    a.release().await.unwrap();
    b.release().await.unwrap();
    lock.close().await.unwrap();
}

/// 200 keys acquired at once through one instance are worked on by more than one server
/// backend (and by no more than the instance's connections, 4 by default).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_keys_at_once_use_more_than_one_backend() {
    let server = PgServer::start();
    let app = "pgpool_many";
    let lock = connect_as(&server, app, "").await;
    let leases = acquire_200_at_once(&lock).await;
    let n = server.backends_of(app);
    assert!(
        (2..=4).contains(&n),
        "{n} server backends did the work of 200 keys at once (want 2 to 4)"
    );
    release_all_and_close(&lock, leases).await;
}

/// Connections are made lazily: connecting makes one, a client that never has two
/// statements in flight keeps one, and `connections=1` keeps one however many keys are
/// asked for at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_are_made_only_when_needed_and_never_more_than_asked() {
    let server = PgServer::start();
    let app = "pgpool_lazy";
    let lock = connect_as(&server, app, "").await;
    assert_eq!(server.backends_of(app), 1, "connect makes one connection, not four");
    for i in 0..20 {
        let lease = lock.acquire(&format!("k{i}"), &opts()).await.unwrap();
        lease.extend(Duration::from_secs(30)).await.unwrap();
        lease.release().await.unwrap();
    }
    assert_eq!(
        server.backends_of(app),
        1,
        "one statement at a time needs one connection"
    );
    assert_eq!(lock.backend_pids().len(), 1);
    lock.close().await.unwrap();

    let app = "pgpool_one";
    let lock = connect_as(&server, app, "&connections=1").await;
    let leases = acquire_200_at_once(&lock).await;
    assert_eq!(server.backends_of(app), 1, "connections=1");
    release_all_and_close(&lock, leases).await;
}

/// A lease belongs to the connection that granted it: when one of an instance's
/// connections ends (its backend terminated), exactly the leases it granted are reported
/// lost; the leases of its other connections stay held, and extend and auto-renew through
/// their own connections.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_end_of_one_connection_loses_only_its_own_leases() {
    let server = PgServer::start();
    let lock = PgLock::connect(&server.url()).await.unwrap();
    let renewed = LockOptions::new().with_ttl(Duration::from_secs(3)); // auto-renewed
    let leases = futures_util::future::join_all((0..200).map(|i| {
        let lock = lock.clone();
        async move { lock.acquire(&format!("k{i}"), &renewed).await.unwrap() }
    }))
    .await;
    let pids: Vec<i32> = leases
        .iter()
        .map(|l| lock.lease_backend_pid(l).expect("held through a live connection"))
        .collect();
    let victim = pids[0];
    assert!(
        pids.iter().any(|p| *p != victim),
        "the 200 leases were all granted through one connection: {:?}",
        lock.backend_pids()
    );
    assert_eq!(server.psql(&format!("SELECT pg_terminate_backend({victim})")), "t");
    let (lost, kept): (Vec<_>, Vec<_>) = leases.into_iter().zip(pids).partition(|(_, pid)| *pid == victim);
    for (lease, _) in &lost {
        tokio::time::timeout(STUCK, lease.lost())
            .await
            .expect("a lease of the terminated connection is reported lost");
    }
    // Longer than a renewal period (a third of the TTL) and than the validity: the
    // others' auto-renewals went through their own connections.
    tokio::time::sleep(Duration::from_secs(4)).await; // lets renewals run, not a synchronisation
    for (lease, _) in &kept {
        assert!(lease.is_held(), "a lease of another connection was lost");
        lease.extend(Duration::from_secs(3)).await.unwrap();
    }
    for (lease, _) in lost {
        assert!(lease.release().await.unwrap_err().is_lease_lost());
    }
    for (lease, _) in kept {
        lease.release().await.unwrap();
    }
    lock.close().await.unwrap();
}

/// The connection that listens for release notifications ends while a waiter waits: the
/// waiter is woken, its next attempt makes another connection listen first, and the
/// release that follows wakes it by notification — its fallback re-check would come only
/// at the holder's expiry (60 s), far beyond [`STUCK`].
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listen_moves_to_another_connection_when_the_listener_ends() {
    let server = PgServer::start();
    let holder = PgLock::connect(&server.url()).await.unwrap();
    let held = holder.acquire("k", &opts()).await.unwrap();
    let waiting = PgLock::connect(&format!("{}&poll=5m", server.url())).await.unwrap();
    let listener = waiting.backend_pid().await.unwrap();
    let waiter = {
        let waiting = waiting.clone();
        tokio::spawn(async move { waiting.acquire("k", &opts().with_wait(STUCK * 3)).await })
    };
    queued(&server, "k", 1, STUCK).await;
    // Count the acquire statements from here: the waiter's attempt after its wake-up.
    common::count_acquires(&server);
    assert_eq!(server.psql(&format!("SELECT pg_terminate_backend({listener})")), "t");
    until(
        "the waiter woken when its listening connection ended (an acquire sent)",
        STUCK,
        || common::acquires(&server) > 0,
    )
    .await;
    // That attempt was sent after another connection's LISTEN was answered.
    let now_listening = waiting.backend_pid().await.unwrap();
    assert_ne!(now_listening, listener);
    held.release().await.unwrap();
    let lease = tokio::time::timeout(STUCK, waiter)
        .await
        .expect("the release did not wake the waiter: nobody listens")
        .unwrap()
        .unwrap();
    lease.release().await.unwrap();
    waiting.close().await.unwrap();
}

/// Makes the connections that carry `leases` silent: an operator's transaction locks the
/// leases' rows, and their extends (sent at once) wait for it past the statement timeout
/// (an `Unavailable`, temporary) — the connections are kept, for the leases are still
/// valid. The operator keeps the rows locked until it commits.
async fn silence(server: &PgServer, leases: &[&Lease]) -> common::Operator {
    let keys: Vec<String> = leases.iter().map(|l| format!("'{}'", l.key())).collect();
    let operator = common::Operator::holding(
        server,
        &format!(
            "SELECT 1 FROM fencelock.locks WHERE key IN ({}) FOR UPDATE",
            keys.join(",")
        ),
    )
    .await;
    let extended = futures_util::future::join_all(leases.iter().map(|l| l.extend(Duration::from_secs(60)))).await;
    assert!(
        extended.iter().all(|e| matches!(e, Err(e) if e.is_temporary())),
        "the extends were not held up past the timeout: {extended:?}"
    );
    operator
}

/// A connection kept for its leases while it is silent gets no new statements while
/// another connection can take them. Here a lease's extend waits for an operator's lock
/// on the lease's row past the statement timeout: the connection — still carrying a valid
/// lease, so not cut — is silent, and the next grant goes to a new connection and is
/// granted at once. (Before, the silent connection looked idle, the grant was sent behind
/// the extend, and it failed after the timeout: "no answer to acquire within 1s".)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_connection_kept_for_its_leases_gets_no_new_grants() {
    let server = PgServer::start();
    let locks = PgLock::connect(&format!("{}&connections=2", server.url()))
        .await
        .unwrap();
    let held = locks.acquire("a", &opts()).await.unwrap();
    let pid = locks.lease_backend_pid(&held).expect("the granting connection");
    let operator = silence(&server, &[&held]).await;
    assert!(held.is_held(), "the lease was lost with its silent connection");
    let next = tokio::time::timeout(STUCK, locks.try_acquire("b", &opts()))
        .await
        .expect("the grant was stuck");
    let next = match next {
        Ok(Some(lease)) => lease,
        other => panic!("`b` was not granted while `a`'s connection was silent: {other:?}"),
    };
    assert_ne!(
        locks.lease_backend_pid(&next),
        Some(pid),
        "the grant went to the silent connection"
    );
    next.release().await.unwrap();
    operator.commit().await;
    held.release().await.unwrap();
    locks.close().await.unwrap();
}

/// A release whose lease's connection is silent goes through another connection (a
/// release acts on our grant id only, whichever connection carries it). Review of the
/// silent-connection change: it was queued behind the stalled statement on its own
/// connection, failed after the timeout, and the key stayed held until the stall cleared
/// or the row expired.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_does_not_wait_behind_its_silent_connection() {
    let server = PgServer::start();
    let locks = PgLock::connect(&format!("{}&connections=2", server.url()))
        .await
        .unwrap();
    let stalled = locks.acquire("a", &opts()).await.unwrap();
    let released = locks.acquire("c", &opts()).await.unwrap();
    let pid = locks.lease_backend_pid(&stalled).expect("the granting connection");
    assert_eq!(
        locks.lease_backend_pid(&released),
        Some(pid),
        "set-up: both leases through one connection"
    );
    let operator = silence(&server, &[&stalled]).await;
    let release = tokio::time::timeout(STUCK, released.release())
        .await
        .expect("the release was stuck");
    assert!(
        release.is_ok(),
        "the release failed behind its silent connection: {release:?}"
    );
    let other = PgLock::connect(&server.url()).await.unwrap();
    let again = other.try_acquire("c", &opts()).await.unwrap();
    assert!(again.is_some(), "`c` was still held after its release");
    drop(again);
    other.close().await.unwrap();
    operator.commit().await;
    stalled.release().await.unwrap();
    locks.close().await.unwrap();
}

/// The connection that listens for release notifications falls silent (a lease's extend
/// on it waits for an operator's row lock past the statement timeout) while one of the
/// instance's waiters waits: the connection is kept (its lease is valid) but the server
/// holds notifications for it until its statement ends, so another connection must
/// listen meanwhile. The release by another instance then wakes the waiter at once —
/// its fallback re-check would come only at the holder's expiry (60 s) or 4 × poll
/// (2–4 min), far beyond [`STUCK`]. (Review of the silent-connection change: the silent
/// connection stayed the only listener, and the waiter slept through the release.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_listener_is_replaced_so_a_release_still_wakes_the_waiter() {
    let server = PgServer::start();
    let holder = PgLock::connect(&server.url()).await.unwrap();
    let held = holder.acquire("k", &opts()).await.unwrap();
    let waiting = PgLock::connect(&format!("{}&connections=2&poll=30s", server.url()))
        .await
        .unwrap();
    let stalled = waiting.acquire("a", &opts()).await.unwrap();
    let listener = waiting.backend_pid().await.unwrap();
    assert_eq!(
        waiting.lease_backend_pid(&stalled),
        Some(listener),
        "set-up: the lease to stall is on the listening connection"
    );
    let waiter = {
        let waiting = waiting.clone();
        tokio::spawn(async move { waiting.acquire("k", &opts().with_wait(STUCK * 3)).await })
    };
    queued(&server, "k", 1, STUCK).await;
    let operator = silence(&server, &[&stalled]).await;
    assert!(stalled.is_held(), "the lease was lost with its silent connection");
    held.release().await.unwrap();
    let lease = tokio::time::timeout(STUCK, waiter)
        .await
        .expect("the release did not wake the waiter: only the silent connection listens")
        .unwrap()
        .unwrap();
    assert_ne!(
        waiting.backend_pid().await.unwrap(),
        listener,
        "the silent connection is still the listener"
    );
    lease.release().await.unwrap();
    // Once the silent connection answers again (the extend, through the lease's own
    // connection), it stops listening: each release is then delivered to us once.
    operator.commit().await;
    stalled.extend(Duration::from_secs(60)).await.unwrap();
    // pg_stat_activity shows a backend's last statement only, so nothing else may run on
    // that connection before this sees the UNLISTEN: the test sends nothing more on it
    // until then (its one lease is not renewed, `auto_renew` off; the waiter's lease was
    // released through its own connection, and no waiter is left to keep a ticket), and
    // the instance's background work sends nothing there meanwhile (the UNLISTEN is the
    // one statement it starts on a replaced listener).
    let last_statement = format!("SELECT query FROM pg_stat_activity WHERE pid = {listener}");
    until(
        "the replaced listener's last statement is an UNLISTEN once it answered again",
        STUCK,
        || server.psql(&last_statement).starts_with("UNLISTEN"),
    )
    .await;
    stalled.release().await.unwrap();
    holder.close().await.unwrap();
    waiting.close().await.unwrap();
}

/// Sends statements not tied to a lease (a `try_acquire` of a fresh key and its release)
/// until the server counts `n` backends named `app`, failing with `what` after [`STUCK`].
/// A connection over the pool's bound is given back at the start of such a statement,
/// when one has nothing in flight — which a background statement on it (an `UNLISTEN`)
/// may delay past the first one — and its server backend leaves a moment after: hence
/// more than one statement, each bounded, paced by [`until::EVERY`] between looks.
async fn given_back_by_statements(server: &PgServer, locks: &PgLock, app: &str, n: usize, what: &str) {
    let deadline = Instant::now() + STUCK;
    for i in 0.. {
        let seen = server.backends_of(app);
        if seen == n {
            return;
        }
        assert!(Instant::now() < deadline, "{what}: {seen} backends");
        let lease = tokio::time::timeout(STUCK, locks.try_acquire(&format!("given_back{i}"), &opts()))
            .await
            .expect("a statement was stuck")
            .unwrap()
            .expect("a fresh key is free");
        lease.release().await.unwrap();
        tokio::time::sleep(until::EVERY).await; // paces the looks, bounded by the deadline
    }
}

/// With `connections=1`, the only connection falls silent (a lease's extend waits for an
/// operator's row lock past the statement timeout) but is kept for its valid lease: the
/// instance opens one connection over its bound for new statements, and grants another
/// key at once instead of sending every statement behind the stall until the lease
/// lapses. Once the stall is over and the extra connection is idle and holds nothing,
/// the next statement gives it back. (Review of the silent-connection change: `b` was
/// sent behind the stalled extend and failed, "no answer to acquire within 1s", and so
/// would every statement until the lease's TTL ran out.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_single_silent_connection_gets_one_spare_until_it_answers_again() {
    let server = PgServer::start();
    let app = "pgpool_spare";
    let locks = connect_as(&server, app, "&connections=1").await;
    let stalled = locks.acquire("a", &opts()).await.unwrap();
    let pid = locks.lease_backend_pid(&stalled).expect("the granting connection");
    let operator = silence(&server, &[&stalled]).await;
    let next = tokio::time::timeout(STUCK, locks.try_acquire("b", &opts()))
        .await
        .expect("the grant was stuck");
    let next = match next {
        Ok(Some(lease)) => lease,
        other => panic!("`b` was not granted while the only connection was silent: {other:?}"),
    };
    assert_ne!(
        locks.lease_backend_pid(&next),
        Some(pid),
        "the grant went to the silent connection"
    );
    let third = tokio::time::timeout(STUCK, locks.try_acquire("c", &opts()))
        .await
        .expect("the grant was stuck")
        .unwrap()
        .expect("`c` is free");
    assert_eq!(server.backends_of(app), 2, "one connection over the bound, no more");
    for lease in [next, third] {
        lease.release().await.unwrap();
    }
    operator.commit().await;
    stalled.extend(Duration::from_secs(60)).await.unwrap(); // its connection answers again
    stalled.release().await.unwrap();
    given_back_by_statements(&server, &locks, app, 1, "the spare connection was kept").await;
    locks.close().await.unwrap();
}

/// With `connections=2`, both connections fall silent (each carries a lease whose extend
/// waits for an operator's row lock past the timeout): a spare is made for new statements
/// and listens. Once both answer again, the first connection still holds its lease and
/// the second holds nothing: the second is given back, so the pool is at its bound again.
/// (Review of the spare change: only the first idle connection that answers was tried;
/// it held a lease, so none was closed — for as long as that lease lived.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_spare_is_given_back_even_when_the_first_connection_holds_a_lease() {
    let server = PgServer::start();
    let app = "pgpool_surplus";
    let locks = connect_as(&server, app, "&connections=2").await;
    let mut leases = acquire_200_at_once(&locks).await;
    let pids = locks.backend_pids();
    assert_eq!(pids.len(), 2, "set-up: 200 keys at once use both connections");
    // One lease kept on each connection, the first one's lease on the first connection.
    let mut kept = Vec::new();
    for pid in &pids {
        let i = leases
            .iter()
            .position(|l| locks.lease_backend_pid(l) == Some(*pid))
            .expect("set-up: a lease on each connection");
        kept.push(leases.swap_remove(i));
    }
    for lease in leases {
        lease.release().await.unwrap();
    }
    let operator = silence(&server, &kept.iter().collect::<Vec<_>>()).await;
    let spare = tokio::time::timeout(STUCK, locks.try_acquire("b", &opts()))
        .await
        .expect("the grant was stuck")
        .unwrap()
        .expect("`b` is free");
    assert_eq!(server.backends_of(app), 3, "set-up: one spare while both are silent");
    spare.release().await.unwrap();
    operator.commit().await;
    for lease in &kept {
        lease.extend(Duration::from_secs(60)).await.unwrap(); // its connection answers again
    }
    let second = kept.pop().unwrap();
    second.release().await.unwrap();
    given_back_by_statements(
        &server,
        &locks,
        app,
        2,
        "no connection was given back while one held nothing",
    )
    .await;
    assert!(kept[0].is_held(), "the lease on the first connection was lost");
    kept.pop().unwrap().release().await.unwrap();
    locks.close().await.unwrap();
}
