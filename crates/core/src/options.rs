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

    /// Sets the TTL of a grant, rounded up to whole milliseconds ([`ttl_ceil_ms`]: the
    /// client counts the TTL the server keeps).
    /// A backend may grant less (ZooKeeper: at most ¾ of the session timeout, less the
    /// grant's round trip): a lease's [`remaining`](crate::Lease::remaining) says what
    /// was granted.
    pub fn with_ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl_ceil_ms(ttl);
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

    /// The TTL of a grant, in whole milliseconds (rounded up, [`ttl_ceil_ms`]; also when
    /// it was read from text such as `"1999900us"`).
    pub fn ttl(&self) -> Duration {
        ttl_ceil_ms(self.ttl)
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
        validate_ttl(self.ttl())
    }

    /// Checks the options for `acquire` (and an election's `campaign`): a zero wait is
    /// refused — use `try_acquire` to not wait for a lock; an election has no try-campaign
    /// (the message says what to do instead).
    pub fn validate_for_wait(&self) -> Result<()> {
        validate_ttl(self.ttl())?;
        if self.wait.is_zero() {
            // Inside a campaign the advice is the election's: it has no `try_acquire`
            // (a new-user trial was sent looking for one).
            return Err(LockError::invalid_input(if crate::election::in_campaign() {
                "wait is zero: campaign needs a positive bound, and an election has no try-campaign; \
                 to not wait for a led seat, ask Election::leader(name) first and campaign only when it \
                 returns None, with a short wait (as `fencelock elect --no-wait` does)"
            } else {
                "wait is zero: acquire needs a positive bound; use try_acquire to not wait at all"
            }));
        }
        if self.wait > MAX_WAIT {
            return Err(LockError::invalid_input(format!(
                "wait {} is above the maximum of {}",
                duration_text::human(self.wait),
                duration_text::human(MAX_WAIT)
            )));
        }
        Ok(())
    }
}

/// `ttl` rounded up to whole milliseconds (a whole number of them stays as it is; past
/// [`Duration::MAX`]'s last millisecond, `Duration::MAX`).
///
/// Every TTL is counted this way, by the client and by the server alike: the servers keep
/// TTLs in whole milliseconds (Redis `PX`, PostgreSQL's `ttl_ms`), and the backends send
/// `ttl.as_millis()`, which rounds down. A holder that counted 1999.9 ms while the server
/// kept 1999 ms believed in its lease for up to a millisecond after the server could grant
/// it to another client. Rounded up — not down — so the TTL asked for is never shortened
/// (half a millisecond is 1 ms, not a refused 0) and client and server count the same
/// value. Applied once here in core ([`LockOptions::with_ttl`], [`LockOptions::ttl`],
/// [`Lease::extend`](crate::Lease::extend)), so no backend can get it wrong.
///
/// ```
/// use std::time::Duration;
/// use fencelock::options::ttl_ceil_ms;
/// assert_eq!(ttl_ceil_ms(Duration::from_micros(1_999_900)), Duration::from_millis(2000));
/// assert_eq!(ttl_ceil_ms(Duration::from_millis(5)), Duration::from_millis(5));
/// ```
pub fn ttl_ceil_ms(ttl: Duration) -> Duration {
    let part = ttl.subsec_nanos() % 1_000_000;
    if part == 0 {
        return ttl;
    }
    ttl.checked_add(Duration::from_nanos(u64::from(1_000_000 - part)))
        .unwrap_or(Duration::MAX)
}

/// Checks a TTL against [`MIN_TTL`] and [`MAX_TTL`].
pub fn validate_ttl(ttl: Duration) -> Result<()> {
    if ttl < MIN_TTL {
        return Err(LockError::invalid_input(format!(
            "ttl {} is below the minimum of {}",
            duration_text::human(ttl),
            duration_text::human(MIN_TTL)
        )));
    }
    if ttl > MAX_TTL {
        return Err(LockError::invalid_input(format!(
            "ttl {} is above the maximum of {}; hold the lock with auto-renew instead",
            duration_text::human(ttl),
            duration_text::human(MAX_TTL)
        )));
    }
    Ok(())
}

/// Checks a lock key: 1 to [`MAX_KEY_LEN`] bytes of UTF-8 without control characters,
/// not beginning with [`SEAT_PREFIX`](crate::election::SEAT_PREFIX) (`election.`, in any
/// ASCII case).
///
/// That prefix is reserved: an election named `NAME` holds the lock `election.NAME` of the
/// same backend as its seat, so a plain lock on that key would take the seat — campaigns
/// would wait for it, and `leader` would report a leader with no value. Every backend
/// refuses such a key with [`LockError::InvalidInput`]; only a campaign acquires it
/// ([`as_campaign`](crate::election::as_campaign)).
///
/// ```
/// use fencelock::options::validate_key;
/// assert!(validate_key("orders/42").is_ok());
/// assert!(validate_key("").is_err());
/// assert!(validate_key("bad\nkey").is_err());
/// assert!(validate_key("election.scheduler").is_err()); // the seat of election `scheduler`
/// assert!(validate_key("Election.scheduler").is_err()); // the same files on a case-insensitive disk
/// assert!(validate_key("elections.2024").is_ok());
/// ```
pub fn validate_key(key: &str) -> Result<()> {
    check_key_shape(key)?;
    // In any ASCII case: on a case-insensitive lock directory (the file backend on macOS's
    // APFS, Windows, ext4 `casefold`) `Election.x` names the seat's own files.
    let prefix = crate::election::SEAT_PREFIX;
    let reserved = key.get(..prefix.len()).filter(|head| head.eq_ignore_ascii_case(prefix));
    if let Some(head) = reserved {
        let name = &key[head.len()..];
        if !crate::election::in_campaign() {
            return Err(LockError::invalid_input(format!(
                "the key `{key}` is reserved: keys beginning with `{}` (in any case) are election seats, and a lock on \
                 this one would take the seat of the election `{name}`; campaign for it with \
                 Election::campaign, or name the lock otherwise",
                crate::election::SEAT_PREFIX
            )));
        }
    }
    Ok(())
}

/// The shape of a key (1 to [`MAX_KEY_LEN`] bytes, no control character), without the
/// reserved prefix: for election names and for the file backend's tools that act on any
/// key, seats included.
pub(crate) fn check_key_shape(key: &str) -> Result<()> {
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

    /// Checks that each named timeout is between 1 ms and 10 minutes inclusive; the error
    /// names the first that is not.
    pub fn check_timeouts(named: &[(&str, Duration)]) -> Result<(), String> {
        for (name, d) in named {
            check_range(name, *d, Duration::from_millis(1), Duration::from_secs(600))?;
        }
        Ok(())
    }

    /// Checks that `d` is within `min..=max`: "NAME must be between MIN and MAX, got D",
    /// each duration as [`human`](super::duration_text::human) writes it.
    pub fn check_range(name: &str, d: Duration, min: Duration, max: Duration) -> Result<(), String> {
        use super::duration_text::human;
        if d < min || d > max {
            return Err(format!(
                "{name} must be between {} and {}, got {}",
                human(min),
                human(max),
                human(d)
            ));
        }
        Ok(())
    }
}

/// Serde of durations as human text ("500ms", "30s"); a plain number is refused (no unit).
pub mod duration_text {
    use std::time::Duration;

    use serde::{de, Deserialize, Deserializer, Serializer};

    /// Writes a duration as text, e.g. `"1s 500ms"`.
    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format_duration(*d))
    }

    /// Reads `"500ms"`, `"30s"`, `"2m"` ([`parse_duration`]). A plain number is refused
    /// with an error that names the unit to add: seconds or milliseconds is the reader's
    /// guess, and a wrong guess is a lease a thousand times too short or too long. (It was
    /// read as milliseconds: `"ttl": 5` through an application's own serde call was a
    /// 5 ms lease without a word — a new-user trial.)
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Given {
            Whole(u64),
            Number(f64),
            Text(String),
        }
        let number = match Given::deserialize(d)? {
            Given::Text(t) => return parse_duration(&t).map_err(de::Error::custom),
            Given::Whole(n) => n.to_string(),
            Given::Number(n) => n.to_string(),
        };
        Err(de::Error::custom(format!(
            "the duration {number} has no unit: write it as text with one, e.g. \"{number}s\" or \"{number}ms\""
        )))
    }

    /// Parses a duration as `humantime` reads it, the one reading of durations in URLs,
    /// configuration files and on the command line: `"500ms"`, `"1.5s"`, `"30s"`,
    /// `"1m30s"`, `"2h"`. A number needs a unit; a sign is refused.
    ///
    /// # Errors
    /// A message quoting `text` and saying what is wrong (empty, negative, no unit, an
    /// unknown unit, too large).
    pub fn parse_duration(text: &str) -> Result<Duration, String> {
        let t = text.trim();
        if t.is_empty() {
            return Err("empty duration: write e.g. 500ms, 1.5s or 30s".into());
        }
        if t.starts_with('-') {
            return Err(format!(
                "`{text}`: durations cannot be negative; write e.g. 500ms, 1.5s or 30s"
            ));
        }
        humantime::parse_duration(t)
            .map_err(|e| format!("`{text}` is not a duration ({e}); write e.g. 500ms, 1.5s or 30s"))
    }

    /// A duration as people write it, for messages: `1ms`, `1s 500ms`, `0s`, and whole
    /// hours from a day up as hours (`24h`, not `1day`) — the one formatter of the command
    /// line's and the configuration's limit messages.
    pub fn human(d: Duration) -> String {
        const HOUR: u64 = 3600;
        if d.is_zero() {
            return "0s".into();
        }
        if d.subsec_nanos() == 0 && d.as_secs() >= 24 * HOUR && d.as_secs() % HOUR == 0 {
            return format!("{}h", d.as_secs() / HOUR);
        }
        humantime::format_duration(d).to_string()
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
        // The command line's reading: fractions and words.
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("1sec"), Ok(Duration::from_secs(1)));
        assert!(parse_duration("1.5s").is_ok());
        let e = parse_duration("-1s").unwrap_err();
        assert!(e.contains("negative"), "{e}");
    }

    #[test]
    fn timeouts_keep_their_documented_bounds_in_human_units() {
        use super::url_query::check_timeouts;
        let e = check_timeouts(&[("poll", Duration::from_nanos(1))]).unwrap_err();
        assert_eq!(e, "poll must be between 1ms and 10m, got 1ns");
        assert!(check_timeouts(&[("poll", Duration::from_millis(1))]).is_ok());
        let e = check_timeouts(&[("timeout", Duration::ZERO)]).unwrap_err();
        assert!(e.ends_with("got 0s"), "{e}");
        let e = validate_ttl(Duration::from_secs(100 * 365 * 86400))
            .unwrap_err()
            .to_string();
        assert!(e.contains("above the maximum of 24h"), "{e}");
    }

    /// A TTL is counted in whole milliseconds, rounded up, by the client as by every
    /// server (whose TTLs are whole milliseconds): 1999.9 ms was sent as 1999 ms while
    /// the holder believed in 1999.9 ms.
    #[test]
    fn a_ttl_is_rounded_up_to_whole_milliseconds() {
        let odd = Duration::from_micros(1_999_900);
        assert_eq!(LockOptions::new().with_ttl(odd).ttl(), Duration::from_millis(2000));
        assert_eq!(
            LockOptions::new().with_ttl(Duration::from_millis(1999)).ttl(),
            Duration::from_millis(1999)
        );
        let o: LockOptions = serde_json::from_str(r#"{"ttl":"1999900us"}"#).unwrap();
        assert_eq!(o.ttl(), Duration::from_millis(2000));
        assert_eq!(ttl_ceil_ms(Duration::from_nanos(1)), MIN_TTL);
        assert_eq!(ttl_ceil_ms(Duration::ZERO), Duration::ZERO);
        assert_eq!(ttl_ceil_ms(Duration::MAX), Duration::MAX);
        // Half a millisecond is a valid TTL of 1 ms, not a refused one of 0.
        assert!(LockOptions::new()
            .with_ttl(Duration::from_micros(500))
            .validate_for_try()
            .is_ok());
    }

    #[test]
    fn options_from_json() {
        let o: LockOptions = serde_json::from_str(r#"{"ttl":"2s","wait":"250ms","auto_renew":false}"#).unwrap();
        assert_eq!(
            o,
            LockOptions::new()
                .with_ttl(Duration::from_secs(2))
                .with_wait(Duration::from_millis(250))
                .with_auto_renew(false)
        );
        assert!(serde_json::from_str::<LockOptions>(r#"{"tll":"2s"}"#).is_err());
        // A number has no unit: refused, naming the unit to add (it read as milliseconds).
        for number in [r#"{"wait":250}"#, r#"{"ttl":1.5}"#] {
            let e = serde_json::from_str::<LockOptions>(number).unwrap_err().to_string();
            assert!(e.contains("has no unit"), "{number}: {e}");
        }
    }
}
