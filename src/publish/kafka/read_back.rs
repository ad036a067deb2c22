//! Reading back what a `read_committed` consumer sees at the end of each partition: the newest
//! record this database published (its app's `ce_source`, with a history id), which the
//! publisher checks against its own history before it moves the publish mark there.
//!
//! Records of other producers (another app on a shared topic, `presenced replay`, anything
//! without the history id header) are skipped, and the search goes on further back; records
//! below the partition's floor (`presenced kafka adopt`) are not this database's.

use super::{client_config, KafkaConfig, HISTORY_ID_HEADER};
use rdkafka::client::ClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Headers, Message};
use rdkafka::{Offset, TopicPartitionList};
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// The newest record of this app with a history id, as the read-back found it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicPosition {
    /// Its `presenced_history_id` header.
    pub history_id: i64,
    /// Its `ce_id` header: the event id of the history row that was sent.
    pub event_id: String,
    /// Where it is.
    pub partition: i32,
    /// Its offset there.
    pub offset: i64,
}

/// The read-back consumer's context: librdkafka reports a partition's end through its error
/// callback too, which rust-rdkafka's default context logs at ERROR on every healthy start.
struct ReadBackContext;

impl ClientContext for ReadBackContext {
    fn error(&self, error: KafkaError, reason: &str) {
        match error.rdkafka_error_code() {
            Some(RDKafkaErrorCode::PartitionEOF) | None => {
                tracing::debug!(%error, reason, "read-back consumer")
            }
            _ => tracing::warn!(%error, reason, "reading back the events topic"),
        }
    }

    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, log_message: &str) {
        tracing::debug!(?level, fac, log_message, "librdkafka (read-back)");
    }
}

impl ConsumerContext for ReadBackContext {}

/// Which records are this database's: `ce_source` of its app, at or above the floor.
pub struct Ownership<'a> {
    /// The app's CloudEvents source.
    pub source: &'a str,
    /// Per partition, the offset below which nothing is this database's.
    pub floor: &'a HashMap<i32, i64>,
}

/// The newest record of this app committed on the topic, from each partition's end backwards;
/// `None` when no partition holds one above its floor.
pub(super) fn read_back(
    settings: &KafkaConfig,
    own: &Ownership<'_>,
) -> Result<Option<TopicPosition>, KafkaError> {
    let consumer: BaseConsumer<ReadBackContext> = client_config(settings)
        .set("group.id", "presenced-read-back")
        .set("isolation.level", "read_committed")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        // The end of a partition shows as an empty fetch, which the broker holds this long.
        .set("fetch.wait.max.ms", "20")
        .create_with_context(ReadBackContext)?;
    let wait = Duration::from_secs(10);
    let topic = settings.topic.as_str();
    let metadata = consumer.fetch_metadata(Some(topic), wait)?;
    // (partition, lowest offset to read, high watermark, window)
    let mut windows: Vec<(i32, i64, i64, i64)> = Vec::new();
    for p in metadata
        .topics()
        .iter()
        .filter(|t| t.name() == topic)
        .flat_map(|t| t.partitions())
    {
        let (low, high) = consumer.fetch_watermarks(topic, p.id(), wait)?;
        let low = low.max(own.floor.get(&p.id()).copied().unwrap_or(0));
        if high > low {
            windows.push((p.id(), low, high, 256));
        }
    }
    let mut newest: Option<TopicPosition> = None;
    // Each pass reads every open partition's window from its end at once. A window holding no
    // record of ours (a crash's aborted batch, another producer's records) grows and is read
    // again, down to the floor.
    while !windows.is_empty() {
        let mut assignment = TopicPartitionList::new();
        for &(partition, low, high, window) in &windows {
            let start = (high - window).max(low);
            assignment.add_partition_offset(topic, partition, Offset::Offset(start))?;
        }
        consumer.assign(&assignment)?;
        let found = read_to_end(&consumer, own, windows.len(), wait * 3)?;
        let mut again = Vec::new();
        for (partition, low, high, window) in windows {
            match found.get(&partition) {
                Some(position) => {
                    if newest
                        .as_ref()
                        .is_none_or(|n| position.history_id > n.history_id)
                    {
                        newest = Some(position.clone());
                    }
                }
                None if (high - window).max(low) == low => {}
                None => again.push((partition, low, high, window * 4)),
            }
        }
        windows = again;
    }
    Ok(newest)
}

/// The value of header `key`, as text.
fn header<'m>(m: &'m rdkafka::message::BorrowedMessage<'_>, key: &str) -> Option<&'m str> {
    let headers = m.headers()?;
    headers
        .iter()
        .find(|h| h.key == key)
        .and_then(|h| std::str::from_utf8(h.value?).ok())
}

/// Reads the assigned partitions to their ends; for each partition that holds a record of ours
/// in what was read, the newest one.
fn read_to_end(
    consumer: &BaseConsumer<ReadBackContext>,
    own: &Ownership<'_>,
    partitions: usize,
    timeout: Duration,
) -> Result<HashMap<i32, TopicPosition>, KafkaError> {
    let mut newest = HashMap::new();
    let mut ended = std::collections::HashSet::new();
    let deadline = Instant::now() + timeout;
    while ended.len() < partitions {
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                let floor = own.floor.get(&m.partition()).copied().unwrap_or(0);
                if m.offset() < floor || header(&m, "ce_source") != Some(own.source) {
                    continue;
                }
                let Some(history_id) =
                    header(&m, HISTORY_ID_HEADER).and_then(|v| v.parse::<i64>().ok())
                else {
                    continue;
                };
                let event_id = header(&m, "ce_id").unwrap_or_default().to_owned();
                let position = TopicPosition {
                    history_id,
                    event_id,
                    partition: m.partition(),
                    offset: m.offset(),
                };
                newest.insert(m.partition(), position);
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

/// Per partition of the topic, its high watermark (the offset after its last record): where
/// `presenced kafka adopt` puts this database's floor.
pub fn high_watermarks(settings: &KafkaConfig) -> Result<Vec<(i32, i64)>, KafkaError> {
    let consumer: BaseConsumer<ReadBackContext> = client_config(settings)
        .set("group.id", "presenced-adopt")
        .set("isolation.level", "read_committed")
        .set("enable.auto.commit", "false")
        .create_with_context(ReadBackContext)?;
    let wait = Duration::from_secs(10);
    let topic = settings.topic.as_str();
    let metadata = consumer.fetch_metadata(Some(topic), wait)?;
    let mut out = Vec::new();
    for p in metadata
        .topics()
        .iter()
        .filter(|t| t.name() == topic)
        .flat_map(|t| t.partitions())
    {
        let (_, high) = consumer.fetch_watermarks(topic, p.id(), wait)?;
        out.push((p.id(), high));
    }
    if out.is_empty() {
        return Err(KafkaError::MetadataFetch(RDKafkaErrorCode::UnknownTopic));
    }
    Ok(out)
}
