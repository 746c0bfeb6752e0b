//! [`OverlapDetector`]: counts how often two holders were inside one critical section.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use fencelock_core::FencingToken;

/// Shared by every contender of one key. Each enters with its token on getting the lock and
/// leaves (drops the guard) before releasing it.
#[derive(Debug, Default)]
pub struct OverlapDetector {
    inside: AtomicUsize,
    overlaps: AtomicUsize,
    entries: Mutex<Vec<FencingToken>>,
}

/// Held while inside the critical section.
#[derive(Debug)]
pub struct Inside<'a> {
    detector: &'a OverlapDetector,
}

impl OverlapDetector {
    /// A fresh detector.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records entry with `token`; counts an overlap if someone else is inside.
    pub fn enter(&self, token: FencingToken) -> Inside<'_> {
        // The token is recorded under the same order as entry, so `entries` is the order in
        // which holders got in.
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if self.inside.fetch_add(1, Ordering::SeqCst) != 0 {
            self.overlaps.fetch_add(1, Ordering::SeqCst);
        }
        entries.push(token);
        Inside { detector: self }
    }

    /// How many entries found someone else inside.
    pub fn overlaps(&self) -> usize {
        self.overlaps.load(Ordering::SeqCst)
    }

    /// The tokens, in the order their holders entered.
    pub fn entries(&self) -> Vec<FencingToken> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Pairs of consecutive entries whose token did not grow (`(earlier, later)`).
    pub fn token_regressions(&self) -> Vec<(FencingToken, FencingToken)> {
        self.entries()
            .windows(2)
            .filter(|w| w[1] <= w[0])
            .map(|w| (w[0], w[1]))
            .collect()
    }
}

impl Drop for Inside<'_> {
    fn drop(&mut self) {
        self.detector.inside.fetch_sub(1, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_overlap_and_regression() {
        let d = OverlapDetector::new();
        let a = d.enter(FencingToken::new(2));
        let b = d.enter(FencingToken::new(1));
        drop((a, b));
        assert_eq!(d.overlaps(), 1);
        assert_eq!(
            d.token_regressions(),
            vec![(FencingToken::new(2), FencingToken::new(1))]
        );
        let _c = d.enter(FencingToken::new(3));
        assert_eq!(d.overlaps(), 1);
    }
}
