//! Python virtualenvs for the interop tests whose peer is a Python library (kazoo on
//! ZooKeeper, python-redis-lock and pottery on Redis): made by the test itself under the
//! target dir with the machine's `python3 -m venv`, the pinned packages installed into it
//! with its own pip, once per package set. Nothing is installed system-wide.
//!
//! A machine without `python3`, its `venv` module or a reachable package index FAILS the
//! test with the command that installs what is missing; nothing is skipped.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

/// The hint every failure names.
pub const HINT: &str = "the Python peers need python3 with venv and pip and access to PyPI for the first run: `apt-get install python3-venv` (or run scripts/setup-deps)";

static MAKING: Mutex<()> = Mutex::new(());

/// A virtualenv with `packages` (pinned `name==version` specs) installed, under
/// `target_tmp/fencelock-interop/venv-NAME` where NAME is `name` (short, for people); returns
/// its `python`. Made once: a marker inside names the packages, and a venv without it (an
/// interrupted install) is made again. Test binaries running at the same time each build in a
/// directory of their own and the first to finish moves its copy in place, so none ever uses
/// a half-made venv. `target_tmp` is the test's `CARGO_TARGET_TMPDIR`.
///
/// # Panics
/// When `python3 -m venv` or the pip install fails, with their output and [`HINT`].
pub fn venv(target_tmp: &str, name: &str, packages: &[&str]) -> PathBuf {
    let _one = MAKING.lock().unwrap_or_else(|p| p.into_inner());
    let root = Path::new(target_tmp).join("fencelock-interop");
    let venv = root.join(format!("venv-{name}"));
    let marker = venv.join(".installed");
    let want = packages.join(" ");
    if std::fs::read_to_string(&marker).is_ok_and(|m| m == want) {
        return venv.join("bin/python");
    }
    std::fs::create_dir_all(&root).unwrap();
    let tmp = root.join(format!("venv-{name}.build-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    run(
        "making the virtualenv",
        Command::new("python3").arg("-m").arg("venv").arg(&tmp),
    );
    run(
        &format!("installing {want}"),
        crate::process::bounded_command(tmp.join("bin/python"), crate::process::INSTALL_LIMIT)
            // pip's own bounds are per request (seconds per socket read, retries per file).
            .args(["-m", "pip", "install", "--quiet", "--disable-pip-version-check"])
            .args(["--timeout", "30", "--retries", "3"])
            .args(packages),
    );
    std::fs::write(tmp.join(".installed"), &want).unwrap();
    // `python -m` finds its venv from the interpreter's own path, so a moved venv works.
    // Another binary may have moved its copy in meanwhile: that one is kept (it may be in use).
    if std::fs::read_to_string(&marker).is_ok_and(|m| m == want) {
        let _ = std::fs::remove_dir_all(&tmp);
    } else {
        let _ = std::fs::remove_dir_all(&venv); // a stale or half-made one
        if std::fs::rename(&tmp, &venv).is_err() {
            let _ = std::fs::remove_dir_all(&tmp);
        }
    }
    assert!(
        std::fs::read_to_string(&marker).is_ok_and(|m| m == want),
        "the virtualenv {} is incomplete: {HINT}",
        venv.display()
    );
    venv.join("bin/python")
}

fn run(what: &str, cmd: &mut Command) {
    let out = match cmd.output() {
        Ok(o) => o,
        Err(e) => panic!("{what}: cannot run {cmd:?} ({e}): {HINT}"),
    };
    assert!(
        !crate::process::timed_out(out.status),
        "{what} did not finish within {:?}: {HINT}",
        crate::process::INSTALL_LIMIT
    );
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}{}\n{HINT}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
