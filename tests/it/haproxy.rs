//! A real HAProxy (Debian's) in TCP mode in front of two inferd daemons, health-checking them over
//! inferd's own protocol (`Hello` then `Health`, expecting the `Ready` answer), as doc/OPERATIONS.md
//! tells operators to. Under load, one daemon gets SIGTERM: HAProxy must mark it down while it still
//! accepts, and the load generator, which resends requests the draining node did not run, must see no
//! failed request.

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use inferd::client::{BlockingClient, ClientOptions};
use inferd::proto::{encode_frame_vec, Hello, Request, Response, ServingState};

use crate::harness::{
    digits_input, infer_digits, installed, listening_addr, models_dir, repo_root, scratch,
    serve_command, spawn_logged, wait_for,
};

fn hex(frame: &[u8]) -> String {
    frame.iter().map(|b| format!("{b:02x}")).collect()
}

/// The byte strings of the documented check: what to send, the start of any `Health` answer (id 1),
/// and what a ready server answers.
fn check_bytes() -> (String, String, String) {
    let hello = encode_frame_vec(
        &Request::Hello(Hello {
            min_version: 1,
            max_version: 1,
            client: "haproxy",
        }),
        1024,
    )
    .unwrap();
    let health = encode_frame_vec(&Request::Health { id: 1 }, 1024).unwrap();
    let ready = encode_frame_vec(
        &Response::Health {
            id: 1,
            state: ServingState::Ready,
        },
        1024,
    )
    .unwrap();
    let ready = hex(&ready);
    // Everything but the state byte: header, variant 7, id 1.
    let any = ready[..ready.len() - 2].to_owned();
    (format!("{}{}", hex(&hello), hex(&health)), any, ready)
}

#[test]
fn the_documented_health_check_bytes_are_the_protocol_s() {
    let (send, any, ready) = check_bytes();
    let doc = std::fs::read_to_string(repo_root().join("doc/OPERATIONS.md")).unwrap();
    assert!(
        doc.contains(&format!("tcp-check send-binary {send}\n")),
        "{send}"
    );
    assert!(
        doc.contains(&format!("tcp-check expect binary {any}\n")),
        "{any}"
    );
    assert!(
        doc.contains(&format!("tcp-check expect min-recv 0 binary {ready}\n")),
        "{ready}"
    );
}

struct Daemon {
    child: Child,
    addr: SocketAddr,
    lines: mpsc::Receiver<String>,
}

impl Daemon {
    fn start() -> Daemon {
        let mut command = serve_command(models_dir());
        command.args(["--workers", "1", "--shutdown-delay-ms", "2000"]);
        let (child, lines) = spawn_logged(command);
        let addr = listening_addr(&wait_for(&lines, "listening on ", Duration::from_secs(60)));
        Daemon { child, addr, lines }
    }

    /// Whether the daemon has logged that it stopped accepting.
    fn stopped_accepting(&self) -> bool {
        self.lines
            .try_iter()
            .any(|l| l.contains("shutdown began: no longer accepting"))
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `show stat` over HAProxy's admin socket: server name → status (`UP`, `DOWN`, `UP 1/2`, ...).
fn server_states(socket: &Path) -> Vec<(String, String)> {
    let Ok(mut s) = UnixStream::connect(socket) else {
        return Vec::new();
    };
    s.write_all(b"show stat\n").unwrap();
    let mut csv = String::new();
    s.read_to_string(&mut csv).unwrap();
    csv.lines()
        .filter(|l| l.starts_with("inferd,") && !l.starts_with("inferd,BACKEND"))
        .map(|l| {
            let cols: Vec<&str> = l.split(',').collect();
            (cols[1].to_owned(), cols[17].to_owned())
        })
        .collect()
}

fn state_of(socket: &Path, server: &str) -> String {
    server_states(socket)
        .into_iter()
        .find(|(name, _)| name == server)
        .map(|(_, s)| s)
        .unwrap_or_default()
}

#[test]
fn haproxy_marks_a_draining_node_down_before_it_stops_accepting_and_no_request_fails() {
    if !installed("haproxy", "-v") {
        return;
    }
    let a = Daemon::start();
    let b = Daemon::start();
    let dir = scratch("haproxy");
    let socket = dir.join("admin.sock");
    let front = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        probe.local_addr().unwrap()
    };
    let (send, any, ready) = check_bytes();
    let config = format!(
        "global\n  stats socket {socket} mode 600 level admin\n\
         defaults\n  mode tcp\n  timeout connect 1s\n  timeout client 30s\n  timeout server 30s\n  timeout check 1s\n\
         frontend fe\n  bind {front}\n  default_backend inferd\n\
         backend inferd\n  balance roundrobin\n  option tcp-check\n  tcp-check connect\n\
         \x20 tcp-check send-binary {send}\n  tcp-check expect binary {any}\n\
         \x20 tcp-check expect min-recv 0 binary {ready}\n\
         \x20 server a {a} check inter 100ms fall 2 rise 2\n  server b {b} check inter 100ms fall 2 rise 2\n",
        socket = socket.display(),
        a = a.addr,
        b = b.addr,
    );
    let cfg = dir.join("haproxy.cfg");
    std::fs::write(&cfg, config).unwrap();
    let mut haproxy = Command::new("haproxy")
        .arg("-db")
        .arg("-f")
        .arg(&cfg)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !(state_of(&socket, "a") == "UP" && state_of(&socket, "b") == "UP") {
        assert!(
            Instant::now() < deadline,
            "HAProxy never saw both up: {:?}",
            server_states(&socket)
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    let plan = inferd::loadgen::LoadPlan {
        addr: front,
        options: ClientOptions::default(),
        model: "digits-mlp".into(),
        version: None,
        inputs: vec![digits_input()],
        connections: 4,
        depth: 2,
        rate: None,
        duration: Duration::from_secs(6),
        warmup: Duration::ZERO,
        deadline: None,
        progress: false,
        seed: 7,
        server_metrics: None,
    };
    let load = std::thread::spawn(move || inferd::loadgen::run(&plan).unwrap());
    std::thread::sleep(Duration::from_millis(1500));

    crate::harness::signal(&a.child, "-TERM");
    let deadline = Instant::now() + Duration::from_secs(5);
    while !state_of(&socket, "a").starts_with("DOWN") {
        assert!(Instant::now() < deadline, "HAProxy never marked a down");
        std::thread::sleep(Duration::from_millis(10));
    }
    // Marked down, and a still accepts and serves: the balancer moved first.
    assert!(
        !a.stopped_accepting(),
        "a stopped accepting before HAProxy noticed"
    );
    let direct = BlockingClient::connect(a.addr, ClientOptions::default()).unwrap();
    assert_eq!(direct.health().unwrap(), ServingState::Draining);
    infer_digits(&direct);
    drop(direct);

    let report = load.join().unwrap();
    let mut a = a;
    let exit = a.child.wait().unwrap();
    let _ = haproxy.kill();
    let _ = haproxy.wait();
    assert!(report.errors.is_empty(), "failed requests: {report:?}");
    assert!(report.ok > 100, "{report:?}");
    assert!(
        report.retries > 0,
        "the drained node refused unrun requests and they were resent: {report:?}"
    );
    assert_eq!(exit.code(), Some(0));
}
