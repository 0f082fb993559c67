//! Request errors: what went wrong with one request, as the peer will be told.
//!
//! Internal errors are mapped to a [`RequestError`] once, where they meet a request; its wire
//! [`ErrorCode`] is the single place a cause becomes a number.

use inferd_proto::ErrorCode;

/// One request's failure: a wire code and a human message (never containing tensor data).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct RequestError {
    /// The wire code.
    pub code: ErrorCode,
    /// Detail for a human.
    pub message: String,
    /// When a retry may succeed (sent with `OVERLOADED`).
    pub retry_after: Option<std::time::Duration>,
}

impl RequestError {
    /// A new error.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        RequestError {
            code,
            message: message.into(),
            retry_after: None,
        }
    }

    /// The same error with a retry-after hint.
    #[must_use]
    pub fn retry_after(mut self, after: std::time::Duration) -> Self {
        self.retry_after = Some(after);
        self
    }
}
