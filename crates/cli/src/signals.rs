//! The signals `run`, `elect` and `leader` catch instead of dying by them.
//!
//! Every signal whose default action ends a process and that another process can send is
//! caught ([`TERMINATING`]), so that `fencelock` always cleans up: a waiter gives up its
//! place in the queue (no orphaned etcd/ZooKeeper entry blocking the next waiter until
//! the session times out) and exits 128+N; a holder forwards the signal to its command's
//! process group. Not caught: SIGKILL and SIGSTOP (impossible); SIGSEGV, SIGBUS, SIGFPE,
//! SIGILL, SIGTRAP and SIGSYS (faults of the process itself); the real-time signals;
//! SIGPIPE, which Rust programs ignore (a write to a closed pipe is an error, not a death).
//! Nor any signal the process was started with set to "ignore" ([`ignored_at_start`]).

use rustix::process::Signal;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::mpsc;

/// The signals handled like SIGTERM, in the order docs/cli.md lists them.
pub const TERMINATING: [Signal; 14] = [
    Signal::HUP,
    Signal::INT,
    Signal::QUIT,
    Signal::ABORT,
    Signal::USR1,
    Signal::USR2,
    Signal::ALARM,
    Signal::TERM,
    Signal::XCPU,
    Signal::XFSZ,
    Signal::VTALARM,
    Signal::PROF,
    Signal::IO,
    Signal::POWER,
];

/// The [`TERMINATING`] signals as they arrive.
pub(crate) struct Signals {
    rx: mpsc::UnboundedReceiver<Signal>,
}

impl Signals {
    /// Starts catching every [`TERMINATING`] signal (a listener task each, for the life of
    /// the process). Call it first thing, before any wait.
    pub(crate) fn install() -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        for sig in catchable() {
            match signal(SignalKind::from_raw(sig.as_raw())) {
                Ok(mut s) => {
                    let tx = tx.clone();
                    tokio::spawn(async move {
                        while s.recv().await.is_some() {
                            if tx.send(sig).is_err() {
                                break;
                            }
                        }
                    });
                }
                Err(e) => tracing::warn!(error = %e, signal = name(sig), "cannot catch a signal"),
            }
        }
        Signals { rx }
    }

    /// One that arrived and was not taken yet, without waiting.
    pub(crate) fn try_next(&mut self) -> Option<Signal> {
        self.rx.try_recv().ok()
    }

    /// The next of them to arrive (never, when none could be caught).
    pub(crate) async fn next(&mut self) -> Signal {
        match self.rx.recv().await {
            Some(sig) => sig,
            None => std::future::pending().await,
        }
    }
}

/// SIGTSTP (Ctrl-Z, `kill -TSTP`) as it arrives, for `run` while it connects and waits.
///
/// A waiter stopped by its default action keeps its place in line: on Redis and Redlock a
/// release hands the lock to the stopped process, which holds it unused until its TTL ends;
/// on etcd and ZooKeeper its queue entry blocks the next waiter until its session expires.
/// flock(1) stopped in its wait holds nobody up — the kernel grants the lock to a waiter
/// that runs — and so `run` gives up its place, then stops (see `crate::waiting`).
///
/// The guard catches SIGTSTP and SIGTTIN with it too ([`Stops::catching`], see guard.rs):
/// the command's group must not be stopped while the lease is held.
pub(crate) struct Stops(Option<tokio::signal::unix::Signal>);

impl Stops {
    /// Starts catching SIGTSTP for the life of the process, unless it was ignored at start
    /// (it then stays ignored, as [`ignored_at_start`] explains). Once caught, it no longer
    /// stops the process by itself: after the wait, `run` leaves it unanswered (a holder
    /// that stopped would stop renewing, and its command would be killed at the validity's
    /// end; the guard keeps the command itself from being stopped, see guard.rs).
    pub(crate) fn install() -> Self {
        Self::catching(Signal::TSTP)
    }

    /// [`install`](Self::install) for another stop signal: the guard catches SIGTTIN too,
    /// which the kernel sends the whole group when the command reads the terminal from a
    /// background job (see guard.rs).
    pub(crate) fn catching(sig: Signal) -> Self {
        if ignored_at_start() & signal_bit(sig.as_raw()) != 0 {
            return Stops(None);
        }
        match signal(SignalKind::from_raw(sig.as_raw())) {
            Ok(s) => Stops(Some(s)),
            Err(e) => {
                tracing::warn!(error = %e, signal = name(sig), "cannot catch a signal");
                Stops(None)
            }
        }
    }

    /// The next SIGTSTP (never, when it is not caught).
    pub(crate) async fn next(&mut self) {
        let got = match self.0.as_mut() {
            Some(s) => s.recv().await,
            None => None,
        };
        if got.is_none() {
            std::future::pending::<()>().await;
        }
    }
}

/// Stops this process with SIGSTOP, as SIGTSTP's default action would have (the shell sees
/// the job stopped; `fg` or SIGCONT continues it), and returns once it is continued.
/// SIGSTOP, because a caught SIGTSTP cannot be given back its default action without
/// `sigaction`, i.e. `unsafe`, which the workspace forbids.
pub(crate) fn stop_self() {
    if let Err(e) = rustix::process::kill_process(rustix::process::getpid(), Signal::STOP) {
        tracing::warn!(error = %e, "cannot stop this process");
    }
}

/// The [`TERMINATING`] signals not ignored at start.
fn catchable() -> impl Iterator<Item = Signal> {
    let ignored = ignored_at_start();
    TERMINATING
        .into_iter()
        .filter(move |sig| ignored & signal_bit(sig.as_raw()) == 0)
}

/// Bit `n − 1` for signal `n`, as `/proc/PID/status` writes its masks.
fn signal_bit(n: i32) -> u64 {
    u32::try_from(n - 1).ok().and_then(|b| 1u64.checked_shl(b)).unwrap_or(0)
}

/// The signals this process was started with set to "ignore" (a bit per signal, see
/// [`signal_bit`]). By the POSIX convention they stay ignored: a non-interactive shell
/// starts `cmd &` with SIGINT and SIGQUIT ignored so that the terminal's Ctrl-C does not
/// reach background jobs, and `nohup` ignores SIGHUP. Catching them would end such a
/// `fencelock` anyway — and only once the handler is set, a few ms in, so the outcome
/// would depend on when the signal came — and would give the command the default action
/// back (exec keeps an ignored signal ignored, not a caught one).
///
/// Read from `/proc/self/status` (`SigIgn:`, hexadecimal): asking the kernel directly
/// needs `sigaction`, i.e. `unsafe`, which the workspace forbids. Read before any handler
/// of ours is set (a caught signal is no longer ignored). Without procfs: none.
fn ignored_at_start() -> u64 {
    static IGNORED: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *IGNORED.get_or_init(|| {
        std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|status| {
                status
                    .lines()
                    .find_map(|l| l.strip_prefix("SigIgn:"))
                    .and_then(|mask| u64::from_str_radix(mask.trim(), 16).ok())
            })
            .unwrap_or(0)
    })
}

/// `SIGTERM`, `SIGUSR1`, …
pub(crate) fn name(sig: Signal) -> &'static str {
    match sig {
        Signal::HUP => "SIGHUP",
        Signal::INT => "SIGINT",
        Signal::QUIT => "SIGQUIT",
        Signal::ABORT => "SIGABRT",
        Signal::USR1 => "SIGUSR1",
        Signal::USR2 => "SIGUSR2",
        Signal::ALARM => "SIGALRM",
        Signal::TERM => "SIGTERM",
        Signal::XCPU => "SIGXCPU",
        Signal::XFSZ => "SIGXFSZ",
        Signal::VTALARM => "SIGVTALRM",
        Signal::PROF => "SIGPROF",
        Signal::IO => "SIGIO",
        Signal::POWER => "SIGPWR",
        Signal::TSTP => "SIGTSTP",
        Signal::TTIN => "SIGTTIN",
        Signal::TTOU => "SIGTTOU",
        _ => "a signal",
    }
}
