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

/// Writes `line` to stderr within [`LINE_PATIENCE`] (see [`say_within`]).
pub fn say(line: String) -> bool {
    say_within(line, LINE_PATIENCE)
}

/// How many lines may wait for stderr at once; a line beyond them is dropped.
const QUEUE: usize = 1024;

/// The process's one stderr writer, started by the first line; `None` when its thread
/// could not be started.
static STDERR: OnceLock<Option<Writer>> = OnceLock::new();

/// Hands `line` to the one thread that writes to stderr, and waits at most `patience` for
/// it to be written; returns whether it was written in that time (see [`Writer::say`]).
/// A process must never wait on stderr before it acts, nor before it exits: a pipe whose
/// reader stalled (a stuck `| logger`, a terminal after Ctrl-S, an unread FIFO), filled by
/// the command that shares it, blocks a write for as long as the reader stalls. For the
/// guard, the kill after its message never came — the command of a paused `run` ran on
/// beside the next holder (new-user trial, 5 of 5); `run`, continued after the guard's
/// kill, hung on its message with the lock free and the command dead. Not `eprintln!`
/// either: it panics when stderr fails (a closed pipe, /dev/full).
pub fn say_within(line: String, patience: Duration) -> bool {
    let writer = STDERR.get_or_init(|| Writer::start(std::io::stderr(), QUEUE));
    writer.as_ref().is_some_and(|w| w.say(line, patience))
}

/// A line for the writer, and where to say that it was written.
type Line = (String, SyncSender<()>);

/// One thread, for the life of the process, that writes lines to a sink in the order
/// they came, behind a bounded queue.
struct Writer {
    queue: SyncSender<Line>,
    /// Lines handed over and not written yet (a stalled reader).
    unfinished: Arc<AtomicUsize>,
}

impl Writer {
    /// Starts the writing thread on `sink` with room for `room` waiting lines; `None`
    /// when the thread could not be started.
    fn start<W: std::io::Write + Send + 'static>(mut sink: W, room: usize) -> Option<Self> {
        let (queue, lines) = std::sync::mpsc::sync_channel::<Line>(room);
        let unfinished = Arc::new(AtomicUsize::new(0));
        let count = Arc::clone(&unfinished);
        std::thread::Builder::new()
            .name("stderr".into())
            .spawn(move || {
                for (line, written) in lines {
                    let _ = sink.write_all(line.as_bytes());
                    count.fetch_sub(1, Ordering::SeqCst);
                    let _ = written.try_send(());
                }
            })
            .ok()?;
        Some(Writer { queue, unfinished })
    }

    /// Queues `line` and waits at most `patience` for it to be written; not at all when
    /// an earlier line is still unwritten (the sink is stalled, and every line would wait
    /// out its patience behind it). A line not written in time is written later, in
    /// order, if the process still runs when the reader drains, else lost. A line that
    /// finds the queue full is dropped (returns false): a stalled sink costs a bounded
    /// queue, not a blocked thread per line (`-vv` logs every event through here).
    fn say(&self, line: String, patience: Duration) -> bool {
        let patience = if self.unfinished.load(Ordering::SeqCst) > 0 {
            Duration::ZERO
        } else {
            patience
        };
        let (done, written) = std::sync::mpsc::sync_channel(1);
        self.unfinished.fetch_add(1, Ordering::SeqCst);
        if self.queue.try_send((line, done)).is_err() {
            self.unfinished.fetch_sub(1, Ordering::SeqCst);
            return false;
        }
        written.recv_timeout(patience).is_ok()
    }
}

/// What [`outln!`] does when stdout fails: ends the process with [`stdout_status`].
pub fn stdout_failed(e: std::io::Error) -> ! {
    std::process::exit(i32::from(stdout_status(&e)));
}

/// The status a failed write to stdout ends with: 0 for a closed pipe (the reader went
/// away); for any other error (a full disk), `FAILURE`, after a one-line message.
pub fn stdout_status(e: &std::io::Error) -> u8 {
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        return 0;
    }
    crate::exit::errln!("fencelock: writing to stdout failed: {e}");
    FAILURE
}

use std::process::ExitCode;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::SyncSender;
use std::sync::{Arc, OnceLock};
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

/// `text` as given, for a message: control characters escaped (`\t`, `\u{1b}`), so that
/// blanks stay visible inside the quotes around them and an escape sequence in an input
/// never reaches the terminal raw; everything else as it is.
pub fn escaped(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_control() {
            out.extend(c.escape_debug());
        } else {
            out.push(c);
        }
    }
    out
}

/// [`escaped`] for bytes that need not be UTF-8 (a command and its arguments): valid text
/// as [`escaped`] shows it, every other byte as `\xNN`.
pub fn escaped_bytes(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    for chunk in bytes.utf8_chunks() {
        out.push_str(&escaped(chunk.valid()));
        for b in chunk.invalid() {
            out.push_str(&format!("\\x{b:02x}"));
        }
    }
    out
}

/// [`escaped_bytes`] of an OS string (a command, an argument).
pub fn escaped_os(text: &std::ffi::OsStr) -> String {
    use std::os::unix::ffi::OsStrExt;
    escaped_bytes(text.as_bytes())
}

/// Prints `fencelock: invalid input: MESSAGE` (the form of every bad input, as the
/// library's [`LockError::InvalidInput`] reads) and returns [`BAD_INPUT`].
pub fn bad_input(message: &str) -> ExitCode {
    fail_with(&LockError::invalid_input(message))
}

/// Prints `fencelock: MESSAGE` to stderr and returns `status`. A backend URL in MESSAGE
/// is shown as the user gave it ([`crate::backend::as_given`]).
///
/// Control characters in MESSAGE are escaped ([`escaped`]): a message quotes inputs — clap's
/// quote the value as given — and must stay one line that cannot drive the terminal.
pub fn fail(message: &str, status: u8) -> ExitCode {
    crate::exit::errln!("fencelock: {}", escaped(&crate::backend::as_given(message)));
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
        // clap's rendering strips escape sequences, an input's among them: a value such as
        // `$'\e[31m'` was quoted as `''`. Said here with the value as given ([`escaped`]).
        ErrorKind::ValueValidation => {
            use clap::error::{ContextKind, ContextValue};
            let context = |kind| match e.get(kind) {
                Some(ContextValue::String(s)) => Some(s.as_str()),
                _ => None,
            };
            match (context(ContextKind::InvalidValue), context(ContextKind::InvalidArg)) {
                (Some(value), Some(arg)) => {
                    let why = std::error::Error::source(&e)
                        .map(|s| format!(": {s}"))
                        .unwrap_or_default();
                    fail(
                        // `fail` escapes the whole line, the value with it.
                        &format!("invalid value `{value}` for `{arg}`{why} (see --help)"),
                        BAD_INPUT,
                    )
                }
                _ => first_line_of(&e),
            }
        }
        _ => first_line_of(&e),
    }
}

/// [`usage`]'s one-line message for an error clap renders itself.
fn first_line_of(e: &clap::Error) -> ExitCode {
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    /// A sink whose every write waits until the test takes the line: a stalled reader
    /// the test drains when it chooses.
    struct Reader(SyncSender<String>);

    impl std::io::Write for Reader {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            let _ = self.0.send(String::from_utf8_lossy(buf).into_owned());
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_stalled_sink_drops_lines_beyond_the_queue_and_writes_the_rest_in_order() {
        let (sink, read) = std::sync::mpsc::sync_channel(0);
        let writer = Writer::start(Reader(sink), 3).unwrap();
        // The first line is taken by the writing thread, which then waits on the reader.
        assert!(
            !writer.say("a".into(), Duration::from_millis(50)),
            "not written: the reader stalls"
        );
        // Behind an unwritten line, no line waits: each returns at once.
        let start = std::time::Instant::now();
        for line in ["b", "c", "d"] {
            assert!(!writer.say(line.into(), Duration::from_secs(30)), "{line}");
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "a line waited behind the stalled one"
        );
        // The queue (3 lines) is full: the next is dropped.
        assert!(!writer.say("dropped".into(), Duration::from_secs(30)));
        // The reader drains: the queued lines come out in order, the dropped one never.
        let drained: Vec<String> = (0..4).map(|_| read.recv().unwrap()).collect();
        assert_eq!(drained, ["a", "b", "c", "d"]);
        // Drained, a line is written within its patience again.
        let reading = std::thread::spawn(move || read.recv().unwrap());
        assert!(writer.say("e".into(), Duration::from_secs(30)));
        assert_eq!(reading.join().unwrap(), "e");
    }
}
