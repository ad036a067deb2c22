//! The `[sink]` section: where events go, and the publisher's waits and retry limits, all in
//! one place.

use crate::validation::{Invalid, Range, Section};
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// Where events go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SinkKind {
    /// The Kafka topic of `[kafka]`.
    Kafka,
    /// Standard output, one JSON document per line.
    Stdout,
    /// Record in SQLite only; the outbox keeps growing until a sink is configured.
    None,
}

/// `[sink]`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct SinkConfig {
    /// Where events go.
    pub kind: SinkKind,
    /// How long the publisher sleeps when the outbox is empty; a commit wakes it sooner.
    pub idle_poll_ms: u64,
    /// The wait after a failed round; it doubles with each failure in a row...
    pub retry_backoff_ms: u64,
    /// ...up to this.
    pub retry_backoff_max_ms: u64,
    /// The wait after the sink rejected an event for good (message too large, not authorized,
    /// unknown topic): long, since only an operator can fix the cause; a reload that changes
    /// `[kafka]` retries at once.
    pub rejected_retry_secs: u64,
    /// `presenced replay`: attempts per page of events before it gives up...
    pub replay_attempts: u32,
    /// ...waiting this long times the attempt number between them.
    pub replay_retry_ms: u64,
}

impl Default for SinkConfig {
    fn default() -> Self {
        SinkConfig {
            kind: SinkKind::Kafka,
            idle_poll_ms: 1_000,
            retry_backoff_ms: 200,
            retry_backoff_max_ms: 25_600,
            rejected_retry_secs: 300,
            replay_attempts: 5,
            replay_retry_ms: 500,
        }
    }
}

impl SinkConfig {
    /// How long an idle publisher sleeps.
    pub fn idle_poll(&self) -> Duration {
        Duration::from_millis(self.idle_poll_ms)
    }

    /// The wait after the `failures`-th failed round in a row.
    pub fn retry_backoff(&self, failures: u32) -> Duration {
        let factor = 1u64 << failures.saturating_sub(1).min(20);
        Duration::from_millis(
            self.retry_backoff_ms
                .saturating_mul(factor)
                .min(self.retry_backoff_max_ms),
        )
    }

    /// The wait after a final rejection.
    pub fn rejected_retry(&self) -> Duration {
        Duration::from_secs(self.rejected_retry_secs)
    }

    /// The wait before replay's attempt `attempt + 1`.
    pub fn replay_retry(&self, attempt: u32) -> Duration {
        Duration::from_millis(self.replay_retry_ms.saturating_mul(u64::from(attempt)))
    }
}

impl Section for SinkConfig {
    fn ranges(&self) -> Vec<Range> {
        vec![
            Range::new("sink.idle_poll_ms", self.idle_poll_ms as f64, 1.0, 60_000.0),
            Range::new(
                "sink.retry_backoff_ms",
                self.retry_backoff_ms as f64,
                1.0,
                60_000.0,
            ),
            Range::new(
                "sink.retry_backoff_max_ms",
                self.retry_backoff_max_ms as f64,
                1.0,
                3_600_000.0,
            ),
            Range::new(
                "sink.rejected_retry_secs",
                self.rejected_retry_secs as f64,
                1.0,
                86_400.0,
            ),
            Range::new(
                "sink.replay_attempts",
                f64::from(self.replay_attempts),
                1.0,
                1_000.0,
            ),
            Range::new(
                "sink.replay_retry_ms",
                self.replay_retry_ms as f64,
                0.0,
                600_000.0,
            ),
        ]
    }

    fn check(&self) -> Result<(), Invalid> {
        if self.retry_backoff_max_ms < self.retry_backoff_ms {
            return Err(Invalid::new(
                "sink.retry_backoff_max_ms",
                format!(
                    "must be at least sink.retry_backoff_ms ({})",
                    self.retry_backoff_ms
                ),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_backoff_doubles_up_to_its_bound() {
        let c = SinkConfig::default();
        let waits: Vec<u64> = (1..=10)
            .map(|n| c.retry_backoff(n).as_millis() as u64)
            .collect();
        assert_eq!(
            waits,
            [200, 400, 800, 1_600, 3_200, 6_400, 12_800, 25_600, 25_600, 25_600]
        );
        assert_eq!(c.retry_backoff(u32::MAX).as_millis(), 25_600);
    }
}
