//! Exit statuses and turning errors into one-line messages.

/// `println!` for the commands that only print a report (`backends`, `bench`, `lab`,
/// `demo`): a reader that closed the pipe early (`| head`, `| true`) ends the process
/// quietly with status 0, as a coreutils program ends by SIGPIPE. Rust ignores SIGPIPE and
/// `println!` panics on the error (exit 101). Not for `run`, `elect` or `leader`, which
/// hold a lease: they must release it whatever happens to stdout.
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        if let Err(e) = writeln!(std::io::stdout(), $($arg)*) {
            $crate::exit::stdout_failed(e);
        }
    }};
}
pub(crate) use outln;

/// `eprintln!` that never panics nor blocks: the line goes through [`say`], so a stderr that
/// cannot be written (a closed pipe, /dev/full) loses the line instead of ending the process
/// with status 101 — for `run`, in the middle of stopping a command or releasing a lease
/// (new-user trial: `run … 2>/dev/full` exited 101 where 75 was due) — and one whose reader
/// stalled holds the process up for at most [`LINE_PATIENCE`]. Every message of the command
/// line goes through it.
macro_rules! errln {
    ($($arg:tt)*) => {{
        $crate::exit::say(format!("{}\n", format_args!($($arg)*)));
    }};
}
pub(crate) use errln;

/// How long a message waits for stderr before the process goes on without it.
pub const LINE_PATIENCE: Duration = Duration::from_secs(1);

/// Writes to stderr that have not finished yet (a stalled reader).
static UNFINISHED: AtomicUsize = AtomicUsize::new(0);

/// Writes `line` to stderr within [`LINE_PATIENCE`] (see [`say_within`]).
pub fn say(line: String) -> bool {
    say_within(line, LINE_PATIENCE)
}

/// How many lines may wait for stderr at once; a line beyond them is dropped.
const QUEUE: usize = 1024;

/// A line for the stderr writer, and where to say that it was written.
type Line = (String, SyncSender<()>);

/// The queue of the one thread that writes to stderr, started by the first line; `None`
/// when that thread could not be started.
static WRITER: OnceLock<Option<SyncSender<Line>>> = OnceLock::new();

/// The queue of the stderr writer: one thread, for the life of the process, that writes
/// the lines in the order they came.
fn writer() -> Option<&'static SyncSender<Line>> {
    WRITER
        .get_or_init(|| {
            let (queue, lines) = std::sync::mpsc::sync_channel::<Line>(QUEUE);
            std::thread::Builder::new()
                .name("stderr".into())
                .spawn(move || {
                    for (line, written) in lines {
                        let _ = std::io::stderr().write_all(line.as_bytes());
                        UNFINISHED.fetch_sub(1, Ordering::SeqCst);
                        let _ = written.try_send(());
                    }
                })
                .ok()
                .map(|_| queue)
        })
        .as_ref()
}

/// Hands `line` to the one thread that writes to stderr, and waits at most `patience` for
/// it to be written; returns whether it was written in that time. Not at all when an
/// earlier write has not finished: stderr is stalled, and every line would wait out its
/// patience behind it.
/// A process must never wait on stderr before it acts, nor before it exits: a pipe whose
/// reader stalled (a stuck `| logger`, a terminal after Ctrl-S, an unread FIFO), filled by
/// the command that shares it, blocks a write for as long as the reader stalls. For the
/// guard, the kill after its message never came — the command of a paused `run` ran on
/// beside the next holder (new-user trial, 5 of 5); `run`, continued after the guard's
/// kill, hung on its message with the lock free and the command dead. Not `eprintln!`
/// either: it panics when stderr fails (a closed pipe, /dev/full). A line not written in
/// time is written later, in order, if the process still runs when the reader drains,
/// else lost. At most [`QUEUE`] lines wait: a line that finds them all waiting is dropped
/// (returns false) — a stalled stderr costs a bounded queue, not a blocked thread per line
/// (`-vv` logs every event through here).
pub fn say_within(line: String, patience: Duration) -> bool {
    let patience = if UNFINISHED.load(Ordering::SeqCst) > 0 {
        Duration::ZERO
    } else {
        patience
    };
    let Some(queue) = writer() else {
        return false;
    };
    let (done, written) = std::sync::mpsc::sync_channel(1);
    UNFINISHED.fetch_add(1, Ordering::SeqCst);
    if queue.try_send((line, done)).is_err() {
        UNFINISHED.fetch_sub(1, Ordering::SeqCst);
        return false;
    }
    written.recv_timeout(patience).is_ok()
}

/// What [`outln!`] does when stdout fails: a closed pipe ends the process with status 0;
/// any other error (a full disk) with a one-line message and `FAILURE`.
pub fn stdout_failed(e: std::io::Error) -> ! {
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        std::process::exit(0);
    }
    crate::exit::errln!("fencelock: writing to stdout failed: {e}");
    std::process::exit(i32::from(FAILURE));
}

use std::io::Write as _;
use std::process::ExitCode;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::SyncSender;
use std::sync::OnceLock;
use std::time::Duration;

use fencelock::LockError;

/// The lock was not acquired within --wait (sysexits EX_TEMPFAIL).
pub const NOT_ACQUIRED: u8 = 75;
/// The lease was lost while the command ran.
pub const LEASE_LOST: u8 = 76;
/// Bad input: key, TTL (sysexits EX_USAGE).
pub const BAD_INPUT: u8 = 64;
/// The backend could not be reached (sysexits EX_UNAVAILABLE).
pub const UNAVAILABLE: u8 = 69;
/// An internal or backend failure (sysexits EX_SOFTWARE).
pub const FAILURE: u8 = 70;
/// Bad configuration or URL (sysexits EX_CONFIG).
pub const CONFIG: u8 = 78;
/// The command exists but cannot be executed (as shells do).
pub const CANNOT_EXECUTE: u8 = 126;
/// The command was not found (as shells do).
pub const NOT_FOUND: u8 = 127;

/// The exit status for an error.
pub fn status_for(e: &LockError) -> u8 {
    match e {
        LockError::Timeout { .. } => NOT_ACQUIRED,
        LockError::LeaseLost { .. } => LEASE_LOST,
        LockError::InvalidInput(_) => BAD_INPUT,
        LockError::InvalidConfig { .. } | LockError::FeatureDisabled { .. } | LockError::GuaranteeNotMet { .. } => {
            CONFIG
        }
        LockError::Unavailable { .. } => UNAVAILABLE,
        // A call on a client already closed: fencelock's own mistake.
        LockError::Closed => FAILURE,
        _ => FAILURE,
    }
}

pub use fencelock::error::one_line;

/// Prints `fencelock: MESSAGE` to stderr and returns `status`. A backend URL in MESSAGE
/// is shown as the user gave it ([`crate::backend::as_given`]).
pub fn fail(message: &str, status: u8) -> ExitCode {
    crate::exit::errln!("fencelock: {}", crate::backend::as_given(message));
    ExitCode::from(status)
}

/// Prints an error on one line and returns its status.
pub fn fail_with(e: &LockError) -> ExitCode {
    fail(&one_line(e), status_for(e))
}

/// Reports a command-line error from clap: `--help` and `--version` print and exit 0;
/// anything else is a one-line message and [`BAD_INPUT`] (64, EX_USAGE) — not clap's own 2,
/// so that scripts see the sysexits code the README promises.
pub fn usage(e: clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    match e.kind() {
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => {
            let _ = e.print();
            ExitCode::SUCCESS
        }
        ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            let _ = e.print();
            ExitCode::from(BAD_INPUT)
        }
        _ => {
            let text = e.to_string();
            let mut lines = text.lines().filter(|l| !l.trim().is_empty());
            let first = lines.next().unwrap_or("bad arguments");
            let first = first.strip_prefix("error: ").unwrap_or(first);
            // "the following required arguments were not provided:" lists the names on
            // the indented lines after it: keep them, on the same line.
            let message = if first.trim_end().ends_with(':') {
                let names: Vec<&str> = lines.take_while(|l| l.starts_with(' ')).map(str::trim).collect();
                format!("{} {}", first.trim_end(), names.join(" "))
            } else {
                first.to_owned()
            };
            fail(&format!("{} (see --help)", message.trim_end()), BAD_INPUT)
        }
    }
}
