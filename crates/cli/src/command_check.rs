//! Checks, before waiting for the lock, that the command can be found and executed — so
//! that `run KEY -- nosuchcmd` fails at once (127, or 126) instead of after the wait.

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::exit;

/// `Ok` when `program` names an executable file (a path, or a name found in `PATH`, as
/// execvp(3) searches); otherwise the status (127 not found, 126 not executable) and a
/// message.
pub fn check(program: &OsStr) -> Result<(), (u8, String)> {
    if program.is_empty() {
        // As shells say for an empty name (`''`): not found, not "a directory in PATH".
        return Err((exit::NOT_FOUND, message(program, exit::NOT_FOUND)));
    }
    if program.as_bytes().contains(&b'/') {
        return executable(Path::new(program)).map_err(|status| (status, message(program, status)));
    }
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into());
    let mut found_not_executable = false;
    for dir in std::env::split_paths(&path) {
        let candidate: PathBuf = if dir.as_os_str().is_empty() {
            PathBuf::from(".")
        } else {
            dir
        }
        .join(program);
        match executable(&candidate) {
            Ok(()) => return Ok(()),
            Err(exit::CANNOT_EXECUTE) => found_not_executable = true,
            Err(_) => {}
        }
    }
    let status = if found_not_executable {
        exit::CANNOT_EXECUTE
    } else {
        exit::NOT_FOUND
    };
    Err((status, message(program, status)))
}

/// The check `run` and `elect` make before waiting: the first word of `command`, by
/// [`check`]; `not` says what is then not done ("waiting for the lock", "campaigning").
/// `Err` carries the exit code, after the message is printed.
pub fn before_waiting(command: &[OsString], not: &str) -> Result<(), std::process::ExitCode> {
    match command.first().map(|p| check(p)) {
        Some(Err((status, message))) => Err(exit::fail(&format!("{message}; not {not}"), status)),
        _ => Ok(()),
    }
}

fn executable(path: &Path) -> Result<(), u8> {
    match std::fs::metadata(path) {
        Ok(m) if m.is_file() && m.permissions().mode() & 0o111 != 0 => Ok(()),
        Ok(_) => Err(exit::CANNOT_EXECUTE),
        Err(_) => Err(exit::NOT_FOUND),
    }
}

/// The message for `program` (shown as [`exit::escaped_os`] does) and `status`.
fn message(program: &OsStr, status: u8) -> String {
    let program = exit::escaped_os(program);
    if status == exit::NOT_FOUND {
        format!("cannot run `{program}`: command not found")
    } else {
        format!("cannot run `{program}`: not an executable file")
    }
}
