//! The file backend's errors: which operating-system failures are worth retrying.

use std::io;

use rustix::io::Errno;

use crate::error::LockError;

/// The backend name in errors.
pub(crate) const BACKEND: &str = "file";

/// A failed file operation on `what`, temporary or permanent by its error kind (never by
/// its message): see [`is_temporary`].
pub(crate) fn io_error(what: String, e: io::Error) -> LockError {
    if is_temporary(&e) {
        LockError::backend_temporary(BACKEND, what, e)
    } else {
        LockError::backend(BACKEND, what, e)
    }
}

/// `true` for failures that may pass by themselves: interrupted or would-block calls, a
/// full disk or quota (someone may free space), out of descriptors, memory or lock-table
/// entries. Everything else — permissions, a symbolic link where a lock file should be
/// (`ELOOP`), a read-only or missing directory, I/O errors of the disk — is permanent:
/// retrying for the whole wait would only hide it.
pub(crate) fn is_temporary(e: &io::Error) -> bool {
    if matches!(
        e.kind(),
        io::ErrorKind::Interrupted | io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    ) {
        return true;
    }
    let Some(code) = e.raw_os_error() else {
        return false;
    };
    matches!(
        Errno::from_raw_os_error(code),
        Errno::INTR
            | Errno::AGAIN
            | Errno::NOSPC
            | Errno::DQUOT
            | Errno::MFILE
            | Errno::NFILE
            | Errno::NOMEM
            | Errno::NOLCK
            | Errno::BUSY
            | Errno::TIMEDOUT
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temporary_per_error_kind() {
        for errno in [Errno::INTR, Errno::AGAIN, Errno::NOSPC, Errno::MFILE, Errno::NOLCK] {
            let e = io_error("x".into(), io::Error::from_raw_os_error(errno.raw_os_error()));
            assert!(e.is_temporary(), "{errno:?} should be temporary");
        }
        for errno in [
            Errno::ACCESS,
            Errno::PERM,
            Errno::LOOP,
            Errno::ROFS,
            Errno::NOENT,
            Errno::IO,
        ] {
            let e = io_error("x".into(), io::Error::from_raw_os_error(errno.raw_os_error()));
            assert!(!e.is_temporary(), "{errno:?} should be permanent");
        }
        assert!(!io_error("x".into(), io::Error::other("parse")).is_temporary());
    }
}
