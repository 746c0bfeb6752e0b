//! [`Guarantees`]: what a backend really promises, as data a caller can check.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::error::{LockError, Result};

/// How far a backend's mutual exclusion reaches and on what it rests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Exclusion {
    /// Exclusive by construction for every client that shares the backend: an in-process
    /// table, kernel file locks, or a consensus log (etcd, ZooKeeper). Still subject to the
    /// paused-holder caveat that only fencing tokens cure.
    Strict,
    /// Exclusive only while stated assumptions hold (one server up and keeping its data;
    /// bounded clock drift and network delay for Redlock).
    Conditional,
}

/// Whether tokens only ever grow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum TokenOrder {
    /// Every grant of a key gets a token greater than every earlier grant of that key.
    StrictlyMonotonic,
    /// Usually growing, but can repeat or go back after the faults the backend lists.
    BestEffort,
}

/// Who can share a lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Scope {
    /// Tasks of one process.
    Process,
    /// Processes of one host.
    Host,
    /// Processes anywhere that reach the servers.
    Network,
}

/// What a backend promises. Every backend returns one from
/// [`DistributedLock::guarantees`](crate::DistributedLock::guarantees); the conformance
/// suite and [`Requirement`] read it, so a caller that needs "strict" gets a clear error
/// instead of a silent downgrade.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Guarantees {
    /// The backend's name, e.g. `"file"`.
    pub backend: &'static str,
    /// Mutual exclusion.
    pub exclusion: Exclusion,
    /// Token order.
    pub tokens: TokenOrder,
    /// Who can share a lock.
    pub scope: Scope,
    /// The assumptions under which the promises hold, in plain words.
    pub assumptions: &'static [&'static str],
}

impl Guarantees {
    /// These guarantees with one more assumption at the end (e.g. what a peer library's
    /// layout adds). The combined list is built once per distinct pair and kept for the
    /// life of the process — a handful of entries, since both parts are `'static`
    /// constants — so [`assumptions`](Self::assumptions) stays a plain `'static` slice.
    pub fn with_assumption(&self, extra: &'static str) -> Guarantees {
        type Combined = std::collections::HashMap<(usize, usize, usize), &'static [&'static str]>;
        static COMBINED: std::sync::Mutex<Option<Combined>> = std::sync::Mutex::new(None);
        let id = (
            self.assumptions.as_ptr() as usize,
            self.assumptions.len(),
            extra.as_ptr() as usize,
        );
        let mut cache = COMBINED.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let assumptions = *cache.get_or_insert_with(Default::default).entry(id).or_insert_with(|| {
            let mut all = self.assumptions.to_vec();
            all.push(extra);
            Box::leak(all.into_boxed_slice())
        });
        Guarantees {
            assumptions,
            ..self.clone()
        }
    }
}

impl fmt::Display for Guarantees {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let exclusion = match self.exclusion {
            Exclusion::Strict => "strict",
            Exclusion::Conditional => "conditional",
        };
        let tokens = match self.tokens {
            TokenOrder::StrictlyMonotonic => "strictly monotonic",
            TokenOrder::BestEffort => "best effort",
        };
        let scope = match self.scope {
            Scope::Process => "one process",
            Scope::Host => "one host",
            Scope::Network => "network",
        };
        write!(f, "exclusion: {exclusion}; tokens: {tokens}; scope: {scope}")?;
        for a in self.assumptions {
            write!(f, "\n  - {a}")?;
        }
        Ok(())
    }
}

/// What a caller requires of a backend; checked by [`Requirement::check`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Requirement {
    /// Anything goes.
    #[default]
    Any,
    /// Tokens must be strictly monotonic (fencing must be sound).
    MonotonicTokens,
    /// Strict exclusion and strictly monotonic tokens.
    Strict,
}

impl Requirement {
    /// `Ok` when `g` meets this requirement, otherwise [`LockError::GuaranteeNotMet`]
    /// saying what is missing.
    ///
    /// ```
    /// use fencelock::{memory::MemoryLock, DistributedLock, Requirement};
    /// let lock = MemoryLock::new();
    /// assert!(Requirement::Strict.check(&lock.guarantees()).is_ok());
    /// ```
    pub fn check(self, g: &Guarantees) -> Result<()> {
        let tokens_ok = g.tokens == TokenOrder::StrictlyMonotonic;
        let exclusion_ok = g.exclusion == Exclusion::Strict;
        let missing = match self {
            Requirement::Any => None,
            Requirement::MonotonicTokens if !tokens_ok => {
                Some("its fencing tokens are best effort, not strictly monotonic")
            }
            Requirement::Strict if !exclusion_ok => {
                Some("its mutual exclusion is conditional on timing and server assumptions, not strict")
            }
            Requirement::Strict if !tokens_ok => Some("its fencing tokens are best effort, not strictly monotonic"),
            _ => None,
        };
        match missing {
            None => Ok(()),
            Some(m) => Err(LockError::GuaranteeNotMet {
                backend: g.backend,
                message: m.into(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WEAK: Guarantees = Guarantees {
        backend: "weak",
        exclusion: Exclusion::Conditional,
        tokens: TokenOrder::BestEffort,
        scope: Scope::Network,
        assumptions: &["clocks agree"],
    };

    #[test]
    fn an_added_assumption_is_listed_last_and_built_once() {
        let a = WEAK.with_assumption("peers carry no token");
        assert_eq!(a.assumptions, &["clocks agree", "peers carry no token"]);
        assert_eq!(
            (a.backend, a.exclusion, a.tokens),
            (WEAK.backend, WEAK.exclusion, WEAK.tokens)
        );
        assert!(a.to_string().ends_with("- peers carry no token"), "{a}");
        let b = WEAK.with_assumption("peers carry no token");
        assert!(
            std::ptr::eq(a.assumptions, b.assumptions),
            "the pair's list is kept, not rebuilt"
        );
    }

    #[test]
    fn requirements_refuse_weaker_backends() {
        assert!(Requirement::Any.check(&WEAK).is_ok());
        let e = Requirement::Strict.check(&WEAK).unwrap_err();
        assert!(e.to_string().contains("conditional"), "{e}");
        let e = Requirement::MonotonicTokens.check(&WEAK).unwrap_err();
        assert!(e.to_string().contains("best effort"), "{e}");
    }

    #[test]
    fn display_lists_assumptions() {
        assert!(WEAK.to_string().contains("- clocks agree"));
    }
}
