//! The detection benchmarks' set-up: the simulator process logging its changes, and the
//! daemon binary watching every simulated account, its `/metrics` served.

use super::{completed_sweeps, daemon, free_port, wait_port, Proc, SIM_KEY};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The simulator and, once started, the daemon; their files in `dir`.
pub struct Rig {
    pub dir: tempfile::TempDir,
    pub sim: Proc,
    pub sim_port: u16,
    /// Where the daemon's callback endpoint listens, when configured.
    pub cb_port: u16,
    pub metrics_port: u16,
    pub db: std::path::PathBuf,
    pub change_log: std::path::PathBuf,
    pub daemon: Option<Proc>,
}

impl Rig {
    /// A simulator of `accounts` at 200 calls/s with 20 ms latency, churn off, logging its
    /// changes; `sim_extra(callback port)` adds to its configuration (`[callback]`,
    /// `[activity]`).
    pub fn new(accounts: usize, sim_extra: impl FnOnce(u16) -> String) -> Rig {
        let dir = tempfile::tempdir().unwrap();
        let (sim_port, cb_port, metrics_port) = (free_port(), free_port(), free_port());
        let change_log = dir.path().join("changes.jsonl");
        let sim_config = dir.path().join("sim.toml");
        std::fs::write(
            &sim_config,
            format!(
                "population = {accounts}\nchurn_per_second = 0.0\ncalls_per_second = 200.0\nchange_log = \"{}\"\n[faults]\nlatency_ms = 20.0\n{}",
                change_log.display(),
                sim_extra(cb_port)
            ),
        )
        .unwrap();
        let sim = Proc(
            Command::new(env!("CARGO_BIN_EXE_presenced"))
                .args(["sim", "--listen", &format!("127.0.0.1:{sim_port}")])
                .arg("--config")
                .arg(&sim_config)
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        );
        wait_port(sim_port);
        let db = dir.path().join("presence.db");
        Rig {
            dir,
            sim,
            sim_port,
            cb_port,
            metrics_port,
            db,
            change_log,
            daemon: None,
        }
    }

    /// The simulator's control API.
    pub fn control(&self) -> String {
        format!("http://127.0.0.1:{}/control", self.sim_port)
    }

    /// Starts the daemon watching all `accounts`, with `sweep` in `[sweep]` and `extra` after
    /// the rest, and waits for its first sweep (which records every account) and `settle` (the
    /// daemon folds those rows and walks them for retention once per database: the measures
    /// are of the steady state after it).
    pub fn start_daemon(&mut self, accounts: usize, sweep: &str, extra: &str, settle: Duration) {
        let ids: Vec<String> = (0..accounts).map(|i| format!("user{i}")).collect();
        let watch = self.dir.path().join("watch.txt");
        std::fs::write(&watch, ids.join("\n")).unwrap();
        let config = self.dir.path().join("presenced.toml");
        std::fs::write(
            &config,
            format!(
                "[im]\nsdkappid = 1400000000\nsecret_key = \"{SIM_KEY}\"\nbase_url = \"http://127.0.0.1:{}/\"\n[watch]\nfile = \"{}\"\n[store]\npath = \"{}\"\n[sweep]\njitter_secs = 0.0\n{sweep}\n[sink]\nkind = \"none\"\n[service]\nmetrics_listen = \"127.0.0.1:{}\"\n{extra}",
                self.sim_port,
                watch.display(),
                self.db.display(),
                self.metrics_port
            ),
        )
        .unwrap();
        self.daemon = Some(daemon(&config));
        let deadline = Instant::now() + Duration::from_secs(300);
        while completed_sweeps(&self.db) < 1 {
            assert!(Instant::now() < deadline, "the first sweep never completed");
            std::thread::sleep(Duration::from_millis(200));
        }
        std::thread::sleep(settle);
    }
}
