//! [`Pool`]: the connections of one backend instance — 1 to `connections` of them, made
//! lazily, one at a time, and made again when they end.
//!
//! The server runs one connection's statements one after another, and each grant's commit
//! waits for its own WAL flush; statements on *different* connections run side by side,
//! and their flushes are shared (group commit). So a new grant goes to a connection with
//! nothing in flight, and when every connection is busy and the pool is not full, to a
//! new one (the statement that finds them busy pays that one connect). Least busy rather
//! than round-robin: round-robin would send a statement behind one that is stuck (a row
//! lock held by someone's transaction, a slow disk) while another connection idles, and
//! would open every connection even for an instance that never has two statements in
//! flight (a client of one key keeps one connection; 64 of them do not take 256 of the
//! server's `max_connections`).
//!
//! With every connection silent ([`Session::is_silent`]) and the pool full, one more
//! connection (a spare) may be made for new statements, and one connection is given back
//! once two answer again and one of them holds no lease: see [`Pool::may_grow`] and
//! [`Pool::give_back_surplus`].
//!
//! What a lease does after its grant (extend, renewals, release) goes through the
//! connection that granted it ([`crate::session::Session`]: a lease is reported lost when
//! that connection ends). One connection `LISTEN`s for release notifications; when it
//! ends, every waiter of the instance is woken and the next statement sent makes another
//! one listen, and when it falls silent another one listens in its place at once (the
//! silent one stops when it answers again): see [`crate::node::PgNode`].

use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio::time::Instant;

use crate::session::Session;

/// How long a pool that failed to make another connection (the server's
/// `max_connections` reached, say) works with the ones it has before it tries again.
pub(crate) const GROW_BACKOFF: Duration = Duration::from_secs(1);

pub(crate) struct Pool {
    /// The most connections (`connections` in the URL).
    size: usize,
    sessions: Mutex<Vec<Arc<Session>>>,
    /// One connect at a time.
    pub connecting: tokio::sync::Mutex<()>,
    /// One `LISTEN` (or `UNLISTEN`) at a time.
    pub listening: tokio::sync::Mutex<()>,
    /// Whether a task is making another connection listen in place of a silent listener
    /// (one at a time: every statement unanswered on the listener would start one).
    pub relistening: std::sync::atomic::AtomicBool,
    /// Whether a task is stopping a replaced listener's `LISTEN` (one at a time: every
    /// statement answered on it would start one).
    pub unlistening: std::sync::atomic::AtomicBool,
    /// The connection that `LISTEN`s on the release channel.
    listener: Mutex<Weak<Session>>,
    /// No further connection is tried before this instant (after a failed one).
    grow_after: Mutex<Option<Instant>>,
    /// Set by `close()` ([`crate::node::PgNode::close_session`]), cleared by the next
    /// statement of the caller's: the instance's background work (making another
    /// connection listen) opens no connection while it is set, and ends one it finished
    /// opening after it was set.
    closed: std::sync::atomic::AtomicBool,
    /// Signalled when a connection is added: statements waiting for a turn on the others
    /// look again, so the new one's turns go to them before later arrivals.
    pub grown: tokio::sync::Notify,
}

impl Pool {
    pub(crate) fn new(size: usize) -> Self {
        Pool {
            size: size.max(1),
            sessions: Mutex::default(),
            connecting: tokio::sync::Mutex::new(()),
            listening: tokio::sync::Mutex::new(()),
            relistening: std::sync::atomic::AtomicBool::new(false),
            unlistening: std::sync::atomic::AtomicBool::new(false),
            listener: Mutex::default(),
            grow_after: Mutex::default(),
            closed: std::sync::atomic::AtomicBool::new(false),
            grown: tokio::sync::Notify::new(),
        }
    }

    fn sessions(&self) -> std::sync::MutexGuard<'_, Vec<Arc<Session>>> {
        self.sessions.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The live connection with the fewest statements in flight, whether or not a turn is
    /// free on it, a silent one ([`Session::is_silent`]) only when every one is: for
    /// statements sent without a turn (the ticket keeper, a queue leave) and for a lease
    /// taken over from a hand-off. `None` when none is live.
    pub(crate) fn least_loaded(&self) -> Option<Arc<Session>> {
        self.live().into_iter().min_by_key(|s| (s.is_silent(), s.in_flight()))
    }

    /// The live connections. A connection found closed is dropped from the pool and
    /// ended here (its leases reported lost) if its driver has not done so yet.
    pub(crate) fn live(&self) -> Vec<Arc<Session>> {
        let mut closed = Vec::new();
        let live = {
            let mut sessions = self.sessions();
            sessions.retain(|s| {
                let alive = s.is_alive();
                if !alive {
                    closed.push(Arc::clone(s));
                }
                alive
            });
            sessions.clone()
        };
        for s in closed {
            s.end("the connection was closed");
        }
        live
    }

    /// Adds a new connection.
    pub(crate) fn add(&self, session: Arc<Session>) {
        self.sessions().push(session);
        self.grown.notify_waiters();
    }

    /// Takes every connection out of the pool (to end them), and marks the pool closed
    /// ([`is_closed`](Self::is_closed)) until [`reopen`](Self::reopen).
    pub(crate) fn take_all(&self) -> Vec<Arc<Session>> {
        self.closed.store(true, std::sync::atomic::Ordering::SeqCst);
        std::mem::take(&mut *self.sessions())
    }

    /// Whether `close()` ended the connections and no statement of the caller's came
    /// since ([`take_all`](Self::take_all)).
    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// A statement of the caller's after `close()`: the instance connects again.
    pub(crate) fn reopen(&self) {
        self.closed.store(false, std::sync::atomic::Ordering::SeqCst);
    }

    /// Whether another connection may be made now, with `live` open: fewer than the
    /// bound (`connections`), or — a *spare* — exactly the bound and every one of them
    /// silent ([`Session::is_silent`]).
    ///
    /// Why a spare: a silent connection is kept while a lease on it is still valid, which
    /// may be a whole TTL (minutes, for a long lease). With every connection silent and
    /// none to be made, each new statement would go behind a stalled one and fail after
    /// its timeout — with `connections=1`, one statement stuck on a row lock held by
    /// someone's transaction stalled the whole instance, every key, until that lease
    /// lapsed. Failing new statements fast instead would still stall every key; one
    /// connection more keeps the other keys working, and a silent server (hung, cut off)
    /// costs only the connect's bound, then [`GROW_BACKOFF`]. The spare is made only while
    /// none of the others answers, and one connection is given back once two answer and
    /// one of them holds nothing ([`give_back_surplus`](Self::give_back_surplus); while
    /// each holds a lease, not before one of those leases ends): the pool exceeds its
    /// bound by one at most.
    pub(crate) fn may_grow(&self, live: &[Arc<Session>]) -> bool {
        if live.is_empty() {
            return true;
        }
        let room = live.len() < self.size || (live.len() == self.size && live.iter().all(|s| s.is_silent()));
        let after = *self.grow_after.lock().unwrap_or_else(|p| p.into_inner());
        room && after.is_none_or(|t| Instant::now() >= t)
    }

    /// Gives back one connection when the pool holds more than its bound (a spare made
    /// while every connection was silent, see [`may_grow`](Self::may_grow)) and at least
    /// two answer: any one that answers, is not the listener, holds no lease and has
    /// nothing in flight (each such one is tried); every turn on it is taken first, so
    /// nothing is sent on it after. Returns the backend pid of the one closed. None is
    /// closed while each of them holds a lease (a lease is tied to its connection): the
    /// next statement looks again, and the pool stays one over its bound until a lease
    /// ends or is released — with `connections=1` and an auto-renewed lease on the
    /// connection that was silent, as long as that lease lives.
    pub(crate) fn give_back_surplus(&self) -> Option<i32> {
        // The common case, without `live()`'s copy of the list: dead connections only add
        // to this count, so at or under the bound here the live ones are too.
        if self.sessions().len() <= self.size {
            return None;
        }
        let live = self.live();
        if live.len() <= self.size {
            return None;
        }
        let listener = self.listener();
        let answering = live.iter().filter(|s| !s.is_silent()).count();
        if answering < 2 {
            return None;
        }
        // Every candidate, not only the first: the first idle one may hold a lease (its
        // connection's lease renewed for hours) while another one holds nothing.
        let candidates = live
            .iter()
            .filter(|s| !s.is_silent() && s.in_flight() == 0 && !listener.as_ref().is_some_and(|l| Arc::ptr_eq(l, s)));
        for candidate in candidates {
            let Ok(turns) = Arc::clone(&candidate.turns).try_acquire_many_owned(crate::node::IN_FLIGHT as u32) else {
                continue; // a statement took a turn on it meanwhile
            };
            if !candidate.retire() {
                continue; // it holds a lease: it stays (its turns are given back here)
            }
            turns.forget(); // never a turn on it again, for a list of connections taken before
            return Some(candidate.backend_pid);
        }
        None
    }

    /// A connection could not be made: the pool works with the ones it has for
    /// [`GROW_BACKOFF`].
    pub(crate) fn grow_failed(&self) {
        *self.grow_after.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now() + GROW_BACKOFF);
    }

    /// The live connection that listens, if any.
    pub(crate) fn listener(&self) -> Option<Arc<Session>> {
        let listener = self.listener.lock().unwrap_or_else(|p| p.into_inner());
        listener.upgrade().filter(|s| s.is_alive())
    }

    /// Whether `session` is the instance's listener ([`listener`](Self::listener)).
    pub(crate) fn is_listener(&self, session: &Arc<Session>) -> bool {
        self.listener().is_some_and(|l| Arc::ptr_eq(&l, session))
    }

    /// `session` listens now (its `LISTEN` was answered).
    pub(crate) fn set_listener(&self, session: &Arc<Session>) {
        session.set_listening();
        *self.listener.lock().unwrap_or_else(|p| p.into_inner()) = Arc::downgrade(session);
    }

    /// The live connection that granted `grant` (while it is held).
    pub(crate) fn holder_of(&self, grant: &str) -> Option<Arc<Session>> {
        self.live().into_iter().find(|s| s.holds(grant))
    }
}

/// The connections of `live` that are not silent ([`Session::is_silent`]), or all of them
/// when every one is.
pub(crate) fn answering(live: Vec<Arc<Session>>) -> Vec<Arc<Session>> {
    if live.iter().all(|s| s.is_silent()) {
        return live;
    }
    live.into_iter().filter(|s| !s.is_silent()).collect()
}

/// The connection to send a new statement on, and whether it is idle: the one with the
/// fewest statements in flight that has a free turn (`None`: every turn is taken). A
/// silent connection ([`Session::is_silent`]: a statement went unanswered past its
/// timeout, nothing answered since) is never idle and comes last: it is kept while its
/// leases may still be renewed through it, but a new grant sent there would wait for it
/// — the pool makes another connection when it may, or waits for a turn on one that
/// answers ([`answering`]).
pub(crate) fn least_busy(live: &[Arc<Session>]) -> Option<(&Arc<Session>, bool)> {
    live.iter()
        .filter(|s| s.turns.available_permits() > 0)
        .min_by_key(|s| (s.is_silent(), s.in_flight()))
        .map(|s| (s, !s.is_silent() && s.in_flight() == 0))
}
