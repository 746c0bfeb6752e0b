//! The real peer clients of the interop tests (issue 17): Curator's `InterProcessMutex`
//! (Debian's jars, `CuratorPeer.java` compiled with `javac` at test time) and kazoo's `Lock`
//! (PyPI, in a virtualenv made at test time, `kazoo_peer.py`). Both speak one line protocol
//! on stdin/stdout (see the peer sources); a missing tool FAILS the test with the command
//! that installs it. Every wait here is bounded.
//!
//! The shared log: each holder appends `<epoch µs> <NAME> enter TOKEN|exit` with one write
//! per line, `enter` after its grant and `exit` before its release, so in file order (which
//! follows the lock's own happens-before) at most one holder may be inside.

#![allow(dead_code)] // each test binary uses its own part

pub mod scenarios;

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::sync::OnceLock;
use std::time::Duration;

/// The kazoo release the venv installs (pinned: the tests assert its node names).
pub const KAZOO_VERSION: &str = "2.11.0";

/// Debian's jars an `InterProcessMutex` needs (with `slf4j-nop` to keep stderr quiet).
const CURATOR_JARS: &[&str] = &[
    "curator-client",
    "curator-framework",
    "curator-recipes",
    "zookeeper",
    "zookeeper-jute",
    "guava",
    "slf4j-api",
    "slf4j-nop",
];

const CURATOR_HINT: &str = "install Curator and a JDK with `apt-get install libcurator-recipes-java default-jdk-headless` (or run scripts/setup-deps)";
const KAZOO_HINT: &str = fencelock_testkit::python::HINT;

/// Where the built peers are kept between runs (`target/tmp/fencelock-interop`).
fn work_dir() -> PathBuf {
    let d = Path::new(env!("CARGO_TARGET_TMPDIR")).join("fencelock-interop");
    std::fs::create_dir_all(&d).expect("create target/tmp/fencelock-interop");
    d
}

fn peers_src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/peers")
}

/// A small, stable fingerprint of the peer's source (FNV-1a), so an edited peer is rebuilt.
fn fingerprint(bytes: &[u8]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h = (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}")
}

/// Runs a setup command, failing the test with its output and `hint` if it fails.
fn run(what: &str, cmd: &mut Command, hint: &str) {
    let out = match cmd.output() {
        Ok(o) => o,
        Err(e) => panic!("{what}: cannot run {cmd:?} ({e}): {hint}"),
    };
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}{}\n{hint}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The classpath of Debian's Curator jars; fails with the install hint if one is missing.
fn curator_classpath() -> String {
    let jars: Vec<String> = CURATOR_JARS
        .iter()
        .map(|j| format!("/usr/share/java/{j}.jar"))
        .collect();
    for j in &jars {
        assert!(Path::new(j).exists(), "{j} is missing: {CURATOR_HINT}");
    }
    jars.join(":")
}

/// Compiles `CuratorPeer.java` once per source version (into target/tmp); returns the
/// classpath to run it with.
fn curator_peer_classpath() -> &'static str {
    static CP: OnceLock<String> = OnceLock::new();
    CP.get_or_init(|| {
        let jars = curator_classpath();
        let src = peers_src().join("CuratorPeer.java");
        let text = std::fs::read(&src).expect("read CuratorPeer.java");
        let out = work_dir().join(format!("curator-{}", fingerprint(&text)));
        if !out.join("CuratorPeer.class").exists() {
            let tmp = work_dir().join(format!("curator-build-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&tmp);
            std::fs::create_dir_all(&tmp).expect("mkdir");
            run(
                "compiling CuratorPeer.java",
                Command::new("javac")
                    .arg("-d")
                    .arg(&tmp)
                    .arg("-cp")
                    .arg(&jars)
                    .arg(&src),
                CURATOR_HINT,
            );
            // Another test binary may have finished first: either copy is good.
            if std::fs::rename(&tmp, &out).is_err() {
                let _ = std::fs::remove_dir_all(&tmp);
            }
        }
        format!("{}:{jars}", out.display())
    })
}

/// A virtualenv with kazoo (made once, by fencelock_testkit::python); returns its python.
fn kazoo_python() -> &'static Path {
    static PY: OnceLock<PathBuf> = OnceLock::new();
    PY.get_or_init(|| {
        fencelock_testkit::python::venv(
            env!("CARGO_TARGET_TMPDIR"),
            &format!("kazoo-{KAZOO_VERSION}"),
            &[&format!("kazoo=={KAZOO_VERSION}")],
        )
    })
}

/// A running peer process. Dropping it kills (SIGKILL) and reaps it.
pub struct Peer {
    pub name: String,
    child: Child,
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<String>,
    stderr: PathBuf,
}

impl Peer {
    /// A Curator `InterProcessMutex` on `path` (absolute, e.g. `/locks/m`).
    pub fn curator(hosts: &str, path: &str, name: &str, log: &Path) -> Peer {
        let mut cmd = Command::new("java");
        cmd.arg("-Xshare:auto")
            .arg("-XX:TieredStopAtLevel=1")
            .arg("-cp")
            .arg(curator_peer_classpath())
            .arg("CuratorPeer")
            .args([hosts, path, name])
            .arg(log);
        Peer::spawn(name, cmd, CURATOR_HINT)
    }

    /// A kazoo `Lock` on `path`; `extra_pattern` goes to `extra_lock_patterns`.
    pub fn kazoo(hosts: &str, path: &str, name: &str, log: &Path, extra_pattern: Option<&str>) -> Peer {
        let mut cmd = Command::new(kazoo_python());
        cmd.arg(peers_src().join("kazoo_peer.py"))
            .args([hosts, path, name])
            .arg(log)
            .args(extra_pattern);
        Peer::spawn(name, cmd, KAZOO_HINT)
    }

    fn spawn(name: &str, mut cmd: Command, hint: &str) -> Peer {
        static SPAWNED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = SPAWNED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let err = std::env::temp_dir().join(format!("fencelock-interop-{name}-{}-{n}.err", std::process::id()));
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&err).expect("peer stderr file"));
        let mut child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => panic!("cannot start peer {name} ({cmd:?}): {e}: {hint}"),
        };
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(std::result::Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut peer = Peer {
            name: name.to_owned(),
            stdin: child.stdin.take(),
            child,
            lines,
            stderr: err,
        };
        let ready = peer.next_line(Duration::from_secs(60));
        assert_eq!(
            ready,
            "ready",
            "peer {name} did not start: {}\n{hint}",
            peer.stderr_text()
        );
        peer
    }

    /// The next line the peer prints, waiting at most `limit`.
    pub fn next_line(&mut self, limit: Duration) -> String {
        match self.lines.recv_timeout(limit) {
            Ok(l) => l,
            Err(e) => panic!(
                "peer {} said nothing within {limit:?} ({e}); its stderr:\n{}",
                self.name,
                self.stderr_text()
            ),
        }
    }

    fn stderr_text(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// Sends one command without waiting for its answer.
    pub fn send(&mut self, cmd: &str) {
        let stdin = self.stdin.as_mut().expect("peer stdin open");
        writeln!(stdin, "{cmd}")
            .and_then(|()| stdin.flush())
            .expect("write to peer");
    }

    /// Sends one command and returns its answer (waiting at most `limit`).
    pub fn ask(&mut self, cmd: &str, limit: Duration) -> String {
        self.send(cmd);
        self.next_line(limit)
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        // Its session's nodes go with it (or with the test's server, stopped next).
        let _ = std::fs::remove_file(&self.stderr);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A shared log for the holders of one lock.
pub struct SharedLog {
    pub path: PathBuf,
    _dir: tempfile::TempDir,
}

impl SharedLog {
    pub fn new() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("fencelock-interop-")
            .tempdir()
            .expect("temp dir");
        let path = dir.path().join("holders.log");
        std::fs::write(&path, "").expect("create log");
        SharedLog { path, _dir: dir }
    }

    /// Appends one line, in one write (as the peers do).
    pub fn append(&self, name: &str, what: &str) {
        LogWriter(self.path.clone()).append(name, what);
    }

    /// Reads the log back and checks it.
    pub fn check(&self) -> LogReport {
        let text = std::fs::read_to_string(&self.path).expect("read log");
        LogReport::parse(&text)
    }
}

/// Appends to a shared log from a task.
pub struct LogWriter(pub PathBuf);

impl LogWriter {
    /// Appends one line, in one write (as the peers do).
    pub fn append(&self, name: &str, what: &str) {
        let micros = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock after 1970")
            .as_micros();
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&self.0)
            .expect("open log");
        f.write_all(format!("{micros} {name} {what}\n").as_bytes())
            .expect("write log");
    }
}

/// What a shared log shows.
#[derive(Debug, Default)]
pub struct LogReport {
    /// `enter` lines written while another holder was inside.
    pub overlaps: usize,
    /// Entries per holder name.
    pub entries: std::collections::BTreeMap<String, usize>,
    /// fencelock's tokens in log order.
    pub tokens: Vec<u64>,
    /// Every holder's token (the peers log their node's czxid) in log order.
    pub all_tokens: Vec<u64>,
    /// Hand-offs between different libraries: (from, to, µs from `exit` to `enter`).
    pub cross_handoffs: Vec<(String, String, u64)>,
}

impl LogReport {
    fn parse(text: &str) -> LogReport {
        let mut r = LogReport::default();
        let mut inside: Vec<String> = Vec::new();
        let mut last_exit: Option<(String, u64)> = None;
        for line in text.lines() {
            let f: Vec<&str> = line.split(' ').collect();
            assert!(f.len() >= 3, "bad log line {line:?}");
            let (at, who, what) = (f[0].parse::<u64>().expect("µs"), f[1].to_owned(), f[2]);
            match what {
                "enter" => {
                    if !inside.is_empty() {
                        r.overlaps += 1;
                    }
                    if let Some((from, t)) = last_exit.take() {
                        if library(&from) != library(&who) {
                            r.cross_handoffs.push((from, who.clone(), at.saturating_sub(t)));
                        }
                    }
                    if let Some(tok) = f.get(3) {
                        let tok: u64 = tok.parse().expect("token");
                        if library(&who) == "fencelock" {
                            r.tokens.push(tok);
                        }
                        r.all_tokens.push(tok);
                    }
                    *r.entries.entry(who.clone()).or_default() += 1;
                    inside.push(who);
                }
                "exit" => {
                    inside.retain(|w| *w != who);
                    last_exit = Some((who, at));
                }
                _ => panic!("bad log line {line:?}"),
            }
        }
        r
    }

    /// `true` when fencelock's tokens only grow.
    pub fn tokens_strictly_increase(&self) -> bool {
        self.tokens.windows(2).all(|w| w[0] < w[1])
    }

    /// `true` when every holder's czxid only grows (one token order for all libraries).
    pub fn all_tokens_strictly_increase(&self) -> bool {
        self.all_tokens.windows(2).all(|w| w[0] < w[1])
    }

    /// Median and maximum of the cross-library hand-offs, in ms.
    pub fn handoff_ms(&self) -> (f64, f64) {
        let mut v: Vec<u64> = self.cross_handoffs.iter().map(|h| h.2).collect();
        v.sort_unstable();
        if v.is_empty() {
            return (f64::NAN, f64::NAN);
        }
        let ms = |us: u64| us as f64 / 1000.0;
        (ms(v[v.len() / 2]), ms(v[v.len() - 1]))
    }
}

/// The library a holder name belongs to: the part before the first `-` (`curator-1`).
fn library(name: &str) -> &str {
    name.split('-').next().unwrap_or(name)
}
