//! The per-key state file: the last token handed out and the current holder.
//!
//! Written by replacing it (temp file, fsync, rename, fsync of the directory) under the
//! key's mutex file, so a crash leaves either the old or the new state, and the token
//! counter survives restarts and power loss.

use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{LockError, Result};

pub(crate) const BACKEND: &str = "file";

/// The current holder of a key.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct HolderRecord {
    /// The grant id.
    pub grant: String,
    /// When the grant expires, in nanoseconds of the host's monotonic clock.
    pub expires_mono_ns: u64,
    /// The holder's liveness file (name within the directory), flocked while it lives.
    pub live: String,
}

/// The content of `STEM.state`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct KeyState {
    /// The last token handed out for this key.
    pub last_token: u64,
    /// The holder, if any (it may have expired or died; see `FileLock`).
    pub holder: Option<HolderRecord>,
}

pub(crate) fn io_error(what: String, e: std::io::Error) -> LockError {
    LockError::backend(BACKEND, what, e)
}

/// Reads the state; a missing file is the initial state. A file that cannot be parsed is an
/// error: resetting it would restart tokens and break fencing.
pub(crate) fn read(path: &Path) -> Result<KeyState> {
    match fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
            LockError::backend(
                BACKEND,
                format!(
                    "state file {} is corrupt; refusing to grant so tokens cannot go back. Restore it, or delete it only if no resource relies on this key's tokens",
                    path.display()
                ),
                e,
            )
        }),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(KeyState::default()),
        Err(e) => Err(io_error(format!("cannot read {}", path.display()), e)),
    }
}

/// Replaces the state atomically; with `durable`, fsyncs the file and the directory.
pub(crate) fn write(dir: &Path, path: &Path, state: &KeyState, durable: bool) -> Result<()> {
    let mut tmp: PathBuf = path.to_owned();
    tmp.set_extension("state-tmp");
    let bytes = serde_json::to_vec(state).map_err(|e| LockError::backend(BACKEND, "cannot encode state", e))?;
    let write = || -> std::io::Result<()> {
        let mut f = OpenOptions::new().write(true).create(true).truncate(true).open(&tmp)?;
        f.write_all(&bytes)?;
        if durable {
            f.sync_data()?;
        }
        fs::rename(&tmp, path)?;
        if durable {
            File::open(dir)?.sync_all()?;
        }
        Ok(())
    };
    write().map_err(|e| io_error(format!("cannot write {}", path.display()), e))
}
