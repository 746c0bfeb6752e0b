//! `fencelock bench`: the benchmark of `fencelock-bench`, from the command line.

use std::process::ExitCode;

use fencelock_bench::targets::Kind;
use fencelock_bench::{BenchError, Plan};

use crate::args::{BenchArgs, Cli};
use crate::exit;
use crate::exit::outln;

/// The cargo invocation that builds this command, for the report's header: the profile of
/// this very binary, so a report made by a debug build says so in its command too.
const CARGO_RUN: &str = if cfg!(debug_assertions) {
    "cargo run -p fencelock-cli --features bench --"
} else {
    "cargo run --release -p fencelock-cli --features bench --"
};

pub async fn bench(cli: &Cli, args: &BenchArgs) -> ExitCode {
    if cli.config.is_some() {
        return exit::fail(
            "bench measures --backend URLs (or servers it starts), not a --config file",
            exit::BAD_INPUT,
        );
    }
    let mut plan = if args.quick { Plan::quick() } else { Plan::full() };
    plan.urls = match crate::backend::backend_urls(cli) {
        Ok(urls) => urls,
        Err(e) => return exit::fail_with(&e),
    };
    plan.peers = !args.no_peers;
    plan.runs = usize::from(args.runs);
    if let Some(n) = args.failovers {
        plan.failovers = usize::from(n);
    }
    plan.failover_only = args.failover_only;
    if plan.failover_only && plan.failovers == 0 {
        return exit::fail("--failover-only with --failovers 0 measures nothing", exit::BAD_INPUT);
    }
    if !args.only.is_empty() {
        if !plan.urls.is_empty() {
            return exit::fail(
                "--only picks the servers bench starts; with --backend, name only those",
                exit::BAD_INPUT,
            );
        }
        match args.only.iter().map(|n| Kind::parse(n.trim())).collect() {
            Ok(kinds) => plan.only = kinds,
            Err(e) => return exit::fail(&e.to_string(), exit::BAD_INPUT),
        }
    }
    if let Some(path) = &args.write {
        // Checked before measuring (a full bench takes half an hour), and never created:
        // a mistyped directory is an error, not a new directory.
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => std::path::Path::new("."),
        };
        if !dir.is_dir() {
            return exit::fail(
                &format!(
                    "--write {}: the directory {} does not exist",
                    path.display(),
                    dir.display()
                ),
                exit::BAD_INPUT,
            );
        }
    }
    let argv: Vec<String> = std::env::args().skip(1).collect();
    plan.command = format!("{CARGO_RUN} {}", argv.join(" "));
    let progress = |step: &str| crate::exit::errln!("fencelock bench: {step}");
    let report = match fencelock_bench::run(&plan, &progress).await {
        Ok(r) => r,
        Err(e) => return fail(&e),
    };
    if let Some(path) = &args.write {
        if let Err(e) = report.write(path) {
            return fail(&e);
        }
        crate::exit::errln!("fencelock bench: wrote {}", path.display());
    }
    if args.json {
        outln!("{}", report.json());
    } else if args.write.is_none() {
        outln!("{}", report.markdown(None).trim_end());
    }
    ExitCode::SUCCESS
}

fn fail(e: &BenchError) -> ExitCode {
    let status = match e {
        BenchError::Usage(_) => exit::BAD_INPUT,
        BenchError::Lock { source, .. } => exit::status_for(source),
        _ => exit::FAILURE,
    };
    exit::fail(&format!("bench: {}", exit::one_line(e)), status)
}
