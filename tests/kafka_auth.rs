//! SASL_SSL with SCRAM-SHA-512 and server certificate verification, on the Apache Kafka test
//! broker's second listener: the right credentials publish; a wrong password is one clear error
//! that names the broker and the mechanism (never the password), readiness fails, and nothing is
//! lost once the password is fixed and the daemon reloaded (SIGHUP).

mod common;

use common::kafka::{create_topic, single, Cluster};
use common::pipeline::*;
use common::*;
use presenced::config::KafkaConfig;
use presenced::publish::kafka::KafkaSink;
use presenced::sim::SimConfig;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

fn sasl_properties(k: &Cluster, password: &str) -> BTreeMap<String, String> {
    [
        ("security.protocol", "SASL_SSL".to_owned()),
        ("sasl.mechanism", "SCRAM-SHA-512".to_owned()),
        ("sasl.username", k.scram_user()),
        ("sasl.password", password.to_owned()),
        ("ssl.ca.location", k.ca()),
    ]
    .into_iter()
    .map(|(key, v)| (key.to_owned(), v))
    .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_right_scram_credentials_publish_over_tls() {
    let k = single();
    let topic = topic_name("sasl");
    let mut p = pipeline(50).await;
    let cfg = KafkaConfig {
        create_topic: true,
        topic_partitions: 2,
        properties: sasl_properties(&k, &k.scram_password()),
        ..kafka_config(&k.sasl_bootstrap(), &topic)
    };
    let sink = KafkaSink::new(&cfg, 1_400_000_000).unwrap();
    assert!(
        sink.check_topic().await.unwrap(),
        "topic created over SASL_SSL"
    );
    let health = sink.health();
    let mut publisher = publisher(&p, sink);
    p.control.churn(0.5).await;
    sweep_and_publish(&mut p, &mut publisher, 3).await;
    assert!(!health.credentials_refused());
    let history = all_history(&p.db_path);
    let addr = k.bootstrap();
    let consumed = consume_async(&addr, &topic, history.len()).await;
    assert_matches_history(&consumed, &history, 1_400_000_000);
    p.sim.stop().await;
}

struct Daemon {
    child: Reaped,
    log: std::path::PathBuf,
}

impl Daemon {
    fn start(config: &std::path::Path, log: std::path::PathBuf) -> Daemon {
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_presenced"))
            .args(["run", "--config"])
            .arg(config)
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        Daemon {
            child: Reaped(child),
            log,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn stop(mut self) -> String {
        signal(&self.child, "TERM");
        assert!(self.child.wait().unwrap().success(), "{}", self.log());
        self.log()
    }
}

async fn ready(port: u16) -> Option<u16> {
    reqwest::get(format!("http://127.0.0.1:{port}/readyz"))
        .await
        .ok()
        .map(|r| r.status().as_u16())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_password_is_one_clear_error_fails_readiness_and_loses_nothing() {
    let k = single();
    let topic = topic_name("sasl-wrong");
    create_topic(&k.bootstrap(), &topic, 2);
    let sim = SimProcess::start(&["--population", "30", "--churn", "0.5", "--rate", "0"]);
    let dir = tempfile::tempdir().unwrap();
    let wrong = "not-the-password-4711";
    let metrics_port = free_port();
    let write_config = |password: &str| {
        let properties: String = sasl_properties(&k, password)
            .iter()
            .map(|(key, v)| format!("\"{key}\" = \"{v}\"\n"))
            .collect();
        let path = write_daemon_config(
            dir.path(),
            &sim.base_url(),
            &format!(
                "[sink]\nkind = \"kafka\"\n[kafka]\nbrokers = \"{}\"\ntopic = \"{topic}\"\n[kafka.properties]\n{properties}",
                k.sasl_bootstrap()
            ),
        );
        // Every line at debug, so the scan for the password covers what an operator could turn on.
        let text = std::fs::read_to_string(&path).unwrap().replace(
            "metrics_listen = \"\"\nlog_filter = \"info\"",
            &format!("metrics_listen = \"127.0.0.1:{metrics_port}\"\nlog_filter = \"debug\"\nlog_format = \"json\""),
        );
        std::fs::write(&path, text).unwrap();
        path
    };
    let db = dir.path().join("presence.db");
    let ids: Vec<String> = (0..30).map(|i| format!("user{i}")).collect();
    add_watched(&db, &ids);
    let count = |sql: &str| query_number(&db, sql);

    let daemon = Daemon::start(&write_config(wrong), dir.path().join("wrong.log"));
    let deadline = Instant::now() + Duration::from_secs(60);
    while !(daemon.log().contains("Kafka refused the connection")
        && count("SELECT COUNT(*) FROM presence_history") >= 30)
    {
        assert!(
            Instant::now() < deadline,
            "no error reported:\n{}",
            daemon.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // More reconnection attempts, which must not repeat the error.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        ready(metrics_port).await,
        Some(503),
        "not ready while Kafka refuses us"
    );
    assert!(
        count("SELECT COUNT(*) FROM outbox") >= 30,
        "events wait in the outbox"
    );

    // Fixed in the file and reloaded (SIGHUP): the backlog drains, readiness returns.
    write_config(&k.scram_password());
    signal(&daemon.child, "HUP");
    let deadline = Instant::now() + Duration::from_secs(60);
    while count("SELECT COUNT(*) FROM outbox") != 0 || ready(metrics_port).await != Some(200) {
        assert!(
            Instant::now() < deadline,
            "the backlog did not drain:\n{}",
            daemon.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    sim.control().churn(0.0).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let log = daemon.stop();
    let errors: Vec<serde_json::Value> = log
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|l| l["level"] == "ERROR")
        .collect();
    eprintln!(
        "wrong password, the error line: {}",
        errors.first().map(|e| e.to_string()).unwrap_or_default()
    );
    assert_eq!(errors.len(), 1, "one error line: {errors:?}");
    let error = errors[0].to_string();
    assert!(
        error.contains("SCRAM-SHA-512"),
        "names the mechanism: {error}"
    );
    let port = k.sasl_bootstrap().rsplit(':').next().unwrap().to_owned();
    assert!(error.contains(&port), "names the broker: {error}");
    assert!(log.contains("Kafka settings reloaded"), "{log}");
    for password in [wrong.to_owned(), k.scram_password()] {
        assert!(!log.contains(&password), "a password appears in the log");
    }

    let history = all_history(&db);
    let addr = k.bootstrap();
    let consumed = consume_async(&addr, &topic, history.len()).await;
    assert_matches_history(&consumed, &history, SimConfig::default().sdkappid);
}
