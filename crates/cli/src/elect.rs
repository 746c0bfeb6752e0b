//! `fencelock elect NAME [--value V] -- CMD`: a command that runs only while this process
//! leads the election NAME.
//!
//! The campaign waits (bounded by --wait) for the seat; once elected, the command runs
//! under the seat's lease with exactly `run`'s machinery (`run::supervise_with`): its own
//! process group behind the guard, renewal, loss → SIGTERM/SIGKILL and exit 76, signals
//! forwarded. FENCELOCK_TERM (the term, also FENCELOCK_TOKEN) is in its environment.
//! When the command exits the seat is resigned at once, so the next candidate leads
//! without waiting for the TTL.

use std::process::ExitCode;
use std::time::Duration;

use fencelock::election::Election;
use fencelock::LockError;

use crate::args::{Cli, ElectArgs, RunArgs};
use crate::exit::{self, fail};
use crate::run::{self, Signals};

/// How long `elect` gives the backend to end its session before it exits.
const CLOSE_WITHIN: Duration = Duration::from_secs(5);

/// Connects the election of the selected backend, refusing `memory://` (it would elect
/// within this process only); returns it with the default options.
pub async fn connect(
    cli: &Cli,
    command: &str,
) -> Result<(std::sync::Arc<dyn Election>, fencelock::LockOptions), LockError> {
    let config = crate::backend::config(cli)?;
    crate::backend::refuse_in_process(&config, command)?;
    let election = fencelock::connect_election(&config.backend).await?;
    Ok((election, config.defaults))
}

/// Gives the backend [`CLOSE_WITHIN`] to end its session.
pub async fn close(election: &dyn Election) {
    match tokio::time::timeout(CLOSE_WITHIN, election.close()).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!(error = %exit::one_line(&e), "closing the backend failed"),
        Err(_) => tracing::warn!("closing the backend took longer than {CLOSE_WITHIN:?}; exiting anyway"),
    }
}

/// Campaigns, runs the command while leading, resigns, and returns the exit status to use.
pub async fn elect(cli: &Cli, args: &ElectArgs) -> ExitCode {
    let mut signals = Signals::install();
    if let Err(e) = fencelock::options::validate_key(&args.name) {
        return exit::fail_with(&e);
    }
    let (election, defaults) = match connect(cli, "elect").await {
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
    let value = args.value.clone().unwrap_or_else(default_value);
    tracing::info!(name = %args.name, wait = ?opts.wait(), on = %election.describe(), "campaigning");
    let won = tokio::select! {
        r = election.campaign(&args.name, value.as_bytes(), &opts) => r,
        sig = signals.next() => {
            // The campaign future is dropped here: cancel safe, no candidacy is left.
            close(&*election).await;
            return fail(
                &format!("{} while campaigning for `{}`; not elected", run::signal_name(sig), args.name),
                128 + sig.as_raw() as u8,
            );
        }
    };
    let leadership = match won {
        Ok(l) => l,
        Err(LockError::Timeout { waited, .. }) => {
            close(&*election).await;
            return fail(
                &format!(
                    "election `{}` is led by someone else; not elected within {waited:.1?} (on {})",
                    args.name,
                    election.describe()
                ),
                args.conflict_exit_code,
            );
        }
        Err(e) => {
            close(&*election).await;
            return exit::fail_with(&e);
        }
    };
    let term = leadership.term();
    tracing::info!(name = %args.name, %term, "elected");
    let run_args = RunArgs {
        key: args.name.clone(),
        ttl: args.ttl,
        wait: args.wait,
        no_wait: false,
        kill_after: args.kill_after,
        conflict_exit_code: args.conflict_exit_code,
        lost_exit_code: args.lost_exit_code,
        metrics_addr: None,
        command: args.command.clone(),
    };
    let env = [
        ("FENCELOCK_TERM", term.to_string()),
        ("FENCELOCK_ELECTION", args.name.clone()),
    ];
    // Releasing the seat's lease at the end of supervise is the resignation.
    let code = run::supervise_with(&run_args, leadership.into_lease(), &mut signals, &env).await;
    close(&*election).await;
    code
}

/// The value published when --value is not given: `HOST:PID`.
fn default_value() -> String {
    // Linux's view of uname's nodename; "localhost" elsewhere.
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "localhost".to_owned());
    format!("{host}:{}", std::process::id())
}
