//! Several hosts in one URL (`postgres://u@h1:p1,h2:p2/db`): a host that accepts the TCP
//! connection and then says nothing — a hung server, a SIGSTOPped postgres, a black-hole
//! proxy — is given up after the per-host bound (`connect_timeout` + 2 × `timeout`) and
//! the next host is tried, for every connection the backend opens: the first, the pool's
//! further ones, the ones made again after a connection ended, and an election
//! observer's own `LISTEN` connection. When no host works, the connect is `Unavailable`
//! naming each host. Before (an open limitation until 6 Dec 2026) tokio-postgres bounded
//! only each TCP connect, so a silent first host held the connect until the whole bound
//! ran out and the second host was never tried.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail by panicking

use std::time::Duration;

use fencelock_core::election::Election;
use fencelock_core::{DistributedLock, LockError, LockOptions};
use fencelock_postgres::{PgElection, PgLock};
use fencelock_testkit::pg_server::PgServer;
use fencelock_testkit::proxy::{FaultProxy, Mode};
use tokio::time::Instant;

/// `connect_timeout` and `timeout` of the URLs here: one host gets at most
/// `connect_timeout` + 2 × `timeout` = 1.4 s.
const OPTIONS: &str = "connect_timeout=1s&timeout=200ms";
const PER_HOST: Duration = Duration::from_millis(1400);
/// Scheduling slack on top of a stated bound.
const SLACK: Duration = Duration::from_secs(2);

fn opts() -> LockOptions {
    LockOptions::new()
        .with_ttl(Duration::from_secs(60))
        .with_auto_renew(false)
        .with_wait(Duration::from_secs(5))
}

/// A URL naming `ports` on loopback, in order, with [`OPTIONS`] and `extra`
/// (`&`-prefixed, or empty).
fn url(ports: &[u16], extra: &str) -> String {
    let hosts: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
    format!(
        "postgres://postgres@{}/postgres?sslmode=disable&{OPTIONS}{extra}",
        hosts.join(",")
    )
}

/// A proxy in front of `server` that accepts connections and forwards nothing.
async fn silent(server: &PgServer) -> FaultProxy {
    let proxy = FaultProxy::start(server.port()).await;
    proxy.set(Mode::Blackhole);
    proxy
}

/// Connects with `url`, bounded by `within`: the test fails, never hangs.
async fn connect_within(url: &str, within: Duration) -> fencelock_core::Result<PgLock> {
    let started = Instant::now();
    let r = tokio::time::timeout(within, PgLock::connect(url))
        .await
        .unwrap_or_else(|_| panic!("connect to {url} still running after {within:?}"));
    eprintln!(
        "connect to {url}: {:?} in {:?}",
        r.as_ref().map(|_| ()),
        started.elapsed()
    );
    r
}

/// A first host that accepts and stays silent — a black-hole proxy, and a SIGSTOPped
/// server — is given up after its bound, and the connect lands on the second host, where
/// an acquire works. Before the fix: `Unavailable` ("no ready connection … within 1.4s")
/// after the first host's bound, the second host never tried.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_first_host_is_given_up_for_the_next() {
    let server = PgServer::start();
    let proxy = silent(&server).await;
    let paused = PgServer::start();
    paused.pause();
    for (what, first) in [("black-hole proxy", proxy.port()), ("paused server", paused.port())] {
        let lock = connect_within(
            &url(&[first, server.port()], "&application_name=second"),
            PER_HOST + SLACK,
        )
        .await
        .unwrap_or_else(|e| panic!("{what} first: {e:?}"));
        let lease = tokio::time::timeout(SLACK, lock.acquire("k", &opts()))
            .await
            .expect("acquire answered")
            .unwrap();
        assert!(
            server.backends_of("second") >= 1,
            "{what}: the lease is not on the second host"
        );
        lease.release().await.unwrap();
        lock.close().await.unwrap();
    }
    paused.resume();
}

/// The pool's further connections and the ones made again after a connection ended
/// start from the host that worked: the silent first host is tried once, by the first
/// connection, not again by each (failed before: each further connection paid the
/// silent host's whole bound, `connect_timeout` + 2 × `timeout`, first).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refills_and_reconnects_start_from_the_host_that_worked() {
    let server = PgServer::start();
    let proxy = silent(&server).await;
    let lock = connect_within(
        &url(&[proxy.port(), server.port()], "&application_name=refill&connections=3"),
        PER_HOST + SLACK,
    )
    .await
    .unwrap();
    // Many keys at once: the pool grows.
    let many = futures_util::future::join_all((0..30).map(|i| {
        let lock = lock.clone();
        async move { lock.acquire(&format!("k{i}"), &opts()).await }
    }));
    let leases = tokio::time::timeout(PER_HOST * 4 + SLACK, many)
        .await
        .expect("30 acquires answered");
    let leases: Vec<_> = leases.into_iter().collect::<Result<_, _>>().unwrap();
    let deadline = Instant::now() + PER_HOST * 3 + SLACK;
    while lock.backend_pids().len() < 2 {
        assert!(Instant::now() < deadline, "the pool never grew past one connection");
        // One more acquire finds them busy or not; either way the pool may grow.
        let l = tokio::time::timeout(SLACK * 2, lock.acquire("grow", &opts()))
            .await
            .expect("acquire answered")
            .unwrap();
        l.release().await.unwrap();
    }
    for lease in leases {
        lease.release().await.unwrap();
    }
    // Every backend of the instance ended by the server: the next acquire reconnects.
    server.psql("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'refill'");
    let deadline = Instant::now() + SLACK;
    while !lock.backend_pids().is_empty() {
        assert!(Instant::now() < deadline, "the ended connections were not noticed");
        tokio::time::sleep(Duration::from_millis(10)).await; // polling a condition, bounded
    }
    let started = Instant::now();
    let lease = tokio::time::timeout(PER_HOST + SLACK, lock.acquire("again", &opts()))
        .await
        .expect("the acquire after the reconnect answered")
        .unwrap();
    eprintln!("reconnect and acquire: {:?}", started.elapsed());
    lease.release().await.unwrap();
    lock.close().await.unwrap();
    assert_eq!(
        proxy.accepted(),
        1,
        "the silent first host was tried again after the second one worked"
    );
}

/// No host answers: `Unavailable` within one bound per host, naming each host and why.
/// (Before the fix the error came after the first host's bound, the second never tried,
/// and named only the URL.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_host_answering_is_unavailable_naming_each_host() {
    let server = PgServer::start();
    let (a, b) = (silent(&server).await, silent(&server).await);
    let err = connect_within(&url(&[a.port(), b.port()], ""), PER_HOST * 2 + SLACK)
        .await
        .expect_err("connected through two silent hosts");
    assert!(matches!(err, LockError::Unavailable { .. }), "{err:?}");
    let text = fencelock_core::error::one_line(&err);
    for port in [a.port(), b.port()] {
        assert!(
            text.contains(&format!("127.0.0.1:{port}: no ready connection within 1.4s")),
            "host {port} not named with why it failed: {text}"
        );
    }
}

/// With several hosts the message names the URL once and each host by HOST:PORT, on one
/// line. Before, every host's entry repeated the whole URL, twice for a host speaking
/// another protocol ("the server at URL (host H:P) does not answer …: connecting on URL
/// (host H:P): …"). Needs no server: ports that refuse, and MySQL greetings.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_hosts_name_the_url_once_and_each_host_by_its_address() {
    // Refusing while held: a port from free_ports could be taken by a server beside.
    let closed = [
        fencelock_testkit::ports::closed_port(),
        fencelock_testkit::ports::closed_port(),
    ];
    let refused: Vec<u16> = closed.iter().map(|c| c.port()).collect();
    let mysql = [
        fencelock_testkit::ports::mysql_port(),
        fencelock_testkit::ports::mysql_port(),
    ];
    for (ports, says) in [
        (refused.clone(), "Connection refused"),
        (mysql.to_vec(), "does not answer in the PostgreSQL protocol"),
        (vec![mysql[0], refused[0]], "Connection refused"),
    ] {
        let err = connect_within(&url(&ports, ""), SLACK * 2)
            .await
            .expect_err("connected with no PostgreSQL server");
        let text = fencelock_core::error::one_line(&err);
        assert!(!text.contains('\n'), "{text}");
        assert!(text.contains(says), "{text}");
        assert_eq!(
            text.matches("postgres://").count(),
            1,
            "the URL named more than once: {text}"
        );
        for port in &ports {
            let host = format!("127.0.0.1:{port}");
            let named = text
                .match_indices(&host)
                .filter(|(i, _)| !text[i + host.len()..].starts_with(|c: char| c.is_ascii_digit()))
                .count();
            assert_eq!(
                named, 2,
                "host {port} not named once in the URL and once in its entry: {text}"
            );
        }
    }
}

/// `target_session_attrs=read-write` skips a standby, after a silent host too; without
/// it a standby reached first is refused as before (`InvalidConfig`, "is a standby").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_is_skipped_when_read_write_is_asked() {
    let primary = PgServer::start();
    PgLock::connect(&primary.url()).await.unwrap().close().await.unwrap();
    let standby = PgServer::standby_of(&primary);
    let proxy = silent(&primary).await;
    let hosts = [proxy.port(), standby.port(), primary.port()];
    let lock = connect_within(&url(&hosts, "&target_session_attrs=read-write"), PER_HOST + SLACK)
        .await
        .unwrap();
    let lease = tokio::time::timeout(SLACK, lock.acquire("k", &opts()))
        .await
        .expect("acquire answered")
        .unwrap();
    lease.release().await.unwrap();
    lock.close().await.unwrap();
    let err = connect_within(&url(&[standby.port(), primary.port()], ""), PER_HOST + SLACK)
        .await
        .expect_err("connected to a standby without read-write");
    assert!(matches!(err, LockError::InvalidConfig { .. }), "{err:?}");
    assert!(err.to_string().contains("is a standby in recovery"), "{err}");
}

/// An election observer listens on a connection of its own: it too gets past the silent
/// first host (it starts from the host the election's lock connection reached).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_observers_listen_connection_gives_up_the_silent_host() {
    let server = PgServer::start();
    let proxy = silent(&server).await;
    let u = url(&[proxy.port(), server.port()], "");
    let election = tokio::time::timeout(PER_HOST + SLACK, PgElection::connect(&u))
        .await
        .expect("election connect answered")
        .unwrap();
    let started = Instant::now();
    let observer = tokio::time::timeout(PER_HOST + SLACK, election.observe("e"))
        .await
        .expect("observe answered");
    eprintln!(
        "observe: {:?} in {:?}",
        observer.as_ref().map(|_| ()),
        started.elapsed()
    );
    observer.unwrap();
}

/// A host that refuses our authentication ends the connect, as libpq does ("if a
/// connection is established successfully, but authentication fails, the remaining hosts
/// in the list are not tried"): the hosts of one URL share their roles (a primary and its
/// standbys), so a refusal is the URL's to fix, and moving on would hide it behind
/// whichever host answers next. Failed before: connected to the second host, the first
/// host's refusal only in a debug log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_refusing_the_role_ends_the_connect() {
    let (first, second) = (PgServer::start(), PgServer::start());
    second.psql("CREATE ROLE fencelock_only_here LOGIN SUPERUSER");
    let url = format!(
        "postgres://fencelock_only_here@127.0.0.1:{},127.0.0.1:{}/postgres?sslmode=disable&{OPTIONS}&application_name=refused",
        first.port(),
        second.port()
    );
    match connect_within(&url, PER_HOST * 2 + SLACK).await {
        Err(e @ LockError::InvalidConfig { .. }) => {
            let message = fencelock_core::error::one_line(&e);
            assert!(message.contains("28000"), "the refusal is named: {message}");
            assert!(
                message.contains(&first.port().to_string()),
                "the host that refused is named: {message}"
            );
            // Once: its source added "connecting on URL (host …)" again.
            assert_eq!(message.matches("postgres://").count(), 1, "{message}");
        }
        Err(e) => panic!("a refused role is the URL's to fix, not `unavailable`: {e}"),
        Ok(_) => panic!("connected past a host that refused the role"),
    }
    assert_eq!(second.backends_of("refused"), 0, "the second host was not tried");
}

/// A host that answers in another protocol (a MySQL server's greeting) is a wrong host,
/// not a wrong URL, while another host may work: the next host is tried, and the connect
/// lands there. The URL is a configuration error (`InvalidConfig`) only when every host
/// was one; with one host silent besides, it is `Unavailable` (the silent one may come
/// back), naming what each host did. Failed before: two MySQL hosts were `Unavailable`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_speaking_another_protocol_is_passed_for_the_next() {
    let server = PgServer::start();
    let (mysql, other_mysql) = (
        fencelock_testkit::ports::mysql_port(),
        fencelock_testkit::ports::mysql_port(),
    );
    let lock = connect_within(
        &url(&[mysql, server.port()], "&application_name=after_mysql"),
        SLACK * 2,
    )
    .await
    .expect("the second host, a PostgreSQL, was not used");
    lock.acquire("k", &opts()).await.unwrap().release().await.unwrap();
    assert!(server.backends_of("after_mysql") >= 1);
    lock.close().await.unwrap();

    let err = connect_within(&url(&[mysql, other_mysql], ""), SLACK * 2)
        .await
        .expect_err("connected through two MySQL servers");
    let text = fencelock_core::error::one_line(&err);
    assert!(matches!(err, LockError::InvalidConfig { .. }), "{text}");
    for port in [mysql, other_mysql] {
        assert!(
            text.contains(&format!("127.0.0.1:{port}")),
            "host {port} not named: {text}"
        );
    }
    assert!(text.contains("does not answer in the PostgreSQL protocol"), "{text}");

    let quiet = silent(&server).await;
    let err = connect_within(&url(&[mysql, quiet.port()], ""), PER_HOST + SLACK * 2)
        .await
        .expect_err("connected through a MySQL server and a silent host");
    let text = fencelock_core::error::one_line(&err);
    assert!(matches!(err, LockError::Unavailable { .. }), "{text}");
    assert!(
        text.contains(&format!("127.0.0.1:{mysql}")) && text.contains("does not answer in the PostgreSQL protocol"),
        "the MySQL host's reason not given: {text}"
    );
    assert!(
        text.contains(&format!("127.0.0.1:{}: no ready connection", quiet.port())),
        "{text}"
    );
}

/// Review: a start-up error that is not an answer in another protocol must not be called
/// one. A socket directory too long for a Unix socket's path (`sun_path`, 108 bytes) made
/// the client's connect fail with an `io::Error` of kind `InvalidInput` and no OS code —
/// the shape the foreign-protocol check looks for — and the message said "does not
/// answer in the PostgreSQL protocol" about a server never reached. No server is needed:
/// the path is refused before any socket is made.
#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_socket_path_too_long_is_not_called_another_protocol() {
    let dir = format!("/tmp/{}", "d".repeat(200));
    let url = format!("postgres://postgres@/postgres?host={dir}&{OPTIONS}");
    let Err(err) = connect_within(&url, SLACK + PER_HOST).await else {
        panic!("connected through a socket path of {} bytes", dir.len());
    };
    let text = err.to_string();
    assert!(!text.contains("PostgreSQL protocol"), "{text}");
    assert!(text.contains("path"), "the message does not say what is wrong: {text}");
}
