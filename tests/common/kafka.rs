//! Kafka helpers: the test broker's address, a broker process of a test's own, and a consumer
//! that reads a topic back.
#![allow(dead_code)]

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The shared test broker started by scripts/test.sh. Kafka tests fail, never skip, without it.
pub fn broker() -> String {
    std::env::var("PRESENCED_TEST_KAFKA").expect(
        "PRESENCED_TEST_KAFKA is not set: run the suite with scripts/test.sh, which installs and starts the test broker",
    )
}

pub fn tansu_binary() -> String {
    std::env::var("PRESENCED_TANSU").unwrap_or_else(|_| "tansu".into())
}

/// A tansu broker of a test's own, with SQLite storage so that its data survives a restart.
pub struct Tansu {
    pub port: u16,
    dir: std::path::PathBuf,
    child: Option<Child>,
}

impl Tansu {
    pub fn new(dir: &Path) -> Tansu {
        Tansu {
            port: super::free_port(),
            dir: dir.to_owned(),
            child: None,
        }
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn start(&mut self) {
        let url = format!("tcp://127.0.0.1:{}", self.port);
        let child = Command::new(tansu_binary())
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
            ])
            .args(["--storage-engine", "sqlite://tansu.db"])
            .current_dir(&self.dir)
            .stdout(Stdio::null())
            .stderr(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(self.dir.join("broker.log"))
                    .unwrap(),
            )
            .spawn()
            .expect("tansu is installed (scripts/test.sh installs it)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "tansu did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The broker's own log, for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("broker.log")).unwrap_or_default()
    }

    /// Stops the broker the way an operator would (SIGTERM), so its storage is closed cleanly.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(c.id().to_string())
                .status();
            let deadline = Instant::now() + Duration::from_secs(10);
            while c.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn create_topic(&self, name: &str, partitions: u32) {
        create_topic(&self.addr(), name, partitions);
    }
}

impl Drop for Tansu {
    fn drop(&mut self) {
        self.stop();
    }
}

pub fn create_topic(addr: &str, name: &str, partitions: u32) {
    let out = Command::new(tansu_binary())
        .args([
            "topic",
            "create",
            name,
            "--partitions",
            &partitions.to_string(),
            "--broker",
            &format!("tcp://{addr}"),
        ])
        .output()
        .expect("tansu topic create runs");
    assert!(
        out.status.success(),
        "creating topic {name}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[derive(Debug, Clone)]
pub struct Consumed {
    pub key: String,
    pub partition: i32,
    pub offset: i64,
    pub value: serde_json::Value,
    pub headers: BTreeMap<String, String>,
}

/// Reads the topic from the beginning until `expected` messages arrived and a quiet second
/// passed (so extras would be seen too), or the timeout.
pub fn consume(addr: &str, topic: &str, expected: usize, timeout: Duration) -> Vec<Consumed> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", addr)
        .set("group.id", format!("test-{}", uuid::Uuid::now_v7()))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    consumer.subscribe(&[topic]).unwrap();
    let deadline = Instant::now() + timeout;
    let mut out = Vec::new();
    let mut quiet_since: Option<Instant> = None;
    while Instant::now() < deadline {
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => {
                quiet_since = None;
                let mut headers = BTreeMap::new();
                if let Some(h) = m.headers() {
                    for hdr in h.iter() {
                        headers.insert(
                            hdr.key.to_owned(),
                            String::from_utf8_lossy(hdr.value.unwrap_or_default()).into_owned(),
                        );
                    }
                }
                out.push(Consumed {
                    key: String::from_utf8(m.key().unwrap().to_vec()).unwrap(),
                    partition: m.partition(),
                    offset: m.offset(),
                    // A tombstone (no payload) reads as null.
                    value: m.payload().map_or(serde_json::Value::Null, |p| {
                        serde_json::from_slice(p).unwrap()
                    }),
                    headers,
                });
            }
            Some(Err(e)) => eprintln!("consumer: {e}"),
            None => {
                if out.len() >= expected {
                    let since = *quiet_since.get_or_insert_with(Instant::now);
                    if since.elapsed() > Duration::from_secs(1) {
                        break;
                    }
                }
            }
        }
    }
    out
}
