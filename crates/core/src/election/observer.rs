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

use std::fmt;

use tokio::sync::watch;
use tokio::task::AbortHandle;

use super::LeaderInfo;

/// The publishing side of an election's observers (for backend authors).
#[derive(Debug, Clone)]
pub struct ObserverFeed {
    tx: watch::Sender<Option<LeaderInfo>>,
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
        ObserverFeed {
            tx: watch::channel(initial).0,
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
    /// [`restarting`](Self::restarting)) names a lower term than the current leader's;
    /// returns whether it was published.
    pub fn publish(&self, state: Option<LeaderInfo>) -> bool {
        let restarts = self.restarts;
        self.tx.send_if_modified(|cur| {
            let older = !restarts && matches!((&*cur, &state), (Some(c), Some(s)) if s.term < c.term);
            if older || *cur == state {
                return false;
            }
            *cur = state;
            true
        })
    }

    /// Marks the seat empty if `term` still leads it; returns whether it did.
    pub fn vacate(&self, term: crate::FencingToken) -> bool {
        self.tx.send_if_modified(|cur| {
            if cur.as_ref().is_some_and(|c| c.term == term) {
                *cur = None;
                true
            } else {
                false
            }
        })
    }

    /// The state observers see now.
    pub fn current(&self) -> Option<LeaderInfo> {
        self.tx.borrow().clone()
    }

    /// A new observer, starting at the current state.
    pub fn subscribe(&self) -> Observer {
        Observer::new(self.tx.subscribe(), None).restarting(self.restarts)
    }

    /// A new observer that aborts `task` (the backend's watcher feeding this feed) when
    /// dropped.
    pub fn subscribe_with(&self, task: AbortHandle) -> Observer {
        Observer::new(self.tx.subscribe(), Some(task)).restarting(self.restarts)
    }
}

/// An observer fed by reading the seat every `interval` with `read` (for backends without
/// a change notification that carries the value). The polling task lives as long as the
/// observer and is aborted with it; a failed read is logged and retried at the next tick.
/// `restarts`: the backend's terms may go back (see [`ObserverFeed::restarting`]).
pub fn polled<F, Fut>(interval: std::time::Duration, restarts: bool, read: F) -> Observer
where
    F: Fn() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = crate::Result<Option<LeaderInfo>>> + Send + 'static,
{
    let feed = ObserverFeed::default().restarting(restarts);
    let tx = feed.clone();
    let task = tokio::spawn(async move {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            match read().await {
                Ok(state) => {
                    tx.publish(state);
                }
                Err(e) => tracing::warn!(error = %e, "election observer could not read the seat"),
            }
        }
    });
    feed.subscribe_with(task.abort_handle())
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
    rx: watch::Receiver<Option<LeaderInfo>>,
    last_term: Option<crate::FencingToken>,
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
    pub fn new(rx: watch::Receiver<Option<LeaderInfo>>, task: Option<AbortHandle>) -> Self {
        Observer {
            rx,
            last_term: None,
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
        self.rx.borrow().clone()
    }

    /// Waits for the next change and returns the new state: `Some(Some(leader))` for a
    /// leader (new, or with a proclaimed value), `Some(None)` for an empty seat, `None`
    /// when the backend ended the observation (the client was closed or its watch failed).
    /// The first call returns the state at subscription at once.
    ///
    /// # Cancel safety
    /// Cancel safe: a change not returned because the future was dropped is returned by
    /// the next call (or skipped in favour of a newer one).
    pub async fn changed(&mut self) -> Option<Option<LeaderInfo>> {
        // Each turn consumes one published state; the skip only fires for a state with a
        // lower term than one already reported, which a feed never publishes.
        loop {
            if self.started {
                self.rx.changed().await.ok()?;
            }
            self.started = true;
            let state = self.rx.borrow_and_update().clone();
            match &state {
                Some(l) if !self.restarts && self.last_term.is_some_and(|t| l.term < t) => continue,
                Some(l) => self.last_term = Some(l.term),
                None => {}
            }
            return Some(state);
        }
    }
}
