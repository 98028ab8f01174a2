//! The registry views from a hand-made log: puts, moves, deletes, referrers, older shapes,
//! stale revs, idempotent replays and rebuilds.

use std::sync::Arc;

use atcr_projections::{ProjectionRunner, Views};
use atcr_storage::{AppendBatch, Event, EventBody, EventLog, PutAction, Source};
use ipld_core::ipld;
use ipld_core::ipld::Ipld;

const ALICE: &str = "did:plc:alice";
const IMAGE: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";
const IMAGE_V2: &str = "sha256:2222222222222222222222222222222222222222222222222222222222222222";
const SBOM: &str = "sha256:3333333333333333333333333333333333333333333333333333333333333333";
const LAYER: &str = "sha256:4444444444444444444444444444444444444444444444444444444444444444";
const CONFIG: &str = "sha256:5555555555555555555555555555555555555555555555555555555555555555";

fn cbor(value: Ipld) -> Vec<u8> {
    serde_ipld_dagcbor::to_vec(&value).unwrap()
}

fn event(rev: &str, body: EventBody) -> Event {
    Event {
        source: Source::Firehose,
        upstream_seq: None,
        did: ALICE.into(),
        rev: Some(rev.into()),
        upstream_time: Some(format!("2026-01-01T00:00:{rev}Z")),
        received_at_us: 0,
        commit_cid: None,
        body,
    }
}

fn put(rev: &str, collection: &str, rkey: &str, record: Ipld) -> Event {
    event(
        rev,
        EventBody::RecordPut {
            collection: collection.into(),
            rkey: rkey.into(),
            cid: format!("cid-{rev}"),
            action: PutAction::Create,
            record: cbor(record),
        },
    )
}

fn delete(rev: &str, collection: &str, rkey: &str) -> Event {
    event(rev, EventBody::RecordDeleted { collection: collection.into(), rkey: rkey.into(), prev_cid: None })
}

fn manifest(digest: &str, subject: Option<&str>) -> Ipld {
    let mut record = ipld!({
        "repository": "web/app", "digest": digest, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "schemaVersion": 2, "holdDid": "did:web:hold.example",
        "config": { "mediaType": "application/vnd.oci.image.config.v1+json", "digest": CONFIG, "size": 100 },
        "layers": [{ "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": LAYER, "size": 1000 }],
    });
    if let (Some(subject), Ipld::Map(map)) = (subject, &mut record) {
        map.insert(
            "subject".into(),
            ipld!({ "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": subject, "size": 10 }),
        );
    }
    record
}

fn tag(tag: &str, digest: &str) -> Ipld {
    let hex = &digest[7..];
    ipld!({ "repository": "web/app", "tag": tag, "manifest": format!("at://{ALICE}/io.atcr.manifest/{hex}") })
}

fn setup(events: Vec<Event>) -> (tempfile::TempDir, Arc<EventLog>, Arc<Views>) {
    let directory = tempfile::tempdir().unwrap();
    let log = Arc::new(EventLog::open(&directory.path().join("log.redb")).unwrap());
    log.append(AppendBatch { events, ..AppendBatch::default() }).unwrap();
    let views = Arc::new(Views::open(&directory.path().join("views.redb")).unwrap());
    (directory, log, views)
}

fn scenario() -> Vec<Event> {
    vec![
        put("01", "io.atcr.manifest", &IMAGE[7..], manifest(IMAGE, None)),
        put("02", "io.atcr.tag", "web~app_latest", tag("latest", IMAGE)),
        put("03", "io.atcr.tag", "web~app_v1", tag("v1", IMAGE)),
        put("04", "io.atcr.manifest", &SBOM[7..], manifest(SBOM, Some(IMAGE))),
        put("05", "io.atcr.manifest", &IMAGE_V2[7..], manifest(IMAGE_V2, None)),
        // latest moves to v2; v1 is deleted; an older-shape tag record points at the first image.
        put("06", "io.atcr.tag", "web~app_latest", tag("latest", IMAGE_V2)),
        delete("07", "io.atcr.tag", "web~app_v1"),
        put(
            "08",
            "io.atcr.tag",
            "legacy",
            ipld!({ "repository": "web/app", "tag": "old", "manifestDigest": IMAGE, "createdAt": "2025-01-01T00:00:00Z" }),
        ),
        // A late, replayed commit (older rev) must not move latest back.
        put("05", "io.atcr.tag", "web~app_latest", tag("latest", IMAGE)),
        // Garbage is skipped, not fatal.
        put("09", "io.atcr.tag", "bad", ipld!({ "repository": "web/app" })),
    ]
}

#[test]
fn views_follow_puts_moves_deletes_and_referrers() {
    let (_directory, log, views) = setup(scenario());
    let runner = ProjectionRunner::new(log.clone(), views.clone());
    assert_eq!(runner.catch_up().unwrap(), 10);
    assert_eq!(views.checkpoint().unwrap(), 10);

    assert_eq!(views.tag(ALICE, "web/app", "latest").unwrap().unwrap().digest, IMAGE_V2, "the stale rev did not win");
    assert!(views.tag(ALICE, "web/app", "v1").unwrap().is_none());
    assert_eq!(views.tag(ALICE, "web/app", "old").unwrap().unwrap().digest, IMAGE);
    assert_eq!(views.tags(ALICE, "web/app", None, 10).unwrap(), vec!["latest", "old"]);
    assert_eq!(views.tags(ALICE, "web/app", Some("latest"), 10).unwrap(), vec!["old"]);

    let image = views.manifest(ALICE, IMAGE).unwrap().unwrap();
    assert_eq!(image.repository, "web/app");
    assert_eq!(image.hold_did.as_deref(), Some("did:web:hold.example"));
    let referrers = views.referrers(ALICE, IMAGE).unwrap();
    assert_eq!(referrers.iter().map(|(digest, _)| digest.as_str()).collect::<Vec<_>>(), vec![SBOM]);
    assert_eq!(views.blob_referrers(ALICE, "web/app", LAYER).unwrap().len(), 3);
    assert!(views.blob_referrers(ALICE, "other", LAYER).unwrap().is_empty(), "blobs are scoped to their repository");
    assert_eq!(views.repository(ALICE, "web/app").unwrap().unwrap().manifests, 3);
    assert_eq!(views.repositories(None, 10).unwrap(), vec![(ALICE.to_string(), "web/app".to_string())]);

    // Deleting the SBOM removes it from referrers and from the blob index.
    log.append(AppendBatch { events: vec![delete("10", "io.atcr.manifest", &SBOM[7..])], ..AppendBatch::default() })
        .unwrap();
    runner.catch_up().unwrap();
    assert!(views.referrers(ALICE, IMAGE).unwrap().is_empty());
    assert_eq!(views.blob_referrers(ALICE, "web/app", LAYER).unwrap().len(), 2);
    assert_eq!(views.repository(ALICE, "web/app").unwrap().unwrap().manifests, 2);
}

#[test]
fn a_rebuild_from_offset_zero_gives_the_same_views() {
    let (directory, log, views) = setup(scenario());
    ProjectionRunner::new(log.clone(), views.clone()).catch_up().unwrap();
    let rebuilt = Arc::new(Views::open(&directory.path().join("rebuilt.redb")).unwrap());
    ProjectionRunner::new(log, rebuilt.clone()).catch_up().unwrap();
    for tag in ["latest", "old", "v1"] {
        assert_eq!(views.tag(ALICE, "web/app", tag).unwrap(), rebuilt.tag(ALICE, "web/app", tag).unwrap());
    }
    for digest in [IMAGE, IMAGE_V2, SBOM] {
        assert_eq!(views.manifest(ALICE, digest).unwrap(), rebuilt.manifest(ALICE, digest).unwrap());
    }
}

#[test]
fn identities_come_from_resolved_did_documents() {
    let document = r##"{"id":"did:plc:alice","alsoKnownAs":["at://alice.test"],"service":[{"id":"#atproto_pds","type":"AtprotoPersonalDataServer","serviceEndpoint":"https://pds.example"}]}"##;
    let resolved = Event {
        source: Source::Enrichment,
        rev: None,
        ..event("01", EventBody::IdentityResolved { document_json: document.into() })
    };
    let (_directory, log, views) = setup(vec![resolved]);
    ProjectionRunner::new(log, views.clone()).catch_up().unwrap();
    assert_eq!(views.did_for_handle("Alice.Test").unwrap().as_deref(), Some(ALICE));
    assert_eq!(views.identity(ALICE).unwrap().unwrap().pds_endpoint.as_deref(), Some("https://pds.example"));
}

#[test]
fn a_handle_names_a_did_only_while_its_check_holds() {
    let document = r##"{"id":"did:plc:alice","alsoKnownAs":["at://alice.test"]}"##;
    let enrichment = |body: EventBody| Event { source: Source::Enrichment, rev: None, ..event("01", body) };
    let resolved = || enrichment(EventBody::IdentityResolved { document_json: document.into() });
    let checked = |verified: bool| {
        enrichment(EventBody::HandleChecked {
            handle: "alice.test".into(),
            verified,
            reason: if verified { String::new() } else { "handle alice.test resolves to did:plc:mallory".into() },
        })
    };
    // enrichment's order: the check, then the document it belongs to
    let (directory, log, views) = setup(vec![checked(false), resolved()]);
    let runner = ProjectionRunner::new(log.clone(), views.clone());
    runner.catch_up().unwrap();
    assert_eq!(views.did_for_handle("alice.test").unwrap(), None, "a refuted handle names no DID");
    assert_eq!(
        views.identity(ALICE).unwrap().unwrap().handle.as_deref(),
        Some("alice.test"),
        "still shown, as claimed"
    );

    // a later check that verifies (same document) lets it name the DID; a refutation takes it back
    log.append(AppendBatch { events: vec![checked(true)], ..AppendBatch::default() }).unwrap();
    runner.catch_up().unwrap();
    assert_eq!(views.did_for_handle("alice.test").unwrap().as_deref(), Some(ALICE));
    log.append(AppendBatch { events: vec![checked(false)], ..AppendBatch::default() }).unwrap();
    runner.catch_up().unwrap();
    assert_eq!(views.did_for_handle("alice.test").unwrap(), None);
    // a new document after a refutation of the same handle stays refuted
    log.append(AppendBatch { events: vec![resolved()], ..AppendBatch::default() }).unwrap();
    runner.catch_up().unwrap();
    assert_eq!(views.did_for_handle("alice.test").unwrap(), None);

    let rebuilt = Arc::new(Views::open(&directory.path().join("rebuilt.redb")).unwrap());
    ProjectionRunner::new(log, rebuilt.clone()).catch_up().unwrap();
    assert_eq!(rebuilt.did_for_handle("alice.test").unwrap(), None, "a rebuild agrees");
}

#[test]
fn browse_views_count_stars_keep_pages_profiles_and_tag_history() {
    const BOB: &str = "did:plc:bob";
    let mut star = put(
        "10",
        "io.atcr.sailor.star",
        "3star",
        ipld!({ "subject": format!("at://{ALICE}/io.atcr.repo.page/web~app") }),
    );
    star.did = BOB.into();
    // The page names the repository in its record; the subject URI's rkey is only a hint.
    let mut events = scenario();
    events.push(put(
        "11",
        "io.atcr.repo.page",
        "web~app",
        ipld!({ "repository": "web/app", "description": "# App\n\nServes the web.\n\nMore text.", "createdAt": "x" }),
    ));
    events.push(put("12", "io.atcr.sailor.profile", "self", ipld!({ "ociClient": "podman", "createdAt": "x" })));
    let mut legacy_star =
        put("13", "io.atcr.sailor.star", "4star", ipld!({ "subject": { "did": ALICE, "repository": "web/app" } }));
    legacy_star.did = "did:plc:carol".into();
    events.push(legacy_star);
    let (_directory, log, views) = setup(events);
    let runner = ProjectionRunner::new(log.clone(), views.clone());
    runner.catch_up().unwrap();
    // Carol's star names "web/app"; Bob's names the page record key "web~app", which the page
    // record maps to its repository.
    log.append(AppendBatch { events: vec![star], ..AppendBatch::default() }).unwrap();
    runner.catch_up().unwrap();
    assert_eq!(views.star_count(ALICE, "web/app").unwrap(), 2);
    assert_eq!(views.stargazers(ALICE, "web/app").unwrap().len(), 2);
    assert_eq!(views.most_starred(10).unwrap(), vec![(ALICE.to_string(), "web/app".to_string())]);
    assert_eq!(views.stars_received(ALICE).unwrap(), 2);
    log.append(AppendBatch {
        events: vec![{
            let mut unstar = delete("14", "io.atcr.sailor.star", "3star");
            unstar.did = BOB.into();
            unstar
        }],
        ..AppendBatch::default()
    })
    .unwrap();
    runner.catch_up().unwrap();
    assert_eq!(views.star_count(ALICE, "web/app").unwrap(), 1);

    let page = views.page(ALICE, "web/app").unwrap().unwrap();
    assert!(page.description.unwrap().starts_with("# App"));
    assert_eq!(views.profile(ALICE).unwrap().unwrap().oci_client.as_deref(), Some("podman"));
    assert_eq!(views.first_seen(ALICE).unwrap().as_deref(), Some("2026-01-01T00:00:01Z"));

    // latest: created at 02, moved at 06 (the stale 05 replay is skipped); v1 created and deleted.
    let history = views.tag_history(ALICE, "web/app", Some("latest")).unwrap();
    let moves: Vec<_> = history.iter().map(|(_, change)| (change.from.as_deref(), change.to.as_deref())).collect();
    assert_eq!(moves, vec![(None, Some(IMAGE)), (Some(IMAGE), Some(IMAGE_V2))]);
    let v1: Vec<_> = views.tag_history(ALICE, "web/app", Some("v1")).unwrap();
    assert_eq!(v1.last().unwrap().1.to, None, "the delete is in the history");
    assert_eq!(views.tag_history(ALICE, "web/app", None).unwrap().len(), 5);

    let versions = views.record_history(ALICE, "io.atcr.tag", "web~app_latest").unwrap();
    assert_eq!(versions.len(), 2, "two applied versions of the latest tag record");
    let activity = views.activity(&log, ALICE, None, 3).unwrap();
    assert_eq!(activity.len(), 3);
    assert!(activity[0].offset > activity[1].offset, "newest first");
    let older = views.activity(&log, ALICE, Some(activity[2].offset), 100).unwrap();
    assert!(older.iter().all(|row| row.offset < activity[2].offset));
    // A put says what it was about from its record in the log; a delete from what the views
    // knew just before it (the event names only the record key).
    let every = views.activity(&log, ALICE, None, 100).unwrap();
    let tag_delete = every.iter().find(|row| row.action == "delete" && row.collection == "io.atcr.tag").unwrap();
    assert_eq!((tag_delete.repository.as_deref(), tag_delete.tag.as_deref()), (Some("web/app"), Some("v1")));
    let tag_put = every.iter().find(|row| row.action == "create" && row.collection == "io.atcr.tag").unwrap();
    assert_eq!(tag_put.repository.as_deref(), Some("web/app"));
    assert!(tag_put.digest.as_deref().is_some_and(|digest| digest.starts_with("sha256:")), "{tag_put:?}");
    let stored = log.read_from(tag_put.offset, 1).unwrap().remove(0);
    assert_eq!(views.activity_of(&stored).unwrap().as_ref(), Some(tag_put));

    let document = views.search_document(ALICE, "web/app").unwrap().unwrap();
    assert_eq!(document.description.as_deref(), Some("App"));
    assert_eq!(document.tags, vec!["latest", "old"]);
    assert_eq!(document.holds, vec!["did:web:hold.example"]);
    assert_eq!(document.size, 1100, "config + layer, counted once across manifests");
    assert_eq!(document.stars, 1);
    assert_eq!(views.recently_pushed(1).unwrap(), vec![(ALICE.to_string(), "web/app".to_string())]);
    assert_eq!(views.counts().unwrap().tags, 2);
}

/// A rebuild applies events to an in-memory overlay and writes its rows into redb in key order
/// (`overlay.rs`); following the log writes through redb transactions. Both must leave the same
/// rows in every table, whether the overlay is written once or after every event (then misses
/// and removals go through to committed rows).
#[test]
fn a_rebuild_through_the_overlay_writes_the_rows_live_apply_writes() {
    const BOB: &str = "did:plc:bob";
    let document = r##"{"id":"did:plc:alice","alsoKnownAs":["at://alice.test"],"service":[{"id":"#atproto_pds","type":"AtprotoPersonalDataServer","serviceEndpoint":"https://pds.example"}]}"##;
    let enrichment = |body: EventBody| Event { source: Source::Enrichment, rev: None, ..event("01", body) };
    let mut events = scenario();
    events.push(enrichment(EventBody::IdentityResolved { document_json: document.into() }));
    events.push(enrichment(EventBody::HandleChecked {
        handle: "alice.test".into(),
        verified: true,
        reason: String::new(),
    }));
    events.push(put("11", "io.atcr.repo.page", "web~app", ipld!({ "repository": "web/app", "description": "# App" })));
    events.push(put("12", "io.atcr.sailor.profile", "self", ipld!({ "ociClient": "podman" })));
    let mut star = put(
        "13",
        "io.atcr.sailor.star",
        "3star",
        ipld!({ "subject": format!("at://{ALICE}/io.atcr.repo.page/web~app") }),
    );
    star.did = BOB.into();
    events.push(star.clone());
    let mut unstar = delete("14", "io.atcr.sailor.star", "3star");
    unstar.did = BOB.into();
    events.push(unstar);
    star.rev = Some("15".into());
    events.push(star);
    events.push(delete("16", "io.atcr.manifest", &SBOM[7..]));
    events.push(put("17", "io.atcr.manifest", &SBOM[7..], manifest(SBOM, Some(IMAGE))));
    events.push(delete("18", "io.atcr.tag", "web~app_latest"));
    events.push(delete("19", "io.atcr.sailor.profile", "self"));
    events.push(delete("20", "io.atcr.repo.page", "web~app"));
    events.push(enrichment(EventBody::Account { active: false, status: Some("takendown".into()) }));
    let (directory, log, views) = setup(events);
    ProjectionRunner::new(log.clone(), views.clone()).catch_up().unwrap();
    let until = views.checkpoint().unwrap();
    drop(views);

    let once = directory.path().join("once.redb");
    drop(atcr_projections::rebuild::rebuild(&log, &once, until, &mut |_| {}).unwrap());
    let every_event = directory.path().join("every-event.redb");
    {
        let rebuilt = Views::open(&every_event).unwrap();
        atcr_projections::rebuild::catch_up_to(&log, &rebuilt, until, 1, &mut |_| {}).unwrap();
    }
    let live = directory.path().join("views.redb");
    for rebuilt in [&once, &every_event] {
        let comparison = atcr_projections::digest::compare_files(&live, rebuilt).unwrap();
        assert!(comparison.len() > 20, "{comparison:?}");
        assert!(comparison.values().all(|table| table.is_same()), "{}: {comparison:#?}", rebuilt.display());
    }
}
