//! `fencelock demo`: several `fencelock run` processes on one key, and a verdict.

use std::process::{ExitCode, Stdio};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;
use tokio::sync::mpsc;

use crate::args::{Cli, DemoArgs};
use crate::backend;
use crate::exit;
use crate::exit::outln;

/// How long each demo process works under the lock.
const WORK: Duration = Duration::from_millis(300);

/// Starts `processes` copies of `fencelock run demo -- fencelock __demo-work`, relays their
/// lines in the order they arrive, then checks that no two were inside at once and that
/// tokens grew in the order they got in.
pub async fn demo(cli: &Cli, args: &DemoArgs) -> ExitCode {
    let config = match backend::config(cli).and_then(|c| backend::refuse_in_process(&c, "demo").map(|()| c)) {
        Ok(c) => c,
        Err(e) => return exit::fail_with(&e),
    };
    let exe = match std::env::current_exe() {
        Ok(p) => p,
        Err(e) => return exit::fail(&format!("cannot find my own executable: {e}"), exit::FAILURE),
    };
    outln!(
        "{} processes want the lock `demo` on {} at the same time:",
        args.processes,
        fencelock_core::backend_url::redact(&config.backend)
    );
    let (tx, mut rx) = mpsc::unbounded_channel::<(usize, String)>();
    let mut children = Vec::new();
    for n in 1..=usize::from(args.processes) {
        let mut cmd = child_command(&exe, cli.config.as_deref(), &config.backend);
        let mut child = match cmd.stdout(Stdio::piped()).kill_on_drop(true).spawn() {
            Ok(c) => c,
            Err(e) => return exit::fail(&format!("cannot start a demo process: {e}"), exit::FAILURE),
        };
        if let Some(out) = child.stdout.take() {
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut lines = BufReader::new(out).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    let _ = tx.send((n, line));
                }
            });
        }
        children.push(child);
    }
    drop(tx);
    let mut inside: Option<u64> = None;
    let mut tokens = Vec::new();
    let mut overlap = false;
    while let Some((n, line)) = rx.recv().await {
        outln!("  process {n}: {line}");
        let mut words = line.split_whitespace();
        match (words.next(), words.next().and_then(|t| t.parse::<u64>().ok())) {
            (Some("enter"), Some(token)) => {
                overlap |= inside.is_some();
                inside = Some(token);
                tokens.push(token);
            }
            (Some("leave"), Some(_)) => inside = None,
            _ => {}
        }
    }
    let mut failed = false;
    for mut c in children {
        failed |= !matches!(c.wait().await, Ok(s) if s.success());
    }
    let increasing = tokens.windows(2).all(|w| w[1] > w[0]);
    outln!();
    if failed || overlap || !increasing || tokens.len() != usize::from(args.processes) {
        outln!("FAILED: overlap={overlap}, tokens in entry order {tokens:?}, a process failed={failed}");
        return ExitCode::from(exit::FAILURE);
    }
    outln!("each process ran alone; tokens in the order they got in: {tokens:?} (strictly increasing)");
    ExitCode::SUCCESS
}

/// The work of one demo process, run by `fencelock run` with FENCELOCK_TOKEN set.
pub async fn demo_work() -> ExitCode {
    let token = std::env::var("FENCELOCK_TOKEN").unwrap_or_else(|_| "?".into());
    outln!(
        "enter {token} (pid {}) working for {WORK:?} with the lock",
        std::process::id()
    );
    tokio::time::sleep(WORK).await;
    outln!("leave {token}");
    ExitCode::SUCCESS
}

/// One demo process: `fencelock run demo … -- fencelock __demo-work`, on the configuration
/// file if one was given, else with the backend URL in `FENCELOCK_BACKEND` — never on the
/// command line, where `ps` shows a password to every user of the machine (a new-user
/// trial read it there after putting it in the environment, as docs/cli.md advises).
fn child_command(exe: &std::path::Path, config_file: Option<&std::path::Path>, backend_url: &str) -> Command {
    let mut cmd = Command::new(exe);
    match config_file {
        Some(path) => {
            cmd.arg("--config").arg(path);
        }
        None => {
            cmd.env(backend::ENV, backend_url);
        }
    }
    cmd.args(["run", "demo", "--wait", "60s", "--ttl", "10s", "--"])
        .arg(exe)
        .arg("__demo-work");
    cmd
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The backend URL (and its password) goes to the demo's processes in their
    /// environment, not on their command lines.
    #[test]
    fn the_backend_url_is_not_on_the_childrens_command_lines() {
        let url = "redis://:SeCRET@127.0.0.1:1";
        let cmd = child_command(std::path::Path::new("/bin/fencelock"), None, url);
        let args: Vec<_> = cmd
            .as_std()
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert!(
            !args.iter().any(|a| a.contains("SeCRET")),
            "on the command line: {args:?}"
        );
        let env: Vec<_> = cmd.as_std().get_envs().collect();
        assert!(
            env.iter()
                .any(|(k, v)| *k == backend::ENV && v.is_some_and(|v| v == url)),
            "not in the environment: {env:?}"
        );
    }
}
