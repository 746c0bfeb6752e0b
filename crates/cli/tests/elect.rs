//! `fencelock elect` and `fencelock leader` across processes: five candidates, exactly one
//! command at a time, each with a larger FENCELOCK_TERM; killing the leader's process
//! starts exactly one successor. On file, and on real redis-server(s) (single and Redlock),
//! ZooKeeper, PostgreSQL and etcd (feature `etcd`) started by the test.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail by panicking

use std::path::Path;
use std::process::{Child, Stdio};
use std::time::Duration;

mod common;

use common::{bare, fencelock, poll_until};

/// Kills (SIGKILL) and reaps every candidate still running when the test ends, pass or
/// fail; each one's guard then kills its command's group.
struct Candidates(Vec<Child>);

impl Drop for Candidates {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn lines(log: &Path) -> Vec<String> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

fn spawn(url: &str, i: usize, log: &Path, script: &str) -> Child {
    fencelock(url)
        .args(["elect", "job", "--wait", "60s", "--ttl", "2s", "--kill-after", "1s"])
        .arg("--value")
        .arg(format!("c{i}"))
        .arg("--")
        .args(["sh", "-c", script])
        .env("LOG", log)
        .stdout(Stdio::null())
        .stderr(stderr_file(log, i))
        .spawn()
        .expect("spawn fencelock elect")
}

/// Candidate `i`'s stderr goes to a file beside the log, for the failure message.
fn stderr_file(log: &Path, i: usize) -> std::fs::File {
    std::fs::File::create(log.with_extension(format!("stderr{i}"))).expect("create a stderr file")
}

/// What candidate `i` wrote on stderr.
fn stderr_of(log: &Path, i: usize) -> String {
    std::fs::read_to_string(log.with_extension(format!("stderr{i}"))).unwrap_or_default()
}

/// Redlock's per-node timeout (default 50 ms) sized for a loaded 2-core CI machine: these
/// cases test exclusion and term order, not the timeout; with 50 ms a renewal of five
/// processes' leases under load missed its quorum and a candidate exited 76.
const REDLOCK_OPTS: &str = "per_node_timeout=300ms";

fn file_url(dir: &tempfile::TempDir) -> String {
    format!("file://{}", dir.path().join("locks").display())
}

#[test]
fn file_five_candidates_run_one_at_a_time() {
    let dir = tempfile::tempdir().expect("temp dir");
    one_command_at_a_time(&file_url(&dir), &dir);
}

#[test]
fn redis_five_candidates_run_one_at_a_time() {
    let server = fencelock_testkit::redis_server::RedisServer::start();
    let dir = tempfile::tempdir().expect("temp dir");
    one_command_at_a_time(&server.url(), &dir);
}

#[test]
fn file_killing_the_leader_starts_exactly_one_successor() {
    let dir = tempfile::tempdir().expect("temp dir");
    one_successor_after_kill(&file_url(&dir), &dir);
}

#[test]
fn redis_killing_the_leader_starts_exactly_one_successor() {
    let server = fencelock_testkit::redis_server::RedisServer::start();
    let dir = tempfile::tempdir().expect("temp dir");
    one_successor_after_kill(&server.url(), &dir);
}

#[test]
fn zookeeper_five_candidates_run_one_at_a_time() {
    let zk = fencelock_testkit::zk_server::ZkEnsemble::standalone();
    let dir = tempfile::tempdir().expect("temp dir");
    one_command_at_a_time(&zk.url("/elect", "session_timeout=2s"), &dir);
}

#[test]
fn zookeeper_killing_the_leader_starts_exactly_one_successor() {
    let zk = fencelock_testkit::zk_server::ZkEnsemble::standalone();
    let dir = tempfile::tempdir().expect("temp dir");
    one_successor_after_kill(&zk.url("/elect", "session_timeout=2s"), &dir);
}

#[test]
fn postgres_five_candidates_run_one_at_a_time() {
    let pg = fencelock_testkit::pg_server::PgServer::start();
    let dir = tempfile::tempdir().expect("temp dir");
    one_command_at_a_time(&pg.url(), &dir);
}

#[test]
fn postgres_killing_the_leader_starts_exactly_one_successor() {
    let pg = fencelock_testkit::pg_server::PgServer::start();
    let dir = tempfile::tempdir().expect("temp dir");
    one_successor_after_kill(&pg.url(), &dir);
}

#[test]
fn redlock_five_candidates_run_one_at_a_time() {
    let servers = fencelock_testkit::redis_server::start_many(5);
    let dir = tempfile::tempdir().expect("temp dir");
    one_command_at_a_time(
        &fencelock_testkit::redis_server::redlock_url(&servers, REDLOCK_OPTS),
        &dir,
    );
}

#[test]
fn redlock_killing_the_leader_starts_exactly_one_successor() {
    let servers = fencelock_testkit::redis_server::start_many(5);
    let dir = tempfile::tempdir().expect("temp dir");
    one_successor_after_kill(
        &fencelock_testkit::redis_server::redlock_url(&servers, REDLOCK_OPTS),
        &dir,
    );
}

#[cfg(feature = "etcd")]
#[test]
fn etcd_five_candidates_run_one_at_a_time() {
    let cluster = fencelock_testkit::etcd_server::EtcdCluster::start(1);
    let dir = tempfile::tempdir().expect("temp dir");
    one_command_at_a_time(&cluster.url("session_ttl=2s"), &dir);
}

/// The killed leader's key rides on its session lease: the successor comes within the
/// session TTL (2 s here).
#[cfg(feature = "etcd")]
#[test]
fn etcd_killing_the_leader_starts_exactly_one_successor() {
    let cluster = fencelock_testkit::etcd_server::EtcdCluster::start(1);
    let dir = tempfile::tempdir().expect("temp dir");
    one_successor_after_kill(&cluster.url("session_ttl=2s"), &dir);
}

/// Five candidates, each running a short command: the commands never overlap and each
/// has a larger FENCELOCK_TERM than the one before.
fn one_command_at_a_time(url: &str, dir: &tempfile::TempDir) {
    let url = url.to_owned();
    let log = dir.path().join("log");
    let script = r#"echo "in $FENCELOCK_TERM" >> "$LOG"; sleep 0.1; echo "out $FENCELOCK_TERM" >> "$LOG""#;
    let mut candidates = Candidates((0..5).map(|i| spawn(&url, i, &log, script)).collect());
    for (i, c) in candidates.0.iter_mut().enumerate() {
        poll_until(Duration::from_secs(60), "every candidate exited", || {
            c.try_wait().expect("try_wait").is_some()
        });
        let status = c.wait().expect("wait");
        assert!(
            status.success(),
            "candidate {i} failed ({status}): {}",
            stderr_of(&log, i)
        );
    }
    let lines = lines(&log);
    assert_eq!(lines.len(), 10, "five commands in and out: {lines:?}");
    let mut last_term = 0u64;
    for pair in lines.chunks(2) {
        let term_in: u64 = pair[0]
            .strip_prefix("in ")
            .expect("an `in` line")
            .parse()
            .expect("term");
        assert_eq!(pair[1], format!("out {term_in}"), "two commands overlapped: {lines:?}");
        assert!(term_in > last_term, "term {term_in} after {last_term}: {lines:?}");
        last_term = term_in;
    }
}

/// Five candidates, the leader's command runs until killed: SIGKILL of the leader's
/// `fencelock elect` starts exactly one successor (within the TTL at most), with a
/// larger term, and `fencelock leader` names it.
fn one_successor_after_kill(url: &str, dir: &tempfile::TempDir) {
    let url = url.to_owned();
    let log = dir.path().join("log");
    // Runs until killed (bounded: 60 s).
    let script = r#"echo "in $FENCELOCK_TERM" >> "$LOG"; exec sleep 60"#;
    let mut candidates = Candidates((0..5).map(|i| spawn(&url, i, &log, script)).collect());
    poll_until(Duration::from_secs(20), "a first leader's command started", || {
        lines(&log).len() == 1
    });

    let leader = fencelock(&url)
        .args(["leader", "job"])
        .output()
        .expect("fencelock leader");
    assert!(leader.status.success(), "leader: {leader:?}");
    let text = String::from_utf8(leader.stdout).expect("utf-8");
    let (term, value) = text.trim().split_once(' ').expect("`TERM VALUE`");
    assert_eq!(
        lines(&log)[0],
        format!("in {term}"),
        "`leader` names the running command's term"
    );
    let index: usize = value.strip_prefix('c').expect("value cN").parse().expect("index");

    candidates.0[index].kill().expect("SIGKILL the leader's fencelock");
    candidates.0[index].wait().expect("reap");
    poll_until(Duration::from_secs(20), "a successor's command started", || {
        lines(&log).len() >= 2
    });
    // An observation window (not a synchronisation): a second successor would start within
    // a wake-up of the first.
    std::thread::sleep(Duration::from_millis(500));
    let after = lines(&log);
    assert_eq!(after.len(), 2, "exactly one successor: {after:?}");
    let first: u64 = term.parse().expect("term");
    let second: u64 = after[1].strip_prefix("in ").expect("`in` line").parse().expect("term");
    assert!(second > first, "successor's term {second} after {first}");

    let watch = fencelock(&url)
        .args(["leader", "job"])
        .output()
        .expect("fencelock leader");
    let text = String::from_utf8(watch.stdout).expect("utf-8");
    assert!(
        text.starts_with(&format!("{second} ")),
        "leader after the failover: {text:?}"
    );
}

#[test]
fn leader_watch_prints_each_change() {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = format!("file://{}", dir.path().join("locks").display());
    let out = dir.path().join("watch");
    let watcher = fencelock(&url)
        .args(["leader", "job", "--watch"])
        .stdout(std::fs::File::create(&out).expect("watch output"))
        .spawn()
        .expect("spawn leader --watch");
    let mut watcher = Candidates(vec![watcher]);
    poll_until(Duration::from_secs(10), "the watcher reported the empty seat", || {
        lines(&out) == ["none"]
    });
    let log = dir.path().join("log");
    for i in 0..3 {
        let status = fencelock(&url)
            .args(["elect", "job", "--value", &format!("v{i}"), "--"])
            .args(["sh", "-c", "sleep 0.3"])
            .env("LOG", &log)
            .status()
            .expect("elect");
        assert!(status.success());
    }
    // Each leader holds the seat for 300 ms, far longer than the file observer's 20 ms
    // poll, so none may be skipped; the gaps between them may be (a poll may miss them).
    poll_until(Duration::from_secs(10), "the watcher saw the last leader go", || {
        let l = lines(&out);
        l.last().map(String::as_str) == Some("none") && l.iter().any(|x| x.ends_with(" v2"))
    });
    let seen: Vec<String> = lines(&out).into_iter().filter(|l| l != "none").collect();
    let values: Vec<&str> = seen.iter().map(|l| l.split_once(' ').expect("TERM VALUE").1).collect();
    assert_eq!(values, ["v0", "v1", "v2"], "{seen:?}");
    let terms: Vec<u64> = seen
        .iter()
        .map(|l| l.split_once(' ').unwrap().0.parse().unwrap())
        .collect();
    assert!(terms.windows(2).all(|w| w[0] < w[1]), "{terms:?}");
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(watcher.0[0].id() as i32).expect("pid"),
        rustix::process::Signal::TERM,
    )
    .expect("SIGTERM the watcher");
    let status = watcher.0[0].wait().expect("wait for the watcher");
    assert!(status.success(), "leader --watch exits 0 on SIGTERM: {status:?}");
}

/// `fencelock lab paused-leader` on one backend: A's write with its old term is refused,
/// B's are accepted, and the table has the row (one late action: A's write).
fn lab_paused_leader(url: &str) {
    let dir = tempfile::tempdir().expect("temp dir");
    let report = dir.path().join("safety.md");
    let out = fencelock(url)
        .args(["lab", "paused-leader", "--report"])
        .arg(&report)
        .output()
        .expect("run the lab");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        text.contains("writes with its old term") && text.contains(": refused"),
        "{text}"
    );
    assert!(
        !text.contains("ACCEPTED (stale)") && !text.contains("REFUSED"),
        "{text}"
    );
    let written = std::fs::read_to_string(&report).expect("report written");
    // The backend column names the backend (`memory`, `etcd`, …); the counts are what matter.
    assert!(
        written
            .lines()
            .any(|l| l.starts_with("| paused-leader | ") && l.ends_with(" | 0 | 0 | 0 | 1 | 0 | – | – |")),
        "{written}"
    );
}

#[test]
fn lab_paused_leader_is_fenced_on_memory() {
    lab_paused_leader("memory://lab-leader");
}

#[cfg(feature = "etcd")]
#[test]
fn lab_paused_leader_is_fenced_on_etcd() {
    let cluster = fencelock_testkit::etcd_server::EtcdCluster::start(1);
    lab_paused_leader(&cluster.url(""));
}

/// `require` in the configuration binds `elect` and `leader` as it binds `run`: a Redis
/// without persistence hands out best-effort terms (they restart at 1 after a restart),
/// which `require = "monotonic_tokens"` exists to refuse. (A newcomer's `elect` ran under
/// that requirement with exit 0, and its terms went 3 → 1 across a Redis restart.)
#[test]
fn elect_and_leader_honour_the_configured_requirement() {
    let server = fencelock_testkit::redis_server::RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("mono.toml");
    std::fs::write(
        &config,
        format!("backend = \"{}\"\nrequire = \"monotonic_tokens\"\n", server.url()),
    )
    .unwrap();
    let marker = dir.path().join("ran");
    for args in [
        vec!["elect", "sched", "--", "touch", marker.to_str().unwrap()],
        vec!["leader", "sched"],
    ] {
        let out = bare().arg("--config").arg(&config).args(&args).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            out.status.code(),
            Some(78),
            "{args:?} under an unmet requirement: {stderr}"
        );
        assert!(
            stderr.contains("best effort"),
            "{args:?}: the message says what is missing: {stderr}"
        );
    }
    assert!(!marker.exists(), "elect ran its command under an unmet requirement");
    // The same backend under `any` elects (the requirement, not the backend, refused).
    std::fs::write(&config, format!("backend = \"{}\"\n", server.url())).unwrap();
    let out = bare()
        .arg("--config")
        .arg(&config)
        .args(["elect", "sched", "--", "touch", marker.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(marker.exists());
}

/// A value published through the library may hold what `elect --value` refuses (a newline,
/// a line separator): `leader` prints it escaped, one line per state, so no reader of the
/// output is handed a forged `TERM VALUE` line. Before, the value was printed raw: `461
/// host-a` and `999999 attacker` on two lines.
#[test]
fn leader_prints_one_line_whatever_the_value() {
    let dir = tempfile::tempdir().unwrap();
    let url = file_url(&dir);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let value = "host-a\n999999 attacker\u{2028}x";
    let leadership = rt.block_on(async {
        let election = fencelock::connect_election(&url).await.unwrap();
        election
            .campaign("svc", value.as_bytes(), &fencelock::LockOptions::new())
            .await
            .unwrap()
    });
    let out = fencelock(&url).args(["leader", "svc"]).output().unwrap();
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(
        out.status.success(),
        "{stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        stdout,
        format!("{} host-a\\n999999 attacker\\u{{2028}}x\n", leadership.term()),
        "one line, the value escaped"
    );
    rt.block_on(leadership.resign()).unwrap();
}
