//! `[kafka]`: the brokers, the topics, and the producer's settings. Secrets among the
//! free-form properties are never shown.

use crate::secret::REDACTED;
use crate::validation::{Invalid, Range, Section};
use serde::{Deserialize, Serialize, Serializer};
use std::collections::BTreeMap;

/// `Debug` is written by hand: a derived one would print `properties` with the SASL password.
#[derive(Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaConfig {
    /// Bootstrap servers, comma-separated.
    pub brokers: String,
    /// The transitions topic.
    pub topic: String,
    /// librdkafka's `client.id`.
    pub client_id: String,
    /// none, gzip, snappy, lz4 or zstd.
    pub compression: String,
    /// Create missing topics at start-up.
    pub create_topic: bool,
    /// Partitions of a created topic.
    pub topic_partitions: i32,
    /// Replicas of a created topic; -1 takes the broker's `default.replication.factor`.
    pub topic_replication_factor: i32,
    /// `min.insync.replicas` of a created topic; 0 takes the broker's default.
    pub topic_min_insync_replicas: u32,
    /// Optional compacted topic keyed by account with its current state; a tombstone when an
    /// account leaves the watch list. Empty: off.
    pub state_topic: String,
    /// Extra topic configs for the state topic when it is created (it is always compacted).
    pub state_topic_config: BTreeMap<String, String>,
    /// Outbox rows read and sent per round in at-least-once mode (four rounds in flight).
    pub batch_size: usize,
    /// `at-least-once` (an idempotent producer; consumers drop redeliveries by `event_id`) or
    /// `exactly-once` (transactions; `read_committed` consumers see each event once).
    pub delivery: Delivery,
    /// The producer's `transactional.id` in exactly-once mode. Empty: `presenced-<sdkappid>-<topic>`.
    /// Two daemons with the same id fence each other: the newer one wins.
    pub transactional_id: String,
    /// How long a transaction may stay open before the broker aborts it (exactly-once mode), ms.
    pub transaction_timeout_ms: u64,
    /// Events per transaction at most (exactly-once mode; one transaction is in flight at a
    /// time, so it is larger than an at-least-once batch).
    pub transaction_events: usize,
    /// librdkafka's `linger.ms`.
    pub linger_ms: u64,
    /// No longer used: messages wait in librdkafka until acknowledged (a local timeout could
    /// reorder an account's events). Accepted so that older files still load; a warning says so.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message_timeout_ms: Option<u64>,
    /// Bound on how long shutdown waits for acknowledgements.
    pub flush_timeout_secs: f64,
    /// Free-form librdkafka properties (SASL, TLS, ...). Values of keys that look secret are
    /// redacted wherever configuration is shown.
    #[serde(serialize_with = "redact_properties")]
    pub properties: BTreeMap<String, String>,
}

impl std::fmt::Debug for KafkaConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        struct Redacted<'a>(&'a BTreeMap<String, String>);
        impl std::fmt::Debug for Redacted<'_> {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.debug_map()
                    .entries(self.0.iter().map(|(k, v)| {
                        (
                            k,
                            if is_secret_property(k) {
                                REDACTED
                            } else {
                                v.as_str()
                            },
                        )
                    }))
                    .finish()
            }
        }
        f.debug_struct("KafkaConfig")
            .field("brokers", &self.brokers)
            .field("topic", &self.topic)
            .field("client_id", &self.client_id)
            .field("compression", &self.compression)
            .field("create_topic", &self.create_topic)
            .field("topic_partitions", &self.topic_partitions)
            .field("topic_replication_factor", &self.topic_replication_factor)
            .field("topic_min_insync_replicas", &self.topic_min_insync_replicas)
            .field("state_topic", &self.state_topic)
            .field("state_topic_config", &self.state_topic_config)
            .field("batch_size", &self.batch_size)
            .field("delivery", &self.delivery)
            .field("transactional_id", &self.transactional_id)
            .field("transaction_timeout_ms", &self.transaction_timeout_ms)
            .field("transaction_events", &self.transaction_events)
            .field("linger_ms", &self.linger_ms)
            .field("message_timeout_ms", &self.message_timeout_ms)
            .field("flush_timeout_secs", &self.flush_timeout_secs)
            .field("properties", &Redacted(&self.properties))
            .finish()
    }
}

impl Default for KafkaConfig {
    fn default() -> Self {
        KafkaConfig {
            brokers: "127.0.0.1:9092".into(),
            topic: "presenced.transitions".into(),
            client_id: "presenced".into(),
            compression: "lz4".into(),
            create_topic: false,
            topic_partitions: 6,
            topic_replication_factor: -1,
            topic_min_insync_replicas: 0,
            state_topic: String::new(),
            state_topic_config: BTreeMap::new(),
            batch_size: 5_000,
            delivery: Delivery::AtLeastOnce,
            transactional_id: String::new(),
            transaction_timeout_ms: 60_000,
            transaction_events: 20_000,
            linger_ms: 5,
            message_timeout_ms: None,
            flush_timeout_secs: 10.0,
            properties: BTreeMap::new(),
        }
    }
}

/// How events are delivered to Kafka.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Delivery {
    /// An idempotent producer: nothing is lost, and a redelivery after a failure is possible
    /// (consumers drop it by `event_id`).
    AtLeastOnce,
    /// A transactional producer: each batch in one transaction, the publish mark read back from
    /// the topic after a restart, so a `read_committed` consumer sees each event exactly once.
    ExactlyOnce,
}

impl KafkaConfig {
    /// The `transactional.id` of exactly-once mode for app `sdkappid`.
    pub fn transactional_id_for(&self, sdkappid: u64) -> String {
        match self.transactional_id.trim() {
            "" => format!("presenced-{sdkappid}-{}", self.topic),
            id => id.to_owned(),
        }
    }
}

/// Whether a librdkafka property holds a credential.
pub fn is_secret_property(key: &str) -> bool {
    let k = key.to_ascii_lowercase();
    [
        "password",
        "secret",
        "sasl.jaas",
        "ssl.key.pem",
        "ssl_key",
        "token",
    ]
    .iter()
    .any(|m| k.contains(m))
}

fn redact_properties<S: Serializer>(p: &BTreeMap<String, String>, s: S) -> Result<S::Ok, S::Error> {
    let shown: BTreeMap<&str, &str> = p
        .iter()
        .map(|(k, v)| {
            (
                k.as_str(),
                if is_secret_property(k) {
                    REDACTED
                } else {
                    v.as_str()
                },
            )
        })
        .collect();
    shown.serialize(s)
}

impl KafkaConfig {
    /// What a Kafka sink needs besides the ranges: checked when `sink.kind = "kafka"`.
    pub fn check_for_sink(&self) -> Result<(), Invalid> {
        if self.brokers.trim().is_empty() {
            return Err(Invalid::new(
                "kafka.brokers",
                "is required when sink.kind = \"kafka\"",
            ));
        }
        if self.topic.trim().is_empty() {
            return Err(Invalid::new(
                "kafka.topic",
                "is required when sink.kind = \"kafka\"",
            ));
        }
        if self.state_topic.trim() == self.topic.trim() {
            // Current-state records would sit among the events: consumers would read them as
            // events, and the exactly-once read-back would have to skip them.
            return Err(Invalid::new(
                "kafka.state_topic",
                format!(
                    "{:?} is the events topic (kafka.topic); give the current-state records a compacted topic of their own, or leave it empty",
                    self.state_topic
                ),
            ));
        }
        if !["none", "gzip", "snappy", "lz4", "zstd"].contains(&self.compression.as_str()) {
            return Err(Invalid::new(
                "kafka.compression",
                format!(
                    "{:?} is not one of none, gzip, snappy, lz4, zstd",
                    self.compression
                ),
            ));
        }
        Ok(())
    }
}

impl Section for KafkaConfig {
    fn ranges(&self) -> Vec<Range> {
        vec![
            Range::new(
                "kafka.topic_partitions",
                f64::from(self.topic_partitions),
                1.0,
                100_000.0,
            ),
            Range::new(
                "kafka.topic_min_insync_replicas",
                f64::from(self.topic_min_insync_replicas),
                0.0,
                32_767.0,
            ),
            Range::new("kafka.batch_size", self.batch_size as f64, 1.0, 1_000_000.0),
            Range::new("kafka.linger_ms", self.linger_ms as f64, 0.0, 900_000.0),
            Range::new(
                "kafka.transaction_events",
                self.transaction_events as f64,
                1.0,
                1_000_000.0,
            ),
            // librdkafka takes 1 s to 15 min (the broker's default transaction.max.timeout.ms).
            Range::new(
                "kafka.transaction_timeout_ms",
                self.transaction_timeout_ms as f64,
                1_000.0,
                900_000.0,
            ),
            Range::new(
                "kafka.flush_timeout_secs",
                self.flush_timeout_secs,
                0.0,
                3_600.0,
            ),
        ]
    }

    /// The replica settings depend on each other.
    fn check(&self) -> Result<(), Invalid> {
        let replicas = self.topic_replication_factor;
        if !(replicas == -1 || (1..=i32::from(i16::MAX)).contains(&replicas)) {
            return Err(Invalid::new(
                "kafka.topic_replication_factor",
                format!("must be -1 (the broker's default) or from 1 to 32767, got {replicas}"),
            ));
        }
        let min_isr = self.topic_min_insync_replicas;
        if replicas > 0 && i64::from(min_isr) > i64::from(replicas) {
            return Err(Invalid::new(
                "kafka.topic_min_insync_replicas",
                format!("{min_isr} is more than kafka.topic_replication_factor ({replicas}): nothing could be written"),
            ));
        }
        Ok(())
    }
}
