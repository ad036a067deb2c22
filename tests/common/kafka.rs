//! Kafka helpers: the Apache Kafka nodes that scripts/test.sh started (scripts/kafka.sh), topic
//! creation, and a consumer that reads a topic back.
#![allow(dead_code)]

pub use super::cut_proxy::CutProxy;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// A running set of Apache Kafka nodes, as `scripts/kafka.sh start DIR` left them in DIR.
#[derive(Debug, Clone)]
pub struct Cluster {
    pub dir: PathBuf,
    env: HashMap<String, String>,
}

impl Cluster {
    /// The nodes whose directory is in the environment variable `var`. Kafka tests fail, never
    /// skip, when the suite was started without them.
    fn from_env(var: &str) -> Cluster {
        let dir = std::env::var(var).unwrap_or_else(|_| {
            panic!("{var} is not set: run the suite with scripts/test.sh, which starts the Apache Kafka test brokers")
        });
        let dir = PathBuf::from(dir);
        let text = std::fs::read_to_string(dir.join("env"))
            .unwrap_or_else(|e| panic!("{}: {e}", dir.join("env").display()));
        let env = text
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.trim_matches('"').to_owned()))
            .collect();
        Cluster { dir, env }
    }

    fn get(&self, key: &str) -> &str {
        &self.env[key]
    }

    /// PLAINTEXT bootstrap addresses.
    pub fn bootstrap(&self) -> String {
        self.get("KAFKA_BOOTSTRAP").to_owned()
    }

    /// SASL_SSL (SCRAM-SHA-512) bootstrap addresses.
    pub fn sasl_bootstrap(&self) -> String {
        self.get("KAFKA_SASL_BOOTSTRAP").to_owned()
    }

    /// The CA certificate that signed the brokers' certificates.
    pub fn ca(&self) -> String {
        self.get("KAFKA_CA").to_owned()
    }

    pub fn scram_user(&self) -> String {
        self.get("KAFKA_SCRAM_USER").to_owned()
    }

    pub fn scram_password(&self) -> String {
        self.get("KAFKA_SCRAM_PASSWORD").to_owned()
    }

    /// PROXIED bootstrap addresses: a client given these reaches the cluster only through a
    /// [`CutProxy`] started with [`Cluster::proxy`].
    pub fn proxied_bootstrap(&self) -> String {
        self.get("KAFKA_PROXIED_BOOTSTRAP").to_owned()
    }

    /// Starts the forwarder in front of the PROXIED listeners (one at a time per cluster).
    pub async fn proxy(&self) -> CutProxy {
        let pairs = self
            .get("KAFKA_PROXIED")
            .split(',')
            .map(|pair| {
                let (from, to) = pair.split_once('=').expect("ADVERTISED=LISTENING");
                (from.parse().unwrap(), to.parse().unwrap())
            })
            .collect::<Vec<(u16, u16)>>();
        CutProxy::start(&pairs).await
    }

    pub fn node_ids(&self) -> Vec<i32> {
        self.get("KAFKA_NODES")
            .split_whitespace()
            .map(|s| s.parse().unwrap())
            .collect()
    }

    fn script(&self, args: &[&str]) {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/kafka.sh");
        let status = Command::new(script)
            .args(args)
            .status()
            .expect("scripts/kafka.sh runs");
        assert!(status.success(), "scripts/kafka.sh {args:?} failed");
    }

    /// SIGKILLs node `id`.
    pub fn kill_node(&self, id: i32) {
        self.script(&["kill-node", self.dir.to_str().unwrap(), &id.to_string()]);
    }

    /// Starts node `id` again and waits until it serves.
    pub fn start_node(&self, id: i32) {
        self.start_nodes(&[id]);
    }

    /// Starts these nodes together (a node waits for a quorum) and waits until they serve.
    pub fn start_nodes(&self, ids: &[i32]) {
        let ids: Vec<String> = ids.iter().map(i32::to_string).collect();
        let mut args = vec!["start-node", self.dir.to_str().unwrap()];
        args.extend(ids.iter().map(String::as_str));
        self.script(&args);
    }

    /// Starts whatever node is down (a failed test may have left one), and waits until served.
    pub fn all_nodes_up(&self) {
        let down: Vec<i32> = self
            .node_ids()
            .into_iter()
            .filter(|id| !self.dir.join(format!("node{id}/pid")).exists())
            .collect();
        if !down.is_empty() {
            self.start_nodes(&down);
        }
    }

    /// The node that leads `partition` of `topic` now, if the metadata names one.
    pub fn leader(&self, topic: &str, partition: i32) -> Option<i32> {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", self.bootstrap())
            .create()
            .unwrap();
        let metadata = consumer
            .fetch_metadata(Some(topic), Duration::from_secs(10))
            .ok()?;
        let t = metadata.topics().iter().find(|t| t.name() == topic)?;
        let p = t.partitions().iter().find(|p| p.id() == partition)?;
        (p.leader() >= 0).then_some(p.leader())
    }
}

/// The single test broker.
pub fn single() -> Cluster {
    Cluster::from_env("PRESENCED_TEST_KAFKA_DIR")
}

/// The three-node test cluster, for failover, outage and exactly-once tests. Tests that stop its
/// nodes hold [`cluster_lock`] so they do not overlap.
pub fn cluster() -> Cluster {
    Cluster::from_env("PRESENCED_TEST_KAFKA_CLUSTER_DIR")
}

/// The single test broker's PLAINTEXT address.
pub fn broker() -> String {
    single().bootstrap()
}

/// Serialises the tests of one binary that stop and start the cluster's nodes (each test has a
/// runtime of its own; tokio's mutex does not mind).
pub async fn cluster_lock() -> tokio::sync::MutexGuard<'static, ()> {
    static LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    LOCK.lock().await
}

/// Runs a future to completion on a runtime of its own, so that blocking helpers can be called
/// from any test, async or not.
fn block_on<F: std::future::Future + Send>(f: F) -> F::Output
where
    F::Output: Send,
{
    std::thread::scope(|s| {
        s.spawn(|| {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(f)
        })
        .join()
        .unwrap()
    })
}

/// An admin client of the brokers at `addr`.
fn admin(addr: &str) -> AdminClient<DefaultClientContext> {
    ClientConfig::new()
        .set("bootstrap.servers", addr)
        .create()
        .unwrap()
}

/// Creates a topic with `partitions` partitions, `replicas` replicas and these topic configs.
pub fn create_topic_with(
    addr: &str,
    name: &str,
    partitions: i32,
    replicas: i32,
    configs: &[(&str, &str)],
) {
    let admin = admin(addr);
    let mut topic = NewTopic::new(name, partitions, TopicReplication::Fixed(replicas));
    for (k, v) in configs {
        topic = topic.set(k, v);
    }
    let results = block_on(admin.create_topics(
        [&topic],
        &AdminOptions::new().operation_timeout(Some(Duration::from_secs(30))),
    ))
    .unwrap();
    for r in results {
        r.unwrap_or_else(|(t, e)| panic!("creating topic {t}: {e}"));
    }
}

/// Changes topic configs of an existing topic.
pub fn alter_topic_config(addr: &str, name: &str, configs: &[(&str, &str)]) {
    use rdkafka::admin::{AlterConfig, ResourceSpecifier};
    let admin = admin(addr);
    let mut change = AlterConfig::new(ResourceSpecifier::Topic(name));
    for (k, v) in configs {
        change = change.set(k, v);
    }
    let results = block_on(admin.alter_configs(
        [&change],
        &AdminOptions::new().operation_timeout(Some(Duration::from_secs(30))),
    ))
    .unwrap();
    for r in results {
        r.unwrap_or_else(|(t, e)| panic!("altering topic {t:?}: {e}"));
    }
}

/// Creates a topic with one replica.
pub fn create_topic(addr: &str, name: &str, partitions: i32) {
    create_topic_with(addr, name, partitions, 1, &[]);
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
