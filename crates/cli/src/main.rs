//! `fencelock`: run a command under a distributed lock with a fencing token.
//!
//! ```text
//! fencelock [--backend URL | --config FILE] run KEY [--ttl D] [--wait D] -- CMD ARGS...
//! fencelock backends
//! fencelock demo
//! ```
//!
//! See `fencelock --help` and the README.

mod args;
mod backend;
mod backends_cmd;
#[cfg(feature = "bench")]
mod bench;
mod demo;
mod exit;
mod lab;
mod run;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = args::Cli::parse();
    // The lab loses leases on purpose, and the bench stops servers under peer clients that
    // then complain: keep those warnings out of their output.
    let quiet = match &cli.command {
        args::Command::Lab(_) => true,
        #[cfg(feature = "bench")]
        args::Command::Bench(_) => true,
        _ => false,
    };
    init_logging(cli.verbose, quiet);
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
            args::Command::Backends => backends_cmd::backends().await,
            args::Command::Demo(a) => demo::demo(&cli, a).await,
            args::Command::Lab(a) => lab::lab(&cli, a).await,
            #[cfg(feature = "bench")]
            args::Command::Bench(a) => bench::bench(&cli, a).await,
            args::Command::DemoWork => demo::demo_work().await,
        }
    });
    // Background releases were awaited by `run`; don't wait for anything else.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    code
}

fn init_logging(verbose: u8, quiet: bool) {
    let default = match verbose {
        0 if quiet => "error",
        0 => "warn",
        1 => "fencelock=info,fencelock_core=info,fencelock_cli=info",
        _ => "debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
}
