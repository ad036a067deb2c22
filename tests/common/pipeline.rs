//! The pipeline the Kafka tests share: the simulator, a sweeper writing a SQLite file, a
//! publisher, and the check that what a topic holds equals the history event by event.
#![allow(dead_code)]

use super::kafka::Consumed;
use super::*;
use presenced::config::KafkaConfig;
use presenced::metrics::Metrics;
use presenced::model::TransitionRecord;
use presenced::publish::kafka::KafkaSink;
use presenced::publish::{Drained, Publisher, Sink};
use presenced::sim::{SimConfig, SimHandle};
use presenced::store::{Db, Store};
use presenced::sweep::{SweepSettings, Sweeper};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub fn kafka_config(brokers: &str, topic: &str) -> KafkaConfig {
    KafkaConfig {
        brokers: brokers.into(),
        topic: topic.into(),
        ..KafkaConfig::default()
    }
}

pub fn topic_name(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::now_v7().simple())
}

pub struct Pipeline {
    pub sim: SimHandle,
    pub control: Control,
    pub sweeper: Sweeper,
    pub store: Store,
    pub db_path: std::path::PathBuf,
    pub _dir: tempfile::TempDir,
}

pub async fn pipeline(population: usize) -> Pipeline {
    let cfg = SimConfig {
        population,
        churn_per_second: 0.0,
        online_share: 0.5,
        calls_per_second: 0.0,
        ..SimConfig::default()
    };
    let sim = start_sim(cfg.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let db_path = dir.path().join("p.db");
    let store = Store::open(&db_path, Duration::from_secs(5)).await.unwrap();
    let settings = SweepSettings {
        batch_size: 50,
        max_in_flight: 4,
        batches_per_transaction: 2,
        platform_changes_are_transitions: true,
    };
    let mut sweeper = Sweeper::new(
        Arc::new(client(&im_config(&sim, &cfg))),
        store.clone(),
        settings,
        Arc::new(Metrics::new()),
    )
    .await
    .unwrap();
    sweeper
        .set_watch_list(ids("user", population))
        .await
        .unwrap();
    Pipeline {
        control: Control::new(&sim),
        sim,
        sweeper,
        store,
        db_path,
        _dir: dir,
    }
}

/// A publisher of `store`'s outbox into `sink`, `batch` events a batch, with its own metrics.
pub fn publisher_for<S: Sink>(store: &Store, sink: S, batch: usize) -> Publisher<S> {
    Publisher::new(
        store.clone(),
        sink,
        batch,
        Arc::new(Metrics::new()),
        Arc::new(tokio::sync::Notify::new()),
    )
}

pub fn publisher(p: &Pipeline, sink: KafkaSink) -> Publisher<KafkaSink> {
    Publisher::new(
        p.store.clone(),
        sink,
        1_000,
        Arc::new(Metrics::new()),
        Arc::new(tokio::sync::Notify::new()),
    )
}

pub async fn drain_until_empty<S: Sink>(publisher: &mut Publisher<S>, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        match publisher.drain_once().await.unwrap() {
            Drained::Empty => return,
            Drained::Some => {}
            Drained::Failed => tokio::time::sleep(Duration::from_millis(200)).await,
            Drained::Rejected => panic!("the broker rejected an event for good"),
            Drained::Fenced => panic!("the publisher was fenced"),
            Drained::Held => panic!("publishing is held: the topic and the database disagree"),
        }
        assert!(Instant::now() < deadline, "outbox did not drain");
    }
}

pub fn all_history(db_path: &std::path::Path) -> Vec<TransitionRecord> {
    let db = Db::open(db_path, Duration::from_secs(5)).unwrap();
    db.history_range(i64::MIN, i64::MAX, 0, usize::MAX >> 1)
        .unwrap()
        .into_iter()
        .map(|e| e.record)
        .collect()
}

/// Every consumed event, deduplicated by event id, equals the history row by row; per key the
/// first occurrences come in seq order.
pub fn assert_matches_history(consumed: &[Consumed], history: &[TransitionRecord], sdkappid: u64) {
    let schema: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string("schemas/presenced.transition.v1.json").unwrap(),
    )
    .unwrap();
    let validator = jsonschema::validator_for(&schema).unwrap();
    let by_id: HashMap<String, &TransitionRecord> = history
        .iter()
        .map(|t| (t.event_id.to_string(), t))
        .collect();
    let mut ordered: Vec<&Consumed> = consumed.iter().collect();
    ordered.sort_by_key(|c| (c.partition, c.offset));
    let mut seen = HashSet::new();
    let mut last_seq: HashMap<&str, u64> = HashMap::new();
    for c in ordered {
        let v = &c.value;
        if let Err(e) = validator.validate(v) {
            panic!("event fails the JSON schema: {e}\n{v}");
        }
        let id = v["event_id"].as_str().unwrap().to_owned();
        let t = by_id
            .get(&id)
            .unwrap_or_else(|| panic!("event {id} is not in the history"));
        assert_eq!(c.key, t.user_id);
        assert_eq!(v["user_id"], t.user_id.as_str());
        assert_eq!(v["sdkappid"], sdkappid);
        assert_eq!(v["seq"], t.seq);
        assert_eq!(v["kind"], t.kind());
        assert_eq!(v["to"], t.to.as_str());
        assert_eq!(v["cause"], t.cause.as_str());
        assert_eq!(v["from"], serde_json::json!(t.from.map(|s| s.as_str())));
        assert_eq!(
            v["observed_at"],
            presenced::model::format_millis(t.observed_at).as_str()
        );
        assert_eq!(
            v["to_platforms"],
            serde_json::to_value(&t.to_platforms).unwrap()
        );
        assert_eq!(c.headers["ce_id"], id);
        assert_eq!(c.headers["ce_subject"], t.user_id);
        assert_eq!(c.headers["ce_specversion"], "1.0");
        assert_eq!(c.headers["content-type"], "application/json");
        assert_eq!(
            c.headers["ce_time"],
            presenced::model::format_millis(t.observed_at)
        );
        if seen.insert(id) {
            let last = last_seq.entry(t.user_id.as_str()).or_insert(0);
            assert!(
                t.seq > *last,
                "{}: seq {} arrived after {}",
                t.user_id,
                t.seq,
                last
            );
            *last = t.seq;
        }
    }
    assert_eq!(seen.len(), history.len(), "every transition must arrive");
}

/// Drives the pipelined publisher until the batch it started has settled.
pub async fn settle_round<S: Sink>(publisher: &mut Publisher<S>) -> Drained {
    loop {
        match publisher.drain_once().await.unwrap() {
            Drained::Some => continue,
            other => return other,
        }
    }
}

/// Waits until the running publisher has emptied the outbox.
pub async fn wait_for_empty_outbox(store: &Store, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while store.call(|db| db.outbox_backlog()).await.unwrap().0 > 0 {
        assert!(Instant::now() < deadline, "outbox did not drain");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Reads `topic` from the start on a blocking thread until `expected` records arrived (or two
/// minutes passed), for async tests.
pub async fn consume_async(addr: &str, topic: &str, expected: usize) -> Vec<Consumed> {
    let (addr, topic) = (addr.to_owned(), topic.to_owned());
    tokio::task::spawn_blocking(move || {
        super::kafka::consume(&addr, &topic, expected, Duration::from_secs(120))
    })
    .await
    .unwrap()
}

/// Adds accounts to the watch list of the database at `db` through `presenced users add`.
pub fn add_watched(db: &std::path::Path, ids: &[String]) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_presenced"))
        .args(["users", "--db"])
        .arg(db)
        .arg("add")
        .args(ids)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
}

/// One number from the database at `db` (a daemon may hold it open), or -1 if it cannot be read.
pub fn query_number(db: &std::path::Path, sql: &str) -> i64 {
    Db::open(db, Duration::from_secs(5))
        .ok()
        .and_then(|d| d.connection().query_row(sql, [], |r| r.get(0)).ok())
        .unwrap_or(-1)
}

/// `rounds` times: a sweep, the outbox drained, then a pause for the simulator to churn.
pub async fn sweep_and_publish(
    p: &mut Pipeline,
    publisher: &mut Publisher<KafkaSink>,
    rounds: usize,
) {
    let shutdown = tokio_util::sync::CancellationToken::new();
    for _ in 0..rounds {
        p.sweeper.sweep(&shutdown).await.unwrap();
        drain_until_empty(publisher, Duration::from_secs(30)).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}
