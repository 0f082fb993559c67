//! The frame decoder: never panics, never reports a frame longer than the limit, and a frame it
//! accepts re-encodes to the same header bytes.
#![no_main]

use inferd_proto::frame::decode_frame;
use inferd_proto::{FrameHeader, HEADER_LEN};
use libfuzzer_sys::fuzz_target;

/// The limit used here: small, so that the oversize path is reached often.
const MAX_BODY: u32 = 4096;

fuzz_target!(|data: &[u8]| {
    let mut rest = data;
    // Decode frames back to back, as a connection would.
    while let Ok(Some(frame)) = decode_frame(rest, MAX_BODY) {
        assert!(frame.header.body_len <= MAX_BODY);
        assert_eq!(frame.body.len(), frame.header.body_len as usize);
        assert_eq!(frame.consumed, HEADER_LEN + frame.body.len());
        assert_eq!(&FrameHeader::new(frame.header.body_len).encode()[..], &rest[..HEADER_LEN]);
        rest = &rest[frame.consumed..];
    }
});
