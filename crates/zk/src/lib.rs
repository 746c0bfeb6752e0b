//! # fencelock-zk
//!
//! The ZooKeeper backend of fencelock (`zk://HOST:PORT[,HOST:PORT...][/CHROOT]`): the lock
//! recipe of ZooKeeper's documentation on a ZAB-replicated ensemble, with the lock node's
//! **creation zxid** as the fencing token.
//!
//! * **Lock**: an ephemeral sequential node `CHROOT/KEYNODE/lock-GRANT-lock-SEQUENCE` under
//!   a container node; the holder is the oldest sequence among **all** children whose names
//!   end in a sequence number (whichever library made them), compared as serial numbers so
//!   the queue runs on across the 32-bit counter's wrap. Others watch the three nodes
//!   before their own, their own node and at most one waiting marker (no herd: a release
//!   wakes at most three waiters), and look again when it matters.
//! * **Layouts** ([`ZkLayout`], `?layout=`): `curator` and `kazoo` name our nodes as Curator's
//!   `InterProcessMutex` and kazoo's `Lock` do, directly under the lock path given as the
//!   key, so fencelock queues with them (`docs/interop-zookeeper.md`). The default layout's
//!   `…-lock-SEQ` suffix is ordered correctly by Curator too; beside kazoo's nodes it
//!   refuses to queue (`InvalidConfig`), as kazoo does not see fencelock's names.
//! * **Key → node name**: one znode name per key, escaped where ZooKeeper refuses a name
//!   (see [`key_node`]); distinct keys stay distinct.
//! * **Grant id in the name**: the node's name carries the attempt's grant id, kept across
//!   the retries of one `acquire`. When a create's answer is lost, a follow-up syncs and
//!   lists the key's children to find the node by that id, and deletes it if its caller
//!   gave up; a create answered late is deleted when its answer arrives. A follow-up that
//!   gets no answer within its budget goes on in the background (bounded; as a last resort
//!   it ends the session), so a node made during a long outage is deleted too.
//! * **Token** = the node's czxid, not its sequence number: sequence numbers are counted per
//!   parent and restart when an empty container parent is deleted and re-created, while
//!   the zxid grows across the whole ensemble for ever.
//! * **Release** deletes the node, retrying in the background until confirmed or the session
//!   ends (a "guaranteed delete").
//! * **Close**: `close()` waits (bounded) for the background deletions, then closes the
//!   session, which deletes every node it still owns at once.
//! * **Session**: one per backend instance. Its expiry loses every lock held in it, at once;
//!   a disconnect suspends them (`LeaseState::Suspended`) and a reconnect within the session
//!   timeout resumes them.
//!
//! ## TTL and auto-renew on ZooKeeper
//!
//! ZooKeeper nodes have no TTL of their own: a lock node lives as long as its session, and
//! the client keeps the session alive. `session_timeout` therefore plays the TTL's role for a
//! holder that dies or is cut off. The lease's validity is `min(ttl, ¾ session timeout − g)`
//! (g: the client's largest gap between two sends, 5/8 of `connect_timeout` or less)
//! from the send instant of the queue listing that found our node first (not from the
//! create: a long wait must not spend the validity); auto-renew checks (one multi-read per
//! batch of locks) that the node still exists and extends the validity by the same rule.
//! Each of those reads goes behind a `sync`, which the server forwards to the leader: its
//! answer proves the leader had not ended the session when it took the sync (by order: a
//! `closeSession` committed before it closes our connection first; a follower cut off from
//! the leader answers reads from its own copy for `syncLimit` ticks while the leader
//! expires the session), and the quarter and g left out cover how late the leader learns
//! of the session's activity (`session::proven_for_after_gaps`). Without auto-renew, the client gives the node back
//! itself when the TTL ends; a frozen client's node goes when its session expires.
//!
//! Modules, top-down: `lock` (the instance and its methods) · `queue` (taking a place and
//! waiting for the turn) · `grant` (the lease and its extend/renew/release) · `session` ·
//! `cleanup` (background deletions and follow-ups) · `names` (key encoding) · `config` ·
//! `error`.
//!
//! A peer library's grants carry no fencing token: beside Curator or kazoo, only
//! fencelock's holders send tokens (czxids) to the resource, so only their writes are fenced.
//!
//! We implement the recipe rather than wrap `zookeeper_client::Client::lock`, because a
//! lock here must carry a token (the czxid), outlive a borrow of the client (`Lease` is
//! `'static`), report suspension and loss per lease, and count its watch wake-ups.

mod cleanup;
mod config;
mod election;
mod error;
mod grant;
mod layout;
mod lock;
mod names;
mod queue;
mod session;
mod waiting;

pub use config::ZkConfig;
pub use election::ZkElection;
pub use layout::ZkLayout;
pub use lock::{ZkLock, GUARANTEES};

/// The name of the node under which `key`'s lock nodes queue, directly under the chroot
/// in the default layout (`CHROOT/NAME/lock-GRANT-lock-SEQUENCE`): `%`, `/` and the characters ZooKeeper refuses are
/// written `%XX` per UTF-8 byte, `.` and `..` as `%2E` and `%2E%2E`; every other key is
/// its own name. For operators and tests that inspect the server.
pub fn key_node(key: &str) -> String {
    names::key_node(key)
}
