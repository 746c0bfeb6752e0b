//! Uncontended acquire + release, one client, several subjects interleaved.

use std::time::{Duration, Instant};

use crate::error::Result;
use crate::stats::Latency;
use crate::subject::Subject;

/// Cycles of warm-up before the first round (connections, scripts, parents).
const WARM_UP: usize = 100;

/// Measures `n` acquire + release cycles of each subject, in `rounds` interleaved rounds
/// (subject A's share, then B's, …, repeated), so that a burst of machine noise hits all
/// of them alike. Each subject uses its own key.
/// Returns, per subject, (acquire + release, acquire alone).
pub async fn measure(subjects: &[&dyn Subject], n: usize, rounds: usize) -> Result<Vec<(Latency, Latency)>> {
    let rounds = rounds.max(1);
    let mut samples: Vec<Vec<Duration>> = vec![Vec::with_capacity(n); subjects.len()];
    let mut acquires: Vec<Vec<Duration>> = vec![Vec::with_capacity(n); subjects.len()];
    for (i, s) in subjects.iter().enumerate() {
        for _ in 0..WARM_UP {
            s.acquire(&key(i)).await?.await?;
        }
    }
    for round in 0..rounds {
        let share = n / rounds + usize::from(round < n % rounds);
        for (i, s) in subjects.iter().enumerate() {
            let key = key(i);
            for _ in 0..share {
                let t = Instant::now();
                let held = s.acquire(&key).await?;
                acquires[i].push(t.elapsed());
                held.await?;
                samples[i].push(t.elapsed());
            }
        }
    }
    Ok(samples
        .into_iter()
        .zip(acquires)
        .map(|(cycle, acquire)| (Latency::of(cycle), Latency::of(acquire)))
        .collect())
}

fn key(i: usize) -> String {
    format!("bench-solo-{i}")
}
