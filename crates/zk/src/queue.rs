//! The queue of lock nodes under a key: taking a place (the create, with its answer
//! followed up when lost), finding our position, and waiting for our turn by watching the
//! three nodes before ours, our own node and at most one waiting marker (no herd: a
//! release wakes at most three waiters) — the recipe of ZooKeeper's documentation
//! ("Locks", in "ZooKeeper Recipes and Solutions"), extended.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use fencelock_core::{GrantId, LockError, Result};
use tokio::sync::oneshot;
use tokio::time::Instant;
use zookeeper_client::{Acls, CreateMode, EventType, WatchedEvent};

use crate::cleanup;
use crate::config::ZkConfig;
use crate::error::{failed, outcome_unknown, refused_name, timed_out};
use crate::names::{find_ours, queue_order};
use crate::session::{after_sync, Session};
use crate::waiting::{named_marker, WaitingSlot, WaitingUse};

/// The most look-ups a follow-up of a lost create answer makes before it leaves the node
/// (if any) to the session's end.
const MAX_FOLLOW_UPS: u32 = 20;

/// How many times a create is tried when the key's container is missing (a new key, or the
/// server removed the empty container between our creates).
const CONTAINER_TRIES: u32 = 3;

/// Our node in the queue. Dropping it while armed (an abandoned, failed or late acquire)
/// deletes it in the background.
pub(crate) struct Queued {
    pub session: Arc<Session>,
    pub cfg: Arc<ZkConfig>,
    pub dir: String,
    pub name: String,
    pub czxid: i64,
    /// The watch on our own node set while waiting ([`wait_turn`]): kept by the grant until
    /// the release's delete fires it, so it is never removed by a request of its own.
    /// (A mutex only to make `Queued` `Sync`; taken and put back through `&mut`.)
    pub own_watch: std::sync::Mutex<Option<OwnWatch>>,
    /// Our node's data names the instance's waiting marker (issue 14), written at this
    /// version: until the grant claims the node, a waiter behind us may remove it once the
    /// marker is gone. `None`: it names nothing (the node is removed only with our session).
    pub naming: std::sync::Mutex<Option<Naming>>,
    /// The send instant of the create that made our node, until the first listing after
    /// it takes it as its proof ([`first_position`]); `None` for a node found by a
    /// follow-up of a lost create.
    pub created_at: std::sync::Mutex<Option<Instant>>,
    armed: bool,
}

/// Our node names the waiting session's marker (`waiting.rs`), since `version`.
pub(crate) struct Naming {
    pub version: i32,
    pub used: WaitingUse,
}

impl Queued {
    pub fn path(&self) -> String {
        format!("{}/{}", self.dir, self.name)
    }

    /// The node became a lease: its release is the lease's business now.
    pub fn disarm(&mut self) {
        self.armed = false;
    }
}

impl Drop for Queued {
    fn drop(&mut self) {
        if self.armed {
            cleanup::delete(&self.session, self.cfg.timeout, self.path());
        }
    }
}

/// A create whose answer has not reached its caller yet. Kept across the attempts of one
/// `acquire` (with the same grant id), so a retry waits for the first create instead of
/// making a second node; dropping it hands the outcome to the background, which deletes
/// whatever the create made.
///
/// Once a create's answer was taken (its node handed to an attempt, which may drop it), the
/// next create gets a new grant id: two nodes of one id — the dropped one still being
/// deleted — would make a lost answer's follow-up ([`find_ours`]) ambiguous.
pub(crate) struct Pending {
    grant: std::sync::Mutex<GrantId>,
    answer: std::sync::Mutex<Option<oneshot::Receiver<Result<Queued>>>>,
}

impl Pending {
    /// A new grant id, no create sent yet.
    pub fn new() -> Self {
        Pending {
            grant: std::sync::Mutex::new(GrantId::random()),
            answer: std::sync::Mutex::new(None),
        }
    }

    /// The grant id of the next create.
    fn grant(&self) -> GrantId {
        self.grant.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// A create's answer was taken: the next create is another node, under a new id.
    fn answered(&self) {
        *self.grant.lock().unwrap_or_else(|p| p.into_inner()) = GrantId::random();
    }
}

/// Takes a place in `key`'s queue: creates our ephemeral sequential node
/// `DIR/PREFIX-SEQUENCE`, named by the configured layout (the container first if it is
/// missing). The create runs
/// in its own task, which waits for the client's answer however late it comes; this call
/// waits at most two request timeouts (container and node) and returns `Unavailable`
/// after that, leaving the create in `pending` for the next attempt. `dir`: `key`'s
/// directory as the layout names it (`cfg.layout.dir`), computed once by the caller; its
/// error is the create's.
pub(crate) async fn enqueue(
    session: &Arc<Session>,
    cfg: &Arc<ZkConfig>,
    key: &str,
    dir: Result<String>,
    pending: &Pending,
    named: Option<WaitingUse>,
) -> Result<Queued> {
    let waiting = pending.answer.lock().unwrap_or_else(|p| p.into_inner()).take();
    let answer = match waiting {
        Some(answer) => answer,
        None => {
            let (tx, rx) = oneshot::channel();
            let (s, cfg2, key2, grant) = (Arc::clone(session), Arc::clone(cfg), key.to_owned(), pending.grant());
            session.cleanups.spawn("creating a lock node", async move {
                let outcome = create(&s, &cfg2, &key2, dir, &grant, named).await;
                // A caller that gave up dropped the receiver: the node (if any) comes back
                // here and its drop deletes it.
                drop(tx.send(outcome));
            });
            rx
        }
    };
    let mut answer = answer;
    match tokio::time::timeout(cfg.timeout * 2, &mut answer).await {
        Ok(Ok(outcome)) => {
            pending.answered();
            outcome
        }
        Ok(Err(_)) => Err(LockError::Unavailable {
            message: "the lock node's create task ended without an answer (no runtime?)".into(),
            source: None,
        }),
        Err(_) => {
            *pending.answer.lock().unwrap_or_else(|p| p.into_inner()) = Some(answer);
            Err(timed_out("creating the lock node", &cfg.display, cfg.timeout * 2))
        }
    }
}

/// The create itself, in the background task. Its answer is awaited for as long as the
/// client keeps the request (it fails requests when a connection is lost), bounded by two
/// session timeouts and a request timeout; when no answer comes, or the connection was lost
/// with the request in flight, the outcome is unknown and [`follow_up`] finds out.
///
/// `named`: the node's data names the instance's waiting marker from its create on (the
/// instance has a waiting session open already: no request more).
async fn create(
    session: &Arc<Session>,
    cfg: &Arc<ZkConfig>,
    key: &str,
    dir: Result<String>,
    grant: &GrantId,
    named: Option<WaitingUse>,
) -> Result<Queued> {
    let client = session.client()?;
    let data = named.as_ref().map(|u| u.reference().to_vec()).unwrap_or_default();
    let dir = dir?;
    let name_prefix = cfg.layout.prefix(grant);
    let prefix = format!("{dir}/{name_prefix}");
    let node = CreateMode::EphemeralSequential.with_acls(Acls::anyone_all());
    let limit = session.timeout() * 2 + cfg.timeout;
    for _ in 0..CONTAINER_TRIES {
        let sent_at = Instant::now();
        match tokio::time::timeout(limit, client.create(&prefix, &data, &node)).await {
            Ok(Ok((stat, seq))) => {
                return Ok(Queued {
                    created_at: std::sync::Mutex::new(Some(sent_at)),
                    session: Arc::clone(session),
                    cfg: Arc::clone(cfg),
                    name: format!("{name_prefix}{seq}"),
                    dir,
                    czxid: stat.czxid,
                    own_watch: std::sync::Mutex::new(None),
                    naming: std::sync::Mutex::new(named.map(|used| Naming { version: 0, used })),
                    armed: true,
                })
            }
            // A new key, or its empty container was removed: make the container (and, for
            // a peer layout's path, its missing ancestors), then again.
            Ok(Err(zookeeper_client::Error::NoNode)) => {
                match tokio::time::timeout(cfg.timeout, make_dir(&client, &dir)).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e @ zookeeper_client::Error::BadArguments(_))) => return Err(refused_name(key, &dir, e)),
                    Ok(Err(e)) => return Err(failed("creating the lock's container", &cfg.display, e)),
                    // A container made late is harmless: it holds no lock node, and the
                    // server removes empty containers.
                    Err(_) => return Err(timed_out("creating the lock's container", &cfg.display, cfg.timeout)),
                }
            }
            Ok(Err(e @ zookeeper_client::Error::BadArguments(_))) => return Err(refused_name(key, &dir, e)),
            Ok(Err(e)) if outcome_unknown(&e) => return follow_up(session, cfg, &dir, grant, named).await,
            Ok(Err(e)) => return Err(failed("creating the lock node", &cfg.display, e)),
            Err(_) => return follow_up(session, cfg, &dir, grant, named).await,
        }
    }
    Err(LockError::Unavailable {
        message: format!("the lock's container {dir} vanished {CONTAINER_TRIES} times while creating the lock node"),
        source: None,
    })
}

/// Creates `dir` and each missing ancestor as container nodes (Curator makes a lock path's
/// parents so too; the server removes them once empty). An existing node is fine.
async fn make_dir(client: &zookeeper_client::Client, dir: &str) -> std::result::Result<(), zookeeper_client::Error> {
    let container = CreateMode::Container.with_acls(Acls::anyone_all());
    let ends = dir.match_indices('/').skip(1).map(|(i, _)| i).chain([dir.len()]);
    for end in ends {
        match client.create(&dir[..end], b"", &container).await {
            Ok(_) | Err(zookeeper_client::Error::NodeExists) => {}
            // An ancestor container removed meanwhile: the caller's bounded loop tries again.
            Err(zookeeper_client::Error::NoNode) => return Ok(()),
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Finds out what a create whose answer was lost did: `sync` (so the server we read from has
/// applied everything the leader committed before, our create included if it was), then
/// list the key's children and look for our grant id. Found: the node is ours (returned
/// armed, so a caller that gave up deletes it). Not found after a sync: it was never made.
/// Retried with backoff while the look-up itself gets no answer, for at most
/// [`MAX_FOLLOW_UPS`] look-ups and `cfg.follow_up_budget`; after that the attempt is told
/// the outcome is unknown (its acquire's next create takes a new grant id), and the look-up
/// goes on in the background ([`follow_up_late`]), which deletes the node if it was made.
async fn follow_up(
    session: &Arc<Session>,
    cfg: &Arc<ZkConfig>,
    dir: &str,
    grant: &GrantId,
    named: Option<WaitingUse>,
) -> Result<Queued> {
    let mut named = named;
    let mut pause = Duration::from_millis(50);
    let budget = Instant::now() + cfg.follow_up_budget;
    let prefix = cfg.layout.prefix(grant);
    for _ in 0..MAX_FOLLOW_UPS {
        if !session.is_usable() || Instant::now() >= budget {
            break;
        }
        let client = session.client()?;
        match tokio::time::timeout(cfg.timeout, look_up(&client, dir, &prefix)).await {
            Ok(Ok(Some((name, czxid)))) => {
                tracing::debug!(%dir, %name, "a lock node whose create answer was lost was found");
                return Ok(Queued {
                    created_at: std::sync::Mutex::new(None),
                    session: Arc::clone(session),
                    cfg: Arc::clone(cfg),
                    dir: dir.to_owned(),
                    name,
                    czxid,
                    own_watch: std::sync::Mutex::new(None),
                    naming: std::sync::Mutex::new(named.take().map(|used| Naming { version: 0, used })),
                    armed: true,
                });
            }
            Ok(Ok(None)) | Ok(Err(zookeeper_client::Error::NoNode)) => {
                return Err(LockError::Unavailable {
                    message: "the lock node's create got no answer, and the node was not made".into(),
                    source: None,
                })
            }
            Ok(Err(e)) => tracing::debug!(%dir, error = %e, "looking for a lost create failed; trying again"),
            Err(_) => tracing::debug!(%dir, "looking for a lost create got no answer; trying again"),
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_secs(1));
    }
    if !session.is_usable() {
        return Err(LockError::Unavailable {
            message: "the lock node's create got no answer and the session ended (with it any node it made)".into(),
            source: None,
        });
    }
    follow_up_late(session, cfg, dir, prefix);
    Err(LockError::Unavailable {
        message: "the lock node's create got no answer and could not be looked up yet; it is looked up in the \
                  background, and deleted if it was made"
            .into(),
        source: None,
    })
}

/// One look-up of a lost create: `sync`, list `dir`, and our node's name and czxid if a
/// child is named `prefix` and a sequence number.
async fn look_up(
    client: &zookeeper_client::Client,
    dir: &str,
    prefix: &str,
) -> std::result::Result<Option<(String, i64)>, zookeeper_client::Error> {
    let children = after_sync(client, |c| c.list_children(dir)).await?;
    let Some(name) = find_ours(&children, prefix) else {
        return Ok(None);
    };
    let stat = client.check_stat(&format!("{dir}/{name}")).await?;
    Ok(stat.map(|s| (name, s.czxid)))
}

/// The most look-ups the background follow-up of a lost create makes, each at least
/// [`LATE_PAUSE`] after the last: at least 10 minutes.
const MAX_LATE_FOLLOW_UPS: u32 = 600;
/// The pause between the background follow-up's look-ups.
const LATE_PAUSE: Duration = Duration::from_secs(1);

/// Goes on looking, in the background, for the node of a create whose answer was lost and
/// whose attempt was answered without it (its grant id `prefix` is never used again), and
/// deletes it when found: otherwise a create committed during an outage longer than
/// [`follow_up`]'s look-ups (a quorum lost, a commit stalled — the session lives through
/// both) stays in the live session, blocking the key for as long as the instance lives.
///
/// Ends when the node is found (deleted by [`cleanup::delete`]) or known never made, or
/// when the session ends (its end deletes the node). After [`MAX_LATE_FOLLOW_UPS`]
/// unanswered look-ups (at least 10 minutes) the session is ended — the last resort: every
/// lease of the instance in it is lost, and its next call opens a new session.
fn follow_up_late(session: &Arc<Session>, cfg: &Arc<ZkConfig>, dir: &str, prefix: String) {
    let (s, cfg, dir) = (Arc::clone(session), Arc::clone(cfg), dir.to_owned());
    // Without a runtime (a drop during shutdown) nothing runs: the session's end deletes it.
    session.cleanups.spawn("following up a lost create", async move {
        for _ in 0..MAX_LATE_FOLLOW_UPS {
            tokio::time::sleep(LATE_PAUSE).await;
            let Ok(client) = s.client() else { return };
            if !s.is_usable() {
                return; // the session's end deletes the node, if it was made
            }
            match tokio::time::timeout(cfg.timeout, look_up(&client, &dir, &prefix)).await {
                Ok(Ok(Some((name, _)))) => {
                    tracing::info!(%dir, %name, "deleting a lock node whose create answer was lost");
                    cleanup::delete(&s, cfg.timeout, format!("{dir}/{name}"));
                    return;
                }
                Ok(Ok(None)) | Ok(Err(zookeeper_client::Error::NoNode)) => return,
                Ok(Err(e)) => tracing::debug!(%dir, error = %e, "looking for a lost create failed; trying again"),
                Err(_) => tracing::debug!(%dir, "looking for a lost create got no answer; trying again"),
            }
        }
        if s.is_usable() {
            tracing::warn!(
                %dir,
                "a lost create could not be looked up for {MAX_LATE_FOLLOW_UPS} tries; ending the session, which deletes it"
            );
            s.close("the session was ended to delete a lost create's node", cfg.timeout).await;
        }
    });
}

/// Where we stand in the queue, and the send instant of the listing that says so.
pub(crate) struct Position {
    /// The node just before ours; `None` when ours is first (we hold the lock).
    pub predecessor: Option<String>,
    /// Every node before ours, oldest first.
    pub older: Vec<String>,
    /// When the listing was sent behind a `sync` — or, for [`first_position`]'s listing,
    /// when our create was: if we are first, the lock is ours from no later than this, and
    /// the answer proves the leader held our session then.
    pub sent_at: Instant,
}

/// Lists the queue, behind a `sync` (one round trip: [`crate::session::after_sync`]) whose answer proves
/// the leader held our session at `sent_at` — the grant counts from it, and a follower cut
/// off from the leader answers a listing alone from its stale copy. `Err` when our node is
/// gone (the session expired, or an operator deleted it).
pub(crate) async fn position(q: &Queued) -> Result<Position> {
    listed(q, Instant::now(), Proof::Sync).await
}

/// The first listing after our create, when it is sent within a request timeout of the
/// create's send: [`position`] without its `sync`, and `sent_at` is the create's send
/// instant. Sound because the create is a write: the leader commits it only for a session
/// it holds (it refuses an expired one), as it answers a `sync` only for a connected
/// follower — so its answer proves from its send instant what the sync's would
/// ([`crate::session::proven_for`]; a follower cut off from the leader cannot answer it
/// at all). And the listing, sent after that answer on the same session, is served from
/// a copy at least as new as our create: every node older than ours (a lower sequence
/// number, given out before ours in the leader's order) is in it unless deleted, and a
/// deleted node never returns — so "none older" is as true as behind a sync. One round
/// trip to the leader fewer per uncontended grant (the `sync` cost an uncontended
/// acquire about a fifth, docs/backends/zookeeper.md). Later listings use [`position`].
pub(crate) async fn first_position(q: &Queued) -> Result<Position> {
    let created_at = q.created_at.lock().unwrap_or_else(|p| p.into_inner()).take();
    match created_at {
        Some(at) if at.elapsed() < q.cfg.timeout => listed(q, at, Proof::OwnCreate).await,
        _ => position(q).await,
    }
}

/// Lists the queue **without** a `sync`, for a waiter that already holds a proof of its
/// session (its first listing, or a check of its own node since): every node before ours,
/// oldest first. The answer proves nothing of the leader's view of our session — a
/// follower cut off from the leader answers it from its stale copy — so it never moves
/// the instant a grant counts from; it only says which nodes before ours are left to
/// watch. Sound for that: it is sent after our create's answer (or after a listing that
/// showed our node) on the same session, so it is served from a copy that has our node,
/// and every older node not yet deleted is in it (a deleted node never returns); a stale
/// copy shows at most nodes already deleted, whose watch then fires at once. When it
/// shows none older, the grant goes as on the push ([`first`]: from the last proof if
/// recent, else behind one listing with a `sync`). Under contention this is the listing
/// a waiter more than [`TRACKED`] places back sends when the node [`TRACKED`] ahead of
/// it goes: behind a `sync` it cost every such waiter a request to the leader per
/// hand-off, off the hand-off's path but on the server's (issue 14: 8 clients, hand-off
/// p50 940 → 1573 µs when it was added). `Err` when our node is gone.
async fn relisted(q: &Queued) -> Result<Vec<String>> {
    Ok(listed(q, Instant::now(), Proof::None).await?.older)
}

/// What proves a listing's view of the leader's session from `sent_at` on.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Proof {
    /// A `sync` pipelined before it.
    Sync,
    /// Our own create, answered before the listing was sent ([`first_position`]).
    OwnCreate,
    /// Nothing: `sent_at` is not a proof ([`relisted`]).
    None,
}

async fn listed(q: &Queued, sent_at: Instant, proof: Proof) -> Result<Position> {
    let client = q.session.client()?;
    let listing = async {
        match proof {
            Proof::Sync => after_sync(&client, |c| c.list_children(&q.dir)).await,
            Proof::OwnCreate | Proof::None => client.list_children(&q.dir).await,
        }
    };
    let mut children = match tokio::time::timeout(q.cfg.timeout, listing).await {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => return Err(failed("listing the queue", &q.cfg.display, e)),
        Err(_) => return Err(timed_out("listing the queue", &q.cfg.display, q.cfg.timeout)),
    };
    // The message names the server's path (chroot included): the one a peer is given.
    let server_path = format!("{}{}", q.cfg.chroot.trim_end_matches('/'), q.dir);
    q.cfg.layout.check_neighbours(&server_path, &children)?;
    // Oldest first, across the sequence counter's wrap (`names::queue_order`).
    children = queue_order(children);
    let Some(at) = children.iter().position(|c| *c == q.name) else {
        return Err(node_gone());
    };
    children.truncate(at);
    Ok(Position {
        predecessor: children.last().cloned(),
        older: children,
        sent_at,
    })
}

fn node_gone() -> LockError {
    LockError::Unavailable {
        message: "our lock node is gone (session expired, or deleted by someone else)".into(),
        source: None,
    }
}

/// How many nodes just before ours the wait watches.
const TRACKED: usize = 3;

/// The shortest period of a waiter's check of its own node. A fifth of a validity shorter
/// than a round trip (a TTL of a few ms) would send one `exists` after the other for the
/// whole wait; with this floor a waiter whose validity is under 250 ms lists once at its
/// turn instead (its last check is then older than a quarter of the validity).
const MIN_CHECK_PERIOD: Duration = Duration::from_millis(50);

/// A watch on one node, until it fires.
pub(crate) type OwnWatch = Pin<Box<dyn Future<Output = WatchedEvent> + Send>>;

/// A watch on one node before ours, until it fires.
type Watch = (String, OwnWatch);

/// Waits until our node is first; returns the send instant of a request answered after
/// it was sent that proves the leader held our session then (a read behind a `sync`: see
/// [`position`]; the lease's validity counts
/// from there, not from the create: a long wait must not eat the TTL). `validity` is the
/// lease's (the smaller of its TTL and the session timeout); `wakeups` counts watch
/// wake-ups.
///
/// Nodes before ours only ever go (a sequence number is never given twice under one
/// parent), so the recipe of ZooKeeper's documentation is extended to [`TRACKED`] nodes:
/// watch the **three** nodes just before ours. When all are gone and the listing showed
/// nothing older, we are first — on the watch push alone, no listing after the
/// predecessor's delete. When one goes while older nodes may be left, list again (without a
/// `sync`: [`relisted`]): under
/// steady contention that happens when the node three ahead of ours is released, two
/// hand-offs before our turn — off the hand-off's path even when holders release at once
/// (with two nodes tracked the listing came one hand-off before our turn, and with 64
/// waiters a holder that released at once did so while that listing of 64 children was
/// still in flight). Each release wakes at most the three waiters behind it: constant in
/// the number of waiters, no herd.
///
/// While waiting, our own node is checked every fifth of `validity` from the last proof (a
/// `sync` and an `exists` in one round trip; at least
/// [`MIN_CHECK_PERIOD`] apart), which keeps the last proof of our session recent: a grant
/// on the push counts from it when it is within a quarter of `validity`, else one listing
/// is sent at our turn.
///
/// Our own node is watched too (one `exists` more per wait, sent with the first watches):
/// a node deleted behind our back while we wait — by an operator, or by whoever removes
/// a dead waiter's node — must end the wait (`Unavailable`: the attempt queues again),
/// never let the pushes of the nodes before ours grant us the lock beside the waiter that
/// was behind us. Our own watch is polled first, and again after any other fired: on one
/// connection the server sends a session's watch events in the order of its
/// transactions, so our node, deleted while a node before it still stood, is reported
/// first. Not across a reconnect: the client sets its watches again from a map, in no
/// set order, and the events of what changed meanwhile come in that order. So that order
/// is not the guard: a node removed as a dead waiter's (its marker gone) is caught by
/// `grant::settle`'s claim at our turn — a write guarded by the version at which the node
/// named the marker, which fails on a node that is gone — sent whenever the waiting
/// session's last proof is old enough for the marker to have gone. On a grant the watch goes with the lease (`Queued::own_watch`), which
/// keeps it until its release's delete fires it.
pub(crate) async fn wait_turn(
    q: &mut Queued,
    wakeups: &AtomicU64,
    validity: Duration,
    namer: Option<&WaitingSlot>,
) -> Result<Instant> {
    let mut own = q.own_watch.get_mut().unwrap_or_else(|p| p.into_inner()).take();
    let mut markers = Markers::default();
    let confirmed = wait_for_turn(q, wakeups, validity, &mut own, namer, &mut markers).await?;
    *q.own_watch.get_mut().unwrap_or_else(|p| p.into_inner()) = own;
    // The watches on markers of the nodes that were before ours: a marker goes when its
    // waiting session ends (at most a few of its timeouts after its instance stopped
    // waiting). Dropped unfired, each would make the client send a request to remove it
    // — on the hand-off's path: kept until they fire, or for one session timeout.
    if !markers.watches.is_empty() {
        let bound = q.session.timeout();
        tokio::spawn(async move {
            let all = futures_join(markers.watches.into_iter().map(|(_, w)| w).collect());
            let _ = tokio::time::timeout(bound, all).await;
        });
    }
    Ok(confirmed)
}

/// Waits for every watch to fire.
/// The answer to a `get_and_watch_data` of `name`, a node before ours: its watch, with
/// the marker its data names noted in `markers`; `None` when the node is gone. Each
/// answer waits at most the request timeout.
async fn read_before(
    q: &Queued,
    markers: &mut Markers,
    name: &str,
    answer: impl Future<
        Output = std::result::Result<
            (Vec<u8>, zookeeper_client::Stat, zookeeper_client::OneshotWatcher),
            zookeeper_client::Error,
        >,
    >,
) -> Result<Option<OwnWatch>> {
    const DOING: &str = "watching the nodes before ours";
    match tokio::time::timeout(q.cfg.timeout, answer).await {
        Ok(Ok((data, stat, watcher))) => {
            markers.note(q, name, &data, stat.version);
            Ok(Some(Box::pin(watcher.changed())))
        }
        Ok(Err(zookeeper_client::Error::NoNode)) => Ok(None),
        Ok(Err(e)) => Err(failed(DOING, &q.cfg.display, e)),
        Err(_) => Err(timed_out(DOING, &q.cfg.display, q.cfg.timeout)),
    }
}

async fn futures_join(mut watches: Vec<OwnWatch>) {
    for w in watches.iter_mut() {
        w.as_mut().await;
    }
}

/// What fired while waiting: our own node's watch (with the watch before ours that fired
/// in the same poll, if one did: it is spent), the `usize`-th watch before ours, or the
/// `usize`-th watch on a waiting marker named by a node before ours.
enum Fired {
    Own(WatchedEvent, Option<(usize, WatchedEvent)>),
    Before(usize, WatchedEvent),
    Marker(usize, WatchedEvent),
}

/// The nodes before ours that name a waiting marker, and the watches on those markers.
#[derive(Default)]
struct Markers {
    /// Node → (the version at which its data named the marker, the marker's path).
    named: HashMap<String, (i32, String)>,
    watches: Vec<Watch>,
}

impl Markers {
    /// Notes what a node before ours names (its data read at `version`).
    fn note(&mut self, q: &Queued, node: &str, data: &[u8], version: i32) {
        match named_marker(data, &q.cfg.chroot) {
            Some(marker) => {
                self.named.insert(node.to_owned(), (version, marker));
            }
            None => {
                self.named.remove(node);
            }
        }
    }

    /// Watches the marker of the nearest node before ours that still stands and names one
    /// (`known`: the nodes we track, nearest first), if it is not watched yet; a marker
    /// that is gone already has its nodes removed at once. `true` when that removed a node
    /// or found it claimed (the caller looks again: the nearest named node changed).
    ///
    /// Only the nearest: a node further ahead that names a marker has a waiter of ours
    /// behind it, nearer to it than we are (the nearest named node's owner, which watches
    /// *its* nearest named node), and that waiter removes it when its marker goes. If that
    /// waiter's node is removed or goes first, the next call here watches the next marker
    /// — a node deleted before ours always leads here again. Each wait watches one marker,
    /// not up to three (two `exists` less per contended grant).
    async fn watch(
        &mut self,
        q: &Queued,
        client: &zookeeper_client::Client,
        deleted: &mut HashSet<String>,
        known: &[String],
    ) -> Result<bool> {
        let nearest = known
            .iter()
            .filter(|n| !deleted.contains(*n))
            .find_map(|n| self.named.get(n).map(|(_, m)| m.clone()));
        let Some(marker) = nearest else {
            return Ok(false);
        };
        if self.watches.iter().any(|(w, _)| *w == marker) {
            return Ok(false);
        }
        match tokio::time::timeout(q.cfg.timeout, client.check_and_watch_stat(&marker)).await {
            Ok(Ok((Some(_), watcher))) => {
                self.watches.push((marker, Box::pin(watcher.changed())));
                Ok(false)
            }
            Ok(Ok((None, _))) => {
                self.remove_dead(q, client, &marker, deleted).await?;
                Ok(true)
            }
            Ok(Err(e)) => Err(failed("watching a waiting marker", &q.cfg.display, e)),
            Err(_) => Err(timed_out("watching a waiting marker", &q.cfg.display, q.cfg.timeout)),
        }
    }

    /// `marker` is gone: its waiting session ended (the waiter died, or paused past that
    /// session's timeout). Removes each node before ours that still names it — guarded by
    /// the version at which it did: a node whose owner claimed it since (its grant, see
    /// `grant.rs`) is never removed.
    async fn remove_dead(
        &mut self,
        q: &Queued,
        client: &zookeeper_client::Client,
        marker: &str,
        deleted: &mut HashSet<String>,
    ) -> Result<()> {
        let nodes: Vec<(String, i32)> = self
            .named
            .iter()
            .filter(|(n, (_, m))| m == marker && !deleted.contains(*n))
            .map(|(n, (v, _))| (n.clone(), *v))
            .collect();
        for (node, version) in nodes {
            self.named.remove(&node);
            let path = format!("{}/{node}", q.dir);
            match tokio::time::timeout(q.cfg.timeout, client.delete(&path, Some(version))).await {
                Ok(Ok(())) => {
                    tracing::info!(%path, "removed the lock node of a waiter whose waiting session ended");
                    deleted.insert(node);
                }
                Ok(Err(zookeeper_client::Error::NoNode)) => {
                    deleted.insert(node);
                }
                // Claimed (or written) since: its owner holds it; its data watch tells.
                Ok(Err(zookeeper_client::Error::BadVersion)) => {}
                Ok(Err(e)) => return Err(failed("removing a dead waiter's node", &q.cfg.display, e)),
                Err(_) => {
                    return Err(timed_out(
                        "removing a dead waiter's node",
                        &q.cfg.display,
                        q.cfg.timeout,
                    ))
                }
            }
        }
        Ok(())
    }
}

/// Names the waiting marker in our node's data (versioned: the node was created with
/// empty data), once per wait, when the node queues behind others and was not named at
/// its create. A failure leaves it unnamed: a dead waiter then costs the session timeout.
async fn name_ours(q: &Queued, namer: &WaitingSlot) -> Result<()> {
    let Some(used) = namer.enter(&q.cfg, &q.session).await else {
        return Ok(());
    };
    let client = q.session.client()?;
    match tokio::time::timeout(q.cfg.timeout, client.set_data(&q.path(), used.reference(), Some(0))).await {
        Ok(Ok(stat)) if stat.czxid == q.czxid => {
            *q.naming.lock().unwrap_or_else(|p| p.into_inner()) = Some(Naming {
                version: stat.version,
                used,
            });
            Ok(())
        }
        Ok(Ok(_)) | Ok(Err(zookeeper_client::Error::NoNode)) => Err(node_gone()),
        // The write may have landed (at version 1): our node is then removable once the
        // marker goes, so it is treated as named — a claim of a write that did not land
        // finds the data empty, which is claimed too (`grant::claim`).
        Ok(Err(e)) if outcome_unknown(&e) => {
            *q.naming.lock().unwrap_or_else(|p| p.into_inner()) = Some(Naming { version: 1, used });
            Ok(())
        }
        Err(_) => {
            *q.naming.lock().unwrap_or_else(|p| p.into_inner()) = Some(Naming { version: 1, used });
            Ok(())
        }
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "naming the waiting marker failed; a dead waiter costs the session timeout");
            Ok(())
        }
    }
}

async fn wait_for_turn(
    q: &Queued,
    wakeups: &AtomicU64,
    validity: Duration,
    own: &mut Option<OwnWatch>,
    namer: Option<&WaitingSlot>,
    markers: &mut Markers,
) -> Result<Instant> {
    let path_of = |name: &str| format!("{}/{name}", q.dir);
    let mut deleted: HashSet<String> = HashSet::new();
    let mut watches: Vec<Watch> = Vec::new();
    let mut naming_tried = q.naming.lock().unwrap_or_else(|p| p.into_inner()).is_some();
    // Round 0's listing is a proof (our create's, or a `sync`'s): `confirmed` is the send
    // instant of the last proof, and moves only on proofs (round 0's, the periodic check
    // of our own node). Later listings go without a `sync` (`relisted`).
    let pos = first_position(q).await?;
    // Whether this key is contended here: its next create names the marker if so.
    if let Some(namer) = namer {
        namer.note(&q.dir, !pos.older.is_empty());
    }
    let mut confirmed = pos.sent_at;
    let mut older = pos.older;
    for round in 0..100_000 {
        if round > 0 {
            older = relisted(q).await?;
        }
        let more = older.len() > TRACKED;
        let known: Vec<String> = older
            .iter()
            .rev()
            .take(TRACKED)
            .filter(|n| !deleted.contains(*n))
            .cloned()
            .collect();
        if known.is_empty() {
            if older.is_empty() {
                // Round 0: the listing is the proof. Later: as on the push (`first`).
                return if round == 0 {
                    Ok(confirmed)
                } else {
                    first(q, confirmed, validity).await
                };
            }
            continue;
        }
        // We wait: name our waiting marker first (before our own watch is set, which the
        // write would fire).
        if let Some(namer) = namer.filter(|_| !naming_tried) {
            naming_tried = true;
            name_ours(q, namer).await?;
        }
        let client = q.session.client()?;
        // Our own node first (once per wait, again only after an event other than its
        // deletion), then the nodes before it.
        if own.is_none() {
            match tokio::time::timeout(q.cfg.timeout, client.check_and_watch_stat(&q.path())).await {
                Ok(Ok((Some(stat), watcher))) if stat.czxid == q.czxid => *own = Some(Box::pin(watcher.changed())),
                Ok(Ok(_)) => return Err(node_gone()),
                Ok(Err(e)) => return Err(failed("watching our lock node", &q.cfg.display, e)),
                Err(_) => return Err(timed_out("watching our lock node", &q.cfg.display, q.cfg.timeout)),
            }
        }
        // Sent at once, answered in order on the one connection. A node still watched from
        // an earlier round keeps its watch (no re-watch, no removal). Each is read with its
        // data (the same one request): a node of ours that waits names its marker there.
        let fresh: Vec<&String> = known.iter().filter(|n| !watches.iter().any(|(w, _)| w == *n)).collect();
        let asked: Vec<_> = fresh.iter().map(|n| client.get_and_watch_data(&path_of(n))).collect();
        for (name, answer) in fresh.into_iter().zip(asked) {
            match read_before(q, markers, name, answer).await? {
                Some(watch) => watches.push((name.clone(), watch)),
                None => {
                    deleted.insert(name.clone());
                }
            }
        }
        // `confirmed` stays the listing's proof: these reads went without a `sync`, and a
        // follower's answer alone proves nothing of the leader's view of our session (a
        // review: a grant on the push counted from them, up to their round trips past the
        // last proof).
        for _ in 0..1_000_000 {
            let left = known.iter().filter(|n| !deleted.contains(*n)).count();
            if left == 0 && !more {
                return first(q, confirmed, validity).await;
            }
            if left < known.len() && more {
                break; // older nodes may be left: see which
            }
            // The marker of the nearest node that names one; a dead one's node removed.
            if markers.watch(q, &client, &mut deleted, &known).await? {
                continue;
            }
            let wake = confirmed + (validity / 5).max(MIN_CHECK_PERIOD);
            let fired = tokio::time::timeout_at(
                wake,
                std::future::poll_fn(|cx| {
                    let mut poll_own = |cx: &mut std::task::Context<'_>| match own.as_mut() {
                        Some(w) => w.as_mut().poll(cx),
                        None => Poll::Pending,
                    };
                    if let Poll::Ready(e) = poll_own(cx) {
                        return Poll::Ready(Fired::Own(e, None));
                    }
                    for (i, (_, w)) in watches.iter_mut().enumerate() {
                        if let Poll::Ready(e) = w.as_mut().poll(cx) {
                            // Our node's deletion, if it came first, was handed over
                            // before this event: look once more.
                            if let Poll::Ready(mine) = poll_own(cx) {
                                return Poll::Ready(Fired::Own(mine, Some((i, e))));
                            }
                            return Poll::Ready(Fired::Before(i, e));
                        }
                    }
                    for (i, (_, w)) in markers.watches.iter_mut().enumerate() {
                        if let Poll::Ready(e) = w.as_mut().poll(cx) {
                            return Poll::Ready(Fired::Marker(i, e));
                        }
                    }
                    Poll::Pending
                }),
            )
            .await;
            match fired {
                Ok(Fired::Own(event, before)) => {
                    *own = None;
                    if let Some((i, other)) = before {
                        // Spent: never polled again; a deletion is kept for the listing.
                        let (name, _) = watches.swap_remove(i);
                        wakeups.fetch_add(1, Ordering::Relaxed);
                        if other.event_type == EventType::NodeDeleted {
                            deleted.insert(name);
                        }
                    }
                    match event.event_type {
                        EventType::NodeDeleted => return Err(node_gone()),
                        EventType::Session if !q.session.is_usable() => {
                            return Err(LockError::Unavailable {
                                message: "the zookeeper session ended while waiting".into(),
                                source: None,
                            })
                        }
                        _ => break, // something else: list again, and watch our node again
                    }
                }
                Ok(Fired::Before(i, event)) => {
                    let (name, _) = watches.swap_remove(i);
                    match event.event_type {
                        EventType::NodeDeleted => {
                            wakeups.fetch_add(1, Ordering::Relaxed);
                            deleted.insert(name);
                        }
                        // Its owner named its marker, or claimed it at its grant: read it
                        // again (no listing; not a wake-up of the queue).
                        EventType::NodeDataChanged => {
                            let answer = client.get_and_watch_data(&path_of(&name));
                            match read_before(q, markers, &name, answer).await? {
                                Some(watch) => watches.push((name, watch)),
                                None => {
                                    wakeups.fetch_add(1, Ordering::Relaxed);
                                    deleted.insert(name);
                                }
                            }
                        }
                        EventType::Session if !q.session.is_usable() => {
                            return Err(LockError::Unavailable {
                                message: "the zookeeper session ended while waiting".into(),
                                source: None,
                            })
                        }
                        _ => {
                            wakeups.fetch_add(1, Ordering::Relaxed);
                            break; // something else: list again
                        }
                    }
                }
                Ok(Fired::Marker(i, event)) => {
                    let (marker, _) = markers.watches.swap_remove(i);
                    match event.event_type {
                        EventType::NodeDeleted => markers.remove_dead(q, &client, &marker, &mut deleted).await?,
                        EventType::Session if !q.session.is_usable() => {
                            return Err(LockError::Unavailable {
                                message: "the zookeeper session ended while waiting".into(),
                                source: None,
                            })
                        }
                        // Watched again at the top of the loop if it is still the nearest.
                        _ => {}
                    }
                }
                Err(_) => {
                    // Our node is still there, and the leader held our session now (the
                    // sync: this instant may become the grant's, see `first`).
                    let sent = Instant::now();
                    let checked = after_sync(&client, |c| c.check_stat(&q.path()));
                    match tokio::time::timeout(q.cfg.timeout, checked).await {
                        Ok(Ok(Some(stat))) if stat.czxid == q.czxid => confirmed = sent,
                        Ok(Ok(_)) => return Err(node_gone()),
                        Ok(Err(e)) => return Err(failed("checking our lock node", &q.cfg.display, e)),
                        Err(_) => return Err(timed_out("checking our lock node", &q.cfg.display, q.cfg.timeout)),
                    }
                }
            }
        }
    }
    Err(LockError::Unavailable {
        message: "the queue did not settle".into(),
        source: None,
    })
}

/// Our turn came on a push: the validity counts from `confirmed` if that is recent
/// (within a quarter of `validity`), else from one listing sent now.
async fn first(q: &Queued, confirmed: Instant, validity: Duration) -> Result<Instant> {
    if confirmed.elapsed() <= validity / 4 {
        return Ok(confirmed);
    }
    let pos = position(q).await?;
    match pos.predecessor {
        None => Ok(pos.sent_at),
        Some(_) => Err(LockError::Unavailable {
            message: "a node older than ours appeared in the queue (not made by this library?)".into(),
            source: None,
        }),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail by panicking

    use super::*;

    /// The first create of an acquire was answered, and its attempt then failed (its node is
    /// dropped, deleted in the background): the attempt after it creates again. That
    /// create must carry a grant id of its own — with the same one, a follow-up of its lost
    /// answer (`find_ours` over the listing) could take the first node, still being deleted,
    /// for it, and the new node stayed on the live session, blocking the key until the
    /// session ended (a review, by reading the code).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_create_after_an_answered_one_has_a_grant_id_of_its_own() {
        let zk = fencelock_testkit::zk_server::ZkEnsemble::standalone();
        let url = zk.url("/queue-test", "");
        drop(crate::ZkLock::connect(&url).await.unwrap()); // makes the chroot
        let cfg = Arc::new(ZkConfig::from_url(&url).unwrap());
        let session = Session::connect(&cfg).await.unwrap();
        let pending = Pending::new();
        let dir = || cfg.layout.dir("k", &cfg.chroot);
        let first = enqueue(&session, &cfg, "k", dir(), &pending, None).await.unwrap();
        let second = enqueue(&session, &cfg, "k", dir(), &pending, None).await.unwrap();
        let stem = |q: &Queued| q.name[..q.name.len() - 10].to_owned();
        assert_ne!(
            stem(&first),
            stem(&second),
            "two nodes of one acquire under one grant id"
        );
        let children = session.client().unwrap().list_children(&first.dir).await.unwrap();
        assert!(find_ours(&children, &stem(&second)).is_some_and(|n| n == second.name));
    }
}
