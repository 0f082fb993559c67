//! The bounded job queue and the dedicated inference worker threads.
//!
//! Connections validate a request, then [`Scheduler::submit`] it: the queue is bounded and a full queue
//! is refused at once with `OVERLOADED` (never waited on), so overload shows up as a fast, explicit
//! answer rather than as latency. Worker threads (one per core by default) take jobs in arrival order
//! and run them; tract never runs on an executor thread. A job whose client has gone, or whose deadline
//! has passed, is dropped without being computed.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Instant;

use async_channel::{Receiver, Sender, TrySendError};
use inferd_proto::ErrorCode;

use crate::error::RequestError;
use crate::model::ServedModel;
use crate::tensor::HostTensor;

/// What a job answers: the outputs, or why there are none.
pub type JobResult = Result<Vec<HostTensor>, RequestError>;

/// A finished job, sent back to its connection.
#[derive(Debug)]
pub struct Completion {
    /// The request id on its connection.
    pub id: u32,
    /// The model version that ran (or was to run).
    pub model: Arc<ServedModel>,
    /// Outputs or error.
    pub result: JobResult,
}

/// One inference to run.
#[derive(Debug)]
pub struct Job {
    /// The request id on its connection, echoed in the [`Completion`].
    pub id: u32,
    /// The model version to run.
    pub model: Arc<ServedModel>,
    /// Validated inputs, in the model's input order.
    pub inputs: Vec<HostTensor>,
    /// After this instant the result is useless and the job is not run.
    pub deadline: Instant,
    /// The connection's completion channel; closed means the client has gone. It has room for every
    /// request the connection may have in flight, so a worker never waits on it.
    pub reply: Sender<Completion>,
}

/// The queue and its worker threads.
#[derive(Debug)]
pub struct Scheduler {
    tx: Sender<Job>,
    workers: Mutex<Vec<JoinHandle<()>>>,
}

impl Scheduler {
    /// Starts `workers` threads behind a queue of `capacity` jobs.
    ///
    /// # Errors
    /// If a thread cannot be spawned.
    pub fn start(workers: usize, capacity: usize) -> std::io::Result<Scheduler> {
        let (tx, rx) = async_channel::bounded(capacity.max(1));
        let mut handles = Vec::with_capacity(workers);
        for i in 0..workers.max(1) {
            let rx = rx.clone();
            handles.push(
                std::thread::Builder::new()
                    .name(format!("inferd-worker-{i}"))
                    .spawn(move || work(&rx))?,
            );
        }
        Ok(Scheduler {
            tx,
            workers: Mutex::new(handles),
        })
    }

    /// Queues a job, or refuses it at once.
    ///
    /// # Errors
    /// `OVERLOADED` when the queue is full, `SHUTTING_DOWN` once [`Scheduler::shutdown`] has begun.
    pub fn submit(&self, job: Job) -> Result<(), RequestError> {
        self.tx.try_send(job).map_err(|e| match e {
            TrySendError::Full(_) => {
                RequestError::new(ErrorCode::OVERLOADED, "the inference queue is full")
            }
            TrySendError::Closed(_) => {
                RequestError::new(ErrorCode::SHUTTING_DOWN, "the server is shutting down")
            }
        })
    }

    /// Jobs waiting for a worker.
    pub fn queued(&self) -> usize {
        self.tx.len()
    }

    /// Closes the queue, lets the workers finish what is queued, and joins them.
    pub fn shutdown(&self) {
        self.tx.close();
        let handles = match self.workers.lock() {
            Ok(mut h) => std::mem::take(&mut *h),
            Err(poisoned) => std::mem::take(&mut *poisoned.into_inner()),
        };
        for h in handles {
            if h.join().is_err() {
                log::error!("an inference worker thread panicked outside a job");
            }
        }
    }
}

impl Drop for Scheduler {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn work(rx: &Receiver<Job>) {
    while let Ok(job) = rx.recv_blocking() {
        if job.reply.is_closed() {
            log::debug!(
                "dropping a job for {} v{}: its client has gone",
                job.model.name,
                job.model.version
            );
            continue;
        }
        let Job {
            id,
            model,
            inputs,
            deadline,
            reply,
        } = job;
        if Instant::now() >= deadline {
            let result = Err(RequestError::new(
                ErrorCode::DEADLINE_EXCEEDED,
                "the deadline passed while the request was queued; it was not run",
            ));
            let _ = reply.try_send(Completion { id, model, result });
            continue;
        }
        let result = match catch_unwind(AssertUnwindSafe(|| model.runtime.run(inputs))) {
            Ok(Ok(outputs)) => Ok(outputs),
            Ok(Err(e)) => {
                log::warn!("{} v{} failed: {e}", model.name, model.version);
                Err(RequestError::new(
                    ErrorCode::INTERNAL,
                    format!("the model failed: {e}"),
                ))
            }
            Err(_) => {
                log::error!(
                    "{} v{} panicked while running a request",
                    model.name,
                    model.version
                );
                Err(RequestError::new(
                    ErrorCode::INTERNAL,
                    "the model panicked on this input",
                ))
            }
        };
        // The receiver may have gone meanwhile; nothing to do then.
        let _ = reply.try_send(Completion { id, model, result });
    }
}
