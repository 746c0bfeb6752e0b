//! Resource-side fencing: refuse writes that carry a stale or reused token.
//!
//! The lock service alone cannot stop a holder that paused past its TTL from writing after
//! another holder took over. The protected resource can: it remembers the highest token
//! it accepted per resource and refuses anything lower. Because some backends can hand out
//! the *same* token twice (Redis after a failover, Redlock), the checker also remembers the
//! grant that brought the highest token and refuses an equal token from another grant.

use std::collections::HashMap;
use std::sync::Mutex;

use crate::error::{FenceRejection, LockError, Result};
use crate::token::{Fence, FencingToken, GrantId};

/// Why a write was admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// The first write the resource has seen.
    First,
    /// A token higher than any before: a new holder.
    Newer,
    /// The current holder writing again.
    SameGrant,
}

/// The fencing rule, shared by every checker implementation (in memory here, a Lua script
/// for Redis): admit a higher token, or the highest token again from the same grant.
///
/// ```
/// use fencelock::fencing::{admit, Admission};
/// use fencelock::{Fence, FencingToken, GrantId};
/// let g = GrantId::from_string("a");
/// let newer = Fence { token: FencingToken::new(5), grant: GrantId::from_string("b") };
/// assert_eq!(admit("r", Some((FencingToken::new(4), &g)), &newer), Ok(Admission::Newer));
/// ```
pub fn admit(
    resource: &str,
    highest: Option<(FencingToken, &GrantId)>,
    fence: &Fence,
) -> std::result::Result<Admission, FenceRejection> {
    let Some((top, top_grant)) = highest else {
        return Ok(Admission::First);
    };
    if fence.token > top {
        Ok(Admission::Newer)
    } else if fence.token == top && &fence.grant == top_grant {
        Ok(Admission::SameGrant)
    } else {
        Err(FenceRejection {
            resource: resource.to_owned(),
            presented: fence.token,
            highest: top,
            reused: fence.token == top,
        })
    }
}

/// An in-memory fencing checker for resources in this process (or behind a service that
/// checks on their behalf). Thread safe.
///
/// ```
/// use fencelock::fencing::FencingChecker;
/// use fencelock::{Fence, FencingToken, GrantId};
/// let checker = FencingChecker::new();
/// let old = Fence { token: FencingToken::new(1), grant: GrantId::random() };
/// let new = Fence { token: FencingToken::new(2), grant: GrantId::random() };
/// assert!(checker.check("file.txt", &new).is_ok());
/// assert!(checker.check("file.txt", &old).is_err()); // the paused holder wakes up: refused
/// ```
#[derive(Debug, Default)]
pub struct FencingChecker {
    highest: Mutex<HashMap<String, Fence>>,
}

impl FencingChecker {
    /// An empty checker.
    pub fn new() -> Self {
        Self::default()
    }

    /// Admits `fence` for `resource` and records it, or refuses it with
    /// [`LockError::Fenced`]. Do the write only when this returns `Ok`, and under the same
    /// critical section as the check if writes can race (see [`FencingChecker::write_with`]).
    pub fn check(&self, resource: &str, fence: &Fence) -> Result<Admission> {
        self.write_with(resource, fence, || ()).map(|(admission, ())| admission)
    }

    /// Checks `fence` and, when admitted, runs `write` while the check's lock is held, so
    /// that no stale write can slip between the check and the write.
    ///
    /// The admitted fence is recorded **before** `write` runs: a write that fails or panics
    /// after it changed the resource still counts, so an older holder is refused from then
    /// on. A fence recorded with no write behind it only refuses more, never less. A panic
    /// in `write` propagates to the caller; the checker stays usable.
    ///
    /// # Errors
    ///
    /// [`LockError::Fenced`] for a stale or reused token; `write` then does not run.
    pub fn write_with<T>(&self, resource: &str, fence: &Fence, write: impl FnOnce() -> T) -> Result<(Admission, T)> {
        let mut map = match self.highest.lock() {
            Ok(m) => m,
            Err(poisoned) => poisoned.into_inner(),
        };
        let current = map.get(resource).map(|f| (f.token, &f.grant));
        let admission = admit(resource, current, fence).map_err(LockError::Fenced)?;
        if admission != Admission::SameGrant {
            map.insert(resource.to_owned(), fence.clone());
        }
        let value = write();
        Ok((admission, value))
    }

    /// The highest fence accepted for `resource`, if any.
    pub fn highest(&self, resource: &str) -> Option<Fence> {
        let map = match self.highest.lock() {
            Ok(m) => m,
            Err(poisoned) => poisoned.into_inner(),
        };
        map.get(resource).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fence(token: u64, grant: &str) -> Fence {
        Fence {
            token: FencingToken::new(token),
            grant: GrantId::from_string(grant),
        }
    }

    #[test]
    fn rejects_lower_and_reused_tokens() {
        let c = FencingChecker::new();
        assert_eq!(c.check("r", &fence(5, "a")).unwrap(), Admission::First);
        assert_eq!(c.check("r", &fence(5, "a")).unwrap(), Admission::SameGrant);
        assert_eq!(c.check("r", &fence(6, "b")).unwrap(), Admission::Newer);
        match c.check("r", &fence(5, "a")) {
            Err(LockError::Fenced(rej)) => {
                assert!(!rej.reused);
                assert_eq!(rej.highest, FencingToken::new(6));
            }
            other => panic!("stale token admitted: {other:?}"),
        }
        match c.check("r", &fence(6, "c")) {
            Err(LockError::Fenced(rej)) => assert!(rej.reused, "{rej}"),
            other => panic!("reused token admitted: {other:?}"),
        }
        assert_eq!(c.highest("r"), Some(fence(6, "b")));
    }

    #[test]
    fn resources_are_independent() {
        let c = FencingChecker::new();
        c.check("a", &fence(10, "x")).unwrap();
        assert_eq!(c.check("b", &fence(1, "y")).unwrap(), Admission::First);
    }

    #[test]
    fn refused_write_does_not_run() {
        let c = FencingChecker::new();
        c.check("r", &fence(3, "a")).unwrap();
        let mut wrote = false;
        assert!(c.write_with("r", &fence(2, "b"), || wrote = true).is_err());
        assert!(!wrote);
    }

    /// A write that lands and then panics (the checker is shared across tasks; its poisoned
    /// mutex is recovered) must still leave its fence recorded: otherwise the old holder
    /// writes again as `SameGrant` over the newer holder's write.
    #[test]
    fn a_write_that_panics_keeps_its_fence_recorded() {
        let c = FencingChecker::new();
        c.check("r", &fence(5, "a")).unwrap();
        let wrote = std::panic::catch_unwind(|| c.write_with("r", &fence(6, "b"), || panic!("after the write")));
        assert!(wrote.is_err(), "the write did not panic");
        match c.check("r", &fence(5, "a")) {
            Err(LockError::Fenced(rej)) => assert_eq!(rej.highest, FencingToken::new(6)),
            other => panic!("the old holder was admitted after a newer write landed: {other:?}"),
        }
    }
}
