//! A model version's measured service time: what the retry-after hint, the wait at admission, the
//! batch hold and the check before starting a request are computed from.
//!
//! Moving averages (weight 1/8 for the newest execution), updated by the worker after each
//! execution without a lock: the time one execution takes and the rows it carried, and how far an
//! execution strays from that mean (weight 1/4), as TCP estimates a round trip (RFC 6298): the
//! mean is what queued work adds up to, the mean plus four deviations what one run may take before
//! an answer is late. Concurrent updates may lose one sample to another; the figures are estimates
//! either way.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Rows are averaged in sixteenths, so that a mean of 1.5 rows is not rounded to 1 or 2.
const ROW_SCALE: u64 = 16;

/// `old + (new - old) / 8` in integers without overflow for any `u64` pair; `new` when `old` is 0
/// (nothing measured yet).
fn blend(old: u64, new: u64) -> u64 {
    if old == 0 {
        new
    } else {
        old - old / 8 + new / 8
    }
}

/// One duration's moving mean and mean deviation (RFC 6298's smoothed round trip and its variation).
#[derive(Debug, Default)]
struct Estimate {
    mean_ns: AtomicU64,
    deviation_ns: AtomicU64,
}

impl Estimate {
    fn record(&self, took: Duration) {
        let ns = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        let old = self.mean_ns.load(Ordering::Relaxed);
        if old != 0 {
            // Against the mean before this sample, as RFC 6298 orders the two updates.
            let dev = self.deviation_ns.load(Ordering::Relaxed);
            let off = ns.abs_diff(old);
            self.deviation_ns
                .store(dev - dev / 4 + off / 4, Ordering::Relaxed);
        }
        // A zero sample would read as "nothing measured"; a nanosecond is as good.
        self.mean_ns.store(blend(old, ns).max(1), Ordering::Relaxed);
    }

    fn mean(&self) -> Option<Duration> {
        match self.mean_ns.load(Ordering::Relaxed) {
            0 => None,
            ns => Some(Duration::from_nanos(ns)),
        }
    }

    /// The mean plus four mean deviations (RFC 6298's retransmission timeout).
    fn bound(&self) -> Option<Duration> {
        let dev = self.deviation_ns.load(Ordering::Relaxed);
        self.mean()
            .map(|mean| mean.saturating_add(Duration::from_nanos(dev.saturating_mul(4))))
    }
}

/// The moving averages; zero until the first execution.
#[derive(Debug, Default)]
pub struct ServiceTime {
    execution: Estimate,
    rows_scaled: AtomicU64,
    /// The longest stretch between two pause points within one execution (one operator of the
    /// plan) on the worker's CPU, for executions run with pause points that measured it
    /// ([`crate::scheduler`]'s time slice), and how many did.
    step: Estimate,
    step_samples: AtomicU64,
}

impl ServiceTime {
    /// An estimate seeded with one measured execution of `rows` rows (warm-up).
    pub fn seeded(rows: u64, took: Duration) -> ServiceTime {
        let s = ServiceTime::default();
        s.record(rows, took);
        s
    }

    /// Adds one execution of `rows` rows that took `took`.
    pub fn record(&self, rows: u64, took: Duration) {
        self.execution.record(took);
        let rows = rows.max(1).saturating_mul(ROW_SCALE);
        let old = self.rows_scaled.load(Ordering::Relaxed);
        self.rows_scaled.store(blend(old, rows), Ordering::Relaxed);
    }

    /// Adds the longest step of one execution run with pause points.
    pub fn record_step(&self, longest: Duration) {
        self.step.record(longest);
        self.step_samples.fetch_add(1, Ordering::Relaxed);
    }

    /// How many executions have recorded their longest step.
    pub fn step_samples(&self) -> u64 {
        self.step_samples.load(Ordering::Relaxed)
    }

    /// How long the worker may run one operator of this model without reaching a pause point: the
    /// mean longest step plus four deviations. `None` unless executions ran with pause points.
    pub fn step_bound(&self) -> Option<Duration> {
        self.step.bound()
    }

    /// The mean time of one execution; `None` before any was measured.
    pub fn execution(&self) -> Option<Duration> {
        self.execution.mean()
    }

    /// How long one execution may take: the mean plus four mean deviations (RFC 6298's
    /// retransmission timeout, for the same reason: a bound that the run times seen so far rarely
    /// exceed, which tightens as they steady). `None` before any execution was measured.
    pub fn execution_bound(&self) -> Option<Duration> {
        self.execution.bound()
    }

    /// How long after a run starts its answer may still be on its way out: the bound on one
    /// execution plus one mean execution more. On a CPU that a worker shares with the I/O thread,
    /// a finished answer can wait for the worker's next run before it is written (measured under
    /// overload: about 1 % of ppocr-cls answers waited 1.1–2.1 ms, one run; a request started with
    /// only the bound left before its deadline was then answered late). What a request's deadline
    /// must leave room for before it is worth starting. `None` before any execution was measured.
    pub fn answer_time(&self) -> Option<Duration> {
        let mean = self.execution()?;
        self.execution_bound().map(|b| b.saturating_add(mean))
    }

    /// How long an execution of `rows` rows is expected to take: for a model that `batches`, rows
    /// at the mean cost of one (its executions vary with the load), else the bound on one
    /// execution. `None` before any execution was measured.
    pub fn expected_run(&self, batches: bool, rows: u64) -> Option<Duration> {
        if batches {
            let rows = u32::try_from(rows).unwrap_or(u32::MAX);
            self.per_request().map(|per| per.saturating_mul(rows))
        } else {
            self.execution_bound()
        }
    }

    /// The mean cost of one request (an execution's time over the rows it carried); `None` before
    /// any execution was measured.
    pub fn per_request(&self) -> Option<Duration> {
        let ns = self.execution.mean_ns.load(Ordering::Relaxed);
        let rows = self.rows_scaled.load(Ordering::Relaxed).max(ROW_SCALE);
        (ns != 0).then(|| Duration::from_nanos(ns.saturating_mul(ROW_SCALE) / rows))
    }
}

/// When a request refused now could expect to be admitted: the `queued` requests ahead of it, each
/// costing `per_request`, worked off by `workers` workers in parallel; at least a millisecond (the
/// wire's unit) and at most ten seconds (past that the estimate means little: go elsewhere). With no
/// measurement yet, one millisecond per queued request and worker.
pub fn retry_after(queued: usize, per_request: Option<Duration>, workers: usize) -> Duration {
    let per = per_request.unwrap_or(Duration::from_millis(1));
    let queued = u32::try_from(queued).unwrap_or(u32::MAX);
    let workers = u32::try_from(workers.max(1)).unwrap_or(u32::MAX);
    per.saturating_mul(queued)
        .checked_div(workers)
        .map(clamp_retry_after)
        .unwrap_or(Duration::from_millis(1))
}

/// When a worker could start on a request queued behind `queued` of work, with each worker free
/// after its entry in `busy` (what its running execution has left; zero when idle), the queued
/// work going to whichever worker is free first, as a fluid: the earliest `t` at which the
/// workers' free time up to `t` covers the queue. Zero with an idle worker and nothing queued; with
/// one worker, its running execution's rest plus the queue.
pub fn queue_wait(queued: Duration, busy: &mut [Duration]) -> Duration {
    if busy.is_empty() {
        return queued;
    }
    busy.sort_unstable();
    // With the k soonest-free workers taking the queue, they all finish it at
    // (queued + their busy times) / k; more workers join while that is later than the next one's
    // free time.
    let mut sum = queued;
    let mut t = Duration::ZERO;
    for (k, &free) in busy.iter().enumerate() {
        if k > 0 && t <= free {
            break;
        }
        sum = sum.saturating_add(free);
        t = sum / u32::try_from(k + 1).unwrap_or(u32::MAX);
    }
    t
}

/// A wait as a retry-after hint: at least a millisecond (the wire's unit), at most ten seconds.
pub fn clamp_retry_after(wait: Duration) -> Duration {
    wait.clamp(Duration::from_millis(1), Duration::from_secs(10))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn averages_executions_and_rows() {
        let s = ServiceTime::default();
        assert_eq!(s.execution(), None);
        assert_eq!(s.per_request(), None);
        s.record(4, Duration::from_micros(800));
        assert_eq!(s.execution(), Some(Duration::from_micros(800)));
        assert_eq!(s.per_request(), Some(Duration::from_micros(200)));
        // A slower batch of one moves the averages an eighth of the way.
        s.record(1, Duration::from_micros(1600));
        assert_eq!(s.execution(), Some(Duration::from_micros(900)));
        // rows: 4 - 4/8 + 1/8 = 3.625
        let per = s.per_request().unwrap().as_nanos();
        assert!((248_000..=249_000).contains(&per), "{per}");
        assert_eq!(
            ServiceTime::seeded(1, Duration::from_millis(2)).per_request(),
            Some(Duration::from_millis(2))
        );
    }

    #[test]
    fn the_bound_on_one_execution_widens_with_spread_and_narrows_as_runs_steady() {
        let us = Duration::from_micros;
        let s = ServiceTime::default();
        assert_eq!(s.execution_bound(), None);
        s.record(1, us(1000));
        // One sample: no spread seen yet.
        assert_eq!(s.execution_bound(), Some(us(1000)));
        // 1800 µs strays 800 µs from the mean: deviation 200 µs, mean 1100 µs.
        s.record(1, us(1800));
        assert_eq!(s.execution(), Some(us(1100)));
        assert_eq!(s.execution_bound(), Some(us(1100 + 4 * 200)));
        // Steady runs at the mean shrink the deviation by a quarter each.
        for _ in 0..40 {
            s.record(1, us(1100));
        }
        let bound = s.execution_bound().unwrap();
        assert!(bound >= us(1100) && bound < us(1110), "{bound:?}");
        // And an answer is allowed one mean run more.
        let answer = s.answer_time().unwrap();
        assert_eq!(answer, bound + s.execution().unwrap());
        assert_eq!(ServiceTime::default().answer_time(), None);
    }

    #[test]
    fn retry_after_scales_with_queue_and_workers_within_bounds() {
        let per = Some(Duration::from_millis(2));
        assert_eq!(retry_after(10, per, 1), Duration::from_millis(20));
        assert_eq!(retry_after(10, per, 4), Duration::from_millis(5));
        assert_eq!(retry_after(0, per, 1), Duration::from_millis(1));
        assert_eq!(retry_after(3, None, 1), Duration::from_millis(3));
        assert_eq!(retry_after(1_000_000, per, 1), Duration::from_secs(10));
        assert_eq!(retry_after(10, per, 0), Duration::from_millis(20));
    }

    #[test]
    fn queued_work_goes_to_the_workers_free_first() {
        let ms = Duration::from_millis;
        // One worker: the rest of its run, then the queue.
        assert_eq!(queue_wait(ms(30), &mut [ms(2)]), ms(32));
        // Three idle workers share the queue.
        assert_eq!(queue_wait(ms(30), &mut [ms(0); 3]), ms(10));
        // An idle worker and nothing queued: start now, however busy the others are.
        assert_eq!(queue_wait(ms(0), &mut [ms(5), ms(0)]), ms(0));
        // 1 ms of queue fits on the idle worker before the busy one frees at 5 ms...
        assert_eq!(queue_wait(ms(1), &mut [ms(5), ms(0)]), ms(1));
        // ...8 ms does not: both take part, (8 + 5 + 0) / 2.
        assert_eq!(
            queue_wait(ms(8), &mut [ms(5), ms(0)]),
            Duration::from_micros(6_500)
        );
        assert_eq!(
            queue_wait(ms(30), &mut []),
            ms(30),
            "no workers: the queue alone"
        );
        assert_eq!(clamp_retry_after(Duration::ZERO), ms(1));
        assert_eq!(clamp_retry_after(ms(40)), ms(40));
        assert_eq!(clamp_retry_after(Duration::MAX), Duration::from_secs(10));
    }
}
