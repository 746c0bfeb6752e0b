//! Free loopback ports, and the one place where launchers start a server on them.
//!
//! A free port is only free until someone binds it: [`free_port`] binds port 0, reads the
//! port back and closes, and the server binds it a moment later. Under load another process
//! can take it in between (a ZooKeeper of a parallel test once exited 14 so). Every
//! launcher therefore starts its server through [`start_on_free_ports`], which starts it
//! again on fresh ports when it failed because an address was in use.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::net::{Ipv4Addr, TcpListener};

/// How many times [`start_on_free_ports`] starts a server (the first start included) when
/// each attempt finds an address in use.
pub const START_ATTEMPTS: usize = 3;

thread_local! {
    /// Ports [`free_port`] hands out before picking free ones: the test hook of
    /// [`with_next_ports`].
    static NEXT_PORTS: RefCell<VecDeque<u16>> = const { RefCell::new(VecDeque::new()) };
}

/// A port on 127.0.0.1 that was free a moment ago, outside the kernel's ephemeral range
/// (see [`free_ports`]). Another process could take it before the server binds it;
/// [`start_on_free_ports`] retries with new ports when the server fails so.
///
/// Inside [`with_next_ports`], the ports given there come first.
pub fn free_port() -> u16 {
    free_ports(1).pop().expect("one port")
}

/// The lowest port servers are started on: below it lie the fixed ports of common
/// services (PostgreSQL's 5432, Redis's 6379, etcd's 2379, ZooKeeper's 2181, 8080, …).
const SERVER_PORTS_FROM: u16 = 10_000;

/// The kernel's ephemeral port range (`/proc/sys/net/ipv4/ip_local_port_range`), from
/// which it picks both the port of a bind to port 0 and the local port of every outgoing
/// connection; `None` when it cannot be read.
fn ephemeral_range() -> Option<(u16, u16)> {
    let text = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").ok()?;
    let mut it = text.split_whitespace().map(|p| p.parse::<u16>().ok());
    Some((it.next()??, it.next()??))
}

/// One port of `range` that binds now, tried at random (at most 200 tries); the listener
/// holds it.
fn bind_in(range: std::ops::Range<u16>) -> Option<TcpListener> {
    (0..200).find_map(|_| TcpListener::bind((Ipv4Addr::LOCALHOST, rand::random_range(range.clone()))).ok())
}

/// `n` distinct ports on 127.0.0.1 for one server, each free a moment ago (the hook's
/// first, see [`with_next_ports`]).
///
/// * **Outside the ephemeral range**: picked at random between `SERVER_PORTS_FROM` (10,000)
///   and the kernel's ephemeral range, not by binding port 0. A port from that range can be
///   taken, the moment its server is down, as the local end of any outgoing connection on
///   the machine — a Redis restarted on its port by a test then met "Address already in
///   use". Only a process that binds it on purpose takes a port outside it. Where the range
///   cannot be read, or leaves less than 1,000 ports below it, port 0 is bound.
/// * **Distinct**: all `n` are held bound until the last is picked, so none is handed out
///   twice (picked one at a time, a port just closed could come back as the next, and a
///   ZooKeeper ensemble given one port twice among its 9 exited 14).
pub fn free_ports(n: usize) -> Vec<u16> {
    let servers = ephemeral_range()
        .map(|(lo, _)| SERVER_PORTS_FROM..lo)
        .filter(|r| r.len() >= 1_000);
    let mut held = Vec::with_capacity(n);
    let mut ports = Vec::with_capacity(n);
    for _ in 0..n {
        if let Some(port) = NEXT_PORTS.with(|q| q.borrow_mut().pop_front()) {
            ports.push(port);
            continue;
        }
        let listener = servers
            .clone()
            .and_then(bind_in)
            .unwrap_or_else(|| TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind 127.0.0.1:0"));
        ports.push(listener.local_addr().expect("local addr").port());
        held.push(listener);
    }
    drop(held);
    ports
}

/// Runs `f` with [`free_port`] handing out `ports` first (in order, each once, on this
/// thread), then free ones: a test gives a launcher a port it holds itself, to show the
/// launcher starts on another one. Ports `f` did not take are forgotten afterwards.
pub fn with_next_ports<T>(ports: &[u16], f: impl FnOnce() -> T) -> T {
    struct Reset;
    impl Drop for Reset {
        fn drop(&mut self) {
            NEXT_PORTS.with(|q| q.borrow_mut().clear());
        }
    }
    NEXT_PORTS.with(|q| *q.borrow_mut() = ports.iter().copied().collect());
    let _reset = Reset;
    f()
}

/// `true` when another socket holds 127.0.0.1:`port` (binding it fails with "address in
/// use"). Binds with `SO_REUSEADDR` (the standard library's default on Unix), so a port
/// whose connections linger in TIME_WAIT counts as free, as it does for the servers.
fn held_by_another(port: u16) -> bool {
    matches!(
        TcpListener::bind((Ipv4Addr::LOCALHOST, port)),
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse
    )
}

/// `true` when a server's message or log says it could not bind: every server tested
/// writes "address already in use" in some case (Redis, etcd, PostgreSQL, Java's
/// `BindException`).
fn says_address_in_use(message: &str) -> bool {
    message.to_ascii_lowercase().contains("address already in use")
}

/// Starts a server on `n` ports from [`free_port`]: `start(ports)` starts it and waits
/// until it serves, or stops every process it started and returns what went wrong (with
/// the log's tail). When the failure is an address in use — the message says so, or one of
/// the ports is now held by another process although the server's own processes are gone
/// — the server is started again on `n` fresh ports, at most [`START_ATTEMPTS`] times in
/// all. Any other failure fails the test at once, as does the last attempt.
///
/// `what` names the server in the panic message.
pub fn start_on_free_ports<T>(what: &str, n: usize, mut start: impl FnMut(&[u16]) -> Result<T, String>) -> T {
    let mut failures = Vec::new();
    for _ in 0..START_ATTEMPTS {
        let ports = free_ports(n);
        let message = match start(&ports) {
            Ok(server) => return server,
            Err(message) => message,
        };
        let taken: Vec<u16> = ports.iter().copied().filter(|p| held_by_another(*p)).collect();
        if taken.is_empty() && !says_address_in_use(&message) {
            panic!("{what} did not start (ports {ports:?}): {message}");
        }
        tracing::warn!(server = what, ?ports, ?taken, "address in use; starting on fresh ports");
        failures.push(format!(
            "ports {ports:?} (held by another process: {taken:?}): {message}"
        ));
    }
    panic!(
        "{what} did not start in {START_ATTEMPTS} attempts, each finding an address in use:\n{}",
        failures.join("\n---\n")
    );
}

/// A port on 127.0.0.1 where nothing listens, and nothing will while the guard lives:
/// a TCP socket is bound to it but never listens, so a connect there is refused at once
/// (RST, "connection refused") and no server can bind the port meanwhile — where a port
/// from [`free_port`], closed again, could be taken by a server of a test running beside
/// (which would then answer the "nothing listens here" connect).
#[derive(Debug)]
pub struct ClosedPort {
    port: u16,
    _socket: std::os::fd::OwnedFd,
}

impl ClosedPort {
    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }
}

/// A [`ClosedPort`]: outside the kernel's ephemeral range when it can be (as
/// [`free_ports`] picks), else one the kernel picks.
///
/// # Panics
/// When no TCP socket can be made or bound on 127.0.0.1.
pub fn closed_port() -> ClosedPort {
    use rustix::net::{bind, getsockname, socket, AddressFamily, SocketType};
    use std::net::SocketAddrV4;
    let socket = socket(AddressFamily::INET, SocketType::STREAM, None).expect("a TCP socket");
    let at = |port: u16| SocketAddrV4::new(Ipv4Addr::LOCALHOST, port);
    let in_server_range = ephemeral_range()
        .map(|(lo, _)| SERVER_PORTS_FROM..lo)
        .filter(|r| r.len() >= 1_000)
        .is_some_and(|r| (0..200).any(|_| bind(&socket, &at(rand::random_range(r.clone()))).is_ok()));
    if !in_server_range {
        bind(&socket, &at(0)).expect("bind 127.0.0.1:0");
    }
    let bound = getsockname(&socket).expect("the socket's address");
    let port = SocketAddrV4::try_from(bound).expect("an IPv4 address").port();
    ClosedPort { port, _socket: socket }
}

/// A port on 127.0.0.1 where an HTTP server listens — the wrong service on the port a
/// lock URL names. For each of its first 64 connections (a client's connect and its
/// retries; then it stops listening), each on a thread of its own as a real server serves
/// them at once (a client's idle connection must not hold up the next), it reads what the
/// client sends first (at most 1 KiB, waiting at most 5 s), as an HTTP server reads a
/// request, and answers `400 Bad Request`.
pub fn http_port() -> u16 {
    use std::io::{Read, Write};
    serve_each_connection(|mut conn| {
        let _ = conn.set_read_timeout(Some(std::time::Duration::from_secs(5)));
        let _ = conn.read(&mut [0u8; 1024]);
        let _ = conn.write_all(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n");
    })
}

/// A port on 127.0.0.1 where a server greets first in MySQL's protocol — another
/// wrong service on the port a lock URL names. For each of its first 64 connections (each
/// on a thread of its own, as [`http_port`] serves them) it writes a MySQL 8 "initial handshake" packet at once, as a MySQL server does on
/// accept, then reads what the client sends (at most 1 KiB, waiting at most 5 s) and
/// closes. A PostgreSQL client reads the packet's first byte (its length, 74: `J`) as a
/// message tag it does not know.
pub fn mysql_port() -> u16 {
    use std::io::{Read, Write};
    let greeting = mysql_greeting();
    serve_each_connection(move |mut conn| {
        let _ = conn.write_all(&greeting);
        let _ = conn.set_read_timeout(Some(std::time::Duration::from_secs(5)));
        let _ = conn.read(&mut [0u8; 1024]);
    })
}

/// A port on 127.0.0.1 whose first 64 connections are each given to `serve` on a thread
/// of its own (then it stops listening); the wrong services above are what `serve` does.
fn serve_each_connection(serve: impl Fn(std::net::TcpStream) + Send + Sync + 'static) -> u16 {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind 127.0.0.1:0");
    let port = listener.local_addr().expect("local addr").port();
    let serve = std::sync::Arc::new(serve);
    std::thread::spawn(move || {
        for conn in listener.incoming().take(64) {
            let Ok(conn) = conn else { continue };
            let serve = std::sync::Arc::clone(&serve);
            std::thread::spawn(move || serve(conn));
        }
    });
    port
}

/// A MySQL protocol-10 initial handshake packet (3-byte little-endian payload length,
/// sequence 0, payload), as a MySQL 8.0 server sends it.
fn mysql_greeting() -> Vec<u8> {
    let mut payload = vec![10u8]; // protocol version
    payload.extend_from_slice(b"8.0.36\0"); // server version
    payload.extend_from_slice(&8u32.to_le_bytes()); // connection id
    payload.extend_from_slice(b"abcdefgh\0"); // auth data, part 1, and a filler
    payload.extend_from_slice(&0xffffu16.to_le_bytes()); // capabilities, low
    payload.push(255); // character set: utf8mb4_0900_ai_ci
    payload.extend_from_slice(&2u16.to_le_bytes()); // status: autocommit
    payload.extend_from_slice(&0xdfffu16.to_le_bytes()); // capabilities, high
    payload.push(21); // auth data length
    payload.extend_from_slice(&[0u8; 10]); // reserved
    payload.extend_from_slice(b"ijklmnopqrst\0"); // auth data, part 2
    payload.extend_from_slice(b"caching_sha2_password\0");
    let len = u32::try_from(payload.len()).expect("small").to_le_bytes();
    let mut packet = vec![len[0], len[1], len[2], 0];
    packet.extend_from_slice(&payload);
    packet
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Picked one at a time (bind port 0, read it, close), a port just closed can come
    /// back as the next one: a ZooKeeper ensemble given one port twice among its 9 exited
    /// 14 in a full run. 10,000 picks of 9: one at a time, about 25 duplicates are
    /// expected (36 pairs each, about 1 in 14,000 ports).
    #[test]
    fn ports_picked_for_one_server_are_distinct() {
        for _ in 0..10_000 {
            let mut ports = free_ports(9);
            assert_eq!(ports.len(), 9);
            ports.sort_unstable();
            ports.dedup();
            assert_eq!(ports.len(), 9, "a port handed out twice in one pick");
        }
    }

    /// A server's port must not be one the kernel hands out to outgoing connections: a
    /// server restarted on its port (Redis `restart()`, in the lab's restart-while-held
    /// test) once met "Address already in use" because, in the moment it was down, a
    /// client connection of another test took that port as its local end — bind port 0
    /// and outgoing connects draw from the same ephemeral range. Failed before: every
    /// port was inside it.
    #[test]
    fn server_ports_are_outside_the_ephemeral_range() {
        let (lo, hi) = ephemeral_range().expect("/proc/sys/net/ipv4/ip_local_port_range");
        for port in free_ports(200) {
            assert!(
                !(lo..=hi).contains(&port),
                "port {port} is in the ephemeral range {lo}-{hi}"
            );
        }
    }

    #[test]
    fn the_hook_hands_out_its_ports_first_then_free_ones() {
        let held = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let p = held.local_addr().unwrap().port();
        let (first, second) = with_next_ports(&[p], || (free_port(), free_port()));
        assert_eq!(first, p);
        assert_ne!(second, p);
        assert!(held_by_another(p));
        assert!(!held_by_another(second));
        assert_ne!(free_port(), p, "the hook ends with its closure");
    }

    #[test]
    fn a_start_that_finds_its_port_taken_is_retried_on_a_fresh_one() {
        let held = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let p = held.local_addr().unwrap().port();
        let mut tried = Vec::new();
        let got = with_next_ports(&[p], || {
            start_on_free_ports("test server", 1, |ports| {
                tried.push(ports[0]);
                TcpListener::bind((Ipv4Addr::LOCALHOST, ports[0])).map_err(|e| e.to_string())
            })
        });
        assert_eq!(tried[0], p);
        assert_eq!(tried.len(), 2);
        assert_eq!(got.local_addr().unwrap().port(), tried[1]);
    }

    #[test]
    fn a_closed_port_refuses_connections_and_cannot_be_taken() {
        let closed = closed_port();
        let addr = std::net::SocketAddr::from((Ipv4Addr::LOCALHOST, closed.port()));
        let err = std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_secs(1))
            .expect_err("connected to a closed port");
        assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused, "{err}");
        assert!(held_by_another(closed.port()), "a server could bind the closed port");
    }

    #[test]
    fn other_failures_are_not_retried() {
        let mut calls = 0;
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            start_on_free_ports("test server", 1, |_| {
                calls += 1;
                Err::<(), _>("bad configuration".to_owned())
            })
        }));
        let message = *outcome.unwrap_err().downcast::<String>().unwrap();
        assert!(message.contains("test server did not start") && message.contains("bad configuration"));
        assert_eq!(calls, 1);
    }

    #[test]
    fn attempts_are_bounded() {
        let mut calls = 0;
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            start_on_free_ports("test server", 2, |_| {
                calls += 1;
                Err::<(), _>("bind: Address already in use".to_owned())
            })
        }));
        assert!(outcome.is_err());
        assert_eq!(calls, START_ATTEMPTS);
    }
}
