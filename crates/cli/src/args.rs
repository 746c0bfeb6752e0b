//! Command-line arguments.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};

/// Run commands under a distributed lock with a fencing token.
///
/// Without --backend, FENCELOCK_BACKEND or --config, locks live in files under the system
/// temp directory (file backend): processes on this host exclude each other, no server
/// needed.
#[derive(Debug, Parser)]
#[command(name = "fencelock", version, about, long_about = None, after_help = EXAMPLES)]
pub struct Cli {
    /// Backend URL: file:///DIR, memory://, redis://HOST:PORT, redlock://H1:P1,H2:P2,...,
    /// etcd://HOST:PORT, zk://HOST:PORT (see `fencelock backends`)
    ///
    /// Only `bench` takes several (each measured in turn); the other commands take one.
    #[arg(
        long,
        global = true,
        env = "FENCELOCK_BACKEND",
        value_name = "URL",
        conflicts_with = "config",
        action = clap::ArgAction::Append
    )]
    pub backend: Vec<String>,

    /// A TOML or JSON file with `backend = "URL"`, an optional `require` and `[defaults]`
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

Exit status of `run`: the command's own; 75 when the lock was not acquired within --wait;
76 when the lease was lost while the command ran (it was sent SIGTERM); 64 bad input;
69 backend unavailable; 78 bad configuration; 127 command not found; 126 not executable.";

/// What to do.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Acquire KEY, run CMD with FENCELOCK_TOKEN and FENCELOCK_KEY set, renew the lease
    /// while it runs, release it after, and exit with CMD's status
    Run(RunArgs),
    /// List the backends compiled into this build, with what each guarantees
    Backends,
    /// Show mutual exclusion: start several `fencelock run` processes on one key
    Demo(DemoArgs),
    /// Run safety scenarios on real servers it starts itself (or on --backend), print a
    /// timeline of each, and optionally write the report (docs/safety.md)
    Lab(LabArgs),
    /// Measure what a lock costs per backend — against the raw minimum of its client
    /// crate and against peer crates, uncontended, under contention and at scale — on
    /// servers it starts itself (or on each --backend), and print or write the report
    #[cfg(feature = "bench")]
    Bench(BenchArgs),
    /// (internal) the work a demo process does under the lock
    #[command(hide = true, name = "__demo-work")]
    DemoWork,
}

/// `fencelock run`.
#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// The lock's name (1 to 256 bytes, no control characters)
    pub key: String,

    /// How long the lease lives without renewal; it is renewed every third of it while
    /// CMD runs, so a crashed fencelock frees the lock after at most this long
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub ttl: Option<Duration>,

    /// How long to wait for the lock before giving up with status 75 (e.g. 500ms, 30s, 2m)
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub wait: Option<Duration>,

    /// Do not wait at all: exit 75 at once if the lock is held
    #[arg(long, conflicts_with = "wait")]
    pub no_wait: bool,

    /// After a lost lease, how long CMD gets between SIGTERM and SIGKILL
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, default_value = "10s")]
    pub kill_after: Duration,

    /// The command and its arguments
    #[arg(last = true, required = true, value_name = "CMD")]
    pub command: Vec<String>,
}

/// `fencelock demo`.
#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// How many processes contend for the lock
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u8).range(2..=16))]
    pub processes: u8,
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    fencelock::options::duration_text::parse_duration(text)
}

/// `fencelock lab`.
#[derive(Debug, clap::Args)]
pub struct LabArgs {
    /// The scenario (default: all): paused-holder
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

    /// Write the Markdown report to FILE and its charts to a folder beside it
    /// (docs/benchmarks.md → docs/benchmarks/*.svg)
    #[arg(long, value_name = "FILE")]
    pub write: Option<std::path::PathBuf>,
}
