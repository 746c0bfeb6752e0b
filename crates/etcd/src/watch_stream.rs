//! One watch stream per client instance, shared by every wait of that instance.
//!
//! etcd multiplexes any number of watches on one gRPC watch stream, each with its own
//! watch id, and etcd's Go client puts all the watches of a client on one stream. Before
//! this module every waiting acquire opened a stream of its own: an instance waiting on a
//! thousand keys held a thousand HTTP/2 streams on its connection, and in the bench's
//! 1000 keys × 4 clients row a release went unanswered for its whole request timeout
//! (issue 14). Now a [`Subscription`] (one per wait) asks the instance's [`WatchStreams`]
//! for its watches; their events come back on the subscription's own channel.
//!
//! * **Ids chosen here.** Each watch is created with a watch id of ours (etcd ≥ 3.4 takes
//!   the `watch_id` of a create request), unique for the instance's life, so events are
//!   routed from the first response on, whatever order etcd confirms creates in.
//! * **Sending apart from receiving.** Requests go out from one task and responses are
//!   read by another: etcd stops reading a stream's requests while its responses are not
//!   read, so one task doing both could wait on a full request buffer forever.
//! * **A broken stream** (the member went, the connection reset, the instance closed)
//!   tells every subscription on it ([`Pushed::Broken`]); their watches are gone, and the
//!   next watch asked for opens a new stream. The wait then reads its place again, as it
//!   did when its own stream broke.
//! * **Watches given back.** A subscription dropped (its wait granted, given up, or
//!   cancelled) cancels its watches on the stream, so the server keeps no watcher for a
//!   wait that ended — or, when it was the stream's last subscription, closes the stream,
//!   which ends them with no request each (see [`Generation::leave`]).
//!
//! A subscription's channel is unbounded: a watch of ours pushes at most a few events (the
//! waits watch keys older than their own, with deletes only), and the receiving task must
//! never wait on a slow wait — the other waits' pushes come through it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use etcd_client::{WatchOptions, WatchRequestSender, WatchResponse, WatchResponseStream};
use fencelock_core::Result;
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};
use tokio::task::AbortHandle;

use crate::client::Cluster;

/// What a subscription's channel carries.
#[derive(Debug)]
enum Pushed {
    /// A response of one of its watches (created, an event, or cancelled by the server).
    Response(WatchResponse),
    /// The stream of this generation broke: every watch on it is gone.
    Broken(u64),
}

/// A request for the sending task.
enum Request {
    Create {
        id: i64,
        key: Vec<u8>,
        options: WatchOptions,
    },
    Cancel(i64),
}

/// Which subscription each watch id's responses go to.
#[derive(Default)]
struct Routes {
    /// The stream broke, or its last subscription left: no watch can be added to it.
    broken: bool,
    /// Subscriptions with watches on it.
    subscribers: usize,
    to: HashMap<i64, UnboundedSender<Pushed>>,
}

/// One opened stream and its two tasks (aborted when the last holder drops it).
struct Generation {
    number: u64,
    requests: UnboundedSender<Request>,
    routes: Arc<Mutex<Routes>>,
    tasks: [AbortHandle; 2],
}

impl Drop for Generation {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

fn lock(routes: &Mutex<Routes>) -> MutexGuard<'_, Routes> {
    // A panic while routing leaves the map as consistent as any other moment.
    routes.lock().unwrap_or_else(|p| p.into_inner())
}

impl Generation {
    /// Routes `id` to `to` and asks for the watch (`joins`: from a subscription new to this
    /// stream): `false` when this stream broke or was left by its last subscription.
    fn add(&self, id: i64, key: Vec<u8>, options: WatchOptions, to: &UnboundedSender<Pushed>, joins: bool) -> bool {
        {
            let mut routes = lock(&self.routes);
            if routes.broken {
                return false;
            }
            routes.subscribers += usize::from(joins);
            routes.to.insert(id, to.clone());
        }
        self.requests.send(Request::Create { id, key, options }).is_ok()
    }

    /// A subscription with watches `ids` leaves: they are cancelled on the stream, unless
    /// it was the last subscription — then the stream is marked done (`true`), and closing
    /// it ends them all with no request per watch. An instance that waits on one key at a
    /// time so opens and closes a stream per wait, as before the streams were shared, and
    /// sends no cancel (each is a message the server counts).
    fn leave(&self, ids: &[i64]) -> bool {
        let mut routes = lock(&self.routes);
        for id in ids {
            routes.to.remove(id);
        }
        routes.subscribers = routes.subscribers.saturating_sub(1);
        if routes.subscribers == 0 {
            routes.broken = true;
            return true;
        }
        drop(routes);
        for id in ids {
            let _ = self.requests.send(Request::Cancel(*id)); // a stream that ended has no watches
        }
        false
    }
}

/// Marks the stream broken and tells every subscription on it.
fn broke(routes: &Mutex<Routes>, number: u64) {
    let mut routes = lock(routes);
    routes.broken = true;
    for (_, to) in routes.to.drain() {
        let _ = to.send(Pushed::Broken(number));
    }
}

/// The instance's watch stream, opened on the first watch asked for and again after it
/// broke or its last subscription left. Shared by every clone of the instance's
/// [`Cluster`].
pub(crate) struct WatchStreams {
    /// The runtime the instance connected on, which runs the gRPC channel: the stream's
    /// tasks run there too, not on the runtime of the wait that happened to open it — that
    /// runtime may stop, or idle between `block_on` calls, while waits of other runtimes
    /// are on the stream.
    runtime: tokio::runtime::Handle,
    current: Mutex<Option<Arc<Generation>>>,
    /// Held while a stream opens, so that waits asking at once open one.
    opening: tokio::sync::Mutex<()>,
    next_id: AtomicI64,
    generations: AtomicU64,
}

impl WatchStreams {
    /// No stream yet; its tasks will run on the current runtime (call it from the
    /// instance's connect).
    pub fn new() -> Self {
        WatchStreams {
            runtime: tokio::runtime::Handle::current(),
            current: Mutex::default(),
            opening: tokio::sync::Mutex::default(),
            next_id: AtomicI64::default(),
            generations: AtomicU64::default(),
        }
    }

    fn current(&self) -> Option<Arc<Generation>> {
        self.current.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// A live stream that a new subscription joins with the watch `id` of `key`, routed to
    /// `to`: the current one, or one opened now with that watch as its first request
    /// (bounded by the request timeout: `Unavailable` and the like when it cannot be
    /// opened).
    async fn join(
        &self,
        c: &Cluster,
        id: i64,
        key: Vec<u8>,
        options: WatchOptions,
        to: &UnboundedSender<Pushed>,
    ) -> Result<Arc<Generation>> {
        if let Some(g) = self.current() {
            if g.add(id, key.clone(), options.clone(), to, true) {
                return Ok(g);
            }
        }
        let _opening = self.opening.lock().await;
        if let Some(g) = self.current() {
            if g.add(id, key.clone(), options.clone(), to, true) {
                return Ok(g); // another wait opened it meanwhile
            }
        }
        let number = self.generations.fetch_add(1, Ordering::Relaxed) + 1;
        let routes = Arc::new(Mutex::new(Routes::default()));
        {
            let mut r = lock(&routes);
            r.subscribers = 1;
            r.to.insert(id, to.clone());
        }
        let stream = c
            .call("watching the keys before ours", |mut cl| {
                let (key, options) = (key.clone(), options.clone().with_watch_id(id));
                async move { cl.watch(key, Some(options)).await }
            })
            .await?;
        tracing::debug!(stream = number, "watch stream opened");
        let (sender, responses) = stream.split();
        let (requests, pending) = unbounded_channel();
        let sending = self
            .runtime
            .spawn(send(sender, pending, Breaks(routes.clone(), number)));
        let receiving = self.runtime.spawn(receive(
            responses,
            Breaks(routes.clone(), number),
            c.cluster_id,
            c.display().to_owned(),
        ));
        let g = Arc::new(Generation {
            number,
            requests,
            routes,
            tasks: [sending.abort_handle(), receiving.abort_handle()],
        });
        *self.current.lock().unwrap_or_else(|p| p.into_inner()) = Some(g.clone());
        Ok(g)
    }

    /// Forgets stream `number` if it is the current one (its last subscription left):
    /// dropped by its last holder, it closes.
    fn retire(&self, number: u64) {
        let mut current = self.current.lock().unwrap_or_else(|p| p.into_inner());
        if current.as_ref().is_some_and(|g| g.number == number) {
            *current = None;
        }
    }
}

/// Tells every subscription of stream `.1` that it broke when dropped: each task owns one,
/// so a task that ends in any way — an error, the stream's end, aborted, or dropped with
/// its runtime before it ran — leaves no wait listening to a dead stream.
struct Breaks(Arc<Mutex<Routes>>, u64);

impl Drop for Breaks {
    fn drop(&mut self) {
        broke(&self.0, self.1);
    }
}

/// The sending task: requests out in the order asked, until the stream or the instance ends.
async fn send(mut sender: WatchRequestSender, mut pending: UnboundedReceiver<Request>, breaks: Breaks) {
    while let Some(r) = pending.recv().await {
        let sent = match r {
            Request::Create { id, key, options } => sender.watch(key, Some(options.with_watch_id(id))).await,
            Request::Cancel(id) => sender.cancel(id).await,
        };
        if let Err(e) = sent {
            tracing::debug!(stream = breaks.1, error = %e, "a watch request could not be sent");
            return;
        }
    }
}

/// The receiving task: each response to the subscription of its watch id. A response
/// from a member of another cluster than the connect met breaks the stream instead (its
/// events say nothing about our queue; the waits read again, and that read fails:
/// [`crate::client::Answer`]).
async fn receive(mut responses: WatchResponseStream, breaks: Breaks, cluster_id: Option<u64>, display: String) {
    let n = breaks.1;
    for _ in 0..u64::MAX {
        let r = match responses.message().await {
            Ok(Some(r)) => r,
            Ok(None) => {
                tracing::debug!(stream = n, "the watch stream ended");
                return;
            }
            Err(e) => {
                tracing::debug!(stream = n, error = %e, "the watch stream broke");
                return;
            }
        };
        if let Err(e) = crate::client::from_cluster(cluster_id, &display, "watching the keys before ours", &r) {
            tracing::warn!(stream = n, error = %e, "the watch stream answered from another cluster");
            return;
        }
        let id = r.watch_id();
        let mut routes = lock(&breaks.0);
        let to = if r.canceled() {
            routes.to.remove(&id)
        } else {
            routes.to.get(&id).cloned()
        };
        if let Some(to) = to {
            if to.send(Pushed::Response(r)).is_err() {
                routes.to.remove(&id); // the subscription went without cancelling
            }
        }
    }
}

/// The watches of one wait on the instance's shared stream.
pub(crate) struct Subscription {
    streams: Arc<WatchStreams>,
    generation: Option<Arc<Generation>>,
    ids: Vec<i64>,
    to: UnboundedSender<Pushed>,
    pushed: UnboundedReceiver<Pushed>,
}

/// How [`Subscription::watch`] added a watch.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Added {
    /// On the stream the subscription's other watches are on.
    Beside,
    /// On a new stream: the subscription's earlier watches are gone with the old one.
    Anew,
}

impl Subscription {
    /// A subscription to `c`'s watch stream, with no watch yet.
    pub fn new(c: &Cluster) -> Self {
        let (to, pushed) = unbounded_channel();
        Subscription {
            streams: c.watches.clone(),
            generation: None,
            ids: Vec::new(),
            to,
            pushed,
        }
    }

    /// Watches `key` with `options`; returns its watch id and where it went. Errors are the
    /// stream's opening errors (see [`WatchStreams`]). Cancel safe: dropped while a new
    /// stream opens, that stream is dropped unused; a watch asked for is recorded at once.
    pub async fn watch(&mut self, c: &Cluster, key: Vec<u8>, options: WatchOptions) -> Result<(i64, Added)> {
        let id = self.streams.next_id.fetch_add(1, Ordering::Relaxed) + 1;
        if let Some(g) = &self.generation {
            if g.add(id, key.clone(), options.clone(), &self.to, false) {
                self.ids.push(id);
                return Ok((id, Added::Beside));
            }
        }
        // Our stream broke (or we have none yet): our earlier watches, if any, went with it.
        let added = if self.generation.is_some() {
            Added::Anew
        } else {
            Added::Beside
        };
        self.reset();
        self.generation = Some(self.streams.join(c, id, key, options, &self.to).await?);
        self.ids.push(id);
        Ok((id, added))
    }

    /// The next response of one of our watches; `None` when the stream broke (our watches
    /// are gone). Cancel safe (a channel receive).
    pub async fn message(&mut self) -> Option<WatchResponse> {
        for _ in 0..u64::MAX {
            let current = self.generation.as_ref().map(|g| g.number);
            match self.pushed.recv().await {
                Some(Pushed::Response(r)) if self.ids.contains(&r.watch_id()) => return Some(r),
                Some(Pushed::Response(_)) => {} // a watch of a stream we left
                Some(Pushed::Broken(n)) if Some(n) == current => {
                    self.reset();
                    return None;
                }
                Some(Pushed::Broken(_)) => {} // a stream we left
                None => return None,          // unreachable: we hold a sender
            }
        }
        None
    }

    /// Ends our watches and leaves the stream (closing it when we were its last
    /// subscription): the next watch starts afresh.
    pub fn reset(&mut self) {
        if let Some(g) = self.generation.take() {
            if g.leave(&self.ids) {
                self.streams.retire(g.number);
            }
        }
        self.ids.clear();
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.reset();
    }
}
