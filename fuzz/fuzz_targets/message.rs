//! Message decoding: never panics; bounded lists never exceed their capacity (they live inline, so a
//! peer's counts allocate nothing); whatever decodes re-encodes, decodes again to an equal message,
//! and re-encodes to the same bytes (the encoding is stable).
#![no_main]

use inferd_proto::codec::encode_frame_vec;
use inferd_proto::{decode_body, Request, Response, HEADER_LEN};
use libfuzzer_sys::fuzz_target;

macro_rules! round_trip {
    ($ty:ident, $data:expr) => {
        if let Ok(msg) = decode_body::<$ty>($data) {
            let frame = encode_frame_vec(&msg, u32::MAX).expect("a decoded message encodes");
            let again = decode_body::<$ty>(&frame[HEADER_LEN..]).expect("a re-encoded message decodes");
            assert_eq!(again, msg);
            let frame2 = encode_frame_vec(&again, u32::MAX).expect("encodes again");
            assert_eq!(frame, frame2, "the encoding is not stable");
        }
    };
}

fuzz_target!(|data: &[u8]| {
    round_trip!(Request, data);
    round_trip!(Response, data);
});
