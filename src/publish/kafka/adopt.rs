//! What `presenced kafka adopt` reads of the events topic: where each partition ends now, and
//! which of this database's unsent events the topic already holds.

use super::read_back::{committed_reader, own_record, watermarks, Ownership};
use super::KafkaConfig;
use rdkafka::consumer::Consumer;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::{Offset, TopicPartitionList};
use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

/// Per partition of the topic, its high watermark (the offset after its last record): where
/// `presenced kafka adopt` puts this database's floor.
pub fn high_watermarks(settings: &KafkaConfig) -> Result<Vec<(i32, i64)>, KafkaError> {
    let consumer = committed_reader(settings, "presenced-adopt")?;
    let out: Vec<(i32, i64)> = watermarks(&consumer, &settings.topic)?
        .into_iter()
        .map(|(partition, _, high)| (partition, high))
        .collect();
    if out.is_empty() {
        return Err(KafkaError::MetadataFetch(RDKafkaErrorCode::UnknownTopic));
    }
    Ok(out)
}

/// The event ids (`ce_id`) of every committed record of this app on the topic whose history id
/// is above `after`, read from each partition's start: what `presenced kafka adopt` checks the
/// database's unsent events against.
pub fn own_event_ids_after(
    settings: &KafkaConfig,
    source: &str,
    after: i64,
) -> Result<HashSet<String>, KafkaError> {
    let consumer = committed_reader(settings, "presenced-adopt")?;
    let topic = settings.topic.as_str();
    let mut assignment = TopicPartitionList::new();
    for (partition, low, high) in watermarks(&consumer, topic)? {
        if high > low {
            assignment.add_partition_offset(topic, partition, Offset::Offset(low))?;
        }
    }
    let mut ids = HashSet::new();
    let partitions = assignment.count();
    if partitions == 0 {
        return Ok(ids);
    }
    consumer.assign(&assignment)?;
    let floor = HashMap::new();
    let own = Ownership {
        source,
        floor: &floor,
    };
    let mut ended = HashSet::new();
    let mut last_progress = Instant::now();
    while ended.len() < partitions {
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                last_progress = Instant::now();
                if let Some(position) = own_record(&m, &own).filter(|p| p.history_id > after) {
                    ids.insert(position.event_id);
                }
            }
            Some(Err(KafkaError::PartitionEOF(partition))) => {
                ended.insert(partition);
            }
            Some(Err(e)) => return Err(e),
            None if last_progress.elapsed() > Duration::from_secs(30) => {
                return Err(KafkaError::MetadataFetch(
                    RDKafkaErrorCode::OperationTimedOut,
                ))
            }
            None => {}
        }
    }
    Ok(ids)
}
