//! Serve settings: command-line flags (each also an environment variable), an optional TOML file, and
//! defaults, in that order of precedence. Raw values are validated first, then resolved into a
//! [`ServeConfig`] that the rest of the server reads and never re-checks.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// Flags of `inferd serve`. Every flag has an `INFERD_*` environment variable; both override the file.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ServeArgs {
    /// Address to listen on, as IP:PORT (no host names: a static binary does not resolve them).
    /// [default: 127.0.0.1:7878]
    #[arg(long, env = "INFERD_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// Model repository: <models>/<name>/<version>/model.onnx. [default: ./models]
    #[arg(long, env = "INFERD_MODELS")]
    pub models: Option<PathBuf>,
    /// TOML file with any of these settings (snake_case keys); flags and environment win over it.
    #[arg(long, env = "INFERD_CONFIG")]
    pub config: Option<PathBuf>,
    /// Inference worker threads. [default: number of cores]
    #[arg(long, env = "INFERD_WORKERS")]
    pub workers: Option<usize>,
    /// Threads doing network I/O (never inference). [default: 1]
    #[arg(long, env = "INFERD_IO_THREADS")]
    pub io_threads: Option<usize>,
    /// Open connections at most; one more is answered OVERLOADED and closed. [default: 256]
    #[arg(long, env = "INFERD_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,
    /// Outstanding requests per connection; one more is answered TOO_MANY_IN_FLIGHT. [default: 64]
    #[arg(long, env = "INFERD_MAX_IN_FLIGHT")]
    pub max_in_flight: Option<u32>,
    /// Largest frame body accepted or sent; a larger header closes the connection with FRAME_TOO_LARGE,
    /// a larger response is answered RESPONSE_TOO_LARGE. [default: 4194304]
    #[arg(long, env = "INFERD_MAX_FRAME_BYTES")]
    pub max_frame_bytes: Option<u32>,
    /// Jobs waiting for a worker, all connections together; one more is answered OVERLOADED.
    /// [default: 256]
    #[arg(long, env = "INFERD_QUEUE_CAPACITY")]
    pub queue_capacity: Option<usize>,
    /// Time a new connection has to send Hello; then it is closed with TIMEOUT. [default: 5000]
    #[arg(long, env = "INFERD_HANDSHAKE_TIMEOUT_MS")]
    pub handshake_timeout_ms: Option<u64>,
    /// A connection with nothing in flight and no frame for this long is closed with TIMEOUT.
    /// [default: 300000]
    #[arg(long, env = "INFERD_IDLE_TIMEOUT_MS")]
    pub idle_timeout_ms: Option<u32>,
    /// Time a frame may take to arrive once it has started, and a response to be written; then the
    /// connection is closed. [default: 10000]
    #[arg(long, env = "INFERD_FRAME_TIMEOUT_MS")]
    pub frame_timeout_ms: Option<u64>,
    /// On SIGTERM/SIGINT, time given to in-flight requests to finish before exiting anyway.
    /// [default: 10000]
    #[arg(long, env = "INFERD_DRAIN_TIMEOUT_MS")]
    pub drain_timeout_ms: Option<u64>,
    /// Deadline of a request that sets none; a request may only shorten it. [default: 30000]
    #[arg(long, env = "INFERD_DEFAULT_DEADLINE_MS")]
    pub default_deadline_ms: Option<u32>,
}

/// The same settings as they appear in the TOML file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    listen: Option<SocketAddr>,
    models: Option<PathBuf>,
    workers: Option<usize>,
    io_threads: Option<usize>,
    max_connections: Option<usize>,
    max_in_flight: Option<u32>,
    max_frame_bytes: Option<u32>,
    queue_capacity: Option<usize>,
    handshake_timeout_ms: Option<u64>,
    idle_timeout_ms: Option<u32>,
    frame_timeout_ms: Option<u64>,
    drain_timeout_ms: Option<u64>,
    default_deadline_ms: Option<u32>,
}

/// Resolved, validated settings.
#[derive(Debug, Clone, PartialEq)]
pub struct ServeConfig {
    /// Listen address.
    pub listen: SocketAddr,
    /// Model repository root.
    pub models: PathBuf,
    /// Inference worker threads.
    pub workers: usize,
    /// Network I/O threads.
    pub io_threads: usize,
    /// Connection cap.
    pub max_connections: usize,
    /// Per-connection in-flight cap.
    pub max_in_flight: u32,
    /// Frame body limit.
    pub max_frame_bytes: u32,
    /// Global queue capacity.
    pub queue_capacity: usize,
    /// Hello must arrive within this.
    pub handshake_timeout: Duration,
    /// Idle connections are closed after this (stated to clients in milliseconds).
    pub idle_timeout_ms: u32,
    /// A started frame must complete within this; so must a write.
    pub frame_timeout: Duration,
    /// Shutdown waits this long for in-flight work.
    pub drain_timeout: Duration,
    /// Deadline for requests that set none; the longest a request may ask for.
    pub default_deadline: Duration,
}

/// A setting out of range, or an unreadable file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The config file could not be read.
    #[error("{path}: {source}")]
    Read {
        /// File path.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The config file is not valid TOML or has unknown keys.
    #[error("{path}: {message}")]
    Parse {
        /// File path.
        path: String,
        /// What is wrong.
        message: String,
    },
    /// A value is out of range.
    #[error("{0}")]
    Invalid(String),
}

impl ServeConfig {
    /// Merges flags over the optional file over defaults, then validates.
    ///
    /// # Errors
    /// [`ConfigError`] naming the file or the setting.
    pub fn resolve(args: &ServeArgs) -> Result<ServeConfig, ConfigError> {
        let file = match &args.config {
            Some(path) => read_file(path)?,
            None => FileConfig::default(),
        };
        let cores = std::thread::available_parallelism()
            .map(usize::from)
            .unwrap_or(1);
        let config = ServeConfig {
            listen: args
                .listen
                .or(file.listen)
                .unwrap_or(SocketAddr::from(([127, 0, 0, 1], 7878))),
            models: args
                .models
                .clone()
                .or(file.models)
                .unwrap_or_else(|| PathBuf::from("models")),
            workers: args.workers.or(file.workers).unwrap_or(cores),
            io_threads: args.io_threads.or(file.io_threads).unwrap_or(1),
            max_connections: args.max_connections.or(file.max_connections).unwrap_or(256),
            max_in_flight: args.max_in_flight.or(file.max_in_flight).unwrap_or(64),
            max_frame_bytes: args
                .max_frame_bytes
                .or(file.max_frame_bytes)
                .unwrap_or(4 << 20),
            queue_capacity: args.queue_capacity.or(file.queue_capacity).unwrap_or(256),
            handshake_timeout: ms(args
                .handshake_timeout_ms
                .or(file.handshake_timeout_ms)
                .unwrap_or(5_000)),
            idle_timeout_ms: args
                .idle_timeout_ms
                .or(file.idle_timeout_ms)
                .unwrap_or(300_000),
            frame_timeout: ms(args
                .frame_timeout_ms
                .or(file.frame_timeout_ms)
                .unwrap_or(10_000)),
            drain_timeout: ms(args
                .drain_timeout_ms
                .or(file.drain_timeout_ms)
                .unwrap_or(10_000)),
            default_deadline: ms(u64::from(
                args.default_deadline_ms
                    .or(file.default_deadline_ms)
                    .unwrap_or(30_000),
            )),
        };
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let check = |ok: bool, what: &str| {
            if ok {
                Ok(())
            } else {
                Err(ConfigError::Invalid(what.to_owned()))
            }
        };
        check(
            (1..=1024).contains(&self.workers),
            "workers must be 1..=1024",
        )?;
        check(
            (1..=64).contains(&self.io_threads),
            "io_threads must be 1..=64",
        )?;
        check(
            self.max_connections >= 1,
            "max_connections must be at least 1",
        )?;
        check(
            (1..=65_536).contains(&self.max_in_flight),
            "max_in_flight must be 1..=65536",
        )?;
        check(
            (1024..=1 << 30).contains(&self.max_frame_bytes),
            "max_frame_bytes must be 1024..=1073741824",
        )?;
        check(
            (1..=1 << 20).contains(&self.queue_capacity),
            "queue_capacity must be 1..=1048576",
        )?;
        check(
            !self.handshake_timeout.is_zero(),
            "handshake_timeout_ms must be positive",
        )?;
        check(self.idle_timeout_ms > 0, "idle_timeout_ms must be positive")?;
        check(
            !self.frame_timeout.is_zero(),
            "frame_timeout_ms must be positive",
        )?;
        check(
            !self.default_deadline.is_zero(),
            "default_deadline_ms must be positive",
        )?;
        Ok(())
    }

    /// The idle timeout as a duration.
    pub fn idle_timeout(&self) -> Duration {
        ms(u64::from(self.idle_timeout_ms))
    }
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn read_file(path: &Path) -> Result<FileConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.display().to_string(),
        source,
    })?;
    toml::from_str(&text).map_err(|e| ConfigError::Parse {
        path: path.display().to_string(),
        message: e.message().to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_the_documented_ones() {
        let c = ServeConfig::resolve(&ServeArgs::default()).unwrap();
        assert_eq!(c.listen.to_string(), "127.0.0.1:7878");
        assert_eq!(c.models, PathBuf::from("models"));
        assert_eq!(c.max_frame_bytes, 4 << 20);
    }

    #[test]
    fn flags_override_the_file_which_overrides_defaults() {
        let dir = std::env::temp_dir().join(format!("inferd-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("inferd.toml");
        std::fs::write(&file, "max_in_flight = 7\nqueue_capacity = 9\n").unwrap();
        let args = ServeArgs {
            config: Some(file.clone()),
            queue_capacity: Some(3),
            ..ServeArgs::default()
        };
        let c = ServeConfig::resolve(&args).unwrap();
        assert_eq!((c.max_in_flight, c.queue_capacity), (7, 3));
        std::fs::write(&file, "max_inflight = 7\n").unwrap();
        let err = ServeConfig::resolve(&args).unwrap_err().to_string();
        assert!(err.contains("max_inflight"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn out_of_range_values_are_refused() {
        let args = ServeArgs {
            max_frame_bytes: Some(10),
            ..ServeArgs::default()
        };
        assert!(ServeConfig::resolve(&args)
            .unwrap_err()
            .to_string()
            .contains("max_frame_bytes"));
        let args = ServeArgs {
            workers: Some(0),
            ..ServeArgs::default()
        };
        assert!(ServeConfig::resolve(&args).is_err());
    }
}
