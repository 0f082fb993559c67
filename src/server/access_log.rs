//! Sampling for the access log: which answered requests get a line (`--access-log-sample`).

use std::sync::atomic::{AtomicU64, Ordering};

static STATE: AtomicU64 = AtomicU64::new(0x9E37_79B9_7F4A_7C15);

/// True for about `rate` of the calls (0: never, 1: always). A shared splitmix64 sequence: cheap, and
/// unpredictable enough that a peer cannot steer which of its requests are logged by their timing.
pub fn sampled(rate: f64) -> bool {
    if rate <= 0.0 {
        return false;
    }
    if rate >= 1.0 {
        return true;
    }
    let mut z = STATE
        .fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed)
        .wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    ((z >> 11) as f64 / (1u64 << 53) as f64) < rate
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sampled_fraction_is_close_to_the_rate() {
        assert!(!sampled(0.0));
        assert!(sampled(1.0));
        let hits = (0..100_000).filter(|_| sampled(0.1)).count();
        assert!((9_000..11_000).contains(&hits), "{hits}");
    }
}
