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
        // Every crate of ours, each backend's too (a wait on nodes inside their restart
        // delay is said at info level by fencelock_redlock).
        1 => format!(
            "fencelock=info,fencelock_core=info,fencelock_cli=info,fencelock_redis=info,\
             fencelock_redlock=info,fencelock_etcd=info,fencelock_zk=info,fencelock_postgres=info{twin}"
        ),
        _ => "debug".to_owned(),
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(|| Lines)
        .with_ansi(colour())
        .with_target(false)
        .init();
}

/// Where log lines go: stderr through [`crate::exit::say`] — bounded like every other
/// message (a stalled reader must not hold `run` up: new-user trial), with the backend URL
/// as the user gave it ([`crate::backend::as_given`]): a library's warning quotes the URL
/// it connected with, and on etcd that held the `session_ttl` `run` added (trial F4).
/// The formatter writes each event with one `write_all` of the whole line.
struct Lines;

impl Lines {
    /// The text written for `buf`, one formatted event.
    fn text(buf: &[u8]) -> String {
        crate::backend::as_given(&String::from_utf8_lossy(buf))
    }
}

impl std::io::Write for Lines {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        crate::exit::say(Self::text(buf));
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// Trial F4: a backend library's warning quotes the URL it connected with — on etcd
    /// with the `session_ttl` that `run --ttl` added — and went to stderr as it was; the
    /// log writer quotes the URL as the user gave it, as every message does. (The only
    /// test in this binary that sets the URL as given: it is set once per process.)
    #[test]
    fn log_lines_quote_the_url_as_given() {
        let config = fencelock::LockConfig::new("etcd://u:secret@127.0.0.1:2379");
        let used = crate::backend::with_added_options(config, Some(Duration::from_secs(3)), str::to_owned);
        assert_eq!(used.backend, "etcd://u:secret@127.0.0.1:2379?session_ttl=3s");
        let event = b"WARN follow-up refused; left to the TTL or the session what=\"revoking\" \
error=no answer to revoking a lease within 2s from etcd://u:***@127.0.0.1:2379?session_ttl=3s\n";
        assert_eq!(
            Lines::text(event),
            "WARN follow-up refused; left to the TTL or the session what=\"revoking\" \
error=no answer to revoking a lease within 2s from etcd://u:***@127.0.0.1:2379\n"
        );
    }
}
