//! Counts of connections and requests refused for who they are, by cause.

use std::sync::atomic::{AtomicU64, Ordering};

/// Connections and requests refused for who they are (not for what they sent), by cause. Kept for
/// operators: logged at shutdown, readable through [`super::ServerHandle::refusals`].
#[derive(Debug, Default)]
pub struct Refusals {
    pub(super) tls_handshake: AtomicU64,
    pub(super) tls_timeout: AtomicU64,
    not_authorized: AtomicU64,
    pub(super) connection_cap: AtomicU64,
}

/// A snapshot of [`Refusals`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RefusalCounts {
    /// TLS handshakes that failed (untrusted, expired, revoked or misused certificates, old protocol
    /// versions, no certificate where one is required).
    pub tls_handshake: u64,
    /// TLS handshakes that did not finish within the handshake timeout.
    pub tls_timeout: u64,
    /// Requests answered `NOT_AUTHORIZED`.
    pub not_authorized: u64,
    /// Connections refused at the connection cap.
    pub connection_cap: u64,
}

impl Refusals {
    pub(super) fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// A snapshot.
    pub fn counts(&self) -> RefusalCounts {
        RefusalCounts {
            tls_handshake: self.tls_handshake.load(Ordering::Relaxed),
            tls_timeout: self.tls_timeout.load(Ordering::Relaxed),
            not_authorized: self.not_authorized.load(Ordering::Relaxed),
            connection_cap: self.connection_cap.load(Ordering::Relaxed),
        }
    }

    /// Counts a `NOT_AUTHORIZED` answer.
    pub fn not_authorized(&self) {
        Refusals::bump(&self.not_authorized);
    }
}
