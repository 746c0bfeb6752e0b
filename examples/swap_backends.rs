//! Swap backends by configuration, not code.
//!
//! ```sh
//! cargo run --example swap_backends                        # file backend in the temp dir
//! cargo run --example swap_backends -- locks.toml          # whatever locks.toml names
//! FENCELOCK_CONFIG=locks.json cargo run --example swap_backends
//! ```
//!
//! `locks.toml`:
//!
//! ```toml
//! backend = "redis://127.0.0.1:6379"   # or file:///var/lock/app, zk://…, etcd://…
//! require = "monotonic_tokens"         # refuse a backend that promises less
//! [defaults]
//! ttl = "30s"
//! wait = "10s"
//! ```
//!
//! The code below never names a backend: the deployment picks one, and `require` turns
//! "this job needs strictly growing tokens" into an error at start-up instead of a silent
//! downgrade. A backend whose Cargo feature is off is an error that names the feature.

use fencelock::{LockConfig, LockError};

fn config() -> fencelock::Result<LockConfig> {
    let path = std::env::args_os()
        .nth(1)
        .or_else(|| std::env::var_os("FENCELOCK_CONFIG"));
    match path {
        Some(path) => LockConfig::from_path(std::path::Path::new(&path)),
        None => {
            let dir = std::env::temp_dir().join("fencelock-example-swap");
            std::fs::create_dir_all(&dir)
                .map_err(|e| LockError::invalid_config(format!("cannot create {}: {e}", dir.display())))?;
            LockConfig::from_toml(&format!(
                "backend = \"file://{}\"\n[defaults]\nttl = \"10s\"\n",
                dir.display()
            ))
        }
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> fencelock::Result<()> {
    let config = config()?;
    let locks = config.connect().await?;
    println!("backend: {} ({:?})", locks.describe(), locks.guarantees().exclusion);
    let lease = locks.acquire("nightly-job", &config.defaults).await?;
    println!("running the job with fencing token {}", lease.token());
    lease.release().await?;
    locks.close().await
}
