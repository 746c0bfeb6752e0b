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

/// `fencelock leader NAME` and `fencelock backends` only read: with a mistyped `schema=`
/// they created a stray schema with fencelock's tables, and `leader` said "no leader"
/// (new-user trial). Now they create nothing and say the tables are missing (78).
#[test]
fn read_only_commands_with_a_mistyped_schema_create_nothing() {
    let server = PgServer::start();
    let url = format!("{}&schema=fencelokc", server.url());
    for args in [&["leader", "x"][..], &["backends"]] {
        let out = common::fencelock(&url).args(args).output().expect("run fencelock");
        common::assert_one_line(&out, 78, "missing in schema `fencelokc`", &args.join(" "));
    }
    assert_eq!(
        server.psql("SELECT count(*) FROM pg_namespace WHERE nspname = 'fencelokc'"),
        "0",
        "a stray schema was created"
    );
}
