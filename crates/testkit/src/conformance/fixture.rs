//! [`Fixture`]: what the hardening cases need beyond new clients — acting on the lock
//! service as an operator or the network would, and counting what a client leaves behind.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use fencelock_core::DistributedLock;

use super::ClientFactory;
use crate::proxy::FaultProxy;

/// A boxed, sendable future, as the hooks return.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A client whose every connection passes through fault proxies the test controls (one per
/// server: Redlock's five, a cluster's three).
pub struct Proxied {
    /// The client.
    pub client: Arc<dyn DistributedLock>,
    /// The proxies in front of the servers; dropping them cuts the client off.
    pub proxies: Vec<FaultProxy>,
}

impl Proxied {
    /// Sets the client → server direction of every proxy.
    pub fn set_to_server(&self, mode: crate::proxy::Mode) {
        self.proxies.iter().for_each(|p| p.set_to_server(mode));
    }

    /// Sets the server → client direction of every proxy.
    pub fn set_to_client(&self, mode: crate::proxy::Mode) {
        self.proxies.iter().for_each(|p| p.set_to_client(mode));
    }

    /// Sets both directions of every proxy.
    pub fn set(&self, mode: crate::proxy::Mode) {
        self.proxies.iter().for_each(|p| p.set(mode));
    }
}

impl std::fmt::Debug for Proxied {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Proxied")
            .field("client", &self.client.describe())
            .field("proxies", &self.proxies.len())
            .finish()
    }
}

/// One backend's hooks into its real server(s), written beside its conformance test. Every
/// method acts on or reads the server itself (an operator's command, a server-side count),
/// never the client under test.
pub trait Fixture: ClientFactory {
    /// Removes the record(s) of `key`'s current grant on the server, as an operator would
    /// (`DEL`, `etcdctl del --prefix`, `deleteall`, `rm`), leaving a separate token counter
    /// in place. Returns when the server confirmed.
    fn remove_grant<'a>(&'a self, key: &'a str) -> BoxFuture<'a, ()>;

    /// How many records the server holds for `key` now — lock keys, queue keys, lock nodes,
    /// holder state — not counting a token counter meant to outlive grants. `0` means
    /// nobody holds or waits for `key`.
    fn records<'a>(&'a self, key: &'a str) -> BoxFuture<'a, usize>;

    /// Client connections the server(s) see now, summed over servers; `None` for backends
    /// without a server (memory, file).
    fn connections(&self) -> BoxFuture<'_, Option<usize>>;

    /// The most connections one client opens to each server — a pool's bound (PostgreSQL's
    /// `connections`, default 4); 1 where a client keeps a fixed set. A long-lived client
    /// may grow its pool up to it as its statements overlap: bounded growth, not a leak,
    /// which the resource case allows beside its fixed allowance.
    fn connections_per_client(&self) -> usize {
        1
    }

    /// A new client whose connections pass through fault proxies, bounding each request
    /// by `request_timeout`; `None` for backends without a network (memory, file), where no
    /// request can go unanswered.
    fn proxied_client(&self, request_timeout: Duration) -> BoxFuture<'_, Option<Proxied>>;
}
