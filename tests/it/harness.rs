//! Starting servers for tests: the shipped models plus test fixtures, on 127.0.0.1:0.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;

use inferd::config::{ServeArgs, ServeConfig};
use inferd::model::repository::Settings;
use inferd::model::Repository;
use inferd::server::{Server, ServerHandle};

pub fn repo_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// A repository holding every shipped model and the test fixtures (as symlinks), built once.
pub fn models_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        // Never removed by this process (a static is not dropped): the next run sweeps it.
        let dir = scratch_root().join("models");
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        for parent in [
            repo_root().join("models"),
            repo_root().join("tests/fixtures/models"),
        ] {
            for entry in std::fs::read_dir(&parent).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    std::os::unix::fs::symlink(&path, dir.join(path.file_name().unwrap())).unwrap();
                }
            }
        }
        dir
    })
}

/// The repository of [`models_dir`], loaded once and shared by every in-process server (it never
/// changes; swap tests build their own).
pub fn repository() -> Arc<Repository> {
    static REPO: OnceLock<Arc<Repository>> = OnceLock::new();
    Arc::clone(REPO.get_or_init(|| {
        Arc::new(Repository::open(models_dir(), Settings::default()).expect("test models load"))
    }))
}

/// A base config: port 0, the test repository, two workers.
pub fn config() -> ServeConfig {
    let args = ServeArgs {
        listen: Some("127.0.0.1:0".parse().unwrap()),
        metrics_listen: Some("127.0.0.1:0".parse().unwrap()),
        models: Some(models_dir().to_path_buf()),
        workers: Some(2),
        // Tests that exercise the folder watch turn it on.
        model_poll_ms: Some(0),
        ..ServeArgs::default()
    };
    ServeConfig::resolve(&args).unwrap()
}

/// An in-process server, shut down and joined on drop.
pub struct TestServer {
    pub addr: SocketAddr,
    pub tls_addr: Option<SocketAddr>,
    pub metrics_addr: Option<SocketAddr>,
    pub handle: ServerHandle,
    thread: Option<JoinHandle<()>>,
}

impl TestServer {
    pub fn start() -> TestServer {
        TestServer::with(|_| {})
    }

    pub fn with(adjust: impl FnOnce(&mut ServeConfig)) -> TestServer {
        TestServer::serving(repository(), adjust)
    }

    /// A server on a repository of the test's own.
    pub fn serving(models: Arc<Repository>, adjust: impl FnOnce(&mut ServeConfig)) -> TestServer {
        let mut config = config();
        adjust(&mut config);
        let server = Server::bind(config, models).expect("binds");
        let addr = server.local_addr().expect("a plain listener");
        let tls_addr = server.tls_local_addr();
        let metrics_addr = server.metrics_local_addr();
        let handle = server.handle();
        let thread = std::thread::spawn(move || server.run());
        TestServer {
            addr,
            tls_addr,
            metrics_addr,
            handle,
            thread: Some(thread),
        }
    }

    /// Shuts down and waits for `run` to return.
    pub fn stop(mut self) {
        self.handle.shutdown();
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.handle.shutdown();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Reads an `.npy` file of the repository.
pub fn npy(path: impl AsRef<Path>, name: &str) -> inferd::tensor::HostTensor {
    let path = repo_root().join(path);
    inferd::npy::read_file(&path, name).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

pub fn digits_input() -> inferd::tensor::HostTensor {
    npy("models/digits-mlp/1/sample/X.npy", "X")
}

/// This process's folder for test files, `inferd-it-<pid>` in the system's temporary directory.
/// Made on first use, after removing the folders of earlier runs whose process is gone: what a
/// [`Scratch`] guard could not remove (a test killed, the shared repository of [`models_dir`]) does
/// not pile up over runs on a CI machine or a developer's.
fn scratch_root() -> &'static Path {
    static ROOT: OnceLock<PathBuf> = OnceLock::new();
    ROOT.get_or_init(|| {
        let tmp = std::env::temp_dir();
        if let Ok(entries) = std::fs::read_dir(&tmp) {
            for entry in entries.flatten() {
                let name = entry.file_name();
                let pid = name
                    .to_str()
                    .and_then(|n| n.strip_prefix("inferd-it-"))
                    .and_then(|p| p.parse::<u32>().ok());
                // A pid that is running again (reused) keeps its folder: removed by a later run.
                if pid.is_some_and(|pid| !Path::new(&format!("/proc/{pid}")).exists()) {
                    let _ = std::fs::remove_dir_all(entry.path());
                }
            }
        }
        let dir = tmp.join(format!("inferd-it-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    })
}

/// A folder for one test (a repository, a cache) that is removed with everything in it when the
/// guard is dropped, also when the test panics. Keep it alive as long as anything (a repository's
/// watch thread, a daemon) uses the folder: bind it to a named variable, not `_`.
pub struct Scratch(PathBuf);

impl std::ops::Deref for Scratch {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

impl AsRef<Path> for Scratch {
    fn as_ref(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A fresh, empty [`Scratch`] folder named after `tag` (unique among this process's tests).
pub fn scratch(tag: &str) -> Scratch {
    let dir = scratch_root().join(tag);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    Scratch(dir)
}

/// Copies the folder `from` to `to`, recursively, the copies writable.
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let path = entry.unwrap().path();
        let dest = to.join(path.file_name().unwrap());
        if path.is_dir() {
            copy_dir(&path, &dest);
        } else {
            std::fs::copy(&path, &dest).unwrap();
            // Shipped files are read-only; tests rewrite some copies.
            let mut perms = std::fs::metadata(&dest).unwrap().permissions();
            #[allow(clippy::permissions_set_readonly_false)]
            perms.set_readonly(false);
            std::fs::set_permissions(&dest, perms).unwrap();
        }
    }
}

/// One request for the latest digits-mlp on its shipped sample; panics unless answered.
pub fn infer_digits(client: &inferd::client::BlockingClient) -> inferd::client::InferOutput {
    client
        .infer("digits-mlp", None, &[digits_input()], None)
        .unwrap()
}

pub fn ppocr_input() -> inferd::tensor::HostTensor {
    npy("models/ppocr-cls/1/sample/x.npy", "x")
}

/// Waits (polling, up to 10 s) until `done()` holds; fails the test with `what` otherwise. For state
/// the server reaches on its own (a queue filling or draining), never for timing assertions.
pub fn eventually(what: &str, done: impl Fn() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !done() {
        assert!(std::time::Instant::now() < deadline, "{what}");
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
}

/// One HTTP/1.1 GET: the status code and the body.
pub fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    (status, body.to_owned())
}

/// Whether an outside tool the tests drive (HAProxy, promtool, systemd's) is installed. Outside CI a
/// machine without it skips that test, saying so; under CI (`CI` set, as `.ci/run` does) its absence
/// fails the test instead.
pub fn installed(tool: &str, version_arg: &str) -> bool {
    let found = std::process::Command::new(tool)
        .arg(version_arg)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        assert!(std::env::var_os("CI").is_none(), "{tool} is missing in CI");
        eprintln!("{tool} not installed: skipping");
    }
    found
}

/// `inferd serve` on the repository `models`, listening on 127.0.0.1:0 without a metrics listener;
/// callers add their flags.
pub fn serve_command(models: &Path) -> std::process::Command {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_inferd"));
    command
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "off",
        ])
        .arg("--models")
        .arg(models);
    command
}

/// A `--input NAME=PATH` value for `inferd bench`, `path` relative to the repository root.
pub fn input_arg(name: &str, path: &str) -> String {
    format!("{name}={}", repo_root().join(path).display())
}

/// A child process killed (and reaped) when dropped, so that a test that fails half-way leaves no
/// server running, holding the test run's output open.
pub struct KillOnDrop(pub std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// Spawns a server command with its stderr (the log) piped; the log lines arrive on the channel.
pub fn spawn_logged(
    mut command: std::process::Command,
) -> (std::process::Child, std::sync::mpsc::Receiver<String>) {
    use std::io::BufRead;
    let mut child = command
        .env("RUST_LOG", "info")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, lines) = std::sync::mpsc::channel();
    let stderr = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            let _ = tx.send(line);
        }
    });
    (child, lines)
}

/// Waits (up to `limit`) for a log line containing `needle`, returning it.
pub fn wait_for(
    lines: &std::sync::mpsc::Receiver<String>,
    needle: &str,
    limit: std::time::Duration,
) -> String {
    let deadline = std::time::Instant::now() + limit;
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match lines.recv_timeout(left) {
            Ok(line) if line.contains(needle) => return line,
            Ok(_) => {}
            Err(e) => panic!("no log line with {needle:?}: {e}"),
        }
    }
}

/// The address of a `listening on ADDR ...` log line.
pub fn listening_addr(line: &str) -> SocketAddr {
    line.split("listening on ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .unwrap()
        .parse()
        .unwrap()
}

/// Sends a signal (`"-TERM"`, `"-HUP"`) to a spawned process with `kill`.
pub fn signal(child: &std::process::Child, sig: &str) {
    let status = std::process::Command::new("kill")
        .args([sig, &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success(), "kill {sig} {}", child.id());
}
