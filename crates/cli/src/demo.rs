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
        let mut cmd = Command::new(&exe);
        if let Some(path) = &cli.config {
            cmd.arg("--config").arg(path);
        } else {
            cmd.arg("--backend").arg(&config.backend);
        }
        cmd.args(["run", "demo", "--wait", "60s", "--ttl", "10s", "--"])
            .arg(&exe)
            .arg("__demo-work");
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
