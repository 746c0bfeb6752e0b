//! Every exit status of `fencelock` (the table in docs/cli.md), and every bad input with its
//! status and one-line message.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail by panicking

use std::path::Path;
use std::process::{Command, Output};

mod common;
use common::{assert_one_line, bare as fencelock, end, on_files, stderr_of, BIN};

/// Holds `k` in `dir` until the returned child's stdin is closed (see [`end`]).
fn hold(dir: &Path) -> std::process::Child {
    common::hold(on_files(dir), &["run", "k"])
}

/// Runs `cmd` to its end.
fn output_of(cmd: &mut Command) -> Output {
    cmd.output().expect("run")
}

/// `fencelock --backend backend run k FLAGS -- true`, run to its end.
fn run_k(backend: &str, flags: &[&str]) -> Output {
    fencelock()
        .args(["--backend", backend, "run", "k"])
        .args(flags)
        .args(["--", "true"])
        .output()
        .expect("run")
}

#[test]
fn bad_inputs_exit_64_or_78_on_one_line() {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = format!("file://{}", dir.path().display());
    let f = file.as_str();
    // `--backend B run KEY FLAGS -- true`
    let run = |backend: &'static str, key: &'static str, flags: &[&'static str]| {
        [&["--backend", backend, "run", key][..], flags, &["--", "true"]].concat()
    };
    let on_f = |key: &'static str, flags: &[&'static str]| {
        [&["--backend", f, "run", key][..], flags, &["--", "true"]].concat()
    };
    let cases: &[(Vec<&str>, i32, &str)] = &[
        // Durations (humantime): below the minimum, no unit, unknown unit, negative.
        (on_f("k", &["--ttl", "5µs"]), 64, "5us is below the minimum of 100ms"),
        (on_f("k", &["--ttl", "0"]), 64, "below the minimum of 100ms"),
        (
            on_f("k", &["--kill-after", "5µs"]),
            64,
            "5us is below the minimum of 1ms",
        ),
        (on_f("k", &["--wait", "30"]), 64, "not a duration"),
        (on_f("k", &["--ttl", "5 parsecs"]), 64, "unknown time unit"),
        (on_f("k", &["--kill-after", "-1s"]), 64, "durations cannot be negative"),
        (on_f("k", &["--kill-after", "1000days"]), 64, "above the maximum of 24h"),
        // Usage errors are EX_USAGE (64), on one line, not clap's 2.
        (vec!["run", "k"], 64, "required"),
        (vec!["run", "k", "--nope", "--", "true"], 64, "--nope"),
        (vec!["frobnicate"], 64, "frobnicate"),
        (on_f("k", &["--conflict-exit-code", "300"]), 64, "300"),
        (on_f("k", &["--no-wait", "--wait", "1s"]), 64, "cannot be used with"),
        // Keys.
        (on_f("", &[]), 64, "key is empty"),
        (on_f("a\nb", &[]), 64, "control character"),
        // An election's seat is not a lock to `run` under (a new-user trial took one).
        (on_f("election.sched", &[]), 64, "seat of the election `sched`"),
        // Backends and configuration: 78.
        (run("memory://", "k", &[]), 78, "cannot use memory://"),
        (vec!["--backend", "memory://", "demo"], 78, "cannot use memory://"),
        (run("nope://x", "k", &[]), 78, "unknown backend scheme"),
        (run("not a url", "k", &[]), 78, "not a backend URL"),
        (
            [&["--backend", f][..], &on_f("k", &[])].concat(),
            64, // a usage mistake (FINDINGS3 C2), like other flag mistakes
            "this command takes one",
        ),
        (
            [&["--backend", f, "--config", "/nonexistent.toml"][..], &run_tail("k")].concat(),
            78,
            "give one",
        ),
        (
            [&["--config", "/nonexistent.toml"][..], &run_tail("k")].concat(),
            78,
            "cannot read configuration",
        ),
    ];
    for (args, code, says) in cases {
        let out = fencelock().args(args).output().expect("run");
        assert_one_line(&out, *code, says, &format!("{args:?}"));
    }
}

/// `cmd` with `run k -- true`, run to its end.
fn run_true(cmd: &mut Command) -> Output {
    cmd.args(run_tail("k")).output().expect("run")
}

/// `run KEY -- true`
fn run_tail(key: &str) -> [&str; 4] {
    ["run", key, "--", "true"]
}

#[test]
fn a_config_file_refuses_bare_numbers_and_takes_humantime() {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = dir.path().join("lock.toml");
    let backend = format!("backend = \"file://{}\"\n", dir.path().display());
    std::fs::write(&config, format!("{backend}[defaults]\nttl = 5\n")).expect("write");
    let out = run_true(fencelock().arg("--config").arg(&config));
    assert_one_line(
        &out,
        78,
        "defaults.ttl = 5 has no unit: write it as text with one, e.g. \"5s\"",
        "bare ttl",
    );
    std::fs::write(
        &config,
        format!("{backend}[defaults]\nttl = \"1.5s\"\nwait = \"2m 30s\"\n"),
    )
    .expect("write");
    let out = run_true(fencelock().arg("--config").arg(&config));
    assert!(out.status.success(), "{}", stderr_of(&out));
}

#[test]
fn a_flag_or_a_config_file_wins_over_the_environment() {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = dir.path().join("lock.toml");
    std::fs::write(&config, format!("backend = \"file://{}\"\n", dir.path().display())).expect("write");
    // The environment names a backend that would fail (memory:// is refused by run).
    let out = run_true(
        fencelock()
            .env("FENCELOCK_BACKEND", "memory://")
            .arg("--config")
            .arg(&config),
    );
    assert!(
        out.status.success(),
        "--config lost to FENCELOCK_BACKEND: {}",
        stderr_of(&out)
    );
    let out = fencelock()
        .env("FENCELOCK_BACKEND", "memory://")
        .arg("--backend")
        .arg(format!("file://{}", dir.path().display()))
        .args(["run", "k", "--", "true"])
        .output()
        .expect("run");
    assert!(
        out.status.success(),
        "--backend lost to FENCELOCK_BACKEND: {}",
        stderr_of(&out)
    );
    // Alone, the environment is used.
    let out = run_true(fencelock().env("FENCELOCK_BACKEND", "memory://"));
    assert_one_line(&out, 78, "cannot use memory://", "FENCELOCK_BACKEND alone");
}

#[test]
fn help_and_version_exit_0_and_help_lists_what_it_should() {
    for args in [&["--help"][..], &["--version"], &["run", "--help"], &["lab", "--help"]] {
        let out = fencelock().args(args).output().expect("run");
        assert_eq!(out.status.code(), Some(0), "{args:?}");
    }
    let help = fencelock().arg("--help").output().expect("run");
    let text = String::from_utf8_lossy(&help.stdout);
    assert!(
        text.contains("FENCELOCK_GRANT") && text.contains("FENCELOCK_TOKEN"),
        "{text}"
    );
    let lab = fencelock().args(["lab", "--help"]).output().expect("run");
    let text = String::from_utf8_lossy(&lab.stdout);
    for scenario in [
        "paused-holder",
        "restart-while-held",
        "fault-during-contention",
        "client-partition",
        "failover-before-replication",
        "clock-jump",
    ] {
        assert!(text.contains(scenario), "lab --help misses {scenario}: {text}");
    }
    // No subcommand: the help, on stderr, as a usage error.
    let out = fencelock().output().expect("run");
    assert_eq!(out.status.code(), Some(64));
}

#[test]
fn every_exit_status_of_run() {
    let dir = tempfile::tempdir().expect("temp dir");
    let d = dir.path();
    // 0 and the command's own status.
    assert_eq!(run_k(&common::file_url(d), &[]).status.code(), Some(0));
    let own = on_files(d)
        .args(["run", "k", "--", "sh", "-c", "exit 75"])
        .status()
        .expect("run");
    assert_eq!(own.code(), Some(75), "the command's own 75");
    // 128 + N: the command was ended by signal N.
    let killed = on_files(d)
        .args(["run", "k", "--", "sh", "-c", "kill -9 $$"])
        .status()
        .expect("run");
    assert_eq!(killed.code(), Some(128 + 9));
    // 127 and 126.
    let out = output_of(on_files(d).args(["run", "k", "--", "/nonexistent/cmd"]));
    assert_one_line(&out, 127, "cannot run `/nonexistent/cmd`", "not found");
    let out = on_files(d).args(["run", "k", "--"]).arg(d).output().expect("run");
    assert_one_line(&out, 126, "cannot run", "not executable");
    // 75 (not acquired), and remapped by --conflict-exit-code.
    let holder = hold(d);
    let out = run_k(&common::file_url(d), &["--no-wait"]);
    assert_one_line(&out, 75, "held by someone else; not waiting", "--no-wait");
    let out = run_k(&common::file_url(d), &["--wait", "0"]);
    assert_one_line(&out, 75, "held by someone else", "--wait 0");
    let out = run_k(&common::file_url(d), &["--wait", "50ms"]);
    // The --wait asked, as written back by the command line (the trial saw `--wait 2.35s`
    // reported as "within 2.4s": the time waited, rounded).
    assert_one_line(&out, 75, "not acquired within 50ms (", "--wait 50ms");
    let out = run_k(&common::file_url(d), &["--no-wait", "--conflict-exit-code", "3"]);
    assert_one_line(&out, 3, "held by someone else", "--conflict-exit-code");
    end(holder);
    // 69: the backend cannot be reached.
    let out = run_k("redis://127.0.0.1:1", &[]);
    assert_one_line(&out, 69, "unreachable", "unreachable");
    // 70: the backend failed (a corrupt state file).
    std::fs::write(d.join("k-corrupt.state"), "not json").expect("write");
    let out = output_of(on_files(d).args(["run", "corrupt", "--", "true"]));
    assert_eq!(out.status.code(), Some(70), "corrupt state: {}", stderr_of(&out));
}

/// A loss the backend reports while the command runs (its grant is gone: here removed
/// as an operator would) is said in one line, with the backend's reason and what `run`
/// did (new-user trial: a second line, "exiting: the lease was lost", followed it).
#[test]
fn a_loss_the_backend_reports_is_said_in_one_line() {
    let dir = tempfile::tempdir().expect("temp dir");
    let run = ["run", "k", "--ttl", "1s"];
    let (holder, _in) = common::spawn_holder(on_files(dir.path()), &run, "echo in; sleep 30");
    // The grant's files removed: the next renewal finds it gone.
    let removed = fencelock::file::FileLock::open(dir.path())
        .expect("open the directory")
        .remove_grant("k")
        .expect("remove the grant");
    assert!(removed > 0, "no grant of k to remove");
    let out = holder.wait_with_output().expect("wait");
    let err = stderr_of(&out);
    assert_eq!(out.status.code(), Some(76), "{err}");
    let lines: Vec<&str> = err.lines().filter(|l| l.starts_with("fencelock:")).collect();
    assert_eq!(lines.len(), 1, "{err}");
    assert!(lines[0].contains("lost while the command ran"), "{err}");
}

#[test]
fn a_lost_lease_exits_76_or_the_lost_exit_code() {
    let dir = tempfile::tempdir().expect("temp dir");
    for (extra, code) in [(&[][..], 76), (&["--lost-exit-code", "9"][..], 9)] {
        paused_holder_is_told_once(&common::file_url(dir.path()), "300ms", extra, code);
    }
}

/// The same on ZooKeeper, whose session expires on the server while the holder is
/// stopped: the loss is said once, and the release that follows the SIGCONT says the
/// session ended — not "zookeeper unreachable … the TTL will free the lock", which a
/// new-user trial read after a SIGSTOP with the server up all along.
#[test]
fn a_paused_holder_on_zookeeper_is_told_once_and_not_sent_to_a_network_fault() {
    let zk = fencelock_testkit::zk_server::ZkEnsemble::standalone();
    let url = zk.url("", "session_timeout=2s&timeout=1s");
    paused_holder_is_told_once(&url, "1s", &[], 76);
}

/// The same on one Redis server (the grant's key expires while the holder is stopped).
#[test]
fn a_paused_holder_on_redis_is_told_once() {
    let server = fencelock_testkit::redis_server::RedisServer::start();
    paused_holder_is_told_once(&server.url(), "300ms", &[], 76);
}

/// A `run k --ttl TTL EXTRA…` holder on `backend` is stopped (SIGSTOP) until another
/// `run` got `k`, then continued: it exits `code`, says the loss once with its reason,
/// and sends nobody after a network fault or an unreleased lock that are not there.
fn paused_holder_is_told_once(backend: &str, ttl: &str, extra: &[&str], code: i32) {
    let run = [&["run", "k", "--ttl", ttl][..], extra].concat();
    let (holder, _in) = common::spawn_holder(common::fencelock(backend), &run, "echo in; sleep 30");
    let holder = common::Killed::new(holder); // not left stopped if an assert fails
    let pid = holder.pid();
    rustix::process::kill_process(pid, rustix::process::Signal::STOP).expect("SIGSTOP");
    let other = run_k(backend, &["--wait", "20s"]);
    assert!(other.status.success(), "{}", stderr_of(&other));
    rustix::process::kill_process(pid, rustix::process::Signal::CONT).expect("SIGCONT");
    let out = common::output_within(holder.into_inner(), std::time::Duration::from_secs(40));
    let err = stderr_of(&out);
    assert_eq!(out.status.code(), Some(code), "{backend}: {err}");
    // The loss is said once, with its reason: the lease's own "lease lost" WARN, which
    // repeated the reason, is the command's twin (a trial counted it twice), and `run`
    // says nothing more after the guard said it (a trial read two lines as two losses).
    let losses: Vec<&str> = err.lines().filter(|l| l.contains(" lost ")).collect();
    assert_eq!(
        losses.len(),
        1,
        "{backend}: one loss, said in more than one line: {err}"
    );
    let reason = losses[0]
        .split_once("is stopped: ")
        .or_else(|| losses[0].split_once("lost while the command ran: "))
        .and_then(|(_, rest)| rest.split_once("; "))
        .map(|(reason, _)| reason)
        .unwrap_or_else(|| panic!("{backend}: no loss line with a reason: {err}"));
    assert!(!reason.is_empty(), "{err}");
    for misleading in ["unreachable", "will free the lock"] {
        assert!(
            !err.contains(misleading),
            "{backend}: `{misleading}` with the server up: {err}"
        );
    }
}

/// `fencelock __guard 0 --report-fd 1 -- CMD…` with `deadline_in` (from now; `None`: a
/// deadline long past) on its control pipe (stdin), run to its end; its stdout is the
/// report pipe `run` reads. In a process group of its own, as `run` starts it: the guard
/// signals its whole group when the command has ended.
fn guard_with_deadline(deadline_in: Option<std::time::Duration>, cmd: &[&str]) -> Output {
    use std::io::Write;
    use std::os::unix::process::CommandExt;
    let mut guard = Command::new(BIN)
        .args(["__guard", "0", "--report-fd", "1", "--"])
        .args(cmd)
        .process_group(0)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn the guard");
    let until = deadline_in.map_or(1, |d| {
        let now = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
        now.tv_sec as u128 * 1_000_000_000 + now.tv_nsec as u128 + d.as_nanos()
    });
    let mut control = guard.stdin.take().expect("control pipe");
    control
        .write_all(format!("until {until}\n").as_bytes())
        .expect("deadline");
    // Kept open until the guard ends: its end-of-file would mean `run` is gone.
    let out = common::output_within(guard, std::time::Duration::from_secs(30));
    drop(control);
    out
}

/// A command that never started was reported as one that ran: the guard exited 76 when
/// the lease's validity had ended before it could start the command, and `run` took any
/// status of the guard for the command's (76 "lost while the command ran", or "finished,
/// but not entirely under the lock" when the loss came as the spawn failed). The guard
/// now exits 75 (not acquired) for the first, and says on its report pipe when it has
/// started the command, so `run` knows whose status it has.
#[test]
fn a_command_that_never_started_is_not_reported_as_having_run() {
    let dir = tempfile::tempdir().expect("temp dir");
    let ran = dir.path().join("ran");
    let touch = ["touch", ran.to_str().expect("utf-8 path")];
    let out = guard_with_deadline(None, &touch);
    assert_one_line(
        &out,
        75,
        "before the command could start; not starting it",
        "deadline past",
    );
    assert!(!ran.exists(), "the command ran");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "", "reported as started");
    let out = guard_with_deadline(Some(std::time::Duration::from_secs(30)), &["/nonexistent/cmd"]);
    assert_one_line(&out, 127, "cannot run `/nonexistent/cmd`", "spawn failed");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "", "reported as started");
    let out = guard_with_deadline(Some(std::time::Duration::from_secs(30)), &touch);
    assert_eq!(out.status.code(), Some(0), "{}", stderr_of(&out));
    assert!(ran.exists(), "the command did not run");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "started\nended 0\n");
}

#[test]
fn log_lines_carry_no_colour_off_a_terminal() {
    let dir = tempfile::tempdir().expect("temp dir");
    let out = output_of(on_files(dir.path()).args(["-v", "run", "k", "--", "true"]));
    let err = stderr_of(&out);
    assert!(err.contains("acquiring"), "no log line: {err}");
    assert!(!err.contains('\u{1b}'), "ANSI escape in piped stderr: {err:?}");
}

/// Runs `fencelock -v run` on a pseudo-terminal (`script(1)`), returns what it printed.
fn on_a_terminal(dir: &Path, no_color: Option<&str>) -> String {
    let line = format!("{BIN} --backend file://{} -v run k -- true", dir.display());
    let mut cmd = Command::new("script");
    cmd.args(["-qec", &line, "/dev/null"])
        .env_remove("FENCELOCK_BACKEND")
        .env_remove("RUST_LOG");
    match no_color {
        Some(v) => cmd.env("NO_COLOR", v),
        None => cmd.env_remove("NO_COLOR"),
    };
    let out = cmd.output().expect("script(1)");
    assert!(out.status.success(), "{}", stderr_of(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn log_lines_are_coloured_on_a_terminal_unless_no_color_is_set() {
    let dir = tempfile::tempdir().expect("temp dir");
    let tty = on_a_terminal(dir.path(), None);
    assert!(
        tty.contains("acquiring") && tty.contains('\u{1b}'),
        "no colour on a terminal: {tty:?}"
    );
    let plain = on_a_terminal(dir.path(), Some("1"));
    assert!(
        plain.contains("acquiring") && !plain.contains('\u{1b}'),
        "colour despite NO_COLOR: {plain:?}"
    );
}

/// Backend URLs: one parser (fencelock-core's `backend_url`) for every server backend.
/// Each bad URL exits 78 with one line that names what is wrong, and never shows the
/// password, whatever characters it holds.
#[test]
fn bad_backend_urls_exit_78_on_one_line_without_the_password() {
    let cases: &[(&str, &str)] = &[
        (
            "redis://127.0.0.1:notaport",
            "bad host `127.0.0.1:notaport`: invalid port number",
        ),
        ("redis://127.0.0.1:70000", "invalid port number"),
        ("redis://[::1:6379", "bad host"),
        ("redis://127.0.0.1:1/x", "the DB index `x` is not a number"),
        ("redis://127.0.0.1:1?tiemout=1s", "unknown option `tiemout`"),
        ("redis://127.0.0.1:1,127.0.0.1:2", "several hosts: use redlock://"),
        // A password with `/`, `?` or `#` written as it is: ambiguous, refused with how to
        // encode it, and hidden in the message.
        ("redis://:Se/CRET@127.0.0.1:1", "percent-encode"),
        ("redis://:Se?CRET@127.0.0.1:1", "percent-encode"),
        ("redis://:Se#CRET@127.0.0.1:1", "%23"),
        ("redlock://:Se/CRET@127.0.0.1:1,127.0.0.1:2", "percent-encode"),
        ("redlock://127.0.0.1:1,,127.0.0.1:2", "empty host"),
        ("zk://127.0.0.1:1?ttl=1s", "unknown option `ttl`"),
        ("zk://u:SeCRET@127.0.0.1:1", "authentication is not supported"),
        ("postgres://u:Se/CRET@127.0.0.1/db", "percent-encode"),
        ("postgres://u:SeCRET@127.0.0.1:x/db", "invalid port number"),
        ("nope://u:SeCRET@h:1", "unknown backend scheme"),
    ];
    for (url, says) in cases {
        let out = run_k(url, &[]);
        assert_one_line(&out, 78, says, url);
        let err = stderr_of(&out);
        assert!(!err.contains("CRET"), "{url}: the password shows: {err}");
    }
}

/// A password holding every URL delimiter, percent-encoded where RFC 3986 says, reaches
/// the server decoded; a wrong one is exit 78 without the password in the message.
#[test]
fn passwords_with_url_characters_reach_the_server_and_never_show() {
    let password = "p@ss/w?r#d:1";
    let server =
        fencelock_testkit::redis_server::RedisServer::start_with(fencelock_testkit::redis_server::RedisOptions {
            password: Some(password.into()),
            ..Default::default()
        });
    let url = format!("redis://:p@ss%2Fw%3Fr%23d:1@127.0.0.1:{}", server.port());
    let out = run_k(&url, &[]);
    assert!(out.status.success(), "{}", stderr_of(&out));
    let wrong = format!("redis://:p@ss%2Fw%3Fr%23d:2@127.0.0.1:{}", server.port());
    let out = run_k(&wrong, &[]);
    assert_one_line(&out, 78, "redis refused the credentials", "wrong password");
    let err = stderr_of(&out);
    assert!(
        !err.contains("p@ss") && !err.contains("%2F") && !err.contains("r#d"),
        "the password shows: {err}"
    );
    assert!(err.contains(":***@127.0.0.1:"), "{err}");
    // No password at all for a server that needs one: the same 78 at once (it was a panic
    // inside the client, then 69 "unreachable" or a wait for the whole --wait).
    let none = format!("redis://127.0.0.1:{}", server.port());
    let out = run_k(&none, &["--wait", "20s"]);
    assert_one_line(&out, 78, "redis refused the credentials", "no password");
    assert!(!stderr_of(&out).contains("panicked"), "{}", stderr_of(&out));
}

/// A DB index the server does not have is a configuration error (78), not a backend
/// failure (70); an IPv6 host and a port left out are named in the message.
#[test]
fn redis_db_index_ipv6_and_default_port_in_messages() {
    let server = fencelock_testkit::redis_server::RedisServer::start();
    let url = format!("redis://127.0.0.1:{}/99", server.port());
    let out = run_k(&url, &[]);
    assert_one_line(&out, 78, "refused DB index 99", "DB 99");
    let url = format!("redis://127.0.0.1:{}/15", server.port());
    let out = run_k(&url, &[]);
    assert!(out.status.success(), "DB 15: {}", stderr_of(&out));
    // IPv6 in brackets: parsed and named (nothing listens there: unreachable, 69).
    let out = run_k("redis://[::1]:1?connect_timeout=200ms", &[]);
    assert_one_line(&out, 69, "redis://[::1]:1", "IPv6");
    // No port means 6379 and messages say "(default port)": checked by the redis config's
    // unit test (`ipv6_default_port_and_db`), not here — a test must not assume 6379 is
    // free or ours.
}

/// `rediss://` to a plaintext server: with TLS compiled in (`redis-tls`), the message says
/// the server did not answer the TLS handshake and suggests redis://; without it, rediss://
/// is refused up front (78) naming the feature.
#[test]
fn rediss_to_a_plaintext_server_hints_at_tls() {
    let server = fencelock_testkit::redis_server::RedisServer::start();
    let url = format!(
        "rediss://127.0.0.1:{}?connect_timeout=300ms&timeout=300ms",
        server.port()
    );
    let out = run_k(&url, &[]);
    if cfg!(feature = "redis-tls") {
        assert_one_line(
            &out,
            69,
            "did not answer the TLS handshake: is it plaintext? then use redis://",
            "rediss",
        );
    } else {
        assert_one_line(&out, 78, "enable the Cargo feature `redis-tls`", "rediss");
    }
}

/// A file-backend directory others may write to is refused: 78, naming the directory.
/// `redis://` pointed at a server that is not Redis (here one that answers HTTP, as a
/// health endpoint on the wrong port would): a configuration error (78) that says so, not
/// the client's parse error as a backend failure (70). Found by a newcomer pass.
#[test]
fn redis_pointed_at_another_protocol_exits_78_and_says_so() {
    let port = fencelock_testkit::ports::http_port();
    let url = format!("redis://127.0.0.1:{port}?connect_timeout=1s&timeout=1s");
    let out = run_k(&url, &[]);
    assert_one_line(&out, 78, "does not answer in the Redis protocol", "an HTTP server");
}

/// `postgres://` pointed at a MySQL server (it greets first; the client reads the
/// greeting as a message tag it does not know): a configuration error (78) naming the
/// host and port, not "unreachable" (69, at once, before: a script would retry a URL
/// that can never work). Found by a new-user trial.
#[test]
fn postgres_pointed_at_a_mysql_server_exits_78_and_says_so() {
    let port = fencelock_testkit::ports::mysql_port();
    let url = format!("postgres://app@127.0.0.1:{port}/db?sslmode=disable&connect_timeout=1s&timeout=1s");
    let out = run_k(&url, &[]);
    assert_one_line(&out, 78, "does not answer in the PostgreSQL protocol", "a MySQL server");
    assert!(
        stderr_of(&out).contains(&format!("postgres://app@127.0.0.1:{port}/db")),
        "{}",
        stderr_of(&out)
    );
}

#[test]
fn a_lock_directory_that_is_not_private_exits_78() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("temp dir");
    for mode in [0o777, 0o770, 0o755 | 0o020] {
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(mode)).expect("chmod");
        let out = run_k(&common::file_url(dir.path()), &[]);
        assert_one_line(
            &out,
            78,
            &format!("refusing lock directory {}", dir.path().display()),
            &format!("mode {mode:o}"),
        );
    }
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).expect("chmod");
    let out = run_k(&common::file_url(dir.path()), &[]);
    assert!(out.status.success(), "0700: {}", stderr_of(&out));
}

/// etcd credentials that cannot work are a configuration error (78) on one line, each
/// with what to change: a user or password for a server with authentication disabled
/// (it was 70, "not in a state required"), and, once authentication is on, a wrong
/// password or none at all (70 before: etcd answers both with InvalidArgument).
#[cfg(feature = "etcd")]
#[test]
fn etcd_credentials_that_cannot_work_exit_78() {
    use fencelock_testkit::process::http;
    let cluster = fencelock_testkit::etcd_server::EtcdCluster::single();
    let port = cluster.client_ports()[0];
    let run = |url: &str| run_k(url, &[]);
    for url in [
        format!("etcd://root:secret@127.0.0.1:{port}"),
        format!("etcd://127.0.0.1:{port}?user=root&password=secret"),
    ] {
        let out = run(&url);
        assert_one_line(&out, 78, "authentication disabled", &url);
        assert!(!stderr_of(&out).contains("secret"), "{}", stderr_of(&out));
    }
    // Authentication on (etcd's JSON gateway: root user with the root role, then enable).
    for (path, body) in [
        ("/v3/auth/user/add", r#"{"name":"root","password":"pw"}"#),
        ("/v3/auth/role/add", r#"{"name":"root"}"#),
        ("/v3/auth/user/grant", r#"{"user":"root","role":"root"}"#),
        ("/v3/auth/enable", "{}"),
    ] {
        assert!(http(port, "POST", path, body).is_some(), "{path} failed");
    }
    let out = run(&format!("etcd://root:pw@127.0.0.1:{port}"));
    assert!(out.status.success(), "right password: {}", stderr_of(&out));
    let out = run(&format!("etcd://root:wrong@127.0.0.1:{port}"));
    assert_one_line(&out, 78, "etcd refused the user or password", "wrong password");
    assert!(!stderr_of(&out).contains("wrong"), "{}", stderr_of(&out));
    let out = run(&format!("etcd://127.0.0.1:{port}"));
    assert_one_line(&out, 78, "requires a user", "no credentials");
}

/// An etcd URL naming a member and, beside it, a port that speaks another protocol (an
/// HTTP/1 server) is a configuration error (78) naming that endpoint — not a run through
/// the member with the wrong endpoint kept as a failing one (it exited 0 before).
#[cfg(feature = "etcd")]
#[test]
fn etcd_an_endpoint_speaking_another_protocol_beside_a_member_exits_78() {
    let cluster = fencelock_testkit::etcd_server::EtcdCluster::single();
    let member = cluster.client_ports()[0];
    let other = fencelock_testkit::ports::http_port();
    let out = run_k(&format!("etcd://127.0.0.1:{member},127.0.0.1:{other}"), &[]);
    assert_one_line(
        &out,
        78,
        &format!("127.0.0.1:{other} does not speak etcd's gRPC"),
        "HTTP/1 beside a member",
    );
}

/// A ZooKeeper URL whose one server refuses the connection (nothing listens on the port)
/// is unavailable (69) at once, as on Redis and etcd; it took the whole connect limit
/// (4 s with the default timeouts) before.
#[test]
fn zookeeper_refused_at_connect_exits_69_at_once() {
    let closed = fencelock_testkit::ports::closed_port(); // refuses while held
    let port = closed.port();
    let start = std::time::Instant::now();
    let out = run_k(&format!("zk://127.0.0.1:{port}"), &[]);
    let took = start.elapsed();
    assert_one_line(&out, 69, "refused the connection", "zk refused");
    assert!(took < std::time::Duration::from_millis(1500), "took {took:?}");
}

/// A negative duration says so (it was "unexpected argument '-5' found" for `--ttl -5s`,
/// and "expected number at 0" for `--ttl=-5s`); a TOML syntax error in --config prints
/// its message once, with where (it printed it twice, around a flattened excerpt).
#[test]
fn negative_durations_and_toml_errors_are_one_clear_line() {
    let dir = tempfile::tempdir().expect("temp dir");
    for args in [
        &["run", "--ttl", "-5s", "k", "--", "true"][..],
        &["run", "--ttl=-5s", "k", "--", "true"],
        &["run", "--wait", "-1s", "k", "--", "true"],
        &["run", "--kill-after", "-2s", "k", "--", "true"],
    ] {
        let out = on_files(dir.path()).args(args).output().expect("run");
        assert_one_line(&out, 64, "durations cannot be negative", &format!("{args:?}"));
    }
    let config = dir.path().join("bad.toml");
    std::fs::write(
        &config,
        format!("backend = \"file://{}\"\n[defaults\n", dir.path().display()),
    )
    .expect("write config");
    let out = run_true(fencelock().arg("--config").arg(&config));
    assert_one_line(&out, 78, "at line 2, column 10: unclosed table", "TOML syntax");
    assert_eq!(
        stderr_of(&out).matches("unclosed table").count(),
        1,
        "{}",
        stderr_of(&out)
    );
}

/// A command that went well prints nothing of its own on stderr, on etcd too: closing the
/// session at exit, with no lease held, is no loss to warn about. (Every etcd `run`, `elect`
/// and `leader` printed `WARN session lost … the client closed its session`.)
#[cfg(feature = "etcd")]
#[test]
fn a_clean_etcd_run_elect_and_leader_print_no_warning() {
    let cluster = fencelock_testkit::etcd_server::EtcdCluster::single();
    let url = cluster.url("");
    for args in [
        vec!["run", "quiet", "--", "true"],
        vec!["elect", "quiet", "--", "true"],
        vec!["leader", "quiet"],
    ] {
        let out = fencelock().arg("--backend").arg(&url).args(&args).output().unwrap();
        let err = stderr_of(&out);
        assert!(!err.contains("WARN"), "{args:?} warned on a clean exit: {err}");
        assert!(out.status.code() == Some(0) || args[0] == "leader", "{args:?}: {err}");
    }
}

// A review (D3): `--wait` running out while the server was down exited 75 "held by
// someone else", so a script that retries on 69 (unavailable) gave up. W is in line
// behind H when the server dies; the last W heard is no answer, which is 69. Failed on
// ZooKeeper before the fix.
#[test]
fn a_wait_that_runs_out_while_the_server_is_down_exits_69_not_75() {
    let mut redis = fencelock_testkit::redis_server::RedisServer::start();
    let url = redis.url();
    let (holder, waiter) =
        in_line_behind_a_holder(&url, &|| redis.integer("LLEN fencelock:{k}:queue").unwrap_or(0) >= 1);
    redis.kill();
    assert_unavailable(&waited_out(holder, waiter), "redis");

    let mut zk = fencelock_testkit::zk_server::ZkEnsemble::standalone();
    let url = zk.url("/d3", "session_timeout=2s&timeout=500ms&connect_timeout=300ms");
    let (holder, waiter) = in_line_behind_a_holder(&url, &common::count_grew(|| zk.watch_count(0)));
    zk.kill(0);
    assert_unavailable(&waited_out(holder, waiter), "zookeeper");
}

/// H holds `k` on `url`; W (`run k --wait 3s -- true`) is started once `in_line` has been
/// asked a first time (a [`common::count_grew`] notes its base then), and returned once
/// `in_line` says W waits in line.
fn in_line_behind_a_holder(url: &str, in_line: &dyn Fn() -> bool) -> (std::process::Child, std::process::Child) {
    let (holder, waiter, _) = waiting_behind_a_holder(url, "3s", in_line);
    (holder, waiter)
}

/// [`in_line_behind_a_holder`] with W's `--wait`; also the instant W was started.
fn waiting_behind_a_holder(
    url: &str,
    wait: &str,
    in_line: &dyn Fn() -> bool,
) -> (std::process::Child, std::process::Child, std::time::Instant) {
    let holder = common::hold(common::fencelock(url), &["run", "k"]);
    in_line();
    let started = std::time::Instant::now();
    let waiter = common::fencelock(url)
        .args(["run", "k", "--wait", wait, "--", "true"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn waiter");
    common::poll_until(std::time::Duration::from_secs(20), "W is in line", in_line);
    (holder, waiter, started)
}

// helper-73's trial: a server that stops answering in the last stretch of a `--wait`,
// after the wait's last check answered "held", exited 75 "held by someone else" right
// after a warning that the backend was unavailable (its close could not remove W's queue
// entry). The close's failure is the later word: 69. Failed before: 75.
#[test]
fn a_server_that_hangs_after_the_last_check_exits_69_not_75() {
    let redis = fencelock_testkit::redis_server::RedisServer::start();
    let url = redis.url();
    let (holder, waiter, started) = waiting_behind_a_holder(&url, "4s", &|| {
        redis.integer("LLEN fencelock:{k}:queue").unwrap_or(0) >= 1
    });
    // The fault's moment, not a synchronisation: W's last check is 1.25 s (the default
    // `timeout` of 1 s, and a quarter) before the end of its 4 s wait, at 2.75 s; the
    // server hangs after it and before the end.
    std::thread::sleep(std::time::Duration::from_millis(3300).saturating_sub(started.elapsed()));
    redis.pause();
    let out = waited_out(holder, waiter);
    redis.resume();
    assert_unavailable(&out, "redis");
}

/// W exited 69 saying the backend is unavailable (a warning that its close was not
/// confirmed may come before: the server is gone), never that `k` is held.
fn assert_unavailable(out: &Output, backend: &str) {
    let err = stderr_of(out);
    assert_eq!(out.status.code(), Some(69), "{backend}: {err}");
    assert!(err.contains("fencelock: backend unavailable"), "{backend}: {err}");
    assert!(!err.contains("held by someone else"), "{backend}: {err}");
}

/// W's output once it gave up; H, whose lock went with the server, is killed.
fn waited_out(mut holder: std::process::Child, waiter: std::process::Child) -> Output {
    let out = common::output_within(waiter, std::time::Duration::from_secs(20));
    let _ = holder.kill();
    let _ = holder.wait();
    out
}

// helper-74's review: Redlock with 1 of 3 nodes down (a quorum answers; a free key is
// acquired and run exits 0): a key held by another exited 69 "it stopped answering after
// it last said `k` was held", because the down node's background release of the busy
// round made the close fail. A close that leaves releases on a minority is no failure: 75.
#[test]
fn on_redlock_a_held_key_with_a_node_down_exits_75_not_69() {
    let mut servers = fencelock_testkit::redis_server::start_many(3);
    servers[2].kill();
    let url = fencelock_testkit::redis_server::redlock_url(&servers, "");
    let holder = common::hold(common::fencelock(&url), &["run", "k"]);
    let free = common::fencelock(&url)
        .args(["run", "free", "--wait", "2s", "--", "true"])
        .output()
        .expect("run");
    assert_eq!(free.status.code(), Some(0), "{}", common::stderr_of(&free));
    let out = common::fencelock(&url)
        .args(["run", "k", "--wait", "2s", "--", "true"])
        .output()
        .expect("run");
    common::end(holder);
    assert_eq!(out.status.code(), Some(75), "{}", common::stderr_of(&out));
}

/// New-user trial (helper-93): with stderr on /dev/full (or a pipe whose reader closed),
/// `run` exited 101 — `eprintln!` panicked on the failed write — where 75, 78 or 64 was
/// due. A message that cannot be written is lost; the status stays the documented one.
#[test]
fn a_stderr_that_cannot_be_written_keeps_the_documented_status() {
    let dir = tempfile::tempdir().expect("temp dir");
    let d = dir.path();
    let full = || {
        std::fs::OpenOptions::new()
            .write(true)
            .open("/dev/full")
            .expect("/dev/full")
    };
    let holder = hold(d);
    let status = |cmd: &mut Command| cmd.stderr(full()).status().expect("run").code();
    assert_eq!(
        status(on_files(d).args(["run", "k", "--no-wait", "--", "true"])),
        Some(75),
        "not acquired"
    );
    assert_eq!(
        status(on_files(d).args(["run", "", "--", "true"])),
        Some(64),
        "an empty key"
    );
    assert_eq!(
        status(fencelock().args(["--backend", "redis://127.0.0.1:1?nonsense=1", "run", "k", "--", "true"])),
        Some(78),
        "an unknown URL option"
    );
    end(holder);
}

/// A wait on a freshly started Redlock cluster, whose nodes refuse grants for their
/// `restart_delay`, says so with `-v` as it starts waiting — a new-user trial waited out
/// a 2 s delay with no word, even with `-v` — and then gets the lock (exit 0).
#[test]
fn a_wait_on_nodes_inside_their_restart_delay_is_said_with_v() {
    let servers = fencelock_testkit::redis_server::start_many(3);
    let url = fencelock_testkit::redis_server::redlock_url(&servers, "per_node_timeout=100ms&restart_delay=2s");
    let out = fencelock()
        .args([
            "-v",
            "--backend",
            &url,
            "run",
            "k",
            "--ttl",
            "1s",
            "--wait",
            "20s",
            "--",
            "true",
        ])
        .output()
        .expect("run");
    let err = stderr_of(&out);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("inside their restart delay"),
        "nothing said of the wait: {err}"
    );
    let quiet = fencelock()
        .args(["--backend", &url, "run", "k", "--ttl", "1s", "--", "true"])
        .output()
        .expect("run");
    assert!(quiet.status.success(), "{}", stderr_of(&quiet));
    assert!(stderr_of(&quiet).is_empty(), "without -v: {}", stderr_of(&quiet));
}

/// A server that stops answering while `run` runs: the guard kills the command at the end
/// of the validity, and `run` says so in one line that names the lease — key and token —
/// as every other loss line does (a new-user trial read "the lease's validity was ending
/// without a renewal; …" with neither).
#[test]
fn a_kill_at_the_validitys_end_names_the_lease() {
    let server = fencelock_testkit::redis_server::RedisServer::start();
    let run = ["run", "k", "--ttl", "1s"];
    let (holder, _in) = common::spawn_holder(common::fencelock(&server.url()), &run, "echo in; sleep 30");
    server.pause();
    let out = holder.wait_with_output().expect("wait");
    server.resume();
    let err = stderr_of(&out);
    assert_eq!(out.status.code(), Some(76), "{err}");
    let lines: Vec<&str> = err.lines().filter(|l| l.starts_with("fencelock:")).collect();
    assert_eq!(lines.len(), 1, "{err}");
    assert!(lines[0].contains("lease on `k` (token 1) lost"), "{err}");
}
