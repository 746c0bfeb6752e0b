//! Eight `fencelock --backend postgres://… run` processes on one key of a real PostgreSQL
//! server: never two inside at once, tokens strictly increasing in the order they got in.
//! (Its own file so the PostgreSQL rows do not touch the other backends' tests.)

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail by panicking

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use fencelock_testkit::pg_server::PgServer;

const BIN: &str = env!("CARGO_BIN_EXE_fencelock");

#[test]
fn eight_processes_on_postgres_never_overlap_and_tokens_grow() {
    let server = PgServer::start();
    let dir = tempfile::tempdir().expect("temp dir");
    let work = dir.path().join("work");
    std::fs::create_dir(&work).expect("mkdir");
    // Inside the lock: note it if someone else is inside, log the token, work a little.
    let script = r#"
        set -e
        if ! mkdir "$WORK/inside" 2>/dev/null; then echo overlap >> "$WORK/overlap"; fi
        echo "$FENCELOCK_TOKEN $FENCELOCK_KEY" >> "$WORK/log"
        i=0; while [ $i -lt 2000 ]; do i=$((i+1)); done
        rmdir "$WORK/inside"
    "#;
    let children: Vec<_> = (0..8)
        .map(|_| {
            Command::new(BIN)
                .env_remove("FENCELOCK_BACKEND")
                .env_remove("RUST_LOG")
                .args([
                    "--backend",
                    &server.url(),
                    "run",
                    "k",
                    "--wait",
                    "60s",
                    "--",
                    "sh",
                    "-c",
                    script,
                ])
                .env("WORK", &work)
                .stderr(Stdio::piped())
                .spawn()
                .expect("spawn")
        })
        .collect();
    let limit = Duration::from_secs(120);
    for mut c in children {
        let start = Instant::now();
        while c.try_wait().expect("try_wait").is_none() {
            if start.elapsed() > limit {
                let _ = c.kill();
                panic!("fencelock did not exit within {limit:?}");
            }
            std::thread::sleep(Duration::from_millis(10)); // polling a child's exit, bounded
        }
        let out = c.wait_with_output().expect("output");
        assert!(
            out.status.success(),
            "a run failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert!(
        !work.join("overlap").exists(),
        "two commands ran inside the lock at once"
    );
    let log = std::fs::read_to_string(work.join("log")).expect("log");
    let tokens: Vec<u64> = log
        .lines()
        .map(|l| l.split(' ').next().unwrap().parse().unwrap())
        .collect();
    assert_eq!(tokens.len(), 8, "{log}");
    assert!(
        tokens.windows(2).all(|w| w[1] > w[0]),
        "tokens not increasing in entry order: {tokens:?}"
    );
    assert!(log.lines().all(|l| l.ends_with(" k")), "FENCELOCK_KEY missing: {log}");
    // Every process left the queue and released: nothing of `k` is left on the server.
    assert_eq!(server.psql("SELECT count(*) FROM fencelock.locks WHERE key = 'k'"), "0");
    assert_eq!(
        server.psql("SELECT count(*) FROM fencelock.waiters WHERE key = 'k'"),
        "0"
    );
}

/// `fencelock lab restart-while-held`: PostgreSQL keeps its data through a crash restart,
/// and the holder's row outlives the loss signal its client gets when the connection ends,
/// so no second grant lands inside the holder's validity.
#[test]
fn the_lab_shows_postgres_exclusive_through_a_restart_while_held() {
    let dir = tempfile::tempdir().expect("temp dir");
    let report = dir.path().join("safety.md");
    let out = Command::new(BIN)
        .args(["lab", "restart-while-held", "--quiet", "--report"])
        .arg(&report)
        .env_remove("FENCELOCK_BACKEND")
        .output()
        .expect("run");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let table = std::fs::read_to_string(&report).expect("report");
    let line = table
        .lines()
        .find(|l| l.starts_with("| restart-while-held | postgres (data kept) |"))
        .unwrap_or_else(|| panic!("no postgres row in:\n{table}"));
    let cells: Vec<&str> = line.split('|').map(str::trim).filter(|c| !c.is_empty()).collect();
    // Columns: scenario, backend, overlaps, regressions, reuse, late actions, stale (fenced).
    assert_eq!(&cells[2..7], &["0", "0", "0", "0", "0"], "{line}");
}
