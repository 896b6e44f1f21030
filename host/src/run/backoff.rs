//! Exponential backoff with jitter for the sources, honouring `Retry-After`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The longest `Retry-After` honoured (a server asking for more is broken or hostile).
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(300);

/// Exponential backoff: the n-th consecutive failure waits about `initial * 2^(n-1)`, capped
/// at `max`, with "equal jitter" (half the delay fixed, half random) so that many hosts that
/// failed together do not retry together.
#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    failures: u32,
}

impl Backoff {
    /// A backoff starting at `initial` and never above `max`.
    pub fn new(initial: Duration, max: Duration) -> Backoff {
        Backoff {
            initial,
            max,
            failures: 0,
        }
    }

    /// Forgets the failures (after a success).
    pub fn reset(&mut self) {
        self.failures = 0;
    }

    /// The wait after one more failure; at least `retry_after` (capped at
    /// [`MAX_RETRY_AFTER`]) when the server sent one.
    pub fn next(&mut self, retry_after: Option<Duration>) -> Duration {
        let wait = equal_jitter(self.initial, self.failures, self.max, retry_after);
        self.failures = self.failures.saturating_add(1);
        wait
    }
}

/// The wait after `failed` earlier consecutive failures (0 for the first): the delay
/// `initial * 2^failed`, capped at `max`, with equal jitter (half of it fixed, half random),
/// and at least the server's `Retry-After` (capped at [`MAX_RETRY_AFTER`]). Saturating: a
/// huge `initial` never overflows. The one backoff of the sources and the outbox.
pub fn equal_jitter(
    initial: Duration,
    failed: u32,
    max: Duration,
    retry_after: Option<Duration>,
) -> Duration {
    let mut d = initial.min(max);
    for _ in 0..failed {
        if d >= max || d.is_zero() {
            break;
        }
        d = d.saturating_mul(2).min(max);
    }
    let wait = d / 2 + jitter(d / 2);
    match retry_after {
        Some(r) => r.min(MAX_RETRY_AFTER).max(wait),
        None => wait,
    }
}

/// The longest wait a timer is armed for: about a century. A configured or received duration
/// beyond it (an instant cannot count that far on every platform) waits this long instead.
pub const FAR_FUTURE: Duration = Duration::from_secs(100 * 365 * 86_400);

/// `now + d`, saturating at [`FAR_FUTURE`] from `now` (never an overflow panic).
pub fn later(now: tokio::time::Instant, d: Duration) -> tokio::time::Instant {
    now.checked_add(d.min(FAR_FUTURE))
        .or_else(|| now.checked_add(Duration::from_secs(86_400)))
        .unwrap_or(now)
}

/// A uniformly random duration in `[0, max]` (splitmix64 over the clock and a counter: not
/// cryptographic, only enough to spread retries).
pub fn jitter(max: Duration) -> Duration {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    let mut z = nanos
        ^ COUNTER
            .fetch_add(0x9e37_79b9_7f4a_7c15, Ordering::Relaxed)
            .wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^= z >> 31;
    let max_ns = u64::try_from(max.as_nanos()).unwrap_or(u64::MAX);
    if max_ns == 0 {
        return Duration::ZERO;
    }
    Duration::from_nanos(z % max_ns.saturating_add(1).max(1))
}

/// The `Retry-After` header: delay-seconds or an HTTP date, capped at [`MAX_RETRY_AFTER`].
pub fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let v = headers
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim();
    if let Ok(s) = v.parse::<u64>() {
        return Some(Duration::from_secs(s).min(MAX_RETRY_AFTER));
    }
    let at = chrono::DateTime::parse_from_rfc2822(v).ok()?;
    let secs = (at.with_timezone(&chrono::Utc) - chrono::Utc::now()).num_milliseconds();
    Some(Duration::from_millis(u64::try_from(secs).unwrap_or(0)).min(MAX_RETRY_AFTER))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_the_cap_with_jitter_and_honours_retry_after() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(400));
        let waits: Vec<Duration> = (0..5).map(|_| b.next(None)).collect();
        for (w, d) in waits.iter().zip([100u64, 200, 400, 400, 400]) {
            assert!(
                *w >= Duration::from_millis(d / 2) && *w <= Duration::from_millis(d),
                "{w:?} not in [{}, {d}] ms",
                d / 2
            );
        }
        assert!(b.next(Some(Duration::from_secs(3))) >= Duration::from_secs(3));
        assert_eq!(b.next(Some(Duration::from_secs(100_000))), MAX_RETRY_AFTER);
        b.reset();
        assert!(b.next(None) <= Duration::from_millis(100));
    }

    #[test]
    fn equal_jitter_doubles_caps_and_ends_for_any_failure_count() {
        let ms = Duration::from_millis;
        for (failed, d) in [
            (0u32, 100u64),
            (1, 200),
            (2, 400),
            (3, 400),
            (u32::MAX, 400),
        ] {
            let w = equal_jitter(ms(100), failed, ms(400), None);
            assert!(w >= ms(d / 2) && w <= ms(d), "{failed}: {w:?}");
        }
        // A zero initial delay stays zero (and a huge failure count ends at once).
        assert_eq!(
            equal_jitter(Duration::ZERO, u32::MAX, ms(400), None),
            Duration::ZERO
        );
        assert!(equal_jitter(Duration::MAX, u32::MAX, Duration::MAX, None) >= Duration::MAX / 2);
        assert_eq!(
            equal_jitter(ms(1), 0, ms(400), Some(Duration::from_secs(100_000))),
            MAX_RETRY_AFTER
        );
    }

    #[test]
    fn later_saturates_for_any_duration() {
        let now = tokio::time::Instant::now();
        for d in [
            Duration::ZERO,
            Duration::from_secs(1),
            FAR_FUTURE,
            Duration::from_secs(100_000_000 * 86_400),
            Duration::from_secs(u64::MAX),
            Duration::MAX,
        ] {
            let t = later(now, d);
            assert!(t >= now);
            assert!(t.duration_since(now) <= d.min(FAR_FUTURE), "{d:?}");
        }
        assert_eq!(
            later(now, Duration::from_secs(5)),
            now + Duration::from_secs(5)
        );
        assert_eq!(later(now, Duration::MAX).duration_since(now), FAR_FUTURE);
    }

    #[test]
    fn a_huge_initial_backoff_saturates() {
        let mut b = Backoff::new(Duration::MAX, Duration::MAX);
        for _ in 0..3 {
            assert!(b.next(None) >= Duration::MAX / 2);
        }
    }

    #[test]
    fn retry_after_reads_seconds_and_dates() {
        let mut h = reqwest::header::HeaderMap::new();
        h.insert(
            reqwest::header::RETRY_AFTER,
            reqwest::header::HeaderValue::from_static("7"),
        );
        assert_eq!(retry_after(&h), Some(Duration::from_secs(7)));
        h.insert(
            reqwest::header::RETRY_AFTER,
            reqwest::header::HeaderValue::from_static("Sun, 06 Nov 1994 08:49:37 GMT"),
        );
        assert_eq!(retry_after(&h), Some(Duration::ZERO));
        h.insert(
            reqwest::header::RETRY_AFTER,
            reqwest::header::HeaderValue::from_static("soon"),
        );
        assert_eq!(retry_after(&h), None);
    }
}
