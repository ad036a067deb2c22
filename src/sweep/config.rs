//! `[sweep]`: how often the watch list is swept and how answers are committed.

use crate::schedule::{ScheduleKind, Settings};
use crate::validation::{Invalid, Range, Section};
use serde::{Deserialize, Serialize};

/// `[sweep]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct SweepConfig {
    /// Seconds from one sweep's start to the next.
    pub interval_secs: f64,
    /// Up to this many seconds added at random to each interval.
    pub jitter_secs: f64,
    /// A change in the per-platform list is a transition even when the aggregate is unchanged.
    pub platform_changes_are_transitions: bool,
    /// Batches whose results are written in one SQLite transaction.
    pub batches_per_transaction: usize,
    /// Which accounts go in each call: `round-robin` or `adaptive`.
    pub schedule: ScheduleKind,
    /// Adaptive: every account is observed at least this often.
    pub max_staleness_secs: f64,
    /// Adaptive: what an account is assumed to change every before it has been polled, until
    /// the prior is fitted to the watch list.
    pub prior_change_interval_secs: f64,
}

impl SweepConfig {
    /// What the adaptive schedule takes from this section.
    pub fn schedule_settings(&self) -> Settings {
        Settings {
            interval_secs: self.interval_secs,
            max_staleness_secs: self.max_staleness_secs,
            prior_change_interval_secs: self.prior_change_interval_secs,
        }
    }
}

impl Default for SweepConfig {
    fn default() -> Self {
        SweepConfig {
            interval_secs: 30.0,
            jitter_secs: 1.0,
            platform_changes_are_transitions: true,
            batches_per_transaction: 8,
            schedule: ScheduleKind::RoundRobin,
            max_staleness_secs: 900.0,
            prior_change_interval_secs: 3_600.0,
        }
    }
}

impl Section for SweepConfig {
    fn ranges(&self) -> Vec<Range> {
        vec![
            Range::new("sweep.interval_secs", self.interval_secs, 0.001, 86_400.0),
            Range::new("sweep.jitter_secs", self.jitter_secs, 0.0, 86_400.0),
            Range::new(
                "sweep.batches_per_transaction",
                self.batches_per_transaction as f64,
                1.0,
                10_000.0,
            ),
            Range::new(
                "sweep.max_staleness_secs",
                self.max_staleness_secs,
                1.0,
                30.0 * 86_400.0,
            ),
            Range::new(
                "sweep.prior_change_interval_secs",
                self.prior_change_interval_secs,
                1.0,
                365.0 * 86_400.0,
            ),
        ]
    }

    fn check(&self) -> Result<(), Invalid> {
        // A poll due between sweeps waits for the next one: the bound needs a period in hand.
        let period = self.interval_secs + self.jitter_secs;
        if self.schedule == ScheduleKind::Adaptive && self.max_staleness_secs < 2.0 * period {
            return Err(Invalid::new(
                "sweep.max_staleness_secs",
                format!(
                    "must be at least twice sweep.interval_secs + sweep.jitter_secs ({period} s) with schedule = \"adaptive\", got {}",
                    self.max_staleness_secs
                ),
            ));
        }
        Ok(())
    }
}
