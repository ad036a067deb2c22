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

/// The context of a consumer that asks for partition ends (`enable.partition.eof`): librdkafka
/// reports each end through the error callback too, which rust-rdkafka's default context logs
/// at ERROR (rust-rdkafka issue 820), on every healthy start and, for a follower, after every
/// batch. Ends go to DEBUG; real errors are warnings naming the reader (`.0`).
pub struct EndAwareContext(pub &'static str);

impl ClientContext for EndAwareContext {
    fn error(&self, error: KafkaError, reason: &str) {
        match error.rdkafka_error_code() {
            Some(RDKafkaErrorCode::PartitionEOF) | None => {
                tracing::debug!(%error, reason, reader = self.0, "a partition's end")
            }
            _ => tracing::warn!(%error, reason, reader = self.0, "reading the events topic"),
        }
    }

    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, log_message: &str) {
        tracing::debug!(?level, fac, log_message, reader = self.0, "librdkafka");
    }
}

impl ConsumerContext for EndAwareContext {}

/// Which records are this database's: `ce_source` of its app, at or above the floor.
pub struct Ownership<'a> {
    /// The app's CloudEvents source.
    pub source: &'a str,
    /// Per partition, the offset below which nothing is this database's.
    pub floor: &'a HashMap<i32, i64>,
}

/// A `read_committed` consumer of the events topic that reports each partition's end.
pub(super) fn committed_reader(
    settings: &KafkaConfig,
    group: &str,
) -> Result<BaseConsumer<EndAwareContext>, KafkaError> {
    client_config(settings)
        .set("group.id", group)
        .set("isolation.level", "read_committed")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        // The end of a partition shows as an empty fetch, which the broker holds this long.
        .set("fetch.wait.max.ms", "20")
        .create_with_context(EndAwareContext("read-back"))
}

/// Each partition of the events topic with its low and high watermarks; with
/// `read_committed`, the high watermark is the last stable offset.
pub(super) fn watermarks(
    consumer: &BaseConsumer<EndAwareContext>,
    topic: &str,
) -> Result<Vec<(i32, i64, i64)>, KafkaError> {
    let wait = Duration::from_secs(10);
    let metadata = consumer.fetch_metadata(Some(topic), wait)?;
    let mut out = Vec::new();
    for p in metadata
        .topics()
        .iter()
        .filter(|t| t.name() == topic)
        .flat_map(|t| t.partitions())
    {
        let (low, high) = consumer.fetch_watermarks(topic, p.id(), wait)?;
        out.push((p.id(), low, high));
    }
    Ok(out)
}

/// A partition still searched: its offsets from `low` up, and the range read next.
struct Search {
    partition: i32,
    /// The lowest offset that may hold a record of ours (the floor, or the low watermark).
    low: i64,
    /// The range read in this pass: from `start` up to `end` (exclusive).
    start: i64,
    end: i64,
}

/// How many records the first pass reads from each partition's end; each pass after reads four
/// times as many just below.
const FIRST_WINDOW: i64 = 256;

/// The newest record of this app committed on the topic, from each partition's end backwards;
/// `None` when no partition holds one above its floor.
pub(super) fn read_back(
    settings: &KafkaConfig,
    own: &Ownership<'_>,
) -> Result<Option<TopicPosition>, KafkaError> {
    let consumer = committed_reader(settings, "presenced-read-back")?;
    let wait = Duration::from_secs(10);
    let topic = settings.topic.as_str();
    let mut searches = Vec::new();
    // The floors that hold here: a stale one is dropped.
    let mut floors = HashMap::new();
    for (partition, low, high) in watermarks(&consumer, topic)? {
        let floor = own.floor.get(&partition).copied().unwrap_or(0);
        let low = if floor > high {
            // The topic was created anew under its name, or the brokers are another cluster's:
            // the adopted offsets mean nothing here.
            tracing::warn!(
                topic,
                partition = partition,
                floor,
                end = high,
                "the partition ends below the offset `presenced kafka adopt` recorded for it (the topic was created anew, or these are other brokers): the whole partition is read back"
            );
            low
        } else {
            floors.insert(partition, floor);
            low.max(floor)
        };
        if high > low {
            let start = (high - FIRST_WINDOW).max(low);
            searches.push(Search {
                partition,
                low,
                start,
                end: high,
            });
        }
    }
    let own = Ownership {
        source: own.source,
        floor: &floors,
    };
    let own = &own;
    let mut newest: Option<TopicPosition> = None;
    // Each pass reads every open partition's range at once. A range holding no record of ours
    // (a crash's aborted batch, other producers' records) is followed by the range below it,
    // four times as long, down to the floor.
    while !searches.is_empty() {
        let mut assignment = TopicPartitionList::new();
        for s in &searches {
            assignment.add_partition_offset(topic, s.partition, Offset::Offset(s.start))?;
        }
        consumer.assign(&assignment)?;
        // A partition paused at the end of the last pass stays paused across `assign`.
        consumer.resume(&assignment)?;
        let found = read_ranges(&consumer, own, &searches, wait * 3)?;
        let mut again = Vec::new();
        for s in searches {
            match found.get(&s.partition) {
                Some(position) => {
                    if newest
                        .as_ref()
                        .is_none_or(|n| position.history_id > n.history_id)
                    {
                        newest = Some(position.clone());
                    }
                }
                None if s.start == s.low => {}
                None => {
                    let window = (s.end - s.start) * 4;
                    again.push(Search {
                        start: (s.start - window).max(s.low),
                        end: s.start,
                        ..s
                    });
                }
            }
        }
        searches = again;
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

/// This database's record in `m`, if it is one.
pub(super) fn own_record(
    m: &rdkafka::message::BorrowedMessage<'_>,
    own: &Ownership<'_>,
) -> Option<TopicPosition> {
    let floor = own.floor.get(&m.partition()).copied().unwrap_or(0);
    if m.offset() < floor || header(m, "ce_source") != Some(own.source) {
        return None;
    }
    let history_id = header(m, HISTORY_ID_HEADER)?.parse::<i64>().ok()?;
    Some(TopicPosition {
        history_id,
        event_id: header(m, "ce_id").unwrap_or_default().to_owned(),
        partition: m.partition(),
        offset: m.offset(),
    })
}

/// Reads each search's range (a partition is done at the first record past its range, or at
/// its end); for each partition whose range holds a record of ours, the newest one. Gives up
/// when nothing arrives for `stall`: a long range is fine as long as records keep coming.
fn read_ranges(
    consumer: &BaseConsumer<EndAwareContext>,
    own: &Ownership<'_>,
    searches: &[Search],
    stall: Duration,
) -> Result<HashMap<i32, TopicPosition>, KafkaError> {
    let ends: HashMap<i32, i64> = searches.iter().map(|s| (s.partition, s.end)).collect();
    let mut newest = HashMap::new();
    let mut done = std::collections::HashSet::new();
    let mut last_progress = Instant::now();
    while done.len() < searches.len() {
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                let partition = m.partition();
                if done.contains(&partition) {
                    continue;
                }
                last_progress = Instant::now();
                if m.offset() >= ends.get(&partition).copied().unwrap_or(i64::MAX) {
                    done.insert(partition);
                    consumer.pause(&partition_list(consumer, partition)?)?;
                    continue;
                }
                if let Some(position) = own_record(&m, own) {
                    newest.insert(partition, position);
                }
            }
            Some(Err(KafkaError::PartitionEOF(partition))) => {
                let newly_done = done.insert(partition);
                if newly_done {
                    last_progress = Instant::now();
                }
            }
            Some(Err(e)) => return Err(e),
            None if last_progress.elapsed() > stall => {
                return Err(KafkaError::MetadataFetch(
                    RDKafkaErrorCode::OperationTimedOut,
                ))
            }
            None => {}
        }
    }
    Ok(newest)
}

/// The assigned topic-partition `partition`, to pause it.
fn partition_list(
    consumer: &BaseConsumer<EndAwareContext>,
    partition: i32,
) -> Result<TopicPartitionList, KafkaError> {
    let mut list = TopicPartitionList::new();
    for element in consumer.assignment()?.elements() {
        if element.partition() == partition {
            list.add_partition(element.topic(), partition);
        }
    }
    Ok(list)
}
