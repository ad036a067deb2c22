//! Drains the outbox into a sink (Kafka or stdout). An event leaves the outbox (the publish mark
//! moves past it) only after its delivery and every delivery before it succeeded, so a sink that
//! is down means a backlog, never a loss.

pub mod broker_health;
pub mod event;
pub mod kafka;

use crate::metrics::Metrics;
use crate::model::now_millis;
use crate::store::{OutboxEvent, Store, StoreError, Submitted};
use std::collections::{HashSet, VecDeque};
use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeliveryError {
    #[error("message timed out before the broker acknowledged it")]
    Timeout,
    #[error("broker error: {0}")]
    Broker(String),
    #[error("delivery was canceled (producer went away)")]
    Canceled,
    #[error("write failed: {0}")]
    Io(String),
}

impl DeliveryError {
    fn from_kafka(e: &rdkafka::error::KafkaError) -> Self {
        use rdkafka::error::RDKafkaErrorCode;
        match e.rdkafka_error_code() {
            Some(RDKafkaErrorCode::MessageTimedOut) => DeliveryError::Timeout,
            _ => DeliveryError::Broker(e.to_string()),
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            DeliveryError::Timeout => "timeout",
            DeliveryError::Broker(_) => "broker",
            DeliveryError::Canceled => "canceled",
            DeliveryError::Io(_) => "io",
        }
    }
}

/// How the stdout sink prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StdoutStyle {
    /// One event v1 JSON document per line, for piping into other tools.
    JsonLines,
    /// One short human line per transition, for the demo; `initial` events are counted, not shown.
    Human,
}

#[derive(Debug)]
pub enum Sink {
    Kafka(kafka::KafkaSink),
    Stdout { style: StdoutStyle, sdkappid: u64 },
}

/// A batch handed to a sink whose outcome may still be pending.
#[derive(Debug)]
enum Pending {
    Kafka(kafka::Enqueued),
    Done(Vec<Result<(), DeliveryError>>),
}

/// Turns outbox events into what a sink sends. It is `Send` and cheap to clone, so the
/// publisher runs it on the store thread together with the read, off its own sending loop.
#[derive(Debug, Clone)]
pub enum Encoder {
    Kafka(kafka::KafkaEncoder),
    Stdout { style: StdoutStyle, sdkappid: u64 },
}

/// A batch of outbox events with their encoding.
pub struct Batch {
    events: Vec<OutboxEvent>,
    encoded: Encoded,
}

enum Encoded {
    Kafka(Vec<kafka::Records>),
    Text(Vec<u8>),
}

impl std::fmt::Debug for Batch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Batch({} events)", self.events.len())
    }
}

impl Encoder {
    pub fn encode(&self, events: Vec<OutboxEvent>) -> Batch {
        let encoded = match self {
            Encoder::Kafka(k) => {
                Encoded::Kafka(events.iter().map(|e| k.encode(&e.record)).collect())
            }
            Encoder::Stdout { style, sdkappid } => {
                Encoded::Text(render_stdout(*style, *sdkappid, &events))
            }
        };
        Batch { events, encoded }
    }
}

impl Sink {
    /// Whether pending tombstones go anywhere (a Kafka sink with a state topic).
    fn has_state_topic(&self) -> bool {
        matches!(self, Sink::Kafka(k) if k.has_state_topic())
    }

    /// The Kafka producer's view of its brokers, for a Kafka sink.
    pub fn broker_health(&self) -> Option<Arc<broker_health::BrokerHealth>> {
        match self {
            Sink::Kafka(k) => Some(k.health()),
            Sink::Stdout { .. } => None,
        }
    }

    pub fn encoder(&self) -> Encoder {
        match self {
            Sink::Kafka(k) => Encoder::Kafka(k.encoder()),
            Sink::Stdout { style, sdkappid } => Encoder::Stdout {
                style: *style,
                sdkappid: *sdkappid,
            },
        }
    }

    async fn deliver(
        &mut self,
        events: Vec<OutboxEvent>,
    ) -> (Vec<OutboxEvent>, Vec<Result<(), DeliveryError>>) {
        let batch = self.encoder().encode(events);
        let (events, pending) = self.start(batch).await;
        let results = self.finish(pending).await;
        (events, results)
    }

    /// Starts delivering a batch: Kafka gets it enqueued; stdout is written at once.
    async fn start(&mut self, batch: Batch) -> (Vec<OutboxEvent>, Pending) {
        let Batch { events, encoded } = batch;
        let pending = match (&*self, encoded) {
            (Sink::Kafka(k), Encoded::Kafka(records)) => {
                Pending::Kafka(k.enqueue_batch(&events, records).await)
            }
            (Sink::Stdout { .. }, Encoded::Text(text)) => {
                // A slow reader at the other end of a pipe blocks a helper thread, not the runtime.
                let result = tokio::task::spawn_blocking(move || {
                    let stdout = std::io::stdout();
                    let mut out = stdout.lock();
                    out.write_all(&text)?;
                    out.flush()
                })
                .await
                .unwrap_or_else(|e| Err(std::io::Error::other(e.to_string())))
                .map_err(|e| DeliveryError::Io(e.to_string()));
                Pending::Done(events.iter().map(|_| result.clone()).collect())
            }
            _ => unreachable!("a batch is encoded by its own sink's encoder"),
        };
        (events, pending)
    }

    async fn finish(&mut self, pending: Pending) -> Vec<Result<(), DeliveryError>> {
        match (self, pending) {
            (Sink::Kafka(k), Pending::Kafka(enqueued)) => k.settle_batch(enqueued).await,
            (_, Pending::Done(results)) => results,
            (_, Pending::Kafka(_)) => {
                unreachable!("a Kafka batch is only started on the Kafka sink")
            }
        }
    }

    async fn flush(&self, timeout: Duration) {
        if let Sink::Kafka(k) = self {
            k.flush(timeout).await;
        }
    }
}

fn render_stdout(style: StdoutStyle, sdkappid: u64, events: &[OutboxEvent]) -> Vec<u8> {
    let mut out = Vec::with_capacity(events.len() * 320);
    for e in events {
        let t = &e.record;
        match style {
            StdoutStyle::JsonLines => {
                out.extend_from_slice(&event::EventV1::new(sdkappid, t).to_json());
                out.push(b'\n');
            }
            StdoutStyle::Human => {
                let Some(from) = t.from else { continue };
                let platforms: Vec<String> = t
                    .to_platforms
                    .iter()
                    .map(|p| format!("{}:{}", p.platform, p.status))
                    .collect();
                let _ = writeln!(
                    out,
                    "{}  {:<12} {:>10} -> {:<10} seq {:<4} [{}]",
                    crate::model::format_millis(t.observed_at),
                    t.user_id,
                    from.as_str(),
                    t.to.as_str(),
                    t.seq,
                    platforms.join(" ")
                );
            }
        }
    }
    out
}

/// For `replay`: of a batch's results, the events that are done: every success, except those
/// that follow a failure of the same account in this batch. Re-sending those keeps per-account order (a
/// consumer may see a duplicate, which the event id and seq let it drop; never a reordering).
pub fn acknowledged(events: &[OutboxEvent], results: &[Result<(), DeliveryError>]) -> Vec<i64> {
    let mut blocked: HashSet<&str> = HashSet::new();
    let mut ok = Vec::new();
    for (e, r) in events.iter().zip(results) {
        let user = e.record.user_id.as_str();
        if r.is_ok() && !blocked.contains(user) {
            ok.push(e.history_id);
        } else {
            blocked.insert(user);
        }
    }
    ok
}

/// Of a batch's results, the last outbox id before the first failure: everything up to it was
/// acknowledged and leaves the outbox. Later successes are sent again after the failed event,
/// which keeps per-account order; consumers drop the duplicates by event id.
pub fn published_through(
    events: &[OutboxEvent],
    results: &[Result<(), DeliveryError>],
) -> Option<i64> {
    events
        .iter()
        .zip(results)
        .take_while(|(_, r)| r.is_ok())
        .last()
        .map(|(e, _)| e.history_id)
}

/// Batches enqueued in librdkafka before the oldest must be acknowledged. More than one keeps
/// the broker busy while a batch is settled; a few also cover a new producer's first second
/// (connection, producer id), when nothing is acknowledged yet.
const BATCHES_IN_FLIGHT: usize = 4;

#[derive(Debug)]
pub struct Publisher {
    store: Store,
    sink: Sink,
    batch_size: usize,
    metrics: Arc<Metrics>,
    /// Poked by the sweeper after each commit so new events go out without waiting for a tick.
    wake: Arc<Notify>,
    /// Batches handed to the sink whose acknowledgements are still awaited, oldest first, so
    /// that the broker always has work while this task reads, sends and settles.
    inflight: VecDeque<(Vec<OutboxEvent>, Pending)>,
    /// The batch after the one last started, being read and encoded on the store thread while
    /// this task sends and settles: (the id it reads after, the read).
    prefetch: Option<(i64, Submitted<Batch>)>,
    /// The publish mark of the last acknowledged batch, being written on the store thread while
    /// this task goes on; collected before the next one is queued.
    marking: Option<Submitted<()>>,
    /// When the backlog metrics were last refreshed.
    backlog_counted: Option<Instant>,
    /// The Kafka producer's view of its brokers; a delivery after an outage is logged.
    broker_health: Option<Arc<broker_health::BrokerHealth>>,
    /// New Kafka settings from a reload (SIGHUP), applied by re-creating the producer.
    reconfigure: Option<tokio::sync::watch::Receiver<crate::config::KafkaConfig>>,
}

/// The next Kafka settings a reload sends; pending forever without a channel or a sender.
async fn next_settings(
    rx: &mut Option<tokio::sync::watch::Receiver<crate::config::KafkaConfig>>,
) -> crate::config::KafkaConfig {
    if let Some(rx) = rx {
        if rx.changed().await.is_ok() {
            return rx.borrow_and_update().clone();
        }
    }
    std::future::pending().await
}

impl Publisher {
    pub fn new(
        store: Store,
        sink: Sink,
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
            metrics,
            wake,
            inflight: VecDeque::new(),
            prefetch: None,
            marking: None,
            backlog_counted: None,
        }
    }

    /// Re-creates the Kafka producer with the settings a reload sends on `settings`.
    pub fn reconfigure_with(
        mut self,
        settings: tokio::sync::watch::Receiver<crate::config::KafkaConfig>,
    ) -> Self {
        self.reconfigure = Some(settings);
        self
    }

    /// Applies reloaded Kafka settings between rounds: what was in flight is forgotten (it is
    /// still in the outbox) and the next round starts again from the mark with the new producer.
    fn apply_settings(&mut self, settings: &crate::config::KafkaConfig) {
        self.inflight.clear();
        self.prefetch = None;
        if let Sink::Kafka(k) = &mut self.sink {
            match k.reconfigure(settings) {
                Ok(()) => {
                    tracing::info!(brokers = %settings.brokers, "Kafka settings reloaded; unacknowledged events are sent again")
                }
                Err(e) => {
                    tracing::error!(error = %e, "Kafka settings not reloaded: the new ones are rejected; keeping the running producer")
                }
            }
        }
    }

    /// Queues the read and encoding of the batch after `after` on the store thread. With a state
    /// topic, the read stops at a pending tombstone's barrier; it is read in the same closure so
    /// that a removal committed after it bounds nothing this read returned.
    async fn read_batch(&self, after: i64) -> Result<Submitted<Batch>, StoreError> {
        let limit = self.batch_size;
        let encoder = self.sink.encoder();
        let with_state = self.sink.has_state_topic();
        self.store
            .submit(move |db| {
                let upto = match with_state {
                    true => db.tombstone_barrier()?.unwrap_or(i64::MAX),
                    false => i64::MAX,
                };
                Ok(encoder.encode(db.outbox_batch_upto(after, upto, limit)?))
            })
            .await
    }

    /// The batch after `after`: the prefetched one when it was read from there, else read now.
    async fn next_batch(&mut self, after: i64) -> Result<Batch, StoreError> {
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
        let mut reconfigure = self.reconfigure.take();
        loop {
            // A round may wait long for acknowledgements (messages do not time out while the
            // brokers are down or refuse us), so a stop or new settings do not wait for it.
            let round = tokio::select! {
                round = self.drain_once() => round?,
                _ = shutdown.cancelled() => {
                    interrupted = true;
                    break;
                }
                settings = next_settings(&mut reconfigure) => {
                    self.apply_settings(&settings);
                    continue;
                }
            };
            let wait = match round {
                Drained::Some => {
                    failures = 0;
                    None
                }
                Drained::Empty => {
                    failures = 0;
                    Some(Duration::from_secs(1))
                }
                Drained::Failed => {
                    failures += 1;
                    Some(Duration::from_millis(200 * 2u64.pow(failures.min(7))))
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
        if interrupted {
            // The interrupted round may have taken a batch out of the window without settling
            // it; settling the later ones would move the mark past it. Start again from the mark.
            self.inflight.clear();
            self.prefetch = None;
        }
        // A last drain within the bound, so a clean stop leaves as little behind as possible.
        let deadline = tokio::time::Instant::now() + flush_timeout;
        while let Ok(round) = tokio::time::timeout_at(deadline, self.drain_once()).await {
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

    /// One round: read a batch, deliver it, mark what was acknowledged.
    pub async fn drain_once(&mut self) -> Result<Drained, StoreError> {
        let limit = self.batch_size;
        if self.inflight.is_empty() {
            // The mark of the last settled batch decides which tombstones are due.
            self.marked().await?;
        }
        let with_state = self.sink.has_state_topic();
        let tombstones = self
            .store
            .call(move |db| db.tombstones_due(limit, !with_state))
            .await?;
        let mut tombstone_failed = false;
        if !tombstones.is_empty() {
            let done: Vec<String> = match &mut self.sink {
                Sink::Kafka(k) if with_state => {
                    let results = k.deliver_tombstones(&tombstones).await;
                    tombstone_failed = results.iter().any(Result::is_err);
                    tombstones
                        .into_iter()
                        .zip(results)
                        .filter(|(_, r)| r.is_ok())
                        .map(|(id, _)| id)
                        .collect()
                }
                _ => tombstones,
            };
            self.store
                .call(move |db| db.delete_tombstones(&done))
                .await?;
        }
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
            let started = self.sink.start(next).await;
            self.inflight.push_back(started);
        }
        if full && self.inflight.len() < BATCHES_IN_FLIGHT {
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
        if failed > 0 {
            // The batches started after a failure may hold later events of the failed accounts:
            // let them settle but keep all their rows, so the next round re-sends from the oldest.
            let later: Vec<_> = self.inflight.drain(..).collect();
            for (_, pending) in later {
                let _ = self.sink.finish(pending).await;
            }
            self.prefetch = None;
            self.refresh_backlog(true).await?;
            return Ok(Drained::Failed);
        }
        self.refresh_backlog(false).await?;
        Ok(Drained::Some)
    }

    /// Records a settled batch: metrics, then moves the publish mark. Returns how many failed.
    async fn settled(
        &mut self,
        events: &[OutboxEvent],
        results: &[Result<(), DeliveryError>],
    ) -> Result<usize, StoreError> {
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
        if failed > 0 {
            let first = results.iter().find_map(|r| r.as_ref().err()).cloned();
            tracing::warn!(failed, error = ?first, "some events were not acknowledged; they and the events after them stay in the outbox");
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
        Ok(failed)
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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Drained {
    Some,
    Empty,
    Failed,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::State;
    use crate::store::TransitionRecord;

    fn ev(history_id: i64, user: &str) -> OutboxEvent {
        OutboxEvent {
            history_id,
            committed_at: 0,
            record: TransitionRecord {
                event_id: uuid::Uuid::now_v7(),
                user_id: user.into(),
                seq: history_id as u64,
                from: None,
                from_platforms: None,
                to: State::Online,
                to_platforms: vec![],
                observed_at: 0,
                previous_observed_at: None,
                sweep_id: 1,
            },
        }
    }

    #[test]
    fn the_publish_mark_stops_before_the_first_failure() {
        let events = vec![ev(1, "a"), ev(2, "b"), ev(3, "a"), ev(4, "b")];
        let ok = || Ok(());
        let err = || Err(DeliveryError::Timeout);
        assert_eq!(
            published_through(&events, &[ok(), ok(), err(), ok()]),
            Some(2)
        );
        assert_eq!(published_through(&events, &[err(), ok(), ok(), ok()]), None);
        assert_eq!(
            published_through(&events, &[ok(), ok(), ok(), ok()]),
            Some(4)
        );
    }

    #[test]
    fn a_failure_holds_back_later_events_of_the_same_account_only() {
        let events = vec![ev(1, "a"), ev(2, "b"), ev(3, "a"), ev(4, "b")];
        let results = vec![Err(DeliveryError::Timeout), Ok(()), Ok(()), Ok(())];
        assert_eq!(acknowledged(&events, &results), vec![2, 4]);
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{failed} events could not be delivered after {attempts} attempts: {first}")]
    Delivery {
        failed: usize,
        attempts: u32,
        first: DeliveryError,
    },
}

/// Re-publishes the history observed in `[since, until)` in commit order, with the original
/// event ids (consumers that dedupe by id see nothing twice). `progress` gets (done, total).
pub async fn replay(
    store: &Store,
    sink: &mut Sink,
    since: i64,
    until: i64,
    mut progress: impl FnMut(u64, u64),
) -> Result<u64, ReplayError> {
    const PAGE: usize = 5_000;
    const ATTEMPTS: u32 = 5;
    let total = store
        .call(move |db| {
            Ok(db.connection().query_row(
                "SELECT COUNT(*) FROM presence_history WHERE observed_at >= ?1 AND observed_at < ?2",
                [since, until],
                |r| r.get::<_, i64>(0),
            )? as u64)
        })
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
        for attempt in 1..=ATTEMPTS {
            let (sent, results) = sink.deliver(pending).await;
            pending = sent;
            let acked: HashSet<i64> = acknowledged(&pending, &results).into_iter().collect();
            let first = results.iter().find_map(|r| r.as_ref().err()).cloned();
            done += acked.len() as u64;
            pending.retain(|e| !acked.contains(&e.history_id));
            progress(done, total);
            match first {
                None => break,
                Some(first) if attempt == ATTEMPTS => {
                    return Err(ReplayError::Delivery {
                        failed: pending.len(),
                        attempts: ATTEMPTS,
                        first,
                    });
                }
                Some(_) => {
                    tokio::time::sleep(Duration::from_millis(500 * u64::from(attempt))).await
                }
            }
        }
    }
    sink.flush(Duration::from_secs(10)).await;
    Ok(done)
}
