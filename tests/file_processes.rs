//! The file backend across real processes: this test binary re-runs itself as children
//! (the `child_*` tests, ignored in a normal run and started by the parents below).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail by panicking

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use fencelock::LockOptions;

const DIR_ENV: &str = "FENCELOCK_TEST_DIR";
const ROUNDS: usize = 15;
const PROCESSES: usize = 4;

fn child(test: &str, dir: &Path) -> Command {
    let mut cmd = Command::new(std::env::current_exe().expect("current exe"));
    cmd.args(["--exact", test, "--ignored", "--nocapture", "--test-threads=1"])
        .env(DIR_ENV, dir);
    cmd
}

fn child_dir() -> PathBuf {
    PathBuf::from(std::env::var(DIR_ENV).expect("run by the parent test, with FENCELOCK_TEST_DIR set"))
}

/// Waits for a child with a bound; kills it if it overruns.
fn wait_bounded(mut c: std::process::Child, limit: Duration) -> std::process::ExitStatus {
    let start = std::time::Instant::now();
    loop {
        if let Some(status) = c.try_wait().expect("try_wait") {
            return status;
        }
        if start.elapsed() > limit {
            let _ = c.kill();
            let _ = c.wait();
            panic!("child process did not finish within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20)); // polling a child's exit, not synchronising locks
    }
}

#[test]
#[ignore = "started by processes_never_overlap_and_tokens_grow"]
fn child_contend() {
    let dir = child_dir();
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let locks = fencelock::connect(&format!("file://{}", dir.join("locks").display()))
            .await
            .expect("connect");
        let opts = LockOptions::new()
            .with_ttl(Duration::from_secs(30))
            .with_wait(Duration::from_secs(60));
        for _ in 0..ROUNDS {
            let lease = locks.acquire("shared", &opts).await.expect("acquire");
            let marker = dir.join("inside");
            if std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&marker)
                .is_err()
            {
                std::fs::write(dir.join("overlap"), format!("{}", std::process::id())).expect("write overlap");
            }
            let mut log = std::fs::OpenOptions::new()
                .append(true)
                .create(true)
                .open(dir.join("log"))
                .expect("log");
            writeln!(log, "{} {}", lease.token(), std::process::id()).expect("append");
            std::thread::sleep(Duration::from_millis(2)); // work inside the critical section
            std::fs::remove_file(&marker).expect("remove marker");
            lease.release().await.expect("release");
        }
    });
}

#[test]
fn processes_never_overlap_and_tokens_grow() {
    let dir = tempfile::tempdir().expect("temp dir");
    let children: Vec<_> = (0..PROCESSES)
        .map(|_| {
            child("child_contend", dir.path())
                .stdout(Stdio::null())
                .spawn()
                .expect("spawn child")
        })
        .collect();
    for c in children {
        assert!(wait_bounded(c, Duration::from_secs(120)).success(), "a child failed");
    }
    assert!(
        !dir.path().join("overlap").exists(),
        "two processes were inside the critical section at once"
    );
    let log = std::fs::read_to_string(dir.path().join("log")).expect("log");
    let tokens: Vec<u64> = log
        .lines()
        .map(|l| l.split(' ').next().unwrap().parse().unwrap())
        .collect();
    assert_eq!(tokens.len(), PROCESSES * ROUNDS);
    assert!(
        tokens.windows(2).all(|w| w[1] > w[0]),
        "tokens not increasing in entry order: {tokens:?}"
    );
}

#[test]
#[ignore = "started by a_killed_holder_frees_the_lock_and_tokens_survive"]
fn child_hold_forever() {
    let dir = child_dir();
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let locks = fencelock::connect(&format!("file://{}", dir.display()))
            .await
            .expect("connect");
        let lease = locks
            .acquire("crash", &LockOptions::new().with_ttl(Duration::from_secs(60)))
            .await
            .expect("acquire");
        println!("held {}", lease.token());
        std::io::stdout().flush().expect("flush");
        // Wait to be killed; bounded so an orphan never outlives the test run by much.
        tokio::time::sleep(Duration::from_secs(60)).await;
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_holder_frees_the_lock_and_tokens_survive() {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = format!("file://{}", dir.path().display());
    let mut holder = child("child_hold_forever", dir.path())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn");
    let stdout = holder.stdout.take().expect("stdout");
    let line = tokio::task::spawn_blocking(move || {
        // libtest prints its own "test NAME ... " before ours on the same line.
        BufReader::new(stdout)
            .lines()
            .find_map(|l| l.ok().and_then(|l| l.split_once("held ").map(|(_, t)| t.to_owned())))
    });
    let token = tokio::time::timeout(Duration::from_secs(30), line)
        .await
        .expect("child reported")
        .expect("join")
        .expect("held line");
    let child_token: u64 = token.trim().parse().expect("token");

    let locks = fencelock::connect(&url).await.expect("connect");
    let opts = LockOptions::new()
        .with_ttl(Duration::from_secs(60))
        .with_wait(Duration::from_millis(200));
    assert!(
        locks.try_acquire("crash", &opts).await.expect("try").is_none(),
        "held by the child"
    );

    holder.kill().expect("kill");
    holder.wait().expect("reap");
    // The kernel dropped the dead holder's flock: the lock is free long before its 60 s TTL.
    let lease = locks
        .acquire("crash", &opts.with_wait(Duration::from_secs(5)))
        .await
        .expect("acquire after the holder died");
    assert!(
        lease.token().get() > child_token,
        "token {} after {child_token}",
        lease.token()
    );
    lease.release().await.expect("release");

    // A new instance on the same directory (a restarted service) keeps counting.
    let again = fencelock::connect(&url).await.expect("reconnect");
    let next = again.acquire("crash", &opts).await.expect("acquire");
    assert!(next.token().get() > child_token + 1);
    next.release().await.expect("release");
}

/// Whether this process has the file backend's wait thread (`comm` keeps 15 bytes of the
/// name `fencelock-file-wait`): it exists exactly while some acquire here waits.
fn waiting_here() -> bool {
    std::fs::read_dir("/proc/self/task")
        .expect("/proc/self/task")
        .flatten()
        .any(|t| std::fs::read_to_string(t.path().join("comm")).is_ok_and(|n| n.starts_with("fencelock-file-")))
}

/// A waiter already waiting when the holder process is SIGKILLed is woken by the kernel's
/// close of the dead holder's liveness file — within a second or two, not at the holder's
/// 60 s TTL and not by polling.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiter_is_woken_when_the_holder_is_killed() {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = format!("file://{}", dir.path().display());
    let mut holder = child("child_hold_forever", dir.path())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn");
    let stdout = holder.stdout.take().expect("stdout");
    let held = tokio::task::spawn_blocking(move || {
        BufReader::new(stdout)
            .lines()
            .any(|l| l.is_ok_and(|l| l.contains("held ")))
    });
    assert!(
        tokio::time::timeout(Duration::from_secs(30), held)
            .await
            .expect("child reported")
            .expect("join"),
        "the child did not hold the lock"
    );
    let locks = fencelock::connect(&url).await.expect("connect");
    let waiter = tokio::spawn(async move {
        let opts = LockOptions::new()
            .with_ttl(Duration::from_secs(60))
            .with_wait(Duration::from_secs(30));
        locks.acquire("crash", &opts).await
    });
    // Bounded poll for the waiter to be waiting (its watch thread exists).
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !waiting_here() {
        assert!(std::time::Instant::now() < deadline, "the waiter never started waiting");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    holder.kill().expect("kill");
    let killed_at = std::time::Instant::now();
    holder.wait().expect("reap");
    let lease = tokio::time::timeout(Duration::from_secs(20), waiter)
        .await
        .expect("the waiter was not woken")
        .expect("join")
        .expect("acquire after the holder was killed");
    let woke = killed_at.elapsed();
    assert!(
        woke < Duration::from_secs(2),
        "the waiter got the lock {woke:?} after the holder was killed"
    );
    lease.release().await.expect("release");
}

#[test]
#[ignore = "started by the_default_directory_is_tmpdir_fencelock_uid_never_xdg_runtime_dir"]
fn child_open_default() {
    let locks = fencelock::file::FileLock::open_default().expect("open the default directory");
    // libtest prints "test NAME ... " before this on the same line: the parent splits at
    // the last "default ".
    println!("default {}", locks.dir().display());
}

#[test]
#[ignore = "started by the_default_directory_is_tmpdir_fencelock_uid_never_xdg_runtime_dir"]
fn child_default_dir() {
    // Computed only, not opened: a run without TMPDIR must not create /tmp/fencelock-UID.
    println!("default {}", fencelock::file::default_dir().display());
}

/// Runs the child test `test` with the given environment and returns the directory it
/// reported.
fn default_dir_with(test: &str, env: &[(&str, Option<&Path>)]) -> PathBuf {
    let scratch = tempfile::tempdir().expect("temp dir");
    let mut cmd = child(test, scratch.path());
    for (name, value) in env {
        match value {
            Some(v) => cmd.env(name, v),
            None => cmd.env_remove(name),
        };
    }
    let out = cmd.output().expect("run child");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "child failed: {text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = text
        .lines()
        .find_map(|l| l.rsplit_once("default ").map(|(_, d)| d.to_owned()))
        .expect("the child printed its directory");
    PathBuf::from(line)
}

/// The default directory is `$TMPDIR/fencelock-UID` (`/tmp/fencelock-UID` without TMPDIR),
/// created 0700, whether or not `XDG_RUNTIME_DIR` is set: a login shell (which has it) and
/// a cron job or systemd unit (which do not) must lock in the same directory, or both get
/// token 1 and run at once.
#[test]
fn the_default_directory_is_tmpdir_fencelock_uid_never_xdg_runtime_dir() {
    use std::os::unix::fs::MetadataExt;
    let runtime = tempfile::tempdir().expect("temp dir");
    let tmp = tempfile::tempdir().expect("temp dir");
    let uid = std::fs::metadata("/proc/self").expect("/proc/self").uid();
    let want = tmp.path().join(format!("fencelock-{uid}"));

    // As in a login shell: XDG_RUNTIME_DIR set.
    let login = default_dir_with(
        "child_open_default",
        &[("XDG_RUNTIME_DIR", Some(runtime.path())), ("TMPDIR", Some(tmp.path()))],
    );
    assert_eq!(login, want, "XDG_RUNTIME_DIR must not be used");
    assert!(
        !runtime.path().join("fencelock").exists(),
        "nothing may be created under XDG_RUNTIME_DIR"
    );
    assert_eq!(std::fs::metadata(&login).expect("created").mode() & 0o777, 0o700);

    // As in cron or a systemd unit: no XDG_RUNTIME_DIR. The same directory.
    let cron = default_dir_with(
        "child_open_default",
        &[("XDG_RUNTIME_DIR", None), ("TMPDIR", Some(tmp.path()))],
    );
    assert_eq!(cron, want);

    // Without TMPDIR (or with one that is not an absolute path), /tmp.
    let slash_tmp = PathBuf::from(format!("/tmp/fencelock-{uid}"));
    for tmpdir in [None, Some(Path::new("")), Some(Path::new("relative/dir"))] {
        let got = default_dir_with(
            "child_default_dir",
            &[("XDG_RUNTIME_DIR", Some(runtime.path())), ("TMPDIR", tmpdir)],
        );
        assert_eq!(got, slash_tmp, "TMPDIR {tmpdir:?}");
    }
}
