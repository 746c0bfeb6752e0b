//! Leader election on one Redis server ([`RedisElection`]).
//!
//! The seat of election `NAME` is the lock on key `election.NAME` (so the term is that
//! lock's token, `INCR`ed in the same transaction as the grant), and the leader's value
//! lives beside it in a hash `PREFIX{election.NAME}:leader` holding grant id, term and
//! value. Every write of that hash and every read of the leader happens in one Lua script
//! that first compares the lock key's grant id with ours / the record's — the grant, never
//! merely "a record exists". The campaign, `leader` and the rest are the shared seat glue
//! of `fencelock_core::election::seat`; what is native here is below.
//!
//! Observers are pushed: every change of the seat is announced on the channel
//! `PREFIX{election.NAME}:w:changed` — the proclaim script (a campaign's first value and
//! every proclaim) and the lock's release script (resign, a dropped leadership) publish
//! on it. An observer subscribes before each read and re-reads on each message; an expiry,
//! which sends no message, is seen by a re-read at the holder's `PTTL`.

use std::sync::{Arc, LazyLock};
use std::time::Duration;

use crate::scripts::Lua;
use async_trait::async_trait;
use fencelock_core::election::seat::{seat_key, SeatBackend, SeatRead, SeatState, SeatWatch};
use fencelock_core::election::{ElectionCapabilities, LeaderInfo, LeaderRead, Observation, ProclaimOps};
use fencelock_core::waiting::WakeFuture;
use fencelock_core::{DistributedLock, FencingToken, Lease, Result};

use crate::error::failed;
use crate::node::NodeSubscription;
use crate::{RedisLock, RedisNode};

/// What one node holds for an election's seat (the shared seat state, under the name the
/// Redlock election knows it by).
pub use fencelock_core::election::seat::SeatState as NodeSeat;

/// The suffix, after the lock key's waiter-channel prefix, of the channel on which every
/// change of a seat is announced (the lock's release script publishes there too).
pub const CHANGED: &str = "changed";

/// Writes the record if the lock key holds our grant, and announces it. KEYS: lock,
/// record. ARGV: grant, term, value, change channel. Returns 1 when written, 0 when the
/// seat is not ours.
static PROCLAIM: LazyLock<Lua> = LazyLock::new(|| {
    Lua::new(
        r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('HSET', KEYS[2], 'grant', ARGV[1], 'term', ARGV[2], 'value', ARGV[3])
  redis.call('PUBLISH', ARGV[4], 'p')
  return 1
end
return 0
",
    )
});

/// Reads the seat. KEYS: lock, record, token counter. Returns {0, 0, '', -2} for an empty
/// seat, {1, term, value, pttl} for the live grant's record, {2, counter, '', pttl} while
/// the live grant has not written its record yet (the counter is only a guess at its
/// term: refused attempts raise it too, and a reserved hand-off counts later).
/// (A static script: its SHA1 is computed once, not per read.)
static LEADER: LazyLock<Lua> = LazyLock::new(|| {
    Lua::new(
        r"
local g = redis.call('GET', KEYS[1])
if not g then return {0, 0, '', -2} end
local ttl = redis.call('PTTL', KEYS[1])
local r = redis.call('HMGET', KEYS[2], 'grant', 'term', 'value')
if r[1] == g then return {1, tonumber(r[2]), r[3], ttl} end
return {2, tonumber(redis.call('GET', KEYS[3]) or '0'), '', ttl}
",
    )
});

/// The election on one Redis server.
#[derive(Debug, Clone)]
pub struct RedisElection {
    lock: RedisLock,
}

/// The Redis keys of one seat (the lock's layout, see `node::Keys`).
#[derive(Debug, Clone)]
struct SeatKeys {
    lock: String,
    record: String,
    counter: String,
    changed: String,
}

impl SeatKeys {
    fn new(prefix: &str, name: &str) -> Result<Self> {
        let seat = seat_key(name)?;
        Ok(SeatKeys {
            lock: format!("{prefix}{{{seat}}}:lock"),
            record: format!("{prefix}{{{seat}}}:leader"),
            counter: format!("{prefix}{{{seat}}}:token"),
            changed: format!("{prefix}{{{seat}}}:w:{CHANGED}"),
        })
    }
}

impl RedisElection {
    /// The election over `lock`'s server and key prefix.
    ///
    /// # Errors
    /// `InvalidConfig` when `lock` uses a peer library's layout
    /// ([`RedisLayout::refuse_for_elections`](crate::RedisLayout::refuse_for_elections)).
    pub fn new(lock: RedisLock) -> Result<Self> {
        lock.config().layout.refuse_for_elections()?;
        Ok(RedisElection { lock })
    }

    /// Connects as [`RedisLock::connect`].
    ///
    /// # Errors
    /// `InvalidConfig` for a peer library's layout, before connecting; otherwise as
    /// [`RedisLock::connect`].
    ///
    /// # Cancel safety
    /// Cancel safe: nothing is kept when dropped.
    pub async fn connect(url: &str) -> Result<Self> {
        crate::RedisConfig::from_url(url)?.layout.refuse_for_elections()?;
        Self::new(RedisLock::connect(url).await?)
    }

    /// The lock key of election `name`'s seat (what an operator would `DEL`).
    ///
    /// # Errors
    /// [`LockError::InvalidInput`](fencelock_core::LockError::InvalidInput) for a bad name.
    pub fn seat_lock_key(&self, name: &str) -> Result<String> {
        Ok(SeatKeys::new(&self.lock.config().prefix, name)?.lock)
    }
}

/// Reads election `name`'s seat on one node, in one script.
///
/// # Errors
/// [`LockError::InvalidInput`](fencelock_core::LockError::InvalidInput) for a bad name;
/// the node's error.
///
/// # Cancel safety
/// Cancel safe: it only reads.
pub async fn read_seat_on(node: &RedisNode, name: &str) -> Result<SeatRead> {
    let keys = SeatKeys::new(&node.config().prefix, name)?;
    let mut conn = node.connection().await?;
    let read = |mut conn: redis::aio::ConnectionManager| {
        let keys = &keys;
        async move {
            LEADER
                .call()
                .key(keys.lock.as_str())
                .key(keys.record.as_str())
                .key(keys.counter.as_str())
                .invoke::<(i64, u64, Vec<u8>, i64)>(&mut conn)
                .await
        }
    };
    // A read, safe to repeat: a connection the server closed while it was idle (CLIENT
    // KILL, its `timeout`, a proxy's idle cut) fails the first command on it, and the
    // connection manager reconnects for the next; one more try, so that an observer does
    // not report the seat unknown while the server is fine.
    let answer = match read(conn.clone()).await {
        Err(e) if e.is_io_error() || e.is_connection_dropped() => {
            conn = node.connection().await?;
            read(conn).await
        }
        other => other,
    };
    let (state, term, value, pttl) = answer.map_err(|e| failed("reading the election's leader", node.server(), e))?;
    let term = FencingToken::new(term);
    let state = match state {
        0 => SeatState::Empty,
        1 => SeatState::Leader(LeaderInfo { value, term }),
        // The lock key keeps no token: the counter is a guess (see `SeatState`).
        _ => SeatState::UnwrittenGuess(term),
    };
    Ok(SeatRead {
        state,
        expires_in: u64::try_from(pttl).ok().map(Duration::from_millis),
    })
}

/// Writes election `name`'s value on one node if its lock key holds `grant`, and
/// announces it to the seat's observers; returns whether it did.
///
/// # Errors
/// [`LockError::InvalidInput`](fencelock_core::LockError::InvalidInput) for a bad name;
/// the node's error.
///
/// # Cancel safety
/// The value may or may not have been written.
pub async fn proclaim_on(node: &RedisNode, name: &str, grant: &str, term: u64, value: &[u8]) -> Result<bool> {
    let keys = SeatKeys::new(&node.config().prefix, name)?;
    let mut conn = node.connection().await?;
    let written: i64 = PROCLAIM
        .call()
        .key(keys.lock.as_str())
        .key(keys.record.as_str())
        .arg(grant)
        .arg(term)
        .arg(value)
        .arg(&keys.changed)
        .invoke(&mut conn)
        .await
        .map_err(|e| failed("proclaiming the election's value", node.server(), e))?;
    Ok(written == 1)
}

#[async_trait]
impl SeatBackend for RedisElection {
    fn seat_lock(&self) -> &dyn DistributedLock {
        &self.lock
    }

    fn election_capabilities(&self) -> ElectionCapabilities {
        ElectionCapabilities {
            backend: "redis",
            terms: self.lock.guarantees().tokens,
            leader: LeaderRead::Exact,
            observe: Observation::Native,
            dead_leader_blocks: "its TTL",
        }
    }

    async fn seat_grant(&self, name: &str, _seat: &str, lease: &Lease) -> Result<Arc<dyn ProclaimOps>> {
        Ok(Arc::new(RedisSeat {
            lock: self.lock.clone(),
            name: name.to_owned(),
            grant: lease.grant().to_string(),
            term: lease.token().get(),
        }))
    }

    async fn read_seat(&self, name: &str, _seat: &str) -> Result<SeatRead> {
        read_seat_on(self.lock.node(), name).await
    }

    async fn seat_watch(&self, name: &str, seat: &str) -> Result<Box<dyn SeatWatch>> {
        let sub = self.lock.node().subscribe(seat, CHANGED).await?;
        Ok(Box::new(RedisWatch {
            node: self.lock.node().clone(),
            name: name.to_owned(),
            sub,
            wake: None,
        }))
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

/// An observer's subscription to a seat's change channel.
struct RedisWatch {
    node: RedisNode,
    name: String,
    sub: NodeSubscription,
    wake: Option<WakeFuture>,
}

#[async_trait]
impl SeatWatch for RedisWatch {
    async fn arm_and_read(&mut self) -> Result<SeatRead> {
        self.sub.ensure().await?;
        self.wake = Some(self.sub.notified());
        read_seat_on(&self.node, &self.name).await
    }

    async fn changed(&mut self) {
        match self.wake.take() {
            Some(wake) => wake.await,
            None => std::future::pending().await,
        }
    }
}
