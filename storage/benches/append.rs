//! Durable appends to the event log. Target (issue 2): at least 100,000 events/s with group
//! commit. Every commit here is fsynced (`Durability::Immediate`).
//! Run: `cargo bench -p atcr-storage --bench append`.

use std::sync::Arc;

use atcr_storage::{AppendBatch, Event, EventBody, EventLog, LogWriter, PutAction, Source};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

/// A record event shaped like a real `io.atcr.tag` put (≈ 350 bytes of record).
fn event(seq: i64) -> Event {
    Event {
        source: Source::Firehose,
        upstream_seq: Some(seq),
        did: "did:plc:k3u5b4emvwh7qvdoh52fztxk".into(),
        rev: Some("3n3uns5iblc22".into()),
        upstream_time: Some("2026-12-04T20:44:11.373Z".into()),
        received_at_us: 1_796_417_261_448_256,
        commit_cid: Some("bafyreigpl7clyf73izzoy6a6luo2qfxz22srrrt7uf6pgszkh5lr2f636i".into()),
        body: EventBody::RecordPut {
            collection: "io.atcr.tag".into(),
            rkey: format!("hello_v{seq}"),
            cid: "bafyreidb7uixt3jw5sd3ixam3xy7reftlantbbgbn2l7yxhiheszgg4yhq".into(),
            action: PutAction::Create,
            record: vec![0xa5; 350],
        },
    }
}

fn batch(first_seq: i64, events: usize) -> AppendBatch {
    AppendBatch {
        events: (0..events as i64).map(|index| event(first_seq + index)).collect(),
        cursors: vec![("wss://relay.example".into(), first_seq + events as i64)],
        ..AppendBatch::default()
    }
}

fn bench(criterion: &mut Criterion) {
    let directory = tempfile::tempdir().expect("temp dir");
    let log = Arc::new(EventLog::open(&directory.path().join("bench.redb")).expect("open log"));
    let (writer, _task) = LogWriter::start(log.clone());
    let mut group = criterion.benchmark_group("log_append");
    group.sample_size(10);

    // The ingest shape: one producer, one batch per socket drain.
    for batch_events in [1usize, 64, 1024] {
        let rounds = (8192 / batch_events).max(16);
        group.throughput(Throughput::Elements((rounds * batch_events) as u64));
        group.bench_function(format!("one_producer_batch_{batch_events}"), |bencher| {
            bencher.iter(|| {
                for round in 0..rounds {
                    writer.append_blocking(batch((round * batch_events) as i64, batch_events)).expect("append");
                }
            })
        });
    }

    // Group commit: many producers with small batches share fsyncs.
    let producers = 32;
    let per_producer = 64;
    let batch_events = 8;
    group.throughput(Throughput::Elements((producers * per_producer * batch_events) as u64));
    group.bench_function("32_producers_batch_8", |bencher| {
        bencher.iter(|| {
            std::thread::scope(|scope| {
                for producer in 0..producers {
                    let writer = writer.clone();
                    scope.spawn(move || {
                        for round in 0..per_producer {
                            let first = ((producer * per_producer + round) * batch_events) as i64;
                            writer.append_blocking(batch(first, batch_events)).expect("append");
                        }
                    });
                }
            })
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
