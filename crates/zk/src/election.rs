//! Leader election on ZooKeeper ([`ZkElection`]): ephemeral sequential nodes with data,
//! lowest leads — the recipe of the ZooKeeper docs and Curator's `LeaderLatch`.
//!
//! The seat of election `NAME` is the lock on key `election.NAME`: candidates queue as
//! ephemeral sequential nodes `lock-GRANT-SEQ` under its node, the lowest leads, and the
//! term is the leader node's creation zxid (the lock's token). The leader's value is the
//! data of its own node (`v` + value; empty until written), so "my grant" is built in: a
//! proclaim writes our node by its path, which carries our grant id, and fails with
//! `NoNode` once the node is gone — an old session's node is never taken for ours
//! (CURATOR-696). Observers poll (see [`POLL_INTERVAL`]); a watch-driven observer is not
//! built yet and [`ElectionCapabilities::observe`] says so.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use fencelock_core::election::{
    polled, validate_value, Election, ElectionCapabilities, LeaderInfo, LeaderRead, Leadership, Observation, Observer,
    ProclaimOps,
};
use fencelock_core::options::validate_key;
use fencelock_core::{DistributedLock, FencingToken, LockError, LockOptions, LostReason, Result};

use crate::error::{failed, timed_out};
use crate::{names, ZkLock};

/// How often a ZooKeeper observer reads the seat.
pub const POLL_INTERVAL: Duration = Duration::from_millis(50);

/// How long `leader` waits for a just-elected leader to write its value before reporting
/// its term with an empty value.
pub const RECORD_WAIT: Duration = Duration::from_millis(200);

/// The election on a ZooKeeper ensemble.
#[derive(Debug, Clone)]
pub struct ZkElection {
    lock: ZkLock,
}

fn seat_key(name: &str) -> Result<String> {
    validate_key(name)?;
    let seat = format!("election.{name}");
    validate_key(&seat)?;
    Ok(seat)
}

/// The node of a grant, from the lock's grant id `SESSION:PATH`.
fn node_of(grant: &str) -> Option<&str> {
    grant.split_once(':').map(|(_, path)| path)
}

impl ZkElection {
    /// The election over `lock`'s ensemble and chroot.
    pub fn new(lock: ZkLock) -> Self {
        ZkElection { lock }
    }

    /// Connects as [`ZkLock::connect`].
    ///
    /// # Errors
    /// As [`ZkLock::connect`].
    ///
    /// # Cancel safety
    /// Cancel safe: dropping the future drops the half-made session.
    pub async fn connect(url: &str) -> Result<Self> {
        Ok(Self::new(ZkLock::connect(url).await?))
    }

    /// The node under which election `name`'s candidates queue, relative to the chroot
    /// (for operators and tests).
    ///
    /// # Errors
    /// [`LockError::InvalidInput`] for a bad name.
    pub fn seat_node(name: &str) -> Result<String> {
        Ok(names::key_dir(&seat_key(name)?))
    }

    /// Reads the lowest node's data and creation zxid once; `None` for an empty seat,
    /// `Some((term, None))` while its value is not written yet.
    async fn read_once(&self, dir: &str) -> Result<Option<(FencingToken, Option<Vec<u8>>)>> {
        let cfg = self.lock.cfg();
        let client = self.lock.session().await?.client()?;
        let look = async {
            match client.sync(dir).await {
                Ok(()) | Err(zookeeper_client::Error::NoNode) => {}
                Err(e) => return Err(e),
            }
            let children = match client.list_children(dir).await {
                Ok(c) => c,
                Err(zookeeper_client::Error::NoNode) => return Ok(None),
                Err(e) => return Err(e),
            };
            let mut queue: Vec<(i64, String)> = children
                .into_iter()
                .filter(|c| c.starts_with("lock-"))
                .filter_map(|c| names::sequence(&c).map(|s| (s, c)))
                .collect();
            queue.sort();
            // The lowest may vanish between the listing and the read: take the next.
            for (_, child) in queue {
                match client.get_data(&format!("{dir}/{child}")).await {
                    Ok((data, stat)) => {
                        let term = FencingToken::new(u64::try_from(stat.czxid).unwrap_or(0));
                        let value = data.strip_prefix(b"v").map(<[u8]>::to_vec);
                        return Ok(Some((term, value)));
                    }
                    Err(zookeeper_client::Error::NoNode) => continue,
                    Err(e) => return Err(e),
                }
            }
            Ok(None)
        };
        match tokio::time::timeout(cfg.timeout * 2, look).await {
            Ok(Ok(r)) => Ok(r),
            Ok(Err(e)) => Err(failed("reading the election's leader", &cfg.display, e)),
            Err(_) => Err(timed_out(
                "reading the election's leader",
                &cfg.display,
                cfg.timeout * 2,
            )),
        }
    }

    async fn read_leader(&self, dir: &str) -> Result<Option<LeaderInfo>> {
        let deadline = tokio::time::Instant::now() + RECORD_WAIT;
        // Bounded by RECORD_WAIT / 5 ms turns.
        loop {
            match self.read_once(dir).await? {
                None => return Ok(None),
                Some((term, Some(value))) => return Ok(Some(LeaderInfo { value, term })),
                Some((term, None)) if tokio::time::Instant::now() >= deadline => {
                    return Ok(Some(LeaderInfo {
                        value: Vec::new(),
                        term,
                    }))
                }
                Some(_) => tokio::time::sleep(Duration::from_millis(5)).await,
            }
        }
    }
}

#[async_trait]
impl Election for ZkElection {
    #[tracing::instrument(level = "debug", skip(self, value, opts), fields(backend = "zookeeper"))]
    async fn campaign(&self, name: &str, value: &[u8], opts: &LockOptions) -> Result<Leadership> {
        validate_value(value)?;
        let seat = seat_key(name)?;
        let lease = self.lock.acquire(&seat, opts).await?;
        let node = node_of(lease.grant().as_str())
            .ok_or_else(|| {
                LockError::backend(
                    "zookeeper",
                    "a grant id without its node path",
                    std::io::Error::other(lease.grant().to_string()),
                )
            })?
            .to_owned();
        let ops = Arc::new(ZkSeat {
            lock: self.lock.clone(),
            node,
        });
        // Dropped here, the lease is released in the background: no node is left.
        if !ops.proclaim(value).await? {
            return Err(LockError::LeaseLost {
                key: seat,
                token: lease.token(),
                reason: LostReason::NotHeld,
            });
        }
        tracing::debug!(name, term = %lease.token(), "elected");
        Ok(Leadership::new(name, lease, ops))
    }

    async fn leader(&self, name: &str) -> Result<Option<LeaderInfo>> {
        let dir = Self::seat_node(name)?;
        self.read_leader(&dir).await
    }

    async fn observe(&self, name: &str) -> Result<Observer> {
        let dir = Self::seat_node(name)?;
        let me = self.clone();
        Ok(polled(POLL_INTERVAL, move || {
            let (me, dir) = (me.clone(), dir.clone());
            async move { me.read_leader(&dir).await }
        }))
    }

    fn capabilities(&self) -> ElectionCapabilities {
        ElectionCapabilities {
            backend: "zookeeper",
            terms: self.lock.guarantees().tokens,
            leader: LeaderRead::Exact,
            observe: Observation::Polled {
                interval_ms: POLL_INTERVAL.as_millis() as u64,
            },
            dead_leader_blocks: "the session timeout (its ephemeral node goes with the session)",
        }
    }

    fn describe(&self) -> String {
        self.lock.describe()
    }

    async fn close(&self) -> Result<()> {
        self.lock.close().await
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
            Ok(Err(zookeeper_client::Error::NoNode)) => Ok(false),
            Ok(Err(e)) => Err(failed("proclaiming the election's value", &cfg.display, e)),
            Err(_) => Err(timed_out(
                "proclaiming the election's value",
                &cfg.display,
                cfg.timeout * 2,
            )),
        }
    }
}
