//! Push-based waiting: one pub/sub connection per backend instance, one channel per
//! waiter (`{k}:w:GRANT`), and a `Notify` per channel that wakes it, with the kinds of
//! message seen since it last looked ([`TURN`]: the lock is reserved for you; [`NEXT`]:
//! you are next in line).
//!
//! A waiter subscribes *before* it queues, so a hand-off message cannot come too early.
//! Messages can still be lost (the pub/sub connection drops: every waiter here is then
//! woken to take a turn); the queue's claim window and the waiter's fallback re-check
//! bound what a lost one costs (see `docs/backends/redis.md`).
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

/// How long the pub/sub connection stays open with nobody waiting: long enough that a
/// key changing hands again soon (a waiter per hand-off) reuses it, short enough that an
/// instance that waited once does not keep a server connection for its whole life.
pub(crate) const IDLE_CLOSE: Duration = Duration::from_secs(1);

/// A waiter's message `g`: the lock is reserved for you, claim it.
pub(crate) const TURN: u8 = 1;
/// A waiter's message `n`: you are next; the head's reservation ends within the claim window.
pub(crate) const NEXT: u8 = 2;

struct Hub {
    sink: PubSubSink,
    alive: Arc<AtomicBool>,
    generation: u64,
    /// Dropped with the hub: tells the reading task to stop and close the connection.
    _stop: tokio::sync::oneshot::Sender<()>,
}

struct Channel {
    count: usize,
    notify: Arc<Notify>,
    /// Which kinds of message came since the waiter last looked ([`TURN`], [`NEXT`]).
    seen: Arc<AtomicU8>,
    /// The hub generation under which it was last subscribed.
    subscribed_in: u64,
}

/// The pub/sub side of one backend instance.
pub(crate) struct Waiters {
    client: redis::Client,
    server: String,
    timeout: Duration,
    hub: tokio::sync::Mutex<Option<Hub>>,
    channels: Arc<Mutex<HashMap<String, Channel>>>,
    generations: AtomicU64,
    /// Counts subscriptions; an idle close goes ahead only if none came since it was planned.
    uses: AtomicU64,
}

fn lock(m: &Mutex<HashMap<String, Channel>>) -> MutexGuard<'_, HashMap<String, Channel>> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Waiters {
    pub(crate) fn new(client: redis::Client, server: String, timeout: Duration) -> Self {
        Waiters {
            client,
            server,
            timeout,
            hub: tokio::sync::Mutex::new(None),
            channels: Arc::default(),
            generations: AtomicU64::new(0),
            uses: AtomicU64::new(0),
        }
    }

    /// Registers interest in `channel` and makes sure it is subscribed on a live pub/sub
    /// connection; returns a guard whose drop gives the interest back.
    pub(crate) async fn subscribe(self: &Arc<Self>, channel: &str) -> Result<Subscription> {
        self.uses.fetch_add(1, Ordering::SeqCst);
        let notify = {
            let mut map = lock(&self.channels);
            let entry = map.entry(channel.to_owned()).or_insert_with(|| Channel {
                count: 0,
                notify: Arc::new(Notify::new()),
                seen: Arc::default(),
                subscribed_in: 0,
            });
            entry.count += 1;
            (Arc::clone(&entry.notify), Arc::clone(&entry.seen))
        };
        let (notify, seen) = notify;
        let sub = Subscription {
            waiters: Arc::clone(self),
            channel: channel.to_owned(),
            notify,
            seen,
        };
        sub.ensure().await?;
        Ok(sub)
    }

    async fn ensure_subscribed(&self, channel: &str) -> Result<()> {
        let mut hub = self.hub.lock().await;
        if !hub.as_ref().is_some_and(|h| h.alive.load(Ordering::SeqCst)) {
            *hub = Some(self.connect().await?);
        }
        let Some(h) = hub.as_mut() else { return Ok(()) };
        let needed = lock(&self.channels)
            .get(channel)
            .is_some_and(|c| c.subscribed_in != h.generation);
        if needed {
            match tokio::time::timeout(self.timeout, h.sink.subscribe(channel)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(failed("SUBSCRIBE", &self.server, e)),
                Err(_) => {
                    h.alive.store(false, Ordering::SeqCst);
                    return Err(fencelock_core::LockError::Unavailable {
                        message: format!(
                            "redis unreachable: SUBSCRIBE got no answer within {:?} on {}",
                            self.timeout, self.server
                        ),
                        source: None,
                    });
                }
            }
            if let Some(c) = lock(&self.channels).get_mut(channel) {
                c.subscribed_in = h.generation;
            }
        }
        Ok(())
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
                let kind = match msg.get_payload_bytes().first() {
                    Some(b'g') => TURN,
                    Some(b'n') => NEXT,
                    _ => 0,
                };
                let notify = lock(&channels).get(msg.get_channel_name()).map(|c| {
                    c.seen.fetch_or(kind, Ordering::SeqCst);
                    Arc::clone(&c.notify)
                });
                if let Some(n) = notify {
                    n.notify_waiters();
                }
            }
            // The connection is gone: wake everyone so they retry (and resubscribe).
            flag.store(false, Ordering::SeqCst);
            for c in lock(&channels).values() {
                c.notify.notify_waiters();
            }
        });
        Ok(Hub {
            sink,
            alive,
            generation,
            _stop: stop,
        })
    }

    /// Closes the pub/sub connection now (the next wait opens a new one).
    pub(crate) async fn close(&self) {
        *self.hub.lock().await = None;
    }

    fn release_interest(self: &Arc<Self>, channel: &str) {
        let last = {
            let mut map = lock(&self.channels);
            match map.get_mut(channel) {
                Some(c) if c.count <= 1 => {
                    map.remove(channel);
                    true
                }
                Some(c) => {
                    c.count -= 1;
                    false
                }
                None => false,
            }
        };
        if last {
            // Weak: a clean-up never keeps the instance (and its connection) alive.
            let me = Arc::downgrade(self);
            let channel = channel.to_owned();
            let planned_at = self.uses.load(Ordering::SeqCst);
            let Ok(rt) = tokio::runtime::Handle::try_current() else {
                return;
            };
            rt.spawn(async move {
                unsubscribe(&me, &channel).await;
                tokio::time::sleep(IDLE_CLOSE).await;
                close_if_idle(&me, planned_at).await;
            });
        }
    }
}

/// Unsubscribes `channel` unless someone started waiting on it again meanwhile.
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
    if me.uses.load(Ordering::SeqCst) == planned_at && lock(&me.channels).is_empty() {
        *hub = None;
    }
}

/// Interest in one channel; keeps it subscribed while it lives.
pub(crate) struct Subscription {
    waiters: Arc<Waiters>,
    channel: String,
    notify: Arc<Notify>,
    seen: Arc<AtomicU8>,
}

impl Subscription {
    /// The kinds of message ([`TURN`], [`NEXT`], or'ed) that came since the last call.
    pub(crate) fn take_seen(&self) -> u8 {
        self.seen.swap(0, Ordering::SeqCst)
    }

    /// Resubscribes if the pub/sub connection was replaced since.
    pub(crate) async fn ensure(&self) -> Result<()> {
        self.waiters.ensure_subscribed(&self.channel).await
    }

    /// A future that completes on the next message on the channel (or when the pub/sub
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
        self.waiters.release_interest(&self.channel);
    }
}
