//! Serve settings: command-line flags (each also an environment variable), an optional TOML file, and
//! defaults, in that order of precedence. Raw values are validated first, then resolved into a
//! [`ServeConfig`] that the rest of the server reads and never re-checks.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::model::policy::VersionPolicy;

/// `worker_yield_us` unless configured: refusals within ~1 ms on a CPU shared by a worker and the
/// I/O thread, for ~10 % of a 0.1 ms model's throughput (doc/BENCHMARKS.md, "Overload").
const DEFAULT_WORKER_YIELD_US: u64 = 500;

/// Flags of `inferd serve`. Every flag has an `INFERD_*` environment variable; both override the file.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ServeArgs {
    /// Plain TCP address to listen on, as IP:PORT (no host names: a static binary does not resolve
    /// them), or `off` to serve TLS only. [default: 127.0.0.1:7878]
    #[arg(long, env = "INFERD_LISTEN")]
    pub listen: Option<Listen>,
    /// TLS address to listen on, IP:PORT; needs --tls-cert and --tls-key. [default: none]
    #[arg(long, env = "INFERD_TLS_LISTEN")]
    pub tls_listen: Option<SocketAddr>,
    /// Server certificate chain (PEM) for the TLS listener.
    #[arg(long, env = "INFERD_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// Server private key (PEM) for the TLS listener.
    #[arg(long, env = "INFERD_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// CA bundle (PEM) that client certificates must chain to; setting it makes client certificates
    /// mandatory on the TLS listener (mutual TLS).
    #[arg(long, env = "INFERD_TLS_CLIENT_CA")]
    pub tls_client_ca: Option<PathBuf>,
    /// Certificate revocation lists (PEM) for client certificates; needs --tls-client-ca.
    #[arg(long, env = "INFERD_TLS_CRL")]
    pub tls_crl: Option<PathBuf>,
    /// Also accept TLS 1.2 clients (TLS 1.3 only by default).
    #[arg(long, env = "INFERD_TLS_ALLOW_TLS12")]
    pub tls_allow_tls12: bool,
    /// Access policy (TOML): which identities may use which models. [default: everyone, everything]
    #[arg(long, env = "INFERD_ACCESS")]
    pub access: Option<PathBuf>,
    /// Whether connections from a loopback address without a client certificate may use admin
    /// operations (Reload). Elsewhere admin needs a certificate identity granted `admin` in the
    /// access policy. [default: true]
    #[arg(long, env = "INFERD_ADMIN_LOOPBACK")]
    pub admin_loopback: Option<bool>,
    /// Model repository: <models>/<name>/<version>/model.onnx. [default: ./models]
    #[arg(long, env = "INFERD_MODELS")]
    pub models: Option<PathBuf>,
    /// Versions served of models whose `serving.toml` does not say: `latest:N`, `all`, or a list
    /// such as `1,3`. [default: latest:1]
    #[arg(long, env = "INFERD_VERSION_POLICY")]
    pub version_policy: Option<VersionPolicy>,
    /// Runs of each model version (on its `sample/`, or on generated inputs) before it takes
    /// traffic; 0 turns warm-up off. [default: 3]
    #[arg(long, env = "INFERD_WARMUP_RUNS")]
    pub warmup_runs: Option<u32>,
    /// How often the repository folder is checked for new, changed or removed versions, in ms; 0:
    /// only on SIGHUP or an admin Reload. [default: 2000]
    #[arg(long, env = "INFERD_MODEL_POLL_MS")]
    pub model_poll_ms: Option<u64>,
    /// Cap on the weights of resident model versions, in MiB; 0: no cap. Pinned models always load
    /// (start-up fails if they alone exceed it); models with `pinned = false` load on demand and
    /// are evicted least recently used first. [default: 0]
    #[arg(long, env = "INFERD_MODEL_MEMORY_MB")]
    pub model_memory_mb: Option<u64>,
    /// Lock the process's resident pages (the loaded models with them) into RAM after start-up and
    /// after every swap, so that a memory-starved gateway never pages a hot model out. Needs
    /// CAP_IPC_LOCK or a large enough RLIMIT_MEMLOCK (LimitMEMLOCK= in the unit). [default: false]
    #[arg(long, env = "INFERD_LOCK_MEMORY")]
    pub lock_memory: Option<bool>,
    /// Folder of the prepared-model cache (each version's imported graph, so that a restart skips
    /// the ONNX import), or `off`. [default: $CACHE_DIRECTORY, which systemd's CacheDirectory=
    /// sets; else off]
    #[arg(long, env = "INFERD_MODEL_CACHE")]
    pub model_cache: Option<PathBuf>,
    /// TOML file with any of these settings (snake_case keys); flags and environment win over it.
    #[arg(long, env = "INFERD_CONFIG")]
    pub config: Option<PathBuf>,
    /// Inference worker threads. [default: number of cores]
    #[arg(long, env = "INFERD_WORKERS")]
    pub workers: Option<usize>,
    /// Nice steps the inference threads (workers, intra-op pools) run below the I/O threads, so that
    /// admitting or refusing a request under overload waits less for a model run to yield a shared
    /// CPU, at some cost in throughput; 0 runs them at the process's priority. [default: 0]
    #[arg(long, env = "INFERD_WORKER_NICE")]
    pub worker_nice: Option<i32>,
    /// A worker that has run this long without blocking yields the CPU once, so that an I/O thread
    /// sharing it admits or refuses what arrived meanwhile: between jobs when more work is queued,
    /// and between two operators of a long execution; 0 never yields (a little more throughput,
    /// refusals that wait up to a time slice). [default: 500]
    #[arg(long, env = "INFERD_WORKER_YIELD_US")]
    pub worker_yield_us: Option<u64>,
    /// Threads doing network I/O (never inference). [default: 1]
    #[arg(long, env = "INFERD_IO_THREADS")]
    pub io_threads: Option<usize>,
    /// Whether an I/O thread that wakes (a frame arrived, an answer is ready) takes a CPU from a
    /// running inference thread at once, the kernel's normal policy (true). false runs the I/O
    /// threads at SCHED_BATCH: on a CPU shared with a worker they run when it blocks, yields
    /// (`worker_yield_us`) or ends its time slice, and then handle every frame and answer that is
    /// ready in one turn: much more throughput for models of tens of microseconds, but frames wait
    /// behind a long model run. auto: SCHED_BATCH while every served model runs, or runs each
    /// operator, within `worker_yield_us`, the normal policy otherwise. [default: auto]
    #[arg(long, env = "INFERD_IO_PREEMPT")]
    pub io_preempt: Option<IoPreempt>,
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
    /// Most rows one batch may hold, for models that batch (manifest `batch_axis = 0`); 1 turns
    /// batching off. A model's manifest may set its own `max_batch`. [default: 32]
    #[arg(long, env = "INFERD_MAX_BATCH")]
    pub max_batch: Option<u64>,
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
    /// On SIGTERM/SIGINT, time between failing readiness and no longer accepting: requests are
    /// served as usual meanwhile, so a load balancer has time to notice (set it above the balancer's
    /// check interval × fall count). [default: 0]
    #[arg(long, env = "INFERD_SHUTDOWN_DELAY_MS")]
    pub shutdown_delay_ms: Option<u64>,
    /// HTTP address for /metrics, /health/live and /health/ready, as IP:PORT, or `off`.
    /// [default: 127.0.0.1:7879]
    #[arg(long, env = "INFERD_METRICS_LISTEN")]
    pub metrics_listen: Option<Listen>,
    /// Record metrics (what /metrics, `inferd stats` and `inferd top` show). `false` only to measure
    /// their cost. [default: true]
    #[arg(long, env = "INFERD_METRICS")]
    pub metrics: Option<bool>,
    /// Fraction of inference requests logged at info level (target `inferd::access`: peer, model,
    /// version, outcome, latency; never payloads), 0 to 1. [default: 0]
    #[arg(long, env = "INFERD_ACCESS_LOG_SAMPLE")]
    pub access_log_sample: Option<f64>,
}

/// The same settings as they appear in the TOML file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    listen: Option<Listen>,
    tls_listen: Option<SocketAddr>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    tls_client_ca: Option<PathBuf>,
    tls_crl: Option<PathBuf>,
    tls_allow_tls12: Option<bool>,
    access: Option<PathBuf>,
    admin_loopback: Option<bool>,
    models: Option<PathBuf>,
    version_policy: Option<String>,
    warmup_runs: Option<u32>,
    model_poll_ms: Option<u64>,
    model_memory_mb: Option<u64>,
    lock_memory: Option<bool>,
    model_cache: Option<PathBuf>,
    workers: Option<usize>,
    worker_nice: Option<i32>,
    worker_yield_us: Option<u64>,
    io_threads: Option<usize>,
    io_preempt: Option<IoPreempt>,
    max_connections: Option<usize>,
    max_in_flight: Option<u32>,
    max_frame_bytes: Option<u32>,
    queue_capacity: Option<usize>,
    max_batch: Option<u64>,
    handshake_timeout_ms: Option<u64>,
    idle_timeout_ms: Option<u32>,
    frame_timeout_ms: Option<u64>,
    drain_timeout_ms: Option<u64>,
    default_deadline_ms: Option<u32>,
    shutdown_delay_ms: Option<u64>,
    metrics_listen: Option<Listen>,
    metrics: Option<bool>,
    access_log_sample: Option<f64>,
}

/// Resolved, validated settings.
#[derive(Debug, Clone, PartialEq)]
pub struct ServeConfig {
    /// Plain TCP listen address, if any.
    pub listen: Option<SocketAddr>,
    /// TLS listener, if any.
    pub tls: Option<TlsListen>,
    /// Access policy file, if any.
    pub access: Option<PathBuf>,
    /// Loopback connections without a certificate may use admin operations.
    pub admin_loopback: bool,
    /// Model repository root.
    pub models: PathBuf,
    /// Repository policy and warm-up.
    pub repository: crate::model::repository::Settings,
    /// Interval of the repository check; `None`: on request only.
    pub model_poll: Option<Duration>,
    /// Inference worker threads.
    pub workers: usize,
    /// Network I/O threads.
    pub io_threads: usize,
    /// Whether I/O threads preempt inference when they wake.
    pub io_preempt: IoPreempt,
    /// Connection cap.
    pub max_connections: usize,
    /// Per-connection in-flight cap.
    pub max_in_flight: u32,
    /// Frame body limit.
    pub max_frame_bytes: u32,
    /// Global queue capacity.
    pub queue_capacity: usize,
    /// Most rows per batch (1: no batching).
    pub max_batch: u64,
    /// How long a busy worker runs before it yields the CPU once; `None`: never.
    pub worker_yield: Option<Duration>,
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
    /// Readiness fails this long before the listeners close.
    pub shutdown_delay: Duration,
    /// The HTTP metrics and health listener, if any.
    pub metrics_listen: Option<SocketAddr>,
    /// Whether metrics are recorded.
    pub metrics: bool,
    /// Fraction of inference requests written to the access log.
    pub access_log_sample: f64,
}

/// A plain listen address, or `off`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub enum Listen {
    /// Listen here.
    At(SocketAddr),
    /// No plain TCP listener.
    Off,
}

impl std::str::FromStr for Listen {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s == "off" {
            return Ok(Listen::Off);
        }
        s.parse()
            .map(Listen::At)
            .map_err(|e| format!("{s:?}: {e} (expected IP:PORT or off)"))
    }
}

impl TryFrom<String> for Listen {
    type Error = String;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

/// When the I/O threads preempt inference (`io_preempt`): `true`, `false` or `auto`; in the
/// configuration file also a TOML boolean.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "BoolOrWord")]
pub enum IoPreempt {
    /// The normal policy: a woken I/O thread takes the CPU from a running model.
    Always,
    /// `SCHED_BATCH`: I/O runs when inference blocks, yields or ends its slice.
    Never,
    /// `SCHED_BATCH` while every served model's runs (or each of their operators, where a worker
    /// yields between two) fit in `worker_yield_us`, else the normal policy (`server::io_policy`).
    Auto,
}

impl std::str::FromStr for IoPreempt {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "true" => Ok(IoPreempt::Always),
            "false" => Ok(IoPreempt::Never),
            "auto" => Ok(IoPreempt::Auto),
            _ => Err(format!("{s:?}: expected true, false or auto")),
        }
    }
}

/// A TOML value that is a boolean or a word.
#[derive(Deserialize)]
#[serde(untagged)]
enum BoolOrWord {
    Bool(bool),
    Word(String),
}

impl TryFrom<BoolOrWord> for IoPreempt {
    type Error = String;

    fn try_from(v: BoolOrWord) -> Result<Self, Self::Error> {
        match v {
            BoolOrWord::Bool(true) => Ok(IoPreempt::Always),
            BoolOrWord::Bool(false) => Ok(IoPreempt::Never),
            BoolOrWord::Word(w) => w.parse(),
        }
    }
}

/// The TLS listener's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsListen {
    /// Listen address.
    pub addr: SocketAddr,
    /// Certificate, key, client CA, CRL, versions.
    pub files: crate::server::tls::TlsFiles,
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
        let listen = match args.listen.or(file.listen) {
            None => Some(SocketAddr::from(([127, 0, 0, 1], 7878))),
            Some(Listen::At(addr)) => Some(addr),
            Some(Listen::Off) => None,
        };
        let tls_listen = args.tls_listen.or(file.tls_listen);
        let tls_cert = args.tls_cert.clone().or(file.tls_cert);
        let tls_key = args.tls_key.clone().or(file.tls_key);
        let tls = match (tls_listen, tls_cert, tls_key) {
            (None, None, None) => None,
            (Some(addr), Some(cert), Some(key)) => Some(TlsListen {
                addr,
                files: crate::server::tls::TlsFiles {
                    cert,
                    key,
                    client_ca: args.tls_client_ca.clone().or(file.tls_client_ca),
                    crl: args.tls_crl.clone().or(file.tls_crl),
                    allow_tls12: args.tls_allow_tls12 || file.tls_allow_tls12.unwrap_or(false),
                },
            }),
            _ => {
                return Err(ConfigError::Invalid(
                    "TLS needs all of tls_listen, tls_cert and tls_key".into(),
                ))
            }
        };
        let config = ServeConfig {
            listen,
            tls,
            access: args.access.clone().or(file.access),
            admin_loopback: args.admin_loopback.or(file.admin_loopback).unwrap_or(true),
            models: args
                .models
                .clone()
                .or(file.models)
                .unwrap_or_else(|| PathBuf::from("models")),
            repository: crate::model::repository::Settings {
                policy: match (&args.version_policy, &file.version_policy) {
                    (Some(p), _) => p.clone(),
                    (None, Some(text)) => text
                        .parse()
                        .map_err(|e| ConfigError::Invalid(format!("version_policy: {e}")))?,
                    (None, None) => VersionPolicy::default(),
                },
                warmup_runs: args.warmup_runs.or(file.warmup_runs).unwrap_or(3),
                memory_budget: match args.model_memory_mb.or(file.model_memory_mb).unwrap_or(0) {
                    0 => None,
                    mib => Some(mib.saturating_mul(1 << 20)),
                },
                lock_memory: args.lock_memory.or(file.lock_memory).unwrap_or(false),
                cache_dir: model_cache(
                    args.model_cache.clone().or(file.model_cache),
                    std::env::var_os("CACHE_DIRECTORY"),
                ),
                worker_nice: args
                    .worker_nice
                    .or(file.worker_nice)
                    .unwrap_or(crate::priority::DEFAULT_WORKER_NICE),
            },
            model_poll: match args.model_poll_ms.or(file.model_poll_ms).unwrap_or(2_000) {
                0 => None,
                n => Some(ms(n)),
            },
            workers: args.workers.or(file.workers).unwrap_or(cores),
            io_threads: args.io_threads.or(file.io_threads).unwrap_or(1),
            io_preempt: args
                .io_preempt
                .or(file.io_preempt)
                .unwrap_or(IoPreempt::Auto),
            max_connections: args.max_connections.or(file.max_connections).unwrap_or(256),
            max_in_flight: args.max_in_flight.or(file.max_in_flight).unwrap_or(64),
            max_frame_bytes: args
                .max_frame_bytes
                .or(file.max_frame_bytes)
                .unwrap_or(4 << 20),
            queue_capacity: args.queue_capacity.or(file.queue_capacity).unwrap_or(256),
            max_batch: args.max_batch.or(file.max_batch).unwrap_or(32),
            worker_yield: match args
                .worker_yield_us
                .or(file.worker_yield_us)
                .unwrap_or(DEFAULT_WORKER_YIELD_US)
            {
                0 => None,
                us => Some(Duration::from_micros(us)),
            },
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
            shutdown_delay: ms(args
                .shutdown_delay_ms
                .or(file.shutdown_delay_ms)
                .unwrap_or(0)),
            metrics_listen: match args.metrics_listen.or(file.metrics_listen) {
                None => Some(SocketAddr::from(([127, 0, 0, 1], 7879))),
                Some(Listen::At(addr)) => Some(addr),
                Some(Listen::Off) => None,
            },
            metrics: args.metrics.or(file.metrics).unwrap_or(true),
            access_log_sample: args
                .access_log_sample
                .or(file.access_log_sample)
                .unwrap_or(0.0),
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
            self.listen.is_some() || self.tls.is_some(),
            "listen is off and there is no TLS listener",
        )?;
        check(
            self.repository.warmup_runs <= 1000,
            "warmup_runs must be 0..=1000",
        )?;
        check(
            self.model_poll
                .is_none_or(|p| p >= Duration::from_millis(100)),
            "model_poll_ms must be 0 (off) or at least 100",
        )?;
        check(
            (1..=1024).contains(&self.workers),
            "workers must be 1..=1024",
        )?;
        check(
            self.worker_yield
                .is_none_or(|d| d <= Duration::from_secs(1)),
            "worker_yield_us must be 0..=1000000",
        )?;
        check(
            (0..=19).contains(&self.repository.worker_nice),
            "worker_nice must be 0..=19",
        )?;
        check(
            (1..=64).contains(&self.io_threads),
            "io_threads must be 1..=64",
        )?;
        check(
            (1..=65_536).contains(&self.max_batch),
            "max_batch must be 1..=65536",
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
        check(
            (0.0..=1.0).contains(&self.access_log_sample),
            "access_log_sample must be 0..=1",
        )?;
        check(
            self.shutdown_delay <= Duration::from_secs(600),
            "shutdown_delay_ms must be at most 600000",
        )?;
        Ok(())
    }

    /// The idle timeout as a duration.
    pub fn idle_timeout(&self) -> Duration {
        ms(u64::from(self.idle_timeout_ms))
    }
}

/// The cache folder: the setting (`off` or empty turns it off), else the first folder of systemd's
/// `CACHE_DIRECTORY` (colon-separated when a unit names several), else none.
fn model_cache(setting: Option<PathBuf>, systemd: Option<std::ffi::OsString>) -> Option<PathBuf> {
    match setting {
        // An empty INFERD_MODEL_CACHE is unset, not the working directory.
        Some(dir) if dir.as_os_str() == "off" || dir.as_os_str().is_empty() => None,
        Some(dir) => Some(dir),
        None => systemd
            .as_ref()
            .and_then(|v| std::env::split_paths(v).next())
            .filter(|dir| !dir.as_os_str().is_empty()),
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
        assert_eq!(c.listen, Some("127.0.0.1:7878".parse().unwrap()));
        assert_eq!(c.tls, None);
        assert_eq!(c.models, PathBuf::from("models"));
        assert_eq!(c.max_frame_bytes, 4 << 20);
        assert_eq!(c.io_preempt, IoPreempt::Auto);
    }

    #[test]
    fn flags_override_the_file_which_overrides_defaults() {
        let dir = std::env::temp_dir().join(format!("inferd-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("inferd.toml");
        std::fs::write(
            &file,
            "max_in_flight = 7\nqueue_capacity = 9\nio_preempt = false\n",
        )
        .unwrap();
        let args = ServeArgs {
            config: Some(file.clone()),
            queue_capacity: Some(3),
            ..ServeArgs::default()
        };
        let c = ServeConfig::resolve(&args).unwrap();
        assert_eq!((c.max_in_flight, c.queue_capacity), (7, 3));
        assert_eq!(c.io_preempt, IoPreempt::Never);
        std::fs::write(&file, "io_preempt = \"auto\"\n").unwrap();
        let c = ServeConfig::resolve(&args).unwrap();
        assert_eq!(c.io_preempt, IoPreempt::Auto);
        let over = ServeArgs {
            io_preempt: Some("true".parse().unwrap()),
            ..args.clone()
        };
        assert_eq!(
            ServeConfig::resolve(&over).unwrap().io_preempt,
            IoPreempt::Always
        );
        assert!("sometimes".parse::<IoPreempt>().is_err());
        std::fs::write(&file, "io_preempt = \"sometimes\"\n").unwrap();
        assert!(ServeConfig::resolve(&args).is_err());
        std::fs::write(&file, "max_inflight = 7\n").unwrap();
        let err = ServeConfig::resolve(&args).unwrap_err().to_string();
        assert!(err.contains("max_inflight"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn tls_settings_come_together() {
        let only_cert = ServeArgs {
            tls_cert: Some("c.pem".into()),
            ..ServeArgs::default()
        };
        assert!(ServeConfig::resolve(&only_cert)
            .unwrap_err()
            .to_string()
            .contains("TLS needs"));
        let tls_only = ServeArgs {
            listen: Some("off".parse().unwrap()),
            tls_listen: Some("127.0.0.1:7443".parse().unwrap()),
            tls_cert: Some("c.pem".into()),
            tls_key: Some("k.pem".into()),
            ..ServeArgs::default()
        };
        let c = ServeConfig::resolve(&tls_only).unwrap();
        assert_eq!(c.listen, None);
        assert!(!c.tls.unwrap().files.allow_tls12);
        let nothing = ServeArgs {
            listen: Some(Listen::Off),
            ..ServeArgs::default()
        };
        assert!(ServeConfig::resolve(&nothing).is_err());
        assert!("localhost:1".parse::<Listen>().is_err());
    }

    #[test]
    fn the_model_cache_follows_the_setting_then_systemd() {
        let systemd = Some(std::ffi::OsString::from(
            "/var/cache/inferd:/var/cache/other",
        ));
        assert_eq!(
            model_cache(None, systemd.clone()),
            Some(PathBuf::from("/var/cache/inferd"))
        );
        assert_eq!(model_cache(Some("off".into()), systemd.clone()), None);
        assert_eq!(
            model_cache(Some("/srv/c".into()), systemd),
            Some(PathBuf::from("/srv/c"))
        );
        assert_eq!(model_cache(None, None), None);
        assert_eq!(model_cache(Some("".into()), None), None);
        assert_eq!(model_cache(None, Some("".into())), None);
    }

    #[test]
    fn out_of_range_values_are_refused() {
        type Set = fn(&mut ServeArgs);
        let cases: [(&str, Set); 4] = [
            ("max_frame_bytes", |a| a.max_frame_bytes = Some(10)),
            ("workers", |a| a.workers = Some(0)),
            ("worker_yield_us", |a| a.worker_yield_us = Some(1_000_001)),
            ("worker_nice", |a| a.worker_nice = Some(20)),
        ];
        for (key, set) in cases {
            let mut args = ServeArgs::default();
            set(&mut args);
            let message = ServeConfig::resolve(&args).unwrap_err().to_string();
            assert!(message.contains(key), "{key}: {message}");
        }
    }

    #[test]
    fn the_shipped_unit_config_resolves_with_its_repository_settings() {
        let args = ServeArgs {
            config: Some(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("systemd/inferd.toml")),
            ..ServeArgs::default()
        };
        let c = ServeConfig::resolve(&args).unwrap();
        assert_eq!(c.repository.policy, VersionPolicy::Latest(1));
        assert_eq!(c.repository.warmup_runs, 3);
        assert_eq!(c.model_poll, Some(Duration::from_secs(2)));
        let off = ServeArgs {
            model_poll_ms: Some(0),
            version_policy: Some("all".parse().unwrap()),
            ..ServeArgs::default()
        };
        let c = ServeConfig::resolve(&off).unwrap();
        assert_eq!(
            (c.model_poll, c.repository.policy),
            (None, VersionPolicy::All)
        );
        let too_often = ServeArgs {
            model_poll_ms: Some(5),
            ..ServeArgs::default()
        };
        assert!(ServeConfig::resolve(&too_often)
            .unwrap_err()
            .to_string()
            .contains("model_poll_ms"));
    }
}
