//! Real PostgreSQL servers for tests, from Debian's `postgresql` package: `initdb` into a
//! temp dir, `postgres` on a free loopback port with its unix socket inside that dir, killed
//! with every backend it forked on drop, restartable on the same data, pausable.
//!
//! The server refuses to run as root. When the test runs as root, the launcher runs
//! `initdb` and `postgres` as the package's unprivileged `postgres` user (the temp dir is
//! handed to that user); otherwise as the current user. The user is switched by the
//! standard library's `CommandExt::uid`/`gid` (no `runuser` parent process that could be
//! killed while the server lives on). Every backend process calls `setsid()`, so a signal
//! to the postmaster's process group does not reach them: kill, pause and resume signal
//! the postmaster and each of its children (found in `/proc`, after the postmaster is
//! stopped, so that it forks none meanwhile) — pausing only the postmaster would leave the
//! backends answering, and a restart must not find the old backends still attached to the
//! shared memory.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use rustix::process::{kill_process, test_kill_process, Pid, Signal};

use crate::ports::start_on_free_ports;
use crate::process::{children_of, tail};

/// How to install the server when it is missing.
pub const INSTALL_HINT: &str = "install it with `apt-get install postgresql` (or run scripts/setup-deps)";

/// Options for [`PgServer::start_with`].
#[derive(Debug, Clone)]
pub struct PgOptions {
    /// `fsync` (default on): off lets a crash lose acknowledged commits.
    pub fsync: bool,
    /// `synchronous_commit` (default on).
    pub synchronous_commit: bool,
}

impl Default for PgOptions {
    fn default() -> Self {
        PgOptions {
            fsync: true,
            synchronous_commit: true,
        }
    }
}

/// A running PostgreSQL server on 127.0.0.1, superuser `postgres`, trust authentication.
#[derive(Debug)]
pub struct PgServer {
    port: u16,
    dir: tempfile::TempDir,
    bin: PathBuf,
    owner: Option<(u32, u32)>,
    options: PgOptions,
    child: Option<Child>,
    starts: u32,
}

/// The newest `/usr/lib/postgresql/<version>/bin` that has `postgres` in it.
fn bin_dir() -> PathBuf {
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let version: u32 = e.file_name().to_str()?.split('.').next()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("postgres").exists().then_some((version, bin))
        })
        .collect();
    found.sort();
    match found.pop() {
        Some((_, bin)) => bin,
        None => panic!("PostgreSQL is not installed (no /usr/lib/postgresql/*/bin/postgres): {INSTALL_HINT}"),
    }
}

/// The uid and gid of the `postgres` user from /etc/passwd, when we are root (the server
/// refuses root); `None` when we are not root.
fn server_owner() -> Option<(u32, u32)> {
    if !rustix::process::geteuid().is_root() {
        return None;
    }
    let passwd = std::fs::read_to_string("/etc/passwd").expect("read /etc/passwd");
    let entry = passwd
        .lines()
        .map(|l| l.split(':').collect::<Vec<_>>())
        .find(|f| f.first() == Some(&"postgres") && f.len() > 3)
        .unwrap_or_else(|| {
            panic!("running as root, and there is no `postgres` user to run the server as: {INSTALL_HINT}")
        });
    let id = |s: &str| s.parse::<u32>().expect("numeric id in /etc/passwd");
    Some((id(entry[2]), id(entry[3])))
}

impl PgServer {
    /// Starts a server with the default options (fsync and synchronous_commit on).
    pub fn start() -> Self {
        Self::start_with(PgOptions::default())
    }

    /// Runs `initdb` in a new temp dir and starts the server on a free port (another one if
    /// that port is taken before the server binds it: [`start_on_free_ports`]).
    pub fn start_with(options: PgOptions) -> Self {
        let mut server = Self::unstarted("fencelock-pg-", bin_dir(), server_owner(), options);
        server.initdb();
        start_on_free_ports("postgres", 1, |ports| {
            server.port = ports[0];
            server.launch()
        });
        server
    }

    /// A hot standby of `primary`: `pg_basebackup -R` of its data (streaming the WAL, so
    /// it follows the primary), started on a free port. It answers reads and refuses every
    /// write ("cannot execute … in a read-only transaction" / "during recovery").
    pub fn standby_of(primary: &PgServer) -> Self {
        let mut server = Self::unstarted(
            "fencelock-pg-standby-",
            primary.bin.clone(),
            primary.owner,
            primary.options.clone(),
        );
        let mut backup = server.command("pg_basebackup");
        backup
            .arg("-D")
            .arg(server.data_dir())
            .args(["-R", "-X", "stream", "-U", "postgres", "-h"])
            .arg(primary.dir())
            .arg("-p")
            .arg(primary.port().to_string());
        server.run_logged("pg_basebackup", backup);
        start_on_free_ports("postgres standby", 1, |ports| {
            server.port = ports[0];
            server.launch()
        });
        server
    }

    /// A server not started yet, in a new temp dir (named `prefix…`) handed to `owner`.
    fn unstarted(prefix: &str, bin: PathBuf, owner: Option<(u32, u32)>, options: PgOptions) -> Self {
        let dir = tempfile::Builder::new().prefix(prefix).tempdir().expect("temp dir");
        if let Some((uid, gid)) = owner {
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid)).expect("hand the temp dir to postgres");
        }
        let uid = owner.map_or_else(|| rustix::process::geteuid().as_raw(), |(uid, _)| uid);
        crate::sysv_shm::remove_orphans(uid);
        PgServer {
            port: 0,
            dir,
            bin,
            owner,
            options,
            child: None,
            starts: 0,
        }
    }

    fn command(&self, program: &str) -> Command {
        let mut cmd = crate::process::tied_command(self.bin.join(program));
        if let Some((uid, gid)) = self.owner {
            cmd.uid(uid).gid(gid);
        }
        // Its own locale-neutral environment; HOME of root is not readable by postgres.
        cmd.env("LC_ALL", "C").env("HOME", self.dir.path());
        cmd
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn initdb(&self) {
        let mut initdb = self.command("initdb");
        initdb.arg("-D").arg(self.data_dir()).args([
            "--auth=trust",
            "-U",
            "postgres",
            "-E",
            "UTF8",
            "--locale=C",
            "--no-sync",
        ]);
        self.run_logged("initdb", initdb);
    }

    /// Runs one of the package's tools to the end, its output in `<what>.log` in the temp
    /// dir; panics with the log's tail (or how to install the package) when it fails.
    fn run_logged(&self, what: &str, mut cmd: Command) {
        let log = self.dir.path().join(format!("{what}.log"));
        let out = std::fs::File::create(&log).expect("create log");
        let err = out.try_clone().expect("clone log handle");
        match cmd.stdin(Stdio::null()).stdout(out).stderr(err).status() {
            Ok(s) if s.success() => {}
            Ok(s) => panic!("{what} failed with {s}; log:\n{}", tail(&log)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                panic!("{what} is not installed ({e}): {INSTALL_HINT}")
            }
            Err(e) => panic!("cannot run {what}: {e}"),
        }
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join(format!("postgres-{}.log", self.starts))
    }

    /// Starts the server on `self.port`; Err(log) if it exited or never became ready.
    fn launch(&mut self) -> Result<(), String> {
        self.starts += 1;
        let log = self.log_path();
        let out = std::fs::File::create(&log).expect("create server log");
        let err = out.try_clone().expect("clone log handle");
        let on_off = |b: bool| if b { "on" } else { "off" };
        let mut cmd = self.command("postgres");
        cmd.arg("-D")
            .arg(self.data_dir())
            .args(["-h", "127.0.0.1", "-p"])
            .arg(self.port.to_string())
            .arg("-k")
            .arg(self.dir.path())
            .args(["-c", &format!("fsync={}", on_off(self.options.fsync))])
            .args([
                "-c",
                &format!("synchronous_commit={}", on_off(self.options.synchronous_commit)),
            ])
            .args(["-c", "max_connections=200", "-c", "shared_buffers=16MB"])
            // Dynamic shared memory as files in the data directory, not POSIX segments in
            // /dev/shm: a server killed (as `kill` and drop do) never removes its segments,
            // and 4,264 of them (2.2 GB of memory) had piled up there; the data directory
            // goes with the temp dir.
            .args(["-c", "dynamic_shared_memory_type=mmap"])
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(0);
        let child = match crate::process::spawn_tied(cmd) {
            Ok(c) => c,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                panic!("postgres is not installed ({e}): {INSTALL_HINT}")
            }
            Err(e) => panic!("cannot start postgres: {e}"),
        };
        self.child = Some(child);
        let pid_file = self.data_dir().join("postmaster.pid");
        let start = std::time::Instant::now();
        loop {
            // The postmaster writes `ready` as the 8th line of its pid file once it accepts
            // connections (a readiness probe of a starting server). The file of a killed
            // predecessor stays behind, so the pid on its first line must be this one's.
            let ready = std::fs::read_to_string(&pid_file).is_ok_and(|t| {
                let lines: Vec<&str> = t.lines().collect();
                lines.first().and_then(|l| l.trim().parse::<u32>().ok()) == self.pid()
                    && lines.get(7).is_some_and(|l| l.trim() == "ready")
            });
            if ready {
                return Ok(());
            }
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                self.kill();
                return Err(format!("postgres exited with {status}; log:\n{}", tail(&log)));
            }
            if start.elapsed() > Duration::from_secs(30) {
                self.kill();
                return Err(format!("postgres not ready within 30s; log:\n{}", tail(&log)));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends `sig` to the postmaster and every process it forked. SIGSTOP stops the
    /// postmaster first ([`stop_with_children`]), so that no backend it forks meanwhile is
    /// left running; any other signal goes to the children, then to the postmaster.
    fn signal_all(&self, sig: Signal) {
        let Some(pid) = self.pid() else {
            panic!("postgres is not running");
        };
        let pid = pid as i32;
        if sig == Signal::STOP {
            stop_with_children(pid);
            return;
        }
        for p in children_of(pid).into_iter().chain(std::iter::once(pid)) {
            if let Some(p) = Pid::from_raw(p) {
                let _ = kill_process(p, sig);
            }
        }
    }

    /// The postmaster's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The directory of the unix socket (and of the data).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// `postgres://postgres@127.0.0.1:PORT/postgres?sslmode=disable`.
    pub fn url(&self) -> String {
        self.url_through(self.port)
    }

    /// The same URL with another port, e.g. a [`FaultProxy`](crate::proxy::FaultProxy)'s.
    pub fn url_through(&self, port: u16) -> String {
        format!("postgres://postgres@127.0.0.1:{port}/postgres?sslmode=disable")
    }

    /// Kills the server and every backend it forked: no checkpoint, like a crash or power
    /// loss. The backends call `setsid()`, so no process-group signal reaches them: the
    /// postmaster is stopped first (it forks no more backends; `stop_with_children`
    /// lists them until no new one appears), then it and each backend get SIGKILL, and
    /// the call waits (at most 5 s) until no backend is left attached to the shared
    /// memory, whose segment it then removes. Idempotent.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let segment = crate::sysv_shm::segment_of(&self.data_dir());
            let pid = child.id() as i32;
            let backends = stop_with_children(pid);
            let _ = child.kill();
            let _ = child.wait();
            for b in &backends {
                if let Some(p) = Pid::from_raw(*b) {
                    let _ = kill_process(p, Signal::KILL);
                }
            }
            // Wait (bounded) until no backend is left holding the shared memory.
            for _ in 0..250 {
                let alive = backends
                    .iter()
                    .any(|b| Pid::from_raw(*b).is_some_and(|p| test_kill_process(p).is_ok() && is_running(*b)));
                if !alive {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            // A killed postmaster never removes its segment (see `crate::sysv_shm`).
            if let Some(id) = segment {
                crate::sysv_shm::remove(id);
            }
        }
    }

    /// The id of the System V shared memory segment the running postmaster made (its
    /// interlock; `ipcs -m` lists it); `None` when it is not running. Removed when the
    /// server is killed or dropped.
    pub fn shared_memory_segment(&self) -> Option<u64> {
        self.child.as_ref()?;
        crate::sysv_shm::segment_of(&self.data_dir())
    }

    /// Starts the server again on the same port and data (kills it first if running): it
    /// runs crash recovery and keeps every committed row.
    pub fn restart(&mut self) {
        self.kill();
        let mut last = String::new();
        for _ in 0..3 {
            match self.launch() {
                Ok(()) => return,
                Err(log) => last = log,
            }
        }
        panic!("postgres did not restart on port {}; log:\n{last}", self.port);
    }

    /// SIGSTOP to the server and all its backends: nothing answers, connections stay open.
    pub fn pause(&self) {
        self.signal_all(Signal::STOP);
    }

    /// SIGCONT after [`pause`](Self::pause).
    pub fn resume(&self) {
        self.signal_all(Signal::CONT);
    }

    /// How many server backends (connections) have a client that named itself `app`
    /// (`application_name`), from `pg_stat_activity`.
    pub fn backends_of(&self, app: &str) -> usize {
        let n = self.psql(&format!(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = '{}'",
            app.replace('\'', "''")
        ));
        n.parse()
            .unwrap_or_else(|e| panic!("pg_stat_activity count `{n}`: {e}"))
    }

    /// Runs SQL with `psql` over the unix socket and returns its unaligned output
    /// (`-Atc`), e.g. `SELECT pg_terminate_backend(…)`. Panics when psql fails.
    pub fn psql(&self, sql: &str) -> String {
        let out = Command::new(self.bin.join("psql"))
            .args(["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-U", "postgres", "-h"])
            .arg(self.dir.path())
            .arg("-p")
            .arg(self.port.to_string())
            .args(["-d", "postgres", "-c", sql])
            .env("LC_ALL", "C")
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cannot run psql: {e}: {INSTALL_HINT}"));
        assert!(
            out.status.success(),
            "psql `{sql}` failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Stops `pid` (SIGSTOP), waits (at most 5 s) until it is stopped — a fork it was making
/// when the signal came completes first — then stops its children, listing them again
/// until a listing finds no new one (at most 50 listings), and waits until each is
/// stopped too (at most 5 s each: a child that was runnable stops only once it is
/// scheduled, which on a loaded machine came after the check of the test below —
/// "children left running"); returns the children. A stopped postmaster forks no backend,
/// so none escapes a pause or a kill that follows.
fn stop_with_children(pid: i32) -> Vec<i32> {
    let stop = |p: i32| {
        if let Some(p) = Pid::from_raw(p) {
            let _ = kill_process(p, Signal::STOP);
        }
    };
    // Stopped, gone or a zombie: it runs and forks nothing either.
    let until_stopped = |p: i32| crate::process::until_stopped(p.unsigned_abs());
    stop(pid);
    until_stopped(pid);
    let mut seen: Vec<i32> = Vec::new();
    for _ in 0..50 {
        let new: Vec<i32> = children_of(pid).into_iter().filter(|c| !seen.contains(c)).collect();
        if new.is_empty() {
            break;
        }
        for c in new {
            stop(c);
            seen.push(c);
        }
    }
    seen.iter().for_each(|c| until_stopped(*c));
    seen
}

/// The state letter of `pid` in `/proc/PID/stat` (`R`, `S`, `T` stopped, `Z`…), if it
/// exists.
fn state_of(pid: i32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?.1.trim_start().chars().next()
}

/// `true` unless the process is gone or a zombie.
fn is_running(pid: i32) -> bool {
    !matches!(state_of(pid), None | Some('Z'))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A parent that forks all the time, as a postmaster accepting connections does: every
    /// child is stopped once [`stop_with_children`] returns. Listing the children before
    /// stopping the parent (as `pause` and `kill` did) missed those forked in between,
    /// which went on running — answering while "paused", or holding the shared memory
    /// after a "kill".
    #[test]
    fn children_forked_while_stopping_are_stopped_too() {
        let mut shell = Command::new("sh")
            .args(["-c", "i=0; while [ $i -lt 400 ]; do sleep 60 & i=$((i+1)); done; wait"])
            .process_group(0)
            .spawn()
            .expect("start sh");
        let pid = shell.id() as i32;
        let group = Pid::from_raw(pid).expect("pid");
        let start = std::time::Instant::now();
        while children_of(pid).len() < 20 && start.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(5)); // polling a starting shell, bounded
        }
        let stopped = stop_with_children(pid);
        let running: Vec<i32> = children_of(pid)
            .into_iter()
            .filter(|c| !matches!(state_of(*c), Some('T' | 't' | 'Z' | 'X') | None))
            .collect();
        let _ = rustix::process::kill_process_group(group, Signal::KILL);
        let _ = shell.wait();
        assert!(stopped.len() >= 20, "the shell forked {} children", stopped.len());
        assert!(
            running.is_empty(),
            "children left running: {running:?} ({} stopped)",
            stopped.len()
        );
    }
}
