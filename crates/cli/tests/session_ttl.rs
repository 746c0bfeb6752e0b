//! Issue 13 B1: on ZooKeeper (and etcd) the session, not the lease, decides how soon a
//! crashed `fencelock run` frees its lock; `run --ttl` sets the session from the TTL when
//! the URL gives none, so "a crashed fencelock frees the lock after at most --ttl" holds.
//! A real ZooKeeper server.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail by panicking

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod common;

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

/// New-user trial F4: on etcd a WARN line quoted the backend URL with the `session_ttl`
/// that `run --ttl` added itself, where the backend spells the URL otherwise than the
/// user did (here the scheme's case: `ETCD://`, read in any case); messages quote the URL
/// as the user gave it. The server goes away under a holder: its close fails, with a
/// warning that quotes the URL.
#[cfg(feature = "etcd")]
#[test]
fn on_etcd_log_lines_quote_the_url_as_given_not_with_the_session_run_added() {
    let mut cluster = fencelock_testkit::etcd_server::EtcdCluster::single();
    let url = cluster.url("").replacen("etcd://", "ETCD://", 1);
    let (mut holder, first) = common::spawn_holder(
        common::fencelock(&url),
        &["run", "k", "--ttl", "3s"],
        "echo in; exec sleep 30",
    );
    if first != "in" {
        let _ = holder.kill();
        let out = holder.wait_with_output().expect("output");
        panic!("the holder did not get in: {}", common::stderr_of(&out));
    }
    cluster.kill(0);
    let out = common::output_within(holder, Duration::from_secs(40));
    let err = String::from_utf8_lossy(&out.stderr);
    let server = url.trim_start_matches("ETCD://");
    assert!(err.contains(server), "the URL is not quoted at all: {err}");
    assert!(!err.contains("session_ttl"), "quotes an option `run` added: {err}");
}
