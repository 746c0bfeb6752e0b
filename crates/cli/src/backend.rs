//! Choosing the backend: --backend, FENCELOCK_BACKEND, --config, or the file default.

use std::path::PathBuf;
use std::sync::Arc;

use fencelock::{DistributedLock, LockConfig, LockError, LockOptions};

use crate::args::Cli;

/// The directory of the default file backend: `$TMPDIR/fencelock-UID`, private to the user
/// and shared by all of that user's processes. Tokens there survive restarts of the
/// processes, and of the host unless the temp directory is wiped at boot; give an explicit
/// `file:///var/lib/...` for tokens that must outlive everything.
pub fn default_dir() -> PathBuf {
    let uid = rustix::process::getuid().as_raw();
    std::env::temp_dir().join(format!("fencelock-{uid}"))
}

/// The configuration the command line selects.
pub fn config(cli: &Cli) -> Result<LockConfig, LockError> {
    if let Some(path) = &cli.config {
        return LockConfig::from_path(path);
    }
    let url = match single_backend(cli)? {
        Some(url) if !url.trim().is_empty() => url.to_owned(),
        _ => format!("file://{}", default_dir().display()),
    };
    Ok(LockConfig::new(url))
}

/// The one `--backend` URL, if given; more than one is an error (only `bench` takes several).
pub fn single_backend(cli: &Cli) -> Result<Option<&str>, LockError> {
    match cli.backend.as_slice() {
        [] => Ok(None),
        [one] => Ok(Some(one)),
        many => Err(LockError::invalid_config(format!(
            "{} --backend URLs given; this command takes one (only `bench` takes several)",
            many.len()
        ))),
    }
}

/// Connects to the selected backend; returns it with the default options.
pub async fn connect(cli: &Cli) -> Result<(Arc<dyn DistributedLock>, LockOptions), LockError> {
    let config = config(cli)?;
    let lock = config.connect().await?;
    Ok((lock, config.defaults))
}
