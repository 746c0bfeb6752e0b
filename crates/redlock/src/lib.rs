//! # fencelock-redlock
//!
//! The Redlock algorithm (`redlock://H1:P1,H2:P2,...`) over N independent Redis masters,
//! implemented as published, with its failure modes shown by tests rather than claimed.
//! Files: `config` (options, one validation path), `lock` (the round of the algorithm),
//! `admission` (how many rounds one instance has in flight),
//! `grant` (extend and release of one grant, background release), `heal` (a grant onto
//! the nodes that refused it, once the key is free there), `wait` (waiting and
//! contention), `quorum` (the fan-out), `error` (the no-quorum error).
//!
//! * **Connect** (`RedlockLock::connect`): every node at once, each bounded; a node that
//!   refuses the login, or two nodes that are one server (the same `run_id`, e.g.
//!   `127.0.0.1:P` and `localhost:P`), are `InvalidConfig`; fewer than a quorum
//!   connected is `Unavailable`; a minority that does not answer is connected on first use.
//! * **Acquire**: the same one-round-trip transaction as the single-server backend
//!   (`MULTI`, `SET NX PX`, `INCR`, `EXEC`, from `fencelock-redis`) on **all nodes in parallel**, each bounded
//!   by `per_node_timeout`. Granted when a quorum (N/2 + 1) said yes and validity =
//!   TTL − elapsed − drift is still positive; otherwise released on **all** nodes (those that
//!   did not answer too) and retried after a random delay while `acquire`'s wait lasts.
//!   A grant that some answering nodes refused (still held by the grant before it, whose
//!   release had not reached them) takes them in the background once the key is free
//!   there, raising their counters to its token; this adds nothing to the quorum or the
//!   validity.
//! * **Validity**: the lease's `valid_until` is the start of the round + TTL − drift, not the
//!   TTL. **Extend** needs a quorum again and recomputes it. **Release** goes to every node;
//!   nodes that do not answer within `per_node_timeout` get it again in the background
//!   (bounded by the grant's TTL), and the release returns `Ok` with a logged warning —
//!   it fails (`LeaseLost`) only when more than N − quorum nodes say the grant is not theirs.
//! * **Tokens** are best effort: the highest of the quorum's per-node counters; release
//!   raises every node's counter to the released token, so they grow in the fault-free
//!   case, and can repeat or go back when a node restarts without its data or a grant ends
//!   without its release reaching the nodes.
//! * **Waiting**: subscriptions to the key's release channel on every node, and the random
//!   fallback.
//! * **Delayed restart** (`restart_delay`): enforced by the client on each node inside the
//!   scripts that grant — a node whose server process is younger than the delay (its
//!   uptime, `INFO server`), or whose boot marker is (its data flushed), refuses grants
//!   until the delay has passed, whatever it reloaded from disk. A key refused because
//!   such nodes could have made the quorum is not "held": `try_acquire`, and an `acquire`
//!   whose wait runs out so refused, fail with `Unavailable` naming how many nodes are
//!   inside their delay, how many hold another grant, and when they vote again.
//!
//! ## When to choose it
//!
//! When the lock must survive the loss of a minority of Redis servers and you accept that
//! its safety rests on timing (bounded clock drift, pauses and delays) and on nodes that
//! keep their data or stay out after a restart. When two holders at once would corrupt
//! data, fence the resource with the token — but know that Redlock's tokens are best
//! effort — or use etcd or ZooKeeper. See `docs/backends/redlock.md`.

mod admission;
mod config;
mod election;
mod error;
mod grant;
mod heal;
mod lock;
mod quorum;
mod wait;

pub use config::{RedlockConfig, DRIFT_CONSTANT};
pub use election::RedlockElection;
pub use lock::{RedlockLock, GUARANTEES};
