//! `fencelock backends`: what this build can talk to, and what each backend promises.
//!
//! Without a backend selected, a static listing: every scheme, and for a backend whose
//! promise depends on its server's settings (Redis, PostgreSQL) each case with its
//! condition. With one (--backend, --config or FENCELOCK_BACKEND), it connects and prints
//! what that server actually gives, read from it.

use std::process::ExitCode;

use fencelock::schemes::SCHEMES;

use crate::args::Cli;
use crate::exit;
use crate::exit::outln;

/// Prints the static listing, or the guarantees of the selected backend's server.
pub async fn backends(cli: &Cli) -> ExitCode {
    let selected = cli.config.is_some()
        || match crate::backend::single_backend(cli) {
            Ok(url) => url.is_some(),
            Err(e) => return exit::fail_with(&e),
        };
    if selected {
        return connected(cli).await;
    }
    for s in SCHEMES {
        let status = match (s.compiled, s.feature) {
            (true, _) => "compiled in".to_owned(),
            (false, Some(f)) => format!("not in this build (Cargo feature `{f}`)"),
            (false, None) => "not available on this platform".to_owned(),
        };
        outln!("{}  [{status}]", s.form);
        outln!("    {}", s.summary);
        for (condition, g) in fencelock::schemes::guarantees_by_condition(s.names[0]) {
            if !condition.is_empty() {
                outln!("    {condition}:");
            }
            let indent = if condition.is_empty() { "    " } else { "      " };
            for line in g.to_string().lines() {
                outln!("{indent}{}", line.trim_start());
            }
        }
        outln!();
    }
    outln!("(`fencelock --backend URL backends` connects and prints what that server gives)");
    ExitCode::SUCCESS
}

/// Connects to the selected backend and prints its guarantees as read from the server.
async fn connected(cli: &Cli) -> ExitCode {
    let config = match crate::backend::config(cli) {
        Ok(c) => c,
        Err(e) => return exit::fail_with(&e),
    };
    let locks = match fencelock::connect(&config.backend).await {
        Ok(l) => l,
        Err(e) => return exit::fail_with(&e),
    };
    outln!("{}", locks.describe());
    outln!("    as read from this server just now:");
    for line in locks.guarantees().to_string().lines() {
        outln!("    {}", line.trim_start());
    }
    let check = config.require.check(&locks.guarantees());
    crate::run::close(&*locks).await;
    match check {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => exit::fail_with(&e),
    }
}
