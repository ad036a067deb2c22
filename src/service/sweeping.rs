//! The sweep loop: a sweep every `sweep.interval_secs` (plus jitter), what each one reports, and
//! retention after it; reloads handled between sweeps.

use super::reload::reload;
use super::start::Running;
use super::{disk, notify, RunOptions, ServiceError};
use crate::config::{Config, SinkKind};
use crate::metrics::{Metrics, ResultLabel};
use crate::model::now_millis;
use crate::store::{Store, StoreError};
use crate::sweep::{Idle, SweepError, SweepOutcome, SweepReport};
use rand::Rng;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// A reload request, or pending forever when nobody can send one.
async fn reload_requested(reloads: &mut Option<tokio::sync::mpsc::Receiver<()>>) {
    match reloads {
        Some(rx) => {
            if rx.recv().await.is_none() {
                *reloads = None;
                std::future::pending::<()>().await
            }
        }
        None => std::future::pending().await,
    }
}

/// Sweeps until `shutdown` (or `max_sweeps`). The reload requests go back to `options` after,
/// for the next time this instance is a standby's active.
pub(super) async fn sweep_until_stopped(
    running: &mut Running,
    options: &mut RunOptions,
    shutdown: &CancellationToken,
) -> Result<(), ServiceError> {
    let mut reloads = options.reloads.take();
    let result = sweep_loop(running, options, shutdown, &mut reloads).await;
    options.reloads = reloads;
    result
}

async fn sweep_loop(
    running: &mut Running,
    options: &mut RunOptions,
    shutdown: &CancellationToken,
    reloads: &mut Option<tokio::sync::mpsc::Receiver<()>>,
) -> Result<(), ServiceError> {
    let Running {
        metrics,
        health,
        store,
        sweeper,
        wake,
        kafka_settings,
        live_config,
        callbacks,
        ..
    } = running;
    let progress = sweeper.progress();
    let interval = Duration::from_secs_f64(live_config.sweep.interval_secs);
    let mut sweeps_done = 0u64;
    let mut failed_in_a_row = 0u32;
    let mut config_error = false;
    loop {
        if shutdown.is_cancelled() {
            break;
        }
        let started = tokio::time::Instant::now();
        if !config_error {
            match sweeper.sweep(shutdown).await {
                Ok(report) => {
                    sweeps_done += 1;
                    wake.notify_one();
                    if after_sweep(&report, metrics, interval, started.elapsed()) {
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
                    match prune(live_config, store, shutdown).await {
                        Err(e) if e.is_full() => {
                            disk::wait_for_room(
                                &e,
                                store,
                                health,
                                metrics,
                                shutdown,
                                Some(&progress),
                            )
                            .await?;
                        }
                        pruned => pruned?,
                    }
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
                // What was not committed is found again by the next sweep, which starts as
                // soon as a write fits.
                Err(SweepError::Store(e)) if e.is_full() => {
                    disk::wait_for_room(&e, store, health, metrics, shutdown, Some(&progress))
                        .await?;
                    continue;
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
        // Between sweeps: re-query what callbacks hint at, in steps of at most five seconds so
        // the watchdog sees the idle scheduler alive.
        loop {
            sweeper.progress().store(now_millis(), Ordering::Relaxed);
            let step = next.min(tokio::time::Instant::now() + Duration::from_secs(5));
            let idle = match sweeper
                .idle(step, shutdown, reload_requested(reloads))
                .await
            {
                Err(e) if e.is_full() => {
                    disk::wait_for_room(&e, store, health, metrics, shutdown, Some(&progress))
                        .await?;
                    break;
                }
                idle => idle?,
            };
            match idle {
                Idle::Stopped => break,
                Idle::Deadline => {}
                Idle::Interrupted => {
                    let reloaded = reload(
                        options,
                        live_config,
                        store,
                        sweeper,
                        kafka_settings,
                        callbacks.as_deref(),
                    );
                    match reloaded.await {
                        Ok(()) => {
                            if config_error {
                                config_error = false;
                                metrics.configuration_error.set(0);
                                health.ready.store(true, Ordering::Relaxed);
                            }
                        }
                        Err(e) => {
                            tracing::error!(error = %e, "reload failed; keeping the previous watch list")
                        }
                    }
                }
            }
            if tokio::time::Instant::now() >= next {
                break;
            }
        }
    }
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
pub(super) async fn prune(
    config: &Config,
    store: &Store,
    shutdown: &CancellationToken,
) -> Result<(), StoreError> {
    // Without a sink nothing is ever published: retention does not wait for it, the tombstones
    // of removed accounts have nowhere to go, and no event waits in the outbox.
    let wait_for_publish = config.sink.kind != SinkKind::None;
    if !wait_for_publish {
        store
            .call(|db| {
                // A bounded step a sweep, like the pruning below; what is left goes next time.
                let pending = db.tombstones_due(10_000, true)?;
                db.delete_tombstones(&pending)?;
                // Nothing waits to be published either: `stats` and the outbox say so.
                db.mark_all_published()
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
