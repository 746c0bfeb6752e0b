//! `fencelock __guard`: the supervisor between `fencelock run` and the command.
//!
//! `fencelock run` starts this hidden mode of its own binary as the leader of a new process
//! group; the guard starts the command in that group and waits for it. It exists so that
//! the command's whole process tree stops when the lock stops being ours, even when
//! `fencelock run` itself cannot act:
//!
//! * **The deadline.** `run` writes the end of the lease's validity to a control pipe, as an
//!   absolute `CLOCK_MONOTONIC` instant (one clock for every process of the host), after
//!   the acquire and after every renewal. When that instant passes without a newer one —
//!   `run` was paused (SIGSTOP, a stalled VM), hung, or could not renew — the guard kills
//!   the group with SIGKILL: from then on another holder may be inside.
//! * **Death of `run`.** The guard holds the only read end of the pipe; the write end lives
//!   in `run` alone. When `run` dies, however it dies (even SIGKILL), the guard reads
//!   end-of-file and kills the group. This is the parent-death signal done without
//!   `pre_exec` (which would need `unsafe`) and without its race: there is no window
//!   between `fork` and a `prctl` in which the parent's death is missed, because the pipe
//!   was open before the guard started.
//! * **The last check before exec.** The guard starts the command only after reading a
//!   deadline that has not passed yet, and not at all when a signal `run` forwards (SIGINT,
//!   SIGTERM, SIGHUP, …) reached it first: with no command in the group yet, the guard alone
//!   got it, and would otherwise start the command as if nothing had been sent. It then
//!   exits 128 + N, as the command would have. It waits 5 ms for such a signal before the
//!   start (one that was sent reaches it through tokio's signal task, a moment later).
//!   (Left: a signal in the moment the command is being started — after the check, before
//!   its exec, when it still runs the guard's handlers — reaches neither: 1 of 150 tries
//!   of a SIGTERM 30–45 ms after `run` started, against 2–7 of 150 without the pause.
//!   Blocking the signals around the start needs `sigprocmask`, i.e. `unsafe`.)
//!   A *loss* in that moment is not missed: `run` tells it on the control pipe as well
//!   ([`KILL_NOW`], a deadline long past) whenever the guard has not yet said it started
//!   the command. A thread reads the pipe all along, but the guard looks at its lines only
//!   at set points: the first line (blocking), once more just before its last check (a
//!   non-blocking drain: a [`KILL_NOW`] there and the command is never started, status
//!   75), and then from its first turn of supervising the started command on, for as long
//!   as the command and what it left behind run. A [`KILL_NOW`] that comes after that drain
//!   is acted on only once the command has started: the group, the command just begun
//!   among it, is then killed at once (SIGKILL, the deadline being past).
//! * **After the command.** When the command exits, what it left running in the group
//!   (`cmd &`, a daemon that did not leave the group) is stopped by the guard before it
//!   exits — SIGTERM, then SIGKILL after `--kill-after` — with the deadline and the death
//!   of `run` still watched meanwhile. Before, the guard exited with the command and `run`
//!   alone stopped the rest: a `run` killed or paused during that `--kill-after` left it
//!   running beside the next holder. Its SIGKILL goes to each process, not to the group,
//!   so that the guard lives on to report the command's status; the deadline's and `run`'s
//!   death's SIGKILL still go to the whole group.
//!
//! Signals sent to the group (forwarded SIGINT/SIGTERM/SIGHUP, the lease-loss SIGTERM) are
//! caught by the guard so it stays to report the command's status; SIGKILL ends it with
//! the rest of the group. The guard exits with the command's code, or 128 + the signal that
//! ended the command, as shells report. Since such a status cannot be told from one of the
//! guard's own (75 when the validity ended before the start, 127 when the spawn failed, …),
//! the guard writes [`STARTED`] on `run`'s report pipe once it has started the command.

use std::io::{BufRead, Write};
use std::process::{ExitCode, ExitStatus};
use std::time::Duration;

use rustix::process::{kill_process_group, Signal};
use rustix::time::{clock_gettime, ClockId, Timespec};
use tokio::process::Command;
use tokio::sync::mpsc;

use crate::args::GuardArgs;
use crate::exit;

/// What `run` says on the control pipe.
enum Message {
    /// The lease is valid until this `CLOCK_MONOTONIC` instant, in nanoseconds.
    Until(u128),
    /// The pipe closed: `run` is gone.
    Closed,
}

/// The line `run` writes to tell the guard the lease's validity ends `remaining()` from now.
/// The clock is read *before* `remaining()`: a stall between the two (`run` preempted or
/// SIGSTOPped there) then makes the deadline earlier, never later than the validity. Read
/// after it (`until_line(lease.remaining())`), the stall was added to the deadline.
pub fn until_line(remaining: impl FnOnce() -> Duration) -> String {
    let now = now_nanos();
    let deadline = now.saturating_add(remaining().as_nanos());
    format!("until {deadline}\n")
}

/// How long before the end of a lease's validity the guard kills the command's group:
/// a tenth of the validity the lease was handed out with, at least 10 ms, at most 1 s.
/// Killing exactly at the end left no room for the guard's own wake-up, and the server
/// frees the lock at about that instant: on a machine at load 7 the guard woke 112 ms
/// late once in 105 tries of a paused `run` (new-user trial), and the next holder's
/// command started while the old one still wrote. A lease that is renewed never comes
/// near it (renewals are due a third of the way through); one that is not renewed is
/// stopped that much earlier.
pub fn kill_ahead(validity: Duration) -> Duration {
    (validity / 10).clamp(Duration::from_millis(10), Duration::from_secs(1))
}

/// How long from now the guard is to kill, for a lease with `remaining` validity: that,
/// less [`kill_ahead`] of it. Computed afresh for each deadline `run` writes — after the
/// grant and after every renewal — so that the lead follows the validity as renewed, not
/// the first grant's (one found with 200 ms left kept a 20 ms lead for the 30 s
/// validities renewed after it).
pub fn kill_within(remaining: Duration) -> Duration {
    remaining.saturating_sub(kill_ahead(remaining))
}

/// The line `run` writes on the control pipe when the lease was lost before the guard said
/// it started the command: a deadline long past. The guard does not watch for it at every
/// moment: it sees it at its drain just before its last check (it then does not start the
/// command), or else at its first turn of supervising the command it has just started (it
/// then kills the group at once) — never in between, when it is starting the command (see
/// the module documentation). A line, not a signal: a signal that reaches the guard
/// between its last check and the start is caught and lost, a line waits in the pipe (and
/// its reading thread) until the guard looks.
pub const KILL_NOW: &str = "until 0\n";

fn now_nanos() -> u128 {
    let Timespec { tv_sec, tv_nsec } = clock_gettime(ClockId::Monotonic);
    (tv_sec.max(0) as u128) * 1_000_000_000 + tv_nsec.max(0) as u128
}

fn parse(line: &str) -> Option<Message> {
    let nanos = line.trim().strip_prefix("until ")?.parse().ok()?;
    Some(Message::Until(nanos))
}

/// Reads the control pipe on a thread of its own (a blocking read of a pipe; the thread
/// ends at end-of-file, or with the process).
fn read_control(fd: i32) -> std::io::Result<mpsc::UnboundedReceiver<Message>> {
    let file = open_inherited(fd, false)?;
    let (tx, rx) = mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(file).lines() {
            let Ok(line) = line else { break };
            if let Some(m) = parse(&line) {
                if tx.send(m).is_err() {
                    return;
                }
            }
        }
        let _ = tx.send(Message::Closed);
    });
    Ok(rx)
}

/// Gives the terminal back to `run`'s group if the command's group has it (`run` handed it
/// over for an interactive command). Allowed without SIGTTOU: the guard is in the
/// terminal's foreground group when it does this.
fn give_back_terminal() {
    let stdin = std::io::stdin();
    let ours = rustix::process::getpgrp();
    if !rustix::termios::isatty(&stdin) || !rustix::termios::tcgetpgrp(&stdin).is_ok_and(|fg| fg == ours) {
        return;
    }
    let parent = rustix::process::getppid().and_then(|p| rustix::process::getpgid(Some(p)).ok());
    if let Some(parent) = parent {
        let _ = rustix::termios::tcsetpgrp(&stdin, parent);
    }
}

/// Kills the guard's group (the guard included) with SIGKILL, having said why.
fn kill_group(why: &str) -> ExitCode {
    give_back_terminal();
    crate::exit::say_within(
        format!("fencelock: {why}; killing the command's process group\n"),
        SAY_PATIENCE,
    );
    kill_now()
}

/// SIGKILLs the guard's group, the guard included.
fn kill_now() -> ExitCode {
    let _ = kill_process_group(rustix::process::getpgrp(), Signal::KILL);
    // Only reached if the kill failed.
    ExitCode::from(exit::FAILURE)
}

/// Kills the group at the deadline, having told `run` so on its report pipe first
/// ([`KILLED`]): the guard kills a tenth of the validity early, so when `run` comes back
/// from a pause its lease may still be valid — even renewed since — and only this line
/// tells the guard's own kill from someone else's SIGKILL. One write of a few bytes into
/// a pipe that holds a few lines at most: it never blocks.
///
/// The guard says why on stderr only when `run` is stopped (SIGSTOP, Ctrl-Z of a shell
/// that stops the whole job): a running `run` says it itself, with the loss's reason, and
/// two near-identical lines were printed (new-user trial F6); a stopped one says nothing
/// until it is continued, maybe much later, so the guard's line is the one the user sees
/// when it happens. It tells `run` it said it ([`SAID`]), and `run` then does not repeat it.
fn kill_at_deadline(report: &mut Option<std::fs::File>, why: &str) -> ExitCode {
    if let Some(report) = report {
        let _ = report.write_all(KILLED.as_bytes());
    }
    give_back_terminal();
    if parent_stopped() {
        let key = std::env::var("FENCELOCK_KEY").unwrap_or_default();
        let token = std::env::var("FENCELOCK_TOKEN").unwrap_or_default();
        // `elect` gives its guard the election's name: it speaks of the election.
        let election = std::env::var("FENCELOCK_ELECTION").ok();
        let holding = match &election {
            Some(name) => crate::run::Holding::Election(name),
            None => crate::run::Holding::Lock,
        };
        let line = format!(
            "fencelock: {} lost while `fencelock` is stopped: {why}; the guard kills the command's process group: it did not finish\n",
            holding.of(&key, token)
        );
        if crate::exit::say_within(line, SAY_PATIENCE) {
            if let Some(report) = report {
                let _ = report.write_all(SAID.as_bytes());
            }
        }
    }
    kill_now()
}

/// Whether a write to stderr would raise SIGTTOU: stderr is a terminal whose foreground
/// group is not ours, with `tostop` set.
fn write_would_stop() -> bool {
    let stderr = std::io::stderr();
    rustix::termios::isatty(&stderr)
        && !rustix::termios::tcgetpgrp(&stderr).is_ok_and(|fg| fg == rustix::process::getpgrp())
        && rustix::termios::tcgetattr(&stderr)
            .is_ok_and(|t| t.local_modes.contains(rustix::termios::LocalModes::TOSTOP))
}

/// Whether the guard's parent (`fencelock run` or `elect`) is stopped, as /proc says
/// (state `T`, or `t` under a debugger). `true` when /proc cannot say: better a line
/// twice than none.
fn parent_stopped() -> bool {
    let Some(parent) = rustix::process::getppid() else {
        return false; // orphaned: `run` is gone, not stopped
    };
    crate::group::stopped(parent).unwrap_or(true)
}

/// What the guard writes on `run`'s report pipe after [`KILLED`] when it has said why on
/// stderr (`run` was stopped): `run` then does not say it again.
pub const SAID: &str = "said why\n";

/// What the guard writes on `run`'s report pipe right before its kill at the deadline.
pub const KILLED: &str = "killed at the deadline\n";

/// How long the guard waits for its line to be written before it acts anyway.
const SAY_PATIENCE: Duration = Duration::from_millis(20);

/// Runs the guard: see the module documentation.
pub async fn guard(args: &GuardArgs) -> ExitCode {
    // Catch what is sent to the group before the command exists, so the guard outlives it.
    // SIGTSTP only when it was not ignored at start (`run` started with it ignored): it
    // then stays ignored, for the guard and the command (see `Stops::install`).
    let mut stop = crate::signals::Stops::install();
    // SIGTTIN, which the kernel sends the whole group when the command reads the terminal
    // from a background job: the command stops, the guard must not — stopped with it, it
    // watched neither the deadline nor `run`'s death, and a command continued later ran on
    // a lease long gone. Not SIGTTOU (a write with `stty tostop`): a write of the guard's
    // own that raised it would be restarted after the handler, and raise it again, for
    // ever; the guard never reads the terminal, so SIGTTIN cannot loop so.
    let mut tty_in = crate::signals::Stops::catching(Signal::TTIN);
    let mut told_background = false;
    let mut caught = crate::signals::Signals::install();
    let mut control = match read_control(args.control_fd) {
        Ok(rx) => rx,
        Err(e) => return exit::fail(&format!("guard: cannot open the control pipe: {e}"), exit::FAILURE),
    };
    let mut deadline = tokio::select! {
        message = control.recv() => match message {
            Some(Message::Until(d)) => d,
            _ => return ExitCode::from(exit::FAILURE), // `run` is gone before the start
        },
        sig = caught.next() => return not_started(sig),
    };
    // A caught signal reaches `caught` through tokio's signal driver and a task: it can
    // lag the deadline line by a moment. Without this pause a SIGTERM sent to `run` just
    // before it wrote the line was missed (2–7 of 150 tries in a review) and the command
    // ran to its end.
    let settled = tokio::select! {
        sig = caught.next() => Some(sig),
        () = tokio::time::sleep(SIGNAL_SETTLE) => caught.try_next(),
    };
    if let Some(sig) = settled {
        return not_started(sig);
    }
    // A newer line may be there already: a renewal, or [`KILL_NOW`] for a loss. The last
    // look before the start: a line after this one is seen only once the command started.
    while let Ok(message) = control.try_recv() {
        match message {
            Message::Until(d) => deadline = d,
            Message::Closed => return ExitCode::from(exit::FAILURE), // `run` is gone before the start
        }
    }
    if now_nanos() >= deadline {
        // The command never runs: not acquired for it (75), not "lost while it ran" (76).
        return exit::fail(crate::run::LOST_BEFORE_START, exit::NOT_ACQUIRED);
    }
    let mut report = open_report(args.report_fd);
    // [`VALIDITY_ENDED`] for a lease that is never renewed: [`UNRENEWED`].
    let ttl_ended;
    let at_deadline = if args.unrenewed {
        ttl_ended = format!("the lease's TTL ran out ({UNRENEWED})");
        ttl_ended.as_str()
    } else {
        VALIDITY_ENDED
    };
    let Some((program, rest)) = args.command.split_first() else {
        return exit::bad_input("no command given after --");
    };
    let shown = exit::escaped_os(program);
    // Only in debug builds (the tests'): a release binary never holds its start open,
    // whatever its environment says (a review: an exported variable would have delayed
    // every start past its deadline).
    if cfg!(debug_assertions) && std::env::var_os(HOLD_START_FOR_A_SIGNAL).is_some() {
        // Test hook: the moment between the last check and the start, held open until a
        // signal comes (at most 30 s) — which is then missed, as one that came in that
        // moment was.
        let _ = tokio::time::timeout(Duration::from_secs(30), caught.next()).await;
    }
    let command = |program: &std::ffi::OsStr| {
        let mut command = Command::new(program);
        command.env_remove(HOLD_START_FOR_A_SIGNAL);
        command
    };
    let spawned = match command(program).args(rest).spawn() {
        // An executable text file without `#!`: run it with /bin/sh, as execvp(3), env(1)
        // and shells do.
        Err(e) if e.raw_os_error() == Some(rustix::io::Errno::NOEXEC.raw_os_error()) => {
            command(std::ffi::OsStr::new("/bin/sh")).arg(program).args(rest).spawn()
        }
        other => other,
    };
    let mut child = match spawned {
        Ok(c) => {
            if let Some(report) = &mut report {
                // A full or closed pipe loses the line: `run` then takes the guard's status
                // for its own, as it did before there was a report.
                let _ = report.write_all(STARTED.as_bytes());
            }
            c
        }
        Err(e) => {
            let status = match e.kind() {
                std::io::ErrorKind::NotFound => exit::NOT_FOUND,
                _ => exit::CANNOT_EXECUTE,
            };
            return exit::fail(&format!("cannot run `{shown}`: {e}"), status);
        }
    };
    let code = loop {
        let left = until(deadline);
        tokio::select! {
            status = child.wait() => match status {
                Ok(s) => {
                    give_back_terminal();
                    break status_code(s);
                }
                Err(e) => return exit::fail(&format!("guard: lost track of `{shown}`: {e}"), exit::FAILURE),
            },
            message = control.recv() => match message {
                Some(Message::Until(d)) => deadline = d,
                Some(Message::Closed) | None => return kill_group(RUN_GONE),
            },
            () = tty_in.next() => {
                // Said once: the command retries, and is stopped again, at each use. Not
                // when the write would stop the guard itself (`stty tostop`).
                if !told_background && !write_would_stop() {
                    told_background = true;
                    crate::exit::say_within(
                        format!(
                            "fencelock: `{shown}` is stopped: it read the terminal from a background job, and keeps \
                             the lock (or the leadership) while stopped; send `fencelock` SIGINT or SIGTERM to end it\n"
                        ),
                        Duration::ZERO,
                    );
                }
            }
            () = stop.next() => {
                // Ctrl-Z on the terminal the command owns: a stopped group would hold the
                // terminal while `run` (which the shell waits for) runs on, so job control
                // cannot stop it; the group goes on.
                crate::exit::say_within(
                    "fencelock: a command under `fencelock run` cannot be stopped with Ctrl-Z; it goes on\n".into(),
                    Duration::ZERO,
                );
                let _ = kill_process_group(rustix::process::getpgrp(), Signal::CONT);
            }
            _ = tokio::time::sleep(left) => {
                if now_nanos() >= deadline {
                    return kill_at_deadline(&mut report, at_deadline);
                }
            }
        }
    };
    if let Some(report) = &mut report {
        // One write, shorter than PIPE_BUF: whole, whatever the command writes to the pipe.
        let _ = report.write_all(format!("{ENDED}{code}\n").as_bytes());
    }
    stop_left_behind(
        code,
        Duration::from_millis(args.kill_after_ms),
        &mut control,
        deadline,
        &mut report,
        at_deadline,
    )
    .await
}

/// The line the guard writes on `run`'s report pipe once it has started the command.
pub const STARTED: &str = "started\n";

/// What the guard writes on `run`'s report pipe when the command has ended, before its
/// status and a newline (`ended 3`).
pub const ENDED: &str = "ended ";

/// Opens `run`'s report pipe, inherited as descriptor `fd`. `None` when there is none or it
/// cannot be opened: then nothing is reported.
fn open_report(fd: Option<i32>) -> Option<std::fs::File> {
    open_inherited(fd?, true).ok()
}

/// Opens a pipe inherited as descriptor `fd` — for writing, or else reading — through its
/// /proc entry (/dev/fd where there is no /proc): a new descriptor to the same pipe,
/// without the `unsafe` of adopting a raw one.
fn open_inherited(fd: i32, write: bool) -> std::io::Result<std::fs::File> {
    let open = |path: String| std::fs::OpenOptions::new().read(!write).write(write).open(path);
    open(format!("/proc/self/fd/{fd}")).or_else(|_| open(format!("/dev/fd/{fd}")))
}

/// For tests only (crates/cli/tests/process_tree.rs): when set in the guard's environment,
/// the guard waits, after its last check and before it starts the command, for a signal
/// (at most 30 s), and goes on as if it had come a moment too late — the race a review
/// found, made certain. Not set for the command.
pub const HOLD_START_FOR_A_SIGNAL: &str = "FENCELOCK_TEST_HOLD_START_FOR_A_SIGNAL";

/// How long the guard lets a signal already sent reach it before it starts the command.
const SIGNAL_SETTLE: Duration = Duration::from_millis(5);

const VALIDITY_ENDED: &str = "the lease's validity ended without a renewal reaching the guard";
/// Why a lease that is never renewed (`auto_renew = false`) ends: its TTL running out is
/// the plan, not a fault, and the messages about it must not read as one.
pub(crate) const UNRENEWED: &str = "auto_renew is off: nothing renews it";
const RUN_GONE: &str = "its `fencelock run` or `fencelock elect` is gone";

/// The time left until `deadline` (a `CLOCK_MONOTONIC` instant in ns).
fn until(deadline: u128) -> Duration {
    Duration::from_nanos(deadline.saturating_sub(now_nanos()).min(u64::MAX as u128) as u64)
}

/// A signal reached the guard before the command started: it does not start.
fn not_started(sig: Signal) -> ExitCode {
    exit::fail(
        &format!(
            "{} before the command started; not starting it",
            crate::signals::name(sig)
        ),
        128 + sig.as_raw() as u8,
    )
}

/// After the command exited with `code`: stops what it left running in the group
/// (SIGTERM, then SIGKILL to each after `kill_after`; polled every 10 ms, there is no
/// event for a group's end), still killing the whole group when the deadline passes or
/// `run` is gone. Returns `code` once nothing else of the group runs — or when something
/// still does 1 s after its SIGKILL (`run` then tries once more, see `run::stop_group`).
async fn stop_left_behind(
    code: u8,
    kill_after: Duration,
    control: &mut mpsc::UnboundedReceiver<Message>,
    mut deadline: u128,
    report: &mut Option<std::fs::File>,
    at_deadline: &str,
) -> ExitCode {
    let me = rustix::process::getpid();
    let group = rustix::process::getpgrp();
    let others = || crate::group::members(group).map(|m| m.into_iter().filter(|p| *p != me).collect::<Vec<_>>());
    if others().is_none_or(|o| o.is_empty()) {
        return ExitCode::from(code);
    }
    crate::group::signal(group, Signal::TERM); // the guard catches it
                                               // A stopped process keeps SIGTERM pending until continued: without this it waited out
                                               // `kill_after`, the lock held all along.
    crate::group::signal(group, Signal::CONT);
    let start = tokio::time::Instant::now();
    // Bounded: by `kill_after` + 1 s of 10 ms turns.
    loop {
        let left = others().unwrap_or_default();
        if left.is_empty() {
            return ExitCode::from(code);
        }
        if start.elapsed() >= kill_after {
            if start.elapsed() >= kill_after + Duration::from_secs(1) {
                crate::exit::errln!("fencelock: processes the command left in its group are still there after SIGKILL");
                return ExitCode::from(code);
            }
            for pid in left {
                let _ = rustix::process::kill_process(pid, Signal::KILL);
            }
        }
        tokio::select! {
            message = control.recv() => match message {
                Some(Message::Until(d)) => deadline = d,
                Some(Message::Closed) | None => return kill_group(RUN_GONE),
            },
            _ = tokio::time::sleep(until(deadline)) => {
                if now_nanos() >= deadline {
                    return kill_at_deadline(report, at_deadline);
                }
            }
            _ = tokio::time::sleep(Duration::from_millis(10)) => {}
        }
    }
}

/// The command's exit code, or 128 + signal when a signal ended it (as shells report).
pub fn status_code(status: ExitStatus) -> u8 {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => (code & 0xff) as u8,
        (None, Some(sig)) => 128u8.saturating_add(sig as u8),
        (None, None) => exit::FAILURE,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_deadline_line_round_trips() {
        let line = until_line(|| Duration::from_secs(1));
        let Some(Message::Until(d)) = parse(&line) else {
            panic!("unparsed: {line}")
        };
        let left = d.saturating_sub(now_nanos());
        assert!(left > 900_000_000 && left <= 1_000_000_000, "{left}");
        assert!(parse("nonsense").is_none());
    }

    #[test]
    fn the_kill_comes_a_tenth_of_the_validity_early_within_bounds() {
        assert_eq!(kill_ahead(Duration::from_secs(3)), Duration::from_millis(300));
        assert_eq!(kill_ahead(Duration::from_millis(100)), Duration::from_millis(10));
        assert_eq!(kill_ahead(Duration::from_millis(30)), Duration::from_millis(10));
        assert_eq!(kill_ahead(Duration::from_secs(30)), Duration::from_secs(1));
        assert_eq!(kill_ahead(Duration::ZERO), Duration::from_millis(10));
    }

    /// Review: `run` computed the lead once, from the grant's remaining validity, and
    /// reused it for every renewal. Each deadline's lead is a tenth of the validity it is
    /// written for: a grant found with 200 ms left is killed 20 ms early, the 30 s
    /// validity renewed after it 1 s early — not 20 ms.
    #[test]
    fn each_deadline_keeps_a_tenth_of_its_own_validity() {
        assert_eq!(kill_within(Duration::from_millis(200)), Duration::from_millis(180));
        assert_eq!(kill_within(Duration::from_secs(30)), Duration::from_secs(29));
        assert_eq!(kill_within(Duration::from_secs(3)), Duration::from_millis(2700));
        assert_eq!(kill_within(Duration::from_millis(5)), Duration::ZERO);
    }

    /// [`KILL_NOW`] is a deadline already past, whenever it is read.
    #[test]
    fn kill_now_is_a_deadline_already_past() {
        let Some(Message::Until(d)) = parse(KILL_NOW) else {
            panic!("unparsed: {KILL_NOW}")
        };
        assert!(d <= now_nanos());
    }
}
