//! The exactly-once sink: each outbox batch, with its state-topic records, in one Kafka
//! transaction, and the publish mark read back from the topic whenever a producer starts or a
//! commit's outcome is unknown.
//!
//! Why no duplicate reaches a `read_committed` consumer: a batch is visible only once its
//! transaction commits, and the publish mark moves after the commit. A crash between the two
//! leaves the mark behind what the topic has; the next start calls `init_transactions` (which
//! aborts whatever a previous producer with the same `transactional.id` left open and fences
//! it), reads back the highest `presenced_history_id` committed on the topic, and moves the mark
//! there before sending anything.
//!
//! Two producers ("lanes", with the ids `ID` and `ID-b`) take turns, so that one transaction's
//! commit overlaps the next one's sending: a producer can only begin a transaction once its
//! last one is committed, and a commit is a round trip during which the broker would otherwise
//! idle. Order still holds: a batch is produced only after every record of the batch before it
//! was acknowledged (so on every partition its offsets come after), and it commits only after
//! the batch before it committed; when a commit fails, the batch after it is aborted too. The
//! committed batches are therefore always a prefix of the outbox, which the read-back relies on.
//!
//! librdkafka sorts transactional errors into retriable (call again), abortable (abort, then
//! send the batch again) and fatal (the producer is unusable: re-create it). Fencing is fatal
//! too, but re-creating would fence the daemon that fenced us, and the two would take turns:
//! a fenced sink stops for good.

mod failures;

use super::health::BrokerHealth;
use super::read_back::{Ownership, TopicPosition};
use super::{KafkaEncoder, KafkaSetupError, KafkaSink, Records};
use crate::publish::kafka::KafkaConfig;
use crate::publish::sink::Sink;
use crate::publish::DeliveryError;
use crate::store::OutboxEvent;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::Producer;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A started transaction, or why none could start.
#[derive(Debug)]
pub enum TransactionPending {
    /// The batch is in an open transaction.
    Open {
        /// Events in it.
        events: usize,
        /// The producer it is open on.
        lane: usize,
        /// Its place in the order transactions were started.
        number: u64,
    },
    /// The transaction could not begin or take the records.
    Failed {
        /// Events of the batch.
        events: usize,
        /// Why.
        error: DeliveryError,
    },
}

/// One transactional producer and what it still has to do.
struct Lane {
    sink: KafkaSink,
    id: String,
    /// `init_transactions` is due: the producer is new.
    needs_init: bool,
    /// The open transaction must be aborted before the next begins.
    needs_abort: bool,
    /// A commit's outcome is unknown: the producer is to be re-created, never aborted.
    commit_unknown: bool,
    /// When the open transaction began: a fencing error while it is younger than the
    /// transaction timeout means another daemon took over, not that the broker timed us out.
    began: Option<Instant>,
    /// The history ids of the first and last events of the open transaction's batch (for
    /// tombstones: the first id after the last committed batch, and none).
    first_id: Option<i64>,
    last_id: Option<i64>,
    /// Held by the lane's transactional call in progress.
    turn: Arc<std::sync::Mutex<()>>,
}

/// The Kafka sink of `kafka.delivery = "exactly-once"`.
pub struct TransactionalSink {
    lanes: [Lane; 2],
    /// The lane the next transaction begins on.
    next_lane: usize,
    next_number: u64,
    /// The records of the last transaction started, not yet known to be acknowledged.
    unsettled: Option<(u64, super::Enqueued)>,
    /// Acknowledgement outcomes of started transactions, awaited before the next one began.
    settled: HashMap<u64, Option<DeliveryError>>,
    /// A transaction failed: those started after it are aborted, not committed.
    poisoned: bool,
    /// The topic must be read back before the next batch: a producer is new, or a commit's
    /// outcome is unknown.
    needs_read_back: bool,
    /// Set once another producer with our id took over; never cleared.
    fenced: Option<String>,
    /// Fenced on a transaction older than the transaction timeout, whose batch began at this
    /// history id: the broker may have timed it out, or another daemon may have taken over.
    /// The topic tells which before any producer is re-created (which would fence the other).
    fencing_unclear: Option<i64>,
    /// The newest history id known committed on the topic: by this sink, or found by a read-back.
    committed_through: Option<i64>,
    /// Standby: producers are initialised only while this instance holds the active's lease,
    /// so that a deposed active never fences the new one's producers.
    lease: Option<Arc<crate::im::CallLease>>,
}

impl std::fmt::Debug for TransactionalSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TransactionalSink")
            .field("topic", &self.lanes[0].sink.settings.topic)
            .field("transactional_id", &self.lanes[0].id)
            .finish()
    }
}

/// The `transactional.id` of each lane: the configured one, and a second derived from it.
pub fn lane_ids(base: &str) -> [String; 2] {
    [base.to_owned(), format!("{base}-b")]
}

impl TransactionalSink {
    /// The sink for app `sdkappid`; the topics are checked (created when configured to) as for
    /// [`KafkaSink::connect`]. The flag says whether the brokers answered.
    pub async fn connect(
        settings: &KafkaConfig,
        sdkappid: u64,
    ) -> Result<(TransactionalSink, bool), KafkaSetupError> {
        super::warn_ignored_settings(settings);
        let base = settings.transactional_id_for(sdkappid);
        let health = Arc::new(BrokerHealth::default());
        let lane = |id: String| -> Result<Lane, KafkaSetupError> {
            let producer = super::create_producer(settings, Some(&id), &health)
                .map_err(KafkaSetupError::Client)?;
            let sink = KafkaSink {
                producer,
                health: health.clone(),
                settings: Box::new(settings.clone()),
                sdkappid,
                refused_rounds: 0,
                transactional_id: Some(id.clone()),
            };
            Ok(Lane {
                sink,
                id,
                needs_init: true,
                needs_abort: false,
                commit_unknown: false,
                began: None,
                first_id: None,
                last_id: None,
                turn: Arc::default(),
            })
        };
        let [first, second] = lane_ids(&base);
        let lanes = [lane(first)?, lane(second)?];
        let reachable = lanes[0].sink.check_topic().await?;
        tracing::info!(
            transactional_id = %base,
            "exactly-once delivery: each batch is one Kafka transaction (two producers take turns: {base} and {base}-b)"
        );
        let sink = TransactionalSink {
            lanes,
            next_lane: 0,
            next_number: 0,
            unsettled: None,
            settled: HashMap::new(),
            poisoned: false,
            needs_read_back: true,
            fenced: None,
            fencing_unclear: None,
            committed_through: None,
            lease: None,
        };
        Ok((sink, reachable))
    }

    /// How many partitions the events topic and the state topic have (see
    /// [`KafkaSink::partition_counts`]).
    pub async fn partition_counts(&self) -> Vec<(String, i32)> {
        self.lanes[0].sink.partition_counts().await
    }

    /// Initialises producers (which fences any other holder of the ids) only while `lease` is
    /// held: a standby active's.
    pub fn require_lease(&mut self, lease: Arc<crate::im::CallLease>) {
        self.lease = Some(lease);
    }

    /// What the producers learnt about the brokers.
    pub fn health(&self) -> Arc<BrokerHealth> {
        self.lanes[0].sink.health()
    }

    fn settings(&self) -> &KafkaConfig {
        &self.lanes[0].sink.settings
    }

    fn timeout(&self) -> Duration {
        Duration::from_millis(self.settings().transaction_timeout_ms)
    }

    /// Runs a blocking transactional call of a lane's producer on a helper thread. A lane's calls
    /// take turns: one whose caller went away (a round cut short at a stop) still holds the
    /// turn until librdkafka returns.
    async fn blocking<R: Send + 'static>(
        &self,
        lane: usize,
        call: impl FnOnce(&super::HealthProducer) -> R + Send + 'static,
    ) -> R {
        let producer = self.lanes[lane].sink.producer.clone();
        let turn = self.lanes[lane].turn.clone();
        tokio::task::spawn_blocking(move || {
            let _turn = turn.lock().unwrap_or_else(|e| e.into_inner());
            call(&producer)
        })
        .await
        .expect("a producer call does not panic")
    }

    /// The acknowledgement outcome of transaction `number`, waiting for it if needed.
    async fn acknowledged(&mut self, number: u64) -> Option<DeliveryError> {
        match self.unsettled.take() {
            Some((n, enqueued)) if n == number => enqueued.settle_all().await,
            other => {
                self.unsettled = other;
                self.settled.remove(&number).flatten()
            }
        }
    }

    /// Begins a transaction on the next lane and hands it the records, once every record of the
    /// transaction before has been acknowledged.
    async fn begin(&mut self, n: usize, enqueue: Enqueue<'_>) -> TransactionPending {
        if let Some((number, enqueued)) = self.unsettled.take() {
            let outcome = enqueued.settle_all().await;
            let refused = outcome.is_some();
            self.settled.insert(number, outcome);
            if refused {
                // The batch before fails at its finish; this one would be aborted after it.
                let error = DeliveryError::Broker("an earlier batch was refused".into());
                return TransactionPending::Failed { events: n, error };
            }
        }
        if let Some(id) = &self.fenced {
            let error = DeliveryError::Fenced(id.clone());
            return TransactionPending::Failed { events: n, error };
        }
        if self.poisoned {
            // An earlier batch will be sent again, and this one after it.
            let error = DeliveryError::Broker("an earlier transaction failed".into());
            return TransactionPending::Failed { events: n, error };
        }
        let lane = self.next_lane;
        if let Err(e) = self.lanes[lane].sink.producer.begin_transaction() {
            let error = self.failed(lane, "beginning a transaction", e);
            return TransactionPending::Failed { events: n, error };
        }
        self.lanes[lane].began = Some(Instant::now());
        (self.lanes[lane].first_id, self.lanes[lane].last_id) = match &enqueue {
            Enqueue::Batch(events, _) => (
                events.first().map(|e| e.history_id),
                events.last().map(|e| e.history_id),
            ),
            Enqueue::Tombstones(_) => (self.committed_through.map(|c| c + 1), None),
        };
        let sink = &self.lanes[lane].sink;
        let enqueued = match enqueue {
            Enqueue::Batch(events, records) => sink.enqueue_batch(events, records).await,
            Enqueue::Tombstones(ids) => sink.enqueue_tombstones(ids).await,
        };
        if let Some(error) = enqueued.first_error() {
            let error = self.abort_needed(lane, "producing", error);
            return TransactionPending::Failed { events: n, error };
        }
        let number = self.next_number;
        self.next_number += 1;
        self.next_lane = 1 - lane;
        self.unsettled = Some((number, enqueued));
        TransactionPending::Open {
            events: n,
            lane,
            number,
        }
    }

    /// Gets both producers ready with nothing in flight: a producer whose commit's outcome is
    /// unknown re-created, what a failure left open aborted, new producers initialised.
    async fn prepare(&mut self) -> Result<(), DeliveryError> {
        if let Some(id) = &self.fenced {
            return Err(DeliveryError::Fenced(id.clone()));
        }
        self.unsettled = None;
        self.settled.clear();
        let timeout = self.timeout();
        for lane in 0..2 {
            if self.lanes[lane].commit_unknown {
                self.recreate(lane);
                if self.lanes[lane].commit_unknown {
                    return Err(DeliveryError::Broker(
                        "re-creating the transactional producer failed".into(),
                    ));
                }
            }
            // A transaction still open here was started and never finished: the publisher
            // dropped its batch (a stop, a reload or a failure before it). It goes.
            if self.lanes[lane].began.is_some() {
                self.lanes[lane].needs_abort = true;
                self.needs_read_back = true;
            }
            if self.lanes[lane].needs_abort {
                match self
                    .blocking(lane, move |p| p.abort_transaction(timeout))
                    .await
                {
                    Ok(()) => {
                        self.lanes[lane].needs_abort = false;
                        self.lanes[lane].began = None;
                    }
                    Err(e) => return Err(self.failed(lane, "aborting the transaction", e)),
                }
            }
            if self.lanes[lane].needs_init {
                if self.lease.as_ref().is_some_and(|l| !l.held()) {
                    return Err(DeliveryError::Broker(
                        "not initialising producers: this instance no longer holds the standby active's lease".into(),
                    ));
                }
                match self
                    .blocking(lane, move |p| p.init_transactions(timeout))
                    .await
                {
                    Ok(()) => self.lanes[lane].needs_init = false,
                    Err(e) => return Err(self.failed(lane, "initialising transactions", e)),
                }
            }
        }
        self.poisoned = false;
        Ok(())
    }
}

/// What a transaction carries.
enum Enqueue<'a> {
    Batch(&'a [OutboxEvent], Vec<Records>),
    Tombstones(&'a [String]),
}

impl Sink for TransactionalSink {
    type Encoder = KafkaEncoder;
    type Pending = TransactionPending;
    type Settings = KafkaConfig;

    fn encoder(&self) -> KafkaEncoder {
        self.lanes[0].sink.encoder().with_history_ids()
    }

    /// Two transactions at a time, one per producer: one commits while the next one sends.
    fn window(&self) -> usize {
        2
    }

    /// Aborts what a failure left open, initialises new producers, and reads back the highest
    /// history id committed on the topic when a commit's outcome is unknown. The publisher
    /// calls it with nothing in flight.
    async fn recover(
        &mut self,
        floor: &HashMap<i32, i64>,
    ) -> Result<Option<TopicPosition>, DeliveryError> {
        if let Some(id) = &self.fenced {
            return Err(DeliveryError::Fenced(id.clone()));
        }
        if let Some(first) = self.fencing_unclear {
            self.settle_fencing(first, floor).await?;
        }
        self.prepare().await?;
        if !self.needs_read_back {
            return Ok(None);
        }
        let committed = self.read_topic_back(floor).await?;
        self.committed_through = committed.as_ref().map(|c| c.history_id);
        self.needs_read_back = false;
        let committed_through = committed.as_ref().map(|c| c.history_id);
        if self.health().held() {
            // Held, it reads back every few seconds: said once by the publisher.
            tracing::debug!(committed_through, "read back the topic");
        } else {
            tracing::info!(
                committed_through,
                "read back the topic: this app's events up to this history id are committed there"
            );
        }
        Ok(committed)
    }

    async fn start(&mut self, events: &[OutboxEvent], records: Vec<Records>) -> TransactionPending {
        self.begin(events.len(), Enqueue::Batch(events, records))
            .await
    }

    async fn finish(&mut self, pending: TransactionPending) -> Vec<Result<(), DeliveryError>> {
        let (lane, number, n) = match pending {
            TransactionPending::Failed { events, error } => return vec![Err(error); events],
            TransactionPending::Open {
                events,
                lane,
                number,
            } => (lane, number, events),
        };
        // Every record acknowledged first: the commit's own flush then has nothing to wait for
        // (rust-rdkafka's flush waits in steps of up to 100 ms for delivery reports another
        // thread serves, which cost a tenth of a second a transaction).
        let acknowledged = self.acknowledged(number).await;
        if self.poisoned {
            // One before this failed: this one is aborted with it, at the next recovery.
            self.lanes[lane].needs_abort = true;
            let error = DeliveryError::Broker("an earlier transaction failed".into());
            return vec![Err(error); n];
        }
        if let Some(error) = acknowledged {
            let error = self.abort_needed(lane, "producing", error);
            return vec![Err(error); n];
        }
        let timeout = self.timeout();
        match self.blocking(lane, move |p| commit(p, timeout)).await {
            Ok(()) => {
                self.lanes[lane].began = None;
                if let Some(last) = self.lanes[lane].last_id {
                    self.committed_through = Some(last);
                }
                self.health().delivered();
                vec![Ok(()); n]
            }
            Err(e) => vec![Err(self.commit_failed(lane, e)); n],
        }
    }

    /// At a stop: a transaction left open would hold back `read_committed` consumers of its
    /// partitions until the broker times it out, so it is aborted now (its batch is still in
    /// the outbox).
    /// A fenced sink aborts what its other producer (not fenced yet) left open. A call still
    /// running from a round cut short (a commit) finishes first: a lane's calls take turns, so
    /// lanes whose turn is free go first, and none is waited for past `timeout`.
    async fn flush(&self, timeout: Duration) {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut lanes: Vec<usize> = (0..2).collect();
        lanes.sort_by_key(|&lane| self.lanes[lane].turn.try_lock().is_err());
        for lane in lanes {
            let l = &self.lanes[lane];
            if l.began.is_none() || l.needs_init || l.sink.producer.client().fatal_error().is_some()
            {
                continue;
            }
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let abort = self.blocking(lane, move |p| p.abort_transaction(left));
            match tokio::time::timeout_at(deadline, abort).await {
                Ok(Ok(())) => {}
                // Nothing open after all: the cut round's commit finished.
                Ok(Err(e)) if e.rdkafka_error_code() == Some(RDKafkaErrorCode::State) => {}
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "the open transaction could not be aborted at stop; the broker aborts it after kafka.transaction_timeout_ms")
                }
                Err(_) => {
                    tracing::warn!("a transactional call still running kept the open transaction from being aborted at stop; the broker aborts it after kafka.transaction_timeout_ms")
                }
            }
        }
    }

    fn has_state_topic(&self) -> bool {
        self.lanes[0].sink.has_state_topic()
    }

    fn reads_back(&self) -> Option<&str> {
        self.needs_read_back
            .then_some(self.settings().topic.as_str())
    }

    fn read_back_again(&mut self) {
        self.needs_read_back = true;
    }

    /// Tombstones go in a transaction of their own, committed before the events that follow
    /// (the publisher sends them with nothing in flight).
    async fn deliver_tombstones(&mut self, user_ids: &[String]) -> Vec<Result<(), DeliveryError>> {
        let n = user_ids.len();
        if self.needs_read_back || self.fenced.is_some() {
            // The publisher recovers (and checks what the topic holds) before tombstones.
            let error = DeliveryError::Broker("the topic is to be read back first".into());
            return vec![Err(error); n];
        }
        if let Err(e) = self.prepare().await {
            return vec![Err(e); n];
        }
        let pending = self.begin(n, Enqueue::Tombstones(user_ids)).await;
        self.finish(pending).await
    }

    fn broker_health(&self) -> Option<Arc<BrokerHealth>> {
        Some(self.health())
    }

    /// New producers with the reloaded settings (the topics and the `transactional.id` stay),
    /// both made before either replaces its lane's, so a rejected setting changes nothing. The
    /// publisher calls it between rounds, with no transactional call out; the new producers'
    /// `init_transactions` aborts whatever the old ones left open, and the topic is read back
    /// before the next batch.
    fn reconfigure(&mut self, settings: &KafkaConfig) -> Result<(), String> {
        if self.fenced.is_some() {
            return Err("fenced: this daemon no longer publishes".into());
        }
        let settings = KafkaConfig {
            topic: self.settings().topic.clone(),
            state_topic: self.settings().state_topic.clone(),
            ..settings.clone()
        };
        let health = self.health();
        let mut made = Vec::with_capacity(2);
        for lane in &self.lanes {
            made.push(
                super::create_producer(&settings, Some(&lane.id), &health)
                    .map_err(|e| e.to_string())?,
            );
        }
        for (lane, producer) in self.lanes.iter_mut().zip(made) {
            let old = std::mem::replace(&mut lane.sink.producer, producer);
            // Destroying a producer whose brokers are unreachable can block for a moment.
            tokio::task::spawn_blocking(move || drop(old));
            *lane.sink.settings = settings.clone();
            lane.needs_init = true;
            lane.needs_abort = false;
            lane.commit_unknown = false;
            lane.began = None;
        }
        self.needs_read_back = true;
        self.unsettled = None;
        self.settled.clear();
        self.poisoned = false;
        Ok(())
    }

    /// A round of this sink waits on transactional calls that run on helper threads; cut short,
    /// a call would go on behind the next round's back (a commit landing after a reload, an
    /// old producer's initialisation fencing the new one).
    fn rounds_interruptible(&self) -> bool {
        false
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
