//! Layouts (issue 17): how the lock nodes of a key are named and where they live, so that
//! fencelock can queue with another library's ZooKeeper lock recipe on the same path.
//!
//! | layout | lock path | our node | who sees whom |
//! |---|---|---|---|
//! | `fencelock` (default) | `CHROOT/KEYNODE` (key escaped into one name) | `lock-GRANT-lock-SEQ` | Curator orders it by the text after its last `lock-`; kazoo only with `extra_lock_patterns=["-lock-"]` |
//! | `curator` | `CHROOT/KEY` (key = a path, as given) | `_c_UUID-lock-SEQ` (Curator `InterProcessMutex` with protection) | Curator |
//! | `kazoo` | `CHROOT/KEY` (as given) | `HEX__lock__SEQ` (kazoo `Lock`) | kazoo, and Curator only by accident of string order — do not mix those two |
//!
//! In every layout fencelock orders **every** child whose name ends in a sequence number
//! ([`crate::names::sequence`]: 10 characters, 11 after the counter wrapped), so it never
//! ignores a foreign contender. The default layout refuses to queue beside kazoo's
//! `__lock__`/`__rlock__` nodes (kazoo, unless told otherwise, does not see ours); see
//! `docs/interop-zookeeper.md`.
//!
//! Sources of the peers' rules (read for the facts, checked by `tests/interop_*.rs` against
//! the real clients): Curator 5.4 `StandardLockInternalsDriver.fixForSorting` (the text after
//! the last `lock-`, compared as strings, over every child) and `CreateBuilder.withProtection`
//! (`_c_UUID-`); kazoo 2.11 `Lock` (`uuid4().hex + "__lock__"`, contenders matched by
//! `(__lock__|extra_lock_patterns)(-?\d{10})$`).

use std::fmt;
use std::str::FromStr;

use fencelock_core::{GrantId, Guarantees, LockError, Result};

use crate::lock::GUARANTEES;
use crate::names::{key_dir, refused_by_zookeeper, split_sequence};

/// What the backend promises in the `curator` and `kazoo` layouts: the same, with what
/// sharing the lock with a peer library changes spelled out.
const PEER_LAYOUT_GUARANTEES: Guarantees = Guarantees {
    assumptions: &[
        "the ensemble keeps a quorum; node creation and deletion are ZAB-committed",
        "tokens are the lock node's creation zxid: strictly increasing across the whole ensemble",
        "the session timeout plays the TTL's role: a holder that pauses past it can still act after another holder got the lock: send the token to the resource",
        "every server of the ensemble has the same tickTime and min/max session timeout, and the session timeout is at least 2 × tickTime: a validity is derived from the timeout negotiated at connect, which zookeeper-client does not re-read after a reconnect (after lowering tickTime or maxSessionTimeout, connect the clients anew)",
        "every holder of the shared path follows the ZooKeeper lock recipe (Curator's InterProcessMutex, kazoo's Lock); a peer's grant carries no fencing token, so only fencelock's writes are fenced unless the peer sends its own node's czxid",
    ],
    ..GUARANTEES
};

/// The node names and lock path fencelock uses for a key (URL option `layout=`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ZkLayout {
    /// fencelock's own layout: `CHROOT/KEYNODE/lock-GRANT-lock-SEQ`, the key escaped into
    /// one znode name ([`crate::key_node`]).
    #[default]
    Fencelock,
    /// Curator's `InterProcessMutex`: `CHROOT/KEY/_c_UUID-lock-SEQ`, the key a relative
    /// path used exactly as given (`/` separates znodes, nothing is escaped).
    Curator,
    /// kazoo's `Lock`: `CHROOT/KEY/HEX__lock__SEQ`, the key used as given.
    Kazoo,
}

impl ZkLayout {
    /// The name used in URLs.
    pub fn as_str(self) -> &'static str {
        match self {
            ZkLayout::Fencelock => "fencelock",
            ZkLayout::Curator => "curator",
            ZkLayout::Kazoo => "kazoo",
        }
    }

    /// `true` for the layouts that take the key as a path (the peers' layouts).
    pub fn takes_paths(self) -> bool {
        self != ZkLayout::Fencelock
    }

    /// The lock path relative to the chroot: the key's escaped node in the default layout,
    /// the key itself (checked, never rewritten) in the peers' layouts.
    ///
    /// # Errors
    /// [`LockError::InvalidInput`] (peers' layouts) for a key that is not a relative
    /// znode path: a leading, trailing or doubled `/`, a `.` or `..` segment, or a
    /// character ZooKeeper refuses in a name; or, with no chroot (`/`), a key in
    /// ZooKeeper's own reserved subtree (`zookeeper`, `zookeeper/…`), which the server
    /// would refuse with an unclear error.
    pub(crate) fn dir(self, key: &str, chroot: &str) -> Result<String> {
        if !self.takes_paths() {
            return Ok(key_dir(key));
        }
        let bad = |why: &str| {
            LockError::invalid_input(format!(
                "key `{key}` is not a lock path for layout={}: {why} (write it relative to the chroot, e.g. `locks/mylock` for /locks/mylock with zk://HOST:PORT/?layout={})",
                self.as_str(),
                self.as_str()
            ))
        };
        // The root is stored as `` (a URL's bare `/`); `/` from a config set in code.
        let at_root = chroot.is_empty() || chroot == "/";
        if at_root && key.split('/').next() == Some("zookeeper") {
            return Err(bad("it lies in /zookeeper, ZooKeeper's own reserved subtree"));
        }
        if key.split('/').next() == Some(&crate::waiting::DIR[1..]) {
            return Err(bad("`%waiting` under the chroot holds fencelock's waiting markers"));
        }
        for segment in key.split('/') {
            match segment {
                "" => return Err(bad("empty segment (leading, trailing or doubled `/`)")),
                "." | ".." => return Err(bad("`.` and `..` are not znode names")),
                s if s.chars().any(refused_by_zookeeper) => {
                    return Err(bad("a character ZooKeeper refuses in a znode name"))
                }
                _ => {}
            }
        }
        Ok(format!("/{key}"))
    }

    /// What the backend promises in this layout (see [`PEER_LAYOUT_GUARANTEES`]).
    pub(crate) fn guarantees(self) -> Guarantees {
        if self.takes_paths() {
            PEER_LAYOUT_GUARANTEES
        } else {
            GUARANTEES
        }
    }

    /// The prefix of our node's name (ZooKeeper appends the 10-digit sequence). The grant id
    /// in it finds the node again when a create's answer is lost.
    pub(crate) fn prefix(self, grant: &GrantId) -> String {
        match self {
            ZkLayout::Fencelock => format!("lock-{grant}-lock-"),
            ZkLayout::Curator => format!("_c_{}-lock-", uuid_form(grant.as_str())),
            ZkLayout::Kazoo => format!("{grant}__lock__"),
        }
    }

    /// Refuses a queue that this layout cannot share: the default layout beside kazoo's
    /// nodes (kazoo does not see ours unless given `extra_lock_patterns=["-lock-"]`).
    ///
    /// # Errors
    /// [`LockError::InvalidConfig`] naming the foreign node and the layout to use.
    pub(crate) fn check_neighbours(self, dir: &str, children: &[String]) -> Result<()> {
        if self != ZkLayout::Fencelock {
            return Ok(());
        }
        match children.iter().find(|c| is_kazoo_node(c)) {
            Some(foreign) => Err(LockError::invalid_config(format!(
                "{dir} holds kazoo's lock node `{foreign}`: kazoo does not see fencelock's default nodes, so the two would not exclude each other; connect with ?layout=kazoo and the key as kazoo's lock path"
            ))),
            None => Ok(()),
        }
    }
}

impl fmt::Display for ZkLayout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ZkLayout {
    type Err = LockError;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "fencelock" => Ok(ZkLayout::Fencelock),
            "curator" => Ok(ZkLayout::Curator),
            "kazoo" => Ok(ZkLayout::Kazoo),
            _ => Err(LockError::invalid_config(format!(
                "unknown layout `{s}` (zk takes fencelock, curator, kazoo)"
            ))),
        }
    }
}

/// A kazoo `Lock`/`ReadLock` contender: `…__lock__` or `…__rlock__` and the sequence.
fn is_kazoo_node(name: &str) -> bool {
    split_sequence(name).is_some_and(|(stem, _)| stem.ends_with("__lock__") || stem.ends_with("__rlock__"))
}

/// A 32-hex grant id written as a UUID (8-4-4-4-12), as Curator's protection prefix is;
/// any other id as it is.
fn uuid_form(hex: &str) -> String {
    if hex.len() != 32 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return hex.to_owned();
    }
    format!(
        "{}-{}-{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peers_layouts_take_the_key_as_a_path_and_refuse_bad_ones() {
        assert_eq!(ZkLayout::Curator.dir("locks/mylock", "/").unwrap(), "/locks/mylock");
        assert_eq!(ZkLayout::Kazoo.dir("mylock", "/").unwrap(), "/mylock");
        assert_eq!(ZkLayout::Fencelock.dir("locks/mylock", "/").unwrap(), "/locks%2Fmylock");
        // Under a chroot, `zookeeper` is an ordinary name; at the root it is reserved.
        assert_eq!(ZkLayout::Curator.dir("zookeeper/x", "/apps").unwrap(), "/zookeeper/x");
        assert_eq!(ZkLayout::Fencelock.dir("zookeeper", "/").unwrap(), "/zookeeper");
        // The root as a URL's bare `/` stores it (found by a newcomer: the check compared
        // with `/` only and never fired), and as a config set in code may give it.
        let cfg = crate::ZkConfig::from_url("zk://127.0.0.1:1/?layout=kazoo").unwrap();
        for root in [cfg.chroot.as_str(), "/"] {
            for key in ["zookeeper", "zookeeper/quota/x"] {
                let e = ZkLayout::Kazoo.dir(key, root).unwrap_err();
                assert!(e.to_string().contains("reserved"), "{key:?} at {root:?}: {e}");
            }
        }
        for key in ["/locks", "locks/", "a//b", "a/./b", "..", "a/\u{1}"] {
            let e = ZkLayout::Curator.dir(key, "/").unwrap_err();
            assert!(matches!(e, LockError::InvalidInput { .. }), "{key:?}: {e}");
            assert!(e.to_string().contains("layout=curator"), "{e}");
        }
    }

    #[test]
    fn node_names_are_the_peers_names() {
        let g = GrantId::from_string("0123456789abcdef0123456789abcdef");
        assert_eq!(
            ZkLayout::Fencelock.prefix(&g),
            "lock-0123456789abcdef0123456789abcdef-lock-"
        );
        assert_eq!(
            ZkLayout::Curator.prefix(&g),
            "_c_01234567-89ab-cdef-0123-456789abcdef-lock-"
        );
        assert_eq!(ZkLayout::Kazoo.prefix(&g), "0123456789abcdef0123456789abcdef__lock__");
        assert_eq!("kazoo".parse::<ZkLayout>().unwrap(), ZkLayout::Kazoo);
        assert!("Curator".parse::<ZkLayout>().is_err());
    }

    #[test]
    fn the_default_layout_refuses_kazoo_neighbours_only() {
        let kazoo = "5f1d3a6c2e8b4f0a9c7d1e2f3a4b5c6d__lock__0000000003".to_owned();
        let curator = "_c_0f7c1a4e-1111-2222-3333-444455556666-lock-0000000004".to_owned();
        let e = ZkLayout::Fencelock
            .check_neighbours("/k", &[curator.clone(), kazoo.clone()])
            .unwrap_err();
        assert!(e.to_string().contains("layout=kazoo"), "{e}");
        ZkLayout::Fencelock.check_neighbours("/k", &[curator]).unwrap();
        ZkLayout::Kazoo.check_neighbours("/k", &[kazoo]).unwrap();
        assert!(is_kazoo_node("x__rlock__0000000001"));
        assert_eq!(ZkLayout::Fencelock.guarantees(), GUARANTEES);
        let peer = ZkLayout::Curator.guarantees();
        assert_eq!((peer.exclusion, peer.tokens), (GUARANTEES.exclusion, GUARANTEES.tokens));
        assert!(peer
            .assumptions
            .iter()
            .any(|a| a.contains("only fencelock's writes are fenced")));
        // The peer layouts' list repeats the default one and adds to it: keep them in step.
        assert_eq!(
            &peer.assumptions[..GUARANTEES.assumptions.len()],
            GUARANTEES.assumptions
        );
        assert!(!is_kazoo_node("x__lock__"));
    }
}
