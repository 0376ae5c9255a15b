//! Exponential backoff with jitter for retries.

use rand::Rng;
use std::time::Duration;

/// Delay before retrying after failed attempt `attempt` (from 1): `base * 2^(attempt-1)`, capped
/// at `max`, then scaled by a random factor in [0.5, 1.0] so failed jobs do not retry in lockstep.
pub fn backoff(attempt: u32, base: Duration, max: Duration) -> Duration {
    let exp = base.saturating_mul(1u32 << attempt.saturating_sub(1).min(20));
    let capped = exp.min(max);
    let jitter: f64 = rand::rng().random_range(0.5..=1.0);
    capped.mul_f64(jitter)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_exponentially_with_jitter_and_a_cap() {
        let b = Duration::from_secs(1);
        let m = Duration::from_secs(60);
        for attempt in 1..=5u32 {
            let full = Duration::from_secs(1 << (attempt - 1));
            for _ in 0..50 {
                let d = backoff(attempt, b, m);
                assert!(d >= full / 2 && d <= full, "attempt {attempt}: {d:?}");
            }
        }
        for _ in 0..50 {
            assert!(backoff(30, b, m) <= m);
            assert!(backoff(30, b, m) >= m / 2);
        }
        let spread: std::collections::HashSet<_> =
            (0..20).map(|_| backoff(3, b, m).as_millis()).collect();
        assert!(spread.len() > 1, "jitter varies");
    }
}
