//! The `inferd` command line: `serve`, `infer`, `models`, `ping`, `health`, `stats`, `top`, `reload`,
//! `certs`, `bench`.
//!
//! Flags are parsed by clap (each with an environment variable); each subcommand lives in its own file
//! and returns an exit code, errors bubbling up as `anyhow` to `main`.

mod bench;
mod certs;
mod infer;
mod query;
mod serve;
mod stats;
mod validate;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

use crate::client::{BlockingClient, ClientOptions, ClientTls};
use crate::config::ServeArgs;

/// inferd: a small inference daemon for edge nodes.
#[derive(Debug, Parser)]
#[command(name = "inferd", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve the model repository over TCP.
    Serve(Box<ServeArgs>),
    /// Run one inference on .npy inputs and print (or save) the outputs.
    Infer(InferArgs),
    /// List served models with their inputs and outputs; with --http, every version in the
    /// repository with its state (serving, loading, failed, standby) and why.
    Models(query::ModelsArgs),
    /// Check that a server answers, and how fast.
    Ping(ClientArgs),
    /// Ask whether a server takes traffic; exit status 0 only when ready (for scripts and probes).
    Health(ClientArgs),
    /// Per-model counters since start: throughput, errors, p50/p99, queue depth, in flight.
    Stats(stats::StatsArgs),
    /// A live view of throughput, p50/p99, queue depth and errors per model.
    Top(stats::TopArgs),
    /// Ask a server to re-read its TLS material and access policy (admin; as SIGHUP does).
    Reload(ClientArgs),
    /// Write a development CA, server certificate and device certificate (PEM) for trying TLS.
    Certs(certs::CertsArgs),
    /// Load a server (closed or open loop) and report throughput, latency percentiles and errors.
    Bench(bench::BenchArgs),
    /// Compare two variants of a model (fp32 and int8, say) over a data set: latency (p50/p99) and
    /// quality (max/mean abs error, cosine, argmax agreement) side by side, pass or fail against
    /// thresholds; exit status 0 only on pass.
    Validate(validate::ValidateArgs),
}

/// Where a client subcommand connects.
#[derive(Debug, Clone, clap::Args)]
pub struct ClientArgs {
    /// Server address, IP:PORT.
    #[arg(long, env = "INFERD_ADDR", default_value = "127.0.0.1:7878")]
    pub addr: SocketAddr,
    /// Connect and per-request timeout in milliseconds.
    #[arg(long, env = "INFERD_TIMEOUT_MS", default_value_t = 10_000)]
    pub timeout_ms: u64,
    /// Speak TLS 1.3, trusting the CA certificates in this PEM file.
    #[arg(long, env = "INFERD_TLS_CA")]
    pub tls_ca: Option<PathBuf>,
    /// Client (device) certificate, PEM, for servers that require one.
    #[arg(long, env = "INFERD_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The client certificate's private key, PEM.
    #[arg(long, env = "INFERD_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Name the server certificate must carry. [default: the IP address of --addr]
    #[arg(long, env = "INFERD_TLS_SERVER_NAME")]
    pub tls_server_name: Option<String>,
}

impl ClientArgs {
    /// Connection options from the flags.
    fn options(&self) -> anyhow::Result<ClientOptions> {
        let t = Duration::from_millis(self.timeout_ms);
        let tls = match &self.tls_ca {
            Some(ca) => {
                let identity = self.tls_cert.as_deref().zip(self.tls_key.as_deref());
                let name = self
                    .tls_server_name
                    .clone()
                    .unwrap_or_else(|| self.addr.ip().to_string());
                Some(ClientTls::from_files(ca, identity, &name).map_err(anyhow::Error::msg)?)
            }
            None if self.tls_cert.is_some() => anyhow::bail!("--tls-cert needs --tls-ca"),
            None => None,
        };
        let options = ClientOptions {
            tls,
            connect_timeout: t,
            request_timeout: t,
            ..ClientOptions::default()
        };
        Ok(options)
    }

    fn connect(&self) -> anyhow::Result<BlockingClient> {
        let options = self.options()?;
        BlockingClient::connect(self.addr, options)
            .map_err(|e| anyhow::anyhow!("cannot reach {}: {e}", self.addr))
    }
}

/// Flags of `inferd infer`.
#[derive(Debug, Clone, clap::Args)]
pub struct InferArgs {
    /// Server to ask.
    #[command(flatten)]
    pub client: ClientArgs,
    /// Model name.
    #[arg(long)]
    pub model: String,
    /// Model version (default: the newest served).
    #[arg(long)]
    pub version: Option<u32>,
    /// An input as NAME=FILE.npy; repeat for each input.
    #[arg(long = "input", value_name = "NAME=FILE.npy", required = true)]
    pub inputs: Vec<String>,
    /// Write each output to DIR/<output name>.npy (other characters than letters, digits, '-', '_'
    /// become '_').
    #[arg(long, value_name = "DIR")]
    pub output: Option<PathBuf>,
    /// Deadline in milliseconds; the server refuses the request if it cannot start it in time.
    #[arg(long)]
    pub deadline_ms: Option<u64>,
}

/// Runs a parsed command line.
///
/// # Errors
/// Whatever the subcommand reports; `main` prints it and exits 1.
pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Serve(args) => serve::run(&args),
        Command::Infer(args) => infer::run(&args),
        Command::Models(args) => query::models(&args),
        Command::Ping(args) => query::ping(&args),
        Command::Health(args) => query::health(&args),
        Command::Stats(args) => stats::stats(&args),
        Command::Top(args) => stats::top(&args),
        Command::Reload(args) => query::reload(&args),
        Command::Certs(args) => certs::run(&args),
        Command::Bench(args) => bench::run(&args),
        Command::Validate(args) => validate::run(&args),
    }
}
