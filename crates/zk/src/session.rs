//! The ZooKeeper session of one backend instance: the client, and the monitor that turns
//! session states into lease states for every lock held in it.

use std::sync::Arc;
use std::time::Duration;

use fencelock_core::batch::Batcher;
use fencelock_core::{LeaseRegistry, LockError, LostReason, Result};
use tokio::task::AbortHandle;
use zookeeper_client::{Client, SessionState};

use crate::config::ZkConfig;
use crate::error::{failed, timed_out};

/// The most lock nodes one renewal multi-read checks (each answer is a ~100-byte stat,
/// far under ZooKeeper's 1 MB packet limit).
pub(crate) const MAX_RENEWAL_BATCH: usize = 500;

/// The longest a background renewal waits to share its multi-read (capped at a tenth of
/// the lease's TTL).
pub(crate) const RENEW_WINDOW: Duration = Duration::from_millis(50);

/// One session.
pub(crate) struct Session {
    pub client: Client,
    pub locks: LeaseRegistry,
    /// Background renewals of this session's locks, checked together in one multi-read.
    pub renewals: Batcher<(String, i64), bool>,
    monitor: std::sync::Mutex<Option<AbortHandle>>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("id", &self.client.session_id())
            .finish_non_exhaustive()
    }
}

impl Session {
    /// Connects a new session, bounded by the connect and request timeouts.
    pub async fn connect(cfg: &ZkConfig) -> Result<Arc<Session>> {
        let connect_string = cfg.connect_string();
        let connecting = Client::connector()
            .with_session_timeout(cfg.session_timeout)
            .with_connection_timeout(cfg.connect_timeout)
            .connect(&connect_string);
        let limit = cfg.connect_timeout * (cfg.servers.len() as u32 + 1) + cfg.timeout;
        let client = match tokio::time::timeout(limit, connecting).await {
            Ok(Ok(c)) => c,
            Ok(Err(zookeeper_client::Error::NoNode)) => {
                return Err(LockError::invalid_config(format!(
                    "the chroot {} does not exist on {}: create it first (e.g. zkCli.sh create {} \"\")",
                    cfg.chroot, cfg.display, cfg.chroot
                )))
            }
            Ok(Err(e)) => return Err(failed("connecting", &cfg.display, e)),
            Err(_) => return Err(timed_out("connecting", &cfg.display, limit)),
        };
        let session = Arc::new(Session {
            client,
            locks: LeaseRegistry::new(),
            renewals: Batcher::new(MAX_RENEWAL_BATCH),
            monitor: std::sync::Mutex::new(None),
        });
        let weak = Arc::downgrade(&session);
        let mut states = session.client.state_watcher();
        let task = tokio::spawn(async move {
            loop {
                let state = states.changed().await;
                let Some(s) = weak.upgrade() else { return };
                match state {
                    SessionState::Disconnected => s.locks.suspended_all(),
                    SessionState::SyncConnected | SessionState::ConnectedReadOnly => s.locks.resumed_all(),
                    SessionState::Expired => {
                        s.locks
                            .lost_all(&LostReason::Backend("zookeeper session expired".into()));
                        return;
                    }
                    SessionState::Closed | SessionState::AuthFailed => {
                        s.locks
                            .lost_all(&LostReason::Backend(format!("zookeeper session ended: {state:?}")));
                        return;
                    }
                }
            }
        });
        *session.monitor.lock().unwrap_or_else(|p| p.into_inner()) = Some(task.abort_handle());
        Ok(session)
    }

    /// `true` while the session can still be used.
    pub fn is_usable(&self) -> bool {
        !matches!(
            self.client.state(),
            SessionState::Expired | SessionState::Closed | SessionState::AuthFailed
        )
    }

    /// The negotiated session timeout.
    pub fn timeout(&self) -> Duration {
        self.client.session_timeout()
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        if let Some(t) = self.monitor.lock().unwrap_or_else(|p| p.into_inner()).take() {
            t.abort();
        }
    }
}
