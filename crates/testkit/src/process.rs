//! A server process started by a test: killed on drop, pausable, restartable.

use std::ffi::OsStr;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rustix::process::{kill_process, Pid, Signal};

/// A command for `program` that dies with this process: it runs through `setpriv
/// --pdeathsig KILL` (util-linux), so the kernel sends the server SIGKILL when this process
/// dies, even by SIGKILL (`PR_SET_PDEATHSIG`, Linux) — a test or `fencelock bench` killed
/// outright leaves no server behind. (The workspace forbids `unsafe`, so the `prctl` cannot
/// be made in a `pre_exec` hook here.) Spawn it with [`spawn_tied`]. When `program` or
/// `setpriv` cannot be found, the plain command is returned, so that spawning it fails with
/// "not found" and the caller's install hint.
pub fn tied_command(program: impl AsRef<OsStr>) -> Command {
    let program = program.as_ref();
    if !found(program) || !found(OsStr::new("setpriv")) {
        return Command::new(program);
    }
    let mut cmd = Command::new("setpriv");
    cmd.args(["--pdeathsig", "KILL", "--"]).arg(program);
    cmd
}

/// Whether `program` is a file, or a name found in `PATH`.
fn found(program: &OsStr) -> bool {
    let path = Path::new(program);
    if path.components().count() > 1 {
        return path.is_file();
    }
    std::env::var_os("PATH").is_some_and(|dirs| std::env::split_paths(&dirs).any(|d| d.join(program).is_file()))
}

/// Spawns `cmd` (from [`tied_command`]) from one spawner thread that lives as long as the
/// process: the kernel sends the death signal when the *thread* that forked exits, not the
/// process, so the fork is never made by a test's thread or a runtime's blocking thread,
/// which end while their servers are still in use.
///
/// # Errors
/// As [`Command::spawn`].
pub fn spawn_tied(cmd: Command) -> std::io::Result<Child> {
    use std::sync::mpsc;
    use std::sync::OnceLock;
    type Job = (Command, mpsc::Sender<std::io::Result<Child>>);
    static SPAWNER: OnceLock<mpsc::Sender<Job>> = OnceLock::new();
    let spawner = SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("testkit-spawner".into())
            .spawn(move || {
                for (mut cmd, reply) in rx {
                    let _ = reply.send(cmd.spawn());
                }
            })
            .expect("start the server spawner thread");
        tx
    });
    let gone = || std::io::Error::other("the server spawner thread is gone");
    let (reply, answer) = mpsc::channel();
    spawner.send((cmd, reply)).map_err(|_| gone())?;
    answer.recv().map_err(|_| gone())?
}

/// The longest a test's package install (pip, npm) may take: a first run on a fresh
/// machine downloads a few MB; a stalled index or registry must fail the test with its
/// hint, not hold the suite until CI's own limit.
pub const INSTALL_LIMIT: Duration = Duration::from_secs(600);

/// A command for `program` that is killed once `limit` has passed (SIGTERM, then SIGKILL
/// 10 s later): it runs through coreutils' `timeout(1)`, which exits 124 when the limit
/// cut the command off (see [`timed_out`]). Used for the installs a test makes on its
/// first run; our own loops bound themselves, and the package managers' own timeouts are
/// per request, not for the whole install. When `timeout` cannot be found, the plain
/// command is returned.
pub fn bounded_command(program: impl AsRef<OsStr>, limit: Duration) -> Command {
    let program = program.as_ref();
    if !found(OsStr::new("timeout")) {
        return Command::new(program);
    }
    let mut cmd = Command::new("timeout");
    cmd.arg("--kill-after=10s")
        .arg(format!("{}s", limit.as_secs().max(1)))
        .arg(program);
    cmd
}

/// Whether a [`bounded_command`] ended because its limit passed (`timeout(1)`'s exit
/// status 124, or 137 when the command ignored SIGTERM and was killed).
pub fn timed_out(status: std::process::ExitStatus) -> bool {
    matches!(status.code(), Some(124 | 137))
}

/// A running server process. Dropping it kills the process (SIGKILL) and reaps it.
#[derive(Debug)]
pub struct ServerProcess {
    name: String,
    child: Option<Child>,
}

impl ServerProcess {
    /// Starts `cmd` (stdout and stderr to `log`). A missing binary fails the test with
    /// `install_hint`.
    pub fn spawn(name: &str, mut cmd: Command, log: &Path, install_hint: &str) -> Self {
        let out = std::fs::File::create(log).expect("create server log");
        let err = out.try_clone().expect("clone log handle");
        cmd.stdin(Stdio::null()).stdout(out).stderr(err);
        match spawn_tied(cmd) {
            Ok(child) => ServerProcess {
                name: name.to_owned(),
                child: Some(child),
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                panic!("{name} is not installed ({e}): {install_hint}")
            }
            Err(e) => panic!("cannot start {name}: {e}"),
        }
    }

    /// The process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether this process itself holds a TCP socket listening on `port` (any local
    /// address, IPv4 or IPv6): one of its open files is a socket whose inode
    /// `/proc/net/tcp{,6}` lists in state LISTEN on that port. `false` when it has exited,
    /// or when `/proc` cannot be read. A probe answered on `port` proves nothing more than
    /// that *some* server listens there; this says it is ours.
    pub fn listens_on(&self, port: u16) -> bool {
        let Some(pid) = self.pid() else {
            return false;
        };
        let inodes = listening_inodes(port);
        if inodes.is_empty() {
            return false;
        }
        let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
            return false;
        };
        fds.filter_map(Result::ok).any(|fd| {
            std::fs::read_link(fd.path()).is_ok_and(|target| {
                let target = target.to_string_lossy();
                target
                    .strip_prefix("socket:[")
                    .and_then(|t| t.strip_suffix(']'))
                    .is_some_and(|inode| inodes.iter().any(|i| i == inode))
            })
        })
    }

    /// `Some(status)` if the process has exited.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.as_mut().and_then(|c| c.try_wait().ok().flatten())
    }

    /// Sends SIGSTOP: the process stops answering but keeps its sockets open. Returns once
    /// every thread of it is stopped (polled in `/proc`, bounded: 5 s), not as soon as the
    /// signal is sent: a thread that was runnable stops only when it is next scheduled,
    /// which on a loaded machine can come after the caller's next step.
    pub fn pause(&self) {
        self.signal(Signal::STOP);
        if let Some(pid) = self.pid() {
            until_stopped(pid);
        }
    }

    /// Sends SIGCONT after [`pause`](Self::pause).
    pub fn resume(&self) {
        self.signal(Signal::CONT);
    }

    /// Kills the process (SIGKILL) and reaps it. Idempotent.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            // A stopped process dies of SIGKILL too.
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn signal(&self, sig: Signal) {
        let pid = self
            .pid()
            .and_then(|p| Pid::from_raw(p as i32))
            .unwrap_or_else(|| panic!("{} is not running", self.name));
        kill_process(pid, sig).unwrap_or_else(|e| panic!("cannot signal {}: {e}", self.name));
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// One line of `/proc/net/tcp` or `tcp6`: a TCP socket of this machine.
pub(crate) struct TcpSocket {
    /// The local port.
    pub port: u16,
    /// The state, as the kernel writes it in hex: `0A` listening, `01` established.
    pub state: String,
    /// The socket's inode, as decimal text (`socket:[INODE]` in `/proc/PID/fd`).
    pub inode: String,
}

/// The TCP sockets of this machine, IPv4 and IPv6 (`/proc/net/tcp` and `tcp6`); none when
/// `/proc` cannot be read.
pub(crate) fn tcp_sockets() -> Vec<TcpSocket> {
    let mut out = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            // sl local_address rem_address st tx_queue:rx_queue tr:tm->when retrnsmt uid timeout inode
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (Some(local), Some(state), Some(inode)) = (fields.get(1), fields.get(3), fields.get(9)) else {
                continue;
            };
            let Some(port) = local
                .rsplit_once(':')
                .and_then(|(_, p)| u16::from_str_radix(p, 16).ok())
            else {
                continue;
            };
            out.push(TcpSocket {
                port,
                state: (*state).to_owned(),
                inode: (*inode).to_owned(),
            });
        }
    }
    out
}

/// The inodes of the TCP sockets listening on `port` (state `0A`), as decimal text.
fn listening_inodes(port: u16) -> Vec<String> {
    tcp_sockets()
        .into_iter()
        .filter(|s| s.state == "0A" && s.port == port)
        .map(|s| s.inode)
        .collect()
}

/// Polls `ready` every 20 ms until it returns true *and* `server` itself listens on
/// `port` (see [`ServerProcess::listens_on`]) and has not exited, for at most `limit`;
/// otherwise `Err` with what went wrong and the tail of `log`. (A readiness probe of a
/// starting server, not a synchronisation of the code under test.)
///
/// The probe alone is not enough: when another server holds `port` (a launcher that
/// picked the same port, or one that took it while ours restarted), it answers the probe
/// while ours fails to bind and exits; the server would be taken for ready on a port it
/// does not hold.
pub fn wait_until(
    what: &str,
    limit: Duration,
    log: &Path,
    server: &mut ServerProcess,
    port: u16,
    mut ready: impl FnMut() -> bool,
) -> Result<(), String> {
    let start = Instant::now();
    loop {
        if ready() && server.listens_on(port) && server.exited().is_none() {
            return Ok(());
        }
        if let Some(status) = server.exited() {
            return Err(format!("{what}: the server exited with {status}; log:\n{}", tail(log)));
        }
        if start.elapsed() > limit {
            return Err(format!("{what}: not ready within {limit:?}; log:\n{}", tail(log)));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The last 40 lines of a log file.
pub fn tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

/// Sends `request` to 127.0.0.1:`port` and returns what came back within 500 ms, if any.
pub fn tcp_exchange(port: u16, request: &[u8]) -> Option<Vec<u8>> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(200)).ok()?;
    s.set_read_timeout(Some(Duration::from_millis(500))).ok()?;
    s.write_all(request).ok()?;
    let mut buf = [0u8; 256];
    let n = s.read(&mut buf).ok()?;
    Some(buf[..n].to_vec())
}

/// Sends one HTTP/1.1 request to 127.0.0.1:`port` (`GET` without a body; any other
/// method with `body` as JSON) and returns the response body, decoded (etcd sends
/// `/metrics` in chunks), if a `200` response arrived within a second.
pub fn http(port: u16, method: &str, path: &str, body: &str) -> Option<String> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .proxy(None) // loopback only: never through a proxy named in the environment
        .timeout_global(Some(Duration::from_secs(1)))
        .http_status_as_error(true)
        .build()
        .into();
    let url = format!("http://127.0.0.1:{port}{path}");
    let response = if method == "GET" {
        agent.get(&url).call()
    } else {
        let request = ureq::http::Request::builder()
            .method(method)
            .uri(&url)
            .header("Content-Type", "application/json")
            .body(body.to_owned())
            .ok()?;
        agent.run(request)
    };
    let mut response = response.ok()?;
    (response.status() == 200).then_some(())?;
    response.body_mut().read_to_string().ok()
}

/// Sends `request` to 127.0.0.1:`port` and returns everything the server sent before it
/// closed the connection (at most 64 KiB, within a second).
pub fn tcp_exchange_to_eof(port: u16, request: &[u8]) -> Option<Vec<u8>> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(200)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(1))).ok()?;
    s.write_all(request).ok()?;
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    while out.len() < 64 * 1024 {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(_) => break,
        }
    }
    (!out.is_empty()).then_some(out)
}

/// The processes whose parent is `pid` (from `/proc/*/stat`; Linux): a server's
/// children, e.g. a postmaster's backends.
pub fn children_of(pid: i32) -> Vec<i32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| {
            let child: i32 = e.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(e.path().join("stat")).ok()?;
            // `pid (comm) state ppid …`; comm may hold spaces, so read after the last `)`.
            let ppid: i32 = stat.rsplit_once(')')?.1.split_whitespace().nth(1)?.parse().ok()?;
            (ppid == pid).then_some(child)
        })
        .collect()
}

/// Waits (polling `/proc`, at most 5 s) until every thread of `pid` is stopped after a
/// SIGSTOP, or gone: a thread that was runnable stops only once it is next scheduled.
pub fn until_stopped(pid: u32) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !all_threads_stopped(pid) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(2)); // polling a signal's effect, bounded
    }
}

/// `true` when every thread of `pid` is stopped (`T`, or `t` under a tracer), gone or a
/// zombie — or the process cannot be read (gone).
fn all_threads_stopped(pid: u32) -> bool {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return true;
    };
    tasks.flatten().all(|task| {
        std::fs::read_to_string(task.path().join("stat"))
            .ok()
            .and_then(|stat| stat.rsplit_once(')').map(|(_, rest)| rest.trim_start().chars().next()))
            .flatten()
            .is_none_or(|state| matches!(state, 'T' | 't' | 'Z' | 'X'))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A server on a free loopback port that answers its first connection with `response`.
    fn answering(response: &'static [u8]) -> u16 {
        let listener = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let port = listener.local_addr().unwrap().port();
        std::thread::spawn(move || {
            if let Ok((mut conn, _)) = listener.accept() {
                let _ = conn.set_read_timeout(Some(Duration::from_secs(1)));
                let _ = conn.read(&mut [0u8; 1024]);
                let _ = conn.write_all(response);
            }
        });
        port
    }

    /// An install that stalls is cut off at its limit and reported as timed out, not
    /// waited for (a stalled package index held the suite before).
    #[test]
    fn a_bounded_command_is_cut_off_at_its_limit() {
        let started = Instant::now();
        let out = bounded_command("sleep", Duration::from_secs(1))
            .arg("30")
            .output()
            .unwrap();
        assert!(timed_out(out.status), "not reported as timed out: {:?}", out.status);
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "waited {:?}",
            started.elapsed()
        );
        let done = bounded_command("true", Duration::from_secs(5)).output().unwrap();
        assert!(done.status.success() && !timed_out(done.status));
    }

    /// `pause` returns with every thread of a busy multi-threaded process stopped (four
    /// threads spinning in python3: runnable all the time, as a loaded server's are).
    #[test]
    fn pause_returns_with_every_thread_stopped() {
        let dir = tempfile::tempdir().unwrap();
        let mut cmd = Command::new("python3");
        cmd.args([
            "-c",
            "import threading\nfor _ in range(4): threading.Thread(target=lambda: [0 for _ in iter(int, 1)], daemon=True).start()\nthreading.Event().wait(60)",
        ]);
        let mut spinning = ServerProcess::spawn("python3", cmd, &dir.path().join("log"), "apt-get install python3");
        let pid = spinning.pid().unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::fs::read_dir(format!("/proc/{pid}/task")).map_or(0, |d| d.count()) < 5 {
            assert!(Instant::now() < deadline, "the threads never started");
            std::thread::sleep(Duration::from_millis(5)); // polling a starting process, bounded
        }
        for _ in 0..20 {
            spinning.pause();
            assert!(all_threads_stopped(pid), "pause returned with a thread still running");
            spinning.resume();
        }
        spinning.kill();
    }

    /// etcd's `/metrics` comes in chunks (`Transfer-Encoding: chunked`): the body handed
    /// back is the decoded one. The hand-written reader returned the chunk framing with it,
    /// so the metric line a chunk boundary fell in was lost — `watcher_total` read as 0
    /// in one run of the handoff tests. Failed before: "5\r\nhello\r\n6…".
    #[test]
    fn a_chunked_body_is_decoded() {
        let port = answering(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
        );
        assert_eq!(http(port, "GET", "/metrics", "").as_deref(), Some("hello world"));
    }

    /// The servers are on loopback: a proxy named in the environment (`HTTP_PROXY`) is not
    /// used — through it, `metrics()` panicked and `leader()` found none (ureq reads the
    /// variable by default; helper-66's review). Runs the chunked test again in a child
    /// process with a proxy that nothing listens on. Failed before: the child's test failed.
    #[test]
    fn a_proxy_in_the_environment_is_not_used() {
        let test = "process::tests::a_chunked_body_is_decoded";
        let out = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", test, "--test-threads", "1"])
            .env("HTTP_PROXY", "http://127.0.0.1:9")
            .env("http_proxy", "http://127.0.0.1:9")
            .env_remove("NO_PROXY")
            .env_remove("no_proxy")
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && stdout.contains("1 passed"),
            "{stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    #[test]
    fn a_status_other_than_200_is_none() {
        let port = answering(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        assert_eq!(http(port, "GET", "/health", ""), None);
    }
}
