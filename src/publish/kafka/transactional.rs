//! The exactly-once sink: each outbox batch, with its state-topic records, in one Kafka
//! transaction, and the publish mark read back from the topic whenever the producer starts or a
//! commit's outcome is unknown.
//!
//! Why no duplicate reaches a `read_committed` consumer: a batch is visible only once its
//! transaction commits, and the publish mark moves after the commit. A crash between the two
//! leaves the mark behind what the topic has; the next start calls `init_transactions` (which
//! aborts whatever a previous producer with this `transactional.id` left open and fences it),
//! reads back the highest `presenced_history_id` committed on the topic, and moves the mark there
//! before sending anything. Batches go one at a time, in outbox order, so everything up to that
//! id is on the topic and nothing after it is.
//!
//! librdkafka sorts transactional errors into retriable (call again), abortable (abort, then
//! send the batch again) and fatal (the producer is unusable: re-create it). Fencing is fatal
//! too, but re-creating would fence the daemon that fenced us, and the two would take turns:
//! a fenced sink stops for good.

use super::health::BrokerHealth;
use super::{client_config, KafkaEncoder, KafkaSetupError, KafkaSink, Records, HISTORY_ID_HEADER};
use crate::publish::kafka::KafkaConfig;
use crate::publish::sink::Sink;
use crate::publish::DeliveryError;
use crate::store::OutboxEvent;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Headers, Message};
use rdkafka::producer::Producer;
use rdkafka::{Offset, TopicPartitionList};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A started transaction, or why none could start.
#[derive(Debug)]
pub enum TransactionPending {
    /// The batch is in an open transaction.
    Open {
        /// Events in it.
        events: usize,
        /// Their records' delivery reports, awaited before the commit.
        enqueued: super::Enqueued,
    },
    /// The transaction could not begin or take the records.
    Failed {
        /// Events of the batch.
        events: usize,
        /// Why.
        error: DeliveryError,
    },
}

/// The Kafka sink of `kafka.delivery = "exactly-once"`.
pub struct TransactionalSink {
    inner: KafkaSink,
    transactional_id: String,
    /// `init_transactions` is due: the producer is new.
    needs_init: bool,
    /// The topic must be read back before the next batch: the producer is new, or a commit's
    /// outcome is unknown.
    needs_read_back: bool,
    /// The open transaction must be aborted before the next begins.
    needs_abort: bool,
    /// When the open transaction began: a fencing error while it is younger than the
    /// transaction timeout means another daemon took over, not that the broker timed us out.
    began: Option<Instant>,
    /// Set once another producer with our id took over; never cleared.
    fenced: Option<String>,
}

impl std::fmt::Debug for TransactionalSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TransactionalSink")
            .field("topic", &self.inner.settings.topic)
            .field("transactional_id", &self.transactional_id)
            .finish()
    }
}

impl TransactionalSink {
    /// The sink for app `sdkappid`; the topics are checked (created when configured to) as for
    /// [`KafkaSink::connect`]. The flag says whether the brokers answered.
    pub async fn connect(
        settings: &KafkaConfig,
        sdkappid: u64,
    ) -> Result<(TransactionalSink, bool), KafkaSetupError> {
        super::warn_ignored_settings(settings);
        let transactional_id = settings.transactional_id_for(sdkappid);
        let health = Arc::new(BrokerHealth::default());
        let producer = super::create_producer(settings, Some(&transactional_id), &health)
            .map_err(KafkaSetupError::Client)?;
        let inner = KafkaSink {
            producer,
            health,
            settings: Box::new(settings.clone()),
            sdkappid,
            refused_rounds: 0,
            transactional_id: Some(transactional_id.clone()),
        };
        let reachable = inner.check_topic().await?;
        tracing::info!(
            transactional_id = %transactional_id,
            "exactly-once delivery: each batch is one Kafka transaction"
        );
        Ok((
            TransactionalSink {
                inner,
                transactional_id,
                needs_init: true,
                needs_read_back: true,
                needs_abort: false,
                began: None,
                fenced: None,
            },
            reachable,
        ))
    }

    /// What the producer learnt about the brokers.
    pub fn health(&self) -> Arc<BrokerHealth> {
        self.inner.health()
    }

    fn timeout(&self) -> Duration {
        Duration::from_millis(self.inner.settings.transaction_timeout_ms)
    }

    /// Runs a blocking transactional call of the producer on a helper thread.
    async fn blocking<R: Send + 'static>(
        &self,
        call: impl FnOnce(&super::HealthProducer) -> R + Send + 'static,
    ) -> R {
        let producer = self.inner.producer.clone();
        tokio::task::spawn_blocking(move || call(&producer))
            .await
            .expect("a producer call does not panic")
    }

    /// Sorts a transactional error: fenced (stop for good), fatal (a new producer, then
    /// `init_transactions` and a read-back), abortable or other (abort, read back, send again).
    fn failed(&mut self, what: &str, error: KafkaError) -> DeliveryError {
        let (fatal, requires_abort) = match &error {
            KafkaError::Transaction(e) => (e.is_fatal(), e.txn_requires_abort()),
            _ => (false, true),
        };
        let fatal_code = self.inner.producer.client().fatal_error().map(|(c, _)| c);
        let code = error.rdkafka_error_code().or(fatal_code);
        let young = self.began.is_none_or(|t| t.elapsed() < self.timeout());
        if is_fenced(code) && young {
            let message = format!("{what}: {error}");
            if self.fenced.is_none() {
                self.inner.health.fenced();
                tracing::error!(
                    transactional_id = %self.transactional_id,
                    error = %message,
                    "another presenced with the same transactional.id took over: this one stops publishing for good (restart it only once the other is stopped)"
                );
            }
            self.fenced = Some(self.transactional_id.clone());
            return DeliveryError::Fenced(self.transactional_id.clone());
        }
        self.needs_read_back = true;
        if fatal || fatal_code.is_some() {
            tracing::warn!(error = %error, "{what} failed with a fatal error; re-creating the transactional producer");
            self.recreate();
        } else if requires_abort || self.began.is_some() {
            self.needs_abort = true;
            tracing::warn!(error = %error, "{what} failed; the transaction is aborted and its batch sent again");
        }
        DeliveryError::Broker(format!("{what}: {error}"))
    }

    /// A record was refused before the commit: the transaction is aborted and sent again.
    fn abort_needed(&mut self, what: &str, error: DeliveryError) -> DeliveryError {
        tracing::warn!(error = %error, "{what} failed; the transaction is aborted and its batch sent again");
        self.needs_abort = true;
        self.needs_read_back = true;
        error
    }

    fn recreate(&mut self) {
        match super::create_producer(
            &self.inner.settings,
            Some(&self.transactional_id),
            &self.inner.health,
        ) {
            Ok(p) => {
                let old = std::mem::replace(&mut self.inner.producer, p);
                tokio::task::spawn_blocking(move || drop(old));
                self.needs_init = true;
                self.needs_abort = false;
                self.began = None;
            }
            Err(e) => {
                tracing::error!(error = %e, "re-creating the transactional producer failed; will retry")
            }
        }
    }
}

/// Whether a code says another producer with our `transactional.id` took over.
fn is_fenced(code: Option<RDKafkaErrorCode>) -> bool {
    matches!(
        code,
        Some(RDKafkaErrorCode::Fenced | RDKafkaErrorCode::ProducerFenced)
    )
}

impl Sink for TransactionalSink {
    type Encoder = KafkaEncoder;
    type Pending = TransactionPending;

    fn encoder(&self) -> KafkaEncoder {
        self.inner.encoder().with_history_ids()
    }

    /// One transaction at a time: a batch's commit decides for all of it.
    fn window(&self) -> usize {
        1
    }

    /// Aborts what a failure left open, initialises a new producer, and reads back the highest
    /// history id committed on the topic when the last commit's outcome is unknown.
    async fn recover(&mut self) -> Result<Option<i64>, DeliveryError> {
        if let Some(id) = &self.fenced {
            return Err(DeliveryError::Fenced(id.clone()));
        }
        let timeout = self.timeout();
        // A transaction still open here was started and never finished: the publisher dropped
        // its batch (a stop or a reload interrupted the round). It goes, then the batch again.
        if self.began.is_some() {
            self.needs_abort = true;
            self.needs_read_back = true;
        }
        if self.needs_abort {
            match self.blocking(move |p| p.abort_transaction(timeout)).await {
                Ok(()) => {
                    self.needs_abort = false;
                    self.began = None;
                }
                Err(e) => return Err(self.failed("aborting the transaction", e)),
            }
        }
        if self.needs_init {
            match self.blocking(move |p| p.init_transactions(timeout)).await {
                Ok(()) => self.needs_init = false,
                Err(e) => return Err(self.failed("initialising transactions", e)),
            }
        }
        if !self.needs_read_back {
            return Ok(None);
        }
        let settings = self.inner.settings.clone();
        let committed = tokio::task::spawn_blocking(move || read_back(&settings))
            .await
            .expect("the read-back does not panic")
            .map_err(|e| DeliveryError::Broker(format!("reading back the topic: {e}")))?;
        self.needs_read_back = false;
        tracing::info!(
            committed_through = committed,
            "read back the topic: events up to this history id are committed there"
        );
        Ok(committed)
    }

    async fn start(&mut self, events: &[OutboxEvent], records: Vec<Records>) -> TransactionPending {
        let n = events.len();
        if let Some(id) = &self.fenced {
            let error = DeliveryError::Fenced(id.clone());
            return TransactionPending::Failed { events: n, error };
        }
        if let Err(e) = self.inner.producer.begin_transaction() {
            let error = self.failed("beginning a transaction", e);
            return TransactionPending::Failed { events: n, error };
        }
        self.began = Some(Instant::now());
        // The records' own outcomes are decided by the commit: a failed one fails it.
        let enqueued = self.inner.enqueue_batch(events, records).await;
        if let Some(error) = enqueued.first_error() {
            let error = self.abort_needed("producing", error);
            return TransactionPending::Failed { events: n, error };
        }
        TransactionPending::Open {
            events: n,
            enqueued,
        }
    }

    async fn finish(&mut self, pending: TransactionPending) -> Vec<Result<(), DeliveryError>> {
        let (n, outcome) = match pending {
            TransactionPending::Failed { events, error } => (events, Err(error)),
            TransactionPending::Open { events, enqueued } => {
                // Every record acknowledged first: the commit's own flush then has nothing to
                // wait for (rust-rdkafka's flush waits in steps of up to 100 ms for delivery
                // reports another thread serves, which cost a tenth of a second a transaction).
                if let Some(error) = enqueued.settle_all().await {
                    let error = self.abort_needed("producing", error);
                    return vec![Err(error); events];
                }
                let timeout = self.timeout();
                let committed = self.blocking(move |p| commit(p, timeout)).await;
                match committed {
                    Ok(()) => {
                        self.began = None;
                        (events, Ok(()))
                    }
                    Err(e) => (events, Err(self.failed("committing the transaction", e))),
                }
            }
        };
        if outcome.is_ok() {
            self.inner.health.delivered();
        }
        vec![outcome; n]
    }

    /// At a stop: a transaction left open would hold back `read_committed` consumers of its
    /// partitions until the broker times it out, so it is aborted now (its batch is still in
    /// the outbox).
    async fn flush(&self, timeout: Duration) {
        if self.began.is_none() || self.needs_init || self.fenced.is_some() {
            return;
        }
        let aborted = self.blocking(move |p| p.abort_transaction(timeout)).await;
        if let Err(e) = aborted {
            tracing::warn!(error = %e, "the open transaction could not be aborted at stop; the broker aborts it after kafka.transaction_timeout_ms");
        }
    }

    fn has_state_topic(&self) -> bool {
        self.inner.has_state_topic()
    }

    /// Tombstones go in a transaction of their own, committed before the events that follow.
    async fn deliver_tombstones(&mut self, user_ids: &[String]) -> Vec<Result<(), DeliveryError>> {
        let n = user_ids.len();
        if let Err(e) = self.recover().await {
            return vec![Err(e); n];
        }
        if let Err(e) = self.inner.producer.begin_transaction() {
            return vec![Err(self.failed("beginning a transaction", e)); n];
        }
        self.began = Some(Instant::now());
        let enqueued = self.inner.enqueue_tombstones(user_ids).await;
        if let Some(error) = enqueued.first_error() {
            return vec![Err(self.abort_needed("producing tombstones", error)); n];
        }
        self.finish(TransactionPending::Open {
            events: n,
            enqueued,
        })
        .await
    }

    fn broker_health(&self) -> Option<Arc<BrokerHealth>> {
        Some(self.inner.health())
    }

    /// A new producer with the reloaded settings (the topics and the `transactional.id` stay);
    /// it is initialised and reads the topic back before the next batch.
    fn reconfigure(&mut self, settings: &KafkaConfig) -> Result<(), String> {
        if self.fenced.is_some() {
            return Err("fenced: this daemon no longer publishes".into());
        }
        self.inner
            .reconfigure(settings)
            .map_err(|e| e.to_string())?;
        self.needs_init = true;
        self.needs_read_back = true;
        self.needs_abort = false;
        self.began = None;
        Ok(())
    }
}

/// Commits, calling again while librdkafka says the commit may still complete.
fn commit(producer: &super::HealthProducer, timeout: Duration) -> Result<(), KafkaError> {
    // rust-rdkafka's commit_transaction flushes first, and its flush sleeps up to 100 ms at a
    // time while librdkafka still counts a message whose report was already delivered (the
    // producer's poll thread serves the reports): wait for that count here in 1 ms steps.
    let drained = Instant::now() + timeout;
    while producer.flush(Duration::ZERO).is_err() && Instant::now() < drained {
        std::thread::sleep(Duration::from_millis(1));
    }
    let deadline = Instant::now() + timeout * 2;
    loop {
        match producer.commit_transaction(timeout) {
            Err(KafkaError::Transaction(e))
                if e.is_retriable() && !e.txn_requires_abort() && Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(100));
            }
            other => return other,
        }
    }
}

/// The highest history id committed on the topic, from the newest records a `read_committed`
/// consumer sees in each partition; `None` when no partition's newest record carries one (an
/// empty topic, or one written before exactly-once mode).
fn read_back(settings: &KafkaConfig) -> Result<Option<i64>, KafkaError> {
    let consumer: BaseConsumer = client_config(settings)
        .set("group.id", "presenced-read-back")
        .set("isolation.level", "read_committed")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        // The end of a partition shows as an empty fetch, which the broker holds this long.
        .set("fetch.wait.max.ms", "20")
        .create()?;
    let wait = Duration::from_secs(10);
    let topic = settings.topic.as_str();
    let metadata = consumer.fetch_metadata(Some(topic), wait)?;
    let mut windows: Vec<(i32, i64, i64, i64)> = Vec::new(); // (partition, low, high, window)
    for p in metadata
        .topics()
        .iter()
        .filter(|t| t.name() == topic)
        .flat_map(|t| t.partitions())
    {
        let (low, high) = consumer.fetch_watermarks(topic, p.id(), wait)?;
        if high > low {
            windows.push((p.id(), low, high, 256));
        }
    }
    let mut highest = None;
    // Each pass reads every open partition's window from its end at once. A window holding
    // only records of aborted transactions (a crash's unfinished batch) grows and is read again.
    while !windows.is_empty() {
        let mut assignment = TopicPartitionList::new();
        for &(partition, low, high, window) in &windows {
            let start = (high - window).max(low);
            assignment.add_partition_offset(topic, partition, Offset::Offset(start))?;
        }
        consumer.assign(&assignment)?;
        let newest = read_to_end(&consumer, windows.len(), wait * 3)?;
        let mut again = Vec::new();
        for (partition, low, high, window) in windows {
            match newest.get(&partition) {
                Some(id) => highest = highest.max(*id),
                None if (high - window).max(low) == low => {}
                None => again.push((partition, low, high, window * 4)),
            }
        }
        windows = again;
    }
    Ok(highest)
}

/// Reads the assigned partitions to their ends; for each partition that had a visible record,
/// the history id of the newest one (`None` inside when it carries none).
fn read_to_end(
    consumer: &BaseConsumer,
    partitions: usize,
    timeout: Duration,
) -> Result<std::collections::HashMap<i32, Option<i64>>, KafkaError> {
    let mut newest = std::collections::HashMap::new();
    let mut ended = std::collections::HashSet::new();
    let deadline = Instant::now() + timeout;
    while ended.len() < partitions {
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                let id = m.headers().and_then(|h| {
                    h.iter()
                        .find(|h| h.key == HISTORY_ID_HEADER)
                        .and_then(|h| std::str::from_utf8(h.value?).ok()?.parse::<i64>().ok())
                });
                newest.insert(m.partition(), id);
            }
            Some(Err(KafkaError::PartitionEOF(partition))) => {
                ended.insert(partition);
            }
            Some(Err(e)) => return Err(e),
            None if Instant::now() > deadline => {
                return Err(KafkaError::MetadataFetch(
                    RDKafkaErrorCode::OperationTimedOut,
                ))
            }
            None => {}
        }
    }
    Ok(newest)
}
