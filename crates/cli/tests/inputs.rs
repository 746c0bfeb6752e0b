//! Issue 13, a newcomer's findings on inputs (A4, A6, B2–B4, C nits): each bad input has
//! its exit code and a one-line message; config files and flags mean the same things.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail by panicking

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

mod common;
use common::{assert_one_line, bare, end, hold, on_files as fencelock, output_within, stderr_of};

/// A configuration file in `dir` on the file backend in `dir/locks`, with `defaults`.
/// Runs the command with `--config cfg` and `args`, to its end.
fn with_config(cfg: &Path, args: &[&str]) -> std::process::Output {
    bare().arg("--config").arg(cfg).args(args).output().expect("run")
}

fn config(dir: &Path, defaults: &str) -> std::path::PathBuf {
    let locks = dir.join("locks");
    std::fs::create_dir_all(&locks).expect("mkdir");
    let path = dir.join("fencelock.toml");
    std::fs::write(
        &path,
        format!("backend = \"file://{}\"\n[defaults]\n{defaults}\n", locks.display()),
    )
    .expect("write config");
    path
}

// A4: a TTL shorter than the grant round trip looped for the whole wait (burning a token
// per attempt, ~40 warnings a second) and exited 69; then 64 after a few attempts — or 76
// when a grant happened to arrive with a millisecond left (a flaky CI run). A TTL no
// command can be guarded with is refused before anything is granted: 64, no token burnt.
#[test]
fn a_ttl_too_short_to_guard_a_command_is_refused_before_any_grant() {
    let dir = tempfile::tempdir().expect("temp dir");
    for ttl in ["1ms", "99ms"] {
        let child = fencelock(dir.path())
            .args(["run", "k", "--ttl", ttl, "--wait", "20s", "--", "true"])
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn");
        let out = output_within(child, Duration::from_secs(30));
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "--ttl {ttl}: {err}");
        assert!(err.contains("below the minimum of 100ms"), "--ttl {ttl}: {err}");
        assert!(!err.contains("lease lost"), "--ttl {ttl}: a grant was made: {err}");
    }
    // A token was never taken: the first grant of `k` gets token 1.
    let child = fencelock(dir.path())
        .args(["run", "k", "--ttl", "100ms", "--", "sh", "-c", "echo $FENCELOCK_TOKEN"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn");
    let out = output_within(child, Duration::from_secs(30));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "1");
}

// A TTL below the library's 1 ms (`--ttl 0`, `500us`) was refused with "below the minimum
// of 1ms", though `run` and `elect` refuse everything below 100 ms: a user who then gave
// `--ttl 1ms` was refused again, with another bound. The message names the bound of the
// command used, whatever the TTL, from a flag or a configuration file.
#[test]
fn a_ttl_below_a_millisecond_names_the_bound_of_the_command_used() {
    let dir = tempfile::tempdir().expect("temp dir");
    for command in ["run", "elect"] {
        for ttl in ["0", "0s", "500us", "1ms"] {
            let out = fencelock(dir.path())
                .args([command, "k", "--ttl", ttl, "--", "true"])
                .output()
                .expect("run");
            let what = format!("{command} --ttl {ttl}");
            assert_one_line(
                &out,
                64,
                "below the minimum of 100ms for a lease that guards a command",
                &what,
            );
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(!err.contains("minimum of 1ms"), "{what}: {err}");
        }
    }
    for ttl in ["0s", "500us", "1ms"] {
        let cfg = config(dir.path(), &format!("ttl = \"{ttl}\""));
        for command in ["run", "elect"] {
            let out = with_config(&cfg, &[command, "k", "--", "true"]);
            let what = format!("{command} with ttl = {ttl} in the file");
            assert_one_line(&out, 78, "defaults.ttl: ", &what);
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(err.contains("below the minimum of 100ms"), "{what}: {err}");
            assert!(!err.contains("minimum of 1ms"), "{what}: {err}");
        }
    }
}

// B3: `wait = "0s"` in a configuration file means "do not wait", as `--wait 0` does.
#[test]
fn a_zero_wait_in_the_config_file_means_try_once() {
    let dir = tempfile::tempdir().expect("temp dir");
    let cfg = config(dir.path(), "wait = \"0s\"");
    let mut cmd = bare();
    cmd.arg("--config").arg(&cfg);
    let holder = hold(cmd, &["run", "k"]);
    let start = Instant::now();
    let out = with_config(&cfg, &["run", "k", "--", "true"]);
    assert_one_line(&out, 75, "not waiting: tried once", "config wait 0");
    assert!(start.elapsed() < Duration::from_secs(5));
    end(holder);
    let out = with_config(&cfg, &["run", "k", "--", "true"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

// B4: an out-of-range value in a configuration file is a configuration error (78), like
// any other in the file; the same value as a flag stays a usage error (64).
#[test]
fn out_of_range_values_in_a_config_file_exit_78() {
    for (defaults, says) in [
        ("ttl = \"0s\"", "defaults.ttl"),
        ("ttl = \"100y\"", "defaults.ttl"),
        ("wait = \"25h\"", "defaults.wait"),
    ] {
        let dir = tempfile::tempdir().expect("temp dir");
        let cfg = config(dir.path(), defaults);
        let out = with_config(&cfg, &["run", "k", "--", "true"]);
        assert_one_line(&out, 78, says, defaults);
    }
}

// A6: `auto_renew = false` in the file was silently ignored by `run`; it is honoured: the
// lease is not renewed, so the command is stopped when the TTL runs out (76). The
// messages say that is why (docs/election.md: "the message says so"): a trial read
// "the lease's validity ended without a renewal reaching the guard" as a fault.
#[test]
fn auto_renew_off_in_the_config_file_ends_the_command_at_the_ttl() {
    let dir = tempfile::tempdir().expect("temp dir");
    let cfg = config(dir.path(), "ttl = \"1s\"\nauto_renew = false");
    let start = Instant::now();
    let child = bare()
        .arg("--config")
        .arg(&cfg)
        .args(["run", "k", "--kill-after", "200ms", "--", "sleep", "10"])
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let out = output_within(child, Duration::from_secs(9));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(76), "{err}");
    assert!(start.elapsed() < Duration::from_secs(5), "took {:?}", start.elapsed());
    let lines: Vec<&str> = err.lines().filter(|l| l.starts_with("fencelock:")).collect();
    assert!(!lines.is_empty(), "nothing said: {err}");
    // Trial F6: once, not by the guard and again by `run`.
    assert_eq!(err.lines().count(), 1, "not one line: {err}");
    for line in lines {
        assert!(
            line.contains("auto_renew is off"),
            "a line that does not say the lease is not renewed: {line}\n{err}"
        );
    }
}

// B3, C4: `elect` takes --no-wait and --wait 0 like `run`; its timeout names the bound.
#[test]
fn elect_takes_no_wait_and_names_the_requested_bound() {
    let dir = tempfile::tempdir().expect("temp dir");
    let holder = hold(fencelock(dir.path()), &["elect", "e"]);
    for flags in [&["--no-wait"][..], &["--wait", "0"][..]] {
        let start = Instant::now();
        let out = fencelock(dir.path())
            .args(["elect", "e"])
            .args(flags)
            .args(["--", "true"])
            .output()
            .expect("elect");
        assert_one_line(&out, 75, "not waiting: tried once", &format!("{flags:?}"));
        assert!(
            start.elapsed() < Duration::from_secs(3),
            "{flags:?} took {:?}",
            start.elapsed()
        );
    }
    let out = fencelock(dir.path())
        .args(["elect", "e", "--wait", "500ms", "--", "true"])
        .output()
        .expect("elect");
    assert_one_line(&out, 75, "not elected within 500ms", "--wait 500ms");
    end(holder);
    let out = fencelock(dir.path())
        .args(["elect", "e", "--no-wait", "--", "true"])
        .output()
        .expect("elect");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

// C1, C5, C6, C9, C14, B2: bad inputs, each with its status and one line.
#[test]
fn bad_inputs_name_what_is_wrong() {
    let dir = tempfile::tempdir().expect("temp dir");
    let f = format!("file://{}", dir.path().display());
    let cases: &[(&[&str], i32, &str)] = &[
        (&["run", "k"], 64, "<CMD>"),
        (&["leader"], 64, "<NAME>"),
        (&["--backend", &f, "leader", ""], 64, "election name is empty"),
        (
            &["--backend", &f, "elect", "e", "--value", "two\nlines", "--", "true"],
            64,
            "control character",
        ),
        // U+2028, U+2029: line and paragraph separators, not control characters, but
        // line breaks to a reader of `leader --watch` (review: accepted before).
        (
            &["--backend", &f, "elect", "e", "--value", "a\u{2028}b", "--", "true"],
            64,
            "line separator",
        ),
        (
            &["--backend", &f, "elect", "e", "--value", "a\u{2029}b", "--", "true"],
            64,
            "line separator",
        ),
        (
            &["--backend", &f, "elect", "e", "--value", "", "--", "true"],
            64,
            "--value is empty",
        ),
        (
            &[
                "--backend",
                &f,
                "run",
                "k",
                "--metrics-addr",
                "localhost:9898",
                "--",
                "true",
            ],
            64,
            "host names are not accepted",
        ),
        (
            &["--backend", "file:///", "run", "k", "--", "true"],
            78,
            "root directory",
        ),
        // The root directory however spelled (the key is unusual, in case a regression
        // does create lock files in /).
        (
            &["--backend", "file:///.", "run", "fencelock-root-test", "--", "true"],
            78,
            "root directory",
        ),
        (
            &[
                "--backend",
                "file:///tmp/..",
                "run",
                "fencelock-root-test",
                "--",
                "true",
            ],
            78,
            "root directory",
        ),
        (
            &[
                "--backend",
                "FILE:///tmp/./../?durable=false",
                "run",
                "fencelock-root-test",
                "--",
                "true",
            ],
            78,
            "root directory",
        ),
        (&["--backend", "nonsense", "backends"], 78, "nonsense"),
    ];
    for (args, code, says) in cases {
        let out = bare().args(*args).output().expect("run");
        assert_one_line(&out, *code, says, &format!("{args:?}"));
    }
}

// C9: `--metrics-addr 127.0.0.1:0` says which port it chose.
#[test]
fn metrics_on_port_zero_prints_the_chosen_address() {
    let dir = tempfile::tempdir().expect("temp dir");
    let out = fencelock(dir.path())
        .args(["run", "k", "--metrics-addr", "127.0.0.1:0", "--", "true"])
        .output()
        .expect("run");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    let addr = err
        .lines()
        .find_map(|l| l.strip_prefix("fencelock: serving metrics at http://"))
        .and_then(|rest| rest.strip_suffix("/metrics"))
        .unwrap_or_else(|| panic!("no address printed: {err}"));
    let addr: std::net::SocketAddr = addr.parse().expect("an address");
    assert_ne!(addr.port(), 0);
}

// B2: `backends` states conditions without a server, and reads them from one with a URL.
#[test]
fn backends_states_conditions_and_reads_a_given_server() {
    let out = bare().arg("backends").output().expect("run");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(text.contains("when fsync and synchronous_commit are on"), "{text}");
    assert!(text.contains("when the server fsyncs every write"), "{text}");

    let dir = tempfile::tempdir().expect("temp dir");
    let out = fencelock(dir.path()).arg("backends").output().expect("run");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("as read from this server"), "{text}");
    assert!(text.contains("exclusion: strict"), "{text}");

    let server = fencelock_testkit::redis_server::RedisServer::start();
    let out = bare()
        .args(["--backend", &server.url(), "backends"])
        .output()
        .expect("run");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        text.contains("as read from this server") && text.contains("redis"),
        "{text}"
    );
    assert!(!text.contains("when fsync"), "a static listing instead: {text}");
}

// C8: a command that cannot be found fails at once (127), before waiting for the lock.
#[test]
fn a_missing_command_fails_before_the_wait() {
    let dir = tempfile::tempdir().expect("temp dir");
    let holder = hold(fencelock(dir.path()), &["run", "k"]);
    let start = Instant::now();
    let out = fencelock(dir.path())
        .args(["run", "k", "--wait", "20s", "--", "fencelock-no-such-command"])
        .output()
        .expect("run");
    assert_one_line(&out, 127, "command not found", "missing command");
    assert!(start.elapsed() < Duration::from_secs(5), "took {:?}", start.elapsed());
    end(holder);
}

// C7: an executable text file without `#!` runs with /bin/sh, as shells and env(1) do.
#[test]
fn a_script_without_a_shebang_runs_with_sh() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("temp dir");
    let script = dir.path().join("noshebang");
    std::fs::write(&script, "echo ran-by-sh\n").expect("write");
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let out = fencelock(dir.path())
        .args(["run", "k", "--"])
        .arg(&script)
        .output()
        .expect("run");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("ran-by-sh"));
}

// Messages quoted the backend URL with the session option that `run --ttl` (or a TTL in
// the configuration file) adds to it, `zk://…?bogus=1&session_timeout=2000ms`: an option
// the user never typed, in the URL they are told to fix. They quote it as given, its
// password still hidden.
#[test]
fn messages_quote_the_backend_url_as_given_not_with_the_session_set_from_the_ttl() {
    // Port 1 on loopback: nothing listens there, so the connect is refused at once.
    let cases = [
        (
            "zk://127.0.0.1:1?bogus=1",
            78,
            "`zk://127.0.0.1:1?bogus=1`: unknown option `bogus`",
        ),
        (
            "zk://u:pw@127.0.0.1:1?bogus=1",
            78,
            "`zk://u:***@127.0.0.1:1?bogus=1`: ",
        ),
        ("zk://127.0.0.1:1", 69, "for zk://127.0.0.1:1"),
    ];
    for (url, code, says) in cases {
        for command in ["run", "elect"] {
            let out = bare()
                .args(["--backend", url, command, "k", "--ttl", "2s", "--", "true"])
                .output()
                .expect("run");
            let what = format!("{command} --ttl 2s on {url}");
            assert_one_line(&out, code, says, &what);
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(!err.contains("session_timeout="), "{what}: {err}");
            assert!(!err.contains("pw@"), "{what}: {err}");
        }
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let cfg = dir.path().join("zk.toml");
    std::fs::write(
        &cfg,
        "backend = \"zk://127.0.0.1:1?bogus=1\"\n[defaults]\nttl = \"2s\"\n",
    )
    .expect("write config");
    let out = with_config(&cfg, &["run", "k", "--", "true"]);
    assert_one_line(
        &out,
        78,
        "`zk://127.0.0.1:1?bogus=1`: unknown option",
        "ttl in the file",
    );
}

// `run … -- CMD ARGS` and `elect … -- CMD ARGS` took CMD and its arguments as UTF-8 text:
// one that was not (a file name in Latin-1, bytes for a tool) made the CLI exit 64 with
// "invalid UTF-8 was detected", where flock(1) passes any bytes through. They reach CMD
// unchanged, the program's name as well as its arguments.
#[test]
fn a_command_and_arguments_that_are_not_utf8_reach_the_command_byte_exact() {
    use std::os::unix::ffi::OsStrExt;
    let dir = tempfile::tempdir().expect("temp dir");
    let arg = std::ffi::OsStr::from_bytes(b"a\xffb");
    // A program whose own name is not UTF-8 either.
    let program = dir.path().join(std::ffi::OsStr::from_bytes(b"write\xfe"));
    std::fs::write(&program, "#!/bin/sh\nprintf %s \"$1\" > \"$2\"\n").expect("write script");
    std::fs::set_permissions(&program, std::os::unix::fs::PermissionsExt::from_mode(0o755)).expect("chmod");
    for verb in ["run", "elect"] {
        let written = dir.path().join(format!("{verb}.out"));
        let out = fencelock(dir.path())
            .args([verb, "k", "--"])
            .arg(&program)
            .arg(arg)
            .arg(&written)
            .output()
            .expect("run");
        assert_eq!(out.status.code(), Some(0), "{verb}: {}", stderr_of(&out));
        assert_eq!(std::fs::read(&written).expect("read"), b"a\xffb", "{verb}");
    }
    // A program not found is named with its bytes escaped, still with 127.
    let missing = dir.path().join(std::ffi::OsStr::from_bytes(b"no\xffsuch"));
    let out = fencelock(dir.path())
        .args(["run", "k", "--"])
        .arg(&missing)
        .output()
        .expect("run");
    assert_one_line(&out, 127, "no\\xffsuch`: command not found", "a missing program");
}

// `--backend ' '` said "`` is not a backend URL": the URL quoted trimmed, as if none had
// been given. A bad input is quoted as given, with control characters escaped (an escape
// sequence from a variable must not reach the terminal raw).
#[test]
fn a_bad_backend_url_is_quoted_as_given_with_control_characters_escaped() {
    let dir = tempfile::tempdir().expect("temp dir");
    let cfg = dir.path().join("blank.toml");
    std::fs::write(&cfg, "backend = \"  \"\n").expect("write config");
    for (url, says) in [
        (" ", "` ` is not a backend URL"),
        ("\t", "`\\t` is not a backend URL"),
        (" nonsense ", "` nonsense ` is not a backend URL"),
        ("\u{1b}[31mx", "`\\u{1b}[31mx` is not a backend URL"),
    ] {
        for args in [
            &["run", "k", "--", "true"][..],
            &["elect", "e", "--", "true"],
            &["leader", "e"],
            &["leader", "e", "--watch"],
            &["backends"],
        ] {
            let out = bare().arg("--backend").arg(url).args(args).output().expect("run");
            let what = format!("--backend {url:?} {args:?}");
            assert_one_line(&out, 78, says, &what);
            assert!(!out.stderr.contains(&0x1b), "{what}: a raw escape: {}", stderr_of(&out));
        }
    }
    let out = with_config(&cfg, &["run", "k", "--", "true"]);
    assert_one_line(&out, 78, "`  ` is not a backend URL", "a blank URL in a file");
    // clap's own messages quote the value as given: escaped too.
    let out = fencelock(dir.path())
        .args(["run", "k", "--conflict-exit-code", "\u{1b}[31m", "--", "true"])
        .output()
        .expect("run");
    assert_one_line(&out, 64, "\\u{1b}[31m", "an escape in an exit code");
    assert!(!out.stderr.contains(&0x1b), "a raw escape: {}", stderr_of(&out));
}

// `elect --value '  '` said "--value is only whitespace…" without the "invalid input:" that
// every other bad input's message starts with; so did the other checks of --value and the
// refusal of an election's seat as a `run` key. All of them: "invalid input: …", 64.
#[test]
fn every_bad_input_message_starts_with_invalid_input() {
    let dir = tempfile::tempdir().expect("temp dir");
    let f = format!("file://{}", dir.path().display());
    let long = "v".repeat(5000);
    let cases: &[&[&str]] = &[
        &["--backend", &f, "elect", "e", "--value", "  ", "--", "true"],
        &["--backend", &f, "elect", "e", "--value", "", "--", "true"],
        &["--backend", &f, "elect", "e", "--value", "a\tb", "--", "true"],
        &["--backend", &f, "elect", "e", "--value", "a\u{2028}b", "--", "true"],
        &["--backend", &f, "elect", "e", "--value", &long, "--", "true"],
        &["--backend", &f, "elect", "", "--", "true"],
        &["--backend", &f, "run", "election.e", "--", "true"],
        &["--backend", &f, "run", "", "--", "true"],
        &["--backend", &f, "leader", ""],
    ];
    for args in cases {
        let out = bare().args(*args).output().expect("run");
        let what = format!("{:?}", &args[2..]);
        assert_one_line(&out, 64, "fencelock: invalid input: ", &what);
        assert!(
            stderr_of(&out).starts_with("fencelock: invalid input: "),
            "{what}: {}",
            stderr_of(&out)
        );
    }
}
