//! Hot-path costs: the diff per account against a 1,000,000-account snapshot, reading a full
//! 500-account answer, and signing.

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use presenced::im::wire::{outcomes, parse_answer};
use presenced::im::AccountOutcome;
use presenced::model::{PlatformStatus, Presence, State};
use presenced::store::CurrentRow;
use presenced::sweep::Snapshot;

const ACCOUNTS: usize = 1_000_000;

fn snapshot() -> Snapshot {
    let platforms = vec![PlatformStatus {
        platform: "iPhone".into(),
        status: State::Online,
    }];
    Snapshot::from_rows(
        (0..ACCOUNTS)
            .map(|i| CurrentRow {
                user_id: format!("user{i}"),
                state: Some(State::Online),
                platforms: platforms.clone(),
                seq: 3,
                observed_at: Some(1_700_000_000_000),
                not_found_since: None,
            })
            .collect(),
    )
}

fn diff_unchanged(c: &mut Criterion) {
    let mut snap = snapshot();
    let observed = AccountOutcome::Observed(Presence::new(
        State::Online,
        vec![PlatformStatus {
            platform: "iPhone".into(),
            status: State::Online,
        }],
    ));
    // A batch of 500 ids spread over the whole map, as a sweep sees them.
    let ids: Vec<String> = (0..500)
        .map(|i| format!("user{}", i * (ACCOUNTS / 500) + 7))
        .collect();
    let mut group = c.benchmark_group("diff");
    group.throughput(Throughput::Elements(ids.len() as u64));
    group.bench_function("unchanged_batch_of_500_in_1m", |b| {
        b.iter(|| {
            for id in &ids {
                let d = snap.decide(id, &observed, 1_700_000_100_000, 9, true);
                debug_assert_eq!(d, presenced::sweep::Decision::Unchanged);
                snap.touch(id, 1_700_000_100_000);
            }
        })
    });
    group.finish();
}

fn parse_answer_500(c: &mut Criterion) {
    let mut body =
        String::from(r#"{"ActionStatus":"OK","ErrorInfo":"","ErrorCode":0,"QueryResult":["#);
    let ids: Vec<String> = (0..500).map(|i| format!("user{i}")).collect();
    for (i, id) in ids.iter().enumerate() {
        if i > 0 {
            body.push(',');
        }
        body.push_str(&format!(
            r#"{{"To_Account":"{id}","Status":"Online","Detail":[{{"Platform":"iPhone","Status":"Online"}},{{"Platform":"Web","Status":"PushOnline"}}]}}"#
        ));
    }
    body.push_str("]}");
    let mut group = c.benchmark_group("wire");
    group.throughput(Throughput::Elements(500));
    group.bench_function("parse_and_match_500_with_detail", |b| {
        b.iter_batched(
            || body.as_bytes(),
            |bytes| outcomes(&ids, parse_answer(bytes).unwrap()),
            BatchSize::SmallInput,
        )
    });
    group.finish();
}

fn sign(c: &mut Criterion) {
    let key = presenced::secret::Secret::new(
        "5bd2850fff3ecb11d7c805251c51ee463a25727bddc2385f3fa8bfee1bb93b5e",
    );
    c.bench_function("usersig_generate", |b| {
        b.iter(|| {
            presenced::im::usersig::generate(
                &key,
                "administrator",
                1_400_000_000,
                1_700_000_000,
                86_400,
            )
        })
    });
}

criterion_group!(benches, diff_unchanged, parse_answer_500, sign);
criterion_main!(benches);
