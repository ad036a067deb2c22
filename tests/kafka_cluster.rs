//! Delivery guarantees on the three-node Apache Kafka test cluster: partition leaders SIGKILLed
//! and restarted while the simulator churns, and the whole cluster down for longer than an
//! operator's message timeout. Every event in SQLite reaches the topic, per-account seq order
//! holds once duplicates are dropped by event_id, and the duplicates are counted.
//!
//! These tests stop the cluster's nodes, so they hold `cluster_lock` and never overlap.

mod common;

use common::kafka::{cluster, cluster_lock, Consumed};
use common::pipeline::*;
use common::*;
use presenced::config::KafkaConfig;
use presenced::metrics::Metrics;
use presenced::publish::kafka::KafkaSink;
use presenced::publish::Publisher;
use presenced::sim::SimConfig;
use rdkafka::admin::{AdminClient, AdminOptions, ResourceSpecifier};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// Events consumed more than once (same event id).
fn duplicates(consumed: &[Consumed]) -> usize {
    let unique: HashSet<&str> = consumed
        .iter()
        .map(|c| c.value["event_id"].as_str().unwrap())
        .collect();
    consumed.len() - unique.len()
}

/// A topic config as the broker reports it.
async fn topic_config(addr: &str, topic: &str, key: &str) -> Option<String> {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", addr)
        .create()
        .unwrap();
    let described = admin
        .describe_configs([&ResourceSpecifier::Topic(topic)], &AdminOptions::new())
        .await
        .unwrap();
    let resource = described.into_iter().next().unwrap().unwrap();
    resource.get(key).and_then(|e| e.value.clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partition_leaders_killed_during_churn_lose_nothing_and_keep_order() {
    let _serial = cluster_lock().await;
    let c = cluster();
    c.all_nodes_up();
    let addr = c.bootstrap();
    let topic = topic_name("failover");
    let p = pipeline(300).await;
    // The topic as the daemon creates it when configured to: three replicas, two in sync.
    let cfg = KafkaConfig {
        create_topic: true,
        topic_partitions: 3,
        topic_replication_factor: 3,
        topic_min_insync_replicas: 2,
        ..kafka_config(&addr, &topic)
    };
    let sink = KafkaSink::new(&cfg, 1_400_000_000).unwrap();
    assert!(sink.check_topic().await.unwrap());
    assert_eq!(
        topic_config(&addr, &topic, "min.insync.replicas")
            .await
            .as_deref(),
        Some("2")
    );
    let stop_publisher = CancellationToken::new();
    let publishing = tokio::spawn(
        Publisher::new(
            p.store.clone(),
            sink,
            500,
            Arc::new(Metrics::new()),
            Arc::new(tokio::sync::Notify::new()),
        )
        .run(stop_publisher.clone(), Duration::from_secs(10)),
    );

    // Sweeps every 300 ms with churn while leaders die and come back.
    p.control.churn(0.3).await;
    let Pipeline {
        sim,
        control,
        mut sweeper,
        store,
        db_path,
        _dir,
    } = p;
    let stop_sweeping = CancellationToken::new();
    let sweeping = tokio::spawn({
        let stop = stop_sweeping.clone();
        async move {
            let shutdown = CancellationToken::new();
            while !stop.is_cancelled() {
                sweeper.sweep(&shutdown).await.unwrap();
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
            sweeper
        }
    });
    let mut killed = Vec::new();
    for round in 0..3 {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let leader = {
            let (c, topic) = (c.clone(), topic.clone());
            tokio::task::spawn_blocking(move || c.leader(&topic, round % 3))
                .await
                .unwrap()
                .expect("the partition has a leader")
        };
        killed.push(leader);
        c.kill_node(leader);
        tokio::time::sleep(Duration::from_secs(3)).await;
        let c2 = c.clone();
        tokio::task::spawn_blocking(move || c2.start_node(leader))
            .await
            .unwrap();
    }
    control.churn(0.0).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop_sweeping.cancel();
    let _sweeper = sweeping.await.unwrap();
    wait_for_empty_outbox(&store, Duration::from_secs(120)).await;
    stop_publisher.cancel();
    publishing.await.unwrap().unwrap();

    let history = all_history(&db_path);
    let consumed = consume_async(&addr, &topic, history.len()).await;
    eprintln!(
        "failover: leaders killed {killed:?}; {} transitions, {} records on the topic, {} duplicates",
        history.len(),
        consumed.len(),
        duplicates(&consumed)
    );
    assert!(
        history.len() > 600,
        "churn made {} transitions",
        history.len()
    );
    assert_matches_history(&consumed, &history, 1_400_000_000);
    sim.stop().await;
}

/// The daemon binary, the simulator process churning, and the whole cluster SIGKILLed for longer
/// than the message timeout an operator configured (which the producer overrides: a timed-out
/// message left a gap that later events skipped over, so an account's seq 4 could arrive before
/// its seq 2). Nothing is lost, order holds, and the outage costs a few log lines, not one per
/// librdkafka callback.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_outage_longer_than_the_message_timeout_loses_nothing_and_keeps_order() {
    let _serial = cluster_lock().await;
    let c = cluster();
    c.all_nodes_up();
    let addr = c.bootstrap();
    let topic = topic_name("outage");
    common::kafka::create_topic_with(&addr, &topic, 3, 3, &[("min.insync.replicas", "2")]);
    let sim = SimProcess::start(&["--population", "200", "--churn", "0.2", "--rate", "0"]);
    let dir = tempfile::tempdir().unwrap();
    let config = write_daemon_config(
        dir.path(),
        &sim.base_url(),
        &format!(
            "[sink]\nkind = \"kafka\"\n[kafka]\nbrokers = \"{addr}\"\ntopic = \"{topic}\"\nbatch_size = 200\n\
             [kafka.properties]\n\"message.timeout.ms\" = \"3000\"\n\"reconnect.backoff.max.ms\" = \"1000\"\n"
        ),
    );
    let text = std::fs::read_to_string(&config).unwrap().replace(
        "log_filter = \"info\"",
        "log_filter = \"info\"\nlog_format = \"json\"",
    );
    std::fs::write(&config, text).unwrap();
    let db = dir.path().join("presence.db");
    let ids: Vec<String> = (0..200).map(|i| format!("user{i}")).collect();
    add_watched(&db, &ids);
    let log_path = dir.path().join("daemon.log");
    let mut daemon = Reaped(
        std::process::Command::new(env!("CARGO_BIN_EXE_presenced"))
            .args(["run", "--config"])
            .arg(&config)
            .stderr(std::fs::File::create(&log_path).unwrap())
            .spawn()
            .unwrap(),
    );
    // -1 while the database cannot be read: never mistaken for an empty outbox.
    let backlog = || query_number(&db, "SELECT COUNT(*) FROM outbox");
    let history_rows = || query_number(&db, "SELECT COUNT(*) FROM presence_history");
    let wait = |what: &str, secs: u64, f: &dyn Fn() -> bool| {
        let deadline = Instant::now() + Duration::from_secs(secs);
        while !f() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    wait("the first events published", 60, &|| {
        history_rows() >= 200 && backlog() == 0
    });

    // Every node down for 12 s, four times the configured message timeout, while sweeps go on.
    let nodes = c.node_ids();
    for id in &nodes {
        c.kill_node(*id);
    }
    let before = history_rows();
    std::thread::sleep(Duration::from_secs(12));
    assert!(history_rows() > before, "sweeps go on while Kafka is down");
    assert!(backlog() > 0, "events wait in the outbox");
    c.start_nodes(&nodes);
    wait("the backlog drained", 120, &|| backlog() == 0);
    sim.control().churn(0.0).await;
    std::thread::sleep(Duration::from_secs(1));
    wait("the last events published", 60, &|| backlog() == 0);
    signal(&daemon, "TERM");
    assert!(daemon.wait().unwrap().success());

    let log = std::fs::read_to_string(&log_path).unwrap();
    let lines: Vec<serde_json::Value> = log
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let loud: Vec<&serde_json::Value> = lines
        .iter()
        .filter(|l| l["level"] == "WARN" || l["level"] == "ERROR")
        .collect();
    let message = |l: &serde_json::Value| l["fields"]["message"].as_str().unwrap_or("").to_owned();
    eprintln!(
        "outage: {} log lines, {} at WARN or above: {:?}",
        lines.len(),
        loud.len(),
        loud.iter().map(|l| message(l)).collect::<Vec<_>>()
    );
    assert!(
        loud.iter().any(|l| message(l).contains("unreachable")),
        "the outage is reported"
    );
    assert!(
        lines.iter().any(|l| message(l).contains("reachable again")),
        "the recovery is reported"
    );
    assert!(
        loud.len() <= 4,
        "a 12-second outage is a few lines, not one per callback: {loud:?}"
    );

    let history = all_history(&db);
    let consumed = consume_async(&addr, &topic, history.len()).await;
    eprintln!(
        "outage: {} transitions, {} records on the topic, {} duplicates",
        history.len(),
        consumed.len(),
        duplicates(&consumed)
    );
    assert_matches_history(&consumed, &history, SimConfig::default().sdkappid);
}
