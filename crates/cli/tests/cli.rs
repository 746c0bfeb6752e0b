//! The `fencelock` command end to end, as separate processes on the file backend.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail by panicking

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

mod common;
use common::{
    assert_eight_processes_exclusive, assert_one_line, bare, lab, lab_report, lab_row, output_within, stderr_of,
};

fn fencelock(dir: &Path) -> std::process::Command {
    common::on_files(dir)
}

/// Runs the CLI with `args` and asserts it exits with `code`, saying `says` on one line
/// that starts with `fencelock: `, without a panic.
fn assert_fails_on_one_line(args: &[&str], code: i32, says: &str) {
    let out = bare().args(args).output().expect("run");
    assert_one_line(&out, code, says, &format!("{args:?}"));
}

#[test]
fn eight_processes_on_files_never_overlap_and_tokens_grow() {
    let dir = tempfile::tempdir().expect("temp dir");
    assert_eight_processes_exclusive(&format!("file://{}", dir.path().display()));
}

#[test]
fn eight_processes_on_redlock_never_overlap_and_tokens_grow() {
    let servers = fencelock_testkit::redis_server::start_many(5);
    assert_eight_processes_exclusive(&fencelock_testkit::redis_server::redlock_url(
        &servers,
        "per_node_timeout=100ms",
    ));
}

#[test]
fn eight_processes_on_zookeeper_never_overlap_and_tokens_grow() {
    let ensemble = fencelock_testkit::zk_server::ZkEnsemble::start(3);
    assert_eight_processes_exclusive(&ensemble.url("/cli", ""));
}

#[cfg(feature = "etcd")]
#[test]
fn eight_processes_on_etcd_never_overlap_and_tokens_grow() {
    let cluster = fencelock_testkit::etcd_server::EtcdCluster::start(3);
    assert_eight_processes_exclusive(&cluster.url(""));
}

#[test]
fn eight_processes_on_redis_never_overlap_and_tokens_grow() {
    let server = fencelock_testkit::redis_server::RedisServer::start();
    assert_eight_processes_exclusive(&server.url());
}

/// Holds `k` with a `fencelock run` whose command waits for stdin to close, and returns
/// once the command is running (it printed its token).
fn hold(dir: &Path, extra: &[&str]) -> (std::process::Child, String) {
    let run = [&["run", "k"][..], extra].concat();
    common::spawn_holder(fencelock(dir), &run, "echo $FENCELOCK_TOKEN; read _; echo done")
}

#[test]
fn a_held_lock_gives_status_75_after_the_wait() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (holder, token) = hold(dir.path(), &[]);
    assert!(token.parse::<u64>().is_ok(), "holder printed `{token}`");
    let start = Instant::now();
    let waiter = fencelock(dir.path())
        .args(["run", "k", "--wait", "200ms", "--", "true"])
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let out = output_within(waiter, Duration::from_secs(10));
    let took = start.elapsed();
    assert_eq!(out.status.code(), Some(75), "stderr: {}", stderr_of(&out));
    assert!(took < Duration::from_millis(1500), "took {took:?}");
    let err = stderr_of(&out);
    assert_eq!(err.lines().count(), 1, "not one line: {err}");
    assert!(err.contains("not acquired within"), "{err}");

    let no_wait = fencelock(dir.path())
        .args(["run", "k", "--no-wait", "--", "true"])
        .output()
        .expect("run");
    assert_eq!(no_wait.status.code(), Some(75));

    let mut holder = holder;
    drop(holder.stdin.take()); // the holder's command reads EOF and ends; it releases
    let out = output_within(holder, Duration::from_secs(10));
    assert!(out.status.success(), "holder: {}", stderr_of(&out));
}

#[test]
fn bad_backends_and_input_fail_on_one_line_without_panic() {
    // `--backend B run KEY FLAGS -- true`
    let run = |backend: &'static str, key: &'static str, flags: &[&'static str]| {
        [&["--backend", backend, "run", key][..], flags, &["--", "true"]].concat()
    };
    let twice = [&["--backend", "memory://"][..], &run("memory://", "k", &[])].concat();
    let cases = [
        (twice, 64, "this command takes one"), // a usage mistake (FINDINGS3 C2)
        (run("nope://x", "k", &[]), 78, "unknown backend scheme"),
        (run("file://relative", "k", &[]), 78, "absolute path"),
        (run("not a url", "k", &[]), 78, "not a backend URL"),
        (run("redis://127.0.0.1:1", "k", &[]), 69, "unreachable"),
        (run("redis://127.0.0.1:notaport", "k", &[]), 78, "invalid port number"),
        (run("memory://", "", &[]), 64, "key is empty"),
        (run("memory://", "k", &["--ttl", "0s"]), 64, "ttl"),
    ];
    for (args, code, says) in cases {
        assert_fails_on_one_line(&args, code, says);
    }
    let out = bare()
        .args(["run", "k", "--ttl", "5 parsecs", "--", "true"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(64), "a usage error is EX_USAGE, not clap's 2");
    assert!(stderr_of(&out).contains("unknown time unit"));
}

#[test]
fn the_commands_status_and_missing_commands_are_reported() {
    let dir = tempfile::tempdir().expect("temp dir");
    let out = fencelock(dir.path())
        .args(["run", "k", "--", "sh", "-c", "exit 7"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(7));
    let out = fencelock(dir.path())
        .args(["run", "k", "--", "sh", "-c", "kill -9 $$"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(128 + 9));
    let out = fencelock(dir.path())
        .args(["run", "k", "--", "/nonexistent/cmd"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(127), "{}", stderr_of(&out));
    // None of these left the lock held.
    let out = fencelock(dir.path())
        .args(["run", "k", "--no-wait", "--", "true"])
        .output()
        .expect("run");
    assert!(out.status.success(), "{}", stderr_of(&out));
}

#[test]
fn a_lost_lease_terminates_the_command_with_status_76() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (holder, _token) = hold(dir.path(), &["--ttl", "300ms"]);
    let holder = common::Killed::new(holder); // not left stopped if an assert fails
    let pid = holder.pid();
    // Freeze the fencelock process (not its command) so it cannot renew: the classic pause.
    rustix::process::kill_process(pid, rustix::process::Signal::STOP).expect("SIGSTOP");
    let other = fencelock(dir.path())
        .args(["run", "k", "--wait", "10s", "--", "true"])
        .output()
        .expect("run");
    assert!(
        other.status.success(),
        "another process could not take the expired lock: {}",
        stderr_of(&other)
    );
    rustix::process::kill_process(pid, rustix::process::Signal::CONT).expect("SIGCONT");
    let out = output_within(holder.into_inner(), Duration::from_secs(10));
    assert_eq!(out.status.code(), Some(76), "stderr: {}", stderr_of(&out));
    let err = stderr_of(&out);
    // The guard killed the group when the validity ended (fencelock itself was stopped).
    assert!(err.contains("lost") && err.contains("process group"), "{err}");
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("done"),
        "the command ran on after the loss"
    );
}

#[test]
fn backends_lists_what_is_compiled_in() {
    let out = bare().arg("backends").output().expect("run");
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("file:///") && text.contains("[compiled in]"), "{text}");
    assert!(text.contains("strictly monotonic"), "{text}");
}

#[test]
fn the_lab_runs_a_scenario_and_prints_its_timeline_and_table() {
    let dir = tempfile::tempdir().expect("temp dir");
    let report = dir.path().join("safety.md");
    let out = bare()
        .args(["--backend", "memory://lab-cli", "lab", "paused-holder", "--report"])
        .arg(&report)
        .output()
        .expect("run");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}\n{}", stderr_of(&out));
    assert!(
        text.contains("A writes to the resource with its old token 1: refused"),
        "{text}"
    );
    assert!(text.contains("ACCEPTED (stale)"), "{text}");
    let written = std::fs::read_to_string(&report).expect("report written");
    assert!(
        written.contains("| paused-holder | memory | 0 | 0 | 0 | 4 | 0 | 1 | 1 |"),
        "{written}"
    );
    let out = bare()
        .args(["--backend", "memory://", "lab", "no-such"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(64));
    assert!(stderr_of(&out).contains("unknown scenario"));
}

#[test]
fn the_lab_shows_which_backends_survive_a_restart_while_held() {
    let table = lab_report("restart-while-held");
    // The documented outcomes (docs/backends/*.md, docs/safety.md): a restart without
    // persistence lets a second holder in on Redis and on a Redlock bare quorum, with the
    // same token (refused by the fenced resource); persistence, the delayed restart and
    // consensus keep the lock exclusive.
    for row in [
        "| restart-while-held | redis | 1 | 0 | 1 | 0 | 0 | – | – |",
        "| restart-while-held | redis (appendfsync always) | 0 | 0 | 0 | 0 | 0 | – | – |",
        "| restart-while-held | redlock | 1 | 0 | 1 | 0 | 0 | – | – |",
        "| restart-while-held | redlock (restart_delay 3s) | 0 | 0 | 0 | 0 | 0 | – | – |",
        "| restart-while-held | zookeeper | 0 | 0 | 0 | 0 | 0 | – | – |",
    ] {
        assert!(table.contains(row), "missing `{row}` in:\n{table}");
    }
    #[cfg(feature = "etcd")]
    assert!(
        table.contains("| restart-while-held | etcd | 0 | 0 | 0 | 0 | 0 | – | – |"),
        "{table}"
    );
}

#[test]
fn the_lab_shows_consensus_staying_exclusive_through_a_fault_during_contention() {
    // `lab_report` asserts exit 0: the lab fails when a fault found no leader to kill, a
    // client hung, or a client got no grant after the fault — rows that show nothing.
    let table = lab_report("fault-during-contention");
    let row = |backend: &str| lab_row(&table, "fault-during-contention", backend);
    // Columns: scenario, backend, overlaps, regressions, reuse, late actions, stale (fenced).
    let safe = |backend: &str| {
        let r = row(backend);
        assert_eq!(&r[2..7], &["0", "0", "0", "0", "0"], "{backend}: {r:?}");
    };
    safe("redlock (2 of 5 killed)");
    safe("zookeeper (leader killed)");
    #[cfg(feature = "etcd")]
    safe("etcd (leader killed)");
    // Redis restarted empty hands out token 1 again: a reuse or a regression, every time;
    // the fenced resource refuses those writes.
    let r = row("redis (restarted empty)");
    let tokens_wrong: usize = r[3].parse::<usize>().unwrap() + r[4].parse::<usize>().unwrap();
    assert!(tokens_wrong >= 1, "{r:?}");
    assert_eq!(r[6], "0", "a fenced resource accepted a stale write: {r:?}");
}

#[test]
fn the_lab_shows_a_redis_failover_granting_the_lock_twice() {
    let text = lab(&["failover-before-replication", "--quiet"]);
    assert!(
        text.contains("| failover-before-replication | redis (primary + async replica) | 1 | 0 | 1 | 0 | 0 | – | – |"),
        "{text}"
    );
}

#[test]
fn the_lab_partitions_a_client_from_minorities_and_majorities() {
    let text = lab(&["client-partition"]);
    for row in [
        "| client-partition | redlock | 0 | 0 | 0 | 0 | 0 | – | – |",
        "| client-partition | zookeeper | 0 | 0 | 0 | 0 | 0 | – | – |",
    ] {
        assert!(text.contains(row), "missing `{row}` in:\n{text}");
    }
    #[cfg(feature = "etcd")]
    assert!(
        text.contains("| client-partition | etcd | 0 | 0 | 0 | 0 | 0 | – | – |"),
        "{text}"
    );
    // Redlock: available with a minority cut off, "no quorum" with a majority cut off,
    // available again once healed; never two holders.
    let redlock = text.split("== client-partition on redlock").nth(1).unwrap_or("");
    let redlock = redlock.split("== ").next().unwrap_or("");
    let phases: Vec<&str> = redlock.split("  A cut from").collect();
    assert!(phases.get(1).is_some_and(|p| p.contains("A acquired")), "{redlock}");
    assert!(
        phases
            .get(2)
            .is_some_and(|p| p.contains("no quorum for acquire: 2 of 5")),
        "{redlock}"
    );
    assert!(
        redlock
            .split("healed:")
            .nth(1)
            .is_some_and(|p| p.contains("A acquired")),
        "{redlock}"
    );
    assert!(!text.contains("B ALSO acquired"), "{text}");
}

#[test]
fn the_lab_shows_an_early_expiry_on_one_redlock_node_granting_twice() {
    let text = lab(&["clock-jump", "--quiet"]);
    assert!(
        text.contains("| clock-jump | redlock (node 0 expires early) | 1 | 0 | 0 | 0 | 0 | – | – |"),
        "{text}"
    );
}

#[cfg(feature = "bench")]
#[test]
fn bench_refuses_bad_choices_on_one_line() {
    for (args, says) in [
        (&["bench", "--only", "mysql"][..], "unknown backend `mysql`"),
        (
            &["--backend", "redis://127.0.0.1:1", "bench", "--only", "redis"][..],
            "--only",
        ),
        (&["--backend", "file:///tmp", "bench"][..], "cannot benchmark `file://`"),
        (&["--config", "/nonexistent.toml", "bench"][..], "not a --config file"),
        // Refused before measuring, never created (a newcomer found it made the directory
        // as root, and failed only after all the measuring as a normal user).
        (
            &[
                "bench",
                "--quick",
                "--only",
                "redis",
                "--write",
                "/nonexistent-dir/x.md",
            ][..],
            "the directory /nonexistent-dir does not exist",
        ),
    ] {
        assert_fails_on_one_line(args, 64, says);
    }
}

/// A report command whose reader closed the pipe (`fencelock backends | true`) ends quietly
/// with status 0; it panicked ("failed printing to stdout", exit 101) before. The read end
/// is closed right after the spawn, long before the process has printed anything.
#[test]
fn a_report_into_a_closed_pipe_ends_quietly() {
    let mut child = bare()
        .arg("backends")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    drop(child.stdout.take());
    let out = output_within(child, Duration::from_secs(30));
    assert_eq!(out.status.code(), Some(0), "stderr: {}", stderr_of(&out));
    assert!(!stderr_of(&out).contains("panicked"), "{}", stderr_of(&out));
}

/// `fencelock leader job | true`: the one-shot `leader` printed with `println!`, which
/// panicked on the closed pipe (exit 101) and skipped closing the client (a review). Now it
/// ends quietly, as a report does. The read end is closed right after the spawn.
#[test]
fn leader_into_a_closed_pipe_does_not_panic() {
    let dir = tempfile::tempdir().expect("temp dir");
    // Killed and reaped when the test ends, pass or fail.
    let _leader = common::Killed::new(
        fencelock(dir.path())
            .args(["elect", "job", "--value", "v", "--", "sleep", "60"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn elect"),
    );
    common::poll_until(Duration::from_secs(10), "`elect` leads", || {
        let out = fencelock(dir.path()).args(["leader", "job"]).output().expect("leader");
        out.status.success()
    });
    let mut child = fencelock(dir.path())
        .args(["leader", "job"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    drop(child.stdout.take());
    let out = output_within(child, Duration::from_secs(30));
    assert_ne!(out.status.code(), Some(101), "stderr: {}", stderr_of(&out));
    assert_eq!(out.status.code(), Some(0), "stderr: {}", stderr_of(&out));
    assert!(!stderr_of(&out).contains("panicked"), "{}", stderr_of(&out));
}
