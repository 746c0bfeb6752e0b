//! [`Observer`] and [`ObserverFeed`]: leader changes in order, never a term going back.
//!
//! A feed holds the latest state only (a `tokio::sync::watch` channel), so a slow observer
//! skips intermediate leaders instead of queueing without bound — the "may skip, never go
//! back" rule of etcd's Observe. The feed refuses a state whose term is lower than the one
//! it holds, and each observer refuses one lower than it last reported, so a reordered
//! backend notification cannot make an observer go back — for backends whose terms only
//! grow. Where terms may restart (Redis without `appendfsync always` after it lost its
//! data), a feed made [`restarting`](ObserverFeed::restarting) takes every state as it
//! comes: the seat glue feeds it reads made one after another, each the truth when made,
//! and refusing a lower term would hide every later leader.
//!
//! A term may also be a **guess**: a seat held without its value record (a campaign between
//! its grant and its first proclaim, a plain lock on `election.NAME`) is reported after
//! the record wait with the best term the backend can tell
//! ([`SeatState::UnwrittenGuess`](super::seat::SeatState::UnwrittenGuess): Redis's token
//! counter, which refused attempts raise too, so it may be above the holder's token). A
//! feed and its observers hold a guess to the order of what came before it, but never an
//! exact term to a guess: the holder's exact term replaces a guessed one even when lower,
//! and is refused only when lower than the last exact term. Otherwise the first guess above
//! the real term hid the real leader for its whole leadership.

use std::fmt;

use tokio::sync::watch;
use tokio::task::AbortHandle;

use super::LeaderInfo;
use crate::FencingToken;

/// What a feed holds.
#[derive(Debug, Clone, Default)]
pub(crate) struct Published {
    state: Option<LeaderInfo>,
    /// `state`'s term is the backend's guess (a seat held without its record).
    guessed: bool,
    /// An exact term below this is refused (terms not restarting): the last exact leader's
    /// term while it or a guess after it is current; `None` after an empty seat.
    floor: Option<FencingToken>,
}

/// The publishing side of an election's observers (for backend authors).
#[derive(Debug, Clone)]
pub struct ObserverFeed {
    tx: watch::Sender<Published>,
    /// Terms may go back (see the module docs): no state is refused for its term.
    restarts: bool,
}

impl Default for ObserverFeed {
    fn default() -> Self {
        Self::new(None)
    }
}

impl ObserverFeed {
    /// A feed whose current state is `initial`.
    pub fn new(initial: Option<LeaderInfo>) -> Self {
        let floor = initial.as_ref().map(|l| l.term);
        ObserverFeed {
            tx: watch::channel(Published {
                state: initial,
                guessed: false,
                floor,
            })
            .0,
            restarts: false,
        }
    }

    /// This feed for a backend whose terms may restart (its tokens are not strictly
    /// monotonic): a lower term is published, and its observers report it.
    pub fn restarting(mut self, restarts: bool) -> Self {
        self.restarts = restarts;
        self
    }

    /// Publishes `state` unless it equals the current one or (terms not
    /// [`restarting`](Self::restarting)) names a lower term than the current leader's
    /// exact one; returns whether it was published. A leader here has its exact term: it
    /// replaces a [guessed](Self::publish_guess) one even when lower.
    pub fn publish(&self, state: Option<LeaderInfo>) -> bool {
        self.send(state, false)
    }

    /// Publishes `leader`, whose term is the backend's guess (a seat held without its
    /// record: see the module docs), unless it equals the current state or (terms not
    /// [`restarting`](Self::restarting)) its term is lower than the current leader's;
    /// returns whether it was published. The holder's exact term, published later,
    /// replaces it even when lower.
    pub fn publish_guess(&self, leader: LeaderInfo) -> bool {
        self.send(Some(leader), true)
    }

    fn send(&self, state: Option<LeaderInfo>, guessed: bool) -> bool {
        let restarts = self.restarts;
        self.tx.send_if_modified(|cur| {
            let lower = |floor: Option<FencingToken>| matches!((floor, &state), (Some(f), Some(s)) if s.term < f);
            // A guess is held to whatever is current; an exact term only to exact ones.
            let floor = if guessed {
                cur.state.as_ref().map(|c| c.term)
            } else {
                cur.floor
            };
            if !restarts && lower(floor) {
                return false;
            }
            if cur.state == state {
                // The same leader: only a guess confirmed changes (silently; observers
                // have it already). An exact state is never marked a guess.
                if cur.guessed && !guessed {
                    cur.guessed = false;
                    cur.floor = state.as_ref().map(|l| l.term);
                }
                return false;
            }
            cur.floor = match (&state, guessed) {
                (None, _) => None,
                (Some(l), false) => Some(l.term),
                (Some(_), true) => cur.floor,
            };
            cur.state = state;
            cur.guessed = guessed;
            true
        })
    }

    /// Marks the seat empty if `term` still leads it; returns whether it did.
    pub fn vacate(&self, term: FencingToken) -> bool {
        self.tx.send_if_modified(|cur| {
            if cur.state.as_ref().is_some_and(|c| c.term == term) {
                *cur = Published::default();
                true
            } else {
                false
            }
        })
    }

    /// The state observers see now.
    pub fn current(&self) -> Option<LeaderInfo> {
        self.tx.borrow().state.clone()
    }

    /// Whether the current state's term is a guess ([`publish_guess`](Self::publish_guess)).
    pub fn current_is_guess(&self) -> bool {
        self.tx.borrow().guessed
    }

    /// A new observer, starting at the current state.
    pub fn subscribe(&self) -> Observer {
        Observer::tagged(self.tx.subscribe(), None).restarting(self.restarts)
    }

    /// A new observer that aborts `task` (the backend's watcher feeding this feed) when
    /// dropped.
    pub fn subscribe_with(&self, task: AbortHandle) -> Observer {
        Observer::tagged(self.tx.subscribe(), Some(task)).restarting(self.restarts)
    }
}

/// An observer fed by reading the seat every `interval` with `read` (for backends without
/// a change notification that carries the value). The first read is made before this
/// returns, so the observer's first [`changed`](Observer::changed) reports the seat as that
/// read found it — never an empty seat while a leader leads — and a backend that cannot be
/// asked fails here. The polling task lives as long as the observer and is aborted with it;
/// a later failed read is logged and retried at the next tick. `restarts`: the backend's
/// terms may go back (see [`ObserverFeed::restarting`]). Every term `read` returns is taken
/// as exact.
///
/// # Errors
/// The first read's error.
///
/// # Cancel safety
/// Cancel safe: dropped before it returns, no polling task is left behind.
pub async fn polled<F, Fut>(interval: std::time::Duration, restarts: bool, read: F) -> crate::Result<Observer>
where
    F: Fn() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = crate::Result<Option<LeaderInfo>>> + Send + 'static,
{
    polled_tagged(interval, restarts, move || {
        let read = read();
        async move { read.await.map(|state| (state, false)) }
    })
    .await
}

/// [`polled`] for a `read` that tells whether the leader's term is a guess.
pub(crate) async fn polled_tagged<F, Fut>(
    interval: std::time::Duration,
    restarts: bool,
    read: F,
) -> crate::Result<Observer>
where
    F: Fn() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = crate::Result<(Option<LeaderInfo>, bool)>> + Send + 'static,
{
    // Read before returning: an observer returned at once, with the feed's empty default,
    // answered its first `changed()` with "no leader" while one led (file://: `none`
    // first, the leader 20 ms later; a review).
    let (first, guessed) = read().await?;
    let feed = ObserverFeed::default().restarting(restarts);
    feed.send(first, guessed);
    let tx = feed.clone();
    let task = tokio::spawn(async move {
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            match read().await {
                Ok((state, guessed)) => {
                    tx.send(state, guessed);
                }
                Err(e) => tracing::warn!(error = %e, "election observer could not read the seat"),
            }
        }
    });
    Ok(feed.subscribe_with(task.abort_handle()))
}

/// What an observer reads: a backend's plain channel ([`Observer::new`]), or a feed's,
/// which tells guessed terms.
enum Source {
    Plain(watch::Receiver<Option<LeaderInfo>>),
    Feed(watch::Receiver<Published>),
}

impl Source {
    async fn changed(&mut self) -> Result<(), watch::error::RecvError> {
        match self {
            Source::Plain(rx) => rx.changed().await,
            Source::Feed(rx) => rx.changed().await,
        }
    }

    /// The current state and whether its term is a guess, marked seen.
    fn take(&mut self) -> (Option<LeaderInfo>, bool) {
        match self {
            Source::Plain(rx) => (rx.borrow_and_update().clone(), false),
            Source::Feed(rx) => {
                let p = rx.borrow_and_update();
                (p.state.clone(), p.guessed)
            }
        }
    }

    fn current(&self) -> Option<LeaderInfo> {
        match self {
            Source::Plain(rx) => rx.borrow().clone(),
            Source::Feed(rx) => rx.borrow().state.clone(),
        }
    }
}

/// The leader changes of one election, from [`Election::observe`](super::Election::observe).
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> fencelock::Result<()> {
/// use fencelock::election::{memory::MemoryElection, Election};
/// use fencelock::LockOptions;
/// let elections = MemoryElection::new();
/// let mut observer = elections.observe("scheduler").await?;
/// assert_eq!(observer.changed().await, Some(None)); // the seat is empty at first
/// let leadership = elections.campaign("scheduler", b"10.0.0.7:80", &LockOptions::new()).await?;
/// let seen = observer.changed().await.flatten();
/// assert_eq!(seen.map(|l| l.term), Some(leadership.term()));
/// # Ok(()) }
/// ```
pub struct Observer {
    rx: Source,
    /// The term of the last leader reported, exact or guessed.
    last_term: Option<FencingToken>,
    /// The term of the last leader reported with its exact term.
    last_exact: Option<FencingToken>,
    /// Terms may go back: none is skipped (see [`ObserverFeed::restarting`]).
    restarts: bool,
    started: bool,
    task: Option<AbortHandle>,
}

impl fmt::Debug for Observer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Observer")
            .field("last_term", &self.last_term)
            .finish_non_exhaustive()
    }
}

impl Drop for Observer {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

impl Observer {
    /// An observer of `rx`; `task`, when given, is the backend's watcher task, aborted when
    /// the observer is dropped (for backend authors).
    /// Every term `rx` carries is taken as exact.
    pub fn new(rx: watch::Receiver<Option<LeaderInfo>>, task: Option<AbortHandle>) -> Self {
        Self::with_source(Source::Plain(rx), task)
    }

    fn tagged(rx: watch::Receiver<Published>, task: Option<AbortHandle>) -> Self {
        Self::with_source(Source::Feed(rx), task)
    }

    fn with_source(rx: Source, task: Option<AbortHandle>) -> Self {
        Observer {
            rx,
            last_term: None,
            last_exact: None,
            restarts: false,
            started: false,
            task,
        }
    }

    /// This observer for a backend whose terms may restart: it reports a lower term too.
    pub fn restarting(mut self, restarts: bool) -> Self {
        self.restarts = restarts;
        self
    }

    /// The state now, without waiting (and without marking it seen).
    pub fn current(&self) -> Option<LeaderInfo> {
        self.rx.current()
    }

    /// Waits for the next change and returns the new state: `Some(Some(leader))` for a
    /// leader (new, or with a proclaimed value), `Some(None)` for an empty seat, `None`
    /// when the backend ended the observation — only etcd's observer ends, after 20 failed
    /// watches in a row; every other backend's keeps reading for as long as it lives, also
    /// after its client's [`close`](super::Election::close) (drop it to stop it).
    /// The first call returns the state at subscription at once: on every backend of this
    /// workspace, the seat as read before [`observe`](super::Election::observe) returned. A leader reported with a
    /// guessed term (no value: a seat held without its record, see the module docs) may be
    /// followed by the same holder's lower exact term; exact terms never go back.
    ///
    /// # Cancel safety
    /// Cancel safe: a change not returned because the future was dropped is returned by
    /// the next call (or skipped in favour of a newer one).
    pub async fn changed(&mut self) -> Option<Option<LeaderInfo>> {
        // Each turn consumes one published state; the skip only fires for a state with a
        // lower term than one already reported (a guess: than any; an exact term: than an
        // exact one), which a feed never publishes.
        loop {
            if self.started {
                self.rx.changed().await.ok()?;
            }
            self.started = true;
            let (state, guessed) = self.rx.take();
            let floor = if guessed { self.last_term } else { self.last_exact };
            match &state {
                Some(l) if !self.restarts && floor.is_some_and(|t| l.term < t) => continue,
                Some(l) => {
                    self.last_term = Some(l.term);
                    if !guessed {
                        self.last_exact = Some(l.term);
                    }
                }
                None => {}
            }
            return Some(state);
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail by panicking

    use super::*;

    fn leader(term: u64, value: &[u8]) -> LeaderInfo {
        LeaderInfo {
            value: value.to_vec(),
            term: FencingToken::new(term),
        }
    }

    fn seen(state: Option<Option<LeaderInfo>>) -> Option<(u64, Vec<u8>)> {
        state.expect("observing").map(|l| (l.term.get(), l.value))
    }

    /// A guessed term above the holder's (Redis's counter, raised by a refused attempt)
    /// made the feed refuse the holder's exact record for its whole leadership (a review).
    #[tokio::test]
    async fn an_exact_term_replaces_a_guessed_one_even_when_lower() {
        let feed = ObserverFeed::default();
        let mut observer = feed.subscribe();
        assert_eq!(observer.changed().await, Some(None));
        assert!(feed.publish(Some(leader(3, b"a"))));
        assert_eq!(seen(observer.changed().await), Some((3, b"a".to_vec())));
        assert!(feed.publish_guess(leader(5, b"")));
        assert!(feed.current_is_guess());
        assert_eq!(seen(observer.changed().await), Some((5, vec![])));
        assert!(feed.publish(Some(leader(4, b"b"))), "the exact term was refused");
        assert!(!feed.current_is_guess());
        assert_eq!(seen(observer.changed().await), Some((4, b"b".to_vec())));
        // Exact terms still never go back, nor does a guess below what is current.
        assert!(!feed.publish(Some(leader(3, b"a"))));
        assert!(!feed.publish_guess(leader(3, b"")));
        assert_eq!(feed.current(), Some(leader(4, b"b")));
    }

    #[test]
    fn an_exact_term_below_the_last_exact_one_is_refused_after_a_guess_too() {
        let feed = ObserverFeed::default();
        feed.publish(Some(leader(4, b"a")));
        feed.publish_guess(leader(9, b""));
        assert!(feed.publish_guess(leader(10, b"")), "a guess that grows");
        assert!(!feed.publish_guess(leader(9, b"")), "a guess going back");
        assert!(!feed.publish(Some(leader(3, b"old"))), "below the last exact term");
        assert!(feed.publish(Some(leader(4, b"a2"))));
        // After an empty seat, nothing is held against the next leader (as before).
        feed.publish(None);
        assert!(feed.publish_guess(leader(2, b"")));
        assert!(feed.publish(Some(leader(1, b"z"))));
    }

    /// The same leader confirmed by its record: nothing new for observers, but it is
    /// exact from then on, so a lower exact term is refused.
    #[test]
    fn a_guess_confirmed_by_its_record_becomes_exact() {
        let feed = ObserverFeed::default();
        feed.publish(Some(leader(2, b"")));
        assert!(feed.publish_guess(leader(6, b"")));
        assert!(!feed.publish(Some(leader(6, b""))), "the same state again");
        assert!(!feed.current_is_guess());
        assert!(!feed.publish(Some(leader(5, b"x"))));
        // An exact state is never downgraded to a guess.
        assert!(!feed.publish_guess(leader(6, b"")));
        assert!(!feed.current_is_guess());
    }

    #[test]
    fn a_restarting_feed_takes_every_state() {
        let feed = ObserverFeed::default().restarting(true);
        feed.publish(Some(leader(7, b"a")));
        assert!(feed.publish_guess(leader(2, b"")));
        assert!(feed.publish(Some(leader(1, b"b"))));
    }

    /// An observer of a backend's plain channel takes every term as exact (as before).
    #[tokio::test]
    async fn a_plain_observer_never_goes_back() {
        let (tx, rx) = watch::channel(Some(leader(5, b"a")));
        let mut observer = Observer::new(rx, None);
        assert_eq!(seen(observer.changed().await), Some((5, b"a".to_vec())));
        tx.send_replace(Some(leader(4, b"b")));
        tx.send_replace(None);
        assert_eq!(observer.changed().await, Some(None), "the lower term was reported");
    }
}
