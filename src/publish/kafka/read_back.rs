//! Reading back what a `read_committed` consumer sees at the end of each partition: the highest
//! history id already committed on the topic, where the publish mark moves before anything is
//! sent again.

use super::{client_config, KafkaConfig, HISTORY_ID_HEADER};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Headers, Message};
use rdkafka::{Offset, TopicPartitionList};
use std::time::{Duration, Instant};

/// The highest history id committed on the topic, from the newest records a `read_committed`
/// consumer sees in each partition; `None` when no partition's newest record carries one (an
/// empty topic, or one written before exactly-once mode).
pub(super) fn read_back(settings: &KafkaConfig) -> Result<Option<i64>, KafkaError> {
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
