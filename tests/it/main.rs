//! The integration test binary: real servers on 127.0.0.1:0, real models, real clients.
//!
//! One binary (faster to link than one per file); each module is one area of behaviour.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "a panic is how a test fails"
)]

mod bench;
mod cache;
mod cross;
mod errors;
mod haproxy;
mod harness;
mod lifecycle;
mod load;
mod models;
mod observability;
mod per_model;
mod priority;
mod raw;
mod scheduling;
mod shutdown;
mod systemd;
mod tls;
mod traps;
mod validate;
