//! The real binary: configuration errors, SIGHUP, SIGTERM, metrics and health endpoints.

mod common;

use common::*;
use presenced::store::Db;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn presenced() -> Command {
    Command::new(env!("CARGO_BIN_EXE_presenced"))
}

fn wait_for(what: &str, timeout: Duration, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn query_i64(db: &std::path::Path, sql: &str) -> i64 {
    let db = Db::open(db, Duration::from_secs(5)).unwrap();
    db.connection().query_row(sql, [], |r| r.get(0)).unwrap()
}

#[test]
fn configuration_errors_exit_78_naming_key_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        "[im]\nsdkappid = 1400000000\nsecret_key = \"k\"\n\n[sweep]\nintervall_secs = 5\n",
    )
    .unwrap();
    let out = presenced()
        .args(["run", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(78));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("bad.toml") && err.contains("line 6") && err.contains("intervall_secs"),
        "{err}"
    );

    std::fs::write(
        &path,
        "[im]\nsdkappid = 1400000000\nsecret_key = \"k\"\nbatch_size = 900\n",
    )
    .unwrap();
    let out = presenced()
        .args(["check-config", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(78));
    assert!(String::from_utf8_lossy(&out.stderr).contains("im.batch_size"));

    let out = presenced()
        .args(["run", "--config"])
        .arg(dir.path().join("missing.toml"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(78));
    assert!(String::from_utf8_lossy(&out.stderr).contains("missing.toml"));
}

#[test]
fn check_config_prints_the_effective_configuration_redacted() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_daemon_config(
        dir.path(),
        "http://127.0.0.1:9/",
        "[kafka.properties]\n\"sasl.password\" = \"hunter2-secret\"\n",
    );
    let out = presenced()
        .args(["check-config", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(shown.contains("calls_per_second = 200.0"), "{shown}");
    assert!(
        !shown.contains("hunter2-secret") && !shown.contains("presenced-simulator-secret-key"),
        "{shown}"
    );
    assert!(shown.contains("[redacted]"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_watch_list_and_metrics_move() {
    let sim = SimProcess::start(&["--population", "50", "--churn", "0.05", "--rate", "0"]);
    let dir = tempfile::tempdir().unwrap();
    let watch_file = dir.path().join("watch.txt");
    std::fs::write(&watch_file, ids("user", 10).join("\n")).unwrap();
    let config = write_daemon_config(
        dir.path(),
        &sim.base_url(),
        &format!(
            "[watch]\nfile = \"{}\"\n[sink]\nkind = \"none\"\n",
            watch_file.display()
        ),
    );
    let metrics_port = serve_metrics(&config);
    let db = dir.path().join("presence.db");
    let mut child = presenced()
        .args(["run", "--config"])
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();

    let http = reqwest::Client::new();
    let metrics_url = format!("http://127.0.0.1:{metrics_port}/metrics");
    let observed = |text: &str| -> f64 {
        text.lines()
            .find(|l| l.starts_with("presenced_accounts_observed_total"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0)
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    let first = loop {
        if let Ok(r) = http.get(&metrics_url).send().await {
            let v = observed(&r.text().await.unwrap());
            if v > 0.0 {
                break v;
            }
        }
        assert!(
            Instant::now() < deadline,
            "metrics never showed an observation"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    tokio::time::sleep(Duration::from_millis(800)).await;
    let text = http
        .get(&metrics_url)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        observed(&text) > first,
        "accounts_observed must keep growing"
    );
    for name in [
        "presenced_sweep_duration_seconds",
        "presenced_api_calls_total",
        "presenced_outbox_backlog",
        "presenced_last_successful_sweep_timestamp_seconds",
        "presenced_ratelimit_calls_per_second",
    ] {
        assert!(text.contains(name), "{name} missing from /metrics");
    }
    let health = http
        .get(format!("http://127.0.0.1:{metrics_port}/healthz"))
        .send()
        .await
        .unwrap();
    assert!(health.status().is_success());
    let ready = http
        .get(format!("http://127.0.0.1:{metrics_port}/readyz"))
        .send()
        .await
        .unwrap();
    assert!(ready.status().is_success());

    // Change the file: drop user5..user9, add user42; then SIGHUP.
    let mut next = ids("user", 5);
    next.push("user42".into());
    std::fs::write(&watch_file, next.join("\n")).unwrap();
    signal(&child, "HUP");
    wait_for("user42 to be observed", Duration::from_secs(20), || {
        query_i64(
            &db,
            "SELECT COUNT(*) FROM presence_current WHERE user_id = 'user42' AND state IS NOT NULL",
        ) == 1
    });
    assert_eq!(
        query_i64(&db, "SELECT COUNT(*) FROM presence_current WHERE user_id IN ('user5','user6','user7','user8','user9') AND state IS NOT NULL"),
        0
    );
    signal(&child, "TERM");
    assert!(child.wait().unwrap().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_in_the_middle_of_a_sweep_loses_nothing() {
    // Slow answers so that the signal lands while batches are in flight.
    let sim = SimProcess::start(&[
        "--population",
        "2000",
        "--churn",
        "0",
        "--rate",
        "0",
        "--latency-ms",
        "150",
    ]);
    let dir = tempfile::tempdir().unwrap();
    let config = write_daemon_config(dir.path(), &sim.base_url(), "[sink]\nkind = \"stdout\"\n");
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("[im]\n", "[im]\nbatch_size = 50\nmax_in_flight = 4\n");
    std::fs::write(&config, text).unwrap();
    let db = dir.path().join("presence.db");
    presenced()
        .args(["users", "--db"])
        .arg(&db)
        .arg("import")
        .arg({
            let f = dir.path().join("ids.txt");
            std::fs::write(&f, ids("user", 2000).join("\n")).unwrap();
            f
        })
        .output()
        .unwrap();
    let child = presenced()
        .args(["run", "--config"])
        .arg(&config)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for(
        "the first batches to be written",
        Duration::from_secs(20),
        || query_i64(&db, "SELECT COUNT(*) FROM presence_history") > 0,
    );
    signal(&child, "TERM");
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let mut db_handle = Db::open(&db, Duration::from_secs(5)).unwrap();
    assert_eq!(
        db_handle.unfolded().unwrap(),
        0,
        "a clean stop leaves current state up to date"
    );
    check_invariants(&mut db_handle);
    let history = query_i64(&db, "SELECT COUNT(*) FROM presence_history");
    assert!(
        history < 2000,
        "the sweep must have been cut short, recorded {history}"
    );
    assert_eq!(
        query_i64(&db, "SELECT COUNT(*) FROM sweeps WHERE outcome = 'stopped'"),
        1
    );
    // Every recorded transition was printed before exit, and left the outbox.
    let printed = String::from_utf8_lossy(&out.stdout).lines().count() as i64;
    assert_eq!(printed, history);
    assert_eq!(query_i64(&db, "SELECT COUNT(*) FROM outbox"), 0);
}

#[test]
fn users_import_reports_bad_lines_and_keeps_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("ids.txt");
    std::fs::write(&file, "# team\nalice\nbob\n bad\nalice\n\ncarol\n").unwrap();
    let db = dir.path().join("p.db");
    let out = presenced()
        .args(["users", "--db"])
        .arg(&db)
        .arg("import")
        .arg(&file)
        .output()
        .unwrap();
    assert!(out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("ids.txt:4: account id has leading or trailing whitespace"),
        "{err}"
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("3 new, 1 duplicates folded, 1 invalid"),
        "{stdout}"
    );
    let out = presenced()
        .args(["users", "--db"])
        .arg(&db)
        .arg("remove")
        .arg("bob")
        .output()
        .unwrap();
    assert!(out.status.success());
    let out = presenced()
        .args(["users", "--db"])
        .arg(&db)
        .arg("list")
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "alice\ncarol\n");
    let out = presenced()
        .args(["users", "--db"])
        .arg(&db)
        .args(["add", "x\ty"])
        .output()
        .unwrap();
    assert!(!out.status.success());
}

/// A sweep that waits out IM's 70050 lock (a minute in production, 5 s here) is patient, not
/// hung: systemd's watchdog keeps getting its pings, at a WatchdogSec shorter than the wait.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sweep_waiting_out_70050_keeps_feeding_the_watchdog() {
    use common::pipeline::{add_watched, query_number};
    use std::os::unix::net::UnixDatagram;
    let sim = SimProcess::start(&["--population", "10", "--churn", "0", "--rate", "0"]);
    sim.control()
        .faults(&presenced::sim::Faults {
            script: ["70050".to_string()].into_iter().collect(),
            ..presenced::sim::Faults::default()
        })
        .await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_daemon_config(dir.path(), &sim.base_url(), "[sink]\nkind = \"none\"\n");
    let db = dir.path().join("presence.db");
    add_watched(
        &db,
        &(0..10).map(|i| format!("user{i}")).collect::<Vec<_>>(),
    );
    let socket_path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    socket
        .set_read_timeout(Some(std::time::Duration::from_millis(100)))
        .unwrap();
    let watchdog = std::time::Duration::from_millis(1_500);
    // systemd names the watched process in WATCHDOG_PID: a shell that execs the daemon keeps
    // its own pid, $$, for it.
    let mut daemon = Reaped(
        std::process::Command::new("sh")
            .arg("-c")
            .arg(format!(
                "WATCHDOG_PID=$$ exec '{}' run --config '{}'",
                env!("CARGO_BIN_EXE_presenced"),
                config.display()
            ))
            .env("NOTIFY_SOCKET", &socket_path)
            .env("WATCHDOG_USEC", watchdog.as_micros().to_string())
            .env("PRESENCED_IM__SIGNATURE_LOCK_WAIT_SECS", "5")
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let started = std::time::Instant::now();
    let mut pings = Vec::new();
    let mut buf = [0u8; 4096];
    while started.elapsed() < std::time::Duration::from_secs(9) {
        if let Ok(n) = socket.recv(&mut buf) {
            if String::from_utf8_lossy(&buf[..n]).contains("WATCHDOG=1") {
                pings.push(started.elapsed());
            }
        }
    }
    let swept = query_number(&db, "SELECT COUNT(*) FROM sweeps");
    signal(&daemon, "TERM");
    assert!(daemon.wait().unwrap().success());
    let mut log = String::new();
    std::io::Read::read_to_string(daemon.stderr.as_mut().unwrap(), &mut log).unwrap();
    assert!(swept >= 1, "the sweep completed after the lock: {log}");
    // With no sink nothing waits to be published: stats and the stop line say so, not a backlog.
    let out = presenced()
        .args(["stats", "--json", "--db"])
        .arg(&db)
        .output()
        .unwrap();
    let stats: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(stats["history_rows"].as_u64().unwrap() >= 10, "{stats}");
    assert_eq!(stats["outbox_backlog"], 0, "{stats}");
    assert!(stats["outbox_oldest_ms"].is_null(), "{stats}");
    assert!(log.contains("nothing is published"), "{log}");
    assert!(
        !log.contains("withholding"),
        "the watchdog was starved: {log}"
    );
    assert!(pings.len() >= 4, "pings: {pings:?}");
    let gaps: Vec<_> = pings.windows(2).map(|w| w[1] - w[0]).collect();
    assert!(
        gaps.iter().all(|g| *g < watchdog),
        "a gap between pings reached WatchdogSec: {gaps:?}"
    );
}

/// A base_url where every call is answered 404 (a wrong path, or a proxy's 401 or 403): each
/// sweep observes nothing, which is a failed sweep with its cause in the log, counted as such,
/// last_sweep_success never set, and /readyz failing after two in a row here.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sweeps_that_observe_nothing_are_failures_and_fail_readiness() {
    use common::pipeline::add_watched;
    let nowhere = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let nowhere_url = format!("http://{}/", nowhere.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(nowhere, axum::Router::new()).await.unwrap() });
    let dir = tempfile::tempdir().unwrap();
    let metrics_port = free_port();
    let config = write_daemon_config(dir.path(), &nowhere_url, "[sink]\nkind = \"none\"\n");
    let text = std::fs::read_to_string(&config).unwrap().replace(
        "metrics_listen = \"\"",
        &format!("metrics_listen = \"127.0.0.1:{metrics_port}\"\nunready_after_failed_sweeps = 2"),
    );
    std::fs::write(&config, text).unwrap();
    add_watched(
        &dir.path().join("presence.db"),
        &["alice".into(), "bob".into()],
    );
    let mut daemon = Reaped(
        Command::new(env!("CARGO_BIN_EXE_presenced"))
            .args(["run", "--config"])
            .arg(&config)
            .env("NO_COLOR", "1")
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let get = |path: &'static str| {
        let url = format!("http://127.0.0.1:{metrics_port}{path}");
        async move {
            let r = reqwest::get(url).await.ok()?;
            Some((r.status().as_u16(), r.text().await.ok()?))
        }
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some((503, _)) = get("/readyz").await {
            break;
        }
        assert!(Instant::now() < deadline, "/readyz never failed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (_, metrics) = get("/metrics").await.unwrap();
    signal(&daemon, "TERM");
    assert!(daemon.wait().unwrap().success());
    let mut log = String::new();
    std::io::Read::read_to_string(daemon.stderr.as_mut().unwrap(), &mut log).unwrap();
    assert!(
        log.contains("nothing was observed") && log.contains("HTTP status 404"),
        "the cause is logged: {log}"
    );
    let failed = metrics
        .lines()
        .find(|l| l.starts_with("presenced_sweeps_total{result=\"failed\"}"))
        .unwrap_or_else(|| panic!("no failed sweeps counted:\n{metrics}"));
    assert!(!failed.ends_with(" 0"), "{failed}");
    let last_success = metrics
        .lines()
        .find(|l| l.starts_with("presenced_last_successful_sweep_timestamp_seconds"))
        .unwrap_or_else(|| panic!("{metrics}"));
    assert!(
        last_success.ends_with(" 0.0") || last_success.ends_with(" 0"),
        "a sweep that observed nothing is no success: {last_success}"
    );
}

/// With sink.kind = "none" nothing ever publishes: an account that leaves the watch list leaves
/// no tombstone waiting forever.
#[test]
fn without_a_sink_tombstones_do_not_pile_up() {
    use common::pipeline::{add_watched, query_number};
    let sim = SimProcess::start(&["--population", "5", "--churn", "0", "--rate", "0"]);
    let dir = tempfile::tempdir().unwrap();
    let config = write_daemon_config(dir.path(), &sim.base_url(), "[sink]\nkind = \"none\"\n");
    let db = dir.path().join("presence.db");
    add_watched(&db, &["user1".into(), "user2".into()]);
    let mut daemon = Reaped(
        Command::new(env!("CARGO_BIN_EXE_presenced"))
            .args(["run", "--config"])
            .arg(&config)
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let wait = |what: &str, f: &dyn Fn() -> bool| {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !f() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    wait("two initial events", &|| {
        query_number(&db, "SELECT COUNT(*) FROM presence_history") == 2
    });
    let out = Command::new(env!("CARGO_BIN_EXE_presenced"))
        .args(["users", "--db"])
        .arg(&db)
        .args(["remove", "user2"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    signal(&daemon, "HUP");
    let sweeps = query_number(&db, "SELECT COUNT(*) FROM sweeps");
    wait("two more sweeps", &|| {
        query_number(&db, "SELECT COUNT(*) FROM sweeps") >= sweeps + 2
    });
    assert_eq!(
        query_number(&db, "SELECT COUNT(*) FROM state_tombstones"),
        0,
        "a tombstone waits for a sink that does not exist"
    );
    signal(&daemon, "TERM");
    assert!(daemon.wait().unwrap().success());
}

/// Logs written to a pipe (a file, the journal) carry no terminal escape codes.
#[test]
fn logs_to_a_pipe_have_no_escape_codes() {
    use common::pipeline::{add_watched, query_number};
    let sim = SimProcess::start(&["--population", "3", "--churn", "0", "--rate", "0"]);
    let dir = tempfile::tempdir().unwrap();
    let config = write_daemon_config(dir.path(), &sim.base_url(), "[sink]\nkind = \"none\"\n");
    let db = dir.path().join("presence.db");
    add_watched(&db, &["user1".into()]);
    let mut daemon = Reaped(
        Command::new(env!("CARGO_BIN_EXE_presenced"))
            .args(["run", "--config"])
            .arg(&config)
            .env_remove("NO_COLOR")
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while query_number(&db, "SELECT COUNT(*) FROM sweeps") < 1 {
        assert!(Instant::now() < deadline, "no sweep");
        std::thread::sleep(Duration::from_millis(100));
    }
    signal(&daemon, "TERM");
    assert!(daemon.wait().unwrap().success());
    let mut log = Vec::new();
    std::io::Read::read_to_end(daemon.stderr.as_mut().unwrap(), &mut log).unwrap();
    assert!(
        log.len() > 100,
        "the daemon logged: {}",
        String::from_utf8_lossy(&log)
    );
    assert!(
        !log.contains(&0x1b),
        "escape codes in a pipe: {}",
        String::from_utf8_lossy(&log)
    );
}

/// Under systemd (JOURNAL_STREAM names the daemon's stderr), every line starts with its syslog
/// priority and carries no timestamp of its own: `journalctl -p warning` filters on it.
#[test]
fn under_the_journal_lines_carry_syslog_priorities() {
    use common::pipeline::{add_watched, query_number};
    use std::os::unix::fs::MetadataExt;
    let sim = SimProcess::start(&["--population", "3", "--churn", "0", "--rate", "0"]);
    let dir = tempfile::tempdir().unwrap();
    let config = write_daemon_config(dir.path(), &sim.base_url(), "[sink]\nkind = \"none\"\n");
    let db = dir.path().join("presence.db");
    add_watched(&db, &["user1".into()]);
    let journal = dir.path().join("journal");
    let stream = std::fs::File::create(&journal).unwrap();
    let meta = stream.metadata().unwrap();
    let mut daemon = Reaped(
        Command::new(env!("CARGO_BIN_EXE_presenced"))
            .args(["run", "--config"])
            .arg(&config)
            .env("JOURNAL_STREAM", format!("{}:{}", meta.dev(), meta.ino()))
            .stderr(stream)
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while query_number(&db, "SELECT COUNT(*) FROM sweeps") < 2 {
        assert!(Instant::now() < deadline, "no sweeps");
        std::thread::sleep(Duration::from_millis(100));
    }
    signal(&daemon, "TERM");
    assert!(daemon.wait().unwrap().success());
    let text = std::fs::read_to_string(&journal).unwrap();
    assert!(text.lines().count() >= 3, "{text}");
    for line in text.lines() {
        assert!(
            ["<3>", "<4>", "<6>", "<7>"]
                .iter()
                .any(|p| line.starts_with(p)),
            "no priority prefix: {line:?}"
        );
        assert!(!line.contains("Z "), "a timestamp of its own: {line:?}");
        assert!(!line.contains('\u{1b}'), "escape codes: {line:?}");
    }
    assert!(
        text.lines()
            .any(|l| l.starts_with("<6>presenced::service") && l.contains("stopped cleanly")),
        "{text}"
    );
}
