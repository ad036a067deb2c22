//! Which accounts go in the next call: the seam between the sweep (pacing, diff, commit,
//! hinted calls) and the order accounts are polled in.
//!
//! - **round-robin**: every account once per sweep, in watch-list order.
//! - **adaptive**: the same number of polls per sweep, spent where changes happen: each account
//!   at a rate that grows with the square root of its estimated change rate
//!   ([`allocation`], [`estimate`]), and every account at least once per
//!   `sweep.max_staleness_secs`. An account may then be polled several times in one sweep, and
//!   the sweep's calls are spread over its interval rather than sent in a burst.

pub mod adaptive;
pub mod allocation;
pub mod config;
pub mod estimate;
#[cfg(test)]
mod tests;

pub use adaptive::{Adaptive, Saved};
pub use config::ScheduleKind;
use std::sync::Arc;

/// What the adaptive schedule needs of the configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// `sweep.interval_secs`: the shortest sweep period.
    pub interval_secs: f64,
    /// `sweep.max_staleness_secs`.
    pub max_staleness_secs: f64,
    /// `sweep.prior_change_interval_secs`: what a new account is assumed to change every.
    pub prior_change_interval_secs: f64,
}

impl Settings {
    /// How long an account's polls are remembered: the counts of polls `Δ` ago weigh
    /// `e^(-Δ / memory)`. Ten staleness bounds, so that the quietest account's estimate rests on
    /// about ten polls; ten minutes at least, so that a busy account's rests on hundreds; a day
    /// at most, so that a busy account's decayed count of polls (memory over its interval, at
    /// most 172,800) stays exact in an `f32` and within what the store takes back.
    pub fn memory_secs(&self) -> f64 {
        (10.0 * self.max_staleness_secs).clamp(600.0, 86_400.0)
    }
}

/// The schedule in force.
#[derive(Debug)]
pub enum Schedule {
    /// Every account once per sweep, in order.
    RoundRobin(RoundRobin),
    /// Polls where changes happen.
    Adaptive(Box<Adaptive>),
}

/// Every account once per sweep, in watch-list order.
#[derive(Debug, Default)]
pub struct RoundRobin {
    watch: Arc<Vec<String>>,
    at: usize,
}

impl Schedule {
    /// Round-robin over `watch`.
    pub fn round_robin(watch: Arc<Vec<String>>) -> Self {
        Schedule::RoundRobin(RoundRobin { watch, at: 0 })
    }

    /// The same schedule over a new watch list.
    pub fn set_watch_list(&mut self, watch: Arc<Vec<String>>, now_ms: i64) {
        match self {
            Schedule::RoundRobin(r) => *r = RoundRobin { watch, at: 0 },
            Schedule::Adaptive(a) => **a = a.with_watch_list(watch, now_ms),
        }
    }

    /// A sweep starts.
    pub fn begin_sweep(&mut self, now_ms: i64) {
        match self {
            Schedule::RoundRobin(r) => r.at = 0,
            Schedule::Adaptive(a) => a.begin_sweep(now_ms),
        }
    }

    /// Up to `max` accounts for the next call; accounts already called for in this sweep are
    /// added to `repeats` too (round-robin has none).
    pub fn next_call(&mut self, max: usize, now_ms: i64, repeats: &mut Vec<String>) -> Vec<String> {
        match self {
            Schedule::RoundRobin(r) => {
                let end = (r.at + max).min(r.watch.len());
                let ids = r.watch[r.at..end].to_vec();
                r.at = end;
                ids
            }
            Schedule::Adaptive(a) => a.next_call(max, now_ms, repeats),
        }
    }

    /// How far apart a sweep of `calls` calls should start them: the adaptive schedule spreads
    /// them over nine tenths of `sweep.interval_secs`, so that an account due between two sweeps
    /// does not wait for the next one (round-robin sends them as fast as the pacing allows).
    pub fn call_spacing(&self, calls: usize) -> Option<std::time::Duration> {
        match self {
            Schedule::RoundRobin(_) => None,
            Schedule::Adaptive(a) => {
                let spread = 0.9 * a.settings().interval_secs / calls.max(1) as f64;
                Some(std::time::Duration::from_secs_f64(spread))
            }
        }
    }

    /// An observation of `user_id` that found a change or not (`counts`: false for a hinted
    /// re-query, see [`Adaptive::observed`]); the seconds since its previous one when the
    /// schedule keeps them.
    pub fn observed(
        &mut self,
        user_id: &str,
        changed: bool,
        at_ms: i64,
        counts: bool,
    ) -> Option<f64> {
        match self {
            Schedule::RoundRobin(_) => None,
            Schedule::Adaptive(a) => a.observed(user_id, changed, at_ms, counts),
        }
    }

    /// A poll of `user_id` yielded nothing.
    pub fn failed(&mut self, user_id: &str, now_ms: i64) {
        if let Schedule::Adaptive(a) = self {
            a.failed(user_id, now_ms);
        }
    }
}
