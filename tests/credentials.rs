//! The secret key, UserSigs and the Kafka SASL password never reach the logs, at the most
//! verbose level, during a run full of failures (a redirecting proxy and an unreachable SASL_SSL
//! broker among them); nor error messages or Debug output.

mod common;

use common::*;
use presenced::sim::Faults;
use std::io::Write;
use std::sync::{Arc, Mutex};

const KAFKA_PASSWORD: &str = "kafka-password-31337";

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn no_credentials_in_trace_logs_errors_or_debug() {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    // Global, not thread-local: librdkafka calls back on its own threads. This binary has one test.
    tracing::subscriber::set_global_default(subscriber).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut texts = Vec::new();
    let secret = rt.block_on(async {
        let cfg = quiet_sim(20);
        let sim = start_sim(cfg.clone()).await;
        let control = Control::new(&sim);
        let mut im = im_config(&sim, &cfg);
        im.max_attempts = 3;
        im.timeout_secs = 0.3;
        let c = client(&im);
        texts.push(format!("{c:?}"));
        texts.push(format!("{im:?}"));
        // Every kind of failure once, then a configuration error with a wrong key.
        control
            .script(&["http_502", "truncated", "html", "70001", "60011", "70500"])
            .await;
        for _ in 0..3 {
            if let Err(e) = c.query(&ids("user", 20)).await {
                texts.push(format!("{e} {e:?}"));
            }
        }
        control
            .faults(&Faults {
                latency_ms: 1_000.0,
                ..Faults::default()
            })
            .await;
        if let Err(e) = c.query(&ids("user", 2)).await {
            texts.push(format!("{e} {e:?}"));
        }
        control.faults(&Faults::default()).await;
        let mut wrong = im.clone();
        wrong.secret_key = presenced::secret::Secret::new("wrong-key-0123456789");
        let e = client(&wrong).query(&ids("user", 1)).await.unwrap_err();
        texts.push(format!("{e} {e:?}"));

        // A proxy answering 307: the redirect is logged, and neither the log nor the error
        // carries the URL with the UserSig.
        let proxy = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let proxy_url = format!("http://{}/", proxy.local_addr().unwrap());
        let redirect = axum::Router::new().fallback(|| async {
            (
                axum::http::StatusCode::TEMPORARY_REDIRECT,
                [("location", "http://127.0.0.1:9/elsewhere")],
            )
        });
        tokio::spawn(async move { axum::serve(proxy, redirect).await.unwrap() });
        let mut redirected = im.clone();
        redirected.base_url = Some(proxy_url);
        let e = client(&redirected)
            .query(&ids("user", 2))
            .await
            .unwrap_err();
        texts.push(format!("{e} {e:?}"));

        // Kafka over SASL_SSL to a port where nothing listens: librdkafka's every line (at
        // debug, which this subscriber records), the sink's reports, Debug of every
        // configuration type and a configuration error.
        let kafka = presenced::config::KafkaConfig {
            brokers: "127.0.0.1:9".into(),
            properties: [
                ("security.protocol", "SASL_SSL"),
                ("sasl.mechanism", "SCRAM-SHA-512"),
                ("sasl.username", "presenced"),
                ("sasl.password", KAFKA_PASSWORD),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect(),
            ..presenced::config::KafkaConfig::default()
        };
        let sink = presenced::publish::kafka::KafkaSink::new(&kafka, 1).unwrap();
        texts.push(format!("{:?}", sink.check_topic().await));
        texts.push(format!("{sink:?} {kafka:?}"));
        let mut config = presenced::config::Config {
            kafka: kafka.clone(),
            im: im.clone(),
            ..presenced::config::Config::default()
        };
        texts.push(format!("{config:?} {}", config.to_redacted_toml()));
        config.kafka.topic_min_insync_replicas = 5;
        config.kafka.topic_replication_factor = 3;
        if let Err(e) = config.validate("credentials.toml") {
            texts.push(format!("{e} {e:?}"));
        }
        tokio::time::sleep(std::time::Duration::from_secs(2)).await;
        drop(sink);
        sim.stop().await;
        cfg.secret_key.expose().to_owned()
    });
    let logs = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    assert!(
        logs.contains("retrying IM call"),
        "the run should have logged its retries:\n{logs}"
    );
    let everything = format!("{logs}\n{}", texts.join("\n"));
    assert!(
        logs.contains("librdkafka"),
        "the Kafka producer's own lines were recorded:\n{logs}"
    );
    assert!(logs.contains("redirect"), "the redirect was logged");
    for needle in [
        secret.as_str(),
        KAFKA_PASSWORD,
        "wrong-key-0123456789",
        "usersig=",
        "eJw",
        "eJy",
        "eJx",
        "eNo",
    ] {
        assert!(
            !everything.contains(needle),
            "found {needle:?} in:\n{everything}"
        );
    }
}
