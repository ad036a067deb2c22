//! End-to-end measurements that criterion's sampling does not fit: the IM client's achieved call
//! rate and ceiling against the simulator process, the store at 1,000,000 accounts, the Kafka
//! publisher against a local broker, and the whole daemon's sweep rate, CPU and memory.
//!
//! cargo bench --bench throughput -- SCENARIO   (client-rate, client-ceiling, store, kafka, e2e)
//! scripts/bench.sh runs them all (it starts the Kafka broker the kafka scenario needs).

#[allow(dead_code)]
mod support;

use futures_util::StreamExt;
use presenced::config::ImConfig;
use presenced::im::{AccountOutcome, ClientSettings, ImClient};
use presenced::metrics::Metrics;
use presenced::model::TransitionRecord;
use presenced::model::{PlatformStatus, State};
use presenced::store::{Db, WriteSet};
use presenced::sweep::Snapshot;
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::{daemon, ids, sim_process, Proc, SIM_KEY};

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let all = [
        "client-rate",
        "client-ceiling",
        "store",
        "prune",
        "kafka",
        "kafka-memory",
        "e2e",
    ];
    let chosen: Vec<&str> = if args.is_empty() {
        all.to_vec()
    } else {
        args.iter().map(String::as_str).collect()
    };
    for scenario in chosen {
        println!("\n## {scenario}");
        match scenario {
            "client-rate" => rt.block_on(client_rate()),
            "client-ceiling" => rt.block_on(client_ceiling()),
            "store" => store(),
            "prune" => prune(),
            "kafka" => rt.block_on(kafka()),
            "kafka-memory" => kafka_memory(),
            "e2e" => e2e(),
            other => panic!("unknown scenario {other}; expected one of {all:?}"),
        }
    }
}

// ---- process helpers ---------------------------------------------------------------------------

fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name (which may hold spaces) start at ") ".
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f[11].parse::<f64>().unwrap() + f[12].parse::<f64>().unwrap();
    ticks / 100.0 // USER_HZ is 100 on Linux
}

fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace()
        .nth(1)
        .unwrap()
        .parse::<u64>()
        .unwrap()
        * 1024
}

/// A daemon process in `dir` watching the `population` accounts of the simulator at `url`,
/// sweeping every `interval_secs`, with `sink` (its `[sink]`, and `[kafka]` if any); returns it
/// and its database.
fn daemon_process(
    dir: &std::path::Path,
    url: &str,
    population: usize,
    interval_secs: f64,
    sink: &str,
) -> (Proc, std::path::PathBuf) {
    let db = dir.join("presence.db");
    let ids_file = dir.join("ids.txt");
    std::fs::write(&ids_file, ids(population).join("\n")).unwrap();
    let config = dir.join("presenced.toml");
    std::fs::write(
        &config,
        format!(
            "[im]\nsdkappid = 1400000000\nsecret_key = \"{SIM_KEY}\"\nbase_url = \"{url}\"\n[watch]\nfile = \"{}\"\n[store]\npath = \"{}\"\n[sweep]\ninterval_secs = {interval_secs:.1}\njitter_secs = 0.0\n[service]\nmetrics_listen = \"\"\n{sink}",
            ids_file.display(),
            db.display()
        ),
    )
    .unwrap();
    let daemon = daemon(&config);
    (daemon, db)
}

fn im_config(base_url: &str, rate: f64) -> ImConfig {
    ImConfig {
        sdkappid: 1_400_000_000,
        identifier: "administrator".into(),
        secret_key: presenced::secret::Secret::new(SIM_KEY),
        base_url: Some(base_url.into()),
        calls_per_second: rate,
        ..ImConfig::default()
    }
}

struct SweepResult {
    calls: u64,
    observed: u64,
    failed: u64,
    elapsed: Duration,
    cpu: f64,
}

/// Sends every id through the client, `max_in_flight` calls at a time, as a sweep does.
async fn drive(client: Arc<ImClient>, ids: &[String]) -> SweepResult {
    let cpu0 = cpu_seconds(std::process::id());
    let started = Instant::now();
    let max = client.settings().max_in_flight;
    let mut results = futures_util::stream::iter(ids.chunks(500))
        .map(|batch| {
            let c = client.clone();
            async move { c.query(batch).await }
        })
        .buffer_unordered(max);
    let (mut calls, mut observed, mut failed) = (0, 0, 0);
    while let Some(r) = results.next().await {
        calls += 1;
        match r {
            Ok(a) => {
                for (_, o) in a.outcomes {
                    match o {
                        AccountOutcome::Observed(_) => observed += 1,
                        _ => failed += 1,
                    }
                }
            }
            Err(_) => failed += 500,
        }
    }
    SweepResult {
        calls,
        observed,
        failed,
        elapsed: started.elapsed(),
        cpu: cpu_seconds(std::process::id()) - cpu0,
    }
}

// ---- scenarios ---------------------------------------------------------------------------------

async fn client_rate() {
    let (n, rate, latency) = (1_000_000, 200.0, 50.0);
    let (_sim, url) = sim_process(n, rate, latency);
    let client = Arc::new(
        ImClient::new(
            ClientSettings::from_config(&im_config(&url, rate)).unwrap(),
            Arc::new(Metrics::new()),
        )
        .unwrap(),
    );
    let r = drive(client.clone(), &ids(n)).await;
    let achieved = r.calls as f64 / r.elapsed.as_secs_f64();
    println!("accounts {n}, configured {rate} calls/s, simulator limit {rate} calls/s, injected latency {latency} ms");
    println!(
        "calls {} in {:.2} s: achieved {:.1} calls/s, ratio to configured {:.3}",
        r.calls,
        r.elapsed.as_secs_f64(),
        achieved,
        achieved / rate
    );
    println!(
        "observed {} failed {}; client CPU {:.2} s = {:.0} ns per observed account",
        r.observed,
        r.failed,
        r.cpu,
        r.cpu * 1e9 / r.observed.max(1) as f64
    );
    println!(
        "rate limiter now at {:.1} calls/s (lowered only by 60011 answers)",
        client.limiter().current_rate()
    );
}

async fn client_ceiling() {
    let (_sim, url) = sim_process(1_000_000, 0.0, 0.0);
    let mut cfg = im_config(&url, 1e9);
    cfg.max_in_flight = 32;
    let client = Arc::new(
        ImClient::new(
            ClientSettings::from_config(&cfg).unwrap(),
            Arc::new(Metrics::new()),
        )
        .unwrap(),
    );
    println!(
        "simulator with no limit and no latency, on the same 2-core machine; 32 calls in flight"
    );
    for n in [10_000, 100_000, 1_000_000] {
        let r = drive(client.clone(), &ids(n)).await;
        println!(
            "{n:>9} accounts: {:>7.2} s, {:>9.0} accounts/s, {:>6.0} calls/s, client CPU {:.0} ns per account (failed {})",
            r.elapsed.as_secs_f64(),
            r.observed as f64 / r.elapsed.as_secs_f64(),
            r.calls as f64 / r.elapsed.as_secs_f64(),
            r.cpu * 1e9 / r.observed.max(1) as f64,
            r.failed
        );
    }
}

fn transition(user: String, seq: u64, from: Option<State>, to: State, at: i64) -> TransitionRecord {
    let p = |s| {
        vec![PlatformStatus {
            platform: "iPhone".into(),
            status: s,
        }]
    };
    TransitionRecord::builder(user, seq, to)
        .from(from, at - 30_000)
        .from_platforms(from.map(p).unwrap_or_default())
        .to_platforms(p(to))
        .observed_at(at)
        .build()
}

fn store() {
    const N: usize = 1_000_000;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bench.db");
    let mut db = Db::open(&path, Duration::from_secs(5)).unwrap();
    // As in the daemon: checkpoints run beside the writer, not inside its commits.
    db.checkpoint_in_background(Duration::from_secs(5)).unwrap();
    let sweep = db.begin_sweep(0, N as u64).unwrap();
    assert_eq!(sweep, 1);
    let now = presenced::model::now_millis();
    // 1M initial transitions in groups of 4,000 (8 batches of 500 per transaction, the default).
    let started = Instant::now();
    for chunk in (0..N).collect::<Vec<_>>().chunks(4_000) {
        let set = WriteSet {
            transitions: chunk
                .iter()
                .map(|&i| transition(format!("user{i}"), 1, None, State::Online, now))
                .collect(),
            not_found: vec![],
        };
        db.apply(&set).unwrap();
    }
    let initial = started.elapsed();
    println!("write 1,000,000 initial transitions (history, which is also the outbox; 4,000 per transaction): {:.2} s, {:.0}/s", initial.as_secs_f64(), N as f64 / initial.as_secs_f64());
    let started = Instant::now();
    db.fold_all().unwrap();
    println!(
        "  fold of those into current state and the per-account index, as at the end of the first sweep: {:.2} s",
        started.elapsed().as_secs_f64()
    );
    db.mark_published(N as i64).unwrap();

    // Snapshot load and its memory.
    let pid = std::process::id();
    let rss0 = rss_bytes(pid);
    let started = Instant::now();
    let mut snapshot = Snapshot::with_capacity(db.current_count().unwrap());
    db.for_each_current(|row| snapshot.insert_row(row)).unwrap();
    let load = started.elapsed();
    let rss1 = rss_bytes(pid);
    println!(
        "snapshot load of {} accounts: {:.2} s",
        snapshot.len(),
        load.as_secs_f64()
    );
    println!(
        "resident memory: {:.0} bytes per watched account ({} MiB for the snapshot)",
        (rss1.saturating_sub(rss0)) as f64 / N as f64,
        (rss1.saturating_sub(rss0)) >> 20
    );

    // Diff when nothing changed.
    let observed = AccountOutcome::Observed(presenced::model::Presence::new(
        State::Online,
        vec![PlatformStatus {
            platform: "iPhone".into(),
            status: State::Online,
        }],
    ));
    let names = ids(N);
    let started = Instant::now();
    let mut unchanged = 0;
    for id in &names {
        if snapshot.decide(id, &observed, now + 1, 2, true) == presenced::sweep::Decision::Unchanged
        {
            unchanged += 1;
        }
        snapshot.touch(id, now + 1);
    }
    let diff = started.elapsed();
    assert_eq!(unchanged, N);
    println!(
        "diff, nothing changed: {:.0} ns per observed account ({:.2} s for 1,000,000)",
        diff.as_nanos() as f64 / N as f64,
        diff.as_secs_f64()
    );

    // 10% change: 100,000 transitions made durable.
    let changed: Vec<TransitionRecord> = (0..N)
        .step_by(10)
        .map(|i| {
            transition(
                format!("user{i}"),
                2,
                Some(State::Online),
                State::Offline,
                now + 2,
            )
        })
        .collect();
    // A sweep walks the watch list in id order (the daemon sorts it), so a transaction's rows
    // sit close together in the tables' keys.
    let mut changed = changed;
    changed.sort_by(|a, b| a.user_id.cmp(&b.user_id));
    // Built before the clock starts: the sweep hands the store a finished group.
    let groups: Vec<WriteSet> = changed
        .chunks(4_000)
        .map(|chunk| WriteSet {
            transitions: chunk.to_vec(),
            not_found: vec![],
        })
        .collect();
    let started = Instant::now();
    for group in &groups {
        db.apply(group).unwrap();
    }
    let durable = started.elapsed();
    let per_sec = changed.len() as f64 / durable.as_secs_f64();
    println!(
        "10% change: {} transitions durable in {:.3} s = {:.0}/s (fsync per transaction of 4,000)",
        changed.len(),
        durable.as_secs_f64(),
        per_sec
    );
    // Behind the commits, as at the end of the sweep: current state and the per-account index.
    let started = Instant::now();
    let folded = db.fold_all().unwrap();
    let fold = started.elapsed();
    assert_eq!(folded, changed.len());
    println!(
        "  then the fold into current state and the per-account index: {:.3} s; commits and fold together {:.3} s = {:.0}/s",
        fold.as_secs_f64(),
        (durable + fold).as_secs_f64(),
        changed.len() as f64 / (durable + fold).as_secs_f64()
    );
    // What the checkpoint thread still had to copy into the database file at the last commit.
    let started = Instant::now();
    db.connection()
        .query_row("PRAGMA wal_checkpoint(FULL)", [], |_| Ok(()))
        .unwrap();
    println!(
        "  the background checkpoint finished {:.3} s after the last commit (the fold's)",
        started.elapsed().as_secs_f64()
    );

    // Comparator: the same rows, plain bulk insert into a bare table, one transaction.
    let conn = db.connection();
    conn.execute_batch(
        "CREATE TABLE plain (event_id TEXT, user_id TEXT, seq INTEGER, kind TEXT, from_state TEXT, to_state TEXT,
         from_platforms TEXT, to_platforms TEXT, observed_at INTEGER, previous_observed_at INTEGER, sweep_id INTEGER)",
    )
    .unwrap();
    let started = Instant::now();
    conn.execute_batch("BEGIN").unwrap();
    {
        let mut stmt = conn
            .prepare("INSERT INTO plain VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)")
            .unwrap();
        for t in &changed {
            stmt.execute(rusqlite::params![
                t.event_id.to_string(),
                t.user_id,
                t.seq as i64,
                t.kind(),
                t.from.map(|s| s.as_str()),
                t.to.as_str(),
                presenced::model::platforms_to_json(
                    t.from_platforms.as_deref().unwrap_or_default()
                ),
                presenced::model::platforms_to_json(&t.to_platforms),
                t.observed_at,
                t.previous_observed_at,
                t.sweep_id
            ])
            .unwrap();
        }
    }
    conn.execute_batch("COMMIT").unwrap();
    let plain = started.elapsed();
    let plain_per_sec = changed.len() as f64 / plain.as_secs_f64();
    println!("plain bulk insert of the same rows into one bare table, one transaction: {:.3} s = {:.0}/s", plain.as_secs_f64(), plain_per_sec);
    println!(
        "ratio durable transitions / plain inserts: {:.2}",
        per_sec / plain_per_sec
    );
}

/// Retention's cost per sweep with 1,000,000 idle accounts: every account has one row, 60 days
/// old and published; each sweep adds 1,000 changes; the retention is 30 days. A prune after a
/// sweep should cost what the sweep added, not what sits idle.
fn prune() {
    const ACCOUNTS: usize = 1_000_000;
    const DAY: i64 = 86_400_000;
    let dir = tempfile::tempdir().unwrap();
    let mut db = Db::open(&dir.path().join("p.db"), Duration::from_secs(5)).unwrap();
    db.begin_sweep(0, 0).unwrap();
    let now = presenced::model::now_millis();
    let ids: Vec<usize> = (0..ACCOUNTS).collect();
    for chunk in ids.chunks(50_000) {
        let transitions = chunk
            .iter()
            .map(|i| transition(format!("user{i}"), 1, None, State::Online, now - 60 * DAY))
            .collect();
        db.apply(&WriteSet {
            transitions,
            not_found: vec![],
        })
        .unwrap();
    }
    let settle = |db: &mut Db| {
        db.fold_all().unwrap();
        let newest: i64 = db
            .connection()
            .query_row("SELECT MAX(history_id) FROM presence_history", [], |r| {
                r.get(0)
            })
            .unwrap();
        db.mark_published(newest).unwrap();
    };
    settle(&mut db);
    let before = now - 30 * DAY;
    let prune_all = |db: &mut Db| {
        let started = Instant::now();
        while db.prune_history(before, 2_000, true).unwrap() > 0 {}
        started.elapsed()
    };
    println!(
        "first prune of {ACCOUNTS} idle accounts' history: {:.3} s",
        prune_all(&mut db).as_secs_f64()
    );
    for sweep in 2..=4u64 {
        let transitions = (0..1_000)
            .map(|i| {
                transition(
                    format!("user{}", i * 997 % ACCOUNTS),
                    sweep,
                    Some(State::Online),
                    State::Offline,
                    now,
                )
            })
            .collect();
        db.apply(&WriteSet {
            transitions,
            not_found: vec![],
        })
        .unwrap();
        settle(&mut db);
        let rows: i64 = db
            .connection()
            .query_row("SELECT COUNT(*) FROM presence_history", [], |r| r.get(0))
            .unwrap();
        println!(
            "prune after a sweep of 1,000 changes ({rows} history rows): {:.4} s",
            prune_all(&mut db).as_secs_f64()
        );
    }
}

/// Sends `records` (with their encoded `payloads`) through a plain producer, headers built per
/// event as the publisher does, and waits for every acknowledgement.
async fn produce_plain(
    producer: &rdkafka::producer::FutureProducer,
    topic: &str,
    payloads: &[(String, Vec<u8>)],
    records: &[TransitionRecord],
) -> Duration {
    use rdkafka::producer::FutureRecord;
    let started = Instant::now();
    let mut pending = Vec::with_capacity(records.len());
    let source = presenced::publish::event::cloudevents_source(1_400_000_000);
    for ((key, payload), t) in payloads.iter().zip(records) {
        let event = presenced::publish::event::EventV1::new(1_400_000_000, t);
        let mut headers = rdkafka::message::OwnedHeaders::new_with_capacity(7);
        for (k, v) in presenced::publish::event::cloudevents_headers(&event, &source) {
            headers = headers.insert(rdkafka::message::Header {
                key: k,
                value: Some(v.as_bytes()),
            });
        }
        let mut record = FutureRecord::to(topic)
            .key(key.as_bytes())
            .payload(payload)
            .headers(headers);
        loop {
            match producer.send_result(record) {
                Ok(f) => {
                    pending.push(f);
                    break;
                }
                Err((_, back)) => {
                    record = back;
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }
        }
    }
    for f in pending {
        f.await.unwrap().unwrap();
    }
    started.elapsed()
}

async fn kafka() {
    use presenced::publish::kafka::{client_config, producer_config, KafkaSink, TransactionalSink};
    use presenced::publish::{Drained, Publisher};
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use rdkafka::producer::{FutureProducer, FutureRecord};
    let brokers = std::env::var("PRESENCED_BENCH_KAFKA")
        .expect("PRESENCED_BENCH_KAFKA: a broker address (scripts/bench.sh starts one)");
    let topic = format!("bench-{}", uuid::Uuid::now_v7().simple());
    let settings = presenced::config::KafkaConfig {
        brokers: brokers.clone(),
        topic: topic.clone(),
        ..Default::default()
    };
    let admin: AdminClient<rdkafka::client::DefaultClientContext> =
        client_config(&settings).create().unwrap();
    // Exactly-once publishes the same payloads to a topic of its own, from a database of its
    // own (a publisher owns its database's publish mark).
    let eos_topic = format!("{topic}-eos");
    let eos_settings = presenced::config::KafkaConfig {
        topic: eos_topic.clone(),
        delivery: presenced::publish::kafka::Delivery::ExactlyOnce,
        ..settings.clone()
    };
    for r in admin
        .create_topics(
            [
                &NewTopic::new(&topic, 6, TopicReplication::Fixed(1)),
                &NewTopic::new(&eos_topic, 6, TopicReplication::Fixed(1)),
            ],
            &AdminOptions::new(),
        )
        .await
        .unwrap()
    {
        r.unwrap();
    }
    const EVENTS: usize = 200_000;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("k.db");
    let mut db = Db::open(&path, Duration::from_secs(5)).unwrap();
    db.begin_sweep(0, 0).unwrap();
    let now = presenced::model::now_millis();
    let warm_up_event = transition("warm-up".into(), 1, None, State::Online, now);
    db.apply(&WriteSet {
        transitions: vec![warm_up_event.clone()],
        not_found: vec![],
    })
    .unwrap();
    drop(db);
    // Round r's events: every one of 50,000 accounts gets seqs 4r+1 ..= 4r+4.
    let round_records = |round: u64| -> Vec<TransitionRecord> {
        (0..EVENTS)
            .map(|i| {
                transition(
                    format!("user{}", i % 50_000),
                    round * 4 + (i / 50_000 + 1) as u64,
                    None,
                    State::Online,
                    now,
                )
            })
            .collect()
    };
    let eos_path = dir.path().join("k-eos.db");
    std::fs::copy(&path, &eos_path).unwrap();
    let store = presenced::store::Store::open(&path, Duration::from_secs(5))
        .await
        .unwrap();
    let eos_store = presenced::store::Store::open(&eos_path, Duration::from_secs(5))
        .await
        .unwrap();
    let metrics = Arc::new(Metrics::new());
    let (eos_sink, _) = TransactionalSink::connect(&eos_settings, 1_400_000_000)
        .await
        .unwrap();
    let mut eos_publisher = Publisher::new(
        eos_store.clone(),
        eos_sink,
        eos_settings.transaction_events,
        metrics.clone(),
        Arc::new(tokio::sync::Notify::new()),
    );
    let sink = KafkaSink::new(&settings, 1_400_000_000).unwrap();
    let mut publisher = Publisher::new(
        store.clone(),
        sink,
        settings.batch_size,
        metrics.clone(),
        Arc::new(tokio::sync::Notify::new()),
    );
    let producer: FutureProducer = producer_config(&settings, None).create().unwrap();
    // The settings before the ordering fix: a five-minute local message timeout and no gapless
    // guarantee. What the fix costs is the plain producer with the publisher's settings against
    // this one, on the same payloads in the same rounds.
    let unordered: FutureProducer = producer_config(&settings, None)
        .set("message.timeout.ms", "300000")
        .set("enable.gapless.guarantee", "false")
        .create()
        .unwrap();
    // Each producer first delivers one event outside the clock: a new producer spends its
    // first second or so connecting and getting its producer id, which the daemon does at
    // start-up, not while a backlog drains.
    let started = Instant::now();
    while publisher.drain_once().await.unwrap() != Drained::Empty {}
    let publisher_warm_up = started.elapsed();
    let started = Instant::now();
    while eos_publisher.drain_once().await.unwrap() != Drained::Empty {}
    println!(
        "warm-up of the exactly-once publisher (init_transactions, read-back, one transaction): {:.2} s",
        started.elapsed().as_secs_f64()
    );
    let started = Instant::now();
    let warm_up_payload =
        presenced::publish::event::EventV1::new(1_400_000_000, &warm_up_event).to_json();
    for p in [&producer, &unordered] {
        p.send(
            FutureRecord::to(&topic)
                .key(warm_up_event.user_id.as_bytes())
                .payload(&warm_up_payload),
            Duration::from_secs(30),
        )
        .await
        .unwrap();
    }
    println!(
        "warm-up, first event of a new producer acknowledged (not counted): outbox publisher {:.2} s, plain producer {:.2} s",
        publisher_warm_up.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
    // CPU time of this process and of the broker over each phase (scripts/bench.sh passes the
    // broker's pid): whether a phase is bound by CPU or by waiting shows in these.
    let broker_pid: Option<u32> = std::env::var("PRESENCED_BENCH_KAFKA_PID")
        .ok()
        .and_then(|p| p.parse().ok());
    let cpu_now = || {
        (
            cpu_seconds(std::process::id()),
            broker_pid.map_or(0.0, cpu_seconds),
        )
    };
    let cpu_since = |(own0, broker0): (f64, f64)| {
        let (own1, broker1) = cpu_now();
        format!(
            "CPU {:.2} s here + {:.2} s broker",
            own1 - own0,
            broker1 - broker0
        )
    };
    // Prints one phase of a round; returns its rate.
    let report = |round: u64, what: &str, took: Duration, cpu_start: (f64, f64)| {
        let rate = EVENTS as f64 / took.as_secs_f64();
        println!(
            "round {}: {what}: {EVENTS} events in {:.2} s = {rate:.0} events/s ({})",
            round + 1,
            took.as_secs_f64(),
            cpu_since(cpu_start)
        );
        rate
    };
    // Rounds alternate the two, so that both see the same state of this shared, noisy machine;
    // the ratio is taken of the medians.
    const ROUNDS: u64 = 5;
    let (mut outbox_rates, mut plain_rates, mut unordered_rates, mut eos_rates) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for round in 0..ROUNDS {
        let records = round_records(round);
        for s in [&store, &eos_store] {
            for chunk in records.chunks(10_000) {
                let set = WriteSet {
                    transitions: chunk.to_vec(),
                    not_found: vec![],
                };
                s.call(move |db| db.apply(&set)).await.unwrap();
            }
            // Copying those commits into the database file is the sweep's cost, not the
            // publisher's: finish it before the clock starts instead of beside the publisher.
            s.call(|db| {
                db.connection()
                    .query_row("PRAGMA wal_checkpoint(FULL)", [], |_| Ok(()))?;
                Ok(())
            })
            .await
            .unwrap();
        }
        let cpu_start = cpu_now();
        let started = Instant::now();
        loop {
            match publisher.drain_once().await.unwrap() {
                Drained::Empty => break,
                Drained::Failed | Drained::Rejected | Drained::Fenced | Drained::Held => {
                    panic!("delivery failed during the benchmark")
                }
                Drained::Some => {}
            }
        }
        outbox_rates.push(report(
            round,
            "outbox -> broker, acknowledged and marked",
            started.elapsed(),
            cpu_start,
        ));

        // The same payloads and headers through a plain producer with the same settings.
        let payloads: Vec<(String, Vec<u8>)> = records
            .iter()
            .map(|t| {
                (
                    t.user_id.clone(),
                    presenced::publish::event::EventV1::new(1_400_000_000, t).to_json(),
                )
            })
            .collect();
        // The two plain producers take turns going first: the second one of a round meets a
        // broker that has just been written to.
        let phases: [(&FutureProducer, &mut Vec<f64>, &str); 2] = [
            (
                &producer,
                &mut plain_rates,
                "plain rdkafka producer, same payloads, headers and settings",
            ),
            (
                &unordered,
                &mut unordered_rates,
                "plain producer with the settings before the ordering fix (5 min timeout, no gapless)",
            ),
        ];
        let mut phases = phases;
        if round % 2 == 1 {
            phases.reverse();
        }
        for (p, rates, what) in phases {
            let cpu_start = cpu_now();
            let took = produce_plain(p, &topic, &payloads, &records).await;
            rates.push(report(round, what, took, cpu_start));
        }
        let cpu_start = cpu_now();
        let started = Instant::now();
        while eos_publisher.drain_once().await.unwrap() != Drained::Empty {}
        eos_rates.push(report(
            round,
            "exactly-once: outbox -> broker in transactions of 20,000, committed and marked",
            started.elapsed(),
            cpu_start,
        ));
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (outbox_rate, plain_rate) = (median(&mut outbox_rates), median(&mut plain_rates));
    let unordered_rate = median(&mut unordered_rates);
    println!(
        "medians of {ROUNDS} rounds: outbox publisher {outbox_rate:.0} events/s, plain producer {plain_rate:.0} events/s, ratio {:.2}",
        outbox_rate / plain_rate
    );
    let eos_rate = median(&mut eos_rates);
    println!(
        "exactly-once over at-least-once, medians of {ROUNDS} rounds: {eos_rate:.0} / {outbox_rate:.0} events/s = {:.2}",
        eos_rate / outbox_rate
    );
    println!(
        "ordering fix: plain producer with the publisher's settings {plain_rate:.0} events/s, with the settings before the fix {unordered_rate:.0} events/s, ratio {:.2}",
        plain_rate / unordered_rate
    );

    // Latency from SQLite commit to acknowledgement at 5,000 events/s: 50 events every 10 ms,
    // first as the publisher was woken before (only by its one-second idle poll while a sweep
    // commits), then as it is now (after every commit).
    drop(eos_publisher);
    let plain = |s| KafkaSink::new(s, 1_400_000_000).unwrap();
    let before = commit_to_ack(&store, plain(&settings), &metrics, &path, now, false).await;
    let after = commit_to_ack(&store, plain(&settings), &metrics, &path, now, true).await;
    let (eos_sink, _) = TransactionalSink::connect(&eos_settings, 1_400_000_000)
        .await
        .unwrap();
    let eos = commit_to_ack(&eos_store, eos_sink, &metrics, &eos_path, now, true).await;
    println!(
        "commit -> visible to read_committed, exactly-once: p50 {:.1} ms, p99 {:.1} ms (at-least-once, acknowledged: p50 {:.1} ms, p99 {:.1} ms)",
        eos.0, eos.1, after.0, after.1
    );
    println!(
        "commit -> ack p50 without / with the wake after each commit: {:.1} / {:.1} ms (ratio {:.3}); p99 {:.1} / {:.1} ms (ratio {:.3})",
        before.0,
        after.0,
        after.0 / before.0,
        before.1,
        after.1,
        after.1 / before.1
    );
}

/// Commits 50 events every 10 ms for 20 s (after a 1 s warm-up) while a publisher runs, and
/// measures each commit's time to acknowledgement. `wake` notifies the publisher after each
/// commit, as the sweeper does. Returns (p50, p99) in ms.
async fn commit_to_ack<S: presenced::publish::Sink>(
    store: &presenced::store::Store,
    sink: S,
    metrics: &Arc<presenced::metrics::Metrics>,
    path: &std::path::Path,
    now: i64,
    wake_after_commit: bool,
) -> (f64, f64) {
    use presenced::publish::Publisher;
    let wake = Arc::new(tokio::sync::Notify::new());
    let publisher = Publisher::new(store.clone(), sink, 5_000, metrics.clone(), wake.clone());
    let stop = tokio_util::sync::CancellationToken::new();
    let running = tokio::spawn(publisher.run(stop.clone(), Duration::from_secs(10)));
    let reader = Db::open(path, Duration::from_secs(5)).unwrap();
    let mut inflight: std::collections::VecDeque<(i64, Instant)> = Default::default();
    let mut latencies = Vec::new();
    let mut worst_at: Vec<(Duration, Duration)> = Vec::new();
    // The first second warms up the new producer (connection, idempotent producer id); only
    // batches committed after it count, and the warm-up's worst is reported beside them.
    let phase_start = Instant::now();
    let warm_up = Duration::from_secs(1);
    let mut seq = 1_000u64;
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    let until = Instant::now() + warm_up + Duration::from_secs(20);
    while Instant::now() < until || !inflight.is_empty() {
        if Instant::now() < until {
            tick.tick().await;
            seq += 1;
            let batch: Vec<TransitionRecord> = (0..50)
                .map(|i| transition(format!("lat{i}"), seq, None, State::Online, now))
                .collect();
            let max_id = store
                .call(move |db| {
                    db.apply(&WriteSet {
                        transitions: batch,
                        not_found: vec![],
                    })?;
                    Ok(db.connection().query_row(
                        "SELECT MAX(history_id) FROM presence_history",
                        [],
                        |r| r.get::<_, i64>(0),
                    )?)
                })
                .await
                .unwrap();
            if wake_after_commit {
                wake.notify_one();
            }
            inflight.push_back((max_id, Instant::now()));
        } else {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let min_pending: Option<i64> = reader
            .connection()
            .query_row("SELECT MIN(history_id) FROM outbox", [], |r| r.get(0))
            .unwrap();
        while let Some(&(id, at)) = inflight.front() {
            if min_pending.is_none_or(|m| m > id) {
                if at.duration_since(phase_start) >= warm_up {
                    latencies.push(at.elapsed());
                }
                worst_at.push((at.elapsed(), at.duration_since(phase_start)));
                inflight.pop_front();
            } else {
                break;
            }
        }
    }
    stop.cancel();
    running.await.unwrap().unwrap();
    latencies.sort();
    worst_at.sort();
    let slow: Vec<String> = worst_at
        .iter()
        .rev()
        .take(5)
        .map(|(l, t)| {
            format!(
                "{:.0} ms at {:.1} s",
                l.as_secs_f64() * 1000.0,
                t.as_secs_f64()
            )
        })
        .collect();
    println!("slowest batches, warm-up included: {}", slow.join(", "));
    let pct = |p: f64| {
        latencies[((latencies.len() as f64 * p) as usize).min(latencies.len() - 1)].as_secs_f64()
            * 1000.0
    };
    let woken = match wake_after_commit {
        true => "woken after each commit",
        false => "woken by its idle poll only",
    };
    println!(
        "commit -> ack at 5,000 events/s, publisher {woken}, after a 1 s warm-up ({} batches of 50, polled every 10 ms or less): p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        latencies.len(),
        pct(0.5),
        pct(0.99),
        latencies.last().unwrap().as_secs_f64() * 1000.0
    );
    (pct(0.5), pct(0.99))
}

fn e2e() {
    const N: usize = 100_000;
    let (_sim, url) = sim_process(N, 200.0, 20.0);
    let dir = tempfile::tempdir().unwrap();
    let (daemon, db) = daemon_process(dir.path(), &url, N, 10.0, "[sink]\nkind = \"none\"\n");
    let pid = daemon.0.id();
    // Sample CPU and memory every 100 ms for five sweeps.
    let mut samples: Vec<(i64, f64, u64)> = Vec::new();
    let until = Instant::now() + Duration::from_secs(52);
    while Instant::now() < until {
        samples.push((
            presenced::model::now_millis(),
            cpu_seconds(pid),
            rss_bytes(pid),
        ));
        std::thread::sleep(Duration::from_millis(100));
    }
    drop(daemon);
    let conn = rusqlite::Connection::open(&db).unwrap();
    let mut stmt = conn.prepare("SELECT started_at, finished_at, observed, failed, transitions FROM sweeps WHERE outcome = 'completed' ORDER BY sweep_id").unwrap();
    let sweeps: Vec<(i64, i64, i64, i64, i64)> = stmt
        .query_map([], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
        })
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let calls = N.div_ceil(500) as f64;
    println!("{N} accounts, simulator limit 200 calls/s with 20 ms latency, daemon configured at 200 calls/s, sink none");
    let (mut sweep_cpu, mut sweep_time, mut idle_cpu, mut idle_time) = (0.0, 0.0, 0.0, 0.0);
    let (mut sweep_rss, mut idle_rss) = (0u64, 0u64);
    for w in samples.windows(2) {
        let (t0, c0, _) = w[0];
        let (t1, c1, rss) = w[1];
        let in_sweep = sweeps.iter().any(|s| t1 > s.0 && t0 < s.1 + 200);
        let dt = (t1 - t0) as f64 / 1000.0;
        if in_sweep {
            sweep_cpu += c1 - c0;
            sweep_time += dt;
            sweep_rss = sweep_rss.max(rss);
        } else if !sweeps.is_empty() && t0 > sweeps[0].1 {
            idle_cpu += c1 - c0;
            idle_time += dt;
            idle_rss = idle_rss.max(rss);
        }
    }
    for (i, s) in sweeps.iter().enumerate() {
        let secs = (s.1 - s.0) as f64 / 1000.0;
        println!(
            "sweep {}: {:.2} s, {} observed, {} failed, {} transitions: {:.1} calls/s, ratio to 200: {:.3}",
            i + 1,
            secs,
            s.2,
            s.3,
            s.4,
            calls / secs,
            calls / secs / 200.0
        );
    }
    println!(
        "daemon CPU during sweeps: {:.1}% of one core; idle between sweeps: {:.2}% of one core",
        sweep_cpu * 100.0 / sweep_time.max(1e-9),
        idle_cpu * 100.0 / idle_time.max(1e-9)
    );
    println!(
        "daemon resident memory: {} MiB peak during sweeps, {} MiB between sweeps",
        sweep_rss >> 20,
        idle_rss >> 20
    );
}

/// The daemon's resident memory while it publishes: one sweep of 500,000 new accounts makes as
/// many events, published by the daemon process with no sink, at-least-once and exactly-once
/// (which holds up to two transactions of `kafka.transaction_events` while they commit).
fn kafka_memory() {
    const N: usize = 500_000;
    let brokers = std::env::var("PRESENCED_BENCH_KAFKA")
        .expect("PRESENCED_BENCH_KAFKA: a broker address (scripts/bench.sh starts one)");
    let run = uuid::Uuid::now_v7().simple().to_string();
    println!("{N} accounts, one sweep (simulator at 200 calls/s, 20 ms), every event published");
    for (mode, sink) in [
        ("no sink", "[sink]\nkind = \"none\"\n".to_owned()),
        ("at-least-once", kafka_sink(&brokers, &run, "at-least-once")),
        ("exactly-once", kafka_sink(&brokers, &run, "exactly-once")),
    ] {
        let (_sim, url) = sim_process(N, 200.0, 20.0);
        let dir = tempfile::tempdir().unwrap();
        let started = Instant::now();
        let (daemon, db) = daemon_process(dir.path(), &url, N, 3_600.0, &sink);
        let pid = daemon.0.id();
        let count = |sql: &str| -> i64 {
            rusqlite::Connection::open(&db)
                .and_then(|c| {
                    c.busy_timeout(Duration::from_secs(5))?;
                    c.query_row(sql, [], |r| r.get(0))
                })
                .unwrap_or(-1)
        };
        let mut peak = 0u64;
        let deadline = Instant::now() + Duration::from_secs(300);
        loop {
            peak = peak.max(rss_bytes(pid));
            std::thread::sleep(Duration::from_millis(50));
            let swept = count("SELECT COUNT(*) FROM sweeps WHERE outcome = 'completed'") > 0;
            if swept && (mode == "no sink" || count("SELECT COUNT(*) FROM outbox") == 0) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{mode}: the backlog did not drain"
            );
        }
        let drained = started.elapsed();
        let after = rss_bytes(pid);
        drop(daemon);
        println!(
            "{mode}: swept and published in {:.1} s; resident memory peak {} MiB, {} MiB after",
            drained.as_secs_f64(),
            peak >> 20,
            after >> 20
        );
    }
}

/// A `[sink]` and `[kafka]` publishing to a topic of this run and mode, created by the daemon.
fn kafka_sink(brokers: &str, run: &str, delivery: &str) -> String {
    format!(
        "[sink]\nkind = \"kafka\"\n[kafka]\nbrokers = \"{brokers}\"\ntopic = \"memory-{run}-{delivery}\"\ncreate_topic = true\ndelivery = \"{delivery}\"\n"
    )
}
