//! What the adaptive schedule costs per call at 1,000,000 accounts: picking a call's 500
//! accounts and noting their 500 answers, and solving the allocation at a sweep's start (once
//! per 2,000 calls at that size). Round-robin's slice copy beside it.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use presenced::schedule::{Adaptive, Schedule, Settings};
use std::sync::Arc;

const ACCOUNTS: usize = 1_000_000;
const BATCH: usize = 500;
const START_MS: i64 = 1_800_000_000_000;

fn watch() -> Arc<Vec<String>> {
    let mut ids: Vec<String> = (0..ACCOUNTS).map(|i| format!("user{i}")).collect();
    ids.sort();
    Arc::new(ids)
}

fn adaptive(watch: Arc<Vec<String>>) -> Schedule {
    let settings = Settings {
        interval_secs: 10.0,
        max_staleness_secs: 60.0,
        prior_change_interval_secs: 3_600.0,
    };
    let mut s = Schedule::Adaptive(Box::new(Adaptive::new(
        watch,
        settings,
        START_MS,
        Vec::new(),
    )));
    // One sweep's worth of polls first, a tenth of them finding changes.
    s.begin_sweep(START_MS);
    let mut repeats = Vec::new();
    for call in 0..(ACCOUNTS / BATCH) as i64 {
        let at = START_MS + call * 5;
        for (k, id) in s.next_call(BATCH, at, &mut repeats).iter().enumerate() {
            s.observed(id, k % 10 == 0, at, true);
        }
    }
    s
}

fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .unwrap()
        * 1024
}

fn per_call(c: &mut Criterion) {
    let watch = watch();
    // What the adaptive schedule adds to the daemon's memory (the watch list it shares is the
    // sweeper's already).
    let before = rss_bytes();
    let s = adaptive(watch.clone());
    let added = rss_bytes().saturating_sub(before);
    println!(
        "adaptive schedule state: {:.0} bytes per watched account ({} MiB at {ACCOUNTS})",
        added as f64 / ACCOUNTS as f64,
        added >> 20
    );
    drop(s);
    let mut group = c.benchmark_group("schedule");
    group.throughput(Throughput::Elements(BATCH as u64));
    let mut s = adaptive(watch.clone());
    let mut at = START_MS + 10_000;
    let mut repeats = Vec::new();
    group.bench_function(
        "adaptive: pick 500 and note their answers, 1M accounts",
        |b| {
            b.iter(|| {
                at += 5;
                let ids = s.next_call(BATCH, at, &mut repeats);
                for (k, id) in ids.iter().enumerate() {
                    s.observed(id, k % 10 == 0, at + 20, true);
                }
                repeats.clear();
                ids.len()
            })
        },
    );
    let mut rr = Schedule::round_robin(watch.clone());
    group.bench_function("round-robin: pick 500, 1M accounts", |b| {
        b.iter(|| {
            let ids = rr.next_call(BATCH, at, &mut repeats);
            if ids.is_empty() {
                rr.begin_sweep(at);
            }
            ids.len()
        })
    });
    group.finish();
    let mut group = c.benchmark_group("schedule-sweep");
    group.sample_size(10);
    group.bench_function(
        "adaptive: solve the allocation at a sweep's start, 1M accounts",
        |b| {
            b.iter(|| {
                at += 10_000;
                s.begin_sweep(at);
            })
        },
    );
    group.finish();
}

criterion_group!(benches, per_call);
criterion_main!(benches);
