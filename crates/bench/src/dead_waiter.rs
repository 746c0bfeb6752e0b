//! A waiter that dies while queued: how long it delays the waiters behind it.
//!
//! Each trial: a holder takes a fresh key; the victim — a client connected through a
//! [`FaultProxy`] — queues for it; two more clients queue behind it. Then the victim dies
//! the way a SIGKILLed process does: the proxy resets its connections (the server sees them
//! close; nothing the victim's client might still send gets through), its acquire is
//! aborted and its client dropped, with no chance to clean up. The holder releases; the
//! figure is the time from the release call to the next live waiter's acquire returning.

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

/// Time given to a client's acquire to reach the server and queue before the next client
/// asks (the order of the queue is the point of the trial). The bench has no event for
/// "queued at the server" that works for every subject, so it waits this long.
const QUEUE_PAUSE: Duration = Duration::from_millis(50);

/// One subject's dead-waiter trials.
#[derive(Debug, Clone, Serialize)]
pub struct DeadWaiter {
    /// `fencelock` or the peer crate's name.
    pub subject: String,
    /// Who it is.
    pub role: Role,
    /// Trials run.
    pub trials: usize,
    /// Release → next live waiter's grant, median over trials, milliseconds.
    pub p50_ms: f64,
    /// The same, the longest, milliseconds.
    pub max_ms: f64,
    /// Trials where no live waiter got the lock within one TTL + 5 s after the release.
    pub stuck: usize,
}

/// Our lock, `trials` times.
pub async fn measure_ours(target: &Target, trials: usize) -> Result<DeadWaiter> {
    let url = target.url.clone();
    let proxied = proxied(&target.url).await?;
    let victim_url = proxied.url.clone();
    measure(
        "fencelock",
        Role::Ours,
        trials,
        || {
            let url = url.clone();
            async move {
                Ok(Arc::<dyn Subject>::from(
                    Box::new(Ours::connect(&url).await?) as Box<dyn Subject>
                ))
            }
        },
        || {
            let url = victim_url.clone();
            async move {
                Ok(Arc::<dyn Subject>::from(
                    Box::new(Ours::connect(&url).await?) as Box<dyn Subject>
                ))
            }
        },
        &proxied,
    )
    .await
}

/// Peer crate `peer`, `trials` times.
pub async fn measure_peer(target: &Target, peer: &str, trials: usize) -> Result<DeadWaiter> {
    let proxied = proxied(&target.url).await?;
    let victim_target = Target::from_url(&proxied.url)?;
    measure(
        peer,
        Role::Peer,
        trials,
        || async { Ok(Arc::<dyn Subject>::from(target.peer(peer).await?)) },
        || async { Ok(Arc::<dyn Subject>::from(victim_target.peer(peer).await?)) },
        &proxied,
    )
    .await
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

async fn measure<C, CF, V, VF>(
    subject: &str,
    role: Role,
    trials: usize,
    connect: C,
    connect_victim: V,
    proxied: &Proxied,
) -> Result<DeadWaiter>
where
    C: Fn() -> CF,
    CF: std::future::Future<Output = Result<Arc<dyn Subject>>>,
    V: Fn() -> VF,
    VF: std::future::Future<Output = Result<Arc<dyn Subject>>>,
{
    let holder = connect().await?;
    let others = [connect().await?, connect().await?];
    let mut delays = Vec::with_capacity(trials);
    let mut stuck = 0;
    let run = std::process::id();
    for trial in 0..trials {
        proxied.set(Mode::Pass);
        let victim = connect_victim().await?;
        let key = format!("bench-dead-waiter-{run}-{}-{trial}", rand_bits());
        let held = holder.acquire(&key).await?;
        let queued = {
            let (victim, key) = (victim.clone(), key.clone());
            tokio::spawn(async move { victim.acquire(&key).await.map(drop) })
        };
        tokio::time::sleep(QUEUE_PAUSE).await;
        let (tx, mut rx) = mpsc::unbounded_channel::<(Instant, Held)>();
        let mut waiting = Vec::new();
        for other in &others {
            let (other, key, tx) = (other.clone(), key.clone(), tx.clone());
            waiting.push(tokio::spawn(async move {
                if let Ok(Ok(h)) = tokio::time::timeout(BOUND * 2, other.acquire(&key)).await {
                    let _ = tx.send((Instant::now(), h));
                }
            }));
            tokio::time::sleep(QUEUE_PAUSE).await;
        }
        drop(tx);
        // The victim dies: connections reset, its acquire dropped, its client gone.
        proxied.set(Mode::Reset);
        queued.abort();
        let _ = queued.await;
        drop(victim);
        let released = Instant::now();
        held.await?;
        match tokio::time::timeout(BOUND, rx.recv()).await {
            Ok(Some((at, h))) => {
                delays.push(at.saturating_duration_since(released));
                h.await?;
            }
            _ => {
                stuck += 1;
                delays.push(BOUND);
            }
        }
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
        p50_ms: delays.get(delays.len() / 2).map_or(0.0, |d| ms(*d)),
        max_ms: delays.last().map_or(0.0, |d| ms(*d)),
        stuck,
    })
}

/// A few bits that differ between calls, so keys of repeated runs on the same servers differ.
fn rand_bits() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
}
