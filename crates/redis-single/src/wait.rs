//! Push-based waiting: one pub/sub connection per backend instance, and on it **one
//! channel per instance** (`PREFIXi:ID`), subscribed once, at the first wait. A queued
//! waiter's entry names that channel and its grant id; a release publishes
//! `g GRANT TOKEN NOW_MS` (the lock is granted to you: [`TURN`] with a [`Handed`]), `g GRANT`
//! (reserved for you, claim it: Redlock) or `n GRANT` (you are next: [`NEXT`]) on it, and
//! the reading task routes the message to that waiter's `Notify` by grant id. A wait therefore
//! costs no `SUBSCRIBE`/`UNSUBSCRIBE` of its own (with a channel per waiter it cost two
//! commands per wait: issue 14). Named channels (an election's `changed`) are still
//! subscribed one by one.
//!
//! The channel is subscribed *before* a waiter queues, so a hand-off message cannot come
//! too early. Messages can still be lost (the pub/sub connection drops: every waiter here
//! is then woken to take a turn); the waiter's fallback re-check (and, for a reservation,
//! the claim window) bound what a lost one costs (see `docs/backends/redis.md`).
//!
//! The pub/sub connection and the task reading it live only while they are needed: the
//! task stops (dropping the stream, which closes the connection) when its [`Hub`] is
//! dropped — with the last clone of the backend instance, or [`IDLE_CLOSE`] after the last
//! waiter here gave up its interest. Nothing of it outlives the instance.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use fencelock_core::waiting::WakeFuture;
use fencelock_core::Result;
use futures_util::StreamExt;
use redis::aio::PubSubSink;
use tokio::sync::Notify;

use crate::error::failed;
use crate::handoff::{parse_push, Handed};

/// How long the pub/sub connection stays open with nobody waiting: long enough that a
/// key changing hands again soon (a waiter per hand-off) reuses it, short enough that an
/// instance that waited once does not keep a server connection for its whole life.
pub(crate) const IDLE_CLOSE: Duration = Duration::from_secs(1);

/// A waiter's message `g`: the lock is yours (granted directly: the message carries the
/// token), or reserved for you (claim it).
pub(crate) const TURN: u8 = 1;
/// A waiter's message `n`: you are next; the head's reservation ends within the claim window.
pub(crate) const NEXT: u8 = 2;

struct Hub {
    sink: PubSubSink,
    alive: Arc<AtomicBool>,
    generation: u64,
    /// Whether the instance channel is subscribed on this connection.
    instance_subscribed: bool,
    /// Dropped with the hub: tells the reading task to stop and close the connection.
    _stop: tokio::sync::oneshot::Sender<()>,
}

struct Channel {
    count: usize,
    notify: Arc<Notify>,
    /// Which kinds of message came since the waiter last looked ([`TURN`], [`NEXT`]).
    seen: Arc<AtomicU8>,
    /// The last direct grant pushed to the waiter and not yet taken.
    handed: Arc<Mutex<Option<Handed>>>,
    /// The hub generation under which it was last subscribed (named channels only).
    subscribed_in: u64,
}

impl Channel {
    fn new() -> Self {
        Channel {
            count: 0,
            notify: Arc::new(Notify::new()),
            seen: Arc::default(),
            handed: Arc::default(),
            subscribed_in: 0,
        }
    }
}

type Table = Arc<Mutex<HashMap<String, Channel>>>;

/// What a [`Subscription`] listens to.
#[derive(Clone)]
enum Target {
    /// A named channel, subscribed for itself.
    Named(String),
    /// A waiter's grant id, reached through the instance channel.
    Waiter(String),
}

/// The pub/sub side of one backend instance.
pub(crate) struct Waiters {
    client: redis::Client,
    server: String,
    timeout: Duration,
    /// This instance's channel: every hand-off to one of its waiters is published here.
    instance: String,
    hub: tokio::sync::Mutex<Option<Hub>>,
    /// Named channels → interest.
    channels: Table,
    /// Waiting grant ids → interest (messages on the instance channel).
    slots: Table,
    generations: AtomicU64,
    /// Counts subscriptions; an idle close goes ahead only if none came since it was planned.
    uses: AtomicU64,
}

fn lock(m: &Mutex<HashMap<String, Channel>>) -> MutexGuard<'_, HashMap<String, Channel>> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Marks `kind` seen on `entry` of `table` (with the direct grant it was told, if any:
/// stored before the kind, so a waiter that sees the kind sees the grant) and wakes its
/// waiter.
fn route(table: &Mutex<HashMap<String, Channel>>, entry: &str, kind: u8, handed: Option<Handed>) {
    let notify = lock(table).get(entry).map(|c| {
        if handed.is_some() {
            *c.handed.lock().unwrap_or_else(|p| p.into_inner()) = handed;
        }
        c.seen.fetch_or(kind, Ordering::SeqCst);
        Arc::clone(&c.notify)
    });
    if let Some(n) = notify {
        n.notify_waiters();
    }
}

fn kind_of(payload: &[u8]) -> u8 {
    match payload.first() {
        Some(b'g') => TURN,
        Some(b'n') => NEXT,
        _ => 0,
    }
}

impl Waiters {
    /// `instance`: this instance's own channel (unique per instance).
    pub(crate) fn new(client: redis::Client, server: String, timeout: Duration, instance: String) -> Self {
        Waiters {
            client,
            server,
            timeout,
            instance,
            hub: tokio::sync::Mutex::new(None),
            channels: Arc::default(),
            slots: Arc::default(),
            generations: AtomicU64::new(0),
            uses: AtomicU64::new(0),
        }
    }

    /// This instance's channel, which queue entries name.
    pub(crate) fn instance(&self) -> &str {
        &self.instance
    }

    /// Registers interest in the named `channel` and makes sure it is subscribed on a live
    /// pub/sub connection; returns a guard whose drop gives the interest back.
    pub(crate) async fn subscribe(self: &Arc<Self>, channel: &str) -> Result<Subscription> {
        self.register(Target::Named(channel.to_owned())).await
    }

    /// Registers a waiter by its grant id: hand-off messages for it arrive on the instance
    /// channel, subscribed here if it is not yet (once per pub/sub connection).
    pub(crate) async fn wait_as(self: &Arc<Self>, grant: &str) -> Result<Subscription> {
        self.register(Target::Waiter(grant.to_owned())).await
    }

    fn table(&self, target: &Target) -> (&Table, String) {
        match target {
            Target::Named(c) => (&self.channels, c.clone()),
            Target::Waiter(g) => (&self.slots, g.clone()),
        }
    }

    async fn register(self: &Arc<Self>, target: Target) -> Result<Subscription> {
        self.uses.fetch_add(1, Ordering::SeqCst);
        let (table, name) = self.table(&target);
        let (notify, seen, handed) = {
            let mut map = lock(table);
            let entry = map.entry(name).or_insert_with(Channel::new);
            entry.count += 1;
            (
                Arc::clone(&entry.notify),
                Arc::clone(&entry.seen),
                Arc::clone(&entry.handed),
            )
        };
        let sub = Subscription {
            waiters: Arc::clone(self),
            target,
            notify,
            seen,
            handed,
        };
        sub.ensure().await?;
        Ok(sub)
    }

    async fn ensure_subscribed(&self, target: &Target) -> Result<()> {
        let mut hub = self.hub.lock().await;
        if !hub.as_ref().is_some_and(|h| h.alive.load(Ordering::SeqCst)) {
            *hub = Some(self.connect().await?);
        }
        let Some(h) = hub.as_mut() else { return Ok(()) };
        match target {
            Target::Waiter(_) => {
                if !h.instance_subscribed {
                    self.send_subscribe(h, &self.instance).await?;
                    h.instance_subscribed = true;
                }
            }
            Target::Named(channel) => {
                let needed = lock(&self.channels)
                    .get(channel)
                    .is_some_and(|c| c.subscribed_in != h.generation);
                if needed {
                    self.send_subscribe(h, channel).await?;
                    if let Some(c) = lock(&self.channels).get_mut(channel) {
                        c.subscribed_in = h.generation;
                    }
                }
            }
        }
        Ok(())
    }

    async fn send_subscribe(&self, h: &mut Hub, channel: &str) -> Result<()> {
        match tokio::time::timeout(self.timeout, h.sink.subscribe(channel)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(failed("SUBSCRIBE", &self.server, e)),
            Err(_) => {
                h.alive.store(false, Ordering::SeqCst);
                Err(fencelock_core::LockError::Unavailable {
                    message: format!(
                        "redis unreachable: SUBSCRIBE got no answer within {:?} on {}",
                        self.timeout, self.server
                    ),
                    source: None,
                })
            }
        }
    }

    async fn connect(&self) -> Result<Hub> {
        let pubsub = match tokio::time::timeout(self.timeout, self.client.get_async_pubsub()).await {
            Ok(Ok(p)) => p,
            Ok(Err(e)) => return Err(failed("connecting for pub/sub", &self.server, e)),
            Err(_) => {
                return Err(fencelock_core::LockError::Unavailable {
                    message: format!(
                        "redis unreachable: no pub/sub connection within {:?} to {}",
                        self.timeout, self.server
                    ),
                    source: None,
                })
            }
        };
        let (sink, mut stream) = pubsub.split();
        let alive = Arc::new(AtomicBool::new(true));
        let generation = self.generations.fetch_add(1, Ordering::SeqCst) + 1;
        let channels = Arc::clone(&self.channels);
        let slots = Arc::clone(&self.slots);
        let instance = self.instance.clone();
        let flag = Arc::clone(&alive);
        let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(async move {
            loop {
                let msg = tokio::select! {
                    // The hub was dropped: end, dropping the stream closes the connection.
                    _ = &mut stopped => break,
                    msg = stream.next() => msg,
                };
                let Some(msg) = msg else { break };
                let payload = msg.get_payload_bytes();
                let kind = kind_of(payload);
                if msg.get_channel_name() == instance {
                    // `g GRANT [TOKEN NOW_MS]` / `n GRANT`: route to that waiter.
                    let parsed = std::str::from_utf8(payload).ok().and_then(parse_push);
                    if let Some((grant, handed)) = parsed {
                        route(&slots, grant, kind, handed);
                    }
                } else {
                    route(&channels, msg.get_channel_name(), kind, None);
                }
            }
            // The connection is gone: wake everyone so they retry (and resubscribe).
            flag.store(false, Ordering::SeqCst);
            for table in [&channels, &slots] {
                for c in lock(table).values() {
                    c.notify.notify_waiters();
                }
            }
        });
        Ok(Hub {
            sink,
            alive,
            generation,
            instance_subscribed: false,
            _stop: stop,
        })
    }

    /// Closes the pub/sub connection now (the next wait opens a new one).
    pub(crate) async fn close(&self) {
        *self.hub.lock().await = None;
    }

    fn release_interest(self: &Arc<Self>, target: &Target) {
        let (table, name) = self.table(target);
        let last = {
            let mut map = lock(table);
            match map.get_mut(&name) {
                Some(c) if c.count <= 1 => {
                    map.remove(&name);
                    true
                }
                Some(c) => {
                    c.count -= 1;
                    false
                }
                None => false,
            }
        };
        if !last {
            return;
        }
        let idle = lock(&self.channels).is_empty() && lock(&self.slots).is_empty();
        let named = matches!(target, Target::Named(_));
        if !named && !idle {
            // The instance channel stays: others wait on it.
            return;
        }
        // Weak: a clean-up never keeps the instance (and its connection) alive.
        let me = Arc::downgrade(self);
        let planned_at = self.uses.load(Ordering::SeqCst);
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        rt.spawn(async move {
            if named {
                unsubscribe(&me, &name).await;
            }
            tokio::time::sleep(IDLE_CLOSE).await;
            close_if_idle(&me, planned_at).await;
        });
    }
}

/// Unsubscribes the named `channel` unless someone started waiting on it again meanwhile.
async fn unsubscribe(me: &Weak<Waiters>, channel: &str) {
    let Some(me) = me.upgrade() else { return };
    let mut hub = me.hub.lock().await;
    if lock(&me.channels).contains_key(channel) {
        return;
    }
    if let Some(h) = hub.as_mut() {
        let _ = tokio::time::timeout(me.timeout, h.sink.unsubscribe(channel)).await;
    }
}

/// Drops the pub/sub connection if nobody waits and nobody subscribed since `planned_at`.
async fn close_if_idle(me: &Weak<Waiters>, planned_at: u64) {
    let Some(me) = me.upgrade() else { return };
    let mut hub = me.hub.lock().await;
    let idle = lock(&me.channels).is_empty() && lock(&me.slots).is_empty();
    if me.uses.load(Ordering::SeqCst) == planned_at && idle {
        *hub = None;
    }
}

/// Interest in one channel or one waiter's messages; keeps it subscribed while it lives.
pub(crate) struct Subscription {
    waiters: Arc<Waiters>,
    target: Target,
    notify: Arc<Notify>,
    seen: Arc<AtomicU8>,
    handed: Arc<Mutex<Option<Handed>>>,
}

impl Subscription {
    /// The kinds of message ([`TURN`], [`NEXT`], or'ed) that came since the last call.
    pub(crate) fn take_seen(&self) -> u8 {
        self.seen.swap(0, Ordering::SeqCst)
    }

    /// The direct grant pushed since the last call, if one was.
    pub(crate) fn take_handed(&self) -> Option<Handed> {
        self.handed.lock().unwrap_or_else(|p| p.into_inner()).take()
    }

    /// Resubscribes if the pub/sub connection was replaced since.
    pub(crate) async fn ensure(&self) -> Result<()> {
        self.waiters.ensure_subscribed(&self.target).await
    }

    /// A future that completes on the next message for it (or when the pub/sub
    /// connection drops). Registered at once, so a message arriving before it is awaited
    /// still counts.
    pub(crate) fn notified(&self) -> WakeFuture {
        let mut n = Box::pin(Arc::clone(&self.notify).notified_owned());
        n.as_mut().enable();
        n
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.waiters.release_interest(&self.target);
    }
}
