//! `fencelock leader NAME [--watch]`: who leads the election NAME, with its term.
//!
//! Prints `TERM VALUE` for the leader. Without --watch: one line and status 0, or
//! `no leader` on stderr and status 1 when the seat is empty. With --watch: one line per
//! change (`none` when the seat empties), in order, never a term going back, until
//! SIGINT/SIGTERM (status 0) or the backend ends the observation (status 69).

use std::io::Write;
use std::process::ExitCode;

use fencelock::election::LeaderInfo;

use crate::args::{Cli, LeaderArgs};
use crate::elect::{close, connect};
use crate::exit::{self, fail};
use crate::run::Signals;

/// Status when `leader` finds the seat empty.
pub const NO_LEADER: u8 = 1;

fn line(state: &Option<LeaderInfo>) -> String {
    match state {
        Some(l) => format!("{} {}", l.term, l.value_lossy()),
        None => "none".to_owned(),
    }
}

/// Prints the leader, or follows it with --watch.
pub async fn leader(cli: &Cli, args: &LeaderArgs) -> ExitCode {
    let mut signals = Signals::install();
    let (election, _) = match connect(cli, "leader").await {
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
    let mut observer = match election.observe(&args.name).await {
        Ok(o) => o,
        Err(e) => return exit::fail_with(&e),
    };
    let mut stdout = std::io::stdout();
    let code = loop {
        tokio::select! {
            next = observer.changed() => match next {
                Some(state) => {
                    if writeln!(stdout, "{}", line(&state)).and_then(|()| stdout.flush()).is_err() {
                        break ExitCode::SUCCESS; // the reader went away
                    }
                }
                None => break fail("the backend ended the observation", exit::UNAVAILABLE),
            },
            _ = signals.next() => break ExitCode::SUCCESS,
        }
    };
    drop(observer);
    close(&*election).await;
    code
}
