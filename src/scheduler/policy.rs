//! The batching policy, as a pure function over a model's queue, so that it can be tested without
//! threads or clocks.
//!
//! When a worker is free it takes the oldest request of the model whose request is oldest overall,
//! then every later request of the same model whose inputs have the same shape apart from the batch
//! axis, in arrival order, until the batch holds `max_rows` rows. Requests that cannot be served any
//! more (deadline passed, client gone, cancelled) are taken out wherever they are, so they neither
//! wait nor count towards the batch: the worker answers them without computing anything.

/// What the policy needs to know of one queued request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry<'a> {
    /// Rows along the batch axis (1 for a model without one).
    pub rows: u64,
    /// Input shapes without the batch axis: requests batch together only if these are equal.
    pub key: &'a [u64],
    /// Still worth computing: deadline not passed, client still there, not cancelled.
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

#[cfg(test)]
mod tests {
    use super::*;

    fn e(rows: u64, key: &[u64], live: bool) -> Entry<'_> {
        Entry { rows, key, live }
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
}
