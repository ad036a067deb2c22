//! `presenced replay`: re-publishes a stretch of the history with the original event ids.

use super::config::SinkConfig;
use super::settle::acknowledged;
use super::sink::{deliver, Sink};
use super::DeliveryError;
use crate::store::{Store, StoreError};
use std::collections::HashSet;
use std::time::Duration;

/// Events read from the history per page.
const PAGE: usize = 5_000;

/// Why a replay stopped.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    /// The history could not be read.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Some events were refused or not acknowledged, attempt after attempt.
    #[error("{failed} events could not be delivered after {attempts} attempts: {first}")]
    Delivery {
        /// Events of the page still undelivered.
        failed: usize,
        /// Attempts made.
        attempts: u32,
        /// The first error of the last attempt.
        first: DeliveryError,
    },
}

/// Re-publishes the history observed in `[since, until)` in commit order, with the original
/// event ids (consumers that dedupe by id see nothing twice). `progress` gets (done, total).
pub async fn replay<S: Sink>(
    store: &Store,
    sink: &mut S,
    tuning: &SinkConfig,
    since: i64,
    until: i64,
    mut progress: impl FnMut(u64, u64),
) -> Result<u64, ReplayError> {
    let attempts = tuning.replay_attempts.max(1);
    let total = store
        .call(move |db| db.history_count_between(since, until))
        .await?;
    let mut after = 0i64;
    let mut done = 0u64;
    progress(0, total);
    loop {
        let page = store
            .call(move |db| db.history_range(since, until, after, PAGE))
            .await?;
        let Some(last) = page.last() else { break };
        after = last.history_id;
        let mut pending = page;
        for attempt in 1..=attempts {
            let (sent, results) = deliver(sink, pending).await;
            pending = sent;
            let acked: HashSet<i64> = acknowledged(&pending, &results).into_iter().collect();
            let first = results.iter().find_map(|r| r.as_ref().err()).cloned();
            done += acked.len() as u64;
            pending.retain(|e| !acked.contains(&e.history_id));
            progress(done, total);
            match first {
                None => break,
                Some(first) if attempt == attempts || first.is_final() => {
                    return Err(ReplayError::Delivery {
                        failed: pending.len(),
                        attempts: attempt,
                        first,
                    });
                }
                Some(_) => tokio::time::sleep(tuning.replay_retry(attempt)).await,
            }
        }
    }
    sink.flush(Duration::from_secs(10)).await;
    Ok(done)
}
