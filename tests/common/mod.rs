//! Shared helpers for the integration tests: the simulator in-process over HTTP, clients and
//! configurations pointed at it, and its control API.
#![allow(dead_code)]

use presenced::config::ImConfig;
use presenced::im::{ClientSettings, ImClient};
use presenced::metrics::Metrics;
use presenced::model::{PlatformStatus, State};
use presenced::sim::{self, Faults, SimConfig, SimHandle};
use std::sync::Arc;

pub async fn start_sim(config: SimConfig) -> SimHandle {
    sim::start(config, "127.0.0.1:0".parse().unwrap())
        .await
        .expect("simulator starts")
}

/// A small, quiet population with no rate limit unless a test asks for one.
pub fn quiet_sim(population: usize) -> SimConfig {
    SimConfig {
        population,
        churn_per_second: 0.0,
        online_share: 0.5,
        calls_per_second: 0.0,
        ..SimConfig::default()
    }
}

pub fn im_config(sim: &SimHandle, simcfg: &SimConfig) -> ImConfig {
    ImConfig {
        sdkappid: simcfg.sdkappid,
        identifier: simcfg.admin.clone(),
        secret_key: simcfg.secret_key.clone(),
        base_url: Some(sim.base_url()),
        backoff_initial_ms: 5,
        backoff_max_ms: 50,
        ..ImConfig::default()
    }
}

pub fn client(im: &ImConfig) -> ImClient {
    ImClient::new(
        ClientSettings::from_config(im).unwrap(),
        Arc::new(Metrics::new()),
    )
    .unwrap()
}

pub fn ids(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}{i}")).collect()
}

pub struct Control {
    base: String,
    http: reqwest::Client,
}

impl Control {
    pub fn new(sim: &SimHandle) -> Self {
        Control {
            base: sim.base_url(),
            http: reqwest::Client::new(),
        }
    }

    pub async fn set(&self, id: &str, platforms: &[(&str, State)]) {
        let platforms: Vec<PlatformStatus> = platforms
            .iter()
            .map(|(p, s)| PlatformStatus {
                platform: p.to_string(),
                status: *s,
            })
            .collect();
        let r = self
            .http
            .put(format!("{}control/accounts/{id}", self.base))
            .json(&serde_json::json!({ "platforms": platforms }))
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "{}", r.status());
    }

    pub async fn delete(&self, id: &str) {
        self.http
            .delete(format!("{}control/accounts/{id}", self.base))
            .send()
            .await
            .unwrap();
    }

    pub async fn truth(&self) -> Vec<sim::population::AccountView> {
        let v: serde_json::Value = self
            .http
            .get(format!("{}control/accounts", self.base))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        serde_json::from_value(v["accounts"].clone()).unwrap()
    }

    pub async fn faults(&self, faults: &Faults) {
        let r = self
            .http
            .put(format!("{}control/faults", self.base))
            .json(faults)
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success());
    }

    pub async fn script(&self, steps: &[&str]) {
        self.faults(&Faults {
            script: steps.iter().map(|s| s.to_string()).collect(),
            ..Faults::default()
        })
        .await;
    }

    pub async fn stats(&self) -> sim::SimStats {
        self.http
            .get(format!("{}control/stats", self.base))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }
}

impl Control {
    /// Where and how the simulator sends State.StateChange callbacks (SimCallbacks fields,
    /// the token included).
    pub async fn callbacks(&self, settings: serde_json::Value) {
        let r = self
            .http
            .put(format!("{}control/callbacks", self.base))
            .json(&settings)
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "{}", r.status());
    }

    /// Posts one callback for `id` now (fields: action, reason, kicked, event_time); whether
    /// the receiver answered 200.
    pub async fn send_callback(&self, id: &str, body: serde_json::Value) -> bool {
        let v: serde_json::Value = self
            .http
            .post(format!("{}control/callbacks/{id}", self.base))
            .json(&body)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        v["answered_ok"].as_bool().unwrap()
    }

    pub async fn churn(&self, per_second: f64) {
        let r = self
            .http
            .put(format!("{}control/churn", self.base))
            .json(&serde_json::json!({ "churn_per_second": per_second }))
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success());
    }
}

/// A port that was free a moment ago, for processes that must be told their port up front.
/// It is drawn below the kernel's ephemeral range, from which port 0 and every outgoing
/// connection take theirs: a port handed out that way can be taken by a client's connection
/// before the process it was meant for binds it (a daemon then fails to start). No port is handed
/// out twice in one test binary.
pub fn free_port() -> u16 {
    use rand::Rng;
    static HANDED_OUT: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let ephemeral_start = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse::<u16>().ok())
        .filter(|start| *start > 20_000)
        .unwrap_or(32_768);
    let mut handed_out = HANDED_OUT.lock().unwrap();
    let mut rng = rand::rng();
    loop {
        let port = rng.random_range(10_000..ephemeral_start);
        if !handed_out.contains(&port) && std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            handed_out.push(port);
            return port;
        }
    }
}

/// The `presenced sim` binary as its own process, ready when its port answers.
pub struct SimProcess {
    pub child: std::process::Child,
    pub port: u16,
}

impl SimProcess {
    pub fn start(extra: &[&str]) -> SimProcess {
        let port = free_port();
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_presenced"))
            .args(["sim", "--listen", &format!("127.0.0.1:{port}")])
            .args(extra)
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("presenced sim starts");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "simulator did not start listening"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        SimProcess { child, port }
    }

    pub fn base_url(&self) -> String {
        format!("http://127.0.0.1:{}/", self.port)
    }

    pub fn control(&self) -> Control {
        Control {
            base: self.base_url(),
            http: reqwest::Client::new(),
        }
    }
}

impl Drop for SimProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Writes a daemon configuration file for the simulator process with the simulator's defaults.
pub fn write_daemon_config(
    dir: &std::path::Path,
    sim_url: &str,
    extra: &str,
) -> std::path::PathBuf {
    let d = SimConfig::default();
    let text = format!(
        r#"[im]
sdkappid = {sdkappid}
identifier = "{admin}"
secret_key = "{key}"
base_url = "{sim_url}"
backoff_initial_ms = 10
backoff_max_ms = 100

[store]
path = "{db}"

[sweep]
interval_secs = 0.3
jitter_secs = 0.0

[service]
metrics_listen = ""
log_filter = "info"
{extra}
"#,
        sdkappid = d.sdkappid,
        admin = d.admin,
        key = d.secret_key.expose(),
        db = dir.join("presence.db").display(),
    );
    let path = dir.join("presenced.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// Every invariant the store must keep whatever moment the process died at: checked as the
/// process left the database, then again after the fold that the next start runs.
pub fn check_invariants(db: &mut presenced::store::Db) {
    check_as_left(db.connection());
    db.fold_all().unwrap();
    check_as_left(db.connection());
    assert_eq!(db.unfolded().unwrap(), 0);
}

fn check_as_left(c: &rusqlite::Connection) {
    let one = |sql: &str| -> i64 { c.query_row(sql, [], |r| r.get(0)).unwrap() };
    let integrity: String = c
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(integrity, "ok");
    assert_eq!(
        one("SELECT COUNT(*) FROM pragma_foreign_key_check"),
        0,
        "history rows without their sweep"
    );
    assert_eq!(
        one("SELECT COUNT(*) FROM store_marks
             WHERE history_id > (SELECT COALESCE(MAX(history_id), 0) FROM presence_history)"),
        0,
        "the publish and fold marks never run ahead of the history"
    );
    assert_eq!(
        one("SELECT COUNT(*) FROM presence_history h
             LEFT JOIN presence_history_by_account a USING (history_id)
             WHERE (h.history_id <= (SELECT history_id FROM store_marks WHERE mark = 'folded'))
                   != (a.history_id IS NOT NULL)
                OR a.user_id != h.user_id OR a.seq != h.seq"),
        0,
        "the per-account index holds exactly the folded history rows"
    );
    assert_eq!(
        one("SELECT COUNT(*) FROM (SELECT event_id FROM presence_history GROUP BY 1 HAVING COUNT(*) > 1)"),
        0,
        "event ids are unique"
    );
    assert_eq!(
        one("SELECT COUNT(*) FROM (SELECT user_id FROM presence_history GROUP BY user_id HAVING MIN(seq) != 1 OR MAX(seq) != COUNT(*))"),
        0,
        "per-account sequence numbers must run 1, 2, 3, ... without gaps or duplicates"
    );
    assert_eq!(
        one("SELECT COUNT(*) FROM (SELECT kind, from_state, from_platforms,
                LAG(to_state) OVER w AS prev_state, LAG(to_platforms) OVER w AS prev_platforms
             FROM presence_history WINDOW w AS (PARTITION BY user_id ORDER BY seq))
             WHERE kind = 'changed' AND (from_state IS NOT prev_state OR from_platforms IS NOT prev_platforms)"),
        0,
        "every change must start where the previous one ended: no transition lost"
    );
    assert_eq!(
        one("SELECT COUNT(*) FROM presence_current p
             LEFT JOIN (SELECT user_id, MAX(seq) AS seq FROM presence_history GROUP BY user_id) m USING (user_id)
             LEFT JOIN presence_history h ON h.user_id = p.user_id AND h.seq = m.seq
             WHERE p.seq != COALESCE(m.seq, 0)
                OR (p.state IS NOT NULL AND (p.state != h.to_state OR p.platforms != h.to_platforms))"),
        0,
        "current state must agree with the last history row"
    );
}

/// Sends a signal by name (TERM, HUP, ...) to a child process.
pub fn signal(child: &std::process::Child, name: &str) {
    let status = std::process::Command::new("kill")
        .arg(format!("-{name}"))
        .arg(child.id().to_string())
        .status()
        .unwrap();
    assert!(status.success());
}

pub mod cut_proxy;
pub mod kafka;
pub mod pipeline;

/// A child process that is killed when the test lets go of it, passed or failed: a panicking
/// test must not leave a daemon running (cargo would wait for the output pipes it holds).
pub struct Reaped(pub std::process::Child);

impl std::ops::Deref for Reaped {
    type Target = std::process::Child;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl std::ops::DerefMut for Reaped {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.0
    }
}

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The database matches the simulator's ground truth, account for account.
pub async fn assert_matches_truth(db_path: &std::path::Path, control: &Control) {
    let mut db = presenced::store::Db::open(db_path, std::time::Duration::from_secs(5)).unwrap();
    check_invariants(&mut db);
    let truth = control.truth().await;
    let current = db.load_current().unwrap();
    let by_id: std::collections::HashMap<_, _> =
        current.iter().map(|r| (r.user_id.as_str(), r)).collect();
    let mut mismatched = Vec::new();
    for account in &truth {
        let row = by_id.get(account.user_id.as_str());
        let mut platforms = account.platforms.clone();
        platforms.sort_by(|a, b| a.platform.cmp(&b.platform));
        if row.is_none_or(|r| r.state != Some(account.status) || r.platforms != platforms) {
            mismatched.push(account.user_id.clone());
        }
    }
    assert!(
        mismatched.is_empty(),
        "SQLite must match the simulator: {} accounts differ, e.g. {:?}",
        mismatched.len(),
        &mismatched[..mismatched.len().min(5)]
    );
}

/// Waits until something listens on `port` (a daemon or proxy the test started).
pub fn wait_listening(port: u16) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "port {port} never answered"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// Makes the daemon configuration at `config` serve `/metrics` on a free port, which it returns.
pub fn serve_metrics(config: &std::path::Path) -> u16 {
    let port = free_port();
    let text = std::fs::read_to_string(config).unwrap().replace(
        "metrics_listen = \"\"",
        &format!("metrics_listen = \"127.0.0.1:{port}\""),
    );
    std::fs::write(config, text).unwrap();
    port
}

/// One number from the database at `db` (opened plainly, beside a running daemon), or -1 while
/// it cannot be read.
/// Sweeps recorded as completed.
pub fn completed_sweeps(db: &std::path::Path) -> i64 {
    query_i64(
        db,
        "SELECT COUNT(*) FROM sweeps WHERE outcome = 'completed'",
    )
}

/// A transition that changes nothing (same state, same platforms) is an extra one.
pub fn no_op_transitions(db: &std::path::Path) -> i64 {
    query_i64(
        db,
        "SELECT COUNT(*) FROM presence_history
         WHERE from_state IS to_state AND from_platforms IS to_platforms",
    )
}

pub fn query_i64(db: &std::path::Path, sql: &str) -> i64 {
    let Ok(conn) = rusqlite::Connection::open(db) else {
        return -1;
    };
    conn.busy_timeout(std::time::Duration::from_secs(5))
        .unwrap();
    conn.query_row(sql, [], |r| r.get(0)).unwrap_or(-1)
}
