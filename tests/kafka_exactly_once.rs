//! Exactly-once delivery (`kafka.delivery = "exactly-once"`) against Apache Kafka: the crash
//! windows shown step by step on the single broker, then the daemon binary on the three-node
//! cluster, SIGKILLed fifty times, with partition leaders killed, beside a fenced twin, and
//! through an outage longer than the transaction timeout. A `read_committed` consumer must see
//! every event of the history exactly once, each account's seq contiguous.

mod common;

use common::kafka::{broker, cluster, cluster_lock, create_topic, create_topic_with};
use common::pipeline::*;
use common::{free_port, ids, signal, write_daemon_config, Reaped, SimProcess};
use presenced::config::KafkaConfig;
use presenced::publish::kafka::{Delivery, TransactionalSink, HISTORY_ID_HEADER};
use presenced::publish::{EncodeBatch, Sink};
use presenced::store::Db;
use std::collections::HashMap;
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
    assert_eq!(
        sink.recover(&HashMap::new()).await.unwrap(),
        None,
        "an empty topic"
    );
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
        sink.recover(&HashMap::new())
            .await
            .unwrap()
            .map(|c| (c.history_id, c.event_id)),
        batch
            .last()
            .map(|e| (e.history_id, e.record.event_id.to_string())),
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
    let mut publisher = publisher_for(&p.store, sink, cfg.batch_size);
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
    let mut publisher = publisher_for(&p.store, sink, cfg.batch_size);
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

/// A commit whose outcome stays unknown past its deadline (the transaction coordinator answers
/// only "try again" until the commit timed out, librdkafka's mock cluster told to). Aborting
/// it would fail on every call (`_CONFLICT` while librdkafka still commits, `_STATE` once it
/// did) and wedge the publisher: the producer is re-created instead, and the publisher goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_whose_outcome_is_unknown_does_not_wedge_the_publisher() {
    use rdkafka::mocking::MockCluster;
    use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
    let mock = MockCluster::new(1).unwrap();
    mock.create_topic("unknown", 1, 1).unwrap();
    let cfg = KafkaConfig {
        transaction_timeout_ms: 2_000,
        ..exactly_once(&mock.bootstrap_servers(), "unknown")
    };
    let mut p = pipeline(100).await;
    p.sweeper.sweep(&CancellationToken::new()).await.unwrap();
    let (sink, _) = TransactionalSink::connect(&cfg, 1_400_000_000)
        .await
        .unwrap();
    let mut publisher = publisher_for(&p.store, sink, cfg.batch_size);
    // The coordinator answers every EndTxn with a retriable error: librdkafka keeps trying, and
    // the commit (2 s, called again until 4 s) times out with its outcome unknown.
    mock.request_errors(
        RDKafkaApiKey::EndTxn,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_CONCURRENT_TRANSACTIONS; 400],
    );
    assert_eq!(
        settle_round(&mut publisher).await,
        presenced::publish::Drained::Failed
    );
    mock.clear_request_errors(RDKafkaApiKey::EndTxn);
    drain_until_empty(&mut publisher, Duration::from_secs(90)).await;
    let consumed = consume_async(&mock.bootstrap_servers(), "unknown", 100).await;
    assert_exactly_once(&consumed, &p.db_path);
    p.sim.stop().await;
}

/// A read-back the broker refuses (a principal without READ on the topic, here librdkafka's
/// mock cluster answering TOPIC_AUTHORIZATION_FAILED): nothing is sent, readiness fails, and
/// once the broker answers the publisher goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_back_that_fails_fails_readiness_and_sends_nothing() {
    use rdkafka::mocking::MockCluster;
    use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
    let mock = MockCluster::new(1).unwrap();
    mock.create_topic("noread", 2, 1).unwrap();
    let cfg = exactly_once(&mock.bootstrap_servers(), "noread");
    let mut p = pipeline(60).await;
    p.sweeper.sweep(&CancellationToken::new()).await.unwrap();
    let (sink, _) = TransactionalSink::connect(&cfg, 1_400_000_000)
        .await
        .unwrap();
    let health = sink.health();
    let mut publisher = publisher_for(&p.store, sink, cfg.batch_size);
    for api in [RDKafkaApiKey::ListOffsets, RDKafkaApiKey::Fetch] {
        mock.request_errors(
            api,
            &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED; 50],
        );
    }
    assert_eq!(
        settle_round(&mut publisher).await,
        presenced::publish::Drained::Failed
    );
    assert!(
        health.blocks_readiness(),
        "a failing read-back fails readiness"
    );
    let (backlog, _) = p.store.call(|db| db.outbox_backlog()).await.unwrap();
    assert_eq!(backlog, 60, "nothing was sent");
    for api in [RDKafkaApiKey::ListOffsets, RDKafkaApiKey::Fetch] {
        mock.clear_request_errors(api);
    }
    drain_until_empty(&mut publisher, Duration::from_secs(60)).await;
    assert!(!health.blocks_readiness());
    let consumed = consume_async(&mock.bootstrap_servers(), "noread", 60).await;
    assert_exactly_once(&consumed, &p.db_path);
    p.sim.stop().await;
}

/// A daemon whose transaction stalled past the transaction timeout while a twin with the same
/// transactional.id took over and published: the fencing surfaces on the old transaction, and
/// the topic shows that someone else committed since it began. The old daemon stands down; the
/// twin keeps publishing (before, the old daemon took its fencing for a broker timeout,
/// re-created its producers and fenced the twin for good).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fencing_on_an_old_transaction_after_a_twin_took_over_stands_down() {
    let addr = broker();
    let topic = topic_name("eos-old-fence");
    create_topic(&addr, &topic, 3);
    let cfg = KafkaConfig {
        transaction_timeout_ms: 2_000,
        ..exactly_once(&addr, &topic)
    };
    let mut p = pipeline(300).await;
    p.sweeper.sweep(&CancellationToken::new()).await.unwrap();
    let (mut stalled, _) = TransactionalSink::connect(&cfg, 1_400_000_000)
        .await
        .unwrap();
    assert_eq!(stalled.recover(&HashMap::new()).await.unwrap(), None);
    let batch = p.store.call(|db| db.outbox_batch(0, 100)).await.unwrap();
    let encoded = EncodeBatch::encode(&stalled.encoder(), &batch);
    let pending = stalled.start(&batch, encoded).await;
    tokio::time::sleep(Duration::from_millis(2_500)).await;

    // The twin: same transactional.id, same database; it fences the stalled one and publishes.
    let (twin, _) = TransactionalSink::connect(&cfg, 1_400_000_000)
        .await
        .unwrap();
    let mut twin = publisher_for(&p.store, twin, cfg.batch_size);
    drain_until_empty(&mut twin, Duration::from_secs(60)).await;

    assert!(stalled.finish(pending).await.iter().all(Result::is_err));
    assert!(
        matches!(
            stalled.recover(&HashMap::new()).await,
            Err(presenced::publish::DeliveryError::Fenced(_))
        ),
        "the stalled daemon stands down"
    );
    p.control.churn(0.5).await;
    for _ in 0..2 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        p.sweeper.sweep(&CancellationToken::new()).await.unwrap();
        drain_until_empty(&mut twin, Duration::from_secs(60)).await;
    }
    p.control.churn(0.0).await;
    let total = all_history(&p.db_path).len();
    let consumed = consume_async(&addr, &topic, total).await;
    assert_exactly_once(&consumed, &p.db_path);
    p.sim.stop().await;
}

/// A clean stop in the middle of a long backlog: the last drain keeps a part of the flush
/// timeout to abort the transaction it leaves open, so `read_committed` consumers are not held
/// back until the broker times it out (before, the drain used the whole timeout and the abort
/// got none). The last stable offset of every partition is its end right after the stop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clean_stop_during_a_backlog_leaves_no_transaction_open() {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let addr = broker();
    let topic = topic_name("eos-stop");
    create_topic(&addr, &topic, 3);
    // Transactions of 50 events: 400 commits, which cannot all happen before the stop.
    let cfg = KafkaConfig {
        transaction_events: 50,
        ..exactly_once(&addr, &topic)
    };
    let mut p = pipeline(20_000).await;
    p.sweeper.sweep(&CancellationToken::new()).await.unwrap();
    let (sink, _) = TransactionalSink::connect(&cfg, 1_400_000_000)
        .await
        .unwrap();
    let publisher = publisher_for(&p.store, sink, cfg.transaction_events);
    let stop = CancellationToken::new();
    let running = tokio::spawn(publisher.run(stop.clone(), Duration::from_secs(1)));
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.cancel();
    running.await.unwrap().unwrap();
    let (backlog, _) = p.store.call(|db| db.outbox_backlog()).await.unwrap();
    assert!(backlog > 0, "the stop came before the backlog was drained");
    let watermarks = |isolation: &str| {
        let consumer: BaseConsumer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", &addr)
            .set("group.id", "watermarks")
            .set("isolation.level", isolation)
            .create()
            .unwrap();
        (0..3)
            .map(|p| {
                consumer
                    .fetch_watermarks(&topic, p, Duration::from_secs(10))
                    .unwrap()
                    .1
            })
            .collect::<Vec<_>>()
    };
    // The coordinator writes the abort's markers just after answering: the last stable offset
    // catches up within moments, where a transaction left open would hold it back until the
    // transaction timeout (60 s).
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while watermarks("read_committed") != watermarks("read_uncommitted") {
        assert!(
            std::time::Instant::now() < deadline,
            "a transaction was left open: the last stable offset stays behind"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    p.sim.stop().await;
}

/// A reload (SIGHUP) while `init_transactions` waits for a coordinator that is not ready: the round
/// is not cut short, so the old producer's initialisation cannot finish after the new one's and
/// fence the daemon's own new producer. Once the broker is back, everything goes out once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_during_a_blocked_init_does_not_fence_the_daemon_itself() {
    use rdkafka::mocking::MockCluster;
    use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
    let mock = MockCluster::new(1).unwrap();
    mock.create_topic("blocked-init", 2, 1).unwrap();
    let cfg = KafkaConfig {
        transaction_timeout_ms: 3_000,
        ..exactly_once(&mock.bootstrap_servers(), "blocked-init")
    };
    let mut p = pipeline(80).await;
    p.sweeper.sweep(&CancellationToken::new()).await.unwrap();
    let (sink, _) = TransactionalSink::connect(&cfg, 1_400_000_000)
        .await
        .unwrap();
    let health = sink.health();
    // The coordinator answers "try again" to every InitProducerId: init_transactions waits.
    mock.request_errors(
        RDKafkaApiKey::InitProducerId,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_COORDINATOR_LOAD_IN_PROGRESS; 300],
    );
    let (settings, reloads) = tokio::sync::watch::channel(cfg.clone());
    let publisher = publisher_for(&p.store, sink, cfg.batch_size).reconfigure_with(reloads);
    let stop = CancellationToken::new();
    let running = tokio::spawn(publisher.run(stop.clone(), Duration::from_secs(5)));
    for linger in [1, 2, 3] {
        tokio::time::sleep(Duration::from_millis(700)).await;
        settings.send_replace(KafkaConfig {
            linger_ms: linger,
            ..cfg.clone()
        });
    }
    mock.clear_request_errors(RDKafkaApiKey::InitProducerId);
    wait_for_empty_outbox(&p.store, Duration::from_secs(90)).await;
    assert!(!health.blocks_readiness(), "not fenced, nothing held");
    stop.cancel();
    running.await.unwrap().unwrap();
    let consumed = consume_async(&mock.bootstrap_servers(), "blocked-init", 80).await;
    assert_exactly_once(&consumed, &p.db_path);
    p.sim.stop().await;
}

/// A daemon process in exactly-once mode against the three-node cluster, with the simulator as
/// a process of its own.
struct Rig {
    sim: SimProcess,
    dir: tempfile::TempDir,
    config: std::path::PathBuf,
    db: std::path::PathBuf,
    topic: String,
    brokers: String,
}

impl Rig {
    /// `population` watched accounts churning at `churn` (a share per second), a topic of six
    /// partitions with three replicas, two in sync.
    fn new(prefix: &str, population: usize, churn: &str, extra_kafka: &str) -> Rig {
        let c = cluster();
        c.all_nodes_up();
        let brokers = c.bootstrap();
        let topic = topic_name(prefix);
        create_topic_with(&brokers, &topic, 6, 3, &[("min.insync.replicas", "2")]);
        let n = population.to_string();
        let sim = SimProcess::start(&["--population", &n, "--churn", churn, "--rate", "0"]);
        let dir = tempfile::tempdir().unwrap();
        let config = write_daemon_config(
            dir.path(),
            &sim.base_url(),
            &format!(
                "[sink]\nkind = \"kafka\"\n[kafka]\nbrokers = \"{brokers}\"\ntopic = \"{topic}\"\n\
                 delivery = \"exactly-once\"\ntransaction_events = 200\n{extra_kafka}\n\
                 [kafka.properties]\n\"reconnect.backoff.max.ms\" = \"1000\"\n"
            ),
        );
        let db = dir.path().join("presence.db");
        add_watched(&db, &ids("user", population));
        Rig {
            sim,
            dir,
            config,
            db,
            topic,
            brokers,
        }
    }

    fn spawn(&self, config: &std::path::Path, log: &str) -> Reaped {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join(log))
            .unwrap();
        Reaped(
            std::process::Command::new(env!("CARGO_BIN_EXE_presenced"))
                .args(["run", "--config"])
                .arg(config)
                .stderr(log)
                .spawn()
                .unwrap(),
        )
    }

    /// Events not yet published from `db` (-1 while it cannot be read).
    fn backlog(db: &std::path::Path) -> i64 {
        query_number(db, "SELECT COUNT(*) FROM outbox")
    }

    /// Runs a daemon until its outbox is empty with the simulator quiet, then stops it.
    async fn drain(&self) {
        self.sim.control().churn(0.0).await;
        let mut daemon = self.spawn(&self.config, "drain.log");
        wait_for("the outbox drained", 180, || {
            std::thread::sleep(Duration::from_millis(1_500));
            Rig::backlog(&self.db) == 0
        });
        signal(&daemon, "TERM");
        assert!(daemon.wait().unwrap().success());
    }

    /// Reads the topic with read_committed and compares it with the history in `db`.
    async fn assert_exactly_once_with(&self, db: &std::path::Path) -> usize {
        let rows = all_history(db).len();
        let consumed = consume_async(&self.brokers, &self.topic, rows).await;
        assert_exactly_once(&consumed, db);
        rows
    }

    /// [`Rig::assert_exactly_once_with`] the rig's own database.
    async fn assert_exactly_once(&self) -> usize {
        self.assert_exactly_once_with(&self.db).await
    }
}

fn wait_for(what: &str, secs: u64, mut done: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(secs);
    while !done() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// SIGKILLs the daemon `kills` times at random moments while it publishes a backlog and the
/// simulator churns; between kills, `between(i)` may do more harm. Returns how many kills
/// landed while events were waiting to be published.
async fn kill_repeatedly(rig: &Rig, kills: usize, mut between: impl FnMut(usize)) -> usize {
    use rand::Rng;
    let mut rng = rand::rng();
    let mut with_backlog = 0;
    for i in 0..kills {
        let mut daemon = rig.spawn(&rig.config, "killed.log");
        std::thread::sleep(Duration::from_millis(rng.random_range(300..2_500)));
        // Aim the kill at a moment with events waiting when one comes within a second (the
        // publisher drains a sweep's few events in milliseconds, so a random moment often
        // finds none).
        let aim = std::time::Instant::now() + Duration::from_secs(1);
        while Rig::backlog(&rig.db) == 0 && std::time::Instant::now() < aim {
            std::thread::sleep(Duration::from_millis(5));
        }
        with_backlog += usize::from(Rig::backlog(&rig.db) > 0);
        daemon.0.kill().unwrap();
        daemon.0.wait().unwrap();
        between(i);
    }
    with_backlog
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_sigkills_while_publishing_leave_each_event_once() {
    let _serial = cluster_lock().await;
    // 3,000 initial events and 60 changes a second; at most 200 events a transaction.
    let rig = Rig::new("eos-kill", 3_000, "0.02", "");
    // The backlog is read just before each kill: the last daemon may well have drained it all.
    let with_backlog = kill_repeatedly(&rig, 50, |_| {}).await;
    assert!(
        with_backlog >= 10,
        "only {with_backlog} of 50 kills landed while events waited to be published"
    );
    // How many restarts found a batch committed on Kafka but not marked in SQLite: the window
    // that only the read-back closes.
    let log = std::fs::read_to_string(rig.dir.path().join("killed.log")).unwrap();
    let caught = log
        .lines()
        .filter(|l| l.contains("nothing is sent twice"))
        .count();
    eprintln!("fifty SIGKILLs: {with_backlog} landed with events unsent; {caught} restarts found committed events past the mark");
    rig.drain().await;
    let rows = rig.assert_exactly_once().await;
    eprintln!("fifty SIGKILLs: {rows} events, each on the topic once");
    rig.sim.control().churn(0.0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkills_with_partition_leaders_killed_leave_each_event_once() {
    let _serial = cluster_lock().await;
    let rig = Rig::new("eos-leaders", 2_000, "0.02", "");
    let c = cluster();
    let mut down = None;
    kill_repeatedly(&rig, 12, |i| match i {
        // A partition leader killed a few restarts in, started again a few later.
        3 | 7 => {
            let leader = c.leader(&rig.topic, (i % 6) as i32).expect("a leader");
            c.kill_node(leader);
            down = Some(leader);
        }
        5 | 10 => {
            if let Some(id) = down.take() {
                c.start_node(id);
            }
        }
        _ => {}
    })
    .await;
    if let Some(id) = down {
        c.start_node(id);
    }
    rig.drain().await;
    let rows = rig.assert_exactly_once().await;
    eprintln!("leaders killed: {rows} events, each on the topic once");
}

/// A second daemon on a copy of the database, with the same transactional.id, started while the
/// first publishes: the first is fenced (one error, /readyz failing, never writes again), the
/// second carries on, and the topic has each event once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_twin_with_the_same_transactional_id_fences_the_first() {
    let _serial = cluster_lock().await;
    // A quiet simulator, so both copies of the history agree; 20,000 initial events in
    // transactions of 100, so the first daemon is still publishing when the twin starts.
    let rig = Rig::new("eos-twin", 20_000, "0", "");
    let port = free_port();
    let first_config = rig.dir.path().join("first.toml");
    let text = std::fs::read_to_string(&rig.config)
        .unwrap()
        .replace(
            "metrics_listen = \"\"",
            &format!("metrics_listen = \"127.0.0.1:{port}\""),
        )
        .replace("transaction_events = 200", "transaction_events = 100");
    std::fs::write(&first_config, &text).unwrap();
    let mut first = rig.spawn(&first_config, "first.log");
    wait_for("the first daemon publishing", 120, || {
        let rows = query_number(&rig.db, "SELECT COUNT(*) FROM presence_history");
        rows >= 20_000 && (1..15_000).contains(&Rig::backlog(&rig.db))
    });
    // The twin: a consistent copy of the live database, the same topic and transactional.id.
    let twin_dir = tempfile::tempdir().unwrap();
    let twin_db = twin_dir.path().join("presence.db");
    Db::open(&rig.db, Duration::from_secs(5))
        .unwrap()
        .connection()
        .execute("VACUUM INTO ?1", [twin_db.to_str().unwrap()])
        .unwrap();
    let twin_config = twin_dir.path().join("twin.toml");
    std::fs::write(
        &twin_config,
        text.replace(rig.db.to_str().unwrap(), twin_db.to_str().unwrap())
            .replace(&format!("127.0.0.1:{port}"), ""),
    )
    .unwrap();
    let mut twin = rig.spawn(&twin_config, "twin.log");

    // A fenced producer learns it at its next transaction: once the twin has taken over (its
    // read-back done), new changes give the first daemon something to send.
    let twin_log = rig.dir.path().join("twin.log");
    wait_for("the twin taking over", 120, || {
        std::fs::read_to_string(&twin_log)
            .unwrap()
            .contains("read back the topic")
    });
    rig.sim.control().churn(0.01).await;
    let first_log = rig.dir.path().join("first.log");
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while !std::fs::read_to_string(&first_log)
        .unwrap()
        .contains("took over")
    {
        if std::time::Instant::now() > deadline {
            let first = std::fs::read_to_string(&first_log).unwrap();
            let twin = std::fs::read_to_string(&twin_log).unwrap();
            panic!("the first daemon was not fenced\n--- first\n{first}\n--- twin\n{twin}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let ready = reqwest::get(format!("http://127.0.0.1:{port}/readyz"))
        .await
        .unwrap()
        .status();
    assert_eq!(ready.as_u16(), 503, "a fenced daemon is not ready");
    // The survivor goes on with the new changes.
    std::thread::sleep(Duration::from_secs(3));
    rig.sim.control().churn(0.0).await;
    wait_for("the twin drained its outbox", 180, || {
        std::thread::sleep(Duration::from_millis(1_000));
        Rig::backlog(&twin_db) == 0
    });
    signal(&twin, "TERM");
    assert!(twin.wait().unwrap().success());
    signal(&first, "TERM");
    assert!(first.wait().unwrap().success());

    let log = std::fs::read_to_string(&first_log).unwrap();
    let errors: Vec<&str> = log.lines().filter(|l| l.contains("ERROR")).collect();
    assert_eq!(errors.len(), 1, "one clear error:\n{log}");
    assert!(errors[0].contains("took over"), "{log}");
    let rows = rig.assert_exactly_once_with(&twin_db).await;
    eprintln!("twin: {rows} events, each on the topic once; the first daemon fenced");
}

/// Every node down for longer than the transaction timeout while sweeps go on: the open
/// transaction is aborted, the outbox keeps everything, and afterwards each event is on the
/// topic once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_longer_than_the_transaction_timeout_loses_and_duplicates_nothing() {
    let _serial = cluster_lock().await;
    let rig = Rig::new("eos-outage", 500, "0.1", "transaction_timeout_ms = 4000");
    let c = cluster();
    let mut daemon = rig.spawn(&rig.config, "outage.log");
    wait_for("the first events published", 120, || {
        query_number(&rig.db, "SELECT COUNT(*) FROM presence_history") >= 500
            && Rig::backlog(&rig.db) == 0
    });
    let nodes = c.node_ids();
    for id in &nodes {
        c.kill_node(*id);
    }
    std::thread::sleep(Duration::from_secs(12));
    assert!(Rig::backlog(&rig.db) > 0, "events wait in the outbox");
    c.start_nodes(&nodes);
    wait_for("the backlog drained", 180, || Rig::backlog(&rig.db) == 0);
    signal(&daemon, "TERM");
    assert!(daemon.wait().unwrap().success());
    rig.drain().await;
    let rows = rig.assert_exactly_once().await;
    eprintln!("outage: {rows} events, each on the topic once");
}
