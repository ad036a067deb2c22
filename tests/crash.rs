//! SIGKILL at random moments during sweeps with churn, many times over: after each restart the
//! database is consistent, and at the end it matches the simulator's ground truth exactly, so
//! nothing was lost and nothing duplicated.

mod common;

use common::*;
use presenced::store::Db;
use rand::Rng;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn spawn_daemon(config: &std::path::Path) -> std::process::Child {
    Command::new(env!("CARGO_BIN_EXE_presenced"))
        .args(["run", "--config"])
        .arg(config)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("presenced run starts")
}

fn completed_sweeps(db: &Db) -> i64 {
    db.connection()
        .query_row(
            "SELECT COUNT(*) FROM sweeps WHERE outcome = 'completed'",
            [],
            |r| r.get(0),
        )
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_at_random_moments_loses_and_duplicates_nothing() {
    // 3,000 accounts, about 150 changes a second, small batches so a sweep spans many commits.
    let sim = SimProcess::start(&[
        "--population",
        "3000",
        "--churn",
        "0.05",
        "--rate",
        "0",
        "--latency-ms",
        "3",
    ]);
    let dir = tempfile::tempdir().unwrap();
    let config = write_daemon_config(
        dir.path(),
        &sim.base_url(),
        "[sink]\nkind = \"stdout\"\n[watch]\nfile = \"WATCH\"\n"
            .replace("WATCH", &dir.path().join("watch.txt").display().to_string())
            .as_str(),
    );
    let mut watch: Vec<String> = ids("user", 3000);
    watch.push("ghost-1".into());
    std::fs::write(dir.path().join("watch.txt"), watch.join("\n")).unwrap();
    // Smaller batches: more transactions per sweep, more places for a kill to land.
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("[im]\n", "[im]\nbatch_size = 100\nmax_in_flight = 8\n");
    std::fs::write(&config, text).unwrap();

    let db_path = dir.path().join("presence.db");
    let mut rng = rand::rng();
    let rounds = 15;
    for round in 0..rounds {
        let mut child = spawn_daemon(&config);
        let wait = rng.random_range(150..1_500);
        std::thread::sleep(Duration::from_millis(wait));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        let mut db = Db::open(&db_path, Duration::from_secs(5)).unwrap();
        check_invariants(&mut db);
        eprintln!(
            "round {round}: killed after {wait} ms, {} completed sweeps so far",
            completed_sweeps(&db)
        );
    }

    // Stop churn, run until a sweep completes after that, stop cleanly and compare with the truth.
    let control = sim.control();
    control.churn(0.0).await;
    let quiet_since = presenced::model::now_millis();
    let mut child = spawn_daemon(&config);
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        std::thread::sleep(Duration::from_millis(200));
        let db = Db::open(&db_path, Duration::from_secs(5)).unwrap();
        let done: i64 = db
            .connection()
            .query_row(
                "SELECT COUNT(*) FROM sweeps WHERE outcome = 'completed' AND started_at > ?1",
                [quiet_since],
                |r| r.get(0),
            )
            .unwrap();
        if done > 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no sweep completed after churn stopped"
        );
    }
    signal(&child, "TERM");
    let status = child.wait().unwrap();
    assert!(status.success(), "SIGTERM must exit 0, got {status:?}");

    let mut db = Db::open(&db_path, Duration::from_secs(5)).unwrap();
    check_invariants(&mut db);
    let truth = control.truth().await;
    let current = db.load_current().unwrap();
    let by_id: std::collections::HashMap<_, _> =
        current.iter().map(|r| (r.user_id.as_str(), r)).collect();
    let mut mismatched = 0;
    for account in &truth {
        let row = by_id
            .get(account.user_id.as_str())
            .expect("every account observed");
        let mut platforms = account.platforms.clone();
        platforms.sort_by(|a, b| a.platform.cmp(&b.platform));
        if row.state != Some(account.status) || row.platforms != platforms {
            mismatched += 1;
        }
    }
    assert_eq!(
        mismatched, 0,
        "SQLite must match the simulator's ground truth"
    );
    let (backlog, _) = db.outbox_backlog().unwrap();
    assert_eq!(
        backlog, 0,
        "the stdout sink drained the outbox before exiting"
    );
}
