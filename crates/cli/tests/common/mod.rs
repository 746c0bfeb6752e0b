//! Helpers the CLI's process tests share (`signals.rs`, `process_tree.rs`, `inputs.rs`): run the
//! binary against one backend, wait for children with a bound, and the
//! signal-while-waiting scenario.

// Each test crate that includes this module uses only some of the helpers.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use rustix::process::{kill_process, Pid, Signal};

pub const BIN: &str = env!("CARGO_BIN_EXE_fencelock");

pub fn fencelock(url: &str) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.env_remove("FENCELOCK_BACKEND")
        .env_remove("RUST_LOG")
        .env_remove("NO_COLOR")
        .arg("--backend")
        .arg(url);
    cmd
}

pub fn file_url(dir: &Path) -> String {
    format!("file://{}", dir.display())
}

pub fn pid_of(child: &Child) -> Pid {
    Pid::from_raw(child.id() as i32).expect("pid")
}

/// Polls `cond` every 10 ms until it holds; fails the test after `limit`.
pub fn poll_until(limit: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < limit, "not within {limit:?}: {what}");
        std::thread::sleep(Duration::from_millis(10)); // polling a condition with a deadline
    }
}

pub fn output_within(mut child: Child, limit: Duration) -> Output {
    poll_until(limit, "fencelock exited", || {
        child.try_wait().expect("try_wait").is_some()
    });
    child.wait_with_output().expect("output")
}

/// Reads the first line of the child's stdout.
pub fn first_line(child: &mut Child) -> String {
    let mut first = String::new();
    BufReader::new(child.stdout.as_mut().expect("stdout"))
        .read_line(&mut first)
        .expect("first line");
    first.trim().to_owned()
}

/// H holds `k`; W waits and is sent `sig` once `queued` says it is in line; W exits
/// 128 + sig; after H ends, a `--no-wait` run gets the lock at once (no entry of W left).
pub fn signal_while_waiting(url: &str, sig: Signal, queued: &dyn Fn() -> bool) {
    let mut holder = fencelock(url)
        .args(["run", "k", "--", "sh", "-c", "echo in; read _ || true"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn holder");
    assert_eq!(first_line(&mut holder), "in");
    let _ = queued(); // records the server's count before the waiter comes
    let mut waiter = fencelock(url)
        .args(["-v", "run", "k", "--wait", "60s", "--", "true"])
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn waiter");
    let (tx, rx) = mpsc::channel();
    let err = waiter.stderr.take().expect("stderr");
    std::thread::spawn(move || {
        for line in BufReader::new(err).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let start = Instant::now();
    let mut lines = Vec::new();
    while !lines.iter().any(|l: &String| l.contains("acquiring")) {
        let left = Duration::from_secs(20).saturating_sub(start.elapsed());
        match rx.recv_timeout(left) {
            Ok(line) => lines.push(line),
            Err(_) => panic!("the waiter never said it was acquiring: {lines:?}"),
        }
    }
    poll_until(Duration::from_secs(20), "the waiter is in line", queued);
    kill_process(pid_of(&waiter), sig).expect("signal the waiter");
    poll_until(Duration::from_secs(10), "the waiter exits", || {
        waiter.try_wait().expect("try_wait").is_some()
    });
    let status = waiter.wait().expect("wait");
    lines.extend(rx.try_iter());
    assert_eq!(
        status.code(),
        Some(128 + sig.as_raw()),
        "{sig:?}: waiter: {status:?} {lines:?}"
    );
    drop(holder.stdin.take());
    let out = output_within(holder, Duration::from_secs(20));
    assert!(out.status.success(), "holder: {}", String::from_utf8_lossy(&out.stderr));
    let start = Instant::now();
    let next = fencelock(url)
        .args(["run", "k", "--no-wait", "--", "true"])
        .output()
        .expect("run");
    assert!(
        next.status.success(),
        "{sig:?}: a queue entry of the signalled waiter was left: {}",
        String::from_utf8_lossy(&next.stderr)
    );
    assert!(start.elapsed() < Duration::from_secs(5), "took {:?}", start.elapsed());
}
