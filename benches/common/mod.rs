//! What the benches share: an in-process server, and copying a model folder.
//!
//! A folder with `mod.rs` rather than `benches/common.rs`, which Cargo would take for a bench target.
#![allow(dead_code, reason = "each bench uses part of it")]

use std::path::Path;
use std::sync::Arc;

use inferd::config::{ServeArgs, ServeConfig};
use inferd::model::Repository;
use inferd::server::{Server, ServerHandle};

/// The server of `args` over `repository`, running on its own thread until [`InProcess::stop`].
pub struct InProcess {
    pub addr: std::net::SocketAddr,
    handle: ServerHandle,
    thread: std::thread::JoinHandle<()>,
}

impl InProcess {
    /// Binds and starts the server.
    pub fn start(args: &ServeArgs, repository: Arc<Repository>) -> InProcess {
        let server = Server::bind(ServeConfig::resolve(args).unwrap(), repository).unwrap();
        let addr = server.local_addr().unwrap();
        let handle = server.handle();
        let thread = std::thread::spawn(move || server.run());
        InProcess {
            addr,
            handle,
            thread,
        }
    }

    /// Its control handle (rescans, shutdown).
    pub fn handle(&self) -> &ServerHandle {
        &self.handle
    }

    /// Shuts it down and waits for its thread.
    pub fn stop(self) {
        self.handle.shutdown();
        self.thread.join().unwrap();
    }
}

/// Copies the folder `from` to `to`, recursively.
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let path = entry.unwrap().path();
        let dest = to.join(path.file_name().unwrap());
        if path.is_dir() {
            copy_dir(&path, &dest);
        } else {
            std::fs::copy(&path, &dest).unwrap();
        }
    }
}
