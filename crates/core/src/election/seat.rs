//! The election glue every lock-backed backend shares: a **seat** (the lock on key
//! `election.NAME`, whose token is the term) with the leader's **value record** beside it.
//!
//! A backend implements [`SeatBackend`] — how to write its record for one grant
//! ([`seat_grant`](SeatBackend::seat_grant)), how to read the seat once
//! ([`read_seat`](SeatBackend::read_seat)) and, for a native observe, how to be told of a
//! change ([`seat_watch`](SeatBackend::seat_watch)) — and gets [`Election`] from the
//! blanket implementation here: the campaign (acquire, then publish the first value under
//! the grant, or give the seat back), `leader` (waiting up to [`RECORD_WAIT`] for a
//! just-elected leader's record), `observe` (polled, pushed or unavailable, as its
//! [`ElectionCapabilities::observe`] says), `describe` and `close` (the lock's).
//!
//! Pushed observation ([`SeatWatch`], driven by [`watched`]) arms the backend's
//! notification *before* each read, so a change after the read always wakes the observer;
//! notifications that pile up while it reads are coalesced into one re-read. A fallback
//! re-read at the holder's expiry (the backend reports the remaining validity, on its own
//! clock) sees an expiry that sends no message; [`FALLBACK_MAX`] bounds the wait when the
//! backend reports none, in case a notification was lost.

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::time::Instant;
use tracing::Instrument;

use super::observer::polled_tagged;
use super::{
    validate_value, Election, ElectionCapabilities, LeaderInfo, Leadership, Observation, Observer, ObserverFeed,
    ProclaimOps,
};
use crate::error::{LockError, LostReason, Result};
use crate::lease::Lease;
use crate::lock::DistributedLock;
use crate::options::LockOptions;
use crate::token::FencingToken;

/// How long [`Election::leader`] waits for a just-elected leader to write its value before
/// reporting its term with an empty value (and how long an observer holds back such a
/// leader before reporting it).
pub const RECORD_WAIT: Duration = Duration::from_millis(200);

/// The longest a pushed observer goes without re-reading the seat when the backend gives
/// no expiry to wait for (an empty seat, a session-bound leader): bounds what a lost
/// notification costs.
pub const FALLBACK_MAX: Duration = Duration::from_secs(5);

/// The least time between two reads of one pushed observer. A change after a quiet spell
/// is read at once; a burst of changes (a resign and the next campaign, a run of
/// proclaims) costs at most one read per gap, the observer skipping intermediate states as
/// a slow observer may — so a burst never costs more reads than the old 50 ms poll did,
/// and a quiet seat costs none. Correctness does not rest on it: the notification is
/// re-armed before each read, so no change after a read is missed.
pub const READ_GAP: Duration = Duration::from_millis(50);

/// How long a pushed observer waits before reading again after a failed read.
pub const READ_RETRY: Duration = Duration::from_millis(250);

/// The least time between two reads of a seat held without its record, while `leader`
/// or `observe` waits up to [`RECORD_WAIT`] for that record.
const SETTLE_GAP: Duration = Duration::from_millis(5);

/// The lock key of election `name`'s seat: `election.NAME`.
///
/// # Errors
/// [`LockError::InvalidInput`] when `name` (or the seat key made of it) is not a valid key.
pub fn seat_key(name: &str) -> Result<String> {
    super::validate_name(name)?;
    Ok(format!("{}{name}", super::SEAT_PREFIX))
}

/// What one read of a seat found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SeatState {
    /// No live grant.
    Empty,
    /// The live grant's record.
    Leader(LeaderInfo),
    /// A live grant whose record is not written yet, with its exact term.
    Unwritten(FencingToken),
    /// A live grant whose record is not written yet and whose term the backend cannot
    /// tell, with the best guess it has (Redis keeps no token with the lock key and gives
    /// its token counter, which refused attempts raise too: it may be above the holder's
    /// token). `leader` reports the guess; an observer reports it too, and replaces it with
    /// the holder's exact term from its record even when that is lower (see
    /// [`ObserverFeed::publish_guess`]).
    UnwrittenGuess(FencingToken),
}

/// One read of a seat: its state and, when the backend tells, how long the live grant
/// has left on the backend's clock (so an observer re-reads when it would expire).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeatRead {
    /// What the seat holds.
    pub state: SeatState,
    /// The live grant's remaining validity on the backend, if it has one.
    pub expires_in: Option<Duration>,
}

impl SeatRead {
    /// A read without an expiry (an empty seat, a session-bound grant).
    pub fn new(state: SeatState) -> Self {
        SeatRead {
            state,
            expires_in: None,
        }
    }
}

/// A lock-backed election: implement this and [`Election`] comes with it (for backend
/// authors). The seat of election `NAME` is the lock on [`seat_key`]`(NAME)`; the term is
/// that lock's token; the value is a record the backend keeps beside it, written only
/// while the record's grant holds the lock.
#[async_trait]
pub trait SeatBackend: Clone + Send + Sync + fmt::Debug + 'static {
    /// The lock whose keys are the seats.
    fn seat_lock(&self) -> &dyn DistributedLock;

    /// What this election gives ([`Election::capabilities`] returns it; `observe` reads
    /// its [`observe`](ElectionCapabilities::observe) to choose how to follow a seat).
    fn election_capabilities(&self) -> ElectionCapabilities;

    /// The value writer of a grant just won on `seat` (the lock key of election `name`).
    /// The campaign writes the first value through it and gives the seat back when that
    /// fails. A backend may clean up earlier grants' records here.
    async fn seat_grant(&self, name: &str, seat: &str, lease: &Lease) -> Result<Arc<dyn ProclaimOps>>;

    /// Reads `seat` once: its live grant's record, comparing the grant — never merely that
    /// a record exists.
    async fn read_seat(&self, name: &str, seat: &str) -> Result<SeatRead>;

    /// The change notifications of `seat`, for [`Observation::Native`]. The default says
    /// the backend has none.
    async fn seat_watch(&self, name: &str, seat: &str) -> Result<Box<dyn SeatWatch>> {
        let _ = (name, seat);
        Err(LockError::GuaranteeNotMet {
            backend: self.election_capabilities().backend,
            message: "this backend has no change notification for an election's seat".into(),
        })
    }
}

/// A backend's change notification for one seat (for backend authors), driven by
/// [`watched`].
#[async_trait]
pub trait SeatWatch: Send + 'static {
    /// Arms the notification for the next change (subscribes, listens, sets a watch),
    /// then reads the seat: a change after the read completes
    /// [`changed`](Self::changed).
    async fn arm_and_read(&mut self) -> Result<SeatRead>;

    /// Resolves on the first notification since the last arm (several are one), or when
    /// the notification channel broke — a spurious wake costs one read, never a change.
    /// Cancel safe: the next [`arm_and_read`](Self::arm_and_read) arms again.
    async fn changed(&mut self);
}

/// Reads the seat until it is settled: waits up to [`RECORD_WAIT`] for a just-elected
/// leader's record, then reports its term with an empty value (the backend's guess for
/// [`SeatState::UnwrittenGuess`]). Bounded by RECORD_WAIT / 5 ms reads.
///
/// # Errors
/// The first failed read's error.
pub async fn settle<F, Fut>(read: F) -> Result<Option<LeaderInfo>>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<SeatRead>>,
{
    Ok(settle_tagged(read).await?.0)
}

/// [`settle`], telling whether the leader's term is a guess.
async fn settle_tagged<F, Fut>(mut read: F) -> Result<(Option<LeaderInfo>, bool)>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<SeatRead>>,
{
    let deadline = Instant::now() + RECORD_WAIT;
    loop {
        let (term, guessed) = match read().await?.state {
            SeatState::Empty => return Ok((None, false)),
            SeatState::Leader(l) => return Ok((Some(l), false)),
            SeatState::Unwritten(term) => (term, false),
            SeatState::UnwrittenGuess(term) => (term, true),
        };
        if Instant::now() >= deadline {
            let leader = LeaderInfo {
                value: Vec::new(),
                term,
            };
            return Ok((Some(leader), guessed));
        }
        tokio::time::sleep(SETTLE_GAP).await;
    }
}

/// An observer pushed by `watch`: reads the seat before it returns (so `observe` fails
/// when the backend cannot be asked), then in a task that lives as long as the observer
/// re-reads on every notification (at most once per [`READ_GAP`]), at the holder's expiry,
/// and at the latest after [`FALLBACK_MAX`]. A failed read in the task is logged and
/// retried after [`READ_RETRY`].
///
/// A seat found held without its record (a campaign between its grant and its first
/// proclaim) is read again — on its notification, at most every 5 ms — until the record
/// comes, for at most [`RECORD_WAIT`], when the holder is reported with no value: the
/// observer's first `changed()` reports the seat as held either way, never empty.
///
/// # Errors
/// The error of a read made before returning.
/// `restarts`: the backend's terms may go back (see [`ObserverFeed::restarting`]).
///
/// # Cancel safety
/// Cancel safe: dropped before it returns, no task is left behind.
pub async fn watched(mut watch: Box<dyn SeatWatch>, restarts: bool) -> Result<Observer> {
    let first = watch.arm_and_read().await?;
    let feed = ObserverFeed::default().restarting(restarts);
    let mut follow = Follow {
        feed: feed.clone(),
        unwritten: None,
        pending: false,
    };
    let mut next = follow.apply(first);
    let mut last_read = Instant::now();
    // Before, the observer was returned at once with the feed empty: a seat held without
    // its record was "no leader" at the first `changed()`, for up to RECORD_WAIT (a review).
    // Bounded by the deadline, one read per SETTLE_GAP at most.
    let deadline = last_read + RECORD_WAIT;
    while follow.pending {
        let now = Instant::now();
        if now >= deadline {
            follow.report_unwritten();
            break;
        }
        tokio::select! {
            () = watch.changed() => {}
            () = tokio::time::sleep(next.min(deadline - now)) => {}
        }
        tokio::time::sleep_until(last_read + SETTLE_GAP).await;
        last_read = Instant::now();
        next = follow.apply(watch.arm_and_read().await?);
    }
    let task = tokio::spawn(async move {
        loop {
            let notified = tokio::select! {
                () = watch.changed() => true,
                () = tokio::time::sleep(next) => false,
            };
            if notified {
                tokio::time::sleep_until(last_read + READ_GAP).await;
            }
            last_read = Instant::now();
            next = match watch.arm_and_read().await {
                Ok(read) => follow.apply(read),
                Err(e) => {
                    tracing::warn!(error = %e, "election observer could not read the seat");
                    READ_RETRY
                }
            };
        }
    });
    Ok(feed.subscribe_with(task.abort_handle()))
}

/// What a pushed observer knows between reads.
struct Follow {
    feed: ObserverFeed,
    /// A live grant seen without its record: its term, whether that is a guess, and since
    /// when (for a guess, since the first of the guessed reads in a row: see
    /// [`unwritten`](Self::unwritten)).
    unwritten: Option<(FencingToken, bool, Instant)>,
    /// The last read found a holder without its record that is not reported yet.
    pending: bool,
}

impl Follow {
    /// Publishes what a read found; returns how long to wait, at most, before reading again.
    fn apply(&mut self, read: SeatRead) -> Duration {
        let until_expiry = read
            .expires_in
            .map_or(FALLBACK_MAX, |d| (d + Duration::from_millis(1)).min(FALLBACK_MAX));
        match read.state {
            SeatState::Empty => {
                self.unwritten = None;
                self.pending = false;
                self.feed.publish(None);
                FALLBACK_MAX
            }
            SeatState::Leader(l) => {
                self.unwritten = None;
                self.pending = false;
                self.feed.publish(Some(l));
                until_expiry
            }
            SeatState::Unwritten(term) => self.unwritten(term, false, until_expiry),
            SeatState::UnwrittenGuess(term) => self.unwritten(term, true, until_expiry),
        }
    }

    /// A live grant without its record: reported with no value (a guessed term as a
    /// guess, the latest read's) once seen without its record for [`RECORD_WAIT`].
    ///
    /// The wait runs from the first read of the same unwritten holder. An exact term names
    /// the grant, so a new term starts the wait again. A guess does not: Redis's guess is
    /// its token counter, which every refused attempt on the seat raises, so a holder
    /// tried more often than every RECORD_WAIT would start it again at each read and never
    /// be reported. The read carries no grant id, so successive guessed reads (no empty
    /// seat, record or exact term between them) are taken for one holder unless the guess
    /// goes back (the counters started again: a server that lost its data). A hand-over
    /// between two reads that the observer did not see empty is then reported without a
    /// wait of its own: a campaign's first proclaim, if it comes, replaces the guess.
    fn unwritten(&mut self, term: FencingToken, guessed: bool, until_expiry: Duration) -> Duration {
        let since = match self.unwritten {
            Some((t, true, since)) if guessed && term >= t => since,
            Some((t, false, since)) if !guessed && t == term => since,
            _ => Instant::now(),
        };
        self.unwritten = Some((term, guessed, since));
        let waited = since.elapsed();
        if waited < RECORD_WAIT {
            self.pending = true;
            return (RECORD_WAIT - waited).min(until_expiry);
        }
        self.report_unwritten();
        until_expiry
    }

    /// Reports the holder last read without its record, with no value (a guessed term as a
    /// guess), whether or not it waited [`RECORD_WAIT`].
    fn report_unwritten(&mut self) {
        self.pending = false;
        let Some((term, guessed, _)) = self.unwritten else {
            return;
        };
        let leader = LeaderInfo {
            value: Vec::new(),
            term,
        };
        if guessed {
            self.feed.publish_guess(leader);
        } else {
            self.feed.publish(Some(leader));
        }
    }
}

#[async_trait]
impl<S: SeatBackend> Election for S {
    async fn campaign(&self, name: &str, value: &[u8], opts: &LockOptions) -> Result<Leadership> {
        validate_value(value)?;
        let seat = seat_key(name)?;
        let backend = self.election_capabilities().backend;
        let span = tracing::debug_span!("fencelock.campaign", backend, name);
        async move {
            // As a campaign: the lock refuses seat keys to everyone else.
            let lease = super::as_campaign(self.seat_lock().acquire(&seat, opts)).await?;
            // Dropped from here on, the lease is released in the background: no seat is left.
            let ops = self.seat_grant(name, &seat, &lease).await?;
            if !ops.proclaim(value).await? {
                return Err(LockError::LeaseLost {
                    key: seat,
                    token: lease.token(),
                    reason: LostReason::NotHeld,
                });
            }
            tracing::debug!(term = %lease.token(), "elected");
            Ok(Leadership::new(name, lease, ops))
        }
        .instrument(span)
        .await
    }

    async fn leader(&self, name: &str) -> Result<Option<LeaderInfo>> {
        let seat = seat_key(name)?;
        settle(|| self.read_seat(name, &seat)).await
    }

    async fn observe(&self, name: &str) -> Result<Observer> {
        let seat = seat_key(name)?;
        let caps = self.election_capabilities();
        // Terms that may go back (a Redis that lost its data starts its counters again)
        // must not be refused as stale by the observer.
        let restarts = self.seat_lock().guarantees().tokens != crate::guarantees::TokenOrder::StrictlyMonotonic;
        match caps.observe {
            Observation::Native => watched(self.seat_watch(name, &seat).await?, restarts).await,
            Observation::Polled { interval_ms } => {
                let (me, name) = (self.clone(), name.to_owned());
                polled_tagged(Duration::from_millis(interval_ms), restarts, move || {
                    let (me, name, seat) = (me.clone(), name.clone(), seat.clone());
                    async move { settle_tagged(|| me.read_seat(&name, &seat)).await }
                })
                .await
            }
            Observation::Unavailable => Err(LockError::GuaranteeNotMet {
                backend: caps.backend,
                message: format!(
                    "observe is unavailable on {}: see its election capabilities",
                    caps.backend
                ),
            }),
        }
    }

    fn capabilities(&self) -> ElectionCapabilities {
        self.election_capabilities()
    }

    fn seat_guarantees(&self) -> Option<crate::Guarantees> {
        Some(self.seat_lock().guarantees())
    }

    fn describe(&self) -> String {
        self.seat_lock().describe()
    }

    async fn close(&self) -> Result<()> {
        self.seat_lock().close().await
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail by panicking

    use super::*;

    fn follow() -> (Follow, ObserverFeed) {
        let feed = ObserverFeed::default();
        (
            Follow {
                feed: feed.clone(),
                unwritten: None,
                pending: false,
            },
            feed,
        )
    }

    #[tokio::test(start_paused = true)]
    async fn an_unwritten_leader_is_reported_after_the_record_wait_only() {
        let (mut f, feed) = follow();
        let read = SeatRead {
            state: SeatState::Unwritten(FencingToken::new(7)),
            expires_in: Some(Duration::from_secs(30)),
        };
        assert_eq!(f.apply(read.clone()), RECORD_WAIT, "re-read when the record is due");
        assert_eq!(feed.current(), None, "not reported before its record wait");
        tokio::time::advance(RECORD_WAIT).await;
        assert_eq!(f.apply(read), FALLBACK_MAX);
        assert_eq!(
            feed.current().map(|l| (l.term, l.value)),
            Some((FencingToken::new(7), vec![]))
        );
    }

    /// Redis's guess (the counter, raised by a refused attempt) is reported after the
    /// record wait, then replaced by the holder's lower exact term from its record; before,
    /// the observer stayed at the guess for the whole leadership (a review).
    #[tokio::test(start_paused = true)]
    async fn a_guessed_term_is_replaced_by_the_records_lower_one() {
        let (mut f, feed) = follow();
        let mut observer = feed.subscribe();
        assert_eq!(observer.changed().await, Some(None));
        let guess = SeatRead {
            state: SeatState::UnwrittenGuess(FencingToken::new(8)),
            expires_in: Some(Duration::from_secs(30)),
        };
        assert_eq!(f.apply(guess.clone()), RECORD_WAIT);
        tokio::time::advance(RECORD_WAIT).await;
        f.apply(guess);
        assert_eq!(
            observer.changed().await.flatten().map(|l| l.term),
            Some(FencingToken::new(8))
        );
        let record = LeaderInfo {
            value: b"b".to_vec(),
            term: FencingToken::new(7),
        };
        f.apply(SeatRead::new(SeatState::Leader(record.clone())));
        assert_eq!(observer.changed().await, Some(Some(record)));
    }

    /// Redis's guess is its token counter, which every refused attempt on the seat raises:
    /// with contenders retrying more often than every [`RECORD_WAIT`], each read of a
    /// record-less holder (a plain lock on the seat, a slow first proclaim) named a new
    /// guess, the record wait started again, and the holder was never reported (a review).
    /// The wait now runs from when the seat was first seen held without its record.
    #[tokio::test(start_paused = true)]
    async fn a_guess_raised_by_refused_attempts_does_not_restart_the_record_wait() {
        let (mut f, feed) = follow();
        let start = Instant::now();
        let read = |counter: u64| SeatRead {
            state: SeatState::UnwrittenGuess(FencingToken::new(counter)),
            expires_in: Some(Duration::from_secs(30)),
        };
        // One read every 100 ms for 1 s, the counter one higher at each.
        let (mut reported, mut waits) = (None, Vec::new());
        for i in 0..10u64 {
            waits.push(f.apply(read(5 + i)));
            if let Some(leader) = feed.current() {
                reported = Some((start.elapsed(), leader.term, leader.value));
                break;
            }
            tokio::time::advance(Duration::from_millis(100)).await;
        }
        assert_eq!(
            reported,
            Some((RECORD_WAIT, FencingToken::new(7), vec![])),
            "the holder was not reported once unwritten for the record wait"
        );
        assert!(feed.current_is_guess());
        // Before that, each read asked for the next when the first sighting's wait ends.
        let ms = Duration::from_millis;
        assert_eq!(waits, [ms(200), ms(100), ms(30_000).min(FALLBACK_MAX)]);
        // A guess going back (the counters started again) is another holder: a new wait.
        assert_eq!(f.apply(read(2)), RECORD_WAIT);
    }

    /// A pushed seat whose reads return `reads` in turn (the last one from then on), and
    /// that notifies a change after every read.
    struct Scripted {
        reads: Vec<SeatState>,
        made: usize,
    }

    #[async_trait]
    impl SeatWatch for Scripted {
        async fn arm_and_read(&mut self) -> Result<SeatRead> {
            let state = self.reads[self.made.min(self.reads.len() - 1)].clone();
            self.made += 1;
            Ok(SeatRead {
                state,
                expires_in: Some(Duration::from_secs(30)),
            })
        }
        async fn changed(&mut self) {}
    }

    fn scripted(reads: Vec<SeatState>) -> Box<dyn SeatWatch> {
        Box::new(Scripted { reads, made: 0 })
    }

    /// A seat held without its record yet (between a campaign's grant and its first
    /// proclaim): the observer was returned with the feed empty, and its first `changed()`
    /// said "no leader" for up to the record wait (a review). Now `observe` waits for the
    /// record (here, the third read) before it returns.
    #[tokio::test(start_paused = true)]
    async fn an_observer_started_before_the_first_proclaim_reports_the_leader_first() {
        let record = LeaderInfo {
            value: b"a".to_vec(),
            term: FencingToken::new(7),
        };
        let unwritten = SeatState::Unwritten(FencingToken::new(7));
        let watch = scripted(vec![unwritten.clone(), unwritten, SeatState::Leader(record.clone())]);
        let mut observer = watched(watch, false).await.unwrap();
        assert_eq!(observer.changed().await, Some(Some(record)));
    }

    /// A holder that never writes its record is reported first with no value, once the
    /// record wait is over — not as an empty seat.
    #[tokio::test(start_paused = true)]
    async fn an_observer_started_on_a_record_less_holder_reports_it_first() {
        let start = Instant::now();
        let watch = scripted(vec![SeatState::UnwrittenGuess(FencingToken::new(4))]);
        let mut observer = watched(watch, false).await.unwrap();
        assert!(start.elapsed() <= RECORD_WAIT + SETTLE_GAP, "{:?}", start.elapsed());
        let first = observer.changed().await.flatten().map(|l| (l.term, l.value));
        assert_eq!(first, Some((FencingToken::new(4), vec![])));
    }

    #[test]
    fn a_leader_is_re_read_at_its_expiry_and_an_empty_seat_at_the_fallback() {
        let (mut f, feed) = follow();
        let leader = LeaderInfo {
            value: b"a".to_vec(),
            term: FencingToken::new(3),
        };
        let wait = f.apply(SeatRead {
            state: SeatState::Leader(leader.clone()),
            expires_in: Some(Duration::from_millis(300)),
        });
        assert_eq!(wait, Duration::from_millis(301));
        assert_eq!(feed.current(), Some(leader));
        assert_eq!(f.apply(SeatRead::new(SeatState::Empty)), FALLBACK_MAX);
        assert_eq!(feed.current(), None);
    }

    #[test]
    fn seat_keys_are_checked_like_lock_keys() {
        assert_eq!(seat_key("scheduler").unwrap(), "election.scheduler");
        assert!(matches!(seat_key(""), Err(LockError::InvalidInput(_))));
    }

    /// One limit on every backend: a name whose seat key fits (247 bytes) is taken, one
    /// byte more is refused as an election name, not as a key the caller never wrote.
    #[test]
    fn the_longest_name_is_one_whose_seat_key_fits() {
        let longest = "n".repeat(super::super::MAX_NAME_LEN);
        assert_eq!(longest.len(), 247);
        assert_eq!(seat_key(&longest).unwrap().len(), crate::options::MAX_KEY_LEN);
        let e = seat_key(&format!("{longest}n")).unwrap_err().to_string();
        assert!(e.contains("election name is 248 bytes long; the maximum is 247"), "{e}");
        // Longer than a key may be too: still the election's limit, not the key's 256.
        let e = seat_key(&"n".repeat(300)).unwrap_err().to_string();
        assert!(e.contains("election name is 300 bytes long; the maximum is 247"), "{e}");
        let e = seat_key("a\nb").unwrap_err().to_string();
        assert!(e.contains("election name contains"), "{e}");
    }
}
