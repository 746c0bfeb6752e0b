//! What the tests against Go's etcd recipes share: the real `etcdctl` (Debian's
//! etcd-client) and reads of a lock or election directory. Included with `mod go_peer;`.

#![allow(dead_code)] // each test file uses a part

use std::time::Duration;

use etcd_client::{Client, GetOptions};
use fencelock_testkit::etcd_server::EtcdCluster;
use fencelock_testkit::interop::require_tool;
use std::process::Stdio;

use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};
use tokio::time::{timeout, Instant};

pub const HINT: &str = "install it with `apt-get install etcd-client` (or run scripts/setup-deps)";
/// Bound on any single step.
pub const STEP: Duration = Duration::from_secs(15);

/// `etcdctl --endpoints=EP`, killed if the test drops it.
pub fn etcdctl(ep: &str) -> Command {
    require_tool("etcdctl", &["version"], HINT);
    let mut c = Command::new("etcdctl");
    c.env("ETCDCTL_API", "3").arg(format!("--endpoints={ep}"));
    c.kill_on_drop(true);
    c
}

/// SIGINT: `etcdctl lock` unlocks (`etcdctl elect` resigns) and closes its session, then
/// exits.
pub async fn interrupt(mut child: Child) {
    let pid = child.id().unwrap().to_string();
    let sent = Command::new("kill").args(["-INT", &pid]).status().await.unwrap();
    assert!(sent.success());
    let status = timeout(STEP, child.wait()).await.expect("etcdctl exits").unwrap();
    assert!(status.success(), "etcdctl: {status}");
}

pub async fn client(cluster: &EtcdCluster) -> Client {
    Client::connect(cluster.endpoints(), None).await.unwrap()
}

/// The keys in `dir`, oldest (lowest create revision) first, with their create revisions.
pub async fn queue(c: &mut Client, dir: &str) -> Vec<(String, i64)> {
    let mut kvs: Vec<(String, i64)> = c
        .get(dir, Some(GetOptions::new().with_prefix()))
        .await
        .unwrap()
        .kvs()
        .iter()
        .map(|kv| (kv.key_str().unwrap().to_owned(), kv.create_revision()))
        .collect();
    kvs.sort_by_key(|k| k.1);
    kvs
}

/// Polls (bounded) until `dir` holds `n` keys.
pub async fn until_queued(c: &mut Client, dir: &str, n: usize) -> Vec<(String, i64)> {
    let deadline = Instant::now() + STEP;
    loop {
        let q = queue(c, dir).await;
        if q.len() == n {
            return q;
        }
        assert!(Instant::now() < deadline, "{dir} never held {n} keys: {q:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// `etcdctl ARGS…` started with its stdout piped, read line by line.
pub fn etcdctl_lines(ep: &str, args: &[&str]) -> (Child, Lines<BufReader<ChildStdout>>) {
    let mut child = etcdctl(ep)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("etcdctl did not start ({e}): {HINT}"));
    let lines = BufReader::new(child.stdout.take().unwrap()).lines();
    (child, lines)
}
