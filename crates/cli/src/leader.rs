//! `fencelock leader NAME [--watch]`: who leads the election NAME, with its term.
//!
//! Prints `TERM VALUE` for the leader (`TERM` alone when the value is empty). Without
//! --watch: one line and status 0, or `no leader` on stderr and status 1 when the seat is
//! empty. With --watch: one line per change (`none` when the seat empties), in order,
//! never a term going back where terms only grow (see [`Printer`]), until SIGINT/SIGTERM (status 0) or the backend ends the
//! observation (status 69). While the backend cannot be read, --watch prints `unknown` once
//! (the last line is no longer to be trusted) and warns on stderr at that change and then
//! every [`WARN_EVERY`]; when it answers again, the current state follows on a new line —
//! read after anything the observer published meanwhile, so that `none` after `unknown`
//! means a seat read empty, never a stale reading (see [`newest`]).

use std::future::Future;
use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use fencelock::election::{Election, LeaderInfo, Observation, Observer};
use fencelock::{LockError, TokenOrder};

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
        Some(l) => format!("{} {}", l.term, one_line_value(&l.value_lossy())),
        None => "none".to_owned(),
    }
}

/// The value as one line: control characters and the line separators U+2028/U+2029 in
/// Rust's escapes (`\n`, `\u{2028}`). `elect --value` refuses them, but a value published
/// through the library may hold them, and printed raw a newline would hand the reader a
/// second, forged `TERM VALUE` line. Other text, backslashes included, is printed as it is.
fn one_line_value(value: &str) -> std::borrow::Cow<'_, str> {
    let escaped = |c: char| c.is_control() || matches!(c, '\u{2028}' | '\u{2029}');
    if !value.chars().any(escaped) {
        return value.into();
    }
    value
        .chars()
        .map(|c| {
            if escaped(c) {
                c.escape_debug().to_string()
            } else {
                c.to_string()
            }
        })
        .collect::<String>()
        .into()
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
        // The one-shot query found fencelock's tables, or the election's, missing where
        // it looked (and created nothing): no election was ever held there, so the seat
        // is empty — "no leader", status 1, as etcd and ZooKeeper answer for an election
        // never held (docs/election.md: an election never used needs nothing created).
        // What is missing, and where, follows on the same line: a mistyped `schema=`
        // stays visible without creating a stray schema.
        Err(e) => {
            return match e.nothing_created().filter(|_| !args.watch) {
                Some(n) => fail(
                    &format!(
                        "no leader for election `{}`: no election was ever held there ({}; check `schema=` if you meant another)",
                        args.name,
                        crate::backends_cmd::nothing_there(cli, n)
                    ),
                    NO_LEADER,
                ),
                None => exit::fail_with(&e),
            }
        }
    };
    if !args.watch {
        let code = match election.leader(&args.name).await {
            // Never `println!`: it panics on a closed stdout (`leader NAME | true`, exit
            // 101) and skips the close below.
            Ok(Some(l)) => match Printer::new(std::io::stdout(), false).print(&line(&Some(l))) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => ExitCode::from(exit::stdout_status(&e)),
            },
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
    let observer = match election.observe(name).await {
        Ok(o) => o,
        Err(e) => return exit::fail_with(&e),
    };
    // Terms that may go back (best-effort tokens) are printed as they come, as the observer
    // reports them; elsewhere the printer holds every line to the terms printed before.
    let terms_grow = election.capabilities().terms == TokenOrder::StrictlyMonotonic;
    let mut out = Printer::new(std::io::stdout(), terms_grow);
    follow(
        observer,
        || election.leader(name),
        name,
        CHECK_EVERY,
        &mut out,
        signals.next(),
    )
    .await
}

/// [`watch`]'s loop, on `out`: prints the `observer`'s changes, and reads the leader with
/// `read` every `check_every` (each read bounded by as long) to tell whether the backend
/// still answers, until `stop` resolves (status 0), the reader of `out` went away (0) or the
/// backend ended the observation (69).
async fn follow<W, R, Fut>(
    mut observer: Observer,
    read: R,
    name: &str,
    check_every: Duration,
    out: &mut Printer<W>,
    stop: impl Future,
) -> ExitCode
where
    W: Write,
    R: Fn() -> Fut,
    Fut: Future<Output = Result<Option<LeaderInfo>, LockError>>,
{
    tokio::pin!(stop);
    let mut check = tokio::time::interval(check_every);
    check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Some(when we last warned) while the backend cannot be read.
    let mut down_since_warned: Option<tokio::time::Instant> = None;
    loop {
        tokio::select! {
            next = observer.changed() => match next {
                Some(state) if down_since_warned.is_none() => {
                    if out.print_state(&state).is_err() {
                        return ExitCode::SUCCESS; // the reader went away
                    }
                }
                Some(_) => {} // the check below prints the state once the backend answers
                None => return fail("the backend ended the observation", exit::UNAVAILABLE),
            },
            _ = check.tick() => {
                let answer = tokio::time::timeout(check_every, read()).await;
                let printed = match (answer, down_since_warned) {
                    (Ok(Ok(state)), Some(_)) => {
                        crate::exit::errln!("fencelock: election `{name}` can be read again");
                        down_since_warned = None;
                        match newest(&mut observer, state, &read, check_every).await {
                            Some(state) => out.print_state(&state),
                            None => return fail("the backend ended the observation", exit::UNAVAILABLE),
                        }
                    }
                    (Ok(Ok(_)), None) => Ok(()),
                    (Ok(Err(e)), warned) => unreadable(out, &mut down_since_warned, warned, name, &exit::one_line(&e)),
                    (Err(_), warned) => unreadable(out, &mut down_since_warned, warned, name, &format!("no answer within {check_every:?}")),
                };
                if printed.is_err() {
                    return ExitCode::SUCCESS;
                }
            }
            _ = &mut stop => return ExitCode::SUCCESS,
        }
    }
}

/// How many times [`newest`] reads again, at most, while the observer keeps publishing.
const RECONFIRM: usize = 3;

/// The state to print when the backend answers again after `unknown`: `read` (just read),
/// unless the observer published something meanwhile — then a read made after that, up to
/// [`RECONFIRM`] times. `None` when the observer ended.
///
/// Why: a state the observer published while `read` was under way may be older than it
/// or newer, there is no telling which. Printed after it, an older one went back: the
/// printer's floor drops a lower term, but an empty seat has no term, so a stale `none`
/// read by the observer in the outage came out between two readings of the same leader
/// (`6 b`, `unknown`, `6 b`, `none`, `6 b`; a review). Dropped, a newer one would be lost
/// until the next change. A read started after it is newer than both: `none` is then
/// printed only when the seat was read empty after everything the observer said.
/// States the observer published before `read` started are older than it: taken and
/// dropped here too.
///
/// # Cancel safety
/// Cancel safe: the observer's `changed` is, and the reads only read.
async fn newest<R, Fut>(
    observer: &mut Observer,
    mut state: Option<LeaderInfo>,
    read: &R,
    check_every: Duration,
) -> Option<Option<LeaderInfo>>
where
    R: Fn() -> Fut,
    Fut: Future<Output = Result<Option<LeaderInfo>, LockError>>,
{
    for _ in 0..RECONFIRM {
        if !take_published(observer).await? {
            break;
        }
        match tokio::time::timeout(check_every, read()).await {
            Ok(Ok(fresh)) => state = fresh,
            // Unreadable again: keep what was read; the next check tells.
            _ => break,
        }
    }
    Some(state)
}

/// Takes, without waiting, every state the observer has published and not yet given;
/// `Some(true)` when there was any, `None` when the observer ended.
///
/// # Cancel safety
/// Cancel safe, as the observer's `changed`.
async fn take_published(observer: &mut Observer) -> Option<bool> {
    let mut any = false;
    // Bounded: each turn takes the newest state, so a second turn finds nothing new
    // unless the observer published again in between. A zero timeout polls `changed`
    // once (tokio polls the future before the timer): no wait.
    for _ in 0..16 {
        match tokio::time::timeout(Duration::ZERO, observer.changed()).await {
            Ok(Some(_)) => any = true,
            Ok(None) => return None,
            Err(_) => break,
        }
    }
    Some(any)
}

/// The backend could not be read: prints [`UNKNOWN`] at the change, and warns then and
/// every [`WARN_EVERY`].
fn unreadable<W: Write>(
    out: &mut Printer<W>,
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

/// Prints lines to `W` (stdout), flushing each, never the same line twice in a row, and —
/// when terms only grow — never a leader whose term is below one printed before.
///
/// The --watch loop prints from two sources: the observer, which never goes back, and the
/// leader read when the backend answers again after `unknown`, which is newer than what the
/// observer still holds. Without the floor, that older state followed the fresh read
/// (`unknown`, `6 b`, `5 a`, `6 b`). The floor follows the observer's rule: a leader with a
/// value is held to the terms of leaders printed with a value; one without (a seat held
/// without its record, whose term may be the backend's guess) to every term printed — so
/// the holder's exact term still replaces a guess above it. `none` and `unknown` are always
/// printed and lower no floor.
struct Printer<W> {
    out: W,
    last: Option<String>,
    /// Terms only grow on this backend: hold leaders to the floors below.
    terms_grow: bool,
    /// The highest term printed with a value.
    floor_valued: Option<fencelock::FencingToken>,
    /// The highest term printed.
    floor_any: Option<fencelock::FencingToken>,
}

impl<W: Write> Printer<W> {
    fn new(out: W, terms_grow: bool) -> Self {
        Printer {
            out,
            last: None,
            terms_grow,
            floor_valued: None,
            floor_any: None,
        }
    }

    /// Prints the line of `state` unless it would go back (see the type's docs).
    fn print_state(&mut self, state: &Option<LeaderInfo>) -> std::io::Result<()> {
        if let Some(l) = state {
            let floor = if l.value.is_empty() {
                self.floor_any
            } else {
                self.floor_valued
            };
            if self.terms_grow && floor.is_some_and(|f| l.term < f) {
                return Ok(());
            }
        }
        self.print(&line(state))?;
        if let Some(l) = state {
            self.floor_any = self.floor_any.max(Some(l.term));
            if !l.value.is_empty() {
                self.floor_valued = self.floor_valued.max(Some(l.term));
            }
        }
        Ok(())
    }

    /// Prints `text` as a line unless it is the last line printed.
    ///
    /// # Errors
    /// The writer's: a closed pipe is [`std::io::ErrorKind::BrokenPipe`] (never a panic).
    fn print(&mut self, text: &str) -> std::io::Result<()> {
        if self.last.as_deref() == Some(text) {
            return Ok(());
        }
        writeln!(self.out, "{text}")?;
        self.out.flush()?;
        self.last = Some(text.to_owned());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail by panicking

    use std::sync::atomic::{AtomicUsize, Ordering};

    use fencelock::FencingToken;
    use tokio::sync::{watch, Notify};

    use super::*;

    /// What [`follow`] prints, checking every 20 ms, over an observer fed by `rx` and the
    /// reads `read`, until `done` is notified (bounded: 10 s).
    async fn followed<R, Fut>(rx: watch::Receiver<Option<LeaderInfo>>, read: R, done: &Notify) -> String
    where
        R: Fn() -> Fut,
        Fut: Future<Output = Result<Option<LeaderInfo>, LockError>>,
    {
        let mut out = Printer::new(Vec::new(), true);
        let run = follow(
            Observer::new(rx, None),
            read,
            "job",
            Duration::from_millis(20),
            &mut out,
            done.notified(),
        );
        tokio::time::timeout(Duration::from_secs(10), run)
            .await
            .expect("the loop did not stop");
        String::from_utf8(out.out).unwrap()
    }

    fn leader(term: u64, value: &str) -> Option<LeaderInfo> {
        Some(LeaderInfo {
            value: value.as_bytes().to_vec(),
            term: FencingToken::new(term),
        })
    }

    /// After an outage, the check's fresh read (`6 b`) was printed, then the observer's
    /// older state still pending (`5 a`), then `6 b` again: `leader --watch` went back on a
    /// backend whose terms only grow (a review). The backend here: the seat empty, then
    /// unreadable (`unknown`), then led by `6 b` — the observer hearing of `5 a` only while
    /// that read was answered.
    #[tokio::test]
    async fn watch_never_prints_a_term_below_one_printed_after_an_outage() {
        let (tx, rx) = watch::channel(None);
        let calls = AtomicUsize::new(0);
        let done = Notify::new();
        let read = || {
            let n = calls.fetch_add(1, Ordering::SeqCst);
            let (tx, done) = (&tx, &done);
            async move {
                match n {
                    0 => Ok(None),
                    1 => Err(LockError::invalid_input("the server is down")),
                    2 => {
                        tx.send_replace(leader(5, "a"));
                        Ok(leader(6, "b"))
                    }
                    3 => {
                        tx.send_replace(leader(6, "b"));
                        Ok(leader(6, "b"))
                    }
                    _ => {
                        done.notify_one();
                        Ok(leader(6, "b"))
                    }
                }
            }
        };
        let text = followed(rx, read, &done).await;
        assert!(text.contains("unknown\n6 b\n"), "{text:?}");
        let terms: Vec<u64> = text.lines().filter_map(|l| l.split(' ').next()?.parse().ok()).collect();
        assert!(terms.windows(2).all(|w| w[0] <= w[1]), "a term went back: {text:?}");
    }

    /// After an outage, `none` came out between two readings of the same leader: the
    /// observer's stale empty reading, published while the check's read (`6 b`) was under
    /// way, was printed after it (`6 b`, `unknown`, `6 b`, `none`, `6 b`; a review). The
    /// printer's floor holds terms, and an empty seat has none. Now a read made after the
    /// observer's state decides what is printed: `none` only for a seat read empty.
    #[tokio::test]
    async fn watch_prints_no_stale_none_between_readings_of_one_leader_after_an_outage() {
        let (tx, rx) = watch::channel(leader(6, "b"));
        let calls = AtomicUsize::new(0);
        let done = Notify::new();
        let read = || {
            let n = calls.fetch_add(1, Ordering::SeqCst);
            let (tx, done) = (&tx, &done);
            async move {
                match n {
                    0 => Err(LockError::invalid_input("the server is down")),
                    // The observer read the seat empty a moment before the outage ended,
                    // and publishes it while this read, which finds `6 b`, is under way.
                    1 => {
                        tx.send_replace(None);
                        Ok(leader(6, "b"))
                    }
                    // Its next reading: `6 b` again.
                    2 => {
                        tx.send_replace(leader(6, "b"));
                        Ok(leader(6, "b"))
                    }
                    3 | 4 => Ok(leader(6, "b")),
                    _ => {
                        done.notify_one();
                        Ok(leader(6, "b"))
                    }
                }
            }
        };
        let text = followed(rx, read, &done).await;
        assert_eq!(text, "6 b\nunknown\n6 b\n", "{text:?}");
    }

    /// The seat read empty after the observer's state is printed as `none`.
    #[tokio::test]
    async fn watch_prints_none_for_a_seat_read_empty_after_an_outage() {
        let (tx, rx) = watch::channel(leader(6, "b"));
        let calls = AtomicUsize::new(0);
        let done = Notify::new();
        let read = || {
            let n = calls.fetch_add(1, Ordering::SeqCst);
            let (tx, done) = (&tx, &done);
            async move {
                match n {
                    0 => Err(LockError::invalid_input("the server is down")),
                    1 => {
                        tx.send_replace(None);
                        Ok(leader(6, "b"))
                    }
                    2 | 3 => Ok(None),
                    _ => {
                        done.notify_one();
                        Ok(None)
                    }
                }
            }
        };
        let text = followed(rx, read, &done).await;
        assert_eq!(text, "6 b\nunknown\nnone\n", "{text:?}");
    }

    /// The holder's exact term replaces a guessed one above it (a line with no value), as
    /// the observer's does; where terms may go back, every state is printed.
    #[test]
    fn a_guess_may_be_replaced_by_a_lower_exact_term_and_best_effort_terms_go_back() {
        let mut out = Printer::new(Vec::new(), true);
        for state in [
            leader(3, "a"),
            leader(8, ""),
            leader(7, "b"),
            leader(2, ""),
            None,
            leader(6, "c"),
        ] {
            out.print_state(&state).unwrap();
        }
        assert_eq!(String::from_utf8(out.out).unwrap(), "3 a\n8\n7 b\nnone\n");
        let mut out = Printer::new(Vec::new(), false);
        for state in [leader(7, "a"), leader(1, "b")] {
            out.print_state(&state).unwrap();
        }
        assert_eq!(String::from_utf8(out.out).unwrap(), "7 a\n1 b\n");
    }
}
