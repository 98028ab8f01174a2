//! The pull log's cost on the pull path and its write throughput.
//! Run: `cargo bench -p atcr-storage --bench pulls`.
//!
//! - `record`: what one `/v2` manifest GET pays to count itself (a channel send; the writer
//!   thread drains concurrently, as in serve);
//! - `record+flush 10k`: 10,000 pulls over 100 repositories until durable (batched commits).

use atcr_storage::pulls::PullLog;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

fn bench(criterion: &mut Criterion) {
    let directory = tempfile::tempdir().expect("temp dir");
    let log = PullLog::open(&directory.path().join("pulls.redb")).expect("open pull log");
    let recorder = log.recorder();
    let repositories: Vec<String> = (0..100).map(|index| format!("repo-{index}")).collect();
    let mut next = 0usize;
    criterion.bench_function("pulls/record", |bencher| {
        bencher.iter(|| {
            next = (next + 1) % repositories.len();
            recorder.record("did:plc:k3u5b4emvwh7qvdoh52fztxk", &repositories[next]);
        })
    });
    log.flush();
    let mut group = criterion.benchmark_group("pulls");
    group.throughput(Throughput::Elements(10_000));
    group.sample_size(10);
    group.bench_function("record+flush 10k", |bencher| {
        bencher.iter(|| {
            for index in 0..10_000 {
                recorder.record("did:plc:k3u5b4emvwh7qvdoh52fztxk", &repositories[index % repositories.len()]);
            }
            log.flush();
        })
    });
    group.finish();
    println!("pulls dropped (channel full): {}", log.dropped());
    log.close();
}

criterion_group!(benches, bench);
criterion_main!(benches);
