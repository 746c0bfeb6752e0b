//! The waiting loop of `acquire` and the cancel-safety helper, shared by every backend.
//!
//! A backend writes one *attempt* (try to take the key once; if busy, say what will wake
//! us) and [`acquire_with`] turns it into a bounded, cancel-safe wait.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::error::{LockError, Result};
use crate::lease::Lease;
use crate::options::{validate_key, LockOptions};

/// A boxed future that completes when the key may have been freed.
pub type WakeFuture = Pin<Box<dyn Future<Output = ()> + Send + 'static>>;

/// The outcome of one attempt to take a key.
pub enum Attempt {
    /// We hold it now.
    Acquired(Lease),
    /// Someone else holds it.
    Busy {
        /// Completes when the backend announces a change (a release, a deleted node, a
        /// pub/sub message). `None` when the backend has no such signal.
        wake: Option<WakeFuture>,
        /// The latest instant at which to try again even without a signal: the holder's
        /// expiry, or a jittered fallback for lost messages.
        retry_at: Option<Instant>,
    },
}

impl Attempt {
    /// Busy, and the next attempt follows at once, without a signal: the attempt changed
    /// the waiter's own place (took a ticket, found its place gone, must start over) and
    /// the next look decides.
    pub fn again_now() -> Attempt {
        Attempt::Busy {
            wake: None,
            retry_at: Some(Instant::now()),
        }
    }
}

impl std::fmt::Debug for Attempt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Attempt::Acquired(l) => f.debug_tuple("Acquired").field(l).finish(),
            Attempt::Busy { retry_at, wake } => f
                .debug_struct("Busy")
                .field("retry_at", retry_at)
                .field("wake", &wake.is_some())
                .finish(),
        }
    }
}

/// A bound on attempts within one `acquire`, as a guard against a backend whose wake signal
/// fires without end; the wait bound itself is the real limit.
pub const MAX_ATTEMPTS: u32 = 1_000_000;

/// The first pause after an attempt failed with a temporary error; it doubles up to
/// [`RETRY_MAX`], jittered.
pub const RETRY_FIRST: Duration = Duration::from_millis(25);
/// The longest pause between attempts that failed with a temporary error.
pub const RETRY_MAX: Duration = Duration::from_millis(500);

/// Runs `attempt` until it acquires, waiting between attempts for its wake signal or its
/// retry instant, for at most `opts.wait()` in all. Validates the key and options first.
///
/// Each attempt is itself bounded by the time left; an attempt cut off by the deadline must
/// be cancel safe (see [`detached`]). An attempt that fails with a temporary error (the
/// backend unreachable, say during a restart) is retried with backoff while time remains.
///
/// When the wait runs out after an attempt that failed, the error is that attempt's
/// ([`LockError::Unavailable`] for a backend gone away), not [`LockError::Timeout`], so a
/// caller (the CLI's exit status, a retry policy) can tell "held by someone else" from
/// "the backend was the problem". A wait cut off before any answer came is a timeout: a
/// wait shorter than a healthy backend's answer says nothing about the backend.
///
/// Without a [`LastCheck`]: a backend whose wake signal and re-checks are sparse (a
/// queued Redis waiter sends nothing between re-checks seconds apart) may not notice a
/// server that stopped answering before its wait runs out; see [`acquire_checked`].
pub async fn acquire_with<F, Fut>(key: &str, opts: &LockOptions, attempt: F) -> Result<Lease>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Attempt>>,
{
    acquire_checked(key, opts, LastCheck::NONE, attempt).await
}

/// One more attempt of a wait about to run out, [`LastCheck::before`] its deadline, when no
/// attempt is due by then anyway: a backend that stopped answering without closing its
/// connections (hung, SIGSTOPped, a black hole) then fails that attempt — after its
/// request timeout, still inside the wait — and the wait ends with that error
/// ([`LockError::Unavailable`]) rather than [`LockError::Timeout`], which the CLI reports
/// as "held by someone else" (exit 75, where a script retries on 69). Costs one request
/// per wait that runs out, none per grant.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LastCheck {
    /// How long before the deadline the last attempt starts: the backend's request
    /// timeout, plus a quarter for the error to come back before the deadline. Zero: no
    /// last check (a wait shorter than this has none either: an attempt could not fail
    /// within it).
    pub before: Duration,
}

impl LastCheck {
    /// No last check.
    pub const NONE: LastCheck = LastCheck { before: Duration::ZERO };

    /// A last check for a backend whose requests fail after `request_timeout` without an
    /// answer: it starts 1.25 × `request_timeout` before the deadline.
    pub fn for_request_timeout(request_timeout: Duration) -> LastCheck {
        LastCheck {
            before: request_timeout.saturating_add(request_timeout / 4),
        }
    }

    /// The error of a wait whose last check was cut off by its deadline without an
    /// answer: it had at least [`before`](Self::before), more than a healthy backend's
    /// request timeout, so the backend stopped answering.
    fn unanswered(self, key: &str) -> LockError {
        LockError::Unavailable {
            message: format!(
                "no answer to the last check of the wait for `{key}` within {:?}: the backend stopped answering",
                self.before
            ),
            source: None,
        }
    }

    /// Whether a check sent at `sent` had, by `deadline`, at least a healthy backend's
    /// request timeout (four fifths of [`before`](Self::before)) to answer: only then does
    /// its silence say the backend stopped answering.
    fn had_time(self, sent: Instant, deadline: Instant) -> bool {
        deadline.saturating_duration_since(sent) >= self.before * 4 / 5
    }

    /// The instant of the last check of a wait ending at `deadline` that started at
    /// `start`; `None` when there is none.
    fn at(self, start: Instant, deadline: Instant) -> Option<Instant> {
        if self.before.is_zero() {
            return None;
        }
        deadline.checked_sub(self.before).filter(|&at| at > start)
    }
}

/// [`acquire_with`], with a [`LastCheck`] before the deadline.
///
/// # Cancel safety
/// As [`acquire_with`]: every attempt must be cancel safe.
pub async fn acquire_checked<F, Fut>(
    key: &str,
    opts: &LockOptions,
    last_check: LastCheck,
    mut attempt: F,
) -> Result<Lease>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Attempt>>,
{
    let wait = WaitBound::start(key, opts)?;
    let (deadline, timeout) = (wait.deadline, || wait.timeout());
    let mut check_at = last_check.at(wait.start, deadline);
    let mut last_error: Option<LockError> = None;
    let mut backoff = Backoff::new(deadline);
    let mut dead = DeadOnArrival::default();
    for _ in 0..MAX_ATTEMPTS {
        // The first attempt that starts at or after the check's instant is the last check;
        // one before it (a wake, a re-check) leaves the check for later.
        let started = Instant::now();
        let checking = check_at.is_some_and(|at| started >= at);
        if checking {
            check_at = None;
        }
        let outcome = match tokio::time::timeout_at(deadline, attempt()).await {
            Ok(Ok(outcome)) => outcome,
            Ok(Err(e)) => {
                last_error = Some(backoff.pause_or_fail(e).await?);
                continue;
            }
            Err(_) if checking && last_check.had_time(started, deadline) => {
                return Err(last_check.unanswered(wait.key));
            }
            Err(_) => return Err(last_error.take().unwrap_or_else(timeout)),
        };
        last_error = None;
        backoff.reset();
        match outcome {
            Attempt::Acquired(lease) => {
                let (round_trip, ttl) = (lease.since_sent(), lease.ttl());
                match lease.into_live() {
                    Ok(lease) => return Ok(lease),
                    Err(e) => {
                        dead.record(key, round_trip, ttl)?;
                        last_error = Some(backoff.pause_or_fail(e).await?);
                    }
                }
            }
            Attempt::Busy { wake, retry_at } => {
                let mut until = retry_at.map_or(deadline, |r| r.min(deadline));
                let now = Instant::now();
                if now >= deadline {
                    return Err(timeout());
                }
                if let Some(at) = check_at.filter(|&at| until > at) {
                    // The wait would run out with no attempt at or after `at`: make one
                    // there (at once when `at` has passed).
                    until = at.max(now);
                }
                match wake {
                    Some(wake) => {
                        tokio::select! {
                            _ = wake => {}
                            _ = tokio::time::sleep_until(until) => {}
                        }
                    }
                    None => tokio::time::sleep_until(until).await,
                }
            }
        }
    }
    Err(timeout())
}

/// Like [`acquire_with`], for backends whose waiting is a queue rather than attempts with
/// wake signals (etcd, ZooKeeper): `attempt` takes a place in the queue and waits for its
/// turn in its own way, returning the lease, or `Ok(None)` to start over at once (our place
/// vanished). Temporary errors are retried with backoff while the wait lasts; the whole is
/// bounded by `opts.wait()`. Validates the key and options first.
///
/// Each attempt gets a fresh [`Enqueued`] and marks it once the backend has answered and
/// its place is taken. When the wait runs out during an attempt that marked it, the error
/// is [`LockError::Timeout`] (others were ahead of us); during one that did not, it is the
/// previous attempt's error when that one failed (a waiter whose server died: its stream
/// broke, and every read after failed), as in [`acquire_with`].
///
/// A queued waiter that sends nothing while it waits may not notice a server that stopped
/// answering without closing its connections; see [`queue_checked`].
pub async fn queue_with<F, Fut>(key: &str, opts: &LockOptions, attempt: F) -> Result<Lease>
where
    F: FnMut(Enqueued) -> Fut,
    Fut: Future<Output = Result<Option<Lease>>>,
{
    queue_checked(key, opts, LastCheck::NONE, || std::future::ready(Ok(())), attempt).await
}

/// [`queue_with`], with a [`LastCheck`] made by `probe` (a cheap request that succeeds
/// when the backend answers, bounded by its request timeout): once per wait, at
/// [`LastCheck::before`] the deadline, beside the attempt still waiting for its turn (the
/// attempt goes on: the probe does not cost the waiter its place). When the probe failed
/// and the deadline then cuts the attempt off, the wait ends with the probe's error
/// ([`LockError::Unavailable`]), not [`LockError::Timeout`].
///
/// # Cancel safety
/// As [`queue_with`]: every attempt must be cancel safe; so must `probe`'s future (it is
/// dropped when the attempt ends first).
pub async fn queue_checked<F, Fut, P, PFut>(
    key: &str,
    opts: &LockOptions,
    last_check: LastCheck,
    probe: P,
    mut attempt: F,
) -> Result<Lease>
where
    F: FnMut(Enqueued) -> Fut,
    Fut: Future<Output = Result<Option<Lease>>>,
    P: Fn() -> PFut,
    PFut: Future<Output = Result<()>>,
{
    let wait = WaitBound::start(key, opts)?;
    let (deadline, timeout) = (wait.deadline, || wait.timeout());
    let mut check_at = last_check.at(wait.start, deadline);
    let mut check_failed: Option<LockError> = None;
    let mut last_error: Option<LockError> = None;
    let mut backoff = Backoff::new(deadline);
    let mut dead = DeadOnArrival::default();
    for _ in 0..MAX_ATTEMPTS {
        // This attempt's probe, if it has one, is sent at `at` or, when the attempt starts
        // later (a restart), at once.
        let started = Instant::now();
        let queued = Enqueued::default();
        let run = tokio::time::timeout_at(deadline, attempt(queued.clone()));
        tokio::pin!(run);
        let outcome = match check_at {
            None => run.await,
            Some(at) => {
                let check = async {
                    tokio::time::sleep_until(at).await;
                    probe().await
                };
                tokio::pin!(check);
                loop {
                    tokio::select! {
                        outcome = &mut run => break outcome,
                        checked = &mut check, if check_at.is_some() => {
                            check_at = None;
                            check_failed = checked.err();
                        }
                    }
                }
            }
        };
        match outcome {
            Ok(Ok(Some(lease))) => {
                let (round_trip, ttl) = (lease.since_sent(), lease.ttl());
                match lease.into_live() {
                    Ok(lease) => return Ok(lease),
                    Err(e) => {
                        dead.record(key, round_trip, ttl)?;
                        last_error = Some(backoff.pause_or_fail(e).await?);
                    }
                }
            }
            Ok(Ok(None)) => last_error = None,
            Ok(Err(e)) => last_error = Some(backoff.pause_or_fail(e).await?),
            Err(_) if check_failed.is_some() => return Err(check_failed.take().unwrap_or_else(timeout)),
            // The probe had a healthy backend's time and no answer by the deadline: as a
            // failed one. (One sent late — an attempt that restarted after `at` — says
            // nothing by its silence.)
            Err(_) if check_at.is_some_and(|at| last_check.had_time(at.max(started), deadline)) => {
                return Err(last_check.unanswered(wait.key));
            }
            Err(_) if queued.is_marked() => return Err(timeout()),
            Err(_) => return Err(last_error.take().unwrap_or_else(timeout)),
        }
    }
    Err(timeout())
}

/// Handed to each attempt of [`queue_with`], which marks it once the backend has answered
/// and the attempt's place in the queue is taken: from then on, a wait that runs out is a
/// [`LockError::Timeout`] (others were ahead), whatever an earlier attempt's error was.
#[derive(Clone, Debug, Default)]
pub struct Enqueued(Arc<AtomicBool>);

impl Enqueued {
    /// Our place in the queue is taken (the backend answered).
    pub fn mark(&self) {
        self.0.store(true, Ordering::Relaxed);
    }

    fn is_marked(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// How many grants of one `acquire` may arrive with no validity left before it stops with
/// [`LockError::InvalidInput`]: one such grant can be bad luck (a pause, a slow answer),
/// several in a row mean the TTL is shorter than the backend's grant round trip, and every
/// further attempt would only burn a token.
pub const MAX_DEAD_ON_ARRIVAL: u32 = 3;

/// Counts the grants of one `acquire` that arrived with no validity left, and the slowest
/// of their round trips.
#[derive(Default)]
struct DeadOnArrival {
    count: u32,
    slowest: Duration,
}

impl DeadOnArrival {
    /// Records one dead grant; the [`MAX_DEAD_ON_ARRIVAL`]th whose answer took at least the
    /// TTL is an error naming the TTL and the round trip measured. A grant dead for another
    /// reason (lost on the server before it was handed out) is only retried, as before.
    fn record(&mut self, key: &str, round_trip: Duration, ttl: Duration) -> Result<()> {
        if round_trip < ttl {
            return Ok(());
        }
        self.count += 1;
        self.slowest = self.slowest.max(round_trip);
        if self.count < MAX_DEAD_ON_ARRIVAL {
            return Ok(());
        }
        let grants = format!("{} grants of `{key}` in one acquire", self.count);
        Err(ttl_below_round_trip(ttl, &grants, "the slowest answer", self.slowest))
    }
}

/// The [`LockError::InvalidInput`] of a TTL shorter than the grant round trip: `grants`
/// says which grants arrived with no validity left, `answer` names the round trip
/// measured. Durations in human form (`1ms`, `4ms 212us`), to the microsecond.
pub(crate) fn ttl_below_round_trip(ttl: Duration, grants: &str, answer: &str, round_trip: Duration) -> LockError {
    use crate::options::duration_text::human;
    let round_trip = Duration::from_micros(u64::try_from(round_trip.as_micros()).unwrap_or(u64::MAX));
    LockError::invalid_input(format!(
        "ttl {} is shorter than this backend's grant round trip: {grants} arrived with no validity left \
         ({answer} took {}; given back); use a TTL well above that (seconds, not milliseconds)",
        human(ttl),
        human(round_trip)
    ))
}

/// The bound of one `acquire`: validates its key and options, and knows its deadline and
/// the timeout error to give when it passes.
struct WaitBound<'a> {
    key: &'a str,
    start: Instant,
    deadline: Instant,
}

impl<'a> WaitBound<'a> {
    fn start(key: &'a str, opts: &LockOptions) -> Result<Self> {
        validate_key(key)?;
        opts.validate_for_wait()?;
        let start = Instant::now();
        Ok(WaitBound {
            key,
            start,
            deadline: start + opts.wait(),
        })
    }

    fn timeout(&self) -> LockError {
        LockError::Timeout {
            key: self.key.to_owned(),
            waited: self.start.elapsed(),
        }
    }
}

/// Jittered exponential backoff between attempts that failed with a temporary error,
/// bounded by a deadline.
struct Backoff {
    next: Duration,
    deadline: Instant,
}

impl Backoff {
    fn new(deadline: Instant) -> Self {
        Backoff {
            next: RETRY_FIRST,
            deadline,
        }
    }

    fn reset(&mut self) {
        self.next = RETRY_FIRST;
    }

    /// Returns `e` at once when it is not temporary, or when waiting would cross the
    /// deadline; otherwise waits (jittered, doubling up to [`RETRY_MAX`]) and hands `e`
    /// back as the last error seen.
    async fn pause_or_fail(&mut self, e: LockError) -> Result<LockError> {
        if !e.is_temporary() || e.is_timeout() {
            return Err(e);
        }
        let pause = jitter(self.next);
        self.next = (self.next * 2).min(RETRY_MAX);
        if Instant::now() + pause >= self.deadline {
            return Err(e);
        }
        tracing::debug!(error = %e, ?pause, "acquire attempt failed; retrying while the wait lasts");
        tokio::time::sleep(pause).await;
        Ok(e)
    }
}

/// Runs `fut` in its own task and awaits it, so that dropping the caller does not cut the
/// work off halfway: a grant that completes after the caller gave up is dropped inside the
/// task, and [`Lease`]'s drop releases it. This is how network backends make `acquire`
/// cancel safe.
pub async fn detached<T, Fut>(backend: &'static str, fut: Fut) -> Result<T>
where
    T: Send + 'static,
    Fut: Future<Output = Result<T>> + Send + 'static,
{
    match tokio::spawn(fut).await {
        Ok(r) => r,
        Err(e) => Err(LockError::backend(backend, "the acquire task failed", e)),
    }
}

/// Runs a clean-up when dropped while still armed: cancel safety without a task per call.
/// A backend arms it before sending a grant request (the clean-up releases that grant in
/// the background) and disarms it once the outcome is handled — so when the caller drops
/// `acquire` midway, a grant that may have landed is given back instead of blocking others
/// until its TTL.
///
/// ```
/// use std::sync::atomic::{AtomicBool, Ordering};
/// use fencelock::waiting::CancelGuard;
/// static UNDONE: AtomicBool = AtomicBool::new(false);
/// drop(CancelGuard::new(|| UNDONE.store(true, Ordering::SeqCst)));
/// assert!(UNDONE.load(Ordering::SeqCst));
/// CancelGuard::new(|| panic!("disarmed guards do nothing")).disarm();
/// ```
#[must_use = "a guard dropped at once runs its clean-up at once"]
pub struct CancelGuard<F: FnOnce()> {
    cleanup: Option<F>,
}

impl<F: FnOnce()> CancelGuard<F> {
    /// Armed with `cleanup`.
    pub fn new(cleanup: F) -> Self {
        CancelGuard { cleanup: Some(cleanup) }
    }

    /// The work completed: no clean-up.
    pub fn disarm(mut self) {
        self.cleanup = None;
    }
}

impl<F: FnOnce()> Drop for CancelGuard<F> {
    fn drop(&mut self) {
        if let Some(f) = self.cleanup.take() {
            f();
        }
    }
}

impl<F: FnOnce()> std::fmt::Debug for CancelGuard<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CancelGuard")
            .field("armed", &self.cleanup.is_some())
            .finish()
    }
}

/// A random fraction of `base` between 50% and 100%, to spread retries of many waiters.
pub fn jitter(base: Duration) -> Duration {
    let f: f64 = 0.5 + rand::random::<f64>() * 0.5;
    base.mul_f64(f)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::Arc;

    use async_trait::async_trait;

    use super::*;
    use crate::lease::{LeaseOps, LeaseParts};
    use crate::token::{FencingToken, GrantId};

    /// A grant that releases at once.
    struct Gone;

    #[async_trait]
    impl LeaseOps for Gone {
        async fn extend(&self, ttl: Duration) -> Result<Option<Duration>> {
            Ok(Some(ttl))
        }
        async fn release(&self) -> Result<bool> {
            Ok(true)
        }
    }

    /// A grant whose answer took `round_trip`, longer than its TTL of 1 ms.
    async fn late_grant(n: u32, round_trip: Duration, opts: LockOptions) -> Lease {
        let sent_at = Instant::now();
        tokio::time::advance(round_trip).await;
        Lease::new(LeaseParts {
            key: "k".into(),
            token: FencingToken::new(u64::from(n)),
            grant: GrantId::random(),
            sent_at,
            validity: opts.ttl(),
            options: opts,
            ops: Arc::new(Gone),
        })
    }

    // A `try_acquire` whose grant's answer took longer than its TTL answered the temporary
    // `Unavailable` (ZooKeeper, a 1 ms TTL): a caller retries that for ever. Now it is
    // `InvalidInput` naming the TTL and the round trip in human form, the grant given back.
    #[tokio::test(start_paused = true)]
    async fn a_try_whose_grant_took_longer_than_its_ttl_is_not_temporary() {
        let opts = LockOptions::new().with_ttl(Duration::from_millis(1));
        let err = late_grant(1, Duration::from_millis(5), opts)
            .await
            .into_live_for_try()
            .expect_err("a dead grant was handed out");
        assert!(!err.is_temporary(), "{err:?}");
        assert!(matches!(err, LockError::InvalidInput(_)), "{err:?}");
        let text = err.to_string();
        assert!(text.contains("ttl 1ms is shorter than"), "{text}");
        assert!(text.contains("its answer took 5ms"), "{text}");
        // The plain check stays temporary, for `acquire`'s count of dead grants.
        let err = late_grant(2, Duration::from_millis(5), opts)
            .await
            .into_live()
            .expect_err("a dead grant was handed out");
        assert!(err.is_temporary(), "{err:?}");
        assert!(err.to_string().contains("(TTL 1ms)"), "{err}");
    }

    /// A TTL of a second or more that one answer outlasted is a stall (the network, a
    /// pause), not a TTL below the backend's round trip: that try stays temporary, so a
    /// caller retries rather than treating it as its own bug (review helper 206).
    #[tokio::test(start_paused = true)]
    async fn a_try_stalled_past_a_long_ttl_stays_temporary() {
        let opts = LockOptions::new().with_ttl(Duration::from_secs(2));
        let err = late_grant(1, Duration::from_millis(2500), opts)
            .await
            .into_live_for_try()
            .expect_err("a dead grant was handed out");
        assert!(err.is_temporary(), "{err:?}");
    }

    // Issue 13 A4: a TTL shorter than the grant round trip looped for the whole wait,
    // burning a token per attempt. Now the third dead grant ends the acquire.
    #[tokio::test(start_paused = true)]
    async fn a_ttl_shorter_than_the_round_trip_stops_after_a_few_dead_grants() {
        let opts = LockOptions::new()
            .with_ttl(Duration::from_millis(1))
            .with_wait(Duration::from_secs(60));
        let attempts = AtomicU32::new(0);
        let err = acquire_with("k", &opts, || {
            let n = attempts.fetch_add(1, Ordering::SeqCst) + 1;
            async move { Ok(Attempt::Acquired(late_grant(n, Duration::from_millis(5), opts).await)) }
        })
        .await
        .expect_err("a dead grant was handed out");
        assert_eq!(attempts.load(Ordering::SeqCst), MAX_DEAD_ON_ARRIVAL);
        assert!(matches!(err, LockError::InvalidInput(_)), "{err:?}");
        let text = err.to_string();
        assert!(
            text.contains("ttl 1ms is shorter than this backend's grant round trip"),
            "{text}"
        );
        assert!(text.contains("5ms"), "the measured round trip is named: {text}");

        let attempts = AtomicU32::new(0);
        let err = queue_with("k", &opts, |_| {
            let n = attempts.fetch_add(1, Ordering::SeqCst) + 1;
            async move { Ok(Some(late_grant(n, Duration::from_millis(5), opts).await)) }
        })
        .await
        .expect_err("a dead grant was handed out");
        assert_eq!(attempts.load(Ordering::SeqCst), MAX_DEAD_ON_ARRIVAL);
        assert!(matches!(err, LockError::InvalidInput(_)), "{err:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn one_dead_grant_is_retried() {
        let opts = LockOptions::new()
            .with_ttl(Duration::from_millis(10))
            .with_wait(Duration::from_secs(60));
        let attempts = AtomicU32::new(0);
        let lease = acquire_with("k", &opts, || {
            let n = attempts.fetch_add(1, Ordering::SeqCst) + 1;
            let round_trip = if n == 1 {
                Duration::from_millis(50)
            } else {
                Duration::ZERO
            };
            async move { Ok(Attempt::Acquired(late_grant(n, round_trip, opts).await)) }
        })
        .await
        .expect("the second grant is live");
        assert_eq!(lease.token(), FencingToken::new(2));
    }

    /// The backend's request timeout in the last-check tests.
    const REQUEST_TIMEOUT: Duration = Duration::from_millis(200);

    /// A hung backend's answer once its request timeout passed.
    fn no_answer() -> LockError {
        LockError::unavailable("no answer", std::io::Error::other("timed out"))
    }

    /// Options waiting 1 s.
    fn one_second() -> LockOptions {
        LockOptions::new().with_wait(Duration::from_secs(1))
    }

    /// `acquire_with` waiting 1 s, whose first attempt answers "held" (try again in 10 ms)
    /// and every later one as `then` does; the error it ends with.
    async fn busy_once_then<F, Fut>(then: F) -> LockError
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<Attempt>>,
    {
        let attempts = AtomicU32::new(0);
        acquire_with("k", &one_second(), || {
            let later = (attempts.fetch_add(1, Ordering::SeqCst) > 0).then(&then);
            async move {
                match later {
                    None => Ok(Attempt::Busy {
                        wake: None,
                        retry_at: Some(Instant::now() + Duration::from_millis(10)),
                    }),
                    Some(attempt) => attempt.await,
                }
            }
        })
        .await
        .expect_err("acquired a key that stayed held")
    }

    // A wait shorter than the backend's answer (20 ms on etcd, whose answer waits for a
    // disk flush) says nothing about the backend: it is a timeout, as it always was.
    #[tokio::test(start_paused = true)]
    async fn a_wait_cut_off_before_any_answer_is_a_timeout() {
        let err = acquire_with("k", &one_second(), std::future::pending::<Result<Attempt>>)
            .await
            .expect_err("nothing answered");
        assert!(err.is_timeout(), "{err:?}");
        let err = queue_with("k", &one_second(), |_| std::future::pending::<Result<Option<Lease>>>())
            .await
            .expect_err("nothing answered");
        assert!(err.is_timeout(), "{err:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_wait_whose_last_answer_was_busy_is_a_timeout() {
        let err = busy_once_then(std::future::pending).await;
        assert!(err.is_timeout(), "{err:?}");

        let err = queue_with("k", &one_second(), |queued| async move {
            queued.mark();
            std::future::pending().await
        })
        .await
        .expect_err("the key stayed held");
        assert!(err.is_timeout(), "{err:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_wait_whose_last_attempt_failed_ends_with_that_error() {
        let failed = || LockError::unavailable("server down", std::io::Error::other("refused"));
        let err = busy_once_then(|| std::future::ready(Err(failed()))).await;
        assert!(err.to_string().contains("server down"), "{err:?}");

        // Queued once, then the server went away: the attempt that failed is the last word,
        // and so is it when the next attempt is cut off before it queued.
        let attempts = AtomicU32::new(0);
        let err = queue_with("k", &one_second(), |queued| {
            let n = attempts.fetch_add(1, Ordering::SeqCst);
            async move {
                match n {
                    0 => {
                        queued.mark();
                        Err(failed())
                    }
                    _ => std::future::pending().await,
                }
            }
        })
        .await
        .expect_err("the server stayed down");
        assert!(err.to_string().contains("server down"), "{err:?}");
    }

    /// A waiter whose next re-check lies past its deadline (a queued Redis waiter between
    /// sparse re-checks) while the server hangs: the last check, 1.25 × the request
    /// timeout before the deadline, fails with no answer, and the wait ends with that
    /// error, not `Timeout`. With the server healthy, the last check answers "held" and the
    /// wait is a timeout, after exactly one extra attempt.
    #[tokio::test(start_paused = true)]
    async fn a_last_check_before_the_deadline_tells_a_hung_server_from_a_held_key() {
        let check = LastCheck::for_request_timeout(REQUEST_TIMEOUT);
        let opts = LockOptions::new().with_wait(Duration::from_secs(3));
        // Hung: the check fails after the request timeout. Silent: the check never
        // answers at all (an attempt slower than the backend said), cut off by the
        // deadline: also the backend's fault, not a held key.
        for (hung, silent) in [(true, false), (true, true), (false, false)] {
            let attempts = AtomicU32::new(0);
            let start = Instant::now();
            let err = acquire_checked("k", &opts, check, || {
                let n = attempts.fetch_add(1, Ordering::SeqCst);
                async move {
                    if n > 0 && silent {
                        std::future::pending::<()>().await;
                    }
                    if n > 0 && hung {
                        tokio::time::sleep(REQUEST_TIMEOUT).await;
                        return Err(no_answer());
                    }
                    // Queued: the next re-check is due long after the wait ends.
                    Ok(Attempt::Busy {
                        wake: None,
                        retry_at: Some(Instant::now() + Duration::from_secs(10)),
                    })
                }
            })
            .await
            .expect_err("acquired a held key");
            assert!(
                start.elapsed() <= Duration::from_secs(3),
                "waited {:?}",
                start.elapsed()
            );
            if hung {
                assert!(matches!(err, LockError::Unavailable { .. }), "a hung server: {err:?}");
            } else {
                assert!(err.is_timeout(), "a held key: {err:?}");
                // The first, the last check, and the one the deadline cuts off (as without
                // a last check, below).
                assert_eq!(attempts.load(Ordering::SeqCst), 3, "one extra attempt");
            }
        }
        // Without a last check (and with one longer than the wait), the hung server's
        // wait is a timeout: nothing was asked after the first answer.
        for check in [LastCheck::NONE, LastCheck::for_request_timeout(Duration::from_secs(5))] {
            let attempts = AtomicU32::new(0);
            let err = acquire_checked("k", &opts, check, || {
                attempts.fetch_add(1, Ordering::SeqCst);
                std::future::ready(Ok(Attempt::Busy {
                    wake: None,
                    retry_at: Some(Instant::now() + Duration::from_secs(10)),
                }))
            })
            .await
            .expect_err("acquired a held key");
            assert!(err.is_timeout(), "{err:?}");
            assert_eq!(attempts.load(Ordering::SeqCst), 2, "{check:?}");
        }
    }

    /// A wake (a message, a dropped pub/sub connection) that fires before the last check's
    /// instant does not use the check up: the server hanging after that wake (well before
    /// the deadline) still ends the wait `Unavailable`. Failed before (helper-74's review):
    /// the woken attempt was taken for the check, and the wait ended `Timeout`.
    #[tokio::test(start_paused = true)]
    async fn an_early_wake_does_not_use_up_the_last_check() {
        let check = LastCheck::for_request_timeout(REQUEST_TIMEOUT);
        let opts = LockOptions::new().with_wait(Duration::from_secs(3));
        let attempts = AtomicU32::new(0);
        let err = acquire_checked("k", &opts, check, || {
            let n = attempts.fetch_add(1, Ordering::SeqCst);
            async move {
                match n {
                    // Queued; a message arrives 100 ms later.
                    0 => Ok(Attempt::Busy {
                        wake: Some(Box::pin(tokio::time::sleep(Duration::from_millis(100))) as WakeFuture),
                        retry_at: Some(Instant::now() + Duration::from_secs(10)),
                    }),
                    // Woken at 100 ms: still held, the server answers.
                    1 => Ok(Attempt::Busy {
                        wake: None,
                        retry_at: Some(Instant::now() + Duration::from_secs(10)),
                    }),
                    // From then on the server hangs.
                    _ => {
                        tokio::time::sleep(REQUEST_TIMEOUT).await;
                        Err(no_answer())
                    }
                }
            }
        })
        .await
        .expect_err("acquired a held key");
        assert!(
            matches!(err, LockError::Unavailable { .. }),
            "hung from 0.1 s of a 3 s wait, no check at 2.75 s: {err:?} after {} attempts",
            attempts.load(Ordering::SeqCst)
        );
    }

    /// A queued attempt that restarts late in the wait (our place vanished, `Ok(None)`)
    /// drops the probe in flight, and the next one is sent with less than a request
    /// timeout left: its silence at the deadline (a healthy probe takes 180 ms, 150 ms are
    /// left) says nothing, and a waiter in line ends `Timeout`. Failed before
    /// (helper-74's review): `Unavailable`.
    #[tokio::test(start_paused = true)]
    async fn a_probe_sent_late_does_not_make_a_healthy_server_unavailable() {
        let check = LastCheck::for_request_timeout(REQUEST_TIMEOUT);
        let opts = LockOptions::new().with_wait(Duration::from_secs(3));
        let start = Instant::now();
        let attempts = AtomicU32::new(0);
        let probe = || async {
            tokio::time::sleep(Duration::from_millis(180)).await;
            Ok(())
        };
        let err = queue_checked("k", &opts, check, probe, |queued| {
            let n = attempts.fetch_add(1, Ordering::SeqCst);
            async move {
                queued.mark();
                if n == 0 {
                    // In line until 2.85 s, when our place vanishes: queue again.
                    tokio::time::sleep_until(start + Duration::from_millis(2_850)).await;
                    return Ok(None);
                }
                std::future::pending().await
            }
        })
        .await
        .expect_err("acquired a held key");
        assert!(err.is_timeout(), "a healthy server, in line at the deadline: {err:?}");
    }

    /// The same for a queue: a waiter in line (marked) whose probe, 1.25 × the request
    /// timeout before the deadline, gets no answer ends `Unavailable`; one whose probe is
    /// answered ends `Timeout`; the attempt keeps its place either way (it is not
    /// restarted).
    #[tokio::test(start_paused = true)]
    async fn a_last_check_beside_a_queued_wait_tells_a_hung_server_from_a_held_key() {
        let check = LastCheck::for_request_timeout(REQUEST_TIMEOUT);
        let opts = LockOptions::new().with_wait(Duration::from_secs(3));
        for (hung, silent) in [(true, false), (true, true), (false, false)] {
            let (attempts, probes) = (AtomicU32::new(0), AtomicU32::new(0));
            let probe = || {
                probes.fetch_add(1, Ordering::SeqCst);
                async move {
                    if silent {
                        std::future::pending::<()>().await;
                    }
                    if hung {
                        tokio::time::sleep(REQUEST_TIMEOUT).await;
                        return Err(no_answer());
                    }
                    Ok(())
                }
            };
            let err = queue_checked("k", &opts, check, probe, |queued| {
                attempts.fetch_add(1, Ordering::SeqCst);
                async move {
                    queued.mark();
                    std::future::pending().await
                }
            })
            .await
            .expect_err("acquired a held key");
            if hung {
                assert!(matches!(err, LockError::Unavailable { .. }), "a hung server: {err:?}");
            } else {
                assert!(err.is_timeout(), "a held key: {err:?}");
            }
            assert_eq!(attempts.load(Ordering::SeqCst), 1, "the place in line was kept");
            assert_eq!(probes.load(Ordering::SeqCst), 1, "one last check");
        }
    }
}
