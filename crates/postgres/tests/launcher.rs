//! The testkit's PostgreSQL launcher starts a real server, restarts it with its data, and
//! stops it with all its processes on drop.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use fencelock_testkit::pg_server::PgServer;

#[test]
fn starts_keeps_data_across_restart_and_stops_on_drop() {
    let mut pg = PgServer::start();
    assert_eq!(pg.psql("SELECT 1"), "1");
    pg.psql("CREATE TABLE t (n int); INSERT INTO t VALUES (7)");
    pg.restart();
    assert_eq!(pg.psql("SELECT n FROM t"), "7");
    let pid = pg.pid().unwrap();
    drop(pg);
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "postmaster {pid} outlived the drop"
    );
}
