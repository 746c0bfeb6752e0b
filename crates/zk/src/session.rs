//! The ZooKeeper session of one backend instance: the client, the monitor that turns
//! session states into lease states for every lock held in it, the background clean-ups
//! it owns, and its end (`close`).

use std::sync::Arc;
use std::time::Duration;

use fencelock_core::batch::Batcher;
use fencelock_core::cleanup::Cleanups;
use fencelock_core::options::duration_text;
use fencelock_core::{LeaseRegistry, LeaseReporter, LockError, LostReason, Result};
use tokio::task::AbortHandle;
use zookeeper_client::{Client, SessionState, StateWatcher};

use crate::config::ZkConfig;
use crate::error::{failed, refused, timed_out};

/// The most lock nodes one renewal multi-read checks (each answer is a ~100-byte stat,
/// far under ZooKeeper's 1 MB packet limit).
pub(crate) const MAX_RENEWAL_BATCH: usize = 500;

/// The longest a background renewal waits to share its multi-read (capped at a tenth of
/// the lease's TTL).
pub(crate) const RENEW_WINDOW: Duration = Duration::from_millis(50);

/// How long a proof of a session keeps it alive, counted from the proof's send instant,
/// for a session of (negotiated) `timeout` T whose client was given `connect_timeout`:
/// three quarters of T less the client's largest gap between two sends
/// ([`largest_send_gap`]).
///
/// A proof is an answer that the leader held the session after the send instant: a `sync`
/// (the server the session is on forwards it to the leader, and answers it only once the
/// leader's answer came back and every transaction committed before it, a `closeSession`
/// of this session included, was applied — which would have closed our connection first),
/// or a write, which the leader itself checks. The leader alone expires sessions, at T
/// after the last activity it learnt of (rounded up to its next `tickTime`: later, never
/// earlier). It learns of a session on a follower only through that follower's ping
/// replies, one every half `tickTime` τ, each naming the sessions that sent anything since
/// the last. The earliest expiry after a proof sent at t: the follower may be cut off from
/// the leader right after relaying the proof's answer (instant c ≥ t); its last ping reply
/// the leader got was sent at most τ/2 before c, and it named the session only if the
/// client sent something between it and the reply before — the client's sends are at
/// most g apart, so the leader counted from no earlier than c − τ/2 − g ≥ t − τ/2 − g, and
/// expires the session no earlier than t + T − τ/2 − g. τ ≤ T/2 (the server's
/// `minSessionTimeout` is 2τ unless configured lower), so the proof holds for
/// T − T/4 − g = ¾T − g. (With the whole T, or ¾T alone, the believed validity outlived
/// the earliest expiry by up to τ/2 + g, or g: review — with T = 10 s, `tickTime` 2 s and
/// `connect_timeout` 7 s by 500 ms, with `connect_timeout` 5 s by 1 s.)
///
/// A read answered by a follower proves nothing: a follower cut off from the leader keeps
/// answering its clients' reads and pings for `syncLimit` ticks (10 s on a stock server)
/// while the leader expires their sessions.
pub(crate) fn proven_for_after_gaps(timeout: Duration, connect_timeout: Duration) -> Duration {
    proven_for(timeout).saturating_sub(largest_send_gap(timeout, connect_timeout))
}

/// Three quarters of `timeout`: how long a proof keeps a session alive before the client's
/// gaps between sends are taken off ([`proven_for_after_gaps`], which says why; the
/// waiting session's bound, `waiting::proof_lasts`, takes them off too).
pub(crate) fn proven_for(timeout: Duration) -> Duration {
    timeout * 3 / 4
}

/// The longest zookeeper-client 0.11 leaves a live, idle connection without a send, for a
/// session of (negotiated) `timeout` with `connect_timeout` (its source, `session/mod.rs`:
/// `calc_tick_timeout`, `reset_timeout`, `serve_session`). The client works on a tick:
/// `connect_timeout`/8, or `timeout`/20 when `connect_timeout` is zero or over 3/5 of
/// `timeout`, at least 1 ms. It pings when nothing was sent for `min(10 s, 3 ticks)` and
/// no ping is unanswered, checked once a tick: the next send comes at most a tick after
/// that (4 ticks: `connect_timeout`/2, or `timeout`/5). One tick more covers a ping
/// answered late (the next waits for its answer) and one-way delays that vary (the
/// leader's view is of the *server's* receptions): the bound assumes together they stay
/// within a tick (125 ms with the default 1 s `connect_timeout`). A ping not answered at
/// all is caught by the client's drop of a connection silent for 8 ticks: the session is
/// then disconnected and its leases `Suspended`.
pub(crate) fn largest_send_gap(timeout: Duration, connect_timeout: Duration) -> Duration {
    let tick = if connect_timeout.is_zero() || connect_timeout > timeout * 3 / 5 {
        timeout / 20
    } else {
        connect_timeout / 8
    }
    .max(Duration::from_millis(1));
    Duration::from_secs(10).min(tick * 3) + tick * 2
}

/// What a session state means for the leases riding on the session: told by the monitor
/// to every registered lease at each change, and by [`Session::register`] to a new one.
enum ForLeases {
    /// Disconnected: the session may live on while the client connects again.
    Suspended,
    /// Connected again, the session intact.
    Resumed,
    /// The session ended: every node it owned is gone (or goes with it).
    Lost(LostReason),
}

fn for_leases(state: SessionState) -> ForLeases {
    match state {
        SessionState::Disconnected => ForLeases::Suspended,
        SessionState::SyncConnected | SessionState::ConnectedReadOnly => ForLeases::Resumed,
        SessionState::Expired => ForLeases::Lost(LostReason::Backend("zookeeper session expired".into())),
        SessionState::Closed | SessionState::AuthFailed => {
            ForLeases::Lost(LostReason::Backend(format!("zookeeper session ended: {state:?}")))
        }
    }
}

/// Sends a `sync` and then the read `read` sends, pipelined on the session's connection
/// (one round trip to the leader, not two of the client's): the server answers a session's
/// requests in order, so the read is answered after the sync, from a copy at least as new
/// as the leader's when it took the sync. The read's answer once both came (the sync's
/// error first): it was sent after the caller's send instant, so its answer is a proof
/// from that instant ([`proven_for`]). The caller bounds it with its request timeout.
///
/// The sync is sent before `read` is called: requests go out when their future is made.
pub(crate) async fn after_sync<'a, T, F>(
    client: &'a Client,
    read: impl FnOnce(&'a Client) -> F,
) -> std::result::Result<T, zookeeper_client::Error>
where
    F: std::future::Future<Output = std::result::Result<T, zookeeper_client::Error>> + 'a,
{
    let synced = client.sync("/");
    let answer = read(client);
    let (synced, answer) = tokio::join!(synced, answer);
    synced?;
    answer
}

/// One session.
pub(crate) struct Session {
    /// The client; `None` once [`Session::close`] let go of it (zookeeper-client closes the
    /// session when its last handle is dropped).
    client: std::sync::Mutex<Option<Arc<Client>>>,
    states: StateWatcher,
    id: i64,
    timeout: Duration,
    /// The connect timeout the client was given: with `timeout`, it sets how often the
    /// client pings ([`largest_send_gap`]).
    connect_timeout: Duration,
    pub locks: LeaseRegistry,
    /// Background renewals of this session's locks, checked together in one multi-read.
    pub renewals: Batcher<(String, i64), bool>,
    /// Deletions, follow-ups and releases of dropped leases still running in the
    /// background.
    pub cleanups: Cleanups,
    monitor: std::sync::Mutex<Option<AbortHandle>>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session").field("id", &self.id).finish_non_exhaustive()
    }
}

/// `true` when a TCP connect to `server` (`HOST:PORT`) is refused before `deadline`:
/// nothing listens there. Any other outcome (accepted, unresolvable, no answer) is `false`.
async fn refused_now(server: &str, deadline: tokio::time::Instant) -> bool {
    matches!(
        tokio::time::timeout_at(deadline, tokio::net::TcpStream::connect(server)).await,
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused
    )
}

/// Refuses a session the server made longer than `cfg.session_timeout`: ZooKeeper raises a
/// timeout below its `minSessionTimeout` (2 × `tickTime` by default) to that minimum without
/// an error, and the longer session would keep a dead or cut-off holder's locks longer than
/// asked — for `fencelock run --ttl`, which sets the session from the TTL, longer than the
/// TTL. A timeout above the server's `maxSessionTimeout` is lowered by the server and
/// accepted: locks are then freed sooner, and every lease's validity is capped at the
/// negotiated timeout (`grant::lease`).
///
/// # Errors
/// [`LockError::InvalidConfig`] naming the timeout asked for and the server's minimum.
fn below_the_minimum(cfg: &ZkConfig, negotiated: Duration) -> Result<()> {
    if negotiated <= cfg.session_timeout {
        return Ok(());
    }
    let (asked, minimum) = (
        duration_text::human(cfg.session_timeout),
        duration_text::human(negotiated),
    );
    Err(LockError::invalid_config(format!(
        "session_timeout {asked} is below the minimum of {minimum} that {} allows (its minSessionTimeout, \
         2 × tickTime by default), and the server would keep a dead holder's locks {minimum}: set \
         session_timeout to at least {minimum} (`fencelock run --ttl` sets it when the URL does not)",
        cfg.display
    )))
}

impl Session {
    /// Connects a new session, bounded by the connect and request timeouts
    /// ([`ZkConfig::connect_limit`]).
    ///
    /// With one server, a refused connection is reported at once (`Unavailable`), as the
    /// Redis and etcd backends do, instead of after the whole limit: the client is told to
    /// fail once every server was tried (`with_fail_eagerly`), and when it does, one TCP
    /// connect tells a refusal (nothing listens there) from a server that accepted but did
    /// not serve a session (still starting, between leaders), which is given the rest of
    /// the limit as before. With several servers, the client keeps trying the others for
    /// the whole limit: one that is down is what a list of servers is for.
    ///
    /// # Errors
    /// `Unavailable` when no session could be made within the limit or the one server
    /// refused the connection; `InvalidConfig` when the chroot does not exist, or when the
    /// session timeout is below the server's minimum (the server would raise it silently).
    pub async fn connect(cfg: &ZkConfig) -> Result<Arc<Session>> {
        let connect_string = cfg.connect_string();
        let connector = || {
            Client::connector()
                .with_session_timeout(cfg.session_timeout)
                .with_connection_timeout(cfg.connect_timeout)
        };
        let limit = cfg.connect_limit();
        let deadline = tokio::time::Instant::now() + limit;
        let eager = match cfg.servers.as_slice() {
            [one] => {
                let eager = tokio::time::timeout_at(deadline, connector().with_fail_eagerly().connect(&connect_string));
                match eager.await {
                    Ok(Err(zookeeper_client::Error::NoHosts)) if refused_now(one, deadline).await => {
                        return Err(refused(one, &cfg.display));
                    }
                    Ok(Err(zookeeper_client::Error::NoHosts)) => None,
                    other => Some(other),
                }
            }
            _ => None,
        };
        let connected = match eager {
            Some(outcome) => outcome,
            None => tokio::time::timeout_at(deadline, connector().connect(&connect_string)).await,
        };
        let client = match connected {
            Ok(Ok(c)) => c,
            Ok(Err(zookeeper_client::Error::NoNode)) => {
                return Err(LockError::invalid_config(format!(
                    "the chroot {} does not exist on {}: create it first (e.g. zkCli.sh create {} \"\")",
                    cfg.chroot, cfg.display, cfg.chroot
                )))
            }
            Ok(Err(e)) => return Err(failed("connecting", &cfg.display, e)),
            Err(_) => return Err(timed_out("connecting", &cfg.display, limit)),
        };
        if let Err(e) = below_the_minimum(cfg, client.session_timeout()) {
            // Dropping the client closes the session in the background; wait (bounded)
            // for the close, so a process that exits on this error leaves no session to
            // expire on the server.
            let states = client.state_watcher();
            drop(client);
            until_ended(states, cfg.timeout).await;
            return Err(e);
        }
        let session = Arc::new(Session {
            states: client.state_watcher(),
            id: client.session_id().0,
            timeout: client.session_timeout(),
            connect_timeout: cfg.connect_timeout,
            client: std::sync::Mutex::new(Some(Arc::new(client))),
            locks: LeaseRegistry::new(),
            renewals: Batcher::new(MAX_RENEWAL_BATCH),
            cleanups: Cleanups::new(),
            monitor: std::sync::Mutex::new(None),
        });
        let weak = Arc::downgrade(&session);
        let mut states = session.states.clone();
        let task = tokio::spawn(async move {
            loop {
                let state = states.changed().await;
                let Some(s) = weak.upgrade() else { return };
                match for_leases(state) {
                    ForLeases::Suspended => s.locks.suspended_all(),
                    ForLeases::Resumed => s.locks.resumed_all(),
                    ForLeases::Lost(reason) => {
                        s.locks.lost_all(&reason);
                        return;
                    }
                }
            }
        });
        *session.monitor.lock().unwrap_or_else(|p| p.into_inner()) = Some(task.abort_handle());
        Ok(session)
    }

    /// A handle of the client for one request, or `Unavailable` once the session was
    /// closed.
    pub fn client(&self) -> Result<Arc<Client>> {
        self.client
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .ok_or_else(|| LockError::Unavailable {
                message: "the zookeeper session was closed".into(),
                source: None,
            })
    }

    /// `true` while the session can still be used.
    pub fn is_usable(&self) -> bool {
        let open = self.client.lock().unwrap_or_else(|p| p.into_inner()).is_some();
        open && !ended(self.states.peek_state())
    }

    /// `true` while the client is connected to a server that takes writes: the session
    /// can act now (not merely live on while the client connects again).
    pub fn is_connected(&self) -> bool {
        matches!(self.states.peek_state(), SessionState::SyncConnected)
    }

    /// Registers a lease riding on this session, and gives it the session's state now: the
    /// monitor tells registered leases of each change, and may have handled one (a
    /// disconnect, the session's end) before this lease was registered — it would read
    /// `Held` while disconnected, or live in an ended session. Returns the id to unregister
    /// it with.
    pub fn register(&self, reporter: LeaseReporter) -> u64 {
        let id = self.locks.register(reporter.clone());
        // Applied until the state read after it is the one applied: a change the monitor
        // handled between our read and our report is reported again (bounded: a state
        // that changes on every look is left to the monitor, which reports every change
        // after the registration).
        let mut state = self.states.peek_state();
        for _ in 0..4 {
            match for_leases(state) {
                ForLeases::Suspended => reporter.suspended(),
                ForLeases::Resumed => reporter.resumed(),
                ForLeases::Lost(reason) => {
                    reporter.lost(reason);
                    break;
                }
            }
            let now = self.states.peek_state();
            if now == state {
                break;
            }
            state = now;
        }
        id
    }

    /// The session id.
    pub fn id(&self) -> i64 {
        self.id
    }

    /// The negotiated session timeout.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// How long a proof of this session keeps it (and its nodes) alive from its send
    /// instant: [`proven_for_after_gaps`] of the negotiated timeout and the connect
    /// timeout.
    pub fn proven_for(&self) -> Duration {
        proven_for_after_gaps(self.timeout, self.connect_timeout)
    }

    /// Ends the session: first tells every lease of it lost, for `why` (the server deletes
    /// their nodes when the close lands, and another client may be granted at once —
    /// before the client reports `Closed` to the monitor, which would tell them too late),
    /// then lets go of the client (zookeeper-client then sends `closeSession`, and the
    /// server deletes every ephemeral node of the session at once) and waits up to `limit`
    /// for the client to report it closed. Requests still in flight keep their own handle
    /// until they finish (each is bounded by the request timeout).
    pub async fn close(&self, why: &str, limit: Duration) -> bool {
        self.locks.lost_all(&LostReason::Backend(why.to_owned()));
        let client = self.client.lock().unwrap_or_else(|p| p.into_inner()).take();
        drop(client);
        until_ended(self.states.clone(), limit).await
    }

    /// Waits until `deadline` for the client to settle after a dropped connection:
    /// `Some(true)` once connected again in this session, `Some(false)` once the session
    /// ended (expired, closed or refused), `None` when neither came in time. Cancel safe.
    pub async fn until_settled(&self, deadline: tokio::time::Instant) -> Option<bool> {
        until_state(self.states.clone(), deadline, |s| match s {
            SessionState::SyncConnected | SessionState::ConnectedReadOnly => Some(true),
            s if ended(s) => Some(false),
            _ => None,
        })
        .await
    }
}

/// The session ended: closed, expired or refused.
fn ended(s: SessionState) -> bool {
    matches!(
        s,
        SessionState::Closed | SessionState::Expired | SessionState::AuthFailed
    )
}

/// Waits up to `limit` for `states` to report the session ended (closed, expired or
/// refused): after the last handle of its client was dropped, zookeeper-client sends
/// `closeSession` in the background, and this is how to know it went. `true` when it did.
async fn until_ended(states: StateWatcher, limit: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + limit;
    until_state(states, deadline, |s| ended(s).then_some(()))
        .await
        .is_some()
}

/// The first state `states` reports (the current one included) that `settles` maps to
/// `Some`, or `None` at `deadline`. Bounded: the client goes through a handful of states
/// per reconnect, and 16 changes without one that settles is `None` too.
async fn until_state<T>(
    mut states: StateWatcher,
    deadline: tokio::time::Instant,
    settles: impl Fn(SessionState) -> Option<T>,
) -> Option<T> {
    if let Some(now) = settles(states.peek_state()) {
        return Some(now);
    }
    tokio::time::timeout_at(deadline, async {
        for _ in 0..16 {
            if let Some(now) = settles(states.changed().await) {
                return Some(now);
            }
        }
        None
    })
    .await
    .ok()
    .flatten()
}

impl Drop for Session {
    fn drop(&mut self) {
        if let Some(t) = self.monitor.lock().unwrap_or_else(|p| p.into_inner()).take() {
            t.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail by panicking

    use std::time::Instant;

    use super::*;

    /// A port nobody listens on: refused at once, well inside the 4 s connect limit of the
    /// default timeouts (it was reported only when that limit ran out).
    #[tokio::test]
    async fn a_refused_connection_to_the_one_server_is_reported_at_once() {
        let port = fencelock_testkit::ports::free_port();
        let cfg = ZkConfig::from_url(&format!("zk://127.0.0.1:{port}")).unwrap();
        assert_eq!(cfg.connect_limit(), Duration::from_secs(4));
        let start = Instant::now();
        let e = Session::connect(&cfg).await.unwrap_err();
        assert!(start.elapsed() < Duration::from_secs(1), "took {:?}", start.elapsed());
        assert!(crate::error::is_refused(&e), "{e}");
        // Nor does connecting the backend retry it for the limit.
        let start = Instant::now();
        let e = crate::ZkLock::connect(&format!("zk://127.0.0.1:{port}"))
            .await
            .unwrap_err();
        assert!(start.elapsed() < Duration::from_secs(1), "took {:?}", start.elapsed());
        assert!(matches!(e, LockError::Unavailable { .. }), "{e}");
        assert!(e.is_temporary(), "{e}");
        assert!(e.to_string().contains("refused the connection"), "{e}");
    }

    /// A session this client ends itself tells its leases lost before the close is sent,
    /// not when the client reports it closed: the late follow-up's last resort (ending the
    /// session to delete a lost create's node) did not, so a lease read `Held` while the
    /// server had deleted its node and could grant the key to another client (review). Here
    /// the server is paused, so the close is never answered: before, the lease still read
    /// held after `close` gave up waiting.
    #[tokio::test]
    async fn a_session_ended_by_this_client_tells_its_leases_lost_first() {
        let zk = fencelock_testkit::zk_server::ZkEnsemble::standalone();
        let lock = crate::ZkLock::connect(&format!("zk://127.0.0.1:{}?session_timeout=10s", zk.port(0)))
            .await
            .unwrap();
        let lease = fencelock_core::DistributedLock::acquire(
            &lock,
            "k",
            &fencelock_core::LockOptions::new().with_ttl(Duration::from_secs(5)),
        )
        .await
        .unwrap();
        let session = lock.session().await.unwrap();
        zk.pause(0);
        let closed = session
            .close(
                "ending the session to delete a lost create's node",
                Duration::from_millis(200),
            )
            .await;
        zk.resume(0);
        assert!(!closed, "a paused server answered the close");
        assert!(
            !lease.is_held(),
            "the lease read {:?} after its session was ended",
            lease.status()
        );
        match lease.status().state {
            fencelock_core::LeaseState::Lost(fencelock_core::LostReason::Backend(why)) => {
                assert!(why.contains("lost create"), "{why}")
            }
            other => panic!("{other:?}"),
        }
    }

    /// A proof's validity never outlives the earliest instant the leader may expire the
    /// session: T − τ/2 − g after the proof's send, for the server's `tickTime` τ (up to
    /// T/2) and the client's gap g between two sends while idle (a ping 3 ticks after the
    /// last send, sent on the next tick: 4 ticks; a tick is `connect_timeout`/8, or T/20
    /// when `connect_timeout` is over 3/5 of T). Before: three quarters of T, which
    /// outlived it by up to g (review).
    #[test]
    fn a_proof_never_outlives_the_leaders_earliest_expiry() {
        let ms = Duration::from_millis;
        // (T, connect_timeout, tickTime, g)
        let cases = [
            (ms(10_000), ms(7_000), ms(2_000), ms(2_000)), // the review's: a tick of 500 ms
            (ms(10_000), ms(7_000), ms(5_000), ms(2_000)),
            (ms(10_000), ms(5_000), ms(2_000), ms(2_500)), // a tick of 625 ms
            (ms(10_000), ms(5_000), ms(5_000), ms(2_500)),
            (ms(10_000), ms(1_000), ms(2_000), ms(500)), // the defaults
            (ms(10_000), ms(1_000), ms(5_000), ms(500)),
            (ms(4_000), ms(1_000), ms(2_000), ms(500)), // a stock server's minimum
            (ms(1_000), ms(1_000), ms(500), ms(200)),   // the waiting session's ask
            (ms(200), ms(1_000), ms(100), ms(40)),
            (ms(60_000), ms(1_000), ms(30_000), ms(500)),
            (ms(120_000), ms(0), ms(60_000), ms(16_000)), // the 10 s ping cap, and a tick
        ];
        for (t, connect, tick_time, gap) in cases {
            let earliest = t - tick_time / 2 - gap;
            let proven = proven_for_after_gaps(t, connect);
            assert!(
                proven <= earliest,
                "T={t:?}, connect_timeout={connect:?}, tickTime={tick_time:?}: the proof outlives the \
                 leader's earliest expiry by {:?} ({proven:?} > {earliest:?})",
                proven - earliest
            );
            assert!(proven >= t * 3 / 8, "T={t:?}, connect_timeout={connect:?}: {proven:?}");
        }
        assert!(proven_for_after_gaps(ms(10_000), ms(7_000)) <= ms(7_000));
    }

    /// With several servers, one that refuses is skipped for the next.
    #[tokio::test]
    async fn with_several_servers_a_refusing_one_is_skipped() {
        let zk = fencelock_testkit::zk_server::ZkEnsemble::standalone();
        let down = fencelock_testkit::ports::free_port();
        let lock = crate::ZkLock::connect(&format!("zk://127.0.0.1:{down},127.0.0.1:{}", zk.port(0)))
            .await
            .unwrap();
        assert!(lock.session_id().await.is_some());
    }
}
