//! Starting the daemon: the store, the IM client and the sweeper with its watch list, the sink
//! and its publisher, and the HTTP endpoints; and stopping it again.

use super::{disk, http, notify, RunOptions, ServiceError};
use crate::callback::{Endpoint, HintQueue};
use crate::config::{Config, KafkaConfig, SinkKind};
use crate::im::{ClientSettings, ImClient};
use crate::metrics::Metrics;
use crate::publish::kafka::{Delivery, KafkaSetupError, KafkaSink, TransactionalSink};
use crate::publish::{Publisher, Sink, StdoutSink, StdoutStyle};
use crate::store::{Store, StoreError};
use crate::sweep::{SweepSettings, Sweeper};
use crate::watchlist;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// A started daemon: what the sweep loop works with, and what stopping needs.
pub(super) struct Running {
    pub metrics: Arc<Metrics>,
    pub health: Arc<http::Health>,
    pub store: Store,
    pub sweeper: Sweeper,
    /// Poked after each sweep; the sweeper pokes it after each commit.
    pub wake: Arc<Notify>,
    /// Reloaded `[kafka]` settings for the publisher.
    pub kafka_settings: watch::Sender<KafkaConfig>,
    /// The configuration as reloads changed it.
    pub live_config: Config,
    /// The callback endpoint: a reload may give it a new token; its queue of hinted accounts is
    /// closed at a stop so late callbacks are answered and dropped.
    pub callbacks: Option<Arc<Endpoint>>,
    publisher: Option<JoinHandle<Result<(), StoreError>>>,
    publisher_stop: CancellationToken,
    http_stop: CancellationToken,
}

/// Starts everything; the daemon is ready (systemd told so) when this returns.
pub(super) async fn start(
    config: Config,
    options: &mut RunOptions,
    shutdown: &CancellationToken,
) -> Result<Running, ServiceError> {
    let (metrics, health) = match &options.shared {
        Some(shared) => (shared.metrics.clone(), shared.health.clone()),
        None => (Arc::new(Metrics::new()), Arc::new(http::Health::default())),
    };
    health.sweeps_failing.store(false, Ordering::Relaxed);

    announce_migrations(&config.store.path);
    let store = Store::open(
        &config.store.path,
        Duration::from_millis(config.store.busy_timeout_ms),
    )
    .await?;
    let max_bytes = config.store.max_size_mb.saturating_mul(1024 * 1024);
    store.call(move |db| db.set_max_size(max_bytes)).await?;
    let http_stop = CancellationToken::new();
    disk::spawn_monitor(
        config.store.path.clone(),
        max_bytes,
        store.clone(),
        metrics.clone(),
        http_stop.clone(),
    );
    // Served from here on, so that a start waiting for room on a full disk is seen.
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

    let settings = ClientSettings::from_config(&config.im).map_err(ServiceError::Client)?;
    let client = Arc::new(ImClient::new(settings, metrics.clone()).map_err(ServiceError::Client)?);
    if let Some(shared) = &options.shared {
        client.require_lease(shared.lease.clone());
    }
    let client_waiting = client.waiting();
    let sweep_settings = SweepSettings {
        batch_size: config.im.batch_size,
        max_in_flight: config.im.max_in_flight,
        batches_per_transaction: config.sweep.batches_per_transaction,
        platform_changes_are_transitions: config.sweep.platform_changes_are_transitions,
    };
    // Loading the state writes (sweeps a crash left open are closed, commits folded).
    let mut sweeper = loop {
        let loaded = Sweeper::new(
            client.clone(),
            store.clone(),
            sweep_settings.clone(),
            metrics.clone(),
        )
        .await;
        match loaded {
            Err(e) if e.is_full() && !shutdown.is_cancelled() => {
                disk::wait_for_room(&e, &store, &health, &metrics, shutdown, None).await?;
            }
            loaded => break loaded?,
        }
    };
    let watch = load_watch_list(&config, &store).await?;
    let removed = sweeper.set_watch_list(watch).await?;
    sweeper
        .set_schedule(config.sweep.schedule, config.sweep.schedule_settings())
        .await?;
    tracing::info!(
        watched = sweeper.watch_list().len(),
        known = sweeper.snapshot().len(),
        forgotten = removed,
        schedule = config.sweep.schedule.as_str(),
        db = %config.store.path.display(),
        "state loaded"
    );

    // The sink is checked before any sweep so a missing topic is a start-up error.
    let wake = Arc::new(Notify::new());
    sweeper.notify_commits(wake.clone());
    let publisher_stop = CancellationToken::new();
    let (kafka_settings, kafka_reloads) = watch::channel(config.kafka.clone());
    let publishing = Publishing {
        store: store.clone(),
        config: &config,
        metrics: metrics.clone(),
        wake: wake.clone(),
        stop: publisher_stop.clone(),
    };
    let publisher = match config.sink.kind {
        SinkKind::Kafka => match config.kafka.delivery {
            Delivery::AtLeastOnce => {
                let (sink, _) = KafkaSink::connect(&config.kafka, config.im.sdkappid).await?;
                check_partitions(&store, sink.partition_counts().await).await?;
                health.set_publisher(Some(sink.health()));
                Some(publishing.spawn(sink, Some(kafka_reloads)))
            }
            Delivery::ExactlyOnce => {
                let (mut sink, _) =
                    TransactionalSink::connect(&config.kafka, config.im.sdkappid).await?;
                if let Some(shared) = &options.shared {
                    sink.require_lease(shared.lease.clone());
                }
                check_partitions(&store, sink.partition_counts().await).await?;
                health.set_publisher(Some(sink.health()));
                Some(publishing.spawn(sink, Some(kafka_reloads)))
            }
        },
        SinkKind::Stdout => Some(publishing.spawn(
            StdoutSink {
                style: options.stdout_style.unwrap_or(StdoutStyle::JsonLines),
                sdkappid: config.im.sdkappid,
            },
            None,
        )),
        SinkKind::None => None,
    };

    let callbacks = match config.callback.enabled() {
        true => Some(serve_callbacks(&config, &mut sweeper, &metrics, &http_stop).await?),
        false => None,
    };

    notify::spawn_watchdog(vec![sweeper.progress(), client_waiting], shutdown.clone());
    health.ready.store(true, Ordering::Relaxed);
    notify::ready(&format!("watching {} accounts", sweeper.watch_list().len()));
    Ok(Running {
        metrics,
        health,
        store,
        sweeper,
        wake,
        kafka_settings,
        live_config: config,
        callbacks,
        publisher,
        publisher_stop,
        http_stop,
    })
}

/// Starts the callback endpoint; the sweeper re-queries what it hints at.
async fn serve_callbacks(
    config: &Config,
    sweeper: &mut Sweeper,
    metrics: &Arc<Metrics>,
    stop: &CancellationToken,
) -> Result<Arc<Endpoint>, ServiceError> {
    let c = &config.callback;
    let queue = Arc::new(HintQueue::new(
        c.queue_capacity,
        config.im.batch_size,
        c.coalesce(),
        c.min_requery_interval(),
    ));
    sweeper.take_hints(queue.clone(), c.hinted_call_share);
    let endpoint = Arc::new(Endpoint::new(
        c.verifier(config.im.sdkappid),
        queue,
        metrics.clone(),
        c.max_body_bytes,
    ));
    let addr = c.listen.parse().expect("validated");
    let bound =
        crate::callback::server::serve(addr, &c.path, endpoint.clone(), c.limits(), stop.clone())
            .await
            .map_err(|source| ServiceError::Callback {
                addr: c.listen.clone(),
                source,
            })?;
    if c.token.is_empty() {
        tracing::warn!("callback.allow_unsigned: callbacks are accepted unsigned, so anyone who reaches the endpoint can ask for re-queries (they stay within im.calls_per_second); set the console's callback token");
    } else if c.token.expose().chars().count() < MIN_TOKEN_CHARS {
        tracing::warn!("callback.token is shorter than {MIN_TOKEN_CHARS} characters: a captured signature is the only thing between a guess and the endpoint; set a longer token in IM's console");
    }
    tracing::info!(%bound, path = %c.path, "IM callbacks on http://{bound}{}", c.path);
    Ok(endpoint)
}

/// A callback token shorter than this is warned about.
const MIN_TOKEN_CHARS: usize = 16;

/// Refuses to publish to a topic that gained partitions since this database last did (an
/// account's events, or its state records and tombstone, would be split over two partitions);
/// records the counts otherwise. A topic the brokers do not describe now is not checked.
async fn check_partitions(store: &Store, counts: Vec<(String, i32)>) -> Result<(), ServiceError> {
    for (topic, now) in counts {
        let was = {
            let topic = topic.clone();
            store.call(move |db| db.topic_partitions(&topic)).await?
        };
        match was {
            Some(was) if now > was => {
                return Err(KafkaSetupError::PartitionsAdded { topic, was, now }.into())
            }
            Some(was) if now == was => {}
            _ => {
                store
                    .call(move |db| db.record_topic_partitions(&topic, now))
                    .await?
            }
        }
    }
    Ok(())
}

/// What a publisher task is made of, whatever its sink.
struct Publishing<'a> {
    store: Store,
    config: &'a Config,
    metrics: Arc<Metrics>,
    wake: Arc<Notify>,
    stop: CancellationToken,
}

impl Publishing<'_> {
    /// Spawns the publisher of `sink`, reconfigured with what `reloads` sends.
    fn spawn<S: Sink>(
        self,
        sink: S,
        reloads: Option<watch::Receiver<S::Settings>>,
    ) -> JoinHandle<Result<(), StoreError>> {
        let kafka = &self.config.kafka;
        let batch_size = match (self.config.sink.kind, kafka.delivery) {
            (SinkKind::Kafka, Delivery::ExactlyOnce) => kafka.transaction_events,
            _ => kafka.batch_size,
        };
        let mut publisher = Publisher::new(self.store, sink, batch_size, self.metrics, self.wake)
            .with_tuning(self.config.sink.clone());
        if let Some(reloads) = reloads {
            publisher = publisher.reconfigure_with(reloads);
        }
        tokio::spawn(publisher.run(
            self.stop,
            Duration::from_secs_f64(self.config.kafka.flush_timeout_secs),
        ))
    }
}

impl Running {
    /// Stops the publisher (it flushes within `service.shutdown_timeout_secs`), the HTTP
    /// endpoints and the store, and says what is left in the outbox.
    pub(super) async fn stop(self) -> Result<(), ServiceError> {
        notify::stopping();
        if let Some(callbacks) = &self.callbacks {
            callbacks.queue.close();
        }
        // What the adaptive schedule learned since its last save (a crash loses only that).
        let mut sweeper = self.sweeper;
        if let Err(e) = sweeper.save_estimates().await {
            tracing::warn!(error = %e, "the adaptive schedule's estimates were not saved");
        }
        tracing::info!("stopping: flushing events");
        self.publisher_stop.cancel();
        if let Some(p) = self.publisher {
            let bound = Duration::from_secs_f64(self.live_config.service.shutdown_timeout_secs);
            match tokio::time::timeout(bound, p).await {
                Ok(Ok(Err(e))) => tracing::error!(error = %e, "publisher stopped with an error"),
                Err(_) => {
                    tracing::warn!(
                        "publisher did not stop in time; unsent events stay in the outbox"
                    )
                }
                _ => {}
            }
        }
        self.http_stop.cancel();
        if self.live_config.sink.kind == SinkKind::None {
            // Nothing is published without a sink: nothing waits to be.
            self.store.call(|db| db.mark_all_published()).await?;
            self.store.checkpoint().await?;
            drop(sweeper);
            drop(self.store);
            tracing::info!("stopped cleanly (sink.kind = \"none\": nothing is published)");
            return Ok(());
        }
        let backlog = self.store.call(|db| db.outbox_backlog()).await?.0;
        self.store.checkpoint().await?;
        drop(sweeper);
        drop(self.store);
        tracing::info!(backlog, "stopped cleanly");
        Ok(())
    }
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
