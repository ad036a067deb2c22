//! The compacted state topic on the Apache Kafka test broker: tombstones come after a removed
//! account's last state record even when its events were still in the outbox, and after the log
//! cleaner ran the topic holds exactly the live accounts' current state.

mod common;

use common::kafka::{broker, consume, Consumed};
use common::pipeline::*;
use presenced::config::KafkaConfig;
use presenced::publish::kafka::{Delivery, KafkaSink, TransactionalSink};
use presenced::store::{CurrentRow, Db};
use rdkafka::config::ClientConfig;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

fn current(db_path: &std::path::Path) -> Vec<CurrentRow> {
    Db::open(db_path, Duration::from_secs(5))
        .unwrap()
        .load_current()
        .unwrap()
}

/// The last record of each key, in partition order.
fn latest(mut records: Vec<Consumed>) -> HashMap<String, serde_json::Value> {
    records.sort_by_key(|c| (c.partition, c.offset));
    records.into_iter().map(|r| (r.key, r.value)).collect()
}

/// Every account in `presence_current` has its current state as its latest record; every
/// account that left the watch list has a tombstone (or, once compacted away, no record).
fn assert_state_topic_matches(latest: &HashMap<String, serde_json::Value>, rows: &[CurrentRow]) {
    for row in rows {
        let value = latest.get(&row.user_id);
        match row.state {
            None => assert!(
                value.is_none_or(serde_json::Value::is_null),
                "{} left the watch list: expected its tombstone last, got {value:?}",
                row.user_id
            ),
            Some(state) => {
                let value = value.unwrap_or_else(|| panic!("{} has no record", row.user_id));
                assert_eq!(value["state"], state.as_str(), "{}", row.user_id);
                assert_eq!(value["seq"], row.seq, "{}", row.user_id);
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tombstone_follows_the_last_state_that_was_still_in_the_outbox() {
    tombstones_follow_the_last_state(Delivery::AtLeastOnce).await;
}

/// The same in exactly-once mode: tombstones go in a transaction of their own between batches,
/// and a `read_committed` consumer sees the same order, each event once on the events topic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_exactly_once_mode_a_tombstone_follows_the_last_state_too() {
    tombstones_follow_the_last_state(Delivery::ExactlyOnce).await;
}

/// Accounts leave the watch list while their events wait in the outbox (one comes back at
/// once): each tombstone comes after the account's last state record.
async fn tombstones_follow_the_last_state(delivery: Delivery) {
    let addr = broker();
    let mut p = pipeline(20).await;
    let state_topic = topic_name("state-order");
    let events_topic = topic_name("events-order");
    let cfg = KafkaConfig {
        create_topic: true,
        topic_partitions: 2,
        state_topic: state_topic.clone(),
        delivery,
        ..kafka_config(&addr, &events_topic)
    };
    let shutdown = CancellationToken::new();

    // A backlog: two sweeps with churn, nothing published yet (Kafka down, or a large sweep
    // still draining).
    p.control.churn(1.0).await;
    for _ in 0..2 {
        p.sweeper.sweep(&shutdown).await.unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    p.control.churn(0.0).await;
    // user0..user4 leave the watch list with their events unpublished; user0 comes back at once
    // and is observed again: its tombstone must come before its new state record.
    let kept: Vec<String> = (5..20).map(|i| format!("user{i}")).collect();
    p.sweeper.set_watch_list(kept.clone()).await.unwrap();
    let mut again = kept;
    again.push("user0".into());
    p.sweeper.set_watch_list(again).await.unwrap();
    p.sweeper.sweep(&shutdown).await.unwrap();
    let backlog = p.store.call(|db| db.outbox_backlog()).await.unwrap().0;
    assert!(
        backlog >= 20,
        "the removed accounts' events wait in the outbox: {backlog}"
    );

    match delivery {
        Delivery::AtLeastOnce => {
            let sink = KafkaSink::new(&cfg, 1_400_000_000).unwrap();
            assert!(sink.check_topic().await.unwrap());
            drain_until_empty(&mut publisher(&p, sink), Duration::from_secs(60)).await;
        }
        Delivery::ExactlyOnce => {
            let (sink, reachable) = TransactionalSink::connect(&cfg, 1_400_000_000)
                .await
                .unwrap();
            assert!(reachable);
            let mut publisher = publisher_for(&p.store, sink, 7);
            drain_until_empty(&mut publisher, Duration::from_secs(60)).await;
        }
    }
    let pending = p.store.call(|db| db.pending_tombstones(100)).await.unwrap();
    assert!(pending.is_empty(), "tombstones acknowledged: {pending:?}");

    let history = all_history(&p.db_path);
    if delivery == Delivery::ExactlyOnce {
        let consumed = consume_async(&addr, &events_topic, history.len()).await;
        assert_eq!(consumed.len(), history.len(), "each event once");
        assert_matches_history(&consumed, &history, 1_400_000_000);
    }
    let expected = history.len() + 5;
    let records = tokio::task::spawn_blocking(move || {
        consume(&addr, &state_topic, expected, Duration::from_secs(60))
    })
    .await
    .unwrap();
    assert_eq!(
        records.len(),
        expected,
        "one state record per transition, five tombstones"
    );
    let user0: Vec<bool> = {
        let mut r: Vec<&Consumed> = records.iter().filter(|r| r.key == "user0").collect();
        r.sort_by_key(|c| c.offset);
        r.iter().map(|c| c.value.is_null()).collect()
    };
    assert_eq!(
        user0.iter().filter(|t| **t).count(),
        1,
        "user0 has one tombstone: {user0:?}"
    );
    assert!(
        !user0.last().unwrap(),
        "user0 came back: its new state follows its tombstone: {user0:?}"
    );
    let latest = latest(records);
    for k in 1..5 {
        assert!(
            latest[&format!("user{k}")].is_null(),
            "user{k} ends with its tombstone"
        );
    }
    assert_state_topic_matches(&latest, &current(&p.db_path));
    p.sim.stop().await;
}

/// The state topic as the daemon creates it (compacted, with small segments here so the log
/// cleaner runs within the test): after the cleaner ran, every live account has exactly its
/// current state and the removed accounts are gone, tombstones included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_compaction_the_state_topic_is_the_current_state() {
    let addr = broker();
    let mut p = pipeline(30).await;
    let state_topic = topic_name("state-compact");
    let topic_config: BTreeMap<String, String> = [
        ("segment.ms", "300"),
        ("min.cleanable.dirty.ratio", "0.01"),
        ("delete.retention.ms", "100"),
        ("min.compaction.lag.ms", "0"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    let cfg = KafkaConfig {
        create_topic: true,
        topic_partitions: 1,
        state_topic: state_topic.clone(),
        state_topic_config: topic_config,
        ..kafka_config(&addr, &topic_name("events-compact"))
    };
    let sink = KafkaSink::new(&cfg, 1_400_000_000).unwrap();
    assert!(sink.check_topic().await.unwrap());
    let mut publisher = publisher(&p, sink);
    p.control.churn(1.0).await;
    sweep_and_publish(&mut p, &mut publisher, 6).await;
    p.control.churn(0.0).await;
    p.sweeper
        .set_watch_list((5..30).map(|i| format!("user{i}")).collect())
        .await
        .unwrap();
    drain_until_empty(&mut publisher, Duration::from_secs(30)).await;
    let produced = all_history(&p.db_path).len() + 5;
    let rows = current(&p.db_path);
    let live = rows.iter().filter(|r| r.state.is_some()).count();

    // The active segment is never cleaned: a segment rolls when a record arrives after
    // segment.ms, so the test appends filler records under a key of its own until the cleaner
    // has left one record per live account and nothing of the removed ones.
    let filler: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", &addr)
        .create()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        filler
            .send(BaseRecord::to(&state_topic).key("~filler").payload("{}"))
            .unwrap();
        filler.flush(Duration::from_secs(10)).unwrap();
        let (addr, topic) = (addr.clone(), state_topic.clone());
        let records: Vec<Consumed> =
            tokio::task::spawn_blocking(move || consume(&addr, &topic, 1, Duration::from_secs(20)))
                .await
                .unwrap()
                .into_iter()
                .filter(|r| r.key != "~filler")
                .collect();
        let compacted = records.len() == live;
        if compacted {
            let keys: std::collections::HashSet<&str> =
                records.iter().map(|r| r.key.as_str()).collect();
            assert_eq!(keys.len(), live, "one record per live account");
            for k in 0..5 {
                assert!(
                    !keys.contains(format!("user{k}").as_str()),
                    "user{k} is gone"
                );
            }
            assert_state_topic_matches(&latest(records), &rows);
            eprintln!("compaction: {produced} records produced, {live} left");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the log cleaner did not compact the state topic: {} records for {live} live accounts ({produced} produced)",
            records.len()
        );
        tokio::time::sleep(Duration::from_millis(1_000)).await;
    }
    p.sim.stop().await;
}
