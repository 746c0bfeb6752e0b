//! Issue 13 B1: on ZooKeeper (and etcd) the session, not the lease, decides how soon a
//! crashed `fencelock run` frees its lock; `run --ttl` sets the session from the TTL when
//! the URL gives none, so "a crashed fencelock frees the lock after at most --ttl" holds.
//! A real ZooKeeper server.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail by panicking

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_fencelock");

#[test]
fn on_zookeeper_a_killed_holder_frees_the_lock_after_its_ttl_not_the_default_session() {
    let zk = fencelock_testkit::zk_server::ZkEnsemble::standalone();
    let url = zk.url("/session-ttl", "");
    let mut holder = Command::new(BIN)
        .env_remove("FENCELOCK_BACKEND")
        .env_remove("RUST_LOG")
        .args([
            "--backend",
            &url,
            "run",
            "k",
            "--ttl",
            "1s",
            "--",
            "sh",
            "-c",
            "echo in; exec sleep 30",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn holder");
    let mut first = String::new();
    BufReader::new(holder.stdout.as_mut().expect("stdout"))
        .read_line(&mut first)
        .expect("holder's line");
    assert_eq!(first.trim(), "in");
    holder.kill().expect("SIGKILL the holder");
    holder.wait().expect("reap");
    let start = Instant::now();
    let next = Command::new(BIN)
        .env_remove("FENCELOCK_BACKEND")
        .env_remove("RUST_LOG")
        .args(["--backend", &url, "run", "k", "--wait", "20s", "--", "true"])
        .output()
        .expect("run");
    let took = start.elapsed();
    assert!(next.status.success(), "{}", String::from_utf8_lossy(&next.stderr));
    // The default session (10 s) would keep the lock that long; --ttl 1s frees it in ~1 s.
    assert!(took < Duration::from_secs(5), "the next holder waited {took:?}");
}
