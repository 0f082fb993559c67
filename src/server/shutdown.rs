//! The shutdown signal, in two steps. `drain` (SIGTERM, SIGINT, or a [`super::ServerHandle`]) fails
//! readiness at once while everything else goes on, so that load balancers stop sending new
//! connections; `stop`, `shutdown_delay` later, closes the listeners and makes every connection answer
//! new requests `SHUTTING_DOWN`, finish what is in flight, then close.

use std::sync::atomic::{AtomicBool, Ordering};

use event_listener::Event;

/// Two one-way latches that tasks can wait on.
#[derive(Debug, Default)]
pub struct Shutdown {
    draining: AtomicBool,
    stopping: AtomicBool,
    event: Event,
}

impl Shutdown {
    /// Begins shutdown (readiness fails); later calls do nothing.
    pub fn drain(&self) {
        if !self.draining.swap(true, Ordering::AcqRel) {
            self.event.notify(usize::MAX);
        }
    }

    /// Stops accepting and admitting; implies `drain`.
    pub fn stop(&self) {
        self.drain();
        if !self.stopping.swap(true, Ordering::AcqRel) {
            self.event.notify(usize::MAX);
        }
    }

    /// Whether shutdown has begun (readiness is failing).
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    /// Whether the listeners are closing and new requests are refused.
    pub fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::Acquire)
    }

    /// Resolves once shutdown has begun.
    pub async fn wait_draining(&self) {
        crate::tracker::wait_until(&self.event, || self.is_draining()).await;
    }

    /// Resolves once the server stops accepting.
    pub async fn wait_stopping(&self) {
        crate::tracker::wait_until(&self.event, || self.is_stopping()).await;
    }
}
