//! inferd wire protocol, version 1.
//!
//! This crate is the single definition of what travels between an inferd server and its clients. It is
//! `no_std` and never allocates, so that an embedded Rust device can build requests and read answers
//! with nothing but a byte buffer; the server and the Rust client use exactly the same types.
//!
//! Module map:
//! - [`frame`]: the fixed 12-byte frame header (magic, version, flags, body length) and the incremental
//!   frame decoder. Pure functions over byte slices.
//! - [`tensor`]: element types, shapes and borrowed tensors (`dtype`, `shape`, raw little-endian bytes).
//! - [`message`]: every request and response body. Variants are append-only: postcard encodes an enum
//!   variant as its declaration index, so reordering would silently change the wire.
//! - [`code`]: the error codes carried by an `Error` response.
//! - [`codec`]: postcard encode/decode of bodies and whole frames, rejecting trailing bytes.
//!
//! The written specification, with example bytes, is `doc/PROTOCOL.md` at the repository root; the
//! golden-byte tests in `tests/golden.rs` keep the two in step.
#![cfg_attr(not(feature = "std"), no_std)]

pub mod code;
pub mod codec;
pub mod frame;
pub mod message;
pub mod tensor;

pub use code::ErrorCode;
#[cfg(feature = "std")]
pub use codec::encode_frame_vec;
pub use codec::{decode_body, encode_frame, DecodeError, EncodeError};
pub use frame::{Frame, FrameError, FrameHeader, HEADER_LEN, MAGIC, PROTOCOL_VERSION};
pub use message::*;
pub use tensor::{DType, Dim, Tensor, TensorError, TensorInfo};

/// Most tensors one request or response may carry (inputs or outputs).
pub const MAX_TENSORS: usize = 16;
/// Highest tensor rank the protocol can express.
pub const MAX_RANK: usize = 8;
/// Most entries one `Models` listing carries; a server with more lists the first ones by name.
pub const MAX_MODELS: usize = 64;
/// Upper bounds, in microseconds, of the latency histogram buckets that `Stats` reports and that the
/// server's Prometheus histograms use (in seconds). Fixed, so that histograms from a fleet can be summed.
pub const LATENCY_BUCKETS_US: [u32; 18] = [
    50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000,
    1_000_000, 2_500_000, 5_000_000, 10_000_000, 30_000_000,
];
/// Entries of a latency histogram in `Stats`: one per bound, plus the total (`+Inf`).
pub const LATENCY_BUCKETS: usize = LATENCY_BUCKETS_US.len() + 1;
