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
    // The server's own processes (backends call setsid(): not in the postmaster's group).
    let mut pids: Vec<u32> = pg
        .psql("SELECT pid FROM pg_stat_activity WHERE pid <> pg_backend_pid()")
        .lines()
        .map(|l| l.trim().parse().unwrap())
        .collect();
    pids.push(pg.pid().unwrap());
    drop(pg);
    for pid in pids {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        assert!(
            stat.is_empty()
                || stat
                    .rsplit_once(')')
                    .is_some_and(|(_, r)| r.trim_start().starts_with('Z')),
            "server process {pid} outlived the drop: {stat}"
        );
    }
}

/// A server killed on drop never removes POSIX shared memory segments it made in
/// /dev/shm (thousands had piled up there, 2.2 GB of memory): the launcher has it keep its
/// dynamic shared memory as files in its data directory, which goes with the server.
#[test]
fn dynamic_shared_memory_lives_in_the_data_directory() {
    let pg = PgServer::start();
    assert_eq!(pg.psql("SHOW dynamic_shared_memory_type"), "mmap");
    let files = pg.psql("SELECT count(*) FROM pg_ls_dir('pg_dynshmem')");
    assert!(files.parse::<u32>().unwrap() >= 1, "no segment in pg_dynshmem: {files}");
}
