//! Real ZooKeeper servers for tests (Debian's `zookeeper` package, run with `java` and the
//! package's jar): standalone or a 3-server ensemble on free loopback ports with a temp
//! config and data dir; kill, restart and pause any server; find the leader.
//!
//! `tickTime=100` so sessions can be as short as 200 ms (2 ticks) and session-expiry tests
//! take about a second; `syncLimit=10`, so a follower cut off from the leader goes on
//! answering its clients (reads and pings, from its own copy) for 1 s.
//!
//! [`ZkEnsemble::start_cuttable`] routes the servers' links to each other through
//! [`FaultProxy`]s, so one server can be cut off from the others while its clients still
//! reach it ([`ZkEnsemble::cut_off`]).

use std::path::PathBuf;
use std::time::Duration;

use crate::ports::start_on_free_ports;
use crate::process::{tcp_exchange_to_eof as tcp_exchange, wait_until, ServerProcess};
use crate::proxy::{FaultProxy, Mode};

/// How to install ZooKeeper when it is missing.
pub const INSTALL_HINT: &str =
    "install it with `apt-get install zookeeper` (it brings /usr/share/java/zookeeper.jar and a JRE; or run scripts/setup-deps)";

/// The jar of Debian's package.
pub const JAR: &str = "/usr/share/java/zookeeper.jar";

#[derive(Debug)]
struct Server {
    id: usize,
    client_port: u16,
    process: Option<ServerProcess>,
    starts: u32,
}

/// How server `from` reaches server `to` ([`ZkEnsemble::start_cuttable`]): `from`'s
/// zoo.cfg names these proxies as `to`'s quorum (peer) and election addresses.
#[derive(Debug)]
struct Link {
    from: usize,
    to: usize,
    peer: FaultProxy,
    election: FaultProxy,
}

/// A running ZooKeeper ensemble (one server: standalone).
#[derive(Debug)]
pub struct ZkEnsemble {
    servers: Vec<Server>,
    /// The proxied links between servers (empty unless started with
    /// [`ZkEnsemble::start_cuttable`]).
    links: Vec<Link>,
    /// Last: fields drop in order, so the servers are killed before their data goes.
    dir: tempfile::TempDir,
}

impl ZkEnsemble {
    /// One standalone server.
    pub fn standalone() -> Self {
        Self::start(1)
    }

    /// `n` servers (1 = standalone), started together and waited for until each serves.
    /// Each server takes a client, a peer and an election port (the last two unused when
    /// standalone); when one is taken before the server binds it, the whole ensemble starts
    /// again on fresh ports and data dirs ([`start_on_free_ports`]).
    pub fn start(n: usize) -> Self {
        assert!(
            std::path::Path::new(JAR).exists(),
            "ZooKeeper is not installed ({JAR} is missing): {INSTALL_HINT}"
        );
        start_on_free_ports("ZooKeeper", 3 * n, |ports| Self::try_start(n, ports, None))
    }

    /// `n` servers (at least 2) as [`start`](Self::start), each of which reaches every
    /// other through a [`FaultProxy`] of its own for the other's quorum (peer) port and one
    /// for its election port: server `i`'s zoo.cfg lists the others at the proxies' ports.
    /// [`cut_off`](Self::cut_off) then silences one server's links while its clients
    /// still reach it.
    ///
    /// Call it on a multi-threaded tokio runtime (`#[tokio::test(flavor =
    /// "multi_thread")]`): the proxies run on it while this waits for the servers.
    ///
    /// # Panics
    /// On a current-thread runtime or outside one; when the servers do not start.
    pub fn start_cuttable(n: usize) -> Self {
        assert!(n >= 2, "a cuttable ensemble needs at least 2 servers");
        assert!(
            std::path::Path::new(JAR).exists(),
            "ZooKeeper is not installed ({JAR} is missing): {INSTALL_HINT}"
        );
        let runtime = tokio::runtime::Handle::current();
        tokio::task::block_in_place(|| {
            start_on_free_ports("ZooKeeper", 3 * n, |ports| Self::try_start(n, ports, Some(&runtime)))
        })
    }

    /// Cuts server `i` off from the others: every link from it and to it blackholes (the
    /// connections stay open, nothing passes), as a network partition does. Its clients
    /// still reach it: as a follower it goes on answering their reads and pings from its
    /// own copy until it gives up on the leader (`syncLimit` ticks: 1 s here), then it
    /// drops them and looks for a leader it cannot reach.
    ///
    /// Links of ZooKeeper's leader election may bypass the proxies (ZooKeeper 3.5 and
    /// later keep only the connection the higher server id opened, and a higher id that
    /// drops a lower one's connection connects back to the address the lower one announces
    /// — its own, not a proxy): so a cut server may still learn who leads. It cannot follow
    /// it: a follower connects to the leader's quorum port as its own zoo.cfg names it,
    /// through a proxy.
    ///
    /// # Panics
    /// When the ensemble was not started with [`start_cuttable`](Self::start_cuttable).
    pub fn cut_off(&self, i: usize) {
        self.set_links(i, Mode::Blackhole);
    }

    /// Joins server `i` to the others again (undoes [`cut_off`](Self::cut_off)).
    ///
    /// # Panics
    /// When the ensemble was not started with [`start_cuttable`](Self::start_cuttable).
    pub fn heal(&self, i: usize) {
        self.set_links(i, Mode::Pass);
    }

    fn set_links(&self, i: usize, mode: Mode) {
        assert!(
            !self.links.is_empty(),
            "the ensemble's links are not proxied: start it with ZkEnsemble::start_cuttable"
        );
        for l in self.links.iter().filter(|l| l.from == i || l.to == i) {
            l.peer.set(mode);
            l.election.set(mode);
        }
    }

    /// Starts `n` servers on `ports` (client, peer and election port of server 1, then of
    /// server 2, ...), their links proxied on `runtime` when given; Err(what went wrong,
    /// with the log's tail) once every server is stopped again.
    fn try_start(n: usize, ports: &[u16], runtime: Option<&tokio::runtime::Handle>) -> Result<Self, String> {
        let dir = tempfile::Builder::new()
            .prefix("fencelock-zk-")
            .tempdir()
            .expect("temp dir");
        let ports: Vec<(u16, u16, u16)> = ports.chunks_exact(3).map(|p| (p[0], p[1], p[2])).collect();
        let mut links = Vec::new();
        if let Some(runtime) = runtime {
            for from in 0..n {
                for (to, (_, peer, election)) in ports.iter().enumerate().filter(|(to, _)| *to != from) {
                    links.push(Link {
                        from,
                        to,
                        peer: runtime.block_on(FaultProxy::start(*peer)),
                        election: runtime.block_on(FaultProxy::start(*election)),
                    });
                }
            }
        }
        let mut servers = Vec::new();
        for (i, (client, _, _)) in ports.iter().enumerate() {
            let id = i + 1;
            let sdir = dir.path().join(format!("s{id}"));
            std::fs::create_dir_all(sdir.join("data")).expect("mkdir");
            std::fs::write(sdir.join("data/myid"), format!("{id}\n")).expect("myid");
            // maxClientCnxns: ZooKeeper allows 60 connections per client address by default;
            // every client here comes from 127.0.0.1 (the benchmark contends with 64).
            let mut cfg = format!(
                "tickTime=100\ninitLimit=20\nsyncLimit=10\ndataDir={}\nclientPort={client}\nclientPortAddress=127.0.0.1\n\
                 admin.enableServer=false\n4lw.commands.whitelist=*\nminSessionTimeout=200\nmaxSessionTimeout=60000\n\
                 maxClientCnxns=1000\n",
                sdir.join("data").display()
            );
            if n > 1 {
                for (j, (_, peer, election)) in ports.iter().enumerate() {
                    // Another server through the proxies of the link from this one, if any.
                    let (peer, election) = links
                        .iter()
                        .find(|l| l.from == i && l.to == j)
                        .map_or((*peer, *election), |l| (l.peer.port(), l.election.port()));
                    cfg.push_str(&format!("server.{}=127.0.0.1:{peer}:{election}\n", j + 1));
                }
            }
            std::fs::write(sdir.join("zoo.cfg"), cfg).expect("zoo.cfg");
            std::fs::write(
                sdir.join("log4j.properties"),
                "log4j.rootLogger=WARN, CONSOLE\nlog4j.appender.CONSOLE=org.apache.log4j.ConsoleAppender\n\
                 log4j.appender.CONSOLE.layout=org.apache.log4j.PatternLayout\n\
                 log4j.appender.CONSOLE.layout.ConversionPattern=%d %p %c{1}: %m%n\n",
            )
            .expect("log4j");
            servers.push(Server {
                id,
                client_port: *client,
                process: None,
                starts: 0,
            });
        }
        let mut ensemble = ZkEnsemble { dir, servers, links };
        for i in 0..n {
            ensemble.spawn(i);
        }
        for i in 0..n {
            // On Err, dropping `ensemble` kills every server.
            ensemble.wait_serving(i)?;
        }
        Ok(ensemble)
    }

    fn server_dir(&self, i: usize) -> PathBuf {
        self.dir.path().join(format!("s{}", self.servers[i].id))
    }

    fn log(&self, i: usize) -> PathBuf {
        self.server_dir(i)
            .join(format!("server-{}.log", self.servers[i].starts))
    }

    fn spawn(&mut self, i: usize) {
        let sdir = self.server_dir(i);
        self.servers[i].starts += 1;
        let mut cmd = crate::process::tied_command("java");
        cmd.arg("-Xmx128m")
            .arg("-XX:+UseSerialGC")
            .arg("-XX:TieredStopAtLevel=1")
            .arg("-cp")
            .arg(format!("{}:{JAR}", sdir.display()))
            .arg(format!("-Dzookeeper.log.dir={}", sdir.display()))
            .arg("-Dzookeeper.admin.enableServer=false")
            .arg("org.apache.zookeeper.server.quorum.QuorumPeerMain")
            .arg(sdir.join("zoo.cfg"));
        let log = self.log(i);
        self.servers[i].process = Some(ServerProcess::spawn("java (ZooKeeper)", cmd, &log, INSTALL_HINT));
    }

    fn mode(&self, i: usize) -> Option<String> {
        let reply = tcp_exchange(self.servers[i].client_port, b"srvr")?;
        let text = String::from_utf8_lossy(&reply).into_owned();
        text.lines().find_map(|l| l.strip_prefix("Mode: ").map(str::to_owned))
    }

    /// Waits (at most 30 s) until server `i` serves; Err(what went wrong, with the log's
    /// tail) when it exits or does not.
    fn wait_serving(&mut self, i: usize) -> Result<(), String> {
        let log = self.log(i);
        let port = self.servers[i].client_port;
        let process = self.servers[i].process.as_mut().expect("server running");
        wait_until("ZooKeeper", Duration::from_secs(30), &log, process, port, || {
            tcp_exchange(port, b"srvr").is_some_and(|r| String::from_utf8_lossy(&r).contains("Mode: "))
        })
    }

    /// `127.0.0.1:PORT` of every server.
    pub fn endpoints(&self) -> Vec<String> {
        self.servers
            .iter()
            .map(|s| format!("127.0.0.1:{}", s.client_port))
            .collect()
    }

    /// The client port of server `i`.
    pub fn port(&self, i: usize) -> u16 {
        self.servers[i].client_port
    }

    /// `zk://H:P,H:P,...[/chroot]` with `query` appended when not empty.
    pub fn url(&self, chroot: &str, query: &str) -> String {
        let q = if query.is_empty() {
            String::new()
        } else {
            format!("?{query}")
        };
        format!("zk://{}{chroot}{q}", self.endpoints().join(","))
    }

    /// Kills server `i` (SIGKILL).
    pub fn kill(&mut self, i: usize) {
        if let Some(mut p) = self.servers[i].process.take() {
            p.kill();
        }
    }

    /// Starts server `i` again and waits until it serves.
    pub fn restart(&mut self, i: usize) {
        self.kill(i);
        self.spawn(i);
        if let Err(e) = self.wait_serving(i) {
            panic!("ZooKeeper server {i} did not restart on its ports: {e}");
        }
    }

    /// SIGSTOP server `i`.
    pub fn pause(&self, i: usize) {
        self.servers[i].process.as_ref().expect("server running").pause();
    }

    /// SIGCONT server `i`.
    pub fn resume(&self, i: usize) {
        self.servers[i].process.as_ref().expect("server running").resume();
    }

    /// The number of watches server `i` holds (`wchs`), if it answers.
    pub fn watch_count(&self, i: usize) -> Option<usize> {
        let reply = tcp_exchange(self.servers[i].client_port, b"wchs")?;
        let text = String::from_utf8_lossy(&reply).into_owned();
        text.lines()
            .find_map(|l| l.strip_prefix("Total watches:")?.trim().parse().ok())
    }

    /// The paths each session watches on server `i` (`wchc`: session id as ZooKeeper
    /// prints it, `0x` and lowercase hex, then its watched paths, chroot included), if it
    /// answers.
    pub fn watches_by_session(&self, i: usize) -> Option<Vec<(String, Vec<String>)>> {
        let reply = tcp_exchange(self.servers[i].client_port, b"wchc")?;
        let text = String::from_utf8_lossy(&reply).into_owned();
        let mut sessions: Vec<(String, Vec<String>)> = Vec::new();
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            match (line.starts_with(char::is_whitespace), sessions.last_mut()) {
                (true, Some((_, paths))) => paths.push(line.trim().to_owned()),
                _ => sessions.push((line.trim().to_owned(), Vec::new())),
            }
        }
        Some(sessions)
    }

    /// The packets each connected session has sent server `i` (`cons`'s `recved`, by
    /// session id as ZooKeeper prints it: `0x` and lowercase hex), if it answers.
    pub fn packets_by_session(&self, i: usize) -> Option<Vec<(String, u64)>> {
        let reply = tcp_exchange(self.servers[i].client_port, b"cons")?;
        let text = String::from_utf8_lossy(&reply).into_owned();
        Some(
            text.lines()
                .filter_map(|l| Some((cons_field(l, "sid")?, cons_field(l, "recved")?.parse().ok()?)))
                .collect(),
        )
    }

    /// The client's xid of the last request server `i` answered on each connected
    /// session (`cons`'s `lcxid`; pings and watch events leave it as it was), by session id
    /// as in [`packets_by_session`](Self::packets_by_session), if it answers. A session
    /// that sends only one kind of request counts its answered requests with it.
    pub fn last_answered_by_session(&self, i: usize) -> Option<Vec<(String, u64)>> {
        let reply = tcp_exchange(self.servers[i].client_port, b"cons")?;
        let text = String::from_utf8_lossy(&reply).into_owned();
        Some(
            text.lines()
                .filter_map(|l| {
                    let xid = cons_field(l, "lcxid")?;
                    Some((
                        cons_field(l, "sid")?,
                        u64::from_str_radix(xid.strip_prefix("0x")?, 16).ok()?,
                    ))
                })
                .collect(),
        )
    }

    /// [`packets_by_session`](Self::packets_by_session)'s count for `session` (as
    /// ZooKeeper prints it: `0x` and lowercase hex).
    ///
    /// # Panics
    /// When server `i` does not answer `cons` or `session` is not connected to it.
    pub fn packets_of(&self, i: usize, session: &str) -> u64 {
        of_session(self.packets_by_session(i), session)
    }

    /// [`last_answered_by_session`](Self::last_answered_by_session)'s xid for `session`.
    ///
    /// # Panics
    /// When server `i` does not answer `cons` or `session` is not connected to it.
    pub fn last_answered_of(&self, i: usize, session: &str) -> u64 {
        of_session(self.last_answered_by_session(i), session)
    }

    /// The number of packets server `i` has received from clients (`mntr`'s
    /// `zk_packets_received`: every request and ping), if it answers.
    pub fn packets_received(&self, i: usize) -> Option<u64> {
        let reply = tcp_exchange(self.servers[i].client_port, b"mntr")?;
        let text = String::from_utf8_lossy(&reply).into_owned();
        text.lines()
            .find_map(|l| l.strip_prefix("zk_packets_received")?.trim().parse().ok())
    }

    /// The client connections server `i` has open now (`mntr`'s
    /// `zk_num_alive_connections`; the four-letter command's own connection included), if
    /// it answers.
    pub fn alive_connections(&self, i: usize) -> Option<usize> {
        let reply = tcp_exchange(self.servers[i].client_port, b"mntr")?;
        let text = String::from_utf8_lossy(&reply).into_owned();
        text.lines()
            .find_map(|l| l.strip_prefix("zk_num_alive_connections")?.trim().parse().ok())
    }

    /// The number of servers.
    pub fn len(&self) -> usize {
        self.servers.len()
    }

    /// `true` when the ensemble has no servers (never: [`ZkEnsemble::start`] needs one).
    pub fn is_empty(&self) -> bool {
        self.servers.is_empty()
    }

    /// The index of a server in `follower` mode, if one answers.
    pub fn follower(&self) -> Option<usize> {
        (0..self.servers.len())
            .filter(|i| self.servers[*i].process.is_some())
            .find(|i| self.mode(*i).as_deref() == Some("follower"))
    }

    /// The index of the server in `leader` (or `standalone`) mode, if one answers.
    pub fn leader(&self) -> Option<usize> {
        (0..self.servers.len())
            .filter(|i| self.servers[*i].process.is_some())
            .find(|i| matches!(self.mode(*i).as_deref(), Some("leader") | Some("standalone")))
    }

    /// The leader's index, polled until one answers as leader (or standalone).
    ///
    /// # Panics
    /// When no running server says it leads within `limit`: a fault meant for the leader
    /// has none to strike.
    pub fn wait_for_leader(&self, limit: Duration) -> usize {
        let start = std::time::Instant::now();
        loop {
            if let Some(l) = self.leader() {
                return l;
            }
            assert!(start.elapsed() < limit, "no ZooKeeper leader within {limit:?}");
            std::thread::sleep(Duration::from_millis(20)); // polling an electing ensemble
        }
    }
}

/// The figure of `session` in a per-session reading of `cons`.
fn of_session(by: Option<Vec<(String, u64)>>, session: &str) -> u64 {
    by.expect("the server answers cons")
        .into_iter()
        .find(|(s, _)| s == session)
        .map(|(_, n)| n)
        .unwrap_or_else(|| panic!("session {session} is not connected to the server"))
}

/// The value of `name=` in a line of `cons` (`/127.0.0.1:PORT[1](queued=0,recved=5,…)`).
fn cons_field(line: &str, name: &str) -> Option<String> {
    let at = line.find(&format!("{name}="))? + name.len() + 1;
    let rest = &line[at..];
    Some(rest[..rest.find([',', ')']).unwrap_or(rest.len())].to_owned())
}
