//! IM's State.StateChange callbacks end to end: the daemon binary with its callback endpoint,
//! the simulator process sending callbacks over HTTP, a real SQLite file.

mod common;

use common::*;
use presenced::model::State;
use presenced::store::Db;
use rand::Rng;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const TOKEN: &str = "presenced-test-token";

fn spawn_daemon(config: &std::path::Path, log: Option<&std::path::Path>) -> Child {
    let stderr = match log {
        Some(path) => Stdio::from(std::fs::File::create(path).unwrap()),
        None => Stdio::null(),
    };
    Command::new(env!("CARGO_BIN_EXE_presenced"))
        .args(["run", "--config"])
        .arg(config)
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .expect("presenced run starts")
}

async fn wait_for(what: &str, timeout: Duration, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// One test's parts: a simulator of `population` accounts (`user1`...), all watched, and a
/// daemon configuration with the callback endpoint on a free port and `callback` added to
/// `[callback]`.
struct Rig {
    sim: SimProcess,
    dir: tempfile::TempDir,
    port: u16,
    config: std::path::PathBuf,
    db: std::path::PathBuf,
}

impl Rig {
    /// `sim_args` are the simulator's flags after `--population`.
    fn new(population: usize, sim_args: &[&str], callback: &str) -> Rig {
        let population_flag = population.to_string();
        let mut args = vec!["--population", population_flag.as_str()];
        args.extend_from_slice(sim_args);
        let sim = SimProcess::start(&args);
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let watch = dir.path().join("watch.txt");
        std::fs::write(&watch, ids("user", population).join("\n")).unwrap();
        let config = write_daemon_config(
            dir.path(),
            &sim.base_url(),
            &format!(
                "[sink]\nkind = \"none\"\n[watch]\nfile = \"{}\"\n[callback]\nlisten = \"127.0.0.1:{port}\"\npath = \"/im/state\"\n{callback}",
                watch.display()
            ),
        );
        let db = dir.path().join("presence.db");
        Rig {
            sim,
            dir,
            port,
            config,
            db,
        }
    }

    /// Serves `/metrics` on a free port, which it returns.
    fn serve_metrics(&self) -> u16 {
        serve_metrics(&self.config)
    }
}

fn callback_url(port: u16) -> String {
    format!("http://127.0.0.1:{port}/im/state")
}

fn set_sweep(config: &std::path::Path, interval: f64, im_extra: &str) {
    let text = std::fs::read_to_string(config)
        .unwrap()
        .replace(
            "interval_secs = 0.3",
            &format!("interval_secs = {interval}"),
        )
        .replace("[im]\n", &format!("[im]\n{im_extra}"));
    std::fs::write(config, text).unwrap();
}

/// Waits until a sweep that started after `at` (ms) has completed.
async fn sweep_completed_after(db: &std::path::Path, at: i64) {
    let sql =
        format!("SELECT COUNT(*) FROM sweeps WHERE outcome = 'completed' AND started_at > {at}");
    wait_for(
        "a sweep after the churn stopped",
        Duration::from_secs(60),
        || query_i64(db, &sql) > 0,
    )
    .await;
}

async fn scrape(port: u16) -> String {
    reqwest::get(format!("http://127.0.0.1:{port}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

fn signed_url(port: u16, sdkappid: u64, time: i64, sign: Option<&str>, command: &str) -> String {
    let sign = sign
        .map(str::to_owned)
        .unwrap_or_else(|| presenced::callback::sign(TOKEN, &time.to_string()));
    format!(
        "{}?SdkAppid={sdkappid}&CallbackCommand={command}&contenttype=json&ClientIP=10.0.0.1&OptPlatform=IOS&Sign={sign}&RequestTime={time}",
        callback_url(port)
    )
}

fn state_change(user: &str) -> serde_json::Value {
    serde_json::json!({
        "CallbackCommand": "State.StateChange",
        "EventTime": presenced::model::now_millis(),
        "Info": {"Action": "Login", "To_Account": user, "Reason": "Register"}
    })
}

fn metric(text: &str, name: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && labels.iter().all(|x| l.contains(x)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callbacks_are_verified_counted_and_answered_as_im_expects() {
    let rig = Rig::new(
        20,
        &["--churn", "0", "--rate", "0"],
        &format!("token = \"{TOKEN}\"\nmax_body_bytes = 4096\n"),
    );
    let metrics_port = rig.serve_metrics();
    let (dir, port, config) = (&rig.dir, rig.port, &rig.config);
    let log = dir.path().join("daemon.log");
    let mut daemon = spawn_daemon(config, Some(&log));
    wait_listening(port);
    let app = presenced::sim::SimConfig::default().sdkappid;
    let now = presenced::model::now_millis() / 1000;
    let http = reqwest::Client::new();
    let post = |url: String, body: Vec<u8>| {
        let http = http.clone();
        async move {
            let r = http.post(url).body(body).send().await.unwrap();
            let status = r.status().as_u16();
            (status, r.text().await.unwrap())
        }
    };
    let body = |v: serde_json::Value| serde_json::to_vec(&v).unwrap();
    let command = "State.StateChange";

    let (status, text) = post(
        signed_url(port, app, now, None, command),
        body(state_change("user1")),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        text,
        r#"{"ActionStatus":"OK","ErrorCode":0,"ErrorInfo":""}"#
    );
    // A captured request replayed after the window, correctly signed for its old time.
    let old = now - 3_600;
    let (status, _) = post(
        signed_url(port, app, old, None, command),
        body(state_change("user1")),
    )
    .await;
    assert_eq!(status, 401, "a replay outside the skew window is refused");
    let bad = "0".repeat(64);
    let (status, _) = post(
        signed_url(port, app, now, Some(&bad), command),
        body(state_change("user1")),
    )
    .await;
    assert_eq!(status, 401, "a wrong signature is refused");
    let (status, _) = post(
        signed_url(port, app + 1, now, None, command),
        body(state_change("user1")),
    )
    .await;
    assert_eq!(status, 403, "another app's callback is refused");
    let mut huge = state_change("user1");
    huge["Padding"] = serde_json::Value::String("x".repeat(10_000));
    let (status, _) = post(signed_url(port, app, now, None, command), body(huge)).await;
    assert_eq!(status, 413, "an oversized body is refused");
    let (status, _) = post(
        signed_url(port, app, now, None, command),
        b"<html>not json".to_vec(),
    )
    .await;
    assert_eq!(status, 400, "a body that is not JSON is refused");
    let (status, _) = post(
        signed_url(port, app, now, None, command),
        body(serde_json::json!({"CallbackCommand": command, "Info": {"Action": "Login"}})),
    )
    .await;
    assert_eq!(status, 400, "a state change without an account is refused");
    let (status, text) = post(
        signed_url(port, app, now, None, "Group.CallbackAfterNewMemberJoin"),
        body(serde_json::json!({"CallbackCommand": "Group.CallbackAfterNewMemberJoin"})),
    )
    .await;
    assert_eq!((status, text.contains("\"OK\"")), (200, true));
    let (status, _) = post(
        signed_url(port, app, now, None, command),
        body(state_change("nobody-watches-me")),
    )
    .await;
    assert_eq!(status, 200, "an account off the watch list is answered OK");

    let metrics = scrape(metrics_port).await;
    for (outcome, n) in [
        ("accepted", 1.0),
        ("stale", 1.0),
        ("bad_signature", 1.0),
        ("wrong_app", 1.0),
        ("too_large", 1.0),
        ("bad_body", 1.0),
        ("no_account", 1.0),
        ("unknown_command", 1.0),
        ("not_watched", 1.0),
    ] {
        let label = format!("outcome=\"{outcome}\"");
        assert_eq!(
            metric(&metrics, "presenced_callbacks_total", &[&label]),
            n,
            "{outcome}:\n{metrics}"
        );
    }
    signal(&daemon, "TERM");
    assert!(daemon.wait().unwrap().success());
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(!logged.contains(TOKEN), "the token is never logged");
    assert!(logged.contains("bad_signature") && logged.contains("wrong_app"));
}

/// Sends `head` (request line and headers, ending in a blank line) and `body` on a new
/// connection, keeps it open, and returns the status line the daemon answered and how long
/// the answer took (`None` when it did not answer within 5 s).
fn raw_request(port: u16, head: &str, body: &[u8]) -> (Option<String>, Duration) {
    use std::io::{BufRead, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let started = std::time::Instant::now();
    stream.write_all(head.as_bytes()).unwrap();
    stream.write_all(body).unwrap();
    let mut line = String::new();
    let answered = std::io::BufReader::new(&stream)
        .read_line(&mut line)
        .is_ok()
        && !line.is_empty();
    (answered.then(|| line.trim().to_owned()), started.elapsed())
}

/// What reaches the endpoint before its body: a query that fails is refused without reading
/// the body, a declared length over the limit is refused at once, a body that stalls is
/// refused after IM's two seconds, and other paths and methods are counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_are_refused_before_their_bodies_when_they_can_be() {
    let rig = Rig::new(
        10,
        &["--churn", "0", "--rate", "0"],
        &format!("token = \"{TOKEN}\"\nmax_body_bytes = 4096\n"),
    );
    let metrics_port = rig.serve_metrics();
    let mut daemon = spawn_daemon(&rig.config, None);
    wait_listening(rig.port);
    let app = presenced::sim::SimConfig::default().sdkappid;
    let now = presenced::model::now_millis() / 1000;
    let target = |sign: Option<&str>| {
        signed_url(rig.port, app, now, sign, "State.StateChange")
            .trim_start_matches(&format!("http://127.0.0.1:{}", rig.port))
            .to_owned()
    };
    let head = |target: &str, length: u64| {
        format!("POST {target} HTTP/1.1\r\nHost: x\r\nContent-Length: {length}\r\n\r\n")
    };
    let bad = "0".repeat(64);
    // A wrong signature and a body that never completes: refused without waiting for it.
    let (status, took) = raw_request(rig.port, &head(&target(Some(&bad)), 1_000), b"{\"Info\"");
    assert!(
        status.as_deref().is_some_and(|s| s.contains(" 401")),
        "{status:?}"
    );
    assert!(took < Duration::from_secs(2), "answered in {took:?}");
    // A declared 10 MB body with none sent: refused at once.
    let (status, took) = raw_request(rig.port, &head(&target(None), 10_000_000), b"");
    assert!(
        status.as_deref().is_some_and(|s| s.contains(" 413")),
        "{status:?}"
    );
    assert!(took < Duration::from_secs(2), "answered in {took:?}");
    // A signed request whose body stalls: refused once IM's two seconds are over.
    let (status, took) = raw_request(rig.port, &head(&target(None), 1_000), b"{\"Info\"");
    assert!(
        status.as_deref().is_some_and(|s| s.contains(" 408")),
        "{status:?}"
    );
    assert!(took >= Duration::from_secs(2), "answered in {took:?}");
    let http = reqwest::Client::new();
    let other_path = http
        .post(format!("http://127.0.0.1:{}/admin", rig.port))
        .send()
        .await
        .unwrap();
    assert_eq!(other_path.status().as_u16(), 404);
    let wrong_method = http.get(callback_url(rig.port)).send().await.unwrap();
    assert_eq!(wrong_method.status().as_u16(), 405);

    let metrics = scrape(metrics_port).await;
    for outcome in [
        "bad_signature",
        "too_large",
        "slow_body",
        "not_found",
        "method_not_allowed",
    ] {
        let label = format!("outcome=\"{outcome}\"");
        assert_eq!(
            metric(&metrics, "presenced_callbacks_total", &[&label]),
            1.0,
            "{outcome}:\n{metrics}"
        );
    }
    signal(&daemon, "TERM");
    assert!(daemon.wait().unwrap().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_applies_a_token_rotated_in_its_file() {
    let tokens = tempfile::tempdir().unwrap();
    let token_file = tokens.path().join("callback-token");
    let (old, new) = ("token-before-rotation", "token-after-rotation");
    std::fs::write(&token_file, format!("{old}\n")).unwrap();
    let rig = Rig::new(
        5,
        &["--churn", "0", "--rate", "0"],
        &format!("token_file = \"{}\"\n", token_file.display()),
    );
    let (dir, port, config) = (&rig.dir, rig.port, &rig.config);
    let log = dir.path().join("daemon.log");
    let mut daemon = spawn_daemon(config, Some(&log));
    wait_listening(port);
    let app = presenced::sim::SimConfig::default().sdkappid;
    let http = reqwest::Client::new();
    let status_signed_with = |token: &'static str| {
        let http = http.clone();
        async move {
            let now = presenced::model::now_millis() / 1000;
            let sign = presenced::callback::sign(token, &now.to_string());
            let url = signed_url(port, app, now, Some(&sign), "State.StateChange");
            let body = serde_json::to_vec(&state_change("user1")).unwrap();
            http.post(url)
                .body(body)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    assert_eq!(status_signed_with(old).await, 200);
    assert_eq!(status_signed_with(new).await, 401);

    std::fs::write(&token_file, format!("{new}\n")).unwrap();
    signal(&daemon, "HUP");
    let deadline = Instant::now() + Duration::from_secs(30);
    while status_signed_with(new).await != 200 {
        assert!(
            Instant::now() < deadline,
            "the rotated token was never accepted"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        status_signed_with(old).await,
        401,
        "the old token is refused after the reload"
    );

    signal(&daemon, "TERM");
    assert!(daemon.wait().unwrap().success());
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(
        logged.contains("callback verification reloaded"),
        "{logged}"
    );
    assert!(
        !logged.contains(old) && !logged.contains(new),
        "no token is ever logged"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_callback_change_is_committed_long_before_the_next_sweep_and_repeats_add_nothing() {
    let rig = Rig::new(
        50,
        &["--churn", "0", "--rate", "0"],
        &format!("token = \"{TOKEN}\"\nmin_requery_interval_ms = 200\n"),
    );
    let (sim, port, config, db) = (&rig.sim, rig.port, &rig.config, &rig.db);
    // One sweep an hour: whatever arrives after the first is the callback's doing.
    set_sweep(config, 3_600.0, "");
    // The population starts in random states: user7 must be offline when first swept, or
    // bringing it online below would change nothing (a fresh-clone run failed that way).
    let control = sim.control();
    control.set("user7", &[]).await;
    let mut daemon = spawn_daemon(config, None);
    wait_for("the first sweep", Duration::from_secs(30), || {
        completed_sweeps(db) == 1
    })
    .await;
    control
        .callbacks(serde_json::json!({"url": callback_url(port), "token": TOKEN}))
        .await;

    control.set("user7", &[("iPhone", State::Online)]).await;
    control.set("user8", &[]).await;
    let history = |user: &str| {
        query_i64(
            db,
            &format!("SELECT COUNT(*) FROM presence_history WHERE user_id = '{user}'"),
        )
    };
    let before8 = history("user8");
    assert!(
        control
            .send_callback(
                "user7",
                serde_json::json!({"action": "Login", "reason": "Register", "kicked": ["PC"]}),
            )
            .await
    );
    wait_for("the hinted change", Duration::from_secs(20), || {
        query_i64(
            db,
            "SELECT COUNT(*) FROM presence_history WHERE user_id = 'user7' AND cause = 'callback'",
        ) == 1
    })
    .await;
    assert_eq!(completed_sweeps(db), 1, "found without a second sweep");
    let conn = rusqlite::Connection::open(db).unwrap();
    let (to, action, reason, kicked, event_time): (String, String, String, String, i64) = conn
        .query_row(
            "SELECT to_state, callback_action, callback_reason, kicked_devices, callback_event_time
             FROM presence_history WHERE user_id = 'user7' AND cause = 'callback'",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
        )
        .unwrap();
    assert_eq!(
        (to.as_str(), action.as_str(), reason.as_str()),
        ("Online", "Login", "Register")
    );
    assert_eq!(
        kicked, r#"["Windows"]"#,
        "kicked devices keep the callback's names"
    );
    assert!((presenced::model::now_millis() - event_time).abs() < 120_000);

    // Duplicates, out of order, and one that says the opposite of the truth: each re-queries,
    // none is a change.
    let settled = history("user7");
    let calls_before = control.stats().await.accounts_queried;
    for (action, reason, age) in [
        ("Login", "Register", 0),
        ("Login", "Register", 0),
        ("Logout", "Unregister", 5_000),
        ("Disconnect", "TimeOut", 60_000),
    ] {
        let at = presenced::model::now_millis() - age;
        assert!(
            control
                .send_callback(
                    "user7",
                    serde_json::json!({"action": action, "reason": reason, "event_time": at}),
                )
                .await
        );
    }
    wait_for("the re-queries", Duration::from_secs(20), || {
        let stats = futures_executor(control.stats());
        stats.accounts_queried > calls_before
    })
    .await;
    // user8 changed nothing and heard nothing.
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(
        history("user7"),
        settled,
        "repeated callbacks add no transition"
    );
    assert_eq!(history("user8"), before8);
    assert_eq!(no_op_transitions(db), 0);
    signal(&daemon, "TERM");
    assert!(daemon.wait().unwrap().success());
}

/// Runs a future to completion from a synchronous closure (the polling helpers take one).
fn futures_executor<F: std::future::Future>(f: F) -> F::Output {
    tokio::task::block_in_place(|| tokio::runtime::Handle::current().block_on(f))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_duplicated_and_reordered_callbacks_leave_the_history_true() {
    let rig = Rig::new(
        400,
        &["--churn", "0.02", "--rate", "0", "--latency-ms", "5"],
        "allow_unsigned = true\nmin_requery_interval_ms = 100\n",
    );
    let (sim, port, config, db) = (&rig.sim, rig.port, &rig.config, &rig.db);
    set_sweep(config, 2.0, "batch_size = 50\n");
    let mut daemon = spawn_daemon(config, None);
    wait_listening(port);
    let control = sim.control();
    control
        .callbacks(serde_json::json!({
            "url": callback_url(port),
            "drop_rate": 0.2,
            "duplicate_rate": 0.5,
            "max_delay_ms": 300.0,
            "silent_disconnect_rate": 0.5,
            "kick_login_only_rate": 0.5,
        }))
        .await;
    tokio::time::sleep(Duration::from_secs(6)).await;
    control.churn(0.0).await;
    let quiet_since = presenced::model::now_millis();
    // Callbacks still on their way land before a sweep that starts a second later.
    sweep_completed_after(db, quiet_since + 1_000).await;
    signal(&daemon, "TERM");
    assert!(daemon.wait().unwrap().success());

    assert_matches_truth(db, &control).await;
    assert_eq!(no_op_transitions(db), 0, "no transition without a change");
    let by_callback = query_i64(
        db,
        "SELECT COUNT(*) FROM presence_history WHERE cause = 'callback'",
    );
    let by_sweep = query_i64(
        db,
        "SELECT COUNT(*) FROM presence_history WHERE cause = 'sweep' AND kind = 'changed'",
    );
    let stats = control.stats().await;
    eprintln!(
        "changes found by callbacks {by_callback}, by sweeps {by_sweep}; callbacks sent {}, suppressed {}",
        stats.callbacks_sent, stats.callbacks_suppressed
    );
    assert!(by_callback > 0, "callbacks found changes");
    assert!(
        by_sweep > 0,
        "sweeps found what lost callbacks did not announce"
    );
    assert!(stats.callbacks_suppressed > 0 && stats.callbacks_sent > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_callbacks_are_caught_by_the_next_sweep() {
    let rig = Rig::new(
        100,
        &["--churn", "0", "--rate", "0"],
        "allow_unsigned = true\n",
    );
    let (sim, port, config, db) = (&rig.sim, rig.port, &rig.config, &rig.db);
    set_sweep(config, 1.0, "");
    let mut daemon = spawn_daemon(config, None);
    wait_for("the first sweep", Duration::from_secs(30), || {
        completed_sweeps(db) >= 1
    })
    .await;
    let control = sim.control();
    control
        .callbacks(serde_json::json!({"url": callback_url(port), "drop_rate": 1.0}))
        .await;
    control.churn(0.05).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    control.churn(0.0).await;
    let quiet_since = presenced::model::now_millis();
    sweep_completed_after(db, quiet_since).await;
    signal(&daemon, "TERM");
    assert!(daemon.wait().unwrap().success());
    let stats = control.stats().await;
    assert!(stats.callbacks_suppressed > 0);
    assert_eq!(stats.callbacks_sent, 0);
    assert_matches_truth(db, &control).await;
    assert_eq!(
        query_i64(
            db,
            "SELECT COUNT(*) FROM presence_history WHERE cause = 'callback'"
        ),
        0
    );
    assert!(
        query_i64(
            db,
            "SELECT COUNT(*) FROM presence_history WHERE kind = 'changed'"
        ) > 0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_callbacks_stays_within_the_configured_call_rate() {
    // The simulator refuses with 60011 past 20 calls a second; the daemon is set to 15.
    let rig = Rig::new(
        3000,
        &["--churn", "0", "--rate", "20"],
        "allow_unsigned = true\ncoalesce_ms = 0\nmin_requery_interval_ms = 0\nqueue_capacity = 1000\n",
    );
    set_sweep(
        &rig.config,
        3_600.0,
        "calls_per_second = 15\nbatch_size = 20\n",
    );
    let metrics_port = rig.serve_metrics();
    let (sim, port, config, db) = (&rig.sim, rig.port, &rig.config, &rig.db);
    let mut daemon = spawn_daemon(config, None);
    wait_listening(port);
    let app = presenced::sim::SimConfig::default().sdkappid;
    // 3,000 callbacks for distinct accounts as fast as they go, while the first sweep runs.
    let http = reqwest::Client::new();
    let url = format!(
        "{}?SdkAppid={app}&CallbackCommand=State.StateChange&contenttype=json",
        callback_url(port)
    );
    let started = Instant::now();
    let calls_before = sim.control().stats().await.calls;
    let mut accepted = 0;
    for i in (0..3000).rev() {
        let r = http
            .post(&url)
            .json(&state_change(&format!("user{i}")))
            .send()
            .await
            .unwrap();
        accepted += usize::from(r.status().is_success());
    }
    assert_eq!(accepted, 3000, "every callback is answered OK");
    tokio::time::sleep(Duration::from_secs(4)).await;
    let elapsed = started.elapsed().as_secs_f64();
    let stats = sim.control().stats().await;
    let calls = stats.calls - calls_before;
    let metrics = scrape(metrics_port).await;
    let hinted = metric(&metrics, "presenced_hinted_calls_total", &[]);
    let overflow = metric(
        &metrics,
        "presenced_callbacks_total",
        &["outcome=\"overflow\""],
    );
    eprintln!(
        "{calls} calls in {elapsed:.1} s ({:.1}/s), {hinted} hinted, {overflow} callbacks over capacity",
        calls as f64 / elapsed
    );
    assert_eq!(
        stats.errors.get("60011").copied().unwrap_or(0),
        0,
        "IM never said the frequency was exceeded"
    );
    // The limiter's pace plus its initial burst: never the flood's.
    assert!(
        (calls as f64) <= 15.0 * elapsed + 10.0,
        "{calls} calls in {elapsed:.1} s exceed 15 a second"
    );
    assert!(hinted > 0.0, "hinted calls went out during the sweep");
    assert!(overflow > 0.0, "a full queue is counted");
    signal(&daemon, "TERM");
    assert!(daemon.wait().unwrap().success());
    let mut db = Db::open(db, Duration::from_secs(5)).unwrap();
    check_invariants(&mut db);
}

/// Issue 20, item 2: a flood of hints that never stops. Hinted calls get their share of the
/// call rate (25%) and the sweep keeps the rest: it completes while the flood goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sweep_completes_under_a_flood_of_hints_that_take_only_their_share() {
    let rig = Rig::new(
        400,
        &["--churn", "0", "--rate", "0"],
        "allow_unsigned = true\ncoalesce_ms = 0\nmin_requery_interval_ms = 0\n",
    );
    set_sweep(
        &rig.config,
        3_600.0,
        "calls_per_second = 10\nbatch_size = 10\n",
    );
    let metrics_port = rig.serve_metrics();
    let (sim, port, config, db) = (&rig.sim, rig.port, &rig.config, &rig.db);
    let mut daemon = Reaped(spawn_daemon(config, None));
    wait_listening(port);
    let app = presenced::sim::SimConfig::default().sdkappid;
    let url = format!(
        "{}?SdkAppid={app}&CallbackCommand=State.StateChange&contenttype=json",
        callback_url(port)
    );
    let calls_before = sim.control().stats().await.calls;
    let flooding = tokio_util::sync::CancellationToken::new();
    let flood = tokio::spawn({
        let flooding = flooding.clone();
        async move {
            let http = reqwest::Client::new();
            let mut sent = 0u64;
            while !flooding.is_cancelled() {
                let user = format!("user{}", rand::rng().random_range(0..400));
                let _ = http.post(&url).json(&state_change(&user)).send().await;
                sent += 1;
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            sent
        }
    });
    // 40 sweep calls at 7.5 a second take about 5 s; the flood alone could fill every call.
    wait_for("the first sweep", Duration::from_secs(60), || {
        completed_sweeps(db) > 0
    })
    .await;
    let metrics = scrape(metrics_port).await;
    let calls = (sim.control().stats().await.calls - calls_before) as f64;
    flooding.cancel();
    let sent = flood.await.unwrap();
    let hinted = metric(&metrics, "presenced_hinted_calls_total", &[]);
    eprintln!("{sent} callbacks; {calls} calls, {hinted} of them hinted");
    assert!(sent > 100, "the flood went on through the sweep");
    assert!(hinted > 0.0, "hinted calls went out during the sweep");
    assert!(
        hinted <= 0.3 * calls + 2.0,
        "{hinted} of {calls} calls were hinted: more than their share"
    );
    signal(&daemon, "TERM");
    assert!(daemon.wait().unwrap().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_hinted_queries_loses_nothing() {
    let rig = Rig::new(
        2000,
        &["--churn", "0.02", "--rate", "0", "--latency-ms", "3"],
        "allow_unsigned = true\nmin_requery_interval_ms = 50\n",
    );
    let (sim, port, config, db) = (&rig.sim, rig.port, &rig.config, &rig.db);
    // Sweeps far apart: between them, every change is a hinted re-query.
    set_sweep(config, 4.0, "batch_size = 100\nmax_in_flight = 8\n");
    let control = sim.control();
    control
        .callbacks(serde_json::json!({"url": callback_url(port), "duplicate_rate": 0.3}))
        .await;
    let mut rng = rand::rng();
    for round in 0..8 {
        let mut child = spawn_daemon(config, None);
        let wait = rng.random_range(300..2_500);
        tokio::time::sleep(Duration::from_millis(wait)).await;
        child.kill().unwrap();
        child.wait().unwrap();
        let mut opened = Db::open(db, Duration::from_secs(5)).unwrap();
        check_invariants(&mut opened);
        eprintln!(
            "round {round}: killed after {wait} ms; {} changes found by callbacks so far",
            query_i64(
                db,
                "SELECT COUNT(*) FROM presence_history WHERE cause = 'callback'"
            )
        );
    }
    assert!(
        query_i64(
            db,
            "SELECT COUNT(*) FROM presence_history WHERE cause = 'callback'"
        ) > 0,
        "kills landed while hinted queries were committing"
    );
    control.churn(0.0).await;
    let quiet_since = presenced::model::now_millis();
    let mut daemon = spawn_daemon(config, None);
    sweep_completed_after(db, quiet_since).await;
    signal(&daemon, "TERM");
    assert!(daemon.wait().unwrap().success());
    assert_matches_truth(db, &control).await;
    assert_eq!(no_op_transitions(db), 0);
}

#[test]
fn events_say_how_a_change_was_found_and_match_the_schema() {
    use presenced::model::{CallbackHint, Cause, TransitionRecord};
    use presenced::publish::event::EventV1;
    let schema: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string("schemas/presenced.transition.v1.json").unwrap(),
    )
    .unwrap();
    let validator = jsonschema::validator_for(&schema).unwrap();
    let swept = TransitionRecord::builder("u1", 1, State::Online)
        .observed_at(1_764_300_000_000)
        .build();
    let hinted = TransitionRecord::builder("u1", 2, State::Offline)
        .from(Some(State::Online), 1_764_300_000_000)
        .observed_at(1_764_300_000_900)
        .cause(Cause::Callback(Box::new(CallbackHint {
            event_time: 1_764_300_000_500,
            action: "Disconnect".into(),
            reason: Some("TimeOut".into()),
            kicked_devices: vec![],
        })))
        .build();
    let swept: serde_json::Value =
        serde_json::from_slice(&EventV1::new(1400000000, &swept).to_json()).unwrap();
    let hinted: serde_json::Value =
        serde_json::from_slice(&EventV1::new(1400000000, &hinted).to_json()).unwrap();
    for v in [&swept, &hinted] {
        if let Err(e) = validator.validate(v) {
            panic!("{e}: {v}");
        }
    }
    assert_eq!(swept["cause"], "sweep");
    assert!(swept["callback"].is_null());
    assert_eq!(hinted["cause"], "callback");
    assert_eq!(
        hinted["callback"],
        serde_json::json!({"event_time": "2025-11-28T03:20:00.500Z", "action": "Disconnect",
                           "reason": "TimeOut", "kicked_devices": []})
    );
    // The schema holds the two together.
    let mut broken = hinted.clone();
    broken["callback"] = serde_json::Value::Null;
    assert!(validator.validate(&broken).is_err());
}
