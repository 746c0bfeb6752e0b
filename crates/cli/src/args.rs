//! Command-line arguments.

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};

/// Run commands under a distributed lock with a fencing token.
///
/// Without --backend, --config or FENCELOCK_BACKEND, locks live in files under
/// $TMPDIR/fencelock-UID (/tmp/fencelock-UID without TMPDIR; file backend): the user's
/// processes on this host exclude each other, from cron or a shell alike, no server needed.
#[derive(Debug, Parser)]
#[command(name = "fencelock", version, about, long_about = None, after_help = EXAMPLES)]
pub struct Cli {
    /// Backend URL: file:///DIR, memory://, redis://HOST:PORT, redlock://H1:P1,H2:P2,...,
    /// etcd://HOST:PORT, zk://HOST:PORT, postgres://USER@HOST:PORT/DB (or postgresql://;
    /// see `fencelock backends`)
    ///
    /// Only `bench` takes several (each measured in turn); the other commands take one.
    ///
    /// A --backend flag or a --config file wins over FENCELOCK_BACKEND in the environment;
    /// giving both --backend and --config is an error.
    #[arg(
        long,
        global = true,
        value_name = "URL",
        action = clap::ArgAction::Append
    )]
    pub backend: Vec<String>,

    /// A TOML or JSON file with `backend = "URL"`, an optional `require` and `[defaults]`
    /// (JSON when the name ends in .json, TOML in .toml; otherwise JSON when the content
    /// starts with `{`)
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Log what the lock does to stderr (-v: info, -vv: debug; or set RUST_LOG)
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,

    #[command(subcommand)]
    pub command: Command,
}

const EXAMPLES: &str = "\
Examples:
  fencelock run nightly-backup -- ./backup.sh
  fencelock run deploy --wait 2m --ttl 30s -- make deploy
  fencelock --backend redis://127.0.0.1:6379 run report -- ./report.sh
  fencelock backends
  fencelock demo

The command of `run` gets FENCELOCK_KEY, FENCELOCK_TOKEN (the fencing token: send it with
every write) and FENCELOCK_GRANT (the grant's unique id) in its environment.

Exit status of `run` (docs/cli.md): the command's own; 75 not acquired within --wait, or
lost before the command could start (see --conflict-exit-code); 76 lease lost while the command ran (see --lost-exit-code); 64 bad
input; 69 backend unavailable; 70 internal failure; 78 bad configuration; 126 command not
executable; 127 command not found; 128+N signal N while waiting for the lock.";

/// What to do.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Acquire KEY, run CMD in a process group of its own with FENCELOCK_TOKEN,
    /// FENCELOCK_GRANT and FENCELOCK_KEY set, renew the lease while it runs, release it
    /// after, and exit with CMD's status
    Run(RunArgs),
    /// Campaign to lead election NAME and run CMD only while leading (as `run` does, with
    /// FENCELOCK_TERM set); resign when CMD exits (docs/election.md)
    Elect(ElectArgs),
    /// Print the leader of election NAME and its term (`TERM VALUE`); --watch: one line
    /// per change
    Leader(LeaderArgs),
    /// List the backends compiled into this build, with what each guarantees
    Backends,
    /// Show mutual exclusion: start several `fencelock run` processes on one key
    Demo(DemoArgs),
    /// Run safety scenarios on real servers it starts itself (or on --backend), print a
    /// timeline of each, and optionally write the report (docs/safety.md)
    Lab(LabArgs),
    /// Measure what a lock costs per backend — against the raw minimum of its client
    /// crate and against peer crates, uncontended, under contention and at scale — on
    /// servers it starts itself (or on each --backend), and print or write the report.
    /// On a --backend server it leaves the token counters of its `bench-*` keys behind (as
    /// every lock does: a counter is never deleted); nothing fences with them, so they may
    /// be deleted by hand
    #[cfg(feature = "bench")]
    Bench(BenchArgs),
    /// (internal) the work a demo process does under the lock
    #[command(hide = true, name = "__demo-work")]
    DemoWork,
    /// (internal) the supervisor between `run` and its command (see guard.rs)
    #[command(hide = true, name = "__guard")]
    Guard(GuardArgs),
}

/// `fencelock __guard FD -- CMD…` (internal).
#[derive(Debug, clap::Args)]
pub struct GuardArgs {
    /// The inherited read end of the control pipe from `run`
    pub control_fd: i32,

    /// `run`'s `--kill-after`, in ms: what the command left running in its group gets
    /// between SIGTERM and SIGKILL once the command exited
    #[arg(long, default_value_t = 10_000)]
    pub kill_after_ms: u64,

    /// The inherited write end of `run`'s report pipe: the guard writes `started` on it
    /// once it has started the command, so that `run` tells the command's status from the
    /// guard's own (a command that never started)
    #[arg(long, value_name = "FD")]
    pub report_fd: Option<i32>,

    /// The lease is not renewed (`auto_renew = false`): its deadline is the TTL's end, and
    /// the guard's message says so rather than suggest a renewal went missing
    #[arg(long)]
    pub unrenewed: bool,

    /// The command and its arguments, passed on as given: any bytes, UTF-8 or not (as
    /// flock(1) does)
    #[arg(last = true, required = true, value_name = "CMD")]
    pub command: Vec<OsString>,
}

/// `fencelock run`.
#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// The lock's name (1 to 256 bytes, no control characters)
    #[arg(value_name = "KEY")]
    pub key: String,

    /// How long the lease lives without renewal (e.g. 30s, 1.5s, 500ms; default 30s, from
    /// 100ms to 24h, and well above the backend's round trip); it is renewed every third of it
    /// while CMD runs, so a crashed fencelock frees the lock after at most this long. On
    /// etcd and zk the session frees it: --ttl sets the URL's session_ttl (whole seconds,
    /// rounded up) / session_timeout unless the URL gives one, and a session below the
    /// server's minimum (etcd 2s, zk 2 ticks, by default) is refused with exit 78; zk ends
    /// a session at its next tick after the timeout, so there the lock is freed up to one
    /// tickTime later (2s on a stock server); without --ttl the session's default is 10s
    #[arg(long, value_name = "DURATION", allow_hyphen_values = true, value_parser = parse_command_ttl)]
    pub ttl: Option<Duration>,

    /// How long to wait for the lock before giving up (e.g. 500ms, 30s, 2m; default 30s, at
    /// most 24h); 0 means do not wait: try once and fail at once if the lock is held, like
    /// `flock -w 0`
    #[arg(long, value_name = "DURATION", allow_hyphen_values = true, value_parser = parse_wait)]
    pub wait: Option<Duration>,

    /// Do not wait at all: fail at once if the lock is held (the same as --wait 0)
    #[arg(long, conflicts_with = "wait")]
    pub no_wait: bool,

    /// After a lost lease or a forwarded SIGTERM, how long CMD's process group gets between
    /// SIGTERM and SIGKILL (the group is killed at once when the lease's validity ends)
    #[arg(long, value_name = "DURATION", allow_hyphen_values = true, value_parser = parse_duration, default_value = "10s")]
    pub kill_after: Duration,

    /// The exit status when the lock is not acquired (75 is EX_TEMPFAIL), so that a
    /// command's own 75 can be told apart (like `flock -E`); 0 to 255
    #[arg(long, value_name = "N", default_value_t = crate::exit::NOT_ACQUIRED, allow_hyphen_values = true, value_parser = parse_exit_code)]
    pub conflict_exit_code: u8,

    /// The exit status when the lease is lost while the command runs; 0 to 255
    #[arg(long, value_name = "N", default_value_t = crate::exit::LEASE_LOST, allow_hyphen_values = true, value_parser = parse_exit_code)]
    pub lost_exit_code: u8,

    /// Serve the lock's metrics for Prometheus at http://ADDR/metrics while running: an IP
    /// address and port, not a host name (e.g. 127.0.0.1:9898; port 0 picks a free one,
    /// printed on stderr; see docs/metrics.md)
    #[arg(long, value_name = "ADDR", value_parser = crate::metrics::parse_addr)]
    pub metrics_addr: Option<std::net::SocketAddr>,

    /// The command and its arguments, passed on as given: any bytes, UTF-8 or not (as
    /// flock(1) does)
    #[arg(last = true, required = true, value_name = "CMD")]
    pub command: Vec<OsString>,
}

/// `fencelock elect`.
#[derive(Debug, clap::Args)]
pub struct ElectArgs {
    /// The election's name (1 to 247 bytes, no control characters: its seat is the lock
    /// key `election.NAME`, at most 256 bytes)
    #[arg(value_name = "NAME")]
    pub name: String,

    /// What to publish as this candidate's value (e.g. its address): one line of text, 1 to
    /// 4096 bytes; default HOST:PID
    #[arg(long, value_name = "V")]
    pub value: Option<String>,

    /// How long the seat's lease lives without renewal (e.g. 10s; default 30s); a hung
    /// leader blocks the seat for at most this long (on etcd and zk it sets the session's
    /// session_ttl / session_timeout, as for `run`)
    #[arg(long, value_name = "DURATION", allow_hyphen_values = true, value_parser = parse_command_ttl)]
    pub ttl: Option<Duration>,

    /// How long to campaign before giving up with status 75 (e.g. 30s, 1h; default 30s, at
    /// most 24h); 0 means do not wait: give up at once when the seat is led
    #[arg(long, value_name = "DURATION", allow_hyphen_values = true, value_parser = parse_wait)]
    pub wait: Option<Duration>,

    /// Do not wait: give up at once when the seat is led (the same as --wait 0)
    #[arg(long, conflicts_with = "wait")]
    pub no_wait: bool,

    /// As for `run`: SIGTERM → SIGKILL delay for CMD's group after a loss
    #[arg(long, value_name = "DURATION", allow_hyphen_values = true, value_parser = parse_duration, default_value = "10s")]
    pub kill_after: Duration,

    /// The exit status when not elected within --wait; 0 to 255
    #[arg(long, value_name = "N", default_value_t = crate::exit::NOT_ACQUIRED, allow_hyphen_values = true, value_parser = parse_exit_code)]
    pub conflict_exit_code: u8,

    /// The exit status when leadership is lost while CMD runs; 0 to 255
    #[arg(long, value_name = "N", default_value_t = crate::exit::LEASE_LOST, allow_hyphen_values = true, value_parser = parse_exit_code)]
    pub lost_exit_code: u8,

    /// The command and its arguments, passed on as given: any bytes, UTF-8 or not (as
    /// flock(1) does)
    #[arg(last = true, required = true, value_name = "CMD")]
    pub command: Vec<OsString>,
}

/// `fencelock leader`.
#[derive(Debug, clap::Args)]
pub struct LeaderArgs {
    /// The election's name
    pub name: String,

    /// Print one line per change of leader until interrupted (`unknown` while the backend
    /// cannot be read)
    #[arg(long)]
    pub watch: bool,
}

/// `fencelock demo`.
#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// How many processes contend for the lock (2 to 16)
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u8).range(2..=16))]
    pub processes: u8,
}

/// A duration as `humantime` reads it (`30s`, `1.5s`, `2m 30s`, `500ms`), from 1 ms to
/// 24 h inclusive — the library's own bounds for TTLs and waits, and a bound on
/// `--kill-after`, so no deadline arithmetic can overflow. A leading `-` is refused as
/// negative (the duration options take values that start with `-`, so that `--ttl -5s`
/// reaches this check instead of being read as an unknown flag `-5`).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    use fencelock::options::duration_text::human;
    let d = fencelock::options::duration_text::parse_duration(text)?;
    if d < fencelock::options::MIN_TTL {
        return Err(format!(
            "{} is below the minimum of {}",
            human(d),
            human(fencelock::options::MIN_TTL)
        ));
    }
    if d > fencelock::options::MAX_TTL {
        return Err(format!(
            "{} is above the maximum of {}",
            human(d),
            human(fencelock::options::MAX_TTL)
        ));
    }
    Ok(d)
}

/// A TTL for `run` and `elect`: a duration of at least [`MIN_COMMAND_TTL`](crate::lock_opts::MIN_COMMAND_TTL).
/// That minimum is checked before the library's 1 ms, so that `--ttl 0` or `--ttl 500us`
/// names the bound that applies here (100 ms), not one that a `--ttl 1ms` would then fail
/// again.
fn parse_command_ttl(text: &str) -> Result<Duration, String> {
    let d = fencelock::options::duration_text::parse_duration(text)?;
    crate::lock_opts::check_command_ttl(d)?;
    parse_duration(text) // the maximum
}

/// An exit status, 0 to 255. Its options take values that start with `-`, so that `-1`
/// reaches this check instead of being read as an unknown flag.
fn parse_exit_code(text: &str) -> Result<u8, String> {
    text.trim()
        .parse::<u8>()
        .map_err(|_| "not an exit status: give a whole number from 0 to 255".to_owned())
}

/// A wait: a duration of at least 1 ms, or `0` for not waiting.
fn parse_wait(text: &str) -> Result<Duration, String> {
    match humantime::parse_duration(text.trim()) {
        Ok(d) if d.is_zero() => Ok(d),
        _ => parse_duration(text),
    }
}

/// `fencelock lab`.
#[derive(Debug, clap::Args)]
pub struct LabArgs {
    /// The scenario (default: all): paused-holder, paused-leader, restart-while-held,
    /// fault-during-contention, client-partition, failover-before-replication, clock-jump
    pub scenario: Option<String>,

    /// Write the scenario × backend table, as Markdown, to this file
    #[arg(long, value_name = "FILE")]
    pub report: Option<std::path::PathBuf>,

    /// Print only the table, not the timelines
    #[arg(long)]
    pub quiet: bool,
}

/// `fencelock bench`.
#[cfg(feature = "bench")]
#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// Print the report as JSON instead of Markdown
    #[arg(long)]
    pub json: bool,

    /// A run of seconds instead of minutes (200 cycles, 8 clients only, 100 held locks):
    /// a first look, its ratios move by ±15 % from run to run
    #[arg(long)]
    pub quick: bool,

    /// Only these backends, when starting servers: redis, redlock, etcd, zookeeper, postgres
    #[arg(long, value_delimiter = ',', value_name = "NAMES")]
    pub only: Vec<String>,

    /// Leave out the peer crates (rslock, distributed-lock)
    #[arg(long)]
    pub no_peers: bool,

    /// Repeat the whole measurement N times (on the same servers) and report each figure
    /// as the median of the runs with their min–max
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=20))]
    pub runs: u16,

    /// Failovers per backend (leader killed → successor elected, 1 s TTL/session bound);
    /// default 50 (5 with --quick); 0 leaves the row out
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(0..=1000))]
    pub failovers: Option<u16>,

    /// Measure only the failover row (with --only to pick backends)
    #[arg(long)]
    pub failover_only: bool,

    /// Write the Markdown report to FILE and its charts to a folder beside it
    /// (docs/benchmarks.md → docs/benchmarks/*.svg)
    #[arg(long, value_name = "FILE")]
    pub write: Option<std::path::PathBuf>,
}
