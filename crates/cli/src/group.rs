//! The processes of the command's process group, as `run` and the guard see them.

use rustix::process::{kill_process_group, test_kill_process_group, Pid, Signal};

/// The processes of `group` that still run, from /proc: zombies (killed, not yet reaped)
/// run nothing and do not count. `None` where there is no /proc.
pub(crate) fn members(group: Pid) -> Option<Vec<Pid>> {
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
            // `PID (COMM) STATE PPID PGRP …`; COMM may hold spaces and parentheses.
            let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
            let mut fields = after.split_whitespace();
            let state = fields.next();
            let pgrp = fields.nth(1);
            (pgrp == Some(want.as_str()) && state != Some("Z") && state != Some("X")).then_some(pid)
        })
        .collect();
    Some(found)
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
