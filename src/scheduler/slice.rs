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
//! own running time that matters there, so time the thread spent off its CPU without yielding
//! (preempted by another process, or its vCPU stolen by the host) is taken out: a ppocr-cls
//! operator of ~170 µs that another process interrupted for 5 ms is not a 5 ms operator, and
//! counting it as one put `auto` back to preempting I/O on a busy machine until the estimate
//! decayed. The thread's CPU clock is read at the first point and the end of each such execution (two
//! system calls, ~0.6 µs each here, against executions of at least a quarter of the slice); the
//! off-CPU time is charged to the longest step, where one interruption lands, and the second
//! longest step stays a floor for the estimate.

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
    /// Within an execution with pause points: the last point, the longest gap between two and the
    /// second longest, the first point (wall and thread CPU clocks), and the time given away at
    /// yields since.
    last_point: Option<Instant>,
    longest_step: Option<Duration>,
    second_step: Duration,
    began: Option<(Instant, Duration)>,
    given_away: Duration,
}

impl TimeSlice {
    /// A slice of `every`; `None`: never yield.
    pub fn new(every: Option<Duration>) -> TimeSlice {
        TimeSlice {
            every,
            since: None,
            last_point: None,
            longest_step: None,
            second_step: Duration::ZERO,
            began: None,
            given_away: Duration::ZERO,
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
        self.second_step = Duration::ZERO;
        self.given_away = Duration::ZERO;
        self.began = None;
    }

    /// A pause point: yields if the slice is used up.
    pub fn pause_point(&mut self) {
        let now = self.step_to(Instant::now());
        if self.began.is_none() {
            // The steps run from the first point on.
            self.began = Some((now, thread_cpu()));
        }
        if self.used_up(now) {
            std::thread::yield_now();
            // The time given away is neither the slice's nor a step's.
            let back = Instant::now();
            self.given_away += back.saturating_duration_since(now);
            self.since = Some(back);
            self.last_point = Some(back);
        }
    }

    /// The execution has ended: its last operator ran from the last point to now. Returns its
    /// longest step on the CPU (`None` without at least one point): the longest gap between two
    /// points less the time the thread was off its CPU without yielding, and at least the second
    /// longest gap (see the module documentation).
    pub fn end_execution(&mut self) -> Option<Duration> {
        let now = Instant::now();
        if self.last_point.is_some() {
            self.step_to(now);
        }
        self.last_point = None;
        let longest = self.longest_step.take()?;
        let off_cpu = match self.began.take() {
            Some((wall, cpu)) => now
                .saturating_duration_since(wall)
                .saturating_sub(self.given_away)
                .saturating_sub(thread_cpu().saturating_sub(cpu)),
            None => Duration::ZERO,
        };
        Some(on_cpu_longest(longest, self.second_step, off_cpu))
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
            match self.longest_step {
                Some(longest) if step <= longest => self.second_step = self.second_step.max(step),
                longest => {
                    self.second_step = longest.unwrap_or(Duration::ZERO);
                    self.longest_step = Some(step);
                }
            }
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

/// The longest step of an execution on the CPU, from its longest and second longest gaps between
/// two pause points and the time the thread spent off its CPU without yielding: an interruption
/// makes the gap it lands in the longest, so that gap loses it; and as the interruption may have
/// landed elsewhere, the second longest gap is a floor.
fn on_cpu_longest(longest: Duration, second: Duration, off_cpu: Duration) -> Duration {
    longest.saturating_sub(off_cpu).max(second)
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
    fn the_longest_step_is_measured_and_a_used_up_slice_yields_at_a_pause_point() {
        let ms = Duration::from_millis;
        let mut slice = TimeSlice::new(Some(ms(5)));
        slice.start(Instant::now());
        slice.begin_execution();
        slice.pause_point();
        spin(ms(2));
        slice.pause_point();
        let since = slice.since;
        spin(ms(4));
        std::thread::sleep(ms(2));
        // 6 ms or more into a 5 ms slice: this point yields and starts a new slice.
        slice.pause_point();
        assert!(slice.since > since, "the slice restarts after a yield");
        let longest = slice.end_execution().unwrap();
        // 4 ms on the CPU; the 2 ms asleep were off it (and any time the first step was preempted
        // by other tests is charged here too, down to the first step's 2 ms at most).
        assert!(longest >= ms(2) && longest < ms(6), "{longest:?}");
        // Nothing measured without pause points.
        slice.begin_execution();
        assert_eq!(slice.end_execution(), None);
    }

    #[test]
    fn time_off_the_cpu_within_a_step_is_not_the_operators() {
        let ms = Duration::from_millis;
        // A slice far longer than the test: no yields, so every gap is a step.
        let mut slice = TimeSlice::new(Some(Duration::from_secs(60)));
        slice.start(Instant::now());
        slice.begin_execution();
        slice.pause_point();
        spin(ms(3));
        slice.pause_point();
        // A short operator interrupted for 30 ms (asleep, as a preempted thread is off its CPU).
        spin(Duration::from_micros(100));
        std::thread::sleep(ms(30));
        slice.pause_point();
        let longest = slice.end_execution().unwrap();
        assert!(longest >= ms(3) && longest < ms(20), "{longest:?}");
    }

    #[test]
    fn the_interruption_is_charged_to_the_longest_gap_and_the_second_is_a_floor() {
        let us = Duration::from_micros;
        // Undisturbed: the longest gap as measured.
        assert_eq!(on_cpu_longest(us(170), us(90), Duration::ZERO), us(170));
        // 5 ms off the CPU inside a 170 µs operator.
        assert_eq!(on_cpu_longest(us(5_170), us(90), us(5_000)), us(170));
        // Inside a 10 µs one, next to a 170 µs one: the second longest gap holds.
        assert_eq!(on_cpu_longest(us(5_010), us(170), us(5_000)), us(170));
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
