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

/// `eprintln!` that never panics: a stderr that cannot be written (a closed pipe,
/// /dev/full) loses the line instead of ending the process with status 101 — for `run`,
/// in the middle of stopping a command or releasing a lease (new-user trial: `run …
/// 2>/dev/full` exited 101 where 75 was due). Every message of the command line goes
/// through it.
macro_rules! errln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}
pub(crate) use errln;

/// What [`outln!`] does when stdout fails: a closed pipe ends the process with status 0;
/// any other error (a full disk) with a one-line message and `FAILURE`.
pub fn stdout_failed(e: std::io::Error) -> ! {
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        std::process::exit(0);
    }
    crate::exit::errln!("fencelock: writing to stdout failed: {e}");
    std::process::exit(i32::from(FAILURE));
}

use std::process::ExitCode;

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
