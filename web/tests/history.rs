//! The history pages and their JSON API through the real router over real views: a tag created
//! and moved three times shows four changes in order on the timeline and in the API; the record
//! viewer lists every version, diffs them and links `at://` values; the activity feed pages;
//! user-controlled text is escaped; errors have the API's JSON shape.

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use serde_json::{Value, json};
use tower::ServiceExt;

use atcr_projections::{ProjectionRunner, Views};
use atcr_query::browse::Browse;
use atcr_query::{LogQuery, RegistryQuery};
use atcr_storage::content::ContentStore;
use atcr_storage::{AppendBatch, Event, EventBody, EventLog, PutAction, Source};
use atcr_web::{AppState, router};

const ALICE: &str = "did:plc:alice";

fn digest(fill: char) -> String {
    format!("sha256:{}", fill.to_string().repeat(64))
}

fn put(rev: &str, time: &str, collection: &str, rkey: &str, record: Value, action: PutAction) -> Event {
    Event {
        source: Source::Firehose,
        upstream_seq: Some(100 + rev.len() as i64),
        did: ALICE.into(),
        rev: Some(rev.into()),
        upstream_time: Some(time.into()),
        received_at_us: 1,
        commit_cid: Some(format!("bafycommit{rev}")),
        body: EventBody::RecordPut {
            collection: collection.into(),
            rkey: rkey.into(),
            cid: format!("bafyrecord{rev}"),
            action,
            record: serde_ipld_dagcbor::to_vec(&record).expect("dag-cbor"),
        },
    }
}

fn tag_record(repository: &str, tag: &str, fill: char) -> Value {
    json!({
        "repository": repository,
        "tag": tag,
        "manifest": format!("at://{ALICE}/io.atcr.manifest/{}", fill.to_string().repeat(64)),
        "createdAt": "2026-05-01T00:00:00Z",
    })
}

fn manifest_record(fill: char) -> Value {
    json!({ "repository": "app", "digest": digest(fill), "mediaType": "application/vnd.oci.image.manifest.v1+json" })
}

struct Fixture {
    _dir: tempfile::TempDir,
    app: Router,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().expect("temp dir");
    let document = json!({ "id": ALICE, "alsoKnownAs": ["at://alice.test"] }).to_string();
    let mut events = vec![Event {
        source: Source::Enrichment,
        upstream_seq: None,
        did: ALICE.into(),
        rev: None,
        upstream_time: None,
        received_at_us: 1,
        commit_cid: None,
        body: EventBody::IdentityResolved { document_json: document },
    }];
    for (index, fill) in ['a', 'b', 'c', 'd'].into_iter().enumerate() {
        let rev = format!("3m{index}");
        events.push(put(
            &rev,
            &format!("2026-05-0{}T09:00:00Z", index + 1),
            "io.atcr.manifest",
            &fill.to_string().repeat(64),
            manifest_record(fill),
            PutAction::Create,
        ));
    }
    for (index, fill) in ['a', 'b', 'c', 'd'].into_iter().enumerate() {
        let action = if index == 0 { PutAction::Create } else { PutAction::Update };
        events.push(put(
            &format!("3t{index}"),
            &format!("2026-05-0{}T10:00:00Z", index + 1),
            "io.atcr.tag",
            "app_latest",
            tag_record("app", "latest", fill),
            action,
        ));
    }
    // A hostile tag name: shown escaped.
    events.push(put(
        "3x0",
        "2026-05-06T10:00:00Z",
        "io.atcr.tag",
        "app_evil",
        tag_record("app", "<img src=x onerror=alert(1)>", 'a'),
        PutAction::Create,
    ));
    let log = Arc::new(EventLog::open(&dir.path().join("log.redb")).expect("log"));
    log.append(AppendBatch { events, ..AppendBatch::default() }).expect("append");
    let views = Arc::new(Views::open(&dir.path().join("views.redb")).expect("views"));
    ProjectionRunner::new(log.clone(), views.clone()).catch_up().expect("catch up");
    let content = Arc::new(ContentStore::open(&dir.path().join("content")).expect("content"));
    let registry = RegistryQuery::new(views, content);
    let state = AppState {
        query: LogQuery::new(log),
        browse: Some(Browse::new(registry.clone())),
        registry: Some(registry),
        metrics: None,
        search: None,
        live: None,
    };
    Fixture { _dir: dir, app: router(state) }
}

struct Answer {
    status: StatusCode,
    headers: axum::http::HeaderMap,
    body: String,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|error| panic!("not JSON ({error}): {}", self.body))
    }
}

async fn get(app: &Router, path: &str) -> Answer {
    let request = Request::get(path).header(header::HOST, "registry.test").body(Body::empty()).expect("request");
    let response = app.clone().oneshot(request).await.expect("response");
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = axum::body::to_bytes(response.into_body(), 16 * 1024 * 1024).await.expect("body");
    Answer { status, headers, body: String::from_utf8_lossy(&bytes).to_string() }
}

/// Offsets of the four tag events: identity 0, manifests 1..=4, tag 5..=8, evil tag 9.
const TAG_OFFSETS: [u64; 4] = [5, 6, 7, 8];

#[tokio::test]
async fn the_timeline_page_shows_the_creation_and_three_moves_in_order() {
    let fixture = fixture();
    let answer = get(&fixture.app, "/r/alice.test/app/-/history?tag=latest").await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    assert!(answer.headers.get("content-security-policy").is_some(), "UI headers on the history page");
    let positions: Vec<usize> = TAG_OFFSETS
        .iter()
        .map(|offset| {
            answer.body.find(&format!("data-offset=\"{offset}\"")).unwrap_or_else(|| panic!("move at {offset} missing"))
        })
        .collect();
    assert!(positions.windows(2).all(|pair| pair[0] < pair[1]), "oldest first: {positions:?}");
    for fill in ['a', 'b', 'c', 'd'] {
        let link = format!("/r/alice.test/app/-/manifest/{}", digest(fill));
        assert!(answer.body.contains(&link), "links the manifest page of {fill}");
    }
    assert!(!answer.body.contains("<img src=x"), "filtered to one tag");

    let all = get(&fixture.app, "/r/alice.test/app/-/history").await;
    assert!(all.body.contains("&lt;img src=x onerror=alert(1)&gt;"), "hostile tag escaped");
    assert!(!all.body.contains("<img src=x"), "never raw");

    let unknown = get(&fixture.app, "/r/alice.test/nope/-/history").await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);
    let repository_page = get(&fixture.app, "/r/alice.test/app").await;
    assert_eq!(repository_page.status, StatusCode::OK, "other /r/ pages pass through");
    // The repository page itself shows the recent moves, newest first, and links the timeline.
    assert!(repository_page.body.contains("Tag history"), "{}", repository_page.body);
    assert!(repository_page.body.contains("/r/alice.test/app/-/history"));
    let newest_first: Vec<usize> = TAG_OFFSETS
        .iter()
        .rev()
        .map(|offset| repository_page.body.find(&format!("data-offset=\"{offset}\"")).expect("move on the page"))
        .collect();
    assert!(newest_first.windows(2).all(|pair| pair[0] < pair[1]), "newest first: {newest_first:?}");
}

#[tokio::test]
async fn the_json_api_agrees_with_the_timeline() {
    let fixture = fixture();
    let answer = get(&fixture.app, "/api/v1/tag-history/alice.test/app?tag=latest").await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    let timeline = answer.json();
    assert_eq!(timeline["owner"]["did"], ALICE);
    let moves = timeline["moves"].as_array().expect("moves");
    let summary: Vec<(u64, &str, Value, Value)> = moves
        .iter()
        .map(|change| {
            (
                change["offset"].as_u64().unwrap(),
                change["change"].as_str().unwrap(),
                change["from"].clone(),
                change["to"].clone(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            (5, "create", Value::Null, json!(digest('a'))),
            (6, "move", json!(digest('a')), json!(digest('b'))),
            (7, "move", json!(digest('b')), json!(digest('c'))),
            (8, "move", json!(digest('c')), json!(digest('d'))),
        ]
    );
    assert_eq!(moves[1]["rev"], "3t1");
    assert_eq!(moves[1]["cid"], "bafyrecord3t1");
    assert_eq!(moves[1]["commit_cid"], "bafycommit3t1");
    assert_eq!(moves[1]["time"], "2026-05-02T10:00:00Z");

    let missing = get(&fixture.app, "/api/v1/tag-history/nobody.test/app").await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    assert_eq!(missing.json()["error"], "not_found");
    assert!(missing.json()["message"].is_string());
}

#[tokio::test]
async fn the_record_viewer_lists_versions_diffs_them_and_links_at_uris() {
    let fixture = fixture();
    let page = get(&fixture.app, "/at/did:plc:alice/io.atcr.tag/app_latest").await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    for offset in TAG_OFFSETS {
        assert!(page.body.contains(&format!("data-offset=\"{offset}\"")), "version {offset}");
    }
    let manifest_link = format!("<a href=\"/at/did:plc:alice/io.atcr.manifest/{}\">", "d".repeat(64));
    assert!(page.body.contains(&manifest_link), "the current record's at:// value is a link");
    // The default diff is between the last two versions.
    assert!(page.body.contains("<del>- ") && page.body.contains(&"c".repeat(64)), "{}", page.body);
    assert!(page.body.contains("<ins>+ "));

    let chosen = get(&fixture.app, "/at/did:plc:alice/io.atcr.tag/app_latest?diff=5..6").await;
    assert!(chosen.body.contains("Changes from offset 5 to offset 6"));

    let api = get(&fixture.app, "/api/v1/records/did:plc:alice/io.atcr.tag/app_latest?diff=5..8").await;
    assert_eq!(api.status, StatusCode::OK, "{}", api.body);
    let record = api.json();
    assert_eq!(record["uri"], "at://did:plc:alice/io.atcr.tag/app_latest");
    let versions = record["versions"].as_array().expect("versions");
    assert_eq!(versions.len(), 4);
    assert_eq!(versions[0]["action"], "create");
    assert_eq!(versions[3]["action"], "update");
    assert_eq!(versions[3]["record"]["tag"], "latest");
    assert_eq!(record["current"], versions[3]["record"]);
    let changed: Vec<&Value> =
        record["diff"]["lines"].as_array().expect("lines").iter().filter(|line| line["op"] != "equal").collect();
    assert_eq!(changed.len(), 2, "{changed:?}");

    let bad = get(&fixture.app, "/api/v1/records/did:plc:alice/io.atcr.tag/app_latest?diff=1..8").await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    assert_eq!(bad.json()["error"], "bad_request");
    let missing = get(&fixture.app, "/at/did:plc:alice/io.atcr.tag/nothing").await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn the_activity_feed_is_newest_first_and_pages() {
    let fixture = fixture();
    let first = get(&fixture.app, "/api/v1/users/alice.test/activity?limit=4").await;
    assert_eq!(first.status, StatusCode::OK, "{}", first.body);
    let first = first.json();
    let offsets: Vec<u64> =
        first["entries"].as_array().expect("entries").iter().map(|entry| entry["offset"].as_u64().unwrap()).collect();
    assert_eq!(offsets, vec![9, 8, 7, 6]);
    assert_eq!(first["next_before"], 6);
    let second = get(&fixture.app, "/api/v1/users/alice.test/activity?before=6&limit=100").await.json();
    let offsets: Vec<u64> =
        second["entries"].as_array().expect("entries").iter().map(|entry| entry["offset"].as_u64().unwrap()).collect();
    assert_eq!(offsets, vec![5, 4, 3, 2, 1]);
    assert_eq!(second["next_before"], Value::Null);

    let page = get(&fixture.app, "/u/alice.test/activity").await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    assert!(page.body.find("data-offset=\"9\"").unwrap() < page.body.find("data-offset=\"1\"").unwrap());
    assert!(page.body.contains("/at/did:plc:alice/io.atcr.tag/app_latest"));
    assert!(!page.body.contains("<img src=x"));
    let bad = get(&fixture.app, "/api/v1/users/alice.test/activity?before=x").await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    assert_eq!(get(&fixture.app, "/u/nobody.test/activity").await.status, StatusCode::NOT_FOUND);
}
