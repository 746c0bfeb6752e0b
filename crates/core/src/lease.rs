//! [`Lease`]: one grant of a lock, with its token, validity, renewal and loss signal.
//!
//! A backend makes a lease from [`LeaseParts`] and an implementation of [`LeaseOps`] (how
//! to extend and release *this* grant). Everything else — validity measured from the send
//! instant, background renewal, telling the holder about loss, release on drop — lives here
//! once, so every backend behaves the same.

use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use async_trait::async_trait;
use tokio::runtime::Handle;
use tokio::sync::{watch, OwnedMutexGuard};
use tokio::time::Instant;
use tracing::Instrument;

mod timer;

use timer::{Due, Timer};

use crate::cleanup::CleanupGuard;
use crate::error::{LockError, LostReason, Result};
use crate::options::{ttl_ceil_ms, validate_ttl, LockOptions};
use crate::token::{Fence, FencingToken, GrantId};
use crate::waiting::CancelGuard;

/// The `tracing` target of the one WARN a lease logs when it is lost ("lease lost", with
/// its key, token and reason). A program that reports a loss itself, as `fencelock run`
/// does, can turn this event off with the directive `fencelock_core::lease::lost=off`
/// without hiding the lease's other warnings.
pub const LOST_TARGET: &str = "fencelock_core::lease::lost";

/// How a backend extends and releases one grant. Implemented by every backend; called only
/// by [`Lease`].
#[async_trait]
pub trait LeaseOps: Send + Sync + 'static {
    /// Extends this grant so that it lives `ttl` from now on the backend.
    ///
    /// Returns `Ok(Some(validity))`, the time the grant is now valid for, counted from the
    /// moment the request was sent (the lease records that instant just before calling);
    /// `Ok(None)` when the backend no longer holds this grant; `Err` when the backend could
    /// not be asked (temporary errors are retried by auto-renew while validity remains).
    ///
    /// The lease calls `extend` and [`renew`](Self::renew) of one grant one at a time: the
    /// next is called only after the previous one returned (or was given up when the
    /// validity ran out, which makes the lease lost), so requests of one grant land in the
    /// order they were asked — **provided an `Err` means the request will not land**. A
    /// backend whose request can fail on the client and still reach the server later (a
    /// timeout with the request already written) must not let it shorten the grant when
    /// it lands after a later one: make a renewal only lengthen on the server (PostgreSQL's
    /// `greatest`, Redis's `PTTL` check), or send every request of a grant on one ordered
    /// connection (PostgreSQL's extends and renewals go through the granting connection).
    /// A future of either is `'static` once the lease holds the `Arc` it was called
    /// through, and may be finished in a task of its own: a dropped [`Lease::extend`] does
    /// that.
    async fn extend(&self, ttl: Duration) -> Result<Option<Duration>>;

    /// The auto-renewal's extend: the same answer as [`extend`](Self::extend), which it
    /// calls unless the backend overrides it. A backend that renews many leases in one
    /// request (Redis and PostgreSQL batch a window of renewals into one request)
    /// overrides this, so an explicit [`Lease::extend`] is never held back for a window:
    /// it waits only for a renewal of the same lease already in flight, then goes out at
    /// once. The validity is still counted from the moment the lease called.
    async fn renew(&self, ttl: Duration) -> Result<Option<Duration>> {
        self.extend(ttl).await
    }

    /// Releases this grant, and only this grant.
    ///
    /// Returns `Ok(true)` when our grant was removed, `Ok(false)` when it was no longer
    /// there (expired or replaced): in neither case is another holder's grant touched.
    async fn release(&self) -> Result<bool>;

    /// Counts a background [`release`](Self::release) of this grant among the backend's
    /// clean-ups — those its [`close`](crate::DistributedLock::close) waits for — from
    /// this moment until the guard is dropped. The lease calls it synchronously when it
    /// decides on such a release (dropped unreleased, a release cut off in flight, a
    /// validity that ran out), before it spawns the release's task, and keeps the guard
    /// in that task until the release returned: a `close()` called right after the drop
    /// then waits for a release whose task has not run yet.
    ///
    /// The default, `None`, counts nothing: right only for a backend whose `close()`
    /// waits for no clean-ups. Every backend here returns a guard of its
    /// [`Cleanups`](crate::cleanup::Cleanups).
    fn cleanup(&self) -> Option<CleanupGuard> {
        None
    }
}

/// Where a lease stands.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum LeaseState {
    /// Ours, until `valid_until`.
    Held,
    /// The connection to the backend is interrupted; the grant may still be ours until
    /// `valid_until`, but the holder cannot be told if it is taken away. Stop acting if in
    /// doubt. (ZooKeeper's SUSPENDED.)
    Suspended,
    /// Not ours any more. Final: a lost lease stays `Lost` when the holder then releases or
    /// drops it.
    Lost(LostReason),
    /// Released by the holder (explicitly or by drop) while it was live. Final.
    Released,
}

impl LeaseState {
    /// `true` for `Held` and `Suspended`.
    pub fn is_live(&self) -> bool {
        matches!(self, LeaseState::Held | LeaseState::Suspended)
    }
}

/// A snapshot of a lease: its state and the instant its validity ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseStatus {
    /// Where the lease stands.
    pub state: LeaseState,
    /// When the validity ends (monotonic clock), unless renewed.
    pub valid_until: Instant,
}

/// What a backend hands to [`Lease::new`].
pub struct LeaseParts {
    /// The key.
    pub key: String,
    /// The grant's fencing token.
    pub token: FencingToken,
    /// The grant's unique id.
    pub grant: GrantId,
    /// The monotonic instant at which the acquire request was *sent*.
    pub sent_at: Instant,
    /// How long the grant is valid for, counted from `sent_at` (the TTL, or less for
    /// Redlock, which subtracts clock drift).
    pub validity: Duration,
    /// The options it was acquired with (TTL for renewals, auto-renew).
    pub options: LockOptions,
    /// How to extend and release this grant.
    pub ops: Arc<dyn LeaseOps>,
}

struct Shared {
    key: String,
    token: FencingToken,
    grant: GrantId,
    ops: Arc<dyn LeaseOps>,
    status: watch::Sender<LeaseStatus>,
    /// The TTL used for renewals, and the send instant of the newest applied validity.
    renewal: Mutex<Renewal>,
    /// The turn to send a request that sets the validity (a renewal or an extend): held
    /// from just before the request's send instant until its answer is applied, so at
    /// most one such request of this lease is in flight. Why: the server keeps whichever
    /// request *lands* last, while the holder believes the one *asked* last; two in flight
    /// at once may land in the other order (a PostgreSQL extend waiting for a statement
    /// turn behind a newer renewal, two file operations racing for the flock on the
    /// blocking pool, two extends of one lease from two tasks), and an older, shorter
    /// request landing last ended the grant on the server while the holder believed the
    /// newer, longer one. One at a time, ask order is landing order on every backend.
    turn: Arc<tokio::sync::Mutex<()>>,
    /// Renewal and loss counters, labelled when the lease came through `metrics::Metered`.
    metrics: crate::metrics::LeaseMetrics,
    /// Wakes this lease when a renewal is due or its validity runs out (`None` outside a
    /// tokio runtime: then nothing renews it, and its loss is seen when it is looked at).
    timer: Option<Timer>,
    /// This lease's entry in the timer.
    entry: u64,
    /// Itself, for the timer.
    me: Weak<Shared>,
    /// Set when the holder released or dropped the lease: nothing schedules it again.
    finished: AtomicBool,
}

#[derive(Clone)]
struct Renewal {
    ttl: Duration,
    last_sent: Instant,
    /// The last renewal failure since the last success: the reason given if the validity
    /// runs out before a renewal succeeds.
    last_error: Option<String>,
    /// Renew in the background (the lock options' auto-renew).
    auto_renew: bool,
    /// A renewal is in flight (it schedules the next wake-up when it ends): set and
    /// cleared only by its [`InFlight`].
    renewing: bool,
    /// After a failed renewal: when to try again, and how many failed in a row.
    retry_at: Option<Instant>,
    failures: u32,
}

impl Renewal {
    /// When the next renewal is due, for a validity ending at `valid_until`: a third of the
    /// way through it, or the retry instant after a failure. `None` without auto-renew.
    fn due(&self, valid_until: Instant) -> Option<Instant> {
        self.auto_renew.then(|| {
            self.retry_at
                .unwrap_or(self.last_sent + valid_until.saturating_duration_since(self.last_sent) / 3)
        })
    }

    /// A renewal failed with `error` and may be tried again: after a back-off that doubles
    /// with each failure in a row (from `RENEW_RETRY_FIRST`), at most a quarter of the
    /// validity left (until `valid_until`), at least 1 ms.
    fn failed(&mut self, error: String, valid_until: Instant) {
        self.failures = self.failures.saturating_add(1);
        let backoff = RENEW_RETRY_FIRST.saturating_mul(1u32 << self.failures.min(10));
        let now = Instant::now();
        let left = valid_until.saturating_duration_since(now);
        self.retry_at = Some(now + backoff.min(left / 4).max(Duration::from_millis(1)));
        self.last_error = Some(error);
    }
}

impl Shared {
    fn renewal(&self) -> std::sync::MutexGuard<'_, Renewal> {
        match self.renewal.lock() {
            Ok(r) => r,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    fn expiry_reason(&self) -> LostReason {
        self.renewal().last_error.clone().map_or(LostReason::Expired, |e| {
            LostReason::RenewalFailed(format!("retried until the validity ran out; the last try failed: {e}"))
        })
    }

    /// Records a validity obtained by a request sent at `sent`. Newer wins (not longer): a
    /// shorter extend must shorten.
    ///
    /// An answer to a request older than the newest applied one (possible only if two were
    /// in flight, which the lease's turn prevents) is not ignored: it caps the belief to
    /// `sent + validity`. That request may have landed after the newer one, and every
    /// request leaves the server's end at or after its own `sent + validity`, so the
    /// smaller of the two ends is one the server keeps whichever landed last.
    fn apply_validity(&self, sent: Instant, validity: Duration, ttl: Duration) {
        let mut r = self.renewal();
        if sent < r.last_sent {
            drop(r);
            self.cap_validity(sent + validity);
            return;
        }
        r.last_sent = sent;
        r.ttl = ttl;
        r.last_error = None;
        self.status.send_if_modified(|s| {
            if s.state.is_live() {
                s.valid_until = sent + validity;
                true
            } else {
                false
            }
        });
    }

    /// Raises the validity back to `until`, what it was before an extend's cap, when that
    /// extend's input was refused before it was sent (the backend kept the grant as it was). Only a live
    /// lease, and only to a belief it held: never past `until`.
    fn restore_validity(&self, until: Instant) {
        self.status.send_if_modified(|s| {
            if s.state.is_live() && s.valid_until < until && Instant::now() < until {
                s.valid_until = until;
                true
            } else {
                false
            }
        });
    }

    /// Lowers the validity to `until` if it ends later (never raises it).
    fn cap_validity(&self, until: Instant) {
        let lowered = self.status.send_if_modified(|s| {
            if s.state.is_live() && until < s.valid_until {
                s.valid_until = until;
                true
            } else {
                false
            }
        });
        if lowered {
            self.schedule_next(); // the expiry may now come before the wake-up
        }
    }

    /// Moves a live lease to `Lost(reason)`; returns `false` when it was not live, or when
    /// the holder has released or dropped it (`finished`): then the release's answer decides
    /// whether it was held to the end, and nothing the lease learns meanwhile is a loss — a
    /// renewal or a dropped extend answered "not held" because the release removed the grant
    /// first, a backend's check that ran between the release's removal and its answer, a
    /// release sent in time and confirmed after the validity (`Ok(())`: the holder's work
    /// ended within it). Reported anyway, `lost()` resolved and "lease lost" was logged and
    /// counted while `release` returned `Ok`.
    fn mark_lost(&self, reason: LostReason) -> bool {
        if self.finished.load(Ordering::Acquire) {
            return false;
        }
        self.end_lost(reason, true)
    }

    /// [`mark_lost`](Self::mark_lost) without its gate: for the release itself, when the
    /// backend answers that our grant was already gone, and for a drop after the validity
    /// ran out (`give_back: false`: the drop gives the grant back itself, once).
    fn end_lost(&self, reason: LostReason, give_back: bool) -> bool {
        let changed = self.status.send_if_modified(|s| {
            if s.state.is_live() {
                s.state = LeaseState::Lost(reason.clone());
                true
            } else {
                false
            }
        });
        if changed {
            self.unschedule();
            if give_back && matches!(reason, LostReason::Expired | LostReason::RenewalFailed(_)) {
                // The lease lapsed: give the grant back on the backend (only ours is ever
                // touched), so that backends whose grants do not expire by themselves —
                // a ZooKeeper node lives as long as its session — honour the TTL too.
                // Started before the metrics and the log line, which call the caller's
                // recorder and layers: one that panics must not skip it (a review).
                if let Ok(rt) = Handle::try_current() {
                    release_in_background(&self.ops, &rt, &self.key, self.token, "release_after_expiry");
                }
            }
            self.metrics.lost(&reason);
            tracing::warn!(target: LOST_TARGET, key = %self.key, token = %self.token, %reason, "lease lost");
        }
        changed
    }

    fn set_state_if_live(&self, state: LeaseState) {
        self.status.send_if_modified(|s| {
            if s.state.is_live() && s.state != state {
                s.state = state.clone();
                true
            } else {
                false
            }
        });
    }

    /// Moves a live lease to `Released` (the holder released or dropped it): nothing renews
    /// it any more, and its hold ends for the metrics. A lost lease stays `Lost` — both are
    /// final, and a `lost()` that had not yet seen the loss (the holder dropped the lease
    /// right after it was lost) would otherwise find `Released` and wait forever.
    fn set_released(&self) {
        self.stop_renewing();
        let released = self.status.send_if_modified(|s| {
            let live = s.state.is_live();
            if live {
                s.state = LeaseState::Released;
            }
            live
        });
        if released {
            self.metrics.ended(false);
        }
    }

    /// Schedules the next wake-up of this live lease: its renewal, or else its expiry.
    /// Nothing when it is finished, not live, or renewing (the renewal schedules when done).
    fn schedule_next(&self) {
        let Some(timer) = &self.timer else { return };
        if self.finished.load(Ordering::Acquire) {
            return;
        }
        let status = self.status.borrow().clone();
        if !status.state.is_live() {
            return;
        }
        let r = self.renewal();
        if r.renewing {
            return;
        }
        let at = r
            .due(status.valid_until)
            .map_or(status.valid_until, |due| due.min(status.valid_until));
        drop(r);
        timer.schedule(self.entry, at, self.me.clone() as Weak<dyn Due>);
    }

    /// The holder is done with the lease: it is never scheduled again (a renewal in flight
    /// may still land; it schedules nothing).
    fn stop_renewing(&self) {
        self.finished.store(true, Ordering::Release);
        self.unschedule();
    }

    fn unschedule(&self) {
        if let Some(timer) = &self.timer {
            timer.cancel(self.entry);
        }
    }

    fn lost_error(&self, reason: LostReason) -> LockError {
        LockError::LeaseLost {
            key: self.key.clone(),
            token: self.token,
            reason,
        }
    }

    /// Whether the lease is live (for the state) but its validity has run out.
    fn expired_now(&self) -> bool {
        let s = self.status.borrow();
        s.state.is_live() && Instant::now() >= s.valid_until
    }

    /// Marks an expired live lease lost; returns the current state.
    fn refresh(&self) -> LeaseStatus {
        if self.expired_now() {
            let reason = self.expiry_reason();
            self.mark_lost(reason);
        }
        self.status.borrow().clone()
    }

    /// The current status of a live lease; `LeaseLost` once it was lost or released.
    fn live_status(&self) -> Result<LeaseStatus> {
        let status = self.refresh();
        match status.state {
            LeaseState::Lost(reason) => Err(self.lost_error(reason)),
            LeaseState::Released => Err(self.lost_error(LostReason::NotHeld)),
            _ => Ok(status),
        }
    }
}

/// One grant of a lock: the proof that we hold `key`, with the fencing token to show the
/// protected resource.
///
/// * [`token`](Lease::token) and [`fence`](Lease::fence) go with every write to the
///   resource, which rejects stale ones (see [`crate::fencing`]).
/// * [`lost`](Lease::lost) resolves when the lease stops being ours (expired, renewal
///   failed, the backend said so); [`watch`](Lease::watch) follows every change.
/// * With auto-renew the lease is extended in the background every third of its TTL.
/// * [`release`](Lease::release) frees it and says whether it had stayed ours to the end;
///   dropping an unreleased lease releases it in the background, without blocking —
///   counted among its client's clean-ups from the drop on, so that the client's
///   [`close`](crate::DistributedLock::close) waits for that release (bounded).
///
/// Validity is measured with the monotonic clock from the instant the acquire (or extend)
/// request was sent, never from when the answer came back, so the holder always believes
/// in its lease for no longer than the backend keeps it.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> fencelock::Result<()> {
/// use fencelock::{memory::MemoryLock, DistributedLock, LockOptions};
/// let locks = MemoryLock::new();
/// let lease = locks.acquire("report", &LockOptions::new()).await?;
/// println!("writing with token {}", lease.token());
/// lease.release().await?;
/// # Ok(()) }
/// ```
pub struct Lease {
    shared: Arc<Shared>,
    runtime: Option<Handle>,
    finished: bool,
}

impl fmt::Debug for Lease {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Lease")
            .field("key", &self.shared.key)
            .field("token", &self.shared.token)
            .field("grant", &self.shared.grant)
            .field("status", &*self.shared.status.borrow())
            .finish()
    }
}

impl Lease {
    /// Makes a lease of a grant the backend has just made, and schedules it on the
    /// runtime's lease timer (one task per runtime, not one per lease: see `lease/timer.rs`),
    /// which renews it when auto-renew is on and marks it lost when its validity runs out.
    pub fn new(parts: LeaseParts) -> Lease {
        let LeaseParts {
            key,
            token,
            grant,
            sent_at,
            validity,
            options,
            ops,
        } = parts;
        let (status, _) = watch::channel(LeaseStatus {
            state: LeaseState::Held,
            valid_until: sent_at + validity,
        });
        let runtime = Handle::try_current().ok();
        let shared = Arc::new_cyclic(|me| Shared {
            key,
            token,
            grant,
            ops,
            status,
            turn: Arc::new(tokio::sync::Mutex::new(())),
            renewal: Mutex::new(Renewal {
                ttl: options.ttl(),
                last_sent: sent_at,
                last_error: None,
                auto_renew: options.auto_renew(),
                renewing: false,
                retry_at: None,
                failures: 0,
            }),
            metrics: Default::default(),
            timer: runtime.as_ref().map(Timer::of),
            entry: Timer::entry(),
            me: me.clone(),
            finished: AtomicBool::new(false),
        });
        shared.schedule_next();
        Lease {
            shared,
            runtime,
            finished: false,
        }
    }

    /// Hands the lease out only if it is still live: a grant whose validity had already run
    /// out by the time the backend's answer came back (the reply took longer than the TTL,
    /// or a queued waiter's turn came after its validity was spent) is given back in the
    /// background and never returned to the caller. Every `acquire` and `try_acquire`
    /// passes its lease through here before returning it (`try_acquire` through
    /// [`into_live_for_try`](Self::into_live_for_try)) (the waiting loops in
    /// [`crate::waiting`] do it for `acquire`); the Redlock page calls such a grant invalid
    /// for the same reason.
    ///
    /// # Errors
    /// [`LockError::Unavailable`] (temporary: `acquire` tries again while its wait lasts)
    /// when no validity was left.
    pub fn into_live(self) -> Result<Lease> {
        // Read without `refresh`, which would mark the lease lost and give the grant back
        // itself; the drop below gives it back once.
        let status = self.shared.status.borrow().clone();
        if status.state == LeaseState::Held && Instant::now() < status.valid_until {
            return Ok(self);
        }
        let message = format!(
            "the grant of `{}` (token {}) arrived with no validity left (TTL {}): the answer \
             took longer than the TTL; it was given back",
            self.shared.key,
            self.shared.token,
            crate::options::duration_text::human(self.shared.renewal().ttl)
        );
        if DEAD_ON_ARRIVAL_WARNING.allow() {
            tracing::warn!(key = %self.shared.key, token = %self.shared.token, "grant arrived with no validity left; given back (this warning is shown at most once a second)");
        } else {
            tracing::debug!(key = %self.shared.key, token = %self.shared.token, "grant arrived with no validity left; given back");
        }
        // Released, not lost (it was never handed out): the drop below then gives it back
        // once, without the expiry's own give-back or a "lease lost" warning.
        self.shared.set_released();
        drop(self); // releases in the background
        Err(LockError::Unavailable { message, source: None })
    }

    /// The TTL from which a try whose answer outlasted it is taken for a stall (temporary)
    /// rather than a TTL below the backend's round trip ([`into_live_for_try`](Self::into_live_for_try)).
    pub const TRY_STALL_TTL: Duration = Duration::from_secs(1);

    /// [`into_live`](Self::into_live) for `try_acquire`, which makes one attempt: a grant
    /// whose own validity ran out before its answer arrived (the answer took about its TTL
    /// or more), a TTL under [`TRY_STALL_TTL`](Self::TRY_STALL_TTL) (1 s), is
    /// [`LockError::InvalidInput`] naming the TTL and the round trip (given back as
    /// there), not the temporary `Unavailable`. From a second up an answer that slow is
    /// more likely a stall (the network, a pause) than a TTL below the round trip, and stays
    /// `Unavailable`.
    ///
    /// Why not temporary: a caller retries a temporary error, and a TTL below the grant
    /// round trip gives the same answer to every try — each burning a token, forever
    /// (ZooKeeper answered a 1 ms `try_acquire` so). `acquire` tells that from bad luck by
    /// counting dead grants (three in one call); one try cannot, so a pause as long as
    /// the TTL is reported alike — truthfully: that answer took longer than the TTL. A
    /// grant dead for another reason (its answer came in time, the grant was lost on the
    /// server before it was handed out) stays `Unavailable`: a retry may succeed.
    ///
    /// # Errors
    /// As above; [`LockError::Unavailable`] as [`into_live`](Self::into_live) otherwise.
    pub fn into_live_for_try(self) -> Result<Lease> {
        let (round_trip, ttl) = (self.since_sent(), self.ttl());
        let key = self.shared.key.clone();
        // Whether its own validity ran out (not a loss the backend reported): judged on the
        // state before the check, and the time after it — time only moves on.
        let (state, valid_until) = {
            let s = self.shared.status.borrow();
            (s.state.clone(), s.valid_until)
        };
        self.into_live().map_err(|e| {
            let ran_out = matches!(state, LeaseState::Held | LeaseState::Lost(LostReason::Expired))
                && Instant::now() >= valid_until;
            // Only for a TTL under a second: an answer that outlasted a longer one is a
            // stall (the network, a pause), which the next try may not meet.
            if ran_out && ttl < Self::TRY_STALL_TTL {
                crate::waiting::ttl_below_round_trip(ttl, &format!("the grant of `{key}`"), "its answer", round_trip)
            } else {
                e
            }
        })
    }

    /// How long ago the request that made (or last extended) this grant was sent: for a
    /// fresh grant, the round trip of its acquire as far as the backend's answer.
    pub(crate) fn since_sent(&self) -> Duration {
        Instant::now().saturating_duration_since(self.shared.renewal().last_sent)
    }

    /// The TTL this lease was granted with.
    pub(crate) fn ttl(&self) -> Duration {
        self.shared.renewal().ttl
    }

    pub(crate) fn metrics(&self) -> &crate::metrics::LeaseMetrics {
        &self.shared.metrics
    }

    /// The key this lease is for.
    pub fn key(&self) -> &str {
        &self.shared.key
    }

    /// The fencing token of this grant.
    pub fn token(&self) -> FencingToken {
        self.shared.token
    }

    /// The unique id of this grant.
    pub fn grant(&self) -> &GrantId {
        &self.shared.grant
    }

    /// Token and grant id together, to send to the protected resource.
    pub fn fence(&self) -> Fence {
        Fence {
            token: self.shared.token,
            grant: self.shared.grant.clone(),
        }
    }

    /// When the validity ends unless renewed (monotonic clock).
    pub fn valid_until(&self) -> Instant {
        self.shared.status.borrow().valid_until
    }

    /// How much validity is left (zero when it has run out).
    pub fn remaining(&self) -> Duration {
        self.valid_until().saturating_duration_since(Instant::now())
    }

    /// `true` when the lease renews itself in the background (the lock options'
    /// auto-renew, [`LockOptions::with_auto_renew`](crate::LockOptions::with_auto_renew));
    /// `false` when it ends at its TTL unless [`extend`](Self::extend)ed.
    pub fn auto_renews(&self) -> bool {
        self.shared.renewal().auto_renew
    }

    /// `true` while the lease is `Held` and its validity has not run out. Check it right
    /// before acting; the fencing token protects what happens after.
    pub fn is_held(&self) -> bool {
        self.shared.refresh().state == LeaseState::Held
    }

    /// The current status.
    pub fn status(&self) -> LeaseStatus {
        self.shared.refresh()
    }

    /// A receiver that sees every change of status (renewals, suspension, loss, release).
    pub fn watch(&self) -> watch::Receiver<LeaseStatus> {
        self.shared.status.subscribe()
    }

    /// Resolves when the lease is lost, with the reason. Use it in a `select!` beside the
    /// work the lock protects, to stop that work.
    ///
    /// A lease lost before the holder releases or drops it resolves (even if the future
    /// was first polled after the drop). A live lease that is released or dropped was not
    /// lost: the future then **stays pending for ever** — a task spawned to wait on it
    /// alone should be aborted when the lease is given back (or the future selected with
    /// something that ends).
    pub fn lost(&self) -> impl Future<Output = LostReason> + Send + 'static {
        let shared = Arc::clone(&self.shared);
        async move {
            let mut rx = shared.status.subscribe();
            loop {
                // Seen before it is read: a change in between wakes the `changed` below.
                rx.borrow_and_update();
                let status = shared.refresh();
                match status.state {
                    LeaseState::Lost(reason) => return reason,
                    LeaseState::Released => std::future::pending::<()>().await,
                    _ => {}
                }
                // A release in flight: its end (`Released`) is the next change, and the
                // validity's end is no loss any more (see `Shared::mark_lost`).
                let releasing = shared.finished.load(Ordering::Acquire);
                tokio::select! {
                    changed = rx.changed() => {
                        if changed.is_err() {
                            std::future::pending::<()>().await;
                        }
                    }
                    _ = tokio::time::sleep_until(status.valid_until), if !releasing => {}
                }
            }
        }
    }

    /// A handle through which the backend reports loss or suspension it learns of itself
    /// (for backend authors).
    pub fn reporter(&self) -> LeaseReporter {
        LeaseReporter {
            shared: Arc::downgrade(&self.shared),
        }
    }

    /// Extends the lease so that it lives `ttl` from now; later auto-renewals use `ttl` too.
    /// `ttl` is rounded up to whole milliseconds first ([`ttl_ceil_ms`]): the backend is
    /// asked for, and the holder believes, the TTL a server keeps. A backend may grant less
    /// than `ttl` (ZooKeeper: at most ¾ of the session timeout, less the grant's round
    /// trip): the lease then counts what the backend answered — read
    /// [`remaining`](Self::remaining) after.
    ///
    /// One request of a lease is in flight at a time: called while a background renewal
    /// (or another `extend`) of this lease is in flight, it waits for that answer first —
    /// bounded by the validity left, as that request is — and then sends at once (it is
    /// never held back for a batch of renewals). From its send instant on, renewals use
    /// `ttl` — unless the backend refuses it with a permanent error (say a TTL above
    /// Redlock's `restart_delay`): then they keep the TTL they had. (Two requests in
    /// flight could land in the other order than they were asked;
    /// the server keeps the one that lands last, the holder believes the one asked last.)
    ///
    /// Fails with [`LockError::LeaseLost`] when the lease is already lost or its validity ran
    /// out — even if the backend would still accept it, because another holder may have come
    /// and gone in between — or when the backend no longer holds our grant.
    ///
    /// # Errors
    /// [`LockError::InvalidInput`] for a TTL out of range; [`LockError::LeaseLost`] as
    /// above; the backend's error when it could not be asked (the lease keeps its current
    /// validity, or `now + ttl` if that is shorter); [`LockError::Unavailable`] also when
    /// the request in flight ahead of it (a renewal, or another `extend` of this lease) was
    /// not answered before the validity it started with ran out — nothing was sent, and the
    /// lease is live until that request's end says otherwise.
    ///
    /// # Panics
    /// When the backend's `extend` panics: the request runs in a task of its own, and its
    /// panic is raised again here ([`std::panic::resume_unwind`]). The lease stays
    /// consistent: it keeps its validity (or `now + ttl` if that is shorter), and
    /// auto-renewal goes on.
    ///
    /// # Cancel safety
    /// Cancel safe: dropping the future leaves the lease consistent. Dropped while it waits
    /// for a request in flight, nothing was sent and nothing changes. Once sent, the request
    /// may still reach the backend, so: the validity is lowered to `now + ttl` before the
    /// request is sent when that is earlier (a shorter TTL never outlives the holder's
    /// belief), and the request is finished in a task of its own, which applies its answer
    /// (a grant found gone makes the lease lost) and only then lets the next renewal go out
    /// — a renewal sent before the dropped request was answered could land before it, and
    /// be cut short by it on the server while the holder believed the renewal. Renewals
    /// use `ttl` from the send on, as if the call had completed.
    pub async fn extend(&self, ttl: Duration) -> Result<()> {
        let ttl = ttl_ceil_ms(ttl);
        validate_ttl(ttl)?;
        let shared = &self.shared;
        let span = tracing::info_span!("fencelock.extend", key = %shared.key, token = %shared.token, ttl_ms = ttl.as_millis() as u64);
        async move {
            let status = shared.live_status()?;
            // Wait for the request in flight, if any: it ends (answered, or the lease lost)
            // by the end of this validity.
            let left = status.valid_until.saturating_duration_since(Instant::now());
            let turn = tokio::time::timeout(left, Arc::clone(&shared.turn).lock_owned()).await;
            let status = shared.live_status()?;
            let Ok(turn) = turn else {
                return Err(LockError::Unavailable {
                    message: "the request in flight (a renewal or another extend) was not answered before the validity it started with ran out".into(),
                    source: None,
                });
            };
            let sent = Instant::now();
            let previous_ttl = std::mem::replace(&mut shared.renewal().ttl, ttl);
            // A shorter TTL may take effect on the backend whatever becomes of this call
            // (no answer, an error, the future dropped): believe the shorter of the two
            // from now on, so the holder never trusts a validity the backend cut.
            shared.cap_validity(sent + ttl);
            // Wait no longer than the (lowered) validity: past it the lease is lost, and an
            // answer would only raise a belief that had run out. This bounds the wait, not
            // when an answer can be applied: one that the task polls just after the
            // deadline (tokio's timer is coarse, a runtime may be busy) is applied if nothing
            // marked the lease lost meanwhile — harmless, as the backend found our grant and
            // extended it, but not "never".
            let bound = status.valid_until.min(sent + ttl).saturating_duration_since(sent);
            let previous = (previous_ttl, status.valid_until);
            let request = send_extend(Arc::clone(shared), turn, sent, previous, ttl, bound).in_current_span();
            match tokio::spawn(request).await {
                Ok(result) => result,
                Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
                Err(e) => Err(LockError::Unavailable {
                    message: format!("the extend's task was cancelled (its runtime is shutting down): {e}"),
                    source: None,
                }),
            }
        }
        .instrument(span)
        .await
    }

    /// Releases the lease. Only our own grant is ever removed.
    ///
    /// `Ok(())` means the lease was ours from acquisition to the call of `release` — where
    /// the holder's critical section ends. When it had been lost before the call (expired,
    /// taken, reported by the backend), our grant is still removed if the backend has it,
    /// and the result is [`LockError::LeaseLost`] so the holder learns that its critical
    /// section may not have been exclusive to the end. A release called in time whose
    /// answer arrives after the validity (a slow disk or server) is `Ok(())`: the work was
    /// done within the validity.
    ///
    /// # Errors
    /// [`LockError::LeaseLost`] as above; the backend's error (`Unavailable`, …) when it
    /// could not confirm the release — the grant then ends with its TTL or session at the
    /// latest.
    ///
    /// # Cancel safety
    /// Cancel safe: once called, the release completes. Dropping the future (say under
    /// `tokio::time::timeout`) before it is first polled drops the lease, which releases it
    /// in the background; dropping it while the request is in flight sends the release
    /// again from a background task. Either way the lease is `Released` at once.
    pub async fn release(mut self) -> Result<()> {
        // Where the lease stood when the holder's work ended; read (an expired lease marked
        // lost) before the lease is finished, after which nothing marks it lost.
        let before = self.shared.refresh();
        self.finished = true;
        self.shared.stop_renewing();
        let shared = Arc::clone(&self.shared);
        let runtime = self.runtime.clone();
        let span = tracing::info_span!("fencelock.release", key = %shared.key, token = %shared.token);
        async move {
            // Once started, a release completes: if this future is dropped while the
            // request is in flight, the guard sends it again from a background task (a
            // release only ever removes our own grant, so a repeat is harmless).
            let guard = release_guard(&shared, runtime);
            let result = shared.ops.release().await;
            guard.disarm();
            if matches!(result, Ok(false)) {
                // The backend no longer had our grant: the lease was lost before the
                // release landed — `Lost`, for `watch()`, `lost()` and the metrics, as the
                // error below says.
                shared.end_lost(LostReason::NotHeld, false);
            }
            shared.set_released();
            match (before.state, result) {
                // Lost before: that is what the holder must learn, whatever the backend said.
                (LeaseState::Lost(reason), _) => Err(shared.lost_error(reason)),
                (_, Err(e)) => Err(e),
                (_, Ok(false)) => Err(shared.lost_error(LostReason::NotHeld)),
                // `before` was taken when the release was called, and was live: the holder's
                // work ended within the validity. How long the answer takes does not matter
                // (CI saw a fsynced file release outlast a 300 ms lease under load).
                (_, Ok(true)) => Ok(()),
            }
        }
        .instrument(span)
        .await
    }
}

/// Sends an explicit extend sent at `sent` and applies its answer (bounded by `bound`, the
/// validity left), holding the lease's turn until then, and then schedules the next
/// renewal. [`Lease::extend`] runs it in a task of its own, so that a dropped extend still
/// finishes here: its request may still land, and no renewal may go out before it did.
/// `(previous_ttl, ttl)`: the renewals' TTL before the call, restored when the backend
/// refused the extend with a permanent error (nothing changed on the server), and the one
/// asked for.
async fn send_extend(
    s: Arc<Shared>,
    turn: OwnedMutexGuard<()>,
    sent: Instant,
    (previous_ttl, previous_until): (Duration, Instant),
    ttl: Duration,
    bound: Duration,
) -> Result<()> {
    let result = match tokio::time::timeout(bound, s.ops.extend(ttl)).await {
        Ok(Ok(Some(validity))) => {
            {
                // Renewed: an earlier renewal's failure no longer calls for a retry, nor
                // counts towards the back-off (as after a successful renewal).
                let mut r = s.renewal();
                r.retry_at = None;
                r.failures = 0;
            }
            s.apply_validity(sent, validity, ttl);
            Ok(())
        }
        // Not marked lost when the holder released meanwhile (this extend's future was
        // dropped, its task goes on): see `Shared::mark_lost`.
        Ok(Ok(None)) => {
            s.mark_lost(LostReason::NotHeld);
            Err(s.lost_error(LostReason::NotHeld))
        }
        // The input refused (a TTL the backend does not allow, checked before anything is
        // sent): nothing changed on the server, so neither do the renewals nor the
        // validity — the cap to `sent + ttl` made before the send is undone (a refused
        // `extend(100ms)` of a 30 s lease left it believing 100 ms, then lost). Any other
        // error keeps both, permanent ones too: the request went out and may have landed
        // on part of the backend (Redlock: the nodes that answered yes applied the
        // shorter TTL, and a quorum refusing the scripts made the error).
        Ok(Err(e @ LockError::InvalidInput(_))) => {
            s.renewal().ttl = previous_ttl;
            s.restore_validity(previous_until);
            Err(e)
        }
        Ok(Err(e)) => Err(e),
        Err(_) => {
            let reason = LostReason::RenewalFailed("the extend got no answer before the validity ran out".into());
            s.mark_lost(reason.clone());
            Err(s.lost_error(reason))
        }
    };
    // The turn first: a renewal the timer wakes in between finds it free (and a wake-up
    // that found it taken only scheduled the expiry, which this replaces).
    drop(turn);
    s.schedule_next();
    result
}

/// Arms a clean-up that releases the grant in the background (and marks the lease
/// released) if the release in flight is dropped before its answer.
fn release_guard(shared: &Arc<Shared>, runtime: Option<Handle>) -> CancelGuard<impl FnOnce()> {
    let shared = Arc::clone(shared);
    CancelGuard::new(move || {
        shared.set_released();
        spawn_release(&shared, runtime.as_ref(), "release_after_cancel");
    })
}

/// Releases the grant from a task of its own on `runtime` (or the current one); without a
/// runtime, logs that the TTL will free it.
fn spawn_release(shared: &Shared, runtime: Option<&Handle>, what: &'static str) {
    let current = Handle::try_current().ok();
    match runtime.or(current.as_ref()) {
        Some(rt) => release_in_background(&shared.ops, rt, &shared.key, shared.token, what),
        None => {
            tracing::warn!(key = %shared.key, token = %shared.token, what, "lease left outside a tokio runtime; the TTL will free it");
        }
    }
}

/// Spawns `ops.release()` on `rt`, counted among the backend's clean-ups
/// ([`LeaseOps::cleanup`]) from now — before the task is spawned, so that a `close()`
/// called at once waits for it — until the release returned.
fn release_in_background(ops: &Arc<dyn LeaseOps>, rt: &Handle, key: &str, token: FencingToken, what: &'static str) {
    let counted = ops.cleanup();
    let ops = Arc::clone(ops);
    let span = tracing::debug_span!("fencelock.background_release", %key, %token, what);
    rt.spawn(
        async move {
            if let Err(e) = ops.release().await {
                tracing::warn!(error = %e, "background release failed; the TTL will free the lock");
            }
            drop(counted);
        }
        .instrument(span),
    );
}

impl Drop for Lease {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        // A lease whose validity ran out before the drop was lost, not released (the timer
        // may not have marked it yet), as `release` reads it first.
        if self.shared.expired_now() {
            self.shared.end_lost(self.shared.expiry_reason(), false);
        }
        self.shared.set_released();
        spawn_release(&self.shared, self.runtime.as_ref(), "release_on_drop");
    }
}

/// Lets a backend report what it learns about a lease by itself (a revoked etcd lease, an
/// expired or suspended ZooKeeper session). Holds the lease weakly.
#[derive(Clone)]
pub struct LeaseReporter {
    shared: Weak<Shared>,
}

impl fmt::Debug for LeaseReporter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LeaseReporter").finish_non_exhaustive()
    }
}

impl LeaseReporter {
    /// The lease is lost; returns `false` if it was already lost or released — or if the
    /// holder has called `release` (or dropped the lease): a grant found gone then may be
    /// the release's own removal (a check that ran between the delete and its answer), and
    /// the release's answer says whether the grant was still ours.
    pub fn lost(&self, reason: LostReason) -> bool {
        self.shared.upgrade().is_some_and(|s| s.mark_lost(reason))
    }

    /// When the lease's validity ends unless it is renewed, while it is live and still the
    /// holder's: `None` once it was lost, its validity ran out, or the holder released or
    /// dropped it. A backend judging whether a silent connection is dead asks this: while
    /// a lease riding on it is valid, a late answer may still renew it.
    pub fn valid_until(&self) -> Option<Instant> {
        let s = self.shared.upgrade()?;
        if s.finished.load(Ordering::Acquire) {
            return None;
        }
        let status = s.status.borrow();
        (status.state.is_live() && Instant::now() < status.valid_until).then_some(status.valid_until)
    }

    /// The connection is interrupted; the lease may still be ours.
    pub fn suspended(&self) {
        if let Some(s) = self.shared.upgrade() {
            s.set_state_if_live(LeaseState::Suspended);
        }
    }

    /// The connection is back and the grant is confirmed ours.
    pub fn resumed(&self) {
        if let Some(s) = self.shared.upgrade() {
            s.set_state_if_live(LeaseState::Held);
        }
    }
}

/// The live leases that ride on one backend session (an etcd lease, a ZooKeeper session),
/// so the session can tell all of them at once when it is lost or suspended.
#[derive(Debug, Default)]
pub struct LeaseRegistry {
    next: std::sync::atomic::AtomicU64,
    leases: Mutex<std::collections::HashMap<u64, LeaseReporter>>,
}

impl LeaseRegistry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    fn map(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<u64, LeaseReporter>> {
        self.leases.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds a lease; returns the id to remove it with.
    pub fn register(&self, reporter: LeaseReporter) -> u64 {
        let id = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.map().insert(id, reporter);
        id
    }

    /// Removes a lease (released).
    pub fn unregister(&self, id: u64) {
        self.map().remove(&id);
    }

    /// How many leases are registered.
    pub fn len(&self) -> usize {
        self.map().len()
    }

    /// `true` when no lease is registered.
    pub fn is_empty(&self) -> bool {
        self.map().is_empty()
    }

    fn all(&self) -> Vec<LeaseReporter> {
        self.map().values().cloned().collect()
    }

    /// Every lease is lost, for `reason`.
    pub fn lost_all(&self, reason: &LostReason) {
        for r in self.all() {
            r.lost(reason.clone());
        }
    }

    /// Every lease is suspended (connection interrupted).
    pub fn suspended_all(&self) {
        for r in self.all() {
            r.suspended();
        }
    }

    /// Every lease is held again (connection back, session intact).
    pub fn resumed_all(&self) {
        for r in self.all() {
            r.resumed();
        }
    }
}

/// The first delay after a failed renewal; it doubles on each failure.
const RENEW_RETRY_FIRST: Duration = Duration::from_millis(10);

/// How soon a renewal that came due while another request of the lease held its turn
/// looks again (see `Due::due`): a wake-up every 10 ms while an extend is in flight.
const SKIPPED_RECHECK: Duration = Duration::from_millis(10);

/// The timer's call: the lease is due for a renewal, or its validity ran out. Renews it (when
/// auto-renew is on) a third of the way through each validity, retries failed renewals
/// while validity remains, and marks the lease lost when the validity runs out.
impl Due for Shared {
    fn due(self: Arc<Self>) {
        if self.finished.load(Ordering::Acquire) {
            return;
        }
        let status = self.status.borrow().clone();
        if !status.state.is_live() {
            return;
        }
        let now = Instant::now();
        if now >= status.valid_until {
            self.mark_lost(self.expiry_reason());
            return;
        }
        let mut r = self.renewal();
        if r.renewing {
            return;
        }
        match r.due(status.valid_until) {
            Some(due) if now >= due => {
                // One request of a lease at a time (see `Shared::turn`). An extend in flight
                // renews the lease too, and schedules the next renewal when its answer is
                // applied. Decided while `r` is held: the extend's `schedule_next` (after it
                // gave the turn back) waits for `r`, so it comes after this and replaces it.
                // Meanwhile this looks again every `SKIPPED_RECHECK` (or at the expiry, if
                // sooner): a turn given back without that `schedule_next` — the backend's
                // extend panicked, its runtime shut down, a caller handed the turn was
                // dropped before using it — left only the expiry scheduled, and the lease
                // went unrenewed until it was reported expired (review of the turn). The
                // validity is read again here: an extend may have lowered it since.
                let Ok(turn) = Arc::clone(&self.turn).try_lock_owned() else {
                    if let Some(timer) = &self.timer {
                        let until = self.status.borrow().valid_until;
                        let next = until.min(Instant::now() + SKIPPED_RECHECK);
                        timer.schedule(self.entry, next, self.me.clone() as Weak<dyn Due>);
                    }
                    return;
                };
                let in_flight = InFlight::start(&self, &mut r);
                drop(r);
                let span = tracing::debug_span!("fencelock.renew", key = %self.key, token = %self.token);
                tokio::spawn(renew(self, turn, in_flight).instrument(span));
            }
            _ => {
                drop(r);
                self.schedule_next();
            }
        }
    }
}

/// A background renewal in flight: [`Renewal::renewing`] is set from [`start`](Self::start)
/// until [`answered`](Self::answered). Dropped before its answer — the backend's `renew`
/// panicked (or something on the way to it did), or its task was dropped with its runtime —
/// it counts as a failed renewal, tried again while validity remains as after a temporary
/// error. (Before, `renewing` stayed set: nothing renewed the lease or scheduled its expiry
/// again, and it ran out at its TTL without being marked lost — review of the lease
/// machinery.)
struct InFlight {
    shared: Option<Arc<Shared>>,
}

impl InFlight {
    fn start(shared: &Arc<Shared>, r: &mut Renewal) -> InFlight {
        r.renewing = true;
        InFlight {
            shared: Some(Arc::clone(shared)),
        }
    }

    /// The renewal got its answer (or gave up waiting for one): the caller applies it.
    fn answered(mut self) {
        if let Some(s) = self.shared.take() {
            s.renewal().renewing = false;
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let Some(s) = self.shared.take() else { return };
        let valid_until = s.status.borrow().valid_until;
        {
            let mut r = s.renewal();
            r.renewing = false;
            if s.finished.load(Ordering::Acquire) {
                return;
            }
            r.failed(
                "the renewal ended without an answer (the backend panicked)".into(),
                valid_until,
            );
        }
        s.metrics.renewal_failed();
        tracing::warn!(key = %s.key, token = %s.token, "a renewal ended without an answer (the backend panicked, or its runtime shut down); trying again while validity remains");
        s.schedule_next();
    }
}

/// One background renewal, bounded by the validity left, sent holding the lease's `turn`
/// (taken when it was decided) until its answer is applied; then schedules the next
/// wake-up. The TTL and the validity are read with the turn held, so an extend answered
/// just before counts.
async fn renew(s: Arc<Shared>, turn: OwnedMutexGuard<()>, in_flight: InFlight) {
    let sent = Instant::now();
    let ttl = s.renewal().ttl;
    let valid_until = s.status.borrow().valid_until;
    let answer = tokio::time::timeout(valid_until.saturating_duration_since(sent), s.ops.renew(ttl)).await;
    in_flight.answered();
    if s.finished.load(Ordering::Acquire) {
        // The holder released meanwhile: the release's answer decides whether the lease
        // was held to the end. This one may say "not held" only because the release
        // removed the grant first (a batched renewal can go out after the release);
        // `mark_lost` would ignore it too, but neither does it count as a failure.
        return;
    }
    match answer {
        Ok(Ok(Some(validity))) => {
            s.metrics.renewed();
            tracing::debug!(ttl_ms = ttl.as_millis() as u64, "renewed");
            {
                let mut r = s.renewal();
                r.retry_at = None;
                r.failures = 0;
            }
            s.apply_validity(sent, validity, ttl);
        }
        Ok(Ok(None)) => {
            // "Not held" after our own validity ran out: the lease was lost at its expiry,
            // before this answer (a TTL of a few ms, whose renewal lands after the backend
            // expired the grant: a new-user trial saw `NotHeld` for a 1 ns TTL).
            let reason = if Instant::now() >= valid_until {
                s.expiry_reason()
            } else {
                LostReason::NotHeld
            };
            s.mark_lost(reason);
            return;
        }
        Ok(Err(e)) if !e.is_temporary() => {
            s.metrics.renewal_failed();
            // Ended now, not at the validity's end: the same renewal would be refused again.
            s.mark_lost(LostReason::RenewalFailed(format!(
                "refused with an error a retry would meet again, so the lease ended at once: {e}"
            )));
            return;
        }
        Ok(Err(e)) => {
            s.metrics.renewal_failed();
            let mut r = s.renewal();
            tracing::debug!(error = %e, failures = r.failures, "renewal failed; retrying while validity remains");
            r.failed(e.to_string(), valid_until);
        }
        Err(_)
            if valid_until.saturating_duration_since(sent) < crate::options::MIN_TTL
                && s.renewal().last_error.is_none() =>
        {
            // Sent with less validity left than the shortest TTL, and nothing failed
            // before: its silence says nothing of the backend — the lease expired (a TTL
            // of a few ms, below what a renewal can be answered in; a new-user trial saw
            // `RenewalFailed` for a 1 ns TTL).
            s.mark_lost(LostReason::Expired);
            return;
        }
        Err(_) => {
            s.metrics.renewal_failed();
            // The reason says once that the validity ran out, what the last renewal got, and
            // an earlier failure when there was one (it is usually the cause: a reset
            // connection, then silence). Cloned, not
            // taken: the timer may read it for the same loss in the same instant.
            let earlier = s.renewal().last_error.clone();
            let why = match earlier {
                Some(e) => format!(
                    "retried until the validity ran out; the last renewal got no answer, the one before failed: {e}"
                ),
                None => "retried until the validity ran out; the last renewal got no answer".to_owned(),
            };
            s.mark_lost(LostReason::RenewalFailed(why));
            return;
        }
    }
    drop(turn);
    s.schedule_next();
}

/// Rate limit of the "grant arrived with no validity left" warning: a TTL shorter than the
/// backend's round trip would otherwise print one per attempt (dozens a second).
static DEAD_ON_ARRIVAL_WARNING: RateLimit = RateLimit::new(Duration::from_secs(1));

/// Allows an event at most once per `every`, process-wide (lock-free; a race lets at most
/// one extra through).
struct RateLimit {
    every_ms: u64,
    last_ms: std::sync::atomic::AtomicU64,
}

impl RateLimit {
    const fn new(every: Duration) -> Self {
        RateLimit {
            every_ms: every.as_millis() as u64,
            last_ms: std::sync::atomic::AtomicU64::new(0),
        }
    }

    fn allow(&self) -> bool {
        use std::sync::atomic::Ordering;
        static EPOCH: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
        // +every so that the first event is always allowed.
        let now = EPOCH.get_or_init(std::time::Instant::now).elapsed().as_millis() as u64 + self.every_ms;
        let last = self.last_ms.load(Ordering::Relaxed);
        now >= last + self.every_ms
            && self
                .last_ms
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    use super::*;

    /// Counts releases; extends answer with `validity`, after `delay`.
    struct Counting {
        releases: AtomicUsize,
        delay: Duration,
    }

    #[async_trait]
    impl LeaseOps for Counting {
        async fn extend(&self, ttl: Duration) -> Result<Option<Duration>> {
            tokio::time::sleep(self.delay).await;
            Ok(Some(ttl))
        }

        async fn release(&self) -> Result<bool> {
            tokio::time::sleep(self.delay).await;
            self.releases.fetch_add(1, Ordering::SeqCst);
            Ok(true)
        }
    }

    fn lease(ops: &Arc<Counting>, sent_at: Instant, validity: Duration) -> Lease {
        unrenewed(Arc::clone(ops) as Arc<dyn LeaseOps>, sent_at, validity)
    }

    /// A lease on `ops` granted at `sent_at` for `validity` (its TTL), without auto-renew.
    fn unrenewed(ops: Arc<dyn LeaseOps>, sent_at: Instant, validity: Duration) -> Lease {
        Lease::new(LeaseParts {
            key: "k".into(),
            token: FencingToken::new(1),
            grant: GrantId::random(),
            sent_at,
            validity,
            options: LockOptions::new().with_ttl(validity).with_auto_renew(false),
            ops,
        })
    }

    fn ops(delay: Duration) -> Arc<Counting> {
        Arc::new(Counting {
            releases: AtomicUsize::new(0),
            delay,
        })
    }

    /// A fresh 3 s lease on `ops`, renewed in the background (the default options).
    fn auto_renewed(ops: Arc<dyn LeaseOps>) -> Lease {
        Lease::new(LeaseParts {
            key: "k".into(),
            token: FencingToken::new(1),
            grant: GrantId::random(),
            sent_at: Instant::now(),
            validity: Duration::from_secs(3),
            options: LockOptions::new().with_ttl(Duration::from_secs(3)),
            ops,
        })
    }

    /// The reason a spawned `lost()` resolved with, within 1 s (paused clock).
    async fn resolved(lost: tokio::task::JoinHandle<LostReason>) -> LostReason {
        tokio::time::timeout(Duration::from_secs(1), lost)
            .await
            .expect("lost() never resolved")
            .expect("the lost() task")
    }

    /// Lets spawned background tasks run to completion on the paused clock.
    async fn settle() {
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_grant_with_no_validity_left_is_given_back_not_handed_out() {
        let ops = ops(Duration::ZERO);
        let sent = Instant::now();
        tokio::time::advance(Duration::from_millis(50)).await; // the answer took 50 ms
        let err = lease(&ops, sent, Duration::from_millis(20))
            .into_live()
            .expect_err("a dead grant was handed out");
        assert!(
            matches!(err, LockError::Unavailable { .. }) && err.is_temporary(),
            "{err}"
        );
        settle().await;
        assert_eq!(
            ops.releases.load(Ordering::SeqCst),
            1,
            "the dead grant was not given back"
        );

        let live = lease(&ops, Instant::now(), Duration::from_secs(1))
            .into_live()
            .expect("a live grant");
        assert!(live.is_held());
        live.release().await.expect("release");
    }

    /// `extend` asks the backend for the TTL rounded up to whole milliseconds — what a
    /// server keeps — and the holder believes that same TTL: with 1999.9 ms the backend
    /// was asked 1999.9 ms, sent it as 1999 ms, and the holder believed 1999.9 ms.
    #[tokio::test(start_paused = true)]
    async fn extend_counts_the_ttl_the_backend_is_sent() {
        struct Asked(std::sync::Mutex<Vec<Duration>>);
        #[async_trait]
        impl LeaseOps for Asked {
            async fn extend(&self, ttl: Duration) -> Result<Option<Duration>> {
                self.0.lock().unwrap().push(ttl);
                Ok(Some(ttl))
            }
            async fn release(&self) -> Result<bool> {
                Ok(true)
            }
        }
        let asked = Arc::new(Asked(std::sync::Mutex::default()));
        let held = unrenewed(
            Arc::clone(&asked) as Arc<dyn LeaseOps>,
            Instant::now(),
            Duration::from_secs(1),
        );
        let sent = Instant::now();
        held.extend(Duration::from_micros(1_999_900)).await.expect("extend");
        assert_eq!(*asked.0.lock().unwrap(), [Duration::from_millis(2000)]);
        assert_eq!(held.valid_until(), sent + Duration::from_millis(2000));
        assert_eq!(held.ttl(), Duration::from_millis(2000), "the renewals' TTL");
        held.release().await.expect("release");
    }

    /// A lease dropped after its validity ran out, before the timer marked it, ends `Lost`
    /// (as `release` reads it first), not `Released`: before, `lost()` stayed pending and
    /// the metrics counted a release (review of this session's diff).
    #[tokio::test(start_paused = true)]
    async fn a_lease_dropped_after_its_validity_ran_out_ends_lost() {
        let ops = ops(Duration::from_millis(1));
        let held = unrenewed(
            Arc::clone(&ops) as Arc<dyn LeaseOps>,
            Instant::now(),
            Duration::from_millis(100),
        );
        let mut watch = held.watch();
        let lost = tokio::spawn(held.lost());
        tokio::task::yield_now().await;
        tokio::time::advance(Duration::from_millis(150)).await;
        drop(held);
        let reason = resolved(lost).await;
        assert_eq!(reason, LostReason::Expired);
        assert_eq!(watch.borrow_and_update().state, LeaseState::Lost(LostReason::Expired));
        settle().await;
        assert_eq!(ops.releases.load(Ordering::SeqCst), 1, "given back once");
    }

    /// A release the backend answers "not ours any more" ends the lease `Lost(NotHeld)` —
    /// the error says so, and so do `watch()` and `lost()`; before, the state was
    /// `Released` and a `lost()` waiting on it never resolved.
    #[tokio::test(start_paused = true)]
    async fn a_release_that_finds_the_grant_gone_ends_lost() {
        struct Gone;
        #[async_trait]
        impl LeaseOps for Gone {
            async fn extend(&self, ttl: Duration) -> Result<Option<Duration>> {
                Ok(Some(ttl))
            }
            async fn release(&self) -> Result<bool> {
                Ok(false)
            }
        }
        let held = unrenewed(Arc::new(Gone), Instant::now(), Duration::from_secs(10));
        let watch = held.watch();
        let lost = tokio::spawn(held.lost());
        tokio::task::yield_now().await;
        let err = held.release().await.expect_err("not held");
        assert!(err.is_lease_lost(), "{err}");
        let reason = resolved(lost).await;
        assert_eq!(reason, LostReason::NotHeld);
        assert_eq!(watch.borrow().state, LeaseState::Lost(LostReason::NotHeld));
    }

    /// An extend the backend refused outright (a permanent error: nothing was sent, or the
    /// server refused it) leaves the renewals' TTL as it was. Before, the TTL was set at the
    /// send and kept: Redlock refused `extend(30s)` above its `restart_delay` with
    /// `InvalidInput`, and every later auto-renewal asked for 30 s anyway. A temporary error
    /// keeps the new TTL (the request may have landed; the renewals carry the caller's last
    /// intent, as for a dropped extend).
    #[tokio::test(start_paused = true)]
    async fn a_refused_extend_leaves_the_renewals_ttl_as_it_was() {
        struct Refusing;
        #[async_trait]
        impl LeaseOps for Refusing {
            async fn extend(&self, ttl: Duration) -> Result<Option<Duration>> {
                if ttl > Duration::from_secs(2) {
                    return Err(LockError::InvalidInput("longer than the backend allows".into()));
                }
                if ttl > Duration::from_secs(1) {
                    return Err(LockError::Unavailable {
                        message: "no answer".into(),
                        source: None,
                    });
                }
                Ok(Some(ttl))
            }
            async fn release(&self) -> Result<bool> {
                Ok(true)
            }
        }
        let held = unrenewed(Arc::new(Refusing), Instant::now(), Duration::from_secs(1));
        let err = held.extend(Duration::from_secs(30)).await.expect_err("refused");
        assert!(matches!(err, LockError::InvalidInput(_)), "{err}");
        assert_eq!(
            held.ttl(),
            Duration::from_secs(1),
            "a refused extend set the renewals' TTL"
        );
        assert!(held.is_held());
        let err = held.extend(Duration::from_millis(1500)).await.expect_err("no answer");
        assert!(err.is_temporary(), "{err}");
        assert_eq!(
            held.ttl(),
            Duration::from_millis(1500),
            "a temporary error keeps the caller's TTL"
        );
        held.release().await.expect("release");
    }

    /// An extend the backend refused outright leaves the lease's validity as it was. Before,
    /// the cap to `now + ttl` made before the send stayed: a refused `extend(200ms)` of a
    /// 10 s lease left it believing 200 ms, and it was lost then.
    #[tokio::test(start_paused = true)]
    async fn a_refused_extend_leaves_the_validity_as_it_was() {
        struct TooShort;
        #[async_trait]
        impl LeaseOps for TooShort {
            async fn extend(&self, ttl: Duration) -> Result<Option<Duration>> {
                if ttl < Duration::from_secs(1) {
                    return Err(LockError::InvalidInput("below the backend's minimum TTL".into()));
                }
                Ok(Some(ttl))
            }
            async fn release(&self) -> Result<bool> {
                Ok(true)
            }
        }
        let held = unrenewed(Arc::new(TooShort), Instant::now(), Duration::from_secs(10));
        let before = held.remaining();
        let err = held.extend(Duration::from_millis(200)).await.expect_err("refused");
        assert!(matches!(err, LockError::InvalidInput(_)), "{err}");
        let after = held.remaining();
        assert!(
            after + Duration::from_millis(50) >= before,
            "a refused extend lowered the validity from {before:?} to {after:?}"
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(held.is_held(), "lost after a refused extend, within its validity");
        held.release().await.expect("release");
    }

    /// An extend refused for good *after* it was sent may have landed on part of the
    /// backend (Redlock: two of five nodes applied the shorter TTL, three refused the
    /// scripts — `InvalidConfig`): the cap to `sent + ttl` stays, or the holder would go on
    /// believing the old validity while those nodes let the key go at the shorter one and a
    /// second client took a quorum with them (review helper 206). Only a refusal of the
    /// input itself (`InvalidInput`: checked before anything is sent) restores it.
    #[tokio::test(start_paused = true)]
    async fn an_extend_refused_after_it_was_sent_keeps_the_cap() {
        struct PartlyApplied;
        #[async_trait]
        impl LeaseOps for PartlyApplied {
            async fn extend(&self, _ttl: Duration) -> Result<Option<Duration>> {
                Err(LockError::invalid_config("3 of 5 nodes refused the settings"))
            }
            async fn release(&self) -> Result<bool> {
                Ok(true)
            }
        }
        let held = unrenewed(Arc::new(PartlyApplied), Instant::now(), Duration::from_secs(10));
        let err = held.extend(Duration::from_millis(200)).await.expect_err("refused");
        assert!(matches!(err, LockError::InvalidConfig { .. }), "{err}");
        assert!(
            held.remaining() <= Duration::from_millis(200),
            "a refusal that may have landed in part restored the validity to {:?}",
            held.remaining()
        );
    }

    /// The holder's work ends when it calls `release`; a backend that confirms the grant was
    /// still ours when it removed it has just said nobody else held the key meanwhile. An
    /// answer that arrives after the validity (a slow disk or server under load) is no loss.
    /// (CI reported `LeaseLost { reason: Expired }` for such a release of a file lease.)
    #[tokio::test(start_paused = true)]
    async fn a_release_sent_in_time_and_confirmed_late_is_not_a_loss() {
        let ops = ops(Duration::from_millis(300));
        let held = lease(&ops, Instant::now(), Duration::from_millis(100));
        let lost = tokio::spawn(held.lost());
        held.release()
            .await
            .expect("a release sent within the validity and confirmed");
        settle().await;
        // Nor is it reported as one meanwhile (review of the lease machinery, F2): a
        // `lost()` waiting at the validity's end resolved `Expired`, with the "lease lost"
        // warning, the lost-lease metric and a second release "after the expiry", while
        // `release` said the lease was held to the end.
        assert!(!lost.is_finished(), "reported lost: {:?}", lost.await);
        assert_eq!(ops.releases.load(Ordering::SeqCst), 1, "released again");
    }

    /// A release called after the validity ran out still reports the loss.
    #[tokio::test(start_paused = true)]
    async fn a_release_sent_after_the_validity_reports_the_loss() {
        let ops = ops(Duration::from_millis(1));
        let held = lease(&ops, Instant::now(), Duration::from_millis(100));
        tokio::time::sleep(Duration::from_millis(150)).await;
        let err = held.release().await.expect_err("released after its validity");
        assert!(err.is_lease_lost(), "{err}");
    }

    /// A backend's own check that reports the grant gone while the release is in flight —
    /// etcd's session key check listed the session's keys just after the release's delete
    /// landed — is the release's doing, not a loss: no `lost()`, no "lease lost" warning,
    /// no lost-lease metric; the release's answer decides. (A new user's trial of
    /// `fencelock run` on etcd saw the false warning in 17 of 290 uncontended runs.)
    /// Failed before: the report was taken and `lost()` resolved.
    #[tokio::test(start_paused = true)]
    async fn a_backend_report_of_loss_during_the_release_is_no_loss() {
        struct Checked {
            reporter: std::sync::Mutex<Option<LeaseReporter>>,
            taken: std::sync::Mutex<Option<bool>>,
        }
        #[async_trait]
        impl LeaseOps for Checked {
            async fn extend(&self, ttl: Duration) -> Result<Option<Duration>> {
                Ok(Some(ttl))
            }
            async fn release(&self) -> Result<bool> {
                // The delete landed; the backend's check runs before the answer arrives.
                let reporter = self.reporter.lock().unwrap().clone().expect("a reporter");
                *self.taken.lock().unwrap() = Some(reporter.lost(LostReason::NotHeld));
                tokio::time::sleep(Duration::from_millis(5)).await;
                Ok(true)
            }
        }
        let ops = Arc::new(Checked {
            reporter: std::sync::Mutex::new(None),
            taken: std::sync::Mutex::new(None),
        });
        let held = auto_renewed(Arc::clone(&ops) as Arc<dyn LeaseOps>);
        *ops.reporter.lock().unwrap() = Some(held.reporter());
        let lost = tokio::spawn(held.lost());
        held.release().await.expect("a normal release");
        settle().await;
        assert_eq!(*ops.taken.lock().unwrap(), Some(false), "the report of loss was taken");
        assert!(!lost.is_finished(), "reported lost: {:?}", lost.await);
    }

    /// Review of the lease machinery (F2): an extend dropped in flight finishes in a task of
    /// its own; when the holder releases meanwhile, that extend's answer — "not held",
    /// because the release removed the grant first, or none before the validity's end — is
    /// the release's doing, as for a renewal: no `lost()`, no warning, no lost-lease metric.
    /// Failed before: `lost()` resolved (`NotHeld`, or `RenewalFailed` for the silent one)
    /// while `release` returned `Ok`.
    #[tokio::test(start_paused = true)]
    async fn an_extend_answered_after_the_release_began_is_no_loss() {
        struct Releasing {
            released: AtomicBool,
            silent: bool,
        }
        #[async_trait]
        impl LeaseOps for Releasing {
            async fn extend(&self, ttl: Duration) -> Result<Option<Duration>> {
                if self.silent {
                    std::future::pending::<()>().await;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
                Ok((!self.released.load(Ordering::SeqCst)).then_some(ttl))
            }
            async fn release(&self) -> Result<bool> {
                self.released.store(true, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(200)).await;
                Ok(true)
            }
        }
        for (silent, validity) in [(false, Duration::from_secs(60)), (true, Duration::from_millis(100))] {
            let ops = Arc::new(Releasing {
                released: AtomicBool::new(false),
                silent,
            });
            let held = unrenewed(ops, Instant::now(), validity);
            let lost = tokio::spawn(held.lost());
            let cut = tokio::time::timeout(Duration::from_millis(10), held.extend(Duration::from_secs(30))).await;
            assert!(cut.is_err(), "the extend was meant to be cut off in flight");
            held.release().await.expect("a release in time");
            settle().await;
            assert!(
                !lost.is_finished(),
                "silent: {silent}: the release was reported as a loss: {:?}",
                lost.await
            );
        }
    }

    /// Review of the lease machinery (F3): `Lost` and `Released` are both final, and a lost
    /// lease stays `Lost` when the holder then drops (or releases) it: a `lost()` that had
    /// not yet seen the loss still resolves. Failed before: the drop overwrote `Lost` with
    /// `Released`, and such a `lost()` waited forever.
    #[tokio::test(start_paused = true)]
    async fn a_lost_lease_dropped_at_once_still_resolves_lost() {
        let ops = ops(Duration::ZERO);
        let held = lease(&ops, Instant::now(), Duration::from_secs(60));
        let watch = held.watch();
        let lost = tokio::spawn(held.lost());
        for _ in 0..5 {
            tokio::task::yield_now().await;
        }
        assert!(held.reporter().lost(LostReason::NotHeld));
        drop(held);
        let reason = resolved(lost).await;
        assert_eq!(reason, LostReason::NotHeld);
        settle().await;
        assert_eq!(watch.borrow().state, LeaseState::Lost(LostReason::NotHeld));
    }

    /// The reporter tells a backend how long a lease on its connection may still be
    /// renewed: its validity while it is live, nothing once it ran out, was lost or was
    /// given back.
    #[tokio::test(start_paused = true)]
    async fn the_reporter_knows_the_validity_only_while_the_lease_is_live() {
        let ops = ops(Duration::ZERO);
        let held = lease(&ops, Instant::now(), Duration::from_secs(1));
        let reporter = held.reporter();
        assert_eq!(reporter.valid_until(), Some(held.valid_until()));
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(reporter.valid_until(), None, "a lease whose validity ran out");

        let lost = lease(&ops, Instant::now(), Duration::from_secs(1));
        let reporter = lost.reporter();
        assert!(reporter.lost(LostReason::NotHeld));
        assert_eq!(reporter.valid_until(), None, "a lost lease");

        let released = lease(&ops, Instant::now(), Duration::from_secs(1));
        let reporter = released.reporter();
        released.release().await.unwrap();
        assert_eq!(reporter.valid_until(), None, "a released lease");
    }

    /// A lease lost because renewals went unanswered says so once: the reason names what
    /// the last renewal (or extend) got, and the failure before it when there was one,
    /// without repeating "the validity ran out" (a new user's trial of `fencelock run` read
    /// "renewal failed until the validity ran out: no answer to renewal before the validity
    /// ran out"). Failed before on the silent renewal and the silent extend.
    #[tokio::test(start_paused = true)]
    async fn a_loss_to_unanswered_renewals_says_so_once() {
        /// Fails the first `fail_first` calls at once (a reset connection); every later
        /// renewal or extend goes unanswered.
        struct Silent {
            calls: AtomicUsize,
            fail_first: usize,
        }
        #[async_trait]
        impl LeaseOps for Silent {
            async fn extend(&self, _ttl: Duration) -> Result<Option<Duration>> {
                if self.calls.fetch_add(1, Ordering::SeqCst) < self.fail_first {
                    return Err(LockError::Unavailable {
                        message: "connection reset".into(),
                        source: None,
                    });
                }
                std::future::pending().await
            }
            async fn release(&self) -> Result<bool> {
                Ok(true)
            }
        }
        let silent = |fail_first| {
            Arc::new(Silent {
                calls: AtomicUsize::new(0),
                fail_first,
            })
        };
        for fail_first in [0, 1] {
            let held = auto_renewed(silent(fail_first));
            let reason = tokio::time::timeout(Duration::from_secs(10), held.lost())
                .await
                .expect("the lease was not lost when its validity ran out")
                .to_string();
            assert_eq!(reason.matches("validity ran out").count(), 1, "{reason}");
            if fail_first > 0 {
                assert!(
                    reason.contains("connection reset"),
                    "the earlier failure is not named: {reason}"
                );
            }
        }

        let explicit = unrenewed(silent(0), Instant::now(), Duration::from_secs(1));
        let err = explicit
            .extend(Duration::from_secs(1))
            .await
            .expect_err("an unanswered extend");
        let text = err.to_string();
        assert_eq!(text.matches("validity ran out").count(), 1, "{text}");
    }

    /// A renewal refused for good ends the lease at once, and the reason says so — not
    /// that renewals failed "until the validity ran out", which a new-user trial read for
    /// a Redlock lease lost a second before its validity's end (3 of 5 nodes refused the
    /// scripts: `NOPERM`).
    #[tokio::test(start_paused = true)]
    async fn a_renewal_refused_for_good_says_the_lease_ended_at_once() {
        struct Refusing;
        #[async_trait]
        impl LeaseOps for Refusing {
            async fn extend(&self, _ttl: Duration) -> Result<Option<Duration>> {
                Err(LockError::invalid_config("3 of 5 nodes refused the settings"))
            }
            async fn release(&self) -> Result<bool> {
                Ok(true)
            }
        }
        let held = auto_renewed(Arc::new(Refusing));
        let reason = tokio::time::timeout(Duration::from_secs(10), held.lost())
            .await
            .expect("the lease was not lost")
            .to_string();
        assert!(!reason.contains("validity ran out"), "{reason}");
        assert!(reason.contains("refused the settings"), "{reason}");
    }

    /// A background renewal in flight when the holder releases: the release removes the
    /// grant, and the renewal then answers "not held". That is the release's doing, not a
    /// loss — no `lost()`, no warning, no lost-lease metric. (Found on PostgreSQL, whose
    /// batched renewal went out after the release: `run` warned "lease lost" after a
    /// normal exit.)
    #[tokio::test(start_paused = true)]
    async fn a_renewal_answered_not_held_because_of_the_release_is_no_loss() {
        struct Racing {
            renewing: tokio::sync::Notify,
            released: tokio::sync::Notify,
        }
        #[async_trait]
        impl LeaseOps for Racing {
            async fn extend(&self, ttl: Duration) -> Result<Option<Duration>> {
                Ok(Some(ttl))
            }
            async fn renew(&self, _ttl: Duration) -> Result<Option<Duration>> {
                self.renewing.notify_one();
                self.released.notified().await;
                Ok(None) // the release removed the grant before this renewal arrived
            }
            async fn release(&self) -> Result<bool> {
                self.released.notify_one();
                // The renewal's answer lands while the release's is still on its way.
                tokio::time::sleep(Duration::from_millis(5)).await;
                Ok(true)
            }
        }
        let ops = Arc::new(Racing {
            renewing: tokio::sync::Notify::new(),
            released: tokio::sync::Notify::new(),
        });
        let held = auto_renewed(Arc::clone(&ops) as Arc<dyn LeaseOps>);
        let lost = tokio::spawn(held.lost());
        tokio::time::timeout(Duration::from_secs(2), ops.renewing.notified())
            .await
            .expect("a renewal a third of the way through the validity");
        held.release().await.expect("a normal release");
        settle().await;
        assert!(
            !lost.is_finished(),
            "the release's own removal was reported as a lost lease: {:?}",
            lost.await
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_release_dropped_in_flight_still_releases() {
        let ops = ops(Duration::from_millis(10));
        let held = lease(&ops, Instant::now(), Duration::from_secs(60));
        let watch = held.watch();
        let cut = tokio::time::timeout(Duration::from_millis(5), held.release()).await;
        assert!(cut.is_err(), "the release was meant to be cut off in flight");
        assert_eq!(watch.borrow().state, LeaseState::Released);
        settle().await;
        assert_eq!(
            ops.releases.load(Ordering::SeqCst),
            1,
            "the cut-off release never reached the backend"
        );
    }

    /// The release a dropped lease starts in the background is counted among its
    /// backend's clean-ups at the drop, before its task first runs, and until it returned:
    /// a `close()` right after the drop waits for it. So is the release of a lease whose
    /// validity ran out, and the repeat of a release cut off in flight. (Counted only once
    /// the task ran, a file lock's `close()` returned with the key held, one time in five.)
    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn a_background_release_is_counted_from_the_moment_it_is_decided() {
        struct Counted {
            inner: Arc<Counting>,
            cleanups: crate::cleanup::Cleanups,
        }
        #[async_trait]
        impl LeaseOps for Counted {
            async fn extend(&self, ttl: Duration) -> Result<Option<Duration>> {
                self.inner.extend(ttl).await
            }
            async fn release(&self) -> Result<bool> {
                self.inner.release().await
            }
            fn cleanup(&self) -> Option<CleanupGuard> {
                Some(self.cleanups.start())
            }
        }
        let inner = ops(Duration::from_millis(10));
        let ops = Arc::new(Counted {
            inner: Arc::clone(&inner),
            cleanups: crate::cleanup::Cleanups::new(),
        });
        let held = || {
            unrenewed(
                Arc::clone(&ops) as Arc<dyn LeaseOps>,
                Instant::now(),
                Duration::from_secs(1),
            )
        };

        drop(held());
        assert_eq!(
            ops.cleanups.running(),
            1,
            "the drop's release was not counted at the drop"
        );
        assert!(ops.cleanups.idle(Duration::from_secs(1)).await);
        assert_eq!(
            inner.releases.load(Ordering::SeqCst),
            1,
            "idle before the release ended"
        );

        let cut = tokio::time::timeout(Duration::from_millis(5), held().release()).await;
        assert!(cut.is_err(), "the release was meant to be cut off in flight");
        assert_eq!(
            ops.cleanups.running(),
            1,
            "the repeat of a cut-off release was not counted"
        );
        assert!(ops.cleanups.idle(Duration::from_secs(1)).await);

        // The timer marks it lost at its validity's end; its release takes 10 ms.
        let lapsing = held();
        tokio::time::sleep(Duration::from_millis(1_005)).await;
        assert!(!lapsing.is_held());
        assert_eq!(
            ops.cleanups.running(),
            1,
            "the release of a lapsed lease was not counted"
        );
        assert!(ops.cleanups.idle(Duration::from_secs(1)).await);
        drop(lapsing);
        assert!(ops.cleanups.idle(Duration::from_secs(1)).await);
        assert_eq!(inner.releases.load(Ordering::SeqCst), 4);
    }

    #[tokio::test(start_paused = true)]
    async fn an_extend_to_a_shorter_ttl_lowers_the_belief_even_if_dropped() {
        let ops = ops(Duration::from_millis(10));
        let held = lease(&ops, Instant::now(), Duration::from_secs(60));
        let cut = tokio::time::timeout(Duration::from_millis(5), held.extend(Duration::from_secs(1))).await;
        assert!(cut.is_err(), "the extend was meant to be cut off in flight");
        assert!(
            held.remaining() <= Duration::from_secs(1),
            "after a dropped extend to 1 s the holder still believes {:?}",
            held.remaining()
        );
        held.release().await.expect("release");
    }

    /// A "server" for one grant, with latencies the test sets: each request (extend or
    /// renewal) lands after its kind's delay and sets the grant's end to `landed + ttl`
    /// (what memory, file, etcd, ZooKeeper and Redlock do; PostgreSQL's and Redis's batched
    /// renewals only lengthen, a milder case). It records every landing, and checks at each
    /// that the holder does not believe in the grant past the end the server now keeps.
    struct Server {
        extend_delay: std::sync::Mutex<Duration>,
        renew_delay: std::sync::Mutex<Duration>,
        end: std::sync::Mutex<Option<Instant>>,
        /// (kind, ttl, landed)
        landed: std::sync::Mutex<Vec<(&'static str, Duration, Instant)>>,
        belief: std::sync::Mutex<Option<watch::Receiver<LeaseStatus>>>,
        violations: std::sync::Mutex<Vec<String>>,
        /// An extend's request panics once it "landed" (a backend's bug).
        extend_panics: std::sync::atomic::AtomicBool,
        /// The next renewal's request panics once it "landed" (a backend's bug), once.
        renew_panics: std::sync::atomic::AtomicBool,
    }

    impl Server {
        fn new(extend_delay: Duration, renew_delay: Duration) -> Arc<Server> {
            Arc::new(Server {
                extend_delay: std::sync::Mutex::new(extend_delay),
                renew_delay: std::sync::Mutex::new(renew_delay),
                end: std::sync::Mutex::new(None),
                landed: std::sync::Mutex::default(),
                belief: std::sync::Mutex::default(),
                violations: std::sync::Mutex::default(),
                extend_panics: std::sync::atomic::AtomicBool::new(false),
                renew_panics: std::sync::atomic::AtomicBool::new(false),
            })
        }

        /// A lease granted now for `ttl`, renewed in the background; the server keeps it
        /// `ttl` from now.
        fn grant(self: &Arc<Self>, ttl: Duration) -> Lease {
            let now = Instant::now();
            *self.end.lock().unwrap() = Some(now + ttl);
            let held = Lease::new(LeaseParts {
                key: "k".into(),
                token: FencingToken::new(1),
                grant: GrantId::random(),
                sent_at: now,
                validity: ttl,
                options: LockOptions::new().with_ttl(ttl),
                ops: Arc::clone(self) as Arc<dyn LeaseOps>,
            });
            *self.belief.lock().unwrap() = Some(held.watch());
            held
        }

        async fn land(&self, kind: &'static str, ttl: Duration) -> Result<Option<Duration>> {
            let delay = *if kind == "extend" {
                &self.extend_delay
            } else {
                &self.renew_delay
            }
            .lock()
            .unwrap();
            tokio::time::sleep(delay).await;
            if kind == "extend" && self.extend_panics.load(Ordering::SeqCst) {
                panic!("the backend's extend panicked");
            }
            if kind == "renew" && self.renew_panics.swap(false, Ordering::SeqCst) {
                panic!("the backend's renewal panicked");
            }
            let now = Instant::now();
            *self.end.lock().unwrap() = Some(now + ttl);
            self.landed.lock().unwrap().push((kind, ttl, now));
            self.check(&format!("{kind} of {ttl:?} landed"));
            Ok(Some(ttl))
        }

        /// Records a violation when the holder believes a live lease past the server's end.
        fn check(&self, when: &str) {
            let Some(belief) = self.belief.lock().unwrap().as_ref().map(|b| b.borrow().clone()) else {
                return;
            };
            let end = self.end.lock().unwrap().expect("granted");
            if belief.state.is_live() && belief.valid_until > end && Instant::now() < belief.valid_until {
                self.violations.lock().unwrap().push(format!(
                    "{when}: the holder believes {:?} past the server's end",
                    belief.valid_until - end
                ));
            }
        }

        /// Whether a request of `kind` ("renew", "extend") has landed.
        fn landed_a(&self, kind: &str) -> bool {
            self.landed.lock().unwrap().iter().any(|(k, _, _)| *k == kind)
        }

        /// Samples the invariant every millisecond for `span` (paused clock).
        async fn watch_for(&self, span: Duration) {
            let until = Instant::now() + span;
            for _ in 0..span.as_millis() + 1 {
                if Instant::now() >= until {
                    break;
                }
                self.check("sampled");
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }

        fn violations(&self) -> Vec<String> {
            let mut v = self.violations.lock().unwrap().clone();
            v.dedup_by(|a, b| a.split(':').next() == b.split(':').next());
            v
        }
    }

    #[async_trait]
    impl LeaseOps for Server {
        async fn extend(&self, ttl: Duration) -> Result<Option<Duration>> {
            self.land("extend", ttl).await
        }
        async fn renew(&self, ttl: Duration) -> Result<Option<Duration>> {
            self.land("renew", ttl).await
        }
        async fn release(&self) -> Result<bool> {
            Ok(true)
        }
    }

    /// A shorter `extend` of an auto-renewed lease is not undone by a renewal with the old
    /// TTL. Lowering the validity made the next renewal due at once; it read the old TTL
    /// and, asked after the extend, won: the holder believed 30 s again, the server kept
    /// whichever request landed last. Failed before: the holder believed ~30 s, and a
    /// 30 s renewal landed after the extend.
    #[tokio::test(start_paused = true)]
    async fn a_shorter_extend_is_not_undone_by_a_renewal_with_the_old_ttl() {
        let server = Server::new(Duration::from_millis(10), Duration::from_millis(10));
        let held = server.grant(Duration::from_secs(30));
        // The first renewal (at 10 s) is done; the next is due at 20 s.
        tokio::time::sleep(Duration::from_secs(11)).await;
        let asked = Instant::now();
        held.extend(Duration::from_secs(1)).await.expect("extend");
        server.watch_for(Duration::from_millis(500)).await;
        assert!(
            held.remaining() <= Duration::from_secs(1),
            "after extend(1 s) the holder believes {:?}",
            held.remaining()
        );
        let landed = server.landed.lock().unwrap().clone();
        let extend_landed = landed
            .iter()
            .find(|(kind, _, at)| *kind == "extend" && *at >= asked)
            .expect("the extend landed")
            .2;
        let stale: Vec<_> = landed
            .iter()
            .filter(|(_, ttl, at)| *at >= extend_landed && *ttl == Duration::from_secs(30))
            .collect();
        assert!(
            stale.is_empty(),
            "renewals with the old TTL after the extend: {stale:?}"
        );
        assert_eq!(server.violations(), Vec::<String>::new());
        held.release().await.expect("release");
    }

    /// An extend whose request is slow and a renewal asked after it that lands first: the
    /// holder never believes in the grant past the end the last-landing request set. The
    /// renewal (old TTL, 30 s) was answered first and believed; the extend to 5 s landed
    /// after it and cut the server's end, its answer ignored as older. Failed before: the
    /// holder believed ~23 s past the server's end.
    #[tokio::test(start_paused = true)]
    async fn a_slow_extend_landing_after_a_later_renewal_is_not_outlived() {
        let server = Server::new(Duration::from_secs(3), Duration::ZERO);
        let held = server.grant(Duration::from_secs(30));
        tokio::time::sleep(Duration::from_secs(11)).await;
        let extend = held.extend(Duration::from_secs(5));
        let (result, ()) = tokio::join!(extend, server.watch_for(Duration::from_secs(8)));
        result.expect("extend");
        assert_eq!(server.violations(), Vec::<String>::new());
        assert!(held.remaining() <= Duration::from_secs(5), "{:?}", held.remaining());
        held.release().await.expect("release");
    }

    /// An extend dropped while its request is in flight: the request may still land, so no
    /// renewal goes out before its answer came back, and the answer is applied. Failed
    /// before: a renewal with the old TTL (30 s) went out at once, while the dropped
    /// extend's request was still unanswered (here the drop cancelled it; a network
    /// backend's request, once written, may still land — after the renewal, cutting the
    /// server's end under the holder's 30 s belief).
    #[tokio::test(start_paused = true)]
    async fn an_extend_dropped_in_flight_keeps_its_turn_until_answered() {
        let server = Server::new(Duration::from_millis(500), Duration::ZERO);
        let held = server.grant(Duration::from_secs(30));
        tokio::time::sleep(Duration::from_secs(11)).await;
        let asked = Instant::now();
        let cut = tokio::time::timeout(Duration::from_millis(5), held.extend(Duration::from_secs(1))).await;
        assert!(cut.is_err(), "the extend was meant to be cut off in flight");
        server.watch_for(Duration::from_secs(2)).await;
        assert_eq!(server.violations(), Vec::<String>::new());
        let landed = server.landed.lock().unwrap().clone();
        let after: Vec<_> = landed.iter().filter(|(_, _, at)| *at >= asked).collect();
        assert_eq!(after.first().map(|l| l.0), Some("extend"), "{after:?}");
        assert!(
            after.iter().skip(1).all(|(_, ttl, _)| *ttl == Duration::from_secs(1)),
            "a renewal after the dropped extend used another TTL: {after:?}"
        );
        assert!(held.is_held());
        held.release().await.expect("release");
    }

    /// Review of the one-request-per-lease turn: a renewal that came due while an extend
    /// held the turn only scheduled the lease's expiry, counting on the extend to schedule
    /// the next renewal — which a backend's panic (or the extend's runtime shutting down,
    /// or a waiter handed the turn and dropped) never did: the lease went unrenewed and was
    /// reported expired. Now a skipped renewal looks again soon.
    #[tokio::test(start_paused = true)]
    async fn a_renewal_skipped_behind_an_extend_that_never_finished_goes_out_later() {
        let server = Server::new(Duration::from_millis(300), Duration::ZERO);
        let held = Arc::new(server.grant(Duration::from_secs(3)));
        // Renewals are due a third of the way: the extend is in flight at 1 s.
        tokio::time::sleep(Duration::from_millis(900)).await;
        server.extend_panics.store(true, Ordering::SeqCst);
        let extending = {
            let held = Arc::clone(&held);
            tokio::spawn(async move { held.extend(Duration::from_secs(3)).await })
        };
        assert!(extending.await.is_err_and(|e| e.is_panic()), "the extend panicked");
        server.extend_panics.store(false, Ordering::SeqCst);
        server.watch_for(Duration::from_secs(5)).await;
        assert!(
            held.is_held(),
            "the lease was not renewed after the extend's panic: {:?}",
            held.status()
        );
        assert!(server.landed_a("renew"), "no renewal landed");
        let held = Arc::try_unwrap(held).unwrap_or_else(|_| panic!("the extend's task still holds the lease"));
        held.release().await.expect("release");
    }

    /// A lease whose validity ran out gives its grant back even when the loss's log line
    /// panics (a caller's tracing layer, or metrics recorder): the give-back starts first
    /// (review of the timer's panic handling: it came after them, and such a panic skipped
    /// it — a ZooKeeper node without auto-renew then stayed until the process exited).
    #[tokio::test(start_paused = true)]
    async fn an_expiry_whose_loss_report_panics_still_gives_the_grant_back() {
        // The current-thread runtime's timer task runs on this thread: it sees this default.
        // Panics on the lease's "lease lost" event; nothing else.
        let _default = tracing::subscriber::set_default(crate::on_event::OnEvent(|event: &tracing::Event<'_>| {
            if event.metadata().target() == LOST_TARGET {
                panic!("a tracing layer panicked on the loss");
            }
        }));
        let ops = ops(Duration::ZERO);
        let lease = lease(&ops, Instant::now(), Duration::from_millis(100));
        tokio::time::sleep(Duration::from_millis(300)).await;
        for _ in 0..100 {
            if ops.releases.load(Ordering::SeqCst) > 0 {
                break;
            }
            tokio::task::yield_now().await;
        }
        assert!(
            matches!(lease.status().state, LeaseState::Lost(_)),
            "{:?}",
            lease.status().state
        );
        assert_eq!(
            ops.releases.load(Ordering::SeqCst),
            1,
            "the lapsed lease's grant was not given back"
        );
    }

    /// Review of the lease machinery (F1): a backend whose `renew` panicked left the lease
    /// marked as renewing, which nothing cleared: no renewal went out again, the lease ran
    /// out at its TTL with nothing scheduled to say so — `watch()` showed it `Held` past its
    /// validity, no `Lost`, no warning or metric, no release after the expiry (which
    /// ZooKeeper's nodes need). Now a panicked renewal counts as a failed one: it is retried
    /// while validity remains, as a temporary error is.
    #[tokio::test(start_paused = true)]
    async fn a_renewal_that_panicked_is_retried() {
        let server = Server::new(Duration::from_millis(10), Duration::from_millis(10));
        server.renew_panics.store(true, Ordering::SeqCst);
        let held = server.grant(Duration::from_secs(3));
        let watch = held.watch();
        // The first renewal (at 1 s) panics; the validity would end at 3 s.
        server.watch_for(Duration::from_secs(5)).await;
        // Read what the lease tells its watchers, not `status()`, which would look itself.
        let seen = watch.borrow().clone();
        assert!(
            seen.state.is_live() && seen.valid_until > Instant::now(),
            "after the renewal's panic the lease was left {seen:?} at {:?}",
            Instant::now()
        );
        assert!(server.landed_a("renew"), "no renewal landed after the panic");
        assert_eq!(server.violations(), Vec::<String>::new());
        held.release().await.expect("release");
    }

    /// An answer that arrives after a newer request's (out of ask order) caps the belief
    /// to its own end: the server may have kept that request last, and every request
    /// leaves the server's end at or after `sent + validity`.
    #[tokio::test(start_paused = true)]
    async fn an_older_answer_caps_the_belief() {
        let ops = ops(Duration::ZERO);
        let start = Instant::now();
        let held = lease(&ops, start, Duration::from_secs(30));
        let (older, newer) = (start + Duration::from_secs(1), start + Duration::from_secs(2));
        held.shared
            .apply_validity(newer, Duration::from_secs(30), Duration::from_secs(30));
        assert_eq!(held.valid_until(), newer + Duration::from_secs(30));
        held.shared
            .apply_validity(older, Duration::from_secs(1), Duration::from_secs(1));
        assert_eq!(held.valid_until(), older + Duration::from_secs(1));
        assert_eq!(held.ttl(), Duration::from_secs(30), "the newer request's TTL");
        held.release().await.expect("release");
    }
}
