//! inferd: a small inference daemon for edge nodes.
//!
//! Module map (the path of one request is in `doc/ARCHITECTURE.md`):
//! - [`config`]: serve settings from flags, environment and an optional TOML file; validated, resolved.
//! - [`server`]: accept loops (plain and TLS), connections, access policy, graceful shutdown.
//! - [`scheduler`]: the bounded job queue and the dedicated inference worker threads.
//! - [`model`]: the model repository, manifests, input validation and the tract runtime (the only
//!   module that names tract).
//! - [`client`]: async client with pipelining, deadlines and TLS, plus a blocking wrapper.
//! - [`certs`]: development CA, server and device certificates (rcgen).
//! - [`cli`]: the `inferd` subcommands.
//! - [`systemd`]: readiness/status/watchdog notifications and socket activation, without libsystemd.
//! - [`tensor`], [`npy`]: owned tensors and numpy files.
//! - [`error`]: request errors and their wire codes.
//! - [`framed`]: whole frames over any async stream, under timeouts (server and client).
//! - [`loadgen`]: the load generator behind `inferd bench` (closed and open loop, HdrHistogram).
//! - [`logging`]: `env_logger` set up for a terminal or for journald.
//! - [`metrics`]: the Prometheus series the server records and the text a scrape returns.
//!
//! The wire types themselves live in the `no_std` crate [`inferd_proto`].

#[cfg(target_endian = "big")]
compile_error!("inferd copies little-endian wire tensors directly into memory; big-endian hosts are unsupported");

pub mod certs;
pub mod cli;
pub mod client;
pub mod config;
pub mod error;
pub mod framed;
pub mod loadgen;
pub mod logging;
pub mod metrics;
pub mod model;
pub mod npy;
pub mod priority;
pub mod quality;
pub mod scheduler;
pub mod server;
pub mod systemd;
pub mod tensor;
mod tracker;

pub use inferd_proto as proto;
