//! Issue 13 A7: the command's FENCELOCK_* variables are exactly this grant's — inherited
//! ones (a stale FENCELOCK_TERM of an outer `elect`, say) are removed, not passed through.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail by panicking

use std::collections::BTreeMap;
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_fencelock");

fn fencelock(dir: &std::path::Path) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.env_remove("FENCELOCK_BACKEND")
        .env_remove("RUST_LOG")
        .arg("--backend")
        .arg(format!("file://{}", dir.display()));
    cmd
}

/// The FENCELOCK_* variables in `env` output.
fn lock_vars(stdout: &[u8]) -> BTreeMap<String, String> {
    String::from_utf8_lossy(stdout)
        .lines()
        .filter(|l| l.starts_with("FENCELOCK_") && !l.starts_with("FENCELOCK_BACKEND"))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

#[test]
fn run_removes_inherited_term_and_election() {
    let dir = tempfile::tempdir().expect("temp dir");
    let out = fencelock(dir.path())
        .env("FENCELOCK_TOKEN", "999")
        .env("FENCELOCK_TERM", "5")
        .env("FENCELOCK_ELECTION", "outer")
        .env("FENCELOCK_GRANT", "stale")
        .args(["run", "plain", "--", "env"])
        .output()
        .expect("run");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let vars = lock_vars(&out.stdout);
    assert_eq!(
        vars.keys().map(String::as_str).collect::<Vec<_>>(),
        ["FENCELOCK_GRANT", "FENCELOCK_KEY", "FENCELOCK_TOKEN"],
        "{vars:?}"
    );
    assert_eq!(vars["FENCELOCK_TOKEN"], "1");
    assert_eq!(vars["FENCELOCK_KEY"], "plain");
    assert_ne!(vars["FENCELOCK_GRANT"], "stale");
}

#[test]
fn a_run_nested_in_elect_sees_only_its_own_grant() {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = format!("file://{}", dir.path().display());
    let out = fencelock(dir.path())
        .args(["elect", "nest", "--"])
        .args([BIN, "--backend", &url, "run", "inner", "--", "env"])
        .output()
        .expect("elect");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let vars = lock_vars(&out.stdout);
    assert!(!vars.contains_key("FENCELOCK_TERM"), "{vars:?}");
    assert!(!vars.contains_key("FENCELOCK_ELECTION"), "{vars:?}");
    assert_eq!(vars["FENCELOCK_KEY"], "inner");
}

#[test]
fn elect_sets_every_variable_over_inherited_ones() {
    let dir = tempfile::tempdir().expect("temp dir");
    let out = fencelock(dir.path())
        .env("FENCELOCK_TOKEN", "999")
        .env("FENCELOCK_TERM", "999")
        .env("FENCELOCK_ELECTION", "other")
        .args(["elect", "e", "--", "env"])
        .output()
        .expect("elect");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let vars = lock_vars(&out.stdout);
    assert_eq!(vars["FENCELOCK_ELECTION"], "e");
    assert_eq!(vars["FENCELOCK_TERM"], vars["FENCELOCK_TOKEN"]);
    assert_ne!(vars["FENCELOCK_TERM"], "999");
}
