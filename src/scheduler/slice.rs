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
//! `io_preempt = auto` judges a model by it (`server::io_policy::judged_run`). It is the worker's
//! own running time that matters there, so steps are timed by the thread's CPU clock: a
//! ppocr-cls operator of ~170 µs that another process preempted for 5 ms (or whose vCPU the host
//! stole) is not a 5 ms operator, and timed by the wall clock it counted as one, which put `auto`
//! back to preempting I/O on a busy machine. That clock is a system call (~0.6 µs here, against
//! ~20 ns for the wall clock) per operator, so steps are measured on a sample of executions:
//! every execution until the model has [`WARM_SAMPLES`] of them (its warm-up runs first), then one
//! in [`MEASURE_EVERY`] of this worker's executions with pause points. A model's operators are the
//! same from one run to the next, so a sample follows them; the others read no CPU clock at all.

use std::time::{Duration, Instant};

/// Executions expected to run at least `every` divided by this get pause points. Shorter ones
/// would pay a clock read per operator (~20 ns; a few percent of a 10 µs model) for a yield they
/// are too short to need: the yield between jobs covers them.
const PAUSE_FROM_FRACTION: u32 = 4;

/// Until a model has this many measured executions, every execution with pause points measures its
/// steps.
pub const WARM_SAMPLES: u64 = 8;

/// Past [`WARM_SAMPLES`], one in this many of a worker's executions with pause points measures its
/// steps (ppocr-cls: 234 clock reads, ~8 % of a measured run, ~0.25 % over all).
pub const MEASURE_EVERY: u32 = 32;

/// One worker's slice; see the module documentation.
#[derive(Debug)]
pub struct TimeSlice {
    every: Option<Duration>,
    /// Since when the worker has run without blocking or yielding.
    since: Option<Instant>,
    /// Executions with pause points so far, for the sample.
    executions: u32,
    /// Within an execution that measures its steps: the thread's CPU clock at the last point, and
    /// the longest step so far.
    measuring: bool,
    last_cpu: Option<Duration>,
    longest_step: Option<Duration>,
}

impl TimeSlice {
    /// A slice of `every`; `None`: never yield.
    pub fn new(every: Option<Duration>) -> TimeSlice {
        TimeSlice {
            every,
            since: None,
            executions: 0,
            measuring: false,
            last_cpu: None,
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

    /// An execution with pause points begins, of a model with `samples` measured executions so
    /// far: it measures its steps if the model has fewer than [`WARM_SAMPLES`], or as the one in
    /// [`MEASURE_EVERY`] of this worker's.
    pub fn begin_execution(&mut self, samples: u64) {
        self.executions = self.executions.wrapping_add(1);
        self.measuring = samples < WARM_SAMPLES || self.executions % MEASURE_EVERY == 0;
        self.last_cpu = None;
        self.longest_step = None;
    }

    /// A pause point: yields if the slice is used up.
    pub fn pause_point(&mut self) {
        if self.measuring {
            // The CPU clock stands still while the thread is off its CPU, yielding or preempted.
            self.step_to(thread_cpu());
        }
        if self.used_up(Instant::now()) {
            std::thread::yield_now();
            self.since = Some(Instant::now());
        }
    }

    /// The execution has ended: its last operator ran from the last point to now. Returns its
    /// longest step on the CPU if it measured them (`None` otherwise, or without a point).
    pub fn end_execution(&mut self) -> Option<Duration> {
        // A CPU clock reading is kept only while measuring.
        if self.last_cpu.is_some() {
            self.step_to(thread_cpu());
        }
        self.measuring = false;
        self.last_cpu = None;
        self.longest_step.take()
    }

    /// Whether the slice running since `since` is used up at `now`.
    fn used_up(&self, now: Instant) -> bool {
        self.every
            .zip(self.since)
            .is_some_and(|(every, since)| now.saturating_duration_since(since) >= every)
    }

    /// Counts the step from the last point to `cpu` (the thread's CPU clock now).
    fn step_to(&mut self, cpu: Duration) {
        if let Some(last) = self.last_cpu {
            let step = cpu.saturating_sub(last);
            self.longest_step = Some(self.longest_step.map_or(step, |l| l.max(step)));
        }
        self.last_cpu = Some(cpu);
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

/// The CPU time the calling thread has used.
fn thread_cpu() -> Duration {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    Duration::new(
        u64::try_from(t.tv_sec).unwrap_or(0),
        u32::try_from(t.tv_nsec).unwrap_or(0),
    )
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

    /// Runs on the CPU for `d` of the thread's own time, however long that takes on a busy machine.
    fn spin(d: Duration) {
        let start = thread_cpu();
        while thread_cpu().saturating_sub(start) < d {}
    }

    #[test]
    fn the_longest_step_is_measured_on_the_cpu_and_a_used_up_slice_yields_at_a_pause_point() {
        let ms = Duration::from_millis;
        let mut slice = TimeSlice::new(Some(ms(5)));
        slice.start(Instant::now());
        slice.begin_execution(0);
        slice.pause_point();
        spin(ms(2));
        slice.pause_point();
        let since = slice.since;
        spin(ms(3));
        // A short operator interrupted for 30 ms (asleep, as a preempted thread is off its CPU).
        std::thread::sleep(ms(30));
        // 33 ms into a 5 ms slice: this point yields and starts a new slice.
        slice.pause_point();
        assert!(slice.since > since, "the slice restarts after a yield");
        let longest = slice.end_execution().unwrap();
        // 3 ms on the CPU; the 30 ms asleep were off it (the wall clock would say 33 ms).
        assert!(longest >= ms(3) && longest < ms(20), "{longest:?}");
        // Nothing measured without pause points.
        slice.begin_execution(0);
        assert_eq!(slice.end_execution(), None);
    }

    #[test]
    fn steps_are_measured_until_a_model_has_its_samples_then_one_execution_in_measure_every() {
        let mut slice = TimeSlice::new(Some(Duration::from_millis(5)));
        let measured = |slice: &mut TimeSlice, samples: u64| {
            slice.begin_execution(samples);
            slice.pause_point();
            slice.end_execution().is_some()
        };
        // A model still short of samples: every execution.
        assert!((0..40).all(|_| measured(&mut slice, WARM_SAMPLES - 1)));
        // Then one in MEASURE_EVERY of this worker's executions.
        let sampled = (0..MEASURE_EVERY * 4)
            .filter(|_| measured(&mut slice, WARM_SAMPLES))
            .count();
        assert_eq!(sampled, 4);
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
