//! The second newcomer pass (FINDINGS3): each finding that was a bug, as the user met it.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail by panicking

mod common;

use std::io::Write;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{fencelock, file_url, first_line, BIN};
use fencelock_testkit::redis_server::{redlock_url, start_many, RedisOptions, RedisServer};

fn bare() -> Command {
    let mut cmd = Command::new(BIN);
    cmd.env_remove("FENCELOCK_BACKEND").env_remove("RUST_LOG");
    cmd
}

fn stderr_of(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Asserts the status and that stderr is one line starting `fencelock: ` containing `says`.
fn assert_one_line(out: &Output, code: i32, says: &str, what: &str) {
    let err = stderr_of(out);
    assert_eq!(out.status.code(), Some(code), "{what}: {err}");
    assert_eq!(err.lines().count(), 1, "{what}: not one line: {err}");
    assert!(err.starts_with("fencelock: ") && err.contains(says), "{what}: {err}");
}

/// A3: `demo` shows the backend it runs on, never its password.
#[test]
fn demo_never_prints_the_password() {
    // Nothing listens on port 1: the demo's processes fail, but its first line is printed.
    let out = fencelock("redis://:S3cretPW@127.0.0.1:1")
        .args(["demo", "--processes", "2"])
        .output()
        .expect("demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("redis://:***@127.0.0.1:1"), "{stdout}");
    assert!(
        !stdout.contains("S3cretPW") && !stderr_of(&out).contains("S3cretPW"),
        "{stdout}"
    );
}

/// A2: Redlock nodes that refuse AUTH (a password given to nodes that need none, or a wrong
/// one) are a configuration error at connect, at once — not a timeout after --wait.
#[test]
fn redlock_nodes_that_refuse_the_password_exit_78_at_once() {
    let plain = start_many(3);
    let with_password: Vec<RedisServer> = (0..3)
        .map(|_| {
            RedisServer::start_with(RedisOptions {
                password: Some("p@ss".into()),
                ..RedisOptions::default()
            })
        })
        .collect();
    for (url, what) in [
        (
            redlock_url(&plain, "").replacen("redlock://", "redlock://:pw@", 1),
            "nodes need none",
        ),
        (
            redlock_url(&with_password, "").replacen("redlock://", "redlock://:Wr0ngPW@", 1),
            "a wrong one",
        ),
    ] {
        let start = Instant::now();
        let out = fencelock(&url)
            .args(["run", "sk", "--wait", "20s", "--", "true"])
            .output()
            .expect("run");
        assert_one_line(&out, 78, "refused the credentials", what);
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "{what}: took {:?}",
            start.elapsed()
        );
        assert!(
            !stderr_of(&out).contains(":pw@") && !stderr_of(&out).contains("Wr0ngPW"),
            "{what}"
        );
    }
}

/// A4: a ZooKeeper chroot with `.` or `..` segments is a bad URL (78), refused before any
/// connection.
#[test]
fn a_zookeeper_chroot_with_dot_segments_is_a_bad_url() {
    for url in [
        "zk://127.0.0.1:1/a/b/../c",
        "zk://127.0.0.1:1/a/./c",
        "zk://127.0.0.1:1/..",
    ] {
        let out = fencelock(url).args(["run", "k", "--", "true"]).output().expect("run");
        assert_one_line(&out, 78, "chroot", url);
    }
}

/// B2: `elect` checks CMD before campaigning, as `run` does.
#[test]
fn elect_checks_the_command_before_campaigning() {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = file_url(dir.path());
    let mut leader = fencelock(&url)
        .args(["elect", "cnf", "--", "sh", "-c", "echo in; read _ || true"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("leader");
    assert_eq!(first_line(&mut leader), "in");
    let exe = dir.path().join("not-executable");
    std::fs::write(&exe, "x").expect("write");
    for (cmd, code, says) in [
        ("nosuchcmd-fencelock", 127, "command not found; not campaigning"),
        (exe.to_str().expect("utf-8"), 126, "not an executable file"),
    ] {
        let start = Instant::now();
        let out = fencelock(&url)
            .args(["elect", "cnf", "--wait", "20s", "--", cmd])
            .output()
            .expect("elect");
        assert_one_line(&out, code, says, cmd);
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "{cmd}: waited {:?}",
            start.elapsed()
        );
    }
    drop(leader.stdin.take());
    assert!(leader.wait().expect("wait").success());
}

/// B3: durations in URL options read as the CLI's do (humantime), within each option's
/// documented bounds, and the message quotes the URL with its query.
#[test]
fn url_durations_read_like_the_cli_and_keep_their_bounds() {
    // 1.5s parses: the run then fails only to connect (nothing listens on port 1).
    let out = fencelock("redis://127.0.0.1:1?timeout=1.5s&connect_timeout=200ms")
        .args(["run", "k", "--", "true"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(69), "{}", stderr_of(&out));
    let out = fencelock("redis://:pw@127.0.0.1:1?poll=1ns")
        .args(["run", "k", "--", "true"])
        .output()
        .expect("run");
    assert_one_line(
        &out,
        78,
        "`redis://:***@127.0.0.1:1?poll=1ns`: poll must be between 1ms and 10m",
        "1ns",
    );
}

/// B5: `leader --watch` on Redlock says why it is refused and what to do instead.
#[test]
fn leader_watch_on_redlock_says_to_poll() {
    let servers = start_many(3);
    let out = fencelock(&redlock_url(&servers, ""))
        .args(["leader", "rl1", "--watch"])
        .output()
        .expect("leader");
    assert_one_line(
        &out,
        78,
        "leader --watch is not available on redlock: no node's view is authoritative; poll `fencelock leader`",
        "watch",
    );
}

/// B6: `leader` reads; it does not create a missing lock directory.
#[test]
fn leader_does_not_create_a_missing_lock_directory() {
    let dir = tempfile::tempdir().expect("temp dir");
    let missing = dir.path().join("nonexist/dir");
    let out = fencelock(&file_url(&missing))
        .args(["leader", "x"])
        .output()
        .expect("leader");
    assert_one_line(&out, 78, "does not exist", "leader");
    assert!(!missing.exists() && !dir.path().join("nonexist").exists());
}

/// B7: when the guard kills the command at the end of the validity, `elect` does not say
/// the command finished.
#[test]
fn elect_without_renewal_does_not_say_the_killed_command_finished() {
    let server = RedisServer::start();
    let dir = tempfile::tempdir().expect("temp dir");
    let cfg = dir.path().join("ear.toml");
    std::fs::write(
        &cfg,
        format!(
            "backend = \"{}\"\n[defaults]\nttl = \"1s\"\nauto_renew = false\n",
            server.url()
        ),
    )
    .expect("config");
    let out = bare()
        .arg("--config")
        .arg(&cfg)
        .args(["elect", "ear", "--", "sh", "-c", "sleep 3; echo done"])
        .output()
        .expect("elect");
    let err = stderr_of(&out);
    assert_eq!(out.status.code(), Some(76), "{err}");
    assert!(!String::from_utf8_lossy(&out.stdout).contains("done"));
    assert!(!err.contains("finished"), "{err}");
}

/// C1, C2, C10, C14, C19: usage mistakes are 64 with a clear message.
#[test]
fn usage_mistakes_exit_64_with_a_clear_message() {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = file_url(dir.path());
    let cases: Vec<(Vec<String>, i32, &str)> = vec![
        (
            vec![
                "run".into(),
                "k".into(),
                "--conflict-exit-code".into(),
                "-1".into(),
                "--".into(),
                "true".into(),
            ],
            64,
            "0 to 255",
        ),
        (
            vec![
                "elect".into(),
                "e".into(),
                "--lost-exit-code".into(),
                "-1".into(),
                "--".into(),
                "true".into(),
            ],
            64,
            "0 to 255",
        ),
        (
            vec![
                "--backend".into(),
                url.clone(),
                "run".into(),
                "k".into(),
                "--".into(),
                "true".into(),
            ],
            64,
            "2 --backend URLs given",
        ),
        (
            vec![
                "elect".into(),
                "e".into(),
                "--value".into(),
                " ".into(),
                "--".into(),
                "true".into(),
            ],
            64,
            "only whitespace",
        ),
        (
            vec!["leader".into(), "e".repeat(248)],
            64,
            "invalid input: election name is 248 bytes",
        ),
        (
            vec!["run".into(), "k".into(), "--".into(), String::new()],
            127,
            "command not found",
        ),
    ];
    for (args, code, says) in cases {
        let out = fencelock(&url).args(&args).output().expect("run");
        assert_one_line(&out, code, says, &format!("{args:?}"));
    }
}

/// C3: file URLs: messages quote what the user wrote, and the scheme is case-insensitive.
#[test]
fn file_urls_are_quoted_as_written_and_any_case() {
    let out = fencelock("file://")
        .args(["run", "k", "--", "true"])
        .output()
        .expect("run");
    assert_one_line(&out, 78, "`file://`: a file URL needs an absolute path", "file://");
    assert!(!stderr_of(&out).contains("inherit"));
    let dir = tempfile::tempdir().expect("temp dir");
    let url = format!("{}?layout=go", file_url(dir.path()));
    let out = fencelock(&url).args(["run", "k", "--", "true"]).output().expect("run");
    assert_eq!(out.status.code(), Some(78));
    assert!(!stderr_of(&out).contains("inherit=true"), "{}", stderr_of(&out));
    let upper = format!("FILE://{}", dir.path().display());
    let out = fencelock(&upper)
        .args(["run", "k", "--", "true"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(0), "{}", stderr_of(&out));
}

/// C5 and C12: a config file's format is decided by its content when the extension does
/// not say, and its limit messages read like the command line's.
#[test]
fn config_format_by_content_and_humane_limits() {
    let dir = tempfile::tempdir().expect("temp dir");
    let locks = dir.path().join("locks");
    let conf = dir.path().join("locks.conf");
    std::fs::write(&conf, format!("{{\"backend\": \"file://{}\"}}", locks.display())).expect("write");
    let out = bare()
        .arg("--config")
        .arg(&conf)
        .args(["run", "k", "--", "true"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(0), "{}", stderr_of(&out));
    let long = dir.path().join("long.toml");
    let mut f = std::fs::File::create(&long).expect("create");
    writeln!(
        f,
        "backend = \"file://{}\"\n[defaults]\nttl = \"100y\"",
        locks.display()
    )
    .expect("write");
    let out = bare()
        .arg("--config")
        .arg(&long)
        .args(["run", "k", "--", "true"])
        .output()
        .expect("run");
    assert_one_line(&out, 78, "above the maximum of 24h", "100y");
}

/// C13: each default is shown once in --help.
#[test]
fn help_shows_each_default_once() {
    for command in ["run", "elect"] {
        let out = bare().args([command, "--help"]).output().expect("help");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(!text.contains("(default 75"), "{command}: {text}");
        assert!(!text.contains("(default 76"), "{command}: {text}");
        assert!(text.contains("[default: 75]"), "{command}: {text}");
    }
}
