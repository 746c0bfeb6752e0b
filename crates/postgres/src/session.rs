//! [`Session`]: one server connection, its prepared statements, its turns to send
//! statements, its queued renewals, and the leases granted through it.
//!
//! A lease belongs to the session that granted it, as a ZooKeeper node belongs to its
//! session: when the connection ends (the server died or restarted, the backend was
//! terminated, the connection stayed silent until no lease on it could still be renewed
//! and was cut), every live lease of the session is reported lost at once — long before
//! its TTL could have run out on the server. Its row stays until it expires on the server (never before
//! the validity the holder was given ends), so no one else is granted the key while the
//! old holder could still believe in it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fencelock_core::{LeaseReporter, LostReason};
use tokio::sync::Semaphore;
use tokio::task::AbortHandle;
use tokio::time::Instant;
use tokio_postgres::{Client, Statement};

/// The prepared statements of one connection (prepared once, so each later call is one
/// round trip: Bind + Execute, no Parse).
pub(crate) struct Statements {
    pub acquire: Statement,
    pub acquire_queue: Statement,
    pub acquire_queued: Statement,
    pub release: Statement,
    pub release_handing: Statement,
    pub leave_release: Statement,
    pub extend: Statement,
    pub renew_many: Statement,
    pub dequeue: Statement,
    pub keep_tickets: Statement,
    pub abandon_mark: Statement,
    pub abandon_expire: Statement,
    pub abandon_release: Statement,
}

impl Statements {
    /// The release that hands the key to the oldest waiter when `handing` (the instance's
    /// `handoff`), else the plain one.
    pub(crate) fn release(&self, handing: bool) -> &Statement {
        if handing {
            &self.release_handing
        } else {
            &self.release
        }
    }
}

struct Tracked {
    reporter: LeaseReporter,
    key: String,
    grant: String,
}

/// What the server answered on one connection, and when.
struct Answers {
    /// When the server last answered a statement (or the connection was opened).
    last: Instant,
    /// The send instant of the oldest statement that went unanswered within its timeout
    /// with nothing answered since; `None` once something is answered. New statements go
    /// to other connections meanwhile ([`Session::is_silent`]).
    silent_since: Option<Instant>,
}

/// One live connection.
pub(crate) struct Session {
    pub client: Client,
    pub st: Statements,
    /// The server process serving this connection (`pg_backend_pid()`).
    pub backend_pid: i32,
    /// The turns to send a statement other than a renewal on this connection
    /// ([`crate::node::IN_FLIGHT`]).
    pub turns: Arc<Semaphore>,
    /// The renewals of this connection's leases waiting for a statement, and the turns to
    /// send one.
    pub renewals: crate::renewals::Pending,
    /// Whether this connection `LISTEN`s on the release channel: the instance's listener,
    /// or one it replaced while it was silent that has not `UNLISTEN`ed yet.
    listening: AtomicBool,
    alive: AtomicBool,
    driver: AbortHandle,
    next_id: AtomicU64,
    leases: Mutex<HashMap<u64, Tracked>>,
    /// When the server last answered, and since when it has been silent.
    answers: Mutex<Answers>,
    /// Statements sent without a turn (the waiter tickets' keeper) still unanswered.
    unturned: AtomicUsize,
    /// Leases granted (or handed to us) through this connection and not tracked yet
    /// ([`claim`](Self::claim)).
    claims: AtomicUsize,
    /// Holds on the connection's driver ([`hold_driver`](Self::hold_driver)): while there
    /// are any, ending the session leaves the driver to the last hold's release.
    driver_holds: AtomicUsize,
}

impl Session {
    pub(crate) fn new(client: Client, st: Statements, backend_pid: i32, driver: AbortHandle) -> Self {
        Session {
            client,
            st,
            backend_pid,
            turns: Arc::new(Semaphore::new(crate::node::IN_FLIGHT)),
            renewals: crate::renewals::Pending::default(),
            listening: AtomicBool::new(false),
            alive: AtomicBool::new(true),
            driver,
            next_id: AtomicU64::new(0),
            driver_holds: AtomicUsize::new(0),
            leases: Mutex::new(HashMap::new()),
            answers: Mutex::new(Answers {
                last: Instant::now(),
                silent_since: None,
            }),
            unturned: AtomicUsize::new(0),
            claims: AtomicUsize::new(0),
        }
    }

    fn leases(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Tracked>> {
        self.leases.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Notes that the server answered a statement: the connection is alive.
    pub(crate) fn answered(&self) {
        let mut answers = self.answers();
        answers.last = Instant::now();
        answers.silent_since = None;
    }

    fn answers(&self) -> std::sync::MutexGuard<'_, Answers> {
        self.answers.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether a statement went unanswered past its timeout and nothing was answered on
    /// this connection since it was sent: slow or dead, it is not where a new statement
    /// should go while another connection can take it (the pool's choice,
    /// [`crate::pool::least_busy`]). A lease's own statements still go here.
    pub(crate) fn is_silent(&self) -> bool {
        self.answers().silent_since.is_some()
    }

    /// Whether the connection is dead rather than slow, judged when a statement sent at
    /// `sent` went unanswered within its timeout. Nothing answered since `sent` marks the
    /// connection silent ([`is_silent`](Self::is_silent)); it is dead when it has been so
    /// for at least the statement `timeout` **and no lease granted through it is still
    /// valid**. While one is, a late answer — to the statement that timed out or to a
    /// renewal queued behind it — may still renew it: cutting the connection then would
    /// report it lost for nothing, since its row stays on the server until it expires
    /// either way, and its validity, counted on the client's clock, runs out before that
    /// whatever this judgement says. (The grace was a third of the shortest TTL: renewals
    /// held up 2.5 s — see [`crate::sql::renew_many`] — cut the bench's connections with
    /// every lease on them, 6 s TTL.) A truly dead connection's leases are reported lost
    /// when their validity runs out, and the connection is cut at the first statement
    /// unanswered after that (a lapsed lease's release is one).
    pub(crate) fn is_dead(&self, sent: Instant, timeout: Duration) -> bool {
        {
            let mut answers = self.answers();
            if answers.last >= sent {
                return false;
            }
            if answers.silent_since.is_none_or(|since| sent < since) {
                answers.silent_since = Some(sent);
            }
        }
        if sent.elapsed() < timeout {
            return false;
        }
        let now = Instant::now();
        !self
            .leases()
            .values()
            .any(|t| t.reporter.valid_until().is_some_and(|until| until > now))
    }

    /// Statements in flight on this connection or waiting for the server's answer
    /// (renewals included): the pool sends a new grant to a connection with none.
    pub(crate) fn in_flight(&self) -> usize {
        let others = crate::node::IN_FLIGHT.saturating_sub(self.turns.available_permits());
        let renewals = crate::renewals::IN_FLIGHT.saturating_sub(self.renewals.turns().available_permits());
        others + renewals + self.unturned.load(Ordering::SeqCst) + self.claims.load(Ordering::SeqCst)
    }

    /// Keeps this connection from being given back as surplus ([`retire`](Self::retire))
    /// until the returned guard is dropped — after the lease it is to carry has been
    /// [`track`](Self::track)ed. Counted in [`in_flight`](Self::in_flight).
    ///
    /// Why: a grant's turn is given back when its answer is read, and the lease is
    /// tracked a moment later; a lease handed to us by a release is tracked on a
    /// connection chosen without a turn. In between, the connection held no lease and had
    /// nothing in flight, so another thread giving back a surplus connection could close
    /// it, and the new lease was reported lost at once. Taken under the lock `retire`
    /// checks it under: a claim taken first keeps the connection; a retire first leaves
    /// it not alive, which the claimant checks (a grant's claim is taken while its turn is
    /// held, and `retire` needs every turn, so that one always comes first).
    pub(crate) fn claim(self: &Arc<Self>) -> Claim {
        let _leases = self.leases();
        self.claims.fetch_add(1, Ordering::SeqCst);
        Claim(Arc::clone(self))
    }

    /// Counts a statement sent without a turn in [`in_flight`](Self::in_flight) until the
    /// returned guard is dropped (its answer came, or it was given up).
    pub(crate) fn unturned(self: &Arc<Self>) -> Unturned {
        self.unturned.fetch_add(1, Ordering::SeqCst);
        Unturned(Arc::clone(self))
    }

    /// Marks this connection as the instance's listener (its `LISTEN` was answered).
    pub(crate) fn set_listening(&self) {
        self.listening.store(true, Ordering::SeqCst);
    }

    /// Marks this connection as no longer listening (its `UNLISTEN` was answered).
    pub(crate) fn set_unlistened(&self) {
        self.listening.store(false, Ordering::SeqCst);
    }

    /// Whether this connection `LISTEN`s on the release channel.
    pub(crate) fn is_listening(&self) -> bool {
        self.listening.load(Ordering::SeqCst)
    }

    /// Whether a live lease of `grant` was granted through this connection.
    pub(crate) fn holds(&self, grant: &str) -> bool {
        self.leases().values().any(|t| t.grant == grant)
    }

    /// `true` until the connection ended.
    pub(crate) fn is_alive(&self) -> bool {
        self.alive.load(Ordering::SeqCst) && !self.client.is_closed()
    }

    /// Ties a lease to this session. Returns its id, or `None` when the session had
    /// already ended (the lease is then reported lost here and must be released).
    pub(crate) fn track(&self, reporter: LeaseReporter, key: &str, grant: &str) -> Option<u64> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.leases().insert(
            id,
            Tracked {
                reporter: reporter.clone(),
                key: key.to_owned(),
                grant: grant.to_owned(),
            },
        );
        if self.is_alive() {
            return Some(id);
        }
        self.leases().remove(&id);
        reporter.lost(LostReason::Backend("the connection that granted it ended".into()));
        None
    }

    /// Keeps the connection's driver running (writing what is queued, reading answers)
    /// even if the session ends, until [`release_driver`](Self::release_driver): an
    /// acquire in flight may need its abandon written on this connection after it was
    /// cut as dead (see `PgNode::abandon_now`). Released when the hold is dropped.
    pub(crate) fn hold_driver(self: &Arc<Self>) -> DriverHold {
        self.driver_holds.fetch_add(1, Ordering::SeqCst);
        DriverHold(Arc::clone(self))
    }

    /// Releases a [`hold_driver`](Self::hold_driver); the last one stops the driver of a
    /// session that ended meanwhile.
    fn release_driver(&self) {
        // Either this sees the session ended, or `end` (which clears `alive` before it
        // reads the holds) sees no hold left: one of them stops the driver (twice is
        // harmless).
        if self.driver_holds.fetch_sub(1, Ordering::SeqCst) == 1 && !self.alive.load(Ordering::SeqCst) {
            self.driver.abort();
        }
    }

    /// Forgets a released lease.
    pub(crate) fn untrack(&self, id: u64) {
        self.leases().remove(&id);
    }

    /// Closes this connection if no lease is tracked on it and none is claimed
    /// ([`claim`](Self::claim)) — checked under the same lock as [`track`](Self::track)
    /// adds one and `claim` counts one: a lease tracked after this is reported lost
    /// there, one tracked or claimed before keeps the connection. `true` when it was
    /// closed here.
    pub(crate) fn retire(&self) -> bool {
        {
            let leases = self.leases();
            if !leases.is_empty() || self.claims.load(Ordering::SeqCst) > 0 || !self.alive.swap(false, Ordering::SeqCst)
            {
                return false;
            }
        }
        if self.driver_holds.load(Ordering::SeqCst) == 0 {
            self.driver.abort(); // else the last hold's release does
        }
        true
    }

    /// Ends the session (idempotent): cuts the connection, reports every live lease lost
    /// for `why`, and returns their `(key, grant)` to release elsewhere.
    pub(crate) fn end(&self, why: &str) -> Vec<(String, String)> {
        if !self.alive.swap(false, Ordering::SeqCst) {
            return Vec::new();
        }
        if self.driver_holds.load(Ordering::SeqCst) == 0 {
            self.driver.abort(); // else the last hold's release does
        }
        let tracked: Vec<Tracked> = self.leases().drain().map(|(_, t)| t).collect();
        let reason = LostReason::Backend(format!("the connection to postgres ended: {why}"));
        tracked
            .into_iter()
            .filter(|t| t.reporter.lost(reason.clone()))
            .map(|t| (t.key, t.grant))
            .collect()
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

/// A hold on a session's driver ([`Session::hold_driver`]), released when dropped.
pub(crate) struct DriverHold(Arc<Session>);

impl DriverHold {
    /// The session held.
    pub(crate) fn session(&self) -> &Arc<Session> {
        &self.0
    }
}

impl Drop for DriverHold {
    fn drop(&mut self) {
        self.0.release_driver();
    }
}

/// A statement sent without a turn, counted in its connection's statements in flight
/// while it lives ([`Session::unturned`]).
pub(crate) struct Unturned(Arc<Session>);

impl Drop for Unturned {
    fn drop(&mut self) {
        self.0.unturned.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A lease's claim on the connection that is to carry it ([`Session::claim`]), given up
/// when dropped (once the lease is tracked, or was not made).
pub(crate) struct Claim(Arc<Session>);

impl std::ops::Deref for Claim {
    type Target = Arc<Session>;

    fn deref(&self) -> &Arc<Session> {
        &self.0
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        self.0.claims.fetch_sub(1, Ordering::SeqCst);
    }
}
