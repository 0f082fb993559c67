//! A model version's measured service time: what the retry-after hint and the batch hold are
//! computed from.
//!
//! Two moving averages (weight 1/8 for the newest execution), updated by the worker after each
//! execution without a lock: the time one execution takes and the rows it carried. Concurrent
//! updates may lose one sample to another; the figure is an estimate either way.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Rows are averaged in sixteenths, so that a mean of 1.5 rows is not rounded to 1 or 2.
const ROW_SCALE: u64 = 16;

/// The moving averages; zero until the first execution.
#[derive(Debug, Default)]
pub struct ServiceTime {
    execution_ns: AtomicU64,
    rows_scaled: AtomicU64,
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
        let ns = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        let rows = rows.max(1).saturating_mul(ROW_SCALE);
        let blend = |old: u64, new: u64| {
            if old == 0 {
                new
            } else {
                // old + (new - old) / 8, in integers without overflow for any u64 pair.
                old - old / 8 + new / 8
            }
        };
        let old = self.execution_ns.load(Ordering::Relaxed);
        self.execution_ns.store(blend(old, ns), Ordering::Relaxed);
        let old = self.rows_scaled.load(Ordering::Relaxed);
        self.rows_scaled.store(blend(old, rows), Ordering::Relaxed);
    }

    /// The mean time of one execution; `None` before any was measured.
    pub fn execution(&self) -> Option<Duration> {
        match self.execution_ns.load(Ordering::Relaxed) {
            0 => None,
            ns => Some(Duration::from_nanos(ns)),
        }
    }

    /// The mean cost of one request (an execution's time over the rows it carried); `None` before
    /// any execution was measured.
    pub fn per_request(&self) -> Option<Duration> {
        let ns = self.execution_ns.load(Ordering::Relaxed);
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
