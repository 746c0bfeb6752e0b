//! `fencelock run KEY -- CMD`: a command under a lock.
//!
//! The process tree, from the top:
//!
//! ```text
//! fencelock run            holds the lease, renews it, forwards signals to the group
//! └─ fencelock __guard     leader of a new process group; kills the group when the
//!    │                     validity ends unrenewed or `run` dies (see guard.rs)
//!    └─ CMD …              the command and everything it starts, in that group
//! ```
//!
//! Loss, forwarded SIGINT/SIGTERM/SIGHUP and the `--kill-after` SIGKILL go to the whole
//! group; when the command exits, what it left running in its group is stopped too before
//! the lock is released. What remains possible: a descendant that leaves the group
//! (`setsid`, `setpgid`, a daemon) is out of reach — the fencing token in its environment
//! is then the protection: a fenced resource refuses its writes once a newer holder wrote.

use std::io::Write;
use std::os::fd::OwnedFd;
use std::process::{ExitCode, Stdio};
use std::time::{Duration, Instant};

use fencelock::{DistributedLock, Lease, LockError, LostReason};
use rustix::process::{Pid, Signal};
use tokio::process::{Child, Command};

use crate::args::{Cli, RunArgs};
use crate::exit;
use crate::guard;
use crate::{backend, exit::fail};

pub(crate) use crate::signals::Signals;
use crate::signals::Stops;

/// Runs the command under the lock and returns the exit status to use.
pub async fn run(cli: &Cli, args: &RunArgs) -> ExitCode {
    // Before anything else: a signal during the connect or the wait must be ours to handle
    // (to leave no queue entry behind), not kill us by default.
    let mut signals = Signals::install();
    let mut stops = Stops::install();
    if let Err(e) = fencelock::options::validate_key(&args.key) {
        return exit::fail_with(&e);
    }
    // An election's seat is a lock key of the same backend (`election.NAME`): `run` on it
    // would take the seat with no value, `elect` would then say "led by someone else" and
    // `leader` print a term without one (a new-user trial). The library refuses such a key
    // too (`validate_key`); refused here first, with the command to use instead.
    if let Some(name) = args.key.strip_prefix(fencelock_core::election::SEAT_PREFIX) {
        return exit::bad_input(&format!(
            "the key `{}` is the seat of the election `{name}`: campaign with `fencelock elect {name}`, \
             or name the lock otherwise",
            args.key
        ));
    }
    if let Err(code) = crate::command_check::before_waiting(&args.command, "waiting for the lock") {
        return code;
    }
    if let Some(addr) = args.metrics_addr {
        if let Err(message) = crate::metrics::serve(addr) {
            return fail(&message, exit::CONFIG);
        }
    }
    let (locks, lease) = match crate::waiting::connect_and_wait(&LockWait { cli, args }, &mut signals, &mut stops).await
    {
        Ok(v) => v,
        Err(code) => return code,
    };
    tracing::info!(key = %args.key, token = %lease.token(), "acquired");
    let code = supervise(args, lease, &mut signals).await;
    close(&*locks).await;
    code
}

/// `run`'s wait: a lock's lease (see [`crate::waiting`]).
struct LockWait<'a> {
    cli: &'a Cli,
    args: &'a RunArgs,
}

impl crate::waiting::Wait for LockWait<'_> {
    type Backend = std::sync::Arc<dyn DistributedLock>;
    type Won = Lease;

    fn what(&self) -> String {
        format!("`{}`", self.args.key)
    }

    async fn connect(&self) -> Result<(Self::Backend, fencelock::LockOptions), LockError> {
        backend::connect_for_processes(self.cli, "run", self.args.ttl).await
    }

    fn options(&self, defaults: fencelock::LockOptions) -> (fencelock::LockOptions, bool) {
        let a = self.args;
        let chosen = crate::lock_opts::choose(defaults, a.ttl, a.wait, a.no_wait);
        (chosen.opts, chosen.try_once)
    }

    fn starting(&self, locks: &Self::Backend, opts: &fencelock::LockOptions, try_once: bool) {
        tracing::info!(key = %self.args.key, wait = ?(!try_once).then(|| opts.wait()), on = %locks.describe(), "acquiring");
    }

    async fn wait(
        &self,
        locks: &Self::Backend,
        opts: &fencelock::LockOptions,
        try_once: bool,
    ) -> Result<Lease, LockError> {
        acquire(&**locks, &self.args.key, opts, try_once).await
    }

    async fn close(&self, locks: &Self::Backend) -> Result<(), LockError> {
        crate::waiting::bounded_close(locks.close()).await
    }

    fn taken(&self, locks: &Self::Backend, how: &str) -> ExitCode {
        fail(
            &format!(
                "lock `{}` is held by someone else; {how} (on {})",
                self.args.key,
                locks.describe()
            ),
            self.args.conflict_exit_code,
        )
    }

    fn interrupted(&self) -> String {
        format!("waiting for `{}`; not acquired", self.args.key)
    }

    /// The `--wait` asked, written back as the command line writes durations: the time
    /// waited, rounded to a tenth (`{:.1?}`), said "within 2.4s" for `--wait 2.35s`, and
    /// the few ms a last attempt adds past the bound are not news to the user.
    fn not_within(&self, asked: Duration, _waited: Duration) -> String {
        format!(
            "not acquired within {}",
            fencelock::options::duration_text::human(asked)
        )
    }
}

async fn acquire(
    locks: &dyn DistributedLock,
    key: &str,
    opts: &fencelock::LockOptions,
    try_once: bool,
) -> Result<Lease, LockError> {
    if !try_once {
        return locks.acquire(key, opts).await;
    }
    match locks.try_acquire(key, opts).await {
        Ok(Some(lease)) => Ok(lease),
        Ok(None) => Err(LockError::Timeout {
            key: key.to_owned(),
            waited: Duration::ZERO,
        }),
        Err(e) => Err(e),
    }
}

/// Gives the backend [`CLOSE_WITHIN`](crate::waiting::CLOSE_WITHIN) to end its session
/// (queue entries, ephemeral nodes); a failure is logged.
pub(crate) async fn close(locks: &dyn DistributedLock) {
    crate::waiting::warn_close(crate::waiting::bounded_close(locks.close()).await);
}

/// Starts the guard and the command, watches them and the lease, and cleans up.
async fn supervise(args: &RunArgs, lease: Lease, signals: &mut Signals) -> ExitCode {
    supervise_with(args, lease, signals, &[], Holding::Lock).await
}

/// What `run` or `elect` holds while the command runs, as its messages name it: `elect`
/// speaks of the election and its term, not of the lease on its seat's key
/// (`election.NAME`) and a token — the words `elect`'s user knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Holding<'a> {
    /// `run`: the lease on a lock.
    Lock,
    /// `elect`: the leadership of the election of this name.
    Election(&'a str),
}

impl Holding<'_> {
    /// "lease on `KEY` (token N)", or "leadership of election `NAME` (term N)".
    pub(crate) fn of(self, key: &str, token: impl std::fmt::Display) -> String {
        match self {
            Holding::Lock => format!("lease on `{key}` (token {token})"),
            Holding::Election(name) => format!("leadership of election `{name}` (term {token})"),
        }
    }

    /// An error on one line; a loss ([`LockError::LeaseLost`]) in these terms.
    fn error(self, e: &LockError) -> String {
        match (self, e) {
            (Holding::Election(_), LockError::LeaseLost { key, token, reason, .. }) => {
                format!("{} is lost: {reason}", self.of(key, token))
            }
            _ => exit::one_line(e),
        }
    }

    /// "the lock on `KEY` was released", or "the leadership of election `NAME` was resigned".
    fn given_back(self, key: &str) -> String {
        match self {
            Holding::Lock => format!("the lock on `{key}` was released"),
            Holding::Election(name) => format!("the leadership of election `{name}` was resigned"),
        }
    }
}

/// [`supervise`], with `env` added to the command's environment (`elect` adds
/// FENCELOCK_TERM) and messages that name what is held as `holding` says; everything
/// else — process group, guard, loss and exit codes — is the same.
pub(crate) async fn supervise_with(
    args: &RunArgs,
    lease: Lease,
    signals: &mut Signals,
    env: &[(&str, String)],
    holding: Holding<'_>,
) -> ExitCode {
    let Some(program) = args.command.first() else {
        return exit::bad_input("no command given after --");
    };
    let program = &exit::escaped_os(program);
    // Lost between the grant and here (a TTL little above the round trip): the same loss,
    // with the same exit status, as the guard's own check just before it starts CMD. CMD
    // never runs: the lock was not acquired for it (75), it was not lost while CMD ran.
    let held = tokio::select! {
        biased; // a held lease goes on as before; a signal already queued is forwarded later
        held = settled(&lease) => held,
        sig = signals.next() => {
            // Only while a suspended lease is waited for: nothing started yet.
            let _ = lease.release().await;
            return fail(
                &format!(
                    "{} while the lease was suspended; not starting the command",
                    crate::signals::name(sig)
                ),
                128 + sig.as_raw() as u8,
            );
        }
    };
    if !held {
        let _ = lease.release().await;
        return fail(LOST_BEFORE_START, args.conflict_exit_code);
    }
    let mut started = match start(args, &lease, env) {
        Ok(s) => s,
        Err(e) => {
            let _ = lease.release().await;
            return fail(&format!("cannot start the guard of `{program}`: {e}"), exit::FAILURE);
        }
    };
    let group = started.group;
    let renews = lease.auto_renews();
    let (lease_key, lease_token) = (lease.key().to_owned(), lease.token());
    let mut killed = false;
    let outcome = watch(&mut started, &lease, args.kill_after, signals, &mut killed, holding).await;
    // `run`'s own SIGKILL after --kill-after goes to the whole group, the guard included:
    // not a kill of the guard from outside (before, it was said to be one), and said
    // already ("the command ignored SIGTERM …; sent its process group SIGKILL").
    let outcome = match outcome {
        Outcome::GuardKilled { code, own: false, .. } if killed => Outcome::KilledAfterGrace(code),
        other => other,
    };
    // Nothing of the command may run once the lock is given back.
    let stopped = stop_group(group, args.kill_after, killed).await;
    let ended = started.report.ended();
    let released = lease.release().await;
    let lost = |message: Option<String>| match message {
        Some(message) => fail(&message, args.lost_exit_code),
        None => ExitCode::from(args.lost_exit_code),
    };
    match outcome {
        Outcome::Exited(code) => match released {
            Err(e @ LockError::LeaseLost { .. }) => lost(Some(format!(
                "{}; `{program}` finished, but not entirely under the lock",
                holding.error(&e)
            ))),
            Err(e) => {
                tracing::warn!(error = %exit::one_line(&e), "release failed; the lease will expire by its TTL");
                ExitCode::from(code)
            }
            Ok(()) => ExitCode::from(code),
        },
        // The guard said the loss on stderr (`run` was stopped): not again. The backend's
        // verdict (expired, not held) only confirms it, so it goes to `-v` — a second
        // "lost" line for one loss read as two losses (new-user trials, on every backend).
        Outcome::GuardKilled {
            own: true, said: true, ..
        } => {
            if let Err(e @ LockError::LeaseLost { .. }) = &released {
                tracing::info!(verdict = %exit::one_line(e), "the release confirms the loss the guard reported");
            }
            lost(None)
        }
        Outcome::KilledAfterGrace(code) => match released {
            Err(e @ LockError::LeaseLost { .. }) => lost(Some(format!(
                "{}; `{program}` did not finish: it ignored SIGTERM and was killed",
                holding.error(&e)
            ))),
            // The command's own status when the guard had reported its end (the SIGKILL
            // then took what it left behind).
            _ => ExitCode::from(ended.unwrap_or(code)),
        },
        Outcome::GuardKilled { code, own: false, .. } => guard_killed_from_outside(
            program,
            &lease_key,
            holding,
            code,
            ended,
            stopped,
            released,
            args.lost_exit_code,
        ),
        Outcome::GuardKilled { .. } => {
            match released {
                Err(e @ LockError::LeaseLost { .. }) => lost(Some(format!(
                "{}{}; `{program}` did not finish: the guard killed its process group when the lease's validity ended",
                holding.error(&e),
                // Only a loss by expiry is explained by the missing renewal.
                match &e {
                    LockError::LeaseLost { reason: LostReason::Expired | LostReason::NotHeld, .. } if !renews =>
                        format!(" ({})", guard::UNRENEWED),
                    _ => String::new(),
                }
            ))),
                // Killed a tenth of the validity early (`guard::kill_ahead`): the release may
                // still have found the grant, but the command was stopped for the lease's sake.
                _ => lost(Some(format!(
                    "{} lost: {}; `{program}` did not finish: the guard killed its process group",
                    holding.of(&lease_key, lease_token),
                    if renews {
                        "the lease's validity was ending without a renewal".to_owned()
                    } else {
                        format!("the lease's validity was running out ({})", guard::UNRENEWED)
                    }
                ))),
            }
        }
        Outcome::Covered(code) => ExitCode::from(code),
        // The guard said why (the validity ended before the start, a signal came first, the
        // spawn failed); whatever the release says, nothing ran under the lock. Its 75 is
        // "not acquired" for the command: --conflict-exit-code applies.
        Outcome::NotStarted(code) if code == exit::NOT_ACQUIRED => ExitCode::from(args.conflict_exit_code),
        Outcome::NotStarted(code) => ExitCode::from(code),
        Outcome::LeaseLost(message) => lost(message),
        Outcome::WaitFailed(e) => fail(&format!("lost track of `{program}`: {e}"), exit::FAILURE),
    }
}

/// Whether the lease is `Held` before the command starts. A `Suspended` one (the
/// connection interrupted — a ZooKeeper blip right after the grant — the grant maybe still
/// ours) is waited for, within its validity: the command does not start in doubt, and a
/// lease that comes back `Held` is no loss (before, `is_held()` was false for it and `run`
/// exited 75, "the lease ran out", though nothing was lost). `false` once it is lost,
/// released, or its validity ran out still suspended — which then is what the message
/// says. Bounded by the validity: every turn waits for a change of status or its end.
async fn settled(lease: &Lease) -> bool {
    use fencelock::LeaseState;
    let mut status = lease.watch();
    loop {
        status.borrow_and_update();
        let now = lease.status(); // refreshed: a validity that ran out reads as lost
        match now.state {
            LeaseState::Held => return true,
            LeaseState::Suspended => {}
            _ => return false, // lost or released (or a state added later: not held)
        }
        let end = now.valid_until;
        tokio::select! {
            changed = status.changed() => if changed.is_err() { return lease.is_held() },
            () = tokio::time::sleep_until(end) => return lease.is_held(),
        }
    }
}

/// New-user trial F7: the guard alone was SIGKILLed by someone else (`kill -9` of the wrong
/// process, an OOM kill), not at its deadline. `run` stopped the command's group after it
/// ([`stop_group`]); this says so in one line — before, `run` exited 137 without a word —
/// and returns `code` (128 + SIGKILL, as a shell reports a child killed by a signal: the
/// command was stopped, it did not finish), or the command's own status when the guard
/// had reported its end, or `lost_exit_code` when the lease was lost meanwhile.
#[allow(clippy::too_many_arguments)] // one message from everything that happened
fn guard_killed_from_outside(
    program: &str,
    key: &str,
    holding: Holding<'_>,
    code: u8,
    ended: Option<u8>,
    stopped: Stopped,
    released: Result<(), LockError>,
    lost_exit_code: u8,
) -> ExitCode {
    let when = match ended {
        Some(status) => format!("after `{program}` had ended with status {status}"),
        None => format!("while `{program}` ran"),
    };
    let what = stopped.said();
    let (lock, status) = match released {
        Ok(()) => (holding.given_back(key), ended.unwrap_or(code)),
        Err(e @ LockError::LeaseLost { .. }) => (holding.error(&e), lost_exit_code),
        Err(e) => (
            format!(
                "releasing `{key}` failed ({}): the lease will expire by its TTL",
                exit::one_line(&e)
            ),
            ended.unwrap_or(code),
        ),
    };
    fail(
        &format!("the guard was killed by SIGKILL from outside fencelock {when}; {what}; {lock}"),
        status,
    )
}

/// The variables `run` and `elect` give the command: TOKEN, KEY and GRANT always, TERM and
/// ELECTION under `elect` only. Inherited values of any of them are removed.
pub(crate) const LOCK_ENV: [&str; 5] = [
    "FENCELOCK_TOKEN",
    "FENCELOCK_KEY",
    "FENCELOCK_GRANT",
    "FENCELOCK_TERM",
    "FENCELOCK_ELECTION",
];

/// What `run` and `elect` say (exit 75, or `--conflict-exit-code`: not acquired for CMD,
/// which never runs) when the lease is gone before CMD starts.
pub(crate) const LOST_BEFORE_START: &str = "the lease ran out before the command could start; not starting it";

struct Started {
    child: Child,
    group: Pid,
    control: std::fs::File,
    report: Report,
}

/// The read end of the guard's report pipe (see [`guard::STARTED`]): whether the guard
/// started the command, so that a status of the guard's own (the command never started)
/// is not taken for the command's.
struct Report {
    pipe: std::fs::File,
    read: Vec<u8>,
}

impl Report {
    /// The command's status as the guard reported it when the command ended (`ended N`).
    fn ended(&mut self) -> Option<u8> {
        self.started();
        let text = String::from_utf8_lossy(&self.read);
        let (_, rest) = text.split_once(guard::ENDED)?;
        rest.split_once('\n')?.0.parse().ok()
    }

    /// Whether the guard reported `line`: [`guard::KILLED`], it killed the group at its
    /// deadline; [`guard::SAID`], it said on stderr why it killed the group (`run` was
    /// stopped then, and does not say it again).
    fn has(&mut self, line: &str) -> bool {
        self.started();
        let line = line.as_bytes();
        self.read.windows(line.len()).any(|w| w == line)
    }

    /// At most this much is read: the command inherits the write end too and could write
    /// to it without end.
    const LIMIT: usize = 4096;

    /// Whether the guard has said it started the command. Reads what is in the pipe
    /// without waiting (it is non-blocking): called once the guard has exited, everything
    /// it wrote is there.
    fn started(&mut self) -> bool {
        use std::io::Read;
        let mut buf = [0u8; 256];
        while self.read.len() < Self::LIMIT {
            match self.pipe.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => self.read.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => break, // nothing more yet (WouldBlock)
            }
        }
        // The guard's line is written whole (shorter than PIPE_BUF); the command, which
        // exists only once it was started, may have written before or around it.
        let line = guard::STARTED.as_bytes();
        self.read.windows(line.len()).any(|w| w == line)
    }
}

/// Starts `fencelock __guard` in a new process group with the read
/// end of the control pipe, and tells it the lease's deadline.
fn start(args: &RunArgs, lease: &Lease, env: &[(&str, String)]) -> std::io::Result<Started> {
    let (read, write) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)?;
    // The guard inherits the read end; the write end stays here alone (close-on-exec), so
    // the guard sees end-of-file exactly when this process is gone.
    rustix::io::fcntl_setfd(&read, rustix::io::FdFlags::empty())?;
    rustix::fs::fcntl_setfl(&write, rustix::fs::OFlags::NONBLOCK)?;
    // The report pipe, the other way: the guard inherits its write end, this process reads.
    let (report_read, report_write) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)?;
    rustix::io::fcntl_setfd(&report_write, rustix::io::FdFlags::empty())?;
    rustix::fs::fcntl_setfl(&report_read, rustix::fs::OFlags::NONBLOCK)?;
    let mut command = guard_command()?;
    command
        .arg("__guard")
        .arg(read_fd_number(&read).to_string())
        .arg("--kill-after-ms")
        .arg(args.kill_after.as_millis().to_string())
        .arg("--report-fd")
        .arg(read_fd_number(&report_write).to_string());
    if !lease.auto_renews() {
        command.arg("--unrenewed");
    }
    command.arg("--").args(&args.command);
    // The one place the command's lock variables are set: all of them are cleared first,
    // so that an inherited one (a stale FENCELOCK_TERM from an outer `elect`, say) never
    // sits beside this grant's.
    for name in LOCK_ENV {
        command.env_remove(name);
    }
    let spawned = command
        .env("FENCELOCK_TOKEN", lease.token().to_string())
        .env("FENCELOCK_KEY", lease.key())
        .env("FENCELOCK_GRANT", lease.grant().as_str())
        .envs(env.iter().filter(|(k, _)| LOCK_ENV.contains(k)).map(|(k, v)| (k, v)))
        .process_group(0)
        .stdin(Stdio::inherit())
        .kill_on_drop(false)
        .spawn();
    drop(read);
    drop(report_write);
    let child = spawned?;
    let group = child
        .id()
        .and_then(|id| Pid::from_raw(id as i32))
        .ok_or_else(|| std::io::Error::other("the guard has no process id"))?;
    // Before the guard may start the command (it waits for the deadline written below).
    give_terminal(group);
    let mut control = std::fs::File::from(write);
    let _ = control.write_all(guard::until_line(|| guard::kill_within(lease.remaining())).as_bytes());
    let report = Report {
        pipe: std::fs::File::from(report_read),
        read: Vec::new(),
    };
    Ok(Started {
        child,
        group,
        control,
        report,
    })
}

/// A command that runs this very binary, for the guard. On Linux `/proc/self/exe`, which
/// the kernel resolves to the executable this process runs even when its path is gone or
/// names another file: a package upgrade during a long `--wait` replaces (unlinks) the
/// binary, and `current_exe()` then reads "/usr/bin/fencelock (deleted)" — the guard
/// failed to start (70) after the lock was acquired — or, were the suffix cut off, would
/// start the *new* binary, whose guard may not speak this one's control pipe. Its argv[0]
/// stays the path as `current_exe()` gives it, for `ps`.
fn guard_command() -> std::io::Result<Command> {
    let exe = std::env::current_exe();
    if cfg!(target_os = "linux") && std::path::Path::new("/proc/self/exe").exists() {
        let mut command = Command::new("/proc/self/exe");
        if let Ok(exe) = exe {
            command.arg0(exe);
        }
        return Ok(command);
    }
    Ok(Command::new(exe?))
}

/// When `run` owns the terminal (stdin is one and our group is its foreground group), hands
/// it to the command's group, so an interactive command (an editor, a `sudo` password
/// prompt) can read it instead of being stopped by SIGTTIN; the guard gives it back when
/// the command exits. Ctrl-C then reaches the command's group directly.
fn give_terminal(group: Pid) {
    let stdin = std::io::stdin();
    let ours = rustix::process::getpgrp();
    if rustix::termios::isatty(&stdin) && rustix::termios::tcgetpgrp(&stdin).is_ok_and(|fg| fg == ours) {
        if let Err(e) = rustix::termios::tcsetpgrp(&stdin, group) {
            tracing::warn!(error = %e, "cannot give the terminal to the command");
        }
    }
}

fn read_fd_number(fd: &OwnedFd) -> i32 {
    use std::os::fd::AsRawFd;
    fd.as_raw_fd()
}

enum Outcome {
    Exited(u8),
    /// The command ended inside the validity and the lease ran out later: its status,
    /// whatever the release says.
    Covered(u8),
    /// The guard died of SIGKILL: its own kill of the group at the end of the validity
    /// (or someone else's); `code` is the status as a shell reports it.
    GuardKilled {
        code: u8,
        /// The guard's own kill at its deadline (a tenth of the validity early; it said so
        /// on the report pipe); else someone else's SIGKILL.
        own: bool,
        /// The guard said why on stderr (`run` was stopped then): not said again.
        said: bool,
    },
    /// The guard exited with a status of its own before it started the command (the
    /// validity ended first, a signal came first, the spawn failed): nothing ran.
    NotStarted(u8),
    /// The group, the guard with it, ignored a forwarded SIGTERM for `--kill-after` and
    /// was sent SIGKILL by `run` (said then); the guard's status as a shell reports it
    /// (137).
    KilledAfterGrace(u8),
    /// The lease was lost; the message to exit with (`None`: said already).
    LeaseLost(Option<String>),
    WaitFailed(std::io::Error),
}

/// Waits for the guard; tells it every new deadline; forwards signals to the group (a
/// SIGTERM is followed by SIGKILL after `kill_after` if the group is still there); on a
/// lost lease sends the group SIGTERM, then SIGKILL after `kill_after`.
async fn watch(
    started: &mut Started,
    lease: &Lease,
    kill_after: Duration,
    signals: &mut Signals,
    killed: &mut bool,
    holding: Holding<'_>,
) -> Outcome {
    let Started {
        child,
        group,
        control,
        report,
    } = started;
    let group = *group;
    let mut status = lease.watch();
    let lost = lease.lost();
    tokio::pin!(lost);
    // After a forwarded SIGTERM: when the group is sent SIGKILL if it is still there.
    let mut kill_at: Option<tokio::time::Instant> = None;
    loop {
        tokio::select! {
            // A loss is reported as such even when the guard already ended the command.
            biased;
            reason = &mut lost => {
                let exited = child.try_wait().ok().flatten();
                let what = on_loss(exited, report.started(), report.ended(), &reason);
                let held = holding.of(lease.key(), lease.token());
                match what {
                    OnLoss::AlreadyKilled => {
                        *killed = true;
                        // One line. When the guard said it (`run` was stopped), nothing
                        // more: the lease's own verdict only confirms it, and a second
                        // "lost" line read as a second loss (new-user trials, every
                        // backend); it goes to `-v`.
                        if report.has(guard::SAID) {
                            tracing::info!(%held, verdict = %reason, "the lease confirms the loss the guard reported");
                            return Outcome::LeaseLost(None);
                        }
                        return Outcome::LeaseLost(Some(format!(
                            "{held} lost while the command ran: {reason}; the guard had already killed its process \
                             group when the validity ended"
                        )));
                    }
                    OnLoss::NotStarted(code) => {
                        crate::exit::errln!("fencelock: {held} lost before the command started: {reason}");
                        return Outcome::NotStarted(code);
                    }
                    OnLoss::Covered(code) => {
                        crate::exit::errln!("fencelock: {held} lost after the command had ended: {reason}");
                        return Outcome::Covered(code);
                    }
                    OnLoss::Ended(code) => return Outcome::Exited(code),
                    OnLoss::Stop => {}
                }
                // A guard that exited with a status before reporting the command's end:
                // its own (it lost track of the command), not the command's.
                let guard_own = exited
                    .and_then(|s| s.code())
                    .map(|c| format!("; its guard exited with status {c} of its own before the command ended"))
                    .unwrap_or_default();
                // The guard may not have started the command yet (the lease was lost as
                // it was handed over): see [`kill_at_once_on_loss`]. What the loss means is
                // known only once the guard has ended.
                // Signals first, messages after: a write to a stderr whose reader stalled
                // blocks, and must not hold up the stop (new-user trial).
                let started_then = report.started();
                if kill_at_once_on_loss(started_then) {
                    // A full pipe (a stopped guard) drops the line: its older deadline and
                    // the SIGKILL after `kill_after` below remain.
                    let _ = control.write_all(guard::KILL_NOW.as_bytes());
                }
                signal_group(group, Signal::TERM);
                signal_group(group, Signal::CONT); // a stopped process acts on SIGTERM only when continued
                if started_then {
                    crate::exit::errln!(
                        "fencelock: {held} lost while the command ran: {reason}{guard_own}; sent its process group SIGTERM"
                    );
                }
                if tokio::time::timeout(kill_after, child.wait()).await.is_err() {
                    signal_group(group, Signal::KILL);
                    crate::exit::errln!("fencelock: the command ignored SIGTERM for {kill_after:?}; sent its process group SIGKILL");
                    *killed = true;
                    let _ = child.wait().await;
                }
                match stopped_before_start(started_then, report.started()) {
                    Some(code) => {
                        crate::exit::errln!("fencelock: {held} lost before the command started: {reason}");
                        return Outcome::NotStarted(code);
                    }
                    None if !started_then => crate::exit::errln!(
                        "fencelock: {held} lost as the command started: {reason}; {}",
                        if report.has(guard::KILLED) {
                            "the guard killed its process group at once"
                        } else {
                            "its process group was sent SIGTERM"
                        }
                    ),
                    None => {}
                }
                // Said already, as the command was signalled (before waiting for it to
                // end): a second line "exiting: the lease was lost" only repeated it.
                return Outcome::LeaseLost(None);
            }
            status = child.wait() => return match status {
                // The guard kills its own group (itself included) when the validity ends.
                Ok(s) if std::os::unix::process::ExitStatusExt::signal(&s) == Some(Signal::KILL.as_raw()) => {
                    Outcome::GuardKilled { code: guard::status_code(s), own: report.has(guard::KILLED), said: report.has(guard::SAID) }
                }
                Ok(s) if !report.started() => Outcome::NotStarted(guard::status_code(s)),
                Ok(s) => Outcome::Exited(guard::status_code(s)),
                Err(e) => Outcome::WaitFailed(e),
            },
            changed = status.changed() => {
                if changed.is_ok() && status.borrow_and_update().state.is_live() {
                    // A full pipe (a stopped guard) drops the line: the guard then acts on
                    // the older, earlier deadline — the safe side.
                    // The kill's lead is a tenth of the validity as renewed, not as first
                    // granted: a grant found with 200 ms left kept a 20 ms lead for every
                    // renewal of a 30 s TTL after it (see [`guard::kill_ahead`]).
                    let _ = control.write_all(guard::until_line(|| guard::kill_within(lease.remaining())).as_bytes());
                }
            }
            sig = signals.next() => {
                signal_group(group, sig);
                // A stopped member acts on the signal only once continued: a command
                // stopped by the terminal (SIGTTIN/SIGTTOU, a background job) or SIGSTOP.
                // Continued, as a shell's `kill` continues a stopped job it signals;
                // before, a forwarded SIGINT or SIGHUP waited for ever.
                if crate::group::any_stopped(group) {
                    signal_group(group, Signal::CONT);
                }
                if sig == Signal::TERM && kill_at.is_none() {
                    kill_at = Some(tokio::time::Instant::now() + kill_after);
                }
            }
            _ = sleep_until(kill_at) => {
                signal_group(group, Signal::KILL);
                crate::exit::errln!("fencelock: the command ignored SIGTERM for {kill_after:?}; sent its process group SIGKILL");
                *killed = true;
                kill_at = None;
            }
        }
    }
}

/// What a lost lease means, from how the guard ended (`None`: it still runs), whether it
/// said it started the command and with which status it said the command ended.
#[derive(Debug, PartialEq, Eq)]
enum OnLoss {
    /// The guard died of SIGKILL: its kill of the group at the validity's end.
    AlreadyKilled,
    /// The guard exited with this status of its own before it started the command: the
    /// command never ran, so the loss did not come while it ran.
    NotStarted(u8),
    /// The command ended with this status inside the validity (its guard's deadline is
    /// never later), and the loss is the validity running out after it: the run was
    /// covered. (Before, a new user's trial: `run` stopped past the validity said the
    /// guard had killed the command and exited 76, and a retrying script repeated
    /// finished work.)
    Covered(u8),
    /// The command ended with this status, and the grant is gone from the backend: that
    /// may have come while it ran (76, "finished, but not entirely under the lock").
    Ended(u8),
    /// The command may still run: the guard runs, or died of another signal (a real-time
    /// one sent to the group, which it does not catch), or ended without reporting the
    /// command's end. Its group is sent SIGTERM.
    Stop,
}

fn on_loss(exited: Option<std::process::ExitStatus>, started: bool, ended: Option<u8>, reason: &LostReason) -> OnLoss {
    use std::os::unix::process::ExitStatusExt;
    let Some(s) = exited else {
        return OnLoss::Stop;
    };
    if s.signal() == Some(Signal::KILL.as_raw()) {
        return OnLoss::AlreadyKilled;
    }
    if s.code().is_none() {
        return OnLoss::Stop;
    }
    if !started {
        return OnLoss::NotStarted(guard::status_code(s));
    }
    // The command's status only if the guard said the command ended with it: any other is
    // the guard's own, while the command ran.
    match ended {
        Some(code) if code == guard::status_code(s) => match reason {
            LostReason::Expired | LostReason::RenewalFailed(_) => OnLoss::Covered(code),
            _ => OnLoss::Ended(code),
        },
        _ => OnLoss::Stop,
    }
}

/// Whether a loss that found the guard running ([`OnLoss::Stop`]) also tells the guard on
/// the control pipe to kill the group at once ([`guard::KILL_NOW`]), besides the group's
/// SIGTERM: when the guard had not yet (`started_then`) said it started the command.
/// Not yet, the group's SIGTERM may reach the guard alone, between its last check and the
/// command's start; it catches it and starts the command anyway, which then ran unsignalled until `--kill-after` (a review: "its process group
/// was sent SIGTERM" was false). The control pipe cannot miss: a line waits until the guard
/// looks — at its drain before its last check (the command is then never started) or, if
/// it came after that, at its first turn of supervising the command just started — and the
/// guard kills the group at the deadline the line gives — now.
/// No grace is owed: the command began after the loss. (Once started, the command got the
/// SIGTERM itself, and has `--kill-after` to finish.)
fn kill_at_once_on_loss(started_then: bool) -> bool {
    !started_then
}

/// After a loss found the guard running and the group was stopped: `Some(status)` when
/// the command never started — the guard had not said so when the loss came
/// (`started_then`), nor by the time it ended (`started_after`) — which is "not acquired"
/// for the command (75, or `--conflict-exit-code`), never 76 ("lost while CMD ran"). The
/// guard's own status then is our SIGTERM's, not a command's. (A new user's trial: the
/// waiter's connections cut just as a PostgreSQL release handed it the key exited 76
/// for a command that never wrote a line, in 14 of 60 tries.)
fn stopped_before_start(started_then: bool, started_after: bool) -> Option<u8> {
    (!started_then && !started_after).then_some(exit::NOT_ACQUIRED)
}

/// Stops what is left of the command's group after its guard exited: SIGTERM, then SIGKILL
/// after `kill_after` — or SIGKILL at once when the group already had one (`killed`).
/// Polls for the group's end (there is no event for it) every 10 ms, bounded by
/// `kill_after` plus one second. Zombies (killed, not yet reaped by their new parent) do
/// not count: they run nothing.
async fn stop_group(group: Pid, kill_after: Duration, killed: bool) -> Stopped {
    if !crate::group::alive(group) {
        return Stopped::Nothing; // nobody left
    }
    tracing::info!(
        group = group.as_raw_nonzero().get(),
        "the command left processes behind; stopping them"
    );
    let kill_after = if killed { Duration::ZERO } else { kill_after };
    if !killed {
        signal_group(group, Signal::TERM);
        signal_group(group, Signal::CONT); // a stopped process acts on SIGTERM only when continued
    }
    let start = Instant::now();
    let mut sent_kill = false;
    while crate::group::alive(group) {
        if !sent_kill && start.elapsed() >= kill_after {
            signal_group(group, Signal::KILL);
            sent_kill = true;
        }
        if start.elapsed() >= kill_after + Duration::from_secs(1) {
            tracing::warn!("processes of the command's group are still there after SIGKILL");
            return Stopped::Left;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    match sent_kill && !killed {
        true => Stopped::Killed(kill_after),
        false => Stopped::Ended,
    }
}

/// What [`stop_group`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stopped {
    /// Nothing of the group was left.
    Nothing,
    /// It was sent SIGTERM (or had SIGKILL already) and ended.
    Ended,
    /// It ignored SIGTERM for this long and was sent SIGKILL.
    Killed(Duration),
    /// Processes of it were still there a second after SIGKILL.
    Left,
}

impl Stopped {
    /// What happened to the command's group, for a message.
    fn said(self) -> String {
        match self {
            Stopped::Nothing => "nothing of the command's process group was left".into(),
            Stopped::Ended => "the command's process group was sent SIGTERM and is gone".into(),
            Stopped::Killed(after) => format!(
                "the command's process group ignored SIGTERM for {} and was sent SIGKILL",
                fencelock::options::duration_text::human(after)
            ),
            Stopped::Left => "processes of the command's process group were still there after SIGKILL".into(),
        }
    }
}

/// Sleeps until `at`; never, when there is no `at`.
async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Sends `sig` to every process of `group` ([`crate::group::signal`]).
fn signal_group(group: Pid, sig: Signal) {
    crate::group::signal(group, sig);
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use fencelock::{DistributedLock, LockOptions};

    use super::*;

    /// What a loss means follows what the guard said, not only its exit status: a status
    /// of the guard's own was taken for the command's, and a loss by expiry was said to
    /// have come "after the command had ended" — for a command that never started (the
    /// guard's 75, 127, 128 + N) and for a guard that exited on its own while the command
    /// ran (its 70 when it lost track of it).
    #[test]
    fn what_a_loss_means_follows_what_the_guard_reported() {
        use std::os::unix::process::ExitStatusExt;
        let exited = |code: i32| Some(std::process::ExitStatus::from_raw(code << 8));
        let killed_by = |sig: i32| Some(std::process::ExitStatus::from_raw(sig));
        let expired = LostReason::Expired;
        let gone = LostReason::NotHeld;
        // The command ran and ended: its status.
        assert_eq!(on_loss(exited(3), true, Some(3), &expired), OnLoss::Covered(3));
        assert_eq!(on_loss(exited(3), true, Some(3), &gone), OnLoss::Ended(3));
        // The command never started: the guard's own status, whatever the loss.
        for code in [75, 127, 126, 143] {
            assert_eq!(
                on_loss(exited(code), false, None, &expired),
                OnLoss::NotStarted(code as u8)
            );
            assert_eq!(
                on_loss(exited(code), false, None, &gone),
                OnLoss::NotStarted(code as u8)
            );
        }
        // Started, but the guard exited with a status of its own (70: it lost track of
        // the command) before the command's end: the command may run on.
        assert_eq!(on_loss(exited(70), true, None, &expired), OnLoss::Stop);
        assert_eq!(on_loss(exited(70), true, None, &gone), OnLoss::Stop);
        // The guard's kill at the validity's end; another signal; still running.
        assert_eq!(on_loss(killed_by(9), true, None, &expired), OnLoss::AlreadyKilled);
        assert_eq!(on_loss(killed_by(34), true, None, &expired), OnLoss::Stop);
        assert_eq!(on_loss(None, true, None, &expired), OnLoss::Stop);
    }

    /// A lease lost between the grant and the start of CMD: CMD never ran, so this is not
    /// 76 ("the lease was lost while CMD ran", after which a script may clean up after a
    /// half-done CMD) but "not acquired" — 75, or `--conflict-exit-code` — for the
    /// command: nothing ran, trying again later is safe. (Before, 70 or 76 depending on
    /// which check noticed; then 76 from both.)
    #[test]
    fn a_loss_that_stopped_the_guard_before_it_started_the_command_is_not_acquired() {
        assert_eq!(stopped_before_start(false, false), Some(exit::NOT_ACQUIRED));
        // Started between the loss and the guard's end: the SIGTERM reached the command.
        assert_eq!(stopped_before_start(false, true), None);
        assert_eq!(stopped_before_start(true, true), None);
    }

    /// A loss before the guard said it started the command: the guard is told on the
    /// control pipe to kill the group at once — a SIGTERM alone could reach the guard
    /// between its last check and the start, be caught, and leave the command running
    /// unsignalled. Once started, the command has its SIGTERM and `--kill-after`.
    #[test]
    fn a_loss_before_the_start_has_the_guard_kill_at_once() {
        assert!(kill_at_once_on_loss(false));
        assert!(!kill_at_once_on_loss(true));
    }

    /// A lease `Suspended` at the start (a ZooKeeper blip right after the grant) is not
    /// lost: the start waits for it to settle, within its validity. Before, `is_held()`
    /// was false for it and `run` exited 75, "the lease ran out".
    #[tokio::test]
    async fn a_suspended_lease_is_waited_for_not_taken_for_lost() {
        let locks = fencelock::memory::MemoryLock::new();
        let opts = LockOptions::new()
            .with_ttl(Duration::from_secs(30))
            .with_auto_renew(false);
        let lease = locks.acquire("k", &opts).await.unwrap();
        assert!(settled(&lease).await, "held");
        lease.reporter().suspended();
        assert!(!lease.is_held(), "the condition under test: suspended");
        let settling = settled(&lease);
        tokio::pin!(settling);
        tokio::select! {
            biased;
            _ = &mut settling => panic!("settled while still suspended"),
            () = std::future::ready(()) => {}
        }
        lease.reporter().resumed();
        assert!(settling.await, "resumed: held");
        // Suspended until its validity ends: not held, and said so.
        let short = LockOptions::new()
            .with_ttl(Duration::from_millis(50))
            .with_auto_renew(false);
        let lease = locks.acquire("j", &short).await.unwrap();
        lease.reporter().suspended();
        let waited = std::time::Instant::now();
        assert!(!settled(&lease).await);
        assert!(waited.elapsed() < Duration::from_secs(5), "{:?}", waited.elapsed());
    }

    #[tokio::test]
    async fn a_lease_lost_before_the_start_is_not_acquired_not_lost_while_running() {
        #[derive(clap::Parser)]
        struct Wrap {
            #[command(flatten)]
            run: RunArgs,
        }
        for (flags, status) in [(&[][..], exit::NOT_ACQUIRED), (&["--conflict-exit-code", "9"][..], 9)] {
            let locks = fencelock::memory::MemoryLock::new();
            let opts = LockOptions::new()
                .with_ttl(Duration::from_millis(30))
                .with_auto_renew(false);
            let lease = locks.acquire("k", &opts).await.unwrap();
            lease.lost().await; // the validity running out is the condition under test
            let argv = [&["run", "k"][..], flags, &["--", "true"]].concat();
            let args = <Wrap as clap::Parser>::try_parse_from(argv).unwrap().run;
            let mut signals = Signals::install();
            let code = supervise_with(&args, lease, &mut signals, &[], Holding::Lock).await;
            assert_eq!(code, ExitCode::from(status), "{flags:?}");
        }
    }
}
