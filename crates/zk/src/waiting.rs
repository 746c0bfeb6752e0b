//! The waiting session (issue 14: a waiter that dies while queued should cost the others
//! seconds, not the session timeout).
//!
//! A lock node is an ephemeral node of the instance's session, which must outlive a pause
//! of the session timeout, and it cannot move to another session (an ephemeral node
//! belongs to its creator for its whole life). So a waiter proves it is alive apart from
//! its node: the instance opens a second session with a short timeout — asked
//! [`ASKED`], raised by the server to its minimum (2 × `tickTime`: 4 s on a stock
//! server) — owning one ephemeral **marker** `CHROOT/%waiting/m-SESSION`, and the data of
//! each of its waiting nodes names that marker ([`reference`](Waiting::reference)). When
//! the instance dies or pauses past that timeout, the server deletes the marker, and a
//! waiter of ours that watches a node naming it removes the node — by a delete guarded by
//! the version at which it named the marker, so a node its owner *claimed* (its data
//! rewritten after its grant, see `grant.rs`) is never removed.
//!
//! The session is opened by the first wait of the instance that needs it, kept alive while
//! some node of ours names it and one timeout more (so a busy instance does not open one
//! per wait), and closed after that. A keeper task proves the session every third of the
//! timeout by a write that checks the marker's version (a `multi` of one `check`, which
//! leaves the marker as it is): each answer's send instant is a proof that the server
//! heard the session then,
//! and a grant on a named node is valid no longer than the last proof + three quarters of
//! the timeout less the client's largest gap between sends ([`proof_lasts`]) — never past
//! the moment the leader could delete the marker; a grant that would be left with under
//! half its warranted validity claims its node first (`grant::settle`).
//!
//! The marker stands for "this instance can act on its waits", and acting takes the
//! *main* session: a waiter watches the nodes before its own, removes a dead waiter's node
//! and claims its grant through it. So a proof counts only while the main session is
//! connected, and when the waiting session keeps being answered while the main one is
//! disconnected ([`CUT_PROOFS`] answered writes, unanswered ones in between not
//! counting, with the main session not seen connected), the keeper ends the waiting session:
//! its marker goes, the waiter behind each of our nodes removes it — and the nodes
//! before ours whose removal was ours to make (a dead waiter right before ours: each
//! waiter watches only the nearest marker before it) — and our waits queue again once
//! the main session is back. Without it, a waiter whose main connection was cut while its
//! waiting session stayed up kept its place, and a dead waiter's node before it, until
//! one of their sessions expired (`session_timeout`).

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio::time::Instant;
use zookeeper_client::{Acls, Client, CreateMode, SessionState, StateWatcher};

use crate::config::ZkConfig;
use crate::session::Session;

/// The session timeout asked for the waiting session: the server raises it to its minimum.
pub(crate) const ASKED: Duration = Duration::from_secs(1);

/// The data of a node whose owner proves it is alive by a marker: this, then the marker's
/// path on the server (chroot included).
pub(crate) const PREFIX: &[u8] = b"fencelock-waiting:";

/// How many proofs (checks) of the marker the waiting session may get answered while the
/// instance's main session stays disconnected (unanswered writes in between do not count
/// and do not start the count again) before the keeper ends it (its waits give up their places):
/// they span a whole waiting timeout, so the main client has that long to connect again
/// after a failover that cut both sessions before its waits lose their places.
pub(crate) const CUT_PROOFS: u32 = 4;

/// The markers' parent under the chroot: a name no key of the default layout has (a `%`
/// of a key is always escaped as `%25`); the peer layouts refuse keys under it.
pub(crate) const DIR: &str = "/%waiting";

/// One waiting session and its marker.
pub(crate) struct Waiting {
    client: std::sync::Mutex<Option<Arc<Client>>>,
    states: StateWatcher,
    marker: String,
    reference: Vec<u8>,
    timeout: Duration,
    /// The connect timeout the waiting session's client was given: it sets the client's
    /// ping schedule ([`proof_lasts`]).
    connect_timeout: Duration,
    proof: std::sync::Mutex<Instant>,
    /// Users (nodes naming the marker) and since when there are none.
    users: std::sync::Mutex<(usize, Instant)>,
    ended: AtomicBool,
    /// The main session our named nodes belong to: that of the latest use by a usable
    /// session (see [`enter`](Self::enter)).
    main: std::sync::Mutex<Weak<Session>>,
}

impl std::fmt::Debug for Waiting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Waiting")
            .field("marker", &self.marker)
            .finish_non_exhaustive()
    }
}

/// A node of ours that names the marker: keeps the waiting session open.
pub(crate) struct WaitingUse(Arc<Waiting>);

impl WaitingUse {
    /// The data that names the marker.
    pub fn reference(&self) -> &[u8] {
        &self.0.reference
    }

    /// The end of a grant on a node naming the marker: the last proof + [`proof_lasts`]
    /// (three quarters of the timeout less the client's largest gap between sends).
    pub fn valid_until(&self) -> Instant {
        *self.0.proof.lock().unwrap_or_else(|p| p.into_inner()) + proof_lasts(self.0.timeout, self.0.connect_timeout)
    }
}

impl Drop for WaitingUse {
    fn drop(&mut self) {
        let mut users = self.0.users.lock().unwrap_or_else(|p| p.into_inner());
        users.0 = users.0.saturating_sub(1);
        if users.0 == 0 {
            users.1 = Instant::now();
        }
    }
}

impl Waiting {
    fn alive(&self) -> bool {
        !self.ended.load(Ordering::Acquire)
            && !matches!(
                self.states.peek_state(),
                SessionState::Expired | SessionState::Closed | SessionState::AuthFailed
            )
    }

    /// `false` while the main session (of the latest use) is not connected: the instance
    /// cannot act on its waits. A main session dropped or ended (expired, closed) since has
    /// no nodes left: `true`.
    fn main_connected(&self) -> bool {
        let main = self.main.lock().unwrap_or_else(|p| p.into_inner()).upgrade();
        main.is_none_or(|m| !m.is_usable() || m.is_connected())
    }

    /// A use by a node of `main`, unless the session ended (checked under the users'
    /// lock, which the keeper takes to end it).
    fn enter(self: &Arc<Self>, main: &Arc<Session>) -> Option<WaitingUse> {
        let mut users = self.users.lock().unwrap_or_else(|p| p.into_inner());
        // A session whose last proof is too old may have expired without the client
        // knowing yet (a paused process): a node naming its marker could be removed at once.
        let proof = *self.proof.lock().unwrap_or_else(|p| p.into_inner());
        if !self.alive() || proof + self.timeout / 2 < Instant::now() {
            return None;
        }
        users.0 += 1;
        // The main session is replaced only by a usable one, and a usable one in place only
        // by a connected one: a use from an older session (expired, or disconnected and
        // about to be) that comes after a use from the instance's new session must not
        // stand for it, or `main_connected` would follow the old one and the keeper end the
        // waiting session while the real main session is fine.
        let mut current = self.main.lock().unwrap_or_else(|p| p.into_inner());
        let replace = main.is_usable() && (main.is_connected() || current.upgrade().is_none_or(|m| !m.is_usable()));
        if replace {
            *current = Arc::downgrade(main);
        }
        drop(current);
        Some(WaitingUse(Arc::clone(self)))
    }

    fn client(&self) -> Option<Arc<Client>> {
        self.client.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Whether the last proof is a whole timeout old: every grant it bounded (the proof +
    /// [`proof_lasts`]) has run out, so the session may end and its marker go.
    fn last_proof_outlived(&self) -> bool {
        let proof = *self.proof.lock().unwrap_or_else(|p| p.into_inner());
        Instant::now() >= proof + self.timeout
    }

    /// Ends the session: the server deletes the marker at once.
    fn end(&self) {
        self.ended.store(true, Ordering::Release);
        drop(self.client.lock().unwrap_or_else(|p| p.into_inner()).take());
    }

    /// Opens a waiting session and creates its marker. `Err(true)` when it would not be
    /// shorter than the instance's session (nothing to gain), `Err(false)` when it could
    /// not be made in time.
    async fn open(cfg: &ZkConfig) -> std::result::Result<Arc<Waiting>, bool> {
        let connect_string = cfg.connect_string();
        let connect = Client::connector()
            .with_session_timeout(ASKED.min(cfg.session_timeout))
            .with_connection_timeout(cfg.connect_timeout)
            .connect(&connect_string);
        let client = match tokio::time::timeout(cfg.connect_limit(), connect).await {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "no waiting session: a dead waiter costs the session timeout");
                return Err(false);
            }
            Err(_) => return Err(false),
        };
        let timeout = client.session_timeout();
        if timeout >= cfg.session_timeout {
            return Err(true);
        }
        let marker = format!("{DIR}/m-{:x}", client.session_id().0);
        let container = CreateMode::Container.with_acls(Acls::anyone_all());
        let ephemeral = CreateMode::Ephemeral.with_acls(Acls::anyone_all());
        let mut proof = None;
        for _ in 0..3 {
            let sent = Instant::now();
            match tokio::time::timeout(cfg.timeout, client.create(&marker, b"", &ephemeral)).await {
                Ok(Ok(_)) => {
                    proof = Some(sent);
                    break;
                }
                Ok(Err(zookeeper_client::Error::NoNode)) => {
                    match tokio::time::timeout(cfg.timeout, client.create(DIR, b"", &container)).await {
                        Ok(Ok(_) | Err(zookeeper_client::Error::NodeExists)) => {}
                        _ => return Err(false),
                    }
                }
                _ => return Err(false),
            }
        }
        let proof = proof.ok_or(false)?;
        let reference = [PREFIX, cfg.chroot.trim_end_matches('/').as_bytes(), marker.as_bytes()].concat();
        Ok(Arc::new(Waiting {
            states: client.state_watcher(),
            client: std::sync::Mutex::new(Some(Arc::new(client))),
            marker,
            reference,
            timeout,
            connect_timeout: cfg.connect_timeout,
            proof: std::sync::Mutex::new(proof),
            users: std::sync::Mutex::new((0, Instant::now())),
            ended: AtomicBool::new(false),
            main: std::sync::Mutex::new(Weak::new()),
        }))
    }
}

/// Proves the session every third of the timeout by a `check` of the marker through the
/// leader (each answer a new proof, while the main
/// session is connected) while some node names it, and for one timeout after the last;
/// then ends the session. Ends at once when the marker or the session is gone, and when
/// the main session stayed disconnected over [`CUT_PROOFS`] answered writes (see the
/// module's documentation) — then only once the last proof is a whole timeout old, so
/// every grant it bounded (last proof + [`proof_lasts`]) has run out before
/// the marker goes and a waiter behind may remove its node.
async fn keep(waiting: Arc<Waiting>, request_timeout: Duration) {
    let period = waiting.timeout / 3;
    // Proofs answered while the main session was disconnected, since it was last seen
    // connected at a proof of the marker (answered or not).
    let mut cut = 0u32;
    loop {
        tokio::time::sleep(period).await;
        {
            let users = waiting.users.lock().unwrap_or_else(|p| p.into_inner());
            if !waiting.alive() || (users.0 == 0 && users.1.elapsed() >= waiting.timeout) {
                waiting.ended.store(true, Ordering::Release);
                break;
            }
        }
        let Some(client) = waiting.client() else { break };
        let sent = Instant::now();
        // A write, not a read: a read is answered by the follower the session is on, from
        // its own copy, and a follower cut off from the leader keeps answering reads for
        // `syncLimit` ticks (10 s on a stock server) while the leader expires the session
        // and deletes the marker (review). A write goes through the leader, which checks
        // the session first: answered, the leader held the session alive after `sent`.
        // The write is a `multi` holding one `check` of the marker's version (never
        // changed: 0 from its create): a transaction through the leader like a `setData`,
        // but the marker is left as it is, so the watch of the waiter behind it fires only
        // when it goes (a `setData` fired it at every proof, and the waiter sent an
        // `exists` to watch it again: a request per waiter per proof, growing with them).
        let proved = async {
            let mut check = client.new_multi_writer();
            check.add_check_version(&waiting.marker, 0)?;
            check.commit().await.map_err(zookeeper_client::Error::from)
        };
        match tokio::time::timeout(request_timeout.min(period), proved).await {
            Ok(Ok(_)) if waiting.main_connected() => {
                cut = 0;
                let mut proof = waiting.proof.lock().unwrap_or_else(|p| p.into_inner());
                *proof = (*proof).max(sent);
            }
            // The ensemble answers this session but not the main one: our waits cannot act
            // (watch, remove a dead waiter's node, claim). No proof: a grant is not made
            // valid for longer on it, and no new node names the marker.
            Ok(Ok(_)) => {
                cut += 1;
                if cut >= CUT_PROOFS && waiting.last_proof_outlived() {
                    tracing::info!(
                        marker = %waiting.marker,
                        "the main session stays disconnected while the waiting session is served: \
                         ending the waiting session, our waits give up their places"
                    );
                    break;
                }
            }
            // The marker is gone: the session expired, no earlier than the leader's
            // earliest expiry that bounded every grant on it.
            Ok(Err(zookeeper_client::Error::NoNode)) => break,
            // Written by someone else (an operator's `set`): it can never be proved again,
            // but ending the session now would delete it while grants bounded by the last
            // proof may still be valid, and the waiter behind could remove their nodes
            // (review). No proof from here on; the session ends once the last proof is a
            // whole timeout old, as when the main session stays cut.
            Ok(Err(zookeeper_client::Error::BadVersion)) => {
                if waiting.last_proof_outlived() {
                    tracing::warn!(
                        marker = %waiting.marker,
                        "the waiting marker was written by someone else: ending the waiting session, \
                         our waits give up their places"
                    );
                    break;
                }
            }
            Ok(Err(zookeeper_client::Error::SessionExpired | zookeeper_client::Error::ClientClosed)) => break,
            // No answer: the proof ages, and grants claim their node at their turn. The
            // count starts again only if the main session is connected now (after a
            // failover that cut both sessions, the main one is counted from its first
            // answered write with main down again). Not on any unanswered write: with
            // occasional slow writes while the main session stays down, the count never
            // reached CUT_PROOFS and our places were kept until a session expired.
            _ => {
                if waiting.main_connected() {
                    cut = 0;
                }
            }
        }
    }
    waiting.end();
}

/// How long a proof of the waiting session keeps its marker alive, counted from the
/// proof's send instant t, for the waiting session's (negotiated) `timeout` T_w and the
/// `connect_timeout` its client was given: ¾ × T_w less the client's largest gap between
/// two sends g ([`crate::session::proven_for_after_gaps`], the main session's rule, with
/// the waiting session's own T and schedule).
///
/// The derivation, for this session:
///
/// * **What a proof shows.** The keeper's `check` is a write: the follower forwards it, the
///   leader's `PrepRequestProcessor` checks the session (refused once expired or closing),
///   and the follower answers only after the commit. The leader does not count the
///   forwarded request as activity (`LeaderZooKeeperServer.submitLearnerRequest` skips the
///   touch); it learns of the session only from the follower's ping replies.
/// * **The leader's lag.** The leader pings each follower every `tickTime`/2 (τ/2); each
///   reply names the sessions that sent anything since the last. Its `SessionTrackerImpl`
///   then expires the session T_w after the last such reply that named it — *rounded up*
///   to the next multiple of τ (`ExpiryQueue.update`: `(now + T_w)/τ + 1` intervals, and
///   `poll` hands a bucket out only once its time has come): later, never earlier. The
///   follower may be cut off from the leader right after the proof, even one way only
///   (follower → leader dead: the leader's last processed reply may then be `syncLimit`
///   ticks old, so the answer reaching the client proves nothing about the replies by
///   itself). What counts is the forwarded `check`: it reached the leader (it was
///   committed) at some r′ ≥ t, over the follower's one TCP connection to the leader, so
///   every ping reply the follower sent before r′ reached the leader before it; the
///   follower answers the leader's pings every τ/2, so one of those replies was sent no
///   earlier than r′ − τ/2 (less a little jitter, which the extra tick in g absorbs), and
///   it named the session if the client sent anything in the τ/2 before it, else the last
///   reply that did came at or after the client's last send before it. So the leader
///   counted from no earlier than t − τ/2 − g, and deletes the marker no earlier than
///   t + T_w − τ/2 − g (review helper-186 corrected the argument; the bound stands).
/// * **τ.** The waiting session asks [`ASKED`] (1 s) and the server clamps it to
///   [2τ, 20τ] (the default `minSessionTimeout`/`maxSessionTimeout`): granted as asked,
///   2τ ≤ 1 s = T_w; raised, T_w = 2τ. Either way τ/2 ≤ T_w/4 — the client cannot read
///   τ, so this is the bound (a `minSessionTimeout` configured below 2τ is not covered).
/// * **g, this session's send schedule.** zookeeper-client 0.11.2 (`session/mod.rs`,
///   `calc_tick_timeout`, `reset_timeout`, `serve_session`) works on a tick of
///   `connect_timeout`/8, or T_w/20 when `connect_timeout` is over 3/5 of T_w (the default
///   1 s `connect_timeout` against the test server's 1 s: 50 ms; against a stock server's
///   4 s: 125 ms); it pings once nothing was sent for 3 ticks, checked every tick, so sends
///   are at most 4 ticks apart, plus one tick allowed for a late ping answer (the next ping
///   waits for it) and varying one-way delays: g = 5 ticks ([`crate::session::largest_send_gap`]).
///   The keeper's own sends, every T_w/3 (more than 6 ticks), close no gap the pings leave
///   open: they are not counted.
///
/// So a proof holds for T_w − T_w/4 − g: 500 ms on the test server (T_w 1 s, g 250 ms),
/// 2.375 s on a stock one (4 s, 625 ms). Before, ¾ × T_w alone (750 ms, 3 s) outlived the
/// earliest expiry by g whenever τ was the largest the timeout allows
/// (`a_marker_proof_never_outlives_the_leaders_earliest_expiry`). With proofs every T_w/3
/// a grant on the push is left between ¾ T_w − g − T_w/3 and ¾ T_w − g of it (167–500 ms
/// on the test server): `grant::settle` claims the node first when that is under half
/// of what the lease's TTL warrants.
pub(crate) fn proof_lasts(timeout: Duration, connect_timeout: Duration) -> Duration {
    crate::session::proven_for_after_gaps(timeout, connect_timeout)
}

/// The most lock paths [`WaitingSlot`] remembers as contended; beyond it they are all
/// forgotten (a forgotten path costs its next wait one naming `setData`).
const MAX_CONTENDED: usize = 1024;

/// The instance's waiting session, opened on demand.
#[derive(Debug, Default)]
pub(crate) struct WaitingSlot {
    current: tokio::sync::Mutex<Weak<Waiting>>,
    /// The server would not make it shorter than the session: never tried again.
    useless: AtomicBool,
    /// The lock paths whose last acquire through this instance waited: only their creates
    /// name the marker. A create that names it and turns out first in line is granted
    /// with its validity capped by the waiting session until a write claims it; an
    /// acquire of a path that was not contended names nothing at its create, so when it is
    /// first it gets the full validity and never needs a claim (review of issue 14: every
    /// create of an instance with a waiting session named it).
    contended: std::sync::Mutex<HashSet<String>>,
}

impl WaitingSlot {
    /// A use of the live waiting session for a create under `dir`, if one is open and the
    /// last acquire of `dir` through this instance waited (never opens one: for a create,
    /// which must not wait for a connect on the uncontended path). Never waits either:
    /// while another wait holds the slot to open a session (a connect, up to the connect
    /// bound, and the marker's create), the create goes out naming nothing — its wait, if
    /// it has one, names the marker then (review: every acquire of the instance stalled
    /// behind the connect).
    pub async fn current(&self, dir: &str, main: &Arc<Session>) -> Option<WaitingUse> {
        if !self.contended.lock().unwrap_or_else(|p| p.into_inner()).contains(dir) {
            return None;
        }
        self.current.try_lock().ok()?.upgrade()?.enter(main)
    }

    /// Notes whether an acquire under `dir` had to wait (its first listing showed a node
    /// before its own): the next create there names the marker only if it did.
    pub fn note(&self, dir: &str, waited: bool) {
        let mut contended = self.contended.lock().unwrap_or_else(|p| p.into_inner());
        if !waited {
            contended.remove(dir);
        } else if !contended.contains(dir) {
            if contended.len() >= MAX_CONTENDED {
                contended.clear();
            }
            contended.insert(dir.to_owned());
        }
    }

    /// A use of the live waiting session by a node of `main`, opened if there is none.
    pub async fn enter(&self, cfg: &ZkConfig, main: &Arc<Session>) -> Option<WaitingUse> {
        if self.useless.load(Ordering::Relaxed) {
            return None;
        }
        let mut current = self.current.lock().await;
        if let Some(used) = current.upgrade().and_then(|w| w.enter(main)) {
            return Some(used);
        }
        let waiting = match Waiting::open(cfg).await {
            Ok(w) => w,
            Err(useless) => {
                if useless {
                    self.useless.store(true, Ordering::Relaxed);
                }
                return None;
            }
        };
        let used = waiting.enter(main);
        *current = Arc::downgrade(&waiting);
        tokio::spawn(keep(waiting, cfg.timeout));
        used
    }

    /// Ends the open waiting session, if any (the instance's `close`).
    pub async fn close(&self) {
        if let Some(w) = self.current.lock().await.upgrade() {
            w.end();
        }
    }
}

/// The marker a node's data names, as a path relative to `chroot` (`None`: the node names
/// none — a foreign library's, a node that was never waiting or was claimed — or one
/// outside our chroot, which this client cannot watch).
pub(crate) fn named_marker(data: &[u8], chroot: &str) -> Option<String> {
    let path = std::str::from_utf8(data.strip_prefix(PREFIX)?).ok()?;
    let chroot = chroot.trim_end_matches('/');
    let rest = path.strip_prefix(chroot)?;
    (rest.starts_with('/') && rest.len() > 1).then(|| rest.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The leader's earliest expiry of the waiting session after a proof sent at 0: its
    /// timeout T, less the half `tickTime` τ/2 its follower's ping replies lag, less the
    /// client's largest gap between two sends g — the waiting session's own schedule: a
    /// ping once nothing was sent for 3 ticks, checked each tick (4 ticks), one tick more
    /// for a late ping answer; the keeper's proofs, every T/3, come less often than that
    /// and shorten no gap. A tick is `connect_timeout`/8, or T/20 when `connect_timeout`
    /// is over 3/5 of T. (T, connect_timeout, tickTime, g), g worked out by hand.
    #[test]
    fn a_marker_proof_never_outlives_the_leaders_earliest_expiry() {
        let ms = Duration::from_millis;
        let cases = [
            // The waiting session's 1 s ask on a server with tickTime 500 ms (its minimum
            // 1 s): tick 50 ms (1 s connect_timeout > 600 ms), g = 5 ticks.
            (ms(1_000), ms(1_000), ms(500), ms(250)),
            // The test server (tickTime 100 ms) grants the 1 s asked.
            (ms(1_000), ms(1_000), ms(100), ms(250)),
            // A stock server (tickTime 2 s) raises it to 4 s: tick 125 ms.
            (ms(4_000), ms(1_000), ms(2_000), ms(625)),
            // The hand-off test's 5 s connect_timeout: over 3/5 of 1 s, tick 50 ms.
            (ms(1_000), ms(5_000), ms(500), ms(250)),
            // A short connect_timeout: tick 25 ms.
            (ms(4_000), ms(200), ms(2_000), ms(125)),
        ];
        for (t, connect, tick_time, gap) in cases {
            let earliest = t - tick_time / 2 - gap;
            let lasts = proof_lasts(t, connect);
            assert!(
                lasts <= earliest,
                "T={t:?}, connect_timeout={connect:?}, tickTime={tick_time:?}: a marker-named grant \
                 outlives the leader's earliest expiry of the marker by {:?} ({lasts:?} > {earliest:?})",
                lasts - earliest
            );
        }
    }

    #[test]
    fn markers_are_read_relative_to_the_chroot() {
        let data = [PREFIX, b"/fencelock/%waiting/m-1f"].concat();
        assert_eq!(named_marker(&data, "/fencelock").as_deref(), Some("/%waiting/m-1f"));
        assert_eq!(named_marker(&data, "").as_deref(), Some("/fencelock/%waiting/m-1f"));
        assert_eq!(named_marker(&data, "/other"), None);
        assert_eq!(named_marker(&data, "/fence"), None);
        assert_eq!(named_marker(b"10.0.0.1", ""), None); // Curator's default data
        assert_eq!(named_marker(b"", ""), None);
    }
}
