//! Log lines on stderr: coloured only on a terminal, never when `NO_COLOR` is set.

use std::io::IsTerminal;

/// Whether log lines may carry ANSI colour: stderr is a terminal and `NO_COLOR` is unset or
/// empty (<https://no-color.org>: "when present and not an empty string").
pub fn colour() -> bool {
    let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
    !no_color && std::io::stderr().is_terminal()
}

/// The election observer's per-read warning (one every poll, ~20 a second while a server
/// is down); `leader --watch` reports that state itself, rate-limited.
const OBSERVER_READS: &str = "fencelock_core::election::observer=error,fencelock_core::election::seat=error";

/// A log event that the command also reports on its own, in its own words: hidden below
/// `-vv` so stderr does not say the same thing twice.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Twin {
    /// Nothing is reported twice.
    None,
    /// `leader --watch`: the election observer's per-read warnings ([`OBSERVER_READS`]).
    ObserverReads,
    /// `run`, `elect`: a lease's "lease lost" warning
    /// ([`fencelock::lease::LOST_TARGET`]); the command prints the loss and its reason.
    LeaseLoss,
}

impl Twin {
    /// The filter directives that hide it ("" for none).
    fn directives(self) -> String {
        match self {
            Twin::None => String::new(),
            Twin::ObserverReads => format!(",{OBSERVER_READS}"),
            Twin::LeaseLoss => format!(",{}=off", fencelock::lease::LOST_TARGET),
        }
    }
}

/// Sets up `tracing` output: `-v` info, `-vv` debug, or `RUST_LOG`. `twin`: what the
/// command reports itself, hidden below `-vv` (see [`Twin`]).
pub fn init(verbose: u8, quiet: bool, twin: Twin) {
    let twin = twin.directives();
    let default = match verbose {
        0 if quiet => "error".to_owned(),
        0 => format!("warn{twin}"),
        1 => format!("fencelock=info,fencelock_core=info,fencelock_cli=info{twin}"),
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
