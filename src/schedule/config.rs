//! `sweep.schedule`: the two schedules' names in the configuration.

use serde::{Deserialize, Serialize};

/// `sweep.schedule`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ScheduleKind {
    /// Every account once per sweep.
    #[default]
    RoundRobin,
    /// Polls spent where changes happen.
    Adaptive,
}

impl ScheduleKind {
    /// As written in the configuration.
    pub fn as_str(self) -> &'static str {
        match self {
            ScheduleKind::RoundRobin => "round-robin",
            ScheduleKind::Adaptive => "adaptive",
        }
    }
}
