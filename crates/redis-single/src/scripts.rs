//! The Lua scripts: each is one atomic round trip on the server.

use std::sync::LazyLock;

use redis::aio::ConnectionLike;
use redis::{Cmd, ErrorKind, FromRedisValue, RedisResult, Script, ServerErrorKind, ToRedisArgs};

/// A script with its source kept. A call is an `EVALSHA`; a server that does not have the
/// script (never sent it, restarted, `SCRIPT FLUSH`) answers `NOSCRIPT`, and the call is
/// sent again as `EVAL` with the source ([`Call::invoke`]) — not loaded with `SCRIPT LOAD`,
/// which an ACL may refuse to a user that can run scripts (`-script`). A follow-up sent
/// while answers are lost would never hear the `NOSCRIPT`: its repeats send the script as
/// `EVAL` with its source at once ([`with_source`]) — one command, which runs whether or
/// not its answer comes back and leaves the script cached. Until 8 Dec 2026 each repeat
/// was preceded by a `SCRIPT LOAD` of all ten scripts (eleven commands where one does,
/// and exactly when the server is overloaded; refused to a `-script` user).
pub(crate) struct Lua {
    code: String,
    script: Script,
}

impl Lua {
    pub(crate) fn new(code: &str) -> Self {
        Lua {
            code: code.to_owned(),
            script: Script::new(code),
        }
    }

    /// The source, for `SCRIPT LOAD`.
    pub(crate) fn code(&self) -> &str {
        &self.code
    }

    /// A call of this script; add its keys and arguments, in order, then
    /// [`invoke`](Call::invoke) it.
    pub(crate) fn call(&self) -> Call<'_> {
        Call {
            lua: self,
            // The most any script here takes (LEAVE's and WAIT_TURN's keys, WAIT_TURN's arguments); a
            // batched renewal's grow past them as usual.
            keys: Vec::with_capacity(5),
            args: Vec::with_capacity(9),
        }
    }
}

tokio::task_local! {
    /// Set by [`with_source`]: calls send `EVAL` with the source, not `EVALSHA`.
    static WITH_SOURCE: bool;
}

/// Runs `f` with every script call in it sent as `EVAL` with the script's source rather
/// than `EVALSHA` of its hash: for a repeat of a request whose answer was lost, which may
/// have met `NOSCRIPT` unheard (a server restarted, `SCRIPT FLUSH`). One command per call;
/// needs what the `NOSCRIPT` fallback needs anyway (`EVAL`), not the `SCRIPT` command.
///
/// # Cancel safety
/// As `f`.
pub async fn with_source<F: std::future::Future>(f: F) -> F::Output {
    WITH_SOURCE.scope(true, f).await
}

/// One call of a [`Lua`] script: its keys (`KEYS[i]`) and arguments (`ARGV[i]`).
pub(crate) struct Call<'a> {
    lua: &'a Lua,
    keys: Vec<Vec<u8>>,
    args: Vec<Vec<u8>>,
}

impl Call<'_> {
    /// Adds a key (`KEYS[i]`); a `String` made for the call is taken without a copy.
    pub(crate) fn key(&mut self, key: impl Into<Vec<u8>>) -> &mut Self {
        self.keys.push(key.into());
        self
    }

    /// Adds an argument (`ARGV[i]`).
    pub(crate) fn arg<T: ToRedisArgs>(&mut self, arg: T) -> &mut Self {
        arg.write_redis_args(&mut self.args);
        self
    }

    /// `EVALSHA` of the script's hash, or `EVAL` of its source.
    ///
    /// Sized up front: a `Cmd` grown argument by argument reallocates its buffers several
    /// times per call, a third of this crate's client-side cost of a release (callgrind,
    /// `fencelock bench`'s uncontended cycle).
    fn command(&self, with_source: bool) -> Cmd {
        let (name, body): (&str, &[u8]) = if with_source {
            ("EVAL", self.lua.code.as_bytes())
        } else {
            ("EVALSHA", self.lua.script.get_hash().as_bytes())
        };
        let parts = self.keys.iter().chain(&self.args);
        // 20: the digits of the key count, at most.
        let bytes = name.len() + body.len() + 20 + parts.clone().map(Vec::len).sum::<usize>();
        let mut cmd = Cmd::with_capacity(3 + self.keys.len() + self.args.len(), bytes);
        cmd.arg(name).arg(body).arg(self.keys.len());
        for part in parts {
            cmd.arg(part.as_slice());
        }
        cmd
    }

    /// Runs the call: `EVALSHA`, and when the server answers `NOSCRIPT`, `EVAL` with the
    /// source (which also leaves the script cached on the server); inside [`with_source`],
    /// `EVAL` at once.
    ///
    /// # Cancel safety
    /// As the script: dropped after a command was sent, the script may have run unheard.
    pub(crate) async fn invoke<T: FromRedisValue>(&self, conn: &mut impl ConnectionLike) -> RedisResult<T> {
        if WITH_SOURCE.try_with(|on| *on).unwrap_or(false) {
            return self.command(true).query_async(conn).await;
        }
        match self.command(false).query_async(conn).await {
            Err(e) if e.kind() == ErrorKind::Server(ServerErrorKind::NoScript) => {
                self.command(true).query_async(conn).await
            }
            answer => answer,
        }
    }
}

/// Every script a node calls, loaded together when it connects.
pub(crate) fn all() -> [&'static Lua; 10] {
    [
        &ACQUIRE,
        &HEAL,
        &RELEASE,
        &RELEASE_RAISING,
        &RELEASE_UNQUEUED,
        &WAIT_TURN,
        &LEAVE,
        &EXTEND,
        &EXTEND_MANY,
        &FENCED_WRITE,
    ]
}

/// The restart-delay check that opens each script that grants ([`ACQUIRE`], [`HEAL`],
/// [`WAIT_TURN`]), as Lua: with `ARGV[delay]` > 0 (ms) it returns `refuse` while either
/// clock says the node may have forgotten a lock it granted less than the delay ago —
///
/// * the **server process's age**, `uptime_in_seconds` of `INFO server`: a process younger
///   than the delay refuses, whatever it loaded from disk. An RDB snapshot or an
///   `appendfsync everysec` log can hold the boot marker and miss the locks granted after
///   it was written, so the marker alone (as before) let a node restarted from an older
///   snapshot vote at once beside the holder it forgot. It is `floor(now) −
///   floor(start)` in seconds of the wall clock, which overstates the age by up to 1 s
///   (counted as 1 s less, so never more than the age) and understates it by up to 1 s:
///   with the 1 s taken off, the delay can last up to about 2 s longer than set. Being
///   wall-clock time, a forward step of the host's clock after the start shortens it
///   (the boot marker reads the same clock): start Redis once the clock is synchronised.
/// * the **boot marker** `KEYS[marker]` (server `TIME`, ms, set when missing, not a
///   number, or later than now — a clock stepped back after it was written costs one
///   delay, not the step plus the delay): data lost
///   without a restart (`FLUSHALL`, `FLUSHDB`, the key deleted) leaves the process old but
///   the marker gone, and the delay runs from the marker's setting.
///
/// Why inside the script: the server answers for the same process that votes, in the
/// same atomic step. The client's `run_id` (and its `CONFIG GET`) is read again only in
/// the background after the connection manager reconnects — a repeat reaches the new
/// process first — so a client-side check could vote on a dead process's knowledge. The
/// cost is one `INFO server` inside the script, asked only once the marker is past the
/// delay, and no round trip: about 4.5 µs of server time per call on Redis 7.0 (this
/// check alone, 50,000 calls: 3.2 µs before, 7.6 µs now; a pattern `string.match` over
/// the reply cost 3 µs more than the plain `string.find` used). The price: a
/// node persisting with `appendfsync always` pays the delay after a restart too, as the
/// script cannot tell it from one that lost writes (`CONFIG` may not run in a script and
/// `INFO` does not show the fsync policy; nor can a process know whether the file it
/// loaded was complete). A user refused `INFO` gets a script error naming it (ACL `+info`),
/// coded `NOPERM` so that the client classifies it as refused configuration, not as a
/// node failure.
///
/// `refuse` is a Lua expression in which `rest` is the delay's ms left. See [`ACQUIRE`].
fn restart_delay_check(delay: usize, marker: usize, refuse: &str) -> String {
    format!(
        r"
local delay = tonumber(ARGV[{delay}])
if delay > 0 then
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  local boot = tonumber(redis.call('GET', KEYS[{marker}]))
  local rest = delay
  if boot and boot <= now then
    rest = delay - (now - boot)
  else
    -- Missing, not a number, or in the future (the clock stepped back after it was
    -- written): a new marker, and the delay from now, not the step plus the delay.
    redis.call('SET', KEYS[{marker}], now)
  end
  if rest <= 0 then
    local info = redis.pcall('INFO', 'server')
    if type(info) == 'table' then
      return redis.error_reply('NOPERM restart_delay is set and needs INFO on this node (ACL: +info): ' .. tostring(info.err))
    end
    local at = string.find(info, 'uptime_in_seconds:', 1, true)
    local up = at and tonumber(string.match(info, '^-?%d+', at + 18))
    if not up then
      return redis.error_reply('restart_delay: INFO server gave no uptime_in_seconds')
    end
    -- Redis counts uptime on the wall clock: negative after the clock stepped back past
    -- the process's start. Refused (not a script error) until it has run for the delay.
    if up < 0 then
      up = 0
    end
    rest = delay - (up - 1) * 1000
  end
  if rest > 0 then
    return {refuse}
  end
end
"
    )
}

/// KEYS: lock, counter, boot marker. ARGV: grant id, ttl ms, restart delay ms (> 0: with
/// no restart delay the acquire is a pipeline of plain commands, see `RedisNode::try_grant`).
/// Returns `{1, token}` when granted; `{0, ms}` when someone holds the lock for `ms` more
/// (PTTL); `{2, ms}` when the node is still inside its restart delay for `ms` more — told
/// apart from a holder so that Redlock can say which it was (a free key refused by
/// restarting nodes is not "held"); the same reply length, no extra work.
///
/// The restart delay (Redlock's "delayed restart", 0 = off): a node whose server process
/// started less than the delay ago may have forgotten locks it granted — restarted
/// without persistence, or from a snapshot or log older than its last grants — and so
/// may a node that has no boot marker (new, or its data flushed). It refuses every grant
/// until the delay has passed, so a lock it forgot has expired everywhere else by then
/// (see `restart_delay_check`).
pub(crate) static ACQUIRE: LazyLock<Lua> = LazyLock::new(|| {
    Lua::new(
        &(restart_delay_check(3, 3, "{2, rest}")
            + r"
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return {1, redis.call('INCR', KEYS[2])}
end
return {0, redis.call('PTTL', KEYS[1])}
"),
    )
});

/// The queue's hand-off, shared by the scripts that free the lock (release, leave) and
/// the waiter's turn: pops the queue head (KEYS[3]; server time `now` read once) —
/// skipping, for free, entries whose waiter's wait has ended and entries it cannot read —
/// and gives it the lock. Two kinds of entry:
///
/// * `GRANT@CHANNEL|DEADLINE_MS|TTL_MS` (a `redis://` waiter): a **direct grant** — the
///   token is counted (`INCR`), `PUBLISH` of `g GRANT TOKEN NOW` on the waiter's instance
///   channel, and when that has a subscriber `SET lock GRANT PXAT NOW+TTL` (absolute,
///   so the lock expires exactly `TTL` after the `NOW` the waiter is told; Redis < 6.2
///   without `PXAT`: `SET PX` + `PEXPIREAT`). The waiter holds the lock on the push alone.
/// * `GRANT@CHANNEL|DEADLINE_MS` (Redlock's primary, whose grant needs a quorum; or an
///   earlier version's entry): a **reservation** — `PUBLISH` of `g GRANT`, then
///   `SET lock GRANT PX claim` (the token is counted when the waiter claims) and `PUBLISH`
///   of `n GRANT` on the new head's channel ("you are next: watch the reservation"). An
///   entry without `@CHANNEL` (a version with a channel per waiter) is told on
///   `PREFIX GRANT` with a bare `g`/`n`.
///
/// A waiter's channel with no subscriber means the waiter's process is gone (its
/// connections closed): the next entry is tried at once, nothing counted or published.
/// Counted with `PUBSUB NUMSUB`, just before the `PUBLISH`, and not judged by `PUBLISH`'s
/// answer: that counts pattern subscribers too, and one `PSUBSCRIBE *` on the server
/// (`redis-cli`, a dashboard) made every dead waiter at the head look live, each granted
/// the lock for its whole TTL (test
/// `a_killed_queued_waiter_costs_nothing_while_a_pattern_subscriber_listens`). A user the
/// server refuses `PUBSUB` (an ACL without `+pubsub|numsub`: a warning at connect on
/// Redis 7; Redis 6 cannot be asked) falls back
/// on `PUBLISH`'s answer; a direct grant's `INCR` then only leaves a gap in the tokens.
/// Constant work per hand-off whatever the queue's length (each skipped entry is popped
/// once, ever). Returns true when it gave the lock to
/// a waiter.
const HAND_OFF: &str = r"
local function address(who, kind, channels)
  local at = string.find(who, '@', 1, true)
  if at then
    return string.sub(who, at + 1), kind .. ' ' .. string.sub(who, 1, at - 1)
  end
  return channels .. who, kind
end
local function tell(who, kind, channels)
  local channel, message = address(who, kind, channels)
  return redis.call('PUBLISH', channel, message)
end
local function parse(e)
  local who, deadline, ttl = string.match(e, '^(.+)|(%d+)|(%d+)$')
  if who then return who, deadline, ttl end
  who, deadline = string.match(e, '^(.+)|(%d+)$')
  return who, deadline, nil
end
-- The clients subscribed to `channel` itself; nil when the user may not ask.
local function subscribers(channel)
  local n = redis.pcall('PUBSUB', 'NUMSUB', channel)
  if type(n) == 'table' and n.err then return nil end
  return n[2]
end
-- Publishes `message` to a waiter on `channel`, of which `subscribers` said `listeners`
-- (not 0); true when a subscriber of the channel got it. Without the count (nil), from
-- PUBLISH's own answer, which also counts pattern subscribers.
local function deliver(channel, message, listeners)
  local reached = redis.call('PUBLISH', channel, message)
  if listeners then return true end
  return reached > 0
end
local function grant_directly(who, ttl, now)
  local at = string.find(who, '@', 1, true)
  if not at then return false end
  local id = string.sub(who, 1, at - 1)
  local channel = string.sub(who, at + 1)
  local listeners = subscribers(channel)
  if listeners == 0 then return false end
  local token = redis.call('INCR', KEYS[2])
  local told = 'g ' .. id .. ' ' .. string.format('%d', token) .. ' ' .. string.format('%d', now)
  if not deliver(channel, told, listeners) then return false end
  local until_ms = string.format('%d', now + tonumber(ttl))
  local set = redis.pcall('SET', KEYS[1], id, 'PXAT', until_ms)
  if type(set) == 'table' and set.err then
    redis.call('SET', KEYS[1], id, 'PX', ttl)
    redis.call('PEXPIREAT', KEYS[1], until_ms)
  end
  return true
end
local function grant_reservation(who, channels)
  local channel, message = address(who, 'g', channels)
  local listeners = subscribers(channel)
  if listeners == 0 then return false end
  return deliver(channel, message, listeners)
end
local function hand_off(claim_ms, channels)
  local now = nil
  while true do
    local e = redis.call('LPOP', KEYS[3])
    if not e then return false end
    if not now then
      local t = redis.call('TIME')
      now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
    end
    local who, deadline, ttl = parse(e)
    if who and tonumber(deadline) > now then
      if ttl then
        if grant_directly(who, ttl, now) then return true end
      -- Told first: nobody subscribed there (its process died, the server closed
      -- its connections) means nobody will claim — on to the next entry at once.
      elseif grant_reservation(who, channels) then
        local at = string.find(who, '@', 1, true)
        local id = who
        if at then id = string.sub(who, 1, at - 1) end
        redis.call('SET', KEYS[1], id, 'PX', claim_ms)
        local nxt = redis.call('LINDEX', KEYS[3], 0)
        if nxt then
          local next_who = parse(nxt)
          if next_who then tell(next_who, 'n', channels) end
        end
        return true
      end
    end
  end
end
";

/// python-redis-lock's signal list (`lock-signal:KEY`), the last key of the scripts that
/// can leave the lock free (`KEYS[4]` of [`RELEASE`], `KEYS[5]` of [`LEAVE`]), given only
/// in that layout: pushed as that library's own unlock does (`DEL`, `LPUSH 1`, `PEXPIRE`
/// 1000 ms, its default `signal_expire`), so that a Python waiter blocked in `BLPOP` on it
/// wakes at once. Nothing when the key is not given (`signal` nil).
const SIGNAL_FREE: &str = r"
local function signal_free(signal)
  if signal then
    redis.call('DEL', signal)
    redis.call('LPUSH', signal, 1)
    redis.call('PEXPIRE', signal, 1000)
  end
end
";

/// KEYS: lock, counter, queue. ARGV: grant id, waiter channel prefix, claim ms. Deletes
/// the lock only if it holds our grant, announces it on the key's `changed` channel when
/// the key is an election's seat (`{election.NAME}`: its observers listen there; a plain
/// lock's release stays one command cheaper, a string test in Lua rather than a `PUBLISH`
/// nobody hears) and hands it to the first live waiter queued ([`HAND_OFF`]). Returns 1
/// when deleted, 0 when it was not ours.
///
/// KEYS[4], given only in the `python-redis-lock` layout: that library's signal list,
/// pushed ([`SIGNAL_FREE`]) when the lock is left free (no fencelock waiter took it over).
/// (The earlier versions' reservation key, which only [`LEAVE`] deletes, is not passed.)
///
/// **Uncontended fast path**, before the hand-off's helpers are defined: Lua makes a
/// closure for each `local function` every time the script runs, so with the helpers
/// first every release — nobody queued included — made ten of them (and left them to the
/// garbage collector). A release of our grant with nobody queued (`LLEN` 0), no election
/// seat to announce and no signal list to push is `GET`, `LLEN`, `DEL`, the same three
/// commands as before (`LLEN` where `LPOP` found nothing), with no closure made. Any other
/// release goes on to the hand-off as before, with one `LLEN` more.
pub(crate) static RELEASE: LazyLock<Lua> = LazyLock::new(|| {
    Lua::new(&format!(
        r"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return 0
end
if not KEYS[4] and not string.find(KEYS[1], '{{election.', 1, true)
    and redis.call('LLEN', KEYS[3]) == 0 then
  redis.call('DEL', KEYS[1])
  return 1
end
{HAND_OFF}{SIGNAL_FREE}
if string.find(KEYS[1], '{{election.', 1, true) then
  redis.call('PUBLISH', ARGV[2] .. 'changed', 'r')
end
if not hand_off(ARGV[3], ARGV[2]) then
  redis.call('DEL', KEYS[1])
  signal_free(KEYS[4])
end
return 1
"
    ))
});

/// KEYS: lock, counter, queue, reservation. ARGV: grant id, waiter channel prefix, claim
/// ms, token. Like [`RELEASE`], and also raises the node's token counter to at least
/// `token` (whether or not the grant was still there). Redlock releases with it, so that
/// every node a later quorum is made of — each must have seen this release to grant again
/// — counts on from this grant's token: tokens then grow in the fault-free case even when
/// they came from another node's counter.
pub(crate) static RELEASE_RAISING: LazyLock<Lua> = LazyLock::new(|| {
    Lua::new(&format!(
        r"{HAND_OFF}
local counter = tonumber(redis.call('GET', KEYS[2]) or '0')
if counter < tonumber(ARGV[4]) then
  redis.call('SET', KEYS[2], ARGV[4])
end
if redis.call('GET', KEYS[1]) == ARGV[1] then
  if not hand_off(ARGV[3], ARGV[2]) then
    redis.call('DEL', KEYS[1])
  end
  return 1
end
return 0
"
    ))
});

/// KEYS: lock, counter. ARGV: grant id, token (`` for none). Compare-and-delete for a
/// node where nobody queues for the key (Redlock's nodes other than the key's primary):
/// no queue to look at, so one command less than [`RELEASE`] and a short script; with a
/// token, raises the counter to it first as [`RELEASE_RAISING`] does. Returns 1 when
/// deleted, 0 when it was not ours.
pub(crate) static RELEASE_UNQUEUED: LazyLock<Lua> = LazyLock::new(|| {
    Lua::new(
        r"
if ARGV[2] ~= '' then
  local counter = tonumber(redis.call('GET', KEYS[2]) or '0')
  if counter < tonumber(ARGV[2]) then
    redis.call('SET', KEYS[2], ARGV[2])
  end
end
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  return 1
end
return 0
",
    )
});

/// KEYS: lock, counter, boot marker. ARGV: grant id, ttl ms, restart delay ms (0: off),
/// token. Redlock's heal: puts a grant that a quorum of *other* nodes already made onto
/// this node, which refused it then (still held by an earlier grant whose release had not
/// reached it). Only when the key is free here — `SET NX`, so never over another grant —
/// and, with a restart delay, only outside it, as [`ACQUIRE`] decides (a node that started
/// empty must not help any grant for the delay). No token is counted for it: the grant's
/// token is already the quorum's; the node's counter is raised to at least that token
/// instead, so every grant this node makes later counts on from it. A node that already
/// holds the grant (an earlier heal whose answer was lost) only gets the raise.
///
/// Returns `{1, counter}` when the node holds the grant now; `{0, ms}` when held by another
/// grant for `ms` more (PTTL, -1: no TTL); `{2, ms}` when inside the restart delay for `ms`.
pub(crate) static HEAL: LazyLock<Lua> = LazyLock::new(|| {
    Lua::new(
        &(restart_delay_check(3, 3, "{2, rest}")
            + r"
local holder = redis.call('GET', KEYS[1])
if holder and holder ~= ARGV[1] then
  return {0, redis.call('PTTL', KEYS[1])}
end
if not holder then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
end
local counter = tonumber(redis.call('GET', KEYS[2]) or '0')
if counter < tonumber(ARGV[4]) then
  counter = tonumber(ARGV[4])
  redis.call('SET', KEYS[2], ARGV[4])
end
return {1, counter}
"),
    )
});

/// KEYS: lock, counter, queue, reservation, boot marker. ARGV: grant id, ttl ms, waiter
/// channel prefix, claim ms, wait ms, our queue entry (`` when not queued yet), restart
/// delay ms (0: off; otherwise refused as [`ACQUIRE`] refuses, without queueing), this
/// instance's channel (hand-off messages for our grant go there), direct (`1`: queue an
/// entry that carries the TTL, so a release grants the lock to us directly; `` for a
/// reservation we claim: Redlock).
///
/// A waiter's turn, one round trip: claims the lock when it holds our grant — reserved for
/// us, or granted to us directly by a release whose push we could not use (`PEXPIRE` to
/// the full TTL from now, a new token from the counter: the grant starts now, and nobody
/// else was granted in between, the lock being ours); takes it at once when it is free and
/// nobody queues; when it is free with a queue (the holder expired, or a reserved waiter
/// never claimed), hands it to the queue head first. Otherwise queues us at the back
/// (again, when our entry was popped: we lost a turn) with an entry that lapses `wait ms`
/// from now, and keeps the queue key from outliving its entries.
///
/// Returns `{1, token, '', -1}` when ours, `{0, pttl, entry, now}` when not (`pttl` -1: no
/// TTL; `now`: the server's time in ms when this turn ran, which a direct hand-off's
/// validity is counted against; -1 when refused inside the restart delay).
pub(crate) static WAIT_TURN: LazyLock<Lua> = LazyLock::new(|| {
    Lua::new(&format!(
        r"{HAND_OFF}
{check}
local holder = redis.call('GET', KEYS[1])
if not holder and redis.call('LLEN', KEYS[3]) > 0 then
  hand_off(ARGV[4], ARGV[3])
  holder = redis.call('GET', KEYS[1])
end
if not holder then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return {{1, redis.call('INCR', KEYS[2]), '', -1}}
end
if holder == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return {{1, redis.call('INCR', KEYS[2]), '', -1}}
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local entry = ARGV[6]
if entry == '' or not redis.call('LPOS', KEYS[3], entry) then
  local who = ARGV[1]
  if ARGV[8] ~= '' then who = who .. '@' .. ARGV[8] end
  entry = who .. '|' .. string.format('%d', now + tonumber(ARGV[5]))
  if ARGV[9] == '1' and ARGV[8] ~= '' then entry = entry .. '|' .. ARGV[2] end
  local life = tonumber(ARGV[5]) + tonumber(ARGV[4])
  if redis.call('RPUSH', KEYS[3], entry) == 1 then
    redis.call('PEXPIRE', KEYS[3], life)
  else
    -- Only ever lengthened: GT (Redis 7) in one command, else read and compare.
    local r = redis.pcall('PEXPIRE', KEYS[3], life, 'GT')
    if type(r) == 'table' and r.err and redis.call('PTTL', KEYS[3]) < life then
      redis.call('PEXPIRE', KEYS[3], life)
    end
  end
end
return {{0, redis.call('PTTL', KEYS[1]), entry, now}}
",
        check = restart_delay_check(7, 5, "{0, rest, ARGV[6], -1}")
    ))
});

/// KEYS: lock, counter, queue, reservation. ARGV: grant id, waiter channel prefix, claim
/// ms, our queue entry (`` when unknown). A waiter gives up (its wait ended, it was
/// cancelled): removes its entry, and when the lock holds its grant — granted to it
/// directly by a release (full TTL: the push came after the waiter gave up), reserved for
/// it, or claimed by an answer that never arrived — frees it and hands it to the next
/// waiter, as a release does — announced on the `changed` channel of an election's seat
/// as [`RELEASE`] does, so observers do not report the gone holder until the TTL. Returns
/// 1 when it freed the lock.
///
/// KEYS[5], given only in the `python-redis-lock` layout: pushed ([`SIGNAL_FREE`]) when
/// the lock is left free, as [`RELEASE`] does.
///
/// The waiter may not know its entry: the turn that queued it went unanswered (cut off in
/// flight, timed out), or queued it again under a new deadline. Then its entries are
/// found by grant id (`GRANT@…` or `GRANT|…`), every one of them: a look through the
/// queue, O(its length), paid only when the entry named is not there (unknown, or already
/// taken by a hand-off). Left behind, such an entry would be granted the lock by the next
/// release, for its whole TTL, with nobody to use or free it.
pub(crate) static LEAVE: LazyLock<Lua> = LazyLock::new(|| {
    Lua::new(&format!(
        r"{HAND_OFF}{SIGNAL_FREE}
local removed = 0
if ARGV[4] ~= '' then
  removed = redis.call('LREM', KEYS[3], 1, ARGV[4])
end
if removed == 0 then
  local n = string.len(ARGV[1])
  for _, e in ipairs(redis.call('LRANGE', KEYS[3], 0, -1)) do
    local after = string.sub(e, n + 1, n + 1)
    if string.sub(e, 1, n) == ARGV[1] and (after == '@' or after == '|') then
      redis.call('LREM', KEYS[3], 0, e)
    end
  end
end
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1], KEYS[4])
  if string.find(KEYS[1], '{{election.', 1, true) then
    redis.call('PUBLISH', ARGV[2] .. 'changed', 'r')
  end
  if not hand_off(ARGV[3], ARGV[2]) then
    signal_free(KEYS[5])
  end
  return 1
end
return 0
"
    ))
});

/// KEYS: lock. ARGV: grant id, ttl ms. Sets a new TTL only if the lock holds our grant.
/// Returns 1 when extended, 0 when it was not ours.
pub(crate) static EXTEND: LazyLock<Lua> = LazyLock::new(|| {
    Lua::new(
        r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
",
    )
});

/// KEYS: locks 1..n. ARGV: grant id 1, ttl ms 1, …, grant id n, ttl ms n. [`EXTEND`] for
/// many grants in one round trip (batched auto-renewals), except that a renewal never
/// shortens a grant: it waits for its batch after the lease recorded its request, and a
/// renewal landing after a later extend must not cut the key back to its own TTL
/// (conformance `renewal_never_undoes_a_later_extend`). The lease now waits for its
/// renewal's answer before it sends an extend, so this covers a renewal it gave up on
/// with an error that still lands later. `PTTL` rather than `PEXPIRE … GT` (Redis 7).
/// Returns one 1/0 per key. A key of another type (`WRONGTYPE`, `redis.pcall`: an error
/// value, not a raised error) answers 0 alone; raised, it failed the whole batch, and
/// every lease in it was lost.
pub(crate) static EXTEND_MANY: LazyLock<Lua> = LazyLock::new(|| {
    Lua::new(
        r"
local out = {}
for i = 1, #KEYS do
  if redis.pcall('GET', KEYS[i]) == ARGV[2 * i - 1] then
    if redis.call('PTTL', KEYS[i]) < tonumber(ARGV[2 * i]) then
      redis.call('PEXPIRE', KEYS[i], ARGV[2 * i])
    end
    out[i] = 1
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
pub(crate) static FENCED_WRITE: LazyLock<Lua> = LazyLock::new(|| {
    Lua::new(
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;

    /// The bytes on the wire: `EVALSHA sha numkeys keys... args...`, then the same with
    /// `EVAL source` after a `NOSCRIPT` — each argument a RESP bulk string, empty ones too.
    #[test]
    fn a_call_is_sent_as_evalsha_then_eval_with_keys_before_args() {
        let lua = Lua::new("return 1");
        let mut call = lua.call();
        call.key("k{1}:lock".to_owned())
            .key("")
            .arg("g1")
            .arg(60_000u64)
            .arg("");
        let sha = lua.script.get_hash().to_owned();
        let expected = |name: &str, body: &str| {
            let parts = [name, body, "2", "k{1}:lock", "", "g1", "60000", ""];
            let mut resp = format!("*{}\r\n", parts.len());
            for p in parts {
                resp.push_str(&format!("${}\r\n{p}\r\n", p.len()));
            }
            resp.into_bytes()
        };
        assert_eq!(call.command(false).get_packed_command(), expected("EVALSHA", &sha));
        assert_eq!(call.command(true).get_packed_command(), expected("EVAL", "return 1"));
    }
}
