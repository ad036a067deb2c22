//! The daemon: wires the IM client, the sweeper and the publisher into one process that starts
//! cleanly, reports its health, reloads on SIGHUP and stops on SIGTERM without losing anything.

pub mod http;
pub mod notify;

use crate::config::{Config, SinkKind};
use crate::im::{ClientSettings, ImClient, QueryError};
use crate::metrics::{Metrics, ResultLabel};
use crate::model::now_millis;
use crate::publish::kafka::{KafkaSetupError, KafkaSink};
use crate::publish::{Publisher, Sink, StdoutStyle};
use crate::store::{Store, StoreError};
use crate::sweep::{SweepError, SweepOutcome, SweepReport, SweepSettings, Sweeper};
use crate::watchlist;
use rand::Rng;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Kafka(#[from] KafkaSetupError),
    #[error("IM client: {0}")]
    Client(QueryError),
    #[error(transparent)]
    WatchList(#[from] watchlist::WatchListError),
    #[error("cannot serve metrics on {addr}: {source}")]
    Metrics {
        addr: String,
        source: std::io::Error,
    },
    #[error("signal handling: {0}")]
    Signals(std::io::Error),
}

impl ServiceError {
    /// Configuration problems exit with 78 (EX_CONFIG) so systemd does not restart in a loop.
    pub fn is_configuration(&self) -> bool {
        matches!(
            self,
            ServiceError::Kafka(KafkaSetupError::TopicMissing { .. } | KafkaSetupError::Client(_))
                | ServiceError::Client(_)
                | ServiceError::WatchList(_)
                | ServiceError::Store(StoreError::TooNew { .. } | StoreError::Open { .. })
        )
    }
}

/// Swaps the log filter of the running subscriber.
pub type ReloadLogFilter = Box<dyn Fn(&str) -> Result<(), String> + Send + Sync>;

/// Options that do not come from the configuration file.
#[derive(Default)]
pub struct RunOptions {
    /// How the stdout sink prints (the demo uses the human style).
    pub stdout_style: Option<StdoutStyle>,
    /// Called on SIGHUP with the re-read configuration's log filter.
    pub reload_log_filter: Option<ReloadLogFilter>,
    /// Where the configuration came from, re-read on SIGHUP.
    pub config_path: Option<PathBuf>,
    /// Stop after this many sweeps (benchmarks and tests); None runs until a signal.
    pub max_sweeps: Option<u64>,
    /// Cancel to stop the daemon from inside the process (the demo and tests).
    pub shutdown: Option<CancellationToken>,
    /// Told the metrics address once it is bound.
    pub on_metrics_bound: Option<Box<dyn FnOnce(std::net::SocketAddr) + Send>>,
}

/// Loads the watch list: the configured file (invalid lines reported, the rest used) plus the
/// `watched_accounts` table, sorted and de-duplicated.
pub async fn load_watch_list(config: &Config, store: &Store) -> Result<Vec<String>, ServiceError> {
    let mut ids = Vec::new();
    if let Some(path) = &config.watch.file {
        let parsed = watchlist::read_file(path)?;
        for bad in parsed.invalid.iter().take(20) {
            tracing::warn!("watch list: {bad}; line skipped");
        }
        if parsed.invalid.len() > 20 {
            tracing::warn!(more = parsed.invalid.len() - 20, file = %path.display(), "more invalid watch-list lines skipped");
        }
        ids = parsed.ids;
    }
    ids.extend(store.call(|db| db.watched_ids()).await?);
    // Sweeping in id order keeps each transaction's writes close together in SQLite's b-trees
    // (a random order dirties a page per row); sorting also folds duplicates.
    ids.sort_unstable();
    ids.dedup();
    Ok(ids)
}

/// Says so before a migration that carries a history along, and gives systemd's start timeout
/// room for it (30 s per million rows, five times what it takes here, plus a minute).
fn announce_migrations(path: &std::path::Path) {
    let Ok(pending) = crate::store::migrate::pending(path) else {
        return; // opening the store reports the problem
    };
    if pending.names.is_empty() || pending.history_rows == 0 {
        return;
    }
    tracing::info!(
        migrations = ?pending.names,
        history_rows = pending.history_rows,
        "migrating the database schema; a large history takes a while (`presenced migrate` does it ahead of a restart)"
    );
    let budget = 60 + pending.history_rows.unsigned_abs() * 30 / 1_000_000;
    notify::extend_start_timeout(Duration::from_secs(budget));
}

pub async fn run(config: Config, mut options: RunOptions) -> Result<(), ServiceError> {
    let metrics = Arc::new(Metrics::new());
    let health = Arc::new(http::Health::default());
    let shutdown = options.shutdown.take().unwrap_or_default();

    announce_migrations(&config.store.path);
    let store = Store::open(
        &config.store.path,
        Duration::from_millis(config.store.busy_timeout_ms),
    )
    .await?;
    let settings = ClientSettings::from_config(&config.im).map_err(ServiceError::Client)?;
    let client = Arc::new(ImClient::new(settings, metrics.clone()).map_err(ServiceError::Client)?);
    let client_waiting = client.waiting();
    let mut sweeper = Sweeper::new(
        client,
        store.clone(),
        SweepSettings {
            batch_size: config.im.batch_size,
            max_in_flight: config.im.max_in_flight,
            batches_per_transaction: config.sweep.batches_per_transaction,
            platform_changes_are_transitions: config.sweep.platform_changes_are_transitions,
        },
        metrics.clone(),
    )
    .await?;
    let watch = load_watch_list(&config, &store).await?;
    let removed = sweeper.set_watch_list(watch).await?;
    tracing::info!(
        watched = sweeper.watch_list().len(),
        known = sweeper.snapshot().len(),
        forgotten = removed,
        db = %config.store.path.display(),
        "state loaded"
    );

    // The sink is checked before any sweep so a missing topic is a start-up error.
    let wake = Arc::new(Notify::new());
    sweeper.notify_commits(wake.clone());
    let sink = match config.sink.kind {
        SinkKind::Kafka => {
            if config.kafka.message_timeout_ms.is_some() {
                tracing::warn!("kafka.message_timeout_ms is ignored: events wait in the producer until Kafka acknowledges them (a timeout could reorder an account's events); remove it from the configuration");
            }
            let sink = KafkaSink::new(&config.kafka, config.im.sdkappid)?;
            let _ = health.kafka.set(sink.health());
            sink.check_topic().await?;
            Some(Sink::Kafka(sink))
        }
        SinkKind::Stdout => Some(Sink::Stdout {
            style: options.stdout_style.unwrap_or(StdoutStyle::JsonLines),
            sdkappid: config.im.sdkappid,
        }),
        SinkKind::None => None,
    };
    let publisher_stop = CancellationToken::new();
    let (kafka_settings, kafka_reloads) = tokio::sync::watch::channel(config.kafka.clone());
    let publisher = sink.map(|sink| {
        let p = Publisher::new(
            store.clone(),
            sink,
            config.kafka.batch_size,
            metrics.clone(),
            wake.clone(),
        )
        .reconfigure_with(kafka_reloads);
        tokio::spawn(p.run(
            publisher_stop.clone(),
            Duration::from_secs_f64(config.kafka.flush_timeout_secs),
        ))
    });

    let http_stop = CancellationToken::new();
    if !config.service.metrics_listen.is_empty() {
        let addr = config.service.metrics_listen.parse().expect("validated");
        let bound = http::serve(addr, metrics.clone(), health.clone(), http_stop.clone())
            .await
            .map_err(|source| ServiceError::Metrics {
                addr: config.service.metrics_listen.clone(),
                source,
            })?;
        tracing::info!(%bound, "metrics on http://{bound}/metrics");
        if let Some(f) = options.on_metrics_bound.take() {
            f(bound);
        }
    }

    spawn_signal_handlers(shutdown.clone())?;
    let mut hangups = hangup_stream()?;
    notify::spawn_watchdog(vec![sweeper.progress(), client_waiting], shutdown.clone());
    health.ready.store(true, Ordering::Relaxed);
    notify::ready(&format!("watching {} accounts", sweeper.watch_list().len()));

    let interval = Duration::from_secs_f64(config.sweep.interval_secs);
    let mut sweeps_done = 0u64;
    let mut failed_in_a_row = 0u32;
    let mut config_error = false;
    let mut live_config = config.clone();
    loop {
        if shutdown.is_cancelled() {
            break;
        }
        let started = tokio::time::Instant::now();
        if !config_error {
            match sweeper.sweep(&shutdown).await {
                Ok(report) => {
                    sweeps_done += 1;
                    wake.notify_one();
                    if after_sweep(&report, &metrics, interval, started.elapsed()) {
                        failed_in_a_row += 1;
                        if failed_in_a_row >= live_config.service.unready_after_failed_sweeps {
                            health.sweeps_failing.store(true, Ordering::Relaxed);
                        }
                    } else {
                        failed_in_a_row = 0;
                        health.sweeps_failing.store(false, Ordering::Relaxed);
                    }
                    if report.outcome == SweepOutcome::Stopped {
                        break;
                    }
                    prune(&live_config, &store, &shutdown).await?;
                }
                Err(SweepError::Configuration(e)) => {
                    wake.notify_one();
                    config_error = true;
                    health.ready.store(false, Ordering::Relaxed);
                    metrics.configuration_error.set(1);
                    metrics
                        .sweeps
                        .get_or_create(&ResultLabel {
                            result: "configuration_error".into(),
                        })
                        .inc();
                    tracing::error!(error = %e, "sweeping stopped: fix [im] in the configuration and restart; SIGHUP retries with the running settings");
                    notify::status(&format!("stopped: {e}"));
                }
                Err(SweepError::Store(e)) => return Err(e.into()),
            }
        }
        if options.max_sweeps.is_some_and(|max| sweeps_done >= max) {
            break;
        }
        let jitter = if live_config.sweep.jitter_secs > 0.0 {
            rand::rng().random_range(0.0..live_config.sweep.jitter_secs)
        } else {
            0.0
        };
        let next = started + interval + Duration::from_secs_f64(jitter);
        // Sleep in short steps so the watchdog sees the idle scheduler alive.
        loop {
            sweeper.progress().store(now_millis(), Ordering::Relaxed);
            let step = next
                .saturating_duration_since(tokio::time::Instant::now())
                .min(Duration::from_secs(5));
            tokio::select! {
                _ = tokio::time::sleep(step) => {}
                _ = shutdown.cancelled() => break,
                _ = hangups.recv() => {
                    match reload(&mut options, &mut live_config, &store, &mut sweeper, &kafka_settings).await {
                        Ok(()) => {
                            if config_error {
                                config_error = false;
                                metrics.configuration_error.set(0);
                                health.ready.store(true, Ordering::Relaxed);
                            }
                        }
                        Err(e) => tracing::error!(error = %e, "reload failed; keeping the previous watch list"),
                    }
                }
            }
            if tokio::time::Instant::now() >= next {
                break;
            }
        }
    }

    notify::stopping();
    tracing::info!("stopping: flushing events");
    publisher_stop.cancel();
    if let Some(p) = publisher {
        let bound = Duration::from_secs_f64(live_config.service.shutdown_timeout_secs);
        match tokio::time::timeout(bound, p).await {
            Ok(Ok(Err(e))) => tracing::error!(error = %e, "publisher stopped with an error"),
            Err(_) => {
                tracing::warn!("publisher did not stop in time; unsent events stay in the outbox")
            }
            _ => {}
        }
    }
    http_stop.cancel();
    let backlog = store.call(|db| db.outbox_backlog()).await?.0;
    store.checkpoint().await?;
    drop(sweeper);
    drop(store);
    tracing::info!(backlog, "stopped cleanly");
    Ok(())
}

/// Records a sweep in the metrics and the log; says whether it observed nothing (a failed sweep).
fn after_sweep(
    report: &SweepReport,
    metrics: &Metrics,
    interval: Duration,
    elapsed: Duration,
) -> bool {
    let c = &report.counts;
    let failed = report.observed_nothing();
    let label = match report.outcome {
        SweepOutcome::Completed if failed => "failed",
        SweepOutcome::Completed => "completed",
        SweepOutcome::Stopped => "stopped",
    };
    metrics
        .sweeps
        .get_or_create(&ResultLabel {
            result: label.into(),
        })
        .inc();
    metrics.sweep_duration.observe(elapsed.as_secs_f64());
    let lag = elapsed.saturating_sub(interval).as_secs_f64();
    metrics.sweep_lag_seconds.set(lag);
    if report.outcome == SweepOutcome::Completed && !failed {
        metrics
            .last_sweep_success
            .set(report.finished_at as f64 / 1000.0);
    }
    let summary = format!(
        "sweep {} {label} in {:.2}s: {} asked, {} observed, {} failed, {} not found, {} transitions",
        report.sweep_id,
        elapsed.as_secs_f64(),
        c.asked,
        c.observed,
        c.failed,
        c.not_found,
        c.transitions
    );
    if failed {
        let cause = report.first_failure.as_deref().unwrap_or("no answer");
        tracing::warn!(
            cause,
            "{summary}; nothing was observed: check im.base_url and what answers there"
        );
    } else if lag > 0.0 {
        tracing::warn!(
            lag_seconds = lag,
            "{summary}; the sweep took longer than the interval"
        );
    } else {
        tracing::info!("{summary}");
    }
    notify::status(&summary);
    failed
}

/// Prunes history past the retention age in small chunks, each its own transaction.
async fn prune(
    config: &Config,
    store: &Store,
    shutdown: &CancellationToken,
) -> Result<(), StoreError> {
    // Without a sink nothing is ever published: retention does not wait for it, and the
    // tombstones of removed accounts have nowhere to go.
    let wait_for_publish = config.sink.kind != SinkKind::None;
    if !wait_for_publish {
        store
            .call(|db| {
                // A bounded step a sweep, like the pruning below; what is left goes next time.
                let pending = db.tombstones_due(10_000, true)?;
                db.delete_tombstones(&pending)
            })
            .await?;
    }
    // Validation bounds the days; the cut-off is still computed so that it cannot wrap into the
    // future, where it would prune everything.
    let Some(age) = i64::try_from(config.store.retention_days)
        .ok()
        .filter(|d| *d > 0)
        .and_then(|d| d.checked_mul(86_400_000))
    else {
        return Ok(());
    };
    let before = now_millis().saturating_sub(age);
    let mut total = 0;
    while !shutdown.is_cancelled() {
        let n = store
            .call(move |db| db.prune_history(before, 2_000, wait_for_publish))
            .await?;
        total += n;
        if n == 0 {
            break;
        }
        tokio::task::yield_now().await;
    }
    if total > 0 {
        tracing::info!(rows = total, "pruned history past the retention age");
    }
    Ok(())
}

async fn reload(
    options: &mut RunOptions,
    live: &mut Config,
    store: &Store,
    sweeper: &mut Sweeper,
    kafka: &tokio::sync::watch::Sender<crate::config::KafkaConfig>,
) -> Result<(), ServiceError> {
    if let Some(path) = &options.config_path {
        match Config::load(path) {
            Ok(new) => {
                if let Some(f) = &options.reload_log_filter {
                    if let Err(e) = f(&new.service.log_filter) {
                        tracing::error!(error = %e, "log filter not changed");
                    }
                }
                live.watch = new.watch;
                live.service.log_filter = new.service.log_filter;
                live.store.retention_days = new.store.retention_days;
                reload_kafka(live, new.kafka, kafka);
            }
            Err(e) => {
                tracing::error!(error = %e, "configuration not reloaded; keeping the running one")
            }
        }
    }
    let ids = load_watch_list(live, store).await?;
    let before = sweeper.watch_list().len();
    let removed = sweeper.set_watch_list(ids).await?;
    tracing::info!(
        before,
        after = sweeper.watch_list().len(),
        forgotten = removed,
        "watch list reloaded"
    );
    Ok(())
}

/// Hands changed `[kafka]` settings (brokers, credentials, TLS, tuning) to the publisher, which
/// re-creates its producer. The topics are what the outbox was published to so far: changing
/// them takes a restart.
fn reload_kafka(
    live: &mut Config,
    new: crate::config::KafkaConfig,
    kafka: &tokio::sync::watch::Sender<crate::config::KafkaConfig>,
) {
    if new.topic != live.kafka.topic || new.state_topic != live.kafka.state_topic {
        tracing::warn!("kafka.topic and kafka.state_topic changes take effect at the next restart");
    }
    let new = crate::config::KafkaConfig {
        topic: live.kafka.topic.clone(),
        state_topic: live.kafka.state_topic.clone(),
        ..new
    };
    if new != live.kafka {
        live.kafka = new.clone();
        kafka.send_replace(new);
    }
}

fn spawn_signal_handlers(shutdown: CancellationToken) -> Result<(), ServiceError> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).map_err(ServiceError::Signals)?;
    let mut int = signal(SignalKind::interrupt()).map_err(ServiceError::Signals)?;
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: finishing in-flight batches, then stopping"),
            _ = int.recv() => tracing::info!("SIGINT: finishing in-flight batches, then stopping"),
        }
        shutdown.cancel();
    });
    Ok(())
}

fn hangup_stream() -> Result<tokio::signal::unix::Signal, ServiceError> {
    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .map_err(ServiceError::Signals)
}
