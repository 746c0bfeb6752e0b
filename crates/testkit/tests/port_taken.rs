//! Every server launcher starts on another port when the free port it picked is taken
//! before the server binds it (the free-port race: bind(0), release, start). The port is
//! taken on purpose here: [`with_next_ports`] hands the launcher a port this test holds.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail by panicking

use std::net::{Ipv4Addr, TcpListener};

use fencelock_testkit::etcd_server::EtcdCluster;
use fencelock_testkit::pg_server::PgServer;
use fencelock_testkit::ports::with_next_ports;
use fencelock_testkit::process::{http, tcp_exchange};
use fencelock_testkit::redis_server::RedisServer;
use fencelock_testkit::zk_server::ZkEnsemble;

/// A port on 127.0.0.1 that the returned listener holds.
fn held_port() -> (TcpListener, u16) {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind 127.0.0.1:0");
    let port = listener.local_addr().expect("local addr").port();
    (listener, port)
}

#[test]
fn redis_starts_on_another_port_when_its_port_is_taken() {
    let (_held, port) = held_port();
    let server = with_next_ports(&[port], RedisServer::start);
    assert_ne!(server.port(), port);
    let reply = tcp_exchange(server.port(), b"PING\r\n").expect("PING");
    assert!(reply.starts_with(b"+PONG"), "{}", String::from_utf8_lossy(&reply));
}

#[test]
fn etcd_starts_on_other_ports_when_its_client_port_is_taken() {
    let (_held, port) = held_port();
    let cluster = with_next_ports(&[port], EtcdCluster::single);
    assert!(!cluster.client_ports().contains(&port), "{:?}", cluster.client_ports());
    let health = http(cluster.client_ports()[0], "GET", "/health", "").expect("/health");
    assert!(health.contains("\"health\":\"true\""), "{health}");
}

#[test]
fn etcd_starts_on_other_ports_when_its_peer_port_is_taken() {
    let (_held, port) = held_port();
    let free = fencelock_testkit::ports::free_port();
    // Member 0 takes its client port, then its peer port.
    let cluster = with_next_ports(&[free, port], EtcdCluster::single);
    // Started again on fresh ports: the client port handed out first is not the one used
    // (the held peer port is never a client port, so checking for it would prove nothing).
    assert_ne!(cluster.client_ports()[0], free, "{:?}", cluster.client_ports());
    assert!(http(cluster.client_ports()[0], "GET", "/health", "").is_some());
}

#[test]
fn zookeeper_starts_on_another_port_when_its_port_is_taken() {
    let (_held, port) = held_port();
    let zk = with_next_ports(&[port], ZkEnsemble::standalone);
    assert_ne!(zk.port(0), port);
    assert_eq!(zk.leader(), Some(0), "the standalone server serves");
}

#[test]
fn postgres_starts_on_another_port_when_its_port_is_taken() {
    let (_held, port) = held_port();
    let pg = with_next_ports(&[port], PgServer::start);
    assert_ne!(pg.port(), port);
    assert_eq!(pg.psql("SELECT 1"), "1");
}

#[test]
fn a_zookeeper_ensemble_starts_on_other_ports_when_an_election_port_is_taken() {
    let (_held, port) = held_port();
    let free = |_| fencelock_testkit::ports::free_port();
    // Server 1 takes its client, peer and election ports, in that order.
    let mut first: Vec<u16> = (0..2).map(free).collect();
    first.push(port);
    let zk = with_next_ports(&first, || ZkEnsemble::start(3));
    assert_ne!(zk.port(0), first[0], "a fresh start, on fresh ports");
    assert!(zk.leader().is_some(), "the ensemble elected a leader");
}

// A port held by another server *of the same kind* answers the launcher's readiness probe
// (PING, /health, srvr) while the new server fails to bind and exits: before, the launcher
// took the other server for its own and returned on the taken port. Now a server is ready
// only when its own process listens on the port.

#[test]
fn redis_does_not_take_another_redis_on_its_port_for_its_own() {
    let a = RedisServer::start();
    let b = with_next_ports(&[a.port()], RedisServer::start);
    assert_ne!(b.port(), a.port());
    let reply = tcp_exchange(b.port(), b"PING\r\n").expect("PING");
    assert!(reply.starts_with(b"+PONG"), "{}", String::from_utf8_lossy(&reply));
}

#[test]
fn etcd_does_not_take_another_etcd_on_its_port_for_its_own() {
    let a = EtcdCluster::single();
    let taken = a.client_ports()[0];
    let b = with_next_ports(&[taken], EtcdCluster::single);
    assert_ne!(b.client_ports()[0], taken);
    assert!(http(b.client_ports()[0], "GET", "/health", "").is_some());
}

#[test]
fn zookeeper_does_not_take_another_zookeeper_on_its_port_for_its_own() {
    let a = ZkEnsemble::standalone();
    let b = with_next_ports(&[a.port(0)], ZkEnsemble::standalone);
    assert_ne!(b.port(0), a.port(0));
    assert_eq!(b.leader(), Some(0), "the standalone server serves");
}
