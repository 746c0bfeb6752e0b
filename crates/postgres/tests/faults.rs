//! Fault tests on real PostgreSQL servers: killed, restarted with its data, a holder's
//! backend terminated, a client partitioned by the fault proxy, a paused server; the
//! guarantees read at connect time; batched renewals; the no-herd hand-off.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail by panicking

use std::sync::Arc;
use std::time::Duration;

use fencelock_core::{DistributedLock, Exclusion, LockError, LockOptions, LostReason, TokenOrder};
use fencelock_postgres::PgLock;
use fencelock_testkit::faults::{self, opts};
use fencelock_testkit::pg_server::{PgOptions, PgServer};
use fencelock_testkit::proxy::{FaultProxy, Mode};
use fencelock_testkit::renewals::wait_renewed_twice;
use tokio::time::Instant;

const SLACK: Duration = Duration::from_secs(2);

mod common;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_server_means_lost_lease_and_unavailable_acquire() {
    let mut server = PgServer::start();
    let locks = PgLock::connect(&format!("{}&timeout=300ms&connect_timeout=300ms", server.url()))
        .await
        .unwrap();
    let lease = locks.acquire("k", &opts(3000)).await.unwrap();
    server.kill();
    let killed_at = Instant::now();
    let reason = tokio::time::timeout(Duration::from_millis(3000) + SLACK, lease.lost())
        .await
        .expect("loss reported");
    assert!(matches!(reason, LostReason::Backend(_)), "{reason:?}");
    // Reported at once, on the connection's end — well before the validity ran out.
    assert!(Instant::now() < lease.valid_until(), "reported only at expiry");
    assert!(
        killed_at.elapsed() < SLACK,
        "loss reported after {:?}",
        killed_at.elapsed()
    );

    let wait = Duration::from_millis(800);
    faults::assert_acquire_gives_up(&locks, "k", &opts(1000), wait, SLACK).await;
    faults::assert_try_acquire_unavailable(&locks, "k", &opts(1000), None).await;

    let start = Instant::now();
    let err = PgLock::connect(&format!("{}&connect_timeout=200ms", server.url()))
        .await
        .expect_err("connected to a dead server");
    assert!(matches!(err, LockError::Unavailable { .. }), "{err}");
    assert!(start.elapsed() < SLACK, "connect took {:?}", start.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_keeps_the_lock_and_the_counter() {
    let mut server = PgServer::start();
    let first = PgLock::connect(&server.url()).await.unwrap();
    assert_eq!(first.guarantees().tokens, TokenOrder::StrictlyMonotonic);
    assert_eq!(first.guarantees().exclusion, Exclusion::Strict);
    let mut last = 0;
    for _ in 0..3 {
        let lease = first.acquire("k", &opts(60_000)).await.unwrap();
        assert!(lease.token().get() > last);
        last = lease.token().get();
        lease.release().await.unwrap();
    }
    // A holder behind a proxy that goes silent: it cannot release its row after the
    // restart, so what the second client sees is what the server kept.
    let proxy = FaultProxy::start(server.port()).await;
    let holder = PgLock::connect(&format!("{}&timeout=300ms", server.url_through(proxy.port())))
        .await
        .unwrap();
    let held = holder.acquire("k", &opts(60_000).with_auto_renew(false)).await.unwrap();
    assert!(held.token().get() > last);
    proxy.set(Mode::Blackhole);
    server.restart(); // SIGKILL of every process, crash recovery from the WAL
    let second = PgLock::connect(&server.url()).await.unwrap();
    assert!(
        second.try_acquire("k", &opts(60_000)).await.unwrap().is_none(),
        "the committed lock row was lost in the restart"
    );
    let other = second.acquire("other", &opts(60_000)).await.unwrap();
    other.release().await.unwrap();
    // The holder's row expires by itself only after 60 s; delete it as an operator would,
    // then the counter must go on from where it was.
    server.psql("DELETE FROM fencelock.locks WHERE key = 'k'");
    let next = second.try_acquire("k", &opts(60_000)).await.unwrap().expect("free");
    assert_eq!(
        next.token().get(),
        held.token().get() + 1,
        "the counter did not survive the restart"
    );
    next.release().await.unwrap();
    drop(held);
    drop(proxy);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_terminated_backend_means_loss_and_no_double_grant() {
    let server = PgServer::start();
    let a = PgLock::connect(&server.url()).await.unwrap();
    let b = PgLock::connect(&server.url()).await.unwrap();
    let ttl = 2000;
    let held = a.acquire("k", &opts(ttl)).await.unwrap(); // auto-renewed
    let a_token = held.token();
    let lost = held.lost();
    let waiter = tokio::spawn(async move {
        let lease = b.acquire("k", &opts(60_000).with_wait(Duration::from_secs(10))).await;
        (lease, Instant::now(), b)
    });
    // The connection that granted the lease (an instance has several): its end is what
    // reports the lease lost.
    let pid = a.lease_backend_pid(&held).expect("held through a live connection");
    assert_eq!(
        server.psql(&format!("SELECT pg_terminate_backend({pid})")),
        "t",
        "terminate the holder's backend"
    );
    let reason = tokio::time::timeout(SLACK, lost).await.expect("loss reported");
    assert!(matches!(reason, LostReason::Backend(_)), "{reason:?}");
    // The reason says what the server said, not only the client's "db error".
    assert!(
        reason
            .to_string()
            .contains("terminating connection due to administrator command"),
        "the reason hides the server's message: {reason}"
    );
    assert!(!held.is_held());
    assert!(
        Instant::now() < held.valid_until(),
        "reported only at the end of the validity"
    );
    // The row is left to expire on the server: the waiter is granted only after the old
    // holder's validity ended — never while it could still believe in its lease.
    let (lease, granted_at, _b) = tokio::time::timeout(Duration::from_millis(ttl) + SLACK * 2, waiter)
        .await
        .expect("waiter")
        .unwrap();
    let lease = lease.expect("the waiter gets the key once the old row expired");
    assert!(
        granted_at >= held.valid_until(),
        "granted {:?} before the old holder's validity ended",
        held.valid_until() - granted_at
    );
    assert!(lease.token() > a_token);
    let err = held.release().await.expect_err("a lost lease released cleanly");
    assert!(err.is_lease_lost(), "{err}");
    assert!(lease.is_held(), "the old holder's release touched the new grant");
    lease.release().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partitioned_client_loses_its_lease_before_another_is_granted() {
    let server = PgServer::start();
    let proxy = FaultProxy::start(server.port()).await;
    let cut = PgLock::connect(&format!("{}&timeout=300ms", server.url_through(proxy.port())))
        .await
        .unwrap();
    let other = PgLock::connect(&server.url()).await.unwrap();
    let ttl = 1500;
    let held = cut.acquire("k", &opts(ttl)).await.unwrap(); // auto-renewed
    let lost = held.lost();
    let told = tokio::spawn(async move {
        let reason = lost.await;
        (reason, Instant::now())
    });
    proxy.set(Mode::Blackhole);
    let start = Instant::now();
    let next = other
        .acquire("k", &opts(60_000).with_wait(Duration::from_millis(ttl) + SLACK * 2))
        .await
        .expect("the key is free once the partitioned holder's row expired");
    let granted_at = Instant::now();
    let (reason, lost_at) = tokio::time::timeout(SLACK, told).await.expect("loss").unwrap();
    assert!(
        lost_at <= granted_at,
        "another client was granted {:?} before the partitioned holder was told ({reason})",
        lost_at - granted_at
    );
    assert!(start.elapsed() < Duration::from_millis(ttl) + SLACK * 2);
    assert!(next.token() > held.token());
    next.release().await.unwrap();
    drop(held);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_server_is_unavailable_within_the_statement_timeout() {
    let server = PgServer::start();
    let locks = PgLock::connect(&format!("{}&timeout=200ms", server.url()))
        .await
        .unwrap();
    let timeout = Duration::from_millis(200);
    faults::assert_unavailable_while_paused(&locks, || server.pause(), || server.resume(), timeout, SLACK).await;
    // After the pause the client reconnects by itself.
    let lease = tokio::time::timeout(SLACK * 2, locks.acquire("k", &opts(60_000)))
        .await
        .expect("acquire after resume")
        .unwrap();
    lease.release().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guarantees_follow_fsync_and_synchronous_commit() {
    let server = PgServer::start_with(PgOptions {
        fsync: true,
        synchronous_commit: false,
    });
    let locks = PgLock::connect(&server.url()).await.unwrap();
    assert_eq!(locks.guarantees(), fencelock_postgres::GUARANTEES);
    assert_eq!(locks.guarantees().tokens, TokenOrder::BestEffort);
    assert!(!locks.describe().contains("password"));
}

/// Teams that manage schemas themselves: the tables made by a migration (the SQL of
/// docs/backends/postgres.md), a role with only DML privileges on them and no CREATE
/// anywhere — the backend uses them as they are.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_role_without_create_uses_tables_made_by_a_migration() {
    let server = PgServer::start();
    drop(PgLock::connect(&server.url()).await.unwrap()); // the "migration", as superuser
    let url = common::dml_only_role(&server);
    let locks = PgLock::connect(&url).await.expect("a DML-only role connects");
    let lease = locks.acquire("k", &opts(60_000)).await.unwrap();
    let other = PgLock::connect(&url).await.unwrap();
    let waiter = tokio::spawn(async move { other.acquire("k", &opts(60_000)).await.map(|l| l.token()) });
    lease.release().await.unwrap();
    let token = tokio::time::timeout(SLACK, waiter)
        .await
        .expect("hand-off")
        .unwrap()
        .unwrap();
    assert_eq!(token.get(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_credentials_and_databases_are_config_errors() {
    let server = PgServer::start();
    server.psql("CREATE ROLE app LOGIN PASSWORD 's3cret'");
    server.psql("ALTER SYSTEM SET password_encryption = 'scram-sha-256'");
    let url = format!(
        "postgres://app:s3cret@127.0.0.1:{}/nosuchdb?sslmode=disable",
        server.port()
    );
    let err = PgLock::connect(&url)
        .await
        .expect_err("connected to a missing database");
    assert!(matches!(err, LockError::InvalidConfig { .. }), "{err}");
    assert!(!err.to_string().contains("s3cret"), "password leaked: {err}");
    let url = format!("postgres://nobody@127.0.0.1:{}/postgres?sslmode=disable", server.port());
    let err = PgLock::connect(&url).await.expect_err("connected as a missing role");
    assert!(matches!(err, LockError::InvalidConfig { .. }), "{err}");
    // A role without CREATE on the database cannot make the tables: a config error that
    // says so, not a retry loop.
    let url = format!(
        "postgres://app:s3cret@127.0.0.1:{}/postgres?sslmode=disable&schema=app_locks",
        server.port()
    );
    server.psql("REVOKE CREATE ON DATABASE postgres FROM PUBLIC");
    let err = PgLock::connect(&url)
        .await
        .expect_err("created tables without the privilege");
    assert!(matches!(err, LockError::InvalidConfig { .. }), "{err}");
}

/// An acquire that lands while its answers are lost (the link cut one way: requests
/// arrive, answers do not) is given back without the link healing: its abandon goes out
/// on the same connection right behind it, all three statements at once, answered or
/// not. Before, the abandon waited for each statement's answer, so only its first
/// statement ever ran and the key stayed with a client that never knew it had it, for
/// the whole TTL (the open gap of the conformance case
/// `queued_waiter_cut_off_gives_back_what_it_was_given` without its healing step).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_acquire_landing_unheard_is_given_back_while_the_answers_stay_lost() {
    let server = PgServer::start();
    let proxy = FaultProxy::start(server.port()).await;
    let cut = PgLock::connect(&format!(
        "{}&timeout=500ms&connections=1",
        server.url_through(proxy.port())
    ))
    .await
    .unwrap();
    let other = PgLock::connect(&server.url()).await.unwrap();
    let o = opts(60_000);
    // A cycle first: the connection and its LISTEN are up, so the acquire goes out.
    cut.acquire("k", &o).await.unwrap().release().await.unwrap();
    proxy.set_to_client(Mode::Blackhole);
    let unheard = cut.try_acquire("k", &o).await;
    assert!(
        unheard.is_err(),
        "an acquire whose answer was lost returned {unheard:?}"
    );
    let rows = || server.psql("SELECT count(*) FROM fencelock.locks WHERE key = 'k' AND expires_at > now()");
    // The grant landed (the test's premise), and is given back with the link still cut.
    let next = other
        .acquire("k", &o.with_wait(SLACK * 2))
        .await
        .unwrap_or_else(|e| panic!("the unheard grant kept the key ({} live rows): {e}", rows()));
    next.release().await.unwrap();
    proxy.set(Mode::Pass);
}

/// A hot standby (read-only, in recovery) is refused at connect with what it is and what
/// to do — with its tables already replicated from the primary and without. Before, the
/// first connection's `LISTEN` failed first, and the error said "cannot execute LISTEN
/// during recovery … check the user, password, database and its privileges".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_is_refused_at_connect_saying_it_is_one() {
    let primary = PgServer::start();
    for tables in [false, true] {
        if tables {
            PgLock::connect(&primary.url()).await.unwrap().close().await.unwrap();
        }
        let standby = PgServer::standby_of(&primary);
        let err = PgLock::connect(&standby.url())
            .await
            .expect_err("connected to a standby");
        assert!(
            matches!(err, LockError::InvalidConfig { .. }),
            "tables {tables}: {err:?}"
        );
        let text = err.to_string();
        assert!(
            text.contains("is a standby in recovery (read-only): connect to the primary"),
            "tables {tables}: {text}"
        );
        assert!(
            !text.contains("check the user"),
            "tables {tables}: misleading hint: {text}"
        );
    }
}

/// URLs that can never work are configuration errors (78 in the CLI: fix the URL), not
/// "unreachable" (69: retry) or a backend failure (70): a port that answers another
/// protocol, a NUL in the user name, `channel_binding=require` without TLS, and server
/// options the server refuses at startup. All four were 69 or 70 before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn urls_that_can_never_work_are_configuration_errors() {
    let server = PgServer::start();
    let http_port = fencelock_testkit::ports::http_port(); // reads the start-up packet, answers 400
    let port = server.port();
    for (url, says) in [
        (
            format!("postgres://postgres@127.0.0.1:{http_port}/postgres?sslmode=disable&connect_timeout=2s"),
            "does not answer in the PostgreSQL protocol",
        ),
        (
            format!("postgres://postgres%00x@127.0.0.1:{port}/postgres?sslmode=disable"),
            "NUL",
        ),
        (
            format!("postgres://postgres@127.0.0.1:{port}/postgres?sslmode=disable&channel_binding=require"),
            "channel binding",
        ),
        (
            format!(
                "postgres://postgres@127.0.0.1:{port}/postgres?sslmode=disable&options=-c%20synchronous_commit%3Dbogus"
            ),
            "synchronous_commit",
        ),
    ] {
        let err = tokio::time::timeout(Duration::from_secs(20), PgLock::connect(&url))
            .await
            .expect("connect answered")
            .expect_err("connected with a URL that cannot work");
        assert!(matches!(err, LockError::InvalidConfig { .. }), "{url}: {err:?}");
        let text = fencelock_core::error::one_line(&err);
        assert!(text.contains(says), "{url}: `{says}` not in: {text}");
    }
}

/// A server that greets first in another protocol, which the client reads as a message
/// of a tag it does not know (a MySQL server's handshake: its first byte, `J`), is a
/// configuration error naming the host and port (78 in the CLI: fix the URL). Found by a
/// new-user trial: it was `Unavailable` ("postgres unreachable: connecting on …"), 69 at
/// once, as if the server were down.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_greeting_in_another_protocol_is_a_configuration_error() {
    let port = fencelock_testkit::ports::mysql_port();
    let url = format!("postgres://postgres@127.0.0.1:{port}/postgres?sslmode=disable&connect_timeout=2s");
    let err = tokio::time::timeout(Duration::from_secs(20), PgLock::connect(&url))
        .await
        .expect("connect answered")
        .expect_err("connected to a MySQL server");
    assert!(matches!(err, LockError::InvalidConfig { .. }), "{err:?}");
    let text = fencelock_core::error::one_line(&err);
    for says in [
        format!("127.0.0.1:{port}"),
        "does not answer in the PostgreSQL protocol".to_owned(),
    ] {
        assert!(text.contains(&says), "`{says}` not in: {text}");
    }
    // The URL once: it was named by the message and again by its source ("connecting on
    // URL").
    assert_eq!(text.matches("postgres://").count(), 1, "{text}");
}

/// A host name that does not resolve is named in the message, with the port used — the
/// default 5432 when the URL gives none. Found by a new-user trial: the message was
/// "cannot resolve the host name: failed to lookup address information: …", naming
/// neither. The name stays on this machine: a label longer than 63 bytes cannot be put
/// in a DNS query (RFC 1035), so the resolver refuses it before sending anything
/// (checked with `strace -e trace=network getent ahosts`: no inet socket is opened),
/// where `no-such-host.invalid` would be asked of the configured name server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_name_that_does_not_resolve_is_named_with_its_port() {
    let host = format!("{}.invalid", "x".repeat(64));
    for (url, named) in [
        (
            format!("postgres://u@{host}/db?sslmode=disable"),
            format!("{host}:5432"),
        ),
        (
            format!("postgres://u@{host}:5433/db?sslmode=disable"),
            format!("{host}:5433"),
        ),
    ] {
        let err = tokio::time::timeout(Duration::from_secs(20), PgLock::connect(&url))
            .await
            .expect("connect answered")
            .expect_err("connected to a host that does not resolve");
        assert!(matches!(err, LockError::Unavailable { .. }), "{url}: {err:?}");
        let text = fencelock_core::error::one_line(&err);
        assert!(text.contains(&named), "{url}: `{named}` not in: {text}");
        assert!(text.contains("resolve"), "{url}: {text}");
    }
}

/// Counts `event` (INSERT or UPDATE) statements on `fencelock.locks` with a
/// statement-level trigger and a sequence (the server's own count, exact and immediate).
fn count_statements(server: &PgServer, event: &str) {
    let name = event.to_lowercase();
    server.psql(&format!(
        "CREATE SEQUENCE public.{name}_statements;
         CREATE FUNCTION public.count_{name}() RETURNS trigger LANGUAGE plpgsql AS
           $$ BEGIN PERFORM nextval('public.{name}_statements'); RETURN NULL; END $$;
         CREATE TRIGGER count_{name} AFTER {event} ON fencelock.locks
           FOR EACH STATEMENT EXECUTE FUNCTION public.count_{name}();"
    ));
}

fn statements(server: &PgServer, event: &str) -> i64 {
    let name = event.to_lowercase();
    server
        .psql(&format!(
            "SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM public.{name}_statements"
        ))
        .parse()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renewals_of_many_leases_share_statements() {
    let server = PgServer::start();
    // A 900 ms TTL needs a statement timeout of at most half of it (`PgConfig::min_ttl`).
    let locks = PgLock::connect(&format!("{}&timeout=450ms", server.url()))
        .await
        .unwrap();
    count_statements(&server, "UPDATE");
    let ttl = Duration::from_millis(900);
    let n = 50;
    let mut leases = Vec::new();
    for i in 0..n {
        let lease = locks
            .acquire(&format!("k{i}"), &LockOptions::new().with_ttl(ttl))
            .await
            .unwrap();
        leases.push(lease);
    }
    let before = statements(&server, "UPDATE");
    let t0 = Instant::now();
    wait_renewed_twice(&leases, t0, ttl, Duration::from_secs(10)).await;
    let used = statements(&server, "UPDATE") - before;
    assert!(leases.iter().all(|l| l.is_held()));
    eprintln!("batched renewals: {used} UPDATE statements renewed {n} leases at least twice each");
    assert!(
        used < (2 * n as i64) / 3,
        "{used} statements for {} renewals: not batched",
        2 * n
    );
    for l in leases {
        l.release().await.unwrap();
    }
}

/// A release wakes one waiter, not all: with 8 waiters queued on a key, each hand-off
/// costs about one acquire statement, where a herd costs one per waiter still queued.
/// Counted on the server (statement-level trigger).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_wakes_one_waiter_not_the_herd() {
    let server = PgServer::start();
    let holder = PgLock::connect(&server.url()).await.unwrap();
    let first = holder.acquire("k", &opts(60_000)).await.unwrap();
    count_statements(&server, "INSERT");
    let waiters = 8;
    let mut clients = Vec::new();
    for _ in 0..waiters {
        // A long fallback poll: every wake-up seen here came from a notification.
        clients.push(Arc::new(
            PgLock::connect(&format!("{}&poll=10s", server.url())).await.unwrap(),
        ));
    }
    let order = Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for c in &clients {
        tasks.push(take_in_turn(Arc::clone(c), Arc::clone(&order)));
    }
    // Every waiter queued (a ticket each) before the hand-offs start.
    let deadline = Instant::now() + SLACK * 2;
    while server.psql("SELECT count(*) FROM fencelock.waiters WHERE key = 'k'") != waiters.to_string() {
        assert!(Instant::now() < deadline, "waiters did not queue");
        tokio::time::sleep(Duration::from_millis(20)).await; // polling a condition, bounded
    }
    let before = statements(&server, "INSERT");
    let start = Instant::now();
    first.release().await.unwrap();
    for t in tasks {
        tokio::time::timeout(SLACK * 5, t).await.expect("hand-offs").unwrap();
    }
    let took = start.elapsed();
    let attempts = statements(&server, "INSERT") - before;
    eprintln!(
        "no-herd: {attempts} acquire statements for {waiters} hand-offs to queued waiters in {took:?} (a herd: ~{})",
        waiters * (waiters + 1) / 2
    );
    assert!(
        attempts <= waiters as i64 + 2,
        "{attempts} acquire statements for {waiters} hand-offs: the waiters raced"
    );
    // Woken by notifications, not by the 10 s fallback poll.
    assert!(took < SLACK * 2, "hand-offs took {took:?}");
    let tokens = order.lock().unwrap().clone();
    assert!(tokens.windows(2).all(|w| w[0] < w[1]), "{tokens:?}");
}

/// A waiter of `k` (60 s TTL, up to 20 s of waiting) that records its token in `order`
/// once granted and releases at once.
fn take_in_turn(c: Arc<PgLock>, order: Arc<std::sync::Mutex<Vec<u64>>>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let lease = c
            .acquire("k", &opts(60_000).with_wait(Duration::from_secs(20)))
            .await
            .unwrap();
        order.lock().unwrap().push(lease.token().get());
        lease.release().await.unwrap();
    })
}

/// A release hands the key to the oldest queued waiter inside its own statement: the
/// waiter is granted by the notification alone, without an acquire statement of its own
/// after the release. (Before, every hand-off cost the woken waiter an acquire round
/// trip, with its WAL flush, on the hand-off's path: 8 acquire statements for 8 hand-offs.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_hands_the_key_to_the_queued_waiter_without_an_acquire_of_its_own() {
    let server = PgServer::start();
    // Granted after waiting, as every grant of a contended key is: its release hands the
    // key on (a lease granted at once releases with the plain statement).
    let url = format!("{}&handoff=true", server.url());
    let (_holder, first) = common::held_after_waiting(&server, &url, "k", &opts(60_000)).await;
    count_statements(&server, "INSERT");
    let waiters = 8;
    let order = Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for _ in 0..waiters {
        // A long fallback poll: no waiter looks again on its own during the test.
        let c = Arc::new(PgLock::connect(&format!("{url}&poll=10s")).await.unwrap());
        tasks.push(take_in_turn(c, Arc::clone(&order)));
    }
    // Every waiter refused three times before the release (its first attempt, the one
    // that takes a ticket, and the re-check with it): 3 acquire statements each, then
    // none until a wake-up.
    let deadline = Instant::now() + SLACK * 2;
    while statements(&server, "INSERT") < 3 * waiters as i64 {
        assert!(Instant::now() < deadline, "waiters did not queue");
        tokio::time::sleep(Duration::from_millis(20)).await; // polling a condition, bounded
    }
    assert_eq!(
        server.psql("SELECT count(*) FROM fencelock.waiters WHERE key = 'k'"),
        waiters.to_string()
    );
    let before = statements(&server, "INSERT");
    first.release().await.unwrap();
    for t in tasks {
        tokio::time::timeout(SLACK * 5, t).await.expect("hand-offs").unwrap();
    }
    let attempts = statements(&server, "INSERT") - before;
    assert_eq!(
        attempts, 0,
        "{attempts} acquire statements for {waiters} hand-offs to queued waiters: a release should hand the key over itself"
    );
    let tokens = order.lock().unwrap().clone();
    assert_eq!(tokens.len(), waiters);
    assert!(tokens.windows(2).all(|w| w[0] < w[1]), "{tokens:?}");
}

/// A database whose default isolation is `SERIALIZABLE` (`ALTER DATABASE … SET
/// default_transaction_isolation`, a common hardening): the statements are written for
/// `READ COMMITTED` — an upsert that waited for a row lock acts on the row's latest
/// version — so under a stricter default the contended ones failed with 40001 (could not
/// serialize access): a handing release failed (the key held until its TTL), a waiter
/// lost its hand-off and its place. Each connection now pins `READ COMMITTED` itself.
/// Eight waiters queue at once on a key held after waiting (its release hands the key on);
/// the first release meets a renewal of the tickets committed while it waited for them
/// (an operator's, as the ticket keeper's or a look's would be); every release succeeds
/// and every waiter is granted, in queue order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hand_offs_work_under_a_serializable_default_isolation() {
    let server = PgServer::start();
    server.psql("ALTER DATABASE postgres SET default_transaction_isolation = 'serializable'");
    assert_eq!(server.psql("SHOW default_transaction_isolation"), "serializable");
    // A long poll: the tickets are renewed by the operator below only.
    let url = format!("{}&handoff=true&poll=10s", server.url());
    let (_holder, first) = common::held_after_waiting(&server, &url, "k", &opts(60_000)).await;
    let waiters = 8;
    let start = Arc::new(tokio::sync::Barrier::new(waiters));
    let mut tasks = Vec::new();
    for i in 0..waiters {
        let c = PgLock::connect(&url).await.unwrap();
        let start = Arc::clone(&start);
        tasks.push(tokio::spawn(async move {
            start.wait().await; // all queue at once: contended looks and tickets
            let lease = c
                .acquire("k", &opts(60_000).with_wait(Duration::from_secs(20)))
                .await
                .map_err(|e| format!("waiter {i}: acquire: {e}"))?;
            let token = lease.token().get();
            lease.release().await.map_err(|e| format!("waiter {i}: release: {e}"))?;
            Ok::<u64, String>(token)
        }));
    }
    // Every waiter queued (or one already failed: its error is reported below).
    let deadline = Instant::now() + SLACK * 5;
    let queued = "SELECT count(*) FROM fencelock.waiters WHERE key = 'k'";
    while server.psql(queued) != waiters.to_string() && !tasks.iter().any(|t| t.is_finished()) {
        assert!(Instant::now() < deadline, "waiters did not queue");
        tokio::time::sleep(Duration::from_millis(20)).await; // polling a condition, bounded
    }
    // The tickets renewed while the release waits for them, as the keeper does.
    let operator = common::Operator::holding(
        &server,
        "UPDATE fencelock.waiters SET expires_at = expires_at + interval '1 ms' WHERE key = 'k'",
    )
    .await;
    let release = tokio::spawn(first.release());
    let release_waits =
        "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query LIKE '%USING handed h%'";
    let deadline = Instant::now() + SLACK * 2;
    while server.psql(release_waits) != "1" {
        assert!(Instant::now() < deadline, "the release never waited for the tickets");
        tokio::time::sleep(Duration::from_millis(5)).await; // polling a condition, bounded
    }
    operator.commit().await;
    let released = release.await.unwrap().map_err(|e| format!("holder: release: {e}"));
    let mut errors: Vec<String> = released.err().into_iter().collect();
    let mut tokens = Vec::new();
    for t in tasks {
        match tokio::time::timeout(SLACK * 10, t).await.expect("hand-offs").unwrap() {
            Ok(token) => tokens.push(token),
            Err(e) => errors.push(e),
        }
    }
    assert!(errors.is_empty(), "under SERIALIZABLE: {errors:#?}");
    tokens.sort_unstable();
    assert_eq!(tokens.len(), waiters);
    assert!(tokens.windows(2).all(|w| w[0] < w[1]), "{tokens:?}");
}

/// Hand-offs go round in queue order, and a holder that releases and asks again at once
/// goes to the back of the line instead of taking the key straight back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hand_offs_follow_the_queue_and_a_returning_holder_waits_its_turn() {
    let server = PgServer::start();
    let holder = Arc::new(PgLock::connect(&server.url()).await.unwrap());
    let first = holder.acquire("k", &opts(60_000)).await.unwrap();
    let order = Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    let long = opts(60_000).with_wait(Duration::from_secs(20));
    for name in ["w1", "w2", "w3", "w4"] {
        let c = PgLock::connect(&server.url()).await.unwrap();
        let order = Arc::clone(&order);
        tasks.push(tokio::spawn(async move {
            let lease = c.acquire("k", &long).await.unwrap();
            order.lock().unwrap().push((name, lease.token().get()));
            lease.release().await.unwrap();
        }));
        // Queued before the next one starts (bounded polling of a condition).
        let queued = tasks.len().to_string();
        let deadline = Instant::now() + SLACK;
        while server.psql("SELECT count(*) FROM fencelock.waiters WHERE key = 'k'") != queued {
            assert!(Instant::now() < deadline, "{name} did not queue");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    first.release().await.unwrap();
    let again = holder.acquire("k", &long).await.unwrap();
    order.lock().unwrap().push(("holder again", again.token().get()));
    again.release().await.unwrap();
    for t in tasks {
        tokio::time::timeout(SLACK * 5, t).await.expect("hand-offs").unwrap();
    }
    let mut got = order.lock().unwrap().clone();
    got.sort_by_key(|(_, token)| *token);
    let names: Vec<&str> = got.iter().map(|(n, _)| *n).collect();
    assert_eq!(names, ["w1", "w2", "w3", "w4", "holder again"], "{got:?}");
}

/// A server that needs a password and a URL without one is the URL's fault (78), as a
/// wrong password is — not "unreachable" (69), which scripts retry for ever. (A newcomer
/// saw 69 with the message "invalid configuration: password missing".)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_or_wrong_password_is_a_configuration_error() {
    let server = PgServer::start();
    server.psql("CREATE ROLE pwuser LOGIN SUPERUSER PASSWORD 'right'");
    let hba = server.dir().join("data").join("pg_hba.conf");
    let old = std::fs::read_to_string(&hba).unwrap();
    std::fs::write(&hba, format!("host all pwuser 127.0.0.1/32 scram-sha-256\n{old}")).unwrap();
    server.psql("SELECT pg_reload_conf()");
    let at = |auth: &str| format!("postgres://{auth}@127.0.0.1:{}/postgres?sslmode=disable", server.port());
    // The reload is asynchronous: wait (bounded) until a wrong password is refused.
    let deadline = Instant::now() + Duration::from_secs(10);
    let wrong = loop {
        match PgLock::connect(&at("pwuser:wrong")).await {
            Err(e @ LockError::InvalidConfig { .. }) => break e,
            other => assert!(
                Instant::now() < deadline,
                "pg_hba.conf not reloaded within 10 s: {:?}",
                other.map(|_| ())
            ),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    // The server's refusal is said once on the error's line (a new-user trial read
    // "password authentication failed … : db error: FATAL: password authentication failed …").
    let line = fencelock_core::error::one_line(&wrong);
    assert_eq!(
        line.matches("password authentication failed").count(),
        1,
        "said more than once: {line}"
    );
    match PgLock::connect(&at("pwuser")).await {
        Err(LockError::InvalidConfig { message, .. }) => {
            assert!(message.contains("password"), "says what is missing: {message}")
        }
        other => panic!(
            "no password for a server that needs one: expected InvalidConfig, got {:?}",
            other.map(|_| ())
        ),
    }
    PgLock::connect(&at("pwuser:right"))
        .await
        .expect("the right password connects");
}

// The CLI's `--wait` running out while the server was down exited 75, "held by someone
// else", where a script retries on 69.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiter_whose_server_dies_is_told_unavailable_not_timed_out() {
    let mut server = PgServer::start();
    let url = format!("{}&timeout=300ms&connect_timeout=300ms", server.url());
    let holder = PgLock::connect(&url).await.unwrap();
    let waiter = PgLock::connect(&url).await.unwrap();
    let wait = Duration::from_secs(3);
    faults::assert_outage_while_waiting_is_unavailable(&holder, &waiter, || server.kill(), wait, SLACK).await;
}

// The server stops answering without closing its connections (hung, SIGSTOPped) while a
// waiter is queued: its wait must end `Unavailable`, not `Timeout` ("held by someone
// else", CLI exit 75). Default options.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiter_whose_server_hangs_is_told_unavailable_not_timed_out() {
    let server = PgServer::start();
    let holder = PgLock::connect(&server.url()).await.unwrap();
    let waiter = PgLock::connect(&server.url()).await.unwrap();
    let wait = Duration::from_secs(3);
    faults::assert_outage_while_waiting_is_unavailable(&holder, &waiter, || server.pause(), wait, SLACK).await;
    server.resume();
}

/// Slow is not dead: a renewal the server holds up for longer than a third of the TTL —
/// here behind an operator's lock on the lease's row, as a stalled WAL flush or a
/// checkpoint holds up every commit — but answers while the lease is still valid keeps
/// the lease. The connection, silent meanwhile, must not be cut for it: cutting it
/// reports the lease lost although its renewal could still (and does) land in time, and
/// gains nothing, since the row stays on the server until its expiry either way.
///
/// (`fencelock bench`'s scale row lost its 10,000 leases this way in 1–2 of 3 runs:
/// "the connection to postgres ended: no answer to batched renewal within 2s".)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewal_held_up_past_a_third_of_the_ttl_keeps_its_lease() {
    let server = PgServer::start();
    let locks = PgLock::connect(&server.url()).await.unwrap(); // timeout 1 s
    let ttl = Duration::from_secs(9); // renewed 3 s in; the old grace was 3 s more
    let lease = locks.acquire("k", &opts(9000)).await.unwrap(); // auto-renewed
    let granted_until = lease.valid_until();
    let pid = locks.lease_backend_pid(&lease).expect("the granting connection");
    let operator = common::Operator::holding(&server, "SELECT 1 FROM fencelock.locks WHERE key = 'k' FOR UPDATE").await;
    let renewal_waits = format!("SELECT count(*) FROM pg_stat_activity WHERE pid = {pid} AND wait_event_type = 'Lock'");
    while server.psql(&renewal_waits) != "1" {
        assert!(
            Instant::now() < granted_until - ttl / 3,
            "the renewal never waited for the row"
        );
        tokio::time::sleep(Duration::from_millis(5)).await; // polling a condition, bounded
    }
    let waiting_since = Instant::now();
    // The row is held past a third of the TTL from the renewal's send (when the
    // connection was cut before), and given back 1.5 s before the validity ends.
    let give_back = granted_until - Duration::from_millis(1500);
    assert!(
        give_back > waiting_since + ttl / 3,
        "the renewal began to wait too late for the test to mean anything"
    );
    if let Ok(reason) = tokio::time::timeout_at(give_back, lease.lost()).await {
        panic!(
            "the lease was lost {:?} after its renewal began to wait for the row, {:?} before \
             its validity would have ended: {reason}",
            waiting_since.elapsed(),
            granted_until.saturating_duration_since(Instant::now())
        );
    }
    operator.commit().await;
    // The renewal (or its retry, queued behind it) lands: the lease is renewed past its
    // first validity, before that ran out.
    let mut status = lease.watch();
    // (`is_ok`: the borrow `wait_for` answers must not outlive this line — it holds the
    // status, which the release below writes.)
    let renewed = tokio::time::timeout_at(granted_until, status.wait_for(|s| s.valid_until > granted_until))
        .await
        .is_ok_and(|changed| changed.is_ok());
    assert!(
        renewed && lease.is_held(),
        "the lease was not renewed once the row was given back: {:?}",
        lease.status()
    );
    assert_eq!(
        locks.lease_backend_pid(&lease),
        Some(pid),
        "the connection was not kept"
    );
    lease.release().await.unwrap();
    locks.close().await.unwrap();
}

/// The server keeps a grant as long as its holder counts it: a TTL with a part of a
/// millisecond (60 s + 900 µs) was sent truncated to whole milliseconds (`as_millis()`)
/// while the lease counted it in full from the send, believing in the grant up to 0.9 ms
/// after the server could give the key to another client. Checked for the acquire and for
/// `extend`, each against a reading of the server's clock made before it was sent (the
/// server ends the grant at least the counted TTL after that reading), 20 times: a loopback
/// round trip is shorter than the truncation most times.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_keeps_a_grant_as_long_as_its_holder_counts_it() {
    let server = PgServer::start();
    let locks = PgLock::connect(&server.url()).await.unwrap();
    let ttl = Duration::from_secs(60) + Duration::from_micros(900);
    let opts = LockOptions::new().with_ttl(ttl).with_auto_renew(false);
    // What the lease counts from each send: PostgreSQL's validity is the TTL.
    let counted = opts.ttl().as_secs_f64() * 1000.0;
    let operator = common::Operator::holding(&server, "SELECT 1").await;
    let db = operator.client();
    let clock = || async {
        db.query_one("SELECT extract(epoch FROM clock_timestamp())::float8 * 1000", &[])
            .await
            .unwrap()
            .get::<_, f64>(0)
    };
    let end = || async {
        db.query_one(
            "SELECT extract(epoch FROM expires_at)::float8 * 1000 FROM fencelock.locks WHERE key = 'k'",
            &[],
        )
        .await
        .unwrap()
        .get::<_, f64>(0)
    };
    for _ in 0..20 {
        let before_the_send = clock().await;
        let lease = locks.try_acquire("k", &opts).await.unwrap().expect("a free key");
        let kept = end().await - before_the_send;
        assert!(
            kept >= counted,
            "acquire: the holder counts its grant {counted:.3} ms from the send; the server \
             ends it {kept:.3} ms after a reading made before that send"
        );
        let before_the_send = clock().await;
        lease.extend(ttl).await.unwrap();
        let kept = end().await - before_the_send;
        assert!(
            kept >= counted,
            "extend: the holder counts its grant {counted:.3} ms from the send; the server \
             ends it {kept:.3} ms after a reading made before that send"
        );
        lease.release().await.unwrap();
    }
    locks.close().await.unwrap();
}

/// The URL of `server` for `role` (trust authentication: no password).
fn url_as(server: &PgServer, role: &str) -> String {
    server.url().replacen("postgres@", &format!("{role}@"), 1)
}

/// A role default `idle_session_timeout` shorter than the pause between renewals: the
/// server ended our idle pooled sessions (a `FATAL` error), and with them every lease on
/// them — a lease held with auto-renew was lost within a second though the server was
/// healthy. The backend now sets it to 0 for its sessions (its own `timeout` bounds every
/// statement). An observation window of 1.5 s, not a synchronisation: five idle periods.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_session_timeout_default_does_not_end_our_sessions() {
    let server = PgServer::start();
    server.psql("CREATE ROLE idler LOGIN SUPERUSER");
    server.psql("ALTER ROLE idler SET idle_session_timeout = '300ms'");
    let url = url_as(&server, "idler");
    let locks = PgLock::connect(&url).await.unwrap();
    let other = PgLock::connect(&url).await.unwrap();
    let lease = locks.acquire("k", &opts(3000)).await.unwrap(); // auto-renewed every second
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(lease.is_held(), "lost under idle_session_timeout: {:?}", lease.status());
    lease.extend(Duration::from_secs(3)).await.expect("extend after idling");
    assert!(
        other.try_acquire("k", &opts(3000)).await.unwrap().is_none(),
        "the key was free while its lease was held"
    );
    lease.release().await.unwrap();
}

/// Role defaults `statement_timeout = 1ms` and `lock_timeout = 1ms`: every statement was
/// cancelled (a new-user trial got "unavailable", exit 69, for a setting), and contended
/// statements failed on their row locks. The backend sets both to 0 for its sessions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tiny_statement_and_lock_timeout_defaults_do_not_cancel_our_statements() {
    let server = PgServer::start();
    server.psql("CREATE ROLE hasty LOGIN SUPERUSER");
    server.psql("ALTER ROLE hasty SET statement_timeout = '1ms'");
    server.psql("ALTER ROLE hasty SET lock_timeout = '1ms'");
    let url = url_as(&server, "hasty");
    let locks = PgLock::connect(&url)
        .await
        .expect("connect under statement_timeout=1ms");
    for _ in 0..3 {
        let lease = locks.acquire("k", &opts(60_000)).await.expect("acquire");
        lease.release().await.expect("release");
    }
    // Contended: a waiter queued behind a holder, handed the key at its release.
    let other = PgLock::connect(&url).await.unwrap();
    let held = locks.acquire("k", &opts(60_000)).await.unwrap();
    let waiter = tokio::spawn(async move { other.acquire("k", &opts(60_000)).await.map(|l| l.token()) });
    held.release().await.expect("release to the waiter");
    tokio::time::timeout(SLACK * 2, waiter)
        .await
        .expect("hand-off")
        .unwrap()
        .expect("the waiter's acquire");
}

/// An auto-renewed lease whose TTL is shorter than twice the statement timeout is refused
/// (InvalidInput naming both and the way out): its renewals, sent a third of the way in
/// and answered within the timeout, could land after its expiry. `--ttl 100ms` with the
/// default 1 s timeout was accepted. A shorter `timeout=` makes it acceptable; a lease
/// without auto-renew has no renewal and is taken as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_auto_renewed_ttl_shorter_than_twice_the_statement_timeout_is_refused() {
    let server = PgServer::start();
    let locks = PgLock::connect(&server.url()).await.unwrap();
    let refused = |r: Result<(), LockError>| match r {
        Err(LockError::InvalidInput(message)) => {
            for said in ["100ms", "1s", "timeout=", "2s"] {
                assert!(message.contains(said), "`{said}` missing in: {message}");
            }
        }
        other => panic!("a 100ms auto-renewed TTL with a 1s timeout: {other:?}"),
    };
    let short = opts(100);
    refused(locks.try_acquire("k", &short).await.map(|_| ()));
    refused(locks.acquire("k", &short).await.map(|_| ()));
    let lease = locks.acquire("k", &opts(60_000)).await.unwrap();
    match lease.extend(Duration::from_millis(500)).await {
        Err(LockError::InvalidInput(message)) => assert!(message.contains("500ms"), "{message}"),
        other => panic!("extend to 500ms with a 1s timeout: {other:?}"),
    }
    assert!(lease.is_held());
    lease.release().await.unwrap();
    // Without auto-renew: taken.
    let unrenewed = locks.acquire("k", &short.with_auto_renew(false)).await.unwrap();
    drop(unrenewed);
    // With a statement timeout of at most half the TTL: taken.
    let quick = PgLock::connect(&format!("{}&timeout=50ms", server.url()))
        .await
        .unwrap();
    let lease = quick
        .acquire("q", &opts(100))
        .await
        .expect("a 100ms TTL with timeout=50ms");
    lease.release().await.ok();
}

/// Every TTL below the backend's minimum — zero, 1 ms, just under it; auto-renewed or
/// not; `try_acquire` and `acquire` alike — is `InvalidInput` naming that minimum in one
/// form ("ttl X is below the minimum of Y", humantime durations), and nothing is sent.
/// Before: `try_acquire` with a zero auto-renewed TTL named the core's 1 ms as the
/// minimum, `acquire` said "ttl 0ns is shorter than twice the statement timeout (1s, …)
/// … (at most 0ns for this TTL)" (`Debug` durations, checked before the key), and a TTL
/// under 100 ms without auto-renew was sent: `try_acquire` with 1 ms and 9 ms answered
/// `Unavailable` (the grant arrived with no validity left; a temporary error, so a caller
/// retries it), `acquire` with 1 ms sent three grants and then answered `InvalidInput`
/// ("… the slowest answer took 23.022888ms"). An `extend` below the minimum is refused
/// alike.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_ttl_below_the_backends_minimum_is_refused_as_input_before_sending() {
    let server = PgServer::start();
    let locks = PgLock::connect(&server.url()).await.unwrap();
    common::count_acquires(&server);
    let ms = Duration::from_millis;
    for (ttl, renew, minimum, ttl_text) in [
        (Duration::ZERO, true, "2s", "0s"),
        (Duration::ZERO, false, "100ms", "0s"),
        (ms(1), true, "2s", "1ms"),
        (ms(1), false, "100ms", "1ms"),
        (ms(99), false, "100ms", "99ms"),
        (ms(1999), true, "2s", "1s 999ms"),
    ] {
        let o = opts(0).with_ttl(ttl).with_auto_renew(renew);
        let said = format!("ttl {ttl_text} is below the minimum of {minimum}");
        for (call, r) in [
            ("try_acquire", locks.try_acquire("k", &o).await.map(|_| ())),
            ("acquire", locks.acquire("k", &o).await.map(|_| ())),
        ] {
            match r {
                Err(LockError::InvalidInput(message)) => {
                    assert!(
                        message.contains(&said),
                        "{call} {ttl:?} renew={renew}: {said:?} not in: {message}"
                    )
                }
                other => panic!("{call} with ttl {ttl:?}, auto-renew {renew}: {other:?}"),
            }
        }
    }
    assert_eq!(common::acquires(&server), 0, "a refused TTL sent an acquire");
    // At the minimum: not refused as input (a grant may still arrive dead on a slow
    // disk: that is `Unavailable`, a fact of the run, not of the input).
    let at_minimum = opts(0).with_ttl(ms(100)).with_auto_renew(false);
    if let Err(LockError::InvalidInput(message)) = locks.try_acquire("k", &at_minimum).await {
        panic!("a 100ms TTL without auto-renew was refused: {message}");
    }
    // `extend` of a lease without auto-renew below the minimum: refused alike.
    let lease = locks.acquire("e", &opts(60_000).with_auto_renew(false)).await.unwrap();
    match lease.extend(ms(50)).await {
        Err(LockError::InvalidInput(message)) => {
            assert!(message.contains("ttl 50ms is below the minimum of 100ms"), "{message}")
        }
        other => panic!("extend to 50ms: {other:?}"),
    }
    lease.release().await.ok();
}
