//! A server the testkit starts dies with the process that started it, even when that
//! process is SIGKILLed (no destructor runs): `fencelock bench` or a test killed outright
//! leaves no server behind.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail by panicking

use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use fencelock_testkit::redis_server::RedisServer;

/// Set in the child this test starts: it starts a server, prints its port, and waits.
const CHILD: &str = "FENCELOCK_TESTKIT_TIED_CHILD";

/// The child's part (ignored in a normal run, where it would pass having tested nothing;
/// started by the parent below): a server started from a thread that then ends — the tie
/// must hold for the process, not the thread.
#[test]
#[ignore = "started by a_server_dies_with_its_sigkilled_starter"]
fn child_starts_a_server_and_waits() {
    if std::env::var_os(CHILD).is_none() {
        return;
    }
    let server = std::thread::spawn(RedisServer::start).join().expect("start thread");
    println!("port {}", server.port());
    // Waits until the parent is gone (its end of stdin closes with it).
    let mut line = String::new();
    let _ = std::io::stdin().read_line(&mut line);
    drop(server);
}

#[test]
fn a_server_dies_with_its_sigkilled_starter() {
    let mut child = Command::new(std::env::current_exe().expect("test binary"))
        .args([
            "--exact",
            "child_starts_a_server_and_waits",
            "--ignored",
            "--nocapture",
            "--test-threads",
            "1",
        ])
        .env(CHILD, "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("start the child");
    // The harness prints `test NAME ... ` before the child's own `port N`: read it from a
    // thread, so that a child that never prints it fails the test within a bound.
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some((_, p)) = line.split_once("port ") {
                let _ = tx.send(p.trim().parse::<u16>().ok());
                return;
            }
        }
    });
    let port = match rx.recv_timeout(Duration::from_secs(30)) {
        Ok(Some(port)) => port,
        other => {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the child printed no port: {other:?}");
        }
    };
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    assert!(
        TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_ok(),
        "the server is not up"
    );
    child.kill().expect("SIGKILL the child"); // std's kill is SIGKILL
    child.wait().expect("reap the child");
    let start = Instant::now();
    while let Ok(mut conn) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) {
        if start.elapsed() > Duration::from_secs(10) {
            // Stop the stray server before failing: a test leaves no process behind.
            let _ = conn.write_all(b"SHUTDOWN NOSAVE\r\n");
            panic!("the server on port {port} outlived its SIGKILLed starter");
        }
        std::thread::sleep(Duration::from_millis(20)); // polling a condition with a deadline
    }
}
