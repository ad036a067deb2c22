//! Adaptive polling against round-robin (`scripts/bench.sh adaptive`): 1,000,000 accounts,
//! the daemon binary against the simulator process (200 calls/s, 20 ms latency), both
//! schedules starting a sweep every 15 s with 5 s of slack, so both make one call per 500
//! accounts a sweep: the same calls. Each run prints its calls, the ones IM refused (60011)
//! and the longest a sweep overran its interval, so unequal calls show. The
//! simulator logs each visible change and the first query to answer for its account after it.
//! Two delays per change: to the first history row in the changed-to state (a change
//! overwritten before any poll has none, and is left out), and to the first query that
//! answered for the account (the poll that could see it, or the later change that overwrote
//! it: the delay the refresh-scheduling literature minimises). Three populations (10% of
//! accounts making 90% of the changes, 1% making 90%, uniform), then the first with callbacks
//! on and 30% of them dropped.
//!
//! `ADAPTIVE_ACCOUNTS`, `ADAPTIVE_CHURN` (the share of accounts changing per second, default
//! 0.005), `ADAPTIVE_LEARN_SECS` (the adaptive schedule's learning time from an empty
//! database, default 300; round-robin has nothing to learn and starts measuring 60 s after its
//! first sweep and the daemon's settling, so that the one-time fold and prune are behind it)
//! and `ADAPTIVE_SECS` (the measured time, default 90) change it;
//! `ADAPTIVE_ONLY=0,0cb,1,2` runs only those (10%, 10% with callbacks, 1%, uniform).

#[allow(dead_code)]
mod support;

use std::collections::HashSet;
use std::time::{Duration, Instant};
use support::changes::{detections, mean, quantile, read_changes, read_shown, shown_delays};
use support::rig::Rig;
use support::{metric, sim_calls, Http};

/// 5,000 changes a second at a million accounts: the hot accounts of "10% make 90%" change
/// about every 22 s, often enough to be learned within the learning time.
/// A million accounts at 200 calls of 500 take 10 s. Back-to-back sweeps would let the time
/// each schedule spends between sweeps decide its number of calls (the adaptive daemon made 72%
/// of round-robin's in such a run); 5 s of slack makes both make 2,000 calls a sweep.
const INTERVAL_SECS: f64 = 15.0;
/// Six sweeps, as at 10 s and 60 s: the floor of one poll per account per bound less a sweep
/// takes the same fifth of the calls (its memory of changes grows from 600 s to 900 s).
const MAX_STALENESS_SECS: f64 = 90.0;
/// What the daemon does once after the first sweep of a new database takes this long at most.
const SETTLE: Duration = Duration::from_secs(15);

struct Population {
    name: &'static str,
    hot_share: f64,
    hot_steps: f64,
}

struct Run {
    mean: f64,
    p50: f64,
    p99: f64,
    hot_p99: f64,
    cold_p99: f64,
    /// Every change to the first query answering for its account: mean, p50, p99.
    shown: (f64, f64, f64),
    /// Changes no query answered for before the end.
    unshown: usize,
    /// Changes found by sweeps when callbacks are on (the silent ones): mean, p99.
    silent: Option<(f64, f64)>,
    changes: usize,
    missed: usize,
    calls: u64,
    /// Calls IM refused with 60011 in the measured time (counted in `calls` too).
    refused: u64,
    /// The most a sweep overran its interval in the measured time (s).
    max_lag: f64,
    longest_unobserved: f64,
    rss_per_account: f64,
    /// The daemon's CPU time per call over the measured time (ms).
    cpu_per_call_ms: f64,
}

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return; // `cargo test --benches` builds this; only `cargo bench` runs it
    }
    let accounts = env_or("ADAPTIVE_ACCOUNTS", 1_000_000) as usize;
    let secs = env_or("ADAPTIVE_SECS", 90);
    let learn_secs = env_or("ADAPTIVE_LEARN_SECS", 300);
    let churn: f64 = std::env::var("ADAPTIVE_CHURN")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.005);
    println!(
        "{accounts} accounts, {} changes/s, sweeps start every {INTERVAL_SECS} s ({} calls of 500: round-robin's take {:.1} s at 200 calls/s, adaptive spreads them over nine tenths of the interval), max_staleness_secs {MAX_STALENESS_SECS}; {learn_secs} s of learning (adaptive), then {secs} s measured",
        (accounts as f64 * churn) as u64,
        accounts.div_ceil(500),
        accounts.div_ceil(500) as f64 / 200.0
    );
    let populations = [
        Population {
            name: "10% of accounts make 90% of changes",
            hot_share: 0.1,
            hot_steps: 0.9,
        },
        Population {
            name: "1% make 90%",
            hot_share: 0.01,
            hot_steps: 0.9,
        },
        Population {
            name: "uniform",
            hot_share: 0.0,
            hot_steps: 0.0,
        },
    ];
    let only_var = std::env::var("ADAPTIVE_ONLY").unwrap_or_default();
    let only: Vec<&str> = only_var.split(',').filter(|k| !k.is_empty()).collect();
    for (i, p) in populations.iter().enumerate() {
        let callbacks: &[bool] = if i == 0 { &[false, true] } else { &[false] };
        for &with_callbacks in callbacks {
            let label = match with_callbacks {
                true => format!("{}, callbacks on, 30% dropped", p.name),
                false => p.name.to_owned(),
            };
            let key = format!("{i}{}", if with_callbacks { "cb" } else { "" });
            if !only.is_empty() && !only.contains(&key.as_str()) {
                continue;
            }
            println!("\n### {label}");
            let rr = run(p, "round-robin", with_callbacks, accounts, churn, 60, secs);
            report("round-robin", &rr);
            let ad = run(
                p,
                "adaptive",
                with_callbacks,
                accounts,
                churn,
                learn_secs,
                secs,
            );
            report("adaptive", &ad);
            println!(
                "adaptive over round-robin ({:.1}% of its calls): mean {:.2}x lower, p50 {:.2}x, p99 {:.2}x; every change to the query that could show it: mean {:.2}x lower, p50 {:.2}x, p99 {:.2}x{}",
                100.0 * ad.calls as f64 / rr.calls.max(1) as f64,
                rr.mean / ad.mean,
                rr.p50 / ad.p50,
                rr.p99 / ad.p99,
                rr.shown.0 / ad.shown.0,
                rr.shown.1 / ad.shown.1,
                rr.shown.2 / ad.shown.2,
                match (rr.silent, ad.silent) {
                    (Some(r), Some(a)) => format!(
                        "; silent changes mean {:.2}x lower ({:.2} s against {:.2} s)",
                        r.0 / a.0,
                        a.0,
                        r.0
                    ),
                    _ => String::new(),
                }
            );
        }
    }
}

fn report(mode: &str, r: &Run) {
    println!(
        "{mode}: {} changes ({} not matched), mean {:.2} s, p50 {:.2} s, p99 {:.2} s; hot p99 {:.2} s, cold p99 {:.2} s; every change to a query: mean {:.2} s, p50 {:.2} s, p99 {:.2} s ({} never queried){}; calls {} ({} refused, sweeps overran by {:.1} s at most); longest unobserved {:.1} s; RSS {:.0} B/account; CPU {:.2} ms/call",
        r.changes,
        r.missed,
        r.mean,
        r.p50,
        r.p99,
        r.hot_p99,
        r.cold_p99,
        r.shown.0,
        r.shown.1,
        r.shown.2,
        r.unshown,
        r.silent
            .map(|(m, p)| format!("; found by sweeps: mean {m:.2} s, p99 {p:.2} s"))
            .unwrap_or_default(),
        r.calls,
        r.refused,
        r.max_lag,
        r.longest_unobserved,
        r.rss_per_account,
        r.cpu_per_call_ms
    );
}

fn rss_bytes(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .unwrap()
        * 1024.0
}

/// CPU time the process has used (user and system), in seconds.
fn cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command's closing parenthesis: utime and stime are the 12th and 13th.
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
    ticks / 100.0 // USER_HZ
}

fn run(
    p: &Population,
    schedule: &str,
    callbacks: bool,
    accounts: usize,
    churn: f64,
    learn_secs: u64,
    secs: u64,
) -> Run {
    let mut rig = Rig::new(accounts, |cb_port| {
        let callback = match callbacks {
            true => format!(
                "[callback]\nurl = \"http://127.0.0.1:{cb_port}/im/callback\"\ndrop_rate = 0.3\n"
            ),
            false => String::new(),
        };
        format!(
            "[activity]\nhot_share = {}\nhot_step_share = {}\n{callback}",
            p.hot_share, p.hot_steps
        )
    });
    let daemon_callback = match callbacks {
        true => format!(
            "[callback]\nlisten = \"127.0.0.1:{}\"\nallow_unsigned = true\n",
            rig.cb_port
        ),
        false => String::new(),
    };
    rig.start_daemon(
        accounts,
        &format!("interval_secs = {INTERVAL_SECS}\nschedule = \"{schedule}\"\nmax_staleness_secs = {MAX_STALENESS_SECS}"),
        &daemon_callback,
        SETTLE,
    );
    let (db, metrics_port) = (rig.db.clone(), rig.metrics_port);
    let daemon_pid = rig.daemon.as_ref().unwrap().0.id();
    let rss_per_account = rss_bytes(daemon_pid) / accounts as f64;
    let http = Http::new();
    let control = rig.control();
    let activity: serde_json::Value =
        serde_json::from_str(&http.text(&format!("{control}/activity"))).unwrap();
    let hot: HashSet<String> = activity["hot"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| v.as_str().map(str::to_owned))
        .collect();
    http.put(
        &format!("{control}/churn"),
        serde_json::json!({"churn_per_second": churn}),
    );
    // Learning, then the measured time, then long enough for every change to be found.
    // The gauge is set as each sweep starts: a peak reached within a sweep shows at the next.
    let mut longest_unobserved = 0.0f64;
    // Returns the most a sweep overran its interval while it watched.
    let mut watch_staleness = |until: Instant| {
        let mut max_lag = 0.0f64;
        while Instant::now() < until {
            std::thread::sleep(Duration::from_secs(2));
            let age = metric(
                &http,
                metrics_port,
                "presenced_oldest_observation_age_seconds",
            );
            longest_unobserved = longest_unobserved.max(age);
            max_lag = max_lag.max(metric(&http, metrics_port, "presenced_sweep_lag_seconds"));
        }
        max_lag
    };
    watch_staleness(Instant::now() + Duration::from_secs(learn_secs));
    let started = presenced::model::now_millis();
    let (calls_before, refused_before) = sim_calls(&http, &control);
    let cpu_before = cpu_secs(daemon_pid);
    let max_lag = watch_staleness(Instant::now() + Duration::from_secs(secs));
    let (calls_after, refused_after) = sim_calls(&http, &control);
    let (calls, refused) = (calls_after - calls_before, refused_after - refused_before);
    let cpu_per_call_ms = (cpu_secs(daemon_pid) - cpu_before) * 1000.0 / calls.max(1) as f64;
    http.put(
        &format!("{control}/churn"),
        serde_json::json!({"churn_per_second": 0.0}),
    );
    let stopped = presenced::model::now_millis();
    watch_staleness(
        Instant::now() + Duration::from_secs_f64(MAX_STALENESS_SECS + 2.0 * INTERVAL_SECS),
    );
    let change_log = rig.change_log.clone();
    drop(rig.daemon.take());
    let changes = read_changes(&change_log, started, stopped);
    let (shown, unshown) = shown_delays(&changes, &read_shown(&change_log, started));
    let found = detections(&db, &changes, started);
    let sorted = |keep: &dyn Fn(&support::changes::Found) -> bool| {
        let mut v: Vec<i64> = found
            .iter()
            .filter(|f| keep(f))
            .filter_map(|f| f.delay())
            .collect();
        v.sort_unstable();
        v
    };
    let all = sorted(&|_| true);
    let hot_delays = sorted(&|f| hot.contains(&f.user));
    let cold_delays = sorted(&|f| !hot.contains(&f.user));
    let silent = callbacks.then(|| {
        let v = sorted(&|f| f.cause == "sweep");
        (mean(&v), quantile(&v, 0.99))
    });
    Run {
        mean: mean(&all),
        p50: quantile(&all, 0.5),
        p99: quantile(&all, 0.99),
        hot_p99: quantile(&hot_delays, 0.99),
        cold_p99: quantile(&cold_delays, 0.99),
        shown: (mean(&shown), quantile(&shown, 0.5), quantile(&shown, 0.99)),
        unshown,
        silent,
        changes: found.len(),
        missed: found.iter().filter(|f| f.observed.is_none()).count(),
        calls,
        refused,
        max_lag,
        longest_unobserved,
        rss_per_account,
        cpu_per_call_ms,
    }
}
