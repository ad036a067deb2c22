//! Paces calls to IM at a rate it learns: never above the configured ceiling, lowered when IM
//! answers "frequency exceeded", and raised only after calls went out at the full current rate
//! without one. Time alone raises nothing, so what was learned survives the idle time between
//! sweeps (another service of the same app may be using the rest of the app's budget).
//!
//! Two lanes share the rate: hinted calls (the re-queries callbacks ask for) get a fixed share
//! of it and sweep calls the rest, so a flood of callbacks can neither take the sweep's calls
//! nor spend more of the app's budget than its share. Each lane is its own schedule (GCRA):
//! a caller reserves the next slot under a short lock and sleeps until it. Slots follow the
//! schedule, not the moment a sleeper woke, so timer lateness is not lost and waiters never
//! stampede. Callers reserve only once the schedule is at most [`LOOKAHEAD`] ahead, so a lower
//! rate applies to calls not yet out within that time.

use std::sync::Mutex;
use std::time::Duration;
use tokio::time::Instant;

/// How far ahead of a lane's schedule callers reserve slots (at least ten intervals): enough
/// to keep the pace through late timer wake-ups, few enough that a lower rate applies at once.
pub const LOOKAHEAD: Duration = Duration::from_millis(50);

/// Each "frequency exceeded" from a call made at the current rate lowers it by this factor.
const DECREASE: f64 = 0.9;
/// Each second in which a lane ran at its full pace with no refusal raises the rate this much.
const INCREASE: f64 = 1.02;
/// A refusal within this time of the last decrease is one more sign of the same excess.
const DECREASE_GAP: Duration = Duration::from_millis(100);
/// A lane that used this fraction of its slots in a second ran at its full pace.
const BUSY: f64 = 0.9;

/// A call's slot, and which of the rate's decreases it was granted after.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grant {
    /// When the call may go.
    pub at: Instant,
    /// How many decreases the rate had seen when the slot was granted.
    epoch: u64,
}

/// Which calls a slot is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lane {
    /// A sweep's batches.
    Sweep,
    /// Re-queries a callback asked for.
    Hinted,
}

impl Lane {
    fn index(self) -> usize {
        match self {
            Lane::Sweep => 0,
            Lane::Hinted => 1,
        }
    }
}

/// Paces calls at a learned rate, split between the two lanes.
#[derive(Debug)]
pub struct RateLimiter {
    ceiling: f64,
    floor: f64,
    inner: Mutex<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// The learned rate, calls per second, both lanes together.
    rate: f64,
    /// The hinted lane's part of `rate`; 0 while callbacks are off (sweeps get it all).
    hinted_share: f64,
    /// Each lane's earliest time for its next call.
    next: [Instant; 2],
    last_decrease: Option<Instant>,
    /// Decreases so far: a refusal of a slot granted before the last one says nothing new.
    epoch: u64,
    /// The second being measured: calls granted per lane, and whether IM refused any.
    window_start: Instant,
    granted: [u64; 2],
    throttled: bool,
}

impl RateLimiter {
    /// A limiter starting at, and never above, `calls_per_second`.
    pub fn new(calls_per_second: f64) -> Self {
        let ceiling = calls_per_second.max(0.001);
        let now = Instant::now();
        RateLimiter {
            ceiling,
            floor: (ceiling / 50.0).max(0.5).min(ceiling),
            inner: Mutex::new(Inner {
                rate: ceiling,
                hinted_share: 0.0,
                next: [now; 2],
                last_decrease: None,
                epoch: 0,
                window_start: now,
                granted: [0; 2],
                throttled: false,
            }),
        }
    }

    /// The rate calls are paced at now, per second, both lanes together.
    pub fn current_rate(&self) -> f64 {
        self.inner.lock().expect("limiter lock").rate
    }

    /// Keeps `share` (0 to 1) of the rate for hinted calls; sweeps get the rest.
    pub fn set_hinted_share(&self, share: f64) {
        self.inner.lock().expect("limiter lock").hinted_share = share.clamp(0.0, 1.0);
    }

    /// Waits for a slot in `lane`, and returns it.
    pub async fn acquire(&self, lane: Lane) -> Grant {
        loop {
            let now = Instant::now();
            let wait_until = match self.reserve(lane, now, None) {
                Ok(grant) => {
                    tokio::time::sleep_until(grant.at).await;
                    return grant;
                }
                Err(free_at) => free_at,
            };
            tokio::time::sleep_until(wait_until).await;
        }
    }

    /// A slot in `lane` if one is free within [`LOOKAHEAD`] (the caller sleeps until it), or
    /// `Err` with the time one will be. Hinted calls take their accounts only once they have a
    /// slot, so that hints arriving meanwhile merge into the call.
    pub fn try_acquire(&self, lane: Lane) -> Result<Grant, Instant> {
        self.reserve(lane, Instant::now(), Some(LOOKAHEAD))
    }

    /// When a slot in `lane` will next be free within [`LOOKAHEAD`] (now or in the past if one
    /// is), without taking it.
    pub fn next_free(&self, lane: Lane) -> Instant {
        let s = self.inner.lock().expect("limiter lock");
        s.next[lane.index()]
            .checked_sub(LOOKAHEAD)
            .unwrap_or_else(Instant::now)
    }

    fn reserve(
        &self,
        lane: Lane,
        now: Instant,
        lookahead: Option<Duration>,
    ) -> Result<Grant, Instant> {
        let mut s = self.inner.lock().expect("limiter lock");
        s.learn(now, self.ceiling);
        let lane_rate = s.lane_rate(lane).max(self.floor / 10.0);
        let interval = Duration::from_secs_f64(1.0 / lane_rate);
        let next = &mut s.next[lane.index()];
        let slot = (*next).max(now);
        let lookahead = lookahead.unwrap_or(LOOKAHEAD.max(interval * 10));
        if slot > now + lookahead {
            return Err(slot - lookahead);
        }
        *next = slot + interval;
        s.granted[lane.index()] += 1;
        Ok(Grant {
            at: slot,
            epoch: s.epoch,
        })
    }

    /// IM said "frequency exceeded" to the call of `grant`. A slot granted before the last
    /// decrease was paced at the old rate and says nothing new; any other lowers the rate and
    /// pauses each lane one new interval.
    pub fn on_throttled(&self, grant: Grant) {
        let mut s = self.inner.lock().expect("limiter lock");
        let now = Instant::now();
        s.throttled = true;
        if grant.epoch < s.epoch || s.last_decrease.is_some_and(|t| now < t + DECREASE_GAP) {
            return;
        }
        s.rate = (s.rate * DECREASE).max(self.floor);
        for lane in [Lane::Sweep, Lane::Hinted] {
            let rate = s.lane_rate(lane).max(self.floor / 10.0);
            let next = &mut s.next[lane.index()];
            *next = (*next).max(now) + Duration::from_secs_f64(1.0 / rate);
        }
        s.last_decrease = Some(now);
        s.epoch += 1;
    }
}

impl Inner {
    fn lane_rate(&self, lane: Lane) -> f64 {
        match lane {
            Lane::Sweep => self.rate * (1.0 - self.hinted_share),
            Lane::Hinted => self.rate * self.hinted_share,
        }
    }

    /// Closes the measured second once it is over: if the sweep's lane used nearly all its
    /// slots and IM refused none, the rate goes up a step. Hinted calls alone raise nothing
    /// (their lane is a small part of the rate), and an idle spell is one long second that was
    /// not busy.
    fn learn(&mut self, now: Instant, ceiling: f64) {
        let elapsed = now.duration_since(self.window_start).as_secs_f64();
        if elapsed < 1.0 {
            return;
        }
        let capacity = self.lane_rate(Lane::Sweep) * elapsed;
        let busy = capacity > 0.0 && self.granted[Lane::Sweep.index()] as f64 >= BUSY * capacity;
        if busy && !self.throttled {
            self.rate = (self.rate * INCREASE).min(ceiling);
        }
        self.window_start = now;
        self.granted = [0; 2];
        self.throttled = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[tokio::test(start_paused = true)]
    async fn never_exceeds_the_ceiling() {
        let limiter = RateLimiter::new(100.0);
        let start = Instant::now();
        for _ in 0..201 {
            limiter.acquire(Lane::Sweep).await;
        }
        // 201 evenly spaced calls at 100/s span exactly 2 s of (virtual) time.
        assert_eq!(start.elapsed(), Duration::from_secs(2));
    }

    #[tokio::test(start_paused = true)]
    async fn concurrent_waiters_share_the_schedule() {
        let limiter = Arc::new(RateLimiter::new(200.0));
        let start = Instant::now();
        let tasks: Vec<_> = (0..50)
            .map(|_| {
                let l = limiter.clone();
                tokio::spawn(async move {
                    for _ in 0..20 {
                        l.acquire(Lane::Sweep).await;
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
    async fn a_refusal_lowers_the_rate_once_per_excess() {
        let limiter = RateLimiter::new(200.0);
        let slot = limiter.acquire(Lane::Sweep).await;
        // Granted before the decrease, to go out after it (reserved ahead).
        let early = limiter.try_acquire(Lane::Sweep).unwrap();
        limiter.on_throttled(slot);
        assert_eq!(limiter.current_rate(), 180.0);
        // Calls granted before that decrease, refused after it: the same excess.
        tokio::time::advance(DECREASE_GAP).await;
        limiter.on_throttled(slot);
        limiter.on_throttled(early);
        assert_eq!(limiter.current_rate(), 180.0);
        // A call made at the new rate and refused too: lower again.
        let slot = limiter.acquire(Lane::Sweep).await;
        limiter.on_throttled(slot);
        assert_eq!(limiter.current_rate(), 162.0);
    }

    #[tokio::test(start_paused = true)]
    async fn idle_time_does_not_raise_the_rate() {
        let limiter = RateLimiter::new(200.0);
        let slot = limiter.acquire(Lane::Sweep).await;
        limiter.on_throttled(slot);
        // A minute between sweeps, then a few calls: still what was learned.
        tokio::time::advance(Duration::from_secs(60)).await;
        for _ in 0..3 {
            limiter.acquire(Lane::Sweep).await;
        }
        tokio::time::advance(Duration::from_secs(2)).await;
        limiter.acquire(Lane::Sweep).await;
        assert_eq!(limiter.current_rate(), 180.0);
    }

    #[tokio::test(start_paused = true)]
    async fn calls_at_the_full_rate_without_refusals_raise_it() {
        let limiter = RateLimiter::new(200.0);
        let slot = limiter.acquire(Lane::Sweep).await;
        limiter.on_throttled(slot);
        let start = Instant::now();
        while start.elapsed() < Duration::from_millis(3_500) {
            limiter.acquire(Lane::Sweep).await;
        }
        // The second with the refusal raises nothing; the next two busy ones a step each.
        let expected = 180.0 * INCREASE * INCREASE;
        let rate = limiter.current_rate();
        assert!((rate - expected).abs() < 1e-9, "{rate} != {expected}");
    }

    #[tokio::test(start_paused = true)]
    async fn hinted_calls_alone_do_not_raise_the_rate() {
        let limiter = RateLimiter::new(100.0);
        limiter.set_hinted_share(0.25);
        let slot = limiter.acquire(Lane::Sweep).await;
        limiter.on_throttled(slot);
        let start = Instant::now();
        // Between sweeps, a steady stream of callbacks keeps the hinted lane full.
        while start.elapsed() < Duration::from_secs(10) {
            limiter.acquire(Lane::Hinted).await;
        }
        assert_eq!(limiter.current_rate(), 90.0);
    }

    #[tokio::test(start_paused = true)]
    async fn hinted_calls_get_their_share_and_sweeps_keep_the_rest() {
        let limiter = Arc::new(RateLimiter::new(100.0));
        limiter.set_hinted_share(0.25);
        let start = Instant::now();
        let lane = |lane: Lane, calls: usize| {
            let l = limiter.clone();
            tokio::spawn(async move {
                for _ in 0..calls {
                    l.acquire(lane).await;
                }
                Instant::now()
            })
        };
        // A flood of hinted calls beside a sweep of 150 calls.
        let hinted = lane(Lane::Hinted, 1_000);
        let sweep = lane(Lane::Sweep, 150);
        let sweep_done = sweep.await.unwrap();
        // 150 calls at 75/s: 149 intervals of 1/75 s, whatever the hinted lane does.
        let took = sweep_done.duration_since(start).as_secs_f64();
        assert!((took - 149.0 / 75.0).abs() < 0.001, "{took}");
        hinted.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn a_hinted_slot_is_offered_only_when_free() {
        let limiter = RateLimiter::new(40.0);
        limiter.set_hinted_share(0.25);
        // 10/s for hinted calls: one now, the next 100 ms later (beyond the look-ahead).
        assert!(limiter.try_acquire(Lane::Hinted).is_ok());
        let free_at = limiter.try_acquire(Lane::Hinted).unwrap_err();
        assert!(free_at > Instant::now());
        tokio::time::advance(Duration::from_millis(100)).await;
        assert!(limiter.try_acquire(Lane::Hinted).is_ok());
    }
}
