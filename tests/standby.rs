//! Standby (`[standby]`) with the daemon binary on the three-node cluster and the simulator
//! churning: the active SIGKILLed fifty times (two instances, then three, partition leaders
//! killed among them), a paused active, an active cut off from Kafka (a TCP proxy in front of
//! the brokers) but not from IM, followers started at once, and a clean hand-over. A
//! `read_committed` consumer must see every event once, each account's seq contiguous across
//! takeovers, and every instance's history must equal the topic.

mod common;

use common::kafka::{cluster, cluster_lock, create_topic_with};
use common::pipeline::*;
use common::{check_invariants, free_port, signal, write_daemon_config, Reaped, SimProcess};
use presenced::store::Db;
use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// The simulator, the topic, and the instances' directories.
struct Rig {
    sim: SimProcess,
    /// Kept (and named) when the test fails, for its logs and databases.
    dir: KeptOnFailure,
    topic: String,
    brokers: String,
    instances: Vec<Instance>,
}

/// A temporary directory that outlives a failing test.
struct KeptOnFailure(Option<tempfile::TempDir>);

impl KeptOnFailure {
    fn path(&self) -> &std::path::Path {
        self.0.as_ref().unwrap().path()
    }
}

impl Drop for KeptOnFailure {
    fn drop(&mut self) {
        if std::thread::panicking() {
            if let Some(dir) = self.0.take() {
                eprintln!("kept for inspection: {}", dir.keep().display());
            }
        }
    }
}

/// One instance: its configuration, database, metrics port, and the process when running.
struct Instance {
    name: String,
    config: PathBuf,
    db: PathBuf,
    port: u16,
    process: Option<Reaped>,
}

impl Rig {
    /// `population` watched accounts churning at `churn` a second, a topic of six partitions
    /// with three replicas (two in sync), and `n` instances (not started).
    fn new(prefix: &str, population: usize, churn: &str, n: usize) -> Rig {
        let c = cluster();
        c.all_nodes_up();
        let brokers = c.bootstrap();
        let topic = topic_name(prefix);
        create_topic_with(&brokers, &topic, 6, 3, &[("min.insync.replicas", "2")]);
        let sim = SimProcess::start(&[
            "--population",
            &population.to_string(),
            "--churn",
            churn,
            "--rate",
            "0",
        ]);
        let dir = KeptOnFailure(Some(tempfile::tempdir().unwrap()));
        let watch = dir.path().join("watch.txt");
        let ids: Vec<String> = (0..population).map(|i| format!("user{i}")).collect();
        std::fs::write(&watch, ids.join("\n")).unwrap();
        let mut rig = Rig {
            sim,
            dir,
            topic,
            brokers,
            instances: Vec::new(),
        };
        for _ in 0..n {
            rig.add_instance();
        }
        rig
    }

    /// Two instances on 500 accounts, started, with an active elected and settled in for two
    /// seconds; and which one it is.
    async fn pair(prefix: &str) -> (Rig, usize) {
        let mut rig = Rig::new(prefix, 500, "0.02", 2);
        rig.start(0);
        rig.start(1);
        let active = rig.one_active(Duration::from_secs(60)).await;
        tokio::time::sleep(Duration::from_secs(2)).await;
        (rig, active)
    }

    fn add_instance(&mut self) -> usize {
        let brokers = self.brokers.clone();
        self.add_instance_via(&brokers)
    }

    /// An instance that reaches the cluster through `brokers` (the PROXIED listeners, say).
    fn add_instance_via(&mut self, brokers: &str) -> usize {
        let i = self.instances.len();
        let name = format!("host{}", (b'a' + i as u8) as char);
        let home = self.dir.path().join(&name);
        std::fs::create_dir_all(&home).unwrap();
        let port = free_port();
        let config = write_daemon_config(
            &home,
            &self.sim.base_url(),
            &format!(
                "[watch]\nfile = \"{watch}\"\n[sink]\nkind = \"kafka\"\n[kafka]\nbrokers = \"{brokers}\"\n\
                 topic = \"{topic}\"\ndelivery = \"exactly-once\"\ntransaction_events = 200\n\
                 topic_replication_factor = 3\ncreate_topic = true\n\
                 [kafka.properties]\n\"reconnect.backoff.max.ms\" = \"1000\"\n\
                 [standby]\nenabled = true\ninstance = \"{name}\"\n",
                watch = self.dir.path().join("watch.txt").display(),
                topic = self.topic,
            ),
        );
        let text = std::fs::read_to_string(&config).unwrap().replace(
            "metrics_listen = \"\"",
            &format!("metrics_listen = \"127.0.0.1:{port}\""),
        );
        std::fs::write(&config, text).unwrap();
        self.instances.push(Instance {
            name,
            db: home.join("presence.db"),
            config,
            port,
            process: None,
        });
        i
    }

    fn start(&mut self, i: usize) {
        let inst = &mut self.instances[i];
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join(format!("{}.log", inst.name)))
            .unwrap();
        inst.process = Some(Reaped(
            std::process::Command::new(env!("CARGO_BIN_EXE_presenced"))
                .args(["run", "--config"])
                .arg(&inst.config)
                .stderr(log)
                .spawn()
                .unwrap(),
        ));
    }

    fn kill(&mut self, i: usize) {
        if let Some(mut p) = self.instances[i].process.take() {
            p.0.kill().unwrap();
            p.0.wait().unwrap();
        }
    }

    fn log(&self, i: usize) -> String {
        std::fs::read_to_string(
            self.dir
                .path()
                .join(format!("{}.log", self.instances[i].name)),
        )
        .unwrap_or_default()
    }

    /// The last lines of every instance's log, for a failure's message.
    fn log_tails(&self) -> String {
        let mut out = String::new();
        for i in 0..self.instances.len() {
            let log = self.log(i);
            let lines: Vec<&str> = log.lines().collect();
            out.push_str(&format!("--- {}\n", self.instances[i].name));
            for l in &lines[lines.len().saturating_sub(40)..] {
                out.push_str(l);
                out.push('\n');
            }
        }
        out
    }

    /// The instance's `/standby`, if it answers.
    async fn status(&self, i: usize) -> Option<serde_json::Value> {
        let url = format!("http://127.0.0.1:{}/standby", self.instances[i].port);
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(2))
            .build()
            .unwrap();
        client.get(url).send().await.ok()?.json().await.ok()
    }

    /// The instance's `presenced_api_calls_total` (calls withheld for want of the lease are
    /// not calls).
    async fn api_calls(&self, i: usize) -> f64 {
        let url = format!("http://127.0.0.1:{}/metrics", self.instances[i].port);
        let text = reqwest::get(url).await.unwrap().text().await.unwrap();
        text.lines()
            .filter(|l| l.starts_with("presenced_api_calls_total"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    /// Waits until instance `i` says it has `role`.
    async fn wait_role(&self, i: usize, role: &str, within: Duration) {
        let deadline = Instant::now() + within;
        while self.status(i).await.is_none_or(|s| s["role"] != role) {
            assert!(
                Instant::now() < deadline,
                "{} not {role} within {within:?}; logs:\n{}",
                self.instances[i].name,
                self.log_tails()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The running instances that say they are the active.
    async fn actives(&self) -> Vec<usize> {
        let mut out = Vec::new();
        for i in 0..self.instances.len() {
            if self.instances[i].process.is_none() {
                continue;
            }
            if let Some(s) = self.status(i).await {
                if s["role"] == "active" {
                    out.push(i);
                }
            }
        }
        out
    }

    /// Waits for exactly one active among the running instances; returns it.
    async fn one_active(&self, within: Duration) -> usize {
        let deadline = Instant::now() + within;
        loop {
            let actives = self.actives().await;
            if actives.len() == 1 {
                return actives[0];
            }
            assert!(
                Instant::now() < deadline,
                "no single active within {within:?} (actives: {actives:?}); logs:\n{}",
                self.log_tails()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Stops the churn, lets the active sweep the final states and every follower catch up,
    /// then stops every instance cleanly.
    async fn settle(&mut self) {
        self.sim.control().churn(0.0).await;
        let active = self.one_active(Duration::from_secs(60)).await;
        let db = self.instances[active].db.clone();
        let sweeps = common::completed_sweeps(&db);
        wait_for("two more sweeps and an empty outbox", 120, || {
            common::completed_sweeps(&db) >= sweeps + 2
                && query_number(
                    &db,
                    "SELECT COUNT(*) FROM presence_history WHERE history_id >
                     (SELECT history_id FROM store_marks WHERE mark = 'published')",
                ) == 0
        })
        .await;
        let newest = query_number(&db, "SELECT MAX(history_id) FROM presence_history");
        for i in 0..self.instances.len() {
            if self.instances[i].process.is_none() {
                continue;
            }
            let follower_db = self.instances[i].db.clone();
            wait_for("every follower caught up", 120, || {
                query_number(&follower_db, "SELECT MAX(history_id) FROM presence_history") >= newest
            })
            .await;
        }
        for inst in &mut self.instances {
            if let Some(mut p) = inst.process.take() {
                signal(&p, "TERM");
                assert!(p.0.wait().unwrap().success(), "{} stops cleanly", inst.name);
            }
        }
        // A partition's end is how a follower knows it caught up, not an error to log.
        for i in 0..self.instances.len() {
            let log = self.log(i);
            let eof = log
                .lines()
                .find(|l| l.contains("ERROR") && l.contains("PartitionEOF"));
            assert!(
                eof.is_none(),
                "{}: {}",
                self.instances[i].name,
                eof.unwrap()
            );
        }
    }

    /// The topic (read_committed) holds each event once, each account's seq contiguous, and
    /// every instance's history equals it.
    async fn assert_histories_equal_the_topic(&self) -> usize {
        let reference = all_history(&self.instances[0].db);
        let consumed = consume_async(&self.brokers, &self.topic, reference.len()).await;
        let mut by_account: HashMap<String, Vec<u64>> = HashMap::new();
        let mut ordered: Vec<_> = consumed.iter().collect();
        ordered.sort_by_key(|c| (c.partition, c.offset));
        let mut ids = std::collections::HashSet::new();
        for c in &ordered {
            assert!(
                ids.insert(c.value["event_id"].as_str().unwrap().to_owned()),
                "event {} twice on the topic",
                c.value["event_id"]
            );
            by_account
                .entry(c.key.clone())
                .or_default()
                .push(c.value["seq"].as_u64().unwrap());
        }
        for (account, seqs) in &by_account {
            let expected: Vec<u64> = (1..=seqs.len() as u64).collect();
            assert_eq!(
                seqs, &expected,
                "{account}: seq contiguous across takeovers"
            );
        }
        for inst in &self.instances {
            let mut db = Db::open(&inst.db, Duration::from_secs(5)).unwrap();
            check_invariants(&mut db);
            let history = all_history(&inst.db);
            assert_eq!(
                history.len(),
                consumed.len(),
                "{}: history rows equal the topic's events",
                inst.name
            );
            assert_matches_history(&consumed, &history, 1_400_000_000);
        }
        consumed.len()
    }
}

async fn wait_for(what: &str, secs: u64, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// How often the accounts changed, and when each instance was active, from its log.
fn takeovers_in(log: &str) -> usize {
    log.lines()
        .filter(|l| l.contains("this instance is the active"))
        .count()
}

/// SIGKILLs the active `kills` times at random moments; each killed instance restarts as a
/// follower. `between(rig, i)` may do more harm. Returns the takeover times seen (kill to a
/// new active), ms.
async fn kill_actives(
    rig: &mut Rig,
    kills: usize,
    mut between: impl FnMut(&mut Rig, usize),
) -> Vec<u128> {
    use rand::Rng;
    let mut times = Vec::new();
    for i in 0..kills {
        let active = rig.one_active(Duration::from_secs(60)).await;
        let pause = rand::rng().random_range(200..1_500);
        tokio::time::sleep(Duration::from_millis(pause)).await;
        let killed = Instant::now();
        rig.kill(active);
        let next = loop {
            let actives = rig.actives().await;
            assert!(actives.len() <= 1, "two actives at once: {actives:?}");
            if let Some(&a) = actives.first() {
                break a;
            }
            assert!(
                killed.elapsed() < Duration::from_secs(90),
                "no follower took over within 90 s of kill {i}; logs:\n{}",
                rig.log_tails()
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        };
        times.push(killed.elapsed().as_millis());
        assert_ne!(next, active);
        rig.start(active);
        between(rig, i);
    }
    times
}

fn percentile(sorted: &[u128], p: f64) -> u128 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_kills_of_the_active_lose_and_duplicate_nothing() {
    let _serial = cluster_lock().await;
    let mut rig = Rig::new("standby-kills", 1_000, "0.02", 2);
    rig.start(0);
    rig.start(1);
    let c = cluster();
    let mut down = None;
    // Two instances, with a partition leader killed during a takeover and started again later.
    let mut times = kill_actives(&mut rig, 25, |rig, i| match i {
        5 | 15 => {
            let leader = c.leader(&rig.topic, i as i32 % 6).expect("a leader");
            c.kill_node(leader);
            down = Some(leader);
        }
        8 | 18 => {
            if let Some(node) = down.take() {
                c.start_node(node);
            }
        }
        _ => {}
    })
    .await;
    if let Some(node) = down.take() {
        c.start_node(node);
    }
    c.all_nodes_up();
    // Then three.
    let third = rig.add_instance();
    rig.start(third);
    times.extend(kill_actives(&mut rig, 25, |_, _| {}).await);
    rig.settle().await;
    let events = rig.assert_histories_equal_the_topic().await;
    common::assert_matches_truth(&rig.instances[0].db, &rig.sim.control()).await;
    times.sort_unstable();
    let takeovers: usize = (0..rig.instances.len())
        .map(|i| takeovers_in(&rig.log(i)))
        .sum();
    eprintln!(
        "standby: 50 kills, {takeovers} takeovers, {events} events each once; kill to new active p50 {} ms, p99 {} ms, max {} ms",
        percentile(&times, 0.5),
        percentile(&times, 0.99),
        times.last().unwrap()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_active_stops_calling_im_stands_down_and_converges() {
    let _serial = cluster_lock().await;
    let (mut rig, active) = Rig::pair("standby-pause").await;
    let follower = 1 - active;
    let pid = rig.instances[active].process.as_ref().unwrap().id();
    let stop = |sig: &str| {
        let status = std::process::Command::new("kill")
            .args([sig, &pid.to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    };
    stop("-STOP");
    // Longer than the takeover time (2 s).
    let deadline = Instant::now() + Duration::from_secs(30);
    while rig
        .status(follower)
        .await
        .is_none_or(|s| s["role"] != "active")
    {
        assert!(Instant::now() < deadline, "the follower never took over");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop("-CONT");
    let resumed = Instant::now();
    let mut before = None;
    loop {
        if let Some(s) = rig.status(active).await {
            before.get_or_insert(rig.api_calls(active).await);
            if s["role"] == "follower" {
                break;
            }
        }
        assert!(
            resumed.elapsed() < Duration::from_secs(30),
            "it never stood down"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let after = rig.api_calls(active).await;
    // Calls already sent before the pause may complete after it; no new one goes out.
    let in_flight = 4.0;
    assert!(
        after - before.unwrap() <= in_flight,
        "the resumed active called IM {} times before standing down",
        after - before.unwrap()
    );
    let log = rig.log(active);
    assert!(log.contains("standing down"), "it says it stood down");
    assert!(log.contains("IM calls stopped"), "{log}");
    rig.settle().await;
    rig.assert_histories_equal_the_topic().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_active_cut_off_from_kafka_but_not_im_stops_calling_stands_down_and_converges() {
    let _serial = cluster_lock().await;
    let mut rig = Rig::new("standby-cut", 500, "0.02", 0);
    let proxy = cluster().proxy().await;
    let cut_off = rig.add_instance_via(&cluster().proxied_bootstrap());
    let other = rig.add_instance();
    rig.start(cut_off);
    assert_eq!(rig.one_active(Duration::from_secs(60)).await, cut_off);
    rig.start(other);
    rig.wait_role(other, "follower", Duration::from_secs(60))
        .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    proxy.cut();
    let cut_at = Instant::now();
    rig.wait_role(other, "active", Duration::from_secs(30))
        .await;
    let took_over = cut_at.elapsed();
    // Its lease (a heartbeat shorter than the takeover time) ran out before the other could
    // take over: from then on, however long the cut lasts, it does not call IM.
    let calls = rig.api_calls(cut_off).await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(
        rig.api_calls(cut_off).await,
        calls,
        "the instance cut off from Kafka called IM after the other took over; logs:\n{}",
        rig.log_tails()
    );
    assert_ne!(
        rig.status(cut_off).await.map(|s| s["role"].clone()),
        Some(serde_json::json!("active")),
        "the instance cut off from Kafka still says it is the active"
    );
    proxy.restore();
    rig.wait_role(cut_off, "follower", Duration::from_secs(60))
        .await;
    let log = rig.log(cut_off);
    assert!(log.contains("IM calls stopped"), "{log}");
    assert!(log.contains("standing down"), "{log}");
    assert_eq!(rig.actives().await, vec![other]);
    // Cut off again, now a follower: it hears nothing, not even its own announcements, and
    // cannot tell that from a silent active, so it does not claim the role, then or when the
    // cut heals.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = rig.log(cut_off).len();
    proxy.cut();
    tokio::time::sleep(Duration::from_secs(6)).await;
    proxy.restore();
    tokio::time::sleep(Duration::from_secs(4)).await;
    let log = rig.log(cut_off)[before..].to_owned();
    assert!(
        log.contains("hears nothing on the heartbeat topic"),
        "{log}"
    );
    assert!(
        !log.contains("taking over reason="),
        "the cut-off follower claimed the role: {log}"
    );
    assert_eq!(rig.actives().await, vec![other]);
    rig.settle().await;
    let events = rig.assert_histories_equal_the_topic().await;
    eprintln!(
        "cut off: the other took over {took_over:?} after the cut; {events} events each once"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_active_whose_publisher_is_fenced_stands_down() {
    // What a claimant that lost the heartbeat id could still do with a late fencing: the
    // active's heartbeats commit, its publisher cannot. It must not stay the active.
    let _serial = cluster_lock().await;
    let (mut rig, active) = Rig::pair("standby-fenced").await;
    let base = format!("presenced-1400000000-{}", rig.topic);
    let brokers = rig.brokers.clone();
    tokio::task::spawn_blocking(move || {
        use rdkafka::producer::{BaseProducer, Producer};
        for id in presenced::publish::kafka::lane_ids(&base) {
            let p: BaseProducer = rdkafka::ClientConfig::new()
                .set("bootstrap.servers", &brokers)
                .set("transactional.id", &id)
                .create()
                .unwrap();
            p.init_transactions(Duration::from_secs(30)).unwrap();
        }
    })
    .await
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !rig.log(active).contains("standing down") {
        assert!(
            Instant::now() < deadline,
            "the active whose publisher was fenced did not stand down; logs:\n{}",
            rig.log_tails()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let log = rig.log(active);
    assert!(log.contains("its publisher was fenced"), "{log}");
    // Then an active (either: the first in name order claims first) publishes again: the
    // outbox empties and every history equals the topic.
    rig.settle().await;
    rig.assert_histories_equal_the_topic().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_started_at_once_elect_exactly_one_active() {
    let _serial = cluster_lock().await;
    let mut rig = Rig::new("standby-race", 300, "0.02", 3);
    for round in 0..3 {
        for i in 0..3 {
            rig.start(i);
        }
        let active = rig.one_active(Duration::from_secs(60)).await;
        // And it stays that way.
        for _ in 0..20 {
            let actives = rig.actives().await;
            assert!(actives.len() <= 1, "round {round}: two actives {actives:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(rig.one_active(Duration::from_secs(5)).await, active);
        if round < 2 {
            for i in 0..3 {
                rig.kill(i);
            }
        }
    }
    rig.settle().await;
    rig.assert_histories_equal_the_topic().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clean_handover_goes_to_a_follower_at_once() {
    let _serial = cluster_lock().await;
    let mut rig = Rig::new("standby-handover", 500, "0.02", 2);
    rig.start(0);
    rig.start(1);
    for _ in 0..3 {
        let active = rig.one_active(Duration::from_secs(60)).await;
        tokio::time::sleep(Duration::from_secs(2)).await;
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_presenced"))
            .args(["standby", "handover", "--config"])
            .arg(&rig.instances[active].config)
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        let said = String::from_utf8_lossy(&out.stdout);
        assert!(said.contains("handed over"), "{said}");
        let next = rig.one_active(Duration::from_secs(30)).await;
        assert_ne!(next, active);
        let log = rig.log(next);
        assert!(
            log.lines()
                .rev()
                .find(|l| l.contains("taking over"))
                .is_some_and(|l| l.contains("handed over")),
            "the follower took over because it was handed the role, not after a silence"
        );
    }
    let status = std::process::Command::new(env!("CARGO_BIN_EXE_presenced"))
        .args(["standby", "status", "--config"])
        .arg(&rig.instances[0].config)
        .output()
        .unwrap();
    assert!(status.status.success(), "{status:?}");
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(
        text.contains("role:") && text.contains("recent role changes"),
        "{text}"
    );
    rig.settle().await;
    rig.assert_histories_equal_the_topic().await;
    // The database's own view: the latest role change and takeover.
    let stats = std::process::Command::new(env!("CARGO_BIN_EXE_presenced"))
        .args(["stats", "--db"])
        .arg(&rig.instances[0].db)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&stats.stdout);
    assert!(
        text.contains("standby role") && text.contains("last takeover"),
        "{text}"
    );
}

#[test]
fn standby_without_exactly_once_is_refused_with_78() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_daemon_config(
        dir.path(),
        "http://127.0.0.1:1/",
        "[sink]\nkind = \"kafka\"\n[kafka]\nbrokers = \"127.0.0.1:1\"\n[standby]\nenabled = true\n",
    );
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_presenced"))
        .args(["run", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(78), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("standby.enabled") && err.contains("exactly-once"),
        "{err}"
    );
}
