//! The fixed frame header and the incremental frame decoder.
//!
//! Every frame is a 12-byte header followed by `body_len` bytes of postcard. The header is checked in
//! full (magic, version, flags, reserved bytes, length against the caller's limit) before a single byte
//! of the body is looked at or any buffer is sized for it, so a peer cannot make the reader allocate
//! more than the configured maximum.

/// The four bytes every frame starts with: ASCII `INFD`.
pub const MAGIC: [u8; 4] = *b"INFD";
/// The only protocol version this crate speaks.
pub const PROTOCOL_VERSION: u8 = 1;
/// Length of the fixed frame header in bytes.
pub const HEADER_LEN: usize = 12;

/// A decoded, validated frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    /// Protocol version the body is encoded in.
    pub version: u8,
    /// Flag bits; none are defined in version 1 and all must be zero.
    pub flags: u8,
    /// Length of the postcard body that follows the header.
    pub body_len: u32,
}

/// Why a frame header was refused. Each of these closes the connection: after a framing error the
/// reader no longer knows where the next frame starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameError {
    /// The first four bytes are not [`MAGIC`].
    BadMagic,
    /// The version byte names a version this side does not speak.
    UnsupportedVersion(u8),
    /// Flag bits or reserved bytes are set that version 1 does not define.
    ReservedBitsSet,
    /// The body is longer than the receiver's configured maximum.
    TooLarge {
        /// Length the header announced.
        len: u32,
        /// The receiver's limit.
        max: u32,
    },
}

impl core::fmt::Display for FrameError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            FrameError::BadMagic => f.write_str("bad magic: not an inferd frame"),
            FrameError::UnsupportedVersion(v) => write!(f, "unsupported protocol version {v}"),
            FrameError::ReservedBitsSet => f.write_str("reserved flag bits or bytes are set"),
            FrameError::TooLarge { len, max } => {
                write!(f, "frame body of {len} bytes exceeds the limit of {max}")
            }
        }
    }
}

#[cfg(feature = "std")]
impl std::error::Error for FrameError {}

impl FrameHeader {
    /// A version-1 header for a body of `body_len` bytes.
    pub fn new(body_len: u32) -> Self {
        FrameHeader {
            version: PROTOCOL_VERSION,
            flags: 0,
            body_len,
        }
    }

    /// The 12 header bytes: magic, version, flags, two reserved zero bytes, body length (u32 LE).
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut out = [0u8; HEADER_LEN];
        out[..4].copy_from_slice(&MAGIC);
        out[4] = self.version;
        out[5] = self.flags;
        out[8..].copy_from_slice(&self.body_len.to_le_bytes());
        out
    }

    /// Parses and validates a header against `max_body`.
    ///
    /// # Errors
    /// Any [`FrameError`]; the checks run in wire order, so a stream of garbage is reported as
    /// [`FrameError::BadMagic`].
    pub fn decode(bytes: &[u8; HEADER_LEN], max_body: u32) -> Result<Self, FrameError> {
        if bytes[..4] != MAGIC {
            return Err(FrameError::BadMagic);
        }
        let version = bytes[4];
        if version != PROTOCOL_VERSION {
            return Err(FrameError::UnsupportedVersion(version));
        }
        let flags = bytes[5];
        if flags != 0 || bytes[6] != 0 || bytes[7] != 0 {
            return Err(FrameError::ReservedBitsSet);
        }
        let body_len = u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]);
        if body_len > max_body {
            return Err(FrameError::TooLarge {
                len: body_len,
                max: max_body,
            });
        }
        Ok(FrameHeader {
            version,
            flags,
            body_len,
        })
    }
}

/// A complete frame found at the start of a buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame<'a> {
    /// The validated header.
    pub header: FrameHeader,
    /// The body, borrowed from the buffer.
    pub body: &'a [u8],
    /// Bytes the frame occupies (header + body): where the next frame starts.
    pub consumed: usize,
}

/// Finds the first complete frame at the start of `buf`.
///
/// Returns `Ok(None)` while more bytes are needed (a partial header, or a valid header whose body has
/// not fully arrived), and `Ok(Some(frame))` once the whole frame is present.
///
/// # Errors
/// The header's [`FrameError`] as soon as the 12 header bytes are present, before waiting for the body.
pub fn decode_frame(buf: &[u8], max_body: u32) -> Result<Option<Frame<'_>>, FrameError> {
    let Some(head) = buf.get(..HEADER_LEN) else {
        return Ok(None);
    };
    let mut fixed = [0u8; HEADER_LEN];
    fixed.copy_from_slice(head);
    let header = FrameHeader::decode(&fixed, max_body)?;
    // body_len <= max_body (a u32) was checked above; on 16-bit targets the conversion can still fail,
    // which is then simply "too large for this device".
    let Ok(body_len) = usize::try_from(header.body_len) else {
        return Err(FrameError::TooLarge {
            len: header.body_len,
            max: max_body,
        });
    };
    let Some(end) = HEADER_LEN.checked_add(body_len) else {
        return Err(FrameError::TooLarge {
            len: header.body_len,
            max: max_body,
        });
    };
    match buf.get(HEADER_LEN..end) {
        Some(body) => Ok(Some(Frame {
            header,
            body,
            consumed: end,
        })),
        None => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trips_and_pins_bytes() {
        let h = FrameHeader::new(0x0102_0304);
        let bytes = h.encode();
        assert_eq!(
            bytes,
            [b'I', b'N', b'F', b'D', 1, 0, 0, 0, 0x04, 0x03, 0x02, 0x01]
        );
        assert_eq!(FrameHeader::decode(&bytes, u32::MAX), Ok(h));
    }

    #[test]
    fn header_rejections() {
        let good = FrameHeader::new(10).encode();
        let mut b = good;
        b[0] = b'X';
        assert_eq!(FrameHeader::decode(&b, 100), Err(FrameError::BadMagic));
        let mut b = good;
        b[4] = 2;
        assert_eq!(
            FrameHeader::decode(&b, 100),
            Err(FrameError::UnsupportedVersion(2))
        );
        let mut b = good;
        b[5] = 1;
        assert_eq!(
            FrameHeader::decode(&b, 100),
            Err(FrameError::ReservedBitsSet)
        );
        let mut b = good;
        b[7] = 1;
        assert_eq!(
            FrameHeader::decode(&b, 100),
            Err(FrameError::ReservedBitsSet)
        );
        assert_eq!(
            FrameHeader::decode(&good, 9),
            Err(FrameError::TooLarge { len: 10, max: 9 })
        );
        assert!(FrameHeader::decode(&good, 10).is_ok());
    }

    #[test]
    fn decode_frame_needs_more_then_completes() {
        let mut buf = [0u8; 20];
        buf[..12].copy_from_slice(&FrameHeader::new(3).encode());
        buf[12..15].copy_from_slice(&[7, 8, 9]);
        for cut in 0..15 {
            assert_eq!(decode_frame(&buf[..cut], 100), Ok(None), "cut at {cut}");
        }
        let f = decode_frame(&buf, 100).unwrap().unwrap();
        assert_eq!(
            (f.header.body_len, f.body, f.consumed),
            (3, &[7u8, 8, 9][..], 15)
        );
    }

    #[test]
    fn oversize_is_refused_before_the_body_arrives() {
        let header = FrameHeader::new(1_000_000).encode();
        assert_eq!(
            decode_frame(&header, 1000),
            Err(FrameError::TooLarge {
                len: 1_000_000,
                max: 1000
            })
        );
    }
}
