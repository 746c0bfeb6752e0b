//! A fault-injecting TCP proxy on loopback: sits between clients and one server and, per
//! direction, passes bytes, delays them, blackholes them (holds everything, sends nothing)
//! or resets the connections — switchable at run time, for every connection or one
//! ([`FaultProxy::pin`]). Used to make partitions and slow links without root.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// What the proxy does with bytes flowing one way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Forward them.
    Pass,
    /// Forward them after holding each chunk this long (a slow link).
    Delay(std::time::Duration),
    /// Keep the connections open but forward nothing (a partition: the peer sees silence).
    Blackhole,
    /// Close every connection now and refuse new ones until switched back.
    Reset,
}

/// A running proxy; dropping it stops it and closes its connections.
#[derive(Debug)]
pub struct FaultProxy {
    port: u16,
    /// The modes of the connections not pinned, and of those accepted from now on.
    modes: Arc<Mutex<Modes>>,
    task: tokio::task::JoinHandle<()>,
    /// Bytes forwarded from the server to clients, over every connection.
    to_client_bytes: Arc<AtomicU64>,
    /// Client connections accepted, whatever the mode.
    accepted: Arc<AtomicU64>,
}

/// The proxy-wide modes and every connection's own switches, under one lock: a connection
/// accepted while the modes change gets the new ones, never a stale copy.
#[derive(Debug)]
struct Modes {
    to_server: Mode,
    to_client: Mode,
    connections: Vec<Connection>,
}

/// One accepted connection: its two pumps and their switches.
#[derive(Debug)]
struct Connection {
    to_server: watch::Sender<Mode>,
    to_client: watch::Sender<Mode>,
    /// Set by [`FaultProxy::pin`]: the proxy-wide switches leave it alone.
    pinned: bool,
    pumps: Vec<tokio::task::JoinHandle<()>>,
}

impl Connection {
    fn set(&mut self, to_server: Option<Mode>, to_client: Option<Mode>) {
        if let Some(m) = to_server {
            self.to_server.send_replace(m);
        }
        if let Some(m) = to_client {
            self.to_client.send_replace(m);
        }
        // As before pinning existed: only a reset of both directions closes the
        // connection at once; a reset of one ends that direction's pump.
        if to_server == Some(Mode::Reset) && to_client == Some(Mode::Reset) {
            for p in self.pumps.drain(..) {
                p.abort();
            }
        }
    }
}

impl FaultProxy {
    /// Starts a proxy on a free loopback port in front of 127.0.0.1:`upstream`.
    pub async fn start(upstream: u16) -> Self {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.expect("bind proxy");
        let port = listener.local_addr().expect("proxy addr").port();
        let modes = Arc::new(Mutex::new(Modes {
            to_server: Mode::Pass,
            to_client: Mode::Pass,
            connections: Vec::new(),
        }));
        let conns = Arc::clone(&modes);
        let to_client_bytes = Arc::new(AtomicU64::new(0));
        let down_bytes = Arc::clone(&to_client_bytes);
        let accepted = Arc::new(AtomicU64::new(0));
        let accepted_count = Arc::clone(&accepted);
        let task = tokio::spawn(async move {
            let server = SocketAddr::from((Ipv4Addr::LOCALHOST, upstream));
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    return;
                };
                accepted_count.fetch_add(1, Ordering::Relaxed);
                let refused = {
                    let m = conns.lock().unwrap_or_else(|p| p.into_inner());
                    m.to_server == Mode::Reset || m.to_client == Mode::Reset
                };
                if refused {
                    drop(client);
                    continue;
                }
                let Ok(server) = TcpStream::connect(server).await else {
                    continue;
                };
                // No Nagle on either leg, as the clients and servers themselves set it:
                // otherwise a small write behind unacknowledged data waits for the peer's
                // delayed ACK (about 40 ms), which the proxied connection alone would pay.
                let _ = client.set_nodelay(true);
                let _ = server.set_nodelay(true);
                let (cr, cw) = client.into_split();
                let (sr, sw) = server.into_split();
                let mut m = conns.lock().unwrap_or_else(|p| p.into_inner());
                let (to_server, up_rx) = watch::channel(m.to_server);
                let (to_client, down_rx) = watch::channel(m.to_client);
                let pumps = vec![
                    tokio::spawn(pump(cr, sw, up_rx, None)),
                    tokio::spawn(pump(sr, cw, down_rx, Some(Arc::clone(&down_bytes)))),
                ];
                m.connections.push(Connection {
                    to_server,
                    to_client,
                    pinned: false,
                    pumps,
                });
            }
        });
        FaultProxy {
            port,
            modes,
            task,
            to_client_bytes,
            accepted,
        }
    }

    /// Client connections the proxy has accepted so far, in any mode (one that is reset
    /// at once counts too): how many times clients tried this address.
    pub fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::Relaxed)
    }

    /// Bytes forwarded from the server to its clients so far, over every connection: a
    /// count that grows when the server has answered (e.g. "the server answered the
    /// client's request", when nothing else is in flight on its connections).
    pub fn bytes_to_client(&self) -> u64 {
        self.to_client_bytes.load(Ordering::Relaxed)
    }

    /// The port clients connect to.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Sets both directions (of every connection but the pinned ones, and of those
    /// accepted from now on).
    pub fn set(&self, mode: Mode) {
        self.switch(Some(mode), Some(mode));
    }

    /// Sets the client → server direction only.
    pub fn set_to_server(&self, mode: Mode) {
        self.switch(Some(mode), None);
    }

    /// Sets the server → client direction only.
    pub fn set_to_client(&self, mode: Mode) {
        self.switch(None, Some(mode));
    }

    /// Connections the proxy opened to the server so far (refused ones not counted): the
    /// next one opened is number `connections()` for [`pin`](Self::pin).
    pub fn connections(&self) -> usize {
        self.modes.lock().unwrap_or_else(|p| p.into_inner()).connections.len()
    }

    /// Sets both directions of the `n`-th connection the proxy opened to the server (0
    /// the first, in accept order, as [`connections`](Self::connections) counts) and pins
    /// it there: [`set`](Self::set) and its kin leave it alone from now on. For one client
    /// with two connections of which only one is to be cut. `false`: no such connection.
    pub fn pin(&self, n: usize, mode: Mode) -> bool {
        let mut m = self.modes.lock().unwrap_or_else(|p| p.into_inner());
        let Some(c) = m.connections.get_mut(n) else {
            return false;
        };
        c.pinned = true;
        c.set(Some(mode), Some(mode));
        true
    }

    fn switch(&self, to_server: Option<Mode>, to_client: Option<Mode>) {
        let mut m = self.modes.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(mode) = to_server {
            m.to_server = mode;
        }
        if let Some(mode) = to_client {
            m.to_client = mode;
        }
        for c in m.connections.iter_mut().filter(|c| !c.pinned) {
            c.set(to_server, to_client);
        }
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
        let mut m = self.modes.lock().unwrap_or_else(|p| p.into_inner());
        for c in m.connections.iter_mut() {
            for p in c.pumps.drain(..) {
                p.abort();
            }
        }
    }
}

/// Copies one direction, obeying the mode: in `Blackhole` it stops reading (bytes stay in
/// the kernel buffers, nothing is delivered) until the mode changes; `Reset` ends it.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut mode: watch::Receiver<Mode>,
    forwarded: Option<Arc<AtomicU64>>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let current = *mode.borrow_and_update();
        match current {
            Mode::Reset => return,
            Mode::Blackhole => {
                if mode.changed().await.is_err() {
                    return;
                }
                continue;
            }
            Mode::Pass | Mode::Delay(_) => {}
        }
        tokio::select! {
            // A mode change first: bytes that arrive together with a switch to Blackhole
            // must be held, not forwarded by a random pick.
            biased;
            changed = mode.changed() => if changed.is_err() { return },
            n = from.read(&mut buf) => match n {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    if let Mode::Delay(d) = current {
                        tokio::time::sleep(d).await;
                    }
                    if to.write_all(&buf[..n]).await.is_err() { return }
                    if let Some(f) = &forwarded {
                        f.fetch_add(n as u64, Ordering::Relaxed);
                    }
                }
            },
        }
    }
}
