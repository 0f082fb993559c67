//! The daemon under systemd's protocols, without PID 1: started by `systemd-socket-activate` with the
//! listeners it passes (named as the units name them), talking to a notify socket this test reads:
//! READY=1 once the models are warm, WATCHDOG=1 while workers are healthy, RELOADING=1 then READY=1
//! around SIGHUP, STOPPING=1 on SIGTERM, exit status 0.

use std::net::SocketAddr;
use std::os::unix::net::UnixDatagram;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use inferd::client::{BlockingClient, ClientOptions};

use crate::harness::{http_get, infer_digits, models_dir, scratch};

fn free_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// Connects once the activator listens (it binds after it starts); the first connection starts the
/// daemon.
fn first_connection(addr: SocketAddr) -> std::net::TcpStream {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match std::net::TcpStream::connect(addr) {
            Ok(s) => return s,
            Err(e) => assert!(Instant::now() < deadline, "{addr}: {e}"),
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn installed() -> bool {
    crate::harness::installed("systemd-socket-activate", "--version")
}

/// Reads notifications until one contains `needle`; returns everything read meanwhile.
fn until(socket: &UnixDatagram, needle: &str) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        if let Ok(n) = socket.recv(&mut buf) {
            let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
            let done = msg.contains(needle);
            seen.push(msg);
            if done {
                return seen;
            }
        }
    }
    panic!("no notification with {needle:?}; got {seen:?}");
}

#[test]
fn socket_activated_daemon_notifies_ready_watchdog_reloading_and_stopping() {
    if !installed() {
        return;
    }
    let dir = scratch("systemd");
    let notify_path = dir.join("notify");
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    notify
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let (addr, metrics) = (free_addr(), free_addr());
    let mut child = Command::new("systemd-socket-activate")
        .args(["-l", &addr.to_string(), "-l", &metrics.to_string()])
        .arg("--fdname=plain:metrics")
        .arg(format!("--setenv=NOTIFY_SOCKET={}", notify_path.display()))
        .args(["--setenv=WATCHDOG_USEC=400000", "--setenv=RUST_LOG=info"])
        .arg(env!("CARGO_BIN_EXE_inferd"))
        .args(["serve", "--workers", "1", "--models"])
        .arg(models_dir())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();

    // The first connection starts the daemon; it is served once the models are warm.
    drop(first_connection(addr));
    let client = BlockingClient::connect(addr, ClientOptions::default()).unwrap();
    infer_digits(&client);
    let seen = until(&notify, "READY=1");
    let ready = seen.last().unwrap();
    assert!(
        ready.contains("STATUS=") && ready.contains("model versions"),
        "{ready}"
    );
    // The inherited metrics socket serves HTTP.
    assert_eq!(http_get(metrics, "/health/ready"), (200, "ready\n".into()));
    // The watchdog is fed at half its interval while the workers are healthy.
    until(&notify, "WATCHDOG=1");
    until(&notify, "WATCHDOG=1");

    let signal = |sig: &str| crate::harness::signal(&child, sig);
    signal("-HUP");
    let seen = until(&notify, "RELOADING=1");
    assert!(!seen.last().unwrap().contains("READY=1"));
    until(&notify, "READY=1");

    signal("-TERM");
    let seen = until(&notify, "STOPPING=1");
    assert!(seen.last().unwrap().contains("STATUS=draining"));
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "the daemon did not exit");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(status.code(), Some(0));
}

#[test]
fn an_unknown_inherited_socket_name_is_refused_at_start() {
    if !installed() {
        return;
    }
    let addr = free_addr();
    let child = Command::new("systemd-socket-activate")
        .args(["-l", &addr.to_string(), "--fdname=grpc"])
        .arg(env!("CARGO_BIN_EXE_inferd"))
        .args(["serve", "--models"])
        .arg(models_dir())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(first_connection(addr));
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("\"grpc\"") && err.contains("FileDescriptorName"),
        "{err}"
    );
}
