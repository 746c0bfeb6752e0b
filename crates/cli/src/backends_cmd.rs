//! `fencelock backends`: what this build can talk to, and what each backend promises.
//!
//! Without a backend selected, a static listing: every scheme, and for a backend whose
//! promise depends on its server's settings (Redis, PostgreSQL) each case with its
//! condition. With one (--backend, --config or FENCELOCK_BACKEND), it connects and prints
//! what that server actually gives, read from it.

use std::process::ExitCode;

use fencelock::schemes::SCHEMES;
use fencelock_core::backend_url::{with_query_option, IfSet};

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

/// `url` for a command that only reads: a PostgreSQL URL gets `create_tables=false`
/// unless it says `create_tables` itself (the user's own option is honoured), so that a
/// connect finding no tables (a typo in `schema=`) creates no stray schema; it fails with
/// an error carrying [`NothingCreated`](fencelock_core::error::NothingCreated), which the
/// command answers itself ([`nothing_there`]) naming what is missing. Other URLs as they
/// are.
pub fn never_creating(url: &str) -> String {
    let scheme = url.trim().split_once("://").map(|(s, _)| s.to_ascii_lowercase());
    match scheme.as_deref() {
        Some("postgres" | "postgresql") => with_query_option(url, "create_tables", "false", IfSet::Keep),
        _ => url.to_owned(),
    }
}

/// [`crate::elect::connect`] for a command that only reads the election (`leader` without
/// --watch): with [`never_creating`]'s URL; messages show the URL as given.
pub async fn connect_election_reading(
    cli: &Cli,
    command: &str,
) -> Result<
    (
        std::sync::Arc<dyn fencelock::election::Election>,
        fencelock::LockOptions,
    ),
    fencelock::LockError,
> {
    let config = crate::backend::config(cli)?;
    crate::backend::refuse_in_process(&config, command)?;
    let config = crate::backend::with_added_options(config, None, never_creating);
    let election = crate::backend::connectable(&config).connect_election().await?;
    Ok((election, config.defaults))
}

/// What a read-only command says of `nothing` (see [`never_creating`]): what is missing,
/// in which schema, of the URL as the user gave it (password hidden, query kept, without
/// the `create_tables=false` added here), so that a mistyped `schema=` stays visible.
pub fn nothing_there(cli: &Cli, nothing: &fencelock_core::error::NothingCreated) -> String {
    let url = crate::backend::config(cli).map_or_else(
        |_| nothing.server.clone(),
        |c| fencelock_core::backend_url::redact(c.backend.trim()),
    );
    format!("{nothing} of `{url}`")
}

/// Connects to the selected backend and prints its guarantees as read from the server
/// (creating nothing: see [`never_creating`]). A PostgreSQL database where nothing has
/// run yet still has its guarantees (they come from the server's settings, not from
/// tables): printed, with a line saying the tables are not created yet.
async fn connected(cli: &Cli) -> ExitCode {
    let config = match crate::backend::config(cli) {
        Ok(c) if c.backend != never_creating(&c.backend) => crate::backend::with_added_options(c, None, never_creating),
        Ok(c) => c,
        Err(e) => return exit::fail_with(&e),
    };
    let locks = match fencelock::connect(&config.backend).await {
        Ok(l) => l,
        Err(e) => {
            let Some(nothing) = e.nothing_created() else {
                return exit::fail_with(&e);
            };
            let guarantees = &nothing.guarantees;
            outln!("{}", nothing.server);
            outln!("    as read from this server just now:");
            for line in guarantees.to_string().lines() {
                outln!("    {}", line.trim_start());
            }
            outln!(
                "    not created yet: {} (the first lock or election creates them; check `schema=` if you \
                 meant another)",
                nothing_there(cli, nothing)
            );
            return match config.require.check(guarantees) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => exit::fail_with(&e),
            };
        }
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
