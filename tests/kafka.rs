//! Events on the single Apache Kafka test broker over TCP, compared with the SQLite history event
//! by event; tombstones and compaction of the state topic; SASL_SSL with SCRAM-SHA-512; broker
//! error codes from librdkafka's mock cluster. Failover and outages: tests/kafka_cluster.rs.

mod common;

use common::kafka::{broker, consume, create_topic};
use common::pipeline::*;
use common::*;
use presenced::config::KafkaConfig;
use presenced::metrics::Metrics;
use presenced::publish::kafka::{KafkaSetupError, KafkaSink};
use presenced::publish::{Drained, Publisher};
use presenced::sim::SimConfig;
use presenced::store::Db;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_on_the_broker_match_the_history() {
    let addr = broker();
    let topic = topic_name("e2e");
    let mut p = pipeline(300).await;
    let mut cfg = kafka_config(&addr, &topic);
    cfg.create_topic = true;
    cfg.topic_partitions = 3;
    let sink = KafkaSink::new(&cfg, 1_400_000_000).unwrap();
    assert!(sink.check_topic().await.unwrap(), "topic created and found");
    let mut publisher = publisher(&p, sink);
    p.control.churn(0.2).await;
    sweep_and_publish(&mut p, &mut publisher, 5).await;
    let history = all_history(&p.db_path);
    assert!(
        history.len() > 300,
        "churn should have produced changes beyond the initial events"
    );
    let consumed = tokio::task::spawn_blocking({
        let n = history.len();
        move || consume(&addr, &topic, n, Duration::from_secs(60))
    })
    .await
    .unwrap();
    assert_eq!(
        consumed.len(),
        history.len(),
        "no duplicates without faults"
    );
    assert_matches_history(&consumed, &history, 1_400_000_000);

    // Replay everything into a new topic for a new consumer: the same events, the same ids.
    let replay_topic = topic_name("replay");
    create_topic(&broker(), &replay_topic, 3);
    let mut sink = KafkaSink::new(&kafka_config(&broker(), &replay_topic), 1_400_000_000).unwrap();
    let mut reported = 0;
    let sent = presenced::publish::replay(
        &p.store,
        &mut sink,
        &Default::default(),
        i64::MIN,
        i64::MAX,
        |done, _| reported = done,
    )
    .await
    .unwrap();
    assert_eq!(
        (sent, reported),
        (history.len() as u64, history.len() as u64)
    );
    let addr = broker();
    let replayed = tokio::task::spawn_blocking({
        let n = history.len();
        move || consume(&addr, &replay_topic, n, Duration::from_secs(60))
    })
    .await
    .unwrap();
    assert_eq!(replayed.len(), history.len());
    assert_matches_history(&replayed, &history, 1_400_000_000);
    p.sim.stop().await;
}

#[tokio::test]
async fn a_missing_topic_is_a_clear_start_up_error() {
    let cfg = kafka_config(&broker(), &topic_name("absent"));
    let sink = KafkaSink::new(&cfg, 1).unwrap();
    match sink.check_topic().await {
        Err(e @ KafkaSetupError::TopicMissing { .. }) => {
            assert!(e.to_string().contains("kafka.create_topic"), "{e}");
        }
        other => panic!("expected TopicMissing, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_error_codes_from_the_mock_cluster() {
    use rdkafka::mocking::MockCluster;
    use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
    let mock = MockCluster::new(1).unwrap();
    mock.create_topic("mocked", 2, 1).unwrap();
    let mut p = pipeline(40).await;
    let cfg = kafka_config(&mock.bootstrap_servers(), "mocked");
    let sink = KafkaSink::new(&cfg, 7).unwrap();
    assert!(sink.check_topic().await.unwrap());
    let mut publisher = publisher(&p, sink);
    let shutdown = CancellationToken::new();

    // Retriable errors: librdkafka retries, everything is acknowledged once, in order.
    p.sweeper.sweep(&shutdown).await.unwrap();
    mock.request_errors(
        RDKafkaApiKey::Produce,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_LEADER_FOR_PARTITION; 3],
    );
    drain_until_empty(&mut publisher, Duration::from_secs(30)).await;

    // A non-retriable error: the events stay in the outbox, then go once the broker recovers.
    for k in 0..10 {
        p.control
            .set(
                &format!("user{k}"),
                &[
                    ("Web", presenced::model::State::Online),
                    ("PC", presenced::model::State::Online),
                ],
            )
            .await;
    }
    p.sweeper.sweep(&shutdown).await.unwrap();
    mock.request_errors(
        RDKafkaApiKey::Produce,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED; 50],
    );
    // Not authorized is final: reported as a rejection, not retried as if it might pass.
    assert_eq!(settle_round(&mut publisher).await, Drained::Rejected);
    let backlog = p.store.call(|db| db.outbox_backlog()).await.unwrap().0;
    assert!(backlog > 0);
    mock.clear_request_errors(RDKafkaApiKey::Produce);
    drain_until_empty(&mut publisher, Duration::from_secs(30)).await;

    let history = all_history(&p.db_path);
    let addr = mock.bootstrap_servers();
    let consumed = tokio::task::spawn_blocking({
        let n = history.len();
        move || consume(&addr, "mocked", n, Duration::from_secs(30))
    })
    .await
    .unwrap();
    assert_matches_history(&consumed, &history, 7);
    p.sim.stop().await;
}

/// A backlog in which every account has several events, sent in batches of 5 so that several
/// batches are in librdkafka at once when produce requests are refused: the refused events and
/// every later event of their accounts stay in the outbox, and once the broker accepts again
/// every transition arrives with per-account order kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_with_several_batches_in_flight_lose_nothing() {
    use rdkafka::mocking::MockCluster;
    use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
    let mock = MockCluster::new(1).unwrap();
    mock.create_topic("window", 3, 1).unwrap();
    let mut p = pipeline(30).await;
    let sink = KafkaSink::new(&kafka_config(&mock.bootstrap_servers(), "window"), 7).unwrap();
    assert!(sink.check_topic().await.unwrap());
    let mut publisher = Publisher::new(
        p.store.clone(),
        sink,
        5,
        Arc::new(Metrics::new()),
        Arc::new(tokio::sync::Notify::new()),
    );
    let shutdown = CancellationToken::new();
    p.control.churn(2.0).await;
    let mut failed_rounds = 0;
    for _ in 0..3 {
        for _ in 0..4 {
            p.sweeper.sweep(&shutdown).await.unwrap();
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        // librdkafka does not retry this error: the events of these requests fail.
        mock.request_errors(
            RDKafkaApiKey::Produce,
            &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED; 3],
        );
        if matches!(
            settle_round(&mut publisher).await,
            Drained::Failed | Drained::Rejected
        ) {
            failed_rounds += 1;
        }
        mock.clear_request_errors(RDKafkaApiKey::Produce);
    }
    p.control.churn(0.0).await;
    drain_until_empty(&mut publisher, Duration::from_secs(60)).await;
    assert!(
        failed_rounds > 0,
        "the injected errors never failed a round"
    );

    let history = all_history(&p.db_path);
    assert!(history.len() > 90, "only {} transitions", history.len());
    let addr = mock.bootstrap_servers();
    let consumed = tokio::task::spawn_blocking({
        let n = history.len();
        move || consume(&addr, "window", n, Duration::from_secs(30))
    })
    .await
    .unwrap();
    assert_matches_history(&consumed, &history, 7);
    p.sim.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_binary_publishes_what_the_simulator_changes() {
    let addr = broker();
    let topic = topic_name("daemon");
    create_topic(&addr, &topic, 2);
    let sim = SimProcess::start(&["--population", "20", "--churn", "0", "--rate", "0"]);
    let dir = tempfile::tempdir().unwrap();
    let config = write_daemon_config(
        dir.path(),
        &sim.base_url(),
        &format!("[sink]\nkind = \"kafka\"\n[kafka]\nbrokers = \"{addr}\"\ntopic = \"{topic}\"\n"),
    );
    let db = dir.path().join("presence.db");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_presenced"))
        .args(["users", "--db"])
        .arg(&db)
        .arg("add")
        .args(["user1", "user2", "user3"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let control = sim.control();
    control.set("user1", &[]).await;
    control
        .set("user2", &[("iPhone", presenced::model::State::Online)])
        .await;
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_presenced"))
        .args(["run", "--config"])
        .arg(&config)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let count = |sql: &str| -> i64 {
        Db::open(&db, Duration::from_secs(5))
            .unwrap()
            .connection()
            .query_row(sql, [], |r| r.get(0))
            .unwrap()
    };
    let wait = |what: &str, f: &dyn Fn() -> bool| {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !f() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    wait("initial events", &|| {
        count("SELECT COUNT(*) FROM presence_history") == 3
    });
    control
        .set("user1", &[("Android", presenced::model::State::Online)])
        .await;
    control
        .set("user2", &[("iPhone", presenced::model::State::PushOnline)])
        .await;
    wait("two changes", &|| {
        count("SELECT COUNT(*) FROM presence_history") == 5
    });
    wait("an empty outbox", &|| {
        count("SELECT COUNT(*) FROM outbox") == 0
    });
    signal(&child, "TERM");
    assert!(child.wait().unwrap().success());

    let consumed =
        tokio::task::spawn_blocking(move || consume(&addr, &topic, 5, Duration::from_secs(60)))
            .await
            .unwrap();
    assert_eq!(consumed.len(), 5);
    let changes: Vec<(String, String, String)> = consumed
        .iter()
        .filter(|c| c.value["kind"] == "changed")
        .map(|c| {
            (
                c.key.clone(),
                c.value["from"].as_str().unwrap().into(),
                c.value["to"].as_str().unwrap().into(),
            )
        })
        .collect();
    let mut changes = changes;
    changes.sort();
    assert_eq!(
        changes,
        vec![
            ("user1".into(), "Offline".into(), "Online".into()),
            ("user2".into(), "Online".into(), "PushOnline".into())
        ]
    );
    assert_matches_history(&consumed, &all_history(&db), SimConfig::default().sdkappid);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_topic_holds_current_state_and_tombstones() {
    let addr = broker();
    let mut p = pipeline(50).await;
    let state_topic = topic_name("state");
    let cfg = KafkaConfig {
        create_topic: true,
        state_topic: state_topic.clone(),
        ..kafka_config(&addr, &topic_name("events"))
    };
    let sink = KafkaSink::new(&cfg, 1_400_000_000).unwrap();
    assert!(sink.check_topic().await.unwrap(), "both topics created");
    let mut publisher = publisher(&p, sink);
    p.control.churn(0.5).await;
    sweep_and_publish(&mut p, &mut publisher, 3).await;
    // Five accounts leave the watch list: their state records are tombstoned.
    p.sweeper
        .set_watch_list((5..50).map(|i| format!("user{i}")).collect())
        .await
        .unwrap();
    drain_until_empty(&mut publisher, Duration::from_secs(30)).await;
    let pending = p.store.call(|db| db.pending_tombstones(100)).await.unwrap();
    assert!(pending.is_empty(), "tombstones acknowledged: {pending:?}");

    let history = all_history(&p.db_path);
    let expected = history.len() + 5;
    let mut records = tokio::task::spawn_blocking(move || {
        consume(&addr, &state_topic, expected, Duration::from_secs(60))
    })
    .await
    .unwrap();
    assert_eq!(
        records.len(),
        expected,
        "one state record per transition plus five tombstones"
    );
    records.sort_by_key(|c| (c.partition, c.offset));
    let mut last: HashMap<String, serde_json::Value> = HashMap::new();
    for r in records {
        last.insert(r.key, r.value);
    }
    let schema: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string("schemas/presenced.state.v1.json").unwrap())
            .unwrap();
    let state_schema = jsonschema::validator_for(&schema).unwrap();
    let current = Db::open(&p.db_path, Duration::from_secs(5))
        .unwrap()
        .load_current()
        .unwrap();
    for row in current {
        let value = &last[&row.user_id];
        match row.state {
            None => assert!(
                value.is_null(),
                "{} left the watch list: expected a tombstone, got {value}",
                row.user_id
            ),
            Some(state) => {
                if let Err(e) = state_schema.validate(value) {
                    panic!("state record fails its schema: {e}\n{value}");
                }
                assert_eq!(value["state"], state.as_str(), "{}", row.user_id);
                assert_eq!(value["seq"], row.seq);
                assert_eq!(
                    value["platforms"],
                    serde_json::to_value(&row.platforms).unwrap()
                );
            }
        }
    }
    p.sim.stop().await;
}

/// A topic whose `max.message.bytes` is smaller than an event: the broker refuses it for good.
/// The publisher says so (a rejection, readiness failing) instead of retrying as if it might
/// pass, keeps the event and everything after it, and delivers them all once the topic accepts
/// them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_the_broker_rejects_for_good_is_held_and_fails_readiness() {
    use common::kafka::{alter_topic_config, create_topic_with};
    let addr = broker();
    let topic = topic_name("too-large");
    create_topic_with(&addr, &topic, 1, 1, &[("max.message.bytes", "200")]);
    let mut p = pipeline(20).await;
    let sink = KafkaSink::new(&kafka_config(&addr, &topic), 1_400_000_000).unwrap();
    let health = sink.health();
    let mut publisher = publisher(&p, sink);
    p.sweeper.sweep(&CancellationToken::new()).await.unwrap();
    assert_eq!(settle_round(&mut publisher).await, Drained::Rejected);
    assert!(
        health.blocks_readiness(),
        "a final rejection fails readiness"
    );
    let (backlog, _) = p.store.call(|db| db.outbox_backlog()).await.unwrap();
    assert_eq!(
        backlog, 20,
        "nothing leaves the outbox past the rejected event"
    );

    alter_topic_config(&addr, &topic, &[("max.message.bytes", "1000000")]);
    drain_until_empty(&mut publisher, Duration::from_secs(60)).await;
    assert!(
        !health.blocks_readiness(),
        "a delivery clears the rejection"
    );
    let history = all_history(&p.db_path);
    let consumed = tokio::task::spawn_blocking({
        let n = history.len();
        move || consume(&addr, &topic, n, Duration::from_secs(30))
    })
    .await
    .unwrap();
    assert_matches_history(&consumed, &history, 1_400_000_000);
    p.sim.stop().await;
}

/// The publisher is woken by each commit of a sweep, not only at its end: with an idle poll of a
/// minute, the first groups of a slow sweep are on the broker before the sweep finishes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_commit_wakes_the_publisher_during_a_sweep() {
    use presenced::publish::SinkConfig;
    let addr = broker();
    let topic = topic_name("wake");
    create_topic(&addr, &topic, 1);
    let mut p = pipeline(400).await;
    let wake = Arc::new(tokio::sync::Notify::new());
    p.sweeper.notify_commits(wake.clone());
    let sink = KafkaSink::new(&kafka_config(&addr, &topic), 1_400_000_000).unwrap();
    let publisher = Publisher::new(p.store.clone(), sink, 1_000, Arc::new(Metrics::new()), wake)
        .with_tuning(SinkConfig {
            idle_poll_ms: 60_000,
            ..SinkConfig::default()
        });
    let stop = CancellationToken::new();
    let running = tokio::spawn(publisher.run(stop.clone(), Duration::from_secs(10)));
    // Let the publisher find the outbox empty and go to sleep.
    tokio::time::sleep(Duration::from_millis(500)).await;
    // Eight batches of 50, four at a time, 1.5 s each: two commits at about 1.5 s, two at 3 s.
    p.control
        .faults(&presenced::sim::Faults {
            latency_ms: 1_500.0,
            ..Default::default()
        })
        .await;
    let store = p.store.clone();
    let sweep = tokio::spawn(async move {
        p.sweeper.sweep(&CancellationToken::new()).await.unwrap();
        p
    });
    let mut published_during_sweep = 0;
    while !sweep.is_finished() {
        let (backlog, _) = store.call(|db| db.outbox_backlog()).await.unwrap();
        let committed = store.call(|db| Ok(db.stats()?.history_rows)).await.unwrap();
        published_during_sweep = published_during_sweep.max(committed - backlog);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let p = sweep.await.unwrap();
    assert!(
        published_during_sweep > 0,
        "nothing was published while the sweep was still committing"
    );
    stop.cancel();
    running.await.unwrap().unwrap();
    p.sim.stop().await;
}
