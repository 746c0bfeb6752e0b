//! `--metrics-addr`: the lock's metrics (docs/metrics.md) served for Prometheus to scrape.

use std::net::SocketAddr;

use metrics_exporter_prometheus::PrometheusBuilder;

/// Histogram buckets, in seconds: from half a millisecond (an uncontended Redis acquire) to
/// ten minutes (a long wait or a long hold).
const BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 600.0,
];

/// Installs the Prometheus recorder and serves `GET /metrics` on `addr` (plain HTTP; keep it
/// on loopback or a private interface).
pub fn serve(addr: SocketAddr) -> Result<(), String> {
    PrometheusBuilder::new()
        .with_http_listener(addr)
        .set_buckets(BUCKETS)
        .and_then(|b| b.install())
        .map_err(|e| format!("cannot serve metrics on {addr}: {e}"))
}
