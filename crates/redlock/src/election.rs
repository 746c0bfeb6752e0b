//! Leader election over Redlock ([`RedlockElection`]): best effort, and said so.
//!
//! The seat of election `NAME` is the Redlock lock on key `election.NAME` (the term is its
//! best-effort token). The value is written on every node by the single-server backend's
//! `proclaim_on` script, which writes only where that node's lock key holds our grant id;
//! a proclaim stands when a quorum wrote it. `leader` asks every node and reports the
//! leader a quorum agrees on — a best guess, as Redlock's own guarantees are conditional on
//! timing ([`LeaderRead::BestEffort`]). There is no `observe`: no node's view is
//! authoritative, so it fails with `GuaranteeNotMet` ([`Observation::Unavailable`]) rather
//! than give a feed that could go back.

use std::sync::Arc;

use async_trait::async_trait;
use fencelock_core::election::{
    validate_value, Election, ElectionCapabilities, LeaderInfo, LeaderRead, Leadership, Observation, Observer,
    ProclaimOps,
};
use fencelock_core::options::validate_key;
use fencelock_core::{DistributedLock, LockError, LockOptions, LostReason, Result};
use fencelock_redis::{proclaim_on, read_seat_on, NodeSeat};

use crate::quorum::fan_out;
use crate::RedlockLock;

/// The election over Redlock's independent Redis nodes.
#[derive(Debug, Clone)]
pub struct RedlockElection {
    lock: RedlockLock,
}

fn seat_key(name: &str) -> Result<String> {
    validate_key(name)?;
    let seat = format!("election.{name}");
    validate_key(&seat)?;
    Ok(seat)
}

impl RedlockElection {
    /// The election over `lock`'s nodes.
    pub fn new(lock: RedlockLock) -> Self {
        RedlockElection { lock }
    }

    /// Builds from a `redlock://` URL, as [`RedlockLock::connect`].
    ///
    /// # Errors
    /// As [`RedlockLock::connect`].
    ///
    /// # Cancel safety
    /// Cancel safe.
    pub async fn connect(url: &str) -> Result<Self> {
        Ok(Self::new(RedlockLock::connect(url).await?))
    }
}

#[async_trait]
impl Election for RedlockElection {
    #[tracing::instrument(level = "debug", skip(self, value, opts), fields(backend = "redlock"))]
    async fn campaign(&self, name: &str, value: &[u8], opts: &LockOptions) -> Result<Leadership> {
        validate_value(value)?;
        let seat = seat_key(name)?;
        let lease = self.lock.acquire(&seat, opts).await?;
        let ops = Arc::new(RedlockSeat {
            lock: self.lock.clone(),
            name: name.to_owned(),
            grant: lease.grant().to_string(),
            term: lease.token().get(),
        });
        // Dropped here, the lease is released in the background: no seat is left.
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
        seat_key(name)?;
        let per_node = self.lock.config().per_node_timeout;
        let answers = fan_out(&self.lock.inner.nodes, per_node, |_, n| {
            let name = name.to_owned();
            async move { read_seat_on(&n, &name).await }
        })
        .await;
        let quorum = self.lock.config().quorum();
        let mut votes: Vec<(LeaderInfo, usize)> = Vec::new();
        let mut empty = 0;
        for a in answers.into_iter().flatten() {
            match a {
                NodeSeat::Leader(l) => match votes.iter_mut().find(|(v, _)| *v == l) {
                    Some((_, n)) => *n += 1,
                    None => votes.push((l, 1)),
                },
                NodeSeat::Empty => empty += 1,
                NodeSeat::Unwritten(_) => {}
            }
        }
        if let Some((l, _)) = votes.into_iter().find(|(_, n)| *n >= quorum) {
            return Ok(Some(l));
        }
        if empty >= quorum {
            return Ok(None);
        }
        Err(LockError::Unavailable {
            message: format!("no quorum of {quorum} nodes agrees on the leader of `{name}`"),
            source: None,
        })
    }

    async fn observe(&self, _name: &str) -> Result<Observer> {
        Err(LockError::GuaranteeNotMet {
            backend: "redlock",
            message: "observe is unavailable on Redlock: no node's view is authoritative, so a feed could go back"
                .into(),
        })
    }

    fn capabilities(&self) -> ElectionCapabilities {
        ElectionCapabilities {
            backend: "redlock",
            terms: self.lock.guarantees().tokens,
            leader: LeaderRead::BestEffort,
            observe: Observation::Unavailable,
            dead_leader_blocks: "its TTL",
        }
    }

    fn describe(&self) -> String {
        self.lock.describe()
    }

    async fn close(&self) -> Result<()> {
        self.lock.close().await
    }
}

/// One leader's grant of a Redlock seat.
struct RedlockSeat {
    lock: RedlockLock,
    name: String,
    grant: String,
    term: u64,
}

#[async_trait]
impl ProclaimOps for RedlockSeat {
    async fn proclaim(&self, value: &[u8]) -> Result<bool> {
        let per_node = self.lock.config().per_node_timeout;
        let answers = fan_out(&self.lock.inner.nodes, per_node, |_, n| {
            let (name, grant, term, value) = (self.name.clone(), self.grant.clone(), self.term, value.to_vec());
            async move { proclaim_on(&n, &name, &grant, term, &value).await }
        })
        .await;
        let written = answers.iter().filter(|a| matches!(a, Ok(true))).count();
        Ok(written >= self.lock.config().quorum())
    }
}
