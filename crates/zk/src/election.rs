//! Leader election on ZooKeeper ([`ZkElection`]): ephemeral sequential nodes with data,
//! lowest leads — the recipe of the ZooKeeper docs and Curator's `LeaderLatch`.
//!
//! The seat of election `NAME` is the lock on key `election.NAME`: candidates queue as
//! ephemeral sequential nodes `lock-GRANT-lock-SEQ` under its node, the lowest leads, and the
//! term is the leader node's creation zxid (the lock's token). The leader's value is the
//! data of its own node (`v` + value; empty until written), so "my grant" is built in: a
//! proclaim writes our node by its path, which carries our grant id, and fails with
//! `NoNode` once the node is gone — an old session's node is never taken for ours
//! (CURATOR-696). The campaign, `leader` and the rest are the shared seat glue of
//! `fencelock_core::election::seat`.
//!
//! Observers are pushed by watches: each read sets a watch on the seat's children (a
//! candidate joins or leaves, the leader's node goes with its session) and a data watch
//! on the lowest node (a proclaim), and every event makes the observer read — and re-arm
//! — again. A seat node not created yet is watched for its creation; one created between
//! the listing and that check is listed again, so the first campaign of a new election is
//! seen at once, not at the 5 s fallback re-read (finding A1).

use std::sync::Arc;

use async_trait::async_trait;
use fencelock_core::election::seat::{SeatBackend, SeatRead, SeatState, SeatWatch};
use fencelock_core::election::{ElectionCapabilities, LeaderInfo, LeaderRead, Observation, ProclaimOps};
use fencelock_core::{DistributedLock, FencingToken, Lease, LockError, Result};
use zookeeper_client::{Client, Error as ZkError, OneshotWatcher};

use crate::error::{failed, timed_out};
use crate::{names, ZkLock};

/// The election on a ZooKeeper ensemble.
#[derive(Debug, Clone)]
pub struct ZkElection {
    lock: ZkLock,
}

/// Elections run in fencelock's own layout only. In a peer's layout (issue 17) the seat
/// would be shared with nobody: Curator's `LeaderLatch` queues `_c_UUID-latch-SEQ` nodes and
/// kazoo's `Election` its own lock's nodes, each with the leader's id as node data where
/// fencelock keeps `v` + value, and fencelock's leader read looks for its own layout's nodes.
/// A peer's election recipe therefore never excludes ours; refusing says so at once.
///
/// # Errors
/// [`LockError::InvalidConfig`] for `curator` and `kazoo`, naming the layout and the fix.
fn refuse_peer_layout(layout: crate::ZkLayout) -> Result<()> {
    if layout == crate::ZkLayout::Fencelock {
        return Ok(());
    }
    Err(LockError::invalid_config(format!(
        "leader election does not support layout={layout}: the peer's election recipe (Curator's LeaderLatch, kazoo's Election) uses other node names and node data, so it would not see fencelock's candidates nor fencelock its leader; run fencelock's elections in the default layout (drop `layout=`), under a path the peer does not use"
    )))
}

/// The node of a grant, from the lock's grant id `SESSION:PATH`.
fn node_of(grant: &str) -> Option<&str> {
    grant.split_once(':').map(|(_, path)| path)
}

impl ZkElection {
    /// The election over `lock`'s ensemble and chroot.
    ///
    /// # Errors
    /// [`LockError::InvalidConfig`] when `lock` uses a peer library's layout (`curator`,
    /// `kazoo`): their election recipes queue nodes of their own, so a peer's leader and
    /// ours would never exclude each other.
    pub fn new(lock: ZkLock) -> Result<Self> {
        refuse_peer_layout(lock.cfg().layout)?;
        Ok(ZkElection { lock })
    }

    /// Connects as [`ZkLock::connect`].
    ///
    /// # Errors
    /// [`LockError::InvalidConfig`] for a peer library's layout, before connecting (see
    /// [`ZkElection::new`]); otherwise as [`ZkLock::connect`].
    ///
    /// # Cancel safety
    /// Cancel safe: dropping the future drops the half-made session.
    pub async fn connect(url: &str) -> Result<Self> {
        refuse_peer_layout(crate::ZkConfig::from_url(url)?.layout)?;
        Self::new(ZkLock::connect(url).await?)
    }

    /// The node under which election `name`'s candidates queue, relative to the chroot
    /// (for operators and tests).
    ///
    /// # Errors
    /// [`LockError::InvalidInput`] for a bad name.
    pub fn seat_node(name: &str) -> Result<String> {
        Ok(names::key_dir(&fencelock_core::election::seat::seat_key(name)?))
    }

    /// Reads the lowest node's data and creation zxid once, bounded by twice the session
    /// timeout. With `watches`, sets the watches of an observer (and skips the `sync`: a
    /// watch event reaches this session before any read that follows it); without, syncs
    /// first so the read is as fresh as the leader's. A temporary
    /// [`LockError::Unavailable`] when the seat node never settled while the watch was set
    /// (see [`ARM_TRIES`]); the observer reads again after its retry pause.
    async fn read(&self, dir: &str, watches: Option<&mut Armed>) -> Result<SeatRead> {
        let cfg = self.lock.cfg();
        let client = self.lock.session().await?.client()?;
        match tokio::time::timeout(cfg.timeout * 2, read_lowest(&client, dir, watches)).await {
            Ok(Ok(Some(r))) => Ok(SeatRead::new(r)),
            Ok(Ok(None)) => Err(LockError::Unavailable {
                message: format!(
                    "the election's seat node {dir} appeared and vanished {ARM_TRIES} times while an observer set its watch"
                ),
                source: None,
            }),
            Ok(Err(e)) => Err(failed("reading the election's leader", &cfg.display, e)),
            Err(_) => Err(timed_out(
                "reading the election's leader",
                &cfg.display,
                cfg.timeout * 2,
            )),
        }
    }
}

/// How many times an observer's read lists a seat node that appears or vanishes between
/// the listing and the existence check before the read gives up (a container node removed
/// and made again so often within a few round trips: in practice never).
const ARM_TRIES: usize = 4;

/// What listing a seat found.
enum Listed {
    /// The seat node's children.
    Children(Vec<String>),
    /// No seat node (an observer's read has watched for its creation).
    Missing,
    /// The seat node came and went [`ARM_TRIES`] times while an observer armed its watch.
    Unsettled,
}

/// Lists the seat's candidates. For an observer (`watches`), sets the watch that the next
/// change of the seat fires: a children watch when the seat node is there, else an exists
/// watch for its creation. An exists check on a node that is there sets only a data watch,
/// which a new child does not fire; so a seat made between the listing and the check
/// (the first campaign of a new election) is listed again, with a children watch, instead
/// of being left to the fallback re-read (finding A1). Bounded by [`ARM_TRIES`].
async fn list_seat(client: &Client, dir: &str, watches: Option<&mut Armed>) -> std::result::Result<Listed, ZkError> {
    let Some(w) = watches else {
        return match client.sync(dir).await {
            Ok(()) | Err(ZkError::NoNode) => match client.list_children(dir).await {
                Ok(children) => Ok(Listed::Children(children)),
                Err(ZkError::NoNode) => Ok(Listed::Missing),
                Err(e) => Err(e),
            },
            Err(e) => Err(e),
        };
    };
    for _ in 0..ARM_TRIES {
        match client.get_and_watch_children(dir).await {
            Ok((children, _, watcher)) => {
                w.seat = Some(watcher);
                return Ok(Listed::Children(children));
            }
            Err(ZkError::NoNode) => {}
            Err(e) => return Err(e),
        }
        if let (None, watcher) = client.check_and_watch_stat(dir).await? {
            w.seat = Some(watcher);
            return Ok(Listed::Missing);
        }
        // Made in between: its data watch is dropped unused; list it again.
    }
    Ok(Listed::Unsettled)
}

/// The lowest candidate's state (`None`: the seat never settled, see [`Listed::Unsettled`]);
/// the lowest may vanish between the listing and the read, then the next is taken
/// (bounded by the listing).
async fn read_lowest(
    client: &Client,
    dir: &str,
    mut watches: Option<&mut Armed>,
) -> std::result::Result<Option<SeatState>, ZkError> {
    let children = match list_seat(client, dir, watches.as_deref_mut()).await? {
        Listed::Children(c) => c,
        Listed::Missing => return Ok(Some(SeatState::Empty)),
        Listed::Unsettled => return Ok(None),
    };
    // Every sequenced child, whatever library made it, as the lock orders them
    // (`queue::position`): a Curator or kazoo lock node on the seat holds it, and skipping
    // it named the candidate waiting behind it as leader.
    // Oldest first across the sequence counter's wrap, as there.
    for child in names::queue_order(children) {
        let path = format!("{dir}/{child}");
        let read = match watches.as_deref_mut() {
            Some(w) => client.get_and_watch_data(&path).await.map(|(data, stat, watcher)| {
                w.lowest = Some(watcher);
                (data, stat)
            }),
            None => client.get_data(&path).await,
        };
        match read {
            Ok((data, stat)) => {
                let term = FencingToken::new(u64::try_from(stat.czxid).unwrap_or(0));
                if !child.starts_with("lock-") {
                    // Another library's node: its data is not a value of ours (Curator
                    // writes the host's address), and it will never be written as one.
                    return Ok(Some(SeatState::Leader(LeaderInfo {
                        value: Vec::new(),
                        term,
                    })));
                }
                return Ok(Some(match data.strip_prefix(b"v") {
                    Some(value) => SeatState::Leader(LeaderInfo {
                        value: value.to_vec(),
                        term,
                    }),
                    None => SeatState::Unwritten(term),
                }));
            }
            Err(ZkError::NoNode) => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(Some(SeatState::Empty))
}

#[async_trait]
impl SeatBackend for ZkElection {
    fn seat_lock(&self) -> &dyn DistributedLock {
        &self.lock
    }

    fn election_capabilities(&self) -> ElectionCapabilities {
        ElectionCapabilities {
            backend: "zookeeper",
            terms: self.lock.guarantees().tokens,
            leader: LeaderRead::Exact,
            observe: Observation::Native,
            dead_leader_blocks: "the session timeout (its ephemeral node goes with the session)",
        }
    }

    async fn seat_grant(&self, _name: &str, _seat: &str, lease: &Lease) -> Result<Arc<dyn ProclaimOps>> {
        let node = node_of(lease.grant().as_str()).ok_or_else(|| {
            LockError::backend(
                "zookeeper",
                "a grant id without its node path",
                std::io::Error::other(lease.grant().to_string()),
            )
        })?;
        Ok(Arc::new(ZkSeat {
            lock: self.lock.clone(),
            node: node.to_owned(),
        }))
    }

    async fn read_seat(&self, _name: &str, seat: &str) -> Result<SeatRead> {
        self.read(&names::key_dir(seat), None).await
    }

    async fn seat_watch(&self, _name: &str, seat: &str) -> Result<Box<dyn SeatWatch>> {
        Ok(Box::new(ZkWatch {
            election: self.clone(),
            dir: names::key_dir(seat),
            armed: Armed::default(),
        }))
    }
}

/// One leader's node.
struct ZkSeat {
    lock: ZkLock,
    node: String,
}

#[async_trait]
impl ProclaimOps for ZkSeat {
    async fn proclaim(&self, value: &[u8]) -> Result<bool> {
        let cfg = self.lock.cfg();
        let client = self.lock.session().await?.client()?;
        let mut data = Vec::with_capacity(value.len() + 1);
        data.push(b'v');
        data.extend_from_slice(value);
        match tokio::time::timeout(cfg.timeout * 2, client.set_data(&self.node, &data, None)).await {
            Ok(Ok(_)) => Ok(true),
            Ok(Err(ZkError::NoNode)) => Ok(false),
            Ok(Err(e)) => Err(failed("proclaiming the election's value", &cfg.display, e)),
            Err(_) => Err(timed_out(
                "proclaiming the election's value",
                &cfg.display,
                cfg.timeout * 2,
            )),
        }
    }
}

/// An observer's watches on a seat: its node's children (or its creation) and the
/// lowest candidate's data.
#[derive(Default)]
struct Armed {
    seat: Option<OneshotWatcher>,
    lowest: Option<OneshotWatcher>,
}

struct ZkWatch {
    election: ZkElection,
    dir: String,
    armed: Armed,
}

#[async_trait]
impl SeatWatch for ZkWatch {
    async fn arm_and_read(&mut self) -> Result<SeatRead> {
        self.armed = Armed::default();
        self.election.read(&self.dir, Some(&mut self.armed)).await
    }

    async fn changed(&mut self) {
        async fn fired(watch: Option<OneshotWatcher>) {
            match watch {
                Some(w) => drop(w.changed().await),
                None => std::future::pending().await,
            }
        }
        let Armed { seat, lowest } = std::mem::take(&mut self.armed);
        // Any one event (a session event too) is a change worth a read.
        tokio::select! {
            () = fired(seat) => {}
            () = fired(lowest) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail by panicking

    use super::*;
    use fencelock_testkit::zk_server::ZkEnsemble;

    /// Issue 17: an election in a peer's lock layout would neither be seen by that peer's
    /// election recipe (Curator's `LeaderLatch` queues `_c_UUID-latch-SEQ`, kazoo's `Election`
    /// runs its own lock and stores the leader's id as node data) nor read back by fencelock's
    /// own leader read, which looks for the default layout's nodes: refused at connect, with
    /// a running server, as a configuration error (CLI exit 78) that says what to do.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn peer_layouts_are_refused_for_elections() {
        let zk = ZkEnsemble::standalone();
        for layout in ["curator", "kazoo"] {
            let e = ZkElection::connect(&zk.url("/elections", &format!("layout={layout}")))
                .await
                .err()
                .unwrap_or_else(|| panic!("layout={layout}: an election was made"));
            assert!(matches!(e, LockError::InvalidConfig { .. }), "{e}");
            let text = e.to_string();
            assert!(text.contains(&format!("layout={layout}")), "{text}");
            assert!(text.contains("default layout"), "{text}");
        }
        // The default layout still elects.
        let ok = ZkElection::connect(&zk.url("/elections", "")).await.unwrap();
        ok.lock.close().await.unwrap();
    }
}
