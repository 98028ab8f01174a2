//! The event log's promises, tested on real files.

use std::sync::Arc;

use atcr_storage::{
    AppendBatch, Event, EventBody, EventLog, LogWriter, PutAction, QuarantineEntry, RepoRevs, Source, StorageError,
};

fn put(seq: i64, did: &str, rkey: &str) -> Event {
    Event {
        source: Source::Firehose,
        upstream_seq: Some(seq),
        did: did.into(),
        rev: Some(format!("rev{seq}")),
        upstream_time: None,
        received_at_us: seq,
        commit_cid: Some(format!("commit{seq}")),
        body: EventBody::RecordPut {
            collection: "io.atcr.tag".into(),
            rkey: rkey.into(),
            cid: format!("cid{seq}"),
            action: PutAction::Create,
            record: vec![0xa0],
        },
    }
}

fn identity(seq: i64, did: &str) -> Event {
    Event { body: EventBody::Identity { handle: Some("alice.test".into()) }, ..put(seq, did, "x") }
}

#[test]
fn batches_land_with_their_cursor_and_survive_reopening() {
    let directory = tempfile::tempdir().unwrap();
    let path = directory.path().join("log.redb");
    {
        let log = EventLog::open(&path).unwrap();
        let receipt = log
            .append(AppendBatch {
                events: vec![put(1, "did:plc:a", "latest"), put(2, "did:plc:b", "v1")],
                commit_blocks: vec![("commit1".into(), vec![1, 2, 3])],
                cursors: vec![("wss://relay".into(), 2)],
                ..AppendBatch::default()
            })
            .unwrap();
        assert_eq!((receipt.first_offset, receipt.appended), (0, 2));
        let receipt = log
            .append(AppendBatch {
                events: vec![identity(3, "did:plc:a")],
                quarantine: vec![QuarantineEntry {
                    received_at_us: 4,
                    upstream: "wss://relay".into(),
                    upstream_seq: Some(4),
                    did: None,
                    reason: "cannot decode".into(),
                    raw: vec![0xff],
                }],
                cursors: vec![("wss://relay".into(), 4)],
                ..AppendBatch::default()
            })
            .unwrap();
        assert_eq!(receipt.first_offset, 2, "offsets are dense and assigned by the log");
    }
    let log = EventLog::open(&path).unwrap();
    assert_eq!(log.next_offset().unwrap(), 3);
    assert_eq!(log.cursor("wss://relay").unwrap(), Some(4));
    assert_eq!(log.commit_block("commit1").unwrap(), Some(vec![1, 2, 3]));
    let events = log.read_from(0, 10).unwrap();
    assert_eq!(events.iter().map(|stored| stored.offset).collect::<Vec<_>>(), vec![0, 1, 2]);
    assert_eq!(events[1].event, put(2, "did:plc:b", "v1"));
    let stats = log.stats().unwrap();
    assert_eq!(stats.events, 3);
    assert_eq!(stats.quarantined, 1);
    assert_eq!(stats.by_collection.get("io.atcr.tag"), Some(&2));
    assert_eq!(stats.by_kind.get("identity"), Some(&1));
    let mut tracked = log.tracked_dids().unwrap();
    tracked.sort();
    assert_eq!(tracked, vec!["did:plc:a".to_string(), "did:plc:b".to_string()]);
    assert_eq!(log.quarantine(0, 10).unwrap()[0].1.raw, vec![0xff]);
}

#[test]
fn a_second_writer_is_refused_but_readers_follow_the_writer() {
    let directory = tempfile::tempdir().unwrap();
    let path = directory.path().join("log.redb");
    let writer = EventLog::open(&path).unwrap();
    writer.append(AppendBatch { events: vec![put(1, "did:plc:a", "a")], ..AppendBatch::default() }).unwrap();

    // Another process would get the same answer: the file lock is per open file description.
    let second = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "second_writer_probe", "--ignored", "--nocapture"])
        .env("ATCR_PROBE_LOG", &path)
        .output()
        .unwrap();
    let output = String::from_utf8_lossy(&second.stdout);
    assert!(output.contains("PROBE: writer refused"), "{output}");
    assert!(output.contains("PROBE: reader sees 1"), "{output}");

    writer.append(AppendBatch { events: vec![put(2, "did:plc:a", "b")], ..AppendBatch::default() }).unwrap();
    let again = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "second_writer_probe", "--ignored", "--nocapture"])
        .env("ATCR_PROBE_LOG", &path)
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&again.stdout).contains("PROBE: reader sees 2"));
}

/// Run in a child process by the test above.
#[test]
#[ignore = "helper process of a_second_writer_is_refused_but_readers_follow_the_writer"]
fn second_writer_probe() {
    let Some(path) = std::env::var_os("ATCR_PROBE_LOG") else { return };
    let path = std::path::PathBuf::from(path);
    match EventLog::open(&path) {
        Err(StorageError::AlreadyOpen) => println!("PROBE: writer refused"),
        Err(other) => println!("PROBE: unexpected error {other}"),
        Ok(_) => println!("PROBE: second writer opened"),
    }
    let reader = EventLog::open_read_only(&path).unwrap();
    println!("PROBE: reader sees {}", reader.next_offset().unwrap());
}

#[test]
fn group_commit_keeps_every_producers_batch_whole_and_in_order() {
    let directory = tempfile::tempdir().unwrap();
    let log = Arc::new(EventLog::open(&directory.path().join("log.redb")).unwrap());
    let (writer, task) = LogWriter::start(log.clone());
    std::thread::scope(|scope| {
        for producer in 0..8 {
            let writer = writer.clone();
            scope.spawn(move || {
                for round in 0..50 {
                    let did = format!("did:plc:p{producer}");
                    let events =
                        (0..3).map(|index| put(round * 3 + index, &did, &format!("r{round}-{index}"))).collect();
                    let receipt = writer.append_blocking(AppendBatch { events, ..AppendBatch::default() }).unwrap();
                    assert_eq!(receipt.appended, 3);
                }
            });
        }
    });
    drop(writer);
    task.join();
    let events = log.read_from(0, usize::MAX).unwrap();
    assert_eq!(events.len(), 8 * 50 * 3);
    // Each batch is contiguous, and each producer's batches are in its submission order.
    for chunk in events.chunks(3) {
        assert!(chunk.iter().all(|stored| stored.event.did == chunk[0].event.did));
        let seqs: Vec<_> = chunk.iter().map(|stored| stored.event.upstream_seq.unwrap()).collect();
        assert_eq!(seqs[1], seqs[0] + 1);
        assert_eq!(seqs[2], seqs[0] + 2);
    }
    for producer in 0..8 {
        let did = format!("did:plc:p{producer}");
        let seqs: Vec<_> = events
            .iter()
            .filter(|stored| stored.event.did == did)
            .map(|stored| stored.event.upstream_seq.unwrap())
            .collect();
        assert_eq!(seqs, (0..150).collect::<Vec<_>>());
    }
}

#[tokio::test]
async fn tailing_readers_wake_on_append() {
    let directory = tempfile::tempdir().unwrap();
    let log = Arc::new(EventLog::open(&directory.path().join("log.redb")).unwrap());
    let mut head = log.subscribe();
    assert_eq!(*head.borrow(), 0);
    let (writer, task) = LogWriter::start(log.clone());
    let waiter = tokio::spawn(async move {
        head.changed().await.unwrap();
        *head.borrow()
    });
    writer.append(AppendBatch { events: vec![put(1, "did:plc:a", "a")], ..AppendBatch::default() }).await.unwrap();
    assert_eq!(waiter.await.unwrap(), 1);
    drop(writer);
    tokio::task::spawn_blocking(move || task.join()).await.unwrap();
}

#[test]
fn a_read_only_log_refuses_appends() {
    let directory = tempfile::tempdir().unwrap();
    let path = directory.path().join("log.redb");
    drop(EventLog::open(&path).unwrap());
    let reader = EventLog::open_read_only(&path).unwrap();
    assert!(reader.append(AppendBatch { events: vec![put(1, "did:plc:a", "a")], ..AppendBatch::default() }).is_err());
    assert!(EventLog::open_read_only(&directory.path().join("missing.redb")).is_err());
}

#[test]
fn repo_revs_land_with_their_batch_and_later_entries_win() {
    let directory = tempfile::tempdir().unwrap();
    let path = directory.path().join("log.redb");
    let revs = |verified: &str, seen: &str| RepoRevs { verified: verified.into(), seen: seen.into() };
    {
        let log = EventLog::open(&path).unwrap();
        assert!(log.repo_revs().unwrap().is_empty());
        log.append(AppendBatch {
            events: vec![put(1, "did:plc:a", "latest")],
            cursors: vec![("wss://relay".into(), 1)],
            repo_revs: vec![("did:plc:a".into(), revs("3a", "3a")), ("did:plc:a".into(), revs("3a", "3b"))],
            ..AppendBatch::default()
        })
        .unwrap();
        log.append(AppendBatch { repo_revs: vec![("did:plc:b".into(), revs("", "3c"))], ..AppendBatch::default() })
            .unwrap();
    }
    let log = EventLog::open_read_only(&path).unwrap();
    assert_eq!(
        log.repo_revs().unwrap(),
        vec![("did:plc:a".to_string(), revs("3a", "3b")), ("did:plc:b".to_string(), revs("", "3c"))]
    );
}
