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
    let Some(code) = os_error_code(e) else {
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

/// The operating-system error code of `e`, looked for through the errors it wraps:
/// `tempfile` (which made the state's new file until the backend made it itself) returns a
/// new `io::Error` whose source is its own error with the path, and only the innermost
/// `io::Error` has the code. Judging the wrapper alone made a full disk or EMFILE at the
/// state write a permanent failure; any such wrapper is still seen through.
fn os_error_code(e: &io::Error) -> Option<i32> {
    if let Some(code) = e.raw_os_error() {
        return Some(code);
    }
    let mut next: Option<&(dyn std::error::Error + 'static)> = e.get_ref().map(|inner| inner as _);
    while let Some(err) = next {
        next = match err.downcast_ref::<io::Error>() {
            Some(io) if io.raw_os_error().is_some() => return io.raw_os_error(),
            // An io::Error's `source()` skips the error it wraps; look at that one.
            Some(io) => io.get_ref().map(|inner| inner as _),
            None => err.source(),
        };
    }
    None
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

    /// An OS error wrapped the way `tempfile` wraps it (with the path, as the source of a
    /// new `io::Error` of the same kind): `raw_os_error()` of the wrapper is `None`.
    #[derive(Debug)]
    struct WithPath {
        err: io::Error,
        path: std::path::PathBuf,
    }

    impl std::fmt::Display for WithPath {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "{} at path {:?}", self.err, self.path)
        }
    }

    impl std::error::Error for WithPath {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.err)
        }
    }

    fn wrapped(errno: Errno) -> io::Error {
        let err = io::Error::from_raw_os_error(errno.raw_os_error());
        io::Error::new(
            err.kind(),
            WithPath {
                err,
                path: "/locks/k-k.x.state-tmp".into(),
            },
        )
    }

    #[test]
    fn wrapped_os_errors_are_judged_by_their_os_error() {
        for errno in [Errno::NOSPC, Errno::DQUOT, Errno::MFILE, Errno::NFILE] {
            let e = wrapped(errno);
            assert_eq!(e.raw_os_error(), None, "the wrapper hides the code");
            assert!(is_temporary(&e), "{errno:?} wrapped with its path should be temporary");
            // Wrapped twice, and inside a plain io::Error::other.
            assert!(is_temporary(&io::Error::other(e)), "{errno:?} wrapped twice");
            let plain = io::Error::from_raw_os_error(errno.raw_os_error());
            assert!(is_temporary(&io::Error::other(plain)), "{errno:?} in io::Error::other");
        }
        for errno in [Errno::ACCESS, Errno::LOOP, Errno::ROFS, Errno::IO] {
            assert!(!is_temporary(&wrapped(errno)), "{errno:?} wrapped should be permanent");
        }
        // What tempfile itself returns: a missing directory is permanent.
        let e = tempfile::Builder::new()
            .tempfile_in("/nonexistent-fencelock-dir")
            .unwrap_err();
        assert!(!is_temporary(&e), "{e}");
    }
}
