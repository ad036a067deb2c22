//! The adaptive schedule end to end: the daemon binary against the simulator process with hot
//! and cold accounts, a real SQLite file. Nothing is lost or invented (the history equals the
//! simulator's states, under faults and SIGKILLs), every account is observed within the
//! staleness bound, hot accounts are learned as hot, the estimates survive a restart, and
//! switching schedules by reload keeps the history intact.

mod common;

use common::*;
use presenced::schedule::estimate::Estimate;
use presenced::sim::Faults;
use presenced::store::Db;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const MAX_STALENESS: f64 = 3.0;

fn spawn_daemon(config: &Path, log: &Path) -> Reaped {
    Reaped(
        Command::new(env!("CARGO_BIN_EXE_presenced"))
            .args(["run", "--config"])
            .arg(config)
            .stdout(Stdio::null())
            .stderr(Stdio::from(std::fs::File::create(log).unwrap()))
            .spawn()
            .expect("presenced run starts"),
    )
}

fn stop(mut daemon: Reaped) {
    signal(&daemon, "TERM");
    assert!(daemon.wait().unwrap().success(), "a clean stop");
}

/// A simulator of `population` accounts, 5% of them making 90% of the changes, and a daemon
/// configuration watching them all with `schedule`: calls of 20 accounts at 20 a second, so a
/// sweep of 400 lasts a second and hot accounts come up more than once in one (polled at most
/// every half second), and one transaction per sweep, so an account's second answer can find
/// its first decision still waiting to be committed.
fn rig(
    population: usize,
    churn: f64,
    schedule: &str,
) -> (SimProcess, tempfile::TempDir, std::path::PathBuf) {
    let (population_flag, churn_flag) = (population.to_string(), churn.to_string());
    let sim = SimProcess::start(&[
        "--population",
        &population_flag,
        "--churn",
        &churn_flag,
        "--rate",
        "0",
        "--hot-share",
        "0.05",
        "--hot-steps",
        "0.9",
        "--latency-ms",
        "2",
    ]);
    let dir = tempfile::tempdir().unwrap();
    let watch = dir.path().join("watch.txt");
    std::fs::write(&watch, ids("user", population).join("\n")).unwrap();
    let config = write_daemon_config(
        dir.path(),
        &sim.base_url(),
        &format!(
            "[sink]\nkind = \"none\"\n[watch]\nfile = \"{}\"\n",
            watch.display()
        ),
    );
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace(
            "[im]\n",
            "[im]\nbatch_size = 20\nmax_in_flight = 4\ncalls_per_second = 20\n",
        )
        .replace(
            "[sweep]\n",
            &format!("[sweep]\nschedule = \"{schedule}\"\nmax_staleness_secs = {MAX_STALENESS}\nbatches_per_transaction = 25\n"),
        );
    std::fs::write(&config, text).unwrap();
    (sim, dir, config)
}

async fn wait_until(what: &str, timeout: Duration, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits out the staleness bound and two sweeps after the churn stopped: every account has
/// been observed since.
async fn settle(db: &Path) {
    tokio::time::sleep(Duration::from_secs_f64(MAX_STALENESS + 0.5)).await;
    let done = completed_sweeps(db);
    wait_until("two more sweeps", Duration::from_secs(30), || {
        completed_sweeps(db) >= done + 2
    })
    .await;
}

fn estimates(db: &Path) -> std::collections::HashMap<String, Estimate> {
    Db::open(db, Duration::from_secs(5))
        .unwrap()
        .load_estimates()
        .unwrap()
        .into_iter()
        .map(|s| (s.user_id, s.estimate))
        .collect()
}

async fn hot_ids(sim: &SimProcess) -> std::collections::HashSet<String> {
    let v: serde_json::Value = reqwest::get(format!("{}control/activity", sim.base_url()))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    v["hot"]
        .as_array()
        .expect("hot ids")
        .iter()
        .map(|id| id.as_str().unwrap().to_owned())
        .collect()
}

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("{name} in /metrics"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adaptive_polling_loses_nothing_through_faults_and_kills_and_keeps_the_bound() {
    let (sim, dir, config) = rig(400, 0.05, "adaptive");
    let db = dir.path().join("presence.db");
    let log = dir.path().join("daemon.log");
    let control = sim.control();
    control
        .faults(&Faults {
            http_502: 0.05,
            account_error: Some((70_001, 0.02)),
            latency_jitter_ms: 5.0,
            ..Faults::default()
        })
        .await;
    // Killed three times mid-run, then left to run.
    for _ in 0..3 {
        let mut daemon = spawn_daemon(&config, &log);
        let sweeps = completed_sweeps(&db);
        wait_until("sweeps", Duration::from_secs(30), || {
            completed_sweeps(&db) >= sweeps + 3
        })
        .await;
        daemon.kill().unwrap();
        daemon.wait().unwrap();
        check_invariants(&mut Db::open(&db, Duration::from_secs(5)).unwrap());
    }
    let metrics_port = serve_metrics(&config);
    let daemon = spawn_daemon(&config, &log);
    tokio::time::sleep(Duration::from_secs(4)).await;
    control.faults(&Faults::default()).await;
    control.churn(0.0).await;
    settle(&db).await;
    let text = reqwest::get(format!("http://127.0.0.1:{metrics_port}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    stop(daemon);
    assert_matches_truth(&db, &control).await;
    assert_eq!(no_op_transitions(&db), 0, "no transition is invented");
    // Every account observed within the bound (the gauge is set as a sweep starts).
    let oldest = metric(&text, "presenced_oldest_observation_age_seconds");
    assert!(
        oldest <= MAX_STALENESS + 1.0,
        "oldest observation {oldest} s"
    );
    assert!(metric(&text, "presenced_poll_interval_seconds_count") > 0.0);
    // The hot accounts were learned as hot.
    let hot = hot_ids(&sim).await;
    let saved = estimates(&db);
    assert_eq!(
        saved.len(),
        400,
        "every account's estimate is saved at the stop"
    );
    let mean = |hot_ones: bool| {
        let rates: Vec<f64> = saved
            .iter()
            .filter(|(id, _)| hot.contains(*id) == hot_ones)
            .map(|(_, e)| e.own_rate())
            .collect();
        rates.iter().sum::<f64>() / rates.len() as f64
    };
    let (hot_rate, cold_rate) = (mean(true), mean(false));
    assert!(
        hot_rate > 3.0 * cold_rate,
        "hot accounts {hot_rate}/s, cold {cold_rate}/s"
    );
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(logged.contains("schedule=\"adaptive\""), "{logged}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn estimates_survive_a_restart() {
    let (_sim, dir, config) = rig(400, 0.05, "adaptive");
    let db = dir.path().join("presence.db");
    let log = dir.path().join("daemon.log");
    let daemon = spawn_daemon(&config, &log);
    wait_until("sweeps", Duration::from_secs(30), || {
        completed_sweeps(&db) >= 6
    })
    .await;
    stop(daemon);
    let before = estimates(&db);
    assert_eq!(before.len(), 400);
    let polls = |e: &std::collections::HashMap<String, Estimate>| -> f64 {
        e.values().map(|e| f64::from(e.polls)).sum()
    };
    // A second run, shorter than the first: counts that started from the saved ones only grow
    // (the decayed count of polls rises toward its limit); counts started afresh would be
    // those of a few polls.
    let daemon = spawn_daemon(&config, &log);
    let sweeps = completed_sweeps(&db);
    wait_until("sweeps", Duration::from_secs(30), || {
        completed_sweeps(&db) >= sweeps + 2
    })
    .await;
    stop(daemon);
    let after = estimates(&db);
    assert!(
        polls(&after) >= polls(&before),
        "saved {} polls, after a restart {}",
        polls(&before),
        polls(&after)
    );
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(logged.contains("400 estimates loaded"), "{logged}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn switching_schedules_by_reload_keeps_the_history_intact() {
    let (sim, dir, config) = rig(400, 0.05, "round-robin");
    let db = dir.path().join("presence.db");
    let log = dir.path().join("daemon.log");
    let control = sim.control();
    let daemon = spawn_daemon(&config, &log);
    let switch = |from: &str, to: &str| {
        let text = std::fs::read_to_string(&config).unwrap();
        std::fs::write(
            &config,
            text.replace(
                &format!("schedule = \"{from}\""),
                &format!("schedule = \"{to}\""),
            ),
        )
        .unwrap();
        signal(&daemon, "HUP");
    };
    for (from, to) in [
        ("round-robin", "adaptive"),
        ("adaptive", "round-robin"),
        ("round-robin", "adaptive"),
    ] {
        let sweeps = completed_sweeps(&db);
        wait_until("sweeps", Duration::from_secs(30), || {
            completed_sweeps(&db) >= sweeps + 3
        })
        .await;
        switch(from, to);
    }
    let sweeps = completed_sweeps(&db);
    wait_until("sweeps", Duration::from_secs(30), || {
        completed_sweeps(&db) >= sweeps + 3
    })
    .await;
    control.churn(0.0).await;
    settle(&db).await;
    stop(daemon);
    assert_matches_truth(&db, &control).await;
    assert_eq!(no_op_transitions(&db), 0);
    let logged = std::fs::read_to_string(&log).unwrap();
    assert_eq!(
        logged.matches("sweep schedule reloaded").count(),
        3,
        "{logged}"
    );
    // Leaving the adaptive schedule saved what it had learned.
    assert!(!estimates(&db).is_empty());
}

#[test]
fn a_staleness_bound_shorter_than_two_intervals_is_a_configuration_error() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_daemon_config(
        dir.path(),
        "http://127.0.0.1:9/",
        "[sink]\nkind = \"none\"\n",
    );
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("interval_secs = 0.3", "interval_secs = 10")
        .replace(
            "[sweep]\n",
            "[sweep]\nschedule = \"adaptive\"\nmax_staleness_secs = 15\n",
        );
    std::fs::write(&config, text).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_presenced"))
        .args(["check-config", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(78));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("sweep.max_staleness_secs") && stderr.contains("twice sweep.interval_secs"),
        "{stderr}"
    );
}
