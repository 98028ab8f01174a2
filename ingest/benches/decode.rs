//! Decode + filter + record extraction on the recorded reference-PDS firehose, one thread.
//! Target (issue 2): at least 1,000,000 frames/s. Run: `cargo bench -p atcr-ingest --bench decode`.

use std::hint::black_box;
use std::path::PathBuf;

use atcr_ingest::corpus::split_frames;
use atcr_ingest::frame::decode_frame;
use atcr_ingest::process::{FrameCounts, FrameProcessor};
use atcr_storage::AppendBatch;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

fn corpus() -> Option<Vec<u8>> {
    let path = std::env::var_os("ATCR_CORPUS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/firehose-corpus/corpus.bin"));
    std::fs::read(&path).ok().or_else(|| {
        println!("SKIP: firehose corpus not found at {}", path.display());
        None
    })
}

fn bench(criterion: &mut Criterion) {
    let Some(bytes) = corpus() else { return };
    let frames = split_frames(&bytes).expect("corpus is well formed");
    let mut group = criterion.benchmark_group("firehose");
    group.throughput(Throughput::Elements(frames.len() as u64));
    group.bench_function("decode_filter_extract", |bencher| {
        bencher.iter(|| {
            for frame in &frames {
                let _ = black_box(decode_frame(black_box(frame)));
            }
        })
    });
    // What the commit gate adds per non-io.atcr commit once it follows DIDs: repo + rev only.
    group.bench_function("peek_commit_rev", |bencher| {
        bencher.iter(|| {
            for frame in &frames {
                let _ = black_box(atcr_ingest::gate::peek_commit_rev(black_box(frame)));
            }
        })
    });
    // The whole synchronous path up to the append: decode, filter, build the batch.
    group.bench_function("process_to_batch", |bencher| {
        bencher.iter(|| {
            let mut processor = FrameProcessor::new("bench".into(), None, Vec::new());
            let mut batch = AppendBatch::default();
            let mut counts = FrameCounts::default();
            for frame in &frames {
                processor.process(frame, 0, &mut batch, &mut counts);
            }
            black_box((batch, counts))
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
