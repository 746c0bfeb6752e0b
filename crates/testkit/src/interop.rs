//! Helpers for the interop tests, where fencelock shares a lock with another library's
//! real client (`etcdctl lock`, node-redlock): a required tool that fails the test with an
//! install hint when it is missing, the pinned node-redlock install, and the shared log
//! both sides append to while they hold the lock, checked for overlaps and tokens.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fencelock_core::{DistributedLock, Lease, LockOptions};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::time::Instant;

/// The node-redlock the tests run, and the Redis client it drives; pinned.
pub const NODE_PACKAGES: [&str; 2] = ["redlock@4.2.0", "ioredis@4.28.5"];

/// Fails the test (never skips) when `program` cannot be run, with `hint`: runs
/// `program probe` (e.g. `["--version"]`; etcdctl takes `["version"]`).
///
/// # Panics
/// When `program probe` cannot be started or fails.
pub fn require_tool(program: &str, probe: &[&str], hint: &str) {
    let ran = Command::new(program)
        .args(probe)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    match ran {
        Ok(s) if s.success() => {}
        Ok(s) => panic!("`{program} {}` failed ({s}): {hint}", probe.join(" ")),
        Err(e) => panic!("{program} is not installed ({e}): {hint}"),
    }
}

static NODE_INSTALL: Mutex<()> = Mutex::new(());

/// Installs [`NODE_PACKAGES`] with the machine's npm under `dir/interop-node` (once: a
/// marker names the packages installed) and returns its `node_modules`, to pass as
/// `NODE_PATH`. `dir` is the test's `CARGO_TARGET_TMPDIR`, so nothing lands in the source
/// tree and every crate's tests share one install.
///
/// # Panics
/// When node or npm is missing, or the install fails (with npm's output and a hint).
pub fn node_redlock(dir: &str) -> PathBuf {
    const HINT: &str = "install Node.js and npm with `apt-get install nodejs npm` (or run scripts/setup-deps); the registry must be reachable for the first run";
    require_tool("node", &["--version"], HINT);
    require_tool("npm", &["--version"], HINT);
    let _one = NODE_INSTALL.lock().unwrap_or_else(|p| p.into_inner());
    let root = Path::new(dir).join("interop-node");
    let modules = root.join("node_modules");
    let marker = root.join("installed");
    let want = NODE_PACKAGES.join(" ");
    if std::fs::read_to_string(&marker).is_ok_and(|m| m == want) {
        return modules;
    }
    std::fs::create_dir_all(&root).unwrap();
    let limit = crate::process::INSTALL_LIMIT;
    let out = crate::process::bounded_command("npm", limit)
        .args(["install", "--no-audit", "--no-fund", "--no-save", "--prefix"])
        .arg(&root)
        // npm's own bounds are per request (ms per fetch, retries per package).
        .args(["--fetch-timeout=30000", "--fetch-retries=2"])
        .args(NODE_PACKAGES)
        .output()
        .unwrap_or_else(|e| panic!("npm did not start ({e}): {HINT}"));
    assert!(
        !crate::process::timed_out(out.status),
        "npm install {want} did not finish within {limit:?}: {HINT}"
    );
    assert!(
        out.status.success(),
        "npm install {want} failed: {}{}\n{HINT}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::write(&marker, &want).unwrap();
    modules
}

/// A log file that every contender appends to while it holds the lock: `enter WHO TOKEN`
/// (`-` when the contender has no token) on entry, `exit WHO` before it releases. Each
/// line is one `write` to a file opened for appending, so lines from several processes
/// never interleave.
#[derive(Debug, Clone)]
pub struct SharedLog {
    path: PathBuf,
}

/// What a [`SharedLog`] shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogCheck {
    /// Entries into the critical section, per contender name (sorted by name).
    pub entries: Vec<(String, usize)>,
    /// Entries made while another contender was inside.
    pub overlaps: usize,
    /// The numeric tokens, in log order.
    pub tokens: Vec<u64>,
    /// Pairs of consecutive numeric tokens that did not increase.
    pub regressions: Vec<(u64, u64)>,
}

impl SharedLog {
    /// A new, empty log at `path`.
    pub fn create(path: &Path) -> Self {
        std::fs::write(path, "").unwrap();
        SharedLog { path: path.to_owned() }
    }

    /// The file, for a peer process to append to.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn line(&self, line: &str) {
        let mut f = OpenOptions::new().append(true).open(&self.path).unwrap();
        f.write_all(format!("{line}\n").as_bytes()).unwrap();
    }

    /// `who` entered with `token`.
    pub fn enter(&self, who: &str, token: Option<u64>) {
        let t = token.map_or("-".to_owned(), |t| t.to_string());
        self.line(&format!("enter {who} {t}"));
    }

    /// `who` is about to leave.
    pub fn exit(&self, who: &str) {
        self.line(&format!("exit {who}"));
    }

    /// Reads the log back.
    pub fn check(&self) -> LogCheck {
        let text = std::fs::read_to_string(&self.path).unwrap();
        let mut inside: Option<String> = None;
        let mut entries = std::collections::BTreeMap::<String, usize>::new();
        let (mut overlaps, mut tokens) = (0, Vec::new());
        for line in text.lines() {
            let mut words = line.split_whitespace();
            match (words.next(), words.next(), words.next()) {
                (Some("enter"), Some(who), token) => {
                    if inside.is_some() {
                        overlaps += 1;
                    }
                    inside = Some(who.to_owned());
                    *entries.entry(who.to_owned()).or_default() += 1;
                    if let Some(t) = token.and_then(|t| t.parse::<u64>().ok()) {
                        tokens.push(t);
                    }
                }
                (Some("exit"), Some(who), _) => {
                    if inside.as_deref() == Some(who) {
                        inside = None;
                    }
                }
                _ => panic!("bad line in the shared log: {line:?}"),
            }
        }
        let regressions = tokens
            .windows(2)
            .filter(|w| w[1] <= w[0])
            .map(|w| (w[0], w[1]))
            .collect();
        LogCheck {
            entries: entries.into_iter().collect(),
            overlaps,
            tokens,
            regressions,
        }
    }
}

/// One node-redlock peer process (`redlock-peer.js`, see the script's header), run by
/// the scenarios below and by a backend's own interop tests.
#[derive(Debug, Clone)]
pub struct NodePeer {
    /// `node_modules` from [`node_redlock`].
    pub modules: PathBuf,
    /// The peer script (`crates/redis-single/tests/peers/redlock-peer.js`).
    pub script: PathBuf,
    /// The Redis servers' loopback ports: one (a single Redis) or several (Redlock).
    pub ports: Vec<u16>,
}

/// Bound on any single step of a scenario.
const STEP: Duration = Duration::from_secs(15);

impl NodePeer {
    fn command(&self, args: &[&str]) -> tokio::process::Command {
        let ports: Vec<String> = self.ports.iter().map(u16::to_string).collect();
        let mut c = tokio::process::Command::new("node");
        c.env("NODE_PATH", &self.modules)
            .arg(&self.script)
            .arg(args[0])
            .arg(ports.join(","))
            .args(&args[1..])
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        c
    }

    /// Starts a peer that takes `resource` (TTL 10 s, waiting up to `wait_ms`) and holds
    /// it until [`HeldPeer::release`]; returns once the peer is connected (`ready`), so a
    /// hand-off is timed from a peer that is already trying, not from Node's start-up.
    pub async fn hold(&self, resource: &str, wait_ms: u64) -> HeldPeer {
        let mut child = self
            .command(&["hold", resource, "10000", &wait_ms.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("node starts");
        let stdin = child.stdin.take();
        let lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut peer = HeldPeer { child, stdin, lines };
        assert_eq!(peer.line(STEP).await.as_deref(), Some("ready"), "the peer connects");
        peer
    }

    /// Runs `rounds` rounds of the peer's loop on `log` as `who` (see the script).
    pub async fn run_loop(&self, resource: &str, rounds: usize, log: &SharedLog, who: &str) {
        let path = log.path().to_string_lossy().into_owned();
        let run = self
            .command(&["loop", resource, "10000", "20000", &rounds.to_string(), &path, who])
            .stdout(Stdio::null())
            .status();
        let status = tokio::time::timeout(Duration::from_secs(60), run)
            .await
            .expect("the peer's loop ends")
            .unwrap();
        assert!(status.success(), "{who}: node-redlock loop: {status}");
    }
}

/// A peer process taking or holding a lock.
#[derive(Debug)]
pub struct HeldPeer {
    child: tokio::process::Child,
    stdin: Option<tokio::process::ChildStdin>,
    lines: Lines<BufReader<tokio::process::ChildStdout>>,
}

impl HeldPeer {
    /// Waits (at most `limit`) for the peer's next line: `held VALUE`, `released`,
    /// `timeout …`; `None` when none came within `limit`.
    pub async fn line(&mut self, limit: Duration) -> Option<String> {
        match tokio::time::timeout(limit, self.lines.next_line()).await {
            Ok(Ok(Some(l))) => Some(l),
            Ok(Ok(None)) => panic!("the peer exited without a line"),
            Ok(Err(e)) => panic!("reading the peer: {e}"),
            Err(_) => None,
        }
    }

    /// Waits for `held VALUE`; returns the value it stored under the key.
    pub async fn held(&mut self) -> String {
        let l = self.line(STEP).await.expect("the peer takes the lock");
        l.strip_prefix("held ")
            .unwrap_or_else(|| panic!("peer said {l:?}"))
            .to_owned()
    }

    /// Tells the peer to release, and waits until it did and exited.
    pub async fn release(mut self) {
        let mut stdin = self.stdin.take().unwrap();
        stdin.write_all(b"go\n").await.unwrap();
        drop(stdin);
        assert_eq!(self.line(STEP).await.as_deref(), Some("released"));
        let status = tokio::time::timeout(STEP, self.child.wait()).await.unwrap().unwrap();
        assert!(status.success(), "the peer: {status}");
    }
}

fn waiting_opts() -> LockOptions {
    LockOptions::new()
        .with_ttl(Duration::from_secs(10))
        .with_wait(Duration::from_secs(20))
}

/// While a peer library (`peer`, for messages) holds `key`: fencelock's `try_acquire` is
/// refused, and an `acquire` (TTL 10 s, wait 20 s) is still waiting 300 ms after it started.
/// Returns that acquire, for [`served`].
pub async fn fencelock_kept_out(
    locks: &Arc<dyn DistributedLock>,
    key: &str,
    peer: &str,
) -> tokio::task::JoinHandle<fencelock_core::Result<Lease>> {
    assert!(
        locks.try_acquire(key, &waiting_opts()).await.unwrap().is_none(),
        "fencelock took a lock {peer} holds"
    );
    let waiter = tokio::spawn({
        let (locks, key) = (Arc::clone(locks), key.to_owned());
        async move { locks.acquire(&key, &waiting_opts()).await }
    });
    // Shows absence: the waiter is still waiting a while after it started.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!waiter.is_finished(), "fencelock's waiter got a lock {peer} holds");
    waiter
}

/// The lease the acquire from [`fencelock_kept_out`] is granted once the peer released
/// (within 15 s).
pub async fn served(waiter: tokio::task::JoinHandle<fencelock_core::Result<Lease>>) -> Lease {
    crate::until::served("fencelock is served", STEP, waiter).await
}

/// node-redlock holds `key`, fencelock (`locks`, configured with the peer's layout) is
/// refused, then waits, and is served once the peer releases. Returns the hand-off
/// latency, from the peer's release request to fencelock's grant.
pub async fn node_redlock_holds_fencelock_waits(
    locks: Arc<dyn DistributedLock>,
    peer: &NodePeer,
    key: &str,
) -> Duration {
    let mut held = peer.hold(key, 5_000).await;
    held.held().await;
    let waiter = fencelock_kept_out(&locks, key, "node-redlock").await;
    let released = Instant::now();
    held.release().await;
    let lease = served(waiter).await;
    let latency = released.elapsed();
    lease.release().await.unwrap();
    latency
}

/// fencelock holds `key`; node-redlock (retrying every 20 ms) is kept out, and gets the
/// lock once fencelock releases. Returns the hand-off latency, from fencelock's release to
/// the peer's `held`.
pub async fn fencelock_holds_node_redlock_waits(
    locks: Arc<dyn DistributedLock>,
    peer: &NodePeer,
    key: &str,
) -> Duration {
    let lease = locks.acquire(key, &waiting_opts()).await.unwrap();
    let mut waiting = peer.hold(key, 10_000).await;
    assert_eq!(
        waiting.line(Duration::from_millis(300)).await,
        None,
        "node-redlock took a lock fencelock holds"
    );
    let released = Instant::now();
    lease.release().await.unwrap();
    waiting.held().await;
    let latency = released.elapsed();
    waiting.release().await;
    latency
}

/// Two node-redlock loops and two fencelock loops (each its own instance from `connect`),
/// `rounds` rounds each, on one shared log; returns what the log shows.
pub async fn node_redlock_mixed_stress<F, Fut>(connect: F, peer: &NodePeer, key: &str, rounds: usize) -> LogCheck
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Arc<dyn DistributedLock>>,
{
    let dir = tempfile::tempdir().unwrap();
    let log = SharedLog::create(&dir.path().join("log"));
    let mut tasks = Vec::new();
    for who in ["node-a", "node-b"] {
        let (peer, key, log) = (peer.clone(), key.to_owned(), log.clone());
        tasks.push(tokio::spawn(
            async move { peer.run_loop(&key, rounds, &log, who).await },
        ));
    }
    tasks.extend(spawn_fencelock_loops(connect, key, rounds, &log).await);
    for t in tasks {
        t.await.unwrap();
    }
    log.check()
}

/// The fencelock half of a mixed stress: two loops, `fencelock-a` and `fencelock-b`, each
/// on its own instance from `connect`, each taking `key` `rounds` times (TTL 10 s, wait
/// 20 s) and logging its token on `log` for 20 ms inside; each closes its instance at the
/// end. Join the returned tasks.
pub async fn spawn_fencelock_loops<F, Fut>(
    connect: F,
    key: &str,
    rounds: usize,
    log: &SharedLog,
) -> Vec<tokio::task::JoinHandle<()>>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Arc<dyn DistributedLock>>,
{
    let mut tasks = Vec::new();
    for who in ["fencelock-a", "fencelock-b"] {
        let (locks, key, log) = (connect().await, key.to_owned(), log.clone());
        tasks.push(tokio::spawn(async move {
            for _ in 0..rounds {
                let lease = locks.acquire(&key, &waiting_opts()).await.unwrap();
                log.enter(who, Some(lease.token().get()));
                tokio::time::sleep(Duration::from_millis(20)).await; // the critical section's work
                log.exit(who);
                lease.release().await.unwrap();
            }
            locks.close().await.unwrap();
        }));
    }
    tasks
}

impl LogCheck {
    /// Asserts what a clean mixed stress shows: every round of the two fencelock loops and
    /// of the two peer loops (`{peer}-a`, `{peer}-b`), no overlap, and fencelock's tokens
    /// strictly increasing.
    pub fn assert_clean(&self, peer: &str, rounds: usize) {
        let mut expected: Vec<(String, usize)> = ["fencelock-a", "fencelock-b"]
            .map(str::to_owned)
            .into_iter()
            .chain(["a", "b"].map(|s| format!("{peer}-{s}")))
            .map(|w| (w, rounds))
            .collect();
        expected.sort();
        assert_eq!(self.entries, expected);
        assert_eq!(self.overlaps, 0, "two holders at once");
        assert_eq!(self.tokens.len(), 2 * rounds);
        assert!(self.regressions.is_empty(), "tokens went back: {:?}", self.regressions);
    }
}

/// The node-redlock interop cases of a backend on Redis servers (one Redis, or Redlock's
/// several), run by [`node_redlock_interop_tests!`](crate::node_redlock_interop_tests).
pub struct NodeInterop {
    /// The backend, for the printed hand-off lines (`redis`, `redlock`).
    pub backend: &'static str,
    /// What bounds fencelock's wait for a lock the peer releases, for the printed line and
    /// the message (`poll 500ms`, `retry_delay 200ms`).
    pub waits_by: &'static str,
    /// The servers both sides use; stopped when this is dropped.
    pub servers: Vec<crate::redis_server::RedisServer>,
    /// The peer, on the same servers.
    pub peer: NodePeer,
    /// A new fencelock instance on the servers, in `layout=bare`, per call.
    pub connect: Box<dyn Fn() -> crate::conformance::BoxFuture<'static, Arc<dyn DistributedLock>> + Send + Sync>,
}

impl NodeInterop {
    /// node-redlock holds, fencelock waits and is served within 600 ms of the release.
    pub async fn peer_holds_fencelock_waits(&self) {
        let key = crate::keys::unique_key("nodelock");
        let latency = node_redlock_holds_fencelock_waits((self.connect)().await, &self.peer, &key).await;
        println!(
            "{} hand-off node-redlock -> fencelock ({}): {latency:?}",
            self.backend, self.waits_by
        );
        assert!(
            latency < Duration::from_millis(600),
            "bounded by the {}: {latency:?}",
            self.waits_by
        );
    }

    /// fencelock's value is a plain string under the peer's own key name on every server;
    /// then fencelock holds and node-redlock waits.
    pub async fn fencelock_holds_peer_waits(&self) {
        let key = crate::keys::unique_key("nodelock");
        let locks = (self.connect)().await;
        let lease = locks.acquire(&key, &LockOptions::new()).await.unwrap();
        for s in &self.servers {
            let stored = s.command(&format!("GET {key}"));
            assert!(stored.contains(lease.grant().as_str()), "GET {key}: {stored:?}");
        }
        lease.release().await.unwrap();
        let latency = fencelock_holds_node_redlock_waits(locks, &self.peer, &key).await;
        println!(
            "{} hand-off fencelock -> node-redlock (its retry 20ms): {latency:?}",
            self.backend
        );
    }

    /// Two node-redlock loops and two fencelock loops, `rounds` each: a clean log.
    pub async fn mixed_stress(&self, rounds: usize) {
        let key = crate::keys::unique_key("nodelock");
        let started = Instant::now();
        let check = node_redlock_mixed_stress(|| (self.connect)(), &self.peer, &key, rounds).await;
        println!(
            "{} mixed stress: {:?} in {:?}",
            self.backend,
            check.entries,
            started.elapsed()
        );
        check.assert_clean("node", rounds);
    }
}

/// Generates the node-redlock interop tests (`node_redlock_holds_and_fencelock_waits`,
/// `fencelock_holds_and_node_redlock_waits`,
/// `mixed_stress_node_redlock_and_fencelock_never_overlap`, 15 rounds) from `$interop`, an
/// expression of a fresh [`NodeInterop`] (evaluated once per test, so each starts its own
/// servers). The calling crate needs `tokio` with `macros` and `rt-multi-thread`.
#[macro_export]
macro_rules! node_redlock_interop_tests {
    ($interop:expr) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn node_redlock_holds_and_fencelock_waits() {
            $interop.peer_holds_fencelock_waits().await;
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn fencelock_holds_and_node_redlock_waits() {
            $interop.fencelock_holds_peer_waits().await;
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn mixed_stress_node_redlock_and_fencelock_never_overlap() {
            $interop.mixed_stress(15).await;
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_log_finds_overlaps_and_regressions() {
        let dir = tempfile::tempdir().unwrap();
        let log = SharedLog::create(&dir.path().join("log"));
        log.enter("a", Some(3));
        log.exit("a");
        log.enter("peer", None);
        log.enter("b", Some(2));
        log.exit("b");
        log.exit("peer");
        let c = log.check();
        assert_eq!(c.overlaps, 1);
        assert_eq!(c.tokens, vec![3, 2]);
        assert_eq!(c.regressions, vec![(3, 2)]);
        assert_eq!(c.entries, vec![("a".into(), 1), ("b".into(), 1), ("peer".into(), 1)]);
    }
}
