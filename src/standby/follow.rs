//! Following: a `read_committed` consumer of the events topic (from where this database left
//! off) and of the heartbeat topic (from its end), on a thread of its own; the events it reads
//! are applied to the history in order, the position in the same transaction.

use super::decode::{decode, Record};
use super::heartbeat::{Beat, HeartbeatV1};
use super::StandbyError;
use crate::metrics::Metrics;
use crate::publish::kafka::{client_config, EndAwareContext, KafkaConfig};
use crate::store::{ReplicatedEvent, Store};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, ThreadedProducer};
use rdkafka::{Offset, TopicPartitionList};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// What the reading thread hands over.
enum Read {
    /// Events read (maybe none) and each partition's position after them.
    Events {
        events: Vec<ReplicatedEvent>,
        positions: Vec<(i32, i64)>,
        /// Each partition's last stable offset as last fetched.
        ends: Vec<(i32, i64)>,
        /// The newest record's timestamp (Unix ms).
        newest: Option<i64>,
        /// Partitions whose end the reader reached after these events.
        at_end: Vec<i32>,
    },
    /// A heartbeat of this app's active, when it arrived.
    Heartbeat(HeartbeatV1, Instant),
    /// A follower of this app is alive.
    Peer(String, Instant),
    /// An event of this app that cannot be read (skipped).
    Unreadable(String),
    /// The topics could not be read.
    Failed(String),
}

/// Why following ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FollowEnd {
    /// The daemon is stopping.
    Stopped,
    /// Time to take over: why.
    TakeOver(String),
}

/// Where following stands, for `/standby` and `standby status`.
#[derive(Debug, Clone, Default)]
pub struct FollowState {
    /// Events committed on the topic not applied yet.
    pub lag_events: i64,
    /// Age of the newest applied event while lagging, seconds.
    pub lag_seconds: f64,
    /// The instance whose heartbeat was seen last.
    pub active: Option<String>,
    /// Since that heartbeat, seconds.
    pub heartbeat_age: Option<f64>,
    /// Why this replica may not become the active, if so.
    pub ineligible: Option<String>,
}

/// A follower: the reading thread and what it applied.
pub struct Follower {
    rx: mpsc::Receiver<Read>,
    beats: mpsc::UnboundedReceiver<Read>,
    /// Stops both threads.
    stop: Arc<AtomicBool>,
    /// Stops the events' reader alone (restarted by a catch-up).
    reader_stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
    /// Partitions whose end the events' reader reached since it (re)started, with nothing read
    /// after.
    at_end: std::collections::HashSet<i32>,
    /// Why this replica may not become the active (it lacks part of the log), if so.
    ineligible: Option<String>,
    store: Store,
    topic: String,
    metrics: Arc<Metrics>,
    instance: String,
    /// Per partition, the next offset applied.
    applied: HashMap<i32, i64>,
    ends: HashMap<i32, i64>,
    newest: Option<i64>,
    last_beat: Option<(HeartbeatV1, Instant)>,
    /// The other followers, when each last said so.
    peers: HashMap<String, Instant>,
    /// When the heartbeat topic last gave anything (this follower's own announcements
    /// included): a follower that hears nothing, not even itself, cannot tell a silent active
    /// from a cut-off reader, and does not take over.
    last_heard: Option<Instant>,
    /// Since when it hears the heartbeat topic without a gap of two heartbeats: silence before
    /// that proves nothing about the active.
    hearing_since: Option<Instant>,
    /// Whether being unable to hear the heartbeat topic was said (once per episode).
    said_deaf: bool,
    started: Instant,
    settings: KafkaConfig,
    /// Says every `every` that this follower is alive.
    announcer: Option<ThreadedProducer<DefaultProducerContext>>,
    heartbeat_topic: String,
    sdkappid: u64,
    every: Duration,
    /// `kafka.transactional_id` as the publisher uses it: the active's must be the same.
    transactional_id: String,
}

impl Follower {
    /// Starts reading `topic` from this database's positions (a partition it never read from
    /// its beginning) and `heartbeat_topic` from its end.
    pub async fn start(
        settings: &KafkaConfig,
        heartbeat_topic: &str,
        sdkappid: u64,
        instance: &str,
        every: Duration,
        store: Store,
        metrics: Arc<Metrics>,
    ) -> Result<Follower, StandbyError> {
        let topic = settings.topic.clone();
        let positions = {
            let topic = topic.clone();
            store.call(move |db| db.replica_positions(&topic)).await?
        };
        let ineligible = store.call(|db| db.replica_incomplete()).await?;
        if let Some(why) = &ineligible {
            tracing::error!(reason = %why, "this replica lacks part of the events topic and will not become the active; seed its database from another instance's (docs/OPERATIONS.md, \"Two hosts\")");
        }
        let (beats_tx, beats) = mpsc::unbounded_channel();
        let stop = Arc::new(AtomicBool::new(false));
        let reader_stop = Arc::new(AtomicBool::new(false));
        let (rx, reader) = spawn_reader(
            settings,
            sdkappid,
            positions,
            stop.clone(),
            reader_stop.clone(),
        );
        let beat_reader = BeatReader {
            settings: settings.clone(),
            topic: heartbeat_topic.to_owned(),
            sdkappid,
            tx: beats_tx,
            stop: stop.clone(),
        };
        let threads = vec![
            reader,
            std::thread::Builder::new()
                .name("standby-beats".into())
                .spawn(move || beat_reader.run())
                .expect("a thread starts"),
        ];
        metrics.standby_active.set(0);
        Ok(Follower {
            rx,
            beats,
            stop,
            reader_stop,
            threads,
            at_end: Default::default(),
            ineligible,
            store,
            topic,
            metrics,
            instance: instance.to_owned(),
            applied: HashMap::new(),
            ends: HashMap::new(),
            newest: None,
            last_beat: None,
            peers: HashMap::new(),
            last_heard: None,
            hearing_since: None,
            said_deaf: false,
            started: Instant::now(),
            settings: settings.clone(),
            announcer: announcer(settings, every),
            heartbeat_topic: heartbeat_topic.to_owned(),
            sdkappid,
            every,
            transactional_id: settings.transactional_id_for(sdkappid),
        })
    }

    /// Follows until the active is silent for `takeover_after` (or hands over), but not before
    /// `eligible_at`; or until `shutdown`.
    pub async fn until_takeover(
        &mut self,
        takeover_after: Duration,
        eligible_at: Instant,
        shutdown: &tokio_util::sync::CancellationToken,
        state: &std::sync::Mutex<FollowState>,
    ) -> Result<FollowEnd, StandbyError> {
        let step = takeover_after / 2;
        let mut next_announce = Instant::now();
        loop {
            // Heartbeats that already arrived count before any decision.
            while let Ok(beat) = self.beats.try_recv() {
                self.take(Some(beat)).await?;
            }
            if Instant::now() >= next_announce {
                self.announce();
                next_announce = Instant::now() + self.every;
            }
            if self.ineligible.is_some() {
                tokio::select! {
                    _ = shutdown.cancelled() => return Ok(FollowEnd::Stopped),
                    _ = tokio::time::sleep_until(next_announce.into()) => {}
                    read = self.rx.recv() => self.take(read).await?,
                    beat = self.beats.recv() => self.take(beat).await?,
                }
                self.report(state);
                continue;
            }
            // Followers that time out together claim one after another, in name order.
            let rank = self.rank(takeover_after);
            // Silence counts from the last beat, and only over time this follower could hear.
            let silent_since = self
                .last_beat
                .as_ref()
                .map_or(self.started, |(_, at)| *at)
                .max(self.hearing_since.unwrap_or(self.started));
            let mut due = (silent_since + takeover_after + step * rank).max(eligible_at);
            if let Some((beat, at)) = &self.last_beat {
                if beat.beat == Beat::Handover && beat.instance != self.instance {
                    let turn = (*at + step * rank).max(eligible_at);
                    if Instant::now() >= turn {
                        return Ok(FollowEnd::TakeOver(format!(
                            "{} handed over",
                            beat.instance
                        )));
                    }
                    due = due.min(turn);
                }
            }
            // Its own announcements come back every heartbeat: two without one, and not even
            // half the silence it would act on, is this follower's deafness.
            let hearing = (self.every * 2).min(takeover_after / 2);
            if Instant::now() >= due && self.deaf(hearing) {
                // Not the active's silence but this follower's: look again in a heartbeat.
                due = Instant::now() + self.every;
            }
            if Instant::now() >= due {
                return Ok(FollowEnd::TakeOver(match &self.last_beat {
                    Some((beat, at)) => format!(
                        "no heartbeat from {} for {} ms",
                        beat.instance,
                        at.elapsed().as_millis()
                    ),
                    None => format!(
                        "no active: no heartbeat for {} ms since following began",
                        self.started.elapsed().as_millis()
                    ),
                }));
            }
            let wait = tokio::time::sleep_until(due.min(next_announce).into());
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => return Ok(FollowEnd::Stopped),
                beat = self.beats.recv() => self.take(beat).await?,
                _ = wait => {}
                read = self.rx.recv() => self.take(read).await?,
            }
            self.report(state);
        }
    }

    fn heard(&mut self, at: Instant) {
        let gap = self
            .last_heard
            .is_none_or(|before| at.saturating_duration_since(before) > self.every * 2);
        if gap {
            self.hearing_since = Some(at);
        }
        self.last_heard = Some(at);
        if std::mem::take(&mut self.said_deaf) {
            tracing::info!("the heartbeat topic is heard again");
        }
    }

    /// Whether nothing came from the heartbeat topic for `within`, not even this follower's
    /// own announcements (without an announcer there is nothing to tell by: never deaf).
    fn deaf(&mut self, within: Duration) -> bool {
        let deaf =
            self.announcer.is_some() && self.last_heard.is_none_or(|at| at.elapsed() > within);
        if deaf && !self.said_deaf {
            self.said_deaf = true;
            tracing::warn!(
                topic = %self.heartbeat_topic,
                "this follower hears nothing on the heartbeat topic, not even its own announcements: not taking over until it does (a silent active cannot be told from a cut-off reader)"
            );
        }
        deaf
    }

    /// How long this follower has been following.
    pub fn following_for(&self) -> Duration {
        self.started.elapsed()
    }

    /// Whether other live followers are known (then claims go in name order).
    pub fn knows_peers(&self, alive_within: Duration) -> bool {
        self.peers.values().any(|at| at.elapsed() < alive_within)
    }

    /// How many live followers come before this one (by name).
    fn rank(&self, alive_within: Duration) -> u32 {
        self.peers
            .iter()
            .filter(|(name, at)| {
                at.elapsed() < alive_within && name.as_str() < self.instance.as_str()
            })
            .count() as u32
    }

    /// Says that this follower is alive (best effort: a lost one only costs the order).
    fn announce(&self) {
        let Some(producer) = &self.announcer else {
            return;
        };
        let value = serde_json::to_vec(&HeartbeatV1 {
            schema: super::heartbeat::SCHEMA.into(),
            sdkappid: self.sdkappid,
            instance: self.instance.clone(),
            beat: Beat::Following,
            sent_at: crate::model::now_millis(),
            pid: std::process::id(),
            transactional_id: self.transactional_id.clone(),
        })
        .expect("heartbeats serialize");
        let key = self.sdkappid.to_string();
        let _ = producer.send(
            BaseRecord::to(&self.heartbeat_topic)
                .key(&key)
                .payload(&value),
        );
    }

    /// Goes on following for `d`; whether another instance's heartbeat arrived meanwhile (then
    /// someone else is the active, or is claiming the role).
    pub async fn heard_from_another_within(
        &mut self,
        d: Duration,
        state: &std::sync::Mutex<FollowState>,
    ) -> Result<bool, StandbyError> {
        let until = tokio::time::Instant::now() + d;
        let before = self.last_beat.as_ref().map(|(_, at)| *at);
        loop {
            let heard = self.last_beat.as_ref().is_some_and(|(b, at)| {
                Some(*at) != before && b.instance != self.instance && b.beat != Beat::Handover
            });
            if heard {
                return Ok(true);
            }
            tokio::select! {
                biased;
                beat = self.beats.recv() => self.take(beat).await?,
                read = self.rx.recv() => self.take(read).await?,
                _ = tokio::time::sleep_until(until) => return Ok(false),
            }
            self.report(state);
        }
    }

    /// After the old active was fenced: applies everything committed on the topic up to its
    /// end now. The events' reader starts again from what was applied, so that each partition's
    /// end it reports comes after the fencing (an idle partition reports none otherwise). Gives
    /// up (an error) after `bound`.
    pub async fn catch_up(
        &mut self,
        bound: Duration,
        state: &std::sync::Mutex<FollowState>,
    ) -> Result<(), StandbyError> {
        let settings = self.settings.clone();
        let topic = self.topic.clone();
        // Both ask the cluster after the fencing: side by side.
        let ends = tokio::task::spawn_blocking(move || last_stable_offsets(&settings, &topic));
        self.restart_reader().await?;
        let ends = ends
            .await
            .expect("reading offsets does not panic")
            .map_err(StandbyError::Kafka)?;
        let deadline = tokio::time::Instant::now() + bound;
        loop {
            let behind: Vec<_> = ends
                .iter()
                .filter(|(p, end)| {
                    self.applied.get(p).copied().unwrap_or(0) < *end && !self.at_end.contains(p)
                })
                .collect();
            if behind.is_empty() {
                return Ok(());
            }
            tokio::select! {
                biased;
                beat = self.beats.recv() => self.take(beat).await?,
                read = self.rx.recv() => self.take(read).await?,
                _ = tokio::time::sleep_until(deadline) => {
                    return Err(StandbyError::Kafka(format!(
                        "could not read the events topic to its end within {} s (partitions behind: {behind:?})",
                        bound.as_secs()
                    )))
                }
            }
            self.report(state);
        }
    }

    /// Stops the events' reader and starts another from the positions applied.
    async fn restart_reader(&mut self) -> Result<(), StandbyError> {
        self.reader_stop.store(true, Ordering::Relaxed);
        self.rx.close();
        // The old reader can only send into the closed channel now: it closes its consumer
        // on its own time, not the takeover's.
        let old = self.threads.remove(0);
        drop(tokio::task::spawn_blocking(move || old.join()));
        let topic = self.topic.clone();
        let positions = self
            .store
            .call(move |db| db.replica_positions(&topic))
            .await?;
        self.reader_stop = Arc::new(AtomicBool::new(false));
        self.at_end.clear();
        self.applied = positions.clone();
        let (rx, thread) = spawn_reader(
            &self.settings,
            self.sdkappid,
            positions,
            self.stop.clone(),
            self.reader_stop.clone(),
        );
        self.rx = rx;
        self.threads.insert(0, thread);
        Ok(())
    }

    /// Stops the reading thread.
    pub async fn stop(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        self.reader_stop.store(true, Ordering::Relaxed);
        self.rx.close();
        self.beats.close();
        let threads = std::mem::take(&mut self.threads);
        // A thread may be inside a metadata request for a few seconds: not on the runtime.
        let _ = tokio::task::spawn_blocking(move || {
            for t in threads {
                let _ = t.join();
            }
        })
        .await;
    }

    async fn take(&mut self, read: Option<Read>) -> Result<(), StandbyError> {
        match read {
            None => Err(StandbyError::Kafka("the reading thread stopped".into())),
            Some(Read::Failed(e)) => Err(StandbyError::Kafka(e)),
            Some(Read::Unreadable(what)) => {
                let what = format!("an event it could not read ({what})");
                let record = what.clone();
                self.store
                    .call(move |db| db.mark_replica_incomplete(&record))
                    .await?;
                self.set_ineligible(what);
                Ok(())
            }
            Some(Read::Heartbeat(beat, at)) => {
                if !beat.transactional_id.is_empty()
                    && beat.transactional_id != self.transactional_id
                {
                    self.set_ineligible(format!(
                        "the active {} publishes with kafka.transactional_id {:?}, this instance with {:?}: they would not fence each other; give every instance the same",
                        beat.instance, beat.transactional_id, self.transactional_id
                    ));
                }
                self.heard(at);
                self.last_beat = Some((beat, at));
                Ok(())
            }
            Some(Read::Peer(name, at)) => {
                self.heard(at);
                if name != self.instance {
                    self.peers.insert(name, at);
                }
                Ok(())
            }
            Some(Read::Events {
                events,
                positions,
                ends,
                newest,
                at_end,
            }) => {
                self.at_end = at_end.into_iter().collect();
                if !events.is_empty()
                    || positions
                        .iter()
                        .any(|(p, o)| self.applied.get(p) != Some(o))
                {
                    let topic = self.topic.clone();
                    let applied_positions = positions.clone();
                    let done = self
                        .store
                        .call(move |db| db.apply_replicated(&topic, &events, &applied_positions))
                        .await?;
                    self.metrics
                        .standby_replicated_events
                        .inc_by(done.applied as u64);
                    if let Some((user, seq)) = done.missing_start.first() {
                        self.set_ineligible(format!(
                            "account {user} starts at seq {seq} here: its earlier events were gone from the topic"
                        ));
                    }
                    for (user, expected, got) in &done.seq_gaps {
                        self.metrics.standby_seq_gaps.inc();
                        tracing::warn!(account = %user, expected, got, "a replicated event's seq does not follow on from the one before (the topic lost events, or they expired before this follower read them)");
                    }
                }
                self.applied.extend(positions);
                self.ends.extend(ends);
                if newest.is_some() {
                    self.newest = newest;
                }
                Ok(())
            }
        }
    }

    fn set_ineligible(&mut self, why: String) {
        if self.ineligible.is_none() {
            tracing::error!(reason = %why, "this instance goes on following but will not become the active (docs/OPERATIONS.md, \"Two hosts\")");
            self.ineligible = Some(why);
        }
    }

    fn report(&self, state: &std::sync::Mutex<FollowState>) {
        let lag: i64 = self
            .ends
            .iter()
            .map(|(p, end)| (end - self.applied.get(p).copied().unwrap_or(0)).max(0))
            .sum();
        let lag_seconds = match (lag, self.newest) {
            (0, _) | (_, None) => 0.0,
            (_, Some(ms)) => ((crate::model::now_millis() - ms) as f64 / 1000.0).max(0.0),
        };
        let heartbeat_age = self
            .last_beat
            .as_ref()
            .map(|(_, at)| at.elapsed().as_secs_f64());
        self.metrics.standby_lag_events.set(lag);
        self.metrics.standby_lag_seconds.set(lag_seconds);
        self.metrics
            .standby_heartbeat_age
            .set(heartbeat_age.unwrap_or_else(|| self.started.elapsed().as_secs_f64()));
        let mut s = state.lock().unwrap_or_else(|e| e.into_inner());
        *s = FollowState {
            lag_events: lag,
            lag_seconds,
            active: self.last_beat.as_ref().map(|(b, _)| b.instance.clone()),
            heartbeat_age,
            ineligible: self.ineligible.clone(),
        };
    }
}

impl Drop for Follower {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Starts the events' reading thread from `positions`; it stops when `stop` or `reader_stop`
/// is set.
fn spawn_reader(
    settings: &KafkaConfig,
    sdkappid: u64,
    positions: HashMap<i32, i64>,
    stop: Arc<AtomicBool>,
    reader_stop: Arc<AtomicBool>,
) -> (mpsc::Receiver<Read>, std::thread::JoinHandle<()>) {
    let (tx, rx) = mpsc::channel(4);
    let reader = Reader {
        settings: settings.clone(),
        topic: settings.topic.clone(),
        source: crate::publish::event::cloudevents_source(sdkappid),
        positions,
        tx,
        stop,
        reader_stop,
    };
    let thread = std::thread::Builder::new()
        .name("standby-follow".into())
        .spawn(move || reader.run())
        .expect("a thread starts");
    (rx, thread)
}

/// The follower's own plain producer for its `Following` beats; none when it cannot be made
/// (following goes on, only the order of claims is lost).
fn announcer(
    settings: &KafkaConfig,
    every: Duration,
) -> Option<ThreadedProducer<DefaultProducerContext>> {
    client_config(settings)
        .set("acks", "1")
        .set("linger.ms", "0")
        .set(
            "message.timeout.ms",
            (every.as_millis() * 4).max(1000).to_string(),
        )
        .create()
        .map_err(|e| tracing::warn!(error = %e, "following: no producer for the follower's beats"))
        .ok()
}

/// A `read_committed` consumer with no group offsets: positions live in the database.
fn consumer(settings: &KafkaConfig) -> Result<BaseConsumer<EndAwareContext>, String> {
    consumer_reading(settings, "read_committed")
}

fn consumer_reading(
    settings: &KafkaConfig,
    isolation: &str,
) -> Result<BaseConsumer<EndAwareContext>, String> {
    client_config(settings)
        .set("group.id", "presenced-standby")
        .set("isolation.level", isolation)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("fetch.wait.max.ms", "50")
        .set("enable.partition.eof", "true")
        .create_with_context(EndAwareContext("standby"))
        .map_err(|e| format!("creating the standby consumer: {e}"))
}

/// Each partition's end as a `read_committed` consumer sees it (the last stable offset).
fn last_stable_offsets(settings: &KafkaConfig, topic: &str) -> Result<Vec<(i32, i64)>, String> {
    let c = consumer(settings)?;
    let wait = Duration::from_secs(10);
    let partitions = partitions_of(&c, topic)?;
    partitions
        .into_iter()
        .map(|p| {
            c.fetch_watermarks(topic, p, wait)
                .map(|(_, high)| (p, high))
                .map_err(|e| format!("the end of {topic} partition {p}: {e}"))
        })
        .collect()
}

fn partitions_of(c: &BaseConsumer<EndAwareContext>, topic: &str) -> Result<Vec<i32>, String> {
    let metadata = c
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .map_err(|e| format!("the partitions of {topic}: {e}"))?;
    let partitions: Vec<i32> = metadata
        .topics()
        .iter()
        .filter(|t| t.name() == topic && t.error().is_none())
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    match partitions.is_empty() {
        true => Err(format!("topic {topic} has no partitions (does it exist?)")),
        false => Ok(partitions),
    }
}

/// The partitions of `topic`, asked again every second until the brokers describe it; `None`
/// once `stop` is set.
fn partitions_until(
    c: &BaseConsumer<EndAwareContext>,
    topic: &str,
    stop: &AtomicBool,
) -> Option<Vec<i32>> {
    loop {
        match partitions_of(c, topic) {
            Ok(p) => return Some(p),
            Err(e) => {
                tracing::warn!(error = %e, "following: {topic} cannot be described yet; retrying")
            }
        }
        if stop.load(Ordering::Relaxed) {
            return None;
        }
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// The reading thread.
struct Reader {
    settings: KafkaConfig,
    topic: String,
    source: String,
    positions: HashMap<i32, i64>,
    tx: mpsc::Sender<Read>,
    stop: Arc<AtomicBool>,
    reader_stop: Arc<AtomicBool>,
}

/// The heartbeat topic's reading thread, apart from the events' so that a follower reading a
/// backlog still sees each heartbeat as it comes (else it would take over from a live active).
struct BeatReader {
    settings: KafkaConfig,
    topic: String,
    sdkappid: u64,
    tx: mpsc::UnboundedSender<Read>,
    stop: Arc<AtomicBool>,
}

impl BeatReader {
    fn run(self) {
        if let Err(e) = self.read() {
            let _ = self.tx.send(Read::Failed(e));
        }
    }

    fn read(&self) -> Result<(), String> {
        // Uncommitted: a dead active's heartbeat transaction stays open until the next claimant
        // aborts it, and read_committed would hide everything after it (the followers'
        // announcements, other claims) until then. A beat that is later aborted can only delay
        // a takeover by one takeover time, never cause one.
        let c = consumer_reading(&self.settings, "read_uncommitted")?;
        let Some(partitions) = partitions_until(&c, &self.topic, &self.stop) else {
            return Ok(());
        };
        let mut assignment = TopicPartitionList::new();
        for p in &partitions {
            assignment
                .add_partition_offset(&self.topic, *p, Offset::End)
                .map_err(|e| e.to_string())?;
        }
        c.assign(&assignment)
            .map_err(|e| format!("assigning the heartbeat topic: {e}"))?;
        while !self.stop.load(Ordering::Relaxed) {
            let Some(Ok(m)) = c.poll(Duration::from_millis(50)) else {
                continue;
            };
            let beat = m
                .payload()
                .and_then(|v| serde_json::from_slice::<HeartbeatV1>(v).ok())
                .filter(|b| b.sdkappid == self.sdkappid);
            if let Some(beat) = beat {
                let read = match beat.beat {
                    Beat::Following => Read::Peer(beat.instance, Instant::now()),
                    _ => Read::Heartbeat(beat, Instant::now()),
                };
                if self.tx.send(read).is_err() {
                    return Ok(());
                }
            }
        }
        Ok(())
    }
}

/// How many events at most go into one SQLite transaction.
const BATCH_EVENTS: usize = 2_000;
/// How long the thread collects before handing a batch over.
const BATCH_WINDOW: Duration = Duration::from_millis(20);

impl Reader {
    fn run(self) {
        if let Err(e) = self.read() {
            let _ = self.tx.blocking_send(Read::Failed(e));
        }
    }

    fn read(&self) -> Result<(), String> {
        let c = consumer(&self.settings)?;
        let Some(partitions) = partitions_until(&c, &self.topic, &self.reader_stop) else {
            return Ok(());
        };
        let mut assignment = TopicPartitionList::new();
        for p in &partitions {
            let offset = match self.positions.get(p) {
                Some(o) => Offset::Offset(*o),
                None => Offset::Beginning,
            };
            assignment
                .add_partition_offset(&self.topic, *p, offset)
                .map_err(|e| e.to_string())?;
        }
        c.assign(&assignment)
            .map_err(|e| format!("assigning the topics: {e}"))?;
        let mut last_ends = Instant::now() - Duration::from_secs(2);
        // Partitions read to their end with nothing after (librdkafka says so once per end).
        let mut at_end = std::collections::HashSet::new();
        while !self.stop.load(Ordering::Relaxed) && !self.reader_stop.load(Ordering::Relaxed) {
            let mut events = Vec::new();
            let mut newest = None;
            let window = Instant::now() + BATCH_WINDOW;
            while events.len() < BATCH_EVENTS {
                let left = window.saturating_duration_since(Instant::now());
                let Some(polled) = c.poll(left.max(Duration::from_millis(1))) else {
                    break;
                };
                let m = match polled {
                    Ok(m) => m,
                    Err(rdkafka::error::KafkaError::PartitionEOF(p)) => {
                        at_end.insert(p);
                        continue;
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "following: consumer");
                        continue;
                    }
                };
                at_end.remove(&m.partition());
                newest = m.timestamp().to_millis().or(newest);
                match decode(&m, &self.source) {
                    Ok(Record::Event(e)) => events.push(e),
                    Ok(Record::Foreign) => {}
                    Err(e) => {
                        // The replica lacks it from here on: it may not become the active.
                        tracing::error!(error = %e, "following: an event of this app on the topic cannot be read; it is skipped");
                        if self
                            .tx
                            .blocking_send(Read::Unreadable(e.to_string()))
                            .is_err()
                        {
                            return Ok(());
                        }
                    }
                }
                if Instant::now() >= window {
                    break;
                }
            }
            let positions = c
                .position()
                .map_err(|e| e.to_string())?
                .elements_for_topic(&self.topic)
                .iter()
                .filter_map(|e| match e.offset() {
                    Offset::Offset(o) => Some((e.partition(), o)),
                    _ => None,
                })
                .collect();
            // The partitions' ends, asked of the brokers about once a second (for the lag).
            let ends = if last_ends.elapsed() >= Duration::from_secs(1) {
                last_ends = Instant::now();
                partitions
                    .iter()
                    .filter_map(|p| {
                        c.fetch_watermarks(&self.topic, *p, Duration::from_secs(1))
                            .ok()
                            .map(|(_, high)| (*p, high))
                    })
                    .collect()
            } else {
                Vec::new()
            };
            let read = Read::Events {
                events,
                positions,
                ends,
                newest,
                at_end: at_end.iter().copied().collect(),
            };
            if self.tx.blocking_send(read).is_err() {
                return Ok(());
            }
        }
        Ok(())
    }
}
