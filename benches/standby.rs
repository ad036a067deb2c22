//! Standby (`[standby]`) on a three-node Apache Kafka cluster (`PRESENCED_BENCH_KAFKA_CLUSTER`,
//! its bootstrap addresses; `scripts/bench.sh standby` starts one), the daemon binary and the
//! simulator logging its changes:
//!
//! - takeover: the active SIGKILLed `STANDBY_KILLS` times (default 50); from each kill to the
//!   new active's first call to IM (its first sweep batch) and to the first event it commits
//!   (seen by a `read_committed` consumer); p50, p99, max;
//! - detection across takeovers: the delay of every change the simulator made during those
//!   kills, and whether any change that lasted longer than a sweep interval plus the takeover
//!   time was missed;
//! - replication: at `STANDBY_EVENTS_PER_SEC` (default 5,000) changes a second, each event's
//!   lag from the active's commit to a follower's (p50, p99), and the events a second the
//!   active publishes with two followers against alone, in one run.
//!
//! `STANDBY_LOG_FILTER` sets the daemons' log filter (default `warn`); `STANDBY_KEEP` keeps
//! the working directory (databases, `host*.log`) to read afterwards. `takeover` or
//! `replication` as an argument runs that part alone.

#[allow(dead_code)]
mod support;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::ClientConfig;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::changes::{detections, quantile, read_changes};
use support::{free_port, sim_calls, wait_port, Http, Proc, SIM_KEY};

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// The simulator, the instances' configurations, and the topic.
struct Set {
    dir: tempfile::TempDir,
    /// Killed with the set.
    _sim: Proc,
    sim_port: u16,
    change_log: PathBuf,
    brokers: String,
    topic: String,
    instances: Vec<(PathBuf, PathBuf, u16)>,
    running: Vec<Option<Proc>>,
    http: Http,
}

impl Set {
    fn new(brokers: &str, accounts: usize, churn: f64, instances: usize, interval: f64) -> Set {
        // STANDBY_KEEP keeps the directory (databases, daemons' logs) for a look afterwards.
        let dir = tempfile::Builder::new()
            .disable_cleanup(std::env::var_os("STANDBY_KEEP").is_some())
            .tempdir()
            .unwrap();
        let sim_port = free_port();
        let change_log = dir.path().join("changes.jsonl");
        let sim_config = dir.path().join("sim.toml");
        std::fs::write(
            &sim_config,
            format!(
                "population = {accounts}\nchurn_per_second = {churn}\ncalls_per_second = 0.0\nchange_log = \"{}\"\n",
                change_log.display()
            ),
        )
        .unwrap();
        let sim = Proc(
            Command::new(env!("CARGO_BIN_EXE_presenced"))
                .args([
                    "sim",
                    "--listen",
                    &format!("127.0.0.1:{sim_port}"),
                    "--config",
                ])
                .arg(&sim_config)
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        );
        wait_port(sim_port);
        let topic = format!("bench-standby-{}", uuid::Uuid::now_v7().simple());
        let watch = dir.path().join("watch.txt");
        let ids: Vec<String> = (0..accounts).map(|i| format!("user{i}")).collect();
        std::fs::write(&watch, ids.join("\n")).unwrap();
        let mut list = Vec::new();
        for i in 0..instances {
            let home = dir.path().join(format!("host{i}"));
            std::fs::create_dir_all(&home).unwrap();
            let port = free_port();
            let config = home.join("presenced.toml");
            std::fs::write(
                &config,
                format!(
                    "[im]\nsdkappid = 1400000000\nsecret_key = \"{SIM_KEY}\"\nbase_url = \"http://127.0.0.1:{sim_port}/\"\n\
                     [watch]\nfile = \"{}\"\n[store]\npath = \"{}\"\n[sweep]\ninterval_secs = {interval}\njitter_secs = 0.0\n\
                     [sink]\nkind = \"kafka\"\n[kafka]\nbrokers = \"{brokers}\"\ntopic = \"{topic}\"\ndelivery = \"exactly-once\"\n\
                     create_topic = true\ntopic_partitions = 6\ntopic_replication_factor = 3\ntopic_min_insync_replicas = 2\n\
                     [service]\nmetrics_listen = \"127.0.0.1:{port}\"\nlog_filter = \"{log_filter}\"\n\
                     [standby]\nenabled = true\ninstance = \"host{i}\"\n",
                    watch.display(),
                    home.join("presence.db").display(),
                    log_filter = env_or("STANDBY_LOG_FILTER", "warn".to_owned()),
                ),
            )
            .unwrap();
            list.push((config, home.join("presence.db"), port));
        }
        Set {
            dir,
            _sim: sim,
            sim_port,
            change_log,
            brokers: brokers.to_owned(),
            topic,
            running: (0..instances).map(|_| None).collect(),
            instances: list,
            http: Http::new(),
        }
    }

    fn start(&mut self, i: usize) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join(format!("host{i}.log")))
            .unwrap();
        self.running[i] = Some(Proc(
            Command::new(env!("CARGO_BIN_EXE_presenced"))
                .args(["run", "--config"])
                .arg(&self.instances[i].0)
                .stderr(log)
                .spawn()
                .unwrap(),
        ));
    }

    fn kill(&mut self, i: usize) {
        if let Some(mut p) = self.running[i].take() {
            p.0.kill().unwrap();
            p.0.wait().unwrap();
        }
    }

    fn role(&self, i: usize) -> Option<String> {
        let url = format!("http://127.0.0.1:{}/standby", self.instances[i].2);
        let text = self
            .http
            .rt
            .block_on(async {
                self.http
                    .client
                    .get(&url)
                    .timeout(Duration::from_secs(1))
                    .send()
                    .await?
                    .text()
                    .await
            })
            .ok()?;
        let v: serde_json::Value = serde_json::from_str(&text).ok()?;
        v["role"].as_str().map(str::to_owned)
    }

    fn active(&self) -> Option<usize> {
        (0..self.instances.len())
            .filter(|i| self.running[*i].is_some())
            .find(|i| self.role(*i).as_deref() == Some("active"))
    }

    fn wait_active(&self) -> usize {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            if let Some(a) = self.active() {
                return a;
            }
            assert!(Instant::now() < deadline, "no active");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn control(&self) -> String {
        format!("http://127.0.0.1:{}/control", self.sim_port)
    }
}

/// A `read_committed` consumer of the topic recording when each record arrived (Unix ms) and
/// its timestamp, on a thread of its own.
struct Watcher {
    stop: Arc<AtomicBool>,
    /// The arrival time of the first record stamped after the mark, once one arrived.
    first_after: Arc<AtomicI64>,
    mark: Arc<AtomicI64>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Watcher {
    fn start(brokers: &str, topic: &str) -> Watcher {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .set("group.id", format!("bench-{}", uuid::Uuid::now_v7()))
            .set("isolation.level", "read_committed")
            .set("auto.offset.reset", "latest")
            .set("fetch.wait.max.ms", "10")
            .create()
            .unwrap();
        consumer.subscribe(&[topic]).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let first_after = Arc::new(AtomicI64::new(0));
        let mark = Arc::new(AtomicI64::new(i64::MAX));
        let (s, f, m) = (stop.clone(), first_after.clone(), mark.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                if let Some(Ok(msg)) = consumer.poll(Duration::from_millis(20)) {
                    let stamped = msg.timestamp().to_millis().unwrap_or(0);
                    if stamped > m.load(Ordering::Relaxed) && f.load(Ordering::Relaxed) == 0 {
                        f.store(now_ms(), Ordering::Relaxed);
                    }
                }
            }
        });
        Watcher {
            stop,
            first_after,
            mark,
            thread: Some(thread),
        }
    }

    fn arm(&self, after: i64) {
        self.first_after.store(0, Ordering::Relaxed);
        self.mark.store(after, Ordering::Relaxed);
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn summary(name: &str, mut ms: Vec<i64>) {
    ms.sort_unstable();
    println!(
        "{name}: n={} p50 {:.2} s, p99 {:.2} s, max {:.2} s",
        ms.len(),
        quantile(&ms, 0.5),
        quantile(&ms, 0.99),
        ms.last().copied().unwrap_or(0) as f64 / 1000.0
    );
}

fn takeovers(brokers: &str) {
    use rand::Rng;
    let kills: usize = env_or("STANDBY_KILLS", 50);
    let interval = 1.0;
    let mut set = Set::new(brokers, 2_000, 0.01, 2, interval);
    set.start(0);
    set.start(1);
    let watcher = Watcher::start(&set.brokers, &set.topic);
    let began = now_ms();
    let mut to_batch = Vec::new();
    let mut to_event = Vec::new();
    let mut windows = Vec::new();
    for _ in 0..kills {
        let active = set.wait_active();
        std::thread::sleep(Duration::from_millis(
            rand::rng().random_range(1_000..3_000),
        ));
        let killed_at = now_ms();
        watcher.arm(killed_at);
        set.kill(active);
        std::thread::sleep(Duration::from_millis(100));
        let (calls, _) = sim_calls(&set.http, &set.control());
        let deadline = Instant::now() + Duration::from_secs(60);
        let batch_at = loop {
            if sim_calls(&set.http, &set.control()).0 > calls {
                break now_ms();
            }
            assert!(
                Instant::now() < deadline,
                "no call within a minute of a kill"
            );
            std::thread::sleep(Duration::from_millis(5));
        };
        while watcher.first_after.load(Ordering::Relaxed) == 0 {
            assert!(
                Instant::now() < deadline,
                "no event within a minute of a kill"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        let event_at = watcher.first_after.load(Ordering::Relaxed);
        to_batch.push(batch_at - killed_at);
        to_event.push(event_at - killed_at);
        windows.push((killed_at, batch_at));
        set.start(active);
    }
    std::thread::sleep(Duration::from_secs(5));
    let ended = now_ms();
    let newest = set.wait_active();
    drop(watcher);
    println!("## standby takeover ({kills} SIGKILLs of the active, two instances, 2,000 accounts, interval {interval} s, defaults: heartbeat 500 ms, takeover after {} ms)", presenced::standby::StandbyConfig::default().takeover_after_ms);
    summary("kill to the new active's first IM call", to_batch.clone());
    summary(
        "kill to the first event the new active commits",
        to_event.clone(),
    );
    // Changes made during a takeover window (kill to first call), and every change's fate.
    let changes = read_changes(&set.change_log, began, ended - 3_000);
    let found = detections(&set.instances[newest].1, &changes, began - 60_000);
    let in_window = |at: i64| windows.iter().any(|(k, b)| at >= *k && at <= *b);
    let mut during: Vec<i64> = found
        .iter()
        .filter(|f| in_window(f.at))
        .filter_map(|f| f.delay())
        .collect();
    let max_takeover = to_batch.iter().max().copied().unwrap_or(0);
    let bound = max_takeover + (interval * 1000.0) as i64;
    // A change that lasted longer than the bound is missed when, the bound after it, the
    // history still does not show the account in the changed-to state (a change back to a state
    // the log already shows, after a short one that died with an unpublished row, is not a miss:
    // the history is right from then on). The next change in the whole log ends a state (one
    // made after `ended` too); changes whose bound had not passed at `ended` are not judged.
    let history = history_by_user(&set.instances[newest].1, 0);
    let all_changes = read_changes(&set.change_log, began, i64::MAX);
    let mut lasting_missed = 0;
    for (user, list) in &all_changes {
        for (i, (at, state, platforms)) in list.iter().enumerate() {
            let next = list.get(i + 1).map_or(i64::MAX, |c| c.0);
            if next - at <= bound || *at + bound > ended {
                continue;
            }
            let shown = history.get(user).and_then(|rows| {
                rows.iter()
                    .take_while(|(observed, _, _)| *observed <= at + bound)
                    .last()
            });
            let right = shown.is_some_and(|(_, s, p)| s == state && p == platforms);
            if !right {
                lasting_missed += 1;
                if lasting_missed <= 3 {
                    println!("  missed: {user} changed at {at} to {state} {platforms}, lasted {} ms; history shows {shown:?}", next - at);
                }
            }
        }
    }
    let missed_in_window = found
        .iter()
        .filter(|f| in_window(f.at) && f.observed.is_none())
        .count();
    during.sort_unstable();
    println!(
        "changes made during takeovers: {} (detected {}), delay p50 {:.2} s, p99 {:.2} s, max {:.2} s; bound (slowest takeover + interval) {:.2} s",
        during.len() + missed_in_window,
        during.len(),
        quantile(&during, 0.5),
        quantile(&during, 0.99),
        during.last().copied().unwrap_or(0) as f64 / 1000.0,
        bound as f64 / 1000.0
    );
    println!(
        "changes over the run: {}; missed that lasted longer than the bound: {lasting_missed}; takeovers recorded: {} for {kills} kills (the first start included)",
        changes.values().map(Vec::len).sum::<usize>(),
        takeovers_recorded(&set)
    );
}

/// Each account's history rows observed since `from`: (observed_at, state, platforms), in seq
/// order.
fn history_by_user(db: &Path, from: i64) -> HashMap<String, Vec<(i64, String, String)>> {
    let c = rusqlite::Connection::open(db).unwrap();
    c.busy_timeout(Duration::from_secs(5)).unwrap();
    let mut s = c
        .prepare(
            "SELECT user_id, observed_at, to_state, to_platforms FROM presence_history
             WHERE observed_at >= ?1 ORDER BY user_id, seq",
        )
        .unwrap();
    let mut out: HashMap<String, Vec<(i64, String, String)>> = HashMap::new();
    let rows = s
        .query_map([from], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, String>(3)?,
            ))
        })
        .unwrap();
    for row in rows {
        let (user, at, state, platforms) = row.unwrap();
        let platforms = support::changes::normalize(&serde_json::from_str(&platforms).unwrap());
        out.entry(user).or_default().push((at, state, platforms));
    }
    out
}

/// The newest history id in `db` (0 while it has none or cannot be read yet).
fn max_history_id(db: &Path) -> i64 {
    // Read-only: opening must not create the file before the daemon does.
    rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
        .and_then(|c| {
            c.busy_timeout(Duration::from_secs(5))?;
            c.query_row(
                "SELECT COALESCE(MAX(history_id), 0) FROM presence_history",
                [],
                |r| r.get(0),
            )
        })
        .unwrap_or(0)
}

/// Per event, the follower's commit time minus the active's (ms), over the events both hold.
fn replication_lags(active: &Path, follower: &Path, from: i64) -> Vec<i64> {
    let read = |db: &Path| -> HashMap<i64, i64> {
        let c = rusqlite::Connection::open(db).unwrap();
        c.busy_timeout(Duration::from_secs(5)).unwrap();
        let mut s = c
            .prepare(
                "SELECT history_id, committed_at FROM presence_history WHERE observed_at >= ?1",
            )
            .unwrap();
        s.query_map([from], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .map(Result::unwrap)
            .collect()
    };
    let (a, f) = (read(active), read(follower));
    a.iter()
        .filter_map(|(id, at)| f.get(id).map(|ft| ft - at))
        .collect()
}

/// Events the instance published; asked again when a pooled connection the daemon closed as
/// idle fails.
fn published(set: &Set, i: usize) -> f64 {
    let url = format!("http://127.0.0.1:{}/metrics", set.instances[i].2);
    for _ in 0..5 {
        let text = set
            .http
            .rt
            .block_on(async { set.http.client.get(&url).send().await?.text().await });
        if let Ok(text) = text {
            return text
                .lines()
                .filter(|l| l.starts_with("presenced_events_published_total"))
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .sum();
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    panic!("{url} does not answer");
}

/// How many times the instances became the active, from their databases' role logs.
fn takeovers_recorded(set: &Set) -> i64 {
    set.instances
        .iter()
        .map(|(_, db, _)| {
            rusqlite::Connection::open(db)
                .and_then(|c| {
                    c.query_row(
                        "SELECT COUNT(*) FROM standby_roles WHERE role = 'active'",
                        [],
                        |r| r.get::<_, i64>(0),
                    )
                })
                .unwrap_or(0)
        })
        .sum()
}

fn replication(brokers: &str) {
    let rate: f64 = env_or("STANDBY_EVENTS_PER_SEC", 5_000.0);
    let secs: u64 = env_or("STANDBY_SECS", 30);
    let accounts = 50_000;
    let mut set = Set::new(brokers, accounts, 0.0, 3, 1.0);
    set.start(0);
    let active = set.wait_active();
    assert_eq!(active, 0);
    // The first sweep's initial events, then the churn.
    std::thread::sleep(Duration::from_secs(10));
    set.http.put(
        &format!("{}/churn", set.control()),
        serde_json::json!({ "churn_per_second": rate / accounts as f64 }),
    );
    std::thread::sleep(Duration::from_secs(5));
    let before = published(&set, 0);
    std::thread::sleep(Duration::from_secs(secs));
    let alone = (published(&set, 0) - before) / secs as f64;
    // The followers first read the backlog (everything since the topic began); lag and cost
    // are measured once both have caught up.
    let backlog = max_history_id(&set.instances[0].1);
    let started = Instant::now();
    set.start(1);
    set.start(2);
    let deadline = Instant::now() + Duration::from_secs(300);
    while [1, 2].iter().any(|&i| {
        max_history_id(&set.instances[i].1) < max_history_id(&set.instances[0].1) - rate as i64
    }) {
        assert!(
            Instant::now() < deadline,
            "the followers did not catch up within 300 s"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let caught_up = started.elapsed();
    std::thread::sleep(Duration::from_secs(5));
    let from = now_ms();
    let before = published(&set, 0);
    std::thread::sleep(Duration::from_secs(secs));
    let with_followers = (published(&set, 0) - before) / secs as f64;
    std::thread::sleep(Duration::from_secs(5));
    let lags = replication_lags(&set.instances[0].1, &set.instances[1].1, from);
    println!("## standby replication ({accounts} accounts churning at {rate} changes/s, sweeps every second)");
    summary("replication lag, active's commit to the follower's", lags);
    println!(
        "followers caught up with a backlog of {backlog} events in {:.1} s (within a second's events of the active), then measured for {secs} s",
        caught_up.as_secs_f64()
    );
    println!(
        "events/s the active published: alone {alone:.0}, with two followers {with_followers:.0}, ratio {:.3}",
        with_followers / alone.max(1.0)
    );
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        println!("standby: benchmark");
        return;
    }
    let Ok(brokers) = std::env::var("PRESENCED_BENCH_KAFKA_CLUSTER") else {
        eprintln!("PRESENCED_BENCH_KAFKA_CLUSTER is not set: run scripts/bench.sh standby, which starts a three-node cluster");
        std::process::exit(2);
    };
    let only = std::env::args().skip(1).find(|a| !a.starts_with('-'));
    if only.as_deref().is_none_or(|o| o == "takeover") {
        takeovers(&brokers);
    }
    if only.as_deref().is_none_or(|o| o == "replication") {
        replication(&brokers);
    }
}
