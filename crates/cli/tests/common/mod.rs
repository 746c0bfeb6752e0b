//! Helpers the CLI's process tests share (`cli.rs`, `cli_postgres.rs`, `exit_codes.rs`,
//! `inputs.rs`, `signals.rs`, `process_tree.rs`): run the binary against one backend, wait
//! for children with a bound, check a one-line error, hold a key, and the scenarios more
//! than one backend runs (eight processes on one key, a signal while waiting).

// Each test crate that includes this module uses only some of the helpers.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use rustix::process::{kill_process, Pid, Signal};

pub const BIN: &str = env!("CARGO_BIN_EXE_fencelock");

/// The binary with none of the caller's `FENCELOCK_BACKEND`, `RUST_LOG` or `NO_COLOR`.
pub fn bare() -> Command {
    let mut cmd = Command::new(BIN);
    cmd.env_remove("FENCELOCK_BACKEND")
        .env_remove("RUST_LOG")
        .env_remove("NO_COLOR");
    cmd
}

/// [`bare`] with `--backend url`.
pub fn fencelock(url: &str) -> Command {
    let mut cmd = bare();
    cmd.arg("--backend").arg(url);
    cmd
}

/// [`fencelock`] on the file backend in `dir`.
pub fn on_files(dir: &Path) -> Command {
    fencelock(&file_url(dir))
}

pub fn file_url(dir: &Path) -> String {
    format!("file://{}", dir.display())
}

pub fn stderr_of(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Asserts status `code` and a one-line `fencelock: …` message on stderr containing
/// `says`, with no panic or backtrace; `what` names the case in a failure.
pub fn assert_one_line(out: &Output, code: i32, says: &str, what: &str) {
    let err = stderr_of(out);
    assert_eq!(out.status.code(), Some(code), "{what}: {err}");
    assert_eq!(err.lines().count(), 1, "{what}: not one line: {err}");
    assert!(err.starts_with("fencelock: ") && err.contains(says), "{what}: {err}");
    assert!(!err.contains("panicked") && !err.contains("backtrace"), "{what}: {err}");
}

/// Starts a holder (`cmd`, which names the backend, then `run`, e.g. `["run", "k"]`) whose
/// command prints `in` and stays inside until its stdin closes; returns once it is inside.
/// End it with [`end`].
pub fn hold(cmd: Command, run: &[&str]) -> Child {
    let (child, first) = spawn_holder(cmd, run, "echo in; read _ || true");
    assert_eq!(first, "in");
    child
}

/// Spawns `cmd` `run` `-- sh -c script` with stdin, stdout and stderr piped; returns it
/// with the first line its command printed (read without reading past it).
pub fn spawn_holder(mut cmd: Command, run: &[&str], script: &str) -> (Child, String) {
    let mut child = cmd
        .args(run)
        .args(["--", "sh", "-c", script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn holder");
    let first = first_line(&mut child);
    (child, first)
}

/// Closes the stdin of a holder from [`hold`] and asserts it exits 0 (within 20 s).
pub fn end(mut holder: Child) {
    drop(holder.stdin.take());
    let out = output_within(holder, Duration::from_secs(20));
    assert!(out.status.success(), "holder: {}", stderr_of(&out));
}

/// A child process that is killed (SIGKILL, which ends a stopped process too) and reaped
/// when dropped: a test that stops a process (SIGSTOP, SIGTSTP) and fails before it
/// continues it leaves no stopped process behind. [`into_inner`](Self::into_inner) hands
/// the child back once it runs again.
pub struct Killed(Option<Child>);

impl Killed {
    pub fn new(child: Child) -> Self {
        Killed(Some(child))
    }

    pub fn child(&mut self) -> &mut Child {
        self.0.as_mut().expect("the child was handed back")
    }

    pub fn pid(&self) -> Pid {
        pid_of(self.0.as_ref().expect("the child was handed back"))
    }

    /// The child, no longer killed on drop (e.g. for [`output_within`]).
    pub fn into_inner(mut self) -> Child {
        self.0.take().expect("the child was handed back")
    }
}

impl Drop for Killed {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
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

/// Waits for `child` with a bound: a hung CLI is killed and fails the test (with its
/// stderr) instead of hanging it.
pub fn output_within(mut child: Child, limit: Duration) -> Output {
    let start = Instant::now();
    while child.try_wait().expect("try_wait").is_none() {
        if start.elapsed() > limit {
            let _ = child.kill();
            let out = child.wait_with_output().expect("output");
            panic!("fencelock did not exit within {limit:?}; stderr: {}", stderr_of(&out));
        }
        std::thread::sleep(Duration::from_millis(10)); // polling a child's exit, bounded
    }
    child.wait_with_output().expect("output")
}

/// Reads the first line of the child's stdout, a byte at a time: nothing after it is
/// consumed, so the rest stays readable (e.g. by [`output_within`]).
pub fn first_line(child: &mut Child) -> String {
    let stdout = child.stdout.as_mut().expect("stdout");
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while stdout.read(&mut byte).expect("first line") == 1 && byte[0] != b'\n' {
        line.push(byte[0]);
    }
    String::from_utf8_lossy(&line).trim().to_owned()
}

/// H holds `k`; W waits and is sent `sig` once `queued` says it is in line; W exits
/// 128 + sig; after H ends, a `--no-wait` run gets the lock at once (no entry of W left).
pub fn signal_while_waiting(url: &str, sig: Signal, queued: &dyn Fn() -> bool) {
    let holder = hold(fencelock(url), &["run", "k"]);
    let _ = queued(); // records the server's count before the waiter comes
    let (mut waiter, rx) = waiter_in_line(url, "run", "W ran", queued);
    let mut lines: Vec<String> = rx.try_iter().collect();
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
    end(holder);
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

/// Eight `fencelock --backend <backend> run` processes on one key: never two inside at
/// once, the tokens grow in the order they got in, and each command saw its key.
pub fn assert_eight_processes_exclusive(backend: &str) {
    let dir = tempfile::tempdir().expect("temp dir");
    let work = dir.path().join("work");
    std::fs::create_dir(&work).expect("mkdir");
    // Inside the lock: note it if someone else is inside, log the token, work a little.
    let script = r#"
        set -e
        if ! mkdir "$WORK/inside" 2>/dev/null; then echo overlap >> "$WORK/overlap"; fi
        echo "$FENCELOCK_TOKEN $FENCELOCK_KEY" >> "$WORK/log"
        i=0; while [ $i -lt 2000 ]; do i=$((i+1)); done
        rmdir "$WORK/inside"
    "#;
    let children: Vec<_> = (0..8)
        .map(|_| {
            fencelock(backend)
                .args(["run", "k", "--wait", "60s", "--", "sh", "-c", script])
                .env("WORK", &work)
                .stderr(Stdio::piped())
                .spawn()
                .expect("spawn")
        })
        .collect();
    for c in children {
        let out = output_within(c, Duration::from_secs(120));
        assert!(out.status.success(), "a run failed: {}", stderr_of(&out));
    }
    assert!(
        !work.join("overlap").exists(),
        "two commands ran inside the lock at once"
    );
    let log = std::fs::read_to_string(work.join("log")).expect("log");
    let tokens: Vec<u64> = log
        .lines()
        .map(|l| l.split(' ').next().unwrap().parse().unwrap())
        .collect();
    assert_eq!(tokens.len(), 8, "{log}");
    assert!(
        tokens.windows(2).all(|w| w[1] > w[0]),
        "tokens not increasing in entry order: {tokens:?}"
    );
    assert!(log.lines().all(|l| l.ends_with(" k")), "FENCELOCK_KEY missing: {log}");
}

/// Runs `fencelock lab <args>` (no backend from the environment) and asserts it exits 0;
/// returns its stdout.
pub fn lab(args: &[&str]) -> String {
    let out = bare().arg("lab").args(args).output().expect("run");
    assert!(out.status.success(), "{}", stderr_of(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs `fencelock lab <scenario> --quiet --report FILE` and returns the report's table.
pub fn lab_report(scenario: &str) -> String {
    let dir = tempfile::tempdir().expect("temp dir");
    let report = dir.path().join("safety.md");
    let out = bare()
        .args(["lab", scenario, "--quiet", "--report"])
        .arg(&report)
        .output()
        .expect("run");
    assert!(out.status.success(), "{}", stderr_of(&out));
    std::fs::read_to_string(&report).expect("report")
}

/// The cells of the row of `table` for `scenario` on `backend` (columns: scenario,
/// backend, overlaps, regressions, reuse, late actions, stale (fenced), …).
pub fn lab_row(table: &str, scenario: &str, backend: &str) -> Vec<String> {
    let line = table
        .lines()
        .find(|l| l.starts_with(&format!("| {scenario} | {backend} |")))
        .unwrap_or_else(|| panic!("no row for {backend} in:\n{table}"));
    line.split('|')
        .map(|c| c.trim().to_owned())
        .filter(|c| !c.is_empty())
        .collect()
}

/// A `queued` condition for [`signal_while_waiting`] read from a server-side count:
/// `false` on its first call, which notes `count()` (called before the waiter starts);
/// afterwards, whether `count()` grew past that.
pub fn count_grew<T: PartialOrd + Copy>(count: impl Fn() -> Option<T>) -> impl Fn() -> bool {
    let base = std::cell::Cell::new(None);
    move || match (base.get(), count()) {
        (None, Some(n)) => {
            base.set(Some(n));
            false
        }
        (Some(b), Some(n)) => n > b,
        _ => false,
    }
}

/// [`signal_while_waiting`] on ZooKeeper for each of `sigs`: the waiter is in line once it
/// watches its predecessor (the server's watch count grew).
pub fn signals_while_waiting_on_zookeeper(zk: &fencelock_testkit::zk_server::ZkEnsemble, url: &str, sigs: &[Signal]) {
    for &sig in sigs {
        signal_while_waiting(url, sig, &count_grew(|| zk.watch_count(0)));
    }
}

/// Spawns a waiter on `k` (`-v VERB k --wait 60s --ttl 30s -- echo WORD`, VERB `run` or
/// `elect`, every stream piped) and returns it with its stderr lines, once it said it is
/// acquiring (campaigning) and `queued` says it is in line.
pub fn waiter_in_line(url: &str, verb: &str, word: &str, queued: &dyn Fn() -> bool) -> (Child, mpsc::Receiver<String>) {
    let mut waiter = fencelock(url)
        .args(["-v", verb, "k", "--wait", "60s", "--ttl", "30s", "--", "echo", word])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
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
    let starting = if verb == "elect" { "campaigning" } else { "acquiring" };
    while !lines.iter().any(|l: &String| l.contains(starting)) {
        let left = Duration::from_secs(20).saturating_sub(start.elapsed());
        match rx.recv_timeout(left) {
            Ok(line) => lines.push(line),
            Err(_) => panic!("the waiter never said it was {starting}: {lines:?}"),
        }
    }
    poll_until(Duration::from_secs(20), "the waiter is in line", queued);
    (waiter, rx)
}

/// The process's state letter from `/proc/PID/stat` (`T`: stopped).
pub fn state_of(pid: Pid) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{}/stat", pid.as_raw_nonzero())).ok()?;
    stat.rsplit_once(')')?.1.trim_start().chars().next()
}

/// H holds `k` (VERB `run`: the lock; `elect`: the election's seat); W waits (TTL 30 s)
/// and, once `queued` says it is in line, is stopped as Ctrl-Z stops it (SIGTSTP); X then
/// asks for `k` too. When H ends, X must get it at once — not after a place in line (or a
/// grant handed to it) that the stopped W cannot use runs out. Continued, W queues again,
/// gets it and runs its command.
pub fn stop_while_waiting(url: &str, verb: &str, queued: &dyn Fn() -> bool) {
    let holder = hold(fencelock(url), &[verb, "k"]);
    let _ = queued(); // records the server's count before the waiter comes
    let (w, w_err) = waiter_in_line(url, verb, "W ran", queued);
    // Killed if the test fails before it ends: a stopped process would linger.
    let mut w = Killed::new(w);
    let w = w.child();
    kill_process(pid_of(w), Signal::TSTP).expect("SIGTSTP the waiter");
    poll_until(Duration::from_secs(10), "the waiter is stopped", || {
        state_of(pid_of(w)) == Some('T')
    });
    let x = fencelock(url)
        .args([verb, "k", "--wait", "60s", "--ttl", "30s", "--", "true"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn X");
    end(holder);
    let x = output_within(x, Duration::from_secs(10));
    assert!(x.status.success(), "X: {}", stderr_of(&x));
    kill_process(pid_of(w), Signal::CONT).expect("SIGCONT the waiter");
    let start = Instant::now();
    while w.try_wait().expect("try_wait").is_none() {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "W did not finish after SIGCONT"
        );
        std::thread::sleep(Duration::from_millis(10)); // polling a child's exit, bounded
    }
    let mut out = String::new();
    w.stdout
        .take()
        .expect("stdout")
        .read_to_string(&mut out)
        .expect("W's stdout");
    let lines: Vec<String> = w_err.try_iter().collect();
    assert!(w.wait().expect("wait").success(), "W: {lines:?}");
    assert_eq!(out.trim(), "W ran", "W: {lines:?}");
    assert!(
        lines.iter().any(|l| l.contains("left its place in line")),
        "W did not say it left the line: {lines:?}"
    );
}
