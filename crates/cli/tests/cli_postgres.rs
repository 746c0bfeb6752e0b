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
