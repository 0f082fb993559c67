//! A worker's time slice: when it gives its CPU to a thread that shares it.
//!
//! On a gateway an I/O thread shares a CPU with a worker. At `SCHED_BATCH` (`io_preempt`) it never
//! preempts the worker; under load the worker never blocks (there is always a next job), so the I/O
//! thread runs only when the worker yields. A worker therefore yields once it has run `every`
//! (`worker_yield_us`) without blocking: between jobs, when more work is queued, and, for an
//! execution expected to take a good part of `every` or more, between two operators of the
//! model's plan ([`crate::model::runtime::Runtime::run_pausing`]). Yielding only between jobs, a
//! frame that arrived during a 32-row silero-vad batch (~1.6 ms) or a ppocr-cls run (~1.5 ms) waited
//! for its end before it was read, and an `OVERLOADED` refusal took that long; with pause points
//! it waits about `every` plus one operator. With nothing else runnable a yield returns at once.
//!
//! The longest stretch between two pause points of an execution (one operator) is measured:
//! `io_preempt = auto` judges a model by it (`server::io_policy::judged_run`).

use std::time::{Duration, Instant};

/// Executions expected to run at least `every` divided by this get pause points. Shorter ones
/// would pay a clock read per operator (~20 ns; a few percent of a 10 µs model) for a yield they
/// are too short to need: the yield between jobs covers them.
const PAUSE_FROM_FRACTION: u32 = 4;

/// One worker's slice; see the module documentation.
#[derive(Debug)]
pub struct TimeSlice {
    every: Option<Duration>,
    /// Since when the worker has run without blocking or yielding.
    since: Option<Instant>,
    /// Within an execution with pause points: the last point, and the longest gap between two.
    last_point: Option<Instant>,
    longest_step: Option<Duration>,
}

impl TimeSlice {
    /// A slice of `every`; `None`: never yield.
    pub fn new(every: Option<Duration>) -> TimeSlice {
        TimeSlice {
            every,
            since: None,
            last_point: None,
            longest_step: None,
        }
    }

    /// A job starts at `now`: the slice runs from there unless it already runs, so the first
    /// execution after a wait or a yield counts towards it.
    pub fn start(&mut self, now: Instant) {
        self.since.get_or_insert(now);
    }

    /// Whether an execution expected to take `expected` (`None`: not measured yet) should run with
    /// pause points.
    pub fn pauses(&self, expected: Option<Duration>) -> bool {
        self.every
            .is_some_and(|every| expected.is_none_or(|e| e >= every / PAUSE_FROM_FRACTION))
    }

    /// An execution with pause points begins.
    pub fn begin_execution(&mut self) {
        self.last_point = None;
        self.longest_step = None;
    }

    /// A pause point: yields if the slice is used up.
    pub fn pause_point(&mut self) {
        let now = self.step_to(Instant::now());
        if self.used_up(now) {
            std::thread::yield_now();
            // The time given away is neither the slice's nor a step's.
            let back = Instant::now();
            self.since = Some(back);
            self.last_point = Some(back);
        }
    }

    /// The execution has ended: its last operator ran from the last point to now. Returns its
    /// longest step (`None` without at least one point).
    pub fn end_execution(&mut self) -> Option<Duration> {
        if self.last_point.is_some() {
            self.step_to(Instant::now());
        }
        self.last_point = None;
        self.longest_step.take()
    }

    /// Whether the slice running since `since` is used up at `now`.
    fn used_up(&self, now: Instant) -> bool {
        self.every
            .zip(self.since)
            .is_some_and(|(every, since)| now.saturating_duration_since(since) >= every)
    }

    /// Counts the step from the last point to `now`; returns `now`.
    fn step_to(&mut self, now: Instant) -> Instant {
        if let Some(last) = self.last_point {
            let step = now.saturating_duration_since(last);
            self.longest_step = Some(self.longest_step.map_or(step, |l| l.max(step)));
        }
        self.last_point = Some(now);
        now
    }

    /// A job has ended with `waiting` more queued. Returns whether the worker yielded.
    pub fn after_job(&mut self, waiting: bool) -> bool {
        if !waiting {
            // It will block for the next job, which gives the CPU away anyway.
            self.since = None;
            return false;
        }
        let used_up = self.used_up(Instant::now());
        if used_up {
            // More work queued, and this worker has held the CPU for a while: let a runnable I/O
            // thread on this CPU have it first (admit or refuse the frames that arrived, send the
            // answers made). Without this a worker that never blocks keeps the CPU for the
            // kernel's whole time slice, milliseconds, and refusals wait that long.
            std::thread::yield_now();
            self.since = None;
        }
        used_up
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_or_unmeasured_executions_get_pause_points_short_ones_do_not() {
        let us = Duration::from_micros;
        let slice = TimeSlice::new(Some(us(500)));
        assert!(slice.pauses(None));
        assert!(slice.pauses(Some(us(1_600))));
        assert!(slice.pauses(Some(us(125))));
        assert!(!slice.pauses(Some(us(60))));
        // A worker that never yields has no use for them.
        assert!(!TimeSlice::new(None).pauses(Some(us(1_600))));
    }

    #[test]
    fn the_longest_step_is_measured_and_a_used_up_slice_yields_at_a_pause_point() {
        let ms = Duration::from_millis;
        let mut slice = TimeSlice::new(Some(ms(5)));
        slice.start(Instant::now());
        slice.begin_execution();
        slice.pause_point();
        std::thread::sleep(ms(2));
        slice.pause_point();
        let since = slice.since;
        std::thread::sleep(ms(4));
        // 6 ms into a 5 ms slice: this point yields and starts a new slice.
        slice.pause_point();
        assert!(slice.since > since, "the slice restarts after a yield");
        let longest = slice.end_execution().unwrap();
        assert!(longest >= ms(4) && longest < ms(100), "{longest:?}");
        // Nothing measured without pause points.
        slice.begin_execution();
        assert_eq!(slice.end_execution(), None);
    }

    #[test]
    fn between_jobs_it_yields_only_with_work_queued_and_the_slice_used_up() {
        let ms = Duration::from_millis;
        let mut slice = TimeSlice::new(Some(ms(1)));
        let long_ago = Instant::now().checked_sub(ms(10)).unwrap();
        slice.start(long_ago);
        assert!(slice.after_job(true));
        // The slice restarts with the next job.
        slice.start(Instant::now());
        assert!(!slice.after_job(true));
        slice.start(long_ago);
        // Nothing queued: the worker blocks instead.
        assert!(!slice.after_job(false));
        assert!(slice.since.is_none());
        let mut never = TimeSlice::new(None);
        never.start(long_ago);
        assert!(!never.after_job(true));
    }
}
