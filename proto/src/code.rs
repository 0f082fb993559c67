//! Error codes carried in an `Error` response.
//!
//! A code is a plain `u16` on the wire so that a client built against an older table still decodes a
//! newer code (and can print its message). Codes are never reused or renumbered. `doc/PROTOCOL.md`
//! lists each with what a client should do about it.

use serde::{Deserialize, Serialize};

/// A wire error code. The associated constants are the codes this version defines.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ErrorCode(pub u16);

macro_rules! codes {
    ($($(#[$doc:meta])* $name:ident = $value:expr, $text:expr;)*) => {
        impl ErrorCode {
            $($(#[$doc])* pub const $name: ErrorCode = ErrorCode($value);)*

            /// Every code defined by this version, in numeric order.
            pub const ALL: &'static [ErrorCode] = &[$(ErrorCode::$name),*];

            /// A stable snake_case name for logs and metrics; `unknown` for codes this version lacks.
            pub const fn name(self) -> &'static str {
                match self.0 {
                    $($value => $text,)*
                    _ => "unknown",
                }
            }
        }
    };
}

codes! {
    // Framing: the connection is closed after these.
    /// The header's magic or reserved bits are wrong. Connection closed.
    MALFORMED_HEADER = 1, "malformed_header";
    /// Protocol version not supported (header byte or hello range). Connection closed.
    UNSUPPORTED_VERSION = 2, "unsupported_version";
    /// The announced body is longer than the server's `max_frame_bytes`. Connection closed.
    FRAME_TOO_LARGE = 3, "frame_too_large";
    /// The body is not a valid postcard message, or has trailing bytes. Connection closed.
    MALFORMED_BODY = 4, "malformed_body";
    /// A message arrived that is not valid at this point (anything before `Hello`, a second `Hello`).
    /// Connection closed.
    UNEXPECTED_MESSAGE = 5, "unexpected_message";
    /// The handshake, a frame or the idle period took longer than the server allows. Connection closed.
    TIMEOUT = 6, "timeout";

    // Request errors: only that request fails; the connection stays open.
    /// No model of that name is served.
    UNKNOWN_MODEL = 10, "unknown_model";
    /// The model exists but not in the requested version.
    UNKNOWN_VERSION = 11, "unknown_version";
    /// An input name the model does not have, or a required input missing, or a name given twice.
    WRONG_INPUT_NAME = 12, "wrong_input_name";
    /// More or fewer inputs than the model takes.
    WRONG_INPUT_COUNT = 13, "wrong_input_count";
    /// An input's dtype differs from the model's.
    WRONG_DTYPE = 14, "wrong_dtype";
    /// An input's shape is incompatible with the model's declared shape (rank or a fixed dimension),
    /// or inputs disagree on the size of a shared symbolic dimension.
    WRONG_SHAPE = 15, "wrong_shape";
    /// A tensor's byte length does not match its shape and dtype, or a bool byte is not 0 or 1.
    BAD_TENSOR_DATA = 16, "bad_tensor_data";
    /// The request id is already in flight on this connection.
    DUPLICATE_REQUEST_ID = 17, "duplicate_request_id";
    /// The connection's identity (client certificate) may not use that model or operation.
    NOT_AUTHORIZED = 18, "not_authorized";

    // Load and lifecycle: retrying later (or elsewhere) may succeed.
    /// The server's queue is full; nothing was computed. Retry with backoff or another node.
    OVERLOADED = 20, "overloaded";
    /// This connection already has `max_in_flight` requests outstanding.
    TOO_MANY_IN_FLIGHT = 21, "too_many_in_flight";
    /// The server is shutting down and accepts no new requests. Retry on another node.
    SHUTTING_DOWN = 22, "shutting_down";
    /// The request's deadline passed before it was computed; it was not run.
    DEADLINE_EXCEEDED = 23, "deadline_exceeded";
    /// The client cancelled the request before it started; it was not run.
    CANCELLED = 24, "cancelled";
    /// The model is loaded on demand (`pinned = false`) and is not resident now: loading has begun,
    /// or it does not fit the memory budget (the message says which). Retry shortly.
    NOT_LOADED = 25, "not_loaded";

    // Server faults.
    /// The model failed while running this request (logged on the server).
    INTERNAL = 30, "internal";
    /// The response would exceed the server's `max_frame_bytes`.
    RESPONSE_TOO_LARGE = 31, "response_too_large";
}

impl ErrorCode {
    /// Whether the server closes the connection after sending this code.
    pub const fn closes_connection(self) -> bool {
        matches!(self.0, 1..=6)
    }
}

impl core::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "{} ({})", self.name(), self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_unique_and_sorted() {
        for pair in ErrorCode::ALL.windows(2) {
            assert!(pair[0].0 < pair[1].0, "{:?} then {:?}", pair[0], pair[1]);
        }
        assert_eq!(ErrorCode(999).name(), "unknown");
        assert!(ErrorCode::MALFORMED_BODY.closes_connection());
        assert!(!ErrorCode::UNKNOWN_MODEL.closes_connection());
    }
}
