//! An account's change rate, estimated from polls that only tell whether it changed since the
//! last one: Cho and Garcia-Molina's bias-reduced estimator ("Estimating frequency of change",
//! ACM TOIT 3(3), 2003, section 4): with `n` polls `I` apart of which `X` found a change,
//! `r = -ln((n - X + 0.5) / (n + 0.5))` changes per interval and `λ = r / I`. Unlike the naive
//! `X / (n I)` it does not underestimate accounts that change more than once between polls, and
//! it stays finite when every poll found a change.
//!
//! Two simplifications, each measured in the tests below and in `schedule::tests`: polls are
//! irregular here, so `I` is their mean interval (the paper's exact estimator for irregular
//! polls is an iterative MLE over every interval, which would cost per-poll history); and the
//! counts decay by [`DECAY`] per poll, so that an account that wakes up or falls quiet is
//! re-learned within a few polls.
//!
//! Few polls say little (a handful of unchanged polls give a rate of zero), so the estimate is
//! shrunk toward a prior, the population's mean rate, worth [`PRIOR_POLLS`] polls: an account
//! never polled is the prior, one polled often is its own counts.

/// What each earlier poll still counts for when a new one arrives: about the last thirty polls
/// carry the estimate. Chosen with `schedule::tests` (DECAY, PRIOR_POLLS): (0.9, 2) lost 11% on
/// uniform rates to estimation noise, (0.95, 4) 5.4%, (0.97, 4) 4.2%, keeping 2.6x on skewed ones.
pub const DECAY: f32 = 0.97;

/// How many polls the prior is worth.
pub const PRIOR_POLLS: f64 = 4.0;

/// One account's decayed poll counts (12 bytes).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Estimate {
    /// Polls, decayed.
    pub polls: f32,
    /// Polls that found a change, decayed.
    pub changes: f32,
    /// Seconds covered by those polls, decayed.
    pub span: f32,
}

impl Estimate {
    /// Notes a poll `interval` seconds after the previous one, which found a change or not.
    pub fn observe(&mut self, interval: f64, changed: bool) {
        self.polls = self.polls * DECAY + 1.0;
        self.changes = self.changes * DECAY + f32::from(u8::from(changed));
        self.span = self.span * DECAY + interval.max(0.0) as f32;
    }

    /// Changes per second by the polls alone (Cho and Garcia-Molina's estimator).
    pub fn own_rate(&self) -> f64 {
        let (n, x, span) = (
            f64::from(self.polls),
            f64::from(self.changes),
            f64::from(self.span),
        );
        if n <= 0.0 || span <= 0.0 {
            return 0.0;
        }
        let per_interval = -((n - x.min(n) + 0.5) / (n + 0.5)).ln();
        per_interval / (span / n)
    }

    /// Changes per second, shrunk toward `prior` (changes per second).
    pub fn rate(&self, prior: f64) -> f64 {
        let n = f64::from(self.polls);
        (n * self.own_rate() + PRIOR_POLLS * prior) / (n + PRIOR_POLLS)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    #[test]
    fn an_account_never_polled_is_the_prior() {
        assert_eq!(Estimate::default().rate(0.25), 0.25);
    }

    /// Polls at irregular intervals (uniform between 0.5 and 1.5 of a mean) of a Poisson
    /// account: the median estimate of many accounts over their last polls.
    fn median_estimate(rate: f64, mean_interval: f64, polls: usize, prior: f64) -> f64 {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let mut estimates: Vec<f64> = (0..2_000)
            .map(|_| {
                let mut e = Estimate::default();
                for _ in 0..polls {
                    let interval = mean_interval * rng.random_range(0.5..1.5);
                    let p_changed = 1.0 - (-rate * interval).exp();
                    e.observe(interval, rng.random_bool(p_changed));
                }
                e.rate(prior)
            })
            .collect();
        estimates.sort_by(f64::total_cmp);
        estimates[estimates.len() / 2]
    }

    #[test]
    fn estimates_converge_within_a_factor_of_three_across_rates_and_intervals() {
        // From once a day to every few seconds, polled from 10x too rarely to 10x too often.
        for rate in [1e-5, 1e-3, 0.1] {
            for ratio in [0.1, 1.0, 10.0] {
                let interval = ratio / rate;
                // A prior ten times off, as a population's mean is for its cold accounts.
                let got = median_estimate(rate, interval, 30, rate * 10.0);
                let factor = (got / rate).max(rate / got);
                // Polled ten times too rarely, every poll finds a change: the estimator can
                // only say "at least a few per interval", which still ranks it hot.
                let bound = if ratio >= 10.0 { 5.0 } else { 3.0 };
                assert!(
                    factor < bound,
                    "rate {rate}/s polled every {interval} s: estimated {got}"
                );
            }
        }
    }

    #[test]
    fn the_naive_estimate_undercounts_what_this_one_sees() {
        // Polled every 2 / rate: the naive changes/time says about 0.43 of the rate.
        let rate = 0.01;
        let got = median_estimate(rate, 2.0 / rate, 40, rate);
        assert!((0.6..1.6).contains(&(got / rate)), "{got}");
    }

    #[test]
    fn an_account_that_wakes_up_is_noticed_within_a_few_polls() {
        let prior = 1.0 / 3600.0;
        let mut e = Estimate::default();
        for _ in 0..50 {
            e.observe(600.0, false);
        }
        let quiet = e.rate(prior);
        // It now changes about every two minutes; polled every 10 minutes, then faster.
        for interval in [600.0, 300.0, 150.0] {
            e.observe(interval, true);
        }
        // Five times the quiet estimate after three polls: polled over twice as often.
        assert!(e.rate(prior) > 5.0 * quiet, "{quiet} -> {}", e.rate(prior));
    }
}
