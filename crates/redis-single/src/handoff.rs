//! The direct hand-off (issue 14): a release grants the lock to the queue head itself —
//! full TTL, token counted in the release script — and pushes `g GRANT TOKEN NOW_MS` to
//! that waiter, who is granted on the push alone, without a claim round trip. This module
//! reads the push and says how long the waiter may believe it holds the lock.
//!
//! **The validity.** The waiter never saw a request of its own come back with the grant,
//! so it cannot count from a send instant as an acquire does. What it has: `c1`, the send
//! instant (its monotonic clock) of its last turn that was answered "queued", `s`, the
//! server's time (ms, `TIME`) when that turn ran, and `h`, the server's time of the
//! hand-off, from the push; the server expires the lock at `h + TTL` of its own clock
//! (`SET … PXAT`). The turn ran after it was sent, so the real time of `s` is at least
//! `c1`, and the real time of `h` is at least `c1 + (h − s)` as long as the two clocks
//! advance at the same rate. The lease therefore starts at `c1 + (h − s)` (never later
//! than now) and lasts the TTL less a drift allowance — the same rule as Redlock's
//! (`validity = TTL − elapsed − (TTL × drift_factor + 2 ms)`, from the Redlock page at
//! redis.io/docs/latest/develop/use/patterns/distributed-locks, and antirez's "Is Redlock
//! safe?"), applied over the interval measured across the two clocks: `drift_factor ×
//! (now − c1) + 2 ms`, the 2 ms also covering the millisecond rounding of `s` and `h`.
//! `TIME` is the server's wall clock: a forward step of it between the turn and the
//! hand-off (an NTP step) makes `h − s` too long by the step; capping the start at the
//! push's arrival bounds the error to the push's delay, the same class of hazard as the
//! documented "clock jump on the server" (docs/backends/redis.md), which shortens any
//! Redis lease. When nothing is left (a very long wait, a paused waiter, a server clock that went
//! back), the waiter falls back to a claim — one more turn, whose validity counts from its
//! own send instant — and never hands out a dead lease.

use std::time::Duration;

use tokio::time::Instant;

/// The rate at which the client's and the server's clocks may drift apart, as a fraction:
/// Redlock's default `drift_factor` (`fencelock-redlock`'s `RedlockConfig`).
pub const DRIFT_FACTOR: f64 = 0.01;

/// The constant part of the drift allowance (timer resolution and the millisecond rounding
/// of the server's times): Redlock's `DRIFT_CONSTANT`.
pub const DRIFT_CONSTANT: Duration = Duration::from_millis(2);

/// What a direct hand-off's push told the waiter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Handed {
    /// The grant's fencing token, counted by the release script.
    pub token: u64,
    /// The server's time of the hand-off, ms since the Unix epoch (its `TIME`): the lock
    /// expires a TTL after it.
    pub server_ms: u64,
}

/// A waiter's last turn answered "queued": when it was sent (the waiter's monotonic
/// clock) and the server's time, in ms, when it ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueuedAt {
    /// The send instant of that turn.
    pub sent_at: Instant,
    /// The server's `TIME` in ms when that turn ran.
    pub server_ms: u64,
}

/// Where the lease of a directly handed grant starts and how long it is valid from there
/// (see the module docs), or `None` when no validity would be left at `now`: then the
/// waiter claims the lock with one more turn instead.
pub fn validity(queued: QueuedAt, handed: Handed, ttl: Duration, now: Instant) -> Option<(Instant, Duration)> {
    // A hand-off "before" the turn that queued us means the server's clock went back.
    let ahead = Duration::from_millis(handed.server_ms.checked_sub(queued.server_ms)?);
    let start = queued.sent_at.checked_add(ahead)?.min(now);
    let drift = now.saturating_duration_since(queued.sent_at).mul_f64(DRIFT_FACTOR) + DRIFT_CONSTANT;
    let valid_for = ttl.checked_sub(drift)?;
    (start + valid_for > now).then_some((start, valid_for))
}

/// Parses a message on an instance channel: `g GRANT` (the lock is reserved for that
/// waiter), `g GRANT TOKEN NOW_MS` (granted to it directly) or `n GRANT` (it is next).
/// Returns the grant id and, for a direct grant, what it was told; `None` for a message
/// without a grant id. A direct grant's numbers that do not parse (which no script sends)
/// leave a bare `g`: the waiter then claims, as for a reservation.
pub fn parse_push(payload: &str) -> Option<(&str, Option<Handed>)> {
    let mut words = payload.get(2..)?.split(' ');
    let grant = words.next().filter(|g| !g.is_empty())?;
    let handed = match (words.next(), words.next(), words.next()) {
        (Some(token), Some(at), None) if payload.starts_with('g') => match (token.parse(), at.parse()) {
            (Ok(token), Ok(server_ms)) => Some(Handed { token, server_ms }),
            _ => None,
        },
        _ => None,
    };
    Some((grant, handed))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const TTL: Duration = Duration::from_secs(10);

    fn queued(sent_at: Instant) -> QueuedAt {
        QueuedAt {
            sent_at,
            server_ms: 1_000_000,
        }
    }

    fn handed(after_ms: u64) -> Handed {
        Handed {
            token: 7,
            server_ms: 1_000_000 + after_ms,
        }
    }

    #[test]
    fn the_lease_starts_at_the_turn_plus_the_servers_wait_and_loses_the_drift() {
        let c1 = Instant::now();
        let now = c1 + Duration::from_millis(300);
        let (start, valid) = validity(queued(c1), handed(200), TTL, now).unwrap();
        assert_eq!(start, c1 + Duration::from_millis(200));
        // 1 % of the 300 ms since the turn, plus 2 ms (within float rounding).
        let expected = TTL - Duration::from_millis(5);
        let off = valid.max(expected) - valid.min(expected);
        assert!(off < Duration::from_micros(1), "{valid:?}");
    }

    #[test]
    fn the_start_is_never_after_now() {
        // The server's clock ran ahead of ours (or jumped): the start is clamped to now.
        let c1 = Instant::now();
        let now = c1 + Duration::from_millis(100);
        let (start, _) = validity(queued(c1), handed(5_000), TTL, now).unwrap();
        assert_eq!(start, now);
    }

    #[test]
    fn a_server_clock_that_went_back_means_a_claim() {
        let c1 = Instant::now();
        let back = Handed {
            token: 7,
            server_ms: 999_000,
        };
        assert_eq!(validity(queued(c1), back, TTL, c1 + Duration::from_millis(1)), None);
    }

    #[test]
    fn no_validity_left_means_a_claim() {
        let c1 = Instant::now();
        // Handed on at once, but the push is read a whole TTL later (a paused waiter).
        assert_eq!(validity(queued(c1), handed(0), TTL, c1 + TTL), None);
        // A wait so long that the drift over it eats the TTL.
        let ttl = Duration::from_millis(100);
        let long = Duration::from_secs(20);
        assert_eq!(
            validity(queued(c1), handed(long.as_millis() as u64), ttl, c1 + long),
            None
        );
        // A TTL shorter than the drift constant.
        assert_eq!(validity(queued(c1), handed(0), Duration::from_millis(1), c1), None);
    }

    #[test]
    fn pushes_parse() {
        assert_eq!(parse_push("g abc"), Some(("abc", None)));
        assert_eq!(parse_push("n abc"), Some(("abc", None)));
        assert_eq!(
            parse_push("g abc 42 1733400000123"),
            Some((
                "abc",
                Some(Handed {
                    token: 42,
                    server_ms: 1_733_400_000_123
                })
            ))
        );
        assert_eq!(parse_push("g abc x 1"), Some(("abc", None)));
        assert_eq!(parse_push("n abc 42 1"), Some(("abc", None)));
        assert_eq!(parse_push("g abc 1 2 3"), Some(("abc", None)));
        assert_eq!(parse_push("g"), None);
        assert_eq!(parse_push("g "), None);
    }
}
