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
