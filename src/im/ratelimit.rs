//! Paces calls to IM: a token bucket whose rate never exceeds the configured ceiling, lowered
//! multiplicatively when IM answers "frequency exceeded" and raised additively while it does not.

use std::sync::Mutex;
use std::time::Duration;
use tokio::time::Instant;

#[derive(Debug)]
pub struct RateLimiter {
    ceiling: f64,
    floor: f64,
    burst: f64,
    inner: Mutex<Inner>,
}

#[derive(Debug)]
struct Inner {
    rate: f64,
    tokens: f64,
    last_refill: Instant,
    last_decrease: Option<Instant>,
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
                tokens: 1.0,
                last_refill: Instant::now(),
                last_decrease: None,
            }),
        }
    }

    pub fn ceiling(&self) -> f64 {
        self.ceiling
    }

    pub fn current_rate(&self) -> f64 {
        self.inner.lock().expect("limiter lock").rate
    }

    /// Waits for a call slot. Returns how long it waited.
    pub async fn acquire(&self) -> Duration {
        let started = Instant::now();
        loop {
            let wait = {
                let mut s = self.inner.lock().expect("limiter lock");
                let now = Instant::now();
                s.refill(now, self.burst);
                s.recover(now, self.ceiling);
                if s.tokens >= 1.0 {
                    s.tokens -= 1.0;
                    None
                } else {
                    Some(Duration::from_secs_f64((1.0 - s.tokens) / s.rate))
                }
            };
            match wait {
                None => return started.elapsed(),
                Some(d) => tokio::time::sleep(d).await,
            }
        }
    }

    /// IM said "frequency exceeded": halve the rate, at most once per second so that a burst of
    /// such answers from calls already in flight counts as one signal.
    pub fn on_throttled(&self) {
        let mut s = self.inner.lock().expect("limiter lock");
        let now = Instant::now();
        if s.last_decrease
            .is_some_and(|t| now.duration_since(t) < Duration::from_secs(1))
        {
            return;
        }
        s.refill(now, self.burst);
        s.rate = (s.rate / 2.0).max(self.floor);
        s.tokens = s.tokens.min(0.0);
        s.last_decrease = Some(now);
    }
}

impl Inner {
    fn refill(&mut self, now: Instant, burst: f64) {
        let elapsed = now.duration_since(self.last_refill).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(burst);
        self.last_refill = now;
    }

    /// Additive increase: a tenth of the ceiling per second without a throttle answer.
    fn recover(&mut self, now: Instant, ceiling: f64) {
        if self.rate >= ceiling {
            return;
        }
        let since = self
            .last_decrease
            .map_or(1.0, |t| now.duration_since(t).as_secs_f64());
        if since >= 1.0 {
            self.rate = (self.rate + ceiling / 10.0 * since.min(1.0)).min(ceiling);
            self.last_decrease = Some(now);
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
        // 201 calls at 100/s need at least 2 s of (virtual) time.
        assert!(start.elapsed() >= Duration::from_secs(2));
        assert!(start.elapsed() < Duration::from_millis(2100));
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
}
