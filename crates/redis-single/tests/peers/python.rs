//! The Python peers of `interop_python.rs`: python-redis-lock's `Lock` and pottery's
//! `Redlock` (PyPI, pinned, in a virtualenv the test makes with
//! `fencelock_testkit::python`), driven over `py_lock_peer.py`'s line protocol, and the
//! scenarios both `fencelock-redis` and `fencelock-redlock` run with them (the latter
//! includes this file by path). A missing python3/venv/pip FAILS the test with the install
//! hint. Every wait here is bounded.

#![allow(dead_code)] // each test binary uses its own part

use std::future::Future;
use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use fencelock_core::{DistributedLock, LockOptions};
use fencelock_testkit::interop::{fencelock_kept_out, served, spawn_fencelock_loops, LogCheck, SharedLog};
use fencelock_testkit::keys::unique_key;
use fencelock_testkit::redis_server::RedisServer;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout};
use tokio::time::Instant;

/// Bound on one step of a scenario.
const STEP: Duration = Duration::from_secs(15);

fn ports(servers: &[RedisServer]) -> Vec<u16> {
    servers.iter().map(RedisServer::port).collect()
}

/// The packages the venv holds (pinned: the tests assert the libraries' key names).
pub const PACKAGES: [&str; 3] = ["python-redis-lock==4.0.1", "pottery==3.0.1", "redis==8.2.0"];

/// Which library a peer runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lib {
    /// python-redis-lock: `lock:NAME`, waiters `BLPOP` the list `lock-signal:NAME`.
    PythonRedisLock,
    /// pottery's `Redlock`: `redlock:NAME`, waiters retry every 0–200 ms.
    Pottery,
}

impl Lib {
    /// The name on the peer's command line, which is also fencelock's `layout=` value.
    pub fn name(self) -> &'static str {
        match self {
            Lib::PythonRedisLock => "python-redis-lock",
            Lib::Pottery => "pottery",
        }
    }

    /// The Redis key the library keeps lock `name` under.
    pub fn key(self, name: &str) -> String {
        match self {
            Lib::PythonRedisLock => format!("lock:{name}"),
            Lib::Pottery => format!("redlock:{name}"),
        }
    }
}

fn python() -> &'static Path {
    static PY: OnceLock<std::path::PathBuf> = OnceLock::new();
    PY.get_or_init(|| fencelock_testkit::python::venv(env!("CARGO_TARGET_TMPDIR"), "redis-locks", &PACKAGES))
}

/// One running peer; dropping it kills it (`kill_on_drop`).
pub struct PyPeer {
    pub who: String,
    child: Child,
    stdin: ChildStdin,
    lines: Lines<BufReader<ChildStdout>>,
}

impl PyPeer {
    /// Starts a peer of `lib` on lock `name` at the loopback Redis `ports` (pottery: its
    /// Redlock masters; python-redis-lock: one); returns once it is connected (`ready`).
    pub async fn start(lib: Lib, ports: &[u16], name: &str, who: &str) -> PyPeer {
        // Under crates/redis-single, whichever crate's test includes this module.
        let script = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../redis-single/tests/peers/py_lock_peer.py"
        );
        let ports: Vec<String> = ports.iter().map(u16::to_string).collect();
        let mut child = tokio::process::Command::new(python())
            .arg(script)
            .args([lib.name(), &ports.join(","), name, who])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start the {} peer: {e}: {}",
                    lib.name(),
                    fencelock_testkit::python::HINT
                )
            });
        let stdin = child.stdin.take().unwrap();
        let lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut peer = PyPeer {
            who: who.to_owned(),
            child,
            stdin,
            lines,
        };
        assert_eq!(
            peer.line(Duration::from_secs(30)).await.as_deref(),
            Some("ready"),
            "peer {who} did not start: {}",
            fencelock_testkit::python::HINT
        );
        peer
    }

    /// Sends one command without waiting for its answer.
    pub async fn send(&mut self, cmd: &str) {
        self.stdin.write_all(format!("{cmd}\n").as_bytes()).await.unwrap();
        self.stdin.flush().await.unwrap();
    }

    /// The peer's next line, or `None` when none came within `limit`.
    pub async fn line(&mut self, limit: Duration) -> Option<String> {
        match tokio::time::timeout(limit, self.lines.next_line()).await {
            Ok(Ok(Some(l))) => Some(l),
            Ok(Ok(None)) => panic!("peer {} exited without a line", self.who),
            Ok(Err(e)) => panic!("reading peer {}: {e}", self.who),
            Err(_) => None,
        }
    }

    /// Sends `cmd` and returns its answer (waiting at most `limit`).
    pub async fn ask(&mut self, cmd: &str, limit: Duration) -> String {
        self.send(cmd).await;
        self.line(limit)
            .await
            .unwrap_or_else(|| panic!("peer {} did not answer `{cmd}` within {limit:?}", self.who))
    }

    /// Ends the peer (`quit`) and waits for it to exit.
    pub async fn quit(mut self) {
        assert_eq!(self.ask("quit", Duration::from_secs(10)).await, "bye");
        let status = tokio::time::timeout(Duration::from_secs(10), self.child.wait())
            .await
            .expect("the peer exits")
            .unwrap();
        assert!(status.success(), "peer {}: {status}", self.who);
    }
}

pub fn opts() -> LockOptions {
    LockOptions::new()
        .with_ttl(Duration::from_secs(10))
        .with_wait(Duration::from_secs(20))
}

/// The peer holds; fencelock is refused, waits, and is served once the peer releases.
/// Returns the hand-off latency from the peer's release request to fencelock's grant.
pub async fn peer_holds_fencelock_waits<F, Fut>(lib: Lib, servers: &[RedisServer], connect: F) -> Duration
where
    F: Fn() -> Fut,
    Fut: Future<Output = Arc<dyn DistributedLock>>,
{
    let server = &servers[0];
    let name = unique_key("py");
    let locks = connect().await;
    let mut peer = PyPeer::start(lib, &ports(servers), &name, "peer").await;
    assert_eq!(peer.ask("acquire 5000", STEP).await, "acquired");
    let stored = server.command(&format!("GET {}", lib.key(&name)));
    assert!(!stored.trim().is_empty(), "the peer's value under {}", lib.key(&name));
    let waiter = fencelock_kept_out(&locks, &name, lib.name()).await;
    let released = Instant::now();
    assert_eq!(peer.ask("release", STEP).await, "released");
    let lease = served(waiter).await;
    let latency = released.elapsed();
    let stored = server.command(&format!("GET {}", lib.key(&name)));
    assert!(
        stored.contains(lease.grant().as_str()),
        "fencelock's value under the peer's key: {stored:?}"
    );
    lease.release().await.unwrap();
    peer.quit().await;
    locks.close().await.unwrap();
    latency
}

/// fencelock holds; the peer (asked to wait 10 s) is kept out, and is served once
/// fencelock releases. Returns the hand-off latency from fencelock's release to the peer's
/// grant.
pub async fn fencelock_holds_peer_waits<F, Fut>(lib: Lib, servers: &[RedisServer], connect: F) -> Duration
where
    F: Fn() -> Fut,
    Fut: Future<Output = Arc<dyn DistributedLock>>,
{
    let name = unique_key("py");
    let locks = connect().await;
    let mut peer = PyPeer::start(lib, &ports(servers), &name, "peer").await;
    let lease = locks.acquire(&name, &opts()).await.unwrap();
    peer.send("acquire 10000").await;
    assert_eq!(
        peer.line(Duration::from_millis(1500)).await,
        None,
        "{} took a lock fencelock holds",
        lib.name()
    );
    let released = Instant::now();
    lease.release().await.unwrap();
    assert_eq!(peer.line(STEP).await.as_deref(), Some("acquired"));
    let latency = released.elapsed();
    assert_eq!(peer.ask("release", STEP).await, "released");
    peer.quit().await;
    locks.close().await.unwrap();
    latency
}

/// Two peer loops and two fencelock loops (each its own instance), `rounds` each, on one
/// shared log.
pub async fn mixed_stress<F, Fut>(lib: Lib, servers: &[RedisServer], connect: F, rounds: usize) -> LogCheck
where
    F: Fn() -> Fut,
    Fut: Future<Output = Arc<dyn DistributedLock>>,
{
    let name = unique_key("py-stress");
    let path = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("{name}.log"));
    let log = SharedLog::create(&path);
    let mut tasks = Vec::new();
    for who in ["peer-a", "peer-b"] {
        let mut peer = PyPeer::start(lib, &ports(servers), &name, who).await;
        let cmd = format!("loop {rounds} 20 {}", log.path().display());
        tasks.push(tokio::spawn(async move {
            assert_eq!(peer.ask(&cmd, Duration::from_secs(120)).await, "done");
            peer.quit().await;
        }));
    }
    tasks.extend(spawn_fencelock_loops(connect, &name, rounds, &log).await);
    for t in tasks {
        tokio::time::timeout(Duration::from_secs(180), t)
            .await
            .expect("every loop ends")
            .unwrap();
    }
    let check = log.check();
    let _ = std::fs::remove_file(&path);
    check
}

/// The stress's log shows every round of every loop, no overlap, and fencelock's tokens
/// strictly increasing.
pub fn assert_clean(check: &LogCheck, rounds: usize) {
    check.assert_clean("peer", rounds);
}
