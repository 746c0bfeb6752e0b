//! Issue 13 A8: `leader --watch` while its server is down prints `unknown` once (so that a
//! consumer stops trusting the last leader), warns a few times rather than ~20 times a
//! second, and prints the state again when the server is back. A real Redis server.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail by panicking

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use rustix::process::{kill_process, Pid, Signal};

const BIN: &str = env!("CARGO_BIN_EXE_fencelock");

/// Forwards each line of `reader` to a channel.
fn lines_of(reader: impl std::io::Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(reader).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    rx
}

fn next_line(rx: &mpsc::Receiver<String>, within: Duration, what: &str) -> String {
    rx.recv_timeout(within)
        .unwrap_or_else(|_| panic!("no line within {within:?}: {what}"))
}

#[test]
fn watch_prints_unknown_while_the_server_is_down_and_recovers() {
    let mut server = fencelock_testkit::redis_server::RedisServer::start();
    let mut watch = Command::new(BIN)
        .env_remove("FENCELOCK_BACKEND")
        .env_remove("RUST_LOG")
        .args(["--backend", &server.url(), "leader", "wd", "--watch"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let out = lines_of(watch.stdout.take().expect("stdout"));
    let err = lines_of(watch.stderr.take().expect("stderr"));
    assert_eq!(next_line(&out, Duration::from_secs(10), "the first state"), "none");
    server.kill();
    assert_eq!(
        next_line(&out, Duration::from_secs(10), "`unknown` after the kill"),
        "unknown"
    );
    // Stays down for three more checks: the warning is not repeated each poll.
    let quiet = out.recv_timeout(Duration::from_secs(3));
    assert!(quiet.is_err(), "more lines while down: {quiet:?}");
    let warnings: Vec<String> = err.try_iter().collect();
    assert!(!warnings.is_empty() && warnings.len() <= 2, "warnings: {warnings:#?}");
    server.restart();
    assert_eq!(
        next_line(&out, Duration::from_secs(15), "the state after the restart"),
        "none"
    );
    kill_process(Pid::from_raw(watch.id() as i32).expect("pid"), Signal::INT).expect("SIGINT");
    let status = watch.wait().expect("wait");
    assert_eq!(status.code(), Some(0));
}
