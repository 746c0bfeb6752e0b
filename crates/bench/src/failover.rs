//! Failover time: a leader killed → its successor's campaign returns (issue 16).
//!
//! Each trial: the leader — an election client connected through a fresh [`FaultProxy`]
//! per trial — wins a campaign on a fresh election name; a successor (connected directly)
//! campaigns and waits. Then the leader dies the way a SIGKILLed process does: the proxy
//! resets its connections and refuses new ones (the server sees them close; nothing the
//! leader's client might still send — a resign, a renewal — gets through), and its client
//! is dropped. The figure is the time from the kill to the successor's campaign
//! returning: the backend's real detection bound for a dead leader, plus the wake-up.
//!
//! The bound is lowered for this row only, so that ≥ 50 failovers stay cheap: every
//! campaign's TTL is [`FAILOVER_TTL`], and the session-based backends get the same as their
//! session bound (`session_ttl` for etcd, `session_timeout` for ZooKeeper) in the URL;
//! PostgreSQL gets a statement `timeout` of half of it (its TTL must be twice that).
//!
//! [`FaultProxy`]: fencelock_testkit::proxy::FaultProxy

use std::time::{Duration, Instant};

use fencelock::election::Election;
use fencelock::LockOptions;
use fencelock_testkit::proxy::Mode;
use serde::Serialize;

use crate::dead_waiter::proxied;
use crate::error::{BenchError, Result};
use crate::stats::{micros, percentile};
use crate::targets::{Kind, Target};

/// The TTL (and session bound) of every campaign of the failover row.
pub const FAILOVER_TTL: Duration = Duration::from_secs(1);

/// How long a successor may take after the kill before the trial counts it as stuck.
const BOUND: Duration = Duration::from_secs(FAILOVER_TTL.as_secs() + 10);

/// Time given to the successor's campaign to reach the server and wait before the kill
/// (the bench has no "queued" event that works for every backend).
const QUEUE_PAUSE: Duration = Duration::from_millis(50);

/// One backend's failover trials.
#[derive(Debug, Clone, Serialize)]
pub struct Failover {
    /// Failovers measured.
    pub failovers: usize,
    /// Kill → successor's campaign returned, median, milliseconds.
    pub p50_ms: f64,
    /// The same, 99th percentile, milliseconds.
    pub p99_ms: f64,
    /// The same, the longest, milliseconds.
    pub max_ms: f64,
    /// Trials where no successor was elected within the bound (counted at the bound).
    pub stuck: usize,
    /// How the leader was killed and what bounds the detection on this backend.
    pub note: String,
}

/// What bounds the failover on `kind`, for the row's note.
fn note(kind: Kind) -> String {
    let ttl = FAILOVER_TTL.as_secs();
    let what = match kind {
        Kind::Redis | Kind::Redlock => format!("the seat's TTL ({ttl} s) runs out"),
        Kind::Etcd => format!("the session lease (session_ttl={ttl}s) expires and its key goes"),
        Kind::Zookeeper => format!("the session (session_timeout={ttl}s) expires and its node goes"),
        Kind::Postgres => {
            format!("the seat's TTL ({ttl} s) runs out or the server drops the dead connection's session")
        }
    };
    format!("connections reset by a proxy (as a SIGKILL); {what}")
}

/// `url` with the failover row's session bound (etcd, ZooKeeper), or for PostgreSQL a
/// statement timeout of half the TTL: the backend refuses a TTL shorter than twice its
/// `timeout=` (default 1 s; an auto-renewal answered within it could land after the lease
/// expired), so the row's 1 s TTL needs one of at most 500 ms.
fn with_bound(kind: Kind, url: &str) -> String {
    let ttl = FAILOVER_TTL.as_secs();
    let option = match kind {
        Kind::Etcd => format!("session_ttl={ttl}s"),
        Kind::Zookeeper => format!("session_timeout={ttl}s"),
        Kind::Postgres => format!("timeout={}ms", FAILOVER_TTL.as_millis() / 2),
        Kind::Redis | Kind::Redlock => return url.to_owned(),
    };
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}{option}")
}

async fn connect(url: &str) -> Result<std::sync::Arc<dyn Election>> {
    fencelock::connect_election(url)
        .await
        .map_err(|e| BenchError::lock("connect_election", e))
}

/// `failovers` failovers on `target`.
pub async fn measure(target: &Target, failovers: usize) -> Result<Failover> {
    let url = with_bound(target.kind, &target.url);
    // Only the leader's death is measured: the successor keeps the default session bound,
    // so a loaded machine cannot make its own short session lapse mid-run.
    // PostgreSQL's bound is its statement timeout, which the successor's campaign (same
    // TTL) needs as well.
    let successor_url = if target.kind == Kind::Postgres {
        &url
    } else {
        &target.url
    };
    let successor = connect(successor_url).await?;
    let opts = LockOptions::new().with_ttl(FAILOVER_TTL).with_wait(BOUND);
    let run = std::process::id();
    let mut delays = Vec::with_capacity(failovers);
    let mut stuck = 0;
    for trial in 0..failovers {
        let name = format!("bench-failover-{run}-{}-{trial}", rand_bits());
        // A fresh proxy per trial: a killed leader's client can never reach the server
        // again, whatever it retries in the background.
        let proxied = proxied(&url).await?;
        let victim = connect(&proxied.url).await?;
        let leadership = victim
            .campaign(&name, b"leader", &opts)
            .await
            .map_err(|e| BenchError::lock("campaign", e))?;
        let waiting = {
            let (successor, name) = (std::sync::Arc::clone(&successor), name.clone());
            tokio::spawn(async move {
                let won = successor.campaign(&name, b"successor", &opts).await;
                (won, Instant::now())
            })
        };
        tokio::time::sleep(QUEUE_PAUSE).await;
        // The kill: connections reset and refused, the client dropped without resigning.
        let killed = Instant::now();
        proxied.set(Mode::Reset);
        drop(leadership);
        drop(victim);
        match tokio::time::timeout(BOUND, waiting).await {
            Ok(Ok((Ok(next), at))) => {
                delays.push(at.saturating_duration_since(killed));
                // Not part of the figure; a successor whose short lease already lapsed
                // (Redlock on a loaded machine) only makes its resign report the loss.
                let _ = next.resign().await;
            }
            _ => {
                stuck += 1;
                delays.push(BOUND);
            }
        }
        drop(proxied);
    }
    successor.close().await.map_err(|e| BenchError::lock("close", e))?;
    delays.sort();
    let ms = |d: Duration| micros(d) / 1000.0;
    Ok(Failover {
        failovers,
        p50_ms: ms(percentile(&delays, 0.5)),
        p99_ms: ms(percentile(&delays, 0.99)),
        max_ms: delays.last().map_or(0.0, |d| ms(*d)),
        stuck,
        note: note(target.kind),
    })
}

/// A few bits that differ between calls, so names of repeated runs on the same servers differ.
fn rand_bits() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
}
