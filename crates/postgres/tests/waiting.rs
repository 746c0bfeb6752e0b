//! How waiters look again on a real server: behind others they do not poll (their
//! instance keeps their tickets alive in one statement), and a waiter behind a dead one
//! looks again exactly when the dead one's ticket expires.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail by panicking

use std::sync::Arc;
use std::time::Duration;

use fencelock_core::{DistributedLock, LockOptions};
use fencelock_postgres::PgLock;
use fencelock_testkit::pg_server::PgServer;
use tokio::time::Instant;

mod common;
use common::{acquires, count_acquires, queued};

const SLACK: Duration = Duration::from_millis(1500);

fn opts(wait: Duration) -> LockOptions {
    LockOptions::new().with_ttl(Duration::from_secs(60)).with_wait(wait)
}

/// 16 waiters queued behind a long holder, default `poll` (500 ms): each used to look
/// again every 250–500 ms (about 2.7 acquire statements a second each) to keep its ticket
/// alive; now their instance keeps the tickets and a waiter looks again only when the
/// ticket ahead of it, or the holder's lease, can have expired (at the latest every 1–2 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_waiters_do_not_poll_to_keep_their_place() {
    let server = PgServer::start();
    let holder = PgLock::connect(&server.url()).await.unwrap();
    let held = holder.acquire("k", &opts(Duration::from_secs(5))).await.unwrap();
    count_acquires(&server);
    let waiters = 16;
    let mut clients = Vec::new();
    for _ in 0..waiters / 2 {
        clients.push(Arc::new(PgLock::connect(&server.url()).await.unwrap()));
    }
    let mut tasks = Vec::new();
    for i in 0..waiters {
        let c = Arc::clone(&clients[i % clients.len()]);
        tasks.push(tokio::spawn(async move {
            c.acquire("k", &opts(Duration::from_secs(30)))
                .await
                .unwrap()
                .release()
                .await
                .unwrap();
        }));
    }
    queued(&server, "k", waiters, SLACK * 4).await;
    let before = acquires(&server);
    let window = Duration::from_secs(4);
    tokio::time::sleep(window).await; // the measurement window, not a synchronisation
    let per_waiter_per_sec = (acquires(&server) - before) as f64 / waiters as f64 / window.as_secs_f64();
    eprintln!("queued waiters: {per_waiter_per_sec:.2} acquire statements a second each (was about 2.7)");
    assert!(
        per_waiter_per_sec < 1.5,
        "{per_waiter_per_sec:.2} acquire statements a second per queued waiter: they poll"
    );
    // The queue still works: every waiter gets its turn.
    held.release().await.unwrap();
    for t in tasks {
        tokio::time::timeout(SLACK * 10, t).await.expect("hand-offs").unwrap();
    }
}

/// A ticket nobody renews (its waiter's process died) heads the queue when the holder
/// releases: the release names it in vain. The live waiter behind it looks again when
/// that ticket expires — it learnt the expiry from its last refusal — not at a poll: here
/// the poll is 10 s, so only that knowledge can get it in on time; and not before (FIFO).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiter_behind_a_dead_one_is_granted_when_its_ticket_expires() {
    let server = PgServer::start();
    let holder = PgLock::connect(&server.url()).await.unwrap();
    let held = holder.acquire("k", &opts(Duration::from_secs(5))).await.unwrap();
    let dead_for = Duration::from_secs(3);
    let inserting = Instant::now();
    server.psql(&format!(
        "INSERT INTO fencelock.waiters (key, expires_at) VALUES ('k', now() + interval '{} ms')",
        dead_for.as_millis()
    ));
    let inserted = Instant::now();
    let live = Arc::new(PgLock::connect(&format!("{}&poll=10s", server.url())).await.unwrap());
    let waiter = {
        let live = Arc::clone(&live);
        tokio::spawn(async move {
            let lease = live.acquire("k", &opts(Duration::from_secs(30))).await.unwrap();
            let at = Instant::now();
            lease.release().await.unwrap();
            at
        })
    };
    queued(&server, "k", 2, SLACK * 4).await;
    held.release().await.unwrap();
    let granted = tokio::time::timeout(dead_for + SLACK * 4, waiter)
        .await
        .expect("the live waiter was not granted: it waits for its poll")
        .unwrap();
    assert!(
        granted >= inserting + dead_for,
        "granted {:?} after the dead ticket was made, before it expired ({dead_for:?}): FIFO broken",
        granted - inserting
    );
    assert!(
        granted <= inserted + dead_for + SLACK,
        "granted {:?} after the dead ticket's expiry: it waited for a poll",
        granted - (inserted + dead_for)
    );
}

/// A waiter's look again that ran while the release handed it the key: the look waited
/// for the release's lock on the key's row, found its ticket deleted, but its snapshot
/// predates the hand-off, so it did not see the grant either. The waiter must take the
/// handed grant (token = the holder's + 1), not give it back as a lost ticket and queue
/// again (which wasted the hand-off: token + 2, and the waiter's place in line).
/// Made deterministic with an operator's lock on the row: the release and the look both
/// wait behind it, in that order. The waiter's own looks are rare (a 10 s poll: at the
/// latest every 20–40 s); its look comes when its listening connection is ended, which
/// wakes it, once the release waits. (It looked again on its own every 200–400 ms: a look
/// that came first, or within one reading of the waits after the release, failed the
/// test with "1 statement(s) never waited for the row".)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_look_again_that_crosses_the_release_handing_us_the_key_takes_it() {
    let server = PgServer::start();
    // Statements may wait for the operator's lock longer than the default 1 s timeout.
    let url = format!("{}&timeout=10s&handoff=true", server.url());
    // Granted after waiting: its release hands the key on.
    let (_holder, held) =
        common::held_after_waiting(&server, &url, "k", &opts(Duration::from_secs(1)).with_auto_renew(false)).await;
    let waiter = Arc::new(PgLock::connect(&format!("{url}&poll=10s")).await.unwrap());
    let waiting = {
        let waiter = Arc::clone(&waiter);
        tokio::spawn(async move { waiter.acquire("k", &opts(SLACK * 10)).await.unwrap() })
    };
    queued(&server, "k", 1, SLACK * 4).await;
    let operator = common::Operator::holding(&server, "SELECT 1 FROM fencelock.locks WHERE key = 'k' FOR UPDATE").await;
    let token = held.token().get();
    let release = tokio::spawn(held.release());
    let waiting_for_the_row = |what: &str| {
        format!("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query LIKE '%{what}%'")
    };
    let deadline = Instant::now() + SLACK * 4;
    // The release first ...
    while server.psql(&waiting_for_the_row("WITH mine AS")) != "1" {
        assert!(Instant::now() < deadline, "the release never waited for the row");
        tokio::time::sleep(Duration::from_millis(5)).await; // polling a condition, bounded
    }
    // ... then the waiter's look, woken by the end of its listening connection.
    let listener = waiter.backend_pid().await.unwrap();
    server.psql(&format!("SELECT pg_terminate_backend({listener})"));
    while server.psql(&waiting_for_the_row("WITH taken AS")) != "1" {
        assert!(Instant::now() < deadline, "the look never waited for the row");
        tokio::time::sleep(Duration::from_millis(5)).await; // polling a condition, bounded
    }
    operator.commit().await;
    release.await.unwrap().unwrap();
    let lease = tokio::time::timeout(SLACK * 4, waiting).await.unwrap().unwrap();
    assert_eq!(
        lease.token().get(),
        token + 1,
        "the waiter did not take the grant handed to it"
    );
}

/// A handing release and a waiter's look again on the same key never deadlock: each
/// takes the key's row first and the ticket after. (The release took the ticket first for
/// a while: with the look holding the row and waiting for the ticket, PostgreSQL found the
/// deadlock after `deadlock_timeout` and aborted one of them — a contended key stalled
/// for a second, and a release failed with "no answer within 1s".) An operator's lock on
/// the ticket makes both wait for it, the release first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handing_release_and_a_look_again_do_not_deadlock() {
    let server = PgServer::start();
    let url = format!("{}&timeout=10s&poll=100ms&handoff=true", server.url());
    let (_holder, held) =
        common::held_after_waiting(&server, &url, "k", &opts(Duration::from_secs(1)).with_auto_renew(false)).await;
    let waiter = PgLock::connect(&url).await.unwrap();
    let waiting = tokio::spawn(async move {
        let lease = waiter.acquire("k", &opts(SLACK * 10)).await.unwrap();
        (waiter, lease)
    });
    queued(&server, "k", 1, SLACK * 4).await;
    let operator =
        common::Operator::holding(&server, "SELECT 1 FROM fencelock.waiters WHERE key = 'k' FOR UPDATE").await;
    let token = held.token().get();
    let release = tokio::spawn(held.release());
    // The release (it names `heir`), then the waiter's look again (an acquire: `taken`);
    // the waiter's ticket keeper may wait too, and does not count.
    let waits = |what: &str| {
        format!("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query LIKE '%{what}%'")
    };
    let deadline = Instant::now() + SLACK * 4;
    for what in ["heir AS", "WITH taken AS"] {
        while server.psql(&waits(what)) != "1" {
            assert!(Instant::now() < deadline, "`{what}` never waited for a lock");
            tokio::time::sleep(Duration::from_millis(5)).await; // polling a condition, bounded
        }
    }
    operator.commit().await;
    let released = tokio::time::timeout(SLACK, release).await;
    assert!(
        matches!(released, Ok(Ok(Ok(())))),
        "the release did not end cleanly within {SLACK:?}: {released:?}"
    );
    let (_waiter, lease) = tokio::time::timeout(SLACK * 4, waiting).await.unwrap().unwrap();
    assert_eq!(
        lease.token().get(),
        token + 1,
        "the waiter did not take the grant handed to it (its look again was the deadlock's victim?)"
    );
}

/// A wait of a key its instance found contended lately starts with the attempt that takes
/// a ticket: `try_acquire`'s statement would only be refused (one statement less per
/// contended grant, one less holding the key's row in front of the holder's release). An
/// operator's lock on the key's row holds the wait's first statement, to read it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wait_on_a_key_found_contended_lately_starts_by_taking_a_ticket() {
    let server = PgServer::start();
    let url = format!("{}&timeout=10s", server.url());
    let holder = PgLock::connect(&url).await.unwrap();
    let waiter = Arc::new(PgLock::connect(&url).await.unwrap());
    let first = holder.acquire("k", &opts(SLACK)).await.unwrap();
    let w = Arc::clone(&waiter);
    let waited = tokio::spawn(async move { w.acquire("k", &opts(SLACK * 10)).await.unwrap() });
    queued(&server, "k", 1, SLACK * 4).await;
    first.release().await.unwrap();
    tokio::time::timeout(SLACK * 4, waited)
        .await
        .unwrap()
        .unwrap()
        .release()
        .await
        .unwrap();
    let again = holder.acquire("k", &opts(SLACK)).await.unwrap();
    let operator = common::Operator::holding(&server, "SELECT 1 FROM fencelock.locks WHERE key = 'k' FOR UPDATE").await;
    let w = Arc::clone(&waiter);
    let second = tokio::spawn(async move { w.acquire("k", &opts(SLACK * 10)).await.unwrap() });
    let held_up = "SELECT query FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query LIKE '%WITH taken AS%'";
    let deadline = Instant::now() + SLACK * 4;
    let first_statement = loop {
        let text = server.psql(held_up);
        if !text.is_empty() {
            break text;
        }
        assert!(
            Instant::now() < deadline,
            "the wait's first statement never waited for the row"
        );
        tokio::time::sleep(Duration::from_millis(5)).await; // polling a condition, bounded
    };
    operator.commit().await;
    assert!(
        first_statement.contains("queued AS"),
        "the wait on a key found contended began with try_acquire's statement: {first_statement}"
    );
    again.release().await.unwrap();
    let lease = tokio::time::timeout(SLACK * 4, second).await.unwrap().unwrap();
    lease.release().await.unwrap();
}

/// A grant handed to a ticket ends on the server with the ticket; the waiter counts it
/// valid from the send instant of the newest statement that found the ticket alive. That is
/// a lower bound of the server's end only if no statement sent earlier can set the ticket
/// shorter afterwards. A look again that waited for the `locks` row (behind an operator's
/// row lock here; normally a release's durable commit) sets the ticket's expiry from its own
/// start, earlier than the keeper's renewals that ran meanwhile: the ticket's end moved
/// back, while the waiter kept the keeper's newer send instant. The release behind it then
/// handed the key with that shorter expiry, and the waiter believed in the grant after the
/// server would give it to someone else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handed_grant_is_not_believed_valid_after_the_server_lets_it_go() {
    let server = PgServer::start();
    let url = format!("{}&timeout=10s&poll=100ms&handoff=true", server.url());
    // Granted after waiting: its release hands the key on.
    let (_holder, held) = common::held_after_waiting(&server, &url, "k", &opts(Duration::from_secs(1))).await;
    let waiter = PgLock::connect(&url).await.unwrap();
    // A second connection, as an instance with other work has: the keeper renews the
    // tickets on the one the look again does not wait on.
    let deadline = Instant::now() + SLACK * 4;
    while waiter.backend_pids().len() < 2 {
        assert!(Instant::now() < deadline, "the waiter's pool did not grow");
        let free = LockOptions::new().with_ttl(Duration::from_secs(60));
        let (a, b, c) = tokio::join!(
            waiter.try_acquire("a", &free),
            waiter.try_acquire("b", &free),
            waiter.try_acquire("c", &free)
        );
        for lease in [a, b, c] {
            lease.unwrap().unwrap().release().await.unwrap();
        }
    }
    let waiting = tokio::spawn(async move {
        let lease = waiter.acquire("k", &opts(SLACK * 10)).await.unwrap();
        (waiter, lease)
    });
    queued(&server, "k", 1, SLACK * 4).await;
    let operator = common::Operator::holding(&server, "SELECT 1 FROM fencelock.locks WHERE key = 'k' FOR UPDATE").await;
    let waiting_for_the_row =
        "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query LIKE '%fencelock.locks%'";
    let deadline = Instant::now() + SLACK * 4;
    // The waiter's look again waits for the row (at the latest 4 × poll on) ...
    while server.psql(waiting_for_the_row) != "1" {
        assert!(Instant::now() < deadline, "the look again never waited for the row");
        tokio::time::sleep(Duration::from_millis(5)).await; // polling a condition, bounded
    }
    // ... while the keeper renews the ticket well past what that look will set (its start
    // plus the ticket's life, 1.2 s).
    let kept_past_the_look = "SELECT (SELECT expires_at FROM fencelock.waiters WHERE key = 'k')
        - (SELECT query_start FROM pg_stat_activity WHERE wait_event_type = 'Lock'
           AND query LIKE '%fencelock.locks%' LIMIT 1) > interval '1900 ms'";
    while server.psql(kept_past_the_look) != "t" {
        assert!(Instant::now() < deadline, "the keeper did not renew the ticket");
        tokio::time::sleep(Duration::from_millis(5)).await; // polling a condition, bounded
    }
    // The holder's release waits behind the look.
    let release = tokio::spawn(held.release());
    while server.psql(waiting_for_the_row) != "2" {
        assert!(Instant::now() < deadline, "the release never waited for the row");
        tokio::time::sleep(Duration::from_millis(5)).await; // polling a condition, bounded
    }
    operator.commit().await;
    release.await.unwrap().unwrap();
    let (_waiter, lease) = tokio::time::timeout(SLACK * 4, waiting).await.unwrap().unwrap();
    // Read before the lease's first renewal (a third of its validity) can lengthen it.
    let (believed_ms, server_ms) = believed_and_kept_ms(operator.client(), lease.valid_until()).await;
    assert_not_believed_past(believed_ms, server_ms);
}

/// How long a lease valid until `believed_until` is believed valid from now, and how long
/// the server keeps the row of `k` (its expiry rounded up), in ms.
async fn believed_and_kept_ms(
    client: &fencelock_postgres::tokio_postgres::Client,
    believed_until: Instant,
) -> (i64, i64) {
    let row = client
        .query_one(
            "SELECT ceil(extract(epoch FROM expires_at - clock_timestamp()) * 1000)::bigint
               FROM fencelock.locks WHERE key = 'k'",
            &[],
        )
        .await
        .unwrap();
    let read = Instant::now();
    let believed_ms = believed_until.saturating_duration_since(read).as_millis() as i64;
    (believed_ms, row.get(0))
}

/// A handed grant is never believed valid past the server's expiry of its row.
fn assert_not_believed_past(believed_ms: i64, server_ms: i64) {
    assert!(
        believed_ms <= server_ms,
        "the waiter believes the handed grant valid for {believed_ms} ms more, the server \
         lets it go in {server_ms} ms"
    );
}

/// An acquire dropped while its attempt that takes the wait's ticket (here its first: the
/// key was found contended lately) was in flight never learnt its ticket, so only the abandon of its grant
/// id can remove it ("our waiter ticket is removed in the background"). It did not: the
/// ticket headed the queue for its whole life, the holder's release skipped it (its grant
/// id abandoned) and freed the key without handing it on, and the live waiter behind it
/// could not take the free key until that ticket expired. The first attempt is held in
/// flight by an operator's lock on the key's row.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiter_behind_a_dropped_acquire_is_handed_the_key() {
    let server = PgServer::start();
    // A long ticket life (2 × poll + 1 s = 21 s), so a ticket left behind outlasts the wait.
    let url = format!("{}&timeout=10s&poll=10s", server.url());
    let holder = PgLock::connect(&url).await.unwrap();
    let held = holder.acquire("k", &opts(Duration::from_secs(1))).await.unwrap();
    let dropped = Arc::new(PgLock::connect(&url).await.unwrap());
    // An earlier wait of `dropped` that took a ticket and gave up: the key is then
    // contended lately for `dropped`, whose next wait begins with the attempt that takes
    // a ticket (a wait's first attempt otherwise takes none).
    {
        let d = Arc::clone(&dropped);
        let earlier = tokio::spawn(async move { d.acquire("k", &opts(SLACK * 10)).await.map(drop) });
        queued(&server, "k", 1, SLACK * 4).await;
        earlier.abort();
        let _ = earlier.await;
        queued(&server, "k", 0, SLACK * 4).await;
    }
    let operator = common::Operator::holding(&server, "SELECT 1 FROM fencelock.locks WHERE key = 'k' FOR UPDATE").await;
    let first = {
        let dropped = Arc::clone(&dropped);
        tokio::spawn(async move { dropped.acquire("k", &opts(SLACK * 10)).await.map(drop) })
    };
    let waiting_for_the_row =
        "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query LIKE '%fencelock.locks%'";
    let deadline = Instant::now() + SLACK * 4;
    while server.psql(waiting_for_the_row) == "0" {
        assert!(Instant::now() < deadline, "the first attempt never waited for the row");
        tokio::time::sleep(Duration::from_millis(5)).await; // polling a condition, bounded
    }
    first.abort();
    assert!(first.await.unwrap_err().is_cancelled());
    operator.commit().await;
    // The attempt lands (refused, with its ticket); `close` returns once its abandon ran.
    dropped.close().await.unwrap();

    let waiter = PgLock::connect(&url).await.unwrap();
    let wait = Duration::from_secs(4);
    let waiting = tokio::spawn(async move { waiter.acquire("k", &opts(wait)).await.map(|l| l.token().get()) });
    let live_tickets = "SELECT count(*) FROM fencelock.waiters w WHERE key = 'k'
        AND NOT EXISTS (SELECT 1 FROM fencelock.abandoned a WHERE a.grant_id = w.grant_id)";
    let deadline = Instant::now() + SLACK * 4;
    while server.psql(live_tickets) != "1" {
        assert!(Instant::now() < deadline, "the waiter did not queue");
        tokio::time::sleep(Duration::from_millis(20)).await; // polling a condition, bounded
    }
    let left = server.psql("SELECT count(*) FROM fencelock.waiters WHERE key = 'k'");
    let token = held.token().get();
    held.release().await.unwrap();
    let got = tokio::time::timeout(wait + SLACK, waiting).await.unwrap().unwrap();
    assert_eq!(
        got.unwrap_or_else(|e| panic!(
            "the waiter behind the dropped acquire's ticket was not handed the key ({left} tickets \
             queued, the dropped one's included): {e}"
        )),
        token + 1
    );
}

/// A grant handed to a waiter ends on the server with the waiter's ticket (here 21 s:
/// `poll=10s`), and the lease, valid until a bound of that, renews a third of the way
/// through it. Meanwhile the server's expiry must already be the TTL's: a release (or a
/// renewal) that a loaded client sends late found the grant gone — the bench's 1,000 keys
/// × 4 clients row failed 2 of 3 runs with "release failed: … the backend no longer holds
/// this grant". The waiter's instance extends the handed grant to the TTL in the
/// background as it takes it (a dead waiter's instance does not, so a dead waiter still
/// costs only its ticket's life).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handed_grant_is_extended_to_the_ttl_on_the_server_at_once() {
    let server = PgServer::start();
    let url = format!("{}&poll=10s&handoff=true", server.url());
    let ttl = Duration::from_secs(60);
    let long = LockOptions::new().with_ttl(ttl).with_wait(SLACK * 10);
    let (_holder, held) = common::held_after_waiting(&server, &url, "k", &long).await;
    let waiter = PgLock::connect(&url).await.unwrap();
    let waiting = tokio::spawn(async move {
        let lease = waiter.acquire("k", &long).await.unwrap();
        (waiter, lease)
    });
    queued(&server, "k", 1, SLACK * 4).await;
    held.release().await.unwrap();
    let (_waiter, lease) = tokio::time::timeout(SLACK * 4, waiting).await.unwrap().unwrap();
    let left = format!(
        "SELECT floor(extract(epoch FROM expires_at - clock_timestamp()))::bigint FROM fencelock.locks \
         WHERE key = 'k' AND grant_id = '{}'",
        lease.grant()
    );
    // Bounded: the extend goes out with the next renewal window (50 ms).
    let deadline = Instant::now() + SLACK * 2;
    loop {
        let secs: i64 = server.psql(&left).parse().unwrap();
        if secs > 30 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the handed grant still ends on the server in {secs} s ({ttl:?} TTL)"
        );
        tokio::time::sleep(Duration::from_millis(20)).await; // polling a condition, bounded
    }
    lease.release().await.unwrap();
}

/// With `handoff` off (the default) no statement of an instance hands a key on — neither a
/// release nor `close()` of a held lease, nor leaving the queue: the queued waiter is woken
/// and acquires with a statement of its own, as the documentation of `handoff` says.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_handoff_off_a_close_does_not_hand_the_key_on() {
    let server = PgServer::start();
    let holder = PgLock::connect(&server.url()).await.unwrap();
    let _held = holder.try_acquire("k", &opts(Duration::ZERO)).await.unwrap().unwrap();
    // A long fallback poll: the waiter looks again only when woken.
    let waiter = PgLock::connect(&format!("{}&poll=10s", server.url())).await.unwrap();
    let waiting = tokio::spawn(async move { waiter.acquire("k", &opts(SLACK * 8)).await.map(|l| l.token()) });
    queued(&server, "k", 1, SLACK * 4).await;
    count_acquires(&server);
    holder.close().await.unwrap();
    let token = tokio::time::timeout(SLACK * 8, waiting)
        .await
        .expect("the waiter was not granted after the holder closed")
        .unwrap()
        .unwrap();
    assert!(token.get() >= 2, "{token:?}");
    assert!(
        acquires(&server) >= 1,
        "the waiter was granted without an acquire of its own: close() handed it the key with handoff off"
    );
}

/// A plain connection of the test's own (no fencelock), as any role that may connect has:
/// `NOTIFY` needs no privilege on fencelock's tables.
async fn plain_connection(server: &PgServer) -> fencelock_postgres::tokio_postgres::Client {
    common::plain_client(server).await.0
}

/// Waits until the waiter queued on `key` has registered its ticket: its re-check right
/// after taking the ticket — sent once the ticket is registered — is the third acquire
/// statement counted since [`count_acquires`] (the refused first attempt, the one that
/// took the ticket, the re-check). Its ticket.
async fn registered(server: &PgServer, key: &str) -> i64 {
    fencelock_testkit::until::until("the waiter's re-check", SLACK * 4, || acquires(server) >= 3).await;
    server
        .psql(&format!("SELECT ticket FROM fencelock.waiters WHERE key = '{key}'"))
        .parse()
        .unwrap()
}

/// A release notification is no proof of a grant: `NOTIFY` needs no privilege, and
/// ticket numbers come from a sequence. Any role that may connect sent
/// `pg_notify('fencelock_released', 'TICKET/TOKEN:KEY')` naming a queued waiter's ticket,
/// and the waiter took a lease the server never granted — with whatever token the forger
/// chose (with the in-transaction fence, that token is then recorded and every real
/// holder after it refused). With either `handoff` setting: the waiter's side reads
/// hand-offs whatever its own releases do. Now a hand-off is taken only when the
/// notification names the wait's grant id (128 random bits, unguessable) and key too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_hand_off_notification_grants_nothing() {
    let server = PgServer::start();
    let forger = plain_connection(&server).await;
    for handoff in [false, true] {
        let key = format!("k{handoff}");
        // A long poll: the waiter looks again on its own only every 20–40 s.
        let url = format!("{}&poll=10s&handoff={handoff}", server.url());
        let holder = PgLock::connect(&url).await.unwrap();
        let held = holder.acquire(&key, &opts(SLACK)).await.unwrap();
        count_acquires(&server);
        let waiter = PgLock::connect(&url).await.unwrap();
        let wait = Duration::from_secs(2);
        let waiting = {
            let key = key.clone();
            tokio::spawn(async move { waiter.acquire(&key, &opts(wait)).await.map(|l| (l.token().get(), l)) })
        };
        let ticket = registered(&server, &key).await;
        for payload in [
            format!("{ticket}/9223372036854775807:{key}"),
            format!(
                "{ticket}/9223372036854775806/{}:{key}",
                fencelock_core::GrantId::random()
            ),
        ] {
            forger
                .execute("SELECT pg_notify('fencelock_released', $1)", &[&payload])
                .await
                .unwrap();
        }
        let got = tokio::time::timeout(wait + SLACK * 2, waiting).await.unwrap().unwrap();
        if let Ok((token, lease)) = got {
            panic!(
                "handoff={handoff}: a forged notification granted the waiter token {token} \
                 (grant {}); the server's row: {}",
                lease.grant(),
                server.psql(&format!("SELECT grant_id FROM fencelock.locks WHERE key = '{key}'"))
            );
        }
        assert_eq!(
            server.psql(&format!("SELECT grant_id FROM fencelock.locks WHERE key = '{key}'")),
            held.grant().as_str(),
            "handoff={handoff}: the holder's row changed"
        );
        held.release().await.unwrap();
        server.psql("DROP TRIGGER count_acquire ON fencelock.locks; DROP FUNCTION public.count_acquire(); DROP SEQUENCE public.acquires;");
    }
}

/// A ticket number can be issued twice: the ticket's insert (and its `nextval`) commits
/// lazily, so a server crash before the WAL writer's flush forgets both, and the next
/// waiter — maybe of another instance — gets the same number. A hand-off to the new
/// ticket was taken by the old waiter too (the notification named the ticket only): two
/// holders of one token. Simulated by giving the queued waiter's ticket another grant id
/// by hand. The waiter must not hold a lease whose grant id the server's row lacks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hand_off_to_a_ticket_number_reissued_to_another_grant_is_not_taken() {
    let server = PgServer::start();
    let url = format!("{}&poll=10s&handoff=true", server.url());
    // Granted after waiting: its release hands the key on.
    let (_holder, held) = common::held_after_waiting(&server, &url, "k", &opts(Duration::from_secs(1))).await;
    count_acquires(&server);
    let waiter = PgLock::connect(&url).await.unwrap();
    let wait = Duration::from_secs(3);
    let waiting = tokio::spawn(async move { waiter.acquire("k", &opts(wait)).await });
    let ticket = registered(&server, "k").await;
    server.psql(&format!(
        "UPDATE fencelock.waiters SET grant_id = 'other' WHERE ticket = {ticket}"
    ));
    held.release().await.unwrap();
    assert_eq!(
        server.psql("SELECT grant_id FROM fencelock.locks WHERE key = 'k'"),
        "other",
        "the release did not hand the key to the ticket's new grant id"
    );
    let got = tokio::time::timeout(wait + SLACK * 2, waiting).await.unwrap().unwrap();
    if let Ok(lease) = got {
        let row = server.psql("SELECT grant_id FROM fencelock.locks WHERE key = 'k'");
        assert_eq!(
            row,
            lease.grant().as_str(),
            "the waiter holds a lease (token {}) of a grant the server's row lacks",
            lease.token().get()
        );
    }
}

/// A handed grant's validity must rest only on ticket writes that survive a crash. A
/// queued waiter's look again renews its ticket with a lazy commit (`synchronous_commit`
/// off for that transaction), which a crash can lose, and the waiter counted a handed
/// grant's validity from that renewal: the release copies the ticket's expiry **on disk**
/// into the handed row, so the waiter believed in the grant past the server's end of it.
/// Simulated: looks again (woken by notifications naming the ticket) move the ticket's
/// expiry on by 500 ms or more, then an operator puts it back to what it was when the
/// ticket was taken — the looks' renewals lost — and the holder's release hands the key
/// on. The waiter's extend to the TTL, sent in the background at the hand-off, waits for an
/// advisory lock the test holds, so the validity read is the one handed out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handed_grant_is_not_believed_valid_past_a_lost_lazy_ticket_renewal() {
    let server = PgServer::start();
    // A ticket lives 2 × poll + 1 s = 41 s; the keeper renews it only after 20 s, long
    // after the test.
    let url = format!("{}&timeout=10s&poll=20s&handoff=true", server.url());
    // Granted after waiting: its release hands the key on.
    let (_holder, held) = common::held_after_waiting(&server, &url, "k", &opts(Duration::from_secs(1))).await;
    let waiter = PgLock::connect(&format!("{url}&application_name=waiter"))
        .await
        .unwrap();
    let waiting = tokio::spawn(async move {
        let lease = waiter.acquire("k", &opts(SLACK * 10)).await.unwrap();
        (waiter, lease)
    });
    queued(&server, "k", 1, SLACK * 4).await;
    let (operator, _driver) = common::plain_client(&server).await;
    let ticket = server.psql("SELECT ticket FROM fencelock.waiters WHERE key = 'k'");
    let taken = server.psql("SELECT expires_at FROM fencelock.waiters WHERE key = 'k'");
    // Looks again renew the ticket, lazily, until it lives 500 ms past its first expiry.
    let moved_on = format!(
        "SELECT expires_at > '{taken}'::timestamptz + interval '500 ms' FROM fencelock.waiters WHERE key = 'k'"
    );
    let deadline = Instant::now() + SLACK * 4;
    while server.psql(&moved_on) != "t" {
        assert!(Instant::now() < deadline, "the looks again did not renew the ticket");
        operator
            .execute("SELECT pg_notify('fencelock_released', $1)", &[&format!("{ticket}:k")])
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await; // polling a condition, bounded
    }
    // The looks' renewals lost, as in a crash before the WAL writer flushed them.
    server.psql(&format!(
        "UPDATE fencelock.waiters SET expires_at = '{taken}' WHERE key = 'k'"
    ));
    // The waiter's own updates of the row (its extend at the hand-off) wait for the test.
    operator.execute("SELECT pg_advisory_lock(5252)", &[]).await.unwrap();
    server.psql(
        "CREATE FUNCTION public.hold_the_waiter() RETURNS trigger LANGUAGE plpgsql AS
           $$ BEGIN
                IF current_setting('application_name') = 'waiter' THEN
                  PERFORM pg_advisory_xact_lock(5252);
                END IF;
                RETURN NEW;
              END $$;
         CREATE TRIGGER hold_the_waiter BEFORE UPDATE ON fencelock.locks
           FOR EACH ROW EXECUTE FUNCTION public.hold_the_waiter();",
    );
    held.release().await.unwrap();
    let (_waiter, lease) = tokio::time::timeout(SLACK * 4, waiting).await.unwrap().unwrap();
    let (believed_ms, server_ms) = believed_and_kept_ms(&operator, lease.valid_until()).await;
    operator.execute("SELECT pg_advisory_unlock(5252)", &[]).await.unwrap();
    assert_not_believed_past(believed_ms, server_ms);
}

/// The keeper's renewals of the tickets commit durably: they bound a handed grant's
/// validity (see `a_handed_grant_is_not_believed_valid_past_a_lost_lazy_ticket_renewal`).
/// A trigger records `synchronous_commit` as each statement that renews a ticket leaves
/// it (after its transaction-local `set_config`, when it has one).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_keepers_ticket_renewals_commit_durably() {
    let server = PgServer::start();
    let url = format!("{}&poll=100ms", server.url());
    let holder = PgLock::connect(&url).await.unwrap();
    let held = holder.acquire("k", &opts(Duration::from_secs(1))).await.unwrap();
    server.psql(
        "CREATE TABLE public.renewed (keeper bool, sync text);
         CREATE FUNCTION public.log_renewal() RETURNS trigger LANGUAGE plpgsql AS
           $$ BEGIN
                INSERT INTO public.renewed VALUES (current_query() LIKE '%unnest(%', current_setting('synchronous_commit'));
                RETURN NULL;
              END $$;
         CREATE TRIGGER log_renewal AFTER UPDATE ON fencelock.waiters
           FOR EACH ROW EXECUTE FUNCTION public.log_renewal();",
    );
    let waiter = PgLock::connect(&url).await.unwrap();
    let waiting = tokio::spawn(async move { waiter.acquire("k", &opts(SLACK * 4)).await.map(|_| ()) });
    fencelock_testkit::until::until("a renewal by the keeper", SLACK * 4, || {
        server.psql("SELECT count(*) FROM public.renewed WHERE keeper") != "0"
    })
    .await;
    assert_eq!(
        server.psql("SELECT string_agg(DISTINCT sync, ',') FROM public.renewed WHERE keeper"),
        "on",
        "the keeper's ticket renewals commit lazily"
    );
    held.release().await.unwrap();
    tokio::time::timeout(SLACK * 4, waiting)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}
