//! "Semantics that must hold" (docs/DESIGN-NOTES.md), each shown against the simulator over HTTP and a real
//! SQLite file.

mod common;

use common::*;
use presenced::metrics::Metrics;
use presenced::model::State;
use presenced::sim::Faults;
use presenced::store::{Db, Store};
use presenced::sweep::{SweepSettings, Sweeper};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

struct Rig {
    sim: presenced::sim::SimHandle,
    control: Control,
    sweeper: Sweeper,
    db_path: std::path::PathBuf,
    _dir: tempfile::TempDir,
    shutdown: CancellationToken,
}

async fn rig(population: usize, watch: Vec<String>) -> Rig {
    let cfg = quiet_sim(population);
    let sim = start_sim(cfg.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let db_path = dir.path().join("presence.db");
    let mut im = im_config(&sim, &cfg);
    im.max_attempts = 2;
    let sweeper = sweeper_for(&im, &db_path, watch).await;
    Rig {
        control: Control::new(&sim),
        sim,
        sweeper,
        db_path,
        _dir: dir,
        shutdown: CancellationToken::new(),
    }
}

async fn sweeper_for(
    im: &presenced::config::ImConfig,
    db: &std::path::Path,
    watch: Vec<String>,
) -> Sweeper {
    let store = Store::open(db, Duration::from_secs(5)).await.unwrap();
    let metrics = Arc::new(Metrics::new());
    let settings = SweepSettings {
        batch_size: 7,
        max_in_flight: 4,
        batches_per_transaction: 3,
        platform_changes_are_transitions: true,
    };
    let mut s = Sweeper::new(Arc::new(client(im)), store, settings, metrics)
        .await
        .unwrap();
    s.set_watch_list(watch).await.unwrap();
    s
}

fn db(path: &std::path::Path) -> Db {
    Db::open(path, Duration::from_secs(5)).unwrap()
}

fn count(db: &Db, sql: &str) -> i64 {
    db.connection().query_row(sql, [], |r| r.get(0)).unwrap()
}

#[tokio::test]
async fn first_sight_is_initial_with_null_from() {
    let mut r = rig(30, ids("user", 30)).await;
    let report = r.sweeper.sweep(&r.shutdown).await.unwrap();
    assert_eq!(
        (report.counts.observed, report.counts.transitions),
        (30, 30)
    );
    let db = db(&r.db_path);
    assert_eq!(count(&db, "SELECT COUNT(*) FROM presence_history WHERE kind = 'initial' AND from_state IS NULL AND seq = 1 AND previous_observed_at IS NULL"), 30);
    assert_eq!(count(&db, "SELECT COUNT(*) FROM outbox"), 30);
    // A second sweep with nothing changed writes nothing.
    let report = r.sweeper.sweep(&r.shutdown).await.unwrap();
    assert_eq!(report.counts.transitions, 0);
    assert_eq!(count(&db, "SELECT COUNT(*) FROM presence_history"), 30);
    r.sim.stop().await;
}

#[tokio::test]
async fn failed_calls_never_become_offline() {
    let mut r = rig(20, ids("user", 20)).await;
    r.sweeper.sweep(&r.shutdown).await.unwrap();
    let before: Vec<Option<State>> = (0..20)
        .map(|i| r.sweeper.snapshot().state_of(&format!("user{i}")))
        .collect();
    r.control
        .faults(&Faults {
            http_502: 1.0,
            ..Faults::default()
        })
        .await;
    let report = r.sweeper.sweep(&r.shutdown).await.unwrap();
    assert_eq!(report.counts.failed, 20);
    assert_eq!(report.counts.observed, 0);
    assert_eq!(report.counts.transitions, 0);
    let after: Vec<Option<State>> = (0..20)
        .map(|i| r.sweeper.snapshot().state_of(&format!("user{i}")))
        .collect();
    assert_eq!(before, after);
    let db = db(&r.db_path);
    assert_eq!(count(&db, "SELECT COUNT(*) FROM presence_history"), 20);
    assert_eq!(
        count(
            &db,
            "SELECT failed FROM sweeps ORDER BY sweep_id DESC LIMIT 1"
        ),
        20
    );
    r.sim.stop().await;
}

#[tokio::test]
async fn not_found_accounts_are_marked_and_emit_nothing() {
    let mut watch = ids("user", 5);
    watch.extend(["ghost-a".to_string(), "ghost-b".to_string()]);
    let mut r = rig(5, watch).await;
    let report = r.sweeper.sweep(&r.shutdown).await.unwrap();
    assert_eq!(report.counts.not_found, 2);
    let db = db(&r.db_path);
    assert_eq!(
        count(
            &db,
            "SELECT COUNT(*) FROM presence_history WHERE user_id LIKE 'ghost%'"
        ),
        0
    );
    assert_eq!(
        count(
            &db,
            "SELECT COUNT(*) FROM presence_current WHERE not_found_since IS NOT NULL"
        ),
        2
    );
    assert_eq!(db.stats().unwrap().not_found, 2);
    // An account that is deleted in IM becomes not found, without an event.
    r.control.delete("user0").await;
    r.sweeper.sweep(&r.shutdown).await.unwrap();
    assert_eq!(
        count(
            &db,
            "SELECT COUNT(*) FROM presence_history WHERE user_id = 'user0'"
        ),
        1
    );
    assert_eq!(
        count(
            &db,
            "SELECT COUNT(*) FROM presence_current WHERE not_found_since IS NOT NULL"
        ),
        3
    );
    r.sim.stop().await;
}

#[tokio::test]
async fn platform_changes_times_and_sequence_numbers() {
    let mut r = rig(3, ids("user", 3)).await;
    r.control.set("user1", &[("iPhone", State::Online)]).await;
    r.sweeper.sweep(&r.shutdown).await.unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;
    r.sweeper.sweep(&r.shutdown).await.unwrap(); // unchanged, but observed
    r.control
        .set(
            "user1",
            &[("iPhone", State::Online), ("Web", State::Online)],
        )
        .await;
    r.sweeper.sweep(&r.shutdown).await.unwrap();
    r.control
        .set("user1", &[("iPhone", State::PushOnline)])
        .await;
    r.sweeper.sweep(&r.shutdown).await.unwrap();
    let db = db(&r.db_path);
    let history = db.history("user1", None, None).unwrap();
    assert_eq!(
        history.iter().map(|t| t.seq).collect::<Vec<_>>(),
        vec![1, 2, 3]
    );
    // Aggregate unchanged, platform list changed: still a transition.
    assert_eq!(
        (history[1].from, history[1].to),
        (Some(State::Online), State::Online)
    );
    assert_eq!(history[1].to_platforms.len(), 2);
    assert_eq!(history[1].from_platforms.as_ref().unwrap().len(), 1);
    assert_eq!(
        (history[2].from, history[2].to),
        (Some(State::Online), State::PushOnline)
    );
    // previous_observed_at is the last observation (sweep 2), not the last change (sweep 1).
    let sweep2_start: i64 = count(&db, "SELECT started_at FROM sweeps WHERE sweep_id = 2");
    assert!(history[1].previous_observed_at.unwrap() >= sweep2_start);
    assert!(history[1].previous_observed_at.unwrap() > history[0].observed_at);
    assert!(history[2].previous_observed_at.unwrap() == history[1].observed_at);
    r.sim.stop().await;
}

#[tokio::test]
async fn removal_stops_events_and_return_is_initial_with_continued_seq() {
    let mut r = rig(3, ids("user", 3)).await;
    r.sweeper.sweep(&r.shutdown).await.unwrap();
    r.sweeper
        .set_watch_list(vec!["user0".into(), "user1".into()])
        .await
        .unwrap();
    r.control.set("user2", &[("PC", State::Online)]).await;
    r.sweeper.sweep(&r.shutdown).await.unwrap();
    let db = db(&r.db_path);
    assert_eq!(
        count(
            &db,
            "SELECT COUNT(*) FROM presence_history WHERE user_id = 'user2'"
        ),
        1
    );
    assert_eq!(
        count(
            &db,
            "SELECT COUNT(*) FROM presence_current WHERE user_id = 'user2' AND state IS NULL"
        ),
        1
    );
    r.sweeper.set_watch_list(ids("user", 3)).await.unwrap();
    r.sweeper.sweep(&r.shutdown).await.unwrap();
    let h = db.history("user2", None, None).unwrap();
    assert_eq!(h.len(), 2);
    assert_eq!((h[1].kind(), h[1].seq, h[1].from), ("initial", 2, None));
    r.sim.stop().await;
}

#[tokio::test]
async fn restart_reloads_the_snapshot_without_duplicates() {
    let mut r = rig(25, ids("user", 25)).await;
    r.sweeper.sweep(&r.shutdown).await.unwrap();
    let cfg = quiet_sim(25);
    let mut im = im_config(&r.sim, &cfg);
    im.max_attempts = 2;
    drop(r.sweeper);
    let mut again = sweeper_for(&im, &r.db_path, ids("user", 25)).await;
    r.control.set("user3", &[("Mac", State::Online)]).await;
    r.control.set("user4", &[]).await;
    let report = again.sweep(&r.shutdown).await.unwrap();
    let db = db(&r.db_path);
    let changed = count(
        &db,
        "SELECT COUNT(*) FROM presence_history WHERE sweep_id = 2",
    );
    assert_eq!(report.counts.transitions as i64, changed);
    assert!(
        changed <= 2,
        "only the two accounts touched may change, got {changed}"
    );
    assert_eq!(count(&db, "SELECT COUNT(*) FROM (SELECT user_id, seq FROM presence_history GROUP BY 1, 2 HAVING COUNT(*) > 1)"), 0);
    r.sim.stop().await;
}

#[tokio::test]
async fn shutdown_stops_new_batches_and_loses_nothing() {
    let mut r = rig(200, ids("user", 200)).await;
    r.control
        .faults(&Faults {
            latency_ms: 50.0,
            ..Faults::default()
        })
        .await;
    let stop = r.shutdown.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(60)).await;
        stop.cancel();
    });
    let report = r.sweeper.sweep(&r.shutdown).await.unwrap();
    assert_eq!(report.outcome, presenced::sweep::SweepOutcome::Stopped);
    assert!(report.counts.observed < 200, "{:?}", report.counts);
    let db = db(&r.db_path);
    // Everything observed was recorded; nothing else was invented.
    assert_eq!(
        count(&db, "SELECT COUNT(*) FROM presence_history") as u64,
        report.counts.observed
    );
    assert_eq!(count(&db, "SELECT outcome = 'stopped' FROM sweeps"), 1);
    r.sim.stop().await;
}

#[tokio::test]
async fn analysts_in_another_process_do_not_stall_sweeps() {
    let mut r = rig(300, ids("user", 300)).await;
    r.sweeper.sweep(&r.shutdown).await.unwrap();
    // A long read transaction and a heavy query, from another process.
    let script = r#"
import sqlite3, sys, time
c = sqlite3.connect(sys.argv[1], isolation_level=None)
c.execute("BEGIN")
n = c.execute("SELECT COUNT(*) FROM presence_history").fetchone()[0]
c.execute("SELECT user_id, day, state, seconds FROM presence_daily").fetchall()
print(n, flush=True)
time.sleep(60)
"#;
    let mut analyst = std::process::Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(&r.db_path)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python3 is on the machine");
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(analyst.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    assert_eq!(line.trim(), "300");
    for i in 0..3 {
        for k in 0..50 {
            let state = if (i + k) % 2 == 0 {
                State::Online
            } else {
                State::Offline
            };
            r.control
                .set(&format!("user{k}"), &[("Android", state)])
                .await;
        }
        let report = r.sweeper.sweep(&r.shutdown).await.unwrap();
        assert_eq!(report.counts.observed, 300);
    }
    // The sweeps committed while the reader still held its snapshot.
    assert!(
        analyst.try_wait().unwrap().is_none(),
        "the analyst's transaction must still be open"
    );
    let db = db(&r.db_path);
    assert!(count(&db, "SELECT COUNT(*) FROM presence_history") > 300);
    analyst.kill().unwrap();
    let _ = analyst.wait();
    r.sim.stop().await;
}
