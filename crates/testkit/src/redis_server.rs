//! Real `redis-server` processes for tests: free loopback port, temp dir, persistence on or
//! off, killed on drop, restartable on the same port, pausable.

use std::path::PathBuf;
use std::time::Duration;

use crate::ports::start_on_free_ports;
use crate::process::{tcp_exchange, wait_until, ServerProcess};

/// How to install the server when it is missing.
pub const INSTALL_HINT: &str = "install it with `apt-get install redis-server` (or run scripts/setup-deps)";

/// What the server keeps across a restart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Persistence {
    /// Nothing: a restart starts empty (`save ""`, `appendonly no`).
    None,
    /// An append-only file fsynced on every write (`appendfsync always`): a kill -9 loses
    /// nothing that was acknowledged.
    AofAlways,
}

/// Options for [`RedisServer::start_with`].
#[derive(Debug, Clone, Default)]
pub struct RedisOptions {
    /// Persistence (default none).
    pub persistence: Option<Persistence>,
    /// `requirepass`, if any.
    pub password: Option<String>,
    /// Replicate from the server on this port (`--replicaof 127.0.0.1 PORT`), e.g. through
    /// a [`FaultProxy`](crate::proxy::FaultProxy) so the replication link can be cut.
    pub replica_of: Option<u16>,
    /// Serve TLS only (certificates from [`crate::tls::make_certs`]); the URL is then
    /// `rediss://…?ca_file=…`.
    pub tls: bool,
    /// More `--name value` settings for the server, e.g. `("maxmemory", "2mb")`,
    /// `("maxmemory-policy", "allkeys-lru")`, `("rename-command", "CONFIG \"\"")`.
    pub settings: Vec<(String, String)>,
}

/// A running redis-server on 127.0.0.1.
#[derive(Debug)]
pub struct RedisServer {
    port: u16,
    options: RedisOptions,
    process: Option<ServerProcess>,
    starts: u32,
    certs: Option<crate::tls::TestCerts>,
    /// Last: fields drop in order, so the server is killed before its directory goes.
    dir: tempfile::TempDir,
}

impl RedisServer {
    /// Starts a server without persistence and without a password.
    pub fn start() -> Self {
        Self::start_with(RedisOptions::default())
    }

    /// Starts a server with `options` on a free port (another one if that port is taken
    /// before the server binds it: [`start_on_free_ports`]).
    pub fn start_with(options: RedisOptions) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("fencelock-redis-")
            .tempdir()
            .expect("temp dir");
        let certs = options.tls.then(|| crate::tls::make_certs(dir.path()));
        let mut server = RedisServer {
            port: 0,
            dir,
            options,
            process: None,
            starts: 0,
            certs,
        };
        start_on_free_ports("redis-server", 1, |ports| {
            server.port = ports[0];
            server.launch()
        });
        server
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join(format!("redis-{}.log", self.starts))
    }

    /// Starts the process on `self.port`; Err(log) if it exited (e.g. the port was taken)
    /// or did not answer within 10 s (then it is killed).
    fn launch(&mut self) -> Result<(), String> {
        self.starts += 1;
        let mut cmd = crate::process::tied_command("redis-server");
        match &self.certs {
            None => {
                cmd.arg("--port").arg(self.port.to_string());
            }
            Some(c) => {
                cmd.args(["--port", "0", "--tls-port"])
                    .arg(self.port.to_string())
                    .arg("--tls-cert-file")
                    .arg(&c.server_cert)
                    .arg("--tls-key-file")
                    .arg(&c.server_key)
                    .arg("--tls-ca-cert-file")
                    .arg(&c.ca_cert)
                    .args(["--tls-auth-clients", "no"]);
            }
        }
        cmd.args([
            "--bind",
            "127.0.0.1",
            "--protected-mode",
            "no",
            "--save",
            "",
            "--daemonize",
            "no",
        ])
        .arg("--dir")
        .arg(self.dir.path())
        .args(["--logfile", ""]);
        match self.options.persistence.unwrap_or(Persistence::None) {
            Persistence::None => {
                cmd.args(["--appendonly", "no"]);
            }
            Persistence::AofAlways => {
                cmd.args(["--appendonly", "yes", "--appendfsync", "always"]);
            }
        }
        if let Some(primary) = self.options.replica_of {
            cmd.args(["--replicaof", "127.0.0.1"]).arg(primary.to_string());
        }
        if let Some(pass) = &self.options.password {
            cmd.args(["--requirepass", pass]);
        }
        for (name, value) in &self.options.settings {
            cmd.arg(format!("--{name}")).args(value.split(' '));
        }
        let log = self.log_path();
        let mut process = ServerProcess::spawn("redis-server", cmd, &log, INSTALL_HINT);
        let port = self.port;
        let tls = self.certs.is_some();
        let log_for_probe = log.clone();
        wait_until(
            "redis-server",
            Duration::from_secs(10),
            &log,
            &mut process,
            port,
            || {
                if tls {
                    // A TLS port does not answer plain text: trust the server's own word.
                    std::fs::read_to_string(&log_for_probe).is_ok_and(|l| l.contains("Ready to accept connections"))
                } else {
                    // Ready when it answers PING (or demands a password).
                    tcp_exchange(port, b"PING\r\n")
                        .is_some_and(|r| r.starts_with(b"+PONG") || r.starts_with(b"-NOAUTH"))
                }
            },
        )?;
        self.process = Some(process);
        Ok(())
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis://[:PASSWORD@]127.0.0.1:PORT`, or `rediss://…?ca_file=CA` with TLS.
    pub fn url(&self) -> String {
        let auth = self
            .options
            .password
            .as_ref()
            .map(|p| format!(":{p}@"))
            .unwrap_or_default();
        match &self.certs {
            Some(c) => format!("rediss://{auth}127.0.0.1:{}?ca_file={}", self.port, c.ca_cert.display()),
            None => format!("redis://{auth}127.0.0.1:{}", self.port),
        }
    }

    /// Kills the server (SIGKILL): no shutdown save, like a crash or power loss.
    pub fn kill(&mut self) {
        if let Some(mut p) = self.process.take() {
            p.kill();
        }
    }

    /// Starts the server again on the same port and directory (kills it first if running).
    /// Without persistence it comes back empty; with AOF it replays its log.
    pub fn restart(&mut self) {
        self.kill();
        if let Err(log) = self.launch() {
            panic!("redis-server did not restart on port {}; log:\n{log}", self.port);
        }
    }

    /// Runs one inline command (e.g. `INFO replication`, `REPLICAOF NO ONE`) over a plain
    /// connection and returns the reply's text (no password, no TLS).
    pub fn command(&self, inline: &str) -> String {
        let request = format!("{inline}\r\nQUIT\r\n");
        crate::process::tcp_exchange_to_eof(self.port, request.as_bytes())
            .map(|r| String::from_utf8_lossy(&r).into_owned())
            .unwrap_or_default()
    }

    /// Client connections the server has now (`connected_clients` of `INFO clients`), not
    /// counting the one this call makes.
    ///
    /// # Panics
    /// When the server does not answer with the count (down, paused, a password set): a 0
    /// in its place would pass any "connections did not grow" check.
    pub fn clients(&self) -> usize {
        let reply = self.command("INFO clients");
        reply
            .lines()
            .find_map(|l| l.strip_prefix("connected_clients:")?.trim().parse::<usize>().ok())
            .map(|n| n.saturating_sub(1))
            .unwrap_or_else(|| {
                panic!(
                    "redis-server on port {} gave no connected_clients: {reply:?}",
                    self.port
                )
            })
    }

    /// Clients subscribed to some channel now (`sub=` above 0 in `CLIENT LIST`; a pattern
    /// subscription alone, `psub=`, does not count).
    pub fn channel_subscribers(&self) -> usize {
        self.command("CLIENT LIST")
            .lines()
            .filter(|l| l.split(' ').any(|f| f.strip_prefix("sub=").is_some_and(|n| n != "0")))
            .count()
    }

    /// The integer reply of an inline command (`EXISTS k`, `DEL k`, `DBSIZE`); `None` when
    /// the reply is not an integer.
    pub fn integer(&self, inline: &str) -> Option<i64> {
        self.command(inline)
            .lines()
            .next()?
            .strip_prefix(':')?
            .trim()
            .parse()
            .ok()
    }

    /// Makes the server refuse writes with `MISCONF`, as after a snapshot that failed (a
    /// disk full or failing, with `stop-writes-on-bgsave-error`, on by default): its
    /// snapshots go to a directory removed under it, and one is taken. `CONFIG SET dir` is
    /// protected on Redis 7: start the server with the setting
    /// `("enable-protected-configs", "yes")`. [`snapshots_succeed`](Self::snapshots_succeed)
    /// ends it, as a later snapshot that succeeds does.
    ///
    /// # Panics
    /// When the server refuses a step, or the snapshot has not failed within 10 s.
    pub fn fail_snapshots(&self) {
        let gone = self.dir.path().join("removed");
        std::fs::create_dir(&gone).expect("a directory for the snapshots");
        // `save` set: Redis refuses writes after a failed snapshot only when it has one.
        for step in [
            "CONFIG SET save \"3600 1\"".to_owned(),
            format!("CONFIG SET dir {}", gone.display()),
        ] {
            let said = self.command(&step);
            assert!(said.starts_with("+OK"), "{step}: {said:?}");
        }
        std::fs::remove_dir(&gone).expect("the snapshots' directory removed");
        self.snapshot("err");
    }

    /// Ends [`fail_snapshots`](Self::fail_snapshots): a snapshot into the server's own
    /// directory succeeds, and writes are accepted again.
    ///
    /// # Panics
    /// When the server refuses a step, or the snapshot has not succeeded within 10 s.
    pub fn snapshots_succeed(&self) {
        let step = format!("CONFIG SET dir {}", self.dir.path().display());
        let said = self.command(&step);
        assert!(said.starts_with("+OK"), "{step}: {said:?}");
        self.snapshot("ok");
    }

    /// Takes a snapshot (`BGSAVE`) and waits, at most 10 s, until it ended with `status`
    /// (`ok`, `err`).
    fn snapshot(&self, status: &str) {
        let said = self.command("BGSAVE");
        assert!(said.starts_with("+Background saving started"), "BGSAVE: {said:?}");
        let want = format!("rdb_last_bgsave_status:{status}");
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let info = self.command("INFO persistence");
            if info.contains("rdb_bgsave_in_progress:0") && info.contains(&want) {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the snapshot did not end with {want} within 10 s: {info}"
            );
            std::thread::sleep(Duration::from_millis(20)); // polling a state with a deadline
        }
    }

    /// A connection subscribed to every channel by pattern (`PSUBSCRIBE *`, as `redis-cli`
    /// or a dashboard may be), open until the returned stream is dropped. Returns once the
    /// server confirmed the subscription; panics when it did not within 5 s.
    pub fn pattern_subscriber(&self) -> std::net::TcpStream {
        use std::io::{Read, Write};
        let mut conn = std::net::TcpStream::connect(("127.0.0.1", self.port)).expect("connect to redis-server");
        conn.set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .expect("set a read timeout");
        conn.write_all(b"PSUBSCRIBE *\r\n").expect("send PSUBSCRIBE");
        // `*3 $10 psubscribe $1 * :1`, the count last.
        let mut reply = Vec::new();
        let mut chunk = [0u8; 64];
        while !reply.ends_with(b":1\r\n") {
            let n = conn.read(&mut chunk).expect("the PSUBSCRIBE confirmation within 5 s");
            assert!(n > 0 && reply.len() < 1024, "PSUBSCRIBE answered {reply:?}");
            reply.extend_from_slice(&chunk[..n]);
        }
        conn
    }

    /// `master_repl_offset` from `INFO replication`.
    pub fn repl_offset(&self) -> Option<u64> {
        self.command("INFO replication")
            .lines()
            .find_map(|l| l.strip_prefix("master_repl_offset:")?.trim().parse().ok())
    }

    /// SIGSTOP: the server stops answering but keeps its connections.
    pub fn pause(&self) {
        self.process.as_ref().expect("redis-server is running").pause();
    }

    /// SIGCONT after [`pause`](Self::pause).
    pub fn resume(&self) {
        self.process.as_ref().expect("redis-server is running").resume();
    }
}

/// `redlock://127.0.0.1:P1,127.0.0.1:P2,...` for independent servers (no password, no
/// TLS), followed by `query` when it is not empty.
pub fn redlock_url(servers: &[RedisServer], query: &str) -> String {
    let hosts: Vec<String> = servers.iter().map(|s| format!("127.0.0.1:{}", s.port())).collect();
    let q = if query.is_empty() {
        String::new()
    } else {
        format!("?{query}")
    };
    format!("redlock://{}{q}", hosts.join(","))
}

/// Starts `n` independent servers without persistence.
pub fn start_many(n: usize) -> Vec<RedisServer> {
    (0..n).map(|_| RedisServer::start()).collect()
}

/// Releases `lease` and waits for `waiting`, a queued waiter's task that returns the
/// instant it was granted the lock and its lease: the time from the release to that
/// grant (what a hand-off cost), and the waiter's lease.
///
/// # Panics
/// When the release fails, or the waiter was not granted within 10 s or its task panicked.
pub async fn hand_off_delay(
    lease: fencelock_core::Lease,
    waiting: tokio::task::JoinHandle<(tokio::time::Instant, fencelock_core::Lease)>,
) -> (Duration, fencelock_core::Lease) {
    let released_at = tokio::time::Instant::now();
    lease.release().await.unwrap();
    let (granted_at, lease) = tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .expect("the live waiter got its turn")
        .unwrap();
    (granted_at - released_at, lease)
}

impl RedisServer {
    /// Calls per command since start (or the last `CONFIG RESETSTAT`), from `INFO
    /// commandstats`: lower-case command name → calls. Commands run inside scripts count
    /// too (under their own names), as do the `EVALSHA`s themselves; this call's own
    /// `INFO` is not included in its reply.
    pub fn commandstats(&self) -> std::collections::BTreeMap<String, u64> {
        self.command("INFO commandstats")
            .lines()
            .filter_map(|l| {
                let (name, rest) = l.strip_prefix("cmdstat_")?.split_once(':')?;
                let calls = rest.strip_prefix("calls=")?.split(',').next()?.parse().ok()?;
                Some((name.to_owned(), calls))
            })
            .collect()
    }

    /// Calls of `command` (lower case) the server refused (`rejected_calls` of `INFO
    /// commandstats`: an ACL's `NOPERM`, a wrong arity); 0 when it has none.
    pub fn rejected_calls(&self, command: &str) -> u64 {
        let prefix = format!("cmdstat_{command}:");
        self.command("INFO commandstats")
            .lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .and_then(|l| l.split(',').find_map(|f| f.strip_prefix("rejected_calls=")))
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or(0)
    }

    /// The server's `run_id` (`INFO server`): new at every start.
    pub fn run_id(&self) -> Option<String> {
        self.command("INFO server")
            .lines()
            .find_map(|l| l.strip_prefix("run_id:").map(|id| id.trim().to_owned()))
    }

    /// All calls of [`commandstats`](Self::commandstats) except `info` and `config`
    /// (the test's own reading of the server): the server work clients asked for.
    pub fn client_commands(&self) -> u64 {
        self.commandstats()
            .iter()
            .filter(|(name, _)| name.as_str() != "info" && !name.starts_with("config"))
            .map(|(_, n)| n)
            .sum()
    }
}
