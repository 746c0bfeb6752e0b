//! Log lines on stderr: coloured only on a terminal, never when `NO_COLOR` is set.

use std::io::IsTerminal;

/// Whether log lines may carry ANSI colour: stderr is a terminal and `NO_COLOR` is unset or
/// empty (<https://no-color.org>: "when present and not an empty string").
pub fn colour() -> bool {
    let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
    !no_color && std::io::stderr().is_terminal()
}

/// The election observer's per-read warning (one every poll, ~20 a second while a server
/// is down); `leader --watch` reports that state itself, rate-limited, so it is hidden
/// below `-vv`.
const OBSERVER_READS: &str = "fencelock_core::election::observer=error,fencelock_core::election::seat=error";

/// Sets up `tracing` output: `-v` info, `-vv` debug, or `RUST_LOG`. `watching`: the command
/// is `leader --watch` (see [`OBSERVER_READS`]).
pub fn init(verbose: u8, quiet: bool, watching: bool) {
    let default = match verbose {
        0 if quiet => "error".to_owned(),
        0 if watching => format!("warn,{OBSERVER_READS}"),
        0 => "warn".to_owned(),
        1 if watching => format!("fencelock=info,fencelock_core=info,fencelock_cli=info,{OBSERVER_READS}"),
        1 => "fencelock=info,fencelock_core=info,fencelock_cli=info".to_owned(),
        _ => "debug".to_owned(),
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(colour())
        .with_target(false)
        .init();
}
