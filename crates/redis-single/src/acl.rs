//! What the Redis user may run, asked once per connection in the connect's round trip.
//!
//! A user whose ACL refuses a command fencelock needs failed far from the cause: without
//! `MULTI` the redis crate panicked on every acquire (its transaction reader underflows on
//! a refused `MULTI`) and the acquire looked like a lost server until its wait ended;
//! without a command a script calls (`LPOS`, `PUBLISH`, …) a release failed with a warning
//! and left the key held for its TTL. So the connection asks, with the user's own rights,
//! in one pipeline sent beside the connect's other requests:
//!
//! * an empty `MULTI`/`EXEC` transaction (the uncontended acquire's);
//! * `EVALSHA` of a hash no script has: `NOSCRIPT` when the user may call it, `NOPERM`
//!   when not;
//! * `EVAL` of [`PROBE`], which asks `redis.acl_check_cmd` (Redis 7.0 and later; older
//!   servers skip this part) about every command the scripts call, on a key and a channel
//!   under the prefix. `EVAL` refused is itself the answer for `EVAL`.
//!
//! Any refusal is [`LockError::InvalidConfig`] naming the commands — except `PUBSUB
//! NUMSUB`, which the scripts can do without (they fall back on `PUBLISH`'s answer): that
//! one is a warning. Peer layouts' lock keys lie outside the prefix; only the prefix's
//! keys are asked about.

use fencelock_core::LockError;
use redis::aio::ConnectionManager;
use redis::Value;

/// Asks `redis.acl_check_cmd` about each command the scripts call (`KEYS[1]` a key and
/// `ARGV[1]` a channel under the prefix; `ARGV[2]` = `1`: also `INFO server`, which the
/// grant scripts read with a `restart_delay`); returns the refused ones, upper case.
/// Nothing on a server without `redis.acl_check_cmd`.
pub(crate) const PROBE: &str = r"
if not redis.acl_check_cmd then return {} end
local k, ch = KEYS[1], ARGV[1]
local probes = {
  {'get', k}, {'set', k, 'v'}, {'del', k}, {'incr', k}, {'pexpire', k, '1'},
  {'pexpireat', k, '1'}, {'pttl', k}, {'time'}, {'publish', ch, 'm'},
  {'hmget', k, 'f'}, {'hset', k, 'f', 'v'}, {'lindex', k, '0'}, {'llen', k},
  {'lpop', k}, {'lpos', k, 'x'}, {'lpush', k, 'x'}, {'lrange', k, '0', '1'},
  {'lrem', k, '0', 'x'}, {'rpush', k, 'x'}, {'subscribe', ch}, {'pubsub', 'numsub', ch},
}
if ARGV[2] == '1' then table.insert(probes, {'info', 'server'}) end
local refused = {}
for _, p in ipairs(probes) do
  local ok, allowed = pcall(redis.acl_check_cmd, unpack(p))
  if ok and not allowed then
    local name = string.upper(p[1])
    if p[1] == 'pubsub' then name = 'PUBSUB NUMSUB' end
    table.insert(refused, name)
  end
end
return refused
";

/// The one command a refusal of which only costs something (see [`check`]).
const OPTIONAL: &str = "PUBSUB NUMSUB";

/// A SHA1 no script has (`EVALSHA` of it answers `NOSCRIPT` to a user allowed to call it).
const NO_SCRIPT: &str = "0000000000000000000000000000000000000000";

/// Asks the server what of fencelock's commands the connection's user is refused, in one
/// pipeline; `Ok` when nothing is, when only `PUBSUB NUMSUB` is (logged as a warning), or
/// when no answer came within `timeout` (then the commands' own errors tell later).
/// `prefix`: the keys' prefix; `server`: for messages; `info`: the scripts read `INFO
/// server` (a `restart_delay`), so a refused `INFO` is refused configuration too.
///
/// # Errors
/// [`LockError::InvalidConfig`] naming what the user is refused.
pub(crate) async fn check(
    conn: &ConnectionManager,
    prefix: &str,
    server: &str,
    timeout: std::time::Duration,
    info: bool,
) -> Result<(), LockError> {
    let mut pipe = redis::pipe();
    pipe.ignore_errors();
    pipe.cmd("EVAL")
        .arg(PROBE)
        .arg(1)
        .arg(format!("{prefix}{{acl-probe}}:lock"))
        .arg(format!("{prefix}i:acl-probe"))
        .arg(if info { "1" } else { "0" });
    pipe.cmd("EVALSHA").arg(NO_SCRIPT).arg(0);
    // Last and together: nothing of ours is queued inside the transaction.
    pipe.cmd("MULTI").cmd("EXEC");
    let mut conn = conn.clone();
    let answers =
        match tokio::time::timeout(timeout, pipe.query_async::<Vec<redis::RedisResult<Value>>>(&mut conn)).await {
            Ok(Ok(answers)) => answers,
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "could not ask which commands the user may run");
                return Ok(());
            }
            Err(_) => return Ok(()),
        };
    let mut refused = refused(&answers, prefix);
    if let Some(at) = refused.iter().position(|r| r == OPTIONAL) {
        refused.remove(at);
        tracing::warn!(
            %server,
            "the Redis user is refused PUBSUB NUMSUB (ACL: +pubsub|numsub): a release tells a dead \
             queued waiter by PUBLISH's answer instead, so while a pattern subscriber listens \
             on the server (PSUBSCRIBE: redis-cli, a dashboard) each dead waiter at the head \
             costs its TTL (Redlock: the claim window)"
        );
    }
    if refused.is_empty() {
        return Ok(());
    }
    if let Some(info) = refused.iter_mut().find(|r| *r == "INFO") {
        *info = "INFO (restart_delay is set: the grant scripts read the server's uptime from \
                 INFO server; ACL: +info)"
            .to_owned();
    }
    let commands = refused.join(", ");
    Err(LockError::InvalidConfig {
        message: format!(
            "the Redis user on {server} is refused what fencelock needs: {commands}; \
             grant it (docs/backends/redis.md, \"What the Redis user needs\")"
        ),
        source: Some(Box::new(crate::error::RightsRefused { commands })),
    })
}

/// What the answers of [`check`]'s pipeline (probe, `EVALSHA`, `MULTI`, `EXEC`) say is
/// refused: commands, or access to the keys or channels under `prefix` — a `NOPERM` about
/// keys is not about the command.
fn refused(answers: &[redis::RedisResult<Value>], prefix: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    match answers.first() {
        Some(Ok(Value::Array(names))) => {
            for n in names {
                if let Ok(name) = redis::from_redis_value_ref::<String>(n) {
                    note(&mut out, name);
                }
            }
        }
        a => judge(&mut out, a, "EVAL", prefix),
    }
    judge(&mut out, answers.get(1), "EVALSHA", prefix);
    judge(&mut out, answers.get(2), "MULTI", prefix);
    // EXEC refused after an allowed MULTI aborts the transaction (`EXECABORT`); after a
    // refused MULTI it says "EXEC without MULTI", which is MULTI's refusal, not its own.
    if !matches!(answers.get(2), Some(Err(_))) {
        judge(&mut out, answers.get(3), "EXEC", prefix);
    }
    out
}

fn note(out: &mut Vec<String>, what: String) {
    if !out.contains(&what) {
        out.push(what);
    }
}

/// Notes what an error answer to `command` says is refused.
fn judge(out: &mut Vec<String>, answer: Option<&redis::RedisResult<Value>>, command: &str, prefix: &str) {
    let Some(Err(e)) = answer else { return };
    let text = fencelock_core::error::one_line(e);
    let no_perm = crate::error::no_permission(e);
    if no_perm && text.contains("keys") {
        note(out, format!("access to the keys under `{prefix}`"));
    } else if no_perm && text.contains("channel") {
        note(out, format!("access to the channels under `{prefix}`"));
    } else if no_perm || text.contains("unknown command") {
        note(out, command.to_owned());
    }
}
