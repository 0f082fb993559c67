//! The batching policy, as a pure function over a model's queue, so that it can be tested without
//! threads or clocks.
//!
//! When a worker is free it takes the oldest request of the model whose request is oldest overall,
//! then every later request of the same model whose inputs have the same shape apart from the batch
//! axis, in arrival order, until the batch holds `max_rows` rows. Requests that cannot be served any
//! more (deadline passed or too close to finish a run before it, client gone, cancelled) are taken
//! out wherever they are, so they neither wait nor count towards the batch: the worker answers them
//! without computing anything.

use std::time::{Duration, Instant};

/// What the policy needs to know of one queued request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry<'a> {
    /// Rows along the batch axis (1 for a model without one).
    pub rows: u64,
    /// Input shapes without the batch axis: requests batch together only if these are equal.
    pub key: &'a [u64],
    /// Still worth computing: it can finish before its deadline ([`worth_starting`]), its client
    /// is still there, it is not cancelled.
    pub live: bool,
}

/// Which queue positions to take out, in arrival order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Take {
    /// Live requests forming the batch (the first one is the oldest live request).
    pub batch: Vec<usize>,
    /// Requests that are no longer worth computing, to be answered and dropped.
    pub dead: Vec<usize>,
}

/// Plans one batch from a model's queue (oldest first). With `max_rows <= 1`, or a head request that
/// alone reaches `max_rows`, the batch is that one request.
pub fn take(queue: &[Entry<'_>], max_rows: u64) -> Take {
    let mut out = Take::default();
    let mut rows = 0u64;
    let mut head_key: Option<&[u64]> = None;
    for (ix, entry) in queue.iter().enumerate() {
        if !entry.live {
            out.dead.push(ix);
            continue;
        }
        match head_key {
            None => {
                head_key = Some(entry.key);
                rows = entry.rows;
                out.batch.push(ix);
            }
            Some(key) => {
                let fits = rows.checked_add(entry.rows).is_some_and(|r| r <= max_rows);
                if key == entry.key && fits {
                    rows += entry.rows;
                    out.batch.push(ix);
                }
            }
        }
    }
    out
}

/// What deciding whether to hold a partial batch open needs to know.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hold {
    /// The clock now.
    pub now: Instant,
    /// When the batch's oldest request was queued.
    pub oldest: Instant,
    /// The earliest deadline among the batch's requests.
    pub earliest_deadline: Instant,
    /// Rows the batch holds now.
    pub rows: u64,
    /// Rows it may hold.
    pub max_rows: u64,
    /// The model's `max_delay` (zero: never hold).
    pub max_delay: Duration,
    /// The model's measured time for one execution, when known.
    pub run_time: Option<Duration>,
    /// Executions of this model running on other workers now.
    pub others_running: usize,
}

/// Until when a free worker should leave a partial batch queued for more requests to join; `None`:
/// run it now. A batch is held only when the model's `max_delay` is set, the batch is not full, and
/// other workers are busy with the model (so requests are arriving faster than one worker serves
/// them: an idle system never waits), and never past its oldest request's `max_delay` nor past its
/// earliest deadline minus the model's run time (so that it can still finish in time).
pub fn hold_until(h: &Hold) -> Option<Instant> {
    if h.max_delay.is_zero() || h.rows >= h.max_rows || h.others_running == 0 {
        return None;
    }
    let by_delay = h.oldest.checked_add(h.max_delay)?;
    let by_deadline = h
        .earliest_deadline
        .checked_sub(h.run_time.unwrap_or_default())
        .unwrap_or(h.now);
    let until = by_delay.min(by_deadline);
    (until > h.now).then_some(until)
}

/// Whether a request due at `deadline` is worth starting at `now`: a run of the model's measured
/// `run_time` would end before the deadline. An answer after its deadline is useless to the client
/// (it has given up or will discard it), and computing it holds a worker that requests which can
/// still be answered in time are waiting for: under overload, starting such work is what turns
/// every queued request into a late one. Without a measurement only a passed deadline counts.
pub fn worth_starting(now: Instant, deadline: Instant, run_time: Option<Duration>) -> bool {
    now.checked_add(run_time.unwrap_or_default())
        .is_some_and(|done| done < deadline)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(rows: u64, key: &[u64], live: bool) -> Entry<'_> {
        Entry { rows, key, live }
    }

    #[test]
    fn a_request_is_worth_starting_only_if_a_run_ends_before_its_deadline() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let run = Some(ms(2));
        assert!(worth_starting(t0, t0 + ms(3), run));
        // Not passed yet, but a 2 ms run would end after it.
        assert!(!worth_starting(t0, t0 + ms(1), run));
        assert!(
            !worth_starting(t0, t0 + ms(2), run),
            "ending at the deadline is late"
        );
        assert!(!worth_starting(t0 + ms(5), t0 + ms(3), run), "passed");
        // Before the model's first measured run, only the deadline itself counts.
        assert!(worth_starting(t0, t0 + ms(1), None));
        assert!(!worth_starting(t0, t0, None));
        // A run time past the clock's range never fits.
        assert!(!worth_starting(t0, t0 + ms(1), Some(Duration::MAX)));
    }

    #[test]
    fn takes_compatible_requests_in_order_up_to_max_rows() {
        let a: &[u64] = &[64];
        let b: &[u64] = &[32];
        let q = [
            e(1, a, true),
            e(2, b, true),
            e(2, a, true),
            e(4, a, true),
            e(1, a, true),
        ];
        // 1 + 2 = 3 rows; the 4-row request would exceed 4; the last one fits.
        assert_eq!(
            take(&q, 4),
            Take {
                batch: vec![0, 2, 4],
                dead: vec![]
            }
        );
        assert_eq!(take(&q, 1).batch, vec![0]);
        assert_eq!(take(&q, 100).batch, vec![0, 2, 3, 4]);
    }

    #[test]
    fn dead_requests_are_removed_and_never_batched() {
        let a: &[u64] = &[64];
        let q = [e(1, a, false), e(1, a, true), e(1, a, false), e(1, a, true)];
        assert_eq!(
            take(&q, 8),
            Take {
                batch: vec![1, 3],
                dead: vec![0, 2]
            }
        );
        let all_dead = [e(1, a, false), e(1, a, false)];
        assert_eq!(
            take(&all_dead, 8),
            Take {
                batch: vec![],
                dead: vec![0, 1]
            }
        );
    }

    #[test]
    fn a_large_head_goes_alone() {
        let a: &[u64] = &[64];
        let q = [e(50, a, true), e(1, a, true)];
        assert_eq!(take(&q, 32).batch, vec![0]);
        assert_eq!(take(&[], 32), Take::default());
    }

    #[test]
    fn holds_a_partial_batch_only_on_a_busy_model_and_within_its_bounds() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let busy = Hold {
            now: t0 + ms(1),
            oldest: t0,
            earliest_deadline: t0 + ms(100),
            rows: 2,
            max_rows: 8,
            max_delay: ms(5),
            run_time: Some(ms(10)),
            others_running: 1,
        };
        // Held until the oldest request has waited max_delay.
        assert_eq!(hold_until(&busy), Some(t0 + ms(5)));
        // Never with max_delay off, a full batch, or no other worker on the model (idle system).
        assert_eq!(
            hold_until(&Hold {
                max_delay: ms(0),
                ..busy
            }),
            None
        );
        assert_eq!(hold_until(&Hold { rows: 8, ..busy }), None);
        assert_eq!(
            hold_until(&Hold {
                others_running: 0,
                ..busy
            }),
            None
        );
        // Not past the earliest deadline minus the model's run time...
        let tight = Hold {
            earliest_deadline: t0 + ms(13),
            ..busy
        };
        assert_eq!(hold_until(&tight), Some(t0 + ms(3)));
        // ...and not at all once that has passed, or once max_delay has.
        assert_eq!(
            hold_until(&Hold {
                earliest_deadline: t0 + ms(10),
                ..busy
            }),
            None
        );
        assert_eq!(
            hold_until(&Hold {
                now: t0 + ms(5),
                ..busy
            }),
            None
        );
        // Without a measured run time, the deadline itself bounds the hold.
        let unknown = Hold {
            earliest_deadline: t0 + ms(3),
            run_time: None,
            ..busy
        };
        assert_eq!(hold_until(&unknown), Some(t0 + ms(3)));
    }
}
