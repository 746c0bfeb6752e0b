//! Leader election on etcd ([`EtcdElection`]), native: the shape of etcd's own
//! `concurrency.Election` recipe (the `v3election` service), with fencing terms.
//!
//! * **Candidates**: each campaign puts one key under the election's directory — the lock
//!   directory of key `election.NAME` (in `layout=go`: of `NAME`, as Go's election names
//!   it), see [`EtcdElection::seat_dir`] — holding the
//!   candidate's value, attached to the instance's session lease (or to a lease of its own
//!   when the campaign does not auto-renew). It is the lock's queue entry
//!   ([`crate::queue`]): one transaction puts it and tells whether it leads.
//! * **Leader**: the key with the lowest create revision; the **term** is the leader key's
//!   create revision, strictly increasing across leaders (across the whole cluster, in
//!   fact).
//! * **Campaign**: the lock's acquire, with the value on the key. Into an empty directory
//!   the put alone, and we lead; otherwise the same transaction reads the (up to) three
//!   keys just before ours, and the campaign waits as a lock waiter does ([`crate::wait`]):
//!   it watches those keys and its own, is elected on the push of their deletions without a
//!   read, and reads its place again (the older keys and its own key, in one transaction)
//!   only when a watch began after the last read, keys left out of order, or older keys
//!   beyond those three may be left. A key whose lease ran out while it waited (etcd issue
//!   11456) ends the wait through the watch on our own key or the next read of our place,
//!   and a grant on the push is valid no longer than the lease its key rides on (for an
//!   auto-renewed campaign the session's short waiting lease, until the key's move onto the
//!   session lease).
//! * **Proclaim**: a put of a new value on our key, in a transaction guarded by our key's
//!   create revision (the grant, never merely "a key of that name"), keeping its lease.
//! * **Resign**: the lock's release: a delete guarded the same way.
//! * **Leader read**: one range read of the directory, sorted by create revision, limit 1.
//! * **Observe**: one `WATCH` on the directory (pushed by etcd, not polled), applied in
//!   revision order to a local copy of the candidates; after each revision the lowest
//!   candidate is published. A broken or compacted watch is replaced after a fresh read —
//!   or, when that read fails, from the revision after the last event applied (an event
//!   at or before it is never applied twice).
//!
//! Facts from etcd's `client/v3/concurrency/election.go`: candidates are keys
//! `PFX/LEASE-ID` with the value, the leader is the lowest create revision, `Proclaim` is
//! a put guarded by the key's create revision, `Observe` follows the lowest key by watch.
//! Differences: our keys are named per grant (`INSTANCE.SLOT`, reused only when known to be
//! gone), so two campaigns of one session are two candidates, and the term is exposed as a
//! fencing token.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use etcd_client::{
    Compare, CompareOp, EventType, GetOptions, PutOptions, SortOrder, SortTarget, Txn, TxnOp, WatchOptions,
};
use fencelock_core::election::seat::seat_key;
use fencelock_core::election::{
    validate_name, validate_value, Election, ElectionCapabilities, LeaderInfo, LeaderRead, Leadership, Observation,
    Observer, ObserverFeed, ProclaimOps,
};
use fencelock_core::waiting::{queue_checked, LastCheck};
use fencelock_core::{DistributedLock, FencingToken, LockError, LockOptions, Result};

use crate::client::Cluster;
use crate::queue::{enqueue_with_value, Then};
use crate::wait::wait_turn;
use crate::{EtcdConfig, EtcdLayout, EtcdLock};

/// How many times in a row an observer's watch may fail (and be replaced after a fresh
/// read) before the observation ends.
pub const MAX_WATCH_FAILURES: u32 = 20;

/// The election on an etcd cluster.
///
/// ```no_run
/// # async fn demo() -> fencelock_core::Result<()> {
/// use fencelock_core::election::Election;
/// use fencelock_core::LockOptions;
/// let elections = fencelock_etcd::EtcdElection::connect("etcd://127.0.0.1:2379/myapp").await?;
/// let leadership = elections.campaign("scheduler", b"10.0.0.7:8080", &LockOptions::new()).await?;
/// println!("leading with term {}", leadership.term()); // the leader key's create revision
/// leadership.resign().await?;
/// elections.close().await?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct EtcdElection {
    lock: EtcdLock,
}

impl EtcdElection {
    /// The election over `lock`'s cluster, prefix and session (its candidates ride on the
    /// same session lease as its locks).
    pub fn new(lock: EtcdLock) -> Self {
        EtcdElection { lock }
    }

    /// Connects as [`EtcdLock::connect`].
    ///
    /// # Errors
    /// As [`EtcdLock::connect`].
    ///
    /// # Cancel safety
    /// Cancel safe: nothing is created on the server before it returns.
    pub async fn connect(url: &str) -> Result<Self> {
        Ok(Self::new(EtcdLock::connect(url).await?))
    }

    /// Connects as [`EtcdLock::connect_with`].
    ///
    /// # Errors
    /// As [`EtcdLock::connect_with`].
    ///
    /// # Cancel safety
    /// Cancel safe: nothing is created on the server before it returns.
    pub async fn connect_with(cfg: EtcdConfig) -> Result<Self> {
        Ok(Self::new(EtcdLock::connect_with(cfg).await?))
    }

    /// The lock client underneath (sessions, counters).
    pub fn lock(&self) -> &EtcdLock {
        &self.lock
    }

    /// The directory holding election `name`'s candidate keys, one per campaign (for
    /// operators: `etcdctl get --prefix DIR`; the lowest create revision leads).
    ///
    /// # Errors
    /// [`LockError::InvalidInput`] for a bad name.
    pub fn seat_dir(&self, name: &str) -> Result<String> {
        Ok(self.cluster().cfg.lock_dir(&self.seat(name)?))
    }

    /// The lock key of election `name`'s seat: `election.NAME` in fencelock's own layout
    /// (apart from the locks), or in `layout=go` the name itself, as Go's
    /// `concurrency.NewElection(session, NAME)` and `etcdctl elect NAME` name it — so, as
    /// in Go, a lock and an election of one name are one queue there.
    fn seat(&self, name: &str) -> Result<String> {
        match self.cluster().cfg.layout {
            EtcdLayout::Go => {
                validate_name(name)?;
                Ok(name.to_owned())
            }
            EtcdLayout::Fencelock => seat_key(name),
        }
    }

    fn cluster(&self) -> &Cluster {
        &self.lock.inner.cluster
    }
}

/// The lowest-create-revision key under `dir`, in one range read.
async fn read_leader(c: &Cluster, dir: &str) -> Result<Option<LeaderInfo>> {
    let opts = GetOptions::new()
        .with_prefix()
        .with_sort(SortTarget::Create, SortOrder::Ascend)
        .with_limit(1);
    let r = c
        .call("reading the election's leader", |mut cl| {
            let (dir, opts) = (dir.to_owned(), opts.clone());
            async move { cl.get(dir, Some(opts)).await }
        })
        .await?;
    Ok(r.kvs().first().map(|kv| LeaderInfo {
        value: kv.value().to_vec(),
        term: term_of(kv.create_revision()),
    }))
}

fn term_of(create_revision: i64) -> FencingToken {
    FencingToken::new(u64::try_from(create_revision).unwrap_or(0))
}

#[async_trait]
impl Election for EtcdElection {
    /// Puts our candidate key with the value in one transaction — which, unless the
    /// directory is empty (then we lead at once), also reads the (up to) three keys just
    /// before ours — then waits as a lock waiter does: watching those keys and our own (see
    /// `src/wait.rs`). An auto-renewed campaign whose key went onto the session lease (no
    /// waiting lease was kept alive: the first waiter after a quiet spell) first moves it
    /// onto the session's waiting lease, in one more transaction that reads its place too.
    ///
    /// # Cancel safety
    /// Cancel safe: a put the caller drops midway is finished in a task of its own, and a
    /// candidate key whose campaign is gone is deleted in the background at once (an own
    /// lease is revoked), as a dropped lock waiter's.
    #[tracing::instrument(level = "debug", skip(self, value, opts), fields(backend = "etcd", term))]
    async fn campaign(&self, name: &str, value: &[u8], opts: &LockOptions) -> Result<Leadership> {
        validate_value(value)?;
        let seat = self.seat(name)?;
        let won: Mutex<Option<(String, i64)>> = Mutex::new(None);
        let (seat_name, winner) = (seat.as_str(), &won);
        // The last check before the wait runs out, as a lock waiter's (`EtcdLock::acquire`).
        let check = LastCheck::for_request_timeout(self.cluster().request_timeout());
        let wait = queue_checked(
            seat_name,
            opts,
            check,
            || self.cluster().check(),
            |queued| async move {
                let inner = Arc::clone(&self.lock.inner);
                let mut q = enqueue_with_value(inner, seat_name, value.to_vec(), opts, Then::Wait).await?;
                queued.mark();
                let since = if q.owner {
                    None
                } else {
                    match wait_turn(self.cluster(), &mut q, opts.ttl()).await? {
                        Some(since) => Some(since),
                        None => return Ok(None), // our key vanished while queued: again
                    }
                };
                *winner.lock().unwrap_or_else(|p| p.into_inner()) = Some((q.key.clone(), q.rev));
                Ok(self.lock.grant(seat_name, opts, q, since))
            },
        );
        // Through the lock's gate: `close` (the lock's) ends a campaign as it ends a wait.
        // As a campaign: the seat key (`election.NAME`) is refused to plain locks.
        let lease = fencelock_core::election::as_campaign(self.lock.inner.gate.pass(wait)).await?;
        let (key, rev) = won
            .into_inner()
            .unwrap_or_else(|p| p.into_inner())
            .filter(|(_, rev)| term_of(*rev) == lease.token())
            .ok_or_else(|| {
                LockError::backend(
                    crate::error::BACKEND,
                    "a won campaign without its key",
                    std::io::Error::other(seat.clone()),
                )
            })?;
        tracing::Span::current().record("term", lease.token().get());
        tracing::debug!(name, term = %lease.token(), "elected");
        let ops = Arc::new(Candidate {
            cluster: self.cluster().clone(),
            key,
            rev,
        });
        Ok(Leadership::new(name, lease, ops))
    }

    /// # Cancel safety
    /// Cancel safe: it only reads.
    async fn leader(&self, name: &str) -> Result<Option<LeaderInfo>> {
        let dir = self.seat_dir(name)?;
        read_leader(self.cluster(), &dir).await
    }

    /// One range read of every candidate, then a watch on the directory from the next
    /// revision, in a task that lives as long as the observer.
    ///
    /// # Cancel safety
    /// Cancel safe: the watch task starts only once the read is done.
    async fn observe(&self, name: &str) -> Result<Observer> {
        let dir = self.seat_dir(name)?;
        let seats = Seats::read(self.cluster(), &dir).await?;
        let feed = ObserverFeed::new(seats.lowest());
        let task = tokio::spawn(follow(self.cluster().clone(), dir, seats, feed.clone()));
        Ok(feed.subscribe_with(task.abort_handle()))
    }

    fn capabilities(&self) -> ElectionCapabilities {
        ElectionCapabilities {
            backend: "etcd",
            terms: self.lock.guarantees().tokens,
            leader: LeaderRead::Exact,
            observe: Observation::Native,
            dead_leader_blocks: "its lease's TTL: the session TTL (session_ttl, 10 s by default) for auto-renewed campaigns, else the campaign's TTL rounded up to whole seconds",
        }
    }

    fn seat_guarantees(&self) -> Option<fencelock_core::Guarantees> {
        Some(self.lock.guarantees())
    }

    fn describe(&self) -> String {
        self.lock.describe()
    }

    /// Ends the session (as [`EtcdLock::close`]): its candidate keys go with its lease.
    async fn close(&self) -> Result<()> {
        self.lock.close().await
    }
}

/// One leader's candidate key.
struct Candidate {
    cluster: Cluster,
    key: String,
    rev: i64,
}

#[async_trait]
impl ProclaimOps for Candidate {
    /// A put of the value on our key, only while it is the key created at our revision;
    /// the key keeps its lease.
    async fn proclaim(&self, value: &[u8]) -> Result<bool> {
        let txn = Txn::new()
            .when([Compare::create_revision(self.key.clone(), CompareOp::Equal, self.rev)])
            .and_then([TxnOp::put(
                self.key.clone(),
                value.to_vec(),
                Some(PutOptions::new().with_ignore_lease()),
            )]);
        let r = self
            .cluster
            .call("proclaiming the election's value", |mut cl| {
                let txn = txn.clone();
                async move { cl.txn(txn).await }
            })
            .await?;
        Ok(r.succeeded())
    }
}

/// One watch event, as [`Seats::apply`] takes it.
#[derive(Debug, Clone, Copy)]
struct Change<'a> {
    kind: EventType,
    key: &'a [u8],
    /// The key's create revision (0 in a delete's event).
    create_revision: i64,
    /// The revision of the put or delete.
    mod_revision: i64,
    value: &'a [u8],
}

impl<'a> Change<'a> {
    fn of(e: &'a etcd_client::Event) -> Option<Change<'a>> {
        let kv = e.kv()?;
        Some(Change {
            kind: e.event_type(),
            key: kv.key(),
            create_revision: kv.create_revision(),
            mod_revision: kv.mod_revision(),
            value: kv.value(),
        })
    }
}

/// An observer's copy of the candidates: key → create revision, and by create revision
/// the key and value.
#[derive(Debug, Default)]
struct Seats {
    by_rev: BTreeMap<i64, (Vec<u8>, Vec<u8>)>,
    by_key: HashMap<Vec<u8>, i64>,
    /// The revision this copy is true at: that of the read that made it, then of the last
    /// event applied. A watch replacing a broken one starts after it, and an event at or
    /// before it is already in the copy.
    rev: i64,
}

impl Seats {
    /// Every candidate under `dir`, as of the read's revision.
    async fn read(c: &Cluster, dir: &str) -> Result<Seats> {
        #[cfg(test)]
        if crate::hooks::armed(c.display(), crate::hooks::Fault::FailingCandidatesRead) {
            return Err(LockError::Unavailable {
                message: "reading the election's candidates: a failure armed by the test".into(),
                source: None,
            });
        }
        let r = c
            .call("reading the election's candidates", |mut cl| {
                let dir = dir.to_owned();
                async move { cl.get(dir, Some(GetOptions::new().with_prefix())).await }
            })
            .await?;
        let mut seats = Seats {
            rev: r.header().map_or(0, |h| h.revision()),
            ..Seats::default()
        };
        for kv in r.kvs() {
            seats.put(kv.key(), kv.create_revision(), kv.value());
        }
        Ok(seats)
    }

    /// Applies one watch message's `events` (in revision order) and calls `publish` with
    /// the lowest candidate after each revision's last event; the copy's revision moves to
    /// the last event's (etcd sends a revision's events in one message, as we ask for no
    /// fragments; etcd's Go client resumes a watch from the same revision + 1).
    ///
    /// An event at or before the copy's revision is skipped: the copy holds it already. A
    /// watch replays such events when it starts before the copy's revision, and queue names
    /// are reused (the lowest free slot; in `layout=go` the session lease on every
    /// campaign), so a replayed delete of an older key would remove the live key of that
    /// name — the feed then published the candidate behind it and refused the replayed put
    /// of the real leader as a lower term. It is the lock's rule for replayed deletes
    /// (`wait::note_deletes`) on the whole copy: every key it holds was created at or
    /// before its revision.
    fn apply(&mut self, events: &[Change<'_>], mut publish: impl FnMut(Option<LeaderInfo>)) {
        let mut changed = false;
        for (i, e) in events.iter().enumerate() {
            if e.mod_revision > self.rev {
                match e.kind {
                    EventType::Put => self.put(e.key, e.create_revision, e.value),
                    EventType::Delete => self.delete(e.key),
                }
                changed = true;
            }
            if events.get(i + 1).map(|n| n.mod_revision) != Some(e.mod_revision) {
                // The revision's last event: the copy is true at it.
                self.rev = self.rev.max(e.mod_revision);
                if std::mem::take(&mut changed) {
                    publish(self.lowest());
                }
            }
        }
    }

    fn put(&mut self, key: &[u8], create_revision: i64, value: &[u8]) {
        if let Some(old) = self.by_key.insert(key.to_vec(), create_revision) {
            self.by_rev.remove(&old);
        }
        self.by_rev.insert(create_revision, (key.to_vec(), value.to_vec()));
    }

    fn delete(&mut self, key: &[u8]) {
        if let Some(rev) = self.by_key.remove(key) {
            self.by_rev.remove(&rev);
        }
    }

    fn lowest(&self) -> Option<LeaderInfo> {
        self.by_rev.iter().next().map(|(rev, (_, value))| LeaderInfo {
            value: value.clone(),
            term: term_of(*rev),
        })
    }
}

/// Keeps `feed` up to date from a watch on `dir`, starting after the revision `seats` is
/// true at. A failed watch is replaced, after a fresh read when one succeeds — else from
/// the revision of the last event applied, as etcd's Go client resumes a watch —, at most
/// [`MAX_WATCH_FAILURES`] times in a row; then the feed is dropped, which ends the
/// observer's `changed()` with `None`. The task is aborted when its observer is dropped.
async fn follow(c: Cluster, dir: String, mut seats: Seats, feed: ObserverFeed) {
    let mut failures: u32 = 0;
    // The copy came from a read just now (not from a broken watch's last event).
    let mut fresh = true;
    loop {
        let why = watch(&c, &dir, &mut seats, &feed, &mut failures, fresh).await;
        failures += 1;
        if failures > MAX_WATCH_FAILURES {
            tracing::warn!(%dir, %why, "election observer gives up after {MAX_WATCH_FAILURES} failed watches");
            return;
        }
        tracing::debug!(%dir, %why, "election watch ended; reading afresh");
        // 20 ms, doubling with each failure in a row, at most 1 s.
        let pause = Duration::from_millis(20) * 2u32.pow(failures.min(6));
        tokio::time::sleep(pause.min(Duration::from_secs(1))).await;
        match Seats::read(&c, &dir).await {
            Ok(read) => {
                seats = read;
                fresh = true;
                feed.publish(seats.lowest());
            }
            Err(e) => {
                fresh = false;
                tracing::debug!(%dir, error = %e, "election observer could not read the candidates");
            }
        }
    }
}

/// One watch on `dir` from the revision after the one `seats` is true at, applied to
/// `seats` ([`Seats::apply`]); publishes the lowest candidate after each revision. Resets
/// `failures` once the watch delivered events or a progress notification (not merely its
/// creation). Returns why the watch ended (broken,
/// cancelled by a compaction or a lost leader, closed, or answered by a member of another
/// cluster than the connect met).
async fn watch(
    c: &Cluster,
    dir: &str,
    seats: &mut Seats,
    feed: &ObserverFeed,
    failures: &mut u32,
    fresh: bool,
) -> String {
    // Progress notifications (every 10 minutes on a stock server) tell a quiet watch that
    // lives from one that keeps breaking.
    let wopts = WatchOptions::new()
        .with_prefix()
        .with_start_revision(seats.rev + 1)
        .with_progress_notify();
    let stream = c
        .call("watching the election", |mut cl| {
            let (dir, wopts) = (dir.to_owned(), wopts.clone());
            async move { cl.watch(dir, Some(wopts)).await }
        })
        .await;
    let mut stream = match stream {
        Ok(s) => s,
        Err(e) => return e.to_string(),
    };
    loop {
        let msg = match stream.message().await {
            Ok(Some(m)) => m,
            Ok(None) => return "the watch stream ended".into(),
            Err(e) => return e.to_string(),
        };
        // A watch opened at a member of another cluster (a URL naming two) would replay
        // that cluster's candidates as ours (client::Answer): ended, read afresh.
        if let Err(e) = c.same_cluster("watching the election", &msg) {
            return e.to_string();
        }
        if msg.canceled() {
            return format!(
                "the watch was cancelled (compacted at {}): {}",
                msg.compact_revision(),
                msg.cancel_reason()
            );
        }
        // A watch that delivers — events, or a progress notification (etcd's word that
        // the watch is synced, asked for below) — ends the failures in a row; etcd's
        // reply to the watch's creation does not: a watch created at a compacted revision
        // is answered "created" and then cancelled, and counting that as delivered kept
        // an observer whose fresh read failed after a compaction going for ever (review).
        //
        // A creation does end them when the watch starts from a read just made, which a
        // compaction cannot have overtaken: a quiet election (no events; progress only
        // every 10 minutes) whose watches break now and then — a proxy's idle timeout,
        // member restarts — counted every break for the observer's whole life and ended it
        // on a healthy cluster after 21 (review of the change above).
        if !msg.created() || fresh {
            *failures = 0;
        }
        #[cfg(test)]
        if msg.created() && crate::hooks::armed(c.display(), crate::hooks::Fault::BreakingWatches) {
            crate::hooks::strike(c.display(), crate::hooks::Fault::BreakingWatches);
            return "the watch broke (a failure armed by the test)".into();
        }
        let events: Vec<Change<'_>> = msg.events().iter().filter_map(Change::of).collect();
        seats.apply(&events, |lowest| {
            feed.publish(lowest);
        });
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail by panicking

    use super::*;

    /// Two queue keys of one election's directory: A's (one member, slot 0, its name
    /// reused by each campaign of A) and C's.
    const EA: &[u8] = b"/fencelock/q/election.s/00000000000000ea.00000000";
    const C: &[u8] = b"/fencelock/q/election.s/000000000000000c.00000000";

    fn put(key: &'static [u8], create_revision: i64, mod_revision: i64, value: &'static [u8]) -> Change<'static> {
        Change {
            kind: EventType::Put,
            key,
            create_revision,
            mod_revision,
            value,
        }
    }

    /// A delete's event, as etcd sends it: the key and the delete's revision only.
    fn delete(key: &'static [u8], mod_revision: i64) -> Change<'static> {
        Change {
            kind: EventType::Delete,
            key,
            create_revision: 0,
            mod_revision,
            value: b"",
        }
    }

    fn leader(value: &[u8], term: u64) -> Option<LeaderInfo> {
        Some(LeaderInfo {
            value: value.to_vec(),
            term: FencingToken::new(term),
        })
    }

    /// The events of the review's scenario after the observer's read at 10 (A's first key,
    /// created at 10, leading): A resigns (11), campaigns again under the same name (12)
    /// and leads; C queues behind it (13).
    fn history() -> [Change<'static>; 3] {
        [delete(EA, 11), put(EA, 12, 12, b"a"), put(C, 13, 13, b"c")]
    }

    /// Applies `events` to `seats` as one watch message; returns how many states it
    /// published.
    fn apply(seats: &mut Seats, feed: &ObserverFeed, events: &[Change<'_>]) -> usize {
        let mut published = 0;
        seats.apply(events, |lowest| {
            feed.publish(lowest);
            published += 1;
        });
        published
    }

    /// The copy a fresh read at revision 13 makes: A's key (created at 12) leads, C's
    /// (13) waits; and a feed at that state.
    fn read_at_13() -> (Seats, ObserverFeed) {
        let mut seats = Seats {
            rev: 13,
            ..Seats::default()
        };
        seats.put(EA, 12, b"a");
        seats.put(C, 13, b"c");
        let feed = ObserverFeed::new(seats.lowest());
        (seats, feed)
    }

    /// A watch that starts again at an older revision (the one before the fresh read
    /// failed) replays events the copy already holds. Replayed onto a copy made at 13, the
    /// delete at 11 of A's *previous* key under the same name removed A's live key (12),
    /// the feed published C (13), and the replayed put of A's key was refused as a lower
    /// term: the observer reported C for A's whole tenure.
    #[test]
    fn events_the_copy_already_holds_change_nothing() {
        let (mut seats, feed) = read_at_13();
        assert_eq!(feed.current(), leader(b"a", 12));
        let published = apply(&mut seats, &feed, &history());
        assert_eq!(
            feed.current(),
            leader(b"a", 12),
            "a replay from revision 11 onto candidates read at 13 changed the leader"
        );
        assert_eq!(published, 0, "nothing new, nothing published");
        assert_eq!(seats.rev, 13);
    }

    /// The copy's revision follows the events applied, so a watch replacing a broken one
    /// (when the fresh read failed too) starts after the last revision applied, not after
    /// the read that made the copy.
    #[test]
    fn the_copy_s_revision_follows_the_events_applied() {
        let mut seats = Seats {
            rev: 10,
            ..Seats::default()
        };
        seats.put(EA, 10, b"a");
        let feed = ObserverFeed::new(seats.lowest());
        for e in history() {
            assert_eq!(apply(&mut seats, &feed, &[e]), 1, "each revision is published");
        }
        assert_eq!(feed.current(), leader(b"a", 12));
        assert_eq!(seats.rev, 13, "the next watch starts at 14, not at 11");
        // And a replay of the same events (by a watch started too early) leaves it there.
        assert_eq!(apply(&mut seats, &feed, &history()), 0);
        assert_eq!(feed.current(), leader(b"a", 12));
    }

    /// Events of one revision (a lease's expiry deletes every key on it at once) are
    /// published once, after the last; a new revision after the copy's is applied as
    /// before.
    #[test]
    fn one_revision_is_published_once() {
        let (mut seats, feed) = read_at_13();
        assert_eq!(apply(&mut seats, &feed, &[delete(EA, 14), delete(C, 14)]), 1);
        assert_eq!(feed.current(), None);
        assert_eq!(seats.rev, 14);
    }

    /// After a compaction, a watch replacing a broken one is cancelled at once (its start
    /// revision is compacted), but etcd first answers its creation. While the fresh read
    /// that would start past the compaction kept failing, that "created" reply counted as
    /// a watch that delivered: the failures in a row never reached
    /// [`MAX_WATCH_FAILURES`], and the observation never ended.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_observer_whose_reads_keep_failing_after_a_compaction_ends() {
        use crate::hooks::{arm, disarm, Fault};
        use fencelock_testkit::etcd_server::EtcdCluster;

        let mut cluster = EtcdCluster::single();
        let elections = EtcdElection::connect(&cluster.url("")).await.unwrap();
        let mut observer = elections.observe("compacted").await.unwrap();
        assert_eq!(observer.changed().await, Some(None), "an empty seat at first");
        let display = elections.cluster().display().to_owned();
        arm(&display, Fault::FailingCandidatesRead);
        // Revisions past the observer's read (outside its directory), then compacted.
        let endpoint = format!("http://{}", cluster.endpoints()[0]);
        let mut admin = etcd_client::Client::connect([endpoint], None).await.unwrap();
        let mut last = 0;
        for i in 0..3 {
            let put = admin.put("elsewhere", i.to_string(), None).await.unwrap();
            last = put.header().unwrap().revision();
        }
        admin.compact(last, None).await.unwrap();
        // The observer's watch breaks; each watch replacing it starts at a compacted
        // revision, since no read succeeds.
        tokio::task::block_in_place(|| cluster.restart(0));
        // Bounded: MAX_WATCH_FAILURES pauses of at most 1 s, each watch answered at once.
        let ended = tokio::time::timeout(Duration::from_secs(60), async {
            while observer.changed().await.is_some() {}
        })
        .await;
        disarm(&display, Fault::FailingCandidatesRead);
        assert!(
            ended.is_ok(),
            "the observation did not end within 60 s while every read failed and every watch was cancelled"
        );
    }

    /// A quiet election (no events) whose watches break again and again while reads
    /// succeed — a proxy's idle timeout, member restarts — keeps its observer: a watch
    /// created from a fresh read ends the failures in a row (review: only events or a
    /// progress notification did, and the observer ended after 21 breaks on a healthy
    /// cluster).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_quiet_observer_outlives_watches_that_break() {
        use crate::hooks::{arm, disarm, Fault};
        use fencelock_testkit::etcd_server::EtcdCluster;

        let cluster = EtcdCluster::single();
        let elections = EtcdElection::connect(&cluster.url("")).await.unwrap();
        let mut observer = elections.observe("quiet").await.unwrap();
        assert_eq!(observer.changed().await, Some(None), "an empty seat at first");
        let display = elections.cluster().display().to_owned();
        arm(&display, Fault::BreakingWatches);
        // More breaks than MAX_WATCH_FAILURES (21): counted in a row, the observer ended
        // at the 21st and no watch broke again. Each replacement pauses 40 ms here (one
        // failure in a row), so 30 take a few seconds.
        let broke = tokio::time::timeout(Duration::from_secs(20), async {
            while crate::hooks::struck(&display, Fault::BreakingWatches) < 30 {
                tokio::time::sleep(Duration::from_millis(20)).await; // polling a counter with a deadline
            }
        })
        .await;
        disarm(&display, Fault::BreakingWatches);
        assert!(
            broke.is_ok(),
            "the observer stopped replacing its watch after {} breaks on a quiet election",
            crate::hooks::struck(&display, Fault::BreakingWatches)
        );
        // And it still follows: a campaign is seen.
        let leading = elections.campaign("quiet", b"a", &Default::default()).await.unwrap();
        let seen = tokio::time::timeout(Duration::from_secs(10), observer.changed()).await;
        assert!(matches!(seen, Ok(Some(Some(_)))), "{seen:?}");
        drop(leading);
    }
}
