//! Leader election with fencing **terms**: one leader at a time per election name, and
//! every leader's term (a [`FencingToken`]) greater than every earlier leader's.
//!
//! The shape follows etcd's `v3election` service (Campaign / Proclaim / Resign / Leader /
//! Observe), Curator's `LeaderLatch` and client-go's `leaderelection`, with one addition
//! none of them makes on every backend: the term is a fencing token. A leader sends it
//! with every side-effecting write, and the resource refuses terms older than the newest it
//! has seen ([`crate::fencing::FencingChecker`]), so a deposed leader that wakes up after a
//! pause cannot overwrite its successor.
//!
//! * [`Election`]: the object-safe async trait a backend implements.
//! * [`Leadership`]: what a won campaign returns — a [`Lease`] whose token is the term,
//!   plus [`proclaim`](Leadership::proclaim) and [`resign`](Leadership::resign).
//! * [`Observer`]: the leader changes of one election, in order.
//! * [`ElectionCapabilities`]: what a backend gives, as data — never a silent downgrade.
//! * [`seat`]: the glue of every lock-backed election (a seat lock plus a value record),
//!   with pushed observation ([`seat::SeatWatch`]).
//! * [`memory`]: the in-process reference implementation; `file`: processes of one host.
//!
//! Pitfalls designed against (see `docs/election.md`): a leader that cannot confirm its
//! validity stops at once (its lease is lost first, client-go #44887); every "is it still
//! mine" check compares the *grant*, not the existence of a key (Curator's LeaderLatch
//! with an old session's node); expiry is judged on the backend's or our own monotonic
//! clock, never on wall-clock stamps written by other machines.

#[cfg(unix)]
pub mod file;
pub mod memory;
mod observer;
pub mod seat;

use std::fmt;
use std::future::Future;
use std::sync::Arc;

use async_trait::async_trait;
use serde::Serialize;

use crate::error::{LockError, LostReason, Result};
use crate::guarantees::TokenOrder;
use crate::lease::Lease;
use crate::options::LockOptions;
use crate::token::{Fence, FencingToken};

pub use observer::{polled, Observer, ObserverFeed};

/// The longest value a candidate may publish, in bytes (etcd's and ZooKeeper's practical
/// limits are far above; Redis channels and PostgreSQL NOTIFY carry it too).
pub const MAX_VALUE_LEN: usize = 4096;

/// The current leader of an election, as [`Election::leader`] and [`Observer`] report it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct LeaderInfo {
    /// What the leader published with [`Election::campaign`] or
    /// [`Leadership::proclaim`] (e.g. its address).
    pub value: Vec<u8>,
    /// The leader's term: the fencing token of its grant.
    pub term: FencingToken,
}

impl LeaderInfo {
    /// The value as text, with invalid UTF-8 replaced (for logs and the CLI).
    pub fn value_lossy(&self) -> String {
        String::from_utf8_lossy(&self.value).into_owned()
    }
}

/// How a backend lets callers follow leader changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub enum Observation {
    /// Pushed by the backend (a watch, a channel): every change the backend orders is
    /// reported promptly; a slow observer skips intermediate leaders, never goes back
    /// (where terms only grow: see [`Election`]).
    Native,
    /// Found by polling at the given interval (ms): changes shorter than the interval can
    /// be missed; order and "no term goes back" (where terms only grow) still hold.
    Polled {
        /// The polling interval in milliseconds.
        interval_ms: u64,
    },
    /// [`Election::observe`] fails with [`LockError::GuaranteeNotMet`].
    Unavailable,
}

/// How exact [`Election::leader`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub enum LeaderRead {
    /// The leader the backend's single source of truth holds at the moment of the read.
    Exact,
    /// A best guess (Redlock's quorum read): may name a leader that just lost its seat, or
    /// none while one exists.
    BestEffort,
}

/// What a backend's election gives, as data. Read it before relying on a property; the
/// election conformance suite reads it too, so a backend cannot claim more than it does.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ElectionCapabilities {
    /// The backend's name, e.g. `"memory"`.
    pub backend: &'static str,
    /// Whether terms strictly grow across leaders (as the lock's tokens do).
    pub terms: TokenOrder,
    /// How exact [`Election::leader`] is.
    pub leader: LeaderRead,
    /// How [`Election::observe`] works, or that it is unavailable.
    pub observe: Observation,
    /// How long a leader that died without resigning blocks the seat, in plain words
    /// (e.g. "its TTL", "at once: the kernel drops its flock").
    pub dead_leader_blocks: &'static str,
}

/// How a backend changes the published value of one grant (for backend authors).
#[async_trait]
pub trait ProclaimOps: Send + Sync + 'static {
    /// Replaces the value if this grant — not merely "a leader key" — still leads.
    /// `Ok(false)` only when the backend answered that it no longer does: the leadership
    /// is then marked lost for good. When the backend could not be asked (or, on a
    /// quorum backend, too few nodes answered to tell), an error such as
    /// [`LockError::Unavailable`]: the leadership stands.
    async fn proclaim(&self, value: &[u8]) -> Result<bool>;
}

/// Leader election: campaigns for a seat per election name, with fencing terms.
///
/// The trait is object safe; configuration-driven code holds an `Arc<dyn Election>`.
///
/// # What every implementation guarantees
///
/// Checked by the election conformance suite in `fencelock-testkit`:
///
/// * **One leader**: at most one [`Leadership`] of a name has a live lease at any instant.
/// * **Terms grow**: every leader's term is greater than every earlier leader's term of
///   that name ([`ElectionCapabilities::terms`] says how strong that is).
/// * **Own grant only**: proclaim and resign act only on our grant.
/// * **Bounded, cancel-safe campaign**, as [`DistributedLock::acquire`](crate::DistributedLock::acquire).
/// * **Observers never go back** on a backend whose terms only grow
///   ([`ElectionCapabilities::terms`] `StrictlyMonotonic`): reported terms never decrease —
///   but for a term the backend could only guess (a seat held without its record, reported
///   with no value: [`seat::SeatState::UnwrittenGuess`]), which the holder's exact term
///   replaces even when lower. Where terms are best effort (Redis without `appendfsync
///   always`, PostgreSQL with `fsync` or `synchronous_commit` off, Redlock) an observer
///   reports a lower term as it comes, on purpose ([`ObserverFeed::restarting`]): after the
///   backend lost its data, terms start again, and refusing them would hide every later
///   leader.
/// * **The observer starts at the seat**: [`observe`](Election::observe) reads the seat
///   before it returns, so the first [`Observer::changed`] names the leader that leads
///   then — never an empty seat while a leader leads.
#[async_trait]
pub trait Election: Send + Sync + fmt::Debug {
    /// Campaigns for the leadership of `name` with `value`, waiting up to `opts.wait()`
    /// for the current leader to resign or lose its seat. The returned leadership's lease
    /// lives `opts.ttl()` (renewed in the background when `opts.auto_renew()`).
    ///
    /// `opts.wait()` bounds the wait for the seat only. Once the seat is granted, a
    /// lock-backed election ([`seat`]) still sets up the grant's value record and
    /// publishes the first value, each bounded by the backend's request timeout, not by
    /// `opts.wait()`: a campaign may return up to those two requests later than the wait.
    ///
    /// # Errors
    /// [`LockError::InvalidInput`] for a bad name (as a lock key), a value over
    /// [`MAX_VALUE_LEN`] bytes or bad options — a zero wait too: there is no try-campaign;
    /// to not wait for a led seat, ask [`leader`](Election::leader) first and campaign
    /// only when it is empty, with a short wait; [`LockError::Timeout`] when the wait ran
    /// out; [`LockError::Unavailable`] or a backend error when the backend could not be
    /// asked (also for the first value, after the grant: the seat is then given back).
    ///
    /// # Cancel safety
    /// Cancel safe: dropping the future at any point leaves no candidacy behind (a seat
    /// won as the future was dropped is resigned in the background).
    async fn campaign(&self, name: &str, value: &[u8], opts: &LockOptions) -> Result<Leadership>;

    /// The current leader of `name` and its term, or `None` when the seat is empty.
    ///
    /// # Errors
    /// [`LockError::InvalidInput`] for a bad name; a backend error when it could not be
    /// asked.
    ///
    /// # Cancel safety
    /// Cancel safe: it only reads.
    async fn leader(&self, name: &str) -> Result<Option<LeaderInfo>>;

    /// Follows the leader of `name`: the returned [`Observer`] yields each change (a new
    /// leader, a proclaimed value, an empty seat) in order, starting with the seat as read
    /// before this returns (a seat held without its value record yet is waited for up to
    /// [`seat::RECORD_WAIT`], then reported with no value). A slow observer may skip
    /// intermediate states but never sees a term lower than one it saw — a guessed term
    /// aside (see [`Observer::changed`]), and on a backend whose terms are best effort,
    /// which reports a lower term as it comes (see the trait's docs).
    ///
    /// # Errors
    /// [`LockError::GuaranteeNotMet`] when [`ElectionCapabilities::observe`] is
    /// `Unavailable`; [`LockError::InvalidInput`] for a bad name; a backend error (also
    /// when the first read failed).
    ///
    /// # Cancel safety
    /// Cancel safe: dropping the future leaves nothing behind.
    async fn observe(&self, name: &str) -> Result<Observer>;

    /// What this backend's election gives.
    fn capabilities(&self) -> ElectionCapabilities;

    /// The guarantees of the lock whose keys are this election's seats, as the connected
    /// backend reports them ([`DistributedLock::guarantees`](crate::DistributedLock::guarantees):
    /// a stock PostgreSQL server is durable, so stronger than its scheme's promise without a
    /// server at hand). `LockConfig::connect_election` checks its `require` against them.
    /// The default, for an election written outside this workspace, is `None`: the
    /// scheme's promise is checked instead.
    fn seat_guarantees(&self) -> Option<crate::Guarantees> {
        None
    }

    /// A description of this backend for logs and messages (a URL without credentials).
    fn describe(&self) -> String;

    /// Ends this client cleanly before the process exits, as
    /// [`DistributedLock::close`](crate::DistributedLock::close): a backend with a session
    /// ends it, which removes its candidacies and resigns its seats; an election built on
    /// a lock's seat (file, Redis, Redlock, etcd, ZooKeeper, PostgreSQL) also ends the
    /// campaigns waiting through it and refuses later ones with
    /// [`LockError::Closed`], as its lock does; so does `memory://`'s. A leadership dropped
    /// without `resign` just before `close()` has resigned when it returns (its lease's
    /// background release is counted from the drop, see
    /// [`LeaseOps::cleanup`](crate::LeaseOps::cleanup)). The default (for an election
    /// written outside this workspace) does nothing.
    ///
    /// # Errors
    /// [`LockError::Unavailable`] when the backend did not confirm in time.
    ///
    /// # Cancel safety
    /// Cancel safe: dropping the future leaves the clean-ups running in the background.
    async fn close(&self) -> Result<()> {
        Ok(())
    }
}

#[async_trait]
impl<T: Election + ?Sized> Election for Arc<T> {
    async fn campaign(&self, name: &str, value: &[u8], opts: &LockOptions) -> Result<Leadership> {
        (**self).campaign(name, value, opts).await
    }
    async fn leader(&self, name: &str) -> Result<Option<LeaderInfo>> {
        (**self).leader(name).await
    }
    async fn observe(&self, name: &str) -> Result<Observer> {
        (**self).observe(name).await
    }
    fn capabilities(&self) -> ElectionCapabilities {
        (**self).capabilities()
    }
    fn seat_guarantees(&self) -> Option<crate::Guarantees> {
        (**self).seat_guarantees()
    }
    fn describe(&self) -> String {
        (**self).describe()
    }
    async fn close(&self) -> Result<()> {
        (**self).close().await
    }
}

/// The prefix of every election's seat key (`election.NAME`), which shares the lock
/// namespace of its backend. Reserved: a plain lock on a key that begins with it is
/// refused ([`validate_key`](crate::options::validate_key)), since it would take an
/// election's seat — campaigns would wait for it and `leader` would report a leader with
/// no value. Only a campaign acquires such a key ([`as_campaign`]).
pub const SEAT_PREFIX: &str = "election.";

tokio::task_local! {
    /// Set while a campaign acquires its seat: see [`as_campaign`].
    static CAMPAIGN: ();
}

/// Runs `call` — a campaign's acquire of its seat through the backend's lock — as a
/// campaign: inside it, a key that begins with [`SEAT_PREFIX`] is a seat and is accepted
/// (everywhere else [`validate_key`](crate::options::validate_key) refuses it), and a zero
/// wait is refused with the advice an election needs, not the lock's `try_acquire`.
///
/// For backend authors (an [`Election`] whose campaign acquires its seat through a lock,
/// as [`seat`] and etcd's do) and for tests that hold a seat as a plain lock, to see a seat
/// held without its value record. Applications campaign with [`Election::campaign`].
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// use fencelock::{election::as_campaign, memory::MemoryLock, DistributedLock, LockOptions};
/// let locks = MemoryLock::new();
/// let opts = LockOptions::new();
/// assert!(locks.acquire("election.x", &opts).await.is_err(), "reserved for elections");
/// let seat = as_campaign(locks.acquire("election.x", &opts)).await.unwrap();
/// seat.release().await.unwrap();
/// # }
/// ```
pub async fn as_campaign<F: Future>(call: F) -> F::Output {
    CAMPAIGN.scope((), call).await
}

/// Whether the caller runs inside [`as_campaign`].
pub(crate) fn in_campaign() -> bool {
    CAMPAIGN.try_with(|_| ()).is_ok()
}

/// The longest election name, in bytes: the seat key `election.NAME` must be a valid key
/// ([`MAX_KEY_LEN`](crate::options::MAX_KEY_LEN) bytes), so 247.
pub const MAX_NAME_LEN: usize = crate::options::MAX_KEY_LEN - SEAT_PREFIX.len();

/// Checks an election name: 1 to [`MAX_NAME_LEN`] bytes of UTF-8 without control
/// characters, on every backend.
///
/// # Errors
/// [`LockError::InvalidInput`] saying what is wrong with the name.
pub fn validate_name(name: &str) -> Result<()> {
    let name_error = |e: LockError| match e {
        LockError::InvalidInput(m) => LockError::invalid_input(m.replacen("key", "election name", 1)),
        other => other,
    };
    // The election's own limit first: a name over the key's limit too must be told the
    // election's (247), not the key's (256) — one limit in every message.
    if name.len() > MAX_NAME_LEN {
        return Err(LockError::invalid_input(format!(
            "election name is {} bytes long; the maximum is {MAX_NAME_LEN} (its seat key `{SEAT_PREFIX}NAME` must fit in {} bytes)",
            name.len(),
            crate::options::MAX_KEY_LEN
        )));
    }
    // The key's shape only: a name may begin with `election.` (its seat is
    // `election.election.…`); the reserved prefix is for lock keys.
    crate::options::check_key_shape(name).map_err(name_error)
}

/// Checks a candidate's value.
pub fn validate_value(value: &[u8]) -> Result<()> {
    if value.len() > MAX_VALUE_LEN {
        return Err(LockError::invalid_input(format!(
            "election value is {} bytes; at most {MAX_VALUE_LEN} are allowed",
            value.len()
        )));
    }
    Ok(())
}

/// A won campaign: this instance leads `name` while [`lease`](Leadership::lease) is live.
///
/// Send [`fence`](Leadership::fence) (the term and grant) with every side-effecting write;
/// stop work when [`lost`](Leadership::lost) resolves. Dropping it resigns in the
/// background, as dropping a [`Lease`] releases it.
pub struct Leadership {
    name: String,
    lease: Lease,
    proclaim: Arc<dyn ProclaimOps>,
}

impl fmt::Debug for Leadership {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Leadership")
            .field("name", &self.name)
            .field("lease", &self.lease)
            .finish_non_exhaustive()
    }
}

impl Leadership {
    /// Wraps a won seat (for backend authors): `lease` is the seat's grant, whose token is
    /// the term; `proclaim` changes the published value of that grant.
    pub fn new(name: &str, lease: Lease, proclaim: Arc<dyn ProclaimOps>) -> Self {
        Leadership {
            name: name.to_owned(),
            lease,
            proclaim,
        }
    }

    /// The election's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The term: strictly greater than every earlier leader's of this election.
    pub fn term(&self) -> FencingToken {
        self.lease.token()
    }

    /// Term and grant id, to send with every write to the protected resource.
    pub fn fence(&self) -> Fence {
        self.lease.fence()
    }

    /// The seat's lease (validity, status, watch).
    pub fn lease(&self) -> &Lease {
        &self.lease
    }

    /// `true` while the seat's lease is held and valid. Check right before acting; the
    /// term protects what happens after.
    pub fn is_leader(&self) -> bool {
        self.lease.is_held()
    }

    /// Resolves when the leadership is lost, with the reason (see [`Lease::lost`]).
    ///
    /// A leadership lost before it is resigned or dropped resolves; after a resign or drop
    /// of a live leadership the future **stays pending for ever** (nothing was lost): a task
    /// spawned to wait on it alone should be aborted then, or the future selected with
    /// something that ends.
    pub fn lost(&self) -> impl Future<Output = LostReason> + Send + 'static {
        self.lease.lost()
    }

    /// Publishes a new value under the same term (etcd's Proclaim).
    ///
    /// # Errors
    /// [`LockError::InvalidInput`] for a value over [`MAX_VALUE_LEN`] bytes;
    /// [`LockError::LeaseLost`] when the lease is lost or its validity ran out, or when the
    /// backend says our grant no longer leads (the lease is then marked lost); a backend
    /// error ([`LockError::Unavailable`] on Redlock when a quorum did not answer) when it
    /// could not be asked — the leadership is kept, and a later proclaim may succeed.
    ///
    /// # Cancel safety
    /// Cancel safe in that nothing but the value can change: the new value may or may not
    /// have been published.
    pub async fn proclaim(&self, value: &[u8]) -> Result<()> {
        validate_value(value)?;
        let lost = |reason| LockError::LeaseLost {
            key: self.name.clone(),
            token: self.term(),
            reason,
        };
        if !self.lease.is_held() {
            return Err(lost(LostReason::Expired));
        }
        if self.proclaim.proclaim(value).await? {
            tracing::debug!(name = %self.name, term = %self.term(), "proclaimed");
            Ok(())
        } else {
            self.lease.reporter().lost(LostReason::NotHeld);
            Err(lost(LostReason::NotHeld))
        }
    }

    /// Gives up the seat at once, so a waiting candidate takes over without waiting for
    /// the TTL.
    ///
    /// # Errors
    /// As [`Lease::release`]: [`LockError::LeaseLost`] when the seat had already been
    /// lost (nothing of anyone else's is touched).
    ///
    /// # Cancel safety
    /// As [`Lease::release`]: the resignation completes in the background.
    pub async fn resign(self) -> Result<()> {
        tracing::debug!(name = %self.name, term = %self.term(), "resigning");
        self.lease.release().await
    }

    /// The seat's lease, for code that handles leadership as a lock.
    pub fn into_lease(self) -> Lease {
        self.lease
    }
}
