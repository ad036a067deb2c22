//! A full disk (or a database at `store.max_size_mb`): the daemon stays up, says so, fails
//! `/readyz`, stops calling IM (answers that cannot be committed are wasted budget), and
//! retries a small write until one fits; the caller then resumes with a full sweep. The size
//! and the room left are measured for `/metrics` all along.

use super::http::Health;
use super::notify;
use crate::metrics::Metrics;
use crate::model::now_millis;
use crate::store::space::{measure, MIN_ROOM_BYTES};
use crate::store::{Store, StoreError};
use std::path::PathBuf;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// How often a write is tried again while the disk is full.
const RETRY_EVERY: Duration = Duration::from_secs(10);
/// How often the ERROR is repeated while it stays full.
const REPEAT_EVERY: Duration = Duration::from_secs(300);
/// How often the size and room gauges are refreshed.
const MEASURE_EVERY: Duration = Duration::from_secs(15);

/// Refreshes `presenced_db_size_bytes` and `presenced_db_free_bytes` until `shutdown`.
pub(super) fn spawn_monitor(
    path: PathBuf,
    max_bytes: u64,
    store: Store,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) {
    tokio::spawn(async move {
        loop {
            // Under a cap, what the pages use (a WAL's pages are not in the file's size yet).
            let cap = match max_bytes {
                0 => None,
                _ => store
                    .call(|db| db.used_bytes())
                    .await
                    .ok()
                    .map(|used| (max_bytes, used)),
            };
            match measure(&path, cap) {
                Ok(space) => {
                    metrics.db_size_bytes.set(space.size_bytes as i64);
                    metrics.db_free_bytes.set(space.free_bytes as i64);
                }
                Err(e) => tracing::debug!(error = %e, "cannot measure the database's room"),
            }
            tokio::select! {
                _ = tokio::time::sleep(MEASURE_EVERY) => {}
                _ = shutdown.cancelled() => return,
            }
        }
    });
}

/// After `error` (a write that found no room): waits, not ready, until a small write commits
/// again or `shutdown`. Errors other than a full disk end the wait as they are. The wait is
/// progress for the systemd watchdog (`progress`), or, while starting (`None`), it extends
/// systemd's start timeout.
pub(super) async fn wait_for_room(
    error: &StoreError,
    store: &Store,
    health: &Health,
    metrics: &Metrics,
    shutdown: &CancellationToken,
    progress: Option<&AtomicI64>,
) -> Result<(), StoreError> {
    let alive = || match progress {
        Some(p) => p.store(now_millis(), Ordering::Relaxed),
        None => notify::extend_start_timeout(RETRY_EVERY * 3),
    };
    alive();
    notify::status("waiting for room to write the database (disk full or store.max_size_mb)");
    let since = Instant::now();
    health.store_full.store(true, Ordering::Relaxed);
    metrics.store_full.set(1);
    tracing::error!(error = %error, "the database has no room to write (its disk is full, or it reached store.max_size_mb): sweeping and publishing marks wait and /readyz fails; nothing recorded is lost; free space on its filesystem (or raise store.max_size_mb and restart) and the daemon resumes by itself with a full sweep");
    let mut said = Instant::now();
    let room = loop {
        tokio::select! {
            _ = tokio::time::sleep(RETRY_EVERY) => {}
            _ = shutdown.cancelled() => break Ok(false),
        }
        alive();
        match store.call(|db| db.has_room(MIN_ROOM_BYTES)).await {
            Ok(true) => break Ok(true),
            Ok(false) => {}
            Err(e) if e.is_full() => {}
            Err(e) => break Err(e),
        }
        if said.elapsed() >= REPEAT_EVERY {
            said = Instant::now();
            tracing::error!(
                waiting_secs = since.elapsed().as_secs(),
                "the database still has no room to write; sweeping waits"
            );
        }
    };
    health.store_full.store(false, Ordering::Relaxed);
    metrics.store_full.set(0);
    if room? {
        // The sweep the full disk cut short is over; no other runs while this one waits.
        match store.call(|db| db.close_interrupted_sweeps()).await {
            Err(e) if !e.is_full() => return Err(e),
            _ => {}
        }
        tracing::info!(
            waited_secs = since.elapsed().as_secs(),
            "the database has room again: resuming with a full sweep"
        );
    }
    Ok(())
}
