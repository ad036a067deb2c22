//! The daemon: wires the IM client, the sweeper and the publisher into one process that starts
//! cleanly, reports its health, reloads when asked and stops when told, without losing anything.
//!
//! - `start`: opening the store, the client, the sink and the HTTP endpoints.
//! - `sweeping`: the sweep loop, retention, and what a sweep reports.
//! - `reload`: what a reload (SIGHUP) changes.
//! - `http`, `notify`: the operator's views (metrics, health, systemd).
//!
//! The caller owns the signals: [`run`] takes a shutdown token and a stream of reload requests,
//! as tokio's mini-redis `server::run` takes its shutdown future.

pub mod config;
mod disk;
pub(crate) mod http;
pub(crate) mod notify;
mod reload;
mod roles;
mod start;
mod sweeping;

pub use start::load_watch_list;

use crate::im::QueryError;
use crate::publish::kafka::KafkaSetupError;
use crate::publish::StdoutStyle;
use crate::store::StoreError;
use crate::watchlist;
use std::path::PathBuf;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Why the daemon could not start or had to stop.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// The database.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Setting up the Kafka sink.
    #[error(transparent)]
    Kafka(#[from] KafkaSetupError),
    /// The IM client's settings.
    #[error("IM client: {0}")]
    Client(QueryError),
    /// The watch-list file.
    #[error(transparent)]
    WatchList(#[from] watchlist::WatchListError),
    /// The metrics address could not be bound.
    #[error("cannot serve metrics on {addr}: {source}")]
    Metrics {
        /// The configured address.
        addr: String,
        /// Why binding failed.
        source: std::io::Error,
    },
    /// Standby: following the topic or taking over failed.
    #[error(transparent)]
    Standby(#[from] crate::standby::StandbyError),
    /// The callback address could not be bound.
    #[error("cannot serve IM callbacks on {addr}: {source}")]
    Callback {
        /// The configured address.
        addr: String,
        /// Why binding failed.
        source: std::io::Error,
    },
}

impl ServiceError {
    /// Whether the configuration is at fault (the operator must change it; a restart alone
    /// cannot help). Each module's error says so of itself.
    pub fn is_configuration(&self) -> bool {
        match self {
            ServiceError::Store(e) => e.is_configuration(),
            ServiceError::Kafka(e) => e.is_configuration(),
            ServiceError::Client(_) | ServiceError::WatchList(_) => true,
            ServiceError::Metrics { .. }
            | ServiceError::Callback { .. }
            | ServiceError::Standby(_) => false,
        }
    }
}

/// Swaps the log filter of the running subscriber.
pub type ReloadLogFilter = Box<dyn Fn(&str) -> Result<(), String> + Send + Sync>;

/// Options that do not come from the configuration file.
#[derive(Default)]
pub struct RunOptions {
    /// How the stdout sink prints (the demo uses the human style).
    pub stdout_style: Option<StdoutStyle>,
    /// Called on a reload with the re-read configuration's log filter.
    pub reload_log_filter: Option<ReloadLogFilter>,
    /// Where the configuration came from, re-read on a reload.
    pub config_path: Option<PathBuf>,
    /// Reload requests (the command line sends one per SIGHUP).
    pub reloads: Option<mpsc::Receiver<()>>,
    /// Stop after this many sweeps (benchmarks and tests); None runs until `shutdown`.
    pub max_sweeps: Option<u64>,
    /// Told the metrics address once it is bound.
    pub on_metrics_bound: Option<Box<dyn FnOnce(std::net::SocketAddr) + Send>>,
    /// Clean hand-over requests (`[standby]`; the command line sends one per SIGUSR2).
    pub handovers: Option<mpsc::Receiver<()>>,
    /// Set by `[standby]` for its active phases; leave it `None`.
    pub shared: Option<Shared>,
}

/// What a standby's active phase takes over from the roles around it: the metrics, the health
/// and the lease IM calls need. Only the daemon makes one.
pub struct Shared {
    metrics: std::sync::Arc<crate::metrics::Metrics>,
    health: std::sync::Arc<http::Health>,
    lease: std::sync::Arc<crate::im::CallLease>,
}

/// Runs the daemon until `shutdown` is cancelled (or `max_sweeps` sweeps are done), then stops:
/// the publisher flushes within `service.shutdown_timeout_secs`, and whatever was not
/// acknowledged stays in the outbox for the next start.
pub async fn run(
    config: crate::config::Config,
    mut options: RunOptions,
    shutdown: CancellationToken,
) -> Result<(), ServiceError> {
    if config.standby.enabled {
        return roles::run(config, options, shutdown).await;
    }
    run_alone(config, &mut options, &shutdown).await
}

/// Sweeps and publishes until `shutdown`: the daemon alone, or a standby's active.
async fn run_alone(
    config: crate::config::Config,
    options: &mut RunOptions,
    shutdown: &CancellationToken,
) -> Result<(), ServiceError> {
    let mut running = start::start(config, options, shutdown).await?;
    let result = sweeping::sweep_until_stopped(&mut running, options, shutdown).await;
    let stopped = running.stop().await;
    result.and(stopped)
}
