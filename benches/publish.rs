//! The publisher's own work per event, which the plain-producer comparison of the Kafka
//! benchmark charges it for: reading a batch of 500 from the outbox (SQLite) and encoding each
//! event into its Kafka records (JSON value, CloudEvents headers).

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use presenced::model::TransitionRecord;
use presenced::model::{PlatformStatus, State};
use presenced::publish::event::EventV1;
use presenced::publish::kafka::KafkaEncoder;
use presenced::store::{Db, WriteSet};
use std::time::Duration;

const BATCH: usize = 500;

fn record(i: usize) -> TransitionRecord {
    let platforms = |s: State| {
        vec![PlatformStatus {
            platform: "iPhone".into(),
            status: s,
        }]
    };
    TransitionRecord::builder(format!("user{i}"), 7, State::Offline)
        .from(Some(State::Online), 1_764_000_000_000 - 60_000)
        .from_platforms(platforms(State::Online))
        .to_platforms(platforms(State::Offline))
        .observed_at(1_764_000_000_123)
        .build()
}

fn publish(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let mut db = Db::open(&dir.path().join("b.db"), Duration::from_secs(5)).unwrap();
    db.begin_sweep(0, BATCH as u64).unwrap();
    db.apply(&WriteSet {
        transitions: (0..BATCH).map(record).collect(),
        not_found: vec![],
    })
    .unwrap();
    let events = db.outbox_batch(0, BATCH).unwrap();
    assert_eq!(events.len(), BATCH);

    let mut group = c.benchmark_group("publish");
    group.throughput(Throughput::Elements(BATCH as u64));
    group.bench_function("outbox_read_500", |b| {
        b.iter(|| db.outbox_batch(0, BATCH).unwrap())
    });
    let encoder = KafkaEncoder::new(1_400_000_000, false);
    group.bench_function("kafka_encode_500", |b| {
        b.iter(|| {
            events
                .iter()
                .map(|e| encoder.encode(&e.record))
                .collect::<Vec<_>>()
        })
    });
    group.bench_function("event_json_500", |b| {
        b.iter(|| {
            events
                .iter()
                .map(|e| EventV1::new(1_400_000_000, &e.record).to_json())
                .collect::<Vec<_>>()
        })
    });
    group.finish();
}

criterion_group!(benches, publish);
criterion_main!(benches);
