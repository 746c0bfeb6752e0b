//! Percentiles, summaries and fairness: the arithmetic of the report.

use std::time::Duration;

use serde::Serialize;

/// The `p` quantile (0.0–1.0) of sorted samples (nearest rank).
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// Latency samples reduced to what the report shows, in microseconds.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq)]
pub struct Latency {
    /// Samples.
    pub n: usize,
    /// Median.
    pub p50_us: f64,
    /// 99th percentile.
    pub p99_us: f64,
    /// Operations per second for one client doing them back to back (1 / mean).
    pub per_sec: f64,
}

impl Latency {
    /// Summarises samples (any order).
    pub fn of(mut samples: Vec<Duration>) -> Self {
        samples.sort();
        let total: Duration = samples.iter().sum();
        Latency {
            n: samples.len(),
            p50_us: micros(percentile(&samples, 0.5)),
            p99_us: micros(percentile(&samples, 0.99)),
            per_sec: if total.is_zero() {
                0.0
            } else {
                samples.len() as f64 / total.as_secs_f64()
            },
        }
    }
}

/// A duration in microseconds.
pub fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// Jain's fairness index over per-client shares: 1 when all are equal, 1/n when one client
/// got everything; 0 for no data.
pub fn jain(shares: &[f64]) -> f64 {
    let sum: f64 = shares.iter().sum();
    let squares: f64 = shares.iter().map(|x| x * x).sum();
    if squares == 0.0 {
        return 0.0;
    }
    sum * sum / (shares.len() as f64 * squares)
}

/// The median of `values` (any order; 0 for none).
pub fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

/// One figure across runs: the value itself for one run; `median (min–max)` for several;
/// `n/a` for none.
pub fn spread(values: &[f64], fmt: impl Fn(f64) -> String) -> String {
    match values {
        [] => "n/a".into(),
        [v] => fmt(*v),
        _ => {
            let min = values.iter().copied().fold(f64::INFINITY, f64::min);
            let max = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            format!("{} ({}–{})", fmt(median(values)), fmt(min), fmt(max))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spreads_show_the_median_and_the_range() {
        let f = |v: f64| format!("{v:.1}");
        assert_eq!(spread(&[], f), "n/a");
        assert_eq!(spread(&[2.0], f), "2.0");
        assert_eq!(spread(&[3.0, 1.0, 2.0], f), "2.0 (1.0–3.0)");
    }

    #[test]
    fn percentiles_and_rates() {
        let l = Latency::of((1..=100).rev().map(Duration::from_millis).collect());
        assert_eq!(l.n, 100);
        assert_eq!(l.p50_us, 51_000.0); // nearest rank of 99 × 0.5 = 49.5 → index 50
        assert_eq!(l.p99_us, 99_000.0);
        assert!((l.per_sec - 100.0 / 5.05).abs() < 1e-9);
        assert_eq!(Latency::of(vec![]), Latency::default());
    }

    #[test]
    fn jain_is_one_when_even_and_one_over_n_when_one_takes_all() {
        assert!((jain(&[5.0, 5.0, 5.0, 5.0]) - 1.0).abs() < 1e-12);
        assert!((jain(&[20.0, 0.0, 0.0, 0.0]) - 0.25).abs() < 1e-12);
        assert_eq!(jain(&[0.0, 0.0]), 0.0);
    }
}
