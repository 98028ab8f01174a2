//! The recorded reference-PDS firehose (`shared/firehose-corpus`) decodes completely and the
//! filter finds exactly the `io.atcr.*` traffic its README counts.

use std::path::PathBuf;

use atcr_ingest::corpus::split_frames;
use atcr_ingest::frame::{Frame, decode_frame};

fn corpus() -> Option<Vec<u8>> {
    let path = std::env::var_os("ATCR_CORPUS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/firehose-corpus/corpus.bin"));
    match std::fs::read(&path) {
        Ok(bytes) => Some(bytes),
        Err(_) => {
            println!("SKIP: firehose corpus not found at {} (needs ../shared)", path.display());
            None
        }
    }
}

#[test]
fn corpus_decodes_and_filters_to_the_atcr_frames() {
    let Some(bytes) = corpus() else { return };
    let frames = split_frames(&bytes).unwrap();
    assert_eq!(frames.len(), 5600);
    let (mut matched, mut ops, mut identity, mut account, mut sync, mut skipped) = (0, 0, 0, 0, 0, 0);
    let mut last_seq = 0;
    for (index, frame) in frames.iter().enumerate() {
        let decoded = decode_frame(frame).unwrap_or_else(|error| panic!("frame {index}: {error}"));
        let seq = decoded.seq().expect("every corpus frame has a seq");
        assert_eq!(seq, last_seq + 1, "seqs are gapless in the corpus");
        last_seq = seq;
        match decoded {
            Frame::Commit(commit) => {
                matched += 1;
                ops += commit.ops.len();
                assert!(!commit.commit_block.is_empty());
                assert!(commit.ops.iter().all(|op| match op {
                    atcr_ingest::frame::RecordOp::Put { collection, record, .. } =>
                        collection.starts_with("io.atcr.") && !record.is_empty(),
                    atcr_ingest::frame::RecordOp::Delete { collection, .. } => collection.starts_with("io.atcr."),
                }));
            }
            Frame::Identity { .. } => identity += 1,
            Frame::Account { .. } => account += 1,
            Frame::Sync { .. } => sync += 1,
            Frame::Skipped { .. } => skipped += 1,
            other => panic!("unexpected frame {other:?}"),
        }
    }
    assert_eq!((matched, ops), (157, 183), "README: 157 frames carry 183 io.atcr ops");
    assert_eq!((identity, account, sync), (20, 20, 20));
    assert_eq!(skipped, 5600 - 157 - 60);
}
