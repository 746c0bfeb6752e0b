//! [`LockConfig`]: a backend and default options from TOML or JSON.

use std::path::Path;
use std::sync::Arc;

use fencelock_core::election::{Election, ElectionCapabilities};
use fencelock_core::{DistributedLock, Exclusion, Guarantees, LockError, LockOptions, Requirement, Result, Scope};
use serde::{Deserialize, Serialize};

/// Which backend to use and how, as a deployment writes it.
///
/// ```toml
/// backend = "file:///var/lock/myapp"   # any URL `connect` takes
/// require = "strict"                   # optional: any | monotonic_tokens | strict
/// metrics_key_label = false            # optional: label metrics with the key too
///
/// [defaults]                           # optional LockOptions
/// ttl = "30s"
/// wait = "10s"
/// auto_renew = true
/// ```
///
/// Unknown fields are errors, so a typo does not silently fall back to a default.
/// Durations are text with a unit (`"500ms"`, `"30s"`, `"2m"`); a bare number such as
/// `ttl = 5` is an error that names the unit to add, never silently milliseconds.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> fencelock::Result<()> {
/// let config = fencelock::LockConfig::from_toml(r#"
///     backend = "memory://cfg-doc"
///     require = "strict"
///     [defaults]
///     ttl = "5s"
/// "#)?;
/// let locks = config.connect().await?;
/// let lease = locks.acquire("k", &config.defaults).await?;
/// assert_eq!(config.defaults.ttl(), std::time::Duration::from_secs(5));
/// lease.release().await?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LockConfig {
    /// The backend URL (see [`connect`](crate::connect)).
    pub backend: String,
    /// What the backend must guarantee; connecting to a weaker one is an error.
    #[serde(default)]
    pub require: Requirement,
    /// Default options for locks taken through this configuration.
    #[serde(default)]
    pub defaults: LockOptions,
    /// Label [metrics](fencelock_core::metrics) with the lock's key too (default off: each
    /// key is a new time series; turn on only for a small, fixed set of keys).
    #[serde(default)]
    pub metrics_key_label: bool,
}

impl LockConfig {
    /// A configuration for `backend` with no requirement and default options.
    pub fn new(backend: impl Into<String>) -> Self {
        LockConfig {
            backend: backend.into(),
            require: Requirement::Any,
            defaults: LockOptions::default(),
            metrics_key_label: false,
        }
    }

    /// Parses TOML.
    ///
    /// # Errors
    ///
    /// [`LockError::InvalidConfig`] for a syntax error, an unknown field, a bad value, or a
    /// duration given as a bare number.
    pub fn from_toml(text: &str) -> Result<Self> {
        // The message and where, once: the toml error's own Display repeats the message
        // under a multi-line excerpt, which a one-line report would print twice.
        let bad = |e: toml::de::Error| {
            let at = e.span().map(|span| {
                let before = &text[..span.start.min(text.len())];
                let line = before.matches('\n').count() + 1;
                let column = before.rsplit('\n').next().unwrap_or("").chars().count() + 1;
                format!(" at line {line}, column {column}")
            });
            LockError::invalid_config(format!(
                "bad TOML configuration{}: {}",
                at.unwrap_or_default(),
                e.message().trim_end()
            ))
        };
        let mut value: toml::Value = toml::from_str(text).map_err(bad)?;
        if let Some(defaults) = value.get_mut("defaults").and_then(|d| d.as_table_mut()) {
            for field in DURATIONS {
                if let Some(v) = defaults.get_mut(*field) {
                    if v.is_integer() || v.is_float() {
                        return Err(bare_number(field, &v.to_string()));
                    }
                    if let Some(text) = v.as_str() {
                        *v = toml::Value::String(canonical(field, text)?);
                    }
                }
            }
        }
        LockConfig::deserialize(value).map_err(bad)
    }

    /// Parses JSON.
    ///
    /// # Errors
    ///
    /// As [`from_toml`](Self::from_toml).
    pub fn from_json(text: &str) -> Result<Self> {
        let bad = |e: serde_json::Error| LockError::InvalidConfig {
            message: format!("bad JSON configuration: {e}"),
            source: Some(e.into()),
        };
        let mut value: serde_json::Value = serde_json::from_str(text).map_err(bad)?;
        if let Some(defaults) = value.get_mut("defaults").and_then(|d| d.as_object_mut()) {
            for field in DURATIONS {
                if let Some(v) = defaults.get_mut(*field) {
                    if v.is_number() {
                        return Err(bare_number(field, &v.to_string()));
                    }
                    if let Some(text) = v.as_str() {
                        *v = serde_json::Value::String(canonical(field, text)?);
                    }
                }
            }
        }
        serde_json::from_value(value).map_err(bad)
    }

    /// Reads a file: JSON when it ends in `.json`, TOML when it ends in `.toml`; any other
    /// name is read by its content: JSON when its first non-blank character is `{` (a
    /// TOML file cannot start with one), TOML otherwise.
    ///
    /// # Errors
    /// [`LockError::InvalidConfig`] naming the file: it cannot be read, or as
    /// [`from_toml`](Self::from_toml) / [`from_json`](Self::from_json).
    pub fn from_path(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| LockError::InvalidConfig {
            message: format!("cannot read configuration {}", path.display()),
            source: Some(e.into()),
        })?;
        let json = match path.extension().and_then(|e| e.to_str()) {
            Some(e) if e.eq_ignore_ascii_case("json") => true,
            Some(e) if e.eq_ignore_ascii_case("toml") => false,
            _ => text.trim_start().starts_with('{'),
        };
        let parsed = if json {
            Self::from_json(&text)
        } else {
            Self::from_toml(&text)
        };
        parsed.map_err(|e| match e {
            LockError::InvalidConfig { message, source } => LockError::InvalidConfig {
                message: format!("{}: {message}", path.display()),
                source,
            },
            other => other,
        })
    }

    /// Validates the default options, builds the backend and checks the requirement.
    ///
    /// # Errors
    /// [`LockError::InvalidConfig`] for defaults that `acquire` would refuse — a TTL out of
    /// bounds, a wait of zero or above [`MAX_WAIT`](fencelock_core::options::MAX_WAIT): a
    /// zero wait is not "try once" here (`acquire` needs a positive bound; call
    /// `try_acquire` to not wait); as [`connect`](crate::connect); and
    /// [`LockError::GuaranteeNotMet`] when the requirement is not met.
    pub async fn connect(&self) -> Result<Arc<dyn DistributedLock>> {
        self.check_defaults()?;
        let lock = crate::connect::connect_with(&self.backend, self.metrics_key_label).await?;
        self.require.check(&lock.guarantees())?;
        Ok(lock)
    }

    /// Validates the default options, builds the backend's leader election and checks the
    /// requirement against what the election's seat gives, as [`connect`](Self::connect)
    /// checks a lock: the guarantees of the connected seat lock
    /// ([`Election::seat_guarantees`]: exclusion and assumptions as the server's settings
    /// make them, e.g. a durable PostgreSQL is strict) with the terms' order the connected
    /// election reports (a Redis without `appendfsync always` gives best-effort terms,
    /// which restart after a restart). An election that does not report its seat's
    /// guarantees is checked against its scheme's promise without a server at hand.
    /// Refused elections are closed before returning.
    ///
    /// # Errors
    /// As [`connect_election`](crate::connect_election), and
    /// [`LockError::GuaranteeNotMet`] when the requirement is not met.
    pub async fn connect_election(&self) -> Result<Arc<dyn Election>> {
        self.check_defaults()?;
        let election = crate::election_connect::connect_election(&self.backend).await?;
        let seat = seat_guarantees(&self.backend, election.seat_guarantees(), &election.capabilities());
        if let Err(e) = self.require.check(&seat) {
            let _ = election.close().await;
            return Err(e);
        }
        Ok(election)
    }
}

impl LockConfig {
    /// The defaults as `acquire` and `campaign` check them, as a configuration error
    /// naming the field. A zero wait passed `connect` (only the TTL was checked) and then
    /// failed every `acquire` and `campaign` (a new-user trial): refused here instead, with
    /// what to write. Not read as "try once": `acquire` has one meaning for a zero wait,
    /// however it got there (the `fencelock` command reads its own file's `wait = "0s"` as
    /// try once, and calls `try_acquire` for it).
    fn check_defaults(&self) -> Result<()> {
        // The one check of the options (`LockOptions::validate_for_wait`, as `acquire`
        // and `campaign` run it), its message prefixed with the field: the TTL first, so
        // that an error from the second call is the wait's.
        let field = |field: &str, hint: &str, e: LockError| match e {
            LockError::InvalidInput(message) => LockError::invalid_config(format!("defaults.{field}: {message}{hint}")),
            other => other,
        };
        fencelock_core::options::validate_ttl(self.defaults.ttl()).map_err(|e| field("ttl", "", e))?;
        let hint = if self.defaults.wait().is_zero() {
            " (acquire and campaign would fail with these defaults; give a bound, e.g. wait = \"10s\")"
        } else {
            ""
        };
        self.defaults.validate_for_wait().map_err(|e| field("wait", hint, e))
    }
}

/// The guarantees of an election's seat: the connected seat lock's when the election
/// reports them, else the scheme's lock's (the weaker promise without a server at hand:
/// before, this was always taken, and `require = "strict"` refused a durable PostgreSQL
/// for elections that `connect` accepted for locks); with the terms' order the connected
/// election reports.
fn seat_guarantees(url: &str, connected: Option<Guarantees>, caps: &ElectionCapabilities) -> Guarantees {
    let mut g = connected
        .or_else(|| {
            crate::schemes::scheme_of(url)
                .as_deref()
                .and_then(crate::schemes::guarantees)
        })
        .unwrap_or(Guarantees {
            backend: caps.backend,
            exclusion: Exclusion::Conditional,
            tokens: caps.terms,
            scope: Scope::Network,
            assumptions: &[],
        });
    g.tokens = caps.terms;
    g
}

/// The duration fields of `[defaults]`.
const DURATIONS: &[&str] = &["ttl", "wait"];

/// A duration given as a bare number (`ttl = 5`): seconds or milliseconds? The error names
/// the unit to add.
fn bare_number(field: &str, number: &str) -> LockError {
    LockError::invalid_config(format!(
        "defaults.{field} = {number} has no unit: write it as text with one, e.g. \"{number}s\" or \"{number}ms\""
    ))
}

/// Reads a duration's text with `humantime` (`"1.5s"`, `"2m 30s"`, `"500ms"`, `"250µs"`) and
/// writes it back in whole nanoseconds, the form `LockOptions` reads, so configuration files
/// take the same durations as the command line.
fn canonical(field: &str, text: &str) -> Result<String> {
    if text.trim_start().starts_with('-') {
        return Err(LockError::invalid_config(format!(
            "defaults.{field} = \"{text}\": durations cannot be negative; write e.g. \"500ms\", \"1.5s\" or \"30s\""
        )));
    }
    let d = humantime::parse_duration(text.trim()).map_err(|e| {
        LockError::invalid_config(format!(
            "defaults.{field} = \"{text}\" is not a duration ({e}); write e.g. \"500ms\", \"1.5s\" or \"30s\""
        ))
    })?;
    Ok(format!("{}ns", d.as_nanos()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_toml_error_says_where_and_what_once() {
        for (text, says) in [
            (
                "backend = \"memory://\"\n[defaults\n",
                "at line 2, column 10: unclosed table",
            ),
            ("backend = \"memory://\"\nbogus = 1\n", "unknown field `bogus`"),
        ] {
            let e = LockConfig::from_toml(text).unwrap_err();
            let shown = crate::error::one_line(&e);
            assert!(shown.contains(says), "{shown}");
            let what = says.rsplit(": ").next().unwrap_or(says);
            assert_eq!(shown.matches(what).count(), 1, "said twice: {shown}");
        }
    }

    #[test]
    fn a_negative_duration_is_named_as_such() {
        let e = LockConfig::from_toml("backend = \"memory://\"\n[defaults]\nttl = \"-5s\"\n").unwrap_err();
        assert!(e.to_string().contains("durations cannot be negative"), "{e}");
    }

    #[test]
    fn a_bare_number_for_a_duration_names_the_unit_to_add() {
        for (parsed, form) in [
            (
                LockConfig::from_toml("backend = \"memory://\"\n[defaults]\nttl = 5\n"),
                "toml",
            ),
            (
                LockConfig::from_json(r#"{"backend":"memory://","defaults":{"wait":250}}"#),
                "json",
            ),
        ] {
            let Err(e) = parsed else {
                panic!("{form}: accepted a bare number")
            };
            let text = e.to_string();
            assert!(text.contains("has no unit") && text.contains("s\""), "{form}: {text}");
        }
        let ok = LockConfig::from_toml("backend = \"memory://\"\n[defaults]\nttl = \"1.5s\"\n");
        assert!(ok.is_ok(), "{ok:?}");
    }

    /// The same through serde alone — a `LockConfig` inside the application's own
    /// configuration type, read by its own `serde_json`/`toml` call — not only through
    /// `from_toml`/`from_json`. Failed before the change (a new-user trial): `"ttl": 5`
    /// read as a 5 ms auto-renewed lease, without a word.
    #[test]
    fn a_bare_number_is_refused_through_serde_alone_too() {
        #[derive(Debug, serde::Deserialize)]
        struct App {
            #[allow(dead_code)] // read by Debug in the failure message only
            locks: LockConfig,
        }
        let json = serde_json::from_str::<App>(r#"{"locks":{"backend":"memory://","defaults":{"ttl":5}}}"#);
        let toml = toml::from_str::<App>("[locks]\nbackend = \"memory://\"\n[locks.defaults]\nwait = 250\n");
        for (form, parsed) in [
            ("json", json.map_err(|e| e.to_string())),
            ("toml", toml.map_err(|e| e.to_string())),
        ] {
            let Err(text) = parsed else {
                panic!("{form}: a bare number was accepted: {parsed:?}")
            };
            assert!(text.contains("has no unit") && text.contains("ms\""), "{form}: {text}");
        }
    }
}
