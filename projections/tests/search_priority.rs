//! A rebuild builds the search index on threads at a lower priority; the index it leaves behind
//! serves at the process's own. Alone in its test binary (a process of its own), so no other
//! test's threads are counted.

#![cfg(target_os = "linux")]

use atcr_projections::browse::SearchDoc;
use atcr_projections::rebuild;
use atcr_storage::{AppendBatch, Event, EventBody, EventLog, PutAction, Source};
use ipld_core::ipld;

const ALICE: &str = "did:plc:alice";
const IMAGE: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";

fn manifest_put() -> Event {
    let record = ipld!({
        "repository": "web/app", "digest": IMAGE, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "schemaVersion": 2, "layers": [],
    });
    Event {
        source: Source::Firehose,
        upstream_seq: None,
        did: ALICE.into(),
        rev: Some("01".into()),
        upstream_time: Some("2026-01-01T00:00:01Z".into()),
        received_at_us: 0,
        commit_cid: None,
        body: EventBody::RecordPut {
            collection: "io.atcr.manifest".into(),
            rkey: IMAGE[7..].into(),
            cid: "cid-01".into(),
            action: PutAction::Create,
            record: serde_ipld_dagcbor::to_vec(&record).unwrap(),
        },
    }
}

/// A thread's nice value from its `stat` file.
fn nice_in(stat: &str) -> i64 {
    // After "pid (comm) ": state is field 3, nice field 19.
    let fields: Vec<&str> = stat.rsplit_once(')').unwrap().1.split_whitespace().collect();
    fields[16].parse().unwrap()
}

/// Each thread of this process: its name (as the kernel keeps it: at most 15 bytes, and a name
/// too long to set leaves the creator's) and its nice value.
fn threads() -> Vec<(String, i64)> {
    let mut threads = Vec::new();
    for task in std::fs::read_dir("/proc/self/task").unwrap() {
        let task = task.unwrap().path();
        // A thread that ended since the listing has no files left.
        let (Ok(name), Ok(stat)) =
            (std::fs::read_to_string(task.join("comm")), std::fs::read_to_string(task.join("stat")))
        else {
            continue;
        };
        threads.push((name.trim_end().to_string(), nice_in(&stat)));
    }
    threads
}

#[test]
fn the_search_index_a_rebuild_leaves_indexes_at_the_process_priority() {
    let directory = tempfile::tempdir().unwrap();
    let log = EventLog::open(&directory.path().join("log.redb")).unwrap();
    log.append(AppendBatch { events: vec![manifest_put()], ..AppendBatch::default() }).unwrap();
    let views = rebuild::rebuild_with_search(&log, &directory.path().join("views.redb"), 1, &mut |_| {}).unwrap();

    let search = views.search().expect("a rebuild with search attaches the index");
    assert_eq!(search.index().num_docs(), 1);
    // The rebuild's own threads have ended; what is left is this one and the index's: the
    // projection's committer and tantivy's (indexing, segment updates, merges).
    let threads = threads();
    assert!(threads.iter().any(|(name, _)| name == "search-commit"), "the index's threads were not found: {threads:?}");
    assert!(threads.iter().any(|(name, _)| name.starts_with("merge_thread_")), "no tantivy thread found: {threads:?}");
    // The test may itself run niced: the rebuild ran on this thread.
    let own = nice_in(&std::fs::read_to_string("/proc/thread-self/stat").unwrap());
    assert!(threads.iter().all(|&(_, nice)| nice == own), "threads below this one's nice {own}: {threads:?}");

    // The renewed writer works.
    let doc = SearchDoc { did: ALICE.into(), repository: "web/other".into(), ..SearchDoc::default() };
    search.index().upsert(&doc).unwrap();
    search.index().commit(2).unwrap();
    assert_eq!(search.index().num_docs(), 2);
}
