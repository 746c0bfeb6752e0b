//! Issue 13 (A9, A10): every signal whose default action would end `fencelock` is caught —
//! a waiter leaves no queue entry and exits 128+N, a holder forwards it to its command's
//! group — and the exit after a forwarded SIGTERM and the --kill-after SIGKILL is prompt.
//! Real servers (file, ZooKeeper).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail by panicking

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use rustix::process::{kill_process, Pid, Signal};

const BIN: &str = env!("CARGO_BIN_EXE_fencelock");

/// Signals other than INT/TERM/HUP whose default action ends a process.
const OTHERS: [Signal; 4] = [Signal::USR1, Signal::USR2, Signal::QUIT, Signal::ALARM];

fn fencelock(url: &str) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.env_remove("FENCELOCK_BACKEND")
        .env_remove("RUST_LOG")
        .env_remove("NO_COLOR")
        .arg("--backend")
        .arg(url);
    cmd
}

fn file_url(dir: &Path) -> String {
    format!("file://{}", dir.display())
}

fn pid_of(child: &Child) -> Pid {
    Pid::from_raw(child.id() as i32).expect("pid")
}

/// Polls `cond` every 10 ms until it holds; fails the test after `limit`.
fn poll_until(limit: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < limit, "not within {limit:?}: {what}");
        std::thread::sleep(Duration::from_millis(10)); // polling a condition with a deadline
    }
}

fn output_within(mut child: Child, limit: Duration) -> Output {
    poll_until(limit, "fencelock exited", || {
        child.try_wait().expect("try_wait").is_some()
    });
    child.wait_with_output().expect("output")
}

/// Reads the first line of the child's stdout.
fn first_line(child: &mut Child) -> String {
    let mut first = String::new();
    BufReader::new(child.stdout.as_mut().expect("stdout"))
        .read_line(&mut first)
        .expect("first line");
    first.trim().to_owned()
}

/// H holds `k`; W waits and is sent `sig` once `queued` says it is in line; W exits
/// 128 + sig; after H ends, a `--no-wait` run gets the lock at once (no entry of W left).
fn signal_while_waiting(url: &str, sig: Signal, queued: &dyn Fn() -> bool) {
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

// Issue 13 A9: before the fix these signals killed the waiter by default.
#[test]
fn on_files_other_terminating_signals_while_waiting_exit_128_plus_n() {
    for sig in OTHERS {
        let dir = tempfile::tempdir().expect("temp dir");
        signal_while_waiting(&file_url(dir.path()), sig, &|| true);
    }
}

// Issue 13 A9: on ZooKeeper the killed waiter's node blocked the next waiter until its
// session expired (20 s here: the `--no-wait` run after the holder would fail).
#[test]
fn on_zookeeper_other_terminating_signals_while_waiting_leave_no_queue_entry() {
    let zk = fencelock_testkit::zk_server::ZkEnsemble::standalone();
    let url = zk.url("/waiting-others", "session_timeout=20s");
    for sig in OTHERS {
        let base = std::cell::Cell::new(None::<usize>);
        // In line once the waiter watches its predecessor.
        let queued = || match (base.get(), zk.watch_count(0)) {
            (None, Some(n)) => {
                base.set(Some(n));
                false
            }
            (Some(b), Some(n)) => n > b,
            _ => false,
        };
        signal_while_waiting(&url, sig, &queued);
    }
}

// Issue 13 A9: a holder sent SIGUSR1 forwards it to its command instead of dying by it.
#[test]
fn a_holder_forwards_sigusr1_to_its_command() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut run = fencelock(&file_url(dir.path()))
        .args(["run", "k", "--", "sh", "-c"])
        .arg("trap 'echo got-usr1; exit 0' USR1; echo in; while :; do sleep 0.05; done")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    assert_eq!(first_line(&mut run), "in");
    kill_process(pid_of(&run), Signal::USR1).expect("SIGUSR1");
    let out = output_within(run, Duration::from_secs(10));
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("got-usr1"), "{text}");
}

// Issue 13 A10: after a forwarded SIGTERM and the --kill-after SIGKILL, `run` took about
// 1.7 s more to exit and warned that killed processes were "still there".
#[test]
fn after_the_kill_after_sigkill_run_exits_promptly_and_quietly() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut run = fencelock(&file_url(dir.path()))
        .args(["run", "k", "--kill-after", "1s", "--", "sh", "-c"])
        .arg("trap '' TERM; echo in; sleep 20")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    assert_eq!(first_line(&mut run), "in");
    let start = Instant::now();
    kill_process(pid_of(&run), Signal::TERM).expect("SIGTERM");
    let out = output_within(run, Duration::from_secs(10));
    let took = start.elapsed();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(took < Duration::from_millis(1600), "exit took {took:?}: {err}");
    assert!(!err.contains("still there"), "{err}");
}

// Issue 13 A10: a left-behind grandchild that ignores SIGTERM gets SIGKILL after
// --kill-after, and `run` does not warn about it while it is being reaped.
#[test]
fn a_left_behind_process_killed_after_kill_after_gives_no_warning() {
    let dir = tempfile::tempdir().expect("temp dir");
    let start = Instant::now();
    let run = fencelock(&file_url(dir.path()))
        .args(["run", "k", "--kill-after", "1s", "--", "sh", "-c"])
        .arg("(trap '' TERM; sleep 20) & echo started")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let out = output_within(run, Duration::from_secs(10));
    let took = start.elapsed();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(!err.contains("still there"), "{err}");
    assert!(took < Duration::from_millis(2500), "exit took {took:?}: {err}");
}
