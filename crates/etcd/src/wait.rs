//! Waiting for our turn in a lock's queue without a request at the hand-off.
//!
//! The keys older than ours (create revision below ours) only ever go: a key made later
//! gets a later revision, and a queue name reused after its deletion is a new key, younger
//! than ours. So once we know that set exactly, the watch events of its deletions are
//! enough to know we are first — no read after the predecessor's delete. Only deletions
//! after the read count: a watch "from now" starts at the revision of the member serving
//! it, which may be behind the read and replay the delete of an older key under the same
//! (reused) name.
//!
//! The recipe (etcd's concurrency mutex, extended to [`TRACKED`] keys): read the **three**
//! keys just older than ours and whether any older one is left (the range's `more` flag,
//! computed after the create-revision filter — its `count` is not: it counts the whole
//! directory), together with our own key, in one transaction; watch them on the
//! instance's shared watch stream ([`crate::watch_stream`]).
//! The first such read is made by the queueing transaction itself, right after its put
//! ([`place_read`]), so a queued acquire reads no more on its own — unless a write landed
//! before its watches began (`late`, below: usual under contention), when it reads once,
//! as before.
//!
//! * Every known older key deleted and nothing else older: we are first — granted on the
//!   watch push alone.
//! * The key just before ours deleted while an older known one is not reported gone: read
//!   again. Keys left out of order (a waiter gave up), or the older key's event is held
//!   back: a watch etcd registered while a write was applied waits in its "unsynced" group,
//!   and gets its events at the next sync, up to 100 ms later.
//! * One of them deleted while others older may be left: read again (at most one read per
//!   key that goes, two when a new watch began after the read). Under steady contention
//!   this read happens when the key three ahead of ours is released — two hand-offs before
//!   our turn, off the hand-off's path. With two keys tracked (before issue 14's
//!   measurement) it happened one hand-off before our turn: a holder that releases at once
//!   (the bench's clients do) released while that read was still in flight, and a
//!   linearizable read waits for the writes committing with it, so the next hand-off
//!   waited for it (etcd hand-off p50 1.45× the uncontended cycle at 8 clients).
//!
//! Each release is pushed to at most three waiters (the three behind it): constant in the
//! number of waiters, no herd.
//!
//! Validity: on the session, the session's own keep-alives say how long the key lives
//! (the grant counts from them) — and while the key still rides on the session's waiting
//! lease ([`crate::waiting_lease`]), that lease's keep-alives bound it too; on an own
//! lease, from the send instant of the last confirmed keep-alive or lease grant, which the
//! wait keeps within a fifth of the validity (a keep-alive is sent at our turn only if it
//! is older than a quarter).

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use etcd_client::{
    EventType, GetOptions, GetResponse, SortOrder, SortTarget, Txn, TxnOp, TxnOpResponse, WatchFilterType, WatchOptions,
};
use fencelock_core::Result;
use tokio::time::Instant;

use crate::client::Cluster;
use crate::error::lease_gone;
use crate::queue::{Holding, Queued};
use crate::watch_stream::{Added, Subscription};

/// How many keys just older than ours one read fetches and the wait watches.
const TRACKED: i64 = 3;

/// What one queue read (a single transaction) says about our place.
#[derive(Debug)]
pub(crate) struct Place {
    /// Up to [`TRACKED`] keys just older than ours, youngest first.
    older: Vec<Vec<u8>>,
    /// Keys older than these are left too.
    more: bool,
    /// Our key still exists with our create revision, on our lease.
    ours: bool,
    /// The revision the read saw.
    seen: i64,
}

/// The read of our place that the queueing transaction makes right after its put: the
/// directory's [`TRACKED`] + 1 youngest keys — ours (the transaction's own put is the
/// youngest key) and the ones just before it. Its `more` flag (set by etcd after sorting
/// and limiting) says whether an older key is left beyond them.
pub(crate) fn place_read(dir: &str) -> TxnOp {
    let youngest = GetOptions::new()
        .with_prefix()
        .with_sort(SortTarget::Create, SortOrder::Descend)
        .with_limit(TRACKED + 1)
        .with_keys_only();
    TxnOp::get(dir.to_owned(), Some(youngest))
}

impl Place {
    /// Our place from [`place_read`]'s answer, in the transaction (at `revision`) that put
    /// `my_key`; `None` when the youngest key read is not that put (etcd's reads in a
    /// transaction see its own writes, so it is not expected): the wait then reads.
    pub(crate) fn after_our_put(g: &GetResponse, my_key: &str, revision: i64) -> Option<Place> {
        let kvs = g.kvs();
        let ours = kvs
            .first()
            .is_some_and(|kv| kv.key() == my_key.as_bytes() && kv.create_revision() == revision);
        ours.then(|| Place {
            older: kvs.iter().skip(1).map(|kv| kv.key().to_vec()).collect(),
            more: g.more(),
            ours,
            seen: revision,
        })
    }
}

/// The read of the [`TRACKED`] keys just older than ours (create revision below `rev`)
/// and, by its `more` flag, whether any older one is left.
pub(crate) fn older_read(dir: &str, rev: i64) -> TxnOp {
    let older = GetOptions::new()
        .with_prefix()
        .with_max_create_revision(rev - 1)
        .with_sort(SortTarget::Create, SortOrder::Descend)
        .with_limit(TRACKED)
        .with_keys_only();
    TxnOp::get(dir.to_owned(), Some(older))
}

impl Place {
    /// Our place from [`older_read`]'s answer, read at `revision` in a transaction that
    /// confirmed our key (its compare) — the move onto the waiting lease.
    pub(crate) fn from_older(g: &GetResponse, revision: i64) -> Place {
        Place {
            older: g.kvs().iter().map(|kv| kv.key().to_vec()).collect(),
            more: g.more(),
            ours: true,
            seen: revision,
        }
    }
}

/// Reads, in one transaction, the keys just before ours and our own key: "which older keys
/// are left" and "our key is still ours" hold at the same revision.
async fn read_place(c: &Cluster, q: &Queued) -> Result<Place> {
    let txn = Txn::new().and_then([
        older_read(&q.dir, q.rev),
        TxnOp::get(q.key.clone(), Some(GetOptions::new().with_keys_only())),
    ]);
    let resp = c.txn("reading our place in the queue", &txn).await?;
    let mut place = Place {
        older: Vec::new(),
        more: false,
        ours: false,
        seen: resp.header().map_or(0, |h| h.revision()),
    };
    for (i, op) in resp.op_responses().into_iter().enumerate() {
        let TxnOpResponse::Get(g) = op else { continue };
        if i == 0 {
            place.older = g.kvs().iter().map(|kv| kv.key().to_vec()).collect();
            place.more = g.more();
        } else {
            place.ours = g
                .kvs()
                .first()
                .is_some_and(|kv| kv.create_revision() == q.rev && q.rides_on(kv.lease()));
        }
    }
    Ok(place)
}

/// The watches of one wait, on the instance's shared watch stream, and what they saw.
struct Watches {
    sub: Subscription,
    /// Watches asked for and not yet confirmed, by watch id.
    pending: HashMap<i64, Vec<u8>>,
    watched: HashSet<Vec<u8>>,
    /// Keys older than ours whose deletion was pushed: gone for good (see the module docs).
    deleted: HashSet<Vec<u8>>,
    /// Some watch was created at a revision after the last read: a deletion between the
    /// two would be missed, so the place is read again.
    late: bool,
}

impl Watches {
    fn new(c: &Cluster) -> Self {
        Watches {
            sub: Subscription::new(c),
            pending: HashMap::new(),
            watched: HashSet::new(),
            deleted: HashSet::new(),
            late: false,
        }
    }

    /// Watches every key of `keys` not watched yet, from now (a watch from a past revision
    /// is parked by etcd in its "unsynced" group and caught up only every 100 ms).
    async fn add(&mut self, c: &Cluster, keys: &[Vec<u8>]) -> Result<()> {
        let wopts = WatchOptions::new().with_filters([WatchFilterType::NoPut]);
        for key in keys {
            if self.watched.contains(key) || self.pending.values().any(|k| k == key) {
                continue;
            }
            let (id, added) = self.sub.watch(c, key.clone(), wopts.clone()).await?;
            if added == Added::Anew {
                self.forget(); // the stream broke: the watches on it are gone
            }
            self.pending.insert(id, key.clone());
        }
        Ok(())
    }

    /// Forgets the watches (what was deleted stays known): the stream they were on broke.
    fn forget(&mut self) {
        self.pending.clear();
        self.watched.clear();
        self.late = true;
    }
}

/// What the wait for a push ended with.
#[derive(Debug, PartialEq)]
enum Woken {
    /// Every older key is gone: ours is first.
    First,
    /// Read the place again.
    Look,
}

/// Waits until no key older than ours is left (see the module docs). `ttl` is the lock's
/// TTL (an own lease's validity is the smaller of it and the granted TTL).
///
/// Returns `Some(since)` when we own the lock, valid from `since`; `None` when our key or
/// own lease vanished while queued (the etcd 3.4.3 Jepsen finding, etcd issue 11456: every
/// read also checks our key) — queue again.
pub(crate) async fn wait_turn(c: &Cluster, q: &mut Queued, ttl: Duration) -> Result<Option<Instant>> {
    // Before watching: the first waiter after a quiet spell queued on the session lease;
    // onto the short waiting lease it goes, so that dying while queued costs the others
    // that lease's TTL.
    if !q.onto_waiting().await? {
        return Ok(None);
    }
    // At our turn the key may still ride on the waiting lease: the grant is handed out on
    // the push as before, valid no longer than that lease, and its first renewal moves the
    // key onto the session lease ([`crate::grant`]).
    wait_queue(c, q, ttl).await
}

/// [`wait_turn`] without the lease moves.
async fn wait_queue(c: &Cluster, q: &mut Queued, ttl: Duration) -> Result<Option<Instant>> {
    let mut first = q.place.take();
    let q = &*q;
    // The send instant of the last confirmed grant or keep-alive of an own lease: the
    // lease lives at least its granted TTL from then.
    let (validity, mut confirmed) = match &q.holding {
        Holding::Own { granted, sent, .. } => (ttl.min(*granted), *sent),
        Holding::Session { .. } => (ttl, Instant::now()),
    };
    let mut w = Watches::new(c);
    let own = q.key.as_bytes().to_vec();
    for _ in 0..100_000 {
        let place = match first.take() {
            Some(place) => place,
            None => read_place(c, q).await?,
        };
        if !place.ours {
            return Ok(None);
        }
        let known: Vec<Vec<u8>> = place.older.into_iter().filter(|k| !w.deleted.contains(k)).collect();
        if known.is_empty() && !place.more {
            return turn(c, q, validity, confirmed).await;
        }
        if known.is_empty() {
            continue; // both went since the read; older ones are left
        }
        w.late = false;
        w.add(c, &known).await?;
        // Our own key too: one deleted behind our back (an operator's `etcdctl del`, our
        // waiting lease lapsing) ends this wait when its delete is pushed before the last
        // older key's — a grant on the push reads nothing, and a trial saw such a waiter
        // granted beside the one behind it, which rightly had the lock (3 of 18 runs).
        // Not always: when one revision deletes our key and the last older one (a `del
        // --prefix`, one lease carrying both), etcd notifies that revision's watchers in
        // no set order (a map's), and a watch still unsynced gets its events up to 100 ms
        // late. A waiter granted so is caught after the grant, as docs/backends/etcd.md
        // ("A grant removed behind the holder's back") says: by the grant's move of its key
        // onto the session lease, which finds it gone (lease lost), by the session's key
        // check, or by `extend` and `release`.
        w.add(c, std::slice::from_ref(&own)).await?;
        let woken = wait_push(c, q, &mut w, &known, place.more, place.seen, validity, &mut confirmed).await?;
        match woken {
            Some(Woken::First) => return turn(c, q, validity, confirmed).await,
            Some(Woken::Look) => {}
            None => return Ok(None), // the own lease is gone
        }
    }
    Ok(None) // the queue never settled (bounded): queue again
}

/// Waits for the watch stream to say something that changes our view: `First` when every
/// known older key went and nothing else older is left, `Look` when the place must be read
/// again. Keeps an own lease fresh meanwhile; `None` when it is gone, or our own key was
/// deleted (queue again).
#[allow(clippy::too_many_arguments)]
async fn wait_push(
    c: &Cluster,
    q: &Queued,
    w: &mut Watches,
    known: &[Vec<u8>],
    more: bool,
    seen: i64,
    validity: Duration,
    confirmed: &mut Instant,
) -> Result<Option<Woken>> {
    let refresh = match &q.holding {
        Holding::Own { .. } => validity / 5,
        Holding::Session { .. } => Duration::from_secs(3600),
    };
    for _ in 0..1_000_000 {
        let wake = (*confirmed + refresh).max(Instant::now() + Duration::from_millis(1));
        match tokio::time::timeout_at(wake, w.sub.message()).await {
            Ok(Some(r)) => {
                if r.created() {
                    if let Some(key) = w.pending.remove(&r.watch_id()) {
                        let at = r.header().map_or(i64::MAX, |h| h.revision());
                        w.late |= at > seen;
                        w.watched.insert(key);
                    }
                }
                if r.canceled() {
                    // Compacted, or refused: start over on a fresh stream.
                    w.sub.reset();
                    w.forget();
                    return Ok(Some(Woken::Look));
                }
                let events = r
                    .events()
                    .iter()
                    .filter_map(|e| e.kv().map(|kv| (e.event_type(), kv.key(), kv.mod_revision())));
                note_deletes(&mut w.deleted, events, seen);
            }
            Ok(None) => {
                w.forget(); // the stream broke
                return Ok(Some(Woken::Look));
            }
            Err(_) => {
                if let Holding::Own { lease, .. } = &q.holding {
                    let sent = Instant::now();
                    if !keep_alive_once(c, *lease).await? {
                        return Ok(None);
                    }
                    *confirmed = sent;
                }
                continue;
            }
        }
        match after_push(&w.deleted, q.key.as_bytes(), known, more, !w.pending.is_empty(), w.late) {
            Next::Wait => {}
            Next::OwnGone => return Ok(None), // our key went: queue again
            Next::Wake(woken) => return Ok(Some(woken)),
        }
    }
    Ok(Some(Woken::Look))
}

/// Notes in `deleted` the keys that `events` (type, key, mod revision of each pushed watch
/// event) say are gone for good, for a wait whose last read was at revision `seen`.
///
/// Only a delete after the read counts. Every key we watch (and our own) was alive at
/// `seen`; a delete of the same name at or before it belongs to an older key under a
/// reused queue name, replayed by a member that was behind the read (a watch "from now"
/// starts at the serving member's revision). Counted, it made a waiter first in line
/// beside a live holder: one overlap in the 3-member conformance run
/// (mutual_exclusion_under_contention).
fn note_deletes<'a>(
    deleted: &mut HashSet<Vec<u8>>,
    events: impl IntoIterator<Item = (EventType, &'a [u8], i64)>,
    seen: i64,
) {
    for (event_type, key, mod_revision) in events {
        if event_type == EventType::Delete && mod_revision > seen {
            deleted.insert(key.to_vec());
        }
    }
}

/// What [`wait_push`] does after a message of the watch stream.
#[derive(Debug, PartialEq)]
enum Next {
    /// Nothing decided: wait for the next message.
    Wait,
    /// Our own key was deleted: queue again.
    OwnGone,
    /// The wait ends.
    Wake(Woken),
}

/// The decision of [`wait_push`] after a message, from the keys known `deleted`, our own
/// key `own`, the `known` older keys (youngest first) and whether older ones are left
/// (`more`), whether some watch is still `pending` and whether one began after the read
/// (`late`).
fn after_push(
    deleted: &HashSet<Vec<u8>>,
    own: &[u8],
    known: &[Vec<u8>],
    more: bool,
    pending: bool,
    late: bool,
) -> Next {
    if deleted.contains(own) {
        return Next::OwnGone;
    }
    if pending {
        return Next::Wait; // not every watch is in place yet
    }
    if late {
        return Next::Wake(Woken::Look); // a watch began after the read: look again
    }
    let left = known.iter().filter(|k| !deleted.contains(*k)).count();
    if left == 0 && !more {
        return Next::Wake(Woken::First);
    }
    if left < known.len() && more {
        return Next::Wake(Woken::Look); // older keys may be left: see which
    }
    if left > 0 && known.first().is_some_and(|k| deleted.contains(k)) {
        // The key just before ours went while an older one is not known gone: keys
        // left out of order (a waiter gave up), or the older key's event is held back —
        // events come in revision order only from watches etcd keeps "synced", and a
        // watch created while a write was applied waits in etcd's unsynced group for
        // its next sync, up to 100 ms (mvcc `syncWatchersLoop`). One read settles it.
        return Next::Wake(Woken::Look);
    }
    Next::Wait
}

/// Our turn came: the validity's start. On the session it comes from the session (the
/// grant reads it); on an own lease from the last confirmed keep-alive if that is recent
/// (within a quarter of the validity), else from one sent now.
async fn turn(c: &Cluster, q: &Queued, validity: Duration, confirmed: Instant) -> Result<Option<Instant>> {
    match &q.holding {
        Holding::Session { .. } => Ok(Some(Instant::now())),
        Holding::Own { lease, .. } => {
            if confirmed.elapsed() <= validity / 4 {
                return Ok(Some(confirmed));
            }
            let since = Instant::now();
            Ok(keep_alive_once(c, *lease).await?.then_some(since))
        }
    }
}

/// One keep-alive of a lease: `true` when it lives (renewed to its granted TTL), `false`
/// when it is gone. Opening the keep-alive stream sends the request and checks the answer
/// — inside the client library, header unseen: a "lease not found" is read back
/// ([`Cluster::lease_after_refusal`], only then), and a lease alive in the cluster the
/// connect met means a member of another cluster answered: `InvalidConfig`, not `false`
/// (which would tell a lock on it that it was lost).
pub(crate) async fn keep_alive_once(c: &Cluster, lease: i64) -> Result<bool> {
    let opened = c
        .call("keeping a lease alive", |mut cl| async move {
            cl.lease_keep_alive(lease).await.map(|_| ())
        })
        .await;
    match opened {
        Ok(()) => Ok(true),
        Err(e) if lease_gone(&e) => c
            .refusal_stands(lease, "keeping a lease alive", &format!("the lease {lease:x}"))
            .await
            .map(|()| false),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A queue key as [`crate::config`] names it: `{dir}{instance}.{slot}`.
    fn key(instance: u64, slot: u32) -> Vec<u8> {
        format!("/fencelock/q/lock/{instance:016x}.{slot:08x}").into_bytes()
    }

    /// The keys of `deleted` as text, for a failure's message.
    fn shown(deleted: &HashSet<Vec<u8>>) -> Vec<String> {
        deleted
            .iter()
            .map(|k| String::from_utf8_lossy(k).into_owned())
            .collect()
    }

    /// The incident of 8300c6a, event by event. Holder A (instance 1) released its key in
    /// slot 0 at revision 16 and queued again at 18 under the same name (the lowest free
    /// slot); waiter W (instance 2) queued at 20, its read saw A's live key as the one
    /// ahead. W's watch "from now" was served by a member still at revision 15, which
    /// replays the delete at 16 of A's *previous* key of that name. That delete must not
    /// make W first: A still holds the lock.
    #[test]
    fn a_replayed_delete_of_an_older_key_under_a_reused_name_does_not_grant() {
        let (a, w) = (key(1, 0), key(2, 0));
        let seen = 20;
        let known = vec![a.clone()];
        let mut deleted = HashSet::new();
        // The lagging member's replay: the old key's delete (the put at 18 is filtered out
        // by the watch's NoPut).
        note_deletes(&mut deleted, [(EventType::Delete, a.as_slice(), 16)], seen);
        assert_eq!(
            after_push(&deleted, &w, &known, false, false, false),
            Next::Wait,
            "a delete at revision 16 (before the read at {seen}) of an older key named like the \
             live one ahead made the waiter first beside its holder; deleted = {:?}",
            shown(&deleted)
        );
        // A's real release, after the read: now W is first.
        note_deletes(&mut deleted, [(EventType::Delete, a.as_slice(), 23)], seen);
        assert_eq!(
            after_push(&deleted, &w, &known, false, false, false),
            Next::Wake(Woken::First)
        );
    }

    /// A delete at the read's own revision happened before (or as) the read saw the key
    /// alive: it is an older key's, and does not count either.
    #[test]
    fn a_delete_at_the_read_revision_does_not_count() {
        let a = key(1, 0);
        let mut deleted = HashSet::new();
        note_deletes(&mut deleted, [(EventType::Delete, a.as_slice(), 20)], 20);
        assert!(deleted.is_empty(), "counted as gone: {:?}", shown(&deleted));
        note_deletes(&mut deleted, [(EventType::Delete, a.as_slice(), 21)], 20);
        assert_eq!(deleted, HashSet::from([a]));
    }

    /// Our own name may be reused too (the same instance, the same slot): the replayed
    /// delete of our previous key must not end the wait as "our key went".
    #[test]
    fn a_replayed_delete_of_our_previous_key_does_not_end_the_wait() {
        let (a, w) = (key(1, 0), key(2, 0));
        let mut deleted = HashSet::new();
        note_deletes(&mut deleted, [(EventType::Delete, w.as_slice(), 12)], 20);
        assert_eq!(after_push(&deleted, &w, &[a], false, false, false), Next::Wait);
        note_deletes(&mut deleted, [(EventType::Delete, w.as_slice(), 21)], 20);
        assert_eq!(after_push(&deleted, &w, &[], false, false, false), Next::OwnGone);
    }

    /// Puts never count (the watches filter them out; were one to come through, it is
    /// not a delete).
    #[test]
    fn a_put_is_not_a_delete() {
        let a = key(1, 0);
        let mut deleted = HashSet::new();
        note_deletes(&mut deleted, [(EventType::Put, a.as_slice(), 30)], 20);
        assert!(deleted.is_empty(), "counted as gone: {:?}", shown(&deleted));
    }

    /// Of three known keys, a replayed delete of the one just before ours (older name)
    /// must not send the wait to read again as if it went, nor grant; the real delete of
    /// every one does grant.
    #[test]
    fn replayed_deletes_among_three_known_keys_change_nothing() {
        let w = key(4, 0);
        let known = vec![key(3, 0), key(2, 0), key(1, 0)];
        let mut deleted = HashSet::new();
        let replay: Vec<(EventType, &[u8], i64)> = known
            .iter()
            .zip([17, 13, 9])
            .map(|(k, r)| (EventType::Delete, k.as_slice(), r))
            .collect();
        note_deletes(&mut deleted, replay, 20);
        assert_eq!(after_push(&deleted, &w, &known, false, false, false), Next::Wait);
        let real: Vec<(EventType, &[u8], i64)> = known
            .iter()
            .zip([31, 27, 25])
            .map(|(k, r)| (EventType::Delete, k.as_slice(), r))
            .collect();
        note_deletes(&mut deleted, real, 20);
        assert_eq!(
            after_push(&deleted, &w, &known, false, false, false),
            Next::Wake(Woken::First)
        );
    }
}
