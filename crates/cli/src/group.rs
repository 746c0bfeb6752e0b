//! The processes of the command's process group, as `run` and the guard see them.

use rustix::process::{kill_process_group, test_kill_process_group, Pid, Signal};

/// The processes of `group` that still run, from /proc: zombies (killed, not yet reaped)
/// run nothing and do not count. `None` where there is no /proc.
pub(crate) fn members(group: Pid) -> Option<Vec<Pid>> {
    Some(running(group)?.into_iter().map(|(pid, _)| pid).collect())
}

/// Whether a process of `group` is stopped (see [`stopped`]): it acts on a signal only
/// once continued.
pub(crate) fn any_stopped(group: Pid) -> bool {
    running(group)
        .unwrap_or_default()
        .into_iter()
        .any(|(_, state)| is_stopped(state))
}

/// Whether `pid` is stopped, as /proc says (state `T`, or `t` under a debugger); `None`
/// when /proc cannot say.
pub(crate) fn stopped(pid: Pid) -> Option<bool> {
    let stat = std::fs::read_to_string(format!("/proc/{}/stat", pid.as_raw_nonzero())).ok()?;
    let (state, _) = state_and_group(&stat)?;
    Some(is_stopped(state))
}

fn is_stopped(state: char) -> bool {
    state == 'T' || state == 't'
}

/// The running processes of `group` with their state letters, from one pass over /proc.
fn running(group: Pid) -> Option<Vec<(Pid, char)>> {
    let entries = std::fs::read_dir("/proc").ok()?;
    let want = group.as_raw_nonzero().get().to_string();
    let found = entries
        .flatten()
        .filter_map(|entry| {
            let pid = entry
                .file_name()
                .to_str()?
                .parse::<i32>()
                .ok()
                .and_then(Pid::from_raw)?;
            let stat = std::fs::read_to_string(entry.path().join("stat")).ok()?;
            let (state, pgrp) = state_and_group(&stat)?;
            (pgrp == want && state != 'Z' && state != 'X').then_some((pid, state))
        })
        .collect();
    Some(found)
}

/// The state letter and the process group of a `/proc/PID/stat` line: `PID (COMM) STATE
/// PPID PGRP …`, where COMM may hold spaces and parentheses (the last `)` ends it).
fn state_and_group(stat: &str) -> Option<(char, &str)> {
    let (_, after) = stat.rsplit_once(')')?;
    let mut fields = after.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let pgrp = fields.nth(1)?;
    Some((state, pgrp))
}

/// Whether a process of `group` still runs (see [`members`]); without /proc, whether the
/// group can be signalled at all.
pub(crate) fn alive(group: Pid) -> bool {
    if test_kill_process_group(group).is_err() {
        return false;
    }
    members(group).is_none_or(|m| !m.is_empty())
}

/// Sends `sig` to `group`; a group already gone is no error.
pub(crate) fn signal(group: Pid, sig: Signal) {
    match kill_process_group(group, sig) {
        Ok(()) => {}
        Err(rustix::io::Errno::SRCH) => {} // already gone
        Err(e) => tracing::warn!(error = %e, "cannot signal the command's process group"),
    }
}
