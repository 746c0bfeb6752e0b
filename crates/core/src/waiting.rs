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
pub async fn acquire_with<F, Fut>(key: &str, opts: &LockOptions, mut attempt: F) -> Result<Lease>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Attempt>>,
{
    let wait = WaitBound::start(key, opts)?;
    let (deadline, timeout) = (wait.deadline, || wait.timeout());
    let mut last_error: Option<LockError> = None;
    let mut backoff = Backoff::new(deadline);
    let mut dead = DeadOnArrival::default();
    for _ in 0..MAX_ATTEMPTS {
        let outcome = match tokio::time::timeout_at(deadline, attempt()).await {
            Ok(Ok(outcome)) => outcome,
            Ok(Err(e)) => {
                last_error = Some(backoff.pause_or_fail(e).await?);
                continue;
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
                let until = retry_at.map_or(deadline, |r| r.min(deadline));
                if Instant::now() >= deadline {
                    return Err(timeout());
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
pub async fn queue_with<F, Fut>(key: &str, opts: &LockOptions, mut attempt: F) -> Result<Lease>
where
    F: FnMut(Enqueued) -> Fut,
    Fut: Future<Output = Result<Option<Lease>>>,
{
    let wait = WaitBound::start(key, opts)?;
    let (deadline, timeout) = (wait.deadline, || wait.timeout());
    let mut last_error: Option<LockError> = None;
    let mut backoff = Backoff::new(deadline);
    let mut dead = DeadOnArrival::default();
    for _ in 0..MAX_ATTEMPTS {
        let queued = Enqueued::default();
        match tokio::time::timeout_at(deadline, attempt(queued.clone())).await {
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
        Err(LockError::invalid_input(format!(
            "ttl {ttl:?} is shorter than this backend's grant round trip: {} grants of `{key}` in one acquire \
             arrived with no validity left (the slowest answer took {:?}); use a TTL well above that \
             (seconds, not milliseconds)",
            self.count, self.slowest
        )))
    }
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
}
