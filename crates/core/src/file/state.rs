//! The per-key state file: the last token handed out and the current holder.
//!
//! Written by replacing it under the key's mutex flock (`KeyFiles::replace`) — the key's new
//! file `STEM.tmp` made with an exclusive create (`O_EXCL`: never through a planted link)
//! in the same directory, fsynced, then renamed over the old one and the directory
//! fsynced — so a crash leaves either the old or the new state, and the token counter
//! survives restarts and power loss. A crash before the rename leaves `STEM.tmp`, which
//! the key's next write removes.

use std::io::Read;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::error::{io_error, BACKEND};
use super::{naming, os};
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

/// Reads the state of the key with file stem `stem`; `None` when the file is missing (the
/// key's first grant, or a deleted file: see `KeyFiles::restored`). A file that cannot be parsed is a permanent error: resetting it would restart tokens
/// and break fencing. A symbolic link in its place is refused (`ELOOP`), never followed.
///
/// So is a holder whose liveness file is not named as this backend names it for that
/// grant (`naming::live_file`): a grant opens that file to see whether its holder lives
/// and removes it when the holder is stale, so a crafted state (a member of a shared
/// directory's group can write it) naming `../elsewhere` or another key's mutex would
/// otherwise have us open or delete a file of its choosing.
pub(crate) fn read(path: &Path, stem: &str) -> Result<Option<KeyState>> {
    let cannot_read = |e| io_error(format!("cannot read {}", path.display()), e);
    let Some(mut f) = os::open_read(path).map_err(cannot_read)? else {
        return Ok(None);
    };
    let mut bytes = Vec::with_capacity(256);
    f.read_to_end(&mut bytes).map_err(cannot_read)?;
    let state: KeyState = serde_json::from_slice(&bytes).map_err(|e| corrupt(path, e))?;
    if let Some(h) = &state.holder {
        if !naming::is_live_file_of(stem, &h.live) || h.live != naming::live_file(stem, &h.grant) {
            return Err(corrupt(
                path,
                std::io::Error::other(format!(
                    "its holder's liveness file `{}` is not the name this key's grant `{}` has (`{}`)",
                    h.live.escape_debug(),
                    h.grant.escape_debug(),
                    naming::live_file(stem, &h.grant).escape_debug(),
                )),
            ));
        }
    }
    Ok(Some(state))
}

/// The state file at `path` cannot be trusted, because of `why`.
fn corrupt(path: &Path, why: impl Into<crate::error::BoxError>) -> LockError {
    LockError::backend(
        BACKEND,
        format!(
            "state file {} is corrupt; refusing to grant so tokens cannot go back. Restore it, or delete it only if no resource relies on this key's tokens",
            path.display()
        ),
        why,
    )
}

/// The state as written to `STEM.state` (by `KeyFiles::replace`, under the key's mutex).
pub(crate) fn encode(state: &KeyState) -> Result<Vec<u8>> {
    serde_json::to_vec(state).map_err(|e| LockError::backend(BACKEND, "cannot encode state", e))
}

/// The term in a file election's value record `STEM.GRANT.leader` (the format of
/// `election::file`'s `Record`, `{"term":N,"value":[...]}`; only the term is read): the
/// token of the grant that wrote it, so a lower bound of the key's counter. `None` when the
/// file is gone. A record outlives its leader (the next leader's grant removes it), so a
/// key whose state file and mutex copy are both lost still counts its terms on from it.
pub(crate) fn leader_record_term(path: &Path) -> std::io::Result<Option<u64>> {
    #[derive(Deserialize)]
    struct Term {
        term: u64,
    }
    let Some(mut f) = os::open_read(path)? else {
        return Ok(None);
    };
    let mut bytes = Vec::with_capacity(128);
    f.read_to_end(&mut bytes)?;
    let record: Term = serde_json::from_slice(&bytes).map_err(std::io::Error::other)?;
    Ok(Some(record.term))
}
