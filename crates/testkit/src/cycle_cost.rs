//! What the per-cycle cost harnesses of the backend crates share (`crates/etcd/examples/
//! etcd_cycle_cost.rs`, `crates/zk/examples/zk_cycle_cost.rs`): this process's CPU time,
//! medians, and a table of the server counters that moved per cycle, ours beside the raw
//! minimum. Diagnosis only: the figures that count are `fencelock bench`'s.

use std::collections::BTreeMap;
use std::time::Duration;

/// The raw minimum's Redis release (the bench's `RawRedis` and the `redis_cycle_cost`
/// example): a Lua compare-and-delete that deletes `KEYS[1]` only while it still holds
/// `ARGV[1]` (the Redlock page's release script). Returns 1 when it deleted, else 0.
pub const REDIS_COMPARE_AND_DELETE: &str =
    "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0";

/// This process's CPU time so far, ns: the sum over its threads of the run time in
/// `/proc/self/task/*/schedstat` (Linux). Threads that ended are not counted, so take
/// both readings of a difference while the same threads run.
pub fn cpu_ns() -> u64 {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return 0;
    };
    tasks
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}

/// The median of `v` (sorted in place), µs; 0 for no samples.
pub fn p50_us(v: &mut [Duration]) -> f64 {
    v.sort();
    v.get(v.len() / 2).map_or(0.0, |d| d.as_secs_f64() * 1e6)
}

/// Server counters read before ours ran (`before`), between ours and the raw minimum
/// (`between`) and after the raw minimum (`after`), each run `cycles` times.
pub struct Readings {
    /// Counters before ours ran.
    pub before: BTreeMap<String, f64>,
    /// Counters after ours, before the raw minimum.
    pub between: BTreeMap<String, f64>,
    /// Counters after the raw minimum.
    pub after: BTreeMap<String, f64>,
    /// Cycles each subject ran.
    pub cycles: usize,
}

impl Readings {
    /// Prints, per counter that `keep` selects and that moved, its change per cycle for ours
    /// and for the raw minimum, under the heading `title`.
    pub fn print(&self, title: &str, keep: impl Fn(&str) -> bool) {
        let n = self.cycles.max(1) as f64;
        println!("{title:<100} {:>10} {:>10}", "ours", "raw");
        for (k, mid) in &self.between {
            let ours = mid - self.before.get(k).copied().unwrap_or(0.0);
            let raw = self.after.get(k).copied().unwrap_or(0.0) - mid;
            if keep(k) && (ours != 0.0 || raw != 0.0) {
                println!("{k:<100} {:>10.3} {:>10.3}", ours / n, raw / n);
            }
        }
    }
}

/// Prints the client CPU per cycle of ours (`c0`→`c1`) and of the raw minimum (`c1`→`c2`),
/// each over `cycles` cycles (readings of [`cpu_ns`]).
pub fn print_cpu(c0: u64, c1: u64, c2: u64, cycles: usize) {
    let n = cycles.max(1) as u64;
    println!(
        "client CPU per cycle: ours {} µs, raw {} µs",
        c1.saturating_sub(c0) / n / 1000,
        c2.saturating_sub(c1) / n / 1000
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_median_of_no_samples_is_zero_and_of_some_the_middle_one() {
        assert_eq!(p50_us(&mut []), 0.0);
        let mut v = [3, 1, 2].map(Duration::from_micros);
        assert_eq!(p50_us(&mut v), 2.0);
    }

    #[test]
    fn this_process_has_used_some_cpu() {
        assert!(cpu_ns() > 0);
    }
}
