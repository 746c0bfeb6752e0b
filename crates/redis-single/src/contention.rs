//! [`Contention`]: which keys this backend instance recently found busy, so that their
//! next acquires queue at once instead of first trying the uncontended path.

use std::collections::HashMap;
use std::time::Duration;

use tokio::time::Instant;

/// How long a key counts as contended after it was last found busy.
const CONTENDED_FOR: Duration = Duration::from_secs(1);
/// The most keys remembered as contended (older ones are forgotten first).
const CONTENDED_KEYS: usize = 1024;

/// Keys this instance recently found busy (within the last second; at most 1,024 keys
/// remembered, the memory cleared when full). Redis: an acquire of such a key skips the
/// uncontended transaction (`MULTI SET NX INCR EXEC` + `PTTL`, five server commands) and
/// takes its turn in the queue at once — the turn grants a free key too. Redlock: such an
/// acquire asks the key's primary node first.
#[derive(Debug, Default)]
pub struct Contention {
    busy: std::sync::Mutex<HashMap<String, Instant>>,
}

impl Contention {
    /// Whether `key` was found busy within the last second.
    pub fn recently_busy(&self, key: &str) -> bool {
        let busy = self.busy.lock().unwrap_or_else(|p| p.into_inner());
        busy.get(key).is_some_and(|t| t.elapsed() < CONTENDED_FOR)
    }

    /// Remembers that `key` was busy now.
    pub fn found_busy(&self, key: &str) {
        let mut busy = self.busy.lock().unwrap_or_else(|p| p.into_inner());
        if busy.len() >= CONTENDED_KEYS && !busy.contains_key(key) {
            busy.retain(|_, t| t.elapsed() < CONTENDED_FOR);
            if busy.len() >= CONTENDED_KEYS {
                busy.clear();
            }
        }
        busy.insert(key.to_owned(), Instant::now());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_found_busy_counts_as_contended() {
        let c = Contention::default();
        assert!(!c.recently_busy("a"));
        c.found_busy("a");
        assert!(c.recently_busy("a"));
        assert!(!c.recently_busy("b"));
    }

    #[test]
    fn the_memory_stays_bounded() {
        let c = Contention::default();
        for i in 0..(CONTENDED_KEYS * 3) {
            c.found_busy(&format!("k{i}"));
        }
        assert!(c.busy.lock().unwrap().len() <= CONTENDED_KEYS);
    }
}
