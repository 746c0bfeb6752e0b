//! `fencelock run KEY -- CMD`: a command under a lock.

use std::process::{ExitCode, ExitStatus};
use std::time::Duration;

use fencelock::{Lease, LockError};
use rustix::process::{kill_process, Pid, Signal};
use tokio::process::{Child, Command};
use tokio::signal::unix::{signal, SignalKind};

use crate::args::{Cli, RunArgs};
use crate::backend;
use crate::exit;

/// Runs the command under the lock and returns the exit status to use.
pub async fn run(cli: &Cli, args: &RunArgs) -> ExitCode {
    let (locks, defaults) = match backend::connect(cli).await {
        Ok(v) => v,
        Err(e) => return exit::fail_with(&e),
    };
    let mut opts = defaults.with_auto_renew(true);
    if let Some(ttl) = args.ttl {
        opts = opts.with_ttl(ttl);
    }
    if let Some(wait) = args.wait {
        opts = opts.with_wait(wait);
    }
    let acquired = if args.no_wait || args.wait == Some(Duration::ZERO) {
        match locks.try_acquire(&args.key, &opts).await {
            Ok(Some(lease)) => Ok(lease),
            Ok(None) => Err(LockError::Timeout {
                key: args.key.clone(),
                waited: Duration::ZERO,
            }),
            Err(e) => Err(e),
        }
    } else {
        locks.acquire(&args.key, &opts).await
    };
    let lease = match acquired {
        Ok(lease) => lease,
        Err(LockError::Timeout { key, waited }) => {
            return exit::fail(
                &format!(
                    "lock `{key}` is held by someone else; not acquired within {waited:.1?} (on {})",
                    locks.describe()
                ),
                exit::NOT_ACQUIRED,
            )
        }
        Err(e) => return exit::fail_with(&e),
    };
    tracing::info!(key = %args.key, token = %lease.token(), "acquired");
    supervise(args, lease).await
}

/// Starts the command, watches it and the lease, and cleans up.
async fn supervise(args: &RunArgs, lease: Lease) -> ExitCode {
    let (program, rest) = match args.command.split_first() {
        Some(split) => split,
        None => return exit::fail("no command given after --", exit::BAD_INPUT),
    };
    let spawned = Command::new(program)
        .args(rest)
        .env("FENCELOCK_TOKEN", lease.token().to_string())
        .env("FENCELOCK_KEY", lease.key())
        .env("FENCELOCK_GRANT", lease.grant().as_str())
        .kill_on_drop(true)
        .spawn();
    let mut child = match spawned {
        Ok(c) => c,
        Err(e) => {
            let status = match e.kind() {
                std::io::ErrorKind::NotFound => exit::NOT_FOUND,
                _ => exit::CANNOT_EXECUTE,
            };
            let _ = lease.release().await;
            return exit::fail(&format!("cannot run `{program}`: {e}"), status);
        }
    };
    let outcome = watch_child(&mut child, &lease, args.kill_after).await;
    let released = lease.release().await;
    match outcome {
        Outcome::Exited(status) => match released {
            Err(e @ LockError::LeaseLost { .. }) => exit::fail(
                &format!(
                    "{}; `{program}` finished, but not entirely under the lock",
                    exit::one_line(&e)
                ),
                exit::LEASE_LOST,
            ),
            Err(e) => {
                tracing::warn!(error = %exit::one_line(&e), "release failed; the lease will expire by its TTL");
                ExitCode::from(status_code(status))
            }
            Ok(()) => ExitCode::from(status_code(status)),
        },
        Outcome::LeaseLost(message) => exit::fail(&message, exit::LEASE_LOST),
        Outcome::WaitFailed(e) => exit::fail(&format!("lost track of `{program}`: {e}"), exit::FAILURE),
    }
}

enum Outcome {
    Exited(ExitStatus),
    LeaseLost(String),
    WaitFailed(std::io::Error),
}

/// Waits for the child; forwards SIGINT, SIGTERM and SIGHUP to it; on a lost lease sends it
/// SIGTERM, then SIGKILL after `kill_after`.
async fn watch_child(child: &mut Child, lease: &Lease, kill_after: Duration) -> Outcome {
    let mut int = listen(SignalKind::interrupt());
    let mut term = listen(SignalKind::terminate());
    let mut hup = listen(SignalKind::hangup());
    let lost = lease.lost();
    tokio::pin!(lost);
    loop {
        tokio::select! {
            status = child.wait() => return match status {
                Ok(s) => Outcome::Exited(s),
                Err(e) => Outcome::WaitFailed(e),
            },
            reason = &mut lost => {
                eprintln!(
                    "fencelock: lease on `{}` (token {}) lost while the command ran: {reason}; sending it SIGTERM",
                    lease.key(), lease.token()
                );
                send(child, Signal::TERM);
                if tokio::time::timeout(kill_after, child.wait()).await.is_err() {
                    eprintln!("fencelock: the command ignored SIGTERM for {kill_after:?}; sending SIGKILL");
                    let _ = child.start_kill();
                    let _ = child.wait().await;
                }
                return Outcome::LeaseLost(format!("exiting with status {} (lease lost)", exit::LEASE_LOST));
            }
            Some(()) = recv(&mut int) => send(child, Signal::INT),
            Some(()) = recv(&mut term) => send(child, Signal::TERM),
            Some(()) = recv(&mut hup) => send(child, Signal::HUP),
        }
    }
}

fn listen(kind: SignalKind) -> Option<tokio::signal::unix::Signal> {
    match signal(kind) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for a signal to forward");
            None
        }
    }
}

/// The next delivery of a signal we listen for; never, when we could not listen.
async fn recv(s: &mut Option<tokio::signal::unix::Signal>) -> Option<()> {
    match s {
        Some(s) => s.recv().await,
        None => std::future::pending().await,
    }
}

fn send(child: &Child, sig: Signal) {
    if let Some(pid) = child.id().and_then(|id| Pid::from_raw(id as i32)) {
        if let Err(e) = kill_process(pid, sig) {
            tracing::warn!(error = %e, "cannot signal the command");
        }
    }
}

/// The command's exit code, or 128 + signal when a signal ended it (as shells report).
fn status_code(status: ExitStatus) -> u8 {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => (code & 0xff) as u8,
        (None, Some(sig)) => 128u8.saturating_add(sig as u8),
        (None, None) => exit::FAILURE,
    }
}
