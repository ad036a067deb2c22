//! The Kafka sink: an idempotent producer (acks=all), enqueued strictly in outbox order so that
//! one account's events keep their order on its partition.
//!
//! Messages never time out in librdkafka's queue (`message.timeout.ms=0`): a timed-out message
//! leaves a gap that later messages of the same partition skip over (librdkafka's
//! INTRODUCTION.md, "Message timeout considerations"), and re-sending it from the outbox would
//! put an account's seq 2 after its seq 4. Other errors that could leave a gap are fatal
//! (`enable.gapless.guarantee`), and a fatal error re-creates the producer. A broker outage is
//! therefore a wait, not a failure: the outbox holds everything meanwhile.

mod adopt;
mod config;
mod encode;
pub(crate) mod health;
mod read_back;
mod topics;
mod transactional;

pub use adopt::{high_watermarks, own_event_ids_after};
pub use config::{is_secret_property, Delivery, KafkaConfig};
pub use encode::{KafkaEncoder, Records, HISTORY_ID_HEADER};
pub use read_back::{EndAwareContext, TopicPosition};
pub use transactional::{lane_ids, TransactionalSink};

use super::sink::Sink;
use super::DeliveryError;
use crate::store::OutboxEvent;
use health::{BrokerHealth, ProducerHealthContext};
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer};
use rdkafka::util::Timeout;
use std::sync::Arc;
use std::time::Duration;

/// Why the Kafka sink could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum KafkaSetupError {
    /// librdkafka rejected the client configuration.
    #[error("Kafka client configuration rejected: {0}")]
    Client(KafkaError),
    /// The topic does not exist and is not to be created.
    #[error("Kafka topic {topic:?} does not exist on {brokers}; create it, or set kafka.create_topic = true")]
    TopicMissing {
        /// The topic.
        topic: String,
        /// The brokers asked.
        brokers: String,
    },
    /// Partitions were added to the events topic since this database last published to it.
    #[error("Kafka topic {topic:?} has {now} partitions; it had {was} when this database last published to it. Adding partitions moves accounts to other partitions, where consumers can read an account's later events before its earlier ones. Publish to a new topic with the partitions you need (kafka.topic), or accept the new layout with `presenced kafka adopt --config FILE` (docs/OPERATIONS.md, \"Growing the events topic\")")]
    PartitionsAdded {
        /// The topic.
        topic: String,
        /// Partitions it had.
        was: i32,
        /// Partitions it has.
        now: i32,
    },
    /// Creating the topic failed.
    #[error("creating Kafka topic {topic:?} failed: {message}")]
    CreateTopic {
        /// The topic.
        topic: String,
        /// What the broker said.
        message: String,
    },
}

/// A batch handed to librdkafka whose acknowledgements are still to come.
pub struct Enqueued(Vec<Vec<Result<DeliveryFuture, DeliveryError>>>);

impl Enqueued {
    /// Waits for every record's delivery report; the first failure, if any.
    async fn settle_all(self) -> Option<DeliveryError> {
        let mut first = None;
        for f in self.0.into_iter().flatten() {
            if let Err(e) = settle(f).await {
                first.get_or_insert(e);
            }
        }
        first
    }

    /// The first record librdkafka refused to take, if any.
    fn first_error(&self) -> Option<DeliveryError> {
        self.0
            .iter()
            .flatten()
            .find_map(|r| r.as_ref().err().cloned())
    }
}

impl KafkaSetupError {
    /// Whether the configuration is at fault (rather than the brokers' state).
    pub fn is_configuration(&self) -> bool {
        matches!(
            self,
            KafkaSetupError::TopicMissing { .. }
                | KafkaSetupError::Client(_)
                | KafkaSetupError::PartitionsAdded { .. }
        )
    }
}

impl std::fmt::Debug for Enqueued {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Enqueued({} events)", self.0.len())
    }
}

type HealthProducer = FutureProducer<ProducerHealthContext>;

/// The Kafka sink: one idempotent producer, records enqueued strictly in outbox order.
pub struct KafkaSink {
    producer: HealthProducer,
    health: Arc<BrokerHealth>,
    // Boxed: the sink is a variant of `Sink`, whose other variants are small.
    settings: Box<KafkaConfig>,
    sdkappid: u64,
    /// Rounds in a row in which the broker refused everything (not merely timed out).
    refused_rounds: u32,
    /// Set for the exactly-once sink's producer (see `transactional.rs`).
    transactional_id: Option<String>,
}

impl std::fmt::Debug for KafkaSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaSink")
            .field("topic", &self.settings.topic)
            .finish()
    }
}

/// The librdkafka configuration of the admin client: the brokers, the client id and the
/// operator's properties (security settings among them).
pub fn client_config(k: &KafkaConfig) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &k.brokers)
        .set("client.id", &k.client_id);
    for (key, value) in &k.properties {
        c.set(key, value);
    }
    c
}

/// The producer's configuration. Free-form properties go after the tunable defaults so an
/// operator can override them, but not the settings that no loss and per-account order depend
/// on: idempotence with acks from every in-sync replica, and either (at-least-once) no local
/// message timeout and a fatal error instead of a gap, or (exactly-once, with a
/// `transactional_id`) a transactional producer, whose messages time out with the transaction
/// (librdkafka requires it) and whose failed transaction is aborted and sent again whole.
pub fn producer_config(k: &KafkaConfig, transactional_id: Option<&str>) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &k.brokers)
        .set("client.id", &k.client_id)
        .set("compression.type", &k.compression)
        .set("linger.ms", k.linger_ms.to_string());
    for (key, value) in &k.properties {
        c.set(key, value);
    }
    c.set("enable.idempotence", "true").set("acks", "all");
    match transactional_id {
        None => c
            .set("message.timeout.ms", "0")
            .set("enable.gapless.guarantee", "true"),
        Some(id) => c
            .remove("message.timeout.ms")
            .remove("enable.gapless.guarantee")
            .set("transactional.id", id)
            .set(
                "transaction.timeout.ms",
                k.transaction_timeout_ms.to_string(),
            ),
    };
    c
}

/// Says once, at start-up, which configured options have no effect.
fn warn_ignored_settings(settings: &KafkaConfig) {
    if settings.message_timeout_ms.is_some() {
        tracing::warn!("kafka.message_timeout_ms is ignored: in at-least-once mode events wait in the producer until Kafka acknowledges them (a timeout could reorder an account's events), in exactly-once mode they time out with the transaction; remove it from the configuration");
    }
}

fn create_producer(
    settings: &KafkaConfig,
    transactional_id: Option<&str>,
    health: &Arc<BrokerHealth>,
) -> Result<HealthProducer, KafkaError> {
    let mut config = producer_config(settings, transactional_id);
    // librdkafka's own `debug` property asks for its debug lines, which rust-rdkafka otherwise
    // filters out before they reach the log (at debug level, `presenced::publish=debug`).
    if settings.properties.contains_key("debug") {
        config.set_log_level(rdkafka::config::RDKafkaLogLevel::Debug);
    }
    config.create_with_context(ProducerHealthContext {
        health: health.clone(),
        brokers: settings.brokers.clone(),
    })
}

impl KafkaSink {
    /// A sink with these settings (the topics are not checked; see [`KafkaSink::connect`]).
    pub fn new(settings: &KafkaConfig, sdkappid: u64) -> Result<Self, KafkaSetupError> {
        let health = Arc::new(BrokerHealth::default());
        let producer = create_producer(settings, None, &health).map_err(KafkaSetupError::Client)?;
        Ok(KafkaSink {
            producer,
            health,
            settings: Box::new(settings.clone()),
            sdkappid,
            refused_rounds: 0,
            transactional_id: None,
        })
    }

    /// Replaces the producer with one made from `settings` (brokers, credentials, TLS, tuning;
    /// the topics stay as they are). Messages the old producer still held are dropped with it:
    /// they are in the outbox, and the publisher sends them again from its mark.
    pub fn reconfigure(&mut self, settings: &KafkaConfig) -> Result<(), KafkaError> {
        let settings = KafkaConfig {
            topic: self.settings.topic.clone(),
            state_topic: self.settings.state_topic.clone(),
            ..settings.clone()
        };
        let producer = create_producer(&settings, self.transactional_id.as_deref(), &self.health)?;
        let old = std::mem::replace(&mut self.producer, producer);
        // Destroying a producer whose brokers are unreachable can block for a moment.
        tokio::task::spawn_blocking(move || drop(old));
        *self.settings = settings;
        self.refused_rounds = 0;
        Ok(())
    }

    /// Sets up the sink as the daemon and `replay` both do: the producer, then the topics
    /// checked (created when configured to). The flag says whether the brokers answered; when
    /// they did not, the caller may go on (the daemon: the outbox waits) or give up (`replay`).
    pub async fn connect(
        settings: &KafkaConfig,
        sdkappid: u64,
    ) -> Result<(KafkaSink, bool), KafkaSetupError> {
        warn_ignored_settings(settings);
        let sink = KafkaSink::new(settings, sdkappid)?;
        let reachable = sink.check_topic().await?;
        Ok((sink, reachable))
    }

    /// What the producer learnt about the brokers: outages and refused credentials.
    pub fn health(&self) -> Arc<BrokerHealth> {
        self.health.clone()
    }

    fn state_topic(&self) -> Option<&str> {
        Some(self.settings.state_topic.as_str()).filter(|t| !t.is_empty())
    }

    /// Whether a compacted current-state topic is configured.
    pub fn has_state_topic(&self) -> bool {
        self.state_topic().is_some()
    }

    /// What encodes this sink's records; it runs on the store thread, ahead of the sending.
    pub fn encoder(&self) -> KafkaEncoder {
        KafkaEncoder::new(self.sdkappid, self.has_state_topic())
    }

    /// Hands a batch to librdkafka, strictly in order, without waiting for acknowledgements, so
    /// the publisher can prepare the next batch while the broker works on this one.
    pub async fn enqueue_batch(&self, events: &[OutboxEvent], records: Vec<Records>) -> Enqueued {
        let mut pending = Vec::with_capacity(events.len());
        for (e, r) in events.iter().zip(records) {
            let key = e.record.user_id.as_bytes();
            let record = FutureRecord::to(&self.settings.topic)
                .key(key)
                .payload(&r.value)
                .headers(r.headers);
            let mut futures = vec![self.enqueue(record).await];
            if let (Some(state_topic), Some(state)) = (self.state_topic(), &r.state_value) {
                let record = FutureRecord::to(state_topic).key(key).payload(state);
                futures.push(self.enqueue(record).await);
            }
            pending.push(futures);
        }
        Enqueued(pending)
    }

    /// Waits for a batch's acknowledgements; one result per event, in order. With a state
    /// topic, an event counts as delivered only when its current-state record was too.
    pub async fn settle_batch(&mut self, enqueued: Enqueued) -> Vec<Result<(), DeliveryError>> {
        let mut out = Vec::with_capacity(enqueued.0.len());
        for futures in enqueued.0 {
            let mut result = Ok(());
            for f in futures {
                let r = settle(f).await;
                if result.is_ok() {
                    result = r;
                }
            }
            out.push(result);
        }
        self.after_round(&out);
        out
    }

    /// Tombstones (key, no value) on the state topic for accounts that left the watch list.
    pub async fn deliver_tombstones(
        &mut self,
        user_ids: &[String],
    ) -> Vec<Result<(), DeliveryError>> {
        let enqueued = self.enqueue_tombstones(user_ids).await;
        self.settle_batch(enqueued).await
    }

    /// Hands tombstones to librdkafka, in order, one per account; nothing without a state topic.
    async fn enqueue_tombstones(&self, user_ids: &[String]) -> Enqueued {
        let Some(state_topic) = self.state_topic() else {
            return Enqueued(user_ids.iter().map(|_| Vec::new()).collect());
        };
        let mut pending = Vec::with_capacity(user_ids.len());
        for id in user_ids {
            let record: FutureRecord<'_, [u8], [u8]> =
                FutureRecord::to(state_topic).key(id.as_bytes());
            pending.push(vec![self.enqueue(record).await]);
        }
        Enqueued(pending)
    }

    fn after_round(&mut self, out: &[Result<(), DeliveryError>]) {
        let refused = !out.is_empty()
            && out
                .iter()
                .all(|r| matches!(r, Err(DeliveryError::Broker(_) | DeliveryError::Canceled)));
        self.refused_rounds = if refused { self.refused_rounds + 1 } else { 0 };
        if out.iter().any(Result::is_err) {
            self.recreate_if_broken();
        }
    }

    /// Enqueues one record in order; QueueFull is back-pressure, so it waits and tries again.
    async fn enqueue<K, P>(
        &self,
        mut record: FutureRecord<'_, K, P>,
    ) -> Result<DeliveryFuture, DeliveryError>
    where
        K: rdkafka::message::ToBytes + ?Sized,
        P: rdkafka::message::ToBytes + ?Sized,
    {
        loop {
            match self.producer.send_result(record) {
                Ok(fut) => return Ok(fut),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    record = back;
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                Err((e, _)) => return Err(DeliveryError::from_kafka(&e)),
            }
        }
    }

    /// After a fatal error (e.g. the idempotent producer lost its sequence) librdkafka refuses
    /// every message; some brokers also keep refusing a producer whose messages timed out
    /// during an outage. Either way: replace the producer, and the outbox re-drives whatever was
    /// not acknowledged.
    fn recreate_if_broken(&mut self) {
        let reason = match self.producer.client().fatal_error() {
            Some((code, reason)) => format!("fatal error {code:?}: {reason}"),
            None if self.refused_rounds >= 3 => {
                format!(
                    "the broker refused every message {} rounds in a row",
                    self.refused_rounds
                )
            }
            None => return,
        };
        tracing::error!(%reason, "re-creating the Kafka producer");
        match create_producer(
            &self.settings,
            self.transactional_id.as_deref(),
            &self.health,
        ) {
            Ok(p) => {
                self.producer = p;
                self.refused_rounds = 0;
            }
            Err(e) => {
                tracing::error!(error = %e, "re-creating the Kafka producer failed; will retry")
            }
        }
    }

    /// Waits up to `timeout` for everything in flight.
    pub async fn flush(&self, timeout: Duration) {
        let producer = self.producer.clone();
        let _ = tokio::task::spawn_blocking(move || producer.flush(Timeout::After(timeout))).await;
    }
}

async fn settle(enqueued: Result<DeliveryFuture, DeliveryError>) -> Result<(), DeliveryError> {
    match enqueued?.await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err((e, _))) => Err(DeliveryError::from_kafka(&e)),
        Err(_) => Err(DeliveryError::Canceled),
    }
}

/// Batches enqueued in librdkafka before the oldest must be acknowledged. More than one keeps
/// the broker busy while a batch is settled; a few also cover a new producer's first second
/// (connection, producer id), when nothing is acknowledged yet.
const BATCHES_IN_FLIGHT: usize = 4;

impl Sink for KafkaSink {
    type Encoder = KafkaEncoder;
    type Pending = Enqueued;
    type Settings = KafkaConfig;

    fn encoder(&self) -> KafkaEncoder {
        KafkaSink::encoder(self)
    }

    fn window(&self) -> usize {
        BATCHES_IN_FLIGHT
    }

    async fn start(&mut self, events: &[OutboxEvent], records: Vec<Records>) -> Enqueued {
        self.enqueue_batch(events, records).await
    }

    async fn finish(&mut self, pending: Enqueued) -> Vec<Result<(), DeliveryError>> {
        self.settle_batch(pending).await
    }

    async fn flush(&self, timeout: Duration) {
        KafkaSink::flush(self, timeout).await
    }

    fn has_state_topic(&self) -> bool {
        KafkaSink::has_state_topic(self)
    }

    async fn deliver_tombstones(&mut self, user_ids: &[String]) -> Vec<Result<(), DeliveryError>> {
        KafkaSink::deliver_tombstones(self, user_ids).await
    }

    fn broker_health(&self) -> Option<Arc<BrokerHealth>> {
        Some(self.health())
    }

    fn reconfigure(&mut self, settings: &KafkaConfig) -> Result<(), String> {
        KafkaSink::reconfigure(self, settings).map_err(|e| e.to_string())
    }
}
