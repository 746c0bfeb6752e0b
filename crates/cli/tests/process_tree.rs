//! `fencelock run` owns its command's whole process tree: never two commands inside the lock
//! at once, even when the holder is paused past its TTL or killed, and a signal while
//! waiting leaves nothing behind. On file, Redis, etcd and ZooKeeper, real servers.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail by panicking

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use rustix::process::{kill_process, Pid, Signal};

mod common;

use common::{
    fencelock, file_url, output_within, pid_of, poll_until, signal_while_waiting, signals_while_waiting_on_zookeeper,
    BIN,
};

/// A: logs its entry, then starts a grandchild that logs `A-ALIVE` every 50 ms (at most
/// 30 s), and waits for it — the `sh -c 'sleep 30 & wait'` of the issue, made visible.
const HOLDER_A: &str = r#"echo A-IN >> "$LOG"
( i=0; while [ $i -lt 600 ]; do echo A-ALIVE >> "$LOG"; i=$((i+1)); sleep 0.05; done ) &
wait"#;

/// B: inside for one second.
const HOLDER_B: &str = r#"echo B-IN >> "$LOG"; sleep 1; echo B-OUT >> "$LOG""#;

/// SIGKILLs every process whose command line mentions `needle` (a test's own temporary
/// directory), by pid: what a test started under script(1) is in another session.
fn kill_processes_mentioning(needle: &str) {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else {
            continue;
        };
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        if String::from_utf8_lossy(&cmdline).contains(needle) && pid != std::process::id() as i32 {
            if let Some(pid) = Pid::from_raw(pid) {
                let _ = kill_process(pid, Signal::KILL);
            }
        }
    }
}

fn log_of(log: &Path) -> String {
    std::fs::read_to_string(log).unwrap_or_default()
}

/// The log shows B inside, A's grandchild alive before B came in, and no line of A from
/// B's entry on (so also not between B-IN and B-OUT).
fn assert_never_two_inside(log: &Path) {
    let text = log_of(log);
    let lines: Vec<&str> = text.lines().collect();
    let b_in = lines
        .iter()
        .position(|l| *l == "B-IN")
        .unwrap_or_else(|| panic!("B never got in: {text}"));
    assert!(lines.contains(&"B-OUT"), "B did not finish: {text}");
    assert!(lines[..b_in].contains(&"A-ALIVE"), "A's grandchild never ran: {text}");
    let late: Vec<&&str> = lines[b_in..].iter().filter(|l| l.starts_with("A-")).collect();
    assert!(
        late.is_empty(),
        "A's process tree ran on after B got in ({} lines): {text}",
        late.len()
    );
}

/// Starts A under the lock with its grandchild and returns once the grandchild logs.
fn start_a(url: &str, log: &Path, ttl: &str) -> Child {
    start_a_with("run", url, log, ttl)
}

/// [`start_a`] under `verb` (`run` the lock `k`, `elect` the election `k`).
fn start_a_with(verb: &str, url: &str, log: &Path, ttl: &str) -> Child {
    let a = fencelock(url)
        .args([verb, "k", "--ttl", ttl, "--", "sh", "-c", HOLDER_A])
        .env("LOG", log)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn A");
    poll_until(Duration::from_secs(30), "A's grandchild logs", || {
        log_of(log).contains("A-ALIVE")
    });
    a
}

/// B waits for the lock, logs its entry, works one second inside, logs its exit.
fn run_b(url: &str, log: &Path) {
    let b = fencelock(url)
        .args(["run", "k", "--wait", "60s", "--", "sh", "-c", HOLDER_B])
        .env("LOG", log)
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn B");
    let out = output_within(b, Duration::from_secs(90));
    assert!(out.status.success(), "B: {}", String::from_utf8_lossy(&out.stderr));
}

/// SIGSTOP fencelock A past its TTL, let B take the lock and finish, SIGCONT A: A exits 76,
/// and nothing of A's tree ran while B was inside.
fn paused_holder_with_a_grandchild(url: &str) {
    let dir = tempfile::tempdir().expect("temp dir");
    let log = dir.path().join("log");
    let a = common::Killed::new(start_a(url, &log, "1s")); // not left stopped if B fails
    kill_process(a.pid(), Signal::STOP).expect("SIGSTOP");
    run_b(url, &log);
    kill_process(a.pid(), Signal::CONT).expect("SIGCONT");
    let out = output_within(a.into_inner(), Duration::from_secs(40));
    assert_eq!(
        out.status.code(),
        Some(76),
        "A: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_never_two_inside(&log);
}

/// SIGKILL fencelock A while its command runs; B takes the lock: nothing of A's tree runs
/// while B is inside.
fn killed_holder_with_a_grandchild(url: &str) {
    let dir = tempfile::tempdir().expect("temp dir");
    let log = dir.path().join("log");
    let mut a = start_a(url, &log, "2s");
    a.kill().expect("SIGKILL");
    a.wait().expect("reap A");
    run_b(url, &log);
    assert_never_two_inside(&log);
}

/// H holds `k`; W waits for it and is sent `sig` once `queued` says its place in line
/// exists; W exits 128 + sig at once; after H ends, a `--no-wait` run gets the lock at once
/// (no queue entry of W is left in front of it).
#[test]
fn on_files_a_paused_or_killed_holder_never_runs_beside_the_next() {
    let dir = tempfile::tempdir().expect("temp dir");
    paused_holder_with_a_grandchild(&file_url(dir.path()));
    let dir = tempfile::tempdir().expect("temp dir");
    killed_holder_with_a_grandchild(&file_url(dir.path()));
}

/// Every process: `(pid, state, ppid, pgrp)`, from /proc/*/stat (the fields after the
/// parenthesised name).
fn processes() -> Vec<(Pid, String, i32, i32)> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse().ok())
            .and_then(Pid::from_raw)
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        let Some((_, after_name)) = stat.rsplit_once(") ") else {
            continue;
        };
        let fields: Vec<&str> = after_name.split(' ').collect();
        let number = |i: usize| fields.get(i).and_then(|f| f.parse::<i32>().ok()).unwrap_or(0);
        found.push((pid, fields.first().unwrap_or(&"").to_string(), number(1), number(2)));
    }
    found
}

/// The children of `pid`.
fn children_of(pid: Pid) -> Vec<Pid> {
    let want = pid.as_raw_nonzero().get();
    processes().into_iter().filter(|p| p.2 == want).map(|p| p.0).collect()
}

/// The file backend's SIGKILL window (docs/cli.md): a SIGKILLed `run` must not free the
/// lock before its guard has killed the command's group. The guard is held stopped while
/// `run` dies, so it cannot act: the lock must stay held (the guard shares the flocked
/// liveness file) and B must not get in while A's grandchild runs; once the guard goes on,
/// it kills the group and B gets in. (Written first, and failing, against the `run` that
/// left the liveness file close-on-exec: B got in at once.)
#[test]
fn on_files_a_killed_holder_keeps_the_lock_until_its_group_is_dead() {
    a_killed_holder_keeps_the_lock_until_its_group_is_dead("run");
}

/// The same for `elect`, whose seat is a lease of the same file backend: a SIGKILLed
/// leader must not free the seat before its guard has killed the command's group. (Written
/// first, and failing, against the `elect` that connected without `inherit=true`, which
/// docs/cli.md said it added: B got in at once, beside A's grandchild.)
#[test]
fn on_files_a_killed_leader_keeps_the_seat_until_its_group_is_dead() {
    a_killed_holder_keeps_the_lock_until_its_group_is_dead("elect");
}

fn a_killed_holder_keeps_the_lock_until_its_group_is_dead(verb: &str) {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = file_url(dir.path());
    let log = dir.path().join("log");
    let mut a = start_a_with(verb, &url, &log, "30s");
    let guards = children_of(pid_of(&a));
    let [guard] = guards.as_slice() else {
        panic!("A should have one child, its guard: {guards:?}")
    };
    // Whatever happens below, A's group (led by the guard) does not outlive the test.
    struct KillGroup(Pid);
    impl Drop for KillGroup {
        fn drop(&mut self) {
            let _ = rustix::process::kill_process_group(self.0, Signal::KILL);
        }
    }
    let _cleanup = KillGroup(*guard);
    // A member of A's group whose parent is this test (same session, other group), so the
    // group does not become orphaned when A dies — the kernel would then send the stopped
    // guard SIGCONT at once (POSIX orphaned-group rule) and the test would prove nothing.
    let mut anchor = {
        use std::os::unix::process::CommandExt;
        Command::new("sleep")
            .arg("60")
            .process_group(guard.as_raw_nonzero().get())
            .spawn()
            .expect("spawn a member of A's group")
    };
    kill_process(*guard, Signal::STOP).expect("SIGSTOP the guard");
    a.kill().expect("SIGKILL A");
    a.wait().expect("reap A");
    let b = fencelock(&url)
        .args([verb, "k", "--wait", "60s", "--", "sh", "-c", HOLDER_B])
        .env("LOG", &log)
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn B");
    // Killed if the test fails before it ends.
    let b = common::Killed::new(b);
    // While the guard cannot act, A's grandchild runs on, so B must stay out: watch the
    // log for a second (B gets in within milliseconds when the lock is free).
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(1) {
        assert!(
            !log_of(&log).contains("B-IN"),
            "B got in while A's guard was stopped and A's grandchild ran: {}",
            log_of(&log)
        );
        std::thread::sleep(Duration::from_millis(10)); // polling a condition with a deadline
    }
    kill_process(*guard, Signal::CONT).expect("SIGCONT the guard");
    let out = output_within(b.into_inner(), Duration::from_secs(90));
    let _ = anchor.wait(); // killed with A's group
    assert!(out.status.success(), "B: {}", String::from_utf8_lossy(&out.stderr));
    assert_never_two_inside(&log);
}

#[test]
fn on_redis_a_paused_or_killed_holder_never_runs_beside_the_next() {
    let server = fencelock_testkit::redis_server::RedisServer::start();
    paused_holder_with_a_grandchild(&server.url());
    server.command("FLUSHALL");
    killed_holder_with_a_grandchild(&server.url());
}

#[cfg(feature = "etcd")]
#[test]
fn on_etcd_a_paused_or_killed_holder_never_runs_beside_the_next() {
    let cluster = fencelock_testkit::etcd_server::EtcdCluster::single();
    paused_holder_with_a_grandchild(&cluster.url("session_ttl=2s"));
    killed_holder_with_a_grandchild(&cluster.url("session_ttl=2s"));
}

#[test]
fn on_zookeeper_a_paused_or_killed_holder_never_runs_beside_the_next() {
    let zk = fencelock_testkit::zk_server::ZkEnsemble::standalone();
    paused_holder_with_a_grandchild(&zk.url("/tree-paused", "session_timeout=2s"));
    killed_holder_with_a_grandchild(&zk.url("/tree-killed", "session_timeout=2s"));
}

#[test]
fn on_files_a_signal_while_waiting_leaves_nothing_behind() {
    for sig in [Signal::INT, Signal::TERM] {
        let dir = tempfile::tempdir().expect("temp dir");
        signal_while_waiting(&file_url(dir.path()), sig, &|| true);
    }
}

#[test]
fn on_redis_a_signal_while_waiting_leaves_nothing_behind() {
    let server = fencelock_testkit::redis_server::RedisServer::start();
    for sig in [Signal::INT, Signal::TERM] {
        signal_while_waiting(&server.url(), sig, &|| true);
    }
}

#[cfg(feature = "etcd")]
#[test]
fn on_etcd_a_signal_while_waiting_leaves_no_queue_entry() {
    let cluster = fencelock_testkit::etcd_server::EtcdCluster::single();
    // Long session TTL: only close() can remove the waiter's queue key in time.
    let url = cluster.url("session_ttl=30s");
    for sig in [Signal::INT, Signal::TERM] {
        // In line once the waiter's queue-key Txn was handled after the holder's.
        signal_while_waiting(&url, sig, &common::count_grew(|| cluster.grpc_calls(0, "Txn")));
    }
}

#[test]
fn on_zookeeper_a_signal_while_waiting_leaves_no_queue_entry() {
    let zk = fencelock_testkit::zk_server::ZkEnsemble::standalone();
    // Long session timeout: only close() can remove the waiter's node in time.
    let url = zk.url("/waiting", "session_timeout=20s");
    signals_while_waiting_on_zookeeper(&zk, &url, &[Signal::INT, Signal::TERM]);
}

#[test]
fn a_forwarded_sigterm_reaches_the_whole_group_and_sigkill_follows_after_kill_after() {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = file_url(dir.path());
    // The group ignores SIGTERM (sh and its sleep inherit the ignored disposition).
    let mut run = fencelock(&url)
        .args(["run", "k", "--kill-after", "300ms", "--"])
        .args(["sh", "-c", "trap '' TERM; echo in; sleep 30; echo survived"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut first = String::new();
    BufReader::new(run.stdout.as_mut().expect("stdout"))
        .read_line(&mut first)
        .expect("line");
    assert_eq!(first.trim(), "in");
    let start = Instant::now();
    kill_process(pid_of(&run), Signal::TERM).expect("SIGTERM");
    let out = output_within(run, Duration::from_secs(10));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(128 + 9), "{err}");
    assert!(err.contains("ignored SIGTERM"), "{err}");
    // `run`'s own SIGKILL after --kill-after, which took the guard with the group, is not
    // someone else's kill of the guard (before: "the guard was killed by SIGKILL from
    // outside fencelock").
    assert!(!err.contains("from outside"), "{err}");
    assert!(start.elapsed() < Duration::from_secs(5), "took {:?}", start.elapsed());
    assert!(!String::from_utf8_lossy(&out.stdout).contains("survived"));
    // And the lock is free again.
    let next = fencelock(&url)
        .args(["run", "k", "--no-wait", "--", "true"])
        .output()
        .expect("run");
    assert!(next.status.success(), "{}", String::from_utf8_lossy(&next.stderr));
}

#[test]
fn the_command_keeps_fencelock_backend_for_nested_runs() {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = file_url(dir.path());
    let out = Command::new(BIN)
        .env("FENCELOCK_BACKEND", &url)
        .args(["run", "outer", "--", "sh", "-c"])
        .arg(format!("{BIN} run inner -- sh -c 'echo $FENCELOCK_KEY'"))
        .output()
        .expect("run");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "inner");
}

/// Runs `line` under `script(1)` (a pseudo-terminal; its stdin is typed into the terminal),
/// typing `input`; fails after 20 s (a command stopped by SIGTTIN would hang), killing
/// every process that mentions `cleanup`.
fn on_a_terminal(line: &str, input: &str, cleanup: &str) -> (Option<i32>, String) {
    use std::io::Write;
    let mut child = Command::new("script")
        .args(["-qec", line, "/dev/null"])
        .env_remove("FENCELOCK_BACKEND")
        .env_remove("RUST_LOG")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("script(1)");
    child
        .stdin
        .as_mut()
        .expect("stdin")
        .write_all(input.as_bytes())
        .expect("type");
    let start = Instant::now();
    while child.try_wait().expect("try_wait").is_none() {
        if start.elapsed() > Duration::from_secs(20) {
            let _ = child.kill();
            kill_processes_mentioning(cleanup);
            let out = child.wait_with_output().expect("output");
            panic!("hung on the terminal: {}", String::from_utf8_lossy(&out.stdout));
        }
        std::thread::sleep(Duration::from_millis(10)); // polling a child's exit with a deadline
    }
    let out = child.wait_with_output().expect("output");
    (out.status.code(), String::from_utf8_lossy(&out.stdout).into_owned())
}

#[test]
fn an_interactive_command_gets_the_terminal() {
    let dir = tempfile::tempdir().expect("temp dir");
    // `read` from the terminal: a command outside the terminal's foreground group would be
    // stopped by SIGTTIN (and this would hang), as `sudo` asking for a password would.
    let line = format!(
        "{BIN} --backend file://{} run k -- sh -c 'read answer < /dev/tty; echo got=$answer'",
        dir.path().display()
    );
    let (code, text) = on_a_terminal(&line, "yes\n", &dir.path().display().to_string());
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("got=yes"), "{text}");
}

#[test]
fn ctrl_z_does_not_leave_the_terminal_to_a_stopped_command() {
    use std::io::Write;
    let dir = tempfile::tempdir().expect("temp dir");
    let cleanup = dir.path().display().to_string();
    let line = format!(
        "{BIN} --backend file://{cleanup} run k -- sh -c 'echo ready; read a < /dev/tty; echo second; read b < /dev/tty; echo got=$a$b'"
    );
    let mut child = Command::new("script")
        .args(["-qec", &line, "/dev/null"])
        .env_remove("FENCELOCK_BACKEND")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("script(1)");
    let mut stdin = child.stdin.take().expect("stdin");
    let (tx, rx) = mpsc::channel();
    let stdout = child.stdout.take().expect("stdout");
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut seen = Vec::new();
    let wait_for = |what: &str, seen: &mut Vec<String>| {
        let start = Instant::now();
        while !seen.iter().any(|l| l.trim() == what) {
            match rx.recv_timeout(Duration::from_secs(20).saturating_sub(start.elapsed())) {
                Ok(line) => seen.push(line),
                Err(_) => {
                    kill_processes_mentioning(&cleanup);
                    panic!("never saw `{what}`: {seen:?}");
                }
            }
        }
    };
    wait_for("ready", &mut seen);
    stdin.write_all(b"x\n").expect("type");
    wait_for("second", &mut seen);
    // Ctrl-Z while the command reads the terminal: its group is continued at once.
    stdin.write_all(b"\x1a").expect("type");
    stdin.write_all(b"y\n").expect("type");
    wait_for("got=xy", &mut seen);
    let out = output_within(child, Duration::from_secs(20));
    assert!(out.status.success());
}

/// A command that writes its process group to `$LOG.group`, then exits and leaves behind a
/// process that ignores SIGTERM and logs `A-ALIVE` every 50 ms (at most 60 s). It exits
/// once that process has set its trap (`$LOG.trapped`, waited for at most 5 s): exiting at
/// once let `run`'s SIGTERM to the group come first on a loaded machine, and the process
/// died before it could ignore it (a full run saw `run` exit 0 with nothing left behind).
const LEAVES_ONE_BEHIND: &str = r#"cut -d' ' -f5 /proc/$$/stat > "$LOG.group"
( trap '' TERM; : > "$LOG.trapped"; i=0; while [ $i -lt 1200 ]; do echo A-ALIVE >> "$LOG"; i=$((i+1)); sleep 0.05; done ) &
i=0; while [ ! -e "$LOG.trapped" ] && [ $i -lt 500 ]; do i=$((i+1)); sleep 0.01; done
exit 0"#;

/// The processes of group `group` that run (zombies do not).
fn members_of(group: Pid) -> Vec<Pid> {
    let want = group.as_raw_nonzero().get();
    processes()
        .into_iter()
        .filter(|p| p.3 == want && p.1 != "Z" && p.1 != "X")
        .map(|p| p.0)
        .collect()
}

/// A's command exits and leaves a process behind that ignores SIGTERM; while `run` waits
/// out `--kill-after` (60 s) before its SIGKILL, `run` is SIGKILLed (`kill`) or paused past
/// its TTL (`pause`). The left-behind process must not outlive that: once `run` is gone, or
/// the lease's validity ended unrenewed, another holder may be inside.
fn a_left_behind_process_dies_when_run_cannot_stop_it(how: &str) {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = file_url(dir.path());
    let log = dir.path().join("log");
    let mut a = fencelock(&url)
        .args([
            "run",
            "k",
            "--ttl",
            "2s",
            "--kill-after",
            "60s",
            "--",
            "sh",
            "-c",
            LEAVES_ONE_BEHIND,
        ])
        .env("LOG", &log)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn A");
    poll_until(Duration::from_secs(30), "A's left-behind process logs", || {
        if let Ok(Some(status)) = a.try_wait() {
            let mut err = String::new();
            let _ = std::io::Read::read_to_string(&mut a.stderr.take().expect("stderr"), &mut err);
            panic!("A exited first: {status:?} {err}");
        }
        log_of(&log).contains("A-ALIVE")
    });
    let group = std::fs::read_to_string(dir.path().join("log.group")).expect("A's group");
    let group = &Pid::from_raw(group.trim().parse().expect("a process group")).expect("a pid");
    struct KillGroup(Pid);
    impl Drop for KillGroup {
        fn drop(&mut self) {
            let _ = rustix::process::kill_process_group(self.0, Signal::KILL);
        }
    }
    let _cleanup = KillGroup(*group);
    // The command itself has exited (the guard has no child left, or is gone): what is
    // left of the group is being stopped.
    poll_until(Duration::from_secs(10), "A's command exits", || {
        children_of(*group).is_empty()
    });
    assert!(
        !members_of(*group).is_empty(),
        "the left-behind process is gone already"
    );
    let bound = match how {
        "kill" => {
            a.kill().expect("SIGKILL A");
            a.wait().expect("reap A");
            Duration::from_secs(5)
        }
        _ => {
            kill_process(pid_of(&a), Signal::STOP).expect("SIGSTOP A");
            Duration::from_secs(2 + 5) // the TTL, then the guard's deadline acts
        }
    };
    let start = Instant::now();
    while !members_of(*group).is_empty() {
        assert!(
            start.elapsed() < bound,
            "{how}: A's left-behind process ran on {:?} after `run` could no longer stop it: {:?}",
            start.elapsed(),
            members_of(*group)
        );
        std::thread::sleep(Duration::from_millis(10)); // polling a condition with a deadline
    }
    if how != "kill" {
        kill_process(pid_of(&a), Signal::CONT).expect("SIGCONT A");
        let out = output_within(a, Duration::from_secs(20));
        assert_eq!(
            out.status.code(),
            Some(76),
            "A: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

// Before the fix the guard exited with the command, and only `run` stopped what the
// command left behind: a SIGKILLed or paused `run` left it running beside the next holder.
#[test]
fn a_left_behind_process_dies_when_run_is_killed_while_stopping_it() {
    a_left_behind_process_dies_when_run_cannot_stop_it("kill");
}

#[test]
fn a_left_behind_process_dies_when_run_is_paused_while_stopping_it() {
    a_left_behind_process_dies_when_run_cannot_stop_it("pause");
}

// A review: a left-behind process that is stopped keeps its SIGTERM pending, so `run`
// waited out the whole --kill-after (the lock held all that time) before its SIGKILL.
#[test]
fn a_stopped_left_behind_process_ends_at_its_sigterm_not_after_kill_after() {
    let dir = tempfile::tempdir().expect("temp dir");
    let start = Instant::now();
    let run = fencelock(&file_url(dir.path()))
        .args([
            "run",
            "k",
            "--kill-after",
            "30s",
            "--",
            "sh",
            "-c",
            "sleep 33 & kill -STOP $!; exit 0",
        ])
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn run");
    let out = output_within(run, Duration::from_secs(60));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        start.elapsed() < Duration::from_secs(10),
        "took {:?}: the stopped process was waited for until --kill-after",
        start.elapsed()
    );
}

/// `fencelock run --ttl TTL k -- sh -c SCRIPT` on the file backend under `dir`, its stdout
/// to /dev/null and its stderr to `stderr`.
fn run_on_files(dir: &Path, ttl: &str, script: &str, stderr: Stdio) -> Child {
    under_on_files("run", dir, ttl, script, stderr)
}

/// [`run_on_files`] under `verb` (`run` the lock `k`, `elect` the election `k`).
fn under_on_files(verb: &str, dir: &Path, ttl: &str, script: &str, stderr: Stdio) -> Child {
    fencelock(&file_url(&dir.join("locks")))
        .args([verb, "--ttl", ttl, "k", "--", "sh", "-c", script])
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .expect("spawn run")
}

/// A new user's trial: `run` SIGSTOPped while its command ran, the command ending on its
/// own inside the lease's validity (the guard, not stopped, kills the group at the
/// validity's end: a guard that exited by itself saw the command end before it), and the
/// validity running out before SIGCONT. `run` reported the loss, said the guard had killed
/// the command, and exited 76: the command's 0 was lost, and a retrying script repeated
/// finished work. The command's own status is the answer.
#[test]
fn a_command_that_ended_inside_the_validity_keeps_its_status_though_run_was_stopped_past_it() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (started, done) = (dir.path().join("started"), dir.path().join("done"));
    let script = format!("touch '{}'; sleep 0.2; touch '{}'", started.display(), done.display());
    let run = common::Killed::new(run_on_files(dir.path(), "1s", &script, Stdio::piped()));
    poll_until(Duration::from_secs(10), "the command started", || started.exists());
    kill_process(run.pid(), Signal::STOP).expect("SIGSTOP"); // killed on drop if a poll fails
    poll_until(Duration::from_secs(10), "the command ended", || done.exists());
    // The condition is time itself: past the 1 s validity, unrenewed while `run` is stopped.
    std::thread::sleep(Duration::from_millis(1500));
    kill_process(run.pid(), Signal::CONT).expect("SIGCONT");
    let out = output_within(run.into_inner(), Duration::from_secs(30));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(!stderr.contains("had already killed"), "{stderr}");
}

/// Review of the "covered" exit: a guard that did not die of SIGKILL did not necessarily
/// exit by itself. Real-time signals are not among those the guard catches: one sent to
/// the group (here by the command, which ignores it) ends the guard while the command
/// runs on, with nothing left to kill it at the validity's end. `run`, stopped past the
/// validity, then took the guard's death by that signal as "the command ended inside the
/// validity" and exited with 128 + 34, saying "lost after the command had ended" — while
/// the command demonstrably ran a second past the 1 s validity.
#[test]
fn a_guard_killed_by_another_signal_is_not_a_command_that_ended_inside_the_validity() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (started, go, done) = (
        dir.path().join("started"),
        dir.path().join("go"),
        dir.path().join("done"),
    );
    let script = format!(
        "trap '' 34; touch '{}'; while [ ! -e '{}' ]; do sleep 0.01; done; kill -34 0; sleep 2; touch '{}'",
        started.display(),
        go.display(),
        done.display()
    );
    let run = run_on_files(dir.path(), "1s", &script, Stdio::piped());
    poll_until(Duration::from_secs(10), "the command started", || started.exists());
    let run = common::Killed::new(run); // not left stopped if a step fails
    kill_process(run.pid(), Signal::STOP).expect("SIGSTOP");
    std::fs::write(&go, "").expect("go");
    // Either the guard kills the group at the validity's end (1 s), or the command writes
    // `done` 2 s after `go`: bounded either way.
    let deadline = Instant::now() + Duration::from_secs(6);
    while !done.exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20)); // polling a condition, bounded
    }
    let ran_past = done.exists();
    kill_process(run.pid(), Signal::CONT).expect("SIGCONT");
    let out = output_within(run.into_inner(), Duration::from_secs(30));
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!(
        "ran past the validity: {ran_past}; status {:?}; {stderr}",
        out.status.code()
    );
    if ran_past {
        assert_eq!(
            out.status.code(),
            Some(76),
            "the command ran past the validity: {stderr}"
        );
        assert!(!stderr.contains("after the command had ended"), "{stderr}");
    }
}

/// Whether the command of a `run --ttl 1s` paused (SIGSTOP) while its command ran still
/// reached its end, 2 s past the validity: the command is `PREFIX touch started; sleep
/// 3; touch done` (`prefix` may start something in the background), `run`'s stderr is
/// `stderr`.
fn ran_past_the_validity_under_a_paused_run(prefix: &str, stderr: Stdio) -> bool {
    let dir = tempfile::tempdir().expect("temp dir");
    let (started, done) = (dir.path().join("started"), dir.path().join("done"));
    let script = format!(
        "{prefix} touch '{}'; sleep 3; touch '{}'",
        started.display(),
        done.display()
    );
    let run = fencelock(&file_url(&dir.path().join("locks")))
        .args(["run", "--ttl", "1s", "k", "--", "sh", "-c", &script])
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .expect("spawn run");
    poll_until(Duration::from_secs(10), "the command started", || started.exists());
    let run = common::Killed::new(run); // not left stopped if a step fails
    kill_process(run.pid(), Signal::STOP).expect("SIGSTOP");
    // The guard kills the group about 1 s after the grant; the command would write `done`
    // at 3 s.
    let deadline = Instant::now() + Duration::from_secs(6);
    while !done.exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20)); // polling a condition, bounded
    }
    let ran_past = done.exists();
    kill_process(run.pid(), Signal::CONT).expect("SIGCONT");
    let mut run = run.into_inner();
    let _ = run.kill();
    drop(run.stderr.take()); // a piped stderr's reader goes: whatever still writes gets EPIPE
    let _ = run.wait();
    ran_past
}

/// Review: the guard's kill at the validity's end printed its reason with `eprintln!`
/// first, which panics when stderr cannot be written (a closed pipe, a full disk; here
/// /dev/full): the guard exited 101 without killing, and the command of a `run` paused
/// past its validity ran on to its end beside the next holder.
#[test]
fn the_guard_kills_at_the_validitys_end_even_when_stderr_cannot_be_written() {
    let full = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/full")
        .expect("/dev/full");
    assert!(
        !ran_past_the_validity_under_a_paused_run("", Stdio::from(full)),
        "the command ran to its end, 2 s past the validity, under a paused `run`"
    );
}

/// New-user trial (helper-93, 5 of 5): the guard wrote its reason to stderr before its
/// kill at the validity's end; with stderr a pipe whose reader had stalled (a stuck `|
/// logger`) and the command filling it, that write blocked and the kill never came — the
/// command of a paused `run` ran on beside the next holder for as long as the reader
/// stalled.
#[test]
fn the_guard_kills_at_the_validitys_end_even_when_stderr_blocks() {
    // 1 MB into stderr (a pipe nobody reads holds 64 KiB): the writer blocks, the pipe
    // stays full.
    assert!(
        !ran_past_the_validity_under_a_paused_run("head -c 1000000 /dev/zero >&2 &", Stdio::piped()),
        "the command ran to its end, 2 s past the validity, under a paused `run` whose stderr was blocked"
    );
}

/// `fencelock run --ttl TTL k -- sh -c 'echo $$ > DIR/pid; exec sleep 30'` on the file
/// backend under `dir`, stderr to `stderr`; returns it with the command's pid once the
/// command runs. The command is a child of the guard: its parent's pid is the guard's.
fn run_sleeping(dir: &Path, ttl: &str, stderr: Stdio) -> (Child, Pid) {
    sleeping_under("run", dir, ttl, stderr)
}

/// [`run_sleeping`] under `verb`.
fn sleeping_under(verb: &str, dir: &Path, ttl: &str, stderr: Stdio) -> (Child, Pid) {
    let pid_file = dir.join("pid");
    let script = format!(
        "echo $$ > '{}.tmp'; mv '{0}.tmp' '{0}'; exec sleep 30",
        pid_file.display()
    );
    let run = under_on_files(verb, dir, ttl, &script, stderr);
    poll_until(Duration::from_secs(10), "the command started", || pid_file.exists());
    let pid = std::fs::read_to_string(&pid_file).expect("the command's pid");
    (run, Pid::from_raw(pid.trim().parse().expect("a pid")).expect("a pid"))
}

/// Whether `pid` runs (a zombie does not).
fn running(pid: Pid) -> bool {
    processes().iter().any(|p| p.0 == pid && p.1 != "Z" && p.1 != "X")
}

/// The parent of `pid`.
fn parent_of(pid: Pid) -> Pid {
    let parent = processes()
        .into_iter()
        .find(|p| p.0 == pid)
        .map(|p| p.2)
        .expect("the process is there");
    Pid::from_raw(parent).expect("a parent")
}

/// New-user trial F7: the guard alone SIGKILLed (not `run`, not the command) — the command
/// was stopped with it (`run` stops the group), but `run` exited 137 saying nothing. It
/// says in one line that its guard was killed, what became of the command and of the lock,
/// and exits 128 + SIGKILL (docs/cli.md says why).
#[test]
fn a_guard_killed_from_outside_is_said_in_one_line() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (run, command) = run_sleeping(dir.path(), "10s", Stdio::piped());
    let guard = parent_of(command);
    assert_ne!(guard, pid_of(&run), "the command is the guard's child");
    kill_process(guard, Signal::KILL).expect("SIGKILL the guard");
    let out = output_within(run, Duration::from_secs(30));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(137), "{err}");
    assert_eq!(err.lines().count(), 1, "not one line: {err}");
    for says in ["guard was killed", "SIGTERM", "released"] {
        assert!(err.contains(says), "does not say {says:?}: {err}");
    }
    assert!(!running(command), "the command runs on");
    // The lock is free: the next `run` gets it at once.
    let next = fencelock(&file_url(&dir.path().join("locks")))
        .args(["run", "--no-wait", "k", "--", "true"])
        .output()
        .expect("next run");
    assert!(next.status.success(), "{}", String::from_utf8_lossy(&next.stderr));
}

/// Trial F6: at the guard's kill at the validity's end two near-identical lines were
/// printed, the guard's and `run`'s. With `run` stopped, the guard's line is there while
/// `run` is (that is what it is for), and `run`, continued, does not repeat it.
#[test]
fn a_guard_kill_under_a_stopped_run_is_said_once_while_it_is_stopped() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (mut run, command) = run_sleeping(dir.path(), "1s", Stdio::piped());
    let stderr = run.stderr.take().expect("stderr");
    let (tx, rx) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let run = common::Killed::new(run); // not left stopped if a step fails
    kill_process(run.pid(), Signal::STOP).expect("SIGSTOP");
    let first = rx.recv_timeout(Duration::from_secs(10));
    if first.is_ok() {
        // The guard writes its line, then kills.
        poll_until(Duration::from_secs(5), "the guard kills the command", || {
            !running(command)
        });
    }
    kill_process(run.pid(), Signal::CONT).expect("SIGCONT");
    let first = first.expect("no line while `run` was stopped");
    assert!(first.contains("stopped") && first.contains("`k`"), "{first}");
    let out = output_within(run.into_inner(), Duration::from_secs(20));
    reader.join().expect("reader");
    let mut lines = vec![first];
    lines.extend(rx.try_iter());
    assert_eq!(out.status.code(), Some(76), "{lines:?}");
    // `run` may add the backend's verdict on the lease ("lost while the command ran:
    // REASON"), which the guard could not know; not the kill again.
    let again: Vec<&String> = lines[1..].iter().filter(|l| l.contains("process group")).collect();
    assert!(again.is_empty(), "said more than once: {lines:?}");
    assert!(lines.len() <= 2, "{lines:?}");
}

/// Review of the guard's bounded write: `run` itself, continued after the guard's kill at
/// the validity's end, blocked on its own message to a stderr whose reader stalled (a FIFO
/// nobody reads, filled by the command) — the lock free, the command dead, `run` hung
/// until the reader drained. Its messages are bounded as the guard's are: it exits with
/// its documented status (76).
#[test]
fn run_continued_after_a_kill_at_the_validitys_end_exits_though_stderr_is_not_read() {
    let dir = tempfile::tempdir().expect("temp dir");
    let fifo = dir.path().join("stderr");
    let made = Command::new("mkfifo").arg(&fifo).status().expect("mkfifo");
    assert!(made.success());
    // Read and write: opens at once, and the test holds a reader that never reads.
    let stalled = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&fifo)
        .expect("open the FIFO");
    let capacity = rustix::pipe::fcntl_getpipe_size(&stalled).expect("pipe size");
    let dir_path = dir.path().to_path_buf();
    let started = dir_path.join("started");
    let script = format!(
        "head -c 1000000 /dev/zero >&2 & touch '{}'; exec sleep 30",
        started.display()
    );
    let run = run_on_files(
        &dir_path,
        "1s",
        &script,
        Stdio::from(stalled.try_clone().expect("clone")),
    );
    poll_until(Duration::from_secs(10), "the command started", || started.exists());
    poll_until(Duration::from_secs(10), "the command filled stderr", || {
        rustix::io::ioctl_fionread(&stalled).expect("FIONREAD") as usize >= capacity
    });
    let run = common::Killed::new(run); // not left stopped if a step fails
    kill_process(run.pid(), Signal::STOP).expect("SIGSTOP");
    // The guard kills the group a tenth of the 1 s validity early; the lease expires.
    let lock_dir = dir_path.join("locks");
    poll_until(Duration::from_secs(10), "the lock is free", || {
        fencelock(&file_url(&lock_dir))
            .args(["run", "--no-wait", "k", "--", "true"])
            .stderr(Stdio::null())
            .status()
            .expect("probe")
            .success()
    });
    kill_process(run.pid(), Signal::CONT).expect("SIGCONT");
    // Within 10 s of SIGCONT, or `run` waits on its stalled stderr.
    let out = output_within(run.into_inner(), Duration::from_secs(10));
    assert_eq!(out.status.code(), Some(76));
    drop(stalled);
}

/// `elect` speaks of the election and its term, not of the lease on its seat's key and a
/// token: a leader stopped past its validity is told "leadership of election `k` (term N)
/// lost …" (before: "lease on `election.k` (token N) lost …", the library's words for the
/// seat, which the user never named).
#[test]
fn a_leader_stopped_past_its_validity_is_told_of_its_election_and_term() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (mut elect, command) = sleeping_under("elect", dir.path(), "1s", Stdio::piped());
    let stderr = elect.stderr.take().expect("stderr");
    let (tx, rx) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    kill_process(pid_of(&elect), Signal::STOP).expect("SIGSTOP");
    let first = rx.recv_timeout(Duration::from_secs(10));
    if first.is_ok() {
        poll_until(Duration::from_secs(5), "the guard kills the command", || {
            !running(command)
        });
    }
    kill_process(pid_of(&elect), Signal::CONT).expect("SIGCONT");
    let first = first.expect("no line while `elect` was stopped");
    let out = output_within(elect, Duration::from_secs(20));
    reader.join().expect("reader");
    let mut lines = vec![first];
    lines.extend(rx.try_iter());
    let all = lines.join("\n");
    assert_eq!(out.status.code(), Some(76), "{all}");
    assert!(all.contains("leadership of election `k` (term "), "{all}");
    assert!(!all.contains("election.k") && !all.contains("token"), "{all}");
}

/// Review: a loss that came while the guard was between its last check and the start of
/// the command. `run` sent the group — the guard alone — SIGTERM; the guard caught it and
/// started the command anyway, which ran unsignalled until `--kill-after` (20 s here),
/// while `run` said "its process group was sent SIGTERM". The guard is held in that moment
/// (a test hook) until the signal comes; the loss is the grant removed from Redis. The
/// command, begun after the loss, is killed at once. (Before: `run` did not exit within
/// 10 s.)
#[test]
fn a_loss_as_the_guard_starts_the_command_kills_the_command_at_once() {
    let server = fencelock_testkit::redis_server::RedisServer::start();
    let dir = tempfile::tempdir().expect("temp dir");
    let log = dir.path().join("log");
    let run = fencelock(&server.url())
        .args(["run", "k", "--ttl", "3s", "--kill-after", "20s", "--", "sh", "-c"])
        .arg(r#"echo in >> "$LOG"; sleep 30; echo survived >> "$LOG""#)
        .env("LOG", &log)
        .env("FENCELOCK_TEST_HOLD_START_FOR_A_SIGNAL", "1")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn run");
    let run = common::Killed::new(run);
    let run_pid = run.pid();
    // Acquired once `run` started its guard, which then waits for a signal.
    poll_until(Duration::from_secs(10), "`run` starts its guard", || {
        !children_of(run_pid).is_empty()
    });
    let guard = children_of(run_pid)[0];
    struct KillGroup(Pid);
    impl Drop for KillGroup {
        fn drop(&mut self) {
            let _ = rustix::process::kill_process_group(self.0, Signal::KILL);
        }
    }
    let _cleanup = KillGroup(guard);
    let start = Instant::now();
    server.command("FLUSHALL"); // the grant is gone: the next renewal (1 s) finds it so
    let out = output_within(run.into_inner(), Duration::from_secs(10));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(76), "{err}");
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "took {:?}: {err}",
        start.elapsed()
    );
    assert!(err.contains("lost as the command started"), "{err}");
    assert!(err.contains("killed its process group at once"), "{err}");
    assert!(!log_of(&log).contains("survived"), "{}", log_of(&log));
}

/// A SIGTSTP ignored when `run` started stays ignored in its guard too (the convention
/// `run` follows itself, docs/cli.md "Signals"): before, the guard caught it regardless.
#[test]
fn a_sigtstp_ignored_at_start_stays_ignored_in_the_guard() {
    let dir = tempfile::tempdir().expect("temp dir");
    // The command prints its parent's (the guard's) caught and ignored signal masks.
    let out = Command::new("sh")
        .arg("-c")
        .arg(r#"trap '' TSTP; exec "$0" --backend "$1" run k -- sh -c 'grep -E "^Sig(Cgt|Ign):" /proc/$PPID/status'"#)
        .arg(BIN)
        .arg(file_url(dir.path()))
        .env_remove("FENCELOCK_BACKEND")
        .output()
        .expect("run");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text} {}", String::from_utf8_lossy(&out.stderr));
    let mask = |name: &str| {
        let line = text
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .unwrap_or_else(|| panic!("no {name} in {text}"));
        u64::from_str_radix(line.trim(), 16).expect("a hex mask")
    };
    let tstp = 1u64 << (Signal::TSTP.as_raw() - 1);
    assert_eq!(mask("SigCgt:") & tstp, 0, "the guard catches SIGTSTP: {text}");
    assert_ne!(mask("SigIgn:") & tstp, 0, "the guard does not ignore SIGTSTP: {text}");
}

/// A package upgrade while `run` waits replaces its binary: `current_exe()` then names
/// "…/fencelock (deleted)", and the guard could not be started once the lock was acquired
/// (70, "cannot start the guard"). The guard is started from this very executable.
#[test]
fn a_run_whose_binary_was_removed_while_it_waited_still_starts_its_command() {
    let dir = tempfile::tempdir().expect("temp dir");
    let bin = dir.path().join("fencelock");
    std::fs::copy(BIN, &bin).expect("copy the binary");
    let url = file_url(&dir.path().join("locks"));
    let holder = common::hold(fencelock(&url), &["run", "k"]);
    let spawn = || {
        Command::new(&bin)
            .args([
                "--backend",
                &url,
                "-v",
                "run",
                "k",
                "--wait",
                "60s",
                "--",
                "echo",
                "W ran",
            ])
            .env_remove("FENCELOCK_BACKEND")
            .env_remove("RUST_LOG")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
    };
    // ETXTBSY: another test's fork may hold the copy's write descriptor for a moment.
    let mut tries = 0;
    let mut waiter = loop {
        match spawn() {
            Ok(child) => break child,
            Err(e) if e.raw_os_error() == Some(rustix::io::Errno::TXTBSY.raw_os_error()) && tries < 100 => {
                tries += 1;
                std::thread::sleep(Duration::from_millis(10)); // a bounded retry
            }
            Err(e) => panic!("spawn the waiter: {e}"),
        }
    };
    let stderr = waiter.stderr.take().expect("stderr");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut lines = Vec::new();
    while !lines.iter().any(|l: &String| l.contains("acquiring")) {
        match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(line) => lines.push(line),
            Err(_) => panic!("the waiter never said it was acquiring: {lines:?}"),
        }
    }
    std::fs::remove_file(&bin).expect("remove the binary");
    common::end(holder);
    let out = output_within(waiter, Duration::from_secs(30));
    lines.extend(rx.try_iter());
    assert!(out.status.success(), "{:?}: {lines:?}", out.status);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "W ran", "{lines:?}");
}

/// A command stopped by the terminal — SIGTTIN, which the kernel sends its whole group
/// when it reads the terminal from a background job (sent here by the command to its
/// group) — stops alone: the guard catches it and goes on watching the deadline and
/// `run`. And a signal `run` forwards continues a stopped group, as a shell's `kill`
/// continues a stopped job, so the command acts on it. (Before: the guard stopped with
/// the command, and a forwarded SIGHUP waited in the stopped group for ever.)
#[test]
fn a_command_stopped_by_the_terminal_stops_alone_and_a_forwarded_signal_reaches_it() {
    let dir = tempfile::tempdir().expect("temp dir");
    let pid_file = dir.path().join("pid");
    let script = format!(
        "echo $$ > '{}.tmp'; mv '{0}.tmp' '{0}'; kill -TTIN 0; echo continued",
        pid_file.display()
    );
    let run = run_on_files(dir.path(), "30s", &script, Stdio::piped());
    let run = common::Killed::new(run);
    let run_pid = run.pid();
    poll_until(Duration::from_secs(10), "the command started", || pid_file.exists());
    let pid = std::fs::read_to_string(&pid_file).expect("the command's pid");
    let command = Pid::from_raw(pid.trim().parse().expect("a pid")).expect("a pid");
    let guard = parent_of(command);
    assert_ne!(guard, run_pid, "the command is the guard's child");
    poll_until(Duration::from_secs(10), "the command is stopped", || {
        common::state_of(command) == Some('T')
    });
    // The guard catches it: the kernel's stop cannot reach it.
    let status = std::fs::read_to_string(format!("/proc/{}/status", guard.as_raw_nonzero())).expect("status");
    let caught = status
        .lines()
        .find_map(|l| l.strip_prefix("SigCgt:"))
        .map(|m| u64::from_str_radix(m.trim(), 16).expect("a hex mask"))
        .expect("SigCgt");
    let ttin = 1u64 << (Signal::TTIN.as_raw() - 1);
    assert_ne!(caught & ttin, 0, "the guard does not catch SIGTTIN: {caught:x}");
    assert_ne!(common::state_of(guard), Some('T'), "the guard stopped with the command");
    // SIGHUP: forwarded only, no `--kill-after` SIGKILL follows it.
    kill_process(run_pid, Signal::HUP).expect("SIGHUP");
    let out = output_within(run.into_inner(), Duration::from_secs(10));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(129), "{err}");
}
