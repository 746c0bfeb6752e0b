//! [`LockOptions`] and the validation of keys and durations shared by every backend.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::{LockError, Result};

/// The longest key accepted, in bytes. Backends map keys onto Redis keys, etcd keys,
/// ZooKeeper paths and file names; 256 bytes fits all of them with room for a prefix.
pub const MAX_KEY_LEN: usize = 256;

/// The shortest TTL accepted: 1 ms (the resolution of Redis `PX`). Backends with a coarser
/// lease (etcd: whole seconds) state their own minimum.
pub const MIN_TTL: Duration = Duration::from_millis(1);

/// The longest TTL accepted: one day. A lease longer than that is almost certainly a unit
/// mistake (seconds given as milliseconds); hold the lock with auto-renew instead.
pub const MAX_TTL: Duration = Duration::from_secs(24 * 60 * 60);

/// The longest time `acquire` may be told to wait: one day, for the same reason.
pub const MAX_WAIT: Duration = Duration::from_secs(24 * 60 * 60);

/// How a lock is taken and held.
///
/// | option | default | meaning |
/// |---|---|---|
/// | `ttl` | 30 s | how long a grant lives on the backend unless extended; also how long a crashed holder blocks others |
/// | `wait` | 30 s | how long [`acquire`](crate::DistributedLock::acquire) waits before [`LockError::Timeout`]; ignored by `try_acquire` |
/// | `auto_renew` | on | extend the lease in the background (every third of the TTL) while the [`Lease`](crate::Lease) lives |
///
/// ```
/// use std::time::Duration;
/// use fencelock::LockOptions;
/// let opts = LockOptions::new().with_ttl(Duration::from_secs(5)).with_wait(Duration::from_secs(1));
/// assert_eq!(opts.ttl(), Duration::from_secs(5));
/// assert!(opts.auto_renew());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LockOptions {
    #[serde(with = "duration_text")]
    ttl: Duration,
    #[serde(with = "duration_text")]
    wait: Duration,
    auto_renew: bool,
}

impl Default for LockOptions {
    fn default() -> Self {
        LockOptions {
            ttl: Duration::from_secs(30),
            wait: Duration::from_secs(30),
            auto_renew: true,
        }
    }
}

impl LockOptions {
    /// The defaults: TTL 30 s, wait 30 s, auto-renew on.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the TTL of a grant.
    pub fn with_ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// Sets how long `acquire` waits.
    pub fn with_wait(mut self, wait: Duration) -> Self {
        self.wait = wait;
        self
    }

    /// Turns background renewal on or off.
    pub fn with_auto_renew(mut self, on: bool) -> Self {
        self.auto_renew = on;
        self
    }

    /// The TTL of a grant.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// How long `acquire` waits.
    pub fn wait(&self) -> Duration {
        self.wait
    }

    /// Whether the lease is renewed in the background.
    pub fn auto_renew(&self) -> bool {
        self.auto_renew
    }

    /// Checks the options for `try_acquire` (the wait bound is not used).
    pub fn validate_for_try(&self) -> Result<()> {
        validate_ttl(self.ttl)
    }

    /// Checks the options for `acquire`: a zero wait is refused (use `try_acquire`).
    pub fn validate_for_wait(&self) -> Result<()> {
        validate_ttl(self.ttl)?;
        if self.wait.is_zero() {
            return Err(LockError::invalid_input(
                "wait is zero: acquire needs a positive bound; use try_acquire to not wait at all",
            ));
        }
        if self.wait > MAX_WAIT {
            return Err(LockError::invalid_input(format!(
                "wait {:?} is longer than the maximum {:?}",
                self.wait, MAX_WAIT
            )));
        }
        Ok(())
    }
}

/// Checks a TTL against [`MIN_TTL`] and [`MAX_TTL`].
pub fn validate_ttl(ttl: Duration) -> Result<()> {
    if ttl < MIN_TTL {
        return Err(LockError::invalid_input(format!(
            "ttl {ttl:?} is shorter than the minimum {MIN_TTL:?}"
        )));
    }
    if ttl > MAX_TTL {
        return Err(LockError::invalid_input(format!(
            "ttl {ttl:?} is longer than the maximum {MAX_TTL:?}; hold the lock with auto-renew instead"
        )));
    }
    Ok(())
}

/// Checks a key: 1 to [`MAX_KEY_LEN`] bytes of UTF-8 without control characters.
///
/// ```
/// use fencelock::options::validate_key;
/// assert!(validate_key("orders/42").is_ok());
/// assert!(validate_key("").is_err());
/// assert!(validate_key("bad\nkey").is_err());
/// ```
pub fn validate_key(key: &str) -> Result<()> {
    if key.is_empty() {
        return Err(LockError::invalid_input("key is empty"));
    }
    if key.len() > MAX_KEY_LEN {
        return Err(LockError::invalid_input(format!(
            "key is {} bytes long; the maximum is {MAX_KEY_LEN}",
            key.len()
        )));
    }
    if let Some(c) = key.chars().find(|c| c.is_control()) {
        return Err(LockError::invalid_input(format!(
            "key contains the control character {:?}",
            c
        )));
    }
    Ok(())
}

/// The query of a backend URL (`?key=value&…`), read the same way by every backend.
pub mod url_query {
    use std::time::Duration;

    /// The `key=value` pairs of a query, in order; empty pairs are skipped and a key
    /// without `=` has the value `""`.
    ///
    /// ```
    /// let pairs: Vec<_> = fencelock::options::url_query::pairs("a=1&&b").collect();
    /// assert_eq!(pairs, [("a", "1"), ("b", "")]);
    /// ```
    pub fn pairs(query: &str) -> impl Iterator<Item = (&str, &str)> {
        query
            .split('&')
            .filter(|p| !p.is_empty())
            .map(|p| p.split_once('=').unwrap_or((p, "")))
    }

    /// Checks that each named timeout is above zero and at most 10 minutes; the error
    /// names the first that is not.
    pub fn check_timeouts(named: &[(&str, Duration)]) -> Result<(), String> {
        for (name, d) in named {
            if d.is_zero() || *d > Duration::from_secs(600) {
                return Err(format!("{name} must be between 1ms and 10m, got {d:?}"));
            }
        }
        Ok(())
    }
}

/// Serde of durations as human text ("500ms", "30s") or as a number of milliseconds.
pub mod duration_text {
    use std::time::Duration;

    use serde::{de, Deserialize, Deserializer, Serializer};

    /// Writes a duration as text, e.g. `"1s 500ms"`.
    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format_duration(*d))
    }

    /// Reads `"500ms"`, `"30s"`, `"2m"`, or a plain number of milliseconds.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Text {
            Millis(u64),
            Text(String),
        }
        match Text::deserialize(d)? {
            Text::Millis(ms) => Ok(Duration::from_millis(ms)),
            Text::Text(t) => parse_duration(&t).map_err(de::Error::custom),
        }
    }

    /// Parses `"500ms"`, `"30s"`, `"1m30s"`, `"2h"` (units ns, us, ms, s, m, h; no sign).
    pub fn parse_duration(text: &str) -> Result<Duration, String> {
        let t = text.trim();
        if t.is_empty() {
            return Err("empty duration: write e.g. 500ms or 30s".into());
        }
        let mut total = Duration::ZERO;
        let mut rest = t;
        while !rest.is_empty() {
            let digits = rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len());
            if digits == 0 {
                return Err(format!("bad duration `{text}`: expected a number, e.g. 500ms or 30s"));
            }
            let value: u64 = rest[..digits]
                .parse()
                .map_err(|_| format!("bad duration `{text}`: number too large"))?;
            rest = rest[digits..].trim_start();
            let unit_len = rest.find(|c: char| !c.is_ascii_alphabetic()).unwrap_or(rest.len());
            let unit = &rest[..unit_len];
            let part = match unit {
                "ns" => Duration::from_nanos(value),
                "us" | "µs" => Duration::from_micros(value),
                "ms" => Duration::from_millis(value),
                "s" | "sec" => Duration::from_secs(value),
                "m" | "min" => value
                    .checked_mul(60)
                    .map(Duration::from_secs)
                    .ok_or("duration too large")?,
                "h" => value
                    .checked_mul(3600)
                    .map(Duration::from_secs)
                    .ok_or("duration too large")?,
                "" => return Err(format!("bad duration `{text}`: missing unit (ms, s, m, h)")),
                other => {
                    return Err(format!(
                        "bad duration `{text}`: unknown unit `{other}` (use ns, us, ms, s, m, h)"
                    ))
                }
            };
            total = total.checked_add(part).ok_or("duration too large")?;
            rest = rest[unit_len..].trim_start();
        }
        Ok(total)
    }

    /// Formats a duration compactly, e.g. `1s 500ms`.
    pub fn format_duration(d: Duration) -> String {
        let ms = d.as_millis();
        if d.subsec_nanos() % 1_000_000 != 0 {
            return format!("{}us", d.as_micros());
        }
        if ms % 1000 == 0 {
            format!("{}s", ms / 1000)
        } else {
            format!("{ms}ms")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::duration_text::parse_duration;
    use super::*;

    #[test]
    fn keys() {
        assert!(validate_key("a").is_ok());
        assert!(validate_key(&"x".repeat(MAX_KEY_LEN)).is_ok());
        assert!(validate_key(&"x".repeat(MAX_KEY_LEN + 1)).is_err());
        assert!(validate_key("nul\0").is_err());
    }

    #[test]
    fn ttl_and_wait_bounds() {
        assert!(LockOptions::new().with_ttl(Duration::ZERO).validate_for_try().is_err());
        assert!(LockOptions::new()
            .with_ttl(MAX_TTL + Duration::from_secs(1))
            .validate_for_try()
            .is_err());
        assert!(LockOptions::new()
            .with_wait(Duration::ZERO)
            .validate_for_wait()
            .is_err());
        assert!(LockOptions::new().with_wait(Duration::ZERO).validate_for_try().is_ok());
        assert!(LockOptions::new().validate_for_wait().is_ok());
    }

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert!(parse_duration("30").is_err());
        assert!(parse_duration("-1s").is_err());
        assert!(parse_duration("1 fortnight").is_err());
        assert!(parse_duration("99999999999999999999h").is_err());
    }

    #[test]
    fn options_from_json() {
        let o: LockOptions = serde_json::from_str(r#"{"ttl":"2s","wait":250,"auto_renew":false}"#).unwrap();
        assert_eq!(
            o,
            LockOptions::new()
                .with_ttl(Duration::from_secs(2))
                .with_wait(Duration::from_millis(250))
                .with_auto_renew(false)
        );
        assert!(serde_json::from_str::<LockOptions>(r#"{"tll":"2s"}"#).is_err());
    }
}
