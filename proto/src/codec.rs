//! postcard encoding of bodies and whole frames.
//!
//! postcard is neither a framing layer nor self-describing: the frame header supplies the length, and
//! this module insists that a body is consumed exactly (trailing bytes are an error, so two encoders
//! cannot disagree silently about a message's extent).

use serde::{Deserialize, Serialize};

use crate::frame::{FrameHeader, HEADER_LEN};

/// A body that is not exactly one valid message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecodeError {
    /// postcard could not decode the body (bad varint, unknown variant, bad UTF-8, too many items for
    /// a bounded list, truncated input, ...).
    Invalid,
    /// A message decoded but bytes were left over.
    TrailingBytes(usize),
}

impl core::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            DecodeError::Invalid => f.write_str("body is not a valid message"),
            DecodeError::TrailingBytes(n) => write!(f, "{n} trailing bytes after the message"),
        }
    }
}

#[cfg(feature = "std")]
impl std::error::Error for DecodeError {}

/// A message that could not be encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EncodeError {
    /// The output buffer is too small, or the body exceeds the frame limit.
    TooLarge,
    /// The serializer refused the value.
    Invalid,
}

impl core::fmt::Display for EncodeError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            EncodeError::TooLarge => f.write_str("message too large for the frame or buffer"),
            EncodeError::Invalid => f.write_str("message cannot be encoded"),
        }
    }
}

#[cfg(feature = "std")]
impl std::error::Error for EncodeError {}

/// Decodes exactly one message from a frame body, borrowing strings and tensor bytes from it.
///
/// # Errors
/// [`DecodeError::Invalid`] for anything postcard refuses, [`DecodeError::TrailingBytes`] when the
/// message ends before the body does.
pub fn decode_body<'a, T: Deserialize<'a>>(body: &'a [u8]) -> Result<T, DecodeError> {
    let (value, rest) = postcard::take_from_bytes(body).map_err(|_| DecodeError::Invalid)?;
    if !rest.is_empty() {
        return Err(DecodeError::TrailingBytes(rest.len()));
    }
    Ok(value)
}

/// Encodes `msg` as a whole frame (header + body) into `buf`, returning the used prefix.
///
/// # Errors
/// [`EncodeError::TooLarge`] if `buf` cannot hold the frame or the body exceeds `u32::MAX`.
pub fn encode_frame<'b, T: Serialize>(msg: &T, buf: &'b mut [u8]) -> Result<&'b [u8], EncodeError> {
    let Some(body_buf) = buf.get_mut(HEADER_LEN..) else {
        return Err(EncodeError::TooLarge);
    };
    let body_len = postcard::to_slice(msg, body_buf).map_err(map_ser)?.len();
    let len32 = u32::try_from(body_len).map_err(|_| EncodeError::TooLarge)?;
    buf[..HEADER_LEN].copy_from_slice(&FrameHeader::new(len32).encode());
    Ok(&buf[..HEADER_LEN + body_len])
}

/// Encodes `msg` as a whole frame into a new `Vec`, refusing bodies longer than `max_body`.
///
/// # Errors
/// [`EncodeError::TooLarge`] past `max_body`.
#[cfg(feature = "std")]
pub fn encode_frame_vec<T: Serialize>(
    msg: &T,
    max_body: u32,
) -> Result<std::vec::Vec<u8>, EncodeError> {
    let mut out = std::vec![0u8; HEADER_LEN];
    out = postcard::to_extend(msg, out).map_err(map_ser)?;
    let body_len = u32::try_from(out.len() - HEADER_LEN).map_err(|_| EncodeError::TooLarge)?;
    if body_len > max_body {
        return Err(EncodeError::TooLarge);
    }
    out[..HEADER_LEN].copy_from_slice(&FrameHeader::new(body_len).encode());
    Ok(out)
}

fn map_ser(e: postcard::Error) -> EncodeError {
    match e {
        postcard::Error::SerializeBufferFull => EncodeError::TooLarge,
        _ => EncodeError::Invalid,
    }
}
