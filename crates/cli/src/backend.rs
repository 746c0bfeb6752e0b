//! Choosing the backend: --backend or --config, then FENCELOCK_BACKEND, then the file default.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use fencelock::{DistributedLock, LockConfig, LockError, LockOptions};
use fencelock_core::backend_url::{with_query_option, IfSet};

use crate::args::Cli;

/// The environment variable that names a backend URL when no flag or file does.
pub const ENV: &str = "FENCELOCK_BACKEND";

/// The directory of the default file backend (`fencelock::file::default_dir`):
/// `$TMPDIR/fencelock-UID` (`/tmp/fencelock-UID` without `TMPDIR`); private to the user
/// (created 0700, refused when others may write to it) and shared by all of that user's
/// processes — cron jobs and systemd units as well as shells, which is why
/// `XDG_RUNTIME_DIR` (only login sessions have it) is not used. Give an explicit
/// `file:///var/lib/...` for tokens that must outlive a reboot.
pub fn default_dir() -> PathBuf {
    fencelock::file::default_dir()
}

/// The configuration the command line selects: `--config FILE` or `--backend URL` (both
/// given is an error), else `FENCELOCK_BACKEND`, else the file backend in [`default_dir`].
/// A flag or file on the command line wins over the environment, as usual.
pub fn config(cli: &Cli) -> Result<LockConfig, LockError> {
    if let Some(path) = &cli.config {
        if !cli.backend.is_empty() {
            return Err(LockError::invalid_config(
                "--backend and --config both name a backend; give one",
            ));
        }
        let config = LockConfig::from_path(path)?;
        refuse_not_a_url(&config.backend)?;
        refuse_root_dir(&config.backend)?;
        crate::lock_opts::check_file_defaults(&config.defaults)
            .map_err(|message| LockError::invalid_config(format!("{}: {message}", path.display())))?;
        return Ok(config);
    }
    let url = match backend_urls(cli)?.as_slice() {
        [] => format!("file://{}", default_dir().display()),
        [one] => one.clone(),
        many => return Err(too_many(many.len())),
    };
    refuse_not_a_url(&url)?;
    refuse_root_dir(&url)?;
    Ok(LockConfig::new(url))
}

/// Refuses what has no `SCHEME://` (a blank `--backend ' '`, a bare word), quoting it as
/// given: the library trims the URL before it names it, so a blank one read "`` is not a
/// backend URL", as if none had been given. Control characters are escaped (see
/// [`crate::exit::escaped`]), passwords hidden.
fn refuse_not_a_url(url: &str) -> Result<(), LockError> {
    let has_scheme = url.trim().split_once("://").is_some_and(|(scheme, _)| {
        scheme.starts_with(|c: char| c.is_ascii_alphabetic())
            && scheme
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
    });
    if has_scheme {
        return Ok(());
    }
    Err(LockError::invalid_config(format!(
        "`{}` is not a backend URL: expected SCHEME://..., e.g. file:///var/lock/app or redis://127.0.0.1:6379",
        crate::exit::escaped(&fencelock_core::backend_url::redact(url))
    )))
}

/// Refuses `file:///` (the root directory): the lock files would be scattered in `/`.
/// Judged on the directory the file backend will use, which it normalises lexically, so
/// `file:///.`, `file:////` and `file:///tmp/..` are refused as well.
fn refuse_root_dir(url: &str) -> Result<(), LockError> {
    let url = url.trim();
    if !is_file_url(url) {
        return Ok(());
    }
    // A malformed URL is left for the backend to name when it connects.
    let Ok(file) = fencelock::file::FileConfig::from_url(url) else {
        return Ok(());
    };
    if file.dir.parent().is_none() {
        return Err(LockError::invalid_config(format!(
            "`{url}` names the root directory; give the locks a directory of their own, e.g. file:///var/lock/myapp"
        )));
    }
    Ok(())
}

/// The backend URLs: the --backend flags, or else FENCELOCK_BACKEND (empty: none).
pub fn backend_urls(cli: &Cli) -> Result<Vec<String>, LockError> {
    if !cli.backend.is_empty() || cli.config.is_some() {
        return Ok(cli.backend.clone());
    }
    match std::env::var(ENV) {
        Ok(url) if !url.trim().is_empty() => Ok(vec![url]),
        Ok(_) | Err(std::env::VarError::NotPresent) => Ok(Vec::new()),
        Err(std::env::VarError::NotUnicode(_)) => Err(LockError::invalid_config(format!("{ENV} is not valid UTF-8"))),
    }
}

/// The one backend URL given by flag or environment, if any; more than one is an error.
pub fn single_backend(cli: &Cli) -> Result<Option<String>, LockError> {
    let urls = backend_urls(cli)?;
    match urls.as_slice() {
        [] => Ok(None),
        [one] => Ok(Some(one.clone())),
        many => Err(too_many(many.len())),
    }
}

/// Several `--backend` flags for a command that takes one: a usage mistake (64).
fn too_many(n: usize) -> LockError {
    LockError::invalid_input(format!(
        "{n} --backend URLs given; this command takes one (only `bench` takes several)"
    ))
}

/// Whether `url` is a `file://` URL (the scheme in any case).
pub(crate) fn is_file_url(url: &str) -> bool {
    url.trim().get(..7).is_some_and(|s| s.eq_ignore_ascii_case("file://"))
}

/// For a command that only reads (`leader`): refuses a `file://` lock directory that does
/// not exist, instead of creating it as `run` and `elect` do (docs/backends/file.md) — a
/// typo in the URL would otherwise answer "no leader" and leave a directory behind.
pub fn refuse_missing_dir(config: &LockConfig) -> Result<(), LockError> {
    if !is_file_url(&config.backend) {
        return Ok(());
    }
    let dir = fencelock::file::FileConfig::from_url(config.backend.trim())?.dir;
    match std::fs::symlink_metadata(&dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(LockError::invalid_config(format!(
            "lock directory {} does not exist: nothing was ever locked there (`run` and `elect` create it); check the URL",
            dir.display()
        ))),
        _ => Ok(()),
    }
}

/// Refuses `memory://` for a command whose point is exclusion between processes: each
/// process would have a table of its own, and nothing would exclude anything.
pub fn refuse_in_process(config: &LockConfig, command: &str) -> Result<(), LockError> {
    let scheme = config
        .backend
        .trim()
        .split_once("://")
        .map(|(s, _)| s.to_ascii_lowercase());
    if scheme.as_deref() == Some("memory") {
        return Err(LockError::invalid_config(format!(
            "`{command}` cannot use memory://: it lives inside one process, so separate processes would not exclude each other; use file:///DIR (one host) or a server backend"
        )));
    }
    Ok(())
}

/// For etcd and ZooKeeper, whose session (not the lock's TTL) decides how soon a crashed
/// `fencelock` frees its locks: when the URL sets no `session_ttl` / `session_timeout`,
/// sets it from `ttl` (the --ttl flag, or a TTL the configuration file sets), so that --ttl
/// means the same on every backend. etcd takes whole seconds (rounded up, at least 1 s);
/// ZooKeeper milliseconds. Below the server's minimum (etcd: 2 s with its default election
/// timeout; ZooKeeper: 2 ticks) the backend refuses the session with `InvalidConfig`
/// naming it, as the server would make it longer without a word.
pub fn session_from_ttl(mut config: LockConfig, ttl: Option<Duration>) -> LockConfig {
    let ttl = ttl.or_else(|| (config.defaults.ttl() != LockOptions::default().ttl()).then(|| config.defaults.ttl()));
    let Some(ttl) = ttl else {
        return config;
    };
    let scheme = config
        .backend
        .trim()
        .split_once("://")
        .map(|(s, _)| s.to_ascii_lowercase());
    let (option, value) = match scheme.as_deref() {
        Some("etcd") => {
            let whole = (ttl.as_secs() + u64::from(ttl.subsec_nanos() > 0)).max(1);
            ("session_ttl", format!("{whole}s"))
        }
        Some("zk") => ("session_timeout", format!("{}ms", ttl.as_millis().max(1))),
        _ => return config,
    };
    config.backend = with_query_option(&config.backend, option, &value, IfSet::Keep);
    config
}

/// The backend URL as fencelock connects with it and as the user gave it, both redacted,
/// once fencelock added options of its own to it (a session from the TTL, `inherit=true`).
static AS_GIVEN: std::sync::OnceLock<(String, String)> = std::sync::OnceLock::new();

/// `config` with the options `run` and `elect` add to the URL as given (the session from
/// the TTL, see [`session_from_ttl`], and `extra`); messages then show the URL as given
/// (see [`as_given`]).
pub fn with_added_options(config: LockConfig, ttl: Option<Duration>, extra: fn(&str) -> String) -> LockConfig {
    let given = config.backend.clone();
    let mut config = session_from_ttl(config, ttl);
    config.backend = extra(&config.backend);
    if config.backend.trim() != given.trim() {
        let redact = fencelock_core::backend_url::redact;
        let _ = AS_GIVEN.set((redact(config.backend.trim()), redact(given.trim())));
    }
    config
}

/// `text` (a message, a log field) with the backend URL as the user gave it where it
/// quotes the URL fencelock connected with: an option the user never typed
/// (`?session_timeout=2000ms` from `--ttl 2s`) would otherwise appear in the URL they are
/// told to fix. Passwords stay hidden: both forms are redacted.
pub fn as_given(text: &str) -> String {
    match AS_GIVEN.get() {
        Some((used, given)) if !used.is_empty() => text.replace(used.as_str(), given),
        _ => text.to_owned(),
    }
}

/// Connects to the selected backend for a command that excludes other processes (refusing
/// `memory://`); returns it with the default options. `ttl`: see [`session_from_ttl`]. On `file://` it adds `inherit=true`:
/// the guard (and the command's group through it) shares the flocked liveness file of the
/// lease, so a SIGKILLed `run` leaves the lock held until the guard has killed the group
/// and died with it — never free while the command may still run (docs/cli.md).
pub async fn connect_for_processes(
    cli: &Cli,
    command: &str,
    ttl: Option<Duration>,
) -> Result<(Arc<dyn DistributedLock>, LockOptions), LockError> {
    let config = config(cli)?;
    refuse_in_process(&config, command)?;
    if is_file_url(&config.backend) {
        // Checked as written, so that a message quotes the user's URL, not the
        // `inherit=true` added below.
        fencelock::file::FileConfig::from_url(config.backend.trim())?;
    }
    let config = with_added_options(config, ttl, inherit_liveness);
    let lock = connectable(&config).connect().await?;
    Ok((lock, config.defaults))
}

/// The configuration to connect with: the file's own, but a zero wait (`wait = "0s"`,
/// which this command reads as "try once" and never passes to `acquire` or `campaign`)
/// replaced by the default, since the library's `connect` refuses defaults that its
/// `acquire` would refuse. The caller keeps the file's defaults for its options.
pub fn connectable(config: &LockConfig) -> LockConfig {
    let mut config = config.clone();
    if config.defaults.wait().is_zero() {
        config.defaults = config.defaults.with_wait(LockOptions::default().wait());
    }
    config
}

/// A `file://` URL with `inherit=true` added (unless it sets `inherit` itself); any other
/// URL as it is.
pub(crate) fn inherit_liveness(url: &str) -> String {
    let url = url.trim();
    if !is_file_url(url) {
        return url.to_owned();
    }
    with_query_option(url, "inherit", "true", IfSet::Keep)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_root_directory_is_refused_however_spelled() {
        for url in [
            "file:///",
            "file:////",
            "file:///.",
            "file:///./",
            "file:///tmp/..",
            "file:///tmp/../",
            "FILE:///tmp/a/../../.?durable=false",
            " file:///. ",
        ] {
            let e = refuse_root_dir(url).expect_err(url);
            assert!(e.to_string().contains("root directory"), "{url}: {e}");
        }
        for url in [
            "file:///tmp",
            "file:///tmp/.",
            "file:///tmp/a/..",
            "memory://",
            "redis://h:1/",
        ] {
            assert!(refuse_root_dir(url).is_ok(), "{url}");
        }
    }

    #[test]
    fn the_session_follows_the_ttl_unless_the_url_sets_it() {
        let url = |u: &str, ttl: Option<Duration>| session_from_ttl(LockConfig::new(u), ttl).backend;
        let s = Some(Duration::from_millis(2500));
        assert_eq!(url("etcd://h:1", s), "etcd://h:1?session_ttl=3s");
        assert_eq!(
            url("etcd://h:1/p?timeout=2s", s),
            "etcd://h:1/p?timeout=2s&session_ttl=3s"
        );
        assert_eq!(
            url("etcd://h:1", Some(Duration::from_millis(10))),
            "etcd://h:1?session_ttl=1s"
        );
        assert_eq!(
            url("etcd://h:1", Some(Duration::from_secs(10))),
            "etcd://h:1?session_ttl=10s"
        );
        assert_eq!(url("etcd://h:1?session_ttl=5s", s), "etcd://h:1?session_ttl=5s");
        assert_eq!(url("zk://h:1/c", s), "zk://h:1/c?session_timeout=2500ms");
        assert_eq!(url("zk://h:1", None), "zk://h:1");
        assert_eq!(url("redis://h:1", s), "redis://h:1");
    }

    #[test]
    fn options_are_added_to_the_query_not_matched_anywhere_in_the_url() {
        let url = |u: &str, ttl: Option<Duration>| session_from_ttl(LockConfig::new(u), ttl).backend;
        let s = Some(Duration::from_secs(2));
        // A password that happens to read like the option is not the option.
        assert_eq!(
            url("etcd://u:session_ttl=9@h:1,h:2/p", s),
            "etcd://u:session_ttl=9@h:1,h:2/p?session_ttl=2s"
        );
        assert_eq!(
            url("zk://h:1,[::1]:2/c?x=1", s),
            "zk://h:1,[::1]:2/c?x=1&session_timeout=2000ms"
        );
        // A directory whose name reads like the option still gets it.
        assert_eq!(
            inherit_liveness("file:///tmp/inherit=x"),
            "file:///tmp/inherit=x?inherit=true"
        );
        assert_eq!(
            inherit_liveness("file:///tmp/a@b?durable=false"),
            "file:///tmp/a@b?durable=false&inherit=true"
        );
        // The user's own choice stays.
        assert_eq!(
            inherit_liveness("file:///tmp/d?inherit=false"),
            "file:///tmp/d?inherit=false"
        );
        assert_eq!(inherit_liveness("redis://h:1"), "redis://h:1");
    }
}
