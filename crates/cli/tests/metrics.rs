//! `fencelock run --metrics-addr`: the lock's metrics, scraped over HTTP while it is held.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail by panicking

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

mod common;

/// `GET /metrics` on loopback; `None` while nothing answers.
fn scrape(port: u16) -> Option<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        .ok()?;
    let mut body = String::new();
    s.read_to_string(&mut body).ok()?;
    body.starts_with("HTTP/1.1 200").then_some(body)
}

/// Polls `scrape` every 20 ms until the page has every one of `needles`; fails after 10 s.
fn scrape_until(port: u16, needles: &[&str]) -> String {
    let start = Instant::now();
    loop {
        let page = scrape(port).unwrap_or_default();
        if needles.iter().all(|n| page.contains(n)) {
            return page;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "missing {needles:?} in:\n{page}"
        );
        std::thread::sleep(Duration::from_millis(20)); // polling a condition with a deadline
    }
}

#[test]
fn metrics_are_served_while_the_lock_is_held() {
    let dir = tempfile::tempdir().expect("temp dir");
    let port = fencelock_testkit::ports::free_port();
    let addr = format!("127.0.0.1:{port}");
    let holder = common::hold(
        common::on_files(dir.path()),
        &["run", "k", "--ttl", "300ms", "--metrics-addr", &addr],
    );
    let page = scrape_until(
        port,
        &[
            "fencelock_leases_held{backend=\"file\"} 1",
            "fencelock_grants_total{backend=\"file\"} 1",
            "fencelock_wait_seconds_bucket{backend=\"file\",outcome=\"acquired\",le=\"+Inf\"} 1",
            // Renewed every third of the 300 ms TTL while held.
            "fencelock_renewals_total{backend=\"file\"}",
        ],
    );
    assert!(
        !page.contains("key=\""),
        "the key is a label only when asked for:\n{page}"
    );
    common::end(holder);
}

#[test]
fn a_metrics_address_in_use_is_refused_on_one_line() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr");
    let dir = tempfile::tempdir().expect("temp dir");
    let out = common::on_files(dir.path())
        .args(["run", "k", "--metrics-addr"])
        .arg(addr.to_string())
        .args(["--", "true"])
        .output()
        .expect("run");
    common::assert_one_line(&out, 78, "cannot serve metrics on", "address in use");
    assert!(
        common::stderr_of(&out).starts_with("fencelock: cannot serve metrics on"),
        "{}",
        common::stderr_of(&out)
    );
}
