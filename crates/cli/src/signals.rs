//! The signals `run`, `elect` and `leader` catch instead of dying by them.
//!
//! Every signal whose default action ends a process and that another process can send is
//! caught ([`TERMINATING`]), so that `fencelock` always cleans up: a waiter gives up its
//! place in the queue (no orphaned etcd/ZooKeeper entry blocking the next waiter until
//! the session times out) and exits 128+N; a holder forwards the signal to its command's
//! process group. Not caught: SIGKILL and SIGSTOP (impossible); SIGSEGV, SIGBUS, SIGFPE,
//! SIGILL, SIGTRAP and SIGSYS (faults of the process itself); the real-time signals;
//! SIGPIPE, which Rust programs ignore (a write to a closed pipe is an error, not a death).

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
        for sig in TERMINATING {
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

    /// The next of them to arrive (never, when none could be caught).
    pub(crate) async fn next(&mut self) -> Signal {
        match self.rx.recv().await {
            Some(sig) => sig,
            None => std::future::pending().await,
        }
    }
}

/// Catches every [`TERMINATING`] signal and does nothing with them: for the guard, which
/// must outlive what is sent to its group to report the command's status. Keep the value.
pub(crate) fn ignore_all() -> Vec<tokio::signal::unix::Signal> {
    TERMINATING
        .into_iter()
        .filter_map(|sig| signal(SignalKind::from_raw(sig.as_raw())).ok())
        .collect()
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
        _ => "a signal",
    }
}
