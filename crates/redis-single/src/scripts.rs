//! The Lua scripts: each is one atomic round trip on the server.

use std::sync::LazyLock;

use redis::Script;

/// KEYS: lock, counter, boot marker. ARGV: grant id, ttl ms, restart delay ms (> 0: with
/// no restart delay the acquire is a pipeline of plain commands, see `RedisNode::try_grant`).
/// Returns `{1, token}` when granted, `{0, ms}` when not: someone holds the lock for `ms`
/// more (PTTL), or the node is still inside its restart delay for `ms` more.
///
/// The restart delay (Redlock's "delayed restart", 0 = off): a node that has no boot marker
/// has started empty — new, or restarted without persistence — and may have forgotten
/// locks it granted. It sets the marker (server `TIME`) and refuses every grant until the
/// delay has passed, so a lock it forgot has expired everywhere else by then. With
/// persistence the marker survives a restart, and so do the locks: no delay is needed.
pub(crate) static ACQUIRE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local delay = tonumber(ARGV[3])
if delay > 0 then
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  local boot = redis.call('GET', KEYS[3])
  if not boot then
    redis.call('SET', KEYS[3], now)
    return {0, delay}
  end
  local age = now - tonumber(boot)
  if age < delay then
    return {0, delay - age}
  end
end
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return {1, redis.call('INCR', KEYS[2])}
end
return {0, redis.call('PTTL', KEYS[1])}
",
    )
});

/// KEYS: lock. ARGV: grant id, channel. Deletes the lock only if it holds our grant and
/// announces the release. Returns 1 when deleted, 0 when it was not ours.
pub(crate) static RELEASE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  redis.call('PUBLISH', ARGV[2], '')
  return 1
end
return 0
",
    )
});

/// KEYS: lock, counter. ARGV: grant id, channel, token. Like [`RELEASE`], and also raises
/// the node's token counter to at least `token` (whether or not the grant was still
/// there). Redlock releases with it, so that every node a later quorum is made of — each
/// must have seen this release to grant again — counts on from this grant's token:
/// tokens then grow in the fault-free case even when they came from another node's counter.
pub(crate) static RELEASE_RAISING: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local counter = tonumber(redis.call('GET', KEYS[2]) or '0')
if counter < tonumber(ARGV[3]) then
  redis.call('SET', KEYS[2], ARGV[3])
end
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  redis.call('PUBLISH', ARGV[2], '')
  return 1
end
return 0
",
    )
});

/// KEYS: lock. ARGV: grant id, ttl ms. Sets a new TTL only if the lock holds our grant.
/// Returns 1 when extended, 0 when it was not ours.
pub(crate) static EXTEND: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
",
    )
});

/// KEYS: locks 1..n. ARGV: grant id 1, ttl ms 1, …, grant id n, ttl ms n. [`EXTEND`] for
/// many grants in one round trip (batched auto-renewals). Returns one 1/0 per key.
pub(crate) static EXTEND_MANY: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local out = {}
for i = 1, #KEYS do
  if redis.call('GET', KEYS[i]) == ARGV[2 * i - 1] then
    out[i] = redis.call('PEXPIRE', KEYS[i], ARGV[2 * i])
  else
    out[i] = 0
  end
end
return out
",
    )
});

/// KEYS: fence hash, data key. ARGV: token (decimal), grant id, value, write (1/0).
/// The fencing rule of `fencelock_core::fencing::admit`, atomically: admit a higher token,
/// or the highest again from the same grant; then record it and (when asked) store the
/// value. Tokens are compared as decimal strings (length, then text), so every u64 is exact.
/// Returns `{1, kind}` (kind: 0 first, 1 newer, 2 same grant) or `{0, highest, grant}`.
pub(crate) static FENCED_WRITE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local function less(a, b)
  if #a ~= #b then return #a < #b end
  return a < b
end
local cur = redis.call('HMGET', KEYS[1], 'token', 'grant')
local kind = 0
if cur[1] then
  if less(ARGV[1], cur[1]) or (ARGV[1] == cur[1] and ARGV[2] ~= cur[2]) then
    return {0, cur[1], cur[2]}
  end
  if ARGV[1] == cur[1] then kind = 2 else kind = 1 end
end
if kind ~= 2 then
  redis.call('HSET', KEYS[1], 'token', ARGV[1], 'grant', ARGV[2])
end
if ARGV[4] == '1' then
  redis.call('SET', KEYS[2], ARGV[3])
end
return {1, kind}
",
    )
});
