//! Real `etcd` members for tests: a single node or a cluster on free loopback ports, with
//! temp data dirs and short heartbeat/election timeouts; kill, restart and pause any
//! member; find the leader.
//!
//! Heartbeat 10 ms and election 100 ms make etcd's minimum lease TTL
//! (1.5 × election timeout, rounded up to whole seconds) 1 s, so fault tests stay fast.

use std::time::Duration;

use crate::ports::start_on_free_ports;
use crate::process::{http, wait_until, ServerProcess};

/// How to install etcd when it is missing.
pub const INSTALL_HINT: &str = "install it with `apt-get install etcd-server` (or run scripts/setup-deps)";

#[derive(Debug)]
struct Member {
    name: String,
    client_port: u16,
    peer_port: u16,
    process: Option<ServerProcess>,
    starts: u32,
}

/// A running etcd cluster of one or more members on 127.0.0.1.
#[derive(Debug)]
pub struct EtcdCluster {
    members: Vec<Member>,
    initial_cluster: String,
    /// `--heartbeat-interval` and `--election-timeout`, ms.
    timing: (u32, u32),
    /// Flags given to every member after the tests' own ([`single_with_flags`](Self::single_with_flags)).
    flags: Vec<String>,
    /// Last: fields drop in order, so the members are killed before their data goes.
    dir: tempfile::TempDir,
}

/// How to install `etcdctl` when it is missing.
pub const ETCDCTL_INSTALL_HINT: &str = "install it with `apt-get install etcd-client` (or run scripts/setup-deps)";

/// Runs `cmd` (an `etcdctl` command, API v3, its output discarded) for at most 60 s.
///
/// # Panics
/// When `etcdctl` is missing (with [`ETCDCTL_INSTALL_HINT`]), cannot be started, or has
/// not ended within 60 s (then it is killed).
fn etcdctl(mut cmd: std::process::Command) -> std::process::ExitStatus {
    const LIMIT: Duration = Duration::from_secs(60);
    cmd.env("ETCDCTL_API", "3")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            panic!("etcdctl is not installed ({e}): {ETCDCTL_INSTALL_HINT}")
        }
        Err(e) => panic!("cannot start etcdctl: {e}"),
    };
    let start = std::time::Instant::now();
    loop {
        if let Some(status) = child.try_wait().expect("wait for etcdctl") {
            return status;
        }
        if start.elapsed() > LIMIT {
            let _ = child.kill();
            let _ = child.wait();
            panic!("etcdctl did not end within {LIMIT:?}: {cmd:?}");
        }
        std::thread::sleep(Duration::from_millis(20)); // polling a child's exit, bounded
    }
}

/// The tests' heartbeat and election timeout, ms: short, so failovers are quick. etcd's
/// minimum lease TTL (1.5 × the election timeout, rounded up to whole seconds) is 1 s.
const FAST: (u32, u32) = (10, 100);

impl EtcdCluster {
    /// One member.
    pub fn single() -> Self {
        Self::start(1)
    }

    /// `n` members, started together and waited for until each reports healthy. Each
    /// member takes a client and a peer port; when one is taken before the member binds it,
    /// the whole cluster starts again on fresh ports and data dirs
    /// ([`start_on_free_ports`]).
    pub fn start(n: usize) -> Self {
        start_on_free_ports("etcd", 2 * n, |ports| Self::try_start(n, ports, FAST, &[]))
    }

    /// One member as [`single`](Self::single) starts it, with `flags` added after the
    /// tests' own (e.g. `--auth-token-ttl=2`); a restarted member gets them again.
    pub fn single_with_flags(flags: &[&str]) -> Self {
        start_on_free_ports("etcd", 2, |ports| Self::try_start(1, ports, FAST, flags))
    }

    /// One member with etcd's own default heartbeat (100 ms) and election timeout (1 s), as
    /// a stock server has them: its minimum lease TTL is 2 s, and a lease asked for 1 s is
    /// granted 2 s. It takes about a second longer to elect itself than [`single`](Self::single).
    pub fn single_with_stock_timing() -> Self {
        start_on_free_ports("etcd", 2, |ports| Self::try_start(1, ports, (100, 1000), &[]))
    }

    /// Starts `n` members on `ports` (client and peer port of member 0, then of member 1,
    /// ...); Err(what went wrong, with the log's tail) once every member is stopped again.
    fn try_start(n: usize, ports: &[u16], timing: (u32, u32), flags: &[&str]) -> Result<Self, String> {
        let dir = tempfile::Builder::new()
            .prefix("fencelock-etcd-")
            .tempdir()
            .expect("temp dir");
        let members: Vec<Member> = (0..n)
            .map(|i| Member {
                name: format!("m{i}"),
                client_port: ports[2 * i],
                peer_port: ports[2 * i + 1],
                process: None,
                starts: 0,
            })
            .collect();
        let initial_cluster = members
            .iter()
            .map(|m| format!("{}=http://127.0.0.1:{}", m.name, m.peer_port))
            .collect::<Vec<_>>()
            .join(",");
        let mut cluster = EtcdCluster {
            dir,
            members,
            initial_cluster,
            timing,
            flags: flags.iter().map(|f| (*f).to_owned()).collect(),
        };
        for i in 0..n {
            cluster.spawn(i);
        }
        for i in 0..n {
            // On Err, dropping `cluster` kills every member.
            cluster.wait_healthy(i)?;
        }
        Ok(cluster)
    }

    fn spawn(&mut self, i: usize) {
        let data = self.dir.path().join(&self.members[i].name);
        let m = &mut self.members[i];
        m.starts += 1;
        let client = format!("http://127.0.0.1:{}", m.client_port);
        let peer = format!("http://127.0.0.1:{}", m.peer_port);
        let mut cmd = crate::process::tied_command("etcd");
        cmd.arg("--name")
            .arg(&m.name)
            .arg("--data-dir")
            .arg(&data)
            .arg("--listen-client-urls")
            .arg(&client)
            .arg("--advertise-client-urls")
            .arg(&client)
            .arg("--listen-peer-urls")
            .arg(&peer)
            .arg("--initial-advertise-peer-urls")
            .arg(&peer)
            .arg("--initial-cluster")
            .arg(&self.initial_cluster)
            .args([
                "--initial-cluster-state",
                "new",
                "--initial-cluster-token",
                "fencelock-test",
            ])
            .arg("--heartbeat-interval")
            .arg(self.timing.0.to_string())
            .arg("--election-timeout")
            .arg(self.timing.1.to_string())
            .args(["--log-level", "warn"])
            .args(&self.flags);
        let log = self.dir.path().join(format!("{}-{}.log", m.name, m.starts));
        m.process = Some(ServerProcess::spawn("etcd", cmd, &log, INSTALL_HINT));
    }

    /// Waits (at most 20 s) until member `i` reports healthy; Err(what went wrong, with
    /// the log's tail) when it exits or does not.
    fn wait_healthy(&mut self, i: usize) -> Result<(), String> {
        let m = &mut self.members[i];
        let log = self.dir.path().join(format!("{}-{}.log", m.name, m.starts));
        let port = m.client_port;
        let process = m.process.as_mut().expect("member running");
        wait_until("etcd", Duration::from_secs(20), &log, process, port, || {
            http(port, "GET", "/health", "").is_some_and(|b| b.contains("\"health\":\"true\""))
        })
    }

    /// Number of members.
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// `true` for a cluster without members (never, once started).
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// `127.0.0.1:PORT` of every member's client port.
    pub fn endpoints(&self) -> Vec<String> {
        self.members
            .iter()
            .map(|m| format!("127.0.0.1:{}", m.client_port))
            .collect()
    }

    /// `etcd://H:P,H:P,...` with `query` appended when not empty.
    pub fn url(&self, query: &str) -> String {
        let q = if query.is_empty() {
            String::new()
        } else {
            format!("?{query}")
        };
        format!("etcd://{}{q}", self.endpoints().join(","))
    }

    /// Kills member `i` (SIGKILL).
    pub fn kill(&mut self, i: usize) {
        if let Some(mut p) = self.members[i].process.take() {
            p.kill();
        }
    }

    /// Starts member `i` again with its data dir and ports, and waits until it is healthy.
    pub fn restart(&mut self, i: usize) {
        self.kill(i);
        self.spawn(i);
        if let Err(e) = self.wait_healthy(i) {
            panic!("etcd member {i} did not restart on its ports: {e}");
        }
    }

    /// Saves a snapshot of member `i`'s keyspace to `file` (`etcdctl snapshot save`).
    pub fn snapshot(&self, i: usize, file: &std::path::Path) {
        let mut cmd = std::process::Command::new("etcdctl");
        cmd.arg("--endpoints")
            .arg(format!("127.0.0.1:{}", self.members[i].client_port))
            .args(["snapshot", "save"])
            .arg(file);
        let status = etcdctl(cmd);
        assert!(status.success(), "etcdctl snapshot save: {status}");
    }

    /// Restores a one-member cluster from `file` as an operator would without
    /// `--bump-revision`: stops the member, replaces its data dir with the snapshot's
    /// (`etcdctl snapshot restore`, the same `--initial-cluster` and
    /// `--initial-cluster-token`, so the cluster id stays), starts it again on its ports
    /// and waits until it is healthy.
    pub fn restore(&mut self, file: &std::path::Path) {
        assert_eq!(self.members.len(), 1, "restore: one member only");
        self.kill(0);
        let data = self.dir.path().join(&self.members[0].name);
        std::fs::remove_dir_all(&data).expect("remove the member's data dir");
        let peer = format!("http://127.0.0.1:{}", self.members[0].peer_port);
        let mut cmd = std::process::Command::new("etcdctl");
        cmd.args(["snapshot", "restore"])
            .arg(file)
            .arg("--data-dir")
            .arg(&data)
            .args(["--name", &self.members[0].name])
            .args(["--initial-cluster", &self.initial_cluster])
            .args(["--initial-cluster-token", "fencelock-test"])
            .args(["--initial-advertise-peer-urls", &peer]);
        let status = etcdctl(cmd);
        assert!(status.success(), "etcdctl snapshot restore: {status}");
        self.spawn(0);
        if let Err(e) = self.wait_healthy(0) {
            panic!("etcd did not start from the restored snapshot: {e}");
        }
    }

    /// SIGSTOP member `i`.
    pub fn pause(&self, i: usize) {
        self.members[i].process.as_ref().expect("member running").pause();
    }

    /// SIGCONT member `i`.
    pub fn resume(&self, i: usize) {
        self.members[i].process.as_ref().expect("member running").resume();
    }

    /// The index of the member that is the Raft leader, as the members that answer report
    /// it; `None` when no running member knows a leader.
    pub fn leader(&self) -> Option<usize> {
        for m in self.members.iter().filter(|m| m.process.is_some()) {
            let Some(body) = http(m.client_port, "POST", "/v3/maintenance/status", "{}") else {
                continue;
            };
            let leader = json_field(&body, "leader");
            for (i, other) in self.members.iter().enumerate() {
                if other.process.is_none() {
                    continue;
                }
                let Some(b) = http(other.client_port, "POST", "/v3/maintenance/status", "{}") else {
                    continue;
                };
                let me = b.split("\"header\":").nth(1).and_then(|h| json_field(h, "member_id"));
                if me.is_some() && me == leader {
                    return Some(i);
                }
            }
        }
        None
    }

    /// Waits (bounded) until some running member is the leader and returns it.
    pub fn wait_for_leader(&self, limit: Duration) -> usize {
        let start = std::time::Instant::now();
        loop {
            if let Some(l) = self.leader() {
                return l;
            }
            assert!(start.elapsed() < limit, "no etcd leader within {limit:?}");
            std::thread::sleep(Duration::from_millis(20)); // polling a starting cluster
        }
    }
}

impl EtcdCluster {
    /// How many gRPC calls of `method` (e.g. `"Txn"`, `"Range"`, `"LeaseGrant"`) member `i`
    /// has handled, from its Prometheus metrics; `None` when it does not answer.
    pub fn grpc_calls(&self, i: usize, method: &str) -> Option<u64> {
        let body = http(self.members[i].client_port, "GET", "/metrics", "")?;
        let needle = format!("grpc_method=\"{method}\"");
        Some(
            body.lines()
                .filter(|l| l.starts_with("grpc_server_handled_total{") && l.contains(&needle))
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .sum::<f64>() as u64,
        )
    }
}

/// Every sample of the `/metrics` of the etcd member answering on `port`, by its name with
/// labels (`name{label="v"}`); comment lines left out. Panics when the member does not
/// answer (a diagnosis harness has nothing to measure then).
pub fn metrics(port: u16) -> std::collections::BTreeMap<String, f64> {
    let body = http(port, "GET", "/metrics", "").expect("the etcd member answers /metrics");
    body.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (name, v) = l.rsplit_once(' ')?;
            Some((name.to_owned(), v.parse().ok()?))
        })
        .collect()
}

impl EtcdCluster {
    /// The client port of every member.
    pub fn client_ports(&self) -> Vec<u16> {
        self.members.iter().map(|m| m.client_port).collect()
    }

    /// Established TCP connections to the members' client ports, as the kernel lists them
    /// (`/proc/net/tcp` and `/proc/net/tcp6`: the server's end of each connection, state
    /// `01`). Counts every client on this machine, including the members' own gateway
    /// connections, so compare counts before and after rather than reading one alone.
    pub fn client_connections(&self) -> usize {
        let ports = self.client_ports();
        crate::process::tcp_sockets()
            .iter()
            .filter(|s| s.state == "01" && ports.contains(&s.port))
            .count()
    }
}

/// The string value of `"name":"VALUE"` or `"name":VALUE` in a flat JSON text.
fn json_field(json: &str, name: &str) -> Option<String> {
    let at = json.find(&format!("\"{name}\":"))? + name.len() + 3;
    let rest = json[at..].trim_start().trim_start_matches('"');
    let end = rest.find(['"', ',', '}'])?;
    Some(rest[..end].to_owned())
}
