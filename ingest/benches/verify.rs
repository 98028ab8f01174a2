//! Sync 1.1 commit verification on the recorded reference-PDS firehose: all 5,540 commits
//! decoded (CAR parsed, every block hash-checked), signature checked and ops proven by MST
//! inversion against `prevData`. Target (issue 6): at least 20,000 verified commits/s on this
//! machine's two cores. Run: `cargo bench -p atcr-ingest --bench verify`.
//!
//! As in ingest: commits are verified in parallel across DIDs and in order within a DID (each
//! worker takes the next DID's whole queue), and keys are parsed once (the identity cache's
//! job) and looked up per commit. The split of frames by DID is done once, outside the timing.
//! Besides the whole pipeline on 1 and 2 threads, the parts on one thread: decode only,
//! signature only (on decoded commits), inversion only.

use std::collections::{BTreeMap, HashMap};
use std::hint::black_box;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};

use atcr_ingest::corpus::split_frames;
use atcr_ingest::frame::{CommitFacts, Frame, decode_frame_unfiltered};
use atcr_ingest::verify::{prove_ops, verify_commit, verify_signed_commit};
use atcr_storage::PublicKey;
use atcr_storage::did::parse_did_document;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

fn corpus_directory() -> PathBuf {
    std::env::var_os("ATCR_CORPUS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/firehose-corpus"))
}

fn keys(dids_json: &str) -> HashMap<String, PublicKey> {
    let documents: BTreeMap<String, serde_json::Value> = serde_json::from_str(dids_json).expect("dids.json");
    documents
        .into_iter()
        .map(|(did, document)| {
            let facts = parse_did_document(&document.to_string()).expect("a DID document");
            let (kind, multibase) = facts.signing_key.expect("a signing key");
            (did, PublicKey::from_verification_method(&kind, &multibase).expect("a key"))
        })
        .collect()
}

fn decode(frame: &[u8]) -> Option<CommitFacts> {
    match decode_frame_unfiltered(frame) {
        Ok(Frame::Commit(commit)) => Some(commit),
        _ => None,
    }
}

/// Decodes and verifies every frame; `queues` holds each DID's frames in order. Returns the
/// number of commits verified.
fn verify_all(queues: &[Vec<&[u8]>], keys: &HashMap<String, PublicKey>, threads: usize) -> usize {
    let next = AtomicUsize::new(0);
    let worker = || {
        let mut verified = 0;
        while let Some(queue) = queues.get(next.fetch_add(1, Ordering::Relaxed)) {
            for frame in queue {
                let Some(commit) = decode(frame) else { continue };
                let Some(key) = keys.get(&commit.did) else { continue };
                if verify_commit(&commit, key).is_ok() {
                    verified += 1;
                }
            }
        }
        verified
    };
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads).map(|_| scope.spawn(worker)).collect();
        handles.into_iter().map(|handle| handle.join().expect("worker")).sum()
    })
}

fn bench(criterion: &mut Criterion) {
    let directory = corpus_directory();
    let (Ok(bytes), Ok(dids)) =
        (std::fs::read(directory.join("corpus.bin")), std::fs::read_to_string(directory.join("dids.json")))
    else {
        println!("SKIP: firehose corpus not found at {}", directory.display());
        return;
    };
    let keys = keys(&dids);
    let frames = split_frames(&bytes).expect("corpus is well formed");

    // Each DID's commit frames in order, the longest queues first (so two workers finish together).
    let mut by_did: HashMap<String, Vec<&[u8]>> = HashMap::new();
    let mut decoded = Vec::new();
    for frame in &frames {
        if let Some(commit) = decode(frame) {
            by_did.entry(commit.did.clone()).or_default().push(*frame);
            decoded.push(commit);
        }
    }
    let mut queues: Vec<Vec<&[u8]>> = by_did.into_values().collect();
    queues.sort_by_key(|queue| std::cmp::Reverse(queue.len()));
    let commits = decoded.len();
    assert_eq!(verify_all(&queues, &keys, 2), commits, "every commit of the corpus verifies");

    cpu_time_report(&queues, &keys, commits);

    let mut group = criterion.benchmark_group("verify");
    group.throughput(Throughput::Elements(commits as u64));
    group.sample_size(20);
    for threads in [2, 1] {
        group.bench_function(format!("decode_signature_inversion_{threads}_threads"), |bencher| {
            bencher.iter(|| black_box(verify_all(&queues, &keys, threads)))
        });
    }
    group.bench_function("decode_only_1_thread", |bencher| {
        bencher.iter(|| {
            for queue in &queues {
                for frame in queue {
                    black_box(decode(frame));
                }
            }
        })
    });
    group.bench_function("signature_only_1_thread", |bencher| {
        bencher.iter(|| {
            for commit in &decoded {
                let _ = black_box(verify_signed_commit(commit, &keys[&commit.did]));
            }
        })
    });
    group.bench_function("inversion_only_1_thread", |bencher| {
        let roots: Vec<_> = decoded
            .iter()
            .map(|commit| verify_signed_commit(commit, &keys[&commit.did]).expect("verifies").data)
            .collect();
        bencher.iter(|| {
            for (commit, data) in decoded.iter().zip(&roots) {
                if let Some(prev_data) = commit.prev_data {
                    let _ = black_box(prove_ops(commit, *data, prev_data));
                }
            }
        })
    });
    group.finish();
}

/// User + system CPU seconds of this process so far (Linux `/proc/self/stat`, 100 ticks/s).
fn cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name (which ends with ')'): utime and stime are the 12th and 13th.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0)
}

/// Wall time and CPU time of 20 two-thread passes: on a shared machine the wall-clock rate
/// depends on what else runs, the CPU cost per commit does not; two free cores verify
/// 2 / (CPU per commit) commits per second.
fn cpu_time_report(queues: &[Vec<&[u8]>], keys: &HashMap<String, PublicKey>, commits: usize) {
    let passes = 20;
    let (Some(cpu_before), started) = (cpu_seconds(), std::time::Instant::now()) else {
        return;
    };
    for _ in 0..passes {
        black_box(verify_all(queues, keys, 2));
    }
    let wall = started.elapsed().as_secs_f64();
    let Some(cpu_after) = cpu_seconds() else { return };
    let verified = (passes * commits) as f64;
    let cpu_per_commit = (cpu_after - cpu_before) / verified;
    println!(
        "verify: {passes} passes x {commits} commits on 2 threads: {:.0} commits/s wall clock; \
         {:.1} µs CPU per commit, so {:.0} commits/s on two free cores",
        verified / wall,
        cpu_per_commit * 1e6,
        2.0 / cpu_per_commit
    );
}

criterion_group!(benches, bench);
criterion_main!(benches);
