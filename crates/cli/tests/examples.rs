//! The shell example, `examples/fenced-append.sh`, under `fencelock run`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail by panicking

use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_fencelock");

fn script() -> String {
    format!("{}/../../examples/fenced-append.sh", env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn the_shell_example_appends_under_the_lock_and_refuses_a_stale_token() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path().join("report.log");
    for line in ["first", "second"] {
        let out = Command::new(BIN)
            .env_remove("FENCELOCK_BACKEND")
            .arg("--backend")
            .arg(format!("file://{}", dir.path().display()))
            .args(["run", "report", "--", "sh"])
            .arg(script())
            .arg(&data)
            .arg(line)
            .output()
            .expect("run");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    assert_eq!(std::fs::read_to_string(&data).expect("data"), "first\nsecond\n");
    let fence = std::fs::read_to_string(dir.path().join("report.log.fence")).expect("fence");
    assert!(fence.starts_with("2 "), "{fence}");
    // A holder with the first grant's token wakes up (or escaped with setsid): refused.
    let stale = Command::new("sh")
        .arg(script())
        .arg(&data)
        .arg("stale")
        .env("FENCELOCK_TOKEN", "1")
        .env("FENCELOCK_GRANT", "an-old-grant")
        .output()
        .expect("run");
    assert_eq!(stale.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&stale.stderr).contains("refused: token 1 is stale"));
    assert_eq!(std::fs::read_to_string(&data).expect("data"), "first\nsecond\n");
}

/// What the process group cannot stop: a grandchild that starts its own session outlives
/// `fencelock run`. Its old token is what protects the data: the fenced append refuses it
/// once the next holder has written.
#[test]
fn a_grandchild_that_escapes_with_setsid_is_refused_by_the_fencing_token() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path().join("report.log");
    let backend = format!("file://{}", dir.path().display());
    // A: appends, then leaves behind (setsid) a writer that waits — at most 20 s, polling
    // every 50 ms — until B has written, then appends with A's token. A ends only once the
    // writer is in its own session (it wrote its pid), or `run` would stop it with A's group.
    let escaped = format!(
        r#"sh {script} "$DATA" a
        setsid sh -c 'echo $$ > "$DATA.escaped-pid"
                      i=0; until grep -q "^2 " "$DATA.fence" || [ $i -ge 400 ]; do sleep 0.05; i=$((i+1)); done
                      sh {script} "$DATA" escaped 2> "$DATA.escaped-err"; echo $? > "$DATA.escaped-status"' < /dev/null > /dev/null 2>&1 &
        i=0; until [ -s "$DATA.escaped-pid" ] || [ $i -ge 200 ]; do sleep 0.05; i=$((i+1)); done"#,
        script = script()
    );
    let a = Command::new(BIN)
        .env_remove("FENCELOCK_BACKEND")
        .env("DATA", &data)
        .args(["--backend", &backend, "run", "report", "--", "sh", "-c", &escaped])
        .output()
        .expect("run A");
    assert!(a.status.success(), "{}", String::from_utf8_lossy(&a.stderr));
    let b = Command::new(BIN)
        .env_remove("FENCELOCK_BACKEND")
        .args(["--backend", &backend, "run", "report", "--", "sh"])
        .arg(script())
        .arg(&data)
        .arg("b")
        .output()
        .expect("run B");
    assert!(b.status.success(), "{}", String::from_utf8_lossy(&b.stderr));
    let status = dir.path().join("report.log.escaped-status");
    let start = std::time::Instant::now();
    while !status.exists() {
        assert!(
            start.elapsed() < std::time::Duration::from_secs(30),
            "the escaped writer never finished"
        );
        std::thread::sleep(std::time::Duration::from_millis(20)); // polling a condition with a deadline
    }
    let code = std::fs::read_to_string(&status).expect("status");
    assert_eq!(code.trim(), "1", "the escaped writer was not refused");
    let err = std::fs::read_to_string(dir.path().join("report.log.escaped-err")).expect("err");
    assert!(err.contains("refused: token 1 is stale (last writer had 2)"), "{err}");
    assert_eq!(std::fs::read_to_string(&data).expect("data"), "a\nb\n");
}
