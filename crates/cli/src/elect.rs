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

/// Connects the election of the selected backend, refusing `memory://` (it would elect
/// within this process only); returns it with the default options. For a command that
/// only reads (`leader`): nothing is added to a `file://` URL.
pub async fn connect(
    cli: &Cli,
    command: &str,
    ttl: Option<Duration>,
) -> Result<(std::sync::Arc<dyn Election>, fencelock::LockOptions), LockError> {
    connect_adding(cli, command, ttl, str::to_owned).await
}

/// [`connect`] for `elect`, which runs a command while it leads: on `file://` it adds
/// `inherit=true`, as `run` does ([`crate::backend::connect_for_processes`]), so that the
/// guard and the command's group share the flocked liveness file of the seat's lease. A
/// SIGKILLed `elect` then leaves the seat held until its guard has killed the group and
/// died with it; without it the seat was free at once, and a waiting `elect` could start
/// its command while the old one still ran (docs/cli.md).
async fn connect_campaigning(
    cli: &Cli,
    ttl: Option<Duration>,
) -> Result<(std::sync::Arc<dyn Election>, fencelock::LockOptions), LockError> {
    connect_adding(cli, "elect", ttl, crate::backend::inherit_liveness).await
}

async fn connect_adding(
    cli: &Cli,
    command: &str,
    ttl: Option<Duration>,
    extra: fn(&str) -> String,
) -> Result<(std::sync::Arc<dyn Election>, fencelock::LockOptions), LockError> {
    let config = crate::backend::config(cli)?;
    crate::backend::refuse_in_process(&config, command)?;
    if crate::backend::is_file_url(&config.backend) {
        // Checked as written, so that a message quotes the user's URL, not an
        // `inherit=true` added below.
        fencelock::file::FileConfig::from_url(config.backend.trim())?;
    }
    let config = crate::backend::with_added_options(config, ttl, extra);
    let election = crate::backend::connectable(&config).connect_election().await?;
    Ok((election, config.defaults))
}

/// Gives the backend [`CLOSE_WITHIN`](crate::waiting::CLOSE_WITHIN) to end its session; a
/// failure is logged.
pub async fn close(election: &dyn Election) {
    crate::waiting::warn_close(crate::waiting::bounded_close(election.close()).await);
}

/// Campaigns, runs the command while leading, resigns, and returns the exit status to use.
pub async fn elect(cli: &Cli, args: &ElectArgs) -> ExitCode {
    let mut signals = Signals::install();
    if let Err(message) = check_name(&args.name) {
        return fail(&message, exit::BAD_INPUT);
    }
    let value = args.value.clone().unwrap_or_else(default_value);
    if let Err(message) = check_value(&value) {
        return exit::bad_input(&message);
    }
    if let Err(code) = crate::command_check::before_waiting(&args.command, "campaigning") {
        return code;
    }
    let mut stops = crate::signals::Stops::install();
    let wait = SeatWait {
        cli,
        args,
        value: &value,
    };
    let (election, leadership) = match crate::waiting::connect_and_wait(&wait, &mut signals, &mut stops).await {
        Ok(v) => v,
        Err(code) => return code,
    };
    let term = leadership.term();
    tracing::info!(name = %args.name, %term, "elected");
    let run_args = RunArgs {
        key: args.name.clone(),
        ttl: args.ttl,
        wait: args.wait,
        no_wait: args.no_wait,
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
    let code = run::supervise_with(
        &run_args,
        leadership.into_lease(),
        &mut signals,
        &env,
        run::Holding::Election(&args.name),
    )
    .await;
    close(&*election).await;
    code
}

/// `elect`'s wait: a seat's leadership (see [`crate::waiting`]).
struct SeatWait<'a> {
    cli: &'a Cli,
    args: &'a ElectArgs,
    value: &'a str,
}

impl crate::waiting::Wait for SeatWait<'_> {
    type Backend = std::sync::Arc<dyn Election>;
    type Won = fencelock::election::Leadership;

    fn what(&self) -> String {
        format!("election `{}`", self.args.name)
    }

    async fn connect(&self) -> Result<(Self::Backend, fencelock::LockOptions), LockError> {
        connect_campaigning(self.cli, self.args.ttl).await
    }

    fn options(&self, defaults: fencelock::LockOptions) -> (fencelock::LockOptions, bool) {
        let a = self.args;
        let crate::lock_opts::Chosen { mut opts, try_once } =
            crate::lock_opts::choose(defaults, a.ttl, a.wait, a.no_wait);
        if try_once {
            opts = opts.with_wait(NO_WAIT_CAMPAIGN);
        }
        (opts, try_once)
    }

    fn starting(&self, election: &Self::Backend, opts: &fencelock::LockOptions, _try_once: bool) {
        tracing::info!(name = %self.args.name, wait = ?opts.wait(), on = %election.describe(), "campaigning");
    }

    async fn wait(
        &self,
        election: &Self::Backend,
        opts: &fencelock::LockOptions,
        try_once: bool,
    ) -> Result<Self::Won, LockError> {
        campaign(&**election, &self.args.name, self.value.as_bytes(), opts, try_once).await
    }

    async fn close(&self, election: &Self::Backend) -> Result<(), LockError> {
        crate::waiting::bounded_close(election.close()).await
    }

    fn taken(&self, election: &Self::Backend, how: &str) -> ExitCode {
        fail(
            &format!(
                "election `{}` is led by someone else; {how} (on {})",
                self.args.name,
                election.describe()
            ),
            self.args.conflict_exit_code,
        )
    }

    fn interrupted(&self) -> String {
        format!("campaigning for `{}`; not elected", self.args.name)
    }

    fn not_within(&self, asked: Duration, _waited: Duration) -> String {
        format!("not elected within {}", humantime::format_duration(asked))
    }
}

/// How long `elect --no-wait` (or a zero wait) campaigns for a seat it found empty: one
/// round trip's worth, so that a free seat is won but a led one is not waited for.
const NO_WAIT_CAMPAIGN: Duration = Duration::from_secs(2);

/// Campaigns; with `try_once`, gives up at once when the seat is led (a campaign for an
/// empty seat is bounded by [`NO_WAIT_CAMPAIGN`]).
async fn campaign(
    election: &dyn Election,
    name: &str,
    value: &[u8],
    opts: &fencelock::LockOptions,
    try_once: bool,
) -> Result<fencelock::election::Leadership, LockError> {
    if try_once && election.leader(name).await?.is_some() {
        return Err(LockError::Timeout {
            key: name.to_owned(),
            waited: Duration::ZERO,
        });
    }
    election.campaign(name, value, opts).await
}

/// Checks an election's name (the rules of a lock key), naming it as such.
pub fn check_name(name: &str) -> Result<(), String> {
    fencelock::election::validate_name(name).map_err(|e| exit::one_line(&e))
}

/// Checks a value to publish: one line of text for `leader --watch` (no newline or other
/// control character), not empty, within the backend's size bound. The message is bare:
/// the caller prints it as an invalid input ([`exit::bad_input`]).
fn check_value(value: &str) -> Result<(), String> {
    if value.is_empty() {
        return Err("--value is empty; give the text to publish (default: HOST:PID)".into());
    }
    if value.trim().is_empty() {
        return Err(
            "--value is only whitespace: `leader` prints `TERM VALUE`, which could not be told from an empty value; give visible text".into(),
        );
    }
    if let Some(c) = value.chars().find(|c| c.is_control()) {
        return Err(format!(
            "--value contains the control character {c:?}; `leader --watch` prints one line per change, so a value is one line of text"
        ));
    }
    if let Some(c) = value.chars().find(|c| matches!(c, '\u{2028}' | '\u{2029}')) {
        return Err(format!(
            "--value contains the line separator {c:?}; `leader --watch` prints one line per change, so a value is one line of text"
        ));
    }
    fencelock::election::validate_value(value.as_bytes()).map_err(|e| match e {
        // The caller adds "invalid input: " to every message: not twice.
        fencelock::LockError::InvalidInput(message) => message,
        e => exit::one_line(&e),
    })
}

/// The value published when --value is not given: `HOST:PID`.
fn default_value() -> String {
    // Linux's view of uname's nodename; "localhost" elsewhere.
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "localhost".to_owned());
    format!("{host}:{}", std::process::id())
}
