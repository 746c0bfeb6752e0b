//! The election conformance suite against a real PostgreSQL server started by the test:
//! one server runs the whole suite (`run_all_elections`); the suite's unique names keep
//! the behaviours apart. The operator hook deletes the seat's `locks` row through a
//! separate connection.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail by panicking

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use fencelock_core::election::Election;
use fencelock_postgres::tokio_postgres::{Client, NoTls};
use fencelock_postgres::PgElection;
use fencelock_testkit::conformance::election::{run_all_elections, ElectionConfig, ElectionFactory, ElectionFixture};
use fencelock_testkit::pg_server::PgServer;

struct Pg {
    server: PgServer,
    admin: Client,
}

impl ElectionFactory for Pg {
    fn election(&self) -> Pin<Box<dyn Future<Output = Arc<dyn Election>> + Send + '_>> {
        let url = self.server.url();
        Box::pin(
            async move { Arc::new(PgElection::connect(&url).await.expect("connect to postgres")) as Arc<dyn Election> },
        )
    }
}

impl ElectionFixture for Pg {
    fn remove_leader<'a>(&'a self, name: &'a str) -> Pin<Box<dyn Future<Output = ()> + Send + 'a>> {
        Box::pin(async move {
            let n = self
                .admin
                .execute(
                    "DELETE FROM fencelock.locks WHERE key = $1",
                    &[&format!("election.{name}")],
                )
                .await
                .expect("DELETE the seat's row");
            assert_eq!(n, 1, "the operator's DELETE found no seat");
        })
    }
}

/// A server of its own whose election tables a first client has made, and its URL.
async fn with_election_tables() -> (PgServer, String) {
    let server = tokio::task::spawn_blocking(PgServer::start)
        .await
        .expect("start postgres");
    let url = server.url();
    drop(
        PgElection::connect(&url)
            .await
            .expect("the first client creates the tables"),
    );
    (server, url)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn election_conformance_on_postgres() {
    let (server, url) = with_election_tables().await;
    let (admin, connection) = url
        .parse::<fencelock_postgres::tokio_postgres::Config>()
        .expect("server URL")
        .application_name("fixture")
        .connect(NoTls)
        .await
        .expect("operator connection");
    tokio::spawn(connection);
    let pg = Pg { server, admin };
    let cfg = ElectionConfig {
        short_ttl: Duration::from_millis(500),
        slack: Duration::from_secs(2),
        ..ElectionConfig::default()
    };
    run_all_elections(&pg, &cfg).await;
}

/// A resign that hands the seat to a queued lock of the seat's key — here a plain lock,
/// a candidate that never proclaims — is seen by observers at once. The release hands
/// the row on (its grant id changes, nothing is deleted), so the trigger on deletion alone
/// did not fire, and observers reported the resigned leader until its old expiry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn observers_see_a_resigned_leader_go_when_the_seat_is_handed_on() {
    use fencelock_core::{DistributedLock, LockOptions};
    let server = tokio::task::spawn_blocking(PgServer::start)
        .await
        .expect("start postgres");
    let url = server.url();
    let before = PgElection::connect(&url).await.unwrap();
    // The seat's release hands it on only with `handoff=true`.
    let leader = PgElection::connect(&format!("{url}&handoff=true")).await.unwrap();
    let watcher = PgElection::connect(&url).await.unwrap();
    let long = LockOptions::new().with_ttl(Duration::from_secs(60));
    // The leader wins after waiting, as a contended seat is won: its resign hands the seat
    // on (a seat won at once is released by a plain delete).
    let earlier = before.campaign("seat", b"earlier", &long).await.unwrap();
    let campaign = tokio::spawn(async move {
        let opts = long.with_wait(Duration::from_secs(10));
        let leadership = leader.campaign("seat", b"first", &opts).await.unwrap();
        (leader, leadership)
    });
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while server.psql("SELECT count(*) FROM fencelock.waiters WHERE key = 'election.seat'") != "1" {
        assert!(tokio::time::Instant::now() < deadline, "the leader did not queue");
        tokio::time::sleep(Duration::from_millis(10)).await; // polling a condition, bounded
    }
    earlier.resign().await.unwrap();
    let (_leader, leadership) = tokio::time::timeout(Duration::from_secs(5), campaign)
        .await
        .expect("the leader did not win")
        .unwrap();
    let mut observer = watcher.observe("seat").await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let seen = tokio::time::timeout_at(deadline, observer.changed())
            .await
            .expect("the observer never reported the leader")
            .expect("the feed ended");
        if seen.is_some_and(|l| l.value == b"first") {
            break;
        }
    }
    let queued = fencelock_postgres::PgLock::connect(&url).await.unwrap();
    let waiting = tokio::spawn(async move {
        // A seat key is refused to plain locks: held as a campaign holds it.
        let lease = fencelock_core::election::as_campaign(
            queued.acquire("election.seat", &long.with_wait(Duration::from_secs(10))),
        )
        .await
        .unwrap();
        (queued, lease)
    });
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while server.psql("SELECT count(*) FROM fencelock.waiters WHERE key = 'election.seat'") != "1" {
        assert!(tokio::time::Instant::now() < deadline, "the lock did not queue");
        tokio::time::sleep(Duration::from_millis(10)).await; // polling a condition, bounded
    }
    leadership.resign().await.unwrap();
    let (_queued, _lease) = tokio::time::timeout(Duration::from_secs(5), waiting)
        .await
        .expect("the seat was not handed on")
        .unwrap();
    let seen = tokio::time::timeout(Duration::from_secs(2), observer.changed())
        .await
        .expect("observers were not told the seat changed hands (60 s TTL left)")
        .expect("the feed ended");
    assert!(seen.as_ref().is_none_or(|l| l.value != b"first"), "{seen:?}");
}

/// An observer's LISTEN connection runs under the session settings every other connection
/// of the backend sets for itself: a role's `idle_session_timeout` does not end it while it
/// sits idle waiting for notifications. The canary — a plain connection of the same role,
/// opened after the observer's and left idle — is ended by the timeout; the observer's
/// listening backend is still the same one after that. Failed before the change: the
/// listening connection was opened without the setup, ended every 300 ms, and the
/// observer reconnected in a loop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_observer_s_listening_connection_outlives_a_role_s_idle_session_timeout() {
    let (server, url) = with_election_tables().await;
    server.psql("ALTER ROLE postgres SET idle_session_timeout = '300ms'");
    let watcher = PgElection::connect(&url).await.unwrap();
    let _observer = watcher.observe("seat").await.unwrap();
    let listening = || {
        server.psql(
            "SELECT pid || ' ' || backend_start FROM pg_stat_activity \
             WHERE query LIKE '%LISTEN fencelock_e_%' AND pid <> pg_backend_pid()",
        )
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let before = loop {
        let found = listening();
        if !found.is_empty() {
            break found;
        }
        assert!(tokio::time::Instant::now() < deadline, "the observer never listened");
        tokio::time::sleep(Duration::from_millis(10)).await; // polling a condition, bounded
    };
    let (_canary, connection) = url
        .parse::<fencelock_postgres::tokio_postgres::Config>()
        .expect("server URL")
        .connect(NoTls)
        .await
        .expect("the canary's connection");
    tokio::time::timeout(Duration::from_secs(10), connection)
        .await
        .expect("the role's idle_session_timeout never ended the idle canary")
        .expect_err("the canary's connection ended by the server's FATAL");
    assert_eq!(
        listening(),
        before,
        "the observer's listening backend (pid, start) after an idle canary of the same role was ended"
    );
}
