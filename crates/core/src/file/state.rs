//! The per-key state file: the last token handed out and the current holder.
//!
//! Written by replacing it under the key's mutex flock — a new file made with `tempfile`'s
//! exclusive create in the same directory (never through a planted link), fsynced, then
//! renamed over the old one and the directory fsynced — so a crash leaves either the old
//! or the new state, and the token counter survives restarts and power loss.

use std::fs::{File, Permissions};
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::error::{io_error, BACKEND};
use super::os;
use crate::error::{LockError, Result};

/// The current holder of a key.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct HolderRecord {
    /// The grant id.
    pub grant: String,
    /// When the grant expires, in nanoseconds of the host's monotonic clock, as granted;
    /// once the holder has written an expiry into its liveness file (right after the
    /// grant is written, and at each extend), that one overrides this one
    /// (see `KeyFiles::extend`).
    pub expires_mono_ns: u64,
    /// The holder's liveness file (name within the directory), flocked while it lives.
    pub live: String,
}

/// The content of `STEM.state`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct KeyState {
    /// The last token handed out for this key.
    pub last_token: u64,
    /// The holder, if any (it may have expired, died or been removed; see `grant`).
    pub holder: Option<HolderRecord>,
}

/// Reads the state; a missing file is the initial state. A file that cannot be parsed is a
/// permanent error: resetting it would restart tokens and break fencing. A symbolic link
/// in its place is refused (`ELOOP`), never followed.
pub(crate) fn read(path: &Path) -> Result<KeyState> {
    let cannot_read = |e| io_error(format!("cannot read {}", path.display()), e);
    let Some(mut f) = os::open_read(path).map_err(cannot_read)? else {
        return Ok(KeyState::default());
    };
    let mut bytes = Vec::with_capacity(256);
    f.read_to_end(&mut bytes).map_err(cannot_read)?;
    serde_json::from_slice(&bytes).map_err(|e| {
        LockError::backend(
            BACKEND,
            format!(
                "state file {} is corrupt; refusing to grant so tokens cannot go back. Restore it, or delete it only if no resource relies on this key's tokens",
                path.display()
            ),
            e,
        )
    })
}

/// Replaces the state atomically; with `durable`, fsyncs the file and the directory. The
/// new file gets `mode` (0600, or 0660 in a shared directory).
pub(crate) fn write(dir: &Path, stem: &str, path: &Path, state: &KeyState, durable: bool, mode: u32) -> Result<()> {
    let bytes = serde_json::to_vec(state).map_err(|e| LockError::backend(BACKEND, "cannot encode state", e))?;
    let write = || -> std::io::Result<()> {
        let mut tmp = tempfile::Builder::new()
            .prefix(&format!("{stem}."))
            .suffix(".state-tmp")
            .permissions(Permissions::from_mode(mode))
            .tempfile_in(dir)?;
        tmp.write_all(&bytes)?;
        if durable {
            tmp.as_file().sync_data()?;
        }
        tmp.persist(path).map_err(|e| e.error)?;
        if durable {
            File::open(dir)?.sync_all()?;
        }
        Ok(())
    };
    write().map_err(|e| io_error(format!("cannot write {}", path.display()), e))
}
