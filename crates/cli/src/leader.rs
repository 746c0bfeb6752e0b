//! `fencelock leader NAME [--watch]`: who leads the election NAME, with its term.
//!
//! Prints `TERM VALUE` for the leader (`TERM` alone when the value is empty). Without
//! --watch: one line and status 0, or `no leader` on stderr and status 1 when the seat is
//! empty. With --watch: one line per change (`none` when the seat empties), in order,
//! never a term going back, until SIGINT/SIGTERM (status 0) or the backend ends the
//! observation (status 69). While the backend cannot be read, --watch prints `unknown` once
//! (the last line is no longer to be trusted) and warns on stderr at that change and then
//! every [`WARN_EVERY`]; when it answers again, the current state follows on a new line.

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use fencelock::election::{Election, LeaderInfo, Observation};

use crate::args::{Cli, LeaderArgs};
use crate::elect::{check_name, close, connect};
use crate::exit::{self, fail};
use crate::run::Signals;

/// Status when `leader` finds the seat empty.
pub const NO_LEADER: u8 = 1;

/// The line --watch prints while the backend cannot be read.
pub const UNKNOWN: &str = "unknown";

/// How often --watch checks that the backend still answers (each check bounded by as
/// long): the observers of some backends only log their failed reads.
const CHECK_EVERY: Duration = Duration::from_secs(1);

/// How often --watch repeats its warning while the backend stays unreadable.
const WARN_EVERY: Duration = Duration::from_secs(10);

fn line(state: &Option<LeaderInfo>) -> String {
    match state {
        Some(l) if l.value.is_empty() => l.term.to_string(),
        Some(l) => format!("{} {}", l.term, l.value_lossy()),
        None => "none".to_owned(),
    }
}

/// Prints the leader, or follows it with --watch.
pub async fn leader(cli: &Cli, args: &LeaderArgs) -> ExitCode {
    let mut signals = Signals::install();
    if let Err(message) = check_name(&args.name) {
        return fail(&message, exit::BAD_INPUT);
    }
    // The one-shot query only reads: a missing file:// directory is a wrong URL, not "no
    // leader". A watch waits for leaders to come, so it may start before the first `elect`
    // has created the directory.
    if !args.watch {
        if let Err(e) = crate::backend::config(cli).and_then(|c| crate::backend::refuse_missing_dir(&c)) {
            return exit::fail_with(&e);
        }
    }
    let connected = tokio::select! {
        // The one-shot query only reads: it creates no tables (a wrong `schema=` is a wrong
        // URL, not "no leader"); a watch may start before the first `elect`.
        c = async {
            if args.watch {
                connect(cli, "leader", None).await
            } else {
                crate::backends_cmd::connect_election_reading(cli, "leader").await
            }
        } => c,
        sig = signals.next() => {
            // A signal is how a watch ends (0); a one-shot query was interrupted.
            return if args.watch { ExitCode::SUCCESS } else { crate::waiting::interrupted_connecting(sig) };
        }
    };
    let (election, _) = match connected {
        Ok(v) => v,
        Err(e) => return exit::fail_with(&e),
    };
    if !args.watch {
        let code = match election.leader(&args.name).await {
            Ok(Some(l)) => {
                println!("{}", line(&Some(l)));
                ExitCode::SUCCESS
            }
            Ok(None) => fail(&format!("no leader for election `{}`", args.name), NO_LEADER),
            Err(e) => exit::fail_with(&e),
        };
        close(&*election).await;
        return code;
    }
    if election.capabilities().observe == Observation::Unavailable {
        close(&*election).await;
        return fail(
            &format!(
                "leader --watch is not available on {}: no node's view is authoritative; poll `fencelock leader` instead",
                election.capabilities().backend
            ),
            exit::CONFIG,
        );
    }
    let code = watch(&*election, &args.name, &mut signals).await;
    close(&*election).await;
    code
}

/// The --watch loop: the observer's changes, and a check every [`CHECK_EVERY`] that the
/// backend still answers.
async fn watch(election: &dyn Election, name: &str, signals: &mut Signals) -> ExitCode {
    let mut observer = match election.observe(name).await {
        Ok(o) => o,
        Err(e) => return exit::fail_with(&e),
    };
    let mut out = Printer::default();
    let mut check = tokio::time::interval(CHECK_EVERY);
    check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Some(when we last warned) while the backend cannot be read.
    let mut down_since_warned: Option<tokio::time::Instant> = None;
    loop {
        tokio::select! {
            next = observer.changed() => match next {
                Some(state) if down_since_warned.is_none() => {
                    if out.print(&line(&state)).is_err() {
                        return ExitCode::SUCCESS; // the reader went away
                    }
                }
                Some(_) => {} // the check below prints the state once the backend answers
                None => return fail("the backend ended the observation", exit::UNAVAILABLE),
            },
            _ = check.tick() => {
                let read = tokio::time::timeout(CHECK_EVERY, election.leader(name)).await;
                let printed = match (read, down_since_warned) {
                    (Ok(Ok(state)), Some(_)) => {
                        crate::exit::errln!("fencelock: election `{name}` can be read again");
                        down_since_warned = None;
                        out.print(&line(&state))
                    }
                    (Ok(Ok(_)), None) => Ok(()),
                    (Ok(Err(e)), warned) => unreadable(&mut out, &mut down_since_warned, warned, name, &exit::one_line(&e)),
                    (Err(_), warned) => unreadable(&mut out, &mut down_since_warned, warned, name, &format!("no answer within {CHECK_EVERY:?}")),
                };
                if printed.is_err() {
                    return ExitCode::SUCCESS;
                }
            }
            _ = signals.next() => return ExitCode::SUCCESS,
        }
    }
}

/// The backend could not be read: prints [`UNKNOWN`] at the change, and warns then and
/// every [`WARN_EVERY`].
fn unreadable(
    out: &mut Printer,
    down_since_warned: &mut Option<tokio::time::Instant>,
    warned: Option<tokio::time::Instant>,
    name: &str,
    why: &str,
) -> std::io::Result<()> {
    let now = tokio::time::Instant::now();
    match warned {
        None => {
            crate::exit::errln!(
                "fencelock: cannot read election `{name}` ({why}); printed `{UNKNOWN}` until it answers again"
            );
            *down_since_warned = Some(now);
            out.print(UNKNOWN)
        }
        Some(at) if now.duration_since(at) >= WARN_EVERY => {
            crate::exit::errln!("fencelock: election `{name}` still cannot be read ({why})");
            *down_since_warned = Some(now);
            Ok(())
        }
        Some(_) => Ok(()),
    }
}

/// Prints lines to stdout, flushing each, and never the same line twice in a row.
#[derive(Default)]
struct Printer {
    last: Option<String>,
}

impl Printer {
    fn print(&mut self, text: &str) -> std::io::Result<()> {
        if self.last.as_deref() == Some(text) {
            return Ok(());
        }
        let mut stdout = std::io::stdout();
        writeln!(stdout, "{text}")?;
        stdout.flush()?;
        self.last = Some(text.to_owned());
        Ok(())
    }
}
