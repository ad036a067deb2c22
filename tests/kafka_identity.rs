//! Exactly-once delivery knows which records on the topic are its own: this app's (`ce_source`)
//! and this database's (the record's `ce_id` is the event id of the history row at its history
//! id). A fresh database, a restored backup or a copy that went its own way finds the topic
//! holding events it did not publish: it holds (nothing sent, the mark unmoved, readiness
//! failing) until an operator adopts the topic's position. Another app on the same topic and
//! records without a history id (`presenced replay`) are skipped by the read-back.

mod common;

use common::kafka::{broker, create_topic, Consumed};
use common::pipeline::*;
use presenced::config::KafkaConfig;
use presenced::metrics::Metrics;
use presenced::publish::kafka::{
    high_watermarks, own_event_ids_after, Delivery, KafkaSink, TransactionalSink, HISTORY_ID_HEADER,
};
use presenced::publish::{Drained, EncodeBatch, Publisher, Sink, SinkConfig};
use presenced::sim::SimConfig;
use presenced::store::{Db, Store};
use presenced::sweep::{SweepSettings, Sweeper};
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

const APP: u64 = 1_400_000_000;

fn exactly_once(brokers: &str, topic: &str) -> KafkaConfig {
    KafkaConfig {
        delivery: Delivery::ExactlyOnce,
        batch_size: 100,
        ..kafka_config(brokers, topic)
    }
}

async fn eos_publisher(store: &Store, cfg: &KafkaConfig, app: u64) -> Publisher<TransactionalSink> {
    let (sink, reachable) = TransactionalSink::connect(cfg, app).await.unwrap();
    assert!(reachable);
    publisher_for(store, sink, cfg.batch_size)
}

/// The records of app `app` that carry a history id, as a `read_committed` consumer sees them.
fn own(consumed: &[Consumed], app: u64) -> Vec<Consumed> {
    let source = format!("/presenced/{app}");
    consumed
        .iter()
        .filter(|c| c.headers.get("ce_source") == Some(&source))
        .filter(|c| c.headers.contains_key(HISTORY_ID_HEADER))
        .cloned()
        .collect()
}

/// `records` hold each history row of the database at `db` after history id `after` once, with
/// its own history id, and each account's seq contiguous.
fn assert_once(records: &[Consumed], db: &Path, after: i64, app: u64) {
    let db = Db::open(db, Duration::from_secs(5)).unwrap();
    let rows = db.history_range(i64::MIN, i64::MAX, 0, 1 << 40).unwrap();
    let rows: Vec<_> = rows.into_iter().filter(|r| r.history_id > after).collect();
    let history: Vec<_> = rows.iter().map(|e| e.record.clone()).collect();
    assert_matches_history(records, &history, app);
    assert_eq!(records.len(), rows.len(), "each event exactly once");
    let ids: HashMap<String, i64> = rows
        .iter()
        .map(|e| (e.record.event_id.to_string(), e.history_id))
        .collect();
    let mut ordered: Vec<_> = records.iter().collect();
    ordered.sort_by_key(|c| (c.partition, c.offset));
    let mut seqs: HashMap<&str, u64> = HashMap::new();
    for c in ordered {
        let id = c.value["event_id"].as_str().unwrap();
        assert_eq!(c.headers[HISTORY_ID_HEADER], ids[id].to_string());
        let seq = c.value["seq"].as_u64().unwrap();
        if let Some(last) = seqs.insert(&c.key, seq) {
            assert_eq!(seq, last + 1, "{}: seq {seq} after {last}", c.key);
        }
    }
}

/// The records among `records` whose event is in the history of the database at `db`.
fn of_database(records: &[Consumed], db: &Path) -> Vec<Consumed> {
    let ids: std::collections::HashSet<String> = all_history(db)
        .iter()
        .map(|t| t.event_id.to_string())
        .collect();
    records
        .iter()
        .filter(|c| ids.contains(&c.headers["ce_id"]))
        .cloned()
        .collect()
}

fn backlog(db: &Path) -> i64 {
    query_number(
        db,
        "SELECT MAX(0, (SELECT COALESCE(MAX(history_id), 0) FROM presence_history) - history_id) FROM store_marks WHERE mark = 'published'",
    )
}

/// Drives a publisher until its round ends in something other than `Some`.
async fn round(publisher: &mut Publisher<TransactionalSink>) -> Drained {
    settle_round(publisher).await
}

/// What `presenced kafka adopt` does: the topic's current end becomes this database's floor.
async fn adopt(store: &Store, cfg: &KafkaConfig) {
    let settings = cfg.clone();
    let floor = tokio::task::spawn_blocking(move || high_watermarks(&settings))
        .await
        .unwrap()
        .unwrap();
    let mark = store.call(|db| db.published_mark()).await.unwrap();
    let settings = cfg.clone();
    let on_topic = tokio::task::spawn_blocking(move || {
        own_event_ids_after(&settings, &format!("/presenced/{APP}"), mark)
    })
    .await
    .unwrap()
    .unwrap();
    let topic = cfg.topic.clone();
    store
        .call(move |db| db.adopt_topic(&topic, &floor, Some(&on_topic)))
        .await
        .unwrap();
}

/// A copy of the database at `from`, as a backup tool would take it (SQLite's `VACUUM INTO`).
fn backup(from: &Path, to: &Path) {
    let db = Db::open(from, Duration::from_secs(5)).unwrap();
    db.connection()
        .execute("VACUUM INTO ?1", [to.to_str().unwrap()])
        .unwrap();
}

/// A sweeper over another database file, against the pipeline's simulator.
async fn sweeper_on(p: &Pipeline, store: &Store, population: usize) -> Sweeper {
    let settings = SweepSettings {
        batch_size: 50,
        max_in_flight: 4,
        batches_per_transaction: 2,
        platform_changes_are_transitions: true,
    };
    let client = common::client(&common::im_config(&p.sim, &SimConfig::default()));
    let mut sweeper = Sweeper::new(
        Arc::new(client),
        store.clone(),
        settings,
        Arc::new(Metrics::new()),
    )
    .await
    .unwrap();
    sweeper
        .set_watch_list(common::ids("user", population))
        .await
        .unwrap();
    sweeper
}

/// A database created anew against a topic that holds this app's events from the old one: the
/// read-back finds history ids this database does not have. Before this check the mark jumped
/// past the new database's own events, which were never sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_database_on_a_topic_with_this_apps_events_holds_until_adopted() {
    let addr = broker();
    let topic = topic_name("eos-fresh");
    create_topic(&addr, &topic, 3);
    let cfg = exactly_once(&addr, &topic);
    let mut old = pipeline(300).await;
    old.sweeper.sweep(&CancellationToken::new()).await.unwrap();
    let mut publisher = eos_publisher(&old.store, &cfg, APP).await;
    drain_until_empty(&mut publisher, Duration::from_secs(60)).await;
    drop(publisher);

    let mut fresh = pipeline(200).await;
    fresh
        .sweeper
        .sweep(&CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(backlog(&fresh.db_path), 200);
    let mut publisher = eos_publisher(&fresh.store, &cfg, APP).await;
    assert_eq!(round(&mut publisher).await, Drained::Held);
    assert_eq!(round(&mut publisher).await, Drained::Held, "it stays held");
    assert_eq!(backlog(&fresh.db_path), 200, "the mark did not move");

    adopt(&fresh.store, &cfg).await;
    drain_until_empty(&mut publisher, Duration::from_secs(60)).await;
    let consumed = own(&consume_async(&addr, &topic, 500).await, APP);
    assert_eq!(
        consumed.len(),
        500,
        "the old database's 300 and the new one's 200"
    );
    assert_once(&of_database(&consumed, &old.db_path), &old.db_path, 0, APP);
    assert_once(
        &of_database(&consumed, &fresh.db_path),
        &fresh.db_path,
        0,
        APP,
    );
    old.sim.stop().await;
    fresh.sim.stop().await;
}

/// A backup restored after the topic moved on: the topic holds history ids the backup never
/// had. The publisher holds while sweeps go on; `adopt` counts as sent the
/// backup's unsent events that the topic holds (same event ids) and nothing else: what the
/// restored database observed during the hold and after goes out, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restored_backup_older_than_the_topic_holds_until_adopted() {
    let addr = broker();
    let topic = topic_name("eos-restore");
    create_topic(&addr, &topic, 3);
    let cfg = exactly_once(&addr, &topic);
    let mut p = pipeline(300).await;
    p.sweeper.sweep(&CancellationToken::new()).await.unwrap();
    let mut publisher = eos_publisher(&p.store, &cfg, APP).await;
    // The backup is taken with 100 events not yet published.
    let first = p.store.call(|db| db.outbox_batch(0, 200)).await.unwrap();
    let through = first.last().unwrap().history_id;
    p.store
        .call(move |db| db.mark_published(through))
        .await
        .unwrap();
    let copy = p._dir.path().join("backup.db");
    backup(&p.db_path, &copy);
    let backup_newest = query_number(&copy, "SELECT MAX(history_id) FROM presence_history");
    assert_eq!(backlog(&copy), 100);
    // Mark it back: the original publishes everything itself.
    p.store
        .call(|db| {
            db.connection().execute(
                "UPDATE store_marks SET history_id = 0 WHERE mark = 'published'",
                [],
            )?;
            Ok(())
        })
        .await
        .unwrap();
    p.control.churn(0.5).await;
    for _ in 0..3 {
        drain_until_empty(&mut publisher, Duration::from_secs(60)).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        p.sweeper.sweep(&CancellationToken::new()).await.unwrap();
    }
    drain_until_empty(&mut publisher, Duration::from_secs(60)).await;
    drop(publisher);
    let published = all_history(&p.db_path).len() as i64;
    assert!(published > backup_newest, "the topic moved on: {published}");

    let restored = Store::open(&copy, Duration::from_secs(5)).await.unwrap();
    let mut publisher = eos_publisher(&restored, &cfg, APP).await;
    assert_eq!(round(&mut publisher).await, Drained::Held);
    // Sweeps go on while it holds.
    let mut sweeper = sweeper_on(&p, &restored, 300).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    sweeper.sweep(&CancellationToken::new()).await.unwrap();
    let during_hold =
        query_number(&copy, "SELECT MAX(history_id) FROM presence_history") - backup_newest;
    assert!(
        during_hold > 0,
        "the restored database observed changes while held"
    );
    assert_eq!(round(&mut publisher).await, Drained::Held);

    adopt(&restored, &cfg).await;
    assert_eq!(
        backlog(&copy),
        during_hold,
        "the backup's unsent events are on the topic; what was observed since is not"
    );
    for _ in 0..2 {
        drain_until_empty(&mut publisher, Duration::from_secs(60)).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        sweeper.sweep(&CancellationToken::new()).await.unwrap();
    }
    drain_until_empty(&mut publisher, Duration::from_secs(60)).await;
    p.control.churn(0.0).await;
    let restored_new =
        query_number(&copy, "SELECT MAX(history_id) FROM presence_history") - backup_newest;
    let total = published + restored_new;
    let consumed = own(&consume_async(&addr, &topic, total as usize).await, APP);
    assert_eq!(consumed.len() as i64, total, "nothing twice, nothing lost");
    let restored_part: Vec<_> = of_database(&consumed, &copy)
        .into_iter()
        .filter(|c| c.headers[HISTORY_ID_HEADER].parse::<i64>().unwrap() > backup_newest)
        .collect();
    assert_once(&restored_part, &copy, backup_newest, APP);
    p.sim.stop().await;
}

/// Two apps on one topic, each churning, each with a crash between a commit and its mark: each
/// read-back finds its own app's newest event, not the other's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_apps_on_one_topic_each_send_their_events_once() {
    let addr = broker();
    let topic = topic_name("eos-shared");
    create_topic(&addr, &topic, 3);
    let cfg = exactly_once(&addr, &topic);
    let apps = [APP, APP + 1];
    let mut pipes = [pipeline(200).await, pipeline(400).await];
    for p in &pipes {
        p.control.churn(0.5).await;
    }
    for round_no in 0..3 {
        for (p, app) in pipes.iter_mut().zip(apps) {
            tokio::time::sleep(Duration::from_millis(200)).await;
            p.sweeper.sweep(&CancellationToken::new()).await.unwrap();
            // A batch committed whose mark is never written: the process died in between.
            let (mut sink, _) = TransactionalSink::connect(&cfg, app).await.unwrap();
            let floor = HashMap::new();
            let found = sink.recover(&floor).await.unwrap();
            let after = found.map_or(0, |f| f.history_id);
            if round_no > 0 {
                assert_eq!(
                    after,
                    query_number(
                        &p.db_path,
                        "SELECT history_id FROM store_marks WHERE mark = 'published'"
                    ),
                    "app {app} finds its own newest event"
                );
            }
            let batch = p
                .store
                .call(move |db| db.outbox_batch(after, 50))
                .await
                .unwrap();
            let encoded = EncodeBatch::encode(&sink.encoder(), &batch);
            let pending = sink.start(&batch, encoded).await;
            assert!(sink.finish(pending).await.iter().all(Result::is_ok));
            drop(sink);
            let mut publisher = eos_publisher(&p.store, &cfg, app).await;
            drain_until_empty(&mut publisher, Duration::from_secs(60)).await;
        }
    }
    let consumed = consume_async(&addr, &topic, 600).await;
    for (p, app) in pipes.iter().zip(apps) {
        assert_once(&own(&consumed, app), &p.db_path, 0, app);
        p.control.churn(0.0).await;
    }
    for p in pipes {
        p.sim.stop().await;
    }
}

/// `presenced replay` into the daemon's own topic leaves the newest records without a history
/// id; a crash between a commit and its mark then must still find the committed batch behind
/// them (before, the read-back stopped at the replayed records and sent the batch again).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replayed_records_on_the_topic_do_not_hide_a_committed_batch() {
    let addr = broker();
    let topic = topic_name("eos-replay");
    create_topic(&addr, &topic, 1);
    let cfg = exactly_once(&addr, &topic);
    let mut p = pipeline(300).await;
    p.sweeper.sweep(&CancellationToken::new()).await.unwrap();
    let (mut sink, _) = TransactionalSink::connect(&cfg, APP).await.unwrap();
    assert_eq!(sink.recover(&HashMap::new()).await.unwrap(), None);
    let batch = p.store.call(|db| db.outbox_batch(0, 120)).await.unwrap();
    let encoded = EncodeBatch::encode(&sink.encoder(), &batch);
    let pending = sink.start(&batch, encoded).await;
    assert!(sink.finish(pending).await.iter().all(Result::is_ok));
    drop(sink);

    // An operator replays the history into the same topic, five times over (plain producer, no
    // history ids): 1,500 records above the committed batch, so the read-back needs three
    // passes, each further back.
    let plain = KafkaConfig {
        delivery: Delivery::AtLeastOnce,
        ..cfg.clone()
    };
    let mut replayer = KafkaSink::new(&plain, APP).unwrap();
    for _ in 0..5 {
        let replayed = presenced::publish::replay(
            &p.store,
            &mut replayer,
            &SinkConfig::default(),
            0,
            i64::MAX,
            |_, _| {},
        )
        .await
        .unwrap();
        assert_eq!(replayed, 300);
    }
    drop(replayer);

    let mut publisher = eos_publisher(&p.store, &cfg, APP).await;
    drain_until_empty(&mut publisher, Duration::from_secs(60)).await;
    let consumed = own(&consume_async(&addr, &topic, 1_800).await, APP);
    assert_once(&consumed, &p.db_path, 0, APP);
    p.sim.stop().await;
}

/// A twin started on a copy of the database after the copy and the original went their own
/// ways: the topic's newest event at a history id is not the copy's event there. The twin
/// holds instead of mixing two histories on the topic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_twin_on_a_copy_that_diverged_holds() {
    let addr = broker();
    let topic = topic_name("eos-diverged");
    create_topic(&addr, &topic, 3);
    let cfg = exactly_once(&addr, &topic);
    let mut p = pipeline(300).await;
    p.sweeper.sweep(&CancellationToken::new()).await.unwrap();
    let mut publisher = eos_publisher(&p.store, &cfg, APP).await;
    drain_until_empty(&mut publisher, Duration::from_secs(60)).await;
    let copy = p._dir.path().join("twin.db");
    backup(&p.db_path, &copy);
    let twin = Store::open(&copy, Duration::from_secs(5)).await.unwrap();
    let mut twin_sweeper = sweeper_on(&p, &twin, 300).await;
    p.control.churn(1.0).await;
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        p.sweeper.sweep(&CancellationToken::new()).await.unwrap();
        drain_until_empty(&mut publisher, Duration::from_secs(60)).await;
        tokio::time::sleep(Duration::from_millis(150)).await;
        twin_sweeper.sweep(&CancellationToken::new()).await.unwrap();
    }
    p.control.churn(0.0).await;
    drop(publisher);
    let before = backlog(&copy);
    assert!(before > 0, "the twin observed changes of its own");
    let mut publisher = eos_publisher(&twin, &cfg, APP).await;
    assert_eq!(round(&mut publisher).await, Drained::Held);
    assert_eq!(backlog(&copy), before, "the twin's mark did not move");
    let consumed = own(&consume_async(&addr, &topic, 300).await, APP);
    assert_once(&consumed, &p.db_path, 0, APP);
    p.sim.stop().await;
}

/// GETs `path` from the daemon's metrics port: (status, body).
async fn get(port: u16, path: &str) -> (u16, String) {
    match reqwest::get(format!("http://127.0.0.1:{port}{path}")).await {
        Ok(r) => (r.status().as_u16(), r.text().await.unwrap_or_default()),
        Err(_) => (0, String::new()),
    }
}

/// The operator's view, with the daemon binary: a daemon on a new database finds this app's
/// events of the old database on the topic, says so in one ERROR, fails /readyz and shows
/// `presenced_publish_held 1`, sends nothing; `presenced kafka adopt` lets it go on. No healthy
/// start in exactly-once mode logs an ERROR (librdkafka's partition ends were logged as such).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_holds_on_a_foreign_history_until_the_operator_adopts_the_topic() {
    let addr = broker();
    let topic = topic_name("eos-adopt");
    create_topic(&addr, &topic, 3);
    let sim = common::SimProcess::start(&["--population", "400", "--churn", "0", "--rate", "0"]);
    let kafka = format!(
        "[sink]\nkind = \"kafka\"\n[kafka]\nbrokers = \"{addr}\"\ntopic = \"{topic}\"\ndelivery = \"exactly-once\"\n"
    );
    let spawn = |config: &Path, log: &Path| {
        let log = std::fs::File::create(log).unwrap();
        common::Reaped(
            std::process::Command::new(env!("CARGO_BIN_EXE_presenced"))
                .args(["run", "--config"])
                .arg(config)
                .stderr(log)
                .spawn()
                .unwrap(),
        )
    };
    let wait = |what: &str, secs: u64, done: &mut dyn FnMut() -> bool| {
        let deadline = std::time::Instant::now() + Duration::from_secs(secs);
        while !done() {
            assert!(
                std::time::Instant::now() < deadline,
                "timed out waiting for {what}"
            );
            std::thread::sleep(Duration::from_millis(300));
        }
    };

    let old_dir = tempfile::tempdir().unwrap();
    let old_config = common::write_daemon_config(old_dir.path(), &sim.base_url(), &kafka);
    let old_db = old_dir.path().join("presence.db");
    add_watched(&old_db, &common::ids("user", 400));
    let old_log = old_dir.path().join("daemon.log");
    let mut old = spawn(&old_config, &old_log);
    wait("the first database published", 120, &mut || {
        query_number(&old_db, "SELECT COUNT(*) FROM presence_history") >= 400
            && backlog(&old_db) == 0
    });
    common::signal(&old, "TERM");
    assert!(old.wait().unwrap().success());

    let new_dir = tempfile::tempdir().unwrap();
    let port = common::free_port();
    let new_config = common::write_daemon_config(new_dir.path(), &sim.base_url(), &kafka);
    let text = std::fs::read_to_string(&new_config).unwrap().replace(
        "metrics_listen = \"\"",
        &format!("metrics_listen = \"127.0.0.1:{port}\""),
    );
    std::fs::write(&new_config, text).unwrap();
    let new_db = new_dir.path().join("presence.db");
    add_watched(&new_db, &common::ids("user", 400));
    let new_log = new_dir.path().join("daemon.log");
    let mut daemon = spawn(&new_config, &new_log);
    let held = |log: &Path| {
        std::fs::read_to_string(log)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains("disagrees with this database"))
            .count()
    };
    wait("the hold", 120, &mut || {
        held(&new_log) == 1 && query_number(&new_db, "SELECT COUNT(*) FROM presence_history") >= 400
    });
    assert_eq!(get(port, "/readyz").await.0, 503);
    assert!(get(port, "/metrics")
        .await
        .1
        .contains("presenced_publish_held 1"));
    tokio::time::sleep(Duration::from_secs(12)).await;
    assert_eq!(
        backlog(&new_db),
        400,
        "nothing was sent and the mark stayed"
    );
    assert_eq!(held(&new_log), 1, "said once, not at every read-back");

    let adopted = std::process::Command::new(env!("CARGO_BIN_EXE_presenced"))
        .args(["kafka", "adopt", "--config"])
        .arg(&new_config)
        .output()
        .unwrap();
    assert!(adopted.status.success(), "{adopted:?}");
    let said = String::from_utf8_lossy(&adopted.stdout);
    assert!(
        said.contains("400 unsent events") && said.contains("will be published"),
        "{said}"
    );
    wait("the new database published", 60, &mut || {
        backlog(&new_db) == 0
    });
    wait("readiness", 30, &mut || readyz_ok(port));
    assert!(get(port, "/metrics")
        .await
        .1
        .contains("presenced_publish_held 0"));
    common::signal(&daemon, "TERM");
    assert!(daemon.wait().unwrap().success());

    for log in [&old_log, &new_log] {
        let text = std::fs::read_to_string(log).unwrap();
        let errors: Vec<_> = text
            .lines()
            .filter(|l| l.contains("ERROR") && !l.contains("disagrees with this database"))
            .collect();
        assert!(errors.is_empty(), "unexpected ERROR lines: {errors:#?}");
    }
    let consumed = own(&consume_async(&addr, &topic, 800).await, APP);
    assert_eq!(consumed.len(), 800);
    assert_once(&of_database(&consumed, &new_db), &new_db, 0, APP);
    assert_once(&of_database(&consumed, &old_db), &old_db, 0, APP);
}

/// Whether /readyz answers 200, from a blocking context.
fn readyz_ok(port: u16) -> bool {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.write_all(b"GET /readyz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    let mut answer = String::new();
    let _ = s.read_to_string(&mut answer);
    answer.starts_with("HTTP/1.1 200")
}

/// Partitions added to the events topic since the database last published to it: the daemon
/// refuses to start (exit 78, naming the topic and both counts) instead of splitting accounts'
/// events over two partitions; `presenced kafka adopt` accepts the new layout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitions_added_to_the_topic_are_refused_until_adopted() {
    use rdkafka::admin::{AdminClient, AdminOptions, NewPartitions};
    use rdkafka::client::DefaultClientContext;
    let addr = broker();
    let topic = topic_name("eos-grown");
    create_topic(&addr, &topic, 1);
    let sim = common::SimProcess::start(&["--population", "50", "--churn", "0", "--rate", "0"]);
    let dir = tempfile::tempdir().unwrap();
    let config = common::write_daemon_config(
        dir.path(),
        &sim.base_url(),
        &format!("[sink]\nkind = \"kafka\"\n[kafka]\nbrokers = \"{addr}\"\ntopic = \"{topic}\"\ndelivery = \"exactly-once\"\n"),
    );
    let db = dir.path().join("presence.db");
    add_watched(&db, &common::ids("user", 50));
    let run = || {
        std::process::Command::new(env!("CARGO_BIN_EXE_presenced"))
            .args(["run", "--config"])
            .arg(&config)
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let daemon = common::Reaped(run());
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !(query_number(&db, "SELECT COUNT(*) FROM presence_history") >= 50 && backlog(&db) == 0) {
        assert!(
            std::time::Instant::now() < deadline,
            "the first run published"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    common::signal(&daemon, "TERM");
    let mut daemon = daemon;
    assert!(daemon.wait().unwrap().success());

    let admin: AdminClient<DefaultClientContext> = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &addr)
        .create()
        .unwrap();
    let grown = admin
        .create_partitions([&NewPartitions::new(&topic, 3)], &AdminOptions::new())
        .await
        .unwrap();
    assert!(grown.iter().all(Result::is_ok), "{grown:?}");

    let refused = run().wait_with_output().unwrap();
    let said = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(78), "{said}");
    assert!(
        said.contains(&topic) && said.contains("has 3 partitions; it had 1"),
        "{said}"
    );
    let adopted = std::process::Command::new(env!("CARGO_BIN_EXE_presenced"))
        .args(["kafka", "adopt", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(adopted.status.success(), "{adopted:?}");
    let mut daemon = common::Reaped(run());
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        daemon.try_wait().unwrap().is_none(),
        "it runs after the adoption"
    );
    common::signal(&daemon, "TERM");
    assert!(daemon.wait().unwrap().success());
}

/// A floor recorded for a topic that was since created anew under the same name lies past the
/// partition's end: it is ignored (with a WARN), so a batch committed just before a crash is
/// still found (before, the partition was skipped and the batch sent again).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_floor_past_the_partitions_end_is_ignored() {
    let addr = broker();
    let topic = topic_name("eos-stale-floor");
    create_topic(&addr, &topic, 2);
    let cfg = exactly_once(&addr, &topic);
    let mut p = pipeline(200).await;
    p.sweeper.sweep(&CancellationToken::new()).await.unwrap();
    let stale = vec![(0, 1_000_000), (1, 1_000_000)];
    let name = topic.clone();
    p.store
        .call(move |db| db.adopt_topic(&name, &stale, None).map(|_| ()))
        .await
        .unwrap();
    let floor = p.store.call({
        let topic = topic.clone();
        move |db| db.publish_floor(&topic)
    });
    let floor = floor.await.unwrap();
    let (mut sink, _) = TransactionalSink::connect(&cfg, APP).await.unwrap();
    assert_eq!(sink.recover(&floor).await.unwrap(), None);
    let batch = p.store.call(|db| db.outbox_batch(0, 80)).await.unwrap();
    let encoded = EncodeBatch::encode(&sink.encoder(), &batch);
    let pending = sink.start(&batch, encoded).await;
    assert!(sink.finish(pending).await.iter().all(Result::is_ok));
    drop(sink); // the mark is never written

    let mut publisher = eos_publisher(&p.store, &cfg, APP).await;
    drain_until_empty(&mut publisher, Duration::from_secs(60)).await;
    let consumed = own(&consume_async(&addr, &topic, 200).await, APP);
    assert_once(&consumed, &p.db_path, 0, APP);
    p.sim.stop().await;
}

/// Reloads (SIGHUP) at random moments while the exactly-once publisher drains a growing
/// backlog, half of them with settings librdkafka rejects: the round in progress is never cut
/// short, rejected settings change nothing, accepted ones re-create the producers, and every
/// event reaches the topic once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reloads_with_rejected_and_accepted_settings_during_rounds_lose_and_double_nothing() {
    use rand::Rng;
    let addr = broker();
    let topic = topic_name("eos-reload");
    create_topic(&addr, &topic, 3);
    let cfg = KafkaConfig {
        batch_size: 40,
        ..exactly_once(&addr, &topic)
    };
    let mut p = pipeline(2_000).await;
    p.sweeper.sweep(&CancellationToken::new()).await.unwrap();
    let (sink, _) = TransactionalSink::connect(&cfg, APP).await.unwrap();
    let (settings, reloads) = tokio::sync::watch::channel(cfg.clone());
    let publisher = publisher_for(&p.store, sink, cfg.batch_size).reconfigure_with(reloads);
    let stop = CancellationToken::new();
    let running = tokio::spawn(publisher.run(stop.clone(), Duration::from_secs(10)));
    p.control.churn(0.3).await;
    let mut rejected = cfg.clone();
    rejected
        .properties
        .insert("compression.level".into(), "not a number".into());
    for i in 0..40 {
        let pause = rand::rng().random_range(0..250);
        tokio::time::sleep(Duration::from_millis(pause)).await;
        let next = match i % 2 {
            0 => rejected.clone(),
            _ => KafkaConfig {
                linger_ms: (i % 7) as u64,
                ..cfg.clone()
            },
        };
        settings.send_replace(next);
        if i % 10 == 9 {
            p.sweeper.sweep(&CancellationToken::new()).await.unwrap();
        }
    }
    p.control.churn(0.0).await;
    p.sweeper.sweep(&CancellationToken::new()).await.unwrap();
    wait_for_empty_outbox(&p.store, Duration::from_secs(120)).await;
    stop.cancel();
    running.await.unwrap().unwrap();
    let total = all_history(&p.db_path).len();
    let consumed = own(&consume_async(&addr, &topic, total).await, APP);
    assert_once(&consumed, &p.db_path, 0, APP);
    p.sim.stop().await;
}
