//! The topics at start-up: checked, and created when configured to (replicas, min.insync.replicas,
//! the state topic compacted).

use super::health::ProducerHealthContext;
use super::{client_config, KafkaSetupError, KafkaSink};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::producer::Producer;
use std::time::Duration;

impl KafkaSink {
    /// Checks that the topic exists, creating it when configured to. `Ok(false)` means the
    /// brokers could not be reached: the caller goes on and the backlog waits for them.
    pub async fn check_topic(&self) -> Result<bool, KafkaSetupError> {
        let mut wanted = vec![(self.settings.topic.clone(), false)];
        if let Some(state) = self.state_topic() {
            wanted.push((state.to_owned(), true));
        }
        for (topic, compacted) in wanted {
            if !self.check_one(&topic, compacted).await? {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// How many partitions the events topic and the state topic (when configured) have; a
    /// topic the brokers do not describe is left out.
    pub async fn partition_counts(&self) -> Vec<(String, i32)> {
        let mut topics = vec![self.settings.topic.clone()];
        topics.extend(self.state_topic().map(str::to_owned));
        let mut out = Vec::new();
        for name in topics {
            let Ok(metadata) = self.topic_metadata(&name).await else {
                continue;
            };
            let count = metadata
                .topics()
                .iter()
                .find(|t| t.name() == name && t.error().is_none())
                .and_then(|t| i32::try_from(t.partitions().len()).ok())
                .filter(|n| *n > 0);
            if let Some(count) = count {
                out.push((name, count));
            }
        }
        out
    }

    /// The brokers' metadata of `topic`, asked off the async runtime.
    async fn topic_metadata(
        &self,
        topic: &str,
    ) -> Result<rdkafka::metadata::Metadata, rdkafka::error::KafkaError> {
        let producer = self.producer.clone();
        let name = topic.to_owned();
        tokio::task::spawn_blocking(move || {
            producer
                .client()
                .fetch_metadata(Some(&name), Duration::from_secs(5))
        })
        .await
        .expect("metadata task does not panic")
    }

    async fn check_one(&self, topic: &str, compacted: bool) -> Result<bool, KafkaSetupError> {
        let exists = match self.topic_metadata(topic).await {
            Err(e) => {
                tracing::warn!(brokers = %self.settings.brokers, error = %e, "Kafka is not reachable; events wait in the outbox");
                return Ok(false);
            }
            Ok(m) => m
                .topics()
                .iter()
                .any(|t| t.name() == topic && t.error().is_none() && !t.partitions().is_empty()),
        };
        if exists {
            return Ok(true);
        }
        if !self.settings.create_topic {
            return Err(KafkaSetupError::TopicMissing {
                topic: topic.to_owned(),
                brokers: self.settings.brokers.clone(),
            });
        }
        self.create_topic(topic, compacted).await?;
        Ok(true)
    }

    async fn create_topic(&self, name: &str, compacted: bool) -> Result<(), KafkaSetupError> {
        let admin: AdminClient<ProducerHealthContext> = client_config(&self.settings)
            .create_with_context(ProducerHealthContext {
                health: self.health.clone(),
                brokers: self.settings.brokers.clone(),
            })
            .map_err(KafkaSetupError::Client)?;
        let min_isr = self.settings.topic_min_insync_replicas.to_string();
        let mut topic = NewTopic::new(
            name,
            self.settings.topic_partitions,
            TopicReplication::Fixed(self.settings.topic_replication_factor),
        );
        if self.settings.topic_min_insync_replicas > 0 {
            topic = topic.set("min.insync.replicas", &min_isr);
        }
        if compacted {
            topic = topic.set("cleanup.policy", "compact");
            for (key, value) in &self.settings.state_topic_config {
                topic = topic.set(key, value);
            }
        }
        let fail = |message: String| KafkaSetupError::CreateTopic {
            topic: name.to_owned(),
            message,
        };
        let results = admin
            .create_topics(
                [&topic],
                &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
            )
            .await
            .map_err(|e| fail(e.to_string()))?;
        for r in results {
            match r {
                Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((_, code)) => return Err(fail(code.to_string())),
            }
        }
        tracing::info!(
            topic = name,
            partitions = self.settings.topic_partitions,
            replication_factor = self.settings.topic_replication_factor,
            min_insync_replicas = self.settings.topic_min_insync_replicas,
            compacted,
            "created Kafka topic"
        );
        Ok(())
    }
}
