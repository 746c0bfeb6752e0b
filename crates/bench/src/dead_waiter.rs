//! A waiter that dies while queued: how long it delays the waiters behind it.
//!
//! Each trial: a holder takes a fresh key; the victim — a client connected through a
//! [`FaultProxy`] — queues for it; two more clients, each behind a proxy of its own, queue
//! behind it. Then the victim dies the way a SIGKILLed process does: the proxy resets its
//! connections (the server sees them close; nothing the victim's client might still send
//! gets through), its acquire is aborted and its client dropped, with no chance to clean
//! up. The holder releases; the figure is the time from the release call to the next live
//! waiter's acquire returning.
//!
//! **Queued, checked.** A client counts as queued once the server has answered it after
//! its acquire began (bytes came back through its proxy; the victim takes and gives back
//! another key first, so its connection and session are up and the acquire's first
//! request is the one that queues), and `QUEUE_PAUSE` (50 ms) more. A trial whose victim
//! was not still waiting when it died — its acquire failed or ended, or the server never
//! answered it — is left out and counted: measured, it would give a plain hand-off as the
//! dead waiter's cost (one full run once reported 2.4 ms for etcd, whose dead waiter costs
//! its session TTL). What is left: bytes of another kind that come back in the same moment
//! (a session keep-alive's answer, every third of etcd's session TTL; an HTTP/2 ping's,
//! every 10 s) pass for the acquire's answer — a few milliseconds' window in seconds, and
//! the victim must still be waiting besides. A signal from the lock itself ("queued") would
//! close it; no backend gives one today.

use std::sync::Arc;
use std::time::{Duration, Instant};

use fencelock_testkit::proxy::{FaultProxy, Mode};
use serde::Serialize;
use tokio::sync::mpsc;

use crate::error::{BenchError, Result};
use crate::report::Role;
use crate::stats::micros;
use crate::subject::{Held, Ours, Subject, TTL};
use crate::targets::Target;

/// How long a live waiter may wait past the release before the trial counts it as stuck:
/// one TTL (a dead waiter's queue entry should not outlive it) plus 5 s.
const BOUND: Duration = Duration::from_secs(TTL.as_secs() + 5);

/// Time given to a client after the server's first answer to its acquire, before the next
/// client asks: the answer is read and acted on (the order of the queue is the point of
/// the trial).
const QUEUE_PAUSE: Duration = Duration::from_millis(50);

/// How long a client's acquire may go without an answer from the server before the trial
/// is left out.
const ANSWER_WITHIN: Duration = Duration::from_secs(5);

/// One subject's dead-waiter trials.
#[derive(Debug, Clone, Serialize)]
pub struct DeadWaiter {
    /// `fencelock` or the peer crate's name.
    pub subject: String,
    /// Who it is.
    pub role: Role,
    /// Trials run.
    pub trials: usize,
    /// Release → next live waiter's grant, median over the trials measured, milliseconds;
    /// `None` when every trial was left out.
    pub p50_ms: Option<f64>,
    /// The same, the longest, milliseconds.
    pub max_ms: Option<f64>,
    /// Trials where no live waiter got the lock within one TTL + 5 s after the release.
    pub stuck: usize,
    /// Trials left out: the victim was not waiting in the queue when it died (its acquire
    /// ended early, or the server never answered it); not in the figures.
    pub left_out: usize,
}

/// Our lock, `trials` times.
pub async fn measure_ours(target: &Target, trials: usize) -> Result<DeadWaiter> {
    measure("fencelock", Role::Ours, trials, &target.url, connect_ours, connect_ours).await
}

async fn connect_ours(url: String) -> Result<Arc<dyn Subject>> {
    Ok(Arc::<dyn Subject>::from(
        Box::new(Ours::connect(&url).await?) as Box<dyn Subject>
    ))
}

/// Peer crate `peer`, `trials` times.
pub async fn measure_peer(target: &Target, peer: &str, trials: usize) -> Result<DeadWaiter> {
    let connect = |url: String| async move { Ok(Arc::<dyn Subject>::from(Target::from_url(&url)?.peer(peer).await?)) };
    measure(peer, Role::Peer, trials, &target.url, connect, connect).await
}

/// A target's URL with every host behind its own proxy (also used by [`crate::failover`]).
pub(crate) struct Proxied {
    pub(crate) url: String,
    proxies: Vec<FaultProxy>,
}

impl Proxied {
    pub(crate) fn set(&self, mode: Mode) {
        for p in &self.proxies {
            p.set(mode);
        }
    }

    /// Bytes the servers sent back through the proxies so far.
    fn bytes_to_client(&self) -> u64 {
        self.proxies.iter().map(FaultProxy::bytes_to_client).sum()
    }
}

/// Puts a proxy in front of every `127.0.0.1:PORT` / `localhost:PORT` host of `url`.
pub(crate) async fn proxied(url: &str) -> Result<Proxied> {
    let (scheme, rest) = url
        .split_once("://")
        .ok_or_else(|| BenchError::Usage(format!("`{url}` is not a URL")))?;
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let (creds, hosts) = match authority.rsplit_once('@') {
        Some((c, h)) => (format!("{c}@"), h),
        None => (String::new(), authority),
    };
    let mut proxies = Vec::new();
    let mut proxied_hosts = Vec::new();
    for host in hosts.split(',') {
        let port = host
            .rsplit_once(':')
            .filter(|(h, _)| matches!(*h, "127.0.0.1" | "localhost"))
            .and_then(|(_, p)| p.parse::<u16>().ok())
            .ok_or_else(|| {
                BenchError::Usage(format!(
                    "the dead-waiter run needs servers on loopback (127.0.0.1:PORT), not `{host}`"
                ))
            })?;
        let proxy = FaultProxy::start(port).await;
        proxied_hosts.push(format!("127.0.0.1:{}", proxy.port()));
        proxies.push(proxy);
    }
    Ok(Proxied {
        url: format!("{scheme}://{creds}{}{tail}", proxied_hosts.join(",")),
        proxies,
    })
}

/// The trials: the holder connects to `url` directly, every other client through a proxy
/// of its own — live waiters with `connect`, the victim (anew each trial) with
/// `connect_victim`.
async fn measure<C, CF, V, VF>(
    subject: &str,
    role: Role,
    trials: usize,
    url: &str,
    connect: C,
    connect_victim: V,
) -> Result<DeadWaiter>
where
    C: Fn(String) -> CF,
    CF: std::future::Future<Output = Result<Arc<dyn Subject>>>,
    V: Fn(String) -> VF,
    VF: std::future::Future<Output = Result<Arc<dyn Subject>>>,
{
    let holder = connect(url.to_owned()).await?;
    let via = [proxied(url).await?, proxied(url).await?];
    let others = [connect(via[0].url.clone()).await?, connect(via[1].url.clone()).await?];
    let victim_via = proxied(url).await?;
    let mut delays = Vec::with_capacity(trials);
    let (mut stuck, mut left_out) = (0, 0);
    let run = std::process::id();
    for trial in 0..trials {
        victim_via.set(Mode::Pass);
        let victim = connect_victim(victim_via.url.clone()).await?;
        let key = format!("bench-dead-waiter-{run}-{}-{trial}", rand_bits());
        // Connection and session up: the acquire below sends the request that queues.
        victim.acquire(&format!("{key}-warm-up")).await?.await?;
        let held = holder.acquire(&key).await?;
        let (queued, mut answered) = {
            let (victim, key) = (victim.clone(), key.clone());
            queue(&victim_via, async move { victim.acquire(&key).await.map(drop) }).await
        };
        let (tx, mut rx) = mpsc::unbounded_channel::<(Instant, Held)>();
        let mut waiting = Vec::new();
        for (other, via) in others.iter().zip(&via) {
            let (other, key, tx) = (other.clone(), key.clone(), tx.clone());
            let (w, ok) = queue(via, async move {
                if let Ok(Ok(h)) = tokio::time::timeout(BOUND * 2, other.acquire(&key)).await {
                    let _ = tx.send((Instant::now(), h));
                }
            })
            .await;
            answered &= ok;
            waiting.push(w);
        }
        drop(tx);
        let valid = answered && !queued.is_finished();
        // The victim dies: connections reset, its acquire dropped, its client gone.
        victim_via.set(Mode::Reset);
        queued.abort();
        let _ = queued.await;
        drop(victim);
        let released = Instant::now();
        held.await?;
        match tokio::time::timeout(BOUND, rx.recv()).await {
            Ok(Some((at, h))) => {
                if valid {
                    delays.push(at.saturating_duration_since(released));
                }
                h.await?;
            }
            _ if valid => {
                stuck += 1;
                delays.push(BOUND);
            }
            _ => {}
        }
        left_out += usize::from(!valid);
        // The other live waiter gets it next; give it back too.
        if let Ok(Some((_, h))) = tokio::time::timeout(BOUND, rx.recv()).await {
            h.await?;
        }
        for w in waiting {
            w.abort();
        }
    }
    delays.sort();
    let ms = |d: Duration| micros(d) / 1000.0;
    Ok(DeadWaiter {
        subject: subject.to_owned(),
        role,
        trials,
        p50_ms: delays.get(delays.len() / 2).map(|d| ms(*d)),
        max_ms: delays.last().map(|d| ms(*d)),
        stuck,
        left_out,
    })
}

/// Starts `acquire` and returns once it is queued (see the module docs): its task, and
/// whether the server answered it within [`ANSWER_WITHIN`].
async fn queue<F>(via: &Proxied, acquire: F) -> (tokio::task::JoinHandle<F::Output>, bool)
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    let before = via.bytes_to_client();
    let task = tokio::spawn(acquire);
    let deadline = Instant::now() + ANSWER_WITHIN;
    // Bounded polling of a counter: the proxy has no event for "bytes went through".
    let mut answered = false;
    while Instant::now() < deadline && !task.is_finished() {
        if via.bytes_to_client() > before {
            answered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    tokio::time::sleep(QUEUE_PAUSE).await;
    (task, answered)
}

/// A few bits that differ between calls, so keys of repeated runs on the same servers differ.
fn rand_bits() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
}

#[cfg(test)]
mod tests {
    use super::*;
    use fencelock_testkit::redis_server::RedisServer;
    use futures_util::future::BoxFuture;

    /// A client that, asked for a key, takes another: it never queues behind the holder.
    struct Elsewhere(Arc<dyn Subject>);

    impl Subject for Elsewhere {
        fn acquire<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Held>> {
            Box::pin(async move { self.0.acquire(&format!("{key}-elsewhere")).await })
        }
    }

    /// A victim that was not waiting in the queue when it died says nothing about a dead
    /// waiter: its trial is left out and counted, not measured as the plain hand-off it
    /// is. Before, every trial was measured (one full run reported 2.4 ms for etcd, whose
    /// dead waiter costs its session TTL).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_victim_that_never_queued_is_left_out() {
        let server = RedisServer::start();
        let elsewhere =
            |url: String| async move { Ok(Arc::new(Elsewhere(connect_ours(url).await?)) as Arc<dyn Subject>) };
        let d = measure("fencelock", Role::Ours, 2, &server.url(), connect_ours, elsewhere)
            .await
            .unwrap();
        assert_eq!((d.trials, d.left_out, d.stuck), (2, 2, 0), "{d:?}");
        assert_eq!((d.p50_ms, d.max_ms), (None, None), "nothing measured: {d:?}");
    }
}
