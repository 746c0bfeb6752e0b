//! What the backends' fault tests (`crates/*/tests/faults.rs`) share: their lock options,
//! and the checks they make the same way on every backend — a client whose server is down
//! or paused gives up in time with [`LockError::Unavailable`], and waiters queued behind a
//! holder that survives a failover each get the lock in turn, one at a time.
//!
//! What differs per backend (how a server is killed, paused or failed over) stays in the
//! backend's test; these helpers take a connected client, closures or a connect function.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use fencelock_core::{DistributedLock, LockError, LockOptions};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::overlap::OverlapDetector;

/// How long a helper here waits for a call whose own bound (a `within`, a wait, a request
/// timeout) it was not given, or for a call on a healthy server (the warm-up grant): far
/// above any backend's default request timeout, far below the test runner's kill.
pub const UNBOUNDED_CALL_LIMIT: Duration = Duration::from_secs(60);

/// Awaits `call` for at most `limit`; when it has not ended by then, runs `undo` (resumes a
/// paused server, so a failing test leaves no stopped process behind) and panics saying
/// what hung — the backend's own timeout did not fire, the very bug these helpers look for.
async fn bounded<T>(what: &str, limit: Duration, undo: impl FnOnce(), call: impl Future<Output = T>) -> T {
    match tokio::time::timeout(limit, call).await {
        Ok(v) => v,
        Err(_) => {
            undo();
            panic!("{what}: no answer within {limit:?} — the backend's own timeout did not end the call");
        }
    }
}

/// Options of a short lease: TTL `ttl_ms` milliseconds, wait 5 s.
pub fn opts(ttl_ms: u64) -> LockOptions {
    LockOptions::new()
        .with_ttl(Duration::from_millis(ttl_ms))
        .with_wait(Duration::from_secs(5))
}

/// Options of a lease held through a failover: TTL 30 s, wait 30 s.
pub fn held() -> LockOptions {
    LockOptions::new()
        .with_ttl(Duration::from_secs(30))
        .with_wait(Duration::from_secs(30))
}

/// Asserts that `try_acquire` of `key` fails with [`LockError::Unavailable`] — when
/// `within` is given, in less than that time.
///
/// # Panics
/// When the call succeeds, fails otherwise, or takes `within` or more (without `within`:
/// [`UNBOUNDED_CALL_LIMIT`]; a call that never ends is cut there, not left to hang the test).
pub async fn assert_try_acquire_unavailable(
    locks: &dyn DistributedLock,
    key: &str,
    opts: &LockOptions,
    within: Option<Duration>,
) {
    let start = Instant::now();
    let limit = within.map_or(UNBOUNDED_CALL_LIMIT, |w| w + Duration::from_secs(1));
    let err = bounded(
        "try_acquire from an unavailable server",
        limit,
        || {},
        locks.try_acquire(key, opts),
    )
    .await
    .expect_err("try_acquire from an unavailable server");
    assert!(matches!(err, LockError::Unavailable { .. }), "{err}");
    if let Some(within) = within {
        assert!(start.elapsed() < within, "try_acquire took {:?}", start.elapsed());
    }
}

/// Asserts that `acquire` of `key` (free: nobody holds it) with `opts` and a wait of `wait`
/// gives up in less than `wait` + `slack`, with [`LockError::Unavailable`] — never with
/// [`LockError::Timeout`], which says the key was held (the CLI exits 75 "held by someone
/// else" on it, where a script retries on 69 "unavailable").
///
/// # Panics
/// When the call succeeds, fails otherwise, or takes `wait` + `slack` or more (it is cut
/// one second after that, not left to hang the test).
pub async fn assert_acquire_gives_up(
    locks: &dyn DistributedLock,
    key: &str,
    opts: &LockOptions,
    wait: Duration,
    slack: Duration,
) {
    let start = Instant::now();
    let opts = opts.with_wait(wait);
    let limit = wait + slack + Duration::from_secs(1);
    let err = bounded(
        "acquire from an unavailable server",
        limit,
        || {},
        locks.acquire(key, &opts),
    )
    .await
    .expect_err("acquired from an unavailable server");
    assert!(matches!(err, LockError::Unavailable { .. }), "{err}");
    assert!(start.elapsed() < wait + slack, "acquire took {:?}", start.elapsed());
}

/// The paused-server case: after a warm-up grant on `locks`, `pause` stops the server;
/// a `try_acquire` must fail with [`LockError::Unavailable`] in less than the client's
/// request `timeout` + `slack`. `resume` runs before the asserts, so a failing test leaves
/// no stopped server behind.
///
/// # Panics
/// When the warm-up fails, when `try_acquire` does not fail with
/// [`LockError::Unavailable`], or takes `timeout` + `slack` or more — a call still running
/// one second after that is cut, the server resumed, and the test fails saying so.
pub async fn assert_unavailable_while_paused(
    locks: &dyn DistributedLock,
    pause: impl FnOnce(),
    resume: impl FnOnce(),
    timeout: Duration,
    slack: Duration,
) {
    let warm = bounded(
        "the warm-up acquire",
        UNBOUNDED_CALL_LIMIT,
        || {},
        locks.acquire("warm", &opts(1000)),
    )
    .await
    .unwrap();
    bounded("the warm-up release", UNBOUNDED_CALL_LIMIT, || {}, warm.release())
        .await
        .unwrap();
    pause();
    let start = Instant::now();
    let limit = timeout + slack + Duration::from_secs(1);
    let opts = opts(1000);
    let mut resume = Some(resume);
    let result = bounded(
        "try_acquire from a paused server",
        limit,
        || {
            if let Some(r) = resume.take() {
                r();
            }
        },
        locks.try_acquire("k", &opts),
    )
    .await;
    let took = start.elapsed();
    if let Some(resume) = resume {
        resume();
    }
    assert!(matches!(result, Err(LockError::Unavailable { .. })), "{result:?}");
    assert!(took < timeout + slack, "took {took:?}");
}

/// Spawns `n` waiters for `key`, each on its own client from `connect(url)` (connected
/// inside its task): each acquires with [`held`], enters `detector` with its token, and
/// releases. Join them with [`assert_waiters_took_turns`].
pub fn spawn_waiters<F, Fut, L>(
    n: usize,
    key: &str,
    url: &str,
    connect: F,
    detector: &Arc<OverlapDetector>,
) -> Vec<JoinHandle<()>>
where
    F: Fn(String) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = L> + Send,
    L: DistributedLock + 'static,
{
    (0..n)
        .map(|_| {
            let (connect, detector) = (connect.clone(), Arc::clone(detector));
            let (key, url) = (key.to_owned(), url.to_owned());
            tokio::spawn(async move {
                let locks = connect(url).await;
                let l = locks
                    .acquire(&key, &held())
                    .await
                    .expect("a waiter gets the lock after the release");
                {
                    let _inside = detector.enter(l.token());
                    tokio::task::yield_now().await;
                }
                l.release().await.unwrap();
            })
        })
        .collect()
}

/// Joins the waiters of [`spawn_waiters`] (each within 30 s) and asserts that `detector`
/// saw `entries` entries, no two at once, with tokens that never went back.
pub async fn assert_waiters_took_turns(waiters: Vec<JoinHandle<()>>, detector: &OverlapDetector, entries: usize) {
    for w in waiters {
        tokio::time::timeout(Duration::from_secs(30), w)
            .await
            .expect("waiter finished")
            .unwrap();
    }
    assert_eq!(detector.overlaps(), 0);
    assert_eq!(detector.entries().len(), entries);
    assert!(detector.token_regressions().is_empty(), "{:?}", detector.entries());
}

/// A waiter queued behind a holder when the backend goes away (`kill`: killed, its
/// connections reset; or paused with SIGSTOP, its connections open and silent): its wait
/// runs out with [`LockError::Unavailable`] within `wait` + `slack`, not with
/// [`LockError::Timeout`] — the last it heard of the key was not "held", but nothing.
///
/// First, with the backend up, a short `acquire` on `waiter` must time out: the key is held,
/// and a timeout is the right answer then. The outage comes a third into the second wait,
/// while the waiter is queued on a healthy machine; the assertion holds as well for a
/// waiter that was slower to queue (its attempts then fail from the start), so the pause
/// before `kill` orders nothing the test depends on.
///
/// # Panics
/// When a step gives another answer than the above, or the waiter's wait does not end
/// within `wait` + `slack` (it is cut one second after that, not left to hang the test).
pub async fn assert_outage_while_waiting_is_unavailable(
    holder: &dyn DistributedLock,
    waiter: &dyn DistributedLock,
    kill: impl FnOnce(),
    wait: Duration,
    slack: Duration,
) {
    let lease = bounded(
        "the holder's acquire",
        UNBOUNDED_CALL_LIMIT,
        || {},
        holder.acquire("outage", &held()),
    )
    .await
    .unwrap();
    let short = held().with_wait(Duration::from_millis(300));
    let err = bounded(
        "a short wait on a held key",
        UNBOUNDED_CALL_LIMIT,
        || {},
        waiter.acquire("outage", &short),
    )
    .await
    .expect_err("acquired a held key");
    assert!(err.is_timeout(), "a held key, the backend up: {err}");
    let start = Instant::now();
    let long = held().with_wait(wait);
    let waiting = waiter.acquire("outage", &long);
    tokio::pin!(waiting);
    let early = tokio::select! {
        r = &mut waiting => Some(r),
        () = tokio::time::sleep(wait / 3) => None,
    };
    assert!(early.is_none(), "the wait ended before the outage: {early:?}");
    kill();
    let limit = (wait + slack + Duration::from_secs(1)).saturating_sub(start.elapsed());
    let err = bounded("a wait through the outage", limit, || {}, waiting)
        .await
        .expect_err("acquired a held key from a dead backend");
    assert!(matches!(err, LockError::Unavailable { .. }), "{err}");
    assert!(start.elapsed() < wait + slack, "acquire took {:?}", start.elapsed());
    drop(lease);
}
