//! The firehose client against a replaying server: the real WebSocket path into a real log,
//! with connections cut mid-stream and bad frames mixed in.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use atcr_firehose_replay::{Faults, RecordedFrame, ReplayServer};
use atcr_ingest::corpus::split_frames;
use atcr_ingest::frame::{Frame, decode_frame};
use atcr_ingest::{FirehoseConfig, IngestError, run_firehose};
use atcr_storage::{EventBody, EventLog, LogWriter, StreamNoteKind};
use tokio_util::sync::CancellationToken;

fn corpus_frames() -> Option<Vec<RecordedFrame>> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/firehose-corpus/corpus.bin");
    let Ok(bytes) = std::fs::read(&path) else {
        println!("SKIP: firehose corpus not found at {} (needs ../shared)", path.display());
        return None;
    };
    let frames = split_frames(&bytes).unwrap();
    Some(
        frames
            .into_iter()
            .map(|bytes| RecordedFrame { seq: decode_frame(bytes).unwrap().seq().unwrap(), bytes: bytes.to_vec() })
            .collect(),
    )
}

struct Running {
    log: Arc<EventLog>,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<Result<(), IngestError>>,
    _dir: tempfile::TempDir,
}

fn start(upstream: String, configure: impl FnOnce(&mut FirehoseConfig)) -> Running {
    let dir = tempfile::tempdir().unwrap();
    let log = Arc::new(EventLog::open(&dir.path().join("log.redb")).unwrap());
    let (writer, _writer_task) = LogWriter::start(log.clone());
    let mut config = FirehoseConfig::new(upstream);
    config.start_cursor = Some(0);
    config.backoff_min = Duration::from_millis(10);
    config.backoff_max = Duration::from_millis(50);
    configure(&mut config);
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(run_firehose(config, log.clone(), writer, shutdown.clone()));
    Running { log, shutdown, task, _dir: dir }
}

async fn wait_for_cursor(running: &Running, upstream: &str, seq: i64) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while running.log.cursor(upstream).unwrap() != Some(seq) {
        assert!(!running.task.is_finished(), "ingest stopped early");
        assert!(Instant::now() < deadline, "cursor stuck at {:?}, wanted {seq}", running.log.cursor(upstream).unwrap());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// (seq, collection, rkey) of every record event in log order.
fn record_events(log: &EventLog) -> Vec<(i64, String, String)> {
    log.read_from(0, usize::MAX)
        .unwrap()
        .into_iter()
        .filter_map(|stored| match stored.event.body {
            EventBody::RecordPut { collection, rkey, .. } | EventBody::RecordDeleted { collection, rkey, .. } => {
                Some((stored.event.upstream_seq.unwrap(), collection, rkey))
            }
            _ => None,
        })
        .collect()
}

fn expected_records(frames: &[RecordedFrame]) -> Vec<(i64, String, String)> {
    let mut out = Vec::new();
    for frame in frames {
        if let Ok(Frame::Commit(commit)) = decode_frame(&frame.bytes) {
            for op in commit.ops {
                let (collection, rkey) = match op {
                    atcr_ingest::frame::RecordOp::Put { collection, rkey, .. } => (collection, rkey),
                    atcr_ingest::frame::RecordOp::Delete { collection, rkey, .. } => (collection, rkey),
                };
                out.push((commit.seq, collection, rkey));
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corpus_lands_once_and_in_order() {
    let Some(frames) = corpus_frames() else {
        return;
    };
    let expected = expected_records(&frames);
    assert_eq!(expected.len(), 183);
    let server = ReplayServer::start(frames, Faults::default()).await.unwrap();
    let running = start(server.url(), |_| {});
    wait_for_cursor(&running, &server.url(), 5600).await;
    assert_eq!(record_events(&running.log), expected);
    let stats = running.log.stats().unwrap();
    assert_eq!(stats.quarantined, 0);
    running.shutdown.cancel();
    running.task.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cut_connections_resume_without_gaps_or_duplicates() {
    let Some(frames) = corpus_frames() else {
        return;
    };
    let expected = expected_records(&frames);
    let faults = Faults { cut_after_frames: vec![700, 1, 0, 2500, 1300] };
    let server = ReplayServer::start(frames, faults).await.unwrap();
    let running = start(server.url(), |_| {});
    wait_for_cursor(&running, &server.url(), 5600).await;
    assert!(
        server.connections() >= 6,
        "the connection was cut and re-established ({} connections)",
        server.connections()
    );
    assert_eq!(record_events(&running.log), expected, "every record exactly once, in upstream order");
    running.shutdown.cancel();
    running.task.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_frames_are_quarantined_and_the_stream_goes_on() {
    let Some(mut frames) = corpus_frames() else {
        return;
    };
    // A matching commit whose CAR has a block that no longer matches its CID.
    let tampered_index =
        frames.iter().position(|frame| matches!(decode_frame(&frame.bytes), Ok(Frame::Commit(_)))).unwrap();
    let tampered_seq = frames[tampered_index].seq;
    let Ok(Frame::Commit(commit)) = decode_frame(&frames[tampered_index].bytes) else { unreachable!() };
    let atcr_ingest::frame::RecordOp::Put { record, .. } = &commit.ops[0] else { panic!("first op is a put") };
    let bytes = &mut frames[tampered_index].bytes;
    let at = bytes.windows(record.len()).position(|window| window == record.as_slice()).unwrap();
    bytes[at + record.len() / 2] ^= 0x55; // same length, so the frame still decodes
    // A non-matching frame replaced by one over the protocol's 5 MB limit, same seq.
    let oversized_index = frames
        .iter()
        .position(|frame| frame.seq > 3000 && matches!(decode_frame(&frame.bytes), Ok(Frame::Skipped { .. })))
        .unwrap();
    let oversized_seq = frames[oversized_index].seq;
    frames[oversized_index].bytes = vec![0xa2; 6 * 1024 * 1024];
    // A truncated frame and a non-CBOR frame, inserted between two real ones.
    let truncated = frames[2000].bytes[..frames[2000].bytes.len() / 2].to_vec();
    let seq_before = frames[1999].seq;
    frames.insert(2000, RecordedFrame { seq: seq_before, bytes: truncated });
    frames.insert(2001, RecordedFrame { seq: seq_before, bytes: b"this is not CBOR at all".to_vec() });

    let mut expected = expected_records(&frames);
    expected.retain(|(seq, _, _)| *seq != tampered_seq);
    let server = ReplayServer::start(frames, Faults::default()).await.unwrap();
    let running = start(server.url(), |_| {});
    wait_for_cursor(&running, &server.url(), 5600).await;

    let landed = record_events(&running.log);
    assert_eq!(landed.len(), expected.len());
    assert!(landed == expected, "everything else landed, in order");
    let quarantine = running.log.quarantine(0, 100).unwrap();
    let reasons: Vec<&str> = quarantine.iter().map(|(_, entry)| entry.reason.as_str()).collect();
    assert_eq!(quarantine.len(), 3, "{reasons:?}");
    // the CAR reader names the block whose bytes do not hash to its CID
    assert!(reasons[0].contains("does not match its CID"), "{reasons:?}");
    assert_eq!(quarantine[0].1.upstream_seq, Some(tampered_seq));
    assert!(reasons[1].contains("header") || reasons[1].contains("decode"), "{reasons:?}");
    assert!(reasons[2].contains("header"), "{reasons:?}");
    assert!(quarantine.iter().all(|(_, entry)| !entry.raw.is_empty()), "raw bytes are kept");
    let notes = running.log.notes(0, 10).unwrap();
    assert_eq!(notes.len(), 1);
    assert_eq!(notes[0].1.kind, StreamNoteKind::OversizedFrameSkipped);
    assert_eq!(notes[0].1.cursor, Some(oversized_seq));
    running.shutdown.cancel();
    running.task.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn future_cursor_stops_unless_a_reset_was_asked_for() {
    let Some(frames) = corpus_frames() else {
        return;
    };
    let server = ReplayServer::start(frames[..100].to_vec(), Faults::default()).await.unwrap();

    let running = start(server.url(), |config| config.start_cursor = Some(10_000));
    let result = tokio::time::timeout(Duration::from_secs(20), running.task).await.unwrap().unwrap();
    let error = result.expect_err("a future cursor must stop ingest");
    assert!(matches!(error, IngestError::FutureCursor { .. }), "{error}");
    assert!(error.to_string().contains("--reset-cursor"), "the error says what to do: {error}");
    assert_eq!(running.log.stats().unwrap().events, 0);

    let running = start(server.url(), |config| {
        config.start_cursor = Some(10_000);
        config.reset_on_future_cursor = true;
    });
    wait_for_cursor(&running, &server.url(), 100).await;
    let notes = running.log.notes(0, 10).unwrap();
    assert_eq!(notes[0].1.kind, StreamNoteKind::CursorReset);
    running.shutdown.cancel();
    running.task.await.unwrap().unwrap();
}
