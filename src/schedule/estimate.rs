//! An account's change rate, estimated from polls that only tell whether it changed since the
//! last one, and shrunk toward what the whole watch list says.
//!
//! - **Per account**: Cho and Garcia-Molina's bias-reduced estimator ("Estimating frequency of
//!   change", ACM TOIT 3(3), 2003, section 4): with `n` polls `I` apart of which `X` found a
//!   change, `r = -ln((n - X + 0.5) / (n + 0.5))` changes per interval. Unlike the naive
//!   `X / (n I)` it does not underestimate accounts that change more than once between polls,
//!   and it stays finite when every poll found a change. `n r` is then the number of changes the
//!   polls stand for, over `n I` seconds.
//! - **Across accounts**: the Gamma–Poisson empirical Bayes model (Clayton and Kaldor,
//!   "Empirical Bayes estimates of age-standardized relative risks", Biometrics 43(3), 1987),
//!   its prior fitted to the watch list by the global method of moments (Marshall, "Mapping
//!   disease and mortality rates using empirical Bayes estimators", Applied Statistics 40(2),
//!   1991, in DerSimonian and Laird's unbiased weighting): an account that stands for `x`
//!   changes over `t` seconds is estimated at `(x + α) / (t + β)`. On a list whose accounts
//!   differ little, the spread of the estimates is all sampling noise, `β` is large and every
//!   account is the list's mean (polled equally, as round-robin does); on a skewed list `β` is
//!   as small as [`MIN_SHAPE`] allows and each account's own polls decide.
//!
//! Two simplifications, each measured in the tests below and in `schedule::tests`: polls are
//! irregular here, so `I` is their mean interval (the paper's exact estimator for irregular
//! polls is an iterative MLE over every interval, which would cost per-poll history); and the
//! counts decay with time, by `e^(-Δ/memory)` for a poll `Δ` after the previous one, so that an
//! account that wakes up or falls quiet is re-learned, while hot and cold accounts alike keep
//! the same span of history.

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
    /// `secs` pass without a poll that counts (a hinted re-query, the daemon down): what was
    /// seen counts for less, as it would have had a poll come.
    pub fn fade(&mut self, secs: f64, memory_secs: f64) {
        let decay = (-secs.max(0.0) / memory_secs).exp() as f32;
        self.polls *= decay;
        self.changes *= decay;
        self.span *= decay;
    }

    /// Notes a poll `interval` seconds after the previous one, which found a change or not;
    /// what came before counts for `e^(-interval / memory_secs)` of what it did.
    pub fn observe(&mut self, interval: f64, changed: bool, memory_secs: f64) {
        let interval = interval.max(0.0);
        let decay = (-interval / memory_secs).exp() as f32;
        self.polls = self.polls * decay + 1.0;
        self.changes = self.changes * decay + f32::from(u8::from(changed));
        self.span = self.span * decay + interval as f32;
    }

    /// How many changes the polls stand for (Cho and Garcia-Molina's `n r`).
    pub fn changes_seen(&self) -> f64 {
        let (n, x) = (f64::from(self.polls), f64::from(self.changes));
        if n <= 0.0 {
            return 0.0;
        }
        -n * ((n - x.min(n) + 0.5) / (n + 0.5)).ln()
    }

    /// Changes per second by the polls alone.
    pub fn own_rate(&self) -> f64 {
        match self.span > 0.0 {
            true => self.changes_seen() / f64::from(self.span),
            false => 0.0,
        }
    }

    /// Changes per second, its own polls weighed against `prior`.
    pub fn rate(&self, prior: &Prior) -> f64 {
        (self.changes_seen() + prior.shape) / (f64::from(self.span) + prior.weight_secs)
    }
}

/// The Gamma prior on an account's change rate: worth `shape` changes over `weight_secs`
/// seconds, so its mean is `shape / weight_secs` changes a second.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Prior {
    /// `α`: the changes it is worth.
    pub shape: f64,
    /// `β`: the seconds of polling it is worth.
    pub weight_secs: f64,
}

/// The most the fitted prior may weigh: past this every account is the list's mean anyway.
const MAX_WEIGHT_SECS: f64 = 1e9;
/// The least shape the fitted prior may have, once the accounts have been watched long enough
/// for it (the floor on its weight, `MIN_SHAPE / μ`, is at most half their mean span). The
/// moments are swayed by the hottest accounts, and a shape far below one puts the prior's mass
/// near zero: an account that showed no change within its memory is then taken for one that
/// never changes, and polled at the staleness bound. Measured in `schedule::tests` (delay over
/// every change against round-robin; 10% / 1% of the accounts making 90% of the changes): with
/// the shape free, 2.43x / 2.93x after 2,000 s and 2.38x for 10% after 100 s of learning; with
/// this floor 2.61x / 5.48x and 2.16x; with a floor of 0.5 from the start 2.62x / 5.47x and
/// 2.01x; of 1, 2.60x / 5.35x and 1.78x.
const MIN_SHAPE: f64 = 0.5;
/// The least: below it a single change would make an account look arbitrarily hot.
const MIN_WEIGHT_SECS: f64 = 1.0;

impl Prior {
    /// A prior of `mean` changes a second, worth `weight_secs` seconds of polling.
    pub fn new(mean: f64, weight_secs: f64) -> Prior {
        Prior {
            shape: mean * weight_secs,
            weight_secs,
        }
    }

    /// Changes a second.
    pub fn mean(&self) -> f64 {
        self.shape / self.weight_secs
    }

    /// The prior fitted to `estimates` (decayed with `memory_secs`) by the method of moments:
    /// the pooled mean rate `μ`, and the spread of the accounts' rates beyond what sampling
    /// noise explains. `None` when too little has been polled to say (fewer than
    /// `min_accounts` accounts polled twice, or fewer than ten changes seen in all).
    ///
    /// The noise: an account's decayed count `x = Σ wⱼ Xⱼ` over `t = Σ wⱼ Δⱼ` has Poisson
    /// variance `μ Σ wⱼ² Δⱼ = μ c t`; with polls spread evenly over a span `t` of memory `M`,
    /// `c = 1 - t / 2M` (1 undecayed, 1/2 once the span has reached its limit `M`).
    pub fn fit<'a>(
        estimates: impl Iterator<Item = &'a Estimate> + Clone,
        min_accounts: usize,
        memory_secs: f64,
    ) -> Option<Prior> {
        let noise_share = |span: f64| (1.0 - span / (2.0 * memory_secs)).clamp(0.5, 1.0);
        // Counts faded below a poll's worth (an account back from a long outage) say next to
        // nothing, and their noise share would be misjudged: left out until polled again.
        let informative = |e: &&Estimate| e.span > 0.0 && e.polls >= 1.0;
        let (mut x, mut t, mut t2, mut c, mut ct, mut k) = (0.0, 0.0, 0.0, 0.0, 0.0, 0usize);
        for e in estimates.clone().filter(informative) {
            let span = f64::from(e.span);
            x += e.changes_seen();
            t += span;
            t2 += span * span;
            c += noise_share(span);
            ct += noise_share(span) * span;
            k += 1;
        }
        if k < min_accounts.max(2) || x < 10.0 {
            return None;
        }
        let mean = x / t;
        let spread: f64 = estimates
            .filter(informative)
            .map(|e| {
                let span = f64::from(e.span);
                (e.changes_seen() - mean * span).powi(2) / span
            })
            .sum();
        // The expected spread is noise `μ (Σc - Σct / T)` (the mean is estimated from the same
        // counts) plus `σ² (T - Σt² / T)`.
        let variance = (spread - mean * (c - ct / t)) / (t - t2 / t);
        let min_weight = (MIN_SHAPE / mean).min(0.5 * t / k as f64);
        let weight_secs = match variance > 0.0 {
            true => (mean / variance).clamp(min_weight.max(MIN_WEIGHT_SECS), MAX_WEIGHT_SECS),
            false => MAX_WEIGHT_SECS,
        };
        Some(Prior::new(mean, weight_secs))
    }
}
#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    /// No decay: the estimator alone.
    const FOREVER: f64 = f64::INFINITY;

    #[test]
    fn an_account_never_polled_is_the_prior() {
        let prior = Prior::new(0.25, 40.0);
        assert!((Estimate::default().rate(&prior) - 0.25).abs() < 1e-12);
    }

    /// Polls at irregular intervals (uniform between 0.5 and 1.5 of a mean) of a Poisson
    /// account.
    fn polled(rng: &mut impl Rng, rate: f64, mean_interval: f64, polls: usize) -> Estimate {
        polled_remembering(rng, rate, mean_interval, polls, FOREVER)
    }

    fn polled_remembering(
        rng: &mut impl Rng,
        rate: f64,
        mean_interval: f64,
        polls: usize,
        memory: f64,
    ) -> Estimate {
        let mut e = Estimate::default();
        for _ in 0..polls {
            let interval = mean_interval * rng.random_range(0.5..1.5);
            let p_changed = 1.0 - (-rate * interval).exp();
            e.observe(interval, rng.random_bool(p_changed), memory);
        }
        e
    }

    /// The median estimate of many accounts over their last polls.
    fn median_estimate(rate: f64, mean_interval: f64, polls: usize, prior: &Prior) -> f64 {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let mut estimates: Vec<f64> = (0..2_000)
            .map(|_| polled(&mut rng, rate, mean_interval, polls).rate(prior))
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
                // A prior ten times off, as a list's mean is for its cold accounts, worth four
                // polls.
                let got =
                    median_estimate(rate, interval, 30, &Prior::new(rate * 10.0, 4.0 * interval));
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
        let got = median_estimate(rate, 2.0 / rate, 40, &Prior::new(rate, 1.0));
        assert!((0.6..1.6).contains(&(got / rate)), "{got}");
    }

    #[test]
    fn an_account_that_wakes_up_is_noticed_within_a_few_polls() {
        let prior = Prior::new(1.0 / 3_600.0, 900.0);
        let memory = 6_000.0;
        let mut e = Estimate::default();
        for _ in 0..50 {
            e.observe(600.0, false, memory);
        }
        let quiet = e.rate(&prior);
        // It now changes about every two minutes; polled every 10 minutes, then faster.
        for interval in [600.0, 300.0, 150.0] {
            e.observe(interval, true, memory);
        }
        // Five times the quiet estimate after three polls: polled over twice as often.
        assert!(
            e.rate(&prior) > 5.0 * quiet,
            "{quiet} -> {}",
            e.rate(&prior)
        );
    }

    #[test]
    fn history_older_than_the_memory_fades() {
        let mut e = Estimate::default();
        for _ in 0..100 {
            e.observe(10.0, true, 100.0);
        }
        let busy = e.own_rate();
        // 300 s of quiet polls: three memories.
        for _ in 0..30 {
            e.observe(10.0, false, 100.0);
        }
        assert!(e.own_rate() < busy / 10.0, "{busy} -> {}", e.own_rate());
    }

    /// Estimates of `accounts` accounts each polled every 10 s for `secs` seconds.
    fn population(rates: &[f64], secs: f64) -> Vec<Estimate> {
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        let polls = (secs / 10.0) as usize;
        rates
            .iter()
            .map(|&r| polled(&mut rng, r, 10.0, polls))
            .collect()
    }

    #[test]
    fn a_list_of_equal_rates_is_shrunk_to_its_mean() {
        // Each account changed about once in the 200 s seen: its own count is mostly noise.
        let rates = vec![0.005; 20_000];
        let estimates = population(&rates, 200.0);
        let prior = Prior::fit(estimates.iter(), 1, FOREVER).unwrap();
        assert!((prior.mean() / 0.005 - 1.0).abs() < 0.1, "{prior:?}");
        let spread: Vec<f64> = estimates.iter().map(|e| e.rate(&prior) / 0.005).collect();
        let (lo, hi) = spread
            .iter()
            .fold((f64::MAX, 0.0f64), |(lo, hi), r| (lo.min(*r), hi.max(*r)));
        assert!(
            lo > 0.7 && hi < 1.4,
            "estimates from {lo} to {hi} of the rate"
        );
    }

    #[test]
    fn a_skewed_list_is_left_to_its_accounts() {
        // 10% of the accounts make 90% of the changes, seen over 200 s.
        let rates: Vec<f64> = (0..20_000)
            .map(|i| if i % 10 == 0 { 0.045 } else { 0.000_556 })
            .collect();
        let estimates = population(&rates, 200.0);
        let prior = Prior::fit(estimates.iter(), 1, FOREVER).unwrap();
        // The prior is worth less than the 200 s each account was polled for.
        assert!(prior.weight_secs < 200.0, "{prior:?}");
        let mean = |hot: bool| {
            let v: Vec<f64> = (0..rates.len())
                .filter(|i| (i % 10 == 0) == hot)
                .map(|i| estimates[i].rate(&prior))
                .collect();
            v.iter().sum::<f64>() / v.len() as f64
        };
        let (hot, cold) = (mean(true), mean(false));
        assert!((0.5..1.5).contains(&(hot / 0.045)), "hot {hot}");
        assert!(cold < 0.003 && hot > 10.0 * cold, "hot {hot}, cold {cold}");
    }

    #[test]
    fn too_little_polling_fits_no_prior() {
        assert_eq!(Prior::fit([Estimate::default()].iter(), 1, FOREVER), None);
        let quiet = population(&[1e-6; 100], 50.0);
        assert_eq!(Prior::fit(quiet.iter(), 1, FOREVER), None, "no change seen");
    }

    #[test]
    fn accounts_back_from_a_long_outage_do_not_flatten_the_prior() {
        // Rates from 0.0025 to 0.0075 a second, as below; half the list is back from 50 minutes
        // away (five memories): its counts faded to under a poll's worth, but not to nothing.
        let mut rng = rand::rngs::StdRng::seed_from_u64(9);
        let mut estimates: Vec<Estimate> = (0..20_000)
            .map(|_| {
                let rate = rng.random_range(0.0025..0.0075);
                polled_remembering(&mut rng, rate, 10.0, 300, 600.0)
            })
            .collect();
        let before = Prior::fit(estimates.iter(), 1, 600.0).unwrap();
        for e in estimates.iter_mut().step_by(2) {
            e.fade(3_000.0, 600.0);
        }
        assert!(estimates[0].span > 0.0 && estimates[0].polls < 1.0);
        let after = Prior::fit(estimates.iter(), 1, 600.0).unwrap();
        let ratio = after.weight_secs / before.weight_secs;
        assert!((0.5..2.0).contains(&ratio), "{before:?} -> {after:?}");
    }

    #[test]
    fn decayed_counts_are_fitted_with_their_own_noise() {
        // Rates spread evenly from 0.0025 to 0.0075 a second (variance 2.1e-6: a prior worth
        // 2,400 s), polled every 10 s for 3,000 s, remembered for 600 s. Counting the noise of
        // undecayed counts (twice what is left after decay) found no spread at all.
        let mut rng = rand::rngs::StdRng::seed_from_u64(5);
        let rates: Vec<f64> = (0..20_000)
            .map(|_| rng.random_range(0.0025..0.0075))
            .collect();
        let estimates: Vec<Estimate> = rates
            .iter()
            .map(|&r| polled_remembering(&mut rng, r, 10.0, 300, 600.0))
            .collect();
        let prior = Prior::fit(estimates.iter(), 1, 600.0).unwrap();
        let truth = 0.005 / (0.005f64 * 0.005 / 12.0);
        assert!(
            (0.5..2.0).contains(&(prior.weight_secs / truth)),
            "weight {} s against {truth} s",
            prior.weight_secs
        );
    }
}
