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
/// on loopback or a private interface). Port 0 picks a free port, printed on stderr (the
/// exporter binds it itself, so the port is found by binding it first and letting it go).
pub fn serve(addr: SocketAddr) -> Result<(), String> {
    let addr = if addr.port() == 0 {
        let chosen = std::net::TcpListener::bind(addr)
            .and_then(|l| l.local_addr())
            .map_err(|e| format!("cannot serve metrics on {addr}: {e}"))?;
        crate::exit::errln!("fencelock: serving metrics at http://{chosen}/metrics");
        chosen
    } else {
        addr
    };
    PrometheusBuilder::new()
        .with_http_listener(addr)
        .set_buckets(BUCKETS)
        .and_then(|b| b.install())
        .map_err(|e| format!("cannot serve metrics on {addr}: {e}"))
}

/// Reads `--metrics-addr`: an IP address and port; a host name is refused with a message
/// that says so.
pub fn parse_addr(text: &str) -> Result<SocketAddr, String> {
    text.trim().parse().map_err(|_| {
        // An address alone (`0.0.0.0`, `::1`): only the port is missing.
        if text.trim().parse::<std::net::IpAddr>().is_ok() {
            return format!("`{text}` has no port; write ADDRESS:PORT, e.g. 127.0.0.1:9898 (port 0 picks a free one)");
        }
        format!("`{text}` is not an IP address and port (host names are not accepted); write e.g. 127.0.0.1:9898, [::1]:9898 or 127.0.0.1:0")
    })
}
