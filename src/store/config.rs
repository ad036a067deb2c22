//! `[store]`: the SQLite file and how long history is kept.

use crate::validation::{Range, Section};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// The longest retention accepted: a thousand years. Anything meant as "forever" is 0.
pub const MAX_RETENTION_DAYS: u64 = 365_000;

/// `[store]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// The SQLite file.
    pub path: PathBuf,
    /// How long a statement waits for a lock held by another connection, ms.
    pub busy_timeout_ms: u64,
    /// History older than this is pruned; 0 keeps everything.
    pub retention_days: u64,
    /// The database file grows to at most this many MiB; 0 leaves it to the filesystem. Reaching
    /// it is handled as a full disk.
    pub max_size_mb: u64,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            path: PathBuf::from("/var/lib/presenced/presenced.db"),
            busy_timeout_ms: 5_000,
            retention_days: 0,
            max_size_mb: 0,
        }
    }
}

impl Section for StoreConfig {
    fn ranges(&self) -> Vec<Range> {
        vec![
            Range::new(
                "store.busy_timeout_ms",
                self.busy_timeout_ms as f64,
                0.0,
                600_000.0,
            ),
            Range::new(
                "store.max_size_mb",
                self.max_size_mb as f64,
                0.0,
                1_000_000_000.0,
            ),
            Range::new(
                "store.retention_days",
                self.retention_days as f64,
                0.0,
                MAX_RETENTION_DAYS as f64,
            ),
        ]
    }
}
