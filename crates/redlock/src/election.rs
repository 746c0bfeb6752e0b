//! Leader election over Redlock ([`RedlockElection`]): best effort, and said so.
//!
//! The seat of election `NAME` is the Redlock lock on key `election.NAME` (the term is its
//! best-effort token). The value is written on every node by the single-server backend's
//! `proclaim_on` script, which writes only where that node's lock key holds our grant id;
//! a proclaim stands when a quorum wrote it, and our grant no longer leads only when so
//! many nodes refused it that no quorum can hold it — nodes that did not answer in time
//! make the proclaim `Unavailable`, never a lost leadership. `leader` asks every node and
//! reports the leader a quorum agrees on — a best guess, as Redlock's own guarantees are
//! conditional on timing ([`LeaderRead::BestEffort`]). There is no `observe`: no node's view is
//! authoritative, so it fails with `GuaranteeNotMet` ([`Observation::Unavailable`]) rather
//! than give a feed that could name a leader no quorum holds. The campaign, `leader` and
//! the rest are the shared seat glue of `fencelock_core::election::seat`.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use fencelock_core::election::seat::{SeatBackend, SeatRead, SeatState};
use fencelock_core::election::{ElectionCapabilities, LeaderInfo, LeaderRead, Observation, ProclaimOps};
use fencelock_core::{DistributedLock, Lease, LockError, Result};
use fencelock_redis::{proclaim_on, read_seat_on};

use crate::quorum::{fan_out, Answer, Bound};
use crate::RedlockLock;

/// The election over Redlock's independent Redis nodes.
#[derive(Debug, Clone)]
pub struct RedlockElection {
    lock: RedlockLock,
}

impl RedlockElection {
    /// The election over `lock`'s nodes.
    ///
    /// # Errors
    /// `InvalidConfig` when the nodes use a peer library's layout
    /// ([`RedisLayout::refuse_for_elections`](fencelock_redis::RedisLayout::refuse_for_elections)).
    pub fn new(lock: RedlockLock) -> Result<Self> {
        for node in &lock.config().nodes {
            node.layout.refuse_for_elections()?;
        }
        Ok(RedlockElection { lock })
    }

    /// Builds from a `redlock://` URL, as [`RedlockLock::connect`].
    ///
    /// # Errors
    /// `InvalidConfig` for a peer library's layout; otherwise as [`RedlockLock::connect`].
    ///
    /// # Cancel safety
    /// Cancel safe.
    pub async fn connect(url: &str) -> Result<Self> {
        Self::new(RedlockLock::connect(url).await?)
    }
}

#[async_trait]
impl SeatBackend for RedlockElection {
    fn seat_lock(&self) -> &dyn DistributedLock {
        &self.lock
    }

    fn election_capabilities(&self) -> ElectionCapabilities {
        ElectionCapabilities {
            backend: "redlock",
            terms: self.lock.guarantees().tokens,
            leader: LeaderRead::BestEffort,
            observe: Observation::Unavailable,
            dead_leader_blocks: "its TTL",
        }
    }

    async fn seat_grant(&self, name: &str, _seat: &str, lease: &Lease) -> Result<Arc<dyn ProclaimOps>> {
        Ok(Arc::new(RedlockSeat {
            lock: self.lock.clone(),
            name: name.to_owned(),
            grant: lease.grant().to_string(),
            term: lease.token().get(),
        }))
    }

    /// The leader a quorum of nodes agrees on, or an empty seat a quorum agrees on.
    async fn read_seat(&self, name: &str, _seat: &str) -> Result<SeatRead> {
        let per_node = self.lock.config().per_node_timeout;
        let answers = fan_out(&self.lock.inner.nodes, Bound::strict(per_node), |_, n| {
            let name = name.to_owned();
            async move { read_seat_on(&n, &name).await }
        })
        .await;
        let quorum = self.lock.config().quorum();
        let mut votes: Vec<(LeaderInfo, usize)> = Vec::new();
        let mut empty = 0;
        // Nodes whose seat is held, with or without a record, and the highest term they
        // name (a grant's token is the highest counter among the nodes that granted it).
        let (mut held, mut term) = (0, None::<fencelock_core::FencingToken>);
        for a in answers.into_iter().flatten() {
            match a.state {
                SeatState::Leader(l) => {
                    held += 1;
                    term = term.max(Some(l.term));
                    match votes.iter_mut().find(|(v, _)| *v == l) {
                        Some((_, n)) => *n += 1,
                        None => votes.push((l, 1)),
                    }
                }
                SeatState::Empty => empty += 1,
                SeatState::Unwritten(t) | SeatState::UnwrittenGuess(t) => {
                    held += 1;
                    term = term.max(Some(t));
                }
            }
        }
        if let Some((l, _)) = votes.into_iter().find(|(_, n)| *n >= quorum) {
            return Ok(SeatRead::new(SeatState::Leader(l)));
        }
        if empty >= quorum {
            return Ok(SeatRead::new(SeatState::Empty));
        }
        // Held on a quorum, no record agreed on: a plain lock on the seat's key, or a
        // campaign between its grant and its proclaim reaching a quorum. The seat glue
        // reads again for a while, then reports it with no value.
        // A node's counter is a guess at the holder's token (refused attempts raise it), so
        // the highest of them is one too.
        if let (true, Some(term)) = (held >= quorum, term) {
            return Ok(SeatRead::new(SeatState::UnwrittenGuess(term)));
        }
        Err(LockError::Unavailable {
            message: format!("no quorum of {quorum} nodes agrees on the leader of `{name}`"),
            source: None,
        })
    }
}

/// One leader's grant of a Redlock seat.
struct RedlockSeat {
    lock: RedlockLock,
    name: String,
    grant: String,
    term: u64,
}

#[async_trait]
impl ProclaimOps for RedlockSeat {
    async fn proclaim(&self, value: &[u8]) -> Result<bool> {
        let per_node = self.lock.config().per_node_timeout;
        let answers = fan_out(&self.lock.inner.nodes, Bound::strict(per_node), |_, n| {
            let (name, grant, term, value) = (self.name.clone(), self.grant.clone(), self.term, value.to_vec());
            async move { proclaim_on(&n, &name, &grant, term, &value).await }
        })
        .await;
        let quorum = self.lock.config().quorum();
        match proclaim_outcome(&answers, quorum) {
            Some(stands) => Ok(stands),
            None => Err(not_confirmed(&self.name, &answers, quorum, per_node)),
        }
    }
}

/// What a proclaim's answers say: `Some(true)` when a quorum wrote it, `Some(false)` when
/// so many nodes refused it (their lock key does not hold our grant) that no quorum can
/// hold the grant, `None` when the silent nodes leave it open — they could not be asked,
/// which says nothing about the grant.
fn proclaim_outcome(answers: &[Answer<bool>], quorum: usize) -> Option<bool> {
    let written = answers.iter().filter(|a| matches!(a, Ok(true))).count();
    let refused = answers.iter().filter(|a| matches!(a, Ok(false))).count();
    if written >= quorum {
        Some(true)
    } else if answers.len() - refused < quorum {
        Some(false)
    } else {
        None
    }
}

/// The `Unavailable` of a proclaim whose outcome the silent nodes leave open, with the
/// counts and each silent node's reason.
fn not_confirmed(name: &str, answers: &[Answer<bool>], quorum: usize, per_node: Duration) -> LockError {
    let written = answers.iter().filter(|a| matches!(a, Ok(true))).count();
    let refused = answers.iter().filter(|a| matches!(a, Ok(false))).count();
    let silent = crate::error::silent_nodes(answers);
    LockError::Unavailable {
        message: format!(
            "the proclaim of `{name}` was not confirmed: written on {written}, refused on {refused}, \
             no answer from {} of {} nodes (need {quorum} writes; waiting at most {per_node:?}); \
             the leadership stands; {}",
            silent.len(),
            answers.len(),
            silent.join("; ")
        ),
        source: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answers(written: usize, refused: usize, silent: usize) -> Vec<Answer<bool>> {
        let mut a = vec![Ok(true); written];
        a.extend(vec![Ok(false); refused]);
        a.extend((0..silent).map(|i| Err(format!("node {i}: no answer"))));
        a
    }

    #[test]
    fn only_a_quorum_of_refusals_means_not_held() {
        assert_eq!(proclaim_outcome(&answers(3, 0, 2), 3), Some(true));
        assert_eq!(proclaim_outcome(&answers(3, 2, 0), 3), Some(true));
        // Could not ask a quorum: open, whatever the others said.
        assert_eq!(proclaim_outcome(&answers(2, 0, 3), 3), None);
        assert_eq!(proclaim_outcome(&answers(0, 0, 5), 3), None);
        assert_eq!(proclaim_outcome(&answers(1, 2, 2), 3), None);
        // Three refusals of five: no quorum can hold the grant.
        assert_eq!(proclaim_outcome(&answers(0, 3, 2), 3), Some(false));
        assert_eq!(proclaim_outcome(&answers(2, 3, 0), 3), Some(false));
    }

    #[test]
    fn the_unconfirmed_proclaim_says_what_each_node_did() {
        let e = not_confirmed("n", &answers(1, 1, 3), 3, Duration::from_millis(50)).to_string();
        assert!(
            e.contains("written on 1, refused on 1, no answer from 3 of 5 nodes (need 3 writes"),
            "{e}"
        );
        assert!(e.contains("node 2: no answer"), "{e}");
    }
}
