//! Eight `fencelock --backend postgres://… run` processes on one key of a real PostgreSQL
//! server: never two inside at once, tokens strictly increasing in the order they got in.
//! (Its own file so the PostgreSQL rows do not touch the other backends' tests.)

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail by panicking

use fencelock_testkit::pg_server::PgServer;

mod common;
use common::{assert_eight_processes_exclusive, lab_report, lab_row};

#[test]
fn eight_processes_on_postgres_never_overlap_and_tokens_grow() {
    let server = PgServer::start();
    assert_eight_processes_exclusive(&server.url());
    // Every process left the queue and released: nothing of `k` is left on the server.
    assert_eq!(server.psql("SELECT count(*) FROM fencelock.locks WHERE key = 'k'"), "0");
    assert_eq!(
        server.psql("SELECT count(*) FROM fencelock.waiters WHERE key = 'k'"),
        "0"
    );
}

/// `fencelock lab restart-while-held`: PostgreSQL keeps its data through a crash restart,
/// and the holder's row outlives the loss signal its client gets when the connection ends,
/// so no second grant lands inside the holder's validity.
#[test]
fn the_lab_shows_postgres_exclusive_through_a_restart_while_held() {
    let table = lab_report("restart-while-held");
    let cells = lab_row(&table, "restart-while-held", "postgres (data kept)");
    // Columns: scenario, backend, overlaps, regressions, reuse, late actions, stale (fenced).
    assert_eq!(&cells[2..7], &["0", "0", "0", "0", "0"], "{cells:?}");
}

/// The holder's server connection ended by an operator (`pg_terminate_backend`): `run`
/// stops the command and says the loss in one line — the backend's "connection ended; its
/// leases are lost" WARN beside it was a second line for one loss (new-user trial); it is
/// at info level now, each lease saying its loss itself.
#[test]
fn a_terminated_connection_is_said_in_one_line() {
    let server = PgServer::start();
    let run = ["run", "k", "--ttl", "5s"];
    let (holder, _in) = common::spawn_holder(common::fencelock(&server.url()), &run, "echo in; sleep 30");
    let ended = server.psql(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
          WHERE application_name = 'fencelock' AND pid <> pg_backend_pid()",
    );
    assert_ne!(ended, "0", "no connection of the holder to end");
    let out = holder.wait_with_output().expect("wait");
    let err = common::stderr_of(&out);
    assert_eq!(out.status.code(), Some(76), "{err}");
    let lost: Vec<&str> = err.lines().filter(|l| l.contains("lost")).collect();
    assert_eq!(lost.len(), 1, "one loss, said in more than one line: {err}");
}

/// Counts the schemas named `name` on `server` ("0" when none).
fn schemas_named(server: &PgServer, name: &str) -> String {
    server.psql(&format!("SELECT count(*) FROM pg_namespace WHERE nspname = '{name}'"))
}

/// Runs `fencelock leader el` on `url`, asserts it answers "no leader" (status 1), and
/// returns its stderr.
fn leader_says_no_leader(url: &str) -> String {
    let out = common::fencelock(url)
        .args(["leader", "el"])
        .output()
        .expect("run fencelock");
    let err = common::stderr_of(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("no leader for election `el`"), "{err}");
    err
}

/// `fencelock leader NAME` only reads: with a schema where nothing has run (a mistyped
/// `schema=`, or a fresh one) it creates nothing, and answers as etcd and ZooKeeper do
/// for an election never held — "no leader", status 1 — naming the missing schema's
/// tables on stderr (so a typo stays visible) and the URL with its query. It said "tables
/// are missing … `create_tables=false`", status 78 (new-user trial).
#[test]
fn leader_on_a_schema_never_used_says_no_leader_and_creates_nothing() {
    let server = PgServer::start();
    let url = format!("{}&schema=fresh1", server.url());
    let err = leader_says_no_leader(&url);
    assert!(
        err.contains("schema `fresh1`") && err.contains("schema=fresh1"),
        "{err}"
    );
    assert!(!err.contains("create_tables"), "names an option not given: {err}");
    assert_eq!(schemas_named(&server, "fresh1"), "0", "a stray schema was created");
}

/// After only `run` on a schema (the lock tables exist, the election's do not): no
/// election was held there either — "no leader", status 1, naming the `leaders` table.
#[test]
fn leader_where_only_run_was_used_says_no_leader() {
    let server = PgServer::start();
    let url = format!("{}&schema=fresh2", server.url());
    let ran = common::fencelock(&url)
        .args(["run", "k", "--", "true"])
        .output()
        .expect("run fencelock");
    assert_eq!(ran.status.code(), Some(0), "{}", common::stderr_of(&ran));
    let err = leader_says_no_leader(&url);
    assert!(err.contains("`leaders`"), "{err}");
    assert!(!err.contains("create_tables"), "names an option not given: {err}");
}

/// An explicit `create_tables=true` given to `leader` is honoured (the tables are made,
/// the seat is empty: status 1), and no message blames `create_tables=false`.
#[test]
fn leader_honours_an_explicit_create_tables_true() {
    let server = PgServer::start();
    let url = format!("{}&schema=fresh3&create_tables=true", server.url());
    let err = leader_says_no_leader(&url);
    assert!(!err.contains("create_tables=false"), "{err}");
    assert_eq!(
        schemas_named(&server, "fresh3"),
        "1",
        "the tables asked for were not created"
    );
}

/// `fencelock backends` on a database where nothing has run: the guarantees come from
/// the server's settings, not from tables: it prints them, says the tables are not
/// created yet, status 0 — and creates nothing. It said "tables are missing", status 78.
#[test]
fn backends_on_a_fresh_database_prints_the_guarantees() {
    let server = PgServer::start();
    let url = format!("{}&schema=fresh4", server.url());
    let out = common::fencelock(&url).arg("backends").output().expect("run fencelock");
    let (stdout, err) = (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        common::stderr_of(&out),
    );
    assert_eq!(out.status.code(), Some(0), "{stdout}{err}");
    assert!(
        stdout.contains("exclusion: ") && stdout.contains("tokens: "),
        "{stdout}"
    );
    assert!(format!("{stdout}{err}").contains("not created yet"), "{stdout}{err}");
    assert_eq!(schemas_named(&server, "fresh4"), "0", "a stray schema was created");
}

/// A misspelt option is named as such, with the backend's options and the libpq ones it
/// passes on, as etcd and ZooKeeper say it — not "not a URL tokio-postgres can read".
#[test]
fn an_unknown_option_is_named() {
    let server = PgServer::start();
    let url = format!("{}&shema=myapp", server.url());
    let out = common::fencelock(&url)
        .args(["leader", "el"])
        .output()
        .expect("run fencelock");
    common::assert_one_line(&out, 78, "unknown option `shema`", "leader");
    let err = common::stderr_of(&out);
    assert!(err.contains("schema,") && err.contains("libpq"), "{err}");
    assert!(!err.contains("tokio-postgres can read"), "{err}");
}
