//! Issue 14: a waiter whose process dies while queued (SIGKILL: no close, no delete) delays
//! the live waiters behind it by the waiting session's timeout, not the session timeout;
//! a waiter that was only paused past it queues again and never holds beside the next;
//! a holder's node is never removed. This test binary re-runs itself as the processes
//! that die or pause (the `child_*` tests, ignored in a normal run and started by the
//! parents below).
//!
//! The test server's `tickTime` is 100 ms, so the waiting session gets the 1 s it asks
//! for (a stock server raises it to 4 s); every client's session timeout is 10 s.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail by panicking

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use fencelock_core::{DistributedLock, LockOptions};
use fencelock_testkit::proxy::{FaultProxy, Mode};
use fencelock_testkit::until::{served, until, until_async};
use fencelock_testkit::zk_server::ZkEnsemble;
use fencelock_zk::ZkLock;
use tokio::time::Instant;

const URL_ENV: &str = "FENCELOCK_ZK_DEAD_WAITER_URL";

/// The session timeout of every client here: what a dead waiter cost before.
const SESSION: Duration = Duration::from_secs(10);

/// The longest the next live waiter may wait after the holder's release with a dead
/// waiter queued between them: the waiting session's 1 s, its expiry's tick, the
/// removal's commit and the push, with room for a loaded machine.
const BOUND: Duration = Duration::from_secs(3);

/// The bound of every other step.
const SLACK: Duration = Duration::from_secs(10);

fn child_opts() -> LockOptions {
    LockOptions::new()
        .with_ttl(Duration::from_secs(30))
        .with_wait(Duration::from_secs(60))
}

/// Runs `body` as a child process's test: on a runtime of its own, with a client of the
/// URL its parent passed in [`URL_ENV`].
fn as_child(body: impl AsyncFnOnce(ZkLock)) {
    let url = std::env::var(URL_ENV).expect("run by the parent test");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let locks = ZkLock::connect(&url).await.expect("connect");
        body(locks).await;
    });
}

/// Waits for a line from the parent on stdin (read off the runtime's threads).
async fn told() {
    tokio::task::spawn_blocking(|| {
        let mut line = String::new();
        std::io::stdin().read_line(&mut line).expect("stdin");
    })
    .await
    .unwrap();
}

/// Child: queues for `k` and waits; the parent SIGKILLs it while it waits.
#[test]
#[ignore = "started by the parents below"]
fn child_waits_for_k() {
    as_child(async |locks| {
        let got = locks.acquire("k", &child_opts()).await;
        panic!("the child was meant to die while waiting, but its acquire ended: {got:?}");
    });
}

/// Child: acquires `k`, prints `granted TOKEN`, waits for a line on stdin, releases, prints
/// `released`.
#[test]
#[ignore = "started by the parents below"]
fn child_holds_k_until_told() {
    as_child(async |locks| {
        let lease = locks.acquire("k", &child_opts()).await.expect("acquire");
        println!("granted {}", lease.token().get());
        told().await;
        // Just resumed from a pause, the client may drop its connection (nothing heard
        // for longer than its connection timeout) with the delete in flight: the delete
        // then goes on in the background, which `close` waits for.
        match lease.release().await {
            Ok(()) => {}
            Err(e) if e.is_temporary() => println!("release unconfirmed: {e}"),
            Err(e) => panic!("release: {e}"),
        }
        locks.close().await.expect("close");
        println!("released");
    });
}

/// Child: acquires `k` with a 250 ms TTL, prints `granted TOKEN` and the lease's remaining
/// validity, and stops itself (SIGSTOP) at once — before its first renewal could claim its
/// node; once continued, waits for a line on stdin, releases, and prints how the release
/// went. The short TTL keeps the node unclaimed at the turn: the waiting marker's bound
/// (at most 500 ms after its last proof on the test server, at least about 160 ms with a
/// proof every 333 ms) is then rarely under half of the TTL, which `grant::settle` claims
/// before granting (with the 30 s TTL every grant here is claimed at the turn).
#[test]
#[ignore = "started by a_holder_paused_before_its_claim_never_overlaps_the_next"]
fn child_pauses_as_granted() {
    as_child(async |locks| {
        let opts = child_opts().with_ttl(Duration::from_millis(250));
        let lease = locks.acquire("k", &opts).await.expect("acquire");
        println!("granted {}", lease.token().get());
        println!("remaining {}", lease.remaining().as_nanos());
        let me = std::process::id().to_string();
        let stopped = Command::new("kill").args(["-STOP", &me]).status().expect("kill");
        assert!(stopped.success());
        told().await;
        match lease.release().await {
            Ok(()) => println!("release: held from start to end"),
            Err(e) if e.is_lease_lost() => println!("release: lost"),
            Err(e) => println!("release: {e}"),
        }
        let _ = locks.close().await;
    });
}

/// A child process, SIGKILLed and reaped when dropped (a failing test leaves none). Its
/// stdout is read by a thread of its own, which ends when the child does.
struct Proc {
    child: Child,
    /// Each line with the instant it was read.
    lines: tokio::sync::mpsc::UnboundedReceiver<(Instant, String)>,
}

impl Proc {
    fn start(test: &str, url: &str) -> Proc {
        let mut child = Command::new(std::env::current_exe().expect("current exe"))
            .args(["--exact", test, "--ignored", "--nocapture", "--test-threads=1"])
            .env(URL_ENV, url)
            .stdout(Stdio::piped())
            .stdin(Stdio::piped())
            .spawn()
            .expect("start the child");
        let out = BufReader::new(child.stdout.take().expect("stdout"));
        let (tx, lines) = tokio::sync::mpsc::unbounded_channel();
        std::thread::spawn(move || {
            for line in out.lines() {
                let Ok(line) = line else { return };
                if tx.send((Instant::now(), line)).is_err() {
                    return;
                }
            }
        });
        Proc { child, lines }
    }

    fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()
            .expect("kill");
        assert!(ok.success(), "kill {sig}");
    }

    /// SIGKILL, and wait for the process to be gone.
    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// The token of the child's `granted TOKEN` line, if one comes within `limit`.
    async fn granted(&mut self, limit: Duration) -> Option<u64> {
        let deadline = Instant::now() + limit;
        for _ in 0..1000 {
            let (_, line) = tokio::time::timeout_at(deadline, self.lines.recv()).await.ok()??;
            // The test harness may print its `test NAME ... ` before it on the same line.
            if let Some((_, t)) = line.trim().rsplit_once("granted ") {
                return Some(t.parse().expect("a token"));
            }
        }
        None
    }

    /// The rest of the child's next line holding `prefix`, and when it was read, within
    /// `limit`.
    async fn line(&mut self, prefix: &str, limit: Duration) -> Option<(Instant, String)> {
        let deadline = Instant::now() + limit;
        for _ in 0..1000 {
            let (at, line) = tokio::time::timeout_at(deadline, self.lines.recv()).await.ok()??;
            if let Some((_, rest)) = line.split_once(prefix) {
                return Some((at, rest.trim().to_owned()));
            }
        }
        None
    }

    /// Tells a `child_holds_k_until_told` to release, and waits for it to end.
    fn release_and_end(mut self) {
        writeln!(self.child.stdin.as_mut().expect("stdin"), "release").expect("write");
        let start = std::time::Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                assert!(status.success(), "the child failed: {status}");
                return;
            }
            assert!(start.elapsed() < SLACK, "the child did not end");
            std::thread::sleep(Duration::from_millis(20)); // polling a child's exit
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// An operator's view of the queue.
struct Operator(zookeeper_client::Client);

impl Operator {
    async fn connect(ensemble: &ZkEnsemble, chroot: &str) -> Operator {
        let client = zookeeper_client::Client::connector()
            .with_session_timeout(SESSION)
            .connect(&format!("{}{chroot}", ensemble.endpoints().join(",")))
            .await
            .expect("the operator's connection");
        Operator(client)
    }

    /// The queue's nodes, oldest first.
    async fn nodes(&self) -> Vec<String> {
        let mut children = match self.0.list_children("/k").await {
            Ok(c) => c,
            Err(zookeeper_client::Error::NoNode) => Vec::new(),
            Err(e) => panic!("list /k: {e}"),
        };
        children.sort_by_key(|c| c[c.len() - 10..].to_owned());
        children
    }

    /// The data of a node of the queue (empty if it is gone).
    async fn data(&self, node: &str) -> Vec<u8> {
        match self.0.get_data(&format!("/k/{node}")).await {
            Ok((data, _)) => data,
            Err(_) => Vec::new(),
        }
    }
}

/// What the data of a waiter's node that names its waiting marker starts with (the
/// marker's path follows).
const MARKER_PREFIX: &[u8] = b"fencelock-waiting:";

fn names_a_marker(data: &[u8]) -> bool {
    data.starts_with(MARKER_PREFIX)
}

/// Starts an acquire of `k` by `locks` that waits up to three session timeouts.
fn queue_up(locks: &ZkLock) -> tokio::task::JoinHandle<fencelock_core::Result<fencelock_core::Lease>> {
    let locks = locks.clone();
    tokio::spawn(async move { locks.acquire("k", &child_opts().with_wait(SESSION * 3)).await })
}

/// A fault proxy in front of the server of `ensemble`, and a client of `root` through it
/// (session timeout [`SESSION`]).
async fn set_up_behind_proxy(ensemble: &ZkEnsemble, root: &str) -> (FaultProxy, ZkLock) {
    let proxy = FaultProxy::start(ensemble.port(0)).await;
    let proxied = format!(
        "zk://127.0.0.1:{}{root}?session_timeout={}s",
        proxy.port(),
        SESSION.as_secs()
    );
    let locks = ZkLock::connect(&proxied).await.unwrap();
    (proxy, locks)
}

/// Releases `lease` (held by `first`); `next` (the acquire of `second`) is then served
/// within [`SLACK`], with a higher token, and releases in turn.
async fn release_and_serve_the_next(
    lease: fencelock_core::Lease,
    next: tokio::task::JoinHandle<fencelock_core::Result<fencelock_core::Lease>>,
    first: &str,
    second: &str,
) {
    let token = lease.token();
    lease.release().await.unwrap();
    let again = served(&format!("{second} is served after {first}"), SLACK, next).await;
    assert!(again.token() > token, "{second} was granted before {first}'s token");
    again.release().await.unwrap();
}

/// A standalone server, the URL of `root` on it (session timeout [`SESSION`]), two clients
/// of it and an operator: what the waiting-session tests start from.
async fn set_up(root: &str) -> (ZkEnsemble, String, ZkLock, ZkLock, Operator) {
    let ensemble = ZkEnsemble::standalone();
    let url = ensemble.url(root, &format!("session_timeout={}s", SESSION.as_secs()));
    let (a, b) = (
        ZkLock::connect(&url).await.unwrap(),
        ZkLock::connect(&url).await.unwrap(),
    );
    let op = Operator::connect(&ensemble, root).await;
    (ensemble, url, a, b, op)
}

/// A holder; a child process queued behind it, its node naming its waiting marker; a
/// live waiter behind the child, watching. Returns the child, the live waiter's task and
/// the child's node.
async fn child_between(
    ensemble: &ZkEnsemble,
    op: &Operator,
    url: &str,
    child: &str,
    live: &ZkLock,
) -> (
    Proc,
    tokio::task::JoinHandle<fencelock_core::Result<fencelock_core::Lease>>,
    String,
) {
    let proc = Proc::start(child, url);
    let mut node = String::new();
    until_async("the child queued, naming its marker", SLACK * 2, async || {
        let nodes = op.nodes().await;
        if nodes.len() != 2 {
            return false;
        }
        node = nodes[1].clone();
        names_a_marker(&op.data(&node).await)
    })
    .await;
    let watching = ensemble.watch_count(0).expect("wchs");
    let next = queue_up(live);
    // The live waiter watches its own node, the two before it and the child's marker.
    until_async("the live waiter queued and watching", SLACK, async || {
        op.nodes().await.len() == 3 && ensemble.watch_count(0).expect("wchs") >= watching + 4
    })
    .await;
    (proc, next, node)
}

/// A waiter D (a child process) is SIGKILLed while queued behind a holder; the live waiter
/// W right behind it, whose removal of D's node it would be, cannot act: its main
/// connection (through the fault proxy) goes silent while its waiting session (another
/// connection of the same proxy, pinned open) keeps proving. A waiter X behind W watches
/// only W's marker, the nearest. The holder releases once W's client has noticed the
/// silence: X is served within [`BOUND`] of the release — W, which cannot act, gives its
/// place up (its waiting session ends, X removes its node, then D's) instead of keeping it
/// until its session or D's expires ([`SESSION`]). W, reconnected, queues again behind X
/// and is served after it, never beside it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_waiter_behind_a_cut_off_one_delays_the_rest_by_a_bounded_interval() {
    let (ensemble, url, holder, last, op) = set_up("/cut-waiter").await;
    let (proxy, cut) = set_up_behind_proxy(&ensemble, "/cut-waiter").await;
    let held = holder.acquire("k", &child_opts()).await.unwrap();
    // W: its waiting session is the one connection the proxy opens while it queues (D
    // connects around the proxy).
    let opened = proxy.connections();
    // D queued, naming its marker; W behind it, watching its own node, the two before it
    // and D's marker.
    let (mut dead, w, _) = child_between(&ensemble, &op, &url, "child_waits_for_k", &cut).await;
    until_async("W names its marker", SLACK, async || {
        let nodes = op.nodes().await;
        nodes.len() == 3 && names_a_marker(&op.data(&nodes[2]).await)
    })
    .await;
    assert_eq!(
        proxy.connections(),
        opened + 1,
        "W opened more than its waiting session's connection"
    );
    let w_node = op.nodes().await[2].clone();
    let watching = ensemble.watch_count(0).expect("wchs");
    let x = queue_up(&last);
    // X watches its own node, the three before it and W's marker (the nearest).
    until_async("X queued and watching", SLACK, async || {
        op.nodes().await.len() == 4 && ensemble.watch_count(0).expect("wchs") >= watching + 5
    })
    .await;

    dead.kill();
    // W's main connection goes silent; its waiting session's stays.
    assert!(proxy.pin(opened, Mode::Pass), "W's waiting connection");
    proxy.set(Mode::Blackhole);
    let attempts = proxy.accepted();
    // W's client drops the silent connection (after 2/5 of its session timeout) and tries
    // to connect again, into the silence.
    until_async("W's client noticed the silence", SLACK, async || {
        proxy.accepted() > attempts
    })
    .await;
    let released = Instant::now();
    held.release().await.unwrap();
    let lease = served("X is served within two session timeouts", SESSION * 2, x).await;
    let waited = released.elapsed();
    println!("X got the lock {waited:?} after the release, behind a dead waiter and a cut-off one");
    assert!(
        waited < BOUND,
        "X got the lock {waited:?} after the release, behind a dead waiter and a waiter whose \
         main connection was cut; the bound is {BOUND:?} (session timeout {SESSION:?})"
    );
    assert_eq!(op.nodes().await.len(), 1, "a node besides X's is left");
    // W reconnects in its session, finds its node removed, and queues again behind X.
    proxy.set(Mode::Pass);
    until_async("W queued again", SLACK, async || {
        let nodes = op.nodes().await;
        nodes.len() == 2 && !nodes.contains(&w_node)
    })
    .await;
    assert!(!w.is_finished(), "W was served beside X");
    release_and_serve_the_next(lease, w, "X", "W").await;
    cut.close().await.unwrap();
    last.close().await.unwrap();
    holder.close().await.unwrap();
}

/// The other side of giving a place up: a waiter whose main connection is closed and
/// connects again at once (its waiting session's connection untouched) keeps its node and
/// its place — its instance gives them up only once its waiting session was answered for a
/// whole waiting timeout with the main session disconnected. Served with the node it
/// queued, before the waiter behind it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiter_whose_main_connection_drops_briefly_keeps_its_place() {
    let (ensemble, _url, holder, last, op) = set_up("/blip").await;
    let (proxy, blinking) = set_up_behind_proxy(&ensemble, "/blip").await;
    let held = holder.acquire("k", &child_opts()).await.unwrap();
    let opened = proxy.connections();
    let w = queue_up(&blinking);
    until_async("W queued, naming its marker", SLACK, async || {
        let nodes = op.nodes().await;
        nodes.len() == 2 && names_a_marker(&op.data(&nodes[1]).await)
    })
    .await;
    assert_eq!(proxy.connections(), opened + 1, "W's waiting session's connection");
    let w_node = op.nodes().await[1].clone();
    let (w_data, stat) = op.0.get_data(&format!("/k/{w_node}")).await.unwrap();
    // The marker's path under the operator's chroot (the data names it with the chroot).
    let marker = std::str::from_utf8(&w_data[MARKER_PREFIX.len()..])
        .unwrap()
        .strip_prefix("/blip")
        .unwrap()
        .to_owned();
    let x = queue_up(&last);
    until_async("X queued", SLACK, async || op.nodes().await.len() == 3).await;

    assert!(proxy.pin(opened, Mode::Pass), "W's waiting connection");
    proxy.set(Mode::Reset);
    let attempts = proxy.accepted();
    until_async("W's client tried to connect again", SLACK, async || {
        proxy.accepted() > attempts
    })
    .await;
    // The fault lasts until the keeper's proof of the marker (every third of the waiting
    // session's 1 s) is answered once more with the main connection down: short of the
    // four answered writes that give the place up by two or more of them (0.67 s), so
    // the main client's reconnect backoff, which a longer outage lengthens, fits on a
    // loaded machine (a fixed 0.6 s outage left about 0.2 s).
    // The keeper's proofs leave the marker as it is (a `check` in a `multi`): counted by
    // the last request the server answered on the session the marker is named after.
    let keeper = format!("0x{}", marker.rsplit("/m-").next().unwrap());
    let answered = || ensemble.last_answered_of(0, &keeper);
    let before = answered();
    until(
        "a proof of W's marker answered with its main connection down",
        SLACK,
        || answered() > before,
    )
    .await;
    proxy.set(Mode::Pass);
    held.release().await.unwrap();
    let lease = served(
        "W is served in its place (not given up to X, which is then served first)",
        SLACK,
        w,
    )
    .await;
    assert_eq!(
        i64::try_from(lease.token().get()).unwrap(),
        stat.czxid,
        "W was not served with the node it queued (it gave its place up?)"
    );
    assert!(!x.is_finished(), "X was served before W");
    release_and_serve_the_next(lease, x, "W", "X").await;
    blinking.close().await.unwrap();
    last.close().await.unwrap();
    holder.close().await.unwrap();
}

/// The middle process is SIGKILLed while it waits, the holder releases at once: its node
/// is first when its waiting marker goes, and the live waiter behind it removes it (it was
/// never claimed) and gets the lock within [`BOUND`] of the release — not after the dead
/// process's session expires ([`SESSION`]). Before the waiting session: "the live waiter
/// got the lock 10.022054142s after the release".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiter_killed_while_queued_delays_the_next_by_a_bounded_interval() {
    let (ensemble, url, holder, live, op) = set_up("/dead-waiter").await;
    let held = holder.acquire("k", &child_opts()).await.unwrap();
    let (mut victim, next, _) = child_between(&ensemble, &op, &url, "child_waits_for_k", &live).await;

    victim.kill();
    let released = Instant::now();
    held.release().await.unwrap();
    let lease = served(
        "the live waiter is served within two session timeouts",
        SESSION * 2,
        next,
    )
    .await;
    let waited = released.elapsed();
    println!("the live waiter got the lock {waited:?} after the release");
    assert!(
        waited < BOUND,
        "the live waiter got the lock {waited:?} after the release, behind a dead waiter; \
         the bound is {BOUND:?} (session timeout {SESSION:?})"
    );
    lease.release().await.unwrap();
    live.close().await.unwrap();
    holder.close().await.unwrap();
}

/// A waiter paused (SIGSTOP) past its waiting session's timeout, but not its session's, has
/// its node removed by the waiter behind it; the holder releases and that one is served.
/// Resumed, the paused waiter queues again — it never takes the pushes of the nodes before
/// its removed one for its turn — and is served after the live one, with a higher token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_waiter_whose_node_was_removed_queues_again_and_never_holds_beside_the_next() {
    let (ensemble, url, holder, live, op) = set_up("/paused-waiter").await;
    let held = holder.acquire("k", &child_opts()).await.unwrap();
    let (paused, next, node) = child_between(&ensemble, &op, &url, "child_holds_k_until_told", &live).await;

    paused.signal("-STOP");
    let stopped = Instant::now();
    until_async("the paused waiter's node removed", SLACK, async || {
        !op.nodes().await.contains(&node)
    })
    .await;
    println!(
        "the paused waiter's node was removed {:?} after SIGSTOP",
        stopped.elapsed()
    );
    held.release().await.unwrap();
    let lease = served("the live waiter is served", SLACK, next).await;
    paused.signal("-CONT");
    // It queues again, behind the holder: a new node, and no `granted` line yet.
    until_async("the resumed waiter queued again", SLACK, async || {
        let nodes = op.nodes().await;
        nodes.len() == 2 && !nodes.contains(&node)
    })
    .await;
    let token = lease.token().get();
    let mut paused = paused;
    assert_eq!(
        paused.granted(Duration::ZERO).await,
        None,
        "the resumed waiter was granted beside the live one"
    );
    lease.release().await.unwrap();
    let again = paused
        .granted(SLACK)
        .await
        .expect("the resumed waiter is served after the live one");
    assert!(
        again > token,
        "the resumed waiter was granted token {again}, not after the live one's {token}: it held beside it"
    );
    paused.release_and_end();
    live.close().await.unwrap();
    holder.close().await.unwrap();
}

/// A holder that waited for its grant claims its node at its first renewal; paused
/// (SIGSTOP) past its waiting session's timeout after that, its marker goes, and the
/// waiter behind it, which watched that marker, still never removes its node: it is served
/// only after the holder, resumed, releases.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_holder_s_node_is_never_removed() {
    let (ensemble, url, first, live, op) = set_up("/claimed").await;
    let held = first.acquire("k", &child_opts()).await.unwrap();
    let (proc, next, node) = child_between(&ensemble, &op, &url, "child_holds_k_until_told", &live).await;
    held.release().await.unwrap();
    let mut proc = proc;
    let token = proc.granted(SLACK).await.expect("the child is served");
    until_async("the child's grant claimed its node", SLACK, async || {
        op.data(&node).await.is_empty()
    })
    .await;
    proc.signal("-STOP");
    // The child's waiting marker goes (its session expires, or was closed after the claim).
    until_async("the child's waiting marker gone", SLACK, async || {
        op.0.list_children("/%waiting").await.map(|c| c.len()).unwrap_or(0) <= 1
    })
    .await;
    // Time for a waiter that would remove the node: the marker's deletion reached it.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(op.nodes().await.first(), Some(&node), "the holder's node was removed");
    assert!(
        !next.is_finished(),
        "the live waiter was served while the child held the lock"
    );
    proc.signal("-CONT");
    proc.release_and_end();
    let lease = served("the live waiter is served after the release", SLACK, next).await;
    assert!(lease.token().get() > token);
    lease.release().await.unwrap();
    live.close().await.unwrap();
    first.close().await.unwrap();
}

/// A waiter granted on the push stops (SIGSTOP) before its first renewal could claim its
/// node. Its grant was valid no longer than its waiting marker was sure to live, so when
/// the marker goes and the waiter behind it removes the node and is served, the stopped
/// holder's validity has run out: resumed, its release says the lease was lost (not "held
/// from start to end"), and its token is below the next holder's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_holder_paused_before_its_claim_never_overlaps_the_next() {
    let (ensemble, url, first, live, op) = set_up("/unclaimed").await;
    let held = first.acquire("k", &child_opts()).await.unwrap();
    let (mut proc, next, node) = child_between(&ensemble, &op, &url, "child_pauses_as_granted", &live).await;
    held.release().await.unwrap();
    let token = proc.granted(SLACK).await.expect("the child is served");
    let (read, remaining) = proc.line("remaining ", SLACK).await.expect("the child's validity");
    // An upper bound of the end of its validity (read after it was printed).
    let ends = read + Duration::from_nanos(remaining.parse().expect("nanoseconds"));
    assert!(
        names_a_marker(&op.data(&node).await),
        "the child claimed its node before it stopped"
    );
    let lease = served(
        "the live waiter is served once the stopped holder's marker is gone",
        SLACK,
        next,
    )
    .await;
    let served = Instant::now();
    println!(
        "the stopped holder's validity ended {:?} before the live waiter was served",
        served.saturating_duration_since(ends)
    );
    assert!(
        ends <= served,
        "the stopped holder's validity ran {:?} past the live waiter's grant",
        ends - served
    );
    assert!(lease.token().get() > token);
    assert!(
        !op.nodes().await.contains(&node),
        "the stopped holder's node is still there"
    );
    proc.signal("-CONT");
    writeln!(proc.child.stdin.as_mut().expect("stdin"), "release").expect("write");
    let (_, outcome) = proc.line("release: ", SLACK).await.expect("the child's release");
    assert_eq!(
        outcome, "lost",
        "the stopped holder believed it held the lock throughout"
    );
    lease.release().await.unwrap();
    live.close().await.unwrap();
    first.close().await.unwrap();
}

/// An instance that keeps a waiting session (one of its acquires waits) and takes another
/// key that nobody holds: that create names no marker, so the grant has the session's
/// whole validity and never needs a claim. Before, every create of an instance with a
/// waiting session named its marker: "the uncontended grant is valid for 7…ms".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_uncontended_grant_beside_a_wait_needs_no_claim() {
    let (_ensemble, _url, holder, waiter, op) = set_up("/uncontended").await;
    let held = holder.acquire("k", &child_opts()).await.unwrap();
    let queued = queue_up(&waiter);
    until_async("the waiter queued, naming its marker", SLACK, async || {
        let nodes = op.nodes().await;
        nodes.len() == 2 && names_a_marker(&op.data(&nodes[1]).await)
    })
    .await;
    let solo = waiter.acquire("solo", &child_opts()).await.unwrap();
    let remaining = solo.remaining();
    assert!(
        remaining > SESSION / 2,
        "the uncontended grant is valid for {remaining:?}, not the session's {SESSION:?}"
    );
    let nodes = op.0.list_children("/solo").await.unwrap();
    let (data, _) = op.0.get_data(&format!("/solo/{}", nodes[0])).await.unwrap();
    assert!(!names_a_marker(&data), "the uncontended node names a marker");
    solo.release().await.unwrap();
    held.release().await.unwrap();
    let lease = served("the waiter is served", SLACK, queued).await;
    lease.release().await.unwrap();
}

/// A foreign write of a waiting marker (an operator's `set`, another tool) makes the
/// keeper's check fail with BadVersion: the instance stops proving, but its marker stays
/// until every grant its last proof bounded has run out (the last proof + the waiting
/// timeout), as when its main session is cut. Failed before the change (review): the
/// keeper ended the waiting session at once, the server deleted the marker within a
/// proof period of the write — while a grant bounded by that proof (up to 500 ms on the
/// test server) could still read held, and the waiter behind its node could remove it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_foreign_write_of_a_marker_keeps_it_until_its_last_proof_has_run_out() {
    let (_ensemble, _url, holder, waiter, op) = set_up("/foreign").await;
    let held = holder.acquire("k", &child_opts()).await.unwrap();
    let w = queue_up(&waiter);
    until_async("W queued, naming its marker", SLACK, async || {
        let nodes = op.nodes().await;
        nodes.len() == 2 && names_a_marker(&op.data(&nodes[1]).await)
    })
    .await;
    let markers = op.0.list_children("/%waiting").await.unwrap();
    assert_eq!(markers.len(), 1, "W's marker alone: {markers:?}");
    let marker = format!("/%waiting/{}", markers[0]);
    op.0.set_data(&marker, b"foreign", None).await.unwrap();
    let written = Instant::now();
    until_async("the marker went after the foreign write", SLACK, async || {
        matches!(op.0.check_stat(&marker).await, Ok(None))
    })
    .await;
    let went = written.elapsed();
    // The last proof was at most a period (333 ms) before the write; the marker may go at
    // that proof + 1 s: 667 ms after the write at the earliest, and a grant it bounded
    // ends by that proof + 500 ms.
    assert!(
        went >= Duration::from_millis(600),
        "the marker went {went:?} after a foreign write, before the grants its last proof bounded could have run out"
    );
    held.release().await.unwrap();
    w.abort();
}
