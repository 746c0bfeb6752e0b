//! # fencelock-zk
//!
//! The ZooKeeper backend of fencelock (`zk://HOST:PORT[,HOST:PORT...][/CHROOT]`): the
//! Curator-style lock recipe on a ZAB-replicated ensemble, with the lock node's **creation
//! zxid** as the fencing token.
//!
//! * **Lock**: an ephemeral sequential node `CHROOT/KEY/lock-GRANT-SEQUENCE` under a
//!   container node; the holder is the lowest sequence. Others watch **only their
//!   predecessor** (no herd) and look again when it goes.
//! * **Protected name**: the grant id in the node's name finds the node again when the
//!   create's answer is lost; an abandoned attempt deletes its node in the background.
//! * **Token** = the node's czxid, not its sequence number: sequence numbers are counted per
//!   parent and restart when an empty container parent is deleted and re-created, while
//!   the zxid grows across the whole ensemble for ever.
//! * **Release** deletes the node, retrying in the background until confirmed or the session
//!   ends (Curator's guaranteed delete).
//! * **Session**: one per backend instance. Its expiry loses every lock held in it, at once;
//!   a disconnect suspends them (`LeaseState::Suspended`) and a reconnect within the session
//!   timeout resumes them.
//!
//! ## TTL and auto-renew on ZooKeeper
//!
//! ZooKeeper nodes have no TTL of their own: a lock node lives as long as its session, and
//! the client keeps the session alive. `session_timeout` therefore plays the TTL's role for a
//! holder that dies or is cut off. The lease's validity is `min(ttl, session timeout)` from
//! the create's send instant; auto-renew checks (one read) that the node still exists and
//! extends the validity by the same rule. Without auto-renew, the client gives the node
//! back itself when the TTL ends; a frozen client's node goes when its session expires.
//!
//! We implement the recipe rather than wrap `zookeeper_client::Client::lock`, because a
//! lock here must carry a token (the czxid), outlive a borrow of the client (`Lease` is
//! `'static`), report suspension and loss per lease, and count its watch wake-ups.

mod config;
mod error;
mod lock;
mod session;

pub use config::ZkConfig;
pub use lock::{ZkLock, GUARANTEES};

/// The name of the node that holds `key`'s queue of lock nodes, directly under the chroot
/// (`CHROOT/NAME/lock-GRANT-SEQUENCE`): for operators and tests that inspect the server.
pub fn key_node(key: &str) -> String {
    lock::escape(key)
}
