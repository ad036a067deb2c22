//! Re-queries of accounts IM's callbacks hinted at: beside a sweep's batches while a sweep
//! runs, and on their own between sweeps, always in the hinted lane of the pacing (its share
//! of the call rate). Their answers go through the same diff and commit as a sweep's.

use super::{Sweeper, IN_FLIGHT_GRACE};
use crate::callback::HintQueue;
use crate::im::ratelimit::{Grant, Lane};
use crate::im::{AccountOutcome, BatchAnswer, ImClient, QueryError};
use crate::metrics::Metrics;
use crate::model::{now_millis, CallbackHint, Cause};
use crate::store::{StoreError, SweepCounts, WriteSet};
use futures_util::stream::FuturesUnordered;
use futures_util::StreamExt;
use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// One call's accounts, numbered in the order calls were issued.
#[derive(Debug)]
pub(super) struct Query {
    pub ids: Vec<String>,
    pub number: u64,
    /// For a hinted call, each account's callback, in the order of `ids`.
    pub hints: Option<Vec<CallbackHint>>,
    /// For a hinted call, its slot in the hinted lane of the pacing.
    pub slot: Option<Grant>,
}

impl Query {
    pub fn is_hinted(&self) -> bool {
        self.hints.is_some()
    }
}

/// The newest query applied for each account a re-query was issued for. Calls run
/// concurrently, so an answer can come back after a newer one for the same account (a sweep
/// batch issued before a re-query, or the other way round): the older must not undo the newer.
/// Only contested accounts are tracked, so a sweep of a million accounts adds nothing here.
#[derive(Debug, Default)]
pub(super) struct Applied {
    newest: HashMap<String, u64>,
    /// Accounts with a re-query issued since the sweep began (shared with the sweep's query
    /// source, which issues them from the sweep's query task).
    contested: Arc<Mutex<HashSet<String>>>,
}

impl Applied {
    pub fn is_stale(&self, user_id: &str, query: u64) -> bool {
        self.newest
            .get(user_id)
            .is_some_and(|newest| *newest > query)
    }

    fn record(&mut self, user_id: &str, query: u64) {
        let newest = self.newest.entry(user_id.to_owned()).or_default();
        *newest = (*newest).max(query);
    }

    /// Records a sweep answer's query for the accounts of it that are contested.
    pub fn record_contested<'a>(&mut self, ids: impl Iterator<Item = &'a str>, query: u64) {
        let contested = self.contested.clone();
        let contested = contested.lock().expect("contested");
        if contested.is_empty() {
            return;
        }
        for id in ids.filter(|id| contested.contains(*id)) {
            self.record(id, query);
        }
    }

    /// At a sweep's start no query is out: nothing older can arrive any more.
    pub fn clear(&mut self) {
        self.newest.clear();
        self.contested.lock().expect("contested").clear();
    }
}

/// Issues calls for hinted accounts, in the hinted lane of the pacing. Both the sweep's query
/// task and the idle loop issue them.
#[derive(Debug, Clone)]
pub(super) struct HintedCalls {
    hints: Arc<HintQueue>,
    client: Arc<ImClient>,
    issued: Arc<AtomicU64>,
    metrics: Arc<Metrics>,
    contested: Arc<Mutex<HashSet<String>>>,
}

impl HintedCalls {
    /// Waits until hinted accounts are ready and the hinted lane has a slot for them.
    pub async fn ready(&self) {
        loop {
            self.hints.ready().await;
            match self.client.limiter().next_free(Lane::Hinted) {
                at if at <= Instant::now() => return,
                at => tokio::time::sleep_until(at).await,
            }
        }
    }

    /// A call for the hinted accounts ready now, if any and if the hinted lane has a slot for
    /// it: numbered in issue order, counted, and its accounts marked contested. Hints beyond
    /// the lane's share wait in the queue, where later ones merge into the same call.
    pub fn issue(&self) -> Option<Query> {
        let now = Instant::now();
        if !self.hints.is_ready(now) {
            return None;
        }
        let slot = self.client.limiter().try_acquire(Lane::Hinted).ok()?;
        let taken = self.hints.take(now);
        if taken.is_empty() {
            return None;
        }
        self.metrics.hinted_calls.inc();
        self.metrics.hint_queue_length.set(self.hints.len() as i64);
        let (ids, hints): (Vec<String>, Vec<CallbackHint>) = taken.into_iter().unzip();
        self.contested
            .lock()
            .expect("contested")
            .extend(ids.iter().cloned());
        Some(Query {
            ids,
            number: self.issued.fetch_add(1, Ordering::Relaxed),
            hints: Some(hints),
            slot: Some(slot),
        })
    }
}

/// Why [`Sweeper::idle`] returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Idle {
    /// The time given was reached.
    Deadline,
    /// The interrupting future completed (a reload was asked for).
    Interrupted,
    /// Shutdown.
    Stopped,
}

impl Sweeper {
    /// A sweep's batches, in watch-list order, pulled lazily, one each time a call slot frees.
    /// The schedule picks each call's accounts; a sweep polls as many accounts as are watched
    /// (an account the adaptive schedule polls twice counts twice), and accounts polled twice
    /// are contested, so that an older answer never undoes a newer one.
    pub(super) fn sweep_batches(&self) -> impl Iterator<Item = Query> + Send + 'static {
        let size = self.settings.batch_size.max(1);
        let issued = self.queries_issued.clone();
        let schedule = self.schedule.clone();
        let contested = self.applied.contested.clone();
        let mut left = self.watch.len();
        let mut repeats = Vec::new();
        std::iter::from_fn(move || {
            if left == 0 {
                return None;
            }
            let ids = schedule.lock().expect("schedule").next_call(
                size.min(left),
                now_millis(),
                &mut repeats,
            );
            if ids.is_empty() {
                return None;
            }
            left -= ids.len();
            if !repeats.is_empty() {
                contested
                    .lock()
                    .expect("contested")
                    .extend(repeats.drain(..));
            }
            Some(Query {
                ids,
                number: issued.fetch_add(1, Ordering::Relaxed),
                hints: None,
                slot: None,
            })
        })
    }

    /// What issues hinted calls, when callbacks are on.
    pub(super) fn hinted_calls(&self) -> Option<HintedCalls> {
        Some(HintedCalls {
            hints: self.hints.clone()?,
            client: self.client.clone(),
            issued: self.queries_issued.clone(),
            metrics: self.metrics.clone(),
            contested: self.applied.contested.clone(),
        })
    }

    /// Notes a hinted call's answer into `group` with the callback as its cause.
    pub(super) fn apply_hinted(
        &mut self,
        query: &Query,
        result: Result<BatchAnswer, QueryError>,
        sweep_id: i64,
        group: &mut WriteSet,
    ) {
        self.metrics
            .hinted_accounts_per_call
            .observe(query.ids.len() as f64);
        let answer = match result {
            Ok(answer) => answer,
            Err(e) => {
                // The next sweep asks again.
                tracing::debug!(error = %e, accounts = query.ids.len(), "a hinted call yielded nothing");
                return;
            }
        };
        let hints: HashMap<&str, &CallbackHint> = query
            .ids
            .iter()
            .map(String::as_str)
            .zip(query.hints.iter().flatten())
            .collect();
        let observed_at = now_millis();
        let mut counts = SweepCounts::default();
        for (user_id, outcome) in &answer.outcomes {
            if self.applied.is_stale(user_id, query.number) {
                self.metrics.stale_answers.inc();
                continue;
            }
            let Some(hint) = hints.get(user_id.as_str()) else {
                continue;
            };
            if matches!(outcome, AccountOutcome::Failed(_)) {
                continue;
            }
            self.applied.record(user_id, query.number);
            if matches!(outcome, AccountOutcome::Observed(_)) {
                let latency = observed_at.saturating_sub(hint.event_time).max(0) as f64 / 1000.0;
                self.metrics.callback_detection.observe(latency);
            }
            let cause = Cause::Callback(Box::new((*hint).clone()));
            self.note(
                user_id,
                outcome,
                observed_at,
                sweep_id,
                &cause,
                group,
                &mut counts,
            );
        }
        self.metrics.accounts_observed.inc_by(counts.observed);
    }

    /// Between sweeps: re-queries hinted accounts as they become ready, committing each answer,
    /// until `until`, shutdown, or `interrupt` completes. `interrupt` is only listened to while
    /// no call is out, so that an answer is never dropped between its diff and its commit.
    pub async fn idle(
        &mut self,
        until: Instant,
        shutdown: &CancellationToken,
        interrupt: impl Future<Output = ()>,
    ) -> Result<Idle, StoreError> {
        tokio::pin!(interrupt);
        let hinted = self.hinted_calls().filter(|_| self.last_sweep_id.is_some());
        let Some(hinted) = hinted else {
            return Ok(tokio::select! {
                _ = tokio::time::sleep_until(until) => Idle::Deadline,
                _ = shutdown.cancelled() => Idle::Stopped,
                _ = &mut interrupt => Idle::Interrupted,
            });
        };
        let sweep_id = self.last_sweep_id.expect("filtered");
        let max_in_flight = self.settings.max_in_flight.max(1);
        let mut calls = FuturesUnordered::new();
        let mut ended = None;
        loop {
            self.progress.store(now_millis(), Ordering::Relaxed);
            if ended.is_none() {
                while calls.len() < max_in_flight {
                    let Some(query) = hinted.issue() else {
                        break;
                    };
                    let client = self.client.clone();
                    calls.push(async move {
                        let result = client
                            .query_hinted(&query.ids, query.slot.expect("hinted"))
                            .await;
                        (query, result)
                    });
                }
            }
            if calls.is_empty() {
                if let Some(why) = ended {
                    return Ok(why);
                }
                tokio::select! {
                    _ = hinted.ready() => continue,
                    _ = tokio::time::sleep_until(until) => return Ok(Idle::Deadline),
                    _ = shutdown.cancelled() => return Ok(Idle::Stopped),
                    _ = &mut interrupt => return Ok(Idle::Interrupted),
                }
            }
            let room = ended.is_none() && calls.len() < max_in_flight;
            let done = tokio::select! {
                done = calls.next() => done,
                _ = hinted.ready(), if room => continue,
                _ = tokio::time::sleep_until(until), if ended.is_none() => {
                    ended = Some(Idle::Deadline);
                    continue;
                }
                _ = shutdown.cancelled(), if ended != Some(Idle::Stopped) => {
                    ended = Some(Idle::Stopped);
                    continue;
                }
                // Calls still out at shutdown get the sweep's grace, then are abandoned
                // (nothing was written for them).
                _ = tokio::time::sleep(IN_FLIGHT_GRACE), if ended == Some(Idle::Stopped) => {
                    return Ok(Idle::Stopped);
                }
            };
            if let Some((query, result)) = done {
                let mut group = WriteSet::default();
                self.apply_hinted(&query, result, sweep_id, &mut group);
                self.commit(group).await?;
            }
        }
    }
}
