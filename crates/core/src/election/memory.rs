//! The in-process election (`memory://[NAME]`): the reference implementation.
//!
//! Each election name is a seat in a table in this process: the holder's grant id, term,
//! value and expiry (monotonic clock), the last term handed out (kept after the seat is
//! freed, so terms keep growing), a wake-up for waiting candidates and the observers'
//! feed. Every check of "do we still lead" compares the grant id, never only that the seat
//! is taken.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::Notify;
use tokio::time::Instant;

use super::{
    validate_value, Election, ElectionCapabilities, LeaderInfo, LeaderRead, Leadership, Observation, Observer,
    ObserverFeed, ProclaimOps,
};
use crate::cleanup::{CleanupGuard, Cleanups};
use crate::closing::CloseGate;
use crate::error::Result;
use crate::guarantees::TokenOrder;
use crate::lease::{Lease, LeaseOps, LeaseParts};
use crate::memory::{url_name, NamedTables, Table};
use crate::options::LockOptions;
use crate::token::{FencingToken, GrantId};
use crate::waiting::{acquire_with, Attempt};

/// What the memory election gives.
pub const CAPABILITIES: ElectionCapabilities = ElectionCapabilities {
    backend: "memory",
    terms: TokenOrder::StrictlyMonotonic,
    leader: LeaderRead::Exact,
    observe: Observation::Native,
    dead_leader_blocks: "its TTL (a dropped leadership resigns at once)",
};

#[derive(Debug)]
struct Holder {
    grant: GrantId,
    term: FencingToken,
    value: Vec<u8>,
    expires: Instant,
}

#[derive(Debug, Default)]
struct Seat {
    last_term: u64,
    holder: Option<Holder>,
    freed: Arc<Notify>,
    feed: ObserverFeed,
}

impl Seat {
    fn live_holder(&self, now: Instant) -> Option<&Holder> {
        self.holder.as_ref().filter(|h| h.expires > now)
    }

    /// Empties the seat and tells waiters and observers.
    fn vacate(&mut self) {
        if let Some(h) = self.holder.take() {
            self.feed.vacate(h.term);
        }
        self.freed.notify_waiters();
    }
}

/// The in-process election service. Instances made with the same name share one table.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> fencelock::Result<()> {
/// use fencelock::election::{memory::MemoryElection, Election};
/// use fencelock::LockOptions;
/// let a = MemoryElection::named("docs");
/// let leadership = a.campaign("scheduler", b"node-a", &LockOptions::new()).await?;
/// let leader = MemoryElection::named("docs").leader("scheduler").await?.expect("a leader");
/// assert_eq!((leader.value.as_slice(), leader.term), (&b"node-a"[..], leadership.term()));
/// leadership.resign().await?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct MemoryElection {
    name: String,
    table: Arc<Table<Seat>>,
    /// Shut by `close` (this instance and its clones, not others on the same table).
    gate: Arc<CloseGate>,
    /// Background resignations of this instance's dropped leaderships, which `close`
    /// waits for.
    cleanups: Cleanups,
}

impl Default for MemoryElection {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryElection {
    /// An election service with its own private table.
    pub fn new() -> Self {
        MemoryElection {
            name: String::new(),
            table: Arc::default(),
            gate: Arc::default(),
            cleanups: Cleanups::new(),
        }
    }

    /// The process-wide table called `name` (kept for the life of the process, so terms
    /// keep growing); `memory://NAME` gives the same one.
    pub fn named(name: &str) -> Self {
        static TABLES: NamedTables<Seat> = NamedTables::new();
        MemoryElection {
            name: name.to_owned(),
            table: TABLES.get(name),
            gate: Arc::default(),
            cleanups: Cleanups::new(),
        }
    }

    /// Builds from `memory://[NAME]`.
    ///
    /// # Errors
    /// [`LockError::InvalidConfig`](crate::LockError::InvalidConfig) for another URL.
    pub fn from_url(url: &str) -> Result<Self> {
        Ok(Self::named(url_name(url)?))
    }

    /// Empties the seat of `name` as an operator would; its leader learns at its next
    /// renewal or proclaim (`LeaseLost`). Returns whether a live leader was removed.
    pub fn remove_leader(&self, name: &str) -> bool {
        let mut seats = self.table.lock();
        let Some(seat) = seats.get_mut(name) else {
            return false;
        };
        let live = seat.live_holder(Instant::now()).is_some();
        seat.vacate();
        live
    }

    /// One attempt: win the seat now, or say what to wait for. Never awaits.
    fn attempt(&self, name: &str, value: &[u8], opts: &LockOptions) -> Attempt {
        let sent_at = Instant::now();
        let mut seats = self.table.lock();
        let seat = seats.entry(name.to_owned()).or_default();
        if let Some(h) = seat.live_holder(sent_at) {
            let mut wake = Box::pin(Arc::clone(&seat.freed).notified_owned());
            wake.as_mut().enable();
            return Attempt::Busy {
                wake: Some(wake),
                retry_at: Some(h.expires),
            };
        }
        seat.vacate(); // an expired holder: tell observers before the new term
        seat.last_term += 1;
        let term = FencingToken::new(seat.last_term);
        let grant = GrantId::random();
        let expires = sent_at + opts.ttl();
        seat.holder = Some(Holder {
            grant: grant.clone(),
            term,
            value: value.to_vec(),
            expires,
        });
        seat.feed.publish(Some(LeaderInfo {
            value: value.to_vec(),
            term,
        }));
        drop(seats);
        tracing::debug!(name, %term, "elected");
        let seat_grant = Arc::new(SeatGrant {
            table: Arc::clone(&self.table),
            name: name.to_owned(),
            grant: grant.clone(),
            cleanups: self.cleanups.clone(),
        });
        tokio::spawn(vacate_on_expiry(Arc::clone(&seat_grant), expires));
        Attempt::Acquired(Lease::new(LeaseParts {
            key: name.to_owned(),
            token: term,
            grant,
            sent_at,
            validity: opts.ttl(),
            options: *opts,
            ops: seat_grant,
        }))
    }
}

/// Tells observers when a leader's TTL ran out without a resignation: sleeps until the
/// seat's expiry, and again after each renewal, until the grant is gone. Bounded by the
/// grant's life.
async fn vacate_on_expiry(grant: Arc<SeatGrant>, mut expires: Instant) {
    loop {
        tokio::time::sleep_until(expires).await;
        let mut seats = grant.table.lock();
        let Some(seat) = seats.get_mut(&grant.name) else {
            return;
        };
        match &seat.holder {
            Some(h) if h.grant == grant.grant && h.expires <= Instant::now() => {
                seat.vacate();
                return;
            }
            Some(h) if h.grant == grant.grant => expires = h.expires,
            _ => return,
        }
    }
}

#[async_trait]
impl Election for MemoryElection {
    #[tracing::instrument(level = "debug", skip(self, value, opts), fields(backend = "memory"))]
    async fn campaign(&self, name: &str, value: &[u8], opts: &LockOptions) -> Result<Leadership> {
        validate_value(value)?;
        let wait = acquire_with(name, opts, || std::future::ready(Ok(self.attempt(name, value, opts))));
        // As a campaign: a name may begin with `election.`, and a zero wait gets the
        // election's advice.
        let lease = super::as_campaign(self.gate.pass(wait)).await?;
        let ops = Arc::new(SeatGrant {
            table: Arc::clone(&self.table),
            name: name.to_owned(),
            grant: lease.grant().clone(),
            cleanups: self.cleanups.clone(),
        });
        Ok(Leadership::new(name, lease, ops))
    }

    async fn leader(&self, name: &str) -> Result<Option<LeaderInfo>> {
        super::validate_name(name)?;
        let seats = self.table.lock();
        Ok(seats
            .get(name)
            .and_then(|s| s.live_holder(Instant::now()))
            .map(|h| LeaderInfo {
                value: h.value.clone(),
                term: h.term,
            }))
    }

    async fn observe(&self, name: &str) -> Result<Observer> {
        super::validate_name(name)?;
        let mut seats = self.table.lock();
        Ok(seats.entry(name.to_owned()).or_default().feed.subscribe())
    }

    fn capabilities(&self) -> ElectionCapabilities {
        CAPABILITIES
    }

    fn seat_guarantees(&self) -> Option<crate::Guarantees> {
        Some(crate::memory::GUARANTEES)
    }

    fn describe(&self) -> String {
        format!("memory://{}", self.name)
    }

    /// Ends this instance and its clones as [`MemoryLock::close`](crate::memory::MemoryLock)
    /// does: campaigns waiting through it end with
    /// [`LockError::Closed`](crate::LockError::Closed), later campaigns fail with it; then
    /// waits (at most 1 s) for the background resignations of its dropped leaderships (a
    /// leadership dropped just before `close()` has resigned when it returns). Seats
    /// still held stay held (resign them): other instances on the same table go on.
    ///
    /// # Errors
    /// [`LockError::Unavailable`](crate::LockError::Unavailable) when background
    /// resignations were still running after 1 s (a runtime too busy to run them).
    ///
    /// # Cancel safety
    /// Cancel safe: the gate is shut before the first await; the rest only waits.
    async fn close(&self) -> Result<()> {
        crate::memory::close_in_process(&self.gate, &self.cleanups, || {
            format!("memory://{} election: background resignations", self.name)
        })
        .await
    }
}

/// One leader's grant of a seat.
struct SeatGrant {
    table: Arc<Table<Seat>>,
    name: String,
    grant: GrantId,
    /// The electing instance's clean-ups.
    cleanups: Cleanups,
}

impl SeatGrant {
    /// Runs `f` on our live holder record, or returns `None` when the seat is not ours.
    fn with_ours<T>(&self, f: impl FnOnce(&mut Holder, &ObserverFeed) -> T) -> Option<T> {
        let now = Instant::now();
        let mut seats = self.table.lock();
        let seat = seats.get_mut(&self.name)?;
        let feed = seat.feed.clone();
        match seat.holder.as_mut() {
            Some(h) if h.grant == self.grant && h.expires > now => Some(f(h, &feed)),
            _ => None,
        }
    }
}

#[async_trait]
impl LeaseOps for SeatGrant {
    async fn extend(&self, ttl: Duration) -> Result<Option<Duration>> {
        Ok(self.with_ours(|h, _| {
            h.expires = Instant::now() + ttl;
            ttl
        }))
    }

    async fn release(&self) -> Result<bool> {
        let mut seats = self.table.lock();
        let Some(seat) = seats.get_mut(&self.name) else {
            return Ok(false);
        };
        let Some(h) = seat.holder.as_ref().filter(|h| h.grant == self.grant) else {
            return Ok(false);
        };
        let live = h.expires > Instant::now();
        seat.vacate();
        Ok(live)
    }

    /// Counted on the instance from the drop on: `close` waits for the resignation.
    fn cleanup(&self) -> Option<CleanupGuard> {
        Some(self.cleanups.start())
    }
}

#[async_trait]
impl ProclaimOps for SeatGrant {
    async fn proclaim(&self, value: &[u8]) -> Result<bool> {
        Ok(self
            .with_ours(|h, feed| {
                h.value = value.to_vec();
                feed.publish(Some(LeaderInfo {
                    value: value.to_vec(),
                    term: h.term,
                }));
            })
            .is_some())
    }
}
