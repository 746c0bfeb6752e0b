//! [`LockConfig`]: a backend and default options from TOML or JSON.

use std::path::Path;
use std::sync::Arc;

use fencelock_core::{DistributedLock, LockError, LockOptions, Requirement, Result};
use serde::{Deserialize, Serialize};

/// Which backend to use and how, as a deployment writes it.
///
/// ```toml
/// backend = "file:///var/lock/myapp"   # any URL `connect` takes
/// require = "strict"                   # optional: any | monotonic_tokens | strict
///
/// [defaults]                           # optional LockOptions
/// ttl = "30s"
/// wait = "10s"
/// auto_renew = true
/// ```
///
/// Unknown fields are errors, so a typo does not silently fall back to a default.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> fencelock::Result<()> {
/// let config = fencelock::LockConfig::from_toml(r#"
///     backend = "memory://cfg-doc"
///     require = "strict"
///     [defaults]
///     ttl = "5s"
/// "#)?;
/// let locks = config.connect().await?;
/// let lease = locks.acquire("k", &config.defaults).await?;
/// assert_eq!(config.defaults.ttl(), std::time::Duration::from_secs(5));
/// lease.release().await?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LockConfig {
    /// The backend URL (see [`connect`](crate::connect)).
    pub backend: String,
    /// What the backend must guarantee; connecting to a weaker one is an error.
    #[serde(default)]
    pub require: Requirement,
    /// Default options for locks taken through this configuration.
    #[serde(default)]
    pub defaults: LockOptions,
}

impl LockConfig {
    /// A configuration for `backend` with no requirement and default options.
    pub fn new(backend: impl Into<String>) -> Self {
        LockConfig {
            backend: backend.into(),
            require: Requirement::Any,
            defaults: LockOptions::default(),
        }
    }

    /// Parses TOML.
    pub fn from_toml(text: &str) -> Result<Self> {
        toml::from_str(text).map_err(|e| LockError::InvalidConfig {
            message: format!("bad TOML configuration: {}", e.message()),
            source: Some(e.into()),
        })
    }

    /// Parses JSON.
    pub fn from_json(text: &str) -> Result<Self> {
        serde_json::from_str(text).map_err(|e| LockError::InvalidConfig {
            message: format!("bad JSON configuration: {e}"),
            source: Some(e.into()),
        })
    }

    /// Reads a file: JSON when it ends in `.json`, TOML otherwise.
    pub fn from_path(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| LockError::InvalidConfig {
            message: format!("cannot read configuration {}", path.display()),
            source: Some(e.into()),
        })?;
        let parsed = if path.extension().is_some_and(|e| e == "json") {
            Self::from_json(&text)
        } else {
            Self::from_toml(&text)
        };
        parsed.map_err(|e| match e {
            LockError::InvalidConfig { message, source } => LockError::InvalidConfig {
                message: format!("{}: {message}", path.display()),
                source,
            },
            other => other,
        })
    }

    /// Validates the default options, builds the backend and checks the requirement.
    pub async fn connect(&self) -> Result<Arc<dyn DistributedLock>> {
        self.defaults.validate_for_try()?;
        let lock = crate::connect(&self.backend).await?;
        self.require.check(&lock.guarantees())?;
        Ok(lock)
    }
}
