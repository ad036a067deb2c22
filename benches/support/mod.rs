//! What the process-level benchmarks share: the simulator's key, child processes that die
//! with the benchmark, free ports, blocking HTTP, and reading the simulator's and the
//! daemon's counts.

pub mod changes;
pub mod rig;

use std::process::Child;
use std::time::{Duration, Instant};

/// The simulator's built-in secret key.
pub const SIM_KEY: &str = "presenced-simulator-secret-key";

/// A child process, killed when dropped.
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `presenced run --config CONFIG`, its stderr dropped.
pub fn daemon(config: &std::path::Path) -> Proc {
    Proc(
        std::process::Command::new(env!("CARGO_BIN_EXE_presenced"))
            .args(["run", "--config"])
            .arg(config)
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    )
}

/// The simulator as its own process, so the client's CPU time is the client's alone.
pub fn sim_process(population: usize, rate: f64, latency_ms: f64) -> (Proc, String) {
    let port = free_port();
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_presenced"))
        .args(["sim", "--listen", &format!("127.0.0.1:{port}")])
        .args([
            "--population",
            &population.to_string(),
            "--rate",
            &rate.to_string(),
        ])
        .args(["--latency-ms", &latency_ms.to_string(), "--churn", "0"])
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    wait_port(port);
    (Proc(child), format!("http://127.0.0.1:{port}/"))
}

/// A port free at the moment of asking.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Waits until something listens on `port`.
pub fn wait_port(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "port {port} never opened");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `user0`...
pub fn ids(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("user{i}")).collect()
}

/// Blocking HTTP for a benchmark that otherwise only waits.
pub struct Http {
    pub rt: tokio::runtime::Runtime,
    pub client: reqwest::Client,
}

impl Http {
    pub fn new() -> Self {
        Http {
            rt: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap(),
            client: reqwest::Client::new(),
        }
    }

    pub fn put(&self, url: &str, body: serde_json::Value) {
        let r = self
            .rt
            .block_on(self.client.put(url).json(&body).send())
            .unwrap();
        assert!(r.status().is_success(), "{url}: {}", r.status());
    }

    pub fn text(&self, url: &str) -> String {
        self.rt
            .block_on(async { self.client.get(url).send().await?.text().await })
            .unwrap()
    }
}

/// Sweeps the daemon's database records as completed.
pub fn completed_sweeps(db: &std::path::Path) -> i64 {
    rusqlite::Connection::open(db)
        .and_then(|c| {
            c.busy_timeout(Duration::from_secs(5))?;
            c.query_row(
                "SELECT COUNT(*) FROM sweeps WHERE outcome = 'completed'",
                [],
                |r| r.get(0),
            )
        })
        .unwrap_or(0)
}

/// The simulator's (calls, calls refused with 60011 for frequency).
pub fn sim_calls(http: &Http, control: &str) -> (u64, u64) {
    let v: serde_json::Value =
        serde_json::from_str(&http.text(&format!("{control}/stats"))).unwrap();
    let throttled = v["errors"]["60011"].as_u64().unwrap_or(0);
    (v["calls"].as_u64().unwrap(), throttled)
}

/// The sum of a metric's samples on the daemon's `/metrics`.
pub fn metric(http: &Http, port: u16, name: &str) -> f64 {
    let text = http.text(&format!("http://127.0.0.1:{port}/metrics"));
    text.lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}
