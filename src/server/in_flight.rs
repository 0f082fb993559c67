//! The requests one connection has in flight: capped, unique ids, each with a cancellation flag shared
//! with its queued job.

use std::collections::HashMap;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use event_listener::Event;
use inferd_proto::ErrorCode;

use crate::error::RequestError;

/// In-flight ids of one connection.
#[derive(Debug)]
pub struct InFlight {
    ids: Mutex<HashMap<u32, Arc<AtomicBool>>>,
    cap: usize,
    emptied: Event,
}

impl InFlight {
    /// An empty set holding at most `cap` ids.
    pub fn new(cap: usize) -> Self {
        InFlight {
            ids: Mutex::new(HashMap::new()),
            cap,
            emptied: Event::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<u32, Arc<AtomicBool>>> {
        // The map stays consistent even if a holder panicked: every operation is a single insert/remove.
        self.ids.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Adds `id`, returning its cancellation flag.
    ///
    /// # Errors
    /// `DUPLICATE_REQUEST_ID` or `TOO_MANY_IN_FLIGHT`.
    pub fn admit(&self, id: u32) -> Result<Arc<AtomicBool>, RequestError> {
        let mut ids = self.lock();
        if ids.contains_key(&id) {
            return Err(RequestError::new(
                ErrorCode::DUPLICATE_REQUEST_ID,
                format!("request id {id} is already in flight"),
            ));
        }
        if ids.len() >= self.cap {
            return Err(RequestError::new(
                ErrorCode::TOO_MANY_IN_FLIGHT,
                format!(
                    "this connection already has {} requests in flight",
                    self.cap
                ),
            ));
        }
        let flag = Arc::new(AtomicBool::new(false));
        ids.insert(id, Arc::clone(&flag));
        Ok(flag)
    }

    /// The cancellation flag of `id`, if it is in flight.
    pub fn cancel_flag(&self, id: u32) -> Option<Arc<AtomicBool>> {
        self.lock().get(&id).cloned()
    }

    /// Removes `id` once its answer is written (or it was refused).
    pub fn finish(&self, id: u32) {
        let mut ids = self.lock();
        ids.remove(&id);
        if ids.is_empty() {
            self.emptied.notify(usize::MAX);
        }
    }

    /// Whether nothing is in flight.
    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }

    /// Resolves once nothing is in flight.
    pub async fn wait_empty(&self) {
        crate::tracker::wait_until(&self.emptied, || self.is_empty()).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_duplicates_and_flags() {
        let f = InFlight::new(2);
        let one = f.admit(1).unwrap();
        assert_eq!(
            f.admit(1).unwrap_err().code,
            ErrorCode::DUPLICATE_REQUEST_ID
        );
        f.admit(2).unwrap();
        assert_eq!(f.admit(3).unwrap_err().code, ErrorCode::TOO_MANY_IN_FLIGHT);
        assert!(Arc::ptr_eq(&f.cancel_flag(1).unwrap(), &one));
        assert!(f.cancel_flag(9).is_none());
        f.finish(1);
        f.finish(2);
        assert!(f.is_empty());
    }
}
