//! Uneven activity: real watch lists have a few accounts that change all the time and many that
//! rarely do, and a daily rhythm. A share of the accounts is hot and takes a share of the churn's
//! steps; the churn rate swings over a (compressible) day. The per-account step rates are the
//! ground truth an adaptive poller's estimates are checked against.

use serde::{Deserialize, Serialize};

/// `[activity]` of the simulator's configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Activity {
    /// The share of accounts that are hot (0: every account alike).
    pub hot_share: f64,
    /// The share of the churn's steps that go to hot accounts.
    pub hot_step_share: f64,
    /// How far the churn rate swings over a day: 0 keeps it flat, 0.5 runs it from half to one
    /// and a half times `churn_per_second`.
    pub daily_amplitude: f64,
    /// The length of the simulated day, seconds of real time.
    pub day_secs: f64,
}

impl Default for Activity {
    fn default() -> Self {
        Activity {
            hot_share: 0.0,
            hot_step_share: 0.0,
            daily_amplitude: 0.0,
            day_secs: 86_400.0,
        }
    }
}

impl Activity {
    /// What is wrong with these settings, if anything.
    pub fn check(&self) -> Result<(), String> {
        let share = |name: &str, v: f64| match (0.0..=1.0).contains(&v) {
            true => Ok(()),
            false => Err(format!("activity.{name} is a share from 0 to 1; got {v}")),
        };
        share("hot_share", self.hot_share)?;
        share("hot_step_share", self.hot_step_share)?;
        share("daily_amplitude", self.daily_amplitude)?;
        if !(self.day_secs.is_finite() && self.day_secs >= 1.0) {
            return Err(format!(
                "activity.day_secs is at least 1 second; got {}",
                self.day_secs
            ));
        }
        Ok(())
    }

    /// Whether the account numbered `index` (its position in the population) is hot: a fixed
    /// pseudo-random choice, spread evenly over the ids so that no range of them is hotter.
    pub fn is_hot(&self, index: usize) -> bool {
        self.hot_share > 0.0 && unit(index as u64) < self.hot_share
    }

    /// The churn rate's factor at `secs` into the day (1 on average over a day).
    pub fn daily_factor(&self, secs: f64) -> f64 {
        let phase = std::f64::consts::TAU * secs / self.day_secs.max(1.0);
        1.0 + self.daily_amplitude * phase.sin()
    }

    /// Of a step, the chance that it goes to the hot accounts: the configured share when both
    /// kinds exist, else all of it to the kind there is.
    pub fn hot_chance(&self, hot: usize, cold: usize) -> f64 {
        match (hot, cold) {
            (0, _) => 0.0,
            (_, 0) => 1.0,
            _ => self.hot_step_share,
        }
    }
}

/// The mean step rates per account, per second, of the hot and the cold accounts: what the
/// control API reports as ground truth. Not every step is a visible change (a login on a
/// platform already online changes nothing a query shows).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct StepRates {
    /// Per hot account.
    pub hot_per_second: f64,
    /// Per cold account.
    pub cold_per_second: f64,
    /// Hot accounts.
    pub hot_accounts: usize,
    /// Cold accounts.
    pub cold_accounts: usize,
}

impl StepRates {
    /// The rates for `hot` and `cold` accounts when the population takes `steps_per_second`.
    pub fn of(activity: &Activity, steps_per_second: f64, hot: usize, cold: usize) -> Self {
        let to_hot = activity.hot_chance(hot, cold);
        let per = |share: f64, n: usize| match n {
            0 => 0.0,
            n => steps_per_second * share / n as f64,
        };
        StepRates {
            hot_per_second: per(to_hot, hot),
            cold_per_second: per(1.0 - to_hot, cold),
            hot_accounts: hot,
            cold_accounts: cold,
        }
    }
}

/// A number in [0, 1) from `x`, the same every time (splitmix64's finaliser).
fn unit(x: u64) -> f64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    (z >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hot_share_is_spread_over_the_ids() {
        let a = Activity {
            hot_share: 0.1,
            ..Activity::default()
        };
        for range in [0..10_000, 500_000..510_000] {
            let hot = range.filter(|i| a.is_hot(*i)).count();
            assert!((900..1_100).contains(&hot), "{hot} of 10,000");
        }
        assert!(!Activity::default().is_hot(7));
    }

    #[test]
    fn the_daily_rhythm_averages_to_one() {
        let a = Activity {
            daily_amplitude: 0.5,
            day_secs: 100.0,
            ..Activity::default()
        };
        let mean = (0..100).map(|s| a.daily_factor(s as f64)).sum::<f64>() / 100.0;
        assert!((mean - 1.0).abs() < 1e-9, "{mean}");
        assert!((a.daily_factor(25.0) - 1.5).abs() < 1e-9);
    }

    #[test]
    fn step_rates_split_the_churn() {
        let a = Activity {
            hot_share: 0.1,
            hot_step_share: 0.9,
            ..Activity::default()
        };
        let r = StepRates::of(&a, 100.0, 10, 90);
        assert!((r.hot_per_second - 9.0).abs() < 1e-9);
        assert!((r.cold_per_second - 10.0 / 90.0).abs() < 1e-9);
        assert!(a.check().is_ok());
        assert!(Activity {
            hot_share: 1.5,
            ..a
        }
        .check()
        .is_err());
    }
}
