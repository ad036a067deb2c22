//! Detection latency at the scale the product is for: 1,000,000 accounts swept every 30 s by
//! the daemon binary against the simulator process, which churns and (when asked) sends
//! State.StateChange callbacks. The simulator logs each visible change with its moment; a change
//! is detected when the history first records the account in the state it changed to, before
//! its next change. Run by `scripts/bench.sh detection`.

#[allow(dead_code)]
mod support;

use std::time::Duration;
use support::changes::{detections, quantile, read_changes, Changes};
use support::rig::Rig;
use support::{metric, sim_calls, Http};

const ACCOUNTS: usize = 1_000_000;
/// 200 changes a second.
const CHURN: f64 = 0.0002;
const INTERVAL_SECS: f64 = 30.0;
/// Measured after the first sweep (which records every account once).
const MEASURE: Duration = Duration::from_secs(120);
/// What the daemon does once after its first sweep of a new database takes this long at most.
const SETTLE: Duration = Duration::from_secs(15);

struct Scenario {
    name: &'static str,
    callbacks: bool,
    drop_rate: f64,
    coalesce_ms: u64,
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return; // `cargo test --benches` builds this; only `cargo bench` runs it
    }
    println!(
        "{ACCOUNTS} accounts, sweep interval {INTERVAL_SECS} s, 200 calls/s (simulator limit 200, 20 ms latency), churn {} changes/s, measured over {} s after the first sweep",
        (ACCOUNTS as f64 * CHURN) as u64,
        MEASURE.as_secs()
    );
    for s in [
        Scenario {
            name: "callbacks off",
            callbacks: false,
            drop_rate: 0.0,
            coalesce_ms: 20,
        },
        Scenario {
            name: "callbacks on",
            callbacks: true,
            drop_rate: 0.0,
            coalesce_ms: 20,
        },
        Scenario {
            name: "callbacks on, 30% dropped",
            callbacks: true,
            drop_rate: 0.3,
            coalesce_ms: 20,
        },
        Scenario {
            name: "callbacks on, coalesce 200 ms",
            callbacks: true,
            drop_rate: 0.0,
            coalesce_ms: 200,
        },
    ] {
        run(&s);
    }
}

fn run(s: &Scenario) {
    let mut rig = Rig::new(ACCOUNTS, |cb_port| match s.callbacks {
        true => format!(
            "[callback]\nurl = \"http://127.0.0.1:{cb_port}/im/callback\"\ndrop_rate = {}\n",
            s.drop_rate
        ),
        false => String::new(),
    });
    let daemon_callback = match s.callbacks {
        true => format!(
            "[callback]\nlisten = \"127.0.0.1:{}\"\nallow_unsigned = true\ncoalesce_ms = {}\n",
            rig.cb_port, s.coalesce_ms
        ),
        false => String::new(),
    };
    rig.start_daemon(
        ACCOUNTS,
        &format!("interval_secs = {INTERVAL_SECS}"),
        &daemon_callback,
        SETTLE,
    );
    let (db, change_log, metrics_port) = (rig.db.clone(), rig.change_log.clone(), rig.metrics_port);
    let control = rig.control();
    let http = Http::new();
    http.put(
        &format!("{control}/churn"),
        serde_json::json!({"churn_per_second": CHURN}),
    );
    let started = presenced::model::now_millis();
    let calls_before = sim_calls(&http, &control);
    let hinted_before = metric(&http, metrics_port, "presenced_hinted_calls_total");
    std::thread::sleep(MEASURE);
    http.put(
        &format!("{control}/churn"),
        serde_json::json!({"churn_per_second": 0.0}),
    );
    let stopped = presenced::model::now_millis();
    // Every change gets a sweep that starts after it.
    std::thread::sleep(Duration::from_secs_f64(INTERVAL_SECS * 1.5));
    let (calls_after, throttled_after) = sim_calls(&http, &control);
    let (calls, throttled) = (
        calls_after - calls_before.0,
        throttled_after - calls_before.1,
    );
    let hinted = metric(&http, metrics_port, "presenced_hinted_calls_total") - hinted_before;
    drop(rig);

    let changes = read_changes(&change_log, started, stopped);
    let (all, by_callback, missed, in_sweeps) = latencies(&db, &changes, started);
    let pct = quantile;
    println!(
        "{}: {} changes, detection p50 {:.2} s, p99 {:.2} s; found through a callback: {} (p50 {:.3} s, p99 {:.3} s); not matched {}; API calls {} of which hinted {} = {:.1}% of the sweeps' {}; refused for frequency (60011) {}",
        s.name,
        all.len(),
        pct(&all, 0.5),
        pct(&all, 0.99),
        by_callback.len(),
        pct(&by_callback, 0.5),
        pct(&by_callback, 0.99),
        missed,
        calls,
        hinted as u64,
        hinted * 100.0 / (calls as f64 - hinted).max(1.0),
        calls as f64 - hinted,
        throttled
    );
    if !by_callback.is_empty() {
        println!(
            "    found through a callback while a sweep ran: {} (p50 {:.3} s, p99 {:.3} s)",
            in_sweeps.len(),
            pct(&in_sweeps, 0.5),
            pct(&in_sweeps, 0.99)
        );
    }
}

/// Detection latencies (ms, sorted): of every change, and of those found through a callback;
/// how many changes no history row matched before the account's next change; and the latencies
/// of callback-found changes observed while a sweep ran.
fn latencies(
    db: &std::path::Path,
    changes: &Changes,
    from: i64,
) -> (Vec<i64>, Vec<i64>, usize, Vec<i64>) {
    let conn = rusqlite::Connection::open(db).unwrap();
    let sweeps: Vec<(i64, i64)> = conn
        .prepare("SELECT started_at, finished_at FROM sweeps WHERE finished_at IS NOT NULL")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let during_sweep = |t: i64| sweeps.iter().any(|(s, f)| t >= *s && t <= *f);
    let (mut all, mut by_callback, mut missed, mut in_sweeps) =
        (Vec::new(), Vec::new(), 0, Vec::new());
    for found in detections(db, changes, from) {
        let (Some(observed), Some(delay)) = (found.observed, found.delay()) else {
            missed += 1;
            continue;
        };
        all.push(delay);
        if found.cause == "callback" {
            by_callback.push(delay);
            if during_sweep(observed) {
                in_sweeps.push(delay);
            }
        }
    }
    all.sort_unstable();
    by_callback.sort_unstable();
    in_sweeps.sort_unstable();
    (all, by_callback, missed, in_sweeps)
}
