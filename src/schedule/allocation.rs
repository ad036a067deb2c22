//! How often to poll each account for the least expected delay from a change to its detection.
//!
//! An account changing at rate `λ` and polled every `I` seconds has its changes found `I / 2`
//! after they happen on average, so the mean delay over all changes is `Σ λᵢ Iᵢ / 2Σλᵢ`.
//! Minimising it for a budget of `B` polls a second (`Σ 1/Iᵢ = B`) gives poll rates
//! proportional to `√λᵢ` (Lagrange; Cho and Garcia-Molina, "Effective page refresh policies",
//! TODS 28(4), 2003, and Azar et al., PNAS 2018, for the general form). Bounds make it a
//! water-filling: every account at least `1 / max_staleness`, none above one poll per
//! [`MIN_INTERVAL_SECS`], the rest in proportion to `√λ`.
//!
//! The scale `c` in `fᵢ = clamp(c √λᵢ, floor, ceiling)` is solved on a log-scale histogram of
//! `√λ`, so one pass over the accounts and a bisection over a few hundred bins does it, at any
//! number of accounts.

/// The shortest interval between two polls of one account: a call and its commit take tens of
/// milliseconds, and polling faster than changes can be noted buys nothing.
pub const MIN_INTERVAL_SECS: f64 = 0.5;

/// Bins per doubling of `√λ` (a bin spans 9%: the scale is found to that precision).
const BINS_PER_OCTAVE: f64 = 8.0;
/// `√λ` from 2⁻³² to 2⁸ (λ from one change in 500 years to 65,000 a second).
const MIN_LOG2: f64 = -32.0;
const BINS: usize = (40.0 * BINS_PER_OCTAVE) as usize;

/// Counts of accounts by `√λ`, on a log scale.
#[derive(Debug, Clone)]
pub struct Histogram {
    counts: Vec<u64>,
    /// Accounts with `λ = 0`: they get the floor.
    zero: u64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            counts: vec![0; BINS],
            zero: 0,
        }
    }
}

fn bin(sqrt_rate: f64) -> usize {
    let at = (sqrt_rate.log2() - MIN_LOG2) * BINS_PER_OCTAVE;
    (at.max(0.0) as usize).min(BINS - 1)
}

fn bin_value(bin: usize) -> f64 {
    (MIN_LOG2 + (bin as f64 + 0.5) / BINS_PER_OCTAVE).exp2()
}

impl Histogram {
    /// Counts an account changing `rate` times a second.
    pub fn add(&mut self, rate: f64) {
        match rate > 0.0 && rate.is_finite() {
            true => self.counts[bin(rate.sqrt())] += 1,
            false => self.zero += 1,
        }
    }

    /// How many accounts were counted.
    pub fn count(&self) -> u64 {
        self.zero + self.counts.iter().sum::<u64>()
    }
}

/// The poll rates: `clamp(scale √λ, floor, ceiling)` polls a second.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Allocation {
    /// Polls a second per unit of `√λ`.
    pub scale: f64,
    /// The fewest polls a second any account gets (`1 / max_staleness`).
    pub floor: f64,
    /// The most polls a second any account gets.
    pub ceiling: f64,
    /// What every rate is multiplied by when the bounds leave budget unspent (every account at
    /// the floor or the ceiling, or changing at rate 0): spare polls are shared in proportion.
    pub boost: f64,
}

impl Allocation {
    /// The allocation spending `budget` polls a second on `histogram`'s accounts, each at least
    /// `floor`. When the floor alone takes the budget, every account gets the floor scaled down
    /// to fit (equal rates: round-robin).
    pub fn solve(histogram: &Histogram, budget: f64, floor: f64) -> Allocation {
        let ceiling = 1.0 / MIN_INTERVAL_SECS;
        let floor = floor.min(ceiling);
        let total = |scale: f64| -> f64 {
            let mut sum = histogram.zero as f64 * floor;
            for (i, &n) in histogram.counts.iter().enumerate() {
                if n > 0 {
                    sum += n as f64 * (scale * bin_value(i)).clamp(floor, ceiling);
                }
            }
            sum
        };
        let n = histogram.count() as f64;
        if n == 0.0 || n * floor >= budget {
            let equal = match n {
                0.0 => floor,
                _ => (budget / n).min(ceiling),
            };
            return Allocation {
                scale: 0.0,
                floor: equal,
                ceiling,
                boost: 1.0,
            };
        }
        // The total grows with the scale: bisect on its logarithm.
        let (mut lo, mut hi) = (-80.0f64, 80.0f64);
        for _ in 0..100 {
            let mid = (lo + hi) / 2.0;
            if total(mid.exp2()) > budget {
                hi = mid;
            } else {
                lo = mid;
            }
        }
        let scale = lo.exp2();
        let spent = total(scale);
        Allocation {
            scale,
            floor,
            ceiling,
            boost: match spent > 0.0 && spent < budget {
                true => budget / spent,
                false => 1.0,
            },
        }
    }

    /// Seconds between polls of an account changing `rate` times a second.
    pub fn interval(&self, rate: f64) -> f64 {
        let polls = (self.scale * rate.max(0.0).sqrt()).clamp(self.floor, self.ceiling);
        1.0 / (polls * self.boost).min(self.ceiling).max(1e-9)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn histogram(rates: &[(u64, f64)]) -> Histogram {
        let mut h = Histogram::default();
        for &(n, rate) in rates {
            for _ in 0..n {
                h.add(rate);
            }
        }
        h
    }

    fn spent(a: &Allocation, rates: &[(u64, f64)]) -> f64 {
        rates.iter().map(|&(n, r)| n as f64 / a.interval(r)).sum()
    }

    #[test]
    fn rates_follow_the_square_root_and_spend_the_budget() {
        let rates = [(9_000, 0.0001), (1_000, 0.01)];
        let a = Allocation::solve(&histogram(&rates), 1_000.0, 0.0);
        let ratio = a.interval(0.0001) / a.interval(0.01);
        assert!((ratio / 10.0 - 1.0).abs() < 0.1, "{ratio}");
        let spent = spent(&a, &rates);
        assert!((spent / 1_000.0 - 1.0).abs() < 0.1, "{spent}");
    }

    #[test]
    fn the_floor_holds_for_accounts_that_never_change() {
        let rates = [(9_000, 0.0), (1_000, 0.1)];
        let a = Allocation::solve(&histogram(&rates), 1_000.0, 1.0 / 60.0);
        assert!(a.interval(0.0) <= 60.0 + 1e-9);
        assert!(a.interval(0.1) >= MIN_INTERVAL_SECS - 1e-9);
        assert!((spent(&a, &rates) / 1_000.0 - 1.0).abs() < 0.1);
    }

    #[test]
    fn a_floor_past_the_budget_gives_everyone_the_same_rate() {
        let rates = [(900, 0.0), (100, 1.0)];
        let a = Allocation::solve(&histogram(&rates), 10.0, 1.0);
        assert_eq!(a.interval(0.0), a.interval(1.0));
        assert!((a.interval(1.0) - 100.0).abs() < 1e-9);
    }

    #[test]
    fn budget_the_bounds_leave_is_shared_in_proportion() {
        // Nothing ever changes: every account at the floor spends a tenth of the budget.
        let rates = [(900, 0.0), (100, 0.0)];
        let a = Allocation::solve(&histogram(&rates), 100.0, 0.01);
        assert!((a.interval(0.0) - 10.0).abs() < 1e-6, "{}", a.interval(0.0));
    }

    #[test]
    fn uniform_rates_are_polled_equally() {
        let rates = [(10_000, 0.001)];
        let a = Allocation::solve(&histogram(&rates), 1_000.0, 0.0);
        assert!((a.interval(0.001) / 10.0 - 1.0).abs() < 0.1);
    }
}
