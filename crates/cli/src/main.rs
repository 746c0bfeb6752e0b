//! `fencelock`: run a command under a distributed lock with a fencing token.
//!
//! ```text
//! fencelock [--backend URL | --config FILE] run KEY [--ttl D] [--wait D] -- CMD ARGS...
//! fencelock backends
//! fencelock demo
//! ```
//!
//! See `fencelock --help`, the README and docs/cli.md.

mod args;
mod backend;
mod backends_cmd;
#[cfg(feature = "bench")]
mod bench;
mod command_check;
mod demo;
mod elect;
mod exit;
mod group;
mod guard;
mod lab;
mod leader;
mod lock_opts;
mod logging;
mod metrics;
mod run;
mod signals;
mod waiting;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = match args::Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return exit::usage(e),
    };
    // The lab loses leases on purpose, and the bench stops servers under peer clients that
    // then complain: keep those warnings out of their output.
    let quiet = match &cli.command {
        args::Command::Lab(_) => true,
        #[cfg(feature = "bench")]
        args::Command::Bench(_) => true,
        _ => false,
    };
    let twin = match &cli.command {
        args::Command::Leader(a) if a.watch => logging::Twin::ObserverReads,
        args::Command::Run(_) | args::Command::Elect(_) => logging::Twin::LeaseLoss,
        _ => logging::Twin::None,
    };
    logging::init(cli.verbose, quiet, twin);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return exit::fail(&format!("cannot start the async runtime: {e}"), exit::FAILURE),
    };
    let code = runtime.block_on(async {
        match &cli.command {
            args::Command::Run(a) => run::run(&cli, a).await,
            args::Command::Elect(a) => elect::elect(&cli, a).await,
            args::Command::Leader(a) => leader::leader(&cli, a).await,
            args::Command::Backends => backends_cmd::backends(&cli).await,
            args::Command::Demo(a) => demo::demo(&cli, a).await,
            args::Command::Lab(a) => lab::lab(&cli, a).await,
            #[cfg(feature = "bench")]
            args::Command::Bench(a) => bench::bench(&cli, a).await,
            args::Command::DemoWork => demo::demo_work().await,
            args::Command::Guard(a) => guard::guard(a).await,
        }
    });
    // Background releases were awaited by `run`; don't wait for anything else.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    code
}
