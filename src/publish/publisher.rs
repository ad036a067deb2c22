//! The publisher: drains the outbox into a sink, batch after batch, keeping a few batches in
//! flight, and moves the publish mark only past what was acknowledged in order.

mod recovery;

use super::config::SinkConfig;
use super::kafka::health::BrokerHealth;
use super::settle::published_through;
use super::sink::{encode_batch, Batch, EncodeBatch, Sink};
use super::DeliveryError;
use crate::metrics::Metrics;
use crate::model::now_millis;
use crate::store::{OutboxEvent, Store, StoreError, Submitted};
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{watch, Notify};
use tokio_util::sync::CancellationToken;

type Encoded<S> = <<S as Sink>::Encoder as EncodeBatch>::Encoded;

/// Drains the outbox into one sink.
#[derive(Debug)]
pub struct Publisher<S: Sink> {
    store: Store,
    sink: S,
    batch_size: usize,
    /// The batch size in force: halved after a batch timed out (in exactly-once mode a batch is
    /// a transaction, and one that cannot be sent within the transaction timeout would time out
    /// again and again). It stays there until [`REGROW_AFTER`] full batches in a row went
    /// through, then doubles (toward `batch_size`), so it cannot swing back to the size that
    /// failed at once.
    limit: usize,
    /// Full batches delivered in a row at the current limit.
    full_in_a_row: u32,
    tuning: SinkConfig,
    metrics: Arc<Metrics>,
    /// Poked by the sweeper after each commit so new events go out without waiting for a tick.
    wake: Arc<Notify>,
    /// Batches handed to the sink whose acknowledgements are still awaited, oldest first, so
    /// that the broker always has work while this task reads, sends and settles.
    inflight: VecDeque<(Vec<OutboxEvent>, S::Pending)>,
    /// The batch after the one last started, being read and encoded on the store thread while
    /// this task sends and settles: (the id it reads after, the read).
    prefetch: Option<(i64, Submitted<Batch<Encoded<S>>>)>,
    /// The publish mark of the last acknowledged batch, being written on the store thread while
    /// this task goes on; collected before the next one is queued.
    marking: Option<Submitted<()>>,
    /// When the backlog metrics were last refreshed.
    backlog_counted: Option<Instant>,
    /// The Kafka producer's view of its brokers; a delivery after an outage is logged.
    broker_health: Option<Arc<BrokerHealth>>,
    /// New Kafka settings from a reload (SIGHUP), applied by re-creating the producer.
    reconfigure: Option<watch::Receiver<S::Settings>>,
}

/// What a round did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Drained {
    /// Events went out; there may be more.
    Some,
    /// Nothing was waiting.
    Empty,
    /// A delivery failed and may succeed if tried again.
    Failed,
    /// The sink rejected an event for good (see [`DeliveryError::is_final`]); trying again
    /// needs an operator first.
    Rejected,
    /// Another daemon took over the topic (exactly-once mode): this publisher stops for good.
    Fenced,
    /// The topic holds events of this app that this database did not publish, or not as this
    /// database has them (exactly-once mode): nothing is sent until an operator decides.
    Held,
}

/// Full batches in a row after which a halved batch size doubles again.
const REGROW_AFTER: u32 = 100;

/// How often a held publisher reads the topic back again.
const HELD_RETRY: Duration = Duration::from_secs(10);
/// How long publishing pauses when the database had no room to mark what was sent.
const FULL_RETRY: Duration = Duration::from_secs(10);

/// What ended a wait of the run loop.
enum Next<T> {
    /// A round finished.
    Round(Result<Drained, StoreError>),
    /// A stop: the round in progress finished in time (`Some`) or was cut short.
    Stop(Option<Result<Drained, StoreError>>),
    /// New sink settings.
    Settings(T),
}

/// The next sink settings a reload sends; pending forever without a channel or a sender.
async fn next_settings<T: Clone>(rx: &mut Option<watch::Receiver<T>>) -> T {
    if let Some(rx) = rx {
        if rx.changed().await.is_ok() {
            return rx.borrow_and_update().clone();
        }
    }
    std::future::pending().await
}

impl<S: Sink> Publisher<S> {
    /// A publisher of `store`'s outbox into `sink`, reading `batch_size` events per batch.
    pub fn new(
        store: Store,
        sink: S,
        batch_size: usize,
        metrics: Arc<Metrics>,
        wake: Arc<Notify>,
    ) -> Self {
        Publisher {
            broker_health: sink.broker_health(),
            reconfigure: None,
            store,
            sink,
            batch_size,
            limit: batch_size,
            full_in_a_row: 0,
            tuning: SinkConfig::default(),
            metrics,
            wake,
            inflight: VecDeque::new(),
            prefetch: None,
            marking: None,
            backlog_counted: None,
        }
    }

    /// Waits and retry limits other than the defaults.
    pub fn with_tuning(mut self, tuning: SinkConfig) -> Self {
        self.tuning = tuning;
        self
    }

    /// Reconfigures the sink (re-creates a Kafka producer) with the settings a reload sends
    /// on `settings`.
    pub fn reconfigure_with(mut self, settings: watch::Receiver<S::Settings>) -> Self {
        self.reconfigure = Some(settings);
        self
    }

    /// Applies reloaded Kafka settings between rounds: what was in flight is forgotten (it is
    /// still in the outbox) and the next round starts again from the mark with the new producer.
    fn apply_settings(&mut self, settings: &S::Settings) {
        // The new producer is made first: rejected settings leave the round as it was.
        match self.sink.reconfigure(settings) {
            Ok(()) => {
                self.inflight.clear();
                self.prefetch = None;
                tracing::info!("Kafka settings reloaded; unacknowledged events are sent again")
            }
            Err(e) => {
                tracing::error!(error = %e, "Kafka settings not reloaded; keeping the running producer")
            }
        }
    }

    /// Queues the read and encoding of the batch after `after` on the store thread. With a state
    /// topic, the read stops at a pending tombstone's barrier; it is read in the same closure so
    /// that a removal committed after it bounds nothing this read returned.
    async fn read_batch(&self, after: i64) -> Result<Submitted<Batch<Encoded<S>>>, StoreError> {
        let limit = self.limit;
        let encoder = self.sink.encoder();
        let with_state = self.sink.has_state_topic();
        self.store
            .submit(move |db| {
                let upto = match with_state {
                    true => db.tombstone_barrier()?.unwrap_or(i64::MAX),
                    false => i64::MAX,
                };
                Ok(encode_batch(
                    &encoder,
                    db.outbox_batch_upto(after, upto, limit)?,
                ))
            })
            .await
    }

    /// The batch after `after`: the prefetched one when it was read from there, else read now.
    async fn next_batch(&mut self, after: i64) -> Result<Batch<Encoded<S>>, StoreError> {
        let read = match self.prefetch.take() {
            Some((from, read)) if from == after => read,
            _ => self.read_batch(after).await?,
        };
        read.result().await
    }

    /// Waits for the last queued publish mark, so its errors surface.
    async fn marked(&mut self) -> Result<(), StoreError> {
        if let Some(mark) = self.marking.take() {
            mark.result().await?;
        }
        Ok(())
    }

    /// Publishes until `shutdown`, then flushes within `flush_timeout`. Whatever was not
    /// acknowledged stays in the outbox for the next start.
    pub async fn run(
        mut self,
        shutdown: CancellationToken,
        flush_timeout: Duration,
    ) -> Result<(), StoreError> {
        let mut failures = 0u32;
        let mut interrupted = false;
        let mut fenced = false;
        let mut reconfigure = self.reconfigure.take();
        let mut deadline = None;
        let interruptible = self.sink.rounds_interruptible();
        // The part of the flush timeout kept at a stop to end what a round left open (an open
        // transaction is aborted).
        let reserve = (flush_timeout / 4).min(Duration::from_secs(5));
        loop {
            // A round may wait long for acknowledgements (messages do not time out while the
            // brokers are down or refuse us), so new settings do not wait for it, and a stop
            // waits for it only up to the flush timeout: a round cut short may have written a
            // batch it did not mark, which the last drain would then send a second time.
            let next = {
                let round = self.drain_once();
                tokio::pin!(round);
                tokio::select! {
                    round = &mut round => Next::Round(round),
                    _ = shutdown.cancelled() => {
                        let until = tokio::time::Instant::now() + flush_timeout;
                        deadline = Some(until);
                        Next::Stop(tokio::time::timeout_at(until - reserve, &mut round).await.ok())
                    }
                    settings = next_settings(&mut reconfigure), if interruptible => Next::Settings(settings),
                }
            };
            let round = match next {
                Next::Round(Err(e)) if e.is_full() => {
                    self.wait_for_room(&e, &shutdown).await;
                    continue;
                }
                Next::Round(round) => round?,
                Next::Stop(finished) => {
                    match finished {
                        Some(round) => {
                            round?;
                        }
                        None => interrupted = true,
                    }
                    break;
                }
                Next::Settings(settings) => {
                    self.apply_settings(&settings);
                    continue;
                }
            };
            // Settings that arrived during a round that could not be cut short apply now,
            // between rounds (a draining backlog has no wait to apply them in).
            if let Some(settings) = reconfigure
                .as_mut()
                .filter(|rx| rx.has_changed().unwrap_or(false))
                .map(|rx| rx.borrow_and_update().clone())
            {
                self.apply_settings(&settings);
            }
            let wait = match round {
                Drained::Some => {
                    failures = 0;
                    None
                }
                Drained::Empty => {
                    failures = 0;
                    Some(self.tuning.idle_poll())
                }
                Drained::Failed => {
                    failures += 1;
                    Some(self.tuning.retry_backoff(failures))
                }
                Drained::Rejected => Some(self.tuning.rejected_retry()),
                // Read back again in a while: `presenced kafka adopt` may have run meanwhile.
                Drained::Held => Some(HELD_RETRY),
                Drained::Fenced => {
                    // Never write again; what is unsent stays in the outbox of this database.
                    shutdown.cancelled().await;
                    fenced = true;
                    break;
                }
            };
            if let Some(wait) = wait {
                tokio::select! {
                    _ = self.wake.notified(), if round == Drained::Empty => {}
                    _ = tokio::time::sleep(wait) => {}
                    _ = shutdown.cancelled() => {}
                    settings = next_settings(&mut reconfigure) => self.apply_settings(&settings),
                }
            }
            if shutdown.is_cancelled() {
                break;
            }
        }
        if fenced {
            // What the producer that was not fenced yet left open is aborted.
            self.sink.flush(flush_timeout).await;
            self.refresh_backlog(true).await?;
            return Ok(());
        }
        if interrupted {
            // The interrupted round may have taken a batch out of the window without settling
            // it; settling the later ones would move the mark past it. Start again from the mark.
            self.inflight.clear();
            self.prefetch = None;
        }
        // A last drain within the bound, so a clean stop leaves as little behind as possible,
        // keeping a part of it to end what the drain leaves open (a transaction is aborted).
        let deadline = deadline.unwrap_or_else(|| tokio::time::Instant::now() + flush_timeout);
        let drain_until = deadline - reserve;
        while let Ok(round) = tokio::time::timeout_at(drain_until, self.drain_once()).await {
            if round? != Drained::Some {
                break;
            }
        }
        self.sink
            .flush(deadline.saturating_duration_since(tokio::time::Instant::now()))
            .await;
        self.marked().await?;
        self.refresh_backlog(true).await?;
        Ok(())
    }

    /// Sends due tombstones (accounts that left the watch list) and forgets those delivered.
    /// Returns whether any failed.
    async fn send_tombstones(&mut self) -> Result<bool, StoreError> {
        let limit = self.limit;
        let with_state = self.sink.has_state_topic();
        let tombstones = self
            .store
            .call(move |db| db.tombstones_due(limit, !with_state))
            .await?;
        if tombstones.is_empty() {
            return Ok(false);
        }
        let mut failed = false;
        let done: Vec<String> = match with_state {
            true => {
                let results = self.sink.deliver_tombstones(&tombstones).await;
                failed = results.iter().any(Result::is_err);
                tombstones
                    .into_iter()
                    .zip(results)
                    .filter(|(_, r)| r.is_ok())
                    .map(|(id, _)| id)
                    .collect()
            }
            false => tombstones,
        };
        self.store
            .call(move |db| db.delete_tombstones(&done))
            .await?;
        Ok(failed)
    }

    /// A round could not write its marks (the database has no room): what was in flight is
    /// forgotten, and once the pause is over the next round starts again from the mark, after
    /// the sink reads back what its destination already holds (exactly-once: a batch committed
    /// but not marked is not sent twice). The sweep loop reports the full disk.
    async fn wait_for_room(&mut self, error: &StoreError, shutdown: &CancellationToken) {
        tracing::warn!(error = %error, "publishing pauses: the database has no room to mark what was sent");
        self.inflight.clear();
        self.prefetch = None;
        self.marking = None;
        self.sink.read_back_again();
        tokio::select! {
            _ = tokio::time::sleep(FULL_RETRY) => {}
            _ = shutdown.cancelled() => {}
        }
    }

    /// One round: read a batch, deliver it, mark what was acknowledged.
    pub async fn drain_once(&mut self) -> Result<Drained, StoreError> {
        let limit = self.limit;
        if self.inflight.is_empty() {
            // The mark of the last settled batch decides which tombstones are due.
            self.marked().await?;
            if let Some(drained) = self.recover().await? {
                // Held or failing: the backlog grows meanwhile, and its alerts must see it.
                self.refresh_backlog(false).await?;
                return Ok(drained);
            }
        }
        // Tombstones with nothing in flight: they follow every event already sent, and the
        // exactly-once sink sends them in a transaction of their own between its batches.
        let tombstone_failed = match self.inflight.is_empty() {
            true => self.send_tombstones().await?,
            false => false,
        };
        // Pipelined: start the next batch (read and encoded ahead), ask the store for the one
        // after it, and settle the oldest batch once the window is full or the outbox is drained.
        let after = self
            .inflight
            .back()
            .and_then(|(events, _)| events.last())
            .map_or(0, |e| e.history_id);
        let next = self.next_batch(after).await?;
        let full = next.events.len() == limit;
        if let Some(last) = next.events.last().filter(|_| full) {
            let after = last.history_id;
            self.prefetch = Some((after, self.read_batch(after).await?));
        }
        if !next.events.is_empty() {
            let Batch { events, encoded } = next;
            let pending = self.sink.start(&events, encoded).await;
            self.inflight.push_back((events, pending));
        }
        if full && self.inflight.len() < self.sink.window().max(1) {
            return Ok(Drained::Some);
        }
        let Some((events, pending)) = self.inflight.pop_front() else {
            self.marked().await?;
            self.refresh_backlog(true).await?;
            return Ok(match tombstone_failed {
                true => Drained::Failed,
                false => Drained::Empty,
            });
        };
        let results = self.sink.finish(pending).await;
        let failed = self.settled(&events, &results).await?;
        if let Some(failed) = failed {
            // The batches started after a failure may hold later events of the failed accounts:
            // let them settle but keep all their rows, so the next round re-sends from the oldest.
            let later: Vec<_> = self.inflight.drain(..).collect();
            for (_, pending) in later {
                let _ = self.sink.finish(pending).await;
            }
            self.prefetch = None;
            if failed == DeliveryError::Timeout {
                self.shrink_batches(events.len());
            }
            self.refresh_backlog(true).await?;
            return Ok(match failed {
                DeliveryError::Fenced(_) => Drained::Fenced,
                e if e.is_final() => Drained::Rejected,
                _ => Drained::Failed,
            });
        }
        if events.len() == self.limit && self.limit < self.batch_size {
            self.full_in_a_row += 1;
            if self.full_in_a_row >= REGROW_AFTER {
                self.full_in_a_row = 0;
                self.limit = (self.limit * 2).min(self.batch_size);
            }
        }
        self.refresh_backlog(false).await?;
        Ok(Drained::Some)
    }

    /// A batch of `sent` events timed out: the next ones are half as large (down to one event).
    fn shrink_batches(&mut self, sent: usize) {
        let smaller = (sent.min(self.limit) / 2).max(1);
        self.full_in_a_row = 0;
        if smaller < self.limit {
            self.limit = smaller;
            tracing::warn!(
                events = sent,
                now = smaller,
                "a batch timed out before the broker acknowledged it; batches (in exactly-once mode, transactions) are halved until they go through"
            );
        }
    }

    /// Records a settled batch: metrics, then moves the publish mark. Returns the first
    /// failure, if any.
    async fn settled(
        &mut self,
        events: &[OutboxEvent],
        results: &[Result<(), DeliveryError>],
    ) -> Result<Option<DeliveryError>, StoreError> {
        let now = now_millis();
        for (e, r) in events.iter().zip(results) {
            match r {
                Ok(()) => self
                    .metrics
                    .delivery_latency
                    .observe((now - e.committed_at).max(0) as f64 / 1000.0),
                Err(err) => self.metrics.delivery_error(err.kind()),
            }
        }
        let through = published_through(events, results);
        let failed = results.iter().filter(|r| r.is_err()).count();
        if failed < results.len() {
            self.after_delivery().await?;
        }
        let first = events
            .iter()
            .zip(results)
            .find_map(|(e, r)| r.as_ref().err().map(|err| (e, err.clone())));
        if let Some((event, error)) = &first {
            self.report_failure(failed, event, error);
        }
        self.metrics
            .events_published
            .inc_by((events.len() - failed) as u64);
        // Only queued: the next batch is sent while the store thread writes the mark.
        self.marked().await?;
        if let Some(through) = through {
            self.marking = Some(
                self.store
                    .submit(move |db| db.mark_published(through))
                    .await?,
            );
        }
        Ok(first.map(|(_, error)| error))
    }

    /// Says what failed. A final rejection names the event and fails readiness, since only an
    /// operator can fix it (a larger `max.message.bytes`, an ACL, the topic created).
    fn report_failure(&self, failed: usize, event: &OutboxEvent, error: &DeliveryError) {
        if matches!(error, DeliveryError::Fenced(_)) {
            return; // the sink said so, once
        }
        if !error.is_final() {
            tracing::warn!(failed, error = %error, "some events were not acknowledged; they and the events after them stay in the outbox");
            return;
        }
        if let Some(health) = &self.broker_health {
            if !health.rejected(error) {
                return; // already said
            }
        }
        tracing::error!(
            account = %event.record.user_id,
            history_id = event.history_id,
            error = %error,
            retry_in_secs = self.tuning.rejected_retry().as_secs(),
            "the broker rejected an event for good; publishing is held at it (nothing is skipped) until the cause is fixed (the topic's max.message.bytes, an ACL, the topic itself); it is tried again after sink.rejected_retry_secs"
        );
    }

    /// A delivery succeeded: if the brokers had been unreachable, say for how long and what
    /// waits to go out.
    async fn after_delivery(&mut self) -> Result<(), StoreError> {
        let Some(down_for) = self.broker_health.as_ref().and_then(|h| h.delivered()) else {
            return Ok(());
        };
        let (backlog, _) = self.store.call(|db| db.outbox_backlog()).await?;
        tracing::info!(
            down_for_secs = down_for.as_secs(),
            backlog,
            "Kafka brokers are reachable again; sending the backlog"
        );
        Ok(())
    }

    /// Refreshes the backlog metrics: always when `now`, else at most once a second; a gauge
    /// does not need a store round trip per batch while draining.
    async fn refresh_backlog(&mut self, now: bool) -> Result<(), StoreError> {
        if !now
            && self
                .backlog_counted
                .is_some_and(|t| t.elapsed() < Duration::from_secs(1))
        {
            return Ok(());
        }
        self.backlog_counted = Some(Instant::now());
        let (count, oldest) = self.store.call(|db| db.outbox_backlog()).await?;
        self.metrics.outbox_backlog.set(count as i64);
        let age = oldest.map_or(0.0, |t| (now_millis() - t).max(0) as f64 / 1000.0);
        self.metrics.outbox_oldest_age_seconds.set(age);
        Ok(())
    }
}
