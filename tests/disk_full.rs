//! A database that runs out of room (issue 20, item 7), shown without root through SQLite's
//! page limit (`store.max_size_mb`): the daemon binary stays up, fails `/readyz`, says so once,
//! stops calling IM, and resumes by itself with a full sweep once room returns, with nothing
//! lost.

mod common;

use common::*;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn spawn_daemon(config: &std::path::Path, log: &std::path::Path) -> Child {
    Command::new(env!("CARGO_BIN_EXE_presenced"))
        .args(["run", "--config"])
        .arg(config)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .unwrap()
}

async fn get(port: u16, path: &str) -> (u16, String) {
    let r = reqwest::get(format!("http://127.0.0.1:{port}{path}"))
        .await
        .unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

/// A gauge's value; NaN while `/metrics` does not answer (the daemon starting, or gone).
async fn gauge(port: u16, name: &str) -> f64 {
    let Ok(r) = reqwest::get(format!("http://127.0.0.1:{port}/metrics")).await else {
        return f64::NAN;
    };
    let text = r.text().await.unwrap_or_default();
    text.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(f64::NAN)
}

async fn wait_for_gauge(port: u16, name: &str, value: f64, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while gauge(port, name).await != value {
        assert!(Instant::now() < deadline, "{name} never became {value}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_database_is_waited_out_and_nothing_is_lost() {
    let sim = SimProcess::start(&["--population", "3000", "--churn", "0.3"]);
    let control = sim.control();
    let dir = tempfile::tempdir().unwrap();
    let watch = dir.path().join("watch.txt");
    std::fs::write(&watch, ids("user", 3000).join("\n")).unwrap();
    let config = write_daemon_config(
        dir.path(),
        &sim.base_url(),
        &format!(
            "[sink]\nkind = \"none\"\n[watch]\nfile = \"{}\"\n",
            watch.display()
        ),
    );
    let metrics_port = serve_metrics(&config);
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("[store]\n", "[store]\nmax_size_mb = 8\n");
    std::fs::write(&config, text).unwrap();
    // 6 MiB of the 8 taken by a table an operator can empty later: the room to free.
    let db = dir.path().join("presence.db");
    {
        let conn = rusqlite::Connection::open(&db).unwrap();
        conn.execute_batch(
            "CREATE TABLE filler (b BLOB); INSERT INTO filler SELECT zeroblob(65536) FROM (WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 96) SELECT i FROM n);",
        )
        .unwrap();
    }
    let log = dir.path().join("daemon.log");
    let mut daemon = Reaped(spawn_daemon(&config, &log));

    wait_for_gauge(
        metrics_port,
        "presenced_store_full",
        1.0,
        Duration::from_secs(90),
    )
    .await;
    assert_eq!(
        get(metrics_port, "/readyz").await.0,
        503,
        "not ready while full"
    );
    assert!(gauge(metrics_port, "presenced_db_size_bytes").await > 0.0);
    // Calls still out when the write failed come back; then none go out.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let calls = control.stats().await.calls;
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(
        control.stats().await.calls,
        calls,
        "no IM calls while nothing can be committed"
    );
    assert!(daemon.try_wait().unwrap().is_none(), "the daemon stays up");

    // Room again: churn stops and the operator empties the filler.
    control.churn(0.0).await;
    let freed_at = presenced::model::now_millis();
    {
        let conn = rusqlite::Connection::open(&db).unwrap();
        conn.busy_timeout(Duration::from_secs(5)).unwrap();
        conn.execute_batch("DELETE FROM filler").unwrap();
    }
    wait_for_gauge(
        metrics_port,
        "presenced_store_full",
        0.0,
        Duration::from_secs(60),
    )
    .await;
    let sql = format!(
        "SELECT COUNT(*) FROM sweeps WHERE outcome = 'completed' AND started_at > {freed_at}"
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    while query_i64(&db, &sql) == 0 {
        assert!(
            Instant::now() < deadline,
            "no sweep completed after room returned"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(get(metrics_port, "/readyz").await.0, 200, "ready again");
    assert_matches_truth(&db, &control).await;
    assert_eq!(
        query_i64(
            &db,
            "SELECT COUNT(*) FROM pragma_integrity_check WHERE integrity_check = 'ok'"
        ),
        1
    );
    signal(&daemon, "TERM");
    assert!(daemon.wait().unwrap().success());
    let log = std::fs::read_to_string(&log).unwrap();
    assert_eq!(
        log.matches("the database has no room to write").count(),
        1,
        "said once: {log}"
    );
}
