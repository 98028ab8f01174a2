//! Holds and pull analytics through the real router over real views and a real pull log: the
//! hold directory, page and JSON from hand-made hold records (hostile and malformed ones
//! included: escaped or skipped, never a broken page), pulls counted by the name a client used,
//! the repository stats, the pulls badge and the home page's most pulled list.

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use serde_json::{Value, json};
use tower::ServiceExt;

use atcr_projections::{ProjectionRunner, Views};
use atcr_query::browse::Browse;
use atcr_query::holds::PullLog;
use atcr_query::{LogQuery, RegistryQuery};
use atcr_storage::content::ContentStore;
use atcr_storage::{AppendBatch, Event, EventBody, EventLog, PutAction, Source};
use atcr_web::{AppState, router};

const ALICE: &str = "did:plc:alice";
const HOLD: &str = "did:web:hold.example.com";
const DIGEST: &str = "sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";

fn put(did: &str, rev: &str, collection: &str, rkey: &str, record: Value) -> Event {
    Event {
        source: Source::Firehose,
        upstream_seq: Some(100),
        did: did.into(),
        rev: Some(rev.into()),
        upstream_time: Some("2026-05-01T09:00:00Z".into()),
        received_at_us: 1,
        commit_cid: None,
        body: EventBody::RecordPut {
            collection: collection.into(),
            rkey: rkey.into(),
            cid: format!("bafyrecord{rev}"),
            action: PutAction::Create,
            record: serde_ipld_dagcbor::to_vec(&record).expect("dag-cbor"),
        },
    }
}

fn app(with_pulls: bool) -> (tempfile::TempDir, Router, Browse) {
    let dir = tempfile::tempdir().expect("temp dir");
    let document = json!({ "id": ALICE, "alsoKnownAs": ["at://alice.test"] }).to_string();
    let events = vec![
        Event {
            source: Source::Enrichment,
            upstream_seq: None,
            did: ALICE.into(),
            rev: None,
            upstream_time: None,
            received_at_us: 1,
            commit_cid: None,
            body: EventBody::IdentityResolved { document_json: document },
        },
        put(
            HOLD,
            "3a0",
            "io.atcr.hold.captain",
            "self",
            json!({ "owner": ALICE, "public": false, "region": "<script>alert(1)</script>", "deployedAt": "2026-01-01T00:00:00Z" }),
        ),
        put(HOLD, "3a1", "io.atcr.hold.crew", "c1", json!({ "member": ALICE, "role": "owner", "permissions": [] })),
        put(HOLD, "3a2", "io.atcr.hold.crew", "bad", json!({ "member": 12, "role": ["x"] })),
        put(
            HOLD,
            "3a3",
            "io.atcr.hold.stats",
            "s1",
            json!({ "ownerDid": ALICE, "repository": "app", "pullCount": 42, "pushCount": 2, "updatedAt": "2026-05-01T09:00:00Z" }),
        ),
        put(HOLD, "3a4", "io.atcr.hold.stats", "bad", json!({ "ownerDid": "nobody", "pullCount": "many" })),
        put(
            ALICE,
            "3a5",
            "io.atcr.manifest",
            &DIGEST[7..],
            json!({ "repository": "app", "digest": DIGEST, "mediaType": "application/vnd.oci.image.manifest.v1+json", "holdDid": HOLD }),
        ),
    ];
    let log = Arc::new(EventLog::open(&dir.path().join("log.redb")).expect("log"));
    log.append(AppendBatch { events, ..AppendBatch::default() }).expect("append");
    let views = Arc::new(Views::open(&dir.path().join("views.redb")).expect("views"));
    ProjectionRunner::new(log.clone(), views.clone()).catch_up().expect("catch up");
    let content = Arc::new(ContentStore::open(&dir.path().join("content")).expect("content"));
    let registry = RegistryQuery::new(views, content);
    let mut browse = Browse::new(registry.clone());
    if with_pulls {
        browse = browse.with_pulls(PullLog::open(&dir.path().join("pulls.redb")).expect("pull log"));
    }
    let state = AppState {
        query: LogQuery::new(log),
        browse: Some(browse.clone()),
        registry: Some(registry),
        metrics: None,
        search: None,
        live: None,
    };
    (dir, router(state), browse)
}

async fn get(app: &Router, path: &str) -> (StatusCode, String) {
    let response = app.clone().oneshot(Request::get(path).body(Body::empty()).expect("request")).await.expect("answer");
    let status = response.status();
    let bytes = axum::body::to_bytes(response.into_body(), usize::MAX).await.expect("body");
    (status, String::from_utf8_lossy(&bytes).into_owned())
}

#[tokio::test]
async fn hold_pages_show_the_records_escaped_and_skip_malformed_ones() {
    let (_dir, app, _) = app(false);
    let (status, body) = get(&app, &format!("/api/v1/holds/{HOLD}")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let hold: Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(hold["owner"], ALICE);
    assert_eq!(hold["owner_handle"], "alice.test");
    assert_eq!(hold["public"], false);
    assert_eq!(hold["crew_count"], 1, "the malformed crew record is skipped");
    assert_eq!(hold["pulls"], 42, "the malformed stats record is skipped");
    assert_eq!(hold["repositories"][0]["repository"], "app");
    let (status, html) = get(&app, &format!("/holds/{HOLD}")).await;
    assert_eq!(status, StatusCode::OK);
    assert!(html.contains("&lt;script&gt;alert(1)&lt;/script&gt;") && !html.contains("<script>alert(1)"));
    assert!(html.contains("private"));
    let (status, html) = get(&app, "/holds").await;
    assert_eq!(status, StatusCode::OK);
    assert!(html.contains(&format!("/holds/{HOLD}")));
    let (status, _) = get(&app, "/holds/did:web:unknown.example").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = get(&app, "/api/v1/holds/did:web:unknown.example").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    // Without a pull log there is no pulls badge, and the stats say 0 pulls via atcr.
    let (status, _) = get(&app, "/r/alice.test/app/-/badge/pulls.svg").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (_, body) = get(&app, "/api/v1/repository-stats/alice.test/app").await;
    let stats: Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!((stats["atcr_pulls"].clone(), stats["hold_pulls"].clone()), (json!(0), json!(42)));
    assert_eq!(stats["stored_on"], json!([HOLD]));
}

#[tokio::test]
async fn pulls_are_counted_by_the_name_used_and_shown_everywhere() {
    let (_dir, app, browse) = app(true);
    let counter = browse.pull_counter().expect("pulls are counted");
    for name in ["alice.test/app", "did:plc:alice/app", "alice.test/app", "nobody.test/app"] {
        counter.record(name);
    }
    browse.pull_log().expect("a pull log").flush();
    let (_, body) = get(&app, "/api/v1/repository-stats/did:plc:alice/app").await;
    let stats: Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(stats["atcr_pulls"], 3, "handle and DID names count for the same repository; unknown names not at all");
    let daily = stats["atcr_daily"].as_array().expect("a daily series");
    assert_eq!(daily.len(), 30);
    assert_eq!(daily.last().and_then(|day| day["pulls"].as_u64()), Some(3));
    let (status, svg) = get(&app, "/r/alice.test/app/-/badge/pulls.svg").await;
    assert_eq!(status, StatusCode::OK);
    assert!(svg.contains("pulls: 45"), "3 via atcr + 42 counted by the hold: {svg}");
    let (status, html) = get(&app, "/r/alice.test/app").await;
    assert_eq!(status, StatusCode::OK);
    assert!(html.contains(r#"id="atcr-pulls">3<"#) && html.contains("<svg"));
    let (_, html) = get(&app, "/").await;
    assert!(html.contains("Most pulled") && html.contains("Trending this week"));
}
