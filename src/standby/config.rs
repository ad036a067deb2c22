//! `[standby]`: several instances of one app sharing the events topic, one active.

use crate::validation::{Invalid, Range, Section};
use serde::{Deserialize, Serialize};

/// `[standby]`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct StandbyConfig {
    /// Run as one of several instances: follow the events topic, take over when the active
    /// stops committing. Off: this instance alone sweeps and publishes, as without the section.
    pub enabled: bool,
    /// This instance's name in heartbeats, logs and `standby status`; empty: the host name.
    pub instance: String,
    /// How often the active commits a heartbeat, ms.
    pub heartbeat_ms: u64,
    /// A follower takes over after this long without a committed heartbeat, ms. The active
    /// stops calling IM once it could not commit for `takeover_after_ms - heartbeat_ms`.
    pub takeover_after_ms: u64,
    /// The topic heartbeats go to; empty: the events topic's name with `-standby` appended.
    pub heartbeat_topic: String,
}

impl Default for StandbyConfig {
    fn default() -> Self {
        StandbyConfig {
            enabled: false,
            instance: String::new(),
            heartbeat_ms: 500,
            takeover_after_ms: 2_000,
            heartbeat_topic: String::new(),
        }
    }
}

impl StandbyConfig {
    /// This instance's name: the configured one, or the host name.
    pub fn instance_name(&self) -> String {
        if !self.instance.is_empty() {
            return self.instance.clone();
        }
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_owned())
            .ok()
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "presenced".into())
    }

    /// The heartbeat topic for events topic `topic`.
    pub fn heartbeat_topic_for(&self, topic: &str) -> String {
        match self.heartbeat_topic.is_empty() {
            true => format!("{topic}-standby"),
            false => self.heartbeat_topic.clone(),
        }
    }

    /// How long the active may go on calling IM after the start of its last successful
    /// heartbeat commit: shorter than the takeover time by one heartbeat, so that it stops
    /// before any follower, which counts from when it *received* that heartbeat, can start.
    pub fn lease_ms(&self) -> u64 {
        self.takeover_after_ms.saturating_sub(self.heartbeat_ms)
    }
}

impl Section for StandbyConfig {
    fn ranges(&self) -> Vec<Range> {
        vec![
            Range::new(
                "standby.heartbeat_ms",
                self.heartbeat_ms as f64,
                50.0,
                60_000.0,
            ),
            Range::new(
                "standby.takeover_after_ms",
                self.takeover_after_ms as f64,
                200.0,
                600_000.0,
            ),
        ]
    }

    fn check(&self) -> Result<(), Invalid> {
        if self.takeover_after_ms < 3 * self.heartbeat_ms {
            return Err(Invalid::new(
                "standby.takeover_after_ms",
                format!(
                    "{} ms is less than three heartbeats (standby.heartbeat_ms = {}): one slow commit would look like a dead active",
                    self.takeover_after_ms, self.heartbeat_ms
                ),
            ));
        }
        let name_ok = |n: &str| {
            n.len() <= 64
                && n.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        };
        if !name_ok(&self.instance) {
            return Err(Invalid::new(
                "standby.instance",
                format!(
                    "{:?}: use at most 64 letters, digits, '-', '_' or '.'",
                    self.instance
                ),
            ));
        }
        if !self.heartbeat_topic.is_empty() && !name_ok(&self.heartbeat_topic) {
            return Err(Invalid::new(
                "standby.heartbeat_topic",
                format!("{:?} is not a Kafka topic name", self.heartbeat_topic),
            ));
        }
        Ok(())
    }
}
