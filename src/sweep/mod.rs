//! One sweep: the watch list in batches through the IM client, each answer diffed against the
//! snapshot, and the results written in transactions of a few batches each.

pub mod config;
mod hinted;
pub(crate) mod snapshot;

pub use hinted::Idle;
use hinted::{Applied, HintedCalls, Query};

use crate::callback::HintQueue;
use crate::im::{AccountOutcome, BatchAnswer, ImClient, QueryError};
use crate::metrics::{Metrics, TransitionLabels};
use crate::model::{now_millis, Cause};
use crate::schedule::{Adaptive, Schedule, ScheduleKind, Settings as ScheduleSettings};
use crate::store::{Store, StoreError, SweepCounts, WriteSet};
use futures_util::stream::FuturesUnordered;
use futures_util::StreamExt;
pub use snapshot::{Decision, Snapshot};
use std::collections::HashSet;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::{mpsc, Notify};
use tokio_util::sync::CancellationToken;

/// Why a sweep stopped early.
#[derive(Debug, thiserror::Error)]
pub enum SweepError {
    /// The database.
    #[error("store: {0}")]
    Store(#[from] StoreError),
    /// IM rejected the configuration.
    #[error("IM {0}")]
    Configuration(QueryError),
}

/// How a sweep queries and commits.
#[derive(Debug, Clone)]
pub struct SweepSettings {
    /// Accounts per call.
    pub batch_size: usize,
    /// Calls outstanding at once.
    pub max_in_flight: usize,
    /// Batches committed in one transaction.
    pub batches_per_transaction: usize,
    /// Whether a per-platform change alone is a transition.
    pub platform_changes_are_transitions: bool,
}

/// How a sweep ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SweepOutcome {
    /// Every account was asked about.
    Completed,
    /// Shutdown was asked for: no new batches went out, what had come back is recorded.
    Stopped,
}

/// What a sweep did.
#[derive(Debug, Clone)]
pub struct SweepReport {
    /// Its id in the `sweeps` table.
    pub sweep_id: i64,
    /// Its counts.
    pub counts: SweepCounts,
    /// How it ended.
    pub outcome: SweepOutcome,
    /// When it started (ms).
    pub started_at: i64,
    /// When it ended (ms).
    pub finished_at: i64,
    /// Why the first failed batch yielded nothing (an HTTP status, an IM error code, ...).
    pub first_failure: Option<String>,
}

impl SweepReport {
    /// A sweep that asked for accounts and learnt nothing about any of them (a wrong base_url,
    /// a proxy refusing us): a failed sweep, however orderly its calls.
    pub fn observed_nothing(&self) -> bool {
        let c = &self.counts;
        self.outcome == SweepOutcome::Completed
            && c.asked > 0
            && c.observed == 0
            && c.not_found == 0
    }
}

/// Owns the snapshot; runs sweeps one at a time.
#[derive(Debug)]
pub struct Sweeper {
    client: Arc<ImClient>,
    store: Store,
    snapshot: Snapshot,
    settings: SweepSettings,
    metrics: Arc<Metrics>,
    watch: Arc<Vec<String>>,
    /// Unix ms of the last answer or commit: the watchdog's sign of life.
    progress: Arc<AtomicI64>,
    /// Poked after every commit so the publisher sends new events right away.
    committed: Option<Arc<Notify>>,
    /// Accounts IM's callbacks hinted at, re-queried ahead of sweep batches.
    hints: Option<Arc<HintQueue>>,
    /// The sweep running or last started: hinted observations are recorded under it.
    last_sweep_id: Option<i64>,
    /// Numbers every query in the order it was issued.
    queries_issued: Arc<AtomicU64>,
    /// Re-queried accounts and the newest query applied for each: an older answer (a sweep's
    /// batch issued before the re-query) is stale and skipped.
    applied: Applied,
    /// Which accounts go in the next call (shared with the sweep's query task).
    schedule: Arc<Mutex<Schedule>>,
    /// When the adaptive schedule's estimates were last saved (Unix ms).
    estimates_saved_at: i64,
    /// Sweeps started since the daemon started.
    sweeps_started: u64,
}

/// How often the adaptive schedule's estimates are saved while it runs (and at a clean stop):
/// they are soft state, and a crash loses at most this much learning.
const SAVE_ESTIMATES_EVERY_MS: i64 = 300_000;
/// Estimates saved per store job, so that other work interleaves.
const SAVE_CHUNK: usize = 20_000;

impl Sweeper {
    /// Loads the snapshot from the store and closes sweeps a crash left open.
    pub async fn new(
        client: Arc<ImClient>,
        store: Store,
        settings: SweepSettings,
        metrics: Arc<Metrics>,
    ) -> Result<Self, StoreError> {
        let snapshot = store
            .call(|db| {
                db.close_interrupted_sweeps()?;
                // Commits a crash left unfolded: the snapshot is read from current state.
                db.fold_all()?;
                let mut snapshot = Snapshot::with_capacity(db.current_count()?);
                db.for_each_current(|row| snapshot.insert_row(row))?;
                Ok(snapshot)
            })
            .await?;
        Ok(Sweeper {
            snapshot,
            client,
            store,
            settings,
            metrics,
            watch: Arc::new(Vec::new()),
            progress: Arc::new(AtomicI64::new(now_millis())),
            committed: None,
            hints: None,
            last_sweep_id: None,
            queries_issued: Arc::new(AtomicU64::new(0)),
            applied: Applied::default(),
            schedule: Arc::new(Mutex::new(Schedule::round_robin(Arc::default()))),
            estimates_saved_at: now_millis(),
            sweeps_started: 0,
        })
    }

    fn schedule(&self) -> std::sync::MutexGuard<'_, Schedule> {
        self.schedule.lock().expect("schedule")
    }

    /// Before a sweep polls anything: the longest any account has gone unobserved. Round-robin
    /// reads the snapshot, whose times are only those of changes until a first sweep since the
    /// start has touched every account; the adaptive schedule keeps every observation's time.
    fn record_staleness(&mut self, now: i64) {
        let age = match &*self.schedule() {
            Schedule::Adaptive(a) => Some(a.oldest_observation_age(now)),
            Schedule::RoundRobin(_) if self.sweeps_started == 0 => None,
            Schedule::RoundRobin(_) => self
                .snapshot
                .oldest_observation()
                .map(|oldest| (now - oldest).max(0) as f64 / 1000.0),
        };
        self.sweeps_started += 1;
        if let Some(age) = age {
            self.metrics.oldest_observation_age.set(age);
        }
    }

    /// How far apart a sweep's calls start, if the schedule spreads them over the interval.
    fn call_spacing(&self) -> Option<std::time::Duration> {
        let calls = self.watch.len().div_ceil(self.settings.batch_size.max(1));
        self.schedule().call_spacing(calls)
    }

    /// Polls by `kind` from now on (between sweeps). The adaptive schedule starts from the
    /// estimates saved in the store; leaving it saves them.
    pub async fn set_schedule(
        &mut self,
        kind: ScheduleKind,
        settings: ScheduleSettings,
    ) -> Result<(), StoreError> {
        self.save_estimates().await?;
        // Round-robin keeps no bound of its own: its sweeps are the bound.
        self.metrics.max_staleness.set(match kind {
            ScheduleKind::Adaptive => settings.max_staleness_secs,
            ScheduleKind::RoundRobin => f64::INFINITY,
        });
        let next = match kind {
            ScheduleKind::RoundRobin => Schedule::round_robin(self.watch.clone()),
            ScheduleKind::Adaptive => {
                let saved = self.store.call(|db| db.load_estimates()).await?;
                tracing::info!(
                    "adaptive schedule: {} estimates loaded, the other watched accounts start from the prior",
                    saved.len()
                );
                Schedule::Adaptive(Box::new(Adaptive::new(
                    self.watch.clone(),
                    settings,
                    now_millis(),
                    saved,
                )))
            }
        };
        *self.schedule() = next;
        Ok(())
    }

    /// Saves what the adaptive schedule learned since its last save; returns how many accounts.
    pub async fn save_estimates(&mut self) -> Result<usize, StoreError> {
        let now = now_millis();
        let (rows, mark) = match &*self.schedule() {
            Schedule::Adaptive(a) => a.unsaved(now),
            Schedule::RoundRobin(_) => return Ok(0),
        };
        self.estimates_saved_at = now;
        let saved = rows.len();
        let mut rows = rows.into_iter().peekable();
        while rows.peek().is_some() {
            let chunk: Vec<_> = rows.by_ref().take(SAVE_CHUNK).collect();
            self.store.call(move |db| db.save_estimates(&chunk)).await?;
            self.progress.store(now_millis(), Ordering::Relaxed);
        }
        // Only what was written counts as saved (the schedule may have been replaced since).
        if let Schedule::Adaptive(a) = &mut *self.schedule() {
            a.saved(mark);
        }
        Ok(saved)
    }

    /// Pokes `notify` after every commit that added events (the publisher's wake).
    pub fn notify_commits(&mut self, notify: Arc<Notify>) {
        self.committed = Some(notify);
    }

    /// Re-queries the accounts `hints` receives, with `share` of the call rate: ahead of sweep
    /// batches during a sweep, and between sweeps in [`Sweeper::idle`].
    pub fn take_hints(&mut self, hints: Arc<HintQueue>, share: f64) {
        self.client.limiter().set_hinted_share(share);
        hints.set_watch_list(self.watch.clone());
        self.hints = Some(hints);
    }

    /// The time of the last progress, for the watchdog.
    pub fn progress(&self) -> Arc<AtomicI64> {
        self.progress.clone()
    }

    /// The last known state of every account.
    pub fn snapshot(&self) -> &Snapshot {
        &self.snapshot
    }

    /// The accounts swept, sorted.
    pub fn watch_list(&self) -> &[String] {
        &self.watch
    }

    /// Replaces the watch list. Accounts that left it are forgotten (their events stop), in the
    /// store first and then in memory. Returns how many were removed.
    pub async fn set_watch_list(&mut self, ids: Vec<String>) -> Result<usize, StoreError> {
        let removed: Vec<String> = {
            let set: HashSet<&str> = ids.iter().map(String::as_str).collect();
            self.snapshot
                .known_outside(&set)
                .map(str::to_owned)
                .collect()
        };
        if !removed.is_empty() {
            let ids_for_store = removed.clone();
            self.store.call(move |db| db.forget(&ids_for_store)).await?;
            for id in &removed {
                self.snapshot.forget(id);
            }
        }
        self.metrics.watched_accounts.set(ids.len() as i64);
        self.watch = Arc::new(ids);
        self.schedule
            .lock()
            .expect("schedule")
            .set_watch_list(self.watch.clone(), now_millis());
        if let Some(hints) = &self.hints {
            hints.set_watch_list(self.watch.clone());
        }
        Ok(removed.len())
    }

    /// Runs one sweep over the current watch list.
    pub async fn sweep(&mut self, shutdown: &CancellationToken) -> Result<SweepReport, SweepError> {
        let started_at = now_millis();
        self.record_staleness(started_at);
        let asked = self.watch.len() as u64;
        let sweep_id = self
            .store
            .call(move |db| db.begin_sweep(started_at, asked))
            .await?;
        self.last_sweep_id = Some(sweep_id);
        // No query from before this sweep is still out: none of them can be outrun any more.
        self.applied.clear();
        self.schedule().begin_sweep(started_at);
        let mut counts = SweepCounts {
            asked,
            ..Default::default()
        };

        // Queries run in their own task so that in-flight calls keep going while a group of
        // answers is being committed.
        let stop_queries = shutdown.child_token();
        let (answers_tx, mut answers_rx) = mpsc::channel::<(Query, Result<BatchAnswer, QueryError>)>(
            self.settings.max_in_flight.max(1) * 2,
        );
        // A sweep that ends early (a commit failed) stops its calls with it.
        let mut producer = QueryTask {
            handle: Some(tokio::spawn(run_queries(
                self.client.clone(),
                self.sweep_batches(),
                self.call_spacing(),
                self.progress.clone(),
                self.hinted_calls(),
                self.settings.max_in_flight,
                stop_queries.clone(),
                answers_tx,
            ))),
            stop: stop_queries.clone(),
        };

        let mut group = WriteSet::default();
        // Accounts with a decision waiting in `group`: an account the schedule polls twice in
        // one sweep must have its first decision committed before the second is made.
        let mut pending: HashSet<String> = HashSet::new();
        let mut group_batches = 0;
        let mut fatal = None;
        let mut first_failure: Option<String> = None;
        while let Some((query, result)) = answers_rx.recv().await {
            self.progress.store(now_millis(), Ordering::Relaxed);
            if query.is_hinted() {
                // The group first: the snapshot a hinted answer is diffed against must include
                // every decision already made (an account's first observation may wait there).
                // Then the hinted change, committed at once rather than with a later group.
                self.commit(std::mem::take(&mut group)).await?;
                group_batches = 0;
                pending.clear();
                let mut hinted = WriteSet::default();
                self.apply_hinted(&query, result, sweep_id, &mut hinted);
                self.commit(hinted).await?;
                continue;
            }
            let ids = query.ids;
            match result {
                Ok(answer) => {
                    let observed_at = now_millis();
                    for (user_id, outcome) in &answer.outcomes {
                        if self.applied.is_stale(user_id, query.number) {
                            self.metrics.stale_answers.inc();
                            counts.observed +=
                                u64::from(matches!(outcome, AccountOutcome::Observed(_)));
                            continue;
                        }
                        if pending.contains(user_id) {
                            self.commit(std::mem::take(&mut group)).await?;
                            group_batches = 0;
                            pending.clear();
                        }
                        let decided = group.transitions.len() + group.not_found.len();
                        self.note(
                            user_id,
                            outcome,
                            observed_at,
                            sweep_id,
                            &Cause::Sweep,
                            &mut group,
                            &mut counts,
                        );
                        if group.transitions.len() + group.not_found.len() > decided {
                            pending.insert(user_id.clone());
                        }
                    }
                    // A failure says nothing newer than an older answer's observation.
                    let ids = answer
                        .outcomes
                        .iter()
                        .filter(|(_, o)| !matches!(o, AccountOutcome::Failed(_)))
                        .map(|(id, _)| id.as_str());
                    self.applied.record_contested(ids, query.number);
                }
                Err(QueryError::Configuration { code, message }) => {
                    counts.failed += ids.len() as u64;
                    stop_queries.cancel();
                    fatal.get_or_insert(QueryError::Configuration { code, message });
                }
                Err(e) => {
                    counts.failed += ids.len() as u64;
                    tracing::debug!(error = %e, accounts = ids.len(), "batch yielded no observations");
                    let now = now_millis();
                    let mut schedule = self.schedule();
                    for id in &ids {
                        schedule.failed(id, now);
                    }
                    first_failure.get_or_insert_with(|| e.to_string());
                }
            }
            group_batches += 1;
            if group_batches >= self.settings.batches_per_transaction {
                self.commit(std::mem::take(&mut group)).await?;
                group_batches = 0;
                pending.clear();
            }
        }
        self.commit(group).await?;
        if let Some(handle) = producer.handle.take() {
            let _ = handle.await;
        }

        self.metrics.accounts_observed.inc_by(counts.observed);
        self.metrics.accounts_failed.inc_by(counts.failed);
        self.metrics.accounts_not_found.set(counts.not_found as i64);
        let outcome = if shutdown.is_cancelled() || fatal.is_some() {
            SweepOutcome::Stopped
        } else {
            SweepOutcome::Completed
        };
        let finished_at = now_millis();
        // Accounts never answered because shutdown stopped the sweep count as failed too.
        let answered = counts.observed + counts.failed + counts.not_found;
        if outcome == SweepOutcome::Stopped && answered < asked {
            counts.failed += asked - answered;
        }
        // The sweeps table keeps "completed" for a sweep that observed nothing (its counts say
        // so); the metrics and the log call it failed.
        let label = match outcome {
            SweepOutcome::Completed => "completed",
            SweepOutcome::Stopped => "stopped",
        };
        self.store
            .call(move |db| db.finish_sweep(sweep_id, finished_at, counts, label))
            .await?;
        // Current state and the per-account history index follow the sweep's commits, one
        // chunk per store job so that the publisher's work interleaves.
        while self
            .store
            .call(|db| db.fold(crate::store::FOLD_CHUNK))
            .await?
            > 0
        {
            self.progress.store(now_millis(), Ordering::Relaxed);
        }
        if now_millis() - self.estimates_saved_at >= SAVE_ESTIMATES_EVERY_MS {
            // Soft state: a failed save is tried again at the next sweep's end.
            if let Err(e) = self.save_estimates().await {
                tracing::warn!(error = %e, "the adaptive schedule's estimates were not saved");
            }
        }
        if let Some(e) = fatal {
            return Err(SweepError::Configuration(e));
        }
        Ok(SweepReport {
            sweep_id,
            counts,
            outcome,
            started_at,
            finished_at,
            first_failure,
        })
    }

    #[allow(clippy::too_many_arguments)]
    fn note(
        &mut self,
        user_id: &str,
        outcome: &AccountOutcome,
        observed_at: i64,
        sweep_id: i64,
        cause: &Cause,
        group: &mut WriteSet,
        counts: &mut SweepCounts,
    ) {
        match outcome {
            AccountOutcome::Observed(_) => counts.observed += 1,
            AccountOutcome::NotFound => counts.not_found += 1,
            AccountOutcome::Failed(why) => {
                counts.failed += 1;
                tracing::debug!(account = user_id, reason = %why, "no observation for account");
            }
        }
        let decision = self.snapshot.decide(
            user_id,
            outcome,
            observed_at,
            sweep_id,
            self.settings.platform_changes_are_transitions,
        );
        let changed = !matches!(decision, Decision::Unchanged | Decision::Nothing);
        match outcome {
            AccountOutcome::Failed(_) => self.schedule().failed(user_id, observed_at),
            _ => {
                let counts = !matches!(cause, Cause::Callback(_));
                let observed = self
                    .schedule()
                    .observed(user_id, changed, observed_at, counts);
                if let Some(interval) = observed {
                    self.metrics.poll_interval.observe(interval);
                }
            }
        }
        match decision {
            Decision::Transition(mut t) => {
                counts.transitions += 1;
                t.cause = cause.clone();
                group.transitions.push(t);
            }
            Decision::NewlyNotFound => group
                .not_found
                .push((user_id.to_owned(), Some(observed_at))),
            Decision::FoundAgain => group.not_found.push((user_id.to_owned(), None)),
            Decision::Unchanged => self.snapshot.touch(user_id, observed_at),
            Decision::Nothing => {}
        }
    }

    /// Writes a group; only once it is durable does the snapshot move on. If the write fails the
    /// snapshot keeps the old state, so the next sweep detects the same transitions again.
    async fn commit(&mut self, group: WriteSet) -> Result<(), StoreError> {
        if group.transitions.is_empty() && group.not_found.is_empty() {
            return Ok(());
        }
        let group = self
            .store
            .call(move |db| db.apply(&group).map(|()| group))
            .await?;
        for t in &group.transitions {
            self.snapshot.commit_transition(t);
            self.metrics
                .transitions
                .get_or_create(&TransitionLabels {
                    from: t.from.map_or("none", |s| s.as_str()).to_owned(),
                    to: t.to.as_str().to_owned(),
                })
                .inc();
        }
        for (user_id, since) in &group.not_found {
            self.snapshot.set_not_found(user_id, since.is_some());
        }
        // New events are in the outbox: the publisher sends them now rather than at its next
        // tick or at the end of the sweep.
        if let (Some(committed), false) = (&self.committed, group.transitions.is_empty()) {
            committed.notify_one();
        }
        Ok(())
    }
}

/// The sweep's query task: stopped and aborted if the sweep is dropped before it finished.
struct QueryTask {
    handle: Option<tokio::task::JoinHandle<()>>,
    stop: CancellationToken,
}

impl Drop for QueryTask {
    fn drop(&mut self) {
        if let Some(handle) = self.handle.take() {
            self.stop.cancel();
            handle.abort();
        }
    }
}

/// Runs a sweep's batches, `max_in_flight` at a time, and beside them the hinted calls that
/// become ready (each in its own lane of the pacing), until the batches are done.
/// Sleeps until `until` or a stop, telling the watchdog every few seconds that the sweep is
/// alive (spaced calls of a long interval are minutes apart).
async fn wait_feeding_watchdog(
    until: tokio::time::Instant,
    stop: &CancellationToken,
    progress: &AtomicI64,
) {
    loop {
        let step = until.min(tokio::time::Instant::now() + std::time::Duration::from_secs(5));
        tokio::select! {
            _ = tokio::time::sleep_until(step) => {}
            _ = stop.cancelled() => return,
        }
        progress.store(now_millis(), Ordering::Relaxed);
        if step >= until {
            return;
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn run_queries(
    client: Arc<ImClient>,
    batches: impl Iterator<Item = Query> + Send + 'static,
    spacing: Option<std::time::Duration>,
    progress: Arc<AtomicI64>,
    hinted: Option<HintedCalls>,
    max_in_flight: usize,
    stop: CancellationToken,
    answers: mpsc::Sender<(Query, Result<BatchAnswer, QueryError>)>,
) {
    let call = |query: Query| {
        let client = client.clone();
        async move {
            let result = match query.slot {
                Some(slot) => client.query_hinted(&query.ids, slot).await,
                None => client.query(&query.ids).await,
            };
            (query, result)
        }
    };
    let stop_for_filter = stop.clone();
    // Spaced calls start no sooner than their place in the sweep (the pacing still applies).
    // A call's accounts are picked (and its query numbered) only when it is to go out, so
    // that a hinted call issued meanwhile is numbered before it.
    let started = tokio::time::Instant::now();
    let stop_spacing = stop.clone();
    let mut sweep = futures_util::stream::unfold((batches, 0u32), move |(mut batches, k)| {
        let (stop, progress) = (stop_spacing.clone(), progress.clone());
        async move {
            if let Some(spacing) = spacing {
                wait_feeding_watchdog(started + spacing * k, &stop, &progress).await;
            }
            batches.next().map(|query| (query, (batches, k + 1)))
        }
    })
    .take_while(move |_| std::future::ready(!stop_for_filter.is_cancelled()))
    .map(call)
    .buffer_unordered(max_in_flight.max(1))
    .boxed();
    let mut hinted_calls = FuturesUnordered::new();
    let mut batches_done = false;
    // After a stop, calls already in flight get a grace period to come back (a retrying batch
    // could otherwise hold shutdown for its whole backoff); then they are abandoned, which
    // writes nothing for their accounts.
    let grace = async {
        stop.cancelled().await;
        tokio::time::sleep(IN_FLIGHT_GRACE).await;
    };
    tokio::pin!(grace);
    let ready_hinted = || async {
        match &hinted {
            Some(h) => h.ready().await,
            None => std::future::pending().await,
        }
    };
    loop {
        if batches_done && hinted_calls.is_empty() {
            return;
        }
        let room = !batches_done && !stop.is_cancelled() && hinted_calls.len() < max_in_flight;
        let item = tokio::select! {
            item = sweep.next(), if !batches_done => match item {
                Some(item) => item,
                None => {
                    batches_done = true;
                    continue;
                }
            },
            Some(item) = hinted_calls.next() => item,
            _ = ready_hinted(), if room => {
                if let Some(query) = hinted.as_ref().and_then(HintedCalls::issue) {
                    hinted_calls.push(call(query));
                }
                continue;
            }
            _ = &mut grace => {
                tracing::info!("abandoning IM calls still in flight at shutdown");
                return;
            }
        };
        if answers.send(item).await.is_err() {
            return;
        }
    }
}

/// How long calls in flight may still come back after shutdown was asked for.
pub(crate) const IN_FLIGHT_GRACE: std::time::Duration = std::time::Duration::from_secs(5);
