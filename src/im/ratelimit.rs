//! Paces calls to IM at a rate that never exceeds the configured ceiling, lowered
//! multiplicatively when IM answers "frequency exceeded" and raised additively while it does not.
//!
//! Each caller reserves the next slot of a schedule (GCRA) under a short lock, then sleeps until
//! it. Slots follow the schedule, not the moment a sleeper woke, so timer lateness is not lost
//! and waiters never stampede.
//!
//! Sweep calls reserve a slot only once the schedule is at most [`LOOKAHEAD`] ahead, so the
//! slots they hold are few: an urgent call (the re-query a callback asked for) reserves at once
//! and goes right after them, instead of behind every sweep call in flight.

use std::sync::Mutex;
use std::time::Duration;
use tokio::time::Instant;

/// How far ahead of the schedule sweep calls reserve slots (at least ten intervals): enough to
/// keep the pace through late timer wake-ups, little for an urgent call to wait behind.
pub const LOOKAHEAD: Duration = Duration::from_millis(50);

/// Paces calls evenly at a rate that halves on IM's rate-limit codes and recovers.
#[derive(Debug)]
pub struct RateLimiter {
    ceiling: f64,
    floor: f64,
    /// How far behind the schedule may run after an idle spell: calls that may go back to back.
    burst: f64,
    inner: Mutex<Inner>,
}

#[derive(Debug)]
struct Inner {
    rate: f64,
    /// The earliest time the next call may start.
    next: Instant,
    last_change: Option<Instant>,
}

impl RateLimiter {
    /// `burst` is how many calls may go out back to back after an idle spell; 1 spaces them evenly.
    pub fn new(calls_per_second: f64, burst: u32) -> Self {
        let ceiling = calls_per_second.max(0.001);
        RateLimiter {
            ceiling,
            floor: (ceiling / 50.0).max(0.5).min(ceiling),
            burst: f64::from(burst.max(1)),
            inner: Mutex::new(Inner {
                rate: ceiling,
                next: Instant::now(),
                last_change: None,
            }),
        }
    }

    /// The rate calls are paced at now, per second.
    pub fn current_rate(&self) -> f64 {
        self.inner.lock().expect("limiter lock").rate
    }

    /// Waits for a call slot, behind urgent calls. Returns how long it waited.
    pub async fn acquire(&self) -> Duration {
        self.acquire_as(false).await
    }

    /// Waits for a call slot ahead of any sweep call not yet holding one.
    pub async fn acquire_urgent(&self) -> Duration {
        self.acquire_as(true).await
    }

    async fn acquire_as(&self, urgent: bool) -> Duration {
        let asked = Instant::now();
        let slot = loop {
            let now = Instant::now();
            let wait_until = {
                let mut s = self.inner.lock().expect("limiter lock");
                s.recover(now, self.ceiling);
                let interval = Duration::from_secs_f64(1.0 / s.rate);
                let earliest = now
                    .checked_sub(interval.mul_f64(self.burst - 1.0))
                    .unwrap_or(now);
                let slot = s.next.max(earliest);
                let lookahead = LOOKAHEAD.max(interval * 10);
                if urgent || slot <= now + lookahead {
                    s.next = slot + interval;
                    break slot;
                }
                slot - lookahead
            };
            tokio::time::sleep_until(wait_until).await;
        };
        if slot > Instant::now() {
            tokio::time::sleep_until(slot).await;
        }
        slot.saturating_duration_since(asked)
    }

    /// IM said "frequency exceeded": halve the rate, at most once per second so that a burst of
    /// such answers from calls already in flight counts as one signal, and pause one new interval.
    pub fn on_throttled(&self) {
        let mut s = self.inner.lock().expect("limiter lock");
        let now = Instant::now();
        if s.last_change
            .is_some_and(|t| now.duration_since(t) < Duration::from_secs(1))
        {
            return;
        }
        s.rate = (s.rate / 2.0).max(self.floor);
        s.next = s.next.max(now) + Duration::from_secs_f64(1.0 / s.rate);
        s.last_change = Some(now);
    }
}

impl Inner {
    /// Additive increase: a tenth of the ceiling per second without a throttle answer.
    fn recover(&mut self, now: Instant, ceiling: f64) {
        if self.rate >= ceiling {
            return;
        }
        let since = self
            .last_change
            .map_or(1.0, |t| now.duration_since(t).as_secs_f64());
        if since >= 1.0 {
            self.rate = (self.rate + ceiling / 10.0).min(ceiling);
            self.last_change = Some(now);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn never_exceeds_the_ceiling() {
        let limiter = RateLimiter::new(100.0, 1);
        let start = Instant::now();
        for _ in 0..201 {
            limiter.acquire().await;
        }
        // 201 evenly spaced calls at 100/s span exactly 2 s of (virtual) time.
        assert_eq!(start.elapsed(), Duration::from_secs(2));
    }

    #[tokio::test(start_paused = true)]
    async fn concurrent_waiters_share_the_schedule() {
        let limiter = std::sync::Arc::new(RateLimiter::new(200.0, 1));
        let start = Instant::now();
        let tasks: Vec<_> = (0..50)
            .map(|_| {
                let l = limiter.clone();
                tokio::spawn(async move {
                    for _ in 0..20 {
                        l.acquire().await;
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        // 1,000 calls at 200/s: the last starts 4.995 s after the first.
        assert_eq!(start.elapsed(), Duration::from_micros(4_995_000));
    }

    #[tokio::test(start_paused = true)]
    async fn halves_on_throttle_then_recovers() {
        let limiter = RateLimiter::new(200.0, 1);
        limiter.on_throttled();
        assert_eq!(limiter.current_rate(), 100.0);
        limiter.on_throttled(); // within the same second: ignored
        assert_eq!(limiter.current_rate(), 100.0);
        tokio::time::advance(Duration::from_secs(1)).await;
        limiter.acquire().await;
        assert_eq!(limiter.current_rate(), 120.0);
        for _ in 0..5 {
            tokio::time::advance(Duration::from_secs(1)).await;
            limiter.acquire().await;
        }
        assert_eq!(limiter.current_rate(), 200.0);
    }

    #[tokio::test(start_paused = true)]
    async fn an_urgent_call_goes_ahead_of_sweep_calls_waiting_for_slots() {
        let limiter = std::sync::Arc::new(RateLimiter::new(200.0, 1));
        let start = Instant::now();
        // 64 sweep calls waiting at once, as a sweep keeps them in flight.
        let sweep: Vec<_> = (0..64)
            .map(|_| {
                let l = limiter.clone();
                tokio::spawn(async move { l.acquire().await })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(1)).await;
        let waited = limiter.acquire_urgent().await;
        // Behind the slots reserved within the look-ahead, not behind all 64 (320 ms).
        assert!(
            waited <= LOOKAHEAD + Duration::from_millis(10),
            "waited {waited:?}"
        );
        for t in sweep {
            t.await.unwrap();
        }
        // The sweep's own pace is unchanged: 65 calls at 200/s.
        assert_eq!(start.elapsed(), Duration::from_millis(320));
    }
}
