//! `[sweep]`: how often the watch list is swept and how answers are committed.

use crate::validation::{Range, Section};
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
}

impl Default for SweepConfig {
    fn default() -> Self {
        SweepConfig {
            interval_secs: 30.0,
            jitter_secs: 1.0,
            platform_changes_are_transitions: true,
            batches_per_transaction: 8,
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
        ]
    }
}
