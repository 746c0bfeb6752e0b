//! Key layouts: where a lock lives on the server, fencelock's own names or those of another
//! library's Redis lock, so that fencelock and that library exclude each other on one key.
//!
//! Every peer layout keeps the lock itself as those libraries do — one string key, `SET NX
//! PX` with a random value, released by compare-value-then-`DEL` and extended by
//! compare-value-then-`PEXPIRE` — and fencelock's grant id (32 hex digits) is that value,
//! so a peer's compare-and-delete works on fencelock's lock and fencelock's on theirs.
//! fencelock's own keys beside it (the token counter, the waiter queue, the reservation)
//! share the lock key's Redis Cluster hash slot: they carry the lock key's hash tag, or
//! the whole lock key as their tag when it has none.
//!
//! Facts about the peers (observed on Redis 7.0 with the real clients, see
//! `docs/interop.md`): node-redlock and redsync use the resource name as the key; pottery's
//! `Redlock` uses `redlock:NAME`; python-redis-lock uses `lock:NAME` (and a list
//! `lock-signal:NAME` that its releasers push to).

use fencelock_core::{Guarantees, LockError, Result};

/// What a peer layout adds to a backend's assumptions.
const PEER_ASSUMPTION: &str = "the lock key is shared with another library's recipe (layout=bare, python-redis-lock or pottery): exclusion holds against it, but a peer's grant carries no fencing token, so only fencelock's writes can be fenced";

/// How the Redis keys of a lock are named.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RedisLayout {
    /// fencelock's own: `PREFIX{KEY}:lock`, `PREFIX{KEY}:token`, … (the default).
    #[default]
    Fencelock,
    /// The key exactly as given, as node-redlock, redsync and rslock name it.
    Bare,
    /// `lock:KEY`, as python-redis-lock names it.
    PythonRedisLock,
    /// `redlock:KEY`, as pottery's `Redlock` names it.
    Pottery,
}

impl RedisLayout {
    /// Reads `fencelock`, `bare`, `python-redis-lock` or `pottery` (the URL's `layout=`).
    ///
    /// # Errors
    /// A message naming the accepted values.
    pub fn parse(v: &str) -> std::result::Result<Self, String> {
        match v {
            "fencelock" => Ok(RedisLayout::Fencelock),
            "bare" => Ok(RedisLayout::Bare),
            "python-redis-lock" => Ok(RedisLayout::PythonRedisLock),
            "pottery" => Ok(RedisLayout::Pottery),
            _ => Err(format!(
                "layout must be fencelock, bare, python-redis-lock or pottery; got `{v}`"
            )),
        }
    }

    /// `true` for a peer library's layout: peers publish nothing on fencelock's channels,
    /// so a waiter re-checks at the configured poll (bounded by the holder's PTTL) instead
    /// of only when a hand-off message would be lost.
    pub fn is_peer(self) -> bool {
        self != RedisLayout::Fencelock
    }

    /// The layout's name, as the URL's `layout=` takes it.
    pub fn name(self) -> &'static str {
        match self {
            RedisLayout::Fencelock => "fencelock",
            RedisLayout::Bare => "bare",
            RedisLayout::PythonRedisLock => "python-redis-lock",
            RedisLayout::Pottery => "pottery",
        }
    }

    /// Elections (Redis and Redlock) run in fencelock's own layout only: the seat keeps its
    /// record, counter and change channel under fencelock's names (`PREFIX{election.NAME}:…`),
    /// which a peer layout's lock key does not match, and none of the peers has an election
    /// recipe on these keys to share.
    ///
    /// # Errors
    /// [`LockError::InvalidConfig`] for a peer layout, naming it and the fix.
    pub fn refuse_for_elections(self) -> Result<()> {
        if !self.is_peer() {
            return Ok(());
        }
        Err(LockError::invalid_config(format!(
            "leader election does not support layout={}: an election's keys are fencelock's own and no peer library elects on them; run elections in the default layout (drop `layout=`)",
            self.name()
        )))
    }

    /// `base` as it holds in this layout: a peer layout adds that a peer's grant carries
    /// no fencing token, so only fencelock's writes are fenced.
    pub fn guarantees(self, base: Guarantees) -> Guarantees {
        match self {
            RedisLayout::Fencelock => base,
            _ => base.with_assumption(PEER_ASSUMPTION),
        }
    }

    /// The lock key of `key` in a peer layout; `None` in fencelock's own.
    fn peer_lock(self, key: &str) -> Option<String> {
        match self {
            RedisLayout::Fencelock => None,
            RedisLayout::Bare => Some(key.to_owned()),
            RedisLayout::PythonRedisLock => Some(format!("lock:{key}")),
            RedisLayout::Pottery => Some(format!("redlock:{key}")),
        }
    }
}

/// Redis Cluster's hash tag of a key: the text between the first `{` and the first `}`
/// after it, when that text is not empty.
fn hash_tag(name: &str) -> Option<&str> {
    let open = name.find('{')?;
    let len = name[open + 1..].find('}')?;
    (len > 0).then(|| &name[open + 1..open + 1 + len])
}

/// Redis keys and channels of one lock key, per layout.
#[derive(Debug, Clone)]
pub(crate) struct Keys {
    pub(crate) prefix: String,
    pub(crate) layout: RedisLayout,
}

impl Keys {
    /// Checks that `key` can be laid out: in a peer layout, a lock key without a hash tag
    /// of its own becomes the tag of fencelock's keys beside it, which a `}` would cut.
    ///
    /// # Errors
    /// [`LockError::InvalidInput`] naming the key.
    ///
    /// A peer lock key shaped like one of fencelock's own keys (`PREFIX{…`, `PREFIXboot`)
    /// is refused too: it would be the physical key of a fencelock-layout lock counted by a
    /// second token counter (two grants of one key with equal tokens), or a counter or
    /// queue of fencelock's.
    pub(crate) fn check(&self, key: &str) -> Result<()> {
        let Some(name) = self.layout.peer_lock(key) else {
            return Ok(());
        };
        if hash_tag(&name).is_none() && name.contains('}') {
            return Err(LockError::invalid_input(format!(
                "key `{key}`: in a peer layout a key with `}}` needs a hash tag `{{...}}` of its own, so fencelock's token counter can share its Redis Cluster slot"
            )));
        }
        if let Some(rest) = name.strip_prefix(&self.prefix) {
            if rest.starts_with('{') || rest == "boot" {
                return Err(LockError::invalid_input(format!(
                    "key `{key}`: with layout={} its Redis key `{name}` lies in fencelock's own namespace (prefix `{}`), where it would be one of fencelock's keys, with a token counter of its own; choose a name outside it",
                    self.layout.name(),
                    self.prefix
                )));
            }
        }
        Ok(())
    }

    /// A key of fencelock's beside the lock, in its hash slot.
    ///
    /// Built with `concat`, not `format!`, here and in [`lock`](Self::lock): an acquire
    /// and a release build up to five of these, and `format!` grows its buffer from a
    /// guess — about 1,900 instructions a key against about 200 (callgrind, `fencelock
    /// bench`'s uncontended cycle).
    fn beside(&self, key: &str, what: &str) -> String {
        let prefix = self.prefix.as_str();
        match self.layout.peer_lock(key) {
            None => [prefix, "{", key, "}:", what].concat(),
            Some(name) if hash_tag(&name).is_some() => [prefix, &name, ":", what].concat(),
            Some(name) => [prefix, "{", &name, "}:", what].concat(),
        }
    }

    pub(crate) fn lock(&self, key: &str) -> String {
        self.layout
            .peer_lock(key)
            .unwrap_or_else(|| [self.prefix.as_str(), "{", key, "}:lock"].concat())
    }
    pub(crate) fn counter(&self, key: &str) -> String {
        self.beside(key, "token")
    }
    /// The FIFO queue of waiters (a list of `GRANT@INSTANCE_CHANNEL|DEADLINE_MS`).
    pub(crate) fn queue(&self, key: &str) -> String {
        self.beside(key, "queue")
    }
    /// The reservation of the queue head written by earlier versions (`GRANT TOKEN`,
    /// expiring with the reserved lock): no longer written; a leave still deletes it.
    pub(crate) fn reservation(&self, key: &str) -> String {
        self.beside(key, "reserved")
    }
    /// The prefix of the key's named channels (`changed` of an election seat; earlier
    /// versions' per-waiter channels, followed by a grant id).
    pub(crate) fn waiter_channels(&self, key: &str) -> String {
        self.beside(key, "w:")
    }
    /// python-redis-lock's signal list, `lock-signal:KEY`, in that layout only: its
    /// waiters `BLPOP` it, its releases push it, and so do fencelock's (see `RELEASE`).
    pub(crate) fn signal(&self, key: &str) -> Option<String> {
        (self.layout == RedisLayout::PythonRedisLock).then(|| format!("lock-signal:{key}"))
    }
    pub(crate) fn boot(&self) -> String {
        format!("{}boot", self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(layout: RedisLayout) -> Keys {
        Keys {
            prefix: "fencelock:".into(),
            layout,
        }
    }

    #[test]
    fn fencelock_layout_is_unchanged() {
        let k = keys(RedisLayout::Fencelock);
        assert_eq!(k.lock("a"), "fencelock:{a}:lock");
        assert_eq!(k.counter("a"), "fencelock:{a}:token");
        assert_eq!(k.queue("a"), "fencelock:{a}:queue");
        assert_eq!(k.reservation("a"), "fencelock:{a}:reserved");
        assert_eq!(k.waiter_channels("a"), "fencelock:{a}:w:");
        assert_eq!(k.signal("a"), None);
        k.check("a}b").unwrap();
    }

    #[test]
    fn peer_layouts_use_the_peer_key_and_share_its_slot() {
        for (layout, lock) in [
            (RedisLayout::Bare, "orders"),
            (RedisLayout::PythonRedisLock, "lock:orders"),
            (RedisLayout::Pottery, "redlock:orders"),
        ] {
            let k = keys(layout);
            assert_eq!(k.lock("orders"), lock);
            assert_eq!(k.counter("orders"), format!("fencelock:{{{lock}}}:token"));
            assert_eq!(
                hash_tag(&k.counter("orders")),
                Some(lock),
                "same slot as the whole lock key"
            );
            assert_eq!(hash_tag(&k.queue("orders")), Some(lock));
            // A key with its own tag keeps it: every key lands in the tag's slot.
            assert_eq!(hash_tag(&k.lock("a{t}b")), Some("t"));
            assert_eq!(hash_tag(&k.counter("a{t}b")), Some("t"));
            // ... and the names beside it are the whole peer key, prefixed, unbraced.
            let tagged = k.lock("a{t}b");
            assert_eq!(k.counter("a{t}b"), format!("fencelock:{tagged}:token"));
            assert_eq!(k.queue("a{t}b"), format!("fencelock:{tagged}:queue"));
            assert_eq!(k.reservation("a{t}b"), format!("fencelock:{tagged}:reserved"));
            assert_eq!(k.waiter_channels("a{t}b"), format!("fencelock:{tagged}:w:"));
            assert_eq!(hash_tag(&k.reservation("a{t}b")), Some("t"));
            // No valid tag but an opening brace: the whole name is the tag.
            assert_eq!(hash_tag(&k.counter("a{")), Some(k.lock("a{").as_str()));
            assert!(k.check("a}b").is_err());
            assert!(k.check("a{}b}").is_err());
            k.check("a{t}b}").unwrap();
        }
        assert!(RedisLayout::Bare.is_peer() && !RedisLayout::Fencelock.is_peer());
        assert_eq!(
            keys(RedisLayout::PythonRedisLock).signal("o"),
            Some("lock-signal:o".into())
        );
        assert_eq!(keys(RedisLayout::Pottery).signal("o"), None);
        assert_eq!(keys(RedisLayout::Bare).signal("o"), None);
    }

    /// A peer layout's lock key inside fencelock's own namespace would be the physical key
    /// of a fencelock-layout lock with a second token counter (two grants of one Redis key
    /// with token 1 each), or one of fencelock's counters or queues: refused, with the
    /// reason. (A newcomer got token 1 twice on `fencelock:{zz2}:lock`.)
    #[test]
    fn peer_keys_in_fencelock_namespace_are_refused() {
        let bare = keys(RedisLayout::Bare);
        for own in ["fencelock:{zz2}:lock", "fencelock:{zz}:token", "fencelock:boot"] {
            let err = bare.check(own).expect_err(own).to_string();
            assert!(err.contains("fencelock:") && err.contains("namespace"), "{err}");
        }
        // Near misses stay allowed: another prefix, or the prefix's text without a tag.
        bare.check("fencelockish:{a}").unwrap();
        bare.check("fencelock:orders").unwrap();
        // python-redis-lock's `lock:KEY` meets a prefix of `lock:`.
        let k = Keys {
            prefix: "lock:".into(),
            layout: RedisLayout::PythonRedisLock,
        };
        assert!(k.check("{a}:x").is_err());
        keys(RedisLayout::Fencelock).check("fencelock:{zz2}:lock").unwrap();
    }

    #[test]
    fn layout_names_parse() {
        assert_eq!(RedisLayout::parse("bare"), Ok(RedisLayout::Bare));
        assert_eq!(
            RedisLayout::parse("python-redis-lock"),
            Ok(RedisLayout::PythonRedisLock)
        );
        assert_eq!(RedisLayout::parse("pottery"), Ok(RedisLayout::Pottery));
        assert_eq!(RedisLayout::parse("fencelock"), Ok(RedisLayout::Fencelock));
        assert!(RedisLayout::parse("redisson").unwrap_err().contains("layout must be"));
        for l in [
            RedisLayout::Fencelock,
            RedisLayout::Bare,
            RedisLayout::PythonRedisLock,
            RedisLayout::Pottery,
        ] {
            assert_eq!(RedisLayout::parse(l.name()), Ok(l));
            assert_eq!(l.refuse_for_elections().is_ok(), !l.is_peer());
            let g = l.guarantees(crate::GUARANTEES_DURABLE);
            assert_eq!(g.tokens, crate::GUARANTEES_DURABLE.tokens);
            assert_eq!(
                g.assumptions
                    .iter()
                    .any(|a| a.contains("peer's grant carries no fencing token")),
                l.is_peer(),
                "{l:?}: {g}"
            );
        }
    }
}
