//! Redlock's own errors: no quorum answered in time, and no quorum could vote because
//! nodes were inside their restart delay.

use std::time::Duration;

use fencelock_core::LockError;
use fencelock_redis::NodeGrant;
use tokio::time::Instant;

use crate::quorum::Answer;

/// Why each node that gave no answer gave none, in node order.
pub(crate) fn silent_nodes<T>(answers: &[Answer<T>]) -> Vec<&str> {
    answers
        .iter()
        .filter_map(|a| a.as_ref().err().map(String::as_str))
        .collect()
}

/// The "no quorum" error: how many answered, within what, and who did not.
pub(crate) fn no_quorum<T>(doing: &str, answers: &[Answer<T>], quorum: usize, waited: Duration) -> LockError {
    let answered = answers.iter().filter(|a| a.is_ok()).count();
    let silent = silent_nodes(answers);
    LockError::Unavailable {
        message: format!(
            "no quorum for {doing}: {answered} of {} nodes answered (waiting at most {}; need {quorum}); {}",
            answers.len(),
            fencelock_core::options::duration_text::human(waited),
            silent.join("; ")
        ),
        source: None,
    }
}

/// The error of a round that fewer than `quorum` nodes answered: the refusal that rules
/// out a quorum when nodes refused for good ([`refused`](crate::quorum::refused): an
/// `InvalidConfig` or a permanent `Backend` error), otherwise [`no_quorum`] (temporary).
pub(crate) fn lacking_quorum<T>(doing: &str, answers: &[Answer<T>], quorum: usize, waited: Duration) -> LockError {
    crate::quorum::refused(doing, answers, quorum).unwrap_or_else(|| no_quorum(doing, answers, quorum, waited))
}

/// Why a round that a quorum answered was not granted, counted from its answers: by
/// nodes holding another grant, by nodes inside their restart delay
/// ([`NodeGrant::Restarting`]), or both. Counted from answers the round has anyway: no
/// request of its own.
#[derive(Debug, Clone)]
pub(crate) struct Refusal {
    /// When the answers were counted.
    at: Instant,
    nodes: usize,
    quorum: usize,
    granted: usize,
    /// Per node that holds another grant: its TTL left (`None`: no TTL).
    held: Vec<Option<Duration>>,
    /// Per node inside its restart delay: the delay left, shortest first.
    restarting: Vec<Duration>,
    /// The nodes that did not answer, each with why.
    silent: Vec<String>,
}

impl Refusal {
    /// The refusal of a round whose votes are `answers` (by node), of which `quorum`
    /// must grant.
    pub(crate) fn of(answers: &[Answer<NodeGrant>], quorum: usize) -> Self {
        let mut r = Refusal {
            at: Instant::now(),
            nodes: answers.len(),
            quorum,
            granted: 0,
            held: Vec::new(),
            restarting: Vec::new(),
            silent: Vec::new(),
        };
        for a in answers {
            match a {
                Ok(NodeGrant::Granted(_)) => r.granted += 1,
                Ok(NodeGrant::Busy(ms)) => r.held.push(ms.map(Duration::from_millis)),
                Ok(NodeGrant::Restarting(ms)) => r.restarting.push(Duration::from_millis(*ms)),
                Err(why) => r.silent.push(why.clone()),
            }
        }
        r.restarting.sort();
        r
    }

    /// The shortest holder TTL or restart delay left among the refusals: nothing can
    /// change on those nodes before (the round's retry comes no later).
    pub(crate) fn shortest(&self) -> Option<Duration> {
        self.held.iter().flatten().chain(&self.restarting).min().copied()
    }

    /// The refusal is the restart delay's: the nodes inside it could have made the quorum
    /// with those that granted. Not when a quorum granted (refused only for lack of
    /// validity), nor when so many hold another grant that the key is held whatever the
    /// restarting nodes would say — that is plain contention.
    pub(crate) fn by_restart_delay(&self) -> bool {
        !self.restarting.is_empty() && self.granted < self.quorum && self.granted + self.restarting.len() >= self.quorum
    }

    /// Whether the restart delay still refuses now, as the nodes told: the refusal is
    /// [`by_restart_delay`](Self::by_restart_delay) and fewer of its restarting nodes than
    /// the quorum lacks are past their delay yet. For a refusal counted a while ago (a
    /// wait's last round): once they may vote again, the key may have been taken since.
    pub(crate) fn still_restarting(&self) -> bool {
        if !self.by_restart_delay() {
            return false;
        }
        let needed = self.quorum - self.granted;
        self.restarting
            .get(needed - 1)
            .and_then(|left| self.at.checked_add(*left))
            .is_some_and(|until| Instant::now() < until)
    }

    /// The error for `key` when the refusal is [`by_restart_delay`](Self::by_restart_delay);
    /// `None` when it is a holder's.
    ///
    /// `Unavailable`, not a held key's answer (`try_acquire`'s `Ok(None)`, `acquire`'s
    /// `Timeout`, CLI exit 75 "held by someone else"): nobody need hold the key, and an
    /// operator told "held" looks for a holder that does not exist. A node inside its
    /// restart delay is what the Redlock write-up calls an *unavailable* node ("delayed
    /// restarts": kept unavailable for the longest TTL), and it lacks the quorum exactly as
    /// a node that does not answer does: a temporary condition of the backend
    /// (`is_temporary`, so `acquire` and callers' retry loops keep trying; CLI exit 69,
    /// on which scripts retry). Not `Backend { temporary }` (CLI exit 70, "internal
    /// failure"): nothing failed, the nodes refuse by design.
    pub(crate) fn restart_error(&self, key: &str, restart_delay: Duration) -> Option<LockError> {
        if !self.by_restart_delay() {
            return None;
        }
        let now = Instant::now();
        let n = self.nodes;
        let left = |d: Duration| self.at.checked_add(d).map_or(d, |t| t.saturating_duration_since(now));
        // Sorted, and not empty (`by_restart_delay`).
        let first = format!("{:.1?}", left(self.restarting[0]));
        let last = format!("{:.1?}", left(self.restarting[self.restarting.len() - 1]));
        let again = if first == last {
            last
        } else {
            format!("{first} to {last}")
        };
        let held = if self.held.is_empty() {
            "no node holds it".to_owned()
        } else {
            let longest = self.held.iter().try_fold(Duration::ZERO, |m, d| d.map(|d| m.max(d)));
            let until = match longest {
                Some(d) => format!("for up to {:.1?}", left(d)),
                None if self.held.len() == 1 => "without a TTL".to_owned(),
                None => "some without a TTL".to_owned(),
            };
            format!("{} of {n} hold another grant ({until})", self.held.len())
        };
        let silent = if self.silent.is_empty() {
            String::new()
        } else {
            format!(", {} did not answer ({})", self.silent.len(), self.silent.join("; "))
        };
        Some(LockError::Unavailable {
            message: format!(
                "no quorum for `{key}` until nodes vote again after a restart: {} of {n} nodes are \
                 inside their restart delay (restarted, or their data lost, less than restart_delay \
                 {restart_delay:?} ago; they vote again in about {again}), {held}, {} granted{silent}; need {}",
                self.restarting.len(),
                self.granted,
                self.quorum
            ),
            source: None,
        })
    }
}
