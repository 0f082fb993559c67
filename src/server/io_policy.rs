//! Which scheduling policy the I/O threads run at (`io_preempt`), and keeping each thread at it.
//!
//! At the normal policy a woken I/O thread takes the CPU from a running model: every frame and
//! every answer costs a context switch, which for models of tens of microseconds is most of the
//! cost of a request. At `SCHED_BATCH` it waits for the worker to block, yield (every
//! `worker_yield_us`) or end its slice, then handles all that is ready: much more throughput for
//! fast models, but a frame that arrives during a long run waits for that run's end, and so does
//! its refusal under overload. `auto` therefore runs the I/O threads at `SCHED_BATCH` only while
//! every served model's runs (their measured bound) fit within the worker's yield interval, so that
//! a frame never waits much more than that; a model that runs longer puts them back at the normal
//! policy. Measured on one shared CPU (doc/BENCHMARKS.md, "Overload"): silero-vad (0.06 ms) served
//! 40–50 % more at saturation at `SCHED_BATCH`, refusals within ~1 ms either way; ppocr-cls (1.5
//! ms) refused in 1.7–2.2 ms at `SCHED_BATCH` against 1.1–1.4 ms (before pause points, below:
//! now 0.66–0.79 ms at `SCHED_BATCH`).
//!
//! A model that batches is judged by what one request costs, not by its executions: under load its
//! executions are batches of many requests (silero-vad: 32 rows, ~1.6 ms), which the load formed
//! and which end as soon as the load does. Judged by those, `auto` put the I/O threads back at the
//! normal policy at saturation, and silero-vad served 13,400–14,200 req/s instead of 18,000–19,500
//! (closed loop, pinned, `--io-preempt false` for the comparison); a frame then waits for at most
//! one batch, as a queued request already waits for the batches ahead of it.
//!
//! A model whose executions have pause points (long ones do: `scheduler::slice`) is judged at most
//! by its longest step between two, one operator: the worker yields at those points once its slice
//! is used up, so a frame waits for the slice and one operator, not for the whole execution.
//!
//! A thread can only change its own policy without affecting its own nice value, so the wanted
//! policy is published here and each I/O thread applies it to itself ([`IoPolicy::follow`], polled
//! by the thread's own `block_on`).

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use event_listener::Event;

use crate::config::IoPreempt;
use crate::scheduler::ServiceTime;

/// The policy the I/O threads should run at.
#[derive(Debug)]
pub struct IoPolicy {
    batch: AtomicBool,
    changed: Event,
}

impl IoPolicy {
    /// The policy a daemon starts with: `SCHED_BATCH` for `Never`, the normal policy otherwise
    /// (`Auto` decides once the models' run times are read, [`IoPolicy::set`]).
    pub fn new(mode: IoPreempt) -> IoPolicy {
        IoPolicy {
            batch: AtomicBool::new(mode == IoPreempt::Never),
            changed: Event::new(),
        }
    }

    /// Whether the I/O threads should run at `SCHED_BATCH` now.
    pub fn batch(&self) -> bool {
        self.batch.load(Ordering::Acquire)
    }

    /// Publishes the wanted policy; returns whether it changed.
    pub fn set(&self, batch: bool) -> bool {
        let changed = self.batch.swap(batch, Ordering::AcqRel) != batch;
        if changed {
            self.changed.notify(usize::MAX);
        }
        changed
    }

    /// Keeps the calling thread at the wanted policy, from now until the future is dropped. To be
    /// polled by the I/O thread itself (raced with its executor's work), never spawned.
    pub async fn follow(&self) {
        // Threads start at the normal policy.
        let mut mine = false;
        loop {
            // Listening before reading: a change between the two wakes this loop again.
            let listener = self.changed.listen();
            let want = self.batch();
            if want != mine {
                crate::priority::io_policy(want);
                mine = want;
            }
            listener.await;
        }
    }
}

/// The run a model is judged by: the bound on one execution, or, for a model that batches, the mean
/// cost of one request (its batches are the load's doing); and where its executions have pause
/// points (`scheduler::slice`), at most the bound on one step between two, since the worker yields
/// there. `None` before any measurement.
pub fn judged_run(service: &ServiceTime, batches: bool) -> Option<Duration> {
    let run = service.expected_run(batches, 1);
    match (run, service.step_bound()) {
        (Some(run), Some(step)) => Some(run.min(step)),
        (run, step) => run.or(step),
    }
}

/// What `auto` wants, given the longest measured run bound among the served models (`None`: a
/// model without a measurement, taken as long), the worker's yield interval, and the policy now:
/// `SCHED_BATCH` when runs fit within the interval; back to the normal policy only past twice the
/// interval, so that a model whose bound wanders around the interval does not flip the threads
/// every few seconds.
pub fn wanted(longest: Option<Duration>, yield_every: Option<Duration>, batch_now: bool) -> bool {
    let (Some(longest), Some(every)) = (longest, yield_every) else {
        return false;
    };
    if batch_now {
        longest <= every.saturating_mul(2)
    } else {
        longest <= every
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_batches_io_only_while_every_run_fits_in_the_yield_interval() {
        let us = Duration::from_micros;
        let every = Some(us(500));
        // Fast models: batch.
        assert!(wanted(Some(us(60)), every, false));
        // A 1.5 ms model: frames would wait for its runs.
        assert!(!wanted(Some(us(1_500)), every, false));
        assert!(!wanted(Some(us(1_500)), every, true));
        // Between one and two intervals: stay as it is.
        assert!(!wanted(Some(us(700)), every, false));
        assert!(wanted(Some(us(700)), every, true));
        // No measurement, or a worker that never yields: the normal policy.
        assert!(!wanted(None, every, false));
        assert!(!wanted(Some(us(60)), None, true));
    }

    #[test]
    fn a_batching_model_is_judged_by_one_request_not_by_its_batches() {
        let us = Duration::from_micros;
        let service = ServiceTime::seeded(1, us(60));
        for _ in 0..20 {
            service.record(32, us(1_600));
            service.record(1, us(60));
        }
        let batched = judged_run(&service, true).unwrap();
        assert!(batched < us(100), "{batched:?}");
        assert!(wanted(Some(batched), Some(us(500)), false));
        // The same executions from a model that does not batch: they are its runs.
        let runs = judged_run(&service, false).unwrap();
        assert!(runs > us(1_000), "{runs:?}");
        assert!(!wanted(Some(runs), Some(us(500)), true));
        assert_eq!(judged_run(&ServiceTime::default(), true), None);
    }

    #[test]
    fn a_long_run_with_pause_points_is_judged_by_its_longest_step() {
        let us = Duration::from_micros;
        // ppocr-cls: 1.5 ms runs, whose operators take at most ~0.2 ms.
        let service = ServiceTime::seeded(1, us(1_500));
        assert!(!wanted(judged_run(&service, false), Some(us(500)), false));
        for _ in 0..20 {
            service.record_step(us(200));
        }
        let judged = judged_run(&service, false).unwrap();
        assert!(judged < us(250), "{judged:?}");
        assert!(wanted(Some(judged), Some(us(500)), false));
        // A single operator longer than the interval keeps the threads preempting.
        let slow_op = ServiceTime::seeded(1, us(3_000));
        slow_op.record_step(us(2_500));
        assert!(!wanted(judged_run(&slow_op, false), Some(us(500)), false));
    }

    #[test]
    fn set_reports_changes_and_the_mode_sets_the_start() {
        assert!(IoPolicy::new(IoPreempt::Never).batch());
        assert!(!IoPolicy::new(IoPreempt::Auto).batch());
        let p = IoPolicy::new(IoPreempt::Always);
        assert!(p.set(true));
        assert!(!p.set(true));
        assert!(p.batch());
        assert!(p.set(false));
    }
}
