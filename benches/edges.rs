//! How the daemon binary spends IM's call budget when someone else spends part of it or when
//! callbacks flood in, against the simulator process.
//!
//! cargo bench --bench edges -- SCENARIO   (pacing, hint-flood); scripts/bench.sh runs them.
//!
//! - pacing: the simulator allows 100 calls/s, the daemon is configured at 200/s (another
//!   service of the same app using half the budget looks the same). Per sweep: the share of
//!   calls refused with 60011, and the accepted calls per second over the allowed 100.
//! - hint-flood: the daemon at 20 calls/s sweeps 10,000 accounts, once quietly and once under a
//!   flood of validly signed callbacks for its accounts; the flooded sweep's time over the quiet
//!   one's.

#[allow(dead_code)]
mod support;

use std::time::{Duration, Instant};
use support::{
    daemon, free_port, ids, metric, sim_calls, sim_process, wait_port, Http, Proc, SIM_KEY,
};

const TOKEN: &str = "bench-callback-token-0123456789";

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    if !std::env::args().any(|a| a == "--bench") {
        return; // `cargo test --benches` builds this; only `cargo bench` runs it
    }
    let all = ["pacing", "hint-flood"];
    let chosen: Vec<&str> = match args.is_empty() {
        true => all.to_vec(),
        false => args.iter().map(String::as_str).collect(),
    };
    for scenario in chosen {
        println!("\n## {scenario}");
        match scenario {
            "pacing" => pacing(),
            "hint-flood" => hint_flood(),
            other => panic!("unknown scenario {other}; expected one of {all:?}"),
        }
    }
}

/// A simulator and a daemon watching `population` of its accounts.
struct Rig {
    _dir: tempfile::TempDir,
    _sim: Proc,
    _daemon: Proc,
    db: std::path::PathBuf,
    control: String,
    callback_port: u16,
    metrics_port: u16,
}

impl Rig {
    /// `im` and `extra` are added to the daemon's `[im]` and after its other sections.
    fn start(population: usize, sim_rate: f64, im: &str, interval_secs: f64, extra: &str) -> Rig {
        let dir = tempfile::tempdir().unwrap();
        let (callback_port, metrics_port) = (free_port(), free_port());
        let (sim, sim_url) = sim_process(population, sim_rate, 10.0);
        let watch = dir.path().join("watch.txt");
        std::fs::write(&watch, ids(population).join("\n")).unwrap();
        let db = dir.path().join("presence.db");
        let config = dir.path().join("presenced.toml");
        std::fs::write(
            &config,
            format!(
                "[im]\nsdkappid = 1400000000\nsecret_key = \"{SIM_KEY}\"\nbase_url = \"{sim_url}\"\n{im}\n[watch]\nfile = \"{}\"\n[store]\npath = \"{}\"\n[sweep]\ninterval_secs = {interval_secs}\njitter_secs = 0.0\n[sink]\nkind = \"none\"\n[service]\nmetrics_listen = \"127.0.0.1:{metrics_port}\"\n{}",
                watch.display(),
                db.display(),
                extra.replace("CALLBACK_PORT", &callback_port.to_string()),
            ),
        )
        .unwrap();
        let daemon = daemon(&config);
        wait_port(metrics_port);
        Rig {
            _dir: dir,
            _sim: sim,
            _daemon: daemon,
            db,
            control: format!("{sim_url}control"),
            callback_port,
            metrics_port,
        }
    }

    /// Completed sweeps' (started_at, finished_at), ms, oldest first.
    fn sweeps(&self) -> Vec<(i64, i64)> {
        let Ok(conn) = rusqlite::Connection::open(&self.db) else {
            return Vec::new();
        };
        let _ = conn.busy_timeout(Duration::from_secs(5));
        let Ok(mut stmt) = conn.prepare(
            "SELECT started_at, finished_at FROM sweeps WHERE outcome = 'completed' ORDER BY sweep_id",
        ) else {
            return Vec::new();
        };
        stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .map(Result::unwrap)
            .collect()
    }

    /// Waits until `n` sweeps have completed, sampling the simulator's counts every 100 ms
    /// meanwhile as (unix ms, calls, refused).
    fn sample_until(&self, http: &Http, n: usize, samples: &mut Vec<(i64, u64, u64)>) {
        let deadline = Instant::now() + Duration::from_secs(600);
        while self.sweeps().len() < n {
            assert!(Instant::now() < deadline, "{n} sweeps never completed");
            let (calls, refused) = sim_calls(http, &self.control);
            samples.push((presenced::model::now_millis(), calls, refused));
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// The simulator's counts over [from, to] (ms), from the samples nearest inside it.
fn counts_within(samples: &[(i64, u64, u64)], from: i64, to: i64) -> (u64, u64) {
    let first = samples.iter().find(|s| s.0 >= from).expect("a sample");
    let last = samples.iter().rev().find(|s| s.0 <= to).expect("a sample");
    (last.1 - first.1, last.2 - first.2)
}

fn pacing() {
    let (population, batch, sweeps) = (20_000, 10, 4);
    let rig = Rig::start(
        population,
        100.0,
        &format!("calls_per_second = 200.0\nbatch_size = {batch}"),
        30.0,
        "",
    );
    println!("simulator allows 100 calls/s; daemon configured at 200/s; {population} accounts in calls of {batch} (2,000 calls a sweep), a sweep every 30 s");
    let http = Http::new();
    let mut samples = Vec::new();
    rig.sample_until(&http, sweeps, &mut samples);
    let mut later = (0, 0, 0.0);
    for (i, (start, end)) in rig.sweeps().into_iter().enumerate() {
        let (calls, refused) = counts_within(&samples, start, end);
        let secs = (end - start) as f64 / 1000.0;
        let accepted_rate = (calls - refused) as f64 / secs;
        println!(
            "sweep {}: {calls} calls in {secs:.1} s, {refused} refused ({:.2}%), accepted {accepted_rate:.1}/s = {:.3} of the allowed rate",
            i + 1,
            100.0 * refused as f64 / calls.max(1) as f64,
            accepted_rate / 100.0
        );
        if i > 0 {
            later = (later.0 + calls, later.1 + refused, later.2 + secs);
        }
    }
    let (calls, refused, secs) = later;
    println!(
        "after the first sweep: {refused} of {calls} calls refused ({:.2}%), accepted {:.3} of the allowed rate; daemon's rate now {:.1}/s",
        100.0 * refused as f64 / calls.max(1) as f64,
        (calls - refused) as f64 / secs / 100.0,
        metric(&http, rig.metrics_port, "presenced_ratelimit_calls_per_second")
    );
}

fn hint_flood() {
    let (population, batch) = (10_000, 50);
    let rig = Rig::start(
        population,
        0.0,
        &format!("calls_per_second = 20.0\nbatch_size = {batch}"),
        25.0,
        &format!("[callback]\nlisten = \"127.0.0.1:CALLBACK_PORT\"\ntoken = \"{TOKEN}\"\ncoalesce_ms = 0\nmin_requery_interval_ms = 0\n"),
    );
    println!("daemon at 20 calls/s (hinted share 25%), {population} accounts in calls of {batch} (200 calls a sweep), a sweep every 25 s");
    let http = Http::new();
    let mut samples = Vec::new();
    // The first sweep records every account; the second is the quiet one.
    rig.sample_until(&http, 2, &mut samples);
    let flooding = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let flood = {
        let flooding = flooding.clone();
        let port = rig.callback_port;
        std::thread::spawn(move || flood_callbacks(port, population, &flooding))
    };
    let hinted_before = metric(&http, rig.metrics_port, "presenced_hinted_calls_total");
    rig.sample_until(&http, 4, &mut samples);
    let hinted = metric(&http, rig.metrics_port, "presenced_hinted_calls_total") - hinted_before;
    flooding.store(false, std::sync::atomic::Ordering::Relaxed);
    let sent = flood.join().unwrap();
    let done = rig.sweeps();
    let quiet = (done[1].1 - done[1].0) as f64 / 1000.0;
    // The third sweep may have started before the flood did: the fourth ran under it all.
    let (start, end) = done[3];
    let flooded = (end - start) as f64 / 1000.0;
    let (calls, _) = counts_within(&samples, start, end);
    println!(
        "quiet sweep {quiet:.2} s; under a flood of {sent} signed callbacks ({hinted} hinted calls since it began) {flooded:.2} s: ratio {:.3}; {calls} calls during the flooded sweep ({:.1}/s)",
        flooded / quiet,
        calls as f64 / flooded
    );
}

/// Posts signed State.StateChange callbacks for random watched accounts, about 500 a second,
/// until `flooding` clears. Returns how many were sent.
fn flood_callbacks(port: u16, population: usize, flooding: &std::sync::atomic::AtomicBool) -> u64 {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let client = reqwest::Client::new();
    let mut sent = 0;
    rt.block_on(async {
        while flooding.load(std::sync::atomic::Ordering::Relaxed) {
            let time = presenced::model::now_millis() / 1000;
            let sign = presenced::callback::sign(TOKEN, &time.to_string());
            let url = format!("http://127.0.0.1:{port}/im/callback?SdkAppid=1400000000&CallbackCommand=State.StateChange&contenttype=json&RequestTime={time}&Sign={sign}");
            let user = format!("user{}", rand::random_range(0..population));
            let body = serde_json::json!({
                "CallbackCommand": "State.StateChange",
                "EventTime": presenced::model::now_millis(),
                "Info": {"Action": "Login", "To_Account": user, "Reason": "Register"},
            });
            let _ = client.post(&url).json(&body).send().await;
            sent += 1;
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    });
    sent
}
