//! Leader election on one Redis server ([`RedisElection`]).
//!
//! The seat of election `NAME` is the lock on key `election.NAME` (so the term is that
//! lock's token, `INCR`ed in the same transaction as the grant), and the leader's value
//! lives beside it in a hash `PREFIX{election.NAME}:leader` holding grant id, term and
//! value. Every write of that hash and every read of the leader happens in one Lua script
//! that first compares the lock key's grant id with ours / the record's — the grant, never
//! merely "a record exists". Observers poll (see [`POLL_INTERVAL`]); a push channel is not
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
use redis::Script;

use crate::error::failed;
use crate::{RedisLock, RedisNode};

/// How often a Redis observer reads the seat.
pub const POLL_INTERVAL: Duration = Duration::from_millis(50);

/// How long `leader` waits for a just-elected leader to write its value before reporting
/// its term with an empty value.
pub const RECORD_WAIT: Duration = Duration::from_millis(200);

/// Writes the record if the lock key holds our grant. KEYS: lock, record. ARGV: grant,
/// term, value. Returns 1 when written, 0 when the seat is not ours.
const PROCLAIM: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('HSET', KEYS[2], 'grant', ARGV[1], 'term', ARGV[2], 'value', ARGV[3])
  return 1
end
return 0
";

/// Reads the seat. KEYS: lock, record, token counter. Returns {0, 0, ''} for an empty
/// seat, {1, term, value} for the live grant's record, {2, counter, ''} while the live
/// grant has not written its record yet.
const LEADER: &str = r"
local g = redis.call('GET', KEYS[1])
if not g then return {0, 0, ''} end
local r = redis.call('HMGET', KEYS[2], 'grant', 'term', 'value')
if r[1] == g then return {1, tonumber(r[2]), r[3]} end
return {2, tonumber(redis.call('GET', KEYS[3]) or '0'), ''}
";

/// The election on one Redis server.
#[derive(Debug, Clone)]
pub struct RedisElection {
    lock: RedisLock,
}

/// The Redis keys of one seat.
#[derive(Debug, Clone)]
struct SeatKeys {
    lock: String,
    record: String,
    counter: String,
}

impl SeatKeys {
    fn new(prefix: &str, name: &str) -> Result<(String, Self)> {
        validate_key(name)?;
        let seat = format!("election.{name}");
        validate_key(&seat)?;
        let keys = SeatKeys {
            lock: format!("{prefix}{{{seat}}}:lock"),
            record: format!("{prefix}{{{seat}}}:leader"),
            counter: format!("{prefix}{{{seat}}}:token"),
        };
        Ok((seat, keys))
    }
}

impl RedisElection {
    /// The election over `lock`'s server and key prefix.
    pub fn new(lock: RedisLock) -> Self {
        RedisElection { lock }
    }

    /// Connects as [`RedisLock::connect`].
    ///
    /// # Errors
    /// As [`RedisLock::connect`].
    ///
    /// # Cancel safety
    /// Cancel safe: nothing is kept when dropped.
    pub async fn connect(url: &str) -> Result<Self> {
        Ok(Self::new(RedisLock::connect(url).await?))
    }

    /// The lock key of election `name`'s seat (what an operator would `DEL`).
    ///
    /// # Errors
    /// [`LockError::InvalidInput`] for a bad name.
    pub fn seat_lock_key(&self, name: &str) -> Result<String> {
        Ok(SeatKeys::new(&self.lock.config().prefix, name)?.1.lock)
    }
}

/// What one node holds for an election's seat (for Redlock, which asks every node).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeSeat {
    /// No live grant.
    Empty,
    /// The live grant's record.
    Leader(LeaderInfo),
    /// A live grant whose record is not written yet; the node's token counter.
    Unwritten(FencingToken),
}

/// Reads election `name`'s seat on one node, in one script.
///
/// # Errors
/// [`LockError::InvalidInput`] for a bad name; the node's error.
///
/// # Cancel safety
/// Cancel safe: it only reads.
pub async fn read_seat_on(node: &RedisNode, name: &str) -> Result<NodeSeat> {
    let (_, keys) = SeatKeys::new(&node.config().prefix, name)?;
    let mut conn = node.connection().await?;
    let (state, term, value): (i64, u64, Vec<u8>) = Script::new(LEADER)
        .key(&keys.lock)
        .key(&keys.record)
        .key(&keys.counter)
        .invoke_async(&mut conn)
        .await
        .map_err(|e| failed("reading the election's leader", node.server(), e))?;
    let term = FencingToken::new(term);
    Ok(match state {
        0 => NodeSeat::Empty,
        1 => NodeSeat::Leader(LeaderInfo { value, term }),
        _ => NodeSeat::Unwritten(term),
    })
}

/// Writes election `name`'s value on one node if its lock key holds `grant`; returns
/// whether it did.
///
/// # Errors
/// [`LockError::InvalidInput`] for a bad name; the node's error.
///
/// # Cancel safety
/// The value may or may not have been written.
pub async fn proclaim_on(node: &RedisNode, name: &str, grant: &str, term: u64, value: &[u8]) -> Result<bool> {
    let (_, keys) = SeatKeys::new(&node.config().prefix, name)?;
    let mut conn = node.connection().await?;
    let written: i64 = Script::new(PROCLAIM)
        .key(&keys.lock)
        .key(&keys.record)
        .arg(grant)
        .arg(term)
        .arg(value)
        .invoke_async(&mut conn)
        .await
        .map_err(|e| failed("proclaiming the election's value", node.server(), e))?;
    Ok(written == 1)
}

async fn read_leader(lock: &RedisLock, name: &str) -> Result<Option<LeaderInfo>> {
    let deadline = tokio::time::Instant::now() + RECORD_WAIT;
    // Bounded by RECORD_WAIT / 5 ms turns.
    loop {
        match read_seat_on(lock.node(), name).await? {
            NodeSeat::Empty => return Ok(None),
            NodeSeat::Leader(l) => return Ok(Some(l)),
            NodeSeat::Unwritten(term) if tokio::time::Instant::now() >= deadline => {
                return Ok(Some(LeaderInfo {
                    value: Vec::new(),
                    term,
                }))
            }
            NodeSeat::Unwritten(_) => tokio::time::sleep(Duration::from_millis(5)).await,
        }
    }
}

#[async_trait]
impl Election for RedisElection {
    #[tracing::instrument(level = "debug", skip(self, value, opts), fields(backend = "redis"))]
    async fn campaign(&self, name: &str, value: &[u8], opts: &LockOptions) -> Result<Leadership> {
        validate_value(value)?;
        let (seat, _) = SeatKeys::new(&self.lock.config().prefix, name)?;
        let lease = self.lock.acquire(&seat, opts).await?;
        let ops = Arc::new(RedisSeat {
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
        read_leader(&self.lock, name).await
    }

    async fn observe(&self, name: &str) -> Result<Observer> {
        SeatKeys::new(&self.lock.config().prefix, name)?;
        let (lock, name) = (self.lock.clone(), name.to_owned());
        Ok(polled(POLL_INTERVAL, move || {
            let (lock, name) = (lock.clone(), name.clone());
            async move { read_leader(&lock, &name).await }
        }))
    }

    fn capabilities(&self) -> ElectionCapabilities {
        ElectionCapabilities {
            backend: "redis",
            terms: self.lock.guarantees().tokens,
            leader: LeaderRead::Exact,
            observe: Observation::Polled {
                interval_ms: POLL_INTERVAL.as_millis() as u64,
            },
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

/// One leader's grant of a Redis seat.
struct RedisSeat {
    lock: RedisLock,
    name: String,
    grant: String,
    term: u64,
}

#[async_trait]
impl ProclaimOps for RedisSeat {
    async fn proclaim(&self, value: &[u8]) -> Result<bool> {
        proclaim_on(self.lock.node(), &self.name, &self.grant, self.term, value).await
    }
}
