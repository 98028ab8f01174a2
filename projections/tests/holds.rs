//! The hold views from a hand-made log: a hold's captain, crew, layers and stats, the manifests
//! that name it, older and malformed shapes, deletes, and a rebuild that equals the live views.

use std::sync::Arc;

use atcr_projections::{ProjectionRunner, Views};
use atcr_storage::{AppendBatch, Event, EventBody, EventLog, PutAction, Source};
use ipld_core::ipld;
use ipld_core::ipld::Ipld;

const HOLD: &str = "did:plc:hold";
const OWNER: &str = "did:plc:captain";
const ALICE: &str = "did:plc:alice";
const IMAGE: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";
const IMAGE_V2: &str = "sha256:2222222222222222222222222222222222222222222222222222222222222222";
const LAYER: &str = "sha256:4444444444444444444444444444444444444444444444444444444444444444";

fn event(did: &str, rev: &str, body: EventBody) -> Event {
    Event {
        source: Source::Firehose,
        upstream_seq: None,
        did: did.into(),
        rev: Some(rev.into()),
        upstream_time: Some(format!("2026-01-{rev}T00:00:00Z")),
        received_at_us: 0,
        commit_cid: None,
        body,
    }
}

fn put(did: &str, rev: &str, collection: &str, rkey: &str, record: Ipld) -> Event {
    let record = serde_ipld_dagcbor::to_vec(&record).unwrap();
    event(
        did,
        rev,
        EventBody::RecordPut {
            collection: collection.into(),
            rkey: rkey.into(),
            cid: format!("cid-{rev}"),
            action: PutAction::Create,
            record,
        },
    )
}

fn delete(did: &str, rev: &str, collection: &str, rkey: &str) -> Event {
    event(did, rev, EventBody::RecordDeleted { collection: collection.into(), rkey: rkey.into(), prev_cid: None })
}

fn manifest(digest: &str, hold: &str) -> Ipld {
    ipld!({
        "repository": "web/app", "digest": digest, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "holdDid": hold,
        "layers": [{ "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": LAYER, "size": 1000 }],
    })
}

fn stats(pulls: i64, pushes: i64, day: &str) -> Ipld {
    ipld!({
        "ownerDid": ALICE, "repository": "web/app", "pullCount": pulls, "pushCount": pushes,
        "updatedAt": format!("2026-02-{day}T12:00:00Z"),
    })
}

fn scenario() -> Vec<Event> {
    vec![
        put(
            HOLD,
            "01",
            "io.atcr.hold.captain",
            "self",
            ipld!({ "owner": OWNER, "public": true, "region": "eu-west-1", "successor": "did:web:next.example",
                    "deployedAt": "2026-01-01T00:00:00Z", "allowAllCrew": false, "enableBlueskyPosts": false }),
        ),
        // Current crew shape, and the earliest (no tier, no limits).
        put(
            HOLD,
            "02",
            "io.atcr.hold.crew",
            "c1",
            ipld!({ "member": OWNER, "role": "owner", "permissions": ["blob:write"], "tier": "bosun", "addedAt": "x" }),
        ),
        put(HOLD, "03", "io.atcr.hold.crew", "c2", ipld!({ "member": ALICE, "role": "write", "permissions": [] })),
        put(
            HOLD,
            "04",
            "io.atcr.hold.layer",
            "l1",
            ipld!({ "digest": LAYER, "size": 1000, "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                    "manifest": "at://did:plc:alice/io.atcr.manifest/1111", "userDid": ALICE, "createdAt": "x" }),
        ),
        put(HOLD, "05", "io.atcr.hold.layer", "l2", ipld!({ "digest": IMAGE, "size": 500 })),
        put(HOLD, "06", "io.atcr.hold.stats", "s1", stats(10, 1, "01")),
        put(HOLD, "07", "io.atcr.hold.stats", "s1", stats(25, 2, "03")),
        put(ALICE, "08", "io.atcr.manifest", &IMAGE[7..], manifest(IMAGE, HOLD)),
        put(ALICE, "09", "io.atcr.manifest", &IMAGE_V2[7..], manifest(IMAGE_V2, HOLD)),
        // Malformed hold records: skipped with a reason, nothing else changes.
        put(HOLD, "10", "io.atcr.hold.crew", "bad", ipld!({ "member": "not a did" })),
        put(HOLD, "11", "io.atcr.hold.stats", "bad", ipld!({ "ownerDid": ALICE, "repository": "x", "pullCount": -3 })),
        put(HOLD, "12", "io.atcr.hold.captain", "other", ipld!({ "owner": OWNER })),
        put(HOLD, "13", "io.atcr.hold.layer", "bad", ipld!({ "digest": "sha256:../../x", "size": 1 })),
        put(HOLD, "14", "io.atcr.hold.captain", "self", ipld!("just a string")),
    ]
}

fn setup(events: Vec<Event>) -> (tempfile::TempDir, Arc<EventLog>, Arc<Views>) {
    let directory = tempfile::tempdir().unwrap();
    let log = Arc::new(EventLog::open(&directory.path().join("log.redb")).unwrap());
    log.append(AppendBatch { events, ..AppendBatch::default() }).unwrap();
    let views = Arc::new(Views::open(&directory.path().join("views.redb")).unwrap());
    (directory, log, views)
}

#[test]
fn hold_records_and_the_manifests_naming_a_hold_are_indexed() {
    let (_directory, log, views) = setup(scenario());
    let runner = ProjectionRunner::new(log.clone(), views.clone());
    runner.catch_up().unwrap();

    let facts = views.hold_facts(HOLD).unwrap().expect("the hold is known");
    let captain = facts.captain.as_ref().unwrap();
    assert_eq!((captain.owner.as_str(), captain.public, captain.region.as_deref()), (OWNER, true, Some("eu-west-1")));
    assert_eq!(captain.successor.as_deref(), Some("did:web:next.example"), "a malformed captain did not replace it");
    assert_eq!(facts.crew.len(), 2);
    assert_eq!(facts.crew[0].tier.as_deref(), Some("bosun"));
    assert_eq!(facts.crew[1].tier, None);
    assert_eq!((facts.layers, facts.layer_bytes), (2, 1500));
    assert_eq!(facts.repositories.get(&(ALICE.to_string(), "web/app".to_string())), Some(&2));
    assert_eq!(facts.stats.len(), 1);
    assert_eq!((facts.stats[0].pull_count, facts.stats[0].push_count), (25, 2));
    assert_eq!(views.hold_dids().unwrap(), vec![(HOLD.to_string(), 2)]);
    let repo_stats = views.repository_hold_stats(ALICE, "web/app").unwrap();
    assert_eq!(repo_stats.len(), 1);
    assert_eq!(repo_stats[0].0, HOLD);
    assert_eq!(
        views.repository_stats_series(ALICE, "web/app").unwrap(),
        vec![("2026-02-01".to_string(), 10, 1), ("2026-02-03".to_string(), 25, 2)]
    );
    assert_eq!(views.hold_stats_series(HOLD).unwrap().len(), 2);
    assert!(views.hold_facts("did:plc:nobody").unwrap().is_none());

    // Deletes: a crew member, a layer, a manifest, the stats record.
    log.append(AppendBatch {
        events: vec![
            delete(HOLD, "15", "io.atcr.hold.crew", "c2"),
            delete(HOLD, "16", "io.atcr.hold.layer", "l1"),
            delete(ALICE, "17", "io.atcr.manifest", &IMAGE[7..]),
            delete(HOLD, "18", "io.atcr.hold.stats", "s1"),
        ],
        ..AppendBatch::default()
    })
    .unwrap();
    runner.catch_up().unwrap();
    let facts = views.hold_facts(HOLD).unwrap().unwrap();
    assert_eq!(facts.crew.len(), 1);
    assert_eq!((facts.layers, facts.layer_bytes), (1, 500));
    assert_eq!(facts.repositories.get(&(ALICE.to_string(), "web/app".to_string())), Some(&1));
    assert!(facts.stats.is_empty());
    assert!(views.repository_hold_stats(ALICE, "web/app").unwrap().is_empty());
    assert_eq!(views.hold_dids().unwrap(), vec![(HOLD.to_string(), 1)]);

    // The last manifest moves to another hold: the first no longer lists the repository.
    log.append(AppendBatch {
        events: vec![put(ALICE, "19", "io.atcr.manifest", &IMAGE_V2[7..], manifest(IMAGE_V2, "did:web:other.example"))],
        ..AppendBatch::default()
    })
    .unwrap();
    runner.catch_up().unwrap();
    assert!(views.hold_facts(HOLD).unwrap().unwrap().repositories.is_empty());
    assert_eq!(views.hold_dids().unwrap(), vec![(HOLD.to_string(), 0), ("did:web:other.example".to_string(), 1)]);
}

/// The hold index of a rebuild is applied on a second thread (`fanout`): whether the rows are
/// written once or after every event, they equal what following the log wrote, moves and
/// deletes included.
#[test]
fn a_rebuild_gives_the_same_hold_views() {
    let mut events = scenario();
    events.push(delete(ALICE, "15", "io.atcr.manifest", &IMAGE[7..]));
    events.push(put(ALICE, "16", "io.atcr.manifest", &IMAGE_V2[7..], manifest(IMAGE_V2, "did:web:other.example")));
    events.push(put(ALICE, "17", "io.atcr.manifest", &IMAGE[7..], manifest(IMAGE, HOLD)));
    let (directory, log, views) = setup(events);
    ProjectionRunner::new(log.clone(), views.clone()).catch_up().unwrap();
    let until = log.next_offset().unwrap();
    let rebuilt_path = directory.path().join("rebuilt.redb");
    let rebuilt = atcr_projections::rebuild::rebuild(&log, &rebuilt_path, until, &mut |_| {}).unwrap();
    assert_eq!(rebuilt.hold_facts(HOLD).unwrap(), views.hold_facts(HOLD).unwrap());
    assert_eq!(views.hold_dids().unwrap(), vec![(HOLD.to_string(), 1), ("did:web:other.example".to_string(), 1)]);
    drop(rebuilt);
    let every_event = directory.path().join("every-event.redb");
    {
        let rebuilt = Views::open(&every_event).unwrap();
        atcr_projections::rebuild::catch_up_to(&log, &rebuilt, until, 1, &mut |_| {}).unwrap();
    }
    drop(views);
    let live = directory.path().join("views.redb");
    for path in [&rebuilt_path, &every_event] {
        let tables = atcr_projections::digest::compare_files(&live, path).unwrap();
        for (name, comparison) in tables {
            assert!(comparison.is_same(), "{}: {name}: {comparison}", path.display());
        }
    }
}
