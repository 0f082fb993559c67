//! A counter of live things (connections) that can be waited on until it is zero, and the wait-on-an-
//! event helper the shutdown latch and in-flight sets share.
//!
//! Shutdown is "stop admitting, then wait for the count to drain": each admitted thing holds a
//! [`Guard`], and dropping the last guard wakes whoever waits.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use event_listener::Event;

/// A shared, waitable count with an optional cap.
#[derive(Debug, Default)]
pub struct Tracker {
    count: AtomicUsize,
    zero: Event,
}

/// Holds one unit of a [`Tracker`]; dropping it releases the unit.
#[derive(Debug)]
pub struct Guard {
    tracker: Arc<Tracker>,
}

impl Tracker {
    /// A tracker at zero.
    pub fn new() -> Arc<Tracker> {
        Arc::new(Tracker::default())
    }

    /// Takes a unit if fewer than `cap` are held.
    pub fn try_enter(self: &Arc<Self>, cap: usize) -> Option<Guard> {
        self.count
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < cap).then_some(n + 1)
            })
            .ok()
            .map(|_| Guard {
                tracker: Arc::clone(self),
            })
    }

    /// Units currently held.
    pub fn count(&self) -> usize {
        self.count.load(Ordering::Acquire)
    }

    /// Resolves once no unit is held.
    pub async fn wait_zero(&self) {
        wait_until(&self.zero, || self.count() == 0).await;
    }
}

/// Resolves once `done()` holds, re-checking each time `event` fires. The condition is checked again
/// after registering the listener, so a notification between check and listen is never missed.
pub async fn wait_until(event: &Event, done: impl Fn() -> bool) {
    loop {
        if done() {
            return;
        }
        let listener = event.listen();
        if done() {
            return;
        }
        listener.await;
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        if self.tracker.count.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.tracker.zero.notify(usize::MAX);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_and_drains() {
        let t = Tracker::new();
        let a = t.try_enter(2).unwrap();
        let b = t.try_enter(2).unwrap();
        assert!(t.try_enter(2).is_none());
        assert_eq!(t.count(), 2);
        drop(a);
        let waiter = {
            let t = Arc::clone(&t);
            std::thread::spawn(move || futures_lite::future::block_on(t.wait_zero()))
        };
        drop(b);
        waiter.join().unwrap();
        assert_eq!(t.count(), 0);
    }
}
