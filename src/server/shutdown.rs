//! The shutdown signal: set once (SIGTERM, SIGINT, or a [`super::ServerHandle`]), observed by the accept
//! loop (stop accepting) and by every connection (answer new requests `SHUTTING_DOWN`, finish what is in
//! flight, then close).

use std::sync::atomic::{AtomicBool, Ordering};

use event_listener::Event;

/// A one-way latch that tasks can wait on.
#[derive(Debug, Default)]
pub struct Shutdown {
    triggered: AtomicBool,
    event: Event,
}

impl Shutdown {
    /// Begins shutdown; later calls do nothing.
    pub fn trigger(&self) {
        if !self.triggered.swap(true, Ordering::AcqRel) {
            self.event.notify(usize::MAX);
        }
    }

    /// Whether shutdown has begun.
    pub fn is_triggered(&self) -> bool {
        self.triggered.load(Ordering::Acquire)
    }

    /// Resolves once shutdown has begun.
    pub async fn wait(&self) {
        crate::tracker::wait_until(&self.event, || self.is_triggered()).await;
    }
}
