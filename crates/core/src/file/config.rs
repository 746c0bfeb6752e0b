//! The file backend's configuration: the URL, the default directory, and the checks that
//! keep a lock directory private.
//!
//! A lock directory must be the user's own: a directory another user owns or can write
//! lets that user replace state files (tokens go back), plant links, or break locks. So it
//! is created 0700, and an existing one is refused unless it is a real directory (not a
//! symbolic link) owned by this user and not writable by group or others. `shared=true`
//! opts into a directory shared by a group of users who trust each other: any owner, group
//! writable; files are then created 0660. A directory every user can write (mode o+w,
//! with or without the sticky bit) is refused even then: any local user could plant files
//! in it, and with the sticky bit one user cannot replace another's state file at all.
//! A directory on a network or cluster filesystem (NFS, SMB/CIFS, 9p, Ceph, AFS, Lustre,
//! GPFS, GFS2, OCFS2) is refused as well: see
//! [`network_fs_name`].

use std::fs::{self, DirBuilder};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use crate::error::{LockError, Result};

/// How a `FileLock` is built: from a URL or in code, through the same checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileConfig {
    /// The lock directory, an absolute path; created (0700, or 0770 when `shared`) if
    /// missing.
    pub dir: PathBuf,
    /// fsync every state change (default `true`). `false` keeps tokens across process
    /// crashes but not power loss: use it only on tmpfs or in tests.
    pub durable: bool,
    /// Accept a directory shared by a group (any owner, group writable) and create files
    /// group readable and writable (default `false`: the directory must be the user's own
    /// and writable by nobody else).
    pub shared: bool,
    /// Let child processes inherit each liveness file's descriptor (default `false`: it is
    /// close-on-exec). A grant then stays live while *any* process sharing the descriptor
    /// lives — this one or a child it started after the grant (and their children) — or
    /// until its TTL ends unrenewed. `fencelock run` sets it so that, when `run` is
    /// SIGKILLed, the lock stays held until its guard has killed the command's process
    /// group, as flock(1) hands its lock to the command. Leave it off in a library: a
    /// child that outlives its holder would keep the key busy until the TTL.
    pub inherit: bool,
}

/// The directory `file://` + `authority_and_path` names, through the `url` crate (RFC 8089):
/// percent-decoded — `a%20b` and `a b` must be one directory, or two holders of one key
/// would each lock in their own (a new-user trial) — with no host or `localhost`. A `#`
/// would end the path (a fragment): refused, since the directory's name may hold one.
fn file_path(url: &str, authority_and_path: &str) -> Result<PathBuf> {
    let absolute = || {
        LockError::invalid_config(format!(
            "`{url}`: a file URL needs an absolute path on this machine, e.g. file:///var/lock/myapp \
             (three slashes; the only host it takes is localhost)"
        ))
    };
    if authority_and_path.is_empty() {
        return Err(absolute()); // `file://`: the url crate would read the root directory
    }
    let parsed = url::Url::parse(&format!("file://{authority_and_path}")).map_err(|_| absolute())?;
    if parsed.fragment().is_some() {
        return Err(LockError::invalid_config(format!(
            "`{url}`: `#` ends a URL's path; percent-encode it as %23 if the directory's name holds one"
        )));
    }
    parsed.to_file_path().map_err(|()| absolute())
}

impl FileConfig {
    /// A private, durable configuration for `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        FileConfig {
            dir: dir.into(),
            durable: true,
            shared: false,
            inherit: false,
        }
    }

    /// Parses `file:///absolute/dir[?durable=true|false][&shared=true|false][&inherit=true|false]`.
    pub fn from_url(url: &str) -> Result<Self> {
        // The scheme in any case (RFC 3986: schemes are case-insensitive), as every backend.
        let rest = url
            .get(..7)
            .filter(|s| s.eq_ignore_ascii_case("file://"))
            .map(|_| &url[7..])
            .ok_or_else(|| LockError::invalid_config(format!("`{url}` is not a file:// URL")))?;
        let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
        let mut config = FileConfig::new(file_path(url, path)?).normalised();
        let mut seen: Vec<&str> = Vec::new();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            let field = match name {
                "durable" => &mut config.durable,
                "shared" => &mut config.shared,
                "inherit" => &mut config.inherit,
                _ => return Err(unknown_option(url, pair)),
            };
            if seen.contains(&name) {
                return Err(LockError::invalid_config(format!(
                    "`{url}`: option `{name}` is given twice; give it once"
                )));
            }
            seen.push(name);
            *field = match value {
                "true" => true,
                "false" => false,
                _ => {
                    return Err(LockError::invalid_config(format!(
                        "`{url}`: option `{name}` takes true or false, not `{value}`"
                    )))
                }
            };
        }
        Ok(config)
    }

    /// The configuration with its directory normalised lexically: `.` components,
    /// repeated and trailing slashes dropped, `..` taken as removing the component before
    /// it (never above `/`). The checks must see the path that is used: `symlink_metadata`
    /// follows a link when the path ends in `/` or `/.`, so `DIR/` would pass a symlinked
    /// directory off as a real one; and `/.` or `/tmp/..` would hide the root directory
    /// from the CLI's refusal. Every later step (checks, lock files) uses the normalised
    /// path, so `..` taken on the text, not through links, names the directory used. A
    /// relative path is left as it is, for `prepare_dir` to refuse.
    pub(crate) fn normalised(mut self) -> Self {
        if self.dir.is_absolute() {
            let mut dir = PathBuf::from("/");
            for part in self.dir.components() {
                match part {
                    Component::Normal(name) => dir.push(name),
                    Component::ParentDir => {
                        dir.pop();
                    }
                    Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
                }
            }
            self.dir = dir;
        }
        self
    }

    /// The file mode of files this configuration creates.
    pub(crate) fn file_mode(&self) -> u32 {
        if self.shared {
            0o660
        } else {
            0o600
        }
    }

    /// Creates the directory if missing and checks that it may be used (module docs):
    /// `InvalidConfig` otherwise, naming the directory and what is wrong.
    pub(crate) fn prepare_dir(&self) -> Result<()> {
        let dir = &self.dir;
        if !dir.is_absolute() {
            return Err(LockError::invalid_config(format!(
                "lock directory `{}` must be an absolute path",
                dir.display()
            )));
        }
        // `file:///` (or `/.`, `/tmp/..`: judged normalised): the lock files would be
        // scattered in `/`, among the system's own, and as root it passed every check
        // below (a new-user trial). Refused for URLs and code-built configs alike.
        if self.clone().normalised().dir.parent().is_none() {
            return Err(LockError::invalid_config(format!(
                "refusing lock directory {}: it is the root directory, and the lock files would be \
                 scattered in it; give the locks a directory of their own, e.g. file:///var/lock/myapp \
                 (FileConfig::new(\"/var/lock/myapp\") in code)",
                dir.display()
            )));
        }
        let meta = match fs::symlink_metadata(dir) {
            Ok(meta) => meta,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mode = if self.shared { 0o770 } else { 0o700 };
                create_dirs(dir, mode).map_err(|e| cannot(dir, "create", e))?;
                if self.shared {
                    // The umask may have taken the group's write bit away.
                    fs::set_permissions(dir, fs::Permissions::from_mode(mode))
                        .map_err(|e| cannot(dir, "set the mode of", e))?;
                }
                fs::symlink_metadata(dir).map_err(|e| cannot(dir, "read", e))?
            }
            Err(e) => return Err(cannot(dir, "read", e)),
        };
        let refuse =
            |why: String| LockError::invalid_config(format!("refusing lock directory {}: {why}", dir.display()));
        if meta.file_type().is_symlink() {
            return Err(refuse(
                "it is a symbolic link (give the directory it points to, if you trust it)".into(),
            ));
        }
        if !meta.is_dir() {
            return Err(refuse("it is not a directory".into()));
        }
        let on = rustix::fs::statfs(dir).map_err(|e| cannot(dir, "read the filesystem of", e.into()))?;
        // The low 32 bits: every magic number fits them, and `f_type` is signed on some
        // platforms (CIFS's would be negative there).
        if let Some(name) = network_fs_name(on.f_type as u32) {
            return Err(refuse(format!(
                "it is on {name}, a network filesystem: a holder's liveness is judged by the \
                 host's own monotonic clock and flock may not reach other hosts, so processes \
                 on two hosts could hold one key at once. Use a directory on a local \
                 filesystem, or a server backend when the clients run on several hosts"
            )));
        }
        let mode = meta.permissions().mode() & 0o7777;
        if mode & 0o002 != 0 {
            return Err(refuse(format!(
                "every user can write it (mode {mode:04o}), so any of them could replace its state files or break its locks; use a directory only you (or your group, with ?shared=true) can write"
            )));
        }
        if self.shared {
            return Ok(());
        }
        let me = rustix::process::geteuid().as_raw();
        if meta.uid() != me {
            return Err(refuse(format!(
                "it is owned by uid {}, not by this user (uid {me}); that user could replace its state files. Use a directory you own, or add ?shared=true if you share it on purpose",
                meta.uid()
            )));
        }
        if mode & 0o020 != 0 {
            return Err(refuse(format!(
                "its group can write it (mode {mode:04o}); add ?shared=true if you share it with your group on purpose, or chmod g-w it"
            )));
        }
        Ok(())
    }
}

/// Creates `dir` and its missing parents with `mode` (cut by the umask), outermost first,
/// and fsyncs the parent of each directory it creates, so that power loss cannot lose the
/// new directory — and with it the state files, whose own writes fsync only the lock
/// directory. Returns the directories fsynced. A directory another process creates
/// meanwhile is left to it. Bounded by the path's components.
fn create_dirs(dir: &Path, mode: u32) -> std::io::Result<Vec<PathBuf>> {
    let mut missing = Vec::new();
    for at in dir.ancestors() {
        match fs::symlink_metadata(at) {
            Ok(_) => break,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => missing.push(at),
            Err(e) => return Err(e),
        }
    }
    let mut synced = Vec::new();
    for made in missing.into_iter().rev() {
        match DirBuilder::new().mode(mode).create(made) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
        let parent = made.parent().unwrap_or(Path::new("/"));
        fs::File::open(parent)?.sync_all()?;
        synced.push(parent.to_path_buf());
    }
    Ok(synced)
}

/// The name of the network filesystem with `statfs` magic number `f_type` (its low 32
/// bits: `f_type` is signed on some platforms), if it is one the backend refuses.
pub(crate) fn network_fs_name(f_type: u32) -> Option<&'static str> {
    Some(match f_type {
        0x6969 => "NFS",
        0x517B => "SMB",
        0xFF53_4D42 => "CIFS",
        0xFE53_4D42 => "SMB2",
        0x0102_1997 => "9p",
        0x00C3_6400 => "Ceph",
        0x5346_414F => "AFS",
        0x0BD0_0BD0 => "Lustre",
        0x4750_4653 => "GPFS",
        0x0116_1970 => "GFS2",
        0x7461_636F => "OCFS2",
        _ => return None,
    })
}

fn unknown_option(url: &str, pair: &str) -> LockError {
    LockError::invalid_config(format!(
        "`{url}`: unknown option `{pair}` (the file backend takes durable, shared and inherit, each =true or =false)"
    ))
}

fn cannot(dir: &Path, what: &str, e: std::io::Error) -> LockError {
    LockError::InvalidConfig {
        message: format!("cannot {what} lock directory {}", dir.display()),
        source: Some(e.into()),
    }
}

/// The default lock directory: `$TMPDIR/fencelock-UID`, or `/tmp/fencelock-UID` when
/// `TMPDIR` is unset or not an absolute path. Computed only; opening it creates it 0700
/// and checks it like any other.
///
/// The default must be the same for every process of the user, or a lock does not
/// exclude: one user's cron jobs, systemd units, ssh sessions and terminals must all land
/// here. So `XDG_RUNTIME_DIR` is not read: it is set only in login sessions (cron and
/// systemd services do not have it, and `/run/user/UID` is removed at logout), so a job
/// run from cron and the same job run from a shell used two directories, both got token
/// 1 and ran at once. `TMPDIR` is still honoured, as the conventional way to move
/// temporary files; it is rarely set differently between cron and shells. A `TMPDIR`
/// that is empty or relative is ignored, as `XDG_RUNTIME_DIR` used to be: a relative
/// default would change with each process's working directory. A unit with
/// `PrivateTmp=yes` sees a `/tmp` of its own and needs an explicit directory.
pub fn default_dir() -> PathBuf {
    let uid = rustix::process::geteuid().as_raw();
    let tmp = std::env::var_os("TMPDIR")
        .map(PathBuf::from)
        .filter(|dir| dir.is_absolute())
        .unwrap_or_else(|| PathBuf::from("/tmp"));
    tmp.join(format!("fencelock-{uid}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A known option with a bad value is named as such; an option given twice is refused.
    #[test]
    fn bad_values_and_repeats_are_named() {
        let e = FileConfig::from_url("file:///tmp/x?durable=maybe")
            .unwrap_err()
            .to_string();
        assert!(e.contains("option `durable` takes true or false, not `maybe`"), "{e}");
        let e = FileConfig::from_url("file:///tmp/x?shared=true&shared=false")
            .unwrap_err()
            .to_string();
        assert!(e.contains("`shared` is given twice"), "{e}");
    }

    #[test]
    fn the_scheme_is_case_insensitive() {
        assert_eq!(
            FileConfig::from_url("FILE:///tmp/x").unwrap().dir,
            PathBuf::from("/tmp/x")
        );
        assert!(FileConfig::from_url("File:///tmp/x?durable=false").is_ok());
    }

    #[test]
    fn url_options() {
        let c = FileConfig::from_url("file:///var/lock/app?durable=false&shared=true&inherit=true").unwrap();
        assert_eq!(
            c,
            FileConfig {
                dir: "/var/lock/app".into(),
                durable: false,
                shared: true,
                inherit: true,
            }
        );
        assert_eq!(FileConfig::from_url("file:///x").unwrap(), FileConfig::new("/x"));
        for bad in [
            "file://rel/dir",
            "file:///x?shared=yes",
            "file:///x?mode=1",
            "redis://x",
        ] {
            let e = FileConfig::from_url(bad).unwrap_err();
            assert!(matches!(e, LockError::InvalidConfig { .. }), "{bad}: {e}");
        }
    }

    /// The directory is normalised on its text: `.`, repeated and trailing slashes and `..`
    /// do not hide the root directory or a symbolic link from the checks (the CLI refuses
    /// `/`; `prepare_dir` refuses links).
    #[test]
    fn the_directory_is_normalised() {
        let dir = |url: &str| FileConfig::from_url(url).unwrap().dir;
        assert_eq!(dir("file:///."), PathBuf::from("/"));
        assert_eq!(dir("file:///tmp/.."), PathBuf::from("/"));
        assert_eq!(dir("file:///tmp/../.."), PathBuf::from("/"));
        assert_eq!(dir("file:////"), PathBuf::from("/"));
        assert_eq!(dir("file:///var//lock/./app/"), PathBuf::from("/var/lock/app"));
        assert_eq!(
            dir("file:///var/lock/app/.?durable=false"),
            PathBuf::from("/var/lock/app")
        );
        assert_eq!(dir("file:///var/lock/x/../app"), PathBuf::from("/var/lock/app"));
    }

    /// One directory, one spelling: the path is percent-decoded (RFC 8089; Python's
    /// `Path.as_uri()` writes a space as `%20`), so `a b` and `a%20b` are one directory —
    /// a new-user trial ran two holders of one key at once, the second in a directory
    /// literally named `a%20b` — and `localhost` names this machine.
    #[test]
    fn the_path_is_percent_decoded_and_localhost_is_this_machine() {
        let dir = |url: &str| FileConfig::from_url(url).unwrap().dir;
        assert_eq!(dir("file:///tmp/a%20b"), PathBuf::from("/tmp/a b"));
        assert_eq!(dir("file:///tmp/a b"), PathBuf::from("/tmp/a b"));
        assert_eq!(dir("file:///tmp/%C3%A9t%C3%A9"), PathBuf::from("/tmp/été"));
        assert_eq!(dir("file://localhost/tmp/x?durable=false"), PathBuf::from("/tmp/x"));
        for (bad, says) in [("file://otherhost/tmp/x", "three slashes"), ("file:///tmp/a#b", "%23")] {
            let e = FileConfig::from_url(bad).unwrap_err();
            assert!(matches!(e, LockError::InvalidConfig { .. }), "{bad}: {e}");
            assert!(e.to_string().contains(says), "{bad}: {e}");
        }
    }

    /// A lock directory created with its parents: each new entry is fsynced into its
    /// parent, or power loss could lose the directory, and with it the state files and
    /// their token counters.
    #[test]
    fn each_created_directory_is_synced_into_its_parent() {
        let top = tempfile::tempdir().unwrap();
        let dir = top.path().join("a/b/locks");
        let synced = create_dirs(&dir, 0o700).unwrap();
        assert!(dir.is_dir());
        assert_eq!(
            synced,
            vec![top.path().to_path_buf(), top.path().join("a"), top.path().join("a/b")],
            "the parents of the directories created were not all fsynced"
        );
        assert!(
            create_dirs(&dir, 0o700).unwrap().is_empty(),
            "nothing created, nothing to sync"
        );
    }

    /// Network filesystems are told by their `statfs` magic number: liveness there would be
    /// judged on each host's own monotonic clock.
    #[test]
    fn network_filesystems_are_named() {
        for (magic, name) in [
            (0x6969, "NFS"),
            (0x517B, "SMB"),
            (0xFF53_4D42, "CIFS"),
            (0xFE53_4D42, "SMB2"),
            (0x0102_1997, "9p"),
            (0x00C3_6400, "Ceph"),
            (0x5346_414F, "AFS"),
            (0x0BD0_0BD0, "Lustre"),
            (0x4750_4653, "GPFS"),
            (0x0116_1970, "GFS2"),
            (0x7461_636F, "OCFS2"),
        ] {
            assert_eq!(network_fs_name(magic), Some(name), "{magic:#x}");
        }
        // ext4, tmpfs, btrfs, xfs, overlayfs: local.
        for magic in [0xEF53, 0x0102_1994, 0x9123_683E, 0x5846_5342, 0x794C_7630] {
            assert_eq!(network_fs_name(magic), None, "{magic:#x}");
        }
    }

    /// `file:///` put the lock files in `/` itself: as root, `/` passed every check (a
    /// new-user trial). Refused however spelled, from a URL or from code, naming a
    /// directory to use instead.
    #[test]
    fn the_root_directory_is_refused() {
        let refused = |e: LockError, what: &str| {
            assert!(matches!(e, LockError::InvalidConfig { .. }), "{what}: {e:?}");
            let text = e.to_string();
            assert!(text.contains("it is the root directory"), "{what}: {text}");
            assert!(
                text.contains("file:///var/lock/myapp"),
                "{what}: no directory named: {text}"
            );
        };
        for url in ["file:///", "file:////", "file:///.", "file:///tmp/..", "FILE:///"] {
            refused(crate::file::FileLock::from_url(url).unwrap_err(), url);
        }
        for dir in ["/", "/.", "/tmp/../"] {
            refused(
                crate::file::FileLock::connect_with(FileConfig::new(dir)).unwrap_err(),
                dir,
            );
        }
    }

    #[test]
    fn relative_dir_built_in_code_is_refused() {
        let e = FileConfig::new("locks").prepare_dir().unwrap_err();
        assert!(matches!(e, LockError::InvalidConfig { .. }), "{e}");
    }
}
