//! The active's proof of life, and how an instance becomes the active: a transactional
//! producer of its own (`<transactional_id>-standby`) commits a heartbeat record every
//! `heartbeat_ms`. Claiming the role is `init_transactions` on that id (which fences the
//! previous holder) followed by a committed claim record: of several claimants, only the one
//! whose producer was initialised last can commit, so exactly one wins.

use crate::im::CallLease;
use crate::publish::kafka::{producer_config, KafkaConfig};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// The schema of a heartbeat record.
pub const SCHEMA: &str = "presenced.heartbeat.v1";

/// What a heartbeat says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Beat {
    /// This instance just became the active.
    Claim,
    /// The active is alive.
    Alive,
    /// The active stopped sweeping for a clean hand-over: a follower takes over at once.
    Handover,
    /// A follower is alive (sent without a transaction): followers that time out together
    /// claim in the order of their names, not all at once.
    Following,
}

/// A heartbeat record's value.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HeartbeatV1 {
    /// Always [`SCHEMA`].
    pub schema: String,
    /// The app.
    pub sdkappid: u64,
    /// The instance that sent it.
    pub instance: String,
    /// What it says.
    pub beat: Beat,
    /// When it was sent (Unix ms, the sender's clock; for people, never for decisions).
    pub sent_at: i64,
    /// The sender's process id (for `presenced standby handover` on its host).
    pub pid: u32,
    /// The sender's `kafka.transactional_id` (as its publisher uses it): instances that differ
    /// would not fence each other, so a follower that sees another one refuses to take over.
    #[serde(default)]
    pub transactional_id: String,
}

/// Why a heartbeat did not commit.
#[derive(Debug, thiserror::Error)]
pub enum HeartbeatError {
    /// Another instance initialised the heartbeat producer after this one: it is the active.
    #[error("fenced: another instance took over ({0})")]
    Fenced(String),
    /// Kafka did not take it in time; the lease was not renewed.
    #[error("{0}")]
    Failed(String),
}

/// The active's heartbeat producer.
pub struct Heartbeats {
    producer: ThreadedProducer<DefaultProducerContext>,
    transactional_id: String,
    topic: String,
    sdkappid: u64,
    instance: String,
    lease: Arc<CallLease>,
    /// Bound on one transactional call.
    timeout: Duration,
    /// One transaction at a time: a beat abandoned at a stop may still be running.
    turn: std::sync::Mutex<()>,
    /// Whether a committed beat renews the call lease.
    calls: std::sync::atomic::AtomicBool,
}

/// The `transactional.id` of the heartbeat producer.
pub fn heartbeat_transactional_id(base: &str) -> String {
    format!("{base}-standby")
}

fn fenced_or_failed(e: KafkaError) -> HeartbeatError {
    let fenced = matches!(
        e.rdkafka_error_code(),
        Some(RDKafkaErrorCode::Fenced | RDKafkaErrorCode::ProducerFenced)
    ) || matches!(&e, KafkaError::Transaction(t) if t.code() == RDKafkaErrorCode::Fenced
        || t.code() == RDKafkaErrorCode::ProducerFenced);
    match fenced {
        true => HeartbeatError::Fenced(e.to_string()),
        false => HeartbeatError::Failed(e.to_string()),
    }
}

impl Heartbeats {
    /// Claims the active role (blocking): fences whoever held the heartbeat producer, then
    /// commits a claim record. `Fenced` means another claimant won the race.
    pub fn claim(
        settings: &KafkaConfig,
        base_transactional_id: &str,
        topic: &str,
        sdkappid: u64,
        instance: &str,
        lease: Arc<CallLease>,
        bound: Duration,
    ) -> Result<Heartbeats, HeartbeatError> {
        let id = heartbeat_transactional_id(base_transactional_id);
        // Retries of `init_transactions` (the coordinator aborting a dead active's open beat)
        // every 50-100 ms, not backing off to a second: a claimant that decided before another
        // claim was visible is initialised soon after it, within the confirmation's wait.
        let producer: ThreadedProducer<DefaultProducerContext> =
            producer_config(settings, Some(&id))
                .set("linger.ms", "0")
                .set("retry.backoff.ms", "50")
                .set("retry.backoff.max.ms", "100")
                .create()
                .map_err(|e| {
                    HeartbeatError::Failed(format!("creating the heartbeat producer: {e}"))
                })?;
        // Bounded well below the transaction timeout: a beat that takes longer proves nothing
        // (the lease is shorter), and a claim waiting on a moving coordinator is tried again.
        let timeout = bound;
        producer
            .init_transactions(timeout)
            .map_err(fenced_or_failed)?;
        let heartbeats = Heartbeats {
            producer,
            transactional_id: base_transactional_id.to_owned(),
            topic: topic.to_owned(),
            sdkappid,
            instance: instance.to_owned(),
            lease,
            timeout,
            turn: std::sync::Mutex::new(()),
            calls: std::sync::atomic::AtomicBool::new(true),
        };
        heartbeats.beat(Beat::Claim)?;
        Ok(heartbeats)
    }

    /// Commits one heartbeat (blocking) and renews the call lease from when it began (unless
    /// calls were stopped); returns that moment.
    pub fn beat(&self, beat: Beat) -> Result<Instant, HeartbeatError> {
        let _turn = self.turn.lock().unwrap_or_else(|e| e.into_inner());
        let began = Instant::now();
        let value = serde_json::to_vec(&HeartbeatV1 {
            schema: SCHEMA.into(),
            sdkappid: self.sdkappid,
            instance: self.instance.clone(),
            beat,
            sent_at: crate::model::now_millis(),
            pid: std::process::id(),
            transactional_id: self.transactional_id.clone(),
        })
        .expect("heartbeats serialize");
        let key = self.sdkappid.to_string();
        self.producer
            .begin_transaction()
            .map_err(fenced_or_failed)?;
        let sent = self
            .producer
            .send(BaseRecord::to(&self.topic).key(&key).payload(&value));
        if let Err((e, _)) = sent {
            let _ = self.producer.abort_transaction(self.timeout);
            return Err(fenced_or_failed(e));
        }
        match self.producer.commit_transaction(self.timeout) {
            Ok(()) => {
                if self.calls.load(std::sync::atomic::Ordering::Acquire) {
                    self.lease.renew(began);
                }
                Ok(began)
            }
            Err(e) => {
                let e = fenced_or_failed(e);
                if matches!(e, HeartbeatError::Failed(_)) {
                    // A commit that failed may be retried by librdkafka's next call; a new
                    // transaction needs this one finished either way.
                    let _ = self.producer.abort_transaction(self.timeout);
                }
                Err(e)
            }
        }
    }

    /// No more IM calls: the lease is given up and no longer renewed (heartbeats go on, so
    /// that followers wait while the active publishes what it has before handing over).
    pub fn stop_calls(&self) {
        self.calls
            .store(false, std::sync::atomic::Ordering::Release);
        self.lease.revoke();
    }
}

/// Commits a heartbeat every `every` until `until` is cancelled (after the active's run ended,
/// so that a hand-over's last publishing is not mistaken for a death). Cancels `active` and
/// says why when this instance must stand down: fenced (another took over: IM calls stop at
/// once), or no heartbeat committed within `lease` of the last one's start (the call lease ran
/// out at the same moment). `None` when `until` was cancelled.
pub async fn keep_alive(
    heartbeats: Arc<Heartbeats>,
    every: Duration,
    lease: Duration,
    until: CancellationToken,
    active: CancellationToken,
) -> Option<(&'static str, String)> {
    let mut last_began = Instant::now();
    let mut failing = false;
    loop {
        let next = tokio::time::Instant::now() + every;
        let h = heartbeats.clone();
        let beat = tokio::task::spawn_blocking(move || h.beat(Beat::Alive));
        let lease_end = tokio::time::Instant::from_std(last_began + lease);
        tokio::select! {
            _ = until.cancelled() => return None,
            _ = tokio::time::sleep_until(lease_end) => {
                heartbeats.stop_calls();
                active.cancel();
                return Some(("lease", "no heartbeat committed within the lease (standby.takeover_after_ms - standby.heartbeat_ms): IM calls stopped before a follower can take over".into()));
            }
            beat = beat => match beat.expect("a heartbeat does not panic") {
                Ok(began) => {
                    last_began = began;
                    if failing {
                        tracing::info!("heartbeats commit again");
                    }
                    failing = false;
                }
                Err(HeartbeatError::Fenced(e)) => {
                    heartbeats.stop_calls();
                    active.cancel();
                    return Some(("fenced", format!("another instance took over ({e})")));
                }
                Err(HeartbeatError::Failed(e)) => {
                    if !failing {
                        tracing::warn!(error = %e, "a heartbeat did not commit");
                    }
                    failing = true;
                }
            }
        }
        let lease_end = tokio::time::Instant::from_std(last_began + lease);
        tokio::select! {
            _ = until.cancelled() => return None,
            _ = tokio::time::sleep_until(next.min(lease_end)) => {}
        }
    }
}

/// Fences the publisher's producers of a previous active (blocking): `init_transactions` on
/// each of their `transactional.id`s, at once, aborts what they left open, so that reading the
/// topic to its end afterwards sees everything they will ever commit.
pub fn fence_publishers(
    settings: &KafkaConfig,
    ids: &[String],
    timeout: Duration,
) -> Result<(), HeartbeatError> {
    std::thread::scope(|scope| {
        let fencing: Vec<_> = ids
            .iter()
            .map(|id| {
                scope.spawn(move || {
                    let producer: ThreadedProducer<DefaultProducerContext> =
                        producer_config(settings, Some(id))
                            .set("retry.backoff.ms", "50")
                            .set("retry.backoff.max.ms", "100")
                            .create()
                            .map_err(|e| {
                                HeartbeatError::Failed(format!(
                                    "creating a producer to fence {id}: {e}"
                                ))
                            })?;
                    producer
                        .init_transactions(timeout)
                        .map_err(|e| HeartbeatError::Failed(format!("fencing {id}: {e}")))
                })
            })
            .collect();
        fencing
            .into_iter()
            .try_for_each(|f| f.join().expect("fencing does not panic"))
    })
}

/// Makes sure the heartbeat topic exists: created with one partition, the events topic's
/// replication and an hour's retention when `kafka.create_topic` allows.
pub async fn ensure_topic(settings: &KafkaConfig, topic: &str) -> Result<(), HeartbeatError> {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use rdkafka::client::DefaultClientContext;
    let admin: AdminClient<DefaultClientContext> = crate::publish::kafka::client_config(settings)
        .create()
        .map_err(|e| HeartbeatError::Failed(format!("creating an admin client: {e}")))?;
    let admin = Arc::new(admin);
    let describe = {
        let (admin, topic) = (admin.clone(), topic.to_owned());
        tokio::task::spawn_blocking(move || {
            admin
                .inner()
                .fetch_metadata(Some(&topic), Duration::from_secs(10))
                .map(|m| {
                    m.topics().iter().any(|t| {
                        t.name() == topic && t.error().is_none() && !t.partitions().is_empty()
                    })
                })
        })
    };
    let exists = describe
        .await
        .expect("describing a topic does not panic")
        .map_err(|e| HeartbeatError::Failed(format!("describing {topic}: {e}")))?;
    if exists {
        return Ok(());
    }
    if !settings.create_topic {
        return Err(HeartbeatError::Failed(format!(
            "the heartbeat topic {topic} does not exist and kafka.create_topic is off: create it (1 partition, the events topic's replication)"
        )));
    }
    let min_insync = settings.topic_min_insync_replicas.to_string();
    let mut new = NewTopic::new(
        topic,
        1,
        TopicReplication::Fixed(settings.topic_replication_factor),
    )
    .set("retention.ms", "3600000");
    if settings.topic_min_insync_replicas > 0 {
        new = new.set("min.insync.replicas", &min_insync);
    }
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    let created = admin
        .create_topics([&new], &options)
        .await
        .map_err(|e| HeartbeatError::Failed(format!("creating {topic}: {e}")))?;
    for result in created {
        match result {
            Ok(_) => tracing::info!(topic, "created the standby heartbeat topic"),
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((_, code)) => {
                return Err(HeartbeatError::Failed(format!("creating {topic}: {code}")))
            }
        }
    }
    Ok(())
}
