//! A PostgreSQL server the testkit kills gives back its System V shared memory segment.
//! 4,096 killed servers had left theirs (the kernel's `shmmni`), and then every `initdb`
//! failed: "could not create shared memory segment: No space left on device".

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail by panicking

use fencelock_testkit::pg_server::PgServer;

/// Whether segment `id` is in the kernel's table.
fn exists(id: u64) -> bool {
    let table = std::fs::read_to_string("/proc/sysvipc/shm").expect("/proc/sysvipc/shm");
    table
        .lines()
        .skip(1)
        .any(|l| l.split_whitespace().nth(1) == Some(id.to_string().as_str()))
}

#[test]
fn a_killed_or_dropped_server_leaves_no_shared_memory_segment() {
    let mut server = PgServer::start();
    let first = server.shared_memory_segment().expect("the postmaster's segment");
    assert!(exists(first), "segment {first} not in the table while the server runs");
    server.restart();
    let second = server
        .shared_memory_segment()
        .expect("the restarted postmaster's segment");
    assert!(
        first == second || !exists(first),
        "the killed server's segment {first} is left"
    );
    server.kill();
    assert!(!exists(second), "the killed server's segment {second} is left");
    server.restart();
    let third = server.shared_memory_segment().expect("the segment after a restart");
    drop(server);
    assert!(!exists(third), "the dropped server's segment {third} is left");
}
