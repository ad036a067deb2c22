//! `[service]`: the HTTP endpoints, logging and shutdown.

use crate::logging::LogFormat;
use crate::validation::{Invalid, Range, Section};
use serde::{Deserialize, Serialize};

/// `[service]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServiceConfig {
    /// Prometheus `/metrics`, `/healthz`, `/readyz`; empty to disable.
    pub metrics_listen: String,
    /// `human` or `json`.
    pub log_format: LogFormat,
    /// A `tracing` filter, e.g. `info` or `presenced=debug`.
    pub log_filter: String,
    /// How long a stop waits for the publisher to flush, seconds.
    pub shutdown_timeout_secs: f64,
    /// `/readyz` fails after this many sweeps in a row that observed nothing.
    pub unready_after_failed_sweeps: u32,
}

impl Default for ServiceConfig {
    fn default() -> Self {
        ServiceConfig {
            metrics_listen: "127.0.0.1:9464".into(),
            log_format: LogFormat::Human,
            log_filter: "info".into(),
            shutdown_timeout_secs: 15.0,
            unready_after_failed_sweeps: 3,
        }
    }
}

impl Section for ServiceConfig {
    fn ranges(&self) -> Vec<Range> {
        vec![
            Range::new(
                "service.shutdown_timeout_secs",
                self.shutdown_timeout_secs,
                0.0,
                3_600.0,
            ),
            Range::new(
                "service.unready_after_failed_sweeps",
                f64::from(self.unready_after_failed_sweeps),
                1.0,
                1_000.0,
            ),
        ]
    }

    fn check(&self) -> Result<(), Invalid> {
        if !self.metrics_listen.is_empty()
            && self.metrics_listen.parse::<std::net::SocketAddr>().is_err()
        {
            return Err(Invalid::new(
                "service.metrics_listen",
                format!(
                    "{:?} is not an address such as 127.0.0.1:9464",
                    self.metrics_listen
                ),
            ));
        }
        if tracing_subscriber::EnvFilter::try_new(&self.log_filter).is_err() {
            return Err(Invalid::new(
                "service.log_filter",
                format!("{:?} is not a valid filter", self.log_filter),
            ));
        }
        Ok(())
    }
}
