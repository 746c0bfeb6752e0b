//! Log lines on stderr: coloured only on a terminal, never when `NO_COLOR` is set.

use std::io::IsTerminal;

/// Whether log lines may carry ANSI colour: stderr is a terminal and `NO_COLOR` is unset or
/// empty (<https://no-color.org>: "when present and not an empty string").
pub fn colour() -> bool {
    let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
    !no_color && std::io::stderr().is_terminal()
}

/// Sets up `tracing` output: `-v` info, `-vv` debug, or `RUST_LOG`.
pub fn init(verbose: u8, quiet: bool) {
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
        .with_ansi(colour())
        .with_target(false)
        .init();
}
